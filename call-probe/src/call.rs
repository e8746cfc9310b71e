//! The call engine: one "phone" that holds at most one call at a time and runs Zajel's call
//! state machine (reference §3: idle, outgoing, incoming, connecting, connected, ended) over a
//! webrtc-rs peer connection.
//!
//! Signaling is a pair of channels: the engine reads incoming [`CallPayload`]s (already
//! addressed to it) from one and writes outgoing ones to the other, so two engines can be
//! wired together in-process, or a WebSocket relay session can carry them (wrap each payload
//! in `{"type": payload.kind().type_name(), "target": peer, "payload": payload.to_json()}`).
//! Candidates trickle through `call_ice`. What happens is announced as [`CallEvent`]s; a
//! finished call yields a [`CallReport`].
//!
//! Rules: an offer while a call is active gets `call_reject` reason `busy`; ringing stops after
//! the ringing timeout with `call_reject` reason `timeout` (on either side); a call with no
//! local ICE candidate when the gathering timeout passes fails; a connection that drops
//! (ICE `disconnected`/`failed`) goes back to `connecting` and the caller restarts ICE (a new
//! `call_offer` with the same `callId`, answered by `call_answer`) until the reconnect window
//! closes. A `call_offer` carrying the active call's `callId` is such a renegotiation, never a
//! new call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use webrtc::dtls_transport::dtls_transport_state::RTCDtlsTransportState;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::media::Sample;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::signaling_state::RTCSignalingState;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_remote::TrackRemote;
use zajel_wire::call::{
    call_id_from_random_bytes, CallAnswer, CallHangup, CallIce, CallOffer, CallPayload, CallReject,
    CallState, IceCandidateInit, RejectReason,
};

use crate::config::{AnswerPolicy, CallConfig};
use crate::media::{
    OpusDecoder, OpusEncoder, ReceiveStats, ToneDetector, ToneGenerator, ToneReading, FRAME_SAMPLES,
};
use crate::peer::{Peer, SRTP_PROFILES};
use crate::report::{
    CallReport, CandidateInfo, CandidatePair, DtlsReport, EndReason, IceReport, Role, ToneReport,
    WireReport,
};
use crate::stats::{mark, RtpFigures, Timeline};
use crate::tap::srtp_profile_name;

/// What the engine announces.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// The active call moved to `state`.
    State {
        call_id: String,
        state: CallState,
    },
    /// A call is ringing here (with [`AnswerPolicy::Manual`], accept or decline it).
    Incoming {
        call_id: String,
        with_video: bool,
    },
    IceConnected {
        call_id: String,
    },
    DtlsConnected {
        call_id: String,
    },
    FirstRtp {
        call_id: String,
    },
    /// The incoming audio carries a stable tone.
    ToneDetected {
        call_id: String,
        reading: ToneReading,
    },
    /// The first RTCP round-trip time is known.
    RttAvailable {
        call_id: String,
        rtt_ms: f64,
    },
    /// The connection dropped; the reconnect window is open.
    Reconnecting {
        call_id: String,
    },
    /// The connection came back within the window.
    Reconnected {
        call_id: String,
    },
    /// Another call's offer arrived during this one and was answered `busy`.
    RejectedBusy {
        call_id: String,
    },
    /// The call is over.
    Ended(Box<CallReport>),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("already in a call")]
    Busy,
    #[error("no call")]
    NoCall,
    #[error("no incoming call is ringing")]
    NotRinging,
    #[error("this call does not use the engine's own socket, so the path cannot be cut")]
    NoTap,
    #[error("could not set up the call: {0}")]
    Setup(String),
    #[error("the engine has stopped")]
    Stopped,
}

enum Command {
    Place(bool, oneshot::Sender<Result<String, EngineError>>),
    Accept(oneshot::Sender<Result<(), EngineError>>),
    Decline(oneshot::Sender<Result<(), EngineError>>),
    Hangup(oneshot::Sender<Result<(), EngineError>>),
    State(oneshot::Sender<(Option<String>, CallState)>),
    CutPath(bool, oneshot::Sender<Result<(), EngineError>>),
    Snapshot(oneshot::Sender<Option<CallReport>>),
}

/// A handle on a running engine; dropping every handle hangs up and stops it.
#[derive(Clone)]
pub struct CallEngine {
    commands: mpsc::Sender<Command>,
}

