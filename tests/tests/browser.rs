//! Discovery in a real browser: Debian's Chromium (driven by playwright-core)
//! opens discovery-web's example page, which runs the wasm package against
//! the in-process world of call-probe's demo (native registry, relay-lite on
//! `wss://` registered with it, its list signed as `_zajel` TXT records)
//! with the registry blocked: the DoH layer (RFC 8484 POST from the page)
//! must win, and the relay must be verified (signed by the pinned registry
//! key and proven over the browser's WebSocket). Then calls between the
//! page's RTCPeerConnection and call-probe both ways, with Chromium's fake
//! camera and call-probe's VP8 test pattern in the video ones: each side
//! decodes the other's frames, and the page reads call-probe's counter back
//! frame by frame (Chromium's picture has no counter, so that direction
//! checks frames and resolution only).
//!
//! Skips with a message only when /usr/bin/chromium is absent and `CI` is not
//! `true`; in CI it must run.

use std::time::Duration;

use call_probe::answer::{AnswerOptions, Answerer};
use call_probe::probe_call::{self, CallOptions};
use call_probe::world::{LocalWorld, WorldOptions, DEMO_DOMAIN};
use discovery_client::publish::{self, PublishRequest};
use tests::browser::{script_result, spki_hash, tone_wav, workspace, BrowserEnv, PageServer};
use zajel_client_net::tls;
use zajel_wire::pairing::PairingCode;

/// The world, the page server and what the page needs to find the relay.
struct Setup {
    env: BrowserEnv,
    world: LocalWorld,
    server: PageServer,
    /// discover() options: the registry blocked, DoH on the page's origin.
    discover: serde_json::Value,
    spki: String,
}

