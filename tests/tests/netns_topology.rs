//! The censorship topology itself: traffic crosses the censor when it has no
//! rules, and each ready-made rule blocks what it says and nothing more.
//! Needs root (CI runs as root).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tests::netem::PathEmulator;
use tests::netns::{self, rules, Topology};

const SHORT: Duration = Duration::from_millis(600);

/// A TCP listener inside the internet namespace that answers every
/// connection with "hello" (on its own thread).
fn tcp_server(topology: &Topology, port: u16) -> SocketAddr {
    let address = SocketAddr::from((netns::internet_host(0), port));
    let listener = topology
        .internet
        .enter(move || TcpListener::bind(address))
        .unwrap()
        .expect("bind in the internet namespace");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"hello");
        }
    });
    address
}

fn tcp_from_client(topology: &Topology, to: SocketAddr) -> std::io::Result<String> {
    topology
        .client
        .enter(move || {
            let mut stream = TcpStream::connect_timeout(&to, SHORT)?;
            stream.set_read_timeout(Some(SHORT))?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap()
}

/// Sends one datagram from the client; says whether the server got it.
fn udp_crosses(topology: &Topology, port: u16) -> bool {
    let address = SocketAddr::from((netns::internet_host(0), port));
    let server = topology
        .internet
        .enter(move || UdpSocket::bind(address))
        .unwrap()
        .expect("bind udp");
    server.set_read_timeout(Some(SHORT)).unwrap();
    let client = topology
        .client
        .enter(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .expect("bind udp client");
    client.send_to(b"ping", address).expect("send");
    let mut buffer = [0u8; 16];
    matches!(server.recv_from(&mut buffer), Ok((4, _)))
}

#[test]
fn open_network_carries_tcp_and_udp_through_the_censor() {
    let topology = Topology::new(1).expect("topology");
    let server = tcp_server(&topology, 8080);
    assert_eq!(tcp_from_client(&topology, server).unwrap(), "hello");
    assert!(udp_crosses(&topology, 3478));
}

#[test]
fn the_callee_is_reachable_through_the_internet_namespace() {
    let topology = Topology::new(1).expect("topology");
    let address = SocketAddr::from((netns::CALLEE, 8080));
    let listener = topology
        .callee
        .enter(move || TcpListener::bind(address))
        .unwrap()
        .expect("bind in the callee namespace");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"hello");
        }
    });
    assert_eq!(tcp_from_client(&topology, address).unwrap(), "hello");
    // The censor's rules apply to it like to any other host.
    topology.censor(&rules::blackhole(netns::CALLEE)).unwrap();
    assert!(tcp_from_client(&topology, address).is_err());
}

#[test]
fn blackhole_hangs_and_reset_refuses() {
    let topology = Topology::new(1).expect("topology");
    let server = tcp_server(&topology, 8080);
    topology
        .censor(&rules::blackhole(netns::internet_host(0)))
        .unwrap();
    let error = tcp_from_client(&topology, server).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
    topology
        .censor(&rules::reset(netns::internet_host(0)))
        .unwrap();
    let error = tcp_from_client(&topology, server).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    topology.censor("").unwrap();
    assert_eq!(tcp_from_client(&topology, server).unwrap(), "hello");
}

#[test]
fn no_udp_blocks_udp_only() {
    let topology = Topology::new(1).expect("topology");
    let server = tcp_server(&topology, 8080);
    topology.censor(rules::NO_UDP).unwrap();
    assert!(!udp_crosses(&topology, 3478));
    assert_eq!(tcp_from_client(&topology, server).unwrap(), "hello");
}

#[test]
fn only_tcp_443_passes_tcp_443() {
    let topology = Topology::new(1).expect("topology");
    let open = tcp_server(&topology, 443);
    let closed = tcp_server(&topology, 8443);
    topology.censor(rules::ONLY_TCP_443).unwrap();
    assert_eq!(tcp_from_client(&topology, open).unwrap(), "hello");
    assert!(tcp_from_client(&topology, closed).is_err());
    assert!(!udp_crosses(&topology, 443));
}

#[test]
fn namespaces_are_gone_after_drop() {
    let topology = Topology::new(1).expect("topology");
    let names: Vec<String> = [
        &topology.client,
        &topology.censor,
        &topology.internet,
        &topology.callee,
    ]
    .iter()
    .map(|ns| ns.name().to_string())
    .collect();
    let listed = netns::run(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    assert!(names.iter().all(|name| listed.contains(name.as_str())));
    drop(topology);
    let listed = netns::run(std::process::Command::new("ip").args(["netns", "list"])).unwrap();
    for name in names {
        assert!(!listed.contains(name.as_str()), "{name} left behind");
    }
}

#[test]
fn path_emulator_delays_and_drops_forwarded_packets() {
    let topology = Topology::new(1).expect("topology");
    let server = tcp_server(&topology, 8080);
    {
        let delay = PathEmulator::start(&topology.censor, Duration::from_millis(100), None)
            .expect("path emulator");
        let started = Instant::now();
        assert_eq!(tcp_from_client(&topology, server).unwrap(), "hello");
        // SYN and SYN-ACK each wait 100 ms in the censor: a lower bound, not a speed target.
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(delay.counters().delayed.load(Ordering::Relaxed) >= 3);
    }
    let loss = PathEmulator::start(&topology.censor, Duration::ZERO, Some(20)).expect("emulator");
    let address = SocketAddr::from((netns::internet_host(0), 3478));
    let receiver = topology
        .internet
        .enter(move || UdpSocket::bind(address))
        .unwrap()
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender = topology
        .client
        .enter(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    for n in 0..100u8 {
        sender.send_to(&[n], address).unwrap();
    }
    let mut received = Vec::new();
    let mut buffer = [0u8; 4];
    while received.len() < 95 {
        let (_, _) = receiver.recv_from(&mut buffer).expect("a datagram");
        received.push(buffer[0]);
    }
    assert_eq!(loss.counters().dropped.load(Ordering::Relaxed), 5);
    // Every 20th datagram is the one missing.
    let missing: Vec<u8> = (0..100).filter(|n| !received.contains(n)).collect();
    assert_eq!(missing, vec![19, 39, 59, 79, 99]);
}

#[test]
fn redirect_sends_a_connection_to_another_server() {
    let topology = Topology::new(2).expect("topology");
    let genuine = tcp_server(&topology, 8080);
    // An impostor on the second address, answering differently.
    let impostor = SocketAddr::from((netns::internet_host(1), 8081));
    let listener = topology
        .internet
        .enter(move || TcpListener::bind(impostor))
        .unwrap()
        .expect("bind the impostor");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"forged");
        }
    });
    assert_eq!(tcp_from_client(&topology, genuine).unwrap(), "hello");
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (genuine, impostor) else {
        unreachable!("IPv4 addresses")
    };
    topology.censor_and_redirect("", &[(from, to)]).unwrap();
    assert_eq!(tcp_from_client(&topology, genuine).unwrap(), "forged");
    topology.censor("").unwrap();
    assert_eq!(tcp_from_client(&topology, genuine).unwrap(), "hello");
}
