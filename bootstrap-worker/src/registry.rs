//! The registry: routes, validation, proof of possession, policy, expiry and
//! list signing, over a [`Store`].
//!
//! Hosts turn their HTTP requests into a [`Request`], call
//! [`Registry::handle`] with the current time, and write the [`Response`]
//! back unchanged, so the Worker and the native server answer byte for byte
//! alike. Refused mutations come back with a log line in
//! [`Response::refusal`] that the host writes to its log.

use ed25519_dalek::Signature;
use serde::Serialize;
use serde_json::json;
use zajel_wire::endpoint;
use zajel_wire::entry::{
    ErrorBody, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, ServerEntry,
    ServerList, SuccessResponse,
};
use zajel_wire::keys;
use zajel_wire::signature::{
    self, MutationAction, SignatureError, FRESHNESS_WINDOW_MS, LIST_SIGNATURE_HEADER,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

use crate::config::{Config, Policy, MAX_BODY_BYTES, MAX_REGION_CHARS};
use crate::limiter::RateLimiter;
use crate::store::{Store, StoreError, StoredEntry};

/// A request as the registry sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Upper-case HTTP method.
    pub method: String,
    /// The path, without query string (percent-encoded as received).
    pub path: String,
    /// Header names and values; names are matched case-insensitively.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client's address, as the rate limiter keys it.
    pub client: String,
}

impl Request {
    /// Builds a request from a path that may still carry a query string.
    pub fn new(method: &str, path_and_query: &str, client: &str) -> Self {
        let path = path_and_query.split(['?', '#']).next().unwrap_or("/");
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            client: client.to_string(),
        }
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A response to write back as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Why a mutation was refused, for the host's log (never key material).
    pub refusal: Option<String>,
    /// Why any request was refused, as a machine-readable reason (see
    /// [`refusal_reason`]), for the host's metrics; `None` when answered.
    pub refused: Option<&'static str>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Service name in `GET /health` (Zajel's).
pub const SERVICE_NAME: &str = "zajel-bootstrap";

/// The error texts of our own refusals (Zajel's are in `zajel_wire::entry`).
pub mod errors {
    pub const NOT_FOUND: &str = "Not Found";
    pub const NOT_FOUND_HINT: &str = "Use GET /servers to list VPS servers";
    pub const SERVER_NOT_REGISTERED: &str = "Server not registered";
    pub const TOO_LARGE: &str = "Request body too large (limit 8192 bytes)";
    pub const RATE_LIMITED: &str = "Too many requests: slow down";
    pub const FULL: &str = "Registry is full";
    pub const INTERNAL: &str = "Internal error";
    pub const SIGNATURE_REQUIRED: &str =
        "Signature required: this registry accepts only signed mutations";
    pub const ENTRY_IS_SIGNED: &str = "Entry is signed: changing it needs a valid signature";
    pub const INVALID_SIGNATURE: &str = "Invalid signature";
    pub const STALE_TIMESTAMP: &str =
        "Stale timestamp: more than 5 minutes from the registry clock";
    pub const REPLAYED: &str = "Signature already used";
    pub const HALF_SIGNED: &str = "timestamp and signature must be sent together";
    pub const INVALID_SERVER_ID: &str =
        "Invalid serverId: must be \"ed25519:\" followed by standard base64 of a 32-byte key";
    pub const KEY_MISMATCH: &str = "serverId does not match publicKey";
    pub const REGION_TOO_LONG: &str = "Invalid region: at most 64 characters";
    pub const BAD_TIMESTAMP_HEADER: &str =
        "Invalid X-Zajel-Timestamp: must be ms since the Unix epoch";
}

