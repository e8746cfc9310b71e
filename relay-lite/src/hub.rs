//! The directory of registered codes (code → connection) and the pairing
//! flow between them: registration, collisions and the codes held for
//! their key after a drop ([`crate::bindings`]), pair requests with their
//! limits and timers (answerable or not, see [`crate::pairing`]),
//! responses, and forwarding. One mutex guards the state; frames are
//! handed to outboxes after it is released.
//!
//! A requester cannot tell a live target from a dead one: a request to an
//! unknown code, to itself, to a code held after a drop, to a target whose
//! pending slots are full, or over the per-(target, address) cap is kept
//! as a ghost that runs the same timer as a request to a live target that
//! never answers (`pair_expiring`, then `pair_timeout`), and a request
//! whose target leaves becomes such a ghost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{self, Forward, ServerMessage};

use crate::bindings::{Claim, CodeHolds};
use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::pairing::{Delivery, PendingRequest, PendingRequests};

/// Pairing settings.
#[derive(Debug, Clone)]
pub(crate) struct PairingSettings {
    pub timeout: Duration,
    pub warning: Duration,
    pub max_pending_per_target: usize,
    pub max_pending_per_target_per_address: usize,
    pub max_pending_per_requester: usize,
    /// How long a dropped code stays held for its key.
    pub code_grace: Duration,
    /// Most codes held at once (the relay's connection cap).
    pub max_held_codes: usize,
}

struct Member {
    outbox: Arc<Outbox>,
    public_key: Arc<str>,
}

struct State {
    codes: HashMap<PairingCode, Member>,
    holds: CodeHolds,
    pending: PendingRequests,
}

/// Codes, connections and pending pair requests.
pub(crate) struct Hub {
    state: Mutex<State>,
    settings: PairingSettings,
    metrics: Arc<Metrics>,
    next_request: AtomicU64,
    me: Weak<Hub>,
}

/// What `register` did.
#[derive(Debug)]
pub(crate) enum Registration {
    Registered,
    /// The code is bound to another live connection, or held for another key.
    Collision,
    /// The same key holds the code on this other connection, which looks
    /// alive: probe it, then call `register` again with its id as
    /// `replaceable` if it did not answer.
    HeldBySameKey(Arc<Outbox>),
}

impl Hub {
    pub fn new(settings: PairingSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State {
                codes: HashMap::new(),
                holds: CodeHolds::new(settings.code_grace, settings.max_held_codes),
                pending: PendingRequests::default(),
            }),
            settings,
            metrics,
            next_request: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `code` (with `public_key`) to `outbox`'s connection. A
    /// connection that held another code (`previous`) gives it up (no hold:
    /// it let go of it itself). A code bound to another connection is a
    /// collision, unless that connection registered it with the same key:
    /// then it is [`Registration::HeldBySameKey`] while that connection looks
    /// alive, and is taken over (that connection is disconnected) when it is
    /// dying or is `replaceable` (it did not answer the probe). A code held
    /// after a drop goes only to the key it is held for.
    pub fn register(
        &self,
        outbox: &Arc<Outbox>,
        previous: Option<PairingCode>,
        code: PairingCode,
        public_key: &str,
        replaceable: Option<u64>,
    ) -> Registration {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(existing) = state.codes.get_mut(&code) {
            if existing.outbox.id == outbox.id {
                existing.public_key = Arc::from(public_key);
                return Registration::Registered;
            }
            if *existing.public_key != *public_key {
                // Another key: a collision while the holder lives, and a held
                // code once it is dying.
                self.metrics.refused(if existing.outbox.is_killed() {
                    Refusal::CodeHeld
                } else {
                    Refusal::CodeCollision
                });
                return Registration::Collision;
            }
            let replace = existing.outbox.is_killed() || replaceable == Some(existing.outbox.id);
            if !replace {
                return Registration::HeldBySameKey(existing.outbox.clone());
            }
            // The owner's new connection takes the code from its dead one.
            let old = state.codes.remove(&code).expect("present");
            old.outbox.kill_replaced();
            state.pending.drop_code(code);
            self.metrics.code_released();
        } else if state.holds.claim(code, public_key, now) == Claim::HeldForAnotherKey {
            self.metrics.refused(Refusal::CodeHeld);
            return Registration::Collision;
        }
        if let Some(previous) = previous.filter(|p| *p != code) {
            Self::release_locked(&mut state, &self.metrics, previous, outbox.id, None);
        }
        state.codes.insert(
            code,
            Member {
                outbox: outbox.clone(),
                public_key: Arc::from(public_key),
            },
        );
        self.metrics.code_registered();
        Registration::Registered
    }

