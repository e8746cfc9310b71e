//! relay-lite's rendezvous messages between relays, on an authenticated
//! federation link (`crate::federation`; not Zajel's: Zajel's server has no
//! forwarding, §8.5). Additive: plain JSON text frames of three new `type`s,
//! unsigned (the link's handshake authenticated the other end), sent only
//! on a link whose handshake verified.
//!
//! | type | direction | shape |
//! |---|---|---|
//! | `rendezvous_hello` | both, once after the handshake | `{"type":"rendezvous_hello","version":1}`: "I take forwards"; a server that never sends it (Zajel's) gets none |
//! | `rendezvous_forward` | origin → meeting relay | `{"type":"rendezvous_forward","peerId","dailyPoints":[…],"hourlyTokens":[…]}`: the points and tokens of the origin's client `peerId` whose meeting relay (ring primary among the relays that sent `rendezvous_hello`) is the receiver; stored there with `relayId` = the origin's serverId |
//! | `rendezvous_forward_match` | meeting relay → origin | `{"type":"rendezvous_forward_match","peerId":<the origin's client>,"match":{"peerId","relayId"}}`: a live match for that client; the origin pushes `{"type":"rendezvous_match","match":…}` to it. `relayId` is the serverId of the relay where the matched peer is connected |
//! | `rendezvous_forward_dead_drops` | meeting relay → origin | `{"type":"rendezvous_forward_dead_drops","peerId":<the origin's client>,"deadDrops":[{"peerId","deadDrop","relayId"}]}`: the other peers' dead drops the meeting relay found at that client's forwarded daily points; the origin sends them to it as `{"type":"rendezvous_result","liveMatches":[],"deadDrops":[…]}` |
//!
//! `rendezvous_forward` may also carry `"deadDrops":{<daily point>:<drop>}` (optional, additive):
//! the dead drops the client left at the forwarded daily points, stored with them at the meeting
//! relay. Each key must be one of the message's `dailyPoints`, each drop at most
//! [`MAX_DEAD_DROP_BYTES`] bytes.
//!
//! Limits, as for a client's `register_rendezvous`: at most
//! [`MAX_ITEMS_PER_LIST`] items per list, each non-empty and at most
//! [`MAX_POINT_CHARS`] characters; `peerId` and `relayId` non-empty and at
//! most [`MAX_PEER_ID_CHARS`] / [`MAX_RELAY_ID_CHARS`] characters.

use serde_json::{json, Value};

use crate::rendezvous::{
    FoundDeadDrop, MatchedPeer, MAX_DEAD_DROP_BYTES, MAX_ITEMS_PER_LIST, MAX_PEER_ID_CHARS,
    MAX_POINT_CHARS, MAX_RELAY_ID_CHARS,
};

/// The `type`s of [`RendezvousLinkMessage`].
pub const RENDEZVOUS_LINK_TYPES: [&str; 4] = [
    "rendezvous_hello",
    "rendezvous_forward",
    "rendezvous_forward_match",
    "rendezvous_forward_dead_drops",
];

/// Version sent in `rendezvous_hello`.
pub const RENDEZVOUS_LINK_VERSION: u64 = 1;

/// One relay-to-relay rendezvous message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendezvousLinkMessage {
    Hello,
    Forward {
        peer_id: String,
        daily_points: Vec<String>,
        hourly_tokens: Vec<String>,
        /// (daily point, dead drop), each point one of `daily_points`.
        dead_drops: Vec<(String, String)>,
    },
    Match {
        /// The origin relay's client the match is for.
        to: String,
        matched: MatchedPeer,
    },
    DeadDrops {
        /// The origin relay's client the dead drops are for.
        to: String,
        dead_drops: Vec<FoundDeadDrop>,
    },
}

/// Why a link message was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RendezvousLinkError {
    #[error("not a JSON object")]
    NotJson,
    #[error("not a rendezvous link message")]
    Type,
    #[error("missing or invalid field {0}")]
    Field(&'static str),
    #[error("too many items in {0}: at most {MAX_ITEMS_PER_LIST}")]
    TooMany(&'static str),
}

impl RendezvousLinkError {
    /// A machine-readable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RendezvousLinkError::NotJson => "not_json",
            RendezvousLinkError::Type => "type",
            RendezvousLinkError::Field(_) => "field",
            RendezvousLinkError::TooMany(_) => "too_many",
        }
    }
}

fn text_field(
    value: &Value,
    name: &'static str,
    max_chars: usize,
) -> Result<String, RendezvousLinkError> {
    match value.get(name).and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.chars().count() <= max_chars => Ok(s.to_string()),
        _ => Err(RendezvousLinkError::Field(name)),
    }
}