/// The machine-readable reason of a refusal with `status` and error text
/// `error`: one of `rate_limited`, `too_large`, `full`, `internal`,
/// `signature_required`, `entry_is_signed`, `invalid_signature`,
/// `stale_timestamp`, `replayed`, `half_signed`, `invalid_server_id`,
/// `key_mismatch`, `region_too_long`, `bad_timestamp_header`,
/// `not_registered`, `invalid_endpoint`, `invalid_request`.
pub fn refusal_reason(status: u16, error: &str) -> &'static str {
    match error {
        errors::RATE_LIMITED => "rate_limited",
        errors::TOO_LARGE => "too_large",
        errors::FULL => "full",
        errors::INTERNAL => "internal",
        errors::SIGNATURE_REQUIRED => "signature_required",
        errors::ENTRY_IS_SIGNED => "entry_is_signed",
        errors::INVALID_SIGNATURE => "invalid_signature",
        errors::STALE_TIMESTAMP => "stale_timestamp",
        errors::REPLAYED => "replayed",
        errors::HALF_SIGNED => "half_signed",
        errors::INVALID_SERVER_ID => "invalid_server_id",
        errors::KEY_MISMATCH => "key_mismatch",
        errors::REGION_TOO_LONG => "region_too_long",
        errors::BAD_TIMESTAMP_HEADER => "bad_timestamp_header",
        errors::SERVER_NOT_REGISTERED => "not_registered",
        _ if error.starts_with("Invalid endpoint") => "invalid_endpoint",
        _ if status >= 500 => "internal",
        _ => "invalid_request",
    }
}

/// Reasons that mean a signature was presented and did not prove possession.
pub const SIGNATURE_FAILURES: [&str; 3] = ["invalid_signature", "stale_timestamp", "replayed"];

/// The registry core: one per host, owning its store and rate limiter.
pub struct Registry<S: Store> {
    store: S,
    config: Config,
    limiter: RateLimiter,
}

/// An answer that ends a request early.
struct Refusal {
    status: u16,
    error: String,
    /// Extra context for the log line.
    detail: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: u16, error: impl Into<String>) -> Self {
        let error = error.into();
        Self {
            status,
            detail: error.clone(),
            error,
            retry_after: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        Refusal::new(500, errors::INTERNAL).detail(error.to_string())
    }
}

/// How a mutation proved (or did not prove) possession of its key.
enum Proof {
    Unsigned,
    Signed {
        signature: Signature,
        timestamp: u64,
    },
}

type Outcome = Result<Response, Refusal>;

impl<S: Store> Registry<S> {
    pub fn new(store: S, config: Config) -> Self {
        let limiter = RateLimiter::new(config.rate_limit_per_minute);
        Self {
            store,
            config,
            limiter,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Answers one request at `now_ms` (ms since the Unix epoch).
    pub fn handle(&mut self, request: &Request, now_ms: u64) -> Response {
        let method = request.method.as_str();
        if method == "OPTIONS" {
            return preflight();
        }
        let route = request.path.as_str();
        let is_mutation = matches!(
            (method, route),
            ("POST", "/servers") | ("POST", "/servers/heartbeat")
        ) || (method == "DELETE" && route.starts_with("/servers/"));
        let outcome = self.route(request, now_ms, is_mutation);
        match outcome {
            Ok(response) => response,
            Err(refusal) => {
                let reason = refusal_reason(refusal.status, &refusal.error);
                let mut response = json_response(
                    refusal.status,
                    &ErrorBody {
                        error: refusal.error,
                    },
                );
                response.refused = Some(reason);
                if let Some(seconds) = refusal.retry_after {
                    response.headers.push(("Retry-After", seconds.to_string()));
                }
                if is_mutation || refusal.status >= 500 {
                    response.refusal = Some(format!(
                        "refused {method} {route} from {}: {} {}",
                        request.client, refusal.status, refusal.detail
                    ));
                }
                response
            }
        }
    }

    fn route(&mut self, request: &Request, now_ms: u64, is_mutation: bool) -> Outcome {
        if is_mutation {
            if let Err(seconds) = self.limiter.check(&request.client, now_ms) {
                let mut refusal = Refusal::new(429, errors::RATE_LIMITED)
                    .detail(format!("rate limit, retry after {seconds} s"));
                refusal.retry_after = Some(seconds);
                return Err(refusal);
            }
        }
        if request.body.len() > MAX_BODY_BYTES {
            return Err(Refusal::new(413, errors::TOO_LARGE)
                .detail(format!("body of {} bytes", request.body.len())));
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/health") => Ok(json_response(
                200,
                &Health {
                    status: "ok",
                    service: SERVICE_NAME,
                    timestamp: iso8601(now_ms),
                },
            )),
            ("GET", "/") | ("GET", "/api/info") => Ok(json_response(200, &info())),
            ("GET", "/servers") => self.list(now_ms),
            ("POST", "/servers") => self.register(&request.body, now_ms),
            ("POST", "/servers/heartbeat") => self.heartbeat(&request.body, now_ms),
            ("DELETE", path) if path.starts_with("/servers/") => {
                let encoded = &path["/servers/".len()..];
                self.unregister(request, encoded, now_ms)
            }
            _ => Ok(json_response(
                404,
                &json!({"error": errors::NOT_FOUND, "hint": errors::NOT_FOUND_HINT}),
            )),
        }
    }

