//! One connection: its socket, its phase, its buffers and its deadlines.
//!
//! A connection moves through four phases:
//!
//! ```text
//!   Handshake --(101)--> Open --(we send close)--> Closing --(peer's close)--+
//!       |                 |                          |                       v
//!       +--(HTTP answer)--+--(peer's close / error)--+------------------> Closed --> reaped
//! ```
//!
//! Every change of phase goes through [`Conn::advance`], which takes the phase by value and a
//! [`Step`] and decides the next phase in one `match`: this file. The rest reads bytes and turns
//! them into steps and messages (`read`), writes queued output (`write`) and keeps the
//! deadlines (`deadline`); none of it looks at another connection. Messages for the
//! application go out through an inbox the server owns.

mod deadline;
mod peer;
mod read;
mod write;

pub use peer::Peer;

use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Instant;

use log::debug;
use mio::net::TcpStream;

use crate::buffer::{InBuf, OutQueue, MAX_IOVECS};
use crate::config::Config;
use crate::http::{self, HeadLimits, Parsed, Request, Response};
use crate::metrics::{CloseReason, Metrics};
use crate::net::{self, Io};
use crate::ws::{close, frame, CloseCode, Event, Limits, Opcode, Role, Session};

/// Bytes read from one connection in one iteration before the loop moves on to others
/// (fairness); the rest is read in the next iteration.
pub const READ_BUDGET: usize = 256 * 1024;

/// A file body is read from disk in pieces of this size, one at a time as the socket takes
/// them, so a download of any size costs about this much memory.
pub const BODY_CHUNK: usize = 64 * 1024;

/// The rest of a file being sent as a response body.
#[derive(Debug)]
struct Body {
    file: File,
    remaining: u64,
}

/// A file response under way, measured for the minimum download rate.
#[derive(Debug, Clone, Copy)]
struct Download {
    /// When the response was queued.
    since: Instant,
    /// Bytes of it (head included) the socket has taken.
    sent: u64,
}

/// A connection whose own outgoing queue is above this stops being read until the queue drains,
/// so a client that sends faster than it reads (an echo flood) slows down instead of hitting the
/// queue cap.
pub const READ_PAUSE_QUEUED: usize = 512 * 1024;

/// A connection waiting for its output to drain (a replay in steps, a large read) is told once
/// its queue is under this.
pub const DRAIN_LOW: usize = 256 * 1024;

/// What the server does with an open WebSocket's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/echo`: every message goes back with its opcode.
    Echo,
    /// `/ws`: the chat protocol.
    Chat,
    /// `/broadcast` (with `--echo`): every message goes to every other `/broadcast`
    /// connection, encoded once; for measuring the transport's fan-out.
    Broadcast,
}

/// The phase of a connection; each variant owns the data that phase needs.
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head.
    Handshake {
        /// When the connection was accepted.
        since: Instant,
    },
    /// A WebSocket in the open state.
    Open {
        /// The frame decoder and close-handshake state.
        ws: Session,
        /// Where its messages go.
        route: Route,
    },
    /// We sent a close frame and wait for the peer's (RFC 6455 7.1.2) until `since` plus the
    /// close timeout. Incoming data frames are dropped.
    Closing {
        /// Still decoding, to find the peer's close frame.
        ws: Session,
        /// When our close frame was queued.
        since: Instant,
        /// Why we started closing.
        reason: CloseReason,
    },
    /// Done. With `linger`, queued bytes still go out, then our side of TCP is shut and what the
    /// peer sends is read and dropped until it closes too (so that unread bytes do not make the
    /// kernel reset the connection before the peer has read our last words), or until `since`
    /// plus the close timeout. Without, the connection is reaped at the end of the iteration.
    Closed {
        /// Why the connection ended.
        reason: CloseReason,
        /// When it ended.
        since: Instant,
        /// Whether it still waits for output to leave and the peer to close.
        linger: bool,
    },
}

/// The events that move a connection from one phase to another.
#[derive(Debug)]
pub enum Step {
    /// The handshake succeeded; the 101 response is queued.
    Upgraded(Route),
    /// A plain HTTP response (or a refusal) is queued; the connection closes after it.
    Answered(CloseReason),
    /// The peer's close frame arrived.
    PeerClosed(Option<u16>),
    /// The peer broke the protocol: fail the connection with this code (RFC 6455 7.1.7).
    Fail(CloseCode),
    /// We close a healthy connection: send a close frame with this code and wait for the reply.
    Close(CloseCode, CloseReason),
    /// The socket is finished (EOF, reset, error) or a deadline passed.
    Gone(CloseReason),
}

/// What happened to a message handed to [`Conn::send`], in the manner of uWebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued for the socket.
    Queued,
    /// Not queued: the connection is no longer open.
    Dropped,
    /// Not queued: it would have put the connection over its queue cap, so the connection is
    /// being closed with 1008.
    Overflow,
}

/// What [`Conn::pump`] stopped at.
#[derive(Debug)]
pub enum Pumped {
    /// A complete HTTP request head; the server routes it and calls `pump` again.
    Request(Request),
    /// Nothing more to do for now.
    Done,
}

