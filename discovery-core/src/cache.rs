//! Layers 3 and 4's model and rules, shared by every client: the store of
//! servers that worked (the cache) and of servers that paired contacts
//! shared (referrals), with the signed revocations seen in TXT answers.
//!
//! This module owns what an entry is ([`CachedServer`], [`Referral`]), the
//! stored data ([`StoreData`]: its JSON shape is the `servers`, `referrals`
//! and `revocations` keys that the native file and the browser's envelope
//! both carry), how a run's results change it (answers, failures,
//! revocations, referrals), its bounds and expiry ([`prune`]), and how the
//! cache and referral layers read it ([`StoreData::source`]). It does no
//! I/O: discovery-client keeps it in a versioned file written atomically,
//! discovery-web in one digest-checked `localStorage` value; each owns only
//! its I/O and its envelope (version, digest) around this data.

use serde::{Deserialize, Serialize};
use zajel_wire::pairing::PairingCode;

use crate::discovery::{CheckedServer, Found, SourceFindings};
use crate::report::{Layer, Outcome};
use crate::txt::Revocation;

/// Most cached servers kept (the least recently working are dropped).
pub const MAX_SERVERS: usize = 64;
/// Most referrals kept (the oldest are dropped).
pub const MAX_REFERRALS: usize = 128;
/// Most revocations kept (those expiring last win).
pub const MAX_REVOCATIONS: usize = 256;
/// A cached server that has not worked for this long is dropped (30 days).
pub const SERVER_EXPIRY_MS: u64 = 30 * 24 * 3600 * 1000;
/// A referral is dropped after this long (180 days).
pub const REFERRAL_EXPIRY_MS: u64 = 180 * 24 * 3600 * 1000;

/// A server that worked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedServer {
    /// The WebSocket URL.
    pub url: String,
    /// Whether a signed source named it when it worked.
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Last time it answered (ms since the epoch).
    pub last_ok_ms: u64,
    /// Last time it failed a check, if after it last worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fail_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

/// A server a paired contact shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub url: String,
    /// The contact's pairing code.
    pub code: PairingCode,
    pub added_ms: u64,
}

/// Everything stored: cached servers, referrals and revocations (without
/// the envelope each client wraps it in).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoreData {
    #[serde(default)]
    pub servers: Vec<CachedServer>,
    #[serde(default)]
    pub referrals: Vec<Referral>,
    /// Signed revocations seen in TXT answers, kept until they expire so
    /// that a replayed record of a retired server is refused on later runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,
}

impl StoreData {
    /// Records what a run's checks found: servers that answered, and
    /// failures of cached ones (unknown URLs that failed are not added).
    pub fn remember(&mut self, checked: Vec<CheckedServer>, now_ms: u64) {
        for server in checked {
            if server.answered {
                self.record_ok(
                    &server.url,
                    server.verified,
                    server.server_id,
                    server.rtt_ms,
                    now_ms,
                );
            } else {
                self.record_failure(&server.url, now_ms);
            }
        }
        prune(self, now_ms);
    }

    /// Records that `url` answered.
    pub fn record_ok(
        &mut self,
        url: &str,
        verified: bool,
        server_id: Option<String>,
        rtt_ms: Option<f64>,
        now_ms: u64,
    ) {
        if let Some(entry) = self.servers.iter_mut().find(|s| s.url == url) {
            entry.verified = verified || entry.verified;
            entry.server_id = server_id.or(entry.server_id.take());
            entry.last_ok_ms = now_ms;
            entry.last_fail_ms = None;
            entry.rtt_ms = rtt_ms;
        } else {
            self.servers.push(CachedServer {
                url: url.to_string(),
                verified,
                server_id,
                last_ok_ms: now_ms,
                last_fail_ms: None,
                rtt_ms,
            });
        }
    }

    /// Records that a cached `url` failed its check (unknown URLs are not added).
    pub fn record_failure(&mut self, url: &str, now_ms: u64) {
        if let Some(entry) = self.servers.iter_mut().find(|s| s.url == url) {
            entry.last_fail_ms = Some(now_ms);
        }
    }

    /// Adds a revocation (or makes a known one last as long as this one).
    pub fn add_revocation(&mut self, revocation: Revocation) {
        match self
            .revocations
            .iter_mut()
            .find(|r| r.server_id == revocation.server_id)
        {
            Some(known) => known.expires = known.expires.max(revocation.expires),
            None => self.revocations.push(revocation),
        }
    }

