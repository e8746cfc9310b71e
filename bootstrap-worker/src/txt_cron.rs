//! The Worker's Cron Trigger (issue 16, item 3): republishing the signed
//! `_zajel.<domain>` TXT set through Cloudflare's DNS API, signed inside
//! the Worker with the registry key it already holds (the key never leaves
//! Cloudflare; see discovery-core's `txt` docs, "One key, never copied").
//! This module is the sans-IO part, built and unit-tested natively: the
//! settings ([`TxtCronConfig`], from the Worker's vars), the decision
//! ([`plan`]: publish or skip, from what the API serves now), and the API's
//! request and answer shapes ([`CloudflareApi`], [`parse_answer`]). The
//! Worker's `scheduled` handler (`worker_host.rs`) does the fetches.
//!
//! **No state of its own**: what is served *is* the state. Each run lists
//! the TXT records of the name and verifies them with the registry key;
//! the set is republished when it is not exactly the wanted one (a server
//! added, changed, retired or revoked, a TTL changed, or any record that
//! does not verify — a foreign, junk or expired record), or when a record
//! has used half its lifetime (records are valid `TXT_VALID_FOR_SECS`, 72 h
//! by default, so they are replaced 36 h before `exp` and a day of failed
//! runs is harmless). Otherwise the run skips: nothing is written. A
//! publication creates every new record first and deletes the old ones
//! after, so the name never goes empty; Ed25519 signatures are
//! deterministic, so a record signed again with the same `exp` is the same
//! text and is kept. An empty registry publishes nothing and deletes
//! nothing (records already served run out by their `exp`).

use ed25519_dalek::SigningKey;
use serde::Deserialize;
use zajel_discovery_core::txt::{self, PublishedRecord, TxtRecord, MAX_VALIDITY_SECS};
use zajel_wire::entry::ServerEntry;

/// Cloudflare's API base.
pub const DEFAULT_API: &str = "https://api.cloudflare.com/client/v4";
/// Record lifetime when `TXT_VALID_FOR_SECS` is not set: 72 hours.
pub const DEFAULT_VALID_FOR_SECS: u64 = 72 * 3600;
/// TTL of the records when `TXT_TTL` is not set.
pub const DEFAULT_TTL: u32 = 300;
/// Records per listed page.
pub const PER_PAGE: u32 = 100;

/// Why a run could not publish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxtCronError {
    /// A var is malformed, or the token or signing key is missing.
    #[error("TXT publishing settings: {0}")]
    Config(String),
    /// The registry's own list did not verify.
    #[error("registry list refused: {0}")]
    RegistryList(String),
    /// The records could not be signed.
    #[error(transparent)]
    Records(#[from] txt::PublishError),
    /// The API could not be reached.
    #[error("Cloudflare API {what}: {detail}")]
    Unreachable { what: &'static str, detail: String },
    /// The API answered with an error (`success: false` or a non-2xx status).
    #[error("Cloudflare API {what} failed ({status}): {errors}")]
    Api {
        what: &'static str,
        status: u16,
        errors: String,
    },
    /// No zone of that name is visible to the token.
    #[error("Cloudflare zone {0} not found (or the token cannot see it)")]
    ZoneNotFound(String),
}

impl TxtCronError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "txt_config",
            Self::RegistryList(_) => "registry_list_refused",
            Self::Records(_) => "txt_records",
            Self::Unreachable { .. } => "cloudflare_unreachable",
            Self::Api { .. } => "cloudflare_api",
            Self::ZoneNotFound(_) => "cloudflare_zone_not_found",
        }
    }
}

/// What the Cron Trigger publishes, from the Worker's vars.
#[derive(Clone, PartialEq, Eq)]
pub struct TxtCronConfig {
    /// `TXT_DOMAIN`: records go to `_zajel.<domain>`.
    pub domain: String,
    /// `TXT_ZONE`: the Cloudflare zone holding that name (default: the domain).
    pub zone: String,
    /// `CLOUDFLARE_API`: the API base ([`DEFAULT_API`]; tests point it at a stand-in).
    pub api: String,
    /// `CLOUDFLARE_API_TOKEN` (a secret, scoped `Zone.DNS:Edit`). Never shown by `Debug`.
    pub token: String,
    /// `TXT_TTL`.
    pub ttl: u32,
    /// `TXT_VALID_FOR_SECS`: how long each signed record stays valid (at most 7 days).
    pub valid_for_secs: u64,
    /// `TXT_REVOKE`: retired `serverId`s (comma-separated), published as
    /// signed revocations valid 7 days, their own records left out.
    pub revoke: Vec<String>,
}

