//! The call's own UDP socket, handed to webrtc-rs's ICE agent through a UDP mux: it counts
//! what crosses the wire, reads the DTLS ServerHello (plaintext in DTLS 1.2) to learn the
//! negotiated SRTP protection profile and cipher suite — webrtc-rs keeps those private — and
//! can withhold every packet in both directions (a "path cut") so tests can drop the path
//! deterministically and watch the call reconnect. It also does the DTLS server's duty
//! webrtc-rs leaves undone, answering a repeated final flight ([`crate::last_flight`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use webrtc::util::{Conn, Error as UtilError};

use crate::last_flight::{records, LastFlight, LoseNextChangeCipherSpec};

/// What the DTLS handshake negotiated, read from the ServerHello on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsNegotiation {
    /// TLS cipher suite id.
    pub cipher_suite: u16,
    /// `use_srtp` protection profile id (RFC 5764 §4.1.2, RFC 7714 §14.2), if the extension was there.
    pub srtp_profile: Option<u16>,
}

/// The IANA name of an SRTP protection profile id.
pub fn srtp_profile_name(id: u16) -> String {
    match id {
        0x0001 => "SRTP_AES128_CM_HMAC_SHA1_80".into(),
        0x0002 => "SRTP_AES128_CM_HMAC_SHA1_32".into(),
        0x0007 => "SRTP_AEAD_AES_128_GCM".into(),
        0x0008 => "SRTP_AEAD_AES_256_GCM".into(),
        other => format!("unknown(0x{other:04x})"),
    }
}

/// The IANA name of the TLS cipher suites webrtc-rs offers.
pub fn cipher_suite_name(id: u16) -> String {
    match id {
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
        0xc009 => "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA".into(),
        0xc00a => "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA".into(),
        0xc013 => "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into(),
        0xc014 => "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA".into(),
        other => format!("unknown(0x{other:04x})"),
    }
}

/// Finds a ServerHello in a UDP datagram of DTLS records and reads its cipher suite and
/// `use_srtp` profile. Returns `None` for anything else, including truncated input.
pub fn parse_server_hello(datagram: &[u8]) -> Option<DtlsNegotiation> {
    // Handshake records of epoch 0 are plaintext; ServerHello is msg_type 2.
    records(datagram)
        .find(|r| r.content_type == 22 && r.epoch == 0 && r.fragment.first() == Some(&2))
        .and_then(|r| parse_server_hello_body(r.fragment.get(12..)?))
}

fn parse_server_hello_body(body: &[u8]) -> Option<DtlsNegotiation> {
    // server_version(2) random(32) session_id<0..32>
    let session_id_len = usize::from(*body.get(34)?);
    let mut at = 35 + session_id_len;
    let cipher_suite = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
    at += 3; // cipher suite and compression method
    let mut negotiation = DtlsNegotiation {
        cipher_suite,
        srtp_profile: None,
    };
    let Some(ext_len) = body.get(at..at + 2) else {
        return Some(negotiation);
    };
    let ext_end =
        (at + 2 + usize::from(u16::from_be_bytes([ext_len[0], ext_len[1]]))).min(body.len());
    at += 2;
    while at + 4 <= ext_end {
        let ext_type = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let data = body.get(at + 4..at + 4 + len)?;
        if ext_type == 14 && data.len() >= 4 {
            // profiles<2..2^16-1> (the server names exactly one), mki<0..255>
            negotiation.srtp_profile = Some(u16::from_be_bytes([data[2], data[3]]));
        }
        at += 4 + len;
    }
    Some(negotiation)
}

/// Counters and switches shared between a [`TappedUdp`] and whoever watches it.
#[derive(Debug, Default)]
pub struct TapState {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
    packets_withheld: AtomicU64,
    cut: AtomicBool,
    lose_next_change_cipher_spec: LoseNextChangeCipherSpec,
    negotiation: NegotiationSlot,
    last_flight: Mutex<LastFlight>,
}

