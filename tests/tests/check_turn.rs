//! `call-probe check` against relay-lite deployed with the README's TURN flags (listeners on
//! every interface, `--turn-external-ip` its public address 10.77.2.10, TLS on signaling and
//! TURN) in the internet namespace of the censorship topology, run from the client namespace
//! behind the router:
//!
//! 1. as deployed, every TURN transport (UDP, TCP, TLS) relays: `check` says yes to each with
//!    a relay round trip, and calls can be made;
//! 2. with what its relayed sockets send to its own public address dropped (a 1:1 NAT
//!    without hairpinning), the two-allocation test fails and the datagram to our own address
//!    and back shows each transport relays (`relay_test: own_address`);
//! 3. with the relay host's relayed traffic dropped by nftables (everything UDP it sends from
//!    a port other than its TURN listener's: allocations still succeed, nothing is relayed),
//!    `check` says no to each transport with the reason (`not_relayed`) and exits with "no
//!    media path" — before issue 15 it said "turn/udp yes … calls can be made" here;
//! 4. with a second STUN server address (another relay-lite's TURN/UDP listener, named by
//!    `--stun-url`), the NAT mapping: `yes` without NAT and behind a port-preserving
//!    `masquerade` in the router, `no` behind `masquerade random` (a symmetric NAT).
//!
//! Needs root (network namespaces); CI runs as root. Everything stays inside namespaces the
//! test creates, removed (with the processes in them) when it ends, also on failure.

use std::time::Duration;

use serde_json::Value;
use tests::censorship_world::{operator_relay_command, run_to_end, tool, write_turn_secret};
use tests::netns::{internet_host, Topology};
use tests::process::ChildProcess;
use tests::test_ca::TestCa;

/// Drops every UDP datagram the relay host sends from a port other than its TURN/UDP
/// listener's: the relayed sockets' traffic (all transports relay over UDP).
const DROP_RELAYED: &str = "table inet drop_relayed {\n\
       chain output {\n\
         type filter hook output priority 0; policy accept;\n\
         meta l4proto udp udp sport != 3478 drop\n\
       }\n\
     }\n";

/// Drops what the relay host's relayed sockets send to its own public address only, as a
/// 1:1 NAT without hairpinning does: relaying between two allocations fails, relaying to the
/// rest of the network works.
const NO_HAIRPIN: &str = "table inet no_hairpin {\n\
       chain output {\n\
         type filter hook output priority 0; policy accept;\n\
         ip daddr 10.77.2.10 meta l4proto udp udp sport != 3478 drop\n\
       }\n\
     }\n";

fn public_address() -> String {
    internet_host(0).to_string()
}

fn endpoint() -> String {
    format!("wss://{}", public_address())
}

fn wait_listening(mut relay: ChildProcess) -> ChildProcess {
    relay
        .wait_for(Duration::from_secs(20), |line| {
            line.starts_with("listening on ").then_some(())
        })
        .expect("relay-lite listening");
    relay
}

/// relay-lite with the README's TURN flags, in the internet namespace (`extra`: more flags).
fn start_relay(
    topology: &Topology,
    pki: &TestCa,
    dir: &std::path::Path,
    extra: &[&str],
) -> ChildProcess {
    let secret = write_turn_secret(dir).expect("TURN secret");
    let mut command =
        operator_relay_command(&topology.internet, pki, internet_host(0), dir, &secret)
            .expect("relay-lite binary");
    command.args(extra);
    wait_listening(ChildProcess::spawn("relay-lite", command).expect("start relay-lite"))
}

/// `call-probe check` from the client namespace: (exit code, JSON report, table).
fn check(topology: &Topology, pki: &TestCa) -> (Option<i32>, Value, String) {
    let run = |json: bool| {
        let mut command = tool(&topology.client, "call-probe").expect("call-probe binary");
        command
            .args(["check", "--server", &endpoint()])
            .args(["--allow-private", "--no-cache"])
            .arg("--ca-file")
            .arg(&pki.ca_file)
            .args(["--step-timeout", "3"]);
        if json {
            command.arg("--json");
        }
        run_to_end(command, Duration::from_secs(90)).expect("call-probe check ends")
    };
    let finished = run(true);
    let report: Value = serde_json::from_str(&finished.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\nstderr:\n{}",
            finished.stdout, finished.stderr
        )
    });
    let table = run(false);
    assert_eq!(table.code, finished.code, "{}", table.stdout);
    (finished.code, report, table.stdout)
}

fn turn<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["turn"]
        .as_array()
        .expect("turn checks")
        .iter()
        .find(|t| t["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}: {report:#}"))
}

