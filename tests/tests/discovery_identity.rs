//! Servers prove who they are (issue 13, item 5), end to end on loopback:
//! the native registry (in-process) signs entries naming a `serverId` per
//! endpoint, and the servers at those endpoints are relay-lite (in-process)
//! or hostile stand-ins (tests::ws_echo): one announcing another server in
//! `server_info`, one proving with another key, a proxy passing on the real
//! server's proof (which names the real endpoint), one replaying an old
//! proof, and ones that do not answer the challenge (Zajel's server, a
//! silent one). `verified` needs the signed entry AND a valid proof by that
//! same key; the hostile ones are `identity_mismatch` and never used; the
//! ones that cannot prove are `identity_unproven` and rank after proven ones.

use std::process::Command;

use discovery_client::discovery::Discovery;
use discovery_client::report::{Outcome, Report, Verdict};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use relay_lite::{Relay, RelayConfig};
use serde_json::Value;
use tests::discovery_world::{DiscoveryWorld, DOMAIN};
use tests::registry_host::{self, binary};
use tests::ws_echo::{Identity, Proof, WsEcho};
use zajel_wire::keys;
use zajel_wire::signaling::IdentityProof;

async fn run_to_end(config: discovery_client::Config) -> Report {
    Discovery::new(config).unwrap().run().finish().await
}

/// A discovery through the world's registry alone.
async fn registry_run(world: &DiscoveryWorld) -> Report {
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    run_to_end(config).await
}

/// One candidate of a report as JSON (what `zajel-discover --json` prints).
fn candidate_json(report: &Report, url: &str) -> Value {
    let candidate = report
        .candidate(url)
        .unwrap_or_else(|| panic!("{url} is a candidate: {:?}", report.candidates));
    serde_json::to_value(candidate).unwrap()
}

/// The measured bug: a signed entry names one server id while the server at
/// that endpoint announces another. Discovery said `verified` (the list was
/// signed); it is not the server the list signed for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_naming_another_server_than_the_signed_entry_is_a_mismatch_not_verified() {
    let world = DiscoveryWorld::new().await;
    let signed_for = registry_host::random_key();
    let other = keys::server_id_for(&registry_host::random_key().verifying_key());
    let impostor = WsEcho::start(&other);
    world.register(&signed_for, &impostor.url).await;
    let report = registry_run(&world).await;
    let json = candidate_json(&report, &impostor.url);
    assert_eq!(json["outcome"], "identity_mismatch", "{json}");
    assert_eq!(json["verified"], false, "{json}");
    assert_eq!(json["announced_server_id"], other.as_str());
    // It is never the server handed over; the genuine relay is.
    let best = serde_json::to_value(report.best.as_ref().unwrap()).unwrap();
    assert_eq!(best["url"], world.relay.url.as_str(), "{best}");
    assert_eq!(best["verified"], true, "{best}");
}

