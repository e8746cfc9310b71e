//! The call rules as a sans-IO state machine: [`CallMachine`] holds at most one call and owns
//! its state (reference §3: idle, outgoing, incoming, connecting, connected, ended), its
//! deadlines, its timeline and its ICE counters. It reads no clock and touches no socket:
//! the driver ([`super::CallEngine`]'s actor) feeds it [`Input`]s with the time they happened
//! ([`CallMachine::handle`]), carries out what [`CallMachine::poll_output`] asks (payloads to
//! send, [`Action`]s on the peer connection, [`CallEvent`]s, the end of a call) and feeds
//! each action's result back at once, and calls again with [`Input::Timeout`] at
//! [`CallMachine::poll_timeout`]. An action that needs a result is always the last output of
//! the input that asked for it, so results never overtake what came before them.
//!
//! Rules (each has a unit test below, named after it):
//! 1. Placing a call while a call is active is refused ([`EngineError::Busy`]).
//! 2. An offer with another `callId` while a call is active (in any state) gets `call_reject`
//!    reason `busy` and a [`CallEvent::RejectedBusy`]; the active call is untouched.
//! 3. An offer with the active call's `callId` is a renegotiation, never a new call: a callee
//!    whose peer exists applies it and answers with `call_answer` (same `callId`, state
//!    unchanged); a caller, or a callee still ringing, ignores it.
//! 4. Ringing (outgoing or incoming) stops after the ringing timeout with `call_reject` reason
//!    `timeout`, on either side ([`EndReason::RingingTimeout`]).
//! 5. When the ICE gathering timeout passes with no local candidate the call fails
//!    (`call_hangup`, [`EndReason::IceGatheringTimeout`]); with candidates it goes on and the
//!    report notes that gathering timed out. The timer runs from each local description.
//! 6. ICE `disconnected`/`failed` on a call that was up sends it back to `connecting` and opens
//!    the reconnect window ([`CallEvent::Reconnecting`]); the caller restarts ICE (a new
//!    `call_offer` with the same `callId`, answered by `call_answer`) when the window opens and
//!    again each time ICE fails in it; the callee never does. ICE connected again within the
//!    window brings back `connected` ([`CallEvent::Reconnected`], a reconnect counted).
//! 7. When the reconnect window closes the call ends (`call_hangup`,
//!    [`EndReason::ReconnectTimeout`]).
//! 8. ICE `failed` before the call was ever up ends it (`call_hangup`, failed); a
//!    `disconnected` then is left to ICE.
//! 9. Hangup: no call → [`EngineError::NoCall`]; an incoming call is declined instead; from
//!    outgoing, connecting or connected it sends `call_hangup` ([`EndReason::HangupLocal`]).
//! 10. Decline and accept only while an incoming call rings ([`EngineError::NotRinging`],
//!     [`EngineError::NoCall`] otherwise); decline sends `call_reject` reason `declined`.
//!     The answer policy accepts or declines at once.
//! 11. A remote `call_hangup` or `call_reject` of the active call ends it
//!     ([`EndReason::HangupRemote`], [`EndReason::RejectedByRemote`] with its reason).
//! 12. Payloads that fail validation, and answers, rejects, hangups and candidates for a
//!     `callId` other than the active call's (or with no call), are ignored: nothing is sent.
//!     `callId`s compare case-insensitively.
//! 13. A `call_answer` is applied only while our offer is outstanding (a relay that delivers
//!     twice cannot apply it twice), and only by the caller.
//! 14. Remote candidates that arrive before the remote description wait and are added, in
//!     order, once it is set; an empty candidate (end of candidates) is not counted.
//! 15. Each local candidate trickles out as `call_ice` with the media section's mid.
//! 16. A setup step that fails ends the call as failed: the caller's peer or offer (nothing
//!     sent), the callee's peer (`call_reject` without reason), the remote offer or the answer
//!     (`call_hangup`), the remote answer (`call_hangup`); a failed ICE-restart offer or
//!     renegotiation is only logged. DTLS `failed` ends the call (`call_hangup`).
//! 17. The peer connection's first `connected` starts the media once; it moves the call to
//!     `connected` unless the reconnect window is open (ICE decides then).
//! 18. The timeline counts milliseconds from the call's start on this side (placing it, or the
//!     offer's arrival); each moment is kept the first time only; the first RTT is announced
//!     once.
//!
//! Call authentication (the `auth` member of `call_offer`/`call_answer`, see
//! `zajel_wire::call`) and the peers calls may come from:
//!
//! 19. Every offer and answer this side sends (first offer, ICE restart, renegotiation, answer)
//!     carries `auth` when the call's peer is known ([`PeerAuth`]): the MAC of its own SDP's
//!     fingerprints, role, `callId` and both keys.
//! 20. An incoming offer or answer of a call with a known peer ([`Input::SignalFrom`],
//!     [`Input::PlaceCall`] with a peer) is checked before its SDP is applied: `auth` present
//!     and verified makes the call authenticated (its fingerprints remembered); `auth` present
//!     but wrong, of an unknown version or unreadable ends the call (`call_hangup`,
//!     [`EndReason::MediaNotAuthenticated`]). `auth` absent leaves the call unauthenticated,
//!     except that it ends the call the same way with
//!     [`MachineConfig::require_authenticated`], from a contact that authenticated before (a
//!     downgrade), and on a call that is already authenticated (a renegotiation without it).
//!     A side with no key for its peer ([`Input::Signal`]: no identity) ignores `auth`, as
//!     Zajel's clients do, and with `require_authenticated` refuses every call.
//!     A new offer refused so still becomes a call, so that its report says why.
//! 21. Once DTLS is up ([`Input::RemoteCertificate`]), an authenticated call checks that the
//!     certificate the peer presented (SHA-256 of its DER) is one of the authenticated
//!     fingerprints; if not, or if none was presented, the call ends the same way. Media
//!     never starts on an authenticated call whose certificate was not checked.
//! 22. Remote candidates on loopback, link-local, unspecified or multicast addresses (in
//!     `call_ice`, or `a=candidate` lines of a remote SDP) are dropped unless
//!     [`MachineConfig::allow_loopback_candidates`].
//! 23. Video is added to a connected audio call by the caller ([`Input::AddVideo`]): a new
//!     `call_offer` with the same `callId` and `withVideo: true` (signed like every offer),
//!     applied by the callee as a renegotiation (rule 3, which also marks its call as a video
//!     call) and answered by `call_answer`. Refused ([`EngineError::CannotAddVideo`]) on the
//!     callee, before the call is connected, on a call that has video, and while another
//!     offer or answer is in flight; a failure to make the offer is only logged.

use std::collections::VecDeque;
use std::time::Instant;

use zajel_wire::call::{
    CallAnswer, CallHangup, CallIce, CallOffer, CallPayload, CallReject, CallState,
    IceCandidateInit, RejectReason,
};

use zajel_wire::call::{sdp_fingerprints, CallAuth, CallAuthRole};

use super::{CallEvent, EngineError};
use crate::config::{AnswerPolicy, CallConfig, CallTimeouts};
use crate::identity::PeerAuth;
use crate::media::ToneReading;
use crate::report::{EndReason, IceReport, Role};
use crate::stats::Timeline;

/// What the machine needs to know of the engine's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineConfig {
    /// Ringing, ICE gathering and reconnect timeouts (the ICE ones are webrtc-rs's business).
    pub timeouts: CallTimeouts,
    pub answer_policy: AnswerPolicy,
    /// Offer or accept video when a call asks for it.
    pub allow_video: bool,
    /// Reported in [`IceReport::relay_only`].
    pub relay_only: bool,
    /// Refuse calls whose peer sends no `auth` (rule 20).
    pub require_authenticated: bool,
    /// Keep remote candidates on loopback and other local-only addresses (rule 22).
    pub allow_loopback_candidates: bool,
}

impl From<&CallConfig> for MachineConfig {
    fn from(config: &CallConfig) -> Self {
        Self {
            timeouts: config.timeouts,
            answer_policy: config.answer_policy,
            allow_video: config.allow_video,
            relay_only: config.relay_only,
            require_authenticated: config.require_authenticated,
            allow_loopback_candidates: config.allow_loopback_candidates,
        }
    }
}

/// The ICE connection states the rules care about (`completed` counts as connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceConnection {
    Connected,
    Disconnected,
    Failed,
}

/// What happens to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Command: place a call with this (fresh, UUID v4) id, to `peer` when it is known.
    PlaceCall {
        call_id: String,
        with_video: bool,
        peer: Option<PeerAuth>,
    },
    /// Command: accept the ringing call.
    Accept,
    /// Command: decline the ringing call.
    Decline,
    /// Command: hang up (cancel, or decline an incoming call).
    Hangup,
    /// A call payload addressed to this side, not yet validated, from a peer whose key is
    /// unknown.
    Signal(CallPayload),
    /// A call payload addressed to this side, not yet validated, from the paired peer `peer`.
    SignalFrom {
        payload: CallPayload,
        peer: PeerAuth,
    },
    /// DTLS is up: the SHA-256 fingerprint of the certificate the peer presented
    /// (`sha-256 AB:…`), `None` when none could be read.
    RemoteCertificate {
        fingerprint: Option<String>,
    },
    /// A deadline from [`CallMachine::poll_timeout`] may have passed.
    Timeout,
    /// [`Action::CreatePeer`] succeeded.
    PeerCreated,
    /// [`Action::CreateOffer`] or [`Action::CreateAnswer`] succeeded: the local description
    /// is set; `mid` is the first media section's.
    LocalDescription {
        sdp: String,
        mid: Option<String>,
    },
    /// [`Action::SetRemoteOffer`] or [`Action::SetRemoteAnswer`] succeeded.
    RemoteDescriptionSet,
    /// The last action that needed a result failed.
    ActionFailed {
        detail: String,
    },
    /// ICE gathered a local candidate (`candidate` is its SDP attribute value);
    /// `relay_related_port` is set for relay candidates.
    LocalCandidate {
        candidate: String,
        relay_related_port: Option<u16>,
    },
    /// ICE gathering finished.
    GatheringComplete,
    /// The ICE connection state changed.
    Ice(IceConnection),
    /// The peer connection reached `connected` (ICE and DTLS up).
    PeerConnected,
    DtlsConnected,
    DtlsFailed,
    /// The first RTP packet arrived.
    FirstRtp,
    /// The incoming audio carries a stable tone.
    Tone(ToneReading),
    /// The first incoming video frame was decoded.
    FirstVideoFrame,
    /// Command: add video to the connected audio call (caller only): a new `call_offer` with
    /// the same `callId` and `withVideo: true`, answered by `call_answer` (rule 23).
    AddVideo,
    /// The statistics give an RTCP round-trip time.
    Rtt(f64),
}

/// What the driver does to the peer connection. Those marked "→" need their result fed back
/// at once ([`Input::ActionFailed`] on failure).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// → [`Input::PeerCreated`]: create the peer connection (with a video track when asked)
    /// and report its events tagged with `call_id`.
    CreatePeer { call_id: String, with_video: bool },
    /// → [`Input::LocalDescription`]: create an offer (restarting ICE when asked) and set it.
    CreateOffer { ice_restart: bool },
    /// → [`Input::RemoteDescriptionSet`].
    SetRemoteOffer { sdp: String },
    /// → [`Input::LocalDescription`]: create an answer and set it.
    CreateAnswer,
    /// → [`Input::RemoteDescriptionSet`].
    SetRemoteAnswer { sdp: String },
    /// Add a remote candidate (a refusal is only logged).
    AddRemoteCandidate(IceCandidateInit),
    /// Start sending audio.
    StartMedia,
    /// → [`Input::LocalDescription`]: add a video track, then create an offer and set it.
    AddVideoAndOffer,
}

