//! Counters and gauges, rendered in the Prometheus text exposition format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Why a connection ended; each is a label value of `chatd_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The close handshake completed (either side started it).
    Normal,
    /// The peer closed or reset TCP without a close handshake.
    PeerGone,
    /// A socket error other than a reset.
    IoError,
    /// The peer broke RFC 6455 (1002, 1007, 1009).
    ProtocolError,
    /// The peer let too many outgoing bytes pile up (1008).
    Backpressure,
    /// The peer was silent past the idle timeout (1001).
    IdleTimeout,
    /// No complete HTTP request within the handshake timeout.
    HandshakeTimeout,
    /// The peer did not answer our close frame in time.
    CloseTimeout,
    /// A plain HTTP request was answered (or refused) and the connection closed.
    HttpDone,
    /// The server is shutting down (1001).
    Shutdown,
    /// Not authenticated within the auth timeout (1008).
    AuthTimeout,
    /// Closed for abuse, such as going on past the rate limit (1008).
    Policy,
    /// Output queued and none of it taken by the socket for the stall timeout: dropped.
    Stalled,
    /// A download slower than the minimum rate: dropped.
    SlowDownload,
}

impl CloseReason {
    /// Every reason, in the order of the metric's lines.
    pub const ALL: [CloseReason; 14] = [
        CloseReason::Normal,
        CloseReason::PeerGone,
        CloseReason::IoError,
        CloseReason::ProtocolError,
        CloseReason::Backpressure,
        CloseReason::IdleTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::CloseTimeout,
        CloseReason::HttpDone,
        CloseReason::Shutdown,
        CloseReason::AuthTimeout,
        CloseReason::Policy,
        CloseReason::Stalled,
        CloseReason::SlowDownload,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::IoError => "io_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Backpressure => "backpressure",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::HttpDone => "http_done",
            CloseReason::Shutdown => "shutdown",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::Policy => "policy",
            CloseReason::Stalled => "stalled",
            CloseReason::SlowDownload => "slow_download",
        }
    }

    fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|&r| r == self)
            .expect("listed in ALL")
    }
}

/// The transport's counters. Gauges are read from the server's state when rendering.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections refused with 503 over `--max-connections`.
    pub rejected_full: u64,
    /// Connections refused with 429 over `--max-connections-per-address`.
    pub refused_per_address: u64,
    /// Failed `accept` calls (descriptor exhaustion and others).
    pub accept_errors: u64,
    /// WebSocket handshakes completed.
    pub upgrades: u64,
    closed: [u64; CloseReason::ALL.len()],
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// WebSocket frames received (all opcodes).
    pub frames_in: u64,
    /// WebSocket frames queued for sending.
    pub frames_out: u64,
    /// Whole WebSocket messages received.
    pub messages_in: u64,
    /// Connections closed with 1008 for going over `--max-queued-bytes`.
    pub backpressure_closes: u64,
    /// Connections dropped because their socket took none of their output for
    /// `--stall-timeout`.
    pub stalled_closes: u64,
    /// Downloads dropped for averaging less than `--download-min-rate`.
    pub slow_download_closes: u64,
    /// Refused handshakes and plain requests, by HTTP status.
    pub handshake_failures: BTreeMap<u16, u64>,
    /// Pings sent by the heartbeat.
    pub pings_sent: u64,
    /// File bytes read from disk for downloads.
    pub file_bytes_downloaded: u64,
}

/// Values read off the server at the moment of rendering.
#[derive(Debug, Default)]
pub struct Gauges {
    /// TCP connections in the slab, whatever their phase.
    pub connections: usize,
    /// Connections in the WebSocket open phase.
    pub websockets: usize,
    /// Bytes queued for sending over all connections.
    pub queued_bytes: usize,
    /// The configured connection cap.
    pub max_connections: usize,
}

impl Metrics {
    /// Counts a connection's end.
    pub fn closed(&mut self, reason: CloseReason) {
        self.closed[reason.index()] += 1;
    }

