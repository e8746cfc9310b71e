//! A tiny loopback WebSocket signaling server for discovery tests.
//!
//! **Stand-in for relay-lite** until the lead wires the real relay in: it
//! greets every connection with `server_info` and answers `{"type":"ping"}`
//! with `{"type":"pong"}`, exactly as Zajel's signaling servers do
//! (reference §2), and ignores everything else. Plain `ws://` or, with a
//! [`crate::test_ca::TestCa`], `wss://`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use zajel_wire::signaling::{ClientMessage, ServerMessage};

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
    pub fn start(server_id: &str) -> Self {
        Self::spawn(server_id, None)
    }

    /// `wss://localhost` with a certificate from the test CA.
    pub fn start_tls(server_id: &str, tls: rustls::ServerConfig) -> Self {
        Self::spawn(server_id, Some(Arc::new(tls)))
    }

    /// Plain `ws://` on a listener the caller bound (e.g. inside a network namespace).
    pub fn start_on(listener: std::net::TcpListener, server_id: &str) -> Self {
        Self::spawn_on(listener, server_id, None)
    }

    fn spawn(server_id: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        Self::spawn_on(listener, server_id, tls)
    }

    fn spawn_on(
        listener: std::net::TcpListener,
        server_id: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
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
                        tokio::spawn(async move {
                            match acceptor {
                                Some(acceptor) => {
                                    if let Ok(stream) = acceptor.accept(stream).await {
                                        serve_connection(stream, info, counter).await;
                                    }
                                }
                                None => serve_connection(stream, info, counter).await,
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

async fn serve_connection<S>(stream: S, info: String, pongs: Arc<AtomicUsize>)
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
        if let Message::Text(text) = message {
            if ClientMessage::parse(text.as_str()) == Ok(ClientMessage::Ping) {
                pongs.fetch_add(1, Ordering::SeqCst);
                if socket
                    .send(Message::text(ServerMessage::Pong.to_text()))
                    .await
                    .is_err()
                {
                    return;
                }
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
