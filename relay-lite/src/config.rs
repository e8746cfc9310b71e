//! What a relay is told at start: where it listens, who it is, which
//! registries it joins, and every limit and timeout (all configurable so
//! tests can shorten them; the defaults are Zajel's where Zajel has one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use zajel_wire::signaling;

use crate::metrics::Metrics;

/// Everything [`crate::Relay::start`] needs.
#[derive(Clone)]
pub struct RelayConfig {
    /// Where the WebSocket and HTTP routes listen (port 0 picks one).
    pub listen: SocketAddr,
    /// Where `GET /metrics` (and `/health`) listen on their own, plain
    /// HTTP; when set, the public port answers `/metrics` with 404. `None`:
    /// `/metrics` on the public port, as before (the deploy kit sets a
    /// loopback address).
    pub metrics_listen: Option<SocketAddr>,
    /// The URL clients reach this relay at: sent in `server_info` and
    /// registered with the registries. `None`: `ws://<local address>`
    /// (`wss://` with TLS).
    pub public_endpoint: Option<String>,
    /// Free-text region for `server_info` and the registry.
    pub region: Option<String>,
    /// The relay's Ed25519 identity; `None` draws a throwaway one.
    pub identity: Option<SigningKey>,
    /// PEM certificate chain and private key: serve `wss://` and `https://`.
    pub tls: Option<TlsFiles>,
    /// Registry base URLs to register with (`http(s)://host[:port]`).
    pub bootstrap: Vec<String>,
    pub membership: MembershipConfig,
    /// Links with the other servers the registries list (see `federation`).
    pub federation: crate::federation::FederationConfig,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// STUN/TURN servers handed to registered clients that ask. With an
    /// embedded TURN server ([`Self::turn`]) and no TURN URLs here, the
    /// URLs of its listeners are handed out, with its secret.
    pub ice: Option<IceConfig>,
    /// Also hand [`Self::ice`] to paired clients that never asked (no
    /// `"iceServers": true`), under the same rule as asked ones: once the
    /// connection is paired or in a call, renewed while it lives. Every Zajel
    /// client ignores a message type it does not know (app: a logged warning,
    /// web: a logged warning, headless: a debug log), so the frame is harmless
    /// to them; on by default (`--ice-servers-unasked false` turns it off).
    pub ice_servers_unasked: bool,
    /// An embedded TURN server to start with the relay (and stop with it);
    /// its counters appear in the relay's metrics.
    pub turn: Option<crate::turn::TurnConfig>,
    /// Metrics to record into (e.g. shared with a TURN server started
    /// first); `None` creates fresh ones, see [`crate::RunningRelay::metrics`].
    pub metrics: Option<Arc<Metrics>>,
    /// Rendezvous, device linking and peer relays (§5–§7).
    pub rendezvous: RendezvousConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            public_endpoint: None,
            region: None,
            identity: None,
            tls: None,
            bootstrap: Vec::new(),
            membership: MembershipConfig::default(),
            federation: crate::federation::FederationConfig::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            ice: None,
            ice_servers_unasked: true,
            turn: None,
            metrics: None,
            rendezvous: RendezvousConfig::default(),
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("listen", &self.listen)
            .field("public_endpoint", &self.public_endpoint)
            .field("region", &self.region)
            .field("identity", &self.identity.as_ref().map(|_| "<hidden>"))
            .field("tls", &self.tls)
            .field("bootstrap", &self.bootstrap)
            .field("membership", &self.membership)
            .field("limits", &self.limits)
            .field("timeouts", &self.timeouts)
            .field("ice", &self.ice)
            .field("turn", &self.turn)
            .field("metrics", &self.metrics.is_some())
            .field("rendezvous", &self.rendezvous)
            .finish()
    }
}

/// Rendezvous storage, lifetimes and limits, and the device-linking and
/// peer-relay timers; the defaults are Zajel's where Zajel has one.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// The SQLite file of rendezvous entries (created if missing); `None`
    /// keeps them in memory, so a restart loses them.
    pub database: Option<PathBuf>,
    /// Daily point lifetime from its last registration (Zajel: 48 h).
    pub daily_ttl: Duration,
    /// Hourly token lifetime (Zajel: 3 h).
    pub hourly_ttl: Duration,
    /// Between sweeps of expired entries and of idle peer relays (Zajel: 5 min).
    pub cleanup_interval: Duration,
    /// A peer relay silent this long is closed at the next cleanup (Zajel: 60 s).
    pub peer_relay_timeout: Duration,
    /// A link request's lifetime (Zajel: 120 s).
    pub link_timeout: Duration,
    /// Live rendezvous entries one peerId may have (Zajel: no limit).
    pub max_entries_per_peer: usize,
    /// Points and tokens one connection may register over its life (Zajel: no limit).
    pub max_items_per_connection: usize,
}

/// The rendezvous database's file name inside a state directory.
pub const RENDEZVOUS_DB_FILE: &str = "rendezvous.sqlite3";

