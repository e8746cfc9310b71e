//! Which public key a pairing code stays bound to after its connection
//! drops. For a grace period (`Timeouts::code_grace`, 60 s unless
//! configured, zero disables it) only a `register` with the same code and
//! the same public key takes the code back; any other key is refused as if
//! the owner were still connected. Plain data taking `now` (sans-IO):
//! [`crate::hub`] holds it under its lock.
//!
//! At most `capacity` codes are held at once (the relay's connection cap):
//! past that the oldest hold ends early, so churning connections cannot grow
//! the table without bound.
//!
//! `register` carries no proof of possession of the key, so a hold keeps
//! the code from anyone who has not seen the owner's public key; the
//! owner's paired peers (and anyone the owner sent a pair request to) have
//! seen it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use zajel_wire::pairing::PairingCode;

/// What a `register` may do with a code, as far as holds go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No hold (never held, or the hold expired).
    Free,
    /// Held for this very key: the hold is used up, the code is the caller's.
    Reclaimed,
    /// Held for another key until its grace period ends.
    HeldForAnotherKey,
}

#[derive(Debug)]
struct Hold {
    key: Arc<str>,
    until: Instant,
}

/// Codes whose connection dropped, each held for its key until its grace ends.
#[derive(Debug)]
pub(crate) struct CodeHolds {
    grace: Duration,
    capacity: usize,
    holds: HashMap<PairingCode, Hold>,
    /// Every hold in the order it was made; with one grace period for all,
    /// that is also the order they expire in, so purging is amortised O(1).
    expiries: VecDeque<(Instant, PairingCode)>,
}

impl CodeHolds {
    pub fn new(grace: Duration, capacity: usize) -> Self {
        Self {
            grace,
            capacity: capacity.max(1),
            holds: HashMap::new(),
            expiries: VecDeque::new(),
        }
    }

    /// `code`, registered with `key`, lost its connection at `now`: hold it
    /// for `key` until the grace period ends (nothing when it is zero).
    pub fn hold(&mut self, code: PairingCode, key: Arc<str>, now: Instant) {
        self.purge(now);
        if self.grace.is_zero() {
            return;
        }
        let until = now + self.grace;
        self.holds.insert(code, Hold { key, until });
        self.expiries.push_back((until, code));
        while self.holds.len() > self.capacity {
            let Some((until, oldest)) = self.expiries.pop_front() else {
                break;
            };
            if self
                .holds
                .get(&oldest)
                .is_some_and(|hold| hold.until == until)
            {
                self.holds.remove(&oldest);
            }
        }
    }

    /// Whether `key` may register `code` at `now`; a hold for `key` is used up.
    pub fn claim(&mut self, code: PairingCode, key: &str, now: Instant) -> Claim {
        self.purge(now);
        match self.holds.get(&code) {
            None => Claim::Free,
            Some(hold) if *hold.key == *key => {
                self.holds.remove(&code);
                Claim::Reclaimed
            }
            Some(_) => Claim::HeldForAnotherKey,
        }
    }

    /// Codes held now (after dropping expired holds).
    #[cfg(test)]
    pub fn len(&mut self, now: Instant) -> usize {
        self.purge(now);
        self.holds.len()
    }

    /// Drops the holds whose grace ended at or before `now`.
    fn purge(&mut self, now: Instant) {
        while let Some(&(until, code)) = self.expiries.front() {
            if until > now {
                break;
            }
            self.expiries.pop_front();
            // The code may have been held again since (a later expiry) or reclaimed.
            if self.holds.get(&code).is_some_and(|hold| hold.until <= now) {
                self.holds.remove(&code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    #[test]
    fn a_held_code_refuses_other_keys_until_the_grace_ends() {
        let start = Instant::now();
        let mut holds = CodeHolds::new(GRACE, 100);
        holds.hold(code("PWNER2"), Arc::from("owner-key"), start);
        let almost = start + GRACE - Duration::from_millis(1);
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", start),
            Claim::HeldForAnotherKey
        );
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", almost),
            Claim::HeldForAnotherKey
        );
        assert_eq!(
            holds.claim(code("ZTHER2"), "squatter-key", start),
            Claim::Free
        );
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", start + GRACE),
            Claim::Free
        );
        assert_eq!(holds.len(start + GRACE), 0);
    }

    #[test]
    fn the_owners_key_takes_the_code_back_once() {
        let start = Instant::now();
        let mut holds = CodeHolds::new(GRACE, 100);
        holds.hold(code("PWNER2"), Arc::from("owner-key"), start);
        let later = start + Duration::from_secs(30);
        assert_eq!(
            holds.claim(code("PWNER2"), "owner-key", later),
            Claim::Reclaimed
        );
        // The hold is used up: the code is the owner's again (live), not held.
        assert_eq!(holds.len(later), 0);
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", later),
            Claim::Free
        );
    }

    #[test]
    fn a_second_drop_restarts_the_grace_and_expired_holds_are_purged() {
        let start = Instant::now();
        let mut holds = CodeHolds::new(GRACE, 100);
        holds.hold(code("PWNER2"), Arc::from("owner-key"), start);
        holds.hold(code("ZTHER2"), Arc::from("other-key"), start);
        let second = start + Duration::from_secs(50);
        holds.hold(code("PWNER2"), Arc::from("owner-key"), second);
        // The first hold's expiry passes; the renewed hold still stands.
        assert_eq!(holds.len(start + GRACE), 1);
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", start + GRACE),
            Claim::HeldForAnotherKey
        );
        assert_eq!(holds.len(second + GRACE), 0);
        assert!(holds.expiries.is_empty());
    }

    #[test]
    fn past_the_capacity_the_oldest_hold_ends_early() {
        let start = Instant::now();
        let mut holds = CodeHolds::new(GRACE, 2);
        holds.hold(code("AAAAAA"), Arc::from("a"), start);
        holds.hold(code("BBBBBB"), Arc::from("b"), start);
        holds.hold(code("CCCCCC"), Arc::from("c"), start);
        assert_eq!(holds.len(start), 2);
        assert_eq!(holds.claim(code("AAAAAA"), "x", start), Claim::Free);
        assert_eq!(
            holds.claim(code("CCCCCC"), "x", start),
            Claim::HeldForAnotherKey
        );
    }

    #[test]
    fn a_zero_grace_holds_nothing() {
        let start = Instant::now();
        let mut holds = CodeHolds::new(Duration::ZERO, 100);
        holds.hold(code("PWNER2"), Arc::from("owner-key"), start);
        assert_eq!(
            holds.claim(code("PWNER2"), "squatter-key", start),
            Claim::Free
        );
        assert_eq!(holds.len(start), 0);
    }
}
