//! Pairing codes and the sharing codes that carry them.
//!
//! A [`PairingCode`] is exactly six characters from [`ALPHABET`]
//! (`ABCDEFGHJKLMNPQRSTUVWXYZ23456789`: no `I`, `O`, `0` or `1`), compared
//! case-sensitively as Zajel's server does. Codes are drawn by the caller, who
//! passes six random bytes to [`PairingCode::from_random_bytes`]; this crate
//! has no randomness of its own.
//!
//! Pairing public keys are standard base64 of 32-byte X25519 keys
//! ([`decode_x25519_public_key`], [`encode_x25519_public_key`]); the keys two
//! paired peers derive from them are in [`crate::peer_keys`].
//!
//! Sharing codes ([`SharingCode`]):
//!
//! * `zajel://<CODE>` is what Zajel's app puts in its QR code.
//! * `zajel://<CODE>?server=<URL>` is our extension (the VoIP plan asks that
//!   shared codes carry the signaling server so contacts can meet when
//!   discovery is blocked). The URL is percent-encoded like JavaScript's
//!   `encodeURIComponent` and must be a `ws`, `wss`, `http` or `https` URL
//!   with a host (see [`crate::endpoint::validate_endpoint`]). Other query
//!   parameters are ignored, so more can be added later, and a `#fragment`
//!   or one trailing `/` after the code is tolerated. A query was chosen
//!   because it leaves the code where it always was and is the form URI
//!   parsers already split off; **but** Zajel's current app does not parse
//!   the URI: its scanner takes everything after `zajel://` and requires it
//!   to be exactly 6 characters, so it refuses a code that carries a server
//!   ("Please enter a valid 6-character code"). No single string can both
//!   carry a server and satisfy that scanner. Producers that must serve
//!   old apps show the plain form ([`SharingCode::plain`], whose
//!   [`SharingCode::to_uri`] has no query) and give the server separately.
//!
//! Device links ([`DeviceLink`]): `zajel-link://<code>:<x25519 public key
//! base64>:<server url>`, the server URL percent-encoded as Zajel's app does
//! (Dart's `Uri.encodeComponent`); like Zajel's web client, parsing also
//! accepts an unencoded URL, since everything after the second `:` is the URL.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

use crate::endpoint::{self, EndpointError};

/// The 32 characters a pairing code is made of.
pub const ALPHABET: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// The length of every pairing code.
pub const CODE_LEN: usize = 6;
/// The prefix of a sharing code (Zajel's QR code).
pub const SHARE_PREFIX: &str = "zajel://";
/// The prefix of a device link.
pub const LINK_PREFIX: &str = "zajel-link://";
/// The query parameter of a sharing code that carries the signaling URL (our extension).
pub const SERVER_PARAM: &str = "server";

const ALPHABET_BYTES: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Why a pairing code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingCodeError {
    /// Not exactly [`CODE_LEN`] characters (the count is of characters).
    #[error("Invalid pairing code format: expected 6 characters, got {0}")]
    Length(usize),
    /// The character at `position` (1-based) is not in [`ALPHABET`].
    #[error(
        "Invalid pairing code format: character {position} is not one of ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    )]
    Character { position: usize },
}

/// A valid pairing code: six characters of [`ALPHABET`].
///
/// Serialises as its string; deserialising validates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairingCode([u8; CODE_LEN]);

impl PairingCode {
    /// Parses a code exactly as given: case-sensitive, no trimming.
    pub fn parse(text: &str) -> Result<Self, PairingCodeError> {
        let count = text.chars().count();
        if count != CODE_LEN {
            return Err(PairingCodeError::Length(count));
        }
        let mut code = [0u8; CODE_LEN];
        for (index, ch) in text.chars().enumerate() {
            code[index] = u8::try_from(ch)
                .ok()
                .filter(|byte| ALPHABET_BYTES.contains(byte))
                .ok_or(PairingCodeError::Character {
                    position: index + 1,
                })?;
        }
        Ok(Self(code))
    }

    /// Whether `text` is a valid code.
    pub fn is_valid(text: &str) -> bool {
        Self::parse(text).is_ok()
    }

    /// A code drawn from six random bytes supplied by the caller (use a
    /// CSPRNG). Each byte picks `ALPHABET[byte % 32]`; since 32 divides 256
    /// this is exactly uniform, with no rejection sampling needed.
    pub fn from_random_bytes(bytes: [u8; CODE_LEN]) -> Self {
        Self(bytes.map(|byte| ALPHABET_BYTES[usize::from(byte % 32)]))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Every byte is ASCII from ALPHABET, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The code's six ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; CODE_LEN] {
        &self.0
    }
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingCode({:?})", self.as_str())
    }
}