    /// How many entries are fresh at `now_ms` (for the host's metrics).
    pub fn fresh_entries(&self, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.store.list_fresh(self.fresh_since(now_ms))?.len() as u64)
    }

    /// Entries seen at or after this instant are fresh.
    fn fresh_since(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.config.ttl_ms).saturating_add(1)
    }

    fn list(&mut self, now_ms: u64) -> Outcome {
        let fresh_since = self.fresh_since(now_ms);
        self.store.delete_stale(fresh_since)?;
        let servers = self.store.list_fresh(fresh_since)?;
        let body = serde_json::to_vec(&ServerList {
            servers,
            timestamp: now_ms,
        })
        .map_err(|error| Refusal::new(500, errors::INTERNAL).detail(error.to_string()))?;
        let mut response = raw_json_response(200, body);
        response.headers.push((
            "Access-Control-Expose-Headers",
            LIST_SIGNATURE_HEADER.to_string(),
        ));
        if let Some(key) = &self.config.signing_key {
            let signature = signature::sign_body(key, &response.body);
            response.headers.push((LIST_SIGNATURE_HEADER, signature));
        }
        Ok(response)
    }

    fn register(&mut self, body: &[u8], now_ms: u64) -> Outcome {
        let request =
            RegisterRequest::parse(body).map_err(|error| Refusal::new(400, error.to_string()))?;
        keys::public_key_from_server_id(&request.server_id).map_err(|error| {
            Refusal::new(400, errors::INVALID_SERVER_ID).detail(format!(
                "{}: serverId {:?}",
                error,
                truncate(&request.server_id)
            ))
        })?;
        if request.server_id[keys::SERVER_ID_PREFIX.len()..] != request.public_key {
            return Err(Refusal::new(400, errors::KEY_MISMATCH).detail(format!(
                "{} for serverId {}",
                errors::KEY_MISMATCH,
                request.server_id
            )));
        }
        endpoint::validate_endpoint(&request.endpoint).map_err(|error| {
            Refusal::new(400, format!("Invalid endpoint: {error}"))
                .detail(format!("{error} from {}", request.server_id))
        })?;
        if request.region.as_deref().unwrap_or("").chars().count() > MAX_REGION_CHARS {
            return Err(Refusal::new(400, errors::REGION_TOO_LONG)
                .detail(format!("region too long from {}", request.server_id)));
        }
        let proof = self.proof(
            MutationAction::Register,
            &request.server_id,
            &request.endpoint,
            request.region.as_deref().unwrap_or(""),
            request.timestamp,
            request.signature.as_deref(),
            now_ms,
        )?;
        let existing = self.store.get(&request.server_id)?;
        self.guard_signed_entry(existing.as_ref(), &proof, &request.server_id)?;
        if existing.is_none() {
            self.make_room(now_ms)?;
        }
        self.claim(&proof, &request.server_id, now_ms)?;
        let entry = ServerEntry {
            server_id: request.server_id.clone(),
            endpoint: request.endpoint.clone(),
            public_key: request.public_key.clone(),
            region: request.stored_region().to_string(),
            registered_at: now_ms,
            last_seen: now_ms,
        };
        self.store.put(&StoredEntry {
            entry: entry.clone(),
            signed: matches!(proof, Proof::Signed { .. }),
        })?;
        Ok(json_response(
            200,
            &RegisterResponse {
                success: true,
                server: entry,
            },
        ))
    }

    fn heartbeat(&mut self, body: &[u8], now_ms: u64) -> Outcome {
        let request =
            HeartbeatRequest::parse(body).map_err(|error| Refusal::new(400, error.to_string()))?;
        let proof = self.proof(
            MutationAction::Heartbeat,
            &request.server_id,
            "",
            "",
            request.timestamp,
            request.signature.as_deref(),
            now_ms,
        )?;
        let fresh_since = self.fresh_since(now_ms);
        let existing = match self.store.get(&request.server_id)? {
            Some(stored) if stored.entry.last_seen >= fresh_since => stored,
            Some(_) => {
                self.store.delete(&request.server_id)?;
                return Err(not_registered(&request.server_id));
            }
            None => return Err(not_registered(&request.server_id)),
        };
        self.guard_signed_entry(Some(&existing), &proof, &request.server_id)?;
        self.claim(&proof, &request.server_id, now_ms)?;
        let mut updated = existing;
        updated.entry.last_seen = now_ms;
        self.store.put(&updated)?;
        let peers = self
            .store
            .list_fresh(fresh_since)?
            .into_iter()
            .filter(|entry| entry.server_id != request.server_id)
            .collect();
        Ok(json_response(
            200,
            &HeartbeatResponse {
                success: true,
                peers,
            },
        ))
    }

    fn unregister(&mut self, request: &Request, encoded_id: &str, now_ms: u64) -> Outcome {
        let server_id = percent_decode(encoded_id).ok_or_else(|| {
            Refusal::new(400, errors::INVALID_SERVER_ID).detail("undecodable path")
        })?;
        let timestamp = match request.header(TIMESTAMP_HEADER) {
            None => None,
            Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                Refusal::new(400, errors::BAD_TIMESTAMP_HEADER)
                    .detail(format!("bad timestamp header for {}", truncate(&server_id)))
            })?),
        };
        let proof = self.proof(
            MutationAction::Unregister,
            &server_id,
            "",
            "",
            timestamp,
            request.header(SIGNATURE_HEADER),
            now_ms,
        )?;
        let existing = self.store.get(&server_id)?;
        self.guard_signed_entry(existing.as_ref(), &proof, &server_id)?;
        self.claim(&proof, &server_id, now_ms)?;
        if existing.is_some() {
            self.store.delete(&server_id)?;
        }
        Ok(json_response(200, &SuccessResponse { success: true }))
    }

    /// Checks a mutation's proof of possession against the policy. Freshness
    /// and the signature are checked here; replay is checked by [`Self::claim`]
    /// just before the mutation is applied.
    #[allow(clippy::too_many_arguments)]
    fn proof(
        &self,
        action: MutationAction,
        server_id: &str,
        endpoint: &str,
        region: &str,
        timestamp: Option<u64>,
        signature: Option<&str>,
        now_ms: u64,
    ) -> Result<Proof, Refusal> {
        let id = truncate(server_id);
        match (timestamp, signature) {
            (None, None) => match self.config.policy {
                Policy::Signed => Err(Refusal::new(401, errors::SIGNATURE_REQUIRED)
                    .detail(format!("unsigned {} for {id}", action.as_str()))),
                Policy::Open => Ok(Proof::Unsigned),
            },
            (Some(timestamp), Some(signature)) => {
                signature::check_freshness(timestamp, now_ms).map_err(|_| {
                    Refusal::new(401, errors::STALE_TIMESTAMP).detail(format!(
                        "stale {} for {id}: timestamp {timestamp}, clock {now_ms}",
                        action.as_str()
                    ))
                })?;
                let signature = signature::verify_mutation(
                    action, server_id, endpoint, region, timestamp, signature,
                )
                .map_err(|error| {
                    let (status, text) = match error {
                        SignatureError::Key(_) => (400, errors::INVALID_SERVER_ID),
                        _ => (401, errors::INVALID_SIGNATURE),
                    };
                    Refusal::new(status, text)
                        .detail(format!("{} for {id}: {error}", action.as_str()))
                })?;
                Ok(Proof::Signed {
                    signature,
                    timestamp,
                })
            }
            _ => Err(Refusal::new(400, errors::HALF_SIGNED)
                .detail(format!("half-signed {} for {id}", action.as_str()))),
        }
    }

    /// An unsigned mutation may never touch an entry registered with a signature.
    fn guard_signed_entry(
        &self,
        existing: Option<&StoredEntry>,
        proof: &Proof,
        server_id: &str,
    ) -> Result<(), Refusal> {
        match (existing, proof) {
            (Some(stored), Proof::Unsigned) if stored.signed => {
                Err(Refusal::new(401, errors::ENTRY_IS_SIGNED)
                    .detail(format!("unsigned change to signed entry {server_id}")))
            }
            _ => Ok(()),
        }
    }

    /// Records a signature as used; a second use is a replay.
    fn claim(&mut self, proof: &Proof, server_id: &str, now_ms: u64) -> Result<(), Refusal> {
        if let Proof::Signed {
            signature,
            timestamp,
        } = proof
        {
            let key = hex(&signature.to_bytes());
            let expires_at = timestamp.saturating_add(FRESHNESS_WINDOW_MS);
            if !self.store.claim_signature(&key, expires_at, now_ms)? {
                return Err(Refusal::new(401, errors::REPLAYED)
                    .detail(format!("replayed signature for {server_id}")));
            }
        }
        Ok(())
    }

    /// Makes sure one more entry fits, dropping stale ones first.
    fn make_room(&mut self, now_ms: u64) -> Result<(), Refusal> {
        if self.store.count()? < self.config.max_entries {
            return Ok(());
        }
        self.store.delete_stale(self.fresh_since(now_ms))?;
        if self.store.count()? < self.config.max_entries {
            return Ok(());
        }
        Err(Refusal::new(503, errors::FULL).detail(format!(
            "registry holds {} entries",
            self.config.max_entries
        )))
    }
}

