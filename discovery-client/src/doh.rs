//! Layer 2 transport: TXT queries over DNS-over-HTTPS with hickory-resolver,
//! one resolver per configured DoH server so that each answers on its own
//! (a blocked or lying resolver cannot hide what the others say). A server is
//! given as a URL (`https://dns.example/dns-query`) or as a URL plus the
//! address to reach it at (`https://dns.example/dns-query,ip=192.0.2.1`), so a
//! blocked system resolver does not matter.
//!
//! Every record of an answer is returned (no count limit: junk records must
//! not hide the genuine ones); an answer is one DNS message, at most 65,535
//! bytes, and hickory's DoH client refuses a larger response body, so a
//! byte bomb is that resolver's error (a truncated message says so too) and
//! the other resolvers are unaffected. [`crate::txt::check_answer`] bounds
//! the verification work.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use url::Url;

use crate::net;
use crate::report::Outcome;

pub use zajel_discovery_core::txt::TxtAnswer;

/// One DoH server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DohServer {
    /// `https://host[:port]/path`; the host is also the TLS name.
    pub url: Url,
    /// Where to connect, when not resolved from the URL's host.
    pub ip: Option<IpAddr>,
}

/// Why a `--doh` value is not a DoH server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DohServerParseError {
    /// The `ip=` part is not an IP address.
    #[error("DoH server {text:?}: ip= is not an IP address")]
    Ip { text: String },
    /// The URL part does not parse.
    #[error("DoH server {text:?}: not a URL ({source})")]
    Url {
        text: String,
        #[source]
        source: url::ParseError,
    },
    /// The URL is not `https://`.
    #[error("DoH server {text:?}: must be an https:// URL")]
    NotHttps { text: String },
    /// The URL names no host.
    #[error("DoH server {text:?}: no host")]
    NoHost { text: String },
}

impl DohServerParseError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ip { .. } => "doh_server_ip",
            Self::Url { .. } => "doh_server_url",
            Self::NotHttps { .. } => "doh_server_not_https",
            Self::NoHost { .. } => "doh_server_no_host",
        }
    }
}

impl FromStr for DohServer {
    type Err = DohServerParseError;

    /// `URL` or `URL,ip=ADDRESS`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (url_text, ip) = match text.trim().split_once(",ip=") {
            Some((url, ip)) => (
                url,
                Some(ip.parse::<IpAddr>().map_err(|_| DohServerParseError::Ip {
                    text: text.to_string(),
                })?),
            ),
            None => (text.trim(), None),
        };
        let url = Url::parse(url_text).map_err(|source| DohServerParseError::Url {
            text: text.to_string(),
            source,
        })?;
        if url.scheme() != "https" {
            return Err(DohServerParseError::NotHttps {
                text: text.to_string(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(DohServerParseError::NoHost {
                text: text.to_string(),
            });
        }
        Ok(Self { url, ip })
    }
}

impl fmt::Display for DohServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{},ip={ip}", self.url),
            None => write!(f, "{}", self.url),
        }
    }
}

impl DohServer {
    /// The TLS name (the URL's host, brackets removed for IPv6).
    pub fn tls_name(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(v6)) => v6.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }

    /// The address to connect to: `ip=`, an IP host, or the system resolver's answer.
    async fn address(&self) -> Result<IpAddr, (Outcome, String)> {
        if let Some(ip) = self.ip {
            return Ok(ip);
        }
        match self.url.host() {
            Some(url::Host::Ipv4(v4)) => Ok(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Ok(IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) => {
                let port = self.url.port_or_known_default().unwrap_or(443);
                let mut found = tokio::net::lookup_host((name, port)).await.map_err(|e| {
                    (
                        Outcome::DnsFailure,
                        format!("cannot resolve DoH server {name} with the system resolver: {e}"),
                    )
                })?;
                found.next().map(|a| a.ip()).ok_or((
                    Outcome::DnsFailure,
                    format!("DoH server {name} has no address"),
                ))
            }
            None => Err((Outcome::Invalid, "DoH URL has no host".into())),
        }
    }
}

