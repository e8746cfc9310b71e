//! Signaling endpoints: the URL a server registers and clients connect to.
//!
//! The registry accepts `ws`, `wss`, `http` and `https` URLs with a host, at most
//! [`MAX_ENDPOINT_LEN`] characters. Clients connect over WebSocket, turning
//! `https://` into `wss://`, `http://` into `ws://` and a bare host into
//! `wss://host`, as Zajel's clients do.
//!
//! What a registry *lists* (and what clients may apply to what they read)
//! follows the stricter [`check_listed_endpoint`]: `ws`/`wss` only, a
//! canonical host, and no loopback or private hosts unless allowed; regions
//! follow [`check_region`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

/// Longest endpoint the registry stores.
pub const MAX_ENDPOINT_LEN: usize = 512;

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint is longer than {MAX_ENDPOINT_LEN} characters")]
    TooLong,
    #[error("endpoint is not a valid URL")]
    NotUrl,
    #[error("endpoint scheme must be ws, wss, http or https")]
    Scheme,
    #[error("endpoint has no host")]
    NoHost,
    #[error("endpoint must not carry credentials")]
    Credentials,
}

/// Checks an endpoint as the registry stores it (the text is kept as given).
pub fn validate_endpoint(endpoint: &str) -> Result<Url, EndpointError> {
    if endpoint.chars().count() > MAX_ENDPOINT_LEN {
        return Err(EndpointError::TooLong);
    }
    let url = Url::parse(endpoint).map_err(|_| EndpointError::NotUrl)?;
    if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
        return Err(EndpointError::Scheme);
    }
    match url.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(EndpointError::NoHost),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::Credentials);
    }
    Ok(url)
}

/// The WebSocket URL a client connects to for an endpoint or a bare host.
pub fn signaling_url(endpoint: &str) -> Result<Url, EndpointError> {
    let endpoint = endpoint.trim();
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("wss://{endpoint}")
    };
    let mut url = validate_endpoint(&with_scheme)?;
    let scheme = match url.scheme() {
        "https" => Some("wss"),
        "http" => Some("ws"),
        _ => None,
    };
    if let Some(scheme) = scheme {
        // Switching between special schemes of the same kind always succeeds.
        url.set_scheme(scheme).map_err(|_| EndpointError::Scheme)?;
    }
    Ok(url)
}

/// Longest region a registry stores, in characters.
pub const MAX_REGION_LEN: usize = 64;

/// Why an endpoint may not be listed (see [`check_listed_endpoint`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListedEndpointError {
    #[error("endpoint is longer than {MAX_ENDPOINT_LEN} characters")]
    TooLong,
    #[error("endpoint must be printable ASCII without spaces (IDNs as punycode)")]
    NotPrintableAscii,
    #[error("endpoint scheme must be ws:// or wss://")]
    Scheme,
    #[error("endpoint must not carry credentials")]
    Credentials,
    #[error("endpoint host is not a canonical DNS name, dotted-quad IPv4 or bracketed IPv6")]
    Host,
    #[error("endpoint port must be 1-65535 without leading zeros")]
    Port,
    #[error("endpoint must not carry a query or fragment")]
    QueryOrFragment,
    #[error("endpoint host is loopback, private, link-local, CGNAT, ULA or otherwise not public")]
    NotPublic,
}

impl ListedEndpointError {
    /// A stable machine-readable name of the refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NotPrintableAscii => "not_printable_ascii",
            Self::Scheme => "scheme",
            Self::Credentials => "credentials",
            Self::Host => "host",
            Self::Port => "port",
            Self::QueryOrFragment => "query_or_fragment",
            Self::NotPublic => "not_public",
        }
    }
}

/// The host of an endpoint that passed [`check_listed_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListedHost {
    /// A lowercase DNS name (whether it resolves to a public address is
    /// for whoever connects to check).
    Name(String),
    Ip(IpAddr),
}

