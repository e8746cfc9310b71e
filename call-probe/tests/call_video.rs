//! Video calls between in-process engines on loopback (cargo feature `video`): VP8 both ways
//! with the pattern's counter read back continuous on each side, and the call controls —
//! mute, camera off/on, switch camera — each seen in the other side's report. Waits await
//! an engine event or poll a snapshot with a deadline; no test sleeps to synchronise.

use std::time::Duration;

use call_probe::selftest::{Phone, Switchboard};
use call_probe::{AnswerPolicy, CallConfig, CallEvent, CallReport, Control};

const STEP: Duration = Duration::from_secs(20);

fn config(tone_hz: f64, answer_policy: AnswerPolicy) -> CallConfig {
    CallConfig {
        tone_hz,
        answer_policy,
        ..CallConfig::loopback()
    }
}

fn first_video_frame(event: &CallEvent) -> Option<()> {
    matches!(event, CallEvent::FirstVideoFrame { .. }).then_some(())
}

/// A video call the callee auto-accepts, with a decoded frame on each side.
async fn video_pair() -> (Switchboard, Phone, Phone) {
    let board = Switchboard::new();
    let mut a = board.add_phone("caller", config(440.0, AnswerPolicy::Manual));
    let mut b = board.add_phone("callee", config(660.0, AnswerPolicy::Accept));
    board.dial("caller", "callee");
    a.engine.place_call(true).await.unwrap();
    a.wait_for(STEP, "a decoded video frame", first_video_frame)
        .await
        .unwrap();
    b.wait_for(STEP, "a decoded video frame", first_video_frame)
        .await
        .unwrap();
    (board, a, b)
}

