//! Reading: the socket's bytes into a request head, or into frames and messages.

use super::*;

impl Conn {
    /// Reads what the socket has (up to the read budget) and turns it into steps and messages.
    /// Complete messages are appended to `inbox`. Returns early with a request head during the
    /// handshake.
    pub fn pump(
        &mut self,
        cx: &mut Cx,
        scratch: &mut [u8],
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) -> Pumped {
        self.backlog = false;
        // Bytes that came in with the request head, or left undecoded by the last pump,
        // belong to the current phase.
        if !self.input.is_empty() && !matches!(self.phase, Phase::Handshake { .. }) {
            let mut input = std::mem::take(&mut self.input);
            let used = self.absorb_frames(input.data_mut(), cx, inbox);
            input.consume(used);
            self.input = input;
        }
        let mut budget = READ_BUDGET;
        while self.readable && budget > 0 && !self.backlog && self.reads() {
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
    pub(super) fn absorb(
        &mut self,
        bytes: &mut [u8],
        cx: &mut Cx,
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) {
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

    pub(super) fn reads_frames(&self) -> bool {
        matches!(self.phase, Phase::Open { .. } | Phase::Closing { .. })
    }

    /// Tries to parse the request head from the input; answers malformed or oversized heads.
    pub(super) fn parse_head(&mut self, cx: &mut Cx) -> Option<Request> {
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
    pub(super) fn absorb_frames(
        &mut self,
        buf: &mut [u8],
        cx: &mut Cx,
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) -> usize {
        let mut at = 0;
        while self.ending.is_none() {
            if inbox.len() >= self.room {
                self.backlog = true;
                return at;
            }
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

    pub(super) fn on_event(
        &mut self,
        event: Event,
        cx: &mut Cx,
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
    ) {
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
}
