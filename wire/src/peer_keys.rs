//! The keys two paired peers share, derived as Zajel's clients derive them
//! (`shared/reference/zajel-wire.md` §5.3), and the call-authentication key
//! that is our own extension.
//!
//! Each peer holds an X25519 identity key pair; pairing hands each side the
//! other's public key (`register`'s `publicKey`, `pair_matched`'s
//! `peerPublicKey`). From them:
//!
//! | item | value |
//! |---|---|
//! | session key ([`session_key`]) | 32 bytes of HKDF-SHA256(X25519(own secret, peer public), empty salt, info `"zajel_session"`) |
//! | daily points ([`daily_points`]) | `"day_"` + first 22 chars of base64url(SHA-256(K1 ‖ K2 ‖ UTF-8(`"zajel:daily:"` + `YYYY-MM-DD`))), K1 ≤ K2 the raw public keys sorted bytewise; for the UTC days of now −1 day, now, now +1 day |
//! | hourly tokens ([`hourly_tokens`]) | `"hr_"` + first 22 chars of base64url(HMAC-SHA256(session key, UTF-8(`"zajel:hourly:"` + `YYYY-MM-DDTHH`))); for the UTC hours of now −1 h, now, now +1 h |
//! | call-auth key ([`call_auth_key`], ours) | 32 bytes of HKDF-SHA256(session key, empty salt, info [`CALL_AUTH_INFO`] = `"zajel_call_auth_v1"`): the key of the `auth` MAC on call payloads ([`crate::call`]); a separate info string keeps it apart from every other use of the session key |
//!
//! A peer public key of low order (for which X25519 gives the all-zero
//! secret, whatever our own key) is refused ([`PeerKeyError::LowOrder`]):
//! it would give every peer the same, public, session key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

/// HKDF info of the session key (Zajel's).
pub const SESSION_INFO: &str = "zajel_session";
/// HKDF info of the call-authentication key (ours).
pub const CALL_AUTH_INFO: &str = "zajel_call_auth_v1";

/// A 32-byte key shared by two peers.
pub type SharedKey = [u8; 32];

/// Why no key could be derived with a peer's public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerKeyError {
    /// The peer's key is of low order: the shared secret would be all zeros.
    #[error("the peer's public key is of low order (no shared secret)")]
    LowOrder,
}

/// The X25519 public key of a 32-byte secret (clamped as X25519 does).
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// The session key with a peer: HKDF-SHA256(X25519(own secret, peer public),
/// empty salt, info `"zajel_session"`), 32 bytes.
pub fn session_key(
    own_secret: &[u8; 32],
    peer_public: &[u8; 32],
) -> Result<SharedKey, PeerKeyError> {
    let shared = StaticSecret::from(*own_secret).diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return Err(PeerKeyError::LowOrder);
    }
    Ok(hkdf32(shared.as_bytes(), SESSION_INFO))
}

/// The call-authentication key of a session key (info [`CALL_AUTH_INFO`]).
pub fn call_auth_key(session_key: &SharedKey) -> SharedKey {
    hkdf32(session_key, CALL_AUTH_INFO)
}

fn hkdf32(ikm: &[u8], info: &str) -> SharedKey {
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(None, ikm).expand(info.as_bytes(), &mut out);
    out
}

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The three daily meeting points of two peers at `now_ms` (Unix ms): for the
/// UTC days before, of and after now, in that order.
pub fn daily_points(key_a: &[u8; 32], key_b: &[u8; 32], now_ms: i64) -> [String; 3] {
    let (k1, k2) = if key_a <= key_b {
        (key_a, key_b)
    } else {
        (key_b, key_a)
    };
    [-1i64, 0, 1].map(|offset| {
        let day = utc_date(now_ms + offset * DAY_MS);
        let mut hash = Sha256::new();
        hash.update(k1);
        hash.update(k2);
        hash.update(format!("zajel:daily:{day}").as_bytes());
        format!("day_{}", &URL_SAFE_NO_PAD.encode(hash.finalize())[..22])
    })
}

