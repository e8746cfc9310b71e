//! What `check` learns about the network itself, as Tailscale's netcheck does: IPv6 (does
//! this host have a global IPv6 address; does UDP over IPv6 reach the relay's STUN/TURN server
//! when it has an IPv6 address) and the NAT mapping (endpoint-independent when one socket is
//! mapped to the same address by two different STUN server addresses, RFC 4787 §4.1; `unknown`
//! when the relay hands out only one).
//!
//! STUN Binding requests go through the webrtc-rs `turn` client, as the rest of `check` does;
//! relay-lite's TURN server answers them on its UDP listener.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use webrtc::turn::client::{Client as TurnClient, ClientConfig as TurnClientConfig};

/// Yes, no, or cannot tell.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Yes,
    No,
    #[default]
    Unknown,
}

impl Answer {
    pub fn from_bool(value: bool) -> Self {
        if value {
            Self::Yes
        } else {
            Self::No
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::No => "no",
            Self::Unknown => "unknown",
        }
    }
}

/// IPv6 from this host.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Ipv6Check {
    /// The host's global IPv6 address (the source address it would use towards the IPv6
    /// internet); `None`: it has none (no global address or no IPv6 route).
    pub global_address: Option<String>,
    /// The STUN/TURN server's IPv6 address tried (`None`: it has none).
    pub server: Option<String>,
    /// Whether a STUN binding over UDP/IPv6 was answered (`unknown`: the server has no IPv6
    /// address).
    pub udp: Answer,
    /// Our IPv6 address as the server saw it.
    pub mapped_address: Option<String>,
    /// Why `udp` is not `yes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The NAT mapping of one UDP socket, seen by different server addresses.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MappingCheck {
    /// `yes`: every server saw the same mapped address; `no`: they differ (a symmetric
    /// NAT: direct calls need TURN); `unknown`: fewer than two server addresses answered.
    pub endpoint_independent: Answer,
    /// The server addresses asked, and what each saw (`None`: no answer).
    pub observations: Vec<MappingObservation>,
    /// Why `endpoint_independent` is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One server address and the mapped address it saw.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MappingObservation {
    pub server: String,
    pub mapped_address: Option<String>,
}

/// The whole network part of the report.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NetworkCheck {
    pub ipv6: Ipv6Check,
    pub mapping: MappingCheck,
}

impl NetworkCheck {
    /// The table rows (label, value).
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let ipv6 = &self.ipv6;
        let address = match &ipv6.global_address {
            Some(address) => format!("yes ({address})"),
            None => "no".into(),
        };
        let udp = match (&ipv6.mapped_address, &ipv6.server, &ipv6.detail) {
            (Some(mapped), Some(server), _) => format!("yes (to {server}, mapped {mapped})"),
            (_, _, Some(detail)) => format!("{}: {detail}", ipv6.udp.as_str()),
            _ => ipv6.udp.as_str().into(),
        };
        let mapping = &self.mapping;
        let seen = mapping
            .observations
            .iter()
            .map(|o| {
                format!(
                    "{} saw {}",
                    o.server,
                    o.mapped_address.as_deref().unwrap_or("nothing")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mapping_row = match (&mapping.detail, seen.is_empty()) {
            (Some(detail), _) => format!("{}: {detail}", mapping.endpoint_independent.as_str()),
            (None, false) => format!("{} ({seen})", mapping.endpoint_independent.as_str()),
            (None, true) => mapping.endpoint_independent.as_str().into(),
        };
        vec![
            ("global IPv6 address", address),
            ("UDP over IPv6", udp),
            ("NAT mapping", mapping_row),
        ]
    }
}

/// Whether `ip` is a global unicast IPv6 address (2000::/3).
pub fn is_global_ipv6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xe000 == 0x2000
}

/// The source address this host would use towards the IPv6 internet, when it is global: a
/// UDP `connect` picks it from the routing table without sending anything.
pub fn global_ipv6_address() -> Option<Ipv6Addr> {
    let socket = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok()?;
    // Any global unicast address would do; this one is a public resolver's.
    socket
        .connect((
            Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888),
            53,
        ))
        .ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V6(ip) if is_global_ipv6(&ip) => Some(ip),
        _ => None,
    }
}

/// Every address of `host:port` (the STUN/TURN servers' names resolve to both families).
pub async fn resolve_all(host: &str, port: u16) -> Vec<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => {
            let mut all = Vec::new();
            for address in addresses {
                if !all.contains(&address) {
                    all.push(address);
                }
            }
            all
        }
        Err(_) => Vec::new(),
    }
}

