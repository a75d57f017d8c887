//! The scenarios. Each opens its connections, waits until they are ready, measures for the
//! configured duration, then drains briefly to count what never came back.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chatd::chat::auth::sign_jwt;
use chatd::ws::Opcode;
use serde_json::{json, Value};

mod grouplist;

use crate::pool::{Net, Pool};
use crate::stats::{sample, stamp, Histogram, ProcSample};
use crate::{Args, Scenario};

/// How long connections get to open.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the run waits for answers still in flight after the measured part.
const DRAIN: Duration = Duration::from_secs(2);

/// What a run measured.
#[derive(Default)]
pub struct Report {
    scenario: String,
    pub(crate) connections: usize,
    pub(crate) seconds: f64,
    /// Round trips (echo), deliveries (broadcast, group) or acknowledged sends (dm).
    pub(crate) messages: u64,
    pub(crate) latency: Histogram,
    pub(crate) errors: u64,
    pub(crate) lost: u64,
    pub(crate) server_before: Option<ProcSample>,
    pub(crate) server_after: Option<ProcSample>,
    /// Other figures of the scenario, in order.
    pub(crate) extra: Vec<(String, f64)>,
    /// A second latency (acks, logins), named.
    pub(crate) second: Option<(String, Histogram)>,
}

impl Report {
    pub(crate) fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.into(),
            ..Report::default()
        }
    }

    fn merge(&mut self, other: Report) {
        self.connections += other.connections;
        self.seconds = self.seconds.max(other.seconds);
        self.messages += other.messages;
        self.latency.merge(&other.latency);
        self.errors += other.errors;
        self.lost += other.lost;
        for (k, v) in other.extra {
            match self.extra.iter_mut().find(|(n, _)| *n == k) {
                Some((_, total)) => *total += v,
                None => self.extra.push((k, v)),
            }
        }
        if let Some((name, h)) = other.second {
            match &mut self.second {
                Some((_, mine)) => mine.merge(&h),
                None => self.second = Some((name, h)),
            }
        }
    }

    fn server_cpu(&self) -> Option<f64> {
        Some(self.server_after?.cpu - self.server_before?.cpu)
    }

    /// The table and the JSON line.
    pub fn print(&self) {
        let per_sec = self.messages as f64 / self.seconds.max(1e-9);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!("scenario        {}", self.scenario);
        println!("connections     {}", self.connections);
        println!("seconds         {:.2}", self.seconds);
        println!("messages        {}  ({per_sec:.0}/s)", self.messages);
        println!(
            "latency         p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
            us(self.latency.quantile(0.5)),
            us(self.latency.quantile(0.99)),
            us(self.latency.quantile(0.999))
        );
        if let Some((name, h)) = &self.second {
            println!(
                "{name:<15} p50 {:.0} us, p99 {:.0} us ({} samples)",
                us(h.quantile(0.5)),
                us(h.quantile(0.99)),
                h.count()
            );
        }
        println!("errors          {}", self.errors);
        println!("lost            {}", self.lost);
        let mut json = json!({
            "scenario": self.scenario,
            "connections": self.connections,
            "seconds": round(self.seconds),
            "messages": self.messages,
            "per_sec": round(per_sec),
            "p50_us": round(us(self.latency.quantile(0.5))),
            "p99_us": round(us(self.latency.quantile(0.99))),
            "p999_us": round(us(self.latency.quantile(0.999))),
            "errors": self.errors,
            "lost": self.lost,
        });
        if let Some((name, h)) = &self.second {
            json[format!("{name}_p50_us")] = json!(round(us(h.quantile(0.5))));
            json[format!("{name}_p99_us")] = json!(round(us(h.quantile(0.99))));
        }
        if let (Some(cpu), Some(after)) = (self.server_cpu(), self.server_after) {
            let per_cpu = self.messages as f64 / cpu.max(1e-9);
            println!("server cpu      {cpu:.2} s  ({per_cpu:.0} messages per server CPU-second)");
            println!("server rss      {} KiB", after.rss_kib);
            json["server_cpu_s"] = json!(round(cpu));
            json["per_server_cpu_s"] = json!(round(per_cpu));
            json["server_rss_kib"] = json!(after.rss_kib);
        }
        for (k, v) in &self.extra {
            println!("{k:<15} {v:.2}");
            json[k.as_str()] = json!(round(*v));
        }
        println!("{json}");
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Runs the chosen scenario.
pub fn run(args: &Args, sources: &[Ipv4Addr]) -> io::Result<Report> {
    match args.scenario.clone() {
        Scenario::Connect {
            connections,
            path,
            hold,
        } => connect(args, sources, connections, &path, hold),
        Scenario::Echo {
            connections,
            inflight,
            size,
            path,
        } => in_threads(args, "echo", connections, |_, share| {
            echo(args, sources, share, inflight, size.max(8), &path)
        }),
        Scenario::Broadcast {
            receivers,
            size,
            inflight,
            path,
        } => broadcast(
            args,
            sources,
            receivers,
            size.max(16),
            inflight.max(1),
            &path,
        ),
        Scenario::Dm { pairs, inflight } => in_threads(args, "dm", pairs, |t, share| {
            dm(args, sources, t, share, inflight.max(1))
        }),
        Scenario::Group {
            members,
            senders,
            rate,
            inflight,
        } => group(
            args,
            sources,
            members,
            senders.clamp(1, members.max(1)),
            rate,
            inflight.max(1),
            None,
        ),
        Scenario::Login {
            members,
            rate,
            logins_per_sec,
        } => group(args, sources, members, 1, rate, 64, Some(logins_per_sec)),
        Scenario::Joins {
            members,
            newcomers,
            rate,
        } => crate::joins::joins(args, sources, members, newcomers, rate),
        Scenario::GroupList {
            groups,
            per_creator,
            pollers,
            poll_rate,
            probe_rate,
        } => grouplist::run(
            args,
            sources,
            grouplist::Shape {
                groups,
                per_creator,
                pollers: pollers.max(1),
                poll_rate,
                probe_rate,
            },
        ),
        Scenario::RawServer { .. } => unreachable!("handled in main"),
    }
}

/// Runs a scenario on `--threads` threads, each with its share of `total` (connections or
/// pairs), and merges their reports with the server's CPU and memory over the whole run.
fn in_threads<F>(args: &Args, name: &str, total: usize, run: F) -> io::Result<Report>
where
    F: Fn(usize, usize) -> io::Result<Report> + Sync,
{
    let threads = args.threads.max(1);
    let before = args.server_pid.and_then(sample);
    let mut merged = Report::new(name);
    std::thread::scope(|scope| -> io::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = total / threads + usize::from(t < total % threads);
                let run = &run;
                scope.spawn(move || run(t, share))
            })
            .collect();
        for h in handles {
            merged.merge(h.join().expect("scenario thread")?);
        }
        Ok(())
    })?;
    merged.server_before = before;
    merged.server_after = args.server_pid.and_then(sample);
    Ok(merged)
}

