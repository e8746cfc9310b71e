//! Layers 3 and 4 on disk: the local store of servers that worked (the
//! cache) and of servers that paired contacts shared (referrals), one JSON
//! file in the user's data directory. The model and its rules (entries,
//! bounds, expiry, revocations) are `zajel_discovery_core::cache`; this
//! module owns the file: its path, its format version
//! (`{"version":1,"servers":…,"referrals":…,"revocations":…}`), reading it
//! and writing it.
//!
//! Writes are atomic (temporary file, fsync, rename, fsync of the directory).
//! A corrupt, truncated or oversized file is moved aside with a warning and
//! discovery goes on with an empty store. The store is bounded
//! ([`MAX_SERVERS`], [`MAX_REFERRALS`]) and entries expire
//! ([`SERVER_EXPIRY_MS`], [`REFERRAL_EXPIRY_MS`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use zajel_discovery_core::cache::{
    prune, CachedServer, Referral, StoreData, MAX_REFERRALS, MAX_REVOCATIONS, MAX_SERVERS,
    REFERRAL_EXPIRY_MS, SERVER_EXPIRY_MS,
};

/// Environment variable overriding the store's path.
pub const PATH_ENV: &str = "ZAJEL_DISCOVERY_CACHE";
/// Current file format version.
pub const FORMAT_VERSION: u32 = 1;
/// Largest store file read; a larger one is treated as corrupt.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Why the store could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDirectory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be serialised as JSON.
    #[error(transparent)]
    Serialize(#[from] serde_json::Error),
    /// The temporary file could not be written, synced or renamed over the store.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CreateDirectory { .. } => "store_create_directory",
            Self::Serialize(_) => "store_serialize",
            Self::Write { .. } => "store_write",
        }
    }
}

/// The whole store file: its format version and the data.
#[derive(Serialize, Deserialize)]
struct StoreFile<D> {
    version: u32,
    #[serde(flatten)]
    data: D,
}

/// The store at one path.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// The default store path: `$ZAJEL_DISCOVERY_CACHE`, else
/// `$XDG_DATA_HOME/zajel/discovery.json`, else `~/.local/share/zajel/discovery.json`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(PATH_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        })?;
    Some(data.join("zajel").join("discovery.json"))
}

