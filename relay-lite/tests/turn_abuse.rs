//! The embedded TURN server under the attacks of issue 19, with webrtc-rs's
//! TURN client (`webrtc::turn::client`) as the attacker: CreatePermission and
//! Send to loopback, link-local (the cloud metadata address), RFC 1918,
//! multicast, broadcast and the server's own ports are answered 403 and
//! nothing reaches them, over UDP, TCP and TLS; another allocation's relayed
//! address is allowed and delivered to, but its host's other ports are not;
//! one credential cannot take every allocation (486) while another user
//! still gets one; one address cannot hold every stream connection, and
//! connections without an allocation are closed in seconds; one
//! allocation's bandwidth is capped. Every address is on loopback: a relay
//! socket bound to 127.0.0.1 cannot reach any other address, so even a
//! broken policy sends nothing off the host.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::turn::{now_secs, step_timeout, test_pki, AllocateOutcome, RawTurnClient};
use relay_lite::credentials;
use relay_lite::turn::rustls::RootCertStore;
use relay_lite::turn::{ClientTransport, TurnConfig, TurnRefusal, TurnServer, TurnTls};
use tokio::net::{TcpStream, UdpSocket};
use webrtc::turn::client::{Client as TurnClient, ClientConfig as TurnClientConfig};
use webrtc::util::Conn;
use zajel_client_net::turn_bridge::{BridgeTls, StreamBridge};

const SECRET: &[u8] = b"zajel-turn-abuse-secret";
const REALM: &str = "zajel.test";

fn config() -> TurnConfig {
    let mut config = TurnConfig::new(SECRET);
    config.realm = REALM.into();
    config
}

/// One allocation made with webrtc-rs's TURN client through `server` (a TURN
/// UDP listener, or a stream bridge's UDP side) with a credential for `name`.
struct Allocation {
    _client: TurnClient,
    relay: Arc<dyn Conn + Send + Sync>,
    relayed: SocketAddr,
}

async fn allocate(server: SocketAddr, name: &str) -> Allocation {
    let credential = credentials::issue(SECRET, name, now_secs(), 600);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = TurnClient::new(TurnClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: credential.username,
        password: credential.credential,
        realm: REALM.into(),
        software: "turn-abuse test".into(),
        rto_in_ms: 200,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let relay = tokio::time::timeout(step_timeout(), client.allocate())
        .await
        .expect("Allocate answered")
        .expect("allocated");
    let relayed = relay.local_addr().unwrap();
    Allocation {
        _client: client,
        relay: Arc::new(relay),
        relayed,
    }
}

async fn receive(relay: &Arc<dyn Conn + Send + Sync>) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(step_timeout(), relay.recv_from(&mut buf))
        .await
        .expect("a relayed datagram within the step deadline")
        .unwrap();
    (buf[..n].to_vec(), from)
}

