//! Candidate checks: connect, WebSocket upgrade (over TLS for `wss://`), wait
//! for the `server_info` greeting, send `identity_challenge` with a fresh
//! nonce and then `{"type":"ping"}`, and time the `{"type":"pong"}` (Zajel's
//! keep-alive, reference §2), with the steps of the shared signaling client
//! (`zajel_client_net::signaling`). Names are resolved here so that a host
//! resolving to a private address is refused unless allowed, and failures are
//! classified into report [`Outcome`]s here.
//!
//! The identity challenge goes out before the `ping`, so a server answers it
//! before the `pong` (a relay handles one connection's frames in order). An
//! `identity_proof` is verified here against our nonce and the key inside
//! its `serverId` ([`IdentityCheck::Proof`] or [`IdentityCheck::Invalid`]);
//! an `error` (Zajel's server: `Unknown message type: identity_challenge`)
//! or nothing before the `pong` is [`IdentityCheck::Unanswered`]. Whether the
//! key and endpoint are the ones the candidate's entry names is the discovery
//! state's rule ([`zajel_discovery_core::identity`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite, MaybeTlsStream};
use url::Url;
use zajel_client_net::signaling::{self, ReceiveError, SignalingSocket};
use zajel_discovery_core::identity::IdentityCheck;
use zajel_wire::signaling::{ClientMessage, ServerMessage, MAX_FRAME_BYTES};

use crate::net;
use crate::report::Outcome;

/// How a check ended.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub outcome: Outcome,
    pub detail: String,
    pub rtt_ms: Option<f64>,
    /// The `serverId` from `server_info`.
    pub announced_server_id: Option<String>,
    /// What the identity challenge showed.
    pub identity: IdentityCheck,
}

impl ProbeResult {
    fn failed(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            rtt_ms: None,
            announced_server_id: None,
            identity: IdentityCheck::Unanswered("the check did not get that far".into()),
        }
    }
}

/// Checks one WebSocket URL within `timeout`.
pub async fn probe(
    url: &Url,
    tls: Arc<rustls::ClientConfig>,
    allow_private: bool,
    timeout: Duration,
) -> ProbeResult {
    match tokio::time::timeout(timeout, probe_inner(url, tls, allow_private)).await {
        Ok(result) => result,
        Err(_) => ProbeResult::failed(
            Outcome::TimedOut,
            format!("no pong within {} ms", timeout.as_millis()),
        ),
    }
}

async fn resolve(url: &Url, allow_private: bool) -> Result<Vec<SocketAddr>, ProbeResult> {
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ProbeResult::failed(Outcome::Invalid, "no port"))?;
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(v4)) => vec![SocketAddr::new(v4.into(), port)],
        Some(url::Host::Ipv6(v6)) => vec![SocketAddr::new(v6.into(), port)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| {
                ProbeResult::failed(Outcome::DnsFailure, format!("resolving {name}: {e}"))
            })?
            .collect(),
        None => return Err(ProbeResult::failed(Outcome::Invalid, "no host")),
    };
    let allowed: Vec<SocketAddr> = addresses
        .iter()
        .copied()
        .filter(|a| allow_private || !net::is_private(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(if addresses.is_empty() {
            ProbeResult::failed(Outcome::DnsFailure, "host has no address")
        } else {
            ProbeResult::failed(
                Outcome::PrivateAddress,
                format!(
                    "{} is a loopback or private address (refused unless private addresses are allowed)",
                    addresses[0].ip()
                ),
            )
        });
    }
    Ok(allowed)
}

