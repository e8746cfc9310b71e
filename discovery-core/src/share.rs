//! Layer 5: `zajel://` sharing links and their QR codes.
//!
//! A [`ShareLink`] extends Zajel's `zajel://<CODE>` additively:
//!
//! ```text
//! zajel://<CODE>?server=<url>&also=<url>&also=<url>&rk=<registry key>
//! ```
//!
//! `server` is the first server, exactly as `zajel_wire::pairing::SharingCode`
//! writes and reads it (so that parser still understands our links); `also`
//! carries more servers; `rk` is the registry's public key in unpadded
//! base64url (43 characters), which lets the receiver check it pins the same
//! registry. Every URL is percent-encoded like `encodeURIComponent`. Plain
//! `zajel://<CODE>` still parses (no servers).
//!
//! Rendering and reading QR codes is not here (discovery-client's `share`
//! does it with image crates).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use zajel_wire::endpoint::{self, EndpointError};
use zajel_wire::pairing::{
    percent_decode, percent_encode, PairingCode, SharingCode, SharingCodeError,
};

/// Query parameter carrying the second and further servers.
pub const ALSO_PARAM: &str = "also";
/// Query parameter carrying the registry key.
pub const REGISTRY_KEY_PARAM: &str = "rk";
/// Most servers one link carries.
pub const MAX_SERVERS: usize = 8;

/// Why a link could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("at most {MAX_SERVERS} servers per link")]
    TooManyServersForLink,
    #[error("server {server}: {reason}")]
    Server {
        server: String,
        reason: EndpointError,
    },
    /// The `zajel://<CODE>[?server=…]` part, as the wire parser refused it.
    #[error("{0}")]
    Code(#[from] SharingCodeError),
    #[error("also: bad percent-encoding")]
    AlsoEncoding,
    #[error("also {url}: {reason}")]
    Also { url: String, reason: EndpointError },
    #[error("more than one rk")]
    DuplicateRegistryKey,
    #[error("rk: not unpadded base64url")]
    RegistryKeyEncoding,
    #[error("rk: not 32 bytes")]
    RegistryKeyLength,
    #[error("rk: not an Ed25519 key")]
    RegistryKeyInvalid,
    #[error("more than {MAX_SERVERS} servers")]
    TooManyServers,
}

/// A pairing code with the servers to meet on and the registry key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareLink {
    pub code: PairingCode,
    /// Server URLs as given (each checked with `validate_endpoint`).
    pub servers: Vec<String>,
    /// The registry's public key, standard base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_key: Option<String>,
}

impl ShareLink {
    /// Builds a link, checking the URLs.
    pub fn new(
        code: PairingCode,
        servers: &[String],
        registry_key: Option<&VerifyingKey>,
    ) -> Result<Self, ShareError> {
        if servers.len() > MAX_SERVERS {
            return Err(ShareError::TooManyServersForLink);
        }
        for server in servers {
            endpoint::validate_endpoint(server).map_err(|reason| ShareError::Server {
                server: server.clone(),
                reason,
            })?;
        }
        Ok(Self {
            code,
            servers: servers.to_vec(),
            registry_key: registry_key.map(zajel_wire::keys::public_key_to_base64),
        })
    }

    /// The URI (plain `zajel://CODE` when there is nothing to add).
    pub fn to_uri(&self) -> String {
        let first = self.servers.first().map(|server| SharingCode {
            code: self.code,
            server: Some(server.clone()),
        });
        let mut uri = first.unwrap_or(SharingCode::plain(self.code)).to_uri();
        let mut extra = Vec::new();
        for server in self.servers.iter().skip(1) {
            extra.push(format!("{ALSO_PARAM}={}", percent_encode(server)));
        }
        if let Some(key) = self
            .registry_key
            .as_deref()
            .and_then(|k| zajel_wire::keys::public_key_from_base64(k).ok())
        {
            extra.push(format!(
                "{REGISTRY_KEY_PARAM}={}",
                URL_SAFE_NO_PAD.encode(key.as_bytes())
            ));
        }
        if !extra.is_empty() {
            uri.push(if self.servers.is_empty() { '?' } else { '&' });
            uri.push_str(&extra.join("&"));
        }
        uri
    }

