//! Rendezvous, device linking, peer relays and keep-alive: the client
//! messages of `shared/reference/zajel-wire.md` §5–§7 that are not part of
//! [`crate::signaling`]'s pairing and forwarding, and the server's replies.
//!
//! # Client messages ([`RelayRequest`])
//!
//! | type | fields read | notes |
//! |---|---|---|
//! | `register_rendezvous` | `peerId`; `dailyPoints` else `daily_points`; `hourlyTokens` else `hourly_tokens`; `dead_drops` else `deadDrops` (first *present* wins, so `"dead_drops":{}` hides a non-empty `deadDrops`); legacy `deadDrop`; `relayId` | lists default to `[]`, `deadDrop` to `""` |
//! | `link_request` | `linkCode`, `publicKey`, `deviceName`? | `deviceName` defaults to [`DEFAULT_DEVICE_NAME`]; needs a pairing `register` first |
//! | `link_response` | `linkCode`, `accepted`, `deviceId`? | needs a pairing `register` first |
//! | `register` **without a `pairingCode` key** | `peerId`, `maxConnections`? (default [`DEFAULT_MAX_CONNECTIONS`]), `publicKey`? | a peer relay; with a `pairingCode` key (any value) it is [`crate::signaling::ClientMessage::Register`] |
//! | `update_load` | `peerId`?, `connectedCount`? | both echoed in `load_updated` |
//! | `get_relays` | `peerId`?, `count`? (default [`DEFAULT_RELAY_COUNT`]) | |
//! | `heartbeat` | `peerId`? | |
//!
//! A relay asks [`is_relay_request`] about each parsed frame first and reads
//! the frames it claims with [`RelayRequest::from_json_for_connection`];
//! the rest go to [`crate::signaling::ClientMessage::from_json_for_connection`].
//!
//! # Limits Zajel lacks
//!
//! Zajel takes any number of points of any size (up to its 64 KiB frame)
//! and answers a missing `peerId` with `"Internal server error"`. Parsing
//! here refuses, each with its own [`RelayRequestError`] text: more than
//! [`MAX_ITEMS_PER_LIST`] daily points or hourly tokens in one message (the
//! app sends 3 daily points and 6 hourly tokens per trusted contact, so 512
//! covers 85 contacts), a point or token over [`MAX_POINT_CHARS`]
//! characters (the app's are 26), a dead drop over [`MAX_DEAD_DROP_BYTES`]
//! bytes, a `relayId` over [`MAX_RELAY_ID_CHARS`] characters, a `peerId` over
//! [`MAX_PEER_ID_CHARS`], non-string items, and points or tokens without a
//! `peerId` ([`RelayRequestError::MissingField`]). Limits that need state
//! (per connection, per `peerId`, who may write a `peerId`'s entries) are
//! the relay's.
//!
//! # Replies ([`RelayReply`])
//!
//! `rendezvous_result`, `rendezvous_partial` (`local` + `redirects`),
//! `rendezvous_match` (`{"match":{"peerId","relayId"?}}`), `link_request`
//! (to the mobile), `link_matched`, `link_rejected`, `link_timeout`,
//! `link_error`, `registered` (a peer relay's: `peerId`, `serverId`,
//! `relays`), `load_updated`, `relays`, `heartbeat_ack`, in Zajel's field
//! order. A pairing client reads `registered` with
//! [`crate::signaling::ServerMessage`]; only peer relays get this one.
//! [`crate::signaling::ServerMessage::parse`] reads the other types here as
//! [`crate::signaling::ServerMessage::Unknown`]; read them with
//! [`RelayReply::parse`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::pairing::PairingCode;

/// The types [`RelayRequest`] reads (plus `register` without `pairingCode`).
pub const RELAY_REQUEST_TYPES: [&str; 6] = [
    "register_rendezvous",
    "link_request",
    "link_response",
    "update_load",
    "get_relays",
    "heartbeat",
];

/// The types [`RelayReply`] writes.
pub const RELAY_REPLY_TYPES: [&str; 12] = [
    "rendezvous_result",
    "rendezvous_partial",
    "rendezvous_match",
    "link_request",
    "link_matched",
    "link_rejected",
    "link_timeout",
    "link_error",
    "registered",
    "load_updated",
    "relays",
    "heartbeat_ack",
];

/// Most daily points, and most hourly tokens, in one `register_rendezvous` (ours).
pub const MAX_ITEMS_PER_LIST: usize = 512;
/// Longest point or token, in characters (ours; the app's are 26).
pub const MAX_POINT_CHARS: usize = 64;
/// Largest dead drop, in bytes (ours).
pub const MAX_DEAD_DROP_BYTES: usize = 4_096;
/// Longest `relayId`, in characters (ours).
pub const MAX_RELAY_ID_CHARS: usize = 128;
/// Longest `peerId`, in characters (ours).
pub const MAX_PEER_ID_CHARS: usize = 128;
/// Longest `deviceName` / `deviceId`, in characters (ours).
pub const MAX_DEVICE_NAME_CHARS: usize = 256;

