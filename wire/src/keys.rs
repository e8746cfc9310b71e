//! Ed25519 keys as they travel on the wire.
//!
//! A server's identity is its Ed25519 public key. The registry carries it twice:
//! as `publicKey` (standard base64 of the 32 bytes) and inside `serverId`
//! (`ed25519:` + the same base64). Signing keys are 32-byte seeds, stored and
//! passed around as 64 hex characters (the form of the Worker secret
//! `BOOTSTRAP_SIGNING_KEY`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The prefix of every `serverId`.
pub const SERVER_ID_PREFIX: &str = "ed25519:";

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not standard base64")]
    Base64,
    #[error("expected 32 bytes, got {0}")]
    Length(usize),
    #[error("not a valid Ed25519 public key")]
    NotOnCurve,
    #[error("serverId must start with \"ed25519:\"")]
    Prefix,
    #[error("signing key must be 64 hex characters (a 32-byte Ed25519 seed)")]
    SeedFormat,
}

/// Standard base64 of a public key, the form clients pin and `publicKey` carries.
pub fn public_key_to_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses standard base64 of exactly 32 bytes into a public key.
pub fn public_key_from_base64(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = STANDARD.decode(text).map_err(|_| KeyError::Base64)?;
    let array: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    VerifyingKey::from_bytes(&array).map_err(|_| KeyError::NotOnCurve)
}

/// `ed25519:<base64>` for a public key.
pub fn server_id_for(key: &VerifyingKey) -> String {
    format!("{SERVER_ID_PREFIX}{}", public_key_to_base64(key))
}

/// Parses a `serverId` into the public key it names.
pub fn public_key_from_server_id(server_id: &str) -> Result<VerifyingKey, KeyError> {
    let encoded = server_id
        .strip_prefix(SERVER_ID_PREFIX)
        .ok_or(KeyError::Prefix)?;
    public_key_from_base64(encoded)
}

/// Reads a 32-byte seed written as 64 hex characters (surrounding whitespace ignored).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, KeyError> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::SeedFormat);
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| KeyError::SeedFormat)?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a seed as 64 lowercase hex characters.
pub fn signing_key_to_hex(key: &SigningKey) -> String {
    key.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn server_id_round_trips() {
        let public = key().verifying_key();
        let id = server_id_for(&public);
        assert!(id.starts_with("ed25519:"));
        assert_eq!(public_key_from_server_id(&id).unwrap(), public);
    }

    #[test]
    fn rejects_wrong_lengths_prefixes_and_encodings() {
        assert_eq!(
            public_key_from_base64(&STANDARD.encode([1u8; 31])),
            Err(KeyError::Length(31))
        );
        assert_eq!(
            public_key_from_base64(&STANDARD.encode([1u8; 33])),
            Err(KeyError::Length(33))
        );
        assert_eq!(public_key_from_base64("not base64!"), Err(KeyError::Base64));
        // URL-safe alphabet is not the standard one.
        assert_eq!(public_key_from_base64("____"), Err(KeyError::Base64));
        let public = public_key_to_base64(&key().verifying_key());
        assert_eq!(
            public_key_from_server_id(&format!("x25519:{public}")),
            Err(KeyError::Prefix)
        );
        assert_eq!(public_key_from_server_id(&public), Err(KeyError::Prefix));
    }

    #[test]
    fn seed_hex_round_trips_and_rejects_garbage() {
        let hex = signing_key_to_hex(&key());
        assert_eq!(hex.len(), 64);
        assert_eq!(
            signing_key_from_hex(&format!(" {hex}\n"))
                .unwrap()
                .to_bytes(),
            key().to_bytes()
        );
        assert_eq!(
            signing_key_from_hex(&hex[..63]).err(),
            Some(KeyError::SeedFormat)
        );
        assert_eq!(
            signing_key_from_hex(&format!("{}zz", &hex[..62])).err(),
            Some(KeyError::SeedFormat)
        );
        // A multi-byte character must not make slicing panic.
        let tricky = format!("é{}", &hex[..62]);
        assert_eq!(
            signing_key_from_hex(&tricky).err(),
            Some(KeyError::SeedFormat)
        );
    }
}
