//! The HTTP request head: `http::request::parse` with the server's default limits and with small
//! ones, the upgrade check and the download credential (a signed link's check included) on
//! whatever parses, and `http::download::parse_range` (with the
//! download response head built from its answer) on the request's `Range` header and on the
//! input as text, for sizes at the edges.
//!
//! Invariants: a complete head is at most the input and at most `max_size`, and parses the same
//! from exactly its own bytes; a satisfiable range lies inside the file; the download head never
//! carries a CR or LF from the file name or media type; no link signed by another key verifies.
#![no_main]

use chatd::http::download::{self, Range};
use chatd::http::handshake;
use chatd::http::{HeadLimits, Parsed};
use libfuzzer_sys::fuzz_target;

const LIMITS: [HeadLimits; 2] = [
    HeadLimits {
        max_size: 8192,
        max_headers: 64,
    },
    HeadLimits {
        max_size: 64,
        max_headers: 2,
    },
];

fuzz_target!(|data: &[u8]| {
    for limits in LIMITS {
        check_head(data, limits);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The last 8 bytes as a size too, so the fuzzer can reach any size.
        let size = data
            .len()
            .checked_sub(8)
            .map(|at| u64::from_le_bytes(data[at..].try_into().expect("8 bytes")));
        check_range(Some(text), size);
    }
});

fn check_head(data: &[u8], limits: HeadLimits) {
    let Ok(Parsed::Complete(req, n)) = chatd::http::request::parse(data, limits) else {
        return;
    };
    assert!(n <= data.len() && n <= limits.max_size, "consumed {n}");
    assert_eq!(
        chatd::http::request::parse(&data[..n], limits),
        Ok(Parsed::Complete(req.clone(), n))
    );
    assert!(req.headers.len() <= limits.max_headers);
    let _ = handshake::is_upgrade(&req);
    for origins in [vec![], vec!["https://chat.example".to_string()]] {
        if let Ok(resp) = handshake::check(&req, &origins) {
            assert!(resp.starts_with(b"HTTP/1.1 101 ") && resp.ends_with(b"\r\n\r\n"));
        }
    }
    if let download::Credential::Link { user, exp, sig } = download::credential(&req) {
        let key = chatd::chat::links::LinkKey::from_bytes([0x5a; 32]);
        let file_id = req.path.strip_prefix("/files/").unwrap_or("");
        assert!(key.verify(file_id, &user, &exp, &sig, 0).is_err(), "{req:?}");
    }
    check_range(req.header("range"), None);
}

fn check_range(header: Option<&str>, extra_size: Option<u64>) {
    let sizes = [0, 1, 2, 100, 1000, u64::MAX - 1, u64::MAX];
    for size in sizes.into_iter().chain(extra_size) {
        let range = download::parse_range(header, size);
        if let Range::Part { start, end } = range {
            assert!(start <= end && end < size, "{range:?} of {size}");
        }
        let text = header.unwrap_or("");
        let (status, head) = download::head(range, size, Some(text), text);
        assert!(status == 200 || status == 206);
        let lines = head
            .strip_suffix("\r\n\r\n")
            .expect("head ends with a blank line");
        // Exactly the lines the server writes: nothing from the name or type broke out.
        let count = lines.split("\r\n").count();
        assert_eq!(count, if status == 206 { 10 } else { 9 }, "{head:?}");
        assert!(
            !lines.split("\r\n").any(|l| l.contains(['\r', '\n'])),
            "{head:?}"
        );
    }
}
