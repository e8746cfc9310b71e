//! The probe's pairing identity: an X25519 key pair kept in its state folder (or a fresh one
//! in memory with `--ephemeral-identity`), whose public key goes into `register` as Zajel's
//! clients send theirs, and the per-peer keys derived from it ([`PeerAuth`]).
//!
//! The secret is kept in `identity.key` in the state folder, in the toolkit's one key-file
//! format (`zajel_client_net::keyfile`: 32 bytes as 64 hex characters and a newline, mode
//! 0600, created on first use, never overwritten); those 32 bytes are the X25519 secret. The
//! state folder is `--state-dir`, else `$CALL_PROBE_STATE_DIR`, else
//! `$XDG_STATE_HOME/zajel/call-probe`, else `~/.local/state/zajel/call-probe`
//! ([`default_state_dir`]). The secret is never logged.

use std::path::{Path, PathBuf};

use zajel_client_net::keyfile::{self, KeyFileError};
use zajel_wire::pairing::encode_x25519_public_key;
use zajel_wire::peer_keys::{self, PeerKeyError, SharedKey};

use crate::error::ErrorKind;

/// The key file's name in the state folder.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("identity key: {0}")]
    KeyFile(#[from] KeyFileError),
    #[error("no state folder: give --state-dir or set HOME")]
    NoStateDir,
}

impl IdentityError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::KeyFile(KeyFileError::Random(_)) => ErrorKind::NoRandomness,
            _ => ErrorKind::StateDir,
        }
    }
}

/// An X25519 identity key pair.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity of a 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            public: peer_keys::public_key(&secret),
            secret,
        }
    }

    /// A fresh identity in memory (nothing read or written).
    pub fn ephemeral() -> Result<Self, IdentityError> {
        Ok(Self::from_secret(keyfile::random_key()?.to_bytes()))
    }

    /// The identity kept in `state_dir` (created, with the folder, on first use). Returns it
    /// and whether it was just created.
    pub fn load_or_create(state_dir: &Path) -> Result<(Self, bool), IdentityError> {
        create_state_dir(state_dir)?;
        let (seed, created) = keyfile::load_or_create(&state_dir.join(IDENTITY_FILE))?;
        Ok((Self::from_secret(seed.to_bytes()), created))
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The public key as Zajel sends it (standard base64 of 32 bytes).
    pub fn public_base64(&self) -> String {
        encode_x25519_public_key(&self.public)
    }

    /// The pair's session key with `peer` (§5.3: what hourly tokens are made from), or
    /// `None` when `peer` is no usable X25519 key.
    pub fn session_key(&self, peer: [u8; 32]) -> Option<SharedKey> {
        peer_keys::session_key(&self.secret, &peer).ok()
    }

    /// The keys shared with the peer whose public key is `peer`.
    pub fn peer_auth(
        &self,
        peer: [u8; 32],
        authenticated_before: bool,
    ) -> Result<PeerAuth, PeerKeyError> {
        let session = peer_keys::session_key(&self.secret, &peer)?;
        Ok(PeerAuth {
            own_key: self.public,
            peer_key: peer,
            mac_key: peer_keys::call_auth_key(&session),
            authenticated_before,
        })
    }
}

/// What a call needs to authenticate a paired peer: both public keys, the pair's call-auth
/// MAC key, and whether a call with this peer was ever authenticated (then a call without
/// `auth` is a downgrade).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerAuth {
    pub own_key: [u8; 32],
    pub peer_key: [u8; 32],
    pub mac_key: SharedKey,
    pub authenticated_before: bool,
}

impl PeerAuth {
    /// The peer's public key as Zajel sends it.
    pub fn peer_key_base64(&self) -> String {
        encode_x25519_public_key(&self.peer_key)
    }
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("peer_key", &self.peer_key_base64())
            .field("authenticated_before", &self.authenticated_before)
            .finish_non_exhaustive()
    }
}

/// The default state folder: `$CALL_PROBE_STATE_DIR`, else `$XDG_STATE_HOME/zajel/call-probe`,
/// else `~/.local/state/zajel/call-probe`.
pub fn default_state_dir() -> Result<PathBuf, IdentityError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("CALL_PROBE_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return Ok(PathBuf::from(state).join("zajel").join("call-probe"));
    }
    var("HOME")
        .map(|home| PathBuf::from(home).join(".local/state/zajel/call-probe"))
        .ok_or(IdentityError::NoStateDir)
}

/// Creates the state folder (mode 0700 for a new one).
fn create_state_dir(path: &Path) -> Result<(), IdentityError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .map_err(|source| IdentityError::StateDir {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_created_once_privately_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested/state");
        let (identity, created) = Identity::load_or_create(&state).unwrap();
        assert!(created);
        let (again, created) = Identity::load_or_create(&state).unwrap();
        assert!(!created);
        assert_eq!(identity.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(state.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The public key is the X25519 key of the stored secret, not random bytes.
        let text = std::fs::read_to_string(state.join(IDENTITY_FILE)).unwrap();
        let seed: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        let secret: [u8; 32] = seed.try_into().unwrap();
        assert_eq!(peer_keys::public_key(&secret), identity.public_key());
        assert!(!format!("{identity:?}").contains(&text[..64]));
    }

    #[test]
    fn a_corrupt_identity_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "garbage").unwrap();
        let error = Identity::load_or_create(dir.path()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::StateDir);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(IDENTITY_FILE)).unwrap(),
            "garbage"
        );
    }

    #[test]
    fn two_identities_derive_the_same_peer_keys() {
        let alice = Identity::ephemeral().unwrap();
        let bob = Identity::ephemeral().unwrap();
        let at_alice = alice.peer_auth(bob.public_key(), false).unwrap();
        let at_bob = bob.peer_auth(alice.public_key(), true).unwrap();
        assert_eq!(at_alice.mac_key, at_bob.mac_key);
        assert_eq!(at_alice.peer_key, bob.public_key());
        assert!(at_bob.authenticated_before);
        assert!(alice.peer_auth([0u8; 32], false).is_err());
    }
}
