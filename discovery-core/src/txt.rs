//! The signed `_zajel.<domain>` TXT record format (documented in the crate's
//! README, section "TXT record format"): building and signing records for
//! publication, and parsing and verifying what resolvers serve.
//!
//! One TXT record per server. Its character-strings (each at most 255 bytes)
//! are concatenated in order, as for SPF, giving one line:
//!
//! ```text
//! v=zajel1 id=<key> ep=<endpoint> rg=<region> exp=<unix seconds> sig=<signature>
//! ```
//!
//! `id` is the standard base64 of the server's Ed25519 key (its `serverId`
//! without `ed25519:`), `ep` and `rg` are percent-encoded like
//! `encodeURIComponent`, `sig` is standard base64 of an Ed25519 signature by
//! the registry key over
//! `zajel-txt-v1\n<domain>\n<serverId>\n<endpoint>\n<region>\n<exp>`
//! (domain lower-case, without `_zajel.` and without a trailing dot).
//!
//! [`check_answer`] turns the records one resolver answered for a name into
//! what the DoH layer reports (servers, refused records with the reason, and
//! the layer outcome). The DNS-over-HTTPS transport is not here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use zajel_wire::endpoint::{self, EndpointError};
use zajel_wire::entry::ServerEntry;
use zajel_wire::keys::{self, KeyError};
use zajel_wire::pairing::{percent_decode, percent_encode};
use zajel_wire::signature::decode_signature;

use crate::report::Outcome;

/// The version tag every record starts with.
pub const VERSION_TAG: &str = "v=zajel1";
/// The label in front of the domain.
pub const LABEL: &str = "_zajel";
/// Domain separation tag of record signatures.
pub const SIGNATURE_DOMAIN: &str = "zajel-txt-v1";
/// Longest character-string in a TXT record (DNS limit).
pub const MAX_STRING_BYTES: usize = 255;
/// Longest record (all its strings together) a client accepts.
pub const MAX_RECORD_BYTES: usize = 1024;
/// Most records under one name a client looks at.
pub const MAX_RECORDS: usize = 32;
/// Longest validity a client accepts (expiry this far ahead at most).
pub const MAX_VALIDITY_SECS: u64 = 31 * 24 * 3600;
/// Longest region carried.
pub const MAX_REGION_BYTES: usize = 64;

/// One server as a TXT record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxtEntry {
    /// `ed25519:` + base64 key.
    pub server_id: String,
    pub endpoint: String,
    pub region: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtError {
    #[error("not a zajel record (no v=zajel1)")]
    NotOurs,
    #[error("record longer than {MAX_RECORD_BYTES} bytes")]
    TooLong,
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("invalid signature: not signed by a pinned registry key")]
    InvalidSignature,
    #[error("stale: expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("expiry {0} is more than 31 days ahead")]
    TooFarAhead(u64),
}

/// Why a record could not be built for publication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("serverId {server_id}: {reason}")]
    ServerId { server_id: String, reason: KeyError },
    #[error("endpoint {endpoint}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: EndpointError,
    },
    #[error("region longer than {MAX_REGION_BYTES} bytes")]
    RegionTooLong,
    #[error("record for {0} is longer than {MAX_RECORD_BYTES} bytes")]
    RecordTooLong(String),
    #[error("{0} servers: clients read at most {MAX_RECORDS} records under one name")]
    TooManyRecords(usize),
}

/// The name records live under: `_zajel.<domain>.`.
pub fn record_name(domain: &str) -> String {
    format!("{LABEL}.{}.", normalise_domain(domain))
}

/// A domain as signatures cover it: lower-case, no trailing dot.
pub fn normalise_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The bytes a record signature covers.
pub fn signed_message(domain: &str, entry: &TxtEntry) -> String {
    format!(
        "{SIGNATURE_DOMAIN}\n{}\n{}\n{}\n{}\n{}",
        normalise_domain(domain),
        entry.server_id,
        entry.endpoint,
        entry.region,
        entry.expires
    )
}

