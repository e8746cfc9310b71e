//! TURN quotas: live allocations per username and per client IP (refused
//! with 486 Allocation Quota Reached, RFC 8656 §7.2), stream connections per
//! client IP, and a per-allocation bandwidth cap (a token bucket in bytes
//! per second with a burst; datagrams over it are dropped, as a congested
//! path would drop them). The counting is sans-IO: holds are released when
//! dropped, and the bucket takes `now`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Live holds per key, at most `max` each. A hold releases itself on drop.
pub(crate) struct Holds<K: Eq + Hash + Clone> {
    max: usize,
    counts: Mutex<HashMap<K, usize>>,
}

/// One counted hold on a key of [`Holds`].
pub(crate) struct Hold<K: Eq + Hash + Clone> {
    holds: Arc<Holds<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Holds<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A hold on `key`, or `None` when `key` already has `max`.
    pub fn try_hold(self: &Arc<Self>, key: K) -> Option<Hold<K>> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Hold {
            holds: self.clone(),
            key,
        })
    }

    /// Live holds on `key`.
    #[cfg(test)]
    pub fn count(&self, key: &K) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Keys with at least one hold (the table never keeps zero counts).
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Hold<K> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.holds.counts.lock() {
            if let Some(count) = counts.get_mut(&self.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&self.key);
                }
            }
        }
    }
}

/// Which allocation quota refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaRefusal {
    Username,
    Source,
}

/// Live allocations per TURN username and per client IP.
pub(crate) struct AllocationQuotas {
    per_username: Arc<Holds<String>>,
    per_source: Arc<Holds<IpAddr>>,
}

/// The quota an allocation holds while it lives.
pub(crate) struct AllocationHold {
    _username: Hold<String>,
    _source: Hold<IpAddr>,
}

impl AllocationQuotas {
    pub fn new(per_username: usize, per_source: usize) -> Self {
        Self {
            per_username: Holds::new(per_username),
            per_source: Holds::new(per_source),
        }
    }

    /// Room for one more allocation of `username` from `source`, or which
    /// quota is full (nothing is held then).
    pub fn try_hold(&self, username: &str, source: IpAddr) -> Result<AllocationHold, QuotaRefusal> {
        let username = self
            .per_username
            .try_hold(username.to_owned())
            .ok_or(QuotaRefusal::Username)?;
        let source = self
            .per_source
            .try_hold(source)
            .ok_or(QuotaRefusal::Source)?;
        Ok(AllocationHold {
            _username: username,
            _source: source,
        })
    }
}

/// A token bucket of bytes: `rate` per second, at most `burst` saved up.
/// A datagram passes whole or not at all.
#[derive(Debug)]
pub(crate) struct ByteBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl ByteBucket {
    /// A full bucket.
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        Self {
            rate: rate_bytes_per_sec as f64,
            burst: burst_bytes as f64,
            tokens: burst_bytes as f64,
            at: now,
        }
    }

    /// Whether `len` bytes may pass at `now` (they are taken if so).
    pub fn take(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        let len = len as f64;
        if self.tokens >= len {
            self.tokens -= len;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_are_capped_per_key_and_released_on_drop() {
        let holds = Holds::new(2);
        let a1 = holds.try_hold("a").unwrap();
        let _a2 = holds.try_hold("a").unwrap();
        assert!(holds.try_hold("a").is_none(), "a third for one key");
        let b1 = holds.try_hold("b").unwrap();
        drop(a1);
        assert_eq!(holds.count(&"a"), 1);
        assert!(holds.try_hold("a").is_some());
        drop(b1);
        assert_eq!(holds.count(&"b"), 0);
        assert_eq!(holds.keys(), 1, "released keys leave the table");
    }

    #[test]
    fn allocation_quotas_refuse_per_username_and_per_source() {
        let quotas = AllocationQuotas::new(2, 3);
        let here: IpAddr = [198, 51, 100, 1].into();
        let there: IpAddr = [198, 51, 100, 2].into();
        let mut live = vec![
            quotas.try_hold("alice", here).ok().unwrap(),
            quotas.try_hold("alice", there).ok().unwrap(),
        ];
        assert_eq!(
            quotas.try_hold("alice", here).err(),
            Some(QuotaRefusal::Username)
        );
        live.push(quotas.try_hold("bob", here).ok().unwrap());
        live.push(quotas.try_hold("carol", here).ok().unwrap());
        assert_eq!(
            quotas.try_hold("dave", here).err(),
            Some(QuotaRefusal::Source)
        );
        // A refusal on the source quota holds nothing on the username.
        assert!(quotas.try_hold("dave", there).is_ok());
        live.clear();
        assert!(quotas.try_hold("alice", here).is_ok());
    }

    #[test]
    fn the_byte_bucket_passes_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = ByteBucket::new(1_000, 1_500, start);
        assert!(bucket.take(1_000, start));
        assert!(bucket.take(500, start));
        assert!(!bucket.take(1, start), "the burst is spent");
        let later = start + Duration::from_millis(500);
        assert!(!bucket.take(600, later), "500 bytes earned in 0.5 s");
        assert!(bucket.take(500, later));
        // Saved up over a long pause: at most the burst.
        let much_later = later + Duration::from_secs(60);
        assert!(!bucket.take(1_501, much_later));
        assert!(bucket.take(1_500, much_later));
    }
}
