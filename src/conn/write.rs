//! Writing: responses, WebSocket frames (own or shared), file bodies, and the flush.

use super::*;

impl Conn {
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
        self.download = Some(Download {
            since: cx.now,
            sent: 0,
        });
        if !head_only && len > 0 {
            self.body = Some(Body {
                file,
                remaining: len,
            });
        }
        self.advance(Step::Answered(CloseReason::HttpDone), cx);
    }

    /// Tops the queue up from the file body when it runs low.
    pub(super) fn refill_body(&mut self, cx: &mut Cx) {
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
    pub(super) fn admit(&mut self, len: usize, cx: &mut Cx) -> Sent {
        if !self.is_open() {
            return Sent::Dropped;
        }
        if self.output.queued() + len > cx.cfg.queue_limit() {
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

    /// Writes as much queued output as the socket takes, and notes when it last took some (for
    /// the stall timeout and the download rate). A lingering connection whose output is all out
    /// shuts its side of TCP.
    pub fn flush(&mut self, cx: &mut Cx, cork: &mut [u8]) {
        if !self.owed {
            // The last flush left nothing: whatever waits now was queued since.
            self.waiting_since = cx.now;
        }
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
                    self.waiting_since = cx.now;
                    if let Some(download) = &mut self.download {
                        download.sent += n as u64;
                    }
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
        self.owed = !self.output.is_empty() || self.body.is_some();
    }

    /// A lingering connection whose output is all out shuts its side of TCP, and is done once
    /// the peer has shut its side too.
    pub(super) fn finish_linger(&mut self, cx: &mut Cx) {
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
}