/// Opens `n` connections on `path` and waits until they are open; returns their ids and the
/// number that failed.
fn open_all(
    pool: &mut Pool,
    args: &Args,
    sources: &[Ipv4Addr],
    n: usize,
    path: &str,
    events: &mut Vec<Net>,
) -> io::Result<(Vec<usize>, u64)> {
    let mut ids = Vec::with_capacity(n);
    let mut opened = 0;
    let mut failed = 0usize;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut next = 0;
    while opened + failed < n && Instant::now() < deadline {
        // Keep a bounded number of handshakes in flight so the listen backlog is not flooded.
        while next < n && next - opened - failed < 1024 {
            let source = (sources.len() > 1).then(|| sources[next % sources.len()]);
            match pool.connect(args.server, path, source) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    eprintln!("connect: {e}");
                    failed += 1;
                }
            }
            next += 1;
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        for e in events.iter() {
            match e {
                Net::Opened(_) => opened += 1,
                Net::Closed(_, why) => {
                    if failed < 5 {
                        eprintln!("connection failed: {why}");
                    }
                    failed += 1;
                }
                Net::Message(..) => {}
            }
        }
    }
    Ok((ids, failed as u64))
}

fn connect(
    args: &Args,
    sources: &[Ipv4Addr],
    n: usize,
    path: &str,
    hold: Duration,
) -> io::Result<Report> {
    let mut pool = Pool::new(false)?;
    let mut events = Vec::new();
    let before = args.server_pid.and_then(sample);
    let started = Instant::now();
    let (ids, failed) = open_all(&mut pool, args, sources, n, path, &mut events)?;
    let handshake_secs = started.elapsed().as_secs_f64();
    let mut report = Report::new("connect");
    report.connections = ids.len() - failed as usize;
    report.errors = failed;
    if path == "/ws" {
        // Authenticated chat connections: each logs in with a JWT.
        for (i, &id) in ids.iter().enumerate() {
            let token = jwt(args, &format!("idle{i}"));
            pool.send(
                id,
                Opcode::Text,
                json!({"type": "auth", "id": 1, "token": token})
                    .to_string()
                    .as_bytes(),
            );
        }
        let mut ok = 0;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while ok < report.connections && Instant::now() < deadline {
            events.clear();
            pool.poll(Some(Duration::from_millis(10)), &mut events)?;
            ok += events.iter().filter(|e| matches!(e, Net::Message(_, d) if d.starts_with(b"{") && contains(d, b"\"ok\""))).count();
        }
        report.extra.push(("authenticated".into(), ok as f64));
    }
    let hold_until = Instant::now() + hold;
    while Instant::now() < hold_until {
        events.clear();
        pool.poll(Some(Duration::from_millis(50)), &mut events)?;
        report.errors += events
            .iter()
            .filter(|e| matches!(e, Net::Closed(..)))
            .count() as u64;
    }
    report.seconds = handshake_secs;
    report.messages = report.connections as u64;
    report.extra.push((
        "handshakes_per_s".into(),
        report.connections as f64 / handshake_secs.max(1e-9),
    ));
    report.server_before = before;
    report.server_after = args.server_pid.and_then(sample);
    if let (Some(b), Some(a)) = (before, report.server_after) {
        let per = (a.rss_kib as f64 - b.rss_kib as f64) / report.connections.max(1) as f64;
        report.extra.push(("rss_kib_per_conn".into(), per));
    }
    Ok(report)
}

