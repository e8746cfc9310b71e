//! Registry entries and the bodies of the registry's routes.
//!
//! [`ServerEntry`] is what `GET /servers` lists, with Zajel's field order.
//! The request types parse untrusted JSON with the registry's exact error
//! texts (Zajel's own wording where it has one) and serialise the bodies that
//! servers send when they register, heartbeat or leave.
//!
//! Our registry's additions (additive): a registration of a new endpoint is
//! answered `202 Accepted` with the [`RegisterResponse`] fields plus
//! `"admission":"pending"` and is listed only once the registry has checked
//! the endpoint (WebSocket connect, `server_info`, `identity_challenge`;
//! see `bootstrap-worker`); servers treat any 2xx as registered. What the
//! registry lists follows [`crate::endpoint::check_listed_endpoint`] and
//! [`crate::endpoint::check_region`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One signaling server as the registry lists it. Every field is always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntry {
    pub server_id: String,
    pub endpoint: String,
    pub public_key: String,
    pub region: String,
    pub registered_at: u64,
    pub last_seen: u64,
}

/// The body of `GET /servers`. `timestamp` (ms) is what makes a signed list fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerList {
    pub servers: Vec<ServerEntry>,
    pub timestamp: u64,
}

/// The body of a successful `POST /servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub success: bool,
    pub server: ServerEntry,
}

/// The body of a successful `POST /servers/heartbeat`: the other fresh servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub success: bool,
    pub peers: Vec<ServerEntry>,
}

/// `{"success":true}`, the body of a successful `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuccessResponse {
    pub success: bool,
}

/// `{"error": …}`, the body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Region stored when a server names none.
pub const UNKNOWN_REGION: &str = "unknown";

/// Zajel's error text for a registration without its three required fields.
pub const MISSING_REGISTER_FIELDS: &str = "Missing required fields: serverId, endpoint, publicKey";
/// Zajel's error text for a heartbeat without `serverId`.
pub const MISSING_SERVER_ID: &str = "Missing serverId";

/// Why a request body was refused (all answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Invalid JSON body")]
    Malformed,
    #[error("Request body must be a JSON object")]
    NotObject,
    #[error("{0}")]
    Missing(&'static str),
    #[error("Invalid field: {field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
}

/// `POST /servers`. `timestamp` and `signature` are our proof-of-possession
/// extension; Zajel's servers send neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub server_id: String,
    pub endpoint: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `POST /servers/heartbeat`, with the same optional proof of possession.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    pub server_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl RegisterRequest {
    /// Parses a registration body. Empty strings count as missing, as in Zajel.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let object = parse_object(body)?;
        let server_id = optional_string(&object, "serverId")?;
        let endpoint = optional_string(&object, "endpoint")?;
        let public_key = optional_string(&object, "publicKey")?;
        let region = optional_string(&object, "region")?;
        let timestamp = optional_timestamp(&object)?;
        let signature = optional_string(&object, "signature")?;
        match (server_id, endpoint, public_key) {
            (Some(server_id), Some(endpoint), Some(public_key)) => Ok(Self {
                server_id,
                endpoint,
                public_key,
                region,
                timestamp,
                signature,
            }),
            _ => Err(RequestError::Missing(MISSING_REGISTER_FIELDS)),
        }
    }

    /// The region this registration stores (`"unknown"` when it names none).
    pub fn stored_region(&self) -> &str {
        self.region.as_deref().unwrap_or(UNKNOWN_REGION)
    }
}

impl HeartbeatRequest {
    /// Parses a heartbeat body.
    pub fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let object = parse_object(body)?;
        let server_id = optional_string(&object, "serverId")?;
        let timestamp = optional_timestamp(&object)?;
        let signature = optional_string(&object, "signature")?;
        let server_id = server_id.ok_or(RequestError::Missing(MISSING_SERVER_ID))?;
        Ok(Self {
            server_id,
            timestamp,
            signature,
        })
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(RequestError::NotObject),
        Err(_) => Err(RequestError::Malformed),
    }
}

