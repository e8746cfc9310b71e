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

use discovery_client::discovery::Discovery;
use discovery_client::report::Report;
use serde_json::Value;
use tests::discovery_world::DiscoveryWorld;
use tests::registry_host;
use tests::ws_echo::WsEcho;
use zajel_wire::keys;

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
