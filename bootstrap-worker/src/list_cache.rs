//! The registry's read cache: the signed `GET /servers` body and the
//! entries of the heartbeat's peer list, built once from the store and
//! served until the list changes or its timestamp must be refreshed.
//!
//! A snapshot is taken at one instant (its `timestamp`) and holds the
//! entries fresh then, each already serialised. It is served while all of
//! these hold (see [`ListSnapshot::serves`]):
//! - nothing visible changed since (the registry drops it on every
//!   mutation of the listed set: registration, admission, drop after
//!   failed rechecks, delete, expiry sweep; a heartbeat that only moves an
//!   already listed entry's `lastSeen` keeps it);
//! - it is younger than [`LIST_REFRESH_MS`], well inside the 5 minutes
//!   clients accept around their own clock
//!   ([`zajel_wire::signature::FRESHNESS_WINDOW_MS`]; Zajel's app and
//!   `discovery-core` both refuse a list whose timestamp is further than
//!   that from their clock), leaving the rest of the window to clock skew;
//! - no entry in it has gone stale (the earliest `lastSeen + ttl`), so an
//!   expired entry is never served;
//! - the clock has not gone back before the snapshot.
//!
//! The bodies it assembles are byte for byte what serialising
//! [`ServerList`](zajel_wire::entry::ServerList) and
//! [`HeartbeatResponse`](zajel_wire::entry::HeartbeatResponse) gives (a
//! test holds it to that), so hosts and clients see no difference but the
//! `timestamp` (the snapshot's) and the peers' `lastSeen` (as of the
//! snapshot, at most [`LIST_REFRESH_MS`] old).
//!
//! Each snapshot has an entity tag ([`ListSnapshot::etag`], sent as `ETag`)
//! made of its timestamp and a 64-bit hash of its body, so two snapshots
//! with different bodies never share one, even when built in the same
//! millisecond; a client that sends it back in `If-None-Match` gets 304
//! while that very snapshot is the one served.

use std::collections::HashMap;
use std::hash::Hasher;
use std::ops::Range;

use bytes::Bytes;

use zajel_wire::entry::ServerEntry;

/// How long a signed list (and the peer list) is served before it is built
/// and signed again with a new timestamp: a fifth of the 5-minute window
/// clients accept, so a client whose clock runs up to 4 minutes ahead of
/// the registry's still accepts the oldest body served.
pub const LIST_REFRESH_MS: u64 = 60_000;

/// One snapshot of the listed entries, with the signed list built from it.
#[derive(Debug, Clone)]
pub struct ListSnapshot {
    /// When it was built: the list's `timestamp`.
    pub built_ms: u64,
    /// The first instant it may no longer be served.
    pub expires_ms: u64,
    /// The entries, serialised and joined with commas (the inside of a JSON array).
    joined: Vec<u8>,
    /// Where each entry lies in `joined`, in list order.
    spans: Vec<Range<usize>>,
    /// Index of each entry in `spans`, by `serverId`.
    index: HashMap<String, usize>,
    /// The `GET /servers` body (shared by every response that serves it).
    pub list_body: Bytes,
    /// Its `X-Bootstrap-Signature`, when the registry signs.
    pub signature: Option<String>,
    /// Its entity tag, quoted as `ETag` carries it: `"<timestamp hex>-<hash hex>"`.
    pub etag: String,
}

