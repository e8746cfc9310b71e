//! Call payloads, their validation, and the call state machine's names and timeouts.
//!
//! The five call messages (`call_offer`, `call_answer`, `call_reject`,
//! `call_hangup`, `call_ice`) carry a payload object with camelCase fields:
//!
//! | kind | payload |
//! |---|---|
//! | `call_offer` | `{"callId","sdp","withVideo":bool}` |
//! | `call_answer` | `{"callId","sdp"}` |
//! | `call_reject` | `{"callId","reason"?}`, reason `busy`, `declined` or `timeout` |
//! | `call_hangup` | `{"callId"}` |
//! | `call_ice` | `{"callId","candidate"}`, candidate the JSON text of an `RTCIceCandidateInit` |
//!
//! A relay checks an untrusted payload with [`validate_call_payload`] before
//! forwarding it: `callId` a UUID v4 (case-insensitive), `sdp` a non-empty
//! string of at most [`MAX_SDP_CHARS`] characters, `candidate` a non-empty
//! string of at most [`MAX_CANDIDATE_CHARS`] characters, `withVideo` a
//! boolean, `reason` (when present and not `null`) one of the three names.
//! Lengths count Unicode scalar values (Rust `char`s), not bytes. Fields
//! beyond these are allowed and forwarded untouched. Every refusal text is a
//! [`CallPayloadError`] Display text, all `Invalid call payload: …`.
//!
//! Zajel's server checks only `callId`, `sdp` and `candidate`; refusing a
//! missing `withVideo` or an unknown `reason` is ours.
//!
//! ## Call authentication (our extension: `auth`)
//!
//! `call_offer` and `call_answer` may carry `"auth":{"v":1,"mac":"<base64>"}`
//! ([`CallAuth`]); its absence means "unauthenticated peer" (Zajel's clients,
//! browsers, aiortc send none). Relays forward it untouched like any extra
//! member; [`validate_call_payload`] does not look at it. `mac` is the
//! standard base64 of HMAC-SHA256 under the pair's call-auth key
//! (HKDF-SHA256 of the §5.3 session key, info `"zajel_call_auth_v1"`: see
//! [`crate::peer_keys`]) over [`call_auth_input`]:
//!
//! ```text
//! len‖"zajel-call-auth-v1"  len‖role ("offer"|"answer")  len‖lowercase callId
//! count‖(len‖fingerprint)…  len‖sender public key  len‖receiver public key
//! ```
//!
//! (`len`/`count` 4-byte big-endian; public keys the raw 32-byte X25519 keys;
//! fingerprints those of the payload's own SDP `a=fingerprint` lines,
//! normalised to `sha-256 AB:CD:…`, sorted, unique: [`sdp_fingerprints`]).
//! It binds the DTLS certificate(s) the sender will present, the call and
//! the role to the pair's shared key, so a relay that swaps fingerprints
//! (to put its own DTLS peer in the middle) cannot produce a valid `auth`.
//! Senders put it on every offer and answer, including ICE restarts and
//! renegotiations. A receiver verifies it before applying the SDP and, once
//! DTLS is up, checks that the certificate the peer presented
//! ([`certificate_fingerprint`] of its DER) is one of the authenticated
//! fingerprints. An `auth` that is present but not of this shape, of another
//! version, or not verifiable (no key for the sender) is a failure, never
//! "absent".

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Longest `sdp`, in characters.
pub const MAX_SDP_CHARS: usize = 65_536;
/// Longest `candidate`, in characters.
pub const MAX_CANDIDATE_CHARS: usize = 1_024;

/// How long an outgoing call rings before the caller gives up and sends
/// `call_reject` with reason `timeout`.
pub const RINGING_TIMEOUT_MS: u64 = 60_000;
/// How long ICE gathering may take.
pub const ICE_GATHERING_TIMEOUT_MS: u64 = 10_000;
/// How long a dropped call may try to reconnect.
pub const RECONNECT_TIMEOUT_MS: u64 = 30_000;

/// Why a call payload was refused. The Display texts are what a relay sends
/// back in `{"type":"error","message":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallPayloadError {
    #[error("Invalid call payload: payload must be an object")]
    NotObject,
    #[error("Invalid call payload: callId must be a UUID v4")]
    CallId,
    #[error("Invalid call payload: sdp must be a non-empty string of at most 65536 characters")]
    Sdp,
    #[error("Invalid call payload: withVideo must be a boolean")]
    WithVideo,
    #[error("Invalid call payload: reason must be busy, declined or timeout")]
    Reason,
    #[error(
        "Invalid call payload: candidate must be a non-empty string of at most 1024 characters"
    )]
    Candidate,
    /// The candidate string is not the JSON text of an `RTCIceCandidateInit`
    /// (only raised when decoding it, never by [`validate_call_payload`]).
    #[error("Invalid call payload: candidate is not the JSON text of an RTCIceCandidateInit")]
    CandidateInit,
}

/// Which call message a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    Offer,
    Answer,
    Reject,
    Hangup,
    Ice,
}

impl CallKind {
    /// Every kind, in protocol order.
    pub const ALL: [CallKind; 5] = [
        CallKind::Offer,
        CallKind::Answer,
        CallKind::Reject,
        CallKind::Hangup,
        CallKind::Ice,
    ];

