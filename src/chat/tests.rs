//! The chat service driven as a value: an in-memory store, a clock the test sets, and the
//! effects read back as frames. The test plays the loop: it applies batches to the store and
//! answers password jobs when it chooses, so every interleaving is reproducible.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::hasher::{Cost, Done, Outcome as Hashed, Work};
use super::ratelimit::{Rate, UserRates};
use super::service::{ConnId, Effect, Now, Service, Settings};
use crate::store::{Batch, Committed, Store};
use crate::ws::Opcode;

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";
const START_MS: i64 = 1_767_225_600_000;

fn settings() -> Settings {
    Settings {
        registration_open: true,
        jwt_secret: Some(SECRET.to_vec()),
        jwt_rules: super::auth::JwtRules {
            max_lifetime_ms: 86_400_000,
            issuer: None,
            audience: None,
        },
        session_ttl: Duration::from_secs(3600),
        command_rate: 1000.0,
        command_burst: 1000.0,
        rate_strikes: 10,
        login_rate: 1000.0,
        login_burst: 1000.0,
        login_budgets: crate::chat::login_guard::Budgets {
            per_account: 1000.0,
            per_pair: 1000.0,
            window_secs: 900.0,
        },
        max_connections_per_user: 0,
        argon2: Cost {
            memory_kib: 64,
            iterations: 1,
        },
        max_text_chars: 100,
        recovery_limit: 1000,
        user_rates: UserRates {
            send: Rate {
                per_sec: 1000.0,
                burst: 1000.0,
            },
            typing: Rate {
                per_sec: 2.0,
                burst: 5.0,
            },
            group_create: Rate {
                per_sec: 1000.0,
                burst: 1000.0,
            },
            upload: Rate {
                per_sec: 1000.0,
                burst: 1000.0,
            },
            unknown_user: Rate {
                per_sec: 1000.0,
                burst: 1000.0,
            },
        },
        files_dir: std::env::temp_dir().join("chatd-service-tests-unused"),
        max_file_size: 1 << 20,
        file_link_ttl: Duration::from_secs(300),
        file_link_key: super::links::LinkKey::from_bytes([7; 32]),
        user_file_quota: 0,
        min_free_disk: 0,
        large_group: 1000,
        message_retention: None,
        file_retention: None,
        max_groups_per_user: 500,
        max_owned_groups_per_user: 100,
    }
}

/// The service with the loop played by the test.
struct Loop {
    svc: Service,
    now: Now,
    /// Frames each connection was sent, decoded, in order.
    frames: HashMap<ConnId, Vec<Value>>,
    /// Batches handed to the writer and not yet applied.
    commits: Vec<Batch>,
    /// Password jobs not yet answered.
    hashes: Vec<(u64, Work)>,
    finished: Vec<ConnId>,
    closed: Vec<ConnId>,
    next_id: u64,
    /// Output queues stay full until `drain_queues`.
    hold_drains: bool,
    /// The frame counts of the shared buffers each connection was sent.
    shared: HashMap<ConnId, Vec<u32>>,
    /// Connections waiting to hear their queue drained.
    awaiting: Vec<ConnId>,
}

impl Loop {
    fn new(settings: Settings) -> Loop {
        let store = Store::open_in_memory().unwrap();
        Loop {
            svc: Service::new(store, settings).unwrap(),
            now: Now {
                mono: Instant::now(),
                wall_ms: START_MS,
            },
            frames: HashMap::new(),
            commits: Vec::new(),
            hashes: Vec::new(),
            finished: Vec::new(),
            closed: Vec::new(),
            next_id: 1,
            hold_drains: false,
            shared: HashMap::new(),
            awaiting: Vec::new(),
        }
    }

    fn open(&mut self, conn: ConnId) {
        self.svc
            .open(conn, IpAddr::V4(Ipv4Addr::LOCALHOST), self.now);
    }

    /// Sends a request with a fresh id; returns the id.
    fn request(&mut self, conn: ConnId, mut body: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        let data = body.to_string().into_bytes();
        self.svc.message(conn, Opcode::Text, data, self.now);
        self.take_effects();
        id
    }

    /// The end of the loop's iteration.
    fn end_iteration(&mut self) {
        self.svc.end_iteration(self.now);
        self.take_effects();
    }

