//! Discovery end to end, on loopback only: every layer alone and all of them
//! together, against the native registry (in-process), a real DoH server
//! (Debian's unbound, as a child process) serving records made by
//! `txt publish`, and a stand-in signaling server (tests::ws_echo, until
//! relay-lite is wired in). Failure cases: registry refused, blackholed
//! (silent accept, never accepting), signed by another key; DoH serving
//! forged records; a truncated cache file; QR links through PNG.

use std::process::Command;
use std::time::Duration;

use discovery_client::discovery::{Discovery, Event};
use discovery_client::report::{Layer, Outcome, Verdict};
use discovery_client::share::{self, ShareLink};
use discovery_client::store::Store;
use discovery_client::txt;
use tests::blackhole::{self, AcceptsSilently, NeverAccepts};
use tests::discovery_world::{DiscoveryWorld, DOMAIN};
use tests::registry_host::{self, binary};
use url::Url;
use zajel_wire::pairing::PairingCode;

fn rt_flavor() {}

/// Runs `zajel-discover` with arguments; returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let path = binary("zajel-discover").expect("zajel-discover binary");
    let output = Command::new(path)
        .args(args)
        .output()
        .expect("run zajel-discover");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_records_are_served_by_a_real_doh_server_and_discovered() {
    rt_flavor();
    let world = DiscoveryWorld::new().await;
    // `txt publish` (the real CLI) signs the registry's list.
    let key_file = world.key_file();
    let (code, zone, stderr) = cli(&[
        "txt",
        "publish",
        "--registry",
        &world.registry.base_url,
        "--key-file",
        key_file.to_str().unwrap(),
        "--domain",
        DOMAIN,
    ]);
    assert_eq!(code, 0, "txt publish failed: {stderr}");
    let lines: Vec<String> = zone
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 1, "{zone}");
    assert!(lines[0].starts_with("_zajel.zajel.test. 300 IN TXT \"v=zajel1 "));
    let doh = world.start_doh(&lines);

    // An independent DoH client (kdig) reads the same record.
    let kdig = Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &doh.port.to_string(),
            "+https",
            &format!("+tls-ca={}", world.ca.ca_file.display()),
            "+tls-hostname=localhost",
            "+short",
            "_zajel.zajel.test",
            "TXT",
        ])
        .output()
        .expect("kdig (apt-get install knot-dnsutils)");
    let served = String::from_utf8_lossy(&kdig.stdout).into_owned();
    assert!(
        kdig.status.success(),
        "kdig: {served}{}",
        String::from_utf8_lossy(&kdig.stderr)
    );
    let published_content = lines[0].split_once(" IN TXT ").unwrap().1.to_string();
    assert_eq!(
        served.trim(),
        published_content.trim(),
        "unbound output:\n{}",
        doh.output()
    );

    // `txt verify` (CLI) says it verifies.
    let doh_spec = format!("https://localhost:{}/dns-query,ip=127.0.0.1", doh.port);
    let (code, out, err) = cli(&[
        "txt",
        "verify",
        "--domain",
        DOMAIN,
        "--doh",
        &doh_spec,
        "--registry-key",
        &world.registry_key_base64(),
        "--ca-file",
        world.ca.ca_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "txt verify: {out}{err}");
    assert!(out.contains(&world.relay.url), "{out}");

    // Discovery through DoH alone finds the relay, verified.
    let mut config = world.config();
    config.doh_servers = vec![DiscoveryWorld::doh_server(&doh)];
    config.domains = vec![DOMAIN.into()];
    let (best, report) = Discovery::new(config)
        .unwrap()
        .best_within(Duration::from_secs(5))
        .await;
    let best = best.expect("a server");
    assert_eq!(best.url, world.relay.url);
    assert!(best.verified);
    assert_eq!(best.sources, vec![Layer::Doh]);
    assert_eq!(report.layer(Layer::Doh).unwrap().outcome, Outcome::Ok);
    assert_eq!(
        report.layer(Layer::Registry).unwrap().outcome,
        Outcome::NotConfigured
    );
}
