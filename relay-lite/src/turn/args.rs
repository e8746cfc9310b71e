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

use super::{TurnConfig, TurnError, TurnTls};

/// TURN relay flags.
#[derive(Debug, Clone, Args)]
pub struct TurnArgs {
    /// Serve TURN over UDP on this address (e.g. 0.0.0.0:3478).
    #[arg(long, value_name = "ADDR")]
    pub turn_listen_udp: Option<SocketAddr>,
    /// Serve TURN over TCP on this address (e.g. 0.0.0.0:3478).
    #[arg(long, value_name = "ADDR")]
    pub turn_listen_tcp: Option<SocketAddr>,
    /// Serve TURN over TLS on this address (e.g. 0.0.0.0:443); needs
    /// --turn-tls-cert and --turn-tls-key.
    #[arg(long, value_name = "ADDR")]
    pub turn_listen_tls: Option<SocketAddr>,
    /// PEM certificate chain for TURN over TLS.
    #[arg(long, value_name = "FILE")]
    pub turn_tls_cert: Option<PathBuf>,
    /// PEM private key for TURN over TLS.
    #[arg(long, value_name = "FILE")]
    pub turn_tls_key: Option<PathBuf>,
    /// TURN realm (coturn: realm).
    #[arg(long, value_name = "NAME", default_value = "zajel")]
    pub turn_realm: String,
    /// File holding the shared secret for time-limited credentials
    /// (coturn: use-auth-secret with the same static-auth-secret).
    #[arg(long, value_name = "FILE")]
    pub turn_secret_file: Option<PathBuf>,
    /// Address relay sockets bind to (coturn: relay-ip).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub turn_relay_ip: IpAddr,
    /// Address advertised for relay sockets, if not the relay IP (1:1 NAT;
    /// coturn: external-ip).
    #[arg(long, value_name = "IP")]
    pub turn_external_ip: Option<IpAddr>,
    /// Allocations that may exist at once (coturn: total-quota).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub turn_max_allocations: usize,
    /// Hard maximum age of one allocation, in seconds, refreshed or not.
    #[arg(long, value_name = "SECS", default_value_t = 3 * 3600)]
    pub turn_allocation_lifetime: u64,
    /// TURN/STUN URL handed to clients with their credentials (repeatable),
    /// e.g. turn:turn.example.org:3478?transport=udp or turns:turn.example.org:443?transport=tcp.
    #[arg(long = "turn-url", value_name = "URL")]
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
        Ok(())
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
        config.relay_ip = self.turn_relay_ip;
        config.external_ip = self.turn_external_ip;
        config.max_allocations = self.turn_max_allocations;
        config.allocation_lifetime = Duration::from_secs(self.turn_allocation_lifetime);
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
}