    fn take_effects(&mut self) {
        let mut effects = Vec::new();
        self.svc.drain(&mut effects);
        let mut drained = Vec::new();
        for e in effects {
            match e {
                Effect::Send(c, f) => self.frames.entry(c).or_default().extend(decode(&f)),
                Effect::SendFrames(c, f, n) => {
                    let events = decode(&f);
                    assert_eq!(events.len(), n as usize);
                    self.frames.entry(c).or_default().extend(events);
                    self.shared.entry(c).or_default().push(n);
                }
                Effect::Commit(batch) => self.commits.push(batch),
                Effect::Hash(t, w) => self.hashes.push((t, w)),
                Effect::Finish(c) => self.finished.push(c),
                Effect::Close(c, ..) => self.closed.push(c),
                Effect::Authenticated(..) | Effect::Resume(_) => {}
                Effect::AwaitDrain(c) if self.hold_drains => self.awaiting.push(c),
                Effect::AwaitDrain(c) => drained.push(c),
            }
        }
        // Every queue drains at once unless the test holds them.
        for c in drained {
            self.svc.output_drained(c, self.now);
            self.take_effects();
        }
    }

    /// The queues of the connections waiting for a drain empty.
    fn drain_queues(&mut self) {
        for c in std::mem::take(&mut self.awaiting) {
            self.svc.output_drained(c, self.now);
        }
        self.take_effects();
    }

    /// The store writer commits the batch it holds; `false` if there was none.
    fn commit(&mut self) -> bool {
        assert!(self.commits.len() <= 1, "one batch at a time");
        let Some(batch) = self.commits.pop() else {
            return false;
        };
        let results = self.svc.store.apply(batch).map(|(w, _)| w);
        let done = Committed {
            results,
            took: Duration::from_micros(50),
        };
        self.svc.committed(done, self.now);
        self.take_effects();
        true
    }

    /// Ends iterations and commits until nothing is left to do.
    fn settle(&mut self) {
        loop {
            self.end_iteration();
            self.answer_passwords();
            if !self.commit() && self.hashes.is_empty() {
                self.end_iteration();
                if self.commits.is_empty() {
                    return;
                }
            }
        }
    }

    /// The password worker, with a transparent "hash" so the test stays fast.
    fn answer_passwords(&mut self) {
        for (ticket, work) in std::mem::take(&mut self.hashes) {
            let outcome = match work {
                Work::Hash(p) => Hashed::Hashed(format!("hash:{p}")),
                Work::Verify(p, stored) => Hashed::Verified(stored == Some(format!("hash:{p}"))),
            };
            self.svc.password_done(Done { ticket, outcome }, self.now);
            self.take_effects();
        }
    }

    /// Everything sent to a connection so far, taken.
    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.frames.remove(&conn).unwrap_or_default()
    }

    /// The events of one type sent to a connection so far, taken with the rest.
    fn events(&mut self, conn: ConnId, kind: &str) -> Vec<Value> {
        self.take(conn)
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// Opens `conn` authenticated by a JWT as `name` (created on first use).
    fn user(&mut self, conn: ConnId, name: &str) {
        self.open(conn);
        let exp = START_MS / 1000 + 3600;
        let token = super::auth::sign_jwt(&json!({"sub": name, "exp": exp}), SECRET);
        self.request(conn, json!({"type": "auth", "token": token}));
        self.settle();
        let replies = self.take(conn);
        assert_eq!(replies[0]["type"], "ok", "{replies:?}");
    }

    /// Sends and settles; the reply.
    fn ok(&mut self, conn: ConnId, body: Value) -> Value {
        let id = self.request(conn, body);
        self.settle();
        let reply = self
            .take(conn)
            .into_iter()
            .find(|v| v["re"] == id)
            .expect("a reply");
        assert_eq!(reply["type"], "ok", "{reply}");
        reply
    }

    fn error(&mut self, conn: ConnId, body: Value) -> String {
        let id = self.request(conn, body);
        self.settle();
        let reply = self
            .take(conn)
            .into_iter()
            .find(|v| v["re"] == id)
            .expect("a reply");
        assert_eq!(reply["type"], "error", "{reply}");
        reply["code"].as_str().unwrap().to_string()
    }
}

/// Decodes the server frames (unmasked text) back to back in `bytes`.
fn decode(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push(serde_json::from_slice(&bytes[header..header + len]).unwrap());
        bytes = &bytes[header + len..];
    }
    out
}

fn ids(replies: &[Value]) -> Vec<u64> {
    replies.iter().filter_map(|r| r["re"].as_u64()).collect()
}

