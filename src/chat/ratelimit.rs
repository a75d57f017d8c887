//! Token buckets: a rate with a burst; per connection, per address, and per user across all
//! of its connections.

use std::collections::HashMap;
use std::time::Instant;

use crate::store::UserId;

/// A token bucket: `burst` tokens, refilled at `per_sec` tokens per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, per_sec: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token could be taken at `now` (without taking it).
    pub fn available(&self, per_sec: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * per_sec).min(burst) >= 1.0
    }

    /// Whether the bucket is full again at `now` (and can be forgotten).
    pub fn is_full(&self, per_sec: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * per_sec >= burst
    }
}

/// A sustained rate, per second, with a burst.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Tokens per second.
    pub per_sec: f64,
    /// Tokens when full.
    pub burst: f64,
}

/// What a user may do only so often, whichever connections it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// `send`.
    Send,
    /// `typing`.
    Typing,
    /// `group.create`.
    GroupCreate,
    /// `file.upload`.
    Upload,
    /// Naming a user who does not exist (see [`super::probes`]).
    UnknownUser,
}

/// The rates of each [`Act`].
#[derive(Debug, Clone, Copy)]
pub struct UserRates {
    /// Messages.
    pub send: Rate,
    /// Typing notices.
    pub typing: Rate,
    /// New groups.
    pub group_create: Rate,
    /// Uploads started.
    pub upload: Rate,
    /// Names of users who do not exist.
    pub unknown_user: Rate,
}

impl UserRates {
    fn of(&self, act: Act) -> Rate {
        match act {
            Act::Send => self.send,
            Act::Typing => self.typing,
            Act::GroupCreate => self.group_create,
            Act::Upload => self.upload,
            Act::UnknownUser => self.unknown_user,
        }
    }
}

/// Users' buckets, made on first use. Full ones are forgotten when the map grows large, since a
/// full bucket is what a new one would be.
#[derive(Debug)]
pub struct PerUser {
    rates: UserRates,
    buckets: HashMap<(UserId, Act), Bucket>,
}

/// Buckets kept before full ones are forgotten.
const PRUNE_AT: usize = 100_000;

impl PerUser {
    /// No buckets yet.
    pub fn new(rates: UserRates) -> PerUser {
        PerUser {
            rates,
            buckets: HashMap::new(),
        }
    }

    /// Whether `user` has a token for `act` at `now` (without taking it).
    pub fn available(&self, user: UserId, act: Act, now: Instant) -> bool {
        let r = self.rates.of(act);
        self.buckets
            .get(&(user, act))
            .is_none_or(|b| b.available(r.per_sec, r.burst, now))
    }

    /// Takes a token for `user`'s `act`, if there is one.
    pub fn take(&mut self, user: UserId, act: Act, now: Instant) -> bool {
        if self.buckets.len() >= PRUNE_AT {
            let rates = self.rates;
            self.buckets.retain(|&(_, act), b| {
                let r = rates.of(act);
                !b.is_full(r.per_sec, r.burst, now)
            });
        }
        let r = self.rates.of(act);
        self.buckets
            .entry((user, act))
            .or_insert_with(|| Bucket::new(r.burst, now))
            .take(r.per_sec, r.burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3.0, t0);
        assert!(b.take(1.0, 3.0, t0));
        assert!(b.take(1.0, 3.0, t0));
        assert!(b.take(1.0, 3.0, t0));
        assert!(!b.take(1.0, 3.0, t0));
        assert!(!b.available(1.0, 3.0, t0 + Duration::from_millis(500)));
        assert!(!b.take(1.0, 3.0, t0 + Duration::from_millis(500)));
        assert!(b.available(1.0, 3.0, t0 + Duration::from_millis(1600)));
        assert!(b.take(1.0, 3.0, t0 + Duration::from_millis(1600)));
        assert!(b.is_full(1.0, 3.0, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn users_and_acts_have_separate_buckets() {
        let one = Rate {
            per_sec: 1.0,
            burst: 1.0,
        };
        let rates = UserRates {
            send: one,
            typing: one,
            group_create: one,
            upload: one,
            unknown_user: one,
        };
        let t0 = Instant::now();
        let mut users = PerUser::new(rates);
        assert!(users.take(1, Act::Send, t0));
        assert!(!users.take(1, Act::Send, t0));
        assert!(users.take(1, Act::Typing, t0));
        assert!(users.take(2, Act::Send, t0));
        assert!(users.take(1, Act::Send, t0 + Duration::from_secs(1)));
    }
}
