//! The registry: routes, validation, proof of possession, policy, expiry and
//! list signing, over a [`Store`].
//!
//! Hosts turn their HTTP requests into a [`Request`], call
//! [`Registry::handle`] with the current time, and write the [`Response`]
//! back unchanged, so the Worker and the native server answer byte for byte
//! alike. Refused mutations come back with a log line in
//! [`Response::refusal`] that the host writes to its log.
//!
//! New endpoints are not listed at once: with [`Admission::Identity`] (the
//! default) a registration waits, in memory, until the host has checked
//! the endpoint ([`Registry::poll_checks`] hands out the checks,
//! [`Registry::check_finished`] takes the results; see [`crate::admission`]).
//! Checks run at most `admission_concurrency` at a time, the next one
//! picked from the network with the fewest checks running, so one source's
//! dead endpoints cannot hold back another's. Listed entries are checked
//! again every `recheck_interval_ms` and dropped after
//! [`RECHECK_FAILURES_TO_DROP`] failures in a row. Entries (listed and
//! waiting) are capped per source network (IPv4 /24, IPv6 /48); at the
//! global cap newcomers get 503 and listed entries are never evicted.
//!
//! Reads cost the same at any size: `GET /servers` and the heartbeat's peer
//! list are served from a [`ListSnapshot`] (the signed body, built and
//! signed once) that every change to the listed set drops, and that is
//! rebuilt at the latest [`LIST_REFRESH_MS`] after it was signed or when
//! its first entry goes stale (see [`crate::list_cache`]). Every store
//! write goes through [`Registry::write`], which drops it; the heartbeat's
//! `lastSeen` update of an entry already listed is the one write that keeps
//! it ([`Registry::touch_listed`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bytes::Bytes;
use ed25519_dalek::{Signature, Signer};
use serde::Serialize;
use serde_json::json;
use zajel_wire::endpoint;
use zajel_wire::entry::{
    ErrorBody, HeartbeatRequest, RegisterRequest, RegisterResponse, ServerEntry, SuccessResponse,
};
use zajel_wire::keys;
use zajel_wire::signature::{
    self, MutationAction, SignatureError, FRESHNESS_WINDOW_MS, LIST_SIGNATURE_HEADER,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

use crate::admission::{CheckResult, EndpointCheck};
use crate::config::{Admission, Config, Policy, MAX_BODY_BYTES, RECHECK_FAILURES_TO_DROP};
use crate::limiter::RateLimiter;
use crate::list_cache::ListSnapshot;
#[cfg(doc)]
use crate::list_cache::LIST_REFRESH_MS;
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
    /// Shared, not copied, when it is the kept `GET /servers` body.
    pub body: Bytes,
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
    pub const FULL: &str =
        "Registry is full: listed servers that keep answering are never replaced; retry later";
    pub const NETWORK_FULL: &str =
        "Too many entries registered from your network (per IPv4 /24 or IPv6 /48)";
    pub const CHECKS_BUSY: &str =
        "Too many registrations are waiting for their admission check: retry later";
    pub const FROM_BROWSER: &str =
        "Registry mutations are not accepted from web pages (a request with an Origin header)";
    pub const REGION_NOT_PRINTABLE: &str =
        "Invalid region: printable ASCII only (no newlines, NUL or other control characters)";
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
/// `not_registered`, `network_full`, `checks_busy`, `from_browser`,
/// `region_not_printable`, `invalid_endpoint`, `invalid_request`.
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
        errors::NETWORK_FULL => "network_full",
        errors::CHECKS_BUSY => "checks_busy",
        errors::FROM_BROWSER => "from_browser",
        errors::REGION_NOT_PRINTABLE => "region_not_printable",
        _ if error.starts_with("Invalid endpoint") => "invalid_endpoint",
        _ if status >= 500 => "internal",
        _ => "invalid_request",
    }
}

/// Reasons that mean a signature was presented and did not prove possession.
pub const SIGNATURE_FAILURES: [&str; 3] = ["invalid_signature", "stale_timestamp", "replayed"];

/// The registry core: one per host, owning its store, rate limiters and
/// admission checks.
pub struct Registry<S: Store> {
    store: S,
    config: Config,
    limiter: RateLimiter,
    read_limiter: RateLimiter,
    /// Registrations waiting for their check, by `serverId`.
    pending: BTreeMap<String, Pending>,
    /// Checks handed to the host and not yet finished, by check id.
    in_flight: HashMap<u64, InFlight>,
    /// When each listed entry is checked next, by `serverId`.
    watched: HashMap<String, Watch>,
    next_check_id: u64,
    next_sequence: u64,
    /// The listed entries and their signed list, while nothing changed.
    snapshot: Option<ListSnapshot>,
    /// How many snapshots were built (for tests and the host's metrics).
    snapshots_built: u64,
}

/// A registration waiting for its admission check.
#[derive(Debug, Clone)]
struct Pending {
    stored: StoredEntry,
    network: String,
    /// Registration order (older first among equals).
    sequence: u64,
    checking: bool,
}

#[derive(Debug, Clone)]
struct InFlight {
    server_id: String,
    endpoint: String,
    network: String,
    started_ms: u64,
    recheck: bool,
}

#[derive(Debug, Clone, Copy)]
struct Watch {
    next_check_ms: u64,
    failures: u32,
}

/// What the admission checks are doing (for the host's metrics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Registrations waiting for (or in) their first check.
    pub pending: u64,
    /// Checks running.
    pub in_flight: u64,
}