/// Daily point lifetime from the last registration (Zajel: 48 h).
pub const DAILY_POINT_TTL_MS: u64 = 172_800_000;
/// Hourly token lifetime (Zajel: 3 h).
pub const HOURLY_TOKEN_TTL_MS: u64 = 10_800_000;
/// How often expired rows are swept (Zajel: 5 min).
pub const CLEANUP_INTERVAL_MS: u64 = 300_000;
/// A link request's lifetime (`expiresIn`; Zajel: 120 s, constant).
pub const LINK_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// `deviceName` when a `link_request` has none (Zajel's).
pub const DEFAULT_DEVICE_NAME: &str = "Unknown Browser";
/// `maxConnections` of a peer relay that sent none (Zajel's).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 20;
/// `count` of a `get_relays` that sent none (Zajel's).
pub const DEFAULT_RELAY_COUNT: usize = 10;
/// Most relays in a peer relay's `registered` (Zajel's).
pub const REGISTERED_RELAY_COUNT: usize = 10;
/// A relay is listed while `connectedCount / maxConnections` is below this (Zajel's).
pub const RELAY_CAPACITY_THRESHOLD: f64 = 0.5;
/// A peer-relay connection silent (no `register`, `update_load`,
/// `heartbeat`, `register_rendezvous`) for longer is closed (Zajel: 60 s).
pub const HEARTBEAT_TIMEOUT_MS: u64 = 60_000;
/// Close code and reason for that (Zajel's).
pub const HEARTBEAT_TIMEOUT_CLOSE: (u16, &str) = (1000, "Heartbeat timeout");

/// `link_error` when no connection holds the link code (Zajel's text).
pub const LINK_REQUEST_FAILED: &str = "Link request could not be processed";
/// `link_error` for a `link_response` with nothing pending (Zajel's text).
pub const NO_PENDING_LINK_REQUEST: &str = "No pending link request found";
/// `error` for a `link_response` about another connection's code (Zajel's text).
pub const LINK_FOR_ANOTHER_DEVICE: &str = "Cannot respond to link request for another device";

/// Why a frame of a [`RELAY_REQUEST_TYPES`] type was refused. The Display
/// text is the `message` of the `{"type":"error"}` frame a relay answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayRequestError {
    /// `link_*` before a pairing `register` (Zajel's text).
    #[error("Not registered. Send register message first.")]
    NotRegistered,
    /// A required field is absent, `null` or empty (Zajel's text).
    #[error("Missing required field: {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("Invalid message format: {field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `linkCode` is not a pairing code (Zajel's text).
    #[error("Invalid link code format")]
    InvalidLinkCode,
    /// Too many items in one list.
    #[error("Too many {field}: at most {max} per message")]
    TooManyItems { field: &'static str, max: usize },
    /// A point, token, id or name over its size limit.
    #[error("{field} too long: at most {max} {unit}")]
    TooLong {
        field: &'static str,
        max: usize,
        unit: &'static str,
    },
}

impl RelayRequestError {
    /// `{"type":"error","message":<this error's text>}`.
    pub fn to_error_frame(&self) -> String {
        json!({"type": "error", "message": self.to_string()}).to_string()
    }
}

/// A `register_rendezvous`, fields as read (see the module docs for spellings).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterRendezvous {
    /// The registrant; `None` only when it sent no points and no tokens.
    pub peer_id: Option<String>,
    pub daily_points: Vec<String>,
    pub hourly_tokens: Vec<String>,
    /// Per-point dead drops (`dead_drops` / `deadDrops`).
    pub dead_drops: BTreeMap<String, String>,
    /// Legacy `deadDrop`: for every daily point when `dead_drops` is empty.
    pub dead_drop: String,
    pub relay_id: Option<String>,
}

impl RegisterRendezvous {
    /// What Zajel's app sends (reference §5.4) for its contacts' points:
    /// `daily_points` = the daily points, `hourly_tokens` = the hourly
    /// tokens followed by the daily points (so daily points also yield live
    /// matches and pushes), no dead drops, no `relayId`. `peer_id` is the
    /// sender's current pairing code.
    pub fn as_the_app_sends(
        peer_id: &str,
        daily_points: &[String],
        hourly_tokens: &[String],
    ) -> Self {
        Self {
            peer_id: Some(peer_id.to_string()),
            daily_points: daily_points.to_vec(),
            hourly_tokens: hourly_tokens.iter().chain(daily_points).cloned().collect(),
            ..Self::default()
        }
    }

    /// The dead drop stored at `point`: its own entry in `dead_drops`, or
    /// (only when that map is empty) the legacy `deadDrop`.
    pub fn dead_drop_for(&self, point: &str) -> &str {
        if self.dead_drops.is_empty() {
            &self.dead_drop
        } else {
            self.dead_drops.get(point).map_or("", String::as_str)
        }
    }
}

/// A client frame of a [`RELAY_REQUEST_TYPES`] type, or a peer relay's `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayRequest {
    RegisterRendezvous(RegisterRendezvous),
    /// `{"type":"link_request","linkCode","publicKey","deviceName"?}` (web → server).
    LinkRequest {
        link_code: PairingCode,
        /// As sent (Zajel does not check it).
        public_key: String,
        device_name: String,
    },
    /// `{"type":"link_response","linkCode","accepted","deviceId"?}` (mobile → server).
    LinkResponse {
        link_code: PairingCode,
        accepted: bool,
        device_id: Option<String>,
    },
    /// `{"type":"register","peerId","maxConnections"?,"publicKey"?}` (no `pairingCode` key).
    RegisterPeer {
        peer_id: String,
        max_connections: u64,
        public_key: Option<String>,
    },
    /// `{"type":"update_load","peerId"?,"connectedCount"?}`.
    UpdateLoad {
        peer_id: Option<String>,
        connected_count: Option<u64>,
    },
    /// `{"type":"get_relays","peerId"?,"count"?}`.
    GetRelays {
        peer_id: Option<String>,
        count: usize,
    },
    /// `{"type":"heartbeat","peerId"?}`.
    Heartbeat {
        peer_id: Option<String>,
    },
}

