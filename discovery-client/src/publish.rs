//! Publishing and checking the signed TXT records: fetch the registry's list,
//! verify it, sign one record per server (`zajel-discover txt publish`); ask
//! DoH resolvers what they serve and verify it (`zajel-discover txt verify`).

use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::Serialize;
use url::Url;

use crate::doh::{self, DohServer};
use crate::registry;
use crate::report::Outcome;
use crate::txt::{self, PublishedRecord, TxtEntry};

/// Why the TXT records could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry HTTP client could not be built.
    #[error(transparent)]
    RegistryClient(#[from] registry::RegistryClientError),
    /// The registry did not answer within the request's timeout.
    #[error("registry {registry} did not answer in time")]
    Timeout { registry: Url },
    /// The registry's list did not verify (unsigned, badly signed, stale, unreachable, …).
    #[error("registry list refused ({outcome}): {detail}")]
    ListRefused { outcome: Outcome, detail: String },
    /// The verified list names no server.
    #[error("the registry lists no servers: nothing to publish")]
    NoServers,
    /// The records could not be built (bad domain, a record too long, …).
    #[error(transparent)]
    Records(#[from] txt::PublishError),
}

impl PublishError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RegistryClient(e) => e.kind(),
            Self::Timeout { .. } => "registry_timeout",
            Self::ListRefused { .. } => "registry_list_refused",
            Self::NoServers => "registry_list_empty",
            Self::Records(_) => "txt_records",
        }
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub registry: Url,
    /// Keys the list may be signed by besides the signing key's own.
    pub extra_registry_keys: Vec<VerifyingKey>,
    pub domain: String,
    pub ttl: u32,
    /// How long the records stay valid.
    pub valid_for: Duration,
    pub timeout: Duration,
}

/// Fetches and verifies the registry's list, then signs its servers as TXT records.
pub async fn publish(
    request: &PublishRequest,
    key: &SigningKey,
    tls: rustls::ClientConfig,
) -> Result<Vec<PublishedRecord>, PublishError> {
    publish_revoking(request, &[], key, tls).await
}

/// [`publish`], plus a signed revocation for each retired server in
/// `revoke` (`serverId`s), valid for the longest record lifetime
/// ([`txt::MAX_VALIDITY_SECS`]) so that it outlives every record signed
/// before it; their own records are left out.
pub async fn publish_revoking(
    request: &PublishRequest,
    revoke: &[String],
    key: &SigningKey,
    tls: rustls::ClientConfig,
) -> Result<Vec<PublishedRecord>, PublishError> {
    let client = registry::http_client(tls, request.timeout)?;
    let mut pinned = vec![key.verifying_key()];
    pinned.extend(request.extra_registry_keys.iter().copied());
    let now = crate::now_ms();
    let result = tokio::time::timeout(
        request.timeout,
        registry::fetch(&client, &request.registry, &pinned, now),
    )
    .await
    .map_err(|_| PublishError::Timeout {
        registry: request.registry.clone(),
    })?;
    if !result.verified {
        return Err(PublishError::ListRefused {
            outcome: result.outcome,
            detail: result.detail,
        });
    }
    let servers: Vec<_> = result
        .servers
        .into_iter()
        .filter(|s| !revoke.contains(&s.server_id))
        .collect();
    if servers.is_empty() && revoke.is_empty() {
        return Err(PublishError::NoServers);
    }
    let expires = now / 1000 + request.valid_for.as_secs().max(10);
    let mut records = txt::build_records(key, &request.domain, &servers, request.ttl, expires)?;
    records.extend(txt::build_revocations(
        key,
        &request.domain,
        revoke,
        request.ttl,
        now / 1000 + txt::MAX_VALIDITY_SECS,
    )?);
    Ok(records)
}

/// JSON for a DNS provider's API: one object per record.
pub fn provider_json(records: &[PublishedRecord]) -> serde_json::Value {
    serde_json::Value::Array(
        records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "type": "TXT",
                    "name": r.name.trim_end_matches('.'),
                    "ttl": r.ttl,
                    "content": r.content,
                    "strings": r.strings,
                })
            })
            .collect(),
    )
}

/// One record as a resolver served it, and what verification said.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedRecord {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<TxtEntry>,
    /// A revocation that verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<txt::Revocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What one resolver serves for a domain.
#[derive(Debug, Clone, Serialize)]
pub struct ResolverCheck {
    pub resolver: String,
    pub name: String,
    pub outcome: Outcome,
    pub detail: String,
    pub records: Vec<CheckedRecord>,
    pub verified: usize,
}

/// Asks every resolver for `_zajel.<domain>` and verifies what each serves.
pub async fn verify(
    domain: &str,
    resolvers: &[DohServer],
    keys: &[VerifyingKey],
    tls: &rustls::ClientConfig,
    timeout: Duration,
) -> Vec<ResolverCheck> {
    let name = txt::record_name(domain);
    let now_secs = crate::now_ms() / 1000;
    let answers = futures_util::future::join_all(
        resolvers
            .iter()
            .map(|server| doh::query_txt(server, &name, tls, timeout)),
    )
    .await;
    resolvers
        .iter()
        .zip(answers)
        .map(|(server, answer)| {
            let records: Vec<CheckedRecord> = answer
                .records
                .iter()
                .map(|bytes| {
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    match txt::verify_any(domain, bytes, keys, now_secs) {
                        Ok(txt::TxtRecord::Server(entry)) => CheckedRecord {
                            text,
                            entry: Some(entry),
                            revocation: None,
                            refused: None,
                        },
                        Ok(txt::TxtRecord::Revocation(revocation)) => CheckedRecord {
                            text,
                            entry: None,
                            revocation: Some(revocation),
                            refused: None,
                        },
                        Err(e) => CheckedRecord {
                            text,
                            entry: None,
                            revocation: None,
                            refused: Some(e.to_string()),
                        },
                    }
                })
                .collect();
            let verified = records.iter().filter(|r| r.entry.is_some()).count();
            ResolverCheck {
                resolver: server.to_string(),
                name: name.clone(),
                outcome: answer.outcome,
                detail: answer.detail,
                records,
                verified,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registry_that_refuses_the_connection_refuses_the_list() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let request = PublishRequest {
            registry: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            extra_registry_keys: Vec::new(),
            domain: "zajel.test".into(),
            ttl: 300,
            valid_for: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        };
        let key = SigningKey::from_bytes(&[9; 32]);
        let tls = zajel_client_net::tls::client_config(&[]).unwrap();
        let error = publish(&request, &key, tls).await.unwrap_err();
        assert_eq!(error.kind(), "registry_list_refused");
        assert!(
            matches!(
                &error,
                PublishError::ListRefused {
                    outcome: Outcome::Refused,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("registry list refused (refused): "),
            "{error}"
        );
    }
}
