//! The call engine: one "phone" that holds at most one call at a time and runs Zajel's call
//! state machine (reference §3: idle, outgoing, incoming, connecting, connected, ended) over a
//! webrtc-rs peer connection.
//!
//! Signaling is a pair of channels: the engine reads incoming [`CallPayload`]s (already
//! addressed to it) from one and writes outgoing ones to the other, so two engines can be
//! wired together in-process, or a WebSocket relay session can carry them (wrap each payload
//! in `{"type": payload.kind().type_name(), "target": peer, "payload": payload.to_json()}`).
//! A line that knows who sent a payload hands it over as an [`Inbound`] with the sender's
//! [`PeerAuth`] ([`CallEngine::spawn_with_peers`]), and places calls to a known peer with
//! [`CallEngine::place_call_to`]: the machine then signs and checks the payloads' `auth`, and
//! this driver reads the certificate the peer presented in the DTLS handshake for it.
//! Candidates trickle through `call_ice`. What happens is announced as [`CallEvent`]s; a
//! finished call yields a [`CallReport`].
//!
//! The rules (busy, ringing, gathering and reconnect timeouts, ICE restarts, renegotiation,
//! who may send what when) live in [`machine`], a sans-IO [`CallMachine`] unit-tested on a
//! fake clock; this module is its driver: a tokio actor that feeds it commands, signaling and
//! webrtc-rs's callbacks, carries out its actions on the peer connection, sleeps until its
//! next deadline, and runs the media (tone or echo, Opus, RTCP, statistics, the report).

pub mod machine;
#[cfg(feature = "video")]
mod video_media;

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
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_remote::TrackRemote;
use zajel_wire::call::{
    call_id_from_random_bytes, certificate_fingerprint, CallPayload, CallState,
};

use crate::config::CallConfig;
use crate::identity::PeerAuth;
use crate::media::{
    OpusDecoder, OpusEncoder, ReceiveStats, ToneDetector, ToneGenerator, ToneReading, ToneTimeline,
    FRAME_SAMPLES,
};
use crate::peer::{Peer, SRTP_PROFILES};
use crate::report::{CallReport, CandidateInfo, CandidatePair, DtlsReport, ToneReport, WireReport};
use crate::stats::RtpFigures;
use crate::tap::srtp_profile_name;
use crate::video::{VideoReceiver, VideoReport, VideoSendReport};
use machine::{Action, CallMachine, CallSummary, IceConnection, Input, MachineConfig, Output};

/// What the engine announces.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// The active call moved to `state`.
    State {
        call_id: String,
        state: CallState,
    },
    /// A call is ringing here (with [`crate::config::AnswerPolicy::Manual`], accept or decline
    /// it).
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
    /// The first incoming video frame was decoded.
    FirstVideoFrame {
        call_id: String,
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
    #[error("cannot add video: {0}")]
    CannotAddVideo(&'static str),
    #[error("the engine has stopped")]
    Stopped,
}

/// A call payload for the engine, with its sender's keys when the sender is a paired peer.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub payload: CallPayload,
    pub peer: Option<PeerAuth>,
}

impl From<CallPayload> for Inbound {
    fn from(payload: CallPayload) -> Self {
        Self {
            payload,
            peer: None,
        }
    }
}

enum Command {
    Place(
        bool,
        Option<PeerAuth>,
        oneshot::Sender<Result<String, EngineError>>,
    ),
    Accept(oneshot::Sender<Result<(), EngineError>>),
    Decline(oneshot::Sender<Result<(), EngineError>>),
    Hangup(oneshot::Sender<Result<(), EngineError>>),
    State(oneshot::Sender<(Option<String>, CallState)>),
    CutPath(bool, oneshot::Sender<Result<(), EngineError>>),
    Snapshot(oneshot::Sender<Option<CallReport>>),
    Control(Control, oneshot::Sender<Result<MediaControls, EngineError>>),
    AddVideo(oneshot::Sender<Result<(), EngineError>>),
}

