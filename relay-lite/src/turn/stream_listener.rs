//! TURN over TCP and TLS for the webrtc-rs server, which only reads packet
//! `Conn`s: `StreamListener` accepts connections (TLS-terminating them when
//! configured), unframes what each one carries (see `framing`), and presents
//! all of them to the server as one `Conn` — `recv_from` yields a frame and
//! the TCP peer's address, `send_to` frames a datagram onto the connection
//! with that peer address. Connections are capped in total and per client
//! IP, need a TLS handshake within a deadline, are closed when they hold no
//! allocation for `unallocated_timeout` (an idle connection cannot sit on a
//! slot for long), and when idle for too long.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use util::Conn;

use super::quota::{Hold, Holds};
use super::relay::StreamAllocations;
use super::{Counters, TurnRefusal};
use zajel_client_net::turn_framing::{frame_for_stream, read_frame};

/// Frames queued towards one connection before further ones are dropped
/// (as a congested UDP path would drop them), so one slow client never
/// stalls the server's read loop.
const WRITE_QUEUE: usize = 512;

/// Limits of a stream listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// A connection without a live allocation is closed after this long.
    pub unallocated_timeout: Duration,
}

type Peers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// The accepted connections of one TCP or TLS listener, as one `Conn`.
pub(crate) struct StreamListener {
    local: SocketAddr,
    inbound: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    peers: Peers,
    accept_task: JoinHandle<()>,
}

impl StreamListener {
    /// Starts accepting on `listener`; with `tls`, every connection is a TLS
    /// server session first.
    pub fn start(
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        limits: StreamLimits,
        allocations: Arc<StreamAllocations>,
        counters: Arc<Counters>,
    ) -> io::Result<Arc<Self>> {
        let local = listener.local_addr()?;
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let peers: Peers = Arc::default();
        let accept_task = tokio::spawn(accept_loop(
            listener,
            tls,
            limits,
            inbound_tx,
            peers.clone(),
            allocations,
            counters,
        ));
        Ok(Arc::new(Self {
            local,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            peers,
            accept_task,
        }))
    }

    /// Stops accepting and closes every connection.
    pub fn shut(&self) {
        self.accept_task.abort();
        if let Ok(mut peers) = self.peers.lock() {
            peers.clear();
        }
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: StreamLimits,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    peers: Peers,
    allocations: Arc<StreamAllocations>,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_source: Arc<Holds<IpAddr>> = Holds::new(limits.max_connections_per_source);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "TURN stream accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(source_hold) = per_source.try_hold(peer.ip()) else {
            counters.refused(TurnRefusal::StreamPerSource);
            tracing::info!(
                %peer,
                max = limits.max_connections_per_source,
                "TURN stream connection refused: per-address cap reached"
            );
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.refused(TurnRefusal::StreamTotal);
            tracing::warn!(
                max = limits.max_connections,
                "TURN stream connection refused: connection cap reached"
            );
            continue;
        };
        let held = (permit, source_hold);
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        let peers = peers.clone();
        let tls = tls.clone();
        let allocations = allocations.clone();
        let counters = counters.clone();
        connections.spawn(async move {
            let served = Served {
                peer,
                limits,
                inbound,
                peers,
                allocations: allocations.clone(),
                counters,
                _held: held,
            };
            match tls {
                None => serve(stream, served).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve(stream, served).await,
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "TURN TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "TURN TLS handshake timed out"),
                    }
                }
            }
            allocations.connection_closed(peer);
        });
    }
}

/// One accepted connection and what it holds while it lives.
struct Served {
    peer: SocketAddr,
    limits: StreamLimits,
    inbound: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    peers: Peers,
    allocations: Arc<StreamAllocations>,
    counters: Arc<Counters>,
    /// Its place under the listener's cap and its address's cap.
    _held: (OwnedSemaphorePermit, Hold<IpAddr>),
}

/// Carries frames both ways on one connection until it ends, idles out,
/// or goes `unallocated_timeout` without an allocation.
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, served: Served) {
    let Served {
        peer,
        limits,
        inbound,
        peers,
        allocations,
        counters,
        _held,
    } = served;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (outbound_tx, mut outbound_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if let Ok(mut peers) = peers.lock() {
        peers.insert(peer, outbound_tx);
    }
    let write = async move {
        while let Some(frame) = outbound_rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async {
        loop {
            match tokio::time::timeout(limits.idle_timeout, read_frame(&mut reader)).await {
                Ok(Ok(Some(frame))) => {
                    if inbound.send((frame, peer)).await.is_err() {
                        break;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "TURN stream closed: bad framing");
                    break;
                }
                Err(_) => {
                    tracing::info!(%peer, "TURN stream closed: idle");
                    break;
                }
            }
        }
    };
    // Checked every `unallocated_timeout`: a connection found without a
    // live allocation is closed (so one never allocating lives exactly that
    // long, and one whose allocations ended at most twice that).
    let unallocated = async {
        loop {
            tokio::time::sleep(limits.unallocated_timeout).await;
            if !allocations.has_allocation(peer) {
                counters.refused(TurnRefusal::StreamUnallocated);
                tracing::info!(%peer, "TURN stream closed: no allocation");
                break;
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
        _ = unallocated => {}
    }
    if let Ok(mut peers) = peers.lock() {
        peers.remove(&peer);
    };
}

#[async_trait]
impl Conn for StreamListener {
    async fn connect(&self, _addr: SocketAddr) -> util::Result<()> {
        Err(util::Error::Other(
            "a stream listener cannot connect".into(),
        ))
    }

    async fn recv(&self, buf: &mut [u8]) -> util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> util::Result<(usize, SocketAddr)> {
        let mut inbound = self.inbound.lock().await;
        loop {
            let (frame, peer) = inbound
                .recv()
                .await
                .ok_or_else(|| util::Error::Other("stream listener closed".into()))?;
            if frame.len() <= buf.len() {
                buf[..frame.len()].copy_from_slice(&frame);
                return Ok((frame.len(), peer));
            }
            tracing::debug!(%peer, len = frame.len(), "TURN frame larger than the server reads: dropped");
        }
    }

    async fn send(&self, _buf: &[u8]) -> util::Result<usize> {
        Err(util::Error::Other(
            "a stream listener sends with send_to".into(),
        ))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        let frame = frame_for_stream(buf)
            .ok_or_else(|| util::Error::Other("not a STUN or ChannelData message".into()))?;
        let sender = self.peers.lock().ok().and_then(|p| p.get(&target).cloned());
        match sender {
            // A full queue drops the frame, as a congested path would.
            Some(sender) => {
                let _ = sender.try_send(frame);
                Ok(buf.len())
            }
            None => Err(util::Error::Other(format!(
                "no TURN stream connection from {target}"
            ))),
        }
    }

    fn local_addr(&self) -> util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
