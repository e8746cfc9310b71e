//! The Cloudflare Workers host: a fetch handler that hands every request to
//! one Durable Object (named `global`), which runs the [`Registry`] over its
//! SQLite-backed storage.
//!
//! The fetch handler reads at most one byte past the body limit (as the
//! native host does) and passes the client's address (`CF-Connecting-IP`) to
//! the object in a header it always overwrites, so clients cannot choose
//! their rate-limit bucket. The Durable Object's output gate holds each
//! response until its writes are durable.
//!
//! Admission checks run from the Durable Object's alarm: a registration
//! answered 202 (waiting for its check) sets the alarm for now; the alarm
//! runs the checks the registry hands out (at most its concurrency at once,
//! each an outbound `fetch` with `Upgrade: websocket` bounded by the check's
//! timeout), reports each result, and sets the next alarm for the next
//! recheck. Workers cannot resolve names or connect to private addresses
//! themselves, so the native host's resolved-address rule has no
//! counterpart here: Cloudflare's network only connects out to public
//! addresses (under `wrangler dev`, workerd connects wherever the name
//! points, which is how tests reach a relay on loopback).
//!
//! The `scheduled` handler (the Cron Trigger of `wrangler.toml`) republishes
//! the signed `_zajel.<domain>` TXT set through Cloudflare's DNS API when
//! `TXT_DOMAIN` is set: it reads the registry's own signed list from the
//! Durable Object (as clients see it, signature checked), lists what the API
//! serves, and lets [`crate::txt_cron::plan`] decide; each run logs one JSON
//! line (`"event":"txt_publish"`, `ok`, `outcome`, `reason`, counts,
//! `published_at`, `expires`, `refresh_at`), the token never in it.

use std::cell::RefCell;

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde::Deserialize;
use worker::{
    console_error, console_log, console_warn, durable_object, event, Context, Date, Delay, Env,
    Fetch, Headers, Method, Request, RequestInit, Response, Result, ScheduleContext,
    ScheduledEvent, SqlStorage, SqlStorageValue, State, Url, WebSocket, WebsocketEvent,
};
use zajel_discovery_core::registry_list;
use zajel_wire::entry::ServerEntry;
use zajel_wire::signature::LIST_SIGNATURE_HEADER;

use crate::admission::{CheckResult, Conversation, EndpointCheck};
use crate::config::{Config, MAX_BODY_BYTES};
use crate::registry::{self, Registry};
use crate::store::{self, Store, StoreError, StoredEntry};
use crate::txt_cron::{
    self, ApiCall, CloudflareApi, ListedRecord, Plan, TxtCronConfig, TxtCronError,
};

/// The Durable Object binding declared in `wrangler.toml`.
pub const BINDING: &str = "REGISTRY";
/// The one instance that holds every entry.
pub const INSTANCE: &str = "global";
/// Header carrying the client address from the fetch handler to the object.
const CLIENT_HEADER: &str = "X-Zajel-Client-Address";
/// Header marking the `scheduled` handler's own requests to the object (the
/// fetch handler drops it from every client request).
const INTERNAL_HEADER: &str = "X-Zajel-Internal";
/// Where the object keeps the TXT publication status.
const TXT_STATUS_KEY: &str = "txt_status";

#[event(fetch)]
async fn fetch(mut request: Request, env: Env, _ctx: Context) -> Result<Response> {
    let client = request
        .headers()
        .get("CF-Connecting-IP")?
        .unwrap_or_else(|| "unknown".to_string());
    let headers = Headers::new();
    for (name, value) in request.headers().entries() {
        if !name.eq_ignore_ascii_case(CLIENT_HEADER) && !name.eq_ignore_ascii_case(INTERNAL_HEADER)
        {
            headers.append(&name, &value)?;
        }
    }
    headers.set(CLIENT_HEADER, &client)?;
    let method = request.method();
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if !matches!(method, Method::Get | Method::Head) {
        let body = read_bounded(&mut request).await?;
        init.with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    }
    let forwarded = Request::new_with_init(request.url()?.as_ref(), &init)?;
    let stub = env
        .durable_object(BINDING)?
        .id_from_name(INSTANCE)?
        .get_stub()?;
    stub.fetch_with_request(forwarded).await
}

