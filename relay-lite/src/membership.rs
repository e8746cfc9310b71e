//! Registry membership: registers the relay with each bootstrap registry
//! using signed requests (proof of possession), heartbeats, registers again
//! when a heartbeat gets 404, retries with exponential backoff and jitter
//! while a registry is unreachable (clients are served meanwhile), and
//! sends a signed `DELETE` on shutdown. Requests go through the shared
//! registry client (`zajel_client_net::registry_http`), one connection per
//! request, each answer read to at most [`MAX_ANSWER_BYTES`].

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;
use zajel_client_net::now_ms;
use zajel_client_net::registry_http::{RegistryHttp, RegistryHttpConfig};
use zajel_client_net::tls;
use zajel_wire::entry::{HeartbeatRequest, HeartbeatResponse, RegisterRequest};
use zajel_wire::keys;
use zajel_wire::pairing::percent_encode;
use zajel_wire::signature::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use crate::config::MembershipConfig;
use crate::metrics::Metrics;

/// What one registry is told about this relay.
#[derive(Clone)]
pub(crate) struct Membership {
    pub registry: String,
    pub key: SigningKey,
    pub endpoint: String,
    pub region: Option<String>,
    pub config: MembershipConfig,
    pub metrics: Arc<Metrics>,
    pub http: RegistryHttp,
    /// Where the heartbeat's `peers` go (the federation dials them).
    pub fleet: Arc<crate::federation::FleetView>,
}

/// Largest answer body read from a registry.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The registry client of a relay: the Mozilla roots, `timeout` on each
/// whole exchange, a fresh connection per request.
pub(crate) fn registry_http(timeout: Duration) -> Result<RegistryHttp, String> {
    let tls = tls::client_config(&[]).map_err(|error| error.to_string())?;
    RegistryHttp::new(RegistryHttpConfig {
        reuse_connections: false,
        ..RegistryHttpConfig::new(
            tls,
            timeout,
            concat!("relay-lite/", env!("CARGO_PKG_VERSION")),
        )
    })
    .map_err(|error| error.to_string())
}

/// A registry's answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `Retry-After` in seconds, when given.
    retry_after: Option<u64>,
    body: String,
}

#[derive(Debug)]
enum Failure {
    /// The registry does not know this server (heartbeat 404).
    NotRegistered,
    /// Refused or unreachable; retry after the given wait, or the backoff.
    Retry(String, Option<Duration>),
}

/// Exponential backoff with ±25 % jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let mut random = [0u8; 2];
        let _ = getrandom::fill(&mut random);
        let unit = f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX); // 0..=1
        base.mul_f64(0.75 + 0.5 * unit)
    }
}

