//! Publishing the signed `_zajel.<domain>` TXT set through Cloudflare's DNS
//! API (v4) (`zajel-discover txt publish --cloudflare-zone …`): look the zone
//! up (`GET /zones?name=`), list the TXT records of the name
//! (`GET /zones/:id/dns_records?type=TXT&name=`, every page), then create
//! the wanted records that are missing (`POST /zones/:id/dns_records`) and
//! delete the ones no longer wanted (`DELETE /zones/:id/dns_records/:id`) —
//! creations first, so the name never goes empty. Records are compared by
//! their text (the concatenated character-strings) and TTL, so a second run
//! with the same set changes nothing.
//!
//! Every answer has Cloudflare's envelope `{"success","errors","messages",
//! "result","result_info"}`; `success: false` or a non-2xx status is
//! [`CloudflareError::Api`] with the API's `code: message` list. The token
//! (a scoped API token, `Zone.DNS:Edit` on the zone) travels only in the
//! `Authorization: Bearer` header: it is never logged nor shown by `Debug`.
//! The API cannot be reached from the test environment: the tests use an
//! in-process stand-in following the documented shapes
//! (`tests/src/cloudflare_standin.rs`), reached through `--cloudflare-api`.

use serde::Deserialize;
use url::Url;
use zajel_client_net::registry_http::RegistryHttp;

use crate::dns_update::{ServedTxt, SetDiff, UpdateOutcome};
use crate::txt::PublishedRecord;

/// Cloudflare's API base.
pub const DEFAULT_API: &str = "https://api.cloudflare.com/client/v4";
/// The largest answer read from the API.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Records per listed page.
const PER_PAGE: u32 = 100;

/// Why publishing through Cloudflare failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudflareError {
    /// No token: neither `CLOUDFLARE_API_TOKEN` nor a readable `--cloudflare-token-file`.
    #[error("Cloudflare API token: {0}")]
    Token(String),
    /// The API could not be reached or its answer read.
    #[error("Cloudflare API {url}: {detail}")]
    Unreachable { url: String, detail: String },
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

impl CloudflareError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token(_) => "cloudflare_token",
            Self::Unreachable { .. } => "cloudflare_unreachable",
            Self::Api { .. } => "cloudflare_api",
            Self::ZoneNotFound(_) => "cloudflare_zone_not_found",
        }
    }
}

/// An API token. `Debug` hides it.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// The token from a file (first line, trimmed) or else from `env_value`
    /// (the caller passes `CLOUDFLARE_API_TOKEN`).
    pub fn from_file_or_env(
        file: Option<&std::path::Path>,
        env_value: Option<String>,
    ) -> Result<Self, CloudflareError> {
        let token = match file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| CloudflareError::Token(format!("{}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            None => env_value.unwrap_or_default().trim().to_string(),
        };
        if token.is_empty() {
            return Err(CloudflareError::Token(
                "set CLOUDFLARE_API_TOKEN or --cloudflare-token-file".into(),
            ));
        }
        Ok(Self(token))
    }
}

/// Where to publish.
#[derive(Debug, Clone)]
pub struct CloudflareTarget {
    /// The API base, [`DEFAULT_API`] unless testing.
    pub api: Url,
    /// The zone's name, e.g. `example.org`.
    pub zone: String,
    pub token: ApiToken,
}

use zajel_discovery_core::cloudflare_api::{self, ResultInfo, Zone};

#[derive(Debug, Clone, Deserialize)]
struct DnsRecord {
    id: String,
    content: String,
    #[serde(default)]
    ttl: u32,
}

/// A TXT `content` as the API holds it (`"a" "b"` or bare text) → its character-strings.
pub fn content_strings(content: &str) -> Vec<String> {
    let content = content.trim();
    if !content.starts_with('"') {
        return vec![content.to_string()];
    }
    let mut strings = Vec::new();
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => s.extend(chars.next()),
                '"' => break,
                c => s.push(c),
            }
        }
        strings.push(s);
    }
    strings
}

struct Api<'a> {
    http: &'a RegistryHttp,
    target: &'a CloudflareTarget,
}

