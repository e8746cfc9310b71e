//! Where the relay comes from: the server inside a `zajel://…?server=` link, or a discovery
//! run (discovery-client: registry, DoH, cache, referral, QR, manual layers). The result says
//! which layer named the chosen server and which layers were blocked, for the reports (and for
//! the censorship suite, which reads them), and who each checked server proved to be (the
//! identity challenge: verified, proven or learnt, `identity_unproven`, `identity_mismatch`).

use discovery_client::discovery::{Config as DiscoveryConfig, Discovery};
use discovery_client::report::{Outcome, Report as DiscoveryReport};
use serde::Serialize;
use url::Url;
use zajel_wire::endpoint::EndpointError;

use crate::error::ErrorKind;

/// Why no server could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    /// The server in a link is not a relay address.
    #[error("server {server}: {source}")]
    BadServer {
        server: String,
        #[source]
        source: EndpointError,
    },
    /// Discovery could not be set up.
    #[error(transparent)]
    Discovery(#[from] discovery_client::discovery::DiscoveryError),
}

impl ChooseError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadServer { .. } => ErrorKind::BadServer,
            Self::Discovery(_) => ErrorKind::DiscoveryConfig,
        }
    }
}

/// A layer that did not work, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockedLayer {
    pub layer: String,
    pub outcome: String,
    pub detail: String,
}

/// Who a checked server proved to be (discovery's identity challenge).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerIdentity {
    pub url: String,
    /// The check's outcome (`ok`, `identity_unproven`, `identity_mismatch`, …).
    pub outcome: String,
    /// Named by a signed source and proven by that same key.
    pub verified: bool,
    /// The key a signed source named for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The key of its valid identity proof.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proven_server_id: Option<String>,
}

impl ServerIdentity {
    /// The identity in a few words.
    pub fn summary(&self) -> String {
        match (&self.proven_server_id, self.verified) {
            (Some(id), true) => format!("verified: proved {id}"),
            (Some(id), false) => format!("learnt {id} (no signed entry names a key)"),
            (None, _) => self.outcome.replace('_', " "),
        }
    }
}

/// A server a layer named that did not answer the check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UnreachableServer {
    pub url: String,
    pub outcome: String,
    pub detail: String,
}

/// The server chosen and how.
#[derive(Debug, Clone, Serialize)]
pub struct ServerChoice {
    /// The relay's WebSocket URL (`None`: nothing found).
    pub server: Option<String>,
    /// `share_link` (the server inside the link) or `discovery`.
    pub how: String,
    /// The discovery layers that named the chosen server (or `qr` for a link).
    pub found_by: Vec<String>,
    /// Layers that failed (timed out, refused, TLS failure, bad signature…).
    pub blocked: Vec<BlockedLayer>,
    /// Servers the layers named that did not answer the check (or proved to be another server).
    pub unreachable: Vec<UnreachableServer>,
    /// Who each server that answered proved to be.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<ServerIdentity>,
    /// The whole discovery report, when discovery ran.
    pub discovery: Option<DiscoveryReport>,
}

impl ServerChoice {
    /// The server as a URL.
    pub fn url(&self) -> Option<Url> {
        self.server.as_deref().and_then(|s| Url::parse(s).ok())
    }

    /// The choice for a server given in a sharing link.
    pub fn from_link(server: &str) -> Result<Self, ChooseError> {
        let url = zajel_wire::endpoint::signaling_url(server).map_err(|source| {
            ChooseError::BadServer {
                server: server.into(),
                source,
            }
        })?;
        Ok(Self {
            server: Some(url.to_string()),
            how: "share_link".into(),
            found_by: vec!["qr".into()],
            blocked: Vec::new(),
            unreachable: Vec::new(),
            identities: Vec::new(),
            discovery: None,
        })
    }

    /// Runs discovery to the end and takes its best server.
    pub async fn discover(config: DiscoveryConfig) -> Result<Self, ChooseError> {
        let discovery = Discovery::new(config)?;
        let report = discovery.run().finish().await;
        Ok(Self::from_report(report))
    }

