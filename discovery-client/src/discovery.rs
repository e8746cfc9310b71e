//! The orchestrator: runs the six layers at once (network layers staggered
//! slightly, like happy eyeballs), merges and de-duplicates their candidates,
//! checks each with [`crate::probe`], streams [`Event`]s as things are known,
//! and ends with a [`Report`]. Servers that answer are written to the cache.
//!
//! `Discovery::new(config)?.run()` gives a [`Run`]: a stream of events; and
//! [`Discovery::best_within`] returns the first verified usable server as soon
//! as one answers (or the best usable one when time is up), while the rest of
//! the run finishes in the background (and still updates the cache).

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use url::Url;
use zajel_client_net::registry_http::RegistryHttp;
use zajel_client_net::tls;
use zajel_wire::endpoint;

use crate::doh::{self, DohServer};
use crate::net;
use crate::probe::{self, ProbeResult};
use crate::registry;
use crate::report::{CandidateReport, Layer, LayerReport, Outcome, Report, SourceReport, Verdict};
use crate::share::ShareLink;
use crate::store::Store;
use crate::txt::{self, TxtError};

/// What to look in, and how long to wait.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registry base URLs (`GET <url>/servers`).
    pub registries: Vec<Url>,
    /// Pinned registry keys: lists and TXT records must be signed by one.
    pub registry_keys: Vec<VerifyingKey>,
    /// DNS-over-HTTPS servers asked in parallel.
    pub doh_servers: Vec<DohServer>,
    /// Domains whose `_zajel.<domain>` TXT records carry servers.
    pub domains: Vec<String>,
    /// The cache and referral store (`None`: no cache layer, nothing written).
    pub store_path: Option<PathBuf>,
    /// Sharing links (`zajel://…`), e.g. read from QR codes.
    pub share_links: Vec<String>,
    /// Server URLs typed by the user.
    pub manual: Vec<String>,
    /// Accept loopback and private addresses (tests, LANs).
    pub allow_private: bool,
    /// Extra CA certificates trusted for TLS (registry, DoH, wss).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Longest wait for one registry or DoH answer.
    pub layer_timeout: Duration,
    /// Longest wait for one candidate's `pong`.
    pub probe_timeout: Duration,
    /// Delay between starting the registry layer and the DoH layer.
    pub stagger: Duration,
    /// Most candidate checks at once.
    pub max_parallel_probes: usize,
    /// Write servers that answered to the cache.
    pub write_cache: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registries: Vec::new(),
            registry_keys: Vec::new(),
            doh_servers: Vec::new(),
            domains: Vec::new(),
            store_path: None,
            share_links: Vec::new(),
            manual: Vec::new(),
            allow_private: false,
            extra_roots: Vec::new(),
            layer_timeout: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(3),
            stagger: Duration::from_millis(50),
            max_parallel_probes: 16,
            write_cache: true,
        }
    }
}

/// A server found by discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The WebSocket URL to connect to.
    pub url: String,
    /// Layers that named it.
    pub sources: Vec<Layer>,
    /// Named by a source signed with a pinned registry key (registry, DoH, or
    /// a cache entry first learned from one).
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// `ping` → `pong` round trip when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// When it last worked, from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<u64>,
}

/// Something a run learned.
#[derive(Debug, Clone)]
pub enum Event {
    /// A layer ended (with everything it returned).
    LayerFinished(LayerReport),
    /// A candidate was checked (or refused without a check).
    CandidateChecked(CandidateReport),
    /// A candidate answered (sent again when a signed source later names an
    /// already usable unverified candidate, now with `verified: true`).
    Usable(Candidate),
    /// The run is over.
    Finished(Box<Report>),
}

/// A configured discovery, ready to run (cheap to clone).
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    tls: Arc<rustls::ClientConfig>,
    http: RegistryHttp,
}

