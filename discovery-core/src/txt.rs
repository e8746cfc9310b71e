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
//! A **revocation** retires a server before its records expire. It is one
//! more record under the same name, signed by the same registry key:
//!
//! ```text
//! v=zajel1 revoke=<key> exp=<unix seconds> sig=<signature>
//! ```
//!
//! `revoke` is the base64 key of the retired server (as `id` above), and
//! `sig` signs `zajel-txt-revoke-v1\n<domain>\n<serverId>\n<exp>`. A client
//! that verifies one never picks that server (from TXT, the registry, the
//! cache or a link) until `exp`, and remembers it in its cache so that a
//! resolver replaying the server's old record without the revocation is
//! still refused. The publisher keeps serving the revocation until every
//! record it signed for that server has expired: `exp` at least as late as
//! the last such record's.
//!
//! **Lifetimes**: `exp` at most [`MAX_VALIDITY_SECS`] (7 days) ahead. A
//! signed record can be replayed by anyone until it expires, so the maximum
//! is how long a retired server (or one whose revocation a censor strips)
//! can be pushed to clients; 7 days still lets an operator re-sign weekly
//! from cron and ride out a few days of publishing outage (the default is
//! 72 hours; it was 31 days).
//!
//! **One key, never copied** (issue 16, decided): records and revocations
//! are signed by the registry's own list key, not by a separate TXT key
//! delegated by it. The signer runs where that key already is: the native
//! registry's host runs `zajel-discover txt publish --rfc2136 … --every …`
//! next to `bootstrap-worker serve` (same seed file), and the Worker signs
//! inside Cloudflare on its Cron Trigger; what leaves the host is only a
//! TSIG key (or a Cloudflare API token) allowed to change one TXT set. A
//! delegated key would add a record format and a chain every client must
//! check, while a stolen TXT key would do the same harm through DoH as the
//! registry key (point clients at an attacker's servers until `exp`): it
//! would separate nothing that the placement does not already keep apart.
//!
//! **Junk**: [`check_answer`] considers every record of an answer, bounded
//! by bytes ([`MAX_ANSWER_BYTES`], the largest DNS message a DoH answer
//! carries), not by a count that junk records can fill. Cheap checks (tag,
//! length, fields, expiry, key and endpoint syntax) run before a signature
//! check, and at most [`MAX_SIGNATURE_CHECKS`] signatures are checked per
//! answer; records verified before that budget runs out are kept.
//!
//! [`check_answer`] turns the records one resolver answered for a name into
//! what the DoH layer reports (servers, revocations, refused records with the
//! reason, and the layer outcome). The DNS-over-HTTPS transport is not here.

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
/// Domain separation tag of revocation signatures.
pub const REVOCATION_SIGNATURE_DOMAIN: &str = "zajel-txt-revoke-v1";
/// Longest character-string in a TXT record (DNS limit).
pub const MAX_STRING_BYTES: usize = 255;
/// Longest record (all its strings together) a client accepts.
pub const MAX_RECORD_BYTES: usize = 1024;
/// Most bytes of records (strings concatenated) a client looks at in one
/// answer: the largest DNS message, which is all a DoH answer can carry.
/// Records past it are ignored and said so.
pub const MAX_ANSWER_BYTES: usize = 65_535;
/// Most signature checks spent on one answer (a 64 KiB answer holds fewer
/// complete records than this; the bound holds whatever the transport).
pub const MAX_SIGNATURE_CHECKS: usize = 512;
/// Longest validity a client accepts (expiry this far ahead at most): 7 days
/// (see the module docs for why).
pub const MAX_VALIDITY_SECS: u64 = 7 * 24 * 3600;
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
    #[error("expiry {0} is more than 7 days ahead")]
    TooFarAhead(u64),
    #[error("server {server_id} is revoked until {until} (unix seconds)")]
    Revoked { server_id: String, until: u64 },
}

