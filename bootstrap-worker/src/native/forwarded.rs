//! Which address a request came from when the registry runs behind a reverse
//! proxy: the trusted-proxy setting (`--trusted-proxy`,
//! `ZAJEL_REGISTRY_TRUSTED_PROXY`) and the reading of `X-Forwarded-For` and
//! `Forwarded` (RFC 7239) under it.
//!
//! Only a peer inside the trusted set may speak for someone else: from any
//! other peer both headers are ignored, so a client cannot choose the
//! address its rate limit keys on. From a trusted peer the hops are read
//! right to left (each proxy appends the address it saw), trusted proxies
//! are skipped, and the first hop that is not a trusted proxy is the client.
//! `X-Forwarded-For` is read when present (every instance, in order), else
//! `Forwarded`'s `for=` parameters. A hop that is not an address (`unknown`,
//! an obfuscated name, garbage) ends the walk at the trusted hop to its
//! right, which then stands for the client. Pure: no I/O, unit-tested.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// One address or CIDR block, e.g. `10.0.0.0/8`, `::1`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBlock {
    network: IpAddr,
    prefix: u8,
}

impl AddressBlock {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for AddressBlock {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(
            address
                .parse::<IpAddr>()
                .map_err(|_| format!("{text:?} is not an address or CIDR block"))?,
        );
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Self { network, prefix })
    }
}

/// The proxies whose forwarding headers are believed; empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<AddressBlock>);

impl TrustedProxies {
    pub fn new(blocks: Vec<AddressBlock>) -> Self {
        Self(blocks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }

    /// The client a request from `peer` with `headers` came from.
    pub fn client_address(&self, peer: IpAddr, headers: &[(String, String)]) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_hops(headers);
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(address) = hop else {
                return client;
            };
            client = *address;
            if !self.contains(client) {
                return client;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma- or space-separated list of addresses and CIDR blocks.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split([',', ' '])
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports)
/// as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The hops of `X-Forwarded-For` (if any) or else `Forwarded`, left to
/// right; `None` for a hop that is not an address.
fn forwarded_hops(headers: &[(String, String)]) -> Vec<Option<IpAddr>> {
    let values = |name: &str| {
        headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect::<Vec<_>>()
    };
    let x_forwarded_for = values("x-forwarded-for");
    if !x_forwarded_for.is_empty() {
        return x_forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(|hop| parse_node(hop.trim()))
            .collect();
    }
    values("forwarded")
        .iter()
        .flat_map(|value| value.split(','))
        .map(|element| {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            });
            node.and_then(parse_node)
        })
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
            .map(canonical);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn proxies(text: &str) -> TrustedProxies {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let block: AddressBlock = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains(ip("10.1.255.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        let v6: AddressBlock = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let all: AddressBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let one: AddressBlock = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "::/129", "proxy.example", "10.0.0.0/x", ""] {
            assert!(bad.parse::<AddressBlock>().is_err(), "{bad}");
        }
        assert_eq!(proxies("127.0.0.1, 10.0.0.0/8 ::1").0.len(), 3);
        assert!("127.0.0.1,nonsense".parse::<TrustedProxies>().is_err());
    }

    /// Without the setting, a client's own forwarding headers change nothing.
    #[test]
    fn a_spoofed_header_from_an_untrusted_peer_is_ignored() {
        let spoofed = headers(&[
            ("X-Forwarded-For", "198.51.100.1"),
            ("Forwarded", "for=198.51.100.2"),
        ]);
        let peer = ip("203.0.113.9");
        assert_eq!(
            TrustedProxies::default().client_address(peer, &spoofed),
            peer
        );
        // Trusting some proxy does not make every peer one.
        assert_eq!(proxies("127.0.0.1").client_address(peer, &spoofed), peer);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies("127.0.0.1, 10.0.0.0/8");
        // A client prepends a fake address; the proxy appends the real one.
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.5")]);
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), &chain),
            ip("203.0.113.9")
        );
        // Several header lines are one list, in order.
        let split = headers(&[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.9"),
        ]);
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), &split),
            ip("203.0.113.9")
        );
        // Only trusted hops: the leftmost stands for the client.
        let inside = headers(&[("X-Forwarded-For", "10.0.0.7, 10.0.0.5")]);
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), &inside),
            ip("10.0.0.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn garbage_hops_end_the_walk_at_the_last_trusted_one() {
        let trusted = proxies("127.0.0.1, 10.0.0.5");
        let chain = headers(&[("X-Forwarded-For", "203.0.113.9, not-an-address, 10.0.0.5")]);
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), &chain),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = proxies("::1");
        let chain = headers(&[(
            "Forwarded",
            r#"for=198.51.100.1;proto=https, for="[2001:db8:cafe::17]:4711";by=_proxy"#,
        )]);
        assert_eq!(
            trusted.client_address(ip("::1"), &chain),
            ip("2001:db8:cafe::17")
        );
        let v4_port = headers(&[("forwarded", "For=\"203.0.113.9:1234\"")]);
        assert_eq!(
            trusted.client_address(ip("::1"), &v4_port),
            ip("203.0.113.9")
        );
        let unknown = headers(&[("Forwarded", "for=unknown")]);
        assert_eq!(trusted.client_address(ip("::1"), &unknown), ip("::1"));
    }
}
