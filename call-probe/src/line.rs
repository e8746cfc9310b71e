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
//! second connections, accepts `pair_incoming` from the contacts' keys only (unless it accepts
//! every pair), and reports each match as [`LineEvent::ContactMatched`].
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
    /// The line's own code, for `peerId` and `register` on redirect connections.
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

/// The end of a line that is closing (not one whose relay went away): what the engine has
/// already produced is sent, then the WebSocket is closed.
async fn hang_up(
    session: SignalingSession,
    mut from_engine: mpsc::Receiver<CallPayload>,
    peer: Option<PairingCode>,
    mut peer_of_call: HashMap<String, PairingCode>,
) {
    while let Ok(payload) = from_engine.try_recv() {
        if let Some(target) = target_of(&payload, peer, &mut peer_of_call) {
            if session
                .send(ClientMessage::call(target, &payload))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    session.close(CLOSE_WAIT).await;
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

async fn route(
    mut session: SignalingSession,
    mut routing: Routing,
    mut from_engine: mpsc::Receiver<CallPayload>,
    mut commands: mpsc::Receiver<ClientMessage>,
) {
    let Routing {
        ref to_engine,
        ref events,
        accept_pairs,
        ..
    } = routing;
    let mut ice = routing.ice.take();
    let mut search = routing.search.take();
    let mut peer: Option<PairingCode> = None;
    let mut peer_of_call: HashMap<String, PairingCode> = HashMap::new();
    // Replies that came on redirect connections.
    let (redirected, mut redirected_rx) = mpsc::channel::<(Via, RelayReply)>(16);
    let primary_relay = session.url().to_string();
    if let Some(search) = search.as_mut() {
        let actions = search.rules.connected(unix_ms());
        if !act(
            &session,
            search,
            actions,
            &primary_relay,
            events,
            &redirected,
        )
        .await
        {
            let _ = events.send(LineEvent::Closed);
            return;
        }
    }
    let resend_at = |search: &Option<ContactSearch>| {
        search
            .as_ref()
            .and_then(|s| s.rules.next_timeout())
            .map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(unix_ms()))
            })
    };
    loop {
        let timer = resend_at(&search);
        tokio::select! {
            () = async { match timer { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                if let Some(search) = search.as_mut() {
                    let actions = search.rules.on_timeout(unix_ms());
                    if !act(&session, search, actions, &primary_relay, events, &redirected).await {
                        let _ = events.send(LineEvent::Closed);
                        return;
                    }
                }
            }
            Some((via, reply)) = redirected_rx.recv() => {
                if let Some(search) = search.as_mut() {
                    let actions = search.rules.on_reply(&reply, &via);
                    if !act(&session, search, actions, &primary_relay, events, &redirected).await {
                        let _ = events.send(LineEvent::Closed);
                        return;
                    }
                }
            }
            message = session.recv() => {
                let Some(message) = message else {
                    let _ = events.send(LineEvent::Closed);
                    return;
                };
                if let Some(payload) = message.call_payload() {
                    let from = message.forwarded().and_then(|forwarded| PairingCode::parse(&forwarded.from).ok());
                    match (payload, from) {
                        (Ok(payload), Some(from)) => {
                            let Some(key) = routing.paired_key(&from) else {
                                tracing::warn!(from = from.as_str(), kind = payload.kind().type_name(),
                                    "ignoring a call message from a code this line has not paired with");
                                continue;
                            };
                            let auth = match &routing.keys {
                                None => None,
                                Some(keys) => match keys.peer_auth(&key) {
                                    Some(auth) => Some(auth),
                                    None => {
                                        tracing::warn!(from = from.as_str(),
                                            "ignoring a call message from a peer paired under an unusable key");
                                        continue;
                                    }
                                },
                            };
                            peer_of_call.insert(payload.call_id().to_ascii_lowercase(), from);
                            if to_engine.send(Inbound { payload, peer: auth }).await.is_err() {
                                return;
                            }
                        }
                        (Err(error), _) => tracing::warn!(%error, "ignoring an invalid call payload"),
                        (_, None) => tracing::warn!("ignoring a call message with no valid sender"),
                    }
                    continue;
                }
                let event = match message {
                    ServerMessage::PairIncoming { from_code, from_public_key, .. } => {
                        let trusted = search.as_ref().is_some_and(|s| s.rules.accepts(&from_public_key));
                        if accept_pairs || trusted {
                            if let Ok(code) = PairingCode::parse(&from_code) {
                                let response = ClientMessage::PairResponse { target_code: code, accepted: true };
                                if session.send(response).await.is_err() {
                                    return;
                                }
                            }
                        } else if search.is_some() {
                            // Looking for contacts: only theirs are accepted, a stranger's is left unanswered.
                            tracing::warn!(from = from_code.as_str(), "not accepting a pair request from a key that is no contact's");
                            let _ = events.send(LineEvent::PairIgnored { from_code });
                            continue;
                        }
                        LineEvent::PairIncoming { from_code }
                    }
                    ServerMessage::PairMatched { peer_code, peer_public_key, is_initiator } => {
                        if let Ok(code) = PairingCode::parse(&peer_code) {
                            peer = Some(code);
                            routing.paired(&peer_code, &peer_public_key);
                        }
                        LineEvent::PairMatched { peer_code, peer_public_key, is_initiator }
                    }
                    ServerMessage::PairRejected { peer_code } => LineEvent::PairRejected { peer_code },
                    ServerMessage::PairError { error } => LineEvent::PairError { error },
                    ServerMessage::PairTimeout { peer_code } => LineEvent::PairTimeout { peer_code },
                    ServerMessage::Error { message } => LineEvent::RelayError { message },
                    ServerMessage::IceServers { ice_servers, .. } => {
                        // Before the next frame (a call_offer, say) reaches the engine.
                        if let Some((updates, live)) = ice.as_mut() {
                            updates.apply(&ice_servers, live).await;
                        }
                        LineEvent::IceServers { servers: ice_servers }
                    }
                    ServerMessage::Pong => LineEvent::Pong,
                    ServerMessage::Unknown(unknown) => {
                        let Some(search) = search.as_mut() else { continue };
                        let Some(reply) = rendezvous_reply(&unknown) else { continue };
                        let actions = search.rules.on_reply(&reply, &Via::Primary);
                        if !act(&session, search, actions, &primary_relay, events, &redirected).await {
                            let _ = events.send(LineEvent::Closed);
                            return;
                        }
                        continue;
                    }
                    _ => continue,
                };
                let _ = events.send(event);
            }
            payload = from_engine.recv() => {
                let Some(payload) = payload else {
                    return hang_up(session, from_engine, peer, peer_of_call).await;
                };
                match target_of(&payload, peer, &mut peer_of_call) {
                    Some(target) => {
                        if session.send(ClientMessage::call(target, &payload)).await.is_err() {
                            let _ = events.send(LineEvent::Closed);
                            return;
                        }
                    }
                    None => tracing::warn!("no peer to send a {} to", payload.kind().type_name()),
                }
            }
            command = commands.recv() => {
                let Some(command) = command else {
                    return hang_up(session, from_engine, peer, peer_of_call).await;
                };
                if session.send(command).await.is_err() {
                    let _ = events.send(LineEvent::Closed);
                    return;
                }
            }
        }
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

/// Carries out the rendezvous rules' actions; `false` when the primary connection is gone.
async fn act(
    session: &SignalingSession,
    search: &ContactSearch,
    actions: Vec<RendezvousAction>,
    primary_relay: &str,
    events: &mpsc::UnboundedSender<LineEvent>,
    redirected: &mpsc::Sender<(Via, RelayReply)>,
) -> bool {
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
                    relay: relay_of(&via, primary_relay),
                    we_request: true,
                });
                // Always on the primary connection, as the app does.
                let request = ClientMessage::PairRequest {
                    target_code: target,
                    proposed_name: Some("call-probe".into()),
                };
                if session.send(request).await.is_err() {
                    return false;
                }
            }
            RendezvousAction::AwaitPairIncoming { peer_code, via } => {
                let _ = events.send(LineEvent::ContactMatched {
                    peer_code,
                    relay: relay_of(&via, primary_relay),
                    we_request: false,
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
                let frame =
                    RelayRequest::RegisterRendezvous(zajel_wire::rendezvous::RegisterRendezvous {
                        peer_id: Some(search.code.as_str().to_string()),
                        daily_points: redirect.daily_points.clone(),
                        hourly_tokens: redirect.hourly_tokens.clone(),
                        ..Default::default()
                    })
                    .to_text();
                tokio::spawn(follow_redirect(
                    url,
                    search.trust.clone(),
                    search.step_timeout,
                    search.code,
                    search.identity.public_base64(),
                    frame,
                    redirected.clone(),
                ));
            }
        }
    }
    true
}

