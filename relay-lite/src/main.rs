//! `relay-lite`: the command line around [`relay_lite::Relay`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use relay_lite::turn::TurnArgs;
use relay_lite::{IceConfig, Relay, RelayConfig, TlsFiles};
use zajel_client_net::logging::{self, LogFormat};

/// A lightweight Zajel signaling relay (WebSocket, with GET /health and GET /metrics on the same port).
///
/// Every flag can also be given as an environment variable (shown as [env: …]; repeatable flags
/// take a comma-separated list there), which is how the systemd unit in deploy/ configures it.
#[derive(Debug, Parser)]
#[command(name = "relay-lite", version)]
struct Cli {
    /// Log lines on stderr as `text` (colour only on a terminal) or `json` (one object per line).
    #[arg(long, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "RELAY_LITE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", env = "RELAY_LITE_LISTEN")]
    listen: SocketAddr,
    /// Serve GET /metrics (and /health) on this address of its own, plain HTTP, and no longer on
    /// the public port (which then answers /metrics with 404). Unset: /metrics on the public port.
    #[arg(long, value_name = "ADDR", env = "RELAY_LITE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// URL clients use to reach this relay (sent in server_info, registered). Default: ws(s)://<listen address>.
    #[arg(long, value_name = "URL", env = "RELAY_LITE_PUBLIC_ENDPOINT")]
    public_endpoint: Option<String>,
    /// Region name for server_info and the registry.
    #[arg(long, env = "RELAY_LITE_REGION")]
    region: Option<String>,
    /// Ed25519 identity file (64 hex characters), created with mode 0600 if missing. Without it the relay gets a new serverId each run.
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_IDENTITY")]
    identity: Option<PathBuf>,
    /// Registry base URL to register with (repeatable).
    #[arg(
        long = "bootstrap",
        value_name = "URL",
        env = "RELAY_LITE_BOOTSTRAP",
        value_delimiter = ','
    )]
    bootstrap: Vec<String>,
    /// Milliseconds between registry heartbeats.
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_HEARTBEAT_MS"
    )]
    heartbeat_ms: u64,
    /// Do not link with the other servers the registries list (no /federation dialling; links offered to it are refused). See the README's "Federation".
    #[arg(long, env = "RELAY_LITE_NO_FEDERATION")]
    no_federation: bool,
    /// Federation links at once, dialled and accepted together.
    #[arg(
        long,
        default_value_t = 64,
        value_name = "N",
        env = "RELAY_LITE_FEDERATION_MAX_LINKS"
    )]
    federation_max_links: usize,
    /// Also trust this PEM CA file when dialling other servers' wss:// endpoints (besides the Mozilla roots): a fleet on a private CA, or a lab.
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_FEDERATION_CA")]
    federation_ca: Option<PathBuf>,
    /// First retry wait after a failed registry request (doubles, with jitter).
    #[arg(
        long,
        default_value_t = 1_000,
        value_name = "MS",
        env = "RELAY_LITE_REGISTRY_RETRY_MIN_MS"
    )]
    registry_retry_min_ms: u64,
    /// Longest retry wait for registry requests.
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_REGISTRY_RETRY_MAX_MS"
    )]
    registry_retry_max_ms: u64,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        env = "RELAY_LITE_TLS_CERT"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        env = "RELAY_LITE_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// How often the certificate files of --tls-cert and --turn-tls-cert are
    /// checked for a change and reloaded (0: only on SIGHUP, which always
    /// reloads them). A bad new certificate is logged and the old one kept.
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_CERTIFICATE_CHECK_MS"
    )]
    certificate_check_ms: u64,
    /// STUN URL handed to clients in ice_servers (repeatable).
    #[arg(
        long = "stun-url",
        value_name = "URL",
        env = "RELAY_LITE_STUN_URL",
        value_delimiter = ','
    )]
    stun_urls: Vec<String>,
    /// Also send ice_servers (STUN/TURN with credentials) to paired clients that never asked
    /// ("iceServers": true in register): Zajel's app, web and headless clients all ignore a
    /// message type they do not know, so this is harmless to them. `false`: only to clients
    /// that ask. See the README's "TURN for clients that never ask".
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL",
        env = "RELAY_LITE_ICE_SERVERS_UNASKED"
    )]
    ice_servers_unasked: bool,
    /// Seconds TURN credentials stay valid (for new allocations); a fresh one is sent
    /// after three quarters of that while the connection lives.
    #[arg(
        long,
        default_value_t = 600,
        value_name = "SECS",
        env = "RELAY_LITE_TURN_TTL"
    )]
    turn_ttl: u64,
    /// Drop connections that send nothing for this long.
    #[arg(
        long,
        default_value_t = 90_000,
        value_name = "MS",
        env = "RELAY_LITE_IDLE_TIMEOUT_MS"
    )]
    idle_timeout_ms: u64,
    /// Time for the TLS handshake and HTTP request head.
    #[arg(
        long,
        default_value_t = 10_000,
        value_name = "MS",
        env = "RELAY_LITE_HANDSHAKE_TIMEOUT_MS"
    )]
    handshake_timeout_ms: u64,
    /// Pair request lifetime (expiresIn).
    #[arg(
        long,
        default_value_t = 120_000,
        value_name = "MS",
        env = "RELAY_LITE_PAIR_TIMEOUT_MS"
    )]
    pair_timeout_ms: u64,
    /// pair_expiring goes out this long before a pair request expires.
    #[arg(
        long,
        default_value_t = 30_000,
        value_name = "MS",
        env = "RELAY_LITE_PAIR_WARNING_MS"
    )]
    pair_warning_ms: u64,
    /// After a code's connection drops, only the key that registered it may register it again for this long (0: free at once).
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_CODE_GRACE_MS"
    )]
    code_grace_ms: u64,
    /// When a code's key registers it from a new connection, how long the old connection has to answer a ping before the new one takes over.
    #[arg(
        long,
        default_value_t = 2_000,
        value_name = "MS",
        env = "RELAY_LITE_TAKEOVER_PROBE_MS"
    )]
    takeover_probe_ms: u64,
    /// Most pending pair requests to one target from one client address (IPv6 per /64).
    #[arg(
        long,
        default_value_t = 2,
        env = "RELAY_LITE_MAX_PENDING_PER_TARGET_PER_IP"
    )]
    max_pending_per_target_per_ip: usize,
    /// Most pair requests one connection may have open at once (answerable or not).
    #[arg(
        long,
        default_value_t = 20,
        env = "RELAY_LITE_MAX_PENDING_PER_REQUESTER"
    )]
    max_pending_per_requester: usize,
    /// How long shutdown waits for clients to take their close frame.
    #[arg(
        long,
        default_value_t = 5_000,
        value_name = "MS",
        env = "RELAY_LITE_SHUTDOWN_GRACE_MS"
    )]
    shutdown_grace_ms: u64,
    /// Most open connections.
    #[arg(long, default_value_t = 100_000, env = "RELAY_LITE_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Most open connections per client address (IPv6 per /64).
    #[arg(long, default_value_t = 64, env = "RELAY_LITE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: usize,
    /// Frames per rate window per connection.
    #[arg(long, default_value_t = 100, env = "RELAY_LITE_RATE_LIMIT_MESSAGES")]
    rate_limit_messages: u32,
    /// Rate window.
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_RATE_WINDOW_MS"
    )]
    rate_window_ms: u64,
    /// Frames queued for one connection before it counts as not reading and is dropped.
    #[arg(long, default_value_t = 256, env = "RELAY_LITE_OUTBOUND_QUEUE")]
    outbound_queue: usize,
    /// Bytes of forwarded frames queued for one connection before it is dropped.
    #[arg(long, default_value_t = 1 << 20, env = "RELAY_LITE_OUTBOUND_QUEUE_BYTES")]
    outbound_queue_bytes: usize,
    /// Directory for what outlives a restart: the rendezvous database
    /// (rendezvous.sqlite3), created if missing. Without it and without
    /// --rendezvous-db, rendezvous entries are kept in memory only and a
    /// restart loses them.
    #[arg(long, value_name = "DIR", env = "RELAY_LITE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The rendezvous SQLite database file (default: rendezvous.sqlite3 in --state-dir).
    #[arg(long, value_name = "FILE", env = "RELAY_LITE_RENDEZVOUS_DB")]
    rendezvous_db: Option<PathBuf>,
    /// Daily meeting point lifetime from its last registration.
    #[arg(
        long,
        default_value_t = 172_800_000,
        value_name = "MS",
        env = "RELAY_LITE_DAILY_POINT_TTL_MS"
    )]
    daily_point_ttl_ms: u64,
    /// Hourly token lifetime.
    #[arg(
        long,
        default_value_t = 10_800_000,
        value_name = "MS",
        env = "RELAY_LITE_HOURLY_TOKEN_TTL_MS"
    )]
    hourly_token_ttl_ms: u64,
    /// Between sweeps of expired rendezvous entries and of silent peer relays.
    #[arg(
        long,
        default_value_t = 300_000,
        value_name = "MS",
        env = "RELAY_LITE_RENDEZVOUS_CLEANUP_MS"
    )]
    rendezvous_cleanup_ms: u64,
    /// A peer relay (register with peerId) silent this long is closed at the next sweep.
    #[arg(
        long,
        default_value_t = 60_000,
        value_name = "MS",
        env = "RELAY_LITE_PEER_RELAY_TIMEOUT_MS"
    )]
    peer_relay_timeout_ms: u64,
    /// The embedded TURN server, or an external one (coturn) to issue credentials for.
    #[command(flatten)]
    turn: TurnArgs,
}

