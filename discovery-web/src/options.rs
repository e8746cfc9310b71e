//! The options of `discover(options)` as a page passes them (camelCase JSON,
//! see the crate README and the TypeScript `DiscoverOptions`), checked once
//! into a [`Config`], and the discovery-core [`Rules`] a run follows. The
//! defaults, source names and limits are those of the native client
//! (discovery-client's `Config` and `zajel-discover` flags), so that the
//! browser's report reads like `zajel-discover --json`.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use url::Url;
pub use zajel_discovery_core::discovery::doh_source;
use zajel_discovery_core::discovery::{doh_queries, Rules, DEFAULT_CHECK_TIMEOUT};
pub use zajel_discovery_core::registry_list::servers_url;

/// The storage key the cache and referrals live under by default.
pub const DEFAULT_STORAGE_KEY: &str = "zajel.discovery";

/// What a page passes to `discover` (every field optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Options {
    /// Registry base URLs (`GET <url>/servers`).
    pub registries: Vec<String>,
    /// Pinned registry keys (standard base64 or `ed25519:` + base64).
    pub registry_keys: Vec<String>,
    /// DNS-over-HTTPS endpoints (`https://dns.example/dns-query`).
    pub doh_servers: Vec<String>,
    /// Domains whose `_zajel.<domain>` TXT records carry servers.
    pub domains: Vec<String>,
    /// Sharing links (`zajel://…`), e.g. read from QR codes.
    pub share_links: Vec<String>,
    /// Server URLs typed by the user.
    pub manual: Vec<String>,
    /// Accept loopback and private addresses (tests, LANs).
    pub allow_private: bool,
    /// Where the cache and referrals are kept (`null`: no cache layer).
    pub storage_key: Option<String>,
    /// Keep no cache at all (no cache or referral layer, nothing written).
    pub no_cache: bool,
    /// Longest wait for one registry or DoH answer (ms).
    pub layer_timeout_ms: Option<u64>,
    /// Longest wait for one candidate's `pong` (ms).
    pub probe_timeout_ms: Option<u64>,
    /// Delay between starting the registry layer and the DoH layer (ms).
    pub stagger_ms: Option<u64>,
    /// Most fresh candidate checks at once.
    pub max_parallel_probes: Option<usize>,
    /// How long a check runs before it stops holding a fresh slot (ms).
    pub stall_after_ms: Option<u64>,
    /// Most candidate checks at once, stalled ones included.
    pub max_probes_in_flight: Option<usize>,
    /// Write the servers that answered to the cache (default true).
    pub write_cache: Option<bool>,
}

/// Why options were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The options are not the expected JSON object.
    #[error("options: {0}")]
    Shape(String),
    /// A registry URL does not parse or is not http(s).
    #[error("registry {url:?}: {reason}")]
    Registry { url: String, reason: String },
    /// A pinned key is not an Ed25519 public key.
    #[error("registry key {key:?}: {reason}")]
    RegistryKey { key: String, reason: String },
    /// A DoH server is not an https:// URL.
    #[error("DoH server {url:?}: {reason}")]
    Doh { url: String, reason: String },
}

impl OptionsError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Shape(_) => "options_shape",
            Self::Registry { .. } => "options_registry",
            Self::RegistryKey { .. } => "options_registry_key",
            Self::Doh { .. } => "options_doh",
        }
    }
}

/// Checked options of one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub registries: Vec<Url>,
    pub registry_keys: Vec<VerifyingKey>,
    pub doh_servers: Vec<Url>,
    pub domains: Vec<String>,
    pub share_links: Vec<String>,
    pub manual: Vec<String>,
    pub allow_private: bool,
    /// `None`: no cache or referral layer, nothing written.
    pub storage_key: Option<String>,
    pub layer_timeout: Duration,
    pub probe_timeout: Duration,
    pub stagger: Duration,
    pub max_parallel_probes: usize,
    pub stall_after: Duration,
    pub max_probes_in_flight: usize,
    pub write_cache: bool,
}

impl Options {
    /// Reads options from their JSON text (`JSON.stringify(options)`).
    pub fn from_json(text: &str) -> Result<Self, OptionsError> {
        if text.trim().is_empty() || text.trim() == "null" || text.trim() == "undefined" {
            return Ok(Self::default());
        }
        serde_json::from_str(text).map_err(|e| OptionsError::Shape(e.to_string()))
    }

