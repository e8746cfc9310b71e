//! Finding contacts again through rendezvous, as Zajel's app does (reference §5.3–§5.4),
//! sans-IO: [`ContactRendezvous`] takes `now` (Unix ms) and what the relay said, and returns
//! what to send; the phone line ([`crate::line`]) does the sending.
//!
//! - After each signaling connect the line sends `register_rendezvous` with its own (fresh)
//!   pairing code as `peerId` and the points of the contacts it looks for
//!   ([`registration`]: their daily points, and as hourly tokens their hourly tokens plus the
//!   daily points, `dead_drops:{}`, exactly [`RegisterRendezvous::as_the_app_sends`]), and the
//!   frame once more [`RESEND_AFTER_MS`] later; the app never again after that. Beyond the
//!   app, a long-running line (`answer`) may refresh it periodically
//!   ([`ContactRendezvous::refreshing_every`], [`REFRESH_EVERY_MS`]), the points recomputed
//!   each time, so that it stays findable past the hourly tokens' 3 h and the daily points'
//!   48 h.
//! - A live match (`rendezvous_result.liveMatches`, `rendezvous_partial.local.liveMatches`, a
//!   pushed `rendezvous_match`) names another peer's code. Empty, our own, or a code already
//!   handled: nothing. Otherwise only the side whose code is smaller (byte order, Dart's
//!   `String.compareTo`) sends `pair_request`; the other side waits for the `pair_incoming`.
//!   The app sends it on its primary connection always; we send it on the connection the
//!   match came on (on a redirect's connection: both contacts followed the redirect there,
//!   and a request on the primary could not reach a contact on another relay).
//! - `pair_incoming` is accepted only when its `fromPublicKey` is one of the trusted contacts'
//!   keys ([`ContactRendezvous::accepts`]); a stranger who learnt our code is not.
//! - `rendezvous_partial.redirects` (points another relay owns) are followed once per
//!   endpoint, only from the primary connection's replies (the app ignores a redirect
//!   connection's own redirects): a second connection to the endpoint, `register` with the
//!   same code and key, `register_rendezvous` with that redirect's items. A `pair_incoming`
//!   arriving there is answered there (same trusted-key rule).
//!
//! Beyond the app (relay-lite's forwarding, its README "Rendezvous across relays"): a match
//! may name, in `relayId`, the serverId of the relay where the contact is connected. Empty,
//! or a relay we already hold a connection to: as above, on that connection (the primary for
//! an empty one, as the app does). Another relay: it is looked up in the **signed fleet**
//! ([`ContactRendezvous::with_fleet`]: serverId → endpoint from the registry's signed list,
//! as discovery verified it; never from the relay's word, which a hostile relay could use to
//! send us anywhere). Not listed: not dialled ([`RendezvousAction::UnlistedRelay`]), and the
//! match is handled as one on the connection it came on. Listed: both sides open a *meeting
//! connection* to it ([`RendezvousAction::Meet`]: `register` with the same code and key, the
//! relay must prove that serverId's key); the smaller code sends `pair_request` there and
//! the call is carried on it; the larger waits, and answers a trusted `pair_incoming` on
//! whichever connection it arrives. If the smaller side cannot reach the contact's relay
//! (blocked, refused, wrong key: [`ContactRendezvous::meeting_failed`]; or not up within
//! [`MEETING_FALLBACK_MS`]: a blackholed relay only fails at the step timeout), it sends
//! `pair_request` on its primary connection instead, again every [`PAIR_RESEND_MS`] until
//! paired ([`ContactRendezvous::paired`]): the larger side's meeting connection registers its
//! code there (a request to a code not yet registered is a silent ghost the next request
//! replaces). A meeting connection that comes up after that carries no request
//! ([`ContactRendezvous::meeting_up`]), so the contacts pair once.

use std::collections::{BTreeMap, BTreeSet};

use zajel_wire::peer_keys;
use zajel_wire::rendezvous::{Redirect, RegisterRendezvous, RelayReply};

use crate::contacts::Contact;
use crate::identity::Identity;

/// The app re-sends `register_rendezvous` this long after connecting (once).
pub const RESEND_AFTER_MS: u64 = 5_000;

/// How often `answer` sends its contacts' points again (recomputed): every hour, so the
/// current hour's token and today's point are always registered.
pub const REFRESH_EVERY_MS: u64 = 3_600_000;

