//! The one signaling client: a WebSocket that speaks Zajel's protocol
//! (reference §2) from the client side.
//!
//! Two levels share the same steps:
//!
//! - The steps themselves, for a caller that keeps its own policy (which
//!   addresses it may dial, how failures are classified):
//!   [`tls_handshake`], then [`SignalingSocket::upgrade`], then
//!   [`SignalingSocket::next_message`] for the `server_info` greeting and
//!   [`SignalingSocket::send`] (with [`identity_challenge`] for a fresh
//!   `identity_challenge`). discovery-client's candidate check (connect,
//!   upgrade, `server_info`, `identity_challenge`/`identity_proof`,
//!   `ping`/`pong`) is built on them.
//! - [`SignalingSession::connect`] opens the connection step by step — name
//!   resolution, TCP, then TLS when the URL is `wss://`, then the WebSocket
//!   upgrade, then the relay's `server_info` greeting — and records how long
//!   each step took in a [`ConnectTimings`], which is what `call-probe check`
//!   reports for the signaling path. After that the session is a pair of
//!   typed queues: frames to send are [`ClientMessage`]s, frames received are
//!   [`ServerMessage`]s. Pings keep the connection alive while it is idle.
//!   [`SignalingSession::prove_identity`] asks the relay on that very
//!   connection to prove its key ([`IdentityAnswer`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{
    ClientMessage, IceServer, ServerMessage, MAX_FRAME_BYTES, PING_INTERVAL_MS,
};
use zajel_wire::signature::{IdentityNonce, IDENTITY_NONCE_BYTES};

/// A fresh `identity_challenge`: 32 bytes from the operating system's random
/// source, and the message carrying them. Keep the nonce to check the
/// `identity_proof` with (`zajel_wire::signaling::IdentityProof::verify`).
pub fn identity_challenge() -> Result<(IdentityNonce, ClientMessage), getrandom::Error> {
    let mut nonce = [0u8; IDENTITY_NONCE_BYTES];
    getrandom::fill(&mut nonce)?;
    Ok((nonce, ClientMessage::IdentityChallenge { nonce }))
}

/// How many frames may wait in either direction before the session pushes back.
const QUEUE_FRAMES: usize = 256;

