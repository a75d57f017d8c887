//! Deadlines: handshake timeout, heartbeat, idle and authentication timeouts, stalled output
//! and slow downloads, close timeout, end of lingering.

use std::time::Duration;

use super::*;

impl Conn {
    /// The next moment something may be due for this connection.
    pub fn deadline(&self, cfg: &Config) -> Option<Instant> {
        match self.phase {
            Phase::Handshake { since } => Some(since + cfg.handshake_timeout),
            Phase::Open { .. } => {
                let heartbeat = self.last_seen
                    + if self.ping_outstanding {
                        cfg.idle_timeout
                    } else {
                        cfg.ping_interval
                    };
                let due = self.auth_deadline.map_or(heartbeat, |a| a.min(heartbeat));
                Some(self.output_due(cfg).map_or(due, |(at, _)| at.min(due)))
            }
            Phase::Closing { since, .. } => Some(since + cfg.close_timeout),
            Phase::Closed {
                since,
                linger: true,
                ..
            } => Some(self.linger_deadline(since, cfg)),
            Phase::Closed { linger: false, .. } => None,
        }
    }

    /// A lingering connection gets the close timeout; a download still sending its file gets
    /// its output deadline instead, so a long download goes on while its reader keeps up.
    pub(super) fn linger_deadline(&self, since: Instant, cfg: &Config) -> Instant {
        match self.output_due(cfg) {
            Some((at, _)) if self.download.is_some() => at,
            _ => since + cfg.close_timeout,
        }
    }

    /// When output the socket does not take ends the connection, and why: the stall timeout
    /// after the socket last took bytes; for a download also the moment its average since the
    /// response began, after a head start of the stall timeout, falls under the minimum rate.
    /// Each byte taken buys `1 / rate` seconds, so a reader that keeps up never meets it.
    fn output_due(&self, cfg: &Config) -> Option<(Instant, CloseReason)> {
        if !self.owed {
            return None;
        }
        let stalled = (self.waiting_since + cfg.stall_timeout, CloseReason::Stalled);
        let slow = self
            .download
            .filter(|_| cfg.download_min_rate > 0)
            .and_then(|d| {
                let earned =
                    Duration::try_from_secs_f64(d.sent as f64 / cfg.download_min_rate as f64)
                        .ok()?;
                let at = d
                    .since
                    .checked_add(cfg.stall_timeout)?
                    .checked_add(earned)?;
                Some((at, CloseReason::SlowDownload))
            });
        Some(match slow {
            Some(slow) if slow.0 < stalled.0 => slow,
            _ => stalled,
        })
    }

    /// Drops a connection whose output the peer does not read (or reads too slowly): a close
    /// frame would wait behind that output, so none is sent.
    fn drop_unread(&mut self, reason: CloseReason, cx: &mut Cx) {
        match reason {
            CloseReason::SlowDownload => cx.metrics.slow_download_closes += 1,
            _ => cx.metrics.stalled_closes += 1,
        }
        debug!(
            "{}: {} bytes unread, dropped ({})",
            self.peer,
            self.output.queued(),
            reason.label()
        );
        self.advance(Step::Gone(reason), cx);
    }

    /// Acts on whatever is due at `cx.now`: handshake timeout, stalled output, heartbeat ping,
    /// idle close, close timeout, end of lingering.
    pub fn on_timer(&mut self, cx: &mut Cx) {
        let now = cx.now;
        let cfg = cx.cfg;
        let overdue = self.output_due(cfg).filter(|&(at, _)| now >= at);
        match self.phase {
            Phase::Handshake { since } if now >= since + cfg.handshake_timeout => {
                if self.input.is_empty() {
                    self.advance(Step::Gone(CloseReason::HandshakeTimeout), cx);
                } else {
                    cx.metrics.handshake_failed(408);
                    self.output.push(Response::status(408).encode(false));
                    self.advance(Step::Answered(CloseReason::HandshakeTimeout), cx);
                }
            }
            Phase::Open { .. } => {
                if let Some((_, reason)) = overdue {
                    self.drop_unread(reason, cx);
                } else {
                    self.on_heartbeat(cx);
                }
            }
            Phase::Closing { since, .. } if now >= since + cfg.close_timeout => {
                self.advance(Step::Gone(CloseReason::CloseTimeout), cx);
            }
            Phase::Closed {
                since,
                linger: true,
                ..
            } if now >= self.linger_deadline(since, cfg) => match overdue {
                Some((_, reason)) if self.download.is_some() => self.drop_unread(reason, cx),
                _ => self.advance(Step::Gone(CloseReason::CloseTimeout), cx),
            },
            _ => {}
        }
    }

    /// The open phase's clock: authentication timeout, idle close, heartbeat ping.
    fn on_heartbeat(&mut self, cx: &mut Cx) {
        let now = cx.now;
        let cfg = cx.cfg;
        let silent = now.saturating_duration_since(self.last_seen);
        if self.auth_deadline.is_some_and(|at| now >= at) {
            self.advance(Step::Close(CloseCode::POLICY, CloseReason::AuthTimeout), cx);
        } else if silent >= cfg.idle_timeout {
            self.advance(
                Step::Close(CloseCode::GOING_AWAY, CloseReason::IdleTimeout),
                cx,
            );
        } else if silent >= cfg.ping_interval && !self.ping_outstanding {
            self.ping_outstanding = true;
            cx.metrics.pings_sent += 1;
            self.send(Opcode::Ping, b"", cx);
        }
    }
}
