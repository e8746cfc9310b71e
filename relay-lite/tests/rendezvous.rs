//! Rendezvous, device linking, peer relays and keep-alive
//! (`shared/reference/zajel-wire.md` §5–§7) through real WebSocket clients
//! sending Zajel's exact JSON shapes: two contacts derive their meeting
//! points as Zajel's app does (§5.3, [`zajel_wire::peer_keys`]) and meet
//! on one relay; dead drops; every `link_*` path; every peer-relay
//! message and the idle close; hostile input to each new message; and a
//! real `relay-lite` process killed and restarted on the same state
//! directory that still matches an entry registered before.

mod common;

use std::time::Duration;

use common::relay::{in_process_url, key, start_in_process, Client, Ended, RelayProcess};
use serde_json::{json, Value};
use zajel_wire::peer_keys;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A contact as Zajel's app keeps it: its own identity secret and the peer's public key.
struct Contact {
    secret: [u8; 32],
    peer_public: [u8; 32],
}

impl Contact {
    /// `connection_manager.dart`'s frame: `daily_points` = the 3 daily points,
    /// `hourly_tokens` = the 3 hourly tokens plus the daily points, `dead_drops` = {}.
    fn register_rendezvous(&self, code: &str) -> Value {
        let now = now_ms();
        let own_public = peer_keys::public_key(&self.secret);
        let daily = peer_keys::daily_points(&own_public, &self.peer_public, now);
        let session = peer_keys::session_key(&self.secret, &self.peer_public).unwrap();
        let mut hourly = peer_keys::hourly_tokens(&session, now).to_vec();
        hourly.extend(daily.iter().cloned());
        json!({
            "type": "register_rendezvous",
            "peerId": code,
            "daily_points": daily,
            "hourly_tokens": hourly,
            "dead_drops": {},
        })
    }
}

fn contacts() -> (Contact, Contact) {
    let (a, b) = ([11u8; 32], [22u8; 32]);
    (
        Contact {
            secret: a,
            peer_public: peer_keys::public_key(&b),
        },
        Contact {
            secret: b,
            peer_public: peer_keys::public_key(&a),
        },
    )
}

