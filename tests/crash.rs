//! Crash safety: every acknowledged message survives a SIGKILL of the server, exactly once.
//!
//! The release server runs as a child process. Several clients send messages (group and
//! direct, each with a `client_id`) and record every `msg_id` the server acknowledges. At a
//! random moment the server is killed with SIGKILL; it is restarted on the same data dir, and
//! every acknowledged `msg_id` must be in the history of its conversation, once. Each client
//! then retries its last unacknowledged message with the same `client_id`: it is stored at most
//! once.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::chat::{Client, DataDir, FAST};
use support::Server;

const CLIENTS: usize = 4;
const ROUNDS: usize = 3;

/// Builds the release binary (its own lock, so this works inside `cargo test`).
fn release_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "--bin", "chatd"])
        .current_dir(&root)
        .status()
        .expect("run cargo build --release");
    assert!(status.success(), "release build failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join("chatd")
}

fn start(binary: &Path, dir: &DataDir) -> Server {
    let mut args = vec!["--data-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(&[
        "--recovery-limit",
        "1000000",
        "--command-rate",
        "100000",
        "--command-burst",
        "100000",
    ]);
    Server::start_binary(binary, &args)
}

fn login(server: &Server, name: &str) -> Client {
    let mut c = Client::connect(server);
    c.ok(json!({"type": "login", "user": name, "password": format!("password-{name}")}));
    c
}

/// A cheap pseudo-random number from the clock (no dependency for one number per round).
fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (nanos
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33)
        % n
}

/// What one client saw: acknowledged (msg_id, client_id) and the client_id it was waiting on.
#[derive(Default)]
struct Log {
    acked: Vec<(i64, String)>,
    in_flight: Option<(String, String, String)>, // (client_id, to, text)
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let binary = release_binary();
    for round in 0..ROUNDS {
        crash_round(&binary, round);
    }
}

fn crash_round(binary: &Path, round: usize) {
    let dir = DataDir::new("crash");
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("user{i}")).collect();
    let mut server = start(binary, &dir);
    {
        let mut c = Client::connect(&server);
        for n in &names {
            c.ok(json!({"type": "register", "user": n, "password": format!("password-{n}")}));
        }
        let mut owner = login(&server, &names[0]);
        owner.ok(json!({"type": "group.create", "group": "crash"}));
        for n in &names[1..] {
            login(&server, n).ok(json!({"type": "group.join", "group": "crash"}));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<Log>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = login(&server, &names[i]);
            let log = logs[i].clone();
            let stop = stop.clone();
            let peer = names[(i + 1) % CLIENTS].clone();
            thread::spawn(move || {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = if n % 3 == 0 {
                        format!("@{peer}")
                    } else {
                        "#crash".to_string()
                    };
                    let cid = format!("r{round}-c{i}-{n}");
                    let text = format!("message {n} from client {i}");
                    log.lock().unwrap().in_flight = Some((cid.clone(), to.clone(), text.clone()));
                    let reply = client.try_request(
                        json!({"type": "send", "to": to, "text": text, "client_id": cid}),
                    );
                    match reply {
                        Some(r) if r["type"] == "ok" => {
                            let mut log = log.lock().unwrap();
                            log.acked.push((r["msg_id"].as_i64().unwrap(), cid));
                            log.in_flight = None;
                        }
                        _ => break, // the server is gone
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(150 + random_below(600)));
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }

    let server = start(binary, &dir);
    let acked: Vec<(i64, String)> = logs
        .iter()
        .flat_map(|l| l.lock().unwrap().acked.clone())
        .collect();
    assert!(
        !acked.is_empty(),
        "round {round}: nothing was acknowledged before the kill"
    );

    // Everything each user can see, through recovery from 0.
    let mut stored: HashMap<i64, Value> = HashMap::new();
    for n in &names {
        let mut c = login(&server, n);
        c.ok(json!({"type": "sync", "since": 0}));
        loop {
            let v = c.next().expect("replay");
            if v["type"] == "recovered" {
                assert_eq!(v["complete"], true);
                break;
            }
            stored.insert(v["msg_id"].as_i64().unwrap(), v);
        }
    }
    let mut by_client_id: HashMap<String, Vec<i64>> = HashMap::new();
    for (id, m) in &stored {
        by_client_id
            .entry(m["client_id"].as_str().unwrap().to_string())
            .or_default()
            .push(*id);
    }
    for (id, cid) in &acked {
        let m = stored
            .get(id)
            .unwrap_or_else(|| panic!("round {round}: acknowledged msg_id {id} ({cid}) lost"));
        assert_eq!(m["client_id"], cid.as_str());
        assert_eq!(
            by_client_id[cid],
            vec![*id],
            "round {round}: {cid} stored more than once"
        );
    }

    // Retrying the message in flight at the kill stores it at most once.
    let before: HashSet<i64> = stored.keys().copied().collect();
    for (i, log) in logs.iter().enumerate() {
        let Some((cid, to, text)) = log.lock().unwrap().in_flight.clone() else {
            continue;
        };
        let mut c = login(&server, &names[i]);
        let first = c.ok(json!({"type": "send", "to": to, "text": text, "client_id": cid}));
        let again = c.ok(json!({"type": "send", "to": to, "text": text, "client_id": cid}));
        assert_eq!(first["msg_id"], again["msg_id"]);
        let id = first["msg_id"].as_i64().unwrap();
        if before.contains(&id) {
            // it had been stored before the kill (its ack was lost): the retry found it
            assert_eq!(by_client_id.get(&cid), Some(&vec![id]));
        }
    }
    eprintln!(
        "crash round {round}: {} acknowledged, {} stored, all acknowledged present once",
        acked.len(),
        stored.len()
    );
}