/// Signs an entry and writes its record text (one line).
pub fn sign_record(
    key: &SigningKey,
    domain: &str,
    entry: &TxtEntry,
) -> Result<String, PublishError> {
    let public = keys::public_key_from_server_id(&entry.server_id).map_err(|reason| {
        PublishError::ServerId {
            server_id: entry.server_id.clone(),
            reason,
        }
    })?;
    endpoint::validate_endpoint(&entry.endpoint).map_err(|reason| PublishError::Endpoint {
        endpoint: entry.endpoint.clone(),
        reason,
    })?;
    if entry.region.len() > MAX_REGION_BYTES {
        return Err(PublishError::RegionTooLong);
    }
    let signature = key.sign(signed_message(domain, entry).as_bytes());
    let text = format!(
        "{VERSION_TAG} id={} ep={} rg={} exp={} sig={}",
        keys::public_key_to_base64(&public),
        percent_encode(&entry.endpoint),
        percent_encode(&entry.region),
        entry.expires,
        STANDARD.encode(signature.to_bytes())
    );
    if text.len() > MAX_RECORD_BYTES {
        return Err(PublishError::RecordTooLong(entry.endpoint.clone()));
    }
    Ok(text)
}

/// Splits a record's text into character-strings of at most 255 bytes (the
/// text is ASCII, so any split point is a character boundary).
pub fn split_strings(text: &str) -> Vec<String> {
    text.as_bytes()
        .chunks(MAX_STRING_BYTES)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect()
}

/// Parses one record (its strings already concatenated) and verifies it for
/// `domain` with any of the pinned keys at `now_secs`.
pub fn verify_record(
    domain: &str,
    record: &[u8],
    pinned: &[VerifyingKey],
    now_secs: u64,
) -> Result<TxtEntry, TxtError> {
    if !record.starts_with(VERSION_TAG.as_bytes()) {
        return Err(TxtError::NotOurs);
    }
    if record.len() > MAX_RECORD_BYTES {
        return Err(TxtError::TooLong);
    }
    let text = std::str::from_utf8(record).map_err(|_| TxtError::Malformed("not UTF-8".into()))?;
    let mut fields = text.split(' ');
    let mut next = |name: &str| -> Result<&str, TxtError> {
        let field = fields
            .next()
            .ok_or_else(|| TxtError::Malformed(format!("missing {name}")))?;
        field
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or_else(|| TxtError::Malformed(format!("expected {name}= in {field:?}")))
    };
    let version = next("v")?;
    if version != "zajel1" {
        return Err(TxtError::NotOurs);
    }
    let id = next("id")?;
    let ep = next("ep")?;
    let rg = next("rg")?;
    let exp = next("exp")?;
    let sig = next("sig")?;
    if fields.next().is_some() {
        return Err(TxtError::Malformed("extra fields after sig".into()));
    }
    let public =
        keys::public_key_from_base64(id).map_err(|e| TxtError::Malformed(format!("id: {e}")))?;
    let endpoint_text =
        percent_decode(ep).ok_or_else(|| TxtError::Malformed("ep: bad percent-encoding".into()))?;
    endpoint::validate_endpoint(&endpoint_text)
        .map_err(|e| TxtError::Malformed(format!("ep: {e}")))?;
    let region =
        percent_decode(rg).ok_or_else(|| TxtError::Malformed("rg: bad percent-encoding".into()))?;
    if region.len() > MAX_REGION_BYTES {
        return Err(TxtError::Malformed("rg: too long".into()));
    }
    if exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) || exp.len() > 12 {
        return Err(TxtError::Malformed("exp: not unix seconds".into()));
    }
    let expires: u64 = exp
        .parse()
        .map_err(|_| TxtError::Malformed("exp: not unix seconds".into()))?;
    let signature = decode_signature(sig).map_err(|_| TxtError::InvalidSignature)?;
    let entry = TxtEntry {
        server_id: keys::server_id_for(&public),
        endpoint: endpoint_text,
        region,
        expires,
    };
    let message = signed_message(domain, &entry);
    if !pinned
        .iter()
        .any(|key| key.verify_strict(message.as_bytes(), &signature).is_ok())
    {
        return Err(TxtError::InvalidSignature);
    }
    if expires <= now_secs {
        return Err(TxtError::Expired(expires));
    }
    if expires > now_secs + MAX_VALIDITY_SECS {
        return Err(TxtError::TooFarAhead(expires));
    }
    Ok(entry)
}

