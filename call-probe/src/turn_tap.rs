//! A UDP hop of our own between webrtc-rs's TURN clients and a TURN server, so relayed calls
//! get what the engine's socket tap gives direct ones.
//!
//! webrtc-rs's ICE agent opens a socket of its own for every TURN allocation; nothing of the
//! engine sees that traffic. So every TURN URL the engine is given points at a [`TurnTap`] on
//! 127.0.0.1 instead, which carries each TURN client's datagrams to the real server (or to a
//! stream bridge for TCP/TLS) on an upstream socket of its own per client, and back. On the way
//! it reads the TURN framing (ChannelData, Send and Data indications, and ChannelBind requests
//! for the channel → peer map) to see the DTLS inside, and:
//!
//! - answers a peer's repeated final DTLS flight with ours ([`crate::last_flight`]), which
//!   webrtc-rs's DTLS server does not do;
//! - reads the ServerHello (SRTP profile, cipher suite) of a relayed call;
//! - remembers which TURN client sockets it carried, which tells which transport a relay
//!   candidate came through (its related port is the TURN client's local port).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::{JoinHandle, JoinSet};
use webrtc::stun::message::{
    Getter, Message, CLASS_INDICATION, CLASS_REQUEST, METHOD_CHANNEL_BIND, METHOD_DATA, METHOD_SEND,
};
use webrtc::turn::proto::chandata::ChannelData;
use webrtc::turn::proto::channum::ChannelNumber;
use webrtc::turn::proto::data::Data;
use webrtc::turn::proto::peeraddr::PeerAddress;

use crate::last_flight::{LastFlight, LoseNextChangeCipherSpec};
use crate::tap::{DtlsNegotiation, NegotiationSlot};

/// TURN clients carried at once (a call has one per TURN URL; ICE restarts add a few).
const MAX_CLIENTS: usize = 32;
/// Channel bindings remembered per client.
const MAX_CHANNELS: usize = 64;
/// Largest datagram carried.
const MAX_DATAGRAM: usize = 65_535;

/// What a TURN client's datagrams carry for which peer: the channel numbers it bound.
#[derive(Debug, Default)]
pub struct TurnFraming {
    channels: HashMap<u16, SocketAddr>,
}

impl TurnFraming {
    /// The peer and payload of a datagram the client sends (ChannelData or a Send
    /// indication); a ChannelBind request is remembered on the way.
    pub fn outgoing(&mut self, datagram: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some((number, payload)) = channel_data(datagram) {
            return Some((*self.channels.get(&number)?, payload));
        }
        let message = stun_message(datagram)?;
        if message.typ.method == METHOD_CHANNEL_BIND && message.typ.class == CLASS_REQUEST {
            let mut number = ChannelNumber::default();
            let mut peer = PeerAddress::default();
            if number.get_from(&message).is_ok()
                && peer.get_from(&message).is_ok()
                && (self.channels.len() < MAX_CHANNELS || self.channels.contains_key(&number.0))
            {
                self.channels
                    .insert(number.0, SocketAddr::new(peer.ip, peer.port));
            }
            return None;
        }
        (message.typ.method == METHOD_SEND && message.typ.class == CLASS_INDICATION)
            .then(|| peer_and_data(&message))
            .flatten()
    }

    /// The peer and payload of a datagram the server sends (ChannelData or a Data
    /// indication).
    pub fn incoming(&self, datagram: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some((number, payload)) = channel_data(datagram) {
            return Some((*self.channels.get(&number)?, payload));
        }
        let message = stun_message(datagram)?;
        (message.typ.method == METHOD_DATA && message.typ.class == CLASS_INDICATION)
            .then(|| peer_and_data(&message))
            .flatten()
    }
}

/// A ChannelData message's channel number and payload (RFC 8656 §12.4).
fn channel_data(datagram: &[u8]) -> Option<(u16, Vec<u8>)> {
    if !matches!(datagram.first(), Some(0x40..=0x4f)) {
        return None;
    }
    let mut message = ChannelData {
        raw: datagram.to_vec(),
        ..ChannelData::default()
    };
    message.decode().ok()?;
    Some((message.number.0, message.data))
}

fn stun_message(datagram: &[u8]) -> Option<Message> {
    if !matches!(datagram.first(), Some(0..=3)) {
        return None;
    }
    let mut message = Message::new();
    message.raw = datagram.to_vec();
    message.decode().ok()?;
    Some(message)
}

fn peer_and_data(message: &Message) -> Option<(SocketAddr, Vec<u8>)> {
    let mut peer = PeerAddress::default();
    let mut data = Data::default();
    peer.get_from(message).ok()?;
    data.get_from(message).ok()?;
    Some((SocketAddr::new(peer.ip, peer.port), data.0))
}

