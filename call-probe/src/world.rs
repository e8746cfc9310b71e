//! A complete Zajel world in this process, on 127.0.0.1 only, for `call-probe demo` (and
//! tests): a throwaway CA (rcgen), the native registry (bootstrap-worker, in-memory store,
//! fresh signing key), relay-lite registered with it, running its embedded TURN server (UDP,
//! TCP and TLS) whose URLs and credentials it hands out, the registry's list signed as `_zajel`
//! TXT records (discovery-client's publisher) and served by an in-process DoH server
//! (hickory). [`LocalWorld::discovery_config`] is a discovery configuration that finds the
//! relay through the registry and DoH layers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bootstrap_worker::config::{Config as RegistryConfig, Policy};
use bootstrap_worker::native::{server, sqlite::SqliteStore};
use bootstrap_worker::registry::Registry;
use discovery_client::discovery::Config as DiscoveryConfig;
use discovery_client::doh_server::InProcessDoh;
use discovery_client::publish::{self, PublishRequest};
use ed25519_dalek::SigningKey;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use relay_lite::turn::{TurnConfig, TurnTls};
use relay_lite::{MembershipConfig, Relay, RelayConfig, RunningRelay};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use url::Url;
use zajel_client_net::signaling::TrustAnchors;
use zajel_client_net::{keyfile, tls};

