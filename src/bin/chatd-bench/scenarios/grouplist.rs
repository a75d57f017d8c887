//! `group-list`: what a long list of groups costs everyone else. Creator users make many
//! public groups; pollers then ask `group.list` at a steady rate (one request in flight each,
//! following `next` from page to page when the server pages, starting over at the end), and a
//! bystander's `whoami` round trip is measured, before the polling (quiet) and during it.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chatd::ws::Opcode;
use serde_json::{json, Value};

use super::{chat_connections, contains, Report, SETUP_TIMEOUT};
use crate::pool::{Net, Pool};
use crate::stats::{sample, Histogram};
use crate::Args;

/// Requests in flight per creator connection while the groups are made (below the server's 64
/// waiting requests).
const CREATE_WINDOW: usize = 32;
/// Connections that create groups, over all creators.
const CREATE_CONNECTIONS: usize = 16;
/// Quiet `whoami` round trips before the polling starts.
const QUIET_SAMPLES: usize = 200;

/// The scenario's shape.
pub struct Shape {
    /// Groups to create.
    pub groups: usize,
    /// Groups per creator user (the most one user may own).
    pub per_creator: usize,
    /// Connections polling `group.list`.
    pub pollers: usize,
    /// `group.list` requests per second per poller, at most.
    pub poll_rate: f64,
    /// `whoami` requests per second of the bystander, at most.
    pub probe_rate: f64,
}

