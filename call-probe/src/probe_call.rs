//! `call-probe call`: pair with an answerer through a relay and place one real call.
//!
//! Connects and registers (with the relay's `ice_servers`), sends `pair_request` and waits
//! for `pair_matched`, places the call through the engine (`call_offer` with a UUID v4
//! `callId`, trickled `call_ice`), lets audio flow for the given duration, hangs up with
//! `call_hangup`, and reports the milestones from the start of the run together with the
//! engine's [`CallReport`].
//!
//! The line registers the probe's identity ([`LineOptions::line_keys`]); the answerer's
//! public key comes with `pair_matched`. With [`CallOptions::peer_key`] (`--peer-key`, checked
//! out of band) a different key fails the run before any call is placed
//! ([`CallError::PeerKeyMismatch`]). A call the engine refuses as not authenticated fails the
//! run with [`CallError::NotAuthenticated`]; an authenticated call marks the contact so.
//!
//! With [`CallTarget::Contact`] (`call --contact NAME`) there is no code to pair with: the
//! line registers a fresh code, sends `register_rendezvous` with that contact's points (as
//! Zajel's app does, [`crate::rendezvous`]), and pairs with whoever meets it there — a
//! `pair_request` from the smaller code, accepted on the other side only from the contact's
//! key; the key `pair_matched` hands must be the contact's ([`CallError::PeerKeyMismatch`]
//! otherwise). Not met within [`CallOptions::find_timeout`]: [`CallError::ContactNotFound`].
//! The report says how the contact was found ([`ContactFound`]).
//!
//! [`CallOptions::interrupt`] (Ctrl-C, SIGTERM) stops the run at whatever step it is in: the
//! line is closed cleanly, a call placed or connected is hung up with `call_hangup` first, and
//! the report is filled as far as it got with [`CallError::Interrupted`]
//! (`error_kind` `interrupted`). [`CallOptions::progress`] hears a line when the call connects
//! and when it hangs up.

use std::time::{Duration, Instant};

use discovery_client::identity::{self, Identity};
use serde::Serialize;
use url::Url;
use zajel_client_net::signaling::{ConnectTimings, SessionError};
use zajel_wire::pairing::PairingCode;

use crate::call::{CallEvent, EngineError};
use crate::client::{self, TurnPaths, TurnRouteError, TurnTransport};
use crate::config::CallConfig;
use crate::error::{session_kind, ErrorKind};
use crate::interrupt::{Interrupt, Progress};
use crate::line::{lock_contacts, ContactSearch, LineError, LineEvent, PhoneLine};
use crate::line_options::{LineOptions, StateError};
use crate::report::{CallReport, EndReason};
use crate::selftest::PhoneError;
use crate::table::{list, ms, ms_rows, row};

/// What `call` does.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The relay's WebSocket URL.
    pub server: Url,
    /// Whom to call: a pairing code, or a contact found through rendezvous.
    pub target: CallTarget,
    /// `--contact`: how long the contact may take to show up at rendezvous.
    pub find_timeout: Duration,
    /// How long audio flows once the call is connected.
    pub duration: Duration,
    pub with_video: bool,
    /// Trust, TURN, addresses, tone (440 Hz by default) and timeouts.
    pub line: LineOptions,
    /// The answerer's public key (standard base64), checked out of band: pairing must hand
    /// exactly this key.
    pub peer_key: Option<String>,
    /// Servers discovery verified, as (URL, serverId): a call on one of them first has the
    /// relay prove that key again on the call's own connection (what answers at an address can
    /// change between discovery's check and the call).
    pub proven_servers: Vec<(String, String)>,
    /// `--contact`: the signed fleet as (serverId, endpoint), from discovery's signed
    /// sources: a contact found connected on one of these relays is met there (a meeting
    /// connection, [`crate::rendezvous`]); a match naming any other relay is not dialled.
    pub fleet: Vec<(String, String)>,
    /// Ctrl-C / SIGTERM: hang up and stop (never, by default).
    pub interrupt: Interrupt,
    /// Where to say what the run is doing while it runs (nowhere, by default).
    pub progress: Progress,
    /// Call controls to carry out once connected (`--script`; none by default).
    pub script: crate::script::Script,
}

impl CallOptions {
    /// Defaults for a call to `target` on `server`.
    pub fn new(server: Url, target: PairingCode) -> Self {
        Self::to(server, CallTarget::Code(target))
    }

