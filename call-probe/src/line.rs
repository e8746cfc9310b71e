//! A phone line: one registered [`SignalingSession`] on a relay wired to one [`CallEngine`].
//!
//! [`PhoneLine::start`] moves the session into a task that
//! - answers `pair_incoming` (accepts when told to),
//! - reports pairing outcomes as [`LineEvent`]s,
//! - remembers the codes it paired with in this session (`pair_matched`) and their public
//!   keys, and hands a valid incoming `call_*` payload to the engine only when it comes from
//!   one of them (with that peer's keys, [`PeerAuth`], when the line has an identity:
//!   [`LineKeys`]); `call_*` from any other code, or on a line with an identity from a peer
//!   paired under a key that is no usable X25519 key, is ignored (logged without contents),
//!   remembering which peer code each `callId` came from,
//! - records each paired peer in the contacts (first/last seen),
//! - sends every payload the engine produces as a `call_*` message in the envelope form, to the
//!   peer of its `callId` (or, for a new call, to the last paired peer),
//! - turns the relay's `ice_servers` (relay-lite sends them once the line is paired, then
//!   renewed) into the engine's servers before it reads the next frame ([`IceUpdates`]), so a
//!   `call_offer` that follows is answered with them.
//!
//! With a [`ContactSearch`] the line also looks for contacts through rendezvous
//! ([`crate::rendezvous`]): it sends `register_rendezvous` at start and once more 5 s later,
//! sends `pair_request` to a live match when its code is the smaller, follows `redirects` on
//! second connections, opens *meeting connections* to the relays of the signed fleet a match
//! names (the relay proves its serverId first), accepts `pair_incoming` from the contacts' keys
//! only (unless it accepts every pair) on whichever connection it arrives and answers there, and
//! reports each match as [`LineEvent::ContactMatched`]. Each paired peer's `call_*` messages (and
//! the `ping` that collects `ice_servers`) go on the connection it was paired on, so a whole call
//! can run on a side connection; side connections close with the line, queued frames first.
//!
//! Callers use [`PhoneLine::pair_with`] then the engine; answerers wait for calls.
//!
//! A line ends gracefully: when it is closed ([`PhoneLine::close`]) or dropped, the task sends
//! every payload the engine has already produced (the `call_hangup` of a call that just ended)
//! and closes the WebSocket, within [`CLOSE_WAIT`], instead of cutting the connection with
//! frames still queued.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use zajel_client_net::signaling::{SignalingSession, TrustAnchors};
use zajel_wire::call::CallPayload;
use zajel_wire::pairing::{decode_x25519_public_key, PairingCode};
use zajel_wire::rendezvous::{RelayReply, RelayRequest};
use zajel_wire::signaling::{
    ClientMessage, IceServer as WireIceServer, ServerMessage, UnknownMessage,
};

use crate::call::{CallEngine, Inbound};
use crate::config::{CallConfig, IceServer, LiveIceServers};
use crate::contacts::{Contact, Contacts};
use crate::error::ErrorKind;
use crate::identity::{Identity, PeerAuth};
use crate::rendezvous::{registration, ContactRendezvous, RendezvousAction, Via};
use crate::selftest::Phone;

/// The identity a line registered with and the contacts it records peers in.
#[derive(Debug, Clone)]
pub struct LineKeys {
    pub identity: Identity,
    pub contacts: Arc<Mutex<Contacts>>,
    /// The name a new contact is saved under (`--name`); `None`: its pairing code.
    pub new_contact_name: Option<String>,
}

impl LineKeys {
    /// The keys for a call with the peer whose public key is `peer_key` (standard base64),
    /// or `None` when it is not a usable X25519 key.
    pub fn peer_auth(&self, peer_key: &str) -> Option<PeerAuth> {
        let key = decode_x25519_public_key(peer_key)?;
        let before = lock_contacts(&self.contacts).authenticated_before(peer_key);
        self.identity.peer_auth(key, before).ok()
    }
}

/// The contacts, even if a holder panicked.
pub fn lock_contacts(contacts: &Mutex<Contacts>) -> std::sync::MutexGuard<'_, Contacts> {
    contacts.lock().unwrap_or_else(|e| e.into_inner())
}

/// The codes a line paired with in this session, with the public key each was paired under.
type PairedCodes = Arc<Mutex<HashMap<String, String>>>;

/// How long a closing line may take to send what is queued and close its WebSocket.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Why pairing, or a wait on the line, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The routing task is gone (a command could not be sent).
    #[error("the relay connection is gone")]
    Gone,
    #[error("the peer rejected pairing")]
    PairRejected,
    #[error("pairing refused: {0}")]
    PairRefused(String),
    #[error("the pair request timed out")]
    PairTimeout,
    #[error("relay error: {0}")]
    Relay(String),
    #[error("the relay closed the connection")]
    Closed,
    #[error("the line stopped before {0}")]
    Stopped(String),
    #[error("no {what} within {limit:?}")]
    TimedOut { what: String, limit: Duration },
}