impl std::fmt::Debug for TxtCronConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxtCronConfig")
            .field("domain", &self.domain)
            .field("zone", &self.zone)
            .field("api", &self.api)
            .field("token", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("valid_for_secs", &self.valid_for_secs)
            .field("revoke", &self.revoke)
            .finish()
    }
}

impl TxtCronConfig {
    /// Reads the settings; `Ok(None)` when `TXT_DOMAIN` is not set (the
    /// Cron Trigger then does nothing).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TxtCronError> {
        let Some(domain) = get("TXT_DOMAIN")
            .map(|d| txt::normalise_domain(&d))
            .filter(|d| !d.is_empty())
        else {
            return Ok(None);
        };
        let bad = |name: &str, why: &str| TxtCronError::Config(format!("{name} {why}"));
        let zone = get("TXT_ZONE")
            .map(|z| txt::normalise_domain(&z))
            .filter(|z| !z.is_empty())
            .unwrap_or_else(|| domain.clone());
        if domain != zone && !domain.ends_with(&format!(".{zone}")) {
            return Err(bad("TXT_ZONE", "must be TXT_DOMAIN or a parent of it"));
        }
        let api = get("CLOUDFLARE_API")
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| DEFAULT_API.to_string());
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(bad("CLOUDFLARE_API", "must be an http(s) URL"));
        }
        let token = get("CLOUDFLARE_API_TOKEN")
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                bad(
                    "CLOUDFLARE_API_TOKEN",
                    "is not set (npx wrangler secret put CLOUDFLARE_API_TOKEN)",
                )
            })?;
        let ttl = match get("TXT_TTL") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|t| *t >= 1)
                .ok_or_else(|| bad("TXT_TTL", "must be seconds (1 or more)"))?,
            None => DEFAULT_TTL,
        };
        let valid_for_secs = match get("TXT_VALID_FOR_SECS") {
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (10..=MAX_VALIDITY_SECS).contains(s))
                .ok_or_else(|| bad("TXT_VALID_FOR_SECS", "must be 10 to 604800 seconds"))?,
            None => DEFAULT_VALID_FOR_SECS,
        };
        let revoke = get("TXT_REVOKE")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Some(Self {
            domain,
            zone,
            api,
            token,
            ttl,
            valid_for_secs,
            revoke,
        }))
    }
}

/// One TXT record as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedRecord {
    pub id: String,
    pub content: String,
    #[serde(default)]
    pub ttl: u32,
}

/// Why a publication is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing is served under the name.
    FirstRun,
    /// The served set is not the wanted one (servers, revocations or TTL).
    SetChanged,
    /// Something served does not verify (foreign, junk, expired or badly signed).
    ForeignRecords,
    /// A served record has used half its lifetime.
    HalfLife,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstRun => "first_run",
            Self::SetChanged => "set_changed",
            Self::ForeignRecords => "foreign_records",
            Self::HalfLife => "half_life",
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The served set is current: nothing is written until `refresh_at`.
    Skip { refresh_at: u64 },
    /// The registry lists no server and nothing is to be revoked.
    NothingToPublish,
    /// Create `create` (first), then delete the listed records `delete` (ids).
    Replace {
        reason: Reason,
        create: Vec<PublishedRecord>,
        delete: Vec<String>,
        /// `exp` of the new server records.
        expires: u64,
    },
}

/// A record's text: the API's `content` (`"a" "b"` or bare text) with its
/// character-strings concatenated.
pub fn content_text(content: &str) -> String {
    let content = content.trim();
    if !content.starts_with('"') {
        return content.to_string();
    }
    let mut text = String::new();
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.extend(chars.next()),
                '"' => break,
                c => text.push(c),
            }
        }
    }
    text
}

/// What a verified record stands for, independent of `exp` and signature.
fn identity(record: &TxtRecord) -> String {
    match record {
        TxtRecord::Server(e) => format!("server|{}|{}|{}", e.server_id, e.endpoint, e.region),
        TxtRecord::Revocation(r) => format!("revoke|{}", r.server_id),
    }
}

