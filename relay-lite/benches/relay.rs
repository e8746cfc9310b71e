//! relay-lite benchmark, beside its anchor Zajel's server-vps when given:
//! RSS per idle registered connection at 1k, 5k, 10k and the most the
//! descriptor limit allows, µs of server CPU per forwarded message (from
//! `/proc/<pid>/stat` utime+stime of the server process) with 0 and with
//! 10k idle connections held, forwarding throughput, and p50/p99 forward
//! latency at a fixed offered load — and the ratios. Prints Markdown tables.
//!
//! ```sh
//! cargo bench -p relay-lite --bench relay
//! ZAJEL_SERVER_VPS=/path/to/zajel/packages/server-vps cargo bench -p relay-lite --bench relay
//! ```
//!
//! `ZAJEL_SERVER_VPS`: a checkout of `Hamza-Labs-Core/zajel`'s
//! `packages/server-vps` with `npm install` done; it is run as
//! `node --import tsx src/index.ts` (one process, so its pid is the
//! server's), `NODE_ENV=production`, `LOG_LEVEL=warn`, its registry URL
//! pointing at a refused loopback port. Without it the anchor column says
//! plainly that it was not taken.
//!
//! The loads are the same on both servers and interleaved (each memory
//! step starts a fresh server of each kind, alternating which goes first;
//! each forwarding phase runs on one server, then the other).
//! server-vps allows 100 messages per connection per minute (not
//! configurable), so every sender sends at most [`MAX_PER_SENDER`] offers
//! and more traffic means more pairs. Environment: `BENCH_CONNECTIONS`
//! (largest memory step; default: the hard RLIMIT_NOFILE found at start
//! minus 2,000), `BENCH_IDLE` (idle connections held during the second
//! forwarding run, 10000), `BENCH_PAIRS` (pairs in a forwarding run, 3000:
//! the server's CPU is read in 10 ms ticks, so a run needs about a second
//! of it), `BENCH_MESSAGES` (offers per sender, at most 95), `BENCH_RATE` (offered
//! load of the latency run, messages/s, 10000), `BENCH_SECONDS` (its length,
//! 3). Everything runs on loopback; client sockets are spread over
//! 127.0.2.1, 127.0.2.2, … (2,000 each), so bind() finds a free ephemeral
//! port at once. RLIMIT_NOFILE is raised for this process and the servers.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child_process::ChildProcess;
use common::relay::{key, Client, RelayProcess};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use zajel_wire::pairing::PairingCode;

/// Offers per sender per run: server-vps allows 100 messages per connection
/// per minute, `register` included.
const MAX_PER_SENDER: usize = 95;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The hard RLIMIT_NOFILE in force when the bench started.
fn hard_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit on this process.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    limit.rlim_max
}

/// Raises RLIMIT_NOFILE as far as allowed; returns the soft limit in force.
fn raise_nofile(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let wanted = wanted.max(limit.rlim_cur);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not privileged: take the hard limit.
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are fields 14 and 15 of the line.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // After ')': state is field 3, so utime (14) is index 11, stime (15) index 12.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / per_second)
}

/// The n-th distinct valid pairing code.
fn code(n: usize) -> String {
    let alphabet = zajel_wire::pairing::ALPHABET.as_bytes();
    let mut value = n;
    let mut text = String::new();
    for _ in 0..6 {
        text.push(alphabet[value % 32] as char);
        value /= 32;
    }
    PairingCode::parse(&text).expect("valid code").to_string()
}

fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Which server a figure is of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    RelayLite,
    ServerVps,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::RelayLite => "relay-lite",
            Kind::ServerVps => "server-vps",
        }
    }
}

/// A server under test, as a child process on loopback.
enum Server {
    RelayLite(RelayProcess),
    ServerVps {
        process: ChildProcess,
        addr: SocketAddr,
        _data: tempfile::TempDir,
    },
}

impl Server {
    fn start(kind: Kind, server_vps: Option<&Path>) -> Self {
        match kind {
            Kind::RelayLite => Server::RelayLite(RelayProcess::start_logging(
                &[
                    "--max-connections",
                    "1000000",
                    "--max-connections-per-ip",
                    "1000000",
                    "--idle-timeout-ms",
                    "3600000",
                    "--rate-limit-messages",
                    "4000000000",
                ],
                "relay_lite=info",
            )),
            Kind::ServerVps => {
                let dir = server_vps.expect("a server-vps directory");
                Self::start_server_vps(dir)
            }
        }
    }

