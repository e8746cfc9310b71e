//! The §5–§7 requests a session hands over (`register_rendezvous`,
//! `link_*`, `register` without `pairingCode`, `update_load`,
//! `get_relays`, `heartbeat`; see [`zajel_wire::rendezvous`]): each goes to
//! its sans-IO machine ([`crate::rendezvous`], [`crate::linking`],
//! [`crate::peer_relays`]) with the clock, and what comes out is delivered:
//! replies to the sender, pushes to the connection holding a pairing code
//! or a peer-relay peerId. Also the timers: a link request's expiry, and
//! the periodic cleanup (expired rendezvous rows, idle peer relays closed
//! with 1000 "Heartbeat timeout").
//!
//! Across relays ([`RelayRequests::attach_federation`]): the points a
//! registration's [`crate::rendezvous::Registered::forwards`] name go to their
//! meeting relay as `rendezvous_forward` over the federation link; there
//! they are stored with `relayId` = the origin's serverId, their live
//! matches go back as `rendezvous_forward_match`, and so do the pushes for
//! them; the origin turns each into a `rendezvous_match` push to its client.
//! A match reported across relays always has a `relayId`: the serverId of
//! the relay where the matched peer is connected. A forward for a peerId a
//! connection of this relay holds is refused (a fleet relay cannot take
//! over this relay's clients' pushes), and a `rendezvous_forward_match`
//! is delivered only for a peerId forwarded to that very relay.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use zajel_wire::pairing::PairingCode;
use zajel_wire::rendezvous::{self as wire, RelayReply, RelayRequest, RelayRequestError};
use zajel_wire::signaling::ServerMessage;

use zajel_wire::rendezvous::MatchedPeer;
use zajel_wire::rendezvous_link::RendezvousLinkMessage;

use crate::config::RendezvousConfig;
use crate::federation::Links as FederationLinks;
use crate::hub::Hub;
use crate::linking::{LinkReply, Links};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::peer_relays::{PeerRelays, PEER_ID_IN_USE};
use crate::rendezvous::{PointOwnership, Push, Rendezvous, RendezvousRefusal, RendezvousSettings};
use crate::rendezvous_store::{RendezvousStore, StoreError};

/// The Unix time in ms (what rendezvous rows expire by, so they outlive a restart).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The frame as JSON if [`wire::is_relay_request`] claims it (a cheap
/// look for the type names first spares other frames a second parse; a
/// type name spelled with JSON escapes, which no client sends, misses it
/// and is answered `Unknown message type`).
pub fn claimed(text: &str) -> Option<Value> {
    const NAMES: [&str; 5] = [
        "register",
        "link_",
        "update_load",
        "get_relays",
        "heartbeat",
    ];
    if text.len() > zajel_wire::signaling::MAX_FRAME_BYTES
        || !NAMES.iter().any(|name| text.contains(name))
    {
        return None;
    }
    serde_json::from_str(text)
        .ok()
        .filter(wire::is_relay_request)
}

/// The rendezvous, link and peer-relay state of one relay.
pub(crate) struct RelayRequests {
    rendezvous: Mutex<Rendezvous>,
    links: Mutex<Links>,
    peers: Mutex<PeerRelays>,
    /// The outboxes of connections holding a peer-relay peerId.
    peer_outboxes: Mutex<HashMap<u64, Arc<Outbox>>>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    server_id: String,
    config: RendezvousConfig,
    me: Weak<RelayRequests>,
    /// The federation links, once attached.
    federation: OnceLock<Arc<FederationLinks>>,
    /// `rendezvous_forward`s waiting to be stored, in arrival order.
    forward_queue: OnceLock<tokio::sync::mpsc::Sender<QueuedForward>>,
    /// Meeting relay side: peerId → the relay that forwarded it last.
    forwarded_in: Mutex<HashMap<String, String>>,
    /// Origin side: this relay's clients' peerIds → the relays they were forwarded to.
    forwarded_out: Mutex<HashMap<String, HashSet<String>>>,
    /// The last `register_rendezvous` of each open connection, while
    /// federating: registered again when the rings change.
    remembered: Mutex<HashMap<u64, wire::RegisterRendezvous>>,
}

