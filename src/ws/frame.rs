//! The frame header: parsing and encoding (RFC 6455 section 5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! Parsing is a pure function in the manner of httparse: bytes in, `Complete` or `Partial` out,
//! no allocation. It checks only what the header alone can tell; the rules that depend on the
//! connection's state (masking by role, fragmentation, sizes) live in [`super::session`].

use super::close::CloseCode;

/// Frame opcodes (RFC 6455 5.2). Any other value is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: a UTF-8 text message (or its first fragment).
    Text,
    /// 0x2: a binary message (or its first fragment).
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl Opcode {
    /// Decodes the low four bits of the first byte; `None` for the reserved opcodes 3-7, B-F.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// The four bits on the wire.
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// Control frames have the high bit of the opcode set (RFC 6455 5.5).
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the final fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: Opcode,
    /// The masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub len: u64,
}

/// The result of [`parse_header`].
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// A whole header: the header and how many bytes it took.
    Complete(FrameHeader, usize),
    /// More bytes are needed; partial input is not an error.
    Partial,
}

/// Largest control frame payload (RFC 6455 5.5: "All control frames MUST have a payload length
/// of 125 bytes or less and MUST NOT be fragmented.").
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// Parses a frame header from the start of `buf`.
///
/// Errors (all 1002, "protocol error"):
/// - RSV1-3 set: "MUST be 0 unless an extension is negotiated" (5.2); none is negotiated.
/// - a reserved opcode: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
///   WebSocket Connection_" (5.2).
/// - a control frame that is fragmented or longer than 125 bytes (5.5).
/// - a 64-bit length with the most significant bit set: "the most significant bit MUST be 0" (5.2).
pub fn parse_header(buf: &[u8]) -> Result<Header, CloseCode> {
    if buf.len() < 2 {
        return Ok(Header::Partial);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(CloseCode::PROTOCOL);
    }
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(CloseCode::PROTOCOL)?;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(Header::Partial);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Header::Partial);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len & (1 << 63) != 0 {
                return Err(CloseCode::PROTOCOL);
            }
            (len, 10)
        }
        short => (short as u64, 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(CloseCode::PROTOCOL);
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(Header::Partial);
        }
        let key = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    Ok(Header::Complete(
        FrameHeader {
            fin,
            opcode,
            mask,
            len,
        },
        at,
    ))
}

/// Appends a frame header to `out`. The payload (masked by the caller when `mask` is set)
/// follows it.
pub fn write_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    // "the minimal number of bytes MUST be used to encode the length" (5.2).
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Header length for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// Encodes one whole frame. With `mask` (the client role) the payload is masked.
pub fn encode(opcode: Opcode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len(), mask.is_some()) + payload.len());
    write_header(&mut out, fin, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        super::mask::apply_mask(&mut out[start..], key, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (FrameHeader, usize) {
        match parse_header(buf) {
            Ok(Header::Complete(h, n)) => (h, n),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    #[test]
    fn rfc_unmasked_hello() {
        // RFC 6455 5.7: "A single-frame unmasked text message".
        let (h, n) = complete(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Text);
        assert_eq!(h.len, 5);
        assert_eq!(h.mask, None);
    }

    #[test]
    fn rfc_masked_hello() {
        let (h, n) = complete(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f]);
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
    }

    #[test]
    fn rfc_fragmented_first_frame() {
        // "A fragmented unmasked text message": 0x01 0x03 "Hel", then 0x80 0x02 "lo".
        let (h, _) = complete(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert!(!h.fin);
        assert_eq!(h.opcode, Opcode::Text);
        let (h, _) = complete(&[0x80, 0x02, 0x6c, 0x6f]);
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Continuation);
    }

    #[test]
    fn rfc_16_and_64_bit_lengths() {
        // "256 bytes binary message in a single unmasked frame": 0x82 0x7E 0x0100
        let (h, n) = complete(&[0x82, 0x7e, 0x01, 0x00]);
        assert_eq!((h.len, n), (256, 4));
        // "64KiB binary message in a single unmasked frame": 0x82 0x7F 0x0000000000010000
        let (h, n) = complete(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.len, n), (65536, 10));
    }

    #[test]
    fn partial_input_is_not_an_error() {
        let full = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse_header(&full[..cut]), Ok(Header::Partial), "cut {cut}");
        }
        assert!(matches!(parse_header(&full), Ok(Header::Complete(_, 14))));
    }

    #[test]
    fn rsv_bits_are_a_protocol_error() {
        for b0 in [0xc1, 0xa1, 0x91] {
            assert_eq!(parse_header(&[b0, 0x80]), Err(CloseCode::PROTOCOL));
        }
    }

    #[test]
    fn reserved_opcodes_are_a_protocol_error() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                parse_header(&[0x80 | op, 0x80]),
                Err(CloseCode::PROTOCOL),
                "{op}"
            );
        }
    }

    #[test]
    fn control_frames_are_short_and_whole() {
        // ping with 126-byte payload (16-bit length)
        assert_eq!(
            parse_header(&[0x89, 0xfe, 0, 126]),
            Err(CloseCode::PROTOCOL)
        );
        // fragmented ping
        assert_eq!(parse_header(&[0x09, 0x80]), Err(CloseCode::PROTOCOL));
        // 125 bytes is fine
        assert!(matches!(
            parse_header(&[0x89, 0xfd, 1, 2, 3, 4]),
            Ok(Header::Complete(..))
        ));
    }

    #[test]
    fn sixty_four_bit_length_with_top_bit_is_rejected() {
        assert_eq!(
            parse_header(&[0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(CloseCode::PROTOCOL)
        );
    }

    #[test]
    fn encode_round_trips_each_length_form() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let bytes = encode(Opcode::Binary, true, &payload, mask);
                let (h, n) = complete(&bytes);
                assert_eq!(h.len as usize, len);
                assert_eq!(n, header_len(len, mask.is_some()));
                let mut body = bytes[n..].to_vec();
                if let Some(key) = h.mask {
                    super::super::mask::apply_mask(&mut body, key, 0);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn encode_matches_rfc_bytes() {
        assert_eq!(
            encode(Opcode::Text, true, b"Hello", None),
            vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            encode(Opcode::Text, true, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d])),
            vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }
}
