//! Call authentication end to end through relay-lite (the in-process world, 127.0.0.1 only):
//! two honest lines authenticate each other; a payload changed in flight (a swapped DTLS
//! fingerprint, as a relay in the middle would send) ends `media_not_authenticated` on the side
//! that receives it; `--require-authenticated` refuses a peer without call authentication,
//! which otherwise still gets its call; a stranger's `call_offer` is ignored; remote loopback
//! candidates are dropped when not allowed. The hostile side here is a raw signaling session
//! ("mallory") that pairs like a client and then sends what it likes.

use std::time::Duration;

use call_probe::answer::{AnswerOptions, AnsweredCall, Answerer};
use call_probe::call::CallEvent;
use call_probe::client::{self, Registered};
use call_probe::config::{AnswerPolicy, CallConfig};
use call_probe::identity::Identity;
use call_probe::line::PhoneLine;
use call_probe::line_options::IdentityChoice;
use call_probe::probe_call::{run_call, run_call_moving_on, CallOptions, ServerTried};
use call_probe::report::{CallReport, EndReason};
use call_probe::world::LocalWorld;
use call_probe::ErrorKind;
use tokio::task::JoinHandle;
use zajel_client_net::signaling::SignalingSession;
use zajel_wire::call::{CallAnswer, CallAuth, CallAuthRole, CallOffer, CallPayload};
use zajel_wire::pairing::{decode_x25519_public_key, PairingCode};
use zajel_wire::signaling::{ClientMessage, ServerMessage};

const CALL_ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const HONEST_SDP: &str = "v=0\r\na=fingerprint:sha-256 AA:AA:AA\r\n";
const RELAY_SDP: &str = "v=0\r\na=fingerprint:sha-256 EE:EE:EE\r\n";

