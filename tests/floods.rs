//! One user's traffic never cuts another off: what others sent a user always reaches it, and a
//! client that sends more than its rate gets `rate_limited` replies in order instead of a close.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::chat::{self, user, Client, DataDir};

/// Text that JSON escapes six times over (`\u0001`): the largest event a message can make.
fn heavy_text() -> String {
    "\u{1}".repeat(4000)
}

/// `from` sends `count` heavy messages to `to`, a window at a time, and waits for every ok.
fn flood(from: &mut Client, to: &str, count: usize) {
    let text = heavy_text();
    let mut sent = 0;
    while sent < count {
        let window = (count - sent).min(50);
        let batch: Vec<String> = (0..window)
            .map(|i| json!({"type": "send", "id": sent + i, "to": to, "text": text}).to_string())
            .collect();
        from.send_texts_together(&batch);
        for i in 0..window {
            let reply = from.reply_to(&json!(sent + i));
            assert_eq!(reply["type"], "ok", "{reply}");
        }
        sent += window;
    }
}

#[test]
fn a_mailbox_larger_than_the_queue_cap_is_recovered_whole() {
    let dir = DataDir::new("recover-flood");
    let server = chat::start(
        &dir,
        &["--command-rate", "100000", "--command-burst", "100000"],
    );
    let (mut mallory, _) = user(&server, "mallory");
    let (victim, token) = user(&server, "victim");
    drop(victim);
    // 800 events of about 24 KB: 19 MB, more than the 16 MiB output cap.
    let count = 800;
    flood(&mut mallory, "@victim", count);

    let mut c = Client::connect(&server);
    c.ok(json!({"type": "auth", "token": token, "since": 0}));
    let mut last = 0;
    for n in 0..count {
        let event = c
            .next()
            .unwrap_or_else(|| panic!("closed after {n} messages"));
        assert_eq!(event["type"], "message", "{event}");
        let id = event["msg_id"].as_i64().unwrap();
        assert!(id > last, "out of order: {id} after {last}");
        last = id;
    }
    let done = c.event("recovered");
    assert_eq!(done["last_msg_id"], json!(last));
    assert_eq!(done["complete"], json!(true));
    c.ok(json!({"type": "whoami"}));
}

#[test]
fn pipelined_history_pages_never_overflow_the_queue() {
    let dir = DataDir::new("history-flood");
    let server = chat::start(
        &dir,
        &["--command-rate", "100000", "--command-burst", "100000"],
    );
    let (mut mallory, _) = user(&server, "mallory");
    let (mut victim, _) = user(&server, "victim");
    flood(&mut mallory, "@victim", 100);
    // Twenty pages of 100 heavy messages: 48 MB of replies asked for at once.
    let pages: Vec<String> = (0..20)
        .map(|i| {
            json!({"type": "history", "id": 1000 + i, "with": "@mallory", "limit": 100}).to_string()
        })
        .collect();
    victim.send_texts_together(&pages);
    for i in 0..20 {
        let reply = victim.reply_to(&json!(1000 + i));
        assert_eq!(reply["type"], "ok", "page {i}");
        assert_eq!(reply["messages"].as_array().unwrap().len(), 100);
    }
}