impl TxtError {
    /// A stable machine-readable name of the refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotOurs => "not_ours",
            Self::TooLong => "too_long",
            Self::Malformed(_) => "malformed",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired(_) => "expired",
            Self::TooFarAhead(_) => "too_far_ahead",
            Self::Revoked { .. } => "revoked",
        }
    }
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
    #[error("{0} bytes of records: clients read at most {MAX_ANSWER_BYTES} bytes under one name")]
    AnswerTooLarge(usize),
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

/// A signed revocation: the server with this `serverId` is not to be used
/// until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Revocation {
    /// `ed25519:` + base64 key of the retired server.
    pub server_id: String,
    /// Until when it holds, seconds since the Unix epoch.
    pub expires: u64,
}

/// The bytes a revocation signature covers.
pub fn revocation_message(domain: &str, revocation: &Revocation) -> String {
    format!(
        "{REVOCATION_SIGNATURE_DOMAIN}\n{}\n{}\n{}",
        normalise_domain(domain),
        revocation.server_id,
        revocation.expires
    )
}

/// Signs a revocation and writes its record text (one line).
pub fn sign_revocation(
    key: &SigningKey,
    domain: &str,
    revocation: &Revocation,
) -> Result<String, PublishError> {
    let public = keys::public_key_from_server_id(&revocation.server_id).map_err(|reason| {
        PublishError::ServerId {
            server_id: revocation.server_id.clone(),
            reason,
        }
    })?;
    let signature = key.sign(revocation_message(domain, revocation).as_bytes());
    Ok(format!(
        "{VERSION_TAG} revoke={} exp={} sig={}",
        keys::public_key_to_base64(&public),
        revocation.expires,
        STANDARD.encode(signature.to_bytes())
    ))
}

/// What a record that verified says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtRecord {
    Server(TxtEntry),
    Revocation(Revocation),
}

/// A record that passed every check but the signature: what to verify.
struct Unverified {
    record: TxtRecord,
    message: String,
    signature: ed25519_dalek::Signature,
}

/// The cheap checks: tag, length, fields, expiry, key and endpoint syntax.
fn precheck(domain: &str, record: &[u8], now_secs: u64) -> Result<Unverified, TxtError> {
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
    let revoke = text
        .split(' ')
        .nth(1)
        .is_some_and(|f| f.starts_with("revoke="));
    let (id, ep, rg) = if revoke {
        (next("revoke")?, None, None)
    } else {
        (next("id")?, Some(next("ep")?), Some(next("rg")?))
    };
    let exp = next("exp")?;
    let sig = next("sig")?;
    if fields.next().is_some() {
        return Err(TxtError::Malformed("extra fields after sig".into()));
    }
    if exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) || exp.len() > 12 {
        return Err(TxtError::Malformed("exp: not unix seconds".into()));
    }
    let expires: u64 = exp
        .parse()
        .map_err(|_| TxtError::Malformed("exp: not unix seconds".into()))?;
    if expires <= now_secs {
        return Err(TxtError::Expired(expires));
    }
    if expires > now_secs + MAX_VALIDITY_SECS {
        return Err(TxtError::TooFarAhead(expires));
    }
    let public =
        keys::public_key_from_base64(id).map_err(|e| TxtError::Malformed(format!("id: {e}")))?;
    let server_id = keys::server_id_for(&public);
    let signature = decode_signature(sig).map_err(|_| TxtError::InvalidSignature)?;
    let (Some(ep), Some(rg)) = (ep, rg) else {
        let revocation = Revocation { server_id, expires };
        return Ok(Unverified {
            message: revocation_message(domain, &revocation),
            record: TxtRecord::Revocation(revocation),
            signature,
        });
    };
    let endpoint_text =
        percent_decode(ep).ok_or_else(|| TxtError::Malformed("ep: bad percent-encoding".into()))?;
    endpoint::validate_endpoint(&endpoint_text)
        .map_err(|e| TxtError::Malformed(format!("ep: {e}")))?;
    let region =
        percent_decode(rg).ok_or_else(|| TxtError::Malformed("rg: bad percent-encoding".into()))?;
    if region.len() > MAX_REGION_BYTES {
        return Err(TxtError::Malformed("rg: too long".into()));
    }
    let entry = TxtEntry {
        server_id,
        endpoint: endpoint_text,
        region,
        expires,
    };
    Ok(Unverified {
        message: signed_message(domain, &entry),
        record: TxtRecord::Server(entry),
        signature,
    })
}

