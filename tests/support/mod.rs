//! Helpers for the integration tests: a real `chatd` process on a free port, raw TCP and HTTP
//! with timeouts, hand-built client frames (including broken ones), and a parser for the frames
//! the server sends.
//!
//! Every socket gets read and write timeouts, so a test that waits for bytes that never come
//! fails instead of hanging. Every address is on 127.0.0.1.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod chat;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tungstenite::WebSocket;

/// Read/write timeout of every test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server has to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The RFC 6455 1.3 sample key and its accept value.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The `--metrics-token` every test server gets unless the test gives its own.
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

/// Opcodes, as the four bits on the wire.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The masking key the frame builder uses unless told otherwise.
pub const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ------------------------------------------------------------------------------------------------
// The server process
// ------------------------------------------------------------------------------------------------

/// A running `chatd` on 127.0.0.1 and a free port; killed when dropped.
pub struct Server {
    child: Child,
    /// The address the server logged.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The private data directory made for this server (when the caller gave none), removed
    /// on drop.
    own_data_dir: Option<PathBuf>,
}

impl Server {
    /// Starts `chatd --listen 127.0.0.1:0` with `args` added, and waits for its address.
    /// Without `--data-dir` in `args`, the server gets a fresh directory of its own, so that
    /// servers of tests running in parallel share no database (and none lands in the repo).
    pub fn start(args: &[&str]) -> Server {
        Server::start_binary(std::path::Path::new(env!("CARGO_BIN_EXE_chatd")), args)
    }

    /// As [`Server::start`], with another build of the binary (the release build).
    pub fn start_binary(binary: &std::path::Path, args: &[&str]) -> Server {
        Server::spawn(binary, args, true)
    }

    /// As [`Server::start`], without the `--metrics-token` the tests' servers otherwise get.
    pub fn start_without_metrics_token(args: &[&str]) -> Server {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_chatd"));
        Server::spawn(binary, args, false)
    }

