//! Downloads without the session token in the URL: `file.link` gives a short-lived link signed
//! for one file and one user; a token in the query string is refused unless the operator
//! allows it for old clients.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::chat::{self, user, Client, DataDir};
use support::{metric_value, HttpResponse, Server};

/// Uploads `data` to `to`; returns the file id once stored.
fn upload(c: &mut Client, to: &str, name: &str, data: &[u8]) -> String {
    let ok = c.ok(json!({"type": "file.upload", "to": to, "name": name, "size": data.len()}));
    let file_id = ok["file_id"].as_str().unwrap().to_string();
    c.send_binary(data);
    assert_eq!(c.event("file.done")["file_id"], file_id.as_str());
    file_id
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    server.http(req.as_bytes())
}

/// `file.link` for `file_id`: the reply.
fn link(c: &mut Client, file_id: &str) -> Value {
    c.ok(json!({"type": "file.link", "file_id": file_id}))
}

fn url(reply: &Value) -> String {
    reply["url"].as_str().unwrap().to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `url` with the value of one query parameter replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (path, query) = url.split_once('?').unwrap();
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((n, _)) if n == name => format!("{n}={value}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn param<'a>(url: &'a str, name: &str) -> &'a str {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .unwrap()
}

/// alice and bob in group `g`, alice's file posted there; returns (server, alice, bob,
/// alice's token, bob's token, file id).
fn shared_file(dir: &DataDir, args: &[&str]) -> (Server, Client, Client, String, String, String) {
    let server = chat::start(dir, args);
    let (mut a, a_token) = user(&server, "alice");
    let (mut b, b_token) = user(&server, "bob");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    let file = upload(&mut a, "#g", "g.txt", b"group bytes");
    (server, a, b, a_token, b_token, file)
}

#[test]
fn a_signed_link_downloads_its_file_without_any_token() {
    let dir = DataDir::new("link-ok");
    let (server, _a, mut b, _, b_token, file) = shared_file(&dir, &[]);
    let before = now_ms();
    let reply = link(&mut b, &file);
    let url = url(&reply);
    assert!(
        url.starts_with(&format!("/files/{file}?")),
        "a path on this server: {url}"
    );
    assert!(
        !url.contains(&b_token),
        "the session token stays out: {url}"
    );
    // Five minutes by default.
    let expires = reply["expires"].as_i64().unwrap();
    assert!(expires > before && expires <= now_ms() + 300_000, "{reply}");
    assert_eq!(param(&url, "exp"), expires.to_string());

    let r = get(&server, &url, &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"group bytes"[..]));
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    let r = get(&server, &url, &[("Range", "bytes=6-")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"bytes"[..]));
    let head = server.http(format!("HEAD {url} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    assert_eq!((head.status, head.body.len()), (200, 0));
    // An Authorization header of another scheme (a proxy's Basic) leaves the link in charge.
    let r = get(&server, &url, &[("Authorization", "Basic Zm9vOmJhcg==")]);
    assert_eq!(r.status, 200);
    // A bearer header still works for API clients.
    let bearer = format!("Bearer {b_token}");
    let r = get(
        &server,
        &format!("/files/{file}"),
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.status, 200);
    let metrics = server.metrics();
    assert_eq!(
        metric_value(&metrics, "chatd_file_links_issued_total"),
        Some(1.0)
    );
}

#[test]
fn tampered_and_foreign_links_open_nothing() {
    let dir = DataDir::new("link-tamper");
    let (server, mut a, mut b, _, _, file) = shared_file(&dir, &[]);
    let other = upload(&mut a, "#g", "other.txt", b"other bytes");
    let url = url(&link(&mut b, &file));
    assert_eq!(get(&server, &url, &[]).status, 200);

    let refused = |path: &str| {
        let r = get(&server, path, &[]);
        assert_eq!(r.status, 401, "{path}: {}", r.body_text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        assert!(r.body_text().contains("file.link"), "{}", r.body_text());
    };
    // The link of one file does not open another.
    refused(&url.replace(&file, &other));
    // Any field changed breaks the signature: another user, a later expiry, another signature.
    let u: i64 = param(&url, "u").parse().unwrap();
    refused(&with_param(&url, "u", &(u - 1).to_string()));
    let exp: i64 = param(&url, "exp").parse().unwrap();
    refused(&with_param(&url, "exp", &(exp + 86_400_000).to_string()));
    let sig = param(&url, "sig");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    refused(&with_param(&url, "sig", &format!("{flipped}{}", &sig[1..])));
    refused(&with_param(&url, "sig", ""));
    refused(&format!("/files/{file}?u={u}&exp={exp}&sig="));
    refused(&format!("{url}&sig={sig}"));
    refused(&format!("/files/{file}?sig={sig}"));
    // A link is not a token either.
    let r = get(&server, &format!("/files/{file}?token={sig}"), &[]);
    assert_eq!(r.status, 401);
    let metrics = server.metrics();
    assert!(
        metrics.contains("chatd_file_downloads_refused_total{reason=\"link_invalid\"} 8"),
        "{metrics}"
    );
}

#[test]
fn a_link_expires() {
    let dir = DataDir::new("link-expiry");
    let (server, _a, mut b, _, _, file) = shared_file(&dir, &["--file-link-ttl", "3s"]);
    let reply = link(&mut b, &file);
    let url = url(&reply);
    let expires = reply["expires"].as_i64().unwrap();
    assert!(expires <= now_ms() + 3000, "{reply}");
    assert_eq!(get(&server, &url, &[]).status, 200);
    let wait = expires + 200 - now_ms();
    std::thread::sleep(Duration::from_millis(wait.max(0) as u64));
    let r = get(&server, &url, &[]);
    assert_eq!(r.status, 401, "{}", r.body_text());
    assert!(
        server
            .metrics()
            .contains("chatd_file_downloads_refused_total{reason=\"link_expired\"} 1"),
        "{}",
        server.metrics()
    );
    // A fresh link works again.
    assert_eq!(get(&server, &url_of(&mut b, &file), &[]).status, 200);
}

fn url_of(c: &mut Client, file: &str) -> String {
    url(&link(c, file))
}

#[test]
fn a_link_never_outlives_the_session_that_asked_for_it() {
    let dir = DataDir::new("link-session");
    let server = chat::start(&dir, &["--session-ttl", "60s"]);
    let (mut a, _) = user(&server, "alice");
    let file = upload(&mut a, "@alice", "mine.txt", b"mine");
    let mut again = Client::connect(&server);
    let session = again.ok(json!({"type": "login", "user": "alice", "password": "password-alice"}));
    let reply = link(&mut again, &file);
    assert_eq!(reply["expires"], session["expires"], "{reply} {session}");
}

#[test]
fn no_link_for_a_file_the_caller_cannot_read() {
    let dir = DataDir::new("link-authz");
    let (server, mut a, mut b, _, _, file) = shared_file(&dir, &[]);
    let direct = upload(&mut a, "@bob", "d.txt", b"direct");
    let (mut carol, _) = user(&server, "carol");
    carol.err(json!({"type": "file.link", "file_id": file}), "forbidden");
    carol.err(json!({"type": "file.link", "file_id": direct}), "forbidden");
    carol.err(
        json!({"type": "file.link", "file_id": "AAAAAAAAAAAAAAAAAAAAAA"}),
        "not_found",
    );
    carol.err(
        json!({"type": "file.link", "file_id": "../../chatd.db"}),
        "bad_request",
    );
    carol.err(json!({"type": "file.link"}), "bad_request");
    let mut anonymous = Client::connect(&server);
    anonymous.err(
        json!({"type": "file.link", "file_id": file}),
        "unauthenticated",
    );
    // Both ends of a direct conversation may.
    assert_eq!(get(&server, &url_of(&mut a, &direct), &[]).status, 200);
    assert_eq!(get(&server, &url_of(&mut b, &direct), &[]).status, 200);
    // Access is checked again at download time: a member who left loses it, link or not.
    let url = url_of(&mut b, &file);
    b.ok(json!({"type": "group.leave", "group": "g"}));
    assert_eq!(get(&server, &url, &[]).status, 403);
    b.err(json!({"type": "file.link", "file_id": file}), "forbidden");
}

#[test]
fn a_restart_invalidates_every_link() {
    let dir = DataDir::new("link-restart");
    let (mut server, _a, mut b, _, b_token, file) = shared_file(&dir, &[]);
    let url = url_of(&mut b, &file);
    assert_eq!(get(&server, &url, &[]).status, 200);
    drop(b);
    server.kill9();
    let server = chat::start(&dir, &[]);
    assert_eq!(get(&server, &url, &[]).status, 401);
    let mut b = chat::session(&server, &b_token);
    assert_eq!(get(&server, &url_of(&mut b, &file), &[]).status, 200);
}

#[test]
fn session_tokens_in_urls_are_refused_by_default() {
    let dir = DataDir::new("link-query");
    let (server, _a, _b, a_token, b_token, file) = shared_file(&dir, &[]);
    for token in [&a_token, &b_token] {
        let r = get(&server, &format!("/files/{file}?token={token}"), &[]);
        assert_eq!(r.status, 401, "{}", r.body_text());
        assert!(r.body_text().contains("Authorization: Bearer"));
        assert!(!r.body.windows(5).any(|w| w == b"group"), "no bytes");
    }
    let metrics = server.metrics();
    assert!(
        metrics.contains("chatd_file_downloads_refused_total{reason=\"token_in_url\"} 2"),
        "{metrics}"
    );
}

#[test]
fn query_tokens_work_again_only_when_the_operator_allows_them() {
    let dir = DataDir::new("link-query-on");
    let (server, _a, _b, _, b_token, file) = shared_file(&dir, &["--query-token-downloads"]);
    let r = get(&server, &format!("/files/{file}?token={b_token}"), &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"group bytes"[..]));
    let r = get(&server, &format!("/files/{file}?token=not-a-token"), &[]);
    assert_eq!(r.status, 401);
}
