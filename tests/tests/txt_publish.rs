//! Publishing the signed `_zajel` TXT set (issue 16) into a real
//! authoritative server, end to end on loopback: the native registry
//! (in-process) lists a server, `zajel-discover txt publish --rfc2136`
//! replaces the set in Knot (`knotd`, from Debian) by an RFC 2136 update
//! signed with TSIG, and unbound — a DoH front with a stub zone pointing at
//! Knot, caching nothing — serves it to the discovery DoH layer, which
//! verifies it. Also: `--dry-run` changes nothing; a wrong TSIG secret and a
//! key without update rights fail clearly and change nothing (read back from
//! Knot to prove it); a publisher racing another (its prerequisite on a set
//! that changed meanwhile) changes nothing; `--every` republishes a set
//! about to expire (10 s `exp`) at its half-life, skips an unchanged set
//! and publishes a changed one at the next check.
//!
//! Cloudflare's DNS API cannot be reached from here: its test runs against
//! a local stand-in (`tests::cloudflare_standin`, an in-process HTTP server
//! following the documented request and response shapes), reached through
//! `--cloudflare-api`; what it proves is the client's side of those shapes.
//!
//! Needs `knotd` and `unbound` (scripts/test installs them) and the built
//! binaries (`cargo build --workspace --bins`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use discovery_client::cloudflare::{self, ApiToken, CloudflareTarget};
use discovery_client::dns_update::{self, Rfc2136Target, ServedTxt, TsigKey};
use discovery_client::publish;
use discovery_client::txt;
use tests::cloudflare_standin::CloudflareStandIn;
use tests::discovery_world::{DiscoveryWorld, DOMAIN};
use tests::knot_auth::KnotAuth;
use tests::process::ChildProcess;
use tests::registry_host::{binary, random_key};
use tests::unbound_doh::UnboundDoh;

fn publish_command(
    world: &DiscoveryWorld,
    knot: &KnotAuth,
    tsig: &Path,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(binary("zajel-discover").expect("zajel-discover built"));
    command
        .args([
            "txt",
            "publish",
            "--registry",
            world.registry_url().as_str(),
        ])
        .arg("--key-file")
        .arg(world.key_file())
        .args(["--domain", DOMAIN, "--ttl", "1"])
        .args(["--rfc2136", &knot.address.to_string(), "--zone", DOMAIN])
        .arg("--tsig-key-file")
        .arg(tsig)
        .args(extra);
    command
}

async fn run(command: Command) -> Output {
    let mut command = command;
    tokio::task::spawn_blocking(move || command.output().expect("zajel-discover runs"))
        .await
        .expect("join")
}

/// What Knot serves now for `_zajel.<DOMAIN>` (read with the publisher key's connection, unsigned query).
async fn served(knot: &KnotAuth) -> Vec<ServedTxt> {
    let target = Rfc2136Target {
        server: knot.address,
        zone: DOMAIN.into(),
        key: TsigKey::from_file(&knot.publisher_key_file).expect("key"),
        timeout: Duration::from_secs(5),
    };
    dns_update::served(&target, &discovery_client::txt::record_name(DOMAIN))
        .await
        .expect("Knot answers")
}

