//! Registry hosts under test: the native server in-process or as a child
//! process, and the Worker under `wrangler dev` (the real workerd runtime).
//! Each is started with a [`Profile`] and a fresh signing key, and stopped
//! when dropped.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bootstrap_worker::config::{Config, Policy};
use bootstrap_worker::native::{server, sqlite::SqliteStore};
use bootstrap_worker::registry::Registry;
use ed25519_dalek::{SigningKey, VerifyingKey};
use zajel_wire::keys;

use crate::process::ChildProcess;

/// How a registry under test is configured.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub policy: &'static str,
    pub ttl_ms: u64,
    pub rate_limit: u32,
    pub max_entries: u64,
    /// Reads per minute per address.
    pub read_rate_limit: u32,
    /// Entries per source /24 or /48.
    pub max_entries_per_network: u64,
    /// `identity` (check before listing) or `off` (list at once).
    pub admission: &'static str,
    /// Whether loopback and private endpoint hosts are accepted.
    pub allow_private_endpoints: bool,
    /// How often listed entries are checked again (with `identity`).
    pub recheck_interval_ms: u64,
}

impl Profile {
    /// Signed policy, generous limits, endpoints listed without a check
    /// (the HTTP surface's checks register endpoints nothing serves).
    pub const SIGNED: Profile = Profile {
        policy: "signed",
        ttl_ms: 60_000,
        rate_limit: 1_000_000,
        max_entries: 1_000_000,
        read_rate_limit: 1_000_000,
        max_entries_per_network: 1_000_000,
        admission: "off",
        allow_private_endpoints: true,
        recheck_interval_ms: 60_000,
    };
    /// Open policy, generous limits, endpoints listed without a check.
    pub const OPEN: Profile = Profile {
        policy: "open",
        ..Profile::SIGNED
    };
    /// Signed policy with the admission check (endpoints on loopback allowed).
    /// Listed entries are checked again every second.
    pub const ADMISSION: Profile = Profile {
        admission: "identity",
        recheck_interval_ms: 1_000,
        ..Profile::SIGNED
    };
}

/// A fresh random signing key.
pub fn random_key() -> SigningKey {
    zajel_client_net::keyfile::random_key().expect("randomness")
}

/// A running registry: where it listens and the key that signs its lists.
pub struct RunningRegistry {
    pub name: String,
    pub base_url: String,
    pub list_key: VerifyingKey,
    guard: Guard,
}

enum Guard {
    InProcess {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        _data: Option<tempfile::TempDir>,
    },
    Child {
        process: ChildProcess,
        _dir: Option<tempfile::TempDir>,
    },
}

/// The repository root (where `wrangler.toml`, `package.json` and `build/` live).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The name of the in-process native host's runtime threads (workers and
/// blocking pool), so benches can count their CPU apart from their clients'.
pub const IN_PROCESS_THREAD_NAME: &str = "registry-host";

/// Where a [`RunningRegistry`] spends its CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuSource {
    /// Threads of this process with this name.
    Threads(&'static str),
    /// This child process and every process under it.
    ProcessTree(u32),
}

impl RunningRegistry {
    /// The child process behind this registry, if it runs as one.
    pub fn child(&mut self) -> Option<&mut ChildProcess> {
        match &mut self.guard {
            Guard::Child { process, .. } => Some(process),
            Guard::InProcess { .. } => None,
        }
    }

    /// Where this registry's CPU time is spent, for benches: the threads
    /// of the in-process host, or the child process (and its descendants).
    pub fn cpu_source(&self) -> CpuSource {
        match &self.guard {
            Guard::Child { process, .. } => CpuSource::ProcessTree(process.id()),
            Guard::InProcess { .. } => CpuSource::Threads(IN_PROCESS_THREAD_NAME),
        }
    }

