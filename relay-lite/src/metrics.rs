//! Counters and gauges, rendered as Prometheus text on `GET /metrics`.
//! Everything is a lock-free atomic; [`TurnMetrics`] is the hook the TURN
//! server updates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use zajel_wire::signaling::ForwardKind;

/// Forwarded message types, in the order they are rendered ([`ForwardKind::ALL`]'s).
pub use zajel_wire::signaling::FORWARDED_MESSAGE_TYPES as FORWARDED_TYPES;

/// Why the relay refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the per-connection message rate.
    RateLimit,
    /// Over the per-connection `pair_request` rate.
    PairRateLimit,
    /// A frame over the size limit (closed with 1009).
    FrameTooLarge,
    /// Unparsable or invalid frame (any `error` reply to a bad frame).
    InvalidMessage,
    /// Forwarding or pairing before `register`.
    NotRegistered,
    /// `Peer not found`.
    PeerNotFound,
    /// A refused pair response (`pair_error`), or a pair request refused
    /// for its requester's own state (not registered here any more).
    PairError,
    /// A pair request nobody will answer (unknown, self, held or full
    /// target): kept as a ghost that times out like an unanswered one.
    PairUnanswerable,
    /// A pair request over the per-(target, address) cap (kept as a ghost).
    PairAddressLimit,
    /// A pair request over its connection's cap of open requests (`pair_error`).
    PairRequesterLimit,
    /// `code_collision`: the code is bound to a live connection.
    CodeCollision,
    /// `code_collision`: the code is held for the key of a connection that
    /// dropped, within its grace period.
    CodeHeld,
    /// The relay's connection cap (503).
    ConnectionLimit,
    /// The per-address connection cap (429).
    AddressLimit,
    /// A connection whose outbound queue overflowed.
    SlowConsumer,
    /// A connection idle past the idle timeout.
    IdleTimeout,
    /// A bad or late HTTP/TLS/WebSocket handshake.
    Handshake,
}

impl Refusal {
    pub const ALL: [Refusal; 17] = [
        Refusal::RateLimit,
        Refusal::PairRateLimit,
        Refusal::FrameTooLarge,
        Refusal::InvalidMessage,
        Refusal::NotRegistered,
        Refusal::PeerNotFound,
        Refusal::PairError,
        Refusal::PairUnanswerable,
        Refusal::PairAddressLimit,
        Refusal::PairRequesterLimit,
        Refusal::CodeCollision,
        Refusal::CodeHeld,
        Refusal::ConnectionLimit,
        Refusal::AddressLimit,
        Refusal::SlowConsumer,
        Refusal::IdleTimeout,
        Refusal::Handshake,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::PairRateLimit => "pair_rate_limit",
            Self::FrameTooLarge => "frame_too_large",
            Self::InvalidMessage => "invalid_message",
            Self::NotRegistered => "not_registered",
            Self::PeerNotFound => "peer_not_found",
            Self::PairError => "pair_error",
            Self::PairUnanswerable => "pair_unanswerable",
            Self::PairAddressLimit => "pair_address_limit",
            Self::PairRequesterLimit => "pair_requester_limit",
            Self::CodeCollision => "code_collision",
            Self::CodeHeld => "code_held",
            Self::ConnectionLimit => "connection_limit",
            Self::AddressLimit => "address_limit",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::Handshake => "handshake",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The relay's metrics. Cheap to clone (shared).
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    websocket_sessions: AtomicI64,
    registered_codes: AtomicI64,
    messages_received: AtomicU64,
    /// Per [`ForwardKind`], in [`FORWARDED_TYPES`] order.
    forwarded: [AtomicU64; FORWARDED_TYPES.len()],
    refusals: [AtomicU64; Refusal::ALL.len()],
    pair_requests: AtomicU64,
    pair_matched: AtomicU64,
    ice_credentials_issued: AtomicU64,
    registry_registered: AtomicI64,
    registry_failures: AtomicU64,
    federation_forwarding_links: AtomicI64,
    rendezvous_forwards_out: AtomicU64,
    rendezvous_forwards_in: AtomicU64,
    rendezvous_forward_matches_in: AtomicU64,
    turn: TurnMetrics,
}

/// The embedded TURN server's counters, rendered with the relay's metrics
/// once [attached](TurnMetrics::attach); all zero without a TURN server.
#[derive(Debug, Default)]
pub struct TurnMetrics {
    counters: OnceLock<Arc<crate::turn::Counters>>,
}

impl TurnMetrics {
    /// Reports `counters` (the running TURN server's) from now on; only the
    /// first call takes effect.
    pub fn attach(&self, counters: Arc<crate::turn::Counters>) {
        let _ = self.counters.set(counters);
    }

