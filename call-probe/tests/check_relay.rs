//! `call-probe check` against TURN servers that relay and one that only pretends to: the
//! binary as a child process, relay-lite (with its embedded TURN server) in-process on
//! 127.0.0.1, and a hostile UDP hop in front of its TURN listener that passes Allocate,
//! Refresh, CreatePermission, ChannelBind and Binding but drops every relayed datagram (Send
//! and Data indications, ChannelData). Also: the network rows (IPv6, the NAT mapping) and why
//! no server was chosen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use relay_lite::turn::{TurnConfig, TurnServer};
use relay_lite::{IceConfig, Relay, RelayConfig, RunningRelay};
use serde_json::Value;
use tokio::net::UdpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_call-probe");
const SECRET: &[u8] = b"check-relay test secret";

/// Runs the binary to its end; returns (exit code, stdout, stderr).
async fn run(args: &[&str]) -> (i32, String, String) {
    let state = std::env::temp_dir().join(format!("call-probe-tests-{}", std::process::id()));
    let child = std::process::Command::new(BIN)
        .env("CALL_PROBE_STATE_DIR", state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("call-probe runs");
    // `check` bounds every step itself (--step-timeout, --layer-timeout-ms).
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn turn_config() -> TurnConfig {
    let mut config = TurnConfig::new(SECRET.to_vec());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen_udp = Some(loopback);
    config.listen_tcp = Some(loopback);
    config
}

/// relay-lite with its embedded TURN server; `ice` overrides the URLs it hands out.
async fn relay(ice: Option<IceConfig>) -> RunningRelay {
    Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn: Some(turn_config()),
        ice,
        ..RelayConfig::default()
    })
    .await
    .unwrap()
}

fn ice(turn_urls: Vec<String>, stun_urls: Vec<String>) -> IceConfig {
    IceConfig {
        turn_urls,
        stun_urls,
        secret: SECRET.to_vec(),
        ttl: relay_lite::config::DEFAULT_ICE_TTL,
    }
}

async fn check(relay: &RunningRelay, extra: &[&str]) -> (i32, String, String) {
    let url = format!("ws://{}", relay.local_addr());
    let mut args = vec![
        "check",
        "--server",
        &url,
        "--allow-private",
        "--no-cache",
        "--step-timeout",
        "2",
    ];
    args.extend_from_slice(extra);
    run(&args).await
}