/// Whether a relay reads this frame with [`RelayRequest`]: a type of
/// [`RELAY_REQUEST_TYPES`], or `register` without a `pairingCode` key.
pub fn is_relay_request(value: &Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    match object.get("type").and_then(Value::as_str) {
        Some("register") => !object.contains_key("pairingCode"),
        Some(type_name) => RELAY_REQUEST_TYPES.contains(&type_name),
        None => false,
    }
}

impl RelayRequest {
    /// Parses a frame text (no registration check).
    pub fn parse(text: &str) -> Option<Result<Self, RelayRequestError>> {
        let value: Value = serde_json::from_str(text).ok()?;
        is_relay_request(&value).then(|| Self::from_json_for_connection(value, None))
    }

    /// Reads a frame [`is_relay_request`] claimed, from a connection that
    /// has (`Some(true)`) or has not (`Some(false)`) made a pairing
    /// `register` (`None`: do not check). `link_*` from an unregistered
    /// connection is [`RelayRequestError::NotRegistered`] before its fields
    /// are read.
    pub fn from_json_for_connection(
        value: Value,
        registered: Option<bool>,
    ) -> Result<Self, RelayRequestError> {
        let object = match value {
            Value::Object(object) => object,
            _ => {
                return Err(RelayRequestError::WrongType {
                    field: "message",
                    expected: "an object",
                })
            }
        };
        let type_name = object.get("type").and_then(Value::as_str).unwrap_or("");
        if registered == Some(false) && type_name.starts_with("link_") {
            return Err(RelayRequestError::NotRegistered);
        }
        Ok(match type_name {
            "register_rendezvous" => Self::RegisterRendezvous(read_rendezvous(&object)?),
            "link_request" => {
                let link_code = link_code(&object)?;
                let public_key = required_string(&object, "publicKey", MAX_PEER_ID_CHARS)?;
                let device_name = optional_string(&object, "deviceName", MAX_DEVICE_NAME_CHARS)?
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(|| DEFAULT_DEVICE_NAME.to_string());
                Self::LinkRequest {
                    link_code,
                    public_key,
                    device_name,
                }
            }
            "link_response" => Self::LinkResponse {
                link_code: link_code(&object)?,
                accepted: match object.get("accepted") {
                    None | Some(Value::Null) => {
                        return Err(RelayRequestError::MissingField("accepted"))
                    }
                    Some(Value::Bool(accepted)) => *accepted,
                    Some(_) => {
                        return Err(RelayRequestError::WrongType {
                            field: "accepted",
                            expected: "a boolean",
                        })
                    }
                },
                device_id: optional_string(&object, "deviceId", MAX_DEVICE_NAME_CHARS)?,
            },
            "register" => Self::RegisterPeer {
                peer_id: required_string(&object, "peerId", MAX_PEER_ID_CHARS)?,
                max_connections: optional_count(&object, "maxConnections")?
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
                public_key: optional_string(&object, "publicKey", MAX_PEER_ID_CHARS)?,
            },
            "update_load" => Self::UpdateLoad {
                peer_id: optional_string(&object, "peerId", MAX_PEER_ID_CHARS)?,
                connected_count: optional_count(&object, "connectedCount")?,
            },
            "get_relays" => Self::GetRelays {
                peer_id: optional_string(&object, "peerId", MAX_PEER_ID_CHARS)?,
                count: optional_count(&object, "count")?
                    .map_or(DEFAULT_RELAY_COUNT, |count| count.min(1_000) as usize),
            },
            "heartbeat" => Self::Heartbeat {
                peer_id: optional_string(&object, "peerId", MAX_PEER_ID_CHARS)?,
            },
            _ => {
                return Err(RelayRequestError::WrongType {
                    field: "type",
                    expected: "a rendezvous, link, peer-relay or heartbeat type",
                })
            }
        })
    }

