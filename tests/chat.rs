//! Accounts, tokens, groups and permissions over the real server (protocol v1).

mod support;

use std::time::Duration;

use chatd::chat::auth::sign_jwt;
use serde_json::{json, Value};
use support::chat::{self, session, user, Client, DataDir};

fn now_secs() -> i64 {
    chatd::chat::now_ms() / 1000
}

#[test]
fn register_login_whoami_logout() {
    let dir = DataDir::new("accounts");
    let server = chat::start(&dir, &[]);
    let mut c = Client::connect(&server);
    let r = c.ok(json!({"type": "register", "user": "alice", "password": "wonderland"}));
    assert_eq!(r["user"], "alice");
    // register does not authenticate
    c.err(json!({"type": "whoami"}), "unauthenticated");
    c.err(
        json!({"type": "register", "user": "alice", "password": "another1"}),
        "conflict",
    );
    let r = c.ok(json!({"type": "login", "user": "alice", "password": "wonderland"}));
    assert_eq!(r["user"], "alice");
    let token = r["token"].as_str().unwrap();
    assert!(token.len() >= 43, "256-bit token: {token}");
    let expires = r["expires"].as_i64().unwrap();
    let in_30_days = chatd::chat::now_ms() + 30 * 86_400_000;
    assert!((expires - in_30_days).abs() < 60_000, "{expires}");
    let r = c.ok(json!({"type": "whoami"}));
    assert_eq!(r["user"], "alice");
    assert_eq!(r["groups"], json!([]));
    c.err(
        json!({"type": "login", "user": "alice", "password": "wonderland"}),
        "conflict",
    );
    c.ok(json!({"type": "logout"}));
    c.err(json!({"type": "whoami"}), "unauthenticated");
    // the token is revoked for everyone
    let mut other = Client::connect(&server);
    other.err(json!({"type": "auth", "token": token}), "unauthenticated");
    // and the password still works
    c.ok(json!({"type": "login", "user": "alice", "password": "wonderland"}));
    // tokens and passwords never reach the log
    let log = server.log();
    assert!(!log.contains(token));
    assert!(!log.contains("wonderland"));
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let dir = DataDir::new("login");
    let server = chat::start(&dir, &[]);
    let (_alice, _) = user(&server, "alice");
    let mut c = Client::connect(&server);
    let wrong = c.err(
        json!({"type": "login", "user": "alice", "password": "not-her-password"}),
        "unauthenticated",
    );
    let unknown = c.err(
        json!({"type": "login", "user": "nobody", "password": "whatever1"}),
        "unauthenticated",
    );
    assert_eq!(wrong["message"], unknown["message"]);
    c.err(
        json!({"type": "auth", "token": "made-up"}),
        "unauthenticated",
    );
}

