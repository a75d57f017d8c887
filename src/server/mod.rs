//! The event loop: one `mio::Poll`, the listener, a `Slab` of connections, the timers, the chat
//! service and the two workers it uses (the password hasher and the store writer).
//!
//! One iteration ([`Server::run`]):
//!
//! 1. poll, sleeping until the earliest deadline (or not at all when work was carried over);
//! 2. take the events: readiness of connections, signals, and the workers' results (password
//!    checks, commits), which go to the chat service;
//! 3. accept new connections;
//! 4. read, parse and dispatch on every connection that is ready: each returns its messages
//!    through an inbox, routed to the echo, the broadcast or the chat service;
//! 5. [`Server::before_sleep`], the end of the iteration, in this order: run expired deadlines,
//!    let the connections that left the open phase leave the service, let the service end its
//!    iteration (presence announced, the batch handed to the store writer), apply the service's
//!    effects (replies and deliveries, each broadcast encoded once and shared), flush what the
//!    sockets take, reap finished connections and reschedule deadlines.
//!
//! Only this thread touches sockets. Nothing holds a reference to another connection: the loop
//! owns them all and hands each one a [`Cx`] with the configuration, the counters and the time.
//! HTTP routes and downloads are in [`routes`].

mod routes;

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

use crate::chat::hasher::{self, Cost, Hasher};
use crate::chat::{Effect, Now, Service, Settings};
use crate::config::{Config, Registration, SyncMode};
use crate::conn::{Conn, Cx, Pumped, Route, Step};
use crate::http::Response;
use crate::metrics::{CloseReason, Metrics};
use crate::net::{self, Accept};
use crate::store::{Store, Writer};
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
    /// The chat service, for `/ws` connections.
    chat: Service,
    /// The password worker.
    hasher: Hasher,
    /// The store writer.
    writer: Writer,
    /// Effects taken from the chat service, applied in order.
    effects: Vec<Effect>,
    /// Open `/broadcast` connections.
    broadcast_members: Vec<usize>,
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
    /// Opens the listener and the store, raises the open-file limit, registers the signal
    /// handlers and starts the store writer.
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
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (chat, writer) = open_store(&cfg, Arc::clone(&waker))?;
        info!("data in {}", cfg.data_dir.display());
        let hasher = Hasher::new(argon2_cost(&cfg), waker);
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            local_addr,
            conns: Slab::new(),
            timers: Timers::default(),
            cfg,
            metrics: Metrics::default(),
            chat,
            hasher,
            writer,
            effects: Vec::new(),
            broadcast_members: Vec::new(),
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
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Now::read();
            self.take_events(&events, now);
            if self.accept_ready && self.can_accept() {
                self.accept(now.mono);
            }
            self.serve_touched(now);
            self.before_sleep(now);
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

    /// How long the poll may sleep: not at all while work was carried over (unread input,
    /// connections waiting to be accepted, presence to announce), else until the next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        let busy = !self.carry.is_empty()
            || (self.accept_ready && self.can_accept())
            || self.chat.has_work();
        if busy {
            Some(Duration::ZERO)
        } else {
            self.timers.timeout(Instant::now())
        }
    }

    /// Notes readiness on the connections the events name (and the ones carried over), and
    /// takes signals and the workers' results.
    fn take_events(&mut self, events: &Events, now: Now) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_ready = true,
                SIGNALS => self.on_signals(now.mono),
                WAKER => self.collect_workers(now),
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
            touch(&mut self.conns, &mut self.touched, key);
        }
    }

    /// The password worker's and the store writer's results, to the chat service.
    fn collect_workers(&mut self, now: Now) {
        let mut done = Vec::new();
        self.hasher.collect(&mut done);
        for d in done {
            self.chat.password_done(d, now);
        }
        if let Some(committed) = self.writer.collect() {
            self.chat.committed(committed, now);
        }
    }

    /// Reads and dispatches every touched connection (the list grows as we go: an accept, a
    /// broadcast to another connection).
    fn serve_touched(&mut self, now: Now) {
        let mut i = 0;
        while i < self.touched.len() {
            let key = self.touched[i];
            self.read_and_dispatch(key, now);
            i += 1;
        }
    }

    /// The end of an iteration, as one list (redis's `beforeSleep`).
    fn before_sleep(&mut self, now: Now) {
        self.run_timers(now.mono);
        self.leave_chat();
        self.chat.end_iteration(now);
        self.apply_effects(now);
        self.flush_and_reap(now.mono);
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
    fn read_and_dispatch(&mut self, key: usize, now: Now) {
        loop {
            let Some((conn, mut cx, scratch, inbox)) = self.lend(key, now.mono) else {
                return;
            };
            match conn.pump(&mut cx, scratch, inbox) {
                Pumped::Request(req) => self.route(key, req, now),
                Pumped::Done => break,
            }
        }
        self.dispatch(key, now);
    }

    /// A connection with what it works with, borrowed together.
    #[allow(clippy::type_complexity)]
    fn lend(
        &mut self,
        key: usize,
        now: Instant,
    ) -> Option<(&mut Conn, Cx<'_>, &mut Vec<u8>, &mut Vec<(Opcode, Vec<u8>)>)> {
        let conn = self.conns.get_mut(key)?;
        let cx = Cx {
            cfg: &self.cfg,
            metrics: &mut self.metrics,
            now,
        };
        Some((conn, cx, &mut self.scratch, &mut self.inbox))
    }

    /// Applies the messages one connection sent, by its route. A connection whose peer closed
    /// (or broke the protocol) ends once the replies it is owed are out: at once for the echo
    /// routes, when the chat service says so for `/ws`.
    fn dispatch(&mut self, key: usize, now: Now) {
        let Some(route) = self.conns.get(key).and_then(Conn::route) else {
            self.inbox.clear();
            return;
        };
        let mut inbox = std::mem::take(&mut self.inbox);
        match route {
            Route::Echo => {
                let (conn, mut cx, ..) = self.lend(key, now.mono).expect("routed above");
                for (opcode, data) in inbox.drain(..) {
                    conn.send(opcode, &data, &mut cx);
                }
            }
            Route::Chat => {
                for (opcode, data) in inbox.drain(..) {
                    self.chat.message(key, opcode, data, now);
                }
            }
            Route::Broadcast => self.broadcast(key, &mut inbox, now.mono),
        }
        self.inbox = inbox;
        let Some((conn, mut cx, ..)) = self.lend(key, now.mono) else {
            return;
        };
        if conn.is_ending() {
            match route {
                Route::Chat => self.chat.finish_after_replies(key),
                Route::Echo | Route::Broadcast => conn.finish_ending(&mut cx),
            }
        }
    }

    /// `/broadcast`: everything this connection sent in the iteration goes to every other
    /// member, encoded once into one buffer that each queue shares: one reference and one write
    /// per member, however many messages the burst holds.
    fn broadcast(&mut self, key: usize, inbox: &mut Vec<(Opcode, Vec<u8>)>, now: Instant) {
        let frames = inbox.len() as u64;
        if frames == 0 {
            return;
        }
        let mut encoded = Vec::new();
        for (opcode, data) in inbox.drain(..) {
            frame::write_header(&mut encoded, true, opcode, data.len(), None);
            encoded.extend_from_slice(&data);
        }
        let burst: Rc<[u8]> = encoded.into();
        let Server {
            conns,
            cfg,
            metrics,
            touched,
            broadcast_members,
            ..
        } = self;
        let mut cx = Cx { cfg, metrics, now };
        for &member in broadcast_members.iter().filter(|&&m| m != key) {
            if let Some(conn) = conns.get_mut(member) {
                conn.send_shared(&burst, frames, &mut cx);
                touch(conns, touched, member);
            }
        }
    }

    /// Carries out what the chat service decided, in order: the one way its effects reach the
    /// connections and the workers. Applying one may produce more (a worker that cannot take a
    /// job answers at once), which are applied in turn.
    fn apply_effects(&mut self, now: Now) {
        loop {
            self.chat.drain(&mut self.effects);
            if self.effects.is_empty() {
                return;
            }
            let mut effects = std::mem::take(&mut self.effects);
            for effect in effects.drain(..) {
                self.apply(effect, now);
            }
            self.effects = effects;
        }
    }

    fn apply(&mut self, effect: Effect, now: Now) {
        let key = match effect {
            Effect::Hash(ticket, work) => {
                if !self.hasher.submit(ticket, work) {
                    let failed = hasher::Done {
                        ticket,
                        outcome: hasher::Outcome::Failed,
                    };
                    self.chat.password_done(failed, now);
                }
                return;
            }
            Effect::Commit(batch) => {
                if let Some(failed) = self.writer.submit(batch) {
                    self.chat.committed(failed, now);
                }
                return;
            }
            Effect::Send(key, _)
            | Effect::SendFrames(key, ..)
            | Effect::Close(key, ..)
            | Effect::Authenticated(key, _)
            | Effect::Finish(key) => key,
        };
        let Server {
            conns,
            cfg,
            metrics,
            touched,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let mut cx = Cx {
            cfg,
            metrics,
            now: now.mono,
        };
        match effect {
            Effect::Send(_, frame) => {
                conn.send_shared(&frame, 1, &mut cx);
            }
            Effect::SendFrames(_, frames, count) => {
                conn.send_shared(&frames, count.into(), &mut cx);
            }
            Effect::Close(_, code, reason) => conn.advance(Step::Close(code, reason), &mut cx),
            Effect::Authenticated(_, yes) => {
                conn.set_auth_deadline((!yes).then(|| now.mono + cx.cfg.auth_timeout));
            }
            Effect::Finish(_) => conn.finish_ending(&mut cx),
            Effect::Hash(..) | Effect::Commit(_) => unreachable!("handled above"),
        }
        touch(conns, touched, key);
    }

    // ----------------------------------------------------------------------------------------
    // Timers, signals, shutdown
    // ----------------------------------------------------------------------------------------

    fn run_timers(&mut self, now: Instant) {
        let mut fired = Vec::new();
        self.timers.expired(now, &mut fired);
        for (at, key) in fired {
            self.on_timer(at, key, now);
        }
    }

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
            let (conn, mut cx, ..) = self.lend(key, now).expect("listed above");
            conn.advance(
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

    /// Chat connections that left the open phase leave the service; what that says to others
    /// (presence) is announced before the flush.
    fn leave_chat(&mut self) {
        for i in 0..self.touched.len() {
            let key = self.touched[i];
            let open = self.conns.get(key).is_some_and(Conn::is_open);
            if !open {
                if self.chat.has(key) {
                    self.chat.close(key);
                }
                self.broadcast_members.retain(|&m| m != key);
            }
        }
    }

    /// Flushes, reaps and reschedules every connection touched in this iteration.
    fn flush_and_reap(&mut self, now: Instant) {
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
            self.reregister(key);
            self.reschedule(key);
            if self.conns[key].wants_read() {
                self.carry.push(key);
            }
        }
        self.touched = touched;
    }

    /// Asks for writable events only while output waits for the socket: otherwise every
    /// acknowledgement from the peer would wake the loop for nothing.
    fn reregister(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let want_writable = conn.queued() > 0;
        if want_writable == conn.write_interest {
            return;
        }
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .poll
            .registry()
            .reregister(conn.socket_mut(), Token(key), interest)
        {
            warn!("{}: reregister failed: {e}", conn.peer);
        }
        conn.write_interest = want_writable;
    }

    /// Keeps the connection's one entry in the timer set at its next deadline.
    fn reschedule(&mut self, key: usize) {
        let conn = &mut self.conns[key];
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
    }

    fn reap(&mut self, key: usize) {
        if self.chat.has(key) {
            self.chat.close(key);
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

/// Opens the store twice: the loop's connection for reads, inside the chat service, and the
/// writer's, on its own thread.
fn open_store(cfg: &Config, waker: Arc<Waker>) -> io::Result<(Service, Writer)> {
    let in_dir =
        |e: crate::store::StoreError| io::Error::other(format!("{}: {e}", cfg.data_dir.display()));
    let reads = Store::open(&cfg.data_dir).map_err(in_dir)?;
    match reads.purge_sessions(crate::chat::now_ms()) {
        Ok(n) if n > 0 => info!("removed {n} expired sessions"),
        Ok(_) => {}
        Err(e) => warn!("expired sessions not removed: {e}"),
    }
    let writes = Store::open(&cfg.data_dir)
        .and_then(|s| s.set_synchronous(cfg.sync == SyncMode::Full).map(|()| s))
        .map_err(in_dir)?;
    let settings = settings(cfg);
    let writer = Writer::start(writes, settings.files_dir.clone(), waker)?;
    let chat = Service::new(reads, settings).map_err(in_dir)?;
    Ok((chat, writer))
}

fn argon2_cost(cfg: &Config) -> Cost {
    Cost {
        memory_kib: cfg.argon2_memory_kib,
        iterations: cfg.argon2_iterations,
    }
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
        argon2: argon2_cost(cfg),
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
