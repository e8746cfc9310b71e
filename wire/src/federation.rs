//! Zajel's server-to-server federation frames (`zajel-wire.md` §8): the signed
//! `handshake`/`handshake_ack` that open a `/federation` link, and the signed
//! `gossip` envelope that travels on it (relay-lite answers `ping` with
//! `ping_ack`; see relay-lite's `federation` module for what it does with the
//! rest).
//!
//! Zajel signs the text JavaScript's `JSON.stringify` gives for the object
//! (without `signature`, and for handshakes without `type`) in the key order of
//! the object as received, and verifies the same way. So a frame is read into
//! [`OrderedJson`], which keeps the received member order, and re-serialised
//! with [`OrderedJson::js_stringify`], which writes what `JSON.stringify` writes
//! for JSON data (strings escaped as serde_json escapes them: `"`, `\`, the
//! short escapes and `\u00xx` for other control characters, everything else
//! raw — the same rules as ECMAScript's `QuoteJSONString` for valid Unicode).
//!
//! Beyond Zajel (which checks only the signature), [`Handshake::verify`] also
//! requires the `publicKey` member to be the key in `serverId`, `nodeId` to be
//! the hex of the first 20 bytes of SHA-256 of that key (Zajel's
//! `computeNodeId`), and the timestamp to be within [`HANDSHAKE_WINDOW_MS`] of
//! now, so that a recorded handshake cannot be replayed later to open a link in
//! another server's name.

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::keys;

/// Upgrade paths Zajel's server routes to its federation acceptor.
pub const FEDERATION_PATHS: [&str; 2] = ["/federation", "/server"];
/// Largest federation frame Zajel accepts; bigger ones close with 1009.
pub const MAX_FEDERATION_FRAME_BYTES: usize = 65_536;
/// Zajel's handshake timeout: the acceptor closes with 4000 after it.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How far a handshake's timestamp may be from our clock (our rule, not Zajel's).
pub const HANDSHAKE_WINDOW_MS: u64 = 5 * 60 * 1000;

/// Close codes of a federation link (§8.2).
pub mod close {
    /// No valid handshake in time (acceptor).
    pub const HANDSHAKE_TIMEOUT: u16 = 4000;
    /// A handshake or ack whose signature (or, with us, key, node id or time) is wrong.
    pub const INVALID_HANDSHAKE: u16 = 4001;
    /// The ack names another server than the one dialled.
    pub const SERVER_ID_MISMATCH: u16 = 4002;
    /// A second link to a server already linked.
    pub const DUPLICATE_CONNECTION: u16 = 4003;
}

/// A JSON value that keeps the order of object members as received.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderedJson {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// Parses JSON text, keeping member order (a repeated key keeps its first
    /// position and its last value, as `JSON.parse` does).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Object(members) => members
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// The string value, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            OrderedJson::String(text) => Some(text),
            _ => None,
        }
    }

    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            OrderedJson::Number(number) => number.as_u64(),
            _ => None,
        }
    }

    /// The text `JSON.stringify` gives for this value (no spaces).
    pub fn js_stringify(&self) -> String {
        let mut out = String::new();
        self.write_js(&mut out);
        out
    }

    fn write_js(&self, out: &mut String) {
        match self {
            OrderedJson::Null => out.push_str("null"),
            OrderedJson::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            OrderedJson::Number(number) => write_js_number(number, out),
            OrderedJson::String(text) => write_js_string(text, out),
            OrderedJson::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write_js(out);
                }
                out.push(']');
            }
            OrderedJson::Object(members) => {
                out.push('{');
                for (index, (name, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_js_string(name, out);
                    out.push(':');
                    value.write_js(out);
                }
                out.push('}');
            }
        }
    }

    /// This object without the members named in `drop`, in the same order.
    fn without(&self, drop: &[&str]) -> OrderedJson {
        match self {
            OrderedJson::Object(members) => OrderedJson::Object(
                members
                    .iter()
                    .filter(|(name, _)| !drop.contains(&name.as_str()))
                    .cloned()
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn write_js_string(text: &str, out: &mut String) {
    // serde_json escapes exactly `"`, `\`, \b \f \n \r \t and \u00xx for the
    // other control characters, as ECMAScript's QuoteJSONString does.
    out.push_str(&serde_json::to_string(text).expect("a string always serialises"));
}

fn write_js_number(number: &serde_json::Number, out: &mut String) {
    if let Some(value) = number.as_i64() {
        let _ = write!(out, "{value}");
    } else if let Some(value) = number.as_u64() {
        let _ = write!(out, "{value}");
    } else if let Some(value) = number.as_f64() {
        // Integral floats print without a fraction in JavaScript (1.0 -> "1").
        if value.fract() == 0.0 && value.abs() < 1e21 {
            let _ = write!(out, "{value:.0}");
        } else {
            out.push_str(&number.to_string());
        }
    }
}

impl<'de> serde::Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = OrderedJson;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Null)
            }
            fn visit_bool<E>(self, value: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Bool(value))
            }
            fn visit_i64<E>(self, value: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(value.into()))
            }
            fn visit_u64<E>(self, value: u64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Number(value.into()))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<OrderedJson, E> {
                serde_json::Number::from_f64(value)
                    .map(OrderedJson::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, value: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(value.to_owned()))
            }
            fn visit_string<E>(self, value: String) -> Result<OrderedJson, E> {
                Ok(OrderedJson::String(value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OrderedJson::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
                let mut members: Vec<(String, OrderedJson)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, OrderedJson>()? {
                    match members.iter_mut().find(|(existing, _)| *existing == name) {
                        Some(slot) => slot.1 = value,
                        None => members.push((name, value)),
                    }
                }
                Ok(OrderedJson::Object(members))
            }
        }
        deserializer.deserialize_any(OrderedVisitor)
    }
}