#[test]
fn check_says_yes_to_turn_only_when_the_relay_relays() {
    let topology = Topology::new(1).expect("namespaces (needs root)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestCa::for_names(&[public_address()]);
    let relay = start_relay(&topology, &pki, dir.path(), &[]);

    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}\n{}", relay.output());
    assert_eq!(report["verdict"], "call_paths_exist");
    for kind in ["turn/udp", "turn/tcp", "turn/tls"] {
        let check = turn(&report, kind);
        assert_eq!(check["ok"], true, "{kind}: {check:#}\n{}", relay.output());
        assert_eq!(check["allocated"], true, "{kind}: {check:#}");
        assert_eq!(check["relay_test"], "two_allocations", "{kind}: {check:#}");
        assert!(
            check["relay_round_trip_ms"].as_f64().is_some(),
            "{kind}: {check:#}"
        );
        // The relayed address is the public one, where the relay's sockets really are.
        let relayed = check["relayed_address"].as_str().unwrap();
        assert!(
            relayed.starts_with(&format!("{}:", public_address())),
            "{kind}: {check:#}"
        );
    }
    assert!(
        table.contains("TURN/UDP yes, TURN/TCP yes, TURN/TLS yes"),
        "{table}"
    );

    // Relayed sockets that cannot reach their own public address: the two-allocation test
    // fails, a datagram to our own address and back shows the relay works.
    topology.internet.nft(NO_HAIRPIN).expect("nftables");
    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}\n{table}");
    for kind in ["turn/udp", "turn/tcp", "turn/tls"] {
        let check = turn(&report, kind);
        assert_eq!(check["ok"], true, "{kind}: {check:#}");
        assert_eq!(check["relay_test"], "own_address", "{kind}: {check:#}");
    }
    assert!(table.contains("(to our own address)"), "{table}");
    topology
        .internet
        .nft("delete table inet no_hairpin\n")
        .expect("nftables");

    // Now the relay host drops everything its relayed sockets send: it still allocates.
    topology
        .internet
        .nft(DROP_RELAYED)
        .expect("nftables in the relay's namespace");
    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(5), "{report:#}\n{table}");
    assert_eq!(report["verdict"], "no_media_path");
    for kind in ["turn/udp", "turn/tcp", "turn/tls"] {
        let check = turn(&report, kind);
        assert_eq!(check["allocated"], true, "{kind}: {check:#}");
        assert_eq!(check["ok"], false, "{kind}: {check:#}");
        assert_eq!(check["error_kind"], "not_relayed", "{kind}: {check:#}");
        // Both ways were tried.
        let detail = check["relay_test_detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("through our own address"),
            "{kind}: {check:#}"
        );
    }
    // UDP itself still reaches the server (the binding is answered from port 3478).
    assert_eq!(report["paths"]["direct_udp"], true, "{report:#}");
    assert!(
        table.contains("TURN/UDP no, TURN/TCP no, TURN/TLS no"),
        "{table}"
    );
    assert!(table.contains("relayed nothing"), "{table}");
    assert!(!table.contains("calls can be made"), "{table}");
}

/// The censor namespace as a NAT router for the client: `masquerade` keeps the client's
/// source port for every destination (endpoint-independent), `masquerade random` picks a new
/// one per destination (a symmetric NAT).
fn nat(topology: &Topology, how: &str) {
    topology
        .censor
        .nft(&format!(
            "table ip client_nat {{\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority 100; policy accept;\n\
                 oifname \"{}\" {how}\n\
               }}\n\
             }}\n",
            topology.censor_uplink
        ))
        .expect("NAT in the router");
}

#[test]
fn check_tells_an_endpoint_independent_nat_from_a_symmetric_one() {
    let topology = Topology::new(2).expect("namespaces (needs root)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestCa::for_names(&[public_address()]);
    // A second STUN server address: another relay-lite's TURN/UDP listener on the second
    // internet address (another port: the first listens on 0.0.0.0:3478), named by the
    // first relay's --stun-url.
    let second = internet_host(1);
    let other_dir = dir.path().join("second");
    std::fs::create_dir_all(&other_dir).unwrap();
    let mut command = tool(&topology.internet, "relay-lite").expect("relay-lite binary");
    command
        .args(["--listen", &format!("{second}:8443")])
        .args(["--turn-listen-udp", &format!("{second}:3479")])
        .arg("--turn-secret-file")
        .arg(write_turn_secret(&other_dir).unwrap());
    let _stun = wait_listening(ChildProcess::spawn("second relay-lite", command).unwrap());
    let stun_url = format!("stun:{second}:3479");
    let _relay = start_relay(&topology, &pki, dir.path(), &["--stun-url", &stun_url]);

    // No NAT: both servers see the client's own address.
    let (code, report, _) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}");
    let mapping = &report["network"]["mapping"];
    assert_eq!(mapping["endpoint_independent"], "yes", "{mapping:#}");
    let observations = mapping["observations"].as_array().unwrap();
    assert_eq!(observations.len(), 2, "{mapping:#}");
    for observation in observations {
        let mapped = observation["mapped_address"].as_str().unwrap();
        assert!(mapped.starts_with("10.77.1.2:"), "{mapping:#}");
    }

    // A port-preserving NAT: the router's address, the same for both servers.
    nat(&topology, "masquerade");
    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}");
    let mapping = &report["network"]["mapping"];
    assert_eq!(mapping["endpoint_independent"], "yes", "{mapping:#}");
    let mapped = mapping["observations"][0]["mapped_address"]
        .as_str()
        .unwrap();
    assert!(mapped.starts_with("10.77.2.1:"), "{mapping:#}");
    assert!(table.contains("NAT mapping         yes"), "{table}");

    // A symmetric NAT: another mapped port per server. TURN still relays through it.
    topology
        .censor
        .nft("flush table ip client_nat\ndelete table ip client_nat\n")
        .unwrap();
    nat(&topology, "masquerade random");
    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}");
    let mapping = &report["network"]["mapping"];
    assert_eq!(mapping["endpoint_independent"], "no", "{mapping:#}");
    assert_ne!(
        mapping["observations"][0]["mapped_address"], mapping["observations"][1]["mapped_address"],
        "{mapping:#}"
    );
    assert!(table.contains("NAT mapping         no"), "{table}");
    assert_eq!(turn(&report, "turn/udp")["ok"], true, "{report:#}");
}
