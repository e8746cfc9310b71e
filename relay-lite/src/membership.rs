//! Registry membership: registers the relay with each bootstrap registry
//! using signed requests (proof of possession), heartbeats, registers again
//! when a heartbeat gets 404, retries with exponential backoff and jitter
//! while a registry is unreachable (clients are served meanwhile), and
//! sends a signed `DELETE` on shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio::time::Instant;
use zajel_wire::entry::{HeartbeatRequest, RegisterRequest};
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
    pub http: reqwest::Client,
}

#[derive(Debug)]
enum Failure {
    /// The registry does not know this server (heartbeat 404).
    NotRegistered,
    /// Refused or unreachable; retry after the given wait, or the backoff.
    Retry(String, Option<Duration>),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
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

    async fn post(&self, path: &str, body: String) -> Result<reqwest::Response, Failure> {
        self.http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|error| Failure::Retry(format!("unreachable: {error}"), None))
    }

    async fn check(response: reqwest::Response) -> Result<(), Failure> {
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Failure::NotRegistered);
        }
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(200).collect();
        Err(Failure::Retry(
            format!("refused with {status}: {body}"),
            retry_after,
        ))
    }

    async fn register(&self) -> Result<(), Failure> {
        let request =
            RegisterRequest::signed(&self.key, &self.endpoint, self.region.as_deref(), now_ms());
        let body = serde_json::to_string(&request).unwrap_or_default();
        let response = self.post("/servers", body).await?;
        match Self::check(response).await {
            Err(Failure::NotRegistered) => Err(Failure::Retry(
                "refused with 404 Not Found (is this a Zajel registry URL?)".into(),
                None,
            )),
            other => other,
        }
    }

    async fn heartbeat(&self) -> Result<(), Failure> {
        let request = HeartbeatRequest::signed(&self.key, now_ms());
        let body = serde_json::to_string(&request).unwrap_or_default();
        Self::check(self.post("/servers/heartbeat", body).await?).await
    }

    async fn unregister(&self) -> Result<(), String> {
        let server_id = crate::identity::server_id(&self.key);
        let (timestamp, signature) = signature::sign_unregister(&self.key, now_ms());
        let response = self
            .http
            .delete(self.url(&format!("/servers/{}", percent_encode(&server_id))))
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature)
            .send()
            .await
            .map_err(|error| format!("unreachable: {error}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("refused with {}", response.status()))
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
                    if !registered {
                        registered = true;
                        self.metrics.registry_registered(1);
                        tracing::info!(%registry, endpoint = %self.endpoint, "registered with the registry");
                    } else {
                        tracing::debug!(%registry, "heartbeat");
                    }
                    backoff.reset();
                    next = Instant::now() + self.config.heartbeat_interval;
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
