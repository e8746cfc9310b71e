//! The browser driver of a discovery run (wasm32 only): it runs the I/O that
//! discovery-core's [`DiscoveryState`] asks for with what a browser (or a
//! Web Worker) has, and feeds the results back, as discovery-client's tokio
//! driver does natively:
//! - registry: `fetch(GET <registry>/servers)`, the `X-Bootstrap-Signature`
//!   header and timestamp checked by `registry_list::check_response` (the
//!   registry must allow the page's origin and expose that header by CORS);
//! - DoH: `fetch(POST application/dns-message)` ([`crate::dns`]), records
//!   verified by `txt::check_answer`;
//! - cache and referrals: one `localStorage` value ([`crate::store`]);
//! - checks: the browser's `WebSocket` carrying [`crate::probe::Probe`];
//! - timers: `setTimeout` at the machine's `poll_timeout`; the run's clock is
//!   `performance.now()`.
//!
//! What the browser hides: a `fetch` or a WebSocket that fails does not say
//! whether the connection was refused, reset, blocked by TLS or by CORS, so
//! such failures are reported as `refused` with the browser's message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use js_sys::{Function, Promise, Uint8Array};
use serde::Serialize;
use url::Url;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{AbortController, MessageEvent, Request, RequestInit, Response, Storage, WebSocket};
use zajel_discovery_core::discovery::{
    handover, manual_source, share_link_source, source_report, CandidateId, CheckResult,
    DiscoveryState, Found, Handover, Input, Output, SourceFindings,
};
use zajel_discovery_core::registry_list::{self, RegistryResult, MAX_BODY_BYTES};
use zajel_discovery_core::report::{Layer, Outcome};
use zajel_discovery_core::{txt, Event};
use zajel_wire::signature::LIST_SIGNATURE_HEADER;

use crate::dns::{self, TxtAnswer, DNS_MESSAGE};
use crate::options::{doh_source, servers_url, Config};
use crate::probe::{Probe, Step};
use crate::store::{self, StoreData};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_request(request: &Request) -> Promise;
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_namespace = globalThis, js_name = localStorage, thread_local_v2)]
    static LOCAL_STORAGE: Option<Storage>;
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// Resolves after `ms` milliseconds.
async fn sleep(ms: f64) {
    let promise = Promise::new(&mut |resolve, _| {
        set_timeout(&resolve, ms.clamp(0.0, i32::MAX as f64) as i32);
    });
    let _ = JsFuture::from(promise).await;
}

/// The page's `localStorage`, when there is one (not in Web Workers).
pub fn local_storage() -> Option<Storage> {
    LOCAL_STORAGE.with(Clone::clone)
}

/// A JSON value as a JS value (the report is exactly the CLI's JSON).
pub fn to_js<T: Serialize>(value: &T) -> JsValue {
    match serde_json::to_string(value) {
        Ok(text) => js_sys::JSON::parse(&text).unwrap_or(JsValue::NULL),
        Err(_) => JsValue::NULL,
    }
}

/// How a run hands its result to the page.
pub(crate) enum Delivery {
    /// `discover`: the complete report.
    Report(Function),
    /// `firstServer`: the first verified usable server, or the best when the
    /// run ends or the limit passes (the run goes on in the background).
    FirstServer(Function),
    Delivered,
}

/// The cache as the run found it.
struct LoadedStore {
    storage: Storage,
    key: String,
    data: StoreData,
    warnings: Vec<String>,
}

/// One run.
pub(crate) struct Run {
    config: Config,
    state: RefCell<DiscoveryState>,
    started: f64,
    store: Option<LoadedStore>,
    on_event: Option<Function>,
    delivery: RefCell<Delivery>,
    /// The machine's timer as scheduled (run time in ms).
    timer_at: Cell<Option<f64>>,
}

