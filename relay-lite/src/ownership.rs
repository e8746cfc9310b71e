//! Where a rendezvous point or token goes in a fleet: the
//! [`crate::rendezvous::PointOwnership`] that relay-lite plugs into its
//! rendezvous machine when it federates, from two [`Ring`]s over the
//! registries' signed lists ([`FleetView`]) and the live links ([`Links`]).
//!
//! - **Zajel's ring** (what Zajel's server would answer, §8.5): this relay
//!   and every listed server with a live federation link, Zajel's or
//!   relay-lite. A listed server without a link does not count as alive: it
//!   is not reachable from here, and a Zajel server fails such members
//!   within seconds too. A point is kept when this relay is among the first
//!   3 responsible servers (or alone); else it is redirected to the first.
//! - **The meeting ring** (beyond Zajel): this relay and the linked servers
//!   that sent `rendezvous_hello` (relay-lite). The first responsible one is
//!   the point's *meeting relay*: every relay forwards its clients' points
//!   there (`rendezvous_forward`), and keeps them itself when it is the
//!   meeting relay, so two contacts on any two relays meet there. Zajel
//!   servers are never meeting relays (they would drop the forward).
//!
//! A relay that leaves the lists or whose link drops leaves both rings at
//! once: its points get a new meeting relay on the next registration
//! (`crate::relay_requests` also re-forwards its clients' last points when
//! the rings change).

use std::sync::{Arc, Mutex};

use crate::federation::{FleetView, Links};
use crate::rendezvous::{Placement, PointOwner, PointOwnership};
use crate::ring::{Ring, RingServer};

/// The rings of one moment.
#[derive(Debug, Clone, Default)]
pub struct Rings {
    pub zajel: Ring,
    pub meeting: Ring,
}

/// Where `key` goes, for the relay `own_id`.
pub fn place(own_id: &str, rings: &Rings, key: &str) -> Placement {
    let owner = if rings.zajel.keeps(own_id, key) {
        PointOwner::Local
    } else {
        match rings.zajel.primary(key) {
            Some(primary) => PointOwner::Remote {
                server_id: primary.server_id.clone(),
                endpoint: primary.endpoint.clone(),
            },
            None => PointOwner::Local,
        }
    };
    let meeting = rings.meeting.primary(key).map(|s| s.server_id.as_str());
    let meets_here = meeting.is_none_or(|id| id == own_id);
    Placement {
        owner,
        also_keep: meets_here,
        forward_to: meeting.filter(|id| *id != own_id).map(str::to_owned),
    }
}

/// The live rings of a relay, rebuilt when the fleet or the links change.
pub struct FleetRing {
    own: RingServer,
    fleet: Arc<FleetView>,
    links: Arc<Links>,
    cache: Mutex<Option<CachedRings>>,
}

/// Rings and the (alive ids with endpoints, meeting ids) they were built from.
type CachedRings = (Vec<(String, String)>, Vec<String>, Arc<Rings>);

impl FleetRing {
    pub fn new(own_id: &str, own_endpoint: &str, fleet: Arc<FleetView>, links: Arc<Links>) -> Self {
        Self {
            own: RingServer {
                server_id: own_id.to_owned(),
                endpoint: own_endpoint.to_owned(),
            },
            fleet,
            links,
            cache: Mutex::new(None),
        }
    }