/// Everything a connection needs from the server while it works.
pub struct Cx<'a> {
    /// Limits and timeouts.
    pub cfg: &'a Config,
    /// Counters.
    pub metrics: &'a mut Metrics,
    /// The time at the start of this iteration.
    pub now: Instant,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    socket: TcpStream,
    /// The peer's and the client's address, for limits and logs.
    pub peer: Peer,
    phase: Phase,
    input: InBuf,
    output: OutQueue,
    /// Last time any byte arrived.
    last_seen: Instant,
    /// A heartbeat ping is out and nothing has arrived since.
    ping_outstanding: bool,
    /// A chat connection must authenticate by then, or be closed.
    auth_deadline: Option<Instant>,
    /// Readiness hints: the socket may have more to read / room to write (edge-triggered, so
    /// they stay set until a call says WouldBlock, or a read comes back short).
    readable: bool,
    writable: bool,
    /// The peer hung up or the socket errored (an event said so): read until EOF, since no
    /// further event will come for it.
    hangup: bool,
    write_shut: bool,
    /// The peer shut its side (EOF) while we still had things to say.
    peer_eof: bool,
    /// A file response still being read from disk.
    body: Option<Body>,
    /// This connection answered with a file: its lingering waits for the socket (as long as
    /// the download keeps its rate), not the clock.
    download: Option<Download>,
    /// Since when the socket has taken none of the queued output: the last time it took bytes,
    /// or the flush that found output queued after the previous one had left none.
    waiting_since: Instant,
    /// Output (or a file body) was left for the socket by the last flush.
    owed: bool,
    /// The deadline this connection has in the server's timer set, if any.
    pub timer_at: Option<Instant>,
    /// Already in the server's list of connections to finish this iteration.
    pub touched: bool,
    /// Registered for writable events (only while output waits for the socket).
    pub write_interest: bool,
    /// The peer's close frame or a protocol error ends the open phase, but only after the
    /// messages that arrived before it have been dispatched and answered (their replies precede
    /// our close frame; the chat service says when, see `Service::finish_after_replies`).
    /// Until then nothing more is decoded.
    ending: Option<Step>,
    /// Messages the next pump may decode: what the chat service can take now. At zero the
    /// connection is not read; bytes stay in the socket and TCP slows the peer.
    room: usize,
    /// Decoding stopped at `room` with bytes left in `input`: more may be decoded without a
    /// read.
    backlog: bool,
    /// The chat service waits to hear that the output queue is under [`DRAIN_LOW`].
    pub awaits_drain: bool,
}

impl Conn {
    /// A connection just accepted.
    pub fn new(socket: TcpStream, peer: Peer, now: Instant) -> Conn {
        Conn {
            socket,
            peer,
            phase: Phase::Handshake { since: now },
            input: InBuf::default(),
            output: OutQueue::default(),
            last_seen: now,
            ping_outstanding: false,
            auth_deadline: None,
            readable: false,
            writable: true,
            hangup: false,
            write_shut: false,
            peer_eof: false,
            body: None,
            download: None,
            waiting_since: now,
            owed: false,
            timer_at: None,
            touched: false,
            write_interest: false,
            ending: None,
            room: usize::MAX,
            backlog: false,
            awaits_drain: false,
        }
    }

    /// Sets how many messages the next pump may decode (none: the connection is not read).
    pub fn set_room(&mut self, room: usize) {
        self.room = room;
    }

    /// Whether the chat service is waiting for this connection's queue to drain and it has.
    pub fn drained(&self) -> bool {
        self.awaits_drain && self.output.queued() < DRAIN_LOW
    }

    /// The socket, for registration with the poll.
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Starts (`Some`) or stops (`None`) the authentication deadline.
    pub fn set_auth_deadline(&mut self, at: Option<Instant>) {
        self.auth_deadline = at;
    }

    /// Where an open WebSocket's messages go.
    pub fn route(&self) -> Option<Route> {
        match self.phase {
            Phase::Open { route, .. } => Some(route),
            _ => None,
        }
    }

    /// Whether the WebSocket is open (messages can be sent).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Bytes queued for the socket.
    pub fn queued(&self) -> usize {
        self.output.queued()
    }

