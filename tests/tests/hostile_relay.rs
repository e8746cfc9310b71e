//! The attack as a test (issue 13 item 3): `call-probe call` and `call-probe
//! answer` (child processes, 127.0.0.1 only) pair and call through the
//! harness's hostile relay (`tests::hostile_relay`, in this process) in front
//! of an honest relay-lite (a child).
//!
//! Each test first shows that the relay did what its mode says (its tally:
//! calls intercepted, payloads rewritten, its own peers' reports), so a
//! passing check on the endpoints is a check against a real attacker.
//!
//! Needs the binaries: `cargo build -p relay-lite -p call-probe` (or
//! `cargo build --workspace --bins`).

use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tests::censorship_world::{run_to_end, Finished};
use tests::hostile_relay::{HostileRelay, HostileRelayConfig, Mode, Tally};
use tests::process::ChildProcess;
use tests::registry_host::binary;
use tests::relay_child::RelayChild;
use tokio_tungstenite::tungstenite::Message;
use url::Url;
use zajel_wire::signature::IDENTITY_DOMAIN;

/// The tone `call-probe call` sends, and the one `call-probe answer` sends (Hz).
const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 660.0;
const TOLERANCE_HZ: f64 = 5.0;

/// The calls share the machine's cores: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn step() -> Duration {
    Duration::from_secs(
        std::env::var("ZAJEL_HOSTILE_STEP_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

/// relay-lite (a child) and the hostile relay in front of it.
struct Stage {
    honest: RelayChild,
    hostile: HostileRelay,
}

async fn stage(mode: Mode) -> Stage {
    let honest = tokio::task::block_in_place(|| RelayChild::start(&[], step()))
        .expect("start relay-lite (cargo build -p relay-lite)");
    let upstream = Url::parse(&honest.url()).expect("relay URL");
    let hostile = HostileRelay::start_loopback(HostileRelayConfig::loopback(mode, upstream))
        .await
        .expect("hostile relay listens");
    Stage { honest, hostile }
}

/// `call-probe answer --once` on `server` (a fresh identity): the process,
/// its pairing code and its public key.
fn start_answerer(server: &str, extra: &[&str]) -> (ChildProcess, String, String) {
    let mut command = Command::new(binary("call-probe").expect("cargo build -p call-probe"));
    command
        .args([
            "answer",
            "--once",
            "--server",
            server,
            "--ephemeral-identity",
        ])
        .args(["--allow-private", "--no-cache", "--loopback", "--json"])
        .args(["--step-timeout", &step().as_secs().to_string()])
        .args(extra);
    let mut answerer = ChildProcess::spawn("call-probe answer", command).expect("answerer runs");
    let registered = tokio::task::block_in_place(|| {
        answerer.wait_for(step(), |line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|event| event["event"] == "registered")
        })
    })
    .expect("the answerer registers");
    let code = registered["code"].as_str().expect("a code").to_string();
    let key = registered["publicKey"].as_str().expect("a key").to_string();
    (answerer, code, key)
}

/// `call-probe call CODE --server server` to its end.
async fn run_caller(server: &str, code: &str, extra: &[&str]) -> (Finished, Value) {
    let mut command = Command::new(binary("call-probe").expect("cargo build -p call-probe"));
    command
        .args(["call", code, "--server", server, "--ephemeral-identity"])
        .args(["--allow-private", "--no-cache", "--loopback", "--json"])
        .args(["--duration", "1", "--step-timeout"])
        .arg(step().as_secs().to_string())
        .args(extra);
    let finished = tokio::task::spawn_blocking(move || run_to_end(command, step() * 4))
        .await
        .expect("join")
        .expect("the caller finishes");
    let json = serde_json::from_str(&finished.stdout).unwrap_or_else(|e| {
        panic!(
            "the caller printed no JSON ({e}): exit {:?}\n{}\n{}",
            finished.code, finished.stdout, finished.stderr
        )
    });
    (finished, json)
}

