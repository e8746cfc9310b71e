//! Peer relays and keep-alive (`shared/reference/zajel-wire.md` §7),
//! sans-IO: `register` without a `pairingCode` key, `update_load`,
//! `get_relays` and `heartbeat` in (with `now`), replies out, and the
//! idle peer-relay connections to close (1000 "Heartbeat timeout").
//!
//! As in Zajel (memory only, per relay, never federated): a peer relay is
//! its `peerId`, `maxConnections` (default 20), `publicKey` (or null) and
//! load (`connectedCount`); `registered` lists up to 10 others, and
//! `get_relays` up to `count` (default 10), each with `connectedCount /
//! maxConnections` below 0.5, shuffled. `register`, `update_load`,
//! `heartbeat` and `register_rendezvous` refresh the peerId's last-seen
//! time (`ping` does not); [`PeerRelays::reap`] closes peerId connections
//! silent for longer than the heartbeat timeout (60 s), and their
//! rendezvous entries go with them. Re-registering rebinds and keeps the
//! load.
//!
//! Beyond Zajel, where it costs its clients nothing (none of them sends
//! these messages): a peerId is bound to one connection; another
//! connection may take it only once the holder has been silent past the
//! heartbeat timeout ("peerId is registered by another connection"), and
//! `update_load`/`heartbeat` change or refresh only the sender's own
//! peerId (the reply is the same either way).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use zajel_wire::rendezvous::{self as wire, PeerRelayInfo, RelayReply};

/// `error` when another live connection holds the peerId (ours).
pub const PEER_ID_IN_USE: &str = "peerId is registered by another connection";

#[derive(Debug)]
struct PeerRelay {
    connection: u64,
    max_connections: u64,
    connected_count: u64,
    public_key: Option<String>,
    last_seen: Instant,
}

impl PeerRelay {
    fn capacity(&self) -> f64 {
        if self.max_connections == 0 {
            return f64::INFINITY;
        }
        self.connected_count as f64 / self.max_connections as f64
    }
}

/// Registered peer relays by peerId.
#[derive(Debug)]
pub(crate) struct PeerRelays {
    heartbeat_timeout: Duration,
    relays: HashMap<String, PeerRelay>,
}

