//! Contacts found again through rendezvous, end to end on relay-lite (the in-process world,
//! 127.0.0.1 only): two probes with their own state folders pair once by code; in later runs
//! with fresh pairing codes the caller finds the answerer by `--contact` (rendezvous, as
//! Zajel's app does) and calls it with media both ways, authenticated — once with the
//! answerer's code the smaller (it sends `pair_request`, the caller accepts its key), once the
//! larger (the caller sends it). A stranger who computes the daily points from the two public
//! keys (they are public) meets the caller at rendezvous, but its `pair_incoming` is not
//! accepted and the run ends `contact_not_found`. An unknown contact name is a clear error
//! (library and command line, exit 2). A relay that redirects the points (a stub primary
//! relay answering `rendezvous_partial`) is followed as the app does: a second connection to
//! relay-lite with the same code and key meets the contact there, and `pair_request` goes out on
//! that redirect connection, where the contact is (the app sends it on its primary connection,
//! which cannot reach a contact on another relay: the contact got no `pair_incoming` before).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use call_probe::answer::{AnswerOptions, AnsweredCall, Answerer};
use call_probe::client;
use call_probe::contacts::Contacts;
use call_probe::line_options::IdentityChoice;
use call_probe::probe_call::{run_call, CallOptions, ProbeCallReport};
use call_probe::world::LocalWorld;
use call_probe::ErrorKind;
use tokio::task::JoinHandle;
use zajel_wire::pairing::{decode_x25519_public_key, PairingCode};
use zajel_wire::peer_keys;
use zajel_wire::rendezvous::{RegisterRendezvous, RelayRequest};
use zajel_wire::signaling::{ClientMessage, ServerMessage};

