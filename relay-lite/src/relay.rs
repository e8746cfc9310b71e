//! Starting and stopping a relay: the listener and accept loop with the
//! connection caps, TLS, routing each connection to HTTP or a WebSocket
//! session, the registry memberships, and graceful shutdown (close 1001,
//! signed unregister).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use ed25519_dalek::SigningKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use zajel_client_net::keyfile;
use zajel_wire::entry::UNKNOWN_REGION;
use zajel_wire::keys;
use zajel_wire::signaling::ServerMessage;

use crate::config::{IceConfig, RelayConfig};
use crate::http::{self, Route};
use crate::hub::{Hub, PairingSettings};
use crate::limits::{AddressCounter, AddressSlot};
use crate::membership::Membership;
use crate::metrics::{Metrics, Refusal};
use crate::relay_requests::RelayRequests;
use crate::session;
use crate::tls;
use crate::turn::TurnServer;

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}: {source}{}", zajel_client_net::logging::listen_hint(*address, source))]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Identity(#[from] keyfile::KeyFileError),
    #[error("invalid public endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid registry URL {url:?}: {reason}")]
    Registry { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error(transparent)]
    Turn(#[from] crate::turn::TurnError),
    #[error("cannot open the rendezvous database {path}: {source}")]
    Rendezvous {
        path: String,
        source: crate::rendezvous_store::StoreError,
    },
}

/// The listen backlog (the kernel caps it at `net.core.somaxconn`): large,
/// so that a burst of reconnecting clients is not dropped into SYN retries.
pub const LISTEN_BACKLOG: u32 = 4096;

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Over-limit connections answered with 503/429 at once; more are closed unanswered.
pub const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// State every connection shares.
pub(crate) struct Shared {
    pub hub: Arc<Hub>,
    /// Rendezvous, device linking and peer relays.
    pub relay_requests: Arc<RelayRequests>,
    pub metrics: Arc<Metrics>,
    pub config: RelayConfig,
    pub server_id: String,
    /// The key behind `server_id`: signs `identity_proof`s (never logged).
    pub identity: SigningKey,
    /// The endpoint sent in `server_info` and registered: what proofs sign.
    pub endpoint: String,
    pub server_info: String,
    pub shutdown: watch::Receiver<bool>,
    /// The same stop, as sessions wait for it.
    pub sessions_stop: Arc<StopSignal>,
    /// Links with the other servers of the fleet.
    pub federation: Arc<crate::federation::Federation>,
    next_connection: AtomicU64,
    started: StdInstant,
}

