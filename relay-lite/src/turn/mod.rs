//! The embedded TURN server (RFC 5766/8656) for peers whose UDP is blocked:
//! the webrtc-rs `turn` server behind listeners for UDP, TCP and TLS, with
//! long-term credentials in the shared-secret scheme of `credentials` (the
//! same scheme as coturn's `use-auth-secret`, so an external coturn can
//! stand in), a cap on allocations, a hard maximum allocation age, a peer
//! policy that keeps the relay out of the host and its private networks
//! (`peer_policy`, enforced by `admission`), quotas per username, per
//! client address and per allocation (`quota`), and counters for a metrics
//! endpoint. The client-side half that lets a UDP-only
//! TURN client (webrtc-rs's ICE agent) allocate over TCP/TLS, and the stream
//! framing both halves share, live in `zajel_client_net::turn_bridge` and
//! `zajel_client_net::turn_framing`.

mod admission;
mod args;
mod auth;
pub mod peer_policy;
mod quota;
mod relay;
mod replay;
mod stream_listener;

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use turn::server::config::{ConnConfig, ServerConfig};
use util::Conn;

use crate::tls::ServedCertificate;

pub use args::TurnArgs;
/// The rustls this module builds on, for callers that make `TurnTls` values.
pub use tokio_rustls::rustls;

use admission::{Admission, PendingAllocation};
pub use auth::ChallengeRate;
use auth::{ChallengeLimiter, GuardedConn, SharedSecret};
use peer_policy::PeerPolicy;
use quota::AllocationQuotas;
use relay::{Bandwidth, CappedRelays, StreamAllocations};
use replay::AllocateReplay;
use stream_listener::{StreamLimits, StreamListener};

/// The certificate TURN over TLS serves: read from files (reloadable, see
/// [`crate::tls::ServedCertificate`]) or given as PEM text.
#[derive(Clone, Debug)]
pub struct TurnTls {
    certificate: Arc<ServedCertificate>,
}

impl TurnTls {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1); [`Self::certificate`] re-reads them on demand.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TurnError> {
        Ok(Self {
            certificate: ServedCertificate::from_files(cert, key)
                .map_err(|e| TurnError::Tls(e.to_string()))?,
        })
    }

    /// Parses a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TurnError> {
        Ok(Self {
            certificate: ServedCertificate::from_pem(cert_pem, key_pem)
                .map_err(|e| TurnError::Tls(e.to_string()))?,
        })
    }

    /// The certificate served, to reload it.
    pub fn certificate(&self) -> &Arc<ServedCertificate> {
        &self.certificate
    }

    fn acceptor(&self) -> Result<TlsAcceptor, TurnError> {
        let config = self
            .certificate
            .server_config(&[])
            .map_err(|e| TurnError::Tls(e.to_string()))?;
        Ok(TlsAcceptor::from(config))
    }
}