    /// Revocations still in force at `now_ms`.
    pub fn revocations_in_force(&self, now_ms: u64) -> Vec<Revocation> {
        self.revocations
            .iter()
            .filter(|r| r.expires.saturating_mul(1000) > now_ms)
            .cloned()
            .collect()
    }

    /// Adds (or refreshes) a referral.
    pub fn add_referral(&mut self, url: &str, code: PairingCode, now_ms: u64) {
        self.referrals.retain(|r| !(r.url == url && r.code == code));
        self.referrals.push(Referral {
            url: url.to_string(),
            code,
            added_ms: now_ms,
        });
    }

    /// The cache or referral layer's reading of the store; `warnings` are
    /// why the stored value could not be read as it was (the cache layer's
    /// detail then says so).
    pub fn source(&self, layer: Layer, warnings: &[String]) -> SourceFindings {
        let found: Vec<Found> = if layer == Layer::Cache {
            self.servers
                .iter()
                .map(|s| Found {
                    url: s.url.clone(),
                    verified: s.verified,
                    server_id: s.server_id.clone(),
                    last_ok_ms: Some(s.last_ok_ms),
                })
                .collect()
        } else {
            self.referrals
                .iter()
                .map(|r| Found::unverified(r.url.clone()))
                .collect()
        };
        let outcome = if found.is_empty() {
            Outcome::Empty
        } else {
            Outcome::Ok
        };
        let mut detail = if layer == Layer::Referral {
            self.referrals
                .iter()
                .map(|r| format!("{} from contact {}", r.url, r.code))
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            String::new()
        };
        if layer == Layer::Cache && !warnings.is_empty() {
            detail = warnings.join("; ");
        }
        if found.is_empty() && detail.is_empty() {
            detail = "no entries".into();
        }
        (outcome, detail, found)
    }
}