impl FromStr for PairingCode {
    type Err = PairingCodeError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<&str> for PairingCode {
    type Error = PairingCodeError;
    fn try_from(text: &str) -> Result<Self, Self::Error> {
        Self::parse(text)
    }
}

impl TryFrom<String> for PairingCode {
    type Error = PairingCodeError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<PairingCode> for String {
    fn from(code: PairingCode) -> Self {
        code.as_str().to_string()
    }
}

impl AsRef<str> for PairingCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for PairingCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for PairingCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for PairingCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PairingCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Standard base64 that accepts input with or without `=` padding (Zajel's
/// server accepts both) and still refuses non-canonical trailing bits.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a pairing public key: standard base64 (padding optional) of
/// exactly 32 bytes. Any 32 bytes are a usable X25519 public key.
pub fn decode_x25519_public_key(text: &str) -> Option<[u8; 32]> {
    let bytes = BASE64_LENIENT.decode(text).ok()?;
    bytes.as_slice().try_into().ok()
}

/// Standard base64 (padded) of a pairing public key.
pub fn encode_x25519_public_key(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// Why a sharing code or device link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharingCodeError {
    /// The text does not start with the expected scheme.
    #[error("sharing code must start with {expected}")]
    Scheme { expected: &'static str },
    /// The code part is not a valid pairing code.
    #[error("{0}")]
    Code(#[from] PairingCodeError),
    /// The server URL is not valid percent-encoding of UTF-8 text.
    #[error("server URL is not valid percent-encoded UTF-8")]
    ServerEncoding,
    /// The server URL is not an acceptable signaling endpoint.
    #[error("server URL refused: {0}")]
    Server(EndpointError),
    /// The sharing code names more than one server.
    #[error("sharing code carries more than one server")]
    DuplicateServer,
    /// A device link without its three `:`-separated parts.
    #[error("device link must be zajel-link://<code>:<public key>:<server url>")]
    LinkFormat,
    /// A device link whose key is not standard base64 of 32 bytes.
    #[error("device link public key is not standard base64 of 32 bytes")]
    PublicKey,
}

/// A shared pairing code, optionally with the signaling server to meet on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharingCode {
    pub code: PairingCode,
    /// The signaling URL (as given, checked by
    /// [`crate::endpoint::validate_endpoint`]); `None` in Zajel's own form.
    pub server: Option<String>,
}

impl SharingCode {
    /// Zajel's form, `zajel://<CODE>`, which every app understands.
    pub fn plain(code: PairingCode) -> Self {
        Self { code, server: None }
    }

    /// A code with the server to meet on (the URL is checked).
    pub fn with_server(code: PairingCode, server: &str) -> Result<Self, SharingCodeError> {
        endpoint::validate_endpoint(server).map_err(SharingCodeError::Server)?;
        Ok(Self {
            code,
            server: Some(server.to_string()),
        })
    }

    /// Parses `zajel://<CODE>` or `zajel://<CODE>?server=<percent-encoded
    /// URL>`. The scheme is matched case-insensitively and surrounding
    /// whitespace ignored; the code is case-sensitive.
    pub fn parse(text: &str) -> Result<Self, SharingCodeError> {
        let rest = strip_prefix_ignore_case(text.trim(), SHARE_PREFIX).ok_or(
            SharingCodeError::Scheme {
                expected: SHARE_PREFIX,
            },
        )?;
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (code_part, query) = match rest.split_once('?') {
            Some((code_part, query)) => (code_part, Some(query)),
            None => (rest, None),
        };
        let code_part = code_part.strip_suffix('/').unwrap_or(code_part);
        let code = PairingCode::parse(code_part)?;
        let mut server = None;
        for pair in query.into_iter().flat_map(|query| query.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != SERVER_PARAM {
                continue;
            }
            if server.is_some() {
                return Err(SharingCodeError::DuplicateServer);
            }
            let url = percent_decode(value).ok_or(SharingCodeError::ServerEncoding)?;
            endpoint::validate_endpoint(&url).map_err(SharingCodeError::Server)?;
            server = Some(url);
        }
        Ok(Self { code, server })
    }

    /// Parses what a person typed or pasted: a bare code or a sharing URI
    /// (surrounding whitespace ignored).
    pub fn from_user_input(text: &str) -> Result<Self, SharingCodeError> {
        let text = text.trim();
        if strip_prefix_ignore_case(text, SHARE_PREFIX).is_some() {
            Self::parse(text)
        } else if text.contains("://") {
            Err(SharingCodeError::Scheme {
                expected: SHARE_PREFIX,
            })
        } else {
            Ok(Self::plain(PairingCode::parse(text)?))
        }
    }

    /// `zajel://<CODE>`, plus `?server=<percent-encoded URL>` when there is a server.
    pub fn to_uri(&self) -> String {
        match &self.server {
            None => format!("{SHARE_PREFIX}{}", self.code),
            Some(server) => format!(
                "{SHARE_PREFIX}{}?{SERVER_PARAM}={}",
                self.code,
                percent_encode(server)
            ),
        }
    }

    /// The WebSocket URL to connect to for the server, if any
    /// (`https` → `wss`, `http` → `ws`).
    pub fn signaling_url(&self) -> Option<Result<Url, EndpointError>> {
        self.server.as_deref().map(endpoint::signaling_url)
    }
}

impl fmt::Display for SharingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

impl FromStr for SharingCode {
    type Err = SharingCodeError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// A device-link invitation: `zajel-link://<code>:<public key>:<server url>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceLink {
    /// The link code (same alphabet and length as a pairing code).
    pub code: PairingCode,
    /// The linking device's ephemeral X25519 public key.
    pub public_key: [u8; 32],
    /// The signaling URL, decoded (checked by [`crate::endpoint::validate_endpoint`]).
    pub server: String,
}

impl DeviceLink {
    /// Builds a link, checking the server URL.
    pub fn new(
        code: PairingCode,
        public_key: [u8; 32],
        server: &str,
    ) -> Result<Self, SharingCodeError> {
        endpoint::validate_endpoint(server).map_err(SharingCodeError::Server)?;
        Ok(Self {
            code,
            public_key,
            server: server.to_string(),
        })
    }

    /// Parses a device link. The server part is percent-decoded (an
    /// unencoded URL decodes to itself, as with `decodeURIComponent`).
    pub fn parse(text: &str) -> Result<Self, SharingCodeError> {
        let rest =
            strip_prefix_ignore_case(text.trim(), LINK_PREFIX).ok_or(SharingCodeError::Scheme {
                expected: LINK_PREFIX,
            })?;
        let (code, rest) = rest.split_once(':').ok_or(SharingCodeError::LinkFormat)?;
        let (key, server) = rest.split_once(':').ok_or(SharingCodeError::LinkFormat)?;
        let code = PairingCode::parse(code)?;
        let public_key = decode_x25519_public_key(key).ok_or(SharingCodeError::PublicKey)?;
        let server = percent_decode(server).ok_or(SharingCodeError::ServerEncoding)?;
        endpoint::validate_endpoint(&server).map_err(SharingCodeError::Server)?;
        Ok(Self {
            code,
            public_key,
            server,
        })
    }

    /// The public key as standard base64.
    pub fn public_key_base64(&self) -> String {
        encode_x25519_public_key(&self.public_key)
    }

    /// `zajel-link://<code>:<base64 key>:<percent-encoded server>`, as Zajel's app writes it.
    pub fn to_uri(&self) -> String {
        format!(
            "{LINK_PREFIX}{}:{}:{}",
            self.code,
            self.public_key_base64(),
            percent_encode(&self.server)
        )
    }
}

impl fmt::Display for DeviceLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

impl FromStr for DeviceLink {
    type Err = SharingCodeError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// `text` without an ASCII `prefix` matched case-insensitively.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        // The prefix is ASCII, so its end is a character boundary.
        text.get(prefix.len()..)
    } else {
        None
    }
}

/// Percent-encodes like JavaScript's `encodeURIComponent` (and Dart's
/// `Uri.encodeComponent`): everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
pub fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// Decodes `%XX` escapes (other characters pass through, `+` included);
/// `None` for a malformed escape or a result that is not UTF-8, where
/// `decodeURIComponent` would throw.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = hex_value(*bytes.get(i + 1)?)?;
            let low = hex_value(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    #[test]
    fn alphabet_has_32_unambiguous_characters() {
        assert_eq!(ALPHABET.len(), 32);
        assert_eq!(ALPHABET.as_bytes(), ALPHABET_BYTES);
        for refused in ['I', 'O', '0', '1'] {
            assert!(!ALPHABET.contains(refused));
        }
        let mut sorted = ALPHABET_BYTES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 32);
    }

    #[test]
    fn parses_valid_codes() {
        for ok in ["ABCDEF", "234567", "ZZ9988", "HJKLMN", "A2B3C4"] {
            let parsed = code(ok);
            assert_eq!(parsed.as_str(), ok);
            assert_eq!(parsed.to_string(), ok);
            assert_eq!(parsed, ok);
            assert!(PairingCode::is_valid(ok));
        }
    }

    #[test]
    fn refuses_wrong_lengths() {
        assert_eq!(PairingCode::parse(""), Err(PairingCodeError::Length(0)));
        assert_eq!(
            PairingCode::parse("ABCDE"),
            Err(PairingCodeError::Length(5))
        );
        assert_eq!(
            PairingCode::parse("ABCDEFG"),
            Err(PairingCodeError::Length(7))
        );
        assert_eq!(
            PairingCode::parse(" ABCDEF"),
            Err(PairingCodeError::Length(7))
        );
        assert_eq!(
            PairingCode::parse(&"A".repeat(100_000)),
            Err(PairingCodeError::Length(100_000))
        );
    }

    #[test]
    fn refuses_characters_outside_the_alphabet() {
        for (bad, position) in [
            ("abcdef", 1),
            ("ABCDEf", 6),
            ("ABCDEI", 6),
            ("OBCDEF", 1),
            ("AB0DEF", 3),
            ("ABC1EF", 4),
            ("ABC EF", 4),
            ("ABC-EF", 4),
        ] {
            assert_eq!(
                PairingCode::parse(bad),
                Err(PairingCodeError::Character { position }),
                "{bad}"
            );
        }
        assert_eq!(
            PairingCode::parse("abcdef").unwrap_err().to_string(),
            "Invalid pairing code format: character 1 is not one of ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        );
        assert_eq!(
            PairingCode::parse("ABC").unwrap_err().to_string(),
            "Invalid pairing code format: expected 6 characters, got 3"
        );
    }

    #[test]
    fn multi_byte_input_never_panics() {
        // Six characters but more than six bytes.
        assert_eq!(
            PairingCode::parse("ABCDEÉ"),
            Err(PairingCodeError::Character { position: 6 })
        );
        assert_eq!(
            PairingCode::parse("ÄBCDEF"),
            Err(PairingCodeError::Character { position: 1 })
        );
        // Six bytes but fewer characters.
        assert_eq!(PairingCode::parse("ÉÉÉ"), Err(PairingCodeError::Length(3)));
        assert_eq!(
            PairingCode::parse("🦀🦀🦀🦀🦀🦀"),
            Err(PairingCodeError::Character { position: 1 })
        );
        // A full-width letter is not ASCII.
        assert!(PairingCode::parse("ＡBCDEF").is_err());
    }

    #[test]
    fn random_bytes_map_uniformly_into_the_alphabet() {
        assert_eq!(PairingCode::from_random_bytes([0; 6]), "AAAAAA");
        assert_eq!(PairingCode::from_random_bytes([31; 6]), "999999");
        assert_eq!(
            PairingCode::from_random_bytes([32, 33, 255, 7, 8, 224]),
            "AB9HJA"
        );
        let mut counts = [0usize; 32];
        for byte in 0..=255u8 {
            let c = PairingCode::from_random_bytes([byte; 6]);
            assert!(PairingCode::is_valid(c.as_str()));
            let index = ALPHABET.find(&c.as_str()[..1]).unwrap();
            counts[index] += 1;
        }
        assert!(counts.iter().all(|&n| n == 8));
    }

    #[test]
    fn serde_uses_the_string_and_validates() {
        let c = code("ABC234");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""ABC234""#);
        assert_eq!(
            serde_json::from_str::<PairingCode>(r#""ABC234""#).unwrap(),
            c
        );
        assert!(serde_json::from_str::<PairingCode>(r#""abc234""#).is_err());
        assert!(serde_json::from_str::<PairingCode>("123456").is_err());
        assert!(serde_json::from_str::<PairingCode>("null").is_err());
        assert_eq!(format!("{c:?}"), r#"PairingCode("ABC234")"#);
        assert_eq!("ABC234".parse::<PairingCode>().unwrap(), c);
        assert_eq!(String::from(c), "ABC234");
    }

    #[test]
    fn x25519_keys_are_32_bytes_of_standard_base64() {
        let key = [9u8; 32];
        let text = encode_x25519_public_key(&key);
        assert!(text.ends_with('='));
        assert_eq!(decode_x25519_public_key(&text), Some(key));
        assert_eq!(
            decode_x25519_public_key(text.trim_end_matches('=')),
            Some(key)
        );
        assert_eq!(decode_x25519_public_key(&STANDARD.encode([1u8; 31])), None);
        assert_eq!(decode_x25519_public_key(&STANDARD.encode([1u8; 33])), None);
        assert_eq!(decode_x25519_public_key(""), None);
        assert_eq!(decode_x25519_public_key("not base64!"), None);
        let url_safe = text.replace('+', "-").replace('/', "_");
        if url_safe != text {
            assert_eq!(decode_x25519_public_key(&url_safe), None);
        }
        assert_eq!(decode_x25519_public_key(&"_".repeat(43)), None);
    }

    #[test]
    fn plain_sharing_codes_round_trip() {
        let share = SharingCode::plain(code("ABC234"));
        assert_eq!(share.to_uri(), "zajel://ABC234");
        assert_eq!(SharingCode::parse("zajel://ABC234").unwrap(), share);
        assert_eq!(SharingCode::parse(" ZAJEL://ABC234/\n").unwrap(), share);
        assert_eq!(SharingCode::parse("zajel://ABC234#x").unwrap(), share);
        assert_eq!(SharingCode::parse("zajel://ABC234?other=1").unwrap(), share);
        assert_eq!(share.signaling_url(), None);
        assert_eq!(share.to_string().parse::<SharingCode>().unwrap(), share);
    }

    #[test]
    fn sharing_codes_carry_the_server_percent_encoded() {
        let share =
            SharingCode::with_server(code("XYZ789"), "wss://relay.example:8443/ws").unwrap();
        let uri = share.to_uri();
        assert_eq!(
            uri,
            "zajel://XYZ789?server=wss%3A%2F%2Frelay.example%3A8443%2Fws"
        );
        assert_eq!(SharingCode::parse(&uri).unwrap(), share);
        assert_eq!(
            share.signaling_url().unwrap().unwrap().as_str(),
            "wss://relay.example:8443/ws"
        );
        // Other parameters, before or after, are ignored.
        let parsed =
            SharingCode::parse("zajel://XYZ789?v=2&server=https%3A%2F%2Fr.example&x").unwrap();
        assert_eq!(parsed.server.as_deref(), Some("https://r.example"));
        assert_eq!(
            parsed.signaling_url().unwrap().unwrap().as_str(),
            "wss://r.example/"
        );
        // An unencoded URL is accepted when it has no '&' or '#'.
        let raw = SharingCode::parse("zajel://XYZ789?server=ws://10.0.0.1:9000").unwrap();
        assert_eq!(raw.server.as_deref(), Some("ws://10.0.0.1:9000"));
    }

    #[test]
    fn sharing_codes_refuse_bad_scheme_code_and_server() {
        assert_eq!(
            SharingCode::parse("https://ABC234"),
            Err(SharingCodeError::Scheme {
                expected: "zajel://"
            })
        );
        assert_eq!(
            SharingCode::parse("zajel:ABC234"),
            Err(SharingCodeError::Scheme {
                expected: "zajel://"
            })
        );
        assert_eq!(
            SharingCode::parse("").unwrap_err().to_string(),
            "sharing code must start with zajel://"
        );
        assert_eq!(
            SharingCode::parse("zajel://abc234"),
            Err(SharingCodeError::Code(PairingCodeError::Character {
                position: 1
            }))
        );
        assert_eq!(
            SharingCode::parse("zajel://"),
            Err(SharingCodeError::Code(PairingCodeError::Length(0)))
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234//"),
            Err(SharingCodeError::Code(PairingCodeError::Length(7)))
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=ftp%3A%2F%2Fx"),
            Err(SharingCodeError::Server(EndpointError::Scheme))
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server="),
            Err(SharingCodeError::Server(EndpointError::NotUrl))
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=wss%3A%2F%2Fu%3Ap%40h"),
            Err(SharingCodeError::Server(EndpointError::Credentials))
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=%ZZ"),
            Err(SharingCodeError::ServerEncoding)
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=wss%3A%2F%2Fa%FF"),
            Err(SharingCodeError::ServerEncoding)
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=%2"),
            Err(SharingCodeError::ServerEncoding)
        );
        assert_eq!(
            SharingCode::parse("zajel://ABC234?server=wss%3A%2F%2Fa&server=wss%3A%2F%2Fb"),
            Err(SharingCodeError::DuplicateServer)
        );
        assert!(SharingCode::with_server(code("ABC234"), "relay.example").is_err());
        // Multi-byte text right after the scheme must not panic.
        assert!(SharingCode::parse("zajel://ÉÉÉÉÉÉ").is_err());
        assert!(SharingCode::parse("zaje").is_err());
        assert!(SharingCode::parse("zajelé//ABC234").is_err());
    }

    #[test]
    fn user_input_takes_a_bare_code_or_a_uri() {
        assert_eq!(
            SharingCode::from_user_input(" ABC234 ").unwrap(),
            SharingCode::plain(code("ABC234"))
        );
        assert_eq!(
            SharingCode::from_user_input("zajel://ABC234?server=wss%3A%2F%2Fa.example")
                .unwrap()
                .server
                .as_deref(),
            Some("wss://a.example")
        );
        assert!(matches!(
            SharingCode::from_user_input("https://ABC234"),
            Err(SharingCodeError::Scheme { .. })
        ));
        assert!(SharingCode::from_user_input("abc234").is_err());
    }

    #[test]
    fn device_links_round_trip_in_zajels_format() {
        let link = DeviceLink::new(code("LNK234"), [7u8; 32], "wss://signal.example/ws").unwrap();
        let uri = link.to_uri();
        assert_eq!(
            uri,
            format!(
                "zajel-link://LNK234:{}:wss%3A%2F%2Fsignal.example%2Fws",
                STANDARD.encode([7u8; 32])
            )
        );
        assert_eq!(DeviceLink::parse(&uri).unwrap(), link);
        assert_eq!(uri.parse::<DeviceLink>().unwrap().to_string(), uri);
        // Unencoded server URLs (colons included) are read like Zajel's web client does.
        let raw = format!(
            "zajel-link://LNK234:{}:wss://signal.example:8443/ws",
            STANDARD.encode([7u8; 32])
        );
        assert_eq!(
            DeviceLink::parse(&raw).unwrap().server,
            "wss://signal.example:8443/ws"
        );
    }

    #[test]
    fn device_links_refuse_malformed_parts() {
        let key = STANDARD.encode([7u8; 32]);
        assert_eq!(
            DeviceLink::parse(&format!("zajel://LNK234:{key}:wss%3A%2F%2Fa")),
            Err(SharingCodeError::Scheme {
                expected: "zajel-link://"
            })
        );
        assert_eq!(
            DeviceLink::parse("zajel-link://LNK234"),
            Err(SharingCodeError::LinkFormat)
        );
        assert_eq!(
            DeviceLink::parse(&format!("zajel-link://LNK234:{key}")),
            Err(SharingCodeError::LinkFormat)
        );
        assert_eq!(
            DeviceLink::parse(&format!("zajel-link://lnk234:{key}:wss%3A%2F%2Fa")),
            Err(SharingCodeError::Code(PairingCodeError::Character {
                position: 1
            }))
        );
        assert_eq!(
            DeviceLink::parse("zajel-link://LNK234:AAAA:wss%3A%2F%2Fa"),
            Err(SharingCodeError::PublicKey)
        );
        assert_eq!(
            DeviceLink::parse(&format!("zajel-link://LNK234:{key}:")),
            Err(SharingCodeError::Server(EndpointError::NotUrl))
        );
        assert_eq!(
            DeviceLink::parse(&format!("zajel-link://LNK234:{key}:%E0%A4")),
            Err(SharingCodeError::ServerEncoding)
        );
        assert!(DeviceLink::parse("zajel-link://ÉÉ:ÉÉ:ÉÉ").is_err());
    }

    #[test]
    fn percent_encoding_matches_encode_uri_component() {
        assert_eq!(
            percent_encode("wss://a.example/p?q=1&r=é ~*'()!"),
            "wss%3A%2F%2Fa.example%2Fp%3Fq%3D1%26r%3D%C3%A9%20~*'()!"
        );
        let text = "ws://[::1]:9/x y+z%";
        assert_eq!(percent_decode(&percent_encode(text)).unwrap(), text);
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        assert_eq!(percent_decode("%41%6a").unwrap(), "Aj");
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%C3"), None);
    }
}
