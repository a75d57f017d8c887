//! Peers that do not read what the server sends them: a connection whose output the socket
//! takes none of for `--stall-timeout` is dropped, and a file download that averages less than
//! `--download-min-rate` is dropped too, while readers that keep up are left alone.
//!
//! Every test starts its own server on a free port of 127.0.0.1, and every socket has timeouts.

mod support;

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::chat::{self, user, Client, DataDir};
use support::*;

/// Reads until the server ends the connection: EOF or a reset. Returns the bytes read, or the
/// error that stopped the reading otherwise (a timeout: the server kept the connection).
/// With `pace`, reads at most `pace.0` bytes at a time and sleeps `pace.1` after each read.
fn read_until_closed(
    s: &mut TcpStream,
    within: Duration,
    pace: Option<(usize, Duration)>,
) -> io::Result<usize> {
    let start = Instant::now();
    let (step, pause) = pace.unwrap_or((64 * 1024, Duration::ZERO));
    let mut buf = vec![0u8; step];
    let mut total = 0;
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(total),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        thread::sleep(pause);
    }
    Err(io::Error::new(
        ErrorKind::TimedOut,
        format!("still open after {within:?} and {total} bytes"),
    ))
}

/// Writes `frame` over and over without reading, until the socket stops taking bytes for the
/// write timeout (the server stopped reading) or fails; returns the bytes sent.
fn flood_until_blocked(s: &mut TcpStream, frame: &[u8]) -> usize {
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut sent = 0;
    while sent < 512 << 20 && start.elapsed() < Duration::from_secs(20) {
        match s.write(frame) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn an_echo_client_that_never_reads_is_dropped_after_the_stall_timeout() {
    let server = Server::start(&["--echo", "--stall-timeout", "1s"]);
    let mut s = server.raw_ws("/echo");
    let sent = flood_until_blocked(&mut s, &masked(OP_BINARY, &vec![0x5a; 65536]));
    let stalled = server.wait_metric("chatd_stalled_closes_total", Duration::from_secs(10), |v| {
        v >= 1.0
    });
    assert_eq!(
        stalled, 1.0,
        "not dropped after {sent} bytes sent, none read"
    );
    // What the kernel already holds may still arrive; then the connection ends.
    set_timeouts(&s, Duration::from_secs(5));
    read_until_closed(&mut s, Duration::from_secs(30), None).expect("the server closed");
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_connections_closed_total{reason=\"stalled\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "chatd_backpressure_closes_total"),
        Some(0.0)
    );
    // The server is fine: a new client is echoed.
    let mut ws = server.raw_ws("/echo");
    ws.write_all(&masked(OP_TEXT, b"after the stall")).unwrap();
    assert_eq!(read_frame(&mut ws).unwrap().payload, b"after the stall");
}

#[test]
fn an_echo_client_that_reads_slowly_but_steadily_is_kept() {
    let server = Server::start(&["--echo", "--stall-timeout", "3s"]);
    let mut s = server.raw_ws("/echo");
    set_timeouts(&s, Duration::from_secs(10));
    let payload = vec![0x42; 65536];
    let count = 128;
    let mut writer = s.try_clone().unwrap();
    let frame = masked(OP_BINARY, &payload);
    let flood = thread::spawn(move || {
        for _ in 0..count {
            writer.write_all(&frame).expect("the server keeps reading");
        }
    });
    // About 1.3 MB/s: 8 MiB take longer than the stall timeout, and the socket keeps taking.
    for i in 0..count {
        let f = read_frame(&mut s).unwrap_or_else(|e| panic!("echo {i}: {e}"));
        assert_eq!(f.opcode, OP_BINARY, "echo {i}: {f:?}");
        assert!(f.payload == payload, "echo {i} changed");
        thread::sleep(Duration::from_millis(50));
    }
    flood.join().unwrap();
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_stalled_closes_total"),
        Some(0.0),
        "{text}"
    );
}

/// Deterministic bytes that do not compress or repeat in short cycles.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Uploads `data` to `to` in 1 MiB frames; returns the file id.
fn upload(c: &mut Client, to: &str, data: &[u8]) -> String {
    let req = json!({"type": "file.upload", "to": to, "name": "big.bin", "size": data.len()});
    let file_id = c.ok(req)["file_id"].as_str().unwrap().to_string();
    for piece in data.chunks(1 << 20) {
        c.send_binary(piece);
    }
    assert_eq!(c.event("file.done")["file_id"], file_id.as_str());
    file_id
}

/// A server with `args`, and a file of `size` bytes that alice sent herself; returns the
/// server, the file id and alice's token.
fn server_with_file(dir: &DataDir, args: &[&str], size: usize) -> (Server, String, String) {
    let server = chat::start(dir, args);
    let (mut alice, token) = user(&server, "alice");
    let id = upload(&mut alice, "@alice", &bytes(size, 7));
    (server, id, token)
}

/// Sends `GET /files/{id}` on a new connection.
fn start_download(server: &Server, id: &str, token: &str) -> TcpStream {
    let mut s = server.connect();
    write!(
        s,
        "GET /files/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    s
}

#[test]
fn a_download_that_is_never_read_is_dropped_after_the_stall_timeout() {
    let dir = DataDir::new("stalled-download");
    let (server, id, token) = server_with_file(&dir, &["--stall-timeout", "1s"], 16 << 20);
    let mut s = start_download(&server, &id, &token);
    let stalled = server.wait_metric("chatd_stalled_closes_total", Duration::from_secs(10), |v| {
        v >= 1.0
    });
    assert_eq!(stalled, 1.0, "an unread download is still open");
    let read = read_until_closed(&mut s, Duration::from_secs(30), None).expect("closed");
    assert!(read < 16 << 20, "the whole file arrived ({read} bytes)");
    let closed = "chatd_connections_closed_total{reason=\"stalled\"}";
    assert_eq!(metric_value(&server.metrics(), closed), Some(1.0));
}

#[test]
fn a_download_read_below_the_minimum_rate_is_dropped() {
    let dir = DataDir::new("slow-download");
    let size = 24 << 20;
    // The reader takes about 1.3 MB/s, steadily: never stalled for 5 s, but well under 8 MB/s.
    let args = ["--stall-timeout", "5s", "--download-min-rate", "8000000"];
    let (server, id, token) = server_with_file(&dir, &args, size);
    let mut s = start_download(&server, &id, &token);
    let pace = Some((64 * 1024, Duration::from_millis(50)));
    let read = read_until_closed(&mut s, Duration::from_secs(60), pace).expect("closed");
    assert!(
        read < size,
        "the whole file arrived ({read} bytes): not dropped"
    );
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_slow_download_closes_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "chatd_stalled_closes_total"),
        Some(0.0),
        "{text}"
    );
    let closed = "chatd_connections_closed_total{reason=\"slow_download\"}";
    assert_eq!(metric_value(&text, closed), Some(1.0), "{text}");
}

#[test]
fn a_download_that_keeps_the_minimum_rate_completes() {
    let dir = DataDir::new("steady-download");
    let size = 8 << 20;
    // About 1.3 MB/s against a minimum of 256 KB/s, for longer than the head start.
    let args = ["--stall-timeout", "2s", "--download-min-rate", "256000"];
    let (server, id, token) = server_with_file(&dir, &args, size);
    let mut s = start_download(&server, &id, &token);
    let pace = Some((64 * 1024, Duration::from_millis(50)));
    let read = read_until_closed(&mut s, Duration::from_secs(60), pace).expect("closed");
    assert!(
        read > size,
        "only {read} bytes of a {size}-byte file arrived"
    );
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_slow_download_closes_total"),
        Some(0.0),
        "{text}"
    );
}