impl Discovery {
    /// Checks the configuration and sets up TLS and HTTP.
    pub fn new(config: Config) -> Result<Self, String> {
        let tls = tls::client_config(&config.extra_roots).map_err(|e| e.to_string())?;
        let http = registry::http_client(tls.clone(), config.layer_timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tls: Arc::new(tls),
                http,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Starts a run (needs a Tokio runtime); events arrive on the returned [`Run`].
    pub fn run(&self) -> Run {
        let state = Arc::new(Mutex::new(State::new()));
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(drive(self.inner.clone(), state.clone(), events));
        Run {
            events: receiver,
            state,
        }
    }

    /// The first verified usable server, as soon as one answers; or, when
    /// `limit` passes first, the best usable one known then (possibly
    /// unverified, possibly none). The run goes on in the background.
    pub async fn best_within(&self, limit: Duration) -> (Option<Candidate>, Report) {
        self.run().best_within(limit).await
    }
}

/// A running discovery: a stream of [`Event`]s ending with [`Event::Finished`].
pub struct Run {
    events: mpsc::UnboundedReceiver<Event>,
    state: Arc<Mutex<State>>,
}

impl Run {
    /// The next event (`None` after `Finished`).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The report as it stands now.
    pub fn report(&self) -> Report {
        lock(&self.state).report()
    }

    /// Waits for the end of the run and returns its report.
    pub async fn finish(mut self) -> Report {
        while let Some(event) = self.events.recv().await {
            if let Event::Finished(report) = event {
                return *report;
            }
        }
        self.report()
    }

    /// See [`Discovery::best_within`].
    pub async fn best_within(mut self, limit: Duration) -> (Option<Candidate>, Report) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Usable(candidate))) if candidate.verified => {
                    return (Some(candidate), self.report());
                }
                Ok(Some(Event::Finished(report))) => return (report.best.clone(), *report),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        let report = self.report();
        (report.best.clone(), report)
    }
}

impl futures_util::Stream for Run {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A server named by a source, before merging.
#[derive(Debug, Clone)]
struct Found {
    url: String,
    verified: bool,
    server_id: Option<String>,
    last_ok_ms: Option<u64>,
}

struct CandidateState {
    url: String,
    sources: Vec<Layer>,
    verified: bool,
    server_id: Option<String>,
    last_ok_ms: Option<u64>,
    outcome: Option<Outcome>,
    detail: String,
    probe: Option<ProbeResult>,
    checked_ms: Option<f64>,
}

impl CandidateState {
    fn candidate(&self) -> Candidate {
        Candidate {
            url: self.url.clone(),
            sources: self.sources.clone(),
            verified: self.verified,
            server_id: self.server_id.clone(),
            rtt_ms: self.probe.as_ref().and_then(|p| p.rtt_ms),
            last_ok_ms: self.last_ok_ms,
        }
    }

    fn usable(&self) -> bool {
        self.outcome == Some(Outcome::Ok)
    }

    fn report(&self) -> CandidateReport {
        CandidateReport {
            url: self.url.clone(),
            sources: self.sources.clone(),
            verified: self.verified,
            server_id: self.server_id.clone(),
            announced_server_id: self
                .probe
                .as_ref()
                .and_then(|p| p.announced_server_id.clone()),
            outcome: self.outcome.unwrap_or(Outcome::Pending),
            detail: match self.outcome {
                None => "check still running".into(),
                Some(_) => self.detail.clone(),
            },
            rtt_ms: self.probe.as_ref().and_then(|p| p.rtt_ms),
            checked_ms: self.checked_ms,
        }
    }
}

struct LayerState {
    started_ms: Option<f64>,
    finished_ms: Option<f64>,
    sources: Vec<SourceReport>,
}

struct State {
    started: Instant,
    started_at_ms: u64,
    layers: Vec<(Layer, LayerState)>,
    candidates: Vec<CandidateState>,
    index: HashMap<String, usize>,
    warnings: Vec<String>,
    first_verified_ms: Option<f64>,
    first_usable_ms: Option<f64>,
    complete: bool,
}

impl State {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            started_at_ms: crate::now_ms(),
            layers: Layer::ALL
                .iter()
                .map(|&layer| {
                    (
                        layer,
                        LayerState {
                            started_ms: None,
                            finished_ms: None,
                            sources: Vec::new(),
                        },
                    )
                })
                .collect(),
            candidates: Vec::new(),
            index: HashMap::new(),
            warnings: Vec::new(),
            first_verified_ms: None,
            first_usable_ms: None,
            complete: false,
        }
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn layer_mut(&mut self, layer: Layer) -> &mut LayerState {
        &mut self
            .layers
            .iter_mut()
            .find(|(l, _)| *l == layer)
            .expect("every layer has a state")
            .1
    }

