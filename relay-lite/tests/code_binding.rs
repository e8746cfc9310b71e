//! Pairing codes held by their key, and pair requests that do not tell a
//! live target from a dead one (issue 13 item 6), tried as an attacker
//! would against an in-process relay with real WebSocket clients: a
//! squatter racing the owner's reconnect, the owner's own reconnect before
//! the relay noticed the old socket died, enumeration by reply and by
//! timing, and one address filling a target's pending slots.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::relay::{in_process_url, key, start_in_process, Client, Ended};
use futures_util::StreamExt;
use relay_lite::Refusal;
use serde_json::{json, Value};

fn collision() -> Value {
    json!({"type": "code_collision", "message": "Pairing code already in use. Please reconnect with a new code."})
}

/// Waits until the relay has dropped `code`'s connection: `prober`'s
/// `offer` to it is answered `Peer not found` (a live code's is forwarded
/// silently, so the `pong` after it comes first).
async fn until_released(prober: &mut Client, code: &str) {
    for _ in 0..45 {
        prober
            .send(json!({"type": "offer", "target": code, "payload": {}}))
            .await;
        prober.send(json!({"type": "ping"})).await;
        let reply = prober.recv().await;
        if reply["type"] == "error" {
            assert_eq!(reply["message"], format!("Peer not found: {code}"));
            assert_eq!(prober.recv().await["type"], "pong");
            return;
        }
        assert_eq!(reply["type"], "pong", "{reply}");
    }
    panic!("the relay did not notice {code}'s connection close");
}

#[tokio::test]
async fn a_squatter_cannot_take_a_code_during_its_owners_reconnect() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let mut owner = Client::registered(&url, "PWNER2", 1).await;
    let mut prober = Client::registered(&url, "PRQBER", 3).await;
    let mut squatter = Client::connect(&url).await;
    assert_eq!(squatter.register("PWNER2", 2).await, collision());

    // The owner's connection drops: its reconnect has begun.
    owner.ws.close(None).await.unwrap();
    assert_eq!(owner.ended().await, Ended::Close(1005));
    until_released(&mut prober, "PWNER2").await;
    assert_eq!(relay.registered_codes(), 1);
    // The squatter races the reconnect: refused as if the owner were still there.
    for _ in 0..3 {
        assert_eq!(squatter.register("PWNER2", 2).await, collision());
    }
    // The owner is back: same code, same key.
    let mut owner = Client::registered(&url, "PWNER2", 1).await;
    assert_eq!(squatter.register("PWNER2", 2).await, collision());
    // Pair requests reach the owner, and the squatter holds nothing.
    prober
        .send(json!({"type": "pair_request", "targetCode": "PWNER2"}))
        .await;
    let incoming = owner.recv().await;
    assert_eq!(incoming["type"], "pair_incoming");
    assert_eq!(incoming["fromCode"], "PRQBER");
    squatter.expect_quiet().await;
    assert_eq!(
        squatter
            .error_for(json!({"type": "offer", "target": "PRQBER", "payload": {}}))
            .await,
        "Not registered. Send register message first."
    );
    let metrics = relay.metrics();
    assert_eq!(metrics.refusal_count(Refusal::CodeHeld), 3);
    assert_eq!(metrics.refusal_count(Refusal::CodeCollision), 2);
    relay.shutdown().await;
}

#[tokio::test]
async fn the_owner_reconnecting_before_the_relay_noticed_takes_the_code_back() {
    let relay =
        start_in_process(|config| config.timeouts.takeover_probe = Duration::from_millis(300))
            .await;
    let url = in_process_url(&relay);
    // The old connection is never read again: to the relay it looks like a
    // socket that died without a close (it does not answer pings).
    let mut stale = Client::registered(&url, "PWNER2", 1).await;
    // Another key is refused at once, probe or not.
    let mut squatter = Client::connect(&url).await;
    assert_eq!(squatter.register("PWNER2", 2).await, collision());
    // The owner's new connection, same key: the old one does not answer the
    // probe, so the new one takes the code and the old one is dropped.
    let mut fresh = Client::connect(&url).await;
    let started = Instant::now();
    assert_eq!(fresh.register("PWNER2", 1).await["type"], "registered");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(stale.ended().await, Ended::Dropped);
    let mut prober = Client::registered(&url, "PRQBER", 3).await;
    prober
        .send(json!({"type": "pair_request", "targetCode": "PWNER2"}))
        .await;
    assert_eq!(fresh.recv().await["fromCode"], "PRQBER");

    // A live connection (it answers pings) keeps its code even against its
    // own key on another connection.
    let mut live = Client::registered(&url, "LYVE22", 4).await;
    let answering = tokio::spawn(async move {
        // Reading is what answers the relay's ping.
        while let Some(Ok(_)) = live.ws.next().await {}
    });
    let mut second = Client::connect(&url).await;
    assert_eq!(second.register("LYVE22", 4).await, collision());
    assert!(!answering.is_finished(), "the live connection was dropped");
    answering.abort();
    relay.shutdown().await;
}

