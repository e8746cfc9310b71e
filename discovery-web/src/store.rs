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
//! with a corrupt file. The data and its rules (servers, referrals,
//! revocations, bounds, expiry, the layers' reading) are
//! `zajel_discovery_core::cache`, shared with the native client; this
//! module owns only the envelope.
//!
//! Two tabs running discovery at once each write a whole value; the last
//! write wins (each run loads the value again just before writing).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use zajel_discovery_core::cache::{
    prune, CachedServer, Referral, StoreData, MAX_REFERRALS, MAX_REVOCATIONS, MAX_SERVERS,
    REFERRAL_EXPIRY_MS, SERVER_EXPIRY_MS,
};

/// The envelope's `format`.
pub const FORMAT: &str = "zajel-discovery-web";
/// The envelope's current `version`.
pub const VERSION: u32 = 1;
/// Largest stored value read; a larger one is treated as corrupt.
pub const MAX_VALUE_CHARS: usize = 1024 * 1024;

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

    /// A value stored by the package before the model moved to
    /// discovery-core (envelope version 1) reads as it was and is written
    /// back to the same string.
    #[test]
    fn a_version_1_value_stored_before_the_move_reads_and_is_written_back_unchanged() {
        const STORED: &str = include_str!("../testdata/local-storage-v1.txt");
        let data = decode(Some(STORED), NOW).unwrap();
        let urls: Vec<&str> = data.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["wss://b.example:8443/ws", "wss://a.example/"]);
        assert_eq!(
            data.servers[1],
            CachedServer {
                url: "wss://a.example/".into(),
                verified: true,
                server_id: Some("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()),
                last_ok_ms: NOW - 5000,
                last_fail_ms: Some(NOW - 100),
                rtt_ms: Some(12.5),
            }
        );
        assert_eq!(
            data.referrals,
            [Referral {
                url: "wss://c.example/".into(),
                code: "ABC234".parse().unwrap(),
                added_ms: NOW - 2000,
            }]
        );
        assert_eq!(data.revocations_in_force(NOW).len(), 1);
        assert_eq!(encode(&data), STORED);
    }
}