/// How many records the DoH layer verifies through unbound, and the outcome.
async fn verified_through_doh(world: &DiscoveryWorld, doh: &UnboundDoh) -> usize {
    let tls =
        zajel_client_net::tls::client_config(std::slice::from_ref(&world.ca.ca_der)).expect("tls");
    let checks = publish::verify(
        DOMAIN,
        &[DiscoveryWorld::doh_server(doh)],
        &[world.registry_key.verifying_key()],
        &tls,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(checks.len(), 1);
    checks[0].verified
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_with_tsig_to_knot_is_served_through_doh_and_verified() {
    let world = DiscoveryWorld::new().await;
    let knot = KnotAuth::start(DOMAIN).expect("knotd");
    let doh = UnboundDoh::start_stub(&world.ca, DOMAIN, knot.address).expect("unbound");
    assert!(served(&knot).await.is_empty());
    assert_eq!(verified_through_doh(&world, &doh).await, 0);

    // --dry-run: shows the record it would add, sends nothing.
    let output = run(publish_command(
        &world,
        &knot,
        &knot.publisher_key_file,
        &["--dry-run"],
    ))
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("+ \"v=zajel1"), "{stdout}");
    assert!(stderr.contains("dry run: nothing sent"), "{stderr}");
    assert!(served(&knot).await.is_empty(), "a dry run changed the zone");

    // The update itself.
    let output = run(publish_command(
        &world,
        &knot,
        &knot.publisher_key_file,
        &[],
    ))
    .await;
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{stdout}{stderr}\n{}",
        knot.output()
    );
    assert!(
        stderr.contains("replaced by one RFC 2136 update (+1 -0 =0)"),
        "{stderr}"
    );
    let first = served(&knot).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(
        verified_through_doh(&world, &doh).await,
        1,
        "{}",
        doh.output()
    );

    // A wrong secret for the publisher's key name: a clear error, nothing
    // changed. (Another validity, so that there is a change to send.)
    let changed = ["--valid-hours", "71"];
    let output = run(publish_command(
        &world,
        &knot,
        &knot.wrong_key_file,
        &changed,
    ))
    .await;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("did not accept the signed update"),
        "{stderr}"
    );
    eprintln!("wrong secret: {stderr}");
    let secret = std::fs::read_to_string(&knot.wrong_key_file).unwrap();
    let secret = secret.trim().rsplit(':').next().unwrap();
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "secret logged"
    );
    assert_eq!(served(&knot).await, first);

    // A key Knot knows but that may not update: refused, nothing changed.
    let output = run(publish_command(
        &world,
        &knot,
        &knot.reader_key_file,
        &changed,
    ))
    .await;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}{stderr}");
    // Knot answers NOTAUTH, like for an unknown key: the client cannot tell them apart.
    assert!(
        stderr.contains("did not accept the signed update")
            || stderr.contains("refused the update"),
        "{stderr}"
    );
    eprintln!("refused key: {stderr}");
    assert_eq!(served(&knot).await, first);

    // Two publishers: one read `first`, another replaced the set meanwhile.
    // The first one's update, guarded by what it read, changes nothing.
    let output = run(publish_command(
        &world,
        &knot,
        &knot.publisher_key_file,
        &["--valid-hours", "70"],
    ))
    .await;
    assert!(output.status.success(), "{:?}", text(&output));
    let theirs = served(&knot).await;
    assert_ne!(theirs, first);
    let target = Rfc2136Target {
        server: knot.address,
        zone: DOMAIN.into(),
        key: TsigKey::from_file(&knot.publisher_key_file).expect("key"),
        timeout: Duration::from_secs(5),
    };
    let mine = world.publish_with(&world.registry_key).await;
    let mine: Vec<_> = mine
        .into_iter()
        .map(|mut r| {
            r.ttl = 1;
            r
        })
        .collect();
    let error = dns_update::replace_if_served(&target, &mine, &first)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "dns_update_raced", "{error}");
    assert_eq!(served(&knot).await, theirs);
    // Nor may a publisher that saw no set create one over theirs.
    let error = dns_update::replace_if_served(&target, &mine, &[])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), "dns_update_raced", "{error}");
    assert_eq!(served(&knot).await, theirs);

    // A second server registers: one update replaces the set with both.
    let second = random_key();
    world.register(&second, "wss://second.zajel.test:443").await;
    let output = run(publish_command(
        &world,
        &knot,
        &knot.publisher_key_file,
        &[],
    ))
    .await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("replaced by one RFC 2136 update"),
        "{stderr}"
    );
    let now = served(&knot).await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(verified_through_doh(&world, &doh).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_republishes_a_set_about_to_expire_at_its_half_life() {
    let world = DiscoveryWorld::new().await;
    let knot = KnotAuth::start(DOMAIN).expect("knotd");
    let doh = UnboundDoh::start_stub(&world.ca, DOMAIN, knot.address).expect("unbound");
    // Checks hourly, records valid 10 s: only the half-life rule can bring the
    // second publication within the test.
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("zajel-txt.prom");
    // The key as a BIND `key` clause here (the other test uses the knsupdate line).
    let mut command = publish_command(
        &world,
        &knot,
        &knot.publisher_bind_key_file,
        &["--every", "1h", "--valid-secs", "10"],
    );
    command.arg("--metrics-textfile").arg(&metrics);
    let mut process = ChildProcess::spawn("zajel-discover --every", command).expect("spawn");
    let (mut process, first_line) = tokio::task::spawn_blocking(move || {
        let line = process.wait_for(Duration::from_secs(20), |line| {
            line.contains("published at").then(|| line.to_string())
        });
        (process, line)
    })
    .await
    .unwrap();
    let first_line = first_line.expect("first publication");
    assert!(first_line.contains("FirstRun"), "{first_line}");
    let first = served(&knot).await;
    assert_eq!(first.len(), 1);
    assert_eq!(verified_through_doh(&world, &doh).await, 1);

    let (mut process, second_line) = tokio::task::spawn_blocking(move || {
        let line = process.wait_for(Duration::from_secs(20), |line| {
            line.contains("published at").then(|| line.to_string())
        });
        (process, line)
    })
    .await
    .unwrap();
    let second_line = second_line.expect("republished before exp");
    // Metrics file: written after each check; its publication time is the
    // second publication's or the first's (written right after the line).
    let text = std::fs::read_to_string(&metrics).expect("metrics textfile");
    assert!(text.contains("zajel_txt_last_attempt_ok 1"), "{text}");
    assert!(
        text.contains("zajel_txt_published_expiry_timestamp_seconds "),
        "{text}"
    );
    assert!(second_line.contains("HalfLife"), "{second_line}");
    let second = served(&knot).await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "the set was not re-signed");
    assert_eq!(verified_through_doh(&world, &doh).await, 1);
    process.kill();
}

