//! The `ice_servers` extension: STUN/TURN servers with fresh time-limited
//! TURN credentials ([`crate::credentials`]) for registered clients that
//! asked by sending `"iceServers": true` in their `register` frame
//! (`ClientMessage::Register`'s `ice_servers`).
//!
//! Sent frame: `{"type":"ice_servers","iceServers":[{"urls":[…],"username",
//! "credential"}],"ttl":<seconds>}` (`ttl` is ours, additive).

use std::time::{SystemTime, UNIX_EPOCH};

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
    use std::time::Duration;

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