#[test]
fn replies_keep_request_order_across_commits() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    // A send waits for its commit; the whoami behind it must not overtake it, and the send
    // behind the whoami must not overtake that.
    let first = l.request(1, json!({"type": "send", "to": "@bob", "text": "one"}));
    let who = l.request(1, json!({"type": "whoami"}));
    let second = l.request(1, json!({"type": "send", "to": "@bob", "text": "two"}));
    l.end_iteration();
    assert!(
        l.take(1).is_empty(),
        "nothing is answered before the commit"
    );
    assert_eq!(l.commits.len(), 1);
    assert_eq!(l.commits[0].messages(), 1, "only the first send joined");
    assert!(l.commit());
    let replies = l.take(1);
    assert_eq!(ids(&replies), [first, who]);
    l.settle();
    assert_eq!(ids(&l.take(1)), [second]);
    let texts: Vec<Value> = l
        .events(2, "message")
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, ["one", "two"]);
}

#[test]
fn errors_and_refusals_wait_their_turn_behind_sends() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    let a = l.request(1, json!({"type": "send", "to": "@bob", "text": "fine"}));
    let b = l.request(1, json!({"type": "send", "to": "@nobody", "text": "lost"}));
    let c = l.request(
        1,
        json!({"type": "send", "to": "@bob", "text": "x".repeat(101)}),
    );
    l.end_iteration();
    assert!(
        l.take(1).is_empty(),
        "the errors wait behind the first send"
    );
    l.settle();
    let replies = l.take(1);
    assert_eq!(ids(&replies), [a, b, c]);
    let codes: Vec<&Value> = replies.iter().map(|r| &r["code"]).collect();
    assert_eq!(
        codes,
        [&Value::Null, &json!("not_found"), &json!("too_large")]
    );
}

#[test]
fn a_password_check_holds_later_requests() {
    let mut l = Loop::new(settings());
    l.open(1);
    let reg = l.request(
        1,
        json!({"type": "register", "user": "carol", "password": "long enough"}),
    );
    let who = l.request(1, json!({"type": "whoami"}));
    let login = l.request(
        1,
        json!({"type": "login", "user": "carol", "password": "long enough"}),
    );
    l.end_iteration();
    assert!(l.take(1).is_empty());
    assert_eq!(l.hashes.len(), 1, "one job at a time per connection");
    l.settle();
    let replies = l.take(1);
    assert_eq!(ids(&replies), [reg, who, login]);
    assert_eq!(
        replies[1]["code"], "unauthenticated",
        "whoami ran after register, before login"
    );
    assert!(replies[2]["token"].is_string());
}

#[test]
fn one_iteration_is_one_batch_and_retries_answer_with_the_first_copy() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    let commits = l.svc.metrics.commits;
    for (text, cid) in [("a", "x"), ("b", "y"), ("a again", "x")] {
        l.request(
            1,
            json!({"type": "send", "to": "@bob", "text": text, "client_id": cid}),
        );
    }
    l.end_iteration();
    assert_eq!(l.commits[0].messages(), 3);
    l.settle();
    let replies = l.take(1);
    assert_eq!(replies[0]["msg_id"], replies[2]["msg_id"], "{replies:?}");
    assert_ne!(replies[0]["msg_id"], replies[1]["msg_id"]);
    assert_eq!(l.svc.metrics.commits, commits + 1);
    assert_eq!(l.svc.metrics.deduplicated, 1);
    let delivered: Vec<Value> = l
        .events(2, "message")
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(delivered, ["a", "b"]);
    // A retry in a later batch, after the first copy is stored.
    let first = replies[1]["msg_id"].clone();
    let again = l.ok(
        1,
        json!({"type": "send", "to": "@bob", "text": "b", "client_id": "y"}),
    );
    assert_eq!(again["msg_id"], first);
    assert!(l.events(2, "message").is_empty());
}

#[test]
fn the_next_batch_gathers_while_one_is_committed() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    l.user(3, "carol");
    l.request(1, json!({"type": "send", "to": "@bob", "text": "n"}));
    l.end_iteration();
    assert_eq!(l.commits.len(), 1);
    // While batch N is out, other connections' sends gather into N+1, which waits.
    l.request(3, json!({"type": "send", "to": "@bob", "text": "n+1"}));
    l.request(
        3,
        json!({"type": "send", "to": "@alice", "text": "n+1 too"}),
    );
    l.end_iteration();
    assert_eq!(l.commits.len(), 1, "one batch out at a time");
    assert!(l.commit());
    l.end_iteration();
    assert_eq!(l.commits[0].messages(), 2);
    l.settle();
    let texts: Vec<Value> = l
        .events(2, "message")
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, ["n", "n+1"]);
    let ids: Vec<i64> = l
        .take(3)
        .iter()
        .filter_map(|r| r["msg_id"].as_i64())
        .collect();
    assert!(ids[0] < ids[1], "msg_id follows acceptance: {ids:?}");
}