/// Drops expired entries and keeps the store within its bounds (most
/// recently working servers, newest referrals, revocations expiring last).
pub fn prune(data: &mut StoreData, now_ms: u64) {
    data.servers
        .retain(|s| now_ms.saturating_sub(s.last_ok_ms) < SERVER_EXPIRY_MS);
    data.servers
        .sort_by_key(|s| std::cmp::Reverse(s.last_ok_ms));
    data.servers.truncate(MAX_SERVERS);
    data.referrals
        .retain(|r| now_ms.saturating_sub(r.added_ms) < REFERRAL_EXPIRY_MS);
    data.referrals
        .sort_by_key(|r| std::cmp::Reverse(r.added_ms));
    data.referrals.truncate(MAX_REFERRALS);
    data.revocations
        .retain(|r| r.expires.saturating_mul(1000) > now_ms);
    data.revocations
        .sort_by_key(|r| std::cmp::Reverse(r.expires));
    data.revocations.truncate(MAX_REVOCATIONS);
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn sample() -> StoreData {
        let mut data = StoreData::default();
        data.record_ok(
            "wss://a.example/",
            true,
            Some("ed25519:k".into()),
            Some(12.0),
            NOW,
        );
        data.add_referral("wss://b.example/", "ABC234".parse().unwrap(), NOW);
        data
    }

    #[test]
    fn bounded_size() {
        let mut data = StoreData::default();
        for i in 0..(MAX_SERVERS + 10) {
            data.record_ok(
                &format!("wss://s{i}.example/"),
                true,
                None,
                None,
                NOW + i as u64,
            );
        }
        prune(&mut data, NOW + 100);
        assert_eq!(data.servers.len(), MAX_SERVERS);
        // The most recently working are kept.
        assert!(data.servers.iter().any(|s| s.url == "wss://s73.example/"));
        assert!(!data.servers.iter().any(|s| s.url == "wss://s0.example/"));
    }

    #[test]
    fn expired_servers_and_referrals_are_dropped() {
        let mut data = sample();
        data.record_ok(
            "wss://old.example/",
            false,
            None,
            None,
            NOW - SERVER_EXPIRY_MS - 1,
        );
        data.add_referral(
            "wss://old-referral.example/",
            "XYZ234".parse().unwrap(),
            NOW - REFERRAL_EXPIRY_MS,
        );
        prune(&mut data, NOW);
        assert_eq!(data, sample());
    }

    #[test]
    fn revocations_merge_by_server_and_are_kept_until_they_expire() {
        let now_secs = NOW / 1000;
        let revocation = |id: &str, expires| Revocation {
            server_id: id.into(),
            expires,
        };
        let mut data = StoreData::default();
        data.add_revocation(revocation("ed25519:a", now_secs + 60));
        data.add_revocation(revocation("ed25519:a", now_secs + 600));
        data.add_revocation(revocation("ed25519:a", now_secs + 30));
        data.add_revocation(revocation("ed25519:b", now_secs + 10));
        assert_eq!(data.revocations.len(), 2);
        assert_eq!(
            data.revocations_in_force(NOW),
            [
                revocation("ed25519:a", now_secs + 600),
                revocation("ed25519:b", now_secs + 10)
            ]
        );
        assert_eq!(
            data.revocations_in_force(NOW + 10_000),
            [revocation("ed25519:a", now_secs + 600)]
        );
        prune(&mut data, NOW + 10_000);
        assert_eq!(data.revocations, [revocation("ed25519:a", now_secs + 600)]);
    }

    #[test]
    fn remembering_keeps_answers_marks_failures_and_expires_old_entries() {
        let mut data = sample();
        data.record_ok(
            "wss://old.example/",
            false,
            None,
            None,
            NOW - SERVER_EXPIRY_MS,
        );
        data.remember(
            vec![
                CheckedServer {
                    url: "wss://a.example/".into(),
                    verified: false,
                    server_id: None,
                    rtt_ms: None,
                    answered: false,
                },
                CheckedServer {
                    url: "wss://c.example/".into(),
                    verified: false,
                    server_id: None,
                    rtt_ms: Some(3.0),
                    answered: true,
                },
                CheckedServer {
                    url: "wss://never-cached.example/".into(),
                    verified: true,
                    server_id: None,
                    rtt_ms: None,
                    answered: false,
                },
            ],
            NOW + 1,
        );
        let urls: Vec<&str> = data.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["wss://c.example/", "wss://a.example/"]);
        assert_eq!(data.servers[1].last_fail_ms, Some(NOW + 1));
        assert!(data.servers[1].verified, "a failure keeps what was learnt");
        // Answering again clears the failure.
        data.record_ok("wss://a.example/", false, None, None, NOW + 2);
        assert_eq!(data.servers[1].last_fail_ms, None);
        assert_eq!(data.servers[1].server_id.as_deref(), Some("ed25519:k"));
    }

    #[test]
    fn the_cache_and_referral_layers_read_the_store() {
        let data = sample();
        let (outcome, detail, found) = data.source(Layer::Cache, &[]);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(detail, "");
        assert_eq!(found.len(), 1);
        assert!(found[0].verified);
        assert_eq!(found[0].server_id.as_deref(), Some("ed25519:k"));
        assert_eq!(found[0].last_ok_ms, Some(NOW));
        let (outcome, detail, found) = data.source(Layer::Referral, &[]);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(found, [Found::unverified("wss://b.example/")]);
        assert_eq!(detail, "wss://b.example/ from contact ABC234");
        let (outcome, detail, found) =
            StoreData::default().source(Layer::Cache, &["moved aside".into()]);
        assert_eq!((outcome, detail.as_str()), (Outcome::Empty, "moved aside"));
        assert!(found.is_empty());
        let (_, detail, _) = StoreData::default().source(Layer::Referral, &[]);
        assert_eq!(detail, "no entries");
    }

    #[test]
    fn the_data_keeps_its_json_shape() {
        let mut data = sample();
        let json = serde_json::to_string(&data).unwrap();
        assert_eq!(
            json,
            r#"{"servers":[{"url":"wss://a.example/","verified":true,"server_id":"ed25519:k","last_ok_ms":1790000000000,"rtt_ms":12.0}],"referrals":[{"url":"wss://b.example/","code":"ABC234","added_ms":1790000000000}]}"#
        );
        data.add_revocation(Revocation {
            server_id: "ed25519:r".into(),
            expires: 1,
        });
        let json = serde_json::to_string(&data).unwrap();
        assert!(
            json.ends_with(r#""revocations":[{"server_id":"ed25519:r","expires":1}]}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<StoreData>(&json).unwrap(), data);
        assert_eq!(
            serde_json::from_str::<StoreData>("{}").unwrap(),
            StoreData::default()
        );
    }
}
