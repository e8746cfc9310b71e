//! Rate limits and connection caps: Zajel's fixed-window counters per
//! connection, and the per-address connection count (IPv6 grouped by /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A fixed window: at most `limit` events per `window`, counted from the
/// first event of the window (Zajel's scheme: the counter resets when an
/// event arrives a full window after the window started).
#[derive(Debug, Clone)]
pub struct FixedWindow {
    limit: u32,
    window: Duration,
    count: u32,
    started: Option<Instant>,
}

impl FixedWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            count: 0,
            started: None,
        }
    }

    /// Counts one event at `now`; whether it is within the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.started {
            Some(started) if now.duration_since(started) < self.window => {
                self.count = self.count.saturating_add(1);
                self.count <= self.limit
            }
            _ => {
                self.started = Some(now);
                self.count = 1;
                self.limit >= 1
            }
        }
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
pub fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Open connections per client address.
#[derive(Debug, Clone)]
pub struct AddressCounter {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    key: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressCounter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::default(),
        }
    }

    /// Counts a connection from `address`, or `None` when it already has `limit`.
    pub fn acquire(&self, address: IpAddr) -> Option<AddressSlot> {
        let key = address_key(address);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            key,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window_allows_the_limit_then_resets() {
        let start = Instant::now();
        let mut window = FixedWindow::new(3, Duration::from_secs(60));
        assert!((0..3).all(|_| window.allow(start)));
        assert!(!window.allow(start + Duration::from_secs(59)));
        assert!(window.allow(start + Duration::from_secs(60)));
    }

    #[test]
    fn addresses_are_capped_and_released() {
        let counter = AddressCounter::new(2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let one = counter.acquire(a).unwrap();
        let _two = counter.acquire(b).unwrap();
        assert!(counter.acquire(a).is_none(), "same /64");
        assert!(counter.acquire("127.0.0.1".parse().unwrap()).is_some());
        drop(one);
        assert!(counter.acquire(a).is_some());
    }
}
