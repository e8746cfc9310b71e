//! The candidate check as a sans-IO conversation, the same steps as the
//! native client's check (discovery-client's `probe`): wait for the
//! `server_info` greeting, send `identity_challenge` with a fresh nonce and
//! then `{"type":"ping"}`, and time the `{"type":"pong"}`; an
//! `identity_proof` before the pong is verified against the nonce and the
//! key inside its `serverId` (whether that is the key the entry names is
//! discovery-core's rule). The browser's WebSocket feeds [`Probe`] the text
//! frames and the close; the time is an argument.
//!
//! What a browser cannot tell: why a WebSocket failed (refused, TLS, DNS
//! all look alike), so a socket that fails before the greeting is
//! [`Outcome::Refused`] with the browser's words; nor where a host name
//! resolves, so the private-address rule is applied to the URL's host only
//! (discovery-core's admission rule).

use zajel_discovery_core::discovery::CheckResult;
use zajel_discovery_core::identity::IdentityCheck;
use zajel_discovery_core::report::Outcome;
use zajel_wire::signaling::{ClientMessage, ServerMessage, MAX_FRAME_BYTES};
use zajel_wire::signature::IdentityNonce;

/// Where the conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    AwaitingGreeting,
    AwaitingPong,
}

/// One check's conversation.
#[derive(Debug)]
pub struct Probe {
    nonce: IdentityNonce,
    stage: Stage,
    announced: Option<String>,
    identity: Option<IdentityCheck>,
    ping_sent_ms: f64,
}

/// What the socket should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send these text frames, in order.
    Send(Vec<String>),
    /// Nothing yet.
    Wait,
    /// The check ended (close the socket).
    Done(CheckResult),
}

fn failed(outcome: Outcome, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        outcome,
        detail: detail.into(),
        rtt_ms: None,
        announced_server_id: None,
        identity: IdentityCheck::Unanswered("the check did not get that far".into()),
    }
}

impl Probe {
    /// A check that will challenge the server with `nonce` (32 random bytes).
    pub fn new(nonce: IdentityNonce) -> Self {
        Self {
            nonce,
            stage: Stage::AwaitingGreeting,
            announced: None,
            identity: None,
            ping_sent_ms: 0.0,
        }
    }

    /// A text frame arrived at `now_ms`.
    pub fn on_message(&mut self, text: &str, now_ms: f64) -> Step {
        if text.len() > MAX_FRAME_BYTES {
            return Step::Done(failed(
                Outcome::Protocol,
                format!("frame larger than {MAX_FRAME_BYTES} bytes"),
            ));
        }
        let message = match ServerMessage::parse(text) {
            Ok(message) => message,
            Err(e) => {
                return Step::Done(failed(
                    Outcome::Protocol,
                    format!("not a Zajel message: {e}"),
                ))
            }
        };
        match (self.stage, message) {
            (Stage::AwaitingGreeting, ServerMessage::ServerInfo { server_id, .. }) => {
                self.announced = Some(server_id);
                self.stage = Stage::AwaitingPong;
                self.ping_sent_ms = now_ms;
                let challenge = ClientMessage::IdentityChallenge { nonce: self.nonce };
                Step::Send(vec![
                    challenge.to_json().to_string(),
                    ClientMessage::Ping.to_json().to_string(),
                ])
            }
            (Stage::AwaitingGreeting, other) => Step::Done(failed(
                Outcome::Protocol,
                format!("expected server_info first, got {}", other.type_name()),
            )),
            (Stage::AwaitingPong, ServerMessage::Pong) => Step::Done(CheckResult {
                outcome: Outcome::Ok,
                detail: String::new(),
                rtt_ms: Some((now_ms - self.ping_sent_ms).max(0.0)),
                announced_server_id: self.announced.clone(),
                identity: self.identity.clone().unwrap_or_else(|| {
                    IdentityCheck::Unanswered("no identity_proof before the pong".into())
                }),
            }),
            (Stage::AwaitingPong, ServerMessage::IdentityProof(proof))
                if self.identity.is_none() =>
            {
                self.identity = Some(match proof.verify(&self.nonce) {
                    Ok(_) => IdentityCheck::Proof {
                        server_id: proof.server_id,
                        endpoint: proof.endpoint,
                    },
                    Err(e) => IdentityCheck::Invalid(e.to_string()),
                });
                Step::Wait
            }
            (Stage::AwaitingPong, ServerMessage::Error { message }) if self.identity.is_none() => {
                self.identity = Some(IdentityCheck::Unanswered(message));
                Step::Wait
            }
            (Stage::AwaitingPong, _) => Step::Wait,
        }
    }

