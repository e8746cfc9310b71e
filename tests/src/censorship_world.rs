//! The world of the censorship suite (`tests/tests/censorship.rs`): a
//! [`Topology`] (client, censor, internet namespaces) and, in the internet
//! namespace, the real parts as child processes started with `ip netns
//! exec`: the native registry (`bootstrap-worker serve`), relay-lite
//! instances registered with it (`wss://` on port 443 with a certificate
//! from a test CA the client trusts) each running its embedded TURN server
//! (UDP and TCP on 3478; relay A also TLS on another address's 443), and a
//! DoH resolver (Debian's unbound) serving the `_zajel` records
//! `zajel-discover txt publish` signed.
//!
//! Every process is a [`ChildProcess`] (killed with its group on drop), and
//! the namespaces (with their rules and anything still running inside) go
//! with the topology, also when a scenario fails.
//!
//! Addresses (only inside the namespaces, see [`crate::netns`]):
//!
//! | host | address | what |
//! |---|---|---|
//! | 0 | 10.77.2.10 | registry, `http://…:8787` |
//! | 1 | 10.77.2.11 | relay A `wss://…:443`, its TURN over UDP and TCP `:3478` |
//! | 2 | 10.77.2.12 | relay A's TURN over TLS `:443` |
//! | 3 | 10.77.2.13 | DoH `https://doh.zajel.test/dns-query` on `:443` |
//! | 4 | 10.77.2.14 | a fake registry (poisoning scenario) |
//! | 5 | 10.77.2.15 | a lying DoH resolver (poisoning scenario), or a censor's resolver that prepends junk records (DoH junk scenario) |
//! | 6 | 10.77.2.16 | relay B `wss://…:443`, its TURN over UDP and TCP `:3478` |
//! | 7 | 10.77.2.17 | a hostile relay `wss://…:443` in front of relay A (`hostile-relay`, issue 13) |
//! | callee | 10.77.3.2 | `call-probe answer` (a host of its own, one address) |

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use zajel_wire::entry::RegisterRequest;
use zajel_wire::keys;

use crate::netns::{internet_host, Namespace, Topology};
use crate::process::ChildProcess;
use crate::registry_host::{binary, random_key};
use crate::test_ca::TestCa;
use crate::unbound_doh::UnboundDoh;

/// The zone whose `_zajel` records the DoH resolver serves.
pub const DOMAIN: &str = "zajel.test";
/// The TLS name of the DoH resolver (in the test certificate).
pub const DOH_NAME: &str = "doh.zajel.test";
/// The registry's port.
pub const REGISTRY_PORT: u16 = 8787;
/// The relays' TURN over UDP and TCP.
pub const TURN_PORT: u16 = 3478;

