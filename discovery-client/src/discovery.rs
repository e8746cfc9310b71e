//! The tokio driver of a discovery run: it runs the six layers' I/O (store,
//! registries, DNS-over-HTTPS, candidate checks, the cache write) and feeds
//! what happens to [`DiscoveryState`], the sans-IO machine in
//! `zajel_discovery_core::discovery` that owns the rules (layer stagger and
//! timeouts, merging, admission, check limit, ranking, when the run is over,
//! the report). Events stream out as things are known; servers that answer
//! are written to the cache.
//!
//! `Discovery::new(config)?.run()` gives a [`Run`]: a stream of events; and
//! [`Discovery::best_within`] returns the first verified usable server as soon
//! as one answers (or the best usable one when time is up), while the rest of
//! the run finishes in the background (and still updates the cache).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use url::Url;
use zajel_client_net::registry_http::RegistryHttp;
use zajel_client_net::tls;
use zajel_discovery_core::discovery::{
    doh_queries, doh_source, handover, manual_source, share_link_source, source_report,
    CheckResult, CheckedServer, DiscoveryState, Found, Handover, Input, Output, Rules,
    SourceFindings, DEFAULT_CHECK_TIMEOUT,
};

use crate::doh::{self, DohServer};
use crate::probe;
use crate::registry;
use crate::report::{Layer, Outcome, Report};
use crate::store::{Store, StoreData};
use crate::txt;

pub use zajel_discovery_core::discovery::Event;
pub use zajel_discovery_core::report::Candidate;

/// Why a discovery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The TLS client configuration (web PKI plus the extra roots) could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The registry HTTP client could not be built.
    #[error(transparent)]
    RegistryClient(#[from] registry::RegistryClientError),
}

impl DiscoveryError {
    /// A stable machine-readable name of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tls(_) => "tls_config",
            Self::RegistryClient(e) => e.kind(),
        }
    }
}

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
    /// Most fresh candidate checks at once (a check silent for
    /// `stall_after` no longer counts; see the machine's rule 5).
    pub max_parallel_probes: usize,
    /// How long a check runs before it stops holding a fresh slot.
    pub stall_after: Duration,
    /// Most candidate checks at once, stalled ones included.
    pub max_probes_in_flight: usize,
    /// Write servers that answered to the cache.
    pub write_cache: bool,
}

