//! The registry's HTTP conformance suite, run against every host: the native
//! server (in-process, and as a child process for restarts) and the Worker
//! under `wrangler dev` (real workerd). Each check runs once per host, named
//! `<host>::<check>`.
//!
//! The workerd host needs the wasm build and `npm ci` (the README's test
//! command does both). Without them it is reported as a failure, unless
//! `ZAJEL_SKIP_WORKERD=1` says to leave it out on purpose.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bootstrap_worker::registry::errors;
use discovery_client::net::error_chain;
use ed25519_dalek::SigningKey;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{json, Value};
use tests::registry_host::{self, Profile, RunningRegistry};
use zajel_client_net::now_ms;
use zajel_wire::entry::{
    HeartbeatRequest, RegisterRequest, MISSING_REGISTER_FIELDS, MISSING_SERVER_ID,
};
use zajel_wire::keys;
use zajel_wire::signature::{self, FRESHNESS_WINDOW_MS};

type Check = fn(&Host) -> Result<(), String>;
type Http = reqwest::blocking::Client;

/// The registries of one host kind, one per profile.
struct Host {
    signed: RunningRegistry,
    open: RunningRegistry,
    /// Public endpoints only, 3 entries per network, 20 reads a minute.
    strict: RunningRegistry,
    /// Checks endpoints before listing them (loopback allowed).
    admission: RunningRegistry,
    http: reqwest::blocking::Client,
}

/// What came back from one request.
struct Reply {
    /// The request's method: only reads carry CORS headers.
    method: String,
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

fn send(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Reply, String> {
    let method_name = method.to_string();
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = http.request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body);
    }
    let response = request
        .send()
        .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = response.bytes().map_err(|e| e.to_string())?.to_vec();
    Ok(Reply {
        method: method_name,
        status,
        headers,
        body,
    })
}

fn get(http: &Http, registry: &RunningRegistry, path: &str) -> Result<Reply, String> {
    send(http, "GET", &registry.url(path), &[], None)
}

fn post(
    http: &Http,
    registry: &RunningRegistry,
    path: &str,
    body: impl Into<Vec<u8>>,
) -> Result<Reply, String> {
    send(http, "POST", &registry.url(path), &[], Some(body.into()))
}