pub fn registry_address() -> Ipv4Addr {
    internet_host(0)
}
pub fn relay_a_address() -> Ipv4Addr {
    internet_host(1)
}
pub fn turn_tls_address() -> Ipv4Addr {
    internet_host(2)
}
pub fn doh_address() -> Ipv4Addr {
    internet_host(3)
}
pub fn fake_registry_address() -> Ipv4Addr {
    internet_host(4)
}
pub fn lying_doh_address() -> Ipv4Addr {
    internet_host(5)
}
pub fn relay_b_address() -> Ipv4Addr {
    internet_host(6)
}
pub fn hostile_relay_address() -> Ipv4Addr {
    internet_host(7)
}
/// Hosts the topology needs for all of the above.
pub const HOSTS: u8 = 8;

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `command` to its end (its whole process group is killed after
/// `timeout`), keeping stdout and stderr apart.
pub fn run_to_end(mut command: Command, timeout: Duration) -> Result<Finished, String> {
    crate::process::contain(&mut command);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let read = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = read(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: the group id is the child's pid (process_group(0)).
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let finished = Finished {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    };
    if status.is_none() {
        return Err(format!(
            "{command:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            finished.stdout, finished.stderr
        ));
    }
    Ok(finished)
}

/// A command that runs one of the workspace's binaries inside `namespace`,
/// logging at `warn` (or at `ZAJEL_CENSORSHIP_LOG`, a `RUST_LOG` filter, to
/// see why a scenario failed).
pub fn tool(namespace: &Namespace, name: &str) -> Result<Command, String> {
    let mut command = namespace.command(binary(name)?);
    let filter = std::env::var("ZAJEL_CENSORSHIP_LOG").unwrap_or_else(|_| "warn".into());
    command.env("RUST_LOG", filter);
    Ok(command)
}

/// What a junk flood ([`World::flood_registry`]) got from the registry.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodTally {
    pub attempted: u32,
    /// Answered 202: waiting for a check they cannot pass.
    pub waiting: u32,
    /// Answered 429 (per-network cap) or 503.
    pub refused: u32,
}

/// How a test registry admits new endpoints.
#[derive(Debug, Clone, Copy)]
pub enum RegistryAdmission<'a> {
    /// Checks each endpoint (connect, identity proof) before listing it,
    /// trusting the test CA in `ca_file` for `wss://`.
    Checked { ca_file: &'a Path },
    /// Lists at once (an attacker's registry, which checks nothing).
    Off,
}

/// Starts the native registry at `address:8787` inside `namespace`. The
/// namespaces use 10.77.0.0/16, so private endpoints are allowed; the
/// per-network cap and read limit are raised for the suite's own traffic.
pub fn start_registry(
    namespace: &Namespace,
    dir: &Path,
    key: &SigningKey,
    address: Ipv4Addr,
    admission: RegistryAdmission<'_>,
) -> Result<ChildProcess, String> {
    start_registry_with(namespace, dir, key, address, admission, &[])
}

/// [`start_registry`] with `extra` flags (`--max-entries-per-network`
/// replaces the suite's raised cap).
pub fn start_registry_with(
    namespace: &Namespace,
    dir: &Path,
    key: &SigningKey,
    address: Ipv4Addr,
    admission: RegistryAdmission<'_>,
    extra: &[&str],
) -> Result<ChildProcess, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let key_file = dir.join("registry.seed");
    std::fs::write(&key_file, keys::signing_key_to_hex(key)).map_err(|e| e.to_string())?;
    let mut command = tool(namespace, "bootstrap-worker")?;
    command
        .arg("serve")
        .args(["--listen", &format!("{address}:{REGISTRY_PORT}")])
        .arg("--signing-key-file")
        .arg(&key_file)
        .arg("--memory")
        .arg("--allow-private-endpoints")
        .args(["--read-rate-limit", "100000"]);
    if !extra.contains(&"--max-entries-per-network") {
        command.args(["--max-entries-per-network", "1000"]);
    }
    match admission {
        RegistryAdmission::Checked { ca_file } => {
            command
                .args(["--admission-check", "identity"])
                .arg("--admission-ca-file")
                .arg(ca_file);
        }
        RegistryAdmission::Off => {
            command.args(["--admission-check", "off"]);
        }
    }
    command.args(extra);
    let mut child = ChildProcess::spawn("bootstrap-worker serve", command)?;
    child.wait_for(Duration::from_secs(20), |line| {
        line.starts_with("listening on ").then_some(())
    })?;
    Ok(child)
}

/// `GET url` from inside `namespace` (plain HTTP): the status and body.
pub fn http_get(namespace: &Namespace, url: &str) -> Result<(u16, String), String> {
    let url = url.to_string();
    namespace.enter(move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(&url).send().map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        Ok((status, response.text().map_err(|e| e.to_string())?))
    })?
}

/// Registers `endpoint` with the registry at `registry` (signed by a fresh
/// server key), from inside `namespace`.
pub fn register_endpoint(
    namespace: &Namespace,
    registry: &str,
    endpoint: &str,
) -> Result<(), String> {
    register_endpoint_as(namespace, registry, endpoint, &random_key())
}