    /// The message `type`: `call_offer`, `call_answer`, `call_reject`, `call_hangup`, `call_ice`.
    pub const fn type_name(self) -> &'static str {
        match self {
            Self::Offer => "call_offer",
            Self::Answer => "call_answer",
            Self::Reject => "call_reject",
            Self::Hangup => "call_hangup",
            Self::Ice => "call_ice",
        }
    }

    /// The kind for a message `type`, if it is a call message.
    pub fn from_type(type_name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.type_name() == type_name)
    }

    /// The payload fields this kind defines (beyond which fields pass untouched).
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Offer => &["callId", "sdp", "withVideo"],
            Self::Answer => &["callId", "sdp"],
            Self::Reject => &["callId", "reason"],
            Self::Hangup => &["callId"],
            Self::Ice => &["callId", "candidate"],
        }
    }
}

/// Why a call was refused (`call_reject`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectReason {
    /// The callee is already in a call.
    Busy,
    /// The callee declined.
    Declined,
    /// Nobody answered within [`RINGING_TIMEOUT_MS`].
    Timeout,
}

impl RejectReason {
    /// The wire name: `busy`, `declined` or `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Declined => "declined",
            Self::Timeout => "timeout",
        }
    }

    /// The reason for a wire name (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "busy" => Some(Self::Busy),
            "declined" => Some(Self::Declined),
            "timeout" => Some(Self::Timeout),
            _ => None,
        }
    }
}

/// The states of a call, as named by the VoIP plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    #[default]
    Idle,
    Outgoing,
    Incoming,
    Connecting,
    Connected,
    Ended,
}

impl CallState {
    /// The state's name: `idle`, `outgoing`, `incoming`, `connecting`, `connected`, `ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Outgoing => "outgoing",
            Self::Incoming => "incoming",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Ended => "ended",
        }
    }

    /// Whether a call is under way, so a new offer gets `call_reject` with reason `busy`.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            Self::Outgoing | Self::Incoming | Self::Connecting | Self::Connected
        )
    }
}

/// `call_offer`'s payload; `auth` (our extension) is omitted when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallOffer {
    pub call_id: String,
    pub sdp: String,
    pub with_video: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CallAuth>,
}

/// `call_answer`'s payload; `auth` (our extension) is omitted when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAnswer {
    pub call_id: String,
    pub sdp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CallAuth>,
}

/// The version of [`CallAuth`] this crate writes and verifies.
pub const CALL_AUTH_VERSION: u32 = 1;
/// The domain-separation string that opens every call-auth MAC input.
pub const CALL_AUTH_DOMAIN: &str = "zajel-call-auth-v1";

/// `call_offer`'s and `call_answer`'s optional `auth` (our extension; see the
/// module docs): `{"v":1,"mac":"<standard base64 of 32 bytes>"}`.
///
/// An `auth` member that is present but not an object of this shape reads as
/// version 0 with an empty MAC ([`CallAuth::unreadable`]), which never verifies:
/// a receiver treats it as "auth present but unverifiable", never as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAuth {
    pub v: u32,
    pub mac: String,
}

/// Which payload a [`CallAuth`] authenticates (part of the MAC input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAuthRole {
    /// A `call_offer` (first offer, ICE restart or renegotiation), sent by the caller.
    Offer,
    /// A `call_answer`, sent by the callee.
    Answer,
}

impl CallAuthRole {
    /// `offer` or `answer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
        }
    }
}

impl CallAuth {
    /// What an `auth` member that cannot be read becomes: version 0, no MAC.
    pub fn unreadable() -> Self {
        Self {
            v: 0,
            mac: String::new(),
        }
    }

    /// Reads an `auth` member (see [`CallAuth::unreadable`]).
    pub fn from_value(value: &Value) -> Self {
        serde_json::from_value(value.clone()).unwrap_or_else(|_| Self::unreadable())
    }

    /// The `auth` of a payload of `role` with `call_id` and `sdp`, sent by
    /// `sender` to `receiver` (raw X25519 public keys), under the pair's
    /// call-auth key ([`crate::peer_keys::call_auth_key`]).
    pub fn sign(
        key: &[u8; 32],
        role: CallAuthRole,
        call_id: &str,
        sdp: &str,
        sender: &[u8; 32],
        receiver: &[u8; 32],
    ) -> Self {
        let mut mac = call_auth_hmac(key);
        mac.update(&call_auth_input(
            role,
            call_id,
            &sdp_fingerprints(sdp),
            sender,
            receiver,
        ));
        Self {
            v: CALL_AUTH_VERSION,
            mac: base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
        }
    }

    /// Whether this `auth` is a version-1 MAC of exactly this payload between
    /// these keys (compared in constant time).
    pub fn verify(
        &self,
        key: &[u8; 32],
        role: CallAuthRole,
        call_id: &str,
        sdp: &str,
        sender: &[u8; 32],
        receiver: &[u8; 32],
    ) -> bool {
        if self.v != CALL_AUTH_VERSION {
            return false;
        }
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(&self.mac) else {
            return false;
        };
        let mut mac = call_auth_hmac(key);
        mac.update(&call_auth_input(
            role,
            call_id,
            &sdp_fingerprints(sdp),
            sender,
            receiver,
        ));
        mac.verify_slice(&tag).is_ok()
    }
}

fn call_auth_hmac(key: &[u8; 32]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key")
}

