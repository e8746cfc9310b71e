//! Pending pair requests: who asked whom, with the timer that warns and
//! expires each request. Plain data; [`crate::hub`] holds it under its lock.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::AbortHandle;
use zajel_wire::pairing::PairingCode;

/// One pair request waiting for its target's answer.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    pub requester: PairingCode,
    pub requester_key: Arc<str>,
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

/// Pending requests by target code.
#[derive(Debug, Default)]
pub(crate) struct PendingRequests {
    by_target: HashMap<PairingCode, Vec<PendingRequest>>,
}

impl PendingRequests {
    /// Requests waiting for `target`.
    pub fn count_for(&self, target: PairingCode) -> usize {
        self.by_target.get(&target).map_or(0, Vec::len)
    }

    /// Adds a request for `target`.
    pub fn insert(&mut self, target: PairingCode, request: PendingRequest) {
        self.by_target.entry(target).or_default().push(request);
    }

    /// Takes the request from `requester` to `target` (only the one with `id` if given).
    pub fn take(
        &mut self,
        requester: PairingCode,
        target: PairingCode,
        id: Option<u64>,
    ) -> Option<PendingRequest> {
        let list = self.by_target.get_mut(&target)?;
        let index = list
            .iter()
            .position(|r| r.requester == requester && id.is_none_or(|id| r.id == id))?;
        let request = list.remove(index);
        if list.is_empty() {
            self.by_target.remove(&target);
        }
        Some(request)
    }

    /// Whether the request with `id` from `requester` to `target` is still pending.
    pub fn contains(&self, requester: PairingCode, target: PairingCode, id: u64) -> bool {
        self.by_target
            .get(&target)
            .is_some_and(|list| list.iter().any(|r| r.requester == requester && r.id == id))
    }

    /// Drops every request `code` made or received, stopping their timers.
    pub fn drop_code(&mut self, code: PairingCode) {
        if let Some(list) = self.by_target.remove(&code) {
            list.into_iter().for_each(PendingRequest::cancel);
        }
        self.by_target.retain(|_, list| {
            let mut index = 0;
            while index < list.len() {
                if list[index].requester == code {
                    list.remove(index).cancel();
                } else {
                    index += 1;
                }
            }
            !list.is_empty()
        });
    }

    /// Every pending request.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_target.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn request(requester: &str, id: u64) -> PendingRequest {
        PendingRequest {
            requester: code(requester),
            requester_key: Arc::from("k"),
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
        assert!(pending.contains(code("AAAAAA"), code("TARGET"), 1));
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
        assert_eq!(pending.len(), 0);
    }
}
