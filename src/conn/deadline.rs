//! Deadlines: handshake timeout, heartbeat, idle and authentication timeouts, close timeout,
//! end of lingering.

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
                Some(self.auth_deadline.map_or(heartbeat, |a| a.min(heartbeat)))
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

    /// A lingering connection gets the close timeout; one still sending a file gets the idle
    /// timeout since the socket last took bytes, so a long download of a slow reader goes on.
    pub(super) fn linger_deadline(&self, since: Instant, cfg: &Config) -> Instant {
        if self.download && (self.body.is_some() || !self.output.is_empty()) {
            self.last_write.max(since) + cfg.idle_timeout
        } else {
            since + cfg.close_timeout
        }
    }

    /// Acts on whatever is due at `cx.now`: handshake timeout, heartbeat ping, idle close,
    /// close timeout, end of lingering.
    pub fn on_timer(&mut self, cx: &mut Cx) {
        let now = cx.now;
        let cfg = cx.cfg;
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
            Phase::Closing { since, .. } if now >= since + cfg.close_timeout => {
                self.advance(Step::Gone(CloseReason::CloseTimeout), cx);
            }
            Phase::Closed {
                since,
                linger: true,
                ..
            } if now >= self.linger_deadline(since, cfg) => {
                self.advance(Step::Gone(CloseReason::CloseTimeout), cx);
            }
            _ => {}
        }
    }
}
