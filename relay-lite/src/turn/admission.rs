//! What the TURN server lets through beyond credentials: the peer policy
//! (CreatePermission and ChannelBind naming a denied peer are answered 403
//! Forbidden, a Send indication to one is dropped; see `peer_policy`), the
//! allocation quotas (an Allocate over its username's or its client IP's
//! quota is answered 486 Allocation Quota Reached; see `quota`), and the
//! directory of live relayed addresses the peer policy consults. Listeners
//! ask [`Admission::admit`] about each STUN message before the webrtc-rs
//! server sees it; relay sockets ask [`Admission::peer_allowed`] about every
//! datagram, so nothing reaches a denied peer whatever the server does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{ErrorCode, ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN};
use stun::message::{
    Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use turn::proto::peeraddr::PeerAddress;

use super::peer_policy::{PeerDenial, PeerPolicy};
use super::quota::{AllocationHold, AllocationQuotas, QuotaRefusal};
use super::{Counters, TurnRefusal};

/// The peer policy and quotas of one TURN server, shared by its listeners
/// and relay sockets.
pub(crate) struct Admission {
    policy: PeerPolicy,
    quotas: AllocationQuotas,
    /// Relayed addresses of live allocations (advertised and bound).
    live_relays: Mutex<HashSet<SocketAddr>>,
    counters: Arc<Counters>,
}

/// What a listener does with one message.
pub(crate) enum Admit {
    /// Hand it to the server.
    Pass,
    /// Answer with this error response instead.
    Refuse(Vec<u8>),
    /// Ignore it (a Send indication to a denied peer).
    Drop,
}

/// The quota an Allocate being handled took, per listener: the webrtc-rs
/// server handles one listener's messages one at a time, so the Allocate
/// the listener handed out last is the one its relay generator is asked
/// to serve. Replaced (so released, if unused) with each message.
#[derive(Default)]
pub(crate) struct PendingAllocation(Mutex<Option<AllocationHold>>);

impl PendingAllocation {
    fn set(&self, hold: Option<AllocationHold>) {
        if let Ok(mut pending) = self.0.lock() {
            *pending = hold;
        }
    }

    /// The quota of the Allocate being served, for its allocation to keep.
    pub fn take(&self) -> Option<AllocationHold> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

impl Admission {
    pub fn new(policy: PeerPolicy, quotas: AllocationQuotas, counters: Arc<Counters>) -> Self {
        Self {
            policy,
            quotas,
            live_relays: Mutex::new(HashSet::new()),
            counters,
        }
    }

    /// Whether `peer` may be relayed to (or heard from); denials are counted.
    pub fn peer_allowed(&self, peer: SocketAddr) -> Result<(), PeerDenial> {
        let verdict = self.policy.check(peer, |address| {
            self.live_relays
                .lock()
                .is_ok_and(|live| live.contains(&address))
        });
        if verdict.is_err() {
            self.counters.refused(TurnRefusal::PeerDenied);
        }
        verdict
    }

    /// A relay socket now serves these addresses.
    pub fn relay_opened(&self, addresses: &[SocketAddr]) {
        if let Ok(mut live) = self.live_relays.lock() {
            live.extend(addresses.iter().copied());
        }
    }

    /// The relay socket serving these addresses closed.
    pub fn relay_closed(&self, addresses: &[SocketAddr]) {
        if let Ok(mut live) = self.live_relays.lock() {
            for address in addresses {
                live.remove(address);
            }
        }
    }

    /// Decides about one datagram from `from` that the credential guard
    /// passed; records the quota of an Allocate in `pending`.
    pub fn admit(&self, datagram: &[u8], from: SocketAddr, pending: &PendingAllocation) -> Admit {
        pending.set(None);
        if datagram.first().is_none_or(|b| b >> 6 != 0) {
            return Admit::Pass; // ChannelData: its channel was bound under the policy
        }
        let mut message = Message::new();
        message.raw = datagram.to_vec();
        if message.decode().is_err() {
            return Admit::Pass;
        }
        let (method, class) = (message.typ.method, message.typ.class);
        if class == CLASS_INDICATION && method == METHOD_SEND {
            let mut peer = PeerAddress::default();
            if peer.get_from(&message).is_ok()
                && self
                    .peer_allowed(SocketAddr::new(peer.ip, peer.port))
                    .is_err()
            {
                return Admit::Drop;
            }
            return Admit::Pass;
        }
        if class != CLASS_REQUEST {
            return Admit::Pass;
        }
        if method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND {
            for peer in peer_addresses(&message) {
                if let Err(denial) = self.peer_allowed(peer) {
                    tracing::info!(
                        %from,
                        %peer,
                        reason = denial.label(),
                        method = %method,
                        "TURN peer refused with 403"
                    );
                    return error_response(&message, CODE_FORBIDDEN, b"Forbidden");
                }
            }
            return Admit::Pass;
        }
        if method == METHOD_ALLOCATE && message.contains(ATTR_MESSAGE_INTEGRITY) {
            // The credential guard checked the integrity: the username is genuine.
            let Ok(username) = TextAttribute::get_from_as(&message, ATTR_USERNAME) else {
                return Admit::Pass;
            };
            match self.quotas.try_hold(&username.text, from.ip()) {
                Ok(hold) => pending.set(Some(hold)),
                Err(refusal) => {
                    self.counters.refused(match refusal {
                        QuotaRefusal::Username => TurnRefusal::UsernameQuota,
                        QuotaRefusal::Source => TurnRefusal::SourceQuota,
                    });
                    tracing::info!(%from, ?refusal, "TURN allocation refused with 486: quota reached");
                    return error_response(
                        &message,
                        CODE_ALLOC_QUOTA_REACHED,
                        b"Allocation Quota Reached",
                    );
                }
            }
        }
        Admit::Pass
    }
}

/// Every XOR-PEER-ADDRESS of `message` (CreatePermission may carry several).
fn peer_addresses(message: &Message) -> Vec<SocketAddr> {
    let mut peers = Vec::new();
    for attribute in &message.attributes.0 {
        if attribute.typ != ATTR_XOR_PEER_ADDRESS {
            continue;
        }
        let mut single = Message::new();
        single.transaction_id = message.transaction_id;
        single.write_header();
        single.add(ATTR_XOR_PEER_ADDRESS, &attribute.value);
        let mut peer = PeerAddress::default();
        if peer.get_from(&single).is_ok() {
            peers.push(SocketAddr::new(peer.ip, peer.port));
        }
    }
    peers
}

fn error_response(request: &Message, code: ErrorCode, reason: &[u8]) -> Admit {
    let mut response = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(request.transaction_id),
        Box::new(MessageType::new(request.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.to_vec(),
        }),
    ];
    match response.build(&setters) {
        Ok(()) => Admit::Refuse(response.raw),
        Err(_) => Admit::Drop,
    }
}

impl Counters {
    pub(crate) fn refused(&self, refusal: TurnRefusal) {
        self.refusals[refusal as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::error_code::ErrorCodeAttribute;
    use stun::fingerprint::FINGERPRINT;

    fn admission(per_username: usize, per_source: usize) -> Admission {
        Admission::new(
            PeerPolicy::default(),
            AllocationQuotas::new(per_username, per_source),
            Arc::new(Counters::default()),
        )
    }

    fn request(method: stun::message::Method, peers: &[&str]) -> Vec<u8> {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        for peer in peers {
            let peer: SocketAddr = peer.parse().unwrap();
            setters.push(Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut message = Message::new();
        message.build(&setters).unwrap();
        message.raw
    }

    fn code_of(admit: Admit) -> Option<u16> {
        let Admit::Refuse(raw) = admit else {
            return None;
        };
        let mut message = Message::new();
        message.raw = raw;
        message.decode().unwrap();
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&message).unwrap();
        Some(code.code.0)
    }

    #[test]
    fn a_permission_naming_any_denied_peer_is_refused_with_403() {
        let admission = admission(1, 1);
        let pending = PendingAllocation::default();
        let from: SocketAddr = "198.51.100.9:4000".parse().unwrap();
        let allowed = request(METHOD_CREATE_PERMISSION, &["203.0.113.1:5000"]);
        assert!(code_of(admission.admit(&allowed, from, &pending)).is_none());
        // The second address is denied: the whole request is.
        let mixed = request(
            METHOD_CREATE_PERMISSION,
            &["203.0.113.1:5000", "169.254.169.254:80"],
        );
        assert_eq!(code_of(admission.admit(&mixed, from, &pending)), Some(403));
        let bind = request(METHOD_CHANNEL_BIND, &["10.0.0.1:5000"]);
        assert_eq!(code_of(admission.admit(&bind, from, &pending)), Some(403));
        // Once 127.0.0.1:6000 is another allocation's relay, it may be named.
        let relay: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let to_relay = request(METHOD_CREATE_PERMISSION, &["127.0.0.1:6000"]);
        assert_eq!(
            code_of(admission.admit(&to_relay, from, &pending)),
            Some(403)
        );
        admission.relay_opened(&[relay]);
        assert!(code_of(admission.admit(&to_relay, from, &pending)).is_none());
        admission.relay_closed(&[relay]);
        assert_eq!(
            code_of(admission.admit(&to_relay, from, &pending)),
            Some(403)
        );
        assert_eq!(
            admission
                .counters
                .snapshot()
                .refused(TurnRefusal::PeerDenied),
            4
        );
    }
}
