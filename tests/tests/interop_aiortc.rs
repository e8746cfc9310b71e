//! Interop: calls between call-probe's webrtc-rs engine and an aiortc peer
//! (tests/interop/zajel_peer.py), paired and signaled through a real
//! relay-lite on loopback with Zajel's messages, audio flowing both ways
//! (each side detects the other's tone), and video both ways with `--video`
//! (each side decodes the other's VP8 — libvpx in aiortc, libvpx in call-probe's
//! `video` feature — and reads the test pattern's counter). Also aiortc to aiortc
//! through the relay, which checks the peer itself.
//!
//! Needs the venv built by `bash scripts/py-interop` (scripts/test runs it) and
//! `cargo build -p relay-lite`. `ZAJEL_INTEROP_STEP_S` sets how long each wait
//! may take (default 20 s).

use std::time::Duration;

use call_probe::{CallConfig, CallReport, EndReason, Role};
use serde_json::Value;
use tests::interop::{AiortcOptions, AiortcPeer, AiortcRole};
use tests::probe_peer::{ProbePeer, ProbeRole};
use tests::process::ChildProcess;
use tests::relay_child::RelayChild;
use zajel_wire::call::is_uuid_v4;
use zajel_wire::pairing::PairingCode;

const TOLERANCE_HZ: f64 = 5.0;

fn step() -> Duration {
    let seconds = std::env::var("ZAJEL_INTEROP_STEP_S")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20.0);
    Duration::from_secs_f64(seconds)
}

fn relay() -> RelayChild {
    RelayChild::start(&[], step()).expect("start relay-lite (cargo build -p relay-lite)")
}

/// Waits for the aiortc peer's result off the async runtime's threads.
async fn aiortc_result(mut peer: AiortcPeer) -> (Value, AiortcPeer) {
    tokio::task::spawn_blocking(move || {
        let result = peer.result(step() * 4);
        match result {
            Ok(value) => (value, peer),
            Err(error) => panic!("aiortc peer gave no result: {error}"),
        }
    })
    .await
    .expect("join")
}

fn assert_aiortc_heard(result: &Value, hz: f64, output: &str) {
    assert_eq!(result["ok"], true, "aiortc result {result}\n{output}");
    let heard = result["tone"]["detected"]["frequency_hz"]
        .as_f64()
        .unwrap_or_else(|| panic!("aiortc heard no tone: {result}\n{output}"));
    assert!(
        (heard - hz).abs() <= TOLERANCE_HZ,
        "aiortc heard {heard} Hz, expected {hz}: {result}"
    );
    assert!(result["tone"]["detected"]["purity"].as_f64().unwrap() >= 0.5);
    let pair = &result["ice"]["selected_pair"];
    assert_eq!(pair["local"]["address"], "127.0.0.1", "{result}");
    assert_eq!(pair["remote"]["address"], "127.0.0.1", "{result}");
    assert_eq!(pair["local"]["protocol"], "udp", "{result}");
    let timings = &result["timings_ms"];
    let order = ["pair_matched", "ice_connected", "dtls_connected"];
    for window in order.windows(2) {
        let (a, b) = (timings[window[0]].as_f64(), timings[window[1]].as_f64());
        assert!(
            a.is_some() && b.is_some() && a <= b,
            "{} then {} in {timings}",
            window[0],
            window[1]
        );
    }
    // The first RTP packet is taken before it is decoded, and decoded before the tone is heard.
    let heard_in_order = ["first_rtp_received", "first_audio_frame", "tone_detected"];
    for window in heard_in_order.windows(2) {
        let (a, b) = (timings[window[0]].as_f64(), timings[window[1]].as_f64());
        assert!(
            a.is_some() && b.is_some() && a <= b,
            "{} then {} in {timings}",
            window[0],
            window[1]
        );
    }
}

