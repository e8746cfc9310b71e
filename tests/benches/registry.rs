//! Registry benchmark: requests/s and p50/p99 latency of `GET /servers` and
//! of signed heartbeats at 100, 1,000 and 10,000 fresh entries, for the
//! native host, for our Worker under local workerd (`wrangler dev`), and for
//! the anchor, Zajel's own JS Worker (`packages/server` of Zajel's
//! repository) under the same wrangler and workerd, side by side in one run,
//! with each host's throughput as a ratio to the anchor's. Prints Markdown
//! tables.
//!
//! `cargo bench -p tests --bench registry` (the Worker columns need the wasm
//! build and `npm ci`; see the README). Options through the environment:
//! - `ZAJEL_WORKER=<dir>`: Zajel's `packages/server`, with `npm install`
//!   done; without it the anchor is not taken, and the output says so;
//! - `BENCH_ENTRIES` (default `100,1000,10000`);
//! - `BENCH_REQUESTS` (default 2000 per measurement up to 1,000 entries,
//!   scaled down by entries/1,000 above, at least 200);
//! - `BENCH_CLIENTS` (concurrent clients, default 8);
//! - `BENCH_SKIP_WORKERD=1` (native only).
//!
//! Every host gets a fresh instance per size. The requests are the same for
//! every host (registrations are signed again for each host, so none is
//! older than the 5 minutes signatures are accepted) and valid for both
//! protocols (signed registrations and heartbeats, which Zajel's registry
//! accepts and does not check), and the measured ones are
//! interleaved: each measurement is cut into rounds, and each round runs
//! its slice on every host in turn, so a change in the machine's load falls
//! on all of them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tests::registry_host::{self, Profile, RunningRegistry};
use zajel_client_net::now_ms;
use zajel_wire::entry::{HeartbeatRequest, RegisterRequest, ServerList};

/// Slices each measurement is cut into, run on every host in turn.
const ROUNDS: usize = 4;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

type Prepared = (reqwest::Method, String, Option<Vec<u8>>);

/// Latencies and time spent on one host in one measurement.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// One measured load: throughput and latency percentiles.
struct Figures {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

impl Samples {
    fn figures(mut self) -> Figures {
        self.latencies.sort();
        let n = self.latencies.len().max(1);
        let at = |q: f64| {
            self.latencies
                .get(((n as f64 * q) as usize).min(n - 1))
                .copied()
                .unwrap_or_default()
        };
        Figures {
            requests: self.latencies.len(),
            per_second: self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Sends every prepared request once, from `clients` threads, and adds the
/// latencies and the wall time to `samples`.
fn measure(
    registry: &RunningRegistry,
    clients: usize,
    requests: &[Prepared],
    samples: &mut Samples,
) -> Result<(), String> {
    let requests = Arc::new(requests.to_vec());
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
                    .timeout(Duration::from_secs(120))
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
                    let body = response.bytes().map_err(|e| e.to_string())?;
                    latencies.push(sent.elapsed());
                    if !status.is_success() {
                        return Err(format!(
                            "{method} {path}: {status} {}",
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        ));
                    }
                }
            })
        })
        .collect();
    let mut failure = None;
    for worker in workers {
        match worker
            .join()
            .map_err(|_| "client thread panicked".to_string())
        {
            Ok(Ok(latencies)) => samples.latencies.extend(latencies),
            Ok(Err(error)) | Err(error) => failure = Some(error),
        }
    }
    samples.elapsed += started.elapsed();
    failure.map_or(Ok(()), Err)
}

/// One host under test at one size.
struct Host {
    name: &'static str,
    registry: Result<RunningRegistry, String>,
    list: Samples,
    heartbeat: Samples,
    /// How many entries its last list held (a check that it took every registration).
    listed: Option<usize>,
}

impl Host {
    fn new(name: &'static str, registry: Result<RunningRegistry, String>) -> Self {
        Self {
            name,
            registry,
            list: Samples::default(),
            heartbeat: Samples::default(),
            listed: None,
        }
    }

    /// Runs `f` on the registry while it works; a failure ends the host's run.
    fn run(&mut self, f: impl FnOnce(&RunningRegistry, &mut Self) -> Result<(), String>) {
        let registry = match std::mem::replace(&mut self.registry, Err(String::new())) {
            Ok(registry) => registry,
            Err(error) => {
                self.registry = Err(error);
                return;
            }
        };
        let outcome = f(&registry, self);
        self.registry = match outcome {
            Ok(()) => Ok(registry),
            Err(error) => Err(error),
        };
    }
}

/// Signed registrations of `keys` (valid for both protocols).
fn registrations(keys: &[SigningKey]) -> Vec<Prepared> {
    keys.iter()
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
        .collect()
}

/// `count` signed heartbeats round the keys, all distinct (timestamps step
/// after each pass), signed up front so that only the registry's work is timed.
fn heartbeats(keys: &[SigningKey], count: usize) -> Vec<Prepared> {
    let start = now_ms();
    (0..count)
        .map(|i| {
            let key = &keys[i % keys.len()];
            let body = HeartbeatRequest::signed(key, start + (i / keys.len()) as u64);
            (
                reqwest::Method::POST,
                "/servers/heartbeat".to_string(),
                Some(serde_json::to_vec(&body).unwrap()),
            )
        })
        .collect()
}

/// Runs `requests` on every working host, a slice per round, hosts in turn.
fn interleaved(
    hosts: &mut [Host],
    clients: usize,
    requests: &[Prepared],
    samples: fn(&mut Host) -> &mut Samples,
) {
    let slice = requests.len().div_ceil(ROUNDS).max(1);
    for part in requests.chunks(slice) {
        for host in hosts.iter_mut() {
            host.run(|registry, host| measure(registry, clients, part, samples(host)));
        }
    }
}

