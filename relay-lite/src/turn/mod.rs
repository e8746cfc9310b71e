//! The embedded TURN server (RFC 5766/8656) for peers whose UDP is blocked:
//! the webrtc-rs `turn` server behind listeners for UDP, TCP and TLS, with
//! long-term credentials in the shared-secret scheme of `credentials` (the
//! same scheme as coturn's `use-auth-secret`, so an external coturn can
//! stand in), a cap on allocations, a hard maximum allocation age, and
//! counters for a metrics endpoint. The client-side half that lets a UDP-only
//! TURN client (webrtc-rs's ICE agent) allocate over TCP/TLS, and the stream
//! framing both halves share, live in `zajel_client_net::turn_bridge` and
//! `zajel_client_net::turn_framing`.

mod args;
mod auth;
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

pub use auth::ChallengeRate;
use auth::{ChallengeLimiter, GuardedConn, SharedSecret};
use relay::{CappedRelays, StreamAllocations};
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
    /// Allocations that may exist at once (`--turn-max-allocations`).
    pub max_allocations: usize,
    /// Hard maximum age of one allocation, refreshed or not
    /// (`--turn-allocation-lifetime`, seconds).
    pub allocation_lifetime: Duration,
    /// TCP/TLS connections that may be open at once, per listener.
    pub max_stream_connections: usize,
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
            .field("allocation_lifetime", &self.allocation_lifetime)
            .field("max_stream_connections", &self.max_stream_connections)
            .field("challenge_rate", &self.challenge_rate)
            .finish_non_exhaustive()
    }
}

impl TurnConfig {
    /// Defaults for everything but the secret and the listeners: realm
    /// `zajel`, relay on 127.0.0.1, 1000 allocations of at most 3 hours,
    /// 2000 stream connections per listener, 10 s TLS handshakes, 15 minutes
    /// of stream idleness, 401 challenges for 60 requests per minute per IP
    /// and 200 per second in total.
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
            allocation_lifetime: Duration::from_secs(3 * 3600),
            max_stream_connections: 2000,
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
            || self.max_stream_connections == 0
            || self.challenge_rate.per_ip_per_minute == 0
            || self.challenge_rate.total_per_second == 0
        {
            return Err(TurnError::Config("TURN limits must be at least 1".into()));
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
    /// Relayed traffic by the transport of the allocation's client.
    relayed: [RelayedCounters; 3],
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
    /// Relayed traffic by client transport, indexed as [`ClientTransport::ALL`];
    /// see [`TurnStats::relayed`].
    pub relayed_by_transport: [RelayedStats; 3],
}

impl TurnStats {
    /// Relayed traffic of allocations made over `transport`.
    pub fn relayed(&self, transport: ClientTransport) -> RelayedStats {
        self.relayed_by_transport[transport.index()]
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
            handshake_timeout: config.tls_handshake_timeout,
            idle_timeout: config.stream_idle_timeout,
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
            let stream = StreamListener::start(listener, None, limits, allocations.clone())
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
            let stream =
                StreamListener::start(listener, Some(acceptor), limits, allocations.clone())
                    .map_err(|source| TurnError::Listen { addr, source })?;
            tls_addr = Some(stream.local_addr().map_err(turn::Error::from)?);
            streams.push(stream.clone());
            listeners.push((stream, Some(allocations), ClientTransport::Tls));
        }

        let replay = Arc::new(AllocateReplay::default());
        let conn_configs = listeners
            .into_iter()
            .map(|(inner, allocations, transport)| ConnConfig {
                conn: Arc::new(GuardedConn {
                    inner,
                    auth: auth.clone(),
                    replay: replay.clone(),
                    streams: allocations.clone(),
                }),
                relay_addr_generator: Box::new(CappedRelays {
                    bind_ip: config.relay_ip,
                    public_ip: config.external_ip.unwrap_or(config.relay_ip),
                    max: config.max_allocations,
                    max_lifetime: config.allocation_lifetime,
                    counters: counters.clone(),
                    streams: allocations,
                    transport,
                }),
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