/// The three hourly tokens of a session key at `now_ms` (Unix ms): for the
/// UTC hours before, of and after now, in that order.
pub fn hourly_tokens(session_key: &SharedKey, now_ms: i64) -> [String; 3] {
    [-1i64, 0, 1].map(|offset| {
        let at = now_ms + offset * HOUR_MS;
        let hour = at.rem_euclid(DAY_MS) / HOUR_MS;
        let label = format!("zajel:hourly:{}T{hour:02}", utc_date(at));
        let mut mac = Hmac::<Sha256>::new_from_slice(session_key).expect("HMAC takes any key");
        mac.update(label.as_bytes());
        format!(
            "hr_{}",
            &URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())[..22]
        )
    })
}

/// `YYYY-MM-DD` of the UTC day holding `ms` (Unix ms; proleptic Gregorian).
pub fn utc_date(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{year:04}-{month:02}-{day:02}")
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    // Vectors computed independently with Python's `cryptography` (48.0):
    // secrets a = 01 02 … 20, b = 80 81 … 9f.
    fn secrets() -> ([u8; 32], [u8; 32]) {
        let a: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        let b: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
        (a, b)
    }
    const A_PUBLIC: &str = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c";
    const B_PUBLIC: &str = "493e82fc74464a59268817623d2053c5eb8e2cc4a988b4fee179ec6b010d531d";
    const SESSION: &str = "2d653477bbc77274a89a7aa9da10c2fefc6e84a394e78cb6a374c7104b6f6356";
    const CALL_AUTH: &str = "03885204ed0aeddbd947baaa8c44a5aa0ea3d5ba947b7ab9dc87d574c821a08a";
    /// 2026-12-02T03:42:57Z.
    const NOW_MS: i64 = 1_796_182_977_000;

    #[test]
    fn the_session_key_matches_an_independent_implementation_from_both_sides() {
        let (a, b) = secrets();
        assert_eq!(public_key(&a), hex(A_PUBLIC));
        assert_eq!(public_key(&b), hex(B_PUBLIC));
        let from_a = session_key(&a, &hex(B_PUBLIC)).unwrap();
        let from_b = session_key(&b, &hex(A_PUBLIC)).unwrap();
        assert_eq!(from_a, hex(SESSION));
        assert_eq!(from_b, from_a);
        assert_eq!(call_auth_key(&from_a), hex(CALL_AUTH));
        assert_ne!(call_auth_key(&from_a), from_a);
    }

    #[test]
    fn a_low_order_peer_key_gives_no_session_key() {
        let (a, _) = secrets();
        assert_eq!(session_key(&a, &[0u8; 32]), Err(PeerKeyError::LowOrder));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(session_key(&a, &one), Err(PeerKeyError::LowOrder));
    }

    #[test]
    fn daily_points_and_hourly_tokens_match_an_independent_implementation() {
        let points = daily_points(&hex(A_PUBLIC), &hex(B_PUBLIC), NOW_MS);
        assert_eq!(
            points,
            [
                "day_OO4P3tnpZHqVQi4IVtNMC-",
                "day_42EYS-0KtkK92fjqHZmQaf",
                "day_3n_FH1YWufO6sKSxC7moAA"
            ]
        );
        // The order of the two keys does not matter.
        assert_eq!(daily_points(&hex(B_PUBLIC), &hex(A_PUBLIC), NOW_MS), points);
        assert_eq!(
            hourly_tokens(&hex(SESSION), NOW_MS),
            [
                "hr_7xOzPe-M3bpgjXgdHOSJud",
                "hr_1-96-sMD9WHICtogZmMcPF",
                "hr_zDFFDLkoFXyNa5drH4X5Xa"
            ]
        );
    }

    #[test]
    fn utc_dates_cross_months_years_and_leap_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        assert_eq!(utc_date(NOW_MS), "2026-12-02");
        // 2024-02-29T12:00Z and 2000-03-01T00:00Z.
        assert_eq!(utc_date(1_709_208_000_000), "2024-02-29");
        assert_eq!(utc_date(951_868_800_000), "2000-03-01");
        assert_eq!(utc_date(951_868_800_000 - 1), "2000-02-29");
        // 2026-12-31T23:59:59.999Z → the next day is in 2027.
        assert_eq!(utc_date(1_798_761_599_999 + 1), "2027-01-01");
    }
}
