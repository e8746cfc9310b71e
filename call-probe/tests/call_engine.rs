//! In-process calls between call engines over loopback host candidates only: audio both ways
//! with the tones checked, hangup from either side, decline, busy, ringing timeouts on either
//! side, ICE gathering timeout, reconnect after a path cut (and the reconnect window closing),
//! video negotiation, and hostile signaling input. Every wait awaits an engine event (or polls
//! an engine snapshot) with a deadline; no test sleeps to synchronise.

use std::net::UdpSocket;
use std::time::Duration;

use call_probe::selftest::{Phone, Switchboard};
use call_probe::turn_tap::TurnTap;
use call_probe::{
    AnswerPolicy, CallConfig, CallEngine, CallEvent, CallReport, CallTimeouts, EndReason,
    EngineError, IceServer, Role,
};
use tokio::sync::mpsc;
use zajel_wire::call::{
    is_uuid_v4, CallHangup, CallIce, CallOffer, CallPayload, CallState, IceCandidateInit,
    RejectReason,
};

const STEP: Duration = Duration::from_secs(20);

fn config(tone_hz: f64, answer_policy: AnswerPolicy) -> CallConfig {
    CallConfig {
        tone_hz,
        answer_policy,
        ..CallConfig::loopback()
    }
}

fn tone(event: &CallEvent) -> Option<f64> {
    match event {
        CallEvent::ToneDetected { reading, .. } => Some(reading.frequency_hz),
        _ => None,
    }
}

fn state_is(wanted: CallState) -> impl FnMut(&CallEvent) -> Option<()> {
    move |event| matches!(event, CallEvent::State { state, .. } if *state == wanted).then_some(())
}

fn incoming(event: &CallEvent) -> Option<(String, bool)> {
    match event {
        CallEvent::Incoming {
            call_id,
            with_video,
        } => Some((call_id.clone(), *with_video)),
        _ => None,
    }
}

