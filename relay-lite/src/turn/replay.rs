//! Answers a retransmitted Allocate with the success response the first one got.
//!
//! When an Allocate success response is lost (a lossy path: exactly the networks this relay is
//! for), the client retransmits the same request — same 5-tuple, same transaction id. The first
//! request already made the allocation, so the server rejects the retransmission with 437
//! (Allocation Mismatch) and the client has no relay candidate at all. RFC 8656 §7.2 (and
//! RFC 5766 §6.2 before it) lets the server recognise the retransmission by its transaction id
//! and answer it with the original success response; coturn does, webrtc-rs's `turn` server
//! does not ("relay already allocated for 5-TUPLE"). [`AllocateReplay`] sits in front of that
//! server: it keeps each Allocate success response it sends for 40 s (a STUN client gives up
//! after 39.5 s, RFC 8489 §6.2.1), keyed by client address and transaction id, and answers a
//! request that matches one with the kept bytes instead of passing it on.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// STUN message types (method | class bits, RFC 8489 §5).
const ALLOCATE_REQUEST: u16 = 0x0003;
const ALLOCATE_SUCCESS: u16 = 0x0103;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const HEADER: usize = 20;
/// How long a response is kept: the STUN transaction timeout, rounded up.
const KEEP: Duration = Duration::from_secs(40);
/// Responses kept at once; the oldest go first.
const CAPACITY: usize = 4096;
/// Answers per kept response (a client retransmits at most 6 times, RFC 8489 §6.2.1).
const MAX_REPLAYS: u32 = 8;
/// Largest response kept (Allocate successes are around 100 bytes).
const MAX_RESPONSE: usize = 1024;

type Key = (SocketAddr, [u8; 12]);

struct KeptResponse {
    response: Vec<u8>,
    at: Instant,
    replays: u32,
}

#[derive(Default)]
struct Store {
    responses: HashMap<Key, KeptResponse>,
    order: VecDeque<(Key, Instant)>,
}

/// Kept Allocate success responses; see the module docs.
#[derive(Default)]
pub(crate) struct AllocateReplay {
    store: Mutex<Store>,
}