/// A message sent live while a replay is under way arrives once, after the replayed ones.
#[test]
fn a_message_sent_during_a_replay_arrives_once_and_in_order() {
    let dir = DataDir::new("replay-live");
    let server = chat::start(
        &dir,
        &["--command-rate", "100000", "--command-burst", "100000"],
    );
    let (mut mallory, _) = user(&server, "mallory");
    let (victim, token) = user(&server, "victim");
    drop(victim);
    flood(&mut mallory, "@victim", 300);

    let mut c = Client::connect(&server);
    c.send_text(&json!({"type": "auth", "id": 1, "token": token, "since": 0}).to_string());
    // Sent while the replay is (most likely) still going out; wherever it lands, it must come
    // exactly once and after everything older.
    let live = mallory.ok(json!({"type": "send", "to": "@victim", "text": "live"}));
    let live_id = live["msg_id"].as_i64().unwrap();
    let mut ids = Vec::new();
    loop {
        let event = c.next().expect("closed during the replay");
        match event["type"].as_str() {
            Some("message") => ids.push(event["msg_id"].as_i64().unwrap()),
            Some("recovered") if ids.contains(&live_id) => break,
            Some("recovered") => {
                let more = c.event("message");
                ids.push(more["msg_id"].as_i64().unwrap());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(ids.len(), 301, "every message once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in msg_id order");
    assert_eq!(*ids.last().unwrap(), live_id);
}

#[test]
fn a_pipelined_outbox_gets_every_reply_in_order_and_stays_open() {
    let dir = DataDir::new("outbox");
    // The default command rate (50/s, burst 100) and strike limit.
    let server = chat::start(&dir, &[]);
    let (mut anna, _) = user(&server, "anna");
    let (_bob, _) = user(&server, "bob");
    let count = 3000;
    let outbox: Vec<String> = (0..count)
        .map(|i| json!({"type": "send", "id": i, "to": "@bob", "text": format!("m{i}"), "client_id": format!("c{i}")}).to_string())
        .collect();
    anna.send_texts_together(&outbox);
    let (mut ok, mut limited) = (0, 0);
    for i in 0..count {
        let reply = anna.reply_to(&json!(i));
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("ok"), _) => ok += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("reply {i}: {reply}"),
        }
    }
    assert!(ok >= 90, "the burst is accepted: {ok}");
    assert_eq!(ok + limited, count);
    // Still open: after a pause the rate allows more.
    std::thread::sleep(Duration::from_millis(1100));
    anna.ok(json!({"type": "whoami"}));
}

#[test]
fn a_client_that_keeps_going_over_the_rate_is_closed() {
    let dir = DataDir::new("abuse");
    let server = chat::start(
        &dir,
        &[
            "--command-rate",
            "2",
            "--command-burst",
            "5",
            "--rate-strikes",
            "2",
        ],
    );
    let (mut calm, _) = user(&server, "calm");
    let mut c = Client::connect(&server);
    // Twenty requests a second, ten times the rate, for up to five seconds.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) && c.try_send_text(r#"{"type":"whoami"}"#) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (seen, code) = c.until_closed();
    assert_eq!(code, Some(1008));
    let limited = seen.iter().filter(|r| r["code"] == "rate_limited").count();
    // Two seconds of refusals at about 18 a second come before the close.
    assert!(limited >= 25, "closed after {limited} refusals");
    // Others are unaffected.
    calm.ok(json!({"type": "whoami"}));
}

/// Sends, typing notices, new groups and uploads are limited per account, however many
/// connections it opens; other accounts keep their own allowance.
#[test]
fn per_user_rates_hold_across_connections() {
    let dir = DataDir::new("per-user");
    let server = chat::start(
        &dir,
        &[
            "--send-rate",
            "0.01",
            "--send-burst",
            "10",
            "--typing-rate",
            "0.01",
            "--typing-burst",
            "3",
            "--group-create-rate",
            "0.01",
            "--group-create-burst",
            "2",
            "--upload-rate",
            "0.01",
            "--upload-burst",
            "2",
        ],
    );
    let (first, token) = user(&server, "mallory");
    let (mut bob, _) = user(&server, "bob");
    let mut conns = vec![first];
    conns.extend((0..4).map(|_| chat::session(&server, &token)));
    let count = |conns: &mut Vec<Client>, body: serde_json::Value| {
        let mut ok = 0;
        for c in conns.iter_mut() {
            for _ in 0..3 {
                let reply = c.request(body.clone());
                match reply["type"].as_str() {
                    Some("ok") => ok += 1,
                    _ => assert_eq!(reply["code"], "rate_limited", "{reply}"),
                }
            }
        }
        ok
    };
    assert_eq!(
        count(
            &mut conns,
            json!({"type": "send", "to": "@bob", "text": "x"})
        ),
        10
    );
    assert_eq!(
        count(&mut conns, json!({"type": "typing", "to": "@bob"})),
        3
    );
    let mut created = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.request(json!({"type": "group.create", "group": format!("g{i}")}));
        match r["type"].as_str() {
            Some("ok") => created += 1,
            _ => assert_eq!(r["code"], "rate_limited", "{r}"),
        }
    }
    assert_eq!(created, 2);
    let uploads: usize = conns
        .iter_mut()
        .map(|c| {
            let r = c.request(json!({"type": "file.upload", "to": "@bob", "name": "f", "size": 1}));
            usize::from(r["type"] == "ok")
        })
        .sum();
    assert_eq!(uploads, 2);
    // Another account is not affected.
    bob.ok(json!({"type": "send", "to": "@mallory", "text": "fine"}));
}

/// Sends a whole file and waits for its `file.done`.
fn upload(c: &mut Client, to: &str, data: &[u8]) {
    c.ok(json!({"type": "file.upload", "to": to, "name": "f.bin", "size": data.len()}));
    c.send_binary(data);
    c.event("file.done");
}

