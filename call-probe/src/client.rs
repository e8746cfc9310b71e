//! What `call`, `answer` and `check` share: opening a registered session on a relay (with
//! the relay's `ice_servers`), a random pairing code and the real X25519 public key of an
//! [`Identity`] (a fresh one unless given), turning the
//! relay's ICE servers into the engine's (every TURN server behind a TURN tap, TCP/TLS through
//! the client-side stream bridges of `zajel_client_net::turn_bridge`, and which of them a call's media took), and descriptions of ICE
//! servers without their credentials.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use url::Url;
use zajel_client_net::signaling::{ConnectTimings, SessionError, SignalingSession, TrustAnchors};
use zajel_client_net::tls;
use zajel_client_net::turn_bridge::{BridgeTls, StreamBridge};
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{ClientMessage, IceServer as WireIceServer, ServerMessage};

use crate::config::IceServer;
use crate::error::ErrorKind;
use crate::identity::Identity;
use crate::report::CallReport;
use crate::turn_tap::TurnTap;

/// The system gave no random bytes.
#[derive(Debug, thiserror::Error)]
#[error("no randomness: {0}")]
pub struct NoRandomness(#[from] pub getrandom::Error);

impl NoRandomness {
    /// Always [`ErrorKind::NoRandomness`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::NoRandomness
    }
}

/// Why a route to a TURN server (a resolved address, a stream bridge, a tap) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TurnRouteError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("a trusted certificate: {0}")]
    TrustedCertificate(#[source] tls::TlsError),
    #[error("TURN/TLS bridge: {0}")]
    BridgeTls(#[source] std::io::Error),
    #[error("TURN/{transport:?} bridge: {source}")]
    Bridge {
        transport: TurnTransport,
        #[source]
        source: std::io::Error,
    },
    #[error("TURN tap: {0}")]
    Tap(#[source] std::io::Error),
}

impl TurnRouteError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Resolve { .. } | Self::NoAddress { .. } => ErrorKind::Resolve,
            Self::TrustedCertificate(_) | Self::BridgeTls(_) => ErrorKind::TlsSetup,
            Self::Bridge { .. } | Self::Tap(_) => ErrorKind::TurnBridge,
        }
    }
}

/// A random pairing code.
pub fn random_code() -> Result<PairingCode, NoRandomness> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes)?;
    Ok(PairingCode::from_random_bytes(bytes))
}

/// A session registered on a relay.
pub struct Registered {
    pub session: SignalingSession,
    pub code: PairingCode,
    /// The identity whose public key was registered.
    pub identity: Identity,
    pub server_id: String,
    pub ice_servers: Vec<WireIceServer>,
    /// Connect step timings.
    pub timings: ConnectTimings,
    /// `register` → `registered` (+ the `ice_servers` round).
    pub register_ms: f64,
}

/// Connects to `url`, registers `code` (random when `None`) with a fresh identity's public
/// key, asking for `ice_servers`.
pub async fn connect_and_register(
    url: &Url,
    trust: &TrustAnchors,
    code: Option<PairingCode>,
    step_timeout: Duration,
) -> Result<Registered, SessionError> {
    let identity = Identity::ephemeral().map_err(|e| SessionError::Refused(e.to_string()))?;
    connect_and_register_as(url, trust, code, &identity, step_timeout).await
}