/// The network a client address counts against for per-network caps: its
/// IPv4 /24 or IPv6 /48 (IPv4-mapped addresses as IPv4); other text as is.
pub fn network_of(client: &str) -> String {
    let v4 = |v4: std::net::Ipv4Addr| {
        let [a, b, c, _] = v4.octets();
        format!("{a}.{b}.{c}.0/24")
    };
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V4(address)) => v4(address),
        Ok(IpAddr::V6(address)) => match address.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None => {
                let s = address.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        },
        Err(_) => client.to_string(),
    }
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
    /// The JSON error answer (`{"error": …}`), its reason for the metrics,
    /// and `Retry-After` when the refusal has one.
    fn into_response(self) -> Response {
        let reason = refusal_reason(self.status, &self.error);
        let mut response = json_response(self.status, &ErrorBody { error: self.error });
        response.refused = Some(reason);
        if let Some(seconds) = self.retry_after {
            response.headers.push(("Retry-After", seconds.to_string()));
        }
        response
    }

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
        let read_limiter = RateLimiter::new(config.read_rate_limit_per_minute);
        Self {
            store,
            config,
            limiter,
            read_limiter,
            pending: BTreeMap::new(),
            in_flight: HashMap::new(),
            watched: HashMap::new(),
            next_check_id: 1,
            next_sequence: 0,
            snapshot: None,
            snapshots_built: 0,
        }
    }

    /// How many times the listed entries were read from the store and the
    /// list signed (the reads between were served from the snapshot).
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots_built
    }

    /// Any write to the store: drops the snapshot first, so the next read
    /// sees the change.
    fn write<T>(
        &mut self,
        change: impl FnOnce(&mut S) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.snapshot = None;
        change(&mut self.store)
    }

    /// The heartbeat's write: only `lastSeen` of an entry the snapshot
    /// lists moves, which keeps the snapshot (its `lastSeen` values are as
    /// of its timestamp). Anything else drops it.
    fn touch_listed(&mut self, updated: &StoredEntry) -> Result<(), StoreError> {
        let listed = self
            .snapshot
            .as_ref()
            .is_some_and(|snapshot| snapshot.lists(&updated.entry.server_id));
        if listed {
            self.store.put(updated)
        } else {
            self.write(|store| store.put(updated))
        }
    }

    /// The snapshot to serve at `now_ms`, rebuilt (stale entries swept,
    /// the fresh ones read and the list signed) when it may not be served.
    fn snapshot(&mut self, now_ms: u64) -> Result<&ListSnapshot, StoreError> {
        let snapshot = match self.snapshot.take() {
            Some(snapshot) if snapshot.serves(now_ms) => snapshot,
            _ => {
                let fresh_since = self.fresh_since(now_ms);
                self.write(|store| store.delete_stale(fresh_since))?;
                let servers = self.store.list_fresh(fresh_since)?;
                let key = self.config.signing_key.as_ref();
                self.snapshots_built += 1;
                ListSnapshot::build(&servers, now_ms, self.config.ttl_ms, |body| {
                    key.map(|key| signature::sign_body(key, body))
                })
            }
        };
        Ok(self.snapshot.insert(snapshot))
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
        // Only reads are offered to web pages.
        let cors_allowed = matches!(method, "GET" | "HEAD");
        match outcome {
            Ok(mut response) => {
                if !cors_allowed {
                    response.headers.retain(|(name, _)| !is_cors_header(name));
                }
                response
            }
            Err(refusal) => {
                let log_line = (is_mutation || refusal.status >= 500).then(|| {
                    format!(
                        "refused {method} {route} from {}: {} {}",
                        request.client, refusal.status, refusal.detail
                    )
                });
                let mut response = refusal.into_response();
                if !cors_allowed {
                    response.headers.retain(|(name, _)| !is_cors_header(name));
                }
                response.refusal = log_line;
                response
            }
        }
    }

    /// A host's own read (its `GET /metrics`) from `client` at `now_ms`,
    /// counted against the same per-address read limit as the registry's
    /// reads: `Some(429 response)` when over it, `None` to go on.
    pub fn refuse_read(&mut self, client: &str, now_ms: u64) -> Option<Response> {
        let refusal = self.check_rate(client, now_ms, false).err()?;
        Some(refusal.into_response())
    }

    /// Takes a token from `client`'s bucket (mutations' or reads').
    fn check_rate(&mut self, client: &str, now_ms: u64, is_mutation: bool) -> Result<(), Refusal> {
        let limiter = if is_mutation {
            &mut self.limiter
        } else {
            &mut self.read_limiter
        };
        if let Err(seconds) = limiter.check(client, now_ms) {
            let kind = if is_mutation {
                "rate limit"
            } else {
                "read rate limit"
            };
            let mut refusal = Refusal::new(429, errors::RATE_LIMITED)
                .detail(format!("{kind}, retry after {seconds} s"));
            refusal.retry_after = Some(seconds);
            return Err(refusal);
        }
        Ok(())
    }

    fn route(&mut self, request: &Request, now_ms: u64, is_mutation: bool) -> Outcome {
        self.check_rate(&request.client, now_ms, is_mutation)?;
        if is_mutation && request.header("Origin").is_some() {
            return Err(Refusal::new(403, errors::FROM_BROWSER)
                .detail("mutation with an Origin header (a web page)"));
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
            ("GET", "/servers") => self.list(request, now_ms),
            ("POST", "/servers") => self.register(&request.body, &request.client, now_ms),
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

    /// Registrations waiting for a check and checks running.
    pub fn admission_stats(&self) -> AdmissionStats {
        AdmissionStats {
            pending: self.pending.len() as u64,
            in_flight: self.in_flight.len() as u64,
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

    /// `GET /servers`: the kept signed body, or 304 without a body when the
    /// request's `If-None-Match` names the snapshot served now (never an
    /// older one: a client holding a list from before a change gets the new
    /// body).
    fn list(&mut self, request: &Request, now_ms: u64) -> Outcome {
        let snapshot = self.snapshot(now_ms)?;
        let unchanged = request
            .header("If-None-Match")
            .is_some_and(|tags| snapshot.matches(tags));
        let mut response = if unchanged {
            raw_json_response(304, Bytes::new())
        } else {
            raw_json_response(200, snapshot.list_body.clone())
        };
        response.headers.push(("ETag", snapshot.etag.clone()));
        response.headers.push((
            "Access-Control-Expose-Headers",
            LIST_SIGNATURE_HEADER.to_string(),
        ));
        if let Some(signature) = &snapshot.signature {
            response
                .headers
                .push((LIST_SIGNATURE_HEADER, signature.clone()));
        }
        Ok(response)
    }

    /// A heartbeat's answer: the listed entries other than `caller`.
    fn peers(&mut self, caller: &str, now_ms: u64) -> Outcome {
        let body = self.snapshot(now_ms)?.heartbeat_body(caller);
        Ok(raw_json_response(200, body))
    }

    fn register(&mut self, body: &[u8], client: &str, now_ms: u64) -> Outcome {
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
        endpoint::check_listed_endpoint(&request.endpoint, self.config.allow_private_endpoints)
            .map_err(|error| {
                Refusal::new(400, format!("Invalid endpoint: {error}")).detail(format!(
                    "{} endpoint {:?} from {}",
                    error.kind(),
                    truncate(&request.endpoint),
                    request.server_id
                ))
            })?;
        endpoint::check_region(request.region.as_deref().unwrap_or("")).map_err(|error| {
            let text = match error {
                endpoint::RegionError::TooLong => errors::REGION_TOO_LONG,
                endpoint::RegionError::NotPrintable => errors::REGION_NOT_PRINTABLE,
            };
            Refusal::new(400, text).detail(format!("{error} from {}", request.server_id))
        })?;
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
        let waiting = self
            .pending
            .get(&request.server_id)
            .map(|p| p.stored.clone());
        self.guard_signed_entry(waiting.as_ref(), &proof, &request.server_id)?;
        let network = network_of(client);
        // An entry already listed at this endpoint was checked: it is refreshed at once.
        let listed_here = existing
            .as_ref()
            .is_some_and(|stored| stored.entry.endpoint == request.endpoint);
        let admit_now = self.config.admission == Admission::Off || listed_here;
        self.make_room(
            &request.server_id,
            &network,
            existing.is_some(),
            admit_now,
            now_ms,
        )?;
        self.claim(&proof, &request.server_id, now_ms)?;
        let entry = ServerEntry {
            server_id: request.server_id.clone(),
            endpoint: request.endpoint.clone(),
            public_key: request.public_key.clone(),
            region: request.stored_region().to_string(),
            registered_at: now_ms,
            last_seen: now_ms,
        };
        let stored = StoredEntry {
            entry: entry.clone(),
            signed: matches!(proof, Proof::Signed { .. }),
        };
        if admit_now {
            self.pending.remove(&request.server_id);
            self.write(|store| {
                store.put(&stored)?;
                store.set_network(&request.server_id, &network)
            })?;
            return Ok(json_response(
                200,
                &RegisterResponse {
                    success: true,
                    server: entry,
                },
            ));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let checking = self
            .pending
            .get(&request.server_id)
            .is_some_and(|p| p.checking && p.stored.entry.endpoint == request.endpoint);
        self.pending.insert(
            request.server_id.clone(),
            Pending {
                stored,
                network,
                sequence,
                checking,
            },
        );
        Ok(json_response(
            202,
            &json!({"success": true, "server": entry, "admission": "pending"}),
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
        if let Some(waiting) = self.pending.get(&request.server_id) {
            // Waiting for its check: the heartbeat keeps the registration alive.
            self.guard_signed_entry(Some(&waiting.stored), &proof, &request.server_id)?;
            self.claim(&proof, &request.server_id, now_ms)?;
            if let Some(waiting) = self.pending.get_mut(&request.server_id) {
                waiting.stored.entry.last_seen = now_ms;
            }
            if self.store.get(&request.server_id)?.is_none() {
                return self.peers(&request.server_id, now_ms);
            }
        }
        let existing = match self.store.get(&request.server_id)? {
            Some(stored) if stored.entry.last_seen >= fresh_since => stored,
            Some(_) => {
                self.write(|store| store.delete(&request.server_id))?;
                return Err(not_registered(&request.server_id));
            }
            None => return Err(not_registered(&request.server_id)),
        };
        self.guard_signed_entry(Some(&existing), &proof, &request.server_id)?;
        self.claim(&proof, &request.server_id, now_ms)?;
        let mut updated = existing;
        updated.entry.last_seen = now_ms;
        self.touch_listed(&updated)?;
        self.peers(&request.server_id, now_ms)
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
        let waiting = self.pending.get(&server_id).map(|p| p.stored.clone());
        self.guard_signed_entry(waiting.as_ref(), &proof, &server_id)?;
        self.claim(&proof, &server_id, now_ms)?;
        if existing.is_some() {
            self.write(|store| store.delete(&server_id))?;
        }
        self.pending.remove(&server_id);
        self.watched.remove(&server_id);
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

    /// Makes sure one more entry for `server_id` from `network` fits: under
    /// the per-network cap, the waiting-room cap and (for a new entry) the
    /// global cap, dropping stale entries first. Listed entries are never
    /// evicted to make room.
    fn make_room(
        &mut self,
        server_id: &str,
        network: &str,
        listed: bool,
        admit_now: bool,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let fresh_since = self.fresh_since(now_ms);
        self.expire_pending(now_ms);
        let waiting_here = self
            .pending
            .values()
            .filter(|p| p.network == network && p.stored.entry.server_id != server_id)
            .count() as u64;
        let listed_here = self.store.count_network(network, fresh_since, server_id)?;
        let others_here = waiting_here + listed_here;
        if others_here >= self.config.max_entries_per_network {
            return Err(Refusal::new(429, errors::NETWORK_FULL).detail(format!(
                "{network} already has {others_here} entries (cap {})",
                self.config.max_entries_per_network
            )));
        }
        if !admit_now
            && !self.pending.contains_key(server_id)
            && self.pending.len() as u64 >= self.config.max_pending
        {
            let mut refusal = Refusal::new(503, errors::CHECKS_BUSY).detail(format!(
                "{} registrations waiting (cap {})",
                self.pending.len(),
                self.config.max_pending
            ));
            refusal.retry_after = Some(self.config.admission_timeout_ms.div_ceil(1000).max(1));
            return Err(refusal);
        }
        if listed {
            return Ok(());
        }
        let waiting_elsewhere = self
            .pending
            .keys()
            .filter(|id| id.as_str() != server_id)
            .count() as u64;
        let max_entries = self.config.max_entries;
        let full = |store: &S| -> Result<bool, StoreError> {
            Ok(store.count()? + waiting_elsewhere >= max_entries)
        };
        if !full(&self.store)? {
            return Ok(());
        }
        self.write(|store| store.delete_stale(fresh_since))?;
        if !full(&self.store)? {
            return Ok(());
        }
        Err(Refusal::new(503, errors::FULL).detail(format!(
            "registry holds {} entries with those waiting for their check",
            self.config.max_entries
        )))
    }

    /// Forgets waiting registrations not heard from within the TTL.
    fn expire_pending(&mut self, now_ms: u64) {
        let fresh_since = self.fresh_since(now_ms);
        self.pending
            .retain(|_, p| p.checking || p.stored.entry.last_seen >= fresh_since);
    }

    /// The checks to start now (new endpoints first, then listed entries
    /// due for a recheck), at most `admission_concurrency` running at once.
    /// Checks the host lost (running past twice their timeout) count as failed.
    pub fn poll_checks(&mut self, now_ms: u64) -> Vec<EndpointCheck> {
        if self.config.admission == Admission::Off {
            return Vec::new();
        }
        let lost: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| {
                now_ms
                    >= f.started_ms
                        .saturating_add(2 * self.config.admission_timeout_ms)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.check_finished(id, &CheckResult::failed("the check never finished"), now_ms);
        }
        self.expire_pending(now_ms);
        self.schedule_rechecks(now_ms);
        let mut started = Vec::new();
        while (self.in_flight.len() as u64) < u64::from(self.config.admission_concurrency) {
            let Some(check) = self.next_check(now_ms) else {
                break;
            };
            started.push(check);
        }
        started
    }

    /// When [`Self::poll_checks`] next has something to do (a recheck due or
    /// a lost check to expire); `None` when only a new registration or a
    /// finished check can give it work.
    pub fn next_check_at(&self, now_ms: u64) -> Option<u64> {
        if self.config.admission == Admission::Off {
            return None;
        }
        let free = (self.in_flight.len() as u64) < u64::from(self.config.admission_concurrency);
        if free && self.pending.values().any(|p| !p.checking) {
            return Some(now_ms);
        }
        let lost = self
            .in_flight
            .values()
            .map(|f| {
                f.started_ms
                    .saturating_add(2 * self.config.admission_timeout_ms)
            })
            .min();
        let recheck = self.watched.values().map(|w| w.next_check_ms).min();
        let recheck = if free { recheck } else { None };
        [lost, recheck].into_iter().flatten().min()
    }

    /// Picks the next check: a waiting registration from the network with
    /// the fewest checks running (oldest first), else a due recheck.
    fn next_check(&mut self, now_ms: u64) -> Option<EndpointCheck> {
        let mut running: HashMap<&str, usize> = HashMap::new();
        for flight in self.in_flight.values() {
            *running.entry(flight.network.as_str()).or_default() += 1;
        }
        let chosen = self
            .pending
            .values()
            .filter(|p| !p.checking)
            .min_by_key(|p| {
                (
                    running.get(p.network.as_str()).copied().unwrap_or(0),
                    p.sequence,
                )
            })
            .map(|p| {
                (
                    p.stored.entry.server_id.clone(),
                    p.stored.entry.endpoint.clone(),
                    p.network.clone(),
                    p.stored.signed,
                )
            });
        if let Some((server_id, endpoint, network, signed)) = chosen {
            if let Some(waiting) = self.pending.get_mut(&server_id) {
                waiting.checking = true;
            }
            return Some(self.start_check(server_id, endpoint, network, false, signed, now_ms));
        }
        let due = self
            .watched
            .iter()
            .filter(|(id, w)| {
                w.next_check_ms <= now_ms && !self.in_flight.values().any(|f| &f.server_id == *id)
            })
            .min_by_key(|(_, w)| w.next_check_ms)
            .map(|(id, _)| id.clone())?;
        let stored = self.store.get(&due).ok().flatten();
        match stored {
            Some(stored) => {
                if let Some(watch) = self.watched.get_mut(&due) {
                    watch.next_check_ms = now_ms.saturating_add(self.config.recheck_interval_ms);
                }
                Some(self.start_check(
                    due,
                    stored.entry.endpoint,
                    String::new(),
                    true,
                    stored.signed,
                    now_ms,
                ))
            }
            None => {
                self.watched.remove(&due);
                self.next_check(now_ms)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_check(
        &mut self,
        server_id: String,
        endpoint: String,
        network: String,
        recheck: bool,
        require_proof: bool,
        now_ms: u64,
    ) -> EndpointCheck {
        let id = self.next_check_id;
        self.next_check_id += 1;
        self.in_flight.insert(
            id,
            InFlight {
                server_id: server_id.clone(),
                endpoint: endpoint.clone(),
                network,
                started_ms: now_ms,
                recheck,
            },
        );
        EndpointCheck {
            id,
            nonce: self.check_nonce(id, &server_id, now_ms),
            server_id,
            endpoint,
            allow_private: self.config.allow_private_endpoints,
            timeout_ms: self.config.admission_timeout_ms,
            recheck,
            require_proof,
        }
    }

    /// A challenge nonce no one can predict without the registry's signing
    /// key: the first 32 bytes of its signature over the check's identity.
    fn check_nonce(&self, id: u64, server_id: &str, now_ms: u64) -> [u8; 32] {
        let message = format!("zajel-registry-admission-nonce\n{id}\n{server_id}\n{now_ms}");
        let fallback;
        let key = match &self.config.signing_key {
            Some(key) => key,
            None => {
                fallback = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
                &fallback
            }
        };
        let signature = key.sign(message.as_bytes()).to_bytes();
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&signature[..32]);
        nonce
    }

    /// Watches every listed entry for its periodic recheck.
    fn schedule_rechecks(&mut self, now_ms: u64) {
        let Ok(listed) = self.store.list_fresh(self.fresh_since(now_ms)) else {
            return;
        };
        let interval = self.config.recheck_interval_ms;
        let mut keep = std::collections::HashSet::with_capacity(listed.len());
        for entry in listed {
            self.watched
                .entry(entry.server_id.clone())
                .or_insert(Watch {
                    next_check_ms: now_ms.saturating_add(interval),
                    failures: 0,
                });
            keep.insert(entry.server_id);
        }
        self.watched.retain(|id, _| keep.contains(id));
    }

    /// Takes the result of check `id` at `now_ms`: a verified registration
    /// is listed, a failed one forgotten; a listed entry that failed
    /// [`RECHECK_FAILURES_TO_DROP`] checks in a row is dropped. Returns a
    /// log line for the host.
    pub fn check_finished(&mut self, id: u64, result: &CheckResult, now_ms: u64) -> Option<String> {
        let flight = self.in_flight.remove(&id)?;
        let id_text = truncate(&flight.server_id);
        if flight.recheck {
            let watch = self.watched.get_mut(&flight.server_id)?;
            match result {
                CheckResult::Verified => {
                    watch.failures = 0;
                    None
                }
                CheckResult::Failed { reason } => {
                    watch.failures += 1;
                    if watch.failures < RECHECK_FAILURES_TO_DROP {
                        return Some(format!("recheck of {id_text} failed: {reason}"));
                    }
                    self.watched.remove(&flight.server_id);
                    match self.store.get(&flight.server_id) {
                        Ok(Some(stored)) if stored.entry.endpoint == flight.endpoint => {
                            let _ = self.write(|store| store.delete(&flight.server_id));
                            Some(format!("dropped {id_text}: stopped answering ({reason})"))
                        }
                        _ => None,
                    }
                }
            }
        } else {
            let waiting = self.pending.get(&flight.server_id)?;
            if waiting.stored.entry.endpoint != flight.endpoint {
                // Registered again at another endpoint meanwhile: that one waits for its own check.
                if let Some(waiting) = self.pending.get_mut(&flight.server_id) {
                    waiting.checking = false;
                }
                return None;
            }
            let waiting = self.pending.remove(&flight.server_id)?;
            match result {
                CheckResult::Verified => {
                    let mut stored = waiting.stored;
                    stored.entry.last_seen = stored.entry.last_seen.max(now_ms);
                    let listed = self.write(|store| {
                        store.put(&stored)?;
                        store.set_network(&flight.server_id, &waiting.network)
                    });
                    match listed {
                        Ok(()) => {
                            self.watched.insert(
                                flight.server_id.clone(),
                                Watch {
                                    next_check_ms: now_ms
                                        .saturating_add(self.config.recheck_interval_ms),
                                    failures: 0,
                                },
                            );
                            Some(format!(
                                "admitted {id_text} at {}",
                                truncate(&flight.endpoint)
                            ))
                        }
                        Err(error) => Some(format!("could not list {id_text}: {error}")),
                    }
                }
                CheckResult::Failed { reason } => Some(format!(
                    "refused {id_text} at {}: {reason}",
                    truncate(&flight.endpoint)
                )),
            }
        }
    }
}

fn not_registered(server_id: &str) -> Refusal {
    Refusal::new(404, errors::SERVER_NOT_REGISTERED)
        .detail(format!("heartbeat for unknown {}", truncate(server_id)))
}

/// The CORS headers of reads and preflights (Zajel's, but mutations are not
/// offered: their responses carry no CORS headers, and a mutation with an
/// `Origin` header is refused).
pub const CORS_HEADERS: [(&str, &str); 3] = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
    ("Access-Control-Allow-Headers", "Content-Type"),
];

/// Whether a header is one of the CORS headers (left off mutations).
fn is_cors_header(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("access-control-")
}

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
        body: Bytes::new(),
        refusal: None,
        refused: None,
    }
}

fn raw_json_response(status: u16, body: impl Into<Bytes>) -> Response {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    headers.extend(cors());
    Response {
        status,
        headers,
        body: body.into(),
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

#[cfg(all(test, not(target_arch = "wasm32")))]
mod admission_tests {
    use super::*;
    use crate::native::sqlite::SqliteStore;
    use ed25519_dalek::SigningKey;
    use zajel_wire::entry::ServerList;

    const T0: u64 = 1_800_000_000_000;

    fn registry(config: Config) -> Registry<SqliteStore> {
        Registry::new(SqliteStore::in_memory().unwrap(), config)
    }

    fn config() -> Config {
        Config {
            signing_key: Some(SigningKey::from_bytes(&[9; 32])),
            rate_limit_per_minute: 1_000_000,
            read_rate_limit_per_minute: 1_000_000,
            max_entries_per_network: 1_000,
            admission_concurrency: 2,
            ..Config::default()
        }
    }

    fn key(n: u32) -> SigningKey {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&n.to_be_bytes());
        seed[31] = 1;
        SigningKey::from_bytes(&seed)
    }

    fn post(
        registry: &mut Registry<SqliteStore>,
        key: &SigningKey,
        endpoint: &str,
        region: Option<&str>,
        client: &str,
        now: u64,
    ) -> Response {
        let mut request = Request::new("POST", "/servers", client);
        request.body =
            serde_json::to_vec(&RegisterRequest::signed(key, endpoint, region, now)).unwrap();
        registry.handle(&request, now)
    }

    fn listed(registry: &mut Registry<SqliteStore>, now: u64) -> Vec<String> {
        let response = registry.handle(&Request::new("GET", "/servers", "192.0.2.200"), now);
        assert_eq!(response.status, 200);
        let list: ServerList = serde_json::from_slice(&response.body).unwrap();
        list.servers.into_iter().map(|e| e.server_id).collect()
    }

    /// Runs every due check, all passing.
    fn admit_all(registry: &mut Registry<SqliteStore>, now: u64) {
        loop {
            let checks = registry.poll_checks(now);
            if checks.is_empty() {
                break;
            }
            for check in checks {
                registry.check_finished(check.id, &CheckResult::Verified, now);
            }
        }
    }

    fn id(key: &SigningKey) -> String {
        zajel_wire::keys::server_id_for(&key.verifying_key())
    }

    fn text(response: &Response) -> String {
        String::from_utf8_lossy(&response.body).into_owned()
    }

    #[test]
    fn a_new_endpoint_is_listed_only_after_its_check_passes() {
        let mut registry = registry(config());
        let (good, bad) = (key(1), key(2));
        let reply = post(
            &mut registry,
            &good,
            "wss://good.example",
            None,
            "192.0.2.1",
            T0,
        );
        assert_eq!(reply.status, 202, "{}", text(&reply));
        assert!(text(&reply).contains(r#""admission":"pending""#));
        assert_eq!(
            post(
                &mut registry,
                &bad,
                "wss://bad.example",
                None,
                "198.51.100.1",
                T0
            )
            .status,
            202
        );
        assert!(
            listed(&mut registry, T0).is_empty(),
            "pending entries are not listed"
        );
        let checks = registry.poll_checks(T0);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| !c.recheck && c.timeout_ms == 5_000));
        assert_ne!(checks[0].nonce, checks[1].nonce);
        for check in &checks {
            let result = if check.server_id == id(&good) {
                CheckResult::Verified
            } else {
                CheckResult::failed("connection refused")
            };
            assert!(registry
                .check_finished(check.id, &result, T0 + 10)
                .is_some());
        }
        assert_eq!(listed(&mut registry, T0 + 20), vec![id(&good)]);
        assert_eq!(registry.admission_stats(), AdmissionStats::default());
        // Re-registering the listed endpoint refreshes it at once.
        assert_eq!(
            post(
                &mut registry,
                &good,
                "wss://good.example",
                Some("eu"),
                "192.0.2.1",
                T0 + 30
            )
            .status,
            200
        );
        // A heartbeat of the refused one is unknown: its server registers again.
        let mut heartbeat = Request::new("POST", "/servers/heartbeat", "198.51.100.1");
        heartbeat.body = serde_json::to_vec(&HeartbeatRequest::signed(&bad, T0 + 40)).unwrap();
        assert_eq!(registry.handle(&heartbeat, T0 + 40).status, 404);
    }

    #[test]
    fn checks_are_bounded_and_one_networks_dead_endpoints_do_not_hold_back_another() {
        let mut registry = registry(config());
        for n in 0..50 {
            let endpoint = format!("wss://dead{n}.example");
            assert_eq!(
                post(
                    &mut registry,
                    &key(100 + n),
                    &endpoint,
                    None,
                    "203.0.113.7",
                    T0
                )
                .status,
                202
            );
        }
        let genuine = key(1);
        assert_eq!(
            post(
                &mut registry,
                &genuine,
                "wss://good.example",
                None,
                "192.0.2.1",
                T0 + 1
            )
            .status,
            202
        );
        let checks = registry.poll_checks(T0 + 2);
        assert_eq!(
            checks.len(),
            2,
            "at most admission_concurrency checks at once"
        );
        assert!(registry.poll_checks(T0 + 3).is_empty());
        assert!(
            checks.iter().any(|c| c.server_id == id(&genuine)),
            "the genuine relay's network gets a slot before the flood's second check"
        );
        let genuine_check = checks.iter().find(|c| c.server_id == id(&genuine)).unwrap();
        registry.check_finished(genuine_check.id, &CheckResult::Verified, T0 + 50);
        assert_eq!(listed(&mut registry, T0 + 60), vec![id(&genuine)]);
        // A dead endpoint whose check the host lost (past twice the timeout) fails.
        assert_eq!(registry.admission_stats().in_flight, 1);
        assert!(registry.next_check_at(T0 + 60).is_some());
        let later = registry.poll_checks(T0 + 2 + 10_000);
        assert_eq!(later.len(), 2);
        assert_eq!(registry.admission_stats().in_flight, 2);
        assert_eq!(listed(&mut registry, T0 + 10_010), vec![id(&genuine)]);
    }

    #[test]
    fn a_listed_entry_that_stops_answering_is_dropped_after_two_failed_rechecks() {
        let mut registry = registry(Config {
            recheck_interval_ms: 1_000,
            ..config()
        });
        let relay = key(1);
        post(
            &mut registry,
            &relay,
            "wss://good.example",
            None,
            "192.0.2.1",
            T0,
        );
        let check = registry.poll_checks(T0).remove(0);
        registry.check_finished(check.id, &CheckResult::Verified, T0);
        assert_eq!(registry.next_check_at(T0), Some(T0 + 1_000));
        assert!(registry.poll_checks(T0 + 999).is_empty());
        let recheck = registry.poll_checks(T0 + 1_000).remove(0);
        assert!(recheck.recheck);
        registry.check_finished(recheck.id, &CheckResult::failed("timeout"), T0 + 1_100);
        assert_eq!(
            listed(&mut registry, T0 + 1_100).len(),
            1,
            "one failure is forgiven"
        );
        let recheck = registry.poll_checks(T0 + 2_000).remove(0);
        registry.check_finished(recheck.id, &CheckResult::Verified, T0 + 2_100);
        let recheck = registry.poll_checks(T0 + 3_000).remove(0);
        registry.check_finished(recheck.id, &CheckResult::failed("timeout"), T0 + 3_100);
        assert_eq!(
            listed(&mut registry, T0 + 3_100).len(),
            1,
            "failures must be in a row"
        );
        let recheck = registry.poll_checks(T0 + 4_000).remove(0);
        let line = registry.check_finished(recheck.id, &CheckResult::failed("timeout"), T0 + 4_100);
        assert!(line.unwrap().contains("dropped"));
        assert!(listed(&mut registry, T0 + 4_100).is_empty());
    }

    #[test]
    fn entries_are_capped_per_ipv4_24_and_ipv6_48() {
        let mut registry = registry(Config {
            max_entries_per_network: 3,
            ..config()
        });
        let counter = std::cell::Cell::new(0u32);
        let next = || {
            counter.set(counter.get() + 1);
            key(counter.get())
        };
        for (client, other_in_network) in [
            ("192.0.2.1", "192.0.2.250"),
            ("198.51.100.1", "::ffff:198.51.100.9"),
            ("2001:db8:1:1::1", "2001:db8:1:ffff::2"),
        ] {
            for _ in 0..3 {
                let k = next();
                let endpoint = format!("wss://a{}.example", counter.get());
                let reply = post(&mut registry, &k, &endpoint, None, client, T0);
                assert_eq!(reply.status, 202, "{}", text(&reply));
            }
            let k = next();
            let reply = post(
                &mut registry,
                &k,
                "wss://more.example",
                None,
                other_in_network,
                T0,
            );
            assert_eq!(reply.status, 429, "{client}: {}", text(&reply));
            assert_eq!(reply.refused, Some("network_full"));
        }
        // Another /24 and another /48 still register.
        let k = next();
        assert_eq!(
            post(&mut registry, &k, "wss://b.example", None, "192.0.3.1", T0).status,
            202
        );
        let k = next();
        assert_eq!(
            post(
                &mut registry,
                &k,
                "wss://c.example",
                None,
                "2001:db8:2::1",
                T0
            )
            .status,
            202
        );
        // Listed entries count too: admit the first /24's three, it stays full.
        admit_all(&mut registry, T0);
        assert_eq!(listed(&mut registry, T0).len(), 11);
        let k = next();
        assert_eq!(
            post(&mut registry, &k, "wss://d.example", None, "192.0.2.3", T0).status,
            429
        );
    }

    #[test]
    fn at_the_global_cap_answering_incumbents_are_never_evicted() {
        let mut registry = registry(Config {
            max_entries: 3,
            recheck_interval_ms: 1_000,
            ..config()
        });
        for n in 0..3 {
            let client = format!("192.0.{n}.1");
            post(
                &mut registry,
                &key(n),
                &format!("wss://r{n}.example"),
                None,
                &client,
                T0,
            );
        }
        admit_all(&mut registry, T0);
        for round in 0..5u64 {
            let now = T0 + 1_000 * (round + 1);
            let reply = post(
                &mut registry,
                &key(50 + round as u32),
                "wss://new.example",
                None,
                "198.51.100.1",
                now,
            );
            assert_eq!(reply.status, 503, "{}", text(&reply));
            assert!(text(&reply).contains("never replaced"), "{}", text(&reply));
            for n in 0..3 {
                let mut heartbeat = Request::new("POST", "/servers/heartbeat", "192.0.2.1");
                heartbeat.body =
                    serde_json::to_vec(&HeartbeatRequest::signed(&key(n), now)).unwrap();
                assert_eq!(registry.handle(&heartbeat, now).status, 200);
            }
            admit_all(&mut registry, now);
            assert_eq!(listed(&mut registry, now).len(), 3);
        }
    }

    #[test]
    fn hostile_endpoints_and_regions_are_refused_with_clear_errors() {
        let mut registry = registry(config());
        for (n, endpoint) in [
            "ws://127.0.0.1",
            "ws://169.254.169.254/latest/meta-data",
            "wss://0x7f.1",
            "wss://2130706433",
            " wss://relay.example",
            "wss://relay.example\n",
            "wss://relay.example/\u{202e}x",
            "wss://r\u{e9}lay.example",
            "https://relay.example",
            "wss://10.0.0.1",
            "wss://[fd00::1]",
            "wss://100.64.1.1",
        ]
        .into_iter()
        .enumerate()
        {
            let reply = post(
                &mut registry,
                &key(n as u32),
                endpoint,
                None,
                "192.0.2.1",
                T0,
            );
            assert_eq!(reply.status, 400, "{endpoint:?}: {}", text(&reply));
            assert!(
                text(&reply).contains("Invalid endpoint: endpoint"),
                "{}",
                text(&reply)
            );
            assert_eq!(reply.refused, Some("invalid_endpoint"));
        }
        for region in ["eu\nwest", "eu\0", "\u{202e}eu"] {
            let reply = post(
                &mut registry,
                &key(99),
                "wss://relay.example",
                Some(region),
                "192.0.2.1",
                T0,
            );
            assert_eq!(reply.status, 400, "{region:?}");
            assert_eq!(reply.refused, Some("region_not_printable"));
        }
        // Started to allow them (demo, tests), loopback endpoints wait for their check.
        let mut lab = self::registry(Config {
            allow_private_endpoints: true,
            ..config()
        });
        assert_eq!(
            post(
                &mut lab,
                &key(1),
                "ws://127.0.0.1:9000",
                None,
                "127.0.0.1",
                T0
            )
            .status,
            202
        );
        assert!(lab.poll_checks(T0)[0].allow_private);
    }

    #[test]
    fn mutations_carry_no_cors_and_browsers_cannot_mutate_while_reads_keep_cors() {
        let mut registry = registry(Config {
            read_rate_limit_per_minute: 5,
            ..config()
        });
        let reply = post(
            &mut registry,
            &key(1),
            "wss://a.example",
            None,
            "192.0.2.1",
            T0,
        );
        assert_eq!(reply.header("Access-Control-Allow-Origin"), None);
        let reply = post(
            &mut registry,
            &key(1),
            "ftp://a.example",
            None,
            "192.0.2.1",
            T0,
        );
        assert_eq!(reply.status, 400);
        assert_eq!(reply.header("Access-Control-Allow-Origin"), None);
        let mut from_page = Request::new("POST", "/servers", "192.0.2.1");
        from_page
            .headers
            .push(("Origin".into(), "https://evil.example".into()));
        from_page.body = serde_json::to_vec(&RegisterRequest::signed(
            &key(2),
            "wss://b.example",
            None,
            T0,
        ))
        .unwrap();
        let reply = registry.handle(&from_page, T0);
        assert_eq!(reply.status, 403);
        assert_eq!(reply.refused, Some("from_browser"));
        let delete = registry.handle(&Request::new("DELETE", "/servers/x", "192.0.2.1"), T0);
        assert_eq!(delete.header("Access-Control-Allow-Origin"), None);
        // Reads keep CORS, and are rate limited per address.
        for path in ["/servers", "/health", "/", "/api/info", "/servers"] {
            let reply = registry.handle(&Request::new("GET", path, "198.51.100.1"), T0);
            assert_eq!(reply.status, 200, "{path}");
            assert_eq!(reply.header("Access-Control-Allow-Origin"), Some("*"));
        }
        let flooded = registry.handle(&Request::new("GET", "/health", "198.51.100.1"), T0);
        assert_eq!(flooded.status, 429);
        assert_eq!(flooded.refused, Some("rate_limited"));
        assert!(flooded.header("Retry-After").is_some());
        assert_eq!(flooded.header("Access-Control-Allow-Origin"), Some("*"));
        let other = registry.handle(&Request::new("GET", "/health", "198.51.100.2"), T0);
        assert_eq!(other.status, 200);
    }

    #[test]
    fn a_hosts_metrics_read_shares_the_read_limit_of_its_address() {
        let mut registry = registry(Config {
            read_rate_limit_per_minute: 3,
            ..config()
        });
        // Three reads a minute from one address: /metrics reads count like any other.
        assert!(registry.refuse_read("198.51.100.1", T0).is_none());
        assert!(registry.refuse_read("198.51.100.1", T0).is_none());
        let reply = registry.handle(&Request::new("GET", "/servers", "198.51.100.1"), T0);
        assert_eq!(reply.status, 200);
        let refused = registry
            .refuse_read("198.51.100.1", T0)
            .expect("a fourth read in the same minute is refused");
        assert_eq!(refused.status, 429);
        assert_eq!(refused.refused, Some("rate_limited"));
        assert!(refused.header("Retry-After").is_some());
        assert!(
            text(&refused).contains(errors::RATE_LIMITED),
            "{}",
            text(&refused)
        );
        // And the registry's own reads from that address are refused too.
        let reply = registry.handle(&Request::new("GET", "/servers", "198.51.100.1"), T0);
        assert_eq!(reply.status, 429);
        // Another address is not held back; the bucket refills with time.
        assert!(registry.refuse_read("198.51.100.2", T0).is_none());
        assert!(registry.refuse_read("198.51.100.1", T0 + 20_000).is_none());
    }

    #[test]
    fn only_signed_registrations_must_prove_their_key() {
        let mut registry = registry(Config {
            policy: Policy::Open,
            ..config()
        });
        let signed = key(1);
        post(
            &mut registry,
            &signed,
            "wss://a.example",
            None,
            "192.0.2.1",
            T0,
        );
        let zajel = key(2);
        let public = zajel_wire::keys::public_key_to_base64(&zajel.verifying_key());
        let mut unsigned = Request::new("POST", "/servers", "192.0.3.1");
        unsigned.body = serde_json::to_vec(
            &json!({"serverId": id(&zajel), "endpoint": "wss://zajel.example", "publicKey": public}),
        )
        .unwrap();
        assert_eq!(registry.handle(&unsigned, T0).status, 202);
        let checks = registry.poll_checks(T0);
        let proof_required = |server: &SigningKey| {
            checks
                .iter()
                .find(|c| c.server_id == id(server))
                .map(|c| c.require_proof)
        };
        assert_eq!(proof_required(&signed), Some(true));
        assert_eq!(proof_required(&zajel), Some(false));
    }

    /// Issue 19's attack: four source addresses at the rate limit filled a
    /// 200-entry registry in seconds and a genuine relay got 503. Now each
    /// /24 stops at its cap and the genuine relay still registers.
    #[test]
    fn four_sources_at_the_rate_limit_cannot_fill_the_registry() {
        let mut registry = registry(Config {
            max_entries: 200,
            rate_limit_per_minute: 60,
            max_entries_per_network: 16,
            ..config()
        });
        let mut accepted = 0;
        for n in 0..240u32 {
            let source = format!("198.51.{}.7", 100 + n % 4);
            let endpoint = format!("wss://junk{n}.example");
            let reply = post(
                &mut registry,
                &key(1_000 + n),
                &endpoint,
                None,
                &source,
                T0 + u64::from(n),
            );
            match reply.status {
                202 => accepted += 1,
                429 => {}
                other => panic!("junk {n}: {other} {}", text(&reply)),
            }
        }
        assert_eq!(accepted, 64, "16 per /24");
        let genuine = key(1);
        let reply = post(
            &mut registry,
            &genuine,
            "wss://genuine.example",
            None,
            "192.0.2.1",
            T0 + 500,
        );
        assert_eq!(reply.status, 202, "{}", text(&reply));
    }

    #[test]
    fn the_waiting_room_is_bounded() {
        let mut registry = registry(Config {
            max_pending: 2,
            ..config()
        });
        assert_eq!(
            post(
                &mut registry,
                &key(1),
                "wss://a.example",
                None,
                "192.0.2.1",
                T0
            )
            .status,
            202
        );
        assert_eq!(
            post(
                &mut registry,
                &key(2),
                "wss://b.example",
                None,
                "192.0.3.1",
                T0
            )
            .status,
            202
        );
        let reply = post(
            &mut registry,
            &key(3),
            "wss://c.example",
            None,
            "192.0.4.1",
            T0,
        );
        assert_eq!(reply.status, 503);
        assert_eq!(reply.refused, Some("checks_busy"));
        assert!(reply.header("Retry-After").is_some());
    }

    /// Registry with entries listed at once (no admission check), `ttl_ms` TTL.
    fn listing_registry(ttl_ms: u64) -> Registry<SqliteStore> {
        registry(Config {
            admission: Admission::Off,
            ttl_ms,
            ..config()
        })
    }

    fn get_list(registry: &mut Registry<SqliteStore>, now: u64) -> Response {
        let response = registry.handle(&Request::new("GET", "/servers", "192.0.2.200"), now);
        assert_eq!(response.status, 200, "{}", text(&response));
        response
    }

    fn heartbeat(registry: &mut Registry<SqliteStore>, key: &SigningKey, now: u64) -> Response {
        let mut request = Request::new("POST", "/servers/heartbeat", "192.0.2.1");
        request.body = serde_json::to_vec(&HeartbeatRequest::signed(key, now)).unwrap();
        registry.handle(&request, now)
    }

    fn peers_of(response: &Response) -> Vec<String> {
        assert_eq!(response.status, 200, "{}", text(response));
        let body: zajel_wire::entry::HeartbeatResponse =
            serde_json::from_slice(&response.body).unwrap();
        body.peers.into_iter().map(|e| e.server_id).collect()
    }

    fn delete(registry: &mut Registry<SqliteStore>, key: &SigningKey, now: u64) -> Response {
        let (timestamp, signature) = signature::sign_unregister(key, now);
        let mut request = Request::new("DELETE", &format!("/servers/{}", id(key)), "192.0.2.1");
        request.headers.push((TIMESTAMP_HEADER.into(), timestamp));
        request.headers.push((SIGNATURE_HEADER.into(), signature));
        registry.handle(&request, now)
    }

    /// The list's `timestamp`, after checking its signature and freshness
    /// as a client with its clock at `client_now` does.
    fn verified_timestamp(response: &Response, client_now: u64) -> Result<u64, String> {
        let registry_key = SigningKey::from_bytes(&[9; 32]).verifying_key();
        signature::verify_server_list(
            &response.body,
            response.header(LIST_SIGNATURE_HEADER),
            &[registry_key],
            client_now,
        )
        .map(|list| list.timestamp)
        .map_err(|error| error.to_string())
    }

    #[test]
    fn the_signed_list_is_served_from_its_snapshot_until_the_refresh_age() {
        use crate::list_cache::LIST_REFRESH_MS;
        let mut registry = listing_registry(600_000);
        for n in 0..3 {
            post(
                &mut registry,
                &key(n),
                &format!("wss://r{n}.example"),
                None,
                &format!("192.0.{n}.1"),
                T0,
            );
        }
        let first = get_list(&mut registry, T0);
        assert_eq!(registry.snapshots_built(), 1);
        // Heartbeats of listed entries only move lastSeen: same body, same signature.
        for n in 0..3 {
            assert_eq!(
                peers_of(&heartbeat(
                    &mut registry,
                    &key(n),
                    T0 + 1_000 + u64::from(n)
                ))
                .len(),
                2
            );
        }
        let last_served = get_list(&mut registry, T0 + LIST_REFRESH_MS - 1);
        assert_eq!(last_served, first, "the body and its signature are kept");
        assert_eq!(
            registry.snapshots_built(),
            1,
            "not re-signed within the refresh age"
        );
        assert_eq!(
            verified_timestamp(&last_served, T0 + LIST_REFRESH_MS - 1),
            Ok(T0)
        );
        // The oldest body served is still accepted by a client whose clock
        // runs up to 4 minutes ahead of the registry's.
        let skew = FRESHNESS_WINDOW_MS - LIST_REFRESH_MS;
        assert_eq!(
            verified_timestamp(&last_served, T0 + LIST_REFRESH_MS - 1 + skew),
            Ok(T0)
        );
        // At the refresh age it is signed again, with the new time and the heartbeats' lastSeen.
        let refreshed = get_list(&mut registry, T0 + LIST_REFRESH_MS);
        assert_eq!(registry.snapshots_built(), 2);
        assert_eq!(
            verified_timestamp(&refreshed, T0 + LIST_REFRESH_MS),
            Ok(T0 + LIST_REFRESH_MS)
        );
        let list: ServerList = serde_json::from_slice(&refreshed.body).unwrap();
        assert_eq!(list.servers[0].last_seen, T0 + 1_000);
        // A clock that went back never serves a list "from the future".
        let earlier = get_list(&mut registry, T0 + LIST_REFRESH_MS - 5);
        assert_eq!(
            verified_timestamp(&earlier, T0 + LIST_REFRESH_MS - 5),
            Ok(T0 + LIST_REFRESH_MS - 5)
        );
    }

    #[test]
    fn an_entry_going_stale_is_never_served_from_the_snapshot() {
        let ttl = 300_000;
        let mut registry = listing_registry(ttl);
        post(
            &mut registry,
            &key(1),
            "wss://old.example",
            None,
            "192.0.1.1",
            T0,
        );
        post(
            &mut registry,
            &key(2),
            "wss://new.example",
            None,
            "192.0.2.1",
            T0 + 250_000,
        );
        assert_eq!(listed(&mut registry, T0 + 250_000).len(), 2);
        // key(1) was last seen at T0: fresh up to T0 + ttl - 1, inside the snapshot's refresh age.
        assert_eq!(listed(&mut registry, T0 + ttl - 1).len(), 2);
        assert_eq!(listed(&mut registry, T0 + ttl), vec![id(&key(2))]);
        assert_eq!(
            peers_of(&heartbeat(&mut registry, &key(2), T0 + ttl)),
            Vec::<String>::new()
        );
    }

    fn conditional_list(registry: &mut Registry<SqliteStore>, etag: &str, now: u64) -> Response {
        let mut request = Request::new("GET", "/servers", "192.0.2.200");
        request.headers.push(("if-none-match".into(), etag.into()));
        registry.handle(&request, now)
    }

    /// `If-None-Match` with the served snapshot's `ETag` gets 304; hostile:
    /// a client holding the list from before a removal (even one in the
    /// same millisecond) or from before a refresh gets the new body.
    #[test]
    fn an_unchanged_list_is_answered_not_modified_and_a_changed_one_never() {
        use crate::list_cache::LIST_REFRESH_MS;
        let mut registry = listing_registry(600_000);
        for n in 0..2 {
            post(
                &mut registry,
                &key(n),
                &format!("wss://r{n}.example"),
                None,
                &format!("192.0.{n}.1"),
                T0,
            );
        }
        let first = get_list(&mut registry, T0);
        let etag = first.header("ETag").expect("an ETag").to_string();
        let same = conditional_list(&mut registry, &etag, T0 + 5);
        assert_eq!(same.status, 304);
        assert!(same.body.is_empty());
        assert_eq!(same.header("ETag"), Some(etag.as_str()));
        assert_eq!(
            same.header(LIST_SIGNATURE_HEADER),
            first.header(LIST_SIGNATURE_HEADER),
            "the kept body's signature still applies"
        );
        assert_eq!(same.header("Access-Control-Allow-Origin"), Some("*"));
        assert_eq!(
            conditional_list(&mut registry, "\"something-else\"", T0 + 5).status,
            200
        );
        // A removal in the same millisecond: the old tag no longer matches.
        assert_eq!(delete(&mut registry, &key(0), T0 + 5).status, 200);
        let after = conditional_list(&mut registry, &etag, T0 + 5);
        assert_eq!(after.status, 200);
        assert_eq!(verified_timestamp(&after, T0 + 5), Ok(T0 + 5));
        let list: ServerList = serde_json::from_slice(&after.body).unwrap();
        assert_eq!(list.servers.len(), 1);
        assert_eq!(list.servers[0].server_id, id(&key(1)));
        let etag = after.header("ETag").unwrap().to_string();
        // At the refresh age the list is signed again with a new timestamp: a new tag.
        let refreshed = conditional_list(&mut registry, &etag, T0 + 5 + LIST_REFRESH_MS);
        assert_eq!(refreshed.status, 200);
        assert_ne!(refreshed.header("ETag"), Some(etag.as_str()));
        assert_eq!(
            verified_timestamp(&refreshed, T0 + 5 + LIST_REFRESH_MS),
            Ok(T0 + 5 + LIST_REFRESH_MS)
        );
    }

    /// Hostile: a snapshot taken before a removal must never be served
    /// after it, neither as the list nor as a heartbeat's peers.
    #[test]
    fn every_change_to_the_listed_set_shows_in_the_next_read() {
        let mut registry = registry(Config {
            recheck_interval_ms: 1_000,
            ..config()
        });
        let (a, b, c) = (key(1), key(2), key(3));
        let mut now = T0;
        // Admission: listed at the check's result.
        for (n, k) in [&a, &b].into_iter().enumerate() {
            post(
                &mut registry,
                k,
                &format!("wss://r{n}.example"),
                None,
                &format!("192.0.{n}.1"),
                now,
            );
        }
        assert!(listed(&mut registry, now).is_empty());
        admit_all(&mut registry, now);
        assert_eq!(
            listed(&mut registry, now).len(),
            2,
            "admitted entries show at once"
        );
        // Register: a registration waiting for its check does not change the list...
        post(&mut registry, &c, "wss://c.example", None, "192.0.3.1", now);
        let built = registry.snapshots_built();
        assert_eq!(listed(&mut registry, now).len(), 2);
        assert_eq!(registry.snapshots_built(), built, "nothing visible changed");
        // ...a heartbeat of a waiting registration neither...
        assert_eq!(peers_of(&heartbeat(&mut registry, &c, now + 1)).len(), 2);
        assert_eq!(registry.snapshots_built(), built);
        // ...its admission does.
        admit_all(&mut registry, now + 2);
        assert_eq!(listed(&mut registry, now + 2).len(), 3);
        // A listed entry re-registering at its endpoint is refreshed in place (listed at once).
        post(
            &mut registry,
            &c,
            "wss://c.example",
            Some("eu"),
            "192.0.3.1",
            now + 3,
        );
        let list: ServerList =
            serde_json::from_slice(&get_list(&mut registry, now + 3).body).unwrap();
        assert!(list
            .servers
            .iter()
            .any(|e| e.server_id == id(&c) && e.region == "eu"));
        // Delete: gone from the very next list and peer list, same millisecond.
        now += 10;
        assert_eq!(listed(&mut registry, now).len(), 3);
        assert_eq!(delete(&mut registry, &a, now).status, 200);
        assert!(
            !listed(&mut registry, now).contains(&id(&a)),
            "a removed server was served"
        );
        assert!(!peers_of(&heartbeat(&mut registry, &b, now)).contains(&id(&a)));
        // Drop after failed rechecks: gone from the next read.
        assert_eq!(listed(&mut registry, now).len(), 2);
        for round in 1..=2u64 {
            let at = now + round * 1_000;
            for check in registry.poll_checks(at) {
                let result = if check.server_id == id(&b) {
                    CheckResult::failed("timeout")
                } else {
                    CheckResult::Verified
                };
                registry.check_finished(check.id, &result, at);
            }
        }
        now += 2_000;
        assert_eq!(
            listed(&mut registry, now),
            vec![id(&c)],
            "a dropped server was served"
        );
        assert_eq!(
            peers_of(&heartbeat(&mut registry, &c, now)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_sweep_that_makes_room_shows_in_the_next_read() {
        let ttl = 300_000;
        let mut registry = registry(Config {
            admission: Admission::Off,
            max_entries: 2,
            ttl_ms: ttl,
            ..config()
        });
        post(
            &mut registry,
            &key(1),
            "wss://a.example",
            None,
            "192.0.1.1",
            T0,
        );
        post(
            &mut registry,
            &key(2),
            "wss://b.example",
            None,
            "192.0.2.1",
            T0 + 200_000,
        );
        assert_eq!(listed(&mut registry, T0 + 200_000).len(), 2);
        // key(1) stale at T0 + ttl: the full registry sweeps it to make room for key(3).
        let reply = post(
            &mut registry,
            &key(3),
            "wss://c.example",
            None,
            "192.0.3.1",
            T0 + ttl,
        );
        assert_eq!(reply.status, 200, "{}", text(&reply));
        let mut now_listed = listed(&mut registry, T0 + ttl);
        now_listed.sort();
        let mut expected = vec![id(&key(2)), id(&key(3))];
        expected.sort();
        assert_eq!(now_listed, expected);
    }
}
