//! zajel-discovery-web: Zajel discovery in the browser, a wasm-bindgen
//! package (built by `scripts/build-web`) whose `discover(options)` returns
//! the same report as `zajel-discover --json`. It drives discovery-core's
//! sans-IO machine with browser I/O (`fetch`, `localStorage`, `WebSocket`,
//! `setTimeout`); the rules themselves are discovery-core's, shared with the
//! native client.
//!
//! Layout:
//! - [`options`]: the page's options, checked, and the machine's rules;
//! - [`dns`]: RFC 8484 DNS messages (TXT query, reading the answer);
//! - [`store`]: the cache and referrals as one versioned, digest-checked
//!   storage value (no torn writes);
//! - [`call_auth`]: the page's pairing identity and the `auth` of its calls
//!   (so calls with call-probe are authenticated both ways);
//! - [`probe`]: the candidate check (greeting, identity challenge, ping) as a
//!   sans-IO conversation;
//! - `web` (wasm32 only): the browser driver and the exported functions.
//!
//! Everything but `web` is plain Rust and unit-tested natively
//! (`cargo test -p discovery-web`).

pub mod call_auth;
pub mod dns;
pub mod options;
pub mod probe;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod web;

#[cfg(target_arch = "wasm32")]
mod exports {
    //! The functions and TypeScript types the package exports.

    use js_sys::{Function, Promise, Reflect};
    use wasm_bindgen::prelude::*;
    use zajel_discovery_core::share::ShareLink;

    use crate::call_auth::{self, CallAuthError, CallKeys};
    use crate::options::{Options, DEFAULT_STORAGE_KEY};
    use crate::web::{self, Delivery, Run};

    #[wasm_bindgen(typescript_custom_section)]
    const TYPES: &'static str = r#"
/** What to look in and how long to wait (every field optional). */
export interface DiscoverOptions {
  /** Registry base URLs (GET <url>/servers); the registry must allow the page's origin by CORS and expose X-Bootstrap-Signature. */
  registries?: string[];
  /** Pinned registry keys (standard base64, or "ed25519:" + base64): lists and TXT records must be signed by one. */
  registryKeys?: string[];
  /** DNS-over-HTTPS endpoints (RFC 8484, POST application/dns-message), e.g. "https://cloudflare-dns.com/dns-query". */
  dohServers?: string[];
  /** Domains whose _zajel.<domain> TXT records carry servers. */
  domains?: string[];
  /** zajel:// sharing links (e.g. read from a QR code). */
  shareLinks?: string[];
  /** Server URLs typed by the user. */
  manual?: string[];
  /** Accept loopback and private addresses (tests, LANs). */
  allowPrivate?: boolean;
  /** localStorage key of the cache and referrals (default "zajel.discovery"). */
  storageKey?: string;
  /** No cache or referral layer, nothing stored. */
  noCache?: boolean;
  /** Write the servers that answered to the cache (default true). */
  writeCache?: boolean;
  layerTimeoutMs?: number;
  probeTimeoutMs?: number;
  staggerMs?: number;
  maxParallelProbes?: number;
  stallAfterMs?: number;
  maxProbesInFlight?: number;
  /** Called with each event as the run learns it. */
  onEvent?: (event: DiscoveryEvent) => void;
}

export type Layer = "registry" | "doh" | "cache" | "referral" | "qr" | "manual";
export type Outcome = "ok" | "empty" | "not_configured" | "timed_out" | "refused" | "tls_failure"
  | "dns_failure" | "invalid_signature" | "stale" | "private_address" | "protocol" | "invalid"
  | "error" | "pending" | "identity_mismatch" | "identity_unproven" | "revoked";
export type Verdict = "verified" | "unverified" | "nothing";

/** A usable server. */
export interface Candidate {
  url: string;
  sources: Layer[];
  verified: boolean;
  signed: boolean;
  server_id?: string;
  proven_server_id?: string;
  rtt_ms?: number;
  last_ok_ms?: number;
}

export interface SourceReport {
  source: string;
  outcome: Outcome;
  detail: string;
  candidates: string[];
  refused: unknown[];
  started_ms: number;
  finished_ms: number;
}

export interface LayerReport {
  layer: Layer;
  outcome: Outcome;
  detail: string;
  sources: SourceReport[];
  [field: string]: unknown;
}

export interface CandidateReport {
  url: string;
  outcome: Outcome;
  detail: string;
  rtt_ms?: number;
  checked_ms?: number;
  [field: string]: unknown;
}

/** The report of a run: the same JSON as `zajel-discover --json`. */
export interface Report {
  started_at_ms: number;
  duration_ms: number;
  complete: boolean;
  verdict: Verdict;
  best?: Candidate;
  first_verified_ms?: number;
  first_usable_ms?: number;
  layers: LayerReport[];
  candidates: CandidateReport[];
  warnings?: string[];
}

export type DiscoveryEvent =
  | { type: "layer_finished"; layer: LayerReport }
  | { type: "candidate_checked"; candidate: CandidateReport }
  | { type: "usable"; candidate: Candidate }
  | { type: "finished"; report: Report };

/** What firstServer resolves with: the first verified usable server, or the best known when the run ended or the limit passed. */
export interface FirstServer {
  best: Candidate | null;
  report: Report;
}

/** A parsed zajel:// link. */
export interface ShareLinkInfo {
  code: string;
  servers: string[];
  registry_key?: string;
}
"#;

