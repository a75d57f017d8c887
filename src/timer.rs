//! All deadlines of the server in one ordered set; the earliest sets the poll timeout.
//!
//! Each connection has at most one entry: the next moment something may be due for it. Activity
//! does not move the entry (that would cost a tree update per read); instead, when an entry
//! fires, the connection works out what is really due and schedules its next entry. A slab slot
//! can be reused by a new connection, so a fired entry counts only if the connection still
//! holds that exact deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// A connection's next check (handshake, heartbeat, close timeouts), by slab key.
    Conn(usize),
    /// The chat service's next credential expiry (see [`crate::chat::sessions`]).
    Expiry,
    /// Resume accepting after running out of descriptors.
    Accept,
    /// The end of the shutdown drain.
    Drain,
}

/// The set of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    set: BTreeSet<(Instant, TimerKey)>,
}

impl Timers {
    /// Adds a deadline.
    pub fn schedule(&mut self, at: Instant, key: TimerKey) {
        self.set.insert((at, key));
    }

    /// Removes a deadline added before.
    pub fn cancel(&mut self, at: Instant, key: TimerKey) {
        self.set.remove(&(at, key));
    }

    /// How long the loop may sleep: until the earliest deadline, rounded up to the millisecond
    /// so that it does not wake a moment early and spin.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.set.first().map(|&(at, _)| {
            let wait = at.saturating_duration_since(now);
            let ms = wait.as_nanos().div_ceil(1_000_000) as u64;
            Duration::from_millis(ms)
        })
    }

    /// Removes and returns every deadline at or before `now`, earliest first.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<(Instant, TimerKey)>) {
        while let Some(&first) = self.set.first() {
            if first.0 > now {
                break;
            }
            self.set.pop_first();
            out.push(first);
        }
    }

    /// Number of pending deadlines.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_sets_the_timeout_and_expires_first() {
        let now = Instant::now();
        let mut t = Timers::default();
        t.schedule(now + Duration::from_millis(50), TimerKey::Conn(1));
        t.schedule(now + Duration::from_millis(10), TimerKey::Conn(2));
        t.schedule(now + Duration::from_secs(5), TimerKey::Drain);
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        let mut out = Vec::new();
        t.expired(now + Duration::from_millis(60), &mut out);
        let keys: Vec<_> = out.iter().map(|e| e.1).collect();
        assert_eq!(keys, vec![TimerKey::Conn(2), TimerKey::Conn(1)]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancel_removes_and_timeout_rounds_up() {
        let now = Instant::now();
        let mut t = Timers::default();
        let at = now + Duration::from_micros(1500);
        t.schedule(at, TimerKey::Accept);
        assert_eq!(t.timeout(now), Some(Duration::from_millis(2)));
        t.cancel(at, TimerKey::Accept);
        assert!(t.is_empty());
        assert_eq!(t.timeout(now), None);
    }
}
