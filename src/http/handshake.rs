//! The server's opening handshake (RFC 6455 section 4.2).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::request::Request;
use super::response::Response;

/// RFC 6455 1.3: the GUID concatenated with the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request asks for a WebSocket. Other requests are plain HTTP and are routed as
/// such, including those that offer some other upgrade (`Upgrade: h2c` from `curl --http2`),
/// which a server may ignore (RFC 9110 7.8).
pub fn is_upgrade(req: &Request) -> bool {
    req.header_has_token("upgrade", "websocket")
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 4.2.2, step 5.4): base64 of the SHA-1 of
/// the key and the GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Fields an upgrade request must not repeat, with the rule for each:
/// - `Sec-WebSocket-Key`: RFC 6455 11.3.1, "The |Sec-WebSocket-Key| header field MUST NOT
///   appear more than once in an HTTP request."
/// - `Sec-WebSocket-Version`: a request names the one version it speaks (4.1, item 9); of two,
///   which would the server answer?
/// - `Host`: RFC 9112 3.2, a server "MUST respond with a 400 (Bad Request) status code [...] to
///   any request message that contains more than one Host header field line".
const SINGLE_FIELDS: [&str; 3] = ["Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version"];

/// The first field of [`SINGLE_FIELDS`] that the request repeats.
fn repeated_field(req: &Request) -> Option<&'static str> {
    SINGLE_FIELDS
        .into_iter()
        .find(|name| req.header_count(name) > 1)
}

/// The answer to a plain request (no `Upgrade: websocket`) on a WebSocket path: `426 Upgrade
/// Required` naming the protocol, as RFC 9110 15.5.22 asks ("The server MUST send an Upgrade
/// header field in a 426 response to indicate the required protocol(s)"), and a body that tells
/// a person who opened the address in a browser what it is.
pub fn upgrade_required() -> Response {
    Response::text(
        426,
        "This is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket).",
    )
    .with_header("Upgrade", "websocket")
}