impl Run {
    /// Sets up a run: loads the cache and feeds its revocations.
    pub(crate) fn new(mut config: Config, on_event: Option<Function>) -> Rc<Self> {
        let mut warnings = Vec::new();
        let storage = match &config.storage_key {
            Some(_) => {
                let storage = local_storage();
                if storage.is_none() {
                    warnings.push("no localStorage here: no cache or referral layer".to_string());
                    config.storage_key = None;
                }
                storage
            }
            None => None,
        };
        let now_ms = unix_ms();
        let store = match (storage, config.storage_key.clone()) {
            (Some(storage), Some(key)) => {
                let (data, store_warnings) = load(&storage, &key, now_ms);
                warnings.extend(store_warnings.iter().cloned());
                Some(LoadedStore {
                    storage,
                    key,
                    data,
                    warnings: store_warnings,
                })
            }
            _ => None,
        };
        let mut state = DiscoveryState::new(config.rules(), now_ms);
        for warning in warnings {
            state.warn(warning);
        }
        let run = Rc::new(Self {
            config,
            state: RefCell::new(state),
            started: performance_now(),
            store,
            on_event,
            delivery: RefCell::new(Delivery::Delivered),
            timer_at: Cell::new(None),
        });
        if let Some(store) = &run.store {
            let revoked = store.data.revocations_in_force(now_ms);
            if !revoked.is_empty() {
                run.state
                    .borrow_mut()
                    .handle(run.now(), Input::Revoked(revoked));
            }
        }
        run
    }

    /// Starts the run; the result goes to `delivery`.
    pub(crate) fn start(self: &Rc<Self>, delivery: Delivery, limit_ms: Option<f64>) {
        *self.delivery.borrow_mut() = delivery;
        if let Some(limit) = limit_ms {
            let run = self.clone();
            spawn_local(async move {
                sleep(limit).await;
                let report = run.state.borrow().report(run.now());
                run.deliver_first(to_js(&FirstServer {
                    best: report.best.clone(),
                    report,
                }));
            });
        }
        self.pump();
    }

    fn ms(&self) -> f64 {
        (performance_now() - self.started).max(0.0)
    }

    fn now(&self) -> Duration {
        Duration::from_secs_f64(self.ms() / 1000.0)
    }

    /// Feeds one input and runs what follows.
    fn feed(self: &Rc<Self>, input: Input) {
        let now = self.now();
        self.state.borrow_mut().handle(now, input);
        self.pump();
    }

    /// Carries out every output, then sets the timer.
    fn pump(self: &Rc<Self>) {
        loop {
            let output = self.state.borrow_mut().poll_output();
            match output {
                Some(output) => self.carry_out(output),
                None => break,
            }
        }
        self.schedule();
    }

    fn schedule(self: &Rc<Self>) {
        let Some(due) = self.state.borrow().poll_timeout() else {
            return;
        };
        let due_ms = due.as_secs_f64() * 1000.0;
        if self.timer_at.get().is_some_and(|at| at <= due_ms) {
            return;
        }
        self.timer_at.set(Some(due_ms));
        let run = self.clone();
        spawn_local(async move {
            sleep(due_ms - run.ms()).await;
            if run.timer_at.get() == Some(due_ms) {
                run.timer_at.set(None);
            }
            let now = run.now();
            run.state.borrow_mut().handle_timeout(now);
            run.pump();
        });
    }

    fn carry_out(self: &Rc<Self>, output: Output) {
        match output {
            Output::StartLayer(Layer::Registry) => {
                for url in self.config.registries.clone() {
                    let run = self.clone();
                    spawn_local(async move { run.registry_source(url).await });
                }
            }
            Output::StartLayer(Layer::Doh) => {
                for (server, domain, name) in self.config.doh_queries() {
                    let run = self.clone();
                    spawn_local(async move { run.doh_source(server, domain, name).await });
                }
            }
            Output::StartLayer(layer) => {
                for input in self.local_layer(layer) {
                    let now = self.now();
                    self.state.borrow_mut().handle(now, input);
                }
            }
            Output::Check { candidate, url } => self.check(candidate, url),
            Output::Remember(checked) => {
                let result = match &self.store {
                    Some(store) => {
                        update(store, unix_ms(), |data| data.remember(checked, unix_ms()))
                    }
                    None => Ok(()),
                };
                let now = self.now();
                self.state
                    .borrow_mut()
                    .handle(now, Input::Remembered(result));
            }
            Output::Event(event) => self.event(event),
        }
    }