/// Points and tokens remembered for refreshes, over all connections.
pub const MAX_REMEMBERED_ITEMS: usize = 1_000_000;

/// A `rendezvous_forward` from a server over a link.
struct QueuedForward {
    server: String,
    link: u64,
    peer_id: String,
    daily: Vec<String>,
    hourly: Vec<String>,
    dead_drops: Vec<(String, String)>,
}

/// Forwards queued before new ones are dropped.
const FORWARD_QUEUE: usize = 4_096;

/// Peers remembered in each of the forwarding maps; beyond, new ones are dropped.
pub const MAX_FORWARDED_PEERS: usize = 100_000;

impl RelayRequests {
    /// Opens the rendezvous database of `config` (in memory without one).
    pub fn open(
        config: &RendezvousConfig,
        ownership: PointOwnership,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        server_id: String,
    ) -> Result<Arc<Self>, StoreError> {
        let store = RendezvousStore::open(config.database.as_deref())?;
        let settings = RendezvousSettings {
            daily_ttl_ms: config.daily_ttl.as_millis() as u64,
            hourly_ttl_ms: config.hourly_ttl.as_millis() as u64,
            max_entries_per_peer: config.max_entries_per_peer,
            max_items_per_connection: config.max_items_per_connection,
            ..RendezvousSettings::default()
        };
        Ok(Arc::new_cyclic(|me| Self {
            rendezvous: Mutex::new(Rendezvous::new(store, settings, ownership)),
            links: Mutex::new(Links::new(config.link_timeout)),
            peers: Mutex::new(PeerRelays::new(config.peer_relay_timeout)),
            peer_outboxes: Mutex::new(HashMap::new()),
            hub,
            metrics,
            server_id,
            config: config.clone(),
            me: me.clone(),
            federation: OnceLock::new(),
            forward_queue: OnceLock::new(),
            forwarded_in: Mutex::new(HashMap::new()),
            forwarded_out: Mutex::new(HashMap::new()),
            remembered: Mutex::new(HashMap::new()),
        }))
    }

