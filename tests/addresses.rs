//! Limits per client address and per account, trusted proxies, and who may read `/metrics`.
//!
//! One test plays several clients in two ways: by binding its sockets to other loopback
//! addresses (all of 127.0.0.0/8 is loopback on Linux), and by speaking as a reverse proxy on
//! 127.0.0.1 that forwards for internet addresses (documentation ranges) in `X-Forwarded-For`.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::chat::{self, session, user, Client, DataDir};
use support::{read_to_close, set_timeouts, HttpResponse, Server, IO_TIMEOUT, METRICS_TOKEN};
use tungstenite::client::IntoClientRequest;
use tungstenite::WebSocket;

/// A TCP connection to the server from `source`, a loopback address.
fn connect_from(server: &Server, source: Ipv4Addr) -> TcpStream {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let std::net::SocketAddr::V4(dest) = server.addr else {
        panic!("the test server listens on IPv4");
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own, handed to std right after `socket`.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let src = sockaddr(source, 0);
        let rc = libc::bind(fd, &src as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
        let dst = sockaddr(*dest.ip(), dest.port());
        let rc = libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    };
    set_timeouts(&stream, IO_TIMEOUT);
    stream
}

/// Opens `/ws` over `stream` with extra request headers; the HTTP status when refused.
fn ws_over(
    server: &Server,
    stream: TcpStream,
    headers: &[(&'static str, &str)],
) -> Result<WebSocket<TcpStream>, u16> {
    let mut request = server.url("/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, value.parse().expect("header value"));
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        // A socket refused at accept may be reset before its answer is read.
        Err(_) => Err(0),
    }
}

/// A chat client that a proxy on 127.0.0.1 forwards for `client`.
fn forwarded_for(server: &Server, client: &str) -> Client {
    let ws = ws_over(server, server.connect(), &[("X-Forwarded-For", client)])
        .unwrap_or_else(|status| panic!("upgrade for {client} refused: {status}"));
    Client::over(ws)
}

/// A chat client connecting from `source`.
fn client_from(server: &Server, source: Ipv4Addr) -> Client {
    let ws = ws_over(server, connect_from(server, source), &[])
        .unwrap_or_else(|status| panic!("upgrade from {source} refused: {status}"));
    Client::over(ws)
}

fn login(name: &str, password: &str) -> serde_json::Value {
    json!({"type": "login", "user": name, "password": password})
}

/// Retries `attempt` until it succeeds or 5 s pass (the server notices a closed socket in its
/// own time).
fn eventually<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = attempt() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------------------
// Connections per address and per user
// ------------------------------------------------------------------------------------------------

#[test]
fn sockets_past_the_per_address_cap_get_429() {
    let server = Server::start(&[]);
    // The default cap, 64 sockets from 127.0.0.1 that never send a byte.
    let mut idle: Vec<TcpStream> = (0..64).map(|_| server.connect()).collect();
    let mut surplus = server.connect();
    let raw = read_to_close(&mut surplus).expect("an answer, then the close");
    let r = HttpResponse::parse(&raw).expect("an HTTP response");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        r.body_text().contains("too many connections"),
        "{}",
        r.text()
    );
    // Another address is not affected.
    let mut other = client_from(&server, Ipv4Addr::new(127, 0, 0, 2));
    other.err(json!({"type": "whoami"}), "unauthenticated");
    // One idle socket leaves: there is room again.
    drop(idle.pop());
    let _back = eventually(|| ws_over(&server, server.connect(), &[]).ok());
    // Counted (read from the other address: 127.0.0.1 is still full).
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let text = get_metrics_over(
        connect_from(&server, Ipv4Addr::new(127, 0, 0, 3)),
        &[("Authorization", bearer.as_str())],
    )
    .body_text();
    let refused = support::metric_value(&text, "chatd_connections_refused_per_address_total");
    assert!(refused.is_some_and(|n| n >= 1.0), "{text}");
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let server = Server::start(&[
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-address",
        "2",
    ]);
    // The proxy's own sockets count against no one, however many.
    let _proxy_idle: Vec<TcpStream> = (0..4).map(|_| server.connect()).collect();
    let _a = forwarded_for(&server, "198.51.100.7");
    // What the client wrote left of the proxy's entry changes nothing.
    let _b = forwarded_for(&server, "6.6.6.6, 198.51.100.7");
    let third = ws_over(
        &server,
        server.connect(),
        &[("X-Forwarded-For", "198.51.100.7")],
    );
    assert_eq!(third.err(), Some(429));
    // Other clients of the same proxy still get in, by either header.
    let _c = forwarded_for(&server, "198.51.100.8");
    let real_ip = ws_over(&server, server.connect(), &[("X-Real-IP", "198.51.100.9")]);
    assert!(real_ip.is_ok());
}

#[test]
fn a_user_past_the_per_user_cap_is_refused_at_auth() {
    let dir = DataDir::new("usercap");
    let server = chat::start(&dir, &[]);
    // The default cap: 32 connections of one user.
    let (_first, token) = user(&server, "ann");
    let mut more: Vec<Client> = (1..32).map(|_| session(&server, &token)).collect();
    let mut extra = Client::connect(&server);
    let refused = extra.err(json!({"type": "auth", "token": token}), "rate_limited");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{refused}"
    );
    extra.err(json!({"type": "whoami"}), "unauthenticated");
    extra.err(login("ann", "password-ann"), "rate_limited");
    // Another user is not affected.
    let (mut bob, _) = user(&server, "bob");
    bob.ok(json!({"type": "whoami"}));
    // One of ann's connections leaves: there is room again.
    drop(more.pop());
    eventually(|| {
        let reply = extra.request(json!({"type": "auth", "token": token}));
        (reply["type"] == "ok").then_some(())
    });
    let counted = server.wait_metric(
        "chatd_auth_refused_per_user_total",
        Duration::from_secs(5),
        |v| v >= 2.0,
    );
    assert!(counted >= 2.0);
}

// ------------------------------------------------------------------------------------------------
// Login limits
// ------------------------------------------------------------------------------------------------

#[test]
fn login_buckets_follow_the_address_a_trusted_proxy_forwards() {
    let dir = DataDir::new("proxylogin");
    let server = chat::start(
        &dir,
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--login-rate",
            "1",
            "--login-burst",
            "2",
        ],
    );
    let mut owner = forwarded_for(&server, "203.0.113.1");
    owner.ok(json!({"type": "register", "user": "pat", "password": "password1"}));
    let mut guesser = forwarded_for(&server, "198.51.100.1");
    guesser.err(login("pat", "wrong-pass"), "unauthenticated");
    guesser.err(login("pat", "wrong-pass"), "unauthenticated");
    guesser.err(login("pat", "password1"), "rate_limited");
    // Behind the same proxy, another client has a bucket of its own.
    let mut other = forwarded_for(&server, "198.51.100.2");
    other.ok(login("pat", "password1"));
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let dir = DataDir::new("untrusted");
    let server = chat::start(&dir, &["--login-rate", "1", "--login-burst", "2"]);
    // Each connection claims another address; all of them count as 127.0.0.1.
    let mut a = forwarded_for(&server, "198.51.100.1");
    a.ok(json!({"type": "register", "user": "pat", "password": "password1"}));
    let mut b = forwarded_for(&server, "198.51.100.2");
    b.err(login("pat", "wrong-pass"), "unauthenticated");
    let ws = ws_over(&server, server.connect(), &[("X-Real-IP", "198.51.100.3")]).unwrap();
    Client::over(ws).err(login("pat", "password1"), "rate_limited");
}