/// [`connect_and_register`] with `identity`'s public key.
pub async fn connect_and_register_as(
    url: &Url,
    trust: &TrustAnchors,
    code: Option<PairingCode>,
    identity: &Identity,
    step_timeout: Duration,
) -> Result<Registered, SessionError> {
    let mut session = SignalingSession::connect(url, trust, step_timeout).await?;
    let code = match code {
        Some(code) => code,
        None => random_code().map_err(|e| SessionError::Refused(e.to_string()))?,
    };
    let started = Instant::now();
    let (server_id, ice_servers) = session
        .register_asking_ice_servers(code, &identity.public_base64(), step_timeout)
        .await?;
    Ok(Registered {
        timings: session.timings().clone(),
        session,
        code,
        identity: identity.clone(),
        server_id,
        ice_servers,
        register_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// relay-lite hands TURN credentials (`ice_servers`) only to a paired connection: pairs
/// `session` (registered as `own_code`) with a second connection of ours on the same relay
/// and returns what the relay then sends `session` (empty from a relay that sends none).
pub async fn ice_servers_by_self_pairing(
    session: &mut SignalingSession,
    own_code: PairingCode,
    url: &Url,
    trust: &TrustAnchors,
    step_timeout: Duration,
) -> Result<Vec<WireIceServer>, SessionError> {
    let mut other = SignalingSession::connect(url, trust, step_timeout).await?;
    let other_code = random_code().map_err(|e| SessionError::Refused(e.to_string()))?;
    let identity = Identity::ephemeral().map_err(|e| SessionError::Refused(e.to_string()))?;
    other
        .register(other_code, &identity.public_base64(), step_timeout)
        .await?;
    session
        .send(ClientMessage::PairRequest {
            target_code: other_code,
            proposed_name: Some("call-probe check".into()),
        })
        .await?;
    other
        .recv_until(
            step_timeout,
            "pair_incoming",
            |message| matches!(message, ServerMessage::PairIncoming { .. }).then_some(()),
            |_| {},
        )
        .await?;
    other
        .send(ClientMessage::PairResponse {
            target_code: own_code,
            accepted: true,
        })
        .await?;
    let matched = session
        .recv_until(
            step_timeout,
            "pair_matched",
            |message| matches!(message, ServerMessage::PairMatched { .. }).then_some(()),
            |_| {},
        )
        .await;
    let servers = match matched {
        Ok(()) => session.ice_servers_after_pairing(step_timeout).await,
        Err(error) => Err(error),
    };
    other.close(step_timeout).await;
    servers
}

/// How media may reach the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// Every transport the relay offers, at once: `turn:…?transport=udp` directly, TCP and
    /// TLS through stream bridges. ICE keeps what works, so a network that blocks UDP falls
    /// back to TURN over TCP or TLS by itself.
    #[default]
    Auto,
    /// `turn:…?transport=udp`.
    Udp,
    /// `turn:…?transport=tcp` through a stream bridge on 127.0.0.1.
    Tcp,
    /// `turns:…` through a TLS stream bridge on 127.0.0.1.
    Tls,
}

impl TurnTransport {
    fn allows(self, wanted: TurnTransport) -> bool {
        self == TurnTransport::Auto || self == wanted
    }
}

impl std::str::FromStr for TurnTransport {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "udp" => Ok(Self::Udp),
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            other => Err(format!(
                "TURN transport {other:?} is not auto, udp, tcp or tls"
            )),
        }
    }
}

/// One TURN URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    pub secure: bool,
    pub host: String,
    pub port: u16,
    pub transport: String,
}

/// Parses `turn:host:port?transport=…` / `turns:…` / `stun:…` (the transport defaults to
/// `udp` for `turn:` and `tcp` for `turns:`).
pub fn parse_ice_url(text: &str) -> Option<(String, TurnUrl)> {
    let (scheme, rest) = text.split_once(':')?;
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
            (host.to_string(), port.parse().ok()?)
        }
        _ => (
            hostport.to_string(),
            if scheme == "turns" || scheme == "stuns" {
                5349
            } else {
                3478
            },
        ),
    };
    let transport = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| if scheme == "turns" { "tcp" } else { "udp" }.into());
    Some((
        scheme.to_ascii_lowercase(),
        TurnUrl {
            secure: scheme.eq_ignore_ascii_case("turns"),
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            transport,
        },
    ))
}

/// Resolves `host:port` to one address.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, TurnRouteError> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| TurnRouteError::Resolve {
            host: host.into(),
            source,
        })?
        .next()
        .ok_or_else(|| TurnRouteError::NoAddress { host: host.into() })
}

/// The relay's ICE servers, credentials left out (for reports).
pub fn describe_ice_servers(servers: &[WireIceServer]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect()
}

