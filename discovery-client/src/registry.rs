//! Layer 1: `GET /servers` from a registry, verified against the pinned
//! registry keys (signature over the exact body, `timestamp` within 5
//! minutes). With a key pinned, an unsigned or badly signed list is refused
//! and none of its servers is used. The checks themselves are
//! `zajel_discovery_core::registry_list`; this module fetches, through the
//! shared registry client `zajel_client_net::registry_http`.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use url::Url;
use zajel_client_net::registry_http::{RegistryHttp, RegistryHttpConfig, RegistryHttpError};
use zajel_discovery_core::registry_list;
use zajel_wire::signature::LIST_SIGNATURE_HEADER;

use crate::net;
use crate::report::Outcome;

pub use zajel_discovery_core::registry_list::{servers_url, RegistryResult, MAX_BODY_BYTES};

/// Why the registry HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    /// The HTTP client refused its configuration (the message is the whole chain).
    #[error("{}", net::error_chain(.0))]
    Build(#[source] RegistryHttpError),
}

impl RegistryClientError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Build(_) => "registry_client",
        }
    }
}

/// An HTTP client for registries (rustls, no proxy from the environment).
pub fn http_client(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<RegistryHttp, RegistryClientError> {
    RegistryHttp::new(RegistryHttpConfig::new(
        tls,
        timeout,
        concat!("zajel-discover/", env!("CARGO_PKG_VERSION")),
    ))
    .map_err(RegistryClientError::Build)
}

/// Fetches and checks one registry's list.
pub async fn fetch(
    client: &RegistryHttp,
    registry: &Url,
    pinned: &[VerifyingKey],
    now_ms: u64,
) -> RegistryResult {
    let url = servers_url(registry);
    let answer = match client.get(&url).await {
        Ok(answer) => answer,
        Err(error) => {
            return RegistryResult::failed(net::classify(&error), net::error_chain(&error));
        }
    };
    if !(200..300).contains(&answer.status()) {
        return RegistryResult::failed(
            Outcome::Protocol,
            format!("HTTP status {}", answer.status_line()),
        );
    }
    let signature = answer.header(LIST_SIGNATURE_HEADER).map(str::to_string);
    let body = match answer.body(MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(RegistryHttpError::TooLarge { .. }) => {
            return RegistryResult::failed(
                Outcome::Protocol,
                format!("list larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        Err(error) => {
            return RegistryResult::failed(net::classify(&error), net::error_chain(&error))
        }
    };
    registry_list::check_list(signature.as_deref(), &body, pinned, now_ms)
}
