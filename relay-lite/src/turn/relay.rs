//! Relayed transport addresses for allocations: a UDP socket per
//! allocation on the relay IP, under a global cap (a request over the cap is
//! refused, which the server answers with 508 Insufficient Capacity), with a
//! hard maximum age (the allocation ends then, refreshed or not), and
//! counted so the metrics endpoint sees current and total allocations.
//! Allocations made over a TCP or TLS connection end with the connection
//! (`StreamAllocations`): their 5-tuple, which holds the client's TCP port,
//! can never carry another request. Each relay socket keeps the quota its
//! Allocate took (released when it closes), registers its relayed address
//! with the peer policy (other allocations may relay to it), sends nothing
//! to and hears nothing from a peer the policy denies, and drops datagrams
//! over its bandwidth cap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use turn::relay::RelayAddressGenerator;
use util::Conn;

use super::admission::{Admission, PendingAllocation};
use super::quota::{AllocationHold, ByteBucket};
use super::{ClientTransport, Counters, TurnRefusal};

/// The per-allocation bandwidth cap, each way; 0 bytes per second: none.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bandwidth {
    pub bytes_per_sec: u64,
    pub burst_bytes: u64,
}

impl Bandwidth {
    fn bucket(self) -> Option<Mutex<ByteBucket>> {
        (self.bytes_per_sec > 0).then(|| {
            Mutex::new(ByteBucket::new(
                self.bytes_per_sec,
                self.burst_bytes,
                Instant::now(),
            ))
        })
    }
}

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
    /// The peer policy and the directory of live relayed addresses.
    pub admission: Arc<Admission>,
    /// The quota the Allocate being served took (see `admission`).
    pub pending: Arc<PendingAllocation>,
    pub bandwidth: Bandwidth,
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

    /// Whether the connection from `peer` holds a live allocation.
    pub fn has_allocation(&self, peer: SocketAddr) -> bool {
        self.relays.lock().is_ok_and(|relays| {
            relays.get(&peer).is_some_and(|list| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .any(|relay| !*relay.closed.borrow())
            })
        })
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
        let hold = self.pending.take();
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
        let advertised = SocketAddr::new(self.public_ip, local.port());
        let mut addresses = vec![advertised];
        if local != advertised && !local.ip().is_unspecified() {
            addresses.push(local);
        }
        self.admission.relay_opened(&addresses);
        let conn = Arc::new(RelaySocket {
            socket,
            counters: self.counters.clone(),
            transport: self.transport,
            closed,
            slot: Mutex::new(Some((slot, hold))),
            admission: self.admission.clone(),
            addresses,
            to_peer: self.bandwidth.bucket(),
            from_peer: self.bandwidth.bucket(),
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
        Ok((conn, advertised))
    }
}

/// The relay socket of one allocation.
pub(crate) struct RelaySocket {
    socket: UdpSocket,
    counters: Arc<Counters>,
    transport: ClientTransport,
    closed: watch::Sender<bool>,
    /// The allocation's place under the cap and under its quotas.
    slot: Mutex<Option<(Slot, Option<AllocationHold>)>>,
    admission: Arc<Admission>,
    /// The relayed addresses peers may name (advertised, and bound if different).
    addresses: Vec<SocketAddr>,
    /// The bandwidth caps towards peers and from them.
    to_peer: Option<Mutex<ByteBucket>>,
    from_peer: Option<Mutex<ByteBucket>>,
}

impl RelaySocket {
    fn shut(&self) {
        let was_closed = self.closed.send_replace(true);
        if !was_closed {
            self.admission.relay_closed(&self.addresses);
        }
        if let Ok(mut slot) = self.slot.lock() {
            slot.take();
        }
    }

    /// Whether `len` bytes fit under `bucket`'s cap now; drops are counted.
    fn within_cap(&self, bucket: &Option<Mutex<ByteBucket>>, len: usize) -> bool {
        let fits = bucket
            .as_ref()
            .is_none_or(|b| b.lock().is_ok_and(|mut b| b.take(len, Instant::now())));
        if !fits {
            self.counters.refused(TurnRefusal::Bandwidth);
        }
        fits
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
        loop {
            tokio::select! {
                received = self.socket.recv_from(buf) => {
                    let (length, from) = received?;
                    // Nothing from a denied peer (a permission is per IP, so
                    // one for another allocation's relay on a loopback or
                    // private address would let that whole address in).
                    if self.admission.peer_allowed(from).is_err()
                        || !self.within_cap(&self.from_peer, length)
                    {
                        continue;
                    }
                    let relayed = self.relayed();
                    relayed.from_peer_packets.fetch_add(1, Ordering::Relaxed);
                    relayed.from_peer_bytes.fetch_add(length as u64, Ordering::Relaxed);
                    return Ok((length, from));
                }
                _ = closed.wait_for(|closed| *closed) => return Err(Self::closed_error()),
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        if *self.closed.borrow() {
            return Err(Self::closed_error());
        }
        // Whatever the server decided, nothing goes to a denied peer or over
        // the cap; the datagram is dropped as a congested path would drop it.
        if self.admission.peer_allowed(target).is_err()
            || !self.within_cap(&self.to_peer, buf.len())
        {
            return Ok(buf.len());
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

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.shut();
    }
}
