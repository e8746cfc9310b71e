//! The DTLS server's duty webrtc-rs leaves undone: answering a repeated final flight from the
//! client with our own final flight again (RFC 6347 §4.2.4).
//!
//! In an ordinary DTLS 1.2 handshake the server sends the last flight (ChangeCipherSpec +
//! Finished) and then considers the handshake complete; it cannot know whether that flight
//! arrived. If it was lost, the client keeps retransmitting its own final flight (…,
//! ChangeCipherSpec, Finished), and the RFC says the server MUST answer each such repeat by
//! sending its last flight again. webrtc-rs's DTLS (`dtls` 0.17.2) returns from its handshake
//! state machine as soon as it has sent that flight, so nobody answers: the server side reports
//! DTLS connected and sends SRTP, while the client side stays in the handshake for good and the
//! call carries no media at all, with no error anywhere. On a lossy path (the censorship
//! suite's degraded path drops one packet in twenty) this is about one call in fifteen.
//!
//! [`LastFlight`] sits where a tap sees every datagram of the call — the engine's own socket
//! ([`crate::tap`]) and the hop in front of each TURN server ([`crate::turn_tap`]): it keeps the
//! datagrams of the final flight this side sent as DTLS server, per peer address, and when a
//! datagram from that peer carries a ChangeCipherSpec again (the client only repeats it when it
//! never got ours) it hands back those datagrams to be sent again, byte for byte. Resending the
//! same records is what the peer needs: it never processed them, and if it had, its replay
//! window drops the copy. Through TURN the kept bytes are the TURN messages that carried the
//! flight (ChannelData or Send indications), sent again as they were.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// DTLS record content types (RFC 6347 §4.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type of a ServerHello.
const SERVER_HELLO: u8 = 2;
/// A final flight is one or two datagrams; more than this is not a final flight.
const MAX_FLIGHT_DATAGRAMS: usize = 4;
/// Answers per peer: the client gives up retransmitting well before this many.
const MAX_RESENDS: u32 = 32;
/// Peers remembered at once (a call has one; ICE restarts may add a few).
const MAX_PEERS: usize = 16;

/// One DTLS record in a datagram: content type, epoch and fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub content_type: u8,
    pub epoch: u16,
    pub fragment: &'a [u8],
}

/// The DTLS records of a datagram, in order; stops at the first truncated record. Datagrams
/// that are not DTLS (RFC 7983: first byte outside 20..=63) yield nothing.
pub fn records(datagram: &[u8]) -> impl Iterator<Item = Record<'_>> {
    let mut rest = if matches!(datagram.first(), Some(20..=63)) {
        datagram
    } else {
        &[]
    };
    std::iter::from_fn(move || {
        let header = rest.get(..13)?;
        let length = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let fragment = rest.get(13..13 + length)?;
        let record = Record {
            content_type: header[0],
            epoch: u16::from_be_bytes([header[3], header[4]]),
            fragment,
        };
        rest = &rest[13 + length..];
        Some(record)
    })
}

/// What we know of the handshake with one peer.
#[derive(Debug, Default)]
struct Peer {
    /// We sent a ServerHello to this peer: we are the DTLS server, the side with the duty.
    server: bool,
    /// The datagrams of our final flight, from the one with our ChangeCipherSpec on.
    flight: Vec<Vec<u8>>,
    /// Still adding encrypted handshake datagrams to `flight`.
    collecting: bool,
    resends: u32,
}

/// Keeps our final DTLS flight per peer and says when to send it again. See the module docs.
#[derive(Debug, Default)]
pub struct LastFlight {
    peers: HashMap<SocketAddr, Peer>,
    resends: u64,
}

impl LastFlight {
    /// Notes a datagram this side sends to `to`.
    pub fn on_sent(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.on_sent_carried(to, datagram, datagram);
    }