    /// Defaults for a call to the contact `name`, found through rendezvous on `server`.
    pub fn to_contact(server: Url, name: &str) -> Self {
        Self::to(server, CallTarget::Contact(name.to_string()))
    }

    fn to(server: Url, target: CallTarget) -> Self {
        Self {
            server,
            target,
            find_timeout: DEFAULT_FIND_TIMEOUT,
            duration: Duration::from_secs(3),
            with_video: false,
            line: LineOptions::new(440.0),
            peer_key: None,
            proven_servers: Vec::new(),
            fleet: Vec::new(),
            interrupt: Interrupt::never(),
            progress: Progress::default(),
            script: crate::script::Script::default(),
        }
    }
}

/// How long `call --contact` waits for the contact at rendezvous unless told
/// (`--find-timeout`): the contact's `answer` re-sends its points 5 s after connecting, so a
/// contact already online matches at once.
pub const DEFAULT_FIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Whom `call` calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallTarget {
    /// The answerer's pairing code.
    Code(PairingCode),
    /// A contact (by name in `contacts.json`), found through rendezvous.
    Contact(String),
}

/// How `call --contact` found the contact.
#[derive(Debug, Clone, Serialize)]
pub struct ContactFound {
    /// The contact's name and key.
    pub contact: String,
    pub key: String,
    /// `rendezvous`.
    pub how: &'static str,
    /// The relay whose rendezvous reply named the contact (ours, or a redirect's endpoint).
    pub relay: String,
    /// Whether that was a redirect's relay rather than our own.
    pub via_redirect: bool,
    /// The contact's pairing code in this run.
    pub peer_code: String,
    /// Whether we sent the `pair_request` (our code was the smaller).
    pub we_requested: bool,
    /// From registration (signaling ready) to the live match, and to `pair_matched`.
    pub match_ms: f64,
    pub paired_ms: f64,
}

/// Milestones in ms from the start of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Milestones {
    /// Connected and registered (with ICE servers).
    pub signaling_ready_ms: Option<f64>,
    pub pair_matched_ms: Option<f64>,
    pub call_placed_ms: Option<f64>,
    pub answer_received_ms: Option<f64>,
    pub ice_connected_ms: Option<f64>,
    pub dtls_connected_ms: Option<f64>,
    pub first_rtp_ms: Option<f64>,
    pub tone_detected_ms: Option<f64>,
    /// With `--video`: the first video frame decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_video_frame_ms: Option<f64>,
    pub hangup_ms: Option<f64>,
}