/// Runs the scenario.
pub fn run(args: &Args, sources: &[Ipv4Addr], shape: Shape) -> io::Result<Report> {
    let mut pool = Pool::new(false)?;
    let mut events = Vec::new();
    let mut report = Report::new("group-list");
    let created = create_groups(&mut pool, args, sources, &shape, &mut events, &mut report)?;
    report.extra.push(("groups_created".into(), created as f64));
    let run = std::process::id();
    let mut users: Vec<String> = (0..shape.pollers).map(|i| format!("p{run}-{i}")).collect();
    users.push(format!("w{run}"));
    let (ids, failed) = chat_connections(&mut pool, args, sources, &users, &mut events)?;
    report.errors += failed;
    report.connections += ids.len();
    let (pollers, bystander) = ids.split_at(ids.len() - 1);
    let bystander = bystander[0];

    let mut quiet = Histogram::default();
    for _ in 0..QUIET_SAMPLES {
        quiet.record(round_trip(&mut pool, bystander, "whoami", &mut events)?);
    }
    let mut solo = Histogram::default();
    let mut reply_bytes = 0usize;
    for _ in 0..20 {
        let began = Instant::now();
        pool.send(
            pollers[0],
            Opcode::Text,
            br#"{"type":"group.list","id":"solo"}"#,
        );
        let reply = wait_reply(&mut pool, pollers[0], b"\"re\":\"solo\"", &mut events)?;
        solo.record(began.elapsed());
        reply_bytes = reply_bytes.max(reply.len());
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    report
        .extra
        .push(("list_reply_bytes".into(), reply_bytes as f64));
    report
        .extra
        .push(("list_alone_p50_us".into(), us(solo.quantile(0.5))));
    report
        .extra
        .push(("whoami_quiet_p50_us".into(), us(quiet.quantile(0.5))));
    report
        .extra
        .push(("whoami_quiet_p99_us".into(), us(quiet.quantile(0.99))));
    poll_and_probe(&mut pool, args, pollers, bystander, &shape, &mut report)?;
    Ok(report)
}

/// Makes the groups over `ceil(groups / per_creator)` creator users, a window of requests in
/// flight on each creator connection; returns how many were created.
fn create_groups(
    pool: &mut Pool,
    args: &Args,
    sources: &[Ipv4Addr],
    shape: &Shape,
    events: &mut Vec<Net>,
    report: &mut Report,
) -> io::Result<usize> {
    let run = std::process::id();
    let per = shape.per_creator.max(1);
    let creators = shape.groups.div_ceil(per).max(1);
    let per_creator_conns = (CREATE_CONNECTIONS / creators).max(1);
    let users: Vec<String> = (0..creators * per_creator_conns)
        .map(|i| format!("c{run}-{}", i / per_creator_conns))
        .collect();
    let (ids, failed) = chat_connections(pool, args, sources, &users, events)?;
    report.errors += failed;
    // Group n belongs to creator n / per, on one of that creator's connections.
    let mut queues: HashMap<usize, Vec<usize>> = HashMap::new();
    for n in (0..shape.groups).rev() {
        let creator = n / per;
        let conn = ids[creator * per_creator_conns + n % per_creator_conns];
        queues.entry(conn).or_default().push(n);
    }
    let mut in_flight: HashMap<usize, usize> = ids.iter().map(|&id| (id, 0)).collect();
    let (mut created, mut answered, mut refused) = (0, 0, 0u64);
    let deadline = Instant::now() + SETUP_TIMEOUT * 10;
    while answered < shape.groups && Instant::now() < deadline {
        for (&conn, queue) in queues.iter_mut() {
            let flight = in_flight.get_mut(&conn).unwrap();
            while *flight < CREATE_WINDOW {
                let Some(n) = queue.pop() else { break };
                let body =
                    json!({"type": "group.create", "id": "mk", "group": format!("l{run}-{n}")});
                pool.send(conn, Opcode::Text, body.to_string().as_bytes());
                *flight += 1;
            }
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        for e in events.iter() {
            match e {
                Net::Message(id, d) if contains(d, b"\"re\":\"mk\"") => {
                    answered += 1;
                    *in_flight.get_mut(id).unwrap() -= 1;
                    if contains(d, b"\"type\":\"ok\"") {
                        created += 1;
                    } else if refused == 0 {
                        eprintln!("group.create refused: {}", String::from_utf8_lossy(d));
                        refused += 1;
                    } else {
                        refused += 1;
                    }
                }
                Net::Closed(..) => report.errors += 1,
                _ => {}
            }
        }
    }
    for id in ids {
        pool.drop_conn(id);
    }
    report.extra.push(("groups_refused".into(), refused as f64));
    Ok(created)
}

/// Sends `type` on `id` and waits for its reply; returns the round trip.
fn round_trip(
    pool: &mut Pool,
    id: usize,
    kind: &str,
    events: &mut Vec<Net>,
) -> io::Result<Duration> {
    let began = Instant::now();
    let body = json!({"type": kind, "id": "rt"}).to_string();
    pool.send(id, Opcode::Text, body.as_bytes());
    wait_reply(pool, id, b"\"re\":\"rt\"", events)?;
    Ok(began.elapsed())
}

/// Waits for the message on `id` that holds `marker`, and returns it.
fn wait_reply(
    pool: &mut Pool,
    id: usize,
    marker: &[u8],
    events: &mut Vec<Net>,
) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while Instant::now() < deadline {
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        for e in events.drain(..) {
            match e {
                Net::Message(from, d) if from == id && contains(&d, marker) => return Ok(d),
                Net::Closed(from, why) if from == id => {
                    return Err(io::Error::other(format!("connection closed: {why}")))
                }
                _ => {}
            }
        }
    }
    Err(io::Error::other("no reply in time"))
}

/// The measured part: pollers and the bystander, each with one request in flight at most and
/// no faster than its rate.
fn poll_and_probe(
    pool: &mut Pool,
    args: &Args,
    pollers: &[usize],
    bystander: usize,
    shape: &Shape,
    report: &mut Report,
) -> io::Result<()> {
    let poll_every = Duration::from_secs_f64(1.0 / shape.poll_rate.max(0.001));
    let probe_every = Duration::from_secs_f64(1.0 / shape.probe_rate.max(0.001));
    // Per connection: when the request in flight went out (None: idle), when the next may go,
    // and for pollers the `after` of the next page.
    let mut sent: HashMap<usize, Option<Instant>> = HashMap::new();
    let mut next_at: HashMap<usize, Instant> = HashMap::new();
    let mut after: HashMap<usize, Option<String>> = HashMap::new();
    let start = Instant::now();
    for &p in pollers.iter().chain([&bystander]) {
        sent.insert(p, None);
        next_at.insert(p, start);
        after.insert(p, None);
    }
    let mut lists = Histogram::default();
    let mut list_bytes = 0u64;
    report.server_before = args.server_pid.and_then(sample);
    let end = start + args.duration;
    let mut events = Vec::new();
    while Instant::now() < end || sent.values().any(Option::is_some) {
        let now = Instant::now();
        if now > end + super::DRAIN {
            report.lost += sent.values().filter(|s| s.is_some()).count() as u64;
            break;
        }
        for (&id, s) in sent.iter_mut() {
            if s.is_some() || now < next_at[&id] || now >= end {
                continue;
            }
            let body = if id == bystander {
                json!({"type": "whoami", "id": "w"})
            } else {
                match &after[&id] {
                    Some(a) => json!({"type": "group.list", "id": "l", "after": a}),
                    None => json!({"type": "group.list", "id": "l"}),
                }
            };
            pool.send(id, Opcode::Text, body.to_string().as_bytes());
            *s = Some(now);
            let every = if id == bystander {
                probe_every
            } else {
                poll_every
            };
            next_at.insert(id, now + every);
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(2)), &mut events)?;
        for e in events.drain(..) {
            let Net::Message(id, data) = e else {
                if let Net::Closed(..) = e {
                    report.errors += 1;
                }
                continue;
            };
            let Some(Some(began)) = sent.get(&id).copied() else {
                continue;
            };
            if !contains(&data, b"\"re\":\"w\"") && !contains(&data, b"\"re\":\"l\"") {
                continue; // an event
            }
            sent.insert(id, None);
            if contains(&data, b"\"type\":\"error\"") {
                report.errors += 1;
            }
            if id == bystander {
                report.latency.record(began.elapsed());
                report.messages += 1;
            } else {
                lists.record(began.elapsed());
                list_bytes += data.len() as u64;
                let next = serde_json::from_slice::<Value>(&data)
                    .ok()
                    .and_then(|v| v["next"].as_str().map(str::to_string));
                after.insert(id, next);
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.server_after = args.server_pid.and_then(sample);
    report.extra.push(("lists".into(), lists.count() as f64));
    report.extra.push((
        "list_mib_per_s".into(),
        list_bytes as f64 / (1 << 20) as f64 / report.seconds.max(1e-9),
    ));
    report.second = Some(("list".into(), lists));
    Ok(())
}