    /// The choice a discovery report makes.
    pub fn from_report(report: DiscoveryReport) -> Self {
        let blocked = report
            .layers
            .iter()
            .filter(|l| {
                !matches!(
                    l.outcome,
                    Outcome::Ok | Outcome::Empty | Outcome::NotConfigured
                )
            })
            .map(|l| BlockedLayer {
                layer: l.layer.as_str().into(),
                outcome: outcome_name(l.outcome),
                detail: l.detail.clone(),
            })
            .collect();
        let unreachable = report
            .candidates
            .iter()
            .filter(|c| !c.outcome.is_usable())
            .map(|c| UnreachableServer {
                url: c.url.clone(),
                outcome: outcome_name(c.outcome),
                detail: c.detail.clone(),
            })
            .collect();
        let identities = report
            .candidates
            .iter()
            .filter(|c| c.outcome.is_usable() || matches!(c.outcome, Outcome::IdentityMismatch))
            .map(|c| ServerIdentity {
                url: c.url.clone(),
                outcome: outcome_name(c.outcome),
                verified: c.verified,
                server_id: c.server_id.clone(),
                proven_server_id: c.proven_server_id.clone(),
            })
            .collect();
        let (server, found_by) = match &report.best {
            Some(best) => (
                Some(best.url.clone()),
                best.sources
                    .iter()
                    .map(|l| l.as_str().to_string())
                    .collect(),
            ),
            None => (None, Vec::new()),
        };
        Self {
            server,
            how: "discovery".into(),
            found_by,
            blocked,
            unreachable,
            identities,
            discovery: Some(report),
        }
    }

    /// The servers a call may use, best first: the chosen one, then every other server
    /// discovery checked and found usable (signed sources first, then by round trip). A
    /// `call` moves on to the next when a server turns out hostile.
    pub fn usable_servers(&self) -> Vec<String> {
        let mut servers: Vec<String> = self.server.iter().cloned().collect();
        if let Some(report) = &self.discovery {
            let mut others: Vec<_> = report
                .candidates
                .iter()
                .filter(|c| c.outcome.is_ok() && !servers.contains(&c.url))
                .collect();
            others.sort_by(|a, b| {
                b.verified.cmp(&a.verified).then(
                    a.rtt_ms
                        .unwrap_or(f64::MAX)
                        .total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)),
                )
            });
            for candidate in others {
                if !servers.contains(&candidate.url) {
                    servers.push(candidate.url.clone());
                }
            }
        }
        servers
    }

    /// The relays the registry's signed list names (registry, DoH, or a cache entry first
    /// learnt from one), as (serverId, URL), reachable or not: where a contact's match may
    /// send `call --contact` and `answer` (a meeting connection, which has the relay prove
    /// that serverId). Empty without a signed source.
    pub fn signed_fleet(&self) -> Vec<(String, String)> {
        let Some(report) = &self.discovery else {
            return Vec::new();
        };
        report
            .candidates
            .iter()
            .filter(|c| c.signed)
            .filter_map(|c| Some((c.server_id.clone()?, c.url.clone())))
            .collect()
    }

    /// The choice after moving on to `url` (one of [`Self::usable_servers`]): the server and
    /// the layers that named it.
    pub fn moved_to(&mut self, url: &str) {
        if self.server.as_deref() == Some(url) {
            return;
        }
        self.server = Some(url.to_string());
        if let Some(candidate) = self.discovery.as_ref().and_then(|r| r.candidate(url)) {
            self.found_by = candidate
                .sources
                .iter()
                .map(|l| l.as_str().to_string())
                .collect();
        }
    }

    /// A few lines for a person.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if let Some(report) = &self.discovery {
            for layer in &report.layers {
                out.push_str(&layer.table_row());
                out.push('\n');
            }
        }
        for identity in &self.identities {
            out.push_str(&format!(
                "identity            {} {}\n",
                identity.url,
                identity.summary()
            ));
        }
        out.push_str(&format!(
            "chosen server       {} ({} via {})\n",
            self.server.as_deref().unwrap_or("none"),
            self.how,
            if self.found_by.is_empty() {
                "-".into()
            } else {
                self.found_by.join(", ")
            }
        ));
        if self.server.is_none() {
            // Why: each server that was named and did not answer, or that none was named.
            for server in &self.unreachable {
                out.push_str(&format!(
                    "why none            {} {}{}\n",
                    server.url,
                    server.outcome,
                    if server.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", server.detail)
                    }
                ));
            }
            if self.unreachable.is_empty() {
                out.push_str(if self.blocked.is_empty() {
                    "why none            no layer named a server\n"
                } else {
                    "why none            no layer named a server (the failed layers are above)\n"
                });
            }
        }
        out
    }
}