fn assert_probe_heard(report: &CallReport, hz: f64) {
    let heard = report
        .tone
        .detected
        .as_ref()
        .unwrap_or_else(|| panic!("call-probe heard no tone: {report:#?}"));
    assert!(
        (heard.frequency_hz - hz).abs() <= TOLERANCE_HZ,
        "call-probe heard {} Hz, expected {hz}",
        heard.frequency_hz
    );
    assert!(report.rtp.packets_received > 10, "{:?}", report.rtp);
    assert!(report.rtp.packets_sent > 10, "{:?}", report.rtp);
    let pair = report.ice.selected_pair.as_ref().expect("a selected pair");
    assert_eq!(pair.local.address, "127.0.0.1");
    assert_eq!(pair.remote.address, "127.0.0.1");
    let timeline = &report.timeline;
    assert!(timeline.ice_connected_ms <= timeline.dtls_connected_ms);
    assert!(timeline.first_rtp_ms.is_some() && timeline.tone_detected_ms.is_some());
}

#[test]
fn aiortc_calls_aiortc_through_relay_lite() {
    let relay = relay();
    let mut answer = AiortcOptions::new(AiortcRole::Answer, &relay.url());
    answer.tone_hz = 660.0;
    answer.expect_hz = Some(520.0);
    answer.step_timeout = step();
    let mut callee = AiortcPeer::spawn(&answer).expect("spawn aiortc callee");
    let code = callee.registered(step()).expect("callee registered a code");
    assert!(PairingCode::is_valid(&code), "{code}");

    let mut call = AiortcOptions::new(AiortcRole::Call { peer: code.clone() }, &relay.url());
    call.tone_hz = 520.0;
    call.expect_hz = Some(660.0);
    call.step_timeout = step();
    let mut caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let caller_result = caller.result(step() * 4).expect("caller result");
    let callee_result = callee.result(step() * 4).expect("callee result");

    assert_aiortc_heard(&caller_result, 660.0, &caller.output());
    assert_aiortc_heard(&callee_result, 520.0, &callee.output());
    assert_eq!(caller_result["call_id"], callee_result["call_id"]);
    assert!(is_uuid_v4(caller_result["call_id"].as_str().unwrap()));
    assert_eq!(caller_result["end"], "hangup_local");
    assert_eq!(callee_result["end"], "hangup_remote");
    assert_eq!(callee_result["peer_code"], caller_result["code"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_calls_the_call_probe_engine() {
    let relay = relay();
    let probe = ProbePeer::connect(&relay.url(), step())
        .await
        .expect("call-probe registers");
    let code = probe.code();

    let mut call = AiortcOptions::new(
        AiortcRole::Call {
            peer: code.to_string(),
        },
        &relay.url(),
    );
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    let caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");

    let config = CallConfig {
        tone_hz: 440.0,
        ..CallConfig::loopback()
    };
    let probe_run = tokio::spawn(probe.run(
        ProbeRole::Answer,
        config,
        Duration::from_millis(1500),
        step(),
    ));
    let (result, caller) = aiortc_result(caller).await;
    let outcome = probe_run
        .await
        .expect("join")
        .unwrap_or_else(|error| panic!("call-probe side: {error}\naiortc: {}", caller.output()));
    let report = outcome.report;

    assert_aiortc_heard(&result, 440.0, &caller.output());
    assert_probe_heard(&report, 520.0);
    assert_eq!(report.role, Role::Callee);
    assert_eq!(result["call_id"], report.call_id.as_str());
    assert_eq!(result["end"], "hangup_local");
    assert!(
        matches!(report.end, EndReason::HangupRemote),
        "{:?}",
        report.end
    );
    // aiortc put its candidates in the SDP (call-probe counts only trickled ones);
    // call-probe trickled its own in call_ice.
    assert!(
        result["ice"]["remote_candidates_trickled"].as_u64() >= Some(1),
        "aiortc took no trickled call_ice: {result}"
    );
    assert_eq!(result["ice"]["remote_candidates_refused"], 0);
    // The profile is read from the DTLS ServerHello on call-probe's own socket.
    assert!(
        report.dtls.srtp_profile_is_aes_gcm,
        "{:?}",
        report.dtls.srtp_profile
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_probe_engine_calls_aiortc() {
    let relay = relay();
    let mut answer = AiortcOptions::new(AiortcRole::Answer, &relay.url());
    answer.tone_hz = 660.0;
    answer.expect_hz = Some(440.0);
    answer.step_timeout = step();
    let mut callee = AiortcPeer::spawn(&answer).expect("spawn aiortc callee");
    let code = tokio::task::block_in_place(|| callee.registered(step()))
        .expect("aiortc registered a code");

    let probe = ProbePeer::connect(&relay.url(), step())
        .await
        .expect("call-probe registers");
    let config = CallConfig {
        tone_hz: 440.0,
        ..CallConfig::loopback()
    };
    let peer = PairingCode::parse(&code).expect("a valid code");
    let outcome = probe
        .run(
            ProbeRole::Call { peer },
            config,
            Duration::from_millis(1500),
            step(),
        )
        .await
        .unwrap_or_else(|error| panic!("call-probe side: {error}\naiortc: {}", callee.output()));
    let (result, callee) = aiortc_result(callee).await;
    let report = outcome.report;

    assert_aiortc_heard(&result, 440.0, &callee.output());
    assert_probe_heard(&report, 660.0);
    assert_eq!(report.role, Role::Caller);
    assert!(is_uuid_v4(&report.call_id));
    assert_eq!(result["call_id"], report.call_id.as_str());
    assert!(
        matches!(report.end, EndReason::HangupLocal),
        "{:?}",
        report.end
    );
    assert_eq!(result["end"], "hangup_remote", "{result}");
    assert!(
        result["ice"]["remote_candidates_trickled"].as_u64() >= Some(1),
        "aiortc took no trickled call_ice: {result}"
    );
    assert_eq!(result["ice"]["remote_candidates_refused"], 0);
    let milestones = outcome.milestones;
    assert!(milestones.pair_matched <= milestones.ice_connected);
    assert!(milestones.ice_connected <= milestones.dtls_connected);
    // The profile is read from the DTLS ServerHello on call-probe's own socket.
    assert!(
        report.dtls.srtp_profile_is_aes_gcm,
        "{:?}",
        report.dtls.srtp_profile
    );
}

/// The video call-probe decoded from aiortc: frames, the pattern's counter read, in order.
fn assert_probe_saw_video(report: &CallReport) {
    let video = report.video.as_ref().expect("a video report");
    let rx = &video.received;
    assert!(video.sent.frames_sent > 5, "{video:?}");
    assert!(rx.frames_decoded > 5, "{rx:?}");
    assert!(
        rx.counters_read > 5,
        "aiortc's frames carry the counter: {rx:?}"
    );
    assert_eq!(rx.counters_out_of_order, 0, "{rx:?}");
    assert_eq!((rx.width, rx.height), (Some(320), Some(240)), "{rx:?}");
    assert!(report.video_negotiated && report.timeline.first_video_frame_ms.is_some());
}

/// The video aiortc decoded from call-probe: frames, the counter read, in order.
fn assert_aiortc_saw_video(result: &Value, output: &str) {
    let video = &result["video"];
    assert!(
        video["frames_sent"].as_u64() > Some(5),
        "{result}\n{output}"
    );
    assert!(
        video["frames_decoded"].as_u64() > Some(5),
        "{result}\n{output}"
    );
    assert!(
        video["counters_read"].as_u64() > Some(5),
        "{result}\n{output}"
    );
    assert_eq!(video["counters_out_of_order"], 0, "{result}");
    assert_eq!(video["patterns_seen"], serde_json::json!([0]), "{result}");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(320), Some(240))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_video_calls_the_call_probe_engine() {
    let relay = relay();
    let probe = ProbePeer::connect(&relay.url(), step())
        .await
        .expect("call-probe registers");
    let code = probe.code();
    let mut call = AiortcOptions::new(
        AiortcRole::Call {
            peer: code.to_string(),
        },
        &relay.url(),
    );
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    call.video = true;
    call.hold = Duration::from_secs(3);
    let caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let config = CallConfig {
        tone_hz: 440.0,
        ..CallConfig::loopback()
    };
    let probe_run = tokio::spawn(probe.run(
        ProbeRole::Answer,
        config,
        Duration::from_millis(1500),
        step(),
    ));
    let (result, caller) = aiortc_result(caller).await;
    let outcome = probe_run
        .await
        .expect("join")
        .unwrap_or_else(|error| panic!("call-probe side: {error}\naiortc: {}", caller.output()));
    let report = outcome.report;
    assert_aiortc_heard(&result, 440.0, &caller.output());
    assert_probe_heard(&report, 520.0);
    assert!(report.with_video, "aiortc's offer said withVideo");
    assert_probe_saw_video(&report);
    assert_aiortc_saw_video(&result, &caller.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_probe_engine_video_calls_aiortc() {
    let relay = relay();
    let mut answer = AiortcOptions::new(AiortcRole::Answer, &relay.url());
    answer.tone_hz = 660.0;
    answer.expect_hz = Some(440.0);
    answer.step_timeout = step();
    answer.video = true;
    let mut callee = AiortcPeer::spawn(&answer).expect("spawn aiortc callee");
    let code = tokio::task::block_in_place(|| callee.registered(step()))
        .expect("aiortc registered a code");
    let probe = ProbePeer::connect(&relay.url(), step())
        .await
        .expect("call-probe registers")
        .with_video();
    let config = CallConfig {
        tone_hz: 440.0,
        ..CallConfig::loopback()
    };
    let peer = PairingCode::parse(&code).expect("a valid code");
    let outcome = probe
        .run(
            ProbeRole::Call { peer },
            config,
            Duration::from_millis(3000),
            step(),
        )
        .await
        .unwrap_or_else(|error| panic!("call-probe side: {error}\naiortc: {}", callee.output()));
    let (result, callee) = aiortc_result(callee).await;
    let report = outcome.report;
    assert_aiortc_heard(&result, 440.0, &callee.output());
    assert_probe_heard(&report, 660.0);
    assert!(outcome.milestones.first_video_frame.is_some());
    assert_probe_saw_video(&report);
    assert_aiortc_saw_video(&result, &callee.output());
}

#[test]
fn the_aiortc_peer_refuses_bad_arguments() {
    let python = tests::interop::python().expect("the interop venv");
    for args in [
        vec!["call", "--server", "ws://127.0.0.1:1"],
        vec!["call", "--server", "ws://127.0.0.1:1", "--peer", "IO01AB"],
        vec!["answer", "--server", "http://127.0.0.1:1"],
        vec!["answer", "--server", "ws://127.0.0.1:1", "--tone-hz", "5"],
    ] {
        let output = std::process::Command::new(&python)
            .arg(tests::interop::peer_script())
            .args(&args)
            .output()
            .expect("run the peer");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}: a reason on stderr");
    }
}

#[test]
fn the_aiortc_peer_reports_an_unreachable_relay() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut options = AiortcOptions::new(AiortcRole::Answer, &format!("ws://127.0.0.1:{port}"));
    options.step_timeout = Duration::from_secs(3);
    let mut peer = AiortcPeer::spawn(&options).expect("spawn");
    let result = peer.result(step()).expect("a result line");
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        result["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{result}"
    );
    let status = peer.process.wait(step()).expect("exits");
    assert_eq!(status.code(), Some(1));
}

/// `call-probe` (the binary) with `--server <relay> --allow-private --no-cache --loopback
/// --no-stun --json --ephemeral-identity` after `args`, logs off.
fn call_probe_command(args: &[&str], relay: &RelayChild) -> std::process::Command {
    let mut command = std::process::Command::new(
        tests::registry_host::binary("call-probe").expect("cargo build -p call-probe"),
    );
    command.args(args).args([
        "--server",
        &relay.url(),
        "--allow-private",
        "--no-cache",
        "--loopback",
        "--no-stun",
        "--json",
        "--ephemeral-identity",
        "--step-timeout",
        &step().as_secs().max(1).to_string(),
    ]);
    command.env("RUST_LOG", "off");
    command
}

#[test]
fn aiortc_calls_call_probe_answer_once() {
    let relay = relay();
    let mut answerer = ChildProcess::spawn(
        "call-probe answer",
        call_probe_command(&["answer", "--once", "--tone-hz", "440"], &relay),
    )
    .expect("start call-probe answer");
    let code = answerer
        .wait_for(step(), |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["event"] == "registered")
                .then(|| value["code"].as_str().map(str::to_string))
                .flatten()
        })
        .expect("call-probe answer prints its code");

    let mut call = AiortcOptions::new(AiortcRole::Call { peer: code.clone() }, &relay.url());
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    let mut caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let result = caller.result(step() * 4).expect("aiortc result");
    let ended = answerer
        .wait_for(step() * 2, |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["event"] == "call_ended").then_some(value)
        })
        .expect("call-probe answer reports the call");
    let status = answerer.wait(step()).expect("answer --once exits");

    assert_aiortc_heard(&result, 440.0, &caller.output());
    let report: CallReport =
        serde_json::from_value(ended["report"].clone()).expect("a call report");
    assert_probe_heard(&report, 520.0);
    assert_eq!(report.role, Role::Callee);
    // aiortc sends no call authentication: the call goes on, reported unauthenticated.
    assert!(!report.authenticated);
    assert!(report.peer_key.is_some(), "paired: its key is known");
    assert_eq!(result["call_id"], report.call_id.as_str());
    assert_eq!(result["peer_code"], code.as_str());
    assert!(
        matches!(report.end, EndReason::HangupRemote),
        "{:?}",
        report.end
    );
    assert!(report.dtls.srtp_profile_is_aes_gcm, "{:?}", report.dtls);
    assert_eq!(status.code(), Some(0), "{}", answerer.output());
}

#[test]
fn call_probe_call_calls_aiortc() {
    let relay = relay();
    let mut answer = AiortcOptions::new(AiortcRole::Answer, &relay.url());
    answer.tone_hz = 660.0;
    answer.expect_hz = Some(440.0);
    answer.step_timeout = step();
    let mut callee = AiortcPeer::spawn(&answer).expect("spawn aiortc callee");
    let code = callee.registered(step()).expect("aiortc registered a code");

    let mut caller = ChildProcess::spawn(
        "call-probe call",
        call_probe_command(
            &["call", &code, "--tone-hz", "440", "--duration", "2"],
            &relay,
        ),
    )
    .expect("start call-probe call");
    let status = caller.wait(step() * 4).expect("call-probe call ends");
    let result = callee.result(step() * 2).expect("aiortc result");
    // With logs off, stdout is the pretty-printed JSON report and nothing else.
    let output = caller.output();
    let json_start = output
        .find("{\n")
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    let printed: Value = serde_json::from_str(&output[json_start..])
        .unwrap_or_else(|error| panic!("{error}: {output}"));
    assert_eq!(status.code(), Some(0), "{output}");

    let probe = &printed["call"];
    assert_eq!(probe["media_both_ways"], true, "{probe}");
    assert!(
        (probe["heard_hz"].as_f64().unwrap() - 660.0).abs() <= TOLERANCE_HZ,
        "{probe}"
    );
    let report: CallReport = serde_json::from_value(probe["call"].clone()).expect("a report");
    assert_probe_heard(&report, 660.0);
    assert_eq!(report.role, Role::Caller);
    assert!(!report.authenticated && probe["authenticated"] == false);
    assert!(
        matches!(report.end, EndReason::HangupLocal),
        "{:?}",
        report.end
    );
    assert!(report.dtls.srtp_profile_is_aes_gcm, "{:?}", report.dtls);

    assert_aiortc_heard(&result, 440.0, &callee.output());
    assert_eq!(result["call_id"], report.call_id.as_str());
    assert_eq!(result["end"], "hangup_remote", "{result}");
    // No trickled candidate may be refused. (Whether one arrived at all is asserted by the
    // in-process engine tests: once, under heavy load, aiortc reported none taken here.)
    assert_eq!(
        result["ice"]["remote_candidates_refused"],
        0,
        "{result}\n{}",
        callee.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_calls_call_probe_relay_only_through_turn() {
    // call-probe's local world: relay-lite with its TURN server, handing out credentials.
    let world = call_probe::world::LocalWorld::start()
        .await
        .expect("the local world");
    let relay = world.relay_url();
    let mut options = call_probe::answer::AnswerOptions::new(relay.clone());
    options.line.loopback = true;
    options.line.with_stun = false;
    options.line.relay_only = true;
    options.max_calls = Some(1);
    options.line.tone_hz = 440.0;
    options.line.step_timeout = step();
    let answerer = call_probe::answer::Answerer::start(options)
        .await
        .expect("call-probe answers relay-only");
    let code = answerer.code.to_string();
    let serving = tokio::spawn(answerer.serve(|_| {}));

    let mut call = AiortcOptions::new(AiortcRole::Call { peer: code }, relay.as_str());
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    let caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let (result, caller) = aiortc_result(caller).await;
    let calls = tokio::time::timeout(step(), serving)
        .await
        .expect("the answerer finishes")
        .expect("join")
        .unwrap_or_else(|error| panic!("answerer: {error}\naiortc: {}", caller.output()));
    let report = &calls[0].report;

    assert_probe_heard(report, 520.0);
    assert!(report.ice.relay_only);
    let pair = report.ice.selected_pair.as_ref().expect("a pair");
    assert_eq!(pair.local.kind, "relay", "{pair:?}");
    // aiortc reaches call-probe only through its TURN allocation.
    assert_eq!(result["ok"], true, "{result}\n{}", caller.output());
    assert_eq!(
        result["ice"]["selected_pair"]["remote"]["kind"], "relay",
        "{result}"
    );
    assert!(
        (result["tone"]["detected"]["frequency_hz"].as_f64().unwrap() - 440.0).abs()
            <= TOLERANCE_HZ
    );
    world.stop().await;
}

/// Video with aiortc when call-probe reaches it only through TURN over TCP (relay-only,
/// `--turn-transport tcp`: what a network that blocks UDP leaves): frames decoded both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_video_calls_call_probe_relay_only_through_turn_tcp() {
    let world = call_probe::world::LocalWorld::start()
        .await
        .expect("the local world");
    let relay = world.relay_url();
    let mut options = call_probe::answer::AnswerOptions::new(relay.clone());
    options.line.loopback = true;
    options.line.with_stun = false;
    options.line.relay_only = true;
    options.line.turn_transport = call_probe::client::TurnTransport::Tcp;
    options.max_calls = Some(1);
    options.line.tone_hz = 440.0;
    options.line.step_timeout = step();
    let answerer = call_probe::answer::Answerer::start(options)
        .await
        .expect("call-probe answers relay-only");
    let code = answerer.code.to_string();
    let serving = tokio::spawn(answerer.serve(|_| {}));

    let mut call = AiortcOptions::new(AiortcRole::Call { peer: code }, relay.as_str());
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    call.video = true;
    call.hold = Duration::from_secs(3);
    let caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let (result, caller) = aiortc_result(caller).await;
    let calls = tokio::time::timeout(step(), serving)
        .await
        .expect("the answerer finishes")
        .expect("join")
        .unwrap_or_else(|error| panic!("answerer: {error}\naiortc: {}", caller.output()));
    let call = &calls[0];
    assert_eq!(
        call.relayed_media,
        Some(call_probe::client::TurnTransport::Tcp),
        "media through TURN over TCP"
    );
    let pair = call.report.ice.selected_pair.as_ref().expect("a pair");
    assert_eq!(pair.local.kind, "relay", "{pair:?}");
    assert_probe_heard(&call.report, 520.0);
    assert_probe_saw_video(&call.report);
    assert_aiortc_heard(&result, 440.0, &caller.output());
    assert_aiortc_saw_video(&result, &caller.output());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_form_aiortc_client_calls_the_call_probe_engine() {
    // Zajel's web client sends call messages flat (targetId, call fields at the top level);
    // relay-lite delivers them with the envelope, so call-probe answers such a client too.
    let relay = relay();
    let probe = ProbePeer::connect(&relay.url(), step())
        .await
        .expect("call-probe registers");
    let mut call = AiortcOptions::new(
        AiortcRole::Call {
            peer: probe.code().to_string(),
        },
        &relay.url(),
    );
    call.tone_hz = 520.0;
    call.expect_hz = Some(440.0);
    call.step_timeout = step();
    call.flat = true;
    let caller = AiortcPeer::spawn(&call).expect("spawn aiortc caller");
    let config = CallConfig {
        tone_hz: 440.0,
        ..CallConfig::loopback()
    };
    let probe_run = tokio::spawn(probe.run(
        ProbeRole::Answer,
        config,
        Duration::from_millis(1500),
        step(),
    ));
    let (result, caller) = aiortc_result(caller).await;
    let outcome = probe_run
        .await
        .expect("join")
        .unwrap_or_else(|error| panic!("call-probe side: {error}\naiortc: {}", caller.output()));
    assert_aiortc_heard(&result, 440.0, &caller.output());
    assert_probe_heard(&outcome.report, 520.0);
    assert_eq!(result["call_id"], outcome.report.call_id.as_str());
    assert!(
        matches!(outcome.report.end, EndReason::HangupRemote),
        "{:?}",
        outcome.report.end
    );
}
