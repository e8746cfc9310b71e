//! call-probe's call engine as a Zajel client of a relay, in-process: a
//! [`zajel_client_net::signaling::SignalingSession`] that registers a code, pairs
//! (requesting or accepting), then carries the engine's call messages both
//! ways, recording the caller-side milestones the benchmark reports.
//!
//! This is the bridge the `answer`/`call` modes of the CLI also need; the
//! interop tests use it to put the engine itself against other stacks.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use call_probe::{AnswerPolicy, CallConfig, CallEngine, CallEvent, CallReport, EndReason};
use serde::Serialize;
use tokio::sync::mpsc;
use url::Url;
use zajel_client_net::signaling::{SignalingSession, TrustAnchors};
use zajel_wire::call::CallPayload;
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{ClientMessage, ServerMessage};

/// Which side the engine takes.
#[derive(Clone, Debug)]
pub enum ProbeRole {
    /// Pairs with this code, then places the call.
    Call { peer: PairingCode },
    /// Accepts the first pair request, then answers the call.
    Answer,
}

/// Milestones in ms since the pair request was sent (caller) or since the
/// session opened (callee); `None` when it did not happen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Milestones {
    pub pair_matched: Option<f64>,
    pub call_placed: Option<f64>,
    pub ice_connected: Option<f64>,
    pub dtls_connected: Option<f64>,
    pub first_rtp: Option<f64>,
    pub tone_detected: Option<f64>,
    /// The first video frame decoded ([`ProbePeer::with_video`]).
    pub first_video_frame: Option<f64>,
}

/// What a run learnt.
#[derive(Debug)]
pub struct ProbeOutcome {
    pub code: PairingCode,
    pub milestones: Milestones,
    pub report: CallReport,
}

/// A call-probe peer connected to a relay and registered, not yet paired.
pub struct ProbePeer {
    session: SignalingSession,
    code: PairingCode,
    opened: Instant,
    with_video: bool,
}

fn random_code() -> PairingCode {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random source");
    PairingCode::from_random_bytes(bytes)
}

fn since(origin: Instant) -> Option<f64> {
    Some(origin.elapsed().as_secs_f64() * 1000.0)
}

