//! A hostile relay: what a compromised relay operator can do to a call
//! (issue 13). It is a listed server in its own right (its own Ed25519
//! server key, its own `server_info` and `identity_proof`) that sits in
//! front of an honest relay-lite: each client that connects gets its own
//! upstream connection to the honest relay and frames are relayed both ways,
//! so pairing through it works.
//!
//! On calls it does what a hostile operator would, by [`Mode`]:
//! - [`Mode::Honest`]: a pure proxy (only `server_info`, `registered` and the
//!   identity challenge are its own).
//! - [`Mode::SwapFingerprints`], [`Mode::StripAuth`], [`Mode::SwapPairingKeys`]:
//!   a man in the middle. A caller's `call_offer` never reaches the callee:
//!   the relay answers it with its own webrtc-rs peer (a call-probe
//!   [`CallEngine`] *facing the caller*, impersonating the callee) and places
//!   its own call to the callee with another engine (*facing the callee*,
//!   impersonating the caller) under the same `callId`, so the DTLS
//!   fingerprints each endpoint sees are the relay's. Its engines send tones
//!   at the impersonated sides' frequencies (call-probe's engine cannot
//!   bridge audio). The forged `call_offer`/`call_answer` carry the original
//!   `auth` member copied over (`SwapFingerprints`: the MAC then fails on the
//!   fingerprints), none (`StripAuth`), or one the relay computed itself
//!   (`SwapPairingKeys`, which also replaces the pairing public keys with its
//!   own X25519 keys so that it shares a key with each side: the attack only
//!   an out-of-band key check stops).
//!
//! In `SwapFingerprints` the answer facing the caller is held until the
//! callee answers the forged offer (whose `auth` is then copied); when the
//! callee hangs up or rejects instead (it detected the attack), or stays
//! silent for [`HOLD_ANSWER`], the caller gets the answer anyway with the
//! only MAC the relay has seen for this call (the caller's own, replayed).
//!
//! Everything it did is counted in a [`Tally`] (calls intercepted, payloads
//! rewritten, keys swapped, the reports of its own peers), so tests can
//! assert that the attack actually happened. The `hostile-relay` binary
//! runs it as a process (the censorship suite starts it in a namespace).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use call_probe::call::{CallEngine, CallEvent};
use call_probe::config::{AnswerPolicy, CallConfig};
use call_probe::report::CallReport;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use url::Url;
use zajel_client_net::signaling::{tls_handshake, url_host, TrustAnchors};
use zajel_wire::call::{CallAuth, CallAuthRole, CallKind, CallPayload};
use zajel_wire::signaling::ServerMessage;
use zajel_wire::{keys, peer_keys};

/// What the relay does to calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A pure proxy.
    Honest,
    /// Man in the middle; the forged payloads carry the original `auth`.
    SwapFingerprints,
    /// Man in the middle; the forged payloads carry no `auth`.
    StripAuth,
    /// Man in the middle with its own pairing keys: valid MACs of its own.
    SwapPairingKeys,
}

impl Mode {
    /// Parses the snake_case name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "honest" => Self::Honest,
            "swap_fingerprints" => Self::SwapFingerprints,
            "strip_auth" => Self::StripAuth,
            "swap_pairing_keys" => Self::SwapPairingKeys,
            _ => return None,
        })
    }

    fn intercepts_calls(self) -> bool {
        self != Self::Honest
    }
}

/// How long the answer facing the caller waits for the callee's (to copy
/// its `auth`) in [`Mode::SwapFingerprints`].
pub const HOLD_ANSWER: Duration = Duration::from_secs(5);

/// How the relay is set up.
#[derive(Debug, Clone)]
pub struct HostileRelayConfig {
    pub mode: Mode,
    /// The honest relay every client is relayed to (`ws://` or `wss://`).
    pub upstream: Url,
    /// Whom the upstream `wss://` connection trusts.
    pub upstream_trust: TrustAnchors,
    /// The relay's own server identity.
    pub server_key: SigningKey,
    /// Its own endpoint, announced in `server_info` and signed in `identity_proof`.
    pub endpoint: String,
    pub region: String,
    /// The set-up of its engines (ICE, addresses; tone and answer policy are set per side).
    pub call: CallConfig,
    /// The tone its engine facing the callee sends (the caller's: call-probe `call` sends 440 Hz).
    pub caller_tone_hz: f64,
    /// The tone its engine facing the caller sends (the callee's: call-probe `answer` sends 660 Hz).
    pub callee_tone_hz: f64,
}