fn echo(
    args: &Args,
    sources: &[Ipv4Addr],
    n: usize,
    inflight: usize,
    size: usize,
    path: &str,
) -> io::Result<Report> {
    let mut pool = Pool::new(args.raw)?;
    let mut events = Vec::new();
    let (ids, failed) = open_all(&mut pool, args, sources, n, path, &mut events)?;
    let mut report = Report::new("echo");
    report.connections = ids.len() - failed as usize;
    report.errors = failed;
    let start = Instant::now();
    let mut payload = vec![b'x'; size];
    let mut outstanding: HashMap<usize, usize> = HashMap::new();
    for &id in &ids {
        for _ in 0..inflight {
            payload[..8].copy_from_slice(&stamp(start).to_le_bytes());
            pool.send(id, Opcode::Binary, &payload);
        }
        outstanding.insert(id, inflight);
    }
    let end = start + args.duration;
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        let measuring = now < end;
        if !measuring && (outstanding.values().all(|&o| o == 0) || now > end + DRAIN) {
            break;
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(5)), &mut events)?;
        for e in events.drain(..) {
            match e {
                Net::Message(id, data) if data.len() >= 8 => {
                    let sent = u64::from_le_bytes(data[..8].try_into().unwrap());
                    report
                        .latency
                        .record(Duration::from_nanos(stamp(start).saturating_sub(sent)));
                    if Instant::now() < end {
                        report.messages += 1;
                        last = Instant::now();
                        payload[..8].copy_from_slice(&stamp(start).to_le_bytes());
                        pool.send(id, Opcode::Binary, &payload);
                    } else if let Some(o) = outstanding.get_mut(&id) {
                        *o = o.saturating_sub(1);
                    }
                }
                Net::Closed(id, _) => {
                    report.errors += 1;
                    outstanding.remove(&id);
                }
                _ => {}
            }
        }
    }
    report.lost = outstanding.values().map(|&o| o as u64).sum();
    report.seconds = last.min(end).duration_since(start).as_secs_f64();
    Ok(report)
}