/// The same through DoH, as the issue measured it: a TXT record signed by
/// the registry key names one server id, the server announces another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doh_record_signed_for_another_server_than_the_one_answering_is_a_mismatch() {
    let world = DiscoveryWorld::new().await;
    let signed_for = registry_host::random_key();
    let other = keys::server_id_for(&registry_host::random_key().verifying_key());
    let impostor = WsEcho::start(&other);
    world.register(&signed_for, &impostor.url).await;
    let records = world.publish_with(&world.registry_key).await;
    assert!(records.iter().any(|r| r.endpoint == impostor.url));
    let doh = tests::doh_inprocess::InProcessDoh::start(
        &world.ca,
        DOMAIN,
        &records
            .iter()
            .map(|r| (r.name.clone(), r.strings.clone()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut config = world.config();
    config.doh_servers = vec![format!("{},ip=127.0.0.1", doh.url).parse().unwrap()];
    config.domains = vec![DOMAIN.into()];
    let report = run_to_end(config).await;
    let json = candidate_json(&report, &impostor.url);
    assert_eq!(json["sources"], serde_json::json!(["doh"]), "{json}");
    assert_eq!(json["outcome"], "identity_mismatch", "{json}");
    assert_eq!(json["verified"], false, "{json}");
    let relay = candidate_json(&report, &world.relay.url);
    assert_eq!(relay["verified"], true, "{relay}");
    assert_eq!(report.best.unwrap().url, world.relay.url);
}

/// A stand-in announcing `key`'s id and answering the challenge with `proof`.
fn stand_in(key: &SigningKey, proof: Proof) -> WsEcho {
    WsEcho::start(Identity {
        server_id: keys::server_id_for(&key.verifying_key()),
        proof,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_lite_proves_the_key_its_entry_names_and_is_verified() {
    let world = DiscoveryWorld::new().await;
    let key = registry_host::random_key();
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: Some(key.clone()),
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    world.register(&key, relay.endpoint()).await;
    let report = registry_run(&world).await;
    let url = format!("{}/", relay.endpoint());
    let checked = report.candidate(&url).expect("relay-lite is a candidate");
    assert_eq!(checked.outcome, Outcome::Ok, "{checked:?}");
    assert!(checked.signed && checked.verified, "{checked:?}");
    assert_eq!(checked.proven_server_id.as_deref(), Some(relay.server_id()));
    assert_eq!(report.verdict, Verdict::Verified);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_proving_with_another_key_is_a_mismatch_and_not_used() {
    let world = DiscoveryWorld::new().await;
    let signed_for = registry_host::random_key();
    let attacker = registry_host::random_key();
    // Announces the signed id, but can only sign with its own key.
    let impostor = stand_in(
        &signed_for,
        Proof::Sign {
            key: attacker.clone(),
            endpoint: None,
        },
    );
    world.register(&signed_for, &impostor.url).await;
    let report = registry_run(&world).await;
    let checked = report.candidate(&impostor.url).unwrap();
    assert_eq!(checked.outcome, Outcome::IdentityMismatch, "{checked:?}");
    assert!(!checked.verified);
    assert!(
        checked
            .detail
            .contains(&keys::server_id_for(&attacker.verifying_key())),
        "{}",
        checked.detail
    );
    assert_eq!(report.best.unwrap().url, world.relay.url);
    // zajel-discover's table says so for each server.
    let path = binary("zajel-discover").expect("zajel-discover binary");
    let output = Command::new(path)
        .args([
            "discover",
            "--registry",
            &world.registry.base_url,
            "--registry-key",
            &world.registry_key_base64(),
            "--allow-private",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{table}");
    let row = |url: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(url))
            .unwrap_or_else(|| panic!("no row for {url} in\n{table}"))
            .to_string()
    };
    assert!(
        row(&impostor.url).contains("unverified identity mismatch (the identity proof is by"),
        "{table}"
    );
    assert!(
        row(&world.relay.url).contains(&format!(
            "verified ok identity proven {}",
            world.relay.server_id
        )),
        "{table}"
    );
}

/// A WebSocket proxy on loopback that forwards every text frame to `target`
/// and back: what an on-path attacker placed at an endpoint does.
async fn forwarding_proxy(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Ok((server, _)) = tokio_tungstenite::connect_async(target.as_str()).await
                else {
                    return;
                };
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let up = async {
                    while let Some(Ok(frame)) = from_client.next().await {
                        if frame.is_text() && to_server.send(frame).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    while let Some(Ok(frame)) = from_server.next().await {
                        if frame.is_text() && to_client.send(frame).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_passing_on_the_real_servers_proof_is_a_mismatch() {
    let world = DiscoveryWorld::new().await;
    let key = registry_host::random_key();
    let real = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        identity: Some(key.clone()),
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    // The entry for the proxy's endpoint names the real server's key: the
    // proxy relays the challenge and the real server's genuine proof, which
    // names the real server's endpoint.
    let proxy = forwarding_proxy(real.endpoint().to_string()).await;
    world.register(&key, &proxy).await;
    let report = registry_run(&world).await;
    let checked = report.candidate(&proxy).unwrap();
    assert_eq!(checked.outcome, Outcome::IdentityMismatch, "{checked:?}");
    assert!(!checked.verified);
    assert_eq!(
        checked.announced_server_id.as_deref(),
        Some(real.server_id()),
        "the proxy passed the real greeting on"
    );
    assert!(
        checked.detail.contains(real.endpoint()),
        "{}",
        checked.detail
    );
    assert_eq!(report.best.unwrap().url, world.relay.url);
    real.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_proof_is_a_mismatch() {
    let world = DiscoveryWorld::new().await;
    let key = registry_host::random_key();
    // A genuine proof by the right key for the right endpoint, for an old
    // nonce: what an attacker recorded from an earlier check. The port is
    // known only once the stand-in runs, so it is started twice: first to
    // learn its URL shape, then on that same listener.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let old = IdentityProof::sign(&key, &[0x42; 32], &url);
    let replayer = WsEcho::start_on(
        listener,
        Identity {
            server_id: keys::server_id_for(&key.verifying_key()),
            proof: Proof::Replay(old),
        },
    );
    assert_eq!(replayer.url, url);
    world.register(&key, &replayer.url).await;
    let report = registry_run(&world).await;
    let checked = report.candidate(&replayer.url).unwrap();
    assert_eq!(checked.outcome, Outcome::IdentityMismatch, "{checked:?}");
    assert!(
        checked.detail.contains("another nonce"),
        "{}",
        checked.detail
    );
    assert!(!checked.verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_do_not_answer_the_challenge_are_unproven_and_ranked_after_a_proven_one() {
    let world = DiscoveryWorld::new().await;
    let zajel_key = registry_host::random_key();
    // Zajel's server: `Unknown message type: identity_challenge`.
    let zajel = WsEcho::start(&keys::server_id_for(&zajel_key.verifying_key()));
    let silent_key = registry_host::random_key();
    let silent = stand_in(&silent_key, Proof::Silent);
    world.register(&zajel_key, &zajel.url).await;
    world.register(&silent_key, &silent.url).await;
    let report = registry_run(&world).await;
    for url in [&zajel.url, &silent.url] {
        let checked = report.candidate(url).unwrap();
        assert_eq!(checked.outcome, Outcome::IdentityUnproven, "{checked:?}");
        assert!(checked.signed && !checked.verified, "{checked:?}");
        assert!(checked.rtt_ms.is_some(), "it answered ping");
    }
    assert!(report
        .candidate(&zajel.url)
        .unwrap()
        .detail
        .contains("Unknown message type: identity_challenge"));
    // The proven relay is best, whatever the round trips were.
    assert_eq!(report.best.as_ref().unwrap().url, world.relay.url);
    assert_eq!(report.verdict, Verdict::Verified);

    // Without a proven server, an unproven one is still used, unverified.
    let alone = DiscoveryWorld::new().await;
    alone.register(&zajel_key, &zajel.url).await;
    let mut config = alone.config();
    config.registries = vec![alone.registry_url()];
    let gone = alone.relay.url.clone();
    drop(alone.relay);
    let report = run_to_end(config).await;
    assert!(!report.candidate(&gone).unwrap().outcome.is_usable());
    let best = report.best.expect("the unproven server is still usable");
    assert_eq!(best.url, zajel.url);
    assert!(!best.verified && best.signed && best.proven_server_id.is_none());
    assert_eq!(report.verdict, Verdict::UnverifiedOnly);
}
