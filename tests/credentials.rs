//! Credentials over the real server: a connection's authentication ends when its token is
//! revoked or expires, and a fresh token extends it in band; JWT claims are bounded; server
//! admins are granted by the operator, never by a name.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatd::chat::auth::sign_jwt;
use serde_json::{json, Value};
use support::chat::{self, operator, session, user, Client, DataDir};

/// A secret of the length HS256 asks for.
const SECRET: &str = "credentials-test-secret-32-bytes-or-more";

fn now_secs() -> i64 {
    chatd::chat::now_ms() / 1000
}

fn jwt(claims: Value) -> String {
    sign_jwt(&claims, SECRET.as_bytes())
}

fn jwt_server(dir: &DataDir, more: &[&str]) -> support::Server {
    let mut args = vec!["--jwt-secret", SECRET];
    args.extend_from_slice(more);
    chat::start(dir, &args)
}

#[test]
fn logout_ends_the_session_on_every_connection_holding_the_token() {
    let dir = DataDir::new("logout-all");
    let server = chat::start(&dir, &[]);
    let (mut a, token) = user(&server, "alice");
    let mut b = session(&server, &token);
    // Another login of the same user holds another token, which the logout leaves alone.
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "login", "user": "alice", "password": "password-alice"}));

    a.ok(json!({"type": "logout"}));
    assert_eq!(
        b.event("session_ended"),
        json!({"type": "session_ended", "reason": "logout"})
    );
    b.err(json!({"type": "whoami"}), "unauthenticated");
    b.err(json!({"type": "auth", "token": token}), "unauthenticated");
    c.no_event("session_ended", Duration::from_millis(300));
    assert_eq!(c.ok(json!({"type": "whoami"}))["user"], "alice");
    // The connection told is unauthenticated, not closed: it may sign in again.
    b.ok(json!({"type": "login", "user": "alice", "password": "password-alice"}));
    assert_eq!(b.ok(json!({"type": "whoami"}))["user"], "alice");
}

#[test]
fn a_connection_ends_its_session_when_its_session_token_expires() {
    let dir = DataDir::new("session-expiry");
    let server = chat::start(&dir, &["--session-ttl", "2s"]);
    let (mut a, _) = user(&server, "alice");
    assert_eq!(a.ok(json!({"type": "whoami"}))["user"], "alice");
    assert_eq!(
        a.event("session_ended"),
        json!({"type": "session_ended", "reason": "expired"})
    );
    a.err(json!({"type": "whoami"}), "unauthenticated");
}

#[test]
fn a_connection_ends_its_session_when_its_jwt_expires() {
    let dir = DataDir::new("jwt-expiry");
    let server = jwt_server(&dir, &[]);
    // `exp` 28 s ago: the 30 s clock-skew allowance keeps the token valid for about 2 s more.
    let token = jwt(json!({"sub": "alice", "exp": now_secs() - 28}));
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "auth", "token": token}));
    let authenticated = Instant::now();
    assert_eq!(c.ok(json!({"type": "whoami"}))["user"], "alice");
    assert_eq!(
        c.event("session_ended"),
        json!({"type": "session_ended", "reason": "expired"})
    );
    assert!(
        authenticated.elapsed() >= Duration::from_millis(500),
        "ended before the token expired"
    );
    c.err(json!({"type": "whoami"}), "unauthenticated");
    c.err(json!({"type": "auth", "token": token}), "unauthenticated");
}

#[test]
fn a_fresh_token_sent_in_band_keeps_the_connection_authenticated() {
    let dir = DataDir::new("reauth");
    let server = jwt_server(&dir, &[]);
    let (_bob, _) = user(&server, "bob");
    let expiring = jwt(json!({"sub": "alice", "exp": now_secs() - 28}));
    let mut c = Client::connect(&server);
    c.ok(json!({"type": "auth", "token": expiring}));
    let fresh = jwt(json!({"sub": "alice", "exp": now_secs() + 300}));
    assert_eq!(
        c.ok(json!({"type": "auth", "token": fresh}))["user"],
        "alice"
    );
    c.no_event("session_ended", Duration::from_secs(4));
    assert_eq!(c.ok(json!({"type": "whoami"}))["user"], "alice");
    // Another user's token is refused, and so is a bad one; the connection stays as it was.
    let bobs = jwt(json!({"sub": "bob", "exp": now_secs() + 300}));
    c.err(json!({"type": "auth", "token": bobs}), "conflict");
    c.err(
        json!({"type": "auth", "token": "made-up"}),
        "unauthenticated",
    );
    assert_eq!(c.ok(json!({"type": "whoami"}))["user"], "alice");
}

