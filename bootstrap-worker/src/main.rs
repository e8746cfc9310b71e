//! `bootstrap-worker`: run the Zajel registry natively, or make its signing key.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::ExitCode;

    use bootstrap_worker::config::{Admission, Config, Policy};
    use bootstrap_worker::native::forwarded::{AddressBlock, TrustedProxies};
    use bootstrap_worker::native::{server, sqlite::SqliteStore};
    use bootstrap_worker::registry::Registry;
    use clap::{Parser, Subcommand};
    use zajel_client_net::keyfile;
    use zajel_client_net::logging::{self, LogFormat};
    use zajel_client_net::signaling::TrustAnchors;
    use zajel_wire::keys;

    /// The Zajel server registry, self-hosted.
    ///
    /// Every `serve` flag can also be given as an environment variable (shown as [env: …]),
    /// which is how the systemd unit in deploy/ configures it.
    #[derive(Parser)]
    #[command(version, about)]
    struct Cli {
        /// Log lines on stderr as `text` (colour only on a terminal) or `json` (one object per
        /// line).
        #[arg(long, global = true, value_name = "FORMAT", default_value_t = LogFormat::Text, env = "ZAJEL_REGISTRY_LOG_FORMAT")]
        log_format: LogFormat,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Serve the registry over HTTP.
        Serve(ServeArgs),
        /// Create a new signing key file (mode 0600) and print its public key.
        Keygen {
            /// Where to write the key; an existing file is never replaced.
            #[arg(long)]
            out: PathBuf,
        },
        /// Print the public key (standard base64, the form clients pin) of a key file.
        Pubkey {
            #[arg(long)]
            key_file: PathBuf,
        },
    }

    #[derive(clap::Args)]
    struct ServeArgs {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787", env = "ZAJEL_REGISTRY_LISTEN")]
        listen: SocketAddr,
        /// Serve GET /metrics on this address of its own and no longer on the public one (which
        /// then answers /metrics with 404). Unset: /metrics on the public address.
        #[arg(long, value_name = "ADDR", env = "ZAJEL_REGISTRY_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Key that signs `GET /servers` (64 hex characters; see `keygen`).
        #[arg(long, env = "ZAJEL_REGISTRY_SIGNING_KEY_FILE")]
        signing_key_file: PathBuf,
        /// SQLite file holding the entries (created if missing).
        #[arg(
            long,
            default_value = "zajel-registry.sqlite3",
            conflicts_with = "memory",
            env = "ZAJEL_REGISTRY_DATA"
        )]
        data: PathBuf,
        /// Keep entries in memory only; they vanish when the server stops.
        #[arg(long, env = "ZAJEL_REGISTRY_MEMORY")]
        memory: bool,
        /// Who may register: `signed` (proof of possession) or `open` (Zajel's servers too).
        #[arg(long, default_value = "signed", value_parser = parse_policy, env = "ZAJEL_REGISTRY_POLICY")]
        policy: Policy,
        /// Entries not heard from for this many ms are dropped.
        #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_TTL_MS")]
        ttl_ms: u64,
        /// Most entries held at once.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_MAX_ENTRIES")]
        max_entries: u64,
        /// Mutations per minute allowed from one client address (also the burst).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..), env = "ZAJEL_REGISTRY_RATE_LIMIT")]
        rate_limit: u32,
        /// Reverse proxies (addresses or CIDR blocks, comma-separated or repeated) whose
        /// X-Forwarded-For / Forwarded name the client; the rate limit then keys on the rightmost
        /// hop that is not one of them. Without it those headers are ignored.
        #[arg(
            long,
            value_name = "ADDRESS[/PREFIX]",
            value_delimiter = ',',
            env = "ZAJEL_REGISTRY_TRUSTED_PROXY"
        )]
        trusted_proxy: Vec<AddressBlock>,
        /// Reads (GET) per minute allowed from one client address (also the burst).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..), env = "ZAJEL_REGISTRY_READ_RATE_LIMIT")]
        read_rate_limit: u32,
        /// Most entries (listed and waiting for their check) registered from one IPv4 /24 or
        /// IPv6 /48.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_MAX_ENTRIES_PER_NETWORK")]
        max_entries_per_network: u64,
        /// Accept loopback, private, link-local, CGNAT and ULA endpoint hosts (labs, demos and
        /// tests only).
        #[arg(long, env = "ZAJEL_REGISTRY_ALLOW_PRIVATE_ENDPOINTS")]
        allow_private_endpoints: bool,
        /// `identity`: list a new endpoint only after connecting to it and getting an identity
        /// proof by its key, and drop listed ones that stop answering; `off`: list at once
        /// (testing the HTTP surface only).
        #[arg(long, default_value = "identity", value_parser = parse_admission, env = "ZAJEL_REGISTRY_ADMISSION_CHECK")]
        admission_check: Admission,
        /// Most admission checks running at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..), env = "ZAJEL_REGISTRY_ADMISSION_CONCURRENCY")]
        admission_concurrency: u32,
        /// How long one admission check may take, in ms.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_ADMISSION_TIMEOUT_MS")]
        admission_timeout_ms: u64,
        /// How often a listed entry is checked again, in ms.
        #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_RECHECK_INTERVAL_MS")]
        recheck_interval_ms: u64,
        /// Most registrations waiting for their admission check at once.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..), env = "ZAJEL_REGISTRY_MAX_PENDING")]
        max_pending: u64,
        /// PEM certificates the admission checks trust for wss:// endpoints instead of the web
        /// PKI (labs and tests with their own CA).
        #[arg(long, value_name = "PEM", env = "ZAJEL_REGISTRY_ADMISSION_CA_FILE")]
        admission_ca_file: Option<PathBuf>,
    }

    fn parse_admission(text: &str) -> Result<Admission, String> {
        text.parse()
    }

    fn parse_policy(text: &str) -> Result<Policy, String> {
        text.parse()
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        logging::init("info", cli.log_format);
        let result = match cli.command {
            Command::Serve(args) => serve(args),
            Command::Keygen { out } => keyfile::generate(&out)
                .map(|key| {
                    eprintln!("wrote a new signing key to {} (mode 0600)", out.display());
                    println!("{}", keys::public_key_to_base64(&key.verifying_key()));
                })
                .map_err(|error| error.to_string()),
            Command::Pubkey { key_file } => keyfile::read(&key_file)
                .map(|key| {
                    println!("{}", keys::public_key_to_base64(&key.verifying_key()));
                })
                .map_err(|error| error.to_string()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    }

    fn serve(args: ServeArgs) -> Result<(), String> {
        let key = keyfile::read(&args.signing_key_file).map_err(|error| error.to_string())?;
        let store = if args.memory {
            SqliteStore::in_memory()
        } else {
            SqliteStore::open(&args.data)
        }
        .map_err(|error| format!("cannot open {}: {error}", args.data.display()))?;
        let public = keys::public_key_to_base64(&key.verifying_key());
        let admission_trust = match &args.admission_ca_file {
            None => TrustAnchors::WebPki,
            Some(path) => TrustAnchors::Only(
                zajel_client_net::tls::read_pem_certificates(path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?,
            ),
        };
        let config = Config {
            ttl_ms: args.ttl_ms,
            policy: args.policy,
            max_entries: args.max_entries,
            rate_limit_per_minute: args.rate_limit,
            signing_key: Some(key),
            read_rate_limit_per_minute: args.read_rate_limit,
            max_entries_per_network: args.max_entries_per_network,
            allow_private_endpoints: args.allow_private_endpoints,
            admission: args.admission_check,
            admission_concurrency: args.admission_concurrency,
            admission_timeout_ms: args.admission_timeout_ms,
            recheck_interval_ms: args.recheck_interval_ms,
            max_pending: args.max_pending,
        };
        let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|error| {
                    let hint = logging::listen_hint(args.listen, &error);
                    format!("cannot listen on {}: {error}{hint}", args.listen)
                })?;
            let address = listener.local_addr().map_err(|error| error.to_string())?;
            let metrics_listener = match args.metrics_listen {
                Some(metrics) => Some(tokio::net::TcpListener::bind(metrics).await.map_err(
                    |error| {
                        let hint = logging::listen_hint(metrics, &error);
                        format!("cannot listen on {metrics}: {error}{hint}")
                    },
                )?),
                None => None,
            };
            tracing::info!(
                storage = %if args.memory { "memory".to_string() } else { args.data.display().to_string() },
                policy = ?config.policy,
                ttl_ms = config.ttl_ms,
                admission = ?config.admission,
                allow_private_endpoints = config.allow_private_endpoints,
                "registry signing with public key {public}"
            );
            // Test harnesses wait for this line.
            println!("listening on http://{address}");
            if let Some(metrics) = &metrics_listener {
                let metrics = metrics.local_addr().map_err(|error| error.to_string())?;
                println!("metrics on http://{metrics}/metrics");
            }
            if !args.trusted_proxy.is_empty() {
                tracing::info!(
                    proxies = ?args.trusted_proxy,
                    "rate limits key on the client named by these proxies' forwarding headers"
                );
            }
            let options = server::HostOptions {
                trusted_proxies: TrustedProxies::new(args.trusted_proxy),
                admission_trust,
            };
            server::serve_split(
                listener,
                metrics_listener,
                Registry::new(store, config),
                options,
                shutdown_signal(),
            )
            .await
                .map_err(|error| error.to_string())?;
            tracing::info!("shut down");
            Ok(())
        })
    }

    async fn shutdown_signal() {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(signal) => signal,
                    Err(_) => return interrupt.await.unwrap_or(()),
                };
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        interrupt.await.unwrap_or(());
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use clap::CommandFactory;

        /// An operator can configure `serve` from the environment (systemd units, containers).
        #[test]
        fn every_serve_flag_is_also_an_environment_variable() {
            let command = Cli::command();
            let serve = command.find_subcommand("serve").expect("serve");
            let mut checked = 0;
            for argument in serve.get_arguments().chain(command.get_arguments()) {
                let Some(long) = argument.get_long() else {
                    continue;
                };
                if ["help", "version"].contains(&long) {
                    continue;
                }
                let wanted = format!("ZAJEL_REGISTRY_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    argument.get_env().and_then(|env| env.to_str()),
                    Some(wanted.as_str()),
                    "--{long}"
                );
                checked += 1;
            }
            assert!(checked >= 8, "only {checked} flags seen");
        }
    }
}