/// Which certificates a `wss://` connection trusts.
#[derive(Clone, Debug, Default)]
pub enum TrustAnchors {
    /// The public web PKI (the Mozilla roots compiled into `webpki-roots`).
    #[default]
    WebPki,
    /// Only these certificates (a test CA, or a self-signed relay's own certificate).
    Only(Vec<CertificateDer<'static>>),
}

impl TrustAnchors {
    /// The client TLS configuration for these anchors (see [`crate::tls`]).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
        let config = match self {
            TrustAnchors::WebPki => crate::tls::client_config(&[])?,
            TrustAnchors::Only(certificates) => {
                crate::tls::client_config_trusting_only(certificates)?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The host of a `ws://` or `wss://` URL as TLS and name resolution want it
/// (an IPv6 literal without its brackets).
pub fn url_host(url: &Url) -> Option<String> {
    Some(
        url.host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// The TLS handshake of a `wss://` connection with `host` over `tcp`.
pub async fn tls_handshake(
    host: &str,
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<MaybeTlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(MaybeTlsStream::Rustls(tls))
}

/// Why a frame could not be read from a [`SignalingSocket`].
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The server closed the connection (a close frame or the end of the stream).
    #[error("the server closed the connection")]
    Closed,
    /// A text frame that is not a server message.
    #[error("not a Zajel message: {reason}")]
    NotZajel { text: String, reason: String },
    /// The WebSocket failed.
    #[error("{0}")]
    Socket(#[source] tungstenite::Error),
}

/// A signaling WebSocket after the upgrade, before any session: frames one at a time.
#[derive(Debug)]
pub struct SignalingSocket {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SignalingSocket {
    /// The WebSocket upgrade of `url` over `stream` (plain, or TLS from
    /// [`tls_handshake`]), accepting frames of up to `max_frame_bytes`.
    pub async fn upgrade(
        url: &Url,
        stream: MaybeTlsStream<TcpStream>,
        max_frame_bytes: usize,
    ) -> Result<Self, tungstenite::Error> {
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_frame_bytes);
        config.max_frame_size = Some(max_frame_bytes);
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await?;
        Ok(Self { socket })
    }

    /// The next text frame (other frames are skipped).
    pub async fn next_text(&mut self) -> Result<String, ReceiveError> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
                Some(Ok(Message::Close(_))) | None => return Err(ReceiveError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(ReceiveError::Socket(error)),
            }
        }
    }

    /// The next server message.
    pub async fn next_message(&mut self) -> Result<ServerMessage, ReceiveError> {
        let text = self.next_text().await?;
        ServerMessage::parse(&text).map_err(|error| ReceiveError::NotZajel {
            reason: error.to_string(),
            text,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), tungstenite::Error> {
        self.socket.send(Message::text(message.to_text())).await
    }

    /// Closes the connection (best effort).
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Why a session could not be opened or went away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("not a signaling URL: {0}")]
    Url(String),
    #[error("DNS resolution failed: {0}")]
    Dns(String),
    #[error("TCP connection failed: {0}")]
    Tcp(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
    #[error("timed out during {0}")]
    Timeout(&'static str),
    #[error("the relay sent {0} instead of server_info")]
    NoGreeting(String),
    #[error("the relay refused: {0}")]
    Refused(String),
    #[error("the connection closed")]
    Closed,
}

/// How long each step of opening the session took. In JSON each is a float in milliseconds
/// named with `_ms` (`resolve_ms`, `tcp_connect_ms`, `tls_handshake_ms`,
/// `websocket_upgrade_ms`, `greeting_ms`), as every duration of the toolkit's reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectTimings {
    /// Name resolution of the relay's host (zero for an IP literal).
    #[serde(rename = "resolve_ms", serialize_with = "duration_ms")]
    pub resolve: Duration,
    /// The TCP handshake.
    #[serde(rename = "tcp_connect_ms", serialize_with = "duration_ms")]
    pub tcp_connect: Duration,
    /// The TLS handshake, for `wss://`.
    #[serde(rename = "tls_handshake_ms", serialize_with = "optional_duration_ms")]
    pub tls_handshake: Option<Duration>,
    /// The HTTP upgrade to WebSocket.
    #[serde(rename = "websocket_upgrade_ms", serialize_with = "duration_ms")]
    pub websocket_upgrade: Duration,
    /// From the upgrade to the relay's `server_info` greeting.
    #[serde(rename = "greeting_ms", serialize_with = "duration_ms")]
    pub greeting: Duration,
}

fn duration_ms<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64() * 1000.0)
}

fn optional_duration_ms<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => duration_ms(duration, serializer),
        None => serializer.serialize_none(),
    }
}

/// The relay's `server_info` greeting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    pub server_id: String,
    pub endpoint: String,
    pub region: String,
}

/// What a relay answered to an `identity_challenge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum IdentityAnswer {
    /// A proof for our nonce whose signature verifies by the key of
    /// `server_id` over `endpoint` (whether those are the expected ones is
    /// the caller's to judge).
    Proof { server_id: String, endpoint: String },
    /// A proof that does not hold (another nonce, a bad signature, malformed).
    Invalid { reason: String },
    /// An `error` instead (Zajel's server: `Unknown message type: identity_challenge`).
    Refused { message: String },
}

/// An open signaling session.
pub struct SignalingSession {
    url: Url,
    info: ServerInfo,
    timings: ConnectTimings,
    outgoing: mpsc::Sender<String>,
    incoming: mpsc::Receiver<ServerMessage>,
    /// `None` once [`SignalingSession::close`] has taken it.
    pump: Option<JoinHandle<()>>,
    /// Tells the pump to send what is queued, close the socket and stop.
    stop: Option<oneshot::Sender<()>>,
}