/// The Cron Trigger: republishes the `_zajel` TXT set when it is due.
#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let now_ms = Date::now().as_millis();
    let report = match publish_txt(&env, now_ms).await {
        Ok(Some(report)) => {
            console_log!("{report}");
            report
        }
        Ok(None) => return,
        Err(error) => {
            let report = serde_json::json!({
                "event": "txt_publish",
                "ok": false,
                "kind": error.kind(),
                "error": error.to_string(),
                "cron": event.cron(),
                "attempted_at": now_ms / 1000,
            });
            console_error!("{report}");
            report
        }
    };
    if let Err(error) = record_status(&env, &report).await {
        console_error!("txt_publish: the status for /metrics was not stored: {error}");
    }
}

/// Hands a run's report to the Durable Object, which keeps the status `GET /metrics` shows.
async fn record_status(env: &Env, report: &serde_json::Value) -> Result<()> {
    let stub = env
        .durable_object(BINDING)?
        .id_from_name(INSTANCE)?
        .get_stub()?;
    let headers = Headers::new();
    headers.set(INTERNAL_HEADER, "txt-status")?;
    headers.set(CLIENT_HEADER, "cron-trigger")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&report.to_string())));
    let request = Request::new_with_init("https://registry.internal/txt-status", &init)?;
    stub.fetch_with_request(request).await.map(|_| ())
}

/// A secret or var.
fn setting(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|value| value.to_string())
        .or_else(|_| env.var(name).map(|value| value.to_string()))
        .ok()
}

fn unreachable(what: &'static str) -> impl Fn(worker::Error) -> TxtCronError {
    move |error| TxtCronError::Unreachable {
        what,
        detail: error.to_string(),
    }
}

/// One run: `Ok(None)` when TXT publishing is not configured, else the log line.
async fn publish_txt(
    env: &Env,
    now_ms: u64,
) -> std::result::Result<Option<serde_json::Value>, TxtCronError> {
    let Some(config) = TxtCronConfig::from_vars(|name| setting(env, name))? else {
        return Ok(None);
    };
    let key = Config::from_vars(|name| setting(env, name))
        .map_err(TxtCronError::Config)?
        .signing_key
        .ok_or_else(|| {
            TxtCronError::Config("BOOTSTRAP_SIGNING_KEY is not set: nothing can be signed".into())
        })?;
    let servers = registry_servers(env, &key, now_ms).await?;
    let api = CloudflareApi { config: &config };
    let (zones, _): (Vec<txt_cron::Zone>, _) = api_call(&config, api.zone_lookup()).await?;
    let zone_id = zones
        .into_iter()
        .next()
        .map(|zone| zone.id)
        .ok_or_else(|| TxtCronError::ZoneNotFound(config.zone.clone()))?;
    let mut listed: Vec<ListedRecord> = Vec::new();
    let mut page = 1;
    loop {
        let (batch, info): (Vec<ListedRecord>, _) =
            api_call(&config, api.list(&zone_id, page)).await?;
        listed.extend(batch);
        if !txt_cron::has_next_page(info, page) {
            break;
        }
        page += 1;
    }
    let now = now_ms / 1000;
    let name = api.record_name();
    let report = match txt_cron::plan(&config, &key, &servers, &listed, now)? {
        Plan::Skip { refresh_at } => serde_json::json!({
            "event": "txt_publish", "ok": true, "outcome": "unchanged", "name": name,
            "records": listed.len(), "refresh_at": refresh_at, "checked_at": now,
        }),
        Plan::NothingToPublish => serde_json::json!({
            "event": "txt_publish", "ok": true, "outcome": "nothing_to_publish", "name": name,
            "records": listed.len(), "checked_at": now,
        }),
        Plan::Replace {
            reason,
            create,
            delete,
            expires,
        } => {
            // Creations first, so the name never goes empty.
            for record in &create {
                let _: (serde_json::Value, _) =
                    api_call(&config, api.create(&zone_id, record)).await?;
            }
            for id in &delete {
                let _: (serde_json::Value, _) = api_call(&config, api.delete(&zone_id, id)).await?;
            }
            serde_json::json!({
                "event": "txt_publish", "ok": true, "outcome": "published", "name": name,
                "reason": reason.as_str(), "created": create.len(), "deleted": delete.len(),
                "published_at": now, "expires": expires,
                "refresh_at": now + config.valid_for_secs / 2,
            })
        }
    };
    Ok(Some(report))
}