fn peers(matches: &Value) -> Vec<&str> {
    matches
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["peerId"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn two_contacts_meet_through_their_derived_points_and_the_earlier_one_is_pushed() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let (alice, bob) = contacts();
    let mut a = Client::registered(&url, "ALCE22", 1).await;
    let first = a.request(alice.register_rendezvous("ALCE22")).await;
    assert_eq!(
        first,
        json!({"type": "rendezvous_result", "liveMatches": [], "deadDrops": []})
    );
    // Bob's app, on its own connection and with its own derivation, sends the same points.
    let mut b = Client::registered(&url, "BB2222", 2).await;
    let second = b.request(bob.register_rendezvous("BB2222")).await;
    assert_eq!(second["type"], "rendezvous_result", "{second}");
    // 3 hourly tokens + 3 daily points in hourly_tokens: one live match each, duplicates kept.
    assert_eq!(peers(&second["liveMatches"]), ["ALCE22"; 6]);
    assert!(second["liveMatches"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["relayId"] == ""));
    // No dead drops (the app sends none).
    assert_eq!(second["deadDrops"], json!([]));
    // Alice hears once per matching token.
    for _ in 0..6 {
        assert_eq!(
            a.recv().await,
            json!({"type": "rendezvous_match", "match": {"peerId": "BB2222"}})
        );
    }
    a.expect_quiet().await;
    // A stranger with other keys finds neither.
    let stranger = Contact {
        secret: [33; 32],
        peer_public: peer_keys::public_key(&[44; 32]),
    };
    let mut c = Client::registered(&url, "CC2222", 3).await;
    let reply = c.request(stranger.register_rendezvous("CC2222")).await;
    assert_eq!(reply["liveMatches"], json!([]));
    // The live match leads to a pairing as in the app (the smaller code asks).
    a.send(json!({"type": "pair_request", "targetCode": "BB2222"}))
        .await;
    let incoming = b.recv().await;
    assert_eq!(
        (&incoming["type"], &incoming["fromCode"]),
        (&json!("pair_incoming"), &json!("ALCE22"))
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_pairing_clients_entries_outlive_its_connection() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let (alice, bob) = contacts();
    let mut a = Client::registered(&url, "ALCE22", 1).await;
    a.request(alice.register_rendezvous("ALCE22")).await;
    a.ws.close(None).await.unwrap();
    a.ended().await;
    // Bob, later, still meets Alice's entries (her app will reconnect under a
    // new code and register again; Zajel keeps them until expiry too).
    let mut b = Client::registered(&url, "BB2222", 2).await;
    let reply = b.request(bob.register_rendezvous("BB2222")).await;
    assert_eq!(peers(&reply["liveMatches"]), ["ALCE22"; 6]);
    // Alice's new run registers a new code: she meets Bob's entries, Bob is
    // pushed. Her own stale entries under ALCE22 come back too, as from
    // Zajel's server (different peerIds; the app's pair_request to the old
    // code goes nowhere).
    let mut a2 = Client::registered(&url, "ALCE33", 1).await;
    let reply = a2.request(alice.register_rendezvous("ALCE33")).await;
    assert_eq!(peers(&reply["liveMatches"]), ["ALCE22", "BB2222"].repeat(6));
    for _ in 0..6 {
        assert_eq!(b.recv().await["match"]["peerId"], "ALCE33");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn dead_drops_and_relay_ids_in_zajels_shapes() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let mut a = Client::registered(&url, "ALCE22", 1).await;
    // The dormant reconnection service's camelCase form with a legacy drop.
    let reply = a
        .request(json!({
            "type": "register_rendezvous", "peerId": "ALCE22",
            "dailyPoints": ["day_shared", "day_other"], "hourlyTokens": ["hr_shared"],
            "deadDrop": "sealed-by-alice", "relayId": "relay-alice",
        }))
        .await;
    assert_eq!(reply["type"], "rendezvous_result");
    let mut b = Client::registered(&url, "BB2222", 2).await;
    let reply = b
        .request(json!({
            "type": "register_rendezvous", "peerId": "BB2222",
            "daily_points": ["day_shared"], "hourly_tokens": ["hr_shared"],
            "deadDrops": {"day_shared": "sealed-by-bob"},
        }))
        .await;
    assert_eq!(
        reply,
        json!({
            "type": "rendezvous_result",
            "liveMatches": [{"peerId": "ALCE22", "relayId": "relay-alice"}],
            "deadDrops": [{"peerId": "ALCE22", "deadDrop": "sealed-by-alice", "relayId": "relay-alice"}],
        })
    );
    assert_eq!(
        a.recv().await,
        json!({"type": "rendezvous_match", "match": {"peerId": "BB2222"}})
    );
    // Alice registers again: Bob's drop comes back to her, never pushed.
    let reply = a
        .request(json!({
            "type": "register_rendezvous", "peerId": "ALCE22", "dailyPoints": ["day_shared"],
        }))
        .await;
    assert_eq!(
        reply["deadDrops"],
        json!([{"peerId": "BB2222", "deadDrop": "sealed-by-bob", "relayId": ""}])
    );
    b.expect_quiet().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn hostile_register_rendezvous_gets_clear_errors_and_changes_nothing() {
    let relay = start_in_process(|config| {
        config.rendezvous.max_entries_per_peer = 8;
        config.rendezvous.max_items_per_connection = 20;
    })
    .await;
    let url = in_process_url(&relay);
    let mut victim = Client::registered(&url, "VCTM22", 1).await;
    victim
        .request(
            json!({"type": "register_rendezvous", "peerId": "VCTM22", "hourly_tokens": ["hr_1"]}),
        )
        .await;
    let mut attacker = Client::registered(&url, "ATTK22", 2).await;
    // Writing under another code (Zajel lets anyone; the push would go to the victim).
    assert_eq!(
        attacker
            .error_for(json!({"type": "register_rendezvous", "peerId": "VCTM22", "hourly_tokens": ["hr_1", "hr_2"]}))
            .await,
        "peerId must be this connection's registered pairing code (or its peer-relay peerId)"
    );
    // Before any register.
    let mut anonymous = Client::connect(&url).await;
    assert_eq!(
        anonymous
            .error_for(json!({"type": "register_rendezvous", "peerId": "ANYN22", "hourly_tokens": ["hr_1"]}))
            .await,
        "peerId must be this connection's registered pairing code (or its peer-relay peerId)"
    );
    // Zajel: "Internal server error".
    assert_eq!(
        attacker
            .error_for(json!({"type": "register_rendezvous", "hourly_tokens": ["hr_1"]}))
            .await,
        "Missing required field: peerId"
    );
    let cases = [
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "hourly_tokens": vec!["hr_x"; 513]}),
            "Too many hourly_tokens: at most 512 per message",
        ),
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "dailyPoints": ["d".repeat(65)]}),
            "dailyPoints too long: at most 64 characters per entry",
        ),
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "daily_points": ["day_1"], "deadDrop": "x".repeat(4097)}),
            "deadDrop too long: at most 4096 bytes",
        ),
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "relayId": "r".repeat(129)}),
            "relayId too long: at most 128 characters",
        ),
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "daily_points": {"day_1": 1}}),
            "Invalid message format: daily_points must be an array of strings",
        ),
        (
            json!({"type": "register_rendezvous", "peerId": "ATTK22", "hourly_tokens": (0..9).map(|i| format!("hr_{i}")).collect::<Vec<_>>()}),
            "Too many rendezvous entries for this peerId: at most 8",
        ),
    ];
    for (frame, error) in cases {
        assert_eq!(attacker.error_for(frame).await, error);
    }
    // 9 refused above were not counted; 8 + 8 accepted, then 8 more is over 20 on this connection.
    let eight = |prefix: &str| (0..8).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>();
    let reply = attacker
        .request(json!({"type": "register_rendezvous", "peerId": "ATTK22", "hourly_tokens": eight("hr_a")}))
        .await;
    assert_eq!(reply["type"], "rendezvous_result");
    let reply = attacker
        .request(json!({"type": "register_rendezvous", "peerId": "ATTK22", "hourly_tokens": eight("hr_a")}))
        .await;
    assert_eq!(reply["type"], "rendezvous_result");
    assert_eq!(
        attacker
            .error_for(json!({"type": "register_rendezvous", "peerId": "ATTK22", "hourly_tokens": eight("hr_a")}))
            .await,
        "Too many rendezvous points and tokens on this connection: at most 20"
    );
    // The victim was never pushed anything, and its entry still matches.
    victim.expect_quiet().await;
    let mut friend = Client::registered(&url, "FRND22", 3).await;
    let reply = friend
        .request(
            json!({"type": "register_rendezvous", "peerId": "FRND22", "hourly_tokens": ["hr_1"]}),
        )
        .await;
    assert_eq!(peers(&reply["liveMatches"]), ["VCTM22"]);
    assert_eq!(victim.recv().await["match"]["peerId"], "FRND22");
    relay.shutdown().await;
}