/// How the TURN server runs. Every listener is optional, but at least one
/// must be set. The matching relay-lite flags are in relay-lite/README.md (TURN).
#[derive(Clone)]
pub struct TurnConfig {
    /// TURN over UDP (`--turn-listen-udp`), e.g. `0.0.0.0:3478`.
    pub listen_udp: Option<SocketAddr>,
    /// TURN over TCP (`--turn-listen-tcp`), e.g. `0.0.0.0:3478`.
    pub listen_tcp: Option<SocketAddr>,
    /// TURN over TLS (`--turn-listen-tls`), e.g. `0.0.0.0:443` or `:5349`.
    pub listen_tls: Option<SocketAddr>,
    /// Certificate and key for `listen_tls` (`--turn-tls-cert`, `--turn-tls-key`).
    pub tls: Option<TurnTls>,
    /// The realm (`--turn-realm`); clients learn it from the first 401.
    pub realm: String,
    /// The shared secret (`--turn-secret-file`), as coturn's `static-auth-secret`.
    pub secret: Vec<u8>,
    /// Where relay sockets are bound (`--turn-relay-ip`).
    pub relay_ip: IpAddr,
    /// The address advertised for relay sockets when it differs from
    /// `relay_ip`, e.g. behind 1:1 NAT (`--turn-external-ip`).
    pub external_ip: Option<IpAddr>,
    /// Allocations that may exist at once (`--turn-max-allocations`); over
    /// it, 508 Insufficient Capacity.
    pub max_allocations: usize,
    /// Live allocations one credential (TURN username) may hold
    /// (`--turn-user-quota`); over it, 486 Allocation Quota Reached.
    pub max_allocations_per_username: usize,
    /// Live allocations one client IP address may hold
    /// (`--turn-source-quota`); over it, 486.
    pub max_allocations_per_source: usize,
    /// Relayed payload bytes per second one allocation may send to its
    /// peers, and as many from them (`--turn-max-bps`, bytes); 0: no cap.
    pub bandwidth_bytes_per_sec: u64,
    /// Bytes one allocation may send in a burst above that rate
    /// (`--turn-bandwidth-burst`).
    pub bandwidth_burst_bytes: u64,
    /// Peer ranges allowed although denied by default (`--turn-allow-peer`),
    /// e.g. `127.0.0.0/8` when both peers of a test run on loopback.
    pub allow_peers: Vec<ipnet::IpNet>,
    /// Other listening sockets of this host that peers must never be
    /// (the signaling port); the TURN listeners are always included.
    pub own_addresses: Vec<SocketAddr>,
    /// Hard maximum age of one allocation, refreshed or not
    /// (`--turn-allocation-lifetime`, seconds).
    pub allocation_lifetime: Duration,
    /// TCP/TLS connections that may be open at once, per listener.
    pub max_stream_connections: usize,
    /// TCP/TLS connections one client IP address may hold open at once,
    /// per listener (`--turn-max-streams-per-source`).
    pub max_stream_connections_per_source: usize,
    /// A TCP/TLS connection that holds no allocation is closed after this
    /// long (`--turn-stream-unallocated-timeout`, seconds).
    pub stream_unallocated_timeout: Duration,
    /// Time a TLS client has to finish its handshake.
    pub tls_handshake_timeout: Duration,
    /// A TCP/TLS connection that carries nothing for this long is closed
    /// (TURN clients refresh well within the 10-minute default lifetime).
    pub stream_idle_timeout: Duration,
    /// How many requests without credentials get a 401 challenge.
    pub challenge_rate: ChallengeRate,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen_udp", &self.listen_udp)
            .field("listen_tcp", &self.listen_tcp)
            .field("listen_tls", &self.listen_tls)
            .field("tls", &self.tls)
            .field("realm", &self.realm)
            .field("secret", &"<hidden>")
            .field("relay_ip", &self.relay_ip)
            .field("external_ip", &self.external_ip)
            .field("max_allocations", &self.max_allocations)
            .field(
                "max_allocations_per_username",
                &self.max_allocations_per_username,
            )
            .field(
                "max_allocations_per_source",
                &self.max_allocations_per_source,
            )
            .field("bandwidth_bytes_per_sec", &self.bandwidth_bytes_per_sec)
            .field("bandwidth_burst_bytes", &self.bandwidth_burst_bytes)
            .field("allow_peers", &self.allow_peers)
            .field("own_addresses", &self.own_addresses)
            .field("allocation_lifetime", &self.allocation_lifetime)
            .field("max_stream_connections", &self.max_stream_connections)
            .field(
                "max_stream_connections_per_source",
                &self.max_stream_connections_per_source,
            )
            .field(
                "stream_unallocated_timeout",
                &self.stream_unallocated_timeout,
            )
            .field("challenge_rate", &self.challenge_rate)
            .finish_non_exhaustive()
    }
}