/// The registry's own list, from the Durable Object as clients read it,
/// its signature checked with the key.
async fn registry_servers(
    env: &Env,
    key: &ed25519_dalek::SigningKey,
    now_ms: u64,
) -> std::result::Result<Vec<ServerEntry>, TxtCronError> {
    let failed = unreachable("registry list");
    let namespace = env.durable_object(BINDING).map_err(&failed)?;
    let stub = namespace
        .id_from_name(INSTANCE)
        .and_then(|id| id.get_stub())
        .map_err(&failed)?;
    let headers = Headers::new();
    headers
        .set(CLIENT_HEADER, "cron-trigger")
        .map_err(&failed)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let request =
        Request::new_with_init("https://registry.internal/servers", &init).map_err(&failed)?;
    let mut response = stub.fetch_with_request(request).await.map_err(&failed)?;
    let status = response.status_code();
    let signature = response
        .headers()
        .get(LIST_SIGNATURE_HEADER)
        .map_err(&failed)?;
    let body = response.bytes().await.map_err(&failed)?;
    let result = registry_list::check_response(
        status,
        signature.as_deref(),
        &body,
        &[key.verifying_key()],
        now_ms,
    );
    if !result.verified {
        return Err(TxtCronError::RegistryList(format!(
            "{}: {}",
            result.outcome, result.detail
        )));
    }
    Ok(result.servers)
}

/// One call of Cloudflare's API, the token in `Authorization: Bearer`.
async fn api_call<T: serde::de::DeserializeOwned>(
    config: &TxtCronConfig,
    call: ApiCall,
) -> std::result::Result<(T, Option<txt_cron::ResultInfo>), TxtCronError> {
    let failed = unreachable(call.what);
    let headers = Headers::new();
    headers
        .set("Authorization", &format!("Bearer {}", config.token))
        .map_err(&failed)?;
    let mut init = RequestInit::new();
    init.with_method(Method::from(call.method.to_string()));
    if let Some(body) = &call.body {
        headers
            .set("Content-Type", "application/json")
            .map_err(&failed)?;
        init.with_body(Some(wasm_bindgen::JsValue::from_str(body)));
    }
    init.with_headers(headers);
    let request = Request::new_with_init(&call.url, &init).map_err(&failed)?;
    let mut response = Fetch::Request(request).send().await.map_err(&failed)?;
    let status = response.status_code();
    let body = response.bytes().await.map_err(&failed)?;
    txt_cron::parse_answer(call.what, status, &body)
}

/// Reads the body, keeping at most one byte past the limit.
///
/// The rest of an oversize body is read and dropped rather than left
/// unread: workerd (under `wrangler dev`, at least) fails the *next* request
/// on the connection when a response goes out before its request body was
/// consumed. Memory stays bounded either way.
async fn read_bounded(request: &mut Request) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = match request.stream() {
        Ok(stream) => stream,
        Err(_) => return Ok(body),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = (MAX_BODY_BYTES + 1).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

/// The Durable Object holding the registry.
#[durable_object]
pub struct RegistryObject {
    state: State,
    env: Env,
    sql: SqlStorage,
    core: RefCell<Option<Registry<DurableStore>>>,
}

impl worker::DurableObject for RegistryObject {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        Self {
            state,
            env,
            sql,
            core: RefCell::new(None),
        }
    }

    /// Runs the admission checks that are due, then sets the next alarm.
    async fn alarm(&self) -> Result<Response> {
        let mut running = FuturesUnordered::new();
        loop {
            let checks = self.with_core(|registry| registry.poll_checks(Date::now().as_millis()));
            for check in checks.unwrap_or_default() {
                running.push(run_check(check));
            }
            let Some((check, result)) = running.next().await else {
                break;
            };
            let line = self.with_core(|registry| {
                registry.check_finished(check.id, &result, Date::now().as_millis())
            });
            if let Ok(Some(line)) = line {
                console_log!("{line}");
            }
        }
        self.schedule_checks().await?;
        Response::ok("checked")
    }

    async fn fetch(&self, mut request: Request) -> Result<Response> {
        let url = request.url()?;
        if let Some(response) = self.txt_status(&mut request, url.path()).await? {
            return Ok(response);
        }
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let client = request
            .headers()
            .get(CLIENT_HEADER)?
            .unwrap_or_else(|| "unknown".to_string());
        let mut core_request = registry::Request::new(request.method().as_ref(), &path, &client);
        core_request.headers = request
            .headers()
            .entries()
            .filter(|(name, _)| !name.eq_ignore_ascii_case(CLIENT_HEADER))
            .collect();
        if !matches!(request.method(), Method::Get | Method::Head) {
            core_request.body = request.bytes().await.unwrap_or_default();
        }
        let response = match self.handle(&core_request) {
            Ok(response) => response,
            Err(error) => {
                console_error!("registry unavailable: {error}");
                return Ok(
                    Response::from_bytes(br#"{"error":"Internal error"}"#.to_vec())?
                        .with_status(500)
                        .with_headers(json_headers()?),
                );
            }
        };
        if let Some(line) = &response.refusal {
            console_warn!("{line}");
        }
        if response.status == 202 {
            // A registration waits for its check: run it now.
            self.state.storage().set_alarm(Duration::ZERO).await?;
        }
        to_worker_response(&response)
    }
}

/// The registry core's response as the Worker sends it.
fn to_worker_response(response: &registry::Response) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in &response.headers {
        headers.append(name, value)?;
    }
    let built = if response.body.is_empty() {
        Response::empty()?
    } else {
        Response::from_bytes(response.body.to_vec())?
    };
    Ok(built.with_status(response.status).with_headers(headers))
}