    fn layer_report(&self, layer: Layer) -> LayerReport {
        let (_, state) = self
            .layers
            .iter()
            .find(|(l, _)| *l == layer)
            .expect("every layer has a state");
        let running = state.finished_ms.is_none() && state.started_ms.is_some();
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
        LayerReport {
            layer,
            outcome,
            detail,
            sources: state.sources.clone(),
            candidates: urls.len(),
            started_ms: state.started_ms.unwrap_or(0.0),
            finished_ms: state.finished_ms.unwrap_or_else(|| self.elapsed_ms()),
        }
    }

    fn best(&self) -> Option<Candidate> {
        let now = crate::now_ms();
        self.candidates
            .iter()
            .filter(|c| c.usable())
            .min_by(|a, b| {
                rank_key(a, now)
                    .partial_cmp(&rank_key(b, now))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(CandidateState::candidate)
    }

    fn report(&self) -> Report {
        let best = self.best();
        let verdict = match &best {
            Some(c) if c.verified => Verdict::Verified,
            Some(_) => Verdict::UnverifiedOnly,
            None => Verdict::Nothing,
        };
        Report {
            started_at_ms: self.started_at_ms,
            duration_ms: self.elapsed_ms(),
            complete: self.complete,
            verdict,
            best,
            first_verified_ms: self.first_verified_ms,
            first_usable_ms: self.first_usable_ms,
            layers: Layer::ALL.iter().map(|&l| self.layer_report(l)).collect(),
            candidates: self.candidates.iter().map(CandidateState::report).collect(),
            warnings: self.warnings.clone(),
        }
    }
}

/// Ranking: verified first, then recently working (last 24 h), then round trip.
fn rank_key(c: &CandidateState, now_ms: u64) -> (u8, u8, f64) {
    let recent = c
        .last_ok_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < 24 * 3600 * 1000);
    (
        u8::from(!c.verified),
        u8::from(!recent),
        c.probe.as_ref().and_then(|p| p.rtt_ms).unwrap_or(f64::MAX),
    )
}

/// A checked candidate as the cache records it: url, verified, serverId, rtt, answered.
type CheckedServer = (String, bool, Option<String>, Option<f64>, bool);

enum Internal {
    Started(Layer),
    Source {
        layer: Layer,
        report: SourceReport,
        found: Vec<Found>,
    },
    LayerDone(Layer),
    Probed {
        index: usize,
        result: ProbeResult,
    },
}

type Sender = mpsc::UnboundedSender<Internal>;

async fn drive(inner: Arc<Inner>, state: Arc<Mutex<State>>, events: mpsc::UnboundedSender<Event>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Internal>();
    let started = lock(&state).started;
    let ms = move || started.elapsed().as_secs_f64() * 1000.0;
    let config = &inner.config;

    // Local layers: the store (cache and referrals), QR links, typed URLs.
    let (store_data, store_warnings) = match &config.store_path {
        Some(path) => {
            let store = Store::new(path);
            let (data, warnings) = store.load(crate::now_ms());
            (Some((path.clone(), data)), warnings)
        }
        None => (None, Vec::new()),
    };
    lock(&state).warnings.extend(store_warnings.iter().cloned());
    local_layers(&tx, config, store_data, &store_warnings, &ms);

    // Network layers, staggered.
    spawn_registry_layer(inner.clone(), tx.clone(), started);
    {
        let inner = inner.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(inner.config.stagger).await;
            doh_layer(inner, tx, started).await;
        });
    }
    drop(tx);

    let probes = Arc::new(Semaphore::new(config.max_parallel_probes.max(1)));
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<Internal>();
    let mut layers_open = Layer::ALL.len();
    let mut probes_open = 0usize;
    let mut layer_channel_open = true;
    while layers_open > 0 || probes_open > 0 {
        let message = tokio::select! {
            m = rx.recv(), if layer_channel_open => match m {
                Some(m) => m,
                None => { layer_channel_open = false; continue; }
            },
            Some(m) = probe_rx.recv() => m,
        };
        match message {
            Internal::Started(layer) => {
                lock(&state).layer_mut(layer).started_ms = Some(ms());
            }
            Internal::Source {
                layer,
                report,
                found,
            } => {
                let mut to_probe = Vec::new();
                let mut out = Vec::new();
                {
                    let mut s = lock(&state);
                    s.layer_mut(layer).sources.push(report);
                    for item in found {
                        admit(&mut s, config, layer, item, &mut to_probe, &mut out, ms());
                    }
                }
                for event in out {
                    let _ = events.send(event);
                }
                for (index, url) in to_probe {
                    probes_open += 1;
                    let permit_pool = probes.clone();
                    let tls = inner.tls.clone();
                    let tx = probe_tx.clone();
                    let allow = config.allow_private;
                    let timeout = config.probe_timeout;
                    tokio::spawn(async move {
                        let _permit = permit_pool.acquire_owned().await;
                        let result = probe::probe(&url, tls, allow, timeout).await;
                        let _ = tx.send(Internal::Probed { index, result });
                    });
                }
            }
            Internal::LayerDone(layer) => {
                layers_open -= 1;
                let report = {
                    let mut s = lock(&state);
                    let now = ms();
                    let l = s.layer_mut(layer);
                    l.finished_ms = Some(now);
                    if l.started_ms.is_none() {
                        l.started_ms = Some(now);
                    }
                    s.layer_report(layer)
                };
                let _ = events.send(Event::LayerFinished(report));
            }
            Internal::Probed { index, result } => {
                probes_open -= 1;
                let mut out = Vec::new();
                {
                    let mut s = lock(&state);
                    let now = ms();
                    let usable = result.outcome.is_ok();
                    let c = &mut s.candidates[index];
                    c.outcome = Some(result.outcome);
                    c.detail = result.detail.clone();
                    c.probe = Some(result);
                    c.checked_ms = Some(now);
                    out.push(Event::CandidateChecked(c.report()));
                    if usable {
                        let candidate = c.candidate();
                        if candidate.verified && s.first_verified_ms.is_none() {
                            s.first_verified_ms = Some(now);
                        }
                        if s.first_usable_ms.is_none() {
                            s.first_usable_ms = Some(now);
                        }
                        out.push(Event::Usable(candidate));
                    }
                }
                for event in out {
                    let _ = events.send(event);
                }
            }
        }
    }

    // Remember what answered.
    if config.write_cache {
        if let Some(path) = &config.store_path {
            let results: Vec<CheckedServer> = lock(&state)
                .candidates
                .iter()
                .filter(|c| c.probe.is_some())
                .map(|c| {
                    (
                        c.url.clone(),
                        c.verified,
                        c.server_id.clone(),
                        c.probe.as_ref().and_then(|p| p.rtt_ms),
                        c.usable(),
                    )
                })
                .collect();
            let store = Store::new(path);
            let written = tokio::task::spawn_blocking(move || {
                let now = crate::now_ms();
                store.update(now, |data| {
                    for (url, verified, server_id, rtt, ok) in results {
                        if ok {
                            data.record_ok(&url, verified, server_id, rtt, now);
                        } else {
                            data.record_failure(&url, now);
                        }
                    }
                })
            })
            .await;
            match written {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => lock(&state)
                    .warnings
                    .push(format!("cache not written: {e}")),
                Err(e) => lock(&state)
                    .warnings
                    .push(format!("cache not written: {e}")),
            }
        }
    }
    let report = {
        let mut s = lock(&state);
        s.complete = true;
        s.report()
    };
    let _ = events.send(Event::Finished(Box::new(report)));
}