impl HostileRelayConfig {
    /// A relay on loopback in front of `upstream`, with a fresh server key.
    pub fn loopback(mode: Mode, upstream: Url) -> Self {
        Self {
            mode,
            upstream,
            upstream_trust: TrustAnchors::default(),
            server_key: crate::registry_host::random_key(),
            endpoint: String::new(),
            region: "test".into(),
            call: CallConfig::loopback(),
            caller_tone_hz: 440.0,
            callee_tone_hz: 660.0,
        }
    }

    /// The `ed25519:…` server id of its key.
    pub fn server_id(&self) -> String {
        keys::server_id_for(&self.server_key.verifying_key())
    }
}

/// One call the relay intercepted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InterceptedCall {
    pub call_id: String,
    pub caller_code: Option<String>,
    pub callee_code: String,
    /// The report of its engine that answered the caller (impersonating the callee).
    pub facing_caller: Option<CallReport>,
    /// The report of its engine that called the callee (impersonating the caller).
    pub facing_callee: Option<CallReport>,
}

/// What the relay did so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub connections: u64,
    /// `identity_challenge`s answered with its own key.
    pub identity_proofs: u64,
    /// Pairing public keys replaced by its own ([`Mode::SwapPairingKeys`]).
    pub pairing_keys_swapped: u64,
    /// `call_offer`s answered by its own peer instead of reaching the callee.
    pub calls_intercepted: u64,
    /// Call payloads it made up or changed on their way (offers, answers, ICE, callId).
    pub payloads_rewritten: u64,
    /// Forged payloads that got the original `auth` copied in.
    pub auth_copied: u64,
    /// Forged payloads that went without the `auth` their original had.
    pub auth_stripped: u64,
    /// Forged payloads with an `auth` the relay computed itself.
    pub auth_forged: u64,
    /// `call_hangup`s of intercepted calls from the caller and from the callee.
    pub hangups_from_caller: u64,
    pub hangups_from_callee: u64,
    pub calls: Vec<InterceptedCall>,
}

struct Shared {
    config: HostileRelayConfig,
    tally: watch::Sender<Tally>,
    /// [`Mode::SwapPairingKeys`]: the X25519 key the relay shows in place of each code's own.
    pairing: std::sync::Mutex<PairingKeys>,
}

#[derive(Default)]
struct PairingKeys {
    /// code → the relay's secret standing in for that code's key.
    standing_in: HashMap<String, [u8; 32]>,
    /// code → its real public key (from `register`, `pair_incoming`, `pair_matched`).
    real: HashMap<String, [u8; 32]>,
}

impl Shared {
    fn count(&self, change: impl FnOnce(&mut Tally)) {
        self.tally.send_modify(change);
    }

    /// The relay's public key standing in for `code`'s (made on first use).
    fn standing_in_for(&self, code: &str) -> [u8; 32] {
        let mut keys = self.pairing.lock().unwrap_or_else(|e| e.into_inner());
        let secret = *keys.standing_in.entry(code.to_string()).or_insert_with(|| {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).expect("randomness");
            seed
        });
        peer_keys::public_key(&secret)
    }

    fn remember_real_key(&self, code: &str, key: &str) {
        if let Some(key) = zajel_wire::pairing::decode_x25519_public_key(key) {
            let mut keys = self.pairing.lock().unwrap_or_else(|e| e.into_inner());
            keys.real.insert(code.to_string(), key);
        }
    }

    /// The relay's secret standing in for `impersonated` and `victim`'s real public key.
    fn forging_keys(&self, victim: &str, impersonated: &str) -> Option<ForgingKeys> {
        let keys = self.pairing.lock().unwrap_or_else(|e| e.into_inner());
        Some(ForgingKeys {
            standing_in: *keys.standing_in.get(impersonated)?,
            victim: *keys.real.get(victim)?,
        })
    }
}

/// [`Mode::SwapPairingKeys`]: what the relay needs to MAC a payload for one victim.
#[derive(Clone, Copy)]
struct ForgingKeys {
    /// The relay's X25519 secret the victim takes for its peer's key.
    standing_in: [u8; 32],
    /// The victim's real public key.
    victim: [u8; 32],
}

/// A running hostile relay; stops accepting when dropped (connections it
/// serves end with their sockets).
pub struct HostileRelay {
    pub address: SocketAddr,
    /// `ws://address` (or `wss://…` when serving TLS).
    pub url: String,
    pub server_id: String,
    tally: watch::Receiver<Tally>,
    accept: tokio::task::JoinHandle<()>,
}