/// Default live allocations per TURN username (coturn: `user-quota`).
pub const DEFAULT_USER_QUOTA: usize = 10;
/// Default live allocations per client IP address.
pub const DEFAULT_SOURCE_QUOTA: usize = 32;
/// Default relayed bytes per second per allocation and direction (coturn: `max-bps`).
pub const DEFAULT_MAX_BPS: u64 = 512_000;
/// Default burst above that rate, in bytes.
pub const DEFAULT_BANDWIDTH_BURST: u64 = 1_024_000;
/// Default TCP/TLS connections per client IP address, per listener.
pub const DEFAULT_STREAMS_PER_SOURCE: usize = 32;
/// Default seconds a TCP/TLS connection may stay open without an allocation.
pub const DEFAULT_STREAM_UNALLOCATED_SECS: u64 = 30;

impl TurnConfig {
    /// Defaults for everything but the secret and the listeners: realm
    /// `zajel`, relay on 127.0.0.1, 1000 allocations of at most 3 hours,
    /// 10 per username and 32 per client IP, 512 kB/s each way per
    /// allocation (1 MB burst), no peer range allowed beyond the default
    /// policy, 2000 stream connections per listener and 32 per client IP,
    /// 10 s TLS handshakes, 30 s for a stream connection without an
    /// allocation and 15 minutes of stream idleness, 401 challenges for 60
    /// requests per minute per IP and 200 per second in total.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            listen_udp: None,
            listen_tcp: None,
            listen_tls: None,
            tls: None,
            realm: "zajel".into(),
            secret: secret.into(),
            relay_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            external_ip: None,
            max_allocations: 1000,
            max_allocations_per_username: DEFAULT_USER_QUOTA,
            max_allocations_per_source: DEFAULT_SOURCE_QUOTA,
            bandwidth_bytes_per_sec: DEFAULT_MAX_BPS,
            bandwidth_burst_bytes: DEFAULT_BANDWIDTH_BURST,
            allow_peers: Vec::new(),
            own_addresses: Vec::new(),
            allocation_lifetime: Duration::from_secs(3 * 3600),
            max_stream_connections: 2000,
            max_stream_connections_per_source: DEFAULT_STREAMS_PER_SOURCE,
            stream_unallocated_timeout: Duration::from_secs(DEFAULT_STREAM_UNALLOCATED_SECS),
            tls_handshake_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(15 * 60),
            challenge_rate: ChallengeRate {
                per_ip_per_minute: 60,
                total_per_second: 200,
            },
        }
    }

    /// Reads the shared secret from a file (trailing newline ignored), as
    /// `--turn-secret-file` does; refuses an empty secret.
    pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, TurnError> {
        let text = fs::read(path)
            .map_err(|e| TurnError::Config(format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim_ascii_end().to_vec();
        if secret.is_empty() {
            return Err(TurnError::Config(format!("{} is empty", path.display())));
        }
        Ok(secret)
    }

    fn validate(&self) -> Result<(), TurnError> {
        if self.listen_udp.is_none() && self.listen_tcp.is_none() && self.listen_tls.is_none() {
            return Err(TurnError::Config("no TURN listener configured".into()));
        }
        if self.listen_tls.is_some() && self.tls.is_none() {
            return Err(TurnError::Config(
                "TURN over TLS needs a certificate and key".into(),
            ));
        }
        if self.secret.is_empty() {
            return Err(TurnError::Config("the TURN shared secret is empty".into()));
        }
        if self.realm.is_empty() {
            return Err(TurnError::Config("the TURN realm is empty".into()));
        }
        if self.max_allocations == 0
            || self.max_allocations_per_username == 0
            || self.max_allocations_per_source == 0
            || self.max_stream_connections == 0
            || self.max_stream_connections_per_source == 0
            || self.challenge_rate.per_ip_per_minute == 0
            || self.challenge_rate.total_per_second == 0
        {
            return Err(TurnError::Config("TURN limits must be at least 1".into()));
        }
        if self.bandwidth_bytes_per_sec > 0 && self.bandwidth_burst_bytes < 1500 {
            return Err(TurnError::Config(
                "the TURN bandwidth burst must hold at least one 1500-byte datagram".into(),
            ));
        }
        if self.stream_unallocated_timeout.is_zero() {
            return Err(TurnError::Config(
                "the TURN stream unallocated timeout must be positive".into(),
            ));
        }
        if self.allocation_lifetime.is_zero() {
            return Err(TurnError::Config(
                "the TURN allocation lifetime must be positive".into(),
            ));
        }
        if let Some(external) = self.external_ip {
            if external.is_ipv4() != self.relay_ip.is_ipv4() {
                return Err(TurnError::Config(
                    "the TURN external IP and relay IP differ in family".into(),
                ));
            }
        }
        self.validate_relayed_address()
    }

    /// The relayed address clients are told must be one they can reach
    /// where the relay sockets are: never 0.0.0.0, never loopback sockets
    /// behind a non-loopback address or listener (clients elsewhere would
    /// allocate, then send media into nothing).
    fn validate_relayed_address(&self) -> Result<(), TurnError> {
        let advertised = self.external_ip.unwrap_or(self.relay_ip);
        if advertised.is_unspecified() {
            return Err(TurnError::Config(format!(
                "TURN relay sockets bind on {} and no external IP is set: clients would be told an address they cannot reach (give the public address: --turn-external-ip)",
                self.relay_ip
            )));
        }
        if self.relay_ip.is_loopback() {
            if !advertised.is_loopback() {
                return Err(TurnError::Config(format!(
                    "TURN relay sockets bind on loopback ({}) but {advertised} is advertised: clients sending media there reach nothing (set --turn-relay-ip to an address of this host, or leave it out)",
                    self.relay_ip
                )));
            }
            let outside = [self.listen_udp, self.listen_tcp, self.listen_tls]
                .into_iter()
                .flatten()
                .find(|address| !address.ip().is_loopback());
            if let Some(listener) = outside {
                return Err(TurnError::Config(format!(
                    "TURN listens on {listener} but relays from loopback ({}): clients that reach the listener cannot reach their relayed address (set --turn-relay-ip and --turn-external-ip, or leave --turn-relay-ip out)",
                    self.relay_ip
                )));
            }
        }
        Ok(())
    }
}

/// Why the TURN server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("TURN configuration: {0}")]
    Config(String),
    #[error("TURN TLS: {0}")]
    Tls(String),
    #[error("cannot listen for TURN on {addr}: {source}{}", zajel_client_net::logging::listen_hint(*addr, source))]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("TURN server: {0}")]
    Server(#[from] turn::Error),
}

/// Live counters, shared with whoever reports metrics.
#[derive(Debug)]
pub struct Counters {
    /// Allocations that exist now; a watch so callers can await changes.
    current: watch::Sender<u64>,
    total: AtomicU64,
    refused_over_cap: AtomicU64,
    refused_auth: AtomicU64,
    dropped_challenges: AtomicU64,
    replayed_allocates: AtomicU64,
    /// Refusals of the peer policy and the quotas, indexed by [`TurnRefusal`].
    refusals: [AtomicU64; TurnRefusal::ALL.len()],
    /// Relayed traffic by the transport of the allocation's client.
    relayed: [RelayedCounters; 3],
}

/// Why the TURN server refused a request, a datagram or a connection under
/// its peer policy or quotas (the `reason` label of
/// `relay_turn_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnRefusal {
    /// A peer address the policy denies: CreatePermission or ChannelBind
    /// answered 403, or a datagram to or from it dropped.
    PeerDenied,
    /// An Allocate over its username's quota (486).
    UsernameQuota,
    /// An Allocate over its client IP's quota (486).
    SourceQuota,
    /// A TCP/TLS connection over its client IP's cap, closed at once.
    StreamPerSource,
    /// A TCP/TLS connection over the listener's cap, closed at once.
    StreamTotal,
    /// A TCP/TLS connection closed for holding no allocation.
    StreamUnallocated,
    /// A relayed datagram dropped over its allocation's bandwidth cap.
    Bandwidth,
}