impl RegistryObject {
    /// The TXT publication status: stored from the `scheduled` handler's
    /// report (`POST /txt-status` with the internal header, which client
    /// requests never carry), shown on `GET /metrics` once `TXT_DOMAIN` is
    /// set. `None`: a request for the registry.
    async fn txt_status(&self, request: &mut Request, path: &str) -> Result<Option<Response>> {
        let internal = request.headers().get(INTERNAL_HEADER)?;
        if internal.as_deref() == Some("txt-status") && path == "/txt-status" {
            let report: serde_json::Value = request.json().await?;
            let storage = self.state.storage();
            let mut status: txt_cron::TxtStatus =
                storage.get(TXT_STATUS_KEY).await?.unwrap_or_default();
            status.record(&report);
            storage.put(TXT_STATUS_KEY, &status).await?;
            return Ok(Some(Response::empty()?.with_status(204)));
        }
        let publishing = setting(&self.env, "TXT_DOMAIN").is_some_and(|d| !d.trim().is_empty());
        if path == "/metrics" && request.method() == Method::Get && publishing {
            // Under the per-address read limit like any read (it reads storage).
            let client = request
                .headers()
                .get(CLIENT_HEADER)?
                .unwrap_or_else(|| "unknown".to_string());
            let refused = self
                .with_core(|registry| registry.refuse_read(&client, Date::now().as_millis()))
                .ok()
                .flatten();
            if let Some(refused) = refused {
                return Ok(Some(to_worker_response(&refused)?));
            }
            let status: txt_cron::TxtStatus = self
                .state
                .storage()
                .get(TXT_STATUS_KEY)
                .await?
                .unwrap_or_default();
            let headers = Headers::new();
            headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
            return Ok(Some(
                Response::ok(status.prometheus_text())?.with_headers(headers),
            ));
        }
        Ok(None)
    }

    /// Sets the alarm for the registry's next check time (the next recheck).
    async fn schedule_checks(&self) -> Result<()> {
        let now = Date::now().as_millis();
        let next = self
            .with_core(|registry| registry.next_check_at(now))
            .ok()
            .flatten();
        if let Some(at) = next {
            let wait = Duration::from_millis(at.saturating_sub(now));
            self.state.storage().set_alarm(wait).await?;
        }
        Ok(())
    }

    /// Runs the registry, creating it (schema and config) on first use.
    fn handle(
        &self,
        request: &registry::Request,
    ) -> std::result::Result<registry::Response, String> {
        self.with_core(|registry| registry.handle(request, Date::now().as_millis()))
    }

