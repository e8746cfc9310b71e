//! relay-lite speaks Zajel's signaling protocol (reference §2): every
//! message row, every error text, every limit, hostile frames, the web
//! client's flat call form, the ice_servers extension, and shutdown.
//! Each test runs the `relay-lite` binary on loopback (cargo builds it for this suite).

mod common;

use std::time::Duration;

use common::relay::{key, Client, Ended, RelayProcess, WAIT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const CALL_ID: &str = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b";

#[tokio::test]
async fn greeting_registration_collisions_and_cleanup() {
    let relay = RelayProcess::start(&["--region", "eu-test"]);
    let mut a = Client::connect(&relay.url()).await;
    assert_eq!(
        a.server_info,
        json!({"type": "server_info", "serverId": relay.server_id, "endpoint": relay.url(), "region": "eu-test"})
    );
    assert!(relay.server_id.starts_with("ed25519:"));
    // Field order is Zajel's.
    let reply = {
        a.send(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}))
            .await;
        a.recv_text().await
    };
    assert_eq!(
        reply,
        format!(
            r#"{{"type":"registered","pairingCode":"ABC234","serverId":"{}"}}"#,
            relay.server_id
        )
    );
    // Registering the same code again on the same connection is fine.
    let again = a
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}))
        .await;
    assert_eq!(again["type"], "registered");

    let mut b = Client::connect(&relay.url()).await;
    let collision = b
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(2)}))
        .await;
    assert_eq!(
        collision,
        json!({"type": "code_collision", "message": "Pairing code already in use. Please reconnect with a new code."})
    );
    // B is still unregistered.
    assert_eq!(
        b.error_for(json!({"type": "offer", "target": "ABC234", "payload": {}}))
            .await,
        "Not registered. Send register message first."
    );
    // A moves to a new code: the old one is free again.
    let moved = a
        .request(json!({"type": "register", "pairingCode": "MVED22", "publicKey": key(1)}))
        .await;
    assert_eq!(moved["pairingCode"], "MVED22");
    let taken = b
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(2)}))
        .await;
    assert_eq!(taken["type"], "registered");
    // When A closes, MVED22 is released from its connection, but stays held
    // for A's key for the grace period (relay-lite's rule; Zajel frees it).
    a.ws.close(None).await.unwrap();
    // The relay echoes the (code-less) close.
    assert_eq!(a.ended().await, Ended::Close(1005));
    let mut c = Client::connect(&relay.url()).await;
    let mut released = false;
    for _ in 0..50 {
        if relay.metric("relay_registered_codes").await == 1.0 {
            released = true;
            break;
        }
        // The relay notices A's close asynchronously; look again shortly.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        released,
        "MVED22 was not released after its connection closed"
    );
    let held = c
        .request(json!({"type": "register", "pairingCode": "MVED22", "publicKey": key(3)}))
        .await;
    assert_eq!(held["type"], "code_collision");
    let back = c
        .request(json!({"type": "register", "pairingCode": "MVED22", "publicKey": key(1)}))
        .await;
    assert_eq!(back["type"], "registered");
    assert_eq!(relay.metric("relay_registered_codes").await, 2.0);
}

