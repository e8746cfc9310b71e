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
use tests::hostile_relay::{HostileRelay, HostileRelayConfig, Mode, Tally, IDENTITY_DOMAIN};
use tests::process::ChildProcess;
use tests::registry_host::binary;
use tests::relay_child::RelayChild;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

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

/// `call-probe answer --once` on `server`: the process and its pairing code.
fn start_answerer(server: &str, extra: &[&str]) -> (ChildProcess, String) {
    let mut command = Command::new(binary("call-probe").expect("cargo build -p call-probe"));
    command
        .args(["answer", "--once", "--server", server])
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
    (answerer, code)
}

/// `call-probe call CODE --server server` to its end.
async fn run_caller(server: &str, code: &str, extra: &[&str]) -> (Finished, Value) {
    let mut command = Command::new(binary("call-probe").expect("cargo build -p call-probe"));
    command
        .args(["call", code, "--server", server])
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
    let (mut answerer, code) = start_answerer(&stage.hostile.url, &[]);
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
    assert_ne!(
        authenticated(&out),
        Some(true),
        "a stripped call must not be reported authenticated: {out:#}"
    );
    drop(stage.honest);
}

/// `"authenticated"` of the caller's report, where call-probe puts it.
fn authenticated(out: &Value) -> Option<bool> {
    [
        &out["call"]["authenticated"],
        &out["authenticated"],
        &out["call"]["call"]["authenticated"],
    ]
    .into_iter()
    .find_map(Value::as_bool)
}

/// The honest mode is a pure proxy with a server identity of its own: the
/// call goes end to end, nothing is intercepted, and the answerer was told
/// the hostile relay's server id (not the upstream's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_mode_relays_the_call_untouched() {
    let _serial = SERIAL.lock().await;
    let stage = stage(Mode::Honest).await;
    let (mut answerer, code) = start_answerer(&stage.hostile.url, &[]);
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