/// Registers `endpoint` with the registry at `registry` as the server whose
/// key is `key`, from inside `namespace`.
pub fn register_endpoint_as(
    namespace: &Namespace,
    registry: &str,
    endpoint: &str,
    key: &SigningKey,
) -> Result<(), String> {
    let request = RegisterRequest::signed(key, endpoint, Some("test"), discovery_client::now_ms());
    let body = serde_json::to_string(&request).map_err(|e| e.to_string())?;
    let url = format!("{registry}/servers");
    namespace.enter(move || {
        let response = reqwest::blocking::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(|e| format!("{url}: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("registration refused: {}", response.status()))
        }
    })?
}

/// Waits until the registry lists `endpoint`.
pub fn wait_listed(
    namespace: &Namespace,
    registry: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("{registry}/servers");
    loop {
        if let Ok((200, body)) = http_get(namespace, &url) {
            let listed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let found = listed["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|e| e["endpoint"] == endpoint));
            if found {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{endpoint} not listed by {registry} within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A relay-lite instance: `wss://address:443`, registered with `registry`,
/// running its embedded TURN server on `address:3478` (UDP and TCP) and,
/// with `turn_tls`, over TLS on `turn_tls:443`.
pub struct RelaySettings<'a> {
    pub address: Ipv4Addr,
    pub registry: &'a str,
    pub turn_secret_file: &'a Path,
    pub turn_tls: Option<Ipv4Addr>,
}

/// A fresh TURN shared secret (16 random bytes as hex) in `dir/turn.secret`.
pub fn write_turn_secret(dir: &Path) -> Result<PathBuf, String> {
    let file = dir.join("turn.secret");
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&file, secret).map_err(|e| e.to_string())?;
    Ok(file)
}

/// relay-lite started as the relay-lite README tells an operator (listeners on every interface,
/// TLS on signaling and TURN, the public `address` given once with `--turn-external-ip`, no
/// `--turn-relay-ip` and no `--turn-url`), inside `namespace`, with `pki`'s certificate, its
/// identity in `dir` and the TURN secret in `secret`. Callers add what their deployment adds
/// (a registry, a region, more STUN servers).
pub fn operator_relay_command(
    namespace: &Namespace,
    pki: &TestCa,
    address: Ipv4Addr,
    dir: &Path,
    secret: &Path,
) -> Result<Command, String> {
    let mut command = tool(namespace, "relay-lite")?;
    command
        .args(["--listen", "0.0.0.0:443"])
        .arg("--tls-cert")
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.key_file)
        .args(["--public-endpoint", &relay_endpoint(address)])
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
        .args(["--turn-external-ip", &address.to_string()])
        .arg("--turn-secret-file")
        .arg(secret)
        // Not in the README's command: the namespaces' addresses are RFC 1918 (10.77.0.0/16,
        // shared by every netns suite), which the TURN peer policy denies by default.
        .args(["--turn-allow-peer", NAMESPACE_NETWORK]);
    Ok(command)
}

/// Every address of the netns topology (`crate::netns`): private, so TURN relays to them only
/// with `--turn-allow-peer` (a lab network, as the relay-lite README says).
pub const NAMESPACE_NETWORK: &str = "10.77.0.0/16";

pub fn relay_endpoint(address: Ipv4Addr) -> String {
    format!("wss://{address}")
}

pub fn start_relay(
    namespace: &Namespace,
    pki: &TestCa,
    settings: &RelaySettings<'_>,
) -> Result<ChildProcess, String> {
    start_relay_with_args(namespace, pki, settings, &[])
}

/// [`start_relay`] with `extra` flags after the usual ones.
pub fn start_relay_with_args(
    namespace: &Namespace,
    pki: &TestCa,
    settings: &RelaySettings<'_>,
    extra: &[String],
) -> Result<ChildProcess, String> {
    let mut command = tool(namespace, "relay-lite")?;
    command
        .args(["--listen", &format!("{}:443", settings.address)])
        .arg("--tls-cert")
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.key_file)
        .args(["--public-endpoint", &relay_endpoint(settings.address)])
        .args(["--bootstrap", settings.registry])
        .args(["--region", "test"])
        .args([
            "--turn-listen-udp",
            &format!("{}:{TURN_PORT}", settings.address),
            "--turn-listen-tcp",
            &format!("{}:{TURN_PORT}", settings.address),
            "--turn-relay-ip",
            &settings.address.to_string(),
            "--turn-url",
            &format!("turn:{}:{TURN_PORT}?transport=udp", settings.address),
            "--turn-url",
            &format!("turn:{}:{TURN_PORT}?transport=tcp", settings.address),
        ])
        .arg("--turn-secret-file")
        .arg(settings.turn_secret_file)
        .args(["--turn-allow-peer", NAMESPACE_NETWORK])
        .args(["--registry-retry-min-ms", "200"]);
    if let Some(tls) = settings.turn_tls {
        command
            .args(["--turn-listen-tls", &format!("{tls}:443")])
            .arg("--turn-tls-cert")
            .arg(&pki.cert_file)
            .arg("--turn-tls-key")
            .arg(&pki.key_file)
            .args(["--turn-url", &format!("turns:{tls}:443?transport=tcp")]);
    }
    command.args(extra);
    let mut child = ChildProcess::spawn(&format!("relay-lite {}", settings.address), command)?;
    child.wait_for(Duration::from_secs(20), |line| {
        line.starts_with("listening on ").then_some(())
    })?;
    Ok(child)
}

/// The hostile relay (`hostile-relay`, see [`crate::hostile_relay`]) at
/// `wss://address:443` in front of `upstream`, in `mode`, with `key` as its
/// server identity; its call engines use `address`.
pub fn start_hostile_relay(
    namespace: &Namespace,
    pki: &TestCa,
    dir: &Path,
    key: &SigningKey,
    address: Ipv4Addr,
    upstream: &str,
    mode: &str,
) -> Result<ChildProcess, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let key_file = dir.join("hostile-relay.seed");
    std::fs::write(&key_file, keys::signing_key_to_hex(key)).map_err(|e| e.to_string())?;
    let mut command = tool(namespace, "hostile-relay")?;
    command
        .args(["--listen", &format!("{address}:443")])
        .args(["--upstream", upstream, "--mode", mode])
        .args(["--public-endpoint", &relay_endpoint(address)])
        .arg("--server-key-file")
        .arg(&key_file)
        .arg("--tls-cert")
        .arg(&pki.cert_file)
        .arg("--tls-key")
        .arg(&pki.key_file)
        .arg("--ca-file")
        .arg(&pki.ca_file)
        .args(["--udp-bind", &address.to_string()]);
    let mut child = ChildProcess::spawn(&format!("hostile-relay {address}"), command)?;
    child.wait_for(Duration::from_secs(20), |line| {
        line.starts_with("listening on ").then_some(())
    })?;
    Ok(child)
}

/// Debian's unbound serving `records` (zone-file lines) for [`DOMAIN`] over
/// DoH on `address:443` inside `namespace`.
pub fn start_doh(
    namespace: &Namespace,
    pki: &TestCa,
    address: Ipv4Addr,
    records: &[String],
) -> Result<UnboundDoh, String> {
    UnboundDoh::start_at(pki, DOMAIN, records, address.into(), 443, Some(namespace))
}

/// `zajel-discover txt publish` run in `namespace` against `registry` with
/// the seed in `key_file`: the zone-file lines it printed.
pub fn publish_records(
    namespace: &Namespace,
    registry: &str,
    key_file: &Path,
) -> Result<Vec<String>, String> {
    let mut command = tool(namespace, "zajel-discover")?;
    command
        .args(["txt", "publish", "--registry", registry, "--key-file"])
        .arg(key_file)
        .args(["--domain", DOMAIN]);
    let finished = run_to_end(command, Duration::from_secs(20))?;
    if finished.code != Some(0) {
        return Err(format!("txt publish failed: {}", finished.stderr));
    }
    let lines: Vec<String> = finished
        .stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(format!(
            "txt publish printed no record:\n{}",
            finished.stdout
        ));
    }
    Ok(lines)
}

