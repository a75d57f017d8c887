//! A protocol-v1 client over tungstenite for the chat tests: requests with ids, replies matched
//! by `re`, events kept in arrival order.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use super::Server;

/// How long a test waits for any one reply or event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Flags that keep password hashing cheap and limits out of the way, for tests that are not
/// about them.
pub const FAST: &[&str] = &[
    "--argon2-memory-kib",
    "64",
    "--argon2-iterations",
    "1",
    "--login-rate",
    "100000",
    "--login-burst",
    "100000",
    "--send-rate",
    "100000",
    "--send-burst",
    "100000",
    "--group-create-rate",
    "100000",
    "--group-create-burst",
    "100000",
    "--upload-rate",
    "100000",
    "--upload-burst",
    "100000",
];

/// A data directory removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A fresh, empty directory under the system's temp dir.
    pub fn new(tag: &str) -> DataDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "chatd-test-{tag}-{}-{n}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        DataDir(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a chat server on `dir` with the cheap-hashing flags and `args`.
pub fn start(dir: &DataDir, args: &[&str]) -> Server {
    let mut all: Vec<&str> = vec!["--data-dir", dir.path().to_str().unwrap()];
    all.extend_from_slice(FAST);
    all.extend_from_slice(args);
    Server::start(&all)
}

/// A chat connection.
pub struct Client {
    ws: WebSocket<TcpStream>,
    events: VecDeque<Value>,
    next_id: u64,
}

impl Client {
    /// Opens `/ws`.
    pub fn connect(server: &Server) -> Client {
        Client::over(server.ws("/ws"))
    }

    /// A client over a WebSocket opened by the caller.
    pub fn over(ws: WebSocket<TcpStream>) -> Client {
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Client {
            ws,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Sends a binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).expect("send");
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Sends a raw text frame; `false` if the connection is gone.
    pub fn try_send_text(&mut self, text: &str) -> bool {
        self.ws.send(Message::text(text)).is_ok()
    }

    /// Reads until the server closes: what came first (events kept earlier included), and the
    /// close code, if it sent one.
    pub fn until_closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut seen: Vec<Value> = self.events.drain(..).collect();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => seen.push(serde_json::from_str(&t).expect("JSON")),
                Ok(Message::Close(frame)) => {
                    let _ = self.ws.flush();
                    return (seen, frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (seen, None),
            }
        }
        panic!("server did not close the connection");
    }

    /// Sends several text frames in one write, so that the server reads them together.
    pub fn send_texts_together(&mut self, texts: &[String]) {
        for t in texts {
            self.ws.write(Message::text(t.as_str())).expect("queue");
        }
        self.ws.flush().expect("send");
    }

    /// Sends `body` with a fresh `id` and returns the reply (`ok` or `error`).
    pub fn request(&mut self, mut body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        self.send_text(&body.to_string());
        self.reply_to(&json!(id))
    }