/// What a [`TurnTap`] has seen, shared with its tasks.
#[derive(Default)]
struct Seen {
    clients: Mutex<Vec<SocketAddr>>,
    last_flight: Mutex<LastFlight>,
    negotiation: NegotiationSlot,
    datagrams: AtomicU64,
    lose_next_change_cipher_spec: LoseNextChangeCipherSpec,
}

impl Seen {
    fn last_flight(&self) -> std::sync::MutexGuard<'_, LastFlight> {
        self.last_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running TURN tap; dropping it ends every flow through it.
pub struct TurnTap {
    local: SocketAddr,
    upstream: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TurnTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnTap")
            .field("local", &self.local)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl TurnTap {
    /// Listens on 127.0.0.1 and carries every TURN client's datagrams to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let local = socket.local_addr()?;
        let seen = Arc::new(Seen::default());
        let task = tokio::spawn(run(socket, upstream, seen.clone()));
        Ok(Self {
            local,
            upstream,
            seen,
            task,
        })
    }

    /// The TURN URL for the engine (credentials go beside it).
    pub fn turn_url(&self) -> String {
        format!("turn:{}?transport=udp", self.local)
    }

    /// Where the tap carries to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Whether the TURN client whose socket has local port `port` went through this tap.
    pub fn has_carried_for(&self, port: u16) -> bool {
        self.seen
            .clients
            .lock()
            .map(|clients| clients.iter().any(|c| c.port() == port))
            .unwrap_or(false)
    }

    /// The DTLS negotiation of a relayed call, once a ServerHello went through.
    pub fn negotiation(&self) -> Option<DtlsNegotiation> {
        self.seen.negotiation.get()
    }

    /// Times our final DTLS flight went out again through this tap.
    pub fn final_flight_resends(&self) -> u64 {
        self.seen.last_flight().resends()
    }

    /// Loses the next datagram a TURN client sends through this tap whose DTLS carries a
    /// ChangeCipherSpec (part of a final handshake flight), as a lossy path would: for tests.
    pub fn lose_next_change_cipher_spec(&self) {
        self.seen.lose_next_change_cipher_spec.arm();
    }

    /// Datagrams carried, both ways.
    pub fn datagrams(&self) -> u64 {
        self.seen.datagrams.load(Ordering::Relaxed)
    }
}

impl Drop for TurnTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(socket: Arc<UdpSocket>, upstream: SocketAddr, seen: Arc<Seen>) {
    let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, Arc<Mutex<TurnFraming>>)> =
        HashMap::new();
    let mut flows = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "TURN tap receive");
                continue;
            }
        };
        let datagram = &buf[..n];
        if !clients.contains_key(&client) {
            if clients.len() >= MAX_CLIENTS {
                tracing::warn!(%client, "TURN tap: too many TURN clients, dropped");
                continue;
            }
            let unspecified = match upstream.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let outward = match UdpSocket::bind((unspecified, 0)).await {
                Ok(outward) => Arc::new(outward),
                Err(error) => {
                    tracing::warn!(%error, "TURN tap: no socket towards the TURN server");
                    continue;
                }
            };
            if let Err(error) = outward.connect(upstream).await {
                tracing::warn!(%error, %upstream, "TURN tap: cannot reach the TURN server");
                continue;
            }
            if let Ok(mut seen_clients) = seen.clients.lock() {
                seen_clients.push(client);
            }
            let framing = Arc::new(Mutex::new(TurnFraming::default()));
            flows.spawn(carry_back(
                socket.clone(),
                client,
                outward.clone(),
                framing.clone(),
                seen.clone(),
            ));
            clients.insert(client, (outward, framing));
        }
        let Some((outward, framing)) = clients.get(&client) else {
            continue;
        };
        let carried = framing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outgoing(datagram);
        if let Some((peer, payload)) = carried {
            seen.negotiation.note(&payload);
            seen.last_flight().on_sent_carried(peer, &payload, datagram);
            if seen.lose_next_change_cipher_spec.takes(&payload) {
                continue;
            }
        }
        seen.datagrams.fetch_add(1, Ordering::Relaxed);
        let _ = outward.send(datagram).await;
    }
}

