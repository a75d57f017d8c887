//! Close frames and status codes (RFC 6455 sections 5.5.1 and 7.4).

use super::utf8;

/// Close status codes this server sends (RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose for which the connection was established has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going down (shutdown) or the peer went silent.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007: a text message (or close reason) that is not UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: a policy was broken (backpressure cap, abuse).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a frame or message over the configured size.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
}

/// Whether a peer may send `code` in a close frame.
///
/// RFC 6455 7.4.1/7.4.2: 1000-1003 and 1007-1011 are defined; 1012-1014 were registered with
/// IANA later (restart, try again later, bad gateway); 3000-3999 are registered for libraries and
/// 4000-4999 are private. 1004-1006 and 1015 "MUST NOT be set as a status code in a Close control
/// frame", and everything below 1000 or in 1016-2999 is reserved.
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A parsed close frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code, if the body had one.
    pub code: Option<u16>,
    /// The UTF-8 reason that follows the code (may be empty).
    pub reason: String,
}

/// Parses and checks the body of a close frame the peer sent.
///
/// RFC 6455 5.5.1: "If there is a body, the first two bytes of the body MUST be a 2-byte unsigned
/// integer [...] Following the 2-byte integer, the body MAY contain UTF-8-encoded data".
/// A one-byte body or an invalid code is a protocol error (1002); a reason that is not UTF-8 is
/// 1007.
pub fn parse(body: &[u8]) -> Result<CloseFrame, CloseCode> {
    match body.len() {
        0 => Ok(CloseFrame {
            code: None,
            reason: String::new(),
        }),
        1 => Err(CloseCode::PROTOCOL),
        _ => {
            let code = u16::from_be_bytes([body[0], body[1]]);
            if !is_valid_code(code) {
                return Err(CloseCode::PROTOCOL);
            }
            if !utf8::is_valid(&body[2..]) {
                return Err(CloseCode::INVALID_DATA);
            }
            Ok(CloseFrame {
                code: Some(code),
                reason: String::from_utf8_lossy(&body[2..]).into_owned(),
            })
        }
    }
}

/// The body of a close frame: the code, then a reason cut to fit the 125-byte control limit at a
/// character boundary.
pub fn body(code: CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_has_no_code() {
        assert_eq!(parse(b"").unwrap().code, None);
    }

    #[test]
    fn one_byte_body_is_a_protocol_error() {
        assert_eq!(parse(&[0x03]), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn code_and_reason() {
        let f = parse(&[0x03, 0xe8, b'b', b'y', b'e']).unwrap();
        assert_eq!(f.code, Some(1000));
        assert_eq!(f.reason, "bye");
    }

    #[test]
    fn reserved_and_forbidden_codes_are_rejected() {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                parse(&code.to_be_bytes()),
                Err(CloseCode::PROTOCOL),
                "{code}"
            );
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 3999, 4000, 4999,
        ] {
            assert!(parse(&code.to_be_bytes()).is_ok(), "{code}");
        }
    }

    #[test]
    fn reason_must_be_utf8() {
        assert_eq!(
            parse(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd]),
            Err(CloseCode::INVALID_DATA)
        );
    }

    #[test]
    fn body_truncates_long_reason_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let b = body(CloseCode::NORMAL, &reason);
        assert!(b.len() <= 125);
        assert!(std::str::from_utf8(&b[2..]).is_ok());
        assert_eq!(&b[..2], &[0x03, 0xe8]);
    }
}