/// A call control, as Zajel's clients offer them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send silence instead of the tone (`track.enabled = false` in Zajel's web client).
    Mute,
    Unmute,
    /// Send black frames instead of the pattern (what a browser sends for a disabled video
    /// track, which is how Zajel's web client turns the camera off).
    CameraOff,
    CameraOn,
    /// Swap in the other pattern source (camera 0 ↔ 1) on the same track: no renegotiation.
    SwitchCamera,
}

/// What this side sends now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaControls {
    pub muted: bool,
    pub camera_on: bool,
    /// The pattern source in use (0 or 1).
    pub camera: u8,
}

impl Default for MediaControls {
    fn default() -> Self {
        Self {
            muted: false,
            camera_on: true,
            camera: 0,
        }
    }
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
        mut incoming: mpsc::Receiver<CallPayload>,
        outgoing: mpsc::Sender<CallPayload>,
    ) -> (Self, mpsc::UnboundedReceiver<CallEvent>) {
        let (inbound, inbound_rx) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some(payload) = incoming.recv().await {
                if inbound.send(Inbound::from(payload)).await.is_err() {
                    return;
                }
            }
        });
        Self::spawn_with_peers(config, inbound_rx, outgoing)
    }

    /// [`Self::spawn`] for payloads whose sender may be known (call authentication).
    pub fn spawn_with_peers(
        config: CallConfig,
        incoming: mpsc::Receiver<Inbound>,
        outgoing: mpsc::Sender<CallPayload>,
    ) -> (Self, mpsc::UnboundedReceiver<CallEvent>) {
        // Builds with reqwest hold two rustls providers, and webrtc-rs's DTLS asks for the default.
        zajel_client_net::tls::install_crypto_provider();
        let (commands, command_rx) = mpsc::channel(16);
        let (events, event_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            machine: CallMachine::new(MachineConfig::from(&config)),
            config: Arc::new(config),
            outgoing,
            events,
            internal_tx,
            media: None,
            setup_error: None,
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
        self.ask(|tx| Command::Place(with_video, None, tx)).await?
    }

    /// Places a call to a paired peer: its offers carry `auth` and its answers are checked.
    pub async fn place_call_to(
        &self,
        with_video: bool,
        peer: PeerAuth,
    ) -> Result<String, EngineError> {
        self.ask(|tx| Command::Place(with_video, Some(peer), tx))
            .await?
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

    /// Adds video to the connected audio call (caller only): a video track, and a new
    /// `call_offer` on the same call with `withVideo: true` (machine rule 23).
    pub async fn add_video(&self) -> Result<(), EngineError> {
        self.ask(Command::AddVideo).await?
    }

    /// Applies a call control to the active call; returns what is sent from now on.
    pub async fn control(&self, control: Control) -> Result<MediaControls, EngineError> {
        self.ask(|tx| Command::Control(control, tx)).await?
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
    /// Sent by the video receiver (feature `video`).
    #[cfg_attr(not(feature = "video"), allow(dead_code))]
    FirstVideoFrame(String),
}

/// Figures the media tasks update.
#[derive(Default)]
struct MediaShared {
    receive: ReceiveStats,
    rtcp: RtpFigures,
    frames_sent: u64,
    frames_decoded: u64,
    tone: Option<ToneReading>,
    tone_timeline: ToneTimeline,
    frames_muted: u64,
    video_packets: u64,
    controls: MediaControls,
    /// The peer asked for a keyframe (PLI/FIR) and none was sent since.
    keyframe_wanted: bool,
    video_send: VideoSendReport,
    video_receiver: Option<VideoReceiver>,
    /// With `echo`, decoded frames go here to be sent back.
    echo: Option<mpsc::Sender<Vec<i16>>>,
}

type Shared = Arc<Mutex<MediaShared>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, MediaShared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The media side of the active call: the peer connection and what runs on it.
struct Media {
    peer: Peer,
    shared: Shared,
    tasks: Vec<JoinHandle<()>>,
    /// With `echo`, the decoded frames to send back once media starts.
    echo_frames: Option<mpsc::Receiver<Vec<i16>>>,
    /// The pair ICE selected when it last connected.
    selected_pair: Option<CandidatePair>,
    /// `StartMedia` ran: tracks added later start sending at once.
    media_started: bool,
}

impl Media {
    async fn current_pair(&self) -> Option<CandidatePair> {
        self.peer
            .pc
            .dtls_transport()
            .ice_transport()
            .get_selected_candidate_pair()
            .await
            .map(|pair| candidate_pair(&pair.local, &pair.remote))
    }
}

/// The report of a call: the machine's summary (timeline, ICE counters, how it ended) and
/// what the media side measured.
async fn build_report(
    summary: CallSummary,
    media: Option<&Media>,
    config: &CallConfig,
) -> CallReport {
    let shared = media.map(|m| m.shared.clone()).unwrap_or_default();
    let mut rtp = lock(&shared).rtcp.clone();
    let mut ice = summary.ice;
    let mut video_negotiated = false;
    if let Some(media) = media {
        ice.selected_pair = media.selected_pair.clone();
        let pc = &media.peer.pc;
        rtp.apply_stats(&pc.get_stats().await);
        if let Some(pair) = media.current_pair().await {
            ice.selected_pair = Some(pair);
        }
        let has_vp8 = |sdp: Option<RTCSessionDescription>| {
            sdp.is_some_and(|d| d.sdp.contains("m=video") && d.sdp.contains("VP8/90000"))
        };
        video_negotiated =
            has_vp8(pc.local_description().await) && has_vp8(pc.remote_description().await);
    }
    let shared = lock(&shared);
    rtp.apply_receive(&shared.receive);
    let tap = media.and_then(|m| m.peer.tap.clone());
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
        call_id: summary.call_id,
        role: summary.role,
        with_video: summary.with_video,
        video_negotiated,
        end: summary.end,
        timeline: summary.timeline,
        ice,
        dtls,
        rtp,
        authenticated: summary.authenticated,
        peer_key: summary.peer_key,
        tone: ToneReport {
            sent_hz: (!config.echo).then_some(config.tone_hz),
            detected: shared.tone,
            frames_sent: shared.frames_sent,
            frames_decoded: shared.frames_decoded,
            spans: shared.tone_timeline.spans().to_vec(),
            frames_muted: shared.frames_muted,
        },
        video: (cfg!(feature = "video") && media.is_some_and(|m| m.peer.video.is_some())).then(
            || VideoReport {
                sent: shared.video_send.clone(),
                received: shared
                    .video_receiver
                    .as_ref()
                    .map(|r| r.report().clone())
                    .unwrap_or_default(),
            },
        ),
        wire,
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

/// The driver: feeds commands, signaling and the peer connection's events into the
/// [`CallMachine`], carries out its outputs on the webrtc-rs peer, sleeps until its deadline.
struct Actor {
    config: Arc<CallConfig>,
    outgoing: mpsc::Sender<CallPayload>,
    events: mpsc::UnboundedSender<CallEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    machine: CallMachine,
    media: Option<Media>,
    /// Why the last setup step failed (read after `place_call` and `accept`).
    setup_error: Option<EngineError>,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut incoming: mpsc::Receiver<Inbound>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut stats_tick = tokio::time::interval(self.config.stats_interval);
        stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut incoming_open = true;
        loop {
            let deadline = self.machine.poll_timeout();
            let connected = self.machine.state().1 == CallState::Connected;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => {
                        let _ = self.feed(Input::Hangup).await;
                        break;
                    }
                },
                payload = incoming.recv(), if incoming_open => match payload {
                    Some(Inbound { payload, peer: Some(peer) }) => {
                        let _ = self.feed(Input::SignalFrom { payload, peer }).await;
                    }
                    Some(Inbound { payload, peer: None }) => {
                        let _ = self.feed(Input::Signal(payload)).await;
                    }
                    None => incoming_open = false,
                },
                Some(event) = internal.recv() => self.internal(event).await,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    let _ = self.feed(Input::Timeout).await;
                }
                _ = stats_tick.tick(), if connected => self.poll_stats().await,
            }
        }
    }

    fn emit(&self, event: CallEvent) {
        let _ = self.events.send(event);
    }

    async fn send(&self, payload: CallPayload) {
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

    /// Hands `input` to the machine now and carries out everything it asks for.
    async fn feed(&mut self, input: Input) -> Result<(), EngineError> {
        let result = self.machine.handle(Instant::now(), input);
        self.drive().await;
        result
    }

    /// Carries out the machine's outputs until there are none; an action's result goes back
    /// to the machine at once (its outputs join the queue).
    async fn drive(&mut self) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Send(payload) => self.send(payload).await,
                Output::Event(event) => self.emit(event),
                Output::Do(action) => {
                    if let Some(result) = self.perform(action).await {
                        let _ = self.machine.handle(Instant::now(), result);
                    }
                }
                Output::Ended(summary) => self.finish(*summary).await,
            }
        }
    }

    /// Runs a setup command (`place_call`, `accept`): refused, failed in a setup step, or done.
    async fn setup(&mut self, input: Input) -> Result<(), EngineError> {
        self.setup_error = None;
        self.feed(input).await?;
        self.setup_error.take().map_or(Ok(()), Err)
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Place(with_video, peer, reply) => {
                let result = match new_call_id() {
                    Ok(call_id) => self
                        .setup(Input::PlaceCall {
                            call_id: call_id.clone(),
                            with_video,
                            peer,
                        })
                        .await
                        .map(|()| call_id),
                    Err(err) => Err(err),
                };
                let _ = reply.send(result);
            }
            Command::Accept(reply) => {
                let _ = reply.send(self.setup(Input::Accept).await);
            }
            Command::Decline(reply) => {
                let _ = reply.send(self.feed(Input::Decline).await);
            }
            Command::Hangup(reply) => {
                let _ = reply.send(self.feed(Input::Hangup).await);
            }
            Command::State(reply) => {
                let _ = reply.send(self.machine.state());
            }
            Command::CutPath(cut, reply) => {
                let tap = self.media.as_ref().and_then(|m| m.peer.tap.clone());
                let result = match (self.machine.call_id(), tap) {
                    (None, _) => Err(EngineError::NoCall),
                    (Some(_), None) => Err(EngineError::NoTap),
                    (Some(_), Some(tap)) => {
                        tap.set_cut(cut);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Command::AddVideo(reply) => {
                let _ = reply.send(self.feed(Input::AddVideo).await);
            }
            Command::Control(control, reply) => {
                let result = match (self.machine.call_id(), &self.media) {
                    (Some(_), Some(media)) => {
                        let mut shared = lock(&media.shared);
                        let c = &mut shared.controls;
                        match control {
                            Control::Mute => c.muted = true,
                            Control::Unmute => c.muted = false,
                            Control::CameraOff => c.camera_on = false,
                            Control::CameraOn => c.camera_on = true,
                            Control::SwitchCamera => c.camera = 1 - c.camera.min(1),
                        }
                        let now = *c;
                        // The new picture should not wait for a reference to catch up.
                        if matches!(control, Control::SwitchCamera | Control::CameraOn) {
                            shared.keyframe_wanted = true;
                        }
                        tracing::info!(?control, "call control");
                        Ok(now)
                    }
                    _ => Err(EngineError::NoCall),
                };
                let _ = reply.send(result);
            }
            Command::Snapshot(reply) => {
                let report = match self.machine.snapshot() {
                    Some(summary) => {
                        Some(build_report(summary, self.media.as_ref(), &self.config).await)
                    }
                    None => None,
                };
                let _ = reply.send(report);
            }
        }
    }

    /// Carries out one action; returns the result the machine waits for, if any.
    async fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::CreatePeer {
                call_id,
                with_video,
            } => Some(match self.open_peer(call_id, with_video).await {
                Ok(()) => Input::PeerCreated,
                Err(err) => {
                    let detail = err.to_string();
                    self.setup_error = Some(err);
                    Input::ActionFailed { detail }
                }
            }),
            Action::CreateOffer { ice_restart } => {
                Some(self.local_description(Some(ice_restart)).await)
            }
            Action::CreateAnswer => Some(self.local_description(None).await),
            Action::SetRemoteOffer { sdp } => {
                // A renegotiation that brings video to an audio call: our own video track
                // first, so that applying the offer gives it the offer's video m-line.
                let started = self.media.as_ref().is_some_and(|m| m.media_started);
                let without = self.media.as_ref().is_some_and(|m| m.peer.video.is_none());
                if sdp.contains("\nm=video") && started && without && self.config.allow_video {
                    if let Err(err) = self.add_video_track().await {
                        tracing::warn!("could not add video to the call: {err}");
                    }
                }
                Some(
                    self.remote_description(
                        RTCSessionDescription::offer(sdp),
                        "remote offer refused",
                    )
                    .await,
                )
            }
            Action::SetRemoteAnswer { sdp } => Some(
                self.remote_description(
                    RTCSessionDescription::answer(sdp),
                    "remote answer refused",
                )
                .await,
            ),
            Action::AddRemoteCandidate(init) => {
                if let Some(media) = &self.media {
                    let init = RTCIceCandidateInit {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_m_line_index,
                        username_fragment: init.username_fragment,
                    };
                    if let Err(err) = media.peer.pc.add_ice_candidate(init).await {
                        tracing::warn!("remote candidate refused: {err}");
                    }
                }
                None
            }
            Action::AddVideoAndOffer => {
                if let Err(err) = self.add_video_track().await {
                    return Some(self.failed(err));
                }
                Some(self.local_description(Some(false)).await)
            }
            Action::StartMedia => {
                if let Some(media) = &mut self.media {
                    media.media_started = true;
                    let source = match media.echo_frames.take() {
                        Some(frames) => AudioSource::Echo(frames),
                        None => AudioSource::Tone(ToneGenerator::new(
                            self.config.tone_hz,
                            self.config.tone_level_dbfs,
                        )),
                    };
                    media.tasks.push(tokio::spawn(send_audio(
                        Arc::clone(&media.peer.audio),
                        source,
                        media.shared.clone(),
                    )));
                    #[cfg(feature = "video")]
                    if let Some((track, _)) = &media.peer.video {
                        media.tasks.push(tokio::spawn(video_media::send_video(
                            Arc::clone(track),
                            media.shared.clone(),
                        )));
                    }
                }
                None
            }
        }
    }

    /// Adds the video track to the running call's peer, its RTCP reader, and (once media
    /// runs) its sender.
    async fn add_video_track(&mut self) -> Result<(), String> {
        let Some(media) = &mut self.media else {
            return Err("no peer connection".into());
        };
        let sender = media.peer.add_video().await.map_err(|e| e.to_string())?;
        #[cfg(feature = "video")]
        {
            media.tasks.push(tokio::spawn(video_media::read_video_rtcp(
                sender,
                media.shared.clone(),
            )));
            if media.media_started {
                if let Some((track, _)) = &media.peer.video {
                    media.tasks.push(tokio::spawn(video_media::send_video(
                        Arc::clone(track),
                        media.shared.clone(),
                    )));
                }
            }
        }
        #[cfg(not(feature = "video"))]
        media.tasks.push(tokio::spawn(read_rtcp(sender, None)));
        Ok(())
    }

    /// A failed setup step: remembered for the command that ran it, reported to the machine.
    fn failed(&mut self, detail: String) -> Input {
        self.setup_error = Some(EngineError::Setup(detail.clone()));
        Input::ActionFailed { detail }
    }

    /// Creates and applies a local offer (`Some(ice_restart)`) or answer (`None`).
    async fn local_description(&mut self, offer: Option<bool>) -> Input {
        let Some(pc) = self.media.as_ref().map(|m| Arc::clone(&m.peer.pc)) else {
            return self.failed("no peer connection".into());
        };
        let description = match offer {
            Some(ice_restart) => {
                let options = ice_restart.then(|| RTCOfferOptions {
                    ice_restart: true,
                    ..Default::default()
                });
                pc.create_offer(options).await
            }
            None => pc.create_answer(None).await,
        };
        let description = match description {
            Ok(description) => description,
            Err(err) => return self.failed(err.to_string()),
        };
        let sdp = description.sdp.clone();
        if let Err(err) = pc.set_local_description(description).await {
            return self.failed(err.to_string());
        }
        let mid = pc
            .get_transceivers()
            .await
            .first()
            .and_then(|t| t.mid())
            .map(|mid| mid.to_string());
        Input::LocalDescription { sdp, mid }
    }

    /// Applies a remote description; `refused` starts the failure's text.
    async fn remote_description(
        &mut self,
        description: Result<RTCSessionDescription, webrtc::Error>,
        refused: &str,
    ) -> Input {
        let Some(pc) = self.media.as_ref().map(|m| Arc::clone(&m.peer.pc)) else {
            return self.failed("no peer connection".into());
        };
        let result = match description {
            Ok(description) => pc.set_remote_description(description).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => Input::RemoteDescriptionSet,
            Err(err) => self.failed(format!("{refused}: {err}")),
        }
    }

    /// Creates the peer connection, wires its callbacks to the engine and starts reading RTCP.
    async fn open_peer(&mut self, call_id: String, with_video: bool) -> Result<(), EngineError> {
        let peer = Peer::new(&self.config, with_video)
            .await
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        let shared = Shared::default();
        let pc = &peer.pc;

        let (tx, cid) = (self.internal_tx.clone(), call_id.clone());
        pc.on_ice_candidate(Box::new(move |candidate| {
            let _ = tx.send(Internal::LocalCandidate(cid.clone(), candidate));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), call_id.clone());
        pc.on_ice_connection_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Ice(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), call_id.clone());
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Pc(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid) = (self.internal_tx.clone(), call_id.clone());
        pc.dtls_transport().on_state_change(Box::new(move |state| {
            let _ = tx.send(Internal::Dtls(cid.clone(), state));
            Box::pin(async {})
        }));
        let (tx, cid, track_shared) = (self.internal_tx.clone(), call_id, shared.clone());
        let weak_pc = Arc::downgrade(pc);
        pc.on_track(Box::new(move |track, receiver, _transceiver| {
            tokio::spawn(receive_track(
                track,
                cid.clone(),
                tx.clone(),
                track_shared.clone(),
                weak_pc.clone(),
            ));
            // Incoming RTCP (the peer's sender reports) only reaches webrtc-rs's interceptors
            // when someone reads it; without this no receiver report carries LSR/DLSR and no
            // round-trip time is ever computed.
            let shared = track_shared.clone();
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

        let mut echo_frames = None;
        if self.config.echo {
            // A second of audio at most waits to be echoed; more is dropped.
            let (tx, rx) = mpsc::channel(50);
            lock(&shared).echo = Some(tx);
            echo_frames = Some(rx);
        }
        let mut tasks = vec![tokio::spawn(read_rtcp(
            Arc::clone(&peer.audio_sender),
            Some(shared.clone()),
        ))];
        if let Some((_, sender)) = &peer.video {
            #[cfg(feature = "video")]
            tasks.push(tokio::spawn(video_media::read_video_rtcp(
                Arc::clone(sender),
                shared.clone(),
            )));
            #[cfg(not(feature = "video"))]
            tasks.push(tokio::spawn(read_rtcp(Arc::clone(sender), None)));
        }
        self.media = Some(Media {
            peer,
            shared,
            tasks,
            echo_frames,
            selected_pair: None,
            media_started: false,
        });
        Ok(())
    }

    /// The call is over: final report, peer connection closed, state `ended`.
    async fn finish(&mut self, summary: CallSummary) {
        let media = self.media.take();
        let report = build_report(summary, media.as_ref(), &self.config).await;
        if let Some(mut media) = media {
            for task in media.tasks.drain(..) {
                task.abort();
            }
            media.peer.close().await;
        }
        tracing::info!(call_id = %report.call_id, "call ended: {}", report.end.describe());
        self.emit(CallEvent::State {
            call_id: report.call_id.clone(),
            state: CallState::Ended,
        });
        self.emit(CallEvent::Ended(Box::new(report)));
    }

    /// Turns a peer connection event of the active call into the machine's input.
    async fn internal(&mut self, event: Internal) {
        let event_call = match &event {
            Internal::LocalCandidate(id, _)
            | Internal::Ice(id, _)
            | Internal::Pc(id, _)
            | Internal::Dtls(id, _)
            | Internal::FirstRtp(id)
            | Internal::Tone(id, _)
            | Internal::FirstVideoFrame(id) => id.as_str(),
        };
        if self.machine.call_id() != Some(event_call) {
            return; // from a call that already ended
        }
        let input = match event {
            Internal::LocalCandidate(_, Some(candidate)) => match candidate.to_json() {
                Ok(init) => Input::LocalCandidate {
                    candidate: init.candidate,
                    relay_related_port: (candidate.typ == RTCIceCandidateType::Relay)
                        .then_some(candidate.related_port),
                },
                Err(err) => {
                    tracing::warn!("could not serialise a local candidate: {err}");
                    return;
                }
            },
            Internal::LocalCandidate(_, None) => Input::GatheringComplete,
            Internal::Ice(
                _,
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed,
            ) => {
                if let Some(media) = &mut self.media {
                    if let Some(pair) = media.current_pair().await {
                        media.selected_pair = Some(pair);
                    }
                }
                Input::Ice(IceConnection::Connected)
            }
            Internal::Ice(_, RTCIceConnectionState::Disconnected) => {
                Input::Ice(IceConnection::Disconnected)
            }
            Internal::Ice(_, RTCIceConnectionState::Failed) => Input::Ice(IceConnection::Failed),
            Internal::Ice(_, _) => return,
            Internal::Pc(_, RTCPeerConnectionState::Connected) => {
                self.check_remote_certificate().await;
                Input::PeerConnected
            }
            Internal::Pc(_, _) => return,
            Internal::Dtls(_, RTCDtlsTransportState::Connected) => {
                self.check_remote_certificate().await;
                Input::DtlsConnected
            }
            Internal::Dtls(_, RTCDtlsTransportState::Failed) => Input::DtlsFailed,
            Internal::Dtls(_, _) => return,
            Internal::FirstRtp(_) => Input::FirstRtp,
            Internal::Tone(_, reading) => Input::Tone(reading),
            Internal::FirstVideoFrame(_) => Input::FirstVideoFrame,
        };
        let _ = self.feed(input).await;
    }

    /// Hands the machine the fingerprint of the certificate the peer presented in the DTLS
    /// handshake (SHA-256 of its DER), for rule 21.
    async fn check_remote_certificate(&mut self) {
        let Some(media) = &self.media else {
            return;
        };
        let der = media
            .peer
            .pc
            .dtls_transport()
            .get_remote_certificate()
            .await;
        let fingerprint = (!der.is_empty()).then(|| certificate_fingerprint(&der));
        let _ = self.feed(Input::RemoteCertificate { fingerprint }).await;
    }

    async fn poll_stats(&mut self) {
        if !self.machine.wants_rtt() {
            return;
        }
        let Some(media) = &self.media else {
            return;
        };
        let mut figures = RtpFigures::default();
        figures.apply_stats(&media.peer.pc.get_stats().await);
        if let Some(rtt_ms) = figures.rtt_ms {
            let _ = self.feed(Input::Rtt(rtt_ms)).await;
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
                let frame = tone.next_frame();
                let mut shared = lock(&shared);
                if shared.controls.muted {
                    shared.frames_muted += 1;
                    [0; FRAME_SAMPLES]
                } else {
                    frame
                }
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
    pc: std::sync::Weak<webrtc::peer_connection::RTCPeerConnection>,
) {
    let is_audio = track.kind() == RTPCodecType::Audio;
    #[cfg(feature = "video")]
    if !is_audio {
        let _ = internal.send(Internal::FirstRtp(call_id.clone()));
        video_media::receive_video(track, call_id, internal, shared, pc).await;
        return;
    }
    #[cfg(not(feature = "video"))]
    let _ = pc;
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
        let mut windows = Vec::new();
        if let Some(decoder) = &mut decoder {
            match decoder.decode(&packet.payload) {
                Ok(pcm) => {
                    decoded = true;
                    let before = detector.windows_analysed();
                    newly = detector.push(pcm);
                    if detector.windows_analysed() > before {
                        windows.push(detector.last_reading().is_some());
                    }
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
            for heard in windows {
                figures.tone_timeline.push(heard);
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