#[test]
fn validation_and_malformed_requests_keep_the_connection() {
    let dir = DataDir::new("validation");
    let server = chat::start(&dir, &[]);
    let mut c = Client::connect(&server);
    for name in ["", "Alice", "a b", "x/y", &"a".repeat(33)] {
        c.err(
            json!({"type": "register", "user": name, "password": "password1"}),
            "bad_request",
        );
    }
    c.err(
        json!({"type": "register", "user": "bob", "password": "short"}),
        "bad_request",
    );
    c.err(
        json!({"type": "register", "user": "bob", "password": "p".repeat(1025)}),
        "bad_request",
    );
    c.err(json!({"type": "register", "user": "bob"}), "bad_request");
    c.err(json!({"type": "teleport"}), "bad_request");
    c.err(json!({"type": "whoami"}), "unauthenticated");
    c.err(json!({"type": "group.list"}), "unauthenticated");
    // not JSON, not an object, no type: error replies without `re`
    for bad in ["{not json", "[1,2,3]", "{\"id\": 5}", "\"text\""] {
        c.send_text(bad);
        let v = c.next().unwrap();
        assert_eq!(v["type"], "error", "{bad}");
        assert_eq!(v["code"], "bad_request");
    }
    // string ids are echoed as given
    c.send_text(r#"{"type":"whoami","id":"q-1"}"#);
    let v = c.next().unwrap();
    assert_eq!(v["re"], "q-1");
    // deeply nested JSON is refused, not a crash
    c.send_text(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
    assert_eq!(c.next().unwrap()["code"], "bad_request");
    // still usable
    c.ok(json!({"type": "register", "user": "bob", "password": "password1"}));
    let (mut alice, _) = user(&server, "alice");
    alice.err(json!({"type": "no.such.thing"}), "bad_request");
    alice.ok(json!({"type": "whoami"}));
}

#[test]
fn replies_keep_request_order_across_password_work() {
    let dir = DataDir::new("order");
    let server = chat::start(&dir, &[]);
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "register", "user": "carol", "password": "password1"}));
    // login (slow, off the loop) and whoami in one burst: whoami waits for the login.
    c.send_text(r#"{"type":"login","id":1,"user":"carol","password":"password1"}"#);
    c.send_text(r#"{"type":"whoami","id":2}"#);
    let first = c.next().unwrap();
    let second = c.next().unwrap();
    assert_eq!(
        (first["re"].clone(), first["type"].clone()),
        (json!(1), json!("ok"))
    );
    assert_eq!(second["re"], 2);
    assert_eq!(second["user"], "carol");
}

#[test]
fn binary_frames_outside_an_upload_are_refused() {
    let dir = DataDir::new("binary");
    let server = chat::start(&dir, &[]);
    let (_c, _) = user(&server, "dave");
    let mut ws = server.ws("/ws");
    ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
        .unwrap();
    let reply = ws.read().unwrap();
    let v: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(v["code"], "bad_request");
}

#[test]
fn closed_registration_is_forbidden() {
    let dir = DataDir::new("closed");
    let server = chat::start(&dir, &["--registration", "closed"]);
    let mut c = Client::connect(&server);
    c.err(
        json!({"type": "register", "user": "erin", "password": "password1"}),
        "forbidden",
    );
}

#[test]
fn auth_timeout_closes_unauthenticated_connections_only() {
    let dir = DataDir::new("authtimeout");
    let server = chat::start(&dir, &["--auth-timeout", "400ms"]);
    let (mut authed, _) = user(&server, "frank");
    let mut idle = Client::connect(&server);
    assert_eq!(idle.closed(), Some(1008));
    // Closing our side ends the server's lingering close at once; kept open, the count below
    // would wait for the server's close timeout (5 s, as long as the wait).
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    authed.ok(json!({"type": "whoami"}));
    // after logout the clock starts again
    authed.ok(json!({"type": "logout"}));
    assert_eq!(authed.closed(), Some(1008));
    drop(authed);
    let closed = server.wait_metric(
        "chatd_connections_closed_total{reason=\"auth_timeout\"}",
        Duration::from_secs(5),
        |v| v >= 2.0,
    );
    assert_eq!(closed, 2.0);
}

#[test]
fn jwt_accept_and_reject() {
    let dir = DataDir::new("jwt");
    let secret = "s3cret-for-tests-of-32-bytes-or-more";
    let server = chat::start(&dir, &["--jwt-secret", secret]);
    let exp = now_secs() + 300;
    let mut c = Client::connect(&server);
    let good = sign_jwt(&json!({"sub": "gina", "exp": exp}), secret.as_bytes());
    let r = c.ok(json!({"type": "auth", "token": good}));
    assert_eq!(r["user"], "gina");
    assert_eq!(c.ok(json!({"type": "whoami"}))["user"], "gina");
    // the JWT user was created and is a user like any other
    let (mut h, _) = user(&server, "hank");
    h.ok(json!({"type": "group.create", "group": "g"}));
    h.ok(json!({"type": "group.invite", "group": "g", "user": "gina"}));
    let rejects = [
        sign_jwt(&json!({"sub": "gina", "exp": exp}), b"wrong secret"),
        sign_jwt(
            &json!({"sub": "gina", "exp": now_secs() - 120}),
            secret.as_bytes(),
        ),
        sign_jwt(&json!({"sub": "gina"}), secret.as_bytes()),
        sign_jwt(
            &json!({"sub": "gina", "exp": exp, "nbf": now_secs() + 600}),
            secret.as_bytes(),
        ),
        sign_jwt(&json!({"sub": "Not A Name", "exp": exp}), secret.as_bytes()),
        "a.b.c".to_string(),
    ];
    for token in rejects {
        let mut c = Client::connect(&server);
        c.err(json!({"type": "auth", "token": token}), "unauthenticated");
    }
    // a JWT user has no password to log in with
    let mut c = Client::connect(&server);
    c.err(
        json!({"type": "login", "user": "gina", "password": "anything1"}),
        "unauthenticated",
    );
}

#[test]
fn jwt_without_a_configured_secret_is_refused() {
    let dir = DataDir::new("nojwt");
    let server = chat::start(&dir, &[]);
    let token = sign_jwt(
        &json!({"sub": "ivy", "exp": now_secs() + 60}),
        b"any secret of at least 32 bytes!",
    );
    let mut c = Client::connect(&server);
    c.err(json!({"type": "auth", "token": token}), "unauthenticated");
}

#[test]
fn group_lifecycle_and_events() {
    let dir = DataDir::new("groups");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "olga");
    let (mut m, m_token) = user(&server, "mike");
    let mut m2 = session(&server, &m_token);

    owner.ok(json!({"type": "group.create", "group": "rust"}));
    owner.err(json!({"type": "group.create", "group": "rust"}), "conflict");
    owner.err(
        json!({"type": "group.create", "group": "Bad Name"}),
        "bad_request",
    );
    m.err(json!({"type": "group.join", "group": "nope"}), "not_found");

    m.ok(json!({"type": "group.join", "group": "rust"}));
    let ev = owner.event("group.joined");
    assert_eq!(
        ev,
        json!({"type": "group.joined", "group": "rust", "user": "mike"})
    );
    // every session of the user concerned
    assert_eq!(m2.event("group.joined")["user"], "mike");
    m.err(json!({"type": "group.join", "group": "rust"}), "conflict");

    let members = m.ok(json!({"type": "group.members", "group": "rust"}));
    assert_eq!(
        members["members"],
        json!([
            {"user": "mike", "role": "member", "online": true},
            {"user": "olga", "role": "owner", "online": true}
        ])
    );
    let list = m.ok(json!({"type": "group.list"}));
    assert_eq!(
        list["groups"],
        json!([{"group": "rust", "private": false, "members": 2, "role": "member"}])
    );
    let who = m.ok(json!({"type": "whoami"}));
    assert_eq!(who["groups"], json!(["rust"]));

    m.ok(json!({"type": "group.leave", "group": "rust"}));
    assert_eq!(owner.event("group.left")["user"], "mike");
    assert_eq!(m2.event("group.left")["user"], "mike");
    m.err(json!({"type": "group.leave", "group": "rust"}), "forbidden");
}

