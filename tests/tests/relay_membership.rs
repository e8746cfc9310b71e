//! relay-lite joins the real native registry: signed registration, the
//! entry in the signed `GET /servers` list, heartbeats, surviving a registry
//! restart (re-registering after 404), retrying while the registry is down,
//! and the signed unregister on SIGTERM. Also against an `open` registry.
//! Needs `cargo build -p relay-lite -p bootstrap-worker`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::process::ChildProcess;
use tests::registry_host::{self, binary, Profile};
use tests::relay_child::RelayChild;
use zajel_client_net::now_ms;
use zajel_wire::entry::ServerEntry;
use zajel_wire::signature::{verify_server_list, LIST_SIGNATURE_HEADER};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `check` until it returns something (the registry and relay have no
/// push channel to await; the poll interval is not a synchronisation guess).
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This server's entry in the registry's signed list, verified with its key.
fn entry(
    base_url: &str,
    list_key: &ed25519_dalek::VerifyingKey,
    server_id: &str,
) -> Option<ServerEntry> {
    let response = reqwest::blocking::get(format!("{base_url}/servers")).ok()?;
    let signature = response
        .headers()
        .get(LIST_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.bytes().ok()?;
    let list = verify_server_list(&body, signature.as_deref(), &[*list_key], now_ms())
        .expect("a list signed by the registry key");
    list.servers.into_iter().find(|e| e.server_id == server_id)
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // `Connection: close`: the answer is read to the end of the stream, and the registry's
    // HTTP server would otherwise keep the connection open.
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn metric(addr: SocketAddr, series: &str) -> f64 {
    try_metric(addr, series).unwrap_or_else(|| panic!("no {series}"))
}

/// A series of `addr`'s `/metrics`, `None` while it has not appeared.
fn try_metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `bootstrap-worker serve` in memory on `listen`, signing with `key_file`.
fn registry_child(key_file: &Path, listen: &str) -> (ChildProcess, String) {
    let mut command =
        Command::new(binary("bootstrap-worker").expect("cargo build -p bootstrap-worker"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .arg("--signing-key-file")
        .arg(key_file)
        .args(["--memory", "--policy", "signed", "--rate-limit", "100000"])
        // The relay announces a public endpoint nothing serves (the membership protocol is
        // under test here; conformance and the censorship suite test admission).
        .args(["--admission-check", "off"])
        // The test polls the list faster than a client would.
        .args(["--read-rate-limit", "100000"]);
    let mut child = ChildProcess::spawn("bootstrap-worker serve", command).unwrap();
    let base_url = child
        .wait_for(WAIT, |line| {
            line.strip_prefix("listening on ").map(str::to_string)
        })
        .unwrap();
    (child, base_url)
}

#[test]
fn registers_heartbeats_survives_a_registry_restart_and_unregisters() {
    let dir = tempfile::tempdir().unwrap();
    let registry_key = registry_host::random_key();
    let key_file = registry_host::write_key_file(dir.path(), &registry_key);
    let list_key = registry_key.verifying_key();
    let (registry, base_url) = registry_child(&key_file, "127.0.0.1:0");
    let listen = base_url.trim_start_matches("http://").to_string();

    let identity = dir.path().join("relay.key");
    let mut relay = RelayChild::start(
        &[
            "--bootstrap",
            &base_url,
            "--public-endpoint",
            "wss://relay.example.test",
            "--region",
            "test-region",
            "--identity",
            identity.to_str().unwrap(),
            "--heartbeat-ms",
            "300",
            "--registry-retry-min-ms",
            "100",
            "--registry-retry-max-ms",
            "400",
        ],
        WAIT,
    )
    .expect("start relay-lite");

    // The identity: created 0600, its key is the serverId, the seed is never logged.
    let seed = std::fs::read_to_string(&identity).unwrap();
    let key = zajel_wire::keys::signing_key_from_hex(&seed).unwrap();
    assert_eq!(
        relay.server_id,
        zajel_wire::keys::server_id_for(&key.verifying_key())
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let first = eventually("the relay in the signed list", || {
        entry(&base_url, &list_key, &relay.server_id)
    });
    assert_eq!(first.endpoint, "wss://relay.example.test");
    assert_eq!(first.region, "test-region");
    assert_eq!(
        first.public_key,
        zajel_wire::keys::public_key_to_base64(&key.verifying_key())
    );
    // Heartbeats are accepted. (They move lastSeen, but the registry serves its kept signed
    // list for up to a minute when only lastSeen moved — bootstrap-worker's list_cache — so the
    // registry's own count of accepted heartbeats is what shows them here.)
    let registry_addr: SocketAddr = listen.parse().unwrap();
    eventually("a heartbeat", || {
        try_metric(
            registry_addr,
            "zajel_registry_requests_total{method=\"POST\",route=\"/servers/heartbeat\",status=\"200\"}",
        )
        .filter(|accepted| *accepted >= 1.0)
    });
    assert_eq!(metric(relay.addr, "relay_registry_registered"), 1.0);

    // The registry goes away: the relay keeps serving and keeps retrying.
    drop(registry);
    let failures = eventually("failed heartbeats", || {
        let failures = metric(relay.addr, "relay_registry_failures_total");
        (failures >= 2.0).then_some(failures)
    });
    assert!(failures >= 2.0);
    assert_eq!(http_get(relay.addr, "/health").0, 200);

    // A fresh registry (empty, same address): heartbeat gets 404, the relay registers again.
    let (_registry, again_url) = registry_child(&key_file, &listen);
    assert_eq!(again_url, base_url);
    eventually("the relay registered again", || {
        entry(&base_url, &list_key, &relay.server_id)
    });
    relay
        .process
        .wait_for(WAIT, |line| {
            line.contains("registering again").then_some(())
        })
        .unwrap();

    // SIGTERM: a signed DELETE before exit.
    relay.process.signal(libc::SIGTERM);
    let status = relay.process.wait(WAIT).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(entry(&base_url, &list_key, &relay.server_id).is_none());
    let output = relay.process.output();
    assert!(
        output.contains("unregistered from the registry"),
        "{output}"
    );
    assert!(!output.contains(seed.trim()), "the seed was logged");
}

#[test]
fn an_open_registry_takes_the_signed_relay_too() {
    let registry = registry_host::start_in_process(Profile::OPEN);
    let mut relay = RelayChild::start(
        &["--bootstrap", &registry.base_url, "--heartbeat-ms", "200"],
        WAIT,
    )
    .expect("start relay-lite");
    let entry_now = eventually("the relay in the open registry", || {
        entry(&registry.base_url, &registry.list_key, &relay.server_id)
    });
    assert_eq!(entry_now.endpoint, relay.url());
    assert_eq!(entry_now.region, "unknown");
    relay.process.signal(libc::SIGTERM);
    assert!(relay.process.wait(WAIT).unwrap().success());
    assert!(entry(&registry.base_url, &registry.list_key, &relay.server_id).is_none());
}

#[test]
fn an_unreachable_registry_is_retried_while_clients_are_served() {
    // A port with nothing listening: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let relay = RelayChild::start(
        &[
            "--bootstrap",
            &url,
            "--registry-retry-min-ms",
            "50",
            "--registry-retry-max-ms",
            "200",
        ],
        WAIT,
    )
    .expect("start relay-lite");
    eventually("several retries", || {
        (metric(relay.addr, "relay_registry_failures_total") >= 3.0).then_some(())
    });
    assert_eq!(metric(relay.addr, "relay_registry_registered"), 0.0);
    let (status, body) = http_get(relay.addr, "/health");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn bad_flags_fail_with_a_clear_message() {
    for (args, expected) in [
        (vec!["--bootstrap", "ftp://x"], "invalid registry URL"),
        (vec!["--public-endpoint", "nope"], "invalid public endpoint"),
        (
            vec![
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "cannot read TLS certificate file",
        ),
    ] {
        let output = Command::new(binary("relay-lite").unwrap())
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
