//! The report every discovery run produces: per layer what it returned and how
//! it ended, per candidate where it came from and whether it answered.
//! Everything here is plain serde data (JSON for `zajel-discover --json`),
//! including [`Candidate`], a server found by discovery.

use serde::{Deserialize, Serialize};

/// The six discovery layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Registry,
    Doh,
    Cache,
    Referral,
    Qr,
    Manual,
}

impl Layer {
    /// All layers, in report order.
    pub const ALL: [Layer; 6] = [
        Layer::Registry,
        Layer::Doh,
        Layer::Cache,
        Layer::Referral,
        Layer::Qr,
        Layer::Manual,
    ];

    /// Whether candidates from this layer are signed by a pinned registry key
    /// (the cache keeps the flag of the source it learned a server from).
    pub fn is_signed(self) -> bool {
        matches!(self, Layer::Registry | Layer::Doh)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Registry => "registry",
            Layer::Doh => "doh",
            Layer::Cache => "cache",
            Layer::Referral => "referral",
            Layer::Qr => "qr",
            Layer::Manual => "manual",
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a layer, one of its sources, or a candidate check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Returned something usable (for a candidate: answered `ping` with `pong`).
    Ok,
    /// Answered, with nothing in it.
    Empty,
    /// Not configured for this run (no registry URL, no resolver, …).
    NotConfigured,
    TimedOut,
    /// The connection was refused (or reset).
    Refused,
    TlsFailure,
    DnsFailure,
    /// Signed, but not by a pinned key (or not signed while a key is pinned).
    InvalidSignature,
    /// Signed, but too old (or expired).
    Stale,
    /// A loopback or private address, refused by policy.
    PrivateAddress,
    /// Answered with something that is not the expected protocol.
    Protocol,
    /// Input that is not valid (a bad URL or sharing link).
    Invalid,
    /// Any other failure (see the detail text).
    Error,
    /// Still running (only in a report taken before the run ended).
    Pending,
    /// A candidate that answered but is not the server its entry names: its
    /// identity proof is by another key, for another endpoint, for another
    /// nonce (a replay) or does not verify, or its `server_info` names
    /// another server. Not used.
    IdentityMismatch,
    /// A candidate that answered `ping` but not the identity challenge (an
    /// `error`, as from Zajel's server, or no proof before the `pong`).
    /// Usable, ranked after every proven server, never verified.
    IdentityUnproven,
    /// A server a signed revocation retired (`v=zajel1 revoke=…`, see
    /// [`crate::txt`]): never used until the revocation expires.
    Revoked,
}

impl Outcome {
    pub fn is_ok(self) -> bool {
        self == Outcome::Ok
    }

    /// Whether a candidate check with this outcome leaves a server that may
    /// be used: it answered, and did not prove to be another server
    /// ([`Outcome::Ok`] or [`Outcome::IdentityUnproven`]).
    pub fn is_usable(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::IdentityUnproven)
    }

    /// Which of two failures says more about why a layer failed (used to
    /// summarise several sources in one layer outcome).
    fn weight(self) -> u8 {
        match self {
            Outcome::Ok => 100,
            Outcome::IdentityMismatch => 95,
            Outcome::Revoked => 92,
            Outcome::InvalidSignature => 90,
            Outcome::Stale => 85,
            Outcome::TlsFailure => 80,
            Outcome::Protocol => 75,
            Outcome::Refused => 70,
            Outcome::DnsFailure => 65,
            Outcome::TimedOut => 60,
            Outcome::PrivateAddress => 55,
            Outcome::Invalid => 50,
            Outcome::Error => 45,
            Outcome::Empty => 40,
            Outcome::IdentityUnproven => 35,
            Outcome::Pending => 1,
            Outcome::NotConfigured => 0,
        }
    }

    /// The outcome of a layer made of sources with these outcomes.
    pub fn summarise(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
        outcomes
            .into_iter()
            .max_by_key(|o| o.weight())
            .unwrap_or(Outcome::NotConfigured)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Empty => "empty",
            Outcome::NotConfigured => "not configured",
            Outcome::TimedOut => "timed out",
            Outcome::Refused => "refused",
            Outcome::TlsFailure => "TLS failure",
            Outcome::DnsFailure => "DNS failure",
            Outcome::InvalidSignature => "invalid signature",
            Outcome::Stale => "stale",
            Outcome::PrivateAddress => "private address refused",
            Outcome::Protocol => "protocol error",
            Outcome::Invalid => "invalid input",
            Outcome::Error => "error",
            Outcome::Pending => "still running",
            Outcome::IdentityMismatch => "identity mismatch",
            Outcome::IdentityUnproven => "identity unproven",
            Outcome::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source inside a layer: a registry URL, a DoH resolver, a typed URL…
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// What was asked (a URL, `resolver → name`, a file path).
    pub source: String,
    pub outcome: Outcome,
    /// Why, in words (empty when ok).
    pub detail: String,
    /// Candidates this source named.
    pub candidates: Vec<String>,
    /// Records or entries refused (bad signature, expired, malformed), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Milliseconds from the start of the run.
    pub started_ms: f64,
    pub finished_ms: f64,
}

/// One layer: its sources and how it ended overall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub layer: Layer,
    pub outcome: Outcome,
    /// The summary reason (the most telling failure when not ok).
    pub detail: String,
    pub sources: Vec<SourceReport>,
    /// Distinct candidates the layer returned.
    pub candidates: usize,
    pub started_ms: f64,
    pub finished_ms: f64,
}