impl SignalingSession {
    /// Connects to `url` (`ws://` or `wss://`), waits for the greeting, and
    /// starts the session; each step must finish within `step_timeout`.
    pub async fn connect(
        url: &Url,
        trust: &TrustAnchors,
        step_timeout: Duration,
    ) -> Result<Self, SessionError> {
        crate::tls::install_crypto_provider();
        let secure = match url.scheme() {
            "wss" => true,
            "ws" => false,
            other => {
                return Err(SessionError::Url(format!(
                    "scheme {other} is not ws or wss"
                )))
            }
        };
        let host = url_host(url).ok_or_else(|| SessionError::Url("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let mut timings = ConnectTimings::default();

        let started = Instant::now();
        let addresses: Vec<_> = step(
            step_timeout,
            "name resolution",
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await?
        .map_err(|error| SessionError::Dns(error.to_string()))?
        .collect();
        timings.resolve = started.elapsed();

        let started = Instant::now();
        let tcp = connect_any(&addresses, step_timeout).await?;
        timings.tcp_connect = started.elapsed();
        let _ = tcp.set_nodelay(true);

        let stream = if secure {
            let config = trust
                .client_config()
                .map_err(|error| SessionError::Tls(error.to_string()))?;
            let started = Instant::now();
            let tls = step(
                step_timeout,
                "the TLS handshake",
                tls_handshake(&host, tcp, config),
            )
            .await?
            .map_err(|error| SessionError::Tls(error.to_string()))?;
            timings.tls_handshake = Some(started.elapsed());
            tls
        } else {
            MaybeTlsStream::Plain(tcp)
        };
        Self::upgrade(url, stream, timings, step_timeout).await
    }

    async fn upgrade(
        url: &Url,
        stream: MaybeTlsStream<TcpStream>,
        mut timings: ConnectTimings,
        step_timeout: Duration,
    ) -> Result<Self, SessionError> {
        let started = Instant::now();
        // Received call frames carry flat fields too, so they may exceed what we may send.
        let mut socket = step(
            step_timeout,
            "the WebSocket upgrade",
            SignalingSocket::upgrade(url, stream, 4 * MAX_FRAME_BYTES),
        )
        .await?
        .map_err(|error| SessionError::Upgrade(error.to_string()))?;
        timings.websocket_upgrade = started.elapsed();

        let started = Instant::now();
        let text = step(step_timeout, "the server_info greeting", socket.next_text())
            .await?
            .map_err(|error| match error {
                ReceiveError::Closed => SessionError::Closed,
                other => SessionError::Upgrade(other.to_string()),
            })?;
        let info = match ServerMessage::parse(&text) {
            Ok(ServerMessage::ServerInfo {
                server_id,
                endpoint,
                region,
            }) => ServerInfo {
                server_id,
                endpoint,
                region,
            },
            _ => return Err(SessionError::NoGreeting(text)),
        };
        timings.greeting = started.elapsed();

        let (outgoing, to_send) = mpsc::channel(QUEUE_FRAMES);
        let (received, incoming) = mpsc::channel(QUEUE_FRAMES);
        let (stop, stopped) = oneshot::channel();
        let pump = Some(tokio::spawn(pump(
            socket.socket,
            to_send,
            received,
            stopped,
        )));
        Ok(Self {
            url: url.clone(),
            info,
            timings,
            outgoing,
            incoming,
            pump,
            stop: Some(stop),
        })
    }

    /// The URL this session is connected to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The relay's greeting.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// How long opening the session took, step by step.
    pub fn timings(&self) -> &ConnectTimings {
        &self.timings
    }

    /// Queues a frame for the relay.
    pub async fn send(&self, message: ClientMessage) -> Result<(), SessionError> {
        self.send_text(message.to_text()).await
    }

    /// Queues a frame given as JSON text (for fields the wire types do not carry).
    pub async fn send_text(&self, text: String) -> Result<(), SessionError> {
        self.outgoing
            .send(text)
            .await
            .map_err(|_| SessionError::Closed)
    }

    /// Sends every frame queued so far, then a WebSocket close, and waits up to `limit` for
    /// that (frames arriving meanwhile are dropped). Dropping the session instead stops it at
    /// once and loses what is still queued — a `call_hangup` queued just before, say.
    pub async fn close(mut self, limit: Duration) {
        let Some(mut pump) = self.pump.take() else {
            return;
        };
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let finished = tokio::time::timeout(limit, async {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut pump => return,
                    // Keep the pump from blocking on a full receive queue.
                    _ = self.incoming.recv() => {}
                }
            }
        })
        .await;
        if finished.is_err() {
            pump.abort();
        }
    }

    /// A handle that can send frames (as JSON text) from another task.
    pub fn sender(&self) -> mpsc::Sender<String> {
        self.outgoing.clone()
    }

    /// Registers `code` like [`Self::register`] and asks for relay-lite's `ice_servers`
    /// (`"iceServers": true` on `register`, an additive field other relays ignore).
    /// relay-lite sends them only once the connection is paired or in a call (see
    /// [`Self::ice_servers_after_pairing`]); a relay that sends them right after `registered`
    /// (relay-lite before issue 19) has them returned here: a `ping` → `pong` after the
    /// registration tells that none is coming now. Returns the `serverId` and those servers
    /// (empty from relay-lite).
    pub async fn register_asking_ice_servers(
        &mut self,
        code: PairingCode,
        public_key: &str,
        limit: Duration,
    ) -> Result<(String, Vec<IceServer>), SessionError> {
        self.send(ClientMessage::Register {
            pairing_code: code,
            public_key: public_key.to_string(),
            ice_servers: true,
        })
        .await?;
        let server_id = self.registered(code, limit).await?;
        let servers = self.ice_servers_after_pairing(limit).await?;
        Ok((server_id, servers))
    }

    /// The `ice_servers` relay-lite sends a connection that asked for them once it is paired
    /// (right before `pair_matched` to the side that accepted, right after to the requester):
    /// a `ping` sent after `pair_matched` is answered after them. Empty when none came.
    pub async fn ice_servers_after_pairing(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<IceServer>, SessionError> {
        self.send(ClientMessage::Ping).await?;
        let mut servers = Vec::new();
        self.recv_until(
            limit,
            "ice_servers",
            |message| matches!(message, ServerMessage::Pong).then_some(()),
            |message| {
                if let ServerMessage::IceServers { ice_servers, .. } = message {
                    servers = ice_servers;
                }
            },
        )
        .await?;
        Ok(servers)
    }

    /// The next frame from the relay, or `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<ServerMessage> {
        self.incoming.recv().await
    }

    /// Waits up to `limit` for a frame that `accept` picks, handing every
    /// other frame to `other` (a relay's `error` frames end the wait).
    pub async fn recv_until<T>(
        &mut self,
        limit: Duration,
        what: &'static str,
        mut accept: impl FnMut(&ServerMessage) -> Option<T>,
        mut other: impl FnMut(ServerMessage),
    ) -> Result<T, SessionError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .map_err(|_| SessionError::Timeout(what))?
                .ok_or(SessionError::Closed)?;
            if let Some(found) = accept(&message) {
                return Ok(found);
            }
            if let ServerMessage::Error { message } = &message {
                return Err(SessionError::Refused(message.clone()));
            }
            other(message);
        }
    }

    /// Registers `code` with the X25519 `public_key`; returns the relay's `serverId`.
    pub async fn register(
        &mut self,
        code: PairingCode,
        public_key: &str,
        limit: Duration,
    ) -> Result<String, SessionError> {
        self.send(ClientMessage::Register {
            pairing_code: code,
            public_key: public_key.to_string(),
            ice_servers: false,
        })
        .await?;
        self.registered(code, limit).await
    }

    /// Waits for `registered` for `code` (its `serverId`), or a `code_collision`.
    async fn registered(
        &mut self,
        code: PairingCode,
        limit: Duration,
    ) -> Result<String, SessionError> {
        let wanted = code.as_str().to_string();
        self.recv_until(
            limit,
            "registration",
            |message| match message {
                ServerMessage::Registered {
                    pairing_code,
                    server_id,
                } if *pairing_code == wanted => Some(Ok(server_id.clone())),
                ServerMessage::CodeCollision { message } => {
                    Some(Err(SessionError::Refused(message.clone())))
                }
                _ => None,
            },
            |_| {},
        )
        .await?
    }

    /// Sends a fresh `identity_challenge` ([`identity_challenge`]) and waits
    /// up to `limit` for the `identity_proof` (checked against the nonce and
    /// the key inside its `serverId`) or an `error`; other frames meanwhile
    /// are dropped.
    pub async fn prove_identity(
        &mut self,
        limit: Duration,
    ) -> Result<IdentityAnswer, SessionError> {
        let (nonce, challenge) =
            identity_challenge().map_err(|error| SessionError::Refused(error.to_string()))?;
        self.send(challenge).await?;
        self.recv_until(
            limit,
            "identity_proof",
            |message| match message {
                ServerMessage::IdentityProof(proof) => Some(match proof.verify(&nonce) {
                    Ok(_) => IdentityAnswer::Proof {
                        server_id: proof.server_id.clone(),
                        endpoint: proof.endpoint.clone(),
                    },
                    Err(error) => IdentityAnswer::Invalid {
                        reason: error.to_string(),
                    },
                }),
                ServerMessage::Error { message } => Some(IdentityAnswer::Refused {
                    message: message.clone(),
                }),
                _ => None,
            },
            |_| {},
        )
        .await
    }

    /// Sends a `ping` and waits for the `pong`: the signaling round trip.
    pub async fn round_trip(&mut self, limit: Duration) -> Result<Duration, SessionError> {
        let started = Instant::now();
        self.send(ClientMessage::Ping).await?;
        self.recv_until(
            limit,
            "pong",
            |message| matches!(message, ServerMessage::Pong).then_some(()),
            |_| {},
        )
        .await?;
        Ok(started.elapsed())
    }
}

