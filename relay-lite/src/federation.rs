//! Federation links with the other servers of the fleet, in Zajel's shape
//! (`zajel-wire.md` §8): a WebSocket on `/federation` (or `/server`) opened by
//! the signed `handshake`/`handshake_ack` of [`zajel_wire::federation`], then
//! signed `gossip`.
//!
//! Why: a Zajel server learns relay-lite from the registry's `peers` and probes
//! it with gossip `ping` every second or so, but only over an open link, and it
//! never dials registry peers itself; without a link relay-lite goes
//! suspect → failed about 3 s after each heartbeat revives it. So relay-lite
//! dials every server in its registries' lists ([`FleetView`]) and accepts their
//! links, and on a link it:
//!
//! - answers `ping` with a signed `ping_ack` carrying its incarnation;
//! - refutes a `suspect` about itself by raising its incarnation (as Zajel does);
//! - ignores the rest of the gossip (`join`, `state_sync`, `ping_req`, `leave`,
//!   `confirm`, piggybacked updates): relay-lite's fleet is the registry's list,
//!   authenticated by the registry, never what a peer gossips; it sends no
//!   gossip of its own beyond `ping_ack` (and an empty `piggyback`).
//!
//! Who may link: only servers in a registry's current list (a handshake from
//! any other key closes with 4001 "Unknown server"), whose handshake verifies
//! with Zajel's rule plus ours (key, node id, ±5 min). Duplicates follow Zajel's
//! rule (the link dialled by the smaller server id stays; the other closes with
//! 4003). Pre-handshake frames are ignored; frames over 64 KiB close with 1009.
//!
//! Beyond Zajel, relay-lite's rendezvous messages ([`zajel_wire::rendezvous_link`]):
//! each side sends `rendezvous_hello` once its handshake verified, and a
//! server that sent one counts as taking forwards ([`Links::forwarding`]);
//! `rendezvous_forward` and `rendezvous_forward_match` from the linked server
//! go to the handler set with [`Links::set_handler`]; and
//! [`Links::send`] queues a frame on a live link. Malformed ones are dropped.
//!
//! [`Link`] holds the rules of one link, sans-IO: it takes frames and `now`, and
//! returns what to send, when to close, and its next deadline.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use zajel_client_net::now_ms;
use zajel_wire::entry::ServerEntry;
use zajel_wire::federation::{
    self, close, HandshakeKind, HandshakePeer, HANDSHAKE_TIMEOUT_MS, MAX_FEDERATION_FRAME_BYTES,
};
use zajel_wire::rendezvous_link::RendezvousLinkMessage;

/// Federation settings.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Dial the servers of the registries' lists and accept their links.
    pub enabled: bool,
    /// Links at once (dialled and accepted); more are not dialled, and refused.
    pub max_links: usize,
    /// First wait before dialling a server again after a failed or lost link;
    /// doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// CA certificates trusted when dialling, besides the Mozilla roots.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_links: 64,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            extra_roots: Vec::new(),
        }
    }
}

/// What a [`Link`] asks its driver to do.
#[derive(Debug, PartialEq)]
pub enum LinkStep {
    /// Send this text frame.
    Send(String),
    /// Close the link with this code and reason.
    Close(u16, &'static str),
    /// The handshake verified: this server is on the other end.
    Linked(Box<HandshakePeer>),
    /// A relay-to-relay rendezvous message from the linked server.
    Rendezvous(RendezvousLinkMessage),
    /// Send a WebSocket ping (the other end's pong, or any frame, shows it alive).
    Ping,
}

/// A linked link sends a WebSocket ping after this long (Zajel's interval).
pub const LINK_PING_INTERVAL_MS: u64 = 30_000;
/// A linked link that heard nothing (no frame, no pong) this long is closed
/// with 1000 "Link silent": its server vanished without closing (power,
/// partition), and it leaves the rings at once instead of when the
/// registries drop it.
pub const LINK_SILENCE_MS: u64 = 90_000;

#[derive(Debug)]
enum LinkState {
    Handshaking {
        deadline_ms: u64,
    },
    Linked {
        peer: String,
        last_heard_ms: u64,
        next_ping_ms: u64,
    },
    Closed,
}

/// One federation link's rules (module docs), sans-IO.
#[derive(Debug)]
pub struct Link {
    key: SigningKey,
    own_id: String,
    endpoint: String,
    region: Option<String>,
    /// `None` when we accepted the link, else the server we dialled.
    dialled: Option<String>,
    state: LinkState,
    incarnation: u64,
    sequence: u64,
}

impl Link {
    /// A link we accepted: waits for the peer's `handshake`.
    pub fn accepted(key: SigningKey, endpoint: &str, region: Option<&str>, now_ms: u64) -> Self {
        Self::new(key, endpoint, region, None, now_ms)
    }