#[test]
fn failed_logins_per_account_stop_guessing_but_not_the_owner() {
    let dir = DataDir::new("guessing");
    // FAST keeps the per-address bucket out of the way; the account budgets are the defaults:
    // 20 failures per account, 5 per account and address, per 15 minutes.
    let server = chat::start(&dir, &[]);
    let mut owner = Client::connect(&server);
    owner.ok(json!({"type": "register", "user": "vic", "password": "right-password"}));
    let (mut wrong, mut limited) = (0, 0);
    for last in 2..=9 {
        let mut guesser = client_from(&server, Ipv4Addr::new(127, 0, 0, last));
        for _ in 0..5 {
            let reply = guesser.request(login("vic", "a-wrong-guess"));
            match reply["code"].as_str() {
                Some("unauthenticated") => wrong += 1,
                Some("rate_limited") => limited += 1,
                _ => panic!("from 127.0.0.{last}: {reply}"),
            }
        }
    }
    // Four addresses spend the account's 20; every later guess is refused.
    assert_eq!((wrong, limited), (20, 20));
    // A guesser cannot even tell the right password now...
    let mut guesser = client_from(&server, Ipv4Addr::new(127, 0, 0, 2));
    guesser.err(login("vic", "right-password"), "rate_limited");
    // ...while the owner gets in from an address that has not failed.
    let mut fresh = client_from(&server, Ipv4Addr::new(127, 0, 0, 10));
    fresh.ok(login("vic", "right-password"));
    owner.ok(login("vic", "right-password"));
    let text = server.metrics();
    let refused =
        support::metric_value(&text, "chatd_logins_rate_limited_total{limit=\"account\"}");
    assert_eq!(refused, Some(21.0), "{text}");
}

// ------------------------------------------------------------------------------------------------
// /metrics
// ------------------------------------------------------------------------------------------------

fn get_metrics(server: &Server, headers: &[(&str, &str)]) -> HttpResponse {
    get_metrics_over(server.connect(), headers)
}

fn get_metrics_over(mut s: TcpStream, headers: &[(&str, &str)]) -> HttpResponse {
    let mut head = String::from("GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    HttpResponse::parse(&read_to_close(&mut s).unwrap()).expect("an HTTP response")
}

#[test]
fn metrics_are_not_served_without_a_token() {
    let server = Server::start_without_metrics_token(&[]);
    assert_eq!(get_metrics(&server, &[]).status, 404);
    assert_eq!(server.request("HEAD", "/metrics").status, 404);
}

#[test]
fn metrics_need_the_bearer_token_from_anywhere() {
    let server = Server::start(&["--trusted-proxy", "127.0.0.1"]);
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let internet = ("X-Forwarded-For", "203.0.113.9");
    let anonymous = get_metrics(&server, &[internet]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.header("WWW-Authenticate"), Some("Bearer"));
    assert!(!anonymous.body_text().contains("chatd_"));
    let wrong = get_metrics(
        &server,
        &[internet, ("Authorization", "Bearer not-the-token")],
    );
    assert_eq!(wrong.status, 401);
    // Loopback is no exception: a proxy on the same host would make everyone loopback.
    assert_eq!(get_metrics(&server, &[]).status, 401);
    let ok = get_metrics(&server, &[internet, ("Authorization", bearer.as_str())]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.body_text().contains("chatd_connections_accepted_total"));
}