    /// The message `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::RegisterRendezvous(_) => "register_rendezvous",
            Self::LinkRequest { .. } => "link_request",
            Self::LinkResponse { .. } => "link_response",
            Self::RegisterPeer { .. } => "register",
            Self::UpdateLoad { .. } => "update_load",
            Self::GetRelays { .. } => "get_relays",
            Self::Heartbeat { .. } => "heartbeat",
        }
    }

    /// The frame as a client sends it: `register_rendezvous` in the app's
    /// spelling (`peerId`, `daily_points`, `hourly_tokens`, `dead_drops`,
    /// plus `deadDrop` and `relayId` when set); `None` fields omitted.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("type".into(), self.type_name().into());
        let mut put = |key: &str, value: Value| {
            object.insert(key.into(), value);
        };
        match self {
            Self::RegisterRendezvous(register) => {
                if let Some(peer_id) = &register.peer_id {
                    put("peerId", peer_id.as_str().into());
                }
                put("daily_points", json!(register.daily_points));
                put("hourly_tokens", json!(register.hourly_tokens));
                put("dead_drops", json!(register.dead_drops));
                if !register.dead_drop.is_empty() {
                    put("deadDrop", register.dead_drop.as_str().into());
                }
                if let Some(relay_id) = &register.relay_id {
                    put("relayId", relay_id.as_str().into());
                }
            }
            Self::LinkRequest {
                link_code,
                public_key,
                device_name,
            } => {
                put("linkCode", link_code.as_str().into());
                put("publicKey", public_key.as_str().into());
                put("deviceName", device_name.as_str().into());
            }
            Self::LinkResponse {
                link_code,
                accepted,
                device_id,
            } => {
                put("linkCode", link_code.as_str().into());
                put("accepted", (*accepted).into());
                if let Some(device_id) = device_id {
                    put("deviceId", device_id.as_str().into());
                }
            }
            Self::RegisterPeer {
                peer_id,
                max_connections,
                public_key,
            } => {
                put("peerId", peer_id.as_str().into());
                put("maxConnections", (*max_connections).into());
                if let Some(key) = public_key {
                    put("publicKey", key.as_str().into());
                }
            }
            Self::UpdateLoad {
                peer_id,
                connected_count,
            } => {
                if let Some(peer_id) = peer_id {
                    put("peerId", peer_id.as_str().into());
                }
                if let Some(count) = connected_count {
                    put("connectedCount", (*count).into());
                }
            }
            Self::GetRelays { peer_id, count } => {
                if let Some(peer_id) = peer_id {
                    put("peerId", peer_id.as_str().into());
                }
                put("count", (*count).into());
            }
            Self::Heartbeat { peer_id } => {
                if let Some(peer_id) = peer_id {
                    put("peerId", peer_id.as_str().into());
                }
            }
        }
        Value::Object(object)
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        self.to_json().to_string()
    }
}

impl fmt::Display for RelayRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn read_rendezvous(object: &Map<String, Value>) -> Result<RegisterRendezvous, RelayRequestError> {
    let daily_points = point_list(object, ["dailyPoints", "daily_points"])?;
    let hourly_tokens = point_list(object, ["hourlyTokens", "hourly_tokens"])?;
    // Zajel: `dead_drops ?? deadDrops`: the first present (not null) map wins.
    let dead_drops = match ["dead_drops", "deadDrops"]
        .into_iter()
        .find_map(|key| object.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    {
        None => BTreeMap::new(),
        Some((field, Value::Object(map))) => {
            let field = if field == "dead_drops" {
                "dead_drops"
            } else {
                "deadDrops"
            };
            if map.len() > MAX_ITEMS_PER_LIST {
                return Err(RelayRequestError::TooManyItems {
                    field,
                    max: MAX_ITEMS_PER_LIST,
                });
            }
            let mut drops = BTreeMap::new();
            for (point, drop) in map {
                let Value::String(drop) = drop else {
                    return Err(RelayRequestError::WrongType {
                        field,
                        expected: "an object of strings",
                    });
                };
                check_point(point, field)?;
                check_dead_drop(drop)?;
                drops.insert(point.clone(), drop.clone());
            }
            drops
        }
        Some((field, _)) => {
            return Err(RelayRequestError::WrongType {
                field: if field == "dead_drops" {
                    "dead_drops"
                } else {
                    "deadDrops"
                },
                expected: "an object",
            })
        }
    };
    let dead_drop = match object.get("deadDrop") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(drop)) => {
            check_dead_drop(drop)?;
            drop.clone()
        }
        Some(_) => {
            return Err(RelayRequestError::WrongType {
                field: "deadDrop",
                expected: "a string",
            })
        }
    };
    let relay_id = optional_string(object, "relayId", MAX_RELAY_ID_CHARS)?;
    let peer_id = optional_string(object, "peerId", MAX_PEER_ID_CHARS)?.filter(|p| !p.is_empty());
    if peer_id.is_none() && !(daily_points.is_empty() && hourly_tokens.is_empty()) {
        return Err(RelayRequestError::MissingField("peerId"));
    }
    Ok(RegisterRendezvous {
        peer_id,
        daily_points,
        hourly_tokens,
        dead_drops,
        dead_drop,
        relay_id,
    })
}