/// Polls `phone`'s snapshot until `check` holds.
async fn until_snapshot(phone: &Phone, what: &str, check: impl Fn(&CallReport) -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(report) = phone.engine.snapshot().await.unwrap() {
            if check(&report) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {what} never happened; last report: {:?}",
            phone.name,
            phone.engine.snapshot().await.unwrap().map(|r| r.video)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn decoded(report: &CallReport) -> u64 {
    report
        .video
        .as_ref()
        .map_or(0, |v| v.received.frames_decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_flows_both_ways_with_continuous_counters() {
    let (_board, mut a, mut b) = video_pair().await;
    for phone in [&a, &b] {
        until_snapshot(phone, "30 decoded frames", |r| decoded(r) >= 30).await;
    }
    a.engine.hangup().await.unwrap();
    for report in [a.ended(STEP).await.unwrap(), b.ended(STEP).await.unwrap()] {
        let video = report.video.as_ref().expect("a video report");
        assert!(video.both_ways(), "{video:?}");
        let rx = &video.received;
        assert!(rx.counter_continuous(), "{rx:?}");
        assert!(rx.counters_read >= 30, "{rx:?}");
        assert_eq!((rx.width, rx.height), (Some(320), Some(240)));
        assert!(rx.keyframes_received >= 1 && video.sent.keyframes_sent >= 1);
        assert_eq!(rx.patterns_seen, vec![0]);
        assert_eq!((rx.black_frames, rx.unreadable_frames), (0, 0), "{rx:?}");
        // 15 fps are sent; a starved machine (tests run in parallel on two cores) sends fewer.
        let rate = rx.frame_rate.unwrap();
        assert!((1.0..=17.0).contains(&rate), "{rate} frames/s");
        assert!(rx.bitrate_kbps.unwrap() > 1.0);
        assert!(report.timeline.first_video_frame_ms.is_some());
        // Audio is still there.
        assert!(report.tone.detected.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_are_seen_by_the_peer() {
    let (_board, mut a, mut b) = video_pair().await;
    until_snapshot(&b, "the tone heard", |r| r.tone.detected.is_some()).await;

    // Mute: the callee hears silence for a while, then the tone again.
    assert!(a.engine.control(Control::Mute).await.unwrap().muted);
    until_snapshot(&b, "a silent stretch", |r| {
        r.tone
            .spans
            .last()
            .is_some_and(|s| !s.heard && s.to_ms - s.from_ms >= 500.0)
    })
    .await;
    assert!(!a.engine.control(Control::Unmute).await.unwrap().muted);
    until_snapshot(&b, "the tone back", |r| {
        let spans = &r.tone.spans;
        spans.len() >= 3 && spans.last().is_some_and(|s| s.heard)
    })
    .await;

    // Camera off: black frames; on again: the pattern, counter going on.
    assert!(
        !a.engine
            .control(Control::CameraOff)
            .await
            .unwrap()
            .camera_on
    );
    until_snapshot(&b, "black frames", |r| {
        r.video.as_ref().is_some_and(|v| {
            v.received
                .spans
                .last()
                .is_some_and(|s| s.content == "black" && s.frames >= 5)
        })
    })
    .await;
    assert!(a.engine.control(Control::CameraOn).await.unwrap().camera_on);
    until_snapshot(&b, "the pattern back", |r| {
        r.video.as_ref().is_some_and(|v| {
            v.received
                .spans
                .last()
                .is_some_and(|s| s.content == "pattern 0" && s.frames >= 5)
        })
    })
    .await;

    // Switch camera: the other pattern, on the same track.
    assert_eq!(
        a.engine
            .control(Control::SwitchCamera)
            .await
            .unwrap()
            .camera,
        1
    );
    until_snapshot(&b, "pattern 1", |r| {
        r.video.as_ref().is_some_and(|v| {
            v.received
                .spans
                .last()
                .is_some_and(|s| s.content == "pattern 1" && s.frames >= 5)
        })
    })
    .await;

    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    assert!(caller.tone.frames_muted >= 10, "{:?}", caller.tone);
    let sent = &caller.video.as_ref().unwrap().sent;
    assert!(
        sent.black_frames_sent >= 5 && sent.pattern_id == 1,
        "{sent:?}"
    );
    let rx = &callee.video.as_ref().unwrap().received;
    let contents: Vec<&str> = rx.spans.iter().map(|s| s.content.as_str()).collect();
    assert_eq!(
        contents,
        vec!["pattern 0", "black", "pattern 0", "pattern 1"],
        "{rx:?}"
    );
    assert_eq!(rx.patterns_seen, vec![0, 1]);
    // Black frames carry no counter; the pattern's counter went on where it stopped.
    assert!(rx.counter_continuous(), "{rx:?}");
    let heard: Vec<bool> = callee.tone.spans.iter().map(|s| s.heard).collect();
    assert!(
        heard.windows(3).any(|w| w == [true, false, true]),
        "{:?}",
        callee.tone.spans
    );
    // Nothing was muted or switched the other way.
    let callee_sent = &callee.video.as_ref().unwrap().sent;
    assert_eq!((callee.tone.frames_muted, callee_sent.pattern_id), (0, 0));
}

/// Video added to an audio call: a new `call_offer` on the same call (Zajel's message, same
/// `callId`, `withVideo: true`), answered; then video both ways, as in a video call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_is_added_to_an_audio_call_by_renegotiation() {
    let board = Switchboard::new();
    let mut a = board.add_phone("caller", config(440.0, AnswerPolicy::Manual));
    let mut b = board.add_phone("callee", config(660.0, AnswerPolicy::Accept));
    board.dial("caller", "callee");
    let id = a.engine.place_call(false).await.unwrap();
    let tone = |e: &CallEvent| matches!(e, CallEvent::ToneDetected { .. }).then_some(());
    a.wait_for(STEP, "tone", tone).await.unwrap();
    b.wait_for(STEP, "tone", tone).await.unwrap();
    let before = b.engine.snapshot().await.unwrap().unwrap();
    assert!(!before.with_video && !before.video_negotiated && before.video.is_none());
    // Only the caller renegotiates.
    assert!(b.engine.add_video().await.is_err());
    a.engine.add_video().await.unwrap();
    for phone in [&mut a, &mut b] {
        phone
            .wait_for(STEP, "a decoded video frame", first_video_frame)
            .await
            .unwrap();
    }
    for phone in [&a, &b] {
        until_snapshot(phone, "10 decoded frames", |r| decoded(r) >= 10).await;
    }
    assert!(
        a.engine.add_video().await.is_err(),
        "video is there already"
    );
    a.engine.hangup().await.unwrap();
    for report in [a.ended(STEP).await.unwrap(), b.ended(STEP).await.unwrap()] {
        assert_eq!(report.call_id, id, "the same call");
        assert!(report.with_video && report.video_negotiated, "{report:?}");
        let video = report.video.as_ref().unwrap();
        assert!(
            video.both_ways() && video.received.counter_continuous(),
            "{video:?}"
        );
        assert_eq!(report.ice.ice_restarts, 0);
    }
}

/// Frames lost on the way (the caller's path cut for a while): the callee stops decoding,
/// sends a PLI, the caller answers it with a keyframe, and decoding goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_recovered_by_a_keyframe_answering_a_pli() {
    let (_board, mut a, mut b) = video_pair().await;
    until_snapshot(&b, "10 decoded frames", |r| decoded(r) >= 10).await;
    a.engine.cut_path(true).await.unwrap();
    until_snapshot(&a, "packets withheld", |r| {
        r.wire.is_some_and(|w| w.packets_withheld >= 40)
    })
    .await;
    a.engine.cut_path(false).await.unwrap();
    let before = decoded(&b.engine.snapshot().await.unwrap().unwrap());
    until_snapshot(&b, "a keyframe after the loss, decoded", |r| {
        r.video
            .as_ref()
            .is_some_and(|v| v.received.pli_sent >= 1 && v.received.keyframes_received >= 2)
            && decoded(r) >= before + 10
    })
    .await;
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    let sent = &caller.video.as_ref().unwrap().sent;
    assert!(
        sent.pli_received >= 1 && sent.keyframes_sent >= 2,
        "{sent:?}"
    );
    let rx = &callee.video.as_ref().unwrap().received;
    assert!(rx.frames_lost >= 1, "{rx:?}");
    assert!(rx.counters_missing > 0, "the lost frames' counters: {rx:?}");
    assert_eq!(rx.counters_out_of_order, 0, "{rx:?}");
    assert_eq!(
        rx.unreadable_frames, 0,
        "nothing decoded from a broken reference: {rx:?}"
    );
    assert!(rx.freezes >= 1, "{rx:?}");
}