/// The genuine world: registry, relay A (and B on request), TURN, DoH.
/// Fields drop in order: processes first, the topology (namespaces, rules)
/// last.
pub struct World {
    /// `call-probe answer` on the callee host, when a scenario starts one.
    pub answerer: Option<ChildProcess>,
    /// The hostile relay, when a scenario starts one.
    pub hostile: Option<ChildProcess>,
    pub relays: Vec<(String, ChildProcess)>,
    pub extra: Vec<ChildProcess>,
    pub doh: Option<UnboundDoh>,
    pub lying_doh: Option<UnboundDoh>,
    pub registry: Option<ChildProcess>,
    pub registry_key: SigningKey,
    pub pki: TestCa,
    pub turn_secret_file: PathBuf,
    pub dir: tempfile::TempDir,
    pub topology: Topology,
    /// Flags every relay this world starts gets on top of [`start_relay`]'s.
    pub relay_args: Vec<String>,
}

impl World {
    /// Topology, PKI, registry and relay A (with TURN) registered; no DoH yet.
    pub fn new() -> Result<Self, String> {
        Self::with_relay_args(|_| Vec::new())
    }

    /// [`World::new`], every relay also started with the flags `relay_args`
    /// returns for the world's test CA file (e.g. federation trusting it).
    pub fn with_relay_args(relay_args: impl Fn(&Path) -> Vec<String>) -> Result<Self, String> {
        let mut world = Self::without_relays(&[])?;
        world.relay_args = relay_args(&world.pki.ca_file);
        world.add_relay(relay_a_address())?;
        Ok(world)
    }

