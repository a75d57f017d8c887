//! Ordering: replies leave in the order of the requests, whatever each one waits for.
//!
//! A connection is owed a reply while a password check runs for it, or while one of its
//! requests sits in a batch waiting for the commit ([`Owed`](super::service::Owed)). Meanwhile
//! its later requests are held, already parsed, and run in order as soon as nothing earlier
//! blocks them. Two kinds may go ahead without waiting: a `send` and upload bytes join the batch
//! behind the connection's earlier messages (their replies come after the same commit, in
//! order), unless an earlier request in the batch changes what they would read (a group created,
//! a member added: a *barrier*).
//!
//! "Close after the replies owed" lives here too: a connection whose peer closed (or broke the
//! protocol) ends only once everything it is owed is queued, with [`Effect::Finish`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::debug;
use serde_json::Value;

use super::protocol::{self, Command, ErrorCode, Failure, Request};
use super::service::{Client, ConnId, Effect, Now, Service};
use crate::ws::Opcode;

/// Requests a connection may have waiting behind an earlier reply; one more closes the
/// connection with 1008, since answering it early would break the order of replies.
pub const MAX_HELD: usize = 64;

/// Upload bytes a connection may have waiting behind an earlier reply (a `file.upload` still
/// waiting); more close the connection with 1008.
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// Binary messages (upload pieces) a connection may have waiting, however small; more close the
/// connection with 1008. Without it, empty messages would cost nothing against the byte bound.
pub const MAX_HELD_PIECES: usize = 4096;

/// A run of refused commands ends after this long without one.
const STRIKE_GAP: Duration = Duration::from_secs(1);

/// A connection's held messages, in order, with running counts so that no check walks them.
#[derive(Debug, Default)]
pub struct Held {
    queue: VecDeque<Inbound>,
    requests: usize,
    uploads: usize,
    pieces: usize,
    bytes: usize,
}

impl Held {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Holds one more, or says which bound it would cross.
    fn push(&mut self, inbound: Inbound) -> Result<(), String> {
        let bytes = match &inbound {
            Inbound::Bytes(b) => b.len(),
            Inbound::Request(_) => 0,
        };
        if inbound.is_request() && self.requests >= MAX_HELD {
            return Err(format!("{} requests waiting", self.requests));
        }
        if !inbound.is_request()
            && (self.pieces >= MAX_HELD_PIECES || self.bytes + bytes > MAX_HELD_BYTES)
        {
            return Err(format!(
                "{} pieces, {} bytes waiting",
                self.pieces, self.bytes
            ));
        }
        self.count(&inbound, 1);
        self.queue.push_back(inbound);
        Ok(())
    }

    /// How many more messages may be taken in now: each could end up held. None while the held
    /// bytes are half their bound, since one message may be as large as the message limit.
    fn room(&self) -> usize {
        if self.bytes >= MAX_HELD_BYTES / 2 {
            return 0;
        }
        (MAX_HELD - self.requests).min(MAX_HELD_PIECES - self.pieces)
    }

    /// Puts a request back at the head of the line (its turn came, but it waits for
    /// something first).
    fn push_front(&mut self, inbound: Inbound) {
        self.count(&inbound, 1);
        self.queue.push_front(inbound);
    }

    fn front(&self) -> Option<&Inbound> {
        self.queue.front()
    }

    fn pop(&mut self) -> Option<Inbound> {
        let next = self.queue.pop_front()?;
        self.count(&next, -1);
        Some(next)
    }

    fn count(&mut self, inbound: &Inbound, sign: isize) {
        let add = |n: &mut usize, by: usize| *n = n.wrapping_add_signed(sign * by as isize);
        match inbound {
            Inbound::Bytes(b) => {
                add(&mut self.pieces, 1);
                add(&mut self.bytes, b.len());
            }
            Inbound::Request(_) => {
                add(&mut self.requests, 1);
                add(&mut self.uploads, usize::from(inbound.starts_upload()));
            }
        }
    }
}

/// A parsed request, or the refusal to send in its place (with the request's id).
pub type Parsed = Result<Request, (Option<Value>, Failure)>;

/// A message from a connection: a request, or bytes of the upload in progress.
#[derive(Debug)]
pub enum Inbound {
    /// A text message, parsed.
    Request(Parsed),
    /// A binary message while an upload is in progress (or announced).
    Bytes(Vec<u8>),
}

impl Inbound {
    /// Whether it may join the batch behind this connection's earlier messages.
    fn joins_batch(&self) -> bool {
        matches!(
            self,
            Inbound::Bytes(_)
                | Inbound::Request(Ok(Request {
                    command: Command::Send { .. },
                    ..
                }))
        )
    }

    /// Whether it announces an upload, so that binary messages after it are its bytes.
    fn starts_upload(&self) -> bool {
        matches!(
            self,
            Inbound::Request(Ok(Request {
                command: Command::FileUpload { .. },
                ..
            }))
        )
    }
}

impl Client {
    /// Whether a new message must wait behind a reply still owed.
    fn must_wait(&self, inbound: &Inbound) -> bool {
        !self.held.is_empty() || self.blocks(inbound)
    }

    /// Whether what is owed keeps this message from running now.
    fn blocks(&self, inbound: &Inbound) -> bool {
        let owed = &self.owed;
        owed.password.is_some()
            || owed.drain
            || owed.replay.is_some()
            || (owed.entries > 0 && (owed.barriers > 0 || !inbound.joins_batch()))
    }

    /// Notes a refused command; `true` when refusals have not stopped for a second for
    /// `seconds` seconds: a client that keeps going over the rate, not one that flushed a
    /// queue once and got its `rate_limited` replies.
    fn strike(&mut self, now: Instant, seconds: u32) -> bool {
        let start = match self.strikes {
            Some((start, last)) if now.saturating_duration_since(last) < STRIKE_GAP => start,
            _ => now,
        };
        self.strikes = Some((start, now));
        now.saturating_duration_since(start) >= Duration::from_secs(seconds.into())
    }