#[tokio::test]
async fn every_error_text() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::connect(&relay.url()).await;
    let parse_error = "Invalid message format: JSON parse error";
    for text in [
        "{",
        "[]",
        "42",
        "\"ping\"",
        r#"{"type":7}"#,
        r#"{"notype":1}"#,
    ] {
        client.send_text(text.into()).await;
        let reply = client.recv().await;
        assert_eq!(
            reply,
            json!({"type": "error", "message": parse_error}),
            "{text}"
        );
    }
    assert_eq!(
        client.error_for(json!({"type": "nope"})).await,
        "Unknown message type: nope"
    );
    for forwarded in [
        json!({"type": "pair_request", "targetCode": "ABC234"}),
        json!({"type": "pair_response", "targetCode": "ABC234", "accepted": true}),
        json!({"type": "offer", "target": "ABC234", "payload": {}}),
        json!({"type": "answer", "target": "ABC234", "payload": {}}),
        json!({"type": "ice_candidate", "target": "ABC234", "payload": {}}),
        json!({"type": "call_offer", "target": "ABC234", "payload": {}}),
        json!({"type": "call_answer", "target": "ABC234", "payload": {}}),
        json!({"type": "call_reject", "target": "ABC234", "payload": {}}),
        json!({"type": "call_hangup", "target": "ABC234", "payload": {}}),
        json!({"type": "call_ice", "targetId": "ABC234", "callId": CALL_ID}),
    ] {
        assert_eq!(
            client.error_for(forwarded.clone()).await,
            "Not registered. Send register message first.",
            "{forwarded}"
        );
    }
    assert_eq!(
        client
            .error_for(json!({"type": "register", "pairingCode": "abc234", "publicKey": key(1)}))
            .await,
        "Invalid pairing code format"
    );
    assert_eq!(
        client
            .error_for(json!({"type": "register", "pairingCode": "ABC10O", "publicKey": key(1)}))
            .await,
        "Invalid pairing code format"
    );
    assert_eq!(
        client
            .error_for(json!({"type": "register", "pairingCode": "ABC234", "publicKey": "AAAA"}))
            .await,
        "Invalid public key format"
    );
    assert_eq!(
        client
            .error_for(json!({"type": "register", "pairingCode": "ABC234"}))
            .await,
        "Invalid message format: missing field publicKey"
    );
    client
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}))
        .await;
    assert_eq!(
        client
            .error_for(json!({"type": "offer", "target": "ZZZ999", "payload": {}}))
            .await,
        "Peer not found: ZZZ999"
    );
    assert_eq!(
        client
            .error_for(json!({"type": "offer", "target": "bad", "payload": {}}))
            .await,
        "Invalid target code format"
    );
    assert_eq!(
        client
            .error_for(json!({"type": "offer", "target": "ZZZ999", "payload": "x"}))
            .await,
        "Invalid message format: payload must be an object"
    );
    let sdp_error =
        "Invalid call payload: sdp must be a non-empty string of at most 65536 characters";
    let call_errors = [
        (
            json!({"type": "call_offer", "target": "ZZZ999", "payload": {"callId": "nope", "sdp": "v=0", "withVideo": false}}),
            "Invalid call payload: callId must be a UUID v4",
        ),
        (
            json!({"type": "call_offer", "target": "ZZZ999", "payload": {"callId": CALL_ID, "sdp": "v=0", "withVideo": "yes"}}),
            "Invalid call payload: withVideo must be a boolean",
        ),
        (
            json!({"type": "call_answer", "target": "ZZZ999", "payload": {"callId": CALL_ID, "sdp": ""}}),
            sdp_error,
        ),
        (
            json!({"type": "call_answer", "target": "ZZZ999", "payload": {"callId": CALL_ID, "sdp": 7}}),
            sdp_error,
        ),
        (
            json!({"type": "call_ice", "target": "ZZZ999", "payload": {"callId": CALL_ID, "candidate": "c".repeat(1_025)}}),
            "Invalid call payload: candidate must be a non-empty string of at most 1024 characters",
        ),
        (
            json!({"type": "call_reject", "target": "ZZZ999", "payload": {"callId": CALL_ID, "reason": "bored"}}),
            "Invalid call payload: reason must be busy, declined or timeout",
        ),
        (
            json!({"type": "call_hangup", "targetId": "ZZZ999", "callId": "x"}),
            "Invalid call payload: callId must be a UUID v4",
        ),
    ];
    for (frame, expected) in call_errors {
        // Refused before any forward attempt (the target is absent, yet no Peer not found).
        let text = frame.to_string();
        assert_eq!(client.error_for(frame).await, expected, "{text}");
    }
    // A valid call message to an absent peer: Peer not found.
    assert_eq!(
        client
            .error_for(
                json!({"type": "call_hangup", "target": "ZZZ999", "payload": {"callId": CALL_ID}})
            )
            .await,
        "Peer not found: ZZZ999"
    );
    client.expect_quiet().await;
    assert!(
        relay
            .metric("relay_refusals_total{reason=\"invalid_message\"}")
            .await
            >= 10.0
    );
    assert_eq!(
        relay
            .metric("relay_refusals_total{reason=\"not_registered\"}")
            .await,
        10.0
    );
}