impl ProbePeer {
    /// Connects to `url` and registers a random code with a random X25519-shaped key.
    pub async fn connect(url: &str, step: Duration) -> Result<Self, String> {
        // This crate links rustls with both ring and aws-lc-rs (through other parts), so
        // webrtc-rs's DTLS cannot pick a process-wide provider by itself: choose ring, as
        // call-probe's own binary has. An already installed provider is fine too.
        zajel_client_net::tls::install_crypto_provider();
        let url = Url::parse(url).map_err(|error| error.to_string())?;
        let opened = Instant::now();
        let mut session = SignalingSession::connect(&url, &TrustAnchors::WebPki, step)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let code = random_code();
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|error| error.to_string())?;
        session
            .register(code, &STANDARD.encode(key), step)
            .await
            .map_err(|error| format!("register: {error}"))?;
        Ok(Self {
            session,
            code,
            opened,
            with_video: false,
        })
    }

    /// Places a video call (as the caller), and as either side hangs up (or waits) only
    /// once a video frame was decoded besides the tone.
    pub fn with_video(mut self) -> Self {
        self.with_video = true;
        self
    }

    /// This peer's pairing code.
    pub fn code(&self) -> PairingCode {
        self.code
    }

    /// Pairs, runs one call with `config` and returns its report. The caller
    /// hangs up `hold` after hearing the other side's tone; the callee waits
    /// for the hangup. Every wait is bounded by `step`.
    pub async fn run(
        mut self,
        role: ProbeRole,
        mut config: CallConfig,
        hold: Duration,
        step: Duration,
    ) -> Result<ProbeOutcome, String> {
        let mut milestones = Milestones::default();
        let placing = matches!(role, ProbeRole::Call { .. });
        let (origin, peer) = match role {
            ProbeRole::Call { peer } => {
                let origin = Instant::now();
                self.session
                    .send(ClientMessage::PairRequest {
                        target_code: peer,
                        proposed_name: Some("call-probe".into()),
                    })
                    .await
                    .map_err(|error| error.to_string())?;
                self.session
                    .recv_until(
                        step,
                        "pair_matched",
                        |message| match message {
                            ServerMessage::PairMatched { .. } => Some(Ok(())),
                            ServerMessage::PairRejected { .. }
                            | ServerMessage::PairError { .. }
                            | ServerMessage::PairTimeout { .. } => {
                                Some(Err(format!("pairing failed: {message:?}")))
                            }
                            _ => None,
                        },
                        |_| {},
                    )
                    .await
                    .map_err(|error| error.to_string())??;
                milestones.pair_matched = since(origin);
                (origin, peer)
            }
            ProbeRole::Answer => {
                config.answer_policy = AnswerPolicy::Accept;
                let origin = self.opened;
                let from = self
                    .session
                    .recv_until(
                        step,
                        "pair_incoming",
                        |message| match message {
                            ServerMessage::PairIncoming { from_code, .. } => {
                                Some(from_code.clone())
                            }
                            _ => None,
                        },
                        |_| {},
                    )
                    .await
                    .map_err(|error| error.to_string())?;
                let peer = PairingCode::parse(&from).map_err(|error| error.to_string())?;
                self.session
                    .send(ClientMessage::PairResponse {
                        target_code: peer,
                        accepted: true,
                    })
                    .await
                    .map_err(|error| error.to_string())?;
                self.session
                    .recv_until(
                        step,
                        "pair_matched",
                        |message| {
                            matches!(message, ServerMessage::PairMatched { .. }).then_some(())
                        },
                        |_| {},
                    )
                    .await
                    .map_err(|error| error.to_string())?;
                milestones.pair_matched = since(origin);
                (origin, peer)
            }
        };

        let (to_engine, engine_in) = mpsc::channel::<CallPayload>(64);
        let (engine_out, mut from_engine) = mpsc::channel::<CallPayload>(64);
        let (engine, mut events) = CallEngine::spawn(config, engine_in, engine_out);
        let sender = self.session.sender();
        let forward = tokio::spawn(async move {
            while let Some(payload) = from_engine.recv().await {
                if sender
                    .send(ClientMessage::call(peer, &payload).to_text())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        if placing {
            engine
                .place_call(self.with_video)
                .await
                .map_err(|error| format!("place_call: {error}"))?;
            milestones.call_placed = since(origin);
        }

        let deadline = tokio::time::Instant::now() + step * 3;
        let mut hangup_at: Option<tokio::time::Instant> = None;
        let report = loop {
            let wake = hangup_at.unwrap_or(deadline).min(deadline);
            tokio::select! {
                message = self.session.recv() => {
                    let Some(message) = message else {
                        break Err("the relay closed the session".to_string());
                    };
                    if let Some(Ok(payload)) = message.call_payload() {
                        let _ = to_engine.send(payload).await;
                    } else if let ServerMessage::Error { message } = message {
                        eprintln!("relay error: {message}");
                    }
                }
                event = events.recv() => match event {
                    Some(CallEvent::IceConnected { .. }) => mark(&mut milestones.ice_connected, origin),
                    Some(CallEvent::DtlsConnected { .. }) => mark(&mut milestones.dtls_connected, origin),
                    Some(CallEvent::FirstRtp { .. }) => mark(&mut milestones.first_rtp, origin),
                    Some(CallEvent::ToneDetected { .. }) => {
                        mark(&mut milestones.tone_detected, origin);
                        let seen = !self.with_video || milestones.first_video_frame.is_some();
                        if placing && seen && hangup_at.is_none() {
                            hangup_at = Some(tokio::time::Instant::now() + hold);
                        }
                    }
                    Some(CallEvent::FirstVideoFrame { .. }) => {
                        mark(&mut milestones.first_video_frame, origin);
                        if placing && milestones.tone_detected.is_some() && hangup_at.is_none() {
                            hangup_at = Some(tokio::time::Instant::now() + hold);
                        }
                    }
                    Some(CallEvent::Ended(report)) => break Ok(*report),
                    Some(_) => {}
                    None => break Err("the engine stopped".to_string()),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        let _ = engine.hangup().await;
                        // The engine ends the call and reports it; give it a moment.
                        match tokio::time::timeout(step, async {
                            loop {
                                match events.recv().await {
                                    Some(CallEvent::Ended(report)) => return Some(*report),
                                    Some(_) => {}
                                    None => return None,
                                }
                            }
                        }).await {
                            Ok(Some(report)) => break Ok(report),
                            _ => break Err("the call did not end".to_string()),
                        }
                    }
                    hangup_at = None;
                    engine.hangup().await.map_err(|error| format!("hangup: {error}"))?;
                }
            }
        };
        // Let the hangup reach the relay before the session goes away: the engine's
        // last messages are queued in order before a ping, and the pong comes back.
        drop(engine);
        let _ = tokio::time::timeout(Duration::from_secs(1), forward).await;
        let _ = self.session.round_trip(Duration::from_secs(2)).await;
        let report = report?;
        Ok(ProbeOutcome {
            code: self.code,
            milestones,
            report,
        })
    }
}

fn mark(slot: &mut Option<f64>, origin: Instant) {
    if slot.is_none() {
        *slot = since(origin);
    }
}

/// Whether a report's call ended the normal way (a hangup from either side).
pub fn ended_by_hangup(report: &CallReport) -> bool {
    matches!(report.end, EndReason::HangupLocal | EndReason::HangupRemote)
}