/// How often the smaller side re-sends `pair_request` on its primary connection when it
/// could not reach its contact's relay (until paired).
pub const PAIR_RESEND_MS: u64 = 1_000;

/// How long the smaller side waits for its meeting connection before it also requests on
/// its own relay.
pub const MEETING_FALLBACK_MS: u64 = 3_000;

/// Which connection a reply came on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// The connection the line registered on.
    Primary,
    /// A connection opened to follow a redirect, to this endpoint.
    Redirect(String),
    /// A connection opened to meet a contact on the relay a match named, to this endpoint.
    Meeting(String),
}

/// What the line must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendezvousAction {
    /// Send the `register_rendezvous` frame (again) on the primary connection.
    Register,
    /// A live match with `peer_code` (found via `via`): send it `pair_request`.
    PairRequest { peer_code: String, via: Via },
    /// A live match with `peer_code`, smaller than ours: it sends `pair_request`, we wait for
    /// its `pair_incoming`.
    AwaitPairIncoming { peer_code: String, via: Via },
    /// Open a second connection for `redirect` (register, then its items).
    FollowRedirect(Redirect),
    /// A live match with `peer_code` connected on another relay of the signed fleet: open a
    /// meeting connection to `endpoint` (the relay must prove `server_id`), register there,
    /// and when `request` (our code is the smaller) send `pair_request` on it.
    Meet {
        peer_code: String,
        server_id: String,
        endpoint: String,
        request: bool,
    },
    /// A live match named a relay that is not in the signed fleet: it is not dialled.
    UnlistedRelay { peer_code: String, relay_id: String },
}

/// The rendezvous rules for one line: own code, trusted keys, the re-send timer, and the codes
/// and endpoints already handled.
#[derive(Debug, Clone)]
pub struct ContactRendezvous {
    own_code: String,
    trusted_keys: BTreeSet<String>,
    resend_at: Option<u64>,
    refresh_ms: Option<u64>,
    handled_codes: BTreeSet<String>,
    followed_endpoints: BTreeSet<String>,
    /// serverId → endpoint, from the registry's signed list.
    fleet: BTreeMap<String, String>,
    /// serverId → the connection we hold to that relay.
    connected: BTreeMap<String, Via>,
    /// Codes whose `pair_request` is re-sent on the primary connection, and when next.
    pair_resends: BTreeMap<String, u64>,
    /// Codes we are to request on a meeting connection being opened, and until when we wait
    /// for it.
    meetings: BTreeMap<String, u64>,
}