impl LineError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Gone | Self::Closed | Self::Stopped(_) => ErrorKind::RelayClosed,
            Self::PairRejected => ErrorKind::PairRejected,
            Self::PairRefused(_) => ErrorKind::PairRefused,
            Self::PairTimeout => ErrorKind::PairTimeout,
            Self::Relay(_) => ErrorKind::RelayError,
            Self::TimedOut { .. } => ErrorKind::Timeout,
        }
    }
}

/// What happened on the signaling side of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// Someone asked to pair with us.
    PairIncoming {
        from_code: String,
    },
    /// Paired (both sides get it): calls without a known peer go here.
    PairMatched {
        peer_code: String,
        /// The peer's public key as the relay handed it (standard base64).
        peer_public_key: String,
        is_initiator: bool,
    },
    PairRejected {
        peer_code: String,
    },
    PairError {
        error: String,
    },
    PairTimeout {
        peer_code: String,
    },
    /// The relay refused something (`error`).
    RelayError {
        message: String,
    },
    /// The relay handed out STUN/TURN servers (`ice_servers`), already set for the engine
    /// when the line has [`IceUpdates`].
    IceServers {
        servers: Vec<WireIceServer>,
    },
    /// The relay answered a `ping`.
    Pong,
    /// Rendezvous found a peer at one of our contacts' points (see [`ContactSearch`]).
    ContactMatched {
        peer_code: String,
        /// The relay whose reply named it (the line's own, or a redirect's endpoint).
        relay: String,
        /// Whether this line sent the `pair_request` (its code is the smaller).
        we_request: bool,
    },
    /// A `pair_incoming` that was not accepted (not a trusted contact's key).
    PairIgnored {
        from_code: String,
    },
    /// A match named a relay (`relay_id`) outside the signed fleet: it was not dialled.
    RelayNotDialled {
        peer_code: String,
        relay_id: String,
    },
    /// The meeting connection to the contact's relay could not be opened (the line falls
    /// back to its own relay, see [`crate::rendezvous`]).
    MeetingFailed {
        peer_code: String,
        relay: String,
        error: String,
    },
    /// The relay connection is gone.
    Closed,
}

/// What a line needs to find contacts through rendezvous: the rules, whose points it
/// registers (recomputed at each send, [`crate::rendezvous::registration`]), and how to open
/// redirect connections (same code and key).
pub struct ContactSearch {
    pub rules: ContactRendezvous,
    pub identity: Identity,
    pub contacts: Vec<Contact>,
    /// The line's own code, for `peerId` and `register` on redirect and meeting connections.
    pub code: PairingCode,
    pub trust: TrustAnchors,
    pub step_timeout: Duration,
}

impl ContactSearch {
    /// A search for `contacts` by a line registered as `code` with `identity`; only their
    /// keys' `pair_incoming` is accepted.
    pub fn new(
        identity: Identity,
        code: PairingCode,
        contacts: Vec<Contact>,
        trust: TrustAnchors,
        step_timeout: Duration,
    ) -> Self {
        Self {
            rules: ContactRendezvous::new(code.as_str(), contacts.iter().map(|c| c.key.clone())),
            identity,
            contacts,
            code,
            trust,
            step_timeout,
        }
    }

    /// Meeting connections go to relays of `fleet` (serverId, endpoint), the registry's
    /// signed list as discovery verified it ([`crate::rendezvous`]).
    pub fn with_fleet(mut self, fleet: impl IntoIterator<Item = (String, String)>) -> Self {
        self.rules = self.rules.with_fleet(fleet);
        self
    }

    /// `register_rendezvous` for the contacts at `now_ms`, as JSON text.
    pub fn frame(&self, now_ms: u64) -> String {
        RelayRequest::RegisterRendezvous(registration(
            &self.identity,
            self.code.as_str(),
            &self.contacts,
            now_ms as i64,
        ))
        .to_text()
    }
}

/// Turns the relay's servers into the engine's (TURN behind bridges, per the line's
/// options); `None` when they cannot be used.
pub type IceConverter = Arc<
    dyn Fn(Vec<WireIceServer>) -> Pin<Box<dyn Future<Output = Option<Vec<IceServer>>> + Send>>
        + Send
        + Sync,
>;

/// How a line keeps the engine's ICE servers current: the first `ice_servers` goes through
/// `convert` (which may start bridges that must outlive every call using them); renewals only
/// swap the TURN credential in the servers converted first, so bridges stay put.
pub struct IceUpdates {
    pub convert: IceConverter,
    /// The engine's servers made from the relay's, if some were converted already (a relay
    /// that sent `ice_servers` at registration).
    pub converted: Option<Vec<IceServer>>,
}

impl IceUpdates {
    async fn apply(&mut self, offered: &[WireIceServer], live: &LiveIceServers) {
        let credential = offered
            .iter()
            .find_map(|s| Some((s.username.clone()?, s.credential.clone()?)));
        let servers = match (&self.converted, credential) {
            (Some(previous), Some((username, credential))) => previous
                .iter()
                .cloned()
                .map(|mut server| {
                    if !server.username.is_empty() {
                        server.username = username.clone();
                        server.credential = credential.clone();
                    }
                    server
                })
                .collect(),
            (Some(_), None) => return,
            (None, _) => match (self.convert)(offered.to_vec()).await {
                Some(servers) => servers,
                None => return,
            },
        };
        self.converted = Some(servers.clone());
        live.set(servers);
    }
}