/// A STUN client on one fresh UDP socket of `family`'s (IPv4 unless `v6`).
async fn stun_client(v6: bool, loopback: bool) -> Result<TurnClient, String> {
    let bind = match (v6, loopback) {
        (false, false) => "0.0.0.0:0",
        (false, true) => "127.0.0.1:0",
        (true, false) => "[::]:0",
        (true, true) => "[::1]:0",
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("UDP socket: {e}"))?;
    let client = TurnClient::new(TurnClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: String::new(),
        username: String::new(),
        password: String::new(),
        realm: String::new(),
        software: "call-probe".into(),
        rto_in_ms: 200,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    Ok(client)
}

async fn binding(
    client: &TurnClient,
    server: SocketAddr,
    limit: Duration,
) -> Result<SocketAddr, String> {
    match tokio::time::timeout(limit, client.send_binding_request_to(&server.to_string())).await {
        Ok(Ok(mapped)) => Ok(mapped),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// IPv6: the host's global address, and a binding over UDP/IPv6 to the first IPv6 address
/// among `servers` (every address of the relay's STUN/TURN servers).
pub async fn check_ipv6(servers: &[SocketAddr], limit: Duration) -> Ipv6Check {
    let mut check = Ipv6Check {
        global_address: global_ipv6_address().map(|ip| ip.to_string()),
        ..Ipv6Check::default()
    };
    let Some(server) = servers.iter().find(|s| s.is_ipv6()).copied() else {
        check.detail = Some("the relay's STUN/TURN server has no IPv6 address".into());
        return check;
    };
    check.server = Some(server.to_string());
    let result = match stun_client(true, server.ip().is_loopback()).await {
        Ok(client) => {
            let result = binding(&client, server, limit).await;
            let _ = client.close().await;
            result
        }
        Err(error) => Err(error),
    };
    match result {
        Ok(mapped) => {
            check.udp = Answer::Yes;
            check.mapped_address = Some(mapped.to_string());
        }
        Err(error) => {
            check.udp = Answer::No;
            check.detail = Some(error);
        }
    }
    check
}

/// The mapping: bindings from one socket to each IPv4 address among `servers` (distinct
/// addresses or ports), compared.
pub async fn check_mapping(servers: &[SocketAddr], limit: Duration) -> MappingCheck {
    let mut targets: Vec<SocketAddr> = Vec::new();
    for server in servers.iter().filter(|s| s.is_ipv4()) {
        if !targets.contains(server) {
            targets.push(*server);
        }
    }
    let mut check = MappingCheck::default();
    if targets.len() < 2 {
        check.detail = Some(match targets.first() {
            Some(only) => format!("the relay hands out one STUN server address ({only}): a second is needed to compare"),
            None => "the relay hands out no IPv4 STUN server".into(),
        });
        return check;
    }
    let loopback = targets.iter().all(|t| t.ip().is_loopback());
    let client = match stun_client(false, loopback).await {
        Ok(client) => client,
        Err(error) => {
            check.detail = Some(error);
            return check;
        }
    };
    for server in targets {
        let mapped = binding(&client, server, limit).await.ok();
        check.observations.push(MappingObservation {
            server: server.to_string(),
            mapped_address: mapped.map(|m| m.to_string()),
        });
    }
    let _ = client.close().await;
    check.endpoint_independent = judge_mapping(&check.observations);
    if check.endpoint_independent == Answer::Unknown {
        check.detail = Some("fewer than two STUN server addresses answered".into());
    }
    check
}

/// `yes` when every answering server saw one mapped address, `no` when they differ,
/// `unknown` with fewer than two answers.
pub fn judge_mapping(observations: &[MappingObservation]) -> Answer {
    let seen: Vec<&String> = observations
        .iter()
        .filter_map(|o| o.mapped_address.as_ref())
        .collect();
    if seen.len() < 2 {
        return Answer::Unknown;
    }
    Answer::from_bool(seen.iter().all(|m| *m == seen[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(server: &str, mapped: Option<&str>) -> MappingObservation {
        MappingObservation {
            server: server.into(),
            mapped_address: mapped.map(str::to_string),
        }
    }

    #[test]
    fn the_mapping_is_judged_from_what_the_servers_saw() {
        let a = "198.51.100.1:3478";
        let b = "198.51.100.2:3478";
        assert_eq!(
            judge_mapping(&[
                seen(a, Some("203.0.113.5:4000")),
                seen(b, Some("203.0.113.5:4000"))
            ]),
            Answer::Yes
        );
        // A symmetric NAT: another port for another destination.
        assert_eq!(
            judge_mapping(&[
                seen(a, Some("203.0.113.5:4000")),
                seen(b, Some("203.0.113.5:4001"))
            ]),
            Answer::No
        );
        assert_eq!(
            judge_mapping(&[seen(a, Some("203.0.113.5:4000")), seen(b, None)]),
            Answer::Unknown
        );
        assert_eq!(judge_mapping(&[]), Answer::Unknown);
    }

    #[test]
    fn only_global_unicast_ipv6_counts_as_global() {
        for (ip, global) in [
            ("2001:db8::1", true),
            ("2a01:4f8::1", true),
            ("fe80::1", false),
            ("fd00::1", false),
            ("::1", false),
            ("::", false),
            ("ff02::1", false),
        ] {
            assert_eq!(is_global_ipv6(&ip.parse().unwrap()), global, "{ip}");
        }
    }

    #[tokio::test]
    async fn one_server_address_leaves_the_mapping_unknown() {
        let only: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let check = check_mapping(&[only, only], Duration::from_millis(100)).await;
        assert_eq!(check.endpoint_independent, Answer::Unknown);
        assert!(check.detail.as_deref().unwrap().contains("127.0.0.1:3478"));
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["endpoint_independent"], "unknown");
    }

    #[tokio::test]
    async fn a_server_without_ipv6_leaves_udp_over_ipv6_unknown() {
        let v4: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let check = check_ipv6(&[v4], Duration::from_millis(100)).await;
        assert_eq!(check.udp, Answer::Unknown);
        assert!(check.server.is_none());
        let rows = NetworkCheck {
            ipv6: check,
            mapping: MappingCheck::default(),
        }
        .rows();
        assert_eq!(
            rows[1],
            (
                "UDP over IPv6",
                "unknown: the relay's STUN/TURN server has no IPv6 address".to_string()
            )
        );
    }

    #[tokio::test]
    async fn a_silent_ipv6_server_is_a_no_with_its_reason() {
        // Nothing answers on [::1] at this port (skipped where the host has no IPv6 at all).
        let Ok(listener) = std::net::UdpSocket::bind("[::1]:0") else {
            return;
        };
        let server = listener.local_addr().unwrap();
        let check = check_ipv6(&[server], Duration::from_millis(300)).await;
        assert_eq!(check.udp, Answer::No);
        assert_eq!(check.server, Some(server.to_string()));
        assert!(check.detail.is_some());
    }
}
