//! `joins`: newcomers join one large group at a steady rate while a member of it asks the server
//! `whoami` every few milliseconds. What the member waits for its answers shows what the joins
//! cost everyone else (membership announcements to a group are the expensive part).

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chatd::ws::Opcode;
use serde_json::json;

use crate::pool::{Net, Pool};
use crate::scenarios::{chat_connections, contains, request_all, Report};
use crate::stats::{sample, Histogram};
use crate::Args;

/// How often the bystander asks.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// Runs the scenario: `members` in the group first, then `newcomers` joining at `rate` per
/// second during the measured part.
pub fn joins(
    args: &Args,
    sources: &[Ipv4Addr],
    members: usize,
    newcomers: usize,
    rate: f64,
) -> io::Result<Report> {
    let mut pool = Pool::new(false)?;
    let mut events = Vec::new();
    let run = std::process::id();
    let name = format!("joins{run}");
    let users: Vec<String> = (0..members.max(2)).map(|i| format!("j{run}-{i}")).collect();
    let (ids, failed) = chat_connections(&mut pool, args, sources, &users, &mut events)?;
    let mut report = Report::new("joins");
    report.errors = failed;
    let create = json!({"type": "group.create", "group": name});
    report.errors += request_all(&mut pool, &ids[..1], &create, &mut events)?;
    let join = json!({"type": "group.join", "group": name});
    report.errors += request_all(&mut pool, &ids[1..], &join, &mut events)?;
    let setup = Instant::now();
    quiet(&mut pool, &mut events)?;
    report
        .extra
        .push(("setup_drain_s".into(), setup.elapsed().as_secs_f64()));
    let late: Vec<String> = (0..newcomers).map(|i| format!("n{run}-{i}")).collect();
    let (late_ids, failed) = chat_connections(&mut pool, args, sources, &late, &mut events)?;
    report.errors += failed;
    report.connections = ids.len() + late_ids.len();

    let bystander = ids[1];
    let join_text = json!({"type": "group.join", "id": "join", "group": name}).to_string();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    report.server_before = args.server_pid.and_then(sample);
    let start = Instant::now();
    let (mut next_join, mut next_probe) = (start, start);
    let mut probe_sent: Option<Instant> = None;
    let (mut joined, mut sent) = (0usize, 0usize);
    let mut waits = Histogram::default();
    let mut join_acks = Histogram::default();
    let mut join_started = Vec::with_capacity(late_ids.len());
    while joined < late_ids.len() || start.elapsed() < args.duration {
        if start.elapsed() > args.duration + Duration::from_secs(60) {
            break;
        }
        let now = Instant::now();
        while sent < late_ids.len() && now >= next_join {
            pool.send(late_ids[sent], Opcode::Text, join_text.as_bytes());
            join_started.push(now);
            sent += 1;
            next_join += interval;
        }
        if probe_sent.is_none() && now >= next_probe {
            let probe = json!({"type": "whoami", "id": "probe"}).to_string();
            pool.send(bystander, Opcode::Text, probe.as_bytes());
            probe_sent = Some(now);
            next_probe = now + PROBE_EVERY;
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(1)), &mut events)?;
        for e in events.drain(..) {
            match e {
                Net::Message(id, d) if id == bystander && contains(&d, b"\"re\":\"probe\"") => {
                    if let Some(at) = probe_sent.take() {
                        waits.record(at.elapsed());
                    }
                }
                Net::Message(id, d) if contains(&d, b"\"re\":\"join\"") => {
                    if let Some(i) = late_ids.iter().position(|&x| x == id) {
                        join_acks.record(join_started[i].elapsed());
                    }
                    if !contains(&d, b"\"ok\"") {
                        report.errors += 1;
                    }
                    joined += 1;
                }
                Net::Closed(..) => report.errors += 1,
                _ => {}
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.server_after = args.server_pid.and_then(sample);
    report.messages = joined as u64;
    report.lost = (sent - joined) as u64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    report
        .extra
        .push(("bystander_p50_ms".into(), ms(waits.quantile(0.5))));
    report
        .extra
        .push(("bystander_p99_ms".into(), ms(waits.quantile(0.99))));
    report
        .extra
        .push(("bystander_max_ms".into(), ms(waits.quantile(1.0))));
    report.latency = waits;
    report.second = Some(("join".into(), join_acks));
    Ok(report)
}

/// Waits until nothing has arrived for half a second (the setup's announcements drained).
fn quiet(pool: &mut Pool, events: &mut Vec<Net>) -> io::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) && Instant::now() < give_up {
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        if !events.is_empty() {
            quiet_since = Instant::now();
        }
    }
    Ok(())
}