impl TurnRefusal {
    pub const ALL: [TurnRefusal; 7] = [
        Self::PeerDenied,
        Self::UsernameQuota,
        Self::SourceQuota,
        Self::StreamPerSource,
        Self::StreamTotal,
        Self::StreamUnallocated,
        Self::Bandwidth,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PeerDenied => "peer_denied",
            Self::UsernameQuota => "username_quota",
            Self::SourceQuota => "source_quota",
            Self::StreamPerSource => "stream_per_source",
            Self::StreamTotal => "stream_total",
            Self::StreamUnallocated => "stream_unallocated",
            Self::Bandwidth => "bandwidth",
        }
    }
}

/// Traffic through the relay sockets of allocations made over one client transport.
#[derive(Debug, Default)]
pub(crate) struct RelayedCounters {
    pub to_peer_bytes: AtomicU64,
    pub to_peer_packets: AtomicU64,
    pub from_peer_bytes: AtomicU64,
    pub from_peer_packets: AtomicU64,
}

impl RelayedCounters {
    fn snapshot(&self) -> RelayedStats {
        RelayedStats {
            to_peer_bytes: self.to_peer_bytes.load(Ordering::Relaxed),
            to_peer_packets: self.to_peer_packets.load(Ordering::Relaxed),
            from_peer_bytes: self.from_peer_bytes.load(Ordering::Relaxed),
            from_peer_packets: self.from_peer_packets.load(Ordering::Relaxed),
        }
    }
}

