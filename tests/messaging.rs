//! Direct and group messages, history, deduplication, recovery, presence and typing over the
//! real server (protocol v1).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::chat::{self, session, user, Client, DataDir};

const QUIET: Duration = Duration::from_millis(300);

fn send(c: &mut Client, to: &str, text: &str) -> (i64, i64) {
    let r = c.ok(json!({"type": "send", "to": to, "text": text}));
    (r["msg_id"].as_i64().unwrap(), r["ts"].as_i64().unwrap())
}

#[test]
fn direct_messages_reach_every_session_but_the_sending_one() {
    let dir = DataDir::new("dm");
    let server = chat::start(&dir, &[]);
    let (mut a1, a_token) = user(&server, "alice");
    let mut a2 = session(&server, &a_token);
    let (mut b1, b_token) = user(&server, "bob");
    let mut b2 = session(&server, &b_token);

    let r = a1.ok(json!({"type": "send", "to": "@bob", "text": "hi bob", "client_id": "c1"}));
    let msg_id = r["msg_id"].as_i64().unwrap();
    let ts = r["ts"].as_i64().unwrap();
    let now = chatd::chat::now_ms();
    assert!((now - ts).abs() < 10_000, "ts is server time in ms: {ts}");
    let expected = json!({
        "type": "message", "msg_id": msg_id, "from": "alice", "to": "@bob",
        "text": "hi bob", "ts": ts, "client_id": "c1"
    });
    assert_eq!(b1.event("message"), expected);
    assert_eq!(b2.event("message"), expected);
    assert_eq!(a2.event("message"), expected);
    a1.no_event("message", QUIET);

    // a reply the other way
    let (id2, _) = send(&mut b2, "@alice", "hello alice");
    assert!(id2 > msg_id);
    assert_eq!(a1.event("message")["text"], "hello alice");
    assert_eq!(a2.event("message")["from"], "bob");
    assert_eq!(b1.event("message")["msg_id"], id2);
    b2.no_event("message", QUIET);
}

#[test]
fn group_messages_reach_members_only() {
    let dir = DataDir::new("groupmsg");
    let server = chat::start(&dir, &[]);
    let (mut a1, a_token) = user(&server, "alice");
    let mut a2 = session(&server, &a_token);
    let (mut b, _) = user(&server, "bob");
    let (mut outsider, _) = user(&server, "carol");
    a1.ok(json!({"type": "group.create", "group": "team"}));
    b.ok(json!({"type": "group.join", "group": "team"}));

    let (id, ts) = send(&mut a1, "#team", "standup in 5");
    let expected = json!({
        "type": "message", "msg_id": id, "from": "alice", "to": "#team",
        "text": "standup in 5", "ts": ts
    });
    assert_eq!(b.event("message"), expected);
    assert_eq!(a2.event("message"), expected);
    a1.no_event("message", QUIET);
    outsider.no_event("message", QUIET);
    outsider.err(
        json!({"type": "send", "to": "#team", "text": "let me in"}),
        "forbidden",
    );
}