impl LayerReport {
    /// One line for a text table: layer, outcome, candidates, time and the
    /// reason when there is one.
    pub fn table_row(&self) -> String {
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!("  ({})", self.detail)
        };
        format!(
            "{:<20}{:<16}{} candidate(s) in {:.1} ms{detail}",
            self.layer.as_str(),
            self.outcome.as_str(),
            self.candidates,
            self.finished_ms - self.started_ms,
        )
    }
}

/// One candidate server: where it came from, whether it answered and
/// whether it proved to be the server its entry names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    /// The WebSocket URL checked.
    pub url: String,
    pub sources: Vec<Layer>,
    /// Named by a source signed with a pinned registry key ([`Self::signed`])
    /// AND proved by that same key on this endpoint (the identity challenge).
    pub verified: bool,
    /// Named by a source signed with a pinned registry key (registry, DoH,
    /// or a cache entry first learned from one).
    #[serde(default)]
    pub signed: bool,
    /// The `serverId` a signed source (or the entry) gave for it: the key
    /// the server must prove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The `serverId` the server announced in `server_info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced_server_id: Option<String>,
    /// The `serverId` of a valid identity proof the server gave for our
    /// nonce and this endpoint. Without a [`Self::server_id`] to check it
    /// against it is only learnt, not proven to be anyone in particular.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_server_id: Option<String>,
    pub outcome: Outcome,
    pub detail: String,
    /// `ping` → `pong` round trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Milliseconds from the start of the run when the check ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_ms: Option<f64>,
}

/// A server found by discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The WebSocket URL to connect to.
    pub url: String,
    /// Layers that named it.
    pub sources: Vec<Layer>,
    /// Named by a source signed with a pinned registry key (registry, DoH, or
    /// a cache entry first learned from one) AND proved by that same key.
    pub verified: bool,
    /// Named by a source signed with a pinned registry key.
    #[serde(default)]
    pub signed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The `serverId` of its valid identity proof (`None`: it did not prove,
    /// `identity_unproven`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proven_server_id: Option<String>,
    /// `ping` → `pong` round trip when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// When it last worked, from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
}

/// What a run found overall (also the CLI's exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A server named by a signed source answered and proved it is that server.
    Verified,
    /// Only servers from unsigned sources (referral, QR, manual), or servers
    /// that did not prove their identity, answered.
    UnverifiedOnly,
    /// No server answered.
    Nothing,
}

/// The report of one discovery run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the run started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// How long the run took (so far, for a snapshot).
    pub duration_ms: f64,
    /// Whether every layer and check has ended.
    pub complete: bool,
    pub verdict: Verdict,
    /// The best usable server, ranked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Candidate>,
    /// Milliseconds to the first usable server from a signed source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_verified_ms: Option<f64>,
    /// Milliseconds to the first usable server of any kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_usable_ms: Option<f64>,
    pub layers: Vec<LayerReport>,
    pub candidates: Vec<CandidateReport>,
    /// Things the user should know (a corrupt cache moved aside, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Report {
    /// The report of one layer.
    pub fn layer(&self, layer: Layer) -> Option<&LayerReport> {
        self.layers.iter().find(|l| l.layer == layer)
    }

    /// The report of one candidate.
    pub fn candidate(&self, url: &str) -> Option<&CandidateReport> {
        self.candidates.iter().find(|c| c.url == url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_takes_its_best_or_most_telling_outcome() {
        assert_eq!(
            Outcome::summarise([Outcome::TimedOut, Outcome::Ok]),
            Outcome::Ok
        );
        assert_eq!(
            Outcome::summarise([Outcome::TimedOut, Outcome::InvalidSignature]),
            Outcome::InvalidSignature
        );
        assert_eq!(Outcome::summarise([]), Outcome::NotConfigured);
        assert_eq!(
            serde_json::to_string(&Outcome::TlsFailure).unwrap(),
            "\"tls_failure\""
        );
        assert_eq!(
            serde_json::to_string(&Outcome::IdentityMismatch).unwrap(),
            "\"identity_mismatch\""
        );
        assert_eq!(
            serde_json::to_string(&Outcome::IdentityUnproven).unwrap(),
            "\"identity_unproven\""
        );
        assert!(Outcome::IdentityUnproven.is_usable());
        assert!(!Outcome::IdentityMismatch.is_usable());
        assert!(!Outcome::IdentityUnproven.is_ok());
    }
}