/// The end of a call, for the driver to turn into a report and close the peer connection.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub call_id: String,
    pub role: Role,
    pub with_video: bool,
    pub end: EndReason,
    pub timeline: Timeline,
    /// Counters; `selected_pair` is the driver's to fill.
    pub ice: IceReport,
    /// The peer's `auth` verified (and, once DTLS was up, its certificate matched).
    pub authenticated: bool,
    /// The peer's public key (standard base64), when it is known.
    pub peer_key: Option<String>,
}

/// What the machine asks for, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this payload to the other side.
    Send(CallPayload),
    Do(Action),
    /// Announce this (never [`CallEvent::Ended`]: see [`Output::Ended`]).
    Event(CallEvent),
    /// The call is over and the machine idle: build the report, close the peer connection,
    /// announce `ended` and the report.
    Ended(Box<CallSummary>),
}

/// The setup step whose result the machine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Peer,
    Offer {
        restart: bool,
    },
    /// The offer that adds video to the call.
    VideoOffer,
    RemoteOffer {
        renegotiation: bool,
    },
    Answer {
        renegotiation: bool,
    },
    RemoteAnswer,
}

#[derive(Debug)]
struct Call {
    id: String,
    role: Role,
    /// `idle` while the caller's peer and offer are being made.
    state: CallState,
    with_video: bool,
    started: Instant,
    timeline: Timeline,
    ice: IceReport,
    peer_ready: bool,
    pending: Option<Step>,
    remote_offer: Option<String>,
    remote_description_set: bool,
    /// Our offer awaits its answer (webrtc's `have-local-offer`).
    offer_outstanding: bool,
    pending_candidates: Vec<IceCandidateInit>,
    candidate_mid: String,
    ringing_until: Option<Instant>,
    gathering_until: Option<Instant>,
    reconnect_until: Option<Instant>,
    rtt_announced: bool,
    /// The paired peer, when its key is known.
    peer: Option<PeerAuth>,
    /// The peer's `auth` verified (rule 20).
    authenticated: bool,
    /// The fingerprints its verified `auth` covered.
    authenticated_fingerprints: Vec<String>,
    /// The DTLS certificate was checked against them (rule 21).
    certificate_checked: bool,
}

impl Call {
    fn new(id: String, role: Role, with_video: bool, relay_only: bool, now: Instant) -> Self {
        Self {
            id,
            role,
            state: CallState::Idle,
            with_video,
            started: now,
            timeline: Timeline::default(),
            ice: IceReport {
                relay_only,
                ..IceReport::default()
            },
            peer_ready: false,
            pending: None,
            remote_offer: None,
            remote_description_set: false,
            offer_outstanding: false,
            pending_candidates: Vec::new(),
            candidate_mid: "0".into(),
            ringing_until: None,
            gathering_until: None,
            reconnect_until: None,
            rtt_announced: false,
            peer: None,
            authenticated: false,
            authenticated_fingerprints: Vec::new(),
            certificate_checked: false,
        }
    }

    fn summary(&self, end: EndReason) -> CallSummary {
        CallSummary {
            call_id: self.id.clone(),
            role: self.role,
            with_video: self.with_video,
            end,
            timeline: self.timeline,
            ice: self.ice.clone(),
            authenticated: self.authenticated,
            peer_key: self.peer.as_ref().map(PeerAuth::peer_key_base64),
        }
    }
}

/// Sets `slot` to the ms from `started` to `now` unless it is already set.
fn mark(slot: &mut Option<f64>, started: Instant, now: Instant) {
    if slot.is_none() {
        *slot = Some(now.saturating_duration_since(started).as_secs_f64() * 1000.0);
    }
}

/// The call rules of one phone; see the module header.
#[derive(Debug)]
pub struct CallMachine {
    config: MachineConfig,
    call: Option<Call>,
    outputs: VecDeque<Output>,
}

impl CallMachine {
    pub fn new(config: MachineConfig) -> Self {
        Self {
            config,
            call: None,
            outputs: VecDeque::new(),
        }
    }

    /// The active call's id and state (`idle` with no call).
    pub fn state(&self) -> (Option<String>, CallState) {
        match &self.call {
            Some(call) => (Some(call.id.clone()), call.state),
            None => (None, CallState::Idle),
        }
    }

    /// The active call's id.
    pub fn call_id(&self) -> Option<&str> {
        self.call.as_ref().map(|call| call.id.as_str())
    }

    /// Whether the driver should read the statistics for the first RTT: connected, and not
    /// yet announced.
    pub fn wants_rtt(&self) -> bool {
        self.call
            .as_ref()
            .is_some_and(|c| c.state == CallState::Connected && !c.rtt_announced)
    }