    /// Runs `f` on the registry (never across an await), creating it on first use.
    fn with_core<T>(
        &self,
        f: impl FnOnce(&mut Registry<DurableStore>) -> T,
    ) -> std::result::Result<T, String> {
        let mut core = self.core.borrow_mut();
        if core.is_none() {
            let config = Config::from_vars(|name| {
                self.env
                    .secret(name)
                    .map(|value| value.to_string())
                    .or_else(|_| self.env.var(name).map(|value| value.to_string()))
                    .ok()
            })?;
            if config.signing_key.is_none() {
                console_warn!("BOOTSTRAP_SIGNING_KEY is not set: GET /servers goes out unsigned");
            }
            let store = DurableStore::new(self.sql.clone()).map_err(|error| error.to_string())?;
            *core = Some(Registry::new(store, config));
        }
        let registry = core.as_mut().ok_or("registry missing")?;
        Ok(f(registry))
    }
}

/// Runs one admission check: an outbound WebSocket (`fetch` with `Upgrade:
/// websocket`) holding the [`Conversation`], bounded by the check's timeout.
async fn run_check(check: EndpointCheck) -> (EndpointCheck, CheckResult) {
    let timeout = Delay::from(Duration::from_millis(check.timeout_ms));
    let conversation = Box::pin(converse(&check));
    let result = match select(conversation, timeout).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            CheckResult::failed(format!("no identity proof within {} ms", check.timeout_ms))
        }
    };
    (check, result)
}

async fn converse(check: &EndpointCheck) -> CheckResult {
    let url = match Url::parse(&check.endpoint) {
        Ok(url) => url,
        Err(error) => return CheckResult::failed(error.to_string()),
    };
    let socket = match WebSocket::connect(url).await {
        Ok(socket) => socket,
        Err(error) => return CheckResult::failed(format!("WebSocket connect: {error}")),
    };
    let mut events = match socket.events() {
        Ok(events) => events,
        Err(error) => return CheckResult::failed(format!("WebSocket events: {error}")),
    };
    if let Err(error) = socket.accept() {
        return CheckResult::failed(format!("WebSocket accept: {error}"));
    }
    let mut conversation = Conversation::new(check.clone());
    if let Err(error) = socket.send_with_str(conversation.challenge().to_text()) {
        return conversation.on_closed(&error.to_string());
    }
    while let Some(event) = events.next().await {
        match event {
            Ok(WebsocketEvent::Message(message)) => {
                let Some(text) = message.text() else {
                    continue;
                };
                if let Some(result) = conversation.on_text(&text) {
                    let _ = socket.close(Some(1000), Some("checked"));
                    return result;
                }
            }
            Ok(WebsocketEvent::Close(close)) => {
                return conversation.on_closed(&format!("closed with {}", close.code()))
            }
            Err(error) => return conversation.on_closed(&error.to_string()),
        }
    }
    conversation.on_closed("the stream ended")
}

fn json_headers() -> Result<Headers> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    for (name, value) in registry::CORS_HEADERS {
        headers.set(name, value)?;
    }
    Ok(headers)
}

/// The registry's [`Store`] over the Durable Object's SQLite storage.
pub struct DurableStore {
    sql: SqlStorage,
}

#[derive(Deserialize)]
struct Row {
    server_id: String,
    endpoint: String,
    public_key: String,
    region: String,
    registered_at: f64,
    last_seen: f64,
    signed: f64,
}

#[derive(Deserialize)]
struct Count {
    count: f64,
}

fn storage_error(error: worker::Error) -> StoreError {
    StoreError(error.to_string())
}

