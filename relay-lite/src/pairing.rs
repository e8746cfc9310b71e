//! Pending pair requests: who asked whom, from which address, with the
//! timer that warns and expires each request. A request is *live* when its
//! target saw it (`pair_incoming`) and can answer it, or a *ghost* when no
//! target will ever answer it (unknown, self, held or over-limit targets,
//! and requests whose target left): a ghost runs the same timer, so its
//! requester hears exactly what the requester of a live target that never
//! answers hears. Plain data; [`crate::hub`] holds it under its lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::AbortHandle;
use zajel_wire::pairing::PairingCode;

/// One pair request waiting for its target's answer (or for its timer).
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub requester: PairingCode,
    pub requester_key: Arc<str>,
    /// The requester's address as the per-address limits count it
    /// ([`crate::limits::address_key`]).
    pub source: IpAddr,
    /// Distinguishes a request from a later one between the same two codes.
    pub id: u64,
    pub timer: Option<AbortHandle>,
}

impl PendingRequest {
    /// Stops the request's timer.
    pub fn cancel(self) {
        if let Some(timer) = self.timer {
            timer.abort();
        }
    }
}

/// Whether a pending request's target can answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Live,
    Ghost,
}

/// Pending requests: live ones by target, ghosts by (requester, target).
#[derive(Debug, Default)]
pub(crate) struct PendingRequests {
    live: HashMap<PairingCode, Vec<PendingRequest>>,
    ghosts: HashMap<(PairingCode, PairingCode), PendingRequest>,
    /// Requests of both kinds each requester has open.
    open: HashMap<PairingCode, usize>,
}

impl PendingRequests {
    /// Live requests waiting for `target`.
    pub fn count_for(&self, target: PairingCode) -> usize {
        self.live.get(&target).map_or(0, Vec::len)
    }

    /// Live requests waiting for `target` from `source`.
    pub fn count_for_source(&self, target: PairingCode, source: IpAddr) -> usize {
        self.live
            .get(&target)
            .map_or(0, |list| list.iter().filter(|r| r.source == source).count())
    }

    /// Requests of both kinds `requester` has open.
    pub fn open_by(&self, requester: PairingCode) -> usize {
        self.open.get(&requester).copied().unwrap_or(0)
    }

    /// Adds a request `target` saw.
    pub fn insert(&mut self, target: PairingCode, request: PendingRequest) {
        *self.open.entry(request.requester).or_default() += 1;
        self.live.entry(target).or_default().push(request);
    }

    /// Adds a request no target will answer.
    pub fn insert_ghost(&mut self, target: PairingCode, request: PendingRequest) {
        *self.open.entry(request.requester).or_default() += 1;
        if let Some(earlier) = self.ghosts.insert((request.requester, target), request) {
            self.closed(earlier.requester);
            earlier.cancel();
        }
    }

    /// Takes the live request from `requester` to `target` (what `pair_response` answers).
    pub fn take_live(
        &mut self,
        requester: PairingCode,
        target: PairingCode,
    ) -> Option<PendingRequest> {
        let list = self.live.get_mut(&target)?;
        let index = list.iter().position(|r| r.requester == requester)?;
        let request = list.remove(index);
        if list.is_empty() {
            self.live.remove(&target);
        }
        self.closed(requester);
        Some(request)
    }

    /// Takes the request, live or ghost, from `requester` to `target` (only
    /// the one with `id` if given).
    pub fn take(
        &mut self,
        requester: PairingCode,
        target: PairingCode,
        id: Option<u64>,
    ) -> Option<PendingRequest> {
        let matches = |r: &PendingRequest| id.is_none_or(|id| r.id == id);
        if self.ghosts.get(&(requester, target)).is_some_and(matches) {
            self.closed(requester);
            return self.ghosts.remove(&(requester, target));
        }
        let list = self.live.get_mut(&target)?;
        let index = list
            .iter()
            .position(|r| r.requester == requester && matches(r))?;
        let request = list.remove(index);
        if list.is_empty() {
            self.live.remove(&target);
        }
        self.closed(requester);
        Some(request)
    }

    /// Whether the request with `id` from `requester` to `target` is still
    /// pending, and whether its target can answer it.
    pub fn delivery(
        &self,
        requester: PairingCode,
        target: PairingCode,
        id: u64,
    ) -> Option<Delivery> {
        if self
            .ghosts
            .get(&(requester, target))
            .is_some_and(|r| r.id == id)
        {
            return Some(Delivery::Ghost);
        }
        self.live
            .get(&target)
            .is_some_and(|list| list.iter().any(|r| r.requester == requester && r.id == id))
            .then_some(Delivery::Live)
    }

