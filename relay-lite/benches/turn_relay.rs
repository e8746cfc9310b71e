//! TURN relay benchmark: echo throughput (Mbit/s each way, a fixed window of
//! packets in flight) and round-trip latency (p50/p99) of one client talking
//! to one peer, over direct loopback UDP and through relay-lite's embedded
//! TURN server — over UDP, over TCP through the stream bridge, over TLS
//! through the bridge — side by side in one run. Round trips are
//! interleaved across the paths; "added" is a path's percentile minus direct
//! loopback's. Prints a Markdown table.
//!
//! `cargo bench -p relay-lite --bench turn_relay`. Options through the
//! environment: `BENCH_SECONDS` (throughput run per path, default 3),
//! `BENCH_PINGS` (round trips per path, default 2000), `BENCH_PAYLOAD`
//! (bytes per throughput packet, default 1200), `BENCH_WINDOW` (packets in
//! flight, default 32).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::turn::{now_secs, test_pki};
use paths::Channel;
use relay_lite::credentials;
use relay_lite::turn::rustls::RootCertStore;
use relay_lite::turn::{TurnConfig, TurnServer, TurnTls};
use tokio::net::UdpSocket;
use webrtc::turn::client::{Client, ClientConfig};
use webrtc::util::Conn;
use zajel_client_net::turn_bridge::{BridgeTls, StreamBridge};

const SECRET: &[u8] = b"bench-secret";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The two ways a client reaches its peer.
mod paths {
    use super::*;

    /// The client's side of a path: sends to and receives from the peer.
    pub enum Channel {
        Direct(UdpSocket, SocketAddr),
        Relayed(Arc<dyn Conn + Send + Sync>, SocketAddr, Client),
    }

    impl Channel {
        pub async fn send(&self, payload: &[u8]) {
            match self {
                Channel::Direct(socket, peer) => {
                    socket.send_to(payload, peer).await.unwrap();
                }
                Channel::Relayed(conn, peer, _) => {
                    conn.send_to(payload, *peer).await.unwrap();
                }
            }
        }

        pub async fn recv(&self, buf: &mut [u8]) -> usize {
            match self {
                Channel::Direct(socket, _) => socket.recv_from(buf).await.unwrap().0,
                Channel::Relayed(conn, _, _) => conn.recv_from(buf).await.unwrap().0,
            }
        }

        pub async fn close(self) {
            if let Channel::Relayed(conn, _, client) = self {
                let _ = conn.close().await;
                let _ = client.close().await;
            }
        }
    }
}

/// A peer that echoes every datagram to its sender.
async fn echo_peer() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn relayed(turn_server: SocketAddr, peer: SocketAddr) -> Channel {
    let credential = credentials::issue(SECRET, "bench", now_secs(), 3600);
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: turn_server.to_string(),
        username: credential.username,
        password: credential.credential,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(client.allocate().await.unwrap());
    Channel::Relayed(conn, peer, client)
}

/// Warm-up: permission, channel binding, caches.
async fn warm_up(channel: &Channel) {
    let mut buf = vec![0u8; 2048];
    for _ in 0..50 {
        channel.send(b"warm-up").await;
        channel.recv(&mut buf).await;
    }
}

/// One round trip of an 8-byte packet.
async fn round_trip(channel: &Channel, sequence: u64, buf: &mut [u8]) -> Duration {
    let payload = sequence.to_be_bytes();
    let started = Instant::now();
    channel.send(&payload).await;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(2), channel.recv(buf))
            .await
            .expect("a round trip was lost");
        if buf[..n] == payload {
            return started.elapsed();
        }
    }
}

/// Keeps `window` packets in flight for `seconds`; returns echoed bytes/s.
async fn echo_throughput(channel: &Channel, seconds: u64, payload: usize, window: usize) -> f64 {
    let packet = vec![0x5Au8; payload];
    let mut buf = vec![0u8; 2048];
    for _ in 0..window {
        channel.send(&packet).await;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut echoed = 0usize;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), channel.recv(&mut buf)).await {
            Ok(n) => {
                echoed += n;
                channel.send(&packet).await;
            }
            // A lost packet shrinks the window; put one back.
            Err(_) => channel.send(&packet).await,
        }
    }
    echoed as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_number("BENCH_SECONDS", 3) as u64;
    let pings = env_number("BENCH_PINGS", 2000);
    let payload = env_number("BENCH_PAYLOAD", 1200);
    let window = env_number("BENCH_WINDOW", 32);

    let pki = test_pki("bench CA");
    let mut config = TurnConfig::new(SECRET);
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(
        TurnTls::from_pem(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    // The echo peer is a plain socket on loopback, which the peer policy denies by
    // default; and this measures the relay, not the per-allocation bandwidth cap.
    config.allow_peers = vec!["127.0.0.0/8".parse().unwrap()];
    config.bandwidth_bytes_per_sec = 0;
    let server = TurnServer::start(config).await.unwrap();
    let tcp_bridge = StreamBridge::start(server.tcp_addr().unwrap(), None)
        .await
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls_bridge = StreamBridge::start(
        server.tls_addr().unwrap(),
        Some(BridgeTls::new("turn.test", roots).unwrap()),
    )
    .await
    .unwrap();

    println!(
        "TURN relay: {payload}-byte packets, {window} in flight for {seconds} s; \
         {pings} round trips of 8 bytes\n"
    );
    println!(
        "| path | echo throughput (Mbit/s each way) | RTT p50 (µs) | RTT p99 (µs) | added p50 (µs) | added p99 (µs) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let names = [
        "direct loopback UDP",
        "TURN over UDP",
        "TURN over TCP (bridge)",
        "TURN over TLS (bridge)",
    ];
    let mut channels = Vec::new();
    for name in names {
        let peer = echo_peer().await;
        let channel = match name {
            "direct loopback UDP" => {
                Channel::Direct(UdpSocket::bind("127.0.0.1:0").await.unwrap(), peer)
            }
            "TURN over UDP" => relayed(server.udp_addr().unwrap(), peer).await,
            "TURN over TCP (bridge)" => relayed(tcp_bridge.local_addr(), peer).await,
            _ => relayed(tls_bridge.local_addr(), peer).await,
        };
        warm_up(&channel).await;
        channels.push(channel);
    }
    // Round trips interleaved across the paths, so that whatever else the
    // machine does at a moment weighs on every path alike.
    let mut times = vec![Vec::with_capacity(pings); channels.len()];
    let mut buf = vec![0u8; 2048];
    for sequence in 0..pings as u64 {
        for (channel, times) in channels.iter().zip(times.iter_mut()) {
            times.push(round_trip(channel, sequence, &mut buf).await);
        }
    }
    let mut direct = None;
    for ((name, channel), mut times) in names.iter().zip(&channels).zip(times) {
        times.sort();
        let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
        let rate = echo_throughput(channel, seconds, payload, window).await;
        let (added50, added99) = match direct {
            None => {
                direct = Some((p50, p99));
                ("—".to_string(), "—".to_string())
            }
            Some((d50, d99)) => (
                format!("{:+.0}", micros(p50) - micros(d50)),
                format!("{:+.0}", micros(p99) - micros(d99)),
            ),
        };
        println!(
            "| {name} | {:.1} | {:.0} | {:.0} | {added50} | {added99} |",
            rate * 8.0 / 1e6,
            micros(p50),
            micros(p99),
        );
    }
    for channel in channels {
        channel.close().await;
    }
    let stats = server.stats();
    println!("\nserver counters after the run: {stats:?}");
    server.close().await;
}
