//! Call-setup benchmark: the timeline of a call set up through the relay, as the
//! caller sees it, median of N calls, for four pairings side by side in one run:
//! call-probe to call-probe direct (host candidates), call-probe to call-probe
//! relay-only (TURN/UDP from the relay's `ice_servers`), aiortc to aiortc, and
//! aiortc to call-probe. Prints a Markdown table.
//!
//! ```sh
//! bash scripts/py-interop            # the aiortc venv (scripts/test does this)
//! cargo bench -p tests --bench call_setup
//! ```
//!
//! Environment: `BENCH_CALLS` (calls per pairing, default 5), `BENCH_SKIP_AIORTC=1`
//! (leave the aiortc pairings out). Everything runs on 127.0.0.1: call-probe's local
//! world (registry, relay-lite and its TURN server, in this process), the call-probe
//! peers through `call_probe::answer`/`call_probe::probe_call` (what `call-probe
//! answer`/`call` run), the aiortc peers as child processes.
//!
//! A call counts only when audio flowed both ways (each side heard the other's tone).
//! Every milestone is in ms since the caller asked to pair (call-probe: registered and
//! signaling ready, then `pair_request`; aiortc: `pair_request` sent): pair matched,
//! ICE connected, DTLS connected (the peer connection `connected`), and first RTP
//! received — the same event on both stacks: the first RTP packet the audio receiver
//! takes, SRTP removed, before any jitter buffer (aiortc: its receiver's packet handler,
//! wrapped by the interop peer). aiortc's first decoded audio frame is a row of its own;
//! the gap between the two is its jitter buffer's prefetch.
//!
//! `BENCH_VIDEO=1` makes every call a video call (call-probe needs its `video` feature,
//! which the tests crate turns on) and adds a row: the first decoded video frame, the same
//! event on both stacks (call-probe: `timeline.first_video_frame_ms`, the first frame out
//! of libvpx; aiortc: the first frame its video track hands over, decoded by libvpx).

use std::time::Duration;

use call_probe::answer::{AnswerOptions, AnsweredCall, Answerer};
use call_probe::client::TurnTransport;
use call_probe::probe_call::{run_call, CallOptions};
use call_probe::world::LocalWorld;
use tests::interop::{aiortc_since, AiortcOptions, AiortcPeer, AiortcRole};
use tokio::runtime::Runtime;
use url::Url;

const STEP: Duration = Duration::from_secs(20);

/// One call's caller-side milestones (ms since the pair request), `None` when missed.
#[derive(Clone, Copy, Default)]
struct Sample {
    pair_matched: Option<f64>,
    ice_connected: Option<f64>,
    dtls_connected: Option<f64>,
    first_rtp: Option<f64>,
    /// The first decoded audio frame: aiortc's only (call-probe's engine does not mark it).
    first_decoded: Option<f64>,
    /// With `BENCH_VIDEO=1`.
    first_video_frame: Option<f64>,
}

/// Reads one milestone of a sample.
type Milestone = fn(&Sample) -> Option<f64>;

const ROWS: [(&str, Milestone); 6] = [
    ("pair matched", |s| s.pair_matched),
    ("ICE connected", |s| s.ice_connected),
    ("DTLS connected", |s| s.dtls_connected),
    ("first RTP received", |s| s.first_rtp),
    ("first decoded audio frame", |s| s.first_decoded),
    ("first decoded video frame", |s| s.first_video_frame),
];

