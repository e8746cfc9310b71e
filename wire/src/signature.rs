//! Signatures: proof of possession on registry mutations, and signed lists.
//!
//! *Mutations* (our extension): a server proves it holds the key inside its
//! `serverId` by signing
//! `zajel-registry-v1\n<action>\n<serverId>\n<endpoint>\n<region>\n<timestamp>`
//! (endpoint and region empty for heartbeat and unregister). The registry
//! refuses timestamps more than [`FRESHNESS_WINDOW_MS`] from its clock and
//! accepts each signature once.
//!
//! *Lists* (Zajel's scheme): `GET /servers` carries `X-Bootstrap-Signature`,
//! standard base64 of an Ed25519 signature over the exact body bytes; the body's
//! `timestamp` must be within [`FRESHNESS_WINDOW_MS`] of the client's clock.
//! Our registry also sends `ETag` with the list (our extension, additive): a
//! client that kept a list may send its tag back in `If-None-Match` and gets
//! `304 Not Modified` without a body while the registry serves that very
//! list (at most a minute old; any change to the listed set or a new
//! timestamp gives a new tag, so a 304 never stands for a list older than
//! the one served). The kept body and its `X-Bootstrap-Signature` are then
//! checked again as on a 200; clients that send no `If-None-Match` (Zajel's)
//! always get the body.
//!
//! *Server identity* (our extension, additive): a signed list or record says
//! which `serverId` (Ed25519 key) serves an endpoint, but only the server
//! itself can prove it is that one. A client sends
//! `{"type":"identity_challenge","nonce":<standard base64 of 32 random bytes>}`
//! on the signaling connection; the server answers
//! `{"type":"identity_proof","serverId","endpoint","nonce","signature"}`
//! where `signature` is standard base64 of the 64-byte Ed25519 signature by
//! the key inside `serverId` over exactly these bytes
//! ([`identity_message`]):
//!
//! ```text
//! UTF-8 "zajel-server-identity-v1" ‖ 0x00 ‖ the 32 raw nonce bytes ‖ 0x00 ‖ UTF-8 endpoint
//! ```
//!
//! `endpoint` is the URL the server registers (and sends in `server_info`).
//! The fresh nonce stops replays of old proofs; the endpoint inside the
//! signature stops a proxy from passing off the real server's proof as its
//! own (the proof names the real server's endpoint, not the proxy's). The
//! client checks the nonce is its own, the signature ([`verify_identity`]),
//! and that `serverId` and `endpoint` are the ones it expects (see the
//! discovery rules). [`crate::signaling::IdentityProof`] is the message.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::entry::{HeartbeatRequest, RegisterRequest, ServerList};
use crate::keys::{self, KeyError};

/// How far a signed timestamp may be from the verifier's clock, either way.
pub const FRESHNESS_WINDOW_MS: u64 = 5 * 60 * 1000;
/// The response header carrying a list's signature (Zajel's name).
pub const LIST_SIGNATURE_HEADER: &str = "X-Bootstrap-Signature";
/// The header carrying a `DELETE`'s timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Zajel-Timestamp";
/// The header carrying a `DELETE`'s signature.
pub const SIGNATURE_HEADER: &str = "X-Zajel-Signature";
/// Domain separation tag of mutation signatures.
pub const MUTATION_DOMAIN: &str = "zajel-registry-v1";

/// What a signed mutation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationAction {
    Register,
    Heartbeat,
    Unregister,
}

impl MutationAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Heartbeat => "heartbeat",
            Self::Unregister => "unregister",
        }
    }
}

/// Domain separation tag of server identity proofs.
pub const IDENTITY_DOMAIN: &str = "zajel-server-identity-v1";
/// Length of an identity challenge's nonce, in bytes.
pub const IDENTITY_NONCE_BYTES: usize = 32;

/// An identity challenge's nonce (32 random bytes from the client).
pub type IdentityNonce = [u8; IDENTITY_NONCE_BYTES];