    fn event(self: &Rc<Self>, event: Event) {
        if let Some(on_event) = &self.on_event {
            let _ = on_event.call1(&JsValue::NULL, &event_to_js(&event));
        }
        match handover(&event) {
            Some(Handover::Verified(candidate)) => {
                let report = self.state.borrow().report(self.now());
                self.deliver_first(to_js(&FirstServer {
                    best: Some(candidate),
                    report,
                }));
            }
            Some(Handover::RunOver(best)) => {
                if let Event::Finished(report) = &event {
                    self.deliver_first(to_js(&FirstServer {
                        best,
                        report: (**report).clone(),
                    }));
                    let delivery =
                        std::mem::replace(&mut *self.delivery.borrow_mut(), Delivery::Delivered);
                    if let Delivery::Report(resolve) = delivery {
                        let _ = resolve.call1(&JsValue::NULL, &to_js(report));
                    }
                }
            }
            None => {}
        }
    }

    fn deliver_first(&self, value: JsValue) {
        let mut delivery = self.delivery.borrow_mut();
        if matches!(*delivery, Delivery::FirstServer(_)) {
            if let Delivery::FirstServer(resolve) =
                std::mem::replace(&mut *delivery, Delivery::Delivered)
            {
                drop(delivery);
                let _ = resolve.call1(&JsValue::NULL, &value);
            }
        }
    }

    /// The inputs of a local layer: one source per store, sharing link or
    /// typed URL, then the end of the layer.
    fn local_layer(&self, layer: Layer) -> Vec<Input> {
        let mut inputs = Vec::new();
        let mut add = |source: String, (outcome, detail, found): SourceFindings, started: f64| {
            inputs.push(Input::Source {
                layer,
                report: source_report(source, outcome, detail, &found, started, self.ms()),
                found,
            });
        };
        match layer {
            Layer::Cache | Layer::Referral => {
                if let Some(store) = &self.store {
                    let t = self.ms();
                    add(
                        format!("localStorage:{}", store.key),
                        store.data.source(layer, &store.warnings),
                        t,
                    );
                }
            }
            Layer::Qr => {
                for text in &self.config.share_links {
                    let t = self.ms();
                    add(
                        text.clone(),
                        share_link_source(text, &self.config.registry_keys),
                        t,
                    );
                }
            }
            Layer::Manual => {
                for text in &self.config.manual {
                    let t = self.ms();
                    add(text.clone(), manual_source(text), t);
                }
            }
            Layer::Registry | Layer::Doh => {}
        }
        inputs.push(Input::LayerDone(layer));
        inputs
    }

    async fn registry_source(self: Rc<Self>, url: Url) {
        let t = self.ms();
        let result = fetch_registry(&url, &self.config).await;
        let found = result.found();
        let report = source_report(
            servers_url(&url).to_string(),
            result.outcome,
            result.detail.clone(),
            &found,
            t,
            self.ms(),
        );
        self.feed(Input::Source {
            layer: Layer::Registry,
            report,
            found,
        });
    }

    async fn doh_source(self: Rc<Self>, server: Url, domain: String, name: String) {
        let t = self.ms();
        let answer = fetch_doh(&server, &name, self.config.layer_timeout).await;
        let (outcome, detail, found, refused) = if answer.outcome != Outcome::Ok {
            (answer.outcome, answer.detail, Vec::new(), Vec::new())
        } else {
            let check = txt::check_answer(
                &domain,
                &answer.records,
                &self.config.registry_keys,
                unix_ms() / 1000,
            );
            let found = check.entries.into_iter().map(Found::from).collect();
            if !check.revocations.is_empty() {
                if let Some(store) = self.store.as_ref().filter(|_| self.config.write_cache) {
                    let revocations = check.revocations.clone();
                    if let Err(e) = update(store, unix_ms(), |data| {
                        for revocation in revocations {
                            data.add_revocation(revocation);
                        }
                    }) {
                        self.state
                            .borrow_mut()
                            .warn(format!("revocations not written to the cache: {e}"));
                    }
                }
                self.feed(Input::Revoked(check.revocations));
            }
            (check.outcome, check.detail, found, check.refused)
        };
        let mut report = source_report(
            doh_source(&server, &name),
            outcome,
            detail,
            &found,
            t,
            self.ms(),
        );
        report.refused = refused;
        self.feed(Input::Source {
            layer: Layer::Doh,
            report,
            found,
        });
    }