#[test]
fn permission_matrix() {
    let dir = DataDir::new("perms");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "owner");
    let (mut admin, _) = user(&server, "admin1");
    let (mut admin2, _) = user(&server, "admin2");
    let (mut member, _) = user(&server, "member1");
    let (mut member2, _) = user(&server, "member2");
    let (mut outsider, _) = user(&server, "outsider");
    let (_, root_token) = user(&server, "root");
    // A server admin is granted by the operator to an existing account, and holds from its
    // next authentication.
    let granted = chat::operator(&dir, &["admin", "grant", "root"]);
    assert!(granted.status.success(), "{granted:?}");
    let mut root = session(&server, &root_token);

    owner.ok(json!({"type": "group.create", "group": "club", "private": true}));
    // a private group needs an invitation; without one it is not there at all
    member.err(json!({"type": "group.join", "group": "club"}), "not_found");
    // members of a private group are hidden from outsiders, and it is not listed to them
    outsider.err(
        json!({"type": "group.members", "group": "club"}),
        "not_found",
    );
    assert_eq!(
        outsider.ok(json!({"type": "group.list"}))["groups"],
        json!([])
    );
    for (c, name) in [
        (&mut admin, "admin1"),
        (&mut admin2, "admin2"),
        (&mut member, "member1"),
        (&mut member2, "member2"),
    ] {
        owner.ok(json!({"type": "group.invite", "group": "club", "user": name}));
        let ev = c.event("group.invited");
        assert_eq!(
            ev,
            json!({"type": "group.invited", "group": "club", "by": "owner"})
        );
        c.ok(json!({"type": "group.join", "group": "club"}));
    }
    owner.err(
        json!({"type": "group.invite", "group": "club", "user": "member1"}),
        "conflict",
    );
    owner.err(
        json!({"type": "group.invite", "group": "club", "user": "ghost"}),
        "not_found",
    );
    owner.ok(json!({"type": "group.role", "group": "club", "user": "admin1", "role": "admin"}));
    assert_eq!(
        member.event("group.role"),
        json!({"type": "group.role", "group": "club", "user": "admin1", "role": "admin"})
    );
    owner.ok(json!({"type": "group.role", "group": "club", "user": "admin2", "role": "admin"}));
    owner.err(
        json!({"type": "group.role", "group": "club", "user": "admin2", "role": "boss"}),
        "bad_request",
    );

    // member cannot invite, kick or change roles
    member.err(
        json!({"type": "group.invite", "group": "club", "user": "outsider"}),
        "forbidden",
    );
    member.err(
        json!({"type": "group.kick", "group": "club", "user": "member2"}),
        "forbidden",
    );
    member.err(
        json!({"type": "group.role", "group": "club", "user": "member2", "role": "admin"}),
        "forbidden",
    );
    // admin cannot kick an admin, nor the owner, nor change roles
    admin.err(
        json!({"type": "group.kick", "group": "club", "user": "admin2"}),
        "forbidden",
    );
    admin.err(
        json!({"type": "group.kick", "group": "club", "user": "owner"}),
        "forbidden",
    );
    admin.err(
        json!({"type": "group.role", "group": "club", "user": "member2", "role": "admin"}),
        "forbidden",
    );
    admin.err(
        json!({"type": "group.delete", "group": "club"}),
        "forbidden",
    );
    // admin kicks a member, with a ban
    admin.ok(json!({"type": "group.kick", "group": "club", "user": "member2", "ban": true}));
    assert_eq!(
        member2.event("group.kicked"),
        json!({"type": "group.kicked", "group": "club", "by": "admin1"})
    );
    assert_eq!(member.event("group.left")["user"], "member2");
    // the kicked user's sessions see the leave too, with who did it
    assert_eq!(
        member2.event("group.left"),
        json!({"type": "group.left", "group": "club", "user": "member2", "by": "admin1"})
    );
    admin.err(
        json!({"type": "group.kick", "group": "club", "user": "member2"}),
        "not_found",
    );
    // banned: cannot rejoin (an outsider of a private group again); an invite clears the ban
    member2.err(json!({"type": "group.join", "group": "club"}), "not_found");
    admin.ok(json!({"type": "group.invite", "group": "club", "user": "member2"}));
    member2.ok(json!({"type": "group.join", "group": "club"}));
    // the owner cannot leave, nor kick itself
    owner.err(json!({"type": "group.leave", "group": "club"}), "forbidden");
    owner.err(
        json!({"type": "group.kick", "group": "club", "user": "owner"}),
        "forbidden",
    );
    // the owner kicks an admin
    owner.ok(json!({"type": "group.kick", "group": "club", "user": "admin2"}));
    // handing over: the old owner becomes admin and may then leave
    owner.ok(json!({"type": "group.role", "group": "club", "user": "admin1", "role": "owner"}));
    let members = member.ok(json!({"type": "group.members", "group": "club"}))["members"].clone();
    let role_of = |name: &str| {
        members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user"] == name)
            .map(|m| m["role"].clone())
    };
    assert_eq!(role_of("admin1"), Some(json!("owner")));
    assert_eq!(role_of("owner"), Some(json!("admin")));
    owner.ok(json!({"type": "group.leave", "group": "club"}));
    // only the owner (now admin1) or a server admin deletes
    member.err(
        json!({"type": "group.delete", "group": "club"}),
        "forbidden",
    );
    outsider.err(
        json!({"type": "group.delete", "group": "club"}),
        "not_found",
    );
    root.ok(json!({"type": "group.delete", "group": "club"}));
    assert_eq!(
        member.event("group.deleted"),
        json!({"type": "group.deleted", "group": "club", "by": "root"})
    );
    member.err(
        json!({"type": "group.members", "group": "club"}),
        "not_found",
    );
    // a new group of the same name starts empty
    outsider.ok(json!({"type": "group.create", "group": "club"}));
    let members = outsider.ok(json!({"type": "group.members", "group": "club"}));
    assert_eq!(
        members["members"],
        json!([{"user": "outsider", "role": "owner", "online": true}])
    );
}