/// One way a call's media may reach TURN: the [`TurnTap`] the engine's TURN client talks to,
/// and, for TCP and TLS, the stream bridge behind it.
#[derive(Debug)]
pub struct TurnRoute {
    pub tap: TurnTap,
    pub bridge: Option<StreamBridge>,
}

/// The ways a call's media may reach TURN (keep them for as long as the call lasts).
#[derive(Debug, Default)]
pub struct TurnPaths {
    pub udp: Option<TurnRoute>,
    pub tcp: Option<TurnRoute>,
    pub tls: Option<TurnRoute>,
}

impl TurnPaths {
    fn routes(&self) -> impl Iterator<Item = (TurnTransport, &TurnRoute)> {
        [
            (TurnTransport::Udp, &self.udp),
            (TurnTransport::Tcp, &self.tcp),
            (TurnTransport::Tls, &self.tls),
        ]
        .into_iter()
        .filter_map(|(transport, route)| route.as_ref().map(|route| (transport, route)))
    }

    /// The transports the engine was given, in order udp, tcp, tls.
    pub fn offered(&self) -> Vec<TurnTransport> {
        self.routes().map(|(transport, _)| transport).collect()
    }

    /// How the TURN client whose local UDP socket has port `port` reached its server, if it
    /// went through one of these routes.
    pub fn transport_of(&self, port: u16) -> Option<TurnTransport> {
        self.routes()
            .find(|(_, route)| route.tap.has_carried_for(port))
            .map(|(transport, _)| transport)
    }

    /// How our media reached TURN in `call`, if ICE selected one of our relay candidates.
    pub fn relayed_media(&self, call: &CallReport) -> Option<TurnTransport> {
        let local = &call.ice.selected_pair.as_ref()?.local;
        if local.kind != "relay" {
            return None;
        }
        self.transport_of(local.related_port?)
    }

    /// Which offered transports gave the call a relay candidate, and which did not.
    pub fn allocations(&self, call: &CallReport) -> (Vec<TurnTransport>, Vec<TurnTransport>) {
        let got: Vec<TurnTransport> = call
            .ice
            .local_relays
            .iter()
            .filter_map(|port| self.transport_of(*port))
            .collect();
        self.offered()
            .into_iter()
            .partition(|transport| got.contains(transport))
    }

    /// Adds to `call`'s report what the TURN taps saw: the DTLS negotiation of a relayed call
    /// (when the engine's own socket did not see it) and final DTLS flights sent again.
    pub fn complete(&self, call: &mut CallReport) {
        if call.dtls.srtp_profile.is_none() {
            if let Some(negotiation) = self.routes().find_map(|(_, route)| route.tap.negotiation())
            {
                call.dtls.observe(negotiation, "ServerHello through TURN");
            }
        }
        call.dtls.final_flight_resends_through_turn = self
            .routes()
            .map(|(_, route)| route.tap.final_flight_resends())
            .sum();
    }
}