fn not_registered(server_id: &str) -> Refusal {
    Refusal::new(404, errors::SERVER_NOT_REGISTERED)
        .detail(format!("heartbeat for unknown {}", truncate(server_id)))
}

/// The CORS headers every response carries (Zajel's exact values).
pub const CORS_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
    ("Access-Control-Allow-Headers", "Content-Type"),
];

fn cors() -> Vec<(&'static str, String)> {
    CORS_HEADERS
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect()
}

fn preflight() -> Response {
    Response {
        status: 200,
        headers: cors(),
        body: Vec::new(),
        refusal: None,
        refused: None,
    }
}

fn raw_json_response(status: u16, body: Vec<u8>) -> Response {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    headers.extend(cors());
    Response {
        status,
        headers,
        body,
        refusal: None,
        refused: None,
    }
}

fn json_response(status: u16, value: &impl Serialize) -> Response {
    // Serialising our own types and `json!` values cannot fail.
    raw_json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// The body of `GET /health`, in Zajel's field order.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    timestamp: String,
}

/// The body of `GET /` and `GET /api/info`, in Zajel's field order.
#[derive(Serialize)]
struct Info {
    name: &'static str,
    version: &'static str,
    description: &'static str,
    endpoints: InfoEndpoints,
}

#[derive(Serialize)]
struct InfoEndpoints {
    health: &'static str,
    servers: &'static str,
    register: &'static str,
    heartbeat: &'static str,
    unregister: &'static str,
}

fn info() -> Info {
    Info {
        name: "Zajel Bootstrap Server",
        version: env!("CARGO_PKG_VERSION"),
        description: "Registry of Zajel signaling servers, with signed lists and proof-of-possession registration",
        endpoints: InfoEndpoints {
            health: "GET /health",
            servers: "GET /servers",
            register: "POST /servers",
            heartbeat: "POST /servers/heartbeat",
            unregister: "DELETE /servers/:serverId",
        },
    }
}

/// ISO-8601 in UTC with milliseconds, as JavaScript's `toISOString()` writes it.
pub fn iso8601(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => String::from("1970-01-01T00:00:00.000Z"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bounded copy of untrusted text for log lines.
fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Decodes `%XX` escapes (as `decodeURIComponent` does); `None` when the
/// escapes are broken or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(pair, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_javascript() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        // new Date(1795478453123).toISOString()
        assert_eq!(iso8601(1_795_478_453_123), "2026-11-24T00:00:53.123Z");
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(
            percent_decode("ed25519%3Aab%2Bc%2F%3D").as_deref(),
            Some("ed25519:ab+c/=")
        );
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%e2%82"), None);
    }
}
