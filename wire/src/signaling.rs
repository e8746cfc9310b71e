//! Signaling messages: the JSON text frames between clients and a relay.
//!
//! Every frame is one JSON object with a `type`. [`ClientMessage`] is what
//! clients send, [`ServerMessage`] what a relay sends; field names are
//! Zajel's camelCase ones, type names snake_case.
//!
//! # Forwarded messages
//!
//! WebRTC signaling (`offer`, `answer`, `ice_candidate`) and the call
//! messages (`call_*`) go from one client to another through the relay.
//! They share one model: a [`ForwardKind`] (the one list of forwarded
//! kinds, with each kind's type name and the fields of its flat form) plus
//! the peer and the payload. A client sends a [`Forward`]
//! (`{"type","target","payload":{…}}`, [`ClientMessage::Forward`]); the
//! target gets a [`Forwarded`] (`{"type","from","payload":{…}}`,
//! [`ServerMessage::Forwarded`]). [`FORWARDED_MESSAGE_TYPES`],
//! [`CLIENT_MESSAGE_TYPES`] and [`SERVER_MESSAGE_TYPES`] are derived from
//! [`ForwardKind::ALL`], so a new call message is one edit to
//! [`CallKind`] and a new non-call forwarded kind one variant of
//! [`ForwardKind`] (with its type name and its place in `ALL`); parsing,
//! writing, forwarding and the relay's metrics follow.
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
//!    target, and forwarding with [`Forward::delivered_from`].
//!
//! [`ClientMessage::parse`] does the same without the registration check.
//!
//! Rendezvous, device linking, peer relays and `heartbeat` (§5–§7) are in
//! [`crate::rendezvous`]: a relay hands a parsed frame that
//! [`crate::rendezvous::is_relay_request`] claims (those types, and
//! `register` *without* a `pairingCode` key) to
//! [`crate::rendezvous::RelayRequest`], and every other frame to
//! [`ClientMessage::from_json_for_connection`]. [`ClientMessage`] alone
//! answers those types `Unknown message type: <t>`.
//! Codes (`pairingCode`, `targetCode`, `target`) must be valid
//! [`PairingCode`]s and `publicKey` standard base64 of 32 bytes; an absent,
//! `null` or empty field counts as missing, as in Zajel.
//!
//! # The web client's flat call form (accepted)
//!
//! Zajel's web client sends call messages flat:
//! `{"type":"call_offer","callId","targetId","sdp","withVideo"}` (no
//! `payload`, `targetId` instead of `target`). A message of a kind with a
//! flat form ([`ForwardKind::flat_fields`], the call kinds) without
//! `payload` but with `targetId` is read that way: the target is `targetId`
//! and the payload is every remaining field (all but `type`, `target` and
//! `targetId`). The result is the same [`Forward`] with
//! [`ForwardForm::Flat`]; writing it writes the flat form again.
//!
//! # Flat fields on delivered call messages (our extension)
//!
//! Zajel forwards `{"type":<call type>,"from":<code>,"payload":{…}}`, which
//! the Flutter app reads; Zajel's web client reads `callId`, `sdp`,
//! `withVideo`, `candidate` and `reason` at the top level next to `from`.
//! [`ServerMessage::to_text_with_flat_call_fields`] writes the envelope
//! *and* copies those fields of the payload (only the ones the kind's flat
//! form defines, see [`ForwardKind::flat_fields`]) to the top level.
//! Readers of the envelope ignore the extra fields, so it is safe to send
//! to everyone; it does roughly double the size of an offer or answer, so
//! clients must not hold *received* frames to [`MAX_FRAME_BYTES`].
//!
//! # `ice_servers` (our extension)
//!
//! `{"type":"ice_servers","iceServers":[{"urls":[…],"username"?,"credential"?}],"ttl"?}`
//! hands a registered client STUN/TURN servers, `ttl` being how many
//! seconds the credential is valid. Old clients do not know the type, so a
//! relay sends it only to clients that asked for it: a client asks with
//! `"iceServers": true` on `register` ([`ClientMessage::Register`]'s
//! `ice_servers`; servers that do not know the field ignore it).
//!
//! Asking is not enough: since anyone can register, relay-lite sends
//! `ice_servers` only once the connection is paired (to the side that
//! accepted a `pair_request`, just before its `pair_matched`; to the
//! requester, just after its `pair_matched`, so a `ping` sent after
//! `pair_matched` is answered after it) or in a call (it sent or was sent a
//! `call_offer`). The credential is short-lived (10 minutes by default) and
//! a fresh `ice_servers` follows after three quarters of `ttl` for as long as
//! the connection lives; none after it closes. The expiry bounds when a
//! credential can allocate: an allocation made in time keeps refreshing with
//! it. Relays before this rule sent `ice_servers` right after `registered`;
//! clients take it there too.
//!
//! # `identity_challenge` / `identity_proof` (our extension)
//!
//! A client may ask a server to prove it holds the key of its `serverId`:
//! `{"type":"identity_challenge","nonce":<standard base64 of 32 random bytes>}`
//! ([`ClientMessage::IdentityChallenge`]; allowed before `register`, counted
//! by the rate limit like every frame). The server answers
//! `{"type":"identity_proof","serverId","endpoint","nonce","signature"}`
//! ([`IdentityProof`]): `endpoint` is the URL it registers, `nonce` the
//! challenge's, `signature` standard base64 of its Ed25519 signature over
//! `zajel-server-identity-v1` ‖ 0x00 ‖ the 32 nonce bytes ‖ 0x00 ‖ endpoint
//! (see [`crate::signature`] for the bytes and why). A nonce that is not
//! standard base64 of 32 bytes gets `{"type":"error","message":"Invalid nonce
//! format"}` ([`SignalingError::InvalidNonce`]); a missing one the usual
//! missing-field error. Zajel's server answers `Unknown message type:
//! identity_challenge`, which is how a client learns a server cannot prove
//! who it is. Zajel's clients never send it.
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
use crate::signature::{self, IdentityError, IdentityNonce};

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
/// `pair_error` text for every refused pair request (Zajel's server answers
/// unknown, self and over-limit targets with it at once, which tells them
/// from live targets; relay-lite answers those like a silent live target).
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
/// signaling and calls), in [`ForwardKind::ALL`] order; part of [`CLIENT_MESSAGE_TYPES`]
/// and of [`SERVER_MESSAGE_TYPES`].
pub const FORWARDED_MESSAGE_TYPES: [&str; ForwardKind::ALL.len()] = {
    let mut names = [""; ForwardKind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = ForwardKind::ALL[i].type_name();
        i += 1;
    }
    names
};