    /// A URL on this registry.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for RunningRegistry {
    fn drop(&mut self) {
        if let Guard::InProcess { stop, thread, .. } = &mut self.guard {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn config(profile: Profile, key: &SigningKey) -> Config {
    Config {
        ttl_ms: profile.ttl_ms,
        policy: profile.policy.parse::<Policy>().expect("profile policy"),
        max_entries: profile.max_entries,
        rate_limit_per_minute: profile.rate_limit,
        signing_key: Some(key.clone()),
        read_rate_limit_per_minute: profile.read_rate_limit,
        max_entries_per_network: profile.max_entries_per_network,
        allow_private_endpoints: profile.allow_private_endpoints,
        admission: profile.admission.parse().expect("profile admission"),
        admission_timeout_ms: 2_000,
        recheck_interval_ms: profile.recheck_interval_ms,
        ..Config::default()
    }
}

/// The native registry in this process, on its own runtime thread, in memory.
pub fn start_in_process(profile: Profile) -> RunningRegistry {
    in_process(profile, SqliteStore::in_memory().expect("store"), None)
}

/// The native registry in this process, storing in a SQLite file in a
/// temporary directory (durable writes, as in production).
pub fn start_in_process_on_disk(profile: Profile) -> RunningRegistry {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("registry.sqlite3")).expect("store");
    in_process(profile, store, Some(dir))
}

/// The native registry in this process, in memory, signing with `key` (for
/// tests that also need the seed, e.g. to publish signed TXT records).
pub fn start_in_process_with_key(profile: Profile, key: SigningKey) -> RunningRegistry {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    in_process_keyed(
        listener,
        profile,
        SqliteStore::in_memory().expect("store"),
        None,
        key,
    )
}

/// The native registry in this process, in memory, signing with `key`,
/// serving on a listener the caller bound (e.g. inside a network namespace).
pub fn start_in_process_on(
    listener: StdListener,
    profile: Profile,
    key: SigningKey,
) -> RunningRegistry {
    in_process_keyed(
        listener,
        profile,
        SqliteStore::in_memory().expect("store"),
        None,
        key,
    )
}

fn in_process(
    profile: Profile,
    store: SqliteStore,
    data: Option<tempfile::TempDir>,
) -> RunningRegistry {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    in_process_keyed(listener, profile, store, data, random_key())
}

fn in_process_keyed(
    listener: StdListener,
    profile: Profile,
    store: SqliteStore,
    data: Option<tempfile::TempDir>,
    key: SigningKey,
) -> RunningRegistry {
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address");
    let registry = Registry::new(store, config(profile, &key));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(IN_PROCESS_THREAD_NAME)
            // Blocking threads live as long as the host, so a bench reading
            // per-thread CPU times does not lose those of threads that ended.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            // Loopback is a trusted proxy, so checks can send as other
            // addresses (X-Forwarded-For); nothing else reaches loopback.
            let options = server::HostOptions {
                trusted_proxies: "127.0.0.0/8".parse().expect("loopback block"),
                ..server::HostOptions::default()
            };
            let _ = server::serve_with(listener, registry, options, async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    RunningRegistry {
        name: "native".into(),
        base_url: format!("http://{address}"),
        list_key: key.verifying_key(),
        guard: Guard::InProcess {
            stop: Some(stop),
            thread: Some(thread),
            _data: data,
        },
    }
}

/// The workspace's target directory holding built binaries (next to this test's executable).
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built; run `cargo build --workspace --bins` first",
            path.display()
        ))
    }
}

/// The native registry as a child process (`bootstrap-worker serve`),
/// storing in `data` (a file) and signing with the seed in `key_file`.
pub fn start_child(
    profile: Profile,
    key_file: &Path,
    data: &Path,
) -> Result<RunningRegistry, String> {
    let key = zajel_client_net::keyfile::read(key_file).map_err(|e| e.to_string())?;
    let mut command = Command::new(binary("bootstrap-worker")?);
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--signing-key-file")
        .arg(key_file)
        .arg("--data")
        .arg(data)
        .args(["--policy", profile.policy])
        .args(["--ttl-ms", &profile.ttl_ms.to_string()])
        .args(["--rate-limit", &profile.rate_limit.to_string()])
        .args(["--max-entries", &profile.max_entries.to_string()])
        .args(["--read-rate-limit", &profile.read_rate_limit.to_string()])
        .args([
            "--max-entries-per-network",
            &profile.max_entries_per_network.to_string(),
        ])
        .args(["--admission-check", profile.admission])
        .args([
            "--recheck-interval-ms",
            &profile.recheck_interval_ms.to_string(),
        ]);
    if profile.allow_private_endpoints {
        command.arg("--allow-private-endpoints");
    }
    let mut child = ChildProcess::spawn("bootstrap-worker serve", command)?;
    let base_url = child.wait_for(Duration::from_secs(20), |line| {
        line.strip_prefix("listening on ").map(str::to_string)
    })?;
    Ok(RunningRegistry {
        name: "native-child".into(),
        base_url,
        list_key: key.verifying_key(),
        guard: Guard::Child {
            process: child,
            _dir: None,
        },
    })
}

/// Writes a seed file for a child registry.
pub fn write_key_file(dir: &Path, key: &SigningKey) -> PathBuf {
    let path = dir.join("registry.seed");
    std::fs::write(&path, keys::signing_key_to_hex(key)).expect("write key");
    path
}