#[test]
fn a_failed_commit_answers_unavailable_and_delivers_nothing() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    let id = l.request(1, json!({"type": "send", "to": "@bob", "text": "lost"}));
    l.end_iteration();
    l.commits.clear();
    let failed = Committed {
        results: Err(crate::store::StoreError::Unavailable("disk full".into())),
        took: Duration::ZERO,
    };
    l.svc.committed(failed, l.now);
    l.take_effects();
    let replies = l.take(1);
    assert_eq!(ids(&replies), [id]);
    assert_eq!(replies[0]["code"], "unavailable");
    assert!(l.events(2, "message").is_empty());
    assert_eq!(l.svc.metrics.commit_failures, 1);
}

#[test]
fn presence_of_one_iteration_is_one_shared_buffer_and_nobody_hears_itself() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.ok(1, json!({"type": "group.create", "group": "team"}));
    for (conn, name) in [(2, "bob"), (3, "carol")] {
        l.user(conn, name);
        l.ok(conn, json!({"type": "group.join", "group": "team"}));
    }
    // bob and carol leave and come back in one iteration.
    l.svc.close(2);
    l.svc.close(3);
    let exp = START_MS / 1000 + 3600;
    for (conn, name) in [(4, "bob"), (5, "carol")] {
        l.open(conn);
        let token = super::auth::sign_jwt(&json!({"sub": name, "exp": exp}), SECRET);
        l.request(conn, json!({"type": "auth", "token": token}));
    }
    l.take(1);
    l.end_iteration();
    // What alice got: the four changes, in one buffer.
    let seen = l.events(1, "presence");
    let changes: Vec<(Value, Value)> = seen
        .iter()
        .map(|p| (p["user"].clone(), p["online"].clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (json!("bob"), json!(false)),
            (json!("carol"), json!(false)),
            (json!("bob"), json!(true)),
            (json!("carol"), json!(true))
        ]
    );
    for conn in [4, 5] {
        let me = if conn == 4 { "bob" } else { "carol" };
        let heard: Vec<Value> = l.events(conn, "presence");
        assert!(
            heard.iter().all(|p| p["user"] != me),
            "{me} heard itself: {heard:?}"
        );
    }
}

#[test]
fn permissions_are_checked_before_anything_is_written() {
    let mut l = Loop::new(settings());
    l.user(1, "owner");
    l.user(2, "member");
    l.user(3, "outsider");
    l.ok(
        1,
        json!({"type": "group.create", "group": "club", "private": true}),
    );
    let writes_before = l.svc.metrics.batched;
    // a private group is not there for outsiders
    assert_eq!(
        l.error(2, json!({"type": "group.join", "group": "club"})),
        "not_found"
    );
    assert_eq!(
        l.error(3, json!({"type": "send", "to": "#club", "text": "hi"})),
        "not_found"
    );
    assert_eq!(
        l.svc.metrics.batched, writes_before,
        "refusals write nothing"
    );
    l.ok(
        1,
        json!({"type": "group.invite", "group": "club", "user": "member"}),
    );
    l.ok(2, json!({"type": "group.join", "group": "club"}));
    assert_eq!(
        l.error(
            2,
            json!({"type": "group.kick", "group": "club", "user": "owner"})
        ),
        "forbidden"
    );
    assert_eq!(
        l.error(2, json!({"type": "group.delete", "group": "club"})),
        "forbidden"
    );
    assert_eq!(
        l.error(1, json!({"type": "group.leave", "group": "club"})),
        "forbidden",
        "an owner hands the group over first"
    );
    l.ok(
        1,
        json!({"type": "group.kick", "group": "club", "user": "member", "ban": true}),
    );
    assert_eq!(
        l.error(2, json!({"type": "group.join", "group": "club"})),
        "not_found"
    );
    assert_eq!(
        l.error(2, json!({"type": "history", "with": "#club"})),
        "not_found"
    );
    l.ok(1, json!({"type": "group.delete", "group": "club"}));
    assert_eq!(
        l.error(1, json!({"type": "send", "to": "#club", "text": "gone"})),
        "not_found"
    );
}

#[test]
fn a_send_to_a_group_deleted_before_its_commit_is_not_found() {
    let mut l = Loop::new(settings());
    l.user(1, "owner");
    l.user(2, "member");
    l.ok(1, json!({"type": "group.create", "group": "brief"}));
    l.ok(2, json!({"type": "group.join", "group": "brief"}));
    // The deletion is out to the writer when the send is accepted.
    l.request(1, json!({"type": "group.delete", "group": "brief"}));
    l.end_iteration();
    let send = l.request(2, json!({"type": "send", "to": "#brief", "text": "late"}));
    l.settle();
    let reply = l.take(2).into_iter().find(|r| r["re"] == send).unwrap();
    assert_eq!(reply["code"], "not_found", "{reply}");
}

