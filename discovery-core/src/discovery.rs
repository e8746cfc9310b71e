//! The discovery state as a sans-IO machine: [`DiscoveryState`] decides which
//! layers start when, merges what their sources name into one list of
//! candidates, decides which candidates are checked, ranks the ones that
//! answered, says when the run is over and writes the [`Report`]. It never
//! touches the network, the disk or a clock: a driver (discovery-client's
//! `discovery` module) runs the I/O it asks for and feeds back what happened,
//! with `now` measured from the start of the run.
//!
//! Driving it: call [`DiscoveryState::handle_timeout`] at
//! [`DiscoveryState::poll_timeout`], [`DiscoveryState::handle`] with every
//! [`Input`], and after each call drain [`DiscoveryState::poll_output`].
//!
//! The rules (each has a unit test below):
//! 1. **Staggered start**: the local layers (cache, referral, QR, manual) and
//!    the registry layer start at once; the DoH layer starts `stagger` later
//!    (happy eyeballs).
//! 2. **Layer end**: a local layer ends when the driver says it is done; a
//!    network layer (registry, DoH) ends when every source it was given has
//!    answered, or at `layer_timeout` after its start, when each source still
//!    silent is reported `timed_out`. A network layer with no source ends at
//!    its start, not configured. Anything a source sends after its layer
//!    ended is ignored.
//! 3. **Merging**: candidates are keyed by their normalised signaling URL; a
//!    URL named again adds the layer to its sources, becomes signed if the
//!    new source is signed, keeps the first `serverId` (a signed source's
//!    over an unsigned one's) and cache time, and is never checked twice.
//! 4. **Admission**: a URL that is not a signaling URL is refused as
//!    `invalid` and a loopback or private host as `private_address` (unless
//!    private addresses are allowed), both without a check; every other new
//!    candidate is checked, verified or not.
//! 5. **Check limit**: at most `max_parallel_checks` *fresh* checks run at
//!    once; a check silent for `stall_after` is *stalled* and no longer holds
//!    a fresh slot (it keeps running until it answers or its own timeout),
//!    so that entries which accept and never answer cannot hold every slot
//!    while a good server waits. At most `max_checks_in_flight` checks run
//!    in all (sockets are bounded). The others wait; the next to start is the
//!    oldest waiting one of the layer with the fewest checks started, so a
//!    flooded source cannot starve the others.
//! 6. **Usable**: a check that answered makes the candidate usable (an
//!    [`Event::Usable`]) unless its identity is a mismatch (rule 11); a
//!    usable unverified candidate later named by a signed source is judged
//!    again against that source's `serverId`: announced again when it is now
//!    verified, reported again when it is now a mismatch. The report keeps
//!    the time to the first usable and the first verified usable server.
//! 7. **Ranking**: verified (signed and proven) first, then servers with a
//!    valid identity proof before unproven ones, then signed before
//!    unsigned, then worked in the last 24 h (from the cache), then the
//!    shortest round trip.
//! 8. **Handover** ([`handover`]): a verified usable server is handed over as
//!    soon as it is known; when the run ends first, its best server (possibly
//!    unverified, possibly none).
//! 9. **Run end**: once every layer ended and no check is running or
//!    waiting, the checked servers are handed to the driver to remember (when
//!    `remember` is set) and then the run finishes with a complete report
//!    ([`Event::Finished`]); a failed write becomes a warning.
//! 10. **Report**: a layer still running shows `pending` unless a source was
//!     already ok; its outcome is otherwise the most telling of its sources'
//!     ([`Outcome::summarise`]); the verdict is that of the best candidate.
//! 11. **Identity** ([`crate::identity`]): a check that answered is judged on
//!     its identity challenge against the candidate's `serverId`: proven (or
//!     learnt, when nothing named a key) stays [`Outcome::Ok`]; no proof is
//!     [`Outcome::IdentityUnproven`] (usable, never verified); another key,
//!     endpoint or nonce, a bad signature or a `server_info` naming another
//!     server is [`Outcome::IdentityMismatch`] (not used). A candidate is
//!     *verified* only when signed AND proven by that same key.
//! 12. **Revocation** ([`crate::txt`]): a candidate whose `serverId` (named
//!     or proven) a signed revocation retired is [`Outcome::Revoked`]: never
//!     checked, never usable, never handed over, until the revocation
//!     expires. Revocations come from the rules (the cache) and from
//!     [`Input::Revoked`] (a DoH answer); one that arrives after a candidate
//!     was checked withdraws it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use url::Url;
use zajel_wire::endpoint;

use crate::address;
use crate::identity::{self, Identity, IdentityCheck};
use crate::report::{
    Candidate, CandidateReport, Layer, LayerReport, Outcome, Report, SourceReport, Verdict,
};
use crate::share::ShareLink;
use crate::txt::{Revocation, TxtEntry};

/// How long a server that worked counts as recently working in ranking.
pub const RECENT_MS: u64 = 24 * 3600 * 1000;

/// The drivers' default longest wait for one candidate's `pong` (the other
/// defaults every client starts from are [`Rules::default`]'s).
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The rules of one run.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accept loopback and private addresses (tests, LANs).
    pub allow_private: bool,
    /// Most fresh candidate checks at once (0 counts as 1; rule 5).
    pub max_parallel_checks: usize,
    /// How long a check runs before it is stalled and frees its fresh slot.
    pub stall_after: Duration,
    /// Most candidate checks at once, stalled ones included (0 counts as 1).
    pub max_checks_in_flight: usize,
    /// Revocations known at the start (the cache's; rule 12).
    pub revoked: Vec<Revocation>,
    /// Delay between starting the registry layer and the DoH layer.
    pub stagger: Duration,
    /// Longest wait for a network layer's sources, from the layer's start.
    pub layer_timeout: Duration,
    /// The registry layer's sources, as their [`SourceReport::source`] will
    /// name them.
    pub registry_sources: Vec<String>,
    /// The DoH layer's sources (one per resolver and name).
    pub doh_sources: Vec<String>,
    /// Hand the checked servers to the driver to remember before finishing.
    pub remember: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_parallel_checks: 16,
            stall_after: Duration::from_millis(50),
            max_checks_in_flight: 512,
            revoked: Vec::new(),
            stagger: Duration::from_millis(50),
            layer_timeout: Duration::from_secs(3),
            registry_sources: Vec::new(),
            doh_sources: Vec::new(),
            remember: false,
        }
    }
}

/// A server named by a source, before merging.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub url: String,
    /// Named by a source signed with a pinned registry key (the candidate
    /// is *signed*; verified once it also proves that `server_id`).
    pub verified: bool,
    /// The key the server must prove (rule 11).
    pub server_id: Option<String>,
    /// When it last worked, from the cache.
    pub last_ok_ms: Option<u64>,
}

impl Found {
    /// A server from an unsigned source (referral, QR, manual).
    pub fn unverified(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            verified: false,
            server_id: None,
            last_ok_ms: None,
        }
    }
}

impl From<TxtEntry> for Found {
    /// A server of a TXT record that verified: signed, to prove its `serverId`.
    fn from(entry: TxtEntry) -> Self {
        Self {
            url: entry.endpoint,
            verified: true,
            server_id: Some(entry.server_id),
            last_ok_ms: None,
        }
    }
}

/// How a candidate check ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub outcome: Outcome,
    pub detail: String,
    pub rtt_ms: Option<f64>,
    /// The `serverId` the server announced in `server_info`.
    pub announced_server_id: Option<String>,
    /// What the identity challenge showed (meaningful when `outcome` is ok).
    pub identity: IdentityCheck,
}

/// Which candidate a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CandidateId(pub usize);

/// A checked candidate as the cache records it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedServer {
    pub url: String,
    /// Named by a signed source (what the next run's cache layer says).
    pub verified: bool,
    pub server_id: Option<String>,
    pub rtt_ms: Option<f64>,
    /// Whether it answered.
    pub answered: bool,
}

/// What the driver tells the machine.
#[derive(Debug, Clone)]
pub enum Input {
    /// One source of a layer answered (or failed), naming these servers.
    Source {
        layer: Layer,
        report: SourceReport,
        found: Vec<Found>,
    },
    /// A local layer gave all its sources.
    LayerDone(Layer),
    /// A check asked with [`Output::Check`] ended.
    Checked {
        candidate: CandidateId,
        result: CheckResult,
    },
    /// The servers of [`Output::Remember`] were written (or why not).
    Remembered(Result<(), String>),
    /// Signed revocations that verified (rule 12).
    Revoked(Vec<Revocation>),
}

/// What the machine asks of the driver, or tells its listeners.
#[derive(Debug, Clone)]
pub enum Output {
    /// Start this layer's I/O (feed back [`Input::Source`]s; for a local
    /// layer, then [`Input::LayerDone`]).
    StartLayer(Layer),
    /// Check this candidate (feed back [`Input::Checked`]).
    Check { candidate: CandidateId, url: Url },
    /// Write these servers to the cache (feed back [`Input::Remembered`]).
    Remember(Vec<CheckedServer>),
    /// Something the run learned, for the listeners.
    Event(Event),
}

