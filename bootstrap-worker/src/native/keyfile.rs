//! Signing-key files: a 32-byte Ed25519 seed as 64 hex characters.
//!
//! The same text is the Worker secret `BOOTSTRAP_SIGNING_KEY`, so one key
//! can sign for both hosts. Files are created with mode 0600 and never
//! overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zajel_wire::keys;

/// Creates a new key file at `path` (refusing to replace one) and returns the key.
pub fn generate(path: &Path) -> Result<SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|error| format!("no randomness: {error}"))?;
    let key = SigningKey::from_bytes(&seed);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    file.write_all(format!("{}\n", keys::signing_key_to_hex(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok(key)
}

/// Reads a key file written by [`generate`] (or by hand: 64 hex characters).
pub fn read(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read signing key file {}: {error}", path.display()))?;
    keys::signing_key_from_hex(&text)
        .map_err(|error| format!("signing key file {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_private_read_back_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.seed");
        let key = generate(&path).unwrap();
        assert_eq!(read(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(generate(&path).unwrap_err().contains("cannot create"));
        assert_eq!(read(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn truncated_or_garbage_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.seed");
        std::fs::write(&path, "abcd").unwrap();
        let error = read(&path).unwrap_err();
        assert!(error.contains("64 hex"), "{error}");
        assert!(read(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