async fn probe_inner(
    url: &Url,
    tls: Arc<rustls::ClientConfig>,
    allow_private: bool,
) -> ProbeResult {
    let addresses = match resolve(url, allow_private).await {
        Ok(addresses) => addresses,
        Err(result) => return result,
    };
    let mut last_error = None;
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(stream) = stream else {
        let error = last_error.unwrap_or_else(|| std::io::Error::other("no address"));
        return ProbeResult::failed(net::classify(&error), format!("connect: {error}"));
    };
    let _ = stream.set_nodelay(true);
    let mut socket = match upgrade(url, stream, tls).await {
        Ok(socket) => socket,
        Err(error) => {
            let outcome = match net::classify(&error) {
                Outcome::Error => Outcome::Protocol,
                other => other,
            };
            return ProbeResult::failed(
                outcome,
                format!("WebSocket upgrade: {}", net::error_chain(&error)),
            );
        }
    };
    // The greeting comes first on every Zajel signaling connection.
    let announced = match next_server_message(&mut socket).await {
        Ok(ServerMessage::ServerInfo { server_id, .. }) => Some(server_id),
        Ok(other) => {
            return ProbeResult::failed(
                Outcome::Protocol,
                format!("expected server_info first, got {}", other.type_name()),
            )
        }
        Err(result) => return result,
    };
    let (nonce, challenge) = match signaling::identity_challenge() {
        Ok(challenge) => challenge,
        Err(e) => return ProbeResult::failed(Outcome::Error, format!("no random nonce: {e}")),
    };
    if let Err(e) = socket.send(&challenge).await {
        return ProbeResult::failed(
            net::classify(&e),
            format!("sending identity_challenge: {e}"),
        );
    }
    let sent = Instant::now();
    if let Err(e) = socket.send(&ClientMessage::Ping).await {
        return ProbeResult::failed(net::classify(&e), format!("sending ping: {e}"));
    }
    let mut identity = None;
    loop {
        match next_server_message(&mut socket).await {
            Ok(ServerMessage::Pong) => {
                let rtt = sent.elapsed().as_secs_f64() * 1000.0;
                socket.close().await;
                return ProbeResult {
                    outcome: Outcome::Ok,
                    detail: String::new(),
                    rtt_ms: Some(rtt),
                    announced_server_id: announced,
                    identity: identity.unwrap_or_else(|| {
                        IdentityCheck::Unanswered("no identity_proof before the pong".into())
                    }),
                };
            }
            Ok(ServerMessage::IdentityProof(proof)) if identity.is_none() => {
                identity = Some(match proof.verify(&nonce) {
                    Ok(_) => IdentityCheck::Proof {
                        server_id: proof.server_id,
                        endpoint: proof.endpoint,
                    },
                    Err(e) => IdentityCheck::Invalid(e.to_string()),
                });
            }
            Ok(ServerMessage::Error { message }) if identity.is_none() => {
                identity = Some(IdentityCheck::Unanswered(message));
            }
            Ok(_) => continue,
            Err(result) => return result,
        }
    }
}

/// TLS for `wss://`, then the WebSocket upgrade; a failure of either is an
/// error of the upgrade (as when the WebSocket library does the TLS itself).
async fn upgrade(
    url: &Url,
    tcp: TcpStream,
    tls: Arc<rustls::ClientConfig>,
) -> Result<SignalingSocket, tungstenite::Error> {
    let stream = if url.scheme() == "wss" {
        let host = signaling::url_host(url).unwrap_or_default();
        if rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
            return Err(tungstenite::Error::Tls(
                tungstenite::error::TlsError::InvalidDnsName,
            ));
        }
        signaling::tls_handshake(&host, tcp, tls)
            .await
            .map_err(tungstenite::Error::Io)?
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    SignalingSocket::upgrade(url, stream, MAX_FRAME_BYTES).await
}

async fn next_server_message(socket: &mut SignalingSocket) -> Result<ServerMessage, ProbeResult> {
    socket.next_message().await.map_err(|error| match error {
        ReceiveError::NotZajel { reason, .. } => {
            ProbeResult::failed(Outcome::Protocol, format!("not a Zajel message: {reason}"))
        }
        ReceiveError::Closed => {
            ProbeResult::failed(Outcome::Protocol, "the server closed the connection")
        }
        ReceiveError::Socket(e) => ProbeResult::failed(
            match net::classify(&e) {
                Outcome::Error => Outcome::Protocol,
                other => other,
            },
            net::error_chain(&e),
        ),
    })
}
