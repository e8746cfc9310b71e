//! `call-probe check` against relay-lite deployed with the README's TURN flags (listeners on
//! every interface, `--turn-external-ip` its public address 10.77.2.10, TLS on signaling and
//! TURN) in the internet namespace of the censorship topology, run from the client namespace
//! behind the router:
//!
//! 1. as deployed, every TURN transport (UDP, TCP, TLS) relays: `check` says yes to each with
//!    a relay round trip, and calls can be made;
//! 2. with the relay host's relayed traffic dropped by nftables (everything UDP it sends from
//!    a port other than its TURN listener's: allocations still succeed, nothing is relayed),
//!    `check` says no to each transport with the reason (`not_relayed`) and exits with "no
//!    media path" — before issue 15 it said "turn/udp yes … calls can be made" here.
//!
//! Needs root (network namespaces); CI runs as root. Everything stays inside namespaces the
//! test creates, removed (with the processes in them) when it ends, also on failure.

use std::time::Duration;

use serde_json::Value;
use tests::censorship_world::{run_to_end, tool};
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

fn public_address() -> String {
    internet_host(0).to_string()
}

fn endpoint() -> String {
    format!("wss://{}", public_address())
}

/// relay-lite with the README's TURN flags, in the internet namespace.
fn start_relay(topology: &Topology, pki: &TestCa, dir: &std::path::Path) -> ChildProcess {
    let secret = dir.join("turn.secret");
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("randomness");
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&secret, text).expect("write the TURN secret");
    let mut command = tool(&topology.internet, "relay-lite").expect("relay-lite binary");
    command
        .args(["--listen", "0.0.0.0:443"])
        .arg("--tls-cert")
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.key_file)
        .args(["--public-endpoint", &endpoint()])
        .arg("--identity")
        .arg(dir.join("identity.key"))
        .args([
            "--turn-listen-udp",
            "0.0.0.0:3478",
            "--turn-listen-tcp",
            "0.0.0.0:3478",
            "--turn-listen-tls",
            "0.0.0.0:5349",
        ])
        .arg("--turn-tls-cert")
        .arg(&pki.cert_file)
        .arg("--turn-tls-key")
        .arg(&pki.key_file)
        .args(["--turn-external-ip", &public_address()])
        .arg("--turn-secret-file")
        .arg(&secret);
    let mut relay = ChildProcess::spawn("relay-lite", command).expect("start relay-lite");
    relay
        .wait_for(Duration::from_secs(20), |line| {
            line.starts_with("listening on ").then_some(())
        })
        .expect("relay-lite listening");
    relay
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
    let relay = start_relay(&topology, &pki, dir.path());

    let (code, report, table) = check(&topology, &pki);
    assert_eq!(code, Some(0), "{report:#}\n{}", relay.output());
    assert_eq!(report["verdict"], "call_paths_exist");
    for kind in ["turn/udp", "turn/tcp", "turn/tls"] {
        let check = turn(&report, kind);
        assert_eq!(check["ok"], true, "{kind}: {check:#}\n{}", relay.output());
        assert_eq!(check["allocated"], true, "{kind}: {check:#}");
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

    // Now the relay host drops what its relayed sockets send: it still allocates.
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
