//! Registry settings, read the same way by both hosts.
//!
//! The Worker reads them from `wrangler.toml` vars and secrets; the native host
//! from command-line flags that carry the same names (`--ttl-ms` is
//! `ENTRY_TTL_MS`, and so on).

use ed25519_dalek::SigningKey;
use zajel_wire::keys;

/// Who may mutate the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Only mutations carrying a valid proof of possession (the default).
    Signed,
    /// Unsigned mutations too (Zajel's Node servers), but never on signed entries.
    Open,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "signed" => Ok(Self::Signed),
            "open" => Ok(Self::Open),
            other => Err(format!(
                "REGISTRATION_POLICY must be \"signed\" or \"open\", not {other:?}"
            )),
        }
    }
}

/// Whether a new endpoint is checked before it is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Listed only once the registry connected to it and it proved the key
    /// of its `serverId` (`identity_challenge`/`identity_proof`); listed
    /// entries are checked again and dropped when they stop answering (the default).
    Identity,
    /// Listed at once, never checked: only for testing the HTTP surface.
    Off,
}

impl std::str::FromStr for Admission {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "identity" => Ok(Self::Identity),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "ADMISSION_CHECK must be \"identity\" or \"off\", not {other:?}"
            )),
        }
    }
}

/// Everything the registry core needs to know about its deployment.
#[derive(Clone)]
pub struct Config {
    /// Entries not heard from for this long are dropped (`ENTRY_TTL_MS`).
    pub ttl_ms: u64,
    /// `REGISTRATION_POLICY`.
    pub policy: Policy,
    /// Most entries held at once (`MAX_ENTRIES`).
    pub max_entries: u64,
    /// Mutations each client address may make per minute, also the burst (`RATE_LIMIT_PER_MINUTE`).
    pub rate_limit_per_minute: u32,
    /// Signs `GET /servers` (`BOOTSTRAP_SIGNING_KEY`); lists go unsigned without it.
    pub signing_key: Option<SigningKey>,
    /// Reads (`GET`) each client address may make per minute, also the burst
    /// (`READ_RATE_LIMIT_PER_MINUTE`).
    pub read_rate_limit_per_minute: u32,
    /// Most entries (listed and waiting for their check) registered from one
    /// IPv4 /24 or IPv6 /48 (`MAX_ENTRIES_PER_NETWORK`).
    pub max_entries_per_network: u64,
    /// Accept loopback, private, link-local, CGNAT and ULA endpoint hosts
    /// (`ALLOW_PRIVATE_ENDPOINTS`): for labs, demos and tests only.
    pub allow_private_endpoints: bool,
    /// Whether new endpoints are checked before they are listed (`ADMISSION_CHECK`).
    pub admission: Admission,
    /// Most checks running at once (`ADMISSION_CONCURRENCY`).
    pub admission_concurrency: u32,
    /// How long one check may take, connect to proof (`ADMISSION_TIMEOUT_MS`).
    pub admission_timeout_ms: u64,
    /// How often a listed entry is checked again (`RECHECK_INTERVAL_MS`).
    pub recheck_interval_ms: u64,
    /// Most registrations waiting for their check at once (`MAX_PENDING`).
    pub max_pending: u64,
}

/// A listed entry that fails this many checks in a row is dropped.
pub const RECHECK_FAILURES_TO_DROP: u32 = 2;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longest region accepted, in characters.
pub const MAX_REGION_CHARS: usize = zajel_wire::endpoint::MAX_REGION_LEN;

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl_ms: 5 * 60 * 1000,
            policy: Policy::Signed,
            max_entries: 10_000,
            rate_limit_per_minute: 60,
            signing_key: None,
            read_rate_limit_per_minute: 120,
            max_entries_per_network: 16,
            allow_private_endpoints: false,
            admission: Admission::Identity,
            admission_concurrency: 8,
            admission_timeout_ms: 5_000,
            recheck_interval_ms: 60_000,
            max_pending: 512,
        }
    }
}