#[test]
fn ordering_of_replies_and_events() {
    let dir = DataDir::new("order");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    // 30 sends and a whoami pipelined in one go: replies in request order, ids increasing.
    for i in 0..30 {
        a.send_text(
            &json!({"type": "send", "id": i, "to": "@bob", "text": format!("m{i}")}).to_string(),
        );
    }
    a.send_text(r#"{"type":"whoami","id":"last"}"#);
    let mut last = 0;
    for i in 0..30 {
        let r = a.next().unwrap();
        assert_eq!(r["re"], i, "{r}");
        let id = r["msg_id"].as_i64().unwrap();
        assert!(id > last);
        last = id;
    }
    assert_eq!(a.next().unwrap()["re"], "last");
    // A send refused on the spot still answers after the sends before it.
    a.send_text(&json!({"type": "send", "id": "good", "to": "@bob", "text": "fine"}).to_string());
    a.send_text(&json!({"type": "send", "id": "bad", "to": "@ghost", "text": "lost"}).to_string());
    a.send_text(&json!({"type": "send", "id": "good2", "to": "@bob", "text": "fine"}).to_string());
    let replies: Vec<Value> = (0..3).map(|_| a.next().unwrap()).collect();
    assert_eq!(replies[0]["re"], "good");
    assert_eq!(
        (&replies[1]["re"], &replies[1]["code"]),
        (&json!("bad"), &json!("not_found"))
    );
    assert_eq!(replies[2]["re"], "good2");
    let mut prev = 0;
    for i in 0..30 {
        let m = b.event("message");
        assert_eq!(m["text"], format!("m{i}"));
        let id = m["msg_id"].as_i64().unwrap();
        assert!(id > prev);
        prev = id;
    }
    let metrics = server.metrics();
    assert!(
        metrics.contains("chatd_messages_accepted_total 32"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatd_messages_delivered_total 32"),
        "{metrics}"
    );
    // 30 pipelined sends took fewer commits than messages
    let commits = support::metric_value(&metrics, "chatd_commit_batch_size_count").unwrap();
    assert!(commits < 30.0, "commits {commits}");
}

#[test]
fn send_validation() {
    let dir = DataDir::new("sendval");
    let server = chat::start(&dir, &["--max-text-chars", "10"]);
    let (mut a, _) = user(&server, "alice");
    a.err(
        json!({"type": "send", "to": "@ghost", "text": "boo"}),
        "not_found",
    );
    a.err(
        json!({"type": "send", "to": "#nowhere", "text": "boo"}),
        "not_found",
    );
    a.err(
        json!({"type": "send", "to": "bob", "text": "no sigil"}),
        "bad_request",
    );
    a.err(
        json!({"type": "send", "to": "@alice", "text": ""}),
        "bad_request",
    );
    a.err(
        json!({"type": "send", "to": "@alice", "text": "eleven chars"}),
        "too_large",
    );
    // ten scalar values, more bytes: fine
    send(&mut a, "@alice", "éééééééééé");
    a.err(json!({"type": "send", "to": "@alice"}), "bad_request");
    let mut anon = Client::connect(&server);
    anon.err(
        json!({"type": "send", "to": "@alice", "text": "hi"}),
        "unauthenticated",
    );
}

#[test]
fn history_pages_backwards_with_access_checks() {
    let dir = DataDir::new("history");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    let (mut c, _) = user(&server, "carol");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    let ids: Vec<i64> = (0..7)
        .map(|i| send(&mut a, "#g", &format!("g{i}")).0)
        .collect();
    send(&mut a, "@bob", "private");

    let page = b.ok(json!({"type": "history", "with": "#g", "limit": 3}));
    let got: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids[4..7].to_vec());
    assert_eq!(page["more"], true);
    assert_eq!(page["messages"][0]["text"], "g4");
    assert_eq!(page["messages"][0]["from"], "alice");
    assert_eq!(page["messages"][0]["to"], "#g");
    let page = b.ok(json!({"type": "history", "with": "#g", "limit": 3, "before": ids[4]}));
    let got: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids[1..4].to_vec());
    let page = b.ok(json!({"type": "history", "with": "#g", "before": ids[1]}));
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["more"], false);
    // default limit 50 and a cap of 100
    let page = b.ok(json!({"type": "history", "with": "#g", "limit": 1000}));
    assert_eq!(page["messages"].as_array().unwrap().len(), 7);
    b.err(
        json!({"type": "history", "with": "#g", "limit": 0}),
        "bad_request",
    );
    // access
    c.err(json!({"type": "history", "with": "#g"}), "forbidden");
    c.err(json!({"type": "history", "with": "#nope"}), "not_found");
    // a direct conversation, seen from both sides; a third user sees only their own with alice
    let mine = b.ok(json!({"type": "history", "with": "@alice"}));
    assert_eq!(mine["messages"][0]["text"], "private");
    let theirs = a.ok(json!({"type": "history", "with": "@bob"}));
    assert_eq!(theirs["messages"], mine["messages"]);
    let other = c.ok(json!({"type": "history", "with": "@alice"}));
    assert_eq!(other["messages"], json!([]));
}