fn relay_of(via: &Via, primary_relay: &str) -> String {
    match via {
        Via::Primary => primary_relay.to_string(),
        Via::Redirect(endpoint) => endpoint.clone(),
    }
}

/// A redirect connection (§5.4): `register` with the line's code and key on `url`, then the
/// redirect's `register_rendezvous`; its rendezvous replies go to the line until the line
/// ends (then the connection closes).
async fn follow_redirect(
    url: url::Url,
    trust: TrustAnchors,
    step: Duration,
    code: PairingCode,
    public_key: String,
    frame: String,
    replies: mpsc::Sender<(Via, RelayReply)>,
) {
    let via = Via::Redirect(url.to_string());
    let mut session = match SignalingSession::connect(&url, &trust, step).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%url, %error, "cannot follow a rendezvous redirect");
            return;
        }
    };
    if let Err(error) = session.register(code, &public_key, step).await {
        tracing::warn!(%url, %error, "the redirect's relay refused register");
        return;
    }
    if session.send_text(frame).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            message = session.recv() => {
                let Some(message) = message else { return };
                if let ServerMessage::Unknown(unknown) = message {
                    if let Some(reply) = rendezvous_reply(&unknown) {
                        if replies.send((via.clone(), reply)).await.is_err() {
                            break;
                        }
                    }
                }
            }
            () = replies.closed() => break,
        }
    }
    session.close(CLOSE_WAIT).await;
}
