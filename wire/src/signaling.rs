//! Signaling messages: the JSON text frames between clients and a relay.
//!
//! Every frame is one JSON object with a `type`. [`ClientMessage`] is what
//! clients send, [`ServerMessage`] what a relay sends; field names are
//! Zajel's camelCase ones, type names snake_case.
//!
//! # Reading client frames (relay side)
//!
//! A relay handles a text frame in this order, which is Zajel's:
//!
//! 1. A frame over [`MAX_FRAME_BYTES`] closes the connection with
//!    [`CLOSE_MESSAGE_TOO_BIG`] (1009); it is not parsed.
//! 2. Over [`RATE_LIMIT_MESSAGES`] frames in [`RATE_LIMIT_WINDOW_MS`]:
//!    `{"type":"error","message":"Rate limit exceeded. Please slow down."}`.
//! 3. [`ClientMessage::parse_for_connection`] with whether the connection
//!    has registered. Its error's Display text is the `message` of the
//!    `error` frame to send back ([`SignalingError::to_server_message`]):
//!    unparsable JSON, a non-object or a missing/non-string `type` give
//!    [`JSON_PARSE_ERROR`]; an unknown type `Unknown message type: <t>`; a
//!    forwarding or pairing message from an unregistered connection
//!    [`NOT_REGISTERED`] (checked before its fields); then missing or wrong
//!    fields, bad pairing codes and keys, and bad call payloads
//!    ([`crate::call::validate_call_payload`]) their own texts.
//! 4. The relay's own logic: [`PAIR_REQUEST_LIMIT`] pair requests per
//!    [`PAIR_REQUEST_WINDOW_MS`], [`MAX_PENDING_PER_TARGET`], expiry after
//!    [`PAIR_REQUEST_TIMEOUT_MS`] with `pair_expiring` [`PAIR_EXPIRING_WARNING_MS`]
//!    before, `Peer not found: <code>` ([`peer_not_found`]) for an unknown
//!    target, and forwarding with [`ClientMessage::forward_from`].
//!
//! [`ClientMessage::parse`] does the same without the registration check.
//! Codes (`pairingCode`, `targetCode`, `target`) must be valid
//! [`PairingCode`]s and `publicKey` standard base64 of 32 bytes; an absent,
//! `null` or empty field counts as missing, as in Zajel.
//!
//! # The web client's flat call form (accepted)
//!
//! Zajel's web client sends call messages flat:
//! `{"type":"call_offer","callId","targetId","sdp","withVideo"}` (no
//! `payload`, `targetId` instead of `target`). A call message without
//! `payload` but with `targetId` is read that way: the target is `targetId`
//! and the payload is every remaining field (all but `type`, `target` and
//! `targetId`). The result is the same [`ClientMessage`], marked
//! [`CallForm::Flat`]; serialising it writes the flat form again.
//!
//! # Flat fields on delivered call messages (our extension)
//!
//! Zajel forwards `{"type":<call type>,"from":<code>,"payload":{…}}`, which
//! the Flutter app reads; Zajel's web client reads `callId`, `sdp`,
//! `withVideo`, `candidate` and `reason` at the top level next to `from`.
//! [`ServerMessage::to_text_with_flat_call_fields`] writes the envelope
//! *and* copies those fields of the payload (only the ones the call kind
//! defines, see [`CallKind::fields`]) to the top level. Readers of the
//! envelope ignore the extra fields, so it is safe to send to everyone; it
//! does roughly double the size of an offer or answer, so clients must not
//! hold *received* frames to [`MAX_FRAME_BYTES`].
//!
//! # `ice_servers` (our extension)
//!
//! `{"type":"ice_servers","iceServers":[{"urls":[…],"username"?,"credential"?}]}`
//! hands a registered client STUN/TURN servers. Old clients do not know the
//! type, so a relay sends it only to clients that asked for it; how they ask
//! is the relay's choice.
//!
//! # Reading server frames (client side)
//!
//! [`ServerMessage`] is `Deserialize`; a frame of a type this crate does not
//! know becomes [`ServerMessage::Unknown`] (kept whole, so it round-trips),
//! while a known type with missing or mistyped fields is an error. Extra
//! fields (such as Zajel's `redirects` on `registered`) are ignored.

use std::fmt;

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::call::{self, CallKind, CallPayload, CallPayloadError};
use crate::pairing::{self, PairingCode};

/// Largest client frame, in bytes (64 KiB). Larger frames close the
/// connection with [`CLOSE_MESSAGE_TOO_BIG`].
pub const MAX_FRAME_BYTES: usize = 65_536;
/// WebSocket close code for a frame over [`MAX_FRAME_BYTES`].
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Frames a connection may send per [`RATE_LIMIT_WINDOW_MS`].
pub const RATE_LIMIT_MESSAGES: u32 = 100;
/// The rate-limit window.
pub const RATE_LIMIT_WINDOW_MS: u64 = 60_000;
/// `pair_request`s a connection may send per [`PAIR_REQUEST_WINDOW_MS`].
pub const PAIR_REQUEST_LIMIT: u32 = 10;
/// The `pair_request` rate-limit window.
pub const PAIR_REQUEST_WINDOW_MS: u64 = 60_000;
/// Pending pair requests one target may have at once.
pub const MAX_PENDING_PER_TARGET: usize = 10;
/// How long a pair request waits for an answer (`expiresIn` of `pair_incoming`).
pub const PAIR_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// How long before expiry both sides get `pair_expiring`.
pub const PAIR_EXPIRING_WARNING_MS: u64 = 30_000;
/// `remainingSeconds` of `pair_expiring`.
pub const PAIR_EXPIRING_REMAINING_SECONDS: u64 = PAIR_EXPIRING_WARNING_MS / 1000;
/// How often clients send `ping`.
pub const PING_INTERVAL_MS: u64 = 30_000;

/// `error` text for unparsable frames.
pub const JSON_PARSE_ERROR: &str = "Invalid message format: JSON parse error";
/// `error` text once the rate limit is exceeded.
pub const RATE_LIMIT_EXCEEDED: &str = "Rate limit exceeded. Please slow down.";
/// `error` text for forwarding or pairing before `register`.
pub const NOT_REGISTERED: &str = "Not registered. Send register message first.";
/// `pair_error` text for every refused pair request (no enumeration).
pub const PAIR_REQUEST_FAILED: &str = "Pair request could not be processed";
/// `pair_error` text for a `pair_response` with no matching pending request (Zajel's text).
pub const NO_PENDING_REQUEST: &str = "No pending request from this peer";
/// `code_collision` text (Zajel's text).
pub const CODE_COLLISION: &str = "Pairing code already in use. Please reconnect with a new code.";

/// `error` text for an unknown forwarding target: `Peer not found: <code>`.
pub fn peer_not_found(code: &str) -> String {
    format!("Peer not found: {code}")
}

/// The client message types a server forwards to the peer named in `target` (WebRTC
/// signaling and calls); part of [`CLIENT_MESSAGE_TYPES`].
pub const FORWARDED_MESSAGE_TYPES: [&str; 8] = [
    "offer",
    "answer",
    "ice_candidate",
    "call_offer",
    "call_answer",
    "call_reject",
    "call_hangup",
    "call_ice",
];

/// The message types clients send.
pub const CLIENT_MESSAGE_TYPES: [&str; 12] = {
    let f = FORWARDED_MESSAGE_TYPES;
    [
        "register",
        "pair_request",
        "pair_response",
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        "ping",
    ]
};

/// The message types servers send (`ice_servers` is our extension).
pub const SERVER_MESSAGE_TYPES: [&str; 20] = [
    "server_info",
    "registered",
    "code_collision",
    "pair_incoming",
    "pair_matched",
    "pair_rejected",
    "pair_error",
    "pair_expiring",
    "pair_timeout",
    "offer",
    "answer",
    "ice_candidate",
    "call_offer",
    "call_answer",
    "call_reject",
    "call_hangup",
    "call_ice",
    "ice_servers",
    "pong",
    "error",
];