#[test]
fn repeated_client_id_is_delivered_once_even_after_restart() {
    let dir = DataDir::new("dedupe");
    let first;
    {
        let server = chat::start(&dir, &[]);
        let (mut a, _) = user(&server, "alice");
        let (mut b, _) = user(&server, "bob");
        first = a.ok(json!({"type": "send", "to": "@bob", "text": "once", "client_id": "k-1"}));
        let again = a.ok(json!({"type": "send", "to": "@bob", "text": "once", "client_id": "k-1"}));
        assert_eq!(
            (&again["msg_id"], &again["ts"]),
            (&first["msg_id"], &first["ts"])
        );
        // two in one burst
        a.send_text(
            &json!({"type": "send", "id": 100, "to": "@bob", "text": "x", "client_id": "k-2"})
                .to_string(),
        );
        a.send_text(
            &json!({"type": "send", "id": 101, "to": "@bob", "text": "x", "client_id": "k-2"})
                .to_string(),
        );
        let r1 = a.next().unwrap();
        let r2 = a.next().unwrap();
        assert_eq!(r1["msg_id"], r2["msg_id"]);
        assert_eq!(b.event("message")["client_id"], "k-1");
        assert_eq!(b.event("message")["client_id"], "k-2");
        b.no_event("message", QUIET);
        assert!(server
            .metrics()
            .contains("chatd_messages_deduplicated_total 2"));
        // another user may use the same client_id
        b.ok(json!({"type": "send", "to": "@alice", "text": "mine", "client_id": "k-1"}));
    }
    let server = chat::start(&dir, &[]);
    let mut a = Client::connect(&server);
    a.ok(json!({"type": "login", "user": "alice", "password": "password-alice"}));
    let (mut b, _) = {
        let mut b = Client::connect(&server);
        b.ok(json!({"type": "login", "user": "bob", "password": "password-bob"}));
        (b, ())
    };
    let again = a.ok(json!({"type": "send", "to": "@bob", "text": "once", "client_id": "k-1"}));
    assert_eq!(
        (&again["msg_id"], &again["ts"]),
        (&first["msg_id"], &first["ts"])
    );
    b.no_event("message", QUIET);
    let hist = b.ok(json!({"type": "history", "with": "@alice"}));
    let onces = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["text"] == "once")
        .count();
    assert_eq!(onces, 1);
}

#[test]
fn recovery_after_reconnect_with_cap_and_sync() {
    let dir = DataDir::new("recovery");
    let server = chat::start(&dir, &["--recovery-limit", "3"]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, b_token) = user(&server, "bob");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    let (seen, _) = send(&mut a, "#g", "before");
    drop(b);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            send(
                &mut a,
                if i % 2 == 0 { "#g" } else { "@bob" },
                &format!("missed {i}"),
            )
            .0,
        );
    }
    // a message in a conversation bob is not part of
    let (_c, _) = user(&server, "carol");
    send(&mut a, "@carol", "not for bob");

    let mut b = Client::connect(&server);
    let r = b.ok(json!({"type": "auth", "token": b_token, "since": seen}));
    assert_eq!(r["user"], "bob");
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = b.next().unwrap();
        assert_eq!(m["type"], "message", "{m}");
        got.push(m["msg_id"].as_i64().unwrap());
    }
    assert_eq!(got, ids[..3].to_vec());
    let rec = b.next().unwrap();
    assert_eq!(
        rec,
        json!({"type": "recovered", "last_msg_id": ids[2], "complete": false})
    );
    b.ok(json!({"type": "sync", "since": ids[2]}));
    let m = b.next().unwrap();
    assert_eq!(
        (m["msg_id"].as_i64(), m["text"].as_str()),
        (Some(ids[3]), Some("missed 3"))
    );
    let rec = b.next().unwrap();
    assert_eq!(
        rec,
        json!({"type": "recovered", "last_msg_id": ids[3], "complete": true})
    );
    // nothing new: recovered with `since` itself
    b.ok(json!({"type": "sync", "since": ids[3] + 100}));
    assert_eq!(
        b.next().unwrap(),
        json!({"type": "recovered", "last_msg_id": ids[3] + 100, "complete": true})
    );

    // login with since works the same way
    let mut b2 = Client::connect(&server);
    b2.ok(json!({"type": "login", "user": "bob", "password": "password-bob", "since": ids[2]}));
    assert_eq!(b2.next().unwrap()["msg_id"], ids[3]);
    assert_eq!(b2.next().unwrap()["type"], "recovered");
}

