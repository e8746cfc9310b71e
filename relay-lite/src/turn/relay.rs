//! Relayed transport addresses for allocations: a UDP socket per
//! allocation on the relay IP, under a global cap (a request over the cap is
//! refused, which the server answers with 508 Insufficient Capacity), with a
//! hard maximum age (the allocation ends then, refreshed or not), and
//! counted so the metrics endpoint sees current and total allocations.
//! Allocations made over a TCP or TLS connection end with the connection
//! (`StreamAllocations`): their 5-tuple, which holds the client's TCP port,
//! can never carry another request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use turn::relay::RelayAddressGenerator;
use util::Conn;

use super::{ClientTransport, Counters};

/// Hands out relay sockets while fewer than `max` allocations exist.
pub(crate) struct CappedRelays {
    pub bind_ip: IpAddr,
    pub public_ip: IpAddr,
    pub max: usize,
    pub max_lifetime: Duration,
    pub counters: Arc<Counters>,
    /// For a TCP or TLS listener: which connection each allocation is on.
    pub streams: Option<Arc<StreamAllocations>>,
    /// The listener's transport, under which relayed traffic is counted.
    pub transport: ClientTransport,
}

/// The allocations made over one stream listener, by client connection.
///
/// The webrtc-rs server does not tell a relay generator which client an
/// allocation is for, but it handles one listener's messages one at a time
/// (its read loop awaits each request before reading the next), so the
/// source of the message the listener handed out last is the client being
/// allocated for. The listener's `GuardedConn` records it here.
#[derive(Default)]
pub(crate) struct StreamAllocations {
    current_source: Mutex<Option<SocketAddr>>,
    relays: Mutex<HashMap<SocketAddr, Vec<Weak<RelaySocket>>>>,
}

impl StreamAllocations {
    /// The listener is handing the server a message from `source`.
    pub fn handling(&self, source: SocketAddr) {
        if let Ok(mut current) = self.current_source.lock() {
            *current = Some(source);
        }
    }

    fn register(&self, relay: &Arc<RelaySocket>) {
        let Some(source) = self.current_source.lock().ok().and_then(|c| *c) else {
            return;
        };
        if let Ok(mut relays) = self.relays.lock() {
            let list = relays.entry(source).or_default();
            list.retain(|r| r.strong_count() > 0);
            list.push(Arc::downgrade(relay));
        }
    }

    /// The connection from `peer` has ended: end its allocations.
    pub fn connection_closed(&self, peer: SocketAddr) {
        let closed = self.relays.lock().ok().and_then(|mut r| r.remove(&peer));
        for relay in closed.into_iter().flatten().filter_map(|r| r.upgrade()) {
            tracing::debug!(%peer, "TURN allocation ended with its connection");
            relay.shut();
        }
    }
}

/// One counted allocation slot, released exactly once (on close or drop).
struct Slot(Arc<Counters>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.current.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl CappedRelays {
    fn take_slot(&self) -> Option<Slot> {
        let max = self.max as u64;
        let taken = self.counters.current.send_if_modified(|n| {
            let free = *n < max;
            if free {
                *n += 1;
            }
            free
        });
        taken.then(|| Slot(self.counters.clone()))
    }
}

#[async_trait]
impl RelayAddressGenerator for CappedRelays {
    fn validate(&self) -> Result<(), turn::Error> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.bind_ip.is_ipv4() {
            return Err(turn::Error::Other(
                "relay IP family differs from the request".into(),
            ));
        }
        let Some(slot) = self.take_slot() else {
            self.counters
                .refused_over_cap
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(max = self.max, "TURN allocation refused: cap reached");
            return Err(turn::Error::Other(format!(
                "allocation cap of {} reached",
                self.max
            )));
        };
        let socket = UdpSocket::bind(SocketAddr::new(self.bind_ip, requested_port))
            .await
            .map_err(|e| turn::Error::Other(format!("cannot bind a relay socket: {e}")))?;
        let local = socket
            .local_addr()
            .map_err(|e| turn::Error::Other(e.to_string()))?;
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        let (closed, _) = watch::channel(false);
        let conn = Arc::new(RelaySocket {
            socket,
            counters: self.counters.clone(),
            transport: self.transport,
            closed,
            slot: Mutex::new(Some(slot)),
        });
        if let Some(streams) = &self.streams {
            streams.register(&conn);
        }
        // The hard maximum age: close the socket then; the allocation's
        // reader sees the error and the server drops the allocation.
        let weak = Arc::downgrade(&conn);
        let mut closed_rx = conn.closed.subscribe();
        let max_lifetime = self.max_lifetime;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(max_lifetime) => {
                    if let Some(conn) = weak.upgrade() {
                        tracing::info!("TURN allocation reached its maximum lifetime");
                        conn.shut();
                    }
                }
                _ = closed_rx.wait_for(|closed| *closed) => {}
            }
        });
        Ok((conn, SocketAddr::new(self.public_ip, local.port())))
    }
}

/// The relay socket of one allocation.
pub(crate) struct RelaySocket {
    socket: UdpSocket,
    counters: Arc<Counters>,
    transport: ClientTransport,
    closed: watch::Sender<bool>,
    slot: Mutex<Option<Slot>>,
}

impl RelaySocket {
    fn shut(&self) {
        self.closed.send_replace(true);
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }

    fn relayed(&self) -> &super::RelayedCounters {
        self.counters.relayed(self.transport)
    }

    fn closed_error() -> util::Error {
        util::Error::Other("relay socket closed".into())
    }
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> util::Result<(usize, SocketAddr)> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Err(Self::closed_error());
        }
        tokio::select! {
            received = self.socket.recv_from(buf) => {
                let (length, from) = received?;
                let relayed = self.relayed();
                relayed.from_peer_packets.fetch_add(1, Ordering::Relaxed);
                relayed.from_peer_bytes.fetch_add(length as u64, Ordering::Relaxed);
                Ok((length, from))
            }
            _ = closed.wait_for(|closed| *closed) => Err(Self::closed_error()),
        }
    }

    async fn send(&self, buf: &[u8]) -> util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        if *self.closed.borrow() {
            return Err(Self::closed_error());
        }
        let sent = self.socket.send_to(buf, target).await?;
        let relayed = self.relayed();
        relayed.to_peer_packets.fetch_add(1, Ordering::Relaxed);
        relayed
            .to_peer_bytes
            .fetch_add(sent as u64, Ordering::Relaxed);
        Ok(sent)
    }

    fn local_addr(&self) -> util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> util::Result<()> {
        self.shut();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