fn step() -> Duration {
    Duration::from_secs(
        std::env::var("PROBE_TEST_STEP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

type Serving = JoinHandle<Result<Vec<AnsweredCall>, call_probe::answer::AnswerError>>;

/// An answerer on loopback keeping its identity and contacts in `state`, taking one call.
async fn answerer(
    world: &LocalWorld,
    state: &Path,
    code: Option<&str>,
) -> (PairingCode, String, usize, Serving) {
    let mut options = AnswerOptions::new(world.relay_url());
    options.line.loopback = true;
    options.line.step_timeout = step();
    options.line.identity = IdentityChoice::StateDir(Some(state.to_path_buf()));
    options.line.contact_name = Some("alice".into());
    options.code = code.map(|c| PairingCode::parse(c).unwrap());
    options.max_calls = Some(1);
    let answerer = Answerer::start(options).await.unwrap();
    let found = (
        answerer.code,
        answerer.public_key.clone(),
        answerer.rendezvous_contacts,
    );
    (
        found.0,
        found.1,
        found.2,
        tokio::spawn(answerer.serve(|_| {})),
    )
}

async fn served(serving: Serving) -> AnsweredCall {
    let mut calls = tokio::time::timeout(step() * 2, serving)
        .await
        .expect("the answerer finished")
        .unwrap()
        .unwrap();
    assert_eq!(calls.len(), 1);
    calls.remove(0)
}

fn caller(options: &mut CallOptions, state: &Path) {
    options.line.loopback = true;
    options.line.step_timeout = step();
    options.line.identity = IdentityChoice::StateDir(Some(state.to_path_buf()));
    options.line.contact_name = Some("bob".into());
    options.duration = Duration::from_millis(600);
}

/// Pairs the caller (`alice_dir`) and answerer (`bob_dir`) once by code; returns Bob's key.
async fn first_pairing(world: &LocalWorld, alice_dir: &Path, bob_dir: &Path) -> String {
    let (code, bob_key, contacts, serving) = answerer(world, bob_dir, None).await;
    assert_eq!(contacts, 0, "no contacts yet: nothing to register");
    let mut options = CallOptions::new(world.relay_url(), code);
    caller(&mut options, alice_dir);
    let report = run_call(&options).await;
    assert_eq!(report.error, None, "{report:?}");
    assert!(report.found.is_none(), "by code, not by rendezvous");
    served(serving).await;
    bob_key
}

/// A call to the contact `bob` from `alice_dir`.
async fn call_bob(world: &LocalWorld, alice_dir: &Path) -> ProbeCallReport {
    let mut options = CallOptions::to_contact(world.relay_url(), "bob");
    caller(&mut options, alice_dir);
    options.line.require_authenticated = true;
    run_call(&options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contacts_paired_once_meet_again_by_rendezvous_with_fresh_codes_and_call() {
    let world = LocalWorld::start().await.unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob_key = first_pairing(&world, alice_dir.path(), bob_dir.path()).await;

    // Each side remembers the other under the name its run gave (--name).
    let at_alice = Contacts::load(alice_dir.path()).unwrap();
    let bob = at_alice.named("bob").unwrap();
    assert_eq!(bob.key, bob_key);
    assert!(bob.authenticated);
    let at_bob = Contacts::load(bob_dir.path()).unwrap();
    let alice_key = at_bob.named("alice").unwrap().key.clone();

    // The answerer's code the smaller ("2" sorts before letters): it sends pair_request,
    // the caller accepts it for Bob's key; then the larger: the caller sends it.
    for (bob_code, bob_requests) in [("222222", true), ("ZZZZZZ", false)] {
        let (code, _, contacts, serving) = answerer(&world, bob_dir.path(), Some(bob_code)).await;
        assert_eq!(contacts, 1, "the answerer registers its contact's points");
        let report = call_bob(&world, alice_dir.path()).await;
        assert_eq!(report.error, None, "{bob_code}: {report:?}");
        let found = report.found.as_ref().expect("found by rendezvous");
        assert_eq!(found.how, "rendezvous");
        assert_eq!(found.contact, "bob");
        assert_eq!(found.relay, world.relay_url().to_string());
        assert!(!found.via_redirect);
        assert_eq!(found.peer_code, code.as_str());
        assert_eq!(found.we_requested, !bob_requests, "{found:?}");
        assert!(found.match_ms >= 0.0 && found.match_ms <= found.paired_ms);
        assert_eq!(report.peer_code, bob_code);
        assert_eq!(report.peer_key.as_deref(), Some(bob_key.as_str()));
        assert!(report.authenticated && report.media_both_ways, "{report:?}");
        let answered = served(serving).await;
        assert!(answered.report.authenticated);
        assert!(
            answered.report.tone.detected.is_some(),
            "the answerer heard the caller"
        );
    }
    // No new contacts: each side still knows exactly the other.
    let at_bob = Contacts::load(bob_dir.path()).unwrap();
    assert_eq!(at_bob.all().count(), 1);
    assert_eq!(at_bob.named("alice").unwrap().key, alice_key);
    assert_eq!(Contacts::load(alice_dir.path()).unwrap().all().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strangers_pair_incoming_is_not_accepted_and_the_contact_is_not_found() {
    let world = LocalWorld::start().await.unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bob_key = first_pairing(&world, alice_dir.path(), bob_dir.path()).await;
    let alice_key = Contacts::load(bob_dir.path())
        .unwrap()
        .named("alice")
        .unwrap()
        .key
        .clone();

    // Mallory (Bob is offline) knows both public keys, so the daily points; she registers
    // them first under the smallest code, so that the caller waits for her pair_request.
    let mut mallory = client::connect_and_register(
        &world.relay_url(),
        &Default::default(),
        Some(PairingCode::parse("222222").unwrap()),
        step(),
    )
    .await
    .unwrap();
    let (a, b) = (
        decode_x25519_public_key(&alice_key).unwrap(),
        decode_x25519_public_key(&bob_key).unwrap(),
    );
    let points = peer_keys::daily_points(&a, &b, zajel_client_net::now_ms() as i64).to_vec();
    let frame = RelayRequest::RegisterRendezvous(RegisterRendezvous::as_the_app_sends(
        "222222",
        &points,
        &[],
    ));
    mallory.session.send_text(frame.to_text()).await.unwrap();

    let calling = tokio::spawn({
        let world_url = world.relay_url();
        let alice_dir = alice_dir.path().to_path_buf();
        async move {
            let mut options = CallOptions::to_contact(world_url, "bob");
            caller(&mut options, &alice_dir);
            options.find_timeout = Duration::from_secs(4);
            run_call(&options).await
        }
    });
    // Mallory learns the caller's fresh code at rendezvous (pushed to her if she registered
    // first, else in her own result), and asks to pair.
    let caller_code = mallory
        .session
        .recv_until(
            step(),
            "the caller's code at rendezvous",
            |m| match m {
                ServerMessage::Unknown(u) if u.type_name == "rendezvous_match" => {
                    Some(u.fields["match"]["peerId"].as_str().unwrap().to_string())
                }
                ServerMessage::Unknown(u) if u.type_name == "rendezvous_result" => u.fields
                    ["liveMatches"]
                    .get(0)
                    .map(|m| m["peerId"].as_str().unwrap().to_string()),
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap();
    mallory
        .session
        .send(ClientMessage::PairRequest {
            target_code: PairingCode::parse(&caller_code).unwrap(),
            proposed_name: None,
        })
        .await
        .unwrap();

    let report = tokio::time::timeout(step() * 2, calling)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::ContactNotFound),
        "{report:?}"
    );
    assert!(report.error.as_deref().unwrap().contains("\"bob\""));
    assert!(report.found.is_none() && report.call.is_none());
    // Mallory never got pair_matched.
    let mut frames = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(300), mallory.session.recv()).await
    {
        frames.push(frame);
    }
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ServerMessage::PairMatched { .. })),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_contact_is_a_clear_error() {
    let world = LocalWorld::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut options = CallOptions::to_contact(world.relay_url(), "nobody");
    caller(&mut options, dir.path());
    let report = run_call(&options).await;
    assert_eq!(report.error_kind, Some(ErrorKind::UnknownContact));
    assert!(report
        .error
        .as_deref()
        .unwrap()
        .contains("no contact named \"nobody\""));

    // The command line says so before touching the network, exit 2 (bad flags).
    let output = Command::new(env!("CARGO_BIN_EXE_call-probe"))
        .args([
            "call",
            "--contact",
            "nobody",
            "--server",
            "ws://127.0.0.1:9",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no contact named \"nobody\""), "{stderr}");
    // And `contacts` lists, renames and removes.
    let contacts = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_call-probe"))
            .arg("contacts")
            .args(args)
            .arg("--state-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let mut seeded = Contacts::load(dir.path()).unwrap();
    seeded
        .paired("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "carol", 1)
        .unwrap();
    assert_eq!(
        contacts(&["rename", "carol", "Carol"]).status.code(),
        Some(0)
    );
    let listed = contacts(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["contacts"][0]["name"], "Carol");
    assert_eq!(contacts(&["remove", "carol"]).status.code(), Some(2));
    assert_eq!(contacts(&["remove", "Carol"]).status.code(), Some(0));
    assert!(Contacts::load(dir.path()).unwrap().all().next().is_none());
}

/// A primary relay that keeps no point: every `register_rendezvous` is answered with a
/// `rendezvous_partial` redirecting all its items to `redirect_to`. Frames it gets are sent to
/// the returned channel (as JSON).
async fn redirecting_relay(
    redirect_to: String,
) -> (
    url::Url,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
    let (seen, frames) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let hello = r#"{"type":"server_info","serverId":"ed25519:stub","endpoint":"ws://stub","region":"x"}"#;
        let _ = ws.send(Message::text(hello)).await;
        while let Some(Ok(frame)) = ws.next().await {
            let Message::Text(text) = frame else { continue };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            let reply = match frame["type"].as_str() {
                Some("ping") => {
                    let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                    continue;
                }
                Some("register") => Some(serde_json::json!({"type": "registered",
                    "pairingCode": frame["pairingCode"], "serverId": "ed25519:stub"})),
                Some("register_rendezvous") => {
                    Some(serde_json::json!({"type": "rendezvous_partial",
                    "local": {"liveMatches": [], "deadDrops": []},
                    "redirects": [{"serverId": "ed25519:other", "endpoint": redirect_to,
                        "dailyPoints": frame["daily_points"], "hourlyTokens": frame["hourly_tokens"]}]}))
                }
                _ => None,
            };
            if let Some(reply) = reply {
                let _ = ws.send(Message::text(reply.to_string())).await;
            }
            let _ = seen.send(frame);
        }
    });
    (url, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirect_is_followed_and_the_contact_met_on_the_other_relay() {
    use call_probe::contacts::Contact;
    use call_probe::identity::Identity;
    use call_probe::line::{ContactSearch, LineEvent, LineKeys, PhoneLine};
    use call_probe::line_options::LineOptions;
    use call_probe::rendezvous::registration;
    use std::sync::{Arc, Mutex};

    let world = LocalWorld::start().await.unwrap();
    let (alice, bob) = (
        Identity::ephemeral().unwrap(),
        Identity::ephemeral().unwrap(),
    );
    let contact = |who: &Identity| Contact {
        name: "x".into(),
        key: who.public_base64(),
        first_seen_ms: 0,
        last_seen_ms: 0,
        authenticated: true,
    };
    let now = zajel_client_net::now_ms() as i64;
    // Bob waits on relay-lite with Alice's points, under the largest code.
    let mut bob_line = client::connect_and_register_as(
        &world.relay_url(),
        &Default::default(),
        Some(PairingCode::parse("ZZZZZZ").unwrap()),
        &bob,
        step(),
    )
    .await
    .unwrap();
    let frame =
        RelayRequest::RegisterRendezvous(registration(&bob, "ZZZZZZ", [&contact(&alice)], now));
    bob_line.session.send_text(frame.to_text()).await.unwrap();
    // Stored before Alice registers: otherwise (a loaded machine) Alice's entries
    // could be stored first and Bob would get his match in this reply, not as a push.
    bob_line
        .session
        .recv_until(
            step(),
            "rendezvous_result",
            |m| match m {
                ServerMessage::Unknown(u) if u.type_name == "rendezvous_result" => Some(()),
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap();

    // Alice's primary relay redirects her points to relay-lite.
    let relay_lite = world.relay_url().to_string();
    let (primary, mut primary_frames) = redirecting_relay(relay_lite.clone()).await;
    let registered =
        client::connect_and_register_as(&primary, &Default::default(), None, &alice, step())
            .await
            .unwrap();
    let code = registered.code;
    let search = ContactSearch::new(
        alice.clone(),
        code,
        vec![contact(&bob)],
        Default::default(),
        step(),
    );
    let keys = LineKeys {
        identity: alice.clone(),
        contacts: Arc::new(Mutex::new(Contacts::in_memory())),
        new_contact_name: None,
    };
    let mut line = PhoneLine::start_searching(
        "caller",
        registered.session,
        code,
        LineOptions::new(440.0).call_config(Vec::new()),
        false,
        Some(keys),
        None,
        Some(search),
    );
    // Met through the redirect's relay; Alice's code is the smaller, so she requests.
    let matched = line
        .wait_for(
            step(),
            "the contact via the redirect",
            |event| match event {
                LineEvent::ContactMatched {
                    peer_code,
                    relay,
                    we_request,
                } => Some((peer_code.clone(), relay.clone(), *we_request)),
                _ => None,
            },
        )
        .await
        .unwrap();
    assert_eq!(matched, ("ZZZZZZ".to_string(), relay_lite, true));
    // The redirect connection registered Alice's code on relay-lite: Bob got it pushed.
    let pushed = bob_line
        .session
        .recv_until(
            step(),
            "rendezvous_match",
            |m| match m {
                ServerMessage::Unknown(u) if u.type_name == "rendezvous_match" => {
                    Some(u.fields["match"]["peerId"].as_str().unwrap().to_string())
                }
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(pushed, code.as_str());
    // Alice's pair_request went on the redirect connection, where Bob is.
    let incoming = bob_line
        .session
        .recv_until(
            step(),
            "pair_incoming",
            |m| match m {
                ServerMessage::PairIncoming { from_code, .. } => Some(from_code.clone()),
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(incoming, code.as_str());
    // The primary saw register, then register_rendezvous as the app sends it, and no
    // pair_request.
    let mut kinds = Vec::new();
    while let Ok(Some(frame)) =
        tokio::time::timeout(Duration::from_millis(500), primary_frames.recv()).await
    {
        if frame["type"] == "register_rendezvous" {
            assert_eq!(frame["peerId"], code.as_str());
            assert_eq!(frame["daily_points"].as_array().unwrap().len(), 3);
            assert_eq!(frame["hourly_tokens"].as_array().unwrap().len(), 6);
            assert_eq!(frame["dead_drops"], serde_json::json!({}));
        }
        kinds.push(frame["type"].as_str().unwrap().to_string());
        if kinds.len() == 2 {
            break;
        }
    }
    assert_eq!(kinds, ["register", "register_rendezvous"]);
    assert!(
        primary_frames.try_recv().is_err(),
        "no pair_request on the primary"
    );
    line.close().await;
}