impl ContactRendezvous {
    /// Rules for a line registered as `own_code` that trusts the contacts with `trusted_keys`
    /// (standard base64 X25519 public keys).
    pub fn new(own_code: &str, trusted_keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            own_code: own_code.to_string(),
            trusted_keys: trusted_keys.into_iter().collect(),
            resend_at: None,
            refresh_ms: None,
            handled_codes: BTreeSet::new(),
            followed_endpoints: BTreeSet::new(),
            fleet: BTreeMap::new(),
            connected: BTreeMap::new(),
            pair_resends: BTreeMap::new(),
            meetings: BTreeMap::new(),
        }
    }

    /// The signed fleet, as (serverId, endpoint): the relays a match's `relayId` may send us
    /// to. Without it no meeting connection is ever opened.
    pub fn with_fleet(mut self, fleet: impl IntoIterator<Item = (String, String)>) -> Self {
        self.fleet.extend(fleet);
        self
    }

    /// The primary connection's relay is `server_id` (its `server_info`).
    pub fn with_primary_relay(mut self, server_id: &str) -> Self {
        self.on_connected(Via::Primary, server_id);
        self
    }

    /// A connection (`via`) is up to the relay `server_id`: matches naming it pair there.
    pub fn on_connected(&mut self, via: Via, server_id: &str) {
        if !server_id.is_empty() {
            self.connected.entry(server_id.to_string()).or_insert(via);
        }
    }

    /// A meeting connection for `peer_code` (a [`RendezvousAction::Meet`]) is being opened at
    /// `now_ms`: when we are to request on it, we wait [`MEETING_FALLBACK_MS`] for it.
    pub fn meeting_started(&mut self, peer_code: &str, now_ms: u64) {
        if self.own_code.as_bytes() < peer_code.as_bytes()
            && !self.pair_resends.contains_key(peer_code)
        {
            self.meetings.insert(
                peer_code.to_string(),
                now_ms.saturating_add(MEETING_FALLBACK_MS),
            );
        }
    }

    /// The meeting connection for `peer_code` is up: whether to send `pair_request` on it
    /// (not when we are requesting on our own relay already, so that we pair once).
    pub fn meeting_up(&mut self, peer_code: &str) -> bool {
        self.meetings.remove(peer_code).is_some()
    }

    /// The meeting connection for `peer_code` could not be opened (refused, unreachable, or
    /// the relay did not prove its key) at `now_ms`: when we were to request, request on the
    /// primary connection instead, now and every [`PAIR_RESEND_MS`] until [`Self::paired`].
    pub fn meeting_failed(&mut self, peer_code: &str, now_ms: u64) -> Vec<RendezvousAction> {
        self.meetings.remove(peer_code);
        if self.own_code.as_bytes() >= peer_code.as_bytes()
            || self.pair_resends.contains_key(peer_code)
        {
            return Vec::new();
        }
        self.pair_resends
            .insert(peer_code.to_string(), now_ms.saturating_add(PAIR_RESEND_MS));
        vec![RendezvousAction::PairRequest {
            peer_code: peer_code.to_string(),
            via: Via::Primary,
        }]
    }

    /// Whether `pair_request` to `peer_code` is being re-sent on the primary connection
    /// (its `pair_timeout`s are expected: the contact was not there yet).
    pub fn resending_to(&self, peer_code: &str) -> bool {
        self.pair_resends.contains_key(peer_code)
    }

    /// Paired with `peer_code`: its `pair_request` is not re-sent any more.
    pub fn paired(&mut self, peer_code: &str) {
        self.pair_resends.remove(peer_code);
    }

    /// After the app's one re-send, send again every `every_ms` (ours, for long-running lines).
    pub fn refreshing_every(mut self, every_ms: u64) -> Self {
        self.refresh_ms = Some(every_ms.max(RESEND_AFTER_MS));
        self
    }

    /// The line is connected and registered at `now_ms`: send now, and once more later.
    pub fn connected(&mut self, now_ms: u64) -> Vec<RendezvousAction> {
        self.resend_at = Some(now_ms.saturating_add(RESEND_AFTER_MS));
        vec![RendezvousAction::Register]
    }

    /// When [`Self::on_timeout`] is next due.
    pub fn next_timeout(&self) -> Option<u64> {
        self.resend_at
            .into_iter()
            .chain(self.pair_resends.values().copied())
            .chain(self.meetings.values().copied())
            .min()
    }

    /// Time passed: the re-send (and, refreshing, the next one), and the `pair_request`s
    /// re-sent on the primary connection, when due.
    pub fn on_timeout(&mut self, now_ms: u64) -> Vec<RendezvousAction> {
        let mut actions = Vec::new();
        match self.resend_at {
            Some(at) if now_ms >= at => {
                self.resend_at = self.refresh_ms.map(|every| now_ms.saturating_add(every));
                actions.push(RendezvousAction::Register);
            }
            _ => {}
        }
        let late: Vec<String> = self
            .meetings
            .iter()
            .filter(|(_, at)| now_ms >= **at)
            .map(|(code, _)| code.clone())
            .collect();
        for peer_code in late {
            self.meetings.remove(&peer_code);
            self.pair_resends.insert(peer_code, now_ms);
        }
        for (peer_code, at) in self.pair_resends.iter_mut() {
            if now_ms >= *at {
                *at = now_ms.saturating_add(PAIR_RESEND_MS);
                actions.push(RendezvousAction::PairRequest {
                    peer_code: peer_code.clone(),
                    via: Via::Primary,
                });
            }
        }
        actions
    }

    /// A rendezvous reply arrived on `via`.
    pub fn on_reply(&mut self, reply: &RelayReply, via: &Via) -> Vec<RendezvousAction> {
        let mut actions = Vec::new();
        match reply {
            RelayReply::RendezvousResult { live_matches, .. } => {
                for found in live_matches {
                    actions.extend(self.live_match(&found.peer_id, &found.relay_id, via));
                }
            }
            RelayReply::RendezvousPartial { local, redirects } => {
                for found in &local.live_matches {
                    actions.extend(self.live_match(&found.peer_id, &found.relay_id, via));
                }
                if *via == Via::Primary {
                    for redirect in redirects {
                        let has_items =
                            !redirect.daily_points.is_empty() || !redirect.hourly_tokens.is_empty();
                        if !redirect.endpoint.is_empty()
                            && has_items
                            && self.followed_endpoints.insert(redirect.endpoint.clone())
                        {
                            actions.push(RendezvousAction::FollowRedirect(redirect.clone()));
                        }
                    }
                }
            }
            RelayReply::RendezvousMatch { matched } => {
                let relay_id = matched.relay_id.as_deref().unwrap_or_default();
                actions.extend(self.live_match(&matched.peer_id, relay_id, via));
            }
            _ => {}
        }
        actions
    }

    /// One live match (found on `via`, its peer connected on `relay_id`): who pairs with
    /// whom, and where.
    fn live_match(&mut self, peer_code: &str, relay_id: &str, via: &Via) -> Vec<RendezvousAction> {
        if peer_code.is_empty()
            || peer_code == self.own_code
            || !self.handled_codes.insert(peer_code.to_string())
        {
            return Vec::new();
        }
        let peer_code = peer_code.to_string();
        let request = self.own_code.as_bytes() < peer_code.as_bytes();
        let mut actions = Vec::new();
        let here = if relay_id.is_empty() {
            via.clone()
        } else if let Some(held) = self.connected.get(relay_id) {
            held.clone()
        } else if let Some(endpoint) = self.fleet.get(relay_id) {
            return vec![RendezvousAction::Meet {
                peer_code,
                server_id: relay_id.to_string(),
                endpoint: endpoint.clone(),
                request,
            }];
        } else {
            actions.push(RendezvousAction::UnlistedRelay {
                peer_code: peer_code.clone(),
                relay_id: relay_id.to_string(),
            });
            via.clone()
        };
        actions.push(if request {
            RendezvousAction::PairRequest {
                peer_code,
                via: here,
            }
        } else {
            RendezvousAction::AwaitPairIncoming {
                peer_code,
                via: here,
            }
        });
        actions
    }

    /// Whether a `pair_incoming` with `from_public_key` is accepted: only a trusted contact's.
    pub fn accepts(&self, from_public_key: &str) -> bool {
        self.trusted_keys.contains(from_public_key.trim())
    }
}

