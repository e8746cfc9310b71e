//! Server identity: what a candidate check learnt from the identity
//! challenge ([`IdentityCheck`], filled in by the driver's check) and the
//! rule that turns it into an [`Identity`] for the candidate ([`judge`]).
//!
//! A check sends `identity_challenge` with a fresh nonce right after the
//! `server_info` greeting (`zajel_wire::signaling`), and verifies any
//! `identity_proof` against that nonce and the key inside the proof's
//! `serverId` ([`zajel_wire::signaling::IdentityProof::verify`]). Which key
//! the server *must* have is known only to the discovery state (a signed
//! source may name the candidate after its check), so the comparison is here:
//!
//! 1. `server_info` naming another server than the entry → mismatch.
//! 2. A proof that did not verify (another nonce, a bad signature, a
//!    malformed proof) → mismatch.
//! 3. A valid proof for another endpoint than the candidate URL (both
//!    normalised like discovery keys candidates) → mismatch: a proxy passing
//!    on the real server's proof.
//! 4. A valid proof by another key than `server_info`'s or the entry's →
//!    mismatch.
//! 5. A valid proof by the entry's key → proven; with no key to check
//!    against (an unsigned source without a `serverId`) → learnt.
//! 6. No proof (an `error`, as Zajel's server answers, or none before the
//!    `pong`) → unproven.

use zajel_wire::endpoint;
use zajel_wire::keys;

/// What a check learnt from the identity challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityCheck {
    /// No proof: the server answered the challenge with an `error` (Zajel's
    /// `Unknown message type: identity_challenge`) or not before its `pong`.
    Unanswered(String),
    /// A proof for our nonce whose signature verifies by the key of
    /// `server_id` over `endpoint`.
    Proof { server_id: String, endpoint: String },
    /// A proof that does not hold: another nonce (a replay), a signature that
    /// does not verify, or a malformed proof. The reason in words.
    Invalid(String),
}

/// Who a candidate proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A valid proof by the key its entry names.
    Proven { server_id: String },
    /// A valid proof, with no key named to check it against.
    Learnt { server_id: String },
    /// No proof; why, in words.
    Unproven(String),
    /// Not the server its entry names (or not who it says); why, in words.
    Mismatch(String),
}

impl Identity {
    /// The `serverId` of a valid proof (proven or learnt).
    pub fn proven_server_id(&self) -> Option<&str> {
        match self {
            Self::Proven { server_id } | Self::Learnt { server_id } => Some(server_id),
            Self::Unproven(_) | Self::Mismatch(_) => None,
        }
    }
}

/// Whether two `serverId`s name the same key (the same text, or the same
/// Ed25519 key however its base64 is written).
pub fn same_server_id(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (
        keys::public_key_from_server_id(a),
        keys::public_key_from_server_id(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether two endpoint URLs are the same signaling URL once normalised.
fn same_endpoint(a: &str, b: &str) -> bool {
    match (endpoint::signaling_url(a), endpoint::signaling_url(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The identity rules (module header) for the candidate at `url` whose
/// entry names `expected` (`None`: nothing named a key), which announced
/// `announced` in `server_info`.
pub fn judge(
    url: &str,
    expected: Option<&str>,
    announced: Option<&str>,
    check: &IdentityCheck,
) -> Identity {
    if let (Some(expected), Some(announced)) = (expected, announced) {
        if !same_server_id(expected, announced) {
            return Identity::Mismatch(format!(
                "server_info names {announced}, the entry {expected}"
            ));
        }
    }
    match check {
        IdentityCheck::Unanswered(why) => Identity::Unproven(why.clone()),
        IdentityCheck::Invalid(why) => Identity::Mismatch(format!("identity proof: {why}")),
        IdentityCheck::Proof {
            server_id,
            endpoint,
        } => {
            if !same_endpoint(endpoint, url) {
                return Identity::Mismatch(format!(
                    "the identity proof is for {endpoint}, not {url}"
                ));
            }
            if let Some(announced) = announced.filter(|a| !same_server_id(a, server_id)) {
                return Identity::Mismatch(format!(
                    "the identity proof is by {server_id}, server_info names {announced}"
                ));
            }
            match expected {
                Some(expected) if !same_server_id(expected, server_id) => Identity::Mismatch(
                    format!("the identity proof is by {server_id}, the entry names {expected}"),
                ),
                Some(_) => Identity::Proven {
                    server_id: server_id.clone(),
                },
                None => Identity::Learnt {
                    server_id: server_id.clone(),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        keys::server_id_for(&key.verifying_key())
    }

    fn proof(n: u8, endpoint: &str) -> IdentityCheck {
        IdentityCheck::Proof {
            server_id: id(n),
            endpoint: endpoint.into(),
        }
    }

    const URL: &str = "wss://a.example/";

    #[test]
    fn a_proof_by_the_named_key_for_this_endpoint_is_proven() {
        let expected = id(1);
        assert_eq!(
            judge(
                URL,
                Some(&expected),
                Some(&expected),
                &proof(1, "wss://a.example:443")
            ),
            Identity::Proven {
                server_id: expected.clone()
            }
        );
        // Nothing named a key: learnt.
        assert_eq!(
            judge(URL, None, Some(&expected), &proof(1, URL)),
            Identity::Learnt {
                server_id: expected
            }
        );
    }

    #[test]
    fn another_key_another_endpoint_or_a_bad_proof_is_a_mismatch() {
        let expected = id(1);
        let mismatch = |check: &IdentityCheck, announced: Option<&str>| {
            matches!(
                judge(URL, Some(&expected), announced, check),
                Identity::Mismatch(_)
            )
        };
        assert!(mismatch(&proof(2, URL), Some(&id(2))), "another key");
        assert!(
            mismatch(&proof(2, URL), Some(&expected)),
            "announced ≠ proof"
        );
        assert!(
            mismatch(&proof(1, "wss://real.example/"), Some(&expected)),
            "a proxy passing on the real server's proof"
        );
        assert!(mismatch(
            &IdentityCheck::Invalid("the proof answers another nonce".into()),
            Some(&expected)
        ));
        // server_info naming another server, whatever the proof.
        assert!(mismatch(&proof(2, URL), Some(&id(2))));
        assert!(mismatch(
            &IdentityCheck::Unanswered("Unknown message type: identity_challenge".into()),
            Some(&id(3))
        ));
        // Without an entry key, a proof by a key other than the announced one.
        assert!(matches!(
            judge(URL, None, Some(&id(3)), &proof(2, URL)),
            Identity::Mismatch(_)
        ));
    }

    #[test]
    fn no_proof_is_unproven() {
        let expected = id(1);
        let why = "Unknown message type: identity_challenge";
        assert_eq!(
            judge(
                URL,
                Some(&expected),
                Some(&expected),
                &IdentityCheck::Unanswered(why.into())
            ),
            Identity::Unproven(why.into())
        );
        assert_eq!(
            judge(URL, None, None, &IdentityCheck::Unanswered(why.into())).proven_server_id(),
            None
        );
    }

    #[test]
    fn server_ids_compare_by_key() {
        let padded = id(1);
        assert!(same_server_id(&padded, &padded));
        assert!(!same_server_id(&padded, &id(2)));
        assert!(!same_server_id("ed25519:x", "ed25519:y"));
    }
}