#[test]
fn presence_on_first_and_last_session() {
    let dir = DataDir::new("presence");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, b_token) = user(&server, "bob");
    let (mut stranger, _) = user(&server, "carol");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    drop(b);
    assert_eq!(
        a.event("presence"),
        json!({"type": "presence", "user": "bob", "online": false})
    );
    let b1 = session(&server, &b_token);
    assert_eq!(
        a.event("presence"),
        json!({"type": "presence", "user": "bob", "online": true})
    );
    let b2 = session(&server, &b_token);
    drop(b1);
    a.no_event("presence", QUIET);
    drop(b2);
    assert_eq!(
        a.event("presence"),
        json!({"type": "presence", "user": "bob", "online": false})
    );
    stranger.no_event("presence", QUIET);
    let members = a.ok(json!({"type": "group.members", "group": "g"}));
    assert!(members["members"]
        .as_array()
        .unwrap()
        .contains(&json!({"user": "bob", "role": "member", "online": false})));
}

/// Deliveries and presence use the group's member list kept in memory; joins, leaves and kicks
/// must change it at once, and a user sharing two groups with someone hears of them once.
#[test]
fn membership_changes_apply_at_once_to_deliveries_and_presence() {
    let dir = DataDir::new("membership");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "olga");
    let (mut joiner, _) = user(&server, "jack");
    let (mut leaver, leaver_token) = user(&server, "lena");
    owner.ok(json!({"type": "group.create", "group": "one"}));
    owner.ok(json!({"type": "group.create", "group": "two"}));
    leaver.ok(json!({"type": "group.join", "group": "one"}));
    leaver.ok(json!({"type": "group.join", "group": "two"}));
    // A first message loads the member list of "one".
    send(&mut owner, "#one", "before");
    assert_eq!(leaver.event("message")["text"], "before");

    // A join after that is seen by the next delivery.
    joiner.ok(json!({"type": "group.join", "group": "one"}));
    send(&mut owner, "#one", "welcome");
    assert_eq!(joiner.event("message")["text"], "welcome");
    assert_eq!(leaver.event("message")["text"], "welcome");

    // Lena shares both groups with Olga: one presence event each way, not two.
    drop(leaver);
    assert_eq!(
        owner.event("presence"),
        json!({"type": "presence", "user": "lena", "online": false})
    );
    owner.no_event("presence", QUIET);
    let mut leaver = session(&server, &leaver_token);
    assert_eq!(
        owner.event("presence"),
        json!({"type": "presence", "user": "lena", "online": true})
    );
    owner.no_event("presence", QUIET);

    // After leaving, no more messages of the group.
    leaver.ok(json!({"type": "group.leave", "group": "one"}));
    send(&mut owner, "#one", "after the leave");
    assert_eq!(joiner.event("message")["text"], "after the leave");
    leaver.no_event("message", QUIET);

    // A kicked member neither, and its presence no longer reaches the group.
    owner.ok(json!({"type": "group.kick", "group": "one", "user": "jack"}));
    send(&mut owner, "#one", "after the kick");
    joiner.no_event("message", QUIET);
    drop(joiner);
    // Lena still shares "two" with Olga; Jack shares nothing with anyone now.
    owner.no_event("presence", QUIET);
    // A rejoin brings deliveries back.
    leaver.ok(json!({"type": "group.join", "group": "one"}));
    send(&mut owner, "#one", "back");
    assert_eq!(leaver.event("message")["text"], "back");
}

/// The next `n` presence events say `online` of `n` different users, and no more follow.
fn expect_each_once(watcher: &mut Client, n: usize, online: bool) {
    let mut users: Vec<String> = (0..n)
        .map(|_| {
            let e = watcher.event("presence");
            assert_eq!(e["online"], online, "{e}");
            e["user"].as_str().unwrap().to_string()
        })
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), n, "someone announced twice: {users:?}");
    watcher.no_event("presence", QUIET);
}