    /// A link we dialled to `server_id`: returns it with the `handshake` to send.
    pub fn dialled(
        key: SigningKey,
        endpoint: &str,
        region: Option<&str>,
        server_id: &str,
        now_ms: u64,
    ) -> (Self, LinkStep) {
        let link = Self::new(key, endpoint, region, Some(server_id.to_owned()), now_ms);
        let hello = federation::sign_handshake(
            HandshakeKind::Hello,
            &link.key,
            &link.endpoint,
            link.region.as_deref(),
            now_ms,
        );
        (link, LinkStep::Send(hello))
    }

    fn new(
        key: SigningKey,
        endpoint: &str,
        region: Option<&str>,
        dialled: Option<String>,
        now_ms: u64,
    ) -> Self {
        let own_id = zajel_wire::keys::server_id_for(&key.verifying_key());
        Self {
            key,
            own_id,
            endpoint: endpoint.to_owned(),
            region: region.map(str::to_owned),
            dialled,
            state: LinkState::Handshaking {
                deadline_ms: now_ms + HANDSHAKE_TIMEOUT_MS,
            },
            incarnation: 0,
            sequence: 0,
        }
    }

    /// The verified server on the other end, once linked.
    pub fn peer(&self) -> Option<&str> {
        match &self.state {
            LinkState::Linked { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Our incarnation (raised when a `suspect` about us arrives).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// When [`Link::on_timeout`] must next be called.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            LinkState::Handshaking { deadline_ms } => Some(deadline_ms),
            LinkState::Linked {
                last_heard_ms,
                next_ping_ms,
                ..
            } => Some(next_ping_ms.min(last_heard_ms + LINK_SILENCE_MS)),
            LinkState::Closed => None,
        }
    }

    /// A deadline passed: the handshake's, a ping's, or the silence limit.
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<LinkStep> {
        match &mut self.state {
            LinkState::Handshaking { deadline_ms } if now_ms >= *deadline_ms => {
                self.state = LinkState::Closed;
                vec![LinkStep::Close(
                    close::HANDSHAKE_TIMEOUT,
                    "Handshake timeout",
                )]
            }
            LinkState::Linked { last_heard_ms, .. }
                if now_ms >= *last_heard_ms + LINK_SILENCE_MS =>
            {
                self.state = LinkState::Closed;
                vec![LinkStep::Close(1000, "Link silent")]
            }
            LinkState::Linked { next_ping_ms, .. } if now_ms >= *next_ping_ms => {
                *next_ping_ms = now_ms + LINK_PING_INTERVAL_MS;
                vec![LinkStep::Ping]
            }
            _ => Vec::new(),
        }
    }

    /// Something (a ping or pong frame) arrived from the other end.
    pub fn on_heard(&mut self, now_ms: u64) {
        if let LinkState::Linked { last_heard_ms, .. } = &mut self.state {
            *last_heard_ms = now_ms;
        }
    }

    /// A text frame arrived.
    pub fn on_frame(&mut self, text: &str, now_ms: u64) -> Vec<LinkStep> {
        if text.len() > MAX_FEDERATION_FRAME_BYTES {
            self.state = LinkState::Closed;
            return vec![LinkStep::Close(1009, "Message Too Big")];
        }
        self.on_heard(now_ms);
        match &self.state {
            LinkState::Closed => Vec::new(),
            LinkState::Handshaking { .. } => self.on_handshake_frame(text, now_ms),
            LinkState::Linked { peer, .. } => {
                let peer = peer.clone();
                self.on_gossip_frame(&peer, text, now_ms)
            }
        }
    }

    fn on_handshake_frame(&mut self, text: &str, now_ms: u64) -> Vec<LinkStep> {
        let expected = if self.dialled.is_some() {
            HandshakeKind::Ack
        } else {
            HandshakeKind::Hello
        };
        // Pre-handshake frames of another type are ignored, as Zajel does.
        let frame_type = federation::OrderedJson::parse(text).ok().and_then(|frame| {
            frame
                .get("type")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        });
        if frame_type.as_deref() != Some(expected.type_name()) {
            return Vec::new();
        }
        let peer = match federation::verify_handshake(expected, text, now_ms) {
            Ok(peer) => peer,
            Err(error) => {
                tracing::info!(kind = error.kind(), %error, "federation handshake refused");
                self.state = LinkState::Closed;
                return vec![LinkStep::Close(
                    close::INVALID_HANDSHAKE,
                    "Invalid handshake signature",
                )];
            }
        };
        if let Some(dialled) = &self.dialled {
            if *dialled != peer.server_id {
                self.state = LinkState::Closed;
                return vec![LinkStep::Close(
                    close::SERVER_ID_MISMATCH,
                    "Server ID mismatch",
                )];
            }
        }
        if peer.server_id == self.own_id {
            self.state = LinkState::Closed;
            return vec![LinkStep::Close(close::INVALID_HANDSHAKE, "Own server id")];
        }
        self.state = LinkState::Linked {
            peer: peer.server_id.clone(),
            last_heard_ms: now_ms,
            next_ping_ms: now_ms + LINK_PING_INTERVAL_MS,
        };
        // `Linked` first: the driver may still refuse the server (not listed,
        // a duplicate) and close before any ack goes out.
        let mut steps = vec![LinkStep::Linked(Box::new(peer))];
        if self.dialled.is_none() {
            steps.push(LinkStep::Send(federation::sign_handshake(
                HandshakeKind::Ack,
                &self.key,
                &self.endpoint,
                self.region.as_deref(),
                now_ms,
            )));
        }
        steps.push(LinkStep::Send(RendezvousLinkMessage::Hello.to_text()));
        steps
    }

    fn on_gossip_frame(&mut self, peer: &str, text: &str, now_ms: u64) -> Vec<LinkStep> {
        let gossip = match federation::verify_gossip(text) {
            Ok(gossip) => gossip,
            Err(federation::FederationError::Type(_)) => return Self::on_other_frame(text),
            Err(error) => {
                tracing::debug!(kind = error.kind(), %error, "federation frame dropped");
                return Vec::new();
            }
        };
        if gossip.sender_id != peer {
            tracing::debug!("gossip signed by another server than the link's: dropped");
            return Vec::new();
        }
        match gossip.subtype.as_str() {
            "ping" => {
                self.sequence += 1;
                vec![LinkStep::Send(federation::sign_gossip(
                    &self.key,
                    "ping_ack",
                    self.sequence,
                    now_ms,
                    federation::ping_ack_payload(self.incarnation),
                ))]
            }
            "suspect" => {
                let about = gossip.payload.get("serverId").and_then(|id| id.as_str());
                let incarnation = gossip
                    .payload
                    .get("incarnation")
                    .and_then(|n| n.as_u64())
                    .unwrap_or(0);
                if about == Some(self.own_id.as_str()) && incarnation >= self.incarnation {
                    self.incarnation = incarnation + 1;
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

impl Link {
    /// A linked frame of another type than `gossip`: ours, or ignored.
    fn on_other_frame(text: &str) -> Vec<LinkStep> {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return Vec::new();
        };
        if !RendezvousLinkMessage::claims(&value) {
            return Vec::new();
        }
        match RendezvousLinkMessage::from_json(&value) {
            Ok(message) => vec![LinkStep::Rendezvous(message)],
            Err(error) => {
                tracing::debug!(kind = error.kind(), %error, "rendezvous link message dropped");
                Vec::new()
            }
        }
    }
}

/// Zajel's duplicate rule: of two links with the same server, the one dialled
/// by the smaller server id stays. True when a link with `peer` that we
/// dialled (`dialled`) or accepted is that one.
pub fn preferred(own_id: &str, peer: &str, dialled: bool) -> bool {
    let dialler = if dialled { own_id } else { peer };
    dialler == own_id.min(peer)
}

/// The servers this relay's registries list (their `peers`), by registry.
#[derive(Debug, Default)]
pub struct FleetView {
    by_registry: Mutex<HashMap<String, Vec<ServerEntry>>>,
    changed: watch::Sender<u64>,
}

impl FleetView {
    /// Replaces what `registry` lists; true when that changed it.
    pub fn update(&self, registry: &str, peers: Vec<ServerEntry>) -> bool {
        let mut by_registry = self.by_registry.lock().expect("fleet lock");
        let ids = |list: &[ServerEntry]| {
            let mut ids: Vec<(String, String)> = list
                .iter()
                .map(|e| (e.server_id.clone(), e.endpoint.clone()))
                .collect();
            ids.sort();
            ids
        };
        // lastSeen moves on every heartbeat: only ids and endpoints count as a change.
        let changed = by_registry
            .get(registry)
            .is_none_or(|known| ids(known) != ids(&peers));
        by_registry.insert(registry.to_owned(), peers);
        if changed {
            self.changed.send_modify(|version| *version += 1);
        }
        changed
    }

    /// Every listed server, once, by server id.
    pub fn servers(&self) -> HashMap<String, ServerEntry> {
        let by_registry = self.by_registry.lock().expect("fleet lock");
        by_registry
            .values()
            .flatten()
            .map(|entry| (entry.server_id.clone(), entry.clone()))
            .collect()
    }

    /// Whether some registry lists `server_id`.
    pub fn lists(&self, server_id: &str) -> bool {
        let by_registry = self.by_registry.lock().expect("fleet lock");
        by_registry
            .values()
            .flatten()
            .any(|entry| entry.server_id == server_id)
    }

    /// Changes when a registry's list changes (ids or endpoints).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Takes the rendezvous messages of linked servers: (server id, link id, message).
pub type LinkMessageHandler = Arc<dyn Fn(&str, u64, RendezvousLinkMessage) + Send + Sync>;

/// Frames queued for one link before they are dropped.
const LINK_QUEUE: usize = 1_024;

/// The live links, by peer server id.
#[derive(Default)]
pub struct Links {
    inner: Mutex<LinksInner>,
    handler: OnceLock<LinkMessageHandler>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("linked", &self.linked())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct LinkEntry {
    id: u64,
    dialled: bool,
    stop: watch::Sender<bool>,
    outbound: mpsc::Sender<String>,
    /// It sent `rendezvous_hello`.
    forwards: bool,
}

#[derive(Debug, Default)]
struct LinksInner {
    next_id: u64,
    linked: HashMap<String, LinkEntry>,
    dialling: HashSet<String>,
    open: usize,
}

impl Links {
    /// Server ids with a live link.
    pub fn linked(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("links lock");
        let mut ids: Vec<String> = inner.linked.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Server ids with a live link that sent `rendezvous_hello`.
    pub fn forwarding(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("links lock");
        let mut ids: Vec<String> = inner
            .linked
            .iter()
            .filter(|(_, entry)| entry.forwards)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Queues `text` on the live link with `server_id`; false when there is
    /// none or its queue is full.
    pub fn send(&self, server_id: &str, text: String) -> bool {
        let inner = self.inner.lock().expect("links lock");
        inner
            .linked
            .get(server_id)
            .is_some_and(|entry| entry.outbound.try_send(text).is_ok())
    }

    /// Where `rendezvous_forward` and `rendezvous_forward_match` go (set once).
    pub fn set_handler(&self, handler: LinkMessageHandler) {
        let _ = self.handler.set(handler);
    }

    /// Changes on every link up, down and `rendezvous_hello`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    /// A live link to `peer` (that sent `rendezvous_hello` when `forwards`), for tests.
    #[cfg(test)]
    pub(crate) fn test_link(&self, peer: &str, forwards: bool) -> mpsc::Receiver<String> {
        let (outbound, queued) = mpsc::channel(LINK_QUEUE);
        let (id, _) = self.insert("", peer, true, outbound).expect("a new link");
        if forwards {
            self.set_forwards(peer, id);
        }
        queued
    }

    fn set_forwards(&self, peer: &str, id: u64) {
        {
            let mut inner = self.inner.lock().expect("links lock");
            match inner.linked.get_mut(peer) {
                Some(entry) if entry.id == id && !entry.forwards => entry.forwards = true,
                _ => return,
            }
        }
        self.bump();
    }

    fn try_open(&self, max: usize) -> bool {
        let mut inner = self.inner.lock().expect("links lock");
        if inner.open >= max {
            return false;
        }
        inner.open += 1;
        true
    }

    fn closed(&self) {
        let mut inner = self.inner.lock().expect("links lock");
        inner.open = inner.open.saturating_sub(1);
    }

    /// Registers a verified link; `Err` when it must close as a duplicate.
    fn insert(
        &self,
        own_id: &str,
        peer: &str,
        dialled: bool,
        outbound: mpsc::Sender<String>,
    ) -> Result<(u64, watch::Receiver<bool>), ()> {
        let mut inner = self.inner.lock().expect("links lock");
        if let Some(existing) = inner.linked.get(peer) {
            // The link dialled by the smaller id stays; between two alike, the older.
            if preferred(own_id, peer, existing.dialled) || !preferred(own_id, peer, dialled) {
                return Err(());
            }
            let _ = existing.stop.send(true);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let (stop, stopped) = watch::channel(false);
        inner.linked.insert(
            peer.to_owned(),
            LinkEntry {
                id,
                dialled,
                stop,
                outbound,
                forwards: false,
            },
        );
        drop(inner);
        self.bump();
        Ok((id, stopped))
    }

    fn remove(&self, peer: &str, id: u64) {
        let mut inner = self.inner.lock().expect("links lock");
        if inner
            .linked
            .get(peer)
            .is_some_and(|existing| existing.id == id)
        {
            inner.linked.remove(peer);
            drop(inner);
            self.bump();
        }
    }
}

/// What the link drivers share.
pub(crate) struct Federation {
    pub key: SigningKey,
    pub own_id: String,
    pub endpoint: String,
    pub region: Option<String>,
    pub config: FederationConfig,
    pub fleet: Arc<FleetView>,
    pub links: Arc<Links>,
}

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FEDERATION_FRAME_BYTES + 1024))
        .max_frame_size(Some(MAX_FEDERATION_FRAME_BYTES + 1024))
}

impl Federation {
    /// Serves a link someone opened on `/federation` or `/server`.
    pub(crate) async fn serve_accepted<S>(
        self: Arc<Self>,
        ws: WebSocketStream<S>,
        shutdown: watch::Receiver<bool>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ws = ws;
        if !self.config.enabled || !self.links.try_open(self.config.max_links) {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Again,
                    reason: "Federation links full".into(),
                }))
                .await;
            return;
        }
        let link = Link::accepted(
            self.key.clone(),
            &self.endpoint,
            self.region.as_deref(),
            now_ms(),
        );
        self.drive(ws, link, Vec::new(), shutdown).await;
        self.links.closed();
    }

    /// Dials `entry`'s `/federation` and keeps the link until it drops.
    async fn dial(self: Arc<Self>, entry: ServerEntry, shutdown: watch::Receiver<bool>) -> bool {
        let url = federation_url(&entry.endpoint);
        let connected = tokio::time::timeout(
            Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            connect(&url, &self.config.extra_roots),
        )
        .await;
        let ws = match connected {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => {
                tracing::debug!(server = %entry.server_id, %url, %error, "federation dial failed");
                return false;
            }
            Err(_) => {
                tracing::debug!(server = %entry.server_id, %url, "federation dial timed out");
                return false;
            }
        };
        let (link, hello) = Link::dialled(
            self.key.clone(),
            &self.endpoint,
            self.region.as_deref(),
            &entry.server_id,
            now_ms(),
        );
        self.drive(ws, link, vec![hello], shutdown).await
    }

    /// Runs one link until it closes; true when it got linked.
    async fn drive<S>(
        &self,
        mut ws: WebSocketStream<S>,
        mut link: Link,
        first: Vec<LinkStep>,
        mut shutdown: watch::Receiver<bool>,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut registered: Option<(String, u64, watch::Receiver<bool>)> = None;
        let mut pending = first;
        let mut was_linked = false;
        let (outbound, mut queued) = mpsc::channel::<String>(LINK_QUEUE);
        loop {
            for step in std::mem::take(&mut pending) {
                match step {
                    LinkStep::Send(text) => {
                        if ws.send(Message::text(text)).await.is_err() {
                            return self.finish(registered, was_linked);
                        }
                    }
                    LinkStep::Close(code, reason) => {
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: reason.into(),
                            }))
                            .await;
                        return self.finish(registered, was_linked);
                    }
                    LinkStep::Linked(peer) => {
                        if !self.fleet.lists(&peer.server_id) {
                            tracing::info!(server = %peer.server_id, "federation link from a server no registry lists: refused");
                            pending =
                                vec![LinkStep::Close(close::INVALID_HANDSHAKE, "Unknown server")];
                            break;
                        }
                        let dialled = link.dialled.is_some();
                        match self.links.insert(
                            &self.own_id,
                            &peer.server_id,
                            dialled,
                            outbound.clone(),
                        ) {
                            Ok((id, stop)) => {
                                tracing::info!(server = %peer.server_id, endpoint = %peer.endpoint, dialled, "federation link up");
                                registered = Some((peer.server_id.clone(), id, stop));
                                was_linked = true;
                            }
                            Err(()) => {
                                pending = vec![LinkStep::Close(
                                    close::DUPLICATE_CONNECTION,
                                    "Duplicate connection",
                                )];
                                break;
                            }
                        }
                    }
                    LinkStep::Ping => {
                        if ws.send(Message::Ping(Default::default())).await.is_err() {
                            return self.finish(registered, was_linked);
                        }
                    }
                    LinkStep::Rendezvous(message) => {
                        let Some((peer, id, _)) = registered.as_ref() else {
                            continue;
                        };
                        if message == RendezvousLinkMessage::Hello {
                            self.links.set_forwards(peer, *id);
                        } else if let Some(handler) = self.links.handler.get() {
                            handler(peer, *id, message);
                        }
                    }
                }
            }
            if !pending.is_empty() {
                continue;
            }
            let deadline = link.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            let replaced = async {
                match registered.as_mut() {
                    Some((_, _, stop)) => {
                        let _ = stop.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => pending = link.on_frame(text.as_str(), now_ms()),
                    Some(Ok(Message::Binary(_))) => {}
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => link.on_heard(now_ms()),
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return self.finish(registered, was_linked),
                    Some(Err(error)) => {
                        tracing::debug!(%error, "federation link failed");
                        return self.finish(registered, was_linked);
                    }
                },
                () = sleep => pending = link.on_timeout(now_ms()),
                Some(text) = queued.recv() => pending = vec![LinkStep::Send(text)],
                () = replaced => {
                    pending = vec![LinkStep::Close(close::DUPLICATE_CONNECTION, "Duplicate connection")];
                }
                () = crate::relay::stopping(&mut shutdown) => {
                    pending = vec![LinkStep::Close(1001, "Server shutting down")];
                }
            }
        }
    }

    fn finish(
        &self,
        registered: Option<(String, u64, watch::Receiver<bool>)>,
        linked: bool,
    ) -> bool {
        if let Some((peer, id, _)) = registered {
            self.links.remove(&peer, id);
            tracing::info!(server = %peer, "federation link down");
        }
        linked
    }

    /// Keeps a link to every server the registries list, until shutdown.
    pub(crate) async fn run_dialler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.config.enabled {
            return;
        }
        let mut changes = self.fleet.subscribe();
        let mut retry: HashMap<String, (tokio::time::Instant, Duration)> = HashMap::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
        loop {
            let now = tokio::time::Instant::now();
            let linked: HashSet<String> = self.links.linked().into_iter().collect();
            for (server_id, entry) in self.fleet.servers() {
                if server_id == self.own_id || linked.contains(&server_id) {
                    continue;
                }
                if retry.get(&server_id).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                {
                    let mut inner = self.links.inner.lock().expect("links lock");
                    if inner.dialling.contains(&server_id) {
                        continue;
                    }
                    inner.dialling.insert(server_id.clone());
                }
                if !self.links.try_open(self.config.max_links) {
                    self.links
                        .inner
                        .lock()
                        .expect("links lock")
                        .dialling
                        .remove(&server_id);
                    break;
                }
                let this = self.clone();
                let done = done_tx.clone();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let linked = this.clone().dial(entry, stop).await;
                    this.links.closed();
                    this.links
                        .inner
                        .lock()
                        .expect("links lock")
                        .dialling
                        .remove(&server_id);
                    let _ = done.send((server_id, linked));
                });
            }
            let next_retry = retry.values().map(|(at, _)| *at).min();
            tokio::select! {
                () = crate::relay::stopping(&mut shutdown) => return,
                changed = changes.changed() => if changed.is_err() { return },
                Some((server_id, linked)) = done_rx.recv() => {
                    let wait = match retry.get(&server_id) {
                        Some((_, last)) if !linked => (*last * 2).min(self.config.retry_max),
                        _ => self.config.retry_min,
                    };
                    retry.insert(server_id, (tokio::time::Instant::now() + wait, wait));
                }
                () = async {
                    match next_retry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }
}

/// Zajel's dial URL: the endpoint with path `/federation` when its path is empty or `/`.
pub fn federation_url(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) if url.path().is_empty() || url.path() == "/" => {
            url.set_path("/federation");
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => format!("{}/federation", endpoint.trim_end_matches('/')),
    }
}

type DialledStream = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    url: &str,
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<DialledStream, String> {
    let tls =
        zajel_client_net::tls::client_config(extra_roots).map_err(|error| error.to_string())?;
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(ws_config()),
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
    )
    .await
    .map_err(|error| error.to_string())?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_wire::keys;

