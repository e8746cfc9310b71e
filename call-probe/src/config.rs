//! How a call engine is set up: ICE servers and policy, which addresses it may use, the
//! timeouts of the call state machine (reference §3, all shortenable for tests), what it
//! sends, and how it answers incoming calls.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zajel_wire::call::{ICE_GATHERING_TIMEOUT_MS, RECONNECT_TIMEOUT_MS, RINGING_TIMEOUT_MS};

/// One STUN or TURN server, as in `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp|tcp`, `turns:…`.
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

impl IceServer {
    fn has_stun(&self) -> bool {
        self.urls
            .iter()
            .any(|url| url.starts_with("stun:") || url.starts_with("stuns:"))
    }
}

/// ICE servers learned after the engine started: relay-lite hands out TURN credentials only
/// once a connection is paired (and renews them while it lives), so a line sets them here and
/// every call placed or answered afterwards uses them instead of [`CallConfig::ice_servers`].
#[derive(Debug, Clone, Default)]
pub struct LiveIceServers(Arc<RwLock<Option<Vec<IceServer>>>>);

impl LiveIceServers {
    /// Calls from now on use `servers`.
    pub fn set(&self, servers: Vec<IceServer>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(servers);
    }

    /// The servers set last, if any.
    pub fn get(&self) -> Option<Vec<IceServer>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the engine does with an incoming `call_offer` when it is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnswerPolicy {
    /// Emit [`crate::call::CallEvent::Incoming`] and wait for `accept` or `decline`.
    #[default]
    Manual,
    /// Accept at once.
    Accept,
    /// Decline at once (`call_reject` reason `declined`).
    Decline,
}

/// The call state machine's timeouts. Defaults are Zajel's (reference §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimeouts {
    /// An unanswered call is given up after this (`call_reject` reason `timeout`).
    pub ringing: Duration,
    /// ICE gathering may take this long; a call with no local candidate by then fails.
    pub ice_gathering: Duration,
    /// A dropped connection may reconnect (ICE restart) for this long before the call ends.
    pub reconnect: Duration,
    /// webrtc-rs: no traffic for this long makes ICE `disconnected` (its default is 5 s).
    pub ice_disconnected: Duration,
    /// webrtc-rs: `disconnected` for this long makes ICE `failed` (its default is 25 s).
    pub ice_failed: Duration,
    /// webrtc-rs: keepalive interval when no media flows (its default is 2 s).
    pub ice_keepalive: Duration,
}

impl Default for CallTimeouts {
    fn default() -> Self {
        Self {
            ringing: Duration::from_millis(RINGING_TIMEOUT_MS),
            ice_gathering: Duration::from_millis(ICE_GATHERING_TIMEOUT_MS),
            reconnect: Duration::from_millis(RECONNECT_TIMEOUT_MS),
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(25),
            ice_keepalive: Duration::from_secs(2),
        }
    }
}

/// Everything a [`crate::call::CallEngine`] needs to know.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// STUN and TURN servers.
    pub ice_servers: Vec<IceServer>,
    /// Servers that replace `ice_servers` once set (see [`LiveIceServers`]).
    pub live_ice_servers: LiveIceServers,
    /// ICE transport policy `relay`: only TURN relay candidates.
    pub relay_only: bool,
    /// Where the call's own UDP socket binds (host candidates go through it; see
    /// [`crate::tap`]). Port 0 picks a free port. Used unless a STUN server is configured,
    /// because webrtc-rs gathers server-reflexive candidates only on its own sockets.
    pub udp_bind: SocketAddr,
    /// Gather loopback host candidates (webrtc-rs leaves them out by default).
    pub include_loopback: bool,
    /// Use only loopback addresses for host candidates (tests).
    pub loopback_only: bool,
    /// If set, only interfaces with these names give host candidates.
    pub interfaces: Option<Vec<String>>,
    /// Timeouts of the state machine.
    pub timeouts: CallTimeouts,
    /// Frequency of the tone this side sends, in Hz.
    pub tone_hz: f64,
    /// Level of that tone in dBFS (peak).
    pub tone_level_dbfs: f64,
    /// Send back the audio received (decoded and re-encoded) instead of the tone.
    pub echo: bool,
    /// What to do with incoming calls.
    pub answer_policy: AnswerPolicy,
    /// Offer or accept a video track (VP8, negotiated; see the README).
    pub allow_video: bool,
    /// How often webrtc-rs's statistics are read while connected (RTT appears after the
    /// first RTCP sender/receiver report round).
    pub stats_interval: Duration,
    /// Refuse calls from peers that send no call authentication (`--require-authenticated`).
    pub require_authenticated: bool,
    /// Keep remote ICE candidates on loopback, link-local, unspecified and multicast
    /// addresses (loopback tests and the demo; `--allow-loopback-candidates`). Off by default:
    /// a stranger's candidates must not make this side probe its own host.
    pub allow_loopback_candidates: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            live_ice_servers: LiveIceServers::default(),
            relay_only: false,
            udp_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            include_loopback: false,
            loopback_only: false,
            interfaces: None,
            timeouts: CallTimeouts::default(),
            tone_hz: 440.0,
            tone_level_dbfs: -12.0,
            echo: false,
            answer_policy: AnswerPolicy::Manual,
            allow_video: true,
            stats_interval: Duration::from_millis(500),
            require_authenticated: false,
            allow_loopback_candidates: false,
        }
    }
}

impl CallConfig {
    /// A configuration that uses 127.0.0.1 only: loopback host candidates on a socket bound
    /// to 127.0.0.1 (for in-process tests and `selftest`).
    pub fn loopback() -> Self {
        Self {
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            include_loopback: true,
            loopback_only: true,
            allow_loopback_candidates: true,
            ..Self::default()
        }
    }

    /// The servers a call starting now uses: the live ones once set, else `ice_servers`.
    pub fn current_ice_servers(&self) -> Vec<IceServer> {
        self.live_ice_servers
            .get()
            .unwrap_or_else(|| self.ice_servers.clone())
    }

    /// Whether host candidates go through the engine's own tapped socket.
    pub fn uses_tapped_socket(&self) -> bool {
        !self.current_ice_servers().iter().any(IceServer::has_stun)
    }
}