/// The answerer's `call_ended` event (its report of the call).
fn answerer_report(answerer: &mut ChildProcess) -> Value {
    tokio::task::block_in_place(|| {
        answerer.wait_for(step(), |line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|event| event["event"] == "call_ended")
        })
    })
    .unwrap_or_else(|e| panic!("the answerer reported no call: {e}\n{}", answerer.output()))
}

fn heard(report: &Value) -> Option<f64> {
    report["tone"]["detected"]["frequency_hz"].as_f64()
}

fn near(hz: Option<f64>, expected: f64) -> bool {
    hz.is_some_and(|hz| (hz - expected).abs() <= TOLERANCE_HZ)
}

/// Waits until the relay's engines of its first intercepted call have both reported.
async fn intercepted_reports(hostile: &HostileRelay) -> Tally {
    hostile
        .wait_for(step(), |t| {
            t.calls
                .first()
                .is_some_and(|c| c.facing_caller.is_some() && c.facing_callee.is_some())
        })
        .await
        .unwrap_or_else(|t| panic!("the relay's peers never ended: {t:#?}"))
}

/// The attacker is real: against a caller and callee that do not insist on
/// authentication, the relay's own peers carry the call. The caller reports
/// media both ways, but its media went to the relay's peer (the port ICE
/// chose is the relay engine's), which heard the caller's tone; the callee
/// talked to the relay's other peer. Nothing the caller sees shows it, except
/// that the call is not authenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strip_auth_intercepts_a_call_whose_ends_do_not_insist_on_authentication() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::StripAuth).await;
    let (mut answerer, code, _) = start_answerer(&stage.hostile.url, &[]);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &[]).await;
    let call = &out["call"];
    assert_eq!(
        finished.code,
        Some(0),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(call["media_both_ways"], true, "{call:#}");
    assert!(near(call["heard_hz"].as_f64(), CALLEE_HZ), "{call:#}");
    let tally = intercepted_reports(&stage.hostile).await;
    assert_eq!(tally.calls_intercepted, 1, "{tally:#?}");
    assert!(tally.payloads_rewritten >= 2, "{tally:#?}");
    let intercepted = &tally.calls[0];
    assert_eq!(intercepted.callee_code, code);
    let facing_caller = serde_json::to_value(intercepted.facing_caller.as_ref().unwrap()).unwrap();
    let facing_callee = serde_json::to_value(intercepted.facing_callee.as_ref().unwrap()).unwrap();
    // The caller's media went to the relay's peer, which heard the caller.
    assert_eq!(
        call["call"]["ice"]["selected_pair"]["remote"]["port"],
        facing_caller["ice"]["selected_pair"]["local"]["port"],
        "caller {:#}\nrelay's peer {facing_caller:#}",
        call["call"]["ice"]
    );
    assert!(near(heard(&facing_caller), CALLER_HZ), "{facing_caller:#}");
    assert!(facing_caller["rtp"]["packets_received"].as_u64() > Some(10));
    // The callee talked to the relay's other peer (and heard its tone).
    assert!(near(heard(&facing_callee), CALLEE_HZ), "{facing_callee:#}");
    let callee = answerer_report(&mut answerer);
    assert!(near(heard(&callee["report"]), CALLER_HZ), "{callee:#}");
    assert_eq!(
        callee["report"]["ice"]["selected_pair"]["remote"]["port"],
        facing_callee["ice"]["selected_pair"]["local"]["port"],
        "{callee:#}"
    );
    // What shows it: neither side is authenticated.
    assert_eq!(call["authenticated"], false, "{call:#}");
    assert_eq!(callee["report"]["authenticated"], false, "{callee:#}");
    assert!(tally.auth_stripped >= 2, "{tally:#?}");
    drop(stage.honest);
}