impl ListSnapshot {
    /// Builds a snapshot at `now_ms` of `servers` (the entries fresh then,
    /// in list order), which go stale `ttl_ms` after their `lastSeen`;
    /// `sign` makes the list's signature header from its body.
    pub fn build(
        servers: &[ServerEntry],
        now_ms: u64,
        ttl_ms: u64,
        sign: impl FnOnce(&[u8]) -> Option<String>,
    ) -> Self {
        let mut joined = Vec::with_capacity(servers.len() * 256);
        let mut spans = Vec::with_capacity(servers.len());
        let mut index = HashMap::with_capacity(servers.len());
        let mut earliest_stale = u64::MAX;
        for (position, entry) in servers.iter().enumerate() {
            if position > 0 {
                joined.push(b',');
            }
            let start = joined.len();
            // Serialising a struct of strings and integers cannot fail.
            serde_json::to_writer(&mut joined, entry).unwrap_or_default();
            spans.push(start..joined.len());
            index.insert(entry.server_id.clone(), position);
            earliest_stale = earliest_stale.min(entry.last_seen.saturating_add(ttl_ms));
        }
        let mut list_body = Vec::with_capacity(joined.len() + 48);
        list_body.extend_from_slice(b"{\"servers\":[");
        list_body.extend_from_slice(&joined);
        list_body.extend_from_slice(format!("],\"timestamp\":{now_ms}}}").as_bytes());
        let signature = sign(&list_body);
        let etag = entity_tag(now_ms, &list_body);
        Self {
            built_ms: now_ms,
            expires_ms: now_ms.saturating_add(LIST_REFRESH_MS).min(earliest_stale),
            joined,
            spans,
            index,
            list_body: Bytes::from(list_body),
            signature,
            etag,
        }
    }

    /// Whether an `If-None-Match` value names this snapshot: one of its
    /// comma-separated entity tags (weak or strong, compared weakly as RFC
    /// 9110 asks for this header) is [`Self::etag`] or its gzip form
    /// ([`gzip_etag`]), or it is `*`.
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match.split(',').map(str::trim).any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag == self.etag || tag == gzip_etag(&self.etag)
        })
    }

    /// Whether this snapshot may still be served at `now_ms`.
    pub fn serves(&self, now_ms: u64) -> bool {
        now_ms >= self.built_ms && now_ms < self.expires_ms
    }

    /// Whether `server_id` is in this snapshot.
    pub fn lists(&self, server_id: &str) -> bool {
        self.index.contains_key(server_id)
    }

    /// How many entries it lists.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether it lists nothing.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The body of a successful heartbeat from `caller`: every listed entry
    /// but the caller's.
    pub fn heartbeat_body(&self, caller: &str) -> Vec<u8> {
        const HEAD: &[u8] = b"{\"success\":true,\"peers\":[";
        const TAIL: &[u8] = b"]}";
        let mut body = Vec::with_capacity(HEAD.len() + self.joined.len() + TAIL.len());
        body.extend_from_slice(HEAD);
        match self.index.get(caller).map(|&i| self.spans[i].clone()) {
            None => body.extend_from_slice(&self.joined),
            Some(span) => {
                // Drop the caller's entry and one of the commas around it.
                let before = &self.joined[..span.start.saturating_sub(1)];
                let after = &self.joined[span.end..];
                if before.is_empty() {
                    body.extend_from_slice(after.strip_prefix(b",").unwrap_or(after));
                } else {
                    body.extend_from_slice(before);
                    body.extend_from_slice(after);
                }
            }
        }
        body.extend_from_slice(TAIL);
        body
    }
}

/// The entity tag of the gzip-encoded list (a strong tag names one
/// representation): `etag` with `-gzip` inside its quotes.
pub fn gzip_etag(etag: &str) -> String {
    match etag.strip_suffix('"') {
        Some(open) => format!("{open}-gzip\""),
        None => format!("{etag}-gzip"),
    }
}