/// The engine's ICE servers for calls through `transport`, and the routes to TURN behind
/// them: every TURN URL the engine gets points at a [`TurnTap`] on 127.0.0.1, carrying to the
/// relay's server directly (UDP) or through a stream bridge (TCP, TLS). `with_stun` keeps
/// `stun:` URLs (srflx candidates; the engine then leaves its own tapped socket, see the
/// README). With [`TurnTransport::Auto`] a transport that cannot be set up (its host does
/// not resolve) is left out with a warning; asked for by name, it is an error.
pub async fn engine_ice_servers(
    servers: &[WireIceServer],
    transport: TurnTransport,
    with_stun: bool,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(Vec<IceServer>, TurnPaths), TurnRouteError> {
    let mut out = Vec::new();
    let mut paths = TurnPaths::default();
    for server in servers {
        let mut urls = Vec::new();
        for url in &server.urls {
            let Some((scheme, parsed)) = parse_ice_url(url) else {
                continue;
            };
            let wanted = match (scheme.as_str(), parsed.transport.as_str()) {
                ("stun", _) => {
                    if with_stun {
                        urls.push(url.clone());
                    }
                    continue;
                }
                ("turn", "udp") if paths.udp.is_none() => TurnTransport::Udp,
                ("turn", "tcp") if paths.tcp.is_none() => TurnTransport::Tcp,
                ("turns", _) if paths.tls.is_none() => TurnTransport::Tls,
                _ => continue,
            };
            if !transport.allows(wanted) {
                continue;
            }
            match start_route(&parsed, wanted, extra_roots).await {
                Ok(route) => {
                    urls.push(route.tap.turn_url());
                    let slot = match wanted {
                        TurnTransport::Udp => &mut paths.udp,
                        TurnTransport::Tcp => &mut paths.tcp,
                        _ => &mut paths.tls,
                    };
                    *slot = Some(route);
                }
                Err(error) if transport == TurnTransport::Auto => {
                    tracing::warn!("leaving out {url}: {error}");
                }
                Err(error) => return Err(error),
            }
        }
        if !urls.is_empty() {
            out.push(IceServer {
                urls,
                username: server.username.clone().unwrap_or_default(),
                credential: server.credential.clone().unwrap_or_default(),
            });
        }
    }
    Ok((out, paths))
}

/// A tap towards the TURN server of `url` (see [`turn_target`]).
async fn start_route(
    url: &TurnUrl,
    transport: TurnTransport,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<TurnRoute, TurnRouteError> {
    let (target, bridge) = turn_target(url, transport, extra_roots).await?;
    let tap = TurnTap::start(target).await.map_err(TurnRouteError::Tap)?;
    Ok(TurnRoute { tap, bridge })
}

/// Where a UDP TURN client sends to reach the TURN server of `url` over `transport`: the
/// server itself for `Udp`, else a stream bridge on 127.0.0.1 carrying to it over TCP (or TLS
/// for `Tls`), returned to be kept alive as long as it is used.
pub async fn turn_target(
    url: &TurnUrl,
    transport: TurnTransport,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(SocketAddr, Option<StreamBridge>), TurnRouteError> {
    let address = resolve(&url.host, url.port).await?;
    let tls = match transport {
        TurnTransport::Udp | TurnTransport::Auto => return Ok((address, None)),
        TurnTransport::Tcp => None,
        TurnTransport::Tls => Some(
            BridgeTls::with_config(
                &url.host,
                std::sync::Arc::new(
                    tls::client_config(extra_roots).map_err(TurnRouteError::TrustedCertificate)?,
                ),
            )
            .map_err(TurnRouteError::BridgeTls)?,
        ),
    };
    let bridge = StreamBridge::start(address, tls)
        .await
        .map_err(|source| TurnRouteError::Bridge { transport, source })?;
    Ok((bridge.local_addr(), Some(bridge)))
}

/// Reads PEM certificates to trust (`--ca-file`).
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, tls::TlsError> {
    tls::read_pem_certificates(path)
}

/// What `wss://` sessions trust: the web PKI, or only `extra` when given (`--ca-file`).
pub fn trust_anchors(extra: &[rustls::pki_types::CertificateDer<'static>]) -> TrustAnchors {
    if extra.is_empty() {
        TrustAnchors::WebPki
    } else {
        TrustAnchors::Only(extra.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_urls_are_taken_apart() {
        let (scheme, url) = parse_ice_url("turn:127.0.0.1:3478?transport=udp").unwrap();
        assert_eq!(scheme, "turn");
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 3478));
        assert_eq!(url.transport, "udp");
        let (scheme, url) = parse_ice_url("turns:localhost:5349?transport=tcp").unwrap();
        assert_eq!(scheme, "turns");
        assert!(url.secure);
        assert_eq!(url.transport, "tcp");
        let (_, url) = parse_ice_url("turn:relay.example.org").unwrap();
        assert_eq!((url.port, url.transport.as_str()), (3478, "udp"));
        let (_, url) = parse_ice_url("stun:[::1]:3478").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 3478));
        assert!(parse_ice_url("nonsense").is_none());
    }

    fn relay_servers() -> Vec<WireIceServer> {
        vec![WireIceServer {
            urls: vec![
                "stun:127.0.0.1:3478".into(),
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turn:127.0.0.1:3478?transport=tcp".into(),
                "turns:localhost:5349?transport=tcp".into(),
            ],
            username: Some("1700000000:probe".into()),
            credential: Some("secret".into()),
        }]
    }

    #[tokio::test]
    async fn auto_offers_every_turn_transport_at_once() {
        let (servers, paths) =
            engine_ice_servers(&relay_servers(), TurnTransport::Auto, false, &[])
                .await
                .unwrap();
        let urls = &servers[0].urls;
        assert_eq!(urls.len(), 3, "{urls:?}");
        assert_eq!(servers[0].credential, "secret");
        let (udp, tcp, tls) = (
            paths.udp.as_ref().unwrap(),
            paths.tcp.as_ref().unwrap(),
            paths.tls.as_ref().unwrap(),
        );
        // Every URL points at a tap; UDP's carries to the server, TCP's and TLS's to a bridge.
        for route in [udp, tcp, tls] {
            assert!(urls.contains(&route.tap.turn_url()), "{urls:?}");
        }
        assert_eq!(
            udp.tap.upstream(),
            "127.0.0.1:3478".parse::<SocketAddr>().unwrap()
        );
        assert!(udp.bridge.is_none());
        assert_eq!(
            tcp.tap.upstream(),
            tcp.bridge.as_ref().unwrap().local_addr()
        );
        assert_eq!(
            tls.tap.upstream(),
            tls.bridge.as_ref().unwrap().local_addr()
        );
        // Nothing has gone through yet.
        assert_eq!(paths.transport_of(40000), None);
        assert_eq!(
            paths.offered(),
            [TurnTransport::Udp, TurnTransport::Tcp, TurnTransport::Tls]
        );
    }

    #[tokio::test]
    async fn a_named_transport_offers_only_that_one() {
        for (transport, with_stun) in [
            (TurnTransport::Udp, true),
            (TurnTransport::Tcp, false),
            (TurnTransport::Tls, false),
        ] {
            let (servers, paths) = engine_ice_servers(&relay_servers(), transport, with_stun, &[])
                .await
                .unwrap();
            let urls = &servers[0].urls;
            assert_eq!(paths.offered(), [transport]);
            let route = paths.routes().next().unwrap().1;
            if with_stun {
                assert_eq!(
                    urls[..],
                    ["stun:127.0.0.1:3478".to_string(), route.tap.turn_url()]
                );
            } else {
                assert_eq!(urls[..], [route.tap.turn_url()]);
            }
        }
        assert_eq!("auto".parse(), Ok(TurnTransport::Auto));
        assert!("quic"
            .parse::<TurnTransport>()
            .unwrap_err()
            .contains("auto, udp, tcp or tls"));
    }

    #[tokio::test]
    async fn auto_leaves_out_a_transport_it_cannot_set_up_but_a_named_one_fails() {
        let servers = vec![WireIceServer {
            urls: vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turns::443?transport=tcp".into(),
            ],
            username: None,
            credential: None,
        }];
        let (auto, paths) = engine_ice_servers(&servers, TurnTransport::Auto, false, &[])
            .await
            .unwrap();
        assert_eq!(auto[0].urls, [paths.udp.as_ref().unwrap().tap.turn_url()]);
        assert!(paths.tls.is_none());
        let error = engine_ice_servers(&servers, TurnTransport::Tls, false, &[])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Resolve);
        assert!(error.to_string().contains("cannot resolve"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_extra_root_is_a_tls_setup_error() {
        let url = TurnUrl {
            host: "127.0.0.1".into(),
            port: 5349,
            transport: "tcp".into(),
            secure: true,
        };
        let bogus = rustls::pki_types::CertificateDer::from(vec![1, 2, 3]);
        let error = turn_target(&url, TurnTransport::Tls, std::slice::from_ref(&bogus))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TlsSetup);
        let source = tls::client_config(&[bogus]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("a trusted certificate: {source}")
        );
    }
}