/// The transport a TURN client reaches the server over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    Udp,
    Tcp,
    Tls,
}

impl ClientTransport {
    pub const ALL: [ClientTransport; 3] = [Self::Udp, Self::Tcp, Self::Tls];

    /// The metrics label: `udp`, `tcp`, `tls`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Relayed traffic of one client transport, counted at the relay sockets
/// (payload bytes of UDP datagrams to and from peers; STUN/TURN framing not
/// included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayedStats {
    /// From clients to their peers (sent from relay sockets).
    pub to_peer_bytes: u64,
    pub to_peer_packets: u64,
    /// From peers to clients (received on relay sockets).
    pub from_peer_bytes: u64,
    pub from_peer_packets: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            current: watch::Sender::new(0),
            total: AtomicU64::new(0),
            refused_over_cap: AtomicU64::new(0),
            refused_auth: AtomicU64::new(0),
            dropped_challenges: AtomicU64::new(0),
            replayed_allocates: AtomicU64::new(0),
            refusals: Default::default(),
            relayed: Default::default(),
        }
    }
}

impl Counters {
    fn relayed(&self, transport: ClientTransport) -> &RelayedCounters {
        &self.relayed[transport.index()]
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> TurnStats {
        TurnStats {
            current_allocations: *self.current.borrow(),
            total_allocations: self.total.load(Ordering::Relaxed),
            refused_over_cap: self.refused_over_cap.load(Ordering::Relaxed),
            refused_auth: self.refused_auth.load(Ordering::Relaxed),
            dropped_challenges: self.dropped_challenges.load(Ordering::Relaxed),
            replayed_allocates: self.replayed_allocates.load(Ordering::Relaxed),
            refusals: std::array::from_fn(|i| self.refusals[i].load(Ordering::Relaxed)),
            relayed_by_transport: [
                self.relayed[0].snapshot(),
                self.relayed[1].snapshot(),
                self.relayed[2].snapshot(),
            ],
        }
    }
}

/// What the TURN server has done, for a metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnStats {
    /// Allocations that exist now.
    pub current_allocations: u64,
    /// Allocations made since start.
    pub total_allocations: u64,
    /// Allocate requests refused because the cap was reached (508).
    pub refused_over_cap: u64,
    /// Requests refused for a wrong, malformed or expired credential (401).
    pub refused_auth: u64,
    /// Requests without credentials ignored over the challenge rate.
    pub dropped_challenges: u64,
    /// Retransmitted Allocate requests answered with the success response already sent
    /// (the first one was lost on the way back; see `replay`).
    pub replayed_allocates: u64,
    /// Refusals by reason, indexed as [`TurnRefusal::ALL`]; see [`TurnStats::refused`].
    pub refusals: [u64; TurnRefusal::ALL.len()],
    /// Relayed traffic by client transport, indexed as [`ClientTransport::ALL`];
    /// see [`TurnStats::relayed`].
    pub relayed_by_transport: [RelayedStats; 3],
}

