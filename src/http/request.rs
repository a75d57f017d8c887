//! Parsing an HTTP/1.1 request head with httparse, within size and header-count limits.

/// Limits on a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest request head in bytes (request line + headers + blank line).
    pub max_size: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// A parsed request head, owned so that it can outlive the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path without the query string, e.g. `/echo`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// Minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Header fields in order; names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// The first header with this name (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// How many fields of this name the head has (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// Whether a comma-separated header (such as `Connection`) holds `token`, case-insensitively,
    /// looking at every field of that name.
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why a request head was refused; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not a valid HTTP/1.x request head: 400.
    Malformed,
    /// Head larger than `max_size`, or more than `max_headers` fields: 431.
    TooLarge,
}

/// The result of [`parse`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head and the bytes it took.
    Complete(Request, usize),
    /// More bytes are needed.
    Partial,
}

/// Parses a request head from the start of `buf`.
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Parsed, HeadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            if n > limits.max_size {
                return Err(HeadError::TooLarge);
            }
            Ok(Parsed::Complete(owned(&req), n))
        }
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_size => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

fn owned(req: &httparse::Request) -> Request {
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_size: 1024,
        max_headers: 8,
    };

    #[test]
    fn complete_request_with_query() {
        let raw = b"GET /files/7?token=abc HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\nrest";
        match parse(raw, LIMITS).unwrap() {
            Parsed::Complete(req, n) => {
                assert_eq!(n, raw.len() - 4);
                assert_eq!(req.method, "GET");
                assert_eq!(req.path, "/files/7");
                assert_eq!(req.query.as_deref(), Some("token=abc"));
                assert_eq!(req.version, 1);
                assert_eq!(req.header("host"), Some("x"));
                assert_eq!(req.header_count("HOST"), 1);
                assert_eq!(req.header_count("upgrade"), 0);
                assert!(req.header_has_token("connection", "upgrade"));
                assert!(!req.header_has_token("connection", "close"));
            }
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn partial_until_blank_line() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(parse(raw, LIMITS), Ok(Parsed::Partial));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..9 {
            raw.extend(format!("X-{i}: y\r\n").bytes());
        }
        raw.extend(b"\r\n");
        assert_eq!(parse(&raw, LIMITS), Err(HeadError::TooLarge));
    }

    #[test]
    fn oversized_head_is_too_large_even_when_incomplete() {
        let mut raw = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        raw.extend(vec![b'a'; 2000]);
        assert_eq!(parse(&raw, LIMITS), Err(HeadError::TooLarge));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\r\n\r\n", LIMITS),
            Err(HeadError::Malformed)
        );
    }
}
