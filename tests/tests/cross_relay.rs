//! Two contacts whose discovery ended on different relays meet through
//! rendezvous (issue 14, item 4): the native registry and two, three and
//! four relay-lite children linked by federation; clients that derive their
//! points as §5.3 says and register them as the app does
//! (`tests::rendezvous_client`). With and without following redirects, and
//! after the relay one of them was on is killed. Then they pair, on the
//! relay the match names. Needs `cargo build -p relay-lite`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tests::registry_host::{self, Profile, RunningRegistry};
use tests::relay_child::RelayChild;
use tests::rendezvous_client::{random_secret, Found, RendezvousClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zajel_wire::peer_keys;

const WAIT: Duration = Duration::from_secs(20);

struct Fleet {
    _registry: RunningRegistry,
    relays: Vec<(RelayChild, SocketAddr)>,
}

impl Fleet {
    /// `n` relays registered with one registry, heartbeats every 200 ms;
    /// returns once each has a forwarding link to every other.
    async fn start(n: usize) -> Fleet {
        let registry = registry_host::start_in_process(Profile::SIGNED);
        let bootstrap = registry.url("");
        let mut relays = Vec::new();
        for _ in 0..n {
            let mut relay = RelayChild::start(
                &[
                    "--bootstrap",
                    &bootstrap,
                    "--heartbeat-ms",
                    "200",
                    "--metrics-listen",
                    "127.0.0.1:0",
                ],
                WAIT,
            )
            .expect("relay-lite");
            let metrics: SocketAddr = relay
                .process
                .wait_for(WAIT, |line| {
                    line.strip_prefix("metrics on http://")
                        .and_then(|rest| rest.strip_suffix("/metrics"))
                        .and_then(|addr| addr.parse().ok())
                })
                .expect("metrics address");
            relays.push((relay, metrics));
        }
        let fleet = Fleet {
            _registry: registry,
            relays,
        };
        for index in 0..n {
            fleet.wait_forwarding_links(index, n as i64 - 1).await;
        }
        fleet
    }

    fn url(&self, index: usize) -> String {
        self.relays[index].0.url()
    }

    fn id(&self, index: usize) -> String {
        self.relays[index].0.server_id.clone()
    }

    /// serverId → URL, as a client reads it from the registry's list.
    fn urls(&self) -> HashMap<String, String> {
        self.relays
            .iter()
            .map(|(relay, _)| (relay.server_id.clone(), relay.url()))
            .collect()
    }

    async fn metric(&self, index: usize, name: &str) -> Option<i64> {
        let mut stream = tokio::net::TcpStream::connect(self.relays[index].1)
            .await
            .ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Polls relay `index`'s metrics (a process: no event to await) until
    /// it has `links` forwarding links.
    async fn wait_forwarding_links(&self, index: usize, links: i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self
                .metric(index, "relay_federation_forwarding_links")
                .await
                == Some(links)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "relay {index} never had {links} forwarding links; its output:\n{}",
                self.relays[index].0.process.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Two contacts: (secret, contact's public key) each.
fn contacts() -> ([u8; 32], [u8; 32]) {
    (random_secret(), random_secret())
}

/// The first match of `client` for `peer` (from its replies, then pushes)
/// that `accept` takes.
async fn found_peer(
    client: &mut RendezvousClient,
    from_replies: Vec<Found>,
    peer: &str,
    accept: impl Fn(&Found) -> bool,
) -> Found {
    if let Some(found) = from_replies
        .into_iter()
        .find(|f| f.peer_id == peer && accept(f))
    {
        return found;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let found = client
            .next_match(left)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if found.peer_id == peer && accept(&found) {
            return found;
        }
    }
}

/// Both pair, each by its own rule, at once; returns where each paired.
async fn pair_both(
    a: &mut RendezvousClient,
    a_found: &Found,
    b: &mut RendezvousClient,
    b_found: &Found,
    urls: &HashMap<String, String>,
) -> (String, String) {
    let (at_a, at_b) = tokio::join!(a.pair(a_found, urls, WAIT), b.pair(b_found, urls, WAIT));
    (at_a.expect("a paired"), at_b.expect("b paired"))
}

/// (b) Clients that ignore redirects (headless, call-probe): with two
/// relays Zajel's rule keeps every point everywhere (no redirects at all),
/// so only relay-lite's forwarding to a meeting relay makes them meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contacts_on_two_relays_meet_by_forwarding_and_pair_on_the_named_relay() {
    let fleet = Fleet::start(2).await;
    let (secret_a, secret_b) = contacts();
    let (public_a, public_b) = (
        peer_keys::public_key(&secret_a),
        peer_keys::public_key(&secret_b),
    );
    let mut a = RendezvousClient::connect(&fleet.url(0), secret_a, public_b)
        .await
        .unwrap();
    let mut b = RendezvousClient::connect(&fleet.url(1), secret_b, public_a)
        .await
        .unwrap();
    let started = Instant::now();
    let a_replies = a.register_rendezvous(false).await.unwrap();
    let b_replies = b.register_rendezvous(false).await.unwrap();
    let b_code = b.code.clone();
    let a_code = a.code.clone();
    // Each learns where the other is connected: the other relay.
    let a_found = found_peer(&mut a, a_replies, &b_code, |_| true).await;
    let b_found = found_peer(&mut b, b_replies, &a_code, |_| true).await;
    let met = started.elapsed();
    assert_eq!(a_found.relay_id, fleet.id(1), "{a_found:?}");
    assert_eq!(b_found.relay_id, fleet.id(0), "{b_found:?}");
    let (at_a, at_b) = pair_both(&mut a, &a_found, &mut b, &b_found, &fleet.urls()).await;
    assert_eq!(at_a, at_b, "both on one relay");
    let smaller_contacts_relay = if a.code < b.code {
        fleet.url(1)
    } else {
        fleet.url(0)
    };
    assert_eq!(at_a, smaller_contacts_relay);
    assert!(
        fleet
            .metric(0, "relay_rendezvous_forwards_sent_total")
            .await
            .unwrap()
            + fleet
                .metric(1, "relay_rendezvous_forwards_sent_total")
                .await
                .unwrap()
            >= 2
    );
    eprintln!("met across two relays in {met:?}");
}

/// (a) Clients that follow redirects as the app does, four relays (Zajel
/// redirects only from four up): they meet, and pair where the match says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contacts_following_redirects_on_four_relays_meet_and_pair() {
    let fleet = Fleet::start(4).await;
    let (secret_a, secret_b) = contacts();
    let (public_a, public_b) = (
        peer_keys::public_key(&secret_a),
        peer_keys::public_key(&secret_b),
    );
    let mut a = RendezvousClient::connect(&fleet.url(0), secret_a, public_b)
        .await
        .unwrap();
    let mut b = RendezvousClient::connect(&fleet.url(1), secret_b, public_a)
        .await
        .unwrap();
    let a_replies = a.register_rendezvous(true).await.unwrap();
    let b_replies = b.register_rendezvous(true).await.unwrap();
    // Redirects, when there are any, name relays of the fleet by their endpoint.
    let urls = fleet.urls();
    for url in a.redirects.keys().chain(b.redirects.keys()) {
        assert!(urls.values().any(|u| u == url), "{url}");
    }
    let (a_code, b_code) = (a.code.clone(), b.code.clone());
    let a_found = found_peer(&mut a, a_replies, &b_code, |_| true).await;
    let b_found = found_peer(&mut b, b_replies, &a_code, |_| true).await;
    let (at_a, at_b) = pair_both(&mut a, &a_found, &mut b, &b_found, &urls).await;
    assert_eq!(at_a, at_b);
}

/// Three relays; the relay one contact is on is killed. Its client
/// reconnects to another relay and registers again (the app's refresh on
/// connect); the survivors re-register their own clients' points when the
/// link drops. The contacts meet again within that one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_relays_points_are_registered_again_within_one_refresh() {
    let mut fleet = Fleet::start(3).await;
    let (secret_a, secret_b) = contacts();
    let (public_a, public_b) = (
        peer_keys::public_key(&secret_a),
        peer_keys::public_key(&secret_b),
    );
    let mut a = RendezvousClient::connect(&fleet.url(2), secret_a, public_b)
        .await
        .unwrap();
    let mut b = RendezvousClient::connect(&fleet.url(0), secret_b, public_a)
        .await
        .unwrap();
    let a_replies = a.register_rendezvous(false).await.unwrap();
    let b_replies = b.register_rendezvous(false).await.unwrap();
    let (a_code, b_code) = (a.code.clone(), b.code.clone());
    found_peer(&mut a, a_replies, &b_code, |_| true).await;
    let dead = fleet.id(2);
    found_peer(&mut b, b_replies, &a_code, |f| f.relay_id == dead).await;

    // Relay 2 dies; A's app reconnects to relay 1 and registers again.
    fleet.relays[2].0.process.kill();
    let killed = Instant::now();
    fleet.wait_forwarding_links(0, 1).await;
    fleet.wait_forwarding_links(1, 1).await;
    let mut a = RendezvousClient::connect(&fleet.url(1), secret_a, public_b)
        .await
        .unwrap();
    let a_replies = a.register_rendezvous(false).await.unwrap();
    let a_code = a.code.clone();
    let alive = fleet.id(1);
    let a_found = found_peer(&mut a, a_replies, &b_code, |f| f.relay_id == fleet.id(0)).await;
    let b_found = found_peer(&mut b, Vec::new(), &a_code, |f| f.relay_id == alive).await;
    let met = killed.elapsed();
    let (at_a, at_b) = pair_both(&mut a, &a_found, &mut b, &b_found, &fleet.urls()).await;
    assert_eq!(at_a, at_b);
    assert_ne!(at_a, fleet.url(2));
    eprintln!("met again {met:?} after the kill");
    fleet.relays.truncate(2);
}

/// A listed server that links with a relay (authenticated, but hostile)
/// cannot take over the relay's own clients: a `rendezvous_forward` for a
/// peerId a client of the relay holds is refused (the client's pushes stay
/// with it), and a `rendezvous_forward_match` for a peerId never forwarded
/// to that server is not delivered. Forwards are applied in order, so the
/// answer to a later, legitimate forward shows the earlier ones were handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linked_server_cannot_take_over_or_spoof_a_relays_clients() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tests::rendezvous_client::Connection;
    use tokio_tungstenite::tungstenite::Message;
    use zajel_client_net::now_ms;
    use zajel_client_net::signaling::TrustAnchors;
    use zajel_wire::entry::RegisterRequest;
    use zajel_wire::federation::{sign_handshake, HandshakeKind};

    let registry = registry_host::start_in_process(Profile::SIGNED);
    // The hostile server is listed (a compromised operator), at an endpoint
    // nobody reaches: the relay's own dials fail; it dials the relay itself.
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x4d; 32]);
    let hostile_id = zajel_wire::keys::server_id_for(&key.verifying_key());
    let request = RegisterRequest::signed(&key, "ws://127.0.0.1:9", None, now_ms());
    let url = registry.url("/servers");
    let status = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_string(&request).unwrap())
            .send()
            .map(|answer| answer.status())
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.is_success(), "{status}");
    let mut relay = RelayChild::start(
        &["--bootstrap", &registry.url(""), "--heartbeat-ms", "200"],
        WAIT,
    )
    .expect("relay-lite");
    relay
        .process
        .wait_for(WAIT, |line| {
            line.contains("fleet listed by the registry changed")
                .then_some(())
        })
        .unwrap();
    let (mut link, _) = tokio_tungstenite::connect_async(format!("ws://{}/federation", relay.addr))
        .await
        .unwrap();
    let hello = sign_handshake(
        HandshakeKind::Hello,
        &key,
        "ws://127.0.0.1:9",
        None,
        now_ms(),
    );
    link.send(Message::text(hello)).await.unwrap();
    let mut next_link = async |want: &str| -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, link.next())
                .await
                .expect("a frame on the link")
                .expect("the link open")
                .unwrap();
            if let Message::Text(text) = frame {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["type"] == want {
                    return value;
                }
            }
        }
    };
    next_link("handshake_ack").await;
    next_link("rendezvous_hello").await;
    // It never sends rendezvous_hello: the relay keeps every point itself.

    let trust = TrustAnchors::WebPki;
    let key_of = |seed: u8| peer_keys::public_key(&[seed; 32]);
    let mut client = Connection::register(&relay.url(), "CCCCC2", &key_of(1), &trust)
        .await
        .unwrap();
    let mut other = Connection::register(&relay.url(), "DDDDD2", &key_of(2), &trust)
        .await
        .unwrap();
    let register = |peer: &str, token: &str| json!({"type": "register_rendezvous", "peerId": peer, "hourly_tokens": [token]});
    client.send(&register("CCCCC2", "hr_shared")).await.unwrap();
    client.next_of(&["rendezvous_result"], WAIT).await.unwrap();
    other.send(&register("DDDDD2", "hr_probe")).await.unwrap();
    other.next_of(&["rendezvous_result"], WAIT).await.unwrap();

    // Hostile: a forward in the client's name, a spoofed match for it; then a
    // legitimate forward whose answer marks that both were handled.
    let frames = [
        json!({"type": "rendezvous_forward", "peerId": "CCCCC2", "hourlyTokens": ["hr_shared"]}),
        json!({"type": "rendezvous_forward_match", "peerId": "CCCCC2",
               "match": {"peerId": "EVIL22", "relayId": hostile_id}}),
        json!({"type": "rendezvous_forward", "peerId": "LEGIT2", "hourlyTokens": ["hr_probe"]}),
    ];
    for frame in frames {
        link.send(Message::text(frame.to_string())).await.unwrap();
    }
    let answer = loop {
        let frame = tokio::time::timeout(WAIT, link.next())
            .await
            .expect("the legitimate forward's match")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["type"] == "rendezvous_forward_match" {
                break value;
            }
        }
    };
    assert_eq!(
        answer,
        json!({"type": "rendezvous_forward_match", "peerId": "LEGIT2",
               "match": {"peerId": "DDDDD2", "relayId": relay.server_id}})
    );
    // The relay's client whose token the legitimate forward matched hears of it.
    let pushed = other.next_of(&["rendezvous_match"], WAIT).await.unwrap();
    assert_eq!(pushed["match"]["peerId"], "LEGIT2");
    assert_eq!(pushed["match"]["relayId"], hostile_id.as_str());

    // Another client meets the first at hr_shared: the entry is still the
    // client's own (no relayId), and the push goes to the client, whose
    // first rendezvous_match is this one, not the spoofed EVIL22.
    other.send(&register("DDDDD2", "hr_shared")).await.unwrap();
    let reply = other.next_of(&["rendezvous_result"], WAIT).await.unwrap();
    assert_eq!(
        reply["liveMatches"],
        json!([{"peerId": "CCCCC2", "relayId": ""}])
    );
    let pushed = client.next_of(&["rendezvous_match"], WAIT).await.unwrap();
    assert_eq!(pushed["match"], json!({"peerId": "DDDDD2"}));
}