fn states(phone: &Phone) -> Vec<CallState> {
    phone
        .history()
        .iter()
        .filter_map(|e| match e {
            CallEvent::State { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

/// A caller (440 Hz) and a callee (660 Hz) on one switchboard, the caller dialling the callee.
fn pair(caller: CallConfig, callee: CallConfig) -> (Switchboard, Phone, Phone) {
    let board = Switchboard::new();
    let a = board.add_phone("caller", caller);
    let b = board.add_phone("callee", callee);
    board.dial("caller", "callee");
    (board, a, b)
}

/// Places a call the callee auto-accepts and waits until both heard each other's tone.
async fn connected_pair(caller: CallConfig, callee: CallConfig) -> (Switchboard, Phone, Phone) {
    let (board, mut a, mut b) = pair(caller, callee);
    a.engine.place_call(false).await.unwrap();
    let heard_by_caller = a.wait_for(STEP, "tone", tone).await.unwrap();
    let heard_by_callee = b.wait_for(STEP, "tone", tone).await.unwrap();
    assert!((heard_by_caller - 660.0).abs() <= 3.0, "{heard_by_caller}");
    assert!((heard_by_callee - 440.0).abs() <= 3.0, "{heard_by_callee}");
    (board, a, b)
}

/// Both ends direct on loopback. The local candidate is our host candidate; the remote one is
/// the peer's host candidate, or the same address learnt as peer-reflexive when the peer's
/// connectivity check overtook its trickled candidate (a race ICE allows, RFC 8445 §7.3.1.3).
fn assert_loopback_host_pair(report: &CallReport) {
    let pair = report.ice.selected_pair.as_ref().expect("a selected pair");
    assert_eq!(pair.local.kind, "host", "{pair:?}");
    assert!(
        ["host", "prflx"].contains(&pair.remote.kind.as_str()),
        "{pair:?}"
    );
    for candidate in [&pair.local, &pair.remote] {
        assert_eq!(candidate.protocol, "udp", "{pair:?}");
        assert_eq!(candidate.address, "127.0.0.1", "{pair:?}");
        assert_ne!(candidate.port, 0);
    }
}

/// Polls an engine's snapshot until `check` holds (media figures have no event of their own).
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
            "{}: {what} never happened",
            phone.name
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_call_carries_audio_both_ways_and_reports_it() {
    let (_board, mut a, mut b) = connected_pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Accept),
    )
    .await;
    let rtt = |e: &CallEvent| match e {
        CallEvent::RttAvailable { rtt_ms, .. } => Some(*rtt_ms),
        _ => None,
    };
    let caller_rtt = a.wait_for(STEP, "RTT", rtt).await.unwrap();
    let callee_rtt = b.wait_for(STEP, "RTT", rtt).await.unwrap();
    assert!(caller_rtt > 0.0 && caller_rtt < 1_000.0, "{caller_rtt}");
    assert!(callee_rtt > 0.0 && callee_rtt < 1_000.0, "{callee_rtt}");
    let (id, state) = a.engine.state().await.unwrap();
    assert_eq!(state, CallState::Connected);
    let id = id.unwrap();
    assert!(is_uuid_v4(&id), "{id}");

    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    assert_eq!(caller.end, EndReason::HangupLocal);
    assert_eq!(callee.end, EndReason::HangupRemote);
    assert_eq!(caller.call_id, id);
    assert_eq!(callee.call_id, id);
    assert_eq!(caller.role, Role::Caller);
    assert_eq!(callee.role, Role::Callee);
    assert_eq!(
        states(&a),
        [
            CallState::Outgoing,
            CallState::Connecting,
            CallState::Connected,
            CallState::Ended
        ]
    );
    assert_eq!(
        states(&b),
        [
            CallState::Incoming,
            CallState::Connecting,
            CallState::Connected,
            CallState::Ended
        ]
    );
    assert_eq!(a.engine.state().await.unwrap(), (None, CallState::Idle));

    for (report, sent, heard) in [(&caller, 440.0, 660.0), (&callee, 660.0, 440.0)] {
        assert_loopback_host_pair(report);
        assert_eq!(
            report.dtls.srtp_profile.as_deref(),
            Some("SRTP_AEAD_AES_128_GCM")
        );
        assert!(report.dtls.srtp_profile_is_aes_gcm);
        assert_eq!(report.dtls.source, "ServerHello on the wire");
        assert!(report.dtls.cipher_suite.as_deref().unwrap().contains("GCM"));
        assert_eq!(report.dtls.profiles_offered[0], "SRTP_AEAD_AES_128_GCM");
        let t = &report.timeline;
        let ice = t.ice_connected_ms.expect("ICE connected time");
        let dtls = t.dtls_connected_ms.expect("DTLS connected time");
        let first_rtp = t.first_rtp_ms.expect("first RTP time");
        assert!(t.connected_ms.is_some() && t.tone_detected_ms.is_some());
        assert!(t.first_rtt_ms.is_some() && t.ended_ms.is_some());
        assert!(ice <= dtls && dtls <= first_rtp, "{t:?}");
        assert!(first_rtp <= t.tone_detected_ms.unwrap());
        let tone = report.tone.detected.expect("a tone");
        assert!((tone.frequency_hz - heard).abs() <= 3.0, "{tone:?}");
        assert!(tone.purity > 0.8 && tone.level_dbfs > -25.0, "{tone:?}");
        assert_eq!(report.tone.sent_hz, Some(sent));
        assert!(report.tone.frames_sent > 10 && report.tone.frames_decoded > 10);
        let rtp = &report.rtp;
        assert!(rtp.packets_sent > 10 && rtp.bytes_sent > 500, "{rtp:?}");
        assert!(
            rtp.packets_received > 10 && rtp.bytes_received > 500,
            "{rtp:?}"
        );
        assert!(rtp.rtt_ms.is_some_and(|r| r > 0.0) && rtp.rtt_measurements >= 1);
        assert!(rtp.remote_fraction_lost.is_some() && rtp.remote_jitter_ms.is_some());
        assert!(rtp.jitter_ms >= 0.0 && rtp.receiver_reports_received >= 1);
        let wire = report.wire.expect("wire figures");
        assert!(
            wire.packets_sent > rtp.packets_sent && wire.bytes_received > 0,
            "{:?} {wire:?} {rtp:?}",
            report.role
        );
        assert_eq!(wire.packets_withheld, 0);
        assert!(report.ice.local_candidates >= 1 && report.ice.remote_candidates >= 1);
        assert!(!report.with_video && !report.video_negotiated);
        assert_eq!((report.ice.ice_restarts, report.ice.reconnects), (0, 0));
    }
    assert!(
        caller.timeline.offer_sent_ms.is_some() && caller.timeline.answer_received_ms.is_some()
    );
    assert!(caller.timeline.offer_received_ms.is_none());
    assert!(
        callee.timeline.offer_received_ms.is_some() && callee.timeline.answer_sent_ms.is_some()
    );
    // The report serialises with its documented names.
    let json = serde_json::to_value(&caller).unwrap();
    assert_eq!(json["end"]["kind"], "hangup_local");
    assert_eq!(json["role"], "caller");
    assert_eq!(json["ice"]["selected_pair"]["local"]["kind"], "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_hangs_up_after_answering_by_hand() {
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Manual),
    );
    let id = a.engine.place_call(false).await.unwrap();
    let (incoming_id, with_video) = b.wait_for(STEP, "incoming call", incoming).await.unwrap();
    assert_eq!((incoming_id.as_str(), with_video), (id.as_str(), false));
    assert_eq!(b.engine.state().await.unwrap().1, CallState::Incoming);
    b.engine.accept().await.unwrap();
    assert_eq!(b.engine.accept().await, Err(EngineError::NotRinging));
    b.wait_for(STEP, "connected", state_is(CallState::Connected))
        .await
        .unwrap();
    a.wait_for(STEP, "connected", state_is(CallState::Connected))
        .await
        .unwrap();
    b.wait_for(STEP, "tone", tone).await.unwrap();
    b.engine.hangup().await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(callee.end, EndReason::HangupLocal);
    assert_eq!(caller.end, EndReason::HangupRemote);
    assert_loopback_host_pair(&callee);
    assert!(callee.dtls.srtp_profile_is_aes_gcm && caller.dtls.srtp_profile_is_aes_gcm);
    assert_eq!(b.engine.hangup().await, Err(EngineError::NoCall));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_call_ends_on_both_sides() {
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Manual),
    );
    assert_eq!(b.engine.decline().await, Err(EngineError::NoCall));
    a.engine.place_call(false).await.unwrap();
    b.wait_for(STEP, "incoming call", incoming).await.unwrap();
    b.engine.decline().await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(callee.end, EndReason::DeclinedLocally);
    assert_eq!(
        caller.end,
        EndReason::RejectedByRemote {
            reason: Some(RejectReason::Declined)
        }
    );
    assert_eq!(states(&a), [CallState::Outgoing, CallState::Ended]);
    assert_eq!(states(&b), [CallState::Incoming, CallState::Ended]);
    assert!(caller.timeline.ice_connected_ms.is_none() && caller.rtp.packets_received == 0);
    assert!(callee.timeline.answer_sent_ms.is_none());
    // Declining by policy works the same way.
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Decline),
    );
    a.engine.place_call(false).await.unwrap();
    assert_eq!(
        a.ended(STEP).await.unwrap().end,
        EndReason::RejectedByRemote {
            reason: Some(RejectReason::Declined)
        }
    );
    assert_eq!(b.ended(STEP).await.unwrap().end, EndReason::DeclinedLocally);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_in_a_call_answers_a_second_offer_busy() {
    let (board, mut a, mut b) = connected_pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Accept),
    )
    .await;
    let mut c = board.add_phone("third", config(880.0, AnswerPolicy::Manual));
    board.dial("third", "callee");
    let second = c.engine.place_call(false).await.unwrap();
    let third = c.ended(STEP).await.unwrap();
    assert_eq!(
        third.end,
        EndReason::RejectedByRemote {
            reason: Some(RejectReason::Busy)
        }
    );
    assert_eq!(third.call_id, second);
    let busy_id = b
        .wait_for(STEP, "busy rejection", |e| match e {
            CallEvent::RejectedBusy { call_id } => Some(call_id.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(busy_id, second);
    // The first call is untouched, and an engine in a call refuses to place another.
    assert_eq!(b.engine.state().await.unwrap().1, CallState::Connected);
    assert_eq!(a.engine.state().await.unwrap().1, CallState::Connected);
    assert_eq!(b.engine.place_call(false).await, Err(EngineError::Busy));
    a.engine.hangup().await.unwrap();
    assert_eq!(b.ended(STEP).await.unwrap().end, EndReason::HangupRemote);
    assert_eq!(a.ended(STEP).await.unwrap().end, EndReason::HangupLocal);
}

fn with_timeouts(mut config: CallConfig, change: impl FnOnce(&mut CallTimeouts)) -> CallConfig {
    change(&mut config.timeouts);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_calls_time_out_on_either_side() {
    // The caller gives up first.
    let (_board, mut a, mut b) = pair(
        with_timeouts(config(440.0, AnswerPolicy::Manual), |t| {
            t.ringing = Duration::from_millis(300)
        }),
        config(660.0, AnswerPolicy::Manual),
    );
    a.engine.place_call(false).await.unwrap();
    b.wait_for(STEP, "incoming call", incoming).await.unwrap();
    assert_eq!(a.ended(STEP).await.unwrap().end, EndReason::RingingTimeout);
    assert_eq!(
        b.ended(STEP).await.unwrap().end,
        EndReason::RejectedByRemote {
            reason: Some(RejectReason::Timeout)
        }
    );
    // The callee stops ringing first.
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        with_timeouts(config(660.0, AnswerPolicy::Manual), |t| {
            t.ringing = Duration::from_millis(300)
        }),
    );
    a.engine.place_call(false).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    assert_eq!(callee.end, EndReason::RingingTimeout);
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(
        caller.end,
        EndReason::RejectedByRemote {
            reason: Some(RejectReason::Timeout)
        }
    );
    assert!(callee.timeline.ended_ms.unwrap() >= 300.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_gathering_with_a_silent_turn_server_times_out() {
    // A TURN "server" that never answers: relay-only gathering can produce no candidate.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let caller = CallConfig {
        relay_only: true,
        ice_servers: vec![IceServer {
            urls: vec![format!("turn:127.0.0.1:{port}?transport=udp")],
            username: "probe".into(),
            credential: "secret".into(),
        }],
        ..with_timeouts(config(440.0, AnswerPolicy::Manual), |t| {
            t.ice_gathering = Duration::from_millis(400)
        })
    };
    let (_board, mut a, mut b) = pair(caller, config(660.0, AnswerPolicy::Manual));
    a.engine.place_call(false).await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(caller.end, EndReason::IceGatheringTimeout);
    assert_eq!(caller.ice.local_candidates, 0);
    assert!(caller.ice.relay_only);
    assert!(caller.timeline.ended_ms.unwrap() >= 400.0);
    assert_eq!(b.ended(STEP).await.unwrap().end, EndReason::HangupRemote);
    // The silent server did receive the TURN allocation attempt.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = silent
        .recv_from(&mut buf)
        .expect("an Allocate request arrived");
    assert!(
        n >= 20 && buf[0..2] == [0x00, 0x03],
        "a STUN Allocate request"
    );
}

fn fast_ice(config: CallConfig, reconnect: Duration) -> CallConfig {
    with_timeouts(config, |t| {
        t.ice_disconnected = Duration::from_millis(600);
        t.ice_failed = Duration::from_secs(4);
        t.ice_keepalive = Duration::from_millis(200);
        t.reconnect = reconnect;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reconnects_after_the_path_drops_briefly() {
    let (_board, mut a, mut b) = connected_pair(
        fast_ice(config(440.0, AnswerPolicy::Manual), Duration::from_secs(15)),
        fast_ice(config(660.0, AnswerPolicy::Accept), Duration::from_secs(15)),
    )
    .await;
    a.clear_history();
    b.clear_history();
    a.engine.cut_path(true).await.unwrap();
    let reconnecting = |e: &CallEvent| matches!(e, CallEvent::Reconnecting { .. }).then_some(());
    a.wait_for(STEP, "reconnecting", reconnecting)
        .await
        .unwrap();
    b.wait_for(STEP, "reconnecting", reconnecting)
        .await
        .unwrap();
    assert_eq!(a.engine.state().await.unwrap().1, CallState::Connecting);
    let before = a.engine.snapshot().await.unwrap().unwrap();
    assert!(before.wire.unwrap().packets_withheld > 0);
    a.engine.cut_path(false).await.unwrap();
    let reconnected = |e: &CallEvent| matches!(e, CallEvent::Reconnected { .. }).then_some(());
    a.wait_for(STEP, "reconnected", reconnected).await.unwrap();
    b.wait_for(STEP, "reconnected", reconnected).await.unwrap();
    assert_eq!(a.engine.state().await.unwrap().1, CallState::Connected);
    // Audio flows again in both directions after the restart.
    let received = |r: &CallReport| r.rtp.packets_received;
    let (a_before, b_before) = (
        received(&before),
        received(&b.engine.snapshot().await.unwrap().unwrap()),
    );
    until_snapshot(&a, "audio after reconnect", |r| received(r) > a_before + 10).await;
    until_snapshot(&b, "audio after reconnect", |r| received(r) > b_before + 10).await;
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    assert_eq!(caller.end, EndReason::HangupLocal);
    assert!(caller.ice.ice_restarts >= 1, "{:?}", caller.ice);
    assert_eq!(callee.ice.ice_restarts, 0);
    assert!(caller.ice.reconnects >= 1 && callee.ice.reconnects >= 1);
    assert_loopback_host_pair(&caller);
    assert_eq!(
        states(&a),
        [
            CallState::Connecting,
            CallState::Connected,
            CallState::Ended
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ends_when_the_reconnect_window_closes() {
    let (_board, mut a, mut b) = connected_pair(
        fast_ice(
            config(440.0, AnswerPolicy::Manual),
            Duration::from_millis(800),
        ),
        fast_ice(config(660.0, AnswerPolicy::Accept), Duration::from_secs(30)),
    )
    .await;
    a.engine.cut_path(true).await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(caller.end, EndReason::ReconnectTimeout);
    assert!(caller.wire.unwrap().packets_withheld > 0);
    // The hangup travels over signaling, which the cut does not touch.
    assert_eq!(b.ended(STEP).await.unwrap().end, EndReason::HangupRemote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_is_negotiated_when_asked() {
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        config(660.0, AnswerPolicy::Manual),
    );
    a.engine.place_call(true).await.unwrap();
    let (_, with_video) = b.wait_for(STEP, "incoming call", incoming).await.unwrap();
    assert!(with_video);
    b.engine.accept().await.unwrap();
    a.wait_for(STEP, "tone", tone).await.unwrap();
    b.wait_for(STEP, "tone", tone).await.unwrap();
    a.engine.hangup().await.unwrap();
    for report in [a.ended(STEP).await.unwrap(), b.ended(STEP).await.unwrap()] {
        assert!(report.with_video && report.video_negotiated, "{report:?}");
        assert!(report.tone.detected.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_signaling_is_refused_without_harm() {
    let (in_tx, in_rx) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(16);
    let (engine, mut events) =
        CallEngine::spawn(config(660.0, AnswerPolicy::Accept), in_rx, out_tx);
    let id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301".to_string();
    // Invalid payloads (bad call id, empty candidate) and messages for no call are ignored.
    for payload in [
        CallPayload::Hangup(CallHangup {
            call_id: "not-a-uuid".into(),
        }),
        CallPayload::Ice(CallIce {
            call_id: id.clone(),
            candidate: String::new(),
        }),
        CallPayload::Ice(CallIce::new(
            id.clone(),
            &IceCandidateInit::new("candidate:1 1 udp 1 127.0.0.1 9 typ host", None, None),
        )),
        CallPayload::Offer(CallOffer {
            call_id: "3f2504e0-4f89-11d3-9a0c-0305e82c3301".into(),
            sdp: "v=0".into(),
            with_video: false,
            auth: None,
        }),
    ] {
        in_tx.send(payload).await.unwrap();
    }
    assert_eq!(engine.state().await.unwrap(), (None, CallState::Idle));
    assert!(out_rx.try_recv().is_err());
    // An offer whose SDP is garbage is accepted by policy, fails, and is hung up.
    in_tx
        .send(CallPayload::Offer(CallOffer {
            call_id: id.clone(),
            sdp: "this is not SDP".into(),
            with_video: false,
            auth: None,
        }))
        .await
        .unwrap();
    let report = loop {
        match tokio::time::timeout(STEP, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            CallEvent::Ended(report) => break report,
            _ => continue,
        }
    };
    assert!(
        matches!(&report.end, EndReason::Failed { detail } if detail.contains("remote offer refused")),
        "{:?}",
        report.end
    );
    assert_eq!(report.call_id, id, "only the valid offer made a call");
    // The first thing the engine ever sent is this hangup: nothing answered the invalid input.
    let sent = out_rx.recv().await.unwrap();
    assert_eq!(sent, CallPayload::Hangup(CallHangup { call_id: id }));
    assert!(out_rx.try_recv().is_err());
    assert_eq!(engine.state().await.unwrap(), (None, CallState::Idle));
}

/// Long-term credentials for one user (RFC 8489 §9.2), as a TURN server checks them.
struct OneUser;

impl webrtc::turn::auth::AuthHandler for OneUser {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: std::net::SocketAddr,
    ) -> Result<Vec<u8>, webrtc::turn::Error> {
        if username == "probe" {
            Ok(webrtc::turn::auth::generate_auth_key(
                username, realm, "secret",
            ))
        } else {
            Err(webrtc::turn::Error::ErrFakeErr)
        }
    }
}

/// A real TURN server (webrtc-rs's) on 127.0.0.1, relaying on 127.0.0.1.
async fn loopback_turn_server() -> (webrtc::turn::server::Server, u16) {
    use std::sync::Arc;
    use webrtc::turn::relay::relay_static::RelayAddressGeneratorStatic;
    use webrtc::turn::server::config::{ConnConfig, ServerConfig};
    use webrtc::util::vnet::net::Net;
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = socket.local_addr().unwrap().port();
    let server = webrtc::turn::server::Server::new(ServerConfig {
        conn_configs: vec![ConnConfig {
            conn: socket,
            relay_addr_generator: Box::new(RelayAddressGeneratorStatic {
                relay_address: "127.0.0.1".parse().unwrap(),
                address: "127.0.0.1".to_owned(),
                net: Arc::new(Net::new(None)),
            }),
        }],
        realm: "zajel".to_owned(),
        auth_handler: Arc::new(OneUser),
        channel_bind_timeout: Duration::from_secs(0),
        alloc_close_notify: None,
    })
    .await
    .unwrap();
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_call_goes_through_a_turn_server() {
    let (server, port) = loopback_turn_server().await;
    let caller = CallConfig {
        relay_only: true,
        ice_servers: vec![IceServer {
            urls: vec![format!("turn:127.0.0.1:{port}?transport=udp")],
            username: "probe".into(),
            credential: "secret".into(),
        }],
        ..config(440.0, AnswerPolicy::Manual)
    };
    let (_board, mut a, mut b) = connected_pair(caller, config(660.0, AnswerPolicy::Accept)).await;
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    let pair = caller.ice.selected_pair.clone().unwrap();
    assert_eq!(
        (pair.local.kind.as_str(), pair.local.address.as_str()),
        ("relay", "127.0.0.1")
    );
    assert_eq!(pair.remote.kind, "host");
    assert_ne!(
        pair.local.port, port,
        "the relayed address, not the server's"
    );
    let pair = callee.ice.selected_pair.clone().unwrap();
    assert_eq!(pair.local.kind, "host");
    assert_ne!(pair.remote.kind, "host", "{pair:?}");
    assert!(caller.ice.relay_only && !callee.ice.relay_only);
    // The relayed side's DTLS runs on the TURN client's socket, not the engine's own: only the
    // callee sees the ServerHello (see the README).
    assert_eq!(caller.dtls.srtp_profile, None);
    assert_eq!(caller.dtls.source, "");
    assert!(callee.dtls.srtp_profile_is_aes_gcm);
    assert!(caller.tone.detected.is_some() && callee.tone.detected.is_some());
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_call_recovers_a_lost_final_dtls_flight_through_the_turn_taps() {
    // Both sides relay-only through TURN taps (as `call` and `answer` set them up), each tap
    // losing its side's first ChangeCipherSpec on the way to the TURN server: the DTLS
    // client's final flight (it retransmits it itself) and the server's (only the tap's
    // answer to the client's repeat brings it back; webrtc-rs's DTLS server never resends).
    let (server, port) = loopback_turn_server().await;
    let upstream = format!("127.0.0.1:{port}").parse().unwrap();
    let (caller_tap, callee_tap) = (
        TurnTap::start(upstream).await.unwrap(),
        TurnTap::start(upstream).await.unwrap(),
    );
    caller_tap.lose_next_change_cipher_spec();
    callee_tap.lose_next_change_cipher_spec();
    let through = |tap: &TurnTap, tone_hz, policy| CallConfig {
        relay_only: true,
        ice_servers: vec![IceServer {
            urls: vec![tap.turn_url()],
            username: "probe".into(),
            credential: "secret".into(),
        }],
        ..config(tone_hz, policy)
    };
    let (_board, mut a, mut b) = connected_pair(
        through(&caller_tap, 440.0, AnswerPolicy::Manual),
        through(&callee_tap, 660.0, AnswerPolicy::Accept),
    )
    .await;
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    for report in [&caller, &callee] {
        assert_eq!(
            report.ice.selected_pair.as_ref().unwrap().local.kind,
            "relay"
        );
    }
    assert_eq!(
        caller_tap.final_flight_resends() + callee_tap.final_flight_resends(),
        1,
        "the DTLS server's tap answered the client's repeated flight once"
    );
    // The taps saw the ServerHello of the relayed call (the engines' own sockets did not).
    for tap in [&caller_tap, &callee_tap] {
        let negotiation = tap.negotiation().expect("ServerHello through TURN");
        assert_eq!(negotiation.srtp_profile, Some(0x0007), "{negotiation:?}");
    }
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gathering_with_candidates_goes_on_and_is_reported() {
    // Host candidates come at once; the silent TURN server keeps gathering from completing.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let caller = CallConfig {
        ice_servers: vec![IceServer {
            urls: vec![format!("turn:127.0.0.1:{port}?transport=udp")],
            username: "probe".into(),
            credential: "secret".into(),
        }],
        ..with_timeouts(config(440.0, AnswerPolicy::Manual), |t| {
            t.ice_gathering = Duration::from_millis(300)
        })
    };
    let (_board, mut a, mut b) = connected_pair(caller, config(660.0, AnswerPolicy::Accept)).await;
    until_snapshot(&a, "gathering timeout noted", |r| r.ice.gathering_timed_out).await;
    assert_eq!(a.engine.state().await.unwrap().1, CallState::Connected);
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    assert_eq!(caller.end, EndReason::HangupLocal);
    assert!(caller.ice.gathering_timed_out && caller.ice.local_candidates >= 1);
    assert_eq!(caller.timeline.ice_gathering_complete_ms, None);
    assert_loopback_host_pair(&caller);
    assert!(!b.ended(STEP).await.unwrap().ice.gathering_timed_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_answers_and_candidates_do_not_break_a_call() {
    // Two engines joined by a hand-made relay that delivers every callee message twice.
    let (a_in_tx, a_in_rx) = mpsc::channel(64);
    let (a_out_tx, mut a_out_rx) = mpsc::channel::<CallPayload>(64);
    let (b_in_tx, b_in_rx) = mpsc::channel(64);
    let (b_out_tx, mut b_out_rx) = mpsc::channel::<CallPayload>(64);
    let (caller, mut caller_events) =
        CallEngine::spawn(config(440.0, AnswerPolicy::Manual), a_in_rx, a_out_tx);
    let (_callee, mut callee_events) =
        CallEngine::spawn(config(660.0, AnswerPolicy::Accept), b_in_rx, b_out_tx);
    tokio::spawn(async move {
        while let Some(payload) = a_out_rx.recv().await {
            let _ = b_in_tx.send(payload).await;
        }
    });
    let doubled = tokio::spawn(async move {
        let mut answers = 0;
        while let Some(payload) = b_out_rx.recv().await {
            answers += usize::from(matches!(payload, CallPayload::Answer(_)));
            let _ = a_in_tx.send(payload.clone()).await;
            let _ = a_in_tx.send(payload).await;
        }
        answers
    });
    caller.place_call(false).await.unwrap();
    for events in [&mut caller_events, &mut callee_events] {
        loop {
            match tokio::time::timeout(STEP, events.recv())
                .await
                .unwrap()
                .unwrap()
            {
                CallEvent::ToneDetected { .. } => break,
                CallEvent::Ended(report) => panic!("the call ended: {:?}", report.end),
                _ => continue,
            }
        }
    }
    let report = caller.snapshot().await.unwrap().unwrap();
    assert_eq!(report.end, EndReason::InProgress);
    assert_eq!(caller.state().await.unwrap().1, CallState::Connected);
    caller.hangup().await.unwrap();
    drop(caller);
    drop(_callee);
    assert_eq!(doubled.await.unwrap(), 1, "the callee answered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stun_server_the_call_uses_webrtc_rs_sockets() {
    // webrtc-rs gathers srflx candidates only on its own sockets, so the engine's socket (and
    // what it observes) is not used: the call works, the wire figures are absent.
    let (server, port) = loopback_turn_server().await;
    let stun = |tone_hz, policy| CallConfig {
        ice_servers: vec![IceServer {
            urls: vec![format!("stun:127.0.0.1:{port}")],
            ..IceServer::default()
        }],
        ..config(tone_hz, policy)
    };
    assert!(!stun(440.0, AnswerPolicy::Manual).uses_tapped_socket());
    assert!(CallConfig::loopback().uses_tapped_socket());
    let (_board, mut a, mut b) = connected_pair(
        stun(440.0, AnswerPolicy::Manual),
        stun(660.0, AnswerPolicy::Accept),
    )
    .await;
    assert_eq!(a.engine.cut_path(true).await, Err(EngineError::NoTap));
    a.engine.hangup().await.unwrap();
    for report in [a.ended(STEP).await.unwrap(), b.ended(STEP).await.unwrap()] {
        // webrtc-rs's own sockets gather both families: either loopback address may win.
        let pair = report.ice.selected_pair.clone().unwrap();
        assert!(
            ["127.0.0.1", "::1"].contains(&pair.local.address.as_str()),
            "{pair:?}"
        );
        assert_eq!(report.wire, None);
        assert_eq!(
            (
                report.dtls.srtp_profile.clone(),
                report.dtls.source.as_str()
            ),
            (None, "")
        );
        assert!(report.timeline.dtls_connected_ms.is_some() && report.tone.detected.is_some());
    }
    server.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoing_callee_sends_the_callers_tone_back() {
    let (_board, mut a, mut b) = pair(
        config(440.0, AnswerPolicy::Manual),
        CallConfig {
            echo: true,
            ..config(660.0, AnswerPolicy::Accept)
        },
    );
    a.engine.place_call(false).await.unwrap();
    // The callee hears 440 Hz and sends it back: the caller hears its own tone, having gone
    // through Opus twice and both directions of the call.
    assert!((b.wait_for(STEP, "tone", tone).await.unwrap() - 440.0).abs() <= 3.0);
    assert!((a.wait_for(STEP, "tone", tone).await.unwrap() - 440.0).abs() <= 3.0);
    a.engine.hangup().await.unwrap();
    let caller = a.ended(STEP).await.unwrap();
    let callee = b.ended(STEP).await.unwrap();
    assert_eq!(callee.tone.sent_hz, None);
    assert_eq!(caller.tone.sent_hz, Some(440.0));
    assert!(callee.tone.frames_sent > 10 && caller.rtp.packets_received > 10);
}