/// A registered session wired to a call engine.
pub struct PhoneLine {
    /// The engine (with an event history to wait on).
    pub phone: Phone,
    /// This line's pairing code.
    pub code: PairingCode,
    /// Line events (also read through [`Self::wait_for`] and [`Self::next_event`]).
    pub events: mpsc::UnboundedReceiver<LineEvent>,
    commands: mpsc::Sender<ClientMessage>,
    task: tokio::task::JoinHandle<()>,
    keys: Option<LineKeys>,
    paired: PairedCodes,
}

impl PhoneLine {
    /// Starts the engine and the routing task, with no identity (calls are never
    /// authenticated). `accept_pairs`: accept every pair request.
    pub fn start(
        name: &str,
        session: SignalingSession,
        code: PairingCode,
        config: CallConfig,
        accept_pairs: bool,
    ) -> Self {
        Self::start_keyed(name, session, code, config, accept_pairs, None)
    }

    /// [`Self::start`] for a line registered with `keys.identity`: calls with paired peers
    /// are authenticated (`auth` signed and checked).
    pub fn start_keyed(
        name: &str,
        session: SignalingSession,
        code: PairingCode,
        config: CallConfig,
        accept_pairs: bool,
        keys: Option<LineKeys>,
    ) -> Self {
        Self::start_with_ice(name, session, code, config, accept_pairs, keys, None)
    }

    /// [`Self::start_keyed`] that keeps the engine's ICE servers current with the relay's
    /// `ice_servers` through `ice` (into `config.live_ice_servers`).
    pub fn start_with_ice(
        name: &str,
        session: SignalingSession,
        code: PairingCode,
        config: CallConfig,
        accept_pairs: bool,
        keys: Option<LineKeys>,
        ice: Option<IceUpdates>,
    ) -> Self {
        Self::start_searching(name, session, code, config, accept_pairs, keys, ice, None)
    }

    /// [`Self::start_with_ice`] that also looks for contacts through rendezvous.
    #[allow(clippy::too_many_arguments)]
    pub fn start_searching(
        name: &str,
        session: SignalingSession,
        code: PairingCode,
        config: CallConfig,
        accept_pairs: bool,
        keys: Option<LineKeys>,
        ice: Option<IceUpdates>,
        search: Option<ContactSearch>,
    ) -> Self {
        let live = config.live_ice_servers.clone();
        let (to_engine, engine_inbox) = mpsc::channel(256);
        let (engine_out, from_engine) = mpsc::channel(256);
        let (engine, engine_events) =
            CallEngine::spawn_with_peers(config, engine_inbox, engine_out);
        let (line_events, events) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::channel(16);
        let paired = PairedCodes::default();
        let task = tokio::spawn(route(
            session,
            Routing {
                to_engine,
                events: line_events,
                accept_pairs,
                keys: keys.clone(),
                paired: Arc::clone(&paired),
                ice: ice.map(|updates| (updates, live)),
                search,
            },
            from_engine,
            command_rx,
        ));
        Self {
            phone: Phone::new(name, engine, engine_events),
            code,
            events,
            commands,
            task,
            keys,
            paired,
        }
    }

    /// The public key (standard base64) `code` was paired under in this session.
    pub fn paired_key(&self, code: PairingCode) -> Option<String> {
        self.paired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(code.as_str())
            .cloned()
    }

    /// The keys for a call with the peer paired as `code`, when this line has an identity
    /// and the peer's key is usable.
    pub fn peer_auth(&self, code: PairingCode) -> Option<PeerAuth> {
        let key = self.paired_key(code)?;
        self.keys.as_ref()?.peer_auth(&key)
    }

    /// The identity and contacts of this line, if it has them.
    pub fn keys(&self) -> Option<&LineKeys> {
        self.keys.as_ref()
    }

    /// Sends `pair_request` to `target` and waits for the outcome (`pair_matched` gives
    /// `Ok`, `pair_rejected`/`pair_error`/`pair_timeout`/closing give `Err`).
    pub async fn pair_with(
        &mut self,
        target: PairingCode,
        limit: Duration,
    ) -> Result<(), LineError> {
        self.commands
            .send(ClientMessage::PairRequest {
                target_code: target,
                proposed_name: Some("call-probe".into()),
            })
            .await
            .map_err(|_| LineError::Gone)?;
        let wanted = target.as_str().to_string();
        self.wait_for(limit, "pair_matched", |event| match event {
            LineEvent::PairMatched { peer_code, .. } if *peer_code == wanted => Some(Ok(())),
            LineEvent::PairRejected { .. } => Some(Err(LineError::PairRejected)),
            LineEvent::PairError { error } => Some(Err(LineError::PairRefused(error.clone()))),
            LineEvent::PairTimeout { .. } => Some(Err(LineError::PairTimeout)),
            LineEvent::RelayError { message } => Some(Err(LineError::Relay(message.clone()))),
            LineEvent::Closed => Some(Err(LineError::Closed)),
            _ => None,
        })
        .await?
    }

