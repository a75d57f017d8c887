//! The event loop: one `mio::Poll`, the listener, a `Slab` of connections, the timers.
//!
//! One iteration:
//!
//! 1. poll (sleeping until the earliest deadline, or not at all when work was carried over);
//! 2. note readiness on the connections the events name, and signals;
//! 3. accept new connections;
//! 4. read, parse and dispatch on every connection that is ready (each returns its messages
//!    through an inbox, and the loop applies them);
//! 5. run expired deadlines (handshake timeouts, heartbeats, close timeouts);
//! 6. flush what each touched connection has queued, reap the finished ones, reschedule their
//!    deadlines, and remember the ones with unread input for the next iteration.
//!
//! Nothing holds a reference to another connection: the loop owns them all and hands each one
//! a [`Cx`] with the configuration, the counters and the time.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::hasher::Cost;
use crate::chat::service::DownloadRefusal;
use crate::chat::{Effect, Service, Settings};
use crate::config::{Config, Registration, SyncMode};
use crate::conn::{Conn, Cx, Pumped, Route, Step};
use crate::http::assets;
use crate::http::download::{self, Range};
use crate::http::{handshake, Request, Response};
use crate::metrics::{CloseReason, Gauges, Metrics};
use crate::net::{self, Accept};
use crate::store::FileMeta;
use crate::store::Store;
use crate::timer::{TimerKey, Timers};
use crate::ws::{frame, CloseCode, Opcode};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);

/// Descriptors kept back from the connection cap for the server's own files.
const RESERVED_FDS: u64 = 64;

/// Connections accepted per iteration before the loop serves the ones it has.
const ACCEPT_BATCH: usize = 256;

/// How long accepting pauses after the process runs out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Size of the loop's one read buffer, shared by all connections.
const SCRATCH_SIZE: usize = 64 * 1024;

/// The server: everything the loop owns.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    local_addr: SocketAddr,
    conns: Slab<Conn>,
    timers: Timers,
    cfg: Config,
    metrics: Metrics,
    service: Service,
    /// Effects returned by the service, applied in order.
    effects: Vec<Effect>,
    /// Open `/broadcast` connections.
    broadcast_members: Vec<usize>,
    /// Chat connections whose close frame (or protocol error) waits for replies they are owed.
    ending_later: Vec<usize>,
    max_connections: usize,
    /// The listener may have connections waiting (the last accept did not say WouldBlock).
    accept_ready: bool,
    accept_paused: bool,
    draining: bool,
    stop: bool,
    /// The read buffer every connection reads into; leftovers move to the connection.
    scratch: Vec<u8>,
    /// Messages decoded from one connection, waiting for dispatch.
    inbox: Vec<(Opcode, Vec<u8>)>,
    /// Connections to finish (flush, reap, reschedule) at the end of this iteration.
    touched: Vec<usize>,
    /// Connections with unread input, served again next iteration without waiting for an event.
    carry: Vec<usize>,
}

/// Binds and runs until a signal has stopped the server.
pub fn run(cfg: Config) -> io::Result<()> {
    Server::bind(cfg)?.run()
}

