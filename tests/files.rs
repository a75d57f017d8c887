//! File transfer: streamed uploads over WebSocket, authorized downloads over HTTP.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use support::chat::{self, user, Client, DataDir};
use support::{HttpResponse, Server};

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

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Uploads `data` to `to` in frames of `frame` bytes; returns (file_id, msg_id).
fn upload(
    c: &mut Client,
    to: &str,
    name: &str,
    mime: Option<&str>,
    data: &[u8],
    frame: usize,
) -> (String, i64) {
    let mut req = json!({"type": "file.upload", "to": to, "name": name, "size": data.len()});
    if let Some(m) = mime {
        req["mime"] = json!(m);
    }
    let ok = c.ok(req);
    let file_id = ok["file_id"].as_str().unwrap().to_string();
    for piece in data.chunks(frame.max(1)) {
        c.send_binary(piece);
    }
    let done = c.event("file.done");
    assert_eq!(done["file_id"], file_id.as_str());
    (file_id, done["msg_id"].as_i64().unwrap())
}

fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    server.http(req.as_bytes())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn files_in(dir: &DataDir) -> Vec<String> {
    std::fs::read_dir(dir.path().join("files"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn twenty_mib_round_trip_with_matching_sha256() {
    let dir = DataDir::new("files20");
    let server = chat::start(&dir, &[]);
    let (mut a, a_token) = user(&server, "alice");
    let (mut b, b_token) = user(&server, "bob");
    a.ok(json!({"type": "group.create", "group": "share"}));
    b.ok(json!({"type": "group.join", "group": "share"}));
    let data = bytes(20 << 20, 1);
    let (file_id, msg_id) = upload(
        &mut a,
        "#share",
        "big.bin",
        Some("application/x-test"),
        &data,
        256 * 1024,
    );
    let m = b.event("message");
    assert_eq!(m["msg_id"], msg_id);
    assert_eq!(m["from"], "alice");
    assert_eq!(m["to"], "#share");
    assert_eq!(
        m["file"],
        json!({"id": file_id, "name": "big.bin", "size": 20 << 20, "mime": "application/x-test"})
    );
    // history carries the file too
    let h = b.ok(json!({"type": "history", "with": "#share"}));
    assert_eq!(h["messages"][0]["file"]["id"], file_id.as_str());

    let r = get(
        &server,
        &format!("/files/{file_id}"),
        &[("Authorization", &bearer(&b_token))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("20971520"));
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment; filename=\"big.bin\""));
    assert_eq!(r.body.len(), data.len());
    assert_eq!(sha(&r.body), sha(&data));
    // by a signed link, as the uploader
    let link = a.ok(json!({"type": "file.link", "file_id": file_id}));
    let url = link["url"].as_str().unwrap();
    let r = get(&server, url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(sha(&r.body), sha(&data));
    // HEAD: the head only
    let head = server.http(
        format!(
            "HEAD /files/{file_id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {a_token}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!((head.status, head.body.len()), (200, 0));
    let metrics = server.metrics();
    assert!(metrics.contains("chatd_file_uploads_total 1"), "{metrics}");
    assert!(
        metrics.contains("chatd_file_bytes_uploaded_total 20971520"),
        "{metrics}"
    );
    assert_eq!(files_in(&dir), vec![file_id]);
}

#[test]
fn range_requests() {
    let dir = DataDir::new("ranges");
    let server = chat::start(&dir, &[]);
    let (mut a, token) = user(&server, "alice");
    let data = bytes(10_000, 2);
    let (id, _) = upload(&mut a, "@alice", "r.bin", None, &data, 4096);
    let auth = bearer(&token);
    let path = format!("/files/{id}");
    let range = |spec: &str| get(&server, &path, &[("Authorization", &auth), ("Range", spec)]);

    let r = range("bytes=0-99");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-99/10000"));
    assert_eq!(r.body, data[..100]);
    let r = range("bytes=4000-5999");
    assert_eq!((r.status, r.header("content-length")), (206, Some("2000")));
    assert_eq!(r.body, data[4000..6000]);
    let r = range("bytes=-500");
    assert_eq!(r.header("content-range"), Some("bytes 9500-9999/10000"));
    assert_eq!(r.body, data[9500..]);
    let r = range("bytes=9990-");
    assert_eq!(r.body, data[9990..]);
    let r = range("bytes=10000-");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10000"));
    // several ranges: the whole file
    let r = range("bytes=0-1,5-6");
    assert_eq!((r.status, r.body.len()), (200, 10_000));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

#[test]
fn download_authorization() {
    let dir = DataDir::new("authz");
    let server = chat::start(&dir, &[]);
    let (mut a, a_token) = user(&server, "alice");
    let (mut b, b_token) = user(&server, "bob");
    let (_c, c_token) = user(&server, "carol");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    let (group_file, _) = upload(
        &mut a,
        "#g",
        "g.txt",
        Some("text/plain"),
        b"group bytes",
        100,
    );
    let (direct_file, _) = upload(&mut a, "@bob", "d.txt", None, b"direct bytes", 100);

    let status = |path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        get(&server, path, &headers).status
    };
    let g = format!("/files/{group_file}");
    let d = format!("/files/{direct_file}");
    assert_eq!(status(&g, None), 401);
    assert_eq!(status(&g, Some("not-a-token")), 401);
    assert_eq!(status(&g, Some(&b_token)), 200);
    assert_eq!(status(&g, Some(&c_token)), 403);
    assert_eq!(status(&d, Some(&a_token)), 200);
    assert_eq!(status(&d, Some(&b_token)), 200);
    assert_eq!(status(&d, Some(&c_token)), 403);
    assert_eq!(status("/files/AAAAAAAAAAAAAAAAAAAAAA", Some(&a_token)), 404);
    assert_eq!(status("/files/..%2F..%2Fchatd.db", Some(&a_token)), 404);
    // 401 comes with a challenge
    let r = get(&server, &g, &[]);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // leaving the group ends access
    b.ok(json!({"type": "group.leave", "group": "g"}));
    assert_eq!(status(&g, Some(&b_token)), 403);
    // a revoked token is no token
    b.ok(json!({"type": "logout"}));
    assert_eq!(status(&d, Some(&b_token)), 401);
}

#[test]
fn cancel_drops_the_partial_file() {
    let dir = DataDir::new("cancel");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    a.err(json!({"type": "file.cancel"}), "not_found");
    a.ok(json!({"type": "file.upload", "to": "@alice", "name": "x", "size": 1000}));
    a.send_binary(&[1; 300]);
    a.err(
        json!({"type": "file.upload", "to": "@alice", "name": "y", "size": 5}),
        "conflict",
    );
    a.ok(json!({"type": "file.cancel"}));
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
    // bytes with no upload are refused; the connection goes on
    a.send_binary(&[1; 10]);
    assert_eq!(a.next().unwrap()["code"], "bad_request");
    let (id, _) = upload(&mut a, "@alice", "after.txt", None, b"fine", 2);
    assert_eq!(files_in(&dir), vec![id]);
    assert!(server
        .metrics()
        .contains("chatd_file_upload_failures_total{reason=\"cancelled\"} 1"));
}

#[test]
fn disconnect_mid_upload_leaves_nothing() {
    let dir = DataDir::new("disconnect");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    a.ok(json!({"type": "file.upload", "to": "@alice", "name": "x", "size": 100000}));
    a.send_binary(&[7; 50000]);
    drop(a);
    server.wait_metric(
        "chatd_file_upload_failures_total{reason=\"disconnect\"}",
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
    // and the server goes on
    let (mut b, _) = user(&server, "bob");
    b.ok(json!({"type": "whoami"}));
}

#[test]
fn oversize_declared_and_actual() {
    let dir = DataDir::new("oversize");
    let server = chat::start(&dir, &["--max-file-size", "1000"]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    a.err(
        json!({"type": "file.upload", "to": "@bob", "name": "big", "size": 1001}),
        "too_large",
    );
    let ok = a.ok(json!({"type": "file.upload", "to": "@bob", "name": "liar", "size": 10}));
    a.send_binary(&[0; 11]);
    let e = a.next().unwrap();
    assert_eq!(e["code"], "too_large", "{e}");
    // The upload's request had its one reply; the error names the upload instead.
    assert!(e.get("re").is_none(), "{e}");
    assert_eq!(e["file_id"], ok["file_id"], "the error names the upload");
    b.no_event("message", Duration::from_millis(300));
    assert!(files_in(&dir).is_empty());
    // the same bytes in two frames: refused at the frame that crosses the size
    a.ok(json!({"type": "file.upload", "to": "@bob", "name": "liar2", "size": 10}));
    a.send_binary(&[0; 6]);
    a.send_binary(&[0; 6]);
    assert_eq!(a.next().unwrap()["code"], "too_large");
    assert!(files_in(&dir).is_empty());
    // other validation
    a.err(
        json!({"type": "file.upload", "to": "@nobody", "name": "x", "size": 1}),
        "not_found",
    );
    a.err(
        json!({"type": "file.upload", "to": "@bob", "name": "", "size": 1}),
        "bad_request",
    );
    a.err(
        json!({"type": "file.upload", "to": "@bob", "name": "x", "size": 1, "mime": "bad\r\nmime"}),
        "bad_request",
    );
    a.err(
        json!({"type": "file.upload", "to": "@bob", "name": "x", "size": -1}),
        "bad_request",
    );
    // an empty file is fine: ok, then file.done, in that order
    a.send_text(
        &json!({"type": "file.upload", "id": "e", "to": "@bob", "name": "empty", "size": 0})
            .to_string(),
    );
    let ok = a.next().unwrap();
    assert_eq!(
        (&ok["type"], &ok["re"]),
        (&json!("ok"), &json!("e")),
        "{ok}"
    );
    let done = a.next().unwrap();
    assert_eq!(done["type"], "file.done", "{done}");
    assert_eq!(done["file_id"], ok["file_id"]);
    assert_eq!(b.event("message")["file"]["size"], 0);
    assert_eq!(
        files_in(&dir),
        vec![ok["file_id"].as_str().unwrap().to_string()]
    );
}

#[test]
fn hostile_file_names_are_metadata_only() {
    let dir = DataDir::new("names");
    let server = chat::start(&dir, &[]);
    let (mut a, token) = user(&server, "alice");
    let name = "../../etc/\"pass\"wd\\..\\x;y.txt";
    let (id, _) = upload(&mut a, "@alice", name, Some("text/plain"), b"payload", 3);
    assert_eq!(files_in(&dir), vec![id.clone()]);
    assert!(!dir.path().join("etc").exists());
    let r = get(
        &server,
        &format!("/files/{id}"),
        &[("Authorization", &bearer(&token))],
    );
    assert_eq!(r.status, 200);
    let cd = r.header("content-disposition").unwrap();
    let plain = cd.split('"').nth(1).unwrap();
    assert!(
        !plain.contains('/') && !plain.contains('\\') && !plain.contains('"'),
        "{cd}"
    );
    assert!(
        cd.contains("filename*=UTF-8''..%2F..%2Fetc%2F%22pass%22wd%5C..%5Cx%3By.txt"),
        "{cd}"
    );
    let h = a.ok(json!({"type": "history", "with": "@alice"}));
    assert_eq!(h["messages"][0]["file"]["name"], name);
}

#[test]
fn download_does_not_stall_other_clients() {
    let dir = DataDir::new("concurrent");
    let server = chat::start(&dir, &[]);
    let (mut a, token) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    let data = bytes(20 << 20, 3);
    let (id, _) = upload(&mut a, "@bob", "big", None, &data, 1 << 20);
    b.event("message");
    // A download that reads only its head, then stalls.
    let mut slow = support::connect(server.addr);
    write!(
        slow,
        "GET /files/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    slow.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200 OK"));
    // Messages keep flowing meanwhile.
    for i in 0..50 {
        a.ok(json!({"type": "send", "to": "@bob", "text": format!("while downloading {i}")}));
        assert_eq!(b.event("message")["text"], format!("while downloading {i}"));
    }
    // The download then completes intact.
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).unwrap();
    let mut all = first.to_vec();
    all.extend(rest);
    let body_at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(sha(&all[body_at..]), sha(&data));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn ten_parallel_50_mib_downloads_stay_in_bounded_memory() {
    let dir = DataDir::new("rss");
    let server = chat::start(&dir, &[]);
    let (mut a, token) = user(&server, "alice");
    let data = bytes(50 << 20, 4);
    let (id, _) = upload(&mut a, "@alice", "fifty", None, &data, 1 << 20);
    let digest = sha(&data);
    drop(data);
    thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(server.pid());
    let peak = Arc::new(AtomicU64::new(idle));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), server.pid());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let (addr, id, token) = (server.addr, id.clone(), token.clone());
            thread::spawn(move || {
                let mut s = support::connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                write!(
                    s,
                    "GET /files/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
                )
                .unwrap();
                let mut all = Vec::with_capacity(51 << 20);
                s.read_to_end(&mut all).unwrap();
                let body_at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                sha(&all[body_at..])
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), digest);
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let growth_mib = (peak.saturating_sub(idle)) as f64 / 1024.0;
    eprintln!("server RSS idle {idle} KiB, peak {peak} KiB during ten 50 MiB downloads: +{growth_mib:.1} MiB");
    assert!(growth_mib < 64.0, "server RSS grew {growth_mib:.1} MiB");
}

#[test]
fn leaving_the_group_mid_upload_drops_the_file() {
    let dir = DataDir::new("leavemid");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "olga");
    let (mut m, _) = user(&server, "mike");
    owner.ok(json!({"type": "group.create", "group": "g"}));
    m.ok(json!({"type": "group.join", "group": "g"}));
    let ok = m.ok(json!({"type": "file.upload", "to": "#g", "name": "x", "size": 10}));
    m.send_binary(&[1; 5]);
    owner.ok(json!({"type": "group.kick", "group": "g", "user": "mike"}));
    m.event("group.kicked");
    m.send_binary(&[1; 5]);
    let e = m.event("error");
    assert_eq!(
        (&e["code"], &e["file_id"]),
        (&json!("forbidden"), &ok["file_id"]),
        "{e}"
    );
    owner.no_event("message", Duration::from_millis(300));
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
}

#[test]
fn non_bearer_authorization_falls_back_to_the_query_token() {
    let dir = DataDir::new("basic");
    let server = chat::start(&dir, &["--query-token-downloads"]);
    let (mut a, token) = user(&server, "alice");
    let (id, _) = upload(&mut a, "@alice", "f", None, b"bytes", 5);
    let r = get(
        &server,
        &format!("/files/{id}?token={token}"),
        &[("Authorization", "Basic Zm9vOmJhcg==")],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"bytes"[..]));
}
