//! Persisted messages per second into the embedded store, one transaction per message versus
//! one per batch (group commit), in both `--sync` modes.
//!
//! `cargo bench --bench group_commit` prints a table and one JSON line. It measures the store
//! alone, the way the loop uses it: `Store::apply` (what the store writer thread runs) with batches of 1, 16, 256 and
//! 4096 messages of 64 bytes.

use std::time::{Duration, Instant};

use chatd::store::{Batch, NewMessage, Store, Target, Write, Written};

fn main() {
    let total: i64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!(
        "{:<8} {:>6} {:>10} {:>12} {:>14}",
        "sync", "batch", "messages", "seconds", "messages/s"
    );
    let mut json = Vec::new();
    for full in [false, true] {
        for batch in [1usize, 16, 256, 4096] {
            // One transaction per message with a disk sync each is slow: fewer of those.
            let n = if batch == 1 { total / 10 } else { total };
            let (took, count) = run(full, batch, n);
            let rate = count as f64 / took.as_secs_f64();
            let mode = if full { "full" } else { "normal" };
            println!(
                "{mode:<8} {batch:>6} {count:>10} {:>12.3} {rate:>14.0}",
                took.as_secs_f64()
            );
            json.push(format!(
                "{{\"sync\":\"{mode}\",\"batch\":{batch},\"messages\":{count},\"per_sec\":{rate:.0}}}"
            ));
        }
    }
    println!(
        "{{\"bench\":\"group_commit\",\"results\":[{}]}}",
        json.join(",")
    );
}

fn run(full: bool, batch: usize, total: i64) -> (Duration, i64) {
    let dir =
        std::env::temp_dir().join(format!("chatd-bench-{}-{full}-{batch}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::open(&dir).expect("open store");
    store.set_synchronous(full).expect("synchronous");
    let user = |name: &str| Write::CreateUser {
        name: name.into(),
        password: None,
        created_ms: 0,
    };
    let (ids, _) = store
        .apply(Batch {
            writes: vec![user("alice"), user("bob")],
        })
        .expect("users");
    let [Written::Done(alice), Written::Done(bob)] = ids[..] else {
        panic!("users: {ids:?}");
    };
    let group = 1;
    let writes = vec![Write::CreateGroup {
        id: group,
        name: "bench".into(),
        private: false,
        owner: alice,
        created_ms: 0,
        limits: chatd::store::GroupLimits::NONE,
    }];
    store.apply(Batch { writes }).expect("group");
    let text = "x".repeat(64);
    let started = Instant::now();
    let mut id = 1;
    while id <= total {
        let writes: Vec<Write> = (0..batch as i64)
            .map(|k| NewMessage {
                id: id + k,
                sender: alice,
                to: if (id + k) % 4 == 0 {
                    Target::Direct(bob)
                } else {
                    Target::Group(group)
                },
                text: text.clone(),
                ts: id + k,
                client_id: Some(format!("c{}", id + k)),
                file: None,
            })
            .map(|message| Write::Message {
                message,
                part: None,
            })
            .collect();
        store.apply(Batch { writes }).expect("insert");
        id += batch as i64;
    }
    let took = started.elapsed();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    (took, id - 1)
}