impl Store {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the store, pruned of expired entries. Never fails: a missing
    /// file is an empty store; an unreadable, corrupt or oversized one is
    /// moved aside (`<name>.corrupt-<ms>`) and reported in the warnings.
    pub fn load(&self, now_ms: u64) -> (StoreData, Vec<String>) {
        let mut warnings = Vec::new();
        let empty = StoreData::default();
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (empty, warnings),
            Err(e) => {
                warnings.push(format!("cache {}: cannot read: {e}", self.path.display()));
                return (empty, warnings);
            }
        };
        let problem = if metadata.len() > MAX_FILE_BYTES {
            Some(format!("larger than {MAX_FILE_BYTES} bytes"))
        } else {
            match std::fs::read(&self.path) {
                Ok(bytes) => match serde_json::from_slice::<StoreFile<StoreData>>(&bytes) {
                    Ok(file) if file.version == FORMAT_VERSION => {
                        let mut data = file.data;
                        prune(&mut data, now_ms);
                        return (data, warnings);
                    }
                    Ok(file) => Some(format!("unknown format version {}", file.version)),
                    Err(e) => Some(format!("corrupt ({e})")),
                },
                Err(e) => Some(format!("cannot read: {e}")),
            }
        };
        let problem = problem.unwrap_or_default();
        let aside = self.aside_path(now_ms);
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => warnings.push(format!(
                "cache {} is {problem}; moved aside to {} and starting empty",
                self.path.display(),
                aside.display()
            )),
            Err(e) => warnings.push(format!(
                "cache {} is {problem}; could not move it aside ({e}); starting empty",
                self.path.display()
            )),
        }
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        (empty, warnings)
    }

    fn aside_path(&self, now_ms: u64) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "discovery.json".into());
        self.path.with_file_name(format!("{name}.corrupt-{now_ms}"))
    }

    /// Writes the store atomically: temporary file in the same directory,
    /// fsync, rename over the old file, fsync of the directory.
    pub fn save(&self, data: &StoreData) -> Result<(), StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDirectory {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut bytes = serde_json::to_vec_pretty(&StoreFile {
            version: FORMAT_VERSION,
            data,
        })?;
        bytes.push(b'\n');
        let mut suffix = [0u8; 6];
        let _ = getrandom::fill(&mut suffix);
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        let result = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &self.path)?;
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
            Ok::<(), std::io::Error>(())
        })();
        if let Err(source) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Write {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Loads, changes and saves the store.
    pub fn update(
        &self,
        now_ms: u64,
        change: impl FnOnce(&mut StoreData),
    ) -> Result<Vec<String>, StoreError> {
        let (mut data, warnings) = self.load(now_ms);
        change(&mut data);
        prune(&mut data, now_ms);
        self.save(&data)?;
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_discovery_core::txt::Revocation;
    use zajel_wire::pairing::PairingCode;

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn a_store_under_a_file_cannot_be_written_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let under_file = Store::new(file.join("discovery.json"));
        let error = under_file.update(NOW, |_| {}).unwrap_err();
        assert_eq!(error.kind(), "store_create_directory");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot create {}: ", file.display())),
            "{error}"
        );

        // The store's path is a directory: the rename over it fails.
        let occupied = dir.path().join("occupied");
        std::fs::create_dir(&occupied).unwrap();
        std::fs::write(occupied.join("keep"), b"x").unwrap();
        let error = Store::new(&occupied)
            .save(&StoreData::default())
            .unwrap_err();
        assert_eq!(error.kind(), "store_write");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot write {}: ", occupied.display())),
            "{error}"
        );
    }

    #[test]
    fn saves_and_loads_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("sub/discovery.json"));
        store
            .update(NOW, |data| {
                data.record_ok("wss://a.example/", true, None, Some(3.0), NOW);
                data.record_ok(
                    "wss://old.example/",
                    false,
                    None,
                    None,
                    NOW - SERVER_EXPIRY_MS - 1,
                );
                data.add_referral(
                    "wss://b.example/",
                    PairingCode::parse("ABC234").unwrap(),
                    NOW,
                );
            })
            .unwrap();
        let (data, warnings) = store.load(NOW);
        assert!(warnings.is_empty());
        assert_eq!(data.servers.len(), 1);
        assert_eq!(data.servers[0].url, "wss://a.example/");
        assert_eq!(data.referrals.len(), 1);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_truncated_and_huge_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("discovery.json");
        let store = Store::new(&path);
        store
            .update(NOW, |d| {
                d.record_ok("wss://a.example/", true, None, None, NOW)
            })
            .unwrap();
        let full = std::fs::read(&path).unwrap();
        for (i, bad) in [
            full[..full.len() / 2].to_vec(),
            b"\x00\xff garbage".to_vec(),
            br#"{"version":99,"servers":[],"referrals":[]}"#.to_vec(),
            vec![b' '; MAX_FILE_BYTES as usize + 1],
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(&path, &bad).unwrap();
            let (data, warnings) = store.load(NOW + i as u64);
            assert!(data.servers.is_empty());
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("moved aside"), "{}", warnings[0]);
            assert!(!path.exists());
            assert!(dir
                .path()
                .join(format!("discovery.json.corrupt-{}", NOW + i as u64))
                .exists());
        }
    }

    #[test]
    fn revocations_are_kept_in_the_file_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("discovery.json"));
        let now_secs = NOW / 1000;
        let revocation = |id: &str, expires| Revocation {
            server_id: id.into(),
            expires,
        };
        store
            .update(NOW, |data| {
                data.add_revocation(revocation("ed25519:a", now_secs + 600));
                data.add_revocation(revocation("ed25519:b", now_secs + 10));
            })
            .unwrap();
        let (data, warnings) = store.load(NOW);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            data.revocations_in_force(NOW),
            [
                revocation("ed25519:a", now_secs + 600),
                revocation("ed25519:b", now_secs + 10)
            ]
        );
        // Expired ones are dropped on the next write; older files without the field load.
        store.update(NOW + 10_000, |_| {}).unwrap();
        assert_eq!(store.load(NOW + 10_000).0.revocations.len(), 1);
        std::fs::write(
            dir.path().join("old.json"),
            r#"{"version":1,"servers":[],"referrals":[]}"#,
        )
        .unwrap();
        let (old, warnings) = Store::new(dir.path().join("old.json")).load(NOW);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(old.revocations.is_empty());
    }

    /// A file written by the client before the model moved to
    /// discovery-core (version 1) loads as it was and is written back to
    /// the same bytes.
    #[test]
    fn a_version_1_file_written_before_the_move_loads_and_is_written_back_unchanged() {
        const WRITTEN: &str = include_str!("../testdata/discovery-cache-v1.json");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("discovery.json");
        std::fs::write(&path, WRITTEN).unwrap();
        let store = Store::new(&path);
        let (data, warnings) = store.load(NOW);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            data.servers,
            [
                CachedServer {
                    url: "wss://b.example:8443/ws".into(),
                    verified: false,
                    server_id: None,
                    last_ok_ms: NOW - 1000,
                    last_fail_ms: None,
                    rtt_ms: None,
                },
                CachedServer {
                    url: "wss://a.example/".into(),
                    verified: true,
                    server_id: Some("ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into()),
                    last_ok_ms: NOW - 5000,
                    last_fail_ms: Some(NOW - 100),
                    rtt_ms: Some(12.5),
                },
            ]
        );
        assert_eq!(
            data.referrals,
            [Referral {
                url: "wss://c.example/".into(),
                code: PairingCode::parse("ABC234").unwrap(),
                added_ms: NOW - 2000,
            }]
        );
        assert_eq!(
            data.revocations,
            [Revocation {
                server_id: "ed25519:retired".into(),
                expires: NOW / 1000 + 3600,
            }]
        );
        store.update(NOW, |_| {}).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), WRITTEN);
    }
}
