//! The client-side TURN stream bridge. webrtc-rs's ICE agent speaks TURN
//! only over UDP (webrtc-rs issue #539: `transport=tcp` is not supported),
//! so a peer that can only reach the TURN server over TCP or TLS points its
//! ICE agent at this bridge instead: a UDP socket on 127.0.0.1 whose every
//! local client gets its own TCP (or TLS) connection to the real TURN
//! server, carrying the client's datagrams both ways with RFC 5766 §2.1
//! stream framing (see [`crate::turn_framing`]). The allocation is then made over the
//! stream; the network sees only TCP or TLS to the TURN server. Works with
//! any TURN server that accepts TCP/TLS (relay-lite's, coturn).
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use zajel_client_net::turn_bridge::StreamBridge;
//! let bridge = StreamBridge::start(server, None).await?;
//! let url = bridge.turn_url(); // "turn:127.0.0.1:<port>?transport=udp"
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;

use crate::turn_framing::{frame_for_stream, read_frame, MAX_FRAME};

/// How the bridge reaches the TURN server over TLS.
#[derive(Clone)]
pub struct BridgeTls {
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for BridgeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BridgeTls {
    /// TLS to a server whose certificate chains to one of `roots` and
    /// names `server_name` (a DNS name or an IP address).
    pub fn new(server_name: &str, roots: RootCertStore) -> io::Result<Self> {
        let config = crate::tls::client_config_with_roots(roots).map_err(io::Error::other)?;
        Self::with_config(server_name, Arc::new(config))
    }

    /// TLS with a client configuration of the caller's own.
    pub fn with_config(server_name: &str, config: Arc<rustls::ClientConfig>) -> io::Result<Self> {
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad TLS server name {server_name:?}: {e}"),
            )
        })?;
        Ok(Self {
            server_name,
            config,
        })
    }
}

/// Limits of a bridge.
#[derive(Debug, Clone, Copy)]
pub struct BridgeLimits {
    /// Time to open the TCP connection and finish the TLS handshake.
    pub connect_timeout: Duration,
    /// A local client silent this long has its stream closed.
    pub idle_timeout: Duration,
    /// Local clients (streams) at once.
    pub max_clients: usize,
}

impl Default for BridgeLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5 * 60),
            max_clients: 64,
        }
    }
}

/// What a bridge has carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Streams (TCP or TLS connections) opened to the server.
    pub streams_opened: u64,
    /// Streams that could not be opened (connect or TLS handshake failed).
    pub streams_failed: u64,
    /// Frames sent towards the server.
    pub frames_up: u64,
    /// Frames read from the server and sent on to local clients.
    pub frames_down: u64,
}

#[derive(Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_failed: AtomicU64,
    frames_up: AtomicU64,
    frames_down: AtomicU64,
}

/// A running bridge; dropping or closing it ends every stream.
pub struct StreamBridge {
    local: SocketAddr,
    server: SocketAddr,
    tls: bool,
    task: JoinHandle<()>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for StreamBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBridge")
            .field("local", &self.local)
            .field("server", &self.server)
            .field("tls", &self.tls)
            .finish()
    }
}

type Clients = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

impl StreamBridge {
    /// Binds the local UDP socket on 127.0.0.1 and starts carrying
    /// datagrams to `server` over TCP, or over TLS with `tls`.
    pub async fn start(server: SocketAddr, tls: Option<BridgeTls>) -> io::Result<Self> {
        Self::start_with(server, tls, BridgeLimits::default()).await
    }

    /// As `start`, with explicit limits.
    pub async fn start_with(
        server: SocketAddr,
        tls: Option<BridgeTls>,
        limits: BridgeLimits,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await?;
        let local = socket.local_addr()?;
        let is_tls = tls.is_some();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(Arc::new(socket), server, tls, limits, counters.clone()));
        Ok(Self {
            local,
            server,
            tls: is_tls,
            task,
            counters,
        })
    }

    /// The local UDP address TURN clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The TURN server the bridge carries to.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The ICE server URL for a webrtc-rs peer (credentials go beside it).
    pub fn turn_url(&self) -> String {
        format!("turn:{}?transport=udp", self.local)
    }

    /// What the bridge has carried so far.
    pub fn stats(&self) -> BridgeStats {
        BridgeStats {
            streams_opened: self.counters.streams_opened.load(Ordering::Relaxed),
            streams_failed: self.counters.streams_failed.load(Ordering::Relaxed),
            frames_up: self.counters.frames_up.load(Ordering::Relaxed),
            frames_down: self.counters.frames_down.load(Ordering::Relaxed),
        }
    }

    /// Stops the bridge and closes every stream.
    pub fn close(self) {}
}

