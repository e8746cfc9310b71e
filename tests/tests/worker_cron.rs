//! The Worker's Cron Trigger (issue 16, item 3) under `wrangler dev
//! --test-scheduled` (the real workerd runtime; `GET /__scheduled` runs the
//! `scheduled` handler), publishing to a local stand-in of Cloudflare's DNS
//! API (`tests/src/cloudflare_standin.rs`): the real API cannot be reached
//! from tests, so the stand-in follows its documented request and answer
//! shapes. The Worker signs with the registry key it holds; the records it
//! leaves behind are verified with that key as clients verify them.
//!
//! Also: `GET /metrics` under the per-address read limit.
//!
//! Needs the wasm build and `npm ci`, as the registry conformance suite;
//! `ZAJEL_SKIP_WORKERD=1` skips it on purpose.

use std::time::Duration;

use discovery_client::txt;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use tests::cloudflare_standin::{CloudflareStandIn, StoredRecord};
use tests::registry_host::{self, Profile, RunningRegistry, WorkerOptions};
use zajel_client_net::now_ms;
use zajel_wire::entry::RegisterRequest;

const ZONE: &str = "zajel.test";
const NAME: &str = "_zajel.zajel.test";
const TOKEN: &str = "cf-test-token-5ecret-9f1c";

fn skip() -> bool {
    std::env::var("ZAJEL_SKIP_WORKERD").is_ok_and(|v| v == "1")
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Runs the Worker's scheduled handler once, waits for it to finish, and
/// returns the run's log line (`{"event":"txt_publish",…}`).
fn run_cron(worker: &mut RunningRegistry) -> Value {
    let reply = http()
        .get(worker.url("/__scheduled?cron=17+*+*+*+*"))
        .send()
        .expect("wrangler answers /__scheduled");
    assert!(
        reply.status().is_success(),
        "/__scheduled: {}",
        reply.status()
    );
    let child = worker.child().expect("wrangler dev child");
    child
        .wait_for(Duration::from_secs(20), |line| {
            let start = line.find('{')?;
            // console.error lines end in terminal colour codes: read the object only.
            let log: Value = serde_json::Deserializer::from_str(&line[start..])
                .into_iter()
                .next()?
                .ok()?;
            (log["event"] == "txt_publish").then_some(log)
        })
        .expect("the run's log line")
}

/// The Worker's `GET /metrics` (served once `TXT_DOMAIN` is set).
fn metrics(worker: &RunningRegistry) -> String {
    let reply = http()
        .get(worker.url("/metrics"))
        .send()
        .expect("the Worker answers /metrics");
    assert_eq!(reply.status().as_u16(), 200, "/metrics");
    reply.text().expect("metrics text")
}

fn zajel_records(standin: &CloudflareStandIn) -> Vec<StoredRecord> {
    standin
        .records()
        .into_iter()
        .filter(|r| r.name == NAME)
        .collect()
}

/// The concatenated text of a stored TXT `content`.
fn text(record: &StoredRecord) -> String {
    bootstrap_worker::txt_cron::content_text(&record.content)
}

#[test]
fn the_cron_trigger_publishes_skips_an_unchanged_set_republishes_one_about_to_expire_and_reports_failures(
) {
    if skip() {
        eprintln!("ZAJEL_SKIP_WORKERD=1: the Worker's Cron Trigger is not tested");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let standin = runtime.block_on(CloudflareStandIn::start(ZONE, TOKEN));
    // Hostile leftovers under the name (junk, and a record signed by another
    // key) and an unrelated record that must stay.
    let attacker = SigningKey::from_bytes(&[66; 32]);
    let decoy = zajel_wire::keys::server_id_for(&registry_host::random_key().verifying_key());
    let forged = txt::build_records(
        &attacker,
        ZONE,
        &[zajel_wire::entry::ServerEntry {
            server_id: decoy.clone(),
            endpoint: "wss://evil.example".into(),
            public_key: decoy,
            region: String::new(),
            registered_at: 0,
            last_seen: 0,
        }],
        300,
        now_ms() / 1000 + 3600,
    )
    .expect("forged record");
    standin.insert("TXT", NAME, "\"v=zajel1 id=junk\"", 300);
    standin.insert("TXT", NAME, &forged[0].content, 300);
    standin.insert("TXT", ZONE, "\"google-site-verification=abc\"", 300);

    let registry_key = registry_host::random_key();
    let options = WorkerOptions {
        vars: vec![
            ("TXT_DOMAIN".into(), ZONE.into()),
            ("CLOUDFLARE_API".into(), standin.api.clone()),
        ],
        secrets: vec![("CLOUDFLARE_API_TOKEN".into(), TOKEN.into())],
        key: Some(registry_key.clone()),
        test_scheduled: true,
        log_level: Some("log"),
    };
    let mut worker = registry_host::spawn_wrangler_dev_with(Profile::SIGNED, options)
        .and_then(|starting| starting.ready())
        .unwrap_or_else(|e| panic!("wrangler dev: {e}"));

    // One listed server.
    let server_key = registry_host::random_key();
    let endpoint = "wss://relay-a.zajel.test:8443";
    let registration = RegisterRequest::signed(&server_key, endpoint, Some("eu"), now_ms());
    let reply = http()
        .post(worker.url("/servers"))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&registration).expect("json"))
        .send()
        .expect("registry answers");
    assert_eq!(reply.status().as_u16(), 200, "registration");

    // First run: the signed record is created, the junk and forged ones deleted.
    let log = run_cron(&mut worker);
    assert_eq!(log["ok"], true, "{log}");
    assert_eq!(log["outcome"], "published", "{log}");
    assert_eq!(log["reason"], "foreign_records", "{log}");
    assert_eq!(
        (log["created"].as_u64(), log["deleted"].as_u64()),
        (Some(1), Some(2)),
        "{log}"
    );
    let pinned = [registry_key.verifying_key()];
    let records = zajel_records(&standin);
    assert_eq!(records.len(), 1, "{records:?}");
    let now = now_ms() / 1000;
    let entry = txt::verify_record(ZONE, text(&records[0]).as_bytes(), &pinned, now)
        .expect("the published record verifies with the registry key");
    assert_eq!(entry.endpoint, endpoint);
    assert_eq!(entry.server_id, registration.server_id);
    assert_eq!(entry.region, "eu");
    assert!(
        entry.expires > now + 71 * 3600 && entry.expires <= now + 72 * 3600 + 60,
        "72 h by default: {}",
        entry.expires
    );
    assert_eq!(records[0].ttl, 300);
    assert_eq!(
        standin.changes(),
        (1, 2),
        "one created, junk and forged deleted"
    );
    assert!(
        standin
            .records()
            .iter()
            .any(|r| r.name == ZONE && r.content.contains("google-site-verification")),
        "a record under another name is left alone"
    );

    assert_eq!(log["expires"].as_u64(), Some(entry.expires), "{log}");

    // Second run: the set is current, nothing is written.
    let log = run_cron(&mut worker);
    assert_eq!(log["outcome"], "unchanged", "{log}");
    assert_eq!(
        log["refresh_at"].as_u64(),
        Some(entry.expires - 36 * 3600),
        "republished at half-life: {log}"
    );
    assert_eq!(standin.changes(), (1, 2), "an unchanged set is skipped");
    assert_eq!(zajel_records(&standin), records);

    // A set about to expire (signed by the same key, exp in 60 s, as if the
    // schedule had been down for days) is republished with a fresh exp.
    standin.remove(&records[0].id);
    let about_to_expire = txt::build_records(
        &registry_key,
        ZONE,
        &[zajel_wire::entry::ServerEntry {
            server_id: registration.server_id.clone(),
            endpoint: endpoint.into(),
            public_key: registration.public_key.clone(),
            region: "eu".into(),
            registered_at: 0,
            last_seen: 0,
        }],
        300,
        now_ms() / 1000 + 60,
    )
    .expect("record");
    standin.insert("TXT", NAME, &about_to_expire[0].content, 300);
    let (created, deleted) = standin.changes();
    let log = run_cron(&mut worker);
    assert_eq!(log["reason"], "half_life", "{log}");
    let records = zajel_records(&standin);
    assert_eq!(records.len(), 1, "{records:?}");
    let now = now_ms() / 1000;
    let entry = txt::verify_record(ZONE, text(&records[0]).as_bytes(), &pinned, now)
        .expect("the republished record verifies");
    assert!(
        entry.expires > now + 71 * 3600,
        "republished well before exp: {}",
        entry.expires
    );
    assert_eq!(standin.changes(), (created + 1, deleted + 1));

    // GET /metrics: when it last published and how it went.
    let metrics = metrics(&worker);
    for line in [
        format!(
            "\nzajel_txt_published_expiry_timestamp_seconds {}\n",
            entry.expires
        ),
        "\nzajel_txt_last_attempt_ok 1\n".to_string(),
        "\nzajel_txt_publish_failures_total 0\n".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line:?} in {metrics}");
    }
    assert!(
        metrics.contains("\nzajel_txt_last_published_timestamp_seconds "),
        "{metrics}"
    );

    // A client cannot write the status: the internal header is dropped
    // from every request that comes from outside.
    let forged = http()
        .post(worker.url("/txt-status"))
        .header("X-Zajel-Internal", "txt-status")
        .header("content-type", "application/json")
        .body(r#"{"event":"txt_publish","ok":false,"attempted_at":1}"#)
        .send()
        .expect("registry answers");
    assert_eq!(
        forged.status().as_u16(),
        404,
        "the registry's 404 for an unknown route"
    );
    assert_eq!(
        self::metrics(&worker),
        metrics,
        "a forged status report changed /metrics"
    );

    // A refused token: the run fails with the API's error, in its log line,
    // and changes nothing.
    standin.replace_token("another-token");
    let before = standin.records();
    let changes = standin.changes();
    let log = run_cron(&mut worker);
    assert_eq!(log["ok"], false, "{log}");
    assert_eq!(log["kind"], "cloudflare_api", "{log}");
    assert!(
        log["error"]
            .as_str()
            .is_some_and(|e| e.contains("10000: Authentication error")),
        "{log}"
    );
    assert_eq!(standin.records(), before);
    assert_eq!(standin.changes(), changes);
    let failed = self::metrics(&worker);
    assert!(
        failed.contains("\nzajel_txt_last_attempt_ok 0\n"),
        "{failed}"
    );
    assert!(
        failed.contains("\nzajel_txt_publish_failures_total 1\n"),
        "{failed}"
    );

    // The token went only into the Authorization header: never into wrangler's output.
    let output = worker.child().expect("wrangler dev child").output();
    assert!(!output.contains(TOKEN), "the API token was logged");
    // Every call carried it, or the stand-in would have answered 403 and nothing changed.
    assert!(standin
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /client/v4/zones?name=zajel.test")));
}

/// The Worker's `GET /metrics` counts against the per-address read limit
/// like any read (each one reads Durable Object storage): a client that
/// floods it gets the registry's 429 with `Retry-After`, and its list reads
/// are held back with it.
#[test]
fn metrics_reads_are_rate_limited_like_any_read() {
    if skip() {
        eprintln!("ZAJEL_SKIP_WORKERD=1: the Worker's /metrics limit is not tested");
        return;
    }
    let options = WorkerOptions {
        vars: vec![("TXT_DOMAIN".into(), ZONE.into())],
        ..WorkerOptions::default()
    };
    let profile = Profile {
        read_rate_limit: 3,
        ..Profile::SIGNED
    };
    let worker = registry_host::spawn_wrangler_dev_with(profile, options)
        .and_then(|starting| starting.ready())
        .unwrap_or_else(|e| panic!("wrangler dev: {e}"));
    let mut statuses = Vec::new();
    let mut flooded = None;
    for _ in 0..4 {
        let reply = http()
            .get(worker.url("/metrics"))
            .send()
            .expect("the Worker answers /metrics");
        statuses.push(reply.status().as_u16());
        flooded = Some(reply);
    }
    // wrangler's readiness probe may have taken a read: at most three 200s, then 429s.
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 2,
        "{statuses:?}"
    );
    let flooded = flooded.expect("a reply");
    assert!(flooded.headers().contains_key("retry-after"), "{flooded:?}");
    let list = http()
        .get(worker.url("/servers"))
        .send()
        .expect("the Worker answers /servers");
    assert_eq!(list.status().as_u16(), 429, "the same address's list read");
}