#[tokio::test]
async fn pairing_accept_reject_and_errors_without_enumeration() {
    // Every requester below connects from 127.0.0.1: lift the per-address
    // share so the per-target cap of 10 is what is tested.
    let relay = RelayProcess::start(&["--max-pending-per-target-per-ip", "10"]);
    let url = relay.url();
    let mut alice = Client::registered(&url, "ALEXA2", 1).await;
    let mut bob = Client::registered(&url, "BBBBB2", 2).await;

    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2", "proposedName": "Alice"}))
        .await;
    assert_eq!(
        bob.recv_text().await,
        format!(
            r#"{{"type":"pair_incoming","fromCode":"ALEXA2","fromPublicKey":"{}","expiresIn":120000,"proposedName":"Alice"}}"#,
            key(1)
        )
    );
    let matched = bob
        .request(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": true}))
        .await;
    assert_eq!(
        matched,
        json!({"type": "pair_matched", "peerCode": "ALEXA2", "peerPublicKey": key(1), "isInitiator": false})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "pair_matched", "peerCode": "BBBBB2", "peerPublicKey": key(2), "isInitiator": true})
    );
    // The request is gone once answered.
    assert_eq!(
        bob.request(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": true}))
            .await,
        json!({"type": "pair_error", "error": "No pending request from this peer"})
    );

    // Declined: pair_rejected to the requester, nothing to the responder.
    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2", "proposedName": ""}))
        .await;
    let incoming = bob.recv().await;
    assert_eq!(incoming["type"], "pair_incoming");
    assert!(incoming.get("proposedName").is_none(), "{incoming}");
    bob.send(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": false}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "pair_rejected", "peerCode": "BBBBB2"})
    );
    bob.expect_quiet().await;

    // Unknown and self targets get no answer, like a live target that does
    // not answer (relay-lite's rule; Zajel answers them with an immediate
    // generic pair_error, which tells them apart from live ones).
    for target in ["ZZZZZ9", "ALEXA2"] {
        alice
            .send(json!({"type": "pair_request", "targetCode": target}))
            .await;
        alice.expect_quiet().await;
    }

    // At most 10 pending per target: the 11th requester gets the same (no) answer.
    let mut requesters = Vec::new();
    for i in 0..11u8 {
        let letter = "ABCDEFGHJKL".as_bytes()[usize::from(i)] as char;
        let code = format!("REQ{letter}{letter}2");
        let mut client = Client::registered(&url, &code, 10 + i).await;
        client
            .send(json!({"type": "pair_request", "targetCode": "BBBBB2"}))
            .await;
        requesters.push((code, client));
    }
    for _ in 0..10 {
        assert_eq!(bob.recv().await["type"], "pair_incoming");
    }
    let (_, last) = requesters.last_mut().unwrap();
    last.expect_quiet().await;
    bob.expect_quiet().await;

    // A requester that disconnects takes its request with it.
    let (first_code, first) = requesters.remove(0);
    drop(first);
    let mut closed = false;
    for _ in 0..200 {
        if relay.metric("relay_websocket_sessions").await == 12.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the relay did not notice the requester leave");
    assert_eq!(
        bob.request(json!({"type": "pair_response", "targetCode": first_code, "accepted": true}))
            .await,
        json!({"type": "pair_error", "error": "No pending request from this peer"})
    );
    assert_eq!(relay.metric("relay_pairs_matched_total").await, 1.0);
}

#[tokio::test]
async fn pair_requests_warn_then_time_out() {
    let relay = RelayProcess::start(&["--pair-timeout-ms", "1500", "--pair-warning-ms", "1000"]);
    let url = relay.url();
    let mut alice = Client::registered(&url, "ALEXA2", 1).await;
    let mut bob = Client::registered(&url, "BBBBB2", 2).await;
    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2"}))
        .await;
    let incoming = bob.recv().await;
    assert_eq!(incoming["expiresIn"], 1500);
    assert_eq!(
        bob.recv().await,
        json!({"type": "pair_expiring", "peerCode": "ALEXA2", "remainingSeconds": 1})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "pair_expiring", "peerCode": "BBBBB2", "remainingSeconds": 1})
    );
    assert_eq!(
        alice.recv().await,
        json!({"type": "pair_timeout", "peerCode": "BBBBB2"})
    );
    assert_eq!(
        bob.request(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": true}))
            .await,
        json!({"type": "pair_error", "error": "No pending request from this peer"})
    );
    // A repeated request replaces the earlier one: one pair_incoming each, one timeout.
    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2"}))
        .await;
    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2"}))
        .await;
    assert_eq!(bob.recv().await["type"], "pair_incoming");
    assert_eq!(bob.recv().await["type"], "pair_incoming");
    assert_eq!(alice.recv().await["type"], "pair_expiring");
    assert_eq!(alice.recv().await["type"], "pair_timeout");
    alice.expect_quiet().await;
}