    /// The `ice_servers` the relay sends once this line is paired (relay-lite does; other
    /// relays send none): a `ping` after `pair_matched` is answered after them. Empty when
    /// none came. With [`IceUpdates`], the engine already uses them when this returns.
    pub async fn ice_servers_after_pairing(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<WireIceServer>, LineError> {
        self.commands
            .send(ClientMessage::Ping)
            .await
            .map_err(|_| LineError::Gone)?;
        let mut offered = Vec::new();
        self.wait_for(limit, "pong", |event| match event {
            LineEvent::IceServers { servers } => {
                offered = servers.clone();
                None
            }
            LineEvent::Pong => Some(Ok(())),
            LineEvent::Closed => Some(Err(LineError::Closed)),
            _ => None,
        })
        .await??;
        Ok(offered)
    }

    /// Waits up to `limit` for a line event `pick` accepts.
    pub async fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &str,
        mut pick: impl FnMut(&LineEvent) -> Option<T>,
    ) -> Result<T, LineError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return Ok(found);
                    }
                }
                Ok(None) => return Err(LineError::Stopped(what.into())),
                Err(_) => {
                    return Err(LineError::TimedOut {
                        what: what.into(),
                        limit,
                    })
                }
            }
        }
    }

    /// The next line event, if any is waiting.
    pub fn try_event(&mut self) -> Option<LineEvent> {
        self.events.try_recv().ok()
    }

    /// Waits for the next line event.
    pub async fn next_event(&mut self) -> Option<LineEvent> {
        self.events.recv().await
    }
}

impl PhoneLine {
    /// Ends the line: every payload the engine has produced goes out, then the WebSocket is
    /// closed; returns when that is done (at most [`CLOSE_WAIT`] and a little). Dropping the
    /// line does the same in the background.
    pub async fn close(self) {
        let PhoneLine {
            phone,
            commands,
            task,
            ..
        } = self;
        drop(commands);
        let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_millis(500), task).await;
        drop(phone);
    }
}

/// The peer a payload goes to: the one its `callId` came from, or (a new call) the last paired
/// peer, which is then remembered for that call.
fn target_of(
    payload: &CallPayload,
    peer: Option<PairingCode>,
    peer_of_call: &mut HashMap<String, PairingCode>,
) -> Option<PairingCode> {
    let call_id = payload.call_id().to_ascii_lowercase();
    match peer_of_call.get(&call_id) {
        Some(target) => Some(*target),
        None => {
            if let Some(target) = peer {
                peer_of_call.insert(call_id, target);
            }
            peer
        }
    }
}

/// What the routing task routes with.
struct Routing {
    to_engine: mpsc::Sender<Inbound>,
    events: mpsc::UnboundedSender<LineEvent>,
    accept_pairs: bool,
    keys: Option<LineKeys>,
    paired: PairedCodes,
    ice: Option<(IceUpdates, LiveIceServers)>,
    search: Option<ContactSearch>,
}

impl Routing {
    /// The public key `from` was paired under, if this line paired with it.
    fn paired_key(&self, from: &PairingCode) -> Option<String> {
        self.paired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(from.as_str())
            .cloned()
    }

    /// Remembers a pairing and records the contact.
    fn paired(&self, code: &str, key: &str) {
        self.paired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(code.to_string(), key.to_string());
        if let Some(keys) = &self.keys {
            if decode_x25519_public_key(key).is_some() {
                let now = zajel_client_net::now_ms();
                let name = keys.new_contact_name.as_deref().unwrap_or(code);
                if let Err(error) = lock_contacts(&keys.contacts).paired(key, name, now) {
                    tracing::warn!(%error, "the contact was not saved");
                }
            }
        }
    }
}

/// What a side connection (a redirect's, or a meeting connection) tells the line.
enum SideEvent {
    /// Connected and registered on the relay `server_id`; frames for it go through `sender`.
    Up {
        via: Via,
        server_id: String,
        sender: mpsc::Sender<String>,
    },
    /// It could not be opened (unreachable, `register` refused, or the relay did not prove
    /// the key it should).
    Failed { via: Via, error: String },
    /// A frame it received.
    Message { via: Via, message: ServerMessage },
}

/// A meeting connection being opened: for which contact, and whether we request there.
struct PendingMeeting {
    peer_code: String,
    request: bool,
}