fn broadcast(
    args: &Args,
    sources: &[Ipv4Addr],
    receivers: usize,
    size: usize,
    inflight: usize,
    path: &str,
) -> io::Result<Report> {
    let mut pool = Pool::new(args.raw)?;
    let mut events = Vec::new();
    let (ids, failed) = open_all(&mut pool, args, sources, receivers + 1, path, &mut events)?;
    let mut report = Report::new("broadcast");
    report.errors = failed;
    let sender = ids[0];
    let live = ids.len() - 1 - failed as usize;
    report.connections = live;
    // received[seq % window] counts receivers that have a message; a message is done when all
    // live receivers have it, which frees a place in the window.
    let window = inflight;
    let mut received = vec![0usize; window];
    let mut sent: u64 = 0;
    let mut done: u64 = 0;
    let mut payload = vec![b'b'; size];
    let before = args.server_pid.and_then(sample);
    let start = Instant::now();
    let end = start + args.duration;
    let send = |pool: &mut Pool, payload: &mut Vec<u8>, seq: u64| {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        payload[8..16].copy_from_slice(&stamp(start).to_le_bytes());
        pool.send(sender, Opcode::Binary, payload);
    };
    while sent < window as u64 {
        send(&mut pool, &mut payload, sent);
        sent += 1;
    }
    let mut measured_until = start;
    while done < sent && Instant::now() < end + DRAIN {
        events.clear();
        pool.poll(Some(Duration::from_millis(5)), &mut events)?;
        for e in events.drain(..) {
            match e {
                Net::Message(id, data) if id != sender && data.len() >= 16 => {
                    let seq = u64::from_le_bytes(data[..8].try_into().unwrap());
                    let at = u64::from_le_bytes(data[8..16].try_into().unwrap());
                    report
                        .latency
                        .record(Duration::from_nanos(stamp(start).saturating_sub(at)));
                    if Instant::now() < end {
                        report.messages += 1;
                    }
                    let slot = (seq % window as u64) as usize;
                    received[slot] += 1;
                    if received[slot] >= live {
                        received[slot] = 0;
                        done += 1;
                        if Instant::now() < end {
                            measured_until = Instant::now();
                            send(&mut pool, &mut payload, sent);
                            sent += 1;
                        }
                    }
                }
                Net::Closed(id, _) if id != sender => {
                    report.errors += 1;
                }
                _ => {}
            }
        }
    }
    report.lost = (sent - done) * live as u64;
    report.seconds = measured_until.duration_since(start).as_secs_f64();
    report.server_before = before;
    report.server_after = args.server_pid.and_then(sample);
    report.extra.push(("broadcasts".into(), done as f64));
    Ok(report)
}