    /// The rings now.
    pub fn rings(&self) -> Arc<Rings> {
        let listed = self.fleet.servers();
        let mut alive: Vec<(String, String)> = self
            .links
            .linked()
            .into_iter()
            .filter_map(|id| listed.get(&id).map(|e| (id, e.endpoint.clone())))
            .collect();
        alive.sort();
        let meeting: Vec<String> = self
            .links
            .forwarding()
            .into_iter()
            .filter(|id| listed.contains_key(id))
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, m, rings)) = cache.as_ref() {
            if *a == alive && *m == meeting {
                return rings.clone();
            }
        }
        let server = |(id, endpoint): &(String, String)| RingServer {
            server_id: id.clone(),
            endpoint: endpoint.clone(),
        };
        let zajel = Ring::new(std::iter::once(self.own.clone()).chain(alive.iter().map(server)));
        let meeting_ring = Ring::new(
            std::iter::once(self.own.clone()).chain(
                alive
                    .iter()
                    .filter(|(id, _)| meeting.contains(id))
                    .map(server),
            ),
        );
        let rings = Arc::new(Rings {
            zajel,
            meeting: meeting_ring,
        });
        *cache = Some((alive, meeting, rings.clone()));
        rings
    }

    /// This relay's server id.
    pub fn own_id(&self) -> &str {
        &self.own.server_id
    }

    /// The ownership function for the rendezvous machine.
    pub fn ownership(self: &Arc<Self>) -> PointOwnership {
        let me = self.clone();
        Arc::new(move |key: &str| place(&me.own.server_id, &me.rings(), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::REPLICATION_FACTOR;

    fn server(id: &str) -> RingServer {
        RingServer {
            server_id: id.to_string(),
            endpoint: format!("ws://{id}"),
        }
    }

    fn rings(zajel: &[&str], meeting: &[&str]) -> Rings {
        Rings {
            zajel: Ring::new(zajel.iter().map(|id| server(id))),
            meeting: Ring::new(meeting.iter().map(|id| server(id))),
        }
    }

    #[test]
    fn alone_everything_is_kept_and_nothing_leaves() {
        let alone = rings(&["me"], &["me"]);
        let placement = place("me", &alone, "hr_x");
        assert_eq!(placement.owner, PointOwner::Local);
        assert!(placement.also_keep);
        assert_eq!(placement.forward_to, None);
    }

    #[test]
    fn two_relays_forward_every_point_to_one_meeting_relay_and_it_keeps_it() {
        let both = rings(&["a", "b"], &["a", "b"]);
        for k in 0..100 {
            let key = format!("hr_{k}");
            let at_a = place("a", &both, &key);
            let at_b = place("b", &both, &key);
            // Zajel's rule: with ≤ 3 servers everything is local, no redirects.
            assert_eq!(at_a.owner, PointOwner::Local);
            assert_eq!(at_b.owner, PointOwner::Local);
            // Exactly one of them is the meeting relay; the other forwards there.
            match (at_a.forward_to.as_deref(), at_b.forward_to.as_deref()) {
                (None, Some("a")) => assert!(at_a.also_keep),
                (Some("b"), None) => assert!(at_b.also_keep),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn with_five_relays_redirects_follow_zajel_and_forwards_go_to_the_same_meeting_relay() {
        let ids = ["a", "b", "c", "d", "e"];
        let all = rings(&ids, &ids);
        let mut redirected = 0;
        for k in 0..100 {
            let key = format!("day_{k}");
            let top: Vec<String> = all
                .zajel
                .responsible(&key, REPLICATION_FACTOR)
                .iter()
                .map(|s| s.server_id.clone())
                .collect();
            let meeting = all.meeting.primary(&key).unwrap().server_id.clone();
            for id in ids {
                let placement = place(id, &all, &key);
                if top.iter().any(|t| t == id) {
                    assert_eq!(placement.owner, PointOwner::Local, "{id} {key}");
                } else {
                    redirected += 1;
                    assert_eq!(
                        placement.owner,
                        PointOwner::Remote {
                            server_id: top[0].clone(),
                            endpoint: format!("ws://{}", top[0]),
                        }
                    );
                }
                if id == meeting {
                    assert!(placement.also_keep && placement.forward_to.is_none());
                } else {
                    assert_eq!(placement.forward_to.as_deref(), Some(meeting.as_str()));
                }
            }
        }
        assert_eq!(
            redirected, 200,
            "two of five are outside the top 3 for each key"
        );
    }

    #[test]
    fn zajel_servers_are_redirect_targets_but_never_meeting_relays() {
        // "z" is a Zajel server: linked (alive) but sent no rendezvous_hello.
        let mixed = rings(&["a", "b", "c", "z"], &["a", "b", "c"]);
        for k in 0..100 {
            let key = format!("hr_{k}");
            for id in ["a", "b", "c"] {
                let placement = place(id, &mixed, &key);
                assert_ne!(placement.forward_to.as_deref(), Some("z"));
            }
        }
    }

    #[test]
    fn the_fleet_ring_counts_only_listed_servers_with_a_live_link() {
        let fleet = Arc::new(FleetView::default());
        let links = Arc::new(Links::default());
        let entry = |id: &str| zajel_wire::entry::ServerEntry {
            server_id: id.into(),
            endpoint: format!("ws://{id}"),
            public_key: String::new(),
            region: String::new(),
            registered_at: 0,
            last_seen: 0,
        };
        fleet.update("r", vec![entry("b"), entry("c")]);
        let ring = Arc::new(FleetRing::new("a", "ws://a", fleet.clone(), links.clone()));
        assert_eq!(ring.rings().zajel.len(), 1, "no links yet: alone");
        links.test_link("b", true);
        links.test_link("x", true); // linked but listed by no registry
        let rings = ring.rings();
        assert_eq!(rings.zajel.len(), 2);
        assert_eq!(rings.meeting.len(), 2);
        fleet.update("r", vec![entry("c")]);
        assert_eq!(ring.rings().zajel.len(), 1, "b left the list");
    }
}