/// Why an identity challenge or proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("nonce is not standard base64 of 32 bytes")]
    NonceEncoding,
    #[error("the proof answers another nonce (a replayed proof)")]
    WrongNonce,
    #[error("serverId: {0}")]
    Key(#[from] KeyError),
    #[error("signature is not standard base64 of 64 bytes")]
    SignatureEncoding,
    #[error("signature does not verify")]
    Invalid,
}

impl IdentityError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NonceEncoding => "nonce_encoding",
            Self::WrongNonce => "wrong_nonce",
            Self::Key(_) => "server_id",
            Self::SignatureEncoding => "signature_encoding",
            Self::Invalid => "invalid_signature",
        }
    }
}

/// The exact bytes an identity proof signs: [`IDENTITY_DOMAIN`], 0x00, the
/// raw nonce, 0x00, the endpoint (UTF-8).
pub fn identity_message(nonce: &IdentityNonce, endpoint: &str) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(IDENTITY_DOMAIN.len() + 2 + IDENTITY_NONCE_BYTES + endpoint.len());
    message.extend_from_slice(IDENTITY_DOMAIN.as_bytes());
    message.push(0);
    message.extend_from_slice(nonce);
    message.push(0);
    message.extend_from_slice(endpoint.as_bytes());
    message
}

/// A nonce as it travels: standard base64.
pub fn encode_identity_nonce(nonce: &IdentityNonce) -> String {
    STANDARD.encode(nonce)
}

/// Decodes a nonce strictly (standard base64, exactly 32 bytes).
pub fn decode_identity_nonce(text: &str) -> Result<IdentityNonce, IdentityError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| IdentityError::NonceEncoding)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| IdentityError::NonceEncoding)
}

/// Signs an identity proof for `nonce` and `endpoint`; returns standard base64.
pub fn sign_identity(key: &SigningKey, nonce: &IdentityNonce, endpoint: &str) -> String {
    STANDARD.encode(key.sign(&identity_message(nonce, endpoint)).to_bytes())
}

/// Verifies an identity proof's signature by the key inside `server_id`,
/// strictly, over `nonce` and `endpoint`; returns that key. Whether the
/// server id and endpoint are the expected ones is the caller's to check.
pub fn verify_identity(
    server_id: &str,
    nonce: &IdentityNonce,
    endpoint: &str,
    signature: &str,
) -> Result<VerifyingKey, IdentityError> {
    let key = keys::public_key_from_server_id(server_id)?;
    let signature = decode_signature(signature).map_err(|_| IdentityError::SignatureEncoding)?;
    key.verify_strict(&identity_message(nonce, endpoint), &signature)
        .map_err(|_| IdentityError::Invalid)?;
    Ok(key)
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is not standard base64 of 64 bytes")]
    Encoding,
    #[error("signature does not verify")]
    Invalid,
    #[error("timestamp is more than 5 minutes from the verifier's clock")]
    Stale,
    #[error("key: {0}")]
    Key(#[from] KeyError),
}

/// The exact bytes a mutation signature covers.
pub fn mutation_message(
    action: MutationAction,
    server_id: &str,
    endpoint: &str,
    region: &str,
    timestamp: u64,
) -> String {
    format!(
        "{MUTATION_DOMAIN}\n{}\n{server_id}\n{endpoint}\n{region}\n{timestamp}",
        action.as_str()
    )
}

/// Whether `timestamp` lies within the freshness window around `now_ms`.
pub fn check_freshness(timestamp: u64, now_ms: u64) -> Result<(), SignatureError> {
    if timestamp.abs_diff(now_ms) > FRESHNESS_WINDOW_MS {
        Err(SignatureError::Stale)
    } else {
        Ok(())
    }
}

/// Decodes a signature strictly (standard base64, exactly 64 bytes).
pub fn decode_signature(text: &str) -> Result<Signature, SignatureError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| SignatureError::Encoding)?;
    let array: [u8; 64] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Encoding)?;
    Ok(Signature::from_bytes(&array))
}