    fn check(self: &Rc<Self>, candidate: CandidateId, url: Url) {
        let mut nonce = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut nonce) {
            let result = failed_check(Outcome::Error, format!("no random nonce: {e}"));
            let run = self.clone();
            spawn_local(async move { run.feed(Input::Checked { candidate, result }) });
            return;
        }
        let socket = match WebSocket::new(url.as_str()) {
            Ok(socket) => socket,
            Err(e) => {
                let result = failed_check(Outcome::Invalid, js_message(&e));
                let run = self.clone();
                spawn_local(async move { run.feed(Input::Checked { candidate, result }) });
                return;
            }
        };
        let check = Rc::new(Check {
            run: self.clone(),
            candidate,
            socket,
            probe: RefCell::new(Probe::new(nonce)),
            opened: Cell::new(false),
            done: Cell::new(false),
            handlers: RefCell::new(Vec::new()),
        });
        check.attach(self.config.probe_timeout);
    }
}

/// What `firstServer` resolves with.
#[derive(Serialize)]
struct FirstServer {
    best: Option<zajel_discovery_core::Candidate>,
    report: zajel_discovery_core::Report,
}

/// One running candidate check over the browser's WebSocket.
struct Check {
    run: Rc<Run>,
    candidate: CandidateId,
    socket: WebSocket,
    probe: RefCell<Probe>,
    opened: Cell<bool>,
    done: Cell<bool>,
    /// The socket's handlers, dropped after the check ends.
    handlers: RefCell<Vec<Box<dyn std::any::Any>>>,
}

impl Check {
    fn attach(self: &Rc<Self>, timeout: Duration) {
        let this = self.clone();
        let on_open = Closure::<dyn FnMut()>::new(move || this.opened.set(true));
        let this = self.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let step = match event.data().as_string() {
                Some(text) => this.probe.borrow_mut().on_message(&text, this.run.ms()),
                None => this.probe.borrow_mut().on_binary(),
            };
            match step {
                Step::Send(frames) => {
                    for frame in frames {
                        if let Err(e) = this.socket.send_with_str(&frame) {
                            let result = this.probe.borrow().on_closed(true, &js_message(&e));
                            this.finish(result);
                            return;
                        }
                    }
                }
                Step::Wait => {}
                Step::Done(result) => this.finish(result),
            }
        });
        let this = self.clone();
        let on_error = Closure::<dyn FnMut()>::new(move || {
            let result = this
                .probe
                .borrow()
                .on_closed(this.opened.get(), "WebSocket error");
            this.finish(result);
        });
        let this = self.clone();
        let on_close =
            Closure::<dyn FnMut(web_sys::CloseEvent)>::new(move |event: web_sys::CloseEvent| {
                let reason = format!("close code {} {}", event.code(), event.reason());
                let result = this
                    .probe
                    .borrow()
                    .on_closed(this.opened.get(), reason.trim());
                this.finish(result);
            });
        self.socket
            .set_onopen(Some(on_open.as_ref().unchecked_ref()));
        self.socket
            .set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        self.socket
            .set_onerror(Some(on_error.as_ref().unchecked_ref()));
        self.socket
            .set_onclose(Some(on_close.as_ref().unchecked_ref()));
        {
            let mut handlers = self.handlers.borrow_mut();
            handlers.push(Box::new(on_open));
            handlers.push(Box::new(on_message));
            handlers.push(Box::new(on_error));
            handlers.push(Box::new(on_close));
        }
        let this = self.clone();
        spawn_local(async move {
            sleep(timeout.as_secs_f64() * 1000.0).await;
            this.finish(Probe::timed_out(timeout.as_millis() as u64));
        });
    }

    fn finish(self: &Rc<Self>, result: CheckResult) {
        if self.done.replace(true) {
            return;
        }
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onerror(None);
        self.socket.set_onclose(None);
        let _ = self.socket.close();
        // The handlers may be running now: drop them after this task.
        let this = self.clone();
        spawn_local(async move {
            this.handlers.borrow_mut().clear();
            this.run.feed(Input::Checked {
                candidate: this.candidate,
                result,
            });
        });
    }
}

