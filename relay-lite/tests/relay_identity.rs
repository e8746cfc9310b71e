//! relay-lite proves who it is: `identity_challenge` is answered with an
//! `identity_proof` signed by the key of its `serverId` over the nonce and
//! the endpoint it registers (`--public-endpoint`), before and after
//! `register`; a malformed challenge gets an `error` and the connection goes
//! on; challenges count against the rate limit like every frame. Each test
//! runs the `relay-lite` binary on loopback.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::relay::{key, Client, RelayProcess};
use serde_json::{json, Value};
use zajel_wire::signaling::{IdentityProof, RATE_LIMIT_EXCEEDED};
use zajel_wire::signature::{IdentityError, IdentityNonce};

const PUBLIC: &str = "wss://relay.example/ws";

fn challenge(nonce: &IdentityNonce) -> Value {
    json!({"type": "identity_challenge", "nonce": STANDARD.encode(nonce)})
}

fn proof(reply: Value) -> IdentityProof {
    assert_eq!(reply["type"], "identity_proof", "{reply}");
    serde_json::from_value(reply).expect("an identity_proof")
}

#[tokio::test]
async fn a_challenge_is_answered_with_a_proof_by_the_server_key_over_the_registered_endpoint() {
    let relay = RelayProcess::start(&["--public-endpoint", PUBLIC]);
    let mut client = Client::connect(&relay.url()).await;
    assert_eq!(client.server_info["endpoint"], PUBLIC);
    // Before register: discovery checks servers without registering.
    let nonce = [0x5a; 32];
    let answer = proof(client.request(challenge(&nonce)).await);
    assert_eq!(answer.server_id, relay.server_id);
    assert_eq!(answer.endpoint, PUBLIC);
    assert_eq!(answer.nonce, STANDARD.encode(nonce));
    let signer = answer.verify(&nonce).expect("the proof verifies");
    assert_eq!(zajel_wire::keys::server_id_for(&signer), relay.server_id);
    // The same proof does not answer another challenge (no replay).
    let fresh = [0xa5; 32];
    assert_eq!(answer.verify(&fresh), Err(IdentityError::WrongNonce));
    // After register too, and each proof is for its own nonce.
    let reply = client
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}))
        .await;
    assert_eq!(reply["type"], "registered");
    let second = proof(client.request(challenge(&fresh)).await);
    assert!(second.verify(&fresh).is_ok());
    assert_ne!(second.signature, answer.signature);
    client.expect_quiet().await;
}

#[tokio::test]
async fn without_a_public_endpoint_the_proof_names_the_listen_url() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::connect(&relay.url()).await;
    let nonce = [1; 32];
    let answer = proof(client.request(challenge(&nonce)).await);
    assert_eq!(answer.endpoint, relay.url());
    assert_eq!(answer.endpoint, client.server_info["endpoint"]);
    assert!(answer.verify(&nonce).is_ok());
}

#[tokio::test]
async fn a_malformed_challenge_gets_an_error_and_the_connection_goes_on() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::connect(&relay.url()).await;
    for nonce in [
        json!("not base64!"),
        json!(STANDARD.encode([0u8; 31])),
        json!(STANDARD.encode([0u8; 33])),
    ] {
        assert_eq!(
            client
                .error_for(json!({"type": "identity_challenge", "nonce": nonce}))
                .await,
            "Invalid nonce format",
            "{nonce}"
        );
    }
    assert_eq!(
        client
            .error_for(json!({"type": "identity_challenge"}))
            .await,
        "Invalid message format: missing field nonce"
    );
    assert_eq!(
        relay
            .metric("relay_refusals_total{reason=\"invalid_message\"}")
            .await,
        4.0
    );
    client.expect_quiet().await;
}

#[tokio::test]
async fn challenges_count_against_the_rate_limit() {
    let relay = RelayProcess::start(&["--rate-limit-messages", "5"]);
    let mut client = Client::connect(&relay.url()).await;
    for n in 0..5u8 {
        let nonce = [n; 32];
        assert!(proof(client.request(challenge(&nonce)).await)
            .verify(&nonce)
            .is_ok());
    }
    assert_eq!(
        client.error_for(challenge(&[9; 32])).await,
        RATE_LIMIT_EXCEEDED
    );
}
