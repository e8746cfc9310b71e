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

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// `call_offer`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallOffer {
    pub call_id: String,
    pub sdp: String,
    pub with_video: bool,
}

/// `call_answer`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAnswer {
    pub call_id: String,
    pub sdp: String,
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
        let call_id = text("callId");
        Ok(match kind {
            CallKind::Offer => Self::Offer(CallOffer {
                call_id,
                sdp: text("sdp"),
                with_video: payload
                    .get("withVideo")
                    .and_then(Value::as_bool)
                    .unwrap_or_default(),
            }),
            CallKind::Answer => Self::Answer(CallAnswer {
                call_id,
                sdp: text("sdp"),
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
        });
        assert_eq!(answer.to_json(), json!({"callId": ID, "sdp": "v=0"}));
        let bad = CallPayload::from(CallAnswer {
            call_id: "x".into(),
            sdp: "v=0".into(),
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
}
