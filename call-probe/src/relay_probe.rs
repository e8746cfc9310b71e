//! `check`'s proof that a TURN server relays: a datagram sent through one allocation's
//! relayed address to a second allocation's, answered from there, and read back through the
//! first (RFC 8656 §9–§12: CreatePermission each way, then Send indications or ChannelData).
//! A server that allocates but drops relayed data passes an allocation test and fails this
//! one, which is why `check` says yes to a TURN transport only after it.
//!
//! The second allocation (the "peer") answers every probe it reads with an echo of the same
//! bytes; the first sends a probe every [`RESEND`] until an echo with its nonce comes back or
//! the time runs out. The round trip is measured from the send of the probe that came back.
//!
//! [`round_trip_via_own_address`] is the other way (RFC 8656 allows either): the peer is a
//! plain UDP socket of ours at its server-reflexive address, so the datagram leaves the relay
//! towards the internet and comes back in. `check` uses it when the two-allocation test fails,
//! for servers whose relayed sockets cannot reach their own public address (a 1:1 NAT without
//! hairpinning) but relay to everyone else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc::util::Conn;

/// A probe is sent again this often until its echo comes back.
pub const RESEND: Duration = Duration::from_millis(250);
/// Every probe starts with this, then an 8-byte nonce and a 4-byte sequence number.
const PROBE_MAGIC: &[u8] = b"call-probe relay probe ";
/// The peer's echo starts with this instead.
const ECHO_MAGIC: &[u8] = b"call-probe relay echo  ";
/// What the peer sends first, only to get its CreatePermission for the first allocation done.
const OPENING: &[u8] = b"call-probe relay opening";

/// Why no datagram went through the relay and back.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// The peer allocation's CreatePermission (or its first Send) for the first allocation's
    /// relayed address failed.
    #[error("allocated, but the second allocation could not send to {to}: {reason}")]
    PeerSend { to: SocketAddr, reason: String },
    /// The first allocation's CreatePermission (or Send) for the peer failed.
    #[error("allocated, but could not send through the relay to {to}: {reason}")]
    Send { to: SocketAddr, reason: String },
    /// Probes went out; none reached the peer allocation.
    #[error("allocated, but relayed nothing: no datagram sent through the relay reached {peer} within {limit:?}")]
    NothingArrived { peer: SocketAddr, limit: Duration },
    /// Probes reached the peer allocation; no echo came back through the relay.
    #[error("allocated, but relayed one way only: {peer} got our datagrams, its answers never came back within {limit:?}")]
    NoAnswerBack { peer: SocketAddr, limit: Duration },
}

/// Sends probes from `first` to `peer`'s relayed address (`peer_relayed`) until one comes back
/// through `first` (echoed by `peer`); the round trip of the probe that did.
///
/// `first_relayed` is `first`'s relayed address, where the peer answers.
pub async fn round_trip(
    first: Arc<dyn Conn + Send + Sync>,
    first_relayed: SocketAddr,
    peer: Arc<dyn Conn + Send + Sync>,
    peer_relayed: SocketAddr,
    limit: Duration,
) -> Result<Duration, RelayError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut nonce = [0u8; 8];
    // No randomness: a fixed nonce still tells our echoes from anything else on the socket.
    let _ = getrandom::fill(&mut nonce);
    // The peer's permission for our relayed address comes first, so our first probe can
    // reach it; the opening datagram itself is dropped unless we already have ours.
    match tokio::time::timeout_at(deadline, peer.send_to(OPENING, first_relayed)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return Err(RelayError::PeerSend {
                to: first_relayed,
                reason: error.to_string(),
            })
        }
        Err(_) => {
            return Err(RelayError::PeerSend {
                to: first_relayed,
                reason: format!("no answer within {limit:?}"),
            })
        }
    }
    probe_with_echo(first, peer, peer_relayed, nonce, deadline, limit).await
}

/// Sends probes from `first` through the relay to `own`, a UDP socket of ours whose address
/// as the relay sees it is `own_mapped` (its STUN mapping), which echoes them back to
/// `first_relayed` through the relay; the round trip of the probe that came back.
pub async fn round_trip_via_own_address(
    first: Arc<dyn Conn + Send + Sync>,
    first_relayed: SocketAddr,
    own: Arc<dyn Conn + Send + Sync>,
    own_mapped: SocketAddr,
    limit: Duration,
) -> Result<Duration, RelayError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    // Opens our NAT's filter for datagrams from the relayed address (the relay drops this
    // one: no permission yet).
    if let Err(error) = own.send_to(OPENING, first_relayed).await {
        return Err(RelayError::PeerSend {
            to: first_relayed,
            reason: error.to_string(),
        });
    }
    probe_with_echo(first, own, own_mapped, nonce, deadline, limit).await
}