impl Shared {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// A relay; see [`Relay::start`].
pub struct Relay;

/// A started relay. Dropping it without [`RunningRelay::shutdown`] stops
/// accepting but does not close clients gracefully.
pub struct RunningRelay {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    server_id: String,
    endpoint: String,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    memberships: Vec<JoinHandle<()>>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    turn: Option<TurnServer>,
    /// The certificates of `wss:` and `turns:`, by listener, to reload.
    certificates: Vec<(&'static str, Arc<tls::ServedCertificate>)>,
    certificate_watch: Option<JoinHandle<()>>,
}

impl Relay {
    /// Binds the listener, starts serving and joins the registries.
    pub async fn start(mut config: RelayConfig) -> Result<RunningRelay, Error> {
        zajel_client_net::tls::install_crypto_provider();
        let key = match &config.identity {
            Some(key) => key.clone(),
            None => keyfile::random_key()?,
        };
        let server_id = keys::server_id_for(&key.verifying_key());
        let mut certificates = Vec::new();
        let acceptor = match &config.tls {
            Some(files) => {
                let (server_config, served) = tls::server_config(&files.cert, &files.key)?;
                certificates.push(("wss", served));
                Some(tokio_rustls::TlsAcceptor::from(server_config))
            }
            None => None,
        };
        if let Some(turn_tls) = config.turn.as_ref().and_then(|turn| turn.tls.as_ref()) {
            certificates.push(("turns", turn_tls.certificate().clone()));
        }
        let listener = listen(config.listen).map_err(|source| Error::Listen {
            address: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            address: config.listen,
            source,
        })?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(
                listen(address)
                    .and_then(|listener| Ok((listener.local_addr()?, listener)))
                    .map_err(|source| Error::Listen { address, source })?,
            ),
            None => None,
        };
        let scheme = if acceptor.is_some() { "wss" } else { "ws" };
        let endpoint = config
            .public_endpoint
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{local_addr}"));
        zajel_wire::endpoint::validate_endpoint(&endpoint).map_err(|e| Error::Endpoint {
            endpoint: endpoint.clone(),
            reason: e.to_string(),
        })?;
        for url in &config.bootstrap {
            let parsed = url::Url::parse(url).map_err(|e| Error::Registry {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(Error::Registry {
                    url: url.clone(),
                    reason: "must be an http:// or https:// URL with a host".into(),
                });
            }
        }
        if !config.bootstrap.is_empty() && config.public_endpoint.is_none() {
            tracing::warn!(
                %endpoint,
                "no --public-endpoint: registering the listen address; clients elsewhere may not reach it"
            );
        }
        let metrics = config.metrics.clone().unwrap_or_default();
        let turn = match &config.turn {
            Some(turn_config) => {
                // TURN never relays into the signaling port (no loops).
                let mut turn_config = turn_config.clone();
                turn_config.own_addresses.push(local_addr);
                let server = TurnServer::start(turn_config.clone()).await?;
                metrics.turn().attach(server.counters());
                config.ice = Some(ice_for_embedded_turn(
                    config.ice.take(),
                    &turn_config,
                    &server,
                ));
                tracing::info!(udp = ?server.udp_addr(), tcp = ?server.tcp_addr(), tls = ?server.tls_addr(), "embedded TURN server started");
                Some(server)
            }
            None => None,
        };
        let hub = Hub::new(
            PairingSettings {
                timeout: config.timeouts.pair_request,
                warning: config.timeouts.pair_expiring_warning,
                max_pending_per_target: config.limits.max_pending_per_target,
                max_pending_per_target_per_address: config
                    .limits
                    .max_pending_per_target_per_address,
                max_pending_per_requester: config.limits.max_pending_per_requester,
                code_grace: config.timeouts.code_grace,
                max_held_codes: config.limits.max_connections,
            },
            metrics.clone(),
        );
        // Federating (a registry to learn the fleet from): points placed by
        // the rings over the fleet (`crate::ownership`); else all local.
        let fleet = Arc::new(crate::federation::FleetView::default());
        let links = Arc::new(crate::federation::Links::default());
        let federating = config.federation.enabled && !config.bootstrap.is_empty();
        let ownership = if federating {
            Arc::new(crate::ownership::FleetRing::new(
                &server_id,
                &endpoint,
                fleet.clone(),
                links.clone(),
            ))
            .ownership()
        } else {
            crate::rendezvous::local_only()
        };
        let relay_requests = RelayRequests::open(
            &config.rendezvous,
            ownership,
            hub.clone(),
            metrics.clone(),
            server_id.clone(),
        )
        .map_err(|source| Error::Rendezvous {
            path: config
                .rendezvous
                .database
                .as_ref()
                .map_or_else(|| ":memory:".to_string(), |path| path.display().to_string()),
            source,
        })?;
        let server_info = ServerMessage::ServerInfo {
            server_id: server_id.clone(),
            endpoint: endpoint.clone(),
            region: config
                .region
                .clone()
                .unwrap_or_else(|| UNKNOWN_REGION.to_string()),
        }
        .to_text();
        let (stop, stopped) = watch::channel(false);
        let max_connections = u32::try_from(config.limits.max_connections)
            .unwrap_or(u32::MAX)
            .clamp(1, 1 << 28);
        let connections = Arc::new(Semaphore::new(max_connections as usize));
        if federating {
            relay_requests.attach_federation(links.clone());
            tokio::spawn(relay_requests.clone().run_refresh(
                fleet.subscribe(),
                links.subscribe(),
                stopped.clone(),
            ));
            tokio::spawn(count_forwarding_links(
                links.clone(),
                metrics.clone(),
                stopped.clone(),
            ));
        }
        let federation = Arc::new(crate::federation::Federation {
            key: key.clone(),
            own_id: server_id.clone(),
            endpoint: endpoint.clone(),
            region: config.region.clone(),
            config: config.federation.clone(),
            fleet: fleet.clone(),
            links,
        });
        tokio::spawn(relay_requests.clone().run_cleanup(stopped.clone()));
        let sessions_stop = Arc::new(StopSignal::default());
        tokio::spawn({
            let (sessions_stop, mut stopped) = (sessions_stop.clone(), stopped.clone());
            async move {
                stopping(&mut stopped).await;
                sessions_stop.stop();
            }
        });
        let shared = Arc::new(Shared {
            hub,
            relay_requests,
            metrics: metrics.clone(),
            config: config.clone(),
            server_id: server_id.clone(),
            identity: key.clone(),
            endpoint: endpoint.clone(),
            server_info,
            shutdown: stopped.clone(),
            sessions_stop,
            federation: federation.clone(),
            next_connection: AtomicU64::new(1),
            started: StdInstant::now(),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            acceptor,
            connections.clone(),
            AddressCounter::new(config.limits.max_connections_per_address),
        ));
        let metrics_addr = metrics_listener.map(|(address, listener)| {
            tokio::spawn(metrics_loop(listener, shared.clone()));
            address
        });
        let certificate_check = config.timeouts.certificate_check;
        let certificate_watch = (!certificate_check.is_zero()
            && certificates
                .iter()
                .any(|(_, served)| served.files().is_some()))
        .then(|| {
            tokio::spawn(watch_certificates(
                certificates.clone(),
                certificate_check,
                stopped.clone(),
            ))
        });
        let mut memberships = Vec::new();
        if !config.bootstrap.is_empty() {
            let http = crate::membership::registry_http(config.membership.request_timeout)
                .map_err(Error::HttpClient)?;
            for registry in &config.bootstrap {
                let membership = Membership {
                    registry: registry.clone(),
                    key: key.clone(),
                    endpoint: endpoint.clone(),
                    region: config.region.clone(),
                    config: config.membership.clone(),
                    metrics: metrics.clone(),
                    http: http.clone(),
                    fleet: fleet.clone(),
                };
                memberships.push(tokio::spawn(membership.run(stopped.clone())));
            }
            memberships.push(tokio::spawn(federation.run_dialler(stopped.clone())));
        }
        Ok(RunningRelay {
            local_addr,
            metrics_addr,
            server_id,
            endpoint,
            metrics,
            shared,
            stop,
            accept: Some(accept),
            memberships,
            connections,
            max_connections,
            turn,
            certificates,
            certificate_watch,
        })
    }
}

/// What registered clients are told about an embedded TURN server: the
/// URLs given, or else one per listener (`turn:` over UDP and TCP,
/// `turns:` over TLS, at the listener's address, or at the advertised
/// address when it listens on every interface), with its secret.
/// Keeps `relay_federation_forwarding_links` up to date until shutdown.
async fn count_forwarding_links(
    links: Arc<crate::federation::Links>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = links.subscribe();
    loop {
        metrics.set_federation_forwarding_links(links.forwarding().len());
        tokio::select! {
            () = stopping(&mut shutdown) => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

fn ice_for_embedded_turn(
    ice: Option<IceConfig>,
    turn: &crate::turn::TurnConfig,
    server: &TurnServer,
) -> IceConfig {
    let advertised = |address: SocketAddr| {
        let ip = if address.ip().is_unspecified() {
            turn.external_ip.unwrap_or(turn.relay_ip)
        } else {
            address.ip()
        };
        SocketAddr::new(ip, address.port())
    };
    let mut ice = ice.unwrap_or_else(|| IceConfig {
        turn_urls: Vec::new(),
        stun_urls: Vec::new(),
        secret: turn.secret.clone(),
        ttl: crate::config::DEFAULT_ICE_TTL,
    });
    if ice.turn_urls.is_empty() {
        let listeners = [
            ("turn", server.udp_addr(), "udp"),
            ("turn", server.tcp_addr(), "tcp"),
            ("turns", server.tls_addr(), "tcp"),
        ];
        ice.turn_urls = listeners
            .into_iter()
            .filter_map(|(scheme, address, transport)| {
                address.map(|a| format!("{scheme}:{}?transport={transport}", advertised(a)))
            })
            .collect();
    }
    ice
}

impl RunningRelay {
    /// Where the relay listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` listens on its own (`RelayConfig::metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `ed25519:<base64 public key>`.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The endpoint sent in `server_info` and registered.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The relay's metrics (the TURN server updates [`Metrics::turn`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The embedded TURN server, when [`RelayConfig::turn`] asked for one.
    pub fn turn(&self) -> Option<&TurnServer> {
        self.turn.as_ref()
    }

    /// Codes registered now.
    pub fn registered_codes(&self) -> usize {
        self.shared.hub.registered()
    }

    /// Re-reads the TLS certificate files of `wss:` and `turns:` (SIGHUP):
    /// new handshakes get the new certificates, established connections
    /// keep theirs; a certificate that cannot be loaded is logged and the
    /// old one kept. Returns each listener's outcome.
    pub fn reload_certificates(&self) -> Vec<(&'static str, Result<bool, tls::TlsError>)> {
        self.certificates
            .iter()
            .filter_map(|(listener, served)| {
                Some((*listener, served.reload_logged(listener, false)?))
            })
            .collect()
    }

    /// Stops accepting, closes every client with 1001, unregisters from
    /// every registry, and returns once all of that is done (clients that
    /// do not answer are dropped after the shutdown grace period).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(watch) = self.certificate_watch.take() {
            watch.abort();
        }
        if let Some(turn) = self.turn.take() {
            turn.close().await;
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let grace = self.shared.config.timeouts.shutdown_grace * 3;
        let _ =
            tokio::time::timeout(grace, self.connections.acquire_many(self.max_connections)).await;
        for membership in self.memberships.drain(..) {
            let _ = membership.await;
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Reloads each certificate whose files changed, every `every`, until stopped.
async fn watch_certificates(
    certificates: Vec<(&'static str, Arc<tls::ServedCertificate>)>,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        for (listener, served) in &certificates {
            let _ = served.reload_logged(listener, true);
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<Semaphore>,
    addresses: AddressCounter,
) {
    let mut shutdown = shared.shutdown.clone();
    // Refusals are answered by short-lived tasks; past this many at once,
    // further over-limit connections are just closed.
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    loop {
        let (stream, peer) = tokio::select! {
            () = crate::relay::stopping(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: wait a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            shared.metrics.refused(Refusal::ConnectionLimit);
            tracing::debug!(%peer, "connection limit reached");
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(
                    stream,
                    permit,
                    "503 Service Unavailable",
                    "Too many connections",
                ));
            }
            continue;
        };
        let Some(slot) = addresses.acquire(peer.ip()) else {
            shared.metrics.refused(Refusal::AddressLimit);
            tracing::debug!(%peer, "per-address connection limit reached");
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(refuse(
                    stream,
                    permit,
                    "429 Too Many Requests",
                    "Too many connections from this address",
                ));
            }
            continue;
        };
        tokio::spawn(connection(
            stream,
            peer,
            shared.clone(),
            acceptor.clone(),
            permit,
            slot,
        ));
    }
}

async fn refuse(
    mut stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    status: &'static str,
    message: &'static str,
) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        http::respond(
            &mut stream,
            status,
            "application/json",
            "",
            &http::error_body(message),
        ),
    )
    .await;
}

/// What an accepted connection holds until it ends, whichever task it is
/// in by then: its places under the connection limits, and its count in
/// the metrics.
pub(crate) struct ConnectionHold {
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ConnectionHold {
    fn new(permit: OwnedSemaphorePermit, slot: AddressSlot, shared: &Shared) -> Self {
        shared.metrics.connection_opened();
        Self {
            _permit: permit,
            _slot: slot,
            metrics: shared.metrics.clone(),
        }
    }
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// An accepted connection's first task: the TLS handshake, the request
/// head and the upgrade. A signaling session gets a task of its own (see
/// [`serve`]) and this one ends, so an idle connection holds no room for
/// the handshake's states.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    slot: AddressSlot,
) {
    let hold = ConnectionHold::new(permit, slot, &shared);
    match acceptor {
        Some(acceptor) => {
            let handshake = shared.config.timeouts.handshake;
            let mut shutdown = shared.shutdown.clone();
            let accepted = tokio::select! {
                // Boxed, like everything below that a plain connection only
                // passes through.
                accepted = tokio::time::timeout(handshake, Box::pin(acceptor.accept(stream))) => accepted,
                () = stopping(&mut shutdown) => return,
            };
            match accepted {
                Ok(Ok(tls)) => Box::pin(serve(tls, peer, &shared, hold)).await,
                Ok(Err(error)) => {
                    shared.metrics.refused(Refusal::Handshake);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    shared.metrics.refused(Refusal::Handshake);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
        None => serve(stream, peer, &shared, hold).await,
    }
}

async fn serve<S>(mut stream: S, peer: SocketAddr, shared: &Arc<Shared>, hold: ConnectionHold)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = shared.config.timeouts.handshake;
    let mut shutdown = shared.shutdown.clone();
    let head = tokio::select! {
        head = tokio::time::timeout(handshake, Box::pin(http::read_request(&mut stream))) => head,
        () = stopping(&mut shutdown) => return,
    };
    let route = match head {
        Ok(Ok(route)) => route,
        Ok(Err(http::HeadError::TooLarge)) => {
            shared.metrics.refused(Refusal::Handshake);
            let _ = http::respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "application/json",
                "",
                &http::error_body("Request head too large"),
            )
            .await;
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "no request");
            return;
        }
        Err(_) => {
            shared.metrics.refused(Refusal::Handshake);
            tracing::debug!(%peer, "no request head within the handshake timeout");
            return;
        }
    };
    let json = "application/json";
    let result = match route {
        Route::WebSocket {
            key,
            rest,
            federation,
        } => {
            if Box::pin(http::accept_upgrade(&mut stream, &key))
                .await
                .is_err()
            {
                return;
            }
            if federation {
                let ws = Box::pin(WebSocketStream::from_partially_read(
                    stream,
                    rest,
                    Role::Server,
                    Some(crate::federation::ws_config()),
                ))
                .await;
                Box::pin(
                    shared
                        .federation
                        .clone()
                        .serve_accepted(ws, shared.shutdown.clone()),
                )
                .await;
                return;
            }
            let limits = &shared.config.limits;
            let ws_config = WebSocketConfig::default()
                .read_buffer_size(session::READ_BUFFER_BYTES)
                .write_buffer_size(session::WRITE_BATCH_BYTES)
                .max_message_size(Some(limits.max_frame_bytes))
                .max_frame_size(Some(limits.max_frame_bytes));
            // Boxed: the stream is built in the box and only moved out of it,
            // so this task never holds room for a whole WebSocket state.
            let ws = Box::pin(WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(ws_config),
            ))
            .await;
            // Its own task: this one (and its room for the handshake) ends
            // here. Split first, so the session's task holds two pointers to
            // the stream, not room for a whole one.
            let (sink, stream) = futures_util::StreamExt::split(ws);
            tokio::spawn(session::run(sink, stream, shared.clone(), peer, hold));
            return;
        }
        Route::Health => {
            let body = health_body(shared);
            http::respond(&mut stream, "200 OK", json, "", &body).await
        }
        Route::Metrics if shared.config.metrics_listen.is_some() => {
            // Metrics have their own address: not on the public port.
            http::respond(
                &mut stream,
                "404 Not Found",
                json,
                "",
                &http::error_body("Not Found"),
            )
            .await
        }
        Route::Metrics => {
            let body = shared.metrics.render();
            http::respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                "",
                &body,
            )
            .await
        }
        Route::NotFound => {
            http::respond(
                &mut stream,
                "404 Not Found",
                json,
                "",
                &http::error_body("Not Found"),
            )
            .await
        }
        Route::MethodNotAllowed => {
            http::respond(
                &mut stream,
                "405 Method Not Allowed",
                json,
                "Allow: GET\r\n",
                &http::error_body("Method Not Allowed"),
            )
            .await
        }
        Route::UpgradeRequired => {
            shared.metrics.refused(Refusal::Handshake);
            http::respond(
                &mut stream,
                "426 Upgrade Required",
                json,
                "Sec-WebSocket-Version: 13\r\n",
                &http::error_body("Unsupported WebSocket version"),
            )
            .await
        }
        Route::BadRequest(reason) => {
            shared.metrics.refused(Refusal::Handshake);
            http::respond(
                &mut stream,
                "400 Bad Request",
                json,
                "",
                &http::error_body(reason),
            )
            .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "answer not written");
    }
}

/// The metrics listener (`--metrics-listen`): plain HTTP, `GET /metrics`
/// and `GET /health` only, one request per connection, until the relay stops.
async fn metrics_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = stopping(&mut shutdown) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let handshake = shared.config.timeouts.handshake;
            let route = tokio::time::timeout(handshake, http::read_request(&mut stream)).await;
            let _ = match route {
                Ok(Ok(Route::Metrics)) => {
                    let body = shared.metrics.render();
                    http::respond(
                        &mut stream,
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        "",
                        &body,
                    )
                    .await
                }
                Ok(Ok(Route::Health)) => {
                    let body = health_body(&shared);
                    http::respond(&mut stream, "200 OK", "application/json", "", &body).await
                }
                Ok(Ok(_)) => {
                    http::respond(
                        &mut stream,
                        "404 Not Found",
                        "application/json",
                        "",
                        &http::error_body("Not Found"),
                    )
                    .await
                }
                _ => Ok(()),
            };
        });
    }
}

