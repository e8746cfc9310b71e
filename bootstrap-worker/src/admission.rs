//! Admission checks: what the registry asks its host to check before an
//! endpoint is listed (and again while it stays listed), and the sans-IO
//! conversation both hosts hold with the endpoint.
//!
//! The [`crate::registry::Registry`] hands out [`EndpointCheck`]s
//! (`Registry::poll_checks`) and takes [`CheckResult`]s back
//! (`Registry::check_finished`), both with `now`; the host only moves bytes:
//! it opens a WebSocket to [`EndpointCheck::endpoint`], feeds every text
//! frame to a [`Conversation`], sends what it returns, and gives up after
//! [`EndpointCheck::timeout_ms`]. The conversation passes when the endpoint
//! greets with a `server_info` naming the registered `serverId` and answers
//! an `identity_challenge` with an `identity_proof` by that key over the
//! registered endpoint (see `zajel_wire::signature`). An entry registered
//! without a signature (the `open` policy, Zajel's own servers, which
//! cannot prove a key) passes with the `server_info` and any answer to the
//! challenge (Zajel's `Unknown message type` error), but a proof it does
//! send must verify: such entries prove nothing more than that.

use zajel_wire::signaling::{ClientMessage, ServerMessage};
use zajel_wire::signature::IdentityNonce;

/// Most frames a checked endpoint may send before it has answered.
pub const MAX_CHECK_FRAMES: u32 = 16;

/// One check for the host to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCheck {
    /// Names the check in [`crate::registry::Registry::check_finished`].
    pub id: u64,
    /// The `serverId` the endpoint must prove.
    pub server_id: String,
    /// The registered endpoint (`ws://` or `wss://`), connected to as is.
    pub endpoint: String,
    /// The challenge's nonce: fresh for every check.
    pub nonce: IdentityNonce,
    /// Whether the endpoint's name may resolve to a non-public address.
    pub allow_private: bool,
    /// How long the whole check may take.
    pub timeout_ms: u64,
    /// Whether this is a listed entry's periodic check (else a new endpoint's).
    pub recheck: bool,
    /// Whether an identity proof is required (entries registered with a
    /// signature); otherwise the `server_info` and an answer suffice.
    pub require_proof: bool,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The endpoint proved the registered key over the registered endpoint.
    Verified,
    /// Anything else: unreachable, timed out, wrong key, no proof.
    Failed { reason: String },
}

impl CheckResult {
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed {
            reason: reason.into(),
        }
    }
}

/// The registry's side of one check's WebSocket conversation.
#[derive(Debug)]
pub struct Conversation {
    check: EndpointCheck,
    greeted: bool,
    frames: u32,
}

impl Conversation {
    pub fn new(check: EndpointCheck) -> Self {
        Self {
            check,
            greeted: false,
            frames: 0,
        }
    }

    /// The `identity_challenge` to send once the socket is open (as text:
    /// `.to_text()`).
    pub fn challenge(&self) -> ClientMessage {
        ClientMessage::IdentityChallenge {
            nonce: self.check.nonce,
        }
    }

    /// Takes one text frame from the endpoint; `Some` once the check is decided.
    pub fn on_text(&mut self, text: &str) -> Option<CheckResult> {
        self.frames += 1;
        if self.frames > MAX_CHECK_FRAMES {
            return Some(CheckResult::failed("too many frames without a proof"));
        }
        match ServerMessage::parse(text) {
            Ok(ServerMessage::ServerInfo { server_id, .. }) => {
                if server_id != self.check.server_id {
                    return Some(CheckResult::failed("server_info names another serverId"));
                }
                self.greeted = true;
                None
            }
            _ if !self.greeted => Some(CheckResult::failed(
                "first frame is not a server_info greeting",
            )),
            Ok(ServerMessage::IdentityProof(proof)) => {
                Some(match proof.verify(&self.check.nonce) {
                    Err(error) => CheckResult::failed(format!("identity proof refused: {error}")),
                    Ok(_) if proof.server_id != self.check.server_id => {
                        CheckResult::failed("identity proof for another serverId")
                    }
                    Ok(_) if proof.endpoint != self.check.endpoint => {
                        CheckResult::failed("identity proof names another endpoint")
                    }
                    Ok(_) => CheckResult::Verified,
                })
            }
            Ok(ServerMessage::Error { .. }) if !self.check.require_proof => {
                Some(CheckResult::Verified)
            }
            Ok(ServerMessage::Error { .. }) => Some(CheckResult::failed(
                "the endpoint refused the identity challenge",
            )),
            _ => None,
        }
    }