/// Why a federation frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FederationError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("missing or mistyped field: {0}")]
    Field(&'static str),
    #[error("unexpected frame type {0:?}")]
    Type(String),
    #[error("serverId is not an Ed25519 server id")]
    ServerId,
    #[error("publicKey is not the key named by serverId")]
    KeyMismatch,
    #[error("nodeId is not derived from the public key")]
    NodeId,
    #[error("timestamp {timestamp} is more than {window_ms} ms from now ({now_ms})")]
    Stale {
        timestamp: u64,
        now_ms: u64,
        window_ms: u64,
    },
    #[error("bad signature")]
    Signature,
}

impl FederationError {
    /// A machine-readable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FederationError::NotJson(_) => "not_json",
            FederationError::Field(_) => "field",
            FederationError::Type(_) => "type",
            FederationError::ServerId => "server_id",
            FederationError::KeyMismatch => "key_mismatch",
            FederationError::NodeId => "node_id",
            FederationError::Stale { .. } => "stale",
            FederationError::Signature => "signature",
        }
    }
}

/// Zajel's `computeNodeId`: hex of the first 20 bytes of SHA-256 of the key.
pub fn node_id_for(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..20].iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Which side of the handshake a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    /// `handshake`, sent by the dialer.
    Hello,
    /// `handshake_ack`, the acceptor's answer.
    Ack,
}

impl HandshakeKind {
    pub fn type_name(self) -> &'static str {
        match self {
            HandshakeKind::Hello => "handshake",
            HandshakeKind::Ack => "handshake_ack",
        }
    }
}

/// A verified handshake: who is on the other end of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakePeer {
    pub server_id: String,
    pub node_id: String,
    pub endpoint: String,
    pub key: VerifyingKey,
    /// `metadata.region`, when it is a string.
    pub region: Option<String>,
    pub timestamp: u64,
}

/// Builds our signed `handshake` or `handshake_ack` frame (§8.2): the signature
/// covers `{"serverId","nodeId","endpoint","publicKey","metadata","timestamp"}`
/// in that order; `metadata` is `{"region"}` or `{}`.
pub fn sign_handshake(
    kind: HandshakeKind,
    key: &SigningKey,
    endpoint: &str,
    region: Option<&str>,
    now_ms: u64,
) -> String {
    let verifying = key.verifying_key();
    let metadata = match region {
        Some(region) => {
            OrderedJson::Object(vec![("region".into(), OrderedJson::String(region.into()))])
        }
        None => OrderedJson::Object(Vec::new()),
    };
    let signed = OrderedJson::Object(vec![
        (
            "serverId".into(),
            OrderedJson::String(keys::server_id_for(&verifying)),
        ),
        (
            "nodeId".into(),
            OrderedJson::String(node_id_for(&verifying)),
        ),
        ("endpoint".into(), OrderedJson::String(endpoint.into())),
        (
            "publicKey".into(),
            OrderedJson::String(keys::public_key_to_base64(&verifying)),
        ),
        ("metadata".into(), metadata),
        ("timestamp".into(), OrderedJson::Number(now_ms.into())),
    ]);
    let signature = STANDARD.encode(key.sign(signed.js_stringify().as_bytes()).to_bytes());
    let OrderedJson::Object(mut members) = signed else {
        unreachable!("built as an object")
    };
    members.insert(
        0,
        ("type".into(), OrderedJson::String(kind.type_name().into())),
    );
    members.push(("signature".into(), OrderedJson::String(signature)));
    OrderedJson::Object(members).js_stringify()
}