    /// The old connection of a [`Registration::HeldBySameKey`] answered the
    /// probe: the new one gets a collision.
    pub fn refuse_same_key(&self) -> Registration {
        self.metrics.refused(Refusal::CodeCollision);
        Registration::Collision
    }

    /// `connection` closed: drops `code` if it still holds it, with the
    /// requests it made (the requests it received become ghosts), and holds
    /// the code for its key for the grace period.
    pub fn release(&self, code: PairingCode, connection: u64) {
        let now = Instant::now();
        let mut state = self.lock();
        Self::release_locked(&mut state, &self.metrics, code, connection, Some(now));
    }

    /// Drops `code` if `connection` holds it; `hold_from`: hold it for its
    /// key from then on.
    fn release_locked(
        state: &mut State,
        metrics: &Metrics,
        code: PairingCode,
        connection: u64,
        hold_from: Option<Instant>,
    ) {
        if state
            .codes
            .get(&code)
            .is_some_and(|m| m.outbox.id == connection)
        {
            let member = state.codes.remove(&code).expect("present");
            state.pending.drop_code(code);
            if let Some(now) = hold_from {
                state.holds.hold(code, member.public_key, now);
            }
            metrics.code_released();
        }
    }

    /// The connection holding `code` and the key it registered with.
    pub fn member(&self, code: PairingCode) -> Option<(Arc<Outbox>, Arc<str>)> {
        self.lock()
            .codes
            .get(&code)
            .map(|m| (m.outbox.clone(), m.public_key.clone()))
    }

    /// Codes bound now.
    pub fn registered(&self) -> usize {
        self.lock().codes.len()
    }