/// The message types clients send (`identity_challenge` is our extension).
pub const CLIENT_MESSAGE_TYPES: [&str; 3 + FORWARDED_MESSAGE_TYPES.len() + 2] = around_forwarded(
    &["register", "pair_request", "pair_response"],
    &["ping", "identity_challenge"],
);

/// The message types servers send (`ice_servers` and `identity_proof` are our extensions).
pub const SERVER_MESSAGE_TYPES: [&str; 9 + FORWARDED_MESSAGE_TYPES.len() + 4] = around_forwarded(
    &[
        "server_info",
        "registered",
        "code_collision",
        "pair_incoming",
        "pair_matched",
        "pair_rejected",
        "pair_error",
        "pair_expiring",
        "pair_timeout",
    ],
    &["ice_servers", "identity_proof", "pong", "error"],
);

/// `before`, then [`FORWARDED_MESSAGE_TYPES`], then `after` (`N` must be their total length).
const fn around_forwarded<const N: usize>(
    before: &[&'static str],
    after: &[&'static str],
) -> [&'static str; N] {
    let mut names = [""; N];
    let mut n = 0;
    let mut i = 0;
    while i < before.len() {
        names[n] = before[i];
        n += 1;
        i += 1;
    }
    i = 0;
    while i < FORWARDED_MESSAGE_TYPES.len() {
        names[n] = FORWARDED_MESSAGE_TYPES[i];
        n += 1;
        i += 1;
    }
    i = 0;
    while i < after.len() {
        names[n] = after[i];
        n += 1;
        i += 1;
    }
    assert!(n == N, "the list's length is not its parts' total");
    names
}

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
    /// An `identity_challenge`'s `nonce` is not standard base64 of 32 bytes.
    #[error("Invalid nonce format")]
    InvalidNonce,
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

/// A kind of message the relay forwards from one client to another: the one
/// list of them.
///
/// To add a call message, add it to [`CallKind`] (its type name and the
/// fields of its flat form); it is a `ForwardKind::Call` at once. To add a
/// forwarded message that is not a call message, add a variant here with its
/// arm in [`Self::type_name`] (the compiler asks for it) and its place in
/// `SIGNALING` below. Nothing else: [`Self::ALL`], the type lists,
/// [`ClientMessage`], [`ServerMessage`] and the relay's forwarding and
/// metrics follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ForwardKind {
    /// `offer` (WebRTC signaling; envelope form only).
    Offer,
    /// `answer`.
    Answer,
    /// `ice_candidate`.
    IceCandidate,
    /// A call message (`call_*`), with the web client's flat form too.
    Call(CallKind),
}

impl ForwardKind {
    /// The kinds that are not call messages, in protocol order.
    const SIGNALING: &'static [ForwardKind] = &[Self::Offer, Self::Answer, Self::IceCandidate];

    /// Every kind, in protocol order: the WebRTC signaling kinds, then
    /// [`CallKind::ALL`].
    pub const ALL: [ForwardKind; Self::SIGNALING.len() + CallKind::ALL.len()] = {
        let mut all = [Self::Offer; Self::SIGNALING.len() + CallKind::ALL.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < Self::SIGNALING.len() {
                Self::SIGNALING[i]
            } else {
                Self::Call(CallKind::ALL[i - Self::SIGNALING.len()])
            };
            i += 1;
        }
        all
    };

    /// The message `type`.
    pub const fn type_name(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
            Self::IceCandidate => "ice_candidate",
            Self::Call(kind) => kind.type_name(),
        }
    }

    /// The kind for a message `type`, if it is forwarded.
    pub fn from_type(type_name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.type_name() == type_name)
    }

    /// The call kind of a `call_*` kind.
    pub fn call_kind(self) -> Option<CallKind> {
        match self {
            Self::Call(kind) => Some(kind),
            _ => None,
        }
    }

    /// The top-level fields of this kind's flat form (what the web client
    /// sends and reads next to `targetId`/`from`), or `None` for a kind that
    /// has only the envelope form.
    pub fn flat_fields(self) -> Option<&'static [&'static str]> {
        self.call_kind().map(CallKind::fields)
    }
}