impl PeerRelays {
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Self {
            heartbeat_timeout,
            relays: HashMap::new(),
        }
    }

    /// The peerId `connection` holds.
    pub fn peer_id_of(&self, connection: u64) -> Option<&str> {
        self.relays
            .iter()
            .find(|(_, r)| r.connection == connection)
            .map(|(id, _)| id.as_str())
    }

    /// The connection holding `peer_id`.
    pub fn connection_of(&self, peer_id: &str) -> Option<u64> {
        self.relays.get(peer_id).map(|r| r.connection)
    }

    /// `register` with `peerId` from `connection`. `Err` is the `error` text.
    /// `random` draws the shuffle.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        now: Instant,
        connection: u64,
        peer_id: &str,
        max_connections: u64,
        public_key: Option<String>,
        server_id: &str,
        random: &mut dyn FnMut() -> u64,
    ) -> Result<RelayReply, &'static str> {
        let load = match self.relays.get(peer_id) {
            Some(held)
                if held.connection != connection
                    && now.saturating_duration_since(held.last_seen) <= self.heartbeat_timeout =>
            {
                return Err(PEER_ID_IN_USE);
            }
            Some(held) => held.connected_count,
            None => 0,
        };
        // One peerId per connection: a new one replaces the old.
        if let Some(old) = self.peer_id_of(connection).map(str::to_string) {
            if old != peer_id {
                self.relays.remove(&old);
            }
        }
        self.relays.insert(
            peer_id.to_string(),
            PeerRelay {
                connection,
                max_connections,
                connected_count: load,
                public_key,
                last_seen: now,
            },
        );
        Ok(RelayReply::Registered {
            peer_id: peer_id.to_string(),
            server_id: server_id.to_string(),
            relays: self.available(Some(peer_id), wire::REGISTERED_RELAY_COUNT, random),
        })
    }

    /// `update_load`: stored (and last-seen refreshed) only for the
    /// sender's own peerId; the echo always.
    pub fn update_load(
        &mut self,
        now: Instant,
        connection: u64,
        peer_id: Option<String>,
        connected_count: Option<u64>,
    ) -> RelayReply {
        if let Some(relay) = peer_id
            .as_deref()
            .and_then(|id| self.relays.get_mut(id))
            .filter(|r| r.connection == connection)
        {
            if let Some(count) = connected_count {
                relay.connected_count = count;
            }
            relay.last_seen = now;
        }
        RelayReply::LoadUpdated {
            peer_id,
            connected_count,
        }
    }

    /// `get_relays`: up to `count` others below half capacity, shuffled.
    pub fn get_relays(
        &self,
        peer_id: Option<&str>,
        count: usize,
        random: &mut dyn FnMut() -> u64,
    ) -> RelayReply {
        RelayReply::Relays {
            relays: self.available(peer_id, count, random),
        }
    }

    /// `heartbeat`: refreshes the sender's own peerId; `heartbeat_ack` with `unix_ms`.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        connection: u64,
        peer_id: Option<&str>,
        unix_ms: u64,
    ) -> RelayReply {
        self.touch(now, connection, peer_id);
        RelayReply::HeartbeatAck { timestamp: unix_ms }
    }

    /// Refreshes `peer_id`'s last-seen time if `connection` holds it
    /// (`register_rendezvous` does this too).
    pub fn touch(&mut self, now: Instant, connection: u64, peer_id: Option<&str>) {
        if let Some(relay) = peer_id
            .and_then(|id| self.relays.get_mut(id))
            .filter(|r| r.connection == connection)
        {
            relay.last_seen = now;
        }
    }

    /// Removes the peer relays silent for longer than the heartbeat
    /// timeout; returns (peerId, connection) of each, to close.
    pub fn reap(&mut self, now: Instant) -> Vec<(String, u64)> {
        let timeout = self.heartbeat_timeout;
        let idle: Vec<(String, u64)> = self
            .relays
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_seen) > timeout)
            .map(|(id, r)| (id.clone(), r.connection))
            .collect();
        for (id, _) in &idle {
            self.relays.remove(id);
        }
        idle
    }

    /// `connection` closed: returns the peerId it held, now dropped.
    pub fn connection_closed(&mut self, connection: u64) -> Option<String> {
        let peer_id = self.peer_id_of(connection)?.to_string();
        self.relays.remove(&peer_id);
        Some(peer_id)
    }

    fn available(
        &self,
        exclude: Option<&str>,
        count: usize,
        random: &mut dyn FnMut() -> u64,
    ) -> Vec<PeerRelayInfo> {
        let mut relays: Vec<PeerRelayInfo> = self
            .relays
            .iter()
            .filter(|(id, r)| {
                Some(id.as_str()) != exclude && r.capacity() < wire::RELAY_CAPACITY_THRESHOLD
            })
            .map(|(id, r)| PeerRelayInfo {
                peer_id: id.clone(),
                public_key: r.public_key.clone(),
                capacity: r.capacity(),
            })
            .collect();
        // Fisher–Yates.
        for i in (1..relays.len()).rev() {
            let j = (random() % (i as u64 + 1)) as usize;
            relays.swap(i, j);
        }
        relays.truncate(count);
        relays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(wire::HEARTBEAT_TIMEOUT_MS);

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0x9e37_79b9_7f4a_7c15u64;
        move || {
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            n
        }
    }

    fn register(relays: &mut PeerRelays, now: Instant, connection: u64, id: &str) -> RelayReply {
        relays
            .register(
                now,
                connection,
                id,
                20,
                Some(format!("{id}-key")),
                "ed25519:me",
                &mut counter(),
            )
            .unwrap()
    }

    #[test]
    fn registered_lists_the_others_below_half_capacity() {
        let mut relays = PeerRelays::new(TIMEOUT);
        let now = Instant::now();
        assert_eq!(
            register(&mut relays, now, 1, "relay-a").to_text(),
            r#"{"type":"registered","peerId":"relay-a","serverId":"ed25519:me","relays":[]}"#
        );
        register(&mut relays, now, 2, "relay-b");
        // relay-b at 10/20 = 0.5: not listed; relay-a at 9/20 is.
        relays.update_load(now, 2, Some("relay-b".into()), Some(10));
        relays.update_load(now, 1, Some("relay-a".into()), Some(9));
        let RelayReply::Registered { relays: listed, .. } =
            register(&mut relays, now, 3, "relay-c")
        else {
            panic!()
        };
        assert_eq!(
            listed,
            [PeerRelayInfo {
                peer_id: "relay-a".into(),
                public_key: Some("relay-a-key".into()),
                capacity: 0.45
            }]
        );
        // get_relays: every other one below half, at most `count`, shuffled.
        for id in 4..20 {
            register(&mut relays, now, id, &format!("relay-{id}"));
        }
        let RelayReply::Relays { relays: listed } =
            relays.get_relays(Some("relay-c"), 5, &mut counter())
        else {
            panic!()
        };
        assert_eq!(listed.len(), 5);
        assert!(listed
            .iter()
            .all(|r| r.peer_id != "relay-c" && r.peer_id != "relay-b"));
        let RelayReply::Relays { relays: all } = relays.get_relays(None, 100, &mut counter())
        else {
            panic!()
        };
        assert_eq!(all.len(), 18);
        let mut other_order = counter();
        other_order();
        let RelayReply::Relays { relays: shuffled } =
            relays.get_relays(None, 100, &mut other_order)
        else {
            panic!()
        };
        assert_ne!(
            all.iter().map(|r| &r.peer_id).collect::<Vec<_>>(),
            shuffled.iter().map(|r| &r.peer_id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn load_is_stored_only_for_the_senders_own_peer_id_and_always_echoed() {
        let mut relays = PeerRelays::new(TIMEOUT);
        let now = Instant::now();
        register(&mut relays, now, 1, "relay-a");
        // Another connection's update: echoed, not stored.
        assert_eq!(
            relays
                .update_load(now, 2, Some("relay-a".into()), Some(20))
                .to_text(),
            r#"{"type":"load_updated","peerId":"relay-a","connectedCount":20}"#
        );
        // The app's relay_client.dart form: no peerId.
        assert_eq!(
            relays.update_load(now, 2, None, Some(3)).to_text(),
            r#"{"type":"load_updated","connectedCount":3}"#
        );
        let RelayReply::Relays { relays: listed } = relays.get_relays(None, 10, &mut counter())
        else {
            panic!()
        };
        assert_eq!(listed[0].capacity, 0.0);
        // Re-registering keeps the load.
        relays.update_load(now, 1, Some("relay-a".into()), Some(5));
        register(&mut relays, now, 1, "relay-a");
        let RelayReply::Relays { relays: listed } = relays.get_relays(None, 10, &mut counter())
        else {
            panic!()
        };
        assert_eq!(listed[0].capacity, 0.25);
    }

    #[test]
    fn a_live_peer_id_cannot_be_taken_by_another_connection() {
        let mut relays = PeerRelays::new(TIMEOUT);
        let now = Instant::now();
        register(&mut relays, now, 1, "relay-a");
        assert_eq!(
            relays.register(now + TIMEOUT, 2, "relay-a", 20, None, "s", &mut counter()),
            Err(PEER_ID_IN_USE)
        );
        // Silent past the timeout: taken over (Zajel's rebind), load kept.
        assert!(relays
            .register(
                now + TIMEOUT + Duration::from_millis(1),
                2,
                "relay-a",
                20,
                None,
                "s",
                &mut counter()
            )
            .is_ok());
        assert_eq!(relays.connection_of("relay-a"), Some(2));
        assert_eq!(relays.connection_closed(1), None);
        assert_eq!(relays.connection_closed(2), Some("relay-a".into()));
    }

    #[test]
    fn heartbeats_refresh_last_seen_and_silent_relays_are_reaped() {
        let mut relays = PeerRelays::new(TIMEOUT);
        let start = Instant::now();
        register(&mut relays, start, 1, "relay-a");
        register(&mut relays, start, 2, "relay-b");
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(
            relays
                .heartbeat(at(50_000), 1, Some("relay-a"), 1_234)
                .to_text(),
            r#"{"type":"heartbeat_ack","timestamp":1234}"#
        );
        // A heartbeat naming another connection's peerId refreshes nothing.
        relays.heartbeat(at(50_000), 1, Some("relay-b"), 0);
        assert!(relays.reap(at(60_000)).is_empty());
        assert_eq!(relays.reap(at(60_001)), [("relay-b".to_string(), 2)]);
        relays.touch(at(100_000), 1, Some("relay-a"));
        assert!(relays.reap(at(160_000)).is_empty());
        assert_eq!(relays.reap(at(160_001)), [("relay-a".to_string(), 1)]);
        assert_eq!(relays.peer_id_of(1), None);
    }
}