/// The server's datagrams for one TURN client, back to it; a repeated final DTLS flight from
/// the peer is answered upstream with ours on the way.
async fn carry_back(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    outward: Arc<UdpSocket>,
    framing: Arc<Mutex<TurnFraming>>,
    seen: Arc<Seen>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match outward.recv(&mut buf).await {
            Ok(n) => n,
            Err(error) => {
                // ICMP port unreachable from a dead server surfaces here; keep listening.
                tracing::debug!(%error, "TURN tap: upstream receive");
                continue;
            }
        };
        let datagram = &buf[..n];
        let carried = framing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .incoming(datagram);
        if let Some((peer, payload)) = carried {
            seen.negotiation.note(&payload);
            let again = seen.last_flight().on_received(peer, &payload);
            for carrier in again {
                tracing::debug!(%peer, "the peer repeated its final DTLS flight: sending ours again through TURN (RFC 6347 §4.2.4)");
                let _ = outward.send(&carrier).await;
            }
        }
        seen.datagrams.fetch_add(1, Ordering::Relaxed);
        let _ = socket.send_to(datagram, client).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::stun::agent::TransactionId;
    use webrtc::stun::message::{MessageType, Setter};

    fn stun(typ: MessageType, setters: Vec<Box<dyn Setter>>) -> Vec<u8> {
        let mut all: Vec<Box<dyn Setter>> = vec![Box::new(TransactionId::new()), Box::new(typ)];
        all.extend(setters);
        let mut message = Message::new();
        message.build(&all).unwrap();
        message.raw
    }

    fn peer() -> SocketAddr {
        "10.0.0.7:40000".parse().unwrap()
    }

    fn peer_address() -> Box<PeerAddress> {
        Box::new(PeerAddress {
            ip: peer().ip(),
            port: peer().port(),
        })
    }

    fn channel(number: u16, payload: &[u8]) -> Vec<u8> {
        let mut message = ChannelData {
            data: payload.to_vec(),
            number: ChannelNumber(number),
            ..ChannelData::default()
        };
        message.encode();
        message.raw
    }

    #[test]
    fn send_and_data_indications_name_the_peer_and_payload() {
        let mut framing = TurnFraming::default();
        let send = stun(
            MessageType::new(METHOD_SEND, CLASS_INDICATION),
            vec![peer_address(), Box::new(Data(b"dtls".to_vec()))],
        );
        assert_eq!(framing.outgoing(&send), Some((peer(), b"dtls".to_vec())));
        let data = stun(
            MessageType::new(METHOD_DATA, CLASS_INDICATION),
            vec![peer_address(), Box::new(Data(b"back".to_vec()))],
        );
        assert_eq!(framing.incoming(&data), Some((peer(), b"back".to_vec())));
        // A Data indication sent by the client or a Send by the server is not a payload.
        assert_eq!(framing.outgoing(&data), None);
        assert_eq!(framing.incoming(&send), None);
    }

    #[test]
    fn channel_data_is_read_once_the_channel_is_bound() {
        let mut framing = TurnFraming::default();
        assert_eq!(framing.outgoing(&channel(0x4001, b"early")), None);
        let bind = stun(
            MessageType::new(METHOD_CHANNEL_BIND, CLASS_REQUEST),
            vec![Box::new(ChannelNumber(0x4001)), peer_address()],
        );
        assert_eq!(framing.outgoing(&bind), None);
        assert_eq!(
            framing.outgoing(&channel(0x4001, b"up")),
            Some((peer(), b"up".to_vec()))
        );
        assert_eq!(
            framing.incoming(&channel(0x4001, b"down")),
            Some((peer(), b"down".to_vec()))
        );
        assert_eq!(framing.incoming(&channel(0x4002, b"other")), None);
    }

    #[test]
    fn garbage_is_no_payload() {
        let mut framing = TurnFraming::default();
        let send = stun(
            MessageType::new(METHOD_SEND, CLASS_INDICATION),
            vec![peer_address(), Box::new(Data(b"dtls".to_vec()))],
        );
        for junk in [
            &[][..],
            &[0x40, 0x01, 0xff, 0xff, 1, 2][..],
            &send[..send.len() - 3],
            &[0x80; 40][..],
            &[22; 40][..],
        ] {
            assert_eq!(framing.outgoing(junk), None);
            assert_eq!(framing.incoming(junk), None);
        }
    }

    #[tokio::test]
    async fn carries_both_ways_and_remembers_its_clients() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tap = TurnTap::start(server.local_addr().unwrap()).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tap_addr: SocketAddr = tap.turn_url()["turn:".len()..]
            .trim_end_matches("?transport=udp")
            .parse()
            .unwrap();
        client.send_to(b"allocate", tap_addr).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"allocate");
        server.send_to(b"allocated", from).await.unwrap();
        let (n, back_from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], back_from), (&b"allocated"[..], tap_addr));
        assert!(tap.has_carried_for(client.local_addr().unwrap().port()));
        assert!(!tap.has_carried_for(server.local_addr().unwrap().port()));
        assert_eq!(tap.datagrams(), 2);
    }
}