    /// `pair_request` from `from` (its code and connection id) at client
    /// address `source` to `target`. Returns the reply to the requester, if
    /// any: none unless the requester itself is over a limit, whatever the
    /// target (see the module docs).
    pub fn pair_request(
        &self,
        from: (PairingCode, u64),
        source: IpAddr,
        target: PairingCode,
        proposed_name: Option<String>,
    ) -> Option<ServerMessage> {
        let (from, connection) = from;
        let mut state = self.lock();
        let Some(requester_key) = state
            .codes
            .get(&from)
            .filter(|m| m.outbox.id == connection)
            .map(|m| m.public_key.clone())
        else {
            drop(state);
            self.metrics.refused(Refusal::PairError);
            return Some(ServerMessage::pair_request_failed());
        };
        // A repeated request replaces the earlier one (Zajel), answerable or not.
        if let Some(previous) = state.pending.take(from, target, None) {
            previous.cancel();
        }
        if state.pending.open_by(from) >= self.settings.max_pending_per_requester {
            drop(state);
            self.metrics.refused(Refusal::PairRequesterLimit);
            return Some(ServerMessage::pair_request_failed());
        }
        let target_outbox = match state.codes.get(&target) {
            None => {
                self.metrics.refused(Refusal::PairUnanswerable);
                None
            }
            Some(_) if target == from => {
                self.metrics.refused(Refusal::PairUnanswerable);
                None
            }
            Some(_) if state.pending.count_for(target) >= self.settings.max_pending_per_target => {
                self.metrics.refused(Refusal::PairUnanswerable);
                None
            }
            Some(_)
                if state.pending.count_for_source(target, source)
                    >= self.settings.max_pending_per_target_per_address =>
            {
                self.metrics.refused(Refusal::PairAddressLimit);
                None
            }
            Some(member) => Some(member.outbox.clone()),
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let timer = tokio::spawn(Self::request_timer(
            self.me.clone(),
            from,
            target,
            id,
            self.settings.clone(),
        ));
        let request = PendingRequest {
            requester: from,
            requester_key: requester_key.clone(),
            source,
            id,
            timer: Some(timer.abort_handle()),
        };
        let Some(target_outbox) = target_outbox else {
            state.pending.insert_ghost(target, request);
            return None;
        };
        state.pending.insert(target, request);
        drop(state);
        let incoming = ServerMessage::PairIncoming {
            from_code: from.to_string(),
            from_public_key: requester_key.to_string(),
            expires_in: self.settings.timeout.as_millis() as u64,
            proposed_name: proposed_name.filter(|name| !name.is_empty()),
        };
        if target_outbox.deliver(incoming.to_text()) {
            self.metrics.pair_requested();
        }
        None
    }

    /// Warns and expires one request; a ghost's requester hears the same
    /// frames at the same times (its target hears nothing).
    async fn request_timer(
        hub: Weak<Hub>,
        requester: PairingCode,
        target: PairingCode,
        id: u64,
        settings: PairingSettings,
    ) {
        if settings.warning < settings.timeout {
            tokio::time::sleep(settings.timeout - settings.warning).await;
            let Some(hub) = hub.upgrade() else { return };
            let remaining = settings.warning.as_millis().div_ceil(1000) as u64;
            let outboxes = {
                let state = hub.lock();
                let Some(delivery) = state.pending.delivery(requester, target, id) else {
                    return;
                };
                let outbox = |code| state.codes.get(&code).map(|m| m.outbox.clone());
                let target_outbox = match delivery {
                    Delivery::Live => outbox(target),
                    Delivery::Ghost => None,
                };
                (outbox(requester), target_outbox)
            };
            let expiring = |peer: PairingCode| {
                ServerMessage::PairExpiring {
                    peer_code: peer.to_string(),
                    remaining_seconds: remaining,
                }
                .to_text()
            };
            if let Some(outbox) = outboxes.0 {
                outbox.deliver(expiring(target));
            }
            if let Some(outbox) = outboxes.1 {
                outbox.deliver(expiring(requester));
            }
            drop(hub);
            tokio::time::sleep(settings.warning).await;
        } else {
            tokio::time::sleep(settings.timeout).await;
        }
        let Some(hub) = hub.upgrade() else { return };
        let requester_outbox = {
            let mut state = hub.lock();
            if state.pending.take(requester, target, Some(id)).is_none() {
                return;
            }
            state.codes.get(&requester).map(|m| m.outbox.clone())
        };
        if let Some(outbox) = requester_outbox {
            outbox.deliver(
                ServerMessage::PairTimeout {
                    peer_code: target.to_string(),
                }
                .to_text(),
            );
        }
    }

    /// `pair_response` from `responder` about the request from `requester`.
    /// Returns the reply to the responder.
    pub fn pair_response(
        &self,
        responder: PairingCode,
        requester: PairingCode,
        accepted: bool,
    ) -> Option<ServerMessage> {
        let mut state = self.lock();
        let Some(request) = state.pending.take_live(requester, responder) else {
            drop(state);
            self.metrics.refused(Refusal::PairError);
            return Some(ServerMessage::PairError {
                error: signaling::NO_PENDING_REQUEST.to_string(),
            });
        };
        let requester_key = request.requester_key.clone();
        request.cancel();
        let requester_outbox = state.codes.get(&requester).map(|m| m.outbox.clone());
        let responder_key = state.codes.get(&responder).map(|m| m.public_key.clone());
        drop(state);
        if accepted {
            let responder_key = responder_key?;
            if let Some(outbox) = requester_outbox {
                outbox.deliver_engaging(
                    ServerMessage::PairMatched {
                        peer_code: responder.to_string(),
                        peer_public_key: responder_key.to_string(),
                        is_initiator: true,
                    }
                    .to_text(),
                );
            }
            self.metrics.pair_matched();
            Some(ServerMessage::PairMatched {
                peer_code: requester.to_string(),
                peer_public_key: requester_key.to_string(),
                is_initiator: false,
            })
        } else {
            if let Some(outbox) = requester_outbox {
                outbox.deliver(
                    ServerMessage::PairRejected {
                        peer_code: responder.to_string(),
                    }
                    .to_text(),
                );
            }
            None
        }
    }

    /// Forwards a message (any `ForwardKind`) from `from` to its target.
    /// Returns the error reply, if any. Call messages carry the web
    /// client's flat fields too.
    pub fn forward(&self, from: PairingCode, forward: &Forward) -> Option<ServerMessage> {
        let target = forward.target;
        let outbox = self.lock().codes.get(&target).map(|m| m.outbox.clone());
        let Some(outbox) = outbox else {
            self.metrics.refused(Refusal::PeerNotFound);
            return Some(ServerMessage::peer_not_found(target.as_str()));
        };
        let delivered = ServerMessage::Forwarded(forward.delivered_from(from));
        let text = delivered.to_text_with_flat_call_fields();
        let queued =
            if forward.kind == signaling::ForwardKind::Call(zajel_wire::call::CallKind::Offer) {
                outbox.deliver_engaging(text)
            } else {
                outbox.deliver(text)
            };
        if queued {
            self.metrics.forwarded(forward.kind);
            None
        } else {
            Some(ServerMessage::error(format!(
                "Failed to forward {} to {target}",
                forward.kind.type_name()
            )))
        }
    }

    /// Pending pair requests now.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::outbox::{Outbound, Receiver};

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const OTHER_KEY: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=";
    const HERE: [u8; 4] = [10, 0, 0, 1];

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn settings(timeout_ms: u64, warning_ms: u64) -> PairingSettings {
        PairingSettings {
            timeout: Duration::from_millis(timeout_ms),
            warning: Duration::from_millis(warning_ms),
            max_pending_per_target: 2,
            max_pending_per_target_per_address: 2,
            max_pending_per_requester: 20,
            code_grace: Duration::from_secs(60),
            max_held_codes: 1_000,
        }
    }

    fn hub(timeout_ms: u64, warning_ms: u64) -> Arc<Hub> {
        Hub::new(settings(timeout_ms, warning_ms), Metrics::new())
    }

    fn connection(id: u64) -> (Arc<Outbox>, Receiver) {
        Outbox::new(id, 16, 1 << 20, Metrics::new())
    }

    async fn next(receiver: &mut Receiver) -> ServerMessage {
        match receiver.recv().await.unwrap() {
            Outbound::Text(text) => ServerMessage::parse(&text).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn register(hub: &Hub, outbox: &Arc<Outbox>, name: &str, key: &str) -> Registration {
        hub.register(outbox, None, code(name), key, None)
    }

    fn request(
        hub: &Hub,
        from: (&str, u64),
        source: [u8; 4],
        target: &str,
    ) -> Option<ServerMessage> {
        hub.pair_request(
            (code(from.0), from.1),
            IpAddr::from(source),
            code(target),
            None,
        )
    }

    /// The frames a requester hears for one request, each with when it came
    /// (on the paused clock), until `pair_timeout`.
    async fn heard(receiver: &mut Receiver, start: Instant) -> Vec<(Duration, String)> {
        let mut frames = Vec::new();
        loop {
            let message = next(receiver).await;
            let done = matches!(message, ServerMessage::PairTimeout { .. });
            frames.push((start.elapsed(), message.to_text()));
            if done {
                return frames;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_warn_then_expire_and_respect_the_per_target_cap() {
        let hub = hub(1_000, 400);
        let (target, mut target_rx) = connection(1);
        let (a, mut a_rx) = connection(2);
        let (b, _b_rx) = connection(3);
        let (c, mut c_rx) = connection(4);
        for (outbox, name) in [
            (&target, "TARGET"),
            (&a, "AAAAAA"),
            (&b, "BBBBBB"),
            (&c, "CCCCCC"),
        ] {
            assert!(matches!(
                register(&hub, outbox, name, KEY),
                Registration::Registered
            ));
        }
        assert!(matches!(
            register(&hub, &a, "TARGET", OTHER_KEY),
            Registration::Collision
        ));
        assert_eq!(request(&hub, ("AAAAAA", 2), HERE, "TARGET"), None);
        assert_eq!(request(&hub, ("BBBBBB", 3), [10, 0, 0, 2], "TARGET"), None);
        // The third is over the cap: no reply now either, and TARGET never sees it.
        assert_eq!(request(&hub, ("CCCCCC", 4), [10, 0, 0, 3], "TARGET"), None);
        assert!(matches!(
            next(&mut target_rx).await,
            ServerMessage::PairIncoming {
                expires_in: 1_000,
                ..
            }
        ));
        assert!(matches!(
            next(&mut target_rx).await,
            ServerMessage::PairIncoming { .. }
        ));
        let expiring = ServerMessage::PairExpiring {
            peer_code: "TARGET".into(),
            remaining_seconds: 1,
        };
        let timeout = ServerMessage::PairTimeout {
            peer_code: "TARGET".into(),
        };
        assert_eq!(next(&mut a_rx).await, expiring);
        assert_eq!(next(&mut c_rx).await, expiring);
        assert_eq!(next(&mut a_rx).await, timeout);
        assert_eq!(next(&mut c_rx).await, timeout);
        assert_eq!(hub.pending(), 0);
        hub.release(code("TARGET"), 1);
        assert_eq!(hub.registered(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn live_dead_self_held_and_full_targets_sound_the_same() {
        let hub = hub(1_000, 400);
        let (live, mut live_rx) = connection(1);
        let (gone, _gone_rx) = connection(2);
        assert!(matches!(
            register(&hub, &live, "LYVE22", KEY),
            Registration::Registered
        ));
        assert!(matches!(
            register(&hub, &gone, "HELD22", KEY),
            Registration::Registered
        ));
        hub.release(code("HELD22"), 2);
        // Two requests from one address fill LYVE22's per-address share.
        let mut requesters = Vec::new();
        for (id, name) in (10..).zip(["REQAA2", "REQBB2", "REQCC2", "REQDD2", "REQEE2", "REQFF2"]) {
            let (outbox, rx) = connection(id);
            assert!(matches!(
                register(&hub, &outbox, name, OTHER_KEY),
                Registration::Registered
            ));
            requesters.push((name, id, outbox, rx));
        }
        let targets = ["LYVE22", "LYVE22", "LYVE22", "DEAD22", "REQEE2", "HELD22"];
        let start = Instant::now();
        for ((name, id, _, _), target) in requesters.iter().zip(targets) {
            assert_eq!(
                request(&hub, (name, *id), HERE, target),
                None,
                "{name} → {target}"
            );
        }
        for _ in 0..2 {
            assert!(matches!(
                next(&mut live_rx).await,
                ServerMessage::PairIncoming { .. }
            ));
        }
        // Every requester listens at once, so each frame is timed when it comes.
        let listeners: Vec<_> = requesters
            .into_iter()
            .zip(targets)
            .map(|((name, _, outbox, mut rx), target)| {
                tokio::spawn(async move {
                    let frames = heard(&mut rx, start).await;
                    drop(outbox);
                    // The same frames at the same times, but for the peer code.
                    let frames: Vec<_> = frames
                        .into_iter()
                        .map(|(at, text)| (at, text.replace(target, "PEER")))
                        .collect();
                    (name, frames)
                })
            })
            .collect();
        let mut heard_by = Vec::new();
        for listener in listeners {
            heard_by.push(listener.await.unwrap());
        }
        let expected = vec![
            (
                Duration::from_millis(600),
                r#"{"type":"pair_expiring","peerCode":"PEER","remainingSeconds":1}"#.to_string(),
            ),
            (
                Duration::from_millis(1_000),
                r#"{"type":"pair_timeout","peerCode":"PEER"}"#.to_string(),
            ),
        ];
        for (name, frames) in heard_by {
            assert_eq!(frames, expected, "{name}");
        }
        // The live target saw two requests, and heard them expire.
        for _ in 0..2 {
            assert!(matches!(
                next(&mut live_rx).await,
                ServerMessage::PairExpiring { .. }
            ));
        }
        assert!(live_rx.try_recv().is_err());
        assert_eq!(hub.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_target_leaves_still_times_out() {
        let hub = hub(1_000, 400);
        let (target, _target_rx) = connection(1);
        let (a, mut a_rx) = connection(2);
        register(&hub, &target, "TARGET", KEY);
        register(&hub, &a, "AAAAAA", OTHER_KEY);
        let start = Instant::now();
        assert_eq!(request(&hub, ("AAAAAA", 2), HERE, "TARGET"), None);
        hub.release(code("TARGET"), 1);
        let frames = heard(&mut a_rx, start).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].0, Duration::from_millis(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn ghosts_count_against_their_requester() {
        let hub = Hub::new(
            PairingSettings {
                max_pending_per_requester: 3,
                ..settings(1_000, 400)
            },
            Metrics::new(),
        );
        let (a, _a_rx) = connection(1);
        register(&hub, &a, "AAAAAA", KEY);
        for target in ["DEADAA", "DEADBB", "DEADCC"] {
            assert_eq!(request(&hub, ("AAAAAA", 1), HERE, target), None);
        }
        // Repeating one replaces it; a fourth target is over the cap.
        assert_eq!(request(&hub, ("AAAAAA", 1), HERE, "DEADCC"), None);
        assert_eq!(
            request(&hub, ("AAAAAA", 1), HERE, "DEADDD"),
            Some(ServerMessage::pair_request_failed())
        );
        assert_eq!(hub.pending(), 3);
        hub.release(code("AAAAAA"), 1);
        assert_eq!(hub.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_code_is_held_for_its_key_during_the_grace() {
        let hub = hub(1_000, 400);
        let (owner, _owner_rx) = connection(1);
        let (squatter, _squatter_rx) = connection(2);
        let (back, _back_rx) = connection(3);
        register(&hub, &owner, "PWNER2", KEY);
        hub.release(code("PWNER2"), 1);
        assert!(matches!(
            register(&hub, &squatter, "PWNER2", OTHER_KEY),
            Registration::Collision
        ));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            register(&hub, &squatter, "PWNER2", OTHER_KEY),
            Registration::Collision
        ));
        assert!(matches!(
            register(&hub, &back, "PWNER2", KEY),
            Registration::Registered
        ));
        // Back with its owner: live again, so a collision for everyone else.
        hub.release(code("PWNER2"), 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        // The grace is over: the code is free.
        assert!(matches!(
            register(&hub, &squatter, "PWNER2", OTHER_KEY),
            Registration::Registered
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_key_on_a_new_connection_probes_then_takes_over() {
        let hub = hub(1_000, 400);
        let (old, _old_rx) = connection(1);
        let (new, _new_rx) = connection(2);
        register(&hub, &old, "PWNER2", KEY);
        let Registration::HeldBySameKey(held) = register(&hub, &new, "PWNER2", KEY) else {
            panic!("expected a probe first");
        };
        assert_eq!(held.id, 1);
        // It did not answer: the new connection takes over, the old one is disconnected.
        assert!(matches!(
            hub.register(&new, None, code("PWNER2"), KEY, Some(1)),
            Registration::Registered
        ));
        assert!(old.is_killed());
        // The old connection's close does not release the new one's code.
        hub.release(code("PWNER2"), 1);
        assert_eq!(hub.registered(), 1);
        let (squatter, _squatter_rx) = connection(3);
        assert!(matches!(
            register(&hub, &squatter, "PWNER2", OTHER_KEY),
            Registration::Collision
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_grace_frees_the_code_at_once() {
        let hub = Hub::new(
            PairingSettings {
                code_grace: Duration::ZERO,
                ..settings(1_000, 400)
            },
            Metrics::new(),
        );
        let (owner, _owner_rx) = connection(1);
        let (other, _other_rx) = connection(2);
        register(&hub, &owner, "PWNER2", KEY);
        hub.release(code("PWNER2"), 1);
        assert!(matches!(
            register(&hub, &other, "PWNER2", OTHER_KEY),
            Registration::Registered
        ));
    }
}