/// What one requester heard for its request: each frame (with the target's
/// code replaced by `PEER`) and when it came, counted from the request.
async fn frames_until_timeout(
    mut requester: Client,
    target: &'static str,
) -> Vec<(Duration, String)> {
    let sent = Instant::now();
    requester
        .send(json!({"type": "pair_request", "targetCode": target}))
        .await;
    let mut frames = Vec::new();
    loop {
        let text = requester.recv_text().await;
        let done = text.contains(r#""type":"pair_timeout""#);
        frames.push((sent.elapsed(), text.replace(target, "PEER")));
        if done {
            requester.expect_quiet().await;
            return frames;
        }
    }
}

#[tokio::test]
async fn live_and_dead_targets_give_the_same_frames_at_the_same_times() {
    let timeout = Duration::from_millis(1_500);
    let warning = Duration::from_millis(1_000);
    let relay = start_in_process(|config| {
        config.timeouts.pair_request = timeout;
        config.timeouts.pair_expiring_warning = warning;
    })
    .await;
    let url = in_process_url(&relay);
    let mut live = Client::registered(&url, "LYVE22", 1).await;
    let mut held = Client::registered(&url, "HELD22", 2).await;
    held.ws.close(None).await.unwrap();
    held.ended().await;
    let mut prober = Client::registered(&url, "PRQBER", 3).await;
    until_released(&mut prober, "HELD22").await;
    // The live target never answers; the others cannot.
    let cases: [(&str, &'static str); 4] = [
        ("REQAA2", "LYVE22"), // a live target
        ("REQBB2", "NEVER2"), // a code nobody ever held
        ("REQCC2", "REQCC2"), // the requester itself
        ("REQDD2", "HELD22"), // a code held for its key after a drop
    ];
    let mut listeners = Vec::new();
    for (n, (code, target)) in (10..).zip(cases) {
        let requester = Client::registered(&url, code, n).await;
        listeners.push(tokio::spawn(frames_until_timeout(requester, target)));
    }
    let mut heard = Vec::new();
    for listener in listeners {
        heard.push(listener.await.unwrap());
    }
    let expected = [
        r#"{"type":"pair_expiring","peerCode":"PEER","remainingSeconds":1}"#,
        r#"{"type":"pair_timeout","peerCode":"PEER"}"#,
    ];
    for ((_, target), frames) in cases.iter().zip(&heard) {
        let texts: Vec<_> = frames.iter().map(|(_, text)| text.as_str()).collect();
        assert_eq!(texts, expected, "to {target}");
        let (first, last) = (frames[0].0, frames[1].0);
        eprintln!("to {target}: first reply after {first:?}, pair_timeout after {last:?}");
        // Nothing before the warning, the timeout not before the timeout.
        assert!(first >= timeout - warning, "to {target}: {first:?}");
        assert!(last >= timeout, "to {target}: {last:?}");
    }
    let live_first = heard[0][0].0;
    for ((_, target), frames) in cases.iter().zip(&heard).skip(1) {
        let gap = frames[0].0.abs_diff(live_first);
        assert!(
            gap < Duration::from_millis(250),
            "to {target}: {gap:?} from the live target's"
        );
    }
    // The live target saw its one request, and heard it expire.
    assert_eq!(live.recv().await["type"], "pair_incoming");
    assert_eq!(live.recv().await["type"], "pair_expiring");
    live.expect_quiet().await;
    relay.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_fill_a_targets_pending_slots() {
    let relay = start_in_process(|_| {}).await;
    let url = in_process_url(&relay);
    let mut target = Client::registered(&url, "TARGET", 1).await;
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let mut flood = Vec::new();
    for (n, letter) in (10..).zip("ABCDEFGHJK".chars()) {
        let code = format!("REQ{letter}{letter}2");
        let mut client = Client::connect_from(relay.local_addr(), here).await;
        assert_eq!(client.register(&code, n).await["type"], "registered");
        client
            .send(json!({"type": "pair_request", "targetCode": "TARGET"}))
            .await;
        // No reply, whether or not the target saw it (the pong comes next).
        client.expect_quiet().await;
        flood.push(client);
    }
    // Two of the ten reached the target.
    for _ in 0..2 {
        assert_eq!(target.recv().await["type"], "pair_incoming");
    }
    target.expect_quiet().await;
    // Another address still can.
    let mut other = Client::connect_from(relay.local_addr(), elsewhere).await;
    assert_eq!(other.register("QTHER2", 30).await["type"], "registered");
    other
        .send(json!({"type": "pair_request", "targetCode": "TARGET"}))
        .await;
    other.expect_quiet().await;
    let incoming = target.recv().await;
    assert_eq!(incoming["fromCode"], "QTHER2");
    assert_eq!(incoming["fromPublicKey"], key(30));
    assert_eq!(relay.metrics().refusal_count(Refusal::PairAddressLimit), 8);
    relay.shutdown().await;
}
