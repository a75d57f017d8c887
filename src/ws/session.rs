//! The socket-free WebSocket session: bytes in, messages and control events out.
//!
//! A [`Session`] turns the byte stream of one connection into [`Event`]s. It reassembles
//! fragmented messages, validates text as it arrives, enforces the size limits from the frame
//! header before it allocates, and keeps track of the close handshake. It never touches a socket:
//! the caller hands it whatever bytes it has and gets back how many it used, so the unit tests
//! below drive it with byte literals, and the load tool uses it in the client role.
//!
//! Data frames are consumed as their payload arrives, so the caller's read buffer never has to
//! hold a whole frame: only a partial header or a partial control frame (at most 139 bytes) is
//! ever left over.

use super::close::{self, CloseCode, CloseFrame};
use super::frame::{self, FrameHeader, Header, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Stream;

/// Which end of the connection this session is; it decides the masking rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Receives unmasked frames, sends masked ones.
    Client,
}

/// Size limits, checked against frame headers before any payload is stored.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload of one data frame (bigger: close 1009).
    pub max_frame_size: usize,
    /// Largest message after reassembly of its fragments (bigger: close 1009).
    pub max_message_size: usize,
}

/// What the session made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text or binary message. Text is valid UTF-8.
    Message(Opcode, Vec<u8>),
    /// A ping; the caller answers with a pong carrying the same payload (RFC 6455 5.5.2).
    Ping(Vec<u8>),
    /// A pong (solicited or not).
    Pong(Vec<u8>),
    /// The peer's close frame, already validated.
    Close(CloseFrame),
}

/// The result of one [`Session::receive`] call.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes of the input that were used; the caller drops them and keeps the rest.
    pub consumed: usize,
    /// An event, if the bytes completed one.
    pub event: Option<Event>,
}

/// Where the decoder is inside the frame stream.
#[derive(Debug, Clone, Copy)]
enum Decode {
    /// Waiting for the next frame header.
    Header,
    /// Inside a data frame's payload.
    Payload {
        fin: bool,
        mask: Option<[u8; 4]>,
        remaining: u64,
        /// Payload bytes of this frame already seen: the position in the masking key.
        seen: usize,
    },
}

/// A message whose fragments are still arriving.
#[derive(Debug)]
struct Partial {
    opcode: Opcode,
    data: Vec<u8>,
    utf8: Option<Utf8Stream>,
}

/// The state of one WebSocket connection's incoming stream and close handshake.
#[derive(Debug)]
pub struct Session {
    role: Role,
    limits: Limits,
    decode: Decode,
    message: Option<Partial>,
    close_received: bool,
    close_sent: bool,
}

impl Session {
    /// A session in the open state.
    pub fn new(role: Role, limits: Limits) -> Session {
        Session {
            role,
            limits,
            decode: Decode::Header,
            message: None,
            close_received: false,
            close_sent: false,
        }
    }

    /// Whether the peer's close frame has arrived.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// Whether our close frame has been queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Records that we queued a close frame; we send nothing after it (RFC 6455 5.5.1).
    pub fn mark_close_sent(&mut self) {
        self.close_sent = true;
    }

    /// Whether a message is partly received (its buffer holds memory).
    pub fn is_idle(&self) -> bool {
        self.message.is_none() && matches!(self.decode, Decode::Header)
    }