impl Default for Config {
    /// The defaults every client starts from (discovery-core's [`Rules`]).
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            registries: Vec::new(),
            registry_keys: Vec::new(),
            doh_servers: Vec::new(),
            domains: Vec::new(),
            store_path: None,
            share_links: Vec::new(),
            manual: Vec::new(),
            allow_private: rules.allow_private,
            extra_roots: Vec::new(),
            layer_timeout: rules.layer_timeout,
            probe_timeout: DEFAULT_CHECK_TIMEOUT,
            stagger: rules.stagger,
            max_parallel_probes: rules.max_parallel_checks,
            stall_after: rules.stall_after,
            max_probes_in_flight: rules.max_checks_in_flight,
            write_cache: true,
        }
    }
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
    pub fn new(config: Config) -> Result<Self, DiscoveryError> {
        let tls = tls::client_config(&config.extra_roots)?;
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

    /// The rules the machine runs with, from the configuration.
    fn rules(&self) -> Rules {
        let config = &self.inner.config;
        Rules {
            allow_private: config.allow_private,
            max_parallel_checks: config.max_parallel_probes,
            stall_after: config.stall_after,
            max_checks_in_flight: config.max_probes_in_flight,
            revoked: Vec::new(),
            stagger: config.stagger,
            layer_timeout: config.layer_timeout,
            registry_sources: config
                .registries
                .iter()
                .map(|url| registry::servers_url(url).to_string())
                .collect(),
            doh_sources: doh_queries(&config.doh_servers, &config.domains)
                .map(|(server, _, name)| doh_source(server, &name))
                .collect(),
            remember: config.write_cache && config.store_path.is_some(),
        }
    }

    /// Starts a run (needs a Tokio runtime); events arrive on the returned [`Run`].
    pub fn run(&self) -> Run {
        let shared = Arc::new(Shared {
            state: Mutex::new(DiscoveryState::new(self.rules(), crate::now_ms())),
            started: Instant::now(),
        });
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(drive(self.inner.clone(), shared.clone(), events));
        Run {
            events: receiver,
            shared,
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
    shared: Arc<Shared>,
}

impl Run {
    /// The next event (`None` after `Finished`).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The report as it stands now.
    pub fn report(&self) -> Report {
        self.shared.report()
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
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match (handover(&event), event) {
                (Some(Handover::Verified(candidate)), _) => {
                    return (Some(candidate), self.report());
                }
                (Some(Handover::RunOver(best)), Event::Finished(report)) => {
                    return (best, *report);
                }
                _ => {}
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

/// The machine and the clock it is driven by.
struct Shared {
    state: Mutex<DiscoveryState>,
    started: Instant,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, DiscoveryState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Time since the start of the run.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn ms(&self) -> f64 {
        self.now().as_secs_f64() * 1000.0
    }

    fn report(&self) -> Report {
        let now = self.now();
        self.lock().report(now)
    }

    fn handle(&self, input: Input) {
        let now = self.now();
        self.lock().handle(now, input);
    }
}

type Sender = mpsc::UnboundedSender<Input>;

/// Runs the I/O the machine asks for until it emits [`Event::Finished`].
async fn drive(inner: Arc<Inner>, shared: Arc<Shared>, events: mpsc::UnboundedSender<Event>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let store = match &inner.config.store_path {
        Some(path) => {
            let now_ms = crate::now_ms();
            let (data, warnings) = Store::new(path).load(now_ms);
            for warning in &warnings {
                shared.lock().warn(warning.clone());
            }
            let revoked = data.revocations_in_force(now_ms);
            if !revoked.is_empty() {
                shared.handle(Input::Revoked(revoked));
            }
            Some(LoadedStore {
                path: path.clone(),
                data,
                warnings,
            })
        }
        None => None,
    };
    let driver = Driver {
        inner,
        shared,
        tx,
        events,
        store,
    };
    loop {
        let outputs: Vec<Output> = {
            let mut state = driver.shared.lock();
            std::iter::from_fn(|| state.poll_output()).collect()
        };
        if outputs.is_empty() {
            driver.wait(&mut rx).await;
            continue;
        }
        for output in outputs {
            if driver.carry_out(output) == Finished::Yes {
                return;
            }
        }
    }
}

/// The store as the run found it.
struct LoadedStore {
    path: PathBuf,
    data: StoreData,
    /// Why it could not be read as it was (a corrupt file moved aside, …).
    warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Yes,
    No,
}

/// What one run's driver holds.
struct Driver {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    /// Where the layers' tasks and the checks send their results.
    tx: Sender,
    events: mpsc::UnboundedSender<Event>,
    store: Option<LoadedStore>,
}

impl Driver {
    /// Waits for the next input or the machine's next timer, and feeds it.
    async fn wait(&self, rx: &mut mpsc::UnboundedReceiver<Input>) {
        let timeout = self.shared.lock().poll_timeout();
        let timer = async {
            match timeout {
                Some(t) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(
                        self.shared.started + t,
                    ))
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = rx.recv() => {
                if let Some(input) = input {
                    self.shared.handle(input);
                }
            }
            () = timer => {
                let now = self.shared.now();
                self.shared.lock().handle_timeout(now);
            }
        }
    }

    /// Runs what one output asks for.
    fn carry_out(&self, output: Output) -> Finished {
        let config = &self.inner.config;
        match output {
            Output::StartLayer(Layer::Registry) => {
                spawn_registry_layer(self.inner.clone(), self.tx.clone(), self.shared.clone());
            }
            Output::StartLayer(Layer::Doh) => {
                spawn_doh_layer(self.inner.clone(), self.tx.clone(), self.shared.clone());
            }
            Output::StartLayer(layer) => {
                for input in local_layer(layer, config, self.store.as_ref(), &self.shared) {
                    self.shared.handle(input);
                }
            }
            Output::Check { candidate, url } => {
                let tls = self.inner.tls.clone();
                let tx = self.tx.clone();
                let allow = config.allow_private;
                let timeout = config.probe_timeout;
                tokio::spawn(async move {
                    let result = probe::probe(&url, tls, allow, timeout).await;
                    let _ = tx.send(Input::Checked {
                        candidate,
                        result: CheckResult {
                            outcome: result.outcome,
                            detail: result.detail,
                            rtt_ms: result.rtt_ms,
                            announced_server_id: result.announced_server_id,
                            identity: result.identity,
                        },
                    });
                });
            }
            Output::Remember(checked) => {
                let Some(path) = config.store_path.clone() else {
                    self.shared.handle(Input::Remembered(Ok(())));
                    return Finished::No;
                };
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let written =
                        tokio::task::spawn_blocking(move || remember(&path, checked)).await;
                    let _ = tx.send(Input::Remembered(match written {
                        Ok(result) => result,
                        Err(e) => Err(e.to_string()),
                    }));
                });
            }
            Output::Event(event) => {
                let finished = matches!(event, Event::Finished(_));
                let _ = self.events.send(event);
                if finished {
                    return Finished::Yes;
                }
            }
        }
        Finished::No
    }
}

/// Writes what the checks found to the cache.
fn remember(path: &std::path::Path, checked: Vec<CheckedServer>) -> Result<(), String> {
    let now = crate::now_ms();
    Store::new(path)
        .update(now, |data| data.remember(checked, now))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Keeps verified revocations in the store (when the run writes it), so that
/// later runs refuse the revoked servers even from a resolver that strips
/// the revocation.
async fn remember_revocations(config: &Config, revocations: Vec<txt::Revocation>) {
    let Some(path) = config.store_path.clone().filter(|_| config.write_cache) else {
        return;
    };
    let written = tokio::task::spawn_blocking(move || {
        Store::new(&path).update(crate::now_ms(), |data| {
            for revocation in revocations {
                data.add_revocation(revocation);
            }
        })
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::warn!("revocations not written to the cache: {e}");
    }
}

/// The inputs of a local layer (cache, referral, QR, manual): one source
/// per store file, sharing link or typed URL, then the end of the layer.
fn local_layer(
    layer: Layer,
    config: &Config,
    store: Option<&LoadedStore>,
    shared: &Shared,
) -> Vec<Input> {
    let mut inputs = Vec::new();
    let mut add = |source: String, (outcome, detail, found): SourceFindings, started_ms| {
        inputs.push(Input::Source {
            layer,
            report: source_report(source, outcome, detail, &found, started_ms, shared.ms()),
            found,
        });
    };
    match layer {
        Layer::Cache | Layer::Referral => {
            if let Some(store) = store {
                let t = shared.ms();
                add(
                    store.path.display().to_string(),
                    store.data.source(layer, &store.warnings),
                    t,
                );
            }
        }
        Layer::Qr => {
            for text in &config.share_links {
                let t = shared.ms();
                add(
                    text.clone(),
                    share_link_source(text, &config.registry_keys),
                    t,
                );
            }
        }
        Layer::Manual => {
            for text in &config.manual {
                let t = shared.ms();
                add(text.clone(), manual_source(text), t);
            }
        }
        Layer::Registry | Layer::Doh => {}
    }
    inputs.push(Input::LayerDone(layer));
    inputs
}

/// Fetches every registry's list in parallel (the machine times the layer out).
fn spawn_registry_layer(inner: Arc<Inner>, tx: Sender, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for url in inner.config.registries.clone() {
            let inner = inner.clone();
            let shared = shared.clone();
            tasks.spawn(async move {
                let t = shared.ms();
                let result = registry::fetch(
                    &inner.http,
                    &url,
                    &inner.config.registry_keys,
                    crate::now_ms(),
                )
                .await;
                (url, t, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((url, t, result)) = joined else {
                continue;
            };
            let found = result.found();
            let report = source_report(
                registry::servers_url(&url).to_string(),
                result.outcome,
                result.detail.clone(),
                &found,
                t,
                shared.ms(),
            );
            let _ = tx.send(Input::Source {
                layer: Layer::Registry,
                report,
                found,
            });
        }
    });
}

/// Queries every (resolver, domain) pair in parallel and verifies the records
/// (the machine times the layer out).
fn spawn_doh_layer(inner: Arc<Inner>, tx: Sender, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for (server, domain, name) in doh_queries(&inner.config.doh_servers, &inner.config.domains)
        {
            let inner = inner.clone();
            let shared = shared.clone();
            let (server, domain) = (server.clone(), domain.clone());
            tasks.spawn(async move {
                let t = shared.ms();
                let answer =
                    doh::query_txt(&server, &name, &inner.tls, inner.config.layer_timeout).await;
                (server, domain, name, t, answer)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((server, domain, name, t, answer)) = joined else {
                continue;
            };
            let (outcome, detail, found, refused) = if answer.outcome != Outcome::Ok {
                (answer.outcome, answer.detail, Vec::new(), Vec::new())
            } else {
                // Up to 512 signature checks: off the async workers.
                let keys = inner.config.registry_keys.clone();
                let records = answer.records;
                let for_domain = domain.clone();
                let check = match tokio::task::spawn_blocking(move || {
                    txt::check_answer(&for_domain, &records, &keys, crate::now_ms() / 1000)
                })
                .await
                {
                    Ok(check) => check,
                    Err(e) => txt::AnswerCheck {
                        outcome: Outcome::Error,
                        detail: format!("verifying the answer failed: {e}"),
                        entries: Vec::new(),
                        revocations: Vec::new(),
                        refused: Vec::new(),
                    },
                };
                let found = check.entries.into_iter().map(Found::from).collect();
                if !check.revocations.is_empty() {
                    let _ = tx.send(Input::Revoked(check.revocations.clone()));
                    remember_revocations(&inner.config, check.revocations).await;
                }
                (check.outcome, check.detail, found, check.refused)
            };
            let mut report = source_report(
                doh_source(&server, &name),
                outcome,
                detail,
                &found,
                t,
                shared.ms(),
            );
            report.refused = refused;
            let _ = tx.send(Input::Source {
                layer: Layer::Doh,
                report,
                found,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Verdict;

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

    #[test]
    fn a_root_that_is_not_a_certificate_stops_the_setup_with_its_kind() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
        let config = Config {
            extra_roots: vec![garbage.clone()],
            ..Config::default()
        };
        let error = match Discovery::new(config) {
            Ok(_) => panic!("a garbage root was trusted"),
            Err(error) => error,
        };
        assert_eq!(error.kind(), "tls_config");
        let direct = tls::client_config(&[garbage]).unwrap_err();
        assert_eq!(error.to_string(), direct.to_string());
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
}
