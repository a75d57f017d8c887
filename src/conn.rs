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
//! [`Step`] and decides the next phase in one `match`. The rest of this file reads and writes
//! bytes and turns them into steps; it never looks at another connection. Messages for the
//! application go out through an inbox the server owns.

use std::fs::File;
use std::io::{IoSlice, Read};
use std::net::{Shutdown, SocketAddr};
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

/// A connection whose own outgoing queue is above this stops being read until the queue drains,
/// so a client that sends faster than it reads (an echo flood) slows down instead of hitting the
/// queue cap.
pub const READ_PAUSE_QUEUED: usize = 512 * 1024;

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
    /// The peer's address, for logs.
    pub peer: SocketAddr,
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
    /// This connection answered with a file: its lingering waits for the socket, not the clock.
    download: bool,
    /// Last time the socket took bytes.
    last_write: Instant,
    /// The deadline this connection has in the server's timer set, if any.
    pub timer_at: Option<Instant>,
    /// Already in the server's list of connections to finish this iteration.
    pub touched: bool,
    /// Registered for writable events (only while output waits for the socket).
    pub write_interest: bool,
    /// The peer's close frame or a protocol error ends the open phase, but only after the
    /// messages that arrived before it have been dispatched (their replies precede our close
    /// frame). Until then nothing more is decoded.
    ending: Option<Step>,
}

impl Conn {
    /// A connection just accepted.
    pub fn new(socket: TcpStream, peer: SocketAddr, now: Instant) -> Conn {
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
            download: false,
            last_write: now,
            timer_at: None,
            touched: false,
            write_interest: false,
            ending: None,
        }
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
    /// was not drained (budget ran out) and the connection is not paused by its own queue.
    pub fn wants_read(&self) -> bool {
        self.readable && self.reads() && self.output.queued() < READ_PAUSE_QUEUED
    }

    fn reads(&self) -> bool {
        self.ending.is_none()
            && !self.peer_eof
            && !matches!(self.phase, Phase::Closed { linger: false, .. })
    }

    /// Ends the open phase once the messages before `step` are dispatched; in other phases
    /// there is nothing to wait for.
    fn end_after_dispatch(&mut self, step: Step, cx: &mut Cx) {
        if self.is_open() {
            self.ending = Some(step);
        } else {
            self.advance(step, cx);
        }
    }