impl Membership {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.registry.trim_end_matches('/'))
    }

    /// Sends one request and reads the whole answer.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        json_body: Option<String>,
    ) -> Result<Answer, String> {
        let url = self.url(path);
        let url = Url::parse(&url).map_err(|e| format!("bad URL {url}: {e}"))?;
        let answer = self
            .http
            .send(method, &url, headers, json_body)
            .await
            .map_err(|e| e.detail())?;
        let status = answer.status();
        let retry_after = answer.retry_after();
        let body = answer
            .body(MAX_ANSWER_BYTES)
            .await
            .map_err(|e| format!("reading the answer: {}", e.detail()))?;
        Ok(Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    async fn post(&self, path: &str, body: String) -> Result<Answer, Failure> {
        self.exchange("POST", path, &[], Some(body))
            .await
            .map_err(|error| Failure::Retry(format!("unreachable: {error}"), None))
    }

    fn check(answer: Answer) -> Result<(), Failure> {
        if (200..300).contains(&answer.status) {
            return Ok(());
        }
        if answer.status == 404 {
            return Err(Failure::NotRegistered);
        }
        let body: String = answer.body.chars().take(200).collect();
        Err(Failure::Retry(
            format!("refused with {}: {body}", answer.status),
            answer.retry_after.map(Duration::from_secs),
        ))
    }

    async fn register(&self) -> Result<(), Failure> {
        let request =
            RegisterRequest::signed(&self.key, &self.endpoint, self.region.as_deref(), now_ms());
        let body = serde_json::to_string(&request).unwrap_or_default();
        let response = self.post("/servers", body).await?;
        match Self::check(response) {
            Err(Failure::NotRegistered) => Err(Failure::Retry(
                "refused with 404 (is this a Zajel registry URL?)".into(),
                None,
            )),
            other => other,
        }
    }

    /// One heartbeat; the answer's `peers` (other servers) go to the fleet view.
    async fn heartbeat(&self) -> Result<(), Failure> {
        let request = HeartbeatRequest::signed(&self.key, now_ms());
        let body = serde_json::to_string(&request).unwrap_or_default();
        let answer = self.post("/servers/heartbeat", body).await?;
        let peers = serde_json::from_str::<HeartbeatResponse>(&answer.body)
            .ok()
            .map(|response| response.peers);
        Self::check(answer)?;
        match peers {
            Some(peers) => {
                let servers = peers.len();
                if self.fleet.update(&self.registry, peers) {
                    tracing::info!(registry = %self.registry, servers, "fleet listed by the registry changed");
                }
            }
            None => {
                tracing::debug!(registry = %self.registry, "heartbeat answer without a peer list")
            }
        }
        Ok(())
    }

    async fn unregister(&self) -> Result<(), String> {
        let server_id = keys::server_id_for(&self.key.verifying_key());
        let (timestamp, signature) = signature::sign_unregister(&self.key, now_ms());
        let path = format!("/servers/{}", percent_encode(&server_id));
        let headers = [(TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)];
        let answer = self
            .exchange("DELETE", &path, &headers, None)
            .await
            .map_err(|error| format!("unreachable: {error}"))?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(format!("refused with {}: {}", answer.status, answer.body))
        }
    }

    /// Keeps the registration alive until `shutdown` turns true, then unregisters.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let registry = self.registry.clone();
        let mut backoff = Backoff::new(self.config.retry_min, self.config.retry_max);
        let mut registered = false;
        let mut attempted = false;
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = crate::relay::stopping(&mut shutdown) => break,
                () = tokio::time::sleep_until(next) => {}
            }
            let result = if registered {
                self.heartbeat().await
            } else {
                attempted = true;
                self.register().await
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    if !registered {
                        registered = true;
                        self.metrics.registry_registered(1);
                        tracing::info!(%registry, endpoint = %self.endpoint, "registered with the registry");
                        // The first heartbeat right away: its answer lists the fleet.
                        next = Instant::now();
                    } else {
                        tracing::debug!(%registry, "heartbeat");
                        next = Instant::now() + self.config.heartbeat_interval;
                    }
                }
                Err(Failure::NotRegistered) => {
                    tracing::warn!(%registry, "registry no longer knows this relay (404): registering again");
                    registered = false;
                    self.metrics.registry_registered(-1);
                    next = Instant::now();
                }
                Err(Failure::Retry(reason, retry_after)) => {
                    self.metrics.registry_failure();
                    let wait = retry_after.unwrap_or_else(|| backoff.next_wait());
                    tracing::warn!(
                        %registry,
                        action = if registered { "heartbeat" } else { "register" },
                        %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "registry request failed; retrying (clients are still served)"
                    );
                    next = Instant::now() + wait;
                }
            }
        }
        if attempted {
            match self.unregister().await {
                Ok(()) => tracing::info!(%registry, "unregistered from the registry"),
                Err(reason) => tracing::warn!(%registry, %reason, "unregister failed"),
            }
        }
        if registered {
            self.metrics.registry_registered(-1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<_> = (0..5).map(|_| backoff.next_wait()).collect();
        for (wait, base) in waits.iter().zip([100u64, 200, 400, 400, 400]) {
            let ms = wait.as_millis() as u64;
            assert!(ms >= base * 3 / 4 && ms <= base * 5 / 4, "{ms} vs {base}");
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(125));
    }
}
