//! The `ice_servers` extension: STUN/TURN servers with fresh time-limited
//! TURN credentials ([`crate::credentials`]) for registered clients that
//! asked by sending `"iceServers": true` in their `register` frame
//! (`ClientMessage::Register`'s `ice_servers`) — or, with
//! `RelayConfig::ice_servers_unasked` (the default; Zajel's clients never
//! ask and all ignore a message type they do not know), for every
//! registered client — once their connection is
//! engaged: paired (`pair_matched`, sent to both sides) or in a call (a
//! `call_offer` sent or received). Never right after `register`: anyone
//! can register, and credentials let their holder allocate on the TURN
//! server. While the connection lives, a fresh frame follows every three
//! quarters of the `ttl` (before the last credential expires); after it
//! closes, none. [`IceGrant`] is that rule, sans-IO.
//!
//! Sent frame: `{"type":"ice_servers","iceServers":[{"urls":[…],"username",
//! "credential"}],"ttl":<seconds>}` (`ttl` is ours, additive). To the side
//! that answers a `pair_request` it comes just before `pair_matched`; to the
//! requester, just after: a `ping` sent after `pair_matched` is answered
//! (`pong`) after the `ice_servers` that is coming, if any.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use zajel_wire::signaling::{IceServer, ServerMessage};

use crate::config::IceConfig;
use crate::credentials;

/// The `ice_servers` frame with a credential issued now.
pub fn frame(config: &IceConfig) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    frame_at(config, now, &random_tag())
}

/// When one connection gets `ice_servers`.
#[derive(Debug, Default)]
pub(crate) struct IceGrant {
    /// Registered asking for `ice_servers`, and the relay has some.
    asked: bool,
    /// When the next frame is due, once the first was sent.
    renew_at: Option<Instant>,
}

impl IceGrant {
    /// `register` succeeded; `asks` is its `"iceServers": true` (and the
    /// relay has servers to give).
    pub fn registered(&mut self, asks: bool) {
        self.asked = asks;
    }

    /// Whether a first frame is waiting for the connection to be engaged.
    pub fn waiting(&self) -> bool {
        self.asked && self.renew_at.is_none()
    }

    /// The connection is paired or in a call at `now`: whether to send a
    /// frame now (the first one only; renewals follow [`Self::renew_at`]).
    pub fn engaged(&mut self, now: Instant, ttl: Duration) -> bool {
        if !self.waiting() {
            return false;
        }
        self.renew_at = Some(now + renewal_interval(ttl));
        true
    }

    /// When the next fresh frame is due, if any.
    pub fn renew_at(&self) -> Option<Instant> {
        self.renew_at
    }

    /// The renewal timer fired at `now`: send a fresh frame, schedule the next.
    pub fn renewed(&mut self, now: Instant, ttl: Duration) {
        if self.renew_at.is_some() {
            self.renew_at = Some(now + renewal_interval(ttl));
        }
    }
}

/// A fresh credential is sent after three quarters of the last one's lifetime.
pub fn renewal_interval(ttl: Duration) -> Duration {
    (ttl * 3 / 4).max(Duration::from_secs(1))
}

fn random_tag() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The frame for `now_secs` with credential name `tag`.
pub fn frame_at(config: &IceConfig, now_secs: u64, tag: &str) -> String {
    let ttl = config.ttl.as_secs();
    let mut servers = Vec::new();
    if !config.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: config.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if !config.turn_urls.is_empty() {
        let issued = credentials::issue(&config.secret, tag, now_secs, ttl);
        servers.push(IceServer {
            urls: config.turn_urls.clone(),
            username: Some(issued.username),
            credential: Some(issued.credential),
        });
    }
    ServerMessage::IceServers {
        ice_servers: servers,
        ttl: Some(ttl),
    }
    .to_text()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn credentials_wait_for_pairing_and_renew_only_while_engaged() {
        let ttl = Duration::from_secs(600);
        let start = Instant::now();
        let mut never_asked = IceGrant::default();
        never_asked.registered(false);
        assert!(!never_asked.engaged(start, ttl), "did not ask");
        assert_eq!(never_asked.renew_at(), None);

        let mut grant = IceGrant::default();
        grant.registered(true);
        // Registered, not paired: nothing yet, and no timer.
        assert!(grant.waiting());
        assert_eq!(grant.renew_at(), None);
        // Paired: the first frame, then one every 450 s (before the 600 s expiry).
        assert!(grant.engaged(start, ttl));
        assert_eq!(grant.renew_at(), Some(start + Duration::from_secs(450)));
        assert!(
            !grant.engaged(start, ttl),
            "a second pairing sends no extra frame"
        );
        let later = start + Duration::from_secs(450);
        grant.renewed(later, ttl);
        assert_eq!(grant.renew_at(), Some(later + Duration::from_secs(450)));
        assert_eq!(
            renewal_interval(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn frame_carries_a_checkable_credential_and_ttl() {
        let config = IceConfig {
            turn_urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            stun_urls: vec!["stun:127.0.0.1:3478".into()],
            secret: b"s3cret".to_vec(),
            ttl: Duration::from_secs(600),
        };
        let text = frame_at(&config, 1_000, "tag");
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["type"], "ice_servers");
        assert_eq!(value["ttl"], 600);
        assert_eq!(value["iceServers"][0]["urls"][0], "stun:127.0.0.1:3478");
        let turn = &value["iceServers"][1];
        assert_eq!(turn["username"], "1600:tag");
        assert_eq!(
            turn["credential"].as_str().unwrap(),
            credentials::check_username(b"s3cret", "1600:tag", 1_000).unwrap()
        );
        assert!(text.ends_with(r#"],"ttl":600}"#), "{text}");
        assert!(matches!(
            ServerMessage::parse(&text).unwrap(),
            ServerMessage::IceServers { ttl: Some(600), .. }
        ));
    }
}
