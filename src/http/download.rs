//! The pieces of a file download: the credential (`Authorization: Bearer`, a signed link, or
//! the deprecated `?token=`), `Range`
//! (RFC 9110 14.2), `Content-Disposition` (RFC 6266, with RFC 8187 for non-ASCII names), the
//! response head, and the file opened at the range's first byte.

use std::fmt::Write;

use super::{Request, Response};
use crate::store::FileMeta;

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// No range, or one this server ignores (several ranges, malformed): the whole file, 200.
    Full,
    /// Bytes `start..=end`: 206.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A valid range that misses the file: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header. RFC 9110 14.2: a server "MAY ignore the Range header field", so
/// anything but a single well-formed byte range gets the whole file.
pub fn parse_range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Range::Unsatisfiable,
            Some(_) if size == 0 => Range::Unsatisfiable,
            Some(n) => Range::Part {
                start: size - n.min(size),
                end: size - 1,
            },
            None => Range::Full,
        },
        // bytes=A-
        (false, true) => match number(first) {
            Some(a) if a >= size => Range::Unsatisfiable,
            Some(a) => Range::Part {
                start: a,
                end: size - 1,
            },
            None => Range::Full,
        },
        // bytes=A-B
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a > b => Range::Full,
            (Some(a), Some(_)) if a >= size => Range::Unsatisfiable,
            (Some(a), Some(b)) => Range::Part {
                start: a,
                end: b.min(size - 1),
            },
            _ => Range::Full,
        },
        (true, true) => Range::Full,
    }
}

/// `Content-Disposition: attachment` with a file name that cannot break out of the header or
/// name a path: an ASCII fallback in `filename` (quotes, backslashes, separators and controls
/// replaced) and the exact name percent-encoded in `filename*` (RFC 8187).
pub fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if !matches!(c, '"' | '\\' | '/' | '%' | ';') => c,
            _ => '_',
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        // attr-char (RFC 8187 3.2.1) passes; everything else is %XX.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Whether a media type is safe to echo in `Content-Type`: `type/subtype` of token characters,
/// optionally with parameters of the same, separated by spaces at most.
pub fn valid_mime(mime: &str) -> bool {
    // Visible ASCII and spaces only, before any trimming: `trim` also removes CR and LF, and a
    // trailing CRLF once passed the token checks below and ended the response head early
    // (found by fuzzing).
    if !mime.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return false;
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let mut parts = mime.split(';');
    let Some((kind, sub)) = parts.next().and_then(|t| t.trim().split_once('/')) else {
        return false;
    };
    mime.len() <= 127
        && token(kind)
        && token(sub)
        && parts.all(|p| {
            p.trim()
                .split_once('=')
                .is_some_and(|(k, v)| token(k.trim()) && token(v.trim()))
        })
}

/// The response head of a download (status 200 or 206) for `len` bytes of a file of `size`.
pub fn head(range: Range, size: u64, mime: Option<&str>, name: &str) -> (u16, String) {
    let (status, len, content_range) = match range {
        Range::Part { start, end } => (
            206,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{size}")),
        ),
        _ => (200, size, None),
    };
    let content_type = mime
        .filter(|m| valid_mime(m))
        .unwrap_or("application/octet-stream");
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: chatd\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nContent-Disposition: {}\r\nX-Content-Type-Options: nosniff\r\nAccept-Ranges: bytes\r\nCache-Control: private, no-store\r\nConnection: close\r\n",
        super::response::reason(status),
        content_disposition(name),
    );
    if let Some(cr) = content_range {
        head.push_str("Content-Range: ");
        head.push_str(&cr);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    (status, head)
}