fn list_field(value: &Value, name: &'static str) -> Result<Vec<String>, RendezvousLinkError> {
    let Some(list) = value.get(name) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or(RendezvousLinkError::Field(name))?;
    if list.len() > MAX_ITEMS_PER_LIST {
        return Err(RendezvousLinkError::TooMany(name));
    }
    list.iter()
        .map(|item| match item.as_str() {
            Some(s) if !s.is_empty() && s.chars().count() <= MAX_POINT_CHARS => Ok(s.to_string()),
            _ => Err(RendezvousLinkError::Field(name)),
        })
        .collect()
}

impl RendezvousLinkMessage {
    /// Whether `text`'s `type` is one of [`RENDEZVOUS_LINK_TYPES`].
    pub fn claims(value: &Value) -> bool {
        value
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| RENDEZVOUS_LINK_TYPES.contains(&t))
    }

    /// Parses and checks a frame.
    pub fn from_json(value: &Value) -> Result<Self, RendezvousLinkError> {
        if !value.is_object() {
            return Err(RendezvousLinkError::NotJson);
        }
        match value.get("type").and_then(Value::as_str) {
            Some("rendezvous_hello") => Ok(RendezvousLinkMessage::Hello),
            Some("rendezvous_forward") => {
                let daily_points = list_field(value, "dailyPoints")?;
                let dead_drops = match value.get("deadDrops") {
                    None => Vec::new(),
                    Some(drops) => {
                        let drops = drops
                            .as_object()
                            .ok_or(RendezvousLinkError::Field("deadDrops"))?;
                        if drops.len() > MAX_ITEMS_PER_LIST {
                            return Err(RendezvousLinkError::TooMany("deadDrops"));
                        }
                        drops
                            .iter()
                            .map(|(point, drop)| match drop.as_str() {
                                Some(drop)
                                    if !drop.is_empty()
                                        && drop.len() <= MAX_DEAD_DROP_BYTES
                                        && daily_points.contains(point) =>
                                {
                                    Ok((point.clone(), drop.to_string()))
                                }
                                _ => Err(RendezvousLinkError::Field("deadDrops")),
                            })
                            .collect::<Result<Vec<_>, _>>()?
                    }
                };
                let message = RendezvousLinkMessage::Forward {
                    peer_id: text_field(value, "peerId", MAX_PEER_ID_CHARS)?,
                    daily_points,
                    hourly_tokens: list_field(value, "hourlyTokens")?,
                    dead_drops,
                };
                Ok(message)
            }
            Some("rendezvous_forward_dead_drops") => {
                let list = value
                    .get("deadDrops")
                    .and_then(Value::as_array)
                    .ok_or(RendezvousLinkError::Field("deadDrops"))?;
                if list.len() > MAX_ITEMS_PER_LIST {
                    return Err(RendezvousLinkError::TooMany("deadDrops"));
                }
                let dead_drops = list
                    .iter()
                    .map(|found| {
                        let dead_drop = match found.get("deadDrop").and_then(Value::as_str) {
                            Some(d) if !d.is_empty() && d.len() <= MAX_DEAD_DROP_BYTES => {
                                d.to_string()
                            }
                            _ => return Err(RendezvousLinkError::Field("deadDrop")),
                        };
                        Ok(FoundDeadDrop {
                            peer_id: text_field(found, "peerId", MAX_PEER_ID_CHARS)?,
                            dead_drop,
                            relay_id: text_field(found, "relayId", MAX_RELAY_ID_CHARS)?,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RendezvousLinkMessage::DeadDrops {
                    to: text_field(value, "peerId", MAX_PEER_ID_CHARS)?,
                    dead_drops,
                })
            }
            Some("rendezvous_forward_match") => {
                let matched = value
                    .get("match")
                    .ok_or(RendezvousLinkError::Field("match"))?;
                Ok(RendezvousLinkMessage::Match {
                    to: text_field(value, "peerId", MAX_PEER_ID_CHARS)?,
                    matched: MatchedPeer {
                        peer_id: text_field(matched, "peerId", MAX_PEER_ID_CHARS)?,
                        relay_id: Some(text_field(matched, "relayId", MAX_RELAY_ID_CHARS)?),
                    },
                })
            }
            _ => Err(RendezvousLinkError::Type),
        }
    }

    /// Parses a text frame.
    pub fn parse(text: &str) -> Result<Self, RendezvousLinkError> {
        let value: Value = serde_json::from_str(text).map_err(|_| RendezvousLinkError::NotJson)?;
        Self::from_json(&value)
    }

    /// The frame text.
    pub fn to_text(&self) -> String {
        match self {
            RendezvousLinkMessage::Hello => {
                json!({"type": "rendezvous_hello", "version": RENDEZVOUS_LINK_VERSION})
            }
            RendezvousLinkMessage::Forward {
                peer_id,
                daily_points,
                hourly_tokens,
                dead_drops,
            } => {
                let mut frame = json!({
                    "type": "rendezvous_forward", "peerId": peer_id,
                    "dailyPoints": daily_points, "hourlyTokens": hourly_tokens,
                });
                if !dead_drops.is_empty() {
                    let drops: serde_json::Map<String, Value> = dead_drops
                        .iter()
                        .map(|(point, drop)| (point.clone(), Value::from(drop.as_str())))
                        .collect();
                    frame["deadDrops"] = Value::Object(drops);
                }
                frame
            }
            RendezvousLinkMessage::Match { to, matched } => json!({
                "type": "rendezvous_forward_match", "peerId": to, "match": matched,
            }),
            RendezvousLinkMessage::DeadDrops { to, dead_drops } => json!({
                "type": "rendezvous_forward_dead_drops", "peerId": to, "deadDrops": dead_drops,
            }),
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_survives_its_text_form() {
        let messages = [
            RendezvousLinkMessage::Hello,
            RendezvousLinkMessage::Forward {
                peer_id: "ABC234".into(),
                daily_points: vec!["day_a".into()],
                hourly_tokens: vec!["hr_b".into(), "day_a".into()],
                dead_drops: Vec::new(),
            },
            RendezvousLinkMessage::Forward {
                peer_id: "ABC234".into(),
                daily_points: vec!["day_a".into(), "day_b".into()],
                hourly_tokens: Vec::new(),
                dead_drops: vec![("day_a".into(), "sealed".into())],
            },
            RendezvousLinkMessage::DeadDrops {
                to: "ABC234".into(),
                dead_drops: vec![FoundDeadDrop {
                    peer_id: "XYZ789".into(),
                    dead_drop: "sealed".into(),
                    relay_id: "ed25519:b".into(),
                }],
            },
            RendezvousLinkMessage::Match {
                to: "ABC234".into(),
                matched: MatchedPeer {
                    peer_id: "XYZ789".into(),
                    relay_id: Some("ed25519:b".into()),
                },
            },
        ];
        for message in messages {
            let text = message.to_text();
            assert_eq!(RendezvousLinkMessage::parse(&text), Ok(message), "{text}");
        }
        assert_eq!(
            RendezvousLinkMessage::Match {
                to: "A".into(),
                matched: MatchedPeer {
                    peer_id: "B".into(),
                    relay_id: Some("ed25519:r".into())
                }
            }
            .to_text(),
            r#"{"match":{"peerId":"B","relayId":"ed25519:r"},"peerId":"A","type":"rendezvous_forward_match"}"#
        );
    }

    #[test]
    fn hostile_forwards_are_refused_with_their_reason() {
        let many: Vec<String> = (0..=MAX_ITEMS_PER_LIST)
            .map(|i| format!("hr_{i}"))
            .collect();
        let cases = [
            (json!([1]), RendezvousLinkError::NotJson),
            (json!({"type": "gossip"}), RendezvousLinkError::Type),
            (
                json!({"type": "rendezvous_forward", "dailyPoints": []}),
                RendezvousLinkError::Field("peerId"),
            ),
            (
                json!({"type": "rendezvous_forward", "peerId": "A", "hourlyTokens": many}),
                RendezvousLinkError::TooMany("hourlyTokens"),
            ),
            (
                json!({"type": "rendezvous_forward", "peerId": "A", "hourlyTokens": [""]}),
                RendezvousLinkError::Field("hourlyTokens"),
            ),
            (
                json!({"type": "rendezvous_forward", "peerId": "A", "dailyPoints": ["x".repeat(MAX_POINT_CHARS + 1)]}),
                RendezvousLinkError::Field("dailyPoints"),
            ),
            (
                json!({"type": "rendezvous_forward", "peerId": "x".repeat(MAX_PEER_ID_CHARS + 1)}),
                RendezvousLinkError::Field("peerId"),
            ),
            (
                json!({"type": "rendezvous_forward_match", "peerId": "A", "match": {"peerId": "B"}}),
                RendezvousLinkError::Field("relayId"),
            ),
            // A dead drop at a point the forward does not carry, or too long.
            (
                json!({"type": "rendezvous_forward", "peerId": "A", "dailyPoints": ["day_a"],
                    "deadDrops": {"day_other": "x"}}),
                RendezvousLinkError::Field("deadDrops"),
            ),
            (
                json!({"type": "rendezvous_forward", "peerId": "A", "dailyPoints": ["day_a"],
                    "deadDrops": {"day_a": "x".repeat(MAX_DEAD_DROP_BYTES + 1)}}),
                RendezvousLinkError::Field("deadDrops"),
            ),
            (
                json!({"type": "rendezvous_forward_dead_drops", "peerId": "A",
                    "deadDrops": [{"peerId": "B", "deadDrop": "", "relayId": "r"}]}),
                RendezvousLinkError::Field("deadDrop"),
            ),
            (
                json!({"type": "rendezvous_forward_dead_drops", "peerId": "A"}),
                RendezvousLinkError::Field("deadDrops"),
            ),
        ];
        for (value, error) in cases {
            assert_eq!(
                RendezvousLinkMessage::from_json(&value),
                Err(error.clone()),
                "{value}"
            );
            assert!(!error.kind().is_empty());
        }
    }
}
