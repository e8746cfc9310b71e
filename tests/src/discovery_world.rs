//! A complete little world for discovery tests and the discovery benchmark,
//! all on loopback: a test CA, the native registry (in-process, with a known
//! signing key) listing one stand-in signaling server, the records
//! `txt publish` signs for it, and a real DoH server (unbound) serving them.

use std::time::Duration;

use discovery_client::discovery::Config;
use discovery_client::doh::DohServer;
use discovery_client::publish::{self, PublishRequest};
use discovery_client::txt::{self, PublishedRecord};
use ed25519_dalek::SigningKey;
use url::Url;
use zajel_wire::entry::RegisterRequest;
use zajel_wire::keys;

use crate::registry_host::{self, Profile, RunningRegistry};
use crate::test_ca::TestCa;
use crate::unbound_doh::UnboundDoh;
use crate::ws_echo::WsEcho;

/// The zone the test DoH server is authoritative for.
pub const DOMAIN: &str = "zajel.test";

pub struct DiscoveryWorld {
    pub ca: TestCa,
    pub registry_key: SigningKey,
    pub registry: RunningRegistry,
    pub relay: WsEcho,
    pub server_key: SigningKey,
    pub dir: tempfile::TempDir,
}

impl DiscoveryWorld {
    /// Registry and stand-in relay running, the relay registered (signed).
    pub async fn new() -> Self {
        let ca = TestCa::new();
        let registry_key = registry_host::random_key();
        let registry =
            registry_host::start_in_process_with_key(Profile::SIGNED, registry_key.clone());
        let server_key = registry_host::random_key();
        let relay = WsEcho::start(&server_key);
        let world = Self {
            ca,
            registry_key,
            registry,
            relay,
            server_key,
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        world.register(&world.server_key, &world.relay.url).await;
        world
    }

    /// Registers a server with the registry (signed registration).
    pub async fn register(&self, server_key: &SigningKey, endpoint: &str) {
        let request = RegisterRequest::signed(
            server_key,
            endpoint,
            Some("test"),
            discovery_client::now_ms(),
        );
        let response = reqwest::Client::new()
            .post(self.registry.url("/servers"))
            .header("content-type", "application/json")
            .body(serde_json::to_string(&request).expect("json"))
            .send()
            .await
            .expect("registry answers");
        assert!(
            response.status().is_success(),
            "registration refused: {}",
            response.status()
        );
    }

    pub fn registry_url(&self) -> Url {
        Url::parse(&self.registry.base_url).expect("registry URL")
    }

    /// The registry key as standard base64 (what clients pin).
    pub fn registry_key_base64(&self) -> String {
        keys::public_key_to_base64(&self.registry_key.verifying_key())
    }

    /// Writes the registry seed file (as `bootstrap-worker keygen` does).
    pub fn key_file(&self) -> std::path::PathBuf {
        registry_host::write_key_file(self.dir.path(), &self.registry_key)
    }

    /// Signs the registry's current list as TXT records for [`DOMAIN`] with `key`.
    pub async fn publish_with(&self, key: &SigningKey) -> Vec<PublishedRecord> {
        let request = PublishRequest {
            registry: self.registry_url(),
            extra_registry_keys: vec![self.registry_key.verifying_key()],
            domain: DOMAIN.into(),
            ttl: 60,
            valid_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        };
        let tls = zajel_client_net::tls::client_config(&[]).expect("tls");
        publish::publish(&request, key, tls).await.expect("publish")
    }

    /// Zone-file lines (no comments) for records.
    pub fn zone_lines(records: &[PublishedRecord]) -> Vec<String> {
        txt::zone_snippet(records)
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// A real DoH server serving `lines` for [`DOMAIN`].
    pub fn start_doh(&self, lines: &[String]) -> UnboundDoh {
        UnboundDoh::start(&self.ca, DOMAIN, lines).expect("unbound DoH server")
    }

    /// The DoH server as the client is told about it (URL with the TLS name, plus the address).
    pub fn doh_server(doh: &UnboundDoh) -> DohServer {
        format!("https://localhost:{}/dns-query,ip=127.0.0.1", doh.port)
            .parse()
            .expect("DoH server")
    }

    /// A configuration with the key pinned, the test CA trusted, private
    /// addresses allowed, short timeouts and no layers yet.
    pub fn config(&self) -> Config {
        Config {
            registry_keys: vec![self.registry_key.verifying_key()],
            allow_private: true,
            extra_roots: vec![self.ca.ca_der.clone()],
            layer_timeout: Duration::from_millis(1500),
            probe_timeout: Duration::from_millis(1500),
            stagger: Duration::from_millis(20),
            ..Config::default()
        }
    }

    /// A fresh cache path in this world's directory.
    pub fn cache_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}