/// The entity tag of a body built at `built_ms`: its timestamp and a 64-bit
/// SipHash of its bytes (fixed keys, so every instance of a host agrees).
fn entity_tag(built_ms: u64, body: &[u8]) -> String {
    #[allow(deprecated)] // SipHasher is the stable, keyed-by-zero SipHash-2-4.
    let mut hasher = std::hash::SipHasher::new();
    hasher.write(body);
    format!("\"{built_ms:x}-{:016x}\"", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_wire::entry::{HeartbeatResponse, ServerList};

    fn entry(n: u64, last_seen: u64) -> ServerEntry {
        ServerEntry {
            server_id: format!("ed25519:id{n}"),
            endpoint: format!("wss://r{n}.example/\"quoted\"\u{e9}"),
            public_key: format!("id{n}"),
            region: "eu \\ west".into(),
            registered_at: 1_000 + n,
            last_seen,
        }
    }

    #[test]
    fn bodies_are_what_serialising_the_wire_types_gives() {
        for count in [0u64, 1, 2, 3, 7] {
            let servers: Vec<_> = (0..count).map(|n| entry(n, 5_000 + n)).collect();
            let snapshot = ListSnapshot::build(&servers, 9_000, 60_000, |_| None);
            let expected = serde_json::to_vec(&ServerList {
                servers: servers.clone(),
                timestamp: 9_000,
            })
            .unwrap();
            assert_eq!(snapshot.list_body, expected, "{count} entries");
            assert_eq!(snapshot.len() as u64, count);
            for caller in 0..=count {
                let id = format!("ed25519:id{caller}");
                let peers = servers
                    .iter()
                    .filter(|e| e.server_id != id)
                    .cloned()
                    .collect();
                let expected = serde_json::to_vec(&HeartbeatResponse {
                    success: true,
                    peers,
                })
                .unwrap();
                assert_eq!(
                    String::from_utf8(snapshot.heartbeat_body(&id)).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "{count} entries, caller {caller}"
                );
            }
        }
    }

    #[test]
    fn served_until_the_refresh_age_or_the_first_entry_goes_stale() {
        let now = 1_000_000;
        let young = ListSnapshot::build(&[entry(1, now)], now, 600_000, |_| None);
        assert!(young.serves(now));
        assert!(young.serves(now + LIST_REFRESH_MS - 1));
        assert!(!young.serves(now + LIST_REFRESH_MS));
        assert!(!young.serves(now - 1), "the clock went back");
        // An entry seen 59.99 s before a 60 s TTL ends it sooner.
        let ageing = ListSnapshot::build(
            &[entry(1, now - 59_990), entry(2, now)],
            now,
            60_000,
            |_| None,
        );
        assert!(ageing.serves(now + 9));
        assert!(!ageing.serves(now + 10));
        let signed = ListSnapshot::build(&[], now, 60_000, |body| {
            Some(String::from_utf8_lossy(body).into_owned())
        });
        assert_eq!(
            signed.signature.as_deref(),
            Some("{\"servers\":[],\"timestamp\":1000000}"),
            "the signature is made over the body"
        );
        assert!(signed.is_empty());
    }

    #[test]
    fn the_entity_tag_names_one_body() {
        let now = 1_000_000;
        let one = ListSnapshot::build(&[entry(1, now)], now, 600_000, |_| None);
        let again = ListSnapshot::build(&[entry(1, now)], now, 600_000, |_| None);
        let other = ListSnapshot::build(&[entry(2, now)], now, 600_000, |_| None);
        let later = ListSnapshot::build(&[entry(1, now)], now + 1, 600_000, |_| None);
        assert_eq!(one.etag, again.etag, "same body, same tag");
        assert_ne!(one.etag, other.etag, "another list in the same millisecond");
        assert_ne!(one.etag, later.etag);
        assert!(one.etag.starts_with('"') && one.etag.ends_with('"'));
        assert!(one.matches(&one.etag));
        assert!(one.matches(&format!("\"x\", W/{}", one.etag)));
        assert!(one.matches("*"));
        assert!(!one.matches(&other.etag));
        assert!(!one.matches(""));
        assert!(
            !one.matches(one.etag.trim_matches('"')),
            "unquoted is another tag"
        );
        assert!(one.matches(&gzip_etag(&one.etag)), "the gzip form");
        assert_ne!(gzip_etag(&one.etag), one.etag);
        assert!(!one.matches(&gzip_etag(&other.etag)));
    }
}