/// The first present (not null) spelling of a list of points or tokens.
fn point_list(
    object: &Map<String, Value>,
    spellings: [&'static str; 2],
) -> Result<Vec<String>, RelayRequestError> {
    let Some((field, value)) = spellings
        .into_iter()
        .find_map(|key| object.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = value else {
        return Err(RelayRequestError::WrongType {
            field,
            expected: "an array of strings",
        });
    };
    if items.len() > MAX_ITEMS_PER_LIST {
        return Err(RelayRequestError::TooManyItems {
            field,
            max: MAX_ITEMS_PER_LIST,
        });
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(point) => check_point(point, field).map(|()| point.clone()),
            _ => Err(RelayRequestError::WrongType {
                field,
                expected: "an array of strings",
            }),
        })
        .collect()
}

fn check_point(point: &str, field: &'static str) -> Result<(), RelayRequestError> {
    if point.chars().count() > MAX_POINT_CHARS {
        return Err(RelayRequestError::TooLong {
            field,
            max: MAX_POINT_CHARS,
            unit: "characters per entry",
        });
    }
    if point.is_empty() {
        return Err(RelayRequestError::WrongType {
            field,
            expected: "non-empty strings",
        });
    }
    Ok(())
}

fn check_dead_drop(drop: &str) -> Result<(), RelayRequestError> {
    if drop.len() > MAX_DEAD_DROP_BYTES {
        return Err(RelayRequestError::TooLong {
            field: "deadDrop",
            max: MAX_DEAD_DROP_BYTES,
            unit: "bytes",
        });
    }
    Ok(())
}

fn link_code(object: &Map<String, Value>) -> Result<PairingCode, RelayRequestError> {
    match object.get("linkCode") {
        None | Some(Value::Null) => Err(RelayRequestError::MissingField("linkCode")),
        Some(Value::String(code)) if code.is_empty() => {
            Err(RelayRequestError::MissingField("linkCode"))
        }
        Some(Value::String(code)) => {
            PairingCode::parse(code).map_err(|_| RelayRequestError::InvalidLinkCode)
        }
        Some(_) => Err(RelayRequestError::InvalidLinkCode),
    }
}

/// A required string; absent, `null` and `""` count as missing.
fn required_string(
    object: &Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<String, RelayRequestError> {
    optional_string(object, field, max_chars)?
        .filter(|text| !text.is_empty())
        .ok_or(RelayRequestError::MissingField(field))
}

/// An optional string; `null` reads as absent.
fn optional_string(
    object: &Map<String, Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<Option<String>, RelayRequestError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.chars().count() > max_chars => {
            Err(RelayRequestError::TooLong {
                field,
                max: max_chars,
                unit: "characters",
            })
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(RelayRequestError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

/// An optional non-negative integer; `null` reads as absent.
fn optional_count(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, RelayRequestError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or(RelayRequestError::WrongType {
                field,
                expected: "a non-negative integer",
            }),
    }
}

/// One live match: another peer registered at one of the registrant's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveMatch {
    pub peer_id: String,
    /// `""` when the other peer sent none.
    pub relay_id: String,
}

/// Another peer's non-empty dead drop at one of the registrant's daily points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FoundDeadDrop {
    pub peer_id: String,
    pub dead_drop: String,
    /// `""` when the other peer sent none.
    pub relay_id: String,
}

/// What the answering server found among the points it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RendezvousFound {
    pub live_matches: Vec<LiveMatch>,
    pub dead_drops: Vec<FoundDeadDrop>,
}

/// Points and tokens that belong to another server, merged per server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    pub server_id: String,
    pub endpoint: String,
    pub daily_points: Vec<String>,
    pub hourly_tokens: Vec<String>,
}

/// `rendezvous_match`'s `match`: the later registrant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedPeer {
    pub peer_id: String,
    /// Its `relayId` as sent; omitted when it sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
}

/// A peer relay in `registered` and `relays`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRelayInfo {
    pub peer_id: String,
    /// As registered; `null` when none.
    pub public_key: Option<String>,
    /// `connectedCount / maxConnections`.
    pub capacity: f64,
}

/// A server frame of a [`RELAY_REPLY_TYPES`] type, in Zajel's shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum RelayReply {
    /// No point or token was redirected.
    RendezvousResult {
        live_matches: Vec<LiveMatch>,
        dead_drops: Vec<FoundDeadDrop>,
    },
    /// At least one point or token belongs to another server.
    RendezvousPartial {
        local: RendezvousFound,
        redirects: Vec<Redirect>,
    },
    /// Pushed to an earlier registrant of an hourly token.
    RendezvousMatch {
        #[serde(rename = "match")]
        matched: MatchedPeer,
    },
    /// To the mobile (the connection holding the link code); `expiresIn` in ms.
    LinkRequest {
        link_code: String,
        public_key: String,
        device_name: String,
        expires_in: u64,
    },
    /// To both sides of an accepted link: the web client gets
    /// `isInitiator:true` and `deviceId` (omitted when the mobile sent
    /// none); the mobile `isInitiator:false`, `webClientCode`, `deviceName`.
    LinkMatched {
        link_code: String,
        peer_public_key: String,
        is_initiator: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        web_client_code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_name: Option<String>,
    },
    /// To the web client when the mobile declines.
    LinkRejected { link_code: String },
    /// To both sides when a link request expires (and to the mobile when
    /// the web client leaves first).
    LinkTimeout { link_code: String },
    /// A refused link request or response.
    LinkError { error: String },
    /// A peer relay's registration.
    Registered {
        peer_id: String,
        server_id: String,
        relays: Vec<PeerRelayInfo>,
    },
    /// Answer to `update_load`, echoing what was sent (absent stays absent).
    LoadUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connected_count: Option<u64>,
    },
    /// Answer to `get_relays`.
    Relays { relays: Vec<PeerRelayInfo> },
    /// Answer to `heartbeat`: the server's Unix time in ms.
    HeartbeatAck { timestamp: u64 },
}