/// Wire figures of the tapped socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Packets dropped while the path was cut (both directions), or lost on purpose.
    pub packets_withheld: u64,
    /// Times our final DTLS flight went out again because the peer repeated its own.
    pub dtls_final_flight_resends: u64,
}

impl TapState {
    /// Cuts the path (drops every packet in and out) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Loses the next datagram this side sends that carries a DTLS ChangeCipherSpec (part of
    /// either side's final handshake flight), as a lossy path would: for tests of the
    /// handshake's recovery.
    pub fn lose_next_change_cipher_spec(&self) {
        self.lose_next_change_cipher_spec.arm();
    }

    /// The DTLS negotiation seen on the wire, once the ServerHello passed.
    pub fn negotiation(&self) -> Option<DtlsNegotiation> {
        self.negotiation.get()
    }

    pub fn counters(&self) -> TapCounters {
        TapCounters {
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            packets_received: self.packets_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            packets_withheld: self.packets_withheld.load(Ordering::Relaxed),
            dtls_final_flight_resends: self.last_flight().resends(),
        }
    }

    fn last_flight(&self) -> std::sync::MutexGuard<'_, LastFlight> {
        self.last_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first DTLS negotiation seen in the datagrams shown to it.
#[derive(Debug, Default)]
pub struct NegotiationSlot(Mutex<Option<DtlsNegotiation>>);

impl NegotiationSlot {
    /// Keeps the negotiation of the first ServerHello in `datagram`, if it has one.
    pub fn note(&self, datagram: &[u8]) {
        if let Some(found) = parse_server_hello(datagram) {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(found);
        }
    }

