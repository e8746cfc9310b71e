//! The `--turn-*` command-line flags, as a clap `Args` group that
//! relay-lite's CLI flattens in (`#[command(flatten)] turn: TurnArgs`), and
//! their translation into a `TurnConfig`. Without any `--turn-listen-*` flag
//! no TURN server runs; `--turn-secret-file`, `--turn-realm` and `--turn-url`
//! then describe an external one (coturn with `use-auth-secret` and the same
//! `static-auth-secret`) for which the relay issues credentials.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{
    TurnConfig, TurnError, TurnTls, DEFAULT_BANDWIDTH_BURST, DEFAULT_MAX_BPS, DEFAULT_SOURCE_QUOTA,
    DEFAULT_STREAMS_PER_SOURCE, DEFAULT_STREAM_UNALLOCATED_SECS, DEFAULT_USER_QUOTA,
};

/// TURN relay flags.
#[derive(Debug, Clone, Args)]
pub struct TurnArgs {
    /// Serve TURN over UDP on this address (e.g. 0.0.0.0:3478).
    #[arg(long, value_name = "ADDR", env = "RELAY_LITE_TURN_LISTEN_UDP")]
    pub turn_listen_udp: Option<SocketAddr>,
    /// Serve TURN over TCP on this address (e.g. 0.0.0.0:3478).
    #[arg(long, value_name = "ADDR", env = "RELAY_LITE_TURN_LISTEN_TCP")]
    pub turn_listen_tcp: Option<SocketAddr>,
    /// Serve TURN over TLS on this address (e.g. 0.0.0.0:443); needs
    /// --turn-tls-cert and --turn-tls-key.
    #[arg(long, value_name = "ADDR", env = "RELAY_LITE_TURN_LISTEN_TLS")]
    pub turn_listen_tls: Option<SocketAddr>,
    /// PEM certificate chain for TURN over TLS.
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_TURN_TLS_CERT")]
    pub turn_tls_cert: Option<PathBuf>,
    /// PEM private key for TURN over TLS.
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_TURN_TLS_KEY")]
    pub turn_tls_key: Option<PathBuf>,
    /// TURN realm (coturn: realm).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "zajel",
        env = "RELAY_LITE_TURN_REALM"
    )]
    pub turn_realm: String,
    /// File holding the shared secret for time-limited credentials
    /// (coturn: use-auth-secret with the same static-auth-secret).
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_TURN_SECRET_FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// Address relay sockets bind to (coturn: relay-ip) [default: the TURN
    /// listeners' address; when they listen on every interface, every
    /// interface too, advertised as --turn-external-ip].
    #[arg(long, value_name = "IP", env = "RELAY_LITE_TURN_RELAY_IP")]
    pub turn_relay_ip: Option<IpAddr>,
    /// Address clients are told to send media to (the relayed address), if
    /// not the relay IP: the server's public address when it listens on
    /// 0.0.0.0 or sits behind 1:1 NAT (coturn: external-ip).
    #[arg(long, value_name = "IP", env = "RELAY_LITE_TURN_EXTERNAL_IP")]
    pub turn_external_ip: Option<IpAddr>,
    /// Allocations that may exist at once (coturn: total-quota).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        env = "RELAY_LITE_TURN_MAX_ALLOCATIONS"
    )]
    pub turn_max_allocations: usize,
    /// Live allocations one TURN credential may hold; over it, 486
    /// Allocation Quota Reached (coturn: user-quota).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_USER_QUOTA, env = "RELAY_LITE_TURN_USER_QUOTA")]
    pub turn_user_quota: usize,
    /// Live allocations one client IP address may hold; over it, 486.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SOURCE_QUOTA, env = "RELAY_LITE_TURN_SOURCE_QUOTA")]
    pub turn_source_quota: usize,
    /// Relayed bytes per second per allocation, each way; datagrams over it
    /// are dropped; 0 for no cap (coturn: max-bps, in bytes too).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BPS, env = "RELAY_LITE_TURN_MAX_BPS")]
    pub turn_max_bps: u64,
    /// Bytes an allocation may relay in a burst above --turn-max-bps.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BANDWIDTH_BURST, env = "RELAY_LITE_TURN_BANDWIDTH_BURST")]
    pub turn_bandwidth_burst: u64,
    /// TCP/TLS connections one client IP address may hold open, per listener.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STREAMS_PER_SOURCE, env = "RELAY_LITE_TURN_MAX_STREAMS_PER_SOURCE")]
    pub turn_max_streams_per_source: usize,
    /// Seconds a TCP/TLS connection may stay open without an allocation.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STREAM_UNALLOCATED_SECS, env = "RELAY_LITE_TURN_STREAM_UNALLOCATED_TIMEOUT")]
    pub turn_stream_unallocated_timeout: u64,
    /// Peer range TURN may relay to although denied by default (loopback,
    /// private, link-local, CGNAT, ULA...), for lab networks (repeatable;
    /// coturn: allowed-peer-ip). The server's own ports stay denied.
    #[arg(
        long = "turn-allow-peer",
        value_name = "CIDR",
        env = "RELAY_LITE_TURN_ALLOW_PEER",
        value_delimiter = ','
    )]
    pub turn_allow_peers: Vec<ipnet::IpNet>,
    /// Hard maximum age of one allocation, in seconds, refreshed or not.
    #[arg(long, value_name = "SECS", default_value_t = 3 * 3600, env = "RELAY_LITE_TURN_ALLOCATION_LIFETIME")]
    pub turn_allocation_lifetime: u64,
    /// TURN/STUN URL handed to clients with their credentials (repeatable),
    /// e.g. turn:turn.example.org:3478?transport=udp or turns:turn.example.org:443?transport=tcp.
    #[arg(
        long = "turn-url",
        value_name = "URL",
        env = "RELAY_LITE_TURN_URL",
        value_delimiter = ','
    )]
    pub turn_urls: Vec<String>,
}