/// `None` when the test is skipped (no Chromium, not in CI).
async fn setup() -> Option<Setup> {
    let env = tokio::task::spawn_blocking(BrowserEnv::find)
        .await
        .expect("join")?;
    let world = LocalWorld::start_with(WorldOptions { relay_tls: true })
        .await
        .expect("start the world");
    // The same records the world's DoH server serves, for the page's own origin.
    let records = publish::publish(
        &PublishRequest {
            registry: world.registry_url.clone(),
            extra_registry_keys: Vec::new(),
            domain: DEMO_DOMAIN.into(),
            ttl: 60,
            valid_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        },
        &world.registry_key,
        tls::client_config(&[]).expect("tls"),
    )
    .await
    .expect("sign the TXT records");
    let served: Vec<(String, Vec<String>)> = records
        .iter()
        .map(|r| (r.name.clone(), r.strings.clone()))
        .collect();
    let server = PageServer::start(
        world.ca.server_config().expect("tls"),
        vec![
            ("/example/pkg/".into(), env.pkg_dir.clone()),
            (
                "/example/".into(),
                workspace().join("discovery-web/example"),
            ),
            ("/call/pkg/".into(), env.pkg_dir.clone()),
            ("/call/".into(), workspace().join("tests/browser")),
        ],
        &served,
    )
    .await
    .expect("page server");
    let blocked = tests::blackhole::refused_address();
    let registry_key = zajel_wire::keys::public_key_to_base64(&world.registry_key.verifying_key());
    let discover = serde_json::json!({
        "registries": [format!("http://{blocked}")],
        "registryKeys": [registry_key],
        "dohServers": [format!("{}/dns-query", server.origin)],
        "domains": [DEMO_DOMAIN],
        "allowPrivate": true,
    });
    let spki = spki_hash(&world.ca.cert_der);
    Some(Setup {
        env,
        world,
        server,
        discover,
        spki,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_finds_relay_lite_through_doh_with_the_registry_blocked() {
    let Some(Setup {
        env,
        world,
        server,
        mut discover,
        spki,
    }) = setup().await
    else {
        return;
    };
    discover["limitMs"] = 20000.into();
    let url = format!(
        "{}/example/#{}",
        server.origin,
        url_escape(&discover.to_string())
    );
    // Then from the cache alone (registry still blocked, no DoH).
    let mut cache_only = discover.clone();
    cache_only["dohServers"] = serde_json::json!([]);
    cache_only.as_object_mut().unwrap().remove("limitMs");
    let cache_only = cache_only.to_string();
    let result = tokio::task::spawn_blocking(move || {
        env.run_script(
            "discovery.mjs",
            &[url, spki, cache_only],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{e}"));

    let relay = world.relay_url().to_string();
    let first = &result["first"];
    assert_eq!(first["verified"], true, "{result:#}");
    assert_eq!(first["url"], relay.as_str(), "{result:#}");
    let report = &result["report"];
    assert_eq!(report["verdict"], "verified", "{report:#}");
    assert_eq!(report["complete"], true);
    let layer = |name: &str| {
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} layer in {report:#}"))
    };
    assert_eq!(layer("registry")["outcome"], "refused", "{report:#}");
    assert_eq!(layer("doh")["outcome"], "ok", "{report:#}");
    let best = &report["best"];
    assert_eq!(best["url"], relay.as_str());
    assert_eq!(
        best["proven_server_id"],
        world.addresses.relay_server_id.as_str(),
        "the relay proved its key over the browser's WebSocket: {report:#}"
    );
    assert!(
        best["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "doh"),
        "{best}"
    );
    // The first run wrote the relay to localStorage: found again from the cache alone,
    // and proven again over the WebSocket.
    let cached = &result["cached"];
    let cached_layer = |name: &str| {
        cached["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} layer in {cached:#}"))
    };
    assert_eq!(cached_layer("cache")["outcome"], "ok", "{cached:#}");
    assert_eq!(
        cached_layer("doh")["outcome"],
        "not_configured",
        "{cached:#}"
    );
    assert_eq!(cached["verdict"], "verified", "{cached:#}");
    assert_eq!(cached["best"]["url"], relay.as_str());
    assert!(
        cached["best"]["last_ok_ms"].as_u64().is_some(),
        "{cached:#}"
    );
    // A torn stored value is set aside and said so, never read.
    let torn = &result["torn"];
    assert_eq!(torn["setAside"], true, "{torn:#}");
    assert_eq!(torn["report"]["verdict"], "nothing", "{torn:#}");
    assert!(
        torn["report"]["warnings"].as_array().is_some_and(|w| w
            .iter()
            .any(|w| w.as_str().unwrap_or_default().contains("set aside"))),
        "{torn:#}"
    );
    let first_verified_ms = report["first_verified_ms"]
        .as_f64()
        .expect("a verified time");
    eprintln!(
        "browser: first verified server after {first_verified_ms:.0} ms (run time), page saw it after {:.0} ms",
        result["firstMs"].as_f64().unwrap_or_default()
    );
    world.stop().await;
}

/// The tone the page's fake microphone plays, and call-probe's.
const PAGE_HZ: f64 = 520.0;
const PROBE_HZ: f64 = 440.0;
const TOLERANCE_HZ: f64 = 5.0;

fn random_code() -> PairingCode {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random source");
    PairingCode::from_random_bytes(bytes)
}

/// The call page's URL for `params` (its `discover` options added).
fn call_url(setup: &Setup, mut params: serde_json::Value) -> String {
    params["discover"] = setup.discover.clone();
    format!(
        "{}/call/call.html#{}",
        setup.server.origin,
        url_escape(&params.to_string())
    )
}

/// Checks what the page's getStats saw: RTP both ways on a connected call.
fn assert_page_media(result: &serde_json::Value) {
    assert!(result["error"].is_null(), "the page failed: {result:#}");
    let stats = &result["stats"];
    assert!(
        stats["inbound"]["packetsReceived"].as_u64() > Some(10),
        "the page received no audio: {result:#}"
    );
    assert!(
        stats["outbound"]["packetsSent"].as_u64() > Some(10),
        "the page sent no audio: {result:#}"
    );
    assert_eq!(stats["transport"]["dtlsState"], "connected", "{result:#}");
    assert_eq!(result["verified"], true, "{result:#}");
}

fn assert_probe_heard_page(report: &call_probe::CallReport) {
    let heard = report
        .tone
        .detected
        .as_ref()
        .unwrap_or_else(|| panic!("call-probe heard no tone from the page: {report:#?}"));
    assert!(
        (heard.frequency_hz - PAGE_HZ).abs() <= TOLERANCE_HZ,
        "call-probe heard {} Hz",
        heard.frequency_hz
    );
    assert!(report.rtp.packets_received > 10, "{:?}", report.rtp);
    assert!(report.rtp.packets_sent > 10, "{:?}", report.rtp);
}

/// The least a call of a few seconds shows: frames decoded at 15 fps for over a second.
const MIN_FRAMES: u64 = 15;

/// call-probe decoded the page's video: Chromium's fake camera asked for 320x240, VP8.
/// Chromium's picture carries no counter of ours, so unlike call-probe's own calls the
/// counter is not checked in this direction: its frames must read `unreadable` (never a
/// counter, never black).
fn assert_probe_saw_page_video(report: &call_probe::CallReport) {
    let video = report
        .video
        .as_ref()
        .unwrap_or_else(|| panic!("call-probe has no video report: {report:#?}"));
    let received = &video.received;
    assert!(
        received.frames_decoded >= MIN_FRAMES,
        "call-probe decoded {} of Chromium's frames: {received:#?}",
        received.frames_decoded
    );
    assert_eq!(
        (received.width, received.height),
        (Some(320), Some(240)),
        "{received:#?}"
    );
    assert!(received.keyframes_received > 0, "{received:#?}");
    assert_eq!(received.decode_errors, 0, "{received:#?}");
    // A real camera's picture is never taken for a counter (nor for black): read_picture
    // says unreadable for every frame.
    assert_eq!(received.counters_read, 0, "{received:#?}");
    assert_eq!(
        received.unreadable_frames, received.frames_decoded,
        "Chromium's frames read as something: {received:#?}"
    );
    assert!(video.sent.frames_sent >= MIN_FRAMES, "{:#?}", video.sent);
}

/// The page decoded call-probe's VP8 (getStats) and read its pattern back frame by frame
/// (call.js's port of `read_picture`): the counter went up by one from frame to frame.
fn assert_page_saw_probe_video(result: &serde_json::Value) {
    let video_in = &result["stats"]["videoIn"];
    assert_eq!(video_in["mimeType"], "video/VP8", "{result:#}");
    assert!(
        video_in["framesDecoded"].as_u64() >= Some(MIN_FRAMES),
        "the page decoded too few frames: {result:#}"
    );
    assert_eq!(video_in["frameWidth"], 320, "{result:#}");
    assert_eq!(video_in["frameHeight"], 240, "{result:#}");
    assert_eq!(
        result["stats"]["videoOut"]["mimeType"], "video/VP8",
        "{result:#}"
    );
    assert!(
        result["stats"]["videoOut"]["framesEncoded"].as_u64() >= Some(MIN_FRAMES),
        "{result:#}"
    );
    let pattern = &result["stats"]["pattern"];
    assert!(
        pattern["countersRead"].as_u64() >= Some(MIN_FRAMES),
        "the page read too few counters: {pattern:#}"
    );
    assert_eq!(pattern["patterns"], serde_json::json!([0]), "{pattern:#}");
    assert_eq!(pattern["countersOutOfOrder"], 0, "{pattern:#}");
    assert_eq!(pattern["unreadable"], 0, "{pattern:#}");
    assert_eq!(
        pattern["countersMissing"], 0,
        "the counter skipped in the page: {pattern:#}"
    );
}

/// AES-GCM, seen alike by call-probe (its DTLS ServerHello) and by the page's getStats:
/// call-probe is the DTLS server in both directions and chooses by its own order, AES-GCM
/// first (third_party/README.md); Chromium lists AES-CM first.
fn assert_gcm(dtls: &call_probe::report::DtlsReport, page: &serde_json::Value) {
    assert!(dtls.srtp_profile_is_aes_gcm, "{dtls:?}");
    assert_eq!(
        page["stats"]["transport"]["srtpCipher"],
        dtls.srtp_profile.as_deref().unwrap_or_default(),
        "{page:#}"
    );
    assert_eq!(page["stats"]["transport"]["dtlsRole"], "client", "{page:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_calls_call_probe_directly_and_over_turn_tcp_and_tls_and_is_called_authenticated()
{
    let Some(setup) = setup().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = dir.path().join("tone.wav");
    tone_wav(&wav, PAGE_HZ, 10).expect("write the WAV");
    let wav = wav.display().to_string();
    let step = Duration::from_secs(20);

    // call-probe answers three calls from the page: direct, then relay-only
    // (the page's side) over TURN TCP and over TURN TLS; the first two with the
    // page's fake camera too (video both ways).
    let mut options = AnswerOptions::new(setup.world.relay_url());
    options.line.loopback = true;
    options.line.with_stun = false;
    options.line.tone_hz = PROBE_HZ;
    options.line.trust = setup.world.trust();
    options.line.extra_roots = vec![setup.world.ca.ca_der.clone()];
    options.line.step_timeout = step;
    options.max_calls = Some(3);
    // The page authenticates its calls with discovery-web's CallIdentity: call-probe
    // refuses any call that is not.
    options.line.require_authenticated = true;
    let answerer = Answerer::start(options).await.expect("call-probe answers");
    let answer_code = answerer.code.to_string();
    let (answered, reports) = std::sync::mpsc::channel();
    let serving = tokio::spawn(answerer.serve(move |call| {
        let _ = answered.send(call.report.clone());
    }));

    let mut srtp = Vec::new();
    for (turn, video) in [(None, true), (Some("tcp"), true), (Some("tls"), false)] {
        let params = serde_json::json!({
            "role": "call",
            "code": random_code().to_string(),
            "peer": answer_code,
            "turn": turn,
            "video": video,
            "holdMs": if video { 3000 } else { 2500 },
        });
        let url = call_url(&setup, params);
        let args = vec![url, setup.spki.clone(), wav.clone()];
        let env = &setup.env;
        let child = env.spawn_script("call.mjs", &args, &[]).expect("node");
        let result = tokio::task::block_in_place(|| script_result(child, "call.mjs", step * 3))
            .unwrap_or_else(|e| panic!("page call ({turn:?}): {e}"));
        assert_page_media(&result);
        assert_eq!(result["ended"], "hangup_local", "{result:#}");
        let pair = &result["stats"]["pair"];
        match turn {
            None => assert_eq!(pair["local"]["type"], "host", "{result:#}"),
            Some(transport) => {
                assert_eq!(pair["local"]["type"], "relay", "{result:#}");
                assert_eq!(pair["local"]["relayProtocol"], transport, "{result:#}");
            }
        }
        let report = tokio::task::block_in_place(|| reports.recv_timeout(step))
            .unwrap_or_else(|_| panic!("call-probe reported no call ({turn:?})"));
        assert_probe_heard_page(&report);
        assert_eq!(result["callId"], report.call_id.as_str());
        assert!(
            report.authenticated,
            "call-probe did not authenticate the page"
        );
        assert_eq!(result["authenticated"], true, "{result:#}");
        eprintln!(
            "browser call ({}): page connected after {:.0} ms (discovery {:.0} ms), SRTP {} (page says {}), call-probe heard {:?} Hz",
            turn.unwrap_or("direct"),
            result["connectedMs"].as_f64().unwrap_or_default(),
            result["discoveredMs"].as_f64().unwrap_or_default(),
            report.dtls.srtp_profile.as_deref().unwrap_or("?"),
            result["stats"]["transport"]["srtpCipher"],
            report.tone.detected.as_ref().map(|t| t.frequency_hz),
        );
        assert_gcm(&report.dtls, &result);
        if video {
            assert_probe_saw_page_video(&report);
            assert_page_saw_probe_video(&result);
            eprintln!(
                "browser video call ({}): call-probe decoded {} frames {:?}x{:?} at {:?} fps ({} freezes); page decoded {} at {}x{}, read counters {}",
                turn.unwrap_or("direct"),
                report.video.as_ref().map_or(0, |v| v.received.frames_decoded),
                report.video.as_ref().and_then(|v| v.received.width),
                report.video.as_ref().and_then(|v| v.received.height),
                report.video.as_ref().and_then(|v| v.received.frame_rate),
                report.video.as_ref().map_or(0, |v| v.received.freezes),
                result["stats"]["videoIn"]["framesDecoded"],
                result["stats"]["videoIn"]["frameWidth"],
                result["stats"]["videoIn"]["frameHeight"],
                result["stats"]["pattern"],
            );
        } else {
            assert!(report.video.is_none(), "an audio call: {:#?}", report.video);
        }
        srtp.push((
            report.dtls.srtp_profile.clone(),
            result["stats"]["transport"]["srtpCipher"].clone(),
        ));
    }
    tokio::time::timeout(step, serving)
        .await
        .expect("the answerer stops after three calls")
        .expect("join")
        .expect("answerer");

    // The reverse: call-probe calls the page, with video.
    let page_code = random_code();
    let params = serde_json::json!({
        "role": "answer",
        "code": page_code.to_string(),
        "video": true,
        "holdMs": 2500,
    });
    let url = call_url(&setup, params);
    let args = vec![url, setup.spki.clone(), wav.clone()];
    let mut child = setup
        .env
        .spawn_script("call.mjs", &args, &[("ZAJEL_WAIT_REGISTERED", "1")])
        .expect("node");
    tokio::task::block_in_place(|| {
        child.wait_for(step, |line| (line == "REGISTERED").then_some(()))
    })
    .unwrap_or_else(|e| panic!("the page did not register: {e}"));
    let mut call = CallOptions::new(setup.world.relay_url(), page_code);
    call.line.loopback = true;
    call.line.with_stun = false;
    call.line.tone_hz = PROBE_HZ;
    call.line.trust = setup.world.trust();
    call.line.step_timeout = step;
    call.line.require_authenticated = true;
    call.duration = Duration::from_secs(3);
    call.with_video = true;
    let report = probe_call::run_call(&call).await;
    let result = tokio::task::block_in_place(|| script_result(child, "call.mjs", step * 2))
        .unwrap_or_else(|e| panic!("page answer: {e}"));
    assert_page_media(&result);
    assert_eq!(result["ended"], "hangup_remote", "{result:#}");
    // Chromium's picture has no counter of ours: it counts as video because its frames
    // decode to a picture (read as `unreadable`, never as black); frames decoded each way
    // are asserted below.
    assert_eq!(report.video_both_ways, Some(true), "{report:#?}");
    assert_eq!(
        report.error, None,
        "call-probe call: {:?}",
        report.error_kind
    );
    assert!(report.media_both_ways, "{report:#?}");
    let heard = report.heard_hz.expect("call-probe heard the page");
    assert!((heard - PAGE_HZ).abs() <= TOLERANCE_HZ, "heard {heard} Hz");
    assert!(
        report.authenticated,
        "call-probe call did not authenticate the page"
    );
    assert_eq!(result["authenticated"], true, "{result:#}");
    let engine = report.call.as_ref().expect("the engine's report");
    assert_probe_saw_page_video(engine);
    assert_page_saw_probe_video(&result);
    eprintln!(
        "browser video answer: call-probe decoded {} frames at {:?} fps ({} freezes); page decoded {}, read counters {}",
        engine.video.as_ref().map_or(0, |v| v.received.frames_decoded),
        engine.video.as_ref().and_then(|v| v.received.frame_rate),
        engine.video.as_ref().map_or(0, |v| v.received.freezes),
        result["stats"]["videoIn"]["framesDecoded"],
        result["stats"]["pattern"],
    );
    eprintln!(
        "browser answer: SRTP {} (page says {})",
        engine.dtls.srtp_profile.as_deref().unwrap_or("?"),
        result["stats"]["transport"]["srtpCipher"]
    );
    srtp.push((
        engine.dtls.srtp_profile.clone(),
        result["stats"]["transport"]["srtpCipher"].clone(),
    ));
    assert_gcm(&engine.dtls, &result);
    eprintln!("browser: SRTP profiles negotiated with Chromium: {srtp:?}");
    setup.world.stop().await;
}

/// Percent-escapes everything but unreserved characters (for the URL's # part).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