fn post_json(
    http: &Http,
    registry: &RunningRegistry,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<Reply, String> {
    post(http, registry, path, serde_json::to_vec(body).unwrap())
}

fn delete(
    http: &Http,
    registry: &RunningRegistry,
    server_id: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let encoded: String = server_id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    send(
        http,
        "DELETE",
        &registry.url(&format!("/servers/{encoded}")),
        headers,
        None,
    )
}

fn expect_error(reply: &Reply, status: u16, error: &str) -> Result<(), String> {
    ensure!(
        reply.status == status,
        "expected {status} {error:?}, got {} {}",
        reply.status,
        reply.text()
    );
    let body = reply.json()?;
    ensure!(
        body["error"] == error,
        "expected error {error:?}, got {}",
        reply.text()
    );
    expect_json_and_cors(reply)
}

fn expect_json_and_cors(reply: &Reply) -> Result<(), String> {
    ensure!(
        reply.header("content-type") == Some("application/json"),
        "content-type was {:?}",
        reply.header("content-type")
    );
    expect_cors(reply)
}

/// Reads (and preflights) carry the CORS headers; mutations carry none, so
/// no web page can read what its visitors' browsers registered.
fn expect_cors(reply: &Reply) -> Result<(), String> {
    if !matches!(reply.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        for (name, _) in bootstrap_worker::registry::CORS_HEADERS {
            ensure!(
                reply.header(name).is_none(),
                "{} answered with {name}: {:?}",
                reply.method,
                reply.header(name)
            );
        }
        return Ok(());
    }
    for (name, value) in bootstrap_worker::registry::CORS_HEADERS {
        ensure!(
            reply.header(name) == Some(value),
            "header {name} was {:?}, expected {value:?}",
            reply.header(name)
        );
    }
    Ok(())
}

fn server_key() -> SigningKey {
    registry_host::random_key()
}

fn server_id(key: &SigningKey) -> String {
    keys::server_id_for(&key.verifying_key())
}

/// Lists the registry, checks the signature and freshness, returns the entries by id.
fn list(http: &Http, registry: &RunningRegistry) -> Result<BTreeMap<String, Value>, String> {
    let reply = get(http, registry, "/servers")?;
    ensure!(
        reply.status == 200,
        "GET /servers: {} {}",
        reply.status,
        reply.text()
    );
    expect_json_and_cors(&reply)?;
    ensure!(
        reply.header("access-control-expose-headers") == Some("X-Bootstrap-Signature"),
        "expose header missing"
    );
    let list = signature::verify_server_list(
        &reply.body,
        reply.header("x-bootstrap-signature"),
        &[registry.list_key],
        now_ms(),
    )
    .map_err(|e| format!("list does not verify: {e}"))?;
    let value = reply.json()?;
    ensure!(
        value.as_object().map(|o| o.len()) == Some(2),
        "list has extra fields: {}",
        reply.text()
    );
    Ok(list
        .servers
        .iter()
        .map(|entry| {
            (
                entry.server_id.clone(),
                serde_json::to_value(entry).unwrap(),
            )
        })
        .collect())
}

fn register(
    http: &Http,
    registry: &RunningRegistry,
    key: &SigningKey,
    endpoint: &str,
    region: Option<&str>,
) -> Result<Value, String> {
    let reply = post_json(
        http,
        registry,
        "/servers",
        &RegisterRequest::signed(key, endpoint, region, now_ms()),
    )?;
    ensure!(
        reply.status == 200,
        "register: {} {}",
        reply.status,
        reply.text()
    );
    expect_json_and_cors(&reply)?;
    reply.json()
}

// ---------------------------------------------------------------- checks

fn health(host: &Host) -> Result<(), String> {
    let before = now_ms();
    let reply = get(&host.http, &host.signed, "/health")?;
    ensure!(reply.status == 200, "status {}", reply.status);
    expect_json_and_cors(&reply)?;
    let body = reply.json()?;
    ensure!(
        body["status"] == "ok" && body["service"] == "zajel-bootstrap",
        "{body}"
    );
    ensure!(
        reply
            .text()
            .starts_with(r#"{"status":"ok","service":"zajel-bootstrap","timestamp":""#),
        "fields not in Zajel's order: {}",
        reply.text()
    );
    let stamp = body["timestamp"].as_str().ok_or("no timestamp")?;
    ensure!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "timestamp {stamp:?} is not toISOString() form"
    );
    ensure!(
        stamp[..10] == bootstrap_worker::registry::iso8601(before)[..10]
            || stamp[..10] == bootstrap_worker::registry::iso8601(now_ms())[..10],
        "timestamp {stamp} is not today"
    );
    ensure!(body.as_object().unwrap().len() == 3, "extra fields: {body}");
    Ok(())
}

fn info_routes(host: &Host) -> Result<(), String> {
    for path in ["/", "/api/info"] {
        let reply = get(&host.http, &host.signed, path)?;
        ensure!(reply.status == 200, "{path}: {}", reply.status);
        expect_json_and_cors(&reply)?;
        let body = reply.json()?;
        for field in ["name", "version", "description"] {
            ensure!(body[field].is_string(), "{path}: {field} missing in {body}");
        }
        ensure!(body["endpoints"].is_object(), "{path}: endpoints missing");
        ensure!(
            reply.text().starts_with(r#"{"name":"#),
            "{path}: fields not in Zajel's order (name, version, description, endpoints)"
        );
    }
    Ok(())
}

fn unknown_routes(host: &Host) -> Result<(), String> {
    for (method, path) in [
        ("GET", "/nope"),
        ("PUT", "/servers"),
        ("GET", "/servers/heartbeat"),
        ("POST", "/servers/other"),
        ("PATCH", "/health"),
    ] {
        let reply = send(&host.http, method, &host.signed.url(path), &[], None)?;
        ensure!(reply.status == 404, "{method} {path}: {}", reply.status);
        ensure!(
            reply.text()
                == r#"{"error":"Not Found","hint":"Use GET /servers to list VPS servers"}"#,
            "{method} {path}: {}",
            reply.text()
        );
        expect_json_and_cors(&reply)?;
    }
    Ok(())
}

fn preflight(host: &Host) -> Result<(), String> {
    for path in ["/servers", "/servers/heartbeat", "/anything"] {
        let reply = send(&host.http, "OPTIONS", &host.signed.url(path), &[], None)?;
        ensure!(reply.status == 200, "OPTIONS {path}: {}", reply.status);
        ensure!(reply.body.is_empty(), "OPTIONS {path} has a body");
        expect_cors(&reply)?;
    }
    Ok(())
}

fn signed_register_list_heartbeat_delete(host: &Host) -> Result<(), String> {
    let registry = &host.signed;
    let a = server_key();
    let b = server_key();
    let before = now_ms();
    let reply = post_json(
        &host.http,
        registry,
        "/servers",
        &RegisterRequest::signed(&a, "wss://a.example:443/ws", Some("eu-west"), now_ms()),
    )?;
    let after = now_ms();
    ensure!(
        reply.status == 200,
        "register: {} {}",
        reply.status,
        reply.text()
    );
    // Zajel's field order, as its clients see the text.
    let text = reply.text();
    ensure!(
        text.starts_with(r#"{"success":true,"server":{"serverId":""#),
        "{text}"
    );
    let positions: Vec<Option<usize>> = [
        "serverId",
        "endpoint",
        "publicKey",
        "region",
        "registeredAt",
        "lastSeen",
    ]
    .iter()
    .map(|field| text.find(&format!("\"{field}\":")))
    .collect();
    ensure!(
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1]),
        "field order in {text}"
    );
    let body = reply.json()?;
    let entry = &body["server"];
    ensure!(
        entry.as_object().unwrap().len() == 6,
        "entry fields: {entry}"
    );
    ensure!(entry["serverId"] == server_id(&a), "{entry}");
    ensure!(
        entry["publicKey"] == keys::public_key_to_base64(&a.verifying_key()),
        "{entry}"
    );
    ensure!(
        entry["region"] == "eu-west" && entry["endpoint"] == "wss://a.example:443/ws",
        "{entry}"
    );
    let registered = entry["registeredAt"].as_u64().ok_or("registeredAt")?;
    ensure!(
        registered >= before && registered <= after,
        "registeredAt {registered} not in [{before}, {after}]"
    );
    ensure!(entry["lastSeen"] == entry["registeredAt"], "{entry}");

    let no_region = register(&host.http, registry, &b, "wss://b.example", None)?;
    ensure!(no_region["server"]["region"] == "unknown", "{no_region}");

    let listed = list(&host.http, registry)?;
    ensure!(
        listed.get(&server_id(&a)) == Some(entry),
        "listed {:?}",
        listed.get(&server_id(&a))
    );
    ensure!(listed.contains_key(&server_id(&b)), "b not listed");
    let ids: Vec<&String> = listed.keys().collect();
    let mut sorted = ids.clone();
    sorted.sort();
    ensure!(ids == sorted, "list is not ordered by serverId");

    let reply = post_json(
        &host.http,
        registry,
        "/servers/heartbeat",
        &HeartbeatRequest::signed(&a, now_ms()),
    )?;
    ensure!(
        reply.status == 200,
        "heartbeat: {} {}",
        reply.status,
        reply.text()
    );
    expect_json_and_cors(&reply)?;
    let beat = reply.json()?;
    ensure!(beat["success"] == true, "{beat}");
    let peers = beat["peers"].as_array().ok_or("peers")?;
    ensure!(
        peers
            .iter()
            .all(|p| p["serverId"] != server_id(&a).as_str()),
        "caller among its peers"
    );
    ensure!(
        peers
            .iter()
            .any(|p| p["serverId"] == server_id(&b).as_str()),
        "b not among peers"
    );
    let listed = list(&host.http, registry)?;
    ensure!(
        listed[&server_id(&a)]["lastSeen"].as_u64() >= Some(registered),
        "lastSeen did not move"
    );

    let (ts, sig) = signature::sign_unregister(&a, now_ms());
    let reply = delete(
        &host.http,
        registry,
        &server_id(&a),
        &[("X-Zajel-Timestamp", &ts), ("X-Zajel-Signature", &sig)],
    )?;
    ensure!(
        reply.status == 200 && reply.text() == r#"{"success":true}"#,
        "delete: {} {}",
        reply.status,
        reply.text()
    );
    expect_json_and_cors(&reply)?;
    let listed = list(&host.http, registry)?;
    ensure!(
        !listed.contains_key(&server_id(&a)),
        "a still listed after delete"
    );
    ensure!(listed.contains_key(&server_id(&b)), "b was deleted too");
    Ok(())
}

fn re_registering_replaces(host: &Host) -> Result<(), String> {
    let a = server_key();
    register(&host.http, &host.signed, &a, "wss://old.example", Some("x"))?;
    register(&host.http, &host.signed, &a, "wss://new.example", None)?;
    let listed = list(&host.http, &host.signed)?;
    let entry = &listed[&server_id(&a)];
    ensure!(
        entry["endpoint"] == "wss://new.example" && entry["region"] == "unknown",
        "{entry}"
    );
    Ok(())
}

fn unsigned_mutations_refused_under_signed_policy(host: &Host) -> Result<(), String> {
    let a = server_key();
    let id = server_id(&a);
    let public = keys::public_key_to_base64(&a.verifying_key());
    let reply = post_json(
        &host.http,
        &host.signed,
        "/servers",
        &json!({"serverId": id, "endpoint": "wss://a.example", "publicKey": public}),
    )?;
    expect_error(&reply, 401, errors::SIGNATURE_REQUIRED)?;
    register(&host.http, &host.signed, &a, "wss://a.example", None)?;
    let reply = post_json(
        &host.http,
        &host.signed,
        "/servers/heartbeat",
        &json!({"serverId": id}),
    )?;
    expect_error(&reply, 401, errors::SIGNATURE_REQUIRED)?;
    let reply = delete(&host.http, &host.signed, &id, &[])?;
    expect_error(&reply, 401, errors::SIGNATURE_REQUIRED)?;
    ensure!(
        list(&host.http, &host.signed)?.contains_key(&id),
        "entry was touched"
    );
    Ok(())
}

fn bad_signatures_refused(host: &Host) -> Result<(), String> {
    let a = server_key();
    let intruder = server_key();
    let now = now_ms();
    // Signed by another key.
    let mut forged = RegisterRequest::signed(&intruder, "wss://evil.example", None, now);
    forged.server_id = server_id(&a);
    forged.public_key = keys::public_key_to_base64(&a.verifying_key());
    expect_error(
        &post_json(&host.http, &host.signed, "/servers", &forged)?,
        401,
        errors::INVALID_SIGNATURE,
    )?;
    // A genuine signature over another endpoint.
    let mut tampered = RegisterRequest::signed(&a, "wss://a.example", None, now);
    tampered.endpoint = "wss://evil.example".into();
    expect_error(
        &post_json(&host.http, &host.signed, "/servers", &tampered)?,
        401,
        errors::INVALID_SIGNATURE,
    )?;
    // A region added after signing.
    let mut tampered = RegisterRequest::signed(&a, "wss://a.example", None, now);
    tampered.region = Some("x".into());
    expect_error(
        &post_json(&host.http, &host.signed, "/servers", &tampered)?,
        401,
        errors::INVALID_SIGNATURE,
    )?;
    // Garbage.
    for garbage in ["AAAA", "not base64", &STANDARD.encode([0u8; 64])] {
        let mut bad = RegisterRequest::signed(&a, "wss://a.example", None, now);
        bad.signature = Some(garbage.to_string());
        expect_error(
            &post_json(&host.http, &host.signed, "/servers", &bad)?,
            401,
            errors::INVALID_SIGNATURE,
        )?;
    }
    // A register signature replayed as a heartbeat.
    let genuine = RegisterRequest::signed(&a, "wss://a.example", None, now);
    register(&host.http, &host.signed, &a, "wss://a.example", None)?;
    let beat = json!({"serverId": server_id(&a), "timestamp": now, "signature": genuine.signature});
    expect_error(
        &post_json(&host.http, &host.signed, "/servers/heartbeat", &beat)?,
        401,
        errors::INVALID_SIGNATURE,
    )?;
    // A delete signed by someone else.
    let (ts, sig) = signature::sign_unregister(&intruder, now);
    let reply = delete(
        &host.http,
        &host.signed,
        &server_id(&a),
        &[("X-Zajel-Timestamp", &ts), ("X-Zajel-Signature", &sig)],
    )?;
    expect_error(&reply, 401, errors::INVALID_SIGNATURE)?;
    ensure!(
        list(&host.http, &host.signed)?.contains_key(&server_id(&a)),
        "entry was touched"
    );
    Ok(())
}

fn stale_timestamps_refused(host: &Host) -> Result<(), String> {
    let a = server_key();
    for skew in [
        -(FRESHNESS_WINDOW_MS as i64) - 60_000,
        FRESHNESS_WINDOW_MS as i64 + 60_000,
    ] {
        let when = (now_ms() as i64 + skew) as u64;
        let request = RegisterRequest::signed(&a, "wss://a.example", None, when);
        expect_error(
            &post_json(&host.http, &host.signed, "/servers", &request)?,
            401,
            errors::STALE_TIMESTAMP,
        )?;
        let (ts, sig) = signature::sign_unregister(&a, when);
        let reply = delete(
            &host.http,
            &host.signed,
            &server_id(&a),
            &[("X-Zajel-Timestamp", &ts), ("X-Zajel-Signature", &sig)],
        )?;
        expect_error(&reply, 401, errors::STALE_TIMESTAMP)?;
    }
    // Four minutes off is still within the window.
    let request = RegisterRequest::signed(&a, "wss://a.example", None, now_ms() - 240_000);
    let reply = post_json(&host.http, &host.signed, "/servers", &request)?;
    ensure!(
        reply.status == 200,
        "4 minutes old was refused: {}",
        reply.text()
    );
    Ok(())
}

fn signatures_are_accepted_once(host: &Host) -> Result<(), String> {
    let a = server_key();
    let request = RegisterRequest::signed(&a, "wss://a.example", None, now_ms());
    ensure!(
        post_json(&host.http, &host.signed, "/servers", &request)?.status == 200,
        "first use refused"
    );
    expect_error(
        &post_json(&host.http, &host.signed, "/servers", &request)?,
        401,
        errors::REPLAYED,
    )?;
    let beat = HeartbeatRequest::signed(&a, now_ms());
    ensure!(
        post_json(&host.http, &host.signed, "/servers/heartbeat", &beat)?.status == 200,
        "heartbeat refused"
    );
    expect_error(
        &post_json(&host.http, &host.signed, "/servers/heartbeat", &beat)?,
        401,
        errors::REPLAYED,
    )?;
    // A captured delete cannot be replayed after the server registers again.
    let (ts, sig) = signature::sign_unregister(&a, now_ms());
    let headers = [
        ("X-Zajel-Timestamp", ts.as_str()),
        ("X-Zajel-Signature", sig.as_str()),
    ];
    ensure!(
        delete(&host.http, &host.signed, &server_id(&a), &headers)?.status == 200,
        "delete refused"
    );
    register(&host.http, &host.signed, &a, "wss://a.example", None)?;
    expect_error(
        &delete(&host.http, &host.signed, &server_id(&a), &headers)?,
        401,
        errors::REPLAYED,
    )?;
    ensure!(
        list(&host.http, &host.signed)?.contains_key(&server_id(&a)),
        "replayed delete removed the entry"
    );
    Ok(())
}

fn half_signed_and_bad_headers_refused(host: &Host) -> Result<(), String> {
    let a = server_key();
    let mut request = RegisterRequest::signed(&a, "wss://a.example", None, now_ms());
    request.signature = None;
    expect_error(
        &post_json(&host.http, &host.signed, "/servers", &request)?,
        400,
        errors::HALF_SIGNED,
    )?;
    let reply = post_json(
        &host.http,
        &host.signed,
        "/servers/heartbeat",
        &json!({"serverId": server_id(&a), "signature": "AAAA"}),
    )?;
    expect_error(&reply, 400, errors::HALF_SIGNED)?;
    let reply = delete(
        &host.http,
        &host.signed,
        &server_id(&a),
        &[
            ("X-Zajel-Timestamp", "yesterday"),
            ("X-Zajel-Signature", "AAAA"),
        ],
    )?;
    expect_error(&reply, 400, errors::BAD_TIMESTAMP_HEADER)?;
    let reply = delete(
        &host.http,
        &host.signed,
        &server_id(&a),
        &[("X-Zajel-Signature", "AAAA")],
    )?;
    expect_error(&reply, 400, errors::HALF_SIGNED)?;
    Ok(())
}

fn registration_fields_validated(host: &Host) -> Result<(), String> {
    let a = server_key();
    let now = now_ms();
    let signed =
        |endpoint: &str, region: Option<&str>| RegisterRequest::signed(&a, endpoint, region, now);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"serverId": "x", "endpoint": "wss://a", "publicKey": "y", "timestamp": now, "signature": "AAAA"}),
            errors::INVALID_SERVER_ID,
        ),
        (
            json!({"serverId": format!("ed25519:{}", STANDARD.encode([1u8; 31])), "endpoint": "wss://a", "publicKey": STANDARD.encode([1u8; 31])}),
            errors::INVALID_SERVER_ID,
        ),
        (
            json!({"serverId": server_id(&a), "endpoint": "wss://a", "publicKey": keys::public_key_to_base64(&server_key().verifying_key())}),
            errors::KEY_MISMATCH,
        ),
        (
            serde_json::to_value(signed("ftp://a.example", None)).unwrap(),
            "Invalid endpoint: endpoint scheme must be ws:// or wss://",
        ),
        (
            serde_json::to_value(signed("wss://", None)).unwrap(),
            "Invalid endpoint: endpoint host is not a canonical DNS name, dotted-quad IPv4 or bracketed IPv6",
        ),
        (
            serde_json::to_value(signed(
                &format!("wss://a.example/{}", "p".repeat(500)),
                None,
            ))
            .unwrap(),
            "Invalid endpoint: endpoint is longer than 512 characters",
        ),
        (
            serde_json::to_value(signed("wss://a.example", Some(&"r".repeat(65)))).unwrap(),
            errors::REGION_TOO_LONG,
        ),
    ];
    for (body, error) in cases {
        expect_error(
            &post_json(&host.http, &host.signed, "/servers", &body)?,
            400,
            error,
        )
        .map_err(|e| format!("{body}: {e}"))?;
    }
    let reply = post_json(
        &host.http,
        &host.signed,
        "/servers",
        &signed(
            &format!("wss://a.example/{}", "p".repeat(512 - 16)),
            Some(&"r".repeat(64)),
        ),
    )?;
    ensure!(
        reply.status == 200,
        "512-char endpoint and 64-char region refused: {}",
        reply.text()
    );
    Ok(())
}

