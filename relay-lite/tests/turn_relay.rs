//! The TURN relay end to end: relay-only WebRTC audio calls between two
//! webrtc-rs peers through relay-lite's embedded TURN server over UDP, over
//! TCP and over TLS (the last two through the client-side stream bridge);
//! refusals for bad credentials, over the allocation cap and the stream
//! listeners' limits; and the same calls through coturn from Debian's
//! `coturn` package (UDP, TCP and TLS) with credentials from
//! `relay_lite::credentials`. `TURN_TEST_TIMEOUT_SECS` sets each step's deadline.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::child_process::ChildProcess;
use common::turn::{
    free_port, now_secs, relayed_call, step_timeout, test_pki, AllocateOutcome, CallOutcome,
    RawTurnClient,
};
use relay_lite::credentials;
use relay_lite::turn::rustls::RootCertStore;
use relay_lite::turn::{ClientTransport, TurnConfig, TurnServer, TurnTls};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use zajel_client_net::turn_bridge::{BridgeTls, StreamBridge};

const SECRET: &[u8] = b"zajel-test-shared-secret";
const PACKETS: usize = 25;

fn ice_server(url: String, name: &str) -> RTCIceServer {
    let credential = credentials::issue(SECRET, name, now_secs(), 600);
    RTCIceServer {
        urls: vec![url],
        username: credential.username,
        credential: credential.credential,
    }
}

fn config() -> TurnConfig {
    let mut config = TurnConfig::new(SECRET);
    config.realm = "zajel.test".into();
    config
}

fn assert_relayed(outcome: &CallOutcome) {
    assert!(outcome.received >= PACKETS);
    for (who, pair) in [
        ("offerer", &outcome.offerer_pair),
        ("answerer", &outcome.answerer_pair),
    ] {
        assert_eq!(pair.local.typ, RTCIceCandidateType::Relay, "{who}: {pair}");
        assert_eq!(pair.remote.typ, RTCIceCandidateType::Relay, "{who}: {pair}");
    }
    for sdp in [&outcome.offer_sdp, &outcome.answer_sdp] {
        assert!(sdp.contains("typ relay"), "{sdp}");
        assert!(
            !sdp.contains("typ host") && !sdp.contains("typ srflx"),
            "{sdp}"
        );
    }
}