    fn js_error(kind: &str, message: &str) -> JsValue {
        let error = js_sys::Error::new(message);
        let _ = Reflect::set(&error, &"kind".into(), &kind.into());
        error.into()
    }

    fn setup(options: &JsValue) -> Result<(crate::options::Config, Option<Function>), JsValue> {
        let text = if options.is_undefined() || options.is_null() {
            String::new()
        } else {
            js_sys::JSON::stringify(options)
                .map(String::from)
                .map_err(|e| js_error("options_shape", &web::js_message(&e)))?
        };
        let config = Options::from_json(&text)
            .and_then(Options::check)
            .map_err(|e| js_error(e.kind(), &e.to_string()))?;
        let on_event = if options.is_object() {
            Reflect::get(options, &"onEvent".into())
                .ok()
                .and_then(|f| f.dyn_into::<Function>().ok())
        } else {
            None
        };
        Ok((config, on_event))
    }

    /// Runs discovery to its end; resolves with the report (the JSON of
    /// `zajel-discover --json`). Rejects only on bad options (an `Error`
    /// with a `kind`).
    #[wasm_bindgen(unchecked_return_type = "Promise<Report>")]
    pub fn discover(
        #[wasm_bindgen(unchecked_param_type = "DiscoverOptions")] options: JsValue,
    ) -> Promise {
        match setup(&options) {
            Ok((config, on_event)) => Promise::new(&mut |resolve, _reject| {
                Run::new(config.clone(), on_event.clone()).start(Delivery::Report(resolve), None);
            }),
            Err(error) => Promise::reject(&error),
        }
    }

    /// Resolves with the first verified usable server as soon as one
    /// answers, or, when the run ends or `limitMs` passes first, the best
    /// usable one known then (possibly unverified, possibly none). The run
    /// goes on in the background and still updates the cache.
    #[wasm_bindgen(js_name = firstServer, unchecked_return_type = "Promise<FirstServer>")]
    pub fn first_server(
        #[wasm_bindgen(unchecked_param_type = "DiscoverOptions")] options: JsValue,
        #[wasm_bindgen(js_name = limitMs)] limit_ms: f64,
    ) -> Promise {
        match setup(&options) {
            Ok((config, on_event)) => Promise::new(&mut |resolve, _reject| {
                Run::new(config.clone(), on_event.clone())
                    .start(Delivery::FirstServer(resolve), Some(limit_ms));
            }),
            Err(error) => Promise::reject(&error),
        }
    }