/// A free TCP port on loopback (for programs that cannot be told to pick one).
fn free_port() -> Result<u16, String> {
    let listener = StdListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Zajel's own JS registry Worker (`packages/server` of Zajel's repository,
/// checked out in `dir` with `npm install` done) under the same `wrangler
/// dev` and workerd as ours, on loopback, signing its lists with a fresh key:
/// the anchor of the registry benchmark. Its `wrangler.jsonc` (production
/// routes) is not used: the instance gets a minimal `wrangler.toml` in its
/// own directory with Zajel's Durable Object binding, as Zajel declares it
/// (a key-value `ServerRegistryDO` named `SERVER_REGISTRY`).
pub fn start_zajel_worker(dir: &Path) -> Result<RunningRegistry, String> {
    let entry = dir.join("src/index.js");
    if !entry.exists() {
        return Err(format!(
            "{} is missing: ZAJEL_WORKER must be Zajel's packages/server",
            entry.display()
        ));
    }
    let config = format!(
        "name = \"zajel-registry-anchor\"\n\
         main = {entry:?}\n\
         compatibility_date = \"2024-01-01\"\n\
         [[durable_objects.bindings]]\n\
         name = \"SERVER_REGISTRY\"\n\
         class_name = \"ServerRegistryDO\"\n\
         [[migrations]]\n\
         tag = \"v1\"\n\
         new_classes = [\"ServerRegistryDO\"]\n",
        entry = entry.display().to_string(),
    );
    let (starting, _) = spawn_wrangler_keyed(&config, &[], random_key(), false, None)?;
    let mut running = starting.ready()?;
    running.name = "zajel-worker".into();
    Ok(running)
}

/// The Worker build under `wrangler dev` (the real workerd runtime), on loopback.
///
/// Needs `npm ci` and a built Worker (`bash scripts/build-worker`, which
/// `scripts/test` runs). Each instance gets its own directory holding a
/// `wrangler.toml` with the profile's vars and no build step, a `.dev.vars`
/// with the signing key (the secret, as an operator would provide it), and
/// the Durable Object's storage, so instances never share state.
pub fn start_wrangler_dev(profile: Profile) -> Result<RunningRegistry, String> {
    spawn_wrangler_dev(profile)?.ready()
}

/// A `wrangler dev` that has been started but may not listen yet.
pub struct StartingWorker {
    process: ChildProcess,
    dir: tempfile::TempDir,
    base_url: String,
    list_key: VerifyingKey,
}

impl StartingWorker {
    /// Waits until the Worker answers `GET /health`.
    ///
    /// wrangler's "Ready on" line is not a reliable signal (it is skipped
    /// when a reload is already queued), so readiness is the first answer.
    pub fn ready(mut self) -> Result<RunningRegistry, String> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let health = format!("{}/health", self.base_url);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.process.exit_status() {
                return Err(format!(
                    "wrangler dev exited ({status}) before serving; its output:\n{}",
                    self.process.output()
                ));
            }
            if let Ok(reply) = http.get(&health).send() {
                if reply.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "wrangler dev did not serve {health} within 90 s; its output:\n{}",
                    self.process.output()
                ));
            }
            // Poll interval while workerd starts; nothing to await instead.
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(RunningRegistry {
            name: "workerd".into(),
            base_url: self.base_url,
            list_key: self.list_key,
            guard: Guard::Child {
                process: self.process,
                _dir: Some(self.dir),
            },
        })
    }
}

/// Starts `wrangler dev` without waiting for it, so several can start at
/// once. Call from a thread that outlives the process: the child is killed
/// when the thread that started it ends (`PR_SET_PDEATHSIG`).
pub fn spawn_wrangler_dev(profile: Profile) -> Result<StartingWorker, String> {
    spawn_wrangler_dev_with(profile, WorkerOptions::default())
}

/// More of a Worker under test than its [`Profile`]: extra vars and secrets,
/// the signing key (random when `None`), and `--test-scheduled` (wrangler
/// then serves `GET /__scheduled?cron=…`, which runs the `scheduled` handler
/// and answers once it has finished).
#[derive(Default)]
pub struct WorkerOptions {
    pub vars: Vec<(String, String)>,
    /// Written to `.dev.vars` beside the signing key.
    pub secrets: Vec<(String, String)>,
    pub key: Option<SigningKey>,
    pub test_scheduled: bool,
    /// wrangler's `--log-level` (`warn` when `None`); `log` shows the Worker's `console.log`.
    pub log_level: Option<&'static str>,
}