/// The bytes a call-auth MAC covers: each item as a 4-byte big-endian length
/// and its bytes — [`CALL_AUTH_DOMAIN`], the role (`offer`/`answer`), the
/// lowercase `callId`, then the number of fingerprints (4 bytes big-endian)
/// and each fingerprint ([`sdp_fingerprints`]: normalised, sorted, unique),
/// then the sender's and the receiver's raw 32-byte public keys.
pub fn call_auth_input(
    role: CallAuthRole,
    call_id: &str,
    fingerprints: &[String],
    sender: &[u8; 32],
    receiver: &[u8; 32],
) -> Vec<u8> {
    fn item(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    item(&mut out, CALL_AUTH_DOMAIN.as_bytes());
    item(&mut out, role.as_str().as_bytes());
    item(&mut out, call_id.to_ascii_lowercase().as_bytes());
    out.extend_from_slice(&(fingerprints.len() as u32).to_be_bytes());
    for fingerprint in fingerprints {
        item(&mut out, fingerprint.as_bytes());
    }
    item(&mut out, sender);
    item(&mut out, receiver);
    out
}

/// The DTLS certificate fingerprints of an SDP (every `a=fingerprint:` line,
/// session or media level), each normalised to the lowercase hash name, one
/// space and uppercase hex bytes joined by `:` (`sha-256 AB:CD:…`), sorted,
/// duplicates removed. Lines that do not have that shape are left out.
pub fn sdp_fingerprints(sdp: &str) -> Vec<String> {
    let mut found: Vec<String> = sdp
        .lines()
        .filter_map(|line| line.trim().strip_prefix("a=fingerprint:"))
        .filter_map(normalise_fingerprint)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// `sha-256 ab:cd` (any case, any spacing) → `sha-256 AB:CD`; `None` if it is not
/// a hash name and colon-separated hex bytes.
pub fn normalise_fingerprint(text: &str) -> Option<String> {
    let mut parts = text.split_whitespace();
    let (hash, value) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || value.is_empty() {
        return None;
    }
    let bytes_ok = value
        .split(':')
        .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    bytes_ok.then(|| {
        format!(
            "{} {}",
            hash.to_ascii_lowercase(),
            value.to_ascii_uppercase()
        )
    })
}

/// The SHA-256 fingerprint of a DER certificate, normalised as in
/// [`sdp_fingerprints`] (`sha-256 AB:CD:…`).
pub fn certificate_fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("sha-256 {}", hex.join(":"))
}

/// `call_reject`'s payload; `reason` is omitted when `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallReject {
    pub call_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
}

/// `call_hangup`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallHangup {
    pub call_id: String,
}

/// `call_ice`'s payload: `candidate` is the JSON text of an [`IceCandidateInit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallIce {
    pub call_id: String,
    pub candidate: String,
}

impl CallIce {
    /// A `call_ice` payload carrying `init` as JSON text.
    pub fn new(call_id: impl Into<String>, init: &IceCandidateInit) -> Self {
        Self {
            call_id: call_id.into(),
            candidate: init.to_candidate_string(),
        }
    }

    /// Decodes the candidate string.
    pub fn candidate_init(&self) -> Result<IceCandidateInit, CallPayloadError> {
        IceCandidateInit::from_candidate_string(&self.candidate)
    }
}

/// WebRTC's `RTCIceCandidateInit`: `{"candidate","sdpMid","sdpMLineIndex"}`.
///
/// `sdpMid` and `sdpMLineIndex` are always written (as `null` when absent),
/// as Zajel's app writes them; `usernameFragment`, which browsers add, only
/// when present. Unknown fields are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidateInit {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_m_line_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

impl IceCandidateInit {
    /// A candidate with its media section id and index.
    pub fn new(
        candidate: impl Into<String>,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    ) -> Self {
        Self {
            candidate: candidate.into(),
            sdp_mid,
            sdp_m_line_index,
            username_fragment: None,
        }
    }

    /// The JSON text that goes into `call_ice`'s `candidate`.
    pub fn to_candidate_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads `call_ice`'s `candidate` string.
    pub fn from_candidate_string(text: &str) -> Result<Self, CallPayloadError> {
        serde_json::from_str(text).map_err(|_| CallPayloadError::CandidateInit)
    }
}

/// A typed call payload of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallPayload {
    Offer(CallOffer),
    Answer(CallAnswer),
    Reject(CallReject),
    Hangup(CallHangup),
    Ice(CallIce),
}

impl CallPayload {
    /// Which message this payload belongs to.
    pub fn kind(&self) -> CallKind {
        match self {
            Self::Offer(_) => CallKind::Offer,
            Self::Answer(_) => CallKind::Answer,
            Self::Reject(_) => CallKind::Reject,
            Self::Hangup(_) => CallKind::Hangup,
            Self::Ice(_) => CallKind::Ice,
        }
    }

    /// The call this payload is about.
    pub fn call_id(&self) -> &str {
        match self {
            Self::Offer(p) => &p.call_id,
            Self::Answer(p) => &p.call_id,
            Self::Reject(p) => &p.call_id,
            Self::Hangup(p) => &p.call_id,
            Self::Ice(p) => &p.call_id,
        }
    }

    /// Validates an untrusted payload of `kind` and reads it (extra fields are dropped).
    pub fn parse(kind: CallKind, payload: &Value) -> Result<Self, CallPayloadError> {
        match payload {
            Value::Object(object) => Self::from_map(kind, object),
            _ => Err(CallPayloadError::NotObject),
        }
    }