/// What a download presents to show that it may read the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Nothing: `401`.
    None,
    /// `Authorization: Bearer TOKEN`: a session token or a JWT, for API clients.
    Bearer(String),
    /// A signed link from `file.link`: its `u`, `exp` and `sig` as they stand in the query (a
    /// missing or repeated one is empty, which no signature matches).
    Link {
        /// The user it was issued to.
        user: String,
        /// Its expiry, ms since the epoch.
        exp: String,
        /// The signature.
        sig: String,
    },
    /// `?token=TOKEN`: a session token or a JWT in the URL, as old clients send it; accepted
    /// only with `--query-token-downloads`.
    QueryToken(String),
}

/// The credential of a download. An `Authorization: Bearer` header wins (an `Authorization`
/// header with another scheme is ignored); then a signed link (a query with `sig`); then
/// `?token=`.
pub fn credential(req: &Request) -> Credential {
    let bearer = req.header("authorization").and_then(|auth| {
        let (scheme, token) = auth.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    if let Some(token) = bearer {
        return Credential::Bearer(token);
    }
    let query = req.query.as_deref().unwrap_or("");
    let once = |name: &str| {
        let mut found = query_values(query, name);
        match (found.next(), found.next()) {
            (Some(value), None) => value.to_string(),
            _ => String::new(),
        }
    };
    if query_values(query, "sig").next().is_some() {
        return Credential::Link {
            user: once("u"),
            exp: once("exp"),
            sig: once("sig"),
        };
    }
    match query_values(query, "token").next() {
        Some(t) => Credential::QueryToken(t.replace("%2E", ".").replace("%2e", ".")),
        None => Credential::None,
    }
}

/// The values of the parameter `name` in a query string, as they stand.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    query
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Opens a stored file for the requested range: the response head, the file positioned at the
/// first byte, and the length to send; or the refusal (416 for a range outside the file).
pub fn open_range(
    path: &std::path::Path,
    meta: &FileMeta,
    range: Option<&str>,
) -> Result<(String, std::fs::File, u64), Response> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| {
        log::warn!("stored file {} unreadable: {e}", meta.id);
        Response::status(404)
    })?;
    let size = meta.size;
    let range = parse_range(range, size);
    let (start, len) = match range {
        Range::Unsatisfiable => {
            return Err(
                Response::status(416).with_header("Content-Range", format!("bytes */{size}"))
            )
        }
        Range::Part { start, end } => (start, end - start + 1),
        Range::Full => (0, size),
    };
    file.seek(SeekFrom::Start(start))
        .map_err(|_| Response::status(500))?;
    let (_, head) = head(range, size, meta.mime.as_deref(), &meta.name);
    Ok((head, file, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let size = 1000;
        assert_eq!(parse_range(None, size), Range::Full);
        assert_eq!(
            parse_range(Some("bytes=0-99"), size),
            Range::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=500-"), size),
            Range::Part {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-100"), size),
            Range::Part {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-5000"), size),
            Range::Part { start: 0, end: 999 }
        );
        assert_eq!(
            parse_range(Some("bytes=990-2000"), size),
            Range::Part {
                start: 990,
                end: 999
            }
        );
        assert_eq!(parse_range(Some("bytes=1000-"), size), Range::Unsatisfiable);
        assert_eq!(
            parse_range(Some("bytes=1000-1001"), size),
            Range::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=-0"), size), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-1"), 0), Range::Unsatisfiable);
        // ignored: the whole file
        assert_eq!(parse_range(Some("bytes=5-1"), size), Range::Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), size), Range::Full);
        assert_eq!(parse_range(Some("items=0-1"), size), Range::Full);
        assert_eq!(parse_range(Some("bytes=a-b"), size), Range::Full);
        assert_eq!(parse_range(Some("bytes=-"), size), Range::Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), size), Range::Full);
    }

    fn request(query: Option<&str>, authorization: Option<&str>) -> Request {
        let mut head = format!(
            "GET /files/x{} HTTP/1.1\r\nHost: t\r\n",
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        if let Some(a) = authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        head.push_str("\r\n");
        let limits = crate::http::request::HeadLimits {
            max_size: 8192,
            max_headers: 16,
        };
        match crate::http::request::parse(head.as_bytes(), limits) {
            Ok(crate::http::request::Parsed::Complete(req, _)) => req,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials() {
        let link = |u: &str, exp: &str, sig: &str| Credential::Link {
            user: u.into(),
            exp: exp.into(),
            sig: sig.into(),
        };
        assert_eq!(credential(&request(None, None)), Credential::None);
        assert_eq!(
            credential(&request(Some("u=4&exp=9&sig=abc"), None)),
            link("4", "9", "abc")
        );
        // A bearer header wins; another scheme is ignored.
        assert_eq!(
            credential(&request(Some("u=4&exp=9&sig=abc"), Some("Bearer tok"))),
            Credential::Bearer("tok".into())
        );
        assert_eq!(
            credential(&request(Some("u=4&exp=9&sig=abc"), Some("Basic Zm9v"))),
            link("4", "9", "abc")
        );
        // A link wins over a token; a repeated or missing field is empty.
        assert_eq!(
            credential(&request(Some("token=t&sig=a&u=1&u=2"), None)),
            link("", "", "a")
        );
        assert_eq!(
            credential(&request(Some("token=a%2Eb.c"), None)),
            Credential::QueryToken("a.b.c".into())
        );
        assert_eq!(
            credential(&request(Some("tokens=x"), None)),
            Credential::None
        );
    }

    #[test]
    fn disposition_is_safe() {
        let d = content_disposition("../../etc/pa\"ss\\wd\r\n.txt");
        assert!(
            d.starts_with("attachment; filename=\".._.._etc_pa_ss_wd__.txt\"; "),
            "{d}"
        );
        assert!(!d.contains('\r') && !d.contains('\n'));
        let quoted = d.split('"').nth(1).unwrap();
        assert!(!quoted.contains('/') && !quoted.contains('\\'));
        assert!(d.ends_with("filename*=UTF-8''..%2F..%2Fetc%2Fpa%22ss%5Cwd%0D%0A.txt"));
        let d = content_disposition("résumé.pdf");
        assert_eq!(
            d,
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
    }

    #[test]
    fn mime_types() {
        assert!(valid_mime("image/png"));
        assert!(valid_mime("text/plain; charset=utf-8"));
        assert!(!valid_mime("text/html\r\nX-Evil: 1"));
        assert!(!valid_mime("nonsense"));
        assert!(!valid_mime("a/b c"));
        // Fuzz regression (http_head): whitespace that `trim` removes must not pass, or it is
        // echoed into the head. This one ended the head right after Content-Type.
        assert!(!valid_mime("HEAD/0bytEs\n"));
        for bad in [
            "text/html\r\n",
            "\r\ntext/html",
            "text/plain; a=b\r\n\r\n",
            "\ttext/css",
        ] {
            assert!(!valid_mime(bad), "{bad:?}");
        }
        let (_, h) = head(Range::Full, 0, Some("HEAD/0bytEs\n"), "HEAD/0bytEs\n");
        assert!(
            h.contains("Content-Type: application/octet-stream\r\n"),
            "{h:?}"
        );
        assert_eq!(h.matches("\r\n\r\n").count(), 1);
        assert!(!h.replace("\r\n", "").contains(['\r', '\n']), "{h:?}");
    }

    #[test]
    fn heads() {
        let (status, h) = head(
            Range::Part { start: 10, end: 19 },
            100,
            Some("image/png"),
            "a.png",
        );
        assert_eq!(status, 206);
        assert!(h.starts_with("HTTP/1.1 206 Partial Content\r\n"));
        assert!(h.contains("Content-Length: 10\r\n"));
        assert!(h.contains("Content-Range: bytes 10-19/100\r\n"));
        assert!(h.contains("Content-Type: image/png\r\n"));
        assert!(h.contains("X-Content-Type-Options: nosniff\r\n"));
        let (status, h) = head(Range::Full, 100, Some("bad\r\nmime"), "a");
        assert_eq!(status, 200);
        assert!(h.contains("Content-Type: application/octet-stream\r\n"));
    }
}