    /// The active call as a summary ending [`EndReason::InProgress`].
    pub fn snapshot(&self) -> Option<CallSummary> {
        self.call.as_ref().map(|c| c.summary(EndReason::InProgress))
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline of the active call (ringing, gathering, reconnect window).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let call = self.call.as_ref()?;
        [
            call.ringing_until,
            call.gathering_until,
            call.reconnect_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies one input at `now`. Commands that are refused return why; everything else
    /// returns `Ok`.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), EngineError> {
        match input {
            Input::PlaceCall {
                call_id,
                with_video,
                peer,
            } => return self.place_call(now, call_id, with_video, peer),
            Input::Accept => {
                self.ringing()?;
                self.accept();
            }
            Input::Decline => {
                self.ringing()?;
                self.decline(now);
            }
            Input::Hangup => {
                if self.call.is_none() {
                    return Err(EngineError::NoCall);
                }
                self.hangup(now);
            }
            Input::Signal(payload) => self.signal(now, payload, None),
            Input::SignalFrom { payload, peer } => self.signal(now, payload, Some(peer)),
            Input::RemoteCertificate { fingerprint } => self.remote_certificate(now, fingerprint),
            Input::Timeout => self.timeout(now),
            Input::PeerCreated => self.peer_created(),
            Input::LocalDescription { sdp, mid } => self.local_description(now, sdp, mid),
            Input::RemoteDescriptionSet => self.remote_description_set(now),
            Input::ActionFailed { detail } => self.action_failed(now, detail),
            Input::LocalCandidate {
                candidate,
                relay_related_port,
            } => self.local_candidate(candidate, relay_related_port),
            Input::GatheringComplete => {
                if let Some(call) = &mut self.call {
                    mark(
                        &mut call.timeline.ice_gathering_complete_ms,
                        call.started,
                        now,
                    );
                    call.gathering_until = None;
                }
            }
            Input::Ice(state) => self.ice(now, state),
            Input::PeerConnected => self.peer_connected(now),
            Input::DtlsConnected => {
                if let Some(call) = &mut self.call {
                    mark(&mut call.timeline.dtls_connected_ms, call.started, now);
                    let call_id = call.id.clone();
                    self.emit(CallEvent::DtlsConnected { call_id });
                }
            }
            Input::DtlsFailed => {
                if let Some(call) = &self.call {
                    self.send(CallHangup {
                        call_id: call.id.clone(),
                    });
                    self.end(
                        now,
                        EndReason::Failed {
                            detail: "DTLS handshake failed".into(),
                        },
                    );
                }
            }
            Input::FirstRtp => {
                if let Some(call) = &mut self.call {
                    mark(&mut call.timeline.first_rtp_ms, call.started, now);
                    let call_id = call.id.clone();
                    self.emit(CallEvent::FirstRtp { call_id });
                }
            }
            Input::Tone(reading) => {
                if let Some(call) = &mut self.call {
                    mark(&mut call.timeline.tone_detected_ms, call.started, now);
                    let call_id = call.id.clone();
                    self.emit(CallEvent::ToneDetected { call_id, reading });
                }
            }
            Input::AddVideo => return self.add_video(),
            Input::FirstVideoFrame => {
                if let Some(call) = self
                    .call
                    .as_mut()
                    .filter(|c| c.timeline.first_video_frame_ms.is_none())
                {
                    mark(&mut call.timeline.first_video_frame_ms, call.started, now);
                    let call_id = call.id.clone();
                    self.emit(CallEvent::FirstVideoFrame { call_id });
                }
            }
            Input::Rtt(rtt_ms) => {
                if let Some(call) = self.call.as_mut().filter(|c| !c.rtt_announced) {
                    call.rtt_announced = true;
                    mark(&mut call.timeline.first_rtt_ms, call.started, now);
                    let call_id = call.id.clone();
                    self.emit(CallEvent::RttAvailable { call_id, rtt_ms });
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, event: CallEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    fn send(&mut self, payload: impl Into<CallPayload>) {
        self.outputs.push_back(Output::Send(payload.into()));
    }

    fn act(&mut self, step: Option<Step>, action: Action) {
        if let (Some(step), Some(call)) = (step, &mut self.call) {
            call.pending = Some(step);
        }
        self.outputs.push_back(Output::Do(action));
    }

    fn set_state(&mut self, state: CallState) {
        if let Some(call) = &mut self.call {
            if call.state != state {
                call.state = state;
                let call_id = call.id.clone();
                self.emit(CallEvent::State { call_id, state });
            }
        }
    }

    /// Ends the active call: the machine is idle again.
    fn end(&mut self, now: Instant, reason: EndReason) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        mark(&mut call.timeline.ended_ms, call.started, now);
        self.outputs
            .push_back(Output::Ended(Box::new(call.summary(reason))));
    }

    fn ringing(&self) -> Result<(), EngineError> {
        match &self.call {
            Some(call) if call.state == CallState::Incoming => Ok(()),
            Some(_) => Err(EngineError::NotRinging),
            None => Err(EngineError::NoCall),
        }
    }

    fn create_peer(&mut self) {
        let Some(call) = &self.call else {
            return;
        };
        let action = Action::CreatePeer {
            call_id: call.id.clone(),
            with_video: call.with_video && self.config.allow_video,
        };
        self.act(Some(Step::Peer), action);
    }

    fn place_call(
        &mut self,
        now: Instant,
        call_id: String,
        with_video: bool,
        peer: Option<PeerAuth>,
    ) -> Result<(), EngineError> {
        if self.call.is_some() {
            return Err(EngineError::Busy);
        }
        let relay_only = self.config.relay_only;
        let mut call = Call::new(call_id, Role::Caller, with_video, relay_only, now);
        call.peer = peer;
        self.call = Some(call);
        self.create_peer();
        Ok(())
    }

    fn accept(&mut self) {
        self.create_peer();
    }

    fn decline(&mut self, now: Instant) {
        let Some(call) = &self.call else {
            return;
        };
        self.send(CallReject {
            call_id: call.id.clone(),
            reason: Some(RejectReason::Declined),
        });
        self.end(now, EndReason::DeclinedLocally);
    }

    fn hangup(&mut self, now: Instant) {
        let Some(call) = &self.call else {
            return;
        };
        if call.state == CallState::Incoming {
            self.decline(now);
            return;
        }
        self.send(CallHangup {
            call_id: call.id.clone(),
        });
        self.end(now, EndReason::HangupLocal);
    }

    /// Rule 23: video is added by the caller to its connected audio call, once, with no other
    /// offer or answer in flight.
    fn add_video(&mut self) -> Result<(), EngineError> {
        let call = self.call.as_mut().ok_or(EngineError::NoCall)?;
        let refused = if call.role != Role::Caller {
            Some("only the caller renegotiates")
        } else if call.state != CallState::Connected {
            Some("the call is not connected")
        } else if call.with_video {
            Some("the call already has video")
        } else if call.pending.is_some() || call.offer_outstanding {
            Some("an offer or answer is in flight")
        } else {
            None
        };
        if let Some(reason) = refused {
            return Err(EngineError::CannotAddVideo(reason));
        }
        call.with_video = true;
        self.act(Some(Step::VideoOffer), Action::AddVideoAndOffer);
        Ok(())
    }

    fn peer_created(&mut self) {
        let Some(call) = self.call.as_mut().filter(|c| c.pending == Some(Step::Peer)) else {
            return;
        };
        call.pending = None;
        call.peer_ready = true;
        match call.role {
            Role::Caller => self.act(
                Some(Step::Offer { restart: false }),
                Action::CreateOffer { ice_restart: false },
            ),
            Role::Callee => {
                let sdp = call.remote_offer.take().unwrap_or_default();
                self.act(
                    Some(Step::RemoteOffer {
                        renegotiation: false,
                    }),
                    Action::SetRemoteOffer { sdp },
                );
            }
        }
    }

    fn local_description(&mut self, now: Instant, sdp: String, mid: Option<String>) {
        let gathering = self.config.timeouts.ice_gathering;
        let ringing = self.config.timeouts.ringing;
        let Some(call) = &mut self.call else {
            return;
        };
        let step = call.pending;
        if !matches!(
            step,
            Some(Step::Offer { .. } | Step::Answer { .. } | Step::VideoOffer)
        ) {
            return;
        }
        call.pending = None;
        call.gathering_until = Some(now + gathering);
        if let Some(mid) = mid {
            call.candidate_mid = mid;
        }
        let call_id = call.id.clone();
        match step {
            Some(Step::Offer { restart }) => {
                call.offer_outstanding = true;
                let with_video = call.with_video;
                if restart {
                    call.ice.ice_restarts += 1;
                } else {
                    call.ringing_until = Some(now + ringing);
                    mark(&mut call.timeline.offer_sent_ms, call.started, now);
                }
                let auth = sign(call.peer.as_ref(), CallAuthRole::Offer, &call_id, &sdp);
                self.send(CallOffer {
                    call_id,
                    sdp,
                    with_video,
                    auth,
                });
                if !restart {
                    self.set_state(CallState::Outgoing);
                }
            }
            Some(Step::VideoOffer) => {
                call.offer_outstanding = true;
                let auth = sign(call.peer.as_ref(), CallAuthRole::Offer, &call_id, &sdp);
                self.send(CallOffer {
                    call_id,
                    sdp,
                    with_video: true,
                    auth,
                });
            }
            Some(Step::Answer { renegotiation }) => {
                mark(&mut call.timeline.answer_sent_ms, call.started, now);
                if !renegotiation {
                    call.ringing_until = None;
                }
                let auth = sign(call.peer.as_ref(), CallAuthRole::Answer, &call_id, &sdp);
                self.send(CallAnswer { call_id, sdp, auth });
                if !renegotiation {
                    self.set_state(CallState::Connecting);
                }
            }
            _ => {}
        }
    }

    fn remote_description_set(&mut self, now: Instant) {
        let Some(call) = &mut self.call else {
            return;
        };
        let step = call.pending;
        if !matches!(step, Some(Step::RemoteOffer { .. } | Step::RemoteAnswer)) {
            return;
        }
        call.pending = None;
        call.remote_description_set = true;
        let waiting = std::mem::take(&mut call.pending_candidates);
        for candidate in waiting {
            self.act(None, Action::AddRemoteCandidate(candidate));
        }
        match step {
            Some(Step::RemoteOffer { renegotiation }) => {
                self.act(Some(Step::Answer { renegotiation }), Action::CreateAnswer);
            }
            Some(Step::RemoteAnswer) => {
                let Some(call) = self
                    .call
                    .as_mut()
                    .filter(|c| c.state == CallState::Outgoing)
                else {
                    return;
                };
                mark(&mut call.timeline.answer_received_ms, call.started, now);
                call.ringing_until = None;
                self.set_state(CallState::Connecting);
            }
            _ => {}
        }
    }

    fn action_failed(&mut self, now: Instant, detail: String) {
        let Some(call) = &mut self.call else {
            return;
        };
        let Some(step) = call.pending.take() else {
            return;
        };
        let call_id = call.id.clone();
        let role = call.role;
        match step {
            Step::Offer { restart: true } => {
                tracing::warn!("ICE restart failed: {detail}");
                return;
            }
            Step::VideoOffer => {
                tracing::warn!("adding video failed: {detail}");
                return;
            }
            Step::RemoteOffer {
                renegotiation: true,
            }
            | Step::Answer {
                renegotiation: true,
            } => {
                tracing::warn!("restart offer refused: {detail}");
                return;
            }
            Step::Peer if role == Role::Callee => self.send(CallReject {
                call_id,
                reason: None,
            }),
            Step::Peer | Step::Offer { restart: false } => {}
            Step::RemoteOffer { .. } | Step::Answer { .. } | Step::RemoteAnswer => {
                self.send(CallHangup { call_id })
            }
        }
        self.end(now, EndReason::Failed { detail });
    }

    fn local_candidate(&mut self, candidate: String, relay_related_port: Option<u16>) {
        let Some(call) = &mut self.call else {
            return;
        };
        call.ice.local_candidates += 1;
        if let Some(port) = relay_related_port {
            call.ice.local_relays.push(port);
        }
        let init = IceCandidateInit::new(candidate, Some(call.candidate_mid.clone()), Some(0));
        let call_id = call.id.clone();
        self.send(CallIce::new(call_id, &init));
    }

    fn signal(&mut self, now: Instant, payload: CallPayload, peer: Option<PeerAuth>) {
        if let Err(err) = payload.validate() {
            tracing::warn!("ignoring an invalid {}: {err}", payload.kind().type_name());
            return;
        }
        let ours = self
            .call
            .as_ref()
            .is_some_and(|c| c.id.eq_ignore_ascii_case(payload.call_id()));
        match payload {
            CallPayload::Offer(offer) => self.on_offer(now, offer, ours, peer),
            _ if !ours => {
                tracing::debug!("ignoring a {} for another call", payload.kind().type_name());
            }
            CallPayload::Answer(answer) => self.on_answer(now, answer),
            CallPayload::Reject(reject) => self.end(
                now,
                EndReason::RejectedByRemote {
                    reason: reject.reason,
                },
            ),
            CallPayload::Hangup(_) => self.end(now, EndReason::HangupRemote),
            CallPayload::Ice(ice) => self.on_remote_candidate(ice),
        }
    }

    fn on_offer(&mut self, now: Instant, offer: CallOffer, ours: bool, peer: Option<PeerAuth>) {
        if ours {
            // A renegotiation (ICE restart) of the active call, from the caller.
            if self
                .call
                .as_ref()
                .is_some_and(|c| c.role == Role::Callee && c.peer_ready)
            {
                if !self.accept_auth(now, CallAuthRole::Offer, &offer.sdp, offer.auth.as_ref()) {
                    return;
                }
                if offer.with_video {
                    if let Some(call) = &mut self.call {
                        call.with_video = true;
                    }
                }
                let sdp = self.without_local_only_candidates(offer.sdp);
                self.act(
                    Some(Step::RemoteOffer {
                        renegotiation: true,
                    }),
                    Action::SetRemoteOffer { sdp },
                );
            }
            return;
        }
        if self.call.is_some() {
            self.send(CallReject {
                call_id: offer.call_id.clone(),
                reason: Some(RejectReason::Busy),
            });
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
            now,
        );
        mark(&mut call.timeline.offer_received_ms, call.started, now);
        call.peer = peer;
        self.call = Some(call);
        if !self.accept_auth(now, CallAuthRole::Offer, &offer.sdp, offer.auth.as_ref()) {
            return;
        }
        let sdp = self.without_local_only_candidates(offer.sdp);
        let ringing = self.config.timeouts.ringing;
        if let Some(call) = &mut self.call {
            call.remote_offer = Some(sdp);
            call.ringing_until = Some(now + ringing);
        }
        self.set_state(CallState::Incoming);
        self.emit(CallEvent::Incoming {
            call_id: offer.call_id,
            with_video: offer.with_video,
        });
        match self.config.answer_policy {
            AnswerPolicy::Manual => {}
            AnswerPolicy::Accept => self.accept(),
            AnswerPolicy::Decline => self.decline(now),
        }
    }

    fn on_answer(&mut self, now: Instant, answer: CallAnswer) {
        let Some(call) = &mut self.call else {
            return;
        };
        if call.role != Role::Caller || !call.peer_ready {
            return;
        }
        if !call.offer_outstanding {
            // A repeated answer (a relay that delivers twice): nothing is waiting for it.
            tracing::debug!("ignoring a call_answer with no offer outstanding");
            return;
        }
        call.offer_outstanding = false;
        if !self.accept_auth(now, CallAuthRole::Answer, &answer.sdp, answer.auth.as_ref()) {
            return;
        }
        let sdp = self.without_local_only_candidates(answer.sdp);
        self.act(Some(Step::RemoteAnswer), Action::SetRemoteAnswer { sdp });
    }

    /// Rule 20: checks the `auth` of an incoming offer or answer of the active call (whose
    /// SDP is `sdp`) before it is applied. Verified: the call is authenticated (a first
    /// offer or answer) and its fingerprints remembered. Refused: the call ends
    /// ([`EndReason::MediaNotAuthenticated`]) and `false` is returned.
    fn accept_auth(
        &mut self,
        now: Instant,
        role: CallAuthRole,
        sdp: &str,
        auth: Option<&CallAuth>,
    ) -> bool {
        let require = self.config.require_authenticated;
        let Some(call) = &mut self.call else {
            return false;
        };
        // The first offer (callee) or the first answer (caller) decides whether the call is
        // authenticated; later ones may only keep it so.
        let first = match role {
            CallAuthRole::Offer => call.state == CallState::Idle,
            CallAuthRole::Answer => call.state == CallState::Outgoing,
        };
        let verdict = match (auth, &call.peer) {
            (_, None) if require => Err(
                "this side has no key to verify the peer with, and authentication is required"
                    .into(),
            ),
            // No identity on this side: `auth` is ignored, as Zajel's clients ignore it.
            (_, None) => Ok(None),
            (Some(auth), Some(peer)) => {
                if auth.verify(
                    &peer.mac_key,
                    role,
                    &call.id,
                    sdp,
                    &peer.peer_key,
                    &peer.own_key,
                ) {
                    Ok(Some(sdp_fingerprints(sdp)))
                } else {
                    Err(format!(
                        "the peer's {} auth does not verify (its fingerprints, call or keys were changed)",
                        role.as_str()
                    ))
                }
            }
            (None, Some(_)) if call.authenticated => {
                Err("no auth on a call that was authenticated (a downgrade)".into())
            }
            (None, Some(peer)) if peer.authenticated_before => {
                Err("no auth from a contact that authenticated before (a downgrade)".into())
            }
            (None, Some(_)) if require => {
                Err("the peer sent no auth and authentication is required".into())
            }
            (None, Some(_)) => Ok(None),
        };
        match verdict {
            Ok(Some(fingerprints)) => {
                if first {
                    call.authenticated = true;
                }
                if call.authenticated {
                    call.authenticated_fingerprints.extend(fingerprints);
                    call.authenticated_fingerprints.sort();
                    call.authenticated_fingerprints.dedup();
                }
                true
            }
            Ok(None) => true,
            Err(detail) => {
                self.refuse_unauthenticated(now, detail);
                false
            }
        }
    }

    /// Ends the active call as not authenticated: `call_hangup`, then the end.
    fn refuse_unauthenticated(&mut self, now: Instant, detail: String) {
        let Some(call) = &self.call else {
            return;
        };
        tracing::warn!(call_id = %call.id, "refusing the call: {detail}");
        self.send(CallHangup {
            call_id: call.id.clone(),
        });
        self.end(now, EndReason::MediaNotAuthenticated { detail });
    }

    /// Rule 21: an authenticated call's DTLS peer must have presented an authenticated
    /// certificate.
    fn remote_certificate(&mut self, now: Instant, fingerprint: Option<String>) {
        let Some(call) = &mut self.call else {
            return;
        };
        if !call.authenticated || call.certificate_checked {
            return;
        }
        match fingerprint {
            Some(presented) if call.authenticated_fingerprints.contains(&presented) => {
                call.certificate_checked = true;
            }
            Some(presented) => self.refuse_unauthenticated(
                now,
                format!(
                    "the DTLS certificate the peer presented ({presented}) is not the one its auth covered"
                ),
            ),
            None => self.refuse_unauthenticated(
                now,
                "the peer presented no DTLS certificate to check".into(),
            ),
        }
    }

    /// Rule 22: `sdp` without `a=candidate` lines on local-only addresses (unless allowed).
    fn without_local_only_candidates(&mut self, sdp: String) -> String {
        if self.config.allow_loopback_candidates {
            return sdp;
        }
        let mut dropped = 0;
        let kept: String = sdp
            .split_inclusive('\n')
            .filter(|line| {
                let local = line
                    .trim()
                    .strip_prefix("a=")
                    .is_some_and(candidate_is_local_only);
                dropped += u32::from(local);
                !local
            })
            .collect();
        if dropped > 0 {
            tracing::debug!(dropped, "dropped SDP candidates on local-only addresses");
            if let Some(call) = &mut self.call {
                call.ice.remote_candidates_dropped += dropped;
            }
        }
        kept
    }

    fn on_remote_candidate(&mut self, ice: CallIce) {
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
        if !self.config.allow_loopback_candidates && candidate_is_local_only(&init.candidate) {
            tracing::debug!("dropped a remote candidate on a local-only address");
            call.ice.remote_candidates_dropped += 1;
            return;
        }
        call.ice.remote_candidates += 1;
        if call.peer_ready && call.remote_description_set {
            self.act(None, Action::AddRemoteCandidate(init));
        } else {
            call.pending_candidates.push(init);
        }
    }

    fn ice(&mut self, now: Instant, state: IceConnection) {
        let reconnect = self.config.timeouts.reconnect;
        let Some(call) = &mut self.call else {
            return;
        };
        let call_id = call.id.clone();
        match state {
            IceConnection::Connected => {
                let first = call.timeline.ice_connected_ms.is_none();
                mark(&mut call.timeline.ice_connected_ms, call.started, now);
                let reconnected = call.reconnect_until.take().is_some();
                if reconnected {
                    call.ice.reconnects += 1;
                }
                if first {
                    self.emit(CallEvent::IceConnected {
                        call_id: call_id.clone(),
                    });
                }
                if reconnected {
                    self.set_state(CallState::Connected);
                    self.emit(CallEvent::Reconnected { call_id });
                }
            }
            IceConnection::Disconnected | IceConnection::Failed => {
                let failed = state == IceConnection::Failed;
                let was_up = call.state == CallState::Connected || call.reconnect_until.is_some();
                if !was_up {
                    if failed {
                        self.send(CallHangup { call_id });
                        self.end(
                            now,
                            EndReason::Failed {
                                detail: "ICE failed before the call connected".into(),
                            },
                        );
                    }
                    return;
                }
                let opening = call.reconnect_until.is_none();
                let is_caller = call.role == Role::Caller;
                if opening {
                    call.reconnect_until = Some(now + reconnect);
                    self.set_state(CallState::Connecting);
                    self.emit(CallEvent::Reconnecting { call_id });
                }
                // The caller restarts ICE when the window opens and again if ICE fails in it.
                if is_caller && (opening || failed) {
                    self.act(
                        Some(Step::Offer { restart: true }),
                        Action::CreateOffer { ice_restart: true },
                    );
                }
            }
        }
    }

    fn peer_connected(&mut self, now: Instant) {
        let Some(call) = &mut self.call else {
            return;
        };
        if call.authenticated && !call.certificate_checked {
            return self.refuse_unauthenticated(
                now,
                "DTLS came up before the peer's certificate was checked".into(),
            );
        }
        // Media starts once ICE and DTLS are up: samples written earlier would be counted by
        // webrtc-rs's outbound stats but never reach the wire.
        let start_media = call.timeline.connected_ms.is_none() && call.peer_ready;
        mark(&mut call.timeline.connected_ms, call.started, now);
        let reconnecting = call.reconnect_until.is_some();
        if start_media {
            self.act(None, Action::StartMedia);
        }
        if !reconnecting {
            self.set_state(CallState::Connected);
        }
    }

    fn timeout(&mut self, now: Instant) {
        let Some(call) = &mut self.call else {
            return;
        };
        let call_id = call.id.clone();
        if call.ringing_until.is_some_and(|t| t <= now) {
            call.ringing_until = None;
            self.send(CallReject {
                call_id,
                reason: Some(RejectReason::Timeout),
            });
            self.end(now, EndReason::RingingTimeout);
            return;
        }
        if call.gathering_until.is_some_and(|t| t <= now) {
            call.gathering_until = None;
            if call.ice.local_candidates == 0 {
                self.send(CallHangup { call_id });
                self.end(now, EndReason::IceGatheringTimeout);
                return;
            }
            call.ice.gathering_timed_out = true;
        }
        if call.reconnect_until.is_some_and(|t| t <= now) {
            call.reconnect_until = None;
            self.send(CallHangup { call_id });
            self.end(now, EndReason::ReconnectTimeout);
        }
    }
}

/// The `auth` of an outgoing payload of `role`, when the peer is known (rule 19).
fn sign(peer: Option<&PeerAuth>, role: CallAuthRole, call_id: &str, sdp: &str) -> Option<CallAuth> {
    peer.map(|peer| {
        CallAuth::sign(
            &peer.mac_key,
            role,
            call_id,
            sdp,
            &peer.own_key,
            &peer.peer_key,
        )
    })
}

/// Whether an ICE candidate attribute (`candidate:… <address> <port> typ …`, with or without
/// `a=`) names a loopback, link-local, unspecified, multicast or broadcast address (rule 22).
/// Host names (mDNS `….local`) are not addresses and are kept.
pub fn candidate_is_local_only(candidate: &str) -> bool {
    let text = candidate.trim();
    let text = text.strip_prefix("a=").unwrap_or(text);
    let Some(fields) = text.strip_prefix("candidate:") else {
        return false;
    };
    fields
        .split_whitespace()
        .nth(4)
        .is_some_and(is_local_only_address)
}

/// Whether `text` is an IP address only this host or its link can use.
pub fn is_local_only_address(text: &str) -> bool {
    use std::net::IpAddr;
    let text = text.trim_start_matches('[').trim_end_matches(']');
    if text.contains('%') {
        return true; // a scoped (link-local) IPv6 address
    }
    let v4 = |ip: std::net::Ipv4Addr| {
        ip.is_loopback()
            || ip.is_link_local()
            || ip.is_unspecified()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.octets()[0] == 0
    };
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => v4(ip),
        Ok(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None => {
                ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
            }
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    const OTHER: &str = "9b2c1d3e-5f60-4a71-8b92-a3b4c5d6e7f8";
    const RINGING_MS: u64 = 60_000;
    const GATHERING_MS: u64 = 10_000;
    const RECONNECT_MS: u64 = 30_000;

    fn config(answer_policy: AnswerPolicy) -> MachineConfig {
        MachineConfig {
            timeouts: CallTimeouts::default(),
            answer_policy,
            allow_video: true,
            relay_only: false,
            require_authenticated: false,
            allow_loopback_candidates: true,
        }
    }

    /// A machine on a fake clock: `now` only moves when a test moves it.
    struct Phone {
        machine: CallMachine,
        start: Instant,
        now: Instant,
    }

    impl Phone {
        fn new(config: MachineConfig) -> Self {
            let start = Instant::now();
            Self {
                machine: CallMachine::new(config),
                start,
                now: start,
            }
        }

        /// Moves the clock to `ms` after the phone's start.
        fn at(&mut self, ms: u64) -> &mut Self {
            self.now = self.start + Duration::from_millis(ms);
            self
        }

        /// Handles `input` now; returns the outputs.
        fn input(&mut self, input: Input) -> Vec<Output> {
            self.machine
                .handle(self.now, input)
                .expect("the input is accepted");
            self.drain()
        }

        /// Handles a command now; returns its result and the outputs.
        fn command(&mut self, input: Input) -> (Result<(), EngineError>, Vec<Output>) {
            let result = self.machine.handle(self.now, input);
            (result, self.drain())
        }

        fn signal(&mut self, payload: impl Into<CallPayload>) -> Vec<Output> {
            self.input(Input::Signal(payload.into()))
        }

        fn drain(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.machine.poll_output()).collect()
        }

        fn state(&self) -> CallState {
            self.machine.state().1
        }

        fn ice(&self) -> IceReport {
            self.machine.snapshot().expect("a call").ice
        }

        fn timeline(&self) -> Timeline {
            self.machine.snapshot().expect("a call").timeline
        }

        fn deadline_ms(&self) -> Option<u64> {
            self.machine
                .poll_timeout()
                .map(|t| (t - self.start).as_millis() as u64)
        }
    }

    fn offer(call_id: &str, sdp: &str) -> CallOffer {
        CallOffer {
            call_id: call_id.into(),
            sdp: sdp.into(),
            with_video: false,
            auth: None,
        }
    }

    fn answer(call_id: &str, sdp: &str) -> CallAnswer {
        CallAnswer {
            call_id: call_id.into(),
            sdp: sdp.into(),
            auth: None,
        }
    }

    fn hangup(call_id: &str) -> CallPayload {
        CallHangup {
            call_id: call_id.into(),
        }
        .into()
    }

    fn reject(call_id: &str, reason: Option<RejectReason>) -> CallPayload {
        CallReject {
            call_id: call_id.into(),
            reason,
        }
        .into()
    }

    fn candidate(text: &str) -> IceCandidateInit {
        IceCandidateInit::new(text, Some("0".into()), Some(0))
    }

    fn ice(call_id: &str, text: &str) -> CallPayload {
        CallIce::new(call_id, &candidate(text)).into()
    }

    fn state(state: CallState) -> Output {
        Output::Event(CallEvent::State {
            call_id: ID.into(),
            state,
        })
    }

    fn send(payload: impl Into<CallPayload>) -> Output {
        Output::Send(payload.into())
    }

    /// How the outputs end the call, if they do (and then as the last output).
    fn ended(outputs: &[Output]) -> Option<EndReason> {
        let position = outputs.iter().position(|o| matches!(o, Output::Ended(_)))?;
        assert_eq!(
            position,
            outputs.len() - 1,
            "the end comes last: {outputs:?}"
        );
        match &outputs[position] {
            Output::Ended(summary) => Some(summary.end.clone()),
            _ => None,
        }
    }

    fn sent(outputs: &[Output]) -> Vec<CallPayload> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Send(payload) => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }

    fn failed(detail: &str) -> EndReason {
        EndReason::Failed {
            detail: detail.into(),
        }
    }

    /// A caller whose offer is out (sent at 0 ms, mid `0`).
    fn outgoing(config: MachineConfig) -> Phone {
        let mut phone = Phone::new(config);
        let (result, outputs) = phone.command(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        assert_eq!(result, Ok(()));
        assert_eq!(
            outputs,
            [Output::Do(Action::CreatePeer {
                call_id: ID.into(),
                with_video: false
            })]
        );
        assert_eq!(
            phone.input(Input::PeerCreated),
            [Output::Do(Action::CreateOffer { ice_restart: false })]
        );
        let outputs = phone.input(Input::LocalDescription {
            sdp: "offer".into(),
            mid: Some("0".into()),
        });
        assert_eq!(
            outputs,
            [send(offer(ID, "offer")), state(CallState::Outgoing)]
        );
        phone
    }

    /// A caller whose offer was answered.
    fn caller_connecting() -> Phone {
        let mut phone = outgoing(config(AnswerPolicy::Manual));
        assert_eq!(
            phone.signal(answer(ID, "answer")),
            [Output::Do(Action::SetRemoteAnswer {
                sdp: "answer".into()
            })]
        );
        assert_eq!(
            phone.input(Input::RemoteDescriptionSet),
            [state(CallState::Connecting)]
        );
        phone
    }

    /// A caller in a connected call.
    fn caller_connected() -> Phone {
        connected(caller_connecting())
    }

    /// A connecting call brought up: a host candidate, gathering done, ICE and the peer connected.
    fn connected(mut phone: Phone) -> Phone {
        phone.input(Input::LocalCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            relay_related_port: None,
        });
        phone.input(Input::GatheringComplete);
        phone.input(Input::Ice(IceConnection::Connected));
        phone.input(Input::PeerConnected);
        assert_eq!(phone.state(), CallState::Connected);
        assert_eq!(phone.deadline_ms(), None);
        phone
    }

    /// A callee ringing with the offer `ID`.
    fn incoming(config: MachineConfig) -> Phone {
        let mut phone = Phone::new(config);
        let outputs = phone.signal(offer(ID, "offer"));
        assert_eq!(
            outputs[..2],
            [
                state(CallState::Incoming),
                Output::Event(CallEvent::Incoming {
                    call_id: ID.into(),
                    with_video: false
                })
            ]
        );
        phone
    }

    /// A callee that accepted and answered.
    fn callee_connecting() -> Phone {
        let mut phone = incoming(config(AnswerPolicy::Manual));
        let (result, outputs) = phone.command(Input::Accept);
        assert_eq!(result, Ok(()));
        assert_eq!(
            outputs,
            [Output::Do(Action::CreatePeer {
                call_id: ID.into(),
                with_video: false
            })]
        );
        assert_eq!(
            phone.input(Input::PeerCreated),
            [Output::Do(Action::SetRemoteOffer {
                sdp: "offer".into()
            })]
        );
        assert_eq!(
            phone.input(Input::RemoteDescriptionSet),
            [Output::Do(Action::CreateAnswer)]
        );
        let outputs = phone.input(Input::LocalDescription {
            sdp: "answer".into(),
            mid: Some("0".into()),
        });
        assert_eq!(
            outputs,
            [send(answer(ID, "answer")), state(CallState::Connecting)]
        );
        phone
    }

    fn callee_connected() -> Phone {
        connected(callee_connecting())
    }

    /// One phone in each state a call goes through.
    fn phones_in_a_call() -> Vec<Phone> {
        vec![
            outgoing(config(AnswerPolicy::Manual)),
            incoming(config(AnswerPolicy::Manual)),
            caller_connecting(),
            callee_connecting(),
            caller_connected(),
            callee_connected(),
        ]
    }

    #[test]
    fn rule_1_placing_a_call_during_a_call_is_refused_busy() {
        for mut phone in phones_in_a_call() {
            let before = phone.machine.state();
            let (result, outputs) = phone.command(Input::PlaceCall {
                call_id: OTHER.into(),
                with_video: false,
                peer: None,
            });
            assert_eq!(result, Err(EngineError::Busy));
            assert_eq!(outputs, []);
            assert_eq!(phone.machine.state(), before);
        }
    }

    #[test]
    fn rule_2_an_offer_for_another_call_during_a_call_gets_busy() {
        for mut phone in phones_in_a_call() {
            let before = phone.machine.state();
            let outputs = phone.signal(offer(OTHER, "second"));
            assert_eq!(
                outputs,
                [
                    send(reject(OTHER, Some(RejectReason::Busy))),
                    Output::Event(CallEvent::RejectedBusy {
                        call_id: OTHER.into()
                    })
                ]
            );
            assert_eq!(
                phone.machine.state(),
                before,
                "the active call is untouched"
            );
        }
    }

    #[test]
    fn rule_3_an_offer_with_the_active_call_id_is_a_renegotiation() {
        // The callee applies it and answers with the same callId, staying connected.
        let mut callee = callee_connected();
        assert_eq!(
            callee.signal(offer(&ID.to_uppercase(), "restart")),
            [Output::Do(Action::SetRemoteOffer {
                sdp: "restart".into()
            })]
        );
        assert_eq!(
            callee.input(Input::RemoteDescriptionSet),
            [Output::Do(Action::CreateAnswer)]
        );
        let outputs = callee.input(Input::LocalDescription {
            sdp: "answer 2".into(),
            mid: Some("0".into()),
        });
        assert_eq!(outputs, [send(answer(ID, "answer 2"))]);
        assert_eq!(
            callee.machine.state(),
            (Some(ID.into()), CallState::Connected)
        );
        // A caller, and a callee still ringing, ignore it.
        let mut caller = caller_connected();
        assert_eq!(caller.signal(offer(ID, "restart")), []);
        assert_eq!(caller.state(), CallState::Connected);
        let mut ringing = incoming(config(AnswerPolicy::Manual));
        assert_eq!(ringing.signal(offer(ID, "again")), []);
        assert_eq!(ringing.state(), CallState::Incoming);
    }

    #[test]
    fn rule_23_the_caller_adds_video_to_a_connected_call_by_a_new_offer() {
        // Refused before the call is connected, on the callee, and on a video call.
        let mut caller = caller_connecting();
        assert_eq!(
            caller.command(Input::AddVideo).0,
            Err(EngineError::CannotAddVideo("the call is not connected"))
        );
        let mut callee = callee_connected();
        assert_eq!(
            callee.command(Input::AddVideo).0,
            Err(EngineError::CannotAddVideo("only the caller renegotiates"))
        );
        let mut idle = Phone::new(config(AnswerPolicy::Manual));
        assert_eq!(idle.command(Input::AddVideo).0, Err(EngineError::NoCall));
        // The caller: a video track and an offer with the same callId, withVideo true.
        let mut caller = caller_connected();
        let (result, outputs) = caller.command(Input::AddVideo);
        assert_eq!(result, Ok(()));
        assert_eq!(outputs, [Output::Do(Action::AddVideoAndOffer)]);
        assert_eq!(
            caller.command(Input::AddVideo).0,
            Err(EngineError::CannotAddVideo("the call already has video"))
        );
        let outputs = caller.input(Input::LocalDescription {
            sdp: "with video".into(),
            mid: Some("0".into()),
        });
        assert_eq!(
            outputs,
            [send(CallOffer {
                with_video: true,
                ..offer(ID, "with video")
            })]
        );
        assert_eq!(caller.state(), CallState::Connected, "no state change");
        assert_eq!(caller.ice().ice_restarts, 0, "not an ICE restart");
        // Its answer is applied once; the state stays connected.
        let outputs = caller.signal(answer(ID, "answer with video"));
        assert_eq!(
            outputs,
            [Output::Do(Action::SetRemoteAnswer {
                sdp: "answer with video".into()
            })]
        );
        assert_eq!(caller.input(Input::RemoteDescriptionSet), []);
        assert_eq!(caller.signal(answer(ID, "again")), []);
        assert_eq!(caller.state(), CallState::Connected);
        // The callee applies the offer as a renegotiation, answers, and has video from now on.
        let outputs = callee.signal(CallOffer {
            with_video: true,
            ..offer(ID, "with video")
        });
        assert_eq!(
            outputs,
            [Output::Do(Action::SetRemoteOffer {
                sdp: "with video".into()
            })]
        );
        callee.input(Input::RemoteDescriptionSet);
        let outputs = callee.input(Input::LocalDescription {
            sdp: "answer with video".into(),
            mid: None,
        });
        assert_eq!(outputs, [send(answer(ID, "answer with video"))]);
        let summary = callee.machine.snapshot().unwrap();
        assert!(summary.with_video);
        assert_eq!(callee.state(), CallState::Connected);
    }

    #[test]
    fn rule_4_ringing_stops_with_a_timeout_reject_on_either_side() {
        // The caller rings from its offer.
        let mut caller = outgoing(config(AnswerPolicy::Manual));
        caller.input(Input::LocalCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            relay_related_port: None,
        });
        caller.input(Input::GatheringComplete);
        assert_eq!(caller.deadline_ms(), Some(RINGING_MS));
        assert_eq!(caller.at(RINGING_MS - 1).input(Input::Timeout), []);
        let outputs = caller.at(RINGING_MS).input(Input::Timeout);
        assert_eq!(sent(&outputs), [reject(ID, Some(RejectReason::Timeout))]);
        assert_eq!(ended(&outputs), Some(EndReason::RingingTimeout));
        assert_eq!(caller.machine.state(), (None, CallState::Idle));
        // The callee rings from the offer's arrival.
        let mut callee = Phone::new(config(AnswerPolicy::Manual));
        callee.at(500).signal(offer(ID, "offer"));
        assert_eq!(callee.deadline_ms(), Some(500 + RINGING_MS));
        let outputs = callee.at(500 + RINGING_MS).input(Input::Timeout);
        assert_eq!(sent(&outputs), [reject(ID, Some(RejectReason::Timeout))]);
        assert_eq!(ended(&outputs), Some(EndReason::RingingTimeout));
        // Answered calls no longer ring.
        for mut phone in [caller_connecting(), callee_connecting()] {
            phone.input(Input::GatheringComplete);
            assert_eq!(phone.deadline_ms(), None);
        }
    }

    #[test]
    fn rule_5_gathering_with_no_candidate_by_its_timeout_fails_the_call() {
        let mut phone = outgoing(config(AnswerPolicy::Manual));
        assert_eq!(phone.deadline_ms(), Some(GATHERING_MS));
        assert_eq!(phone.at(GATHERING_MS - 1).input(Input::Timeout), []);
        let outputs = phone.at(GATHERING_MS).input(Input::Timeout);
        assert_eq!(sent(&outputs), [hangup(ID)]);
        assert_eq!(ended(&outputs), Some(EndReason::IceGatheringTimeout));
        // With a candidate the call goes on, and the report says gathering timed out.
        let mut phone = caller_connecting();
        phone.input(Input::LocalCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            relay_related_port: None,
        });
        assert_eq!(phone.at(GATHERING_MS).input(Input::Timeout), []);
        assert_eq!(phone.state(), CallState::Connecting);
        assert!(phone.ice().gathering_timed_out);
        assert_eq!(phone.deadline_ms(), None);
        // Gathering that completes in time stops the timer.
        let mut phone = callee_connecting();
        phone.at(20).input(Input::GatheringComplete);
        assert_eq!(phone.deadline_ms(), None);
        assert!(!phone.ice().gathering_timed_out);
    }

    #[test]
    fn rule_6_a_dropped_call_reconnects_and_only_the_caller_restarts_ice() {
        let mut caller = caller_connected();
        let outputs = caller
            .at(1_000)
            .input(Input::Ice(IceConnection::Disconnected));
        assert_eq!(
            outputs,
            [
                state(CallState::Connecting),
                Output::Event(CallEvent::Reconnecting { call_id: ID.into() }),
                Output::Do(Action::CreateOffer { ice_restart: true }),
            ]
        );
        assert_eq!(caller.deadline_ms(), Some(1_000 + RECONNECT_MS));
        // The restart offer carries the same callId and is answered by call_answer.
        let outputs = caller.input(Input::LocalDescription {
            sdp: "restart".into(),
            mid: Some("0".into()),
        });
        assert_eq!(outputs, [send(offer(ID, "restart"))]);
        assert_eq!(caller.ice().ice_restarts, 1);
        assert_eq!(
            caller.signal(answer(ID, "answer 2")),
            [Output::Do(Action::SetRemoteAnswer {
                sdp: "answer 2".into()
            })]
        );
        assert_eq!(caller.input(Input::RemoteDescriptionSet), []);
        // Disconnected again within the window: no new restart; failed: another one.
        assert_eq!(caller.input(Input::Ice(IceConnection::Disconnected)), []);
        assert_eq!(
            caller.input(Input::Ice(IceConnection::Failed)),
            [Output::Do(Action::CreateOffer { ice_restart: true })]
        );
        caller.input(Input::LocalDescription {
            sdp: "restart 2".into(),
            mid: None,
        });
        assert_eq!(caller.ice().ice_restarts, 2);
        // The peer connection coming back does not decide; ICE connected does.
        assert_eq!(caller.input(Input::PeerConnected), []);
        assert_eq!(caller.state(), CallState::Connecting);
        let outputs = caller.at(2_000).input(Input::Ice(IceConnection::Connected));
        assert_eq!(
            outputs,
            [
                state(CallState::Connected),
                Output::Event(CallEvent::Reconnected { call_id: ID.into() }),
            ]
        );
        assert_eq!(caller.ice().reconnects, 1);
        assert_eq!(caller.at(1_000 + RECONNECT_MS).input(Input::Timeout), []);
        // The callee reconnects too, but never restarts ICE.
        let mut callee = callee_connected();
        assert_eq!(
            callee.input(Input::Ice(IceConnection::Disconnected)),
            [
                state(CallState::Connecting),
                Output::Event(CallEvent::Reconnecting { call_id: ID.into() }),
            ]
        );
        assert_eq!(callee.input(Input::Ice(IceConnection::Failed)), []);
        assert_eq!(
            callee.input(Input::Ice(IceConnection::Connected)),
            [
                state(CallState::Connected),
                Output::Event(CallEvent::Reconnected { call_id: ID.into() }),
            ]
        );
        assert_eq!((callee.ice().ice_restarts, callee.ice().reconnects), (0, 1));
    }

    #[test]
    fn rule_7_the_call_ends_when_the_reconnect_window_closes() {
        let mut phone = callee_connected();
        phone
            .at(1_000)
            .input(Input::Ice(IceConnection::Disconnected));
        assert_eq!(phone.deadline_ms(), Some(1_000 + RECONNECT_MS));
        assert_eq!(phone.at(RECONNECT_MS).input(Input::Timeout), []);
        let outputs = phone.at(1_000 + RECONNECT_MS).input(Input::Timeout);
        assert_eq!(sent(&outputs), [hangup(ID)]);
        assert_eq!(ended(&outputs), Some(EndReason::ReconnectTimeout));
    }

    #[test]
    fn rule_8_ice_failing_before_the_call_was_up_ends_it() {
        for mut phone in [caller_connecting(), callee_connecting()] {
            assert_eq!(phone.input(Input::Ice(IceConnection::Disconnected)), []);
            assert_eq!(phone.state(), CallState::Connecting);
            let outputs = phone.input(Input::Ice(IceConnection::Failed));
            assert_eq!(sent(&outputs), [hangup(ID)]);
            assert_eq!(
                ended(&outputs),
                Some(failed("ICE failed before the call connected"))
            );
        }
    }

    #[test]
    fn rule_9_hangup_from_each_state() {
        let mut idle = Phone::new(config(AnswerPolicy::Manual));
        assert_eq!(
            idle.command(Input::Hangup),
            (Err(EngineError::NoCall), vec![])
        );
        for mut phone in phones_in_a_call() {
            let was_incoming = phone.state() == CallState::Incoming;
            let (result, outputs) = phone.at(700).command(Input::Hangup);
            assert_eq!(result, Ok(()));
            if was_incoming {
                assert_eq!(sent(&outputs), [reject(ID, Some(RejectReason::Declined))]);
                assert_eq!(ended(&outputs), Some(EndReason::DeclinedLocally));
            } else {
                assert_eq!(sent(&outputs), [hangup(ID)]);
                assert_eq!(ended(&outputs), Some(EndReason::HangupLocal));
            }
            let Some(Output::Ended(summary)) = outputs.last() else {
                unreachable!()
            };
            assert_eq!(summary.timeline.ended_ms, Some(700.0));
            assert_eq!(phone.machine.state(), (None, CallState::Idle));
            assert_eq!(phone.deadline_ms(), None);
            assert_eq!(phone.command(Input::Hangup).0, Err(EngineError::NoCall));
        }
    }

    #[test]
    fn rule_10_accept_and_decline_only_while_ringing() {
        let mut idle = Phone::new(config(AnswerPolicy::Manual));
        for command in [Input::Accept, Input::Decline] {
            assert_eq!(idle.command(command), (Err(EngineError::NoCall), vec![]));
        }
        for mut phone in phones_in_a_call() {
            if phone.state() == CallState::Incoming {
                continue;
            }
            for command in [Input::Accept, Input::Decline] {
                assert_eq!(
                    phone.command(command),
                    (Err(EngineError::NotRinging), vec![])
                );
            }
        }
        let mut phone = incoming(config(AnswerPolicy::Manual));
        let (result, outputs) = phone.command(Input::Decline);
        assert_eq!(result, Ok(()));
        assert_eq!(sent(&outputs), [reject(ID, Some(RejectReason::Declined))]);
        assert_eq!(ended(&outputs), Some(EndReason::DeclinedLocally));
        // The policy accepts or declines at once.
        let mut phone = Phone::new(config(AnswerPolicy::Accept));
        let outputs = phone.signal(offer(ID, "offer"));
        assert_eq!(
            outputs[2..],
            [Output::Do(Action::CreatePeer {
                call_id: ID.into(),
                with_video: false
            })]
        );
        let mut phone = Phone::new(config(AnswerPolicy::Decline));
        let outputs = phone.signal(offer(ID, "offer"));
        assert_eq!(sent(&outputs), [reject(ID, Some(RejectReason::Declined))]);
        assert_eq!(ended(&outputs), Some(EndReason::DeclinedLocally));
        // Video is accepted only where the configuration allows it.
        for (allow_video, expected) in [(true, true), (false, false)] {
            let mut phone = Phone::new(MachineConfig {
                allow_video,
                ..config(AnswerPolicy::Accept)
            });
            let outputs = phone.signal(CallOffer {
                with_video: true,
                ..offer(ID, "offer")
            });
            assert_eq!(
                outputs.last(),
                Some(&Output::Do(Action::CreatePeer {
                    call_id: ID.into(),
                    with_video: expected
                }))
            );
        }
    }

    #[test]
    fn rule_11_a_remote_hangup_or_reject_ends_the_call() {
        let mut phone = caller_connected();
        let outputs = phone.signal(hangup(ID));
        assert_eq!(ended(&outputs), Some(EndReason::HangupRemote));
        assert_eq!(sent(&outputs), []);
        for reason in [None, Some(RejectReason::Busy), Some(RejectReason::Timeout)] {
            let mut phone = outgoing(config(AnswerPolicy::Manual));
            let outputs = phone.signal(reject(ID, reason));
            assert_eq!(
                ended(&outputs),
                Some(EndReason::RejectedByRemote { reason })
            );
            assert_eq!(sent(&outputs), []);
        }
        // The caller cancelling an incoming call.
        let mut phone = incoming(config(AnswerPolicy::Manual));
        assert_eq!(
            ended(&phone.signal(hangup(ID))),
            Some(EndReason::HangupRemote)
        );
    }

    #[test]
    fn rule_12_invalid_payloads_and_other_call_ids_are_ignored() {
        let for_id = |id: &str| -> Vec<CallPayload> {
            vec![
                answer(id, "answer").into(),
                reject(id, Some(RejectReason::Busy)),
                hangup(id),
                ice(id, "candidate:1 1 udp 1 127.0.0.1 9 typ host"),
            ]
        };
        let mut idle = Phone::new(config(AnswerPolicy::Accept));
        for payload in for_id(ID) {
            assert_eq!(idle.signal(payload), []);
        }
        // An offer whose callId is not a UUID v4 makes no call.
        assert_eq!(idle.signal(offer("not-a-uuid", "offer")), []);
        assert_eq!(idle.machine.state(), (None, CallState::Idle));
        for mut phone in phones_in_a_call() {
            let before = phone.machine.state();
            for payload in for_id(OTHER) {
                assert_eq!(phone.signal(payload), [], "{before:?}");
            }
            assert_eq!(
                phone.signal(CallHangup {
                    call_id: "x".into()
                }),
                []
            );
            assert_eq!(phone.machine.state(), before);
            assert_eq!(phone.ice().remote_candidates, 0);
            // The active callId in capitals is the same call.
            let outputs = phone.signal(hangup(&ID.to_uppercase()));
            assert_eq!(ended(&outputs), Some(EndReason::HangupRemote));
        }
    }

    #[test]
    fn rule_13_an_answer_is_applied_once_and_only_by_the_caller() {
        let mut caller = outgoing(config(AnswerPolicy::Manual));
        assert_eq!(
            caller.signal(answer(ID, "answer")),
            [Output::Do(Action::SetRemoteAnswer {
                sdp: "answer".into()
            })]
        );
        caller.input(Input::RemoteDescriptionSet);
        assert_eq!(caller.signal(answer(ID, "answer")), []);
        assert_eq!(caller.state(), CallState::Connecting);
        let mut callee = callee_connected();
        assert_eq!(callee.signal(answer(ID, "answer")), []);
        // A caller whose peer is still being made has nothing to apply it to.
        let mut early = Phone::new(config(AnswerPolicy::Manual));
        early.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        assert_eq!(early.signal(answer(ID, "answer")), []);
    }

    #[test]
    fn rule_14_remote_candidates_wait_for_the_remote_description() {
        let mut phone = outgoing(config(AnswerPolicy::Manual));
        let first = "candidate:1 1 udp 1 127.0.0.1 9 typ host";
        let second = "candidate:2 1 udp 1 127.0.0.1 10 typ host";
        assert_eq!(phone.signal(ice(ID, first)), []);
        assert_eq!(phone.signal(ice(ID, second)), []);
        assert_eq!(phone.signal(ice(ID, "")), [], "end of candidates");
        phone.signal(answer(ID, "answer"));
        assert_eq!(
            phone.input(Input::RemoteDescriptionSet),
            [
                Output::Do(Action::AddRemoteCandidate(candidate(first))),
                Output::Do(Action::AddRemoteCandidate(candidate(second))),
                state(CallState::Connecting),
            ]
        );
        let third = "candidate:3 1 udp 1 127.0.0.1 11 typ host";
        assert_eq!(
            phone.signal(ice(ID, third)),
            [Output::Do(Action::AddRemoteCandidate(candidate(third)))]
        );
        assert_eq!(phone.ice().remote_candidates, 3);
        // A candidate string that is not an RTCIceCandidateInit is dropped.
        let garbled = CallIce {
            call_id: ID.into(),
            candidate: "candidate:4 1 udp".into(),
        };
        assert_eq!(phone.signal(garbled), []);
        assert_eq!(phone.ice().remote_candidates, 3);
        // The callee keeps the caller's early candidates for its answer.
        let mut callee = incoming(config(AnswerPolicy::Manual));
        callee.signal(ice(ID, first));
        callee.input(Input::Accept);
        callee.input(Input::PeerCreated);
        assert_eq!(
            callee.input(Input::RemoteDescriptionSet),
            [
                Output::Do(Action::AddRemoteCandidate(candidate(first))),
                Output::Do(Action::CreateAnswer),
            ]
        );
    }

    #[test]
    fn rule_15_local_candidates_trickle_with_the_media_section_mid() {
        let mut phone = Phone::new(config(AnswerPolicy::Manual));
        phone.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        phone.input(Input::PeerCreated);
        phone.input(Input::LocalDescription {
            sdp: "offer".into(),
            mid: Some("audio".into()),
        });
        let host = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host";
        let relay = "candidate:2 1 udp 16777215 10.0.0.1 6000 typ relay raddr 0.0.0.0 rport 41000";
        let outputs = phone.input(Input::LocalCandidate {
            candidate: host.into(),
            relay_related_port: None,
        });
        let wire = IceCandidateInit::new(host, Some("audio".into()), Some(0));
        assert_eq!(outputs, [send(CallIce::new(ID, &wire))]);
        phone.input(Input::LocalCandidate {
            candidate: relay.into(),
            relay_related_port: Some(41_000),
        });
        let report = phone.ice();
        assert_eq!(
            (report.local_candidates, report.local_relays),
            (2, vec![41_000])
        );
    }

    #[test]
    fn rule_16_a_failed_setup_step_ends_the_call() {
        let fail = |phone: &mut Phone| {
            phone.input(Input::ActionFailed {
                detail: "broken".into(),
            })
        };
        // The caller's peer or offer: nothing was sent, nothing is.
        let mut phone = Phone::new(config(AnswerPolicy::Manual));
        phone.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        let outputs = fail(&mut phone);
        assert_eq!(
            (sent(&outputs), ended(&outputs)),
            (vec![], Some(failed("broken")))
        );
        let mut phone = Phone::new(config(AnswerPolicy::Manual));
        phone.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        phone.input(Input::PeerCreated);
        let outputs = fail(&mut phone);
        assert_eq!(
            (sent(&outputs), ended(&outputs)),
            (vec![], Some(failed("broken")))
        );
        // The callee's peer: call_reject without a reason.
        let mut phone = incoming(config(AnswerPolicy::Manual));
        phone.input(Input::Accept);
        let outputs = fail(&mut phone);
        assert_eq!(sent(&outputs), [reject(ID, None)]);
        assert_eq!(ended(&outputs), Some(failed("broken")));
        // The remote offer, the answer, the remote answer: call_hangup.
        let mut phone = incoming(config(AnswerPolicy::Manual));
        phone.input(Input::Accept);
        phone.input(Input::PeerCreated);
        let outputs = fail(&mut phone);
        assert_eq!(
            (sent(&outputs), ended(&outputs)),
            (vec![hangup(ID)], Some(failed("broken")))
        );
        let mut phone = incoming(config(AnswerPolicy::Manual));
        phone.input(Input::Accept);
        phone.input(Input::PeerCreated);
        phone.input(Input::RemoteDescriptionSet);
        let outputs = fail(&mut phone);
        assert_eq!(
            (sent(&outputs), ended(&outputs)),
            (vec![hangup(ID)], Some(failed("broken")))
        );
        let mut phone = outgoing(config(AnswerPolicy::Manual));
        phone.signal(answer(ID, "answer"));
        let outputs = fail(&mut phone);
        assert_eq!(
            (sent(&outputs), ended(&outputs)),
            (vec![hangup(ID)], Some(failed("broken")))
        );
        // A failed ICE restart or renegotiation is only logged.
        let mut phone = caller_connected();
        phone.input(Input::Ice(IceConnection::Disconnected));
        assert_eq!(fail(&mut phone), []);
        assert_eq!(phone.state(), CallState::Connecting);
        let mut phone = callee_connected();
        phone.signal(offer(ID, "restart"));
        assert_eq!(fail(&mut phone), []);
        assert_eq!(phone.state(), CallState::Connected);
        // A failure nobody waits for changes nothing.
        assert_eq!(fail(&mut phone), []);
        assert_eq!(phone.state(), CallState::Connected);
        // DTLS failing ends the call.
        let outputs = phone.input(Input::DtlsFailed);
        assert_eq!(sent(&outputs), [hangup(ID)]);
        assert_eq!(ended(&outputs), Some(failed("DTLS handshake failed")));
    }

    #[test]
    fn rule_17_the_first_peer_connected_starts_media_once() {
        let mut phone = caller_connecting();
        assert_eq!(
            phone.input(Input::PeerConnected),
            [Output::Do(Action::StartMedia), state(CallState::Connected)]
        );
        assert_eq!(phone.input(Input::PeerConnected), []);
        let mut phone = callee_connecting();
        phone.input(Input::Ice(IceConnection::Connected));
        assert_eq!(
            phone.input(Input::PeerConnected),
            [Output::Do(Action::StartMedia), state(CallState::Connected)]
        );
        phone.input(Input::Ice(IceConnection::Disconnected));
        assert_eq!(phone.input(Input::PeerConnected), []);
        assert_eq!(phone.state(), CallState::Connecting);
    }

    #[test]
    fn rule_18_the_timeline_counts_from_this_sides_start() {
        let mut caller = Phone::new(config(AnswerPolicy::Manual));
        caller.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: None,
        });
        caller.at(5).input(Input::PeerCreated);
        caller.at(8).input(Input::LocalDescription {
            sdp: "offer".into(),
            mid: None,
        });
        caller.at(100).signal(answer(ID, "answer"));
        caller.at(120).input(Input::RemoteDescriptionSet);
        caller.at(150).input(Input::GatheringComplete);
        caller.at(200).input(Input::Ice(IceConnection::Connected));
        let outputs = caller.at(210).input(Input::DtlsConnected);
        assert_eq!(
            outputs,
            [Output::Event(CallEvent::DtlsConnected {
                call_id: ID.into()
            })]
        );
        caller.at(220).input(Input::PeerConnected);
        caller.at(230).input(Input::FirstRtp);
        caller.at(235).input(Input::FirstRtp);
        let reading = ToneReading {
            frequency_hz: 660.0,
            level_dbfs: -12.0,
            purity: 0.99,
        };
        let outputs = caller.at(300).input(Input::Tone(reading));
        assert_eq!(
            outputs,
            [Output::Event(CallEvent::ToneDetected {
                call_id: ID.into(),
                reading
            })]
        );
        assert!(caller.machine.wants_rtt());
        assert_eq!(
            caller.at(400).input(Input::Rtt(12.5)),
            [Output::Event(CallEvent::RttAvailable {
                call_id: ID.into(),
                rtt_ms: 12.5
            })]
        );
        assert!(!caller.machine.wants_rtt());
        assert_eq!(caller.at(450).input(Input::Rtt(13.0)), [], "announced once");
        assert_eq!(
            caller.at(500).input(Input::FirstVideoFrame),
            [Output::Event(CallEvent::FirstVideoFrame {
                call_id: ID.into()
            })]
        );
        assert_eq!(caller.at(550).input(Input::FirstVideoFrame), [], "once");
        let outputs = caller.at(1_000).command(Input::Hangup).1;
        let Some(Output::Ended(summary)) = outputs.last() else {
            panic!("{outputs:?}")
        };
        assert_eq!(
            summary.timeline,
            Timeline {
                offer_sent_ms: Some(8.0),
                offer_received_ms: None,
                answer_sent_ms: None,
                answer_received_ms: Some(120.0),
                ice_gathering_complete_ms: Some(150.0),
                ice_connected_ms: Some(200.0),
                dtls_connected_ms: Some(210.0),
                connected_ms: Some(220.0),
                first_rtp_ms: Some(230.0),
                tone_detected_ms: Some(300.0),
                first_rtt_ms: Some(400.0),
                first_video_frame_ms: Some(500.0),
                ended_ms: Some(1_000.0),
            }
        );
        assert_eq!((summary.role, summary.call_id.as_str()), (Role::Caller, ID));
        // The callee's clock starts when the offer arrives.
        let mut callee = Phone::new(config(AnswerPolicy::Manual));
        callee.at(1_000).signal(offer(ID, "offer"));
        callee.at(1_250).input(Input::Accept);
        callee.input(Input::PeerCreated);
        callee.input(Input::RemoteDescriptionSet);
        callee.input(Input::LocalDescription {
            sdp: "answer".into(),
            mid: None,
        });
        let timeline = callee.timeline();
        assert_eq!(
            (timeline.offer_received_ms, timeline.answer_sent_ms),
            (Some(0.0), Some(250.0))
        );
        assert_eq!(
            callee.machine.snapshot().unwrap().end,
            EndReason::InProgress
        );
    }

    // Call authentication (rules 19-22).

    use crate::identity::Identity;

    const CALLER_SDP: &str = "v=0\r\na=fingerprint:sha-256 AA:AA\r\n";
    const CALLEE_SDP: &str = "v=0\r\na=fingerprint:sha-256 BB:BB\r\n";
    const RELAY_SDP: &str = "v=0\r\na=fingerprint:sha-256 EE:EE\r\n";

    /// Each side's keys for the other: (the caller's, the callee's).
    fn pair() -> (PeerAuth, PeerAuth) {
        let caller = Identity::from_secret([1u8; 32]);
        let callee = Identity::from_secret([2u8; 32]);
        (
            caller.peer_auth(callee.public_key(), false).unwrap(),
            callee.peer_auth(caller.public_key(), false).unwrap(),
        )
    }

    fn signed_offer(peer: &PeerAuth, sdp: &str) -> CallOffer {
        CallOffer {
            auth: sign(Some(peer), CallAuthRole::Offer, ID, sdp),
            ..offer(ID, sdp)
        }
    }

    fn signed_answer(peer: &PeerAuth, sdp: &str) -> CallAnswer {
        CallAnswer {
            auth: sign(Some(peer), CallAuthRole::Answer, ID, sdp),
            ..answer(ID, sdp)
        }
    }

    fn from(phone: &mut Phone, payload: impl Into<CallPayload>, peer: &PeerAuth) -> Vec<Output> {
        phone.input(Input::SignalFrom {
            payload: payload.into(),
            peer: peer.clone(),
        })
    }

    fn not_authenticated(outputs: &[Output]) -> bool {
        matches!(
            ended(outputs),
            Some(EndReason::MediaNotAuthenticated { .. })
        ) && sent(outputs) == [hangup(ID)]
            && !outputs.iter().any(|o| {
                matches!(
                    o,
                    Output::Do(Action::SetRemoteOffer { .. } | Action::SetRemoteAnswer { .. })
                )
            })
    }

    fn summary(outputs: &[Output]) -> CallSummary {
        match outputs.last() {
            Some(Output::Ended(summary)) => (**summary).clone(),
            other => panic!("not ended: {other:?}"),
        }
    }

    /// A caller to the paired callee whose signed offer (CALLER_SDP) is out.
    fn signed_caller(config: MachineConfig, peer: &PeerAuth) -> (Phone, CallOffer) {
        let mut phone = Phone::new(config);
        phone.input(Input::PlaceCall {
            call_id: ID.into(),
            with_video: false,
            peer: Some(peer.clone()),
        });
        phone.input(Input::PeerCreated);
        let outputs = phone.input(Input::LocalDescription {
            sdp: CALLER_SDP.into(),
            mid: None,
        });
        let [CallPayload::Offer(offer)] = &sent(&outputs)[..] else {
            panic!("an offer: {outputs:?}");
        };
        (phone, offer.clone())
    }

    /// A callee that accepted the caller's signed offer and sent its signed answer.
    fn signed_callee(peer: &PeerAuth, offer: CallOffer) -> (Phone, CallAnswer) {
        let mut phone = Phone::new(config(AnswerPolicy::Accept));
        let outputs = from(&mut phone, offer, peer);
        assert!(ended(&outputs).is_none(), "{outputs:?}");
        phone.input(Input::PeerCreated);
        phone.input(Input::RemoteDescriptionSet);
        let outputs = phone.input(Input::LocalDescription {
            sdp: CALLEE_SDP.into(),
            mid: None,
        });
        let [CallPayload::Answer(answer)] = &sent(&outputs)[..] else {
            panic!("an answer: {outputs:?}");
        };
        (phone, answer.clone())
    }

    #[test]
    fn rule_19_offers_and_answers_to_a_known_peer_carry_auth() {
        let (at_caller, at_callee) = pair();
        let (mut caller, offer) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        let auth = offer.auth.clone().expect("the offer carries auth");
        assert!(auth.verify(
            &at_callee.mac_key,
            CallAuthRole::Offer,
            ID,
            CALLER_SDP,
            &at_callee.peer_key,
            &at_callee.own_key
        ));
        let (_callee, answer) = signed_callee(&at_callee, offer);
        assert!(answer.auth.expect("the answer carries auth").verify(
            &at_caller.mac_key,
            CallAuthRole::Answer,
            ID,
            CALLEE_SDP,
            &at_caller.peer_key,
            &at_caller.own_key
        ));
        // An ICE restart offer is signed too.
        let answer = signed_answer(&at_callee, CALLEE_SDP);
        from(&mut caller, answer, &at_caller);
        caller.input(Input::RemoteDescriptionSet);
        caller.input(Input::RemoteCertificate {
            fingerprint: Some("sha-256 BB:BB".into()),
        });
        let mut caller = connected(caller);
        caller.input(Input::Ice(IceConnection::Disconnected));
        let outputs = caller.input(Input::LocalDescription {
            sdp: CALLER_SDP.into(),
            mid: None,
        });
        assert!(
            matches!(&sent(&outputs)[..], [CallPayload::Offer(o)] if o.auth.is_some()),
            "{outputs:?}"
        );
        // A call with no known peer sends none (`outgoing` asserts the exact offer).
        outgoing(config(AnswerPolicy::Manual));
    }

    #[test]
    fn rule_20_a_tampered_offer_is_refused_before_its_sdp_is_applied() {
        let (at_caller, at_callee) = pair();
        let (_, offer) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        // A relay swapped the fingerprint for its own and kept the caller's auth.
        let tampered = CallOffer {
            sdp: RELAY_SDP.into(),
            ..offer.clone()
        };
        let mut callee = Phone::new(config(AnswerPolicy::Accept));
        let outputs = from(&mut callee, tampered, &at_callee);
        assert!(not_authenticated(&outputs), "{outputs:?}");
        assert!(!outputs
            .iter()
            .any(|o| matches!(o, Output::Do(Action::CreatePeer { .. }))));
        let summary = summary(&outputs);
        assert!(!summary.authenticated);
        assert_eq!(summary.peer_key, Some(at_callee.peer_key_base64()));
        assert_eq!(callee.state(), CallState::Idle);
        // A MAC that was changed, and one under another pair's key.
        let mut bad = offer.clone();
        bad.auth.as_mut().unwrap().mac = "AAAA".into();
        assert!(not_authenticated(&from(
            &mut Phone::new(config(AnswerPolicy::Accept)),
            bad,
            &at_callee
        )));
        let stranger = Identity::from_secret([9u8; 32])
            .peer_auth(at_callee.peer_key, false)
            .unwrap();
        let forged = signed_offer(&stranger, RELAY_SDP);
        assert!(not_authenticated(&from(
            &mut Phone::new(config(AnswerPolicy::Accept)),
            forged,
            &at_callee
        )));
        // The untouched offer goes through.
        let mut callee = Phone::new(config(AnswerPolicy::Accept));
        let outputs = from(&mut callee, offer, &at_callee);
        assert_eq!(ended(&outputs), None);
        assert_eq!(callee.state(), CallState::Incoming);
    }

    #[test]
    fn rule_20_a_tampered_answer_is_refused_by_the_caller() {
        let (at_caller, at_callee) = pair();
        let (mut caller, _) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        let tampered = CallAnswer {
            sdp: RELAY_SDP.into(),
            ..signed_answer(&at_callee, CALLEE_SDP)
        };
        let outputs = from(&mut caller, tampered, &at_caller);
        assert!(not_authenticated(&outputs), "{outputs:?}");
        // With the right answer the call goes on, authenticated.
        let (mut caller, _) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        let outputs = from(
            &mut caller,
            signed_answer(&at_callee, CALLEE_SDP),
            &at_caller,
        );
        assert_eq!(
            outputs,
            [Output::Do(Action::SetRemoteAnswer {
                sdp: CALLEE_SDP.into()
            })]
        );
        assert!(caller.machine.snapshot().unwrap().authenticated);
    }

    #[test]
    fn rule_20_no_auth_is_unauthenticated_unless_required_or_a_downgrade() {
        let (_, at_callee) = pair();
        // A peer without call authentication (Zajel's apps, browsers, aiortc) gets its call.
        let mut callee = Phone::new(config(AnswerPolicy::Accept));
        let outputs = from(&mut callee, offer(ID, CALLER_SDP), &at_callee);
        assert_eq!(ended(&outputs), None);
        assert!(!callee.machine.snapshot().unwrap().authenticated);
        // Refused when authentication is required…
        let required = MachineConfig {
            require_authenticated: true,
            ..config(AnswerPolicy::Accept)
        };
        assert!(not_authenticated(&from(
            &mut Phone::new(required),
            offer(ID, CALLER_SDP),
            &at_callee
        )));
        let outputs = Phone::new(required).input(Input::Signal(offer(ID, CALLER_SDP).into()));
        assert!(not_authenticated(&outputs));
        // …and from a contact that authenticated before.
        let before = PeerAuth {
            authenticated_before: true,
            ..at_callee.clone()
        };
        let outputs = from(
            &mut Phone::new(config(AnswerPolicy::Accept)),
            offer(ID, CALLER_SDP),
            &before,
        );
        assert!(not_authenticated(&outputs));
        // A side with no key for the sender ignores auth (as Zajel's clients do)…
        let signed = signed_offer(&pair().0, CALLER_SDP);
        let mut keyless = Phone::new(config(AnswerPolicy::Accept));
        assert_eq!(
            ended(&keyless.input(Input::Signal(signed.clone().into()))),
            None
        );
        assert!(!keyless.machine.snapshot().unwrap().authenticated);
        // …and cannot meet --require-authenticated.
        let outputs = Phone::new(required).input(Input::Signal(signed.into()));
        assert!(not_authenticated(&outputs));
    }

    #[test]
    fn rule_20_a_renegotiation_without_auth_of_an_authenticated_call_is_refused() {
        let (at_caller, at_callee) = pair();
        let (_, first) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        let (mut callee, _) = signed_callee(&at_callee, first);
        callee.input(Input::RemoteCertificate {
            fingerprint: Some("sha-256 AA:AA".into()),
        });
        let mut callee = connected(callee);
        // A signed restart offer is applied.
        let outputs = from(
            &mut callee,
            signed_offer(&at_callee_signer(), CALLER_SDP),
            &at_callee,
        );
        assert!(
            matches!(&outputs[..], [Output::Do(Action::SetRemoteOffer { .. })]),
            "{outputs:?}"
        );
        callee.input(Input::RemoteDescriptionSet);
        callee.input(Input::LocalDescription {
            sdp: CALLEE_SDP.into(),
            mid: None,
        });
        // One without auth is a downgrade.
        let outputs = from(&mut callee, offer(ID, RELAY_SDP), &at_callee);
        assert!(not_authenticated(&outputs), "{outputs:?}");
    }

    /// The caller's keys (the restart offer's signer).
    fn at_callee_signer() -> PeerAuth {
        pair().0
    }

    #[test]
    fn rule_21_the_dtls_certificate_must_be_the_authenticated_one() {
        let (at_caller, at_callee) = pair();
        let (_, offer) = signed_caller(config(AnswerPolicy::Manual), &at_caller);
        // The certificate the offer's auth covered: the call comes up, authenticated.
        let (mut callee, _) = signed_callee(&at_callee, offer.clone());
        callee.input(Input::RemoteCertificate {
            fingerprint: Some("sha-256 AA:AA".into()),
        });
        let callee = connected(callee);
        assert!(callee.machine.snapshot().unwrap().authenticated);
        // Another certificate (a relay's DTLS peer), or none: refused.
        for presented in [Some("sha-256 EE:EE".to_string()), None] {
            let (mut callee, _) = signed_callee(&at_callee, offer.clone());
            let outputs = callee.input(Input::RemoteCertificate {
                fingerprint: presented,
            });
            assert!(not_authenticated(&outputs), "{outputs:?}");
        }
        // Connected without a certificate check: refused, no media.
        let (mut callee, _) = signed_callee(&at_callee, offer);
        let outputs = callee.input(Input::PeerConnected);
        assert!(not_authenticated(&outputs), "{outputs:?}");
        assert!(!outputs.contains(&Output::Do(Action::StartMedia)));
        // An unauthenticated call is not checked.
        let mut plain = callee_connecting();
        assert_eq!(
            plain.input(Input::RemoteCertificate { fingerprint: None }),
            []
        );
    }

    #[test]
    fn rule_22_local_only_remote_candidates_are_dropped_unless_allowed() {
        let strict = MachineConfig {
            allow_loopback_candidates: false,
            ..config(AnswerPolicy::Manual)
        };
        let mut phone = incoming(strict);
        for address in [
            "127.0.0.1",
            "127.8.9.10",
            "169.254.1.2",
            "0.0.0.0",
            "224.0.0.251",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fe80::1%eth0",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            let text = format!("candidate:1 1 udp 2130706431 {address} 9 typ host");
            assert!(candidate_is_local_only(&text), "{text}");
            assert_eq!(phone.signal(ice(ID, &text)), [], "{text}");
        }
        for address in ["192.0.2.7", "10.0.0.2", "2001:db8::1", "abcd.local"] {
            let text = format!("candidate:1 1 udp 2130706431 {address} 9 typ host");
            assert!(!candidate_is_local_only(&text), "{text}");
            phone.signal(ice(ID, &text));
        }
        assert_eq!(phone.ice().remote_candidates_dropped, 12);
        assert_eq!(phone.ice().remote_candidates, 4);
        // In a remote SDP too.
        let sdp = "v=0\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\na=candidate:2 1 udp 1 192.0.2.7 9 typ host\r\nm=audio 9 UDP 0\r\n";
        let mut callee = Phone::new(MachineConfig {
            answer_policy: AnswerPolicy::Accept,
            ..strict
        });
        callee.signal(offer(ID, sdp));
        assert_eq!(
            callee.input(Input::PeerCreated),
            [Output::Do(Action::SetRemoteOffer {
                sdp: "v=0\r\na=candidate:2 1 udp 1 192.0.2.7 9 typ host\r\nm=audio 9 UDP 0\r\n"
                    .into()
            })]
        );
        // Allowed (loopback tests, the demo): kept.
        let mut open = incoming(config(AnswerPolicy::Manual));
        open.signal(ice(ID, "candidate:1 1 udp 1 127.0.0.1 9 typ host"));
        assert_eq!(open.ice().remote_candidates, 1);
    }
}