/// Why a `call` run failed (its Display is the report's `error`).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Contact(#[from] crate::contacts::ContactsError),
    /// `seconds`: the time budget.
    #[error("the contact {name:?} did not show up at rendezvous within {seconds:.0} s (is its `call-probe answer` running on a relay that meets ours?)")]
    ContactNotFound { name: String, seconds: f64 },
    #[error("pairing handed the public key {paired}, not the pinned {pinned}")]
    PeerKeyMismatch { pinned: String, paired: String },
    /// `detail`: what the relay proved (or did not) instead.
    #[error("the relay is not the server discovery verified ({expected}): {detail}")]
    IdentityMismatch { expected: String, detail: String },
    /// `detail`: why the engine refused the call.
    #[error("media not authenticated: {detail}")]
    NotAuthenticated { detail: String },
    #[error("signaling: {0}")]
    Signaling(#[source] SessionError),
    #[error(transparent)]
    Turn(#[from] TurnRouteError),
    #[error("--relay-only needs a TURN server for {0:?}, and the relay handed out none")]
    NoTurnServer(TurnTransport),
    #[error(transparent)]
    Pairing(#[from] LineError),
    #[error("placing the call: {0}")]
    Place(#[source] EngineError),
    #[error(transparent)]
    Phone(#[from] PhoneError),
    /// `end`: the call's end as JSON.
    #[error("the call ended before media flowed: {end}")]
    EndedEarly { end: String },
    #[error("audio did not flow both ways")]
    OneWayAudio,
    #[error("video did not flow both ways (frames decoded on each side)")]
    OneWayVideo,
    /// `signal`: what stopped the run (`SIGINT`, `SIGTERM`).
    #[error("interrupted by {signal}: hung up and stopped")]
    Interrupted { signal: &'static str },
}

impl CallError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::State(error) => error.kind(),
            Self::Contact(error) => error.kind(),
            Self::ContactNotFound { .. } => ErrorKind::ContactNotFound,
            Self::PeerKeyMismatch { .. } => ErrorKind::PeerKeyMismatch,
            Self::IdentityMismatch { .. } => ErrorKind::IdentityMismatch,
            Self::NotAuthenticated { .. } => ErrorKind::MediaNotAuthenticated,
            Self::Signaling(error) => session_kind(error),
            Self::Turn(error) => error.kind(),
            Self::NoTurnServer(_) => ErrorKind::NoTurnServer,
            Self::Pairing(error) => error.kind(),
            Self::Place(_) => ErrorKind::PlaceCall,
            Self::Phone(error) => error.kind(),
            Self::EndedEarly { .. } => ErrorKind::CallEndedEarly,
            Self::OneWayAudio => ErrorKind::OneWayAudio,
            Self::OneWayVideo => ErrorKind::OneWayVideo,
            Self::Interrupted { .. } => ErrorKind::Interrupted,
        }
    }
}

/// Everything `call` learnt.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCallReport {
    /// The relay used.
    pub server: String,
    pub server_id: Option<String>,
    /// The serverId the relay proved on the call's own connection, when discovery had
    /// verified it (`None`: not asked).
    pub server_proven: Option<String>,
    pub own_code: Option<String>,
    pub peer_code: String,
    /// Our public key (standard base64), as registered.
    pub own_key: Option<String>,
    /// The answerer's public key as pairing handed it.
    pub peer_key: Option<String>,
    /// The answerer's call authentication verified and its DTLS certificate matched.
    pub authenticated: bool,
    /// Connect step timings (TCP, TLS, upgrade, greeting).
    pub signaling: Option<ConnectTimings>,
    /// ICE server URLs the relay handed out (credentials not shown).
    pub ice_servers: Vec<String>,
    pub relay_only: bool,
    /// The TURN transports allowed (`--turn-transport`).
    pub turn_transport: TurnTransport,
    /// How our media reached TURN, when ICE selected one of our relay candidates: `tcp` or
    /// `tls` here on a network that blocks UDP is the fallback at work.
    pub relayed_media: Option<TurnTransport>,
    /// The TURN transports that gave us a relay candidate (an allocation).
    pub relay_candidates: Vec<TurnTransport>,
    /// TURN transports the call offered ICE that gave no relay candidate: they did not get
    /// through (on a network that blocks UDP: `udp`).
    pub turn_without_allocation: Vec<TurnTransport>,
    pub milestones: Milestones,
    /// `call --contact`: how the contact was found.
    pub found: Option<ContactFound>,
    /// The tone heard from the peer (Hz), if any.
    pub heard_hz: Option<f64>,
    /// Audio flowed both ways: we sent and received RTP and heard a tone.
    pub media_both_ways: bool,
    /// With `--video` (and the `video` feature): video flowed both ways — frames sent, and
    /// frames received, decoded and their pattern read (see [`video_flowed_both_ways`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_both_ways: Option<bool>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// What failed, machine-readable (absent when nothing did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// The engine's report of the call.
    pub call: Option<CallReport>,
}

impl ProbeCallReport {
    /// The report as a table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        row(&mut out, "server", &self.server);
        if let Some(id) = &self.server_id {
            row(&mut out, "server id", id);
        }
        if let Some(id) = &self.server_proven {
            row(
                &mut out,
                "server proven",
                format!("{id} (again, on this connection)"),
            );
        }
        row(
            &mut out,
            "authenticated",
            format!(
                "{} (peer key {})",
                if self.authenticated { "yes" } else { "no" },
                self.peer_key.as_deref().unwrap_or("-")
            ),
        );
        row(
            &mut out,
            "codes",
            format!(
                "{} -> {}",
                self.own_code.as_deref().unwrap_or("-"),
                self.peer_code
            ),
        );
        if let Some(found) = &self.found {
            row(
                &mut out,
                "contact",
                format!(
                    "{} found by {} on {}{} after {:.0} ms, paired after {:.0} ms ({} sent pair_request)",
                    found.contact,
                    found.how,
                    found.relay,
                    if found.via_redirect { " (a redirect)" } else { "" },
                    found.match_ms,
                    found.paired_ms,
                    if found.we_requested { "we" } else { "it" }
                ),
            );
        }
        if let Some(t) = &self.signaling {
            row(
                &mut out,
                "signaling connect",
                format!(
                    "tcp {:.1} ms, tls {}, upgrade {:.1} ms, greeting {:.1} ms",
                    t.tcp_connect.as_secs_f64() * 1000.0,
                    ms(t.tls_handshake.map(|d| d.as_secs_f64() * 1000.0)),
                    t.websocket_upgrade.as_secs_f64() * 1000.0,
                    t.greeting.as_secs_f64() * 1000.0
                ),
            );
        }
        row(&mut out, "ice servers", list(&self.ice_servers));
        row(
            &mut out,
            "policy",
            format!(
                "{}, TURN over {}",
                if self.relay_only { "relay only" } else { "all" },
                match self.turn_transport {
                    TurnTransport::Auto => "any of udp/tcp/tls".to_string(),
                    other => format!("{other:?}").to_lowercase(),
                }
            ),
        );
        let lower = |t: &TurnTransport| format!("{t:?}").to_lowercase();
        row(
            &mut out,
            "relay candidates",
            if self.relay_candidates.is_empty() {
                "none".to_string()
            } else {
                let over: Vec<String> = self.relay_candidates.iter().map(lower).collect();
                format!("over {}", over.join(", "))
            },
        );
        if !self.turn_without_allocation.is_empty() {
            let missing: Vec<String> = self.turn_without_allocation.iter().map(lower).collect();
            row(
                &mut out,
                "no allocation over",
                format!("{} (blocked?)", missing.join(", ")),
            );
        }
        if let Some(transport) = &self.relayed_media {
            row(
                &mut out,
                "media relayed",
                format!("through TURN over {}", lower(transport)),
            );
        }
        let m = &self.milestones;
        ms_rows(
            &mut out,
            [
                ("signaling ready", m.signaling_ready_ms),
                ("pair matched", m.pair_matched_ms),
                ("call placed", m.call_placed_ms),
                ("answer received", m.answer_received_ms),
                ("ICE connected", m.ice_connected_ms),
                ("DTLS connected", m.dtls_connected_ms),
                ("first RTP", m.first_rtp_ms),
                ("tone detected", m.tone_detected_ms),
                ("hung up", m.hangup_ms),
            ],
        );
        row(
            &mut out,
            "media both ways",
            format!(
                "{}{}",
                if self.media_both_ways { "yes" } else { "no" },
                self.heard_hz
                    .map_or(String::new(), |hz| format!(" (heard {hz:.0} Hz)"))
            ),
        );
        if let Some(video) = self.video_both_ways {
            row(
                &mut out,
                "video both ways",
                if video { "yes" } else { "no" }.to_string(),
            );
        }
        if let Some(error) = &self.error {
            row(&mut out, "error", error);
        }
        if let Some(call) = &self.call {
            out.push_str("-- call --\n");
            out.push_str(&call.to_table());
        }
        out
    }
}