fn malformed_bodies_refused(host: &Host) -> Result<(), String> {
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "/servers",
            b"{\"serverId\":".to_vec(),
            "Invalid JSON body".into(),
        ),
        (
            "/servers",
            b"\xff\xfe\x00".to_vec(),
            "Invalid JSON body".into(),
        ),
        ("/servers", Vec::new(), "Invalid JSON body".into()),
        (
            "/servers",
            b"[1,2]".to_vec(),
            "Request body must be a JSON object".into(),
        ),
        (
            "/servers",
            b"\"text\"".to_vec(),
            "Request body must be a JSON object".into(),
        ),
        (
            "/servers",
            "[".repeat(8_000).into_bytes(),
            "Invalid JSON body".into(),
        ),
        ("/servers", b"{}".to_vec(), MISSING_REGISTER_FIELDS.into()),
        (
            "/servers",
            br#"{"serverId":"a","endpoint":"wss://a"}"#.to_vec(),
            MISSING_REGISTER_FIELDS.into(),
        ),
        (
            "/servers",
            br#"{"serverId":["a"],"endpoint":"wss://a","publicKey":"b"}"#.to_vec(),
            "Invalid field: serverId must be a string".into(),
        ),
        (
            "/servers",
            br#"{"serverId":"a","endpoint":"wss://a","publicKey":"b","region":7}"#.to_vec(),
            "Invalid field: region must be a string".into(),
        ),
        (
            "/servers",
            br#"{"serverId":"a","endpoint":"wss://a","publicKey":"b","timestamp":"1"}"#.to_vec(),
            "Invalid field: timestamp must be an integer (ms since the Unix epoch)".into(),
        ),
        (
            "/servers/heartbeat",
            b"{}".to_vec(),
            MISSING_SERVER_ID.into(),
        ),
        (
            "/servers/heartbeat",
            b"nope".to_vec(),
            "Invalid JSON body".into(),
        ),
        (
            "/servers/heartbeat",
            br#"{"serverId":true}"#.to_vec(),
            "Invalid field: serverId must be a string".into(),
        ),
    ];
    for (path, body, error) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        expect_error(&post(&host.http, &host.signed, path, body)?, 400, &error)
            .map_err(|e| format!("{path} {shown}: {e}"))?;
    }
    Ok(())
}