fn step() -> Duration {
    Duration::from_secs(
        std::env::var("PROBE_TEST_STEP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

type Serving = JoinHandle<Result<Vec<AnsweredCall>, call_probe::answer::AnswerError>>;

/// An answerer on loopback taking one call, set up by `configure`; its code, public key and
/// the task serving it.
async fn answerer(
    world: &LocalWorld,
    configure: impl FnOnce(&mut AnswerOptions),
) -> (PairingCode, String, Serving) {
    let mut options = AnswerOptions::new(world.relay_url());
    options.line.loopback = true;
    options.line.step_timeout = step();
    options.max_calls = Some(1);
    configure(&mut options);
    let answerer = Answerer::start(options).await.unwrap();
    let (code, key) = (answerer.code, answerer.public_key.clone());
    (code, key, tokio::spawn(answerer.serve(|_| {})))
}

/// The one call an answerer served.
async fn served(serving: Serving) -> CallReport {
    let mut calls = tokio::time::timeout(step(), serving)
        .await
        .expect("the answerer finished")
        .unwrap()
        .unwrap();
    assert_eq!(calls.len(), 1);
    calls.remove(0).report
}

fn caller_options(world: &LocalWorld, target: PairingCode) -> CallOptions {
    let mut options = CallOptions::new(world.relay_url(), target);
    options.line.loopback = true;
    options.line.step_timeout = step();
    options.duration = Duration::from_millis(600);
    options
}

/// A raw session registered with a fresh identity.
async fn mallory(world: &LocalWorld) -> Registered {
    client::connect_and_register(&world.relay_url(), &Default::default(), None, step())
        .await
        .unwrap()
}

/// Mallory's keys with the peer paired under `peer_key`: (MAC key, own key, peer key).
fn keys_with(mallory: &Registered, peer_key: &str) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let peer = decode_x25519_public_key(peer_key).unwrap();
    let auth = mallory.identity.peer_auth(peer, false).unwrap();
    (auth.mac_key, auth.own_key, auth.peer_key)
}

/// The next call message on `session` (other frames skipped).
async fn next_call(session: &mut SignalingSession) -> CallPayload {
    session
        .recv_until(
            step(),
            "a call message",
            |m| m.call_payload().map(|p| p.unwrap()),
            |_| {},
        )
        .await
        .unwrap()
}

/// Mallory asks `target` to pair and waits for `pair_matched`: the peer's public key.
async fn pair(session: &mut SignalingSession, target: PairingCode) -> String {
    session
        .send(ClientMessage::PairRequest {
            target_code: target,
            proposed_name: None,
        })
        .await
        .unwrap();
    session
        .recv_until(
            step(),
            "pair_matched",
            |m| match m {
                ServerMessage::PairMatched {
                    peer_public_key, ..
                } => Some(peer_public_key.clone()),
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_lines_through_relay_lite_authenticate_each_other() {
    let world = LocalWorld::start().await.unwrap();
    let (code, answer_key, serving) = answerer(&world, |_| {}).await;
    let report = run_call(&caller_options(&world, code)).await;
    assert_eq!(report.error, None, "{report:?}");
    assert!(report.authenticated, "{report:?}");
    assert_eq!(report.peer_key.as_deref(), Some(answer_key.as_str()));
    let call = report.call.as_ref().unwrap();
    assert!(call.authenticated && report.media_both_ways);
    let answered = served(serving).await;
    assert!(answered.authenticated, "{answered:?}");
    assert_eq!(answered.peer_key, report.own_key);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fingerprint_swapped_in_the_offer_ends_media_not_authenticated_at_the_answerer() {
    let world = LocalWorld::start().await.unwrap();
    let (code, _, serving) = answerer(&world, |_| {}).await;
    let mut mallory = mallory(&world).await;
    let peer_key = pair(&mut mallory.session, code).await;
    let (mac_key, own, peer) = keys_with(&mallory, &peer_key);
    // The caller's auth over its own fingerprint, the relay's fingerprint in the SDP.
    let auth = CallAuth::sign(
        &mac_key,
        CallAuthRole::Offer,
        CALL_ID,
        HONEST_SDP,
        &own,
        &peer,
    );
    let offer = CallOffer {
        call_id: CALL_ID.into(),
        sdp: RELAY_SDP.into(),
        with_video: false,
        auth: Some(auth),
    };
    mallory
        .session
        .send(ClientMessage::call(code, &offer.into()))
        .await
        .unwrap();
    let reply = next_call(&mut mallory.session).await;
    assert!(
        matches!(&reply, CallPayload::Hangup(h) if h.call_id == CALL_ID),
        "{reply:?}"
    );
    let answered = served(serving).await;
    assert!(
        matches!(answered.end, EndReason::MediaNotAuthenticated { .. }),
        "{:?}",
        answered.end
    );
    assert!(!answered.authenticated);
    world.stop().await;
}

/// Mallory answers like an answerer (accepts the pairing, then the call), with its own DTLS
/// fingerprint in the answer under an `auth` made for another.
async fn answer_with_a_swapped_fingerprint(mut mallory: Registered) {
    let (from, caller_key) = mallory
        .session
        .recv_until(
            step(),
            "pair_incoming",
            |m| match m {
                ServerMessage::PairIncoming {
                    from_code,
                    from_public_key,
                    ..
                } => Some((from_code.clone(), from_public_key.clone())),
                _ => None,
            },
            |_| {},
        )
        .await
        .unwrap();
    let from = PairingCode::parse(&from).unwrap();
    mallory
        .session
        .send(ClientMessage::PairResponse {
            target_code: from,
            accepted: true,
        })
        .await
        .unwrap();
    let CallPayload::Offer(offer) = next_call(&mut mallory.session).await else {
        panic!("an offer first");
    };
    assert!(offer.auth.is_some(), "the caller signs its offer");
    let (mac_key, own, peer) = keys_with(&mallory, &caller_key);
    let answer = CallAnswer {
        call_id: offer.call_id.clone(),
        sdp: RELAY_SDP.into(),
        auth: Some(CallAuth::sign(
            &mac_key,
            CallAuthRole::Answer,
            &offer.call_id,
            HONEST_SDP,
            &own,
            &peer,
        )),
    };
    mallory
        .session
        .send(ClientMessage::call(from, &answer.into()))
        .await
        .unwrap();
    // Keep the session until the caller hangs up (its candidates may come first).
    while !matches!(
        next_call(&mut mallory.session).await,
        CallPayload::Hangup(_)
    ) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fingerprint_swapped_in_the_answer_ends_media_not_authenticated_at_the_caller() {
    let world = LocalWorld::start().await.unwrap();
    let mallory = mallory(&world).await;
    let options = caller_options(&world, mallory.code);
    let caller = tokio::spawn(async move { run_call(&options).await });
    answer_with_a_swapped_fingerprint(mallory).await;
    let report = tokio::time::timeout(step() * 2, caller)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        report.error_kind,
        Some(ErrorKind::MediaNotAuthenticated),
        "{report:?}"
    );
    let call = report.call.as_ref().unwrap();
    assert!(matches!(call.end, EndReason::MediaNotAuthenticated { .. }));
    assert!(!report.authenticated && !report.media_both_ways);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_that_fails_authentication_moves_on_to_the_next_server() {
    // On the first relay the code is held by mallory, on the second by the real answerer.
    let hostile = LocalWorld::start().await.unwrap();
    let honest = LocalWorld::start().await.unwrap();
    let mallory = mallory(&hostile).await;
    let code = mallory.code;
    let (_, answer_key, serving) = answerer(&honest, |o| o.code = Some(code)).await;
    let mallory_answers = tokio::spawn(answer_with_a_swapped_fingerprint(mallory));
    let servers = [hostile.relay_url(), honest.relay_url()];
    let options = caller_options(&hostile, code);
    let (report, tried) = run_call_moving_on(&options, &servers).await;
    assert_eq!(
        tried,
        [ServerTried {
            server: hostile.relay_url().to_string(),
            error_kind: Some(ErrorKind::MediaNotAuthenticated),
        }]
    );
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(report.server, honest.relay_url().to_string());
    assert!(report.authenticated && report.media_both_ways);
    assert_eq!(report.peer_key.as_deref(), Some(answer_key.as_str()));
    assert!(served(serving).await.authenticated);
    mallory_answers.await.unwrap();
    // A failure of another kind does not move on: a code nobody holds (the relay answers
    // that as a live code that never answers, so the pairing step times out).
    let nobody = PairingCode::parse("ZZZ222").unwrap();
    let mut options = caller_options(&honest, nobody);
    options.line.step_timeout = Duration::from_millis(500);
    let (report, tried) = run_call_moving_on(&options, &servers).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout), "{report:?}");
    assert!(tried.is_empty());
    hostile.stop().await;
    honest.stop().await;
}

/// A line with no identity (like Zajel's apps, browsers and aiortc: no `auth`) calling `code`.
async fn auth_less_caller(world: &LocalWorld, code: PairingCode) -> PhoneLine {
    let registered = mallory(world).await;
    let mut line = PhoneLine::start(
        "auth-less",
        registered.session,
        registered.code,
        CallConfig::loopback(),
        false,
    );
    line.pair_with(code, step()).await.unwrap();
    line.phone.engine.place_call(false).await.unwrap();
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_authenticated_refuses_a_peer_without_auth_which_otherwise_gets_its_call() {
    let world = LocalWorld::start().await.unwrap();
    // Without the flag: the call goes through, unauthenticated.
    let (code, _, serving) = answerer(&world, |_| {}).await;
    let mut line = auth_less_caller(&world, code).await;
    line.phone
        .wait_for(step(), "the answerer's tone", |e| {
            matches!(e, CallEvent::ToneDetected { .. }).then_some(())
        })
        .await
        .unwrap();
    line.phone.engine.hangup().await.unwrap();
    let answered = served(serving).await;
    assert_eq!(answered.end, EndReason::HangupRemote);
    assert!(!answered.authenticated);
    line.close().await;
    // With it: refused with call_hangup.
    let (code, _, serving) = answerer(&world, |o| o.line.require_authenticated = true).await;
    let mut line = auth_less_caller(&world, code).await;
    let ended = line.phone.ended(step()).await.unwrap();
    assert_eq!(ended.end, EndReason::HangupRemote);
    let answered = served(serving).await;
    assert!(
        matches!(&answered.end, EndReason::MediaNotAuthenticated { detail } if detail.contains("required")),
        "{:?}",
        answered.end
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strangers_call_offer_is_ignored() {
    let world = LocalWorld::start().await.unwrap();
    let (code, _, serving) = answerer(&world, |_| {}).await;
    // A stranger who never paired sends an offer and a loopback candidate.
    let mut stranger = mallory(&world).await;
    let offer = CallOffer {
        call_id: CALL_ID.into(),
        sdp: HONEST_SDP.into(),
        with_video: false,
        auth: None,
    };
    stranger
        .session
        .send(ClientMessage::call(code, &offer.into()))
        .await
        .unwrap();
    // Then a paired caller calls: the answerer's one call is that one.
    let report = run_call(&caller_options(&world, code)).await;
    assert_eq!(report.error, None, "{report:?}");
    let answered = served(serving).await;
    assert_eq!(
        Some(answered.call_id.as_str()),
        report.call.as_ref().map(|c| c.call_id.as_str())
    );
    assert_ne!(answered.call_id, CALL_ID);
    // The stranger got nothing back (everything before the pong is looked at).
    stranger.session.send(ClientMessage::Ping).await.unwrap();
    let mut frames = Vec::new();
    stranger
        .session
        .recv_until(
            step(),
            "pong",
            |m| matches!(m, ServerMessage::Pong).then_some(()),
            |m| frames.push(m),
        )
        .await
        .unwrap();
    assert!(
        frames.iter().all(|m| m.call_payload().is_none()),
        "{frames:?}"
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_loopback_candidates_are_dropped_when_not_allowed() {
    let world = LocalWorld::start().await.unwrap();
    let registered = mallory(&world).await;
    let strict = CallConfig {
        answer_policy: AnswerPolicy::Accept,
        allow_loopback_candidates: false,
        ..CallConfig::loopback()
    };
    let mut callee = PhoneLine::start("strict", registered.session, registered.code, strict, true);
    let mut caller = auth_less_caller(&world, callee.code).await;
    // Every host candidate of the caller is on 127.0.0.1: the callee drops them all.
    let _ = callee
        .phone
        .wait_for(step(), "media or the end", |e| {
            matches!(e, CallEvent::FirstRtp { .. } | CallEvent::Ended(_)).then_some(())
        })
        .await;
    let _ = caller.phone.engine.hangup().await;
    let report = callee.phone.ended(step()).await.unwrap();
    assert!(report.ice.remote_candidates_dropped > 0, "{:?}", report.ice);
    assert_eq!(report.ice.remote_candidates, 0, "{:?}", report.ice);
    let _ = caller.phone.ended(step()).await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contact_that_authenticated_before_is_refused_without_auth() {
    let world = LocalWorld::start().await.unwrap();
    let (answer_state, call_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let answer_dir = answer_state.path().to_path_buf();
    let mut options = AnswerOptions::new(world.relay_url());
    options.line.loopback = true;
    options.line.step_timeout = step();
    options.line.identity = IdentityChoice::StateDir(Some(answer_dir));
    options.max_calls = Some(2);
    let answerer = Answerer::start(options).await.unwrap();
    let code = answerer.code;
    let (reported, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let serving = tokio::spawn(answerer.serve(move |call| {
        let _ = reported.send(call.report.authenticated);
    }));
    // A first call, authenticated: the caller becomes a contact that authenticated (recorded
    // before the answerer reports the call).
    let mut first = caller_options(&world, code);
    first.line.identity = IdentityChoice::StateDir(Some(call_state.path().to_path_buf()));
    let report = run_call(&first).await;
    assert!(report.authenticated, "{report:?}");
    let first_reported = tokio::time::timeout(step(), reports.recv()).await.unwrap();
    assert_eq!(first_reported, Some(true));
    // The same key again (a relay that strips auth would look like this): a downgrade.
    let (identity, created) = Identity::load_or_create(call_state.path()).unwrap();
    assert!(!created);
    let mut again = client::connect_and_register_as(
        &world.relay_url(),
        &Default::default(),
        None,
        &identity,
        step(),
    )
    .await
    .unwrap();
    pair(&mut again.session, code).await;
    let offer = CallOffer {
        call_id: CALL_ID.into(),
        sdp: HONEST_SDP.into(),
        with_video: false,
        auth: None,
    };
    again
        .session
        .send(ClientMessage::call(code, &offer.into()))
        .await
        .unwrap();
    let reply = next_call(&mut again.session).await;
    assert!(matches!(reply, CallPayload::Hangup(_)), "{reply:?}");
    let calls = tokio::time::timeout(step(), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(calls[0].report.authenticated);
    assert!(
        matches!(&calls[1].report.end, EndReason::MediaNotAuthenticated { detail } if detail.contains("downgrade")),
        "{:?}",
        calls[1].report.end
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_is_not_the_verified_server_on_the_calls_connection_is_left() {
    // Discovery verified a key for the first address; what answers there on the call's own
    // connection proves another (the first relay's own key): the call leaves it before pairing.
    let swapped = LocalWorld::start().await.unwrap();
    let honest = LocalWorld::start().await.unwrap();
    let (code, answer_key, serving) = answerer(&honest, |_| {}).await;
    let verified_elsewhere = zajel_wire::keys::server_id_for(
        &call_probe::world::random_signing_key()
            .unwrap()
            .verifying_key(),
    );
    let mut options = caller_options(&swapped, code);
    options.proven_servers = vec![
        (swapped.relay_url().to_string(), verified_elsewhere),
        (
            honest.relay_url().to_string(),
            honest.relay.server_id().to_string(),
        ),
    ];
    let servers = [swapped.relay_url(), honest.relay_url()];
    let (report, tried) = run_call_moving_on(&options, &servers).await;
    assert_eq!(
        tried,
        [ServerTried {
            server: swapped.relay_url().to_string(),
            error_kind: Some(ErrorKind::IdentityMismatch),
        }]
    );
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(
        report.server_proven.as_deref(),
        Some(honest.relay.server_id())
    );
    assert!(report.authenticated && report.media_both_ways);
    assert_eq!(report.peer_key.as_deref(), Some(answer_key.as_str()));
    served(serving).await;
    swapped.stop().await;
    honest.stop().await;
}