/// Something a run learned.
#[derive(Debug, Clone)]
pub enum Event {
    /// A layer ended (with everything it returned).
    LayerFinished(LayerReport),
    /// A candidate was checked (or refused without a check; sent again when
    /// a signed source later names a checked candidate that proved another key).
    CandidateChecked(CandidateReport),
    /// A candidate answered and did not prove to be another server (sent
    /// again when a signed source later names an already usable unverified
    /// candidate that proved that source's key, now with `verified: true`).
    Usable(Candidate),
    /// The run is over.
    Finished(Box<Report>),
}

/// What a caller waiting for "the best server within a time limit" does
/// with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Handover {
    /// A verified usable server: take it now.
    Verified(Candidate),
    /// The run ended: its best server, if any.
    RunOver(Option<Candidate>),
}

/// Rule 8: whether an event ends a wait for the best server. When the time
/// limit passes first, the caller takes the report's `best`.
pub fn handover(event: &Event) -> Option<Handover> {
    match event {
        Event::Usable(candidate) if candidate.verified => {
            Some(Handover::Verified(candidate.clone()))
        }
        Event::Finished(report) => Some(Handover::RunOver(report.best.clone())),
        _ => None,
    }
}

/// Rule 7: the sort key of a usable candidate (smaller ranks first).
pub fn rank_key(candidate: &Candidate, now_ms: u64) -> (u8, u8, u8, u8, f64) {
    let recent = candidate
        .last_ok_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < RECENT_MS);
    (
        u8::from(!candidate.verified),
        u8::from(candidate.proven_server_id.is_none()),
        u8::from(!candidate.signed),
        u8::from(!recent),
        candidate.rtt_ms.unwrap_or(f64::MAX),
    )
}

/// A source report for servers found between `started_ms` and `finished_ms`.
pub fn source_report(
    source: String,
    outcome: Outcome,
    detail: String,
    found: &[Found],
    started_ms: f64,
    finished_ms: f64,
) -> SourceReport {
    SourceReport {
        source,
        outcome,
        detail,
        candidates: found.iter().map(|f| f.url.clone()).collect(),
        refused: Vec::new(),
        started_ms,
        finished_ms,
    }
}

/// How the report names a DoH source: the resolver, then the name asked.
pub fn doh_source(resolver: impl std::fmt::Display, name: &str) -> String {
    format!("{resolver} → {name}")
}

/// Every (resolver, domain) pair of the DoH layer, with the name asked
/// (`_zajel.<domain>.`), resolver by resolver.
pub fn doh_queries<'a, R>(
    resolvers: &'a [R],
    domains: &'a [String],
) -> impl Iterator<Item = (&'a R, &'a String, String)> + 'a {
    resolvers.iter().flat_map(move |resolver| {
        domains
            .iter()
            .map(move |domain| (resolver, domain, crate::txt::record_name(domain)))
    })
}

/// What one source of a local layer amounts to: its outcome, the reason in
/// words, and the servers it names.
pub type SourceFindings = (Outcome, String, Vec<Found>);

/// The QR layer's reading of one sharing link: its servers (unverified),
/// and whether the registry key it carries is one of the pinned keys.
pub fn share_link_source(text: &str, pinned: &[VerifyingKey]) -> SourceFindings {
    let link = match ShareLink::parse(text) {
        Ok(link) => link,
        Err(e) => return (Outcome::Invalid, e.to_string(), Vec::new()),
    };
    let found: Vec<Found> = link.servers.iter().map(Found::unverified).collect();
    let mut detail = format!("contact code {}", link.code);
    if let Some(key) = &link.registry_key {
        let matches = pinned
            .iter()
            .any(|k| zajel_wire::keys::public_key_to_base64(k) == *key);
        detail.push_str(if matches {
            "; registry key matches the pinned key"
        } else {
            "; registry key differs from the pinned keys"
        });
    }
    let outcome = if found.is_empty() {
        Outcome::Empty
    } else {
        Outcome::Ok
    };
    (outcome, detail, found)
}

/// The manual layer's reading of one typed URL.
pub fn manual_source(text: &str) -> SourceFindings {
    match endpoint::signaling_url(text) {
        Ok(_) => (
            Outcome::Ok,
            String::new(),
            vec![Found::unverified(text.trim())],
        ),
        Err(e) => (
            Outcome::Invalid,
            format!("not a server URL: {e}"),
            Vec::new(),
        ),
    }
}

fn ms(now: Duration) -> f64 {
    now.as_secs_f64() * 1000.0
}

fn is_network(layer: Layer) -> bool {
    matches!(layer, Layer::Registry | Layer::Doh)
}

struct CandidateState {
    url: String,
    sources: Vec<Layer>,
    /// Named by a signed source.
    signed: bool,
    server_id: Option<String>,
    last_ok_ms: Option<u64>,
    outcome: Option<Outcome>,
    detail: String,
    check: Option<CheckResult>,
    /// Rule 11's judgement of a check that answered.
    identity: Option<Identity>,
    checked_ms: Option<f64>,
}

/// A check the driver is running.
struct RunningCheck {
    index: usize,
    /// When it stalls (rule 5).
    stalls_at: Duration,
    stalled: bool,
}

/// Revoked `serverId`s and until when (unix seconds).
type RevokedIds = HashMap<String, u64>;

impl CandidateState {
    /// Until when the revocation of its named or proven `serverId` holds.
    fn revoked_until(&self, revoked: &RevokedIds, now_secs: u64) -> Option<u64> {
        [self.server_id.clone(), self.proven_server_id()]
            .into_iter()
            .flatten()
            .filter_map(|id| revoked.get(&id).copied())
            .filter(|&until| until > now_secs)
            .max()
    }

    fn candidate(&self) -> Candidate {
        Candidate {
            url: self.url.clone(),
            sources: self.sources.clone(),
            verified: self.verified(),
            signed: self.signed,
            server_id: self.server_id.clone(),
            proven_server_id: self.proven_server_id(),
            rtt_ms: self.check.as_ref().and_then(|c| c.rtt_ms),
            last_ok_ms: self.last_ok_ms,
        }
    }

    /// Signed and proven by that same key.
    fn verified(&self) -> bool {
        self.signed && matches!(self.identity, Some(Identity::Proven { .. }))
    }

    fn proven_server_id(&self) -> Option<String> {
        self.identity
            .as_ref()
            .and_then(|i| i.proven_server_id().map(str::to_string))
    }

    fn usable(&self) -> bool {
        self.outcome.is_some_and(Outcome::is_usable)
    }

    /// Rules 11 and 12: the outcome of the check, judged on its identity
    /// against the `serverId` the candidate's sources named so far, and on
    /// revocations.
    fn judge(&mut self, revoked: &RevokedIds, now_secs: u64) {
        self.judge_identity();
        if let Some(until) = self.revoked_until(revoked, now_secs) {
            self.outcome = Some(Outcome::Revoked);
            self.detail = format!("revoked by a signed revocation until {until} (unix seconds)");
        }
    }

    fn judge_identity(&mut self) {
        let Some(check) = &self.check else {
            return;
        };
        if !check.outcome.is_ok() {
            self.outcome = Some(check.outcome);
            self.detail = check.detail.clone();
            self.identity = None;
            return;
        }
        let identity = identity::judge(
            &self.url,
            self.server_id.as_deref(),
            check.announced_server_id.as_deref(),
            &check.identity,
        );
        let (outcome, detail) = match &identity {
            Identity::Proven { .. } => (Outcome::Ok, check.detail.clone()),
            Identity::Learnt { server_id } => (
                Outcome::Ok,
                format!("proved {server_id}; no signed entry names a key to check it against"),
            ),
            Identity::Unproven(why) => (
                Outcome::IdentityUnproven,
                format!("no identity proof: {why}"),
            ),
            Identity::Mismatch(why) => (Outcome::IdentityMismatch, why.clone()),
        };
        self.outcome = Some(outcome);
        self.detail = detail;
        self.identity = Some(identity);
    }

    fn report(&self) -> CandidateReport {
        CandidateReport {
            url: self.url.clone(),
            sources: self.sources.clone(),
            verified: self.verified(),
            signed: self.signed,
            server_id: self.server_id.clone(),
            proven_server_id: self.proven_server_id(),
            announced_server_id: self
                .check
                .as_ref()
                .and_then(|c| c.announced_server_id.clone()),
            outcome: self.outcome.unwrap_or(Outcome::Pending),
            detail: match self.outcome {
                None => "check still running".into(),
                Some(_) => self.detail.clone(),
            },
            rtt_ms: self.check.as_ref().and_then(|c| c.rtt_ms),
            checked_ms: self.checked_ms,
        }
    }
}

struct LayerState {
    layer: Layer,
    /// When the layer is due to start, from the start of the run.
    starts_at: Duration,
    started_ms: Option<f64>,
    finished_ms: Option<f64>,
    sources: Vec<SourceReport>,
    /// Network layers: sources not heard from yet.
    silent: Vec<String>,
    /// Network layers: when silent sources count as timed out.
    deadline: Option<Duration>,
}

