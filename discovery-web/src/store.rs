//! Layers 3 and 4 in the browser: the cache of servers that worked and the
//! referrals of paired contacts, kept as ONE value under one storage key
//! (`localStorage`), so that a write is all or nothing: `setItem` replaces
//! the whole value at once, and nothing is split over several keys that a
//! closed tab could leave half-updated.
//!
//! The value is a versioned envelope,
//! `{"format":"zajel-discovery-web","version":1,"sha256":<base64>,"data":<JSON text>}`,
//! checked on read: a value that is not such an envelope, of another
//! version, too large, whose digest does not match its data, or whose data
//! does not parse is set aside (copied under `<key>.corrupt`) with a warning
//! and discovery goes on with an empty store, as the native client does
//! with a corrupt file. The data has the native store's shape (servers,
//! referrals, revocations) with its bounds and expiry.
//!
//! Two tabs running discovery at once each write a whole value; the last
//! write wins (each run loads the value again just before writing).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zajel_discovery_core::discovery::{CheckedServer, Found, SourceFindings};
use zajel_discovery_core::report::{Layer, Outcome};
use zajel_discovery_core::txt::Revocation;
use zajel_wire::pairing::PairingCode;

/// The envelope's `format`.
pub const FORMAT: &str = "zajel-discovery-web";
/// The envelope's current `version`.
pub const VERSION: u32 = 1;
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
/// Largest stored value read; a larger one is treated as corrupt.
pub const MAX_VALUE_CHARS: usize = 1024 * 1024;

/// A server that worked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedServer {
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
    pub code: PairingCode,
    pub added_ms: u64,
}

/// Everything stored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoreData {
    #[serde(default)]
    pub servers: Vec<CachedServer>,
    #[serde(default)]
    pub referrals: Vec<Referral>,
    /// Signed revocations seen in TXT answers, kept until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<Revocation>,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    sha256: String,
    data: String,
}

fn digest(data: &str) -> String {
    STANDARD.encode(Sha256::digest(data.as_bytes()))
}

/// The stored value of `data` (one string, written with one `setItem`).
pub fn encode(data: &StoreData) -> String {
    let text = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    let envelope = Envelope {
        format: FORMAT.into(),
        version: VERSION,
        sha256: digest(&text),
        data: text,
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// Why a stored value was set aside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stored value larger than {MAX_VALUE_CHARS} characters")]
    TooLarge,
    #[error("stored value is not a discovery envelope: {0}")]
    NotEnvelope(String),
    #[error("stored value has version {0}, this package reads {VERSION}")]
    Version(u32),
    #[error("stored value's digest does not match its data (torn or altered write)")]
    Digest,
    #[error("stored data does not parse: {0}")]
    Data(String),
}

impl StoreError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge => "store_too_large",
            Self::NotEnvelope(_) => "store_not_envelope",
            Self::Version(_) => "store_version",
            Self::Digest => "store_digest",
            Self::Data(_) => "store_data",
        }
    }
}

/// Reads a stored value (`None`: nothing stored yet), pruned at `now_ms`.
pub fn decode(value: Option<&str>, now_ms: u64) -> Result<StoreData, StoreError> {
    let Some(value) = value else {
        return Ok(StoreData::default());
    };
    if value.len() > MAX_VALUE_CHARS {
        return Err(StoreError::TooLarge);
    }
    let envelope: Envelope =
        serde_json::from_str(value).map_err(|e| StoreError::NotEnvelope(e.to_string()))?;
    if envelope.format != FORMAT {
        return Err(StoreError::NotEnvelope(format!(
            "format {:?}",
            envelope.format
        )));
    }
    if envelope.version != VERSION {
        return Err(StoreError::Version(envelope.version));
    }
    if digest(&envelope.data) != envelope.sha256 {
        return Err(StoreError::Digest);
    }
    let mut data: StoreData =
        serde_json::from_str(&envelope.data).map_err(|e| StoreError::Data(e.to_string()))?;
    prune(&mut data, now_ms);
    Ok(data)
}

impl StoreData {
    /// Records what a run's checks found (servers that answered, failures of
    /// cached ones).
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
            } else if let Some(entry) = self.servers.iter_mut().find(|s| s.url == server.url) {
                entry.last_fail_ms = Some(now_ms);
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
        prune(self, now_ms);
    }

    /// The cache or referral layer's reading of the store (as the native
    /// client reads its file); `warnings` are why the stored value was set aside.
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

/// Drops expired entries and keeps the store within its bounds.
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
    fn a_value_reads_back_as_written() {
        let data = sample();
        assert_eq!(decode(Some(&encode(&data)), NOW).unwrap(), data);
        assert_eq!(decode(None, NOW).unwrap(), StoreData::default());
    }

    #[test]
    fn torn_altered_foreign_or_newer_values_are_set_aside_with_their_kind() {
        let good = encode(&sample());
        let torn = &good[..good.len() / 2];
        let altered = good.replace("wss://a.example/", "wss://evil.example/");
        let newer = good.replace("\"version\":1", "\"version\":2");
        let foreign = good.replace(FORMAT, "something-else");
        let bad_data = {
            let text = "{\"servers\":3}";
            format!(
                r#"{{"format":"{FORMAT}","version":1,"sha256":"{}","data":{}}}"#,
                digest(text),
                serde_json::to_string(text).unwrap()
            )
        };
        let huge = "x".repeat(MAX_VALUE_CHARS + 1);
        let cases = [
            (torn, "store_not_envelope"),
            (altered.as_str(), "store_digest"),
            (newer.as_str(), "store_version"),
            (foreign.as_str(), "store_not_envelope"),
            (bad_data.as_str(), "store_data"),
            (huge.as_str(), "store_too_large"),
        ];
        for (value, kind) in cases {
            assert_eq!(decode(Some(value), NOW).unwrap_err().kind(), kind);
        }
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
            ],
            NOW + 1,
        );
        let urls: Vec<&str> = data.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["wss://c.example/", "wss://a.example/"]);
        assert_eq!(data.servers[1].last_fail_ms, Some(NOW + 1));
        assert!(data.servers[1].verified, "a failure keeps what was learnt");
        let (outcome, detail, found) = data.source(Layer::Referral, &[]);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(found[0].url, "wss://b.example/");
        assert!(detail.contains("from contact ABC234"), "{detail}");
        let (_, detail, _) = StoreData::default().source(Layer::Cache, &["moved aside".into()]);
        assert_eq!(detail, "moved aside");
    }
}