    const NOW: u64 = 1_780_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sent(steps: &[LinkStep]) -> Vec<&str> {
        steps
            .iter()
            .filter_map(|step| match step {
                LinkStep::Send(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_accepted_link_acks_a_good_handshake_then_answers_pings() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        let hello =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW);
        let steps = ours.on_frame(&hello, NOW + 5);
        let ack = sent(&steps)[0];
        let acked = federation::verify_handshake(HandshakeKind::Ack, ack, NOW + 5).unwrap();
        assert_eq!(
            acked.server_id,
            keys::server_id_for(&key(1).verifying_key())
        );
        assert!(
            matches!(steps.first(), Some(LinkStep::Linked(peer)) if peer.endpoint == "ws://them")
        );
        assert_eq!(ours.next_deadline(), Some(NOW + 5 + LINK_PING_INTERVAL_MS));

        let ping = federation::sign_gossip(
            &key(2),
            "ping",
            1,
            NOW,
            federation::OrderedJson::Object(vec![]),
        );
        let steps = ours.on_frame(&ping, NOW + 10);
        let answer = federation::verify_gossip(sent(&steps)[0]).unwrap();
        assert_eq!(answer.subtype, "ping_ack");
        assert_eq!(
            answer.payload.get("incarnation").and_then(|n| n.as_u64()),
            Some(0)
        );
    }

    #[test]
    fn a_suspect_about_us_raises_our_incarnation_and_the_next_ack_says_so() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        let hello =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW);
        ours.on_frame(&hello, NOW);
        let own = keys::server_id_for(&key(1).verifying_key());
        let suspect = federation::sign_gossip(
            &key(2),
            "suspect",
            2,
            NOW,
            federation::OrderedJson::parse(&format!(r#"{{"serverId":"{own}","incarnation":4}}"#))
                .unwrap(),
        );
        assert!(ours.on_frame(&suspect, NOW).is_empty());
        assert_eq!(ours.incarnation(), 5);
    }

    #[test]
    fn gossip_signed_by_a_third_server_or_altered_is_dropped() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        let hello =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW);
        ours.on_frame(&hello, NOW);
        let empty = federation::OrderedJson::Object(vec![]);
        let third = federation::sign_gossip(&key(3), "ping", 1, NOW, empty.clone());
        assert!(ours.on_frame(&third, NOW).is_empty());
        let altered = federation::sign_gossip(&key(2), "ping", 1, NOW, empty)
            .replace("\"sequenceNumber\":1", "\"sequenceNumber\":2");
        assert!(ours.on_frame(&altered, NOW).is_empty());
    }