fn body_size_limit(host: &Host) -> Result<(), String> {
    let a = server_key();
    let request = serde_json::to_value(RegisterRequest::signed(
        &a,
        "wss://a.example",
        None,
        now_ms(),
    ))
    .unwrap();
    let base = serde_json::to_vec(&request).unwrap().len();
    let mut padded = request.clone();
    // `,"pad":""` adds 10 bytes before the padding itself.
    padded["pad"] = Value::String("x".repeat(8192 - base - 9));
    let body = serde_json::to_vec(&padded).unwrap();
    ensure!(body.len() == 8192, "padding arithmetic: {}", body.len());
    let reply = post(&host.http, &host.signed, "/servers", body)?;
    ensure!(
        reply.status == 200,
        "8192-byte body refused: {} {}",
        reply.status,
        reply.text()
    );
    let mut over = request;
    over["pad"] = Value::String("x".repeat(8192 - base - 8));
    let reply = post(
        &host.http,
        &host.signed,
        "/servers",
        serde_json::to_vec(&over).unwrap(),
    )?;
    expect_error(&reply, 413, errors::TOO_LARGE)?;
    let reply = post(&host.http, &host.signed, "/servers", vec![b' '; 1 << 20])?;
    expect_error(&reply, 413, errors::TOO_LARGE)?;
    Ok(())
}

fn heartbeat_of_unknown_server(host: &Host) -> Result<(), String> {
    let stranger = server_key();
    let reply = post_json(
        &host.http,
        &host.signed,
        "/servers/heartbeat",
        &HeartbeatRequest::signed(&stranger, now_ms()),
    )?;
    expect_error(&reply, 404, errors::SERVER_NOT_REGISTERED)?;
    let reply = post_json(
        &host.http,
        &host.open,
        "/servers/heartbeat",
        &json!({"serverId": server_id(&stranger)}),
    )?;
    expect_error(&reply, 404, errors::SERVER_NOT_REGISTERED)
}

fn open_policy_accepts_zajel_servers(host: &Host) -> Result<(), String> {
    let registry = &host.open;
    let a = server_key();
    let id = server_id(&a);
    // Exactly what Zajel's Node server sends.
    let body = json!({"serverId": id, "endpoint": "wss://zajel.example", "publicKey": keys::public_key_to_base64(&a.verifying_key()), "region": "me-central"});
    let reply = post_json(&host.http, registry, "/servers", &body)?;
    ensure!(
        reply.status == 200,
        "unsigned register: {} {}",
        reply.status,
        reply.text()
    );
    ensure!(list(&host.http, registry)?.contains_key(&id), "not listed");
    let reply = post_json(
        &host.http,
        registry,
        "/servers/heartbeat",
        &json!({"serverId": id}),
    )?;
    ensure!(reply.status == 200, "unsigned heartbeat: {}", reply.text());
    let reply = delete(&host.http, registry, &id, &[])?;
    ensure!(
        reply.status == 200 && reply.text() == r#"{"success":true}"#,
        "unsigned delete: {}",
        reply.text()
    );
    ensure!(
        !list(&host.http, registry)?.contains_key(&id),
        "still listed"
    );
    // Zajel answers 200 to deleting what is not there.
    ensure!(
        delete(&host.http, registry, &id, &[])?.status == 200,
        "delete of absent entry"
    );
    Ok(())
}

fn open_policy_protects_signed_entries(host: &Host) -> Result<(), String> {
    let registry = &host.open;
    let a = server_key();
    let id = server_id(&a);
    let original = register(
        &host.http,
        registry,
        &a,
        "wss://genuine.example",
        Some("eu"),
    )?;
    let hijack = json!({"serverId": id, "endpoint": "wss://evil.example", "publicKey": keys::public_key_to_base64(&a.verifying_key())});
    expect_error(
        &post_json(&host.http, registry, "/servers", &hijack)?,
        401,
        errors::ENTRY_IS_SIGNED,
    )?;
    expect_error(
        &post_json(
            &host.http,
            registry,
            "/servers/heartbeat",
            &json!({"serverId": id}),
        )?,
        401,
        errors::ENTRY_IS_SIGNED,
    )?;
    expect_error(
        &delete(&host.http, registry, &id, &[])?,
        401,
        errors::ENTRY_IS_SIGNED,
    )?;
    let listed = list(&host.http, registry)?;
    ensure!(
        listed.get(&id) == Some(&original["server"]),
        "signed entry changed: {:?}",
        listed.get(&id)
    );
    // The owner still can.
    let beat = post_json(
        &host.http,
        registry,
        "/servers/heartbeat",
        &HeartbeatRequest::signed(&a, now_ms()),
    )?;
    ensure!(
        beat.status == 200,
        "signed heartbeat under open policy: {}",
        beat.text()
    );
    Ok(())
}