impl Default for RendezvousConfig {
    fn default() -> Self {
        use zajel_wire::rendezvous as wire;
        Self {
            database: None,
            daily_ttl: Duration::from_millis(wire::DAILY_POINT_TTL_MS),
            hourly_ttl: Duration::from_millis(wire::HOURLY_TOKEN_TTL_MS),
            cleanup_interval: Duration::from_millis(wire::CLEANUP_INTERVAL_MS),
            peer_relay_timeout: Duration::from_millis(wire::HEARTBEAT_TIMEOUT_MS),
            link_timeout: Duration::from_millis(wire::LINK_REQUEST_TIMEOUT_MS),
            max_entries_per_peer: crate::rendezvous::DEFAULT_MAX_ENTRIES_PER_PEER,
            max_items_per_connection: crate::rendezvous::DEFAULT_MAX_ITEMS_PER_CONNECTION,
        }
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the relay keeps its registry entries.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Between heartbeats (Zajel: 60 s).
    pub heartbeat_interval: Duration,
    /// First wait after a failed request; doubles up to `retry_max`, with ±25 % jitter.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Per HTTP request.
    pub request_timeout: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-connection and whole-relay limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections (HTTP and WebSocket) at once; more are refused with 503.
    pub max_connections: usize,
    /// Open connections per client address (IPv6 per /64); more get 429.
    pub max_connections_per_address: usize,
    /// Largest client frame in bytes; larger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Frames per `rate_window` (Zajel: 100 per 60 s).
    pub rate_limit_messages: u32,
    pub rate_window: Duration,
    /// `pair_request`s per `pair_request_window` (Zajel: 10 per 60 s).
    pub pair_request_limit: u32,
    pub pair_request_window: Duration,
    /// Pending pair requests per target (Zajel: 10).
    pub max_pending_per_target: usize,
    /// Pending pair requests per target from one client address (IPv6 per
    /// /64), so one address cannot fill a target's slots. Zajel has none.
    pub max_pending_per_target_per_address: usize,
    /// Pair requests one connection may have open at once, answerable or
    /// not (bounds the relay's memory for requests nobody will answer).
    /// The default is what Zajel's rate allows anyway (10 per 60 s, each
    /// living 120 s).
    pub max_pending_per_requester: usize,
    /// Frames waiting to be written to one connection; a peer that lets
    /// more pile up is disconnected.
    pub outbound_queue_frames: usize,
    /// Bytes of forwarded frames waiting for one connection.
    pub outbound_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_address: 64,
            max_frame_bytes: signaling::MAX_FRAME_BYTES,
            rate_limit_messages: signaling::RATE_LIMIT_MESSAGES,
            rate_window: Duration::from_millis(signaling::RATE_LIMIT_WINDOW_MS),
            pair_request_limit: signaling::PAIR_REQUEST_LIMIT,
            pair_request_window: Duration::from_millis(signaling::PAIR_REQUEST_WINDOW_MS),
            max_pending_per_target: signaling::MAX_PENDING_PER_TARGET,
            max_pending_per_target_per_address: DEFAULT_MAX_PENDING_PER_TARGET_PER_ADDRESS,
            max_pending_per_requester: DEFAULT_MAX_PENDING_PER_REQUESTER,
            outbound_queue_frames: 256,
            outbound_queue_bytes: 1 << 20,
        }
    }
}

/// Default of [`Limits::max_pending_per_target_per_address`].
pub const DEFAULT_MAX_PENDING_PER_TARGET_PER_ADDRESS: usize = 2;
/// Default of [`Limits::max_pending_per_requester`].
pub const DEFAULT_MAX_PENDING_PER_REQUESTER: usize = 20;
/// Default of [`Timeouts::code_grace`].
pub const DEFAULT_CODE_GRACE: Duration = Duration::from_secs(60);
/// Default of [`Timeouts::takeover_probe`].
pub const DEFAULT_TAKEOVER_PROBE: Duration = Duration::from_secs(2);

/// Timeouts.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// A connection that sends nothing for this long is dropped.
    pub idle: Duration,
    /// The HTTP request head (and TLS handshake) must arrive within this.
    pub handshake: Duration,
    /// A pair request expires after this (`expiresIn`; Zajel: 120 s).
    pub pair_request: Duration,
    /// `pair_expiring` goes out this long before expiry (Zajel: 30 s).
    pub pair_expiring_warning: Duration,
    /// After a code's connection drops, only the public key that
    /// registered it can register it again for this long (zero: the code is
    /// free at once, as in Zajel).
    pub code_grace: Duration,
    /// When the key holding a code registers it from a new connection, how
    /// long the old connection has to show it is alive (answer a ping)
    /// before the new one takes the code over.
    pub takeover_probe: Duration,
    /// How long a reply to a client may wait for room in its own queue.
    pub outbound_stall: Duration,
    /// How long shutdown waits for clients to take their close frames.
    pub shutdown_grace: Duration,
    /// How often the TLS certificate files (`wss:` and `turns:`) are checked
    /// for a change and reloaded (zero: only on SIGHUP, see
    /// [`crate::RunningRelay::reload_certificates`]).
    pub certificate_check: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(90),
            handshake: Duration::from_secs(10),
            pair_request: Duration::from_millis(signaling::PAIR_REQUEST_TIMEOUT_MS),
            pair_expiring_warning: Duration::from_millis(signaling::PAIR_EXPIRING_WARNING_MS),
            code_grace: DEFAULT_CODE_GRACE,
            takeover_probe: DEFAULT_TAKEOVER_PROBE,
            outbound_stall: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            certificate_check: Duration::from_secs(60),
        }
    }
}

/// How long issued TURN credentials stay valid unless configured (`--turn-ttl`):
/// short, since they are renewed while the connection lives (see [`crate::ice`]).
pub const DEFAULT_ICE_TTL: Duration = Duration::from_secs(600);

/// STUN/TURN servers for the `ice_servers` extension.
#[derive(Clone)]
pub struct IceConfig {
    /// `turn:`/`turns:` URLs; they share one time-limited credential.
    pub turn_urls: Vec<String>,
    /// `stun:` URLs, sent without credentials.
    pub stun_urls: Vec<String>,
    /// The shared secret (coturn `static-auth-secret`).
    pub secret: Vec<u8>,
    /// How long issued credentials stay valid.
    pub ttl: Duration,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("turn_urls", &self.turn_urls)
            .field("stun_urls", &self.stun_urls)
            .field("secret", &"<hidden>")
            .field("ttl", &self.ttl)
            .finish()
    }
}
