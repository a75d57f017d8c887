//! `chatd-bench`: the load tool. It opens WebSocket connections on mio loops (the server's own
//! codec in the client role), drives one scenario, and reports throughput, latency percentiles,
//! errors and losses, ending with one JSON line. With `--server-pid` it also samples the
//! server's CPU time and memory, so results can be given per second of server CPU.

mod joins;
mod pool;
mod raw;
mod scenarios;
mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Load scenarios for chatd (and any WebSocket echo/broadcast server).
#[derive(Parser, Debug, Clone)]
#[command(name = "chatd-bench", version, about)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    pub server: SocketAddr,
    /// The server's process id, to sample its CPU time and memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// How long the measured part of the run lasts.
    #[arg(long, default_value = "10s", value_parser = chatd::config::parse_duration, global = true)]
    pub duration: Duration,
    /// Client threads, each with its own mio loop and a share of the connections (echo, dm,
    /// connect).
    #[arg(long, default_value_t = 1, global = true)]
    pub threads: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1 .. 127.0.0.N), for more
    /// connections than one address has ephemeral ports.
    #[arg(long, default_value_t = 1, global = true)]
    pub sources: u8,
    /// The server is a raw TCP baseline (`raw-server`): no upgrade, frames come back as sent.
    #[arg(long, global = true)]
    pub raw: bool,
    /// HS256 secret the server was started with (`--jwt-secret`), for chat scenarios.
    #[arg(
        long,
        default_value = "bench-secret-of-32-bytes-or-longer",
        global = true
    )]
    pub jwt_secret: String,
    /// What to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// The scenarios.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Open N connections as fast as possible, then hold them idle; handshakes/s and server
    /// memory per connection.
    Connect {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Path: /echo (transport only) or /ws (authenticated chat connections, by JWT).
        #[arg(long, default_value = "/echo")]
        path: String,
        /// How long to hold them open before measuring memory.
        #[arg(long, default_value = "3s", value_parser = chatd::config::parse_duration)]
        hold: Duration,
    },
    /// N connections to an echo endpoint, W messages of S bytes in flight on each.
    Echo {
        /// Connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// Message size in bytes (at least 8).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Path of the echo endpoint.
        #[arg(long, default_value = "/echo")]
        path: String,
    },
    /// One sender, N receivers on a transport broadcast endpoint (`/broadcast` of
    /// `chatd --echo`): every message goes to every receiver.
    Broadcast {
        /// Receivers.
        #[arg(long, default_value_t = 1000)]
        receivers: usize,
        /// Message size in bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Messages in flight (sent, not yet received by every receiver).
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// Path of the broadcast endpoint.
        #[arg(long, default_value = "/broadcast")]
        path: String,
    },
    /// Pairs of users exchanging direct messages, W unacknowledged sends each.
    Dm {
        /// Pairs of users.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Sends in flight per user.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
    },
    /// N members of one group, P of them sending; delivery latency from a timestamp in the text.
    Group {
        /// Members (each one connection).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Senders among them.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Messages per second per sender; 0 = flat out (limited by `inflight` acks).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Unacknowledged sends per sender when flat out.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
    },
    /// Newcomers join one large group at a steady rate while a member asks `whoami` every 5 ms:
    /// how long that member waits while the joins are announced.
    Joins {
        /// Members in the group before the joins (each one connection).
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Users who join during the run (each one connection, authenticated beforehand).
        #[arg(long, default_value_t = 3_000)]
        newcomers: usize,
        /// Joins per second, all newcomers together.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
    },
    /// Many public groups, `group.list` polled at a steady rate, and a bystander's `whoami`
    /// round trip quiet and during the polling.
    GroupList {
        /// Public groups to create before measuring.
        #[arg(long, default_value_t = 17_280)]
        groups: usize,
        /// Groups each creator user makes (no more than the server lets one user own).
        #[arg(long, default_value_t = 100)]
        per_creator: usize,
        /// Connections polling `group.list`, one request in flight each.
        #[arg(long, default_value_t = 3)]
        pollers: usize,
        /// `group.list` requests per second per poller, at most (the default command rate of
        /// the server is 50).
        #[arg(long, default_value_t = 40.0)]
        poll_rate: f64,
        /// `whoami` requests per second of the bystander, at most.
        #[arg(long, default_value_t = 20.0)]
        probe_rate: f64,
    },
    /// Not a scenario: serve raw TCP echo or broadcast on `--server`, as a baseline to compare
    /// the WebSocket server with (run it, then point `echo`/`broadcast --raw` at it).
    RawServer {
        /// Forward what any connection sends to all others, instead of echoing.
        #[arg(long)]
        broadcast: bool,
    },
    /// A login storm while a group conversation runs: the group's delivery latency without and
    /// with the storm, and login latency.
    Login {
        /// Group members.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Group messages per second (one sender).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Password logins per second during the storm.
        #[arg(long, default_value_t = 20.0)]
        logins_per_sec: f64,
    },
}

fn main() {
    let args = Args::parse();
    chatd::net::raise_fd_limit();
    if let Scenario::RawServer { broadcast } = args.scenario {
        if let Err(e) = raw::serve(args.server, broadcast) {
            eprintln!("chatd-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let sources: Vec<Ipv4Addr> = (1..=args.sources.max(1))
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .collect();
    let report = match scenarios::run(&args, &sources) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatd-bench: {e}");
            std::process::exit(1);
        }
    };
    report.print();
}
