//! The transport through the real binary: the HTTP handshake and plain routes, echo, the close
//! codes the server must send, the heartbeat, backpressure, the connection cap, graceful
//! shutdown and the single thread.
//!
//! Every test starts its own server on a free port of 127.0.0.1, and every socket has timeouts.

mod support;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

/// Sends `request` to a fresh server started with `args` and returns the response, read until
/// the server closed the connection.
fn answer(args: &[&str], request: &[u8]) -> HttpResponse {
    Server::start(args).http(request)
}

/// Every plain answer says `Connection: close` (the server has closed by the time `http`
/// returns; a 426 also names `Upgrade` there) and carries a body as long as its Content-Length.
fn assert_plain(r: &HttpResponse, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    let connection = r.header("Connection").unwrap_or_default();
    assert!(
        connection.split(',').any(|t| t.trim() == "close"),
        "{}",
        r.text()
    );
    let len: usize = r
        .header("Content-Length")
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(r.body.len(), len, "{}", r.text());
}

/// Opens `/echo` on a server with `--echo` and `args`, writes `bytes`, and checks that the
/// server answers with a close frame of `code` and then closes TCP.
fn violation_closes_with(args: &[&str], bytes: &[u8], code: u16) {
    let mut all = vec!["--echo"];
    all.extend_from_slice(args);
    let server = Server::start(&all);
    let mut s = server.raw_ws("/echo");
    s.write_all(bytes).unwrap();
    assert_eq!(read_close(&mut s), code);
    expect_eof(&mut s);
}