/// Users who come or go together (in one loop iteration) are announced together. Whatever the
/// timing, an observer hears each change exactly once, and nobody hears of itself.
#[test]
fn many_users_coming_and_going_at_once_are_each_announced_once() {
    const N: usize = 12;
    let dir = DataDir::new("crowd");
    let server = chat::start(&dir, &[]);
    let (mut watcher, _) = user(&server, "watcher");
    watcher.ok(json!({"type": "group.create", "group": "crowd"}));
    let mut crowd = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..N {
        let (mut c, token) = user(&server, &format!("crowd{i}"));
        c.ok(json!({"type": "group.join", "group": "crowd"}));
        crowd.push(c);
        tokens.push(token);
    }
    // Everyone leaves at once.
    drop(crowd);
    expect_each_once(&mut watcher, N, false);

    // Everyone comes back at once: the connections are opened first, then every auth request
    // goes out back to back, so that the server takes many of them in one iteration.
    let mut crowd: Vec<Client> = (0..N).map(|_| Client::connect(&server)).collect();
    for (c, token) in crowd.iter_mut().zip(&tokens) {
        c.send_text(&json!({"type": "auth", "token": token, "id": 1}).to_string());
    }
    for c in &mut crowd {
        assert_eq!(c.reply_to(&json!(1))["type"], "ok");
    }
    expect_each_once(&mut watcher, N, true);
    let mut heard_of: Vec<Vec<String>> = Vec::new();
    for (i, c) in crowd.iter_mut().enumerate() {
        let me = format!("crowd{i}");
        let mut heard: Vec<String> = c
            .events_within("presence", Duration::from_millis(100))
            .iter()
            .map(|e| e["user"].as_str().unwrap().to_string())
            .collect();
        assert!(!heard.contains(&me), "{me} heard of itself: {heard:?}");
        let all = heard.len();
        heard.sort();
        heard.dedup();
        assert_eq!(heard.len(), all, "{me} heard someone twice");
        heard_of.push(heard);
    }
    // Of two users, the one online first hears of the other; arriving together, both do.
    for i in 0..N {
        for j in i + 1..N {
            let (a, b) = (format!("crowd{i}"), format!("crowd{j}"));
            assert!(
                heard_of[i].contains(&b) || heard_of[j].contains(&a),
                "neither {a} nor {b} heard of the other"
            );
        }
    }
}