impl Drop for SignalingSession {
    /// Stops at once: frames still queued are lost ([`SignalingSession::close`] sends them).
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
    }
}

/// Runs `future`, or fails with a timeout naming `what`.
async fn step<F: std::future::Future>(
    limit: Duration,
    what: &'static str,
    future: F,
) -> Result<F::Output, SessionError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| SessionError::Timeout(what))
}

/// Tries each address in turn; the first TCP connection that opens wins.
async fn connect_any(
    addresses: &[std::net::SocketAddr],
    limit: Duration,
) -> Result<TcpStream, SessionError> {
    let mut last = SessionError::Dns("the name has no addresses".into());
    for address in addresses {
        match tokio::time::timeout(limit, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last = SessionError::Tcp(format!("{address}: {error}")),
            Err(_) => last = SessionError::Timeout("the TCP handshake"),
        }
    }
    Err(last)
}

/// Moves frames between the socket and the session's queues, and pings
/// the relay when nothing was sent for [`PING_INTERVAL_MS`].
async fn pump(
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    mut to_send: mpsc::Receiver<String>,
    received: mpsc::Sender<ServerMessage>,
    mut stop: oneshot::Receiver<()>,
) {
    let (mut sink, mut stream) = socket.split();
    let keepalive = Duration::from_millis(PING_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = &mut stop => {
                // Everything queued before the stop goes out first, then the close frame.
                while let Ok(message) = to_send.try_recv() {
                    if sink.send(Message::text(message)).await.is_err() {
                        return;
                    }
                }
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            message = to_send.recv() => {
                let Some(message) = message else {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                };
                if sink.send(Message::text(message)).await.is_err() {
                    return;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let Ok(message) = ServerMessage::parse(&text) else {
                        tracing::warn!(frame = %text, "ignoring a frame that is not a server message");
                        continue;
                    };
                    if received.send(message).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = tokio::time::sleep(keepalive) => {
                if sink.send(Message::text(ClientMessage::Ping.to_text())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timings_are_milliseconds_in_json() {
        let timings = ConnectTimings {
            resolve: Duration::ZERO,
            tcp_connect: Duration::from_micros(1500),
            tls_handshake: None,
            websocket_upgrade: Duration::from_millis(3),
            greeting: Duration::from_millis(40),
        };
        let json = serde_json::to_value(&timings).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"resolve_ms": 0.0, "tcp_connect_ms": 1.5,
                "tls_handshake_ms": null, "websocket_upgrade_ms": 3.0, "greeting_ms": 40.0})
        );
    }

    /// What the fake relay sends first.
    #[derive(Clone, Copy)]
    enum First {
        Greeting,
        Pong,
        Garbage,
    }

    /// A one-connection fake relay on 127.0.0.1: sends `first`, then answers
    /// every `ping` with a `pong` and `identity_challenge` as Zajel's server
    /// does (`Unknown message type`).
    async fn fake_relay(first: First) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("ws://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let text = match first {
                First::Greeting => ServerMessage::ServerInfo {
                    server_id: "ed25519:AAAA".into(),
                    endpoint: "ws://relay.test".into(),
                    region: "test".into(),
                }
                .to_text(),
                First::Pong => ServerMessage::Pong.to_text(),
                First::Garbage => "not json".into(),
            };
            socket.send(Message::text(text)).await.unwrap();
            while let Some(Ok(frame)) = socket.next().await {
                if let Message::Text(text) = frame {
                    let reply = match ClientMessage::parse(&text) {
                        Ok(ClientMessage::Ping) => ServerMessage::Pong,
                        Ok(ClientMessage::IdentityChallenge { .. }) => {
                            ServerMessage::error("Unknown message type: identity_challenge")
                        }
                        _ => continue,
                    };
                    if socket.send(Message::text(reply.to_text())).await.is_err() {
                        return;
                    }
                }
            }
        });
        url
    }

    const STEP: Duration = Duration::from_secs(5);

    /// A one-connection fake relay that greets, then hands every text frame it receives, and
    /// whether the client closed the WebSocket (`None`), to the returned channel.
    async fn recording_relay() -> (Url, mpsc::UnboundedReceiver<Option<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("ws://{}/", listener.local_addr().unwrap())).unwrap();
        let (frames, heard) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let greeting = ServerMessage::ServerInfo {
                server_id: "ed25519:AAAA".into(),
                endpoint: "ws://relay.test".into(),
                region: "test".into(),
            };
            socket
                .send(Message::text(greeting.to_text()))
                .await
                .unwrap();
            while let Some(Ok(frame)) = socket.next().await {
                match frame {
                    Message::Text(text) => {
                        let _ = frames.send(Some(text.to_string()));
                    }
                    Message::Close(_) => {
                        let _ = frames.send(None);
                        return;
                    }
                    _ => {}
                }
            }
        });
        (url, heard)
    }

    #[tokio::test]
    async fn close_sends_every_queued_frame_then_the_close() {
        let (url, mut heard) = recording_relay().await;
        let session = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .unwrap();
        let sent: Vec<String> = (0..QUEUE_FRAMES / 2)
            .map(|n| format!("{{\"type\":\"ping\",\"n\":{n}}}"))
            .collect();
        for text in &sent {
            session.send_text(text.clone()).await.unwrap();
        }
        session.close(STEP).await;
        let mut received = Vec::new();
        while let Some(frame) = tokio::time::timeout(STEP, heard.recv()).await.unwrap() {
            match frame {
                Some(text) => received.push(text),
                None => break,
            }
        }
        assert_eq!(
            received, sent,
            "every queued frame, in order, before the close"
        );
    }

    #[tokio::test]
    async fn a_session_opens_on_the_greeting_and_round_trips_a_ping() {
        let url = fake_relay(First::Greeting).await;
        let mut session = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .unwrap();
        assert_eq!(session.server_info().server_id, "ed25519:AAAA");
        assert_eq!(session.server_info().region, "test");
        assert_eq!(session.timings().tls_handshake, None);
        assert!(session.round_trip(STEP).await.unwrap() < STEP);
    }

    #[tokio::test]
    async fn a_relay_that_does_not_greet_first_is_refused() {
        let url = fake_relay(First::Pong).await;
        let error = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&error, SessionError::NoGreeting(text) if text.contains("pong")),
            "{error}"
        );
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        let error = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .err()
            .unwrap();
        assert!(matches!(error, SessionError::Url(_)), "{error}");
    }

    #[tokio::test]
    async fn the_socket_steps_read_messages_and_tell_garbage_apart() {
        let url = fake_relay(First::Garbage).await;
        let tcp = TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
            .await
            .unwrap();
        let mut socket =
            SignalingSocket::upgrade(&url, MaybeTlsStream::Plain(tcp), MAX_FRAME_BYTES)
                .await
                .unwrap();
        let error = socket.next_message().await.unwrap_err();
        assert!(
            matches!(&error, ReceiveError::NotZajel { text, .. } if text == "not json"),
            "{error}"
        );
        socket.send(&ClientMessage::Ping).await.unwrap();
        assert!(matches!(
            socket.next_message().await.unwrap(),
            ServerMessage::Pong
        ));
        socket.close().await;
    }

    #[tokio::test]
    async fn prove_identity_verifies_the_answer_against_its_own_nonce() {
        use zajel_wire::signaling::IdentityProof;
        let key = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]);
        // A relay that proves honestly, then one replaying that first proof.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("ws://{}/", listener.local_addr().unwrap())).unwrap();
        let relay_key = key.clone();
        tokio::spawn(async move {
            let mut recorded: Option<IdentityProof> = None;
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let greeting = ServerMessage::ServerInfo {
                    server_id: "ed25519:x".into(),
                    endpoint: "ws://relay.test".into(),
                    region: "test".into(),
                };
                socket
                    .send(Message::text(greeting.to_text()))
                    .await
                    .unwrap();
                while let Some(Ok(Message::Text(text))) = socket.next().await {
                    let Ok(ClientMessage::IdentityChallenge { nonce }) =
                        ClientMessage::parse(&text)
                    else {
                        continue;
                    };
                    let proof = recorded.clone().unwrap_or_else(|| {
                        IdentityProof::sign(&relay_key, &nonce, "ws://relay.test")
                    });
                    recorded = Some(proof.clone());
                    let answer = ServerMessage::IdentityProof(proof).to_text();
                    socket.send(Message::text(answer)).await.unwrap();
                }
            }
        });
        let mut session = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .unwrap();
        assert_eq!(
            session.prove_identity(STEP).await.unwrap(),
            IdentityAnswer::Proof {
                server_id: zajel_wire::keys::server_id_for(&key.verifying_key()),
                endpoint: "ws://relay.test".into()
            }
        );
        session.close(STEP).await;
        let mut replayed = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .unwrap();
        assert!(matches!(
            replayed.prove_identity(STEP).await.unwrap(),
            IdentityAnswer::Invalid { reason } if reason.contains("another nonce")
        ));
        // Zajel's server answers with an error.
        let url = fake_relay(First::Greeting).await;
        let mut zajel = SignalingSession::connect(&url, &TrustAnchors::WebPki, STEP)
            .await
            .unwrap();
        assert_eq!(
            zajel.prove_identity(STEP).await.unwrap(),
            IdentityAnswer::Refused {
                message: "Unknown message type: identity_challenge".into()
            }
        );
        assert!(zajel.round_trip(STEP).await.is_ok(), "the session goes on");
    }

    #[test]
    fn identity_challenges_carry_a_fresh_nonce_each() {
        let (first, message) = identity_challenge().unwrap();
        assert_eq!(message, ClientMessage::IdentityChallenge { nonce: first });
        let (second, _) = identity_challenge().unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn ipv6_hosts_lose_their_brackets() {
        let url = Url::parse("wss://[::1]:8443/").unwrap();
        assert_eq!(url_host(&url).as_deref(), Some("::1"));
        let url = Url::parse("ws://relay.example/").unwrap();
        assert_eq!(url_host(&url).as_deref(), Some("relay.example"));
    }
}