    /// Decodes from the start of `buf` (which it may unmask in place). Call again with the rest
    /// until it consumes nothing. `Err` is the close code with which to fail the connection.
    pub fn receive(&mut self, buf: &mut [u8]) -> Result<Received, CloseCode> {
        if self.close_received {
            // RFC 6455 5.5.1: nothing follows a close frame; ignore what a broken peer sends,
            // all of it. Parsing it would read headers at offsets that depend on how the socket
            // split the bytes, so the same stream could pass or fail (found by fuzzing).
            return Ok(Received {
                consumed: buf.len(),
                event: None,
            });
        }
        match self.decode {
            Decode::Header => self.receive_header(buf),
            Decode::Payload {
                fin,
                mask,
                remaining,
                seen,
            } => {
                let n = remaining.min(buf.len() as u64) as usize;
                let chunk = &mut buf[..n];
                if let Some(key) = mask {
                    apply_mask(chunk, key, seen);
                }
                self.append(chunk)?;
                let remaining = remaining - n as u64;
                if remaining > 0 {
                    self.decode = Decode::Payload {
                        fin,
                        mask,
                        remaining,
                        seen: seen + n,
                    };
                    return Ok(Received {
                        consumed: n,
                        event: None,
                    });
                }
                self.decode = Decode::Header;
                let event = if fin {
                    Some(self.finish_message()?)
                } else {
                    None
                };
                Ok(Received { consumed: n, event })
            }
        }
    }

    fn receive_header(&mut self, buf: &mut [u8]) -> Result<Received, CloseCode> {
        let (header, header_len) = match frame::parse_header(buf)? {
            Header::Complete(h, n) => (h, n),
            Header::Partial => return Ok(nothing()),
        };
        self.check_mask(&header)?;
        if header.opcode.is_control() {
            return self.receive_control(header, header_len, buf);
        }
        self.start_data_frame(&header)?;
        self.decode = Decode::Payload {
            fin: header.fin,
            mask: header.mask,
            remaining: header.len,
            seen: 0,
        };
        if header.len == 0 {
            // An empty frame: complete it now rather than waiting for bytes that never come.
            let mut rest = self.receive(&mut [])?;
            rest.consumed = header_len;
            return Ok(rest);
        }
        Ok(Received {
            consumed: header_len,
            event: None,
        })
    }

    /// RFC 6455 5.1: "a client MUST mask all frames that it sends to the server [...] A server
    /// MUST NOT mask any frames that it sends to the client." Either side closes with 1002.
    fn check_mask(&self, header: &FrameHeader) -> Result<(), CloseCode> {
        let want_mask = self.role == Role::Server;
        if header.mask.is_some() == want_mask {
            Ok(())
        } else {
            Err(CloseCode::PROTOCOL)
        }
    }

    /// Control frames are whole and at most 125 bytes, so they wait until all of them is here
    /// (RFC 6455 5.5: they "MAY be injected in the middle of a fragmented message").
    fn receive_control(
        &mut self,
        header: FrameHeader,
        header_len: usize,
        buf: &mut [u8],
    ) -> Result<Received, CloseCode> {
        let total = header_len + header.len as usize;
        if buf.len() < total {
            return Ok(nothing());
        }
        let payload = &mut buf[header_len..total];
        if let Some(key) = header.mask {
            apply_mask(payload, key, 0);
        }
        let event = match header.opcode {
            Opcode::Ping => Event::Ping(payload.to_vec()),
            Opcode::Pong => Event::Pong(payload.to_vec()),
            Opcode::Close => {
                let frame = close::parse(payload)?;
                self.close_received = true;
                Event::Close(frame)
            }
            _ => unreachable!("only control opcodes reach here"),
        };
        Ok(Received {
            consumed: total,
            event: Some(event),
        })
    }