#[tokio::test]
async fn device_linking_paths_behave_as_zajels_server() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let mut mobile = Client::registered(&url, "MBLE22", 1).await;
    let mut web = Client::registered(&url, "WEB222", 2).await;
    let web_key = key(2);
    let mobile_key = key(1);
    // Accepted.
    web.send(json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": web_key, "deviceName": "Firefox on Linux"}))
        .await;
    assert_eq!(
        mobile.recv().await,
        json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": web_key, "deviceName": "Firefox on Linux", "expiresIn": 120000})
    );
    mobile
        .send(json!({"type": "link_response", "linkCode": "MBLE22", "accepted": true, "deviceId": "link_MBLE22"}))
        .await;
    assert_eq!(
        web.recv().await,
        json!({"type": "link_matched", "linkCode": "MBLE22", "peerPublicKey": mobile_key, "isInitiator": true, "deviceId": "link_MBLE22"})
    );
    assert_eq!(
        mobile.recv().await,
        json!({"type": "link_matched", "linkCode": "MBLE22", "peerPublicKey": web_key, "isInitiator": false, "webClientCode": "WEB222", "deviceName": "Firefox on Linux"})
    );
    // Declined (no deviceName: Zajel's default), the mobile hears nothing back.
    web.send(json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": web_key}))
        .await;
    assert_eq!(mobile.recv().await["deviceName"], "Unknown Browser");
    mobile
        .send(json!({"type": "link_response", "linkCode": "MBLE22", "accepted": false}))
        .await;
    assert_eq!(
        web.recv().await,
        json!({"type": "link_rejected", "linkCode": "MBLE22"})
    );
    mobile.expect_quiet().await;
    // Nothing pending now.
    assert_eq!(
        mobile
            .request(json!({"type": "link_response", "linkCode": "MBLE22", "accepted": true}))
            .await,
        json!({"type": "link_error", "error": "No pending link request found"})
    );
    // A code nobody holds.
    assert_eq!(
        web.request(json!({"type": "link_request", "linkCode": "NBDY22", "publicKey": web_key}))
            .await,
        json!({"type": "link_error", "error": "Link request could not be processed"})
    );
    // Answering for another device.
    web.send(json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": web_key}))
        .await;
    assert_eq!(mobile.recv().await["type"], "link_request");
    let mut thief = Client::registered(&url, "THEF22", 3).await;
    assert_eq!(
        thief
            .error_for(json!({"type": "link_response", "linkCode": "MBLE22", "accepted": true}))
            .await,
        "Cannot respond to link request for another device"
    );
    // A newer request replaces the pending one silently; the web client leaving
    // times the mobile out at once.
    let mut web2 = Client::registered(&url, "WEB333", 4).await;
    web2.send(json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": key(4)}))
        .await;
    assert_eq!(mobile.recv().await["publicKey"], key(4));
    drop(web2);
    assert_eq!(
        mobile.recv().await,
        json!({"type": "link_timeout", "linkCode": "MBLE22"})
    );
    // The replaced web client heard nothing.
    web.expect_quiet().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn hostile_link_messages_get_zajels_errors() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let mut anonymous = Client::connect(&url).await;
    for frame in [
        json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": "k"}),
        json!({"type": "link_response", "linkCode": "MBLE22", "accepted": true}),
    ] {
        assert_eq!(
            anonymous.error_for(frame).await,
            "Not registered. Send register message first."
        );
    }
    let mut web = Client::registered(&url, "WEB222", 2).await;
    let cases = [
        (
            json!({"type": "link_request", "publicKey": "k"}),
            "Missing required field: linkCode",
        ),
        (
            json!({"type": "link_request", "linkCode": "MBLE2O", "publicKey": "k"}),
            "Invalid link code format",
        ),
        (
            json!({"type": "link_request", "linkCode": 123456, "publicKey": "k"}),
            "Invalid link code format",
        ),
        (
            json!({"type": "link_request", "linkCode": "MBLE22"}),
            "Missing required field: publicKey",
        ),
        (
            json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": "k", "deviceName": "n".repeat(300)}),
            "deviceName too long: at most 256 characters",
        ),
        (
            json!({"type": "link_response", "linkCode": "x", "accepted": true}),
            "Invalid link code format",
        ),
        (
            json!({"type": "link_response", "linkCode": "WEB222"}),
            "Missing required field: accepted",
        ),
    ];
    let invalid_before = relay
        .metrics()
        .refusal_count(relay_lite::Refusal::InvalidMessage);
    let count = cases.len() as u64;
    for (frame, error) in cases {
        assert_eq!(web.error_for(frame).await, error);
    }
    // Counted like every refused frame.
    assert_eq!(
        relay
            .metrics()
            .refusal_count(relay_lite::Refusal::InvalidMessage)
            - invalid_before,
        count
    );
    assert!(
        relay
            .metrics()
            .refusal_count(relay_lite::Refusal::NotRegistered)
            >= 2
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_link_request_times_out_to_both_sides() {
    let relay =
        start_in_process(|config| config.rendezvous.link_timeout = Duration::from_millis(300))
            .await;
    let url = in_process_url(&relay);
    let mut mobile = Client::registered(&url, "MBLE22", 1).await;
    let mut web = Client::registered(&url, "WEB222", 2).await;
    web.send(json!({"type": "link_request", "linkCode": "MBLE22", "publicKey": key(2)}))
        .await;
    assert_eq!(mobile.recv().await["expiresIn"], 300);
    let timeout = json!({"type": "link_timeout", "linkCode": "MBLE22"});
    assert_eq!(mobile.recv().await, timeout);
    assert_eq!(web.recv().await, timeout);
    // Too late to answer.
    assert_eq!(
        mobile
            .request(json!({"type": "link_response", "linkCode": "MBLE22", "accepted": true}))
            .await["error"],
        "No pending link request found"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn peer_relay_messages_and_keep_alive() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let server_id = relay.server_id().to_string();
    let mut one = Client::connect(&url).await;
    assert_eq!(
        one.request(json!({"type": "register", "peerId": "relay-one", "maxConnections": 20, "publicKey": "pk1"}))
            .await,
        json!({"type": "registered", "peerId": "relay-one", "serverId": server_id, "relays": []})
    );
    let mut two = Client::connect(&url).await;
    assert_eq!(
        two.request(json!({"type": "register", "peerId": "relay-two"}))
            .await,
        json!({"type": "registered", "peerId": "relay-two", "serverId": server_id,
               "relays": [{"peerId": "relay-one", "publicKey": "pk1", "capacity": 0.0}]})
    );
    assert_eq!(
        one.request(json!({"type": "update_load", "peerId": "relay-one", "connectedCount": 5}))
            .await,
        json!({"type": "load_updated", "peerId": "relay-one", "connectedCount": 5})
    );
    assert_eq!(
        two.request(json!({"type": "get_relays", "peerId": "relay-two", "count": 5}))
            .await,
        json!({"type": "relays", "relays": [{"peerId": "relay-one", "publicKey": "pk1", "capacity": 0.25}]})
    );
    // At half capacity it is no longer listed.
    one.request(json!({"type": "update_load", "peerId": "relay-one", "connectedCount": 10}))
        .await;
    assert_eq!(
        two.request(json!({"type": "get_relays", "peerId": "relay-two"}))
            .await,
        json!({"type": "relays", "relays": []})
    );
    let ack = one
        .request(json!({"type": "heartbeat", "peerId": "relay-one"}))
        .await;
    assert_eq!(ack["type"], "heartbeat_ack");
    let timestamp = ack["timestamp"].as_u64().unwrap() as i64;
    assert!((timestamp - now_ms()).abs() < 60_000, "{ack}");
    // The app's relay_client.dart update_load: echoed, nothing stored.
    let mut app = Client::registered(&url, "APPP22", 5).await;
    assert_eq!(
        app.request(
            json!({"type": "update_load", "sourceId": "x", "connectedCount": 3, "maxCapacity": 20})
        )
        .await,
        json!({"type": "load_updated", "connectedCount": 3})
    );
    // Hostile: another connection cannot take a live peerId, nor a pairing code in use.
    let mut squatter = Client::connect(&url).await;
    assert_eq!(
        squatter
            .error_for(json!({"type": "register", "peerId": "relay-one"}))
            .await,
        "peerId is registered by another connection"
    );
    assert_eq!(
        squatter
            .error_for(json!({"type": "register", "peerId": "APPP22"}))
            .await,
        "peerId is registered by another connection"
    );
    let cases = [
        (
            json!({"type": "register"}),
            "Missing required field: peerId",
        ),
        (
            json!({"type": "register", "peer_id": "relay-x"}),
            "Missing required field: peerId",
        ),
        (
            json!({"type": "register", "peerId": "r".repeat(129)}),
            "peerId too long: at most 128 characters",
        ),
        (
            json!({"type": "register", "peerId": "r", "maxConnections": "many"}),
            "Invalid message format: maxConnections must be a non-negative integer",
        ),
        (
            json!({"type": "update_load", "peerId": "relay-one", "connectedCount": -5}),
            "Invalid message format: connectedCount must be a non-negative integer",
        ),
        (
            json!({"type": "get_relays", "count": 1.5}),
            "Invalid message format: count must be a non-negative integer",
        ),
        (
            json!({"type": "heartbeat", "peerId": ["relay-one"]}),
            "Invalid message format: peerId must be a string",
        ),
    ];
    for (frame, error) in cases {
        assert_eq!(squatter.error_for(frame).await, error);
    }
    // A squatter's update for relay-one is echoed but not stored.
    squatter
        .request(json!({"type": "update_load", "peerId": "relay-one", "connectedCount": 0}))
        .await;
    assert_eq!(
        two.request(json!({"type": "get_relays"})).await["relays"],
        json!([{"peerId": "relay-two", "publicKey": null, "capacity": 0.0}])
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_relay_is_closed_and_its_rendezvous_entries_go_with_it() {
    let relay = start_in_process(|config| {
        config.rendezvous.peer_relay_timeout = Duration::from_millis(300);
        config.rendezvous.cleanup_interval = Duration::from_millis(100);
    })
    .await;
    let url = in_process_url(&relay);
    let mut peer = Client::connect(&url).await;
    assert_eq!(
        peer.request(json!({"type": "register", "peerId": "relay-one"}))
            .await["type"],
        "registered"
    );
    // A peer relay writes rendezvous entries under its peerId.
    assert_eq!(
        peer.request(
            json!({"type": "register_rendezvous", "peerId": "relay-one", "hourly_tokens": ["hr_1"]})
        )
        .await["type"],
        "rendezvous_result"
    );
    // `ping` does not count as a heartbeat: silence for the timeout closes it.
    peer.send(json!({"type": "ping"})).await;
    let started = std::time::Instant::now();
    let mut close = None;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut peer.ws),
        )
        .await
        .expect("closed in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
                close = Some((u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            _ => break,
        }
    }
    assert_eq!(close, Some((1000, "Heartbeat timeout".to_string())));
    assert!(started.elapsed() >= Duration::from_millis(200));
    // Its entries are gone: a later registrant of the token finds nobody.
    let mut other = Client::registered(&url, "THER22", 2).await;
    let reply = other
        .request(
            json!({"type": "register_rendezvous", "peerId": "THER22", "hourly_tokens": ["hr_1"]}),
        )
        .await;
    assert_eq!(reply["liveMatches"], json!([]));
    // A peer relay that heartbeats stays.
    let mut alive = Client::connect(&url).await;
    alive
        .request(json!({"type": "register", "peerId": "relay-two"}))
        .await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            alive
                .request(json!({"type": "heartbeat", "peerId": "relay-two"}))
                .await["type"],
            "heartbeat_ack"
        );
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_killed_and_restarted_relay_keeps_its_rendezvous_entries() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap().to_string();
    let first = RelayProcess::start(&["--state-dir", &dir]);
    let (alice, bob) = contacts();
    let mut a = Client::registered(&first.url(), "ALCE22", 1).await;
    let reply = a.request(alice.register_rendezvous("ALCE22")).await;
    assert_eq!(reply["type"], "rendezvous_result");
    // Killed outright (no shutdown): every answered registration is on disk.
    first.process.signal(libc::SIGKILL);
    assert_eq!(a.ended().await, Ended::Dropped);
    drop(first);
    assert!(state.path().join("rendezvous.sqlite3").exists());
    let second = RelayProcess::start(&["--state-dir", &dir]);
    let mut b = Client::registered(&second.url(), "BB2222", 2).await;
    let reply = b.request(bob.register_rendezvous("BB2222")).await;
    // Alice's entries survived: 6 live matches (her connection is gone, so no push).
    assert_eq!(peers(&reply["liveMatches"]), ["ALCE22"; 6], "{reply}");
    // Without a state directory, a restart forgets.
    let memory = RelayProcess::start(&[]);
    let mut c = Client::registered(&memory.url(), "CC2222", 3).await;
    let reply = c.request(bob.register_rendezvous("CC2222")).await;
    assert_eq!(reply["liveMatches"], json!([]));
}

#[test]
fn an_unusable_rendezvous_database_stops_the_relay_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("rendezvous.sqlite3");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_relay-lite"))
        .args(["--listen", "127.0.0.1:0", "--rendezvous-db"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "relay-lite: cannot open the rendezvous database {}",
            missing.display()
        )),
        "{stderr}"
    );
    // --state-dir creates its directory, and the database is private.
    let state = dir.path().join("state");
    let relay = RelayProcess::start(&["--state-dir", state.to_str().unwrap()]);
    let database = state.join("rendezvous.sqlite3");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&database).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(relay);
}
