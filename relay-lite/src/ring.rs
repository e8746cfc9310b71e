//! The hash ring that decides which server keeps a rendezvous point or token
//! (`zajel-wire.md` §8.5), the same as Zajel's server so a mixed fleet
//! agrees: a position is the first 20 bytes of SHA-256 of a UTF-8 string, as
//! a big-endian 160-bit number; each server has one primary position (from
//! its node id) and [`VIRTUAL_NODES`] virtual ones (from `"<serverId>:<i>"`);
//! a key's responsible list walks clockwise from the first position ≥ the
//! key's (wrapping), collecting distinct servers. A server keeps a key when
//! it is among the first [`REPLICATION_FACTOR`] responsible servers, or when
//! it is alone (≤ 1 server in the ring).
//!
//! Node ids: Zajel's server puts a server it learnt from the registry at
//! `nodeId = serverId` (§8.4) and only itself at its real node id (hex of
//! SHA-256 of its key). relay-lite uses `serverId` as every server's node id,
//! itself included, so its view equals what every Zajel server holds for the
//! registry's servers; the one difference is a Zajel server's own primary
//! position in that server's own view (1 of its 151 positions).
//!
//! Who is in the ring is the caller's choice ([`Ring::new`] takes the
//! alive servers): relay-lite builds it from the registries' signed lists,
//! keeping only itself and the servers with a live federation link
//! (`crate::ownership`).

use sha2::{Digest, Sha256};

/// Virtual positions per server (Zajel's `ZAJEL_VIRTUAL_NODES` default).
pub const VIRTUAL_NODES: usize = 150;
/// Servers that keep each key (Zajel's `ZAJEL_REPLICATION_FACTOR` default).
pub const REPLICATION_FACTOR: usize = 3;

/// A ring position: 160 bits, big-endian (so byte order is numeric order).
pub type Position = [u8; 20];

/// The position of `input`: the first 20 bytes of SHA-256(UTF-8).
pub fn position(input: &str) -> Position {
    let digest = Sha256::digest(input.as_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest[..20]);
    out
}

/// One server in the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingServer {
    pub server_id: String,
    /// Where clients reach it (the registry's `endpoint`), for redirects.
    pub endpoint: String,
}

/// The ring of the alive servers.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    servers: Vec<RingServer>,
    /// (position, index into `servers`), sorted by position.
    positions: Vec<(Position, usize)>,
}

impl Ring {
    /// A ring of `servers` (all alive), each with `nodeId = serverId`; a
    /// server id given twice counts once (the first).
    pub fn new(servers: impl IntoIterator<Item = RingServer>) -> Self {
        let mut ring = Ring::default();
        for server in servers {
            if ring.servers.iter().any(|s| s.server_id == server.server_id) {
                continue;
            }
            let index = ring.servers.len();
            ring.positions.push((position(&server.server_id), index));
            for i in 0..VIRTUAL_NODES {
                let virtual_key = format!("{}:{i}", server.server_id);
                ring.positions.push((position(&virtual_key), index));
            }
            ring.servers.push(server);
        }
        // Stable, as JavaScript's sort: equal positions keep insertion order.
        ring.positions.sort_by_key(|entry| entry.0);
        ring
    }

    /// Servers in the ring.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The first `count` distinct servers responsible for `key`, primary first.
    pub fn responsible(&self, key: &str, count: usize) -> Vec<&RingServer> {
        let mut out: Vec<&RingServer> = Vec::new();
        if self.positions.is_empty() {
            return out;
        }
        let target = position(key);
        let start = self.positions.partition_point(|(p, _)| *p < target) % self.positions.len();
        for step in 0..self.positions.len() {
            if out.len() >= count {
                break;
            }
            let (_, index) = self.positions[(start + step) % self.positions.len()];
            let server = &self.servers[index];
            if !out.iter().any(|s| s.server_id == server.server_id) {
                out.push(server);
            }
        }
        out
    }

