//! The TURN peer policy: which peer addresses an allocation may relay to.
//! Pure (no sockets, no clock): [`PeerPolicy::check`] takes the peer address
//! and whether it is the relayed address of a live allocation of this
//! server, and says allowed or why not. The server answers CreatePermission
//! and ChannelBind for a denied peer with 403 Forbidden and sends nothing to
//! it (see `auth::GuardedConn` and `relay::RelaySocket`), as coturn does with
//! `no-loopback-peers`, `no-multicast-peers` and its default `denied-peer-ip`
//! ranges.
//!
//! Denied unless allowed: loopback, unspecified (and 0.0.0.0/8), link-local,
//! multicast, broadcast and the reserved 240.0.0.0/4, RFC 1918, CGNAT
//! (100.64.0.0/10), IPv6 unique-local (fc00::/7) and link-local (fe80::/10),
//! and IPv4 addresses embedded in IPv6 (IPv4-mapped `::ffff:0:0/96`,
//! IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) when the
//! embedded address is denied. Always denied, whatever the allow list: the
//! server's own listening sockets (TURN listeners, the signaling port), so
//! the relay never loops into itself. Always allowed: the relayed address of
//! another live allocation of this server (two callers who both need TURN
//! meet there), and the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24), which are not private. The allow list
//! (`--turn-allow-peer CIDR`) opens denied ranges for lab networks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerDenial {
    /// One of the server's own listening sockets (TURN or signaling).
    OwnListener,
    Loopback,
    /// `0.0.0.0/8` or `::`.
    Unspecified,
    /// 169.254.0.0/16 or fe80::/10 (cloud metadata services live here).
    LinkLocal,
    Multicast,
    /// 255.255.255.255 and the rest of 240.0.0.0/4.
    Broadcast,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// RFC 6598 shared address space (CGNAT): 100.64.0.0/10.
    SharedAddressSpace,
    /// fc00::/7.
    UniqueLocal,
}

impl PeerDenial {
    /// A short name for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::OwnListener => "own_listener",
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Private => "private",
            Self::SharedAddressSpace => "cgnat",
            Self::UniqueLocal => "unique_local",
        }
    }
}

/// The policy of one TURN server.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Ranges allowed although denied by default (`--turn-allow-peer`).
    allow: Vec<IpNet>,
    /// The server's own listening sockets; an unspecified IP there stands
    /// for every address in `own_ips`.
    own_listeners: Vec<SocketAddr>,
    /// Addresses of this server that peers could name (relay IP, external
    /// IP, listener IPs).
    own_ips: Vec<IpAddr>,
}

impl PeerPolicy {
    /// A policy allowing `allow` on top of the defaults, never relaying to
    /// `own_listeners` (at their IP or, for wildcard listeners, at any of
    /// `own_ips`).
    pub fn new(allow: Vec<IpNet>, own_listeners: Vec<SocketAddr>, own_ips: Vec<IpAddr>) -> Self {
        let mut own_ips: Vec<IpAddr> = own_ips.into_iter().map(canonical).collect();
        own_ips.extend(
            own_listeners
                .iter()
                .map(|l| canonical(l.ip()))
                .filter(|ip| !ip.is_unspecified()),
        );
        own_ips.sort();
        own_ips.dedup();
        Self {
            allow,
            own_listeners,
            own_ips,
        }
    }

    /// Whether a client may relay to `peer`; `is_live_relay` says whether
    /// `peer` is the relayed address of a live allocation of this server
    /// (asked only for addresses in denied ranges).
    pub fn check(
        &self,
        peer: SocketAddr,
        is_live_relay: impl Fn(SocketAddr) -> bool,
    ) -> Result<(), PeerDenial> {
        let ip = canonical(peer.ip());
        if self.is_own_listener(ip, peer.port()) {
            return Err(PeerDenial::OwnListener);
        }
        let Some(denial) = denied_range(ip) else {
            return Ok(());
        };
        if is_live_relay(SocketAddr::new(ip, peer.port()))
            || (ip != peer.ip() && is_live_relay(peer))
        {
            return Ok(());
        }
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&peer.ip()))
        {
            return Ok(());
        }
        Err(denial)
    }

    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.own_listeners.iter().any(|listener| {
            listener.port() == port && {
                let own = canonical(listener.ip());
                own == ip
                    || (own.is_unspecified()
                        && (self.own_ips.contains(&ip) || ip.is_loopback() || ip.is_unspecified()))
            }
        })
    }
}

