//! relay-lite beside Zajel's own server-vps in one fleet: server-vps learns
//! relay-lite from the registry's heartbeat and probes it with gossip `ping`
//! over a link only relay-lite can open (server-vps never dials registry
//! peers). With federation relay-lite stays `alive` in server-vps's view;
//! with `--no-federation` server-vps marks it `failed` after each heartbeat.
//!
//! Opt-in: Zajel's code is not in this repository and CI has no network to
//! fetch it. Set `ZAJEL_SERVER_VPS` to a checkout of
//! `Hamza-Labs-Core/zajel`'s `packages/server-vps` with `npm install` done
//! (it runs `node_modules/.bin/tsx src/index.ts`); without it the tests print
//! why and pass without running. Needs `cargo build -p relay-lite`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::process::ChildProcess;
use tests::registry_host::{self, Profile};
use tests::relay_child::RelayChild;

const WAIT: Duration = Duration::from_secs(30);

fn server_vps_dir() -> Option<PathBuf> {
    match std::env::var_os("ZAJEL_SERVER_VPS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("ZAJEL_SERVER_VPS is not set: not running Zajel's server-vps (see this file's docs)");
            None
        }
    }
}

/// server-vps on a free port, registered with `registry`, heartbeating every second.
fn server_vps(dir: &std::path::Path, registry: &str, data: &std::path::Path) -> ChildProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(dir.join("node_modules/.bin/tsx"));
    command
        .arg("src/index.ts")
        .current_dir(dir)
        .env("ZAJEL_HOST", "127.0.0.1")
        .env("ZAJEL_PORT", port.to_string())
        .env("ZAJEL_PUBLIC_ENDPOINT", format!("ws://127.0.0.1:{port}"))
        .env("ZAJEL_BOOTSTRAP_URL", registry)
        .env("ZAJEL_BOOTSTRAP_HEARTBEAT", "1000")
        .env("ZAJEL_KEY_PATH", data.join("server.key"))
        .env("ZAJEL_DB_PATH", data.join("zajel.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = ChildProcess::spawn("server-vps", command).expect("server-vps");
    process
        .wait_for(WAIT, |line| {
            line.contains("Federation started").then_some(())
        })
        .unwrap();
    process
}

/// Counts server-vps's heartbeats from now on until `count`, and says
/// whether it marked `server_id` failed meanwhile.
fn failed_within_heartbeats(vps: &mut ChildProcess, server_id: &str, count: usize) -> bool {
    let failed_line = format!("failed {{ serverId: '{server_id}'");
    let mut heartbeats = 0;
    let mut failed = false;
    while heartbeats < count {
        let line = vps
            .wait_for(WAIT, |line| {
                (line.contains("Heartbeat:") || line.contains(&failed_line))
                    .then(|| line.to_owned())
            })
            .unwrap();
        if line.contains(&failed_line) {
            failed = true;
        } else {
            heartbeats += 1;
        }
    }
    failed
}

#[test]
fn server_vps_keeps_a_federating_relay_lite_alive_and_fails_one_that_does_not() {
    let Some(dir) = server_vps_dir() else { return };
    // server-vps registers unsigned, as Zajel's registry takes it: an open registry.
    let registry = registry_host::start_in_process(Profile::OPEN);
    let data = tempfile::tempdir().unwrap();
    let mut vps = server_vps(&dir, &registry.base_url, data.path());

    let relay = RelayChild::start(
        &["--bootstrap", &registry.base_url, "--heartbeat-ms", "1000"],
        WAIT,
    )
    .expect("start relay-lite");
    let connected = format!("connected {{ serverId: '{}'", relay.server_id);
    vps.wait_for(WAIT, |line| line.contains(&connected).then_some(()))
        .unwrap();
    assert!(
        !failed_within_heartbeats(&mut vps, &relay.server_id, 10),
        "server-vps marked a federating relay-lite failed:\n{}",
        vps.output()
    );

    // The counterfactual: the same without federation is failed at once.
    let silent = RelayChild::start(
        &[
            "--bootstrap",
            &registry.base_url,
            "--heartbeat-ms",
            "1000",
            "--no-federation",
        ],
        WAIT,
    )
    .expect("start relay-lite");
    assert!(
        failed_within_heartbeats(&mut vps, &silent.server_id, 20),
        "server-vps never failed a relay-lite without federation:\n{}",
        vps.output()
    );
}