    /// Checks every URL and key.
    pub fn check(self) -> Result<Config, OptionsError> {
        let registries = self
            .registries
            .iter()
            .map(|text| {
                let url = Url::parse(text.trim()).map_err(|e| OptionsError::Registry {
                    url: text.clone(),
                    reason: e.to_string(),
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(OptionsError::Registry {
                        url: text.clone(),
                        reason: "must be an http(s):// URL".into(),
                    });
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let registry_keys = self
            .registry_keys
            .iter()
            .map(|key| {
                let bare = key.trim().trim_start_matches("ed25519:");
                zajel_wire::keys::public_key_from_base64(bare).map_err(|e| {
                    OptionsError::RegistryKey {
                        key: key.clone(),
                        reason: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let doh_servers = self
            .doh_servers
            .iter()
            .map(|text| {
                let url = Url::parse(text.trim()).map_err(|e| OptionsError::Doh {
                    url: text.clone(),
                    reason: e.to_string(),
                })?;
                if url.scheme() != "https" {
                    return Err(OptionsError::Doh {
                        url: text.clone(),
                        reason: "must be an https:// URL".into(),
                    });
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let storage_key = if self.no_cache {
            None
        } else {
            Some(
                self.storage_key
                    .unwrap_or_else(|| DEFAULT_STORAGE_KEY.to_string()),
            )
        };
        // The native client's defaults: discovery-core's.
        let defaults = Rules::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        Ok(Config {
            registries,
            registry_keys,
            doh_servers,
            domains: self.domains,
            share_links: self.share_links,
            manual: self.manual,
            allow_private: self.allow_private,
            storage_key,
            layer_timeout: ms(self.layer_timeout_ms, defaults.layer_timeout),
            probe_timeout: ms(self.probe_timeout_ms, DEFAULT_CHECK_TIMEOUT),
            stagger: ms(self.stagger_ms, defaults.stagger),
            max_parallel_probes: self
                .max_parallel_probes
                .unwrap_or(defaults.max_parallel_checks),
            stall_after: ms(self.stall_after_ms, defaults.stall_after),
            max_probes_in_flight: self
                .max_probes_in_flight
                .unwrap_or(defaults.max_checks_in_flight),
            write_cache: self.write_cache.unwrap_or(true),
        })
    }
}

impl Config {
    /// Every (resolver, domain) pair of the DoH layer, with the name asked.
    pub fn doh_queries(&self) -> Vec<(Url, String, String)> {
        doh_queries(&self.doh_servers, &self.domains)
            .map(|(server, domain, name)| (server.clone(), domain.clone(), name))
            .collect()
    }

    /// The rules the machine runs with.
    pub fn rules(&self) -> Rules {
        Rules {
            allow_private: self.allow_private,
            max_parallel_checks: self.max_parallel_probes,
            stall_after: self.stall_after,
            max_checks_in_flight: self.max_probes_in_flight,
            revoked: Vec::new(),
            stagger: self.stagger,
            layer_timeout: self.layer_timeout,
            registry_sources: self
                .registries
                .iter()
                .map(|url| servers_url(url).to_string())
                .collect(),
            doh_sources: self
                .doh_queries()
                .iter()
                .map(|(server, _, name)| doh_source(server, name))
                .collect(),
            remember: self.write_cache && self.storage_key.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn options_take_the_native_clients_defaults_and_name_sources_as_it_does() {
        let config = Options::from_json(&format!(
            r#"{{"registries":["https://r.example/zajel/"],"registryKeys":["ed25519:{KEY}"],
                "dohServers":["https://dns.example/dns-query"],"domains":["Example.org"]}}"#
        ))
        .unwrap()
        .check()
        .unwrap();
        assert_eq!(config.layer_timeout, Duration::from_secs(3));
        assert_eq!(config.stagger, Duration::from_millis(50));
        assert_eq!(config.storage_key.as_deref(), Some(DEFAULT_STORAGE_KEY));
        let rules = config.rules();
        assert_eq!(rules.registry_sources, ["https://r.example/zajel/servers"]);
        assert_eq!(
            rules.doh_sources,
            ["https://dns.example/dns-query → _zajel.example.org."]
        );
        assert!(rules.remember);
        assert_eq!(
            Options::from_json("null")
                .unwrap()
                .check()
                .unwrap()
                .domains
                .len(),
            0
        );
    }

    #[test]
    fn bad_options_are_refused_with_their_kind() {
        let cases = [
            (r#"{"registrys":[]}"#, "options_shape"),
            (r#"{"registries":["ftp://r.example"]}"#, "options_registry"),
            (r#"{"registryKeys":["not a key"]}"#, "options_registry_key"),
            (r#"{"dohServers":["http://dns.example/q"]}"#, "options_doh"),
        ];
        for (json, kind) in cases {
            let error = Options::from_json(json)
                .and_then(Options::check)
                .unwrap_err();
            assert_eq!(error.kind(), kind, "{json}: {error}");
        }
    }

    #[test]
    fn no_cache_means_no_storage_and_nothing_remembered() {
        let config = Options::from_json(r#"{"noCache":true}"#)
            .unwrap()
            .check()
            .unwrap();
        assert_eq!(config.storage_key, None);
        assert!(!config.rules().remember);
    }
}