fn turn_entry<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["turn"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {report:#}"))
}

/// Whether a datagram between a TURN client and server carries relayed data: a Send (0x0016)
/// or Data (0x0017) indication, or ChannelData (first two bits 01).
fn is_relayed_data(datagram: &[u8]) -> bool {
    matches!(datagram, [0x40..=0x7f, ..] | [0x00, 0x16 | 0x17, ..])
}

/// A UDP hop in front of a TURN server that carries everything but relayed data.
struct DroppingHop {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DroppingHop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DroppingHop {
    async fn start(server: SocketAddr) -> Self {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut flows = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, client)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let upstream = match upstreams.get(&client) {
                    Some(upstream) => upstream.clone(),
                    None => {
                        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        upstream.connect(server).await.unwrap();
                        let (back, down, counter) =
                            (socket.clone(), upstream.clone(), counter.clone());
                        flows.spawn(async move {
                            let mut buf = vec![0u8; 65_535];
                            while let Ok(n) = down.recv(&mut buf).await {
                                if is_relayed_data(&buf[..n]) {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                let _ = back.send_to(&buf[..n], client).await;
                            }
                        });
                        upstreams.insert(client, upstream.clone());
                        upstream
                    }
                };
                if is_relayed_data(&buf[..n]) {
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = upstream.send(&buf[..n]).await;
            }
        });
        Self {
            addr,
            dropped,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_server_that_relays_is_yes_with_a_round_trip() {
    // A second TURN server's UDP listener as the relay's STUN server: two server addresses,
    // so the mapping can be judged (on loopback, without NAT, it is the same for both).
    let other = TurnServer::start(turn_config()).await.unwrap();
    let mut stun_urls = vec![format!("stun:{}", other.udp_addr().unwrap())];
    // And one on [::1], when this host has IPv6 loopback: UDP over IPv6 is then tried.
    let mut v6_config = TurnConfig::new(SECRET.to_vec());
    v6_config.listen_udp = Some("[::1]:0".parse().unwrap());
    v6_config.relay_ip = "::1".parse().unwrap();
    let v6 = TurnServer::start(v6_config).await.ok();
    if let Some(udp) = v6.as_ref().and_then(TurnServer::udp_addr) {
        stun_urls.push(format!("stun:{udp}"));
    }
    let relay = relay(Some(ice(Vec::new(), stun_urls))).await;
    let (status, stdout, stderr) = check(&relay, &["--json"]).await;
    assert_eq!(status, 0, "{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verdict"], "call_paths_exist");
    for kind in ["turn/udp", "turn/tcp"] {
        let turn = turn_entry(&report, kind);
        assert_eq!(turn["ok"], true, "{turn}");
        assert_eq!(turn["allocated"], true, "{turn}");
        assert!(
            turn["relay_round_trip_ms"].as_f64().unwrap() > 0.0,
            "{turn}"
        );
        assert!(turn.get("error_kind").is_none(), "{turn}");
        assert_eq!(turn["relay_test"], "two_allocations", "{turn}");
    }
    assert_eq!(report["paths"]["turn_udp"], true);
    assert_eq!(report["paths"]["turn_tcp"], true);
    let mapping = &report["network"]["mapping"];
    assert_eq!(mapping["endpoint_independent"], "yes", "{mapping}");
    assert_eq!(mapping["observations"].as_array().unwrap().len(), 2);
    let ipv6 = &report["network"]["ipv6"];
    match &v6 {
        Some(server) => {
            assert_eq!(ipv6["udp"], "yes", "{ipv6}");
            assert_eq!(ipv6["server"], server.udp_addr().unwrap().to_string());
            assert!(
                ipv6["mapped_address"]
                    .as_str()
                    .unwrap()
                    .starts_with("[::1]:"),
                "{ipv6}"
            );
        }
        None => assert_eq!(ipv6["udp"], "unknown", "{ipv6}"),
    }

    let (status, table, _) = check(&relay, &[]).await;
    assert_eq!(status, 0, "{table}");
    let udp_row = table
        .lines()
        .find(|l| l.starts_with("turn/udp"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        udp_row.contains("yes") && udp_row.contains("relay round trip"),
        "{table}"
    );
    assert!(table.contains("== network =="), "{table}");
    assert!(table.contains("NAT mapping         yes"), "{table}");
    if v6.is_some() {
        assert!(
            table.contains("UDP over IPv6       yes (to [::1]:"),
            "{table}"
        );
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_server_that_allocates_but_drops_relayed_data_is_no() {
    // The relay hands out only the hostile hop in front of its own TURN/UDP listener.
    let turn = TurnServer::start(turn_config()).await.unwrap();
    let hop = DroppingHop::start(turn.udp_addr().unwrap()).await;
    let url = format!("turn:{}?transport=udp", hop.addr);
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ice: Some(ice(vec![url], Vec::new())),
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = check(&relay, &["--json"]).await;
    // Allocating works, relaying does not: no call path, whatever STUN says.
    assert_eq!(status, 5, "{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verdict"], "no_media_path");
    let udp = turn_entry(&report, "turn/udp");
    assert_eq!(udp["allocated"], true, "{udp}");
    assert!(udp["relayed_address"].as_str().is_some(), "{udp}");
    assert_eq!(udp["ok"], false, "{udp}");
    assert_eq!(udp["error_kind"], "not_relayed", "{udp}");
    assert!(
        udp["error"].as_str().unwrap().contains("relayed nothing"),
        "{udp}"
    );
    assert!(udp.get("relay_round_trip_ms").is_none(), "{udp}");
    // The second way (a datagram to our own address) was tried and failed too.
    assert!(
        udp["relay_test_detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("through our own address: ")),
        "{udp}"
    );
    assert_eq!(report["paths"]["turn_udp"], false);
    // The hop passed the binding: UDP itself works.
    assert_eq!(report["stun"]["ok"], true);
    assert!(hop.dropped.load(Ordering::Relaxed) > 0);
    // One server address only: the mapping cannot be judged.
    assert_eq!(
        report["network"]["mapping"]["endpoint_independent"],
        "unknown"
    );

    let (status, table, _) = check(&relay, &[]).await;
    assert_eq!(status, 5, "{table}");
    assert!(table.contains("TURN/UDP no"), "{table}");
    let udp_row = table
        .lines()
        .find(|l| l.starts_with("turn/udp"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        udp_row.contains("no") && udp_row.contains("allocated, but relayed nothing"),
        "{table}"
    );
    assert!(!table.contains("calls can be made"), "{table}");
    assert!(table.contains("no media path (exit 5)"), "{table}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_why_no_server_was_chosen() {
    // --server pointed at something that is no relay (here: an HTTP server, as a registry is).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut tcp in listener.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = tcp.read(&mut buf);
            let _ = tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let url = format!("ws://{addr}");
    let args = [
        "check",
        "--server",
        &url,
        "--allow-private",
        "--no-cache",
        "--layer-timeout-ms",
        "2000",
    ];
    let (status, table, stderr) = run(&args).await;
    assert_eq!(status, 3, "{stderr}\n{table}");
    assert!(table.contains("chosen server       none"), "{table}");
    let why = table
        .lines()
        .find(|l| l.starts_with("why none"))
        .unwrap_or_else(|| panic!("no why-none row:\n{table}"));
    assert!(
        why.contains(&format!("{url}/")) && why.contains("404"),
        "{why}"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("why none")).count(),
        1,
        "one reason, said once:\n{table}"
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (status, stdout, _) = run(&json_args).await;
    assert_eq!(status, 3);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let reason = report["no_server_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no server answered as a relay")
            && reason.contains(&format!("{url}/"))
            && reason.contains("404"),
        "{report:#}"
    );
}