/// The rule for endpoints a registry lists and clients use: stricter than
/// [`validate_endpoint`], which accepts anything a URL parser accepts.
///
/// * the text is printable ASCII (no spaces, control characters, newlines,
///   bidi overrides or raw non-ASCII: IDNs only as punycode), at most
///   [`MAX_ENDPOINT_LEN`] characters;
/// * `ws://` or `wss://` (lowercase), no credentials, no query or fragment;
/// * the host is canonical: a lowercase DNS name of valid labels (1–63 of
///   `a-z 0-9 -`, not starting or ending with `-`, at most 253 characters,
///   the last label not numeric or `0x…`, so `0x7f.1` and `2130706433` are
///   refused), a dotted quad exactly as it prints (no octal, hex or short
///   forms), or a bracketed IPv6 address in its canonical (RFC 5952) form;
/// * the port, when given, is 1–65535 without leading zeros;
/// * unless `allow_private`, the host is not a non-public address
///   ([`is_public_ip`]) nor `localhost`/`*.localhost`.
pub fn check_listed_endpoint(
    endpoint: &str,
    allow_private: bool,
) -> Result<(Url, ListedHost), ListedEndpointError> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(ListedEndpointError::TooLong);
    }
    if !endpoint.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ListedEndpointError::NotPrintableAscii);
    }
    let rest = endpoint
        .strip_prefix("wss://")
        .or_else(|| endpoint.strip_prefix("ws://"))
        .ok_or(ListedEndpointError::Scheme)?;
    if rest.contains(['?', '#']) {
        return Err(ListedEndpointError::QueryOrFragment);
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(ListedEndpointError::Credentials);
    }
    let (host_text, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inner, after) = bracketed.split_once(']').ok_or(ListedEndpointError::Host)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(ListedEndpointError::Port)?),
        };
        (inner, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port_text {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && !port.starts_with('0')
            && port.parse::<u32>().is_ok_and(|p| (1..=65_535).contains(&p));
        if !valid {
            return Err(ListedEndpointError::Port);
        }
    }
    let host = if authority.starts_with('[') {
        let address: Ipv6Addr = host_text.parse().map_err(|_| ListedEndpointError::Host)?;
        if address.to_string() != host_text {
            return Err(ListedEndpointError::Host);
        }
        ListedHost::Ip(IpAddr::V6(address))
    } else if host_text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let address: Ipv4Addr = host_text.parse().map_err(|_| ListedEndpointError::Host)?;
        if address.to_string() != host_text {
            return Err(ListedEndpointError::Host);
        }
        ListedHost::Ip(IpAddr::V4(address))
    } else if is_canonical_dns_name(host_text) {
        ListedHost::Name(host_text.to_string())
    } else {
        return Err(ListedEndpointError::Host);
    };
    if !allow_private && !host_is_public(&host) {
        return Err(ListedEndpointError::NotPublic);
    }
    let url = Url::parse(endpoint).map_err(|_| ListedEndpointError::Host)?;
    Ok((url, host))
}

fn host_is_public(host: &ListedHost) -> bool {
    match host {
        ListedHost::Ip(address) => is_public_ip(*address),
        ListedHost::Name(name) => name != "localhost" && !name.ends_with(".localhost"),
    }
}

fn is_canonical_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let labels_ok = labels.iter().all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    // A numeric or hex last label makes URL parsers read the name as IPv4.
    let last = labels.last().copied().unwrap_or("");
    let numeric_last = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    labels_ok && !numeric_last
}

/// Whether an address is one a registry may list for everyone: not
/// unspecified, loopback, private (RFC 1918), link-local (with
/// 169.254.169.254), CGNAT (100.64.0.0/10), benchmarking (198.18.0.0/15),
/// "this network" (0.0.0.0/8), multicast, broadcast or reserved (240/4); for
/// IPv6 not unspecified, loopback, ULA (fc00::/7), link-local (fe80::/10),
/// multicast, and IPv4-mapped or NAT64 forms of a non-public IPv4 address.
/// The documentation ranges count as public (test namespaces use them).
pub fn is_public_ip(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_ip(IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15])));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xff00) == 0xff00)
        }
    }
}

/// Why a region was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    #[error("region is longer than {MAX_REGION_LEN} characters")]
    TooLong,
    #[error("region must be printable ASCII (no newlines, NUL or other control characters)")]
    NotPrintable,
}