/// Why a frame was refused. The Display text is the `message` of the
/// `{"type":"error"}` frame a relay answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    /// Unparsable JSON, not an object, or no string `type`.
    #[error("Invalid message format: JSON parse error")]
    Json,
    /// A `type` this side does not handle.
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    /// A forwarding or pairing message before `register`.
    #[error("Not registered. Send register message first.")]
    NotRegistered,
    /// A required field is absent, `null` or empty.
    #[error("Invalid message format: missing field {0}")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("Invalid message format: {field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `pairingCode` is not a valid pairing code (Zajel's text).
    #[error("Invalid pairing code format")]
    InvalidPairingCode,
    /// `targetCode`, `target` or `targetId` is not a valid pairing code (Zajel's text).
    #[error("Invalid target code format")]
    InvalidTargetCode,
    /// `publicKey` is not standard base64 of 32 bytes (Zajel's text).
    #[error("Invalid public key format")]
    InvalidPublicKey,
    /// A call payload failed validation.
    #[error(transparent)]
    CallPayload(#[from] CallPayloadError),
    /// A frame over [`MAX_FRAME_BYTES`]; a relay closes with
    /// [`CLOSE_MESSAGE_TOO_BIG`] rather than answering.
    #[error("Message too large")]
    FrameTooLarge,
    /// A server frame of a known type with missing or mistyped fields.
    #[error("Invalid message format: {0} has missing or invalid fields")]
    InvalidFields(String),
}

impl SignalingError {
    /// `{"type":"error","message":<this error's text>}`.
    pub fn to_server_message(&self) -> ServerMessage {
        ServerMessage::error(self.to_string())
    }
}

/// Which form a call message arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CallForm {
    /// `{"type","target","payload":{…}}`, Zajel's server form.
    #[default]
    Envelope,
    /// `{"type","targetId",…call fields}`, Zajel's web client form.
    Flat,
}

/// A frame a client sends.
///
/// Serialises to Zajel's JSON (call messages in the form they carry) and
/// deserialises with the same checks as [`ClientMessage::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"register","pairingCode","publicKey"}`.
    Register {
        pairing_code: PairingCode,
        /// Standard base64 of a 32-byte X25519 key, as sent.
        public_key: String,
    },
    /// `{"type":"pair_request","targetCode","proposedName"?}`; an empty name reads as `None`.
    PairRequest {
        target_code: PairingCode,
        proposed_name: Option<String>,
    },
    /// `{"type":"pair_response","targetCode","accepted"}`; `targetCode` is the requester.
    PairResponse {
        target_code: PairingCode,
        accepted: bool,
    },
    /// `{"type":"offer","target","payload":{…}}`.
    Offer {
        target: PairingCode,
        payload: Map<String, Value>,
    },
    /// `{"type":"answer","target","payload":{…}}`.
    Answer {
        target: PairingCode,
        payload: Map<String, Value>,
    },
    /// `{"type":"ice_candidate","target","payload":{…}}`.
    IceCandidate {
        target: PairingCode,
        payload: Map<String, Value>,
    },
    /// `call_offer`; the payload has passed [`crate::call::validate_call_payload`].
    CallOffer {
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    },
    /// `call_answer`.
    CallAnswer {
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    },
    /// `call_reject`.
    CallReject {
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    },
    /// `call_hangup`.
    CallHangup {
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    },
    /// `call_ice`.
    CallIce {
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    },
    /// `{"type":"ping"}`.
    Ping,
}

impl ClientMessage {
    /// Parses an untrusted frame with every check but registration.
    pub fn parse(text: &str) -> Result<Self, SignalingError> {
        Self::parse_frame(text, None)
    }

    /// Parses an untrusted frame from a connection that has (`registered`)
    /// or has not registered: messages other than `register` and `ping`
    /// from an unregistered connection give [`SignalingError::NotRegistered`]
    /// before their fields are looked at.
    pub fn parse_for_connection(text: &str, registered: bool) -> Result<Self, SignalingError> {
        Self::parse_frame(text, Some(registered))
    }

    /// Reads an already-parsed JSON value with the checks of [`Self::parse`].
    pub fn from_json(value: Value) -> Result<Self, SignalingError> {
        Self::from_value(value, None)
    }