impl TurnArgs {
    /// Whether any TURN listener is asked for.
    pub fn serves_turn(&self) -> bool {
        self.turn_listen_udp.is_some()
            || self.turn_listen_tcp.is_some()
            || self.turn_listen_tls.is_some()
    }

    /// Checks the flags that make sense together; also used when no TURN
    /// server runs here (an external one).
    pub fn validate(&self) -> Result<(), TurnError> {
        let bad = |message: &str| Err(TurnError::Config(message.to_string()));
        if self.turn_listen_tls.is_some()
            && (self.turn_tls_cert.is_none() || self.turn_tls_key.is_none())
        {
            return bad("--turn-listen-tls needs --turn-tls-cert and --turn-tls-key");
        }
        if (self.serves_turn() || !self.turn_urls.is_empty()) && self.turn_secret_file.is_none() {
            return bad("TURN needs --turn-secret-file");
        }
        for url in &self.turn_urls {
            if !["turn:", "turns:", "stun:"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err(TurnError::Config(format!(
                    "--turn-url {url:?} is not a turn:, turns: or stun: URL"
                )));
            }
        }
        if self.turn_max_allocations == 0 || self.turn_allocation_lifetime == 0 {
            return bad("--turn-max-allocations and --turn-allocation-lifetime must be positive");
        }
        if self.turn_user_quota == 0
            || self.turn_source_quota == 0
            || self.turn_max_streams_per_source == 0
            || self.turn_stream_unallocated_timeout == 0
        {
            return bad("--turn-user-quota, --turn-source-quota, --turn-max-streams-per-source and --turn-stream-unallocated-timeout must be positive");
        }
        Ok(())
    }

