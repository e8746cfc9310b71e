//! Two contacts whose discovery ended on different relays meet through
//! rendezvous (issue 14, item 4): the native registry and two, three and
//! four relay-lite children linked by federation; clients that derive their
//! points as §5.3 says and register them as the app does
//! (`tests::rendezvous_client`). With and without following redirects, and
//! after the relay one of them was on is killed. Then they pair, on the
//! relay the match names. And call-probe's own contacts (`call --contact`,
//! `answer`, in this process) on different relays meet there, pair on a
//! meeting connection to the relay the match names (looked up in the signed
//! fleet discovery read from the registry) and call with media both ways;
//! a match naming a relay outside that fleet is not dialled. Needs
//! `cargo build -p relay-lite`.

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
    registry: RunningRegistry,
    relays: Vec<(RelayChild, SocketAddr)>,
    /// Each relay's flags (besides `--listen`).
    args: Vec<Vec<String>>,
}

impl Fleet {
    /// `n` relays registered with one registry, heartbeats every 200 ms;
    /// returns once each has a forwarding link to every other.
    async fn start(n: usize) -> Fleet {
        Self::start_with(n, |_| Vec::new()).await
    }

    /// [`Self::start`] with `extra(index)` flags for each relay.
    async fn start_with(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Fleet {
        let registry = registry_host::start_in_process(Profile::SIGNED);
        let mut relays = Vec::new();
        let mut args = Vec::new();
        for index in 0..n {
            let mut flags: Vec<String> = [
                "--bootstrap",
                &registry.url(""),
                "--heartbeat-ms",
                "200",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            flags.extend(extra(index));
            relays.push(Self::start_relay("127.0.0.1:0", &flags));
            args.push(flags);
        }
        let fleet = Fleet {
            registry,
            relays,
            args,
        };
        for index in 0..n {
            fleet.wait_forwarding_links(index, n as i64 - 1).await;
        }
        fleet
    }

    fn start_relay(listen: &str, flags: &[String]) -> (RelayChild, SocketAddr) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut relay = RelayChild::start_on(listen, &flags, WAIT).expect("relay-lite");
        let metrics: SocketAddr = relay
            .process
            .wait_for(WAIT, |line| {
                line.strip_prefix("metrics on http://")
                    .and_then(|rest| rest.strip_suffix("/metrics"))
                    .and_then(|addr| addr.parse().ok())
            })
            .expect("metrics address");
        (relay, metrics)
    }

    /// Kills relay `index` outright (SIGKILL) and starts it again on its
    /// port with its flags.
    fn restart(&mut self, index: usize) {
        let listen = self.relays[index].0.addr.to_string();
        self.relays[index].0.process.kill();
        self.relays[index] = Self::start_relay(&listen, &self.args[index]);
    }

    fn url(&self, index: usize) -> String {
        self.relays[index].0.url()
    }

    /// [`Self::url`] as a parsed URL prints it (with the path `/`).
    fn ws_url(&self, index: usize) -> String {
        url::Url::parse(&self.url(index)).unwrap().to_string()
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
    // The two contacts share their points, and the relays' keys (so the hash
    // ring) are new each run: when one relay owns every point, only the other
    // relay's client is forwarded. Either way at least one forward was sent.
    assert!(
        fleet
            .metric(0, "relay_rendezvous_forwards_sent_total")
            .await
            .unwrap()
            + fleet
                .metric(1, "relay_rendezvous_forwards_sent_total")
                .await
                .unwrap()
            >= 1
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

/// The forwarding maps are in memory, and need not be kept across a restart
/// (relay-lite's README, "Rendezvous across relays"): a meeting relay that
/// restarts keeps the forwarded entries (SQLite) but forgets who forwarded
/// them; its links drop and come back, and a link change makes every origin
/// register its open connections' points again, forwarding them anew, so
/// the meeting relay knows again where to push. (An origin that restarts
/// loses its open connections, whose clients register again on reconnect.)
/// Here relay 1, the meeting relay of some of Alice's points, is killed
/// and restarted on its state directory: before anyone else does anything,
/// relay 0 has forwarded Alice's points to it again, and when Bob then
/// registers there, his match reaches Alice as a forwarded match.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_meeting_relay_learns_again_where_to_push_from_the_origins_refresh() {
    let state = tempfile::tempdir().unwrap();
    let identity = state.path().join("identity.key").display().to_string();
    let state_dir = state.path().join("state").display().to_string();
    let mut fleet = Fleet::start_with(2, |index| {
        if index == 1 {
            vec![
                "--identity".into(),
                identity.clone(),
                "--state-dir".into(),
                state_dir.clone(),
            ]
        } else {
            Vec::new()
        }
    })
    .await;
    const STORED: &str = "relay_rendezvous_forwards_stored_total";
    // Alice on relay 0, with points whose meeting relay is relay 1 (about
    // half of them are; drawn again in the rare case none is).
    let mut alice = None;
    for _ in 0..10 {
        let (secret_a, secret_b) = contacts();
        let public_a = peer_keys::public_key(&secret_a);
        let public_b = peer_keys::public_key(&secret_b);
        let before = fleet.metric(1, STORED).await.unwrap_or(0);
        let mut a = RendezvousClient::connect(&fleet.url(0), secret_a, public_b)
            .await
            .unwrap();
        a.register_rendezvous(false).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while fleet.metric(1, STORED).await.unwrap_or(0) == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if fleet.metric(1, STORED).await.unwrap_or(0) > before {
            alice = Some((a, secret_b, public_a));
            break;
        }
    }
    let (mut a, secret_b, public_a) = alice.expect("some of Alice's points meet on relay 1");
    let id_1 = fleet.id(1);
    fleet.restart(1);
    assert_eq!(fleet.id(1), id_1, "the same identity");
    fleet.wait_forwarding_links(0, 1).await;
    fleet.wait_forwarding_links(1, 1).await;
    // The restarted relay's counters start at zero: what it stores now came
    // from relay 0's refresh (Alice sent nothing since).
    let deadline = Instant::now() + WAIT;
    while fleet.metric(1, STORED).await.unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "relay 0 never forwarded Alice's points again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    const DELIVERED: &str = "relay_rendezvous_forward_matches_delivered_total";
    let delivered_before = fleet.metric(0, DELIVERED).await.unwrap_or(0);
    let mut b = RendezvousClient::connect(&fleet.url(1), secret_b, public_a)
        .await
        .unwrap();
    b.register_rendezvous(false).await.unwrap();
    let b_code = b.code.clone();
    let found = found_peer(&mut a, Vec::new(), &b_code, |f| f.relay_id == id_1).await;
    assert_eq!(found.relay_id, id_1);
    // Relay 1 pushed through relay 0 (a forwarded match): it knew again that
    // Alice's entries came from there.
    let deadline = Instant::now() + WAIT;
    while fleet.metric(0, DELIVERED).await.unwrap_or(0) <= delivered_before {
        assert!(
            Instant::now() < deadline,
            "no forwarded match reached relay 0 after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forwarded dead drops (beyond Zajel: its app leaves none today, its
/// dormant reconnection code would): Alice on relay 0 leaves a dead drop at
/// each of the three daily points she shares with Bob; Bob on relay 1
/// registers the same points and gets all three back through his own relay,
/// each from its meeting relay: in his reply when that is relay 1 (Alice's
/// forward carried the drop there), pushed as a `rendezvous_result` when it
/// is relay 0 (his forward found it there). Before, he got none: with two
/// relays each keeps its own clients' points and never sees the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_drops_left_on_one_relay_reach_a_reader_on_another() {
    use serde_json::json;
    use tests::rendezvous_client::Connection;
    let fleet = Fleet::start(2).await;
    let (secret_a, secret_b) = contacts();
    let (public_a, public_b) = (
        peer_keys::public_key(&secret_a),
        peer_keys::public_key(&secret_b),
    );
    let points = peer_keys::daily_points(&public_a, &public_b, zajel_client_net::now_ms() as i64);
    let trust = Default::default();
    let mut alice = Connection::register(&fleet.url(0), "AAAAA2", &public_a, &trust)
        .await
        .unwrap();
    let drops: serde_json::Map<String, serde_json::Value> = points
        .iter()
        .map(|p| (p.clone(), json!(format!("sealed-at-{p}"))))
        .collect();
    alice
        .send(&json!({"type": "register_rendezvous", "peerId": "AAAAA2",
            "daily_points": points, "hourly_tokens": [], "dead_drops": drops}))
        .await
        .unwrap();
    alice.next_of(&["rendezvous_result"], WAIT).await.unwrap();
    // Alice's forwards are stored before Bob comes (in arrival order per
    // link, but the two relays' forwards cross): wait for relay 1's count.
    let deadline = Instant::now() + WAIT;
    while fleet
        .metric(1, "relay_rendezvous_forwards_stored_total")
        .await
        .unwrap_or(0)
        == 0
        && fleet
            .metric(0, "relay_rendezvous_forwards_sent_total")
            .await
            .unwrap_or(0)
            > 0
    {
        assert!(Instant::now() < deadline, "Alice's forward never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bob = Connection::register(&fleet.url(1), "BBBBB2", &public_b, &trust)
        .await
        .unwrap();
    bob.send(&json!({"type": "register_rendezvous", "peerId": "BBBBB2",
            "daily_points": points, "hourly_tokens": [], "dead_drops": {}}))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = bob
            .next_of(&["rendezvous_result"], left)
            .await
            .unwrap_or_else(|e| panic!("Bob has {seen:?}: {e}"));
        for found in reply["deadDrops"].as_array().into_iter().flatten() {
            assert_eq!(found["peerId"], "AAAAA2", "{reply}");
            assert_eq!(found["relayId"], fleet.id(0).as_str(), "{reply}");
            seen.insert(found["deadDrop"].as_str().unwrap().to_string());
        }
    }
    let expected: std::collections::BTreeSet<String> =
        points.iter().map(|p| format!("sealed-at-{p}")).collect();
    assert_eq!(seen, expected);
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

// ---- call-probe's contacts on different relays --------------------------

mod probes {
    use super::*;
    use call_probe::answer::{AnswerOptions, Answerer};
    use call_probe::choose::ServerChoice;
    use call_probe::contacts::Contacts;
    use call_probe::identity::Identity;
    use call_probe::line_options::IdentityChoice;
    use call_probe::probe_call::{run_call, CallOptions, ProbeCallReport};
    use std::path::Path;
    use zajel_wire::pairing::PairingCode;

    /// Two state folders whose identities know each other as contacts
    /// ("alice" at Bob's, "bob" at Alice's), as after a first pairing.
    pub fn contacts_paired_before() -> (tempfile::TempDir, tempfile::TempDir) {
        let (alice, bob) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (alice_id, _) = Identity::load_or_create(alice.path()).unwrap();
        let (bob_id, _) = Identity::load_or_create(bob.path()).unwrap();
        let now = zajel_client_net::now_ms();
        Contacts::load(alice.path())
            .unwrap()
            .paired(&bob_id.public_base64(), "bob", now)
            .unwrap();
        Contacts::load(bob.path())
            .unwrap()
            .paired(&alice_id.public_base64(), "alice", now)
            .unwrap();
        (alice, bob)
    }

    /// The signed fleet as a client's discovery reads it from the registry
    /// (its list verified with the registry's key).
    pub async fn signed_fleet(fleet: &Fleet) -> Vec<(String, String)> {
        let config = discovery_client::discovery::Config {
            registries: vec![url::Url::parse(&fleet.registry.url("")).unwrap()],
            registry_keys: vec![fleet.registry.list_key],
            allow_private: true,
            ..Default::default()
        };
        let choice = ServerChoice::discover(config).await.unwrap();
        choice.signed_fleet()
    }

    fn line(options: &mut call_probe::line_options::LineOptions, state: &Path) {
        options.loopback = true;
        options.step_timeout = WAIT;
        options.identity = IdentityChoice::StateDir(Some(state.to_path_buf()));
    }

    /// Bob answers on relay `bob_on` under `bob_code`; Alice calls the
    /// contact "bob" from relay `alice_on`. Both have `fleet`.
    pub async fn call_across(
        fleet: &Fleet,
        signed: &[(String, String)],
        alice_on: usize,
        bob_on: usize,
        bob_code: &str,
    ) -> ProbeCallReport {
        call_across_with(fleet, signed, signed, alice_on, bob_on, bob_code).await
    }

    /// [`call_across`] where Alice and Bob know different fleets.
    pub async fn call_across_with(
        fleet: &Fleet,
        alice_fleet: &[(String, String)],
        signed: &[(String, String)],
        alice_on: usize,
        bob_on: usize,
        bob_code: &str,
    ) -> ProbeCallReport {
        let (alice, bob) = contacts_paired_before();
        let mut answer = AnswerOptions::new(url::Url::parse(&fleet.url(bob_on)).unwrap());
        line(&mut answer.line, bob.path());
        answer.code = Some(PairingCode::parse(bob_code).unwrap());
        answer.max_calls = Some(1);
        answer.fleet = signed.to_vec();
        let answerer = Answerer::start(answer).await.unwrap();
        assert_eq!(answerer.rendezvous_contacts, 1);
        let serving = tokio::spawn(answerer.serve(|_| {}));
        let mut call =
            CallOptions::to_contact(url::Url::parse(&fleet.url(alice_on)).unwrap(), "bob");
        line(&mut call.line, alice.path());
        call.duration = Duration::from_millis(600);
        call.fleet = alice_fleet.to_vec();
        let report = run_call(&call).await;
        let answered = tokio::time::timeout(WAIT * 2, serving)
            .await
            .expect("the answerer finished")
            .unwrap()
            .unwrap();
        assert_eq!(answered.len(), 1, "{report:?}");
        assert!(
            answered[0].report.tone.detected.is_some(),
            "the answerer heard the caller"
        );
        report
    }
}

/// call-probe's contacts on two relays (no redirects with two: only
/// forwarding makes them meet, as for a client that does not follow
/// redirects). Bob's code the smallest: he opens a meeting connection to
/// Alice's relay and requests there; the largest: Alice opens one to Bob's
/// relay and requests there. Either way the whole call (offer, answer,
/// ICE, call auth) runs on that meeting connection, media both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_probe_contacts_on_two_relays_meet_and_call_over_a_meeting_connection() {
    let fleet = Fleet::start(2).await;
    let signed = probes::signed_fleet(&fleet).await;
    for index in 0..2 {
        assert!(
            signed.contains(&(fleet.id(index), fleet.ws_url(index))),
            "{signed:?}"
        );
    }
    for (bob_code, bob_requests) in [("222222", true), ("ZZZZZZ", false)] {
        let started = Instant::now();
        let report = probes::call_across(&fleet, &signed, 0, 1, bob_code).await;
        assert_eq!(report.error, None, "{bob_code}: {report:?}");
        assert!(report.media_both_ways && report.authenticated, "{report:?}");
        let found = report.found.as_ref().expect("found by rendezvous");
        assert_eq!(found.peer_code, bob_code);
        assert_eq!(found.we_requested, !bob_requests, "{found:?}");
        assert_eq!(found.relay, fleet.ws_url(1), "Bob is on relay 1: {found:?}");
        eprintln!(
            "call-probe contacts across two relays ({bob_code}): matched {:.0} ms, paired {:.0} ms after registering; whole run {:?}",
            found.match_ms,
            found.paired_ms,
            started.elapsed()
        );
    }
}

/// The smaller side cannot reach its contact's relay (here: its fleet
/// entry for Bob's relay points at a closed port, as a blocked relay would
/// be): its meeting connection fails, so it sends `pair_request` on its own
/// relay, again every second, where Bob's meeting connection registered
/// his code; Bob answers it there and the call runs over his meeting
/// connection and Alice's primary.
/// Then the same with a relay that takes the connection and never answers
/// (as a blackholed one, which only fails at the step timeout, 20 s here):
/// the smaller side requests on its own relay after 3 s
/// (`MEETING_FALLBACK_MS`) instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_probe_contacts_meet_on_the_smaller_sides_relay_when_the_other_is_unreachable() {
    let fleet = Fleet::start(2).await;
    let signed = probes::signed_fleet(&fleet).await;
    // Takes TCP connections and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/", silent.local_addr().unwrap());
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    // A fresh code each time: the last run's stays held by its key for a while.
    for (how, unreachable, bob_code) in [
        ("refused", "ws://127.0.0.1:9/".to_string(), "ZZZZZZ"),
        ("silent", silent_url, "ZZZZZY"),
    ] {
        let blocked: Vec<(String, String)> = signed
            .iter()
            .map(|(id, url)| {
                if *id == fleet.id(1) {
                    (id.clone(), unreachable.clone())
                } else {
                    (id.clone(), url.clone())
                }
            })
            .collect();
        let report = probes::call_across_with(&fleet, &blocked, &signed, 0, 1, bob_code).await;
        assert_eq!(report.error, None, "{how}: {report:?}");
        assert!(report.media_both_ways && report.authenticated, "{report:?}");
        let found = report.found.as_ref().expect("found by rendezvous");
        assert!(found.we_requested, "{found:?}");
        assert!(
            found.paired_ms < WAIT.as_millis() as f64 / 2.0,
            "{how}: paired {:.0} ms after registering, not within the fallback",
            found.paired_ms
        );
        eprintln!(
            "call-probe contacts, the contact's relay {how}: paired {:.0} ms after registering",
            found.paired_ms
        );
    }
    holding.abort();
}

/// Four relays: Zajel's ring now redirects, and call-probe follows the
/// redirects (as the app does) besides the forwarding: the contacts still
/// meet, pair and call with media both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_probe_contacts_following_redirects_on_four_relays_meet_and_call() {
    let fleet = Fleet::start(4).await;
    let signed = probes::signed_fleet(&fleet).await;
    assert_eq!(signed.len(), 4, "{signed:?}");
    let report = probes::call_across(&fleet, &signed, 0, 1, "ZZZZZZ").await;
    assert_eq!(report.error, None, "{report:?}");
    assert!(report.media_both_ways && report.authenticated, "{report:?}");
    let found = report.found.as_ref().expect("found by rendezvous");
    assert_eq!(found.peer_code, "ZZZZZZ");
    eprintln!(
        "call-probe contacts across four relays: matched {:.0} ms, paired {:.0} ms after registering (via {})",
        found.match_ms, found.paired_ms, found.relay
    );
}

/// Hostile input: a match whose relayId names a relay outside the signed
/// fleet (here: Bob's real relay, left out of Alice's fleet, as a relay
/// that made one up would be) is not dialled: Alice's line reports it and
/// opens no meeting connection; she never pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_match_naming_a_relay_outside_the_signed_fleet_is_not_dialled() {
    use call_probe::line::LineEvent;
    let fleet = Fleet::start(2).await;
    // Alice's fleet lists only her own relay.
    let (mut line, serving, _dirs) =
        alice_searching_for_bob(&fleet, vec![(fleet.id(0), fleet.ws_url(0))]).await;
    let not_dialled = line
        .wait_for(WAIT, "the match naming relay 1", |event| match event {
            LineEvent::RelayNotDialled {
                peer_code,
                relay_id,
            } => Some((peer_code.clone(), relay_id.clone())),
            LineEvent::ContactMatched { relay, .. } => {
                assert_ne!(*relay, fleet.ws_url(1), "relay 1 must not be dialled");
                None
            }
            LineEvent::MeetingFailed { .. } | LineEvent::PairMatched { .. } => {
                panic!("no meeting connection, no pairing: {event:?}")
            }
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(not_dialled, ("ZZZZZZ".to_string(), fleet.id(1)));
    // Relay 1 saw only Bob: no connection of Alice's registered there.
    assert_eq!(fleet.metric(1, "relay_registered_codes").await, Some(1));
    line.close().await;
    serving.abort();
}

/// Bob answering on relay 1 under the largest code (so Alice is the one to
/// go to his relay), and Alice's line on relay 0 searching for him with
/// `alice_fleet`.
async fn alice_searching_for_bob(
    fleet: &Fleet,
    alice_fleet: Vec<(String, String)>,
) -> (
    call_probe::line::PhoneLine,
    tokio::task::JoinHandle<
        Result<Vec<call_probe::answer::AnsweredCall>, call_probe::answer::AnswerError>,
    >,
    (tempfile::TempDir, tempfile::TempDir),
) {
    use call_probe::contacts::Contacts;
    use call_probe::identity::Identity;
    use call_probe::line::{ContactSearch, LineKeys, PhoneLine};
    use call_probe::line_options::LineOptions;
    use std::sync::{Arc, Mutex};

    let (alice_dir, bob_dir) = probes::contacts_paired_before();
    let (alice, _) = Identity::load_or_create(alice_dir.path()).unwrap();
    let mut answer =
        call_probe::answer::AnswerOptions::new(url::Url::parse(&fleet.url(1)).unwrap());
    answer.line.loopback = true;
    answer.line.step_timeout = WAIT;
    answer.line.identity =
        call_probe::line_options::IdentityChoice::StateDir(Some(bob_dir.path().to_path_buf()));
    answer.code = Some(zajel_wire::pairing::PairingCode::parse("ZZZZZZ").unwrap());
    let answerer = call_probe::answer::Answerer::start(answer).await.unwrap();
    let serving = tokio::spawn(answerer.serve(|_| {}));

    let registered = call_probe::client::connect_and_register_as(
        &url::Url::parse(&fleet.url(0)).unwrap(),
        &Default::default(),
        None,
        &alice,
        WAIT,
    )
    .await
    .unwrap();
    let contacts = Contacts::load(alice_dir.path()).unwrap();
    let bob = contacts.named("bob").unwrap().clone();
    let search = ContactSearch::new(
        alice.clone(),
        registered.code,
        vec![bob],
        Default::default(),
        WAIT,
    )
    .with_fleet(alice_fleet);
    let keys = LineKeys {
        identity: alice.clone(),
        contacts: Arc::new(Mutex::new(contacts)),
        new_contact_name: None,
    };
    let line = PhoneLine::start_searching(
        "caller",
        registered.session,
        registered.code,
        LineOptions::new(440.0).call_config(Vec::new()),
        false,
        Some(keys),
        None,
        Some(search),
    );
    (line, serving, (alice_dir, bob_dir))
}

/// Hostile input: the signed fleet's endpoint for Bob's relay answers with
/// another relay's key (here relay 0, Alice's own, standing in for whoever
/// holds that address now): the meeting connection is not used (it fails
/// the identity proof before `register`), and Alice falls back to her own
/// relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_cannot_prove_the_listed_key_is_not_used_to_meet() {
    use call_probe::line::LineEvent;
    let fleet = Fleet::start(2).await;
    let (mut line, serving, _dirs) = alice_searching_for_bob(
        &fleet,
        vec![
            (fleet.id(0), fleet.ws_url(0)),
            (fleet.id(1), fleet.ws_url(0)),
        ],
    )
    .await;
    let failed = line
        .wait_for(
            WAIT,
            "the meeting connection's failure",
            |event| match event {
                LineEvent::MeetingFailed { error, .. } => Some(error.clone()),
                LineEvent::PairMatched { .. } => panic!("no pairing: {event:?}"),
                _ => None,
            },
        )
        .await
        .unwrap();
    assert!(
        failed.contains("did not prove") && failed.contains(&fleet.id(1)),
        "{failed}"
    );
    line.close().await;
    serving.abort();
}
