//! relay-lite benchmark: the most concurrent registered connections one
//! relay holds (with its RSS per connection), forwarding throughput between
//! paired peers, and p50/p99 forward latency at a fixed offered load.
//! Prints a Markdown table.
//!
//! ```sh
//! cargo bench -p relay-lite --bench relay
//! ```
//!
//! Environment: `BENCH_CONNECTIONS` (default 50000), `BENCH_PAIRS` (64),
//! `BENCH_MESSAGES` (messages per pair in the throughput run, 2000),
//! `BENCH_RATE` (offered load for the latency run, messages/s, 10000),
//! `BENCH_SECONDS` (latency run length, 3). Everything runs on loopback; client
//! sockets are spread over 127.0.2.1, 127.0.2.2, … (2,000 each), so bind()
//! finds a free ephemeral port at once. RLIMIT_NOFILE is raised for this process and the relay.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay::{key, Client, RelayProcess};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use zajel_wire::pairing::PairingCode;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

async fn connections_held(target: usize) {
    let relay = RelayProcess::start(&[
        "--max-connections",
        "1000000",
        "--max-connections-per-ip",
        "1000000",
        "--idle-timeout-ms",
        "3600000",
    ]);
    let pid = relay.process.id();
    let baseline = rss_kib(pid);
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(target);
    let mut failure = None;
    let batch = 256;
    while held.len() < target && failure.is_none() {
        let first = held.len();
        let tasks: Vec<_> = (first..(first + batch).min(target))
            .map(|n| {
                // 2,000 per source address: bind() then finds a free port at once.
                let block = n / 2_000;
                let source =
                    Ipv4Addr::new(127, 0, 2 + (block / 200) as u8, 1 + (block % 200) as u8);
                tokio::spawn(bare_registered(relay.addr, source, n))
            })
            .collect();
        for task in tasks {
            match task.await.expect("task") {
                Ok(stream) => held.push(stream),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let registered = relay.metric("relay_registered_codes").await as usize;
    let rss = rss_kib(pid);
    let per_connection = (rss.saturating_sub(baseline) as f64 * 1024.0) / held.len().max(1) as f64;
    println!(
        "| registered connections held | {} of {target} ({registered} codes on the relay) in {:.1} s |",
        held.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "| relay RSS | {:.1} MiB idle, {:.1} MiB with them: {:.1} KiB per connection |",
        baseline as f64 / 1024.0,
        rss as f64 / 1024.0,
        per_connection / 1024.0
    );
    if let Some(error) = failure {
        println!("| stopped by | {error} |");
    }
    drop(held);
}

struct Pair {
    sender: Client,
    receiver: Client,
    target: String,
}

async fn pairs(relay: &RelayProcess, count: usize) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let a = code(2 * i);
        let b = code(2 * i + 1);
        let sender = Client::registered(&relay.url(), &a, 1).await;
        let receiver = Client::registered(&relay.url(), &b, 2).await;
        pairs.push(Pair {
            sender,
            receiver,
            target: b,
        });
    }
    pairs
}

fn offer(target: &str, clock: Instant, seq: usize) -> Message {
    Message::text(
        json!({"type": "offer", "target": target, "payload": {"t": clock.elapsed().as_nanos() as u64, "seq": seq, "sdp": "v=0 o=- 0 0 IN IP4 127.0.0.1 s=- t=0 0"}})
            .to_string(),
    )
}

async fn throughput(pair_count: usize, per_pair: usize) {
    let relay = RelayProcess::start(&[
        "--rate-limit-messages",
        "4000000000",
        "--max-connections-per-ip",
        "100000",
    ]);
    let clock = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for pair in pairs(&relay, pair_count).await {
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
            for _ in 0..per_pair {
                let frame = stream.next().await.expect("open").expect("frame");
                if let Message::Text(text) = frame {
                    assert!(text.as_str().starts_with("{\"type\":\"offer\""));
                }
                got.fetch_add(1, Ordering::Relaxed);
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
        tasks.push(tokio::spawn(async move {
            // At most 64 in flight per pair, so no queue on the relay overflows.
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
    let total = received.load(Ordering::Relaxed);
    println!(
        "| forwarding throughput | {:.0} messages/s ({total} offers over {pair_count} pairs in {:.2} s) |",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

async fn latency(pair_count: usize, rate: usize, seconds: usize) {
    let relay = RelayProcess::start(&[
        "--rate-limit-messages",
        "4000000000",
        "--max-connections-per-ip",
        "100000",
    ]);
    let clock = Instant::now();
    let per_pair = (rate * seconds) / pair_count;
    let interval = Duration::from_secs_f64(pair_count as f64 / rate as f64);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (index, pair) in pairs(&relay, pair_count).await.into_iter().enumerate() {
        let Pair {
            sender,
            receiver,
            target,
        } = pair;
        let (mut sink, _) = sender.ws.split();
        let (_, mut stream) = receiver.ws.split();
        receivers.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_pair);
            for _ in 0..per_pair {
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
    samples.sort_unstable();
    let pick = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        Duration::from_nanos(samples[index])
    };
    println!(
        "| forward latency at {rate} messages/s offered ({} samples, {pair_count} pairs) | p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms |",
        samples.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
}

fn main() {
    let connections = env_number("BENCH_CONNECTIONS", 50_000);
    let pair_count = env_number("BENCH_PAIRS", 64);
    let messages = env_number("BENCH_MESSAGES", 2_000);
    let rate = env_number("BENCH_RATE", 10_000);
    let seconds = env_number("BENCH_SECONDS", 3);
    let nofile = raise_nofile((connections as u64) * 2 + 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_relay-lite"));
    println!(
        "relay-lite benchmark: {} as a child process, clients in this process, loopback, {} cores\n",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measure | result |\n|---|---|");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "| load average at start (machine shared with other builds) | {} |",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| RLIMIT_NOFILE | {nofile} (this process and the relay) |");
    // Each held connection costs one descriptor here and one in the relay;
    // keep some for the other runs and the relay's own files.
    let possible = (nofile as usize).saturating_sub(2_000);
    if possible < connections {
        println!(
            "| note | {connections} connections asked, {possible} possible: the hard RLIMIT_NOFILE here is {nofile} and raising it was refused |"
        );
    }
    let connections = connections.min(possible);
    runtime.block_on(async {
        connections_held(connections).await;
        throughput(pair_count, messages).await;
        latency(pair_count, rate, seconds).await;
    });
}