impl Server {
    /// Opens the listener, raises the open-file limit and registers the signal handlers.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.listen)?;
        net::set_backlog(&listener, cfg.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;

        let fd_limit = net::raise_fd_limit();
        let fits = fd_limit.saturating_sub(RESERVED_FDS) as usize;
        let max_connections = match cfg.max_connections {
            Some(n) if n > fits => {
                warn!("--max-connections {n} is above what the open-file limit ({fd_limit}) allows; accepts past {fits} will fail and be retried");
                n
            }
            Some(n) => n,
            None => fits,
        };
        info!("listening on {local_addr}");
        info!("open-file limit {fd_limit}: up to {max_connections} connections");
        if cfg.echo {
            info!("/echo enabled");
        }
        let store = Store::open(&cfg.data_dir)
            .and_then(|s| s.set_synchronous(cfg.sync == SyncMode::Full).map(|()| s))
            .map_err(|e| io::Error::other(format!("{}: {e}", cfg.data_dir.display())))?;
        info!("data in {}", cfg.data_dir.display());
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let service = Service::new(store, settings(&cfg), waker);
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            local_addr,
            conns: Slab::new(),
            timers: Timers::default(),
            cfg,
            metrics: Metrics::default(),
            service,
            effects: Vec::new(),
            broadcast_members: Vec::new(),
            ending_later: Vec::new(),
            max_connections,
            accept_ready: true,
            accept_paused: false,
            draining: false,
            stop: false,
            scratch: vec![0; SCRATCH_SIZE],
            inbox: Vec::new(),
            touched: Vec::new(),
            carry: Vec::new(),
        })
    }

    /// The address the listener is bound to (the chosen port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut fired = Vec::new();
        loop {
            // A connection reaped in the last flush may have left a departure to announce.
            let busy = !self.carry.is_empty()
                || (self.accept_ready && self.can_accept())
                || self.service.has_presence();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.timers.timeout(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready = true,
                    SIGNALS => self.on_signals(now),
                    WAKER => {
                        self.service.collect_password_work(now);
                        self.apply_effects(now);
                        self.settle_endings(now);
                    }
                    Token(key) => {
                        if let Some(conn) = self.conns.get_mut(key) {
                            // Closed or errored sockets are read too: the read tells which.
                            let hangup = event.is_read_closed() || event.is_error();
                            conn.set_ready(event.is_readable(), event.is_writable(), hangup);
                            touch(&mut self.conns, &mut self.touched, key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.carry) {
                if self.conns.contains(key) {
                    touch(&mut self.conns, &mut self.touched, key);
                }
            }

            if self.accept_ready && self.can_accept() {
                self.accept(now);
            }

            // `touched` grows while we go (an accept, a dispatch to another connection).
            let mut i = 0;
            while i < self.touched.len() {
                let key = self.touched[i];
                self.service(key, now);
                i += 1;
            }

            // Users who came online in this iteration are announced before the messages they
            // may already have sent are delivered.
            self.flush_presence(now);
            // The iteration's sends, stored in one transaction; acknowledgements and deliveries
            // are queued only after it commits.
            if self.service.has_batch() {
                self.service.commit(now);
                self.apply_effects(now);
            }
            if !self.ending_later.is_empty() {
                self.settle_endings(now);
            }

            self.timers.expired(now, &mut fired);
            for (at, key) in fired.drain(..) {
                self.on_timer(at, key, now);
            }

            self.finish_iteration(now);

            if self.stop || (self.draining && self.conns.is_empty()) {
                break;
            }
        }
        let left = self.conns.len();
        if left > 0 {
            info!("drain timeout: dropping {left} connections");
        }
        info!("shutdown complete");
        Ok(())
    }

    fn can_accept(&self) -> bool {
        self.listener.is_some() && !self.accept_paused
    }

    // ----------------------------------------------------------------------------------------
    // Accepting
    // ----------------------------------------------------------------------------------------

    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            let (mut socket, peer) = match net::accept(listener) {
                Accept::Conn(socket, peer) => (socket, peer),
                Accept::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Accept::Skip => continue,
                Accept::Exhausted(e) | Accept::Failed(e) => {
                    // The listener stays readable while the backlog holds connections; without
                    // a pause the loop would spin on a failing accept.
                    self.metrics.accept_errors += 1;
                    warn!(
                        "accept failed ({e}); pausing accepts for {}ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused = true;
                    self.timers.schedule(now + ACCEPT_BACKOFF, TimerKey::Accept);
                    return;
                }
            };
            self.metrics.accepted += 1;
            if self.conns.len() >= self.max_connections {
                // Best effort: a fresh socket's buffer takes a short response whole.
                self.metrics.rejected_full += 1;
                let _ = socket.write(&Response::text(503, "server full").encode(false));
                debug!("{peer}: refused, {} connections open", self.conns.len());
                continue;
            }
            let _ = socket.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut socket, Token(key), Interest::READABLE)
            {
                warn!("{peer}: register failed: {e}");
                continue;
            }
            debug!("{peer}: accepted as {key}");
            entry.insert(Conn::new(socket, peer, now));
            touch(&mut self.conns, &mut self.touched, key);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Reading and dispatch
    // ----------------------------------------------------------------------------------------

    /// Reads, parses and dispatches everything one connection has for this iteration.
    fn service(&mut self, key: usize, now: Instant) {
        loop {
            let Server {
                conns,
                cfg,
                metrics,
                scratch,
                inbox,
                ..
            } = self;
            let Some(conn) = conns.get_mut(key) else {
                return;
            };
            let mut cx = Cx { cfg, metrics, now };
            match conn.pump(&mut cx, scratch, inbox) {
                Pumped::Request(req) => self.route(key, req, now),
                Pumped::Done => break,
            }
        }
        self.dispatch(key, now);
    }

    /// A connection and the context it works in, borrowed together.
    fn conn_with_cx(&mut self, key: usize, now: Instant) -> Option<(&mut Conn, Cx<'_>)> {
        let conn = self.conns.get_mut(key)?;
        let cx = Cx {
            cfg: &self.cfg,
            metrics: &mut self.metrics,
            now,
        };
        Some((conn, cx))
    }

    /// Applies the messages one connection sent.
    fn dispatch(&mut self, key: usize, now: Instant) {
        let mut inbox = std::mem::take(&mut self.inbox);
        let route = self.conns.get(key).and_then(Conn::route);
        match route {
            Some(Route::Echo) => {
                let mut cx = Cx {
                    cfg: &self.cfg,
                    metrics: &mut self.metrics,
                    now,
                };
                let conn = &mut self.conns[key];
                for (opcode, data) in inbox.drain(..) {
                    conn.send(opcode, &data, &mut cx);
                }
            }
            Some(Route::Chat) => {
                for (opcode, data) in inbox.drain(..) {
                    self.service.message(key, opcode, data, now);
                }
                self.apply_effects(now);
            }
            Some(Route::Broadcast) => {
                let Server {
                    conns,
                    cfg,
                    metrics,
                    touched,
                    broadcast_members,
                    ..
                } = self;
                let mut cx = Cx { cfg, metrics, now };
                // Everything this connection sent in the iteration goes to every other member,
                // encoded once into one buffer that each queue shares: one reference and one
                // write per member, however many messages the burst holds.
                let frames = inbox.len() as u64;
                let mut encoded = Vec::new();
                for (opcode, data) in inbox.drain(..) {
                    frame::write_header(&mut encoded, true, opcode, data.len(), None);
                    encoded.extend_from_slice(&data);
                }
                if frames > 0 {
                    let burst: Rc<[u8]> = encoded.into();
                    for &member in broadcast_members.iter().filter(|&&m| m != key) {
                        if let Some(conn) = conns.get_mut(member) {
                            conn.send_shared(&burst, frames, &mut cx);
                            touch(conns, touched, member);
                        }
                    }
                }
            }
            None => inbox.clear(),
        }
        self.inbox = inbox;
        // A close frame (or a protocol error) ends the connection after the replies it is owed:
        // those waiting for the commit or the password worker come first.
        if self.service.owes_replies(key) {
            if !self.ending_later.contains(&key) {
                self.ending_later.push(key);
            }
        } else if let Some((conn, mut cx)) = self.conn_with_cx(key, now) {
            conn.after_dispatch(&mut cx);
        }
    }

    /// Ends the connections whose owed replies have now gone out.
    fn settle_endings(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.ending_later.len() {
            let key = self.ending_later[i];
            if self.conns.contains(key) && self.service.owes_replies(key) {
                i += 1;
                continue;
            }
            self.ending_later.swap_remove(i);
            if let Some((conn, mut cx)) = self.conn_with_cx(key, now) {
                conn.after_dispatch(&mut cx);
                touch(&mut self.conns, &mut self.touched, key);
            }
        }
    }

    /// Carries out what the service asked for, in order.
    fn apply_effects(&mut self, now: Instant) {
        self.service.drain_effects(&mut self.effects);
        let Server {
            conns,
            cfg,
            metrics,
            touched,
            effects,
            ..
        } = self;
        let mut cx = Cx { cfg, metrics, now };
        for effect in effects.drain(..) {
            let key = match effect {
                Effect::Send(key, ref frame) => {
                    if let Some(conn) = conns.get_mut(key) {
                        conn.send_shared(frame, 1, &mut cx);
                    }
                    key
                }
                Effect::SendFrames(key, ref frames, count) => {
                    if let Some(conn) = conns.get_mut(key) {
                        conn.send_shared(frames, count.into(), &mut cx);
                    }
                    key
                }
                Effect::Close(key, code, reason) => {
                    if let Some(conn) = conns.get_mut(key) {
                        conn.advance(Step::Close(code, reason), &mut cx);
                    }
                    key
                }
                Effect::Authenticated(key, yes) => {
                    if let Some(conn) = conns.get_mut(key) {
                        conn.set_auth_deadline((!yes).then(|| now + cx.cfg.auth_timeout));
                    }
                    key
                }
            };
            touch(conns, touched, key);
        }
    }

    /// Answers a request head: an upgrade on a known WebSocket path, or a plain HTTP route.
    fn route(&mut self, key: usize, req: Request, now: Instant) {
        let head_only = req.method == "HEAD";
        let answer = if handshake::is_upgrade(&req) {
            let route = match req.path.as_str() {
                "/ws" => Some(Route::Chat),
                "/echo" if self.cfg.echo => Some(Route::Echo),
                "/broadcast" if self.cfg.echo => Some(Route::Broadcast),
                _ => None,
            };
            match route {
                Some(route) => {
                    handshake::check(&req, &self.cfg.allowed_origins).map(|resp| (resp, route))
                }
                None => Err(Response::status(404)),
            }
            .inspect_err(|r| self.metrics.handshake_failed(r.status))
        } else if let Some(file_id) = req.path.strip_prefix("/files/") {
            let file_id = file_id.to_string();
            return self.download(key, &req, &file_id, now);
        } else {
            Err(self.plain(&req))
        };
        let Some((conn, mut cx)) = self.conn_with_cx(key, now) else {
            return;
        };
        let (bytes, route) = match answer {
            Ok(upgrade) => upgrade,
            Err(response) => {
                debug!(
                    "{}: {} {} -> {}",
                    conn.peer, req.method, req.path, response.status
                );
                conn.respond(&response, head_only, &mut cx);
                return;
            }
        };
        conn.upgrade(bytes, route, &mut cx);
        let ip = conn.peer.ip();
        if route == Route::Chat {
            conn.set_auth_deadline(Some(now + cx.cfg.auth_timeout));
        }
        match route {
            Route::Chat => self.service.open(key, ip, now),
            Route::Broadcast => self.broadcast_members.push(key),
            Route::Echo => {}
        }
    }

    /// `GET /files/{id}`: authorized by a bearer token or `?token=`, streamed from disk with
    /// `Range` support.
    fn download(&mut self, key: usize, req: &Request, file_id: &str, now: Instant) {
        let head_only = req.method == "HEAD";
        let refusal = |status: u16| Response::status(status);
        let outcome = if req.method != "GET" && !head_only {
            Err(refusal(405).with_header("Allow", "GET, HEAD"))
        } else {
            let token = bearer_token(req);
            match self.service.authorize_download(token.as_deref(), file_id) {
                Err(DownloadRefusal::Unauthenticated) => {
                    Err(refusal(401).with_header("WWW-Authenticate", "Bearer"))
                }
                Err(DownloadRefusal::Forbidden) => Err(refusal(403)),
                Err(DownloadRefusal::NotFound) => Err(refusal(404)),
                Err(DownloadRefusal::Unavailable) => Err(refusal(503)),
                Ok((meta, path)) => open_range(&path, &meta, req.header("range")),
            }
        };
        let Some((conn, mut cx)) = self.conn_with_cx(key, now) else {
            return;
        };
        match outcome {
            Ok((head, file, len)) => conn.respond_file(head, file, len, head_only, &mut cx),
            Err(response) => {
                debug!(
                    "{}: {} {} -> {}",
                    conn.peer, req.method, req.path, response.status
                );
                conn.respond(&response, head_only, &mut cx);
            }
        }
    }

    /// The plain HTTP routes.
    fn plain(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return Response::status(405).with_header("Allow", "GET, HEAD");
        }
        if let Some(asset) = assets::asset(&req.path) {
            return asset;
        }
        match req.path.as_str() {
            "/healthz" if self.draining => Response::text(503, "shutting down"),
            "/healthz" => Response::text(200, "ok"),
            "/metrics" => Response {
                status: 200,
                headers: vec![("Cache-Control", "no-store".into())],
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: {
                    let mut text = self.metrics.render(&self.gauges());
                    self.service.render_metrics(&mut text);
                    self.service.render_file_metrics(&mut text);
                    text.into_bytes()
                },
            },
            _ => Response::status(404),
        }
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            connections: self.conns.len(),
            websockets: self.conns.iter().filter(|(_, c)| c.is_open()).count(),
            queued_bytes: self.conns.iter().map(|(_, c)| c.queued()).sum(),
            max_connections: self.max_connections,
        }
    }

    // ----------------------------------------------------------------------------------------
    // Timers, signals, shutdown
    // ----------------------------------------------------------------------------------------

    fn on_timer(&mut self, at: Instant, key: TimerKey, now: Instant) {
        match key {
            TimerKey::Conn(k) => {
                let Server {
                    conns,
                    cfg,
                    metrics,
                    touched,
                    ..
                } = self;
                let Some(conn) = conns.get_mut(k) else {
                    return;
                };
                // A reused slab slot may meet its predecessor's deadline: only its own counts.
                if conn.timer_at != Some(at) {
                    return;
                }
                conn.timer_at = None;
                conn.on_timer(&mut Cx { cfg, metrics, now });
                touch(conns, touched, k);
            }
            TimerKey::Accept => {
                self.accept_paused = false;
                self.accept_ready = true;
            }
            TimerKey::Drain => self.stop = true,
        }
    }

    fn on_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        if let Some(sig) = pending.first() {
            info!("signal {sig}: shutting down");
            self.begin_shutdown(now);
        }
    }

    /// Stops accepting, sends close 1001 to every WebSocket, and gives them the drain timeout
    /// to finish their close handshakes.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let mut cx = Cx {
                cfg: &self.cfg,
                metrics: &mut self.metrics,
                now,
            };
            self.conns[key].advance(
                Step::Close(CloseCode::GOING_AWAY, CloseReason::Shutdown),
                &mut cx,
            );
            touch(&mut self.conns, &mut self.touched, key);
        }
        self.timers
            .schedule(now + self.cfg.drain_timeout, TimerKey::Drain);
        info!(
            "draining {} connections (up to {:?})",
            self.conns.len(),
            self.cfg.drain_timeout
        );
    }

    // ----------------------------------------------------------------------------------------
    // End of the iteration
    // ----------------------------------------------------------------------------------------

    /// Announces everyone who came or went since the last call, together.
    fn flush_presence(&mut self, now: Instant) {
        if self.service.has_presence() {
            self.service.flush_presence();
            self.apply_effects(now);
        }
    }

    /// Flushes, reaps and reschedules every connection touched in this iteration.
    fn finish_iteration(&mut self, now: Instant) {
        // Chat connections that left the open phase leave the service first; what that says to
        // others (presence) is queued before the flush below.
        let mut i = 0;
        while i < self.touched.len() {
            let key = self.touched[i];
            let open = self.conns.get(key).is_some_and(Conn::is_open);
            if self.service.has(key) && !open {
                self.service.close(key);
                self.apply_effects(now);
            }
            if !open {
                self.broadcast_members.retain(|&m| m != key);
            }
            i += 1;
        }
        self.flush_presence(now);
        let mut touched = std::mem::take(&mut self.touched);
        for key in touched.drain(..) {
            let mut cx = Cx {
                cfg: &self.cfg,
                metrics: &mut self.metrics,
                now,
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.touched = false;
            conn.flush(&mut cx, &mut self.scratch);
            if conn.is_finished() {
                self.reap(key);
                continue;
            }
            // Ask for writable events only while output waits for the socket: otherwise every
            // acknowledgement from the peer would wake the loop for nothing.
            let want_writable = conn.queued() > 0;
            if want_writable != conn.write_interest {
                let interest = if want_writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if let Err(e) =
                    self.poll
                        .registry()
                        .reregister(conn.socket_mut(), Token(key), interest)
                {
                    warn!("{}: reregister failed: {e}", conn.peer);
                }
                conn.write_interest = want_writable;
            }
            let want = conn.deadline(&self.cfg);
            match (conn.timer_at, want) {
                // Lazy: a later deadline is found when the earlier entry fires.
                (Some(at), Some(w)) if w >= at => {}
                (Some(at), _) => {
                    self.timers.cancel(at, TimerKey::Conn(key));
                    conn.timer_at = None;
                }
                (None, _) => {}
            }
            if let (None, Some(w)) = (conn.timer_at, want) {
                self.timers.schedule(w, TimerKey::Conn(key));
                conn.timer_at = Some(w);
            }
            if conn.wants_read() {
                self.carry.push(key);
            }
        }
        self.touched = touched;
    }

    fn reap(&mut self, key: usize) {
        self.ending_later.retain(|&k| k != key);
        if self.service.has(key) {
            self.service.close(key);
        }
        let mut conn = self.conns.remove(key);
        if let Some(at) = conn.timer_at {
            self.timers.cancel(at, TimerKey::Conn(key));
        }
        let _ = self.poll.registry().deregister(conn.socket_mut());
        if let Some(reason) = conn.close_reason() {
            self.metrics.closed(reason);
        }
    }
}