/// The honest mode is a pure proxy with a server identity of its own: the
/// call goes end to end, nothing is intercepted, and the answerer was told
/// the hostile relay's server id (not the upstream's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_mode_relays_the_call_untouched() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::Honest).await;
    let (mut answerer, code, _) = start_answerer(&stage.hostile.url, &[]);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &[]).await;
    assert_eq!(
        finished.code,
        Some(0),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(out["call"]["media_both_ways"], true, "{out:#}");
    assert!(near(out["call"]["heard_hz"].as_f64(), CALLEE_HZ));
    let callee = answerer_report(&mut answerer);
    assert!(near(heard(&callee["report"]), CALLER_HZ), "{callee:#}");
    assert_eq!(out["call"]["authenticated"], true, "{out:#}");
    assert_eq!(callee["report"]["authenticated"], true, "{callee:#}");
    let tally = stage.hostile.tally();
    assert_eq!(tally.calls_intercepted, 0, "{tally:#?}");
    assert_eq!(tally.payloads_rewritten, 0, "{tally:#?}");
    assert!(tally.connections >= 2, "{tally:#?}");
    let registered = answerer
        .output()
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .expect("the registered line");
    assert_eq!(registered["serverId"], stage.hostile.server_id);
    assert_ne!(stage.hostile.server_id, stage.honest.server_id);
}

/// The relay answers `identity_challenge` itself, with its own key, over
/// the agreed message; a nonce that is not 32 bytes gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_proves_its_own_identity() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::SwapFingerprints).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(stage.hostile.url.as_str())
        .await
        .expect("connect");
    let next = |text: Option<Result<Message, _>>| -> Value {
        match text {
            Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    };
    let info = next(socket.next().await);
    assert_eq!(info["type"], "server_info");
    assert_eq!(info["serverId"], stage.hostile.server_id);
    assert_eq!(info["endpoint"], stage.hostile.url);
    let nonce = BASE64.encode([7u8; 32]);
    let challenge = serde_json::json!({"type": "identity_challenge", "nonce": nonce});
    socket
        .send(Message::text(challenge.to_string()))
        .await
        .unwrap();
    let proof = next(socket.next().await);
    assert_eq!(proof["type"], "identity_proof", "{proof}");
    assert_eq!(proof["nonce"], nonce);
    let key =
        zajel_wire::keys::public_key_from_server_id(proof["serverId"].as_str().unwrap()).unwrap();
    assert_eq!(proof["serverId"], stage.hostile.server_id);
    let mut message = IDENTITY_DOMAIN.as_bytes().to_vec();
    message.push(0);
    message.extend_from_slice(&[7u8; 32]);
    message.push(0);
    message.extend_from_slice(stage.hostile.url.as_bytes());
    let signature = BASE64.decode(proof["signature"].as_str().unwrap()).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    key.verify(&message, &signature).expect("a valid proof");
    let short = serde_json::json!({"type": "identity_challenge", "nonce": BASE64.encode([1u8; 8])});
    socket.send(Message::text(short.to_string())).await.unwrap();
    assert_eq!(next(socket.next().await)["type"], "error");
    assert_eq!(stage.hostile.tally().identity_proofs, 1);
}

/// The end of a report (`{"kind":…}`) and the caller's error kind.
fn end_kind(report: &Value) -> &str {
    report["end"]["kind"].as_str().unwrap_or_default()
}

/// The answerer's exit code once it is done (`--once`).
fn answerer_exit(answerer: &mut ChildProcess) -> Option<i32> {
    tokio::task::block_in_place(|| answerer.wait(step()))
        .ok()
        .and_then(|status| status.code())
}

