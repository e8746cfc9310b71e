//! The discovery flags of both command lines, declared once: `zajel-discover discover` and
//! call-probe's `call`, `answer` and `check` flatten [`DiscoveryArgs`] (`#[command(flatten)]`),
//! and [`DiscoveryArgs::config`] is the one conversion from those flags into a
//! [`discovery::Config`](crate::discovery::Config) (with the `--ca-file` roots in its
//! `extra_roots`). [`TrustArgs`] (`--registry-key`, `--ca-file`) and [`StoreArgs`]
//! (`--cache-file`) are also flattened on their own where a subcommand takes only them.
//!
//! Flags are checked as they are parsed, so a mistyped one is a usage error (exit 2, with what
//! was expected) rather than a failure at run time: [`registry_url`] (`--registry`: http or
//! https with a host), [`server_url`] (`--server`: a signaling URL or bare host),
//! [`existing_file`] (`--ca-file`, and the input files of `zajel-discover`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ed25519_dalek::VerifyingKey;
use rustls::pki_types::CertificateDer;
use url::Url;
use zajel_wire::keys::KeyError;

use crate::discovery::Config;
use crate::doh::DohServer;
use crate::store::{self, Store};
use zajel_client_net::tls;

/// Why the discovery flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A `--registry-key` (or `ZAJEL_REGISTRY_KEY` entry) is not a public key.
    #[error("--registry-key {key}: {source}")]
    RegistryKey {
        key: String,
        #[source]
        source: KeyError,
    },
    /// A `--ca-file` could not be read or holds no certificate.
    #[error(transparent)]
    CaFile(#[from] zajel_client_net::tls::TlsError),
    /// No `--cache-file` and no directory to put the default one in.
    #[error(
        "no data directory: set --cache-file, {}, XDG_DATA_HOME or HOME",
        store::PATH_ENV
    )]
    NoDataDirectory,
}

impl ArgsError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegistryKey { .. } => "registry_key",
            Self::CaFile(_) => "ca_file",
            Self::NoDataDirectory => "no_data_directory",
        }
    }
}

/// `--registry`: an `http://` or `https://` URL with a host (`htp://…` is a usage error).
pub fn registry_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| {
        format!("{e} (expected a registry base URL such as https://registry.example)")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme {}: is not http: or https: (expected a registry base URL such as \
             https://registry.example)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(
            "no host (expected a registry base URL such as https://registry.example)".into(),
        );
    }
    Ok(url)
}

/// `--server`: a signaling URL (`wss://`, `ws://`, `https://`, `http://`) or a bare host; kept
/// as typed (the manual layer reads it).
pub fn server_url(text: &str) -> Result<String, String> {
    zajel_wire::endpoint::signaling_url(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("{e} (expected a signaling server such as wss://relay.example)"))
}

/// A file that must exist (read later): a missing one is a usage error.
pub fn existing_file(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err("not a file".into()),
        Err(e) => Err(format!("cannot read it: {e}")),
    }
}

/// Whom to trust: pinned registry keys and extra TLS roots.
#[derive(Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// Pinned registry public key (standard base64, 32 bytes); repeatable, comma-separated in
    /// the environment.
    #[arg(
        long = "registry-key",
        env = "ZAJEL_REGISTRY_KEY",
        value_delimiter = ','
    )]
    pub registry_keys: Vec<String>,
    /// Extra CA certificate (PEM) to trust for TLS (registry, DoH, wss://, turns:) besides the
    /// web PKI; repeatable. call-probe's own wss:// sessions trust only these when given.
    #[arg(long = "ca-file", value_parser = existing_file)]
    pub ca_files: Vec<PathBuf>,
}

impl TrustArgs {
    /// The pinned registry keys (blank entries, as a trailing comma leaves, are skipped).
    pub fn keys(&self) -> Result<Vec<VerifyingKey>, ArgsError> {
        self.registry_keys
            .iter()
            .map(|key| key.trim())
            .filter(|key| !key.is_empty())
            .map(|key| {
                zajel_wire::keys::public_key_from_base64(key).map_err(|source| {
                    ArgsError::RegistryKey {
                        key: key.to_string(),
                        source,
                    }
                })
            })
            .collect()
    }

