//! Verifying a fetched `GET /servers` response, as a pure function of the
//! response (status, `X-Bootstrap-Signature` value, body bytes), the pinned
//! registry keys and the time. The HTTP fetch itself is not here.
//!
//! The rules:
//! - a status other than 2xx is a protocol failure, and nothing is used;
//! - with a key pinned, the signature must cover the exact body bytes and be
//!   made by a pinned key (an unsigned or badly signed list is refused as
//!   `invalid_signature`), and the list's `timestamp` must be within 5
//!   minutes of `now_ms` (else `stale`); a refused list gives no server;
//! - with nothing pinned, a well-formed list is used but marked unverified;
//! - a body that is not a server list is a protocol failure;
//! - a verified list with no servers is `empty`.
//!
//! It also names a registry's `/servers` URL ([`servers_url`]) and reads a
//! checked list as the registry layer's findings ([`RegistryResult::found`]),
//! as every client does.

use ed25519_dalek::VerifyingKey;
use zajel_wire::entry::{ServerEntry, ServerList};
use zajel_wire::signature::{verify_server_list, ListError, LIST_SIGNATURE_HEADER};

use url::Url;

use crate::discovery::Found;
use crate::report::Outcome;

/// Largest list body read (1,000 entries are about 250 KB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What one registry returned, once checked.
#[derive(Debug, Clone)]
pub struct RegistryResult {
    pub outcome: Outcome,
    pub detail: String,
    /// Servers of a list that passed the checks.
    pub servers: Vec<ServerEntry>,
    /// Whether the list was verified with a pinned key.
    pub verified: bool,
    /// The raw signed body and its signature, for re-publication.
    pub list: Option<ServerList>,
}

impl RegistryResult {
    /// A registry that gave nothing usable.
    pub fn failed(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            servers: Vec::new(),
            verified: false,
            list: None,
        }
    }

    /// The registry layer's findings: every server of the list, verified
    /// when the list was, each to prove the key its entry names.
    pub fn found(&self) -> Vec<Found> {
        self.servers
            .iter()
            .map(|s| Found {
                url: s.endpoint.clone(),
                verified: self.verified,
                server_id: Some(s.server_id.clone()),
                last_ok_ms: None,
            })
            .collect()
    }

    fn used(list: ServerList, verified: bool, detail: &str) -> Self {
        Self {
            outcome: if list.servers.is_empty() {
                Outcome::Empty
            } else {
                Outcome::Ok
            },
            detail: detail.into(),
            servers: list.servers.clone(),
            verified,
            list: Some(list),
        }
    }
}