    /// `code` left: the requests it made are dropped (timers stopped); the
    /// requests it received become ghosts (their requesters still hear
    /// `pair_expiring` and `pair_timeout`, as from a target that never answers).
    pub fn drop_code(&mut self, code: PairingCode) {
        if let Some(received) = self.live.remove(&code) {
            for request in received {
                if request.requester == code {
                    self.closed(code);
                    request.cancel();
                } else if let Some(earlier) = self.ghosts.insert((request.requester, code), request)
                {
                    self.closed(earlier.requester);
                    earlier.cancel();
                }
            }
        }
        let mut made = Vec::new();
        self.live.retain(|_, list| {
            let mut index = 0;
            while index < list.len() {
                if list[index].requester == code {
                    made.push(list.remove(index));
                } else {
                    index += 1;
                }
            }
            !list.is_empty()
        });
        let ghost_keys: Vec<_> = self
            .ghosts
            .keys()
            .filter(|(requester, _)| *requester == code)
            .copied()
            .collect();
        made.extend(ghost_keys.iter().filter_map(|key| self.ghosts.remove(key)));
        for request in made {
            self.closed(code);
            request.cancel();
        }
    }

    fn closed(&mut self, requester: PairingCode) {
        if let Some(count) = self.open.get_mut(&requester) {
            *count -= 1;
            if *count == 0 {
                self.open.remove(&requester);
            }
        }
    }

    /// Every pending request (live and ghost).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live.values().map(Vec::len).sum::<usize>() + self.ghosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn request(requester: &str, id: u64) -> PendingRequest {
        request_from(requester, id, [127, 0, 0, 1])
    }

    fn request_from(requester: &str, id: u64, source: [u8; 4]) -> PendingRequest {
        PendingRequest {
            requester: code(requester),
            requester_key: Arc::from("k"),
            source: IpAddr::from(source),
            id,
            timer: None,
        }
    }

    #[test]
    fn requests_are_taken_by_pair_and_id_and_dropped_with_either_side() {
        let mut pending = PendingRequests::default();
        pending.insert(code("TARGET"), request("AAAAAA", 1));
        pending.insert(code("TARGET"), request("BBBBBB", 2));
        pending.insert(code("CCCCCC"), request("TARGET", 3));
        assert_eq!(pending.count_for(code("TARGET")), 2);
        assert_eq!(
            pending.delivery(code("AAAAAA"), code("TARGET"), 1),
            Some(Delivery::Live)
        );
        assert!(pending
            .take(code("AAAAAA"), code("TARGET"), Some(9))
            .is_none());
        assert_eq!(
            pending
                .take(code("AAAAAA"), code("TARGET"), None)
                .unwrap()
                .id,
            1
        );
        pending.drop_code(code("TARGET"));
        // TARGET's own request is gone; the one it received became a ghost.
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending.delivery(code("BBBBBB"), code("TARGET"), 2),
            Some(Delivery::Ghost)
        );
        assert_eq!(pending.count_for(code("TARGET")), 0);
        assert_eq!(pending.open_by(code("TARGET")), 0);
        assert_eq!(pending.open_by(code("BBBBBB")), 1);
        pending.drop_code(code("BBBBBB"));
        assert_eq!(pending.len(), 0);
        assert_eq!(pending.open_by(code("BBBBBB")), 0);
    }

    #[test]
    fn ghosts_cannot_be_answered_and_count_against_their_requester_only() {
        let mut pending = PendingRequests::default();
        pending.insert_ghost(code("DEAD22"), request("AAAAAA", 1));
        pending.insert(code("TARGET"), request("AAAAAA", 2));
        assert_eq!(pending.open_by(code("AAAAAA")), 2);
        assert_eq!(pending.count_for(code("DEAD22")), 0);
        // A target registered later cannot answer a ghost.
        assert!(pending.take_live(code("AAAAAA"), code("DEAD22")).is_none());
        assert_eq!(
            pending
                .take(code("AAAAAA"), code("DEAD22"), Some(1))
                .unwrap()
                .id,
            1
        );
        assert_eq!(pending.open_by(code("AAAAAA")), 1);
        // A repeated ghost replaces the earlier one.
        pending.insert_ghost(code("DEAD22"), request("AAAAAA", 3));
        pending.insert_ghost(code("DEAD22"), request("AAAAAA", 4));
        assert_eq!(pending.open_by(code("AAAAAA")), 2);
        assert_eq!(pending.delivery(code("AAAAAA"), code("DEAD22"), 3), None);
    }

    #[test]
    fn live_requests_are_counted_per_target_and_source_address() {
        let mut pending = PendingRequests::default();
        let here = IpAddr::from([10, 0, 0, 1]);
        pending.insert(code("TARGET"), request_from("AAAAAA", 1, [10, 0, 0, 1]));
        pending.insert(code("TARGET"), request_from("BBBBBB", 2, [10, 0, 0, 1]));
        pending.insert(code("TARGET"), request_from("CCCCCC", 3, [10, 0, 0, 2]));
        pending.insert_ghost(code("TARGET"), request_from("DDDDDD", 4, [10, 0, 0, 1]));
        assert_eq!(pending.count_for_source(code("TARGET"), here), 2);
        assert_eq!(pending.count_for(code("TARGET")), 3);
        assert_eq!(pending.count_for_source(code("ZTHER2"), here), 0);
    }
}