/// `SwapFingerprints`: the forged offer carries the caller's MAC and the
/// forged answer the only MAC the relay has (the callee refused, so the
/// caller's, replayed). Both ends detect the swap: each reports
/// `media_not_authenticated`, exits 6, accepted no media from the relay's
/// peers, and sent `call_hangup`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swap_fingerprints_is_detected_as_caller_and_as_callee() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::SwapFingerprints).await;
    let (mut answerer, code, _) = start_answerer(&stage.hostile.url, &[]);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &[]).await;
    let call = &out["call"];
    let tally = stage.hostile.tally();
    assert_eq!(tally.calls_intercepted, 1, "{tally:#?}");
    assert!(tally.auth_copied >= 2, "offer and answer: {tally:#?}");
    // The caller.
    assert_eq!(
        finished.code,
        Some(6),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(call["error_kind"], "media_not_authenticated", "{call:#}");
    assert_eq!(
        end_kind(&call["call"]),
        "media_not_authenticated",
        "{call:#}"
    );
    assert_eq!(call["authenticated"], false);
    assert_eq!(call["media_both_ways"], false);
    assert_eq!(call["call"]["rtp"]["packets_received"], 0, "{call:#}");
    // The callee.
    let callee = answerer_report(&mut answerer);
    let report = &callee["report"];
    assert_eq!(end_kind(report), "media_not_authenticated", "{callee:#}");
    assert_eq!(report["authenticated"], false);
    assert_eq!(report["rtp"]["packets_received"], 0, "{callee:#}");
    assert_eq!(
        answerer_exit(&mut answerer),
        Some(6),
        "{}",
        answerer.output()
    );
    // Both hung up on the relay's peers.
    let tally = stage
        .hostile
        .wait_for(step(), |t| {
            t.hangups_from_caller >= 1 && t.hangups_from_callee >= 1
        })
        .await
        .unwrap_or_else(|t| {
            panic!(
                "both ends should send call_hangup: {t:#?}\nanswerer:\n{}",
                answerer.output()
            )
        });
    assert_eq!(tally.calls_intercepted, 1);
}

/// `StripAuth` against ends that insist (`--require-authenticated`): both
/// refuse the relay's unauthenticated payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strip_auth_is_refused_with_require_authenticated() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::StripAuth).await;
    let strict = ["--require-authenticated"];
    let (mut answerer, code, _) = start_answerer(&stage.hostile.url, &strict);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &strict).await;
    let call = &out["call"];
    let tally = stage.hostile.tally();
    assert_eq!(tally.calls_intercepted, 1, "{tally:#?}");
    assert!(tally.auth_stripped >= 1, "{tally:#?}");
    assert_eq!(
        finished.code,
        Some(6),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(call["error_kind"], "media_not_authenticated", "{call:#}");
    assert_eq!(call["media_both_ways"], false);
    let callee = answerer_report(&mut answerer);
    assert_eq!(
        end_kind(&callee["report"]),
        "media_not_authenticated",
        "{callee:#}"
    );
    assert_eq!(
        answerer_exit(&mut answerer),
        Some(6),
        "{}",
        answerer.output()
    );
}

/// `SwapPairingKeys`: the relay hands each side its own X25519 key in
/// pairing and MACs its forged payloads with the keys it shares with each.
/// Said honestly: after a fresh pairing nothing in the call can tell (the
/// call is reported authenticated, with the relay's key as the peer's);
/// only the key check out of band can, which `--peer-key` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swap_pairing_keys_passes_fresh_pairing_but_not_a_pinned_key() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::SwapPairingKeys).await;
    let (mut answerer, code, real_key) = start_answerer(&stage.hostile.url, &[]);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &[]).await;
    let call = &out["call"];
    let tally = intercepted_reports(&stage.hostile).await;
    assert_eq!(tally.calls_intercepted, 1, "{tally:#?}");
    assert!(tally.pairing_keys_swapped >= 2, "{tally:#?}");
    assert!(tally.auth_forged >= 2, "{tally:#?}");
    assert_eq!(
        finished.code,
        Some(0),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(call["media_both_ways"], true, "{call:#}");
    assert_eq!(
        call["authenticated"], true,
        "the out-of-band case: {call:#}"
    );
    assert_ne!(call["peer_key"], real_key.as_str(), "{call:#}");
    let callee = answerer_report(&mut answerer);
    assert_eq!(callee["report"]["authenticated"], true, "{callee:#}");
    // The caller pins the answerer's real key (learnt out of band).
    let (_answerer, code, real_key) = start_answerer(&stage.hostile.url, &[]);
    let (finished, out) = run_caller(&stage.hostile.url, &code, &["--peer-key", &real_key]).await;
    assert_eq!(
        finished.code,
        Some(6),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(out["call"]["error_kind"], "peer_key_mismatch", "{out:#}");
    assert_eq!(
        stage.hostile.tally().calls_intercepted,
        1,
        "no call is placed to a mismatched key"
    );
}