fn failed_check(outcome: Outcome, detail: String) -> CheckResult {
    CheckResult {
        outcome,
        detail,
        rtt_ms: None,
        announced_server_id: None,
        identity: zajel_discovery_core::identity::IdentityCheck::Unanswered(
            "the check did not get that far".into(),
        ),
    }
}

/// The message of a thrown JS value.
pub fn js_message(value: &JsValue) -> String {
    if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        let name = String::from(error.name());
        let message = String::from(error.message());
        return format!("{name}: {message}");
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// A fetch with an abort after `timeout`: the response, or the outcome and
/// why it failed.
async fn fetch_with_timeout(
    request: Request,
    controller: AbortController,
    timeout: Duration,
) -> Result<Response, (Outcome, String)> {
    let timed_out = Rc::new(Cell::new(false));
    {
        let timed_out = timed_out.clone();
        let controller = controller.clone();
        spawn_local(async move {
            sleep(timeout.as_secs_f64() * 1000.0).await;
            timed_out.set(true);
            controller.abort();
        });
    }
    match JsFuture::from(fetch_request(&request)).await {
        Ok(response) => Ok(response.unchecked_into()),
        Err(_) if timed_out.get() => Err((
            Outcome::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        )),
        Err(e) => Err((
            Outcome::Refused,
            format!(
                "fetch failed: {} (refused, blocked, a TLS failure, or not allowed by CORS)",
                js_message(&e)
            ),
        )),
    }
}

/// The body of a response, at most `limit` bytes.
async fn body(response: &Response, limit: usize) -> Result<Vec<u8>, (Outcome, String)> {
    if let Ok(Some(length)) = response.headers().get("content-length") {
        if length.parse::<usize>().is_ok_and(|n| n > limit) {
            return Err((Outcome::Protocol, format!("body larger than {limit} bytes")));
        }
    }
    let buffer = response
        .array_buffer()
        .map_err(|e| (Outcome::Error, js_message(&e)))?;
    let buffer = JsFuture::from(buffer).await.map_err(|e| {
        (
            Outcome::Refused,
            format!("reading the body: {}", js_message(&e)),
        )
    })?;
    let bytes = Uint8Array::new(&buffer);
    if bytes.length() as usize > limit {
        return Err((Outcome::Protocol, format!("body larger than {limit} bytes")));
    }
    Ok(bytes.to_vec())
}

/// Fetches and checks one registry's list.
async fn fetch_registry(registry: &Url, config: &Config) -> RegistryResult {
    let url = servers_url(registry);
    let controller = match AbortController::new() {
        Ok(controller) => controller,
        Err(e) => return RegistryResult::failed(Outcome::Error, js_message(&e)),
    };
    let init = RequestInit::new();
    init.set_method("GET");
    init.set_signal(Some(&controller.signal()));
    let request = match Request::new_with_str_and_init(url.as_str(), &init) {
        Ok(request) => request,
        Err(e) => return RegistryResult::failed(Outcome::Invalid, js_message(&e)),
    };
    let response = match fetch_with_timeout(request, controller, config.layer_timeout).await {
        Ok(response) => response,
        Err((outcome, detail)) => return RegistryResult::failed(outcome, detail),
    };
    let signature = response.headers().get(LIST_SIGNATURE_HEADER).ok().flatten();
    let body = match body(&response, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err((outcome, detail)) => return RegistryResult::failed(outcome, detail),
    };
    registry_list::check_response(
        response.status(),
        signature.as_deref(),
        &body,
        &config.registry_keys,
        unix_ms(),
    )
}

/// Asks one DoH server (RFC 8484 POST) for the TXT records at `name`.
async fn fetch_doh(server: &Url, name: &str, timeout: Duration) -> TxtAnswer {
    let query = match dns::txt_query(name) {
        Ok(query) => query,
        Err(e) => return TxtAnswer::failed(Outcome::Invalid, e.to_string()),
    };
    let controller = match AbortController::new() {
        Ok(controller) => controller,
        Err(e) => return TxtAnswer::failed(Outcome::Error, js_message(&e)),
    };
    let init = RequestInit::new();
    init.set_method("POST");
    init.set_signal(Some(&controller.signal()));
    let body_bytes = Uint8Array::from(query.as_slice());
    init.set_body(&body_bytes);
    let request = match Request::new_with_str_and_init(server.as_str(), &init) {
        Ok(request) => request,
        Err(e) => return TxtAnswer::failed(Outcome::Invalid, js_message(&e)),
    };
    let _ = request.headers().set("content-type", DNS_MESSAGE);
    let _ = request.headers().set("accept", DNS_MESSAGE);
    let response = match fetch_with_timeout(request, controller, timeout).await {
        Ok(response) => response,
        Err((outcome, detail)) => return TxtAnswer::failed(outcome, detail),
    };
    if !(200..300).contains(&response.status()) {
        return TxtAnswer::failed(
            Outcome::Protocol,
            format!("HTTP status {}", response.status()),
        );
    }
    let content_type = response
        .headers()
        .get("content-type")
        .ok()
        .flatten()
        .unwrap_or_default();
    if !content_type.starts_with(DNS_MESSAGE) {
        return TxtAnswer::failed(
            Outcome::Protocol,
            format!("answer of type {content_type:?}, not {DNS_MESSAGE}"),
        );
    }
    match body(&response, zajel_discovery_core::txt::MAX_ANSWER_BYTES).await {
        Ok(bytes) => dns::read_txt_answer(name, &bytes),
        Err((outcome, detail)) => TxtAnswer::failed(outcome, detail),
    }
}

/// Reads the stored value; a bad one is copied under `<key>.corrupt`,
/// removed, and said so.
pub fn load(storage: &Storage, key: &str, now_ms: u64) -> (StoreData, Vec<String>) {
    let value = match storage.get_item(key) {
        Ok(value) => value,
        Err(e) => {
            return (
                StoreData::default(),
                vec![format!("cache {key}: cannot read: {}", js_message(&e))],
            )
        }
    };
    match store::decode(value.as_deref(), now_ms) {
        Ok(data) => (data, Vec::new()),
        Err(error) => {
            let aside = format!("{key}.corrupt");
            if let Some(value) = &value {
                let _ = storage.set_item(&aside, value);
            }
            let _ = storage.remove_item(key);
            (
                StoreData::default(),
                vec![format!("cache {key}: {error}; set aside under {aside}")],
            )
        }
    }
}

/// Loads the value again, changes it, and writes it back in one `setItem`.
fn update(
    store: &LoadedStore,
    now_ms: u64,
    change: impl FnOnce(&mut StoreData),
) -> Result<(), String> {
    let (mut data, _) = load(&store.storage, &store.key, now_ms);
    change(&mut data);
    store::prune(&mut data, now_ms);
    store
        .storage
        .set_item(&store.key, &store::encode(&data))
        .map_err(|e| js_message(&e))
}

/// An event as the page's `onEvent` receives it.
fn event_to_js(event: &Event) -> JsValue {
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Js<'a> {
        LayerFinished {
            layer: &'a zajel_discovery_core::report::LayerReport,
        },
        CandidateChecked {
            candidate: &'a zajel_discovery_core::report::CandidateReport,
        },
        Usable {
            candidate: &'a zajel_discovery_core::Candidate,
        },
        Finished {
            report: &'a zajel_discovery_core::Report,
        },
    }
    let js = match event {
        Event::LayerFinished(layer) => Js::LayerFinished { layer },
        Event::CandidateChecked(candidate) => Js::CandidateChecked { candidate },
        Event::Usable(candidate) => Js::Usable { candidate },
        Event::Finished(report) => Js::Finished { report },
    };
    to_js(&js)
}

/// Adds a referral (a server a paired contact shared) to the store.
pub fn add_referral(key: &str, url: &str, code: &str) -> Result<(), String> {
    let code = code
        .parse::<zajel_wire::pairing::PairingCode>()
        .map_err(|e| e.to_string())?;
    zajel_wire::endpoint::signaling_url(url).map_err(|e| e.to_string())?;
    let storage = local_storage().ok_or("no localStorage here")?;
    let now = unix_ms();
    let store = LoadedStore {
        storage,
        key: key.to_string(),
        data: StoreData::default(),
        warnings: Vec::new(),
    };
    update(&store, now, |data| data.add_referral(url.trim(), code, now))
}
