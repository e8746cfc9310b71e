//! The directory of registered codes (code → connection) and the pairing
//! flow between them: registration and collisions, pair requests with their
//! limits and timers, responses, and forwarding. One mutex guards the
//! state; frames are handed to outboxes after it is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{self, Forward, ServerMessage};

use crate::metrics::{Metrics, Refusal};
use crate::outbox::Outbox;
use crate::pairing::{PendingRequest, PendingRequests};

/// Pairing settings.
#[derive(Debug, Clone)]
pub(crate) struct PairingSettings {
    pub timeout: Duration,
    pub warning: Duration,
    pub max_pending_per_target: usize,
}

struct Member {
    outbox: Arc<Outbox>,
    public_key: Arc<str>,
}

#[derive(Default)]
struct State {
    codes: HashMap<PairingCode, Member>,
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
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    Registered,
    /// The code is bound to another live connection.
    Collision,
}

impl Hub {
    pub fn new(settings: PairingSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: Mutex::default(),
            settings,
            metrics,
            next_request: AtomicU64::new(1),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `code` to `outbox`'s connection. A connection that held
    /// another code (`previous`) gives it up.
    pub fn register(
        &self,
        outbox: &Arc<Outbox>,
        previous: Option<PairingCode>,
        code: PairingCode,
        public_key: &str,
    ) -> Registration {
        let mut state = self.lock();
        if let Some(existing) = state.codes.get_mut(&code) {
            if existing.outbox.id != outbox.id && !existing.outbox.is_killed() {
                self.metrics.refused(Refusal::CodeCollision);
                return Registration::Collision;
            }
            if existing.outbox.id == outbox.id {
                existing.public_key = Arc::from(public_key);
                return Registration::Registered;
            }
            // A dying connection still held it: take it over.
            state.codes.remove(&code);
            state.pending.drop_code(code);
            self.metrics.code_released();
        }
        if let Some(previous) = previous.filter(|p| *p != code) {
            Self::release_locked(&mut state, &self.metrics, previous, outbox.id);
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

    /// Drops `code` if `connection` still holds it, with every pair request
    /// it made or received.
    pub fn release(&self, code: PairingCode, connection: u64) {
        let mut state = self.lock();
        Self::release_locked(&mut state, &self.metrics, code, connection);
    }

    fn release_locked(state: &mut State, metrics: &Metrics, code: PairingCode, connection: u64) {
        if state
            .codes
            .get(&code)
            .is_some_and(|m| m.outbox.id == connection)
        {
            state.codes.remove(&code);
            state.pending.drop_code(code);
            metrics.code_released();
        }
    }

    /// Codes bound now.
    pub fn registered(&self) -> usize {
        self.lock().codes.len()
    }

    /// `pair_request` from `from` (registered) to `target`. Returns the
    /// reply to the requester, if any.
    pub fn pair_request(
        &self,
        from: PairingCode,
        target: PairingCode,
        proposed_name: Option<String>,
    ) -> Option<ServerMessage> {
        let refuse = || {
            self.metrics.refused(Refusal::PairError);
            Some(ServerMessage::pair_request_failed())
        };
        if from == target {
            return refuse();
        }
        let mut state = self.lock();
        let Some(requester_key) = state.codes.get(&from).map(|m| m.public_key.clone()) else {
            return refuse();
        };
        let Some(target_outbox) = state.codes.get(&target).map(|m| m.outbox.clone()) else {
            drop(state);
            return refuse();
        };
        // A repeated request replaces the earlier one (Zajel).
        if let Some(previous) = state.pending.take(from, target, None) {
            previous.cancel();
        }
        if state.pending.count_for(target) >= self.settings.max_pending_per_target {
            drop(state);
            return refuse();
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let timer = tokio::spawn(Self::request_timer(
            self.me.clone(),
            from,
            target,
            id,
            self.settings.clone(),
        ));
        state.pending.insert(
            target,
            PendingRequest {
                requester: from,
                requester_key: requester_key.clone(),
                id,
                timer: Some(timer.abort_handle()),
            },
        );
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
                if !state.pending.contains(requester, target, id) {
                    return;
                }
                let outbox = |code| state.codes.get(&code).map(|m| m.outbox.clone());
                (outbox(requester), outbox(target))
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
        let Some(request) = state.pending.take(requester, responder, None) else {
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
                outbox.deliver(
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
        if outbox.deliver(delivered.to_text_with_flat_call_fields()) {
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
    use tokio::sync::mpsc::Receiver;

    use crate::outbox::Outbound;

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn hub(timeout_ms: u64, warning_ms: u64) -> Arc<Hub> {
        Hub::new(
            PairingSettings {
                timeout: Duration::from_millis(timeout_ms),
                warning: Duration::from_millis(warning_ms),
                max_pending_per_target: 2,
            },
            Metrics::new(),
        )
    }

    fn connection(id: u64) -> (Arc<Outbox>, Receiver<Outbound>) {
        Outbox::new(id, 16, 1 << 20, Metrics::new())
    }

    async fn next(receiver: &mut Receiver<Outbound>) -> ServerMessage {
        match receiver.recv().await.unwrap() {
            Outbound::Text(text) => ServerMessage::parse(&text).unwrap(),
            other => panic!("unexpected {other:?}"),
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
            assert_eq!(
                hub.register(outbox, None, code(name), KEY),
                Registration::Registered
            );
        }
        assert_eq!(
            hub.register(&a, None, code("TARGET"), KEY),
            Registration::Collision
        );
        assert_eq!(hub.pair_request(code("AAAAAA"), code("TARGET"), None), None);
        assert_eq!(hub.pair_request(code("BBBBBB"), code("TARGET"), None), None);
        assert_eq!(
            hub.pair_request(code("CCCCCC"), code("TARGET"), None),
            Some(ServerMessage::pair_request_failed())
        );
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
        assert_eq!(
            next(&mut a_rx).await,
            ServerMessage::PairExpiring {
                peer_code: "TARGET".into(),
                remaining_seconds: 1
            }
        );
        assert_eq!(
            next(&mut a_rx).await,
            ServerMessage::PairTimeout {
                peer_code: "TARGET".into()
            }
        );
        assert_eq!(hub.pending(), 0);
        assert!(c_rx.try_recv().is_err());
        hub.release(code("TARGET"), 1);
        assert_eq!(hub.registered(), 3);
    }
}