/// The routing task's state besides the primary session.
struct Router {
    routing: Routing,
    ice: Option<(IceUpdates, LiveIceServers)>,
    search: Option<ContactSearch>,
    /// The last peer paired: calls without a known peer go to it.
    peer: Option<PairingCode>,
    peer_of_call: HashMap<String, PairingCode>,
    /// The connection each paired peer was paired on (absent: the primary).
    connection_of_peer: HashMap<String, Via>,
    primary_relay: String,
    /// Side connections that are up, by how they were opened.
    sides: HashMap<Via, mpsc::Sender<String>>,
    /// Meeting connections being opened.
    meetings: HashMap<Via, PendingMeeting>,
    side_events: mpsc::Sender<SideEvent>,
    side_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Whether the line goes on.
enum Flow {
    Continue,
    /// The primary connection is gone (the line reports [`LineEvent::Closed`]).
    Closed,
    /// The engine is gone.
    Stop,
}

async fn route(
    mut session: SignalingSession,
    mut routing: Routing,
    mut from_engine: mpsc::Receiver<CallPayload>,
    mut commands: mpsc::Receiver<ClientMessage>,
) {
    let (side_events, mut side_rx) = mpsc::channel::<SideEvent>(64);
    let mut router = Router {
        ice: routing.ice.take(),
        search: routing.search.take(),
        routing,
        peer: None,
        peer_of_call: HashMap::new(),
        connection_of_peer: HashMap::new(),
        primary_relay: session.url().to_string(),
        sides: HashMap::new(),
        meetings: HashMap::new(),
        side_events,
        side_tasks: Vec::new(),
    };
    let primary_id = session.server_info().server_id.clone();
    if let Some(search) = router.search.as_mut() {
        search.rules.on_connected(Via::Primary, &primary_id);
        let actions = search.rules.connected(unix_ms());
        if !router.act(&session, actions).await {
            let _ = router.routing.events.send(LineEvent::Closed);
            return;
        }
    }
    loop {
        let timer = router.next_timer();
        let flow = tokio::select! {
            () = async { match timer { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                let actions = match router.search.as_mut() {
                    Some(search) => search.rules.on_timeout(unix_ms()),
                    None => Vec::new(),
                };
                if router.act(&session, actions).await { Flow::Continue } else { Flow::Closed }
            }
            Some(side) = side_rx.recv() => router.on_side(&session, side).await,
            message = session.recv() => match message {
                Some(message) => router.on_message(&session, Via::Primary, message).await,
                None => Flow::Closed,
            },
            payload = from_engine.recv() => {
                let Some(payload) = payload else {
                    drop(side_rx);
                    return router.hang_up(session, from_engine).await;
                };
                match target_of(&payload, router.peer, &mut router.peer_of_call) {
                    Some(target) => {
                        let via = router.connection_of(target.as_str());
                        if router.send_on(&session, &via, ClientMessage::call(target, &payload)).await {
                            Flow::Continue
                        } else {
                            Flow::Closed
                        }
                    }
                    None => {
                        tracing::warn!("no peer to send a {} to", payload.kind().type_name());
                        Flow::Continue
                    }
                }
            }
            command = commands.recv() => {
                let Some(command) = command else {
                    drop(side_rx);
                    return router.hang_up(session, from_engine).await;
                };
                // A ping asks for the paired connection's ice_servers: it goes where the
                // last peer was paired; everything else on the primary connection.
                let via = match (&command, router.peer) {
                    (ClientMessage::Ping, Some(peer)) => router.connection_of(peer.as_str()),
                    _ => Via::Primary,
                };
                if router.send_on(&session, &via, command).await { Flow::Continue } else { Flow::Closed }
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Closed => {
                let _ = router.routing.events.send(LineEvent::Closed);
                return;
            }
            Flow::Stop => return,
        }
    }
}

impl Router {
    /// When the rendezvous rules next want [`ContactRendezvous::on_timeout`].
    fn next_timer(&self) -> Option<tokio::time::Instant> {
        let at = self.search.as_ref()?.rules.next_timeout()?;
        Some(tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(unix_ms())))
    }

    /// The connection `peer_code` was paired on.
    fn connection_of(&self, peer_code: &str) -> Via {
        self.connection_of_peer
            .get(peer_code)
            .cloned()
            .unwrap_or(Via::Primary)
    }

    /// Sends `message` on the connection `via` (the primary when that side connection is
    /// gone); `false` when the primary connection is gone.
    async fn send_on(&self, session: &SignalingSession, via: &Via, message: ClientMessage) -> bool {
        if let Some(side) = self.sides.get(via) {
            if side.send(message.to_text()).await.is_err() {
                tracing::warn!(
                    relay = relay_of(via, &self.primary_relay),
                    "a side connection is gone"
                );
            }
            return true;
        }
        session.send(message).await.is_ok()
    }

    /// A side connection's event.
    async fn on_side(&mut self, session: &SignalingSession, event: SideEvent) -> Flow {
        match event {
            SideEvent::Up {
                via,
                server_id,
                sender,
            } => {
                self.sides.insert(via.clone(), sender);
                if let Some(search) = self.search.as_mut() {
                    search.rules.on_connected(via.clone(), &server_id);
                }
                if let Some(meeting) = self.meetings.remove(&via) {
                    // Not when we are requesting on our own relay already (it came up late).
                    let request = meeting.request
                        && self
                            .search
                            .as_mut()
                            .is_some_and(|s| s.rules.meeting_up(&meeting.peer_code));
                    if request {
                        if let Ok(target) = PairingCode::parse(&meeting.peer_code) {
                            let request = ClientMessage::PairRequest {
                                target_code: target,
                                proposed_name: Some("call-probe".into()),
                            };
                            if !self.send_on(session, &via, request).await {
                                return Flow::Closed;
                            }
                        }
                    }
                }
                Flow::Continue
            }
            SideEvent::Failed { via, error } => {
                tracing::warn!(relay = relay_of(&via, &self.primary_relay), %error, "a side connection could not be opened");
                let Some(meeting) = self.meetings.remove(&via) else {
                    return Flow::Continue;
                };
                let _ = self.routing.events.send(LineEvent::MeetingFailed {
                    peer_code: meeting.peer_code.clone(),
                    relay: relay_of(&via, &self.primary_relay),
                    error,
                });
                let actions = match self.search.as_mut() {
                    Some(search) => search.rules.meeting_failed(&meeting.peer_code, unix_ms()),
                    None => Vec::new(),
                };
                if self.act(session, actions).await {
                    Flow::Continue
                } else {
                    Flow::Closed
                }
            }
            SideEvent::Message { via, message } => self.on_message(session, via, message).await,
        }
    }

    /// A frame that arrived on `via`.
    async fn on_message(
        &mut self,
        session: &SignalingSession,
        via: Via,
        message: ServerMessage,
    ) -> Flow {
        if let Some(payload) = message.call_payload() {
            let from = message
                .forwarded()
                .and_then(|forwarded| PairingCode::parse(&forwarded.from).ok());
            match (payload, from) {
                (Ok(payload), Some(from)) => {
                    let Some(key) = self.routing.paired_key(&from) else {
                        tracing::warn!(
                            from = from.as_str(),
                            kind = payload.kind().type_name(),
                            "ignoring a call message from a code this line has not paired with"
                        );
                        return Flow::Continue;
                    };
                    let auth = match &self.routing.keys {
                        None => None,
                        Some(keys) => match keys.peer_auth(&key) {
                            Some(auth) => Some(auth),
                            None => {
                                tracing::warn!(
                                    from = from.as_str(),
                                    "ignoring a call message from a peer paired under an unusable key"
                                );
                                return Flow::Continue;
                            }
                        },
                    };
                    self.peer_of_call
                        .insert(payload.call_id().to_ascii_lowercase(), from);
                    if self
                        .routing
                        .to_engine
                        .send(Inbound {
                            payload,
                            peer: auth,
                        })
                        .await
                        .is_err()
                    {
                        return Flow::Stop;
                    }
                }
                (Err(error), _) => tracing::warn!(%error, "ignoring an invalid call payload"),
                (_, None) => tracing::warn!("ignoring a call message with no valid sender"),
            }
            return Flow::Continue;
        }
        let event = match message {
            ServerMessage::PairIncoming {
                from_code,
                from_public_key,
                ..
            } => {
                let trusted = self
                    .search
                    .as_ref()
                    .is_some_and(|s| s.rules.accepts(&from_public_key));
                if self.routing.accept_pairs || trusted {
                    // Answered on the connection it came on (a redirect's or meeting
                    // connection's too).
                    if let Ok(code) = PairingCode::parse(&from_code) {
                        let response = ClientMessage::PairResponse {
                            target_code: code,
                            accepted: true,
                        };
                        if !self.send_on(session, &via, response).await {
                            return Flow::Closed;
                        }
                    }
                } else if self.search.is_some() || via != Via::Primary {
                    // Looking for contacts: only theirs are accepted, a stranger's is left
                    // unanswered.
                    tracing::warn!(
                        from = from_code.as_str(),
                        "not accepting a pair request from a key that is no contact's"
                    );
                    let _ = self
                        .routing
                        .events
                        .send(LineEvent::PairIgnored { from_code });
                    return Flow::Continue;
                }
                LineEvent::PairIncoming { from_code }
            }
            ServerMessage::PairMatched {
                peer_code,
                peer_public_key,
                is_initiator,
            } => {
                if let Ok(code) = PairingCode::parse(&peer_code) {
                    self.peer = Some(code);
                    self.routing.paired(&peer_code, &peer_public_key);
                    if via == Via::Primary {
                        self.connection_of_peer.remove(&peer_code);
                    } else {
                        self.connection_of_peer
                            .insert(peer_code.clone(), via.clone());
                    }
                    if let Some(search) = self.search.as_mut() {
                        search.rules.paired(&peer_code);
                    }
                }
                LineEvent::PairMatched {
                    peer_code,
                    peer_public_key,
                    is_initiator,
                }
            }
            ServerMessage::PairRejected { peer_code } => LineEvent::PairRejected { peer_code },
            ServerMessage::PairError { error } => LineEvent::PairError { error },
            ServerMessage::PairTimeout { peer_code } => {
                let retrying = self
                    .search
                    .as_ref()
                    .is_some_and(|s| s.rules.resending_to(&peer_code));
                if retrying {
                    // A request to a code not yet on our relay (the contact is on its way).
                    return Flow::Continue;
                }
                LineEvent::PairTimeout { peer_code }
            }
            ServerMessage::Error { message } => LineEvent::RelayError { message },
            ServerMessage::IceServers { ice_servers, .. } => {
                // Before the next frame (a call_offer, say) reaches the engine.
                if let Some((updates, live)) = self.ice.as_mut() {
                    updates.apply(&ice_servers, live).await;
                }
                LineEvent::IceServers {
                    servers: ice_servers,
                }
            }
            ServerMessage::Pong => LineEvent::Pong,
            ServerMessage::Unknown(unknown) => {
                let Some(search) = self.search.as_mut() else {
                    return Flow::Continue;
                };
                let Some(reply) = rendezvous_reply(&unknown) else {
                    return Flow::Continue;
                };
                let actions = search.rules.on_reply(&reply, &via);
                return if self.act(session, actions).await {
                    Flow::Continue
                } else {
                    Flow::Closed
                };
            }
            _ => return Flow::Continue,
        };
        let _ = self.routing.events.send(event);
        Flow::Continue
    }

    /// Carries out the rendezvous rules' actions; `false` when the primary connection is
    /// gone.
    async fn act(&mut self, session: &SignalingSession, actions: Vec<RendezvousAction>) -> bool {
        let Some(mut search) = self.search.take() else {
            return true;
        };
        let going_on = self.act_with(session, &mut search, actions).await;
        self.search = Some(search);
        going_on
    }

    async fn act_with(
        &mut self,
        session: &SignalingSession,
        search: &mut ContactSearch,
        actions: Vec<RendezvousAction>,
    ) -> bool {
        let events = self.routing.events.clone();
        for action in actions {
            match action {
                RendezvousAction::Register => {
                    if session.send_text(search.frame(unix_ms())).await.is_err() {
                        return false;
                    }
                }
                RendezvousAction::PairRequest { peer_code, via } => {
                    let Ok(target) = PairingCode::parse(&peer_code) else {
                        tracing::warn!("a live match is no pairing code");
                        continue;
                    };
                    let _ = events.send(LineEvent::ContactMatched {
                        peer_code,
                        relay: relay_of(&via, &self.primary_relay),
                        we_request: true,
                    });
                    let request = ClientMessage::PairRequest {
                        target_code: target,
                        proposed_name: Some("call-probe".into()),
                    };
                    // Where the contact is: the connection the match came on (a redirect's:
                    // both followed the redirect there), or a meeting connection. The app
                    // always uses its primary connection, which cannot reach a contact on
                    // another relay.
                    if !self.send_on(session, &via, request).await {
                        return false;
                    }
                }
                RendezvousAction::AwaitPairIncoming { peer_code, via } => {
                    let _ = events.send(LineEvent::ContactMatched {
                        peer_code,
                        relay: relay_of(&via, &self.primary_relay),
                        we_request: false,
                    });
                }
                RendezvousAction::UnlistedRelay {
                    peer_code,
                    relay_id,
                } => {
                    tracing::warn!(
                        peer = peer_code.as_str(),
                        relay = relay_id.as_str(),
                        "a match names a relay that is not in the signed fleet: not dialled"
                    );
                    let _ = events.send(LineEvent::RelayNotDialled {
                        peer_code,
                        relay_id,
                    });
                }
                RendezvousAction::FollowRedirect(redirect) => {
                    let Ok(url) = url::Url::parse(&redirect.endpoint) else {
                        tracing::warn!(
                            endpoint = redirect.endpoint.as_str(),
                            "a redirect to no URL"
                        );
                        continue;
                    };
                    // The redirect's items as they are, as the app sends them.
                    let frame = RelayRequest::RegisterRendezvous(
                        zajel_wire::rendezvous::RegisterRendezvous {
                            peer_id: Some(search.code.as_str().to_string()),
                            daily_points: redirect.daily_points.clone(),
                            hourly_tokens: redirect.hourly_tokens.clone(),
                            ..Default::default()
                        },
                    )
                    .to_text();
                    let side = SideConnection {
                        via: Via::Redirect(url.to_string()),
                        url,
                        trust: search.trust.clone(),
                        step: search.step_timeout,
                        code: search.code,
                        public_key: search.identity.public_base64(),
                        prove: None,
                        first_frame: Some(frame),
                    };
                    self.side_tasks
                        .push(tokio::spawn(side.run(self.side_events.clone())));
                }
                RendezvousAction::Meet {
                    peer_code,
                    server_id,
                    endpoint,
                    request,
                } => {
                    let _ = events.send(LineEvent::ContactMatched {
                        peer_code: peer_code.clone(),
                        relay: endpoint.clone(),
                        we_request: request,
                    });
                    let Ok(url) = url::Url::parse(&endpoint) else {
                        tracing::warn!(endpoint = endpoint.as_str(), "a fleet entry with no URL");
                        continue;
                    };
                    let via = Via::Meeting(url.to_string());
                    if self.sides.contains_key(&via) || self.meetings.contains_key(&via) {
                        // Already there (or on the way): only the request is new.
                        if request && self.sides.contains_key(&via) {
                            if let Ok(target) = PairingCode::parse(&peer_code) {
                                let request = ClientMessage::PairRequest {
                                    target_code: target,
                                    proposed_name: Some("call-probe".into()),
                                };
                                if !self.send_on(session, &via, request).await {
                                    return false;
                                }
                            }
                        }
                        continue;
                    }
                    search.rules.meeting_started(&peer_code, unix_ms());
                    self.meetings
                        .insert(via.clone(), PendingMeeting { peer_code, request });
                    let side = SideConnection {
                        via,
                        url,
                        trust: search.trust.clone(),
                        step: search.step_timeout,
                        code: search.code,
                        public_key: search.identity.public_base64(),
                        prove: Some(server_id),
                        first_frame: None,
                    };
                    self.side_tasks
                        .push(tokio::spawn(side.run(self.side_events.clone())));
                }
            }
        }
        true
    }

    /// The end of a line that is closing (not one whose relay went away): what the engine
    /// has already produced is sent, then the WebSockets are closed.
    async fn hang_up(
        mut self,
        session: SignalingSession,
        mut from_engine: mpsc::Receiver<CallPayload>,
    ) {
        while let Ok(payload) = from_engine.try_recv() {
            if let Some(target) = target_of(&payload, self.peer, &mut self.peer_of_call) {
                let via = self.connection_of(target.as_str());
                if !self
                    .send_on(&session, &via, ClientMessage::call(target, &payload))
                    .await
                {
                    break;
                }
            }
        }
        // Side connections close once their event channel is gone (queued frames first).
        let Router {
            side_tasks,
            sides,
            side_events,
            ..
        } = self;
        drop(sides);
        drop(side_events);
        let sides_closed = async {
            for task in side_tasks {
                let _ = task.await;
            }
        };
        let _ = tokio::join!(session.close(CLOSE_WAIT), async {
            let _ = tokio::time::timeout(CLOSE_WAIT, sides_closed).await;
        });
    }
}

/// Now as Unix ms (the rendezvous rules' clock).
fn unix_ms() -> u64 {
    zajel_client_net::now_ms()
}

/// A rendezvous reply (`rendezvous_result`, `rendezvous_partial`, `rendezvous_match`) among
/// the frames the signaling types do not know; `None` for anything else or a malformed one.
fn rendezvous_reply(unknown: &UnknownMessage) -> Option<RelayReply> {
    if !unknown.type_name.starts_with("rendezvous_") {
        return None;
    }
    let text = serde_json::to_string(unknown).ok()?;
    match RelayReply::parse(&text) {
        Ok(reply) => Some(reply),
        Err(error) => {
            tracing::warn!(kind = unknown.type_name.as_str(), %error, "ignoring a malformed rendezvous reply");
            None
        }
    }
}

fn relay_of(via: &Via, primary_relay: &str) -> String {
    match via {
        Via::Primary => primary_relay.to_string(),
        Via::Redirect(endpoint) | Via::Meeting(endpoint) => endpoint.clone(),
    }
}

/// A second connection of the line (§5.4's redirect connection, or a meeting connection to
/// the relay a match named): `register` with the line's code and key on `url` (a meeting
/// connection first has the relay prove the serverId the signed fleet lists for it), then
/// `first_frame` if any; every frame it receives goes to the line, which answers on it, until
/// the line ends (then it closes, sending what is queued first).
struct SideConnection {
    via: Via,
    url: url::Url,
    trust: TrustAnchors,
    step: Duration,
    code: PairingCode,
    public_key: String,
    /// The serverId the relay must prove (meeting connections).
    prove: Option<String>,
    first_frame: Option<String>,
}

impl SideConnection {
    async fn run(self, events: mpsc::Sender<SideEvent>) {
        let via = self.via.clone();
        let mut session = match self.open().await {
            Ok(session) => session,
            Err(error) => {
                let _ = events.send(SideEvent::Failed { via, error }).await;
                return;
            }
        };
        let server_id = session.server_info().server_id.clone();
        let up = SideEvent::Up {
            via: via.clone(),
            server_id,
            sender: session.sender(),
        };
        if events.send(up).await.is_err() {
            session.close(CLOSE_WAIT).await;
            return;
        }
        loop {
            tokio::select! {
                message = session.recv() => {
                    let Some(message) = message else { return };
                    if events.send(SideEvent::Message { via: via.clone(), message }).await.is_err() {
                        break;
                    }
                }
                () = events.closed() => break,
            }
        }
        session.close(CLOSE_WAIT).await;
    }

    async fn open(&self) -> Result<SignalingSession, String> {
        let mut session = SignalingSession::connect(&self.url, &self.trust, self.step)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(expected) = &self.prove {
            prove(&mut session, &self.url, expected, self.step).await?;
        }
        session
            .register(self.code, &self.public_key, self.step)
            .await
            .map_err(|e| format!("register refused: {e}"))?;
        if let Some(frame) = &self.first_frame {
            session
                .send_text(frame.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(session)
    }
}

/// Has the relay on `session` prove `expected` (the serverId the signed fleet lists for
/// `url`), judged as discovery judges it.
async fn prove(
    session: &mut SignalingSession,
    url: &url::Url,
    expected: &str,
    step: Duration,
) -> Result<(), String> {
    use discovery_client::identity::{judge, Identity as Judged};
    let answer = session
        .prove_identity(step)
        .await
        .map_err(|e| format!("no identity proof: {e}"))?;
    let check = crate::check::identity_check(answer);
    let announced = session.server_info().server_id.clone();
    let announced = (!announced.is_empty()).then_some(announced.as_str());
    match judge(url.as_str(), Some(expected), announced, &check) {
        Judged::Proven { .. } => Ok(()),
        Judged::Learnt { server_id } => Err(format!("it proved {server_id}, not {expected}")),
        Judged::Unproven(why) | Judged::Mismatch(why) => {
            Err(format!("it did not prove {expected}: {why}"))
        }
    }
}