    /// Every certificate of every `--ca-file`.
    pub fn roots(&self) -> Result<Vec<CertificateDer<'static>>, ArgsError> {
        let mut roots = Vec::new();
        for path in &self.ca_files {
            roots.extend(tls::read_pem_certificates(path)?);
        }
        Ok(roots)
    }
}

/// Where the cache and referrals live.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// The cache and referral file [default: $XDG_DATA_HOME/zajel/discovery.json, else
    /// ~/.local/share/zajel/discovery.json].
    #[arg(long = "cache-file", env = store::PATH_ENV)]
    pub cache_file: Option<PathBuf>,
}

impl StoreArgs {
    /// `--cache-file`, else the default path.
    pub fn path(&self) -> Result<PathBuf, ArgsError> {
        self.cache_file
            .clone()
            .or_else(store::default_path)
            .ok_or(ArgsError::NoDataDirectory)
    }

    /// The store at [`Self::path`].
    pub fn open(&self) -> Result<Store, ArgsError> {
        Ok(Store::new(self.path()?))
    }
}

/// Where discovery looks and what it accepts: the flags `zajel-discover discover` and
/// call-probe's `call`, `answer` and `check` share.
#[derive(Args, Debug, Clone)]
pub struct DiscoveryArgs {
    /// Registry base URL (GET <url>/servers); repeatable, comma-separated in the environment.
    #[arg(
        long = "registry",
        env = "ZAJEL_REGISTRY_URL",
        value_delimiter = ',',
        value_parser = registry_url
    )]
    pub registries: Vec<Url>,
    /// DNS-over-HTTPS server: https://host[:port]/path, or that URL followed by ,ip=ADDRESS;
    /// repeatable.
    #[arg(long = "doh")]
    pub doh: Vec<DohServer>,
    /// Domain whose _zajel.<domain> TXT records list servers; repeatable.
    #[arg(long = "domain")]
    pub domains: Vec<String>,
    /// A signaling server URL typed by hand (the manual layer); repeatable.
    #[arg(long = "server", value_parser = server_url)]
    pub servers: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Accept loopback and private addresses (refused by default; tests, LAN relays).
    #[arg(long)]
    pub allow_private: bool,
    /// Longest wait for a registry or DoH answer, ms (call-probe: for a server's pong too).
    #[arg(long, default_value_t = 3000)]
    pub layer_timeout_ms: u64,
}

impl DiscoveryArgs {
    /// The discovery configuration these flags ask for, with `share_links` as the QR layer
    /// and the `--ca-file` roots as `extra_roots`. A server's pong may take as long as a
    /// layer (`zajel-discover` sets its own `--probe-timeout-ms` and `--stagger-ms` on top).
    /// Without `--cache-file` and a data directory there is no cache layer (`zajel-discover`
    /// refuses that case first, see [`StoreArgs::path`]).
    pub fn config(&self, share_links: Vec<String>) -> Result<Config, ArgsError> {
        let layer_timeout = Duration::from_millis(self.layer_timeout_ms);
        Ok(Config {
            registries: self.registries.clone(),
            registry_keys: self.trust.keys()?,
            doh_servers: self.doh.clone(),
            domains: self.domains.clone(),
            store_path: if self.no_cache {
                None
            } else {
                self.store.path().ok()
            },
            share_links,
            manual: self.servers.clone(),
            allow_private: self.allow_private,
            extra_roots: self.trust.roots()?,
            layer_timeout,
            probe_timeout: layer_timeout,
            write_cache: !self.no_cache,
            ..Config::default()
        })
    }

    /// Neither a registry, a DoH server, a server nor a cache file was named.
    pub fn nothing_configured(&self) -> bool {
        self.registries.is_empty()
            && self.doh.is_empty()
            && self.servers.is_empty()
            && self.store.cache_file.is_none()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        discovery: DiscoveryArgs,
    }

    fn parse(args: &[&str]) -> DiscoveryArgs {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap()
            .discovery
    }