impl From<CallKind> for ForwardKind {
    fn from(kind: CallKind) -> Self {
        Self::Call(kind)
    }
}

impl Serialize for ForwardKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.type_name())
    }
}

impl<'de> Deserialize<'de> for ForwardKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let type_name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Self::from_type(&type_name)
            .ok_or_else(|| D::Error::custom(format!("{type_name} is not a forwarded type")))
    }
}

/// Which form a forwarded client message arrived in, and is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ForwardForm {
    /// `{"type","target","payload":{…}}`, Zajel's server form.
    #[default]
    Envelope,
    /// `{"type","targetId",…fields}`, Zajel's web client form; only for
    /// kinds with [`ForwardKind::flat_fields`] (others are written as
    /// envelopes).
    Flat,
}

/// A message a client sends for the relay to forward to `target`
/// ([`ClientMessage::Forward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub kind: ForwardKind,
    /// The peer it goes to.
    pub target: PairingCode,
    /// Forwarded untouched; a call kind's payload has passed
    /// [`crate::call::validate_call_payload`] when it was parsed.
    pub payload: Map<String, Value>,
    /// How it was read and how it is written.
    pub form: ForwardForm,
}

impl Forward {
    /// A message of `kind` in the envelope form (the payload is not checked here).
    pub fn new(kind: ForwardKind, target: PairingCode, payload: Map<String, Value>) -> Self {
        Self {
            kind,
            target,
            payload,
            form: ForwardForm::Envelope,
        }
    }

    /// A call message in the envelope form for a typed payload.
    pub fn call(target: PairingCode, payload: &CallPayload) -> Self {
        Self::new(payload.kind().into(), target, payload.to_map())
    }

    /// Reads the fields of a frame of `kind` (its `type` removed).
    fn read(kind: ForwardKind, mut object: Map<String, Value>) -> Result<Self, SignalingError> {
        let flat = kind.flat_fields().is_some()
            && !object.contains_key("payload")
            && object.contains_key("targetId");
        let (target, payload, form) = if flat {
            let target = code_field(&object, "targetId", SignalingError::InvalidTargetCode)?;
            object.remove("targetId");
            object.remove("target");
            (target, object, ForwardForm::Flat)
        } else {
            let target = code_field(&object, "target", SignalingError::InvalidTargetCode)?;
            (target, payload_field(&mut object)?, ForwardForm::Envelope)
        };
        if let Some(call_kind) = kind.call_kind() {
            call::validate_call_map(call_kind, &payload)?;
        }
        Ok(Self {
            kind,
            target,
            payload,
            form,
        })
    }

    /// The typed payload of a `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        Some(CallPayload::from_map(self.kind.call_kind()?, &self.payload))
    }

    /// What the relay delivers to the target:
    /// `{"type":<same>,"from":<sender code>,"payload":<same>}`.
    pub fn delivered_from(&self, from: PairingCode) -> Forwarded {
        Forwarded::new(self.kind, from.to_string(), self.payload.clone())
    }
}

impl Serialize for Forward {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &self.kind)?;
        if self.form == ForwardForm::Flat && self.kind.flat_fields().is_some() {
            if let Some(call_id) = self.payload.get("callId") {
                map.serialize_entry("callId", call_id)?;
            }
            map.serialize_entry("targetId", &self.target)?;
            for (key, value) in &self.payload {
                if !matches!(key.as_str(), "type" | "target" | "targetId" | "callId") {
                    map.serialize_entry(key, value)?;
                }
            }
        } else {
            map.serialize_entry("target", &self.target)?;
            map.serialize_entry("payload", &self.payload)?;
        }
        map.end()
    }
}