/// The `register_rendezvous` for `contacts` at `now_ms`, as the app sends it: `peerId` our
/// code, daily points of each contact (§5.3: both keys sorted, the days around now), hourly
/// tokens of each contact's session key plus all daily points. A contact whose key is not a
/// usable X25519 key is left out.
pub fn registration<'a>(
    identity: &Identity,
    own_code: &str,
    contacts: impl IntoIterator<Item = &'a Contact>,
    now_ms: i64,
) -> RegisterRendezvous {
    let own = identity.public_key();
    let mut daily = Vec::new();
    let mut hourly = Vec::new();
    for contact in contacts {
        let Some(peer) = zajel_wire::pairing::decode_x25519_public_key(&contact.key) else {
            continue;
        };
        let Some(session) = identity.session_key(peer) else {
            continue;
        };
        daily.extend(peer_keys::daily_points(&own, &peer, now_ms));
        hourly.extend(peer_keys::hourly_tokens(&session, now_ms));
    }
    RegisterRendezvous::as_the_app_sends(own_code, &daily, &hourly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_wire::rendezvous::{LiveMatch, MatchedPeer, RendezvousFound};

    fn live(codes: &[&str]) -> RelayReply {
        RelayReply::RendezvousResult {
            live_matches: codes
                .iter()
                .map(|c| LiveMatch {
                    peer_id: c.to_string(),
                    relay_id: String::new(),
                })
                .collect(),
            dead_drops: Vec::new(),
        }
    }

    fn live_on(found: &[(&str, &str)]) -> RelayReply {
        RelayReply::RendezvousResult {
            live_matches: found
                .iter()
                .map(|(c, r)| LiveMatch {
                    peer_id: c.to_string(),
                    relay_id: r.to_string(),
                })
                .collect(),
            dead_drops: Vec::new(),
        }
    }

    #[test]
    fn register_now_and_once_more_five_seconds_later_on_a_fake_clock() {
        let mut rules = ContactRendezvous::new("BBBBB2", []);
        assert_eq!(rules.next_timeout(), None);
        assert_eq!(rules.connected(1_000), [RendezvousAction::Register]);
        assert_eq!(rules.next_timeout(), Some(6_000));
        assert!(rules.on_timeout(5_999).is_empty());
        assert_eq!(rules.on_timeout(6_000), [RendezvousAction::Register]);
        assert_eq!(rules.next_timeout(), None);
        assert!(rules.on_timeout(60_000).is_empty(), "not periodic");
    }

    #[test]
    fn a_long_running_line_refreshes_every_hour_after_the_apps_resend() {
        let mut rules = ContactRendezvous::new("BBBBB2", []).refreshing_every(REFRESH_EVERY_MS);
        assert_eq!(rules.connected(0), [RendezvousAction::Register]);
        assert_eq!(rules.on_timeout(5_000), [RendezvousAction::Register]);
        assert_eq!(rules.next_timeout(), Some(5_000 + REFRESH_EVERY_MS));
        assert!(rules.on_timeout(REFRESH_EVERY_MS).is_empty());
        assert_eq!(
            rules.on_timeout(5_000 + REFRESH_EVERY_MS),
            [RendezvousAction::Register]
        );
        assert_eq!(rules.next_timeout(), Some(5_000 + 2 * REFRESH_EVERY_MS));
    }

    #[test]
    fn only_the_smaller_code_sends_pair_request_once_per_code() {
        let mut small = ContactRendezvous::new("AAAAA2", []);
        let mut large = ContactRendezvous::new("ZZZZZ2", []);
        assert_eq!(
            small.on_reply(&live(&["ZZZZZ2"]), &Via::Primary),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZZ2".into(),
                via: Via::Primary
            }]
        );
        assert_eq!(
            large.on_reply(&live(&["AAAAA2"]), &Via::Primary),
            [RendezvousAction::AwaitPairIncoming {
                peer_code: "AAAAA2".into(),
                via: Via::Primary
            }]
        );
        // A pushed match, duplicates, our own code and an empty id change nothing.
        let pushed = RelayReply::RendezvousMatch {
            matched: MatchedPeer {
                peer_id: "ZZZZZ2".into(),
                relay_id: None,
            },
        };
        assert!(small.on_reply(&pushed, &Via::Primary).is_empty());
        assert!(small
            .on_reply(&live(&["ZZZZZ2", "AAAAA2", ""]), &Via::Primary)
            .is_empty());
        // Byte order, as Dart's compareTo: digits before capitals.
        let mut digits = ContactRendezvous::new("22222A", []);
        assert!(matches!(
            digits.on_reply(&live(&["AAAAA2"]), &Via::Primary)[..],
            [RendezvousAction::PairRequest { .. }]
        ));
    }

    #[test]
    fn redirects_are_followed_once_per_endpoint_and_only_from_the_primary_connection() {
        let redirect = |endpoint: &str, items: bool| Redirect {
            server_id: "ed25519:x".into(),
            endpoint: endpoint.into(),
            daily_points: if items { vec!["day_a".into()] } else { vec![] },
            hourly_tokens: Vec::new(),
        };
        let partial = RelayReply::RendezvousPartial {
            local: RendezvousFound {
                live_matches: vec![LiveMatch {
                    peer_id: "ZZZZZ2".into(),
                    relay_id: String::new(),
                }],
                dead_drops: Vec::new(),
            },
            redirects: vec![
                redirect("ws://b.example", true),
                redirect("", true),
                redirect("ws://c.example", false),
            ],
        };
        let mut rules = ContactRendezvous::new("AAAAA2", []);
        let actions = rules.on_reply(&partial, &Via::Primary);
        assert_eq!(
            actions,
            [
                RendezvousAction::PairRequest {
                    peer_code: "ZZZZZ2".into(),
                    via: Via::Primary
                },
                RendezvousAction::FollowRedirect(redirect("ws://b.example", true)),
            ]
        );
        assert!(rules.on_reply(&partial, &Via::Primary).is_empty());
        let mut other = ContactRendezvous::new("AAAAA2", []);
        let via = Via::Redirect("ws://b.example".into());
        assert_eq!(
            other.on_reply(&partial, &via),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZZ2".into(),
                via
            }],
            "a redirect connection's own redirects are ignored"
        );
    }

    fn matched_on(code: &str, relay_id: &str) -> RelayReply {
        RelayReply::RendezvousMatch {
            matched: MatchedPeer {
                peer_id: code.into(),
                relay_id: Some(relay_id.into()),
            },
        }
    }

    fn fleet() -> Vec<(String, String)> {
        vec![
            ("ed25519:A".into(), "wss://a.example/".into()),
            ("ed25519:B".into(), "wss://b.example/".into()),
        ]
    }

    #[test]
    fn a_match_on_another_listed_relay_opens_a_meeting_connection_on_both_sides() {
        let mut small = ContactRendezvous::new("AAAAA2", [])
            .with_fleet(fleet())
            .with_primary_relay("ed25519:A");
        let mut large = ContactRendezvous::new("ZZZZZ2", [])
            .with_fleet(fleet())
            .with_primary_relay("ed25519:B");
        assert_eq!(
            small.on_reply(&matched_on("ZZZZZ2", "ed25519:B"), &Via::Primary),
            [RendezvousAction::Meet {
                peer_code: "ZZZZZ2".into(),
                server_id: "ed25519:B".into(),
                endpoint: "wss://b.example/".into(),
                request: true,
            }]
        );
        assert_eq!(
            large.on_reply(&live_on(&[("AAAAA2", "ed25519:A")]), &Via::Primary),
            [RendezvousAction::Meet {
                peer_code: "AAAAA2".into(),
                server_id: "ed25519:A".into(),
                endpoint: "wss://a.example/".into(),
                request: false,
            }]
        );
        // Once per code.
        assert!(small
            .on_reply(&matched_on("ZZZZZ2", "ed25519:B"), &Via::Primary)
            .is_empty());
    }

    #[test]
    fn a_match_on_our_own_relay_or_a_held_connection_pairs_there() {
        let mut rules = ContactRendezvous::new("AAAAA2", [])
            .with_fleet(fleet())
            .with_primary_relay("ed25519:A");
        assert_eq!(
            rules.on_reply(&matched_on("ZZZZZ2", "ed25519:A"), &Via::Primary),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZZ2".into(),
                via: Via::Primary
            }]
        );
        let meeting = Via::Meeting("wss://b.example/".into());
        rules.on_connected(meeting.clone(), "ed25519:B");
        assert_eq!(
            rules.on_reply(&matched_on("ZZZZY2", "ed25519:B"), &Via::Primary),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZY2".into(),
                via: meeting
            }]
        );
    }

    #[test]
    fn a_match_naming_a_relay_outside_the_signed_fleet_is_not_dialled() {
        // A hostile relay names its accomplice: no meeting connection, handled where it came.
        let mut rules = ContactRendezvous::new("AAAAA2", [])
            .with_fleet(fleet())
            .with_primary_relay("ed25519:A");
        assert_eq!(
            rules.on_reply(&matched_on("ZZZZZ2", "ed25519:EVIL"), &Via::Primary),
            [
                RendezvousAction::UnlistedRelay {
                    peer_code: "ZZZZZ2".into(),
                    relay_id: "ed25519:EVIL".into()
                },
                RendezvousAction::PairRequest {
                    peer_code: "ZZZZZ2".into(),
                    via: Via::Primary
                }
            ]
        );
        // Without a fleet, never.
        let mut bare = ContactRendezvous::new("AAAAA2", []);
        assert!(!bare
            .on_reply(&matched_on("ZZZZZ2", "ed25519:B"), &Via::Primary)
            .iter()
            .any(|a| matches!(a, RendezvousAction::Meet { .. })));
    }

    #[test]
    fn a_meeting_connection_not_up_in_time_makes_the_smaller_side_request_on_its_own_relay_once() {
        let mut small = ContactRendezvous::new("AAAAA2", []).with_fleet(fleet());
        small.meeting_started("ZZZZZ2", 1_000);
        assert_eq!(small.next_timeout(), Some(1_000 + MEETING_FALLBACK_MS));
        assert!(small.on_timeout(1_000 + MEETING_FALLBACK_MS - 1).is_empty());
        let primary = RendezvousAction::PairRequest {
            peer_code: "ZZZZZ2".into(),
            via: Via::Primary,
        };
        assert_eq!(
            small.on_timeout(1_000 + MEETING_FALLBACK_MS),
            std::slice::from_ref(&primary)
        );
        assert!(small.resending_to("ZZZZZ2"));
        // The meeting connection comes up late: no second request there.
        assert!(!small.meeting_up("ZZZZZ2"));
        assert_eq!(
            small.on_timeout(1_000 + MEETING_FALLBACK_MS + PAIR_RESEND_MS),
            [primary]
        );
        // In time: the request goes on it, and no fallback.
        let mut quick = ContactRendezvous::new("AAAAA2", []).with_fleet(fleet());
        quick.meeting_started("ZZZZZ2", 1_000);
        assert!(quick.meeting_up("ZZZZZ2"));
        assert_eq!(quick.next_timeout(), None);
        assert!(quick.on_timeout(60_000).is_empty());
        // The larger side never requests.
        let mut large = ContactRendezvous::new("ZZZZZ2", []);
        large.meeting_started("AAAAA2", 1_000);
        assert!(!large.meeting_up("AAAAA2"));
        assert_eq!(large.next_timeout(), None);
    }

    #[test]
    fn an_unreachable_contacts_relay_makes_the_smaller_side_request_on_its_own_relay_until_paired()
    {
        let mut small = ContactRendezvous::new("AAAAA2", []).with_fleet(fleet());
        assert_eq!(small.next_timeout(), None);
        assert_eq!(
            small.meeting_failed("ZZZZZ2", 10_000),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZZ2".into(),
                via: Via::Primary
            }]
        );
        assert!(small.meeting_failed("ZZZZZ2", 10_001).is_empty(), "once");
        assert_eq!(small.next_timeout(), Some(10_000 + PAIR_RESEND_MS));
        assert!(small.on_timeout(10_000 + PAIR_RESEND_MS - 1).is_empty());
        assert_eq!(
            small.on_timeout(10_000 + PAIR_RESEND_MS),
            [RendezvousAction::PairRequest {
                peer_code: "ZZZZZ2".into(),
                via: Via::Primary
            }]
        );
        small.paired("ZZZZZ2");
        assert_eq!(small.next_timeout(), None);
        assert!(small.on_timeout(60_000).is_empty());
        // The larger side waits (the smaller comes, or requests on our relay).
        let mut large = ContactRendezvous::new("ZZZZZ2", []);
        assert!(large.meeting_failed("AAAAA2", 10_000).is_empty());
        assert_eq!(large.next_timeout(), None);
    }

    #[test]
    fn only_a_trusted_contacts_pair_incoming_is_accepted() {
        let rules = ContactRendezvous::new("AAAAA2", ["KEY-OF-BOB=".to_string()]);
        assert!(rules.accepts("KEY-OF-BOB="));
        assert!(!rules.accepts("KEY-OF-MALLORY="), "a stranger");
        assert!(!rules.accepts(""));
        assert!(!ContactRendezvous::new("AAAAA2", []).accepts("KEY-OF-BOB="));
    }

    #[test]
    fn both_contacts_derive_the_same_points_as_the_app_sends_them() {
        let alice = Identity::ephemeral().unwrap();
        let bob = Identity::ephemeral().unwrap();
        let contact = |who: &Identity| Contact {
            name: "x".into(),
            key: who.public_base64(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            authenticated: false,
        };
        let now = 1_780_000_000_000;
        let at_alice = registration(&alice, "AAAAA2", [&contact(&bob)], now);
        let at_bob = registration(&bob, "BBBBB2", [&contact(&alice)], now);
        assert_eq!(at_alice.peer_id.as_deref(), Some("AAAAA2"));
        assert_eq!(at_alice.daily_points.len(), 3);
        assert_eq!(at_alice.daily_points, at_bob.daily_points);
        // Hourly tokens: 3 tokens, then the daily points (the app's list).
        assert_eq!(at_alice.hourly_tokens.len(), 6);
        assert_eq!(at_alice.hourly_tokens, at_bob.hourly_tokens);
        assert!(at_alice.hourly_tokens[0].starts_with("hr_"));
        assert_eq!(at_alice.hourly_tokens[3..], at_alice.daily_points[..]);
        // A stranger's points differ.
        let mallory = Identity::ephemeral().unwrap();
        let at_mallory = registration(&mallory, "MMMMM2", [&contact(&bob)], now);
        assert_ne!(at_mallory.daily_points, at_alice.daily_points);
        // An unusable key is left out.
        let mut broken = contact(&bob);
        broken.key = "not a key".into();
        assert!(registration(&alice, "AAAAA2", [&broken], now)
            .daily_points
            .is_empty());
    }
}