impl CallEngine {
    /// Starts an engine reading signaling from `incoming` and writing to `outgoing`. Returns
    /// the handle and the event stream.
    pub fn spawn(
        config: CallConfig,
        incoming: mpsc::Receiver<CallPayload>,
        outgoing: mpsc::Sender<CallPayload>,
    ) -> (Self, mpsc::UnboundedReceiver<CallEvent>) {
        // Builds with reqwest hold two rustls providers, and webrtc-rs's DTLS asks for the default.
        zajel_client_net::tls::install_crypto_provider();
        let (commands, command_rx) = mpsc::channel(16);
        let (events, event_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            config: Arc::new(config),
            outgoing,
            events,
            internal_tx,
            call: None,
        };
        tokio::spawn(actor.run(command_rx, incoming, internal_rx));
        (Self { commands }, event_rx)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Places a call; returns its `callId` once the offer is sent.
    pub async fn place_call(&self, with_video: bool) -> Result<String, EngineError> {
        self.ask(|tx| Command::Place(with_video, tx)).await?
    }

    /// Accepts the ringing incoming call.
    pub async fn accept(&self) -> Result<(), EngineError> {
        self.ask(Command::Accept).await?
    }

    /// Declines the ringing incoming call (`call_reject` reason `declined`).
    pub async fn decline(&self) -> Result<(), EngineError> {
        self.ask(Command::Decline).await?
    }

    /// Hangs up (or cancels an outgoing call, or declines an incoming one).
    pub async fn hangup(&self) -> Result<(), EngineError> {
        self.ask(Command::Hangup).await?
    }

    /// The active call's id and state (`idle` with no call).
    pub async fn state(&self) -> Result<(Option<String>, CallState), EngineError> {
        self.ask(Command::State).await
    }

    /// Test hook: withholds every packet on the call's socket (both ways) while `cut`.
    pub async fn cut_path(&self, cut: bool) -> Result<(), EngineError> {
        self.ask(|tx| Command::CutPath(cut, tx)).await?
    }

    /// The report of the active call so far (`end` is `in_progress`).
    pub async fn snapshot(&self) -> Result<Option<CallReport>, EngineError> {
        self.ask(Command::Snapshot).await
    }
}

/// What the peer connection's callbacks and the media tasks tell the engine.
enum Internal {
    LocalCandidate(String, Option<RTCIceCandidate>),
    Ice(String, RTCIceConnectionState),
    Pc(String, RTCPeerConnectionState),
    Dtls(String, RTCDtlsTransportState),
    FirstRtp(String),
    Tone(String, ToneReading),
}

/// Figures the media tasks update.
#[derive(Default)]
struct MediaShared {
    receive: ReceiveStats,
    rtcp: RtpFigures,
    frames_sent: u64,
    frames_decoded: u64,
    tone: Option<ToneReading>,
    video_packets: u64,
    /// With `echo`, decoded frames go here to be sent back.
    echo: Option<mpsc::Sender<Vec<i16>>>,
}

type Shared = Arc<Mutex<MediaShared>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, MediaShared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

struct Call {
    id: String,
    role: Role,
    state: CallState,
    with_video: bool,
    started: Instant,
    timeline: Timeline,
    peer: Option<Peer>,
    remote_offer: Option<String>,
    remote_description_set: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
    candidate_mid: String,
    ringing_until: Option<Instant>,
    gathering_until: Option<Instant>,
    reconnect_until: Option<Instant>,
    ice: IceReport,
    shared: Shared,
    tasks: Vec<JoinHandle<()>>,
    rtt_announced: bool,
    echo_frames: Option<mpsc::Receiver<Vec<i16>>>,
}

impl Call {
    fn new(id: String, role: Role, with_video: bool, relay_only: bool) -> Self {
        Self {
            id,
            role,
            state: CallState::Idle,
            with_video,
            started: Instant::now(),
            timeline: Timeline::default(),
            peer: None,
            remote_offer: None,
            remote_description_set: false,
            pending_candidates: Vec::new(),
            candidate_mid: "0".into(),
            ringing_until: None,
            gathering_until: None,
            reconnect_until: None,
            ice: IceReport {
                relay_only,
                ..IceReport::default()
            },
            shared: Shared::default(),
            tasks: Vec::new(),
            rtt_announced: false,
            echo_frames: None,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.ringing_until,
            self.gathering_until,
            self.reconnect_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn report(&self, end: EndReason, config: &CallConfig) -> CallReport {
        let mut rtp = lock(&self.shared).rtcp.clone();
        let mut ice = self.ice.clone();
        let mut video_negotiated = false;
        if let Some(peer) = &self.peer {
            rtp.apply_stats(&peer.pc.get_stats().await);
            if let Some(pair) = peer
                .pc
                .dtls_transport()
                .ice_transport()
                .get_selected_candidate_pair()
                .await
            {
                ice.selected_pair = Some(candidate_pair(&pair.local, &pair.remote));
            }
            let has_vp8 = |sdp: Option<RTCSessionDescription>| {
                sdp.is_some_and(|d| d.sdp.contains("m=video") && d.sdp.contains("VP8/90000"))
            };
            video_negotiated = has_vp8(peer.pc.local_description().await)
                && has_vp8(peer.pc.remote_description().await);
        }
        let shared = lock(&self.shared);
        rtp.apply_receive(&shared.receive);
        let tap = self.peer.as_ref().and_then(|p| p.tap.clone());
        let mut dtls = DtlsReport {
            profiles_offered: SRTP_PROFILES
                .iter()
                .map(|p| srtp_profile_name(*p as u16))
                .collect(),
            ..DtlsReport::default()
        };
        if let Some(negotiation) = tap.as_ref().and_then(|t| t.negotiation()) {
            dtls.observe(negotiation, "ServerHello on the wire");
        }
        let wire = tap.map(|t| {
            let c = t.counters();
            WireReport {
                packets_sent: c.packets_sent,
                bytes_sent: c.bytes_sent,
                packets_received: c.packets_received,
                bytes_received: c.bytes_received,
                packets_withheld: c.packets_withheld,
                dtls_final_flight_resends: c.dtls_final_flight_resends,
            }
        });
        CallReport {
            call_id: self.id.clone(),
            role: self.role,
            with_video: self.with_video,
            video_negotiated,
            end,
            timeline: self.timeline,
            ice,
            dtls,
            rtp,
            tone: ToneReport {
                sent_hz: (!config.echo).then_some(config.tone_hz),
                detected: shared.tone,
                frames_sent: shared.frames_sent,
                frames_decoded: shared.frames_decoded,
            },
            wire,
        }
    }
}

fn candidate_info(candidate: &RTCIceCandidate) -> CandidateInfo {
    CandidateInfo {
        kind: candidate.typ.to_string(),
        protocol: candidate.protocol.to_string(),
        address: candidate.address.clone(),
        port: candidate.port,
        related_port: (candidate.related_port != 0).then_some(candidate.related_port),
    }
}

fn candidate_pair(local: &RTCIceCandidate, remote: &RTCIceCandidate) -> CandidatePair {
    CandidatePair {
        local: candidate_info(local),
        remote: candidate_info(remote),
    }
}

fn new_call_id() -> Result<String, EngineError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| EngineError::Setup(format!("no random bytes for a call id: {e}")))?;
    Ok(call_id_from_random_bytes(bytes))
}

struct Actor {
    config: Arc<CallConfig>,
    outgoing: mpsc::Sender<CallPayload>,
    events: mpsc::UnboundedSender<CallEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    call: Option<Call>,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut incoming: mpsc::Receiver<CallPayload>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut stats_tick = tokio::time::interval(self.config.stats_interval);
        stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut incoming_open = true;
        loop {
            let deadline = self.call.as_ref().and_then(Call::next_deadline);
            let connected = self
                .call
                .as_ref()
                .is_some_and(|c| c.state == CallState::Connected);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => {
                        self.hangup().await;
                        break;
                    }
                },
                payload = incoming.recv(), if incoming_open => match payload {
                    Some(payload) => self.signal(payload).await,
                    None => incoming_open = false,
                },
                Some(event) = internal.recv() => self.internal(event).await,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    self.timeout().await;
                }
                _ = stats_tick.tick(), if connected => self.poll_stats().await,
            }
        }
    }

    fn emit(&self, event: CallEvent) {
        let _ = self.events.send(event);
    }

    async fn send(&self, payload: impl Into<CallPayload>) {
        let payload = payload.into();
        if let Err(err) = payload.validate() {
            tracing::warn!(
                "not sending an invalid {}: {err}",
                payload.kind().type_name()
            );
            return;
        }
        if self.outgoing.send(payload).await.is_err() {
            tracing::warn!("signaling channel closed; a call message was not sent");
        }
    }

    fn set_state(&mut self, state: CallState) {
        if let Some(call) = &mut self.call {
            if call.state != state {
                call.state = state;
                let event = CallEvent::State {
                    call_id: call.id.clone(),
                    state,
                };
                self.emit(event);
            }
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Place(with_video, reply) => {
                let result = self.place_call(with_video).await;
                let _ = reply.send(result);
            }
            Command::Accept(reply) => {
                let result = self.accept().await;
                let _ = reply.send(result);
            }
            Command::Decline(reply) => {
                let result = match &self.call {
                    Some(call) if call.state == CallState::Incoming => {
                        self.decline().await;
                        Ok(())
                    }
                    Some(_) => Err(EngineError::NotRinging),
                    None => Err(EngineError::NoCall),
                };
                let _ = reply.send(result);
            }
            Command::Hangup(reply) => {
                let result = if self.call.is_some() {
                    self.hangup().await;
                    Ok(())
                } else {
                    Err(EngineError::NoCall)
                };
                let _ = reply.send(result);
            }
            Command::State(reply) => {
                let _ = reply.send(match &self.call {
                    Some(call) => (Some(call.id.clone()), call.state),
                    None => (None, CallState::Idle),
                });
            }
            Command::CutPath(cut, reply) => {
                let tap = self
                    .call
                    .as_ref()
                    .and_then(|c| c.peer.as_ref())
                    .and_then(|p| p.tap.clone());
                let result = match (&self.call, tap) {
                    (None, _) => Err(EngineError::NoCall),
                    (Some(_), None) => Err(EngineError::NoTap),
                    (Some(_), Some(tap)) => {
                        tap.set_cut(cut);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::Snapshot(reply) => {
                let report = match &self.call {
                    Some(call) => Some(call.report(EndReason::InProgress, &self.config).await),
                    None => None,
                };
                let _ = reply.send(report);
            }
        }
    }

    /// Creates the peer connection, wires its callbacks to the engine and starts the media.
    async fn open_peer(&mut self) -> Result<(), EngineError> {
        let call = self.call.as_mut().ok_or(EngineError::NoCall)?;
        let with_video = call.with_video && self.config.allow_video;
        let peer = Peer::new(&self.config, with_video)
            .await
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        let id = call.id.clone();
        let pc = &peer.pc;

        let (tx, cid) = (self.internal_tx.clone(), id.clone());
        pc.on_ice_candidate(Box::new(move |candidate| {
            let _ = tx.send(Internal::LocalCandidate(cid.clone(), candidate));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), id.clone());
        pc.on_ice_connection_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Ice(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), id.clone());
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Pc(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), id.clone());
        pc.dtls_transport().on_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Dtls(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid, shared) = (self.internal_tx.clone(), id.clone(), call.shared.clone());
        pc.on_track(Box::new(move |track, receiver, _transceiver| {
            tokio::spawn(receive_track(
                track,
                cid.clone(),
                tx.clone(),
                shared.clone(),
            ));
            // Incoming RTCP (the peer's sender reports) only reaches webrtc-rs's interceptors
            // when someone reads it; without this no receiver report carries LSR/DLSR and no
            // round-trip time is ever computed.
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((packets, _)) = receiver.read_rtcp().await {
                    let mut figures = lock(&shared);
                    for packet in &packets {
                        figures.rtcp.apply_rtcp(packet.as_ref());
                    }
                }
            });
            Box::pin(async {})
        }));

        if self.config.echo {
            // A second of audio at most waits to be echoed; more is dropped.
            let (tx, rx) = mpsc::channel(50);
            lock(&call.shared).echo = Some(tx);
            call.echo_frames = Some(rx);
        }
        call.tasks.push(tokio::spawn(read_rtcp(
            Arc::clone(&peer.audio_sender),
            Some(call.shared.clone()),
        )));
        if let Some((_, sender)) = &peer.video {
            call.tasks
                .push(tokio::spawn(read_rtcp(Arc::clone(sender), None)));
        }
        call.peer = Some(peer);
        Ok(())
    }

    async fn place_call(&mut self, with_video: bool) -> Result<String, EngineError> {
        if self.call.is_some() {
            return Err(EngineError::Busy);
        }
        let id = new_call_id()?;
        self.call = Some(Call::new(
            id.clone(),
            Role::Caller,
            with_video,
            self.config.relay_only,
        ));
        if let Err(err) = self.open_peer().await {
            self.end(EndReason::Failed {
                detail: err.to_string(),
            })
            .await;
            return Err(err);
        }
        match self.make_offer(false).await {
            Ok(sdp) => {
                let call = self.call.as_mut().ok_or(EngineError::NoCall)?;
                call.ringing_until = Some(Instant::now() + self.config.timeouts.ringing);
                mark(&mut call.timeline.offer_sent_ms, call.started);
                self.send(CallOffer {
                    call_id: id.clone(),
                    sdp,
                    with_video,
                })
                .await;
                self.set_state(CallState::Outgoing);
                Ok(id)
            }
            Err(detail) => {
                self.end(EndReason::Failed {
                    detail: detail.clone(),
                })
                .await;
                Err(EngineError::Setup(detail))
            }
        }
    }

    /// Creates and applies a local offer (an ICE restart with `restart`); returns its SDP.
    async fn make_offer(&mut self, restart: bool) -> Result<String, String> {
        let timeout = self.config.timeouts.ice_gathering;
        let call = self.call.as_mut().ok_or("no call")?;
        let pc = &call.peer.as_ref().ok_or("no peer connection")?.pc;
        let options = restart.then(|| RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        });
        let offer = pc.create_offer(options).await.map_err(|e| e.to_string())?;
        let sdp = offer.sdp.clone();
        pc.set_local_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        call.gathering_until = Some(Instant::now() + timeout);
        if let Some(mid) = pc.get_transceivers().await.first().and_then(|t| t.mid()) {
            call.candidate_mid = mid.to_string();
        }
        Ok(sdp)
    }

    async fn accept(&mut self) -> Result<(), EngineError> {
        match &self.call {
            Some(call) if call.state == CallState::Incoming => {}
            Some(_) => return Err(EngineError::NotRinging),
            None => return Err(EngineError::NoCall),
        }
        if let Err(err) = self.open_peer().await {
            self.send(CallReject {
                call_id: self.call_id(),
                reason: None,
            })
            .await;
            self.end(EndReason::Failed {
                detail: err.to_string(),
            })
            .await;
            return Err(err);
        }
        let offer = self
            .call
            .as_mut()
            .and_then(|c| c.remote_offer.take())
            .unwrap_or_default();
        match self.answer_offer(offer).await {
            Ok(()) => {
                if let Some(call) = &mut self.call {
                    call.ringing_until = None;
                }
                self.set_state(CallState::Connecting);
                Ok(())
            }
            Err(detail) => {
                self.send(CallHangup {
                    call_id: self.call_id(),
                })
                .await;
                self.end(EndReason::Failed {
                    detail: detail.clone(),
                })
                .await;
                Err(EngineError::Setup(detail))
            }
        }
    }

    /// Applies a remote offer, answers it and sends `call_answer`.
    async fn answer_offer(&mut self, sdp: String) -> Result<(), String> {
        let timeout = self.config.timeouts.ice_gathering;
        let call = self.call.as_mut().ok_or("no call")?;
        let pc = Arc::clone(&call.peer.as_ref().ok_or("no peer connection")?.pc);
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| format!("remote offer refused: {e}"))?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| format!("remote offer refused: {e}"))?;
        call.remote_description_set = true;
        for candidate in std::mem::take(&mut call.pending_candidates) {
            if let Err(err) = pc.add_ice_candidate(candidate).await {
                tracing::warn!("remote candidate refused: {err}");
            }
        }
        let answer = pc.create_answer(None).await.map_err(|e| e.to_string())?;
        let sdp = answer.sdp.clone();
        pc.set_local_description(answer)
            .await
            .map_err(|e| e.to_string())?;
        call.gathering_until = Some(Instant::now() + timeout);
        if let Some(mid) = pc.get_transceivers().await.first().and_then(|t| t.mid()) {
            call.candidate_mid = mid.to_string();
        }
        mark(&mut call.timeline.answer_sent_ms, call.started);
        let call_id = call.id.clone();
        self.send(CallAnswer { call_id, sdp }).await;
        Ok(())
    }

    fn call_id(&self) -> String {
        self.call.as_ref().map(|c| c.id.clone()).unwrap_or_default()
    }

    async fn decline(&mut self) {
        self.send(CallReject {
            call_id: self.call_id(),
            reason: Some(RejectReason::Declined),
        })
        .await;
        self.end(EndReason::DeclinedLocally).await;
    }

    async fn hangup(&mut self) {
        let Some(call) = &self.call else {
            return;
        };
        if call.state == CallState::Incoming {
            self.decline().await;
            return;
        }
        self.send(CallHangup {
            call_id: call.id.clone(),
        })
        .await;
        self.end(EndReason::HangupLocal).await;
    }

    /// Ends the active call: final report, peer connection closed, state `ended`, engine idle.
    async fn end(&mut self, reason: EndReason) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        mark(&mut call.timeline.ended_ms, call.started);
        let report = call.report(reason, &self.config).await;
        for task in call.tasks.drain(..) {
            task.abort();
        }
        if let Some(peer) = &call.peer {
            peer.close().await;
        }
        tracing::info!(call_id = %call.id, "call ended: {}", report.end.describe());
        self.emit(CallEvent::State {
            call_id: call.id.clone(),
            state: CallState::Ended,
        });
        self.emit(CallEvent::Ended(Box::new(report)));
    }

    async fn signal(&mut self, payload: CallPayload) {
        if let Err(err) = payload.validate() {
            tracing::warn!("ignoring an invalid {}: {err}", payload.kind().type_name());
            return;
        }
        let ours = self
            .call
            .as_ref()
            .is_some_and(|c| c.id.eq_ignore_ascii_case(payload.call_id()));
        match payload {
            CallPayload::Offer(offer) => self.on_offer(offer, ours).await,
            _ if !ours => {
                tracing::debug!("ignoring a {} for another call", payload.kind().type_name());
            }
            CallPayload::Answer(answer) => self.on_answer(answer).await,
            CallPayload::Reject(reject) => {
                self.end(EndReason::RejectedByRemote {
                    reason: reject.reason,
                })
                .await;
            }
            CallPayload::Hangup(_) => self.end(EndReason::HangupRemote).await,
            CallPayload::Ice(ice) => self.on_remote_candidate(ice).await,
        }
    }

    async fn on_offer(&mut self, offer: CallOffer, ours: bool) {
        if ours {
            // A renegotiation (ICE restart) of the active call, from the caller.
            let is_callee_with_peer = self
                .call
                .as_ref()
                .is_some_and(|c| c.role == Role::Callee && c.peer.is_some());
            if is_callee_with_peer {
                if let Err(detail) = self.answer_offer(offer.sdp).await {
                    tracing::warn!("restart offer refused: {detail}");
                }
            }
            return;
        }
        if self.call.is_some() {
            self.send(CallReject {
                call_id: offer.call_id.clone(),
                reason: Some(RejectReason::Busy),
            })
            .await;
            self.emit(CallEvent::RejectedBusy {
                call_id: offer.call_id,
            });
            return;
        }
        let mut call = Call::new(
            offer.call_id.clone(),
            Role::Callee,
            offer.with_video,
            self.config.relay_only,
        );
        mark(&mut call.timeline.offer_received_ms, call.started);
        call.remote_offer = Some(offer.sdp);
        call.ringing_until = Some(Instant::now() + self.config.timeouts.ringing);
        self.call = Some(call);
        self.set_state(CallState::Incoming);
        self.emit(CallEvent::Incoming {
            call_id: offer.call_id,
            with_video: offer.with_video,
        });
        match self.config.answer_policy {
            AnswerPolicy::Manual => {}
            AnswerPolicy::Accept => {
                if let Err(err) = self.accept().await {
                    tracing::warn!("could not accept the call: {err}");
                }
            }
            AnswerPolicy::Decline => self.decline().await,
        }
    }

    async fn on_answer(&mut self, answer: CallAnswer) {
        let Some(call) = &self.call else {
            return;
        };
        if call.role != Role::Caller {
            return;
        }
        let Some(peer) = &call.peer else {
            return;
        };
        let pc = Arc::clone(&peer.pc);
        if pc.signaling_state() != RTCSignalingState::HaveLocalOffer {
            // A repeated answer (a relay that delivers twice): nothing is waiting for it.
            tracing::debug!("ignoring a call_answer with no offer outstanding");
            return;
        }
        let call_id = call.id.clone();
        let result = match RTCSessionDescription::answer(answer.sdp) {
            Ok(desc) => pc.set_remote_description(desc).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            self.send(CallHangup { call_id }).await;
            self.end(EndReason::Failed {
                detail: format!("remote answer refused: {err}"),
            })
            .await;
            return;
        }
        let Some(call) = &mut self.call else {
            return;
        };
        call.remote_description_set = true;
        for candidate in std::mem::take(&mut call.pending_candidates) {
            if let Err(err) = pc.add_ice_candidate(candidate).await {
                tracing::warn!("remote candidate refused: {err}");
            }
        }
        if call.state == CallState::Outgoing {
            mark(&mut call.timeline.answer_received_ms, call.started);
            call.ringing_until = None;
            self.set_state(CallState::Connecting);
        }
    }

    async fn on_remote_candidate(&mut self, ice: CallIce) {
        let Some(call) = &mut self.call else {
            return;
        };
        let init = match ice.candidate_init() {
            Ok(init) => init,
            Err(err) => {
                tracing::warn!("ignoring a call_ice: {err}");
                return;
            }
        };
        if init.candidate.is_empty() {
            return; // end of candidates
        }
        call.ice.remote_candidates += 1;
        let init = RTCIceCandidateInit {
            candidate: init.candidate,
            sdp_mid: init.sdp_mid,
            sdp_mline_index: init.sdp_m_line_index,
            username_fragment: init.username_fragment,
        };
        match &call.peer {
            Some(peer) if call.remote_description_set => {
                if let Err(err) = peer.pc.add_ice_candidate(init).await {
                    tracing::warn!("remote candidate refused: {err}");
                }
            }
            _ => call.pending_candidates.push(init),
        }
    }

    async fn internal(&mut self, event: Internal) {
        let event_call = match &event {
            Internal::LocalCandidate(id, _)
            | Internal::Ice(id, _)
            | Internal::Pc(id, _)
            | Internal::Dtls(id, _)
            | Internal::FirstRtp(id)
            | Internal::Tone(id, _) => id.clone(),
        };
        let Some(call) = &mut self.call else {
            return;
        };
        if call.id != event_call {
            return; // from a call that already ended
        }
        let id = call.id.clone();
        match event {
            Internal::LocalCandidate(_, Some(candidate)) => {
                call.ice.local_candidates += 1;
                if candidate.typ == RTCIceCandidateType::Relay {
                    call.ice.local_relays.push(candidate.related_port);
                }
                match candidate.to_json() {
                    Ok(init) => {
                        let wire = IceCandidateInit::new(
                            init.candidate,
                            Some(call.candidate_mid.clone()),
                            Some(0),
                        );
                        self.send(CallIce::new(id, &wire)).await;
                    }
                    Err(err) => tracing::warn!("could not serialise a local candidate: {err}"),
                }
            }
            Internal::LocalCandidate(_, None) => {
                mark(&mut call.timeline.ice_gathering_complete_ms, call.started);
                call.gathering_until = None;
            }
            Internal::Ice(_, state) => self.on_ice_state(state).await,
            Internal::Pc(_, RTCPeerConnectionState::Connected) => {
                if call.timeline.connected_ms.is_none() {
                    // Media starts once ICE and DTLS are up: samples written earlier would be
                    // counted by webrtc-rs's outbound stats but never reach the wire.
                    if let Some(peer) = &call.peer {
                        let source = match call.echo_frames.take() {
                            Some(frames) => AudioSource::Echo(frames),
                            None => AudioSource::Tone(ToneGenerator::new(
                                self.config.tone_hz,
                                self.config.tone_level_dbfs,
                            )),
                        };
                        call.tasks.push(tokio::spawn(send_audio(
                            Arc::clone(&peer.audio),
                            source,
                            call.shared.clone(),
                        )));
                    }
                }
                mark(&mut call.timeline.connected_ms, call.started);
                if call.reconnect_until.is_none() {
                    self.set_state(CallState::Connected);
                }
            }
            Internal::Pc(_, _) => {}
            Internal::Dtls(_, RTCDtlsTransportState::Connected) => {
                mark(&mut call.timeline.dtls_connected_ms, call.started);
                self.emit(CallEvent::DtlsConnected { call_id: id });
            }
            Internal::Dtls(_, RTCDtlsTransportState::Failed) => {
                self.send(CallHangup { call_id: id }).await;
                self.end(EndReason::Failed {
                    detail: "DTLS handshake failed".into(),
                })
                .await;
            }
            Internal::Dtls(_, _) => {}
            Internal::FirstRtp(_) => {
                mark(&mut call.timeline.first_rtp_ms, call.started);
                self.emit(CallEvent::FirstRtp { call_id: id });
            }
            Internal::Tone(_, reading) => {
                mark(&mut call.timeline.tone_detected_ms, call.started);
                self.emit(CallEvent::ToneDetected {
                    call_id: id,
                    reading,
                });
            }
        }
    }

    async fn on_ice_state(&mut self, state: RTCIceConnectionState) {
        let reconnect = self.config.timeouts.reconnect;
        let Some(call) = &mut self.call else {
            return;
        };
        let id = call.id.clone();
        match state {
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                let first = call.timeline.ice_connected_ms.is_none();
                mark(&mut call.timeline.ice_connected_ms, call.started);
                if let Some(peer) = &call.peer {
                    if let Some(pair) = peer
                        .pc
                        .dtls_transport()
                        .ice_transport()
                        .get_selected_candidate_pair()
                        .await
                    {
                        call.ice.selected_pair = Some(candidate_pair(&pair.local, &pair.remote));
                    }
                }
                let reconnected = call.reconnect_until.take().is_some();
                if reconnected {
                    call.ice.reconnects += 1;
                }
                if first {
                    self.emit(CallEvent::IceConnected {
                        call_id: id.clone(),
                    });
                }
                if reconnected {
                    self.set_state(CallState::Connected);
                    self.emit(CallEvent::Reconnected { call_id: id });
                }
            }
            RTCIceConnectionState::Disconnected | RTCIceConnectionState::Failed => {
                let was_up =
                    matches!(call.state, CallState::Connected) || call.reconnect_until.is_some();
                if !was_up {
                    if state == RTCIceConnectionState::Failed {
                        self.send(CallHangup { call_id: id }).await;
                        self.end(EndReason::Failed {
                            detail: "ICE failed before the call connected".into(),
                        })
                        .await;
                    }
                    return;
                }
                let opening = call.reconnect_until.is_none();
                if opening {
                    call.reconnect_until = Some(Instant::now() + reconnect);
                    self.set_state(CallState::Connecting);
                    self.emit(CallEvent::Reconnecting {
                        call_id: id.clone(),
                    });
                }
                let is_caller = self.call.as_ref().is_some_and(|c| c.role == Role::Caller);
                // The caller restarts ICE when the window opens and again if ICE fails in it.
                if is_caller && (opening || state == RTCIceConnectionState::Failed) {
                    self.restart_ice().await;
                }
            }
            _ => {}
        }
    }

    async fn restart_ice(&mut self) {
        match self.make_offer(true).await {
            Ok(sdp) => {
                let Some(call) = &mut self.call else {
                    return;
                };
                call.ice.ice_restarts += 1;
                let offer = CallOffer {
                    call_id: call.id.clone(),
                    sdp,
                    with_video: call.with_video,
                };
                self.send(offer).await;
            }
            Err(detail) => tracing::warn!("ICE restart failed: {detail}"),
        }
    }

    async fn timeout(&mut self) {
        let now = Instant::now();
        let Some(call) = &mut self.call else {
            return;
        };
        let id = call.id.clone();
        if call.ringing_until.is_some_and(|t| t <= now) {
            call.ringing_until = None;
            self.send(CallReject {
                call_id: id,
                reason: Some(RejectReason::Timeout),
            })
            .await;
            self.end(EndReason::RingingTimeout).await;
            return;
        }
        if call.gathering_until.is_some_and(|t| t <= now) {
            call.gathering_until = None;
            if call.ice.local_candidates == 0 {
                self.send(CallHangup { call_id: id }).await;
                self.end(EndReason::IceGatheringTimeout).await;
            } else {
                call.ice.gathering_timed_out = true;
            }
            return;
        }
        if call.reconnect_until.is_some_and(|t| t <= now) {
            call.reconnect_until = None;
            self.send(CallHangup { call_id: id }).await;
            self.end(EndReason::ReconnectTimeout).await;
        }
    }

    async fn poll_stats(&mut self) {
        let Some(call) = &mut self.call else {
            return;
        };
        if call.rtt_announced {
            return;
        }
        let Some(peer) = &call.peer else {
            return;
        };
        let mut figures = RtpFigures::default();
        figures.apply_stats(&peer.pc.get_stats().await);
        if let Some(rtt_ms) = figures.rtt_ms {
            call.rtt_announced = true;
            mark(&mut call.timeline.first_rtt_ms, call.started);
            let call_id = call.id.clone();
            self.emit(CallEvent::RttAvailable { call_id, rtt_ms });
        }
    }
}