impl TurnStats {
    /// Relayed traffic of allocations made over `transport`.
    pub fn relayed(&self, transport: ClientTransport) -> RelayedStats {
        self.relayed_by_transport[transport.index()]
    }

    /// Refusals for `reason` since start.
    pub fn refused(&self, reason: TurnRefusal) -> u64 {
        self.refusals[reason as usize]
    }
}

/// A listener as the webrtc-rs server takes it.
type Listener = Arc<dyn Conn + Send + Sync>;

/// A running TURN server.
pub struct TurnServer {
    /// `None` only once closed.
    server: Option<turn::server::Server>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    streams: Vec<Arc<StreamListener>>,
    counters: Arc<Counters>,
}

impl TurnServer {
    /// Binds every configured listener and starts serving.
    pub async fn start(config: TurnConfig) -> Result<Self, TurnError> {
        config.validate()?;
        let counters = Arc::new(Counters::default());
        let auth = Arc::new(SharedSecret {
            secret: config.secret.clone(),
            realm: config.realm.clone(),
            counters: counters.clone(),
            challenges: ChallengeLimiter::new(config.challenge_rate),
        });
        let limits = StreamLimits {
            max_connections: config.max_stream_connections,
            max_connections_per_source: config.max_stream_connections_per_source,
            handshake_timeout: config.tls_handshake_timeout,
            idle_timeout: config.stream_idle_timeout,
            unallocated_timeout: config.stream_unallocated_timeout,
        };
        let mut listeners: Vec<(Listener, Option<Arc<StreamAllocations>>, ClientTransport)> =
            Vec::new();
        let mut streams = Vec::new();
        let (mut udp_addr, mut tcp_addr, mut tls_addr) = (None, None, None);

        if let Some(addr) = config.listen_udp {
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| TurnError::Listen { addr, source })?;
            udp_addr = Some(
                socket
                    .local_addr()
                    .map_err(|source| TurnError::Listen { addr, source })?,
            );
            listeners.push((Arc::new(socket), None, ClientTransport::Udp));
        }
        if let Some(addr) = config.listen_tcp {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| TurnError::Listen { addr, source })?;
            let allocations = Arc::new(StreamAllocations::default());
            let stream = StreamListener::start(
                listener,
                None,
                limits,
                allocations.clone(),
                counters.clone(),
            )
            .map_err(|source| TurnError::Listen { addr, source })?;
            tcp_addr = Some(stream.local_addr().map_err(turn::Error::from)?);
            streams.push(stream.clone());
            listeners.push((stream, Some(allocations), ClientTransport::Tcp));
        }
        if let (Some(addr), Some(tls)) = (config.listen_tls, &config.tls) {
            let acceptor = tls.acceptor()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| TurnError::Listen { addr, source })?;
            let allocations = Arc::new(StreamAllocations::default());
            let stream = StreamListener::start(
                listener,
                Some(acceptor),
                limits,
                allocations.clone(),
                counters.clone(),
            )
            .map_err(|source| TurnError::Listen { addr, source })?;
            tls_addr = Some(stream.local_addr().map_err(turn::Error::from)?);
            streams.push(stream.clone());
            listeners.push((stream, Some(allocations), ClientTransport::Tls));
        }

        // The peer policy never relays into this server's own sockets.
        let own_listeners: Vec<SocketAddr> = [udp_addr, tcp_addr, tls_addr]
            .into_iter()
            .flatten()
            .chain(config.own_addresses.iter().copied())
            .collect();
        let own_ips = [Some(config.relay_ip), config.external_ip]
            .into_iter()
            .flatten()
            .collect();
        let admission = Arc::new(Admission::new(
            PeerPolicy::new(config.allow_peers.clone(), own_listeners, own_ips),
            AllocationQuotas::new(
                config.max_allocations_per_username,
                config.max_allocations_per_source,
            ),
            counters.clone(),
        ));
        let bandwidth = Bandwidth {
            bytes_per_sec: config.bandwidth_bytes_per_sec,
            burst_bytes: config.bandwidth_burst_bytes,
        };
        let replay = Arc::new(AllocateReplay::default());
        let conn_configs = listeners
            .into_iter()
            .map(|(inner, allocations, transport)| {
                let pending = Arc::new(PendingAllocation::default());
                ConnConfig {
                    conn: Arc::new(GuardedConn {
                        inner,
                        auth: auth.clone(),
                        replay: replay.clone(),
                        streams: allocations.clone(),
                        admission: admission.clone(),
                        pending: pending.clone(),
                    }),
                    relay_addr_generator: Box::new(CappedRelays {
                        bind_ip: config.relay_ip,
                        public_ip: config.external_ip.unwrap_or(config.relay_ip),
                        max: config.max_allocations,
                        max_lifetime: config.allocation_lifetime,
                        counters: counters.clone(),
                        streams: allocations,
                        transport,
                        admission: admission.clone(),
                        pending,
                        bandwidth,
                    }),
                }
            })
            .collect();
        let server = turn::server::Server::new(ServerConfig {
            conn_configs,
            realm: config.realm.clone(),
            auth_handler: auth,
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await?;
        tracing::info!(
            udp = ?udp_addr,
            tcp = ?tcp_addr,
            tls = ?tls_addr,
            realm = %config.realm,
            max_allocations = config.max_allocations,
            allow_peers = ?config.allow_peers,
            "TURN server listening"
        );
        Ok(Self {
            server: Some(server),
            udp_addr,
            tcp_addr,
            tls_addr,
            streams,
            counters,
        })
    }

    /// The bound UDP listener, if any.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The bound TCP listener, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound TLS listener, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The counters as they are now.
    pub fn stats(&self) -> TurnStats {
        self.counters.snapshot()
    }

    /// The live counters, to keep for a metrics endpoint.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Waits until the number of current allocations satisfies `ready`,
    /// for at most `timeout`; returns the number it saw last.
    pub async fn wait_for_allocations(
        &self,
        timeout: Duration,
        ready: impl FnMut(&u64) -> bool,
    ) -> Result<u64, u64> {
        let mut current = self.counters.current.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            current.wait_for(ready).await.map(|seen| *seen).ok()
        })
        .await;
        match waited {
            Ok(Some(seen)) => Ok(seen),
            _ => Err(*self.counters.current.borrow()),
        }
    }

    /// Stops every listener and ends every allocation. (Dropping the
    /// server does the same in the background.)
    pub async fn close(mut self) {
        for stream in &self.streams {
            stream.shut();
        }
        if let Some(server) = self.server.take() {
            if let Err(error) = server.close().await {
                tracing::debug!(%error, "TURN server close");
            }
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        for stream in &self.streams {
            stream.shut();
        }
        if let (Some(server), Ok(runtime)) =
            (self.server.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = server.close().await;
            });
        }
    }
}