/// Checks an upgrade request against RFC 6455 4.2.1 and the origin allow-list.
///
/// `Ok` holds the `101 Switching Protocols` response bytes; `Err` the refusal to send instead.
pub fn check(req: &Request, allowed_origins: &[String]) -> Result<Vec<u8>, Response> {
    // 4.2.1 (1): "An HTTP/1.1 or higher GET request".
    if req.method != "GET" {
        return Err(Response::status(405).with_header("Allow", "GET"));
    }
    if req.version < 1 {
        return Err(Response::text(400, "WebSocket needs HTTP/1.1"));
    }
    if let Some(name) = repeated_field(req) {
        return Err(Response::text(400, &format!("{name} must appear once")));
    }
    // (2): "A |Host| header field containing the server's authority."
    if req.header("host").is_none_or(str::is_empty) {
        return Err(Response::text(400, "missing Host"));
    }
    // (3): "An |Upgrade| header field containing the value "websocket", treated as an ASCII
    // case-insensitive value."
    if !req.header_has_token("upgrade", "websocket") {
        return Err(Response::text(400, "only Upgrade: websocket is supported"));
    }
    // (4): "A |Connection| header field that includes the token "Upgrade"".
    if !req.header_has_token("connection", "upgrade") {
        return Err(Response::text(400, "Connection must include Upgrade"));
    }
    // (6): "A |Sec-WebSocket-Version| header field, with a value of 13." 4.4: otherwise answer
    // with the versions we speak.
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Response::status(426)
            .with_header("Upgrade", "websocket")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    // (5): "A |Sec-WebSocket-Key| header field with a base64-encoded value that, when decoded,
    // is 16 bytes in length."
    let key = match req.header("sec-websocket-key") {
        Some(k) if BASE64.decode(k).is_ok_and(|raw| raw.len() == 16) => k,
        _ => return Err(Response::text(400, "missing or invalid Sec-WebSocket-Key")),
    };
    // (7) and 10.2: browsers send Origin; a server that only serves some sites refuses others
    // with 403. Clients that send no Origin (not browsers) are not subject to the list.
    if let Some(origin) = req.header("origin") {
        if !allowed_origins.is_empty() && !allowed_origins.iter().any(|o| o == origin) {
            return Err(Response::text(403, "origin not allowed"));
        }
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{parse, HeadLimits, Parsed};

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 4096,
        max_headers: 32,
    };

    fn request(raw: &str) -> Request {
        match parse(raw.as_bytes(), LIMITS).unwrap() {
            Parsed::Complete(r, _) => r,
            Parsed::Partial => panic!("partial"),
        }
    }

    fn upgrade(extra: &str) -> String {
        format!("GET /echo HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    }

    fn status(result: Result<Vec<u8>, Response>) -> u16 {
        match result {
            Ok(_) => 101,
            Err(r) => r.status,
        }
    }

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_gets_101_with_accept() {
        let resp = check(&request(&upgrade("")), &[]).unwrap();
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn header_tokens_are_case_insensitive_lists() {
        let raw = upgrade("")
            .replace("Upgrade: websocket", "Upgrade: WebSocket")
            .replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
        assert_eq!(status(check(&request(&raw), &[])), 101);
    }

    #[test]
    fn wrong_version_is_426_with_supported_version() {
        let raw = upgrade("").replace("Version: 13", "Version: 8");
        let err = check(&request(&raw), &[]).unwrap_err();
        assert_eq!(err.status, 426);
        assert!(err
            .headers
            .contains(&("Sec-WebSocket-Version", "13".to_string())));
    }

    #[test]
    fn each_missing_piece_is_refused() {
        let cases = [
            (upgrade("").replace("GET", "POST"), 405),
            (upgrade("").replace("HTTP/1.1", "HTTP/1.0"), 400),
            (upgrade("").replace("Host: server.example.com\r\n", ""), 400),
            (
                upgrade("").replace("Upgrade: websocket", "Upgrade: h2c"),
                400,
            ),
            (
                upgrade("").replace("Connection: Upgrade", "Connection: keep-alive"),
                400,
            ),
            (
                upgrade("").replace("Sec-WebSocket-Version: 13\r\n", ""),
                426,
            ),
            (
                upgrade("").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                400,
            ),
            (
                upgrade("").replace("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"),
                400,
            ),
            (
                upgrade("").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                400,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(status(check(&request(&raw), &[])), want, "{raw}");
        }
    }

    #[test]
    fn repeated_single_fields_are_refused() {
        let key2 = "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n";
        for extra in [
            key2,
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "sec-websocket-version: 13\r\n",
            "Host: other.example\r\n",
        ] {
            let err = check(&request(&upgrade(extra)), &[]).unwrap_err();
            assert_eq!(err.status, 400, "{extra}");
            assert!(String::from_utf8_lossy(&err.body).contains("must appear once"));
        }
        // Fields that are lists may repeat.
        let raw = upgrade(
            "Connection: keep-alive\r\nSec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b\r\n",
        );
        assert_eq!(status(check(&request(&raw), &[])), 101);
    }

    #[test]
    fn upgrade_required_names_websocket() {
        let r = upgrade_required();
        assert_eq!(r.status, 426);
        assert!(r.headers.contains(&("Upgrade", "websocket".to_string())));
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://chat.example".to_string()];
        let good = upgrade("Origin: https://chat.example\r\n");
        let bad = upgrade("Origin: https://evil.example\r\n");
        assert_eq!(status(check(&request(&good), &allowed)), 101);
        assert_eq!(status(check(&request(&bad), &allowed)), 403);
        // No list: every origin. No Origin header: not a browser, not subject to the list.
        assert_eq!(status(check(&request(&bad), &[])), 101);
        assert_eq!(status(check(&request(&upgrade("")), &allowed)), 101);
    }
}