fn health_body(shared: &Shared) -> String {
    let metrics = &shared.metrics;
    serde_json::json!({
        "status": "ok",
        "service": "relay-lite",
        "version": env!("CARGO_PKG_VERSION"),
        "serverId": shared.server_id,
        "connections": metrics.websocket_sessions(),
        "registeredCodes": metrics.registered_codes(),
        "registries": metrics.registries_registered(),
        "turnAllocations": metrics.turn().snapshot().current_allocations,
        "uptimeSeconds": shared.started.elapsed().as_secs(),
    })
    .to_string()
}

/// The relay's stop as every session waits for it: a flag and one wake for
/// all. Its wait is half the size of a watch receiver's, in every session.
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    stopped: AtomicBool,
    wake: tokio::sync::Notify,
}

impl StopSignal {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Completes once [`Self::stop`] was called.
    pub async fn stopped(&self) {
        let wake = self.wake.notified();
        tokio::pin!(wake);
        // Registered before the flag is read: a stop in between still wakes it.
        wake.as_mut().enable();
        if !self.stopped.load(Ordering::Acquire) {
            wake.await;
        }
    }
}

/// Completes once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Reads an identity file if given (creating it), else draws a throwaway key.
pub fn identity_from(path: Option<&std::path::Path>) -> Result<(SigningKey, bool), Error> {
    Ok(match path {
        Some(path) => keyfile::load_or_create(path)?,
        None => (keyfile::random_key()?, true),
    })
}