    pub fn get(&self) -> Option<DtlsNegotiation> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A UDP socket implementing webrtc-rs's `Conn`, feeding a `UDPMuxDefault`.
pub struct TappedUdp {
    socket: UdpSocket,
    state: Arc<TapState>,
    closed_tx: watch::Sender<bool>,
}

impl TappedUdp {
    /// Binds a UDP socket at `addr` (port 0 for any).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Self, Arc<TapState>)> {
        let socket = UdpSocket::bind(addr).await?;
        let state = Arc::new(TapState::default());
        let (closed_tx, _) = watch::channel(false);
        Ok((
            Self {
                socket,
                state: Arc::clone(&state),
                closed_tx,
            },
            state,
        ))
    }
}

impl TappedUdp {
    /// Sends one datagram and counts it.
    async fn transmit(&self, datagram: &[u8], target: SocketAddr) -> std::io::Result<usize> {
        let n = self.socket.send_to(datagram, target).await?;
        self.state.packets_sent.fetch_add(1, Ordering::Relaxed);
        self.state.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn closed_error() -> UtilError {
    UtilError::Io(
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "socket closed").into(),
    )
}

#[async_trait]
impl Conn for TappedUdp {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        self.recv_from(buf).await.map(|(n, _)| n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        let mut closed = self.closed_tx.subscribe();
        loop {
            if *closed.borrow() {
                return Err(closed_error());
            }
            let (n, from) = tokio::select! {
                received = self.socket.recv_from(buf) => received?,
                _ = closed.changed() => return Err(closed_error()),
            };
            if self.state.is_cut() {
                self.state.packets_withheld.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.state.packets_received.fetch_add(1, Ordering::Relaxed);
            self.state
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
            self.state.negotiation.note(&buf[..n]);
            let again = self.state.last_flight().on_received(from, &buf[..n]);
            for datagram in again {
                tracing::debug!(peer = %from, "the peer repeated its final DTLS flight: sending ours again (RFC 6347 §4.2.4)");
                self.transmit(&datagram, from).await?;
            }
            return Ok((n, from));
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        match self.socket.peer_addr() {
            Ok(peer) => self.send_to(buf, peer).await,
            Err(err) => Err(err.into()),
        }
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        if *self.closed_tx.borrow() {
            return Err(closed_error());
        }
        if self.state.is_cut() {
            self.state.packets_withheld.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        self.state.negotiation.note(buf);
        self.state.last_flight().on_sent(target, buf);
        if self.state.lose_next_change_cipher_spec.takes(buf) {
            self.state.packets_withheld.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        Ok(self.transmit(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.closed_tx.send_replace(true);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS 1.2 ServerHello record as webrtc-rs sends it (cipher suite, use_srtp, and
    /// extended master secret), preceded by nothing and followed by a Certificate record.
    fn server_hello(profile: u16) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend([7u8; 32]);
        body.push(0); // no session id
        body.extend([0xc0, 0x2b, 0x00]);
        let mut extensions = vec![0x00, 0x0e, 0x00, 0x05, 0x00, 0x02];
        extensions.extend(profile.to_be_bytes());
        extensions.push(0);
        extensions.extend([0x00, 0x17, 0x00, 0x00]);
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let len = body.len() as u32;
        let mut handshake = vec![2];
        handshake.extend(&len.to_be_bytes()[1..]);
        handshake.extend([0, 0, 0, 0, 0]);
        handshake.extend(&len.to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        // A following Certificate record (msg_type 11).
        record.extend([22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 11]);
        record
    }

    #[test]
    fn server_hello_gives_profile_and_suite() {
        for profile in [0x0001, 0x0007, 0x0008] {
            let found = parse_server_hello(&server_hello(profile)).unwrap();
            assert_eq!(found.cipher_suite, 0xc02b);
            assert_eq!(found.srtp_profile, Some(profile));
        }
        assert_eq!(srtp_profile_name(7), "SRTP_AEAD_AES_128_GCM");
        assert_eq!(
            cipher_suite_name(0xc02b),
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn other_and_broken_datagrams_are_ignored() {
        let hello = server_hello(7);
        for cut in [0, 5, 13, 20, 60, 77] {
            assert_eq!(parse_server_hello(&hello[..cut]), None, "cut at {cut}");
        }
        // A ClientHello (msg_type 1), an encrypted record (epoch 1), a STUN header.
        let mut client_hello = hello.clone();
        client_hello[13] = 1;
        assert_eq!(parse_server_hello(&client_hello), None);
        let mut encrypted = hello.clone();
        encrypted[4] = 1;
        assert_eq!(parse_server_hello(&encrypted), None);
        assert_eq!(
            parse_server_hello(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]),
            None
        );
        // The ServerHello as the second record of a flight is found.
        let mut flight = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3];
        flight.extend(&hello);
        assert_eq!(parse_server_hello(&flight).unwrap().srtp_profile, Some(7));
    }

    #[tokio::test]
    async fn cut_withholds_both_directions() {
        let (tap, state) = TappedUdp::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tap_addr = tap.local_addr().unwrap();
        tap.send_to(b"one", peer.local_addr().unwrap())
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(peer.recv_from(&mut buf).await.unwrap().0, 3);
        state.set_cut(true);
        tap.send_to(b"dropped", peer.local_addr().unwrap())
            .await
            .unwrap();
        peer.send_to(b"dropped too", tap_addr).await.unwrap();
        peer.send_to(&server_hello(8), tap_addr).await.unwrap();
        // The receive loop discards withheld datagrams; restore and send one more.
        let receiver = async {
            let mut buf = [0u8; 256];
            tap.recv_from(&mut buf).await.unwrap().0
        };
        let restore = async {
            // Wait until both datagrams were withheld before restoring the path.
            while state.counters().packets_withheld < 3 {
                tokio::task::yield_now().await;
            }
            state.set_cut(false);
            peer.send_to(&server_hello(7), tap_addr).await.unwrap();
        };
        let (n, ()) = tokio::join!(receiver, restore);
        assert_eq!(n, server_hello(7).len());
        let counters = state.counters();
        assert_eq!(counters.packets_withheld, 3);
        assert_eq!(counters.packets_sent, 1);
        assert_eq!(counters.packets_received, 1);
        // The withheld ServerHello (profile 8) was never seen; the delivered one was.
        assert_eq!(state.negotiation().unwrap().srtp_profile, Some(7));
        tap.close().await.unwrap();
        assert!(tap.recv_from(&mut buf).await.is_err());
    }
}
