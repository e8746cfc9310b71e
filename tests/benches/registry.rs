//! Registry benchmark: requests/s and p50/p99 latency of `GET /servers` with
//! 1,000 fresh entries, and of signed heartbeats, for the native host and
//! for the Worker under local workerd (`wrangler dev`), side by side in one
//! run. Prints a Markdown table.
//!
//! `cargo bench -p tests --bench registry` (the Worker column needs the wasm
//! build and `npm ci`; see the README). Options through the environment:
//! `BENCH_REQUESTS` (default 2000 per measurement), `BENCH_CLIENTS`
//! (concurrent clients, default 8), `BENCH_SKIP_WORKERD=1`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tests::registry_host::{self, Profile, RunningRegistry};
use zajel_client_net::now_ms;
use zajel_wire::entry::{HeartbeatRequest, RegisterRequest};

const ENTRIES: usize = 1_000;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One measured load: throughput and latency percentiles.
struct Figures {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends every prepared request once, from `clients` threads, and measures.
fn measure(
    registry: &RunningRegistry,
    clients: usize,
    requests: Vec<(reqwest::Method, String, Option<Vec<u8>>)>,
) -> Result<Figures, String> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let base = registry.base_url.clone();
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let requests = requests.clone();
            let next = next.clone();
            let base = base.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut latencies = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((method, path, body)) = requests.get(index) else {
                        return Ok(latencies);
                    };
                    let mut request = http.request(method.clone(), format!("{base}{path}"));
                    if let Some(body) = body {
                        request = request
                            .header("Content-Type", "application/json")
                            .body(body.clone());
                    }
                    let sent = Instant::now();
                    let response = request.send().map_err(|e| e.to_string())?;
                    let status = response.status();
                    let _ = response.bytes().map_err(|e| e.to_string())?;
                    latencies.push(sent.elapsed());
                    if !status.is_success() {
                        return Err(format!("{method} {path}: {status}"));
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.join().map_err(|_| "client thread panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Figures {
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// Registers 1,000 servers, then measures listing and heartbeats.
fn bench_host(
    registry: &RunningRegistry,
    requests: usize,
    clients: usize,
) -> Result<(Figures, Figures), String> {
    let keys: Vec<SigningKey> = (0..ENTRIES).map(|_| registry_host::random_key()).collect();
    let registrations = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let body = RegisterRequest::signed(
                key,
                &format!("wss://relay-{i}.example"),
                Some("bench"),
                now_ms(),
            );
            (
                reqwest::Method::POST,
                "/servers".to_string(),
                Some(serde_json::to_vec(&body).unwrap()),
            )
        })
        .collect();
    measure(registry, clients, registrations)?;
    let listing = (0..requests)
        .map(|_| (reqwest::Method::GET, "/servers".to_string(), None))
        .collect();
    let list = measure(registry, clients, listing)?;
    // Heartbeats are signed up front (distinct timestamps, so no two are
    // the same signature) so that only the registry's work is timed.
    let start = now_ms();
    let beats = (0..requests)
        .map(|i| {
            let key = &keys[i % ENTRIES];
            let body = HeartbeatRequest::signed(key, start + (i / ENTRIES) as u64);
            (
                reqwest::Method::POST,
                "/servers/heartbeat".to_string(),
                Some(serde_json::to_vec(&body).unwrap()),
            )
        })
        .collect();
    let heartbeat = measure(registry, clients, beats)?;
    Ok((list, heartbeat))
}

const BENCH_PROFILE: Profile = Profile {
    policy: "signed",
    ttl_ms: 600_000,
    rate_limit: 100_000_000,
    max_entries: 100_000,
    ..Profile::SIGNED
};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let requests = env_number("BENCH_REQUESTS", 2_000);
    let clients = env_number("BENCH_CLIENTS", 8);
    let mut rows = Vec::new();
    let native = registry_host::start_in_process_on_disk(BENCH_PROFILE);
    rows.push((
        "native (SQLite file, WAL, synchronous=FULL)",
        bench_host(&native, requests, clients),
    ));
    drop(native);
    if std::env::var("BENCH_SKIP_WORKERD").as_deref() != Ok("1") {
        match registry_host::start_wrangler_dev(BENCH_PROFILE) {
            Ok(workerd) => rows.push((
                "Worker under workerd (wrangler dev)",
                bench_host(&workerd, requests, clients),
            )),
            Err(error) => rows.push(("Worker under workerd (wrangler dev)", Err(error))),
        }
    }
    println!("\nRegistry benchmark: {requests} requests per measurement, {clients} concurrent clients, {ENTRIES} fresh entries, on {} cores\n", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("| host | GET /servers req/s | p50 | p99 | heartbeat req/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, result) in &rows {
        match result {
            Ok((list, beat)) => println!(
                "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.2} ms | {:.2} ms |",
                list.per_second,
                list.p50.as_secs_f64() * 1e3,
                list.p99.as_secs_f64() * 1e3,
                beat.per_second,
                beat.p50.as_secs_f64() * 1e3,
                beat.p99.as_secs_f64() * 1e3,
            ),
            Err(error) => println!("| {name} | failed: {error} | | | | | |"),
        }
    }
    if let Some((_, Ok((list, beat)))) = rows.first() {
        if let Some((_, Ok((worker_list, worker_beat)))) = rows.get(1) {
            println!(
                "\nnative / workerd throughput: GET /servers {:.2}x, heartbeat {:.2}x ({} and {} requests measured per host)",
                list.per_second / worker_list.per_second,
                beat.per_second / worker_beat.per_second,
                list.requests,
                beat.requests
            );
        }
    }
}
