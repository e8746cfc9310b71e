//! Rendezvous (`shared/reference/zajel-wire.md` §5) as a sans-IO machine:
//! `register_rendezvous` in (with the caller's Unix time in ms), the reply
//! and the `rendezvous_match` pushes out; entries in
//! [`crate::rendezvous_store`] (SQLite), so a restart loses none.
//!
//! Exactly Zajel's rules: daily points live [`RendezvousSettings::daily_ttl_ms`]
//! (48 h) and yield other peers' non-empty dead drops; hourly tokens live
//! [`RendezvousSettings::hourly_ttl_ms`] (3 h) and yield one live match per
//! (token, other unexpired peer), duplicates kept, `relayId` `""` when none;
//! each such match also pushes `{"type":"rendezvous_match","match":{"peerId":
//! <registrant>,"relayId"?}}` to the other peer (the caller delivers it to
//! that peerId's peer-relay connection, else its pairing-code connection,
//! else drops it). Re-registering upserts. Expired rows are swept by
//! [`Rendezvous::sweep`]; a peer relay's rows go when its connection does
//! ([`Rendezvous::drop_peer`]).
//!
//! Where each point or token goes is asked of a [`PointOwnership`]
//! function ([`local_only`] without federation; relay-lite's hash ring
//! over the fleet otherwise, `crate::ownership`): items Zajel's rule
//! places elsewhere are not stored (unless this relay is their meeting
//! relay) and come back as `redirects` (merged per server) in a
//! `rendezvous_partial`; beyond Zajel, items whose meeting relay is
//! another relay-lite also come out in [`Registered::forwards`], merged per
//! server, for the caller to send over the federation link
//! ([`zajel_wire::rendezvous_link`]), with the dead drops left at the
//! forwarded daily points. The meeting relay stores them with
//! [`Rendezvous::register_forwarded`], `relayId` = the origin relay, and
//! returns the live matches and the other peers' dead drops it found there
//! (sent back to the origin for its client).
//!
//! Beyond Zajel (each with its own error text, see [`RendezvousRefusal`]):
//! a connection may write only the entries of a `peerId` it holds (its
//! pairing code, or its peer-relay `peerId`), at most
//! [`RendezvousSettings::max_entries_per_peer`] live entries per `peerId`,
//! and at most [`RendezvousSettings::max_items_per_connection`] points and
//! tokens over a connection's life, and at most
//! [`crate::rendezvous_store::MAX_PEERS_PER_POINT`] (32) other peers read
//! at one point or token (the latest registered), so a flood of made-up
//! peerIds at one point cannot multiply every reply and push. The app
//! sends 9 points and tokens per contact on each connect and again 5 s
//! later, so the per-connection default covers 227 contacts. The app writes under its own current
//! pairing code on the connection that registered it, so none of these
//! costs it anything.

use std::collections::HashMap;
use std::sync::Arc;

use zajel_wire::rendezvous::{
    self as wire, FoundDeadDrop, LiveMatch, MatchedPeer, Redirect, RegisterRendezvous, RelayReply,
    RendezvousFound,
};
use zajel_wire::rendezvous_link::RendezvousLinkMessage;

use crate::rendezvous_store::{RendezvousStore, StoreError};

/// Who keeps a point or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointOwner {
    /// This relay.
    Local,
    /// Another server: the client is redirected there.
    Remote { server_id: String, endpoint: String },
}

/// Where one point or token goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Zajel's answer (§8.5): kept here, or redirected to its primary.
    pub owner: PointOwner,
    /// Kept here even when redirected: this relay is its meeting relay.
    pub also_keep: bool,
    /// The meeting relay (another relay-lite) it is forwarded to.
    pub forward_to: Option<String>,
}

impl From<PointOwner> for Placement {
    fn from(owner: PointOwner) -> Self {
        Placement {
            owner,
            also_keep: false,
            forward_to: None,
        }
    }
}

impl Placement {
    fn keep(&self) -> bool {
        self.also_keep || self.owner == PointOwner::Local
    }
}

/// Answers "where does this point go?" for each point or token string.
pub type PointOwnership = Arc<dyn Fn(&str) -> Placement + Send + Sync>;

/// Every point is this relay's (one relay, no federation).
pub fn local_only() -> PointOwnership {
    Arc::new(|_| PointOwner::Local.into())
}

/// The connection id [`Rendezvous::refresh`] counts under (connections start at 1).
const REFRESH_CONNECTION: u64 = 0;

/// Lifetimes and limits.
#[derive(Debug, Clone)]
pub struct RendezvousSettings {
    pub daily_ttl_ms: u64,
    pub hourly_ttl_ms: u64,
    /// Live entries (daily + hourly) one `peerId` may have.
    pub max_entries_per_peer: usize,
    /// Points and tokens one connection may register over its life.
    pub max_items_per_connection: usize,
    /// Forwarded points and tokens one federation link may bring per hour
    /// (a link carries every client of the other relay, for its whole life).
    pub max_forwarded_items_per_link_hour: usize,
}