/// A server a `call` left, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTried {
    pub server: String,
    pub error_kind: Option<ErrorKind>,
}

/// Whether a run that failed so should try the next server: the server (or something
/// between us and the answerer on it) failed call authentication or handed another key.
pub fn should_move_on(report: &ProbeCallReport) -> bool {
    matches!(
        report.error_kind,
        Some(
            ErrorKind::MediaNotAuthenticated
                | ErrorKind::PeerKeyMismatch
                | ErrorKind::IdentityMismatch
        )
    )
}

impl CallOptions {
    /// The serverId discovery verified for `server`, if any.
    pub fn proven_server_for(&self, server: &Url) -> Option<&str> {
        let wanted = zajel_wire::endpoint::signaling_url(server.as_str()).ok();
        self.proven_servers.iter().find_map(|(url, server_id)| {
            let same = match (&wanted, zajel_wire::endpoint::signaling_url(url)) {
                (Some(wanted), Ok(url)) => *wanted == url,
                _ => url == server.as_str(),
            };
            same.then_some(server_id.as_str())
        })
    }
}

/// Has the relay on `registered`'s connection prove `expected` again (the identity rules of
/// discovery, `discovery_client::identity::judge`, with the entry's key and the greeting's
/// serverId); the proven serverId, or why not.
async fn reprove(
    registered: &mut client::Registered,
    server: &Url,
    expected: &str,
    step: Duration,
) -> Result<String, CallError> {
    let answer = registered
        .session
        .prove_identity(step)
        .await
        .map_err(CallError::Signaling)?;
    let check = crate::check::identity_check(answer);
    match identity::judge(
        server.as_str(),
        Some(expected),
        Some(&registered.server_id),
        &check,
    ) {
        Identity::Proven { server_id } => Ok(server_id),
        Identity::Learnt { server_id } => Ok(server_id),
        Identity::Unproven(why) => Err(CallError::IdentityMismatch {
            expected: expected.to_string(),
            detail: format!("it proved no key this time ({why})"),
        }),
        Identity::Mismatch(why) => Err(CallError::IdentityMismatch {
            expected: expected.to_string(),
            detail: why,
        }),
    }
}