/// One record ready to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublishedRecord {
    /// `_zajel.<domain>.`
    pub name: String,
    pub ttl: u32,
    /// The character-strings, in order.
    pub strings: Vec<String>,
    /// The strings quoted and space-separated, as zone files and most DNS
    /// providers' APIs take TXT content.
    pub content: String,
    /// The server it names.
    pub endpoint: String,
}

/// Signs one record per server of a verified registry list.
pub fn build_records(
    key: &SigningKey,
    domain: &str,
    servers: &[ServerEntry],
    ttl: u32,
    expires: u64,
) -> Result<Vec<PublishedRecord>, PublishError> {
    let name = record_name(domain);
    let mut records = Vec::new();
    for server in servers {
        let mut region = server.region.clone();
        while region.len() > MAX_REGION_BYTES {
            region.pop();
        }
        let entry = TxtEntry {
            server_id: server.server_id.clone(),
            endpoint: server.endpoint.clone(),
            region,
            expires,
        };
        let text = sign_record(key, domain, &entry)?;
        let strings = split_strings(&text);
        let content = strings
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(" ");
        records.push(PublishedRecord {
            name: name.clone(),
            ttl,
            strings,
            content,
            endpoint: server.endpoint.clone(),
        });
    }
    if records.len() > MAX_RECORDS {
        return Err(PublishError::TooManyRecords(records.len()));
    }
    Ok(records)
}

/// A zone-file snippet (BIND, Knot, NSD all read this form).
pub fn zone_snippet(records: &[PublishedRecord]) -> String {
    let mut out = String::from("; signed Zajel server records (zajel-discover txt publish)\n");
    for record in records {
        out.push_str(&format!(
            "{} {} IN TXT {}\n",
            record.name, record.ttl, record.content
        ));
    }
    out
}

/// What one resolver's answer for one name amounts to, once every record
/// is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCheck {
    /// `Ok` when a record verified; otherwise the most telling refusal, or
    /// `Empty` when no record was ours.
    pub outcome: Outcome,
    pub detail: String,
    /// Entries of the records that verified, in answer order.
    pub entries: Vec<TxtEntry>,
    /// Records refused (and records beyond [`MAX_RECORDS`]), with the reason.
    pub refused: Vec<String>,
}

