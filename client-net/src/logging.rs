//! The one logging setup every binary shares: `RUST_LOG` filters (else the binary's own
//! default), written to stderr, as text or as JSON lines ([`LogFormat`]). Text has colour only
//! when stderr is a terminal, so logs written to files or journald never carry ANSI codes.
//! Also [`listen_hint`], what to do when a server cannot bind its port.

use std::io::IsTerminal;
use std::net::SocketAddr;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is not text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the process's logger: `RUST_LOG` if set (and valid), else `default_filter`, to
/// stderr in `format`. Call once, after the command line was parsed.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// What to add to "cannot listen on ADDRESS: ERROR" so an operator knows what to do: ports
/// below 1024 need privileges, and a port in use is named as such.
pub fn listen_hint(address: SocketAddr, error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if address.port() < 1024 => {
            " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability: the systemd units in deploy/ grant it; or listen on a port from 1024 up behind a proxy)"
        }
        std::io::ErrorKind::AddrInUse => " (another program already listens there)",
        std::io::ErrorKind::AddrNotAvailable => {
            " (this host has no such address: listen on one of its addresses, or 0.0.0.0)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_back() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        assert!("xml"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
    }

    #[test]
    fn a_privileged_port_refused_gets_the_capability_hint() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let low: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let high: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert!(listen_hint(low, &denied).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(listen_hint(high, &denied), "");
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(listen_hint(high, &in_use).contains("already listens"));
    }
}