    /// Closed connections for one reason.
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }

    /// Counts a refused handshake or failed request.
    pub fn handshake_failed(&mut self, status: u16) {
        *self.handshake_failures.entry(status).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "chatd_connections",
            "gauge",
            "TCP connections open, any phase.",
            g.connections as u64,
        );
        one(
            "chatd_websockets_open",
            "gauge",
            "WebSocket connections in the open phase.",
            g.websockets as u64,
        );
        one(
            "chatd_queued_bytes",
            "gauge",
            "Outgoing bytes waiting for sockets, all connections.",
            g.queued_bytes as u64,
        );
        one(
            "chatd_max_connections",
            "gauge",
            "Connection cap in force.",
            g.max_connections as u64,
        );
        one(
            "chatd_connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            self.accepted,
        );
        one(
            "chatd_connections_rejected_total",
            "counter",
            "Connections answered 503 over the connection cap.",
            self.rejected_full,
        );
        one(
            "chatd_connections_refused_per_address_total",
            "counter",
            "Connections answered 429 over the per-address connection cap.",
            self.refused_per_address,
        );
        one(
            "chatd_accept_errors_total",
            "counter",
            "Failed accept calls.",
            self.accept_errors,
        );
        one(
            "chatd_websocket_upgrades_total",
            "counter",
            "WebSocket handshakes completed.",
            self.upgrades,
        );
        one(
            "chatd_bytes_in_total",
            "counter",
            "Bytes read from sockets.",
            self.bytes_in,
        );
        one(
            "chatd_bytes_out_total",
            "counter",
            "Bytes written to sockets.",
            self.bytes_out,
        );
        one(
            "chatd_frames_in_total",
            "counter",
            "WebSocket frames received.",
            self.frames_in,
        );
        one(
            "chatd_frames_out_total",
            "counter",
            "WebSocket frames queued for sending.",
            self.frames_out,
        );
        one(
            "chatd_messages_in_total",
            "counter",
            "WebSocket messages received.",
            self.messages_in,
        );
        one(
            "chatd_backpressure_closes_total",
            "counter",
            "Connections closed (1008) over the outgoing queue cap.",
            self.backpressure_closes,
        );
        one(
            "chatd_stalled_closes_total",
            "counter",
            "Connections dropped after their socket took no queued output for the stall timeout.",
            self.stalled_closes,
        );
        one(
            "chatd_slow_download_closes_total",
            "counter",
            "Downloads dropped for averaging less than the minimum download rate.",
            self.slow_download_closes,
        );
        one(
            "chatd_pings_sent_total",
            "counter",
            "Heartbeat pings sent to silent peers.",
            self.pings_sent,
        );
        one(
            "chatd_file_bytes_downloaded_total",
            "counter",
            "File bytes sent in downloads.",
            self.file_bytes_downloaded,
        );
        let _ = writeln!(out, "# HELP chatd_connections_closed_total Connections ended, by reason.\n# TYPE chatd_connections_closed_total counter");
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "chatd_connections_closed_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.closed_count(reason)
            );
        }
        let _ = writeln!(out, "# HELP chatd_handshake_failures_total Refused handshakes and failed requests, by HTTP status.\n# TYPE chatd_handshake_failures_total counter");
        for (status, n) in &self.handshake_failures {
            let _ = writeln!(
                out,
                "chatd_handshake_failures_total{{status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labels() {
        let mut m = Metrics {
            accepted: 3,
            ..Metrics::default()
        };
        m.closed(CloseReason::Backpressure);
        m.handshake_failed(426);
        m.handshake_failed(426);
        let text = m.render(&Gauges {
            connections: 2,
            ..Gauges::default()
        });
        assert!(text.contains("\nchatd_connections 2\n"));
        assert!(text.contains("\nchatd_connections_accepted_total 3\n"));
        assert!(text.contains("chatd_connections_closed_total{reason=\"backpressure\"} 1\n"));
        assert!(text.contains("chatd_connections_closed_total{reason=\"normal\"} 0\n"));
        assert!(text.contains("chatd_handshake_failures_total{status=\"426\"} 2\n"));
    }
}