    /// The verdict when the socket closed or failed before a decision.
    pub fn on_closed(&self, why: &str) -> CheckResult {
        CheckResult::failed(format!("connection ended before a proof: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use zajel_wire::keys;
    use zajel_wire::signaling::IdentityProof;

    fn check(key: &SigningKey) -> EndpointCheck {
        EndpointCheck {
            id: 1,
            server_id: keys::server_id_for(&key.verifying_key()),
            endpoint: "wss://relay.example".into(),
            nonce: [7; 32],
            allow_private: false,
            timeout_ms: 1_000,
            recheck: false,
            require_proof: true,
        }
    }

    fn info(server_id: &str) -> String {
        serde_json::to_string(&ServerMessage::ServerInfo {
            server_id: server_id.into(),
            endpoint: "wss://relay.example".into(),
            region: "eu".into(),
        })
        .unwrap()
    }

    fn proof(key: &SigningKey, nonce: &IdentityNonce, endpoint: &str) -> String {
        serde_json::to_string(&ServerMessage::IdentityProof(IdentityProof::sign(
            key, nonce, endpoint,
        )))
        .unwrap()
    }

    #[test]
    fn passes_only_a_fresh_proof_by_the_registered_key_over_the_registered_endpoint() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let check = check(&key);
        let id = check.server_id.clone();
        let run = |frames: &[String]| {
            let mut conversation = Conversation::new(check.clone());
            assert!(conversation
                .challenge()
                .to_text()
                .contains("identity_challenge"));
            frames.iter().find_map(|frame| conversation.on_text(frame))
        };
        assert_eq!(
            run(&[info(&id), proof(&key, &[7; 32], "wss://relay.example")]),
            Some(CheckResult::Verified)
        );
        for (frames, why) in [
            (
                vec![proof(&key, &[7; 32], "wss://relay.example")],
                "first frame",
            ),
            (
                vec![info(&keys::server_id_for(&other.verifying_key()))],
                "another serverId",
            ),
            (
                vec![info(&id), proof(&key, &[8; 32], "wss://relay.example")],
                "another nonce",
            ),
            (
                vec![info(&id), proof(&key, &[7; 32], "wss://other.example")],
                "another endpoint",
            ),
            (
                vec![info(&id), proof(&other, &[7; 32], "wss://relay.example")],
                "another serverId",
            ),
            (
                vec![info(&id), r#"{"type":"error","message":"no"}"#.to_string()],
                "refused",
            ),
        ] {
            match run(&frames) {
                Some(CheckResult::Failed { reason }) => {
                    assert!(
                        reason.contains(why) || why == "another nonce",
                        "{why}: {reason}"
                    )
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        // An unsigned (Zajel) entry passes with its greeting and an error
        // answer, but not with a bad proof or silence.
        let unsigned = EndpointCheck {
            require_proof: false,
            ..check.clone()
        };
        let mut zajel = Conversation::new(unsigned.clone());
        assert_eq!(zajel.on_text(&info(&id)), None);
        let refusal = r#"{"type":"error","message":"Unknown message type: identity_challenge"}"#;
        assert_eq!(zajel.on_text(refusal), Some(CheckResult::Verified));
        let mut forged = Conversation::new(unsigned);
        assert_eq!(forged.on_text(&info(&id)), None);
        assert!(matches!(
            forged.on_text(&proof(&other, &[7; 32], "wss://relay.example")),
            Some(CheckResult::Failed { .. })
        ));
        let mut chatty = Conversation::new(check.clone());
        assert_eq!(chatty.on_text(&info(&id)), None);
        let pong = r#"{"type":"pong"}"#;
        let verdict = (0..MAX_CHECK_FRAMES).find_map(|_| chatty.on_text(pong));
        assert!(matches!(verdict, Some(CheckResult::Failed { .. })));
    }
}