/// How many entries a host lists now.
fn count_listed(registry: &RunningRegistry) -> Result<usize, String> {
    let body = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?
        .get(registry.url("/servers"))
        .send()
        .and_then(|reply| reply.bytes())
        .map_err(|e| e.to_string())?;
    let list: ServerList = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(list.servers.len())
}

const BENCH_PROFILE: Profile = Profile {
    policy: "signed",
    ttl_ms: 600_000,
    rate_limit: 100_000_000,
    max_entries: 100_000,
    ..Profile::SIGNED
};

const NATIVE: &str = "native (SQLite file, WAL, synchronous=FULL)";
const WORKER: &str = "our Worker (wrangler dev)";
const ZAJEL: &str = "Zajel's JS Worker (wrangler dev)";

/// Measures every host at `entries` entries.
fn bench_size(entries: usize, requests: usize, clients: usize) -> Vec<Host> {
    let mut hosts = vec![Host::new(
        NATIVE,
        Ok(registry_host::start_in_process_on_disk(BENCH_PROFILE)),
    )];
    if std::env::var("BENCH_SKIP_WORKERD").as_deref() != Ok("1") {
        hosts.push(Host::new(
            WORKER,
            registry_host::start_wrangler_dev(BENCH_PROFILE),
        ));
    }
    if let Ok(dir) = std::env::var("ZAJEL_WORKER") {
        hosts.push(Host::new(
            ZAJEL,
            registry_host::start_zajel_worker(std::path::Path::new(&dir)),
        ));
    }
    let keys: Vec<SigningKey> = (0..entries).map(|_| registry_host::random_key()).collect();
    for host in &mut hosts {
        host.run(|registry, _| {
            measure(
                registry,
                clients,
                &registrations(&keys),
                &mut Samples::default(),
            )
        });
    }
    // Heartbeats first: Zajel's registry forgets entries 5 minutes after
    // their last heartbeat, and the slowest hosts take minutes at 10k.
    interleaved(&mut hosts, clients, &heartbeats(&keys, requests), |host| {
        &mut host.heartbeat
    });
    let listing: Vec<Prepared> = (0..requests)
        .map(|_| (reqwest::Method::GET, "/servers".to_string(), None))
        .collect();
    interleaved(&mut hosts, clients, &listing, |host| &mut host.list);
    for host in &mut hosts {
        host.run(|registry, host| {
            host.listed = Some(count_listed(registry)?);
            Ok(())
        });
    }
    hosts
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let base_requests = env_number("BENCH_REQUESTS", 2_000);
    let clients = env_number("BENCH_CLIENTS", 8);
    let sizes: Vec<usize> = std::env::var("BENCH_ENTRIES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let anchor = std::env::var("ZAJEL_WORKER").ok();
    let mut results = Vec::new();
    for &entries in &sizes {
        let requests = if entries <= 1_000 {
            base_requests
        } else {
            (base_requests * 1_000 / entries).max(200)
        };
        eprintln!("registry bench: {entries} entries, {requests} requests per measurement");
        results.push((entries, requests, bench_size(entries, requests, clients)));
    }
    println!(
        "\nRegistry benchmark: {clients} concurrent clients, requests interleaved over the hosts in {ROUNDS} rounds, on {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    match &anchor {
        Some(dir) => println!("Anchor: Zajel's JS Worker from {dir}, under the same wrangler dev and workerd as ours; ratios are each host's req/s over the anchor's in the same run.\n"),
        None => println!("Anchor NOT taken: ZAJEL_WORKER is not set, so Zajel's JS Worker did not run and there are no ratios; these figures stand alone.\n"),
    }
    println!("| entries | host | listed | GET /servers req/s | p50 | p99 | × anchor | heartbeat req/s | p50 | p99 | × anchor |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (entries, requests, hosts) in results {
        let anchor_figures = hosts.iter().find(|h| h.name == ZAJEL && h.registry.is_ok());
        let anchor_rates = anchor_figures.map(|h| {
            (
                rate(&h.list, requests, h.list.latencies.len()),
                rate(&h.heartbeat, requests, h.heartbeat.latencies.len()),
            )
        });
        for host in hosts {
            let Host {
                name,
                registry,
                list,
                heartbeat,
                listed,
            } = host;
            if let Err(error) = &registry {
                println!(
                    "| {entries} | {name} | failed: {} | | | | | | | | |",
                    error.replace(['\n', '|'], " ")
                );
                continue;
            }
            let ratio = |ours: f64, theirs: Option<f64>| match theirs {
                Some(theirs) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
                _ => "no anchor".into(),
            };
            let (list, beat) = (list.figures(), heartbeat.figures());
            println!(
                "| {entries} | {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
                listed.map_or("?".into(), |n| n.to_string()),
                list.per_second,
                ms(list.p50),
                ms(list.p99),
                ratio(list.per_second, anchor_rates.map(|r| r.0)),
                beat.per_second,
                ms(beat.p50),
                ms(beat.p99),
                ratio(beat.per_second, anchor_rates.map(|r| r.1)),
            );
            if list.requests != requests || beat.requests != requests {
                println!(
                    "|  | ({name}: {} and {} of {requests} requests measured) | | | | | | | | | |",
                    list.requests, beat.requests
                );
            }
        }
    }
}

/// Throughput of a complete measurement (`None`-like 0 when it did not finish).
fn rate(samples: &Samples, requests: usize, done: usize) -> f64 {
    if done < requests {
        return 0.0;
    }
    done as f64 / samples.elapsed.as_secs_f64().max(1e-9)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