/// Reads from a tungstenite client until a data message arrives (pings are answered by
/// tungstenite on the next call).
fn next_data(ws: &mut tungstenite::WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("read a message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

fn echo_server() -> Server {
    Server::start(&["--echo"])
}

// ------------------------------------------------------------------------------------------------
// Handshake statuses
// ------------------------------------------------------------------------------------------------

#[test]
fn valid_upgrade_gets_101_with_rfc_accept_key() {
    let server = echo_server();
    let mut s = server.connect();
    s.write_all(&UpgradeRequest::new("/echo").to_bytes())
        .unwrap();
    let head = read_head(&mut s).unwrap();
    assert_eq!(head.status, 101, "{}", head.text());
    assert!(head.text().starts_with("HTTP/1.1 101 "), "{}", head.text());
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert!(head
        .header("Upgrade")
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(head
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    // The connection is a WebSocket now: a frame is echoed.
    s.write_all(&masked(OP_TEXT, b"after 101")).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"after 101"[..])
    );
}

#[test]
fn wrong_version_gets_426_naming_version_13() {
    let server = echo_server();
    let r = server.http(
        &UpgradeRequest::new("/echo")
            .set("Sec-WebSocket-Version", "8")
            .to_bytes(),
    );
    assert_plain(&r, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_handshake_failures_total{status=\"426\"}"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn repeated_key_version_or_host_gets_400() {
    let server = echo_server();
    let cases = [
        ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
        ("Sec-WebSocket-Key", SAMPLE_KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Host", "elsewhere.example"),
    ];
    for (name, value) in cases {
        let r = server.http(&UpgradeRequest::new("/echo").add(name, value).to_bytes());
        assert_plain(&r, 400);
        assert!(
            r.body_text().contains(&format!("{name} must appear once")),
            "{}",
            r.text()
        );
    }
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_handshake_failures_total{status=\"400\"}"),
        Some(4.0),
        "{text}"
    );
}

#[test]
fn plain_get_on_websocket_paths_gets_426_naming_websocket() {
    let server = echo_server();
    for path in ["/ws", "/echo", "/broadcast"] {
        let r = server.request("GET", path);
        assert_plain(&r, 426);
        assert_eq!(r.header("Upgrade"), Some("websocket"), "{}", r.text());
        let connection = r.header("Connection").unwrap().to_ascii_lowercase();
        assert!(connection.contains("upgrade"), "{}", r.text());
        assert!(r.body_text().contains("WebSocket endpoint"), "{}", r.text());
        let head = server.request("HEAD", path);
        assert_eq!(head.status, 426, "{}", head.text());
        assert!(head.body.is_empty());
    }
    // Without --echo only /ws is a WebSocket path.
    let chat_only = Server::start(&[]);
    assert_eq!(chat_only.request("GET", "/ws").status, 426);
    assert_plain(&chat_only.request("GET", "/echo"), 404);
}

#[test]
fn missing_key_gets_400() {
    let r = answer(
        &["--echo"],
        &UpgradeRequest::new("/echo")
            .without("Sec-WebSocket-Key")
            .to_bytes(),
    );
    assert_plain(&r, 400);
}

#[test]
fn bad_keys_get_400() {
    let server = echo_server();
    // Not base64; base64 of 5 bytes; base64 of 17 bytes.
    for key in [
        "not base64!",
        "c2hvcnQ=",
        "AAAAAAAAAAAAAAAAAAAAAAA=",
        "dGhlIHNhbXBsZSBub25jZQ==x",
    ] {
        let r = server.http(
            &UpgradeRequest::new("/echo")
                .set("Sec-WebSocket-Key", key)
                .to_bytes(),
        );
        assert_plain(&r, 400);
        assert!(r.header("Sec-WebSocket-Accept").is_none(), "key {key:?}");
    }
}

#[test]
fn missing_host_gets_400() {
    let r = answer(
        &["--echo"],
        &UpgradeRequest::new("/echo").without("Host").to_bytes(),
    );
    assert_plain(&r, 400);
    assert!(r.body_text().contains("Host"), "{}", r.text());
}

#[test]
fn missing_connection_upgrade_gets_400() {
    let server = echo_server();
    let without = server.http(
        &UpgradeRequest::new("/echo")
            .without("Connection")
            .to_bytes(),
    );
    assert_plain(&without, 400);
    let keep_alive = server.http(
        &UpgradeRequest::new("/echo")
            .set("Connection", "keep-alive")
            .to_bytes(),
    );
    assert_plain(&keep_alive, 400);
}

#[test]
fn post_upgrade_gets_405() {
    let r = answer(
        &["--echo"],
        &UpgradeRequest::new("/echo").method("POST").to_bytes(),
    );
    assert_plain(&r, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
}

#[test]
fn upgrade_on_unknown_path_gets_404() {
    let r = answer(&["--echo"], &UpgradeRequest::new("/nope").to_bytes());
    assert_plain(&r, 404);
}

#[test]
fn echo_path_without_echo_flag_gets_404() {
    let r = answer(&[], &UpgradeRequest::new("/echo").to_bytes());
    assert_plain(&r, 404);
}

#[test]
fn origin_allow_list_refuses_others_with_403() {
    let server = Server::start(&["--echo", "--allowed-origin", "https://ok.example"]);
    let bad = server.http(
        &UpgradeRequest::new("/echo")
            .set("Origin", "https://evil.example")
            .to_bytes(),
    );
    assert_plain(&bad, 403);

    let mut s = server.connect();
    s.write_all(
        &UpgradeRequest::new("/echo")
            .set("Origin", "https://ok.example")
            .to_bytes(),
    )
    .unwrap();
    let head = read_head(&mut s).unwrap();
    assert_eq!(head.status, 101, "{}", head.text());
    assert_eq!(head.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
}

#[test]
fn too_many_headers_get_431() {
    let server = echo_server();
    let mut req = UpgradeRequest::new("/echo");
    for i in 0..70 {
        req = req.add(&format!("X-Extra-{i}"), "y");
    }
    let bytes = req.to_bytes();
    assert!(bytes.len() < 8192, "stays under the size limit");
    assert_plain(&server.http(&bytes), 431);

    // The limit is the flag: 5 + 5 headers pass with --max-headers 10, fail with 9.
    let mut ten = UpgradeRequest::new("/echo");
    for i in 0..5 {
        ten = ten.add(&format!("X-{i}"), "y");
    }
    let strict = Server::start(&["--echo", "--max-headers", "9"]);
    assert_plain(&strict.http(&ten.to_bytes()), 431);
    let loose = Server::start(&["--echo", "--max-headers", "10"]);
    let mut s = loose.connect();
    s.write_all(&ten.to_bytes()).unwrap();
    assert_eq!(read_head(&mut s).unwrap().status, 101);
}

#[test]
fn oversize_request_gets_431() {
    let server = echo_server();
    let big = UpgradeRequest::new("/echo")
        .add("X-Padding", &"a".repeat(10_000))
        .to_bytes();
    assert_plain(&server.http(&big), 431);

    let small = Server::start(&["--echo", "--max-request-size", "256"]);
    let r = small.http(
        &UpgradeRequest::new("/echo")
            .add("X-Padding", &"a".repeat(200))
            .to_bytes(),
    );
    assert_plain(&r, 431);
}

#[test]
fn garbage_gets_400() {
    // A TLS ClientHello start, then line ends.
    let r = answer(
        &["--echo"],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    );
    assert_plain(&r, 400);
}

#[test]
fn handshake_timeout_closes_a_silent_connection() {
    let server = Server::start(&["--handshake-timeout", "300ms"]);
    let mut s = server.connect();
    let start = Instant::now();
    // Nothing at all is sent: the server closes without a word.
    let bytes = read_to_close(&mut s).expect("server closes the silent connection");
    let waited = start.elapsed();
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
    assert!(
        waited >= Duration::from_millis(200),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
}

#[test]
fn handshake_timeout_after_partial_head_gets_408() {
    let server = Server::start(&["--echo", "--handshake-timeout", "300ms"]);
    let mut s = server.connect();
    let start = Instant::now();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .unwrap();
    let raw = read_to_close(&mut s).unwrap();
    let waited = start.elapsed();
    let r = HttpResponse::parse(&raw).expect("an HTTP response");
    assert_plain(&r, 408);
    assert!(
        waited >= Duration::from_millis(200),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
}

#[test]
fn healthz_is_200_ok() {
    let r = Server::start(&[]).request("GET", "/healthz");
    assert_plain(&r, 200);
    assert_eq!(r.body_text().trim_end(), "ok");
}

#[test]
fn unknown_plain_path_is_404() {
    let r = Server::start(&[]).request("GET", "/nope");
    assert_plain(&r, 404);
}

#[test]
fn metrics_is_prometheus_text() {
    let server = Server::start(&[]);
    let _ = server.request("GET", "/healthz");
    let r = server.metrics_response();
    assert_plain(&r, 200);
    assert!(r
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let text = r.body_text();
    assert!(
        text.contains("# TYPE chatd_connections_accepted_total counter"),
        "{text}"
    );
    // The /healthz connection and this one.
    assert!(
        metric_value(&text, "chatd_connections_accepted_total").is_some_and(|v| v >= 2.0),
        "{text}"
    );
}

#[test]
fn head_healthz_has_no_body() {
    let server = Server::start(&[]);
    let r = server.request("HEAD", "/healthz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.header("Content-Length"), Some("3"));
    assert!(r.body.is_empty(), "HEAD got a body: {}", r.text());
    assert!(r.raw.ends_with(b"\r\n\r\n"));
}

// ------------------------------------------------------------------------------------------------
// Echo
// ------------------------------------------------------------------------------------------------

#[test]
fn echo_text() {
    let server = echo_server();
    let mut ws = server.ws("/echo");
    ws.send(Message::text("héllo, wörld ✓")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("héllo, wörld ✓"));
}

#[test]
fn echo_binary() {
    let server = echo_server();
    let mut ws = server.ws("/echo");
    let data: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(data.clone())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(data));
}

#[test]
fn echo_empty_messages() {
    let server = echo_server();
    let mut ws = server.ws("/echo");
    ws.send(Message::text("")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text(""));
    ws.send(Message::binary(Vec::new())).unwrap();
    assert_eq!(next_data(&mut ws), Message::Binary(Vec::new()));
}

#[test]
fn echo_large_message_below_the_limit() {
    let server = echo_server();
    let mut ws = server.ws("/echo");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(data.clone())).unwrap();
    match next_data(&mut ws) {
        Message::Binary(back) => {
            assert_eq!(back.len(), data.len());
            assert!(back == data, "payload changed in the echo");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[test]
fn a_sixteen_mib_message_is_echoed_with_only_the_message_size_raised() {
    // As Autobahn 9.1.6 and 9.2.6 are run: the queue cap follows the message size, with room
    // for the echo's frame header.
    let server = Server::start(&["--echo", "--max-message-size", "16777216"]);
    let mut s = server.raw_ws("/echo");
    set_timeouts(&s, Duration::from_secs(20));
    let payload: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    s.write_all(&masked(OP_BINARY, &payload)).unwrap();
    let back = read_frame(&mut s).unwrap();
    assert_eq!(
        back.opcode,
        OP_BINARY,
        "expected the echo, got opcode {} ({})",
        back.opcode,
        back.close_reason()
    );
    assert!(back.payload == payload, "payload changed in the echo");
    let text = server.metrics();
    assert_eq!(
        metric_value(&text, "chatd_backpressure_closes_total"),
        Some(0.0)
    );
}

#[test]
fn a_queue_cap_without_room_for_the_frame_header_is_refused_at_start() {
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("chatd-refused-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatd"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHATD_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .args(["--max-message-size", "16777216"])
        .args(["--max-queued-bytes", "16777216"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("chatd started with a queue cap that cannot hold the largest echo");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--max-queued-bytes"), "{stderr}");
    assert!(stderr.contains("16777226"), "{stderr}");
}

#[test]
fn fragmented_text_with_ping_between_comes_back_whole() {
    let server = echo_server();
    let mut s = server.raw_ws("/echo");
    let pieces = [
        fragment(OP_TEXT, false, "Hél".as_bytes()),
        masked(OP_PING, b"between"),
        fragment(OP_CONT, false, "lo, ".as_bytes()),
        fragment(OP_CONT, true, "wörld".as_bytes()),
    ];
    for piece in &pieces {
        s.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let pong = read_frame(&mut s).unwrap();
    assert_eq!(pong.opcode, OP_PONG, "{pong:?}");
    assert_eq!(pong.payload, b"between");
    let msg = read_frame(&mut s).unwrap();
    assert_eq!(msg.opcode, OP_TEXT, "{msg:?}");
    assert!(msg.fin && !msg.masked && msg.rsv == 0, "{msg:?}");
    assert_eq!(String::from_utf8(msg.payload).unwrap(), "Héllo, wörld");
}

/// Many small messages written in one TCP segment come back in order: the replies of one
/// iteration leave as one buffer, which must not reorder or drop any of them.
#[test]
fn a_pipelined_burst_of_small_messages_comes_back_in_order() {
    let server = echo_server();
    let mut s = server.raw_ws("/echo");
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(masked(OP_TEXT, format!("message {i}").as_bytes()));
    }
    // A large one in the middle of the stream, beyond the size that is copied together.
    let big: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    burst.extend(masked(OP_BINARY, &big));
    for i in 300..400u32 {
        burst.extend(masked(OP_TEXT, format!("message {i}").as_bytes()));
    }
    s.write_all(&burst).unwrap();
    for i in 0..400u32 {
        if i == 300 {
            let f = read_frame(&mut s).unwrap();
            assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, big.len()));
            assert!(f.payload == big, "large payload changed");
        }
        let f = read_frame(&mut s).unwrap();
        assert_eq!(f.opcode, OP_TEXT, "{f:?}");
        assert_eq!(
            String::from_utf8(f.payload).unwrap(),
            format!("message {i}")
        );
    }
}

/// `/broadcast` of `--echo`: what one member sends reaches every other member, in order, and
/// not the sender; a burst sent in one segment arrives whole, each frame intact.
#[test]
fn broadcast_reaches_every_other_member_in_order() {
    let server = echo_server();
    let mut members: Vec<TcpStream> = (0..3).map(|_| server.raw_ws("/broadcast")).collect();
    // Every member is registered once its handshake is answered; a first message proves the
    // route works before the burst.
    members[0].write_all(&masked(OP_TEXT, b"hello")).unwrap();
    for m in &mut members[1..] {
        let f = read_frame(m).unwrap();
        assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"hello"[..]));
    }
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50u32 {
        let text = format!("burst {i}");
        burst.extend(masked(OP_TEXT, text.as_bytes()));
        expected.push((OP_TEXT, text.into_bytes()));
    }
    let big: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8).collect();
    burst.extend(masked(OP_BINARY, &big));
    expected.push((OP_BINARY, big));
    members[1].write_all(&burst).unwrap();
    for m in [0, 2] {
        for (opcode, payload) in &expected {
            let f = read_frame(&mut members[m]).unwrap();
            assert!(f.fin && !f.masked && f.rsv == 0, "{f:?}");
            assert_eq!((f.opcode, &f.payload), (*opcode, payload), "member {m}");
        }
    }
    // The sender got none of it: the next thing it reads is a message from someone else.
    members[2].write_all(&masked(OP_TEXT, b"from two")).unwrap();
    let f = read_frame(&mut members[1]).unwrap();
    assert_eq!(f.payload, b"from two");
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let server = echo_server();
    let mut ws = server.ws("/echo");
    ws.send(Message::Ping(b"are you there?".to_vec())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(p, b"are you there?");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    // Also over raw TCP, with the longest legal payload.
    let mut s = server.raw_ws("/echo");
    let payload: Vec<u8> = (0..125u8).collect();
    s.write_all(&masked(OP_PING, &payload)).unwrap();
    let pong = read_frame(&mut s).unwrap();
    assert_eq!((pong.opcode, pong.payload), (OP_PONG, payload));
}

// ------------------------------------------------------------------------------------------------
// Close codes the server sends
// ------------------------------------------------------------------------------------------------

#[test]
fn unmasked_frame_closes_1002() {
    let frame = FrameBuilder::new(OP_TEXT, b"hi").mask(None).build();
    violation_closes_with(&[], &frame, 1002);
}

#[test]
fn rsv_bits_close_1002() {
    for rsv in [0b100, 0b010, 0b001] {
        let frame = FrameBuilder::new(OP_TEXT, b"hi").rsv(rsv).build();
        violation_closes_with(&[], &frame, 1002);
    }
}

#[test]
fn reserved_opcodes_close_1002() {
    for op in [0x3, 0xB] {
        violation_closes_with(&[], &masked(op, b"x"), 1002);
    }
}

#[test]
fn fragmented_ping_closes_1002() {
    violation_closes_with(&[], &fragment(OP_PING, false, b"x"), 1002);
}

#[test]
fn ping_payload_of_126_closes_1002() {
    let frame = masked(OP_PING, &[b'p'; 126]);
    assert_eq!(frame[1] & 0x7f, 126, "16-bit length form");
    violation_closes_with(&[], &frame, 1002);
}

#[test]
fn continuation_without_start_closes_1002() {
    violation_closes_with(&[], &masked(OP_CONT, b"orphan"), 1002);
}

#[test]
fn sixty_four_bit_length_with_top_bit_closes_1002() {
    let frame = FrameBuilder::new(OP_BINARY, b"")
        .length(Length::Ext64(1 << 63))
        .header_only()
        .build();
    violation_closes_with(&[], &frame, 1002);
}

#[test]
fn frame_over_max_frame_size_closes_1009_from_its_header() {
    let server = Server::start(&["--echo", "--max-frame-size", "100"]);
    let mut s = server.raw_ws("/echo");
    // At the limit: echoed.
    s.write_all(&masked(OP_BINARY, &[7; 100])).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 100));
    // One over, and only the header is sent: the answer cannot wait for the payload.
    let header = FrameBuilder::new(OP_BINARY, &[0; 101])
        .header_only()
        .build();
    assert_eq!(header.len(), 6);
    s.write_all(&header).unwrap();
    assert_eq!(read_close(&mut s), 1009);
    expect_eof(&mut s);
}

#[test]
fn message_over_max_message_size_across_fragments_closes_1009() {
    let server = Server::start(&["--echo", "--max-message-size", "1000"]);
    let mut s = server.raw_ws("/echo");
    // Exactly the limit in two fragments: echoed as one message.
    s.write_all(&fragment(OP_BINARY, false, &[1; 500])).unwrap();
    s.write_all(&fragment(OP_CONT, true, &[2; 500])).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.opcode, f.payload.len()), (OP_BINARY, 1000));
    // 600 + 600: each frame is under the limit, the message is not. The second is announced
    // by its header only.
    s.write_all(&fragment(OP_BINARY, false, &[1; 600])).unwrap();
    let second = FrameBuilder::new(OP_CONT, &[2; 600]).header_only().build();
    s.write_all(&second).unwrap();
    assert_eq!(read_close(&mut s), 1009);
    expect_eof(&mut s);
}

#[test]
fn invalid_utf8_text_closes_1007() {
    let server = echo_server();
    // Overlong '/', a surrogate, above U+10FFFF, a stray continuation byte, truncated at the end.
    let cases: [&[u8]; 5] = [
        &[b'a', 0xc0, 0xaf],
        &[0xed, 0xa0, 0x80],
        &[0xf4, 0x90, 0x80, 0x80],
        &[b'o', b'k', 0x80],
        &[b'a', 0xe2, 0x82],
    ];
    for bytes in cases {
        let mut s = server.raw_ws("/echo");
        s.write_all(&masked(OP_TEXT, bytes)).unwrap();
        assert_eq!(read_close(&mut s), 1007, "payload {bytes:?}");
        expect_eof(&mut s);
    }
    // Split inside a code point across fragments is fine; a bad continuation is not.
    let mut s = server.raw_ws("/echo");
    s.write_all(&fragment(OP_TEXT, false, &[b'x', 0xe2, 0x82]))
        .unwrap();
    s.write_all(&fragment(OP_CONT, true, &[0xac])).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!(String::from_utf8(f.payload).unwrap(), "x€");
    s.write_all(&fragment(OP_TEXT, false, &[0xe2, 0x82]))
        .unwrap();
    s.write_all(&fragment(OP_CONT, true, b"A")).unwrap();
    assert_eq!(read_close(&mut s), 1007);
}

#[test]
fn invalid_utf8_close_reason_closes_1007() {
    let body = close_body(1000, &[0xce, 0xba, 0xe1, 0xbd]);
    violation_closes_with(&[], &masked(OP_CLOSE, &body), 1007);
}

#[test]
fn invalid_close_codes_close_1002() {
    let server = echo_server();
    for code in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
        let mut s = server.raw_ws("/echo");
        s.write_all(&masked(OP_CLOSE, &close_body(code, b"")))
            .unwrap();
        assert_eq!(read_close(&mut s), 1002, "peer sent code {code}");
        expect_eof(&mut s);
    }
}

#[test]
fn one_byte_close_payload_closes_1002() {
    violation_closes_with(&[], &masked(OP_CLOSE, &[0x03]), 1002);
}

#[test]
fn client_close_1000_is_answered_then_tcp_closes() {
    let server = echo_server();
    let mut s = server.raw_ws("/echo");
    s.write_all(&masked(OP_CLOSE, &close_body(1000, b"bye")))
        .unwrap();
    assert_eq!(read_close(&mut s), 1000);
    expect_eof(&mut s);
    drop(s);
    let closed = server.wait_metric(
        "chatd_connections_closed_total{reason=\"normal\"}",
        Duration::from_secs(3),
        |v| v >= 1.0,
    );
    assert_eq!(closed, 1.0);

    // An empty close body is answered with an empty one.
    let mut s = server.raw_ws("/echo");
    s.write_all(&masked(OP_CLOSE, b"")).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.opcode, f.payload.len()), (OP_CLOSE, 0), "{f:?}");
    expect_eof(&mut s);
}

#[test]
fn message_before_a_violation_is_echoed_before_the_close() {
    let server = echo_server();
    let mut s = server.raw_ws("/echo");
    let mut bytes = masked(OP_TEXT, b"first");
    bytes.extend(masked(OP_BINARY, b"second"));
    bytes.extend(FrameBuilder::new(OP_TEXT, b"bad").mask(None).build());
    bytes.extend(masked(OP_TEXT, b"never"));
    s.write_all(&bytes).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"first"[..]));
    let f = read_frame(&mut s).unwrap();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_BINARY, &b"second"[..])
    );
    assert_eq!(read_close(&mut s), 1002);
    expect_eof(&mut s);
}