    #[test]
    fn bad_handshakes_close_with_zajels_codes_and_silence_times_out() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        // Pre-handshake frames of another type are ignored.
        assert!(ours.on_frame(r#"{"type":"gossip"}"#, NOW).is_empty());
        let forged =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW)
                .replace("ws://them", "ws://evil");
        assert_eq!(
            ours.on_frame(&forged, NOW),
            vec![LinkStep::Close(
                close::INVALID_HANDSHAKE,
                "Invalid handshake signature"
            )]
        );

        let mut silent = Link::accepted(key(1), "ws://us", None, NOW);
        assert!(silent.on_timeout(NOW + HANDSHAKE_TIMEOUT_MS - 1).is_empty());
        assert_eq!(
            silent.on_timeout(NOW + HANDSHAKE_TIMEOUT_MS),
            vec![LinkStep::Close(
                close::HANDSHAKE_TIMEOUT,
                "Handshake timeout"
            )]
        );

        let mut oversize = Link::accepted(key(1), "ws://us", None, NOW);
        let big = "x".repeat(MAX_FEDERATION_FRAME_BYTES + 1);
        assert_eq!(
            oversize.on_frame(&big, NOW),
            vec![LinkStep::Close(1009, "Message Too Big")]
        );
    }

    #[test]
    fn a_dialled_link_requires_an_ack_from_the_server_it_dialled() {
        let them = keys::server_id_for(&key(2).verifying_key());
        let (mut ours, hello) = Link::dialled(key(1), "ws://us", Some("eu"), &them, NOW);
        let LinkStep::Send(hello) = hello else {
            panic!("a hello")
        };
        assert!(federation::verify_handshake(HandshakeKind::Hello, &hello, NOW).is_ok());
        let wrong =
            federation::sign_handshake(HandshakeKind::Ack, &key(3), "ws://other", None, NOW);
        assert_eq!(
            ours.on_frame(&wrong, NOW),
            vec![LinkStep::Close(
                close::SERVER_ID_MISMATCH,
                "Server ID mismatch"
            )]
        );
        let (mut ours, _) = Link::dialled(key(1), "ws://us", None, &them, NOW);
        let right = federation::sign_handshake(HandshakeKind::Ack, &key(2), "ws://them", None, NOW);
        let steps = ours.on_frame(&right, NOW);
        let hello = RendezvousLinkMessage::Hello.to_text();
        assert_eq!(
            sent(&steps),
            [hello.as_str()],
            "no ack to an ack, only our hello"
        );
        assert_eq!(ours.peer(), Some(them.as_str()));
    }

