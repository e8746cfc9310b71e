//! TURN credentials in the time-limited shared-secret scheme ("TURN REST
//! API", coturn's `use-auth-secret`): the username is
//! `<expiry unix seconds>:<name>` and the password is
//! `base64(HMAC-SHA1(secret, username))`. The relay hands these out to
//! registered clients; its embedded TURN server (or an external coturn with
//! the same `static-auth-secret`) checks them without any shared state.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// One issued credential pair.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredential {
    pub username: String,
    pub credential: String,
    /// Unix seconds after which the TURN server refuses it.
    pub expires_at: u64,
}

impl std::fmt::Debug for TurnCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCredential")
            .field("username", &self.username)
            .field("credential", &"<hidden>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a presented username cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("TURN username is not <expiry>:<name>")]
    Format,
    #[error("TURN credential expired")]
    Expired,
}

/// The password for `username` under `secret`.
pub fn password_for(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Issues a credential for `name` valid for `ttl_secs` from `now_secs`.
/// `name` should not identify the user to the TURN server beyond what the
/// relay already knows (the relay uses a random tag, not the pairing code).
pub fn issue(secret: &[u8], name: &str, now_secs: u64, ttl_secs: u64) -> TurnCredential {
    let expires_at = now_secs.saturating_add(ttl_secs);
    let username = format!("{expires_at}:{name}");
    let credential = password_for(secret, &username);
    TurnCredential {
        username,
        credential,
        expires_at,
    }
}

/// The password a TURN server should expect for `username`, or why the
/// username is refused (malformed, or its expiry has passed).
pub fn check_username(
    secret: &[u8],
    username: &str,
    now_secs: u64,
) -> Result<String, CredentialError> {
    let (expiry, _name) = username.split_once(':').ok_or(CredentialError::Format)?;
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::Format);
    }
    let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Format)?;
    if expiry < now_secs {
        return Err(CredentialError::Expired);
    }
    Ok(password_for(secret, username))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_turn_rest_api_scheme() {
        // HMAC-SHA1("secret", "1700000000:alice"), computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        assert_eq!(
            password_for(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn issued_credentials_check_until_they_expire() {
        let issued = issue(b"s3cret", "tag", 1_000, 600);
        assert_eq!(issued.username, "1600:tag");
        assert_eq!(issued.expires_at, 1_600);
        assert_eq!(
            check_username(b"s3cret", &issued.username, 1_600).as_deref(),
            Ok(issued.credential.as_str())
        );
        assert_eq!(
            check_username(b"s3cret", &issued.username, 1_601),
            Err(CredentialError::Expired)
        );
        assert_ne!(
            check_username(b"other", &issued.username, 1_000).unwrap(),
            issued.credential
        );
        assert!(!format!("{issued:?}").contains(&issued.credential));
    }

    #[test]
    fn malformed_usernames_are_refused() {
        for bad in [
            "",
            "alice",
            ":alice",
            "-5:alice",
            "12a:alice",
            "99999999999999999999999:x",
        ] {
            assert_eq!(
                check_username(b"s", bad, 0),
                Err(CredentialError::Format),
                "{bad}"
            );
        }
    }
}
