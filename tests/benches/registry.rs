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
//! - `BENCH_SKIP_WORKERD=1` (native only);
//! - `BENCH_IF_NONE_MATCH=1`: list reads send back the `ETag` of the list
//!   each client last read (a client that keeps its list; the hosts that
//!   know `If-None-Match` answer 304 while their list is unchanged);
//! - `BENCH_GZIP=1`: list reads send `Accept-Encoding: gzip` and the
//!   clients decode gzip answers themselves (reqwest here has no gzip
//!   feature), so their CPU time includes inflating.
//!
//! Beside each figure it prints the CPU time spent per request (from
//! `/proc`): by the server (the in-process native host's runtime threads;
//! a Worker's whole process tree, wrangler's Node proxy and workerd, with
//! workerd's share apart) and by the bench's own clients (the rest of this
//! process: reqwest, reading and parsing the answers), which run on the
//! same cores, so a reader can see which side bounds the requests per
//! second.
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
use tests::registry_host::{self, CpuSource, Profile, RunningRegistry};
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

/// CPU time (user and system) from `/proc`.
mod cpu {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::CpuSource;

    fn ticks(ticks: u64) -> Duration {
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
    }

    /// `(comm, ppid, utime + stime in ticks)` of one `stat` file.
    fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the comm: state, ppid, …, utime (14th field of the file), stime (15th).
        let ppid = fields.get(1)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((comm, ppid, utime + stime))
    }

    /// This whole process, ended threads included.
    pub fn this_process() -> Duration {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .map_or(Duration::ZERO, |(_, _, t)| ticks(t))
    }

    /// What a registry spent so far: `(all of it, workerd's share)`.
    pub fn of(source: CpuSource) -> (Duration, Duration) {
        match source {
            CpuSource::Threads(name) => {
                let total = std::fs::read_dir("/proc/self/task")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
                    .filter_map(|stat| parse_stat(&stat))
                    .filter(|(comm, _, _)| comm == name)
                    .map(|(_, _, t)| t)
                    .sum();
                (ticks(total), Duration::ZERO)
            }
            CpuSource::ProcessTree(root) => {
                let processes: HashMap<u32, (String, u32, u64)> = std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|entry| {
                        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                        Some((pid, parse_stat(&stat)?))
                    })
                    .collect();
                let in_tree = |mut pid: u32| loop {
                    if pid == root {
                        return true;
                    }
                    match processes.get(&pid) {
                        Some((_, ppid, _)) if *ppid != 0 && *ppid != pid => pid = *ppid,
                        _ => return false,
                    }
                };
                let (mut total, mut workerd) = (0, 0);
                for (&pid, (comm, _, t)) in &processes {
                    if in_tree(pid) {
                        total += t;
                        if comm.starts_with("workerd") {
                            workerd += t;
                        }
                    }
                }
                (ticks(total), ticks(workerd))
            }
        }
    }
}

/// Latencies and time spent on one host in one measurement.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time of the server while it answered.
    server_cpu: Duration,
    /// Of which workerd's (Worker hosts).
    workerd_cpu: Duration,
    /// CPU time of the bench's clients meanwhile (this process, less an in-process server).
    client_cpu: Duration,
    /// Answers that were 304 Not Modified.
    not_modified: usize,
}

