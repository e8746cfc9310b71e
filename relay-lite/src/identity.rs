//! The relay's persistent Ed25519 identity: a 32-byte seed stored as 64 hex
//! characters (the registry's key-file format), created with mode 0600 on
//! first use and never overwritten. `serverId` is `ed25519:<base64 key>`.
//! The seed is never logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zajel_wire::keys;

/// Why an identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create identity file {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("identity file {path} is not a 64-hex-character Ed25519 seed: {reason}")]
    Format { path: String, reason: String },
    #[error("no randomness for a new identity: {0}")]
    Random(String),
}

/// A fresh random key.
pub fn random_key() -> Result<SigningKey, IdentityError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| IdentityError::Random(error.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads the identity at `path`, creating it (mode 0600) if it does not exist.
/// Returns the key and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), IdentityError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = keys::signing_key_from_hex(&text).map_err(|error| IdentityError::Format {
                path: shown.clone(),
                reason: error.to_string(),
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(path = %shown, "identity file is readable by others; chmod 600 it");
                    }
                }
            }
            Ok((key, false))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key()?;
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let create = |source| IdentityError::Create {
                path: shown.clone(),
                source,
            };
            let mut file = options.open(path).map_err(create)?;
            file.write_all(format!("{}\n", keys::signing_key_to_hex(&key)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(create)?;
            Ok((key, true))
        }
        Err(source) => Err(IdentityError::Read {
            path: shown,
            source,
        }),
    }
}

/// `ed25519:<standard base64 of the public key>`.
pub fn server_id(key: &SigningKey) -> String {
    keys::server_id_for(&key.verifying_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("relay-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.key");
        let (key, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(key.to_bytes(), again.to_bytes());
        assert!(server_id(&key).starts_with("ed25519:"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "nope").unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("64-hex"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