/// Why the in-process world could not start. The messages are the ones the demo prints.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("making the demo CA: {0}")]
    Ca(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Certificate(#[from] rustls::Error),
    #[error(transparent)]
    TurnTls(relay_lite::turn::TurnError),
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("registry store: {0}")]
    RegistryStore(#[source] bootstrap_worker::store::StoreError),
    #[error("registry listener: {0}")]
    RegistryListener(#[source] std::io::Error),
    #[error("no randomness: {0}")]
    NoRandomness(#[from] getrandom::Error),
    #[error("{path}: {source}")]
    PemDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the relay's PEM files: {0}")]
    PemFiles(#[source] std::io::Error),
    #[error("relay-lite: {0}")]
    Relay(#[from] relay_lite::Error),
    #[error("relay-lite did not start its TURN server")]
    NoTurn,
    #[error("relay-lite did not register with the registry within 10 s")]
    NotRegistered,
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
    #[error(transparent)]
    Doh(#[from] discovery_client::doh_server::DohServerError),
    #[error(transparent)]
    DohAddress(#[from] discovery_client::doh::DohServerParseError),
}

/// The zone the DoH server serves `_zajel` records for.
pub const DEMO_DOMAIN: &str = "zajel.test";

/// A throwaway CA and one server certificate for `localhost` and `127.0.0.1`.
pub struct DemoCa {
    pub ca_der: CertificateDer<'static>,
    ca_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl DemoCa {
    /// Makes a new CA and server certificate.
    pub fn new() -> Result<Self, WorldError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "call-probe demo CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(Self {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            cert_der: leaf.der().clone(),
            cert_pem: leaf.pem(),
            key_der: leaf_key.serialize_der(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The CA certificate as PEM (what `--ca-file` takes).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// A rustls server configuration presenting the server certificate.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, WorldError> {
        Ok(tls::server_config_builder()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )?)
    }

    /// The certificate and key for the TURN server's TLS listener.
    pub fn turn_tls(&self) -> Result<TurnTls, WorldError> {
        TurnTls::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
            .map_err(WorldError::TurnTls)
    }
}

/// Milliseconds each part took to start.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorldTimings {
    pub registry_ms: f64,
    pub relay_ms: f64,
    pub relay_registered_ms: f64,
    pub published_ms: f64,
    pub doh_ms: f64,
}

/// Where the parts of a [`LocalWorld`] listen (for the report).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorldAddresses {
    pub registry: String,
    pub relay: String,
    pub relay_server_id: String,
    pub turn_udp: Option<SocketAddr>,
    pub turn_tcp: Option<SocketAddr>,
    pub turn_tls: Option<SocketAddr>,
    pub doh: String,
    pub domain: String,
    pub txt_records: usize,
}

/// Everything running; dropped or [`LocalWorld::stop`]ped together.
pub struct LocalWorld {
    pub ca: DemoCa,
    pub registry_key: SigningKey,
    pub registry_url: Url,
    /// relay-lite, with its embedded TURN server (`relay.turn()`).
    pub relay: RunningRelay,
    pub doh: InProcessDoh,
    pub addresses: WorldAddresses,
    pub timings: WorldTimings,
    registry_stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The relay's PEM files (wss), removed on drop.
    pem_dir: Option<PemDir>,
}

/// A directory holding the relay's certificate and key as PEM files; removed when dropped.
struct PemDir(std::path::PathBuf);

impl Drop for PemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What [`LocalWorld::start_with`] sets up.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOptions {
    /// Serve the relay over TLS (`wss://`, the demo CA's certificate for 127.0.0.1).
    pub relay_tls: bool,
}

/// A random Ed25519 key.
pub fn random_signing_key() -> Result<SigningKey, WorldError> {
    Ok(keyfile::random_key()?)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl LocalWorld {
    /// Starts every part on 127.0.0.1 (free ports), the relay on plain `ws://`.
    pub async fn start() -> Result<Self, WorldError> {
        Self::start_with(WorldOptions::default()).await
    }

    /// Starts every part on 127.0.0.1 (free ports) and waits until the relay is registered
    /// and its record published.
    pub async fn start_with(options: WorldOptions) -> Result<Self, WorldError> {
        tls::install_crypto_provider();
        let mut timings = WorldTimings::default();
        let ca = DemoCa::new()?;

        let started = Instant::now();
        let registry_key = random_signing_key()?;
        let store = SqliteStore::in_memory().map_err(WorldError::RegistryStore)?;
        let registry = Registry::new(
            store,
            RegistryConfig {
                ttl_ms: 5 * 60_000,
                policy: Policy::Signed,
                max_entries: 1000,
                rate_limit_per_minute: 10_000,
                signing_key: Some(registry_key.clone()),
                read_rate_limit_per_minute: 100_000,
                // Every part runs on 127.0.0.1; the admission check still runs
                // against the real relay-lite, which answers identity challenges.
                allow_private_endpoints: true,
                max_entries_per_network: 1_000,
                ..RegistryConfig::default()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(WorldError::RegistryListener)?;
        let registry_addr = listener
            .local_addr()
            .map_err(WorldError::RegistryListener)?;
        let (registry_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The admission check connects to the relay, whose certificate is the demo CA's.
        let host_options = server::HostOptions {
            admission_trust: TrustAnchors::Only(vec![ca.ca_der.clone()]),
            ..server::HostOptions::default()
        };
        tokio::spawn(async move {
            let _ = server::serve_with(listener, registry, host_options, async {
                let _ = stopped.await;
            })
            .await;
        });
        let registry_url = Url::parse(&format!("http://{registry_addr}"))
            .expect("a socket address makes an http URL");
        timings.registry_ms = ms(started);

        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret)?;
        let mut turn_config = TurnConfig::new(secret);
        let loopback_any = SocketAddr::from(([127, 0, 0, 1], 0));
        turn_config.listen_udp = Some(loopback_any);
        turn_config.listen_tcp = Some(loopback_any);
        turn_config.listen_tls = Some(loopback_any);
        turn_config.tls = Some(ca.turn_tls()?);
        // Both peers of the demo live on loopback, which the TURN peer policy denies by
        // default (relay-lite README, TURN peer policy): this world is a lab network.
        turn_config.allow_peers = vec!["127.0.0.0/8".parse().expect("a CIDR literal parses")];

        let pem_dir = if options.relay_tls {
            let mut tag = [0u8; 8];
            getrandom::fill(&mut tag)?;
            let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            let dir = std::env::temp_dir().join(format!("call-probe-world-{name}"));
            std::fs::create_dir_all(&dir).map_err(|source| WorldError::PemDir {
                path: dir.display().to_string(),
                source,
            })?;
            let dir = PemDir(dir);
            std::fs::write(dir.0.join("relay.pem"), &ca.cert_pem)
                .and_then(|_| std::fs::write(dir.0.join("relay.key"), &ca.key_pem))
                .map_err(WorldError::PemFiles)?;
            Some(dir)
        } else {
            None
        };
        let started = Instant::now();
        let relay = Relay::start(RelayConfig {
            tls: pem_dir.as_ref().map(|dir| relay_lite::TlsFiles {
                cert: dir.0.join("relay.pem"),
                key: dir.0.join("relay.key"),
            }),
            listen: loopback_any,
            region: Some("demo".into()),
            identity: Some(random_signing_key()?),
            bootstrap: vec![registry_url.to_string().trim_end_matches('/').to_string()],
            membership: MembershipConfig {
                retry_min: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                ..MembershipConfig::default()
            },
            // relay-lite starts its embedded TURN server and hands out its listeners' URLs
            // (turn: over UDP and TCP, turns: over TLS) with fresh credentials.
            turn: Some(turn_config),
            ..RelayConfig::default()
        })
        .await?;
        timings.relay_ms = ms(started);
        let turn = relay.turn().ok_or(WorldError::NoTurn)?;
        let (turn_udp, turn_tcp, turn_tls) = (turn.udp_addr(), turn.tcp_addr(), turn.tls_addr());

        // The relay registers in the background; its metrics say when it has.
        let started = Instant::now();
        let metrics = relay.metrics();
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.registries_registered() < 1 {
            if Instant::now() > deadline {
                return Err(WorldError::NotRegistered);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        timings.relay_registered_ms = ms(started);

        let started = Instant::now();
        let request = PublishRequest {
            registry: registry_url.clone(),
            extra_registry_keys: Vec::new(),
            domain: DEMO_DOMAIN.into(),
            ttl: 60,
            valid_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        };
        let tls = tls::client_config(&[])?;
        // The registry lists the relay once its admission check (a WebSocket connect and
        // an identity proof) has passed, a few ms after the registration was answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        let records = loop {
            match publish::publish(&request, &registry_key, tls.clone()).await {
                Err(publish::PublishError::NoServers) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        };
        timings.published_ms = ms(started);

        let started = Instant::now();
        let served: Vec<(String, Vec<String>)> = records
            .iter()
            .map(|r| (r.name.clone(), r.strings.clone()))
            .collect();
        let doh = InProcessDoh::start(ca.server_config()?, DEMO_DOMAIN, &served)?;
        timings.doh_ms = ms(started);

        let addresses = WorldAddresses {
            registry: registry_url.to_string(),
            relay: relay.endpoint().to_string(),
            relay_server_id: relay.server_id().to_string(),
            turn_udp,
            turn_tcp,
            turn_tls,
            doh: format!("{},ip=127.0.0.1", doh.url),
            domain: DEMO_DOMAIN.into(),
            txt_records: records.len(),
        };
        Ok(Self {
            ca,
            registry_key,
            registry_url,
            relay,
            doh,
            addresses,
            timings,
            registry_stop: Some(registry_stop),
            pem_dir,
        })
    }

    /// The relay's WebSocket URL (`ws://` or `wss://`).
    pub fn relay_url(&self) -> Url {
        Url::parse(self.relay.endpoint()).expect("the relay's endpoint is a URL")
    }

    /// What a `wss://` session to the relay must trust (the demo CA).
    pub fn trust(&self) -> TrustAnchors {
        TrustAnchors::Only(vec![self.ca.ca_der.clone()])
    }

    /// Discovery through the registry (key pinned) and DoH layers, the demo CA trusted,
    /// loopback allowed, no cache file.
    pub fn discovery_config(&self) -> Result<DiscoveryConfig, WorldError> {
        Ok(DiscoveryConfig {
            registries: vec![self.registry_url.clone()],
            registry_keys: vec![self.registry_key.verifying_key()],
            doh_servers: vec![self
                .addresses
                .doh
                .parse::<discovery_client::doh::DohServer>()?],
            domains: vec![DEMO_DOMAIN.into()],
            allow_private: true,
            extra_roots: vec![self.ca.ca_der.clone()],
            write_cache: false,
            ..DiscoveryConfig::default()
        })
    }

    /// Stops the relay (signed unregister) with its TURN server, the DoH server and the registry.
    pub async fn stop(mut self) {
        // (Dropping the world also stops the registry: its stop channel closes.)
        let _pem_dir = self.pem_dir.take();
        self.relay.shutdown().await;
        if let Some(stop) = self.registry_stop.take() {
            let _ = stop.send(());
        }
    }
}