/// Merges one found server into the candidates; queues a check when new.
fn admit(
    s: &mut State,
    config: &Config,
    layer: Layer,
    item: Found,
    to_probe: &mut Vec<(usize, Url)>,
    out: &mut Vec<Event>,
    now: f64,
) {
    let parsed = endpoint::signaling_url(&item.url);
    let key = match &parsed {
        Ok(url) => url.to_string(),
        Err(_) => item.url.clone(),
    };
    if let Some(&index) = s.index.get(&key) {
        let c = &mut s.candidates[index];
        if !c.sources.contains(&layer) {
            c.sources.push(layer);
        }
        let newly_verified = item.verified && !c.verified;
        c.verified |= item.verified;
        if c.server_id.is_none() {
            c.server_id = item.server_id;
        }
        if c.last_ok_ms.is_none() {
            c.last_ok_ms = item.last_ok_ms;
        }
        if newly_verified && c.usable() {
            let candidate = c.candidate();
            if s.first_verified_ms.is_none() {
                s.first_verified_ms = Some(now);
            }
            out.push(Event::Usable(candidate));
        }
        return;
    }
    let mut candidate = CandidateState {
        url: key.clone(),
        sources: vec![layer],
        verified: item.verified,
        server_id: item.server_id,
        last_ok_ms: item.last_ok_ms,
        outcome: None,
        detail: String::new(),
        probe: None,
        checked_ms: None,
    };
    let index = s.candidates.len();
    match parsed {
        Err(e) => {
            candidate.outcome = Some(Outcome::Invalid);
            candidate.detail = format!("not a signaling URL: {e}");
            candidate.checked_ms = Some(now);
            out.push(Event::CandidateChecked(candidate.report()));
        }
        Ok(url) => {
            let private = url.host().is_some_and(|h| net::host_is_private(&h));
            if private && !config.allow_private {
                candidate.outcome = Some(Outcome::PrivateAddress);
                candidate.detail =
                    "loopback or private address (refused unless private addresses are allowed)"
                        .into();
                candidate.checked_ms = Some(now);
                out.push(Event::CandidateChecked(candidate.report()));
            } else {
                to_probe.push((index, url));
            }
        }
    }
    s.candidates.push(candidate);
    s.index.insert(key, index);
}