/// Asks one DoH server for the TXT records at `name`.
pub async fn query_txt(
    server: &DohServer,
    name: &str,
    tls: &rustls::ClientConfig,
    timeout: Duration,
) -> TxtAnswer {
    let failed = |outcome, detail: String| TxtAnswer {
        outcome,
        detail,
        records: Vec::new(),
    };
    let work = async {
        let ip = match server.address().await {
            Ok(ip) => ip,
            Err((outcome, detail)) => return failed(outcome, detail),
        };
        let port = server.url.port_or_known_default().unwrap_or(443);
        let mut name_server = NameServerConfig::https(
            ip,
            Arc::from(server.tls_name()),
            Some(Arc::from(server.url.path())),
        );
        for connection in &mut name_server.connections {
            connection.port = port;
        }
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.num_concurrent_reqs = 1;
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tls_for_diagnosis = Arc::new(tls.clone());
        let resolver = match Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![name_server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .with_tls_config(tls)
        .build()
        {
            Ok(resolver) => resolver,
            Err(e) => return failed(Outcome::Error, format!("resolver setup: {e}")),
        };
        match resolver.txt_lookup(name).await {
            Ok(lookup) => {
                let records: Vec<Vec<u8>> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::TXT(txt) => Some(txt.txt_data.concat()),
                        _ => None,
                    })
                    .collect();
                TxtAnswer::of_records(records, "")
            }
            Err(error) => {
                let (outcome, detail) = classify_net_error(&error);
                if matches!(
                    error,
                    NetError::NoConnections | NetError::Io(_) | NetError::Proto(_)
                ) {
                    // hickory hides why it could not connect: find out directly.
                    if let Some((outcome, why)) =
                        diagnose_connection(ip, port, &server.tls_name(), &tls_for_diagnosis).await
                    {
                        return failed(outcome, format!("{detail} ({why})"));
                    }
                }
                failed(outcome, detail)
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(answer) => answer,
        Err(_) => failed(
            Outcome::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        ),
    }
}

/// Connects and completes a TLS handshake with a DoH server to tell a refused
/// connection from a TLS failure; `None` when both succeed.
async fn diagnose_connection(
    ip: IpAddr,
    port: u16,
    tls_name: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Option<(Outcome, String)> {
    let stream = match tokio::net::TcpStream::connect((ip, port)).await {
        Ok(stream) => stream,
        Err(e) => return Some((net::classify(&e), format!("connecting to {ip}:{port}: {e}"))),
    };
    let name = match rustls::pki_types::ServerName::try_from(tls_name.to_string()) {
        Ok(name) => name,
        Err(e) => return Some((Outcome::Invalid, format!("TLS name {tls_name:?}: {e}"))),
    };
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    match connector.connect(name, stream).await {
        Ok(_) => None,
        Err(e) => {
            let outcome = match net::classify(&e) {
                Outcome::Error => Outcome::TlsFailure,
                other => other,
            };
            Some((outcome, format!("TLS handshake: {}", net::error_chain(&e))))
        }
    }
}

fn classify_net_error(error: &NetError) -> (Outcome, String) {
    let detail = net::error_chain(error);
    let outcome = match error {
        NetError::Dns(DnsError::NoRecordsFound(_)) => Outcome::Empty,
        NetError::Dns(DnsError::ResponseCode(code)) if *code == ResponseCode::NXDomain => {
            Outcome::Empty
        }
        NetError::Dns(_) => Outcome::DnsFailure,
        NetError::Timeout => Outcome::TimedOut,
        NetError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => match net::classify(error) {
            Outcome::Error => Outcome::DnsFailure,
            other => other,
        },
    };
    (outcome, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_as_url_or_url_with_address() {
        let plain: DohServer = "https://dns.example/dns-query".parse().unwrap();
        assert_eq!(plain.ip, None);
        assert_eq!(plain.tls_name(), "dns.example");
        let pinned: DohServer = "https://dns.example:8443/q,ip=192.0.2.1".parse().unwrap();
        assert_eq!(pinned.ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(pinned.url.port(), Some(8443));
        let v6: DohServer = "https://[::1]:8443/dns-query".parse().unwrap();
        assert_eq!(v6.tls_name(), "::1");
        assert!("http://dns.example/q".parse::<DohServer>().is_err());
        assert!("https://dns.example/q,ip=nope"
            .parse::<DohServer>()
            .is_err());
        assert!("dns.example".parse::<DohServer>().is_err());
    }

    #[test]
    fn each_bad_doh_server_names_its_kind_and_keeps_its_message() {
        let cases = [
            (
                "http://dns.example/q",
                "doh_server_not_https",
                r#"DoH server "http://dns.example/q": must be an https:// URL"#,
            ),
            (
                "https://dns.example/q,ip=nope",
                "doh_server_ip",
                r#"DoH server "https://dns.example/q,ip=nope": ip= is not an IP address"#,
            ),
            (
                "dns.example",
                "doh_server_url",
                r#"DoH server "dns.example": not a URL (relative URL without a base)"#,
            ),
        ];
        for (text, kind, message) in cases {
            let error = text.parse::<DohServer>().unwrap_err();
            assert_eq!((error.kind(), error.to_string().as_str()), (kind, message));
        }
    }
}