impl HostileRelay {
    /// Serves on `listener` (plain `ws://`, or `wss://` with `tls`) on the
    /// current tokio runtime. An empty `config.endpoint` becomes the URL it
    /// listens on.
    pub fn start(
        listener: TcpListener,
        tls: Option<rustls::ServerConfig>,
        mut config: HostileRelayConfig,
    ) -> std::io::Result<Self> {
        zajel_client_net::tls::install_crypto_provider();
        let address = listener.local_addr()?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{address}");
        if config.endpoint.is_empty() {
            config.endpoint = url.clone();
        }
        let server_id = config.server_id();
        let (tally, tally_rx) = watch::channel(Tally::default());
        let shared = Arc::new(Shared {
            config,
            tally,
            pairing: Default::default(),
        });
        let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(Arc::new(tls)));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let result = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve(stream, shared).await,
                            Err(e) => Err(format!("TLS: {e}")),
                        },
                        None => serve(stream, shared).await,
                    };
                    if let Err(error) = result {
                        tracing_note(&format!("connection ended: {error}"));
                    }
                });
            }
        });
        Ok(Self {
            address,
            url,
            server_id,
            tally: tally_rx,
            accept,
        })
    }

    /// On 127.0.0.1 (a free port), plain `ws://`.
    pub async fn start_loopback(config: HostileRelayConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(listener, None, config)
    }

    /// What it did so far.
    pub fn tally(&self) -> Tally {
        self.tally.borrow().clone()
    }

    /// Changes of the tally, as they happen.
    pub fn watch(&self) -> watch::Receiver<Tally> {
        self.tally.clone()
    }

    /// Waits until the tally satisfies `done` (or `limit` passes: then the tally as it is).
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&Tally) -> bool,
    ) -> Result<Tally, Tally> {
        let mut watch = self.tally.clone();
        let waited = tokio::time::timeout(limit, watch.wait_for(|t| done(t))).await;
        match waited {
            Ok(Ok(tally)) => Ok(tally.clone()),
            _ => Err(self.tally()),
        }
    }
}

impl Drop for HostileRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn tracing_note(text: &str) {
    if std::env::var_os("ZAJEL_HOSTILE_RELAY_LOG").is_some() {
        eprintln!("hostile-relay: {text}");
    }
}

/// The `identity_proof` for `nonce` (standard base64 of 32 bytes) under the hostile relay's own
/// key: a listed server proves itself like any other (`zajel_wire`'s signature helpers).
pub fn identity_proof(key: &SigningKey, endpoint: &str, nonce: &str) -> Option<Value> {
    let nonce = zajel_wire::signature::decode_identity_nonce(nonce).ok()?;
    let proof = zajel_wire::signaling::IdentityProof::sign(key, &nonce, endpoint);
    Some(ServerMessage::IdentityProof(proof).to_json())
}

// ---- one client connection ------------------------------------------------

/// Which of the relay's two engines of an intercepted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Answers the caller, impersonating the callee.
    FacingCaller,
    /// Calls the callee, impersonating the caller.
    FacingCallee,
}

/// A call message one of the relay's engines sent (keyed by the caller's `callId`).
enum EngineOutput {
    Signal(String, Side, CallPayload),
}

/// Keeps the report of one of the relay's engines in the tally.
fn record_report(shared: &Shared, call_id: &str, side: Side, report: CallReport) {
    shared.count(|t| {
        if let Some(call) = t.calls.iter_mut().rev().find(|c| c.call_id == call_id) {
            match side {
                Side::FacingCaller => call.facing_caller = Some(report),
                Side::FacingCallee => call.facing_callee = Some(report),
            }
        }
    });
}

/// An intercepted call, seen from the caller's connection (the call's key is
/// the caller's `callId`).
struct Mitm {
    callee: String,
    /// Kept so the engine lives as long as the call (dropping every handle stops it).
    _facing_caller: CallEngine,
    facing_callee: CallEngine,
    facing_caller_in: mpsc::Sender<CallPayload>,
    facing_callee_in: mpsc::Sender<CallPayload>,
    /// The `callId` the engine facing the callee chose (it is sent as the caller's).
    inner_call_id: Option<String>,
    /// The callee's messages that came before that `callId` was known.
    early_from_callee: Vec<CallPayload>,
    /// The caller's `auth` (from its offer), if any.
    caller_auth: Option<Value>,
    /// The callee's `auth` (from its answer to the forged offer), if any.
    callee_auth: Option<Value>,
    /// What the engine facing the caller said, held until the answer may go.
    held: Option<Vec<CallPayload>>,
}