    /// Parses a link (or a bare pairing code typed by a person).
    pub fn parse(text: &str) -> Result<Self, ShareError> {
        let base = SharingCode::from_user_input(text)?;
        let mut servers: Vec<String> = base.server.into_iter().collect();
        let mut registry_key = None;
        let text = text.trim();
        let query = text
            .split_once('#')
            .map_or(text, |(before, _)| before)
            .split_once('?')
            .map(|(_, q)| q);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                ALSO_PARAM => {
                    let url = percent_decode(value).ok_or(ShareError::AlsoEncoding)?;
                    if let Err(reason) = endpoint::validate_endpoint(&url) {
                        return Err(ShareError::Also { url, reason });
                    }
                    servers.push(url);
                }
                REGISTRY_KEY_PARAM => {
                    if registry_key.is_some() {
                        return Err(ShareError::DuplicateRegistryKey);
                    }
                    let bytes = URL_SAFE_NO_PAD
                        .decode(value)
                        .map_err(|_| ShareError::RegistryKeyEncoding)?;
                    let array: [u8; 32] = bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| ShareError::RegistryKeyLength)?;
                    let key = VerifyingKey::from_bytes(&array)
                        .map_err(|_| ShareError::RegistryKeyInvalid)?;
                    registry_key = Some(zajel_wire::keys::public_key_to_base64(&key));
                }
                _ => {}
            }
        }
        if servers.len() > MAX_SERVERS {
            return Err(ShareError::TooManyServers);
        }
        Ok(Self {
            code: base.code,
            servers,
            registry_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> PairingCode {
        PairingCode::parse("ABC234").unwrap()
    }

    #[test]
    fn links_round_trip_and_stay_readable_by_the_wire_parser() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let link = ShareLink::new(
            code(),
            &[
                "wss://a.example/ws".to_string(),
                "https://b.example:8443".to_string(),
            ],
            Some(&key),
        )
        .unwrap();
        let uri = link.to_uri();
        assert!(uri.starts_with("zajel://ABC234?server=wss%3A%2F%2Fa.example%2Fws&also="));
        assert_eq!(ShareLink::parse(&uri).unwrap(), link);
        // Zajel's wire parser still reads the code and first server.
        let wire = SharingCode::parse(&uri).unwrap();
        assert_eq!(wire.server.as_deref(), Some("wss://a.example/ws"));
        // Plain codes and bare typed codes still work.
        let plain = ShareLink::parse("zajel://ABC234").unwrap();
        assert!(plain.servers.is_empty());
        assert_eq!(plain.to_uri(), "zajel://ABC234");
        assert_eq!(ShareLink::parse(" ABC234 ").unwrap(), plain);
        let key_only = ShareLink::new(code(), &[], Some(&key)).unwrap();
        assert_eq!(ShareLink::parse(&key_only.to_uri()).unwrap(), key_only);
    }

    #[test]
    fn bad_links_are_refused() {
        assert!(ShareLink::parse("zajel://abc234").is_err());
        assert!(ShareLink::parse("zajel://ABC234?also=ftp%3A%2F%2Fx").is_err());
        assert_eq!(
            ShareLink::parse("zajel://ABC234?rk=AAAA"),
            Err(ShareError::RegistryKeyLength)
        );
        assert!(matches!(
            ShareLink::parse("zajel://ABC234?also=ftp%3A%2F%2Fx"),
            Err(ShareError::Also { .. })
        ));
        assert!(ShareLink::parse("https://ABC234").is_err());
        let many = vec!["wss://a.example".to_string(); MAX_SERVERS + 1];
        assert_eq!(
            ShareLink::new(code(), &many, None),
            Err(ShareError::TooManyServersForLink)
        );
        assert_eq!(
            ShareError::TooManyServersForLink.to_string(),
            "at most 8 servers per link"
        );
    }
}