/// The token of a download: `Authorization: Bearer TOKEN`, or `?token=TOKEN`.
fn bearer_token(req: &Request) -> Option<String> {
    let bearer = req.header("authorization").and_then(|auth| {
        let (scheme, token) = auth.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    if bearer.is_some() {
        return bearer;
    }
    req.query.as_deref()?.split('&').find_map(|pair| {
        pair.strip_prefix("token=")
            .map(|t| t.replace("%2E", ".").replace("%2e", "."))
    })
}

/// Opens a stored file for the requested range: the response head, the file positioned at the
/// first byte, and the length to send; or the refusal (416 for a range outside the file).
fn open_range(
    path: &std::path::Path,
    meta: &FileMeta,
    range: Option<&str>,
) -> Result<(String, std::fs::File, u64), Response> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| {
        warn!("stored file {} unreadable: {e}", meta.id);
        Response::status(404)
    })?;
    let size = meta.size;
    let range = download::parse_range(range, size);
    let (start, len) = match range {
        Range::Unsatisfiable => {
            return Err(
                Response::status(416).with_header("Content-Range", format!("bytes */{size}"))
            )
        }
        Range::Part { start, end } => (start, end - start + 1),
        Range::Full => (0, size),
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|_| Response::status(500))?;
    let (_, head) = download::head(range, size, meta.mime.as_deref(), &meta.name);
    Ok((head, file, len))
}