/// The `/servers` URL of a registry given by its base URL (or the full URL);
/// also how the report names a registry source.
pub fn servers_url(registry: &Url) -> Url {
    if registry.path().trim_end_matches('/').ends_with("/servers") {
        return registry.clone();
    }
    let mut url = registry.clone();
    let path = format!("{}/servers", registry.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// The value of the list signature header among `(name, value)` pairs
/// (names compared case-insensitively).
pub fn signature_header(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(LIST_SIGNATURE_HEADER))
        .map(|(_, value)| value.as_str())
}

/// Checks a whole response: its status, then the list (see [`check_list`]).
pub fn check_response(
    status: u16,
    signature: Option<&str>,
    body: &[u8],
    pinned: &[VerifyingKey],
    now_ms: u64,
) -> RegistryResult {
    if !(200..300).contains(&status) {
        return RegistryResult::failed(
            Outcome::Protocol,
            format!("HTTP status {status} {}", reason_phrase(status)),
        );
    }
    check_list(signature, body, pinned, now_ms)
}

/// Checks a list body received with a 2xx status against the pinned keys.
pub fn check_list(
    signature: Option<&str>,
    body: &[u8],
    pinned: &[VerifyingKey],
    now_ms: u64,
) -> RegistryResult {
    if body.len() > MAX_BODY_BYTES {
        return RegistryResult::failed(
            Outcome::Protocol,
            format!("list larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    if pinned.is_empty() {
        // Nothing pinned: the list is used, but nothing from it is verified.
        return match serde_json::from_slice::<ServerList>(body) {
            Ok(list) => {
                RegistryResult::used(list, false, "no registry key pinned: list not verified")
            }
            Err(e) => RegistryResult::failed(Outcome::Protocol, format!("not a server list: {e}")),
        };
    }
    match verify_server_list(body, signature, pinned, now_ms) {
        Ok(list) => RegistryResult::used(list, true, ""),
        Err(error) => {
            let outcome = match error {
                ListError::Unsigned | ListError::InvalidSignature => Outcome::InvalidSignature,
                ListError::Stale => Outcome::Stale,
                ListError::Malformed(_) => Outcome::Protocol,
            };
            RegistryResult::failed(outcome, error.to_string())
        }
    }
}

/// The reason phrase of common HTTP statuses, as HTTP clients print them.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "<unknown status code>",
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};
    use zajel_wire::keys;

    use super::*;

    const NOW: u64 = 1_790_000_000_000;

    fn registry_key() -> SigningKey {
        SigningKey::from_bytes(&[3u8; 32])
    }

    fn body(timestamp: u64, servers: usize) -> Vec<u8> {
        let key = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let entry = ServerEntry {
            server_id: keys::server_id_for(&key),
            endpoint: "wss://relay.example/ws".into(),
            public_key: keys::public_key_to_base64(&key),
            region: "eu".into(),
            registered_at: 1,
            last_seen: 2,
        };
        serde_json::to_vec(&ServerList {
            servers: vec![entry; servers],
            timestamp,
        })
        .unwrap()
    }

    fn sign(key: &SigningKey, body: &[u8]) -> String {
        STANDARD.encode(key.sign(body).to_bytes())
    }

    #[test]
    fn servers_url_accepts_a_base_or_the_full_route() {
        let base = Url::parse("https://registry.example").unwrap();
        assert_eq!(
            servers_url(&base).as_str(),
            "https://registry.example/servers"
        );
        let prefixed = Url::parse("https://r.example/zajel/").unwrap();
        assert_eq!(
            servers_url(&prefixed).as_str(),
            "https://r.example/zajel/servers"
        );
        let full = Url::parse("http://127.0.0.1:8787/servers").unwrap();
        assert_eq!(servers_url(&full), full);
    }

    #[test]
    fn a_checked_lists_servers_are_found_verified_as_the_list_is() {
        let list = body(NOW, 2);
        let signature = sign(&registry_key(), &list);
        let verified = check_list(
            Some(&signature),
            &list,
            &[registry_key().verifying_key()],
            NOW,
        );
        let found = verified.found();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.verified));
        assert_eq!(found[0].url, "wss://relay.example/ws");
        assert_eq!(
            found[0].server_id,
            Some(verified.servers[0].server_id.clone())
        );
        assert_eq!(found[0].last_ok_ms, None);
        let unpinned = check_list(None, &list, &[], NOW).found();
        assert_eq!(unpinned.len(), 2);
        assert!(unpinned
            .iter()
            .all(|f| !f.verified && f.server_id.is_some()));
        assert!(RegistryResult::failed(Outcome::Stale, "old")
            .found()
            .is_empty());
    }

    #[test]
    fn a_list_signed_by_a_pinned_key_over_its_exact_body_is_used_and_verified() {
        let pinned = [registry_key().verifying_key()];
        let list = body(NOW, 2);
        let signature = sign(&registry_key(), &list);
        let result = check_response(200, Some(&signature), &list, &pinned, NOW);
        assert_eq!(result.outcome, Outcome::Ok);
        assert!(result.verified);
        assert_eq!(result.servers.len(), 2);
        assert!(result.list.is_some());
        // One byte more (a space the signature does not cover) breaks it.
        let mut padded = list.clone();
        padded.push(b' ');
        let result = check_response(200, Some(&signature), &padded, &pinned, NOW);
        assert_eq!(result.outcome, Outcome::InvalidSignature);
        assert!(result.servers.is_empty() && !result.verified);
    }

    #[test]
    fn unsigned_and_foreign_lists_are_refused_when_a_key_is_pinned() {
        let pinned = [registry_key().verifying_key()];
        let list = body(NOW, 1);
        let unsigned = check_list(None, &list, &pinned, NOW);
        assert_eq!(unsigned.outcome, Outcome::InvalidSignature);
        assert!(unsigned.servers.is_empty());
        let foreign = sign(&SigningKey::from_bytes(&[4u8; 32]), &list);
        let forged = check_list(Some(&foreign), &list, &pinned, NOW);
        assert_eq!(forged.outcome, Outcome::InvalidSignature);
        assert!(forged.servers.is_empty() && forged.list.is_none());
    }

    #[test]
    fn a_list_outside_the_five_minute_window_is_stale() {
        let pinned = [registry_key().verifying_key()];
        let old = body(NOW - 6 * 60 * 1000, 1);
        let result = check_list(Some(&sign(&registry_key(), &old)), &old, &pinned, NOW);
        assert_eq!(result.outcome, Outcome::Stale);
        assert!(result.servers.is_empty());
        let recent = body(NOW - 4 * 60 * 1000, 1);
        let result = check_list(Some(&sign(&registry_key(), &recent)), &recent, &pinned, NOW);
        assert_eq!(result.outcome, Outcome::Ok);
    }

    #[test]
    fn with_nothing_pinned_a_list_is_used_unverified() {
        let list = body(0, 1);
        let result = check_list(None, &list, &[], NOW);
        assert_eq!(result.outcome, Outcome::Ok);
        assert!(!result.verified);
        assert_eq!(result.servers.len(), 1);
        assert_eq!(result.detail, "no registry key pinned: list not verified");
        let empty = check_list(None, &body(0, 0), &[], NOW);
        assert_eq!(empty.outcome, Outcome::Empty);
    }

    #[test]
    fn bad_statuses_bodies_and_empty_lists() {
        let pinned = [registry_key().verifying_key()];
        let list = body(NOW, 1);
        let signature = sign(&registry_key(), &list);
        let refused = check_response(404, Some(&signature), &list, &pinned, NOW);
        assert_eq!(refused.outcome, Outcome::Protocol);
        assert_eq!(refused.detail, "HTTP status 404 Not Found");
        assert!(refused.servers.is_empty());
        let garbage = check_list(None, b"<html>", &[], NOW);
        assert_eq!(garbage.outcome, Outcome::Protocol);
        assert!(garbage.detail.starts_with("not a server list"));
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(check_list(None, &huge, &[], NOW).outcome, Outcome::Protocol);
        let none = body(NOW, 0);
        let result = check_list(Some(&sign(&registry_key(), &none)), &none, &pinned, NOW);
        assert_eq!(result.outcome, Outcome::Empty);
        assert!(result.verified);
        let headers = vec![("x-bootstrap-signature".to_string(), signature.clone())];
        assert_eq!(signature_header(&headers), Some(signature.as_str()));
    }
}