    fn parse_frame(text: &str, registered: Option<bool>) -> Result<Self, SignalingError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(SignalingError::FrameTooLarge);
        }
        let value = serde_json::from_str(text).map_err(|_| SignalingError::Json)?;
        Self::from_value(value, registered)
    }

    fn from_value(value: Value, registered: Option<bool>) -> Result<Self, SignalingError> {
        let Value::Object(mut object) = value else {
            return Err(SignalingError::Json);
        };
        let type_name = match object.remove("type") {
            Some(Value::String(type_name)) => type_name,
            _ => return Err(SignalingError::Json),
        };
        if !CLIENT_MESSAGE_TYPES.contains(&type_name.as_str()) {
            return Err(SignalingError::UnknownType(type_name));
        }
        if registered == Some(false) && type_requires_registration(&type_name) {
            return Err(SignalingError::NotRegistered);
        }
        if let Some(kind) = CallKind::from_type(&type_name) {
            return Self::read_call(kind, object);
        }
        Ok(match type_name.as_str() {
            "register" => {
                let pairing_code =
                    code_field(&object, "pairingCode", SignalingError::InvalidPairingCode)?;
                let public_key = string_field(&object, "publicKey")?;
                if pairing::decode_x25519_public_key(&public_key).is_none() {
                    return Err(SignalingError::InvalidPublicKey);
                }
                Self::Register {
                    pairing_code,
                    public_key,
                }
            }
            "pair_request" => Self::PairRequest {
                target_code: code_field(&object, "targetCode", SignalingError::InvalidTargetCode)?,
                proposed_name: match object.get("proposedName") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(name)) if name.is_empty() => None,
                    Some(Value::String(name)) => Some(name.clone()),
                    Some(_) => {
                        return Err(SignalingError::WrongType {
                            field: "proposedName",
                            expected: "a string",
                        })
                    }
                },
            },
            "pair_response" => Self::PairResponse {
                target_code: code_field(&object, "targetCode", SignalingError::InvalidTargetCode)?,
                accepted: match object.get("accepted") {
                    None | Some(Value::Null) => {
                        return Err(SignalingError::MissingField("accepted"))
                    }
                    Some(Value::Bool(accepted)) => *accepted,
                    Some(_) => {
                        return Err(SignalingError::WrongType {
                            field: "accepted",
                            expected: "a boolean",
                        })
                    }
                },
            },
            "offer" | "answer" | "ice_candidate" => {
                let target = code_field(&object, "target", SignalingError::InvalidTargetCode)?;
                let payload = payload_field(&mut object)?;
                match type_name.as_str() {
                    "offer" => Self::Offer { target, payload },
                    "answer" => Self::Answer { target, payload },
                    _ => Self::IceCandidate { target, payload },
                }
            }
            _ => Self::Ping,
        })
    }

    fn read_call(kind: CallKind, mut object: Map<String, Value>) -> Result<Self, SignalingError> {
        let flat = !object.contains_key("payload") && object.contains_key("targetId");
        let (target, payload, form) = if flat {
            let target = code_field(&object, "targetId", SignalingError::InvalidTargetCode)?;
            object.remove("targetId");
            object.remove("target");
            (target, object, CallForm::Flat)
        } else {
            let target = code_field(&object, "target", SignalingError::InvalidTargetCode)?;
            (target, payload_field(&mut object)?, CallForm::Envelope)
        };
        call::validate_call_map(kind, &payload)?;
        Ok(Self::call_message(kind, target, payload, form))
    }

    /// A call message of `kind` (the payload is not checked here).
    pub fn call_message(
        kind: CallKind,
        target: PairingCode,
        payload: Map<String, Value>,
        form: CallForm,
    ) -> Self {
        match kind {
            CallKind::Offer => Self::CallOffer {
                target,
                payload,
                form,
            },
            CallKind::Answer => Self::CallAnswer {
                target,
                payload,
                form,
            },
            CallKind::Reject => Self::CallReject {
                target,
                payload,
                form,
            },
            CallKind::Hangup => Self::CallHangup {
                target,
                payload,
                form,
            },
            CallKind::Ice => Self::CallIce {
                target,
                payload,
                form,
            },
        }
    }

    /// A call message in the envelope form for a typed payload.
    pub fn call(target: PairingCode, payload: &CallPayload) -> Self {
        Self::call_message(payload.kind(), target, payload.to_map(), CallForm::Envelope)
    }

    /// The message `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::PairRequest { .. } => "pair_request",
            Self::PairResponse { .. } => "pair_response",
            Self::Offer { .. } => "offer",
            Self::Answer { .. } => "answer",
            Self::IceCandidate { .. } => "ice_candidate",
            Self::Ping => "ping",
            _ => self.call_kind().map_or("", CallKind::type_name),
        }
    }

    /// Whether the sender must have registered first (all but `register` and `ping`).
    pub fn requires_registration(&self) -> bool {
        type_requires_registration(self.type_name())
    }

    /// The call kind of a `call_*` message.
    pub fn call_kind(&self) -> Option<CallKind> {
        match self {
            Self::CallOffer { .. } => Some(CallKind::Offer),
            Self::CallAnswer { .. } => Some(CallKind::Answer),
            Self::CallReject { .. } => Some(CallKind::Reject),
            Self::CallHangup { .. } => Some(CallKind::Hangup),
            Self::CallIce { .. } => Some(CallKind::Ice),
            _ => None,
        }
    }

    /// The form a `call_*` message came in.
    pub fn call_form(&self) -> Option<CallForm> {
        match self {
            Self::CallOffer { form, .. }
            | Self::CallAnswer { form, .. }
            | Self::CallReject { form, .. }
            | Self::CallHangup { form, .. }
            | Self::CallIce { form, .. } => Some(*form),
            _ => None,
        }
    }

    /// The peer a forwarded message (`offer`, `answer`, `ice_candidate`, `call_*`) goes to.
    pub fn target(&self) -> Option<PairingCode> {
        self.forwarded().map(|(target, _)| target)
    }

    /// The payload of a forwarded message.
    pub fn payload(&self) -> Option<&Map<String, Value>> {
        self.forwarded().map(|(_, payload)| payload)
    }

    /// The typed payload of a `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        let kind = self.call_kind()?;
        Some(CallPayload::from_map(kind, self.payload()?))
    }

    fn forwarded(&self) -> Option<(PairingCode, &Map<String, Value>)> {
        match self {
            Self::Offer { target, payload }
            | Self::Answer { target, payload }
            | Self::IceCandidate { target, payload }
            | Self::CallOffer {
                target, payload, ..
            }
            | Self::CallAnswer {
                target, payload, ..
            }
            | Self::CallReject {
                target, payload, ..
            }
            | Self::CallHangup {
                target, payload, ..
            }
            | Self::CallIce {
                target, payload, ..
            } => Some((*target, payload)),
            _ => None,
        }
    }

    /// What the relay delivers to the target of a forwarded message:
    /// `{"type":<same>,"from":<sender code>,"payload":<same>}`.
    /// `None` for messages that are not forwarded.
    pub fn forward_from(&self, from: PairingCode) -> Option<ServerMessage> {
        let (_, payload) = self.forwarded()?;
        let from = from.to_string();
        let payload = payload.clone();
        Some(match self {
            Self::Offer { .. } => ServerMessage::Offer { from, payload },
            Self::Answer { .. } => ServerMessage::Answer { from, payload },
            Self::IceCandidate { .. } => ServerMessage::IceCandidate { from, payload },
            _ => ServerMessage::call(self.call_kind()?, from, payload),
        })
    }

    /// The frame as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The frame as JSON text, `type` first.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for ClientMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl Serialize for ClientMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.type_name())?;
        match self {
            Self::Register {
                pairing_code,
                public_key,
            } => {
                map.serialize_entry("pairingCode", pairing_code)?;
                map.serialize_entry("publicKey", public_key)?;
            }
            Self::PairRequest {
                target_code,
                proposed_name,
            } => {
                map.serialize_entry("targetCode", target_code)?;
                if let Some(name) = proposed_name {
                    map.serialize_entry("proposedName", name)?;
                }
            }
            Self::PairResponse {
                target_code,
                accepted,
            } => {
                map.serialize_entry("targetCode", target_code)?;
                map.serialize_entry("accepted", accepted)?;
            }
            Self::Ping => {}
            _ => {
                if let Some((target, payload)) = self.forwarded() {
                    if self.call_form() == Some(CallForm::Flat) {
                        if let Some(call_id) = payload.get("callId") {
                            map.serialize_entry("callId", call_id)?;
                        }
                        map.serialize_entry("targetId", &target)?;
                        for (key, value) in payload {
                            if !matches!(key.as_str(), "type" | "target" | "targetId" | "callId") {
                                map.serialize_entry(key, value)?;
                            }
                        }
                    } else {
                        map.serialize_entry("target", &target)?;
                        map.serialize_entry("payload", payload)?;
                    }
                }
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ClientMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(value).map_err(D::Error::custom)
    }
}

fn type_requires_registration(type_name: &str) -> bool {
    !matches!(type_name, "register" | "ping")
}