/// The type and transaction id of a STUN message, if `datagram` is one.
fn stun_header(datagram: &[u8]) -> Option<(u16, [u8; 12])> {
    let header = datagram.get(..HEADER)?;
    if header[0] & 0xc0 != 0 || header[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if datagram.len() != HEADER + length {
        return None;
    }
    let mut transaction = [0u8; 12];
    transaction.copy_from_slice(&header[8..20]);
    Some((u16::from_be_bytes([header[0], header[1]]), transaction))
}

impl AllocateReplay {
    /// Notes a datagram the server sends to `to`: an Allocate success response is kept.
    pub fn remember(&self, to: SocketAddr, datagram: &[u8]) {
        self.remember_at(to, datagram, Instant::now());
    }

    /// The kept response for `datagram` from `from`, when it is a retransmitted Allocate
    /// request; the caller sends it back instead of passing the request on.
    pub fn replay(&self, from: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
        self.replay_at(from, datagram, Instant::now())
    }

    fn remember_at(&self, to: SocketAddr, datagram: &[u8], now: Instant) {
        let Some((ALLOCATE_SUCCESS, transaction)) = stun_header(datagram) else {
            return;
        };
        if datagram.len() > MAX_RESPONSE {
            return;
        }
        let mut kept = self.store.lock().unwrap_or_else(|e| e.into_inner());
        kept.expire(now);
        while kept.responses.len() >= CAPACITY {
            let Some((oldest, _)) = kept.order.pop_front() else {
                break;
            };
            kept.responses.remove(&oldest);
        }
        let key = (to, transaction);
        kept.order.push_back((key, now));
        kept.responses.insert(
            key,
            KeptResponse {
                response: datagram.to_vec(),
                at: now,
                replays: 0,
            },
        );
    }

    fn replay_at(&self, from: SocketAddr, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        let Some((ALLOCATE_REQUEST, transaction)) = stun_header(datagram) else {
            return None;
        };
        let mut kept = self.store.lock().unwrap_or_else(|e| e.into_inner());
        kept.expire(now);
        let entry = kept.responses.get_mut(&(from, transaction))?;
        if entry.replays >= MAX_REPLAYS {
            return None;
        }
        entry.replays += 1;
        Some(entry.response.clone())
    }
}

impl Store {
    fn expire(&mut self, now: Instant) {
        while let Some(&(key, at)) = self.order.front() {
            if now.duration_since(at) < KEEP {
                break;
            }
            self.order.pop_front();
            // A newer response under the same key stays.
            if self.responses.get(&key).is_some_and(|k| k.at == at) {
                self.responses.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(typ: u16, transaction: [u8; 12], body: &[u8]) -> Vec<u8> {
        let mut out = typ.to_be_bytes().to_vec();
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(MAGIC_COOKIE);
        out.extend(transaction);
        out.extend(body);
        out
    }

    fn client() -> SocketAddr {
        "10.0.0.2:5000".parse().unwrap()
    }

    #[test]
    fn a_retransmitted_allocate_gets_the_same_success_response() {
        let replay = AllocateReplay::default();
        let request = message(ALLOCATE_REQUEST, [1; 12], &[0; 8]);
        // The first request passes on to the server.
        assert_eq!(replay.replay(client(), &request), None);
        let success = message(ALLOCATE_SUCCESS, [1; 12], &[7; 12]);
        replay.remember(client(), &success);
        assert_eq!(replay.replay(client(), &request), Some(success.clone()));
        // Another transaction, another client, or another message type: passed on.
        assert_eq!(
            replay.replay(client(), &message(ALLOCATE_REQUEST, [2; 12], &[0; 8])),
            None
        );
        let other: SocketAddr = "10.0.0.3:5000".parse().unwrap();
        assert_eq!(replay.replay(other, &request), None);
        let refresh = message(0x0004, [1; 12], &[0; 8]);
        assert_eq!(replay.replay(client(), &refresh), None);
    }

    #[test]
    fn only_success_responses_are_kept_and_only_for_a_while() {
        let replay = AllocateReplay::default();
        let request = message(ALLOCATE_REQUEST, [3; 12], &[]);
        // A 401 challenge (error class) is not kept: the client's next Allocate is new anyway.
        replay.remember(client(), &message(0x0113, [3; 12], &[0; 8]));
        assert_eq!(replay.replay(client(), &request), None);
        let start = Instant::now();
        replay.remember_at(client(), &message(ALLOCATE_SUCCESS, [3; 12], &[]), start);
        assert!(replay
            .replay_at(client(), &request, start + KEEP - Duration::from_secs(1))
            .is_some());
        assert!(replay.replay_at(client(), &request, start + KEEP).is_none());
    }

    #[test]
    fn replays_and_memory_are_bounded_and_garbage_is_ignored() {
        let replay = AllocateReplay::default();
        let request = message(ALLOCATE_REQUEST, [4; 12], &[]);
        replay.remember(client(), &message(ALLOCATE_SUCCESS, [4; 12], &[]));
        let answered = (0..100)
            .filter(|_| replay.replay(client(), &request).is_some())
            .count();
        assert_eq!(answered, MAX_REPLAYS as usize);
        for n in 0..(CAPACITY as u32 + 100) {
            let mut transaction = [0u8; 12];
            transaction[..4].copy_from_slice(&n.to_be_bytes());
            replay.remember(client(), &message(ALLOCATE_SUCCESS, transaction, &[]));
        }
        assert!(replay.store.lock().unwrap().responses.len() <= CAPACITY);
        // Oversize responses are not kept.
        replay.remember(client(), &message(ALLOCATE_SUCCESS, [9; 12], &[0; 2000]));
        assert_eq!(
            replay.replay(client(), &message(ALLOCATE_REQUEST, [9; 12], &[])),
            None
        );
        // Truncated headers, a wrong cookie, a length that does not match, ChannelData.
        let mut wrong_cookie = message(ALLOCATE_REQUEST, [4; 12], &[]);
        wrong_cookie[4] = 0;
        let mut long = message(ALLOCATE_REQUEST, [4; 12], &[]);
        long.push(0);
        for junk in [
            &request[..10],
            &wrong_cookie[..],
            &long[..],
            &[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4][..],
        ] {
            assert_eq!(AllocateReplay::default().replay(client(), junk), None);
            assert_eq!(stun_header(junk), None);
        }
    }
}