#[test]
fn stored_files_are_held_to_a_quota_per_user() {
    let dir = DataDir::new("quota");
    let server = chat::start(&dir, &["--user-file-quota", "1000"]);
    let (mut mallory, _) = user(&server, "mallory");
    let (mut bob, _) = user(&server, "bob");
    upload(&mut mallory, "@mallory", &[7; 600]);
    // 600 stored and 600 more declared: over 1000.
    let refused = mallory.err(
        json!({"type": "file.upload", "to": "@mallory", "name": "g", "size": 600}),
        "too_large",
    );
    assert!(refused["message"].as_str().unwrap().contains("quota"));
    // An upload in progress counts at its declared size, on any connection of the user.
    mallory.ok(json!({"type": "file.upload", "to": "@mallory", "name": "h", "size": 300}));
    let mut second = Client::connect(&server);
    second.ok(json!({"type": "login", "user": "mallory", "password": "password-mallory"}));
    second.err(
        json!({"type": "file.upload", "to": "@mallory", "name": "i", "size": 200}),
        "too_large",
    );
    // Another user has its own quota.
    upload(&mut bob, "@bob", &[1; 900]);
    // The quota holds across a restart (stored bytes are read from the store).
    mallory.send_binary(&[2; 300]);
    mallory.event("file.done");
    drop(server);
    let server = chat::start(&dir, &["--user-file-quota", "1000"]);
    let mut again = Client::connect(&server);
    again.ok(json!({"type": "login", "user": "mallory", "password": "password-mallory"}));
    again.err(
        json!({"type": "file.upload", "to": "@mallory", "name": "j", "size": 101}),
        "too_large",
    );
    upload(&mut again, "@mallory", &[3; 100]);
}

#[test]
fn uploads_stop_above_the_free_disk_floor() {
    let dir = DataDir::new("disk-floor");
    // A floor no disk reaches: a petabyte.
    let server = chat::start(&dir, &["--min-free-disk", "1000000000000000"]);
    let (mut anna, _) = user(&server, "anna");
    let refused = anna.err(
        json!({"type": "file.upload", "to": "@anna", "name": "f", "size": 10}),
        "unavailable",
    );
    assert!(refused["message"].as_str().unwrap().contains("disk"));
    // Messages still work.
    anna.ok(json!({"type": "send", "to": "@anna", "text": "still here"}));
}

/// The texts of a conversation's history, oldest first.
fn history_texts(c: &mut Client, with: &str) -> Vec<String> {
    let page = c.ok(json!({"type": "history", "with": with, "limit": 100}));
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retention_deletes_old_messages_and_their_files() {
    let dir = DataDir::new("retention");
    let server = chat::start(&dir, &["--message-retention", "2s"]);
    let (mut anna, _) = user(&server, "anna");
    let (mut bob, _) = user(&server, "bob");
    anna.ok(json!({"type": "send", "to": "@bob", "text": "old"}));
    upload(&mut anna, "@bob", b"old bytes");
    let files = dir.path().join("files");
    let stored = || std::fs::read_dir(&files).map_or(0, |d| d.count());
    assert_eq!(stored(), 1);
    std::thread::sleep(Duration::from_millis(2200));
    anna.ok(json!({"type": "send", "to": "@bob", "text": "new"}));
    let started = Instant::now();
    while history_texts(&mut bob, "@anna") != ["new"] {
        assert!(started.elapsed() < Duration::from_secs(10), "never pruned");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored(), 0, "the file's bytes went with its message");
    let pruned = support::metric_value(&server.metrics(), "chatd_messages_pruned_total");
    assert_eq!(pruned, Some(2.0));
}

#[test]
fn file_retention_deletes_file_posts_sooner_than_messages() {
    let dir = DataDir::new("file-retention");
    let server = chat::start(&dir, &["--file-retention", "1s"]);
    let (mut anna, _) = user(&server, "anna");
    let (mut bob, _) = user(&server, "bob");
    anna.ok(json!({"type": "send", "to": "@bob", "text": "kept"}));
    upload(&mut anna, "@bob", b"short-lived");
    let started = Instant::now();
    while history_texts(&mut bob, "@anna") != ["kept"] {
        assert!(started.elapsed() < Duration::from_secs(10), "never pruned");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was pruned does not come back in a replay, and new msg_ids keep growing.
    let after = anna.ok(json!({"type": "send", "to": "@bob", "text": "later"}));
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "login", "user": "bob", "password": "password-bob", "since": 0}));
    let texts: Vec<String> = (0..2)
        .map(|_| c.event("message")["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["kept", "later"]);
    assert!(after["msg_id"].as_i64().unwrap() > 2);
}