    /// Reads a `zajel://` sharing link (throws an `Error` with kind `share_link`).
    #[wasm_bindgen(js_name = parseShareLink, unchecked_return_type = "ShareLinkInfo")]
    pub fn parse_share_link(text: &str) -> Result<JsValue, JsValue> {
        let link = ShareLink::parse(text).map_err(|e| js_error("share_link", &e.to_string()))?;
        Ok(web::to_js(&link))
    }

    /// Keeps a server a paired contact shared (the referral layer of later
    /// runs), under `storageKey` (default "zajel.discovery").
    #[wasm_bindgen(js_name = addReferral)]
    pub fn add_referral(
        url: &str,
        code: &str,
        #[wasm_bindgen(js_name = storageKey)] storage_key: Option<String>,
    ) -> Result<(), JsValue> {
        let key = storage_key.unwrap_or_else(|| DEFAULT_STORAGE_KEY.to_string());
        web::add_referral(&key, url, code).map_err(|e| js_error("referral", &e))
    }

    /// The page's pairing identity for authenticated calls: an X25519 secret
    /// kept inside the module (never exported), its public key for
    /// `register`, and the `auth` of offers and answers (`zajel_wire::call`).
    #[wasm_bindgen(js_name = CallIdentity)]
    pub struct CallIdentity {
        keys: CallKeys,
    }

    fn auth_error(e: CallAuthError) -> JsValue {
        js_error(e.kind(), &e.to_string())
    }

    #[wasm_bindgen(js_class = CallIdentity)]
    impl CallIdentity {
        /// A fresh identity.
        #[wasm_bindgen(constructor)]
        pub fn new() -> Result<CallIdentity, JsValue> {
            Ok(Self {
                keys: CallKeys::generate().map_err(auth_error)?,
            })
        }

        /// The public key (standard base64) for `register`'s `publicKey`.
        #[wasm_bindgen(getter, js_name = publicKey)]
        pub fn public_key(&self) -> String {
            self.keys.public_key()
        }

        /// The `auth` member (`{v, mac}`) of our `role` ("offer" or "answer")
        /// payload, for the peer key `pair_matched` handed.
        #[wasm_bindgen(unchecked_return_type = "{ v: number; mac: string }")]
        pub fn sign(
            &self,
            #[wasm_bindgen(js_name = peerPublicKey)] peer_public_key: &str,
            role: &str,
            #[wasm_bindgen(js_name = callId)] call_id: &str,
            sdp: &str,
        ) -> Result<JsValue, JsValue> {
            let role = call_auth::role(role).map_err(auth_error)?;
            let auth = self
                .keys
                .sign(peer_public_key, role, call_id, sdp)
                .map_err(auth_error)?;
            Ok(web::to_js(&auth))
        }

        /// Whether the peer's `auth` (as received; absent is `undefined`,
        /// which fails) authenticates its `role` payload.
        pub fn verify(
            &self,
            #[wasm_bindgen(js_name = peerPublicKey)] peer_public_key: &str,
            role: &str,
            #[wasm_bindgen(js_name = callId)] call_id: &str,
            sdp: &str,
            auth: JsValue,
        ) -> Result<bool, JsValue> {
            let role = call_auth::role(role).map_err(auth_error)?;
            let auth = if auth.is_undefined() || auth.is_null() {
                return Ok(false);
            } else {
                js_sys::JSON::stringify(&auth)
                    .ok()
                    .and_then(|text| serde_json::from_str(&String::from(text)).ok())
                    .unwrap_or(serde_json::Value::Null)
            };
            self.keys
                .verify(peer_public_key, role, call_id, sdp, &auth)
                .map_err(auth_error)
        }
    }

    /// Whether the DTLS certificate the peer presented (`getStats`'
    /// `certificate.base64Certificate` of the transport's remote
    /// certificate) is one its authenticated SDP named.
    #[wasm_bindgen(js_name = certificateMatches)]
    pub fn certificate_matches(sdp: &str, base64_certificate: &str) -> bool {
        call_auth::certificate_matches(sdp, base64_certificate)
    }

    /// The package's version.
    #[wasm_bindgen]
    pub fn version() -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
}