    /// server-vps on a free loopback port (the way tests/tests/zajel_server_vps.rs
    /// starts it, but as one node process and without a registry).
    fn start_server_vps(dir: &Path) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("node");
        command
            .args(["--import", "tsx", "src/index.ts"])
            .current_dir(dir)
            .env("NODE_ENV", "production")
            .env("LOG_LEVEL", "warn")
            .env("ZAJEL_HOST", "127.0.0.1")
            .env("ZAJEL_PORT", port.to_string())
            .env("ZAJEL_PUBLIC_ENDPOINT", format!("ws://127.0.0.1:{port}"))
            // A loopback port fetch refuses at once: no registry, nothing leaves the machine.
            .env("ZAJEL_BOOTSTRAP_URL", "http://127.0.0.1:1")
            // Idle clients are not dropped during the run (relay-lite: --idle-timeout-ms).
            .env("ZAJEL_HEARTBEAT_TIMEOUT", "3600000")
            .env("ZAJEL_KEY_PATH", data.path().join("server.key"))
            .env("ZAJEL_DB_PATH", data.path().join("zajel.db"));
        let mut process = ChildProcess::spawn("server-vps", command).expect("start server-vps");
        process
            .wait_for(Duration::from_secs(60), |line| {
                line.contains("Listening on").then_some(())
            })
            .unwrap_or_else(|e| panic!("server-vps did not start: {e}"));
        Server::ServerVps {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _data: data,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::RelayLite(relay) => relay.process.id(),
            Server::ServerVps { process, .. } => process.id(),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::RelayLite(relay) => relay.addr,
            Server::ServerVps { addr, .. } => *addr,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr())
    }
}

/// A bare registered connection: handshake and `register` in one write,
/// then read until `registered` arrives. Keeps only the socket.
async fn bare_registered(
    relay: SocketAddr,
    source: Ipv4Addr,
    n: usize,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream = socket.connect(relay).await.map_err(|e| e.to_string())?;
    let register =
        json!({"type": "register", "pairingCode": code(n), "publicKey": key((n % 250) as u8)})
            .to_string();
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    request.extend(masked_frame(register.as_bytes()));
    stream
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 2048];
    while !seen.windows(12).any(|w| w == b"\"registered\"") {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer))
            .await
            .map_err(|_| "no registered in 30 s".to_string())?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err(format!(
                "closed before registered: {}",
                String::from_utf8_lossy(&seen)
            ));
        }
        seen.extend_from_slice(&buffer[..read]);
    }
    Ok(stream)
}

/// Idle registered connections, added up to a count.
struct Held {
    streams: Vec<TcpStream>,
    failure: Option<String>,
}

impl Held {
    fn new() -> Self {
        Self {
            streams: Vec::new(),
            failure: None,
        }
    }

    /// Adds registered connections (codes from `first_code` on) until `target` are held.
    async fn grow_to(&mut self, server: SocketAddr, target: usize, first_code: usize) {
        let batch = 256;
        while self.streams.len() < target && self.failure.is_none() {
            let first = self.streams.len();
            let tasks: Vec<_> = (first..(first + batch).min(target))
                .map(|n| {
                    // 2,000 per source address: bind() then finds a free port at once.
                    let block = n / 2_000;
                    let source =
                        Ipv4Addr::new(127, 0, 2 + (block / 200) as u8, 1 + (block % 200) as u8);
                    tokio::spawn(bare_registered(server, source, first_code + n))
                })
                .collect();
            for task in tasks {
                match task.await.expect("task") {
                    Ok(stream) => self.streams.push(stream),
                    Err(error) => {
                        self.failure.get_or_insert(error);
                    }
                }
            }
        }
    }
}

/// RSS of one fresh server before and with `count` idle registered connections.
struct MemoryFigure {
    held: usize,
    baseline_kib: u64,
    rss_kib: u64,
    failure: Option<String>,
}

impl MemoryFigure {
    fn per_connection_kib(&self) -> f64 {
        self.rss_kib.saturating_sub(self.baseline_kib) as f64 / self.held.max(1) as f64
    }
}

async fn memory(kind: Kind, server_vps: Option<&Path>, count: usize) -> MemoryFigure {
    let server = Server::start(kind, server_vps);
    // Let the server finish starting (server-vps compiles TypeScript, opens its database).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_kib = rss_kib(server.pid());
    let mut held = Held::new();
    held.grow_to(server.addr(), count, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = rss_kib(server.pid());
    MemoryFigure {
        held: held.streams.len(),
        baseline_kib,
        rss_kib,
        failure: held.failure,
    }
}

struct Pair {
    sender: Client,
    receiver: Client,
    target: String,
}

/// `count` registered pairs, codes from `first_code` on.
async fn pairs(server: &Server, count: usize, first_code: usize) -> Vec<Pair> {
    let url = server.url();
    let mut pairs = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let url = url.clone();
                let a = code(first_code + 2 * i);
                let b = code(first_code + 2 * i + 1);
                tokio::spawn(async move {
                    let sender = Client::registered(&url, &a, 1).await;
                    let receiver = Client::registered(&url, &b, 2).await;
                    Pair {
                        sender,
                        receiver,
                        target: b,
                    }
                })
            })
            .collect();
        for task in tasks {
            pairs.push(task.await.expect("pair"));
        }
    }
    pairs
}

