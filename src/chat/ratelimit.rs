//! Token buckets: a rate with a burst.

use std::time::Instant;

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

    /// Whether the bucket is full again at `now` (and can be forgotten).
    pub fn is_full(&self, per_sec: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * per_sec >= burst
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
        assert!(!b.take(1.0, 3.0, t0 + Duration::from_millis(500)));
        assert!(b.take(1.0, 3.0, t0 + Duration::from_millis(1600)));
        assert!(b.is_full(1.0, 3.0, t0 + Duration::from_secs(10)));
    }
}
