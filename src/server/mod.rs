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
//! 5. `Server::before_sleep`, the end of the iteration, in this order: run expired deadlines,
//!    let the connections that left the open phase leave the service, let the service end its
//!    iteration (expired credentials ended, presence announced, the batch handed to the store
//!    writer), wake up for the service's next expiry, apply the service's
//!    effects (replies and deliveries, each broadcast encoded once and shared), flush what the
//!    sockets take, reap finished connections and reschedule deadlines.
//!
//! Only this thread touches sockets. Nothing holds a reference to another connection: the loop
//! owns them all and hands each one a `Cx` with the configuration, the counters and the time.
//! HTTP routes and downloads are in `routes`.

mod admission;
mod dispatch;
mod end;
mod routes;
mod setup;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::hasher::Hasher;
use crate::chat::{Effect, Now, Service};
use crate::config::Config;
use crate::conn::Conn;
use crate::http::Response;
use crate::metrics::Metrics;
use crate::net::{self, Accept};
use crate::store::Writer;
use crate::timer::{TimerKey, Timers};
use crate::ws::Opcode;

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
    /// The chat service's next credential expiry, as scheduled in `timers`.
    expiry_at: Option<Instant>,
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
    /// Open connections per client address, for `--max-connections-per-address`.
    per_address: admission::AddressCounts,
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
        let (chat, writer) = setup::open_store(&cfg, Arc::clone(&waker))?;
        info!("data in {}", cfg.data_dir.display());
        let hasher = Hasher::new(setup::argon2_cost(&cfg), waker);
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            local_addr,
            conns: Slab::new(),
            timers: Timers::default(),
            expiry_at: None,
            cfg,
            metrics: Metrics::default(),
            chat,
            hasher,
            writer,
            effects: Vec::new(),
            broadcast_members: Vec::new(),
            max_connections,
            per_address: Default::default(),
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
        self.settle_writes();
        info!("shutdown complete");
        Ok(())
    }

    /// Commits what is still gathering or out before the process exits, so that nothing the
    /// loop accepted is dropped unstored; replies go to whichever connections are left.
    fn settle_writes(&mut self) {
        while self.chat.has_writes() {
            let now = Now::read();
            self.chat.end_iteration(now);
            self.apply_effects(now);
            let Some(committed) = self.writer.wait() else {
                break;
            };
            self.chat.committed(committed, now);
            self.apply_effects(now);
            self.flush_and_reap(now.mono);
        }
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
        self.schedule_expiry(now);
        self.apply_effects(now);
        self.flush_and_reap(now.mono);
    }

    /// Keeps one entry in the timer set no later than the chat service's next credential
    /// expiry. Lazy like the connections' entries: an entry earlier than needed only wakes the
    /// loop once for nothing.
    fn schedule_expiry(&mut self, now: Now) {
        let Some(want) = self.chat.next_expiry(now) else {
            return;
        };
        if self.expiry_at.is_some_and(|at| at <= want) {
            return;
        }
        if let Some(at) = self.expiry_at.replace(want) {
            self.timers.cancel(at, TimerKey::Expiry);
        }
        self.timers.schedule(want, TimerKey::Expiry);
    }

    fn can_accept(&self) -> bool {
        self.listener.is_some() && !self.accept_paused
    }

    // ----------------------------------------------------------------------------------------
    // Accepting
    // ----------------------------------------------------------------------------------------

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
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
            let Some(peer) = self.admit_socket(&mut socket, peer) else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut socket, Token(key), Interest::READABLE)
            {
                warn!("{peer}: register failed: {e}");
                self.release_address(&peer);
                continue;
            }
            debug!("{peer}: accepted as {key}");
            entry.insert(Conn::new(socket, peer, now));
            touch(&mut self.conns, &mut self.touched, key);
        }
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