/// A forwarded message as its target gets it ([`ServerMessage::Forwarded`]):
/// `{"type","from","payload":{…}}`.
///
/// `from` is a plain string so that clients can read frames from any server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    #[serde(rename = "type")]
    pub kind: ForwardKind,
    /// The sender's code.
    pub from: String,
    pub payload: Map<String, Value>,
}

impl Forwarded {
    /// A forwarded message of `kind` from `from`.
    pub fn new(kind: ForwardKind, from: impl Into<String>, payload: Map<String, Value>) -> Self {
        Self {
            kind,
            from: from.into(),
            payload,
        }
    }

    /// The typed, validated payload of a `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        Some(CallPayload::from_map(self.kind.call_kind()?, &self.payload))
    }

    /// The fields of the payload that a delivery repeats at the top level
    /// for Zajel's web client ([`flat_call_fields`]).
    pub fn flat_fields(&self) -> Map<String, Value> {
        flat_call_fields(self.kind, &self.payload)
    }

    fn flat_delivery(&self) -> FlatDelivery<'_> {
        FlatDelivery {
            forwarded: self,
            flat: self.flat_fields(),
        }
    }
}

/// A frame a client sends.
///
/// Serialises to Zajel's JSON (forwarded messages in the form they carry)
/// and deserialises with the same checks as [`ClientMessage::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"type":"register","pairingCode","publicKey","iceServers"?}`.
    Register {
        pairing_code: PairingCode,
        /// Standard base64 of a 32-byte X25519 key, as sent.
        public_key: String,
        /// `"iceServers": true`: the client asks for `ice_servers` (our
        /// extension). Read as `false` when absent or anything but `true`;
        /// written only when `true`.
        ice_servers: bool,
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
    /// A message for the relay to forward (`offer`, `answer`,
    /// `ice_candidate`, `call_*`: every [`ForwardKind`]).
    Forward(Forward),
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"identity_challenge","nonce"}` (our extension): asks the
    /// server for an [`IdentityProof`]; allowed before `register`.
    IdentityChallenge { nonce: IdentityNonce },
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

    /// Reads an already-parsed JSON value with the checks of
    /// [`Self::parse_for_connection`] (for a relay that first asked
    /// [`crate::rendezvous::is_relay_request`] about the same value).
    pub fn from_json_for_connection(
        value: Value,
        registered: bool,
    ) -> Result<Self, SignalingError> {
        Self::from_value(value, Some(registered))
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
        if let Some(kind) = ForwardKind::from_type(&type_name) {
            return Forward::read(kind, object).map(Self::Forward);
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
                    ice_servers: object.get("iceServers") == Some(&Value::Bool(true)),
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
            "identity_challenge" => Self::IdentityChallenge {
                nonce: signature::decode_identity_nonce(&string_field(&object, "nonce")?)
                    .map_err(|_| SignalingError::InvalidNonce)?,
            },
            _ => Self::Ping,
        })
    }

    /// A call message in the envelope form for a typed payload.
    pub fn call(target: PairingCode, payload: &CallPayload) -> Self {
        Self::Forward(Forward::call(target, payload))
    }

    /// The message `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "register",
            Self::PairRequest { .. } => "pair_request",
            Self::PairResponse { .. } => "pair_response",
            Self::Forward(forward) => forward.kind.type_name(),
            Self::Ping => "ping",
            Self::IdentityChallenge { .. } => "identity_challenge",
        }
    }

    /// Whether the sender must have registered first (all but `register`,
    /// `ping` and `identity_challenge`).
    pub fn requires_registration(&self) -> bool {
        type_requires_registration(self.type_name())
    }

    /// The message to forward, if this is one.
    pub fn forward(&self) -> Option<&Forward> {
        match self {
            Self::Forward(forward) => Some(forward),
            _ => None,
        }
    }

    /// The call kind of a `call_*` message.
    pub fn call_kind(&self) -> Option<CallKind> {
        self.forward()?.kind.call_kind()
    }

    /// The peer a forwarded message goes to.
    pub fn target(&self) -> Option<PairingCode> {
        self.forward().map(|forward| forward.target)
    }

    /// The payload of a forwarded message.
    pub fn payload(&self) -> Option<&Map<String, Value>> {
        self.forward().map(|forward| &forward.payload)
    }

    /// The typed payload of a `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        self.forward()?.call_payload()
    }

    /// What the relay delivers to the target of a forwarded message
    /// ([`Forward::delivered_from`]); `None` for messages that are not forwarded.
    pub fn forward_from(&self, from: PairingCode) -> Option<ServerMessage> {
        Some(ServerMessage::Forwarded(
            self.forward()?.delivered_from(from),
        ))
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
        if let Self::Forward(forward) = self {
            return forward.serialize(serializer);
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.type_name())?;
        match self {
            Self::Register {
                pairing_code,
                public_key,
                ice_servers,
            } => {
                map.serialize_entry("pairingCode", pairing_code)?;
                map.serialize_entry("publicKey", public_key)?;
                if *ice_servers {
                    map.serialize_entry("iceServers", &true)?;
                }
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
            Self::IdentityChallenge { nonce } => {
                map.serialize_entry("nonce", &signature::encode_identity_nonce(nonce))?;
            }
            Self::Forward(_) | Self::Ping => {}
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
    !matches!(type_name, "register" | "ping" | "identity_challenge")
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

/// `{"type":"identity_proof","serverId","endpoint","nonce","signature"}`:
/// a server's answer to `identity_challenge` (our extension; see the module
/// documentation and [`crate::signature`] for the signed bytes). Fields are
/// plain strings so that any server's answer can be read; [`Self::verify`]
/// checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityProof {
    /// `ed25519:<standard base64 of the public key>`: the key that signed.
    pub server_id: String,
    /// The endpoint URL the server registers, as signed.
    pub endpoint: String,
    /// The challenge's nonce, standard base64.
    pub nonce: String,
    /// Standard base64 of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl IdentityProof {
    /// The proof a server holding `key` and registering `endpoint` gives for `nonce`.
    pub fn sign(key: &ed25519_dalek::SigningKey, nonce: &IdentityNonce, endpoint: &str) -> Self {
        Self {
            server_id: crate::keys::server_id_for(&key.verifying_key()),
            endpoint: endpoint.to_string(),
            nonce: signature::encode_identity_nonce(nonce),
            signature: signature::sign_identity(key, nonce, endpoint),
        }
    }

    /// Checks that this answers `nonce` (the challenge the client sent) and
    /// that the signature verifies by the key inside `serverId` over the
    /// nonce and `endpoint`; returns that key. The caller still compares
    /// `serverId` and `endpoint` with the ones it expects.
    pub fn verify(
        &self,
        nonce: &IdentityNonce,
    ) -> Result<ed25519_dalek::VerifyingKey, IdentityError> {
        if signature::decode_identity_nonce(&self.nonce)? != *nonce {
            return Err(IdentityError::WrongNonce);
        }
        signature::verify_identity(&self.server_id, nonce, &self.endpoint, &self.signature)
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
    /// STUN/TURN servers (our extension; only to clients that asked).
    /// `ttl`: seconds the TURN credential is valid for (ours too), written
    /// after `iceServers` and omitted when `None`.
    IceServers {
        ice_servers: Vec<IceServer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<u64>,
    },
    /// Answer to `identity_challenge` (our extension).
    IdentityProof(IdentityProof),
    /// Answer to `ping`.
    Pong,
    /// A refusal.
    Error { message: String },
    /// A forwarded message of any [`ForwardKind`], its `type` the kind's.
    #[serde(untagged)]
    Forwarded(Forwarded),
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

    /// A forwarded message of `kind`.
    pub fn forwarded_message(
        kind: impl Into<ForwardKind>,
        from: impl Into<String>,
        payload: Map<String, Value>,
    ) -> Self {
        Self::Forwarded(Forwarded::new(kind.into(), from, payload))
    }

    /// A forwarded call message of `kind`.
    pub fn call(kind: CallKind, from: impl Into<String>, payload: Map<String, Value>) -> Self {
        Self::forwarded_message(kind, from, payload)
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
            Self::IceServers { .. } => "ice_servers",
            Self::IdentityProof(_) => "identity_proof",
            Self::Pong => "pong",
            Self::Error { .. } => "error",
            Self::Forwarded(forwarded) => forwarded.kind.type_name(),
            Self::Unknown(unknown) => &unknown.type_name,
        }
    }

    /// The forwarded message, if this is one.
    pub fn forwarded(&self) -> Option<&Forwarded> {
        match self {
            Self::Forwarded(forwarded) => Some(forwarded),
            _ => None,
        }
    }

    /// The call kind of a forwarded `call_*` message.
    pub fn call_kind(&self) -> Option<CallKind> {
        self.forwarded()?.kind.call_kind()
    }

    /// The typed, validated payload of a forwarded `call_*` message.
    pub fn call_payload(&self) -> Option<Result<CallPayload, CallPayloadError>> {
        self.forwarded()?.call_payload()
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
        match self {
            Self::Forwarded(forwarded) => {
                serde_json::to_string(&forwarded.flat_delivery()).unwrap_or_default()
            }
            _ => self.to_text(),
        }
    }

    /// [`Self::to_text_with_flat_call_fields`] as a JSON value.
    pub fn to_json_with_flat_call_fields(&self) -> Value {
        match self {
            Self::Forwarded(forwarded) => {
                serde_json::to_value(forwarded.flat_delivery()).unwrap_or_default()
            }
            _ => self.to_json(),
        }
    }
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// The fields of `payload` that a delivered message of `kind` repeats at the
/// top level for Zajel's web client: those of [`ForwardKind::flat_fields`]
/// that are present (none for a kind without a flat form). Nothing else is
/// copied, so a payload can never overwrite `type`, `from` or `payload`.
pub fn flat_call_fields(
    kind: impl Into<ForwardKind>,
    payload: &Map<String, Value>,
) -> Map<String, Value> {
    kind.into()
        .flat_fields()
        .unwrap_or_default()
        .iter()
        .filter_map(|field| Some((field.to_string(), payload.get(*field)?.clone())))
        .collect()
}

#[derive(Serialize)]
struct FlatDelivery<'a> {
    #[serde(flatten)]
    forwarded: &'a Forwarded,
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
                ice_servers: false,
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
        let needing_registration = CLIENT_MESSAGE_TYPES
            .iter()
            .filter(|t| !matches!(**t, "register" | "ping" | "identity_challenge"));
        assert_eq!(
            needing_registration.clone().count(),
            3 + FORWARDED_MESSAGE_TYPES.len() - 1
        );
        for type_name in needing_registration {
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
        assert_eq!(
            message.forward().map(|f| f.form),
            Some(ForwardForm::Envelope)
        );
        assert_eq!(message.to_json(), offer);
        assert!(message
            .to_text()
            .starts_with(r#"{"type":"call_offer","target":"ABC234","payload":{"#));
        assert_eq!(
            message.call_payload().unwrap().unwrap(),
            CallPayload::Offer(CallOffer {
                call_id: ID.into(),
                sdp: "v=0".into(),
                with_video: true,
                auth: None,
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
            ClientMessage::Forward(Forward {
                kind: ForwardKind::Call(CallKind::Offer),
                target: code("ABC234"),
                payload: map(json!({"callId": ID, "sdp": "v=0", "withVideo": true})),
                form: ForwardForm::Flat,
            })
        );
        assert_eq!(message.to_json(), flat);
        assert!(message.to_text().starts_with(&format!(
            r#"{{"type":"call_offer","callId":"{ID}","targetId":"ABC234","#
        )));
        assert_eq!(ClientMessage::parse(&message.to_text()).unwrap(), message);

        let ice = parse(json!({"type": "call_ice", "callId": ID, "targetId": "ABC234", "candidate": "{\"candidate\":\"c\"}"}))
            .unwrap();
        assert_eq!(ice.forward().map(|f| f.form), Some(ForwardForm::Flat));
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
                ServerMessage::forwarded_message(
                    ForwardKind::Offer,
                    "ABC234",
                    map(json!({"sdp": "v=0"})),
                ),
                r#"{"type":"offer","from":"ABC234","payload":{"sdp":"v=0"}}"#,
            ),
            (
                ServerMessage::forwarded_message(
                    ForwardKind::IceCandidate,
                    "ABC234",
                    map(json!({"candidate": "c"})),
                ),
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
                    ttl: None,
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
        let offer = ServerMessage::forwarded_message(
            ForwardKind::Offer,
            "ABC234",
            map(json!({"callId": ID})),
        );
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
                }],
                ttl: None
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

    /// A payload every check accepts, for each forwarded kind.
    fn valid_payload(kind: ForwardKind) -> Map<String, Value> {
        map(match kind.call_kind() {
            None => json!({"sdp": "v=0", "type": "offer"}),
            Some(CallKind::Offer) => json!({"callId": ID, "sdp": "v=0", "withVideo": true, "x": 1}),
            Some(CallKind::Answer) => json!({"callId": ID, "sdp": "v=0"}),
            Some(CallKind::Reject) => json!({"callId": ID, "reason": "busy"}),
            Some(CallKind::Hangup) => json!({"callId": ID}),
            Some(CallKind::Ice) => json!({"callId": ID, "candidate": "{\"candidate\":\"c\"}"}),
        })
    }

    #[test]
    fn every_forwarded_kind_round_trips_in_envelope_and_flat_form() {
        for kind in ForwardKind::ALL {
            let payload = valid_payload(kind);
            let envelope =
                ClientMessage::Forward(Forward::new(kind, code("XYZ789"), payload.clone()));
            assert_eq!(envelope.type_name(), kind.type_name());
            assert_eq!(
                envelope.to_json(),
                json!({"type": kind.type_name(), "target": "XYZ789", "payload": payload})
            );
            assert!(envelope.to_text().starts_with(&format!(
                r#"{{"type":"{}","target":"XYZ789","payload":{{"#,
                kind.type_name()
            )));
            assert_eq!(ClientMessage::parse(&envelope.to_text()).unwrap(), envelope);
            assert_eq!(envelope.call_kind(), kind.call_kind());

            let flat = ClientMessage::Forward(Forward {
                form: ForwardForm::Flat,
                ..Forward::new(kind, code("XYZ789"), payload.clone())
            });
            match kind.flat_fields() {
                Some(fields) => {
                    assert!(fields.contains(&"callId"), "{kind:?}");
                    let mut expected = payload.clone();
                    expected.insert("type".into(), json!(kind.type_name()));
                    expected.insert("targetId".into(), json!("XYZ789"));
                    assert_eq!(flat.to_json(), Value::Object(expected), "{kind:?}");
                    assert!(flat.to_text().starts_with(&format!(
                        r#"{{"type":"{}","callId":"{ID}","targetId":"XYZ789""#,
                        kind.type_name()
                    )));
                    assert_eq!(ClientMessage::parse(&flat.to_text()).unwrap(), flat);
                }
                // A kind without a flat form is written as an envelope.
                None => assert_eq!(flat.to_text(), envelope.to_text()),
            }

            let delivered = envelope.forward_from(code("ABC234")).unwrap();
            assert_eq!(flat.forward_from(code("ABC234")), Some(delivered.clone()));
            assert_eq!(
                delivered,
                ServerMessage::Forwarded(Forwarded::new(kind, "ABC234", payload.clone()))
            );
            assert_eq!(delivered.type_name(), kind.type_name());
            assert_eq!(
                delivered.to_text(),
                format!(
                    r#"{{"type":"{}","from":"ABC234","payload":{}}}"#,
                    kind.type_name(),
                    Value::Object(payload.clone())
                )
            );
            assert_eq!(
                ServerMessage::parse(&delivered.to_text()).unwrap(),
                delivered
            );
            let with_flat = delivered.to_json_with_flat_call_fields();
            let mut top_level: Vec<&str> = with_flat
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|key| !matches!(*key, "type" | "from" | "payload"))
                .collect();
            let mut flat_fields: Vec<&str> = kind
                .flat_fields()
                .unwrap_or_default()
                .iter()
                .copied()
                .filter(|field| payload.contains_key(*field))
                .collect();
            top_level.sort_unstable();
            flat_fields.sort_unstable();
            assert_eq!(top_level, flat_fields, "{kind:?}");
            assert_eq!(
                ServerMessage::parse(&delivered.to_text_with_flat_call_fields()).unwrap(),
                delivered
            );
            assert_eq!(
                delivered.call_payload().map(|typed| typed.is_ok()),
                kind.call_kind().map(|_| true)
            );
        }
    }

    #[test]
    fn type_lists_are_derived_from_the_forwarded_kinds() {
        assert_eq!(
            FORWARDED_MESSAGE_TYPES,
            ForwardKind::ALL.map(ForwardKind::type_name)
        );
        // Today's eight, WebRTC signaling first, then the call kinds.
        assert_eq!(
            FORWARDED_MESSAGE_TYPES[..3],
            ["offer", "answer", "ice_candidate"]
        );
        assert_eq!(
            FORWARDED_MESSAGE_TYPES[3..],
            CallKind::ALL.map(CallKind::type_name)
        );
        for kind in ForwardKind::ALL {
            assert_eq!(ForwardKind::from_type(kind.type_name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(kind.type_name()));
        }
        for kind in CallKind::ALL {
            assert!(ForwardKind::ALL.contains(&ForwardKind::from(kind)));
        }
        assert_eq!(ForwardKind::from_type("ping"), None);
        let client: Vec<&str> = ["register", "pair_request", "pair_response"]
            .into_iter()
            .chain(FORWARDED_MESSAGE_TYPES)
            .chain(["ping", "identity_challenge"])
            .collect();
        assert_eq!(CLIENT_MESSAGE_TYPES.to_vec(), client);
        let server: Vec<&str> = [
            "server_info",
            "registered",
            "code_collision",
            "pair_incoming",
            "pair_matched",
            "pair_rejected",
            "pair_error",
            "pair_expiring",
            "pair_timeout",
        ]
        .into_iter()
        .chain(FORWARDED_MESSAGE_TYPES)
        .chain(["ice_servers", "identity_proof", "pong", "error"])
        .collect();
        assert_eq!(SERVER_MESSAGE_TYPES.to_vec(), server);
    }

    #[test]
    fn register_asks_for_ice_servers_only_with_true() {
        let asking = parse(
            json!({"type": "register", "pairingCode": "ABC234", "publicKey": KEY, "iceServers": true}),
        )
        .unwrap();
        assert_eq!(
            asking,
            ClientMessage::Register {
                pairing_code: code("ABC234"),
                public_key: KEY.into(),
                ice_servers: true,
            }
        );
        assert_eq!(
            asking.to_text(),
            format!(
                r#"{{"type":"register","pairingCode":"ABC234","publicKey":"{KEY}","iceServers":true}}"#
            )
        );
        assert_eq!(ClientMessage::parse(&asking.to_text()).unwrap(), asking);
        for other in [json!(false), json!("yes"), json!(1), json!(null)] {
            let message = parse(
                json!({"type": "register", "pairingCode": "ABC234", "publicKey": KEY, "iceServers": other}),
            )
            .unwrap();
            assert!(
                matches!(
                    message,
                    ClientMessage::Register {
                        ice_servers: false,
                        ..
                    }
                ),
                "{other}"
            );
            assert!(!message.to_text().contains("iceServers"));
        }
    }

    #[test]
    fn ice_servers_carry_an_optional_ttl_last() {
        let message = ServerMessage::IceServers {
            ice_servers: vec![IceServer {
                urls: vec!["stun:s".into()],
                username: None,
                credential: None,
            }],
            ttl: Some(600),
        };
        let text = r#"{"type":"ice_servers","iceServers":[{"urls":["stun:s"]}],"ttl":600}"#;
        assert_eq!(message.to_text(), text);
        assert_eq!(ServerMessage::parse(text).unwrap(), message);
        assert_eq!(
            ServerMessage::parse(r#"{"type":"ice_servers","iceServers":[],"ttl":"x"}"#),
            Err(SignalingError::InvalidFields("ice_servers".into()))
        );
    }

    #[test]
    fn identity_challenges_read_strictly_and_need_no_registration() {
        let nonce = [3u8; 32];
        let text = format!(
            r#"{{"type":"identity_challenge","nonce":"{}"}}"#,
            signature::encode_identity_nonce(&nonce)
        );
        let message = ClientMessage::parse_for_connection(&text, false).unwrap();
        assert_eq!(message, ClientMessage::IdentityChallenge { nonce });
        assert!(!message.requires_registration());
        assert_eq!(message.to_text(), text);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        for bad in [
            json!("not base64!"),
            json!(b64.encode([0u8; 31])),
            json!(b64.encode([0u8; 33])),
        ] {
            let error = parse(json!({"type": "identity_challenge", "nonce": bad})).unwrap_err();
            assert_eq!(error, SignalingError::InvalidNonce, "{bad}");
            assert_eq!(
                error.to_server_message().to_text(),
                r#"{"type":"error","message":"Invalid nonce format"}"#
            );
        }
        assert_eq!(
            parse(json!({"type": "identity_challenge"})),
            Err(SignalingError::MissingField("nonce"))
        );
        assert_eq!(
            parse(json!({"type": "identity_challenge", "nonce": 5})),
            Err(SignalingError::WrongType {
                field: "nonce",
                expected: "a string"
            })
        );
    }

    #[test]
    fn identity_proofs_have_the_agreed_shape_and_verify_only_their_nonce() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
        let nonce = [9u8; 32];
        let proof = IdentityProof::sign(&key, &nonce, "wss://relay.example/ws");
        let message = ServerMessage::IdentityProof(proof.clone());
        let text = message.to_text();
        assert_eq!(
            text,
            format!(
                r#"{{"type":"identity_proof","serverId":"{}","endpoint":"wss://relay.example/ws","nonce":"{}","signature":"{}"}}"#,
                proof.server_id, proof.nonce, proof.signature
            )
        );
        assert_eq!(ServerMessage::parse(&text).unwrap(), message);
        assert_eq!(message.type_name(), "identity_proof");
        assert_eq!(proof.verify(&nonce), Ok(key.verifying_key()));
        // An old proof replayed to a new challenge.
        assert_eq!(proof.verify(&[8u8; 32]), Err(IdentityError::WrongNonce));
        let forged = IdentityProof {
            endpoint: "wss://proxy.example/ws".into(),
            ..proof.clone()
        };
        assert_eq!(forged.verify(&nonce), Err(IdentityError::Invalid));
        let garbled = IdentityProof {
            nonce: "AAAA".into(),
            ..proof
        };
        assert_eq!(garbled.verify(&nonce), Err(IdentityError::NonceEncoding));
        assert_eq!(
            ServerMessage::parse(r#"{"type":"identity_proof","serverId":"x"}"#),
            Err(SignalingError::InvalidFields("identity_proof".into()))
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