/// Reads and verifies a `handshake` (or `handshake_ack`) frame as Zajel does,
/// plus our key, node id and freshness checks (module docs).
pub fn verify_handshake(
    kind: HandshakeKind,
    text: &str,
    now_ms: u64,
) -> Result<HandshakePeer, FederationError> {
    let frame =
        OrderedJson::parse(text).map_err(|error| FederationError::NotJson(error.to_string()))?;
    let string = |name: &'static str| {
        frame
            .get(name)
            .and_then(OrderedJson::as_str)
            .ok_or(FederationError::Field(name))
    };
    let frame_type = string("type")?;
    if frame_type != kind.type_name() {
        return Err(FederationError::Type(frame_type.into()));
    }
    let server_id = string("serverId")?;
    let key = keys::public_key_from_server_id(server_id).map_err(|_| FederationError::ServerId)?;
    let signature = decode_signature(string("signature")?)?;
    let signed = frame.without(&["type", "signature"]).js_stringify();
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| FederationError::Signature)?;
    if string("publicKey")? != keys::public_key_to_base64(&key) {
        return Err(FederationError::KeyMismatch);
    }
    let node_id = string("nodeId")?;
    if node_id != node_id_for(&key) {
        return Err(FederationError::NodeId);
    }
    let timestamp = frame
        .get("timestamp")
        .and_then(OrderedJson::as_u64)
        .ok_or(FederationError::Field("timestamp"))?;
    if timestamp.abs_diff(now_ms) > HANDSHAKE_WINDOW_MS {
        return Err(FederationError::Stale {
            timestamp,
            now_ms,
            window_ms: HANDSHAKE_WINDOW_MS,
        });
    }
    Ok(HandshakePeer {
        server_id: server_id.into(),
        node_id: node_id.into(),
        endpoint: string("endpoint")?.into(),
        key,
        region: frame
            .get("metadata")
            .and_then(|metadata| metadata.get("region"))
            .and_then(OrderedJson::as_str)
            .map(str::to_owned),
        timestamp,
    })
}

fn decode_signature(text: &str) -> Result<Signature, FederationError> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| FederationError::Signature)?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| FederationError::Signature)?;
    Ok(Signature::from_bytes(&bytes))
}

/// A verified `gossip` envelope (§8.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Gossip {
    pub subtype: String,
    pub sender_id: String,
    pub sequence_number: u64,
    pub timestamp: u64,
    pub payload: OrderedJson,
}

/// Reads a `gossip` frame and checks its signature with the key in `senderId`
/// (the signed text is the frame without `signature`, `type` included). Like
/// Zajel, `sequenceNumber` and `timestamp` are not checked here: the link
/// already belongs to a verified server, and the caller checks `senderId` is it.
pub fn verify_gossip(text: &str) -> Result<Gossip, FederationError> {
    let frame =
        OrderedJson::parse(text).map_err(|error| FederationError::NotJson(error.to_string()))?;
    let string = |name: &'static str| {
        frame
            .get(name)
            .and_then(OrderedJson::as_str)
            .ok_or(FederationError::Field(name))
    };
    let frame_type = string("type")?;
    if frame_type != "gossip" {
        return Err(FederationError::Type(frame_type.into()));
    }
    let sender_id = string("senderId")?;
    let key = keys::public_key_from_server_id(sender_id).map_err(|_| FederationError::ServerId)?;
    let signature = decode_signature(string("signature")?)?;
    let signed = frame.without(&["signature"]).js_stringify();
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| FederationError::Signature)?;
    Ok(Gossip {
        subtype: string("subtype")?.into(),
        sender_id: sender_id.into(),
        sequence_number: frame
            .get("sequenceNumber")
            .and_then(OrderedJson::as_u64)
            .ok_or(FederationError::Field("sequenceNumber"))?,
        timestamp: frame
            .get("timestamp")
            .and_then(OrderedJson::as_u64)
            .ok_or(FederationError::Field("timestamp"))?,
        payload: frame.get("payload").cloned().unwrap_or(OrderedJson::Null),
    })
}