/// Runs the call on each of `servers` in turn (pairing again on each) while a run fails
/// call authentication ([`should_move_on`]), up to all of them. Returns the last run's report
/// (the successful one, or the last failure) and the servers left before it.
pub async fn run_call_moving_on(
    options: &CallOptions,
    servers: &[Url],
) -> (ProbeCallReport, Vec<ServerTried>) {
    let mut tried = Vec::new();
    let mut options = options.clone();
    let mut servers = servers.iter().peekable();
    if servers.peek().is_none() {
        return (run_call(&options).await, tried);
    }
    loop {
        let Some(server) = servers.next() else {
            unreachable!("the loop returns at the last server");
        };
        options.server = server.clone();
        let report = run_call(&options).await;
        if servers.peek().is_none() || !should_move_on(&report) {
            return (report, tried);
        }
        tracing::warn!(server = %server, error = ?report.error, "moving on to the next server");
        tried.push(ServerTried {
            server: server.to_string(),
            error_kind: report.error_kind,
        });
    }
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Whether a call report shows audio both ways (RTP sent and received, a tone heard).
pub fn media_flowed_both_ways(report: &CallReport) -> bool {
    report.rtp.packets_sent > 0 && report.rtp.packets_received > 0 && report.tone.detected.is_some()
}

/// Whether a call report shows video both ways: frames sent, and frames received, decoded and
/// their pattern read.
pub fn video_flowed_both_ways(report: &CallReport) -> bool {
    report
        .video
        .as_ref()
        .is_some_and(crate::video::VideoReport::both_ways)
}

/// Runs one call; the report says how far it got (`error` when it failed).
pub async fn run_call(options: &CallOptions) -> ProbeCallReport {
    let start = Instant::now();
    let mut report = ProbeCallReport {
        server: options.server.to_string(),
        server_id: None,
        server_proven: None,
        own_code: None,
        peer_code: match &options.target {
            CallTarget::Code(code) => code.as_str().to_string(),
            CallTarget::Contact(_) => String::new(),
        },
        own_key: None,
        peer_key: None,
        authenticated: false,
        signaling: None,
        ice_servers: Vec::new(),
        relay_only: options.line.relay_only,
        turn_transport: options.line.turn_transport,
        relayed_media: None,
        relay_candidates: Vec::new(),
        turn_without_allocation: Vec::new(),
        milestones: Milestones::default(),
        found: None,
        heard_hz: None,
        media_both_ways: false,
        video_both_ways: None,
        error: None,
        error_kind: None,
        call: None,
    };
    if let Err(error) = call_steps(options, start, &mut report).await {
        report.error = Some(error.to_string());
        report.error_kind = Some(error.kind());
    }
    report
}

async fn call_steps(
    options: &CallOptions,
    start: Instant,
    report: &mut ProbeCallReport,
) -> Result<(), CallError> {
    let step = options.line.step_timeout;
    let mut interrupt = options.interrupt.clone();
    let keys = options.line.line_keys()?;
    report.own_key = Some(keys.identity.public_base64());
    let contact = match &options.target {
        CallTarget::Code(_) => None,
        CallTarget::Contact(name) => Some(lock_contacts(&keys.contacts).named(name)?.clone()),
    };
    let mut registered = tokio::select! {
        registered = options.line.register(&options.server, None, &keys.identity) => {
            registered.map_err(CallError::Signaling)?
        }
        signal = interrupt.fired() => return Err(CallError::Interrupted { signal }),
    };
    report.server_id = Some(registered.server_id.clone());
    if let Some(expected) = options.proven_server_for(&options.server) {
        report.server_proven = Some(tokio::select! {
            proven = reprove(&mut registered, &options.server, expected, step) => proven?,
            signal = interrupt.fired() => return Err(CallError::Interrupted { signal }),
        });
    }
    report.milestones.signaling_ready_ms = Some(ms_since(start));
    report.own_code = Some(registered.code.as_str().to_string());
    report.signaling = Some(registered.timings.clone());
    report.ice_servers = client::describe_ice_servers(&registered.ice_servers);

    // A relay that sends `ice_servers` at registration (before relay-lite 19) gave them
    // already; relay-lite gives TURN credentials only once paired (below).
    let (ice_servers, mut turn_paths) = options
        .line
        .engine_ice_servers(&registered.ice_servers)
        .await?;
    let from_registration = ice_servers.clone();
    let config = CallConfig {
        allow_video: options.with_video,
        ..options.line.call_config(ice_servers)
    };
    let live = config.live_ice_servers.clone();
    let search = contact.as_ref().map(|contact| {
        ContactSearch::new(
            keys.identity.clone(),
            registered.code,
            vec![contact.clone()],
            options.line.trust.clone(),
            step,
        )
        .with_fleet(options.fleet.clone())
    });
    let mut line = PhoneLine::start_searching(
        "caller",
        registered.session,
        registered.code,
        config,
        false,
        Some(keys.clone()),
        None,
        search,
    );
    let paired = tokio::select! {
        paired = async {
            match (&options.target, &contact) {
                (CallTarget::Contact(_), Some(contact)) => {
                    find_contact(&mut line, contact, options, start, report).await
                }
                (CallTarget::Code(code), _) => Ok(line.pair_with(*code, step).await.map(|()| *code)?),
                (CallTarget::Contact(_), None) => unreachable!("contact looked up above"),
            }
        } => Ok(paired),
        signal = interrupt.fired() => Err(signal),
    };
    let target = match paired {
        Ok(Ok(target)) => target,
        Ok(Err(error)) => {
            line.close().await;
            return Err(error);
        }
        Err(signal) => {
            line.close().await;
            return Err(CallError::Interrupted { signal });
        }
    };
    report.milestones.pair_matched_ms = Some(ms_since(start));
    // Paired: relay-lite's credentials come now; the call uses them.
    let offered = match line.ice_servers_after_pairing(step).await {
        Ok(offered) => offered,
        Err(error) => {
            line.close().await;
            return Err(error.into());
        }
    };
    if !offered.is_empty() {
        report.ice_servers = client::describe_ice_servers(&offered);
        match options.line.engine_ice_servers(&offered).await {
            Ok((servers, paths)) => {
                live.set(servers);
                turn_paths = paths;
            }
            Err(error) => {
                line.close().await;
                return Err(error.into());
            }
        }
    }
    // Nothing after pairing: the servers from registration, if any.
    let current = live.get().unwrap_or(from_registration);
    if options.line.relay_only
        && !current
            .iter()
            .any(|s| s.urls.iter().any(|u| u.starts_with("turn")))
    {
        line.close().await;
        return Err(CallError::NoTurnServer(options.line.turn_transport));
    }
    let paired_key = line.paired_key(target).unwrap_or_default();
    report.peer_key = Some(paired_key.clone());
    if let Some(pinned) = &options.peer_key {
        if pinned.trim() != paired_key {
            line.close().await;
            return Err(CallError::PeerKeyMismatch {
                pinned: pinned.trim().to_string(),
                paired: paired_key,
            });
        }
    }

    let placed_at = ms_since(start);
    let placed = match line.peer_auth(target) {
        Some(peer) => {
            line.phone
                .engine
                .place_call_to(options.with_video, peer)
                .await
        }
        None => line.phone.engine.place_call(options.with_video).await,
    };
    placed.map_err(CallError::Place)?;
    report.milestones.call_placed_ms = Some(placed_at);
    let phone = &mut line.phone;
    // Connected, or the end of the call (rejected, timed out…), or an interrupt while ringing.
    let mut interrupted = None;
    let connected = tokio::select! {
        connected = phone.wait_for(
            options.line.timeouts.ringing + step,
            "connection",
            |event| match event {
                CallEvent::FirstRtp { .. } => Some(true),
                CallEvent::Ended(_) => Some(false),
                _ => None,
            },
        ) => connected,
        signal = interrupt.fired() => {
            interrupted = Some(signal);
            Ok(false)
        }
    };
    if let Some(signal) = interrupted {
        options.progress.say(&format!("{signal}: hanging up"));
        let _ = phone.engine.hangup().await;
        report.milestones.hangup_ms = Some(ms_since(start));
    }
    let connected = match connected {
        Ok(connected) => connected,
        Err(error) => {
            let _ = phone.engine.hangup().await;
            report.call = phone.ended(step).await.ok();
            fill_from_call(report, placed_at, &turn_paths);
            return Err(error.into());
        }
    };
    if connected {
        options.progress.say(&format!(
            "connected; audio for {:.1} s, then hangup (Ctrl-C hangs up now)",
            options.duration.as_secs_f64()
        ));
        // Let audio flow for the duration (this is the workload, not a synchronisation).
        let media_until = tokio::time::Instant::now() + options.duration;
        let script = (!options.script.is_empty())
            .then(|| tokio::spawn(options.script.clone().run(phone.engine.clone())));
        let media = async {
            let heard = phone
                .wait_for(
                    options.duration.max(step),
                    "the peer's tone",
                    |event| match event {
                        CallEvent::ToneDetected { reading, .. } => Some(Some(reading.frequency_hz)),
                        CallEvent::Ended(_) => Some(None),
                        _ => None,
                    },
                )
                .await
                .unwrap_or(None);
            report.heard_hz = heard;
            // The rest of the media time, unless the peer hangs up first.
            let rest = media_until.saturating_duration_since(tokio::time::Instant::now());
            let _ = phone
                .wait_for(rest, "the end of the media time", |event| {
                    matches!(event, CallEvent::Ended(_)).then_some(())
                })
                .await;
        };
        tokio::select! {
            () = media => {}
            signal = interrupt.fired() => {
                interrupted = Some(signal);
                options.progress.say(&format!("{signal}: hanging up"));
            }
        }
        if let Some(script) = script {
            script.abort();
        }
        let hangup_at = ms_since(start);
        // NoCall when the peer hung up first.
        if phone.engine.hangup().await.is_ok() {
            report.milestones.hangup_ms = Some(hangup_at);
        }
    }
    let call = phone.ended(step).await?;
    // The hang-up is queued: send it before the connection goes (dropping would cut it).
    line.close().await;
    report.call = Some(call);
    fill_from_call(report, placed_at, &turn_paths);
    if let Some(call) = &report.call {
        report.authenticated = call.authenticated;
        if call.authenticated {
            let now = zajel_client_net::now_ms();
            if let Err(error) = lock_contacts(&keys.contacts).authenticated(&paired_key, now) {
                tracing::warn!(%error, "the contact was not saved");
            }
        }
        if let EndReason::MediaNotAuthenticated { detail } = &call.end {
            return Err(CallError::NotAuthenticated {
                detail: detail.clone(),
            });
        }
    }
    if let Some(signal) = interrupted {
        return Err(CallError::Interrupted { signal });
    }
    if !connected {
        return Err(CallError::EndedEarly {
            end: report
                .call
                .as_ref()
                .map(|c| serde_json::to_string(&c.end).unwrap_or_default())
                .unwrap_or_default(),
        });
    }
    if !report.media_both_ways {
        return Err(CallError::OneWayAudio);
    }
    if report.video_both_ways == Some(false) {
        return Err(CallError::OneWayVideo);
    }
    Ok(())
}

/// `call --contact`: waits for rendezvous to pair the line with `contact` (our
/// `pair_request` when our code is the smaller, else its, accepted for its key only). The
/// pairing must hand the contact's key. Returns the contact's code in this run.
async fn find_contact(
    line: &mut PhoneLine,
    contact: &crate::contacts::Contact,
    options: &CallOptions,
    start: Instant,
    report: &mut ProbeCallReport,
) -> Result<PairingCode, CallError> {
    let registered_ms = report.milestones.signaling_ready_ms.unwrap_or_default();
    let limit = options.find_timeout;
    let mut matched: Option<(String, String, bool, f64)> = None;
    let outcome = line
        .wait_for(limit, "the contact at rendezvous", |event| match event {
            LineEvent::ContactMatched {
                peer_code,
                relay,
                we_request,
            } => {
                matched = Some((
                    peer_code.clone(),
                    relay.clone(),
                    *we_request,
                    ms_since(start),
                ));
                None
            }
            LineEvent::PairMatched {
                peer_code,
                peer_public_key,
                ..
            } => Some(Ok((peer_code.clone(), peer_public_key.clone()))),
            LineEvent::PairRejected { .. } => Some(Err(LineError::PairRejected)),
            LineEvent::PairError { error } => Some(Err(LineError::PairRefused(error.clone()))),
            LineEvent::PairTimeout { .. } => Some(Err(LineError::PairTimeout)),
            LineEvent::Closed => Some(Err(LineError::Closed)),
            _ => None,
        })
        .await;
    let (peer_code, peer_key) = match outcome {
        Ok(paired) => paired?,
        Err(LineError::TimedOut { .. }) => {
            return Err(CallError::ContactNotFound {
                name: contact.name.clone(),
                seconds: limit.as_secs_f64(),
            })
        }
        Err(error) => return Err(error.into()),
    };
    report.peer_code = peer_code.clone();
    if peer_key != contact.key {
        return Err(CallError::PeerKeyMismatch {
            pinned: contact.key.clone(),
            paired: peer_key,
        });
    }
    let paired_at = ms_since(start);
    let (relay, we_requested, match_at) = match matched {
        Some((code, relay, we, at)) if code == peer_code => (relay, we, at),
        _ => (options.server.to_string(), false, paired_at),
    };
    report.found = Some(ContactFound {
        contact: contact.name.clone(),
        key: contact.key.clone(),
        how: "rendezvous",
        via_redirect: relay != options.server.as_str(),
        relay,
        peer_code: peer_code.clone(),
        we_requested,
        match_ms: match_at - registered_ms,
        paired_ms: paired_at - registered_ms,
    });
    PairingCode::parse(&peer_code).map_err(|_| {
        CallError::Pairing(LineError::PairRefused(
            "the contact's code is no pairing code".into(),
        ))
    })
}

/// Copies the engine's milestones (ms from `place_call`) into the run's timeline.
fn fill_from_call(report: &mut ProbeCallReport, placed_at: f64, turn_paths: &TurnPaths) {
    if let Some(call) = &mut report.call {
        turn_paths.complete(call);
    }
    let Some(call) = &report.call else { return };
    report.relayed_media = turn_paths.relayed_media(call);
    (report.relay_candidates, report.turn_without_allocation) = turn_paths.allocations(call);
    let shift = |v: Option<f64>| v.map(|v| v + placed_at);
    let t = &call.timeline;
    let m = &mut report.milestones;
    m.answer_received_ms = shift(t.answer_received_ms);
    m.ice_connected_ms = shift(t.ice_connected_ms);
    m.dtls_connected_ms = shift(t.dtls_connected_ms);
    m.first_rtp_ms = shift(t.first_rtp_ms);
    m.tone_detected_ms = shift(t.tone_detected_ms);
    m.first_video_frame_ms = shift(t.first_video_frame_ms);
    if report.heard_hz.is_none() {
        report.heard_hz = call.tone.detected.map(|d| d.frequency_hz);
    }
    report.media_both_ways = media_flowed_both_ways(call);
    if call.with_video && cfg!(feature = "video") {
        report.video_both_ways = Some(video_flowed_both_ways(call));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ws://` URL on a loopback port nothing listens on (bound, then closed).
    fn closed_relay() -> Url {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        url
    }

    #[tokio::test]
    async fn a_refused_relay_is_a_signaling_tcp_error_beside_its_message() {
        let mut options = CallOptions::new(closed_relay(), PairingCode::parse("ABC234").unwrap());
        options.line.step_timeout = Duration::from_secs(5);
        let report = run_call(&options).await;
        assert_eq!(report.error_kind, Some(ErrorKind::SignalingTcp));
        let error = report.error.as_deref().unwrap();
        assert!(
            error.starts_with("signaling: TCP connection failed: "),
            "{error}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["error"], error);
        assert_eq!(json["error_kind"], "signaling_tcp");
    }

    #[test]
    fn a_report_without_an_error_has_no_error_kind() {
        let report = ProbeCallReport {
            server: "ws://127.0.0.1:1/".into(),
            server_id: None,
            server_proven: None,
            own_code: None,
            peer_code: "ABC234".into(),
            own_key: None,
            peer_key: None,
            authenticated: false,
            signaling: None,
            ice_servers: Vec::new(),
            relay_only: false,
            turn_transport: TurnTransport::Auto,
            relayed_media: None,
            relay_candidates: Vec::new(),
            turn_without_allocation: Vec::new(),
            milestones: Milestones::default(),
            found: None,
            heard_hz: None,
            media_both_ways: true,
            video_both_ways: None,
            error: None,
            error_kind: None,
            call: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["error"].is_null());
        assert!(json.get("error_kind").is_none(), "{json}");
    }

    #[test]
    fn call_errors_keep_their_messages() {
        let error = CallError::NoTurnServer(TurnTransport::Tcp);
        assert_eq!(
            error.to_string(),
            "--relay-only needs a TURN server for Tcp, and the relay handed out none"
        );
        assert_eq!(error.kind(), ErrorKind::NoTurnServer);
        assert_eq!(
            CallError::OneWayAudio.to_string(),
            "audio did not flow both ways"
        );
        let error = CallError::from(LineError::PairRejected);
        assert_eq!(
            (error.to_string().as_str(), error.kind()),
            ("the peer rejected pairing", ErrorKind::PairRejected)
        );
    }
}
