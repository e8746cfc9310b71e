//! relay-lite as an operator deploys it from the relay-lite README: listeners on every interface,
//! the server's public address given once (`--turn-external-ip`), no `--turn-relay-ip` and no
//! `--turn-url`, registered with a registry, TLS on the signaling port and on TURN. It runs in
//! the internet namespace of the censorship topology, where its public address is 10.77.2.10
//! (not loopback); the caller sits behind the router in its own namespace, the answerer on a host
//! of its own. Calls are forced through the relay's TURN server (`--relay-only`) over UDP, TCP and
//! TLS in turn: media must flow both ways through a relayed address the relay really serves.
//!
//! Before this test, relay-lite's relayed sockets defaulted to 127.0.0.1 while it advertised its
//! public address, so exactly this call failed ("ICE failed before the call connected"). The
//! second test shows that mistake is now refused at start with a reason.
//!
//! Needs root (network namespaces); CI runs as root. Everything stays inside namespaces the
//! test creates, removed (with the processes in them) when it ends, also on failure.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::censorship_world::{
    operator_relay_command, run_to_end, start_registry, tool, write_turn_secret, RegistryAdmission,
    REGISTRY_PORT,
};
use tests::netns::{internet_host, Topology};
use tests::process::ChildProcess;
use tests::test_ca::TestCa;

/// The answerer's pairing code.
const CODE: &str = "VPSK7Q";

/// The test network's "public" address is private (10.77.2.10), which discovery refuses by
/// default; no cache file, identity or contact list is read or written.
const PRIVATE_NETWORK_FLAGS: [&str; 3] = ["--allow-private", "--no-cache", "--ephemeral-identity"];

/// The pieces of the deployment, dropped processes first, namespaces last.
struct Deployment {
    answerer: ChildProcess,
    relay: ChildProcess,
    _registry: ChildProcess,
    pki: TestCa,
    _dir: tempfile::TempDir,
    topology: Topology,
}

fn public_address() -> String {
    internet_host(0).to_string()
}

fn endpoint() -> String {
    format!("wss://{}", public_address())
}

/// The README's VPS command, with this test's files and addresses, registered with the
/// test's registry.
fn readme_relay_command(
    topology: &Topology,
    pki: &TestCa,
    dir: &Path,
    secret: &Path,
) -> std::process::Command {
    let registry = format!("http://{}:{REGISTRY_PORT}", public_address());
    let mut command =
        operator_relay_command(&topology.internet, pki, internet_host(0), dir, secret)
            .expect("relay-lite binary");
    command.args(["--bootstrap", &registry, "--region", "test"]);
    command
}

fn deploy() -> Deployment {
    let topology = Topology::new(1).expect("namespaces (needs root)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestCa::for_names(&[public_address()]);
    let registry_key = zajel_client_net::keyfile::random_key().expect("registry key");
    let registry = start_registry(
        &topology.internet,
        &dir.path().join("registry"),
        &registry_key,
        internet_host(0),
        RegistryAdmission::Checked {
            ca_file: &pki.ca_file,
        },
    )
    .expect("registry");
    let secret = write_turn_secret(dir.path()).expect("TURN secret");
    let mut relay = ChildProcess::spawn(
        "relay-lite (README flags)",
        readme_relay_command(&topology, &pki, dir.path(), &secret),
    )
    .expect("start relay-lite");
    relay
        .wait_for(Duration::from_secs(20), |line| {
            line.starts_with("listening on ").then_some(())
        })
        .expect("relay-lite listening");
    let mut command = tool(&topology.callee, "call-probe").expect("call-probe binary");
    command
        .args(["answer", "--code", CODE, "--server", &endpoint(), "--json"])
        .args(PRIVATE_NETWORK_FLAGS)
        .arg("--no-qr")
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .args(["--step-timeout", "20"]);
    let mut answerer = ChildProcess::spawn("call-probe answer", command).expect("answerer");
    answerer
        .wait_for(Duration::from_secs(20), |line| {
            line.contains(CODE).then_some(())
        })
        .expect("answerer registered");
    Deployment {
        answerer,
        relay,
        _registry: registry,
        pki,
        _dir: dir,
        topology,
    }
}

/// One relay-only call from the client namespace over `transport`; its JSON report.
fn relayed_call(deployment: &Deployment, transport: &str) -> Result<Value, String> {
    let mut command = tool(&deployment.topology.client, "call-probe")?;
    command
        .args(["call", CODE, "--server", &endpoint()])
        .args(PRIVATE_NETWORK_FLAGS)
        .arg("--ca-file")
        .arg(&deployment.pki.ca_file)
        .args(["--relay-only", "--turn-transport", transport])
        .args(["--duration", "2", "--step-timeout", "20", "--json"]);
    let finished = run_to_end(command, Duration::from_secs(90))?;
    let explain = || {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}\nrelay:\n{}\nanswerer:\n{}",
            finished.code,
            finished.stdout,
            finished.stderr,
            deployment.relay.output(),
            deployment.answerer.output()
        )
    };
    let json: Value = serde_json::from_str(&finished.stdout)
        .map_err(|e| format!("not JSON ({e}): {}", explain()))?;
    if finished.code != Some(0) {
        return Err(format!("the call failed: {}", explain()));
    }
    Ok(json["call"].clone())
}

#[test]
fn a_relay_deployed_as_the_readme_says_relays_calls_over_udp_tcp_and_tls() {
    let deployment = deploy();
    for transport in ["udp", "tcp", "tls"] {
        let call =
            relayed_call(&deployment, transport).unwrap_or_else(|e| panic!("{transport}: {e}"));
        assert_eq!(call["media_both_ways"], true, "{transport}: {call:#}");
        assert_eq!(call["relayed_media"], transport, "{transport}: {call:#}");
        // Our end of the media is the relayed address the relay advertised: its public
        // address, where its relayed socket really listens.
        let local = &call["call"]["ice"]["selected_pair"]["local"];
        assert_eq!(local["kind"], "relay", "{transport}: {local:#}");
        assert_eq!(local["address"], public_address(), "{transport}: {local:#}");
    }
}

#[test]
fn relay_sockets_on_loopback_behind_a_public_address_are_refused_at_start() {
    let topology = Topology::new(1).expect("namespaces (needs root)");
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestCa::for_names(&[public_address()]);
    let secret = write_turn_secret(dir.path()).expect("TURN secret");
    // The measured mistake: the README's flags plus relay sockets on loopback.
    let mut command = readme_relay_command(&topology, &pki, dir.path(), &secret);
    command.args(["--turn-relay-ip", "127.0.0.1"]);
    let finished = run_to_end(command, Duration::from_secs(20)).expect("relay-lite ends");
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("loopback") && finished.stderr.contains(&public_address()),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stdout.contains("listening on"),
        "{}",
        finished.stdout
    );
}