impl LayerState {
    fn started(&self) -> bool {
        self.started_ms.is_some()
    }

    fn finished(&self) -> bool {
        self.finished_ms.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Remembering,
    Finished,
}

/// One discovery run's state (see the module header for its rules).
pub struct DiscoveryState {
    rules: Rules,
    started_at_ms: u64,
    layers: Vec<LayerState>,
    candidates: Vec<CandidateState>,
    index: HashMap<String, usize>,
    waiting: VecDeque<(usize, Url)>,
    /// Checks running.
    running: Vec<RunningCheck>,
    /// Checks started per layer (the candidate's first source), for rule 5.
    started_per_layer: HashMap<Layer, usize>,
    revoked: RevokedIds,
    warnings: Vec<String>,
    first_verified_ms: Option<f64>,
    first_usable_ms: Option<f64>,
    phase: Phase,
    outputs: VecDeque<Output>,
}

impl DiscoveryState {
    /// A run that started at `started_at_ms` (ms since the Unix epoch, for
    /// the report and for ranking by cache age). Nothing starts before the
    /// first [`handle_timeout`](Self::handle_timeout).
    pub fn new(rules: Rules, started_at_ms: u64) -> Self {
        let layers = Layer::ALL
            .iter()
            .map(|&layer| LayerState {
                layer,
                starts_at: if layer == Layer::Doh {
                    rules.stagger
                } else {
                    Duration::ZERO
                },
                started_ms: None,
                finished_ms: None,
                sources: Vec::new(),
                silent: match layer {
                    Layer::Registry => rules.registry_sources.clone(),
                    Layer::Doh => rules.doh_sources.clone(),
                    _ => Vec::new(),
                },
                deadline: None,
            })
            .collect();
        let revoked = rules
            .revoked
            .iter()
            .map(|r| (r.server_id.clone(), r.expires))
            .collect();
        Self {
            rules,
            started_at_ms,
            layers,
            candidates: Vec::new(),
            index: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            started_per_layer: HashMap::new(),
            revoked,
            warnings: Vec::new(),
            first_verified_ms: None,
            first_usable_ms: None,
            phase: Phase::Running,
            outputs: VecDeque::new(),
        }
    }

    /// Adds a warning to the report (a corrupt cache moved aside, …).
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Whether [`Event::Finished`] has been emitted.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (from the
    /// start of the run): a layer start, a network layer's timeout, or the
    /// moment a running check stalls while others wait (rule 5).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.phase != Phase::Running {
            return None;
        }
        let room = self.running.len() < self.rules.max_checks_in_flight.max(1);
        let stall = if self.waiting.is_empty() || !room {
            None
        } else {
            self.running
                .iter()
                .filter(|check| !check.stalled)
                .map(|check| check.stalls_at)
                .min()
        };
        self.layers
            .iter()
            .filter(|l| !l.finished())
            .filter_map(|l| {
                if l.started() {
                    l.deadline
                } else {
                    Some(l.starts_at)
                }
            })
            .chain(stall)
            .min()
    }

