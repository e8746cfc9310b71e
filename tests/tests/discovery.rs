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

/// Runs a discovery to the end and returns its report.
async fn run_to_end(config: discovery_client::Config) -> discovery_client::Report {
    Discovery::new(config).unwrap().run().finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_alone_finds_the_verified_server_and_caches_it() {
    let world = DiscoveryWorld::new().await;
    let cache = world.cache_path("cache.json");
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    config.store_path = Some(cache.clone());
    let report = run_to_end(config).await;
    assert_eq!(report.verdict, Verdict::Verified);
    assert!(report.complete);
    let registry = report.layer(Layer::Registry).unwrap();
    assert_eq!(registry.outcome, Outcome::Ok, "{registry:?}");
    assert_eq!(registry.candidates, 1);
    let candidate = report
        .candidate(&world.relay.url)
        .expect("the relay is a candidate");
    assert_eq!(candidate.outcome, Outcome::Ok);
    assert!(candidate.verified);
    assert!(candidate.rtt_ms.is_some());
    assert_eq!(
        candidate.announced_server_id.as_deref(),
        Some(world.relay.server_id.as_str())
    );
    assert!(world.relay.pongs.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // The server that answered is in the cache, verified.
    let (data, warnings) = Store::new(&cache).load(discovery_client::now_ms());
    assert!(warnings.is_empty());
    assert_eq!(data.servers.len(), 1);
    assert_eq!(data.servers[0].url, world.relay.url);
    assert!(data.servers[0].verified);
    // The report serialises (what --json prints).
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "verified");
    assert_eq!(json["layers"][0]["layer"], "registry");
}

/// A cache holding the relay as a verified server (what an earlier run leaves).
fn seeded_cache(world: &DiscoveryWorld, name: &str) -> std::path::PathBuf {
    let path = world.cache_path(name);
    let now = discovery_client::now_ms();
    Store::new(&path)
        .update(now, |data| {
            data.record_ok(
                &world.relay.url,
                true,
                Some(world.relay.server_id.clone()),
                Some(1.0),
                now,
            )
        })
        .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refused_is_reported_and_the_cache_still_finds_a_verified_server() {
    let world = DiscoveryWorld::new().await;
    let mut config = world.config();
    let refused = blackhole::refused_address();
    config.registries = vec![Url::parse(&format!("http://{refused}")).unwrap()];
    config.store_path = Some(seeded_cache(&world, "cache.json"));
    let report = run_to_end(config).await;
    let registry = report.layer(Layer::Registry).unwrap();
    assert_eq!(registry.outcome, Outcome::Refused, "{registry:?}");
    assert_eq!(report.layer(Layer::Cache).unwrap().outcome, Outcome::Ok);
    assert_eq!(report.verdict, Verdict::Verified);
    assert_eq!(report.best.unwrap().sources, vec![Layer::Cache]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_registries_time_out_while_the_cache_answers_at_once() {
    let world = DiscoveryWorld::new().await;
    let silent = AcceptsSilently::start();
    let never = NeverAccepts::start();
    let mut config = world.config();
    config.registries = vec![
        Url::parse(&format!("http://{}", silent.address)).unwrap(),
        Url::parse(&format!("http://{}", never.address)).unwrap(),
    ];
    config.layer_timeout = Duration::from_millis(800);
    config.store_path = Some(seeded_cache(&world, "cache.json"));
    let discovery = Discovery::new(config).unwrap();
    // The first verified server comes from the cache without waiting for the registry.
    let (best, snapshot) = discovery.best_within(Duration::from_secs(10)).await;
    assert_eq!(best.expect("a server").url, world.relay.url);
    let first = snapshot.first_verified_ms.expect("time to first verified");
    assert!(snapshot.layer(Layer::Registry).unwrap().outcome == Outcome::Pending || first < 800.0);
    // Run to the end: both registries are reported as timed out.
    let report = discovery.run().finish().await;
    let registry = report.layer(Layer::Registry).unwrap();
    assert_eq!(registry.outcome, Outcome::TimedOut, "{registry:?}");
    assert_eq!(registry.sources.len(), 2);
    assert!(
        registry
            .sources
            .iter()
            .all(|s| s.outcome == Outcome::TimedOut),
        "{registry:?}"
    );
    assert_eq!(report.verdict, Verdict::Verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_signed_by_another_key_is_refused_and_never_used() {
    let world = DiscoveryWorld::new().await;
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    // Pin a different key: the registry's genuine signature no longer counts.
    config.registry_keys = vec![registry_host::random_key().verifying_key()];
    let report = run_to_end(config).await;
    let registry = report.layer(Layer::Registry).unwrap();
    assert_eq!(registry.outcome, Outcome::InvalidSignature, "{registry:?}");
    assert_eq!(registry.candidates, 0);
    assert!(report.candidates.is_empty());
    assert_eq!(report.verdict, Verdict::Nothing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_serving_forged_records_adds_no_server() {
    let world = DiscoveryWorld::new().await;
    // A resolver injecting records signed by its own key, for a server of its choosing.
    let attacker = registry_host::random_key();
    let evil = tests::ws_echo::WsEcho::start("ed25519:evil");
    world
        .register(&registry_host::random_key(), &evil.url)
        .await;
    let forged = world.publish_with(&attacker).await;
    assert!(forged.iter().any(|r| r.endpoint == evil.url));
    let doh = world.start_doh(&DiscoveryWorld::zone_lines(&forged));
    let mut config = world.config();
    config.doh_servers = vec![DiscoveryWorld::doh_server(&doh)];
    config.domains = vec![DOMAIN.into()];
    let report = run_to_end(config).await;
    let layer = report.layer(Layer::Doh).unwrap();
    assert_eq!(layer.outcome, Outcome::InvalidSignature, "{layer:?}");
    assert_eq!(layer.sources[0].refused.len(), forged.len());
    assert!(report.candidates.is_empty(), "{:?}", report.candidates);
    assert_eq!(evil.pongs.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(report.verdict, Verdict::Nothing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_truncated_mid_write_is_moved_aside_and_rewritten() {
    let world = DiscoveryWorld::new().await;
    let cache = seeded_cache(&world, "cache.json");
    let full = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &full[..full.len() / 2]).unwrap();
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    config.store_path = Some(cache.clone());
    let report = run_to_end(config).await;
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("moved aside"));
    let cache_layer = report.layer(Layer::Cache).unwrap();
    assert_eq!(cache_layer.outcome, Outcome::Empty);
    assert!(
        cache_layer.detail.contains("moved aside"),
        "{cache_layer:?}"
    );
    assert_eq!(report.verdict, Verdict::Verified);
    // The damaged file was kept aside, and a good cache written in its place.
    let aside: Vec<_> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cache.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    let (data, warnings) = Store::new(&cache).load(discovery_client::now_ms());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(data.servers[0].url, world.relay.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qr_code_through_png_leads_to_an_unverified_server() {
    let world = DiscoveryWorld::new().await;
    let link = ShareLink::new(
        PairingCode::parse("QRC234").unwrap(),
        std::slice::from_ref(&world.relay.url),
        Some(&world.registry_key.verifying_key()),
    )
    .unwrap();
    let png = world.dir.path().join("share.png");
    share::write_png(&link.to_uri(), &png).unwrap();
    let text = share::decode_image_file(&png).unwrap();
    assert_eq!(ShareLink::parse(&text).unwrap(), link);
    let mut config = world.config();
    config.share_links = vec![text];
    let report = run_to_end(config).await;
    let qr = report.layer(Layer::Qr).unwrap();
    assert_eq!(qr.outcome, Outcome::Ok);
    assert!(
        qr.sources[0].detail.contains("registry key matches"),
        "{qr:?}"
    );
    assert_eq!(report.verdict, Verdict::UnverifiedOnly);
    assert!(!report.best.unwrap().verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_urls_are_validated_and_private_addresses_refused_unless_allowed() {
    let world = DiscoveryWorld::new().await;
    let mut config = world.config();
    config.allow_private = false;
    config.manual = vec![world.relay.url.clone(), "ftp://nope.example".into()];
    let report = run_to_end(config.clone()).await;
    let manual = report.layer(Layer::Manual).unwrap();
    assert_eq!(manual.outcome, Outcome::Ok);
    assert!(manual.sources.iter().any(|s| s.outcome == Outcome::Invalid));
    assert_eq!(
        report.candidate(&world.relay.url).unwrap().outcome,
        Outcome::PrivateAddress
    );
    assert_eq!(
        world.relay.pongs.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(report.verdict, Verdict::Nothing);
    config.allow_private = true;
    let report = run_to_end(config).await;
    assert_eq!(report.verdict, Verdict::UnverifiedOnly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrals_from_contacts_are_candidates_marked_unverified() {
    let world = DiscoveryWorld::new().await;
    let cache = world.cache_path("cache.json");
    let now = discovery_client::now_ms();
    Store::new(&cache)
        .update(now, |data| {
            data.add_referral(&world.relay.url, PairingCode::parse("FRD234").unwrap(), now)
        })
        .unwrap();
    let mut config = world.config();
    config.store_path = Some(cache);
    config.write_cache = false;
    let report = run_to_end(config).await;
    let referral = report.layer(Layer::Referral).unwrap();
    assert_eq!(referral.outcome, Outcome::Ok);
    assert!(referral.sources[0].detail.contains("FRD234"));
    assert_eq!(report.verdict, Verdict::UnverifiedOnly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_layers_together_merge_into_one_verified_candidate() {
    let world = DiscoveryWorld::new().await;
    let records = world.publish_with(&world.registry_key).await;
    let doh = world.start_doh(&DiscoveryWorld::zone_lines(&records));
    let cache = seeded_cache(&world, "cache.json");
    let now = discovery_client::now_ms();
    Store::new(&cache)
        .update(now, |d| {
            d.add_referral(&world.relay.url, PairingCode::parse("ALL234").unwrap(), now)
        })
        .unwrap();
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    config.doh_servers = vec![DiscoveryWorld::doh_server(&doh), doh.url.parse().unwrap()];
    config.domains = vec![DOMAIN.into()];
    config.store_path = Some(cache);
    config.share_links = vec![ShareLink::new(
        PairingCode::parse("ALL234").unwrap(),
        std::slice::from_ref(&world.relay.url),
        None,
    )
    .unwrap()
    .to_uri()];
    config.manual = vec![world.relay.url.clone()];
    let mut run = Discovery::new(config).unwrap().run();
    let mut usable_seen = false;
    let mut finished = None;
    while let Some(event) = run.next_event().await {
        match event {
            Event::Usable(c) => {
                assert_eq!(c.url, world.relay.url);
                usable_seen = true;
            }
            Event::Finished(report) => finished = Some(*report),
            _ => {}
        }
    }
    assert!(usable_seen);
    let report = finished.expect("finished");
    for layer in Layer::ALL {
        assert_eq!(
            report.layer(layer).unwrap().outcome,
            Outcome::Ok,
            "{layer}: {:?}",
            report.layer(layer)
        );
    }
    // Six sources, one server: one candidate, checked once.
    assert_eq!(report.candidates.len(), 1, "{:?}", report.candidates);
    let candidate = &report.candidates[0];
    assert!(candidate.verified);
    assert_eq!(candidate.sources.len(), 6, "{:?}", candidate.sources);
    assert_eq!(report.layer(Layer::Doh).unwrap().sources.len(), 2);
    assert_eq!(report.verdict, Verdict::Verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exit_codes_tell_verified_from_unverified_from_nothing() {
    let world = DiscoveryWorld::new().await;
    let cache = world.cache_path("cli.json");
    let cache = cache.to_str().unwrap();
    let key = world.registry_key_base64();
    let (code, out, err) = cli(&[
        "discover",
        "--registry",
        &world.registry.base_url,
        "--registry-key",
        &key,
        "--cache-file",
        cache,
        "--allow-private",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["verdict"], "verified");
    assert_eq!(report["best"]["url"], world.relay.url.as_str());
    let (code, out, _) = cli(&["cache", "list", "--cache-file", cache]);
    assert_eq!(code, 0);
    assert!(out.contains(&world.relay.url));
    let (code, _, _) = cli(&["cache", "clear", "--cache-file", cache]);
    assert_eq!(code, 0);
    let (code, out, err) = cli(&[
        "discover",
        "--server",
        &world.relay.url,
        "--cache-file",
        cache,
        "--allow-private",
    ]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(out.contains("unverified"), "{out}");
    let refused = blackhole::refused_address();
    let (code, out, err) = cli(&[
        "discover",
        "--registry",
        &format!("http://{refused}"),
        "--registry-key",
        &key,
        "--no-cache",
        "--allow-private",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("refused"), "{out}");
    let (code, _, err) = cli(&["discover", "--registry-key", "not-a-key", "--no-cache"]);
    assert_eq!(code, 1);
    assert!(err.contains("--registry-key"), "{err}");
    // Referrals through the CLI.
    let link = format!(
        "zajel://REF234?server={}",
        zajel_wire::pairing::percent_encode(&world.relay.url)
    );
    let (code, _, err) = cli(&["referral", "add", &link, "--cache-file", cache]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["referral", "list", "--cache-file", cache]);
    assert_eq!(code, 0);
    assert!(out.contains("REF234"), "{out}");
    // Publishing a list signed by another key is refused.
    let other = tempfile::tempdir().unwrap();
    let other_key = registry_host::write_key_file(other.path(), &registry_host::random_key());
    let (code, _, err) = cli(&[
        "txt",
        "publish",
        "--registry",
        &world.registry.base_url,
        "--key-file",
        other_key.to_str().unwrap(),
        "--domain",
        DOMAIN,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid signature"), "{err}");
    // JSON output for DNS provider APIs.
    let key_file = world.key_file();
    let (code, out, err) = cli(&[
        "txt",
        "publish",
        "--registry",
        &world.registry.base_url,
        "--key-file",
        key_file.to_str().unwrap(),
        "--domain",
        DOMAIN,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(records[0]["name"], "_zajel.zajel.test");
    assert_eq!(records[0]["type"], "TXT");
    let _ = txt::MAX_STRING_BYTES;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_servers_are_checked_over_tls_and_an_untrusted_certificate_fails() {
    let world = DiscoveryWorld::new().await;
    let server_key = registry_host::random_key();
    let secure =
        tests::ws_echo::WsEcho::start_tls(&server_key, world.ca.server_config(&[b"http/1.1"]));
    assert!(secure.url.starts_with("wss://localhost:"));
    world.register(&server_key, &secure.url).await;
    let mut config = world.config();
    config.registries = vec![world.registry_url()];
    let report = run_to_end(config.clone()).await;
    let checked = report.candidate(&secure.url).expect("wss candidate");
    assert_eq!(checked.outcome, Outcome::Ok, "{checked:?}");
    assert!(checked.verified);
    // Without the test CA the certificate is not trusted.
    config.extra_roots.clear();
    let report = run_to_end(config).await;
    let checked = report.candidate(&secure.url).expect("wss candidate");
    assert_eq!(checked.outcome, Outcome::TlsFailure, "{checked:?}");
    assert_eq!(secure.pongs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_failures_are_told_apart_blackholed_untrusted_and_stale() {
    let world = DiscoveryWorld::new().await;
    // Records that expired a minute ago, signed with the right key.
    let body = reqwest::get(world.registry.url("/servers"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let list: zajel_wire::entry::ServerList = serde_json::from_slice(&body).unwrap();
    let expired = txt::build_records(
        &world.registry_key,
        DOMAIN,
        &list.servers,
        60,
        discovery_client::now_ms() / 1000 - 60,
    )
    .unwrap();
    let doh = world.start_doh(&DiscoveryWorld::zone_lines(&expired));
    let silent = AcceptsSilently::start();
    let mut config = world.config();
    config.layer_timeout = Duration::from_millis(700);
    config.domains = vec![DOMAIN.into()];
    config.doh_servers = vec![
        DiscoveryWorld::doh_server(&doh),
        format!(
            "https://localhost:{}/dns-query,ip=127.0.0.1",
            silent.address.port()
        )
        .parse()
        .unwrap(),
    ];
    let report = run_to_end(config.clone()).await;
    let layer = report.layer(Layer::Doh).unwrap();
    let outcome_of = |port: u16| {
        layer
            .sources
            .iter()
            .find(|s| s.source.contains(&format!(":{port}/")))
            .map(|s| s.outcome)
    };
    assert_eq!(outcome_of(doh.port), Some(Outcome::Stale), "{layer:?}");
    assert_eq!(
        outcome_of(silent.address.port()),
        Some(Outcome::TimedOut),
        "{layer:?}"
    );
    assert_eq!(layer.outcome, Outcome::Stale);
    assert!(report.candidates.is_empty());
    // The same resolver without the test CA: a TLS failure.
    config.extra_roots.clear();
    config.doh_servers.truncate(1);
    let report = run_to_end(config).await;
    let layer = report.layer(Layer::Doh).unwrap();
    assert_eq!(layer.outcome, Outcome::TlsFailure, "{layer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_hickory_doh_server_serves_published_records_too() {
    let world = DiscoveryWorld::new().await;
    let records = world.publish_with(&world.registry_key).await;
    let doh = tests::doh_inprocess::InProcessDoh::start(
        &world.ca,
        DOMAIN,
        &records
            .iter()
            .map(|r| (r.name.clone(), r.strings.clone()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut config = world.config();
    config.doh_servers = vec![format!("{},ip=127.0.0.1", doh.url).parse().unwrap()];
    config.domains = vec![DOMAIN.into()];
    let report = run_to_end(config).await;
    assert_eq!(
        report.layer(Layer::Doh).unwrap().outcome,
        Outcome::Ok,
        "{:?}",
        report.layer(Layer::Doh)
    );
    assert_eq!(report.verdict, Verdict::Verified);
    assert_eq!(report.best.unwrap().url, world.relay.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_at_once_still_finds_a_verified_server_and_says_why_each_failed() {
    let world = DiscoveryWorld::new().await;
    // A registry listing the relay but signing with a key nobody pinned.
    let impostor = registry_host::start_in_process(registry_host::Profile::SIGNED);
    let evil = tests::ws_echo::WsEcho::start("ed25519:evil");
    let request = zajel_wire::entry::RegisterRequest::signed(
        &registry_host::random_key(),
        &evil.url,
        None,
        discovery_client::now_ms(),
    );
    let status = reqwest::Client::new()
        .post(impostor.url("/servers"))
        .header("content-type", "application/json")
        .body(serde_json::to_string(&request).unwrap())
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
    let silent = AcceptsSilently::start();
    let never = NeverAccepts::start();
    let refused = blackhole::refused_address();
    // One resolver serves forged records, another the genuine ones.
    let forged = world.publish_with(&registry_host::random_key()).await;
    let forged_doh = world.start_doh(&DiscoveryWorld::zone_lines(&forged));
    let genuine = world.publish_with(&world.registry_key).await;
    let genuine_doh = world.start_doh(&DiscoveryWorld::zone_lines(&genuine));
    // A cache truncated mid-write.
    let cache = seeded_cache(&world, "cache.json");
    let full = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &full[..full.len() - 7]).unwrap();
    let doh_spec = |port: u16| format!("https://localhost:{port}/dns-query,ip=127.0.0.1");
    let ca = world.ca.ca_file.to_str().unwrap().to_string();
    let args: Vec<String> = [
        "discover",
        "--registry",
        &impostor.base_url,
        "--registry",
        &format!("http://{}", silent.address),
        "--registry",
        &format!("http://{}", never.address),
        "--registry",
        &format!("http://{refused}"),
        "--registry-key",
        &world.registry_key_base64(),
        "--doh",
        &doh_spec(forged_doh.port),
        "--doh",
        &doh_spec(genuine_doh.port),
        "--domain",
        DOMAIN,
        "--ca-file",
        &ca,
        "--cache-file",
        cache.to_str().unwrap(),
        "--allow-private",
        "--layer-timeout-ms",
        "800",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verdict"], "verified");
    assert_eq!(report["best"]["url"], world.relay.url.as_str());
    let layer = |name: &str| {
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .unwrap()
            .clone()
    };
    let source_outcome = |layer: &serde_json::Value, needle: &str| {
        layer["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"].as_str().unwrap().contains(needle))
            .map(|s| s["outcome"].as_str().unwrap().to_string())
    };
    let registry = layer("registry");
    assert_eq!(registry["outcome"], "invalid_signature", "{registry}");
    let impostor_host = impostor.base_url.trim_start_matches("http://").to_string();
    assert_eq!(
        source_outcome(&registry, &impostor_host).as_deref(),
        Some("invalid_signature")
    );
    assert_eq!(
        source_outcome(&registry, &silent.address.to_string()).as_deref(),
        Some("timed_out")
    );
    assert_eq!(
        source_outcome(&registry, &never.address.to_string()).as_deref(),
        Some("timed_out")
    );
    assert_eq!(
        source_outcome(&registry, &refused.to_string()).as_deref(),
        Some("refused")
    );
    let doh = layer("doh");
    assert_eq!(doh["outcome"], "ok");
    assert_eq!(
        source_outcome(&doh, &format!(":{}/", forged_doh.port)).as_deref(),
        Some("invalid_signature")
    );
    assert_eq!(
        source_outcome(&doh, &format!(":{}/", genuine_doh.port)).as_deref(),
        Some("ok")
    );
    let cache_layer = layer("cache");
    assert_eq!(cache_layer["outcome"], "empty");
    assert!(
        cache_layer["detail"]
            .as_str()
            .unwrap()
            .contains("moved aside"),
        "{cache_layer}"
    );
    assert_eq!(
        report["candidates"].as_array().unwrap().len(),
        1,
        "{}",
        report["candidates"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_first_returns_at_the_first_verified_server_with_the_rest_pending() {
    let world = DiscoveryWorld::new().await;
    let silent = AcceptsSilently::start();
    let key = world.registry_key_base64();
    let cache = world.cache_path("first.json");
    let silent_url = format!("http://{}", silent.address);
    let args = |json: bool| {
        let mut args = vec![
            "discover".to_string(),
            "--registry".into(),
            world.registry.base_url.clone(),
            "--registry".into(),
            silent_url.clone(),
            "--registry-key".into(),
            key.clone(),
            "--cache-file".into(),
            cache.to_str().unwrap().into(),
            "--allow-private".into(),
            // The silent registry would hold a full run for 30 s.
            "--layer-timeout-ms".into(),
            "30000".into(),
            "--first".into(),
        ];
        if json {
            args.push("--json".into());
        }
        args
    };
    let started = std::time::Instant::now();
    let json_args = args(true);
    let (code, out, err) = cli(&json_args.iter().map(String::as_str).collect::<Vec<_>>());
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["verdict"], "verified");
    assert_eq!(report["complete"], false);
    assert_eq!(report["best"]["url"], world.relay.url.as_str());
    let registry = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "registry")
        .expect("registry layer");
    // The silent registry is still running: named, pending.
    let sources = registry["sources"].as_array().unwrap();
    let silent_source = sources
        .iter()
        .find(|s| s["source"].as_str().unwrap().starts_with(&silent_url))
        .unwrap_or_else(|| panic!("the silent registry is listed: {registry:#}"));
    assert_eq!(silent_source["outcome"], "pending", "{registry:#}");

    let text_args = args(false);
    let (code, out, err) = cli(&text_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("stopped at the first verified server"),
        "{out}"
    );
    assert!(out.contains("pending"), "{out}");
}