    /// Whether the connection is finished and can be dropped.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Closed { linger: false, .. })
    }

    /// Why it ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self.phase {
            Phase::Closed { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether its buffers hold no memory (an idle open connection).
    pub fn holds_no_buffers(&self) -> bool {
        let ws_idle = match &self.phase {
            Phase::Open { ws, .. } | Phase::Closing { ws, .. } => ws.is_idle(),
            _ => true,
        };
        self.input.is_empty() && self.output.is_empty() && ws_idle
    }

    /// Records readiness from a poll event.
    pub fn set_ready(&mut self, readable: bool, writable: bool, hangup: bool) {
        self.readable |= readable || hangup;
        self.writable |= writable;
        self.hangup |= hangup;
    }

    /// Whether the loop should come back to read more without waiting for an event: the socket
    /// was not drained (budget ran out) or decoded input is left, and the connection is paused
    /// neither by its own queue nor by the chat service.
    pub fn wants_read(&self) -> bool {
        (self.readable || self.backlog)
            && self.room > 0
            && self.reads()
            && self.output.queued() < READ_PAUSE_QUEUED
    }

    fn reads(&self) -> bool {
        self.ending.is_none()
            && !self.peer_eof
            && !matches!(self.phase, Phase::Closed { linger: false, .. })
    }

    /// Ends the open phase once the messages before `step` are dispatched and answered; in
    /// other phases there is nothing to wait for.
    fn end_after_dispatch(&mut self, step: Step, cx: &mut Cx) {
        if self.is_open() {
            self.ending = Some(step);
        } else {
            self.advance(step, cx);
        }
    }

    /// Whether the peer's close frame (or a protocol error) waits until the replies to the
    /// messages before it are out.
    pub fn is_ending(&self) -> bool {
        self.ending.is_some()
    }

    /// Applies the step that ended the open phase: the replies owed are queued.
    pub fn finish_ending(&mut self, cx: &mut Cx) {
        if let Some(step) = self.ending.take() {
            self.advance(step, cx);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Phase transitions: the one place that decides them.
    // ----------------------------------------------------------------------------------------

    /// Applies a step. Steps that make no sense in the current phase leave it as it is.
    pub fn advance(&mut self, step: Step, cx: &mut Cx) {
        let now = cx.now;
        let closed = |reason, linger| Phase::Closed {
            reason,
            since: now,
            linger,
        };
        let was_closed = matches!(self.phase, Phase::Closed { .. });
        let placeholder = closed(CloseReason::IoError, false);
        let phase = std::mem::replace(&mut self.phase, placeholder);
        self.phase = match (phase, step) {
            // A finished connection stays finished, except that a lingering one can end early:
            // a download whose reader stopped keeping up says so, anything else keeps its reason.
            (
                Phase::Closed { since, .. },
                Step::Gone(reason @ (CloseReason::Stalled | CloseReason::SlowDownload)),
            ) => Phase::Closed {
                reason,
                since,
                linger: false,
            },
            (Phase::Closed { reason, since, .. }, Step::Gone(_)) => Phase::Closed {
                reason,
                since,
                linger: false,
            },
            (phase @ Phase::Closed { .. }, _) => phase,

            (Phase::Handshake { .. }, Step::Upgraded(route)) => {
                cx.metrics.upgrades += 1;
                self.last_seen = now;
                let limits = Limits {
                    max_frame_size: cx.cfg.frame_limit(),
                    max_message_size: cx.cfg.max_message_size,
                };
                debug!("{}: websocket open ({route:?})", self.peer);
                Phase::Open {
                    ws: Session::new(Role::Server, limits),
                    route,
                }
            }
            (Phase::Handshake { .. }, Step::Answered(reason)) => closed(reason, true),
            (Phase::Handshake { .. }, Step::Gone(reason)) => closed(reason, false),
            (Phase::Handshake { .. }, Step::Close(_, reason)) => closed(reason, false),

            // RFC 6455 5.5.1: "If an endpoint receives a Close frame and did not previously send
            // a Close frame, the endpoint MUST send a Close frame in response [...] It SHOULD do
            // so as soon as practical." It echoes the code; then the server closes TCP first
            // (7.1.1).
            (Phase::Open { mut ws, .. }, Step::PeerClosed(code)) => {
                let body = code
                    .map(|c| close::body(CloseCode(c), ""))
                    .unwrap_or_default();
                self.queue_close(&mut ws, body, cx);
                closed(CloseReason::Normal, true)
            }
            // 7.1.7: send a close frame with the code, then stop processing the peer's data.
            (Phase::Open { mut ws, .. }, Step::Fail(code)) => {
                self.queue_close(&mut ws, close::body(code, ""), cx);
                closed(CloseReason::ProtocolError, true)
            }
            (Phase::Open { mut ws, .. }, Step::Close(code, reason)) => {
                if reason == CloseReason::Backpressure {
                    self.output.discard_unstarted();
                }
                self.queue_close(&mut ws, close::body(code, reason.label()), cx);
                Phase::Closing {
                    ws,
                    since: now,
                    reason,
                }
            }
            (Phase::Open { .. }, Step::Gone(reason)) => closed(reason, false),

            // 7.1.2: our close was answered; the handshake is complete.
            (Phase::Closing { reason, .. }, Step::PeerClosed(_)) => closed(reason, true),
            (Phase::Closing { reason, .. }, Step::Fail(_)) => closed(reason, true),
            (Phase::Closing { .. }, Step::Gone(reason)) => closed(reason, false),
            (phase, _) => phase,
        };
        if let Phase::Closed { reason, linger, .. } = self.phase {
            if !linger {
                self.output.clear();
            }
            if !was_closed {
                debug!("{}: closed ({})", self.peer, reason.label());
            }
        }
    }

    fn queue_close(&mut self, ws: &mut Session, body: Vec<u8>, cx: &mut Cx) {
        if ws.close_sent() {
            return;
        }
        ws.mark_close_sent();
        cx.metrics.frames_out += 1;
        self.output
            .push(frame::encode(Opcode::Close, true, &body, None));
    }
}