    /// Applies the step that ended the open phase, after the server dispatched the inbox.
    pub fn after_dispatch(&mut self, cx: &mut Cx) {
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
            // A finished connection stays finished, except that a lingering one can end early.
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

    // ----------------------------------------------------------------------------------------
    // Reading
    // ----------------------------------------------------------------------------------------

    /// Reads what the socket has (up to the read budget) and turns it into steps and messages.
    /// Complete messages are appended to `inbox`. Returns early with a request head during the
    /// handshake.
    pub fn pump(
        &mut self,
        cx: &mut Cx,
        scratch: &mut [u8],
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) -> Pumped {
        // Bytes that came in with the request head belong to the next phase.
        if !self.input.is_empty() && !matches!(self.phase, Phase::Handshake { .. }) {
            let mut input = std::mem::take(&mut self.input);
            let used = self.absorb_frames(input.data_mut(), cx, inbox);
            input.consume(used);
            self.input = input;
        }
        let mut budget = READ_BUDGET;
        while self.readable && budget > 0 && self.reads() {
            if let Phase::Handshake { .. } = self.phase {
                if let Some(req) = self.parse_head(cx) {
                    return Pumped::Request(req);
                }
                if !matches!(self.phase, Phase::Handshake { .. }) {
                    continue;
                }
            }
            if self.output.queued() >= READ_PAUSE_QUEUED {
                break;
            }
            match net::read(&mut self.socket, scratch) {
                Io::Progress(n) => {
                    cx.metrics.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    self.last_seen = cx.now;
                    self.ping_outstanding = false;
                    self.absorb(&mut scratch[..n], cx, inbox);
                    // A read that did not fill the buffer emptied the socket: bytes arriving
                    // later raise a new edge event (epoll(7) on stream sockets), so the read
                    // that would only say WouldBlock is skipped. Not after a hangup: its event
                    // has already been delivered and the EOF must still be read.
                    if n < scratch.len() && !self.hangup {
                        self.readable = false;
                    }
                }
                Io::WouldBlock => self.readable = false,
                Io::Closed => {
                    self.readable = false;
                    if let Phase::Closed { linger: true, .. } = self.phase {
                        // A half-close after the request (`nc -N`): the answer still goes out.
                        self.peer_eof = true;
                        self.finish_linger(cx);
                    } else {
                        self.advance(Step::Gone(CloseReason::PeerGone), cx);
                    }
                }
                Io::Failed(e) => {
                    debug!("{}: read failed: {e}", self.peer);
                    self.readable = false;
                    self.advance(Step::Gone(CloseReason::IoError), cx);
                }
            }
        }
        if let Phase::Handshake { .. } = self.phase {
            if let Some(req) = self.parse_head(cx) {
                return Pumped::Request(req);
            }
        }
        Pumped::Done
    }

    /// Hands freshly read bytes to the current phase.
    fn absorb(&mut self, bytes: &mut [u8], cx: &mut Cx, inbox: &mut Vec<(Opcode, Vec<u8>)>) {
        match self.phase {
            Phase::Handshake { .. } => self.input.extend(bytes),
            Phase::Open { .. } | Phase::Closing { .. } => {
                if self.input.is_empty() {
                    // The common case: decode straight from the read buffer, keep the leftover.
                    let used = self.absorb_frames(bytes, cx, inbox);
                    if self.reads_frames() && self.ending.is_none() {
                        self.input.extend(&bytes[used..]);
                    }
                } else {
                    self.input.extend(bytes);
                    let mut input = std::mem::take(&mut self.input);
                    let used = self.absorb_frames(input.data_mut(), cx, inbox);
                    input.consume(used);
                    if self.reads_frames() && self.ending.is_none() {
                        self.input = input;
                    }
                }
            }
            // Lingering: what the peer still sends is dropped.
            Phase::Closed { .. } => {}
        }
    }

    fn reads_frames(&self) -> bool {
        matches!(self.phase, Phase::Open { .. } | Phase::Closing { .. })
    }

    /// Tries to parse the request head from the input; answers malformed or oversized heads.
    fn parse_head(&mut self, cx: &mut Cx) -> Option<Request> {
        if self.input.is_empty() {
            return None;
        }
        let limits = HeadLimits {
            max_size: cx.cfg.max_request_size,
            max_headers: cx.cfg.max_headers,
        };
        match http::request::parse(self.input.data_mut(), limits) {
            Ok(Parsed::Complete(req, n)) => {
                self.input.consume(n);
                Some(req)
            }
            Ok(Parsed::Partial) => None,
            Err(e) => {
                let status = match e {
                    http::HeadError::Malformed => 400,
                    http::HeadError::TooLarge => 431,
                };
                cx.metrics.handshake_failed(status);
                self.input = InBuf::default();
                self.respond(&Response::status(status), false, cx);
                None
            }
        }
    }

    /// Decodes frames from `buf` and acts on them; returns the bytes used.
    fn absorb_frames(
        &mut self,
        buf: &mut [u8],
        cx: &mut Cx,
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) -> usize {
        let mut at = 0;
        while self.ending.is_none() {
            let ws = match &mut self.phase {
                Phase::Open { ws, .. } | Phase::Closing { ws, .. } => ws,
                _ => return at,
            };
            let received = match ws.receive(&mut buf[at..]) {
                Ok(r) => r,
                Err(code) => {
                    debug!("{}: protocol error, closing with {}", self.peer, code.0);
                    self.end_after_dispatch(Step::Fail(code), cx);
                    return at;
                }
            };
            at += received.consumed;
            match received.event {
                Some(event) => self.on_event(event, cx, inbox),
                None if received.consumed == 0 => return at,
                None => {}
            }
        }
        at
    }

    fn on_event(&mut self, event: Event, cx: &mut Cx, inbox: &mut Vec<(Opcode, Vec<u8>)>) {
        cx.metrics.frames_in += 1;
        let open = matches!(self.phase, Phase::Open { .. });
        match event {
            Event::Message(opcode, data) => {
                cx.metrics.messages_in += 1;
                // While closing, data is dropped (RFC 6455 1.4: after sending a close frame an
                // endpoint "MAY" discard data it receives).
                if open {
                    inbox.push((opcode, data));
                }
            }
            // 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            // response, unless it already received a Close frame."
            Event::Ping(payload) => {
                if open {
                    self.send(Opcode::Pong, &payload, cx);
                }
            }
            Event::Pong(_) => {}
            Event::Close(frame) => self.end_after_dispatch(Step::PeerClosed(frame.code), cx),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Writing
    // ----------------------------------------------------------------------------------------

    /// Queues the answer to a request head and moves on: a 101 opens the WebSocket, anything
    /// else closes after it is sent.
    pub fn respond(&mut self, response: &Response, head_only: bool, cx: &mut Cx) {
        self.output.push(response.encode(head_only));
        self.advance(Step::Answered(CloseReason::HttpDone), cx);
    }

    /// Queues a response head and then the `len` bytes of `file` (from its current position),
    /// read from disk a piece at a time as the socket takes them; closes after.
    pub fn respond_file(
        &mut self,
        head: String,
        file: File,
        len: u64,
        head_only: bool,
        cx: &mut Cx,
    ) {
        self.output.push(head.into_bytes());
        self.download = true;
        if !head_only && len > 0 {
            self.body = Some(Body {
                file,
                remaining: len,
            });
        }
        self.advance(Step::Answered(CloseReason::HttpDone), cx);
    }

    /// Tops the queue up from the file body when it runs low.
    fn refill_body(&mut self, cx: &mut Cx) {
        let Some(body) = &mut self.body else {
            return;
        };
        if self.output.queued() >= BODY_CHUNK {
            return;
        }
        let want = (body.remaining as usize).min(BODY_CHUNK);
        let mut chunk = vec![0u8; want];
        match body.file.read(&mut chunk) {
            Ok(n) if n > 0 => {
                chunk.truncate(n);
                body.remaining -= n as u64;
                cx.metrics.file_bytes_downloaded += n as u64;
                self.output.push(chunk);
                if body.remaining == 0 {
                    self.body = None;
                }
            }
            // The file shrank or failed under us: the response cannot be completed honestly.
            Ok(_) | Err(_) => {
                debug!("{}: file body ended early", self.peer);
                self.body = None;
                self.output.clear();
                self.advance(Step::Gone(CloseReason::IoError), cx);
            }
        }
    }

    /// Queues the 101 response and opens the WebSocket.
    pub fn upgrade(&mut self, response: Vec<u8>, route: Route, cx: &mut Cx) {
        self.output.push(response);
        self.advance(Step::Upgraded(route), cx);
    }

    /// Encodes and queues a message (or a pong).
    pub fn send(&mut self, opcode: Opcode, payload: &[u8], cx: &mut Cx) -> Sent {
        let len = frame::header_len(payload.len(), false) + payload.len();
        match self.admit(len, cx) {
            Sent::Queued => {
                cx.metrics.frames_out += 1;
                self.output.push_frame(opcode, payload);
                Sent::Queued
            }
            other => other,
        }
    }

    /// Queues already-encoded frames (`frames` of them, back to back) shared with other
    /// connections: a broadcast.
    pub fn send_shared(&mut self, encoded: &Rc<[u8]>, frames: u64, cx: &mut Cx) -> Sent {
        match self.admit(encoded.len(), cx) {
            Sent::Queued => {
                cx.metrics.frames_out += frames;
                self.output.push_shared(encoded.clone());
                Sent::Queued
            }
            other => other,
        }
    }

    /// Decides whether `len` more bytes may be queued; over the cap, closes with 1008.
    fn admit(&mut self, len: usize, cx: &mut Cx) -> Sent {
        if !self.is_open() {
            return Sent::Dropped;
        }
        if self.output.queued() + len > cx.cfg.max_queued_bytes {
            cx.metrics.backpressure_closes += 1;
            debug!(
                "{}: {} bytes queued, over the cap: closing",
                self.peer,
                self.output.queued()
            );
            self.advance(
                Step::Close(CloseCode::POLICY, CloseReason::Backpressure),
                cx,
            );
            return Sent::Overflow;
        }
        Sent::Queued
    }

    /// Writes as much queued output as the socket takes. A lingering connection whose output
    /// is all out shuts its side of TCP.
    pub fn flush(&mut self, cx: &mut Cx, cork: &mut [u8]) {
        loop {
            self.refill_body(cx);
            if !self.writable || self.output.is_empty() {
                break;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let filled = self.output.fill(&mut iov);
            let written = net::write_vectored(&mut self.socket, &iov[..filled], cork);
            match written {
                Io::Progress(n) => {
                    cx.metrics.bytes_out += n as u64;
                    self.output.advance(n);
                    self.last_write = cx.now;
                }
                Io::WouldBlock => self.writable = false,
                Io::Closed => {
                    self.writable = false;
                    self.output.clear();
                    self.advance(Step::Gone(CloseReason::PeerGone), cx);
                }
                Io::Failed(e) => {
                    debug!("{}: write failed: {e}", self.peer);
                    self.writable = false;
                    self.output.clear();
                    self.advance(Step::Gone(CloseReason::IoError), cx);
                }
            }
        }
        self.finish_linger(cx);
    }

    /// A lingering connection whose output is all out shuts its side of TCP, and is done once
    /// the peer has shut its side too.
    fn finish_linger(&mut self, cx: &mut Cx) {
        if !matches!(self.phase, Phase::Closed { linger: true, .. })
            || !self.output.is_empty()
            || self.body.is_some()
        {
            return;
        }
        if !self.write_shut {
            self.write_shut = true;
            // FIN after our last bytes; then wait for the peer's FIN (read as EOF).
            if self.socket.shutdown(Shutdown::Write).is_err() {
                self.advance(Step::Gone(CloseReason::PeerGone), cx);
                return;
            }
        }
        if self.peer_eof {
            self.advance(Step::Gone(CloseReason::PeerGone), cx);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Deadlines
    // ----------------------------------------------------------------------------------------

    /// The next moment something may be due for this connection.
    pub fn deadline(&self, cfg: &Config) -> Option<Instant> {
        match self.phase {
            Phase::Handshake { since } => Some(since + cfg.handshake_timeout),
            Phase::Open { .. } => {
                let heartbeat = self.last_seen
                    + if self.ping_outstanding {
                        cfg.idle_timeout
                    } else {
                        cfg.ping_interval
                    };
                Some(self.auth_deadline.map_or(heartbeat, |a| a.min(heartbeat)))
            }
            Phase::Closing { since, .. } => Some(since + cfg.close_timeout),
            Phase::Closed {
                since,
                linger: true,
                ..
            } => Some(self.linger_deadline(since, cfg)),
            Phase::Closed { linger: false, .. } => None,
        }
    }

    /// A lingering connection gets the close timeout; one still sending a file gets the idle
    /// timeout since the socket last took bytes, so a long download of a slow reader goes on.
    fn linger_deadline(&self, since: Instant, cfg: &Config) -> Instant {
        if self.download && (self.body.is_some() || !self.output.is_empty()) {
            self.last_write.max(since) + cfg.idle_timeout
        } else {
            since + cfg.close_timeout
        }
    }

    /// Acts on whatever is due at `cx.now`: handshake timeout, heartbeat ping, idle close,
    /// close timeout, end of lingering.
    pub fn on_timer(&mut self, cx: &mut Cx) {
        let now = cx.now;
        let cfg = cx.cfg;
        match self.phase {
            Phase::Handshake { since } if now >= since + cfg.handshake_timeout => {
                if self.input.is_empty() {
                    self.advance(Step::Gone(CloseReason::HandshakeTimeout), cx);
                } else {
                    cx.metrics.handshake_failed(408);
                    self.output.push(Response::status(408).encode(false));
                    self.advance(Step::Answered(CloseReason::HandshakeTimeout), cx);
                }
            }
            Phase::Open { .. } => {
                let silent = now.saturating_duration_since(self.last_seen);
                if self.auth_deadline.is_some_and(|at| now >= at) {
                    self.advance(Step::Close(CloseCode::POLICY, CloseReason::AuthTimeout), cx);
                } else if silent >= cfg.idle_timeout {
                    self.advance(
                        Step::Close(CloseCode::GOING_AWAY, CloseReason::IdleTimeout),
                        cx,
                    );
                } else if silent >= cfg.ping_interval && !self.ping_outstanding {
                    self.ping_outstanding = true;
                    cx.metrics.pings_sent += 1;
                    self.send(Opcode::Ping, b"", cx);
                }
            }
            Phase::Closing { since, .. } if now >= since + cfg.close_timeout => {
                self.advance(Step::Gone(CloseReason::CloseTimeout), cx);
            }
            Phase::Closed {
                since,
                linger: true,
                ..
            } if now >= self.linger_deadline(since, cfg) => {
                self.advance(Step::Gone(CloseReason::CloseTimeout), cx);
            }
            _ => {}
        }
    }
}
