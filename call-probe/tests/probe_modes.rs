//! `demo`, `call`, `answer` and `check` end to end, on 127.0.0.1 only, through the real
//! registry (bootstrap-worker), relay-lite with its embedded TURN server, and discovery
//! (registry + DoH layers): the binary as child processes (killed on drop) for the CLI
//! tests, the library in-process where the test needs to act inside a call (busy, ringing,
//! hangup by the callee, reconnect).

use std::process::Stdio;
use std::time::Duration;

use call_probe::answer::{AnswerOptions, Answerer};
use call_probe::call::CallEvent;
use call_probe::client;
use call_probe::config::{AnswerPolicy, CallConfig, CallTimeouts};
use call_probe::line::PhoneLine;
use call_probe::probe_call::{run_call, CallOptions};
use call_probe::report::EndReason;
use call_probe::world::{LocalWorld, WorldOptions};
use call_probe::ErrorKind;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_call-probe");

fn step() -> Duration {
    Duration::from_secs(
        std::env::var("PROBE_TEST_STEP_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

/// A child process killed (and reaped) when dropped, also when a test fails.
struct Running(Child);

impl Running {
    /// Waits for the exit status (polled, the test's deadline applies).
    async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    // Runs that keep an identity keep it here, never in the user's state folder.
    let state = std::env::temp_dir().join(format!("call-probe-tests-{}", std::process::id()));
    command
        .env("CALL_PROBE_STATE_DIR", state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the binary to its end; returns (exit code, stdout, stderr).
async fn run(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let child = command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .spawn()
        .expect("call-probe runs");
    let id = child.id();
    let mut waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(step() * 3, &mut waiting).await {
        Ok(output) => output.expect("join").expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            let output = waiting.await.expect("join").expect("output");
            panic!(
                "call-probe {args:?} did not end in time\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `call-probe answer --json …` and waits for its `registered` line (its code).
async fn start_answerer(world: &LocalWorld, extra: &[&str]) -> (Running, String) {
    let (running, event, _) = start_answerer_event(world, extra).await;
    let code = event["code"].as_str().expect("code").to_string();
    (running, code)
}

/// Starts `call-probe answer --json …`; returns its `registered` line and its later lines.
async fn start_answerer_event(
    world: &LocalWorld,
    extra: &[&str],
) -> (Running, Value, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let relay = world.relay_url().to_string();
    let mut args = vec![
        "answer",
        "--server",
        &relay,
        "--allow-private",
        "--no-cache",
        "--loopback",
        "--json",
    ];
    if !extra.contains(&"--state-dir") {
        args.push("--ephemeral-identity");
    }
    args.extend_from_slice(extra);
    let mut child = command(&args).spawn().expect("answerer runs");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (first, rest) = tokio::sync::oneshot::channel();
    let (later, later_lines) = tokio::sync::mpsc::unbounded_channel();
    // Read lines on a thread (the pipe must never fill); hand over the first, then the rest.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = first.send(lines.next().and_then(Result::ok));
        for line in lines.map_while(Result::ok) {
            let _ = later.send(line);
        }
    });
    let line = tokio::time::timeout(step(), rest)
        .await
        .expect("answerer registers in time")
        .expect("reader")
        .expect("a line");
    let event: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(event["event"], "registered", "{line}");
    let code = event["code"].as_str().expect("code").to_string();
    assert!(event["uri"]
        .as_str()
        .unwrap()
        .starts_with(&format!("zajel://{code}?server=")));
    (running, event, later_lines)
}

fn call_args<'a>(relay: &'a str, target: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "call",
        target,
        "--server",
        relay,
        "--allow-private",
        "--no-cache",
        "--loopback",
        "--json",
        "--duration",
        "1",
        "--ephemeral-identity",
    ];
    args.extend_from_slice(extra);
    args
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn assert_media_both_ways(call: &Value, heard_hz: f64) {
    assert_eq!(call["media_both_ways"], true, "{call:#}");
    let heard = call["heard_hz"].as_f64().expect("a tone heard");
    assert!((heard - heard_hz).abs() <= 5.0, "heard {heard} Hz");
    let rtp = &call["call"]["rtp"];
    assert!(rtp["packets_sent"].as_u64().unwrap() > 10, "{rtp}");
    assert!(rtp["packets_received"].as_u64().unwrap() > 10, "{rtp}");
    let m = &call["milestones"];
    for name in [
        "signaling_ready_ms",
        "pair_matched_ms",
        "call_placed_ms",
        "ice_connected_ms",
        "dtls_connected_ms",
        "first_rtp_ms",
    ] {
        assert!(m[name].as_f64().is_some(), "{name} missing: {m}");
    }
    assert!(m["signaling_ready_ms"].as_f64() < m["pair_matched_ms"].as_f64());
    assert!(m["pair_matched_ms"].as_f64() <= m["call_placed_ms"].as_f64());
    assert!(m["call_placed_ms"].as_f64() < m["ice_connected_ms"].as_f64());
    assert!(m["ice_connected_ms"].as_f64() <= m["dtls_connected_ms"].as_f64());
    assert_eq!(call["call"]["end"]["kind"], "hangup_local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_runs_the_whole_chain_with_media_both_ways() {
    let (code, stdout, stderr) = run(&["demo", "--json", "--duration", "1"]).await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {stdout}");
    let report = json(&stdout);
    assert_eq!(report["media_both_ways"], true);
    assert_eq!(report["authenticated"], true, "{report:#}");
    assert!(report["error"].is_null() && report.get("error_kind").is_none());
    assert!((report["caller_heard_hz"].as_f64().unwrap() - 660.0).abs() <= 5.0);
    assert!((report["answerer_heard_hz"].as_f64().unwrap() - 440.0).abs() <= 5.0);
    let layers = report["discovery"]["layers"].as_array().unwrap();
    for name in ["registry", "doh"] {
        let layer = layers.iter().find(|l| l["layer"] == name).expect(name);
        assert_eq!(layer["outcome"], "ok", "{layer}");
    }
    let found_by: Vec<&str> = report["found_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        found_by.contains(&"registry") && found_by.contains(&"doh"),
        "{found_by:?}"
    );
    assert_eq!(
        report["call"]["server"],
        report["world"]["relay"].as_str().unwrap().to_string() + "/"
    );
    assert_media_both_ways(&report["call"], 660.0);
    assert_eq!(report["answerer"]["end"]["kind"], "hangup_remote");
    assert_eq!(
        report["call"]["call"]["dtls"]["srtp_profile_is_aes_gcm"], true,
        "{}",
        report["call"]["call"]["dtls"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_and_answer_clis_talk_through_the_relay() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let (mut answerer, code) = start_answerer(&world, &["--once"]).await;
    let (status, stdout, stderr) = run(&call_args(&relay, &code, &[])).await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let out = json(&stdout);
    assert_eq!(out["server"]["how"], "discovery");
    assert_eq!(out["server"]["found_by"][0], "manual");
    assert_media_both_ways(&out["call"], 660.0);
    let pair = &out["call"]["call"]["ice"]["selected_pair"];
    assert_eq!(pair["local"]["address"], "127.0.0.1", "{pair}");
    // --once: the answerer ends by itself after the call.
    let exit = answerer
        .wait(step())
        .await
        .expect("answerer ends after one call");
    assert!(exit.success());

    // The other direction: a zajel:// link carries the server; the answerer echoes.
    let (_answerer, code) = start_answerer(&world, &["--echo", "--tone-hz", "500"]).await;
    let link = format!(
        "zajel://{code}?server={}",
        zajel_wire::pairing::percent_encode(&relay)
    );
    let args = vec![
        "call",
        &link,
        "--loopback",
        "--json",
        "--duration",
        "1",
        "--tone-hz",
        "880",
        "--video",
        "--ephemeral-identity",
    ];
    let (status, stdout, stderr) = run(&args).await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let out = json(&stdout);
    assert_eq!(out["server"]["how"], "share_link");
    assert_eq!(out["call"]["call"]["with_video"], true);
    assert_eq!(out["call"]["call"]["video_negotiated"], true);
    // The caller hears its own tone echoed back.
    assert_media_both_ways(&out["call"], 880.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_calls_go_through_turn_over_udp_tcp_and_tls() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let ca_file = tempfile_with(&world.ca.ca_pem());
    let ca = ca_file.to_string_lossy().to_string();
    for transport in ["udp", "tcp", "tls"] {
        let (_answerer, code) = start_answerer(&world, &[]).await;
        let (status, stdout, stderr) = run(&call_args(
            &relay,
            &code,
            &[
                "--relay-only",
                "--turn-transport",
                transport,
                "--ca-file",
                &ca,
            ],
        ))
        .await;
        assert_eq!(status, 0, "{transport}: {stderr}\n{stdout}");
        let out = json(&stdout);
        assert_media_both_ways(&out["call"], 660.0);
        assert_eq!(out["call"]["turn_transport"], transport);
        assert_eq!(out["call"]["relayed_media"], transport, "{stdout}");
        // The caller's DTLS ran on the TURN client's socket; its TURN tap read the ServerHello.
        let dtls = &out["call"]["call"]["dtls"];
        assert_eq!(dtls["source"], "ServerHello through TURN", "{dtls}");
        assert_eq!(dtls["srtp_profile_is_aes_gcm"], true, "{dtls}");
        let ice = &out["call"]["call"]["ice"];
        assert_eq!(ice["relay_only"], true);
        assert_eq!(
            ice["selected_pair"]["local"]["kind"], "relay",
            "{transport}: {ice}"
        );
    }
    assert!(
        world
            .relay
            .turn()
            .expect("embedded TURN")
            .stats()
            .total_allocations
            >= 3
    );
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_call_is_reported_as_rejected() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let (_answerer, code) = start_answerer(&world, &["--decline"]).await;
    let (status, stdout, _) = run(&call_args(&relay, &code, &[])).await;
    assert_eq!(status, 1);
    let out = json(&stdout);
    let end = &out["call"]["call"]["end"];
    assert_eq!(end["kind"], "rejected_by_remote", "{end}");
    assert_eq!(end["reason"], "declined");
    assert_eq!(out["call"]["media_both_ways"], false);
    // The human message and, beside it, what failed for a machine.
    assert!(out["call"]["error"]
        .as_str()
        .unwrap()
        .starts_with("the call ended before media flowed: "));
    assert_eq!(out["call"]["error_kind"], "call_ended_early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_with_a_code_nobody_holds_gets_no_answer_like_a_silent_peer() {
    // relay-lite answers a request to a code nobody holds exactly as one to a
    // peer that never answers (no pair_error: that would let codes be
    // enumerated), so the caller's own step timeout ends the wait.
    let world = LocalWorld::start().await.unwrap();
    let nobody = client::random_code().unwrap();
    let mut options = options_for(&world, nobody);
    options.line.step_timeout = Duration::from_secs(2);
    let report = run_call(&options).await;
    assert_eq!(report.error_kind, Some(ErrorKind::Timeout), "{report:?}");
    let error = report.error.as_deref().unwrap();
    assert!(error.contains("no pair_matched within"), "{error}");
    assert!(report.call.is_none());
}

fn options_for(world: &LocalWorld, code: zajel_wire::pairing::PairingCode) -> CallOptions {
    let mut options = CallOptions::new(world.relay_url(), code);
    options.line.loopback = true;
    options.duration = Duration::from_millis(800);
    options.line.step_timeout = step();
    options
}

/// A callee that answers by hand: a registered line with `AnswerPolicy::Manual`.
async fn manual_callee(world: &LocalWorld, timeouts: CallTimeouts) -> PhoneLine {
    let registered =
        client::connect_and_register(&world.relay_url(), &Default::default(), None, step())
            .await
            .unwrap();
    let config = CallConfig {
        answer_policy: AnswerPolicy::Manual,
        tone_hz: 660.0,
        timeouts,
        ..CallConfig::loopback()
    };
    PhoneLine::start("callee", registered.session, registered.code, config, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_callee_rejects_a_second_call() {
    let world = LocalWorld::start().await.unwrap();
    let mut answer = AnswerOptions::new(world.relay_url());
    answer.line.loopback = true;
    answer.max_calls = Some(1);
    let answerer = Answerer::start(answer).await.unwrap();
    let code = answerer.code;
    let serving = tokio::spawn(answerer.serve(|_| {}));
    let mut long = options_for(&world, code);
    long.duration = Duration::from_secs(4);
    let first = tokio::spawn(async move { run_call(&long).await });
    // The second call goes once the first is connected: watch the relay forward media setup.
    let metrics = world.relay.metrics();
    let deadline = tokio::time::Instant::now() + step();
    while metrics.forwarded_count("call_answer") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first call never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = run_call(&options_for(&world, code)).await;
    let end = &second.call.as_ref().expect("a call report").end;
    assert!(
        matches!(end, EndReason::RejectedByRemote { reason: Some(r) } if r.as_str() == "busy"),
        "{end:?}"
    );
    let first = first.await.unwrap();
    assert!(first.media_both_ways, "{:?}", first.error);
    let calls = serving.await.unwrap().unwrap();
    assert_eq!(calls.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_call_times_out_ringing() {
    let world = LocalWorld::start().await.unwrap();
    let timeouts = CallTimeouts {
        ringing: Duration::from_millis(600),
        ..CallTimeouts::default()
    };
    let mut callee = manual_callee(&world, CallTimeouts::default()).await;
    let mut options = options_for(&world, callee.code);
    options.line.timeouts = timeouts;
    let report = run_call(&options).await;
    assert_eq!(report.error_kind, Some(ErrorKind::CallEndedEarly));
    let call = report.call.expect("a call report");
    assert!(
        matches!(call.end, EndReason::RingingTimeout),
        "{:?}",
        call.end
    );
    // The callee saw the call ring and then rejected with reason timeout from the caller.
    let ended = callee.phone.ended(step()).await.unwrap();
    assert!(
        matches!(&ended.end, EndReason::RejectedByRemote { reason: Some(r) } if r.as_str() == "timeout"),
        "{:?}",
        ended.end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_callee_hangs_up_and_the_caller_sees_it() {
    let world = LocalWorld::start().await.unwrap();
    let mut callee = manual_callee(&world, CallTimeouts::default()).await;
    let mut options = options_for(&world, callee.code);
    options.duration = Duration::from_secs(10);
    let calling = tokio::spawn(async move { run_call(&options).await });
    callee
        .phone
        .wait_for(step(), "incoming", |e| {
            matches!(e, CallEvent::Incoming { .. }).then_some(())
        })
        .await
        .unwrap();
    callee.phone.engine.accept().await.unwrap();
    callee
        .phone
        .wait_for(step(), "tone", |e| {
            matches!(e, CallEvent::ToneDetected { .. }).then_some(())
        })
        .await
        .unwrap();
    callee.phone.engine.hangup().await.unwrap();
    let ended = callee.phone.ended(step()).await.unwrap();
    assert!(
        matches!(ended.end, EndReason::HangupLocal),
        "{:?}",
        ended.end
    );
    let report = tokio::time::timeout(step(), calling)
        .await
        .unwrap()
        .unwrap();
    let call = report.call.expect("a call report");
    assert!(
        matches!(call.end, EndReason::HangupRemote),
        "{:?}",
        call.end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_reconnects_after_the_path_drops_briefly() {
    let world = LocalWorld::start().await.unwrap();
    let timeouts = CallTimeouts {
        ice_disconnected: Duration::from_millis(800),
        ice_failed: Duration::from_millis(1500),
        ice_keepalive: Duration::from_millis(200),
        ..CallTimeouts::default()
    };
    let mut callee = manual_callee(&world, timeouts).await;
    let registered =
        client::connect_and_register(&world.relay_url(), &Default::default(), None, step())
            .await
            .unwrap();
    let mut caller = PhoneLine::start(
        "caller",
        registered.session,
        registered.code,
        CallConfig {
            timeouts,
            ..CallConfig::loopback()
        },
        false,
    );
    caller.pair_with(callee.code, step()).await.unwrap();
    caller.phone.engine.place_call(false).await.unwrap();
    callee
        .phone
        .wait_for(step(), "incoming", |e| {
            matches!(e, CallEvent::Incoming { .. }).then_some(())
        })
        .await
        .unwrap();
    callee.phone.engine.accept().await.unwrap();
    let tone = |e: &CallEvent| matches!(e, CallEvent::ToneDetected { .. }).then_some(());
    caller.phone.wait_for(step(), "tone", tone).await.unwrap();
    caller.phone.engine.cut_path(true).await.unwrap();
    caller
        .phone
        .wait_for(step(), "reconnecting", |e| {
            matches!(e, CallEvent::Reconnecting { .. }).then_some(())
        })
        .await
        .unwrap();
    caller.phone.engine.cut_path(false).await.unwrap();
    caller
        .phone
        .wait_for(step(), "reconnected", |e| {
            matches!(e, CallEvent::Reconnected { .. }).then_some(())
        })
        .await
        .unwrap();
    caller.phone.engine.hangup().await.unwrap();
    let report = caller.phone.ended(step()).await.unwrap();
    assert!(report.ice.reconnects >= 1, "{:?}", report.ice);
    assert!(report.ice.ice_restarts >= 1, "{:?}", report.ice);
    let callee_report = callee.phone.ended(step()).await.unwrap();
    assert!(matches!(callee_report.end, EndReason::HangupRemote));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_finds_the_server_and_every_call_path() {
    // The relay on wss:// (the demo CA), so the TLS handshake is measured.
    let world = LocalWorld::start_with(WorldOptions { relay_tls: true })
        .await
        .unwrap();
    let key = zajel_wire::keys::public_key_to_base64(&world.registry_key.verifying_key());
    let registry = world.registry_url.to_string();
    let ca_file = tempfile_with(&world.ca.ca_pem());
    let ca = ca_file.to_string_lossy().to_string();
    let doh = world.addresses.doh.clone();
    let (status, stdout, stderr) = run(&[
        "check",
        "--json",
        "--registry",
        &registry,
        "--registry-key",
        &key,
        "--doh",
        &doh,
        "--domain",
        "zajel.test",
        "--allow-private",
        "--no-cache",
        "--ca-file",
        &ca,
    ])
    .await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let report = json(&stdout);
    assert_eq!(report["verdict"], "call_paths_exist");
    let paths = &report["paths"];
    for path in ["direct_udp", "turn_udp", "turn_tcp", "turn_tls"] {
        assert_eq!(paths[path], true, "{path}: {report:#}");
    }
    // Each TURN transport relayed a datagram there and back, not only allocated.
    for turn in report["turn"].as_array().unwrap() {
        assert_eq!(turn["allocated"], true, "{turn}");
        assert!(turn["relay_round_trip_ms"].as_f64().is_some(), "{turn}");
    }
    assert!(report["stun"]["mapped_address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let signaling = &report["signaling"];
    assert!(signaling["url"]
        .as_str()
        .unwrap()
        .starts_with("wss://127.0.0.1:"));
    assert!(signaling["tcp_connect_ms"].as_f64().is_some());
    assert!(
        signaling["tls_handshake_ms"].as_f64().is_some(),
        "{signaling}"
    );
    assert!(signaling["round_trip_ms"].as_f64().is_some());
    assert_eq!(signaling["server_id"], world.relay.server_id());
    // The relay proved the key its signed entry names, in discovery and on this connection.
    assert_eq!(signaling["identity"]["outcome"], "ok", "{signaling}");
    assert_eq!(
        signaling["identity"]["proven_server_id"],
        world.relay.server_id()
    );
    let identities = report["server"]["identities"].as_array().unwrap();
    assert!(
        identities
            .iter()
            .any(|i| i["verified"] == true && i["proven_server_id"] == world.relay.server_id()),
        "{identities:?}"
    );
    let found_by = report["server"]["found_by"].as_array().unwrap();
    assert!(found_by.iter().any(|l| l == "registry") && found_by.iter().any(|l| l == "doh"));
    // Without the CA the wss:// relay is not trusted: discovery finds no usable server.
    let (status, stdout, _) = run(&[
        "check",
        "--json",
        "--registry",
        &registry,
        "--registry-key",
        &key,
        "--allow-private",
        "--no-cache",
    ])
    .await;
    assert_eq!(status, 3, "{stdout}");
    let report = json(&stdout);
    assert_eq!(report["server"]["unreachable"][0]["outcome"], "tls_failure");

    // A plain ws:// relay, checked without the CA: the table, where TURN/TLS fails.
    let plain = LocalWorld::start().await.unwrap();
    let key = zajel_wire::keys::public_key_to_base64(&plain.registry_key.verifying_key());
    let registry = plain.registry_url.to_string();
    let (status, stdout, _) = run(&[
        "check",
        "--registry",
        &registry,
        "--registry-key",
        &key,
        "--allow-private",
        "--no-cache",
        "--step-timeout",
        "2",
    ])
    .await;
    assert_eq!(status, 0);
    assert!(
        stdout.contains("direct UDP yes, TURN/UDP yes, TURN/TCP yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("proven {}", plain.relay.server_id())),
        "{stdout}"
    );
    // Without the demo CA the TURN/TLS handshake fails, and the report says so.
    assert!(
        stdout.contains("TURN/TLS no") && stdout.contains("TLS handshake to"),
        "{stdout}"
    );
    let _ = std::fs::remove_file(ca_file);
}

fn tempfile_with(text: &str) -> std::path::PathBuf {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let path = std::env::temp_dir().join(format!(
        "call-probe-ca-{}.pem",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exit_codes_say_no_server_and_signaling_blocked() {
    // Nothing listens on the port: no server found.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let (status, stdout, _) = run(&[
        "check",
        "--json",
        "--server",
        &url,
        "--allow-private",
        "--no-cache",
        "--layer-timeout-ms",
        "1000",
    ])
    .await;
    assert_eq!(status, 3, "{stdout}");
    let report = json(&stdout);
    assert_eq!(report["verdict"], "no_server_found");
    // The report says which server was tried and how it failed.
    let unreachable = &report["server"]["unreachable"];
    assert_eq!(unreachable[0]["url"], format!("{url}/"), "{unreachable}");
    assert_ne!(unreachable[0]["outcome"], "ok");

    // A server that greets and answers ping (so discovery accepts it) but never registers.
    let stub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", stub.local_addr().unwrap());
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        while let Ok((tcp, _)) = stub.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let hello = r#"{"type":"server_info","serverId":"ed25519:stub","endpoint":"ws://stub","region":"x"}"#;
                let _ = ws.send(Message::text(hello)).await;
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Text(text) = frame {
                        if text.contains("\"ping\"") {
                            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                        }
                    }
                }
            });
        }
    });
    let (status, stdout, _) = run(&[
        "check",
        "--json",
        "--server",
        &url,
        "--allow-private",
        "--no-cache",
        "--step-timeout",
        "1",
    ])
    .await;
    assert_eq!(status, 4, "{stdout}");
    let report = json(&stdout);
    assert_eq!(report["verdict"], "signaling_blocked");
    assert!(report["signaling"]["error"]
        .as_str()
        .unwrap()
        .contains("registration"));
    assert_eq!(report["signaling"]["error_kind"], "signaling_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_no_media_path_when_the_relay_offers_no_turn() {
    let relay = relay_lite::Relay::start(relay_lite::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("ws://{}", relay.local_addr());
    let (status, stdout, _) = run(&[
        "check",
        "--json",
        "--server",
        &url,
        "--allow-private",
        "--no-cache",
    ])
    .await;
    assert_eq!(status, 5, "{stdout}");
    let report = json(&stdout);
    assert_eq!(report["verdict"], "no_media_path");
    assert_eq!(report["signaling"]["ok"], true);
    assert!(report["signaling"].get("error_kind").is_none());
    assert_eq!(
        report["stun"]["error_kind"], "not_offered",
        "{}",
        report["stun"]
    );
    for turn in report["turn"].as_array().unwrap() {
        assert_eq!(turn["error"], "not offered by the relay");
        assert_eq!(turn["error_kind"], "not_offered");
    }
    relay.shutdown().await;
}

#[test]
fn bad_flags_are_refused_clearly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (status, _, stderr) =
            run(&["call", "NOT-A-CODE!", "--server", "ws://127.0.0.1:9"]).await;
        assert_eq!(status, 2, "{stderr}");
        let (status, _, stderr) = run(&["call", "ABC234", "--duration", "0"]).await;
        assert_eq!(status, 2, "{stderr}");
        assert!(stderr.contains("--duration"));
        let (status, _, stderr) =
            run(&["answer", "--code", "lower", "--server", "ws://127.0.0.1:9"]).await;
        assert_eq!(status, 2, "{stderr}");
        let (status, _, stderr) = run(&["call", "ABC234", "--no-cache"]).await;
        assert_eq!(status, 2, "{stderr}");
        assert!(stderr.contains("no server"), "{stderr}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_prints_its_code_link_and_qr_code() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let args = [
        "answer",
        "--server",
        &relay,
        "--allow-private",
        "--no-cache",
        "--loopback",
        "--code",
        "ABC234",
        "--ephemeral-identity",
    ];
    let mut child = command(&args).spawn().expect("answerer runs");
    let stdout = child.stdout.take().expect("stdout");
    let _running = Running(child);
    let (done, read) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("waiting for calls") {
                break;
            }
        }
        let _ = done.send(text);
    });
    let text = tokio::time::timeout(step(), read).await.unwrap().unwrap();
    assert!(text.contains("pairing code ABC234"), "{text}");
    // Its public key, for a caller to pin.
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("public key   "))
        .unwrap_or_else(|| panic!("no public key row: {text}"));
    assert!(
        zajel_wire::pairing::decode_x25519_public_key(key).is_some(),
        "{key}"
    );
    let link = format!(
        "link zajel://ABC234?server={}",
        zajel_wire::pairing::percent_encode(&relay)
    );
    assert!(text.contains(&link), "{text}");
    // The QR code: lines of Unicode half blocks.
    assert!(
        text.lines()
            .filter(|l| l.contains('\u{2580}') || l.contains('\u{2584}') || l.contains('\u{2588}'))
            .count()
            > 10,
        "{text}"
    );
    assert!(text.contains("waiting for calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn call_pins_the_answerers_key_which_the_answerer_keeps_in_its_state_folder() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let (answerer, event, _) = start_answerer_event(&world, &["--state-dir", state_dir]).await;
    let key = event["publicKey"].as_str().expect("publicKey").to_string();
    let code = event["code"].as_str().unwrap().to_string();
    assert!(state.path().join("identity.key").exists());
    drop(answerer);
    // The same folder gives the same identity.
    let (_answerer, event, mut lines) =
        start_answerer_event(&world, &["--state-dir", state_dir, "--max-calls", "2"]).await;
    assert_eq!(event["publicKey"], key.as_str());
    let code_again = event["code"].as_str().unwrap().to_string();
    assert_ne!(code, code_again, "a fresh code each run");

    // A key other than the answerer's: no call, exit 6.
    let other = zajel_wire::pairing::encode_x25519_public_key(&[7u8; 32]);
    let (status, stdout, stderr) =
        run(&call_args(&relay, &code_again, &["--peer-key", &other])).await;
    assert_eq!(status, 6, "{stderr}\n{stdout}");
    let out = json(&stdout);
    assert_eq!(out["call"]["error_kind"], "peer_key_mismatch", "{out:#}");
    assert_eq!(out["call"]["peer_key"], key.as_str());
    assert!(out["call"]["call"].is_null(), "no call was placed");
    assert!(out["call"]["milestones"]["call_placed_ms"].is_null());

    // The right key: an authenticated call, which the answerer records in its contacts.
    let (status, stdout, stderr) =
        run(&call_args(&relay, &code_again, &["--peer-key", &key])).await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let out = json(&stdout);
    assert_eq!(out["call"]["authenticated"], true, "{out:#}");
    assert_eq!(out["call"]["call"]["authenticated"], true);
    assert_eq!(out["call"]["peer_key"], key.as_str());
    assert_eq!(out["servers_tried"], serde_json::json!([]));
    let caller_key = out["call"]["own_key"].as_str().unwrap().to_string();
    // The answerer records the contact before it reports the call.
    let ended = tokio::time::timeout(step(), lines.recv())
        .await
        .expect("the answerer reports the call")
        .expect("a line");
    let ended = json(&ended);
    assert_eq!(ended["event"], "call_ended");
    assert_eq!(ended["report"]["authenticated"], true, "{ended:#}");
    let contacts = json(&std::fs::read_to_string(state.path().join("contacts.json")).unwrap());
    let entries = contacts["contacts"].as_array().unwrap();
    let caller = entries
        .iter()
        .find(|c| c["key"] == caller_key.as_str())
        .unwrap_or_else(|| panic!("the caller is a contact: {contacts:#}"));
    assert_eq!(caller["authenticated"], true, "{contacts:#}");
    // The run that pinned another key paired, but never authenticated.
    assert!(
        entries.iter().any(|c| c["authenticated"] == false),
        "{contacts:#}"
    );

    // Every mode documents the exit codes.
    for mode in ["call", "answer", "check"] {
        let (status, stdout, _) = run(&[mode, "--help"]).await;
        assert_eq!(status, 0);
        assert!(
            stdout.contains("6    call not authenticated"),
            "{mode}: {stdout}"
        );
    }
}

/// A `call-probe call` child whose stderr lines (its progress) arrive while it runs and whose
/// stdout is handed over whole when it ends.
struct RunningCall {
    running: Running,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    stdout: tokio::sync::oneshot::Receiver<String>,
}

fn start_call(args: &[&str]) -> RunningCall {
    let mut child = command(args).spawn().expect("call runs");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (stderr_lines, stderr_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = stderr_lines.send(line);
        }
    });
    let (whole, stdout_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
        let _ = whole.send(text);
    });
    RunningCall {
        running: Running(child),
        stderr: stderr_rx,
        stdout: stdout_rx,
    }
}

/// Waits for a line holding `needle`; returns the lines seen up to it.
async fn line_containing(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(step(), async {
        while let Some(line) = lines.recv().await {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no line with {needle:?} in {seen:#?}");
    seen
}

/// Sends SIGINT, as Ctrl-C at the terminal does.
fn ctrl_c(running: &Running) {
    let status = Command::new("kill")
        .args(["-INT", &running.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// The next `call_ended` line of an answerer (`answer --json`), as JSON.
async fn next_call_ended(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let seen = line_containing(lines, "\"call_ended\"").await;
    json(seen.last().unwrap())
}

fn long_call_args<'a>(relay: &'a str, code: &'a str) -> Vec<&'a str> {
    vec![
        "call",
        code,
        "--server",
        relay,
        "--allow-private",
        "--no-cache",
        "--loopback",
        "--json",
        "--duration",
        "120",
        "--ephemeral-identity",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_hangs_up_the_call_prints_the_report_and_exits_130() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let (answerer, event, mut answerer_lines) = start_answerer_event(&world, &[]).await;
    let code = event["code"].as_str().unwrap().to_string();

    // `call` interrupted once connected (a 120 s call): it hangs up and reports.
    let mut caller = start_call(&long_call_args(&relay, &code));
    line_containing(&mut caller.stderr, "connected;").await;
    ctrl_c(&caller.running);
    let status = caller.running.wait(step()).await.expect("call ends");
    let stdout = tokio::time::timeout(step(), caller.stdout)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stdout}");
    let out = json(&stdout);
    let call = &out["call"];
    assert_eq!(call["error_kind"], "interrupted", "{call:#}");
    assert!(
        call["error"].as_str().unwrap().contains("SIGINT"),
        "{call:#}"
    );
    assert_eq!(call["call"]["end"]["kind"], "hangup_local", "{call:#}");
    assert!(call["call"]["rtp"]["packets_sent"].as_u64().unwrap() > 0);
    assert!(call["milestones"]["hangup_ms"].as_f64().is_some());
    // Durations in JSON are milliseconds, never {secs, nanos}.
    let signaling = &call["signaling"];
    for name in [
        "resolve_ms",
        "tcp_connect_ms",
        "websocket_upgrade_ms",
        "greeting_ms",
    ] {
        assert!(signaling[name].as_f64().is_some(), "{name}: {signaling}");
    }
    assert!(!stdout.contains("\"nanos\""), "{stdout}");
    // The answerer got `call_hangup`: its call ended by the peer's hangup.
    let ended = next_call_ended(&mut answerer_lines).await;
    assert_eq!(ended["report"]["end"]["kind"], "hangup_remote", "{ended}");

    // `answer` interrupted during a call: it hangs that call up, reports it, and stops.
    let mut caller = start_call(&long_call_args(&relay, &code));
    line_containing(&mut caller.stderr, "connected;").await;
    ctrl_c(&answerer);
    let ended = next_call_ended(&mut answerer_lines).await;
    assert_eq!(ended["report"]["end"]["kind"], "hangup_local", "{ended}");
    let seen = line_containing(&mut answerer_lines, "\"stopped\"").await;
    let stopped = json(seen.last().unwrap());
    assert_eq!(stopped["signal"], "SIGINT");
    assert_eq!(stopped["calls"], 2, "both calls counted");
    let mut answerer = answerer;
    let status = answerer.wait(step()).await.expect("answerer ends");
    assert_eq!(status.code(), Some(130));
    // The caller hears the hangup and ends at once, not after its 120 s.
    let status = caller.running.wait(step()).await.expect("caller ends");
    let stdout = tokio::time::timeout(step(), caller.stdout)
        .await
        .unwrap()
        .unwrap();
    let out = json(&stdout);
    assert_eq!(
        out["call"]["call"]["end"]["kind"], "hangup_remote",
        "{out:#}"
    );
    assert!(out["call"]["milestones"]["hangup_ms"].is_null(), "{out:#}");
    // Hung up moments after connecting, maybe before a tone was heard: 0 or 1, not a signal.
    assert!(matches!(status.code(), Some(0 | 1)), "{status:?} {out:#}");
}

/// A registry address that accepts and never answers (discovery's registry layer then runs to its
/// layer timeout), held open for a minute.
fn silent_registry() -> String {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(held);
    });
    registry
}

/// Discovery flags that keep discovery waiting on a silent registry for 30 s.
fn waiting_discovery(registry: &str) -> Vec<String> {
    [
        "--registry",
        registry,
        "--registry-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--layer-timeout-ms",
        "30000",
        "--no-cache",
        "--allow-private",
        "--ephemeral-identity",
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `mode` (with `extra` arguments) against a discovery that waits on `registry`, sends
/// SIGINT once it says it is discovering, and returns its exit code and stdout; the run must
/// end well before discovery would have.
async fn interrupted_during_discovery(mode: &[&str], registry: &str) -> (Option<i32>, String) {
    let mut args: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
    args.extend(waiting_discovery(registry));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = start_call(&args);
    line_containing(&mut run.stderr, "discovering servers").await;
    let started = std::time::Instant::now();
    ctrl_c(&run.running);
    let status = run.running.wait(step()).await.expect("the run ends");
    let stdout = tokio::time::timeout(step(), run.stdout)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{mode:?} waited for discovery"
    );
    (status.code(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_discovery_stops_with_a_report_and_exits_130() {
    // Ctrl-C while discovery waits: no call to hang up, and the run must still end at once with
    // a report, for `call` and for `answer`.
    let registry = silent_registry();
    let (status, stdout) = interrupted_during_discovery(&["call", "ABC234"], &registry).await;
    assert_eq!(status, Some(130), "{stdout}");
    let out = json(&stdout);
    assert_eq!(out["error_kind"], "interrupted", "{out:#}");
    assert!(out["call"].is_null(), "{out:#}");
    assert!(out["error"].as_str().unwrap().contains("SIGINT"), "{out:#}");

    let (status, stdout) = interrupted_during_discovery(&["answer"], &registry).await;
    assert_eq!(status, Some(130), "{stdout}");
    let stopped = json(stdout.trim());
    assert_eq!(stopped["event"], "stopped", "{stopped:#}");
    assert_eq!(stopped["during"], "discovery", "{stopped:#}");
    assert_eq!(stopped["signal"], "SIGINT", "{stopped:#}");
}

/// `demo --video` (`--video` with the `video` feature): both sides decoded the other's frames
/// and read its pattern's counter with none missing, over host candidates and over TURN/TCP.
#[cfg(feature = "video")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_video_decodes_frames_both_ways_with_a_continuous_counter() {
    for extra in [&[][..], &["--relay-only", "--turn-transport", "tcp"][..]] {
        let mut args = vec!["demo", "--video", "--json", "--duration", "2"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run(&args).await;
        assert_eq!(code, 0, "{extra:?}\nstderr: {stderr}\nstdout: {stdout}");
        let report = json(&stdout);
        assert_eq!(report["video_both_ways"], true, "{extra:?}");
        assert_eq!(report["call"]["video_both_ways"], true);
        if !extra.is_empty() {
            assert_eq!(report["call"]["relayed_media"], "tcp", "{extra:?}");
        }
        for side in [&report["call"]["call"], &report["answerer"]] {
            let rx = &side["video"]["received"];
            // At least a few frames: 15 fps for 2 s, less on a starved machine; what counts
            // is that every frame decoded and its counter followed the one before.
            assert!(rx["frames_decoded"].as_u64().unwrap() >= 5, "{rx}");
            assert_eq!(rx["counters_read"], rx["frames_decoded"], "{rx}");
            assert_eq!(rx["counters_missing"], 0, "{rx}");
            assert_eq!(rx["counters_out_of_order"], 0, "{rx}");
            assert_eq!(
                (rx["width"].as_u64(), rx["height"].as_u64()),
                (Some(320), Some(240))
            );
            assert!(side["video"]["sent"]["frames_sent"].as_u64().unwrap() >= 5);
            assert!(side["timeline"]["first_video_frame_ms"].as_f64().is_some());
        }
    }
}

/// Without the `video` feature `--video` cannot send video: a usage error that says why, not
/// a call that negotiates a track and shows nothing.
#[cfg(not(feature = "video"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_video_without_the_feature_says_so() {
    let (code, _, stderr) = run(&["demo", "--video"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`video` cargo feature"), "{stderr}");
}

/// `demo --script`: the caller's scripted controls, each seen in the answerer's report — a
/// silent stretch for mute, black frames for camera off, the other pattern after the switch —
/// and `add-video` turning an audio call into a video call on the same call.
#[cfg(feature = "video")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_script_controls_are_seen_by_the_answerer() {
    let script = "0.5s:mute,1.5s:unmute,2s:camera-off,2.8s:camera-on,3.2s:switch-camera";
    let args = [
        "demo",
        "--video",
        "--json",
        "--duration",
        "4.5",
        "--script",
        script,
    ];
    let (code, stdout, stderr) = run(&args).await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {stdout}");
    let report = json(&stdout);
    let answerer = &report["answerer"];
    let heard: Vec<bool> = answerer["tone"]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["heard"].as_bool().unwrap())
        .collect();
    assert!(
        heard.windows(3).any(|w| w == [true, false, true]),
        "{}",
        answerer["tone"]
    );
    let rx = &answerer["video"]["received"];
    let contents: Vec<&str> = rx["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["pattern 0", "black", "pattern 0", "pattern 1"],
        "{rx}"
    );
    assert_eq!(rx["counters_missing"], 0, "{rx}");
    assert!(
        report["call"]["call"]["tone"]["frames_muted"]
            .as_u64()
            .unwrap()
            > 0
    );

    // add-video: an audio call that becomes a video call.
    let args = [
        "demo",
        "--json",
        "--duration",
        "3",
        "--script",
        "0.3s:add-video",
    ];
    let (code, stdout, stderr) = run(&args).await;
    assert_eq!(code, 0, "stderr: {stderr}\nstdout: {stdout}");
    let report = json(&stdout);
    for side in [&report["call"]["call"], &report["answerer"]] {
        assert_eq!(side["with_video"], true, "{side}");
        assert_eq!(side["video_negotiated"], true);
        let rx = &side["video"]["received"];
        assert!(rx["frames_decoded"].as_u64().unwrap() >= 3, "{rx}");
        assert_eq!(rx["counters_read"], rx["frames_decoded"], "{rx}");
    }
}

/// `answer --script`: the callee's scripted controls, each seen in the caller's report — a
/// silent stretch for mute, black frames for camera off, the other pattern after the switch —
/// and the callee's `add-video` refused (only the caller renegotiates), the call going on.
#[cfg(feature = "video")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answer_script_controls_are_seen_by_the_caller() {
    let world = LocalWorld::start().await.unwrap();
    let relay = world.relay_url().to_string();
    let script =
        "0.3s:add-video,0.5s:mute,1.5s:unmute,2s:camera-off,2.8s:camera-on,3.2s:switch-camera";
    let (mut answerer, code) = start_answerer(&world, &["--once", "--script", script]).await;
    let mut args = call_args(&relay, &code, &["--video"]);
    let duration = args.iter().position(|a| *a == "--duration").unwrap();
    args[duration + 1] = "4.5";
    let (status, stdout, stderr) = run(&args).await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let out = json(&stdout);
    let caller = &out["call"]["call"];
    let heard: Vec<bool> = caller["tone"]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["heard"].as_bool().unwrap())
        .collect();
    assert!(
        heard.windows(3).any(|w| w == [true, false, true]),
        "{}",
        caller["tone"]
    );
    let rx = &caller["video"]["received"];
    let contents: Vec<&str> = rx["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["pattern 0", "black", "pattern 0", "pattern 1"],
        "{rx}"
    );
    assert_eq!(rx["counters_missing"], 0, "{rx}");
    assert_eq!(rx["counters_out_of_order"], 0, "{rx}");
    let exit = answerer
        .wait(step())
        .await
        .expect("answerer ends after one call");
    assert!(exit.success());
}