fn cloudflare_command(world: &DiscoveryWorld, api: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(binary("zajel-discover").expect("zajel-discover built"));
    command
        .args([
            "txt",
            "publish",
            "--registry",
            world.registry_url().as_str(),
        ])
        .arg("--key-file")
        .arg(world.key_file())
        .args(["--domain", DOMAIN, "--ttl", "300"])
        .args(["--cloudflare-zone", DOMAIN, "--cloudflare-api", api])
        .args(extra);
    command
}

/// The `_zajel` TXT records the stand-in holds that verify with the registry key.
fn verified_in(standin: &CloudflareStandIn, world: &DiscoveryWorld) -> usize {
    let name = txt::record_name(DOMAIN);
    let now = discovery_client::now_ms() / 1000;
    standin
        .records()
        .iter()
        .filter(|r| r.record_type == "TXT" && format!("{}.", r.name) == name)
        .filter(|r| {
            let text = cloudflare::content_strings(&r.content).concat();
            txt::verify_any(
                DOMAIN,
                text.as_bytes(),
                &[world.registry_key.verifying_key()],
                now,
            )
            .is_ok()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_api_stand_in_gets_the_set_replaced_idempotently() {
    let world = DiscoveryWorld::new().await;
    let token = "cf-test-token-7f3a9c";
    let standin = CloudflareStandIn::start(DOMAIN, token).await;
    let zajel = format!("_zajel.{DOMAIN}");
    standin.insert("TXT", &zajel, "\"v=zajel1 id=stale\"", 300);
    standin.insert("TXT", &format!("www.{DOMAIN}"), "\"unrelated\"", 300);

    // A wrong token: Cloudflare's 403, the token never shown, nothing changed.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token-4411\n").unwrap();
    let mut command = cloudflare_command(&world, &standin.api, &[]);
    command.arg("--cloudflare-token-file").arg(&wrong);
    let output = run(command).await;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("10000: Authentication error"), "{stderr}");
    assert!(!stderr.contains("not-the-token-4411"), "{stderr}");
    assert_eq!(standin.changes(), (0, 0));

    // --dry-run lists the difference and changes nothing.
    let mut command = cloudflare_command(&world, &standin.api, &["--dry-run"]);
    command.env("CLOUDFLARE_API_TOKEN", token);
    let output = run(command).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("- \"v=zajel1 id=stale\""), "{stdout}");
    assert!(stdout.contains("+ \"v=zajel1 id="), "{stdout}");
    assert_eq!(standin.changes(), (0, 0));

    // The real run: the stale record goes, the signed one comes, www stays.
    let mut command = cloudflare_command(&world, &standin.api, &[]);
    command.env("CLOUDFLARE_API_TOKEN", token);
    let output = run(command).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("replaced through Cloudflare's API (+1 -1 =0)"),
        "{stderr}"
    );
    assert!(!stderr.contains(token) && !stdout.contains(token));
    assert_eq!(standin.changes(), (1, 1));
    assert_eq!(verified_in(&standin, &world), 1);
    assert_eq!(standin.records().len(), 2, "{:?}", standin.records());
    assert!(standin
        .records()
        .iter()
        .any(|r| r.name == format!("www.{DOMAIN}")));
    let requests = standin.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /client/v4/zones?name=zajel.test")),
        "{requests:?}"
    );

    // Idempotent: the same signed set twice, the second changes nothing.
    let target = CloudflareTarget {
        api: standin.api.parse().unwrap(),
        zone: DOMAIN.into(),
        token: ApiToken::from_file_or_env(None, Some(token.into())).unwrap(),
    };
    let http = discovery_client::registry::http_client(
        zajel_client_net::tls::client_config(&[]).unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let records = world.publish_with(&world.registry_key).await;
    let first = cloudflare::replace(&http, &target, &records, false)
        .await
        .unwrap();
    let changes = standin.changes();
    let second = cloudflare::replace(&http, &target, &records, false)
        .await
        .unwrap();
    assert!(second.unchanged, "{second:?} after {first:?}");
    assert_eq!(standin.changes(), changes);
    assert_eq!(verified_in(&standin, &world), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_skips_an_unchanged_set_and_publishes_a_changed_one() {
    let world = DiscoveryWorld::new().await;
    let knot = KnotAuth::start(DOMAIN).expect("knotd");
    let command = publish_command(
        &world,
        &knot,
        &knot.publisher_key_file,
        &["--every", "1s", "--valid-hours", "72"],
    );
    let process = ChildProcess::spawn("zajel-discover --every", command).expect("spawn");
    let wait = |mut process: ChildProcess, needle: &'static str| async move {
        tokio::task::spawn_blocking(move || {
            let line = process.wait_for(Duration::from_secs(20), |line| {
                line.contains(needle).then(|| line.to_string())
            });
            (process, line)
        })
        .await
        .unwrap()
    };
    let (process, line) = wait(process, "published at").await;
    assert!(line.expect("first publication").contains("FirstRun"));
    let first = served(&knot).await;
    let (process, line) = wait(process, "unchanged, skipped").await;
    line.expect("a skipped check");
    assert_eq!(
        served(&knot).await,
        first,
        "a skipped check changed the set"
    );
    // A server registers: the next check publishes at once.
    world
        .register(&random_key(), "wss://second.zajel.test:443")
        .await;
    let (mut process, line) = wait(process, "published at").await;
    let line = line.expect("republished");
    assert!(line.contains("SetChanged"), "{line}\n{}", process.output());
    assert_eq!(served(&knot).await.len(), 2);
    process.kill();
}