/// Decides what to do at `now_secs` given the registry's verified list
/// `servers` and the records `listed` under the name.
pub fn plan(
    config: &TxtCronConfig,
    key: &SigningKey,
    servers: &[ServerEntry],
    listed: &[ListedRecord],
    now_secs: u64,
) -> Result<Plan, TxtCronError> {
    let kept: Vec<ServerEntry> = servers
        .iter()
        .filter(|s| !config.revoke.contains(&s.server_id))
        .cloned()
        .collect();
    if kept.is_empty() && config.revoke.is_empty() {
        return Ok(Plan::NothingToPublish);
    }
    let expires = now_secs + config.valid_for_secs;
    let revocations_expire = now_secs + MAX_VALIDITY_SECS;
    let mut wanted = txt::build_records(key, &config.domain, &kept, config.ttl, expires)?;
    wanted.extend(txt::build_revocations(
        key,
        &config.domain,
        &config.revoke,
        config.ttl,
        revocations_expire,
    )?);

    // The wanted set's identities (a revocation's records are built from
    // checked serverIds, so each verifies).
    let pinned = [key.verifying_key()];
    let mut wanted_ids: Vec<String> = wanted
        .iter()
        .filter_map(|r| {
            txt::verify_any(
                &config.domain,
                r.strings.concat().as_bytes(),
                &pinned,
                now_secs,
            )
            .ok()
        })
        .map(|r| identity(&r))
        .collect();
    wanted_ids.sort();

    let reason = if listed.is_empty() {
        Some(Reason::FirstRun)
    } else {
        let mut served_ids = Vec::new();
        let mut refresh_at = u64::MAX;
        let mut foreign = false;
        for record in listed {
            let text = content_text(&record.content);
            match txt::verify_any(&config.domain, text.as_bytes(), &pinned, now_secs) {
                Ok(verified) => {
                    let (exp, lifetime) = match &verified {
                        TxtRecord::Server(e) => (e.expires, config.valid_for_secs),
                        TxtRecord::Revocation(r) => (r.expires, MAX_VALIDITY_SECS),
                    };
                    refresh_at = refresh_at.min(exp.saturating_sub(lifetime / 2));
                    served_ids.push(identity(&verified));
                    if record.ttl != config.ttl && record.ttl != 1 {
                        served_ids.push("ttl changed".into());
                    }
                }
                Err(_) => foreign = true,
            }
        }
        served_ids.sort();
        if foreign {
            Some(Reason::ForeignRecords)
        } else if served_ids != wanted_ids {
            Some(Reason::SetChanged)
        } else if now_secs >= refresh_at {
            Some(Reason::HalfLife)
        } else {
            return Ok(Plan::Skip { refresh_at });
        }
    };
    let reason = reason.unwrap_or(Reason::SetChanged);
    let listed_texts: Vec<String> = listed.iter().map(|r| content_text(&r.content)).collect();
    let wanted_texts: Vec<String> = wanted.iter().map(|r| r.strings.concat()).collect();
    let create = wanted
        .into_iter()
        .zip(&wanted_texts)
        .filter(|(_, text)| !listed_texts.contains(text))
        .map(|(record, _)| record)
        .collect();
    let delete = listed
        .iter()
        .zip(&listed_texts)
        .filter(|(_, text)| !wanted_texts.contains(text))
        .map(|(record, _)| record.id.clone())
        .collect();
    Ok(Plan::Replace {
        reason,
        create,
        delete,
        expires,
    })
}

/// One call to make: method, URL and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    pub what: &'static str,
    pub method: &'static str,
    pub url: String,
    pub body: Option<String>,
}

/// The calls of Cloudflare's DNS API (v4) the Cron Trigger makes. The token
/// goes in `Authorization: Bearer` (added by the caller, never logged).
#[derive(Debug, Clone)]
pub struct CloudflareApi<'a> {
    pub config: &'a TxtCronConfig,
}

fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl CloudflareApi<'_> {
    /// The name records live under, as the API spells it (no trailing dot).
    pub fn record_name(&self) -> String {
        txt::record_name(&self.config.domain)
            .trim_end_matches('.')
            .to_string()
    }

    /// `GET /zones?name=<zone>`.
    pub fn zone_lookup(&self) -> ApiCall {
        ApiCall {
            what: "zone lookup",
            method: "GET",
            url: format!(
                "{}/zones?name={}",
                self.config.api,
                query_value(&self.config.zone)
            ),
            body: None,
        }
    }

    /// `GET /zones/:id/dns_records?type=TXT&name=…&per_page=…&page=…`.
    pub fn list(&self, zone_id: &str, page: u32) -> ApiCall {
        ApiCall {
            what: "record list",
            method: "GET",
            url: format!(
                "{}/zones/{}/dns_records?type=TXT&name={}&per_page={PER_PAGE}&page={page}",
                self.config.api,
                query_value(zone_id),
                query_value(&self.record_name())
            ),
            body: None,
        }
    }

    /// `POST /zones/:id/dns_records` with the record.
    pub fn create(&self, zone_id: &str, record: &PublishedRecord) -> ApiCall {
        let body = serde_json::json!({
            "type": "TXT",
            "name": self.record_name(),
            "content": record.content,
            "ttl": record.ttl,
        });
        ApiCall {
            what: "record create",
            method: "POST",
            url: format!(
                "{}/zones/{}/dns_records",
                self.config.api,
                query_value(zone_id)
            ),
            body: Some(body.to_string()),
        }
    }

    /// `DELETE /zones/:id/dns_records/:record`.
    pub fn delete(&self, zone_id: &str, record_id: &str) -> ApiCall {
        ApiCall {
            what: "record delete",
            method: "DELETE",
            url: format!(
                "{}/zones/{}/dns_records/{}",
                self.config.api,
                query_value(zone_id),
                query_value(record_id)
            ),
            body: None,
        }
    }
}

pub use zajel_discovery_core::cloudflare_api::{has_next_page, ResultInfo, Zone, MAX_PAGES};

/// Reads an answer in Cloudflare's envelope (`zajel_discovery_core::cloudflare_api`):
/// the result, or the API's errors as [`TxtCronError::Api`].
pub fn parse_answer<T: serde::de::DeserializeOwned>(
    what: &'static str,
    status: u16,
    body: &[u8],
) -> Result<(T, Option<ResultInfo>), TxtCronError> {
    zajel_discovery_core::cloudflare_api::parse_answer(what, status, body).map_err(|refusal| {
        TxtCronError::Api {
            what: refusal.what,
            status: refusal.status,
            errors: refusal.errors,
        }
    })
}

/// What the Worker's `GET /metrics` says about publication, kept in the
/// Durable Object's storage and updated from each run's log line (the
/// JSON object the `scheduled` handler logs).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct TxtStatus {
    /// When this Worker last published (Unix seconds).
    pub last_published: Option<u64>,
    /// When the records it last published expire.
    pub expires: Option<u64>,
    /// When the last run ended, and whether it worked.
    pub last_attempt: Option<u64>,
    pub last_ok: Option<bool>,
    /// Runs that failed.
    pub failures: u64,
}

impl TxtStatus {
    /// Takes in one run's log line.
    pub fn record(&mut self, run: &serde_json::Value) {
        let number = |name: &str| run.get(name).and_then(serde_json::Value::as_u64);
        let ok = run.get("ok").and_then(serde_json::Value::as_bool) == Some(true);
        self.last_attempt = number("published_at")
            .or_else(|| number("checked_at"))
            .or_else(|| number("attempted_at"))
            .or(self.last_attempt);
        self.last_ok = Some(ok);
        if !ok {
            self.failures += 1;
        } else if run.get("outcome").and_then(serde_json::Value::as_str) == Some("published") {
            self.last_published = number("published_at");
            self.expires = number("expires");
        }
    }