impl std::fmt::Debug for Config {
    /// Never prints the signing key, only whether there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("ttl_ms", &self.ttl_ms)
            .field("policy", &self.policy)
            .field("max_entries", &self.max_entries)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .field(
                "read_rate_limit_per_minute",
                &self.read_rate_limit_per_minute,
            )
            .field("max_entries_per_network", &self.max_entries_per_network)
            .field("allow_private_endpoints", &self.allow_private_endpoints)
            .field("admission", &self.admission)
            .field("admission_concurrency", &self.admission_concurrency)
            .field("admission_timeout_ms", &self.admission_timeout_ms)
            .field("recheck_interval_ms", &self.recheck_interval_ms)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

impl Config {
    /// Builds a config from named variables (Worker vars and secrets); absent
    /// or empty ones keep their defaults.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut config = Self::default();
        let get = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        if let Some(value) = get("ENTRY_TTL_MS") {
            config.ttl_ms = parse_positive(&value, "ENTRY_TTL_MS")?;
        }
        if let Some(value) = get("REGISTRATION_POLICY") {
            config.policy = value.parse()?;
        }
        if let Some(value) = get("MAX_ENTRIES") {
            config.max_entries = parse_positive(&value, "MAX_ENTRIES")?;
        }
        if let Some(value) = get("RATE_LIMIT_PER_MINUTE") {
            config.rate_limit_per_minute = parse_positive(&value, "RATE_LIMIT_PER_MINUTE")?;
        }
        if let Some(value) = get("READ_RATE_LIMIT_PER_MINUTE") {
            config.read_rate_limit_per_minute =
                parse_positive(&value, "READ_RATE_LIMIT_PER_MINUTE")?;
        }
        if let Some(value) = get("MAX_ENTRIES_PER_NETWORK") {
            config.max_entries_per_network = parse_positive(&value, "MAX_ENTRIES_PER_NETWORK")?;
        }
        if let Some(value) = get("ALLOW_PRIVATE_ENDPOINTS") {
            config.allow_private_endpoints = match value.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(format!(
                        "ALLOW_PRIVATE_ENDPOINTS must be true or false, not {other:?}"
                    ))
                }
            };
        }
        if let Some(value) = get("ADMISSION_CHECK") {
            config.admission = value.parse()?;
        }
        if let Some(value) = get("ADMISSION_CONCURRENCY") {
            config.admission_concurrency = parse_positive(&value, "ADMISSION_CONCURRENCY")?;
        }
        if let Some(value) = get("ADMISSION_TIMEOUT_MS") {
            config.admission_timeout_ms = parse_positive(&value, "ADMISSION_TIMEOUT_MS")?;
        }
        if let Some(value) = get("RECHECK_INTERVAL_MS") {
            config.recheck_interval_ms = parse_positive(&value, "RECHECK_INTERVAL_MS")?;
        }
        if let Some(value) = get("MAX_PENDING") {
            config.max_pending = parse_positive(&value, "MAX_PENDING")?;
        }
        if let Some(value) = get("BOOTSTRAP_SIGNING_KEY") {
            config.signing_key = Some(
                keys::signing_key_from_hex(&value)
                    .map_err(|error| format!("BOOTSTRAP_SIGNING_KEY: {error}"))?,
            );
        }
        Ok(config)
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(
    text: &str,
    name: &str,
) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(value) if value > T::default() => Ok(value),
        _ => Err(format!("{name} must be a positive integer, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_override_defaults_and_bad_values_are_named() {
        let vars = |name: &str| match name {
            "ENTRY_TTL_MS" => Some("1500".to_string()),
            "REGISTRATION_POLICY" => Some("open".to_string()),
            "MAX_ENTRIES" => Some("".to_string()),
            _ => None,
        };
        let config = Config::from_vars(vars).unwrap();
        assert_eq!(config.ttl_ms, 1500);
        assert_eq!(config.policy, Policy::Open);
        assert_eq!(config.max_entries, 10_000);
        assert!(config.signing_key.is_none());

        let error = Config::from_vars(|n| (n == "ENTRY_TTL_MS").then(|| "0".into())).unwrap_err();
        assert!(error.contains("ENTRY_TTL_MS"), "{error}");
        let error = Config::from_vars(|n| (n == "REGISTRATION_POLICY").then(|| "closed".into()))
            .unwrap_err();
        assert!(error.contains("REGISTRATION_POLICY"), "{error}");
        let error = Config::from_vars(|n| (n == "BOOTSTRAP_SIGNING_KEY").then(|| "abc".into()))
            .unwrap_err();
        assert!(error.contains("64 hex"), "{error}");
        assert!(
            !error.contains("abc"),
            "the secret's value must not be echoed: {error}"
        );
    }

    #[test]
    fn debug_output_hides_the_signing_key() {
        let config = Config {
            signing_key: Some(SigningKey::from_bytes(&[0xab; 32])),
            ..Config::default()
        };
        let text = format!("{config:?}");
        assert!(text.contains("<set>"));
        assert!(!text.to_lowercase().contains("abab"));
    }
}