/// A string field; absent, `null` and `""` all read as `None`.
fn optional_string(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, RequestError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(RequestError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn optional_timestamp(object: &Map<String, Value>) -> Result<Option<u64>, RequestError> {
    match object.get("timestamp") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or(RequestError::WrongType {
            field: "timestamp",
            expected: "an integer (ms since the Unix epoch)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_serialise_in_zajels_field_order() {
        let entry = ServerEntry {
            server_id: "ed25519:AAAA".into(),
            endpoint: "wss://a.example".into(),
            public_key: "AAAA".into(),
            region: "eu".into(),
            registered_at: 1,
            last_seen: 2,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"serverId":"ed25519:AAAA","endpoint":"wss://a.example","publicKey":"AAAA","region":"eu","registeredAt":1,"lastSeen":2}"#
        );
        let list = ServerList {
            servers: vec![entry],
            timestamp: 3,
        };
        let text = serde_json::to_string(&list).unwrap();
        assert!(text.starts_with(r#"{"servers":[{"serverId""#));
        assert!(text.ends_with(r#"],"timestamp":3}"#));
    }

    #[test]
    fn registration_parses_and_refuses_like_the_registry_must() {
        let ok = RegisterRequest::parse(
            br#"{"serverId":"ed25519:x","endpoint":"wss://a","publicKey":"x","timestamp":5,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(ok.region, None);
        assert_eq!(ok.stored_region(), "unknown");
        assert_eq!(ok.timestamp, Some(5));

        assert_eq!(
            RegisterRequest::parse(br#"{"serverId":"a","endpoint":"","publicKey":"b"}"#),
            Err(RequestError::Missing(MISSING_REGISTER_FIELDS))
        );
        assert_eq!(
            RegisterRequest::parse(br#"{"serverId":1,"endpoint":"e","publicKey":"b"}"#)
                .unwrap_err()
                .to_string(),
            "Invalid field: serverId must be a string"
        );
        assert!(matches!(
            RegisterRequest::parse(
                br#"{"serverId":"a","endpoint":"e","publicKey":"b","timestamp":-1}"#
            ),
            Err(RequestError::WrongType {
                field: "timestamp",
                ..
            })
        ));
        assert!(matches!(
            RegisterRequest::parse(
                br#"{"serverId":"a","endpoint":"e","publicKey":"b","timestamp":1.5}"#
            ),
            Err(RequestError::WrongType {
                field: "timestamp",
                ..
            })
        ));
        assert_eq!(RegisterRequest::parse(b"[]"), Err(RequestError::NotObject));
        assert_eq!(
            RegisterRequest::parse(b"null"),
            Err(RequestError::NotObject)
        );
        assert_eq!(
            RegisterRequest::parse(b"{\"a\":"),
            Err(RequestError::Malformed)
        );
        assert_eq!(
            RegisterRequest::parse(b"\xff\xfe"),
            Err(RequestError::Malformed)
        );
        let deep = "[".repeat(100_000);
        assert_eq!(
            RegisterRequest::parse(deep.as_bytes()),
            Err(RequestError::Malformed)
        );
    }

    #[test]
    fn heartbeat_needs_a_server_id() {
        assert_eq!(
            HeartbeatRequest::parse(b"{}"),
            Err(RequestError::Missing(MISSING_SERVER_ID))
        );
        assert_eq!(
            HeartbeatRequest::parse(br#"{"serverId":"s"}"#)
                .unwrap()
                .server_id,
            "s"
        );
    }

    #[test]
    fn requests_serialise_without_absent_fields() {
        let request = RegisterRequest {
            server_id: "ed25519:x".into(),
            endpoint: "wss://a".into(),
            public_key: "x".into(),
            region: None,
            timestamp: None,
            signature: None,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"serverId":"ed25519:x","endpoint":"wss://a","publicKey":"x"}"#
        );
    }
}