/// Verifies a mutation signature by the key inside `server_id`. The caller
/// checks freshness and replay; this checks only the signature, strictly
/// (no malleable or small-order forms), so one mutation has one signature.
pub fn verify_mutation(
    action: MutationAction,
    server_id: &str,
    endpoint: &str,
    region: &str,
    timestamp: u64,
    signature: &str,
) -> Result<Signature, SignatureError> {
    let key = keys::public_key_from_server_id(server_id)?;
    let signature = decode_signature(signature)?;
    let message = mutation_message(action, server_id, endpoint, region, timestamp);
    key.verify_strict(message.as_bytes(), &signature)
        .map_err(|_| SignatureError::Invalid)?;
    Ok(signature)
}

/// Signs a mutation with a server's key; returns standard base64.
pub fn sign_mutation(
    key: &SigningKey,
    action: MutationAction,
    endpoint: &str,
    region: &str,
    timestamp: u64,
) -> String {
    let server_id = keys::server_id_for(&key.verifying_key());
    let message = mutation_message(action, &server_id, endpoint, region, timestamp);
    STANDARD.encode(key.sign(message.as_bytes()).to_bytes())
}

impl RegisterRequest {
    /// A registration signed with the server's own key.
    pub fn signed(key: &SigningKey, endpoint: &str, region: Option<&str>, now_ms: u64) -> Self {
        let public = key.verifying_key();
        let signature = sign_mutation(
            key,
            MutationAction::Register,
            endpoint,
            region.unwrap_or(""),
            now_ms,
        );
        Self {
            server_id: keys::server_id_for(&public),
            endpoint: endpoint.to_string(),
            public_key: keys::public_key_to_base64(&public),
            region: region.map(str::to_string),
            timestamp: Some(now_ms),
            signature: Some(signature),
        }
    }
}

impl HeartbeatRequest {
    /// A heartbeat signed with the server's own key.
    pub fn signed(key: &SigningKey, now_ms: u64) -> Self {
        Self {
            server_id: keys::server_id_for(&key.verifying_key()),
            timestamp: Some(now_ms),
            signature: Some(sign_mutation(
                key,
                MutationAction::Heartbeat,
                "",
                "",
                now_ms,
            )),
        }
    }
}

/// The `X-Zajel-Timestamp` and `X-Zajel-Signature` values of a signed `DELETE`.
pub fn sign_unregister(key: &SigningKey, now_ms: u64) -> (String, String) {
    (
        now_ms.to_string(),
        sign_mutation(key, MutationAction::Unregister, "", "", now_ms),
    )
}

/// Signs a response body; returns the `X-Bootstrap-Signature` value.
pub fn sign_body(key: &SigningKey, body: &[u8]) -> String {
    STANDARD.encode(key.sign(body).to_bytes())
}

/// Why a signed server list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the list carries no X-Bootstrap-Signature")]
    Unsigned,
    #[error("invalid signature: the list is not signed by a pinned registry key")]
    InvalidSignature,
    #[error("the list is not a valid server list: {0}")]
    Malformed(String),
    #[error("stale list: its timestamp is more than 5 minutes from this clock")]
    Stale,
}