/// `ip` with an IPv4 address embedded in IPv6 (mapped, compatible, NAT64,
/// 6to4) replaced by that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // IPv4-compatible ::a.b.c.d (deprecated), but not :: and ::1
        [0, 0, 0, 0, 0, 0, _, _] if !v6.is_unspecified() && !v6.is_loopback() => Some(low),
        // NAT64 well-known prefix 64:ff9b::/96
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 2002:aabb:ccdd::/48
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// The default-denied range `ip` is in, if any (after [`canonical`]).
pub fn denied_range(ip: IpAddr) -> Option<PeerDenial> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if a == 0 {
                Some(PeerDenial::Unspecified)
            } else if v4.is_loopback() {
                Some(PeerDenial::Loopback)
            } else if v4.is_link_local() {
                Some(PeerDenial::LinkLocal)
            } else if v4.is_multicast() {
                Some(PeerDenial::Multicast)
            } else if a >= 240 {
                Some(PeerDenial::Broadcast)
            } else if v4.is_private() {
                Some(PeerDenial::Private)
            } else if a == 100 && (b & 0xc0) == 64 {
                Some(PeerDenial::SharedAddressSpace)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some(PeerDenial::Unspecified)
            } else if v6.is_loopback() {
                Some(PeerDenial::Loopback)
            } else if v6.is_multicast() {
                Some(PeerDenial::Multicast)
            } else if first & 0xffc0 == 0xfe80 {
                Some(PeerDenial::LinkLocal)
            } else if first & 0xfe00 == 0xfc00 {
                Some(PeerDenial::UniqueLocal)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn default_policy() -> PeerPolicy {
        PeerPolicy::new(Vec::new(), Vec::new(), Vec::new())
    }

    fn never(_: SocketAddr) -> bool {
        false
    }

    #[test]
    fn every_default_denied_range_is_denied() {
        use PeerDenial::*;
        let cases = [
            ("127.0.0.1:9", Loopback),
            ("127.255.255.254:9", Loopback),
            ("0.0.0.0:9", Unspecified),
            ("0.1.2.3:9", Unspecified),
            ("169.254.169.254:80", LinkLocal),
            ("224.0.0.1:9", Multicast),
            ("239.255.255.250:1900", Multicast),
            ("255.255.255.255:9", Broadcast),
            ("240.0.0.1:9", Broadcast),
            ("10.0.0.1:9", Private),
            ("10.255.255.255:9", Private),
            ("172.16.0.1:9", Private),
            ("172.31.255.254:9", Private),
            ("192.168.1.1:9", Private),
            ("100.64.0.1:9", SharedAddressSpace),
            ("100.127.255.254:9", SharedAddressSpace),
            ("[::1]:9", Loopback),
            ("[::]:9", Unspecified),
            ("[fe80::1]:9", LinkLocal),
            ("[febf::1]:9", LinkLocal),
            ("[ff02::1]:9", Multicast),
            ("[fc00::1]:9", UniqueLocal),
            ("[fd12:3456::1]:9", UniqueLocal),
            // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4.
            ("[::ffff:127.0.0.1]:9", Loopback),
            ("[::ffff:169.254.169.254]:80", LinkLocal),
            ("[::ffff:10.0.0.1]:9", Private),
            ("[::ffff:192.168.1.1]:9", Private),
            ("[::ffff:100.64.0.1]:9", SharedAddressSpace),
            ("[::ffff:224.0.0.1]:9", Multicast),
            ("[::ffff:255.255.255.255]:9", Broadcast),
            ("[::ffff:0.0.0.0]:9", Unspecified),
            ("[::10.0.0.1]:9", Private),
            ("[64:ff9b::7f00:1]:9", Loopback),
            ("[2002:c0a8:101::1]:9", Private),
        ];
        for (peer, denial) in cases {
            assert_eq!(
                default_policy().check(addr(peer), never),
                Err(denial),
                "{peer}"
            );
        }
    }

    #[test]
    fn public_and_documentation_addresses_are_allowed() {
        for peer in [
            "192.0.2.1:9",
            "198.51.100.7:9",
            "203.0.113.200:9",
            "8.8.8.8:53",
            "100.63.255.255:9",
            "100.128.0.1:9",
            "172.15.255.255:9",
            "172.32.0.1:9",
            "169.253.0.1:9",
            "223.255.255.255:9",
            "[2001:db8::1]:9",
            "[2606:4700::1111]:443",
            "[::ffff:192.0.2.1]:9",
            "[fec0::1]:9",
        ] {
            assert_eq!(default_policy().check(addr(peer), never), Ok(()), "{peer}");
        }
    }

    #[test]
    fn a_live_relayed_address_is_allowed_even_in_a_denied_range() {
        let live = addr("127.0.0.1:50000");
        let is_live = |peer: SocketAddr| peer == live;
        assert_eq!(default_policy().check(live, is_live), Ok(()));
        assert_eq!(
            default_policy().check(addr("[::ffff:127.0.0.1]:50000"), is_live),
            Ok(())
        );
        // Another port of the same address is not a relay.
        assert_eq!(
            default_policy().check(addr("127.0.0.1:50001"), is_live),
            Err(PeerDenial::Loopback)
        );
    }

    #[test]
    fn the_allow_list_opens_denied_ranges() {
        let policy = PeerPolicy::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            Vec::new(),
            Vec::new(),
        );
        assert_eq!(policy.check(addr("127.0.0.1:9"), never), Ok(()));
        assert_eq!(policy.check(addr("[::ffff:127.0.0.1]:9"), never), Ok(()));
        assert_eq!(policy.check(addr("10.1.2.3:9"), never), Ok(()));
        assert_eq!(
            policy.check(addr("10.2.0.1:9"), never),
            Err(PeerDenial::Private)
        );
        assert_eq!(
            policy.check(addr("169.254.169.254:80"), never),
            Err(PeerDenial::LinkLocal)
        );
    }

    #[test]
    fn own_listeners_are_denied_even_when_allowed_or_public() {
        let policy = PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap()],
            vec![addr("127.0.0.1:3478"), addr("0.0.0.0:443")],
            vec!["203.0.113.5".parse().unwrap()],
        );
        let always = |_: SocketAddr| true;
        for peer in [
            "127.0.0.1:3478",
            "[::ffff:127.0.0.1]:3478",
            "203.0.113.5:443",
            "127.0.0.2:443",
            "0.0.0.0:443",
        ] {
            assert_eq!(
                policy.check(addr(peer), always),
                Err(PeerDenial::OwnListener),
                "{peer}"
            );
        }
        // Other ports of the same host, and the same port elsewhere, are not own listeners.
        assert_eq!(policy.check(addr("127.0.0.1:3479"), never), Ok(()));
        assert_eq!(policy.check(addr("203.0.113.5:3478"), never), Ok(()));
        assert_eq!(policy.check(addr("198.51.100.1:443"), never), Ok(()));
    }
}