/// Default of [`RendezvousSettings::max_entries_per_peer`].
pub const DEFAULT_MAX_ENTRIES_PER_PEER: usize = 4_096;
/// Default of [`RendezvousSettings::max_forwarded_items_per_link_hour`]
/// (22 000 of the app's 9-item registrations an hour from one relay).
pub const DEFAULT_MAX_FORWARDED_ITEMS_PER_LINK_HOUR: usize = 200_000;

/// Default of [`RendezvousSettings::max_items_per_connection`].
pub const DEFAULT_MAX_ITEMS_PER_CONNECTION: usize = 4_096;

impl Default for RendezvousSettings {
    fn default() -> Self {
        Self {
            daily_ttl_ms: wire::DAILY_POINT_TTL_MS,
            hourly_ttl_ms: wire::HOURLY_TOKEN_TTL_MS,
            max_entries_per_peer: DEFAULT_MAX_ENTRIES_PER_PEER,
            max_items_per_connection: DEFAULT_MAX_ITEMS_PER_CONNECTION,
            max_forwarded_items_per_link_hour: DEFAULT_MAX_FORWARDED_ITEMS_PER_LINK_HOUR,
        }
    }
}

/// A refused `register_rendezvous`; the Display text is the `error` message.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousRefusal {
    /// The `peerId` is not one this connection holds.
    #[error("peerId must be this connection's registered pairing code (or its peer-relay peerId)")]
    NotYourPeerId,
    #[error("Too many rendezvous entries for this peerId: at most {0}")]
    TooManyForPeer(usize),
    #[error("Too many rendezvous points and tokens on this connection: at most {0}")]
    TooManyForConnection(usize),
    /// A federation link brought more forwarded items this hour than allowed.
    #[error(
        "Too many forwarded rendezvous points and tokens from this relay this hour: at most {0}"
    )]
    TooManyForwarded(usize),
    /// The database failed (details logged, not sent).
    #[error("Rendezvous storage unavailable")]
    Storage(#[from] StoreError),
}

/// A `rendezvous_match` for an earlier registrant.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub peer_id: String,
    /// The earlier registrant's stored `relayId` (the origin relay's
    /// serverId for a forwarded entry).
    pub relay_id: Option<String>,
    pub reply: RelayReply,
}

/// What one `register_rendezvous` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// To the registrant.
    pub reply: RelayReply,
    /// For each earlier registrant matched, in order.
    pub pushes: Vec<Push>,
    /// `(meeting relay, rendezvous_forward)` per server, first-seen order.
    pub forwards: Vec<(String, RendezvousLinkMessage)>,
}

/// What one `rendezvous_forward` produced at the meeting relay.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRegistered {
    /// The forwarded registrant's live matches (`relayId` as stored: empty
    /// for this relay's own clients that sent none).
    pub live_matches: Vec<LiveMatch>,
    /// Other peers' dead drops at its forwarded daily points (`relayId` as
    /// stored).
    pub dead_drops: Vec<FoundDeadDrop>,
    /// For each earlier registrant matched, in order.
    pub pushes: Vec<Push>,
}

/// The items of one registration going to one meeting relay.
#[derive(Default)]
struct ForwardLists {
    server_id: String,
    daily: Vec<String>,
    hourly: Vec<String>,
    /// (daily point, dead drop) for the daily points with a non-empty drop.
    dead_drops: Vec<(String, String)>,
}

/// The rendezvous machine.
pub struct Rendezvous {
    store: RendezvousStore,
    settings: RendezvousSettings,
    ownership: PointOwnership,
    /// Points and tokens registered so far, by connection.
    used: HashMap<u64, usize>,
    /// Forwarded items by link: (hour window start, count).
    forwarded: HashMap<u64, (u64, usize)>,
}

impl Rendezvous {
    pub(crate) fn new(
        store: RendezvousStore,
        settings: RendezvousSettings,
        ownership: PointOwnership,
    ) -> Self {
        Self {
            store,
            settings,
            ownership,
            used: HashMap::new(),
            forwarded: HashMap::new(),
        }
    }