#[tokio::test]
async fn forwarding_envelope_and_flat_call_forms() {
    let relay = RelayProcess::start(&[]);
    let url = relay.url();
    let mut alice = Client::registered(&url, "ALEXA2", 1).await;
    let mut bob = Client::registered(&url, "BBBBB2", 2).await;

    for kind in ["offer", "answer", "ice_candidate"] {
        alice
            .send(json!({"type": kind, "target": "BBBBB2", "payload": {"sdp": "v=0", "n": [1, {"x": null}]}}))
            .await;
        assert_eq!(
            bob.recv_text().await,
            format!(
                r#"{{"type":"{kind}","from":"ALEXA2","payload":{{"n":[1,{{"x":null}}],"sdp":"v=0"}}}}"#
            )
        );
    }

    let candidate = r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
    let payloads = [
        (
            "call_offer",
            json!({"callId": CALL_ID, "sdp": "v=0\r\n", "withVideo": false}),
        ),
        ("call_answer", json!({"callId": CALL_ID, "sdp": "v=0\r\n"})),
        ("call_reject", json!({"callId": CALL_ID, "reason": "busy"})),
        ("call_hangup", json!({"callId": CALL_ID})),
        (
            "call_ice",
            json!({"callId": CALL_ID, "candidate": candidate}),
        ),
    ];
    for (kind, payload) in &payloads {
        // Envelope in (Flutter app / headless client).
        alice
            .send(json!({"type": kind, "target": "BBBBB2", "payload": payload}))
            .await;
        let delivered = bob.recv().await;
        let mut expected = json!({"type": kind, "from": "ALEXA2", "payload": payload});
        for (field, value) in payload.as_object().unwrap() {
            expected[field] = value.clone();
        }
        assert_eq!(delivered, expected, "{kind}");
        // Flat in (web client): the same delivery.
        let mut flat = payload.clone();
        flat["type"] = json!(kind);
        flat["targetId"] = json!("ALEXA2");
        bob.send(flat).await;
        let mut expected = json!({"type": kind, "from": "BBBBB2", "payload": payload});
        for (field, value) in payload.as_object().unwrap() {
            expected[field] = value.clone();
        }
        assert_eq!(alice.recv().await, expected, "flat {kind}");
    }
    // Envelope readers see the envelope first.
    alice
        .send(json!({"type": "call_hangup", "target": "BBBBB2", "payload": {"callId": CALL_ID}}))
        .await;
    assert!(bob.recv_text().await.starts_with(&format!(
        r#"{{"type":"call_hangup","from":"ALEXA2","payload":{{"callId":"{CALL_ID}"}}"#
    )));

    assert_eq!(
        alice.request(json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
    assert_eq!(
        relay
            .metric("relay_messages_forwarded_total{type=\"call_hangup\"}")
            .await,
        3.0
    );
    assert_eq!(
        relay
            .metric("relay_messages_forwarded_total{type=\"offer\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn message_and_pair_request_rate_limits() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::registered(&relay.url(), "ALEXA2", 1).await;
    // register counted 1; 99 more pass, then every frame is refused.
    for _ in 0..99 {
        client.send(json!({"type": "ping"})).await;
    }
    for _ in 0..99 {
        assert_eq!(client.recv().await, json!({"type": "pong"}));
    }
    for _ in 0..3 {
        assert_eq!(
            client.request(json!({"type": "ping"})).await,
            json!({"type": "error", "message": "Rate limit exceeded. Please slow down."})
        );
    }
    assert_eq!(
        relay
            .metric("relay_refusals_total{reason=\"rate_limit\"}")
            .await,
        3.0
    );

    let mut pairer = Client::registered(&relay.url(), "BBBBB2", 2).await;
    for _ in 0..10 {
        // An unknown target: no answer (see the pairing test).
        pairer
            .send(json!({"type": "pair_request", "targetCode": "ZZZZZ9"}))
            .await;
    }
    pairer.expect_quiet().await;
    assert_eq!(
        pairer
            .error_for(json!({"type": "pair_request", "targetCode": "ZZZZZ9"}))
            .await,
        "Too many pair requests. Please slow down."
    );
    pairer.expect_quiet().await;
}

#[tokio::test]
async fn frames_over_64_kib_close_with_1009() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::connect(&relay.url()).await;
    // Exactly 65,536 bytes is accepted.
    let mut frame = r#"{"type":"ping","pad":""}"#.to_string();
    let pad = 65_536 - frame.len();
    frame.insert_str(frame.len() - 2, &"x".repeat(pad));
    assert_eq!(frame.len(), 65_536);
    client.send_text(frame).await;
    assert_eq!(client.recv().await, json!({"type": "pong"}));
    // One byte more closes the connection with 1009.
    let mut frame = r#"{"type":"ping","pad":""}"#.to_string();
    frame.insert_str(frame.len() - 2, &"x".repeat(pad + 1));
    client.send_text(frame).await;
    assert_eq!(client.ended().await, Ended::Close(1009));
    assert_eq!(
        relay
            .metric("relay_refusals_total{reason=\"frame_too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn hostile_frames() {
    let relay = RelayProcess::start(&[]);
    let mut client = Client::connect(&relay.url()).await;
    // Binary frames are read as text (Zajel's server does the same).
    client
        .ws
        .send(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(client.recv().await, json!({"type": "pong"}));
    // Binary frames that are not UTF-8 are unparsable.
    client
        .ws
        .send(Message::binary(vec![0xff, 0xfe, b'{']))
        .await
        .unwrap();
    assert_eq!(
        client.recv().await,
        json!({"type": "error", "message": "Invalid message format: JSON parse error"})
    );
    // Deeply nested JSON is refused without harm.
    let nested = format!(
        r#"{{"type":"ping","x":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    client.send_text(nested).await;
    assert_eq!(
        client.recv().await,
        json!({"type": "error", "message": "Invalid message format: JSON parse error"})
    );
    client.expect_quiet().await;

    // A text frame that is not UTF-8 closes with 1007 (raw frame, since the
    // client library refuses to send one).
    let mut raw = raw_websocket(relay.addr).await;
    let _greeting = read_raw_frame(&mut raw).await;
    raw.write_all(&masked_frame(0x1, &[0xc3, 0x28]))
        .await
        .unwrap();
    let (opcode, payload) = read_raw_frame(&mut raw).await;
    assert_eq!(opcode, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
}

#[tokio::test]
async fn ten_thousand_unknown_types_are_answered_then_rate_limited() {
    let relay = RelayProcess::start(&[]);
    let client = Client::connect(&relay.url()).await;
    let (mut sink, mut stream) = futures_util::StreamExt::split(client.ws);
    let reader = tokio::spawn(async move {
        let (mut unknown, mut limited) = (0, 0);
        while unknown + limited < 10_000 {
            let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
                .await
                .expect("replies keep coming")
                .expect("open")
                .expect("frame");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            match reply["message"].as_str().unwrap() {
                "Unknown message type: t0" => unknown += 1,
                "Rate limit exceeded. Please slow down." => limited += 1,
                other => panic!("unexpected {other}"),
            }
        }
        (unknown, limited)
    });
    for _ in 0..10_000 {
        sink.feed(Message::text(r#"{"type":"t0"}"#)).await.unwrap();
    }
    sink.flush().await.unwrap();
    assert_eq!(reader.await.unwrap(), (100, 9_900));
    assert_eq!(relay.metric("relay_websocket_sessions").await, 1.0);
}

#[tokio::test]
async fn half_open_and_idle_connections_are_dropped() {
    let relay =
        RelayProcess::start(&["--handshake-timeout-ms", "500", "--idle-timeout-ms", "1000"]);
    // TCP open, nothing sent: closed after the handshake timeout.
    let mut silent = TcpStream::connect(relay.addr).await.unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // Half a request head: the same.
    let mut partial = TcpStream::connect(relay.addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let read = tokio::time::timeout(WAIT, partial.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // A WebSocket that sends nothing: closed by the relay after the idle timeout.
    let mut idle = Client::connect(&relay.url()).await;
    assert_eq!(idle.ended().await, Ended::Close(1000));
    // A WebSocket half-open at the TCP level (never reads, never writes) goes too.
    let mut raw = raw_websocket(relay.addr).await;
    let _ = read_raw_frame(&mut raw).await;
    let (opcode, payload) = read_raw_frame(&mut raw).await;
    assert_eq!(
        (opcode, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1000)
    );
    assert!(
        relay
            .metric("relay_refusals_total{reason=\"idle_timeout\"}")
            .await
            >= 2.0
    );
    assert!(
        relay
            .metric("relay_refusals_total{reason=\"handshake\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_peer_that_never_reads_is_disconnected() {
    let relay = RelayProcess::start(&[
        "--rate-limit-messages",
        "100000",
        "--outbound-queue-bytes",
        "262144",
    ]);
    let url = relay.url();
    let mut sender = Client::registered(&url, "ALEXA2", 1).await;
    // The sluggard registers over a raw socket with a small receive buffer and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut sluggard = socket.connect(relay.addr).await.unwrap();
    raw_handshake(&mut sluggard).await;
    let register = json!({"type": "register", "pairingCode": "SLWW22", "publicKey": key(2)});
    sluggard
        .write_all(&masked_frame(0x1, register.to_string().as_bytes()))
        .await
        .unwrap();
    // Wait for the registration to be visible.
    let mut registered = false;
    for _ in 0..100 {
        if relay.metric("relay_registered_codes").await == 2.0 {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registered);
    let payload = json!({"blob": "x".repeat(60_000)});
    let mut outcome = None;
    for sent in 0..2_000 {
        sender
            .send(json!({"type": "offer", "target": "SLWW22", "payload": payload}))
            .await;
        if sent % 10 == 9 {
            let reply = sender.request(json!({"type": "ping"})).await;
            if reply["type"] == "error" {
                outcome = Some(reply["message"].as_str().unwrap().to_string());
                break;
            }
        }
    }
    let message = outcome.expect("the relay kept queueing for a peer that never reads");
    assert!(
        message == "Peer not found: SLWW22" || message == "Failed to forward offer to SLWW22",
        "{message}"
    );
    // The rest of that batch is refused the same way, then the pong arrives.
    loop {
        let reply = sender.recv().await;
        if reply == json!({"type": "pong"}) {
            break;
        }
        let text = reply["message"].as_str().unwrap();
        assert!(
            text == "Peer not found: SLWW22" || text == "Failed to forward offer to SLWW22",
            "{reply}"
        );
    }
    assert_eq!(
        relay
            .metric("relay_refusals_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    sender.expect_quiet().await;
}

#[tokio::test]
async fn connection_caps_refuse_with_503_and_429() {
    let relay = RelayProcess::start(&["--max-connections", "2"]);
    let _a = Client::connect(&relay.url()).await;
    let _b = Client::connect(&relay.url()).await;
    let (status, body) = relay.get("/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(common::relay::http_get(relay.addr, "/x").await.0, 503);
    drop(_a);
    let mut freed = false;
    for _ in 0..100 {
        if relay.get("/health").await.0 == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed connection did not free its slot");

    let per_ip = RelayProcess::start(&["--max-connections-per-ip", "2"]);
    let _c = Client::connect(&per_ip.url()).await;
    let _d = Client::connect(&per_ip.url()).await;
    assert_eq!(per_ip.get("/health").await.0, 429);
    drop(_c);
    drop(_d);
    let mut counted = 0.0;
    // Every refused attempt counts, including ones made before the relay saw the closes.
    let mut refused = 1.0;
    for _ in 0..100 {
        let (status, body) = per_ip.get("/metrics").await;
        if status == 429 {
            refused += 1.0;
        }
        if status == 200 {
            counted = body
                .lines()
                .find_map(|l| l.strip_prefix("relay_refusals_total{reason=\"address_limit\"} "))
                .unwrap()
                .parse()
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, refused);
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let relay = RelayProcess::start(&[]);
    let _client = Client::registered(&relay.url(), "ALEXA2", 1).await;
    let (status, body) = relay.get("/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["serverId"], relay.server_id);
    assert_eq!(health["connections"], 1);
    assert_eq!(health["registeredCodes"], 1);
    let (status, body) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "relay_connections ",
        "relay_registered_codes 1",
        "relay_messages_forwarded_total{type=\"call_offer\"} 0",
        "relay_refusals_total{reason=\"rate_limit\"} 0",
        "relay_turn_allocations 0",
        "relay_turn_allocations_total 0",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    assert_eq!(relay.get("/nope").await.0, 404);
}

/// Checks one `ice_servers` frame: the configured URLs, a credential for
/// `ttl` seconds from now that the secret verifies and that does not name
/// the pairing code. Returns its username.
fn checked_ice_servers(ice: &Value, ttl: u64) -> String {
    assert_eq!(ice["type"], "ice_servers", "{ice}");
    assert_eq!(ice["ttl"], ttl);
    assert_eq!(
        ice["iceServers"][0],
        json!({"urls": ["stun:127.0.0.1:3478"]})
    );
    let turn = &ice["iceServers"][1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:127.0.0.1:3478?transport=udp",
            "turns:127.0.0.1:5349?transport=tcp"
        ])
    );
    let username = turn["username"].as_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = username.split_once(':').unwrap().0.parse().unwrap();
    assert!(expiry + 2 >= now + ttl && expiry <= now + ttl, "{username}");
    assert!(
        !username.contains("ALEXA2") && !username.contains("BBBBB2"),
        "the username must not reveal the code"
    );
    assert_eq!(
        turn["credential"].as_str().unwrap(),
        relay_lite::credentials::check_username(b"t0p-s3cret", username, now).unwrap()
    );
    username.to_string()
}

/// Issue 19: anyone may register, so credentials (which let their holder
/// allocate on the TURN server) come only once the connection is paired,
/// stay short-lived, are renewed while it lives and never after it closes.
#[tokio::test]
async fn ice_servers_only_once_paired_and_renewed_only_while_connected() {
    const TTL: u64 = 2; // renewed every 1.5 s
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn.secret");
    std::fs::write(&secret, "t0p-s3cret\n").unwrap();
    let relay = RelayProcess::start(&[
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-url",
        "turns:127.0.0.1:5349?transport=tcp",
        "--stun-url",
        "stun:127.0.0.1:3478",
        "--turn-secret-file",
        secret.to_str().unwrap(),
        "--turn-ttl",
        &TTL.to_string(),
        // Only to clients that ask: the rule for those that never do is below.
        "--ice-servers-unasked",
        "false",
    ]);
    let mut alice = Client::connect(&relay.url()).await;
    // Unregistered clients get nothing: a bad register asking for it is just an error.
    assert_eq!(
        alice
            .error_for(json!({"type": "register", "pairingCode": "bad", "publicKey": key(1), "iceServers": true}))
            .await,
        "Invalid pairing code format"
    );
    alice.expect_quiet().await;
    // Registered and asking, not paired: still nothing (the pong comes next).
    let registered = alice
        .request(json!({"type": "register", "pairingCode": "ALEXA2", "publicKey": key(1), "iceServers": true}))
        .await;
    assert_eq!(registered["type"], "registered");
    alice.expect_quiet().await;
    let mut bob = Client::connect(&relay.url()).await;
    let registered = bob
        .request(json!({"type": "register", "pairingCode": "BBBBB2", "publicKey": key(2), "iceServers": true}))
        .await;
    assert_eq!(registered["type"], "registered");
    bob.expect_quiet().await;
    assert_eq!(
        relay.metric("relay_ice_credentials_issued_total").await,
        0.0
    );

    // Paired: the responder gets its credential just before pair_matched...
    alice
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2", "proposedName": "Alice"}))
        .await;
    assert_eq!(bob.recv().await["type"], "pair_incoming");
    let bob_ice = bob
        .request(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": true}))
        .await;
    let bob_username = checked_ice_servers(&bob_ice, TTL);
    assert_eq!(bob.recv().await["type"], "pair_matched");
    // ...the requester just after, before the pong of a ping sent after pair_matched.
    assert_eq!(alice.recv().await["type"], "pair_matched");
    let alice_ice = alice.request(json!({"type": "ping"})).await;
    let alice_username = checked_ice_servers(&alice_ice, TTL);
    assert_eq!(alice.recv().await, json!({"type": "pong"}));
    assert_ne!(alice_username, bob_username);

    // A registered client that did not ask gets none, paired or not.
    let mut plain = Client::connect(&relay.url()).await;
    assert_eq!(
        plain
            .request(json!({"type": "register", "pairingCode": "CCCCC2", "publicKey": key(3)}))
            .await["type"],
        "registered"
    );
    plain
        .send(json!({"type": "pair_request", "targetCode": "BBBBB2", "proposedName": "C"}))
        .await;
    assert_eq!(bob.recv().await["type"], "pair_incoming");
    assert_eq!(
        bob.request(json!({"type": "pair_response", "targetCode": "CCCCC2", "accepted": true}))
            .await["type"],
        "pair_matched",
        "no second credential for a second pairing"
    );
    assert_eq!(plain.recv().await["type"], "pair_matched");
    plain.expect_quiet().await;

    // Bob leaves; Alice stays and gets a fresh credential before hers
    // expires, twice. By the second, Bob's renewal would have been due once.
    drop(bob);
    let renewed = alice.recv().await;
    let renewed_username = checked_ice_servers(&renewed, TTL);
    assert_ne!(renewed_username, alice_username);
    let again = alice.recv().await;
    checked_ice_servers(&again, TTL);
    assert_eq!(
        relay.metric("relay_ice_credentials_issued_total").await,
        4.0,
        "Alice 3, Bob 1: none after Bob closed"
    );
    // The secret never reaches the logs.
    assert!(!relay.process.output().contains("t0p-s3cret"));
}

/// Issue 14 item 6: Zajel's clients never send `"iceServers": true` and all
/// ignore a type they do not know, so by default (`--ice-servers-unasked`,
/// on) they get `ice_servers` under the same rule as clients that ask: not
/// when registered, once paired. Turned off, they get none.
#[tokio::test]
async fn ice_servers_unasked_once_paired_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn.secret");
    std::fs::write(&secret, "t0p-s3cret\n").unwrap();
    let secret = secret.to_str().unwrap().to_string();
    let base = [
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-url",
        "turns:127.0.0.1:5349?transport=tcp",
        "--stun-url",
        "stun:127.0.0.1:3478",
        "--turn-secret-file",
        &secret,
    ];
    for unasked in [None, Some("true"), Some("false")] {
        let mut args = base.to_vec();
        if let Some(value) = unasked {
            args.extend(["--ice-servers-unasked", value]);
        }
        let offered = unasked != Some("false");
        let relay = RelayProcess::start(&args);
        let mut alice = Client::connect(&relay.url()).await;
        let mut bob = Client::connect(&relay.url()).await;
        // Registered the way Zajel's clients do (no "iceServers"): nothing yet.
        for (client, code, n) in [(&mut alice, "ALEXA2", 1), (&mut bob, "BBBBB2", 2)] {
            let registered = client
                .request(json!({"type": "register", "pairingCode": code, "publicKey": key(n)}))
                .await;
            assert_eq!(registered["type"], "registered");
            client.expect_quiet().await;
        }
        alice
            .send(json!({"type": "pair_request", "targetCode": "BBBBB2", "proposedName": "Alice"}))
            .await;
        assert_eq!(bob.recv().await["type"], "pair_incoming");
        let first = bob
            .request(json!({"type": "pair_response", "targetCode": "ALEXA2", "accepted": true}))
            .await;
        assert_eq!(alice.recv().await["type"], "pair_matched");
        let after = alice.request(json!({"type": "ping"})).await;
        if offered {
            checked_ice_servers(&first, 600);
            assert_eq!(bob.recv().await["type"], "pair_matched");
            checked_ice_servers(&after, 600);
            assert_eq!(alice.recv().await, json!({"type": "pong"}));
        } else {
            assert_eq!(first["type"], "pair_matched", "{unasked:?}: {first}");
            assert_eq!(after, json!({"type": "pong"}), "{unasked:?}");
            bob.expect_quiet().await;
        }
        assert_eq!(
            relay.metric("relay_ice_credentials_issued_total").await,
            if offered { 2.0 } else { 0.0 },
            "{unasked:?}"
        );
    }
}

/// "(or has a call)": a `call_offer` between two connections that asked
/// engages both; the caller's credential answers its offer, the callee's
/// comes before the pong of its next ping.
#[tokio::test]
async fn ice_servers_for_a_connection_in_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("turn.secret");
    std::fs::write(&secret, "t0p-s3cret\n").unwrap();
    let relay = RelayProcess::start(&[
        "--turn-url",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret-file",
        secret.to_str().unwrap(),
    ]);
    let mut caller = Client::connect(&relay.url()).await;
    let mut callee = Client::connect(&relay.url()).await;
    for (client, code, n) in [(&mut caller, "ALEXA2", 1), (&mut callee, "BBBBB2", 2)] {
        let registered = client
            .request(json!({"type": "register", "pairingCode": code, "publicKey": key(n), "iceServers": true}))
            .await;
        assert_eq!(registered["type"], "registered");
        client.expect_quiet().await;
    }
    let ice = caller
        .request(json!({"type": "call_offer", "target": "BBBBB2", "payload": {"callId": CALL_ID, "sdp": "v=0", "withVideo": false}}))
        .await;
    assert_eq!(ice["type"], "ice_servers", "{ice}");
    assert_eq!(ice["ttl"], 600, "the default lifetime is 10 minutes");
    assert_eq!(callee.recv().await["type"], "call_offer");
    let ice = callee.request(json!({"type": "ping"})).await;
    assert_eq!(ice["type"], "ice_servers", "{ice}");
    assert_eq!(callee.recv().await, json!({"type": "pong"}));
    // A second offer gives nothing more.
    caller
        .send(json!({"type": "call_offer", "target": "BBBBB2", "payload": {"callId": CALL_ID, "sdp": "v=0", "withVideo": false}}))
        .await;
    assert_eq!(callee.recv().await["type"], "call_offer");
    caller.expect_quiet().await;
    callee.expect_quiet().await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits() {
    let mut relay = RelayProcess::start(&["--handshake-timeout-ms", "600000"]);
    let mut a = Client::registered(&relay.url(), "ALEXA2", 1).await;
    let mut b = Client::connect(&relay.url()).await;
    // A half-open connection (no request head yet) must not hold shutdown up.
    let _silent = TcpStream::connect(relay.addr).await.unwrap();
    relay.process.signal(libc::SIGTERM);
    assert_eq!(a.ended().await, Ended::Close(1001));
    assert_eq!(b.ended().await, Ended::Close(1001));
    let status = relay.process.wait(WAIT).expect("relay exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(relay.addr).await.is_err());

    // Ctrl-C does the same.
    let mut relay = RelayProcess::start(&[]);
    let mut c = Client::registered(&relay.url(), "ALEXA2", 1).await;
    relay.process.signal(libc::SIGINT);
    assert_eq!(c.ended().await, Ended::Close(1001));
    assert!(relay.process.wait(WAIT).unwrap().success());
}

// --- raw WebSocket helpers (for frames a client library will not send) ---

async fn raw_handshake(stream: &mut TcpStream) {
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
}

async fn raw_websocket(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    raw_handshake(&mut stream).await;
    stream
}

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65_536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

async fn read_raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.unwrap();
        let mut len = u64::from(header[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.unwrap();
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).await.unwrap();
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.unwrap();
        (header[0] & 0x0f, payload)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame in time")
}