    fn key() -> String {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        zajel_wire::keys::public_key_to_base64(&signing.verifying_key())
    }

    #[test]
    fn flags_become_the_config() {
        let key = key();
        let args = parse(&[
            "--registry",
            "https://registry.example",
            "--registry-key",
            &key,
            "--doh",
            "https://dns.example/dns-query,ip=192.0.2.1",
            "--domain",
            "example.org",
            "--server",
            "wss://relay.example",
            "--cache-file",
            "/tmp/zajel-cache.json",
            "--allow-private",
            "--layer-timeout-ms",
            "700",
        ]);
        let config = args.config(vec!["zajel://ABC234".into()]).unwrap();
        assert_eq!(config.registries[0].as_str(), "https://registry.example/");
        assert_eq!(config.registry_keys.len(), 1);
        assert_eq!(config.doh_servers[0].ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(config.domains, ["example.org"]);
        assert_eq!(config.manual, ["wss://relay.example"]);
        assert_eq!(config.share_links, ["zajel://ABC234"]);
        assert_eq!(
            config.store_path.as_deref(),
            Some(std::path::Path::new("/tmp/zajel-cache.json"))
        );
        assert!(config.write_cache);
        assert!(config.allow_private);
        assert_eq!(config.layer_timeout, Duration::from_millis(700));
        assert_eq!(config.probe_timeout, Duration::from_millis(700));
        assert!(!args.nothing_configured());
    }

    #[test]
    fn no_cache_neither_reads_nor_writes() {
        let args = parse(&["--no-cache", "--cache-file", "/tmp/x.json"]);
        let config = args.config(Vec::new()).unwrap();
        assert_eq!(config.store_path, None);
        assert!(!config.write_cache);
    }

    #[test]
    fn blank_keys_are_skipped_and_bad_ones_named() {
        let trust = TrustArgs {
            registry_keys: vec![key(), " ".into()],
            ca_files: Vec::new(),
        };
        assert_eq!(trust.keys().unwrap().len(), 1);
        let bad = TrustArgs {
            registry_keys: vec!["nope".into()],
            ca_files: Vec::new(),
        };
        let error = bad.keys().unwrap_err();
        assert!(matches!(error, ArgsError::RegistryKey { .. }));
        assert_eq!(error.kind(), "registry_key");
        assert!(
            error.to_string().starts_with("--registry-key nope:"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_ca_file_is_named_with_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.pem");
        let trust = TrustArgs {
            registry_keys: Vec::new(),
            ca_files: vec![missing.clone()],
        };
        let error = trust.roots().unwrap_err();
        assert_eq!(error.kind(), "ca_file");
        let message = match tls::read_pem_certificates(&missing) {
            Err(direct) => direct.to_string(),
            Ok(_) => panic!("a missing file was read"),
        };
        assert_eq!(error.to_string(), message);
        assert!(error.to_string().contains("missing-ca.pem"), "{error}");
    }

    #[test]
    fn mistyped_urls_and_missing_files_are_usage_errors() {
        for args in [
            &["--registry", "htp://registry.example"][..],
            &["--registry", "registry.example"],
            &["--registry", "https://"],
            &["--server", "ftp://relay.example"],
            &["--ca-file", "/nonexistent/ca.pem"],
        ] {
            let error = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert_eq!(error.exit_code(), 2, "{args:?}");
            let text = error.to_string();
            assert!(text.contains(args[0]), "{args:?}: {text}");
        }
        let message = registry_url("htp://registry.example").unwrap_err();
        assert!(message.contains("https://registry.example"), "{message}");
        // What was accepted before still is.
        let args = parse(&[
            "--registry",
            "http://127.0.0.1:8080",
            "--server",
            "relay.example",
        ]);
        assert_eq!(args.registries[0].as_str(), "http://127.0.0.1:8080/");
        assert_eq!(args.servers, ["relay.example"]);
    }

    #[test]
    fn a_bad_doh_spec_is_a_usage_error() {
        let error = Cli::try_parse_from(["test", "--doh", "http://dns.example/q"])
            .err()
            .expect("refused");
        assert_eq!(error.exit_code(), 2);
    }
}