impl Cli {
    fn config(self) -> Result<RelayConfig, String> {
        let (key, created) = relay_lite::relay::identity_from(self.identity.as_deref())
            .map_err(|e| e.to_string())?;
        match (&self.identity, created) {
            (Some(path), true) => {
                tracing::info!(path = %path.display(), "created a new identity file")
            }
            (None, _) => tracing::warn!(
                "no --identity: using a throwaway key, the serverId changes on every start"
            ),
            _ => {}
        }
        let turn = self.turn.to_config().map_err(|e| e.to_string())?;
        let ice = match self.turn.secret().map_err(|e| e.to_string())? {
            Some(secret) => {
                if self.turn.turn_urls.is_empty() && turn.is_none() {
                    return Err(
                        "--turn-secret-file without a --turn-listen-* flag describes an external TURN server: give its --turn-url".into(),
                    );
                }
                Some(IceConfig {
                    turn_urls: self.turn.turn_urls.clone(),
                    stun_urls: self.stun_urls.clone(),
                    secret,
                    ttl: Duration::from_secs(self.turn_ttl),
                })
            }
            None if !self.stun_urls.is_empty() => Some(IceConfig {
                turn_urls: Vec::new(),
                stun_urls: self.stun_urls.clone(),
                secret: Vec::new(),
                ttl: Duration::from_secs(self.turn_ttl),
            }),
            None => None,
        };
        let ms = Duration::from_millis;
        let mut config = RelayConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            public_endpoint: self.public_endpoint,
            region: self.region,
            identity: Some(key),
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => None,
            },
            bootstrap: self.bootstrap,
            ice,
            ice_servers_unasked: self.ice_servers_unasked,
            turn,
            ..RelayConfig::default()
        };
        config.membership.heartbeat_interval = ms(self.heartbeat_ms.max(1));
        config.membership.retry_min = ms(self.registry_retry_min_ms.max(1));
        config.membership.retry_max = ms(self.registry_retry_max_ms.max(1));
        config.federation.enabled = !self.no_federation;
        config.federation.max_links = self.federation_max_links;
        if let Some(path) = &self.federation_ca {
            config.federation.extra_roots = zajel_client_net::tls::read_pem_certificates(path)
                .map_err(|error| format!("--federation-ca {}: {error}", path.display()))?;
        }
        config.timeouts.idle = ms(self.idle_timeout_ms);
        config.timeouts.handshake = ms(self.handshake_timeout_ms);
        config.timeouts.pair_request = ms(self.pair_timeout_ms);
        config.timeouts.pair_expiring_warning = ms(self.pair_warning_ms);
        config.timeouts.shutdown_grace = ms(self.shutdown_grace_ms);
        config.timeouts.certificate_check = ms(self.certificate_check_ms);
        config.timeouts.code_grace = ms(self.code_grace_ms);
        config.timeouts.takeover_probe = ms(self.takeover_probe_ms);
        config.limits.max_pending_per_target_per_address = self.max_pending_per_target_per_ip;
        config.limits.max_pending_per_requester = self.max_pending_per_requester;
        config.limits.max_connections = self.max_connections;
        config.limits.max_connections_per_address = self.max_connections_per_ip;
        config.limits.rate_limit_messages = self.rate_limit_messages;
        config.limits.rate_window = ms(self.rate_window_ms);
        config.limits.outbound_queue_frames = self.outbound_queue;
        config.limits.outbound_queue_bytes = self.outbound_queue_bytes;
        config.rendezvous.database = match (self.rendezvous_db, self.state_dir) {
            (Some(file), _) => Some(file),
            (None, Some(dir)) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    format!("cannot create the state directory {}: {e}", dir.display())
                })?;
                Some(dir.join(relay_lite::config::RENDEZVOUS_DB_FILE))
            }
            (None, None) => {
                tracing::warn!(
                    "no --state-dir: rendezvous entries are kept in memory, a restart loses them"
                );
                None
            }
        };
        config.rendezvous.daily_ttl = ms(self.daily_point_ttl_ms);
        config.rendezvous.hourly_ttl = ms(self.hourly_token_ttl_ms);
        config.rendezvous.cleanup_interval = ms(self.rendezvous_cleanup_ms.max(1));
        config.rendezvous.peer_relay_timeout = ms(self.peer_relay_timeout_ms);
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init("relay_lite=info", cli.log_format);
    let config = match cli.config() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("relay-lite: {error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay-lite: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let relay = match Relay::start(config).await {
            Ok(relay) => relay,
            Err(error) => {
                tracing::error!("{error}");
                eprintln!("relay-lite: {error}");
                return ExitCode::FAILURE;
            }
        };
        let signals = StopSignals::install();
        let mut reloads = ReloadSignal::install();
        let scheme = if relay.endpoint().starts_with("wss") {
            "wss"
        } else {
            "ws"
        };
        println!("server id {}", relay.server_id());
        println!("listening on {scheme}://{}", relay.local_addr());
        if let Some(address) = relay.metrics_addr() {
            println!("metrics on http://{address}/metrics");
        }
        tracing::info!(
            server_id = relay.server_id(),
            endpoint = relay.endpoint(),
            "relay started"
        );
        let stop = signals.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = reloads.next() => {
                    tracing::info!("SIGHUP: reloading the TLS certificates");
                    relay.reload_certificates();
                }
            }
        }
        tracing::info!("shutting down: closing clients with 1001 and unregistering");
        relay.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// SIGHUP: reload the TLS certificates (systemd's `ExecReload`, certbot's
/// deploy hook through `systemctl reload`).
struct ReloadSignal {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignal {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(hangup) = &mut self.hangup {
            if hangup.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered before the relay announces
/// itself, so a signal sent right after the "listening on" line is not lost.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.term) => {}
                () = next(self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// An operator can configure everything from the environment (systemd units, containers).
    #[test]
    fn every_flag_is_also_an_environment_variable() {
        let command = Cli::command();
        for argument in command.get_arguments() {
            let Some(long) = argument.get_long() else {
                continue;
            };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let wanted = format!("RELAY_LITE_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                argument.get_env().and_then(|env| env.to_str()),
                Some(wanted.as_str()),
                "--{long}"
            );
        }
    }
}
