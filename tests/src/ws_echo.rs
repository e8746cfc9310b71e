//! A tiny loopback WebSocket signaling server for discovery tests.
//!
//! **Stand-in for relay-lite** until the lead wires the real relay in: it
//! greets every connection with `server_info` and answers `{"type":"ping"}`
//! with `{"type":"pong"}`, exactly as Zajel's signaling servers do
//! (reference §2), and ignores everything else. Plain `ws://` or, with a
//! [`crate::test_ca::TestCa`], `wss://`.
//!
//! Its [`Identity`] says what it announces and how it answers
//! `identity_challenge`: given a `serverId` string it answers like Zajel's
//! server (`Unknown message type: identity_challenge`); given a signing key
//! it proves with it over its own URL, as relay-lite does; the hostile
//! [`Proof`] behaviours (another key, another endpoint, a replayed proof,
//! silence) are the attacks the discovery tests check.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use zajel_wire::keys;
use zajel_wire::signaling::{ClientMessage, IdentityProof, ServerMessage, SignalingError};

/// How the stand-in answers `identity_challenge`.
#[derive(Clone)]
pub enum Proof {
    /// Like Zajel's server: `{"type":"error","message":"Unknown message type: identity_challenge"}`.
    Unsupported,
    /// Never answers it (pings still get their pong).
    Silent,
    /// Signs with `key` for `endpoint` (`None`: its own URL); the proof's
    /// `serverId` is `key`'s.
    Sign {
        key: SigningKey,
        endpoint: Option<String>,
    },
    /// Sends this proof whatever the nonce (an old proof replayed).
    Replay(IdentityProof),
}

/// What the stand-in announces in `server_info` and how it proves it.
#[derive(Clone)]
pub struct Identity {
    pub server_id: String,
    pub proof: Proof,
}

impl From<&str> for Identity {
    /// Announces `server_id` and cannot prove anything (Zajel's server).
    fn from(server_id: &str) -> Self {
        Self {
            server_id: server_id.to_string(),
            proof: Proof::Unsupported,
        }
    }
}

impl From<&String> for Identity {
    fn from(server_id: &String) -> Self {
        Self::from(server_id.as_str())
    }
}

impl From<&SigningKey> for Identity {
    /// Announces `key`'s `serverId` and proves it over its own URL (relay-lite).
    fn from(key: &SigningKey) -> Self {
        Self {
            server_id: keys::server_id_for(&key.verifying_key()),
            proof: Proof::Sign {
                key: key.clone(),
                endpoint: None,
            },
        }
    }
}

/// A running stand-in signaling server; stopped when dropped.
pub struct WsEcho {
    pub address: SocketAddr,
    /// `ws://127.0.0.1:<port>/` or `wss://localhost:<port>/`.
    pub url: String,
    /// The `serverId` announced in `server_info`.
    pub server_id: String,
    /// How many pings it answered.
    pub pongs: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WsEcho {
    /// Plain `ws://` on 127.0.0.1.
    pub fn start(identity: impl Into<Identity>) -> Self {
        Self::spawn(identity.into(), None)
    }

    /// `wss://localhost` with a certificate from the test CA.
    pub fn start_tls(identity: impl Into<Identity>, tls: rustls::ServerConfig) -> Self {
        Self::spawn(identity.into(), Some(Arc::new(tls)))
    }

    /// Plain `ws://` on a listener the caller bound (e.g. inside a network namespace).
    pub fn start_on(listener: std::net::TcpListener, identity: impl Into<Identity>) -> Self {
        Self::spawn_on(listener, identity.into(), None)
    }

    fn spawn(identity: Identity, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        Self::spawn_on(listener, identity, tls)
    }

    fn spawn_on(
        listener: std::net::TcpListener,
        identity: Identity,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let server_id = identity.server_id.as_str();
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("address");
        let url = match tls {
            Some(_) => format!("wss://localhost:{}/", address.port()),
            None => format!("ws://{address}/"),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pongs = Arc::new(AtomicUsize::new(0));
        let info = ServerMessage::ServerInfo {
            server_id: server_id.to_string(),
            endpoint: url.clone(),
            region: "test".into(),
        }
        .to_text();
        let counter = pongs.clone();
        let proof = Arc::new(Answer {
            proof: identity.proof.clone(),
            url: url.clone(),
        });
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let info = info.clone();
                        let counter = counter.clone();
                        let acceptor = acceptor.clone();
                        let proof = proof.clone();
                        tokio::spawn(async move {
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(stream) = acceptor.accept(stream).await {
                                        serve_connection(stream, info, counter, &proof).await;
                                    }
                                }
                                None => serve_connection(stream, info, counter, &proof).await,
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            address,
            url,
            server_id: server_id.to_string(),
            pongs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A stand-in's [`Proof`] behaviour and its own URL.
struct Answer {
    proof: Proof,
    url: String,
}

impl Answer {
    /// The frame answering a challenge for `nonce`, if any.
    fn to(&self, nonce: &[u8; 32]) -> Option<String> {
        let message = match &self.proof {
            Proof::Unsupported => {
                SignalingError::UnknownType("identity_challenge".into()).to_server_message()
            }
            Proof::Silent => return None,
            Proof::Sign { key, endpoint } => ServerMessage::IdentityProof(IdentityProof::sign(
                key,
                nonce,
                endpoint.as_deref().unwrap_or(&self.url),
            )),
            Proof::Replay(proof) => ServerMessage::IdentityProof(proof.clone()),
        };
        Some(message.to_text())
    }
}

async fn serve_connection<S>(stream: S, info: String, pongs: Arc<AtomicUsize>, answer: &Answer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    if socket.send(Message::text(info)).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let reply = match ClientMessage::parse(text.as_str()) {
            Ok(ClientMessage::Ping) => {
                pongs.fetch_add(1, Ordering::SeqCst);
                Some(ServerMessage::Pong.to_text())
            }
            Ok(ClientMessage::IdentityChallenge { nonce }) => answer.to(&nonce),
            _ => None,
        };
        if let Some(reply) = reply {
            if socket.send(Message::text(reply)).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