#[test]
fn jwt_lifetimes_are_bounded_and_an_exp_in_milliseconds_is_refused() {
    let dir = DataDir::new("jwt-lifetime");
    // The default longest lifetime, 24 h.
    let server = jwt_server(&dir, &[]);
    let (now, day) = (now_secs(), 86_400);
    let refused = [
        // An issuer writing milliseconds would mint a token that never expires.
        jwt(json!({"sub": "gina", "exp": chatd::chat::now_ms() + 60_000})),
        jwt(json!({"sub": "gina", "exp": now + 2 * day})),
        jwt(json!({"sub": "gina", "exp": now + 60, "iat": now - 2 * day})),
    ];
    for token in refused {
        let mut c = Client::connect(&server);
        c.err(json!({"type": "auth", "token": token}), "unauthenticated");
    }
    let mut c = Client::connect(&server);
    let within = jwt(json!({"sub": "gina", "exp": now + 3600, "iat": now - 60}));
    c.ok(json!({"type": "auth", "token": within}));
}

#[test]
fn jwt_issuer_and_audience_are_checked_when_configured() {
    let dir = DataDir::new("jwt-iss-aud");
    let iss = "https://id.example";
    let server = jwt_server(&dir, &["--jwt-issuer", iss, "--jwt-audience", "chatd"]);
    let exp = now_secs() + 300;
    let accepted = [
        json!({"sub": "gina", "exp": exp, "iss": iss, "aud": "chatd"}),
        json!({"sub": "gina", "exp": exp, "iss": iss, "aud": ["web", "chatd"]}),
    ];
    for claims in accepted {
        let mut c = Client::connect(&server);
        c.ok(json!({"type": "auth", "token": jwt(claims)}));
    }
    let refused = [
        json!({"sub": "gina", "exp": exp, "iss": "https://other.example", "aud": "chatd"}),
        json!({"sub": "gina", "exp": exp, "aud": "chatd"}),
        json!({"sub": "gina", "exp": exp, "iss": iss, "aud": "web"}),
        json!({"sub": "gina", "exp": exp, "iss": iss, "aud": ["web", "mail"]}),
        json!({"sub": "gina", "exp": exp, "iss": iss}),
    ];
    for claims in refused {
        let mut c = Client::connect(&server);
        c.err(
            json!({"type": "auth", "token": jwt(claims.clone())}),
            "unauthenticated",
        );
    }
}

#[test]
fn a_jwt_secret_under_32_bytes_stops_the_server_at_start() {
    let dir = DataDir::new("short-secret");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["--listen", "127.0.0.1:0", "--jwt-secret", "bench-secret"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("CHATD_JWT_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chatd started with a 12-byte JWT secret");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains("--jwt-secret") && stderr.contains("32"),
        "{stderr}"
    );
}

#[test]
fn a_server_admin_is_granted_by_the_operator_not_by_a_name() {
    let dir = DataDir::new("admins");
    // The old way of naming admins, for a name anyone may register or sign a JWT for.
    let server = jwt_server(&dir, &["--admin", "root", "--admin", "boss"]);
    let (mut owner, _) = user(&server, "owner");
    owner.ok(json!({"type": "group.create", "group": "club"}));
    let (mut root, root_token) = user(&server, "root");
    root.err(
        json!({"type": "group.delete", "group": "club"}),
        "forbidden",
    );
    let mut boss = Client::connect(&server);
    let boss_token = jwt(json!({"sub": "boss", "exp": now_secs() + 300}));
    boss.ok(json!({"type": "auth", "token": boss_token}));
    boss.err(
        json!({"type": "group.delete", "group": "club"}),
        "forbidden",
    );

    // The operator grants it to the existing account, while the server runs; it applies from
    // the account's next authentication.
    let granted = operator(&dir, &["admin", "grant", "root"]);
    assert!(granted.status.success(), "{granted:?}");
    let listed = operator(&dir, &["admin", "list"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "root");
    let mut root = session(&server, &root_token);
    root.ok(json!({"type": "group.delete", "group": "club"}));

    // A revocation applies at once, on connections already open too.
    owner.ok(json!({"type": "group.create", "group": "club2"}));
    let revoked = operator(&dir, &["admin", "revoke", "root"]);
    assert!(revoked.status.success(), "{revoked:?}");
    root.err(
        json!({"type": "group.delete", "group": "club2"}),
        "forbidden",
    );
    // Only existing accounts can be granted.
    let unknown = operator(&dir, &["admin", "grant", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody"));
    // A data dir without a database is refused, not given a new one.
    let elsewhere = DataDir::new("admins-elsewhere");
    let mistyped = operator(&elsewhere, &["admin", "list"]);
    assert!(!mistyped.status.success());
    assert!(!elsewhere.path().join("chatd.db").exists());
}