// ------------------------------------------------------------------------------------------------
// Heartbeat
// ------------------------------------------------------------------------------------------------

#[test]
fn silent_client_is_pinged_then_closed_1001() {
    let server = Server::start(&[
        "--echo",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "600ms",
    ]);
    let mut s = server.raw_ws("/echo");
    let start = Instant::now();
    let ping = read_frame(&mut s).unwrap();
    let at_ping = start.elapsed();
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert!(!ping.masked);
    assert!(
        at_ping >= Duration::from_millis(100),
        "pinged after {at_ping:?}"
    );
    // Say nothing (not even a pong): the idle timeout closes with 1001.
    assert_eq!(read_close(&mut s), 1001);
    let at_close = start.elapsed();
    assert!(
        at_close >= Duration::from_millis(400),
        "closed after {at_close:?}"
    );
    assert!(
        at_close < Duration::from_secs(3),
        "closed after {at_close:?}"
    );
    // Answering the close completes the handshake and the server closes TCP.
    s.write_all(&masked(OP_CLOSE, &close_body(1001, b"")))
        .unwrap();
    expect_eof(&mut s);
    drop(s);
    let idle = server.wait_metric(
        "chatd_connections_closed_total{reason=\"idle_timeout\"}",
        Duration::from_secs(3),
        |v| v >= 1.0,
    );
    assert_eq!(idle, 1.0);
    let text = server.metrics();
    assert!(
        metric_value(&text, "chatd_pings_sent_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
}

#[test]
fn client_answering_pings_stays_connected() {
    let server = Server::start(&[
        "--echo",
        "--ping-interval",
        "200ms",
        "--idle-timeout",
        "600ms",
    ]);
    let mut ws = server.ws("/echo");
    let start = Instant::now();
    let mut pings = 0;
    // Four idle timeouts; tungstenite answers each ping on the next read.
    while start.elapsed() < Duration::from_millis(2400) {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            other => panic!("expected only pings while idle, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in {:?}", start.elapsed());
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still here"));
    let text = server.metrics();
    assert_eq!(
        metric_value(
            &text,
            "chatd_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        Some(0.0),
        "{text}"
    );
}

// ------------------------------------------------------------------------------------------------
// Backpressure
// ------------------------------------------------------------------------------------------------

#[test]
fn client_that_never_reads_is_disconnected_by_backpressure() {
    let server = Server::start(&[
        "--echo",
        "--max-message-size",
        "65536",
        "--max-queued-bytes",
        "200000",
        "--close-timeout",
        "500ms",
    ]);
    let mut s = server.raw_ws("/echo");
    set_timeouts(&s, Duration::from_secs(3));
    let frame = masked(OP_BINARY, &vec![0x5a; 65536]);
    let start = Instant::now();
    let mut sent = 0usize;
    let error = loop {
        if sent >= 200 << 20 || start.elapsed() >= Duration::from_secs(10) {
            break None;
        }
        match s.write_all(&frame) {
            Ok(()) => sent += frame.len(),
            Err(e) => break Some(e),
        }
    };
    let error = error.unwrap_or_else(|| {
        panic!(
            "still connected after {sent} bytes in {:?}",
            start.elapsed()
        )
    });
    assert!(
        matches!(
            error.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
        "write failed with {error} ({:?}) after {sent} bytes",
        error.kind()
    );
    drop(s);

    let text = server.metrics();
    assert!(
        metric_value(&text, "chatd_backpressure_closes_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    // The server is fine: a new client is echoed.
    let mut ws = server.ws("/echo");
    ws.send(Message::text("after the flood")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("after the flood"));
}

// ------------------------------------------------------------------------------------------------
// Connection cap
// ------------------------------------------------------------------------------------------------

#[test]
fn connections_over_the_cap_get_503() {
    let server = Server::start(&["--echo", "--max-connections", "2"]);
    let mut a = server.ws("/echo");
    let mut b = server.ws("/echo");
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("in")).unwrap();
        assert_eq!(next_data(ws), Message::text("in"));
    }
    // The third connection is refused without sending anything.
    let mut third = server.connect();
    let raw = read_to_close(&mut third).unwrap();
    let r = HttpResponse::parse(&raw)
        .unwrap_or_else(|| panic!("not HTTP: {:?}", String::from_utf8_lossy(&raw)));
    assert_plain(&r, 503);
    // The two open ones still work.
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("still")).unwrap();
        assert_eq!(next_data(ws), Message::text("still"));
    }
    // Once one leaves, its slot is free again.
    a.close(None).unwrap();
    loop {
        match a.read() {
            Ok(_) => continue,
            Err(WsError::ConnectionClosed) => break,
            Err(e) => panic!("closing: {e}"),
        }
    }
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut c = loop {
        match tungstenite::client(server.url("/echo"), server.connect()) {
            Ok((ws, _)) => break ws,
            // Refused (503) until the server has reaped the closed connection.
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("slot not freed: {e}"),
        }
    };
    c.send(Message::text("third")).unwrap();
    assert_eq!(next_data(&mut c), Message::text("third"));
}

// ------------------------------------------------------------------------------------------------
// Graceful shutdown
// ------------------------------------------------------------------------------------------------

#[test]
fn sigterm_closes_websockets_1001_and_exits_0() {
    let drain = Duration::from_secs(3);
    let mut server = Server::start(&["--echo", "--drain-timeout", "3s"]);
    let mut clients = [server.ws("/echo"), server.ws("/echo")];
    for ws in clients.iter_mut() {
        ws.send(Message::text("hi")).unwrap();
        assert_eq!(next_data(ws), Message::text("hi"));
    }
    let signalled = Instant::now();
    server.signal("TERM");
    for ws in clients.iter_mut() {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
                assert_eq!(u16::from(frame.code), 1001);
            }
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    // The listener is gone while the server drains.
    let refused = TcpStream::connect_timeout(&server.addr, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "connect while draining: {refused:?}"
    );
    // Finish the close handshakes (tungstenite sends its reply, then sees the server's FIN).
    for mut ws in clients {
        match ws.read() {
            Err(WsError::ConnectionClosed) => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }
    let status = server
        .wait_exit(drain + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    assert!(
        took < drain,
        "exited after {took:?}, drain timeout {drain:?}"
    );
    let refused = TcpStream::connect_timeout(&server.addr, Duration::from_secs(1));
    assert!(
        matches!(&refused, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "connect after exit: {refused:?}"
    );
    thread::sleep(Duration::from_millis(50));
    assert!(
        server.log().contains("shutdown complete"),
        "{}",
        server.log()
    );
}

// ------------------------------------------------------------------------------------------------
// One thread
// ------------------------------------------------------------------------------------------------

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/<pid>/task")
        .map(|e| {
            let comm = e.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_connection_is_served_by_one_thread() {
    let server = echo_server();
    let mut clients: Vec<_> = (0..4).map(|_| server.ws("/echo")).collect();
    for ws in clients.iter_mut() {
        ws.send(Message::text("x")).unwrap();
        assert_eq!(next_data(ws), Message::text("x"));
    }
    // Plus one connection still in its handshake.
    let mut half = server.connect();
    half.write_all(b"GET /echo HTTP/1.1\r\n").unwrap();
    let text = server.metrics();
    assert!(
        metric_value(&text, "chatd_websockets_open").is_some_and(|v| v >= 4.0),
        "{text}"
    );
    // The loop and the store writer, which never touches a socket; the password worker starts
    // with the first password.
    // A new thread names itself once it first runs, so on a busy machine it may briefly carry
    // the process's name: look again for a moment before concluding.
    let want = ["chatd", "chatd-store"];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut names = thread_names(server.pid());
    while names != want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        names = thread_names(server.pid());
    }
    assert_eq!(names, want);
}

// ------------------------------------------------------------------------------------------------
// Beyond the list: the backpressure close frame and the drain timeout
// ------------------------------------------------------------------------------------------------

#[test]
fn backpressure_close_frame_follows_whole_frames() {
    let server = Server::start(&[
        "--echo",
        "--max-message-size",
        "65536",
        "--max-queued-bytes",
        "200000",
    ]);
    let mut s = server.raw_ws("/echo");
    let payload = vec![0x5a; 60_000];
    let frame = masked(OP_BINARY, &payload);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writer = s.try_clone().unwrap();
    let flag = stop.clone();
    let flood = thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0usize;
        while !flag.load(std::sync::atomic::Ordering::SeqCst)
            && sent < 200 << 20
            && start.elapsed() < Duration::from_secs(10)
        {
            writer
                .write_all(&frame)
                .expect("server keeps reading while closing");
            sent += frame.len();
        }
        sent
    });
    let n = server.wait_metric(
        "chatd_backpressure_closes_total",
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = flood.join().unwrap();
    assert_eq!(n, 1.0, "no backpressure close after {sent} bytes");
    // Everything before the close frame is a whole echo; then 1008.
    let mut echoes = 0;
    let close = loop {
        let f = read_frame(&mut s).unwrap();
        if f.opcode == OP_CLOSE {
            break f;
        }
        assert_eq!(f.opcode, OP_BINARY, "frame {echoes}: {f:?}");
        assert!(f.payload == payload, "frame {echoes} changed");
        echoes += 1;
    };
    assert_eq!(close.close_code(), Some(1008), "{close:?}");
    assert_eq!(close.close_reason(), "backpressure");
    s.write_all(&masked(OP_CLOSE, &close_body(1008, b"")))
        .unwrap();
    // The server may still be reading echo requests we sent; then it closes.
    expect_eof(&mut s);
    drop(s);
    let closed = server.wait_metric(
        "chatd_connections_closed_total{reason=\"backpressure\"}",
        Duration::from_secs(3),
        |v| v >= 1.0,
    );
    assert_eq!(closed, 1.0);
}

#[test]
fn drain_timeout_ends_shutdown_when_a_client_never_answers() {
    let mut server = Server::start(&["--echo", "--drain-timeout", "500ms"]);
    let mut silent = server.raw_ws("/echo");
    let mut half = server.connect();
    half.write_all(b"GET /echo HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    server.signal("TERM");
    assert_eq!(read_close(&mut silent), 1001);
    // The connection still in its handshake is simply closed.
    assert!(read_to_close(&mut half).unwrap().is_empty());
    let status = server
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("still running; log:\n{}", server.log()));
    let took = start.elapsed();
    assert!(status.success(), "{status}");
    assert!(took >= Duration::from_millis(400), "exited after {took:?}");
    expect_eof(&mut silent);
    thread::sleep(Duration::from_millis(50));
    assert!(server.log().contains("drain timeout"), "{}", server.log());
}

// ------------------------------------------------------------------------------------------------
// Found as bugs by these tests, fixed since
// ------------------------------------------------------------------------------------------------

#[test]
fn request_then_half_close_still_gets_the_response() {
    let server = Server::start(&[]);
    for (request, status) in [
        (&b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..], 200),
        (&b"\x16\x03\x01\x02\x00\r\n\r\n"[..], 400),
    ] {
        let mut s = server.connect();
        // Let the server accept first, so that the request and the FIN arrive in one read.
        thread::sleep(Duration::from_millis(50));
        s.write_all(request).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let raw = read_to_close(&mut s).unwrap();
        let r = HttpResponse::parse(&raw).unwrap_or_else(|| {
            panic!(
                "no response to {:?} after a half-close: got {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(&raw)
            )
        });
        assert_plain(&r, status);
    }
}

/// A read that does not fill the buffer ends reading until the next event. The peer's FIN must
/// still be seen, whether it comes with the last data or after the server has read it.
#[test]
fn a_peer_that_hangs_up_after_sending_is_noticed() {
    let server = echo_server();
    let mut sockets = Vec::new();
    for later in [false, true] {
        for _ in 0..3 {
            let mut s = server.raw_ws("/echo");
            s.write_all(&masked(OP_TEXT, b"last words")).unwrap();
            if later {
                // The server reads the message alone, then the FIN arrives on its own.
                let f = read_frame(&mut s).unwrap();
                assert_eq!(f.payload, b"last words");
                thread::sleep(Duration::from_millis(30));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            sockets.push((s, later));
        }
    }
    // Only the /metrics request itself stays open.
    let open = server.wait_metric("chatd_websockets_open", Duration::from_secs(5), |v| {
        v == 0.0
    });
    assert_eq!(open, 0.0, "the server missed a hangup");
    // The echo of a message that arrived with the FIN may or may not have gone out before the
    // server saw the FIN; nothing else may.
    let echo = [&[0x81, 10][..], b"last words"].concat();
    for (s, later) in &mut sockets {
        let rest = read_to_close(s).unwrap();
        assert!(
            rest.is_empty() || (!*later && rest == echo),
            "unexpected bytes before the close: {rest:?}"
        );
    }
}

#[test]
fn plain_get_with_h2c_upgrade_offer_is_served() {
    let server = Server::start(&[]);
    // What `curl --http2 http://127.0.0.1:PORT/healthz` sends; RFC 9110 7.8: a server may
    // ignore Upgrade and answer over HTTP/1.1.
    let r = server.http(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_plain(&r, 200);
    assert_eq!(r.body_text().trim_end(), "ok");
}