fn offer(target: &str, clock: Instant, seq: usize) -> Message {
    Message::text(
        json!({"type": "offer", "target": target, "payload": {"t": clock.elapsed().as_nanos() as u64, "seq": seq, "sdp": "v=0 o=- 0 0 IN IP4 127.0.0.1 s=- t=0 0"}})
            .to_string(),
    )
}

/// One forwarding run's figures.
struct Forwarding {
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Forwarding {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_message(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages.max(1) as f64
    }
}

/// Every pair's sender sends `per_pair` offers as fast as the receivers
/// read them (at most 64 in flight per pair).
async fn throughput(server: &Server, pairs: Vec<Pair>, per_pair: usize) -> Forwarding {
    let clock = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time(server.pid());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for pair in pairs {
        let Pair {
            sender,
            receiver,
            target,
        } = pair;
        let progress = Arc::new(AtomicU64::new(0));
        let (mut sink, _) = sender.ws.split();
        let (_, mut stream) = receiver.ws.split();
        let got = progress.clone();
        let total = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut count = 0;
            while count < per_pair {
                let frame = stream.next().await.expect("open").expect("frame");
                if let Message::Text(text) = frame {
                    assert!(
                        text.as_str().starts_with("{\"type\":\"offer\""),
                        "{}",
                        text.as_str()
                    );
                    count += 1;
                    got.fetch_add(1, Ordering::Relaxed);
                    total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            for seq in 0..per_pair {
                while seq as u64 >= progress.load(Ordering::Relaxed) + 64 {
                    tokio::task::yield_now().await;
                }
                sink.feed(offer(&target, clock, seq)).await.expect("send");
                if seq % 16 == 15 {
                    sink.flush().await.expect("flush");
                }
            }
            sink.flush().await.expect("flush");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(server.pid()).saturating_sub(cpu_before);
    Forwarding {
        messages: received.load(Ordering::Relaxed),
        elapsed,
        cpu,
    }
}

/// Forward latency at a fixed offered load.
struct Latency {
    samples: Vec<u64>,
    cpu: Duration,
}

impl Latency {
    fn pick(&self, q: f64) -> f64 {
        let index = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples.get(index).copied().unwrap_or(0) as f64 / 1e6
    }
}

async fn latency(server: &Server, pairs: Vec<Pair>, rate: usize, per_pair: usize) -> Latency {
    let clock = Instant::now();
    let pair_count = pairs.len();
    let interval = Duration::from_secs_f64(pair_count as f64 / rate as f64);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let cpu_before = cpu_time(server.pid());
    for (index, pair) in pairs.into_iter().enumerate() {
        let Pair {
            sender,
            receiver,
            target,
        } = pair;
        let (mut sink, _) = sender.ws.split();
        let (_, mut stream) = receiver.ws.split();
        receivers.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_pair);
            while samples.len() < per_pair {
                let frame = stream.next().await.expect("open").expect("frame");
                let now = clock.elapsed().as_nanos() as u64;
                if let Message::Text(text) = frame {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    samples.push(now - value["payload"]["t"].as_u64().unwrap());
                }
            }
            samples
        }));
        senders.push(tokio::spawn(async move {
            // Spread the pairs' ticks evenly over one interval.
            tokio::time::sleep(interval.mul_f64(index as f64 / pair_count as f64)).await;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for seq in 0..per_pair {
                ticks.tick().await;
                sink.send(offer(&target, clock, seq)).await.expect("send");
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let mut samples: Vec<u64> = Vec::new();
    for receiver in receivers {
        samples.extend(receiver.await.expect("receiver"));
    }
    let cpu = cpu_time(server.pid()).saturating_sub(cpu_before);
    samples.sort_unstable();
    Latency { samples, cpu }
}

/// The forwarding figures of one server: throughput with no idle
/// connections, latency at the offered load, then throughput again with
/// `idle` idle registered connections held.
struct ForwardingFigures {
    empty: Forwarding,
    latency: Latency,
    idle_held: usize,
    with_idle: Forwarding,
}

struct Load {
    pairs: usize,
    per_pair: usize,
    latency_pairs: usize,
    latency_per_pair: usize,
    rate: usize,
    idle: usize,
}

/// The forwarding figures of every server in `kinds`, phase by phase with
/// the servers alternating inside each phase (so a change in the machine's
/// load hits both): throughput with no idle connections, latency at the
/// offered load, then, one server at a time (descriptors), `idle` idle
/// registered connections held and the throughput run again.
async fn forwarding(
    kinds: &[Kind],
    server_vps: Option<&Path>,
    load: &Load,
) -> Vec<(Kind, ForwardingFigures)> {
    let mut servers = Vec::new();
    for kind in kinds {
        servers.push((*kind, Server::start(*kind, server_vps)));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Code ranges: each run's pairs fresh (server-vps counts messages per
    // connection per minute), idle connections far above them.
    let mut empty = Vec::new();
    for (_, server) in &servers {
        let first = pairs(server, load.pairs, 0).await;
        empty.push(throughput(server, first, load.per_pair).await);
    }
    let mut latencies: Vec<Option<Latency>> = servers.iter().map(|_| None).collect();
    for index in (0..servers.len()).rev() {
        let server = &servers[index].1;
        let timed = pairs(server, load.latency_pairs, 2 * load.pairs).await;
        latencies[index] = Some(latency(server, timed, load.rate, load.latency_per_pair).await);
    }
    let mut figures = Vec::new();
    for (((kind, server), empty), latency) in servers.iter().zip(empty).zip(latencies) {
        let mut held = Held::new();
        held.grow_to(server.addr(), load.idle, 100_000_000).await;
        if let Some(failure) = &held.failure {
            println!(
                "<!-- {}: idle connections stopped at {}: {failure} -->",
                kind.name(),
                held.streams.len()
            );
        }
        let second = pairs(server, load.pairs, 2 * (load.pairs + load.latency_pairs)).await;
        let with_idle = throughput(server, second, load.per_pair).await;
        figures.push((
            *kind,
            ForwardingFigures {
                empty,
                latency: latency.expect("latency run"),
                idle_held: held.streams.len(),
                with_idle,
            },
        ));
    }
    figures
}

/// "a / b" as a ratio, or a dash when b is missing or zero.
fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    }
}

fn main() {
    let anchor: Option<PathBuf> = std::env::var_os("ZAJEL_SERVER_VPS").map(PathBuf::from);
    if let Some(dir) = &anchor {
        assert!(
            dir.join("node_modules/tsx").is_dir(),
            "ZAJEL_SERVER_VPS={} has no node_modules/tsx: run npm install there",
            dir.display()
        );
    }
    let hard = hard_nofile();
    let most = env_number("BENCH_CONNECTIONS", (hard as usize).saturating_sub(2_000));
    let idle = env_number("BENCH_IDLE", 10_000);
    let pair_count = env_number("BENCH_PAIRS", 3_000);
    let per_pair = env_number("BENCH_MESSAGES", MAX_PER_SENDER).min(MAX_PER_SENDER);
    let rate = env_number("BENCH_RATE", 10_000);
    let seconds = env_number("BENCH_SECONDS", 3);
    let latency_total = rate * seconds;
    let latency_pairs = latency_total.div_ceil(MAX_PER_SENDER).max(1);
    let load = Load {
        pairs: pair_count,
        per_pair,
        latency_pairs,
        latency_per_pair: latency_total / latency_pairs,
        rate,
        idle,
    };
    // Each held connection costs one descriptor here and one in the server.
    let nofile = raise_nofile((most.max(idle) as u64) * 2 + 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_relay-lite"));
    let kinds: Vec<Kind> = if anchor.is_some() {
        vec![Kind::RelayLite, Kind::ServerVps]
    } else {
        vec![Kind::RelayLite]
    };
    println!(
        "relay-lite benchmark: {} as a child process, clients in this process, loopback, {} cores",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match &anchor {
        Some(dir) => println!(
            "anchor: Zajel's server-vps from {} (node --import tsx src/index.ts, {})",
            dir.display(),
            Command::new("node")
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        ),
        None => println!(
            "anchor: NOT TAKEN — ZAJEL_SERVER_VPS is not set, so there is no server-vps column and no ratio (see this file's docs)"
        ),
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start (machine shared with other builds): {}; RLIMIT_NOFILE: hard {hard} at start, {nofile} raised (this process and the servers)\n",
        load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    let mut steps: Vec<usize> = [1_000, 5_000, 10_000]
        .into_iter()
        .filter(|&n| n < most)
        .collect();
    steps.push(most.min((nofile as usize).saturating_sub(2_000)));
    println!("| idle registered connections | relay-lite RSS per connection (total) | server-vps RSS per connection (total) | relay-lite / server-vps |");
    println!("|---|---|---|---|");
    runtime.block_on(async {
        for (index, &count) in steps.iter().enumerate() {
            let mut order = kinds.clone();
            if index % 2 == 1 {
                order.reverse();
            }
            let mut figures: Vec<(Kind, MemoryFigure)> = Vec::new();
            for kind in order {
                figures.push((kind, memory(kind, anchor.as_deref(), count).await));
            }
            let of = |kind: Kind| figures.iter().find(|(k, _)| *k == kind).map(|(_, f)| f);
            let cell = |figure: Option<&MemoryFigure>| match figure {
                Some(f) => format!(
                    "{:.1} KiB ({:.1} MiB, {:.1} MiB before){}",
                    f.per_connection_kib(),
                    f.rss_kib as f64 / 1024.0,
                    f.baseline_kib as f64 / 1024.0,
                    if f.held < count {
                        format!(" — only {} held: {}", f.held, f.failure.clone().unwrap_or_default())
                    } else {
                        String::new()
                    }
                ),
                None => "not taken".into(),
            };
            let relay = of(Kind::RelayLite).expect("relay-lite figure");
            let vps = of(Kind::ServerVps);
            println!(
                "| {count} | {} | {} | {} |",
                cell(Some(relay)),
                cell(vps),
                ratio(relay.per_connection_kib(), vps.map(|f| f.per_connection_kib()))
            );
        }
        println!(
            "\nForwarding: {} pairs × {} offers each as fast as they are read (≤ 64 in flight per pair); latency at {} messages/s offered over {} pairs × {}; then {} idle registered connections held and the throughput run again. Each phase alternates the servers. CPU is the server process's utime+stime over the run.\n",
            load.pairs, load.per_pair, load.rate, load.latency_pairs, load.latency_per_pair, load.idle
        );
        let results = forwarding(&kinds, anchor.as_deref(), &load).await;
        let of = |kind: Kind| results.iter().find(|(k, _)| *k == kind).map(|(_, f)| f);
        let relay = of(Kind::RelayLite).expect("relay-lite figures");
        let vps = of(Kind::ServerVps);
        println!("| forwarding | relay-lite | server-vps | relay-lite / server-vps |");
        println!("|---|---|---|---|");
        let row = |name: String, value: &dyn Fn(&ForwardingFigures) -> f64, unit: &str, digits: usize| {
            let mine = value(relay);
            let theirs = vps.map(value);
            println!(
                "| {name} | {mine:.digits$} {unit} | {} | {} |",
                theirs.map_or("not taken".to_string(), |t| format!("{t:.digits$} {unit}")),
                ratio(mine, theirs)
            );
        };
        row("throughput, no idle connections".into(), &|f| f.empty.per_second(), "messages/s", 0);
        row("server CPU per forwarded message, no idle connections".into(), &|f| f.empty.cpu_us_per_message(), "µs", 2);
        row(format!("throughput, {} idle connections held", relay.idle_held), &|f| f.with_idle.per_second(), "messages/s", 0);
        row(format!("server CPU per forwarded message, {} idle connections held", relay.idle_held), &|f| f.with_idle.cpu_us_per_message(), "µs", 2);
        row(format!("latency p50 at {} messages/s", load.rate), &|f| f.latency.pick(0.5), "ms", 3);
        row(format!("latency p99 at {} messages/s", load.rate), &|f| f.latency.pick(0.99), "ms", 3);
        row("server CPU per message in the latency run".into(), &|f| f.latency.cpu.as_secs_f64() * 1e6 / f.latency.samples.len().max(1) as f64, "µs", 2);
        for (kind, figures) in &results {
            println!(
                "<!-- {}: {} + {} messages in {:.2} s + {:.2} s, {:.2} s + {:.2} s CPU; {} latency samples, max {:.3} ms; idle held {} -->",
                kind.name(),
                figures.empty.messages,
                figures.with_idle.messages,
                figures.empty.elapsed.as_secs_f64(),
                figures.with_idle.elapsed.as_secs_f64(),
                figures.empty.cpu.as_secs_f64(),
                figures.with_idle.cpu.as_secs_f64(),
                figures.latency.samples.len(),
                figures.latency.pick(1.0),
                figures.idle_held
            );
        }
        if vps.is_none() {
            println!("\nThe server-vps column was not taken (ZAJEL_SERVER_VPS not set): no ratios.");
        }
    });
}
