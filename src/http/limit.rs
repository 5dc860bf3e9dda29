//! The request rate limit: one token bucket for all clients. Over the rate a request is answered
//! 429 with `Retry-After` at once, instead of queueing without bound.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// A token bucket refilled at `per_second`, holding at most `burst`.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter::starting_at(limit, Instant::now())
    }

    fn starting_at(limit: RateLimit, now: Instant) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(limit.per_second.max(1)),
            burst: f64::from(limit.burst.max(1)),
            state: Mutex::new(Bucket {
                tokens: f64::from(limit.burst.max(1)),
                at: now,
            }),
        }
    }

    /// Takes one token: Ok, or Err with the whole seconds to wait until one is there (at
    /// least 1, for `Retry-After`).
    pub fn acquire(&self) -> Result<(), u64> {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> Result<(), u64> {
        let mut bucket = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(bucket.at);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second);
        Err(wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_the_burst_then_the_rate() {
        let start = Instant::now();
        let limiter = RateLimiter::starting_at(
            RateLimit {
                per_second: 2,
                burst: 3,
            },
            start,
        );
        for _ in 0..3 {
            assert_eq!(limiter.acquire_at(start), Ok(()));
        }
        assert_eq!(limiter.acquire_at(start), Err(1));
        // Half a second refills one token at 2/s.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.acquire_at(later), Ok(()));
        assert_eq!(limiter.acquire_at(later), Err(1));
        // A long pause refills no more than the burst.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.acquire_at(much_later), Ok(()));
        }
        assert!(limiter.acquire_at(much_later).is_err());
    }

    #[test]
    fn a_slow_rate_asks_for_a_longer_wait() {
        let start = Instant::now();
        let limiter = RateLimiter::starting_at(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            start,
        );
        assert_eq!(limiter.acquire_at(start), Ok(()));
        assert_eq!(limiter.acquire_at(start), Err(1));
        let limiter = RateLimiter::starting_at(
            RateLimit {
                per_second: 1,
                burst: 1,
            },
            start,
        );
        assert_eq!(limiter.acquire_at(start), Ok(()));
        assert_eq!(
            limiter.acquire_at(start + Duration::from_millis(100)),
            Err(1)
        );
    }
}
