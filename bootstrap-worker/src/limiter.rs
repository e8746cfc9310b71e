//! Per-address rate limiting of registry mutations.
//!
//! A token bucket per client address (IPv6 addresses share one bucket per
//! /64, since one host usually holds a whole /64). The clock is passed in, so
//! the limiter behaves the same in the Worker, natively and in tests. The
//! table is bounded: full buckets are forgotten when it fills, and while it is
//! still full new addresses are refused rather than letting memory grow.

use std::collections::HashMap;
use std::net::IpAddr;

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: u64,
}

/// Token buckets keyed by client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: f64,
    max_tracked: usize,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    /// Allows `per_minute` mutations a minute per address, in bursts of up to as many.
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED)
    }

    /// As [`RateLimiter::new`], tracking at most `max_tracked` addresses.
    pub fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        Self {
            per_minute: f64::from(per_minute.max(1)),
            max_tracked,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `client`; `Err(seconds)` says when to retry.
    pub fn check(&mut self, client: &str, now_ms: u64) -> Result<(), u64> {
        let key = bucket_key(client);
        let per_ms = self.per_minute / 60_000.0;
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_tracked {
            let capacity = self.per_minute;
            self.buckets
                .retain(|_, bucket| refilled(bucket, now_ms, per_ms, capacity) < capacity);
            if self.buckets.len() >= self.max_tracked {
                return Err(60);
            }
        }
        let capacity = self.per_minute;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            updated_ms: now_ms,
        });
        bucket.tokens = refilled(bucket, now_ms, per_ms, capacity);
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) / per_ms;
            Err(((wait_ms / 1000.0).ceil() as u64).max(1))
        }
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

fn refilled(bucket: &Bucket, now_ms: u64, per_ms: f64, capacity: f64) -> f64 {
    let elapsed = now_ms.saturating_sub(bucket.updated_ms) as f64;
    (bucket.tokens + elapsed * per_ms).min(capacity)
}

fn bucket_key(client: &str) -> String {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => client.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_refuses_with_a_retry_time_then_refills() {
        let mut limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(limiter.check("10.0.0.1", 1_000), Ok(()));
        }
        assert_eq!(limiter.check("10.0.0.1", 1_000), Err(20));
        // Another address has its own bucket.
        assert_eq!(limiter.check("10.0.0.2", 1_000), Ok(()));
        // One token comes back every 20 s.
        assert_eq!(limiter.check("10.0.0.1", 21_000), Ok(()));
        assert!(limiter.check("10.0.0.1", 21_000).is_err());
    }

    #[test]
    fn an_ipv6_64_shares_one_bucket_and_mapped_v4_is_v4() {
        let mut limiter = RateLimiter::new(1);
        assert_eq!(limiter.check("2001:db8:1:2::1", 0), Ok(()));
        assert!(limiter.check("2001:db8:1:2:ffff::9", 0).is_err());
        assert_eq!(limiter.check("2001:db8:1:3::1", 0), Ok(()));
        assert_eq!(limiter.check("192.0.2.7", 0), Ok(()));
        assert!(limiter.check("::ffff:192.0.2.7", 0).is_err());
    }

    #[test]
    fn the_table_stays_bounded_under_an_address_flood() {
        let mut limiter = RateLimiter::with_capacity(2, 100);
        let mut refused = 0;
        for i in 0..1_000u32 {
            let address = std::net::Ipv4Addr::from(i).to_string();
            if limiter.check(&address, 0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(limiter.tracked(), 100);
        assert_eq!(refused, 900);
        // Once the tracked buckets have refilled they are forgotten, making room.
        assert_eq!(limiter.check("203.0.113.9", 60_000), Ok(()));
        assert_eq!(limiter.tracked(), 1);
    }
}