    /// Rules 1 and 2: starts the layers that are due and times out network
    /// layers whose deadline passed.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.phase != Phase::Running {
            return;
        }
        for i in 0..self.layers.len() {
            let layer = &mut self.layers[i];
            if layer.started() || layer.starts_at > now {
                continue;
            }
            layer.started_ms = Some(ms(now));
            if !is_network(layer.layer) {
                let layer = layer.layer;
                self.outputs.push_back(Output::StartLayer(layer));
            } else if layer.silent.is_empty() {
                let layer = layer.layer;
                self.finish_layer(layer, now);
            } else {
                layer.deadline = Some(now + self.rules.layer_timeout);
                let layer = layer.layer;
                self.outputs.push_back(Output::StartLayer(layer));
            }
        }
        let timeout_ms = self.rules.layer_timeout.as_millis();
        for i in 0..self.layers.len() {
            let layer = &mut self.layers[i];
            if layer.finished() || layer.deadline.is_none_or(|d| d > now) {
                continue;
            }
            let started_ms = layer.started_ms.unwrap_or(0.0);
            for source in std::mem::take(&mut layer.silent) {
                layer.sources.push(source_report(
                    source,
                    Outcome::TimedOut,
                    format!("no answer within {timeout_ms} ms"),
                    &[],
                    started_ms,
                    ms(now),
                ));
            }
            let layer = layer.layer;
            self.finish_layer(layer, now);
        }
        self.start_checks(now);
        self.settle(now);
    }

    /// Takes one input at `now` (from the start of the run).
    pub fn handle(&mut self, now: Duration, input: Input) {
        match input {
            Input::Source {
                layer,
                report,
                found,
            } => self.source(now, layer, report, found),
            Input::LayerDone(layer) => {
                if !self.layer(layer).finished() {
                    self.finish_layer(layer, now);
                }
            }
            Input::Checked { candidate, result } => self.checked(now, candidate.0, result),
            Input::Revoked(revocations) => self.revoke(now, revocations),
            Input::Remembered(written) => {
                if self.phase == Phase::Remembering {
                    if let Err(e) = written {
                        self.warnings.push(format!("cache not written: {e}"));
                    }
                    self.finish(now);
                }
                return;
            }
        }
        self.settle(now);
    }

    /// The report as it stands at `now`.
    pub fn report(&self, now: Duration) -> Report {
        let best = self.best(now);
        let verdict = match &best {
            Some(c) if c.verified => Verdict::Verified,
            Some(_) => Verdict::UnverifiedOnly,
            None => Verdict::Nothing,
        };
        Report {
            started_at_ms: self.started_at_ms,
            duration_ms: ms(now),
            complete: self.phase == Phase::Finished,
            verdict,
            best,
            first_verified_ms: self.first_verified_ms,
            first_usable_ms: self.first_usable_ms,
            layers: self
                .layers
                .iter()
                .map(|l| self.layer_report(l, now))
                .collect(),
            candidates: self.candidates.iter().map(CandidateState::report).collect(),
            warnings: self.warnings.clone(),
        }
    }

    fn layer(&self, layer: Layer) -> &LayerState {
        self.layers
            .iter()
            .find(|l| l.layer == layer)
            .expect("every layer has a state")
    }

    fn layer_mut(&mut self, layer: Layer) -> &mut LayerState {
        self.layers
            .iter_mut()
            .find(|l| l.layer == layer)
            .expect("every layer has a state")
    }

    fn source(&mut self, now: Duration, layer: Layer, report: SourceReport, found: Vec<Found>) {
        let state = self.layer_mut(layer);
        if state.finished() {
            return;
        }
        if let Some(i) = state.silent.iter().position(|s| *s == report.source) {
            state.silent.remove(i);
        }
        state.sources.push(report);
        let network_done = is_network(layer) && state.silent.is_empty();
        for item in found {
            self.admit(now, layer, item);
        }
        if network_done {
            self.finish_layer(layer, now);
        }
        self.start_checks(now);
    }

    fn finish_layer(&mut self, layer: Layer, now: Duration) {
        let state = self.layer_mut(layer);
        state.finished_ms = Some(ms(now));
        if state.started_ms.is_none() {
            state.started_ms = Some(ms(now));
        }
        let report = self.layer_report(self.layer(layer), now);
        self.outputs
            .push_back(Output::Event(Event::LayerFinished(report)));
    }

    /// Rules 3 and 4: merges one found server; queues a check when new.
    fn admit(&mut self, now: Duration, layer: Layer, item: Found) {
        let now_ms = ms(now);
        let now_secs = self.now_secs(now);
        let parsed = endpoint::signaling_url(&item.url);
        let key = match &parsed {
            Ok(url) => url.to_string(),
            Err(_) => item.url.clone(),
        };
        if let Some(&index) = self.index.get(&key) {
            let c = &mut self.candidates[index];
            if !c.sources.contains(&layer) {
                c.sources.push(layer);
            }
            let newly_signed = item.verified && !c.signed;
            let was_usable = c.usable();
            c.signed |= item.verified;
            if c.server_id.is_none() || (newly_signed && item.server_id.is_some()) {
                c.server_id = item.server_id;
            }
            if c.last_ok_ms.is_none() {
                c.last_ok_ms = item.last_ok_ms;
            }
            if newly_signed && c.check.is_some() {
                c.judge(&self.revoked, now_secs);
                if c.verified() {
                    let candidate = c.candidate();
                    if self.first_verified_ms.is_none() {
                        self.first_verified_ms = Some(now_ms);
                    }
                    self.outputs
                        .push_back(Output::Event(Event::Usable(candidate)));
                } else if was_usable && !c.usable() {
                    let report = c.report();
                    self.outputs
                        .push_back(Output::Event(Event::CandidateChecked(report)));
                }
            }
            return;
        }
        let mut candidate = CandidateState {
            url: key.clone(),
            sources: vec![layer],
            signed: item.verified,
            server_id: item.server_id,
            last_ok_ms: item.last_ok_ms,
            outcome: None,
            detail: String::new(),
            check: None,
            identity: None,
            checked_ms: None,
        };
        let index = self.candidates.len();
        match parsed {
            Err(e) => {
                candidate.outcome = Some(Outcome::Invalid);
                candidate.detail = format!("not a signaling URL: {e}");
                candidate.checked_ms = Some(now_ms);
                self.outputs
                    .push_back(Output::Event(Event::CandidateChecked(candidate.report())));
            }
            Ok(url) => {
                let private = url.host().is_some_and(|h| address::host_is_private(&h));
                let revoked_until = candidate.revoked_until(&self.revoked, now_secs);
                if let Some(until) = revoked_until {
                    candidate.outcome = Some(Outcome::Revoked);
                    candidate.detail =
                        format!("revoked by a signed revocation until {until} (unix seconds)");
                    candidate.checked_ms = Some(now_ms);
                    self.outputs
                        .push_back(Output::Event(Event::CandidateChecked(candidate.report())));
                } else if private && !self.rules.allow_private {
                    candidate.outcome = Some(Outcome::PrivateAddress);
                    candidate.detail =
                        "loopback or private address (refused unless private addresses are allowed)"
                            .into();
                    candidate.checked_ms = Some(now_ms);
                    self.outputs
                        .push_back(Output::Event(Event::CandidateChecked(candidate.report())));
                } else {
                    self.waiting.push_back((index, url));
                }
            }
        }
        self.candidates.push(candidate);
        self.index.insert(key, index);
    }

    /// Rule 5: starts waiting checks while there is room.
    fn start_checks(&mut self, now: Duration) {
        if self.phase != Phase::Running {
            return;
        }
        for check in &mut self.running {
            check.stalled |= check.stalls_at <= now;
        }
        loop {
            let fresh = self.running.iter().filter(|check| !check.stalled).count();
            if fresh >= self.rules.max_parallel_checks.max(1)
                || self.running.len() >= self.rules.max_checks_in_flight.max(1)
            {
                break;
            }
            let Some(at) = self.next_waiting() else {
                break;
            };
            let Some((index, url)) = self.waiting.remove(at) else {
                break;
            };
            let layer = self.candidates[index].sources[0];
            *self.started_per_layer.entry(layer).or_default() += 1;
            self.running.push(RunningCheck {
                index,
                stalls_at: now + self.rules.stall_after,
                stalled: false,
            });
            self.outputs.push_back(Output::Check {
                candidate: CandidateId(index),
                url,
            });
        }
    }

    /// Rule 5: the oldest waiting check of the layer with the fewest checks started.
    fn next_waiting(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (at, (index, _)) in self.waiting.iter().enumerate() {
            let layer = self.candidates[*index].sources[0];
            let started = self.started_per_layer.get(&layer).copied().unwrap_or(0);
            if best.is_none_or(|(_, fewest)| started < fewest) {
                best = Some((at, started));
            }
        }
        best.map(|(at, _)| at)
    }

    /// Seconds since the Unix epoch at `now`.
    fn now_secs(&self, now: Duration) -> u64 {
        (self.started_at_ms + now.as_millis() as u64) / 1000
    }

    /// Rule 12: takes revocations; withdraws the candidates they name.
    fn revoke(&mut self, now: Duration, revocations: Vec<Revocation>) {
        for r in revocations {
            let until = self.revoked.entry(r.server_id).or_insert(0);
            *until = (*until).max(r.expires);
        }
        let now_secs = self.now_secs(now);
        let now_ms = ms(now);
        let mut withdrawn = Vec::new();
        for (index, c) in self.candidates.iter_mut().enumerate() {
            if c.outcome == Some(Outcome::Revoked) {
                continue;
            }
            let Some(until) = c.revoked_until(&self.revoked, now_secs) else {
                continue;
            };
            let running = self.running.iter().any(|check| check.index == index);
            if running {
                // Judged when its check ends.
                continue;
            }
            c.outcome = Some(Outcome::Revoked);
            c.detail = format!("revoked by a signed revocation until {until} (unix seconds)");
            if c.checked_ms.is_none() {
                c.checked_ms = Some(now_ms);
            }
            withdrawn.push(index);
            self.outputs
                .push_back(Output::Event(Event::CandidateChecked(c.report())));
        }
        self.waiting.retain(|(index, _)| !withdrawn.contains(index));
    }

    /// Rules 6 and 11: records a check's result, judged on its identity.
    fn checked(&mut self, now: Duration, index: usize, result: CheckResult) {
        let Some(at) = self.running.iter().position(|check| check.index == index) else {
            return;
        };
        self.running.swap_remove(at);
        let now_ms = ms(now);
        let now_secs = self.now_secs(now);
        let Some(c) = self.candidates.get_mut(index) else {
            return;
        };
        c.check = Some(result);
        c.judge(&self.revoked, now_secs);
        c.checked_ms = Some(now_ms);
        let usable = c.usable();
        let report = c.report();
        let candidate = c.candidate();
        self.outputs
            .push_back(Output::Event(Event::CandidateChecked(report)));
        if usable {
            if candidate.verified && self.first_verified_ms.is_none() {
                self.first_verified_ms = Some(now_ms);
            }
            if self.first_usable_ms.is_none() {
                self.first_usable_ms = Some(now_ms);
            }
            self.outputs
                .push_back(Output::Event(Event::Usable(candidate)));
        }
        self.start_checks(now);
    }

    /// Rule 9: moves on once every layer ended and every check is done.
    fn settle(&mut self, now: Duration) {
        if self.phase != Phase::Running
            || !self.running.is_empty()
            || !self.waiting.is_empty()
            || self.layers.iter().any(|l| !l.finished())
        {
            return;
        }
        if self.rules.remember {
            self.phase = Phase::Remembering;
            let checked = self
                .candidates
                .iter()
                .filter(|c| c.check.is_some())
                .map(|c| CheckedServer {
                    url: c.url.clone(),
                    verified: c.signed,
                    server_id: c.server_id.clone(),
                    rtt_ms: c.check.as_ref().and_then(|p| p.rtt_ms),
                    answered: c.usable(),
                })
                .collect();
            self.outputs.push_back(Output::Remember(checked));
        } else {
            self.finish(now);
        }
    }

    fn finish(&mut self, now: Duration) {
        self.phase = Phase::Finished;
        let report = self.report(now);
        self.outputs
            .push_back(Output::Event(Event::Finished(Box::new(report))));
    }

    fn best(&self, now: Duration) -> Option<Candidate> {
        let now_ms = self.started_at_ms + now.as_millis() as u64;
        self.candidates
            .iter()
            .filter(|c| c.usable())
            .map(CandidateState::candidate)
            .min_by(|a, b| {
                rank_key(a, now_ms)
                    .partial_cmp(&rank_key(b, now_ms))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    }

    /// Rule 10.
    fn layer_report(&self, state: &LayerState, now: Duration) -> LayerReport {
        let running = !state.finished() && state.started();
        let mut outcome = Outcome::summarise(state.sources.iter().map(|s| s.outcome));
        if running && outcome != Outcome::Ok {
            outcome = Outcome::Pending;
        }
        let detail = if outcome == Outcome::Pending {
            "still running".to_string()
        } else if outcome == Outcome::Ok || outcome == Outcome::NotConfigured {
            String::new()
        } else {
            state
                .sources
                .iter()
                .find(|s| s.outcome == outcome)
                .map(|s| format!("{}: {}", s.source, s.detail))
                .unwrap_or_else(|| "not configured".into())
        };
        let mut urls: Vec<&String> = state.sources.iter().flat_map(|s| &s.candidates).collect();
        urls.sort();
        urls.dedup();
        let mut sources = state.sources.clone();
        if running {
            // A snapshot (`discover --first`) names the sources not heard from yet.
            sources.extend(state.silent.iter().map(|source| SourceReport {
                source: source.clone(),
                outcome: Outcome::Pending,
                detail: "still running".into(),
                candidates: Vec::new(),
                refused: Vec::new(),
                started_ms: state.started_ms.unwrap_or(0.0),
                finished_ms: ms(now),
            }));
        }
        LayerReport {
            layer: state.layer,
            outcome,
            detail,
            sources,
            candidates: urls.len(),
            started_ms: state.started_ms.unwrap_or(0.0),
            finished_ms: state.finished_ms.unwrap_or_else(|| ms(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED_AT_MS: u64 = 1_790_000_000_000;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn rules() -> Rules {
        Rules {
            allow_private: false,
            max_parallel_checks: 2,
            stall_after: at(10_000),
            max_checks_in_flight: 4,
            revoked: Vec::new(),
            stagger: at(50),
            layer_timeout: at(1000),
            registry_sources: vec!["r1".into(), "r2".into()],
            doh_sources: vec!["d1".into()],
            remember: false,
        }
    }

    /// A run with every layer started (at 0, DoH at 50).
    fn started(rules: Rules) -> DiscoveryState {
        let mut state = DiscoveryState::new(rules, STARTED_AT_MS);
        state.handle_timeout(at(0));
        state.handle_timeout(at(50));
        drain(&mut state);
        state
    }

    fn drain(state: &mut DiscoveryState) -> Vec<Output> {
        std::iter::from_fn(|| state.poll_output()).collect()
    }

    fn layers_started(outputs: &[Output]) -> Vec<Layer> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::StartLayer(layer) => Some(*layer),
                _ => None,
            })
            .collect()
    }

    fn checks(outputs: &[Output]) -> Vec<(CandidateId, String)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Check { candidate, url } => Some((*candidate, url.to_string())),
                _ => None,
            })
            .collect()
    }

    fn events(outputs: Vec<Output>) -> Vec<Event> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::Event(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    fn finished_layers(outputs: Vec<Output>) -> Vec<LayerReport> {
        events(outputs)
            .into_iter()
            .filter_map(|e| match e {
                Event::LayerFinished(report) => Some(report),
                _ => None,
            })
            .collect()
    }

    fn source(layer: Layer, name: &str, outcome: Outcome, found: Vec<Found>) -> Input {
        Input::Source {
            layer,
            report: source_report(name.into(), outcome, String::new(), &found, 0.0, 0.0),
            found,
        }
    }

    fn signed(url: &str) -> Found {
        Found {
            url: url.into(),
            verified: true,
            server_id: Some(format!("ed25519:{url}")),
            last_ok_ms: None,
        }
    }

    /// A check of the server at `url` that answered and proved the key
    /// [`signed`] names for it.
    fn answered(url: &str, rtt_ms: f64) -> CheckResult {
        proved_by(&format!("ed25519:{url}"), url, rtt_ms)
    }

    /// A check that answered with a valid proof by `server_id` for `endpoint`.
    fn proved_by(server_id: &str, endpoint: &str, rtt_ms: f64) -> CheckResult {
        CheckResult {
            outcome: Outcome::Ok,
            detail: String::new(),
            rtt_ms: Some(rtt_ms),
            announced_server_id: Some(server_id.into()),
            identity: IdentityCheck::Proof {
                server_id: server_id.into(),
                endpoint: endpoint.into(),
            },
        }
    }

    /// A check that answered `ping` but not the challenge (Zajel's server).
    fn unproven(rtt_ms: f64) -> CheckResult {
        CheckResult {
            outcome: Outcome::Ok,
            detail: String::new(),
            rtt_ms: Some(rtt_ms),
            announced_server_id: None,
            identity: IdentityCheck::Unanswered("Unknown message type: identity_challenge".into()),
        }
    }

    fn refused() -> CheckResult {
        CheckResult {
            outcome: Outcome::Refused,
            detail: "connection refused".into(),
            rtt_ms: None,
            announced_server_id: None,
            identity: IdentityCheck::Unanswered("no connection".into()),
        }
    }

    fn end_local_layers(state: &mut DiscoveryState, now: Duration) {
        for layer in [Layer::Cache, Layer::Referral, Layer::Qr, Layer::Manual] {
            state.handle(now, Input::LayerDone(layer));
        }
    }

    #[test]
    fn a_verified_txt_entry_is_found_signed_with_its_server_id() {
        let found = Found::from(TxtEntry {
            server_id: "ed25519:k".into(),
            endpoint: "wss://relay.example/ws".into(),
            region: "eu".into(),
            expires: 1,
        });
        assert_eq!(
            found,
            Found {
                url: "wss://relay.example/ws".into(),
                verified: true,
                server_id: Some("ed25519:k".into()),
                last_ok_ms: None,
            }
        );
    }

    #[test]
    fn doh_sources_are_named_resolver_by_resolver() {
        let resolvers = ["https://a.example/dns-query", "https://b.example/q"];
        let domains = ["Example.org".to_string(), "zajel.example".to_string()];
        let named: Vec<String> = doh_queries(&resolvers, &domains)
            .map(|(resolver, _, name)| doh_source(resolver, &name))
            .collect();
        assert_eq!(
            named,
            [
                "https://a.example/dns-query → _zajel.example.org.",
                "https://a.example/dns-query → _zajel.zajel.example.",
                "https://b.example/q → _zajel.example.org.",
                "https://b.example/q → _zajel.zajel.example.",
            ]
        );
        assert_eq!(doh_queries(&resolvers, &[]).count(), 0);
    }

    #[test]
    fn rule_1_local_layers_and_the_registry_start_at_once_and_doh_after_the_stagger() {
        let mut state = DiscoveryState::new(rules(), STARTED_AT_MS);
        assert!(
            drain(&mut state).is_empty(),
            "nothing before the first timer"
        );
        assert_eq!(state.poll_timeout(), Some(at(0)));
        state.handle_timeout(at(0));
        assert_eq!(
            layers_started(&drain(&mut state)),
            [
                Layer::Registry,
                Layer::Cache,
                Layer::Referral,
                Layer::Qr,
                Layer::Manual
            ]
        );
        assert_eq!(state.poll_timeout(), Some(at(50)));
        state.handle_timeout(at(49));
        assert!(layers_started(&drain(&mut state)).is_empty());
        state.handle_timeout(at(50));
        assert_eq!(layers_started(&drain(&mut state)), [Layer::Doh]);
        // Next: the registry's timeout (started at 0), then DoH's.
        assert_eq!(state.poll_timeout(), Some(at(1000)));
    }

    #[test]
    fn rule_2_a_network_layer_ends_when_every_source_answered() {
        let mut state = started(rules());
        state.handle(
            at(10),
            source(Layer::Registry, "r1", Outcome::Refused, vec![]),
        );
        assert!(finished_layers(drain(&mut state)).is_empty());
        state.handle(
            at(20),
            source(Layer::Registry, "r2", Outcome::Empty, vec![]),
        );
        let finished = finished_layers(drain(&mut state));
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].layer, Layer::Registry);
        assert_eq!(finished[0].outcome, Outcome::Refused);
        assert_eq!(finished[0].finished_ms, 20.0);
    }

    #[test]
    fn rule_2_silent_sources_time_out_at_the_layer_timeout_and_late_answers_are_ignored() {
        let mut state = started(rules());
        state.handle(
            at(100),
            source(Layer::Registry, "r1", Outcome::Empty, vec![]),
        );
        state.handle_timeout(at(999));
        assert!(finished_layers(drain(&mut state)).is_empty());
        state.handle_timeout(at(1000));
        let finished = finished_layers(drain(&mut state));
        assert_eq!(finished.len(), 1);
        let registry = &finished[0];
        assert_eq!(registry.layer, Layer::Registry);
        assert_eq!(registry.outcome, Outcome::TimedOut);
        assert_eq!(registry.sources[1].source, "r2");
        assert_eq!(registry.sources[1].outcome, Outcome::TimedOut);
        assert_eq!(registry.sources[1].detail, "no answer within 1000 ms");
        // r2 answers too late: not in the report, its server not admitted.
        state.handle(
            at(1200),
            source(
                Layer::Registry,
                "r2",
                Outcome::Ok,
                vec![signed("wss://late.example")],
            ),
        );
        assert!(drain(&mut state).is_empty());
        let report = state.report(at(1200));
        assert_eq!(report.layer(Layer::Registry).unwrap().sources.len(), 2);
        assert!(report.candidates.is_empty());
        // DoH started at 50: its timeout is at 1050.
        assert_eq!(state.poll_timeout(), Some(at(1050)));
    }

    #[test]
    fn rule_2_a_network_layer_without_sources_ends_at_its_start_not_configured() {
        let mut state = DiscoveryState::new(
            Rules {
                registry_sources: Vec::new(),
                ..rules()
            },
            STARTED_AT_MS,
        );
        state.handle_timeout(at(0));
        let outputs = drain(&mut state);
        assert!(!layers_started(&outputs).contains(&Layer::Registry));
        let finished = finished_layers(outputs);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].layer, Layer::Registry);
        assert_eq!(finished[0].outcome, Outcome::NotConfigured);
    }

    #[test]
    fn rule_3_the_same_server_named_twice_is_one_candidate_checked_once() {
        let mut state = started(rules());
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![Found::unverified("wss://a.example:443")],
            ),
        );
        let first = checks(&drain(&mut state));
        assert_eq!(first, [(CandidateId(0), "wss://a.example/".to_string())]);
        state.handle(
            at(6),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://a.example")],
            ),
        );
        state.handle(
            at(7),
            source(
                Layer::Cache,
                "cache",
                Outcome::Ok,
                vec![Found {
                    url: "wss://A.example/".into(),
                    verified: false,
                    server_id: Some("ed25519:other".into()),
                    last_ok_ms: Some(STARTED_AT_MS - 1000),
                }],
            ),
        );
        assert!(checks(&drain(&mut state)).is_empty(), "checked once");
        let report = state.report(at(8));
        assert_eq!(report.candidates.len(), 1);
        let c = &report.candidates[0];
        assert_eq!(c.sources, [Layer::Manual, Layer::Registry, Layer::Cache]);
        assert!(c.signed);
        assert!(!c.verified, "not verified before it proves its identity");
        assert_eq!(c.server_id.as_deref(), Some("ed25519:wss://a.example"));
    }

    #[test]
    fn rule_4_invalid_and_private_urls_are_refused_without_a_check() {
        let urls = vec![
            Found::unverified("ftp://x.example"),
            Found::unverified("ws://127.0.0.1:9/"),
            Found::unverified("wss://localhost/"),
            Found::unverified("ws://10.0.0.1/"),
        ];
        let mut state = started(rules());
        state.handle(
            at(5),
            source(Layer::Manual, "typed", Outcome::Ok, urls.clone()),
        );
        let outputs = drain(&mut state);
        assert!(checks(&outputs).is_empty());
        let report = state.report(at(5));
        assert_eq!(report.candidates[0].outcome, Outcome::Invalid);
        for c in &report.candidates[1..] {
            assert_eq!(c.outcome, Outcome::PrivateAddress, "{c:?}");
            assert_eq!(c.checked_ms, Some(5.0));
        }
        // Allowed: checked (two at once, the rest wait).
        let mut state = started(Rules {
            allow_private: true,
            max_parallel_checks: 8,
            ..rules()
        });
        state.handle(at(5), source(Layer::Manual, "typed", Outcome::Ok, urls));
        assert_eq!(checks(&drain(&mut state)).len(), 3);
    }

    #[test]
    fn rule_5_at_most_the_limit_of_checks_run_at_once() {
        let mut state = started(rules());
        let found = ["wss://a.example", "wss://b.example", "wss://c.example"]
            .map(Found::unverified)
            .to_vec();
        state.handle(at(5), source(Layer::Manual, "typed", Outcome::Ok, found));
        let first = checks(&drain(&mut state));
        assert_eq!(first.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), [0, 1]);
        state.handle(
            at(9),
            Input::Checked {
                candidate: CandidateId(1),
                result: refused(),
            },
        );
        assert_eq!(
            checks(&drain(&mut state)),
            [(CandidateId(2), "wss://c.example/".to_string())]
        );
    }

    #[test]
    fn rule_6_an_answer_makes_a_candidate_usable_and_a_later_signed_source_verifies_it() {
        let mut state = started(rules());
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![
                    Found::unverified("wss://a.example"),
                    Found::unverified("wss://b.example"),
                ],
            ),
        );
        drain(&mut state);
        state.handle(
            at(30),
            Input::Checked {
                candidate: CandidateId(1),
                result: refused(),
            },
        );
        let outputs = events(drain(&mut state));
        assert!(
            matches!(&outputs[..], [Event::CandidateChecked(c)] if c.outcome == Outcome::Refused)
        );
        state.handle(
            at(40),
            Input::Checked {
                candidate: CandidateId(0),
                result: answered("wss://a.example", 12.0),
            },
        );
        let outputs = events(drain(&mut state));
        assert!(
            matches!(&outputs[..], [Event::CandidateChecked(_), Event::Usable(c)] if !c.verified && c.rtt_ms == Some(12.0))
        );
        let report = state.report(at(40));
        assert_eq!(report.first_usable_ms, Some(40.0));
        assert_eq!(report.first_verified_ms, None);
        assert_eq!(report.verdict, Verdict::UnverifiedOnly);
        state.handle(
            at(70),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://a.example")],
            ),
        );
        let outputs = events(drain(&mut state));
        assert!(matches!(&outputs[..], [Event::Usable(c)] if c.verified));
        let report = state.report(at(70));
        assert_eq!(report.first_verified_ms, Some(70.0));
        assert_eq!(report.verdict, Verdict::Verified);
    }

    #[test]
    fn rule_7_verified_servers_rank_before_recent_ones_before_faster_ones() {
        let candidate = |verified, rtt, last_ok_ms| Candidate {
            url: String::new(),
            sources: Vec::new(),
            verified,
            signed: verified,
            server_id: None,
            proven_server_id: Some("ed25519:k".into()),
            rtt_ms: Some(rtt),
            last_ok_ms,
        };
        let now = STARTED_AT_MS;
        assert!(
            rank_key(&candidate(true, 90.0, None), now)
                < rank_key(&candidate(false, 1.0, None), now)
        );
        assert!(
            rank_key(&candidate(true, 1.0, None), now) < rank_key(&candidate(true, 2.0, None), now)
        );
        let recent = candidate(true, 50.0, Some(now - RECENT_MS + 1));
        let old = candidate(true, 50.0, Some(now - RECENT_MS));
        assert!(rank_key(&recent, now) < rank_key(&candidate(true, 1.0, None), now));
        assert!(rank_key(&old, now) > rank_key(&candidate(true, 1.0, None), now));
        // The report's best follows the ranking.
        let mut state = started(rules());
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![Found::unverified("wss://fast.example")],
            ),
        );
        state.handle(
            at(5),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://slow.example")],
            ),
        );
        drain(&mut state);
        for (id, url, rtt) in [
            (0, "wss://fast.example", 1.0),
            (1, "wss://slow.example", 80.0),
        ] {
            state.handle(
                at(50),
                Input::Checked {
                    candidate: CandidateId(id),
                    result: answered(url, rtt),
                },
            );
        }
        let best = state.report(at(50)).best.unwrap();
        assert_eq!(best.url, "wss://slow.example/");
    }

    #[test]
    fn rule_8_a_verified_server_is_handed_over_at_once_otherwise_the_best_at_the_end() {
        let unverified = Candidate {
            url: "wss://u.example/".into(),
            sources: vec![Layer::Manual],
            verified: false,
            signed: false,
            server_id: None,
            proven_server_id: None,
            rtt_ms: Some(1.0),
            last_ok_ms: None,
        };
        let verified = Candidate {
            verified: true,
            ..unverified.clone()
        };
        assert_eq!(handover(&Event::Usable(unverified.clone())), None);
        assert_eq!(
            handover(&Event::Usable(verified.clone())),
            Some(Handover::Verified(verified))
        );
        let mut report = started(rules()).report(at(1));
        report.best = Some(unverified.clone());
        assert_eq!(
            handover(&Event::Finished(Box::new(report.clone()))),
            Some(Handover::RunOver(Some(unverified)))
        );
        let layer = report.layers[0].clone();
        assert_eq!(handover(&Event::LayerFinished(layer)), None);
    }

    #[test]
    fn rule_9_the_run_ends_after_every_layer_and_check_and_the_cache_write() {
        let mut state = started(Rules {
            remember: true,
            ..rules()
        });
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![
                    Found::unverified("wss://a.example"),
                    Found::unverified("wss://b.example"),
                ],
            ),
        );
        end_local_layers(&mut state, at(6));
        state.handle(at(7), source(Layer::Registry, "r1", Outcome::Empty, vec![]));
        state.handle(at(7), source(Layer::Registry, "r2", Outcome::Empty, vec![]));
        state.handle(at(8), source(Layer::Doh, "d1", Outcome::Empty, vec![]));
        state.handle(
            at(9),
            Input::Checked {
                candidate: CandidateId(0),
                result: answered("wss://a.example", 3.0),
            },
        );
        let outputs = drain(&mut state);
        assert!(!outputs.iter().any(|o| matches!(o, Output::Remember(_))));
        assert!(!state.report(at(9)).complete);
        state.handle(
            at(10),
            Input::Checked {
                candidate: CandidateId(1),
                result: refused(),
            },
        );
        let outputs = drain(&mut state);
        let remembered: Vec<&Vec<CheckedServer>> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Remember(list) => Some(list),
                _ => None,
            })
            .collect();
        assert_eq!(remembered.len(), 1);
        let answered_flags: Vec<(&str, bool)> = remembered[0]
            .iter()
            .map(|s| (s.url.as_str(), s.answered))
            .collect();
        assert_eq!(
            answered_flags,
            [("wss://a.example/", true), ("wss://b.example/", false)]
        );
        assert!(!state.is_finished(), "waits for the cache write");
        assert_eq!(state.poll_timeout(), None);
        state.handle(at(12), Input::Remembered(Err("disk full".into())));
        let finished: Vec<Report> = events(drain(&mut state))
            .into_iter()
            .filter_map(|e| match e {
                Event::Finished(report) => Some(*report),
                _ => None,
            })
            .collect();
        assert_eq!(finished.len(), 1);
        assert!(finished[0].complete);
        assert_eq!(finished[0].warnings, ["cache not written: disk full"]);
        assert!(state.is_finished());
    }

    #[test]
    fn rule_9_without_a_cache_the_run_finishes_when_the_last_layer_times_out() {
        let mut state = started(rules());
        end_local_layers(&mut state, at(1));
        state.handle_timeout(at(1000));
        assert!(!state.is_finished(), "DoH still running");
        state.handle_timeout(at(1050));
        let outputs = drain(&mut state);
        assert!(!outputs.iter().any(|o| matches!(o, Output::Remember(_))));
        assert!(
            matches!(events(outputs).last(), Some(Event::Finished(r)) if r.complete && r.verdict == Verdict::Nothing)
        );
        assert!(state.is_finished());
    }

    #[test]
    fn rule_10_a_running_layer_is_pending_unless_a_source_was_ok() {
        let mut state = started(rules());
        state.handle(
            at(5),
            source(Layer::Registry, "r1", Outcome::Refused, vec![]),
        );
        let report = state.report(at(6));
        let registry = report.layer(Layer::Registry).unwrap();
        assert_eq!(registry.outcome, Outcome::Pending);
        assert_eq!(registry.detail, "still running");
        assert_eq!(registry.finished_ms, 6.0);
        state.handle(at(7), source(Layer::Doh, "d1", Outcome::Ok, vec![]));
        let report = state.report(at(8));
        assert_eq!(report.layer(Layer::Doh).unwrap().outcome, Outcome::Ok);
        // Ended: the most telling source, with its words.
        state.handle(
            at(9),
            source(Layer::Registry, "r2", Outcome::TimedOut, vec![]),
        );
        let registry = state.report(at(10)).layer(Layer::Registry).unwrap().clone();
        assert_eq!(registry.outcome, Outcome::Refused);
        assert_eq!(registry.detail, "r1: ");
        assert!(!state.report(at(10)).complete);
    }

    #[test]
    fn rule_7_proven_servers_rank_before_unproven_ones_even_slower() {
        let mut state = started(rules());
        state.handle(
            at(5),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://zajel.example"), signed("wss://lite.example")],
            ),
        );
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![Found::unverified("wss://typed.example")],
            ),
        );
        assert_eq!(checks(&drain(&mut state)).len(), 2);
        // Zajel's server answers ping fast but cannot prove who it is.
        state.handle(
            at(20),
            Input::Checked {
                candidate: CandidateId(0),
                result: unproven(1.0),
            },
        );
        let outputs = events(drain(&mut state));
        assert!(
            matches!(&outputs[..], [Event::CandidateChecked(c), Event::Usable(u)]
                if c.outcome == Outcome::IdentityUnproven && c.signed && !c.verified && !u.verified),
            "{outputs:?}"
        );
        assert!(handover(&outputs[1]).is_none(), "unproven: not handed over");
        let report = state.report(at(20));
        assert_eq!(report.verdict, Verdict::UnverifiedOnly);
        assert_eq!(report.first_verified_ms, None);
        // An unsigned server that proves some key ranks before it.
        state.handle(
            at(25),
            Input::Checked {
                candidate: CandidateId(2),
                result: proved_by("ed25519:typed", "wss://typed.example", 30.0),
            },
        );
        let typed = state.report(at(25));
        assert_eq!(typed.best.as_ref().unwrap().url, "wss://typed.example/");
        let checked = typed.candidate("wss://typed.example/").unwrap();
        assert_eq!(checked.outcome, Outcome::Ok);
        assert_eq!(checked.proven_server_id.as_deref(), Some("ed25519:typed"));
        assert!(!checked.verified, "learnt, not proven against anything");
        // The relay that proves the signed key is best, though slowest.
        state.handle(
            at(40),
            Input::Checked {
                candidate: CandidateId(1),
                result: answered("wss://lite.example", 90.0),
            },
        );
        let outputs = events(drain(&mut state));
        assert!(
            matches!(outputs.last(), Some(e) if matches!(handover(e), Some(Handover::Verified(c)) if c.url == "wss://lite.example/")),
            "{outputs:?}"
        );
        let report = state.report(at(40));
        assert_eq!(report.best.unwrap().url, "wss://lite.example/");
        assert_eq!(report.verdict, Verdict::Verified);
        assert_eq!(report.first_verified_ms, Some(40.0));
        let ranked = |url: &str| {
            let c = state.candidates[state.index[url]].candidate();
            rank_key(&c, STARTED_AT_MS)
        };
        assert!(ranked("wss://lite.example/") < ranked("wss://typed.example/"));
        assert!(ranked("wss://typed.example/") < ranked("wss://zajel.example/"));
    }

    #[test]
    fn rule_11_a_server_that_is_not_the_one_signed_is_a_mismatch_and_not_used() {
        let mut state = started(Rules {
            max_parallel_checks: 8,
            ..rules()
        });
        let urls = [
            "wss://other-key.example",
            "wss://proxy.example",
            "wss://replay.example",
            "wss://announces.example",
        ];
        state.handle(
            at(5),
            source(
                Layer::Doh,
                "d1",
                Outcome::Ok,
                urls.iter().map(|u| signed(u)).collect(),
            ),
        );
        assert_eq!(checks(&drain(&mut state)).len(), 4);
        let results = [
            // Proves, but with its own key.
            proved_by("ed25519:attacker", "wss://other-key.example", 1.0),
            // Passes on the real server's proof, which names the real endpoint.
            proved_by("ed25519:wss://proxy.example", "wss://real.example", 1.0),
            // An old proof for another nonce.
            CheckResult {
                identity: IdentityCheck::Invalid(
                    "the proof answers another nonce (a replayed proof)".into(),
                ),
                ..answered("wss://replay.example", 1.0)
            },
            // server_info names another server than the signed record.
            CheckResult {
                announced_server_id: Some("ed25519:someone-else".into()),
                ..unproven(1.0)
            },
        ];
        for (id, result) in results.into_iter().enumerate() {
            state.handle(
                at(10),
                Input::Checked {
                    candidate: CandidateId(id),
                    result,
                },
            );
        }
        let outputs = events(drain(&mut state));
        assert!(
            !outputs.iter().any(|e| matches!(e, Event::Usable(_))),
            "{outputs:?}"
        );
        let report = state.report(at(10));
        for c in &report.candidates {
            assert_eq!(c.outcome, Outcome::IdentityMismatch, "{c:?}");
            assert!(c.signed && !c.verified, "{c:?}");
        }
        assert!(report.candidates[1].detail.contains("wss://real.example"));
        assert_eq!(report.best, None);
        assert_eq!(report.verdict, Verdict::Nothing);
    }

    #[test]
    fn rule_11_a_signed_source_naming_a_checked_server_judges_it_again() {
        let mut state = started(rules());
        state.handle(
            at(5),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![
                    Found::unverified("wss://a.example"),
                    Found::unverified("wss://b.example"),
                ],
            ),
        );
        drain(&mut state);
        for (id, server_id, url) in [
            (0, "ed25519:wss://a.example", "wss://a.example"),
            (1, "ed25519:impostor", "wss://b.example"),
        ] {
            state.handle(
                at(10),
                Input::Checked {
                    candidate: CandidateId(id),
                    result: proved_by(server_id, url, 5.0),
                },
            );
        }
        drain(&mut state);
        // The registry names both, with their keys: a is now verified, b is
        // not the server the registry names.
        state.handle(
            at(30),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://a.example"), signed("wss://b.example")],
            ),
        );
        let outputs = events(drain(&mut state));
        assert!(
            matches!(&outputs[..], [Event::Usable(a), Event::CandidateChecked(b)]
                if a.verified && a.url == "wss://a.example/"
                && b.outcome == Outcome::IdentityMismatch && b.url == "wss://b.example/"),
            "{outputs:?}"
        );
        assert_eq!(state.report(at(30)).best.unwrap().url, "wss://a.example/");
    }

    #[test]
    fn rule_3_a_signed_sources_server_id_wins_over_an_unsigned_ones() {
        let mut state = started(rules());
        // An unsigned cache entry names an attacker's key first.
        state.handle(
            at(5),
            source(
                Layer::Cache,
                "cache",
                Outcome::Ok,
                vec![Found {
                    url: "wss://a.example".into(),
                    verified: false,
                    server_id: Some("ed25519:attacker".into()),
                    last_ok_ms: None,
                }],
            ),
        );
        state.handle(
            at(6),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://a.example")],
            ),
        );
        drain(&mut state);
        // A server proving the attacker's key is not the one the registry signed.
        state.handle(
            at(10),
            Input::Checked {
                candidate: CandidateId(0),
                result: proved_by("ed25519:attacker", "wss://a.example", 2.0),
            },
        );
        let c = &state.report(at(10)).candidates[0];
        assert_eq!(c.server_id.as_deref(), Some("ed25519:wss://a.example"));
        assert_eq!(c.outcome, Outcome::IdentityMismatch, "{c:?}");
    }

    #[test]
    fn local_sources_read_links_and_typed_urls() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let code = zajel_wire::pairing::PairingCode::parse("ABC234").unwrap();
        let link = ShareLink::new(code, &["wss://a.example/ws".into()], Some(&key))
            .unwrap()
            .to_uri();
        let (outcome, detail, found) = share_link_source(&link, &[key]);
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(found, [Found::unverified("wss://a.example/ws")]);
        assert!(
            detail.ends_with("registry key matches the pinned key"),
            "{detail}"
        );
        let (_, detail, _) = share_link_source(&link, &[]);
        assert!(detail.ends_with("registry key differs from the pinned keys"));
        assert_eq!(share_link_source("zajel://ABC234", &[]).0, Outcome::Empty);
        assert_eq!(share_link_source("nonsense", &[]).0, Outcome::Invalid);
        assert_eq!(
            manual_source(" wss://b.example ").2,
            [Found::unverified("wss://b.example")]
        );
        let (outcome, detail, found) = manual_source("ftp://b.example");
        assert_eq!(outcome, Outcome::Invalid);
        assert!(detail.starts_with("not a server URL"));
        assert!(found.is_empty());
    }
    /// Rule 5 under junk: `dead` entries that accept and never answer come
    /// first in a signed list, the good server last; the checks run on the
    /// fake clock, the good one answering `rtt` after its check starts. The
    /// time of the first verified server.
    fn first_verified_behind(dead: usize, rules: Rules, rtt: u64) -> Option<f64> {
        let mut state = started(rules);
        let mut found: Vec<Found> = (0..dead)
            .map(|i| signed(&format!("wss://dead{i}.example")))
            .collect();
        found.push(signed("wss://good.example"));
        state.handle(at(60), source(Layer::Registry, "r1", Outcome::Ok, found));
        let mut now = 60;
        let mut good_answers_at = None;
        for _ in 0..100_000 {
            for output in drain(&mut state) {
                match output {
                    Output::Check { candidate, url } if url.as_str() == "wss://good.example/" => {
                        good_answers_at = Some((candidate, now + rtt));
                    }
                    Output::Event(Event::Usable(c)) if c.verified => {
                        return state.report(at(now)).first_verified_ms;
                    }
                    _ => {}
                }
            }
            let next = [
                state.poll_timeout().map(|t| t.as_millis() as u64),
                good_answers_at.map(|(_, t)| t),
            ]
            .into_iter()
            .flatten()
            .min()?;
            now = next.max(now);
            if let Some((candidate, _)) = good_answers_at.filter(|&(_, t)| t <= now) {
                good_answers_at = None;
                state.handle(
                    at(now),
                    Input::Checked {
                        candidate,
                        result: answered("wss://good.example", rtt as f64),
                    },
                );
            } else {
                state.handle_timeout(at(now));
            }
        }
        None
    }

    #[test]
    fn rule_5_dead_entries_cannot_push_the_first_verified_server_back() {
        let junk_rules = Rules {
            max_parallel_checks: 16,
            stall_after: at(50),
            max_checks_in_flight: 512,
            layer_timeout: at(3000),
            ..rules()
        };
        let alone = first_verified_behind(0, junk_rules.clone(), 40).unwrap();
        assert_eq!(alone, 100.0);
        // 300 dead entries first: 16 fresh checks per 50 ms reach the last
        // entry within a second (without stalls: 19 rounds of a 3 s timeout).
        let behind = first_verified_behind(300, junk_rules.clone(), 40).unwrap();
        assert!(behind <= 1100.0, "{behind}");
        // The in-flight cap holds: with room for 64 checks, the good one
        // waits for dead checks to end (they never do here).
        let capped = Rules {
            max_checks_in_flight: 64,
            ..junk_rules
        };
        assert_eq!(first_verified_behind(300, capped, 40), None);
    }

    #[test]
    fn rule_5_a_stalled_check_frees_its_slot_and_the_in_flight_cap_still_holds() {
        let mut state = started(Rules {
            max_parallel_checks: 2,
            stall_after: at(100),
            max_checks_in_flight: 3,
            ..rules()
        });
        let found = [
            "wss://a.example",
            "wss://b.example",
            "wss://c.example",
            "wss://d.example",
        ]
        .map(Found::unverified)
        .to_vec();
        state.handle(at(5), source(Layer::Manual, "typed", Outcome::Ok, found));
        assert_eq!(checks(&drain(&mut state)).len(), 2);
        assert_eq!(state.poll_timeout(), Some(at(105)));
        state.handle_timeout(at(104));
        assert!(checks(&drain(&mut state)).is_empty());
        state.handle_timeout(at(105));
        // Both stalled; only one more fits under the in-flight cap of 3.
        assert_eq!(
            checks(&drain(&mut state)),
            [(CandidateId(2), "wss://c.example/".to_string())]
        );
        state.handle_timeout(at(500));
        assert!(checks(&drain(&mut state)).is_empty());
        state.handle(
            at(501),
            Input::Checked {
                candidate: CandidateId(0),
                result: refused(),
            },
        );
        assert_eq!(
            checks(&drain(&mut state)),
            [(CandidateId(3), "wss://d.example/".to_string())]
        );
    }

    #[test]
    fn rule_5_a_flooded_layer_does_not_starve_the_others() {
        let mut state = started(Rules {
            max_parallel_checks: 2,
            max_checks_in_flight: 2,
            ..rules()
        });
        let flood: Vec<Found> = (0..10)
            .map(|i| signed(&format!("wss://junk{i}.example")))
            .collect();
        state.handle(at(5), source(Layer::Registry, "r1", Outcome::Ok, flood));
        assert_eq!(checks(&drain(&mut state)).len(), 2);
        state.handle(
            at(6),
            source(
                Layer::Doh,
                "d1",
                Outcome::Ok,
                vec![signed("wss://genuine.example")],
            ),
        );
        state.handle(
            at(7),
            Input::Checked {
                candidate: CandidateId(0),
                result: refused(),
            },
        );
        assert_eq!(
            checks(&drain(&mut state)),
            [(CandidateId(10), "wss://genuine.example/".to_string())]
        );
    }

    fn revocation(url: &str, expires_secs: u64) -> Revocation {
        Revocation {
            server_id: format!("ed25519:{url}"),
            expires: expires_secs,
        }
    }

    #[test]
    fn rule_12_a_revoked_server_is_never_checked_nor_used_until_the_revocation_expires() {
        let now_secs = STARTED_AT_MS / 1000;
        // From the cache's revocations: refused at admission, no check.
        let mut state = started(Rules {
            revoked: vec![revocation("wss://retired.example", now_secs + 3600)],
            ..rules()
        });
        state.handle(
            at(5),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![
                    signed("wss://retired.example"),
                    signed("wss://live.example"),
                ],
            ),
        );
        let outputs = drain(&mut state);
        assert_eq!(
            checks(&outputs),
            [(CandidateId(1), "wss://live.example/".to_string())]
        );
        let report = state.report(at(5));
        assert_eq!(report.candidates[0].outcome, Outcome::Revoked);
        assert!(report.candidates[0]
            .detail
            .contains("revoked by a signed revocation"));
        // An expired revocation no longer holds.
        let mut state = started(Rules {
            revoked: vec![revocation("wss://retired.example", now_secs)],
            ..rules()
        });
        state.handle(
            at(5),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![signed("wss://retired.example")],
            ),
        );
        assert_eq!(checks(&drain(&mut state)).len(), 1);
    }

    #[test]
    fn rule_12_a_revocation_arriving_later_withdraws_a_checked_or_waiting_candidate() {
        let now_secs = STARTED_AT_MS / 1000;
        let mut state = started(Rules {
            max_parallel_checks: 1,
            max_checks_in_flight: 1,
            ..rules()
        });
        state.handle(
            at(5),
            source(
                Layer::Registry,
                "r1",
                Outcome::Ok,
                vec![
                    signed("wss://retired.example"),
                    signed("wss://other.example"),
                ],
            ),
        );
        drain(&mut state);
        state.handle(
            at(20),
            Input::Checked {
                candidate: CandidateId(0),
                result: answered("wss://retired.example", 15.0),
            },
        );
        // other.example starts; retired.example is usable and verified.
        drain(&mut state);
        assert_eq!(
            state.report(at(20)).best.unwrap().url,
            "wss://retired.example/"
        );
        state.handle(
            at(30),
            Input::Revoked(vec![
                revocation("wss://retired.example", now_secs + 60),
                revocation("wss://other.example", now_secs + 60),
            ]),
        );
        let events = events(drain(&mut state));
        assert_eq!(events.len(), 1, "{events:?}");
        // other.example's check is running: judged when it ends.
        state.handle(
            at(40),
            Input::Checked {
                candidate: CandidateId(1),
                result: answered("wss://other.example", 10.0),
            },
        );
        let report = state.report(at(40));
        assert!(report.best.is_none(), "{:?}", report.best);
        assert!(report
            .candidates
            .iter()
            .all(|c| c.outcome == Outcome::Revoked));
        // A manual candidate that proves a revoked key is refused too.
        state.handle(
            at(41),
            source(
                Layer::Manual,
                "typed",
                Outcome::Ok,
                vec![Found::unverified("wss://retired2.example")],
            ),
        );
        drain(&mut state);
        state.handle(
            at(42),
            Input::Revoked(vec![revocation("wss://retired2.example", now_secs + 60)]),
        );
        state.handle(
            at(50),
            Input::Checked {
                candidate: CandidateId(2),
                result: answered("wss://retired2.example", 5.0),
            },
        );
        assert_eq!(state.report(at(50)).candidates[2].outcome, Outcome::Revoked);
    }
}