fn jwt(args: &Args, user: &str) -> String {
    // Well inside the server's default longest lifetime (24 h), and longer than any run.
    let exp = chatd::chat::now_ms() / 1000 + 43_200;
    sign_jwt(
        &json!({"sub": user, "exp": exp}),
        args.jwt_secret.as_bytes(),
    )
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Opens chat connections for `users`, authenticates each with a JWT and waits for the oks.
pub(crate) fn chat_connections(
    pool: &mut Pool,
    args: &Args,
    sources: &[Ipv4Addr],
    users: &[String],
    events: &mut Vec<Net>,
) -> io::Result<(Vec<usize>, u64)> {
    let (ids, mut failed) = open_all(pool, args, sources, users.len(), "/ws", events)?;
    for (id, user) in ids.iter().zip(users) {
        pool.send(
            *id,
            Opcode::Text,
            json!({"type": "auth", "id": "auth", "token": jwt(args, user)})
                .to_string()
                .as_bytes(),
        );
    }
    let mut ok = 0;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while ok + (failed as usize) < ids.len() && Instant::now() < deadline {
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        for e in events.iter() {
            match e {
                Net::Message(_, d) if contains(d, b"\"re\":\"auth\"") => {
                    if contains(d, b"\"ok\"") {
                        ok += 1
                    } else {
                        failed += 1
                    }
                }
                Net::Closed(..) => failed += 1,
                _ => {}
            }
        }
    }
    Ok((ids, failed))
}

/// Sends one request on each connection and waits for all replies (ignoring events).
pub(crate) fn request_all(
    pool: &mut Pool,
    ids: &[usize],
    body: &Value,
    events: &mut Vec<Net>,
) -> io::Result<u64> {
    let mut body = body.clone();
    body["id"] = json!("setup");
    let text = body.to_string();
    for &id in ids {
        pool.send(id, Opcode::Text, text.as_bytes());
    }
    let mut replies = 0;
    let mut errors = 0;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while replies < ids.len() && Instant::now() < deadline {
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), events)?;
        for e in events.iter() {
            if let Net::Message(_, d) = e {
                if contains(d, b"\"re\":\"setup\"") {
                    replies += 1;
                    if !contains(d, b"\"ok\"") {
                        errors += 1;
                    }
                }
            }
        }
    }
    Ok(errors)
}

fn dm(
    args: &Args,
    sources: &[Ipv4Addr],
    thread: usize,
    pairs: usize,
    inflight: usize,
) -> io::Result<Report> {
    let mut pool = Pool::new(false)?;
    let mut events = Vec::new();
    let run = std::process::id();
    let users: Vec<String> = (0..pairs * 2)
        .map(|i| format!("dm{run}-{thread}-{i}"))
        .collect();
    let (ids, failed) = chat_connections(&mut pool, args, sources, &users, &mut events)?;
    let mut report = Report::new("dm");
    report.connections = ids.len();
    report.errors = failed;
    let mut acks = Histogram::default();
    let start = Instant::now();
    let end = start + args.duration;
    let peer_of = |i: usize| i ^ 1;
    let index: HashMap<usize, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut seq = 0u64;
    let mut outstanding = vec![0usize; ids.len()];
    let mut send = |pool: &mut Pool, i: usize, outstanding: &mut Vec<usize>| {
        seq += 1;
        let text = json!({"type": "send", "id": stamp(start), "to": format!("@{}", users[peer_of(i)]), "text": format!("t={};", stamp(start)), "client_id": format!("c{seq}")});
        pool.send(ids[i], Opcode::Text, text.to_string().as_bytes());
        outstanding[i] += 1;
    };
    for i in 0..ids.len() {
        for _ in 0..inflight {
            send(&mut pool, i, &mut outstanding);
        }
    }
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= end && (outstanding.iter().all(|&o| o == 0) || now > end + DRAIN) {
            break;
        }
        events.clear();
        pool.poll(Some(Duration::from_millis(5)), &mut events)?;
        for e in events.drain(..) {
            match e {
                Net::Message(id, data) => {
                    let Some(&i) = index.get(&id) else { continue };
                    if let Some(t) = number_after(&data, b"t=") {
                        report
                            .latency
                            .record(Duration::from_nanos(stamp(start).saturating_sub(t)));
                    } else if contains(&data, b"\"msg_id\"") {
                        if let Some(sent) = number_after(&data, b"\"re\":") {
                            acks.record(Duration::from_nanos(stamp(start).saturating_sub(sent)));
                        }
                        outstanding[i] = outstanding[i].saturating_sub(1);
                        if Instant::now() < end {
                            report.messages += 1;
                            last = Instant::now();
                            send(&mut pool, i, &mut outstanding);
                        }
                    } else if contains(&data, b"\"error\"") {
                        report.errors += 1;
                        outstanding[i] = outstanding[i].saturating_sub(1);
                    }
                }
                Net::Closed(..) => report.errors += 1,
                _ => {}
            }
        }
    }
    report.lost = outstanding.iter().map(|&o| o as u64).sum();
    report.seconds = last.duration_since(start).as_secs_f64();
    report.second = Some(("ack".into(), acks));
    Ok(report)
}