    fn spawn(binary: &std::path::Path, args: &[&str], metrics_token: bool) -> Server {
        let mut cmd = Command::new(binary);
        cmd.arg("--listen").arg("127.0.0.1:0").args(args);
        let gave_dir = args
            .iter()
            .any(|a| *a == "--data-dir" || a.starts_with("--data-dir="));
        let own_data_dir = (!gave_dir).then(fresh_data_dir);
        if let Some(dir) = &own_data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        if metrics_token && !args.iter().any(|a| a.starts_with("--metrics-token")) {
            cmd.arg("--metrics-token").arg(METRICS_TOKEN);
        }
        // The flags have environment fallbacks: keep the caller's environment out of the tests.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CHATD_") {
                cmd.env_remove(name);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn chatd");
        let stderr = child.stderr.take().expect("piped stderr");

        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        thread::spawn(move || {
            // Reads every line until the process closes stderr, so the pipe never fills.
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let (Some(tx), Ok(addr)) = (tx.take(), rest.trim().parse::<SocketAddr>()) {
                        let _ = tx.send(addr);
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });

        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                if let Some(dir) = &own_data_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                panic!(
                    "chatd {args:?} did not log its address (status {status:?}); stderr:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        assert!(addr.ip().is_loopback(), "listening on {addr}");
        Server {
            child,
            addr,
            log,
            own_data_dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// A new TCP connection with timeouts.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// `ws://` URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A tungstenite client on `path`, over a socket with timeouts.
    pub fn ws(&self, path: &str) -> WebSocket<TcpStream> {
        let stream = self.connect();
        let (ws, response) = tungstenite::client(self.url(path), stream)
            .unwrap_or_else(|e| panic!("websocket handshake on {path} failed: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        ws
    }

    /// A raw TCP connection that has completed the upgrade on `path` (101 checked); the next
    /// bytes on it are frames.
    pub fn raw_ws(&self, path: &str) -> TcpStream {
        let mut stream = self.connect();
        stream
            .write_all(&UpgradeRequest::new(path).to_bytes())
            .expect("send upgrade");
        let head = read_head(&mut stream).expect("read 101");
        assert_eq!(head.status, 101, "upgrade refused: {}", head.text());
        stream
    }

    /// Sends raw request bytes on a new connection and reads the response until the server
    /// closes the connection.
    pub fn http(&self, request: &[u8]) -> HttpResponse {
        let mut stream = self.connect();
        stream.write_all(request).expect("send request");
        let raw = read_to_close(&mut stream).expect("read response until close");
        HttpResponse::parse(&raw)
            .unwrap_or_else(|| panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)))
    }

    /// `GET path` (or another method) as a plain HTTP request.
    pub fn request(&self, method: &str, path: &str) -> HttpResponse {
        self.http(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
    }

    /// `GET /metrics` with the test servers' bearer token.
    pub fn metrics_response(&self) -> HttpResponse {
        self.http(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {METRICS_TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = self.metrics_response();
        assert_eq!(r.status, 200, "{}", r.text());
        r.body_text()
    }

    /// Polls `/metrics` until `metric` satisfies `ok`, or `timeout` passes; returns the last
    /// value seen.
    pub fn wait_metric(&self, metric: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.metrics();
            let value = metric_value(&text, metric)
                .unwrap_or_else(|| panic!("no metric {metric} in:\n{text}"));
            if ok(value) || Instant::now() >= deadline {
                return value;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Server {
    /// Kills the process with SIGKILL (no shutdown, no flush) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new empty directory under the system's temp dir, unique to this process and call.
fn fresh_data_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "chatd-transport-{}-{n}-{nanos}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a data directory");
    dir
}

/// A TCP connection to `addr` with read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    set_timeouts(&stream, IO_TIMEOUT);
    stream
}

/// Sets both timeouts of a socket.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
}

/// The value of a sample line `name value` (name with its labels, exactly as rendered).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

// ------------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------------

/// An upgrade request, valid by default, with headers that tests remove or change.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    /// `GET path` with Host, Upgrade, Connection, the sample key and version 13.
    pub fn new(path: &str) -> UpgradeRequest {
        UpgradeRequest {
            method: "GET".into(),
            path: path.into(),
            headers: [
                ("Host", "127.0.0.1"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", SAMPLE_KEY),
                ("Sec-WebSocket-Version", "13"),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        }
    }

    /// Changes the method.
    pub fn method(mut self, method: &str) -> UpgradeRequest {
        self.method = method.into();
        self
    }

    /// Removes a header.
    pub fn without(mut self, name: &str) -> UpgradeRequest {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces a header's value, or adds the header.
    pub fn set(mut self, name: &str, value: &str) -> UpgradeRequest {
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value.into(),
            None => self.headers.push((name.into(), value.into())),
        }
        self
    }

    /// Adds a header (even if one of that name exists).
    pub fn add(mut self, name: &str, value: &str) -> UpgradeRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The request head on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Everything received, head and body.
    pub raw: Vec<u8>,
}

impl HttpResponse {
    /// Parses a whole response (head and whatever follows it as the body).
    pub fn parse(raw: &[u8]) -> Option<HttpResponse> {
        let end = find(raw, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        let status = parts.next()?.parse().ok()?;
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_string(), v.trim().to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(HttpResponse {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
            raw: raw.to_vec(),
        })
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The whole response as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads a response head byte by byte up to and including the blank line, so that nothing
/// after it (frames) is consumed. The body is left empty.
pub fn read_head(stream: &mut TcpStream) -> io::Result<HttpResponse> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if raw.len() > 64 * 1024 {
            return Err(io::Error::other("response head too long"));
        }
        match stream.read(&mut byte)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed after {:?}",
                        String::from_utf8_lossy(&raw).into_owned()
                    ),
                ))
            }
            _ => raw.push(byte[0]),
        }
    }
    HttpResponse::parse(&raw).ok_or_else(|| io::Error::other("malformed response head"))
}

/// Reads until the peer closes the connection (read returns 0). A timeout or reset is an error.
pub fn read_to_close(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e} after {} bytes: {:?}",
                        out.len(),
                        String::from_utf8_lossy(&out[..out.len().min(200)])
                    ),
                ))
            }
        }
    }
}