/// A newcomer's `presence` reaches the others before anything its first commands make them
/// see, even when the server reads the login and the next command together.
#[test]
fn a_newcomer_is_announced_before_its_first_actions() {
    let dir = DataDir::new("newcomer");
    let server = chat::start(&dir, &[]);
    let (mut watcher, _) = user(&server, "watcher");
    let (mut comer, token) = user(&server, "comer");
    watcher.ok(json!({"type": "group.create", "group": "g"}));
    comer.ok(json!({"type": "group.join", "group": "g"}));
    assert_eq!(watcher.event("group.joined")["user"], "comer");
    drop(comer);
    assert_eq!(watcher.event("presence")["online"], false);
    let mut comer = Client::connect(&server);
    comer.send_texts_together(&[
        json!({"type": "auth", "token": token, "id": 1}).to_string(),
        json!({"type": "typing", "to": "#g", "id": 2}).to_string(),
        json!({"type": "send", "to": "#g", "text": "I'm back", "id": 3}).to_string(),
    ]);
    for id in 1..=3 {
        assert_eq!(comer.reply_to(&json!(id))["type"], "ok");
    }
    let order: Vec<String> = (0..3)
        .map(|_| {
            watcher.next().expect("an event")["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, ["presence", "typing", "message"]);
}

#[test]
fn typing_is_relayed_not_stored_and_rate_limited() {
    let dir = DataDir::new("typing");
    let server = chat::start(&dir, &["--typing-rate", "0.1", "--typing-burst", "2"]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    a.ok(json!({"type": "group.create", "group": "g"}));
    b.ok(json!({"type": "group.join", "group": "g"}));
    a.ok(json!({"type": "typing", "to": "#g"}));
    assert_eq!(
        b.event("typing"),
        json!({"type": "typing", "from": "alice", "to": "#g"})
    );
    a.ok(json!({"type": "typing", "to": "@bob"}));
    assert_eq!(
        b.event("typing"),
        json!({"type": "typing", "from": "alice", "to": "@bob"})
    );
    a.err(json!({"type": "typing", "to": "#g"}), "rate_limited");
    a.no_event("typing", QUIET);
    let h = b.ok(json!({"type": "history", "with": "#g"}));
    assert_eq!(h["messages"], json!([]));
    let (mut c, _) = user(&server, "carol");
    c.err(json!({"type": "typing", "to": "#g"}), "forbidden");
}

#[test]
fn storage_failure_while_sending_acknowledges_nothing() {
    let dir = DataDir::new("sendfail");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    let lock = rusqlite::Connection::open(dir.path().join("chatd.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    a.err(
        json!({"type": "send", "to": "@bob", "text": "lost?", "client_id": "retry-me"}),
        "unavailable",
    );
    b.no_event("message", QUIET);
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    // the retry with the same client_id is stored now, and delivered once
    let (id, _) = {
        let r =
            a.ok(json!({"type": "send", "to": "@bob", "text": "lost?", "client_id": "retry-me"}));
        (r["msg_id"].as_i64().unwrap(), ())
    };
    let m: Value = b.event("message");
    assert_eq!(m["msg_id"], id);
    let h = b.ok(json!({"type": "history", "with": "@alice"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert!(server.metrics().contains("chatd_commit_failures_total 1"));
}

#[test]
fn deleted_group_takes_its_history() {
    let dir = DataDir::new("delhist");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    a.ok(json!({"type": "group.create", "group": "g"}));
    send(&mut a, "#g", "old");
    a.ok(json!({"type": "group.delete", "group": "g"}));
    a.ok(json!({"type": "group.create", "group": "g"}));
    let h = a.ok(json!({"type": "history", "with": "#g"}));
    assert_eq!(h["messages"], json!([]));
}

#[test]
fn replies_owed_when_the_client_closes_come_before_the_close_frame() {
    use std::io::Write;
    use support::{close_body, masked, read_frame, OP_CLOSE, OP_TEXT};
    let dir = DataDir::new("closeowed");
    let secret = "close-secret-of-32-bytes-or-longer";
    let server = chat::start(&dir, &["--jwt-secret", secret]);
    let (_bob, _) = user(&server, "bob");
    let exp = chatd::chat::now_ms() / 1000 + 60;
    let token =
        chatd::chat::auth::sign_jwt(&json!({"sub": "alice", "exp": exp}), secret.as_bytes());
    let mut raw = server.raw_ws("/ws");
    raw.write_all(&masked(
        OP_TEXT,
        json!({"type": "auth", "id": 1, "token": token})
            .to_string()
            .as_bytes(),
    ))
    .unwrap();
    let ok: Value = serde_json::from_slice(&read_frame(&mut raw).unwrap().payload).unwrap();
    assert_eq!(ok["re"], 1);
    // A send and the close frame in one write: the send's ok (after its commit) comes first.
    let mut burst = masked(
        OP_TEXT,
        json!({"type": "send", "id": 2, "to": "@bob", "text": "last words"})
            .to_string()
            .as_bytes(),
    );
    burst.extend(masked(OP_CLOSE, &close_body(1000, b"")));
    raw.write_all(&burst).unwrap();
    let first = read_frame(&mut raw).unwrap();
    assert_eq!(first.opcode, OP_TEXT, "the reply before the close");
    let reply: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(
        (reply["re"].clone(), reply["type"].clone()),
        (json!(2), json!("ok")),
        "{reply}"
    );
    let second = read_frame(&mut raw).unwrap();
    assert_eq!(second.opcode, OP_CLOSE);
    assert_eq!(second.close_code(), Some(1000));
}

#[test]
fn the_process_runs_three_threads_at_most() {
    let dir = DataDir::new("threads");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "alice");
    let (mut b, _) = user(&server, "bob");
    for i in 0..20 {
        send(&mut a, "@bob", &format!("m{i}"));
        a.ok(json!({"type": "group.create", "group": format!("g{i}")}));
    }
    assert_eq!(b.event("message")["text"], "m0");
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .expect("read /proc/<pid>/task")
        .map(|e| {
            let comm = e.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect();
    names.sort();
    // The loop, the password worker, the store writer: nothing else.
    assert_eq!(names, ["chatd", "chatd-passwords", "chatd-store"]);
}