impl Drop for StreamBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every stream of one bridge shares.
struct Shared {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    tls: Option<BridgeTls>,
    limits: BridgeLimits,
    clients: Clients,
    counters: Arc<Counters>,
}

async fn run(
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    tls: Option<BridgeTls>,
    limits: BridgeLimits,
    counters: Arc<Counters>,
) {
    let clients: Clients = Arc::default();
    let shared = Arc::new(Shared {
        socket: socket.clone(),
        server,
        tls,
        limits,
        clients: clients.clone(),
        counters,
    });
    let mut streams = JoinSet::new();
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(error) => {
                    // ICMP errors from a vanished client surface here on
                    // some systems; they are not fatal to the bridge.
                    tracing::debug!(%error, "TURN bridge receive");
                    continue;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
        };
        let Some(frame) = frame_for_stream(&buf[..n]) else {
            tracing::debug!(%client, "TURN bridge: datagram neither STUN nor ChannelData, dropped");
            continue;
        };
        let sender = clients.lock().ok().and_then(|c| c.get(&client).cloned());
        let sender = match sender {
            Some(sender) => sender,
            None => {
                let count = clients.lock().map(|c| c.len()).unwrap_or(usize::MAX);
                if count >= limits.max_clients {
                    tracing::warn!(%client, "TURN bridge: too many local clients, dropped");
                    continue;
                }
                let (sender, receiver) = mpsc::channel(512);
                if let Ok(mut c) = clients.lock() {
                    c.insert(client, sender.clone());
                }
                streams.spawn(carry(shared.clone(), client, receiver));
                sender
            }
        };
        // A full queue drops the datagram, as a congested path would.
        let _ = sender.try_send(frame);
    }
}

/// One local client's stream: connect, then copy both ways until either
/// side ends or the client falls silent.
async fn carry(shared: Arc<Shared>, client: SocketAddr, outbound: mpsc::Receiver<Vec<u8>>) {
    let Shared {
        socket,
        server,
        tls,
        limits,
        clients,
        counters,
    } = &*shared;
    let (socket, server, limits) = (socket.clone(), *server, *limits);
    let connected = tokio::time::timeout(limits.connect_timeout, async {
        let tcp = TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        io::Result::Ok(tcp)
    })
    .await;
    let opened = || counters.streams_opened.fetch_add(1, Ordering::Relaxed);
    let failed = || counters.streams_failed.fetch_add(1, Ordering::Relaxed);
    match connected {
        Ok(Ok(tcp)) => match tls {
            None => {
                opened();
                pump(tcp, socket, client, limits, outbound, counters).await
            }
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                match tokio::time::timeout(
                    limits.connect_timeout,
                    connector.connect(tls.server_name.clone(), tcp),
                )
                .await
                {
                    Ok(Ok(stream)) => {
                        opened();
                        pump(stream, socket, client, limits, outbound, counters).await
                    }
                    Ok(Err(error)) => {
                        failed();
                        tracing::warn!(%server, %error, "TURN bridge: TLS handshake failed")
                    }
                    Err(_) => {
                        failed();
                        tracing::warn!(%server, "TURN bridge: TLS handshake timed out")
                    }
                }
            }
        },
        Ok(Err(error)) => {
            failed();
            tracing::warn!(%server, %error, "TURN bridge: cannot connect")
        }
        Err(_) => {
            failed();
            tracing::warn!(%server, "TURN bridge: connect timed out")
        }
    }
    if let Ok(mut c) = clients.lock() {
        c.remove(&client);
    }
}

async fn pump<S: AsyncRead + AsyncWrite>(
    stream: S,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    limits: BridgeLimits,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    counters: &Counters,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let up = async {
        loop {
            match tokio::time::timeout(limits.idle_timeout, outbound.recv()).await {
                Ok(Some(frame)) => {
                    // Counted before the write, so the count is there
                    // by the time an answer can come back.
                    counters.frames_up.fetch_add(1, Ordering::Relaxed);
                    if writer.write_all(&frame).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(%client, "TURN bridge: client idle, stream closed");
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
    };
    let down = async {
        loop {
            match read_frame(&mut reader).await {
                Ok(Some(frame)) => {
                    counters.frames_down.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(&frame, client).await;
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "TURN bridge: server stream broke its framing");
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
