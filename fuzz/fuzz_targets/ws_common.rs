//! The checks shared by `frame_server` and `frame_client`: the frame header parser on its own,
//! then a `Session` in one role fed the input whole and in pieces, then a round trip of the
//! input as a message from the peer.
//!
//! Invariants (beyond "no panic"):
//! - a complete header takes 2-14 bytes of the input, depends only on those bytes, is `Partial`
//!   on every shorter prefix, and survives `write_header` -> `parse_header`;
//! - `receive` never consumes more than it was given, every event consumes at least one byte
//!   (so the caller's loop ends), and a stalled session leaves at most `MAX_LEFTOVER` bytes;
//! - events respect the limits and the RFC: data messages are Text or Binary, within
//!   `max_message_size`, text is UTF-8; pings/pongs carry at most 125 bytes; a close has a valid
//!   code and nothing follows it;
//! - the outcome (events, then the error if any) does not depend on how the bytes were split,
//!   as a socket may split them anywhere.

use chatd::ws::close::is_valid_code;
use chatd::ws::frame::{self, Header, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use chatd::ws::session::MAX_LEFTOVER;
use chatd::ws::{CloseCode, Event, Limits, Opcode, Role, Session};

/// The server's defaults (1 MiB), and limits small enough for the fuzzer to cross.
const LIMITS: [Limits; 2] = [
    Limits {
        max_frame_size: 1 << 20,
        max_message_size: 1 << 20,
    },
    Limits {
        max_frame_size: 40,
        max_message_size: 100,
    },
];

/// Piece sizes to feed the input in; `usize::MAX` is the whole input at once.
const STEPS: [usize; 3] = [usize::MAX, 1, 7];

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Runs every check on `data` for a session in `role`.
pub fn check(role: Role, data: &[u8]) {
    check_header(data);
    for limits in LIMITS {
        let whole = decode(role, limits, data, STEPS[0]);
        for step in &STEPS[1..] {
            assert_eq!(
                decode(role, limits, data, *step),
                whole,
                "split into {step}"
            );
        }
    }
    round_trip(role, data);
}

fn check_header(data: &[u8]) {
    let parsed = frame::parse_header(data);
    // The header is at most 14 bytes: nothing after them can change the answer.
    assert_eq!(
        frame::parse_header(&data[..data.len().min(MAX_HEADER_LEN)]),
        parsed
    );
    let Ok(Header::Complete(h, n)) = parsed else {
        return;
    };
    assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= data.len());
    for cut in 0..n {
        assert_eq!(frame::parse_header(&data[..cut]), Ok(Header::Partial));
    }
    if h.opcode.is_control() {
        assert!(h.fin && h.len <= MAX_CONTROL_PAYLOAD as u64);
    }
    if let Ok(len) = usize::try_from(h.len) {
        let mut again = Vec::new();
        frame::write_header(&mut again, h.fin, h.opcode, len, h.mask);
        assert_eq!(again.len(), frame::header_len(len, h.mask.is_some()));
        match frame::parse_header(&again) {
            Ok(Header::Complete(h2, n2)) => assert_eq!((h2, n2), (h, again.len())),
            other => panic!("re-encoded header {again:?} parsed as {other:?}"),
        }
    }
}

/// Events, then how the stream ended: `Ok` (input used up or waiting) or the close code.
type Outcome = (Vec<Event>, Result<(), CloseCode>);

/// Feeds `data` in pieces of `step` bytes the way `Conn::absorb_frames` does: call `receive`
/// until it makes no progress, keep the leftover, append the next piece.
fn decode(role: Role, limits: Limits, data: &[u8], step: usize) -> Outcome {
    let mut s = Session::new(role, limits);
    let mut events = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in data.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let r = match s.receive(&mut buf) {
                Ok(r) => r,
                Err(code) => {
                    assert!(
                        [
                            CloseCode::PROTOCOL,
                            CloseCode::TOO_BIG,
                            CloseCode::INVALID_DATA
                        ]
                        .contains(&code),
                        "unexpected close code {code:?}"
                    );
                    return (events, Err(code));
                }
            };
            assert!(r.consumed <= before, "consumed {} of {before}", r.consumed);
            buf.drain(..r.consumed);
            let Some(event) = r.event else {
                if r.consumed == 0 {
                    break;
                }
                continue;
            };
            assert!(r.consumed > 0, "event {event:?} without consuming input");
            check_event(&s, limits, &events, &event);
            events.push(event);
        }
        assert!(
            buf.len() <= MAX_LEFTOVER,
            "{} bytes left over, more than MAX_LEFTOVER",
            buf.len()
        );
    }
    (events, Ok(()))
}

fn check_event(s: &Session, limits: Limits, before: &[Event], event: &Event) {
    assert!(
        !before.iter().any(|e| matches!(e, Event::Close(_))),
        "{event:?} after a close frame"
    );
    match event {
        Event::Message(opcode, data) => {
            assert!(
                matches!(opcode, Opcode::Text | Opcode::Binary),
                "{opcode:?}"
            );
            assert!(data.len() <= limits.max_message_size);
            if *opcode == Opcode::Text {
                assert!(std::str::from_utf8(data).is_ok(), "text is not UTF-8");
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
        Event::Close(f) => {
            assert!(s.close_received());
            assert!(f.code.is_none_or(is_valid_code), "{f:?}");
            assert!(f.code.is_some() || f.reason.is_empty());
            assert!(f.reason.len() <= MAX_CONTROL_PAYLOAD - 2);
        }
    }
}

/// `data` sent by the peer as one message, then as three fragments with a ping in between, must
/// come out as exactly that message.
fn round_trip(role: Role, data: &[u8]) {
    let (peer, mask) = match role {
        Role::Server => (Role::Client, Some(KEY)),
        Role::Client => (Role::Server, None),
    };
    let opcode = if std::str::from_utf8(data).is_ok() {
        Opcode::Text
    } else {
        Opcode::Binary
    };
    let want = || Event::Message(opcode, data.to_vec());
    let limits = LIMITS[0];

    let single = Session::new(peer, limits).encode(opcode, data, KEY);
    assert_eq!(
        decode(role, limits, &single, usize::MAX),
        (vec![want()], Ok(()))
    );

    let (a, b) = (data.len() / 3, 2 * data.len() / 3);
    let mut wire = frame::encode(opcode, false, &data[..a], mask);
    wire.extend(frame::encode(
        Opcode::Continuation,
        false,
        &data[a..b],
        mask,
    ));
    wire.extend(frame::encode(Opcode::Ping, true, b"p", mask));
    wire.extend(frame::encode(Opcode::Continuation, true, &data[b..], mask));
    // Split text may cut a code point between fragments; that must still be accepted.
    let got = decode(role, limits, &wire, 5);
    assert_eq!(got, (vec![Event::Ping(b"p".to_vec()), want()], Ok(())));
}