/// One measured load: throughput and latency percentiles.
struct Figures {
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU µs per request: server, workerd's share of it, the bench's clients.
    server_us: f64,
    workerd_us: f64,
    client_us: f64,
    not_modified: usize,
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
        let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / n as f64;
        Figures {
            requests: self.latencies.len(),
            per_second: self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50: at(0.50),
            p99: at(0.99),
            server_us: per_request(self.server_cpu),
            workerd_us: per_request(self.workerd_cpu),
            client_us: per_request(self.client_cpu),
            not_modified: self.not_modified,
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
    let conditional = std::env::var("BENCH_IF_NONE_MATCH").as_deref() == Ok("1");
    let gzip = std::env::var("BENCH_GZIP").as_deref() == Ok("1");
    let source = registry.cpu_source();
    let (server_before, workerd_before) = cpu::of(source);
    let process_before = cpu::this_process();
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let requests = requests.clone();
            let next = next.clone();
            let base = base.clone();
            std::thread::spawn(move || -> Result<(Vec<Duration>, usize), String> {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut latencies = Vec::new();
                let mut etag: Option<reqwest::header::HeaderValue> = None;
                let mut not_modified = 0;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((method, path, body)) = requests.get(index) else {
                        return Ok((latencies, not_modified));
                    };
                    let mut request = http.request(method.clone(), format!("{base}{path}"));
                    if let (true, Some(tag)) =
                        (conditional && *method == reqwest::Method::GET, &etag)
                    {
                        request = request.header(reqwest::header::IF_NONE_MATCH, tag.clone());
                    }
                    if gzip && *method == reqwest::Method::GET {
                        request = request.header(reqwest::header::ACCEPT_ENCODING, "gzip");
                    }
                    if let Some(body) = body {
                        request = request
                            .header("Content-Type", "application/json")
                            .body(body.clone());
                    }
                    let sent = Instant::now();
                    let response = request.send().map_err(|e| e.to_string())?;
                    let status = response.status();
                    if let Some(tag) = response.headers().get(reqwest::header::ETAG) {
                        etag = Some(tag.clone());
                    }
                    let gzipped = response
                        .headers()
                        .get(reqwest::header::CONTENT_ENCODING)
                        .is_some_and(|coding| coding == "gzip");
                    let received = response.bytes().map_err(|e| e.to_string())?;
                    let body = if gzipped {
                        let mut decoded = Vec::with_capacity(received.len() * 4);
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&received[..]),
                            &mut decoded,
                        )
                        .map_err(|e| format!("gzip body: {e}"))?;
                        std::borrow::Cow::Owned(decoded)
                    } else {
                        std::borrow::Cow::Borrowed(&received[..])
                    };
                    latencies.push(sent.elapsed());
                    if status == reqwest::StatusCode::NOT_MODIFIED {
                        not_modified += 1;
                        continue;
                    }
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
            Ok(Ok((latencies, not_modified))) => {
                samples.latencies.extend(latencies);
                samples.not_modified += not_modified;
            }
            Ok(Err(error)) | Err(error) => failure = Some(error),
        }
    }
    samples.elapsed += started.elapsed();
    let process = cpu::this_process().saturating_sub(process_before);
    let (server_after, workerd_after) = cpu::of(source);
    let server = server_after.saturating_sub(server_before);
    samples.server_cpu += server;
    samples.workerd_cpu += workerd_after.saturating_sub(workerd_before);
    samples.client_cpu += match source {
        CpuSource::Threads(_) => process.saturating_sub(server),
        CpuSource::ProcessTree(_) => process,
    };
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
    let mut cpu_rows = Vec::new();
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
            let workerd = |figures: &Figures| {
                if figures.workerd_us > 0.0 {
                    format!(" (workerd {:.0})", figures.workerd_us)
                } else {
                    String::new()
                }
            };
            cpu_rows.push(format!(
                "| {entries} | {name} | {:.0}{} | {:.0} | {} | {:.0}{} | {:.0} |",
                list.server_us,
                workerd(&list),
                list.client_us,
                list.not_modified,
                beat.server_us,
                workerd(&beat),
                beat.client_us,
            ));
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
    println!("\nCPU time per request, µs (from /proc; the server's and the bench clients' on the same cores; a Worker's server time is wrangler's Node proxy and workerd together, workerd's share in brackets):\n");
    println!("| entries | host | GET /servers: server | bench clients | 304 answers | heartbeat: server | bench clients |");
    println!("|---|---|---|---|---|---|---|");
    for row in cpu_rows {
        println!("{row}");
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