    #[test]
    fn rendezvous_messages_pass_only_once_linked_and_only_well_formed() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        let forward = RendezvousLinkMessage::Forward {
            peer_id: "ABC234".into(),
            daily_points: vec![],
            hourly_tokens: vec!["hr_x".into()],
            dead_drops: vec![],
        };
        // Before the handshake: ignored like every other frame.
        assert!(ours.on_frame(&forward.to_text(), NOW).is_empty());
        let hello =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW);
        let steps = ours.on_frame(&hello, NOW);
        // The ack, then our rendezvous_hello.
        assert_eq!(
            sent(&steps).last().copied(),
            Some(RendezvousLinkMessage::Hello.to_text().as_str())
        );
        assert_eq!(
            ours.on_frame(&forward.to_text(), NOW),
            vec![LinkStep::Rendezvous(forward)]
        );
        for hostile in [
            r#"{"type":"rendezvous_forward","hourlyTokens":["hr_x"]}"#,
            r#"{"type":"rendezvous_forward","peerId":"A","hourlyTokens":[7]}"#,
            r#"{"type":"rendezvous_forward_match","peerId":"A","match":{}}"#,
            r#"{"type":"something_else"}"#,
            "not json",
        ] {
            assert!(ours.on_frame(hostile, NOW).is_empty(), "{hostile}");
        }
    }

    #[tokio::test]
    async fn links_queue_frames_and_say_who_takes_forwards() {
        let links = Links::default();
        let mut changes = links.subscribe();
        let (outbound, mut queued) = mpsc::channel(1);
        let (id, _stop) = links.insert("a", "b", true, outbound).unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(links.forwarding().is_empty());
        links.set_forwards("b", id + 1);
        assert!(links.forwarding().is_empty(), "another link's hello");
        links.set_forwards("b", id);
        assert_eq!(links.forwarding(), ["b"]);
        assert!(changes.has_changed().unwrap());
        assert!(links.send("b", "one".into()));
        assert!(!links.send("b", "two".into()), "queue full");
        assert!(!links.send("c", "x".into()), "no link");
        assert_eq!(queued.recv().await.as_deref(), Some("one"));
        links.remove("b", id);
        assert!(links.linked().is_empty());
        assert!(!links.send("b", "three".into()));
    }

    #[test]
    fn a_linked_link_pings_every_interval_and_closes_after_silence() {
        let mut ours = Link::accepted(key(1), "ws://us", None, NOW);
        let hello =
            federation::sign_handshake(HandshakeKind::Hello, &key(2), "ws://them", None, NOW);
        ours.on_frame(&hello, NOW);
        assert!(ours.on_timeout(NOW + LINK_PING_INTERVAL_MS - 1).is_empty());
        assert_eq!(
            ours.on_timeout(NOW + LINK_PING_INTERVAL_MS),
            vec![LinkStep::Ping]
        );
        // A pong 40 s in keeps it alive past the first 90 s.
        ours.on_heard(NOW + 40_000);
        assert_eq!(
            ours.on_timeout(NOW + 2 * LINK_PING_INTERVAL_MS),
            vec![LinkStep::Ping]
        );
        assert_eq!(
            ours.on_timeout(NOW + 3 * LINK_PING_INTERVAL_MS),
            vec![LinkStep::Ping]
        );
        assert_eq!(ours.next_deadline(), Some(NOW + 4 * LINK_PING_INTERVAL_MS));
        assert_eq!(
            ours.on_timeout(NOW + 4 * LINK_PING_INTERVAL_MS),
            vec![LinkStep::Ping]
        );
        // Nothing heard since the pong at 40 s: closed 90 s after it.
        assert_eq!(ours.next_deadline(), Some(NOW + 40_000 + LINK_SILENCE_MS));
        assert_eq!(
            ours.on_timeout(NOW + 40_000 + LINK_SILENCE_MS),
            vec![LinkStep::Close(1000, "Link silent")]
        );
        assert_eq!(ours.next_deadline(), None);
    }

    #[test]
    fn federation_urls_follow_zajels_rule() {
        assert_eq!(
            federation_url("wss://a.example"),
            "wss://a.example/federation"
        );
        assert_eq!(
            federation_url("wss://a.example/"),
            "wss://a.example/federation"
        );
        assert_eq!(
            federation_url("wss://a.example/zajel"),
            "wss://a.example/zajel"
        );
    }

    #[test]
    fn duplicates_keep_the_link_dialled_by_the_smaller_id() {
        let links = Links::default();
        // We are "b"; "a" (smaller) dialled us and we dialled it.
        let queue = || mpsc::channel(1).0;
        let (_, mut first_stop) = links.insert("b", "a", true, queue()).unwrap();
        // The accepted link from the smaller id wins: ours (dialled) is told to stop.
        assert!(links.insert("b", "a", false, queue()).is_ok());
        assert!(*first_stop.borrow_and_update());
        // We are "a" now: an accepted link from "b" loses to our dialled one.
        let links = Links::default();
        links.insert("a", "b", true, queue()).unwrap();
        assert!(links.insert("a", "b", false, queue()).is_err());
    }
}