/// Frames for the client and for the upstream relay.
struct Outbox {
    client: mpsc::UnboundedSender<String>,
    upstream: mpsc::UnboundedSender<String>,
}

struct Connection {
    shared: Arc<Shared>,
    out: Outbox,
    code: Option<String>,
    calls: HashMap<String, Mitm>,
    engine_tx: mpsc::UnboundedSender<EngineOutput>,
    release_tx: mpsc::UnboundedSender<String>,
}

async fn serve<S>(stream: S, shared: Arc<Shared>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = tokio_tungstenite::accept_async(stream)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    shared.count(|t| t.connections += 1);
    let upstream = connect_upstream(&shared.config).await?;
    let (mut client_sink, mut client_stream) = client.split();
    let (mut upstream_sink, mut upstream_stream) = upstream.split();
    let (client_tx, mut client_rx) = mpsc::unbounded_channel::<String>();
    let (upstream_tx, mut upstream_rx) = mpsc::unbounded_channel::<String>();
    let to_client = tokio::spawn(async move {
        while let Some(text) = client_rx.recv().await {
            if client_sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = client_sink.close().await;
    });
    let to_upstream = tokio::spawn(async move {
        while let Some(text) = upstream_rx.recv().await {
            if upstream_sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = upstream_sink.close().await;
    });
    let (engine_tx, mut engine_rx) = mpsc::unbounded_channel();
    let (release_tx, mut release_rx) = mpsc::unbounded_channel();
    let mut connection = Connection {
        shared,
        out: Outbox {
            client: client_tx,
            upstream: upstream_tx,
        },
        code: None,
        calls: HashMap::new(),
        engine_tx,
        release_tx,
    };
    // Greet first, as every relay does, under its own server id: a client (or a registry's
    // admission check) that sends `identity_challenge` at once must not get the proof before
    // the greeting.
    let config = &connection.shared.config;
    connection.send_client(
        json!({"type": "server_info", "serverId": config.server_id(),
        "endpoint": config.endpoint, "region": config.region}),
    );
    loop {
        tokio::select! {
            frame = client_stream.next() => match frame {
                Some(Ok(Message::Text(text))) => connection.on_client_frame(text.as_str()).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            frame = upstream_stream.next() => match frame {
                Some(Ok(Message::Text(text))) => connection.on_upstream_frame(text.as_str()).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(output) = engine_rx.recv() => connection.engine_output(output).await,
            Some(call_id) = release_rx.recv() => connection.release(&call_id),
        }
    }
    // The caller is gone: its callees hear so (before the upstream closes); dropping the
    // engines hangs their calls up.
    let intercepted: Vec<String> = connection.calls.keys().cloned().collect();
    for call_id in intercepted {
        connection.hang_up_callee(&call_id);
    }
    connection.calls.clear();
    drop(connection);
    let _ = to_client.await;
    let _ = to_upstream.await;
    Ok(())
}

type UpstreamSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect_upstream(config: &HostileRelayConfig) -> Result<UpstreamSocket, String> {
    let url = &config.upstream;
    let host = url_host(url).ok_or("upstream URL without a host")?;
    let port = url
        .port_or_known_default()
        .ok_or("upstream URL without a port")?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("upstream {url}: {e}"))?;
    let stream = if url.scheme() == "wss" {
        let tls = config
            .upstream_trust
            .client_config()
            .map_err(|e| e.to_string())?;
        tls_handshake(&host, tcp, tls)
            .await
            .map_err(|e| format!("upstream TLS {url}: {e}"))?
    } else {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .map_err(|e| format!("upstream upgrade {url}: {e}"))?;
    Ok(socket)
}

fn text_of(frame: &Value, field: &str) -> Option<String> {
    frame.get(field).and_then(Value::as_str).map(str::to_string)
}

impl Connection {
    fn send_client(&self, frame: Value) {
        let _ = self.out.client.send(frame.to_string());
    }

    fn send_upstream(&self, frame: Value) {
        let _ = self.out.upstream.send(frame.to_string());
    }

    /// A frame the client sent (for the relay).
    async fn on_client_frame(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            let _ = self.out.upstream.send(text.to_string());
            return;
        };
        let kind = text_of(&frame, "type").unwrap_or_default();
        if kind.starts_with("call_") {
            tracing_note(&format!(
                "{:?} from client: {kind} {}",
                self.code, frame["payload"]["callId"]
            ));
        }
        match kind.as_str() {
            "identity_challenge" => {
                let config = &self.shared.config;
                let nonce = text_of(&frame, "nonce").unwrap_or_default();
                match identity_proof(&config.server_key, &config.endpoint, &nonce) {
                    Some(proof) => {
                        self.shared.count(|t| t.identity_proofs += 1);
                        self.send_client(proof);
                    }
                    None => self.send_client(json!({"type": "error",
                        "message": "identity_challenge: nonce must be 32 bytes, standard base64"})),
                }
                return;
            }
            "register" => {
                self.code = text_of(&frame, "pairingCode");
                if let (Some(code), Some(key)) = (&self.code, text_of(&frame, "publicKey")) {
                    self.shared.remember_real_key(code, &key);
                }
            }
            "call_offer" if self.shared.config.mode.intercepts_calls() => {
                let intercepted = self.intercept_offer(&frame).await;
                if intercepted {
                    return;
                }
            }
            "call_answer" | "call_ice" | "call_hangup" | "call_reject" => {
                let call_id = frame["payload"]["callId"].as_str().unwrap_or_default();
                if self.calls.contains_key(call_id) {
                    self.caller_to_relay(&kind, &frame).await;
                    return;
                }
            }
            _ => {}
        }
        // Anything else goes through as it is.
        let _ = self.out.upstream.send(text.to_string());
    }

    /// A frame the upstream relay sent (for the client).
    async fn on_upstream_frame(&mut self, text: &str) {
        let Ok(mut frame) = serde_json::from_str::<Value>(text) else {
            let _ = self.out.client.send(text.to_string());
            return;
        };
        let kind = text_of(&frame, "type").unwrap_or_default();
        if kind.starts_with("call_") {
            tracing_note(&format!(
                "{:?} from upstream: {kind} {}",
                self.code, frame["payload"]["callId"]
            ));
        }
        let config = &self.shared.config;
        match kind.as_str() {
            // It greeted the client itself on connect (below): the honest relay's greeting
            // would name the honest relay.
            "server_info" => return,
            "registered" if frame.get("serverId").is_some() => {
                frame["serverId"] = json!(config.server_id());
            }
            "pair_incoming" => self.swap_pairing_key(&mut frame, "fromCode", "fromPublicKey"),
            "pair_matched" => self.swap_pairing_key(&mut frame, "peerCode", "peerPublicKey"),
            "call_answer" | "call_ice" | "call_hangup" | "call_reject" => {
                let call_id = frame["payload"]["callId"].as_str().unwrap_or_default();
                if self.calls.contains_key(call_id) {
                    self.callee_to_relay(&kind, &frame).await;
                    return;
                }
            }
            _ => {
                let _ = self.out.client.send(text.to_string());
                return;
            }
        }
        self.send_client(frame);
    }

    /// [`Mode::SwapPairingKeys`]: shows the client the relay's key instead of the peer's.
    fn swap_pairing_key(&self, frame: &mut Value, code_field: &str, key_field: &str) {
        let (Some(peer), Some(key)) = (text_of(frame, code_field), text_of(frame, key_field))
        else {
            return;
        };
        self.shared.remember_real_key(&peer, &key);
        if self.shared.config.mode != Mode::SwapPairingKeys {
            return;
        }
        let standing_in = self.shared.standing_in_for(&peer);
        frame[key_field] = json!(zajel_wire::pairing::encode_x25519_public_key(&standing_in));
        self.shared.count(|t| t.pairing_keys_swapped += 1);
    }

    /// The caller's offer: answered by the relay's engine, and a call of the
    /// relay's own placed to the callee. Returns whether it was intercepted.
    async fn intercept_offer(&mut self, frame: &Value) -> bool {
        let (Some(callee), Ok(offer)) = (
            text_of(frame, "target"),
            for_relay_engine(CallKind::Offer, &frame["payload"]),
        ) else {
            return false;
        };
        let call_id = offer.call_id().to_string();
        if self.calls.contains_key(&call_id) {
            // A renegotiation of an intercepted call: its engine handles it.
            self.caller_to_relay("call_offer", frame).await;
            return true;
        }
        let with_video = frame["payload"]["withVideo"].as_bool().unwrap_or(false);
        let config = &self.shared.config;
        let mut facing_caller_config = config.call.clone();
        facing_caller_config.tone_hz = config.callee_tone_hz;
        facing_caller_config.answer_policy = AnswerPolicy::Accept;
        let mut facing_callee_config = config.call.clone();
        facing_callee_config.tone_hz = config.caller_tone_hz;
        facing_callee_config.answer_policy = AnswerPolicy::Decline;
        let (facing_caller_in, facing_caller) =
            self.spawn_engine(facing_caller_config, &call_id, Side::FacingCaller);
        let (facing_callee_in, facing_callee) =
            self.spawn_engine(facing_callee_config, &call_id, Side::FacingCallee);
        let hold = config.mode == Mode::SwapFingerprints;
        self.calls.insert(
            call_id.clone(),
            Mitm {
                callee: callee.clone(),
                _facing_caller: facing_caller,
                facing_callee: facing_callee.clone(),
                facing_caller_in: facing_caller_in.clone(),
                facing_callee_in,
                inner_call_id: None,
                early_from_callee: Vec::new(),
                caller_auth: frame["payload"].get("auth").cloned(),
                callee_auth: None,
                held: hold.then(Vec::new),
            },
        );
        let caller = self.code.clone();
        self.shared.count(|t| {
            t.calls_intercepted += 1;
            t.calls.push(InterceptedCall {
                call_id: call_id.clone(),
                caller_code: caller,
                callee_code: callee,
                ..InterceptedCall::default()
            });
        });
        tracing_note(&format!("intercepted call {call_id}"));
        if hold {
            let release = self.release_tx.clone();
            let id = call_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(HOLD_ANSWER).await;
                let _ = release.send(id);
            });
        }
        let _ = facing_caller_in.send(offer).await;
        match facing_callee.place_call(with_video).await {
            Ok(inner) => {
                if let Some(mitm) = self.calls.get_mut(&call_id) {
                    mitm.inner_call_id = Some(inner.clone());
                    let early = std::mem::take(&mut mitm.early_from_callee);
                    let input = mitm.facing_callee_in.clone();
                    for mut payload in early {
                        set_call_id(&mut payload, &inner);
                        let _ = input.send(payload).await;
                    }
                }
            }
            Err(error) => tracing_note(&format!("could not call the callee: {error}")),
        }
        true
    }

    fn spawn_engine(
        &self,
        config: CallConfig,
        call_id: &str,
        side: Side,
    ) -> (mpsc::Sender<CallPayload>, CallEngine) {
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, mut out_rx) = mpsc::channel::<CallPayload>(64);
        let (engine, mut events) = CallEngine::spawn(config, in_rx, out_tx);
        let outputs = self.engine_tx.clone();
        let shared = self.shared.clone();
        let id = call_id.to_string();
        tokio::spawn(async move {
            let mut signaling_open = true;
            loop {
                tokio::select! {
                    payload = out_rx.recv(), if signaling_open => match payload {
                        Some(payload) => {
                            let _ = outputs.send(EngineOutput::Signal(id.clone(), side, payload));
                        }
                        None => signaling_open = false,
                    },
                    event = events.recv() => match event {
                        // Recorded here, not by the connection: the report also
                        // comes when the connection is gone (its engines dropped).
                        Some(CallEvent::Ended(report)) => record_report(&shared, &id, side, *report),
                        Some(_) => {}
                        None => break,
                    },
                }
            }
        });
        (in_tx, engine)
    }

    /// A call message from the caller about an intercepted call: for the relay's engine facing it.
    async fn caller_to_relay(&mut self, kind: &str, frame: &Value) {
        let Some(kind) = CallKind::from_type(kind) else {
            return;
        };
        let call_id = frame["payload"]["callId"].as_str().unwrap_or_default();
        let Some(mitm) = self.calls.get(call_id) else {
            return;
        };
        if let Ok(payload) = for_relay_engine(kind, &frame["payload"]) {
            let _ = mitm.facing_caller_in.send(payload).await;
        }
        if kind == CallKind::Hangup {
            self.shared.count(|t| t.hangups_from_caller += 1);
            // Straight to the callee (queued before the connection may close), then the engine.
            self.hang_up_callee(call_id);
            if let Some(mitm) = self.calls.get(call_id) {
                let _ = mitm.facing_callee.hangup().await;
            }
        }
    }

    /// Tells the callee of an intercepted call that it is over (as the caller would).
    fn hang_up_callee(&self, call_id: &str) {
        if let Some(mitm) = self.calls.get(call_id) {
            self.send_upstream(json!({"type": "call_hangup", "target": mitm.callee,
                "payload": {"callId": call_id}}));
        }
    }

    /// A call message from the callee about an intercepted call: for the
    /// relay's engine facing it (under that engine's own `callId`).
    async fn callee_to_relay(&mut self, kind: &str, frame: &Value) {
        let Some(kind) = CallKind::from_type(kind) else {
            return;
        };
        let call_id = frame["payload"]["callId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some(mitm) = self.calls.get_mut(&call_id) else {
            return;
        };
        let Ok(mut payload) = for_relay_engine(kind, &frame["payload"]) else {
            return;
        };
        match kind {
            CallKind::Answer => mitm.callee_auth = frame["payload"].get("auth").cloned(),
            CallKind::Hangup => self.shared.count(|t| t.hangups_from_callee += 1),
            _ => {}
        }
        self.shared.count(|t| t.payloads_rewritten += 1);
        match mitm.inner_call_id.clone() {
            Some(inner) => {
                set_call_id(&mut payload, &inner);
                let _ = mitm.facing_callee_in.send(payload).await;
            }
            None => mitm.early_from_callee.push(payload),
        }
        // The callee answered (its auth can be copied) or gave up (it may have
        // detected the attack): the caller gets its answer now.
        if matches!(kind, CallKind::Answer | CallKind::Hangup | CallKind::Reject) {
            self.release(&call_id);
        }
    }

    /// Sends what the engine facing the caller held back.
    fn release(&mut self, call_id: &str) {
        let Some(mitm) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(held) = mitm.held.take() else {
            return;
        };
        for payload in held {
            self.forward_facing_caller(call_id, payload);
        }
    }

    async fn engine_output(&mut self, output: EngineOutput) {
        match output {
            EngineOutput::Signal(call_id, Side::FacingCaller, payload) => {
                let Some(mitm) = self.calls.get_mut(&call_id) else {
                    return;
                };
                if let Some(held) = mitm.held.as_mut() {
                    held.push(payload);
                    return;
                }
                self.forward_facing_caller(&call_id, payload);
            }
            EngineOutput::Signal(call_id, Side::FacingCallee, mut payload) => {
                let Some(mitm) = self.calls.get(&call_id) else {
                    return;
                };
                set_call_id(&mut payload, &call_id);
                let mut body = payload.to_json();
                if payload.kind() == CallKind::Offer {
                    let auth = mitm.caller_auth.clone();
                    let keys = self.forging_keys(&mitm.callee, Side::FacingCallee);
                    self.dress(&mut body, auth, keys, CallAuthRole::Offer);
                }
                self.shared.count(|t| t.payloads_rewritten += 1);
                let callee = mitm.callee.clone();
                self.send_upstream(json!({"type": payload.kind().type_name(),
                    "target": callee, "payload": body}));
            }
        }
    }

    /// Sends a payload of the engine facing the caller to the caller, as if from the callee.
    fn forward_facing_caller(&self, call_id: &str, payload: CallPayload) {
        let Some(mitm) = self.calls.get(call_id) else {
            return;
        };
        let mut body = payload.to_json();
        if payload.kind() == CallKind::Answer {
            // The callee's own auth when it answered; else the only MAC seen for this call.
            let auth = mitm.callee_auth.clone().or(mitm.caller_auth.clone());
            let keys = self.forging_keys(&mitm.callee, Side::FacingCaller);
            self.dress(&mut body, auth, keys, CallAuthRole::Answer);
        }
        self.shared.count(|t| t.payloads_rewritten += 1);
        self.send_client(json!({"type": payload.kind().type_name(),
            "from": mitm.callee, "payload": body}));
    }

    /// [`Mode::SwapPairingKeys`]: the keys to MAC what the engine on `side` sends.
    fn forging_keys(&self, callee: &str, side: Side) -> Option<ForgingKeys> {
        let caller = self.code.as_deref()?;
        match side {
            Side::FacingCaller => self.shared.forging_keys(caller, callee),
            Side::FacingCallee => self.shared.forging_keys(callee, caller),
        }
    }

    /// Puts the `auth` member the mode calls for into a forged offer or answer.
    fn dress(
        &self,
        body: &mut Value,
        original: Option<Value>,
        keys: Option<ForgingKeys>,
        role: CallAuthRole,
    ) {
        let Some(object) = body.as_object_mut() else {
            return;
        };
        match self.shared.config.mode {
            Mode::Honest => {}
            Mode::SwapFingerprints => match original {
                Some(auth) => {
                    object.insert("auth".into(), auth);
                    self.shared.count(|t| t.auth_copied += 1);
                }
                None => {
                    object.remove("auth");
                }
            },
            Mode::StripAuth => {
                if object.remove("auth").is_some() || original.is_some() {
                    self.shared.count(|t| t.auth_stripped += 1);
                }
            }
            Mode::SwapPairingKeys => match keys.and_then(|k| forge_auth(k, object, role)) {
                Some(auth) => {
                    object.insert("auth".into(), auth);
                    self.shared.count(|t| t.auth_forged += 1);
                }
                None => {
                    object.remove("auth");
                }
            },
        }
    }
}