/// A mutation or read sent as if from `client`: the native test hosts trust
/// loopback as a proxy (`X-Forwarded-For`), the Worker keys on `CF-Connecting-IP`.
fn from_client(
    http: &Http,
    registry: &RunningRegistry,
    method: &str,
    path: &str,
    client: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, String> {
    send(
        http,
        method,
        &registry.url(path),
        &[("X-Forwarded-For", client), ("CF-Connecting-IP", client)],
        body,
    )
}

fn register_from(
    http: &Http,
    registry: &RunningRegistry,
    key: &SigningKey,
    endpoint: &str,
    client: &str,
) -> Result<Reply, String> {
    let body = serde_json::to_vec(&RegisterRequest::signed(key, endpoint, None, now_ms())).unwrap();
    from_client(http, registry, "POST", "/servers", client, Some(body))
}

/// Endpoints no client should use and regions with control characters are
/// refused (the registry does not allow private endpoints here); a mutation
/// from a web page (an `Origin` header) is refused.
fn hostile_endpoints_and_regions_refused(host: &Host) -> Result<(), String> {
    let registry = &host.strict;
    let long = format!("wss://relay.example/{}", "a".repeat(520));
    let cases: Vec<(&str, &str)> = vec![
        ("ws://127.0.0.1:9000", "not public"),
        ("ws://169.254.169.254/latest/meta-data", "not public"),
        ("wss://10.0.0.1", "not public"),
        ("wss://192.168.1.1", "not public"),
        ("wss://100.64.0.1", "not public"),
        ("wss://[::1]:443", "not public"),
        ("wss://[fd12::1]", "not public"),
        ("wss://localhost", "not public"),
        ("wss://0x7f.1", "canonical"),
        ("wss://2130706433", "canonical"),
        ("wss://0177.0.0.1", "canonical"),
        ("wss://Relay.Example", "canonical"),
        (" wss://relay.example", "printable ASCII"),
        ("wss://relay.example ", "printable ASCII"),
        ("wss://relay.example/\n", "printable ASCII"),
        ("wss://relay.example/\u{202e}evil", "printable ASCII"),
        ("wss://r\u{e9}lay.example", "printable ASCII"),
        ("http://relay.example", "ws:// or wss://"),
        ("wss://relay.example:0", "port"),
        ("wss://relay.example:99999", "port"),
        ("wss://relay.example/?q=1", "query"),
        (&long, "longer than 512"),
    ];
    let key = server_key();
    for (endpoint, expected) in cases {
        let reply = register_from(&host.http, registry, &key, endpoint, "198.51.100.40")?;
        ensure!(
            reply.status == 400,
            "{endpoint:?}: {} {}",
            reply.status,
            reply.text()
        );
        let error = reply.json()?["error"].as_str().unwrap_or("").to_string();
        ensure!(
            error.starts_with("Invalid endpoint: ") && error.contains(expected),
            "{endpoint:?}: {error}"
        );
        expect_cors(&reply)?;
    }
    for region in ["eu\nwest", "eu\0", "\u{202e}eu", "\u{e9}u"] {
        let request = RegisterRequest::signed(&key, "wss://relay.example", Some(region), now_ms());
        let reply = post_json(&host.http, registry, "/servers", &request)?;
        expect_error(&reply, 400, errors::REGION_NOT_PRINTABLE)
            .map_err(|e| format!("region {region:?}: {e}"))?;
    }
    let body = serde_json::to_vec(&RegisterRequest::signed(
        &key,
        "wss://relay.example",
        None,
        now_ms(),
    ))
    .unwrap();
    let reply = send(
        &host.http,
        "POST",
        &registry.url("/servers"),
        &[("Origin", "https://any-page.example")],
        Some(body),
    )?;
    expect_error(&reply, 403, errors::FROM_BROWSER)
}

/// One network (an IPv4 /24) holds at most its cap of entries; another
/// network still registers.
fn entries_capped_per_network(host: &Host) -> Result<(), String> {
    let registry = &host.strict;
    for n in 0..3 {
        let reply = register_from(
            &host.http,
            registry,
            &server_key(),
            &format!("wss://capped{n}.example"),
            &format!("203.0.113.{}", 10 + n),
        )?;
        ensure!(
            reply.status == 200,
            "entry {n}: {} {}",
            reply.status,
            reply.text()
        );
    }
    let reply = register_from(
        &host.http,
        registry,
        &server_key(),
        "wss://capped.example",
        "203.0.113.99",
    )?;
    expect_error(&reply, 429, errors::NETWORK_FULL)?;
    let reply = register_from(
        &host.http,
        registry,
        &server_key(),
        "wss://other.example",
        "192.0.2.77",
    )?;
    ensure!(
        reply.status == 200,
        "another /24: {} {}",
        reply.status,
        reply.text()
    );
    Ok(())
}

/// Reads are rate limited per address: a flood gets 429 with Retry-After
/// (CORS kept, so a page sees why), another address still reads.
fn read_flood_limited(host: &Host) -> Result<(), String> {
    let registry = &host.strict;
    let mut limited = None;
    for n in 0..(STRICT.read_rate_limit + 5) {
        let reply = from_client(
            &host.http,
            registry,
            "GET",
            "/health",
            "198.51.100.200",
            None,
        )?;
        if reply.status == 429 {
            limited = Some((n, reply));
            break;
        }
        ensure!(reply.status == 200, "read {n}: {}", reply.status);
    }
    let (n, reply) = limited.ok_or("a read flood was never limited")?;
    ensure!(
        n >= STRICT.read_rate_limit / 2,
        "limited after only {n} reads"
    );
    expect_error(&reply, 429, errors::RATE_LIMITED)?;
    ensure!(reply.header("retry-after").is_some(), "no Retry-After");
    let other = from_client(&host.http, registry, "GET", "/health", "192.0.2.201", None)?;
    ensure!(
        other.status == 200,
        "another address was limited: {}",
        other.status
    );
    Ok(())
}

/// Polls until the registry lists `server_id`, or fails at `deadline`.
fn wait_listed(
    http: &Http,
    registry: &RunningRegistry,
    server_id: &str,
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if list(http, registry)?.contains_key(server_id) {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < limit,
            "{server_id} not listed within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls heartbeats until `key`'s registration is forgotten (its check
/// failed: 404), or fails at `limit`.
fn wait_refused(
    http: &Http,
    registry: &RunningRegistry,
    key: &SigningKey,
    limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let reply = post_json(
            http,
            registry,
            "/servers/heartbeat",
            &HeartbeatRequest::signed(key, now_ms()),
        )?;
        if reply.status == 404 {
            return Ok(());
        }
        ensure!(
            reply.status == 200,
            "heartbeat: {} {}",
            reply.status,
            reply.text()
        );
        ensure!(
            started.elapsed() < limit,
            "{} still waiting after {limit:?}",
            server_id(key)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// New endpoints are listed only once the registry checked them: junk
/// (a port that accepts and never answers, a refused port) from several
/// networks is never listed and does not hold back the genuine relay-lite,
/// which registers itself and is listed within one check timeout; its own
/// endpoint registered under another key is never listed; once the relay
/// stops, its rechecks fail and it is dropped.
fn admission_checks_before_listing(host: &Host) -> Result<(), String> {
    let registry = &host.admission;
    let silent = tests::blackhole::AcceptsSilently::start();
    let refused = tests::blackhole::refused_address();
    let mut junk = Vec::new();
    for n in 0..30u32 {
        let key = server_key();
        let endpoint = if n % 4 == 3 {
            format!("ws://{refused}/junk{n}")
        } else {
            format!("ws://{}/junk{n}", silent.address)
        };
        let source = format!("198.51.{}.{}", 100 + n % 3, 1 + n);
        let reply = register_from(&host.http, registry, &key, &endpoint, &source)?;
        ensure!(
            reply.status == 202,
            "junk {n}: {} {}",
            reply.status,
            reply.text()
        );
        ensure!(reply.json()?["admission"] == "pending", "{}", reply.text());
        expect_cors(&reply)?;
        junk.push(key);
    }
    ensure!(
        list(&host.http, registry)?.is_empty(),
        "junk listed before any check"
    );
    let started = Instant::now();
    let mut relay = tests::relay_child::RelayChild::start(
        &["--bootstrap", &registry.base_url],
        Duration::from_secs(20),
    )?;
    let took = wait_listed(
        &host.http,
        registry,
        &relay.server_id,
        Duration::from_secs(15),
    )?;
    eprintln!(
        "{}: genuine relay listed {took:?} after its start, behind {} junk registrations",
        registry.name,
        junk.len()
    );
    ensure!(
        started.elapsed() < Duration::from_secs(8),
        "the genuine relay waited {:?} behind junk (check timeout 2 s)",
        started.elapsed()
    );
    // Its endpoint under another key: the proof names the relay's key, so it fails.
    let impostor = server_key();
    let reply = register_from(&host.http, registry, &impostor, &relay.url(), "192.0.2.50")?;
    ensure!(
        reply.status == 202,
        "impostor: {} {}",
        reply.status,
        reply.text()
    );
    wait_refused(&host.http, registry, &impostor, Duration::from_secs(15))?;
    for key in &junk {
        wait_refused(&host.http, registry, key, Duration::from_secs(30))?;
    }
    let listed = list(&host.http, registry)?;
    ensure!(
        listed.len() == 1 && listed.contains_key(&relay.server_id),
        "expected only the relay, got {:?}",
        listed.keys().collect::<Vec<_>>()
    );
    // Rechecks every second: a relay that stops answering is dropped after two failures.
    relay.process.kill();
    let stopped = Instant::now();
    while list(&host.http, registry)?.contains_key(&relay.server_id) {
        ensure!(
            stopped.elapsed() < Duration::from_secs(20),
            "a stopped relay stayed listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{}: stopped relay dropped after {:?}",
        registry.name,
        stopped.elapsed()
    );
    Ok(())
}

/// Runs against a registry of its own: TTL 1 s, 6 mutations a minute, 3 entries.
fn limits(registry: &RunningRegistry, http: &Http) -> Result<(), String> {
    let keys: Vec<SigningKey> = (0..4).map(|_| server_key()).collect();
    for key in &keys[..3] {
        register(http, registry, key, "wss://a.example", None)?;
    }
    let full = post_json(
        http,
        registry,
        "/servers",
        &RegisterRequest::signed(&keys[3], "wss://d.example", None, now_ms()),
    )?;
    expect_error(&full, 503, errors::FULL)?;
    let listed = list(http, registry)?;
    ensure!(
        listed.len() == 3,
        "expected 3 entries, got {}",
        listed.len()
    );
    // Entries expire one TTL after they were last seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !list(http, registry)?.is_empty() {
        ensure!(Instant::now() < deadline, "entries did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = post_json(
        http,
        registry,
        "/servers/heartbeat",
        &HeartbeatRequest::signed(&keys[0], now_ms()),
    )?;
    expect_error(&reply, 404, errors::SERVER_NOT_REGISTERED)?;
    register(http, registry, &keys[3], "wss://d.example", None)?;
    // That was the sixth mutation this minute.
    let reply = post_json(
        http,
        registry,
        "/servers",
        &RegisterRequest::signed(&keys[1], "wss://b.example", None, now_ms()),
    )?;
    expect_error(&reply, 429, errors::RATE_LIMITED)?;
    let retry: u64 = reply
        .header("retry-after")
        .ok_or("no Retry-After")?
        .parse()
        .map_err(|_| "Retry-After not a number")?;
    ensure!((1..=60).contains(&retry), "Retry-After {retry}");
    // Reads have a limit of their own.
    ensure!(
        get(http, registry, "/servers")?.status == 200,
        "GET limited by the mutation limit"
    );
    Ok(())
}

/// The native host as a child process: an acknowledged registration survives
/// `kill -9` and a restart, so does the record of used signatures, and
/// refusals are logged without key material.
fn native_restart_durability(http: &Http) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let list_key = registry_host::random_key();
    let key_file = registry_host::write_key_file(dir.path(), &list_key);
    let data = dir.path().join("registry.sqlite3");
    let mut registry = registry_host::start_child(Profile::SIGNED, &key_file, &data)?;
    let a = server_key();
    let request = RegisterRequest::signed(&a, "wss://durable.example", Some("eu"), now_ms());
    let reply = post_json(http, &registry, "/servers", &request)?;
    ensure!(reply.status == 200, "register: {}", reply.text());
    // A refusal, for the log.
    let intruder = server_key();
    let (ts, sig) = signature::sign_unregister(&intruder, now_ms());
    let reply = delete(
        http,
        &registry,
        &server_id(&a),
        &[("X-Zajel-Timestamp", &ts), ("X-Zajel-Signature", &sig)],
    )?;
    expect_error(&reply, 401, errors::INVALID_SIGNATURE)?;
    let child = registry.child().ok_or("not a child process")?;
    let logged = child.wait_for(Duration::from_secs(10), |line| {
        line.contains("refused DELETE /servers/")
            .then(|| line.to_string())
    })?;
    ensure!(
        logged.contains("401") && logged.contains("signature"),
        "log line: {logged}"
    );
    child.signal(libc::SIGKILL);
    child.wait(Duration::from_secs(10))?;
    let output = child.output();
    let seed = keys::signing_key_to_hex(&list_key);
    ensure!(
        !output.contains(&seed),
        "the signing key appeared in the log"
    );
    drop(registry);

    let registry = registry_host::start_child(Profile::SIGNED, &key_file, &data)?;
    let listed = list(http, &registry)?;
    let entry = listed
        .get(&server_id(&a))
        .ok_or("entry lost across kill -9 and restart")?;
    ensure!(
        entry["endpoint"] == "wss://durable.example" && entry["region"] == "eu",
        "{entry}"
    );
    expect_error(
        &post_json(http, &registry, "/servers", &request)?,
        401,
        errors::REPLAYED,
    )
    .map_err(|e| format!("replay after restart: {e}"))?;
    Ok(())
}

/// The native host ends the connection after refusing an oversize body, and
/// says so: it reads the rest of the body (so the client, still writing, reads
/// the 413 rather than a broken pipe), answers with `Connection: close`, then
/// closes. Without the header a client pooled the connection hyper was closing
/// and its next request failed ("connection closed before message completed").
fn native_oversize_body_closes_the_connection(registry: &RunningRegistry) -> Result<(), String> {
    use std::io::{Read, Write};
    let address = registry
        .base_url
        .strip_prefix("http://")
        .ok_or("not an http:// registry")?;
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = vec![b' '; 1 << 20];
    let head = format!(
        "POST /servers HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body))
        .map_err(|e| format!("the server stopped reading the body: {e}"))?;
    // read_to_end returns only when the server closes (or the timeout fails it).
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("the connection was not closed after the 413: {e}"))?;
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    ensure!(reply.starts_with("http/1.1 413"), "reply: {reply}");
    ensure!(
        reply.contains("\r\nconnection: close\r\n"),
        "the 413 should say Connection: close: {reply}"
    );

    // Through a pooling client, every request after a refused oversize body succeeds.
    let http = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    for round in 0..20 {
        let reply = post(&http, registry, "/servers", body.clone())
            .map_err(|e| format!("round {round}, oversize: {e}"))?;
        expect_error(&reply, 413, errors::TOO_LARGE)?;
        let reply = post(&http, registry, "/servers", b"[1,2]".to_vec())
            .map_err(|e| format!("round {round}, the request after: {e}"))?;
        expect_error(&reply, 400, "Request body must be a JSON object")?;
    }
    Ok(())
}

/// Headers that belong to the HTTP server rather than the registry, which
/// the two hosts may legitimately set differently.
const TRANSPORT_HEADERS: &[&str] = &[
    "date",
    "server",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
];

/// The registry part of a reply: status, headers (minus transport ones) and
/// the exact body text, with the clock-dependent `timestamp` value (and the
/// list of servers, which other checks change concurrently) blanked.
fn comparable(reply: &Reply) -> (u16, BTreeMap<String, String>, String) {
    let headers = reply
        .headers
        .iter()
        .filter(|(name, _)| !TRANSPORT_HEADERS.contains(&name.as_str()))
        .filter(|(name, _)| name.as_str() != "x-bootstrap-signature")
        .map(|(name, value)| {
            let value = if name == "etag" {
                blank_etag(value)
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect();
    (reply.status, headers, blank_clock(&reply.text()))
}

/// An `ETag` of the list's shape (`"<timestamp hex>-<16 hex digits>"`, which
/// differs with the clock and the list) as `"<timestamp>-<hash>"`; any other value as is.
fn blank_etag(value: &str) -> String {
    let shaped = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.split_once('-'))
        .is_some_and(|(time, hash)| {
            !time.is_empty()
                && time.bytes().all(|b| b.is_ascii_hexdigit())
                && hash.len() == 16
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
        });
    if shaped {
        "\"<timestamp>-<hash>\"".to_string()
    } else {
        value.to_string()
    }
}

/// Replaces the value of a top-level `"timestamp":` and the contents of a
/// `"servers":[...]` list, keeping every other byte.
fn blank_clock(body: &str) -> String {
    let mut text = body.to_string();
    if let (Some(open), Some(close)) = (text.find("\"servers\":["), text.rfind("],\"timestamp\":"))
    {
        let open = open + "\"servers\":[".len();
        if open <= close {
            text.replace_range(open..close, "…");
        }
    }
    if let Some(at) = text.rfind("\"timestamp\":") {
        let start = at + "\"timestamp\":".len();
        let rest = &text[start..];
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map(|i| i + 2).unwrap_or(rest.len())
        } else {
            rest.find([',', '}']).unwrap_or(rest.len())
        };
        text.replace_range(start..start + end, "…");
    }
    text
}

/// Method, path, headers and body of one request sent to both hosts.
type ParityRequest = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    Option<Vec<u8>>,
);

/// The same requests to both hosts get the same answers, byte for byte
/// (bar transport headers and the clock).
fn parity(native: &Host, workerd: &Host) -> Result<(), String> {
    let key = server_key();
    let id = server_id(&key);
    let unsigned_register = json!({"serverId": id, "endpoint": "wss://a.example", "publicKey": id});
    let wrong_type = json!({"serverId": 5, "endpoint": "wss://a.example", "publicKey": "x"});
    let requests: Vec<ParityRequest> = vec![
        ("GET", "/nope".into(), vec![], None),
        ("GET", "/health".into(), vec![], None),
        ("GET", "/api/info".into(), vec![], None),
        ("GET", "/servers".into(), vec![], None),
        ("OPTIONS", "/servers".into(), vec![], None),
        ("PUT", "/servers".into(), vec![], None),
        ("POST", "/servers".into(), vec![], Some(b"{".to_vec())),
        ("POST", "/servers".into(), vec![], Some(b"[1,2]".to_vec())),
        ("POST", "/servers".into(), vec![], Some(b"{}".to_vec())),
        (
            "POST",
            "/servers".into(),
            vec![],
            Some(wrong_type.to_string().into_bytes()),
        ),
        (
            "POST",
            "/servers".into(),
            vec![],
            Some(unsigned_register.to_string().into_bytes()),
        ),
        ("POST", "/servers".into(), vec![], Some(vec![b' '; 9000])),
        (
            "POST",
            "/servers/heartbeat".into(),
            vec![],
            Some(b"{}".to_vec()),
        ),
        (
            "POST",
            "/servers/heartbeat".into(),
            vec![],
            Some(json!({"serverId": id}).to_string().into_bytes()),
        ),
        (
            "DELETE",
            format!("/servers/{}", id.replace('+', "%2B").replace('/', "%2F")),
            vec![],
            None,
        ),
        (
            "DELETE",
            "/servers/x".into(),
            vec![
                ("X-Zajel-Timestamp", "soon".into()),
                ("X-Zajel-Signature", "AAAA".into()),
            ],
            None,
        ),
    ];
    for (method, path, headers, body) in requests {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let a = send(
            &native.http,
            method,
            &native.signed.url(&path),
            &headers,
            body.clone(),
        )?;
        let b = send(
            &workerd.http,
            method,
            &workerd.signed.url(&path),
            &headers,
            body,
        )?;
        let (a, b) = (comparable(&a), comparable(&b));
        ensure!(a == b, "{method} {path}:\n  native  {a:?}\n  workerd {b:?}");
    }
    Ok(())
}

const CHECKS: &[(&str, Check)] = &[
    (
        "hostile_endpoints_and_regions_refused",
        hostile_endpoints_and_regions_refused,
    ),
    ("entries_capped_per_network", entries_capped_per_network),
    ("read_flood_limited", read_flood_limited),
    (
        "admission_checks_before_listing",
        admission_checks_before_listing,
    ),
    ("health", health),
    ("info_routes", info_routes),
    ("unknown_routes", unknown_routes),
    ("preflight", preflight),
    (
        "signed_register_list_heartbeat_delete",
        signed_register_list_heartbeat_delete,
    ),
    ("re_registering_replaces", re_registering_replaces),
    (
        "unsigned_mutations_refused_under_signed_policy",
        unsigned_mutations_refused_under_signed_policy,
    ),
    ("bad_signatures_refused", bad_signatures_refused),
    ("stale_timestamps_refused", stale_timestamps_refused),
    ("signatures_are_accepted_once", signatures_are_accepted_once),
    (
        "half_signed_and_bad_headers_refused",
        half_signed_and_bad_headers_refused,
    ),
    (
        "registration_fields_validated",
        registration_fields_validated,
    ),
    ("malformed_bodies_refused", malformed_bodies_refused),
    ("body_size_limit", body_size_limit),
    ("heartbeat_of_unknown_server", heartbeat_of_unknown_server),
    (
        "open_policy_accepts_zajel_servers",
        open_policy_accepts_zajel_servers,
    ),
    (
        "open_policy_protects_signed_entries",
        open_policy_protects_signed_entries,
    ),
];

const LIMITS: Profile = Profile {
    policy: "signed",
    ttl_ms: 1_000,
    rate_limit: 6,
    max_entries: 3,
    ..Profile::SIGNED
};

/// Public endpoints only, small per-network cap and read limit.
const STRICT: Profile = Profile {
    read_rate_limit: 20,
    max_entries_per_network: 3,
    allow_private_endpoints: false,
    ..Profile::SIGNED
};

/// Native host: `If-None-Match` with the served list's `ETag` gets 304
/// without a body (and a 200 once the list changed), and a client that
/// accepts gzip gets the kept list gzip-encoded, which decodes to a body
/// whose `X-Bootstrap-Signature` verifies with the registry key. A registry
/// of its own, so no other check changes the list in between.
fn native_conditional_and_gzip_lists(http: &Http) -> Result<(), String> {
    let registry = registry_host::start_in_process(Profile::SIGNED);
    let (a, b) = (server_key(), server_key());
    register(http, &registry, &a, "wss://a.example", Some("eu"))?;
    let first = get(http, &registry, "/servers")?;
    ensure!(first.status == 200, "GET /servers: {}", first.status);
    ensure!(first.header("content-encoding").is_none(), "gzip unasked");
    let etag = first.header("etag").ok_or("no ETag")?.to_string();
    let url = registry.url("/servers");
    let same = send(http, "GET", &url, &[("If-None-Match", &etag)], None)?;
    ensure!(same.status == 304, "If-None-Match: {}", same.status);
    ensure!(same.body.is_empty(), "304 with a body");
    ensure!(same.header("etag") == Some(etag.as_str()), "304 ETag");

    let gzipped = send(http, "GET", &url, &[("Accept-Encoding", "gzip")], None)?;
    ensure!(gzipped.status == 200, "gzip GET: {}", gzipped.status);
    ensure!(
        gzipped.header("content-encoding") == Some("gzip"),
        "not gzip-encoded: {:?}",
        gzipped.header("content-encoding")
    );
    ensure!(gzipped.header("vary") == Some("Accept-Encoding"), "no Vary");
    let gzip_etag = gzipped.header("etag").ok_or("no gzip ETag")?.to_string();
    ensure!(gzip_etag != etag, "one tag for two representations");
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&gzipped.body[..]),
        &mut decoded,
    )
    .map_err(|e| format!("gzip body does not decode: {e}"))?;
    ensure!(decoded == first.body, "decoded body is not the signed body");
    let list = signature::verify_server_list(
        &decoded,
        gzipped.header("x-bootstrap-signature"),
        &[registry.list_key],
        now_ms(),
    )
    .map_err(|e| format!("decoded list does not verify: {e}"))?;
    ensure!(list.servers.len() == 1, "{} servers", list.servers.len());
    ensure!(
        gzipped.body.len() < decoded.len(),
        "gzip body {} bytes, plain {}",
        gzipped.body.len(),
        decoded.len()
    );
    let same_gzip = send(
        http,
        "GET",
        &url,
        &[("If-None-Match", &gzip_etag), ("Accept-Encoding", "gzip")],
        None,
    )?;
    ensure!(
        same_gzip.status == 304,
        "gzip If-None-Match: {}",
        same_gzip.status
    );

    // Hostile: a client holding the list from before a change gets the new one.
    register(http, &registry, &b, "wss://b.example", None)?;
    for tag in [&etag, &gzip_etag] {
        let changed = send(
            http,
            "GET",
            &url,
            &[("If-None-Match", tag), ("Accept-Encoding", "gzip")],
            None,
        )?;
        ensure!(changed.status == 200, "after a change: {}", changed.status);
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&changed.body[..]),
            &mut decoded,
        )
        .map_err(|e| format!("gzip body does not decode: {e}"))?;
        let list = signature::verify_server_list(
            &decoded,
            changed.header("x-bootstrap-signature"),
            &[registry.list_key],
            now_ms(),
        )
        .map_err(|e| format!("changed list does not verify: {e}"))?;
        ensure!(list.servers.len() == 2, "stale list after a change");
    }
    Ok(())
}

fn trials_for(name: &str, host: Arc<Host>, limits_registry: Arc<RunningRegistry>) -> Vec<Trial> {
    let mut trials: Vec<Trial> = CHECKS
        .iter()
        .map(|(check, run)| {
            let host = host.clone();
            let run = *run;
            Trial::test(format!("{name}::{check}"), move || {
                run(&host).map_err(Failed::from)
            })
        })
        .collect();
    let http = host.http.clone();
    trials.push(Trial::test(
        format!("{name}::expiry_capacity_and_rate_limit"),
        move || limits(&limits_registry, &http).map_err(Failed::from),
    ));
    trials
}

fn main() {
    let args = Arguments::from_args();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    let mut trials = Vec::new();

    let native = Arc::new(Host {
        signed: registry_host::start_in_process(Profile::SIGNED),
        open: registry_host::start_in_process(Profile::OPEN),
        strict: registry_host::start_in_process(STRICT),
        admission: registry_host::start_in_process(Profile::ADMISSION),
        http: http.clone(),
    });
    trials.extend(trials_for(
        "native",
        native.clone(),
        Arc::new(registry_host::start_in_process(LIMITS)),
    ));

    let oversize_native = native.clone();
    trials.push(Trial::test(
        "native::oversize_body_closes_the_connection",
        move || {
            native_oversize_body_closes_the_connection(&oversize_native.signed)
                .map_err(Failed::from)
        },
    ));
    let lists_http = http.clone();
    trials.push(Trial::test(
        "native::conditional_and_gzip_lists",
        move || native_conditional_and_gzip_lists(&lists_http).map_err(Failed::from),
    ));
    let child_http = http.clone();
    trials.push(Trial::test("native::restart_durability", move || {
        native_restart_durability(&child_http).map_err(Failed::from)
    }));

    let mut workerd_host = None;
    if std::env::var("ZAJEL_SKIP_WORKERD").as_deref() == Ok("1") {
        eprintln!("ZAJEL_SKIP_WORKERD=1: the Worker under workerd is left out");
    } else {
        match start_workerd(&http) {
            Ok((host, limits_registry)) => {
                trials.extend(trials_for("workerd", host.clone(), limits_registry));
                let (native, workerd) = (native.clone(), host.clone());
                trials.push(Trial::test(
                    "parity::native_and_workerd_answer_alike",
                    move || parity(&native, &workerd).map_err(Failed::from),
                ));
                workerd_host = Some(host);
            }
            Err(error) => trials.push(Trial::test("workerd::start", move || {
                Err(Failed::from(format!(
                    "{error}\n(set ZAJEL_SKIP_WORKERD=1 to leave the workerd host out on purpose)"
                )))
            })),
        }
    }

    let conclusion = libtest_mimic::run(&args, trials);
    drop(native);
    drop(workerd_host);
    conclusion.exit();
}

/// Starts the five Worker registries under `wrangler dev`, side by side.
fn start_workerd(http: &Http) -> Result<(Arc<Host>, Arc<RunningRegistry>), String> {
    let starting = [
        Profile::SIGNED,
        Profile::OPEN,
        STRICT,
        Profile::ADMISSION,
        LIMITS,
    ]
    .into_iter()
    .map(registry_host::spawn_wrangler_dev)
    .collect::<Result<Vec<_>, _>>()?;
    let mut started = Vec::new();
    for worker in starting {
        started.push(worker.ready()?);
    }
    let limits_registry = started.pop().expect("five");
    let admission = started.pop().expect("five");
    let strict = started.pop().expect("five");
    let open = started.pop().expect("five");
    let signed = started.pop().expect("five");
    Ok((
        Arc::new(Host {
            signed,
            open,
            strict,
            admission,
            http: http.clone(),
        }),
        Arc::new(limits_registry),
    ))
}