    /// Where relay sockets bind: `--turn-relay-ip`, else the listeners'
    /// address when they all name the same one, else (listeners on every
    /// interface) every interface of the advertised address's family, which
    /// then must be given (`--turn-external-ip`): a relay told nothing would
    /// advertise an address no client can reach.
    fn relay_ip(&self) -> Result<IpAddr, TurnError> {
        if let Some(ip) = self.turn_relay_ip {
            return Ok(ip);
        }
        let listening: Vec<IpAddr> = [
            self.turn_listen_udp,
            self.turn_listen_tcp,
            self.turn_listen_tls,
        ]
        .into_iter()
        .flatten()
        .map(|address| address.ip())
        .collect();
        let specific: Vec<IpAddr> = listening
            .iter()
            .copied()
            .filter(|ip| !ip.is_unspecified())
            .collect();
        if !specific.is_empty() && specific.len() == listening.len() {
            if specific.iter().all(|ip| *ip == specific[0]) {
                return Ok(specific[0]);
            }
            return Err(TurnError::Config(format!(
                "the TURN listeners use different addresses ({}): say where relay sockets bind with --turn-relay-ip",
                specific.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        match self.turn_external_ip {
            Some(IpAddr::V4(_)) => Ok(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            Some(IpAddr::V6(_)) => Ok(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            None => Err(TurnError::Config(
                "TURN listens on every interface but was not told the address clients reach it at: give --turn-external-ip PUBLIC_IP (or listen on that address)".into(),
            )),
        }
    }

    /// The shared secret, if a secret file was given.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, TurnError> {
        self.turn_secret_file
            .as_deref()
            .map(TurnConfig::read_secret_file)
            .transpose()
    }

    /// The embedded server's configuration, or `None` when no TURN
    /// listener is asked for.
    pub fn to_config(&self) -> Result<Option<TurnConfig>, TurnError> {
        self.validate()?;
        if !self.serves_turn() {
            return Ok(None);
        }
        let secret = self
            .secret()?
            .ok_or_else(|| TurnError::Config("TURN needs --turn-secret-file".into()))?;
        let mut config = TurnConfig::new(secret);
        config.listen_udp = self.turn_listen_udp;
        config.listen_tcp = self.turn_listen_tcp;
        config.listen_tls = self.turn_listen_tls;
        if let (Some(cert), Some(key)) = (&self.turn_tls_cert, &self.turn_tls_key) {
            config.tls = Some(TurnTls::from_pem_files(cert, key)?);
        }
        config.realm = self.turn_realm.clone();
        config.relay_ip = self.relay_ip()?;
        config.external_ip = self.turn_external_ip;
        config.max_allocations = self.turn_max_allocations;
        config.allocation_lifetime = Duration::from_secs(self.turn_allocation_lifetime);
        config.max_allocations_per_username = self.turn_user_quota;
        config.max_allocations_per_source = self.turn_source_quota;
        config.bandwidth_bytes_per_sec = self.turn_max_bps;
        config.bandwidth_burst_bytes = self.turn_bandwidth_burst;
        config.max_stream_connections_per_source = self.turn_max_streams_per_source;
        config.stream_unallocated_timeout =
            Duration::from_secs(self.turn_stream_unallocated_timeout);
        config.allow_peers = self.turn_allow_peers.clone();
        config.validate()?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        turn: TurnArgs,
    }

    fn parse(args: &[&str]) -> Result<TurnArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("relay-lite").chain(args.iter().copied()))
            .map(|cli| cli.turn)
    }

    #[test]
    fn flags_become_a_config() {
        let dir = std::env::temp_dir().join(format!("turn-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let args = parse(&[
            "--turn-listen-udp",
            "0.0.0.0:3478",
            "--turn-listen-tcp",
            "0.0.0.0:3478",
            "--turn-realm",
            "example.org",
            "--turn-secret-file",
            secret.to_str().unwrap(),
            "--turn-relay-ip",
            "10.0.0.5",
            "--turn-external-ip",
            "203.0.113.7",
            "--turn-max-allocations",
            "50",
            "--turn-allocation-lifetime",
            "600",
            "--turn-url",
            "turn:turn.example.org:3478?transport=udp",
            "--turn-allow-peer",
            "127.0.0.0/8",
            "--turn-allow-peer",
            "10.1.0.0/16,fd00::/8",
            "--turn-user-quota",
            "3",
            "--turn-source-quota",
            "4",
            "--turn-max-bps",
            "100000",
            "--turn-bandwidth-burst",
            "200000",
            "--turn-max-streams-per-source",
            "5",
            "--turn-stream-unallocated-timeout",
            "7",
        ])
        .unwrap();
        let config = args.to_config().unwrap().unwrap();
        assert_eq!(config.secret, b"s3cret");
        assert_eq!(config.listen_udp, Some("0.0.0.0:3478".parse().unwrap()));
        assert_eq!(config.listen_tcp, Some("0.0.0.0:3478".parse().unwrap()));
        assert_eq!(config.listen_tls, None);
        assert_eq!(config.realm, "example.org");
        assert_eq!(config.relay_ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(config.external_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(config.max_allocations, 50);
        assert_eq!(config.allocation_lifetime, Duration::from_secs(600));
        assert_eq!(
            config.allow_peers,
            ["127.0.0.0/8", "10.1.0.0/16", "fd00::/8"].map(|n| n.parse().unwrap())
        );
        assert_eq!(
            (
                config.max_allocations_per_username,
                config.max_allocations_per_source,
                config.bandwidth_bytes_per_sec,
                config.bandwidth_burst_bytes,
                config.max_stream_connections_per_source,
                config.stream_unallocated_timeout,
            ),
            (3, 4, 100_000, 200_000, 5, Duration::from_secs(7))
        );
        assert_eq!(args.turn_urls.len(), 1);
        assert!(!format!("{config:?}").contains("s3cret"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_listener_means_no_server() {
        assert!(parse(&[]).unwrap().to_config().unwrap().is_none());
    }

    #[test]
    fn bad_flags_are_refused_clearly() {
        let error = parse(&["--turn-listen-udp", "0.0.0.0:3478"])
            .unwrap()
            .to_config()
            .unwrap_err();
        assert!(error.to_string().contains("--turn-secret-file"), "{error}");
        let error = parse(&[
            "--turn-listen-tls",
            "0.0.0.0:443",
            "--turn-secret-file",
            "/x",
        ])
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("--turn-tls-cert"), "{error}");
        let error = parse(&["--turn-url", "http://x", "--turn-secret-file", "/x"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("turn:"), "{error}");
        let error = parse(&[
            "--turn-listen-udp",
            "0.0.0.0:3478",
            "--turn-secret-file",
            "/nonexistent/secret",
        ])
        .unwrap()
        .to_config()
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/secret"), "{error}");
        assert!(parse(&["--turn-listen-udp", "not-an-address"]).is_err());
    }

    /// The flags an operator gives for the embedded server, with `extra` added.
    fn operator_flags(secret: &std::path::Path, extra: &[&str]) -> Result<TurnConfig, TurnError> {
        let mut args = vec![
            "--turn-listen-udp",
            "0.0.0.0:3478",
            "--turn-listen-tcp",
            "0.0.0.0:3478",
            "--turn-secret-file",
            secret.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        parse(&args).unwrap().to_config().map(Option::unwrap)
    }

    fn secret_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("turn-args-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        secret
    }

    #[test]
    fn the_relayed_address_follows_the_external_or_listening_address() {
        let secret = secret_file("follow");
        // Listening everywhere with the public address given: relay sockets on
        // every interface, advertised at the public address.
        let config = operator_flags(&secret, &["--turn-external-ip", "203.0.113.7"]).unwrap();
        assert_eq!(config.relay_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(config.external_ip, Some("203.0.113.7".parse().unwrap()));
        // Listening on one address: relay sockets there too.
        let args = parse(&[
            "--turn-listen-udp",
            "198.51.100.4:3478",
            "--turn-listen-tls",
            "198.51.100.4:5349",
            "--turn-tls-cert",
            "/nonexistent",
            "--turn-tls-key",
            "/nonexistent",
            "--turn-secret-file",
            secret.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            args.relay_ip().unwrap(),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        // Loopback listeners (tests, the demo) relay on loopback as before.
        let args = parse(&[
            "--turn-listen-udp",
            "127.0.0.1:0",
            "--turn-secret-file",
            secret.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            args.to_config().unwrap().unwrap().relay_ip,
            IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn an_unreachable_relayed_address_is_refused_at_start() {
        let secret = secret_file("refuse");
        // Every interface and no public address: nothing to advertise.
        let error = operator_flags(&secret, &[]).unwrap_err().to_string();
        assert!(error.contains("--turn-external-ip"), "{error}");
        // The measured deployment: relay sockets on loopback while the public
        // address is advertised.
        let error = operator_flags(
            &secret,
            &[
                "--turn-relay-ip",
                "127.0.0.1",
                "--turn-external-ip",
                "203.0.113.7",
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("loopback") && error.contains("203.0.113.7"),
            "{error}"
        );
        // Loopback relay sockets behind listeners on every interface.
        let error = operator_flags(&secret, &["--turn-relay-ip", "127.0.0.1"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("0.0.0.0:3478"), "{error}");
        // Listeners on different addresses need to be told where to relay.
        let args = parse(&[
            "--turn-listen-udp",
            "198.51.100.4:3478",
            "--turn-listen-tcp",
            "198.51.100.5:3478",
            "--turn-secret-file",
            secret.to_str().unwrap(),
        ])
        .unwrap();
        assert!(args
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("--turn-relay-ip"));
    }
}