impl Api<'_> {
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.target.api.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: &str,
        url: Url,
        body: Option<String>,
    ) -> Result<(T, Option<ResultInfo>), CloudflareError> {
        let unreachable = |detail: String| CloudflareError::Unreachable {
            url: url.to_string(),
            detail,
        };
        let auth = [("Authorization", format!("Bearer {}", self.target.token.0))];
        let answer = self
            .http
            .send(method, &url, &auth, body)
            .await
            .map_err(|e| unreachable(e.detail()))?;
        let status = answer.status();
        let bytes = answer
            .body(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unreachable(e.detail()))?;
        cloudflare_api::parse_answer(what, status, &bytes).map_err(|refusal| CloudflareError::Api {
            what: refusal.what,
            status: refusal.status,
            errors: refusal.errors,
        })
    }

    async fn zone_id(&self) -> Result<String, CloudflareError> {
        let zone = self.target.zone.trim_end_matches('.');
        let (zones, _): (Vec<Zone>, _) = self
            .call(
                "zone lookup",
                "GET",
                self.url("/zones", &[("name", zone)]),
                None,
            )
            .await?;
        zones
            .into_iter()
            .next()
            .map(|z| z.id)
            .ok_or_else(|| CloudflareError::ZoneNotFound(zone.to_string()))
    }

    async fn list(&self, zone_id: &str, name: &str) -> Result<Vec<DnsRecord>, CloudflareError> {
        let mut records = Vec::new();
        let mut page = 1u32;
        loop {
            let url = self.url(
                &format!("/zones/{zone_id}/dns_records"),
                &[
                    ("type", "TXT"),
                    ("name", name),
                    ("per_page", &PER_PAGE.to_string()),
                    ("page", &page.to_string()),
                ],
            );
            let (batch, info): (Vec<DnsRecord>, _) =
                self.call("record list", "GET", url, None).await?;
            records.extend(batch);
            if !cloudflare_api::has_next_page(info, page) {
                return Ok(records);
            }
            page += 1;
        }
    }
}

/// Makes the name's TXT set exactly `records` (creations first, then
/// deletions); with `dry_run`, only lists and returns the difference.
pub async fn replace(
    http: &RegistryHttp,
    target: &CloudflareTarget,
    records: &[PublishedRecord],
    dry_run: bool,
) -> Result<UpdateOutcome, CloudflareError> {
    let Some(first) = records.first() else {
        return Ok(UpdateOutcome {
            unchanged: true,
            diff: SetDiff::default(),
        });
    };
    let name = first.name.trim_end_matches('.').to_string();
    let api = Api { http, target };
    let zone_id = api.zone_id().await?;
    let listed = api.list(&zone_id, &name).await?;
    let as_txt = |r: &DnsRecord| ServedTxt {
        ttl: r.ttl,
        strings: content_strings(&r.content),
    };
    let served: Vec<ServedTxt> = listed.iter().map(as_txt).collect();
    let wanted: Vec<ServedTxt> = records
        .iter()
        .map(|r| ServedTxt {
            ttl: r.ttl,
            strings: r.strings.clone(),
        })
        .collect();
    // Same text and TTL: kept. Cloudflare's `ttl: 1` means "automatic".
    let same = |a: &ServedTxt, b: &ServedTxt| {
        a.strings.concat() == b.strings.concat() && (a.ttl == b.ttl || a.ttl == 1)
    };
    let mut diff = SetDiff::default();
    for w in &wanted {
        if served.iter().any(|s| same(s, w)) {
            diff.keep.push(w.clone());
        } else {
            diff.add.push(w.clone());
        }
    }
    let stale: Vec<&DnsRecord> = listed
        .iter()
        .filter(|r| !wanted.iter().any(|w| same(&as_txt(r), w)))
        .collect();
    diff.remove = stale.iter().map(|r| as_txt(r)).collect();
    let unchanged = diff.is_empty();
    if dry_run || unchanged {
        return Ok(UpdateOutcome { unchanged, diff });
    }
    for (record, wanted) in records.iter().zip(&wanted) {
        if !diff.add.contains(wanted) {
            continue;
        }
        let body = serde_json::json!({
            "type": "TXT",
            "name": name,
            "content": record.content,
            "ttl": record.ttl,
        });
        let _: (serde_json::Value, _) = api
            .call(
                "record create",
                "POST",
                api.url(&format!("/zones/{zone_id}/dns_records"), &[]),
                Some(body.to_string()),
            )
            .await?;
    }
    for record in stale {
        let _: (serde_json::Value, _) = api
            .call(
                "record delete",
                "DELETE",
                api.url(&format!("/zones/{zone_id}/dns_records/{}", record.id), &[]),
                None,
            )
            .await?;
    }
    tracing::info!(
        zone = %target.zone,
        name = %name,
        added = diff.add.len(),
        removed = diff.remove.len(),
        "_zajel TXT set replaced through Cloudflare's API"
    );
    Ok(UpdateOutcome {
        unchanged: false,
        diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_content_is_read_quoted_or_bare() {
        assert_eq!(content_strings("\"a b\" \"c\\\"d\""), vec!["a b", "c\"d"]);
        assert_eq!(content_strings("v=zajel1 id=x"), vec!["v=zajel1 id=x"]);
    }

    #[test]
    fn the_token_is_required_and_hidden() {
        let error = ApiToken::from_file_or_env(None, Some("  ".into())).unwrap_err();
        assert_eq!(error.kind(), "cloudflare_token");
        let token = ApiToken::from_file_or_env(None, Some("s3cr3t-token".into())).unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }
}
