//! What `call`, `answer` and `check` share: opening a registered session on a relay (with
//! the relay's `ice_servers`), a random pairing code and X25519-shaped public key, turning the
//! relay's ICE servers into the engine's (TURN over TCP/TLS through relay-lite's stream
//! bridge), and descriptions of ICE servers without their credentials.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_lite::turn::rustls::RootCertStore;
use relay_lite::turn::{BridgeTls, StreamBridge};
use serde::Serialize;
use url::Url;
use zajel_wire::pairing::{encode_x25519_public_key, PairingCode};
use zajel_wire::signaling::IceServer as WireIceServer;

use crate::config::IceServer;
use crate::session::{ConnectTimings, SessionError, SignalingSession, TrustAnchors};

/// A random pairing code.
pub fn random_code() -> Result<PairingCode, String> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(PairingCode::from_random_bytes(bytes))
}

/// A random 32-byte public key in Zajel's encoding (the probe does no end-to-end messaging,
/// so the key only has to have the right shape).
pub fn random_public_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(encode_x25519_public_key(&bytes))
}

/// A session registered on a relay.
pub struct Registered {
    pub session: SignalingSession,
    pub code: PairingCode,
    pub server_id: String,
    pub ice_servers: Vec<WireIceServer>,
    /// Connect step timings.
    pub timings: ConnectTimings,
    /// `register` → `registered` (+ the `ice_servers` round).
    pub register_ms: f64,
}

/// Connects to `url`, registers `code` (random when `None`) asking for `ice_servers`.
pub async fn connect_and_register(
    url: &Url,
    trust: &TrustAnchors,
    code: Option<PairingCode>,
    step_timeout: Duration,
) -> Result<Registered, SessionError> {
    let mut session = SignalingSession::connect(url, trust, step_timeout).await?;
    let code = match code {
        Some(code) => code,
        None => random_code().map_err(SessionError::Refused)?,
    };
    let key = random_public_key().map_err(SessionError::Refused)?;
    let started = Instant::now();
    let (server_id, ice_servers) = session
        .register_asking_ice_servers(code, &key, step_timeout)
        .await?;
    Ok(Registered {
        timings: session.timings().clone(),
        session,
        code,
        server_id,
        ice_servers,
        register_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// How media reaches the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TurnTransport {
    /// `turn:…?transport=udp` as the relay hands it out.
    #[default]
    Udp,
    /// `turn:…?transport=tcp` through a stream bridge on 127.0.0.1.
    Tcp,
    /// `turns:…` through a TLS stream bridge on 127.0.0.1.
    Tls,
}

impl std::str::FromStr for TurnTransport {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "udp" => Ok(Self::Udp),
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            other => Err(format!("TURN transport {other:?} is not udp, tcp or tls")),
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
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// The relay's ICE servers, credentials left out (for reports).
pub fn describe_ice_servers(servers: &[WireIceServer]) -> Vec<String> {
    servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect()
}

/// The TURN transport a call uses: the one asked for when the call is
/// relay-only, else TURN over UDP (the bridge for TCP/TLS runs only then).
pub fn media_transport(relay_only: bool, requested: TurnTransport) -> TurnTransport {
    if relay_only {
        requested
    } else {
        TurnTransport::Udp
    }
}

/// The engine's ICE servers for calls through `transport`, and the bridge that carries TURN
/// over TCP/TLS (keep it alive for the call). `with_stun` keeps `stun:` URLs (srflx
/// candidates; the engine then leaves its own tapped socket, see the README).
pub async fn engine_ice_servers(
    servers: &[WireIceServer],
    transport: TurnTransport,
    with_stun: bool,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(Vec<IceServer>, Option<StreamBridge>), String> {
    let mut out = Vec::new();
    let mut bridge = None;
    for server in servers {
        let username = server.username.clone().unwrap_or_default();
        let credential = server.credential.clone().unwrap_or_default();
        let mut urls = Vec::new();
        for url in &server.urls {
            let Some((scheme, parsed)) = parse_ice_url(url) else {
                continue;
            };
            match (scheme.as_str(), transport) {
                ("stun", _) if with_stun => urls.push(url.clone()),
                ("turn", TurnTransport::Udp) if parsed.transport == "udp" => urls.push(url.clone()),
                ("turn", TurnTransport::Tcp) if parsed.transport == "tcp" && bridge.is_none() => {
                    let address = resolve(&parsed.host, parsed.port).await?;
                    let started = StreamBridge::start(address, None)
                        .await
                        .map_err(|e| format!("TURN/TCP bridge: {e}"))?;
                    urls.push(started.turn_url());
                    bridge = Some(started);
                }
                ("turns", TurnTransport::Tls) if bridge.is_none() => {
                    let address = resolve(&parsed.host, parsed.port).await?;
                    let tls = BridgeTls::new(&parsed.host, root_store(extra_roots)?)
                        .map_err(|e| format!("TURN/TLS bridge: {e}"))?;
                    let started = StreamBridge::start(address, Some(tls))
                        .await
                        .map_err(|e| format!("TURN/TLS bridge: {e}"))?;
                    urls.push(started.turn_url());
                    bridge = Some(started);
                }
                _ => {}
            }
        }
        if !urls.is_empty() {
            out.push(IceServer {
                urls,
                username: username.clone(),
                credential: credential.clone(),
            });
        }
    }
    Ok((out, bridge))
}

/// The web PKI roots plus `extra`.
pub fn root_store(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in extra {
        roots
            .add(certificate.clone())
            .map_err(|e| format!("a trusted certificate: {e}"))?;
    }
    Ok(roots)
}

/// Reads PEM certificates to trust (`--ca-file`).
pub fn read_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    discovery_client::tls::read_pem_certificates(path)
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
}
