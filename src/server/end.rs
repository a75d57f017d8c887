//! The end of an iteration and of the server: deadlines, signals, the shutdown drain, and the
//! flush, reap and reschedule of every connection touched.

use std::time::Instant;

use log::{info, warn};
use mio::{Interest, Token};

use super::{touch, Server};
use crate::conn::{Conn, Cx, Step};
use crate::metrics::CloseReason;
use crate::timer::TimerKey;
use crate::ws::CloseCode;

impl Server {
    pub(super) fn run_timers(&mut self, now: Instant) {
        let mut fired = Vec::new();
        self.timers.expired(now, &mut fired);
        for (at, key) in fired {
            self.on_timer(at, key, now);
        }
    }

    pub(super) fn on_timer(&mut self, at: Instant, key: TimerKey, now: Instant) {
        match key {
            TimerKey::Conn(k) => {
                let Server {
                    conns,
                    cfg,
                    metrics,
                    touched,
                    ..
                } = self;
                let Some(conn) = conns.get_mut(k) else {
                    return;
                };
                // A reused slab slot may meet its predecessor's deadline: only its own counts.
                if conn.timer_at != Some(at) {
                    return;
                }
                conn.timer_at = None;
                conn.on_timer(&mut Cx { cfg, metrics, now });
                touch(conns, touched, k);
            }
            // The wake-up is all: the service ends what expired at the end of the iteration.
            TimerKey::Expiry => self.expiry_at = None,
            TimerKey::Accept => {
                self.accept_paused = false;
                self.accept_ready = true;
            }
            TimerKey::Drain => self.stop = true,
        }
    }

    pub(super) fn on_signals(&mut self, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        if let Some(sig) = pending.first() {
            info!("signal {sig}: shutting down");
            self.begin_shutdown(now);
        }
    }

    /// Stops accepting, sends close 1001 to every WebSocket, and gives them the drain timeout
    /// to finish their close handshakes.
    pub fn begin_shutdown(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let (conn, mut cx, ..) = self.lend(key, now).expect("listed above");
            conn.advance(
                Step::Close(CloseCode::GOING_AWAY, CloseReason::Shutdown),
                &mut cx,
            );
            touch(&mut self.conns, &mut self.touched, key);
        }
        self.timers
            .schedule(now + self.cfg.drain_timeout, TimerKey::Drain);
        info!(
            "draining {} connections (up to {:?})",
            self.conns.len(),
            self.cfg.drain_timeout
        );
    }

    /// Chat connections that left the open phase leave the service; what that says to others
    /// (presence) is announced before the flush.
    pub(super) fn leave_chat(&mut self) {
        for i in 0..self.touched.len() {
            let key = self.touched[i];
            let open = self.conns.get(key).is_some_and(Conn::is_open);
            if !open {
                if self.chat.has(key) {
                    self.chat.close(key);
                }
                self.broadcast_members.retain(|&m| m != key);
            }
        }
    }

    /// Flushes, reaps and reschedules every connection touched in this iteration.
    pub(super) fn flush_and_reap(&mut self, now: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        for key in touched.drain(..) {
            let mut cx = Cx {
                cfg: &self.cfg,
                metrics: &mut self.metrics,
                now,
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.touched = false;
            conn.flush(&mut cx, &mut self.scratch);
            if conn.is_finished() {
                self.reap(key);
                continue;
            }
            self.reregister(key);
            self.reschedule(key);
            let conn = &self.conns[key];
            if conn.wants_read() || conn.drained() {
                self.carry.push(key);
            }
        }
        self.touched = touched;
    }

    /// Asks for writable events only while output waits for the socket: otherwise every
    /// acknowledgement from the peer would wake the loop for nothing.
    pub(super) fn reregister(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let want_writable = conn.queued() > 0;
        if want_writable == conn.write_interest {
            return;
        }
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) = self
            .poll
            .registry()
            .reregister(conn.socket_mut(), Token(key), interest)
        {
            warn!("{}: reregister failed: {e}", conn.peer);
        }
        conn.write_interest = want_writable;
    }

    /// Keeps the connection's one entry in the timer set at its next deadline.
    pub(super) fn reschedule(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let want = conn.deadline(&self.cfg);
        match (conn.timer_at, want) {
            // Lazy: a later deadline is found when the earlier entry fires.
            (Some(at), Some(w)) if w >= at => {}
            (Some(at), _) => {
                self.timers.cancel(at, TimerKey::Conn(key));
                conn.timer_at = None;
            }
            (None, _) => {}
        }
        if let (None, Some(w)) = (conn.timer_at, want) {
            self.timers.schedule(w, TimerKey::Conn(key));
            conn.timer_at = Some(w);
        }
    }

    pub(super) fn reap(&mut self, key: usize) {
        if self.chat.has(key) {
            self.chat.close(key);
        }
        let mut conn = self.conns.remove(key);
        if let Some(at) = conn.timer_at {
            self.timers.cancel(at, TimerKey::Conn(key));
        }
        let _ = self.poll.registry().deregister(conn.socket_mut());
        self.release_address(&conn.peer);
        if let Some(reason) = conn.close_reason() {
            self.metrics.closed(reason);
        }
    }
}