#[test]
fn server_admin_acts_as_owner() {
    let dir = DataDir::new("srvadmin");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "own");
    let (_, boss_token) = user(&server, "boss");
    let granted = chat::operator(&dir, &["admin", "grant", "boss"]);
    assert!(granted.status.success(), "{granted:?}");
    let mut boss = session(&server, &boss_token);
    let (mut m, _) = user(&server, "mem");
    owner.ok(json!({"type": "group.create", "group": "g", "private": true}));
    boss.ok(json!({"type": "group.members", "group": "g"}));
    boss.ok(json!({"type": "group.invite", "group": "g", "user": "mem"}));
    m.ok(json!({"type": "group.join", "group": "g"}));
    boss.ok(json!({"type": "group.role", "group": "g", "user": "mem", "role": "owner"}));
    let members = m.ok(json!({"type": "group.members", "group": "g"}));
    assert!(members["members"]
        .as_array()
        .unwrap()
        .contains(&json!({"user": "own", "role": "admin", "online": true})));
    boss.ok(json!({"type": "group.kick", "group": "g", "user": "own"}));
    boss.err(
        json!({"type": "group.kick", "group": "g", "user": "mem"}),
        "forbidden",
    );
}

#[test]
fn restart_keeps_users_sessions_groups_and_roles() {
    let dir = DataDir::new("restart");
    let token;
    {
        let server = chat::start(&dir, &[]);
        let (mut a, t) = user(&server, "anna");
        token = t;
        let (mut b, _) = user(&server, "ben");
        a.ok(json!({"type": "group.create", "group": "keep", "private": true}));
        a.ok(json!({"type": "group.invite", "group": "keep", "user": "ben"}));
        b.ok(json!({"type": "group.join", "group": "keep"}));
        a.ok(json!({"type": "group.role", "group": "keep", "user": "ben", "role": "admin"}));
    }
    let server = chat::start(&dir, &[]);
    // the session token survives
    let mut a = session(&server, &token);
    assert_eq!(a.ok(json!({"type": "whoami"}))["groups"], json!(["keep"]));
    let members = a.ok(json!({"type": "group.members", "group": "keep"}));
    assert_eq!(
        members["members"],
        json!([
            {"user": "anna", "role": "owner", "online": true},
            {"user": "ben", "role": "admin", "online": false}
        ])
    );
    // the password survives
    let mut b = Client::connect(&server);
    b.ok(json!({"type": "login", "user": "ben", "password": "password-ben"}));
    b.err(
        json!({"type": "register", "user": "anna", "password": "password1"}),
        "conflict",
    );
}