    /// Topology, PKI and the registry (started with `registry_flags` too,
    /// see [`start_registry_with`]); no relay, no DoH yet.
    pub fn without_relays(registry_flags: &[&str]) -> Result<Self, String> {
        let topology = Topology::new(HOSTS)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut names = vec![DOH_NAME.to_string(), "localhost".to_string()];
        names.extend((0..HOSTS).map(|n| internet_host(n).to_string()));
        let pki = TestCa::for_names(&names);
        let registry_key = random_key();
        let turn_secret_file = write_turn_secret(dir.path())?;
        let mut world = Self {
            answerer: None,
            hostile: None,
            relays: Vec::new(),
            extra: Vec::new(),
            doh: None,
            lying_doh: None,
            registry: None,
            registry_key,
            pki,
            turn_secret_file,
            dir,
            topology,
            relay_args: Vec::new(),
        };
        world.registry = Some(start_registry_with(
            &world.topology.internet,
            &world.dir.path().join("registry"),
            &world.registry_key,
            registry_address(),
            RegistryAdmission::Checked {
                ca_file: &world.pki.ca_file,
            },
            registry_flags,
        )?);
        Ok(world)
    }

    /// Floods the registry with junk registrations, `per_source` from each
    /// of `sources` addresses in distinct /24s (10.77.100+s.1, added to the
    /// internet namespace's loopback), each under a fresh key: a third
    /// point at an address nothing answers (the check times out), a third
    /// at a closed port, a third at relay A's endpoint under a bogus key.
    pub fn flood_registry(&self, sources: u8, per_source: u32) -> Result<FloodTally, String> {
        let mut tally = FloodTally::default();
        for source in 0..sources {
            let address = Ipv4Addr::new(10, 77, 100 + source, 1);
            self.topology
                .internet
                .ip(&["addr", "add", &format!("{address}/32"), "dev", "lo"])?;
            let url = format!("{}/servers", Self::registry_url());
            let nobody = internet_host(HOSTS + 100);
            let closed = registry_address();
            let relay = relay_endpoint(relay_a_address());
            let counts = self.topology.internet.enter(move || {
                let client = reqwest::blocking::Client::builder()
                    .local_address(std::net::IpAddr::V4(address))
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut counts = FloodTally::default();
                for n in 0..per_source {
                    let endpoint = match n % 3 {
                        0 => format!("wss://{nobody}/junk{n}"),
                        1 => format!("wss://{closed}:9/junk{n}"),
                        _ => relay.clone(),
                    };
                    let key = random_key();
                    let request = RegisterRequest::signed(
                        &key,
                        &endpoint,
                        Some("junk"),
                        discovery_client::now_ms(),
                    );
                    let status = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(serde_json::to_string(&request).map_err(|e| e.to_string())?)
                        .send()
                        .map_err(|e| format!("{url}: {e}"))?
                        .status()
                        .as_u16();
                    counts.attempted += 1;
                    match status {
                        202 => counts.waiting += 1,
                        429 | 503 => counts.refused += 1,
                        other => return Err(format!("junk registration answered {other}")),
                    }
                }
                Ok(counts)
            })??;
            tally.attempted += counts.attempted;
            tally.waiting += counts.waiting;
            tally.refused += counts.refused;
        }
        Ok(tally)
    }