/// The decimal number right after `marker` in `data`.
fn number_after(data: &[u8], marker: &[u8]) -> Option<u64> {
    let at = data.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits: &[u8] = &data[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn group(
    args: &Args,
    sources: &[Ipv4Addr],
    members: usize,
    senders: usize,
    rate: f64,
    inflight: usize,
    storm: Option<f64>,
) -> io::Result<Report> {
    let mut pool = Pool::new(false)?;
    let mut events = Vec::new();
    let run = std::process::id();
    let name = format!("bench{run}");
    let users: Vec<String> = (0..members).map(|i| format!("g{run}-{i}")).collect();
    let (ids, failed) = chat_connections(&mut pool, args, sources, &users, &mut events)?;
    let mut report = Report::new(if storm.is_some() { "login" } else { "group" });
    report.connections = ids.len();
    report.errors = failed;
    report.errors += request_all(
        &mut pool,
        &ids[..1],
        &json!({"type": "group.create", "group": name}),
        &mut events,
    )?;
    report.errors += request_all(
        &mut pool,
        &ids[1..],
        &json!({"type": "group.join", "group": name}),
        &mut events,
    )?;
    // Let the join and presence events drain before measuring: every join is announced to
    // every member, so a large group's setup sends N^2/2 events. Wait for half a second of quiet.
    let give_up = Instant::now() + SETUP_TIMEOUT;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) && Instant::now() < give_up {
        events.clear();
        pool.poll(Some(Duration::from_millis(10)), &mut events)?;
        if !events.is_empty() {
            quiet_since = Instant::now();
        }
    }
    // Password users for the storm: registered now (the server hashes each once).
    let storm_users: Vec<String> = if storm.is_some() {
        (0..10).map(|i| format!("s{run}-{i}")).collect()
    } else {
        Vec::new()
    };
    if !storm_users.is_empty() {
        let (reg, _) = open_all(
            &mut pool,
            args,
            sources,
            storm_users.len(),
            "/ws",
            &mut events,
        )?;
        for (id, u) in reg.iter().zip(&storm_users) {
            pool.send(
                *id,
                Opcode::Text,
                json!({"type": "register", "id": "setup", "user": u, "password": "storm-password"})
                    .to_string()
                    .as_bytes(),
            );
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut replies = 0;
        while replies < reg.len() && Instant::now() < deadline {
            events.clear();
            pool.poll(Some(Duration::from_millis(10)), &mut events)?;
            replies += events
                .iter()
                .filter(|e| matches!(e, Net::Message(_, d) if contains(d, b"\"re\":\"setup\"")))
                .count();
        }
        for id in reg {
            pool.drop_conn(id);
        }
    }

    let senders_ids: Vec<usize> = ids[..senders].to_vec();
    report.server_before = args.server_pid.and_then(sample);
    let start = Instant::now();
    let end = start + args.duration;
    let storm_from = start + args.duration / 2;
    let mut outstanding: HashMap<usize, usize> = senders_ids.iter().map(|&s| (s, 0)).collect();
    let mut next_send = start;
    let interval = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / (rate * senders as f64))
    } else {
        Duration::ZERO
    };
    let mut acks = Histogram::default();
    let mut quiet = Histogram::default();
    let mut logins = Histogram::default();
    let mut login_conns: HashMap<usize, Instant> = HashMap::new();
    let mut next_login = storm_from;
    let mut seq = 0u64;
    let mut sender_turn = 0;
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= end && (outstanding.values().all(|&o| o == 0) || now > end + DRAIN) {
            break;
        }
        // Sending: at a rate, or flat out within the window of unacknowledged sends.
        if now < end {
            let mut budget = 1000;
            while budget > 0 {
                budget -= 1;
                let s = senders_ids[sender_turn % senders];
                let can = if rate > 0.0 {
                    now >= next_send
                } else {
                    outstanding[&s] < inflight
                };
                if !can {
                    if rate > 0.0 || senders_ids.iter().all(|x| outstanding[x] >= inflight) {
                        break;
                    }
                    sender_turn += 1;
                    continue;
                }
                seq += 1;
                let text = json!({"type": "send", "id": stamp(start), "to": format!("#{name}"), "text": format!("t={}; bench message {seq}", stamp(start))});
                pool.send(s, Opcode::Text, text.to_string().as_bytes());
                *outstanding.get_mut(&s).unwrap() += 1;
                sender_turn += 1;
                if rate > 0.0 {
                    next_send += interval;
                }
            }
        }
        // The storm: new connections that log in with a password.
        if let Some(per_sec) = storm {
            while now >= next_login && now < end {
                next_login += Duration::from_secs_f64(1.0 / per_sec);
                if let Ok(id) = pool.connect(args.server, "/ws", None) {
                    login_conns.insert(id, Instant::now());
                }
            }
        }
        events.clear();
        let wait = if rate > 0.0 {
            next_send
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5))
        } else {
            Duration::from_millis(5)
        };
        pool.poll(Some(wait), &mut events)?;
        for e in events.drain(..) {
            match e {
                Net::Opened(id) if login_conns.contains_key(&id) => {
                    let u = &storm_users[id % storm_users.len()];
                    login_conns.insert(id, Instant::now());
                    pool.send(id, Opcode::Text, json!({"type": "login", "id": "storm", "user": u, "password": "storm-password"}).to_string().as_bytes());
                }
                Net::Message(id, data) => {
                    if let Some(began) = login_conns.get(&id) {
                        if contains(&data, b"\"re\":\"storm\"") {
                            if contains(&data, b"\"ok\"") {
                                logins.record(began.elapsed());
                            } else {
                                report.errors += 1;
                            }
                            login_conns.remove(&id);
                            pool.drop_conn(id);
                        }
                        continue;
                    }
                    if let Some(t) = number_after(&data, b"t=") {
                        let latency = Duration::from_nanos(stamp(start).saturating_sub(t));
                        if Instant::now() < end {
                            report.messages += 1;
                            last = Instant::now();
                            if storm.is_some() && Instant::now() < storm_from {
                                quiet.record(latency);
                            } else {
                                report.latency.record(latency);
                            }
                        }
                    } else if contains(&data, b"\"msg_id\"") {
                        if let Some(sent) = number_after(&data, b"\"re\":") {
                            acks.record(Duration::from_nanos(stamp(start).saturating_sub(sent)));
                        }
                        if let Some(o) = outstanding.get_mut(&id) {
                            *o = o.saturating_sub(1);
                        }
                    } else if contains(&data, b"\"type\":\"error\"") {
                        report.errors += 1;
                        if let Some(o) = outstanding.get_mut(&id) {
                            *o = o.saturating_sub(1);
                        }
                    }
                }
                // A storm connection closes after its login; any other close is an error.
                Net::Closed(id, _) if login_conns.remove(&id).is_none() => report.errors += 1,
                _ => {}
            }
        }
    }
    report.lost = outstanding.values().map(|&o| o as u64).sum();
    report.seconds = last.duration_since(start).as_secs_f64();
    report.server_after = args.server_pid.and_then(sample);
    report.extra.push(("sent".into(), seq as f64));
    if storm.is_some() {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        report
            .extra
            .push(("quiet_p99_us".into(), us(quiet.quantile(0.99))));
        report.extra.push(("logins".into(), logins.count() as f64));
        report.second = Some(("login".into(), logins));
    } else {
        report.second = Some(("ack".into(), acks));
    }
    Ok(report)
}