    /// A binary frame arrived (Zajel signaling is text only).
    pub fn on_binary(&mut self) -> Step {
        Step::Done(failed(
            Outcome::Protocol,
            "binary frame on a signaling socket",
        ))
    }

    /// The socket failed or closed before the check ended; `opened` says
    /// whether it had opened (a failed upgrade is a refusal to the browser).
    pub fn on_closed(&self, opened: bool, reason: &str) -> CheckResult {
        if opened {
            failed(
                Outcome::Protocol,
                format!("the server closed the connection: {reason}"),
            )
        } else {
            failed(
                Outcome::Refused,
                format!("WebSocket failed before opening: {reason}"),
            )
        }
    }

    /// The check's time ran out.
    pub fn timed_out(timeout_ms: u64) -> CheckResult {
        failed(Outcome::TimedOut, format!("no pong within {timeout_ms} ms"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use zajel_discovery_core::identity::IdentityCheck;
    use zajel_wire::keys;
    use zajel_wire::signaling::IdentityProof;

    const NONCE: IdentityNonce = [7u8; 32];
    const ENDPOINT: &str = "wss://relay.example/";

    fn greeting(key: &SigningKey) -> String {
        format!(
            r#"{{"type":"server_info","serverId":"{}","endpoint":"{ENDPOINT}","region":"test"}}"#,
            keys::server_id_for(&key.verifying_key())
        )
    }

    fn proof(key: &SigningKey, nonce: &IdentityNonce) -> String {
        let mut json = serde_json::to_value(IdentityProof::sign(key, nonce, ENDPOINT)).unwrap();
        json["type"] = "identity_proof".into();
        json.to_string()
    }

    #[test]
    fn greeting_then_challenge_and_ping_then_proof_and_pong_is_a_proven_answer() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut probe = Probe::new(NONCE);
        let Step::Send(frames) = probe.on_message(&greeting(&key), 10.0) else {
            panic!("no challenge sent");
        };
        assert!(frames[0].contains("identity_challenge"), "{frames:?}");
        assert_eq!(frames[1], r#"{"type":"ping"}"#);
        assert_eq!(probe.on_message(&proof(&key, &NONCE), 11.0), Step::Wait);
        let Step::Done(result) = probe.on_message(r#"{"type":"pong"}"#, 14.5) else {
            panic!("no result");
        };
        assert_eq!(result.outcome, Outcome::Ok);
        assert_eq!(result.rtt_ms, Some(4.5));
        assert_eq!(
            result.identity,
            IdentityCheck::Proof {
                server_id: keys::server_id_for(&key.verifying_key()),
                endpoint: ENDPOINT.into()
            }
        );
    }

    #[test]
    fn a_replayed_proof_for_another_nonce_is_invalid_and_no_proof_is_unanswered() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut probe = Probe::new(NONCE);
        probe.on_message(&greeting(&key), 0.0);
        probe.on_message(&proof(&key, &[8u8; 32]), 1.0);
        let Step::Done(result) = probe.on_message(r#"{"type":"pong"}"#, 2.0) else {
            panic!("no result");
        };
        assert!(
            matches!(result.identity, IdentityCheck::Invalid(_)),
            "{result:?}"
        );

        let mut silent = Probe::new(NONCE);
        silent.on_message(&greeting(&key), 0.0);
        let Step::Done(result) = silent.on_message(r#"{"type":"pong"}"#, 2.0) else {
            panic!("no result");
        };
        assert!(matches!(result.identity, IdentityCheck::Unanswered(_)));
    }

    #[test]
    fn a_server_that_does_not_greet_or_speaks_something_else_is_a_protocol_error() {
        let mut probe = Probe::new(NONCE);
        let Step::Done(result) = probe.on_message(r#"{"type":"pong"}"#, 0.0) else {
            panic!("accepted a pong first");
        };
        assert_eq!(result.outcome, Outcome::Protocol);
        let mut probe = Probe::new(NONCE);
        let Step::Done(result) = probe.on_message("<html>", 0.0) else {
            panic!("accepted html");
        };
        assert_eq!(result.outcome, Outcome::Protocol);
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        assert!(matches!(
            Probe::new(NONCE).on_message(&huge, 0.0),
            Step::Done(_)
        ));
        assert_eq!(
            Probe::new(NONCE).on_closed(false, "error").outcome,
            Outcome::Refused
        );
        assert_eq!(
            Probe::new(NONCE).on_closed(true, "1006").outcome,
            Outcome::Protocol
        );
    }
}