/// Builds our signed `gossip` frame: `type`, `subtype`, `senderId`,
/// `sequenceNumber`, `timestamp`, `payload`, `piggyback` (always empty: we
/// spread no membership), then `signature` over the rest.
pub fn sign_gossip(
    key: &SigningKey,
    subtype: &str,
    sequence_number: u64,
    now_ms: u64,
    payload: OrderedJson,
) -> String {
    let mut members = vec![
        ("type".into(), OrderedJson::String("gossip".into())),
        ("subtype".into(), OrderedJson::String(subtype.into())),
        (
            "senderId".into(),
            OrderedJson::String(keys::server_id_for(&key.verifying_key())),
        ),
        (
            "sequenceNumber".into(),
            OrderedJson::Number(sequence_number.into()),
        ),
        ("timestamp".into(), OrderedJson::Number(now_ms.into())),
        ("payload".into(), payload),
        ("piggyback".into(), OrderedJson::Array(Vec::new())),
    ];
    let signed = OrderedJson::Object(members.clone()).js_stringify();
    let signature = STANDARD.encode(key.sign(signed.as_bytes()).to_bytes());
    members.push(("signature".into(), OrderedJson::String(signature)));
    OrderedJson::Object(members).js_stringify()
}

/// The `ping_ack` payload: `{"incarnation":n}`.
pub fn ping_ack_payload(incarnation: u64) -> OrderedJson {
    OrderedJson::Object(vec![(
        "incarnation".into(),
        OrderedJson::Number(incarnation.into()),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn ordered_json_keeps_member_order_and_writes_what_json_stringify_writes() {
        let text = r#"{"z":1,"a":{"y":[true,null,"é\n\u0001\"\\"],"b":-2},"m":1.5,"n":2.0}"#;
        let value = OrderedJson::parse(text).unwrap();
        // JSON.stringify(JSON.parse(text)) in node gives exactly this.
        assert_eq!(
            value.js_stringify(),
            r#"{"z":1,"a":{"y":[true,null,"é\n\u0001\"\\"],"b":-2},"m":1.5,"n":2}"#
        );
        // A repeated key keeps its first place and its last value, as JSON.parse does.
        assert_eq!(
            OrderedJson::parse(r#"{"a":1,"b":2,"a":3}"#)
                .unwrap()
                .js_stringify(),
            r#"{"a":3,"b":2}"#
        );
    }

    #[test]
    fn our_handshake_verifies_and_names_us() {
        let key = key(7);
        let text = sign_handshake(
            HandshakeKind::Hello,
            &key,
            "wss://relay.example",
            Some("eu"),
            NOW,
        );
        assert!(text.starts_with(r#"{"type":"handshake","serverId":"ed25519:"#));
        let peer = verify_handshake(HandshakeKind::Hello, &text, NOW + 1000).unwrap();
        assert_eq!(peer.server_id, keys::server_id_for(&key.verifying_key()));
        assert_eq!(peer.endpoint, "wss://relay.example");
        assert_eq!(peer.region.as_deref(), Some("eu"));
        assert_eq!(peer.node_id.len(), 40);
        // An ack is not a hello.
        assert_eq!(
            verify_handshake(HandshakeKind::Ack, &text, NOW),
            Err(FederationError::Type("handshake".into()))
        );
    }

    #[test]
    fn a_handshake_signed_by_node_in_zajels_way_verifies() {
        // Made with node 20 exactly as server-vps's createHandshake does:
        // JSON.stringify({serverId,nodeId,endpoint,publicKey,metadata,timestamp}),
        // signed with crypto.sign(null, …) by the key with seed [9; 32].
        let text = include_str!("../testdata/zajel_handshake.json").trim();
        let peer = verify_handshake(HandshakeKind::Hello, text, 1_780_000_000_500).unwrap();
        assert_eq!(peer.server_id, keys::server_id_for(&key(9).verifying_key()));
        assert_eq!(peer.endpoint, "ws://127.0.0.1:9443");
        assert_eq!(peer.region, None);
    }

    #[test]
    fn forged_altered_replayed_and_mismatched_handshakes_are_refused() {
        let ours = key(7);
        let text = sign_handshake(HandshakeKind::Hello, &ours, "wss://a.example", None, NOW);
        // Altered endpoint: the signature no longer covers it.
        let altered = text.replace("wss://a.example", "wss://evil.example");
        assert_eq!(
            verify_handshake(HandshakeKind::Hello, &altered, NOW),
            Err(FederationError::Signature)
        );
        // Another server's id with our signature.
        let other = keys::server_id_for(&key(8).verifying_key());
        let ours_id = keys::server_id_for(&ours.verifying_key());
        let stolen = text.replace(&ours_id, &other);
        assert_eq!(
            verify_handshake(HandshakeKind::Hello, &stolen, NOW),
            Err(FederationError::Signature)
        );
        // Replayed an hour later.
        assert!(matches!(
            verify_handshake(HandshakeKind::Hello, &text, NOW + 3_600_000),
            Err(FederationError::Stale { .. })
        ));
        // Not JSON, no signature, a non-ed25519 id.
        assert!(matches!(
            verify_handshake(HandshakeKind::Hello, "{", NOW),
            Err(FederationError::NotJson(_))
        ));
        assert_eq!(
            verify_handshake(
                HandshakeKind::Hello,
                r#"{"type":"handshake","serverId":"rsa:xx","signature":"AA=="}"#,
                NOW
            ),
            Err(FederationError::ServerId)
        );
    }

    #[test]
    fn a_correctly_signed_handshake_with_a_foreign_public_key_or_node_id_is_refused() {
        let signer = key(7);
        let verifying = signer.verifying_key();
        let build = |public_key: String, node_id: String| {
            let signed = OrderedJson::Object(vec![
                (
                    "serverId".into(),
                    OrderedJson::String(keys::server_id_for(&verifying)),
                ),
                ("nodeId".into(), OrderedJson::String(node_id)),
                (
                    "endpoint".into(),
                    OrderedJson::String("wss://a.example".into()),
                ),
                ("publicKey".into(), OrderedJson::String(public_key)),
                ("metadata".into(), OrderedJson::Object(vec![])),
                ("timestamp".into(), OrderedJson::Number(NOW.into())),
            ]);
            let signature =
                STANDARD.encode(signer.sign(signed.js_stringify().as_bytes()).to_bytes());
            let OrderedJson::Object(mut members) = signed else {
                unreachable!()
            };
            members.insert(0, ("type".into(), OrderedJson::String("handshake".into())));
            members.push(("signature".into(), OrderedJson::String(signature)));
            OrderedJson::Object(members).js_stringify()
        };
        let foreign_key = keys::public_key_to_base64(&key(8).verifying_key());
        assert_eq!(
            verify_handshake(
                HandshakeKind::Hello,
                &build(foreign_key, node_id_for(&verifying)),
                NOW
            ),
            Err(FederationError::KeyMismatch)
        );
        assert_eq!(
            verify_handshake(
                HandshakeKind::Hello,
                &build(keys::public_key_to_base64(&verifying), "00".repeat(20)),
                NOW
            ),
            Err(FederationError::NodeId)
        );
    }

    #[test]
    fn gossip_round_trips_and_refuses_alteration() {
        let key = key(7);
        let text = sign_gossip(&key, "ping_ack", 3, NOW, ping_ack_payload(2));
        let gossip = verify_gossip(&text).unwrap();
        assert_eq!(gossip.subtype, "ping_ack");
        assert_eq!(gossip.sequence_number, 3);
        assert_eq!(
            gossip
                .payload
                .get("incarnation")
                .and_then(OrderedJson::as_u64),
            Some(2)
        );
        let altered = text.replace(r#""incarnation":2"#, r#""incarnation":9"#);
        assert_eq!(verify_gossip(&altered), Err(FederationError::Signature));
    }

    #[test]
    fn a_gossip_ping_signed_by_node_in_zajels_way_verifies() {
        // createMessage('ping', {}) of server-vps, with a piggyback entry, made by node 20.
        let text = include_str!("../testdata/zajel_gossip_ping.json").trim();
        let gossip = verify_gossip(text).unwrap();
        assert_eq!(gossip.subtype, "ping");
        assert_eq!(
            gossip.sender_id,
            keys::server_id_for(&key(9).verifying_key())
        );
    }
}