/// Whether the peer has closed: the next read returns 0 (any leftover bytes are an error).
pub fn expect_eof(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected the server to close, got {n} more bytes: {:?}",
            &buf[..n]
        ),
        Err(e) => panic!("expected the server to close (read 0), got {e}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Client frames, built by hand
// ------------------------------------------------------------------------------------------------

/// How the payload length is written in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// The minimal encoding of the real payload length.
    Minimal,
    /// This value in the 7-bit field (0..=125, or 126/127 without the extension that should
    /// follow; the builder writes no extended length).
    Raw7(u8),
    /// 126 and this 16-bit length.
    Ext16(u16),
    /// 127 and this 64-bit length (any value, the top bit included).
    Ext64(u64),
}

/// A client frame, masked with [`MASK_KEY`] unless changed, final unless changed.
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: Vec<u8>,
    mask: Option<[u8; 4]>,
    length: Length,
    header_only: bool,
}

impl FrameBuilder {
    pub fn new(opcode: u8, payload: &[u8]) -> FrameBuilder {
        FrameBuilder {
            fin: true,
            rsv: 0,
            opcode,
            payload: payload.to_vec(),
            mask: Some(MASK_KEY),
            length: Length::Minimal,
            header_only: false,
        }
    }

    /// Sets FIN.
    pub fn fin(mut self, fin: bool) -> FrameBuilder {
        self.fin = fin;
        self
    }

    /// RSV1..3 as three bits (`0b100` is RSV1).
    pub fn rsv(mut self, bits: u8) -> FrameBuilder {
        self.rsv = bits & 0b111;
        self
    }

    /// The masking key; `None` sends the payload unmasked with the MASK bit clear.
    pub fn mask(mut self, key: Option<[u8; 4]>) -> FrameBuilder {
        self.mask = key;
        self
    }

    /// How the length is written.
    pub fn length(mut self, length: Length) -> FrameBuilder {
        self.length = length;
        self
    }

    /// Leaves the payload out (only the header, with the mask key, goes on the wire).
    pub fn header_only(mut self) -> FrameBuilder {
        self.header_only = true;
        self
    }

    /// The bytes on the wire.
    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | (self.opcode & 0x0f)];
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let length = match self.length {
            Length::Minimal => match self.payload.len() {
                n @ 0..=125 => Length::Raw7(n as u8),
                n @ 126..=65535 => Length::Ext16(n as u16),
                n => Length::Ext64(n as u64),
            },
            other => other,
        };
        match length {
            Length::Raw7(n) => out.push(mask_bit | (n & 0x7f)),
            Length::Ext16(n) => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Length::Ext64(n) => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Length::Minimal => unreachable!(),
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        if !self.header_only {
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.mask.map_or(0, |k| k[i % 4])),
            );
        }
        out
    }
}

/// A whole, final, masked client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::new(opcode, payload).build()
}

/// A masked client frame with FIN as given.
pub fn fragment(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::new(opcode, payload).fin(fin).build()
}

/// A close frame body: the code, then the reason bytes.
pub fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

// ------------------------------------------------------------------------------------------------
// Server frames, parsed
// ------------------------------------------------------------------------------------------------

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    /// RSV1..3 as three bits.
    pub rsv: u8,
    pub opcode: u8,
    /// Whether the MASK bit was set (a server must never set it).
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code of a close frame (`None` for an empty close body or another opcode).
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason of a close frame.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or_default()).into_owned()
    }
}

/// Reads one frame from the server, whole.
pub fn read_frame(stream: &mut TcpStream) -> io::Result<ServerFrame> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            u16::from_be_bytes(b) as u64
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => n as u64,
    };
    if len > 64 << 20 {
        return Err(io::Error::other(format!("server frame of {len} bytes")));
    }
    let mut key = [0u8; 4];
    if masked {
        stream.read_exact(&mut key)?;
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(ServerFrame {
        fin: head[0] & 0x80 != 0,
        rsv: (head[0] >> 4) & 0b111,
        opcode: head[0] & 0x0f,
        masked,
        payload,
    })
}

/// Reads the next frame and checks it is a well-formed close frame; returns its code.
pub fn read_close(stream: &mut TcpStream) -> u16 {
    let frame = read_frame(stream).expect("read the server's close frame");
    assert_eq!(
        frame.opcode, OP_CLOSE,
        "expected a close frame, got {frame:?}"
    );
    assert!(frame.fin && !frame.masked && frame.rsv == 0, "{frame:?}");
    frame
        .close_code()
        .unwrap_or_else(|| panic!("close frame without a code: {frame:?}"))
}