    /// Notes DTLS `datagram` this side sends to `to` inside `carrier` (the bytes on the wire,
    /// e.g. a TURN ChannelData message); a resend sends `carrier` again.
    pub fn on_sent_carried(&mut self, to: SocketAddr, datagram: &[u8], carrier: &[u8]) {
        let mut records = records(datagram).peekable();
        let Some(first) = records.peek().copied() else {
            return;
        };
        let (mut server_hello, mut change_cipher_spec) = (false, false);
        for record in records {
            server_hello |= record.content_type == HANDSHAKE
                && record.epoch == 0
                && record.fragment.first() == Some(&SERVER_HELLO);
            change_cipher_spec |= record.content_type == CHANGE_CIPHER_SPEC;
        }
        if !self.peers.contains_key(&to) && self.peers.len() >= MAX_PEERS {
            self.peers.clear();
        }
        let peer = self.peers.entry(to).or_default();
        if server_hello {
            // A new handshake: whatever was kept belongs to an older one.
            *peer = Peer {
                server: true,
                ..Peer::default()
            };
        }
        if change_cipher_spec {
            peer.flight = vec![carrier.to_vec()];
            peer.collecting = true;
        } else if peer.collecting {
            let encrypted_handshake = first.content_type == HANDSHAKE && first.epoch > 0;
            if encrypted_handshake && peer.flight.len() < MAX_FLIGHT_DATAGRAMS {
                peer.flight.push(carrier.to_vec());
            } else if matches!(first.content_type, APPLICATION_DATA | ALERT) || encrypted_handshake
            {
                peer.collecting = false;
            }
        }
    }

    /// Notes a datagram received from `from`; returns the datagrams to send back to it (our
    /// final flight again) when it repeats its own final flight to us as DTLS server.
    pub fn on_received(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<Vec<u8>> {
        let repeats_final_flight = records(datagram).any(|r| r.content_type == CHANGE_CIPHER_SPEC);
        if !repeats_final_flight {
            return Vec::new();
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return Vec::new();
        };
        if !peer.server || peer.flight.is_empty() || peer.resends >= MAX_RESENDS {
            return Vec::new();
        }
        peer.resends += 1;
        peer.collecting = false;
        self.resends += 1;
        peer.flight.clone()
    }

    /// How many times our final flight went out again.
    pub fn resends(&self) -> u64 {
        self.resends
    }
}

/// A test switch: once armed, loses the next datagram whose DTLS carries a ChangeCipherSpec
/// (part of a final handshake flight), as a lossy path would.
#[derive(Debug, Default)]
pub struct LoseNextChangeCipherSpec(AtomicBool);

impl LoseNextChangeCipherSpec {
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether `datagram` is the one to lose (disarming the switch when it is).
    pub fn takes(&self, datagram: &[u8]) -> bool {
        self.0.load(Ordering::SeqCst)
            && records(datagram).any(|r| r.content_type == CHANGE_CIPHER_SPEC)
            && self.0.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8, epoch: u16, fragment: &[u8]) -> Vec<u8> {
        let mut out = vec![content_type, 0xfe, 0xfd];
        out.extend(epoch.to_be_bytes());
        out.extend([0, 0, 0, 0, 0, 1]);
        out.extend((fragment.len() as u16).to_be_bytes());
        out.extend(fragment);
        out
    }

    fn server_hello() -> Vec<u8> {
        record(
            HANDSHAKE,
            0,
            &[SERVER_HELLO, 0, 0, 4, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
        )
    }

    /// ChangeCipherSpec and an (encrypted) Finished in one datagram, as webrtc-rs packs them.
    fn final_flight() -> Vec<u8> {
        let mut out = record(CHANGE_CIPHER_SPEC, 0, &[1]);
        out.extend(record(HANDSHAKE, 1, &[0xaa; 40]));
        out
    }

    fn peer() -> SocketAddr {
        "10.0.0.2:5000".parse().unwrap()
    }

    #[test]
    fn records_walks_a_datagram_and_stops_at_truncation() {
        let flight = final_flight();
        let found: Vec<_> = records(&flight)
            .map(|r| (r.content_type, r.epoch))
            .collect();
        assert_eq!(found, [(CHANGE_CIPHER_SPEC, 0), (HANDSHAKE, 1)]);
        assert_eq!(records(&flight[..flight.len() - 1]).count(), 1);
        assert_eq!(records(&flight[..12]).count(), 0);
        // STUN (first byte 0 or 1) and RTP (128..=191) are not DTLS.
        assert_eq!(records(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]).count(), 0);
        assert_eq!(records(&[0x80; 40]).count(), 0);
    }

