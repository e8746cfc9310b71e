//! Network policy and error wording shared by the layers: which addresses a
//! candidate may point at, and how a failed connection is classified into a
//! report [`Outcome`].

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zajel_client_net::registry_http::RegistryHttpError;

use crate::report::Outcome;

pub use zajel_client_net::errors::error_chain;

/// Whether an address is loopback, private, link-local, unspecified or
/// otherwise not on the public internet (refused unless allowed).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64.0.0/10
}

/// Whether a URL host names a private address by itself (an IP literal or
/// `localhost`), before any name resolution.
pub fn host_is_private(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(v4) => is_private(IpAddr::V4(*v4)),
        url::Host::Ipv6(v6) => is_private(IpAddr::V6(*v6)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

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
    fn private_and_public_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
        assert!(host_is_private(&url::Host::Domain("LocalHost.")));
        assert!(host_is_private(&url::Host::Domain("a.localhost")));
        assert!(!host_is_private(&url::Host::Domain("relay.example")));
    }

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