    fn uploading(&self) -> bool {
        self.upload.is_some() || self.held.uploads > 0
    }
}

impl Service {
    /// A message from a `/ws` connection: checked against the command rate, parsed, then
    /// handled now or held behind the replies the connection is owed.
    pub fn message(&mut self, conn: ConnId, opcode: Opcode, data: Vec<u8>, now: Now) {
        let Some(inbound) = self.admit(conn, opcode, data, now) else {
            return;
        };
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if !client.must_wait(&inbound) {
            return self.handle(conn, inbound, now);
        }
        if let Err(why) = client.held.push(inbound) {
            // Answering now would break the order of replies; a client this far ahead of its
            // replies is flooding.
            debug!("conn {conn}: {why}, closing");
            self.refuse_connection(conn);
        }
    }

    /// Turns a message into a request, upload bytes, or a refusal that takes its place in
    /// line; `None` when the connection is closed for going over the rate too often.
    fn admit(&mut self, conn: ConnId, opcode: Opcode, data: Vec<u8>, now: Now) -> Option<Inbound> {
        let settings = &self.settings;
        let client = self.clients.get_mut(&conn)?;
        // Upload bytes are not commands: the upload's declared size bounds them.
        if opcode == Opcode::Binary && client.uploading() {
            return Some(Inbound::Bytes(data));
        }
        if !client
            .bucket
            .take(settings.command_rate, settings.command_burst, now.mono)
        {
            if client.strike(now.mono, settings.rate_strikes) {
                debug!(
                    "conn {conn}: over the command rate for {}s, closing",
                    settings.rate_strikes
                );
                self.refuse_connection(conn);
                return None;
            }
            let id = protocol::parse(&data).map_or_else(|(id, _)| id, |r| r.id);
            let refusal = Failure::new(ErrorCode::RateLimited, "too many requests, slow down");
            return Some(Inbound::Request(Err((id, refusal))));
        }
        if opcode == Opcode::Binary {
            let refusal = Failure::new(
                ErrorCode::BadRequest,
                "binary frames carry file uploads only",
            );
            return Some(Inbound::Request(Err((None, refusal))));
        }
        Some(Inbound::Request(protocol::parse(&data)))
    }

    /// Runs a connection's held requests in order until one has to wait again; then, if the
    /// connection is finishing and owed nothing more, lets it end.
    pub(super) fn run_held(&mut self, conn: ConnId, now: Now) {
        loop {
            let Some(client) = self.clients.get_mut(&conn) else {
                return;
            };
            if client.held.front().is_none_or(|next| client.blocks(next)) {
                break;
            }
            let next = client.held.pop().expect("checked above");
            self.handle(conn, next, now);
        }
        self.resume_if_paused(conn);
        self.finish_if_settled(conn);
    }

    /// How many more messages the loop may hand over for this connection now: as many as its
    /// held queue has room for. At none, the loop stops reading the connection (the peer is
    /// slowed by TCP flow control) until [`Effect::Resume`].
    pub fn room(&mut self, conn: ConnId) -> usize {
        let Some(client) = self.clients.get_mut(&conn) else {
            return usize::MAX;
        };
        let room = client.held.room();
        if room == 0 {
            client.paused = true;
        }
        room
    }

    fn resume_if_paused(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if client.paused && client.held.is_empty() {
            client.paused = false;
            self.push(Effect::Resume(conn));
        }
    }

    /// A large read waits for the connection's output to drain first, so that its reply never
    /// lands on a full queue; `Some` gives the request back when its turn is not yet.
    pub(super) fn wait_for_drain(&mut self, conn: ConnId, request: Request) -> Option<Request> {
        let client = self.clients.get_mut(&conn)?;
        if std::mem::take(&mut client.drained) {
            return Some(request);
        }
        client.owed.drain = true;
        client.held.push_front(Inbound::Request(Ok(request)));
        self.push(Effect::AwaitDrain(conn));
        None
    }

    /// The connection's output queue drained (after [`Effect::AwaitDrain`]): the replay goes
    /// on, or the large read waiting for it runs, then whatever was held behind it.
    pub fn output_drained(&mut self, conn: ConnId, now: Now) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if !std::mem::take(&mut client.owed.drain) {
            return;
        }
        if client.owed.replay.is_some() {
            self.replay_step(conn);
        } else {
            client.drained = true;
        }
        self.run_held(conn, now);
        if let Some(client) = self.clients.get_mut(&conn) {
            client.drained = false;
        }
    }

    /// The peer closed (or broke the protocol): the connection ends once every reply it is
    /// owed is queued, which [`Effect::Finish`] tells the loop.
    pub fn finish_after_replies(&mut self, conn: ConnId) {
        match self.clients.get_mut(&conn) {
            Some(client) => client.finishing = true,
            None => return self.push(Effect::Finish(conn)),
        }
        self.finish_if_settled(conn);
    }

    fn finish_if_settled(&mut self, conn: ConnId) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if client.finishing && client.owed.is_clear() && client.held.is_empty() {
            client.finishing = false;
            self.push(Effect::Finish(conn));
        }
    }
}

/// Whether a command's reply may be large (pages of messages, long lists): it runs only once
/// the connection's output has drained.
pub(super) fn reads_much(command: &Command) -> bool {
    matches!(
        command,
        Command::History { .. }
            | Command::Sync { .. }
            | Command::GroupList { .. }
            | Command::GroupMembers { .. }
    )
}

impl Inbound {
    fn is_request(&self) -> bool {
        matches!(self, Inbound::Request(_))
    }
}