/// [`Mode::SwapPairingKeys`]: a valid `auth` member for `payload` (its
/// `callId` and SDP as they go out), made the way call-probe makes its own:
/// the pair's call-auth key from the relay's standing-in secret and the
/// victim's key, the standing-in key as sender, the victim as receiver.
fn forge_auth(
    keys: ForgingKeys,
    payload: &serde_json::Map<String, Value>,
    role: CallAuthRole,
) -> Option<Value> {
    let call_id = payload.get("callId")?.as_str()?;
    let sdp = payload.get("sdp")?.as_str()?;
    let session = peer_keys::session_key(&keys.standing_in, &keys.victim).ok()?;
    let auth = CallAuth::sign(
        &peer_keys::call_auth_key(&session),
        role,
        call_id,
        sdp,
        &peer_keys::public_key(&keys.standing_in),
        &keys.victim,
    );
    serde_json::to_value(auth).ok()
}

/// A payload for one of the relay's engines, without its `auth` (the relay
/// checks nothing; an engine given an `auth` it cannot verify refuses the call).
fn for_relay_engine(
    kind: CallKind,
    payload: &Value,
) -> Result<CallPayload, zajel_wire::call::CallPayloadError> {
    let mut payload = payload.clone();
    if let Some(object) = payload.as_object_mut() {
        object.remove("auth");
    }
    CallPayload::parse(kind, &payload)
}