/// Instants are ms since the epoch: far inside JavaScript's safe integers.
fn int(value: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

impl From<Row> for StoredEntry {
    fn from(row: Row) -> Self {
        StoredEntry {
            entry: ServerEntry {
                server_id: row.server_id,
                endpoint: row.endpoint,
                public_key: row.public_key,
                region: row.region,
                registered_at: row.registered_at as u64,
                last_seen: row.last_seen as u64,
            },
            signed: row.signed != 0.0,
        }
    }
}

impl DurableStore {
    fn new(sql: SqlStorage) -> std::result::Result<Self, StoreError> {
        for statement in store::SCHEMA {
            sql.exec(statement, None).map_err(storage_error)?;
        }
        Ok(Self { sql })
    }

    fn rows(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> std::result::Result<Vec<Row>, StoreError> {
        self.sql
            .exec(query, bindings)
            .and_then(|cursor| cursor.to_array::<Row>())
            .map_err(storage_error)
    }

    fn run(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> std::result::Result<(), StoreError> {
        self.sql
            .exec(query, bindings)
            .and_then(|cursor| cursor.to_array::<JsValueRow>())
            .map(|_| ())
            .map_err(storage_error)
    }

    fn count_of(
        &self,
        query: &str,
        bindings: Vec<SqlStorageValue>,
    ) -> std::result::Result<u64, StoreError> {
        self.sql
            .exec(query, bindings)
            .and_then(|cursor| cursor.one::<Count>())
            .map(|row| row.count as u64)
            .map_err(storage_error)
    }
}

/// Rows of statements whose results are ignored.
type JsValueRow = serde::de::IgnoredAny;

const COUNT_ONE: &str = "SELECT COUNT(*) AS count FROM servers WHERE server_id = ?";
const COUNT_STALE: &str = "SELECT COUNT(*) AS count FROM servers WHERE last_seen < ?";
const COUNT_ALL: &str = "SELECT COUNT(*) AS count FROM servers";
const COUNT_SIGNATURE: &str = "SELECT COUNT(*) AS count FROM used_signatures WHERE signature = ?";

impl Store for DurableStore {
    fn get(&self, server_id: &str) -> std::result::Result<Option<StoredEntry>, StoreError> {
        Ok(self
            .rows(store::SELECT_ONE, vec![server_id.into()])?
            .into_iter()
            .next()
            .map(StoredEntry::from))
    }

    fn put(&mut self, stored: &StoredEntry) -> std::result::Result<(), StoreError> {
        let entry = &stored.entry;
        self.run(
            store::UPSERT,
            vec![
                entry.server_id.as_str().into(),
                entry.endpoint.as_str().into(),
                entry.public_key.as_str().into(),
                entry.region.as_str().into(),
                int(entry.registered_at),
                int(entry.last_seen),
                SqlStorageValue::Integer(i64::from(stored.signed)),
            ],
        )
    }

    fn delete(&mut self, server_id: &str) -> std::result::Result<bool, StoreError> {
        // A Durable Object runs one request's synchronous code at a time, so
        // the count and the delete see the same table.
        let existed = self.count_of(COUNT_ONE, vec![server_id.into()])? > 0;
        self.run(store::DELETE_ONE, vec![server_id.into()])?;
        self.run(store::PURGE_NETWORKS, Vec::new())?;
        Ok(existed)
    }

    fn list_fresh(&self, fresh_since: u64) -> std::result::Result<Vec<ServerEntry>, StoreError> {
        Ok(self
            .rows(store::SELECT_FRESH, vec![int(fresh_since)])?
            .into_iter()
            .map(|row| StoredEntry::from(row).entry)
            .collect())
    }

    fn delete_stale(&mut self, fresh_since: u64) -> std::result::Result<u64, StoreError> {
        let stale = self.count_of(COUNT_STALE, vec![int(fresh_since)])?;
        if stale > 0 {
            self.run(store::DELETE_STALE, vec![int(fresh_since)])?;
            self.run(store::PURGE_NETWORKS, Vec::new())?;
        }
        Ok(stale)
    }

    fn count(&self) -> std::result::Result<u64, StoreError> {
        self.count_of(COUNT_ALL, Vec::new())
    }

    fn set_network(
        &mut self,
        server_id: &str,
        network: &str,
    ) -> std::result::Result<(), StoreError> {
        self.run(
            store::UPSERT_NETWORK,
            vec![server_id.into(), network.into()],
        )
    }

    fn count_network(
        &self,
        network: &str,
        fresh_since: u64,
        except: &str,
    ) -> std::result::Result<u64, StoreError> {
        self.count_of(
            store::COUNT_NETWORK,
            vec![network.into(), int(fresh_since), except.into()],
        )
    }

    fn claim_signature(
        &mut self,
        signature: &str,
        expires_at: u64,
        now: u64,
    ) -> std::result::Result<bool, StoreError> {
        self.run(store::PURGE_SIGNATURES, vec![int(now)])?;
        if self.count_of(COUNT_SIGNATURE, vec![signature.into()])? > 0 {
            return Ok(false);
        }
        self.run(
            store::INSERT_SIGNATURE,
            vec![signature.into(), int(expires_at)],
        )?;
        Ok(true)
    }
}
