//! relay-lite as a federation neighbour of Zajel's servers (`zajel-wire.md`
//! §8): it learns a server from the registry's heartbeat `peers`, dials its
//! `/federation`, and answers its gossip `ping`; it accepts links only from
//! servers a registry lists, with a verified, fresh handshake.
//!
//! The other side is `tests/js/zajel_federation_peer.mjs`: a peer written for
//! these tests in JavaScript that builds and checks frames as server-vps does
//! (node's `JSON.stringify` and Ed25519, the `ws` package), so our Rust
//! serialisation is checked by an independent one.
//! Needs `cargo build -p relay-lite`, node and `npm ci` (for `ws`).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tests::process::ChildProcess;
use tests::registry_host::{self, repository_root, Profile};
use tests::relay_child::RelayChild;
use zajel_client_net::now_ms;
use zajel_wire::entry::RegisterRequest;

const WAIT: Duration = Duration::from_secs(20);

/// The JS peer with the key of `seed`; `dial` = (URL, modes) to dial too.
fn js_peer(seed: &[u8; 32], dial: Option<(&str, &str)>) -> ChildProcess {
    let mut command = Command::new("node");
    command
        .arg(repository_root().join("tests/js/zajel_federation_peer.mjs"))
        .arg(seed.iter().map(|b| format!("{b:02x}")).collect::<String>());
    if let Some((url, modes)) = dial {
        command.args([url, modes]);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    ChildProcess::spawn("zajel federation peer (node)", command).expect("node")
}

/// Waits for the peer's next JSON event for which `pick` says yes.
fn event(peer: &mut ChildProcess, pick: impl Fn(&Value) -> bool) -> Value {
    peer.wait_for(WAIT, |line| {
        serde_json::from_str::<Value>(line).ok().filter(|v| pick(v))
    })
    .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn relay_lite_dials_a_listed_zajel_server_and_answers_its_pings() {
    let registry = registry_host::start_in_process(Profile::SIGNED);
    let seed = [0x5a; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut peer = js_peer(&seed, None);
    let listening = event(&mut peer, |v| v["event"] == "listening");
    let endpoint = listening["endpoint"].as_str().unwrap().to_owned();

    // The Zajel server is in the registry, as server-vps puts itself there.
    let request = RegisterRequest::signed(&key, &endpoint, None, now_ms());
    let answer = reqwest::blocking::Client::new()
        .post(registry.url("/servers"))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&request).unwrap())
        .send()
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text());

    let relay = RelayChild::start(
        &["--bootstrap", &registry.base_url, "--heartbeat-ms", "300"],
        WAIT,
    )
    .expect("start relay-lite");

    // relay-lite dials /federation with a handshake the JS side verifies.
    let handshake = event(&mut peer, |v| v["event"] == "handshake");
    assert_eq!(handshake["ok"], true, "{handshake}");
    assert_eq!(handshake["path"], "/federation");
    assert_eq!(handshake["serverId"], relay.server_id.as_str());
    // And answers the gossip ping with a ping_ack whose signature checks.
    let ack = event(&mut peer, |v| v["event"] == "gossip");
    assert_eq!(ack["subtype"], "ping_ack", "{ack}");
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["incarnation"], 0);
}

#[test]
fn relay_lite_accepts_only_listed_servers_with_a_good_fresh_handshake() {
    let registry = registry_host::start_in_process(Profile::SIGNED);
    let seed = [0x6b; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    // The listed server: registered with an endpoint nobody dials successfully
    // (the relay's own dial attempts fail and are retried; what is tested here
    // is the links the JS side opens).
    let request = RegisterRequest::signed(&key, "ws://127.0.0.1:9", None, now_ms());
    let answer = reqwest::blocking::Client::new()
        .post(registry.url("/servers"))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&request).unwrap())
        .send()
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text());
    let mut relay = RelayChild::start(
        &["--bootstrap", &registry.base_url, "--heartbeat-ms", "300"],
        WAIT,
    )
    .expect("start relay-lite");
    // The relay knows the fleet once its first heartbeat is answered.
    relay
        .process
        .wait_for(WAIT, |line| {
            line.contains("fleet listed by the registry changed")
                .then_some(())
        })
        .unwrap();
    let url = format!("ws://{}/federation", relay.addr);
    let mut peer = js_peer(&seed, Some((&url, "good")));
    let first = event(&mut peer, |v| v["event"] == "ack" || v["event"] == "closed");
    assert_eq!(first["event"], "ack", "{first}");
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["serverId"], relay.server_id.as_str());
    let ack = event(&mut peer, |v| v["event"] == "gossip");
    assert_eq!(
        (ack["subtype"].as_str(), ack["ok"].as_bool()),
        (Some("ping_ack"), Some(true))
    );

    // With the listed key: a handshake altered after signing, one an hour
    // old; and a fresh key no registry lists. All closed with 4001.
    let mut hostile = js_peer(&seed, Some((&url, "forged,stale,unlisted")));
    let mut closed = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let event = event(&mut hostile, |v| {
            v["event"] == "closed" || v["event"] == "ack"
        });
        assert_eq!(
            event["event"], "closed",
            "a hostile handshake was acked: {event}"
        );
        closed.insert(
            event["mode"].as_str().unwrap().to_owned(),
            (
                event["code"].as_u64().unwrap(),
                event["reason"].as_str().unwrap().to_owned(),
            ),
        );
    }
    let bad = (4001, "Invalid handshake signature".to_owned());
    assert_eq!(closed["forged"], bad);
    assert_eq!(closed["stale"], bad);
    assert_eq!(closed["unlisted"], (4001, "Unknown server".to_owned()));
}
