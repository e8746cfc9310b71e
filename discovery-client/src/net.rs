//! Network policy and error wording shared by the layers: which addresses a
//! candidate may point at (re-exported from `zajel_discovery_core::address`),
//! and how a failed connection is classified into a report [`Outcome`].

use std::error::Error as StdError;

use zajel_client_net::registry_http::RegistryHttpError;

use crate::report::Outcome;

pub use zajel_client_net::errors::error_chain;
pub use zajel_discovery_core::address::{host_is_private, is_private};

/// Classifies a failed connection or request by walking its error chain.
pub fn classify(error: &(dyn StdError + 'static)) -> Outcome {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    let mut text = String::new();
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset => {
                    return Outcome::Refused
                }
                std::io::ErrorKind::TimedOut => return Outcome::TimedOut,
                _ => {}
            }
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Outcome::TlsFailure;
        }
        if let Some(http) = e.downcast_ref::<RegistryHttpError>() {
            if http.is_timeout() {
                return Outcome::TimedOut;
            }
        }
        text.push_str(&e.to_string().to_ascii_lowercase());
        text.push(' ');
        current = e.source();
    }
    classify_text(&text)
}

/// Classifies an error from its words (for libraries whose errors carry no types).
pub fn classify_text(text: &str) -> Outcome {
    let text = text.to_ascii_lowercase();
    if text.contains("connection refused") || text.contains("connection reset") {
        Outcome::Refused
    } else if text.contains("timed out") || text.contains("timeout") {
        Outcome::TimedOut
    } else if text.contains("certificate")
        || text.contains("tls")
        || text.contains("handshake")
        || text.contains("invalid peer")
        || text.contains("unknownissuer")
    {
        Outcome::TlsFailure
    } else if text.contains("dns error")
        || text.contains("failed to lookup")
        || text.contains("name or service not known")
        || text.contains("no address")
    {
        Outcome::DnsFailure
    } else {
        Outcome::Error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_are_told_apart_from_timeouts() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Outcome::Refused);
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(classify(&timeout), Outcome::TimedOut);
        assert_eq!(
            classify_text("invalid peer certificate: UnknownIssuer"),
            Outcome::TlsFailure
        );
        assert_eq!(
            classify_text("dns error: failed to lookup address"),
            Outcome::DnsFailure
        );
    }
}