/// The signature check (the expensive part).
fn verify_signature(
    unverified: Unverified,
    pinned: &[VerifyingKey],
) -> Result<TxtRecord, TxtError> {
    if pinned.iter().any(|key| {
        key.verify_strict(unverified.message.as_bytes(), &unverified.signature)
            .is_ok()
    }) {
        Ok(unverified.record)
    } else {
        Err(TxtError::InvalidSignature)
    }
}

/// Parses one record (its strings already concatenated), server or
/// revocation, and verifies it for `domain` with any of the pinned keys at
/// `now_secs`.
pub fn verify_any(
    domain: &str,
    record: &[u8],
    pinned: &[VerifyingKey],
    now_secs: u64,
) -> Result<TxtRecord, TxtError> {
    verify_signature(precheck(domain, record, now_secs)?, pinned)
}

/// Parses one server record (its strings already concatenated) and verifies
/// it for `domain` with any of the pinned keys at `now_secs`.
pub fn verify_record(
    domain: &str,
    record: &[u8],
    pinned: &[VerifyingKey],
    now_secs: u64,
) -> Result<TxtEntry, TxtError> {
    match verify_any(domain, record, pinned, now_secs)? {
        TxtRecord::Server(entry) => Ok(entry),
        TxtRecord::Revocation(_) => Err(TxtError::Malformed(
            "a revocation, not a server record".into(),
        )),
    }
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
    let bytes: usize = records.iter().map(|r| r.strings.concat().len()).sum();
    if bytes > MAX_ANSWER_BYTES {
        return Err(PublishError::AnswerTooLarge(bytes));
    }
    Ok(records)
}

/// Signs one revocation record per retired server (`serverId`s), valid
/// until `expires`; `endpoint` of each says `revoke <serverId>`.
pub fn build_revocations(
    key: &SigningKey,
    domain: &str,
    server_ids: &[String],
    ttl: u32,
    expires: u64,
) -> Result<Vec<PublishedRecord>, PublishError> {
    let name = record_name(domain);
    server_ids
        .iter()
        .map(|server_id| {
            let revocation = Revocation {
                server_id: server_id.clone(),
                expires,
            };
            let strings = split_strings(&sign_revocation(key, domain, &revocation)?);
            let content = strings
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(" ");
            Ok(PublishedRecord {
                name: name.clone(),
                ttl,
                strings,
                content,
                endpoint: format!("revoke {server_id}"),
            })
        })
        .collect()
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

/// What one resolver answered for one name, before any record is verified
/// (each client gets it its own way: hickory's DoH client, `fetch`).
#[derive(Debug, Clone, PartialEq)]
pub struct TxtAnswer {
    pub outcome: Outcome,
    pub detail: String,
    /// Each TXT record's strings, concatenated.
    pub records: Vec<Vec<u8>>,
}

impl TxtAnswer {
    /// A resolver that gave no records: it failed, or the name has none.
    pub fn failed(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            records: Vec::new(),
        }
    }

    /// The TXT records a resolver answered: `Ok`, or `Empty` with
    /// `detail_if_empty` when there were none.
    pub fn of_records(records: Vec<Vec<u8>>, detail_if_empty: impl Into<String>) -> Self {
        if records.is_empty() {
            Self::failed(Outcome::Empty, detail_if_empty)
        } else {
            Self {
                outcome: Outcome::Ok,
                detail: String::new(),
                records,
            }
        }
    }
}

/// What one resolver's answer for one name amounts to, once every record
/// is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCheck {
    /// `Ok` when a record verified; otherwise the most telling refusal, or
    /// `Empty` when no record was ours.
    pub outcome: Outcome,
    pub detail: String,
    /// Entries of the server records that verified and are not revoked by a
    /// revocation of the same answer, in answer order.
    pub entries: Vec<TxtEntry>,
    /// Revocations that verified.
    pub revocations: Vec<Revocation>,
    /// Records refused (and what was left unread past a budget), with the reason.
    pub refused: Vec<String>,
}

