//! Per-key rate limits, kept by each replica in memory: a GCRA (generic cell rate algorithm,
//! the token bucket as one timestamp per key) in a bounded moka cache.
//!
//! The limit is per replica, not global: a check never costs a store round trip. Each replica
//! enforces `share` of every key's limit (`rate_limit.replica_share`, default 1: the whole
//! limit, so N replicas behind a balancer allow up to N times it; with `1/N` they allow about
//! the limit in total when the balancer spreads a key's checks evenly). Exact on one replica;
//! a bucket idle for `idle_ttl`, or evicted when more than `max_keys` keys are limited at
//! once, starts full again.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use moka::sync::Cache as Moka;

use crate::domain::{KeyId, RateLimit};

/// How the replica keeps its buckets (config `rate_limit.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimiterSettings {
    /// The part of each key's rate and burst this replica allows, `0 < share <= 1`.
    pub share: f64,
    /// Most keys with a bucket at once.
    pub max_keys: u64,
    /// A bucket unused this long is dropped (and starts full when used again).
    pub idle_ttl: Duration,
}

impl Default for RateLimiterSettings {
    fn default() -> Self {
        RateLimiterSettings { share: 1.0, max_keys: 100_000, idle_ttl: Duration::from_secs(600) }
    }
}

/// This replica's buckets, one per rate-limited key in use.
#[derive(Clone)]
pub struct RateLimiter {
    /// Key id -> its theoretical arrival time: the instant the bucket is full again.
    buckets: Moka<KeyId, Arc<Mutex<Instant>>>,
    share: f64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("share", &self.share).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Empty buckets with these settings.
    pub fn new(settings: RateLimiterSettings) -> Self {
        RateLimiter {
            buckets: Moka::builder().max_capacity(settings.max_keys).time_to_idle(settings.idle_ttl).build(),
            share: settings.share.clamp(f64::MIN_POSITIVE, 1.0),
        }
    }

    /// Spends one check of `key`'s `limit` at `now`: `Ok` if the bucket admits it, else how
    /// long until it would (nothing spent).
    pub fn acquire(&self, key: &KeyId, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let rate = limit.requests_per_second * self.share;
        let burst = (f64::from(limit.burst) * self.share).ceil().max(1.0);
        // One check every `interval`; a full bucket holds `burst` of them.
        let interval = Duration::from_secs_f64((1.0 / rate).min(1e9));
        let window = interval.mul_f64(burst);
        let bucket = self.buckets.get_with_by_ref(key, || Arc::new(Mutex::new(now)));
        let mut tat = bucket.lock().unwrap_or_else(|p| p.into_inner());
        // A bucket never owes more than one window of the limit it is checked against: under
        // the same limit this changes nothing; after the key's limit changed, debt run up under
        // the old one is cut to the new window (an empty bucket), so a raised limit applies
        // within one of its own intervals.
        *tat = (*tat).min(now + window);
        let next = (*tat).max(now) + interval;
        let ahead = next.saturating_duration_since(now);
        if ahead > window {
            return Err(ahead - window);
        }
        *tat = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyId {
        "abcdefghijABCDEFGHIJ".parse().expect("test id")
    }

    fn limit(rate: f64, burst: u32) -> RateLimit {
        RateLimit::new("rate_limit", rate, burst).expect("valid limit")
    }

    #[test]
    fn a_burst_is_admitted_then_one_per_interval() {
        let limiter = RateLimiter::new(RateLimiterSettings::default());
        let start = Instant::now();
        let l = limit(10.0, 3);
        for _ in 0..3 {
            assert_eq!(limiter.acquire(&key(), l, start), Ok(()));
        }
        let wait = limiter.acquire(&key(), l, start).expect_err("the burst is spent");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Refused checks spend nothing: after one interval exactly one more is admitted.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.acquire(&key(), l, later), Ok(()));
        assert!(limiter.acquire(&key(), l, later).is_err());
        // After a full window the whole burst is back.
        let rested = later + Duration::from_millis(300);
        for _ in 0..3 {
            assert_eq!(limiter.acquire(&key(), l, rested), Ok(()));
        }
        assert!(limiter.acquire(&key(), l, rested).is_err());
    }

    #[test]
    fn a_replica_share_scales_rate_and_burst() {
        let limiter = RateLimiter::new(RateLimiterSettings { share: 0.5, ..RateLimiterSettings::default() });
        let now = Instant::now();
        let l = limit(4.0, 4);
        assert_eq!(limiter.acquire(&key(), l, now), Ok(()));
        assert_eq!(limiter.acquire(&key(), l, now), Ok(()));
        let wait = limiter.acquire(&key(), l, now).expect_err("half the burst");
        // Half the rate (one per 500 ms) and half the burst (2): the next one in 500 ms. Halving
        // only the burst would say 250 ms; halving only the rate would admit a third one.
        assert_eq!(wait, Duration::from_millis(500));
    }

    #[test]
    fn a_changed_limit_applies_within_one_of_its_intervals() {
        let limiter = RateLimiter::new(RateLimiterSettings::default());
        let now = Instant::now();
        let slow = limit(0.001, 2);
        assert_eq!(limiter.acquire(&key(), slow, now), Ok(()));
        assert_eq!(limiter.acquire(&key(), slow, now), Ok(()));
        let wait = limiter.acquire(&key(), slow, now).expect_err("the burst is spent");
        assert!(wait > Duration::from_secs(900), "{wait:?}");
        // Raised to 1000/s: the old debt (2000 s) is not carried over; the bucket starts empty
        // under the new limit and admits one check per millisecond.
        let fast = limit(1000.0, 1000);
        let wait = limiter.acquire(&key(), fast, now).expect_err("an empty bucket");
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        assert_eq!(limiter.acquire(&key(), fast, now + Duration::from_millis(2)), Ok(()));
        // Lowered again: never more than the slow limit's own burst at once.
        let later = now + Duration::from_millis(2);
        let admitted = (0..5).filter(|_| limiter.acquire(&key(), slow, later).is_ok()).count();
        assert!((1..=2).contains(&admitted), "{admitted}");
    }
}