    /// The TURN server's counters now.
    pub fn snapshot(&self) -> crate::turn::TurnStats {
        self.counters
            .get()
            .map(|counters| counters.snapshot())
            .unwrap_or_default()
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The hook for the TURN server.
    pub fn turn(&self) -> &TurnMetrics {
        &self.turn
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn session_opened(&self) {
        self.websocket_sessions.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn session_closed(&self) {
        self.websocket_sessions.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn code_registered(&self) {
        self.registered_codes.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn code_released(&self) {
        self.registered_codes.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn message_received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn forwarded(&self, kind: ForwardKind) {
        if let Some(index) = ForwardKind::ALL.iter().position(|k| *k == kind) {
            self.forwarded[index].fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn refused(&self, reason: Refusal) {
        self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn pair_requested(&self) {
        self.pair_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn pair_matched(&self) {
        self.pair_matched.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn ice_credential_issued(&self) {
        self.ice_credentials_issued.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn registry_registered(&self, delta: i64) {
        self.registry_registered.fetch_add(delta, Ordering::Relaxed);
    }
    pub(crate) fn set_federation_forwarding_links(&self, links: usize) {
        self.federation_forwarding_links
            .store(links as i64, Ordering::Relaxed);
    }
    pub(crate) fn rendezvous_forward_out(&self) {
        self.rendezvous_forwards_out.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rendezvous_forward_in(&self) {
        self.rendezvous_forwards_in.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rendezvous_forward_match_in(&self) {
        self.rendezvous_forward_matches_in
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn registry_failure(&self) {
        self.registry_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Open TCP connections (HTTP and WebSocket).
    pub fn connections_open(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }
    /// Open WebSocket sessions.
    pub fn websocket_sessions(&self) -> i64 {
        self.websocket_sessions.load(Ordering::Relaxed)
    }
    /// Codes bound to connections now.
    pub fn registered_codes(&self) -> i64 {
        self.registered_codes.load(Ordering::Relaxed)
    }
    /// Messages of `type_name` forwarded so far.
    pub fn forwarded_count(&self, type_name: &str) -> u64 {
        FORWARDED_TYPES
            .iter()
            .position(|t| *t == type_name)
            .map_or(0, |i| self.forwarded[i].load(Ordering::Relaxed))
    }
    /// Refusals for `reason` so far.
    pub fn refusal_count(&self, reason: Refusal) -> u64 {
        self.refusals[reason.index()].load(Ordering::Relaxed)
    }
    /// Registries this relay is registered with now.
    pub fn registries_registered(&self) -> i64 {
        self.registry_registered.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load_i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let load_u = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut single = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        single(
            "relay_connections",
            "gauge",
            "Open TCP connections (HTTP and WebSocket).",
            load_i(&self.connections_open).to_string(),
        );
        single(
            "relay_connections_total",
            "counter",
            "TCP connections accepted.",
            load_u(&self.connections_total).to_string(),
        );
        single(
            "relay_websocket_sessions",
            "gauge",
            "Open WebSocket sessions.",
            load_i(&self.websocket_sessions).to_string(),
        );
        single(
            "relay_registered_codes",
            "gauge",
            "Pairing codes bound to a connection.",
            load_i(&self.registered_codes).to_string(),
        );
        single(
            "relay_messages_received_total",
            "counter",
            "Client frames received.",
            load_u(&self.messages_received).to_string(),
        );
        single(
            "relay_pair_requests_total",
            "counter",
            "Pair requests delivered to their target.",
            load_u(&self.pair_requests).to_string(),
        );
        single(
            "relay_pairs_matched_total",
            "counter",
            "Pair requests accepted.",
            load_u(&self.pair_matched).to_string(),
        );
        single(
            "relay_ice_credentials_issued_total",
            "counter",
            "TURN credentials handed out in ice_servers.",
            load_u(&self.ice_credentials_issued).to_string(),
        );
        single(
            "relay_registry_registered",
            "gauge",
            "Registries this relay is registered with.",
            load_i(&self.registry_registered).to_string(),
        );
        single(
            "relay_registry_failures_total",
            "counter",
            "Failed registry requests (network errors and refusals).",
            load_u(&self.registry_failures).to_string(),
        );
        single(
            "relay_federation_forwarding_links",
            "gauge",
            "Live federation links to relays that take rendezvous forwards (sent rendezvous_hello).",
            load_i(&self.federation_forwarding_links).to_string(),
        );
        single(
            "relay_rendezvous_forwards_sent_total",
            "counter",
            "rendezvous_forward messages sent to meeting relays.",
            load_u(&self.rendezvous_forwards_out).to_string(),
        );
        single(
            "relay_rendezvous_forwards_stored_total",
            "counter",
            "rendezvous_forward messages from other relays stored here.",
            load_u(&self.rendezvous_forwards_in).to_string(),
        );
        single(
            "relay_rendezvous_forward_matches_delivered_total",
            "counter",
            "Matches from meeting relays pushed to this relay's clients.",
            load_u(&self.rendezvous_forward_matches_in).to_string(),
        );
        let turn = self.turn.snapshot();
        single(
            "relay_turn_allocations",
            "gauge",
            "Open TURN allocations.",
            turn.current_allocations.to_string(),
        );
        single(
            "relay_turn_allocations_total",
            "counter",
            "TURN allocations created.",
            turn.total_allocations.to_string(),
        );
        single(
            "relay_turn_refused_over_cap_total",
            "counter",
            "TURN allocations refused because the cap was reached (508).",
            turn.refused_over_cap.to_string(),
        );
        single(
            "relay_turn_refused_auth_total",
            "counter",
            "TURN requests refused for a wrong, malformed or expired credential (401).",
            turn.refused_auth.to_string(),
        );
        single(
            "relay_turn_dropped_challenges_total",
            "counter",
            "TURN requests without credentials ignored over the challenge rate.",
            turn.dropped_challenges.to_string(),
        );
        single(
            "relay_turn_replayed_allocates_total",
            "counter",
            "Retransmitted TURN Allocates answered with the success response already sent.",
            turn.replayed_allocates.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP relay_turn_refusals_total TURN peer policy and quota refusals, by reason (peer_denied: 403 or a datagram dropped; username_quota and source_quota: 486; stream_*: connections closed; bandwidth: datagrams dropped over the cap).\n# TYPE relay_turn_refusals_total counter"
        );
        for reason in crate::turn::TurnRefusal::ALL {
            let _ = writeln!(
                out,
                "relay_turn_refusals_total{{reason=\"{}\"}} {}",
                reason.label(),
                turn.refused(reason)
            );
        }
        for (name, help, value) in [
            (
                "relay_turn_relayed_bytes_total",
                "Payload bytes relayed between TURN clients and their peers, by the client's transport and direction.",
                (|r: crate::turn::RelayedStats| (r.to_peer_bytes, r.from_peer_bytes))
                    as fn(crate::turn::RelayedStats) -> (u64, u64),
            ),
            (
                "relay_turn_relayed_packets_total",
                "Datagrams relayed between TURN clients and their peers, by the client's transport and direction.",
                |r: crate::turn::RelayedStats| (r.to_peer_packets, r.from_peer_packets),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for transport in crate::turn::ClientTransport::ALL {
                let (to_peer, from_peer) = value(turn.relayed(transport));
                let label = transport.label();
                let _ = writeln!(
                    out,
                    "{name}{{transport=\"{label}\",direction=\"to_peer\"}} {to_peer}\n{name}{{transport=\"{label}\",direction=\"from_peer\"}} {from_peer}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP relay_messages_forwarded_total Messages forwarded between peers, by type.\n# TYPE relay_messages_forwarded_total counter"
        );
        for (name, count) in FORWARDED_TYPES.iter().zip(&self.forwarded) {
            let _ = writeln!(
                out,
                "relay_messages_forwarded_total{{type=\"{name}\"}} {}",
                load_u(count)
            );
        }
        let _ = writeln!(
            out,
            "# HELP relay_refusals_total Refused frames, requests and connections, by reason.\n# TYPE relay_refusals_total counter"
        );
        for (reason, count) in Refusal::ALL.iter().zip(&self.refusals) {
            let _ = writeln!(
                out,
                "relay_refusals_total{{reason=\"{}\"}} {}",
                reason.label(),
                load_u(count)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_wire::call::CallKind;

    #[test]
    fn renders_every_series_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.forwarded(ForwardKind::Call(CallKind::Ice));
        metrics.forwarded(ForwardKind::Call(CallKind::Ice));
        metrics.refused(Refusal::SlowConsumer);
        let text = metrics.render();
        assert!(text.contains("relay_messages_forwarded_total{type=\"call_ice\"} 2\n"));
        assert!(text.contains("relay_messages_forwarded_total{type=\"offer\"} 0\n"));
        assert!(text.contains("relay_refusals_total{reason=\"slow_consumer\"} 1\n"));
        assert!(text.contains("relay_turn_allocations 0\n"));
        assert!(text.contains("relay_turn_refused_auth_total 0\n"));
        assert!(text.contains("relay_turn_refusals_total{reason=\"peer_denied\"} 0\n"));
        assert!(text.contains("relay_turn_refusals_total{reason=\"bandwidth\"} 0\n"));
        assert!(text.contains(
            "relay_turn_relayed_bytes_total{transport=\"tls\",direction=\"from_peer\"} 0\n"
        ));
        assert!(text.contains(
            "relay_turn_relayed_packets_total{transport=\"udp\",direction=\"to_peer\"} 0\n"
        ));
        assert!(text.contains("# TYPE relay_connections gauge\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<i64>().unwrap();
        }
    }
}
