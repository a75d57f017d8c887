//! Plain HTTP responses: real status lines, headers and a short body.

/// A response to serialize.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header fields beyond the ones every response gets.
    pub headers: Vec<(&'static str, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A `text/plain` response whose body is `text` and a newline.
    pub fn text(status: u16, text: &str) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n").into_bytes(),
        }
    }

    /// The canned response for an error status: its reason phrase as the body.
    pub fn status(status: u16) -> Response {
        Response::text(status, reason(status))
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire. The server closes after every plain response, and says so.
    /// A `HEAD` request gets the same head without the body (RFC 9110 9.3.2).
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        // RFC 9110 7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in
        // the Connection header field".
        let connection = if self.headers.iter().any(|(n, _)| *n == "Upgrade") {
            "Upgrade, close"
        } else {
            "close"
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: chatd\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrase for the status codes this server uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_headers_and_body() {
        let bytes = Response::status(404).encode(false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("\r\nContent-Length: 10\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nNot Found\n"));
    }

    #[test]
    fn head_only_omits_the_body_but_keeps_its_length() {
        let text = String::from_utf8(Response::text(200, "ok").encode(true)).unwrap();
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn extra_headers() {
        let r = Response::status(426).with_header("Sec-WebSocket-Version", "13");
        let text = String::from_utf8(r.encode(false)).unwrap();
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let text = String::from_utf8(r.with_header("Upgrade", "websocket").encode(false)).unwrap();
        assert!(text.contains("\r\nConnection: Upgrade, close\r\n"));
        assert!(text.contains("\r\nUpgrade: websocket\r\n"));
    }
}