fn set_call_id(payload: &mut CallPayload, call_id: &str) {
    let target = match payload {
        CallPayload::Offer(p) => &mut p.call_id,
        CallPayload::Answer(p) => &mut p.call_id,
        CallPayload::Reject(p) => &mut p.call_id,
        CallPayload::Hangup(p) => &mut p.call_id,
        CallPayload::Ice(p) => &mut p.call_id,
    };
    *target = call_id.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `SwapPairingKeys` sends verifies for its victim, who takes the
    /// relay's standing-in key for its peer's: the victim's own check passes.
    #[test]
    fn a_forged_auth_verifies_for_the_victim() {
        let standing_in = [3u8; 32];
        let victim_secret = [9u8; 32];
        let victim = peer_keys::public_key(&victim_secret);
        let sdp = "v=0\r\na=fingerprint:sha-256 AB:CD\r\n";
        let call_id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let payload = json!({"callId": call_id, "sdp": sdp});
        let auth = forge_auth(
            ForgingKeys {
                standing_in,
                victim,
            },
            payload.as_object().unwrap(),
            CallAuthRole::Answer,
        )
        .expect("an auth");
        let session =
            peer_keys::session_key(&victim_secret, &peer_keys::public_key(&standing_in)).unwrap();
        let auth = CallAuth::from_value(&auth);
        let key = peer_keys::call_auth_key(&session);
        let sender = peer_keys::public_key(&standing_in);
        assert!(auth.verify(&key, CallAuthRole::Answer, call_id, sdp, &sender, &victim));
        // Not for another role, call or SDP.
        assert!(!auth.verify(&key, CallAuthRole::Offer, call_id, sdp, &sender, &victim));
        let other_sdp = "v=0\r\na=fingerprint:sha-256 AB:CE\r\n";
        assert!(!auth.verify(
            &key,
            CallAuthRole::Answer,
            call_id,
            other_sdp,
            &sender,
            &victim
        ));
    }

    #[test]
    fn modes_have_snake_case_names() {
        for mode in [
            Mode::Honest,
            Mode::SwapFingerprints,
            Mode::StripAuth,
            Mode::SwapPairingKeys,
        ] {
            let name = serde_json::to_value(mode).unwrap();
            assert_eq!(Mode::from_name(name.as_str().unwrap()), Some(mode));
        }
        assert_eq!(Mode::from_name("evil"), None);
    }

    #[test]
    fn an_identity_proof_needs_a_32_byte_nonce() {
        use base64::engine::general_purpose::STANDARD as BASE64;
        use base64::Engine as _;
        let key = SigningKey::from_bytes(&[5u8; 32]);
        assert!(identity_proof(&key, "wss://r.example", &BASE64.encode([1u8; 31])).is_none());
        assert!(identity_proof(&key, "wss://r.example", "not base64").is_none());
        let proof = identity_proof(&key, "wss://r.example", &BASE64.encode([1u8; 32])).unwrap();
        assert_eq!(proof["serverId"], keys::server_id_for(&key.verifying_key()));
        assert_eq!(proof["endpoint"], "wss://r.example");
    }
}