/// Probes from `first` to `target`, echoed by `peer`, until one comes back or `deadline`.
async fn probe_with_echo(
    first: Arc<dyn Conn + Send + Sync>,
    peer: Arc<dyn Conn + Send + Sync>,
    target: SocketAddr,
    nonce: [u8; 8],
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Result<Duration, RelayError> {
    let arrived = Arc::new(AtomicBool::new(false));
    let echo = tokio::spawn(echo_probes(peer, arrived.clone()));
    let result = probe_until_echo(&first, target, nonce, deadline).await;
    echo.abort();
    match result {
        Ok(rtt) => Ok(rtt),
        Err(ProbeFailure::Send(reason)) => Err(RelayError::Send { to: target, reason }),
        Err(ProbeFailure::TimedOut) if arrived.load(Ordering::Relaxed) => {
            Err(RelayError::NoAnswerBack {
                peer: target,
                limit,
            })
        }
        Err(ProbeFailure::TimedOut) => Err(RelayError::NothingArrived {
            peer: target,
            limit,
        }),
    }
}

enum ProbeFailure {
    Send(String),
    TimedOut,
}

fn probe(nonce: [u8; 8], sequence: u32) -> Vec<u8> {
    [PROBE_MAGIC, &nonce, &sequence.to_be_bytes()].concat()
}

/// The sequence number of an echo of one of our probes.
fn echoed_sequence(datagram: &[u8], nonce: [u8; 8]) -> Option<u32> {
    let rest = datagram
        .strip_prefix(ECHO_MAGIC)?
        .strip_prefix(&nonce[..])?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

async fn probe_until_echo(
    first: &Arc<dyn Conn + Send + Sync>,
    peer_relayed: SocketAddr,
    nonce: [u8; 8],
    deadline: tokio::time::Instant,
) -> Result<Duration, ProbeFailure> {
    let mut sent: Vec<Instant> = Vec::new();
    let mut buf = vec![0u8; 1500];
    loop {
        let sequence = sent.len() as u32;
        sent.push(Instant::now());
        match tokio::time::timeout_at(
            deadline,
            first.send_to(&probe(nonce, sequence), peer_relayed),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(ProbeFailure::Send(error.to_string())),
            Err(_) => return Err(ProbeFailure::TimedOut),
        }
        let resend = (tokio::time::Instant::now() + RESEND).min(deadline);
        loop {
            match tokio::time::timeout_at(resend, first.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => {
                    if let Some(sent_at) = echoed_sequence(&buf[..n], nonce)
                        .and_then(|sequence| sent.get(sequence as usize))
                    {
                        return Ok(sent_at.elapsed());
                    }
                }
                // The relay connection closed under us: nothing more will come.
                Ok(Err(_)) => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(ProbeFailure::TimedOut);
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(ProbeFailure::TimedOut)
                }
                Err(_) => break,
            }
        }
    }
}

/// The peer's side: every probe read is echoed to where it came from.
async fn echo_probes(peer: Arc<dyn Conn + Send + Sync>, arrived: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 1500];
    while let Ok((n, from)) = peer.recv_from(&mut buf).await {
        let Some(rest) = buf[..n].strip_prefix(PROBE_MAGIC) else {
            continue;
        };
        arrived.store(true, Ordering::Relaxed);
        let echo = [ECHO_MAGIC, rest].concat();
        let _ = peer.send_to(&echo, from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    async fn pair() -> (
        Arc<dyn Conn + Send + Sync>,
        SocketAddr,
        Arc<dyn Conn + Send + Sync>,
        SocketAddr,
    ) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        (Arc::new(a), a_addr, Arc::new(b), b_addr)
    }

    #[test]
    fn only_an_echo_with_our_nonce_counts() {
        let nonce = *b"12345678";
        let echo = [ECHO_MAGIC, &nonce[..], &7u32.to_be_bytes()].concat();
        assert_eq!(echoed_sequence(&echo, nonce), Some(7));
        assert_eq!(echoed_sequence(&echo, *b"87654321"), None);
        assert_eq!(echoed_sequence(&probe(nonce, 7), nonce), None);
        assert_eq!(echoed_sequence(&echo[..echo.len() - 1], nonce), None);
    }

    #[tokio::test]
    async fn a_path_that_carries_both_ways_gives_a_round_trip() {
        let (a, a_addr, b, b_addr) = pair().await;
        let rtt = round_trip(a, a_addr, b, b_addr, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
    }

    #[tokio::test]
    async fn probes_to_our_own_address_come_back_through_its_echo() {
        let (a, a_addr, own, own_addr) = pair().await;
        let rtt = round_trip_via_own_address(a, a_addr, own, own_addr, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
    }

    #[tokio::test]
    async fn probes_that_reach_nobody_who_echoes_say_nothing_arrived() {
        // Probes go to a socket that reads them and answers nothing; the peer that would
        // echo never sees them.
        let (a, a_addr, b, _) = pair().await;
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let limit = Duration::from_millis(600);
        let error = round_trip(a, a_addr, b, silent_addr, limit)
            .await
            .unwrap_err();
        // `b` echoes nothing (nothing reaches it): nothing arrived where the probes went.
        assert_eq!(
            error,
            RelayError::NothingArrived {
                peer: silent_addr,
                limit
            }
        );
        let mut buf = [0u8; 64];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(PROBE_MAGIC));
    }

    #[tokio::test]
    async fn probes_that_arrive_but_whose_echoes_are_lost_say_one_way() {
        // A hop carries the probes from `a` to the peer and drops the peer's echoes, as a
        // relay that relays one way only would.
        let (a, a_addr, peer, peer_addr) = pair().await;
        let hop = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let hop_addr = hop.local_addr().unwrap();
        let carrying = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = hop.recv_from(&mut buf).await {
                if from == a_addr {
                    let _ = hop.send_to(&buf[..n], peer_addr).await;
                }
            }
        });
        let limit = Duration::from_millis(600);
        let error = round_trip(a, a_addr, peer, hop_addr, limit)
            .await
            .unwrap_err();
        carrying.abort();
        assert_eq!(
            error,
            RelayError::NoAnswerBack {
                peer: hop_addr,
                limit
            }
        );
        assert!(
            error.to_string().contains("relayed one way only"),
            "{error}"
        );
    }
}