/// Verifies the records (strings concatenated) a resolver answered for
/// `_zajel.<domain>`: at most [`MAX_RECORDS`] are looked at, records that are
/// not ours are skipped, and the others are kept or refused with the reason.
pub fn check_answer(
    domain: &str,
    records: &[Vec<u8>],
    pinned: &[VerifyingKey],
    now_secs: u64,
) -> AnswerCheck {
    let mut entries = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for record in records.iter().take(MAX_RECORDS) {
        match verify_record(domain, record, pinned, now_secs) {
            Ok(entry) => entries.push(entry),
            Err(TxtError::NotOurs) => {}
            Err(e) => {
                failures.push(match e {
                    TxtError::InvalidSignature => Outcome::InvalidSignature,
                    TxtError::Expired(_) | TxtError::TooFarAhead(_) => Outcome::Stale,
                    _ => Outcome::Protocol,
                });
                let preview: String = String::from_utf8_lossy(record).chars().take(80).collect();
                refused.push(format!("{e}: {preview}"));
            }
        }
    }
    if records.len() > MAX_RECORDS {
        refused.push(format!(
            "{} records beyond the first {} ignored",
            records.len() - MAX_RECORDS,
            MAX_RECORDS
        ));
    }
    let (outcome, detail) = if !entries.is_empty() {
        let detail = if refused.is_empty() {
            String::new()
        } else {
            format!("{} record(s) refused", refused.len())
        };
        (Outcome::Ok, detail)
    } else if failures.is_empty() {
        (Outcome::Empty, "no zajel records".into())
    } else if pinned.is_empty() {
        (
            Outcome::summarise(failures),
            "no registry key pinned: TXT records cannot be verified".to_string(),
        )
    } else {
        (
            Outcome::summarise(failures),
            format!("every record refused: {}", refused.join("; ")),
        )
    };
    AnswerCheck {
        outcome,
        detail,
        entries,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_790_000_000;

    fn registry_key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    fn server(endpoint: &str) -> ServerEntry {
        let key = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        ServerEntry {
            server_id: keys::server_id_for(&key),
            endpoint: endpoint.into(),
            public_key: keys::public_key_to_base64(&key),
            region: "eu west".into(),
            registered_at: 1,
            last_seen: 2,
        }
    }

    fn joined(record: &PublishedRecord) -> Vec<u8> {
        record.strings.concat().into_bytes()
    }

    #[test]
    fn records_round_trip_and_stay_small() {
        let records = build_records(
            &registry_key(),
            "Example.ORG.",
            &[server("wss://relay.example.org:8443/ws")],
            300,
            NOW + 3600,
        )
        .unwrap();
        let record = &records[0];
        assert_eq!(record.name, "_zajel.example.org.");
        assert!(record.strings.iter().all(|s| s.len() <= MAX_STRING_BYTES));
        assert!(joined(record).len() < 260, "{}", joined(record).len());
        let pinned = [registry_key().verifying_key()];
        let entry = verify_record("example.org", &joined(record), &pinned, NOW).unwrap();
        assert_eq!(entry.endpoint, "wss://relay.example.org:8443/ws");
        assert_eq!(entry.region, "eu west");
        assert_eq!(entry.expires, NOW + 3600);
        let zone = zone_snippet(&records);
        assert!(zone.contains("_zajel.example.org. 300 IN TXT \"v=zajel1 id="));
    }

    #[test]
    fn long_records_split_into_255_byte_strings() {
        let long = format!("wss://relay.example.org/{}", "p".repeat(400));
        let records = build_records(
            &registry_key(),
            "example.org",
            &[server(&long)],
            60,
            NOW + 60,
        )
        .unwrap();
        assert!(records[0].strings.len() >= 2);
        assert!(records[0].strings.iter().all(|s| s.len() <= 255));
        let pinned = [registry_key().verifying_key()];
        let entry = verify_record("example.org", &joined(&records[0]), &pinned, NOW).unwrap();
        assert_eq!(entry.endpoint, long);
    }

    #[test]
    fn forged_replayed_expired_and_garbage_records_are_refused() {
        let pinned = [registry_key().verifying_key()];
        let records = build_records(
            &registry_key(),
            "example.org",
            &[server("wss://a.example")],
            60,
            NOW + 60,
        )
        .unwrap();
        let good = joined(&records[0]);
        // Another domain: the signature covers the domain.
        assert_eq!(
            verify_record("example.net", &good, &pinned, NOW),
            Err(TxtError::InvalidSignature)
        );
        // Signed by another key (a resolver injecting its own records).
        let forged = build_records(
            &SigningKey::from_bytes(&[4u8; 32]),
            "example.org",
            &[server("wss://evil.example")],
            60,
            NOW + 60,
        )
        .unwrap();
        assert_eq!(
            verify_record("example.org", &joined(&forged[0]), &pinned, NOW),
            Err(TxtError::InvalidSignature)
        );
        // A changed endpoint breaks the signature.
        let text = String::from_utf8(good.clone()).unwrap();
        let tampered = text.replace("a.example", "b.example");
        assert_eq!(
            verify_record("example.org", tampered.as_bytes(), &pinned, NOW),
            Err(TxtError::InvalidSignature)
        );
        assert_eq!(
            verify_record("example.org", &good, &pinned, NOW + 60),
            Err(TxtError::Expired(NOW + 60))
        );
        let far = build_records(
            &registry_key(),
            "example.org",
            &[server("wss://a.example")],
            60,
            NOW + MAX_VALIDITY_SECS + 10,
        )
        .unwrap();
        assert!(matches!(
            verify_record("example.org", &joined(&far[0]), &pinned, NOW),
            Err(TxtError::TooFarAhead(_))
        ));
        assert_eq!(
            verify_record("example.org", b"v=spf1 -all", &pinned, NOW),
            Err(TxtError::NotOurs)
        );
        assert!(matches!(
            verify_record("example.org", b"v=zajel1 id=x", &pinned, NOW),
            Err(TxtError::Malformed(_))
        ));
        let huge = format!("v=zajel1 {}", "x".repeat(MAX_RECORD_BYTES));
        assert_eq!(
            verify_record("example.org", huge.as_bytes(), &pinned, NOW),
            Err(TxtError::TooLong)
        );
        let extra = format!("{text} more=1");
        assert!(matches!(
            verify_record("example.org", extra.as_bytes(), &pinned, NOW),
            Err(TxtError::Malformed(_))
        ));
        assert!(matches!(
            verify_record("example.org", "v=zajel1 id=é".as_bytes(), &pinned, NOW),
            Err(TxtError::Malformed(_))
        ));
        // No pinned key: nothing verifies.
        assert_eq!(
            verify_record("example.org", &good, &[], NOW),
            Err(TxtError::InvalidSignature)
        );
    }

    fn signed(signer: &SigningKey, endpoint: &str, expires: u64) -> Vec<u8> {
        let entry = TxtEntry {
            server_id: keys::server_id_for(&SigningKey::from_bytes(&[1u8; 32]).verifying_key()),
            endpoint: endpoint.into(),
            region: String::new(),
            expires,
        };
        sign_record(signer, "example.org", &entry)
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn an_answer_keeps_genuine_records_and_says_why_others_were_refused() {
        let later = NOW + 600;
        let pinned = [registry_key().verifying_key()];
        let genuine = signed(&registry_key(), "wss://good.example", later);
        let forged = signed(
            &SigningKey::from_bytes(&[9u8; 32]),
            "wss://evil.example",
            later,
        );
        let check = check_answer(
            "example.org",
            &[genuine.clone(), forged.clone(), b"v=spf1 -all".to_vec()],
            &pinned,
            NOW,
        );
        assert_eq!(check.outcome, Outcome::Ok);
        assert_eq!(check.entries.len(), 1);
        assert_eq!(check.entries[0].endpoint, "wss://good.example");
        assert_eq!(check.refused.len(), 1, "{:?}", check.refused);
        assert!(check.detail.contains("1 record(s) refused"));
        let check = check_answer("example.org", &[forged], &pinned, NOW);
        assert_eq!(check.outcome, Outcome::InvalidSignature);
        assert!(check.entries.is_empty());
        assert!(check.detail.starts_with("every record refused"));
        let stale = signed(&registry_key(), "wss://good.example", NOW - 1);
        assert_eq!(
            check_answer("example.org", &[stale], &pinned, NOW).outcome,
            Outcome::Stale
        );
        let unpinned = check_answer("example.org", std::slice::from_ref(&genuine), &[], NOW);
        assert_eq!(unpinned.outcome, Outcome::InvalidSignature);
        assert!(unpinned.detail.contains("no registry key pinned"));
        assert_eq!(
            check_answer("example.org", &[b"v=spf1".to_vec()], &pinned, NOW).outcome,
            Outcome::Empty
        );
        // Only the first MAX_RECORDS records are looked at.
        let mut many = vec![b"v=spf1".to_vec(); MAX_RECORDS];
        many.push(genuine);
        let check = check_answer("example.org", &many, &pinned, NOW);
        assert_eq!(check.outcome, Outcome::Empty);
        assert_eq!(check.refused, ["1 records beyond the first 32 ignored"]);
    }
}