    /// Validates an untrusted payload object of `kind` and reads it.
    pub fn from_map(
        kind: CallKind,
        payload: &Map<String, Value>,
    ) -> Result<Self, CallPayloadError> {
        validate_call_map(kind, payload)?;
        // Validation guarantees the fields below are present with the right types.
        let text = |field: &str| {
            payload
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        // `null` counts as absent; anything else present is read (or unreadable).
        let auth = || {
            payload
                .get("auth")
                .filter(|value| !value.is_null())
                .map(CallAuth::from_value)
        };
        let call_id = text("callId");
        Ok(match kind {
            CallKind::Offer => Self::Offer(CallOffer {
                call_id,
                sdp: text("sdp"),
                with_video: payload
                    .get("withVideo")
                    .and_then(Value::as_bool)
                    .unwrap_or_default(),
                auth: auth(),
            }),
            CallKind::Answer => Self::Answer(CallAnswer {
                call_id,
                sdp: text("sdp"),
                auth: auth(),
            }),
            CallKind::Reject => Self::Reject(CallReject {
                call_id,
                reason: payload
                    .get("reason")
                    .and_then(Value::as_str)
                    .and_then(RejectReason::from_name),
            }),
            CallKind::Hangup => Self::Hangup(CallHangup { call_id }),
            CallKind::Ice => Self::Ice(CallIce {
                call_id,
                candidate: text("candidate"),
            }),
        })
    }

    /// The payload object, with the camelCase field names.
    pub fn to_map(&self) -> Map<String, Value> {
        let value = match self {
            Self::Offer(p) => serde_json::to_value(p),
            Self::Answer(p) => serde_json::to_value(p),
            Self::Reject(p) => serde_json::to_value(p),
            Self::Hangup(p) => serde_json::to_value(p),
            Self::Ice(p) => serde_json::to_value(p),
        };
        match value {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }

    /// The payload as a JSON value.
    pub fn to_json(&self) -> Value {
        Value::Object(self.to_map())
    }

    /// Checks a payload about to be sent against the rules a relay applies.
    pub fn validate(&self) -> Result<(), CallPayloadError> {
        validate_call_map(self.kind(), &self.to_map())
    }
}

impl From<CallOffer> for CallPayload {
    fn from(payload: CallOffer) -> Self {
        Self::Offer(payload)
    }
}

impl From<CallAnswer> for CallPayload {
    fn from(payload: CallAnswer) -> Self {
        Self::Answer(payload)
    }
}

impl From<CallReject> for CallPayload {
    fn from(payload: CallReject) -> Self {
        Self::Reject(payload)
    }
}

impl From<CallHangup> for CallPayload {
    fn from(payload: CallHangup) -> Self {
        Self::Hangup(payload)
    }
}

impl From<CallIce> for CallPayload {
    fn from(payload: CallIce) -> Self {
        Self::Ice(payload)
    }
}

/// Checks an untrusted payload of `kind` before it is forwarded. Anything
/// but an object, a missing field, a field of the wrong type or out of
/// bounds, and a `reason` other than the three names are refused.
pub fn validate_call_payload(kind: CallKind, payload: &Value) -> Result<(), CallPayloadError> {
    match payload {
        Value::Object(object) => validate_call_map(kind, object),
        _ => Err(CallPayloadError::NotObject),
    }
}

/// [`validate_call_payload`] for a payload already known to be an object.
pub fn validate_call_map(
    kind: CallKind,
    payload: &Map<String, Value>,
) -> Result<(), CallPayloadError> {
    match payload.get("callId").and_then(Value::as_str) {
        Some(call_id) if is_uuid_v4(call_id) => {}
        _ => return Err(CallPayloadError::CallId),
    }
    match kind {
        CallKind::Offer | CallKind::Answer => {
            validate_sdp(payload.get("sdp").and_then(Value::as_str))?;
            if kind == CallKind::Offer && !matches!(payload.get("withVideo"), Some(Value::Bool(_)))
            {
                return Err(CallPayloadError::WithVideo);
            }
        }
        CallKind::Reject => match payload.get("reason") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if RejectReason::from_name(name).is_some() => {}
            Some(_) => return Err(CallPayloadError::Reason),
        },
        CallKind::Hangup => {}
        CallKind::Ice => validate_candidate(payload.get("candidate").and_then(Value::as_str))?,
    }
    Ok(())
}

/// Checks an `sdp` field: present, non-empty, at most [`MAX_SDP_CHARS`] characters.
pub fn validate_sdp(sdp: Option<&str>) -> Result<(), CallPayloadError> {
    match sdp {
        Some(sdp) if is_bounded(sdp, MAX_SDP_CHARS) => Ok(()),
        _ => Err(CallPayloadError::Sdp),
    }
}

/// Checks a `candidate` field: present, non-empty, at most [`MAX_CANDIDATE_CHARS`] characters.
pub fn validate_candidate(candidate: Option<&str>) -> Result<(), CallPayloadError> {
    match candidate {
        Some(candidate) if is_bounded(candidate, MAX_CANDIDATE_CHARS) => Ok(()),
        _ => Err(CallPayloadError::Candidate),
    }
}

/// Non-empty and at most `max` characters (counted as `char`s).
fn is_bounded(text: &str, max: usize) -> bool {
    // A text of at most `max` bytes has at most `max` characters.
    !text.is_empty() && (text.len() <= max || text.chars().nth(max).is_none())
}

/// Whether `text` matches
/// `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`,
/// case-insensitively.
pub fn is_uuid_v4(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &byte)| match i {
            8 | 13 | 18 | 23 => byte == b'-',
            14 => byte == b'4',
            19 => matches!(byte, b'8' | b'9' | b'a' | b'b' | b'A' | b'B'),
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A UUID v4 (lowercase) made from 16 random bytes supplied by the caller:
/// the version and variant bits are set, the other 122 bits are kept.
pub fn call_id_from_random_bytes(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

    fn offer(sdp: Value) -> Value {
        json!({"callId": ID, "sdp": sdp, "withVideo": false})
    }

    #[test]
    fn uuid_v4_check_follows_the_pattern() {
        assert!(is_uuid_v4(ID));
        assert!(is_uuid_v4("3F2504E0-4F89-41D3-9A0C-0305E82C3301"));
        assert!(is_uuid_v4("00000000-0000-4000-8000-000000000000"));
        assert!(is_uuid_v4("ffffffff-ffff-4fff-bfff-ffffffffffff"));
        assert!(is_uuid_v4("ffffffff-ffff-4fff-Bfff-ffffffffffff"));
        // Version 1, and variant nibbles outside 8, 9, a, b.
        assert!(!is_uuid_v4("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
        for nibble in ['0', '7', 'c', 'C', 'd', 'f'] {
            let id = format!("3f2504e0-4f89-41d3-{nibble}a0c-0305e82c3301");
            assert!(!is_uuid_v4(&id), "{id}");
        }
        for bad in [
            "",
            "3f2504e0-4f89-41d3-9a0c-0305e82c330",
            "3f2504e0-4f89-41d3-9a0c-0305e82c33011",
            "3f2504e04f8941d39a0c0305e82c3301",
            "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}",
            "3f2504e0_4f89-41d3-9a0c-0305e82c3301",
            "3f2504g0-4f89-41d3-9a0c-0305e82c3301",
            " 3f2504e0-4f89-41d3-9a0c-0305e82c330",
            "3f2504e0-4f89-41d3-9a0c-0305e82c33é",
            "3f2504e0-4f89-41d3-9a0c-0305e82c3\u{301}",
        ] {
            assert!(!is_uuid_v4(bad), "{bad}");
        }
    }

    #[test]
    fn call_ids_from_random_bytes_are_uuid_v4() {
        for seed in [[0u8; 16], [0xff; 16], [0x5a; 16]] {
            let id = call_id_from_random_bytes(seed);
            assert!(is_uuid_v4(&id), "{id}");
        }
        assert_eq!(
            call_id_from_random_bytes([0u8; 16]),
            "00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            call_id_from_random_bytes([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
    }

    #[test]
    fn kinds_map_to_type_names() {
        for kind in CallKind::ALL {
            assert_eq!(CallKind::from_type(kind.type_name()), Some(kind));
            assert_eq!(kind.fields()[0], "callId");
        }
        assert_eq!(CallKind::Ice.type_name(), "call_ice");
        assert_eq!(CallKind::from_type("offer"), None);
        assert_eq!(CallKind::from_type("CALL_OFFER"), None);
    }

    #[test]
    fn states_and_reasons_have_lowercase_names() {
        let states = [
            CallState::Idle,
            CallState::Outgoing,
            CallState::Incoming,
            CallState::Connecting,
            CallState::Connected,
            CallState::Ended,
        ];
        let names = [
            "idle",
            "outgoing",
            "incoming",
            "connecting",
            "connected",
            "ended",
        ];
        for (state, name) in states.into_iter().zip(names) {
            assert_eq!(state.as_str(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), json!(name));
            assert_eq!(
                serde_json::from_value::<CallState>(json!(name)).unwrap(),
                state
            );
        }
        assert!(!CallState::Idle.is_busy() && !CallState::Ended.is_busy());
        assert!(CallState::Connecting.is_busy());
        assert_eq!(CallState::default(), CallState::Idle);
        for reason in [
            RejectReason::Busy,
            RejectReason::Declined,
            RejectReason::Timeout,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                json!(reason.as_str())
            );
            assert_eq!(RejectReason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(RejectReason::from_name("Busy"), None);
        assert!(serde_json::from_value::<RejectReason>(json!("BUSY")).is_err());
        assert_eq!(RINGING_TIMEOUT_MS, 60_000);
        assert_eq!(ICE_GATHERING_TIMEOUT_MS, 10_000);
        assert_eq!(RECONNECT_TIMEOUT_MS, 30_000);
    }

    #[test]
    fn valid_payloads_of_every_kind_pass() {
        let cases = [
            (CallKind::Offer, offer(json!("v=0"))),
            (
                CallKind::Offer,
                json!({"callId": ID, "sdp": "v=0", "withVideo": true, "extra": {"x": 1}}),
            ),
            (CallKind::Answer, json!({"callId": ID, "sdp": "v=0"})),
            (CallKind::Reject, json!({"callId": ID})),
            (CallKind::Reject, json!({"callId": ID, "reason": null})),
            (CallKind::Reject, json!({"callId": ID, "reason": "busy"})),
            (
                CallKind::Reject,
                json!({"callId": ID, "reason": "declined"}),
            ),
            (CallKind::Reject, json!({"callId": ID, "reason": "timeout"})),
            (CallKind::Hangup, json!({"callId": ID})),
            (
                CallKind::Ice,
                json!({"callId": ID, "candidate": "{\"candidate\":\"candidate:1 1 udp 1 1.2.3.4 5 typ host\"}"}),
            ),
        ];
        for (kind, payload) in cases {
            assert_eq!(validate_call_payload(kind, &payload), Ok(()), "{payload}");
            let typed = CallPayload::parse(kind, &payload).unwrap();
            assert_eq!(typed.kind(), kind);
            assert_eq!(typed.call_id(), ID);
            assert_eq!(typed.validate(), Ok(()));
        }
    }

    #[test]
    fn non_objects_and_bad_call_ids_are_refused() {
        for kind in CallKind::ALL {
            for payload in [json!(null), json!("x"), json!([ID]), json!(1), json!(true)] {
                assert_eq!(
                    validate_call_payload(kind, &payload),
                    Err(CallPayloadError::NotObject)
                );
            }
            for call_id in [
                json!(null),
                json!(1),
                json!(""),
                json!("not-a-uuid"),
                json!("3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
                json!("3f2504e0-4f89-41d3-ca0c-0305e82c3301"),
                json!([ID]),
            ] {
                let payload =
                    json!({"callId": call_id, "sdp": "v=0", "withVideo": true, "candidate": "c"});
                assert_eq!(
                    validate_call_payload(kind, &payload),
                    Err(CallPayloadError::CallId),
                    "{kind:?} {payload}"
                );
            }
            assert_eq!(
                validate_call_payload(kind, &json!({})),
                Err(CallPayloadError::CallId)
            );
        }
        // An uppercase id is accepted.
        assert_eq!(
            validate_call_payload(
                CallKind::Hangup,
                &json!({"callId": "3F2504E0-4F89-41D3-9A0C-0305E82C3301"})
            ),
            Ok(())
        );
    }

    #[test]
    fn sdp_bounds_count_characters() {
        for kind in [CallKind::Offer, CallKind::Answer] {
            let check = |sdp: Value| {
                let mut payload = offer(sdp);
                if kind == CallKind::Answer {
                    payload.as_object_mut().unwrap().remove("withVideo");
                }
                validate_call_payload(kind, &payload)
            };
            assert_eq!(check(json!("a".repeat(MAX_SDP_CHARS))), Ok(()));
            assert_eq!(
                check(json!("a".repeat(MAX_SDP_CHARS + 1))),
                Err(CallPayloadError::Sdp)
            );
            assert_eq!(check(json!("")), Err(CallPayloadError::Sdp));
            assert_eq!(check(json!(null)), Err(CallPayloadError::Sdp));
            assert_eq!(check(json!(5)), Err(CallPayloadError::Sdp));
            assert_eq!(check(json!(["v=0"])), Err(CallPayloadError::Sdp));
            // Multi-byte characters: the limit is in characters, not bytes.
            assert_eq!(check(json!("é".repeat(MAX_SDP_CHARS))), Ok(()));
            assert_eq!(check(json!("🦀".repeat(MAX_SDP_CHARS))), Ok(()));
            assert_eq!(
                check(json!("é".repeat(MAX_SDP_CHARS + 1))),
                Err(CallPayloadError::Sdp)
            );
            assert_eq!(
                check(json!(format!("{}a", "🦀".repeat(MAX_SDP_CHARS)))),
                Err(CallPayloadError::Sdp)
            );
        }
        assert_eq!(
            validate_call_payload(CallKind::Answer, &json!({"callId": ID})),
            Err(CallPayloadError::Sdp)
        );
    }

    #[test]
    fn offers_need_a_boolean_with_video() {
        for with_video in [json!(null), json!("true"), json!(1)] {
            assert_eq!(
                validate_call_payload(
                    CallKind::Offer,
                    &json!({"callId": ID, "sdp": "v=0", "withVideo": with_video})
                ),
                Err(CallPayloadError::WithVideo)
            );
        }
        assert_eq!(
            validate_call_payload(CallKind::Offer, &json!({"callId": ID, "sdp": "v=0"})),
            Err(CallPayloadError::WithVideo)
        );
    }

    #[test]
    fn reject_reasons_are_checked() {
        for reason in [
            json!("Busy"),
            json!("hungup"),
            json!(""),
            json!(1),
            json!(["busy"]),
        ] {
            assert_eq!(
                validate_call_payload(CallKind::Reject, &json!({"callId": ID, "reason": reason})),
                Err(CallPayloadError::Reason)
            );
        }
    }

    #[test]
    fn candidate_bounds_count_characters() {
        let check = |candidate: Value| {
            validate_call_payload(
                CallKind::Ice,
                &json!({"callId": ID, "candidate": candidate}),
            )
        };
        assert_eq!(check(json!("a".repeat(MAX_CANDIDATE_CHARS))), Ok(()));
        assert_eq!(check(json!("ж".repeat(MAX_CANDIDATE_CHARS))), Ok(()));
        assert_eq!(
            check(json!("a".repeat(MAX_CANDIDATE_CHARS + 1))),
            Err(CallPayloadError::Candidate)
        );
        assert_eq!(
            check(json!("ж".repeat(MAX_CANDIDATE_CHARS + 1))),
            Err(CallPayloadError::Candidate)
        );
        assert_eq!(check(json!("")), Err(CallPayloadError::Candidate));
        assert_eq!(
            check(json!({"candidate": "x"})),
            Err(CallPayloadError::Candidate)
        );
        assert_eq!(check(json!(null)), Err(CallPayloadError::Candidate));
        assert_eq!(
            validate_call_payload(CallKind::Ice, &json!({"callId": ID})),
            Err(CallPayloadError::Candidate)
        );
    }

    #[test]
    fn error_texts_are_stable() {
        assert_eq!(
            CallPayloadError::CallId.to_string(),
            "Invalid call payload: callId must be a UUID v4"
        );
        assert_eq!(
            CallPayloadError::Sdp.to_string(),
            "Invalid call payload: sdp must be a non-empty string of at most 65536 characters"
        );
        assert_eq!(
            CallPayloadError::Candidate.to_string(),
            "Invalid call payload: candidate must be a non-empty string of at most 1024 characters"
        );
        assert_eq!(
            CallPayloadError::NotObject.to_string(),
            "Invalid call payload: payload must be an object"
        );
    }

    #[test]
    fn typed_payloads_use_camel_case_names() {
        let offer = CallPayload::from(CallOffer {
            call_id: ID.into(),
            sdp: "v=0".into(),
            with_video: true,
            auth: None,
        });
        assert_eq!(
            offer.to_json(),
            json!({"callId": ID, "sdp": "v=0", "withVideo": true})
        );
        assert_eq!(
            serde_json::to_string(&CallHangup { call_id: ID.into() }).unwrap(),
            format!(r#"{{"callId":"{ID}"}}"#)
        );
        let reject = CallReject {
            call_id: ID.into(),
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&reject).unwrap(),
            format!(r#"{{"callId":"{ID}"}}"#)
        );
        let reject = CallPayload::from(CallReject {
            call_id: ID.into(),
            reason: Some(RejectReason::Timeout),
        });
        assert_eq!(reject.to_json(), json!({"callId": ID, "reason": "timeout"}));
        assert_eq!(
            CallPayload::parse(CallKind::Reject, &reject.to_json()).unwrap(),
            reject
        );
        assert_eq!(
            CallPayload::parse(CallKind::Offer, &offer.to_json()).unwrap(),
            offer
        );
        let answer = CallPayload::from(CallAnswer {
            call_id: ID.into(),
            sdp: "v=0".into(),
            auth: None,
        });
        assert_eq!(answer.to_json(), json!({"callId": ID, "sdp": "v=0"}));
        let bad = CallPayload::from(CallAnswer {
            call_id: "x".into(),
            sdp: "v=0".into(),
            auth: None,
        });
        assert_eq!(bad.validate(), Err(CallPayloadError::CallId));
        // Parsing drops unknown fields.
        let parsed = CallPayload::parse(
            CallKind::Hangup,
            &json!({"callId": ID, "reason": "anything"}),
        )
        .unwrap();
        assert_eq!(parsed.to_json(), json!({"callId": ID}));
    }

    #[test]
    fn ice_candidates_travel_as_json_text() {
        let init = IceCandidateInit::new(
            "candidate:842163049 1 udp 1677729535 1.2.3.4 46154 typ srflx",
            Some("0".into()),
            Some(0),
        );
        let text = init.to_candidate_string();
        assert_eq!(
            text,
            r#"{"candidate":"candidate:842163049 1 udp 1677729535 1.2.3.4 46154 typ srflx","sdpMid":"0","sdpMLineIndex":0}"#
        );
        assert_eq!(
            IceCandidateInit::from_candidate_string(&text).unwrap(),
            init
        );
        let ice = CallIce::new(ID, &init);
        assert_eq!(ice.candidate, text);
        assert_eq!(ice.candidate_init().unwrap(), init);
        assert_eq!(
            CallPayload::from(ice.clone()).to_json(),
            json!({"callId": ID, "candidate": text})
        );

        let bare = IceCandidateInit::new("", None, None);
        assert_eq!(
            bare.to_candidate_string(),
            r#"{"candidate":"","sdpMid":null,"sdpMLineIndex":null}"#
        );
        // Browsers add usernameFragment; other unknown fields are ignored.
        let browser = IceCandidateInit::from_candidate_string(
            r#"{"candidate":"c","sdpMid":"a","sdpMLineIndex":1,"usernameFragment":"u","x":1}"#,
        )
        .unwrap();
        assert_eq!(browser.username_fragment.as_deref(), Some("u"));
        assert_eq!(browser.sdp_m_line_index, Some(1));
        assert_eq!(
            IceCandidateInit::from_candidate_string(r#"{"candidate":"c"}"#)
                .unwrap()
                .sdp_mid,
            None
        );
        for bad in [
            "",
            "candidate:1 1 udp",
            "{}",
            r#"{"candidate":1}"#,
            r#"{"candidate":"c","sdpMLineIndex":-1}"#,
            r#"{"candidate":"c","sdpMLineIndex":70000}"#,
            "[]",
        ] {
            assert_eq!(
                IceCandidateInit::from_candidate_string(bad),
                Err(CallPayloadError::CandidateInit),
                "{bad}"
            );
        }
    }

    const SDP: &str = "v=0\r\na=fingerprint:SHA-256 ab:cd:ef\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD:EF\r\na=fingerprint:sha-1 01:02\r\na=fingerprint:bogus\r\n";
    const SENDER: [u8; 32] = [7u8; 32];
    const RECEIVER: [u8; 32] = [9u8; 32];
    const KEY: [u8; 32] = [3u8; 32];

    #[test]
    fn sdp_fingerprints_are_normalised_sorted_and_unique() {
        assert_eq!(sdp_fingerprints(SDP), ["sha-1 01:02", "sha-256 AB:CD:EF"]);
        assert!(sdp_fingerprints("v=0\r\n").is_empty());
        assert_eq!(normalise_fingerprint("sha-256 zz:01"), None);
        assert_eq!(normalise_fingerprint("sha-256"), None);
        assert_eq!(
            certificate_fingerprint(b"abc"),
            "sha-256 BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn the_call_auth_mac_matches_an_independent_implementation() {
        // Computed with Python's `cryptography` over the documented input
        // (call-auth key of the peer_keys vectors, one fingerprint, keys A and B).
        let key: [u8; 32] = [
            0x03, 0x88, 0x52, 0x04, 0xed, 0x0a, 0xed, 0xdb, 0xd9, 0x47, 0xba, 0xaa, 0x8c, 0x44,
            0xa5, 0xaa, 0x0e, 0xa3, 0xd5, 0xba, 0x94, 0x7b, 0x7a, 0xb9, 0xdc, 0x87, 0xd5, 0x74,
            0xc8, 0x21, 0xa0, 0x8a,
        ];
        let a = crate::peer_keys::public_key(&std::array::from_fn(|i| i as u8 + 1));
        let b = crate::peer_keys::public_key(&std::array::from_fn(|i| 0x80 + i as u8));
        let auth = CallAuth::sign(
            &key,
            CallAuthRole::Offer,
            &ID.to_ascii_uppercase(),
            "a=fingerprint:sha-256 ab:cd:ef",
            &a,
            &b,
        );
        assert_eq!(auth.v, 1);
        assert_eq!(auth.mac, "kODiBMGT9dW43sBIjZRKXRfADbpJEBwjBnbSJ9CPesQ=");
    }

    #[test]
    fn a_call_auth_verifies_only_the_payload_it_was_made_for() {
        let auth = CallAuth::sign(&KEY, CallAuthRole::Offer, ID, SDP, &SENDER, &RECEIVER);
        assert!(auth.verify(&KEY, CallAuthRole::Offer, ID, SDP, &SENDER, &RECEIVER));
        // Same fingerprints in another order and case: still the same payload.
        let reordered = "a=fingerprint:sha-1 01:02\r\na=fingerprint:sha-256 ab:cd:ef\r\n";
        assert!(auth.verify(&KEY, CallAuthRole::Offer, ID, reordered, &SENDER, &RECEIVER));
        // A swapped fingerprint, another role, call, key or direction: refused.
        let swapped = SDP.replace("ab:cd:ef", "ab:cd:ee");
        assert!(!auth.verify(&KEY, CallAuthRole::Offer, ID, &swapped, &SENDER, &RECEIVER));
        assert!(!auth.verify(&KEY, CallAuthRole::Answer, ID, SDP, &SENDER, &RECEIVER));
        let other = "9b2c1d3e-5f60-4a71-8b92-a3b4c5d6e7f8";
        assert!(!auth.verify(&KEY, CallAuthRole::Offer, other, SDP, &SENDER, &RECEIVER));
        assert!(!auth.verify(&[4u8; 32], CallAuthRole::Offer, ID, SDP, &SENDER, &RECEIVER));
        assert!(!auth.verify(&KEY, CallAuthRole::Offer, ID, SDP, &RECEIVER, &SENDER));
        // Another version, a MAC that is not base64, an unreadable member.
        let v2 = CallAuth {
            v: 2,
            ..auth.clone()
        };
        assert!(!v2.verify(&KEY, CallAuthRole::Offer, ID, SDP, &SENDER, &RECEIVER));
        let garbage = CallAuth {
            v: 1,
            mac: "!!".into(),
        };
        assert!(!garbage.verify(&KEY, CallAuthRole::Offer, ID, SDP, &SENDER, &RECEIVER));
        assert!(!CallAuth::unreadable().verify(
            &KEY,
            CallAuthRole::Offer,
            ID,
            SDP,
            &SENDER,
            &RECEIVER
        ));
    }

    #[test]
    fn auth_is_read_and_written_as_an_optional_object() {
        let auth = CallAuth::sign(&KEY, CallAuthRole::Answer, ID, SDP, &SENDER, &RECEIVER);
        let with = json!({"callId": ID, "sdp": SDP, "auth": {"v": 1, "mac": auth.mac}});
        let CallPayload::Answer(answer) = CallPayload::parse(CallKind::Answer, &with).unwrap()
        else {
            panic!("an answer");
        };
        assert_eq!(answer.auth.as_ref(), Some(&auth));
        assert_eq!(CallPayload::from(answer).to_json(), with);
        // Absent or null: none, and none is written.
        for without in [
            json!({"callId": ID, "sdp": SDP}),
            json!({"callId": ID, "sdp": SDP, "auth": null}),
        ] {
            let parsed = CallPayload::parse(CallKind::Answer, &without).unwrap();
            assert!(matches!(&parsed, CallPayload::Answer(a) if a.auth.is_none()));
            assert!(parsed.to_json().get("auth").is_none());
        }
        // Present but not the right shape: unreadable, never absent; still forwarded.
        for bad in [json!("x"), json!({"v": "1"}), json!([1])] {
            let payload = json!({"callId": ID, "sdp": SDP, "withVideo": false, "auth": bad});
            assert_eq!(validate_call_payload(CallKind::Offer, &payload), Ok(()));
            let parsed = CallPayload::parse(CallKind::Offer, &payload).unwrap();
            assert!(
                matches!(parsed, CallPayload::Offer(o) if o.auth == Some(CallAuth::unreadable()))
            );
        }
    }
}