#[test]
fn login_rate_limit_per_address() {
    let dir = DataDir::new("loginrate");
    // FAST sets a generous limit; these flags come later and win.
    let server = chat::start(&dir, &["--login-rate", "1", "--login-burst", "3"]);
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "register", "user": "pat", "password": "password1"}));
    c.err(
        json!({"type": "login", "user": "pat", "password": "wrong-pass"}),
        "unauthenticated",
    );
    c.err(
        json!({"type": "login", "user": "pat", "password": "wrong-pass"}),
        "unauthenticated",
    );
    // a fourth attempt from the same address, even on a new connection
    let mut d = Client::connect(&server);
    d.err(
        json!({"type": "login", "user": "pat", "password": "password1"}),
        "rate_limited",
    );
}

#[test]
fn locked_database_answers_unavailable_and_recovers() {
    let dir = DataDir::new("locked");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "quinn");
    // Another process takes the write lock, as a stuck backup tool might.
    let lock = rusqlite::Connection::open(dir.path().join("chatd.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    a.err(
        json!({"type": "group.create", "group": "blocked"}),
        "unavailable",
    );
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    a.ok(json!({"type": "group.create", "group": "blocked"}));
}

#[test]
fn hostile_client_does_not_disturb_others() {
    let dir = DataDir::new("hostile");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "rita");
    // a client that sends a broken frame is closed alone
    let mut raw = server.raw_ws("/ws");
    use std::io::Write;
    raw.write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .unwrap(); // unmasked
    let mut hostile = Client::connect(&server);
    hostile.send_text(&"{".repeat(100_000));
    assert_eq!(hostile.next().unwrap()["code"], "bad_request");
    a.ok(json!({"type": "whoami"}));
}