    #[test]
    fn server_answers_a_repeated_final_flight_with_its_own() {
        let mut last = LastFlight::default();
        last.on_sent(peer(), &server_hello());
        // The client's final flight arrives the first time: nothing of ours to repeat yet.
        assert!(last.on_received(peer(), &final_flight()).is_empty());
        last.on_sent(peer(), &final_flight());
        // SRTP-only traffic afterwards is not DTLS and changes nothing.
        assert!(last.on_received(peer(), &[0x80; 60]).is_empty());
        // The client repeats its final flight: ours goes out again, byte for byte.
        assert_eq!(last.on_received(peer(), &final_flight()), [final_flight()]);
        assert_eq!(last.on_received(peer(), &final_flight()), [final_flight()]);
        assert_eq!(last.resends(), 2);
        // Only to the peer it was sent to.
        let other: SocketAddr = "10.0.0.3:5000".parse().unwrap();
        assert!(last.on_received(other, &final_flight()).is_empty());
    }

    #[test]
    fn a_split_final_flight_is_resent_whole_and_app_data_ends_it() {
        let mut last = LastFlight::default();
        last.on_sent(peer(), &server_hello());
        last.on_sent(peer(), &record(CHANGE_CIPHER_SPEC, 0, &[1]));
        last.on_sent(peer(), &record(HANDSHAKE, 1, &[0xbb; 40]));
        last.on_sent(peer(), &record(APPLICATION_DATA, 1, &[0xcc; 40]));
        last.on_sent(peer(), &record(HANDSHAKE, 1, &[0xdd; 40]));
        assert_eq!(
            last.on_received(peer(), &final_flight()),
            [
                record(CHANGE_CIPHER_SPEC, 0, &[1]),
                record(HANDSHAKE, 1, &[0xbb; 40])
            ]
        );
    }

    #[test]
    fn the_client_side_never_answers() {
        // We sent no ServerHello: we are the client, whose final flight the server confirms
        // with its own, so repeating ours would only be noise (pion/dtls#676).
        let mut last = LastFlight::default();
        last.on_sent(peer(), &final_flight());
        assert!(last.on_received(peer(), &final_flight()).is_empty());
        assert_eq!(last.resends(), 0);
    }

    #[test]
    fn resends_are_bounded_and_hostile_input_is_ignored() {
        let mut last = LastFlight::default();
        last.on_sent(peer(), &server_hello());
        last.on_sent(peer(), &final_flight());
        let answered = (0..100)
            .filter(|_| !last.on_received(peer(), &final_flight()).is_empty())
            .count();
        assert_eq!(answered, MAX_RESENDS as usize);
        // Garbage, truncated records and oversize lengths never panic or answer.
        for junk in [
            &[][..],
            &[20],
            &[20, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        ] {
            assert!(LastFlight::default().on_received(peer(), junk).is_empty());
            last.on_sent(peer(), junk);
        }
    }

    #[test]
    fn peers_are_bounded() {
        let mut last = LastFlight::default();
        for port in 0..1000u16 {
            let to = SocketAddr::from(([10, 0, 0, 9], port));
            last.on_sent(to, &server_hello());
            last.on_sent(to, &final_flight());
        }
        assert!(last.peers.len() <= MAX_PEERS);
    }
}