/// Verifies the records (strings concatenated) a resolver answered for
/// `_zajel.<domain>`: every record within [`MAX_ANSWER_BYTES`] is
/// considered, records that are not ours are skipped, and the others are
/// kept or refused with the reason. At most [`MAX_SIGNATURE_CHECKS`]
/// signatures are checked, after the cheap checks. Servers revoked by a
/// revocation in the same answer are refused.
pub fn check_answer(
    domain: &str,
    records: &[Vec<u8>],
    pinned: &[VerifyingKey],
    now_secs: u64,
) -> AnswerCheck {
    check_answer_within(domain, records, pinned, now_secs, MAX_SIGNATURE_CHECKS)
}

fn check_answer_within(
    domain: &str,
    records: &[Vec<u8>],
    pinned: &[VerifyingKey],
    now_secs: u64,
    max_signature_checks: usize,
) -> AnswerCheck {
    let mut entries = Vec::new();
    let mut revocations: Vec<Revocation> = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    let mut bytes = 0usize;
    let mut signature_checks = 0usize;
    let mut over_budget = None;
    let mut refuse = |e: TxtError, record: &[u8], failures: &mut Vec<Outcome>| {
        failures.push(match e {
            TxtError::InvalidSignature => Outcome::InvalidSignature,
            TxtError::Expired(_) | TxtError::TooFarAhead(_) => Outcome::Stale,
            TxtError::Revoked { .. } => Outcome::Revoked,
            _ => Outcome::Protocol,
        });
        let preview: String = String::from_utf8_lossy(record).chars().take(80).collect();
        refused.push(format!("{e}: {preview}"));
    };
    for (i, record) in records.iter().enumerate() {
        bytes = bytes.saturating_add(record.len());
        if bytes > MAX_ANSWER_BYTES {
            over_budget = Some(format!(
                "answer over {MAX_ANSWER_BYTES} bytes: {} record(s) from #{} on ignored",
                records.len() - i,
                i + 1
            ));
            break;
        }
        let unverified = match precheck(domain, record, now_secs) {
            Ok(unverified) => unverified,
            Err(TxtError::NotOurs) => continue,
            Err(e) => {
                refuse(e, record, &mut failures);
                continue;
            }
        };
        if signature_checks == max_signature_checks {
            over_budget = Some(format!(
                "{max_signature_checks} signatures checked: {} record(s) from #{} on ignored",
                records.len() - i,
                i + 1
            ));
            break;
        }
        signature_checks += 1;
        match verify_signature(unverified, pinned) {
            Ok(TxtRecord::Server(entry)) => entries.push(entry),
            Ok(TxtRecord::Revocation(revocation)) => revocations.push(revocation),
            Err(e) => refuse(e, record, &mut failures),
        }
    }
    let mut kept = Vec::new();
    for entry in entries {
        match revocations.iter().find(|r| r.server_id == entry.server_id) {
            Some(revocation) => {
                let e = TxtError::Revoked {
                    server_id: entry.server_id.clone(),
                    until: revocation.expires,
                };
                let text = format!("{} {}", entry.endpoint, entry.server_id);
                refuse(e, text.as_bytes(), &mut failures);
            }
            None => kept.push(entry),
        }
    }
    let entries = kept;
    let oversized = over_budget.is_some();
    if let Some(note) = over_budget {
        refused.push(note);
    }
    let (outcome, detail) = if !entries.is_empty() {
        let detail = if refused.is_empty() {
            String::new()
        } else {
            format!("{} record(s) refused", refused.len())
        };
        (Outcome::Ok, detail)
    } else if oversized && failures.is_empty() {
        (Outcome::Protocol, refused.join("; "))
    } else if failures.is_empty() {
        let detail = if revocations.is_empty() {
            "no zajel records"
        } else {
            "only revocations"
        };
        (Outcome::Empty, detail.into())
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
        revocations,
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
    fn an_answer_with_records_is_ok_and_one_without_is_empty() {
        let answer = TxtAnswer::of_records(vec![b"v=zajel1".to_vec()], "none");
        assert_eq!((answer.outcome, answer.detail.as_str()), (Outcome::Ok, ""));
        assert_eq!(answer.records, [b"v=zajel1".to_vec()]);
        assert_eq!(
            TxtAnswer::of_records(Vec::new(), "none"),
            TxtAnswer::failed(Outcome::Empty, "none")
        );
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
    }

    fn junk_forged(n: usize) -> Vec<Vec<u8>> {
        let forger = SigningKey::from_bytes(&[9u8; 32]);
        (0..n)
            .map(|i| signed(&forger, &format!("wss://j{i}.example"), NOW + 600))
            .collect()
    }

    #[test]
    fn every_record_is_considered_whatever_junk_comes_first() {
        let pinned = [registry_key().verifying_key()];
        let genuine = signed(&registry_key(), "wss://good.example", NOW + 600);
        // Forged full-size records (the issue: 32 of them hid the genuine one).
        for junk in [31, 32, 300] {
            let mut answer = junk_forged(junk);
            answer.push(genuine.clone());
            let check = check_answer("example.org", &answer, &pinned, NOW);
            assert_eq!(check.outcome, Outcome::Ok, "{junk}: {}", check.detail);
            assert_eq!(check.entries.len(), 1, "{junk}");
            assert_eq!(check.entries[0].endpoint, "wss://good.example");
            assert_eq!(check.refused.len(), junk, "{junk}");
        }
        // 500 short junk records of ours (all a 64 KiB answer can hold).
        let mut answer: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("v=zajel1 id=junk{i}").into_bytes())
            .collect();
        answer.push(genuine.clone());
        let check = check_answer("example.org", &answer, &pinned, NOW);
        assert_eq!(check.outcome, Outcome::Ok, "{}", check.detail);
        assert_eq!(check.entries[0].endpoint, "wss://good.example");
        assert_eq!(check.refused.len(), 500);
    }

    #[test]
    fn junk_that_fails_cheap_checks_costs_no_signature_check() {
        let pinned = [registry_key().verifying_key()];
        let forger = SigningKey::from_bytes(&[9u8; 32]);
        // Expired and far-future junk is refused before its signature is looked at.
        let expired = signed(&forger, "wss://j.example", NOW - 1);
        let far = signed(&forger, "wss://j.example", NOW + MAX_VALIDITY_SECS + 1);
        assert!(matches!(
            precheck("example.org", &expired, NOW),
            Err(TxtError::Expired(_))
        ));
        assert!(matches!(
            precheck("example.org", &far, NOW),
            Err(TxtError::TooFarAhead(_))
        ));
        assert!(precheck("example.org", &junk_forged(1)[0], NOW).is_ok());
        // The signature budget: records past it are ignored and said so, and
        // a genuine record verified before it ran out is kept.
        let genuine = signed(&registry_key(), "wss://good.example", NOW + 600);
        let mut answer = vec![genuine];
        answer.extend(junk_forged(10));
        let check = check_answer_within("example.org", &answer, &pinned, NOW, 4);
        assert_eq!(check.outcome, Outcome::Ok);
        assert_eq!(check.entries.len(), 1);
        assert_eq!(check.refused.len(), 4, "{:?}", check.refused);
        assert_eq!(
            check.refused[3],
            "4 signatures checked: 7 record(s) from #5 on ignored"
        );
        // Within one answer the byte bound binds first: a 64 KiB answer
        // cannot carry MAX_SIGNATURE_CHECKS records that pass the cheap
        // checks, so with the real budget every record is considered.
        let smallest = signed(&registry_key(), "wss://a.bc", NOW + 1).len();
        assert!(
            smallest * MAX_SIGNATURE_CHECKS > MAX_ANSWER_BYTES,
            "{smallest}"
        );
    }

    #[test]
    fn a_byte_bomb_is_a_clear_error_and_breaks_nothing_else() {
        let pinned = [registry_key().verifying_key()];
        let bomb: Vec<Vec<u8>> = (0..400).map(|_| vec![b'x'; 1000]).collect();
        let check = check_answer("example.org", &bomb, &pinned, NOW);
        assert_eq!(check.outcome, Outcome::Protocol);
        assert!(
            check.detail.starts_with("answer over 65535 bytes"),
            "{}",
            check.detail
        );
        assert!(check.entries.is_empty());
        // A genuine record before the bomb still counts.
        let mut answer = vec![signed(&registry_key(), "wss://good.example", NOW + 600)];
        answer.extend(bomb);
        let check = check_answer("example.org", &answer, &pinned, NOW);
        assert_eq!(check.outcome, Outcome::Ok);
        assert_eq!(check.entries.len(), 1);
    }

    fn revocation(signer: &SigningKey, expires: u64) -> Vec<u8> {
        let revoked = Revocation {
            server_id: keys::server_id_for(&SigningKey::from_bytes(&[1u8; 32]).verifying_key()),
            expires,
        };
        sign_revocation(signer, "example.org", &revoked)
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn a_signed_revocation_refuses_the_replayed_record_and_a_forged_one_is_ignored() {
        let pinned = [registry_key().verifying_key()];
        let record = signed(&registry_key(), "wss://retired.example", NOW + 600);
        let revoke = revocation(&registry_key(), NOW + 3600);
        assert!(String::from_utf8_lossy(&revoke).starts_with("v=zajel1 revoke="));
        // The old record replayed beside the revocation: refused, with the reason.
        let check = check_answer(
            "example.org",
            &[record.clone(), revoke.clone()],
            &pinned,
            NOW,
        );
        assert!(check.entries.is_empty());
        assert_eq!(check.outcome, Outcome::Revoked);
        assert_eq!(check.revocations.len(), 1);
        assert_eq!(check.revocations[0].expires, NOW + 3600);
        assert!(
            check.refused[0].contains("is revoked until"),
            "{:?}",
            check.refused
        );
        // A forged revocation (another key) is ignored with a reason.
        let forged = revocation(&SigningKey::from_bytes(&[4u8; 32]), NOW + 3600);
        let check = check_answer(
            "example.org",
            &[forged.clone(), record.clone()],
            &pinned,
            NOW,
        );
        assert_eq!(check.outcome, Outcome::Ok);
        assert_eq!(check.entries.len(), 1);
        assert!(check.revocations.is_empty());
        assert!(
            check.refused[0].starts_with("invalid signature"),
            "{:?}",
            check.refused
        );
        // A revocation for another domain, a tampered one, an expired one.
        assert_eq!(
            verify_any("example.net", &revoke, &pinned, NOW),
            Err(TxtError::InvalidSignature)
        );
        let text = String::from_utf8(revoke.clone()).unwrap();
        let tampered = text.replace(
            &format!("exp={}", NOW + 3600),
            &format!("exp={}", NOW + 7200),
        );
        assert_eq!(
            verify_any("example.org", tampered.as_bytes(), &pinned, NOW),
            Err(TxtError::InvalidSignature)
        );
        assert_eq!(
            verify_any("example.org", &revoke, &pinned, NOW + 3600),
            Err(TxtError::Expired(NOW + 3600))
        );
        // A revocation is not a server record.
        assert!(matches!(
            verify_record("example.org", &revoke, &pinned, NOW),
            Err(TxtError::Malformed(_))
        ));
        // Only revocations: nothing to use, nothing wrong.
        let check = check_answer("example.org", &[revoke], &pinned, NOW);
        assert_eq!(check.outcome, Outcome::Empty);
        assert_eq!(check.detail, "only revocations");
    }

    #[test]
    fn records_live_at_most_seven_days() {
        assert_eq!(MAX_VALIDITY_SECS, 7 * 24 * 3600);
        let pinned = [registry_key().verifying_key()];
        let eight_days = signed(&registry_key(), "wss://a.example", NOW + 8 * 24 * 3600);
        assert_eq!(
            verify_record("example.org", &eight_days, &pinned, NOW),
            Err(TxtError::TooFarAhead(NOW + 8 * 24 * 3600))
        );
    }
}