    /// `register_rendezvous` from `connection`, which holds the peerIds in
    /// `held` (its pairing code, its peer-relay peerId), at Unix time `now_ms`.
    pub fn register(
        &mut self,
        now_ms: u64,
        connection: u64,
        held: &[&str],
        request: &RegisterRendezvous,
    ) -> Result<Registered, RendezvousRefusal> {
        let Some(peer_id) = request.peer_id.as_deref() else {
            // No peerId and (the parser made sure) nothing to register.
            return Ok(Registered {
                reply: RelayReply::RendezvousResult {
                    live_matches: Vec::new(),
                    dead_drops: Vec::new(),
                },
                pushes: Vec::new(),
                forwards: Vec::new(),
            });
        };
        if !held.contains(&peer_id) {
            return Err(RendezvousRefusal::NotYourPeerId);
        }
        let items = request.daily_points.len() + request.hourly_tokens.len();
        let used = self.used.get(&connection).copied().unwrap_or(0);
        if used + items > self.settings.max_items_per_connection {
            return Err(RendezvousRefusal::TooManyForConnection(
                self.settings.max_items_per_connection,
            ));
        }
        // Split kept / redirected / forwarded, merging per server in first-seen order.
        let mut redirects: Vec<Redirect> = Vec::new();
        let mut forwards: Vec<ForwardLists> = Vec::new();
        let mut daily: Vec<&str> = Vec::new();
        let mut hourly: Vec<&str> = Vec::new();
        let lists = [
            (&request.daily_points, true),
            (&request.hourly_tokens, false),
        ];
        for (list, is_daily) in lists {
            for point in list {
                let placement = (self.ownership)(point);
                if placement.keep() {
                    if is_daily {
                        daily.push(point);
                    } else {
                        hourly.push(point);
                    }
                }
                if let PointOwner::Remote {
                    server_id,
                    endpoint,
                } = placement.owner
                {
                    let index = match redirects.iter().position(|r| r.server_id == server_id) {
                        Some(index) => index,
                        None => {
                            redirects.push(Redirect {
                                server_id,
                                endpoint,
                                daily_points: Vec::new(),
                                hourly_tokens: Vec::new(),
                            });
                            redirects.len() - 1
                        }
                    };
                    let entry = &mut redirects[index];
                    if is_daily {
                        entry.daily_points.push(point.clone());
                    } else {
                        entry.hourly_tokens.push(point.clone());
                    }
                }
                if let Some(server_id) = placement.forward_to {
                    let index = match forwards.iter().position(|f| f.server_id == server_id) {
                        Some(index) => index,
                        None => {
                            forwards.push(ForwardLists {
                                server_id,
                                ..ForwardLists::default()
                            });
                            forwards.len() - 1
                        }
                    };
                    let entry = &mut forwards[index];
                    if is_daily {
                        entry.daily.push(point.clone());
                        let drop = request.dead_drop_for(point);
                        if !drop.is_empty() {
                            entry.dead_drops.push((point.clone(), drop.to_string()));
                        }
                    } else {
                        entry.hourly.push(point.clone());
                    }
                }
            }
        }
        let found = self.store_and_match(
            now_ms,
            peer_id,
            &daily,
            &hourly,
            |point| request.dead_drop_for(point),
            request.relay_id.as_deref(),
        );
        let (found, pushes) = found?;
        *self.used.entry(connection).or_default() += items;
        let reply = if redirects.is_empty() {
            RelayReply::RendezvousResult {
                live_matches: found.live_matches,
                dead_drops: found.dead_drops,
            }
        } else {
            RelayReply::RendezvousPartial {
                local: found,
                redirects,
            }
        };
        let forwards = forwards
            .into_iter()
            .map(|lists| {
                (
                    lists.server_id,
                    RendezvousLinkMessage::Forward {
                        peer_id: peer_id.to_string(),
                        daily_points: lists.daily,
                        hourly_tokens: lists.hourly,
                        dead_drops: lists.dead_drops,
                    },
                )
            })
            .collect();
        Ok(Registered {
            reply,
            pushes,
            forwards,
        })
    }

    /// A `rendezvous_forward` from the relay `origin` over the link `link`:
    /// stores `peer_id`'s points and tokens (and its `dead_drops` at those
    /// daily points) with `relayId` = `origin`, without asking ownership (the
    /// origin chose this relay as their meeting relay); at most
    /// [`RendezvousSettings::max_forwarded_items_per_link_hour`] items per
    /// link in an hour's window, besides the per-peer limit.
    #[allow(clippy::too_many_arguments)]
    pub fn register_forwarded(
        &mut self,
        now_ms: u64,
        origin: &str,
        link: u64,
        peer_id: &str,
        daily_points: &[String],
        hourly_tokens: &[String],
        dead_drops: &[(String, String)],
    ) -> Result<ForwardRegistered, RendezvousRefusal> {
        const HOUR_MS: u64 = 3_600_000;
        let items = daily_points.len() + hourly_tokens.len();
        let cap = self.settings.max_forwarded_items_per_link_hour;
        let (start, used) = match self.forwarded.get(&link) {
            Some(&(start, used)) if now_ms.saturating_sub(start) < HOUR_MS => (start, used),
            _ => (now_ms, 0),
        };
        if used + items > cap {
            return Err(RendezvousRefusal::TooManyForwarded(cap));
        }
        let daily: Vec<&str> = daily_points.iter().map(String::as_str).collect();
        let hourly: Vec<&str> = hourly_tokens.iter().map(String::as_str).collect();
        let drop_at = |point: &str| {
            dead_drops
                .iter()
                .find(|(at, _)| at == point)
                .map_or("", |(_, drop)| drop.as_str())
        };
        let (found, pushes) =
            self.store_and_match(now_ms, peer_id, &daily, &hourly, drop_at, Some(origin))?;
        self.forwarded.insert(link, (start, used + items));
        Ok(ForwardRegistered {
            live_matches: found.live_matches,
            dead_drops: found.dead_drops,
            pushes,
        })
    }