    /// Checks a data frame header against the fragmentation rules and the size limits, and sets
    /// up the message it starts or continues.
    fn start_data_frame(&mut self, header: &FrameHeader) -> Result<(), CloseCode> {
        if header.len > self.limits.max_frame_size as u64 {
            return Err(CloseCode::TOO_BIG);
        }
        match (header.opcode, &self.message) {
            // RFC 6455 5.4: a continuation needs a message in progress, and a new message may not
            // start inside another one.
            (Opcode::Continuation, None) => return Err(CloseCode::PROTOCOL),
            (Opcode::Text | Opcode::Binary, Some(_)) => return Err(CloseCode::PROTOCOL),
            (Opcode::Continuation, Some(_)) => {}
            (opcode, None) => {
                self.message = Some(Partial {
                    opcode,
                    data: Vec::new(),
                    utf8: (opcode == Opcode::Text).then(Utf8Stream::default),
                });
            }
            _ => unreachable!("control frames are handled before"),
        }
        let message = self.message.as_mut().expect("set above");
        let total = message.data.len() as u64 + header.len;
        if total > self.limits.max_message_size as u64 {
            return Err(CloseCode::TOO_BIG);
        }
        // Reserve what this frame declares (within the limits just checked), but not all at once
        // for a peer that announces a large frame and then trickles.
        let reserve = (header.len as usize).min(64 * 1024);
        message.data.reserve(reserve);
        Ok(())
    }

    fn append(&mut self, chunk: &[u8]) -> Result<(), CloseCode> {
        let message = self.message.as_mut().expect("payload without a message");
        if let Some(utf8) = &mut message.utf8 {
            utf8.feed(chunk).map_err(|_| CloseCode::INVALID_DATA)?;
        }
        message.data.extend_from_slice(chunk);
        Ok(())
    }

    fn finish_message(&mut self) -> Result<Event, CloseCode> {
        let message = self.message.take().expect("fin without a message");
        if let Some(utf8) = &message.utf8 {
            utf8.finish().map_err(|_| CloseCode::INVALID_DATA)?;
        }
        Ok(Event::Message(message.opcode, message.data))
    }

    /// Encodes a frame to send in this session's role (clients mask with `mask_key`).
    pub fn encode(&self, opcode: Opcode, payload: &[u8], mask_key: [u8; 4]) -> Vec<u8> {
        let mask = (self.role == Role::Client).then_some(mask_key);
        frame::encode(opcode, true, payload, mask)
    }
}

fn nothing() -> Received {
    Received {
        consumed: 0,
        event: None,
    }
}