/// The chat service's settings from the configuration.
fn settings(cfg: &Config) -> Settings {
    Settings {
        registration_open: cfg.registration == Registration::Open,
        admins: cfg.admins.iter().cloned().collect(),
        jwt_secret: cfg.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        session_ttl: cfg.session_ttl,
        command_rate: cfg.command_rate,
        command_burst: cfg.command_burst,
        rate_strikes: cfg.rate_strikes,
        login_rate: cfg.login_rate / 60.0,
        login_burst: cfg.login_burst,
        argon2: Cost {
            memory_kib: cfg.argon2_memory_kib,
            iterations: cfg.argon2_iterations,
        },
        max_text_chars: cfg.max_text_chars,
        recovery_limit: cfg.recovery_limit,
        typing_rate: cfg.typing_rate,
        typing_burst: cfg.typing_burst,
        files_dir: crate::chat::upload::files_dir(&cfg.data_dir),
        max_file_size: cfg.max_file_size,
    }
}

/// Adds a connection to this iteration's list of connections to finish, once.
fn touch(conns: &mut Slab<Conn>, touched: &mut Vec<usize>, key: usize) {
    if let Some(conn) = conns.get_mut(key) {
        if !conn.touched {
            conn.touched = true;
            touched.push(key);
        }
    }
}