    /// The status as Prometheus text (format 0.0.4), with the series names
    /// of `zajel-discover txt publish --every --metrics-textfile`.
    pub fn prometheus_text(&self) -> String {
        let mut text = String::new();
        let mut gauge = |name: &str, help: &str, value: Option<u64>| {
            if let Some(value) = value {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
                ));
            }
        };
        gauge(
            "zajel_txt_last_published_timestamp_seconds",
            "When the TXT set was last published (Unix seconds).",
            self.last_published,
        );
        gauge(
            "zajel_txt_published_expiry_timestamp_seconds",
            "When the last published records expire (Unix seconds).",
            self.expires,
        );
        gauge(
            "zajel_txt_last_attempt_timestamp_seconds",
            "When publication was last attempted (Unix seconds).",
            self.last_attempt,
        );
        gauge(
            "zajel_txt_last_attempt_ok",
            "1 when the last attempt published or found the set current, else 0.",
            self.last_ok.map(u64::from),
        );
        text.push_str(&format!(
            "# HELP zajel_txt_publish_failures_total Failed publication attempts.\n\
             # TYPE zajel_txt_publish_failures_total counter\n\
             zajel_txt_publish_failures_total {}\n",
            self.failures
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zajel_wire::keys;

    const NOW: u64 = 1_800_000_000;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn config() -> TxtCronConfig {
        TxtCronConfig::from_vars(vars(&[
            ("TXT_DOMAIN", "Zajel.Test."),
            ("CLOUDFLARE_API_TOKEN", "s3cr3t-token"),
        ]))
        .unwrap()
        .unwrap()
    }

    fn server(seed: u8, endpoint: &str) -> ServerEntry {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let server_id = keys::server_id_for(&key.verifying_key());
        ServerEntry {
            public_key: server_id.clone(),
            server_id,
            endpoint: endpoint.into(),
            region: "eu".into(),
            registered_at: 0,
            last_seen: 0,
        }
    }

    /// What the API would list after a plan's creations and deletions.
    fn apply(listed: &[ListedRecord], plan: &Plan) -> Vec<ListedRecord> {
        let Plan::Replace { create, delete, .. } = plan else {
            return listed.to_vec();
        };
        let mut out: Vec<ListedRecord> = listed
            .iter()
            .filter(|r| !delete.contains(&r.id))
            .cloned()
            .collect();
        for (i, r) in create.iter().enumerate() {
            out.push(ListedRecord {
                id: format!("new{i}-{}", out.len()),
                content: r.content.clone(),
                ttl: r.ttl,
            });
        }
        out
    }

    #[test]
    fn settings_default_and_refuse_bad_values_without_showing_the_token() {
        let c = config();
        assert_eq!(c.domain, "zajel.test");
        assert_eq!(c.zone, "zajel.test");
        assert_eq!(c.api, DEFAULT_API);
        assert_eq!(
            (c.ttl, c.valid_for_secs),
            (DEFAULT_TTL, DEFAULT_VALID_FOR_SECS)
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(TxtCronConfig::from_vars(vars(&[])).unwrap(), None);
        let missing = TxtCronConfig::from_vars(vars(&[("TXT_DOMAIN", "zajel.test")])).unwrap_err();
        assert_eq!(missing.kind(), "txt_config");
        assert!(missing.to_string().contains("CLOUDFLARE_API_TOKEN"));
        for (name, value) in [
            ("TXT_VALID_FOR_SECS", "604801"),
            ("TXT_VALID_FOR_SECS", "soon"),
            ("TXT_TTL", "0"),
            ("TXT_ZONE", "other.example"),
            ("CLOUDFLARE_API", "ftp://x"),
        ] {
            let error = TxtCronConfig::from_vars(vars(&[
                ("TXT_DOMAIN", "zajel.test"),
                ("CLOUDFLARE_API_TOKEN", "t"),
                (name, value),
            ]))
            .unwrap_err();
            assert!(error.to_string().contains(name), "{name}={value}: {error}");
        }
        let c = TxtCronConfig::from_vars(vars(&[
            ("TXT_DOMAIN", "zajel.example.org"),
            ("TXT_ZONE", "example.org"),
            ("CLOUDFLARE_API_TOKEN", "t"),
            ("TXT_REVOKE", " ed25519:a , ,ed25519:b"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.zone, "example.org");
        assert_eq!(c.revoke, vec!["ed25519:a", "ed25519:b"]);
    }

    #[test]
    fn first_run_publishes_then_an_unchanged_set_is_skipped_until_half_life() {
        let c = config();
        let key = SigningKey::from_bytes(&[7; 32]);
        let servers = [server(1, "wss://a.example"), server(2, "wss://b.example")];
        let first = plan(&c, &key, &servers, &[], NOW).unwrap();
        let Plan::Replace {
            reason,
            create,
            delete,
            expires,
        } = &first
        else {
            panic!("{first:?}");
        };
        assert_eq!(*reason, Reason::FirstRun);
        assert_eq!((create.len(), delete.len()), (2, 0));
        assert_eq!(*expires, NOW + DEFAULT_VALID_FOR_SECS);
        for record in create {
            let text = content_text(&record.content);
            txt::verify_record("zajel.test", text.as_bytes(), &[key.verifying_key()], NOW).unwrap();
        }
        let served = apply(&[], &first);
        let half = NOW + DEFAULT_VALID_FOR_SECS / 2;
        assert_eq!(
            plan(&c, &key, &servers, &served, NOW + 3600).unwrap(),
            Plan::Skip { refresh_at: half }
        );
        assert_eq!(
            plan(&c, &key, &servers, &served, half - 1).unwrap(),
            Plan::Skip { refresh_at: half }
        );
        let again = plan(&c, &key, &servers, &served, half).unwrap();
        let Plan::Replace {
            reason: Reason::HalfLife,
            create,
            delete,
            ..
        } = &again
        else {
            panic!("{again:?}");
        };
        assert_eq!((create.len(), delete.len()), (2, 2));
        let served = apply(&served, &again);
        assert_eq!(served.len(), 2);
        assert!(matches!(
            plan(&c, &key, &servers, &served, half + 1).unwrap(),
            Plan::Skip { .. }
        ));
    }

    #[test]
    fn a_set_about_to_expire_is_republished_with_a_short_exp() {
        let mut c = config();
        c.valid_for_secs = 120;
        let key = SigningKey::from_bytes(&[7; 32]);
        let servers = [server(1, "wss://a.example")];
        let served = apply(&[], &plan(&c, &key, &servers, &[], NOW).unwrap());
        assert_eq!(
            plan(&c, &key, &servers, &served, NOW + 59).unwrap(),
            Plan::Skip {
                refresh_at: NOW + 60
            }
        );
        let due = plan(&c, &key, &servers, &served, NOW + 60).unwrap();
        assert!(
            matches!(&due, Plan::Replace { reason: Reason::HalfLife, expires, .. } if *expires == NOW + 180),
            "{due:?}"
        );
        // Already expired records do not verify: republished too.
        let late = plan(&c, &key, &servers, &served, NOW + 500).unwrap();
        assert!(
            matches!(&late, Plan::Replace { reason: Reason::ForeignRecords, delete, .. } if delete.len() == 1),
            "{late:?}"
        );
    }

    #[test]
    fn changes_junk_and_revocations_replace_the_set_and_keep_identical_records() {
        let mut c = config();
        let key = SigningKey::from_bytes(&[7; 32]);
        let a = server(1, "wss://a.example");
        let b = server(2, "wss://b.example");
        let served = apply(
            &[],
            &plan(&c, &key, std::slice::from_ref(&a), &[], NOW).unwrap(),
        );
        // A server added: its record created, the old one re-signed at the same instant is identical and kept.
        let added = plan(&c, &key, &[a.clone(), b.clone()], &served, NOW).unwrap();
        let Plan::Replace {
            reason: Reason::SetChanged,
            create,
            delete,
            ..
        } = &added
        else {
            panic!("{added:?}");
        };
        assert_eq!((create.len(), delete.len()), (1, 0));
        assert_eq!(create[0].endpoint, "wss://b.example");
        // Junk under the name, a record signed by another key, and a changed TTL are all replaced.
        let other = SigningKey::from_bytes(&[8; 32]);
        let forged = txt::build_records(
            &other,
            "zajel.test",
            std::slice::from_ref(&b),
            300,
            NOW + 100,
        )
        .unwrap();
        let mut junk = served.clone();
        junk.push(ListedRecord {
            id: "junk".into(),
            content: "\"v=zajel1 id=zz\"".into(),
            ttl: 300,
        });
        junk.push(ListedRecord {
            id: "forged".into(),
            content: forged[0].content.clone(),
            ttl: 300,
        });
        let cleaned = plan(&c, &key, std::slice::from_ref(&a), &junk, NOW + 10).unwrap();
        let Plan::Replace {
            reason: Reason::ForeignRecords,
            delete,
            ..
        } = &cleaned
        else {
            panic!("{cleaned:?}");
        };
        assert!(delete.contains(&"junk".to_string()) && delete.contains(&"forged".to_string()));
        c.ttl = 60;
        assert!(matches!(
            plan(&c, &key, std::slice::from_ref(&a), &served, NOW + 10).unwrap(),
            Plan::Replace {
                reason: Reason::SetChanged,
                ..
            }
        ));
        // Revoking a: its record goes, a signed revocation comes.
        c.ttl = DEFAULT_TTL;
        c.revoke = vec![a.server_id.clone()];
        let revoked = plan(&c, &key, std::slice::from_ref(&a), &served, NOW + 10).unwrap();
        let Plan::Replace { create, delete, .. } = &revoked else {
            panic!("{revoked:?}");
        };
        assert_eq!(delete.len(), 1);
        assert_eq!(create.len(), 1);
        let text = content_text(&create[0].content);
        let verified = txt::verify_any(
            "zajel.test",
            text.as_bytes(),
            &[key.verifying_key()],
            NOW + 10,
        )
        .unwrap();
        assert!(matches!(verified, TxtRecord::Revocation(r) if r.server_id == a.server_id));
        let served = apply(&served, &revoked);
        assert!(matches!(
            plan(&c, &key, &[a], &served, NOW + 20).unwrap(),
            Plan::Skip { .. }
        ));
    }

    #[test]
    fn an_empty_registry_publishes_and_deletes_nothing() {
        let c = config();
        let key = SigningKey::from_bytes(&[7; 32]);
        let served = apply(
            &[],
            &plan(&c, &key, &[server(1, "wss://a.example")], &[], NOW).unwrap(),
        );
        assert_eq!(
            plan(&c, &key, &[], &served, NOW + 10).unwrap(),
            Plan::NothingToPublish
        );
    }

    #[test]
    fn api_calls_and_answers_have_cloudflares_shapes() {
        let mut c = config();
        c.api = "http://127.0.0.1:9/client/v4".into();
        let api = CloudflareApi { config: &c };
        assert_eq!(
            api.zone_lookup().url,
            "http://127.0.0.1:9/client/v4/zones?name=zajel.test"
        );
        assert_eq!(
            api.list("z1", 2).url,
            "http://127.0.0.1:9/client/v4/zones/z1/dns_records?type=TXT&name=_zajel.zajel.test&per_page=100&page=2"
        );
        assert_eq!(
            api.delete("z1", "r/../x").url,
            "http://127.0.0.1:9/client/v4/zones/z1/dns_records/r%2F..%2Fx"
        );
        let ok = br#"{"success":true,"errors":[],"messages":[],"result":[{"id":"r1","type":"TXT","content":"\"v=zajel1 a\"","ttl":300}],"result_info":{"page":1,"total_pages":2}}"#;
        let (records, info): (Vec<ListedRecord>, _) = parse_answer("record list", 200, ok).unwrap();
        assert_eq!(records[0].id, "r1");
        assert_eq!(content_text(&records[0].content), "v=zajel1 a");
        assert!(has_next_page(info, 1));
        let denied = br#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#;
        let error = parse_answer::<Vec<Zone>>("zone lookup", 403, denied).unwrap_err();
        assert_eq!(error.kind(), "cloudflare_api");
        assert!(
            error.to_string().contains("10000: Authentication error"),
            "{error}"
        );
        let html =
            parse_answer::<Vec<Zone>>("zone lookup", 502, b"<html>bad gateway</html>").unwrap_err();
        assert!(
            html.to_string().contains("not Cloudflare's answer shape"),
            "{html}"
        );
        assert_eq!(content_text("\"a b\" \"c\\\"d\""), "a bc\"d");
    }

    #[test]
    fn the_status_says_when_it_last_published_and_how_it_went() {
        let mut status = TxtStatus::default();
        assert!(!status.prometheus_text().contains("last_published"));
        status.record(&serde_json::json!({"event": "txt_publish", "ok": true, "outcome": "published", "published_at": 100, "expires": 400}));
        status.record(&serde_json::json!({"event": "txt_publish", "ok": true, "outcome": "unchanged", "checked_at": 200}));
        let text = status.prometheus_text();
        for line in [
            "\nzajel_txt_last_published_timestamp_seconds 100\n",
            "\nzajel_txt_published_expiry_timestamp_seconds 400\n",
            "\nzajel_txt_last_attempt_timestamp_seconds 200\n",
            "\nzajel_txt_last_attempt_ok 1\n",
            "\nzajel_txt_publish_failures_total 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        status.record(&serde_json::json!({"event": "txt_publish", "ok": false, "kind": "cloudflare_api", "attempted_at": 300}));
        let text = status.prometheus_text();
        assert!(text.contains("\nzajel_txt_last_attempt_ok 0\n"), "{text}");
        assert!(
            text.contains("\nzajel_txt_last_attempt_timestamp_seconds 300\n"),
            "{text}"
        );
        assert!(
            text.contains("\nzajel_txt_publish_failures_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nzajel_txt_last_published_timestamp_seconds 100\n"),
            "{text}"
        );
    }
}