/// A call where each peer's TURN traffic goes to `url_of(peer)`, checked
/// to be relayed, to have made two allocations on `server`, and to be
/// counted as relayed traffic of `transport` (and of no other) both ways.
async fn call_through(
    server: &TurnServer,
    transport: ClientTransport,
    offerer_url: String,
    answerer_url: String,
) {
    let before = server.stats();
    let outcome = relayed_call(
        ice_server(offerer_url, "offerer"),
        ice_server(answerer_url, "answerer"),
        PACKETS,
        step_timeout(),
    )
    .await
    .unwrap_or_else(|error| panic!("relayed call failed: {error}"));
    assert_relayed(&outcome);
    let after = server.stats();
    assert!(
        after.total_allocations >= before.total_allocations + 2,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.refused_auth, before.refused_auth);
    for other in ClientTransport::ALL {
        let (was, now) = (before.relayed(other), after.relayed(other));
        if other == transport {
            // Each peer's media leaves through its relay socket and arrives
            // at the other's: both directions carry at least the audio.
            assert!(
                now.to_peer_packets >= was.to_peer_packets + PACKETS as u64
                    && now.from_peer_packets >= was.from_peer_packets + PACKETS as u64
                    && now.to_peer_bytes > was.to_peer_bytes + PACKETS as u64 * 12
                    && now.from_peer_bytes > was.from_peer_bytes + PACKETS as u64 * 12,
                "{other:?}: {was:?} -> {now:?}"
            );
        } else {
            assert_eq!(was, now, "{other:?} carried nothing");
        }
    }
    // Closing the peers releases their allocations (Refresh with lifetime 0).
    server
        .wait_for_allocations(step_timeout(), |n| *n == 0)
        .await
        .unwrap_or_else(|n| panic!("{n} allocations still exist after the call"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_is_relayed_over_udp() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let url = format!("turn:{}?transport=udp", server.udp_addr().unwrap());
    call_through(&server, ClientTransport::Udp, url.clone(), url).await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_is_relayed_over_tcp_through_the_bridge() {
    let mut config = config();
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    assert_eq!(server.udp_addr(), None);
    let tcp = server.tcp_addr().unwrap();
    let offerer_bridge = StreamBridge::start(tcp, None).await.unwrap();
    let answerer_bridge = StreamBridge::start(tcp, None).await.unwrap();
    call_through(
        &server,
        ClientTransport::Tcp,
        offerer_bridge.turn_url(),
        answerer_bridge.turn_url(),
    )
    .await;
    assert_carried_over_streams(&offerer_bridge, &answerer_bridge);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_is_relayed_over_tls_through_the_bridge() {
    let pki = test_pki("Zajel TURN test CA");
    let mut config = config();
    config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(
        TurnTls::from_pem(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let server = TurnServer::start(config).await.unwrap();
    let tls_addr = server.tls_addr().unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls = BridgeTls::new("turn.test", roots).unwrap();
    let offerer_bridge = StreamBridge::start(tls_addr, Some(tls.clone()))
        .await
        .unwrap();
    let answerer_bridge = StreamBridge::start(tls_addr, Some(tls)).await.unwrap();
    call_through(
        &server,
        ClientTransport::Tls,
        offerer_bridge.turn_url(),
        answerer_bridge.turn_url(),
    )
    .await;
    assert_carried_over_streams(&offerer_bridge, &answerer_bridge);

    // A bridge that does not trust the server's CA gets nothing through.
    let other = test_pki("Some other CA");
    let mut roots = RootCertStore::empty();
    roots.add(other.ca).unwrap();
    let untrusting =
        StreamBridge::start(tls_addr, Some(BridgeTls::new("turn.test", roots).unwrap()))
            .await
            .unwrap();
    let client = RawTurnClient::new(untrusting.local_addr(), Duration::from_secs(2)).await;
    let credential = credentials::issue(SECRET, "x", now_secs(), 600);
    let refused = client
        .allocate(&credential.username, &credential.credential)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let stats = untrusting.stats();
    assert!(
        stats.streams_failed >= 1 && stats.streams_opened == 0,
        "{stats:?}"
    );
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_with_401() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let udp = RawTurnClient::new(server.udp_addr().unwrap(), step_timeout()).await;
    let bridge = StreamBridge::start(server.tcp_addr().unwrap(), None)
        .await
        .unwrap();
    let tcp = RawTurnClient::new(bridge.local_addr(), step_timeout()).await;

    let now = now_secs();
    let good = credentials::issue(SECRET, "peer", now, 600);
    let expired = credentials::issue(SECRET, "peer", now - 700, 600);
    let foreign = credentials::issue(b"another secret", "peer", now, 600);
    let cases = [
        (
            "wrong password",
            good.username.clone(),
            "not-the-password".to_string(),
        ),
        ("expired", expired.username, expired.credential),
        ("other secret", foreign.username, foreign.credential),
        (
            "malformed username",
            "peer".to_string(),
            good.credential.clone(),
        ),
    ];
    for client in [&udp, &tcp] {
        for (case, username, password) in &cases {
            assert_eq!(
                client.allocate(username, password).await.unwrap(),
                AllocateOutcome::Refused(401),
                "{case}"
            );
        }
    }
    let stats = server.stats();
    assert_eq!(stats.refused_auth, 2 * cases.len() as u64, "{stats:?}");
    assert_eq!(stats.total_allocations, 0);
    assert_eq!(stats.current_allocations, 0);

    // The right credential still works, over both.
    for client in [&udp, &tcp] {
        let outcome = client
            .allocate(&good.username, &good.credential)
            .await
            .unwrap();
        assert!(
            matches!(outcome, AllocateOutcome::Relayed(_)),
            "{outcome:?}"
        );
    }
    assert_eq!(server.stats().current_allocations, 2);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_over_the_cap_are_refused_and_expire() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.max_allocations = 2;
    config.allocation_lifetime = Duration::from_secs(2);
    let server = TurnServer::start(config).await.unwrap();
    let addr = server.udp_addr().unwrap();
    let credential = credentials::issue(SECRET, "peer", now_secs(), 600);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(RawTurnClient::new(addr, step_timeout()).await);
    }
    let mut relays = Vec::new();
    for client in &clients[..2] {
        match client
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap()
        {
            AllocateOutcome::Relayed(relay) => relays.push(relay),
            other => panic!("{other:?}"),
        }
    }
    assert_ne!(relays[0], relays[1]);
    assert_eq!(
        clients[2]
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap(),
        AllocateOutcome::Refused(508)
    );
    let stats = server.stats();
    assert_eq!(
        (
            stats.current_allocations,
            stats.total_allocations,
            stats.refused_over_cap
        ),
        (2, 2, 1),
        "{stats:?}"
    );
    // The hard lifetime (2 s here) ends both allocations, which frees room.
    server
        .wait_for_allocations(step_timeout(), |n| *n == 0)
        .await
        .unwrap_or_else(|n| panic!("{n} allocations outlived their lifetime"));
    assert!(matches!(
        clients[2]
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap(),
        AllocateOutcome::Relayed(_)
    ));
    server.close().await;
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let no_listener = TurnServer::start(config()).await.err().unwrap();
    assert!(
        no_listener.to_string().contains("no TURN listener"),
        "{no_listener}"
    );
    let mut tls_without_cert = config();
    tls_without_cert.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    let error = TurnServer::start(tls_without_cert).await.err().unwrap();
    assert!(error.to_string().contains("certificate"), "{error}");
    let mut empty_secret = TurnConfig::new(Vec::new());
    empty_secret.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    let error = TurnServer::start(empty_secret).await.err().unwrap();
    assert!(error.to_string().contains("secret"), "{error}");
    let error = TurnTls::from_pem(b"not pem", b"not pem").err().unwrap();
    assert!(error.to_string().contains("certificate"), "{error}");
}

/// coturn from Debian's `coturn` package on 127.0.0.1, in the shared-secret
/// scheme, with loopback peers allowed (both peers' relays are on loopback).
fn start_coturn(
    port: u16,
    tls_port: u16,
    pki: &common::turn::TestPki,
    dir: &std::path::Path,
) -> ChildProcess {
    let (cert, key) = (dir.join("turn.pem"), dir.join("turn.key"));
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    let mut command = Command::new("turnserver");
    command
        .arg("-n")
        .args([
            "--no-cli",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
        ])
        .args(["--listening-port", &port.to_string()])
        .args(["--use-auth-secret", "--static-auth-secret"])
        .arg(std::str::from_utf8(SECRET).unwrap())
        .args([
            "--realm",
            "zajel.test",
            "--allow-loopback-peers",
            "--fingerprint",
        ])
        .args(["--tls-listening-port", &tls_port.to_string()])
        .arg("--cert")
        .arg(&cert)
        .arg("--pkey")
        .arg(&key)
        .args(["--no-dtls", "--log-file", "stdout", "--simple-log"])
        .arg("--pidfile")
        .arg(dir.join("turnserver.pid"))
        // Its user database (unused in this scheme) in the test's directory.
        .arg("--userdb")
        .arg(dir.join("turndb"));
    let mut coturn = ChildProcess::spawn("coturn", command).unwrap_or_else(|error| {
        panic!("coturn is needed for this test (Debian package `coturn`, command `turnserver`): {error}")
    });
    coturn
        .wait_for(step_timeout(), |line| {
            line.contains("Total General servers").then_some(())
        })
        .unwrap_or_else(|error| panic!("coturn did not start: {error}\n{}", coturn.output()));
    coturn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coturn_relays_calls_over_udp_and_over_tcp_and_tls_through_the_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let tls_port = free_port();
    let pki = test_pki("Zajel TURN test CA");
    let coturn = start_coturn(port, tls_port, &pki, dir.path());
    let server: SocketAddr = ([127, 0, 0, 1], port).into();

    // coturn's listeners may come up a moment after its log says so.
    let deadline = tokio::time::Instant::now() + step_timeout();
    let tls_server: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    while tokio::net::TcpStream::connect(server).await.is_err()
        || tokio::net::TcpStream::connect(tls_server).await.is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "coturn does not accept TCP on {server} and {tls_server}\n{}",
            coturn.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Our credentials are coturn's: a good one allocates, a bad one gets 401.
    let raw = RawTurnClient::new(server, step_timeout()).await;
    let good = credentials::issue(SECRET, "probe", now_secs(), 600);
    let outcome = raw
        .allocate(&good.username, &good.credential)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AllocateOutcome::Relayed(_)),
        "{outcome:?}"
    );
    let raw = RawTurnClient::new(server, step_timeout()).await;
    assert_eq!(
        raw.allocate(&good.username, "wrong").await.unwrap(),
        AllocateOutcome::Refused(401)
    );

    let url = format!("turn:{server}?transport=udp");
    let outcome = relayed_call(
        ice_server(url.clone(), "offerer"),
        ice_server(url, "answerer"),
        PACKETS,
        step_timeout(),
    )
    .await
    .unwrap_or_else(|error| panic!("call through coturn over UDP: {error}\n{}", coturn.output()));
    assert_relayed(&outcome);

    let offerer_bridge = StreamBridge::start(server, None).await.unwrap();
    let answerer_bridge = StreamBridge::start(server, None).await.unwrap();
    let outcome = relayed_call(
        ice_server(offerer_bridge.turn_url(), "offerer"),
        ice_server(answerer_bridge.turn_url(), "answerer"),
        PACKETS,
        step_timeout(),
    )
    .await
    .unwrap_or_else(|error| panic!("call through coturn over TCP: {error}\n{}", coturn.output()));
    assert_relayed(&outcome);
    assert_carried_over_streams(&offerer_bridge, &answerer_bridge);

    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let tls = BridgeTls::new("turn.test", roots).unwrap();
    let offerer_bridge = StreamBridge::start(tls_server, Some(tls.clone()))
        .await
        .unwrap();
    let answerer_bridge = StreamBridge::start(tls_server, Some(tls)).await.unwrap();
    let outcome = relayed_call(
        ice_server(offerer_bridge.turn_url(), "offerer"),
        ice_server(answerer_bridge.turn_url(), "answerer"),
        PACKETS,
        step_timeout(),
    )
    .await
    .unwrap_or_else(|error| panic!("call through coturn over TLS: {error}\n{}", coturn.output()));
    assert_relayed(&outcome);
    assert_carried_over_streams(&offerer_bridge, &answerer_bridge);
}

/// Each bridge opened a stream and carried frames both ways on it, the
/// offerer's carrying the RTP up and the answerer's carrying it down (the
/// peers' only TURN server was their bridge, so this is their TURN path).
fn assert_carried_over_streams(offerer: &StreamBridge, answerer: &StreamBridge) {
    let (offerer, answerer) = (offerer.stats(), answerer.stats());
    for stats in [offerer, answerer] {
        assert!(stats.streams_opened >= 1, "{stats:?}");
        assert_eq!(stats.streams_failed, 0, "{stats:?}");
        assert!(stats.frames_up >= 2 && stats.frames_down >= 2, "{stats:?}");
    }
    assert!(offerer.frames_up >= PACKETS as u64, "{offerer:?}");
    assert!(answerer.frames_down >= PACKETS as u64, "{answerer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_allocations_end_with_their_connection() {
    let mut config = config();
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let bridge = StreamBridge::start(server.tcp_addr().unwrap(), None)
        .await
        .unwrap();
    let client = RawTurnClient::new(bridge.local_addr(), step_timeout()).await;
    let credential = credentials::issue(SECRET, "peer", now_secs(), 600);
    let outcome = client
        .allocate(&credential.username, &credential.credential)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AllocateOutcome::Relayed(_)),
        "{outcome:?}"
    );
    assert_eq!(server.stats().current_allocations, 1);
    // Closing the bridge closes its TCP connection; the allocation (with a
    // 10-minute TURN lifetime) ends with it.
    bridge.close();
    server
        .wait_for_allocations(step_timeout(), |n| *n == 0)
        .await
        .unwrap_or_else(|n| panic!("{n} allocations outlived their connection"));
    assert_eq!(server.stats().total_allocations, 1);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_credentials_are_rate_limited() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.challenge_rate.per_ip_per_minute = 3;
    let server = TurnServer::start(config).await.unwrap();
    let client = RawTurnClient::new(server.udp_addr().unwrap(), Duration::from_millis(500)).await;
    for _ in 0..3 {
        let (realm, _nonce) = client.challenge().await.unwrap();
        assert_eq!(realm, "zajel.test");
    }
    // The fourth from the same address within the minute goes unanswered.
    let ignored = client.challenge().await;
    assert!(ignored.is_err(), "{ignored:?}");
    assert_eq!(server.stats().dropped_challenges, 1);
    server.close().await;
}

/// Reads until the server closes the connection; fails if it does not
/// within the step deadline.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) {
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
async fn stream_listeners_enforce_their_limits() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    // One connection at a time; bytes that are neither STUN nor
    // ChannelData close the connection, which frees its slot.
    let mut limited = config();
    limited.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    limited.max_stream_connections = 1;
    let server = TurnServer::start(limited).await.unwrap();
    let tcp = server.tcp_addr().unwrap();
    let mut first = TcpStream::connect(tcp).await.unwrap();
    // A frame through the first connection proves it holds the slot.
    first
        .write_all(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42])
        .await
        .unwrap();
    first.write_all(&[7u8; 12]).await.unwrap();
    let mut answer = [0u8; 20];
    tokio::time::timeout(
        step_timeout(),
        tokio::io::AsyncReadExt::read_exact(&mut first, &mut answer),
    )
    .await
    .expect("no Binding answer over TCP")
    .unwrap();
    assert_eq!(&answer[..2], &[0x01, 0x01], "a Binding success response");
    let mut second = TcpStream::connect(tcp).await.unwrap();
    closed_by_server(&mut second).await;
    first.write_all(&[0xFF; 8]).await.unwrap();
    closed_by_server(&mut first).await;
    let bridge = StreamBridge::start(tcp, None).await.unwrap();
    let client = RawTurnClient::new(bridge.local_addr(), step_timeout()).await;
    let credential = credentials::issue(SECRET, "peer", now_secs(), 600);
    let outcome = client
        .allocate(&credential.username, &credential.credential)
        .await
        .unwrap();
    assert!(
        matches!(outcome, AllocateOutcome::Relayed(_)),
        "{outcome:?}"
    );
    server.close().await;

    // Silent connections are closed: idle TCP, and TLS without a handshake.
    let pki = test_pki("Zajel TURN test CA");
    let mut impatient = config();
    impatient.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    impatient.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    impatient.tls = Some(
        TurnTls::from_pem(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    impatient.stream_idle_timeout = Duration::from_millis(300);
    impatient.tls_handshake_timeout = Duration::from_millis(300);
    let server = TurnServer::start(impatient).await.unwrap();
    let mut idle = TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    closed_by_server(&mut idle).await;
    let mut no_handshake = TcpStream::connect(server.tls_addr().unwrap())
        .await
        .unwrap();
    closed_by_server(&mut no_handshake).await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_carries_only_stun_and_channel_data() {
    let mut config = config();
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let bridge = StreamBridge::start(server.tcp_addr().unwrap(), None)
        .await
        .unwrap();
    let local = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Neither STUN nor ChannelData, and a STUN header whose length lies.
    local
        .send_to(&[0xFF; 24], bridge.local_addr())
        .await
        .unwrap();
    let mut lying = vec![0x00, 0x01, 0x00, 0x40, 0x21, 0x12, 0xA4, 0x42];
    lying.extend_from_slice(&[9u8; 12]);
    local.send_to(&lying, bridge.local_addr()).await.unwrap();
    // A Binding request is carried, and its answer comes back.
    let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    binding.extend_from_slice(&[7u8; 12]);
    local.send_to(&binding, bridge.local_addr()).await.unwrap();
    let mut answer = [0u8; 1500];
    let (n, _) = tokio::time::timeout(step_timeout(), local.recv_from(&mut answer))
        .await
        .expect("no Binding answer through the bridge")
        .unwrap();
    assert_eq!(&answer[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(&answer[8..20], &[7u8; 12], "for our transaction");
    assert!(n > 20);
    let stats = bridge.stats();
    assert_eq!(
        (stats.streams_opened, stats.frames_up, stats.frames_down),
        (1, 1, 1),
        "{stats:?}"
    );
    server.close().await;
}

/// coturn's own TURN client (`turnutils_uclient`, from the `coturn` package)
/// against our server: an independent implementation of the TCP and TLS
/// framing (ChannelData included: it relays through channels), with two
/// clients relaying 20 messages each to the other.
async fn uclient_through(port: u16, transport_flags: &[&str]) {
    let credential = credentials::issue(SECRET, "uclient", now_secs(), 600);
    let mut command = Command::new("turnutils_uclient");
    command
        .args(transport_flags)
        .args(["-y", "-c", "-m", "2", "-n", "20", "-l", "160", "-z", "5"])
        .args(["-p", &port.to_string()])
        .args(["-u", &credential.username, "-w", &credential.credential])
        .arg("127.0.0.1");
    let mut uclient = ChildProcess::spawn("turnutils_uclient", command).unwrap_or_else(|error| {
        panic!("turnutils_uclient (Debian package `coturn`) is needed: {error}")
    });
    let timeout = step_timeout();
    let (status, output) = tokio::task::spawn_blocking(move || {
        let status = uclient.wait(timeout);
        (status, uclient.output())
    })
    .await
    .unwrap();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "{status:?}\n{output}"
    );
    assert!(
        output.contains("tot_send_msgs=40, tot_recv_msgs=40"),
        "not every message came back:\n{output}"
    );
    assert!(output.contains("Total lost packets 0 "), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_client_relays_over_our_tcp_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki("Zajel TURN test CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mut config = config();
    config.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    config.listen_tls = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(
        TurnTls::from_pem(
            pki.server_cert_pem.as_bytes(),
            pki.server_key_pem.as_bytes(),
        )
        .unwrap(),
    );
    let server = TurnServer::start(config).await.unwrap();
    // Both at once (uclient paces itself in whole seconds). It makes a few
    // allocations per client beyond the one it relays through.
    let tls_flags = ["-t", "-S", "-E", ca_file.to_str().unwrap()];
    tokio::join!(
        uclient_through(server.tcp_addr().unwrap().port(), &["-t"]),
        uclient_through(server.tls_addr().unwrap().port(), &tls_flags),
    );
    let after_tls = server.stats();
    assert!(after_tls.total_allocations >= 4, "{after_tls:?}");
    assert_eq!(after_tls.refused_auth, 0, "{after_tls:?}");
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_ip_is_advertised_for_relays() {
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    config.external_ip = Some("127.0.0.2".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let client = RawTurnClient::new(server.udp_addr().unwrap(), step_timeout()).await;
    let credential = credentials::issue(SECRET, "peer", now_secs(), 600);
    match client
        .allocate(&credential.username, &credential.credential)
        .await
        .unwrap()
    {
        AllocateOutcome::Relayed(relay) => {
            assert_eq!(relay.ip(), "127.0.0.2".parse::<std::net::IpAddr>().unwrap());
            assert_ne!(relay.port(), 0);
        }
        other => panic!("{other:?}"),
    }
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_allocate_gets_the_allocation_it_already_made() {
    // On a lossy path the Allocate success response can be lost; the client then sends the
    // same request again. Without the replay, the server's answer would be 437 (Allocation
    // Mismatch): the first request already allocated for this 5-tuple.
    let mut config = config();
    config.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    let server = TurnServer::start(config).await.unwrap();
    let client = RawTurnClient::new(server.udp_addr().unwrap(), step_timeout()).await;
    let credential = credentials::issue(SECRET, "peer", now_secs(), 600);
    let (first, again) = client
        .allocate_with_lost_answer(&credential.username, &credential.credential)
        .await
        .unwrap();
    assert!(matches!(first, AllocateOutcome::Relayed(_)), "{first:?}");
    assert_eq!(
        again, first,
        "the retransmission gets the same relayed address"
    );
    let stats = server.stats();
    assert_eq!(stats.replayed_allocates, 1, "{stats:?}");
    assert_eq!(stats.total_allocations, 1, "{stats:?}");
    // A new Allocate (new transaction) from the same 5-tuple is still a mismatch.
    assert_eq!(
        client
            .allocate(&credential.username, &credential.credential)
            .await
            .unwrap(),
        AllocateOutcome::Refused(437)
    );
    server.close().await;
}
