//! Ed25519 key files: a 32-byte seed as 64 hex characters and a newline.
//!
//! One format for every key the toolkit keeps on disk: the registry's signing
//! key (the same text is the Worker secret `BOOTSTRAP_SIGNING_KEY`, so one key
//! can sign for both hosts) and a relay's persistent identity. Files are
//! created with mode 0600 and never overwritten ([`load_or_create`] warns
//! about an existing file others can read). The seed is never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zajel_wire::keys;

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a 64-hex-character Ed25519 seed: {reason}")]
    Format { path: String, reason: String },
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// A fresh random key (not written anywhere).
pub fn random_key() -> Result<SigningKey, KeyFileError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| KeyFileError::Random(error.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates a new key file at `path` (mode 0600, refusing to replace one) and returns the key.
pub fn generate(path: &Path) -> Result<SigningKey, KeyFileError> {
    let key = random_key()?;
    write_new(path, &key)?;
    Ok(key)
}

/// Reads a key file written by [`generate`] (or by hand: 64 hex characters).
pub fn read(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

/// Reads the key file at `path`, creating it (mode 0600) if it does not exist.
/// Returns the key and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyFileError> {
    match read(path) {
        Ok(key) => {
            warn_if_readable_by_others(path);
            Ok((key, false))
        }
        Err(KeyFileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok((generate(path)?, true))
        }
        Err(error) => Err(error),
    }
}

fn parse(path: &Path, text: &str) -> Result<SigningKey, KeyFileError> {
    keys::signing_key_from_hex(text).map_err(|error| KeyFileError::Format {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

fn write_new(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let shown = || path.display().to_string();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| KeyFileError::Create {
        path: shown(),
        source,
    })?;
    file.write_all(format!("{}\n", keys::signing_key_to_hex(key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: shown(),
            source,
        })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key file is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            0o600
        }
    }

    #[test]
    fn generated_files_are_private_read_back_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.seed");
        let key = generate(&path).unwrap();
        assert_eq!(read(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(mode(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", keys::signing_key_to_hex(&key)));
        let refused = generate(&path).unwrap_err();
        assert!(matches!(refused, KeyFileError::Create { .. }), "{refused}");
        assert!(refused.to_string().contains("cannot create"), "{refused}");
        assert_eq!(read(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn load_or_create_creates_once_then_reads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.to_bytes(), again.to_bytes());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn truncated_or_garbage_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.seed");
        std::fs::write(&path, "abcd").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(error.contains("64 hex"), "{error}");
        assert!(error.contains("64-hex"), "{error}");
        // A bad file is never replaced by load_or_create.
        let error = load_or_create(&path).unwrap_err();
        assert!(matches!(error, KeyFileError::Format { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abcd");
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }
}
