//! Registry hosts under test: the native server in-process or as a child
//! process, and the Worker under `wrangler dev` (the real workerd runtime).
//! Each is started with a [`Profile`] and a fresh signing key, and stopped
//! when dropped.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
}

impl Profile {
    /// Signed policy, generous limits.
    pub const SIGNED: Profile = Profile {
        policy: "signed",
        ttl_ms: 60_000,
        rate_limit: 1_000_000,
        max_entries: 1_000_000,
    };
    /// Open policy, generous limits.
    pub const OPEN: Profile = Profile {
        policy: "open",
        ttl_ms: 60_000,
        rate_limit: 1_000_000,
        max_entries: 1_000_000,
    };
}

/// A fresh random signing key.
pub fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("randomness");
    SigningKey::from_bytes(&seed)
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
    Child(ChildProcess, Option<tempfile::TempDir>),
}

impl RunningRegistry {
    /// The child process behind this registry, if it runs as one.
    pub fn child(&mut self) -> Option<&mut ChildProcess> {
        match &mut self.guard {
            Guard::Child(child, _) => Some(child),
            Guard::InProcess { .. } => None,
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

fn in_process(
    profile: Profile,
    store: SqliteStore,
    data: Option<tempfile::TempDir>,
) -> RunningRegistry {
    let key = random_key();
    let listener = StdListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let address = listener.local_addr().expect("address");
    let registry = Registry::new(
        SqliteStore::in_memory().expect("store"),
        config(profile, &key),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = server::serve(listener, registry, async {
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
    let key = bootstrap_worker::native::keyfile::read(key_file)?;
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
        .args(["--max-entries", &profile.max_entries.to_string()]);
    let mut child = ChildProcess::spawn("bootstrap-worker serve", command)?;
    let base_url = child.wait_for(Duration::from_secs(20), |line| {
        line.strip_prefix("listening on ").map(str::to_string)
    })?;
    Ok(RunningRegistry {
        name: "native-child".into(),
        base_url,
        list_key: key.verifying_key(),
        guard: Guard::Child(child, None),
    })
}

/// Writes a seed file for a child registry.
pub fn write_key_file(dir: &Path, key: &SigningKey) -> PathBuf {
    let path = dir.join("registry.seed");
    std::fs::write(&path, keys::signing_key_to_hex(key)).expect("write key");
    path
}