impl RelayReply {
    /// Parses a server frame of a [`RELAY_REPLY_TYPES`] type.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The frame as JSON text, `type` first.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<RelayRequest, RelayRequestError> {
        assert!(is_relay_request(&value), "{value}");
        RelayRequest::from_json_for_connection(value, Some(true))
    }

    fn rendezvous(value: Value) -> RegisterRendezvous {
        match parse(value).unwrap() {
            RelayRequest::RegisterRendezvous(register) => register,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_apps_register_rendezvous_reads_in_snake_case() {
        // connection_manager.dart's frame, as sent.
        let text = r#"{"type":"register_rendezvous","peerId":"ABC234","daily_points":["day_a","day_b"],"hourly_tokens":["hr_x","day_a","day_b"],"dead_drops":{}}"#;
        let RelayRequest::RegisterRendezvous(register) =
            RelayRequest::parse(text).unwrap().unwrap()
        else {
            panic!()
        };
        assert_eq!(register.peer_id.as_deref(), Some("ABC234"));
        assert_eq!(register.daily_points, ["day_a", "day_b"]);
        assert_eq!(register.hourly_tokens, ["hr_x", "day_a", "day_b"]);
        assert!(register.dead_drops.is_empty());
        assert_eq!(register.relay_id, None);
        assert_eq!(register.dead_drop_for("day_a"), "");
        assert_eq!(
            RegisterRendezvous::as_the_app_sends(
                "ABC234",
                &["day_a".into(), "day_b".into()],
                &["hr_x".into()]
            ),
            register
        );
        // Written back in the app's spelling, it reads the same.
        let again = RelayRequest::RegisterRendezvous(register.clone()).to_text();
        assert_eq!(
            RelayRequest::parse(&again).unwrap().unwrap(),
            RelayRequest::RegisterRendezvous(register)
        );
    }

    #[test]
    fn camel_case_wins_over_snake_case_and_the_first_present_dead_drop_map_wins() {
        let register = rendezvous(json!({
            "type": "register_rendezvous", "peerId": "p",
            "dailyPoints": ["day_camel"], "daily_points": ["day_snake"],
            "hourlyTokens": ["hr_camel"], "hourly_tokens": ["hr_snake"],
            "dead_drops": {}, "deadDrops": {"day_camel": "hidden"},
            "deadDrop": "legacy", "relayId": "relay-1",
        }));
        assert_eq!(register.daily_points, ["day_camel"]);
        assert_eq!(register.hourly_tokens, ["hr_camel"]);
        // `"dead_drops":{}` hides `deadDrops`, so the legacy drop applies.
        assert!(register.dead_drops.is_empty());
        assert_eq!(register.dead_drop_for("day_camel"), "legacy");
        assert_eq!(register.relay_id.as_deref(), Some("relay-1"));
        let register = rendezvous(json!({
            "type": "register_rendezvous", "peerId": "p",
            "daily_points": ["day_a", "day_b"],
            "deadDrops": {"day_a": "sealed"}, "deadDrop": "legacy",
        }));
        // A non-empty map: each point its own drop, the legacy one unused.
        assert_eq!(register.dead_drop_for("day_a"), "sealed");
        assert_eq!(register.dead_drop_for("day_b"), "");
        // The dormant reconnection service's legacy form without a map.
        let register = rendezvous(json!({
            "type": "register_rendezvous", "peerId": "p",
            "dailyPoints": ["day_a"], "deadDrop": "b64",
        }));
        assert_eq!(register.dead_drop_for("day_a"), "b64");
        assert!(register.hourly_tokens.is_empty());
    }

    #[test]
    fn hostile_register_rendezvous_gets_clear_errors() {
        let error = |value: Value| parse(value).unwrap_err().to_string();
        // Zajel: "Internal server error".
        assert_eq!(
            error(json!({"type": "register_rendezvous", "daily_points": ["day_a"]})),
            "Missing required field: peerId"
        );
        // No points and no peerId: an empty registration, as in Zajel.
        assert_eq!(
            rendezvous(json!({"type": "register_rendezvous"})),
            RegisterRendezvous::default()
        );
        let many: Vec<String> = (0..=MAX_ITEMS_PER_LIST)
            .map(|i| format!("hr_{i}"))
            .collect();
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p", "hourly_tokens": many})),
            "Too many hourly_tokens: at most 512 per message"
        );
        assert_eq!(
            error(
                json!({"type": "register_rendezvous", "peerId": "p", "dailyPoints": ["x".repeat(65)]})
            ),
            "dailyPoints too long: at most 64 characters per entry"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p", "daily_points": [7]})),
            "Invalid message format: daily_points must be an array of strings"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p", "daily_points": "day_a"})),
            "Invalid message format: daily_points must be an array of strings"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p", "daily_points": [""]})),
            "Invalid message format: daily_points must be non-empty strings"
        );
        assert_eq!(
            error(
                json!({"type": "register_rendezvous", "peerId": "p", "deadDrop": "x".repeat(4097)})
            ),
            "deadDrop too long: at most 4096 bytes"
        );
        assert_eq!(
            error(
                json!({"type": "register_rendezvous", "peerId": "p", "dead_drops": {"day_a": "x".repeat(4097)}})
            ),
            "deadDrop too long: at most 4096 bytes"
        );
        assert_eq!(
            error(
                json!({"type": "register_rendezvous", "peerId": "p", "dead_drops": {"day_a": 5}})
            ),
            "Invalid message format: dead_drops must be an object of strings"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p", "deadDrops": []})),
            "Invalid message format: deadDrops must be an object"
        );
        assert_eq!(
            error(
                json!({"type": "register_rendezvous", "peerId": "p", "relayId": "r".repeat(129)})
            ),
            "relayId too long: at most 128 characters"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": "p".repeat(129)})),
            "peerId too long: at most 128 characters"
        );
        assert_eq!(
            error(json!({"type": "register_rendezvous", "peerId": 5})),
            "Invalid message format: peerId must be a string"
        );
        // Exactly at the limits is fine.
        let full: Vec<String> = (0..MAX_ITEMS_PER_LIST)
            .map(|i| format!("{i:0>64}"))
            .collect();
        let register = rendezvous(json!({
            "type": "register_rendezvous", "peerId": "p", "daily_points": full,
            "deadDrop": "x".repeat(4096), "relayId": "r".repeat(128),
        }));
        assert_eq!(register.daily_points.len(), MAX_ITEMS_PER_LIST);
    }

    #[test]
    fn link_messages_read_zajels_fields_and_refuse_with_zajels_texts() {
        let request = parse(json!({
            "type": "link_request", "linkCode": "ABC234",
            "publicKey": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=",
            "deviceName": "Firefox on Linux",
        }))
        .unwrap();
        assert!(matches!(
            &request,
            RelayRequest::LinkRequest { device_name, .. } if device_name == "Firefox on Linux"
        ));
        assert!(matches!(
            parse(json!({"type": "link_request", "linkCode": "ABC234", "publicKey": "k"})).unwrap(),
            RelayRequest::LinkRequest { device_name, .. } if device_name == DEFAULT_DEVICE_NAME
        ));
        let error = |value: Value| parse(value).unwrap_err().to_string();
        assert_eq!(
            error(json!({"type": "link_request", "publicKey": "k"})),
            "Missing required field: linkCode"
        );
        assert_eq!(
            error(json!({"type": "link_request", "linkCode": "abc234", "publicKey": "k"})),
            "Invalid link code format"
        );
        assert_eq!(
            error(json!({"type": "link_request", "linkCode": "ABC234"})),
            "Missing required field: publicKey"
        );
        assert_eq!(
            error(
                json!({"type": "link_request", "linkCode": "ABC234", "publicKey": "k", "deviceName": "d".repeat(257)})
            ),
            "deviceName too long: at most 256 characters"
        );
        assert_eq!(
            error(json!({"type": "link_response", "linkCode": "ABC23", "accepted": true})),
            "Invalid link code format"
        );
        assert_eq!(
            error(json!({"type": "link_response", "linkCode": "ABC234", "accepted": "yes"})),
            "Invalid message format: accepted must be a boolean"
        );
        assert_eq!(
            parse(json!({"type": "link_response", "linkCode": "ABC234", "accepted": true, "deviceId": "link_ABC234"}))
                .unwrap(),
            RelayRequest::LinkResponse {
                link_code: PairingCode::parse("ABC234").unwrap(),
                accepted: true,
                device_id: Some("link_ABC234".into()),
            }
        );
        // Before a pairing register, whatever the fields.
        assert_eq!(
            RelayRequest::from_json_for_connection(json!({"type": "link_request"}), Some(false)),
            Err(RelayRequestError::NotRegistered)
        );
        assert_eq!(
            RelayRequestError::NotRegistered.to_string(),
            crate::signaling::NOT_REGISTERED
        );
    }

    #[test]
    fn register_without_a_pairing_code_key_is_a_peer_relay() {
        assert!(!is_relay_request(
            &json!({"type": "register", "pairingCode": null, "peerId": "relay-1"})
        ));
        assert!(is_relay_request(&json!({"type": "register"})));
        assert_eq!(
            parse(json!({"type": "register", "peerId": "relay-1"})).unwrap(),
            RelayRequest::RegisterPeer {
                peer_id: "relay-1".into(),
                max_connections: 20,
                public_key: None,
            }
        );
        // The dormant reconnection service's snake-case `peer_id`.
        assert_eq!(
            parse(json!({"type": "register", "peer_id": "relay-1"}))
                .unwrap_err()
                .to_string(),
            "Missing required field: peerId"
        );
        assert_eq!(
            parse(json!({"type": "register", "peerId": "r", "maxConnections": -1}))
                .unwrap_err()
                .to_string(),
            "Invalid message format: maxConnections must be a non-negative integer"
        );
        // The app's relay_client.dart update_load: no peerId.
        assert_eq!(
            parse(json!({"type": "update_load", "sourceId": "s", "connectedCount": 7, "maxCapacity": 20}))
                .unwrap(),
            RelayRequest::UpdateLoad {
                peer_id: None,
                connected_count: Some(7),
            }
        );
        assert_eq!(
            parse(json!({"type": "get_relays", "peerId": "r"})).unwrap(),
            RelayRequest::GetRelays {
                peer_id: Some("r".into()),
                count: 10,
            }
        );
        assert_eq!(
            parse(json!({"type": "heartbeat", "peerId": "r"})).unwrap(),
            RelayRequest::Heartbeat {
                peer_id: Some("r".into())
            }
        );
        assert!(!is_relay_request(&json!({"type": "ping"})));
        assert!(!is_relay_request(&json!(["heartbeat"])));
    }

    #[test]
    fn replies_are_written_in_zajels_shapes() {
        let text = |reply: RelayReply| reply.to_text();
        assert_eq!(
            text(RelayReply::RendezvousResult {
                live_matches: vec![LiveMatch {
                    peer_id: "ABC234".into(),
                    relay_id: String::new()
                }],
                dead_drops: vec![FoundDeadDrop {
                    peer_id: "ABC234".into(),
                    dead_drop: "d".into(),
                    relay_id: String::new()
                }],
            }),
            r#"{"type":"rendezvous_result","liveMatches":[{"peerId":"ABC234","relayId":""}],"deadDrops":[{"peerId":"ABC234","deadDrop":"d","relayId":""}]}"#
        );
        assert_eq!(
            text(RelayReply::RendezvousPartial {
                local: RendezvousFound::default(),
                redirects: vec![Redirect {
                    server_id: "ed25519:x".into(),
                    endpoint: "wss://b".into(),
                    daily_points: vec!["day_a".into()],
                    hourly_tokens: vec![],
                }],
            }),
            r#"{"type":"rendezvous_partial","local":{"liveMatches":[],"deadDrops":[]},"redirects":[{"serverId":"ed25519:x","endpoint":"wss://b","dailyPoints":["day_a"],"hourlyTokens":[]}]}"#
        );
        assert_eq!(
            text(RelayReply::RendezvousMatch {
                matched: MatchedPeer {
                    peer_id: "ABC234".into(),
                    relay_id: None
                }
            }),
            r#"{"type":"rendezvous_match","match":{"peerId":"ABC234"}}"#
        );
        assert_eq!(
            text(RelayReply::LinkMatched {
                link_code: "ABC234".into(),
                peer_public_key: "k".into(),
                is_initiator: false,
                device_id: None,
                web_client_code: Some("WEB234".into()),
                device_name: Some("Firefox".into()),
            }),
            r#"{"type":"link_matched","linkCode":"ABC234","peerPublicKey":"k","isInitiator":false,"webClientCode":"WEB234","deviceName":"Firefox"}"#
        );
        assert_eq!(
            text(RelayReply::Registered {
                peer_id: "r".into(),
                server_id: "s".into(),
                relays: vec![PeerRelayInfo {
                    peer_id: "q".into(),
                    public_key: None,
                    capacity: 0.25
                }],
            }),
            r#"{"type":"registered","peerId":"r","serverId":"s","relays":[{"peerId":"q","publicKey":null,"capacity":0.25}]}"#
        );
        assert_eq!(
            text(RelayReply::LoadUpdated {
                peer_id: None,
                connected_count: Some(3)
            }),
            r#"{"type":"load_updated","connectedCount":3}"#
        );
        assert_eq!(
            text(RelayReply::HeartbeatAck { timestamp: 5 }),
            r#"{"type":"heartbeat_ack","timestamp":5}"#
        );
        // Each reply reads back.
        let reply = RelayReply::LinkTimeout {
            link_code: "ABC234".into(),
        };
        assert_eq!(RelayReply::parse(&reply.to_text()).unwrap(), reply);
    }

    #[test]
    fn a_pairing_client_reads_these_replies_as_unknown_and_relay_reply_reads_them() {
        use crate::signaling::{ClientMessage, ServerMessage};
        // What Zajel's server sends the app, as a client of this crate reads it.
        let text = r#"{"type":"rendezvous_match","match":{"peerId":"ABC234","relayId":"r"}}"#;
        assert!(matches!(
            ServerMessage::parse(text),
            Ok(ServerMessage::Unknown(_))
        ));
        assert_eq!(
            RelayReply::parse(text).unwrap(),
            RelayReply::RendezvousMatch {
                matched: MatchedPeer {
                    peer_id: "ABC234".into(),
                    relay_id: Some("r".into())
                }
            }
        );
        let result = r#"{"type":"rendezvous_partial","local":{"liveMatches":[{"peerId":"ABC234","relayId":""}],"deadDrops":[]},"redirects":[{"serverId":"s","endpoint":"wss://b","dailyPoints":[],"hourlyTokens":["hr_x"]}]}"#;
        let RelayReply::RendezvousPartial { local, redirects } = RelayReply::parse(result).unwrap()
        else {
            panic!()
        };
        assert_eq!(local.live_matches[0].peer_id, "ABC234");
        assert_eq!(redirects[0].hourly_tokens, ["hr_x"]);
        // ClientMessage alone still refuses the types a relay routes here first.
        for type_name in RELAY_REQUEST_TYPES {
            assert_eq!(
                ClientMessage::parse(&json!({"type": type_name}).to_string())
                    .unwrap_err()
                    .to_string(),
                format!("Unknown message type: {type_name}")
            );
        }
        // A pairing register is ClientMessage's, whatever is in it.
        let register = json!({"type": "register", "pairingCode": "ABC234", "publicKey": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=", "peerId": "x"});
        assert!(!is_relay_request(&register));
        assert!(matches!(
            ClientMessage::from_json_for_connection(register, true),
            Ok(ClientMessage::Register { .. })
        ));
    }
}