/// An outcome as its JSON name (`tls_failure`, `timed_out`…).
fn outcome_name(outcome: Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| outcome.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_server_that_is_no_url_is_a_bad_server() {
        let error = ServerChoice::from_link("not a url at all").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BadServer);
        let source = zajel_wire::endpoint::signaling_url("not a url at all").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("server not a url at all: {source}")
        );
    }

    #[test]
    fn the_choice_reports_who_each_server_proved_to_be() {
        use discovery_client::report::{CandidateReport, Layer, Verdict};
        let candidate = |url: &str, outcome, verified, proven: Option<&str>| CandidateReport {
            url: url.into(),
            sources: vec![Layer::Registry],
            verified,
            signed: true,
            server_id: Some("ed25519:signed".into()),
            announced_server_id: None,
            proven_server_id: proven.map(str::to_string),
            outcome,
            detail: String::new(),
            rtt_ms: Some(1.0),
            checked_ms: Some(1.0),
        };
        let report = DiscoveryReport {
            started_at_ms: 0,
            duration_ms: 1.0,
            complete: true,
            verdict: Verdict::Verified,
            best: None,
            first_verified_ms: None,
            first_usable_ms: None,
            layers: Vec::new(),
            candidates: vec![
                candidate("wss://lite/", Outcome::Ok, true, Some("ed25519:signed")),
                candidate("wss://zajel/", Outcome::IdentityUnproven, false, None),
                candidate("wss://evil/", Outcome::IdentityMismatch, false, None),
                candidate("wss://down/", Outcome::Refused, false, None),
            ],
            warnings: Vec::new(),
        };
        let choice = ServerChoice::from_report(report);
        let unreachable: Vec<&str> = choice.unreachable.iter().map(|u| u.url.as_str()).collect();
        assert_eq!(unreachable, ["wss://evil/", "wss://down/"]);
        let identities: Vec<(&str, String)> = choice
            .identities
            .iter()
            .map(|i| (i.url.as_str(), i.summary()))
            .collect();
        assert_eq!(
            identities,
            [
                ("wss://lite/", "verified: proved ed25519:signed".to_string()),
                ("wss://zajel/", "identity unproven".to_string()),
                ("wss://evil/", "identity mismatch".to_string()),
            ]
        );
        assert!(choice
            .to_table()
            .contains("identity            wss://evil/ identity mismatch"));
        let json = serde_json::to_value(&choice).unwrap();
        assert_eq!(json["identities"][1]["outcome"], "identity_unproven");
    }

    #[test]
    fn the_table_says_why_no_server_was_chosen() {
        use discovery_client::report::{CandidateReport, Layer, Verdict};
        let mut report = DiscoveryReport {
            started_at_ms: 0,
            duration_ms: 1.0,
            complete: true,
            verdict: Verdict::Nothing,
            best: None,
            first_verified_ms: None,
            first_usable_ms: None,
            layers: Vec::new(),
            candidates: Vec::new(),
            warnings: Vec::new(),
        };
        let table = ServerChoice::from_report(report.clone()).to_table();
        assert!(table.contains("chosen server       none"), "{table}");
        assert!(
            table.contains("why none            no layer named a server\n"),
            "{table}"
        );
        report.candidates.push(CandidateReport {
            url: "ws://127.0.0.1:8080/".into(),
            sources: vec![Layer::Manual],
            verified: false,
            signed: false,
            server_id: None,
            announced_server_id: None,
            proven_server_id: None,
            outcome: Outcome::Protocol,
            detail: "no server_info greeting".into(),
            rtt_ms: None,
            checked_ms: Some(1.0),
        });
        let table = ServerChoice::from_report(report).to_table();
        assert!(
            table.contains(
                "why none            ws://127.0.0.1:8080/ protocol: no server_info greeting"
            ),
            "{table}"
        );
    }

    #[tokio::test]
    async fn discovery_that_cannot_be_set_up_is_a_discovery_config_error() {
        let config = DiscoveryConfig {
            extra_roots: vec![rustls::pki_types::CertificateDer::from(vec![1, 2, 3])],
            ..DiscoveryConfig::default()
        };
        let message = Discovery::new(config.clone()).err().unwrap().to_string();
        let error = ServerChoice::discover(config).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::DiscoveryConfig);
        assert_eq!(error.to_string(), message);
    }
}
