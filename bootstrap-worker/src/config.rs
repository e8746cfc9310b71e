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
}

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Longest region accepted, in characters.
pub const MAX_REGION_CHARS: usize = 64;

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl_ms: 5 * 60 * 1000,
            policy: Policy::Signed,
            max_entries: 10_000,
            rate_limit_per_minute: 60,
            signing_key: None,
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