    /// As [`Client::request`], but `None` instead of a panic when the connection is gone
    /// (for tests that kill the server under the client).
    pub fn try_request(&mut self, mut body: Value) -> Option<Value> {
        let id = json!(self.next_id);
        self.next_id += 1;
        body["id"] = id.clone();
        self.ws.send(Message::text(body.to_string())).ok()?;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.read_once() {
                Ok(Some(v)) if v.get("re") == Some(&id) => return Some(v),
                Ok(Some(v)) => self.events.push_back(v),
                Ok(None) => {}
                Err(()) => return None,
            }
        }
        None
    }

    /// Sends a request and asserts it succeeded.
    pub fn ok(&mut self, body: Value) -> Value {
        let reply = self.request(body.clone());
        assert_eq!(reply["type"], "ok", "{body} -> {reply}");
        reply
    }

    /// Sends a request and asserts it failed with `code`.
    pub fn err(&mut self, body: Value, code: &str) -> Value {
        let reply = self.request(body.clone());
        assert_eq!(reply["type"], "error", "{body} -> {reply}");
        assert_eq!(reply["code"], code, "{body} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        reply
    }

    /// Waits for the reply whose `re` is `id`, keeping events that come first.
    pub fn reply_to(&mut self, id: &Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self
                .read(deadline)
                .expect("connection closed before the reply");
            if v.get("re") == Some(id) {
                return v;
            }
            if matches!(v["type"].as_str(), Some("ok" | "error")) {
                panic!("reply out of order: waiting for re={id}, got {v}");
            }
            self.events.push_back(v);
        }
    }

    /// The next message of any kind (reply or event), or `None` if the connection closed.
    pub fn next(&mut self) -> Option<Value> {
        if let Some(v) = self.events.pop_front() {
            return Some(v);
        }
        self.read(Instant::now() + WAIT)
    }

    /// Waits for the next event of type `kind`, skipping others.
    pub fn event(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.events.iter().position(|e| e["type"] == kind) {
            return self.events.remove(pos).unwrap();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self
                .read(deadline)
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if v["type"] == kind {
                return v;
            }
            self.events.push_back(v);
        }
    }

    /// Every event of type `kind` already queued or arriving within `within`, in order.
    pub fn events_within(&mut self, kind: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.read_once() {
                Ok(Some(v)) => self.events.push_back(v),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let (matching, rest): (Vec<Value>, Vec<Value>) =
            self.events.drain(..).partition(|e| e["type"] == kind);
        self.events.extend(rest);
        matching
    }

    /// Asserts no event of type `kind` arrives within `within`.
    pub fn no_event(&mut self, kind: &str, within: Duration) {
        assert!(
            !self.events.iter().any(|e| e["type"] == kind),
            "unexpected {kind}: {:?}",
            self.events
        );
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.read_once() {
                Ok(Some(v)) => {
                    assert_ne!(v["type"], kind, "unexpected {v}");
                    self.events.push_back(v);
                }
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }

    /// Waits until the server closes; returns its close code, if it sent one.
    pub fn closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    // Send the close reply tungstenite queued, completing the handshake.
                    let _ = self.ws.flush();
                    return frame.map(|f| u16::from(f.code));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
        panic!("server did not close the connection");
    }

    fn read(&mut self, deadline: Instant) -> Option<Value> {
        while Instant::now() < deadline {
            match self.read_once() {
                Ok(Some(v)) => return Some(v),
                Ok(None) => {}
                Err(()) => return None,
            }
        }
        panic!("timed out waiting for a message");
    }

    /// One read attempt: a JSON message, nothing yet, or closed.
    fn read_once(&mut self) -> Result<Option<Value>, ()> {
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(Some(serde_json::from_str(&t).expect("server sent JSON"))),
            Ok(Message::Close(_)) => Err(()),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(_) => Err(()),
        }
    }
}

/// Registers `user` (password `password-<user>`) on a fresh connection and returns a client
/// logged in as that user, with its token.
pub fn user(server: &Server, name: &str) -> (Client, String) {
    let mut c = Client::connect(server);
    c.ok(json!({"type": "register", "user": name, "password": format!("password-{name}")}));
    let reply =
        c.ok(json!({"type": "login", "user": name, "password": format!("password-{name}")}));
    let token = reply["token"].as_str().unwrap().to_string();
    (c, token)
}

/// A second connection for an existing user, by token.
pub fn session(server: &Server, token: &str) -> Client {
    let mut c = Client::connect(server);
    c.ok(json!({"type": "auth", "token": token}));
    c
}

/// Runs an operator command (`chatd admin ...`) on `dir`, beside any server running on it, and
/// returns what it printed and how it exited.
pub fn operator(dir: &DataDir, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.args(args).arg("--data-dir").arg(dir.path());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHATD_") {
            cmd.env_remove(name);
        }
    }
    cmd.output().expect("run chatd")
}
