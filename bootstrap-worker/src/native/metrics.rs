//! The native registry's Prometheus metrics (`GET /metrics`, text exposition
//! format 0.0.4): build info, fresh entries, requests by method, route and
//! status, refusals by reason (the registry's [`refusal_reason`]s),
//! rate-limited requests and signature failures. Counters live in memory
//! and start at zero with the process. Paths are folded into a fixed set of
//! routes (`/servers/{id}` for every deletion, `other` for the rest), so a
//! client cannot grow the label set.
//!
//! [`refusal_reason`]: crate::registry::refusal_reason

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::registry::{AdmissionStats, SIGNATURE_FAILURES};

/// `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's version, as `zajel_registry_build_info` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Default)]
struct Counts {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    refusals: BTreeMap<&'static str, u64>,
}

/// Request and refusal counters of one registry process.
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    counts: Mutex<Counts>,
}

impl RegistryMetrics {
    /// Counts one answered request (`refused`: the response's reason).
    pub fn record(&self, method: &str, path: &str, status: u16, refused: Option<&'static str>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .requests
            .entry((method_label(method), route_label(method, path), status))
            .or_default() += 1;
        if let Some(reason) = refused {
            *counts.refusals.entry(reason).or_default() += 1;
        }
    }

    /// The exposition, with `entries` fresh entries (`None`: the store
    /// could not be read, so the gauge is left out).
    pub fn render(&self, entries: Option<u64>) -> String {
        self.render_with_admission(entries, None)
    }

    /// [`Self::render`] with the admission checks' gauges (registrations
    /// waiting for their check, checks running).
    pub fn render_with_admission(
        &self,
        entries: Option<u64>,
        admission: Option<AdmissionStats>,
    ) -> String {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP zajel_registry_build_info The registry's version (always 1)."
        );
        let _ = writeln!(out, "# TYPE zajel_registry_build_info gauge");
        let _ = writeln!(out, "zajel_registry_build_info{{version=\"{VERSION}\"}} 1");
        let mut section = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        if let Some(entries) = entries {
            section(
                "zajel_registry_entries",
                "gauge",
                "Fresh entries in the registry.",
                vec![(String::new(), entries)],
            );
        }
        if let Some(admission) = admission {
            section(
                "zajel_registry_admission_pending",
                "gauge",
                "Registrations waiting for (or in) their admission check, not listed yet.",
                vec![(String::new(), admission.pending)],
            );
            section(
                "zajel_registry_admission_checks_running",
                "gauge",
                "Admission checks and rechecks running.",
                vec![(String::new(), admission.in_flight)],
            );
        }
        section(
            "zajel_registry_requests_total",
            "counter",
            "Requests answered, by method, route and HTTP status.",
            counts
                .requests
                .iter()
                .map(|((method, route, status), value)| {
                    (
                        format!("{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"),
                        *value,
                    )
                })
                .collect(),
        );
        section(
            "zajel_registry_refusals_total",
            "counter",
            "Requests refused, by reason.",
            counts
                .refusals
                .iter()
                .map(|(reason, value)| (format!("{{reason=\"{reason}\"}}"), *value))
                .collect(),
        );
        let reason = |name: &str| counts.refusals.get(name).copied().unwrap_or(0);
        section(
            "zajel_registry_rate_limited_total",
            "counter",
            "Mutations refused by the per-address rate limit.",
            vec![(String::new(), reason("rate_limited"))],
        );
        section(
            "zajel_registry_signature_failures_total",
            "counter",
            "Mutations whose signature did not prove possession (invalid, stale or replayed).",
            vec![(
                String::new(),
                SIGNATURE_FAILURES.iter().map(|name| reason(name)).sum(),
            )],
        );
        out
    }
}

fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

fn route_label(method: &str, path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/api/info" => "/api/info",
        "/servers" => "/servers",
        "/servers/heartbeat" => "/servers/heartbeat",
        "/metrics" => "/metrics",
        _ if method == "DELETE" && path.starts_with("/servers/") => "/servers/{id}",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fold_paths_into_routes() {
        let metrics = RegistryMetrics::default();
        metrics.record("GET", "/servers", 200, None);
        metrics.record("GET", "/servers", 200, None);
        metrics.record(
            "DELETE",
            "/servers/ed25519%3Aabc",
            401,
            Some("invalid_signature"),
        );
        metrics.record("DELETE", "/servers/other", 429, Some("rate_limited"));
        metrics.record("GET", "/wp-admin/\"{}", 404, None);
        metrics.record("BREW", "/servers", 404, None);
        let text = metrics.render(Some(7));
        for line in [
            "zajel_registry_build_info{version=\"",
            "zajel_registry_entries 7",
            "zajel_registry_requests_total{method=\"GET\",route=\"/servers\",status=\"200\"} 2",
            "zajel_registry_requests_total{method=\"DELETE\",route=\"/servers/{id}\",status=\"401\"} 1",
            "zajel_registry_requests_total{method=\"GET\",route=\"other\",status=\"404\"} 1",
            "zajel_registry_requests_total{method=\"other\",route=\"/servers\",status=\"404\"} 1",
            "zajel_registry_refusals_total{reason=\"invalid_signature\"} 1",
            "zajel_registry_rate_limited_total 1",
            "zajel_registry_signature_failures_total 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("wp-admin"), "{text}");
        assert!(!metrics.render(None).contains("zajel_registry_entries"));
        let admission = AdmissionStats {
            pending: 12,
            in_flight: 8,
        };
        let text = metrics.render_with_admission(Some(1), Some(admission));
        assert!(
            text.contains("zajel_registry_admission_pending 12"),
            "{text}"
        );
        assert!(
            text.contains("zajel_registry_admission_checks_running 8"),
            "{text}"
        );
    }
}