/// The rule for regions a registry lists: at most [`MAX_REGION_LEN`]
/// characters of printable ASCII (space allowed, no control characters).
pub fn check_region(region: &str) -> Result<(), RegionError> {
    if region.chars().count() > MAX_REGION_LEN {
        return Err(RegionError::TooLong);
    }
    if !region.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(RegionError::NotPrintable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_four_schemes_with_a_host() {
        for ok in [
            "ws://relay.example:8080",
            "wss://relay.example/ws",
            "http://127.0.0.1:9000",
            "https://[::1]:443/signal",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(
            validate_endpoint("ftp://relay.example"),
            Err(EndpointError::Scheme)
        );
        assert_eq!(
            validate_endpoint("javascript:alert(1)"),
            Err(EndpointError::Scheme)
        );
        assert_eq!(
            validate_endpoint("relay.example"),
            Err(EndpointError::NotUrl)
        );
        assert_eq!(validate_endpoint("wss://"), Err(EndpointError::NotUrl));
        assert_eq!(validate_endpoint(""), Err(EndpointError::NotUrl));
        assert_eq!(
            validate_endpoint("wss://user:pw@relay.example"),
            Err(EndpointError::Credentials)
        );
        let long = format!("wss://relay.example/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(validate_endpoint(&long), Err(EndpointError::TooLong));
        let exact = format!("wss://r.ex/{}", "a".repeat(MAX_ENDPOINT_LEN - 11));
        assert_eq!(exact.len(), MAX_ENDPOINT_LEN);
        assert!(validate_endpoint(&exact).is_ok());
    }

    #[test]
    fn clients_map_http_to_websocket_and_bare_hosts_to_wss() {
        assert_eq!(
            signaling_url("https://relay.example/x").unwrap().as_str(),
            "wss://relay.example/x"
        );
        assert_eq!(
            signaling_url("http://127.0.0.1:9000").unwrap().as_str(),
            "ws://127.0.0.1:9000/"
        );
        assert_eq!(
            signaling_url("relay.example:8443").unwrap().as_str(),
            "wss://relay.example:8443/"
        );
        assert_eq!(
            signaling_url("ws://relay.example").unwrap().as_str(),
            "ws://relay.example/"
        );
    }

    #[test]
    fn listed_endpoints_are_canonical_and_public() {
        for ok in [
            "wss://relay.example",
            "wss://relay.example:8443/ws",
            "ws://xn--mgbh0fb.example/a/b",
            "wss://192.0.2.10:443/",
            "wss://[2001:db8::1]:8443/x",
        ] {
            assert!(check_listed_endpoint(ok, false).is_ok(), "{ok}");
        }
        use ListedEndpointError as E;
        let long = format!("wss://relay.example/{}", "a".repeat(MAX_ENDPOINT_LEN));
        for (bad, why) in [
            ("ws://127.0.0.1:9000", E::NotPublic),
            ("ws://169.254.169.254/latest/meta-data", E::NotPublic),
            ("wss://10.1.2.3", E::NotPublic),
            ("wss://192.168.1.1", E::NotPublic),
            ("wss://172.16.0.1", E::NotPublic),
            ("wss://100.64.0.1", E::NotPublic),
            ("wss://0.0.0.0", E::NotPublic),
            ("wss://[::1]", E::NotPublic),
            ("wss://[fd00::1]", E::NotPublic),
            ("wss://[fe80::1]", E::NotPublic),
            ("wss://[::ffff:127.0.0.1]", E::NotPublic),
            ("wss://localhost:8080", E::NotPublic),
            ("wss://a.localhost", E::NotPublic),
            ("wss://0x7f.1", E::Host),
            ("wss://2130706433", E::Host),
            ("wss://0177.0.0.1", E::Host),
            ("wss://127.1", E::Host),
            ("wss://relay.0x7f", E::Host),
            ("wss://Relay.Example", E::Host),
            ("wss://-relay.example", E::Host),
            ("wss://relay..example", E::Host),
            ("wss://relay.example.", E::Host),
            ("wss://[2001:DB8::1]", E::Host),
            ("wss://[2001:db8:0:0:0:0:0:1]", E::Host),
            (" wss://relay.example", E::NotPrintableAscii),
            ("wss://relay.example ", E::NotPrintableAscii),
            ("wss://relay.example/\n", E::NotPrintableAscii),
            ("wss://relay.example/a\r\nb", E::NotPrintableAscii),
            ("wss://relay.example/a\tb", E::NotPrintableAscii),
            ("wss://relay.example/a\u{202e}b", E::NotPrintableAscii),
            ("wss://r\u{e9}lay.example", E::NotPrintableAscii),
            ("wss://relay.example/\u{0}", E::NotPrintableAscii),
            ("https://relay.example", E::Scheme),
            ("WSS://relay.example", E::Scheme),
            ("wss://u:p@relay.example", E::Credentials),
            ("wss://relay.example:0", E::Port),
            ("wss://relay.example:65536", E::Port),
            ("wss://relay.example:0443", E::Port),
            ("wss://relay.example:", E::Port),
            ("wss://relay.example/?x=1", E::QueryOrFragment),
            ("wss://relay.example/#x", E::QueryOrFragment),
            ("wss://", E::Host),
            (long.as_str(), E::TooLong),
        ] {
            assert_eq!(
                check_listed_endpoint(bad, false).map(|_| ()),
                Err(why),
                "{bad:?}"
            );
        }
        // Private hosts pass when the registry is started to allow them.
        let (_, host) = check_listed_endpoint("ws://127.0.0.1:9000", true).unwrap();
        assert_eq!(host, ListedHost::Ip("127.0.0.1".parse().unwrap()));
        assert!(check_listed_endpoint("wss://0x7f.1", true).is_err());
    }

    #[test]
    fn regions_are_short_printable_ascii() {
        assert_eq!(check_region("eu-west 1"), Ok(()));
        assert_eq!(check_region(""), Ok(()));
        assert_eq!(check_region(&"a".repeat(MAX_REGION_LEN)), Ok(()));
        assert_eq!(check_region(&"a".repeat(65)), Err(RegionError::TooLong));
        for bad in ["eu\nwest", "eu\0", "eu\u{202e}", "\u{e9}u", "eu\r", "eu\t"] {
            assert_eq!(check_region(bad), Err(RegionError::NotPrintable), "{bad:?}");
        }
    }
}