/// Verifies a `GET /servers` body against the pinned registry keys (any one
/// may match) and its freshness, and only then parses it.
pub fn verify_server_list(
    body: &[u8],
    signature_header: Option<&str>,
    pinned: &[VerifyingKey],
    now_ms: u64,
) -> Result<ServerList, ListError> {
    let header = signature_header.ok_or(ListError::Unsigned)?;
    let signature = decode_signature(header.trim()).map_err(|_| ListError::InvalidSignature)?;
    if !pinned
        .iter()
        .any(|key| key.verify_strict(body, &signature).is_ok())
    {
        return Err(ListError::InvalidSignature);
    }
    let list: ServerList =
        serde_json::from_slice(body).map_err(|error| ListError::Malformed(error.to_string()))?;
    check_freshness(list.timestamp, now_ms).map_err(|_| ListError::Stale)?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ServerEntry;

    const NOW: u64 = 1_790_000_000_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn the_message_has_the_documented_layout() {
        assert_eq!(
            mutation_message(MutationAction::Register, "ed25519:K", "wss://a", "", 42),
            "zajel-registry-v1\nregister\ned25519:K\nwss://a\n\n42"
        );
    }

    #[test]
    fn signed_registration_verifies_and_any_change_breaks_it() {
        let request = RegisterRequest::signed(&key(1), "wss://a.example", Some("eu"), NOW);
        let sig = request.signature.as_deref().unwrap();
        let verify = |action, id: &str, endpoint, region, ts| {
            verify_mutation(action, id, endpoint, region, ts, sig)
        };
        let id = request.server_id.as_str();
        assert!(verify(MutationAction::Register, id, "wss://a.example", "eu", NOW).is_ok());
        assert_eq!(
            verify(MutationAction::Heartbeat, id, "wss://a.example", "eu", NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(MutationAction::Register, id, "wss://b.example", "eu", NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(MutationAction::Register, id, "wss://a.example", "", NOW),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(
                MutationAction::Register,
                id,
                "wss://a.example",
                "eu",
                NOW + 1
            ),
            Err(SignatureError::Invalid)
        );
        let other = keys::server_id_for(&key(2).verifying_key());
        assert_eq!(
            verify(
                MutationAction::Register,
                &other,
                "wss://a.example",
                "eu",
                NOW
            ),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn garbage_signatures_are_refused_not_panicked_on() {
        let id = keys::server_id_for(&key(1).verifying_key());
        for bad in [
            "",
            "AAAA",
            "!!!!",
            &STANDARD.encode([0u8; 63]),
            &STANDARD.encode([0u8; 65]),
        ] {
            assert_eq!(
                verify_mutation(MutationAction::Unregister, &id, "", "", NOW, bad),
                Err(SignatureError::Encoding),
                "{bad}"
            );
        }
        assert_eq!(
            verify_mutation(
                MutationAction::Unregister,
                &id,
                "",
                "",
                NOW,
                &STANDARD.encode([0u8; 64])
            ),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn freshness_window_is_five_minutes_each_way() {
        assert!(check_freshness(NOW - FRESHNESS_WINDOW_MS, NOW).is_ok());
        assert!(check_freshness(NOW + FRESHNESS_WINDOW_MS, NOW).is_ok());
        assert_eq!(
            check_freshness(NOW - FRESHNESS_WINDOW_MS - 1, NOW),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check_freshness(NOW + FRESHNESS_WINDOW_MS + 1, NOW),
            Err(SignatureError::Stale)
        );
        assert_eq!(check_freshness(0, NOW), Err(SignatureError::Stale));
        assert_eq!(check_freshness(u64::MAX, NOW), Err(SignatureError::Stale));
    }

    fn list_body(timestamp: u64) -> Vec<u8> {
        serde_json::to_vec(&ServerList {
            servers: vec![ServerEntry {
                server_id: "ed25519:x".into(),
                endpoint: "wss://a".into(),
                public_key: "x".into(),
                region: "unknown".into(),
                registered_at: 1,
                last_seen: 2,
            }],
            timestamp,
        })
        .unwrap()
    }

    #[test]
    fn signed_lists_verify_only_with_a_pinned_key_and_fresh_timestamp() {
        let registry = key(9);
        let pinned = [key(8).verifying_key(), registry.verifying_key()];
        let body = list_body(NOW);
        let sig = sign_body(&registry, &body);
        let list = verify_server_list(&body, Some(&sig), &pinned, NOW + 1000).unwrap();
        assert_eq!(list.servers.len(), 1);

        assert_eq!(
            verify_server_list(&body, None, &pinned, NOW),
            Err(ListError::Unsigned)
        );
        let forged = sign_body(&key(3), &body);
        assert_eq!(
            verify_server_list(&body, Some(&forged), &pinned, NOW),
            Err(ListError::InvalidSignature)
        );
        let mut tampered = body.clone();
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert_eq!(
            verify_server_list(&tampered, Some(&sig), &pinned, NOW),
            Err(ListError::InvalidSignature)
        );
        let old = list_body(NOW - FRESHNESS_WINDOW_MS - 1);
        let old_sig = sign_body(&registry, &old);
        assert_eq!(
            verify_server_list(&old, Some(&old_sig), &pinned, NOW),
            Err(ListError::Stale)
        );
        let junk = b"{\"servers\":[]}";
        let junk_sig = sign_body(&registry, junk);
        assert!(matches!(
            verify_server_list(junk, Some(&junk_sig), &pinned, NOW),
            Err(ListError::Malformed(_))
        ));
    }

    const NONCE: IdentityNonce = [7u8; IDENTITY_NONCE_BYTES];

    #[test]
    fn the_identity_message_has_the_documented_bytes() {
        let mut expected = b"zajel-server-identity-v1\0".to_vec();
        expected.extend_from_slice(&NONCE);
        expected.extend_from_slice(b"\0wss://a.example/ws");
        assert_eq!(identity_message(&NONCE, "wss://a.example/ws"), expected);
    }

    #[test]
    fn an_identity_proof_verifies_only_for_its_nonce_endpoint_and_key() {
        let server = key(1);
        let id = keys::server_id_for(&server.verifying_key());
        let signature = sign_identity(&server, &NONCE, "wss://a.example");
        assert_eq!(
            verify_identity(&id, &NONCE, "wss://a.example", &signature),
            Ok(server.verifying_key())
        );
        let mut other_nonce = NONCE;
        other_nonce[31] ^= 1;
        assert_eq!(
            verify_identity(&id, &other_nonce, "wss://a.example", &signature),
            Err(IdentityError::Invalid),
            "wrong nonce"
        );
        assert_eq!(
            verify_identity(&id, &NONCE, "wss://b.example", &signature),
            Err(IdentityError::Invalid),
            "wrong endpoint"
        );
        let other = keys::server_id_for(&key(2).verifying_key());
        assert_eq!(
            verify_identity(&other, &NONCE, "wss://a.example", &signature),
            Err(IdentityError::Invalid),
            "wrong key"
        );
        assert!(matches!(
            verify_identity("ed25519:nope", &NONCE, "wss://a.example", &signature),
            Err(IdentityError::Key(_))
        ));
        for bad in ["", "!!!!", &STANDARD.encode([0u8; 63])] {
            assert_eq!(
                verify_identity(&id, &NONCE, "wss://a.example", bad),
                Err(IdentityError::SignatureEncoding),
                "{bad}"
            );
        }
    }

    #[test]
    fn identity_nonces_are_strict_base64_of_32_bytes() {
        let text = encode_identity_nonce(&NONCE);
        assert_eq!(decode_identity_nonce(&text), Ok(NONCE));
        for bad in [
            String::new(),
            "not base64!".into(),
            STANDARD.encode([0u8; 31]),
            STANDARD.encode([0u8; 33]),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xffu8; 32]),
        ] {
            assert_eq!(
                decode_identity_nonce(&bad),
                Err(IdentityError::NonceEncoding),
                "{bad}"
            );
        }
    }

    #[test]
    fn unregister_headers_verify() {
        let (ts, sig) = sign_unregister(&key(4), NOW);
        let id = keys::server_id_for(&key(4).verifying_key());
        assert!(verify_mutation(
            MutationAction::Unregister,
            &id,
            "",
            "",
            ts.parse().unwrap(),
            &sig
        )
        .is_ok());
    }
}