/// A required string field; absent, `null` and `""` count as missing.
fn string_field(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<String, SignalingError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(SignalingError::MissingField(field)),
        Some(Value::String(text)) if text.is_empty() => Err(SignalingError::MissingField(field)),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(SignalingError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn code_field(
    object: &Map<String, Value>,
    field: &'static str,
    invalid: SignalingError,
) -> Result<PairingCode, SignalingError> {
    PairingCode::parse(&string_field(object, field)?).map_err(|_| invalid)
}

fn payload_field(object: &mut Map<String, Value>) -> Result<Map<String, Value>, SignalingError> {
    match object.remove("payload") {
        None | Some(Value::Null) => Err(SignalingError::MissingField("payload")),
        Some(Value::Object(payload)) => Ok(payload),
        Some(_) => Err(SignalingError::WrongType {
            field: "payload",
            expected: "an object",
        }),
    }
}

/// A STUN or TURN server for the `ice_servers` extension (WebRTC's `RTCIceServer`).
///
/// `urls` is always written as an array; a single string is accepted when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

/// A frame a relay sends.
///
/// Codes and keys are plain strings here so that clients can read frames
/// from any server; relays fill them from validated [`PairingCode`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// First frame on every connection.
    ServerInfo {
        server_id: String,
        endpoint: String,
        region: String,
    },
    /// The code is bound to this connection.
    Registered {
        pairing_code: String,
        server_id: String,
    },
    /// The code is bound to another live connection ([`CODE_COLLISION`]).
    CodeCollision { message: String },
    /// To a pair request's target; `expiresIn` in ms, `proposedName` omitted when `None`.
    PairIncoming {
        from_code: String,
        from_public_key: String,
        expires_in: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proposed_name: Option<String>,
    },
    /// To both peers when the target accepts (`isInitiator` true for the requester).
    PairMatched {
        peer_code: String,
        peer_public_key: String,
        is_initiator: bool,
    },
    /// To the requester when the target declines.
    PairRejected { peer_code: String },
    /// A refused pair request or response.
    PairError { error: String },
    /// To both sides [`PAIR_EXPIRING_WARNING_MS`] before a request expires.
    PairExpiring {
        peer_code: String,
        remaining_seconds: u64,
    },
    /// To the requester when its request expired.
    PairTimeout { peer_code: String },
    /// A forwarded `offer`.
    Offer {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `answer`.
    Answer {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `ice_candidate`.
    IceCandidate {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `call_offer`.
    CallOffer {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `call_answer`.
    CallAnswer {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `call_reject`.
    CallReject {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `call_hangup`.
    CallHangup {
        from: String,
        payload: Map<String, Value>,
    },
    /// A forwarded `call_ice`.
    CallIce {
        from: String,
        payload: Map<String, Value>,
    },
    /// STUN/TURN servers (our extension; only to clients that asked).
    IceServers { ice_servers: Vec<IceServer> },
    /// Answer to `ping`.
    Pong,
    /// A refusal.
    Error { message: String },
    /// A type this crate does not know, kept whole.
    #[serde(untagged)]
    Unknown(UnknownMessage),
}

impl ServerMessage {
    /// Parses a server frame. Unknown types give [`ServerMessage::Unknown`].
    pub fn parse(text: &str) -> Result<Self, SignalingError> {
        let value: Value = serde_json::from_str(text).map_err(|_| SignalingError::Json)?;
        Self::from_json(value)
    }

    /// Reads an already-parsed JSON value like [`Self::parse`].
    pub fn from_json(value: Value) -> Result<Self, SignalingError> {
        let type_name = match value.get("type") {
            Some(Value::String(type_name)) => type_name.clone(),
            _ => return Err(SignalingError::Json),
        };
        serde_json::from_value(value).map_err(|_| SignalingError::InvalidFields(type_name))
    }

    /// `{"type":"error","message":…}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self::Error {
            message: message.into(),
        }
    }

    /// The `error` for a forwarding target that is not connected.
    pub fn peer_not_found(code: &str) -> Self {
        Self::error(peer_not_found(code))
    }

    /// The generic `pair_error` ([`PAIR_REQUEST_FAILED`]).
    pub fn pair_request_failed() -> Self {
        Self::PairError {
            error: PAIR_REQUEST_FAILED.to_string(),
        }
    }

    /// `pair_incoming` with `expiresIn` = [`PAIR_REQUEST_TIMEOUT_MS`]; an
    /// empty name is omitted, as Zajel does.
    pub fn pair_incoming(
        from_code: PairingCode,
        from_public_key: impl Into<String>,
        proposed_name: Option<String>,
    ) -> Self {
        Self::PairIncoming {
            from_code: from_code.to_string(),
            from_public_key: from_public_key.into(),
            expires_in: PAIR_REQUEST_TIMEOUT_MS,
            proposed_name: proposed_name.filter(|name| !name.is_empty()),
        }
    }

    /// `pair_expiring` with `remainingSeconds` = [`PAIR_EXPIRING_REMAINING_SECONDS`].
    pub fn pair_expiring(peer_code: PairingCode) -> Self {
        Self::PairExpiring {
            peer_code: peer_code.to_string(),
            remaining_seconds: PAIR_EXPIRING_REMAINING_SECONDS,
        }
    }

    /// A forwarded call message of `kind`.
    pub fn call(kind: CallKind, from: impl Into<String>, payload: Map<String, Value>) -> Self {
        let from = from.into();
        match kind {
            CallKind::Offer => Self::CallOffer { from, payload },
            CallKind::Answer => Self::CallAnswer { from, payload },
            CallKind::Reject => Self::CallReject { from, payload },
            CallKind::Hangup => Self::CallHangup { from, payload },
            CallKind::Ice => Self::CallIce { from, payload },
        }
    }

    /// The message `type` (an unknown message's own type).
    pub fn type_name(&self) -> &str {
        match self {
            Self::ServerInfo { .. } => "server_info",
            Self::Registered { .. } => "registered",
            Self::CodeCollision { .. } => "code_collision",
            Self::PairIncoming { .. } => "pair_incoming",
            Self::PairMatched { .. } => "pair_matched",
            Self::PairRejected { .. } => "pair_rejected",
            Self::PairError { .. } => "pair_error",
            Self::PairExpiring { .. } => "pair_expiring",
            Self::PairTimeout { .. } => "pair_timeout",
            Self::Offer { .. } => "offer",
            Self::Answer { .. } => "answer",
            Self::IceCandidate { .. } => "ice_candidate",
            Self::CallOffer { .. } => "call_offer",
            Self::CallAnswer { .. } => "call_answer",
            Self::CallReject { .. } => "call_reject",
            Self::CallHangup { .. } => "call_hangup",
            Self::CallIce { .. } => "call_ice",
            Self::IceServers { .. } => "ice_servers",
            Self::Pong => "pong",
            Self::Error { .. } => "error",
            Self::Unknown(unknown) => &unknown.type_name,
        }
    }

    /// The call kind of a forwarded `call_*` message.
    pub fn call_kind(&self) -> Option<CallKind> {
        match self {
            Self::CallOffer { .. }
            | Self::CallAnswer { .. }
            | Self::CallReject { .. }
            | Self::CallHangup { .. }
            | Self::CallIce { .. } => CallKind::from_type(self.type_name()),
            _ => None,
        }
    }

    /// The sender and payload of a forwarded message.
    pub fn forwarded(&self) -> Option<(&str, &Map<String, Value>)> {
        match self {
            Self::Offer { from, payload }
            | Self::Answer { from, payload }
            | Self::IceCandidate { from, payload }
            | Self::CallOffer { from, payload }
            | Self::CallAnswer { from, payload }
            | Self::CallReject { from, payload }
            | Self::CallHangup { from, payload }
            | Self::CallIce { from, payload } => Some((from, payload)),
            _ => None,
        }
    }

    /// The typed, validated payload of a forwarded `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        let kind = self.call_kind()?;
        let (_, payload) = self.forwarded()?;
        Some(CallPayload::from_map(kind, payload))
    }

    /// The frame as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The frame as JSON text, `type` first.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Like [`Self::to_text`], but a forwarded `call_*` message also carries
    /// its payload's call fields at the top level for Zajel's web client
    /// (our extension, see the module documentation):
    /// `{"type","from","payload":{…},"callId",…}`.
    pub fn to_text_with_flat_call_fields(&self) -> String {
        match self.flat_delivery() {
            Some(delivery) => serde_json::to_string(&delivery).unwrap_or_default(),
            None => self.to_text(),
        }
    }

    /// [`Self::to_text_with_flat_call_fields`] as a JSON value.
    pub fn to_json_with_flat_call_fields(&self) -> Value {
        match self.flat_delivery() {
            Some(delivery) => serde_json::to_value(&delivery).unwrap_or_default(),
            None => self.to_json(),
        }
    }

    fn flat_delivery(&self) -> Option<FlatDelivery<'_>> {
        let kind = self.call_kind()?;
        let (from, payload) = self.forwarded()?;
        Some(FlatDelivery {
            type_name: kind.type_name(),
            from,
            payload,
            flat: flat_call_fields(kind, payload),
        })
    }
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The fields of `payload` that a delivered call message of `kind` repeats
/// at the top level for Zajel's web client: those of [`CallKind::fields`]
/// that are present. Nothing else is copied, so a payload can never
/// overwrite `type`, `from` or `payload`.
pub fn flat_call_fields(kind: CallKind, payload: &Map<String, Value>) -> Map<String, Value> {
    kind.fields()
        .iter()
        .filter_map(|field| Some((field.to_string(), payload.get(*field)?.clone())))
        .collect()
}

#[derive(Serialize)]
struct FlatDelivery<'a> {
    #[serde(rename = "type")]
    type_name: &'static str,
    from: &'a str,
    payload: &'a Map<String, Value>,
    #[serde(flatten)]
    flat: Map<String, Value>,
}

/// A server frame of a type this crate does not know.
///
/// Serialises as `{"type":<type_name>, …fields}`. Reading refuses the types
/// this crate knows, so a malformed known frame is an error, not `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMessage {
    pub type_name: String,
    /// Every field but `type`.
    pub fields: Map<String, Value>,
}

impl Serialize for UnknownMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &self.type_name)?;
        for (key, value) in &self.fields {
            if key != "type" {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for UnknownMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = Map::deserialize(deserializer)?;
        let type_name = match fields.remove("type") {
            Some(Value::String(type_name)) => type_name,
            _ => return Err(D::Error::custom("message has no string type")),
        };
        if SERVER_MESSAGE_TYPES.contains(&type_name.as_str()) {
            return Err(D::Error::custom(format!(
                "{type_name} has missing or invalid fields"
            )));
        }
        Ok(Self { type_name, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallOffer, IceCandidateInit};
    use serde_json::json;

    const ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    const KEY: &str = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn parse(value: Value) -> Result<ClientMessage, SignalingError> {
        ClientMessage::parse(&value.to_string())
    }

    fn error_text(value: Value) -> String {
        parse(value).unwrap_err().to_string()
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn constants_match_the_reference() {
        assert_eq!(MAX_FRAME_BYTES, 64 * 1024);
        assert_eq!(CLOSE_MESSAGE_TOO_BIG, 1009);
        assert_eq!((RATE_LIMIT_MESSAGES, RATE_LIMIT_WINDOW_MS), (100, 60_000));
        assert_eq!((PAIR_REQUEST_LIMIT, PAIR_REQUEST_WINDOW_MS), (10, 60_000));
        assert_eq!(MAX_PENDING_PER_TARGET, 10);
        assert_eq!(PAIR_REQUEST_TIMEOUT_MS, 120_000);
        assert_eq!(PAIR_EXPIRING_WARNING_MS, 30_000);
        assert_eq!(PAIR_EXPIRING_REMAINING_SECONDS, 30);
        assert_eq!(
            RATE_LIMIT_EXCEEDED,
            "Rate limit exceeded. Please slow down."
        );
        assert_eq!(
            NOT_REGISTERED,
            "Not registered. Send register message first."
        );
        assert_eq!(PAIR_REQUEST_FAILED, "Pair request could not be processed");
        assert_eq!(peer_not_found("ABC234"), "Peer not found: ABC234");
        assert_eq!(SignalingError::NotRegistered.to_string(), NOT_REGISTERED);
        assert_eq!(SignalingError::Json.to_string(), JSON_PARSE_ERROR);
    }

    #[test]
    fn unparsable_frames_are_json_parse_errors() {
        for bad in [
            "",
            "{",
            "not json",
            "[]",
            "null",
            "\"register\"",
            "42",
            "{}",
            r#"{"type":null}"#,
            r#"{"type":5}"#,
            r#"{"type":["ping"]}"#,
            r#"{"Type":"ping"}"#,
        ] {
            assert_eq!(
                ClientMessage::parse(bad),
                Err(SignalingError::Json),
                "{bad}"
            );
            assert_eq!(
                ClientMessage::parse(bad).unwrap_err().to_string(),
                "Invalid message format: JSON parse error"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(ClientMessage::parse(&deep), Err(SignalingError::Json));
    }

    #[test]
    fn unknown_types_are_named() {
        assert_eq!(
            error_text(json!({"type": "link_request"})),
            "Unknown message type: link_request"
        );
        assert_eq!(error_text(json!({"type": ""})), "Unknown message type: ");
        assert_eq!(
            error_text(json!({"type": "PING"})),
            "Unknown message type: PING"
        );
        assert_eq!(
            error_text(json!({"type": "pong"})),
            "Unknown message type: pong"
        );
    }

    #[test]
    fn frames_over_64_kib_are_refused_before_parsing() {
        let padding = "x".repeat(MAX_FRAME_BYTES);
        let text = format!(r#"{{"type":"ping","pad":"{padding}"}}"#);
        assert_eq!(
            ClientMessage::parse(&text),
            Err(SignalingError::FrameTooLarge)
        );
        let pad_len = MAX_FRAME_BYTES - r#"{"type":"ping","pad":""}"#.len();
        let exact = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(pad_len));
        assert_eq!(exact.len(), MAX_FRAME_BYTES);
        assert_eq!(ClientMessage::parse(&exact), Ok(ClientMessage::Ping));
    }

    #[test]
    fn register_round_trips_and_checks_its_fields() {
        let message =
            parse(json!({"type": "register", "pairingCode": "ABC234", "publicKey": KEY})).unwrap();
        assert_eq!(
            message,
            ClientMessage::Register {
                pairing_code: code("ABC234"),
                public_key: KEY.into(),
            }
        );
        assert_eq!(
            message.to_text(),
            format!(r#"{{"type":"register","pairingCode":"ABC234","publicKey":"{KEY}"}}"#)
        );
        assert!(!message.requires_registration());
        assert_eq!(ClientMessage::parse(&message.to_text()).unwrap(), message);
        // Unpadded base64 is accepted, as Zajel's server does.
        assert!(parse(json!({"type": "register", "pairingCode": "ABC234", "publicKey": KEY.trim_end_matches('=')})).is_ok());

        assert_eq!(
            error_text(json!({"type": "register", "publicKey": KEY})),
            "Invalid message format: missing field pairingCode"
        );
        assert_eq!(
            error_text(json!({"type": "register", "pairingCode": "", "publicKey": KEY})),
            "Invalid message format: missing field pairingCode"
        );
        assert_eq!(
            error_text(json!({"type": "register", "pairingCode": 123456, "publicKey": KEY})),
            "Invalid message format: pairingCode must be a string"
        );
        assert_eq!(
            error_text(json!({"type": "register", "pairingCode": "abc234", "publicKey": KEY})),
            "Invalid pairing code format"
        );
        assert_eq!(
            error_text(json!({"type": "register", "pairingCode": "ABC234"})),
            "Invalid message format: missing field publicKey"
        );
        for bad_key in [
            json!("AAAA"),
            json!("not base64!!"),
            json!(format!("{KEY}AAAA")),
        ] {
            assert_eq!(
                error_text(
                    json!({"type": "register", "pairingCode": "ABC234", "publicKey": bad_key})
                ),
                "Invalid public key format"
            );
        }
        assert_eq!(
            error_text(json!({"type": "register", "pairingCode": "ABC234", "publicKey": [1]})),
            "Invalid message format: publicKey must be a string"
        );
    }

    #[test]
    fn pair_request_and_response_round_trip() {
        let request =
            parse(json!({"type": "pair_request", "targetCode": "XYZ789", "proposedName": "Alice"}))
                .unwrap();
        assert_eq!(
            request,
            ClientMessage::PairRequest {
                target_code: code("XYZ789"),
                proposed_name: Some("Alice".into()),
            }
        );
        assert_eq!(
            request.to_text(),
            r#"{"type":"pair_request","targetCode":"XYZ789","proposedName":"Alice"}"#
        );
        let anonymous =
            parse(json!({"type": "pair_request", "targetCode": "XYZ789", "proposedName": ""}))
                .unwrap();
        assert_eq!(
            anonymous.to_text(),
            r#"{"type":"pair_request","targetCode":"XYZ789"}"#
        );
        assert_eq!(
            parse(json!({"type": "pair_request", "targetCode": "XYZ789", "proposedName": null}))
                .unwrap(),
            anonymous
        );
        assert_eq!(
            error_text(json!({"type": "pair_request"})),
            "Invalid message format: missing field targetCode"
        );
        assert_eq!(
            error_text(json!({"type": "pair_request", "targetCode": "XYZ78"})),
            "Invalid target code format"
        );
        assert_eq!(
            error_text(json!({"type": "pair_request", "targetCode": "XYZ789", "proposedName": 7})),
            "Invalid message format: proposedName must be a string"
        );

        let response =
            parse(json!({"type": "pair_response", "targetCode": "ABC234", "accepted": true}))
                .unwrap();
        assert_eq!(
            response.to_text(),
            r#"{"type":"pair_response","targetCode":"ABC234","accepted":true}"#
        );
        assert_eq!(ClientMessage::parse(&response.to_text()).unwrap(), response);
        assert_eq!(
            error_text(json!({"type": "pair_response", "targetCode": "ABC234"})),
            "Invalid message format: missing field accepted"
        );
        assert_eq!(
            error_text(json!({"type": "pair_response", "targetCode": "ABC234", "accepted": "yes"})),
            "Invalid message format: accepted must be a boolean"
        );
        assert_eq!(
            error_text(json!({"type": "pair_response", "targetCode": "ABC234", "accepted": 1})),
            "Invalid message format: accepted must be a boolean"
        );
    }

    #[test]
    fn webrtc_signaling_needs_a_target_and_an_object_payload() {
        for type_name in ["offer", "answer", "ice_candidate"] {
            let message = parse(json!({"type": type_name, "target": "ABC234", "payload": {"sdp": "v=0", "type": "offer"}}))
                .unwrap();
            assert_eq!(message.type_name(), type_name);
            assert_eq!(message.target(), Some(code("ABC234")));
            assert_eq!(
                message.payload(),
                Some(&map(json!({"sdp": "v=0", "type": "offer"})))
            );
            assert_eq!(ClientMessage::parse(&message.to_text()).unwrap(), message);
            assert_eq!(
                message.to_json(),
                json!({"type": type_name, "target": "ABC234", "payload": {"sdp": "v=0", "type": "offer"}})
            );
            assert!(message.to_text().starts_with(&format!(
                r#"{{"type":"{type_name}","target":"ABC234","payload":"#
            )));

            assert_eq!(
                error_text(json!({"type": type_name, "payload": {}})),
                "Invalid message format: missing field target"
            );
            assert_eq!(
                error_text(json!({"type": type_name, "target": "ABC234"})),
                "Invalid message format: missing field payload"
            );
            assert_eq!(
                error_text(json!({"type": type_name, "target": "ABC234", "payload": null})),
                "Invalid message format: missing field payload"
            );
            for bad in [json!("x"), json!([1]), json!(3), json!(false)] {
                assert_eq!(
                    error_text(json!({"type": type_name, "target": "ABC234", "payload": bad})),
                    "Invalid message format: payload must be an object"
                );
            }
            assert_eq!(
                error_text(json!({"type": type_name, "target": "abc234", "payload": {}})),
                "Invalid target code format"
            );
            assert_eq!(
                error_text(json!({"type": type_name, "target": 5, "payload": {}})),
                "Invalid message format: target must be a string"
            );
        }
    }

    #[test]
    fn ping_and_registration_rules() {
        assert_eq!(parse(json!({"type": "ping"})), Ok(ClientMessage::Ping));
        assert_eq!(ClientMessage::Ping.to_text(), r#"{"type":"ping"}"#);
        let pair = json!({"type": "pair_request", "targetCode": "bad"}).to_string();
        assert_eq!(
            ClientMessage::parse_for_connection(&pair, false),
            Err(SignalingError::NotRegistered)
        );
        assert_eq!(
            ClientMessage::parse_for_connection(&pair, true),
            Err(SignalingError::InvalidTargetCode)
        );
        for type_name in &CLIENT_MESSAGE_TYPES[1..11] {
            let text = json!({"type": type_name}).to_string();
            assert_eq!(
                ClientMessage::parse_for_connection(&text, false),
                Err(SignalingError::NotRegistered),
                "{type_name}"
            );
        }
        assert_eq!(
            ClientMessage::parse_for_connection(r#"{"type":"ping"}"#, false),
            Ok(ClientMessage::Ping)
        );
        assert!(ClientMessage::parse_for_connection(
            &json!({"type": "register", "pairingCode": "ABC234", "publicKey": KEY}).to_string(),
            false
        )
        .is_ok());
        // Unknown and unparsable frames are reported as such even unregistered.
        assert_eq!(
            ClientMessage::parse_for_connection(r#"{"type":"nope"}"#, false),
            Err(SignalingError::UnknownType("nope".into()))
        );
        assert_eq!(
            ClientMessage::parse_for_connection("{", false),
            Err(SignalingError::Json)
        );
        assert_eq!(
            SignalingError::NotRegistered.to_server_message().to_text(),
            r#"{"type":"error","message":"Not registered. Send register message first."}"#
        );
    }

    #[test]
    fn call_messages_validate_their_payloads() {
        let offer = json!({"type": "call_offer", "target": "ABC234", "payload": {"callId": ID, "sdp": "v=0", "withVideo": true}});
        let message = parse(offer.clone()).unwrap();
        assert_eq!(message.call_kind(), Some(CallKind::Offer));
        assert_eq!(message.call_form(), Some(CallForm::Envelope));
        assert_eq!(message.to_json(), offer);
        assert!(message
            .to_text()
            .starts_with(r#"{"type":"call_offer","target":"ABC234","payload":{"#));
        assert_eq!(
            message.call_payload().unwrap().unwrap(),
            CallPayload::Offer(CallOffer {
                call_id: ID.into(),
                sdp: "v=0".into(),
                with_video: true
            })
        );
        assert_eq!(
            error_text(
                json!({"type": "call_offer", "target": "ABC234", "payload": {"callId": "nope", "sdp": "v=0", "withVideo": true}})
            ),
            "Invalid call payload: callId must be a UUID v4"
        );
        assert_eq!(
            error_text(
                json!({"type": "call_answer", "target": "ABC234", "payload": {"callId": ID, "sdp": ""}})
            ),
            "Invalid call payload: sdp must be a non-empty string of at most 65536 characters"
        );
        assert_eq!(
            error_text(
                json!({"type": "call_ice", "target": "ABC234", "payload": {"callId": ID, "candidate": "c".repeat(1025)}})
            ),
            "Invalid call payload: candidate must be a non-empty string of at most 1024 characters"
        );
        assert_eq!(
            error_text(
                json!({"type": "call_reject", "target": "ABC234", "payload": {"callId": ID, "reason": "bored"}})
            ),
            "Invalid call payload: reason must be busy, declined or timeout"
        );
        assert_eq!(
            error_text(json!({"type": "call_hangup", "target": "ABC234", "payload": [ID]})),
            "Invalid message format: payload must be an object"
        );
        assert_eq!(
            error_text(json!({"type": "call_hangup", "target": "ABC234"})),
            "Invalid message format: missing field payload"
        );
        assert_eq!(
            error_text(json!({"type": "call_hangup", "payload": {"callId": ID}})),
            "Invalid message format: missing field target"
        );
        // An sdp at the character limit, in multi-byte characters, fits the
        // call rules but not the frame limit.
        let big = json!({"type": "call_answer", "target": "ABC234", "payload": {"callId": ID, "sdp": "é".repeat(65_536)}});
        assert_eq!(parse(big), Err(SignalingError::FrameTooLarge));
        let at_limit = json!({"type": "call_answer", "target": "ABC234", "payload": {"callId": ID, "sdp": "a".repeat(65_400)}});
        assert!(parse(at_limit).is_ok());
    }

    #[test]
    fn every_call_kind_round_trips_in_the_envelope_form() {
        let payloads = [
            json!({"callId": ID, "sdp": "v=0", "withVideo": false}),
            json!({"callId": ID, "sdp": "v=0"}),
            json!({"callId": ID, "reason": "busy"}),
            json!({"callId": ID}),
            json!({"callId": ID, "candidate": IceCandidateInit::new("candidate:1", Some("0".into()), Some(0)).to_candidate_string()}),
        ];
        for (kind, payload) in CallKind::ALL.into_iter().zip(payloads) {
            let typed = CallPayload::parse(kind, &payload).unwrap();
            let message = ClientMessage::call(code("XYZ789"), &typed);
            assert_eq!(message.call_kind(), Some(kind));
            assert_eq!(
                message.to_json(),
                json!({"type": kind.type_name(), "target": "XYZ789", "payload": payload})
            );
            let parsed = ClientMessage::parse(&message.to_text()).unwrap();
            assert_eq!(parsed, message);
            assert_eq!(parsed.call_payload().unwrap().unwrap(), typed);
            assert!(parsed.requires_registration());
        }
    }

    #[test]
    fn the_flat_web_client_form_is_normalised() {
        let flat = json!({"type": "call_offer", "callId": ID, "targetId": "ABC234", "sdp": "v=0", "withVideo": true});
        let message = parse(flat.clone()).unwrap();
        assert_eq!(
            message,
            ClientMessage::CallOffer {
                target: code("ABC234"),
                payload: map(json!({"callId": ID, "sdp": "v=0", "withVideo": true})),
                form: CallForm::Flat,
            }
        );
        assert_eq!(message.to_json(), flat);
        assert!(message.to_text().starts_with(&format!(
            r#"{{"type":"call_offer","callId":"{ID}","targetId":"ABC234","#
        )));
        assert_eq!(ClientMessage::parse(&message.to_text()).unwrap(), message);

        let ice = parse(json!({"type": "call_ice", "callId": ID, "targetId": "ABC234", "candidate": "{\"candidate\":\"c\"}"}))
            .unwrap();
        assert_eq!(ice.call_form(), Some(CallForm::Flat));
        assert_eq!(
            ice.payload(),
            Some(&map(
                json!({"callId": ID, "candidate": "{\"candidate\":\"c\"}"})
            ))
        );
        let hangup =
            parse(json!({"type": "call_hangup", "callId": ID, "targetId": "ABC234"})).unwrap();
        assert_eq!(hangup.payload(), Some(&map(json!({"callId": ID}))));
        let reject = parse(json!({"type": "call_reject", "callId": ID, "targetId": "ABC234", "reason": "declined", "target": "ZZZZZZ"}))
            .unwrap();
        assert_eq!(reject.target(), Some(code("ABC234")));
        assert_eq!(
            reject.payload(),
            Some(&map(json!({"callId": ID, "reason": "declined"})))
        );
        let answer =
            parse(json!({"type": "call_answer", "callId": ID, "targetId": "ABC234", "sdp": "v=0"}))
                .unwrap();
        assert_eq!(answer.call_kind(), Some(CallKind::Answer));

        // Flat messages are validated like envelopes.
        assert_eq!(
            error_text(
                json!({"type": "call_offer", "callId": ID, "targetId": "ABC234", "sdp": "v=0"})
            ),
            "Invalid call payload: withVideo must be a boolean"
        );
        assert_eq!(
            error_text(
                json!({"type": "call_ice", "callId": "x", "targetId": "ABC234", "candidate": "c"})
            ),
            "Invalid call payload: callId must be a UUID v4"
        );
        assert_eq!(
            error_text(json!({"type": "call_hangup", "callId": ID, "targetId": "abc"})),
            "Invalid target code format"
        );
        assert_eq!(
            error_text(json!({"type": "call_hangup", "callId": ID, "targetId": null})),
            "Invalid message format: missing field targetId"
        );
        // A payload wins over targetId: the envelope form then needs target.
        assert_eq!(
            error_text(
                json!({"type": "call_hangup", "targetId": "ABC234", "payload": {"callId": ID}})
            ),
            "Invalid message format: missing field target"
        );
        // Flat only applies to call messages.
        assert_eq!(
            error_text(json!({"type": "offer", "targetId": "ABC234", "sdp": "v=0"})),
            "Invalid message format: missing field target"
        );
    }

    #[test]
    fn flat_and_envelope_forward_identically() {
        let flat =
            parse(json!({"type": "call_hangup", "callId": ID, "targetId": "ABC234"})).unwrap();
        let envelope =
            parse(json!({"type": "call_hangup", "target": "ABC234", "payload": {"callId": ID}}))
                .unwrap();
        let from = code("XYZ789");
        assert_eq!(flat.forward_from(from), envelope.forward_from(from));
        assert_eq!(
            envelope.forward_from(from).unwrap().to_json(),
            json!({"type": "call_hangup", "from": "XYZ789", "payload": {"callId": ID}})
        );
        assert_eq!(ClientMessage::Ping.forward_from(from), None);
        let offer =
            parse(json!({"type": "offer", "target": "ABC234", "payload": {"sdp": "x"}})).unwrap();
        assert_eq!(
            offer.forward_from(from).unwrap().to_text(),
            r#"{"type":"offer","from":"XYZ789","payload":{"sdp":"x"}}"#
        );
    }

    #[test]
    fn client_messages_deserialize_with_the_same_checks() {
        let ok: ClientMessage = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ok, ClientMessage::Ping);
        let err = serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).unwrap_err();
        assert!(err.to_string().contains("Unknown message type: nope"));
        assert_eq!(
            ClientMessage::from_json(json!({"type": "pair_request", "targetCode": "ABC234"}))
                .unwrap(),
            ClientMessage::PairRequest {
                target_code: code("ABC234"),
                proposed_name: None
            }
        );
    }

    #[test]
    fn server_messages_use_zajels_field_names() {
        let cases = [
            (
                ServerMessage::ServerInfo {
                    server_id: "ed25519:AAAA".into(),
                    endpoint: "wss://r.example".into(),
                    region: "eu".into(),
                },
                r#"{"type":"server_info","serverId":"ed25519:AAAA","endpoint":"wss://r.example","region":"eu"}"#,
            ),
            (
                ServerMessage::Registered {
                    pairing_code: "ABC234".into(),
                    server_id: "ed25519:AAAA".into(),
                },
                r#"{"type":"registered","pairingCode":"ABC234","serverId":"ed25519:AAAA"}"#,
            ),
            (
                ServerMessage::CodeCollision {
                    message: CODE_COLLISION.into(),
                },
                r#"{"type":"code_collision","message":"Pairing code already in use. Please reconnect with a new code."}"#,
            ),
            (
                ServerMessage::pair_incoming(code("ABC234"), KEY, Some("Bob".into())),
                &format!(
                    r#"{{"type":"pair_incoming","fromCode":"ABC234","fromPublicKey":"{KEY}","expiresIn":120000,"proposedName":"Bob"}}"#
                ),
            ),
            (
                ServerMessage::pair_incoming(code("ABC234"), KEY, Some(String::new())),
                &format!(
                    r#"{{"type":"pair_incoming","fromCode":"ABC234","fromPublicKey":"{KEY}","expiresIn":120000}}"#
                ),
            ),
            (
                ServerMessage::PairMatched {
                    peer_code: "XYZ789".into(),
                    peer_public_key: KEY.into(),
                    is_initiator: true,
                },
                &format!(
                    r#"{{"type":"pair_matched","peerCode":"XYZ789","peerPublicKey":"{KEY}","isInitiator":true}}"#
                ),
            ),
            (
                ServerMessage::PairRejected {
                    peer_code: "XYZ789".into(),
                },
                r#"{"type":"pair_rejected","peerCode":"XYZ789"}"#,
            ),
            (
                ServerMessage::pair_request_failed(),
                r#"{"type":"pair_error","error":"Pair request could not be processed"}"#,
            ),
            (
                ServerMessage::pair_expiring(code("XYZ789")),
                r#"{"type":"pair_expiring","peerCode":"XYZ789","remainingSeconds":30}"#,
            ),
            (
                ServerMessage::PairTimeout {
                    peer_code: "XYZ789".into(),
                },
                r#"{"type":"pair_timeout","peerCode":"XYZ789"}"#,
            ),
            (
                ServerMessage::Offer {
                    from: "ABC234".into(),
                    payload: map(json!({"sdp": "v=0"})),
                },
                r#"{"type":"offer","from":"ABC234","payload":{"sdp":"v=0"}}"#,
            ),
            (
                ServerMessage::IceCandidate {
                    from: "ABC234".into(),
                    payload: map(json!({"candidate": "c"})),
                },
                r#"{"type":"ice_candidate","from":"ABC234","payload":{"candidate":"c"}}"#,
            ),
            (ServerMessage::Pong, r#"{"type":"pong"}"#),
            (
                ServerMessage::peer_not_found("XYZ789"),
                r#"{"type":"error","message":"Peer not found: XYZ789"}"#,
            ),
            (
                ServerMessage::error(RATE_LIMIT_EXCEEDED),
                r#"{"type":"error","message":"Rate limit exceeded. Please slow down."}"#,
            ),
            (
                ServerMessage::IceServers {
                    ice_servers: vec![
                        IceServer {
                            urls: vec!["stun:stun.example:3478".into()],
                            username: None,
                            credential: None,
                        },
                        IceServer {
                            urls: vec![
                                "turn:t.example:3478?transport=udp".into(),
                                "turns:t.example:5349".into(),
                            ],
                            username: Some("u".into()),
                            credential: Some("p".into()),
                        },
                    ],
                },
                r#"{"type":"ice_servers","iceServers":[{"urls":["stun:stun.example:3478"]},{"urls":["turn:t.example:3478?transport=udp","turns:t.example:5349"],"username":"u","credential":"p"}]}"#,
            ),
        ];
        for (message, text) in cases {
            assert_eq!(message.to_text(), text);
            assert_eq!(message.to_string(), text);
            assert_eq!(ServerMessage::parse(text).unwrap(), message, "{text}");
            assert_eq!(
                serde_json::from_str::<ServerMessage>(text).unwrap(),
                message
            );
            assert_eq!(
                message.type_name(),
                ServerMessage::parse(text).unwrap().type_name()
            );
            assert!(SERVER_MESSAGE_TYPES.contains(&message.type_name()));
        }
    }

    #[test]
    fn every_call_kind_is_delivered_with_and_without_flat_fields() {
        let payloads = [
            json!({"callId": ID, "sdp": "v=0", "withVideo": true, "extra": 1}),
            json!({"callId": ID, "sdp": "v=0"}),
            json!({"callId": ID, "reason": "timeout"}),
            json!({"callId": ID}),
            json!({"callId": ID, "candidate": "{\"candidate\":\"c\"}"}),
        ];
        for (kind, payload) in CallKind::ALL.into_iter().zip(payloads) {
            let message = ServerMessage::call(kind, "ABC234", map(payload.clone()));
            assert_eq!(message.call_kind(), Some(kind));
            assert_eq!(message.type_name(), kind.type_name());
            let envelope = json!({"type": kind.type_name(), "from": "ABC234", "payload": payload});
            assert_eq!(message.to_json(), envelope);
            assert_eq!(ServerMessage::parse(&message.to_text()).unwrap(), message);
            assert!(message.call_payload().unwrap().is_ok());

            let mut flat = envelope.as_object().unwrap().clone();
            for (key, value) in payload.as_object().unwrap() {
                if key != "extra" {
                    flat.insert(key.clone(), value.clone());
                }
            }
            let delivered = message.to_text_with_flat_call_fields();
            assert_eq!(
                serde_json::from_str::<Value>(&delivered).unwrap(),
                Value::Object(flat.clone())
            );
            assert_eq!(message.to_json_with_flat_call_fields(), Value::Object(flat));
            assert!(delivered.starts_with(&format!(
                r#"{{"type":"{}","from":"ABC234","payload":{{"#,
                kind.type_name()
            )));
            // Envelope readers get the same message back.
            assert_eq!(ServerMessage::parse(&delivered).unwrap(), message);
        }
        // Non-call messages are unchanged.
        assert_eq!(
            ServerMessage::Pong.to_text_with_flat_call_fields(),
            r#"{"type":"pong"}"#
        );
        let offer = ServerMessage::Offer {
            from: "ABC234".into(),
            payload: map(json!({"callId": ID})),
        };
        assert_eq!(offer.to_text_with_flat_call_fields(), offer.to_text());
    }

    #[test]
    fn flat_fields_never_overwrite_the_envelope() {
        let payload = map(json!({"callId": ID, "type": "pong", "from": "EVIL22", "payload": 1}));
        let message = ServerMessage::call(CallKind::Hangup, "ABC234", payload.clone());
        assert_eq!(
            message.to_json_with_flat_call_fields(),
            json!({"type": "call_hangup", "from": "ABC234", "payload": payload, "callId": ID})
        );
        assert_eq!(
            flat_call_fields(CallKind::Reject, &map(json!({"callId": ID}))),
            map(json!({"callId": ID}))
        );
    }

    #[test]
    fn unknown_server_types_are_kept_and_known_ones_checked() {
        let text = r#"{"type":"link_matched","isInitiator":true,"x":{"y":[1]}}"#;
        let message = ServerMessage::parse(text).unwrap();
        assert_eq!(message.type_name(), "link_matched");
        let ServerMessage::Unknown(unknown) = &message else {
            panic!("expected Unknown, got {message:?}");
        };
        assert_eq!(
            unknown.fields,
            map(json!({"isInitiator": true, "x": {"y": [1]}}))
        );
        assert_eq!(
            serde_json::from_str::<Value>(&message.to_text()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert!(message.to_text().starts_with(r#"{"type":"link_matched","#));

        // Extra fields on known types are ignored (Zajel adds `redirects`).
        assert_eq!(
            ServerMessage::parse(
                r#"{"type":"registered","pairingCode":"ABC234","serverId":"s","redirects":[]}"#
            )
            .unwrap(),
            ServerMessage::Registered {
                pairing_code: "ABC234".into(),
                server_id: "s".into()
            }
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"pong","extra":1}"#).unwrap(),
            ServerMessage::Pong
        );
        assert_eq!(
            ServerMessage::parse(
                r#"{"type":"pair_incoming","fromCode":"ABC234","fromPublicKey":"k","expiresIn":5}"#
            )
            .unwrap(),
            ServerMessage::PairIncoming {
                from_code: "ABC234".into(),
                from_public_key: "k".into(),
                expires_in: 5,
                proposed_name: None
            }
        );
        // A single-string `urls` is read as a list.
        assert_eq!(
            ServerMessage::parse(r#"{"type":"ice_servers","iceServers":[{"urls":"stun:s"}]}"#)
                .unwrap(),
            ServerMessage::IceServers {
                ice_servers: vec![IceServer {
                    urls: vec!["stun:s".into()],
                    username: None,
                    credential: None
                }]
            }
        );

        for (bad, error) in [
            (
                r#"{"type":"registered","pairingCode":"ABC234"}"#,
                SignalingError::InvalidFields("registered".into()),
            ),
            (
                r#"{"type":"call_offer","from":"ABC234","payload":"x"}"#,
                SignalingError::InvalidFields("call_offer".into()),
            ),
            (
                r#"{"type":"call_offer","from":"ABC234"}"#,
                SignalingError::InvalidFields("call_offer".into()),
            ),
            (
                r#"{"type":"pair_matched","peerCode":"A","peerPublicKey":"k","isInitiator":"yes"}"#,
                SignalingError::InvalidFields("pair_matched".into()),
            ),
            (
                r#"{"type":"error"}"#,
                SignalingError::InvalidFields("error".into()),
            ),
            (
                r#"{"type":"pair_expiring","peerCode":"A","remainingSeconds":-1}"#,
                SignalingError::InvalidFields("pair_expiring".into()),
            ),
            (r#"{"message":"x"}"#, SignalingError::Json),
            (r#"{"type":7}"#, SignalingError::Json),
            ("[]", SignalingError::Json),
            ("{", SignalingError::Json),
        ] {
            assert_eq!(ServerMessage::parse(bad), Err(error), "{bad}");
            assert!(serde_json::from_str::<ServerMessage>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SignalingError::InvalidFields("registered".into()).to_string(),
            "Invalid message format: registered has missing or invalid fields"
        );
    }

    #[test]
    fn type_lists_cover_every_variant() {
        for type_name in CLIENT_MESSAGE_TYPES {
            let error = ClientMessage::parse(&json!({"type": type_name}).to_string());
            assert!(
                !matches!(error, Err(SignalingError::UnknownType(_))),
                "{type_name}"
            );
        }
        for kind in CallKind::ALL {
            assert!(CLIENT_MESSAGE_TYPES.contains(&kind.type_name()));
            assert!(SERVER_MESSAGE_TYPES.contains(&kind.type_name()));
        }
    }
}