/// What a side sends.
enum AudioSource {
    /// The tone, paced at one frame every 20 ms.
    Tone(ToneGenerator),
    /// The frames received, as they arrive.
    Echo(mpsc::Receiver<Vec<i16>>),
}

/// Sends audio: one Opus frame per 20 ms of PCM until the task is aborted.
async fn send_audio(track: Arc<TrackLocalStaticSample>, mut source: AudioSource, shared: Shared) {
    let mut encoder = match OpusEncoder::new() {
        Ok(encoder) => encoder,
        Err(err) => {
            tracing::error!("no Opus encoder: {err}");
            return;
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(crate::media::FRAME_MS));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let frame: [i16; FRAME_SAMPLES] = match &mut source {
            AudioSource::Tone(tone) => {
                ticker.tick().await;
                tone.next_frame()
            }
            AudioSource::Echo(frames) => match frames.recv().await {
                Some(pcm) => match pcm.try_into() {
                    Ok(frame) => frame,
                    Err(_) => continue, // not a 20 ms frame
                },
                None => return,
            },
        };
        let packet = match encoder.encode(&frame) {
            Ok(packet) => packet,
            Err(err) => {
                tracing::error!("Opus encoding failed: {err}");
                return;
            }
        };
        let sample = Sample {
            data: Bytes::from(packet),
            duration: Duration::from_millis(crate::media::FRAME_MS),
            ..Default::default()
        };
        if let Err(err) = track.write_sample(&sample).await {
            tracing::debug!("audio track closed: {err}");
            return;
        }
        lock(&shared).frames_sent += 1;
    }
}