/// Bytes that a partial frame may leave over in the read buffer: a header, or a control frame.
pub const MAX_LEFTOVER: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    };
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn server() -> Session {
        Session::new(Role::Server, LIMITS)
    }

    fn masked(opcode: Opcode, fin: bool, payload: &[u8]) -> Vec<u8> {
        frame::encode(opcode, fin, payload, Some(KEY))
    }

    /// Feeds `input` in pieces of `step` bytes, the way a socket might deliver it, and collects
    /// events until the first error.
    fn run(s: &mut Session, input: &[u8], step: usize) -> Result<Vec<Event>, CloseCode> {
        let mut events = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let r = s.receive(&mut buf)?;
                buf.drain(..r.consumed);
                let progressed = r.consumed > 0 || r.event.is_some();
                events.extend(r.event);
                if !progressed {
                    break;
                }
            }
        }
        Ok(events)
    }

    #[test]
    fn rfc_masked_hello_in_every_split() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for step in 1..=bytes.len() {
            let events = run(&mut server(), &bytes, step).unwrap();
            assert_eq!(
                events,
                vec![Event::Message(Opcode::Text, b"Hello".to_vec())]
            );
        }
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between() {
        let mut input = masked(Opcode::Text, false, b"Hel");
        input.extend(masked(Opcode::Ping, true, b"p"));
        input.extend(masked(Opcode::Continuation, false, b""));
        input.extend(masked(Opcode::Continuation, true, b"lo"));
        for step in [1, 3, 100] {
            let events = run(&mut server(), &input, step).unwrap();
            assert_eq!(
                events,
                vec![
                    Event::Ping(b"p".to_vec()),
                    Event::Message(Opcode::Text, b"Hello".to_vec())
                ]
            );
        }
    }

    #[test]
    fn binary_and_empty_messages() {
        let mut input = masked(Opcode::Binary, true, &[0, 255, 1]);
        input.extend(masked(Opcode::Text, true, b""));
        let events = run(&mut server(), &input, 2).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Message(Opcode::Binary, vec![0, 255, 1]),
                Event::Message(Opcode::Text, vec![])
            ]
        );
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let input = frame::encode(Opcode::Text, true, b"hi", None);
        assert_eq!(run(&mut server(), &input, 10), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn client_role_rejects_masked_frames_and_accepts_plain_ones() {
        let mut client = Session::new(Role::Client, LIMITS);
        let plain = frame::encode(Opcode::Text, true, b"hi", None);
        assert_eq!(
            run(&mut client, &plain, 1).unwrap(),
            vec![Event::Message(Opcode::Text, b"hi".to_vec())]
        );
        assert_eq!(
            run(&mut client, &masked(Opcode::Text, true, b"x"), 9),
            Err(CloseCode::PROTOCOL)
        );
        // and it masks what it sends
        let out = client.encode(Opcode::Text, b"hi", KEY);
        assert_eq!(out[1] & 0x80, 0x80);
    }

    #[test]
    fn continuation_without_a_message_is_a_protocol_error() {
        let input = masked(Opcode::Continuation, true, b"x");
        assert_eq!(run(&mut server(), &input, 10), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn new_message_inside_a_fragmented_one_is_a_protocol_error() {
        let mut input = masked(Opcode::Text, false, b"a");
        input.extend(masked(Opcode::Text, true, b"b"));
        assert_eq!(run(&mut server(), &input, 10), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn fragmented_control_frame_is_a_protocol_error() {
        let input = masked(Opcode::Ping, false, b"x");
        assert_eq!(run(&mut server(), &input, 10), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut s = Session::new(
            Role::Server,
            Limits {
                max_frame_size: 10,
                max_message_size: 100,
            },
        );
        // Only the header of an 11-byte frame: refused before any payload arrives.
        let mut header = Vec::new();
        frame::write_header(&mut header, true, Opcode::Binary, 11, Some(KEY));
        assert_eq!(s.receive(&mut header), Err(CloseCode::TOO_BIG));
    }

    #[test]
    fn oversized_message_is_refused_at_the_fragment_that_crosses_the_limit() {
        let mut s = Session::new(
            Role::Server,
            Limits {
                max_frame_size: 100,
                max_message_size: 10,
            },
        );
        let mut input = masked(Opcode::Binary, false, &[0; 6]);
        let mut header = Vec::new();
        frame::write_header(&mut header, true, Opcode::Continuation, 5, Some(KEY));
        input.extend(header);
        assert_eq!(run(&mut s, &input, 100), Err(CloseCode::TOO_BIG));
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        // 2^62 bytes declared: the limit check fails before any reservation.
        let mut header = Vec::new();
        header.extend_from_slice(&[0x82, 0xff]);
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&KEY);
        assert_eq!(server().receive(&mut header), Err(CloseCode::TOO_BIG));
    }

    #[test]
    fn invalid_utf8_fails_fast_inside_one_frame() {
        // The invalid bytes arrive before the frame is complete: the error comes right then.
        let payload = [b'a', 0xf4, 0x90, 0x80, 0x80, b'b', b'c'];
        let input = masked(Opcode::Text, true, &payload);
        let mut s = server();
        let mut first = input[..9].to_vec(); // header (6) + 3 payload bytes
        let r = s.receive(&mut first).unwrap();
        assert_eq!(r.consumed, 6);
        assert_eq!(s.receive(&mut first[6..]), Err(CloseCode::INVALID_DATA));
    }

    #[test]
    fn invalid_utf8_across_fragments_fails_at_the_bad_fragment() {
        let mut input = masked(Opcode::Text, false, &[0xce, 0xba]);
        input.extend(masked(Opcode::Continuation, false, &[0xe1]));
        input.extend(masked(Opcode::Continuation, false, &[0x41])); // not a continuation byte
        input.extend(masked(Opcode::Continuation, true, b"ok"));
        assert_eq!(
            run(&mut server(), &input, 100),
            Err(CloseCode::INVALID_DATA)
        );
    }

    #[test]
    fn text_ending_mid_code_point_is_invalid() {
        let input = masked(Opcode::Text, true, &[0xe2, 0x82]);
        assert_eq!(
            run(&mut server(), &input, 100),
            Err(CloseCode::INVALID_DATA)
        );
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let input = masked(Opcode::Binary, true, &[0xff, 0xfe]);
        assert!(run(&mut server(), &input, 100).is_ok());
    }

    #[test]
    fn close_frames_are_validated() {
        let ok = masked(Opcode::Close, true, &[0x03, 0xe8, b'o', b'k']);
        let mut s = server();
        let events = run(&mut s, &ok, 3).unwrap();
        assert_eq!(
            events,
            vec![Event::Close(CloseFrame {
                code: Some(1000),
                reason: "ok".into()
            })]
        );
        assert!(s.close_received());
        assert_eq!(
            run(&mut server(), &masked(Opcode::Close, true, &[0x03]), 9),
            Err(CloseCode::PROTOCOL)
        );
        assert_eq!(
            run(
                &mut server(),
                &masked(Opcode::Close, true, &[0x03, 0xed]),
                9
            ),
            Err(CloseCode::PROTOCOL)
        );
        assert_eq!(
            run(
                &mut server(),
                &masked(Opcode::Close, true, &[0x03, 0xe8, 0xff]),
                9
            ),
            Err(CloseCode::INVALID_DATA)
        );
    }

    #[test]
    fn frames_after_close_are_ignored() {
        let mut input = masked(Opcode::Close, true, &[]);
        input.extend(masked(Opcode::Text, true, b"late"));
        let events = run(&mut server(), &input, 100).unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn bytes_after_close_are_ignored_however_they_are_split() {
        // Fuzz regressions (frame_client, frame_server): a close, then a frame. Fed a byte at a
        // time, the payload "late" used to be parsed as a header ('l' = 0x6c has RSV bits set)
        // and failed with 1002, while the same bytes in one piece were ignored.
        let client_input = [
            0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e', 0x81, 0x04, b'l', b'a', b't', b'e',
        ];
        let server_input = [
            0x88, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x34, 0x12, 0x43, 0x44, 0x52, 0x81, 0x84, 0x37,
            0xfa, 0x21, 0x3d, 0x5b, 0x9b, 0x55, 0x58,
        ];
        let bye = || {
            vec![Event::Close(CloseFrame {
                code: Some(1000),
                reason: "bye".into(),
            })]
        };
        for step in 1..=server_input.len() {
            let mut client = Session::new(Role::Client, LIMITS);
            assert_eq!(run(&mut client, &client_input, step), Ok(bye()));
            assert_eq!(run(&mut server(), &server_input, step), Ok(bye()));
        }
        // Not even a header is parsed after the close: garbage is ignored too.
        let mut s = server();
        run(&mut s, &server_input[..11], 11).unwrap();
        assert_eq!(
            s.receive(&mut [0xff, 0xff, 0x00]).map(|r| r.consumed),
            Ok(3)
        );
    }

    #[test]
    fn pings_and_pongs_carry_their_payload() {
        let mut input = masked(Opcode::Ping, true, b"are you there");
        input.extend(masked(Opcode::Pong, true, b"yes"));
        let events = run(&mut server(), &input, 4).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Ping(b"are you there".to_vec()),
                Event::Pong(b"yes".to_vec())
            ]
        );
    }

    #[test]
    fn idle_after_a_whole_message() {
        let mut s = server();
        let input = masked(Opcode::Text, false, b"a");
        run(&mut s, &input, 100).unwrap();
        assert!(!s.is_idle());
        run(&mut s, &masked(Opcode::Continuation, true, b"b"), 100).unwrap();
        assert!(s.is_idle());
    }
}