    /// The endpoints the registry lists now.
    pub fn listed_endpoints(&self) -> Result<Vec<String>, String> {
        let (status, body) = http_get(
            &self.topology.internet,
            &format!("{}/servers", Self::registry_url()),
        )?;
        if status != 200 {
            return Err(format!("GET /servers: {status} {body}"));
        }
        let list: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(list["servers"]
            .as_array()
            .map(|servers| {
                servers
                    .iter()
                    .filter_map(|entry| entry["endpoint"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The registry's base URL.
    pub fn registry_url() -> String {
        format!("http://{}:{REGISTRY_PORT}", registry_address())
    }

    /// The pinned registry key, standard base64.
    pub fn registry_key_base64(&self) -> String {
        keys::public_key_to_base64(&self.registry_key.verifying_key())
    }

    /// Starts a relay at `address` and waits until the registry lists it.
    /// Relay A also serves TURN over TLS on [`turn_tls_address`]`:443`.
    pub fn add_relay(&mut self, address: Ipv4Addr) -> Result<String, String> {
        let registry = Self::registry_url();
        let child = start_relay_with_args(
            &self.topology.internet,
            &self.pki,
            &RelaySettings {
                address,
                registry: &registry,
                turn_secret_file: &self.turn_secret_file,
                turn_tls: (address == relay_a_address()).then(turn_tls_address),
            },
            &self.relay_args,
        )?;
        let endpoint = relay_endpoint(address);
        wait_listed(
            &self.topology.internet,
            &registry,
            &endpoint,
            Duration::from_secs(20),
        )?;
        self.relays.push((endpoint.clone(), child));
        Ok(endpoint)
    }

    /// Starts the hostile relay at [`hostile_relay_address`] in front of
    /// relay A, in `mode`, registered with the registry under its own server
    /// key (a compromised operator's listed server); waits until listed.
    pub fn add_hostile_relay(&mut self, mode: &str) -> Result<String, String> {
        let key = random_key();
        let child = start_hostile_relay(
            &self.topology.internet,
            &self.pki,
            &self.dir.path().join("hostile"),
            &key,
            hostile_relay_address(),
            &relay_endpoint(relay_a_address()),
            mode,
        )?;
        self.hostile = Some(child);
        let registry = Self::registry_url();
        let endpoint = relay_endpoint(hostile_relay_address());
        register_endpoint_as(&self.topology.internet, &registry, &endpoint, &key)?;
        wait_listed(
            &self.topology.internet,
            &registry,
            &endpoint,
            Duration::from_secs(20),
        )
        .map_err(|error| {
            let tail = |process: Option<&ChildProcess>| {
                let output = process.map(ChildProcess::output).unwrap_or_default();
                let lines: Vec<&str> = output.lines().collect();
                lines[lines.len().saturating_sub(15)..].join("\n")
            };
            format!(
                "{error}\nregistry:\n{}\nhostile relay:\n{}",
                tail(self.registry.as_ref()),
                tail(self.hostile.as_ref())
            )
        })?;
        Ok(endpoint)
    }

    /// The hostile relay's last tally line (`{"event":"tally","tally":…}`).
    pub fn hostile_tally(&self) -> Option<serde_json::Value> {
        self.hostile
            .as_ref()?
            .output()
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["event"] == "tally")
            .map(|event| event["tally"].clone())
    }

    /// Kills the relay serving `endpoint` (SIGKILL: no unregister, so the
    /// registry and the DoH records still name it).
    pub fn kill_relay(&mut self, endpoint: &str) {
        if let Some(position) = self.relays.iter().position(|(e, _)| e == endpoint) {
            let (_, mut child) = self.relays.remove(position);
            child.kill();
        }
    }

    /// Publishes the registry's list as signed records and serves them over DoH.
    pub fn start_doh(&mut self) -> Result<(), String> {
        let key_file = self.dir.path().join("registry").join("registry.seed");
        let records = publish_records(&self.topology.internet, &Self::registry_url(), &key_file)?;
        self.doh = Some(start_doh(
            &self.topology.internet,
            &self.pki,
            doh_address(),
            &records,
        )?);
        Ok(())
    }

    /// A fake registry at [`fake_registry_address`] signing with another
    /// key and listing `endpoint`, and a lying DoH resolver at
    /// [`lying_doh_address`] serving records for it signed with that key.
    pub fn start_poisoners(&mut self, endpoint: &str) -> Result<(), String> {
        let attacker = random_key();
        let dir = self.dir.path().join("attacker");
        let registry = start_registry(
            &self.topology.internet,
            &dir,
            &attacker,
            fake_registry_address(),
            RegistryAdmission::Off,
        )?;
        self.extra.push(registry);
        let url = format!("http://{}:{REGISTRY_PORT}", fake_registry_address());
        register_endpoint(&self.topology.internet, &url, endpoint)?;
        let records = publish_records(&self.topology.internet, &url, &dir.join("registry.seed"))?;
        self.lying_doh = Some(start_doh(
            &self.topology.internet,
            &self.pki,
            lying_doh_address(),
            &records,
        )?);
        Ok(())
    }

    /// A censor-run DoH resolver at [`lying_doh_address`] that serves
    /// `junk` junk `v=zajel1` records (a third forged: signed by another
    /// key, valid for an hour, so each costs a signature check; a third
    /// expired; a third malformed) before the genuine records of this
    /// world's registry. Returns how many junk records it serves.
    pub fn start_junk_doh(&mut self, junk: usize) -> Result<usize, String> {
        use discovery_client::txt;
        let key_file = self.dir.path().join("registry").join("registry.seed");
        let genuine = publish_records(&self.topology.internet, &Self::registry_url(), &key_file)?;
        let forger = random_key();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let name = txt::record_name(DOMAIN);
        let mut records = Vec::with_capacity(junk + genuine.len());
        for i in 0..junk {
            let text = match i % 3 {
                2 => format!("v=zajel1 id=junk{i} ep=x"),
                kind => {
                    let entry = txt::TxtEntry {
                        server_id: keys::server_id_for(&random_key().verifying_key()),
                        endpoint: format!("wss://junk{i}.example"),
                        region: String::new(),
                        expires: if kind == 0 { now + 3600 } else { now - 60 },
                    };
                    txt::sign_record(&forger, DOMAIN, &entry).map_err(|e| e.to_string())?
                }
            };
            let content = txt::split_strings(&text)
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(" ");
            records.push(format!("{name} 60 IN TXT {content}"));
        }
        records.extend(genuine);
        self.lying_doh = Some(start_doh(
            &self.topology.internet,
            &self.pki,
            lying_doh_address(),
            &records,
        )?);
        Ok(junk)
    }

    /// The redirects a poisoning censor applies: registry and DoH traffic
    /// goes to the fake registry and the lying resolver.
    pub fn poison_redirects() -> Vec<(SocketAddrV4, SocketAddrV4)> {
        vec![
            (
                SocketAddrV4::new(registry_address(), REGISTRY_PORT),
                SocketAddrV4::new(fake_registry_address(), REGISTRY_PORT),
            ),
            (
                SocketAddrV4::new(doh_address(), 443),
                SocketAddrV4::new(lying_doh_address(), 443),
            ),
        ]
    }

    /// The discovery flags every client run shares (`call-probe call` and
    /// `zajel-discover discover` take the same ones).
    pub fn discovery_flags(&self, cache: Option<&Path>) -> Vec<String> {
        let mut flags = vec![
            "--registry".to_string(),
            Self::registry_url(),
            "--registry-key".into(),
            self.registry_key_base64(),
            "--doh".into(),
            format!("https://{DOH_NAME}/dns-query,ip={}", doh_address()),
            "--domain".into(),
            DOMAIN.into(),
            "--allow-private".into(),
            "--ca-file".into(),
            self.pki.ca_file.display().to_string(),
        ];
        match cache {
            Some(path) => {
                flags.push("--cache-file".into());
                flags.push(path.display().to_string());
            }
            None => flags.push("--no-cache".into()),
        }
        flags
    }

    /// Reads everything a child printed (for failure reports).
    pub fn outputs(&self) -> String {
        let mut out = String::new();
        if let Some(answerer) = &self.answerer {
            out.push_str(&format!("--- answerer\n{}", answerer.output()));
        }
        for (name, child) in &self.relays {
            out.push_str(&format!("--- relay {name}\n{}", child.output()));
        }
        if let Some(hostile) = &self.hostile {
            out.push_str(&format!("--- hostile relay\n{}", hostile.output()));
        }
        if let Some(registry) = &self.registry {
            out.push_str(&format!("--- registry\n{}", registry.output()));
        }
        if let Some(doh) = &self.doh {
            out.push_str(&format!("--- doh\n{}", doh.output()));
        }
        out
    }
}