/// Reads RTCP for one sender (webrtc-rs's interceptors need it read) and keeps the peer's
/// reception reports about our audio.
async fn read_rtcp(sender: Arc<RTCRtpSender>, shared: Option<Shared>) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        if let Some(shared) = &shared {
            let mut figures = lock(shared);
            for packet in &packets {
                figures.rtcp.apply_rtcp(packet.as_ref());
            }
        }
    }
}

/// Reads a remote track: counts packets, and for audio decodes Opus and detects the tone.
async fn receive_track(
    track: Arc<TrackRemote>,
    call_id: String,
    internal: mpsc::UnboundedSender<Internal>,
    shared: Shared,
) {
    let is_audio = track.kind() == RTPCodecType::Audio;
    let mut decoder = if is_audio {
        match OpusDecoder::new() {
            Ok(decoder) => Some(decoder),
            Err(err) => {
                tracing::error!("no Opus decoder: {err}");
                None
            }
        }
    } else {
        None
    };
    let mut detector = ToneDetector::new();
    let origin = Instant::now();
    let mut first = true;
    while let Ok((packet, _)) = track.read_rtp().await {
        if first {
            first = false;
            let _ = internal.send(Internal::FirstRtp(call_id.clone()));
        }
        if !is_audio {
            lock(&shared).video_packets += 1;
            continue;
        }
        let arrival = origin.elapsed().as_secs_f64();
        let mut newly = None;
        let mut decoded = false;
        if let Some(decoder) = &mut decoder {
            match decoder.decode(&packet.payload) {
                Ok(pcm) => {
                    decoded = true;
                    newly = detector.push(pcm);
                    if let Some(echo) = &lock(&shared).echo {
                        let _ = echo.try_send(pcm.to_vec());
                    }
                }
                Err(err) => tracing::debug!("undecodable Opus packet: {err}"),
            }
        }
        {
            let mut figures = lock(&shared);
            figures.receive.record(
                packet.header.sequence_number,
                packet.header.timestamp,
                packet.payload.len(),
                arrival,
            );
            if decoded {
                figures.frames_decoded += 1;
            }
            if detector.detected().is_some() {
                figures.tone = detector.detected();
            }
        }
        if let Some(reading) = newly {
            let _ = internal.send(Internal::Tone(call_id.clone(), reading));
        }
    }
}