    /// Stores `peer_id` at `daily` and `hourly` and returns what it found
    /// there and the pushes to earlier registrants; all or nothing.
    fn store_and_match<'a>(
        &mut self,
        now_ms: u64,
        peer_id: &str,
        daily: &[&str],
        hourly: &[&str],
        dead_drop_for: impl Fn(&str) -> &'a str,
        relay_id: Option<&str>,
    ) -> Result<(RendezvousFound, Vec<Push>), RendezvousRefusal> {
        let settings = &self.settings;
        self.store.transaction(|tables| {
            let mut found = RendezvousFound::default();
            let mut pushes = Vec::new();
            for point in daily {
                for other in tables.daily_others(point, peer_id, now_ms)? {
                    if !other.dead_drop.is_empty() {
                        found.dead_drops.push(FoundDeadDrop {
                            peer_id: other.peer_id,
                            dead_drop: other.dead_drop,
                            relay_id: other.relay_id.unwrap_or_default(),
                        });
                    }
                }
                tables.upsert_daily(
                    point,
                    peer_id,
                    dead_drop_for(point),
                    relay_id,
                    now_ms + settings.daily_ttl_ms,
                )?;
            }
            for token in hourly {
                for other in tables.hourly_others(token, peer_id, now_ms)? {
                    pushes.push(Push {
                        peer_id: other.peer_id.clone(),
                        relay_id: other.relay_id.clone(),
                        reply: RelayReply::RendezvousMatch {
                            matched: MatchedPeer {
                                peer_id: peer_id.to_string(),
                                relay_id: relay_id.map(str::to_owned),
                            },
                        },
                    });
                    found.live_matches.push(LiveMatch {
                        peer_id: other.peer_id,
                        relay_id: other.relay_id.unwrap_or_default(),
                    });
                }
                tables.upsert_hourly(token, peer_id, relay_id, now_ms + settings.hourly_ttl_ms)?;
            }
            if tables.live_rows_of(peer_id, now_ms)? > settings.max_entries_per_peer {
                // Rolled back: nothing of this registration is kept.
                return Err(RendezvousRefusal::TooManyForPeer(
                    settings.max_entries_per_peer,
                ));
            }
            Ok((found, pushes))
        })
    }

    /// Registers `request` again on the relay's own initiative (the rings
    /// changed): as [`Rendezvous::register`] by its own `peerId`, counted
    /// against no connection.
    pub fn refresh(
        &mut self,
        now_ms: u64,
        request: &RegisterRendezvous,
    ) -> Result<Registered, RendezvousRefusal> {
        let peer_id = request.peer_id.clone().unwrap_or_default();
        let result = self.register(now_ms, REFRESH_CONNECTION, &[&peer_id], request);
        self.used.remove(&REFRESH_CONNECTION);
        result
    }

    /// `connection` closed: its per-connection count goes.
    pub fn connection_closed(&mut self, connection: u64) {
        self.used.remove(&connection);
    }

    /// Drops every entry of `peer_id` (its peer-relay connection closed or was reaped).
    pub fn drop_peer(&mut self, peer_id: &str) -> Result<usize, StoreError> {
        self.store.delete_peer(peer_id)
    }

    /// Deletes the rows expired at `now_ms`; returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        self.store.delete_expired(now_ms)
    }

    /// Rows stored now, expired or not: (daily points, hourly tokens).
    pub fn row_counts(&self) -> Result<(usize, usize), StoreError> {
        self.store.row_counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use zajel_wire::rendezvous::RelayRequest;

    const HOUR: u64 = 3_600_000;
    const T0: u64 = 1_800_000_000_000;

    fn machine() -> Rendezvous {
        Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings::default(),
            local_only(),
        )
    }

    fn request(value: serde_json::Value) -> RegisterRendezvous {
        match RelayRequest::from_json_for_connection(value, Some(true)).unwrap() {
            RelayRequest::RegisterRendezvous(register) => register,
            other => panic!("{other:?}"),
        }
    }

    fn app(peer: &str, daily: &[&str], hourly: &[&str]) -> RegisterRendezvous {
        request(json!({
            "type": "register_rendezvous", "peerId": peer,
            "daily_points": daily, "hourly_tokens": hourly, "dead_drops": {},
        }))
    }

    fn register(
        machine: &mut Rendezvous,
        now: u64,
        connection: u64,
        register: &RegisterRendezvous,
    ) -> Registered {
        let peer = register.peer_id.clone().unwrap_or_default();
        machine
            .register(now, connection, &[&peer], register)
            .unwrap()
    }

    fn text(reply: &RelayReply) -> String {
        reply.to_text()
    }

    #[test]
    fn a_later_registrant_gets_live_matches_and_the_earlier_one_a_push_per_token() {
        let mut machine = machine();
        let first = register(
            &mut machine,
            T0,
            1,
            &app("AAAAAA", &["day_1"], &["hr_1", "hr_2", "day_1"]),
        );
        assert_eq!(
            text(&first.reply),
            r#"{"type":"rendezvous_result","liveMatches":[],"deadDrops":[]}"#
        );
        assert!(first.pushes.is_empty());
        let second = register(
            &mut machine,
            T0 + 1_000,
            2,
            &app("BBBBBB", &["day_1"], &["hr_1", "day_1", "hr_9"]),
        );
        assert_eq!(
            text(&second.reply),
            r#"{"type":"rendezvous_result","liveMatches":[{"peerId":"AAAAAA","relayId":""},{"peerId":"AAAAAA","relayId":""}],"deadDrops":[]}"#
        );
        // Once per matching token, to the earlier registrant, no relayId when none was sent.
        let push = r#"{"type":"rendezvous_match","match":{"peerId":"BBBBBB"}}"#;
        assert_eq!(second.pushes.len(), 2);
        for Push {
            peer_id: to, reply, ..
        } in &second.pushes
        {
            assert_eq!(to, "AAAAAA");
            assert_eq!(text(reply), push);
        }
        // Duplicates kept: the same token twice in one message matches twice.
        let third = register(
            &mut machine,
            T0 + 2_000,
            3,
            &app("CCCCCC", &[], &["hr_1", "hr_1"]),
        );
        let RelayReply::RendezvousResult { live_matches, .. } = &third.reply else {
            panic!()
        };
        let peers: Vec<_> = live_matches.iter().map(|m| m.peer_id.as_str()).collect();
        assert_eq!(peers, ["AAAAAA", "BBBBBB", "AAAAAA", "BBBBBB"]);
        assert_eq!(third.pushes.len(), 4);
    }

    #[test]
    fn relay_ids_and_dead_drops_follow_zajel() {
        let mut machine = machine();
        register(
            &mut machine,
            T0,
            1,
            &request(json!({
                "type": "register_rendezvous", "peerId": "AAAAAA",
                "dailyPoints": ["day_1", "day_2"], "hourlyTokens": ["hr_1"],
                "deadDrops": {"day_1": "sealed-for-b"}, "relayId": "relay-a",
            })),
        );
        // The legacy drop at every point (the map is empty).
        register(
            &mut machine,
            T0,
            3,
            &request(json!({
                "type": "register_rendezvous", "peerId": "CCCCCC",
                "dailyPoints": ["day_1"], "deadDrop": "legacy",
            })),
        );
        let b = register(
            &mut machine,
            T0 + 1,
            2,
            &request(json!({
                "type": "register_rendezvous", "peerId": "BBBBBB",
                "dailyPoints": ["day_1", "day_2"], "hourlyTokens": ["hr_1"], "relayId": "relay-b",
            })),
        );
        assert_eq!(
            text(&b.reply),
            r#"{"type":"rendezvous_result","liveMatches":[{"peerId":"AAAAAA","relayId":"relay-a"}],"deadDrops":[{"peerId":"AAAAAA","deadDrop":"sealed-for-b","relayId":"relay-a"},{"peerId":"CCCCCC","deadDrop":"legacy","relayId":""}]}"#
        );
        assert_eq!(
            text(&b.pushes[0].reply),
            r#"{"type":"rendezvous_match","match":{"peerId":"BBBBBB","relayId":"relay-b"}}"#
        );
    }

    #[test]
    fn entries_expire_on_the_clock_and_the_sweep_deletes_them() {
        let mut machine = machine();
        register(&mut machine, T0, 1, &app("AAAAAA", &["day_1"], &["hr_1"]));
        let dropped = request(json!({
            "type": "register_rendezvous", "peerId": "AAAAAA", "daily_points": ["day_1"], "deadDrop": "d",
        }));
        register(&mut machine, T0, 1, &dropped);
        // Just before 3 h the token still matches; at 3 h it does not.
        let probe = |machine: &mut Rendezvous, now: u64, peer: &str| {
            let registered = register(machine, now, 9, &app(peer, &["day_1"], &["hr_1"]));
            let RelayReply::RendezvousResult {
                live_matches,
                dead_drops,
            } = registered.reply
            else {
                panic!()
            };
            (live_matches.len(), dead_drops.len())
        };
        assert_eq!(probe(&mut machine, T0 + 3 * HOUR - 1, "BBBBBB"), (1, 1));
        assert_eq!(probe(&mut machine, T0 + 3 * HOUR, "CCCCCC"), (1, 1));
        // (CCCCCC matched BBBBBB's fresh token, not AAAAAA's expired one.)
        assert_eq!(probe(&mut machine, T0 + 48 * HOUR - 1, "DDDDDD"), (0, 1));
        // AAAAAA's drop is gone at 48 h; DDDDDD's token (from 48 h − 1 ms) still matches.
        assert_eq!(probe(&mut machine, T0 + 48 * HOUR, "EEEEEE"), (1, 0));
        assert_eq!(machine.row_counts().unwrap(), (5, 5));
        // At 51 h + 1 ms only DDDDDD's and EEEEEE's daily points are live.
        assert_eq!(machine.sweep(T0 + 51 * HOUR + 1).unwrap(), 8);
        assert_eq!(machine.row_counts().unwrap(), (2, 0));
    }

    #[test]
    fn re_registering_upserts_and_drop_peer_removes_a_peers_rows() {
        let mut machine = machine();
        for _ in 0..3 {
            register(&mut machine, T0, 1, &app("AAAAAA", &["day_1"], &["hr_1"]));
        }
        assert_eq!(machine.row_counts().unwrap(), (1, 1));
        // The upsert renews the expiry.
        register(
            &mut machine,
            T0 + 2 * HOUR,
            1,
            &app("AAAAAA", &[], &["hr_1"]),
        );
        let later = register(
            &mut machine,
            T0 + 4 * HOUR,
            2,
            &app("BBBBBB", &[], &["hr_1"]),
        );
        assert_eq!(later.pushes.len(), 1);
        assert_eq!(machine.drop_peer("AAAAAA").unwrap(), 2);
        let after = register(
            &mut machine,
            T0 + 4 * HOUR,
            3,
            &app("CCCCCC", &[], &["hr_1"]),
        );
        assert_eq!(after.pushes[0].peer_id, "BBBBBB");
        assert_eq!(after.pushes.len(), 1);
    }

    #[test]
    fn only_the_holder_of_a_peer_id_writes_its_entries() {
        let mut machine = machine();
        let victim = app("VICTIM", &["day_1"], &["hr_1"]);
        let refused = machine.register(T0, 7, &["ATTACK"], &victim).unwrap_err();
        assert!(matches!(refused, RendezvousRefusal::NotYourPeerId));
        assert_eq!(
            refused.to_string(),
            "peerId must be this connection's registered pairing code (or its peer-relay peerId)"
        );
        assert_eq!(machine.row_counts().unwrap(), (0, 0));
        // Not registered at all: nothing held.
        assert!(machine.register(T0, 8, &[], &victim).is_err());
        // A peer relay writes under its peerId.
        assert!(machine
            .register(
                T0,
                9,
                &["ATTACK", "relay-1"],
                &app("relay-1", &[], &["hr_1"])
            )
            .is_ok());
    }

    #[test]
    fn per_peer_and_per_connection_limits_refuse_with_clear_errors() {
        let mut machine = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings {
                max_entries_per_peer: 4,
                max_items_per_connection: 10,
                ..RendezvousSettings::default()
            },
            local_only(),
        );
        register(
            &mut machine,
            T0,
            1,
            &app("AAAAAA", &["day_1", "day_2"], &["hr_1"]),
        );
        // Re-registering the same points does not grow the count.
        register(
            &mut machine,
            T0,
            1,
            &app("AAAAAA", &["day_1", "day_2"], &["hr_1"]),
        );
        let over = app("AAAAAA", &["day_3"], &["hr_2"]);
        let refused = machine.register(T0, 1, &["AAAAAA"], &over).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Too many rendezvous entries for this peerId: at most 4"
        );
        // Rolled back: the first of the two new items was not kept either.
        assert_eq!(machine.row_counts().unwrap(), (2, 1));
        // 6 items so far (+ the refused 2, not counted); 5 more is over 10.
        let refused = machine
            .register(T0, 1, &["AAAAAA"], &app("AAAAAA", &["day_1"; 5], &[]))
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "Too many rendezvous points and tokens on this connection: at most 10"
        );
        // A new connection starts from zero.
        machine.connection_closed(1);
        assert!(machine
            .register(T0, 1, &["AAAAAA"], &app("AAAAAA", &["day_1"; 5], &[]))
            .is_ok());
    }

    #[test]
    fn points_owned_elsewhere_come_back_as_merged_redirects_and_are_not_stored() {
        let ownership: PointOwnership = Arc::new(|point: &str| {
            if point.ends_with("_b") {
                PointOwner::Remote {
                    server_id: "ed25519:b".into(),
                    endpoint: "wss://b.example".into(),
                }
                .into()
            } else {
                PointOwner::Local.into()
            }
        });
        let mut machine = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings::default(),
            ownership,
        );
        let registered = register(
            &mut machine,
            T0,
            1,
            &app("AAAAAA", &["day_a", "day_b"], &["hr_b", "hr_a"]),
        );
        assert_eq!(
            text(&registered.reply),
            r#"{"type":"rendezvous_partial","local":{"liveMatches":[],"deadDrops":[]},"redirects":[{"serverId":"ed25519:b","endpoint":"wss://b.example","dailyPoints":["day_b"],"hourlyTokens":["hr_b"]}]}"#
        );
        assert_eq!(machine.row_counts().unwrap(), (1, 1));
    }

    #[test]
    fn dead_drops_travel_with_forwarded_daily_points_and_come_back_to_a_forwarded_reader() {
        // At relay "a" every item meets at "m".
        let ownership: PointOwnership = Arc::new(|_: &str| Placement {
            owner: PointOwner::Local,
            also_keep: false,
            forward_to: Some("m".into()),
        });
        let mut at_a = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings::default(),
            ownership,
        );
        let writer = request(json!({
            "type": "register_rendezvous", "peerId": "AAAAAA",
            "daily_points": ["day_1", "day_2"], "hourly_tokens": [],
            "dead_drops": {"day_1": "sealed-for-b"},
        }));
        let registered = register(&mut at_a, T0, 1, &writer);
        assert_eq!(
            registered.forwards,
            vec![(
                "m".to_string(),
                RendezvousLinkMessage::Forward {
                    peer_id: "AAAAAA".into(),
                    daily_points: vec!["day_1".into(), "day_2".into()],
                    hourly_tokens: vec![],
                    dead_drops: vec![("day_1".into(), "sealed-for-b".into())],
                }
            )]
        );
        // The meeting relay stores the drop; a reader forwarded from "c" gets it back.
        let mut at_m = machine();
        let RendezvousLinkMessage::Forward {
            daily_points,
            dead_drops,
            ..
        } = &registered.forwards[0].1
        else {
            unreachable!()
        };
        let stored = at_m
            .register_forwarded(T0, "a", 1, "AAAAAA", daily_points, &[], dead_drops)
            .unwrap();
        assert!(stored.dead_drops.is_empty());
        let read = at_m
            .register_forwarded(T0 + 1, "c", 2, "BBBBBB", &["day_1".into()], &[], &[])
            .unwrap();
        assert_eq!(
            read.dead_drops,
            vec![FoundDeadDrop {
                peer_id: "AAAAAA".into(),
                dead_drop: "sealed-for-b".into(),
                relay_id: "a".into(),
            }]
        );
        // A local reader at "m" sees it too, with the writer's relay.
        let local = register(&mut at_m, T0 + 2, 3, &app("CCCCCC", &["day_1"], &[]));
        assert!(text(&local.reply).contains(
            r#""deadDrops":[{"peerId":"AAAAAA","deadDrop":"sealed-for-b","relayId":"a"}"#
        ));
    }

    #[test]
    fn forwarded_points_come_out_per_meeting_relay_and_are_stored_there_with_the_origin() {
        // At relay "a": items ending in _m meet at "m"; "m" is also Zajel's
        // owner of day_m (redirect), while hr_m stays local by Zajel's rule too.
        let ownership: PointOwnership = Arc::new(|point: &str| match point {
            "day_m" => Placement {
                owner: PointOwner::Remote {
                    server_id: "m".into(),
                    endpoint: "ws://m".into(),
                },
                also_keep: false,
                forward_to: Some("m".into()),
            },
            "hr_m" => Placement {
                owner: PointOwner::Local,
                also_keep: false,
                forward_to: Some("m".into()),
            },
            _ => PointOwner::Local.into(),
        });
        let mut at_a = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings::default(),
            ownership,
        );
        let registered = register(
            &mut at_a,
            T0,
            1,
            &app("AAAAAA", &["day_m", "day_a"], &["hr_m", "hr_a"]),
        );
        assert_eq!(
            registered.forwards,
            vec![(
                "m".to_string(),
                RendezvousLinkMessage::Forward {
                    peer_id: "AAAAAA".into(),
                    daily_points: vec!["day_m".into()],
                    hourly_tokens: vec!["hr_m".into()],
                    dead_drops: vec![],
                }
            )]
        );
        // day_m redirected (not kept), hr_m kept (Zajel's top 3), the rest local.
        assert_eq!(at_a.row_counts().unwrap(), (1, 2));

        // At the meeting relay "m": B is a local client, A arrives forwarded from "a".
        let mut at_m = machine();
        register(&mut at_m, T0, 1, &app("BBBBBB", &[], &["hr_m"]));
        let forwarded = at_m
            .register_forwarded(T0 + 1, "a", 1, "AAAAAA", &[], &["hr_m".into()], &[])
            .unwrap();
        assert_eq!(
            forwarded.live_matches,
            vec![LiveMatch {
                peer_id: "BBBBBB".into(),
                relay_id: String::new(),
            }]
        );
        assert_eq!(forwarded.pushes.len(), 1);
        assert_eq!(forwarded.pushes[0].peer_id, "BBBBBB");
        assert_eq!(forwarded.pushes[0].relay_id, None);
        assert_eq!(
            text(&forwarded.pushes[0].reply),
            r#"{"type":"rendezvous_match","match":{"peerId":"AAAAAA","relayId":"a"}}"#
        );
        // A later local client sees A with relayId "a", and its push names A's origin.
        let later = register(&mut at_m, T0 + 2, 2, &app("CCCCCC", &[], &["hr_m"]));
        assert!(text(&later.reply).contains(r#"{"peerId":"AAAAAA","relayId":"a"}"#));
        let to_a = later.pushes.iter().find(|p| p.peer_id == "AAAAAA").unwrap();
        assert_eq!(to_a.relay_id.as_deref(), Some("a"));
        // A link brings at most so many items an hour; the window moves on.
        let mut small = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings {
                max_forwarded_items_per_link_hour: 2,
                ..RendezvousSettings::default()
            },
            local_only(),
        );
        let tokens = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(small
            .register_forwarded(T0, "a", 7, "AAAAAA", &[], &tokens(&["hr_1", "hr_2"]), &[])
            .is_ok());
        assert!(matches!(
            small.register_forwarded(
                T0 + HOUR - 1,
                "a",
                7,
                "BBBBBB",
                &[],
                &tokens(&["hr_3"]),
                &[]
            ),
            Err(RendezvousRefusal::TooManyForwarded(2))
        ));
        assert!(
            small
                .register_forwarded(
                    T0 + HOUR - 1,
                    "a",
                    8,
                    "BBBBBB",
                    &[],
                    &tokens(&["hr_3"]),
                    &[]
                )
                .is_ok(),
            "another link has its own budget"
        );
        assert!(small
            .register_forwarded(T0 + HOUR, "a", 7, "BBBBBB", &[], &tokens(&["hr_3"]), &[])
            .is_ok());
    }

    #[test]
    fn a_refresh_registers_again_without_spending_any_connections_budget() {
        let mut machine = Rendezvous::new(
            RendezvousStore::open(None).unwrap(),
            RendezvousSettings {
                max_items_per_connection: 2,
                ..RendezvousSettings::default()
            },
            local_only(),
        );
        let a = app("AAAAAA", &[], &["hr_x", "hr_y"]);
        register(&mut machine, T0, 1, &a);
        register(&mut machine, T0, 2, &app("BBBBBB", &[], &["hr_x"]));
        for round in 0..3 {
            let refreshed = machine.refresh(T0 + round, &a).unwrap();
            // The match is found again, and B hears of it again.
            assert!(text(&refreshed.reply).contains(r#""peerId":"BBBBBB""#));
            assert_eq!(refreshed.pushes.len(), 1);
        }
        // Three refreshes of 2 items each passed a budget of 2; the client's
        // own connection is still held to its budget.
        assert!(matches!(
            machine.register(T0, 1, &["AAAAAA"], &a),
            Err(RendezvousRefusal::TooManyForConnection(2))
        ));
    }

    #[test]
    fn a_flood_of_peers_at_one_token_yields_only_the_latest_32() {
        let mut machine = machine();
        for n in 0..40u64 {
            register(
                &mut machine,
                T0 + n,
                n,
                &app(&format!("FLOOD{n}"), &[], &["hr_1"]),
            );
        }
        let late = register(&mut machine, T0 + 100, 99, &app("LATE22", &[], &["hr_1"]));
        let RelayReply::RendezvousResult { live_matches, .. } = &late.reply else {
            panic!()
        };
        let peers: Vec<_> = live_matches.iter().map(|m| m.peer_id.clone()).collect();
        let expected: Vec<_> = (8..40).map(|n| format!("FLOOD{n}")).collect();
        assert_eq!(peers, expected);
        assert_eq!(late.pushes.len(), 32);
    }

    #[test]
    fn entries_survive_reopening_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous.sqlite3");
        let open = || {
            Rendezvous::new(
                RendezvousStore::open(Some(&path)).unwrap(),
                RendezvousSettings::default(),
                local_only(),
            )
        };
        let mut first = open();
        register(&mut first, T0, 1, &app("AAAAAA", &[], &["hr_1"]));
        drop(first);
        let mut second = open();
        let later = register(&mut second, T0 + 1, 2, &app("BBBBBB", &[], &["hr_1"]));
        assert_eq!(later.pushes[0].peer_id, "AAAAAA");
    }
}