    /// Whether `own_id` keeps `key`: among the first [`REPLICATION_FACTOR`]
    /// responsible servers, or alone in the ring.
    pub fn keeps(&self, own_id: &str, key: &str) -> bool {
        self.servers.len() <= 1
            || self
                .responsible(key, REPLICATION_FACTOR)
                .iter()
                .any(|s| s.server_id == own_id)
    }

    /// The primary (first responsible) server of `key`.
    pub fn primary(&self, key: &str) -> Option<&RingServer> {
        self.responsible(key, 1).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Computed once by `tests/data/ring_vectors.mjs`, an independent
    /// implementation of §8.5 in node.
    const VECTORS: &str = include_str!("../tests/data/ring_vectors.json");

    fn hex(position: &Position) -> String {
        position.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn server(id: &str) -> RingServer {
        RingServer {
            server_id: id.to_string(),
            endpoint: format!("wss://{id}.example"),
        }
    }

    fn ids(list: &[&RingServer]) -> Vec<String> {
        list.iter().map(|s| s.server_id.clone()).collect()
    }

    fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    }

    #[test]
    fn positions_match_the_independent_vectors() {
        let vectors: Value = serde_json::from_str(VECTORS).expect("vectors");
        let cases = vectors["positions"].as_array().expect("positions");
        assert!(!cases.is_empty());
        for case in cases {
            let input = case["input"].as_str().expect("input");
            assert_eq!(hex(&position(input)), case["position"], "{input:?}");
        }
    }

    #[test]
    fn responsible_lists_match_the_independent_vectors_for_two_to_five_servers() {
        let vectors: Value = serde_json::from_str(VECTORS).expect("vectors");
        let fleets = vectors["fleets"].as_array().expect("fleets");
        assert_eq!(fleets.len(), 4);
        for fleet in fleets {
            let members = strings(&fleet["servers"]);
            let ring = Ring::new(members.iter().map(|id| server(id)));
            assert_eq!(ring.len(), members.len());
            for case in fleet["responsible"].as_array().expect("cases") {
                let key = case["key"].as_str().expect("key");
                assert_eq!(
                    ids(&ring.responsible(key, 3)),
                    strings(&case["top3"]),
                    "{key}"
                );
                assert_eq!(
                    ids(&ring.responsible(key, members.len())),
                    strings(&case["all"]),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn up_to_three_servers_everyone_keeps_everything_and_beyond_only_the_top_three() {
        let ids: Vec<String> = (0..5).map(|i| format!("ed25519:s{i}")).collect();
        for n in 1..=5 {
            let ring = Ring::new(ids[..n].iter().map(|id| server(id)));
            for k in 0..50 {
                let key = format!("hr_{k}");
                let keepers = ids[..n].iter().filter(|id| ring.keeps(id, &key)).count();
                assert_eq!(keepers, n.min(REPLICATION_FACTOR), "n={n} {key}");
                let primary = ring.primary(&key).expect("primary");
                assert!(ring.keeps(&primary.server_id, &key));
            }
        }
        assert!(Ring::new([]).keeps("anyone", "hr_x"));
        assert!(Ring::new([]).primary("hr_x").is_none());
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let ids: Vec<String> = (0..5).map(|i| format!("ed25519:s{i}")).collect();
        let full = Ring::new(ids.iter().map(|id| server(id)));
        let without = Ring::new(ids[..4].iter().map(|id| server(id)));
        let mut moved = 0;
        for k in 0..200 {
            let key = format!("day_{k}");
            let before = full.primary(&key).expect("primary").server_id.clone();
            let after = without.primary(&key).expect("primary").server_id.clone();
            if before != ids[4] {
                assert_eq!(before, after, "{key}");
            } else {
                moved += 1;
                assert_ne!(after, ids[4]);
            }
        }
        assert!(moved > 0, "s4 owned some keys");
    }
}