fn source_report(
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

fn local_layers(
    tx: &Sender,
    config: &Config,
    store: Option<(PathBuf, crate::store::StoreData)>,
    store_warnings: &[String],
    ms: &dyn Fn() -> f64,
) {
    let send = |layer, report, found| {
        let _ = tx.send(Internal::Source {
            layer,
            report,
            found,
        });
    };
    // Cache and referrals.
    for layer in [Layer::Cache, Layer::Referral] {
        let _ = tx.send(Internal::Started(layer));
        if let Some((path, data)) = &store {
            let t = ms();
            let found: Vec<Found> = if layer == Layer::Cache {
                data.servers
                    .iter()
                    .map(|s| Found {
                        url: s.url.clone(),
                        verified: s.verified,
                        server_id: s.server_id.clone(),
                        last_ok_ms: Some(s.last_ok_ms),
                    })
                    .collect()
            } else {
                data.referrals
                    .iter()
                    .map(|r| Found {
                        url: r.url.clone(),
                        verified: false,
                        server_id: None,
                        last_ok_ms: None,
                    })
                    .collect()
            };
            let outcome = if found.is_empty() {
                Outcome::Empty
            } else {
                Outcome::Ok
            };
            let mut detail = if layer == Layer::Referral {
                data.referrals
                    .iter()
                    .map(|r| format!("{} from contact {}", r.url, r.code))
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                String::new()
            };
            if layer == Layer::Cache && !store_warnings.is_empty() {
                detail = store_warnings.join("; ");
            }
            if found.is_empty() && detail.is_empty() {
                detail = "no entries".into();
            }
            let report =
                source_report(path.display().to_string(), outcome, detail, &found, t, ms());
            send(layer, report, found);
        }
        let _ = tx.send(Internal::LayerDone(layer));
    }
    // QR / sharing links.
    let _ = tx.send(Internal::Started(Layer::Qr));
    for text in &config.share_links {
        let t = ms();
        match ShareLink::parse(text) {
            Ok(link) => {
                let found: Vec<Found> = link
                    .servers
                    .iter()
                    .map(|s| Found {
                        url: s.clone(),
                        verified: false,
                        server_id: None,
                        last_ok_ms: None,
                    })
                    .collect();
                let mut detail = format!("contact code {}", link.code);
                if let Some(key) = &link.registry_key {
                    let pinned = config
                        .registry_keys
                        .iter()
                        .any(|k| zajel_wire::keys::public_key_to_base64(k) == *key);
                    detail.push_str(if pinned {
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
                send(
                    Layer::Qr,
                    source_report(text.clone(), outcome, detail, &found, t, ms()),
                    found,
                );
            }
            Err(e) => send(
                Layer::Qr,
                source_report(text.clone(), Outcome::Invalid, e, &[], t, ms()),
                Vec::new(),
            ),
        }
    }
    let _ = tx.send(Internal::LayerDone(Layer::Qr));
    // Typed URLs.
    let _ = tx.send(Internal::Started(Layer::Manual));
    for text in &config.manual {
        let t = ms();
        match endpoint::signaling_url(text) {
            Ok(_) => {
                let found = vec![Found {
                    url: text.trim().to_string(),
                    verified: false,
                    server_id: None,
                    last_ok_ms: None,
                }];
                send(
                    Layer::Manual,
                    source_report(text.clone(), Outcome::Ok, String::new(), &found, t, ms()),
                    found,
                );
            }
            Err(e) => send(
                Layer::Manual,
                source_report(
                    text.clone(),
                    Outcome::Invalid,
                    format!("not a server URL: {e}"),
                    &[],
                    t,
                    ms(),
                ),
                Vec::new(),
            ),
        }
    }
    let _ = tx.send(Internal::LayerDone(Layer::Manual));
}

fn spawn_registry_layer(inner: Arc<Inner>, tx: Sender, started: Instant) {
    tokio::spawn(async move {
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        let _ = tx.send(Internal::Started(Layer::Registry));
        let mut tasks = tokio::task::JoinSet::new();
        for url in inner.config.registries.clone() {
            let inner = inner.clone();
            tasks.spawn(async move {
                let t = started.elapsed().as_secs_f64() * 1000.0;
                let timeout = inner.config.layer_timeout;
                let result = tokio::time::timeout(
                    timeout,
                    registry::fetch(
                        &inner.http,
                        &url,
                        &inner.config.registry_keys,
                        crate::now_ms(),
                    ),
                )
                .await
                .unwrap_or_else(|_| registry::RegistryResult {
                    outcome: Outcome::TimedOut,
                    detail: format!("no answer within {} ms", timeout.as_millis()),
                    servers: Vec::new(),
                    verified: false,
                    list: None,
                });
                (url, t, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((url, t, result)) = joined else {
                continue;
            };
            let found: Vec<Found> = result
                .servers
                .iter()
                .map(|s| Found {
                    url: s.endpoint.clone(),
                    verified: result.verified,
                    server_id: Some(s.server_id.clone()),
                    last_ok_ms: None,
                })
                .collect();
            let report = source_report(
                registry::servers_url(&url).to_string(),
                result.outcome,
                result.detail.clone(),
                &found,
                t,
                ms(),
            );
            let _ = tx.send(Internal::Source {
                layer: Layer::Registry,
                report,
                found,
            });
        }
        let _ = tx.send(Internal::LayerDone(Layer::Registry));
    });
}

/// Queries every (resolver, domain) pair in parallel and verifies the records.
async fn doh_layer(inner: Arc<Inner>, tx: Sender, started: Instant) {
    let ms = || started.elapsed().as_secs_f64() * 1000.0;
    let _ = tx.send(Internal::Started(Layer::Doh));
    let mut tasks = tokio::task::JoinSet::new();
    for server in inner.config.doh_servers.clone() {
        for domain in inner.config.domains.clone() {
            let inner = inner.clone();
            let server = server.clone();
            tasks.spawn(async move {
                let t = started.elapsed().as_secs_f64() * 1000.0;
                let name = txt::record_name(&domain);
                let answer =
                    doh::query_txt(&server, &name, &inner.tls, inner.config.layer_timeout).await;
                (server, domain, name, t, answer)
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((server, domain, name, t, answer)) = joined else {
            continue;
        };
        let (outcome, detail, found, refused) =
            verify_answer(&domain, &answer, &inner.config.registry_keys);
        let mut report = source_report(
            format!("{server} → {name}"),
            outcome,
            detail,
            &found,
            t,
            ms(),
        );
        report.refused = refused;
        let _ = tx.send(Internal::Source {
            layer: Layer::Doh,
            report,
            found,
        });
    }
    let _ = tx.send(Internal::LayerDone(Layer::Doh));
}

fn verify_answer(
    domain: &str,
    answer: &doh::TxtAnswer,
    keys: &[VerifyingKey],
) -> (Outcome, String, Vec<Found>, Vec<String>) {
    if answer.outcome != Outcome::Ok {
        return (
            answer.outcome,
            answer.detail.clone(),
            Vec::new(),
            Vec::new(),
        );
    }
    let now_secs = crate::now_ms() / 1000;
    let mut found = Vec::new();
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for record in answer.records.iter().take(txt::MAX_RECORDS) {
        match txt::verify_record(domain, record, keys, now_secs) {
            Ok(entry) => found.push(Found {
                url: entry.endpoint,
                verified: true,
                server_id: Some(entry.server_id),
                last_ok_ms: None,
            }),
            Err(TxtError::NotOurs) => {}
            Err(e) => {
                failures.push(match e {
                    TxtError::InvalidSignature => Outcome::InvalidSignature,
                    TxtError::Expired(_) | TxtError::TooFarAhead(_) => Outcome::Stale,
                    _ => Outcome::Protocol,
                });
                let preview: String = String::from_utf8_lossy(record).chars().take(80).collect();
                refused.push(format!("{e}: {preview}"));
            }
        }
    }
    if answer.records.len() > txt::MAX_RECORDS {
        refused.push(format!(
            "{} records beyond the first {} ignored",
            answer.records.len() - txt::MAX_RECORDS,
            txt::MAX_RECORDS
        ));
    }
    if !found.is_empty() {
        let detail = if refused.is_empty() {
            String::new()
        } else {
            format!("{} record(s) refused", refused.len())
        };
        return (Outcome::Ok, detail, found, refused);
    }
    if failures.is_empty() {
        return (Outcome::Empty, "no zajel records".into(), found, refused);
    }
    let outcome = Outcome::summarise(failures);
    let detail = if keys.is_empty() {
        "no registry key pinned: TXT records cannot be verified".to_string()
    } else {
        format!("every record refused: {}", refused.join("; "))
    };
    (outcome, detail, found, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[8u8; 32])
    }

    fn answer(records: Vec<Vec<u8>>) -> doh::TxtAnswer {
        doh::TxtAnswer {
            outcome: Outcome::Ok,
            detail: String::new(),
            records,
        }
    }

    fn record(signer: &SigningKey, endpoint: &str, expires: u64) -> Vec<u8> {
        let server = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        let entry = txt::TxtEntry {
            server_id: zajel_wire::keys::server_id_for(&server),
            endpoint: endpoint.into(),
            region: String::new(),
            expires,
        };
        txt::sign_record(signer, "example.org", &entry)
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn a_doh_answer_keeps_genuine_records_and_says_why_others_were_refused() {
        let later = crate::now_ms() / 1000 + 600;
        let keys = [key().verifying_key()];
        let genuine = record(&key(), "wss://good.example", later);
        let forged = record(
            &SigningKey::from_bytes(&[9u8; 32]),
            "wss://evil.example",
            later,
        );
        let (outcome, detail, found, refused) = verify_answer(
            "example.org",
            &answer(vec![genuine, forged.clone(), b"v=spf1 -all".to_vec()]),
            &keys,
        );
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].url, "wss://good.example");
        assert!(found[0].verified);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(detail.contains("1 record(s) refused"));
        let (outcome, _, found, _) = verify_answer("example.org", &answer(vec![forged]), &keys);
        assert_eq!(outcome, Outcome::InvalidSignature);
        assert!(found.is_empty());
        let stale = record(&key(), "wss://good.example", crate::now_ms() / 1000 - 1);
        let (outcome, _, _, _) = verify_answer("example.org", &answer(vec![stale]), &keys);
        assert_eq!(outcome, Outcome::Stale);
        let (outcome, detail, _, _) = verify_answer(
            "example.org",
            &answer(vec![record(&key(), "wss://good.example", later)]),
            &[],
        );
        assert_eq!(outcome, Outcome::InvalidSignature);
        assert!(detail.contains("no registry key pinned"));
        let (outcome, _, _, _) =
            verify_answer("example.org", &answer(vec![b"v=spf1".to_vec()]), &keys);
        assert_eq!(outcome, Outcome::Empty);
    }

    #[tokio::test]
    async fn a_run_with_nothing_configured_ends_with_nothing_and_says_why() {
        let config = Config {
            manual: vec!["ftp://not-a-server.example".into()],
            ..Config::default()
        };
        let report = Discovery::new(config).unwrap().run().finish().await;
        assert!(report.complete);
        assert_eq!(report.verdict, Verdict::Nothing);
        for layer in [
            Layer::Registry,
            Layer::Doh,
            Layer::Cache,
            Layer::Referral,
            Layer::Qr,
        ] {
            assert_eq!(report.layer(layer).unwrap().outcome, Outcome::NotConfigured);
        }
        let manual = report.layer(Layer::Manual).unwrap();
        assert_eq!(manual.outcome, Outcome::Invalid);
        assert!(
            manual.detail.contains("not a server URL"),
            "{}",
            manual.detail
        );
    }

    #[tokio::test]
    async fn private_addresses_are_refused_before_any_connection() {
        let config = Config {
            manual: vec![
                "ws://127.0.0.1:9/".into(),
                "wss://localhost/".into(),
                "ws://[::1]:9/".into(),
                "ws://10.0.0.1/".into(),
            ],
            ..Config::default()
        };
        let report = Discovery::new(config).unwrap().run().finish().await;
        assert_eq!(report.candidates.len(), 4);
        for c in &report.candidates {
            assert_eq!(c.outcome, Outcome::PrivateAddress, "{c:?}");
            assert!(c.checked_ms.is_some());
            assert!(c.rtt_ms.is_none());
        }
    }

    #[test]
    fn verified_servers_rank_before_faster_unverified_ones() {
        let state = |verified, rtt| CandidateState {
            url: String::new(),
            sources: Vec::new(),
            verified,
            server_id: None,
            last_ok_ms: None,
            outcome: Some(Outcome::Ok),
            detail: String::new(),
            probe: Some(ProbeResult {
                outcome: Outcome::Ok,
                detail: String::new(),
                rtt_ms: Some(rtt),
                announced_server_id: None,
            }),
            checked_ms: None,
        };
        let now = crate::now_ms();
        assert!(rank_key(&state(true, 90.0), now) < rank_key(&state(false, 1.0), now));
        assert!(rank_key(&state(true, 1.0), now) < rank_key(&state(true, 2.0), now));
        let mut recent = state(true, 50.0);
        recent.last_ok_ms = Some(now);
        assert!(rank_key(&recent, now) < rank_key(&state(true, 1.0), now));
    }
}