/// Sends to `peer` through `allocation`; the error text (the server's code) if refused.
async fn send(allocation: &Allocation, peer: SocketAddr, data: &[u8]) -> Result<(), String> {
    tokio::time::timeout(step_timeout(), allocation.relay.send_to(data, peer))
        .await
        .map_err(|_| format!("no answer about {peer}"))?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What the attacks of the issue name, given a UDP service on loopback and
/// the server's own ports.
fn hostile_peers(victim: SocketAddr, own: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut peers: Vec<SocketAddr> = [
        "169.254.169.254:80",
        "10.0.0.1:53",
        "192.168.1.1:80",
        "172.16.0.1:80",
        "100.64.0.1:80",
        "224.0.0.251:5353",
        "255.255.255.255:9",
        "0.0.0.0:9",
    ]
    .iter()
    .map(|peer| peer.parse().unwrap())
    .collect();
    peers.push(victim);
    let mapped = match victim.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    peers.push(SocketAddr::new(mapped.into(), victim.port()));
    peers.extend_from_slice(own);
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_peers_are_refused_with_403_over_udp_tcp_and_tls_and_receive_nothing() {
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    // Stands in for the signaling port, which the relay passes as an own address.
    let signaling = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    let pki = test_pki("Zajel TURN abuse test CA");
    config.tls = Some(
        TurnTls::from_pem(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    config.own_addresses = vec![signaling.local_addr().unwrap()];
    let server = TurnServer::start(config).await.unwrap();
    let (udp, tcp, tls) = (
        server.udp_addr().unwrap(),
        server.tcp_addr().unwrap(),
        server.tls_addr().unwrap(),
    );
    let own = [udp, tcp, tls, signaling.local_addr().unwrap()];
    let peers = hostile_peers(victim_addr, &own);

    let tcp_bridge = StreamBridge::start(tcp, None).await.unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls_bridge = StreamBridge::start(tls, Some(BridgeTls::new("turn.test", roots).unwrap()))
        .await
        .unwrap();
    for (transport, through) in [
        (ClientTransport::Udp, udp),
        (ClientTransport::Tcp, tcp_bridge.local_addr()),
        (ClientTransport::Tls, tls_bridge.local_addr()),
    ] {
        let attacker = allocate(through, "attacker").await;
        for peer in &peers {
            let refused = send(&attacker, *peer, b"hello from the relay").await;
            let error = refused.expect_err(&format!("{transport:?}: {peer} was allowed"));
            assert!(error.contains("403"), "{transport:?}: {peer}: {error}");
        }
        let stats = server.stats();
        assert_eq!(
            stats.relayed(transport).to_peer_packets,
            0,
            "{transport:?}: {stats:?}"
        );
    }
    assert!(
        server.stats().refused(TurnRefusal::PeerDenied) >= 3 * peers.len() as u64,
        "{:?}",
        server.stats()
    );
    let mut buf = [0u8; 64];
    assert!(
        victim.try_recv_from(&mut buf).is_err(),
        "the loopback service heard the relay"
    );
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_allocation_is_reachable_but_not_the_rest_of_its_host() {
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let udp = server.udp_addr().unwrap();
    let caller = allocate(udp, "caller").await;
    let callee = allocate(udp, "callee").await;
    assert!(caller.relayed.ip().is_loopback(), "{}", caller.relayed);

    // Two callers who both need TURN meet at this server: both ways work
    // (the callee's permission for the caller first, as ICE checks do).
    send(&callee, caller.relayed, b"opening")
        .await
        .expect("relay to relay");
    send(&caller, callee.relayed, b"hello callee")
        .await
        .expect("relay to relay");
    assert_eq!(
        receive(&callee.relay).await,
        (b"hello callee".to_vec(), caller.relayed)
    );
    send(&callee, caller.relayed, b"hello caller")
        .await
        .expect("and back");
    // The "opening" datagram reached the caller's relayed socket before its
    // permission existed; when the server reads it late (a loaded machine),
    // the permission is there by then and it is delivered first. Either way
    // everything the caller hears comes from the callee's relayed address.
    let mut heard = receive(&caller.relay).await;
    if heard.0 == b"opening" {
        assert_eq!(heard.1, callee.relayed);
        heard = receive(&caller.relay).await;
    }
    assert_eq!(heard, (b"hello caller".to_vec(), callee.relayed));

    // A permission is per IP: the caller now holds one for 127.0.0.1. A
    // Send (or ChannelBind) to another port there is still refused.
    let _ = send(&caller, victim_addr, b"to the loopback service").await;
    send(&caller, callee.relayed, b"after")
        .await
        .expect("relay to relay still");
    assert_eq!(
        receive(&callee.relay).await,
        (b"after".to_vec(), caller.relayed)
    );
    let mut buf = [0u8; 64];
    assert!(
        victim.try_recv_from(&mut buf).is_err(),
        "the loopback service heard the relay"
    );
    assert!(server.stats().refused(TurnRefusal::PeerDenied) >= 1);

    // Once the callee's allocation is gone, its address is just loopback.
    let callee_relayed = callee.relayed;
    callee.relay.close().await.unwrap();
    drop(callee);
    server
        .wait_for_allocations(step_timeout(), |n| *n == 1)
        .await
        .unwrap();
    let other = allocate(udp, "other").await;
    if other.relayed != callee_relayed {
        let error = send(&other, callee_relayed, b"gone").await.unwrap_err();
        assert!(error.contains("403"), "{error}");
    }
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_cannot_take_every_allocation() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    // Every client here is 127.0.0.1: the per-address quota is out of the way.
    config.max_allocations_per_source = 5_000;
    config.challenge_rate.per_ip_per_minute = 10_000;
    config.challenge_rate.total_per_second = 10_000;
    let per_username = config.max_allocations_per_username;
    let server = TurnServer::start(config).await.unwrap();
    let udp = server.udp_addr().unwrap();
    let credential = credentials::issue(SECRET, "greedy", now_secs(), 600);
    let (mut relayed, mut quota) = (0, 0);
    for _ in 0..1_000 {
        // A new client socket each time: a new 5-tuple, a new allocation.
        let attempt = RawTurnClient::new(udp, step_timeout()).await;
        match attempt
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap()
        {
            AllocateOutcome::Relayed(_) => relayed += 1,
            AllocateOutcome::Refused(486) => quota += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((relayed, quota), (per_username, 1_000 - per_username));
    // Everyone else still gets one.
    let honest = allocate(udp, "honest").await;
    assert!(honest.relayed.ip().is_loopback());
    let stats = server.stats();
    assert_eq!(
        stats.refused(TurnRefusal::UsernameQuota),
        (1_000 - per_username) as u64
    );
    assert_eq!(stats.current_allocations, per_username as u64 + 1);
    server.close().await;

    // Per client address: the fourth allocation from 127.0.0.1 is refused,
    // whatever its username.
    let mut config = self::config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.max_allocations_per_source = 3;
    let server = TurnServer::start(config).await.unwrap();
    let udp = server.udp_addr().unwrap();
    for name in ["a", "b", "c", "d"] {
        let credential = credentials::issue(SECRET, name, now_secs(), 600);
        let outcome = RawTurnClient::new(udp, step_timeout())
            .await
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap();
        if name == "d" {
            assert_eq!(outcome, AllocateOutcome::Refused(486));
        } else {
            assert!(
                matches!(outcome, AllocateOutcome::Relayed(_)),
                "{outcome:?}"
            );
        }
    }
    assert_eq!(server.stats().refused(TurnRefusal::SourceQuota), 1);
    server.close().await;
}

/// Reads until the server closes the connection; fails if it does not
/// within the step deadline.
async fn closed_by_server(stream: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(step_timeout(), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_connections_are_capped_per_address_and_closed_without_an_allocation() {
    let mut config = config();
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.max_stream_connections_per_source = 2;
    config.stream_unallocated_timeout = Duration::from_millis(500);
    let server = TurnServer::start(config).await.unwrap();
    let tcp = server.tcp_addr().unwrap();

    let opened = Instant::now();
    let mut first = TcpStream::connect(tcp).await.unwrap();
    let mut second = TcpStream::connect(tcp).await.unwrap();
    let mut third = TcpStream::connect(tcp).await.unwrap();
    closed_by_server(&mut third).await;
    closed_by_server(&mut first).await;
    closed_by_server(&mut second).await;
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(450),
        "closed after {lived:?}, before the timeout"
    );

    // A connection with an allocation stays while idle ones around it go.
    let bridge = StreamBridge::start(tcp, None).await.unwrap();
    let holder = allocate(bridge.local_addr(), "holder").await;
    let mut idle = TcpStream::connect(tcp).await.unwrap();
    closed_by_server(&mut idle).await;
    let mut late = TcpStream::connect(tcp).await.unwrap();
    closed_by_server(&mut late).await;
    assert_eq!(server.stats().current_allocations, 1);
    assert!(holder.relayed.ip().is_loopback());
    let stats = server.stats();
    assert_eq!(stats.refused(TurnRefusal::StreamPerSource), 1, "{stats:?}");
    assert!(
        stats.refused(TurnRefusal::StreamUnallocated) >= 4,
        "{stats:?}"
    );
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_allocation_cannot_relay_beyond_its_bandwidth() {
    const RATE: u64 = 10_000;
    const BURST: u64 = 5_000;
    const DATAGRAMS: u64 = 200;
    const SIZE: usize = 1_000;
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.bandwidth_bytes_per_sec = RATE;
    config.bandwidth_burst_bytes = BURST;
    let server = TurnServer::start(config).await.unwrap();
    let udp = server.udp_addr().unwrap();
    let sender = allocate(udp, "sender").await;
    let sink = allocate(udp, "sink").await;
    let started = Instant::now();
    for _ in 0..DATAGRAMS {
        send(&sender, sink.relayed, &[7u8; SIZE]).await.unwrap();
    }
    // Every datagram is either relayed or dropped at the cap (or, should
    // the server's socket overflow, lost before it: then the count stops).
    let deadline = Instant::now() + step_timeout();
    let (mut last_seen, mut last_change) = (0, Instant::now());
    let stats = loop {
        let stats = server.stats();
        let seen = stats.relayed(ClientTransport::Udp).to_peer_packets
            + stats.refused(TurnRefusal::Bandwidth);
        if seen != last_seen {
            (last_seen, last_change) = (seen, Instant::now());
        }
        if seen >= DATAGRAMS
            || Instant::now() > deadline
            || last_change.elapsed() > Duration::from_millis(500)
        {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = last_change.duration_since(started).as_secs_f64();
    let relayed = stats.relayed(ClientTransport::Udp).to_peer_packets;
    let allowed = (BURST as f64 + RATE as f64 * elapsed) / SIZE as f64;
    assert!(
        (relayed as f64) <= allowed + 1.0,
        "{relayed} datagrams of {SIZE} B in {elapsed:.2} s (cap: {allowed:.1})"
    );
    assert!(
        relayed >= BURST / SIZE as u64,
        "{relayed}: the burst passes"
    );
    assert!(
        stats.refused(TurnRefusal::Bandwidth) > 0 && relayed < DATAGRAMS / 2,
        "{stats:?}"
    );
    server.close().await;
}