    /// Sends forwards over `links` and takes the rendezvous messages that arrive on them.
    pub fn attach_federation(self: &Arc<Self>, links: Arc<FederationLinks>) {
        let me = Arc::downgrade(self);
        links.set_handler(Arc::new(move |server: &str, link: u64, message| {
            if let Some(me) = me.upgrade() {
                me.on_link_message(server, link, message);
            }
        }));
        let _ = self.federation.set(links);
        // Forwards are stored one after the other, in arrival order (SQLite
        // work off the async workers), so a later forward sees an earlier one.
        let (queue, mut queued) = tokio::sync::mpsc::channel::<QueuedForward>(FORWARD_QUEUE);
        let _ = self.forward_queue.set(queue);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(forward) = queued.recv().await {
                let Some(me) = me.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || me.on_forward(&forward)).await;
            }
        });
    }

    fn on_link_message(self: Arc<Self>, server: &str, link: u64, message: RendezvousLinkMessage) {
        match message {
            RendezvousLinkMessage::Hello => {}
            RendezvousLinkMessage::Forward {
                peer_id,
                daily_points,
                hourly_tokens,
                dead_drops,
            } => {
                let queued = self.forward_queue.get().is_some_and(|queue| {
                    queue
                        .try_send(QueuedForward {
                            server: server.to_owned(),
                            link,
                            peer_id,
                            daily: daily_points,
                            hourly: hourly_tokens,
                            dead_drops,
                        })
                        .is_ok()
                });
                if !queued {
                    tracing::warn!(%server, "rendezvous_forward queue full: dropped");
                }
            }
            RendezvousLinkMessage::Match { to, matched } => {
                if self.forwarded_there(&to, server) {
                    self.metrics.rendezvous_forward_match_in();
                    self.deliver_to_peer(&to, RelayReply::RendezvousMatch { matched }.to_text());
                } else {
                    tracing::debug!(%server, "rendezvous_forward_match for a peer not forwarded there: dropped");
                }
            }
            RendezvousLinkMessage::DeadDrops { to, dead_drops } => {
                if self.forwarded_there(&to, server) {
                    // As a reply carries them (Zajel's clients read only liveMatches from it).
                    let reply = RelayReply::RendezvousResult {
                        live_matches: Vec::new(),
                        dead_drops,
                    };
                    self.deliver_to_peer(&to, reply.to_text());
                } else {
                    tracing::debug!(%server, "rendezvous_forward_dead_drops for a peer not forwarded there: dropped");
                }
            }
        }
    }

    /// Whether this relay forwarded `peer_id`'s points to `server`.
    fn forwarded_there(&self, peer_id: &str, server: &str) -> bool {
        lock(&self.forwarded_out)
            .get(peer_id)
            .is_some_and(|servers| servers.contains(server))
    }

    /// A `rendezvous_forward` from `origin`: stored here, matches and dead
    /// drops reported back.
    fn on_forward(&self, forward: &QueuedForward) {
        let QueuedForward {
            server: origin,
            link,
            peer_id,
            daily: daily_points,
            hourly: hourly_tokens,
            dead_drops,
        } = forward;
        let (origin, link, peer_id) = (origin.as_str(), *link, peer_id.as_str());
        let held_here = lock(&self.peers).connection_of(peer_id).is_some()
            || PairingCode::parse(peer_id)
                .ok()
                .is_some_and(|code| self.hub.member(code).is_some());
        if held_here {
            tracing::debug!(%origin, "rendezvous_forward for a peerId held here: refused");
            return;
        }
        {
            let forwarded = lock(&self.forwarded_in);
            if forwarded.len() >= MAX_FORWARDED_PEERS && !forwarded.contains_key(peer_id) {
                tracing::warn!(%origin, "too many forwarded peers: rendezvous_forward dropped");
                return;
            }
        }
        let registered = lock(&self.rendezvous).register_forwarded(
            unix_ms(),
            origin,
            link,
            peer_id,
            daily_points,
            hourly_tokens,
            dead_drops,
        );
        let registered = match registered {
            Ok(registered) => registered,
            Err(refusal) => {
                tracing::info!(%origin, %refusal, "rendezvous_forward refused");
                return;
            }
        };
        self.metrics.rendezvous_forward_in();
        lock(&self.forwarded_in).insert(peer_id.to_owned(), origin.to_owned());
        for found in registered.live_matches {
            let relay_id = if found.relay_id.is_empty() {
                self.server_id.clone()
            } else {
                found.relay_id
            };
            self.send_match(
                origin,
                peer_id,
                MatchedPeer {
                    peer_id: found.peer_id,
                    relay_id: Some(relay_id),
                },
            );
        }
        if !registered.dead_drops.is_empty() {
            let dead_drops = registered
                .dead_drops
                .into_iter()
                .map(|mut found| {
                    if found.relay_id.is_empty() {
                        found.relay_id = self.server_id.clone();
                    }
                    found
                })
                .collect();
            self.send_link(
                origin,
                RendezvousLinkMessage::DeadDrops {
                    to: peer_id.to_owned(),
                    dead_drops,
                },
            );
        }
        for push in registered.pushes {
            self.route_push(push);
        }
    }

    fn send_link(&self, server: &str, message: RendezvousLinkMessage) {
        let Some(links) = self.federation.get() else {
            return;
        };
        if !links.send(server, message.to_text()) {
            tracing::debug!(%server, "rendezvous link message not sent: no link");
        }
    }

    fn send_match(&self, server: &str, to: &str, matched: MatchedPeer) {
        let Some(links) = self.federation.get() else {
            return;
        };
        let message = RendezvousLinkMessage::Match {
            to: to.to_owned(),
            matched,
        };
        if !links.send(server, message.to_text()) {
            tracing::debug!(%server, "rendezvous_forward_match not sent: no link");
        }
    }

    /// A push for an earlier registrant: over the link to the relay that
    /// forwarded its entry, else to its connection here.
    fn route_push(&self, push: Push) {
        let forwarded_by = push.relay_id.as_deref().filter(|relay| {
            lock(&self.forwarded_in)
                .get(&push.peer_id)
                .is_some_and(|origin| origin == relay)
        });
        match (forwarded_by, push.reply) {
            (Some(origin), RelayReply::RendezvousMatch { mut matched }) => {
                if matched.relay_id.as_deref().is_none_or(str::is_empty) {
                    matched.relay_id = Some(self.server_id.clone());
                }
                self.send_match(origin, &push.peer_id, matched);
            }
            (_, reply) => self.deliver_to_peer(&push.peer_id, reply.to_text()),
        }
    }

    fn remember(&self, connection: u64, register: wire::RegisterRendezvous) {
        let mut remembered = lock(&self.remembered);
        let items = |r: &wire::RegisterRendezvous| r.daily_points.len() + r.hourly_tokens.len();
        let held: usize = remembered
            .iter()
            .filter(|(c, _)| **c != connection)
            .map(|(_, r)| items(r))
            .sum();
        if held + items(&register) <= MAX_REMEMBERED_ITEMS {
            remembered.insert(connection, register);
        }
    }

    /// Registers every open connection's last `register_rendezvous` again
    /// whenever the fleet's lists or the links change (a relay joined, left
    /// or died), so that its points reach their new meeting relay without
    /// waiting for the client; the matches this finds are pushed to the
    /// client as `rendezvous_match` (a match may repeat).
    pub async fn run_refresh(
        self: Arc<Self>,
        mut fleet: watch::Receiver<u64>,
        mut links: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                () = crate::relay::stopping(&mut shutdown) => return,
                changed = fleet.changed() => if changed.is_err() { return },
                changed = links.changed() => if changed.is_err() { return },
            }
            fleet.mark_unchanged();
            links.mark_unchanged();
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.refresh_all()).await;
        }
    }

    fn refresh_all(&self) {
        let remembered: Vec<wire::RegisterRendezvous> =
            lock(&self.remembered).values().cloned().collect();
        for register in remembered {
            let Some(peer_id) = register.peer_id.clone() else {
                continue;
            };
            let registered = match lock(&self.rendezvous).refresh(unix_ms(), &register) {
                Ok(registered) => registered,
                Err(refusal) => {
                    tracing::debug!(%refusal, "rendezvous refresh refused");
                    continue;
                }
            };
            let live = match registered.reply {
                RelayReply::RendezvousResult { live_matches, .. } => live_matches,
                RelayReply::RendezvousPartial { local, .. } => local.live_matches,
                _ => Vec::new(),
            };
            for found in live {
                let matched = MatchedPeer {
                    peer_id: found.peer_id,
                    relay_id: (!found.relay_id.is_empty()).then_some(found.relay_id),
                };
                self.deliver_to_peer(&peer_id, RelayReply::RendezvousMatch { matched }.to_text());
            }
            for push in registered.pushes {
                self.route_push(push);
            }
            self.send_forwards(registered.forwards);
        }
    }

    /// Sends a registration's forwards to their meeting relays.
    fn send_forwards(&self, forwards: Vec<(String, RendezvousLinkMessage)>) {
        let Some(links) = self.federation.get() else {
            return;
        };
        for (server, message) in forwards {
            let RendezvousLinkMessage::Forward { peer_id, .. } = &message else {
                continue;
            };
            let peer_id = peer_id.clone();
            if !links.send(&server, message.to_text()) {
                tracing::debug!(%server, "rendezvous_forward not sent: no link");
                continue;
            }
            self.metrics.rendezvous_forward_out();
            let mut out = lock(&self.forwarded_out);
            if out.len() < MAX_FORWARDED_PEERS || out.contains_key(&peer_id) {
                out.entry(peer_id).or_default().insert(server);
            }
        }
    }

    /// Handles a frame [`wire::is_relay_request`] claimed, from the
    /// connection of `outbox`, registered as `code` if it is. Returns the
    /// replies to it, in order.
    pub async fn handle(
        self: &Arc<Self>,
        outbox: &Arc<Outbox>,
        code: Option<PairingCode>,
        value: Value,
    ) -> Vec<String> {
        let request = match RelayRequest::from_json_for_connection(value, Some(code.is_some())) {
            Ok(request) => request,
            Err(error) => {
                // Counted like every other refused frame.
                self.metrics
                    .refused(if error == RelayRequestError::NotRegistered {
                        Refusal::NotRegistered
                    } else {
                        Refusal::InvalidMessage
                    });
                return vec![error.to_error_frame()];
            }
        };
        let connection = outbox.id;
        let now = Instant::now();
        match request {
            RelayRequest::RegisterRendezvous(register) => {
                let relay_peer = lock(&self.peers).peer_id_of(connection).map(str::to_string);
                let held: Vec<String> = code
                    .map(|c| c.to_string())
                    .into_iter()
                    .chain(relay_peer)
                    .collect();
                let peer_id = register.peer_id.clone();
                // SQLite work (up to 1 024 points and tokens) off the async workers.
                let me = self.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let held: Vec<&str> = held.iter().map(String::as_str).collect();
                    let registered =
                        lock(&me.rendezvous).register(unix_ms(), connection, &held, &register);
                    if registered.is_ok() && me.federation.get().is_some() {
                        me.remember(connection, register);
                    }
                    registered
                })
                .await;
                match result {
                    Ok(Ok(registered)) => {
                        lock(&self.peers).touch(now, connection, peer_id.as_deref());
                        for push in registered.pushes {
                            self.route_push(push);
                        }
                        self.send_forwards(registered.forwards);
                        vec![registered.reply.to_text()]
                    }
                    Ok(Err(refusal)) => {
                        if let RendezvousRefusal::Storage(error) = &refusal {
                            tracing::warn!(%error, "register_rendezvous failed");
                        }
                        vec![ServerMessage::error(refusal.to_string()).to_text()]
                    }
                    Err(error) => {
                        tracing::warn!(%error, "register_rendezvous task failed");
                        vec![ServerMessage::error(RENDEZVOUS_UNAVAILABLE).to_text()]
                    }
                }
            }
            RelayRequest::LinkRequest {
                link_code,
                public_key,
                device_name,
            } => {
                let web_code = code.expect("registered: checked by the parser");
                let mobile_present = self.hub.member(link_code).is_some();
                let (reply, sends) = lock(&self.links).request(
                    now,
                    web_code,
                    link_code,
                    public_key,
                    device_name,
                    mobile_present,
                );
                if !sends.is_empty() {
                    self.arm_link_timer();
                }
                self.link_outcome(reply, sends)
            }
            RelayRequest::LinkResponse {
                link_code,
                accepted,
                device_id,
            } => {
                let mobile_code = code.expect("registered: checked by the parser");
                let mobile_key = self
                    .hub
                    .member(mobile_code)
                    .map(|(_, key)| key.to_string())
                    .unwrap_or_default();
                let hub = &self.hub;
                let (reply, sends) = lock(&self.links).respond(
                    mobile_code,
                    &mobile_key,
                    link_code,
                    accepted,
                    device_id,
                    |web| hub.member(web).is_some(),
                );
                self.link_outcome(reply, sends)
            }
            RelayRequest::RegisterPeer {
                peer_id,
                max_connections,
                public_key,
            } => {
                // A pairing code held by another connection is not a peerId
                // anyone else may take (pushes for it would go astray).
                let code_of_another = PairingCode::parse(&peer_id)
                    .ok()
                    .and_then(|c| self.hub.member(c))
                    .is_some_and(|(other, _)| other.id != connection);
                let result = if code_of_another {
                    Err(PEER_ID_IN_USE)
                } else {
                    lock(&self.peers).register(
                        now,
                        connection,
                        &peer_id,
                        max_connections,
                        public_key,
                        &self.server_id,
                        &mut random,
                    )
                };
                match result {
                    Ok(reply) => {
                        lock(&self.peer_outboxes).insert(connection, outbox.clone());
                        vec![reply.to_text()]
                    }
                    Err(text) => vec![ServerMessage::error(text).to_text()],
                }
            }
            RelayRequest::UpdateLoad {
                peer_id,
                connected_count,
            } => vec![lock(&self.peers)
                .update_load(now, connection, peer_id, connected_count)
                .to_text()],
            RelayRequest::GetRelays { peer_id, count } => vec![lock(&self.peers)
                .get_relays(peer_id.as_deref(), count, &mut random)
                .to_text()],
            RelayRequest::Heartbeat { peer_id } => vec![lock(&self.peers)
                .heartbeat(now, connection, peer_id.as_deref(), unix_ms())
                .to_text()],
        }
    }

    /// The connection `connection` closed; it held `code` (already
    /// released from the hub) if any.
    pub fn connection_closed(&self, connection: u64, code: Option<PairingCode>) {
        lock(&self.rendezvous).connection_closed(connection);
        lock(&self.remembered).remove(&connection);
        lock(&self.peer_outboxes).remove(&connection);
        if let Some(peer_id) = lock(&self.peers).connection_closed(connection) {
            self.drop_peer_entries(&peer_id);
        }
        // Only when no other connection (the same key's new one) holds the code now.
        if let Some(code) = code.filter(|c| self.hub.member(*c).is_none()) {
            lock(&self.forwarded_out).remove(&code.to_string());
            let sends = lock(&self.links).code_left(code);
            self.deliver(sends);
        }
    }

    /// Sweeps expired rendezvous rows and closes idle peer relays every
    /// cleanup interval until the relay stops.
    pub async fn run_cleanup(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let interval = self
            .config
            .cleanup_interval
            .max(std::time::Duration::from_millis(10));
        loop {
            tokio::select! {
                () = crate::relay::stopping(&mut shutdown) => return,
                () = tokio::time::sleep(interval) => {}
            }
            let me = self.clone();
            // A sweep may delete many rows: off the async workers.
            let _ =
                tokio::task::spawn_blocking(move || me.cleanup(Instant::now(), unix_ms())).await;
        }
    }

    /// One cleanup pass.
    pub fn cleanup(&self, now: Instant, now_ms: u64) {
        match lock(&self.rendezvous).sweep(now_ms) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired rendezvous entries swept"),
            Err(error) => tracing::warn!(%error, "rendezvous sweep failed"),
        }
        let idle = lock(&self.peers).reap(now);
        for (peer_id, connection) in idle {
            if let Some(outbox) = lock(&self.peer_outboxes).remove(&connection) {
                let (code, reason) = wire::HEARTBEAT_TIMEOUT_CLOSE;
                outbox.close(code, reason);
            }
            self.drop_peer_entries(&peer_id);
            tracing::debug!(
                connection,
                "peer relay silent past the heartbeat timeout: closed"
            );
        }
    }

    fn drop_peer_entries(&self, peer_id: &str) {
        if let Err(error) = lock(&self.rendezvous).drop_peer(peer_id) {
            tracing::warn!(%error, "dropping a peer relay's rendezvous entries failed");
        }
    }

    /// A `rendezvous_match` for `peer_id`: its peer-relay connection, else
    /// the connection holding it as a pairing code, else dropped.
    fn deliver_to_peer(&self, peer_id: &str, text: String) {
        let relay_connection = lock(&self.peers).connection_of(peer_id);
        let relay_outbox =
            relay_connection.and_then(|c| lock(&self.peer_outboxes).get(&c).cloned());
        if let Some(outbox) = relay_outbox {
            outbox.deliver(text);
        } else if let Some((outbox, _)) = PairingCode::parse(peer_id)
            .ok()
            .and_then(|c| self.hub.member(c))
        {
            outbox.deliver(text);
        }
    }

    fn deliver(&self, sends: Vec<(PairingCode, RelayReply)>) {
        for (code, reply) in sends {
            if let Some((outbox, _)) = self.hub.member(code) {
                outbox.deliver(reply.to_text());
            }
        }
    }

    fn link_outcome(
        &self,
        reply: Option<LinkReply>,
        sends: Vec<(PairingCode, RelayReply)>,
    ) -> Vec<String> {
        self.deliver(sends);
        match reply {
            None => Vec::new(),
            Some(LinkReply::Error(text)) => vec![ServerMessage::error(text).to_text()],
            Some(LinkReply::Reply(reply)) => vec![reply.to_text()],
        }
    }

    /// Expires the link requests due by the time it wakes.
    fn arm_link_timer(&self) {
        let me = self.me.clone();
        let timeout = self.config.link_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(me) = me.upgrade() else { return };
            let sends = lock(&me.links).expire(Instant::now());
            me.deliver(sends);
        });
    }
}

/// `error` when the rendezvous work could not run at all.
const RENDEZVOUS_UNAVAILABLE: &str = "Rendezvous storage unavailable";

fn random() -> u64 {
    getrandom::u64().unwrap_or(0)
}