#[test]
fn recovery_pages_by_the_limit_and_says_whether_it_is_complete() {
    let mut s = settings();
    s.recovery_limit = 3;
    let mut l = Loop::new(s);
    l.user(1, "alice");
    l.user(2, "bob");
    for i in 0..5 {
        l.ok(
            1,
            json!({"type": "send", "to": "@bob", "text": format!("m{i}")}),
        );
    }
    l.open(3);
    let exp = START_MS / 1000 + 3600;
    let token = super::auth::sign_jwt(&json!({"sub": "bob", "exp": exp}), SECRET);
    l.request(3, json!({"type": "auth", "token": token, "since": 0}));
    l.settle();
    let got = l.take(3);
    let kinds: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ok", "message", "message", "message", "recovered"]);
    let texts: Vec<&Value> = got[1..4].iter().map(|m| &m["text"]).collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    let last = got[4]["last_msg_id"].as_i64().unwrap();
    assert_eq!(got[4]["complete"], false);
    assert_eq!(last, got[3]["msg_id"].as_i64().unwrap());
    l.request(3, json!({"type": "sync", "since": last}));
    l.settle();
    let rest = l.take(3);
    assert_eq!(rest[0]["type"], "ok");
    let texts: Vec<&Value> = rest
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|m| &m["text"])
        .collect();
    assert_eq!(texts, ["m3", "m4"]);
    let done = rest.last().unwrap();
    assert_eq!(
        (done["type"].as_str(), &done["complete"]),
        (Some("recovered"), &json!(true))
    );
}

#[test]
fn a_closing_connection_ends_after_the_replies_it_is_owed() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    let id = l.request(
        1,
        json!({"type": "send", "to": "@bob", "text": "last words"}),
    );
    l.svc.finish_after_replies(1);
    l.take_effects();
    assert!(l.finished.is_empty(), "the send is still owed its reply");
    l.end_iteration();
    assert!(l.commit());
    assert_eq!(ids(&l.take(1)), [id]);
    assert_eq!(l.finished, [1], "then the connection may end");
    // One that is owed nothing ends at once.
    l.svc.finish_after_replies(2);
    l.take_effects();
    assert_eq!(l.finished, [1, 2]);
}

#[test]
fn replies_for_a_closed_connection_do_not_reach_the_next_one_in_its_slot() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    l.request(
        1,
        json!({"type": "send", "to": "@bob", "text": "and goodbye"}),
    );
    l.end_iteration();
    l.svc.close(1);
    l.open(1); // a new connection in the same slot
    assert!(l.commit());
    assert!(l.take(1).iter().all(|v| v["type"] != "ok"), "no stray ok");
    assert_eq!(
        l.events(2, "message").len(),
        1,
        "the message still went out"
    );
}

#[test]
fn a_login_whose_connection_closed_before_its_commit_brings_nobody_online() {
    let mut l = Loop::new(settings());
    l.open(1);
    let exp = START_MS / 1000 + 3600;
    let token = super::auth::sign_jwt(&json!({"sub": "ghost", "exp": exp}), SECRET);
    // A JWT user unknown here is created first: the connection is authenticated after the commit.
    l.request(1, json!({"type": "auth", "token": token}));
    l.end_iteration();
    l.svc.close(1);
    assert!(l.commit());
    assert_eq!(l.svc.users_online(), 0);
}

fn members(l: &Loop, group: &str) -> Vec<(String, crate::store::Role)> {
    let gid = l.svc.store.group(group).unwrap().unwrap().id;
    l.svc.store.members(gid).unwrap()
}