/// `BENCH_VIDEO=1`: video calls.
fn video() -> bool {
    std::env::var("BENCH_VIDEO").is_ok_and(|v| v == "1")
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn cell(samples: &[Sample], row: Milestone) -> String {
    let values: Vec<f64> = samples.iter().filter_map(row).collect();
    match median(values.clone()) {
        None => "-".into(),
        Some(m) => {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(0.0, f64::max);
            let missing = samples.len() - values.len();
            let note = if missing > 0 {
                format!(", {missing} missed")
            } else {
                String::new()
            };
            format!("{m:.1} ({min:.0}–{max:.0}{note})")
        }
    }
}

/// Each pairing's median time to the first RTP packet, and with `BENCH_VIDEO=1` to the
/// first decoded video frame (each the same event on both stacks), against the first
/// pairing's, the anchor of this run: ratios hold on a busy machine where the
/// milliseconds do not.
fn print_ratios(results: &[(&str, Vec<Sample>, usize)]) {
    let Some((anchor_name, anchor_samples, _)) = results.first() else {
        return;
    };
    let mut events: Vec<(&str, Milestone)> = vec![("first RTP received", |s| s.first_rtp)];
    if video() {
        events.push(("first decoded video frame", |s| s.first_video_frame));
    }
    for (event, milestone) in events {
        let of = |samples: &[Sample]| median(samples.iter().filter_map(milestone).collect());
        let Some(anchor) = of(anchor_samples).filter(|m| *m > 0.0) else {
            println!("\nNo ratios for {event}: the anchor ({anchor_name}) has none.");
            continue;
        };
        let mut heading = event.to_string();
        heading[..1].make_ascii_uppercase();
        println!("\n{heading}, median, against {anchor_name} ({anchor:.1} ms) in this run:\n");
        for (name, samples, _) in &results[1..] {
            match of(samples) {
                Some(m) => println!("- {name}: {m:.1} ms, {:.1}×", m / anchor),
                None => println!("- {name}: none"),
            }
        }
    }
}

/// A call-probe answerer (one call) and a call-probe caller through `relay`.
fn probe_to_probe(rt: &Runtime, relay: &Url, relay_only: bool) -> Result<Sample, String> {
    rt.block_on(async {
        let mut answer = AnswerOptions::new(relay.clone());
        answer.line.loopback = true;
        answer.line.with_stun = false;
        answer.line.relay_only = relay_only;
        answer.line.turn_transport = TurnTransport::Udp;
        answer.max_calls = Some(1);
        answer.line.step_timeout = STEP;
        let answerer = Answerer::start(answer).await.map_err(|e| e.to_string())?;
        let code = answerer.code;
        let serving = tokio::spawn(answerer.serve(|_| {}));

        let mut call = CallOptions::new(relay.clone(), code);
        call.line.loopback = true;
        call.line.with_stun = false;
        call.line.relay_only = relay_only;
        call.line.turn_transport = TurnTransport::Udp;
        call.duration = Duration::from_millis(500);
        call.line.step_timeout = STEP;
        call.with_video = video();
        let report = run_call(&call).await;
        if let Some(error) = report.error {
            return Err(error);
        }
        if !report.media_both_ways {
            return Err("audio did not flow both ways".into());
        }
        let answered = tokio::time::timeout(STEP, serving)
            .await
            .map_err(|_| "the answerer did not finish".to_string())?
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        answerer_heard(&answered)?;
        if relay_only {
            // Relay-only must mean it: the caller's selected local candidate is a TURN relay one.
            let kind = report
                .call
                .as_ref()
                .and_then(|call| call.ice.selected_pair.as_ref())
                .map(|pair| pair.local.kind.clone());
            if kind.as_deref() != Some("relay") {
                return Err(format!("relay-only call used a {kind:?} candidate"));
            }
        }
        let m = report.milestones;
        let origin = m.signaling_ready_ms.ok_or("no signaling_ready")?;
        let since = |t: Option<f64>| t.map(|t| t - origin);
        Ok(Sample {
            pair_matched: since(m.pair_matched_ms),
            ice_connected: since(m.ice_connected_ms),
            dtls_connected: since(m.dtls_connected_ms),
            first_rtp: since(m.first_rtp_ms),
            first_decoded: None,
            first_video_frame: since(m.first_video_frame_ms),
        })
    })
}

/// The call-probe answerer's one call heard the caller's tone.
fn answerer_heard(calls: &[AnsweredCall]) -> Result<(), String> {
    match calls {
        [call] if call.report.tone.detected.is_some() => Ok(()),
        [_] => Err("the call-probe answerer heard no tone".into()),
        _ => Err(format!("the answerer took {} calls", calls.len())),
    }
}

fn aiortc_sample(result: &serde_json::Value) -> Sample {
    let at = |mark| aiortc_since(result, "pair_request_sent", mark);
    Sample {
        pair_matched: at("pair_matched"),
        ice_connected: at("ice_connected"),
        dtls_connected: at("dtls_connected"),
        first_rtp: at("first_rtp_received"),
        first_decoded: at("first_audio_frame"),
        first_video_frame: at("first_video_frame"),
    }
}

fn aiortc_caller(relay: &Url, code: String) -> Result<serde_json::Value, String> {
    let mut call = AiortcOptions::new(AiortcRole::Call { peer: code }, relay.as_str());
    call.hold = Duration::from_millis(300);
    call.step_timeout = STEP;
    call.video = video();
    let mut caller = AiortcPeer::spawn(&call)?;
    let result = caller.result(STEP * 3)?;
    if result["ok"] != true {
        return Err(format!("aiortc caller: {result}"));
    }
    Ok(result)
}

/// Two aiortc peers (child processes) through `relay`.
fn aiortc_to_aiortc(relay: &Url) -> Result<Sample, String> {
    let mut answer = AiortcOptions::new(AiortcRole::Answer, relay.as_str());
    answer.step_timeout = STEP;
    answer.tone_hz = 660.0;
    answer.video = video();
    let mut callee = AiortcPeer::spawn(&answer)?;
    let code = callee.registered(STEP)?;
    let result = aiortc_caller(relay, code)?;
    let heard = callee.result(STEP)?;
    if heard["ok"] != true {
        return Err(format!("aiortc callee: {heard}"));
    }
    Ok(aiortc_sample(&result))
}

/// An aiortc caller (child process) and a call-probe answerer through `relay`.
fn aiortc_to_probe(rt: &Runtime, relay: &Url) -> Result<Sample, String> {
    let (code, serving) = rt.block_on(async {
        let mut answer = AnswerOptions::new(relay.clone());
        answer.line.loopback = true;
        answer.line.with_stun = false;
        answer.max_calls = Some(1);
        answer.line.step_timeout = STEP;
        let answerer = Answerer::start(answer).await.map_err(|e| e.to_string())?;
        let code = answerer.code;
        Ok::<_, String>((code, tokio::spawn(answerer.serve(|_| {}))))
    })?;
    let result = aiortc_caller(relay, code.to_string())?;
    let answered = rt.block_on(async {
        tokio::time::timeout(STEP, serving)
            .await
            .map_err(|_| "the answerer did not finish".to_string())?
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    })?;
    answerer_heard(&answered)?;
    Ok(aiortc_sample(&result))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there is nothing to list.
    }
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let skip_aiortc = std::env::var("BENCH_SKIP_AIORTC").is_ok_and(|v| v == "1");
    if !skip_aiortc {
        if let Err(error) = tests::interop::python() {
            eprintln!("{error}\n(or BENCH_SKIP_AIORTC=1)");
            std::process::exit(1);
        }
    }
    zajel_client_net::tls::install_crypto_provider();
    let rt = Runtime::new().expect("tokio runtime");
    let world = rt
        .block_on(LocalWorld::start())
        .expect("start the local world");
    let relay = world.relay_url();
    eprintln!(
        "relay {relay}, TURN {:?}; {calls} calls per pairing",
        world.addresses.turn_udp
    );

    type Run<'a> = Box<dyn Fn() -> Result<Sample, String> + 'a>;
    let mut pairings: Vec<(&str, Run)> = vec![
        (
            "call-probe → call-probe, direct",
            Box::new(|| probe_to_probe(&rt, &relay, false)),
        ),
        (
            "call-probe → call-probe, relay-only (TURN/UDP)",
            Box::new(|| probe_to_probe(&rt, &relay, true)),
        ),
    ];
    if !skip_aiortc {
        pairings.push(("aiortc → aiortc", Box::new(|| aiortc_to_aiortc(&relay))));
        pairings.push((
            "aiortc → call-probe",
            Box::new(|| aiortc_to_probe(&rt, &relay)),
        ));
    }

    let mut results: Vec<(&str, Vec<Sample>, usize)> = Vec::new();
    for (name, run) in &pairings {
        let mut samples = Vec::new();
        let mut failed = 0;
        for i in 0..calls {
            match run() {
                Ok(sample) => samples.push(sample),
                Err(error) => {
                    failed += 1;
                    eprintln!("{name}: call {} failed: {error}", i + 1);
                }
            }
        }
        eprintln!("{name}: {} of {calls} calls", samples.len());
        results.push((name, samples, failed));
    }

    println!(
        "\nCall setup on 127.0.0.1, caller's view, ms since the pair request: median (min–max) of {calls} calls\n"
    );
    print!("| milestone |");
    for (name, _, _) in &results {
        print!(" {name} |");
    }
    println!();
    print!("|---|");
    for _ in &results {
        print!("---|");
    }
    println!();
    for (label, row) in ROWS {
        print!("| {label} |");
        for (_, samples, _) in &results {
            print!(" {} |", cell(samples, row));
        }
        println!();
    }
    print!("| failed calls |");
    for (_, _, failed) in &results {
        print!(" {failed} |");
    }
    println!();
    print_ratios(&results);
    rt.block_on(world.stop());
    if results.iter().any(|(_, samples, _)| samples.is_empty()) {
        std::process::exit(1);
    }
}