/// [`spawn_wrangler_dev`] with [`WorkerOptions`].
pub fn spawn_wrangler_dev_with(
    profile: Profile,
    options: WorkerOptions,
) -> Result<StartingWorker, String> {
    let entry = repository_root().join("build/index.js");
    if !entry.exists() {
        return Err(format!(
            "{} is missing; run `bash scripts/build-worker` first",
            entry.display()
        ));
    }
    let mut config = format!(
        "name = \"zajel-bootstrap-test\"\n\
         main = {entry:?}\n\
         compatibility_date = \"2026-04-20\"\n\
         [vars]\n\
         ENTRY_TTL_MS = \"{ttl}\"\n\
         REGISTRATION_POLICY = \"{policy}\"\n\
         MAX_ENTRIES = \"{max}\"\n\
         RATE_LIMIT_PER_MINUTE = \"{rate}\"\n\
         READ_RATE_LIMIT_PER_MINUTE = \"{read_rate}\"\n\
         MAX_ENTRIES_PER_NETWORK = \"{per_network}\"\n\
         ADMISSION_CHECK = \"{admission}\"\n\
         ADMISSION_TIMEOUT_MS = \"2000\"\n\
         RECHECK_INTERVAL_MS = \"{recheck}\"\n\
         ALLOW_PRIVATE_ENDPOINTS = \"{allow_private}\"\n\
         [[durable_objects.bindings]]\n\
         name = \"REGISTRY\"\n\
         class_name = \"RegistryObject\"\n\
         [[migrations]]\n\
         tag = \"v1\"\n\
         new_sqlite_classes = [\"RegistryObject\"]\n",
        entry = entry.display().to_string(),
        ttl = profile.ttl_ms,
        policy = profile.policy,
        max = profile.max_entries,
        rate = profile.rate_limit,
        read_rate = profile.read_rate_limit,
        per_network = profile.max_entries_per_network,
        admission = profile.admission,
        allow_private = profile.allow_private_endpoints,
        recheck = profile.recheck_interval_ms,
    );
    // The extra vars join the [vars] table, which the generated file ends
    // with once the bindings below are moved after it.
    let (vars_part, rest) = config
        .split_once("[[durable_objects.bindings]]")
        .map(|(a, b)| (a.to_string(), format!("[[durable_objects.bindings]]{b}")))
        .ok_or("generated wrangler.toml lost its binding")?;
    config = vars_part;
    for (name, value) in &options.vars {
        config.push_str(&format!("{name} = {value:?}\n"));
    }
    config.push_str(&rest);
    if options.test_scheduled {
        config.push_str("[triggers]\ncrons = [\"17 * * * *\"]\n");
    }
    let key = options.key.unwrap_or_else(random_key);
    let (starting, _) = spawn_wrangler_keyed(
        &config,
        &options.secrets,
        key,
        options.test_scheduled,
        options.log_level,
    )?;
    Ok(starting)
}

/// Starts this repository's wrangler (`node_modules`) on `config` (a
/// `wrangler.toml`) in a fresh directory, with `key` as
/// `BOOTSTRAP_SIGNING_KEY` and `secrets` in its `.dev.vars`.
fn spawn_wrangler_keyed(
    config: &str,
    secrets: &[(String, String)],
    key: SigningKey,
    test_scheduled: bool,
    log_level: Option<&'static str>,
) -> Result<(StartingWorker, SigningKey), String> {
    let wrangler = repository_root().join("node_modules/wrangler/bin/wrangler.js");
    if !wrangler.exists() {
        return Err(format!(
            "{} is missing; run `npm ci` first",
            wrangler.display()
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("wrangler.toml"), config).map_err(|e| e.to_string())?;
    let mut dev_vars = format!("BOOTSTRAP_SIGNING_KEY={}\n", keys::signing_key_to_hex(&key));
    for (name, value) in secrets {
        dev_vars.push_str(&format!("{name}={value}\n"));
    }
    std::fs::write(dir.path().join(".dev.vars"), dev_vars).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let inspector = free_port()?;
    let mut command = Command::new("node");
    command
        .arg(&wrangler)
        .arg("dev")
        .arg("--config")
        .arg(dir.path().join("wrangler.toml"))
        .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
        .args(["--inspector-port", &inspector.to_string()])
        .arg("--persist-to")
        .arg(dir.path().join("state"))
        .args(if test_scheduled {
            &["--test-scheduled"][..]
        } else {
            &[][..]
        })
        .args([
            "--log-level",
            log_level.unwrap_or("warn"),
            "--show-interactive-dev-session=false",
        ])
        .current_dir(dir.path())
        .env("WRANGLER_SEND_METRICS", "false")
        // No fetch of the `Request.cf` placeholder from workers.cloudflare.com.
        .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    let process = ChildProcess::spawn("wrangler dev", command)?;
    let list_key = key.verifying_key();
    Ok((
        StartingWorker {
            process,
            dir,
            base_url: format!("http://127.0.0.1:{port}"),
            list_key,
        },
        key,
    ))
}