/// Two requests checked against the same state in one iteration, from two connections: the
/// second one's write finds the state changed and does nothing.
#[test]
fn group_changes_racing_each_other_never_leave_a_group_without_one_owner() {
    use crate::store::Role;
    let mut l = Loop::new(settings());
    l.user(1, "olga");
    l.user(2, "anna");
    l.user(3, "bob");
    l.user(4, "olga");
    l.ok(1, json!({"type": "group.create", "group": "g"}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.ok(3, json!({"type": "group.join", "group": "g"}));
    // anna leaves while olga hands her the group.
    let leave = l.request(2, json!({"type": "group.leave", "group": "g"}));
    let hand = l.request(
        1,
        json!({"type": "group.role", "group": "g", "user": "anna", "role": "owner"}),
    );
    l.settle();
    let replies: Vec<Value> = l.take(2).into_iter().chain(l.take(1)).collect();
    let code = |id: u64| replies.iter().find(|r| r["re"] == id).unwrap()["code"].clone();
    assert_eq!((code(leave), code(hand)), (Value::Null, json!("conflict")));
    let owners = |l: &Loop| -> Vec<String> {
        members(l, "g")
            .into_iter()
            .filter(|(_, r)| *r == Role::Owner)
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(owners(&l), ["olga"]);
    // olga's two connections hand it over to two people at once: one wins.
    l.request(
        1,
        json!({"type": "group.role", "group": "g", "user": "bob", "role": "owner"}),
    );
    l.request(4, json!({"type": "group.join", "group": "g"}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.request(
        4,
        json!({"type": "group.role", "group": "g", "user": "anna", "role": "owner"}),
    );
    l.settle();
    assert_eq!(owners(&l).len(), 1, "{:?}", members(&l, "g"));
}

#[test]
fn a_role_change_racing_a_leave_does_not_bring_the_member_back() {
    let mut l = Loop::new(settings());
    l.user(1, "olga");
    l.user(2, "anna");
    l.ok(1, json!({"type": "group.create", "group": "g"}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.request(2, json!({"type": "group.leave", "group": "g"}));
    let promote = l.request(
        1,
        json!({"type": "group.role", "group": "g", "user": "anna", "role": "admin"}),
    );
    l.settle();
    let reply = l.take(1).into_iter().find(|r| r["re"] == promote).unwrap();
    assert_eq!(reply["code"], "conflict");
    assert!(members(&l, "g").iter().all(|(n, _)| n != "anna"));
}

#[test]
fn a_send_checked_before_a_kick_and_stored_after_it_is_refused() {
    let mut l = Loop::new(settings());
    l.user(1, "olga");
    l.user(2, "anna");
    l.ok(1, json!({"type": "group.create", "group": "g"}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.request(
        1,
        json!({"type": "group.kick", "group": "g", "user": "anna"}),
    );
    l.end_iteration();
    let send = l.request(2, json!({"type": "send", "to": "#g", "text": "one more"}));
    l.settle();
    let reply = l.take(2).into_iter().find(|r| r["re"] == send).unwrap();
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(l.events(1, "message").is_empty());
}

#[test]
fn a_second_delete_of_a_deleted_group_touches_the_new_one_of_that_name_not() {
    let mut l = Loop::new(settings());
    l.user(1, "olga");
    l.user(2, "bob");
    l.user(3, "olga");
    l.ok(1, json!({"type": "group.create", "group": "g"}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.request(1, json!({"type": "group.delete", "group": "g"}));
    l.end_iteration();
    l.request(2, json!({"type": "group.create", "group": "g"}));
    let again = l.request(3, json!({"type": "group.delete", "group": "g"}));
    l.settle();
    assert!(l.svc.store.group("g").unwrap().is_some());
    assert_eq!(l.events(2, "group.deleted").len(), 1);
    let reply = l.take(3).into_iter().find(|r| r["re"] == again).unwrap();
    assert_eq!(reply["code"], "not_found");
    l.ok(2, json!({"type": "send", "to": "#g", "text": "still mine"}));
}

/// A message committed but not yet delivered must reach a connection once: live, not also in
/// a replay.
#[test]
fn a_replay_never_repeats_what_is_delivered_live() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.open(9);
    l.request(
        9,
        json!({"type": "register", "user": "carol", "password": "long enough"}),
    );
    l.settle();
    // The login's session and alice's message in one batch.
    l.open(3);
    l.request(
        3,
        json!({"type": "login", "user": "carol", "password": "long enough", "since": 0}),
    );
    l.end_iteration();
    l.answer_passwords();
    l.request(1, json!({"type": "send", "to": "@carol", "text": "hi"}));
    l.settle();
    assert_eq!(l.events(3, "message").len(), 1);
    // A sync while a committed batch is not yet collected.
    l.user(2, "bob");
    l.request(1, json!({"type": "send", "to": "@bob", "text": "hello"}));
    l.end_iteration();
    let batch = l.commits.pop().unwrap();
    let results = l.svc.store.apply(batch).map(|(w, _)| w);
    l.request(2, json!({"type": "sync", "since": 0}));
    l.svc.committed(
        Committed {
            results,
            took: Duration::ZERO,
        },
        l.now,
    );
    l.take_effects();
    let got: Vec<Value> = l.events(2, "message");
    assert_eq!(got.len(), 1, "{got:?}");
}

#[test]
fn empty_binary_messages_held_behind_an_upload_are_bounded() {
    let mut l = Loop::new(settings());
    l.user(1, "alice");
    l.user(2, "bob");
    l.request(1, json!({"type": "send", "to": "@bob", "text": "pending"}));
    l.request(
        1,
        json!({"type": "file.upload", "to": "@bob", "name": "f", "size": 1}),
    );
    for _ in 0..super::held::MAX_HELD_PIECES + 1 {
        l.svc.message(1, Opcode::Binary, Vec::new(), l.now);
    }
    l.take_effects();
    assert_eq!(l.closed, [1], "closed with 1008 past the bound");
}

/// A replay larger than one step waits for the queue to drain between steps; meanwhile a live
/// message is not delivered out of order but read by a later step, and later requests are
/// answered after `recovered`.
#[test]
fn a_replay_goes_out_in_steps_as_the_queue_drains() {
    let mut s = settings();
    s.max_text_chars = 4000;
    let mut l = Loop::new(s);
    l.user(1, "alice");
    l.user(2, "bob");
    let heavy = "\u{1}".repeat(4000);
    for _ in 0..30 {
        l.ok(1, json!({"type": "send", "to": "@bob", "text": heavy}));
    }
    l.hold_drains = true;
    l.open(3);
    let exp = START_MS / 1000 + 3600;
    let token = super::auth::sign_jwt(&json!({"sub": "bob", "exp": exp}), SECRET);
    l.request(3, json!({"type": "auth", "token": token, "since": 0}));
    let whoami = l.request(3, json!({"type": "whoami"}));
    l.settle();
    let first = l.take(3);
    assert_eq!(first[0]["type"], "ok");
    let step = first.iter().filter(|v| v["type"] == "message").count();
    assert!((1..30).contains(&step), "one step of about 256 KiB: {step}");
    assert_eq!(first.len(), step + 1, "nothing else yet: {first:?}");
    // A live message while the replay waits goes to the store, not to the connection.
    let live = l.ok(1, json!({"type": "send", "to": "@bob", "text": "live"}));
    assert!(l.events(3, "message").is_empty());
    let mut rest = Vec::new();
    for _ in 0..100 {
        l.drain_queues();
        rest.extend(l.take(3));
        if rest.iter().any(|v| v["re"] == whoami) {
            break;
        }
    }
    let ids: Vec<i64> = first
        .iter()
        .chain(&rest)
        .filter(|v| v["type"] == "message")
        .map(|m| m["msg_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 31, "every message once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(ids.last(), live["msg_id"].as_i64().as_ref());
    let kinds: Vec<&str> = rest
        .iter()
        .rev()
        .take(2)
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ok", "recovered"],
        "the whoami reply after `recovered`"
    );
}

/// A JWT for `name` expiring `secs` after the test's start.
fn jwt_for(name: &str, secs: i64) -> String {
    super::auth::sign_jwt(&json!({"sub": name, "exp": START_MS / 1000 + secs}), SECRET)
}

/// Registers and logs `conn` in as `name`; the session token.
fn login(l: &mut Loop, conn: ConnId, name: &str) -> String {
    let password = format!("password-{name}");
    let register = json!({"type": "register", "user": name, "password": password});
    if l.svc.store.user(name).unwrap().is_none() {
        l.ok(conn, register);
    }
    let reply = l.ok(
        conn,
        json!({"type": "login", "user": name, "password": password}),
    );
    reply["token"].as_str().unwrap().to_string()
}

#[test]
fn logout_ends_the_session_everywhere_it_is_held_and_expiry_ends_the_rest() {
    let mut l = Loop::new(settings());
    l.open(1);
    let token = login(&mut l, 1, "alice");
    l.open(2);
    l.ok(2, json!({"type": "auth", "token": token}));
    l.open(3);
    login(&mut l, 3, "alice");

    l.request(1, json!({"type": "logout"}));
    l.settle();
    assert!(l.events(1, "session_ended").is_empty(), "the ok tells it");
    let ended = json!({"type": "session_ended", "reason": "logout"});
    assert_eq!(l.events(2, "session_ended"), [ended]);
    assert!(l.events(3, "session_ended").is_empty(), "another token");
    assert_eq!(l.error(2, json!({"type": "whoami"})), "unauthenticated");
    assert_eq!(l.svc.users_online(), 1);

    // The third connection's session (an hour long) ends at its expiry, not a moment before.
    let expires = START_MS + 3_600_000;
    let wake = l.svc.next_expiry(l.now).expect("one session watched");
    assert_eq!(wake - l.now.mono, Duration::from_secs(3600));
    l.now.wall_ms = expires - 1;
    l.end_iteration();
    assert!(l.events(3, "session_ended").is_empty());
    l.now.wall_ms = expires;
    l.end_iteration();
    let ended = json!({"type": "session_ended", "reason": "expired"});
    assert_eq!(l.events(3, "session_ended"), [ended]);
    assert_eq!(l.svc.users_online(), 0);
    assert!(l.svc.next_expiry(l.now).is_none());
}

#[test]
fn a_fresh_jwt_on_the_connection_moves_its_expiry_and_another_user_is_refused() {
    let skew = super::auth::CLOCK_SKEW_MS;
    let mut l = Loop::new(settings());
    l.user(1, "bob");
    l.ok(1, json!({"type": "group.create", "group": "g"}));
    l.open(2);
    l.ok(2, json!({"type": "auth", "token": jwt_for("alice", 60)}));
    l.ok(2, json!({"type": "group.join", "group": "g"}));
    l.take(1);
    let reply = l.ok(2, json!({"type": "auth", "token": jwt_for("alice", 600)}));
    assert_eq!(reply["user"], "alice");
    assert!(l.events(1, "presence").is_empty(), "no flicker of presence");
    l.now.wall_ms = START_MS + 60_000 + skew;
    l.end_iteration();
    assert!(l.events(2, "session_ended").is_empty());
    let bobs = json!({"type": "auth", "token": jwt_for("bob", 600)});
    assert_eq!(l.error(2, bobs), "conflict");
    assert_eq!(l.ok(2, json!({"type": "whoami"}))["user"], "alice");

    l.now.wall_ms = START_MS + 600_000 + skew;
    l.end_iteration();
    assert_eq!(l.events(2, "session_ended").len(), 1);
    let offline = l.events(1, "presence");
    assert_eq!(offline.len(), 1);
    assert_eq!(
        (&offline[0]["user"], &offline[0]["online"]),
        (&json!("alice"), &json!(false))
    );
    assert_eq!(l.error(2, json!({"type": "whoami"})), "unauthenticated");
    // It may authenticate again, as anyone.
    l.ok(2, json!({"type": "auth", "token": jwt_for("bob", 7200)}));
    assert_eq!(l.ok(2, json!({"type": "whoami"}))["user"], "bob");
}

/// The joins of one commit reach each other member as one shared buffer; the joiners hear of
/// their own join at once, and not again in the buffer.
#[test]
fn joins_of_one_commit_are_announced_together() {
    let mut l = Loop::new(settings());
    l.user(1, "owner");
    l.ok(1, json!({"type": "group.create", "group": "club"}));
    l.user(2, "bystander");
    l.ok(2, json!({"type": "group.join", "group": "club"}));
    l.take(1);
    l.take(2);
    for (conn, name) in [(3, "ann"), (4, "ben"), (5, "cat")] {
        l.user(conn, name);
    }
    for conn in [3, 4, 5] {
        l.request(conn, json!({"type": "group.join", "group": "club"}));
    }
    l.settle();
    let joined: Vec<Value> = l.events(2, "group.joined");
    let users: Vec<&str> = joined.iter().map(|e| e["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["ann", "ben", "cat"]);
    assert_eq!(l.shared[&2], [3], "one buffer of three events");
    // ann heard of her own join once, and of the two others in a buffer of two.
    let ann: Vec<Value> = l.events(3, "group.joined");
    let users: Vec<&str> = ann.iter().map(|e| e["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["ann", "ben", "cat"]);
    assert_eq!(l.shared[&3], [2]);
}

/// Past `--large-group` members, a join is announced to the joiner only.
#[test]
fn a_large_group_announces_joins_only_to_the_joiner() {
    let mut s = settings();
    s.large_group = 2;
    let mut l = Loop::new(s);
    l.user(1, "owner");
    l.ok(1, json!({"type": "group.create", "group": "big"}));
    l.user(2, "first");
    l.ok(2, json!({"type": "group.join", "group": "big"}));
    assert_eq!(
        l.events(1, "group.joined").len(),
        1,
        "two members: announced"
    );
    l.user(3, "second");
    l.request(3, json!({"type": "group.join", "group": "big"}));
    l.settle();
    assert_eq!(l.events(3, "group.joined").len(), 1, "the joiner hears");
    assert!(
        l.events(1, "group.joined").is_empty(),
        "three members: not announced"
    );
    assert!(l.events(2, "group.joined").is_empty());
    l.request(3, json!({"type": "group.leave", "group": "big"}));
    l.settle();
    assert_eq!(l.events(3, "group.left").len(), 1);
    // Back to two members: announced again.
    assert_eq!(l.events(1, "group.left").len(), 1);
}
