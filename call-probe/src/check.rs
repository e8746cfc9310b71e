//! `call-probe check`: what works from this network, without a peer (like Tailscale's
//! netcheck, for calls).
//!
//! 1. Discovery (every configured layer, with its report) picks a relay.
//! 2. Signaling: TCP connect, TLS handshake (`wss://`), WebSocket upgrade, `server_info`,
//!    `register` (asking for `ice_servers`), an `identity_challenge` on that same connection
//!    (judged against the key discovery's entry named: `ok`, `identity_unproven`,
//!    `identity_mismatch`, reported, not a failure of the check), and a `ping` → `pong` round
//!    trip; then, since relay-lite gives TURN credentials only to a paired connection, a
//!    pairing with a second connection of ours (`client::ice_servers_by_self_pairing`).
//! 3. STUN binding over UDP to the relay's STUN server (or its TURN server, which answers
//!    binding requests too): the server-reflexive address, and whether UDP works at all.
//! 4. TURN over UDP, over TCP and over TLS (the last two through relay-lite's stream bridge,
//!    which is how calls use them), with the relay's credentials: per transport, two
//!    allocations and a datagram through the first's relayed address to the second's and
//!    back ([`crate::relay_probe`]); when that fails, a datagram to our own server-reflexive
//!    address and back (for relays that cannot reach their own public address). A transport
//!    counts only once a round trip happened: a server that allocates but relays nothing is
//!    reported `allocated` but not `ok`, with why (`not_relayed`).
//! 5. The network ([`crate::netcheck`]): a global IPv6 address, UDP over IPv6 to the relay's
//!    STUN/TURN server, and whether the NAT mapping is endpoint-independent.
//! 6. The call paths that exist: direct UDP, TURN/UDP, TURN/TCP, TURN/TLS; calls can be made
//!    when a TURN transport relayed (or, with no TURN offered at all, when UDP works). When
//!    no server was chosen, the report says why (`no_server_reason`; the table has the server
//!    choice's `why none` rows).
//!
//! Exit codes: [`EXIT_OK`], [`EXIT_NO_SERVER`], [`EXIT_SIGNALING_BLOCKED`],
//! [`EXIT_NO_MEDIA_PATH`]; `call` and `answer` add [`EXIT_NOT_AUTHENTICATED`] (all listed in
//! [`EXIT_CODES_HELP`], the table both CLIs share: `discovery_client::exit`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery_client::discovery::Config as DiscoveryConfig;
use discovery_client::exit;
use serde::Serialize;
use tokio::net::UdpSocket;
use webrtc::turn::client::{Client as TurnClient, ClientConfig as TurnClientConfig};
use webrtc::util::Conn;
use zajel_client_net::signaling::{IdentityAnswer, TrustAnchors};
use zajel_client_net::turn_bridge::StreamBridge;

use crate::choose::{ChooseError, ServerChoice};
use crate::client::{self, parse_ice_url, TurnRouteError, TurnTransport};
use crate::error::{session_kind, ErrorKind};
use crate::netcheck::{self, NetworkCheck};
use crate::relay_probe::{self, RelayError};
use crate::table::{self, list, ms_rows, row};

/// At least one call path exists.
pub const EXIT_OK: u8 = exit::OK;
/// Discovery found no server that answers.
pub const EXIT_NO_SERVER: u8 = exit::NO_SERVER;
/// A server was found but the signaling session could not be opened or used.
pub const EXIT_SIGNALING_BLOCKED: u8 = exit::SIGNALING_BLOCKED;
/// Signaling works but no media path does (no UDP, no TURN of any kind).
pub const EXIT_NO_MEDIA_PATH: u8 = exit::NO_MEDIA_PATH;
/// `call`/`answer`: a call failed call authentication (`media_not_authenticated`), or the
/// answerer's key was not the pinned one (`peer_key_mismatch`).
pub const EXIT_NOT_AUTHENTICATED: u8 = exit::NOT_AUTHENTICATED;
/// Every exit code of `call-probe` (the table both CLIs share), for `--help`.
pub const EXIT_CODES_HELP: &str = exit::HELP;

/// Why `check` could not run at all (a blocked path is a verdict, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Choose(#[from] ChooseError),
}

impl CheckError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Choose(error) => error.kind(),
        }
    }
}

/// Why one STUN binding or TURN allocation failed (its Display is the check's `error`).
#[derive(Debug, thiserror::Error)]
pub enum MediaCheckError {
    /// `what`: "STUN/TURN" or "TURN".
    #[error("not a {0} URL")]
    NotAnIceUrl(&'static str),
    #[error("the relay hands out no STUN or TURN/UDP server")]
    NoStunServer,
    #[error("not offered by the relay")]
    NotOffered,
    #[error(transparent)]
    Route(#[from] TurnRouteError),
    #[error("UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{0}")]
    Turn(#[source] webrtc::turn::Error),
    #[error("{0}")]
    RelayedAddress(#[source] webrtc::util::Error),
    #[error("no answer within {0:?} (UDP blocked?)")]
    NoStunAnswer(Duration),
    #[error("no allocation within {0:?}")]
    NoAllocation(Duration),
    /// `what`: "TCP connect" or "TCP connect or TLS handshake".
    #[error("no allocation within {limit:?}: the {what} to {server} failed")]
    StreamFailed {
        limit: Duration,
        what: &'static str,
        server: SocketAddr,
    },
    /// Allocated, but no datagram went through the relay and back.
    #[error(transparent)]
    NotRelayed(#[from] RelayError),
}

impl MediaCheckError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotAnIceUrl(_) => ErrorKind::NotAnIceUrl,
            Self::NoStunServer | Self::NotOffered => ErrorKind::NotOffered,
            Self::Route(error) => error.kind(),
            Self::Socket(_) => ErrorKind::UdpSocket,
            Self::Turn(_) | Self::RelayedAddress(_) => ErrorKind::TurnClient,
            Self::NoStunAnswer(_) => ErrorKind::NoStunAnswer,
            Self::NoAllocation(_) => ErrorKind::NoAllocation,
            Self::StreamFailed { .. } => ErrorKind::TurnStreamFailed,
            Self::NotRelayed(_) => ErrorKind::NotRelayed,
        }
    }
}

/// What `check` does.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub discovery: DiscoveryConfig,
    pub trust: TrustAnchors,
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Each step may take this long.
    pub step_timeout: Duration,
}

/// The signaling session's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignalingCheck {
    pub url: String,
    pub ok: bool,
    pub server_id: Option<String>,
    pub resolve_ms: Option<f64>,
    pub tcp_connect_ms: Option<f64>,
    pub tls_handshake_ms: Option<f64>,
    pub websocket_upgrade_ms: Option<f64>,
    pub greeting_ms: Option<f64>,
    pub register_ms: Option<f64>,
    pub round_trip_ms: Option<f64>,
    /// ICE server URLs the relay handed out (credentials not shown).
    pub ice_servers: Vec<String>,
    /// Who the relay proved to be on this connection (its answer to an
    /// `identity_challenge`, judged like discovery judges it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<SignalingIdentity>,
    pub error: Option<String>,
    /// What failed, machine-readable (absent when nothing did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

/// The relay's identity as the signaling session showed it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SignalingIdentity {
    /// `ok` (a valid proof), `identity_unproven` or `identity_mismatch`.
    pub outcome: String,
    /// The key the discovery entry named for this server (absent: none did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// The key of its valid proof.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proven_server_id: Option<String>,
    pub detail: String,
}

/// A relay's answer to `identity_challenge` as discovery's identity rules
/// take it (`zajel_discovery_core::identity::judge`).
pub(crate) fn identity_check(answer: IdentityAnswer) -> discovery_client::identity::IdentityCheck {
    use discovery_client::identity::IdentityCheck;
    match answer {
        IdentityAnswer::Proof {
            server_id,
            endpoint,
        } => IdentityCheck::Proof {
            server_id,
            endpoint,
        },
        IdentityAnswer::Invalid { reason } => IdentityCheck::Invalid(reason),
        IdentityAnswer::Refused { message } => IdentityCheck::Unanswered(message),
    }
}

impl SignalingIdentity {
    /// Judges the relay at `url`'s answer with discovery's identity rules
    /// (`zajel_discovery_core::identity`): against `expected` (the key its
    /// entry named) and `announced` (its `server_info`).
    pub fn judge(
        url: &str,
        expected: Option<&str>,
        announced: &str,
        answer: Result<IdentityAnswer, String>,
    ) -> Self {
        use discovery_client::identity::{self, Identity, IdentityCheck};
        let check = match answer {
            Ok(answer) => identity_check(answer),
            Err(error) => IdentityCheck::Unanswered(error),
        };
        let judged = identity::judge(url, expected, Some(announced), &check);
        let (outcome, detail) = match &judged {
            Identity::Proven { .. } => ("ok", String::new()),
            Identity::Learnt { .. } => ("ok", "no entry names a key to check it against".into()),
            Identity::Unproven(why) => ("identity_unproven", why.clone()),
            Identity::Mismatch(why) => ("identity_mismatch", why.clone()),
        };
        Self {
            outcome: outcome.into(),
            server_id: expected.map(str::to_string),
            proven_server_id: judged.proven_server_id().map(str::to_string),
            detail,
        }
    }

    /// One line for the table.
    fn summary(&self) -> String {
        match (&self.proven_server_id, &self.server_id) {
            (Some(id), Some(_)) => format!("proven {id}"),
            (Some(id), None) => format!("learnt {id} ({})", self.detail),
            (None, _) => format!("{}: {}", self.outcome.replace('_', " "), self.detail),
        }
    }
}

/// One STUN binding, or one TURN transport's allocation and relay test.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaCheck {
    /// `stun`, `turn/udp`, `turn/tcp`, `turn/tls`.
    pub kind: String,
    /// The URL tried (`None`: the relay offers none of this kind).
    pub url: Option<String>,
    /// STUN: the server answered. TURN: a datagram went through the relay and back (an
    /// allocation alone is not enough).
    pub ok: bool,
    /// TURN: the server granted an allocation (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<bool>,
    /// STUN: our server-reflexive address as the server saw it.
    pub mapped_address: Option<String>,
    /// TURN: the relayed address allocated for us.
    pub relayed_address: Option<String>,
    /// STUN: the binding's round trip; TURN: the time to allocate.
    pub time_ms: Option<f64>,
    /// TURN: a datagram's round trip through the relay (our relayed address → a second
    /// allocation's → back), when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_round_trip_ms: Option<f64>,
    /// TURN: how the relaying was shown: `two_allocations` (a datagram from our relayed
    /// address to a second allocation's and back) or `own_address` (to our own UDP socket's
    /// server-reflexive address and back, tried when the first fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_test: Option<String>,
    /// TURN: why the second way failed too, when neither relayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_test_detail: Option<String>,
    pub error: Option<String>,
    /// What failed, machine-readable (absent when nothing did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

impl MediaCheck {
    /// The table's words after yes/no.
    fn summary(&self) -> String {
        if self.allocated.is_none() {
            // STUN.
            let mapped = self
                .mapped_address
                .as_deref()
                .map(|a| format!("mapped {a}, "))
                .unwrap_or_default();
            return match &self.error {
                Some(error) => format!("{mapped}{error}"),
                None => format!("{mapped}{}", table::ms(self.time_ms)),
            };
        }
        let relayed = self.relayed_address.as_deref().unwrap_or("-");
        match (&self.error, self.allocated) {
            (Some(error), Some(true)) => match &self.relay_test_detail {
                Some(detail) => format!("relayed address {relayed}: {error}; {detail}"),
                None => format!("relayed address {relayed}: {error}"),
            },
            (Some(error), _) => error.clone(),
            (None, _) => format!(
                "relayed address {relayed}, allocated in {}, relay round trip {}{}",
                table::ms(self.time_ms),
                table::ms(self.relay_round_trip_ms),
                if self.relay_test.as_deref() == Some("own_address") {
                    " (to our own address)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Records `error` (its message and kind).
    fn failed(&mut self, error: &MediaCheckError) {
        self.error = Some(error.to_string());
        self.error_kind = Some(error.kind());
    }

    /// A check of `kind` that could not be tried.
    fn not_tried(kind: &str, error: MediaCheckError) -> Self {
        let mut check = Self {
            kind: kind.into(),
            ..Self::default()
        };
        check.failed(&error);
        check
    }
}

/// Which call paths exist.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CallPaths {
    /// UDP to the outside works (STUN answered): host/srflx candidates can connect.
    pub direct_udp: bool,
    pub turn_udp: bool,
    pub turn_tcp: bool,
    pub turn_tls: bool,
}

impl CallPaths {
    pub fn any(&self) -> bool {
        self.direct_udp || self.turn_udp || self.turn_tcp || self.turn_tls
    }
}

/// The overall answer.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    CallPathsExist,
    NoServerFound,
    SignalingBlocked,
    NoMediaPath,
}

impl CheckVerdict {
    /// The exit code of `check`.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::CallPathsExist => EXIT_OK,
            Self::NoServerFound => EXIT_NO_SERVER,
            Self::SignalingBlocked => EXIT_SIGNALING_BLOCKED,
            Self::NoMediaPath => EXIT_NO_MEDIA_PATH,
        }
    }
}

/// Everything `check` learnt.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub verdict: CheckVerdict,
    pub exit_code: u8,
    pub server: ServerChoice,
    pub signaling: Option<SignalingCheck>,
    pub stun: Option<MediaCheck>,
    pub turn: Vec<MediaCheck>,
    pub paths: CallPaths,
    /// IPv6 and the NAT mapping (absent when signaling never got as far as the ICE servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCheck>,
    /// Why no server was chosen (absent when one was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_server_reason: Option<String>,
    pub duration_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the whole check.
pub async fn run_check(options: &CheckOptions) -> Result<CheckReport, CheckError> {
    zajel_client_net::tls::install_crypto_provider();
    let start = Instant::now();
    let choice = ServerChoice::discover(options.discovery.clone()).await?;
    let finish =
        |verdict: CheckVerdict, server: ServerChoice, signaling, stun, turn, paths| CheckReport {
            verdict,
            exit_code: verdict.exit_code(),
            server,
            signaling,
            stun,
            turn,
            paths,
            network: None,
            no_server_reason: None,
            duration_ms: ms(start.elapsed()),
        };
    let Some(url) = choice.url() else {
        let reason = why_no_server(&choice);
        let mut report = finish(
            CheckVerdict::NoServerFound,
            choice,
            None,
            None,
            Vec::new(),
            CallPaths::default(),
        );
        report.no_server_reason = Some(reason);
        return Ok(report);
    };
    let step = options.step_timeout;
    let mut signaling = SignalingCheck {
        url: url.to_string(),
        ..SignalingCheck::default()
    };
    let registered = match client::connect_and_register(&url, &options.trust, None, step).await {
        Ok(registered) => registered,
        Err(error) => {
            signaling.error = Some(error.to_string());
            signaling.error_kind = Some(session_kind(&error));
            return Ok(finish(
                CheckVerdict::SignalingBlocked,
                choice,
                Some(signaling),
                None,
                Vec::new(),
                CallPaths::default(),
            ));
        }
    };
    let t = &registered.timings;
    signaling.server_id = Some(registered.server_id.clone());
    signaling.resolve_ms = Some(ms(t.resolve));
    signaling.tcp_connect_ms = Some(ms(t.tcp_connect));
    signaling.tls_handshake_ms = t.tls_handshake.map(ms);
    signaling.websocket_upgrade_ms = Some(ms(t.websocket_upgrade));
    signaling.greeting_ms = Some(ms(t.greeting));
    signaling.register_ms = Some(registered.register_ms);
    signaling.ice_servers = client::describe_ice_servers(&registered.ice_servers);
    let mut session = registered.session;
    let expected = choice
        .discovery
        .as_ref()
        .and_then(|report| report.candidate(url.as_str()))
        .and_then(|candidate| candidate.server_id.clone());
    let answer = session
        .prove_identity(step)
        .await
        .map_err(|error| error.to_string());
    signaling.identity = Some(SignalingIdentity::judge(
        url.as_str(),
        expected.as_deref(),
        &session.server_info().server_id,
        answer,
    ));
    match session.round_trip(step).await {
        Ok(rtt) => {
            signaling.round_trip_ms = Some(ms(rtt));
            signaling.ok = true;
        }
        Err(error) => {
            signaling.error = Some(format!("ping: {error}"));
            signaling.error_kind = Some(session_kind(&error));
            return Ok(finish(
                CheckVerdict::SignalingBlocked,
                choice,
                Some(signaling),
                None,
                Vec::new(),
                CallPaths::default(),
            ));
        }
    }
    // relay-lite gives TURN credentials only to a paired connection: pair with ourselves.
    let mut offered = registered.ice_servers.clone();
    if offered.is_empty() {
        match client::ice_servers_by_self_pairing(
            &mut session,
            registered.code,
            &url,
            &options.trust,
            step,
        )
        .await
        {
            Ok(servers) => {
                signaling.ice_servers = client::describe_ice_servers(&servers);
                offered = servers;
            }
            Err(error) => tracing::info!(%error, "no ice_servers after pairing"),
        }
    }
    drop(session);

    // Pick the URLs to try, with their credentials.
    let mut stun_target: Option<String> = None;
    let mut stun_urls: Vec<String> = Vec::new();
    let mut turn_targets: Vec<(String, String, String, String)> = Vec::new(); // kind, url, user, pass
    for server in &offered {
        for url in &server.urls {
            let Some((scheme, parsed)) = parse_ice_url(url) else {
                continue;
            };
            let kind = match (scheme.as_str(), parsed.transport.as_str()) {
                ("stun", _) => {
                    stun_target.get_or_insert(url.clone());
                    stun_urls.push(url.clone());
                    continue;
                }
                ("turn", "udp") => "turn/udp",
                ("turn", "tcp") => "turn/tcp",
                ("turns", _) => "turn/tls",
                _ => continue,
            };
            if turn_targets.iter().any(|(k, ..)| k == kind) {
                continue;
            }
            turn_targets.push((
                kind.into(),
                url.clone(),
                server.username.clone().unwrap_or_default(),
                server.credential.clone().unwrap_or_default(),
            ));
        }
    }
    // No STUN URL: the TURN/UDP server answers binding requests too.
    if stun_target.is_none() {
        stun_target = turn_targets
            .iter()
            .find(|(kind, ..)| kind == "turn/udp")
            .map(|(_, url, ..)| url.clone());
    }
    let stun = match &stun_target {
        Some(url) => stun_binding(url, step).await,
        None => MediaCheck::not_tried("stun", MediaCheckError::NoStunServer),
    };
    // Every address of every STUN-capable UDP server the relay named, for IPv6 and the
    // mapping.
    let mut stun_servers = Vec::new();
    let udp_urls = stun_urls.iter().chain(
        turn_targets
            .iter()
            .filter(|(kind, ..)| kind == "turn/udp")
            .map(|(_, url, ..)| url),
    );
    for url in udp_urls {
        if let Some((_, parsed)) = parse_ice_url(url) {
            for address in netcheck::resolve_all(&parsed.host, parsed.port).await {
                if !stun_servers.contains(&address) {
                    stun_servers.push(address);
                }
            }
        }
    }
    let mut turn = Vec::new();
    for kind in ["turn/udp", "turn/tcp", "turn/tls"] {
        let check = match turn_targets.iter().find(|(k, ..)| k == kind) {
            Some((_, url, user, pass)) => {
                let credentials = (user.as_str(), pass.as_str());
                let roots = &options.extra_roots;
                turn_check(kind, url, credentials, roots, &stun_servers, step).await
            }
            None => MediaCheck::not_tried(kind, MediaCheckError::NotOffered),
        };
        turn.push(check);
    }
    let network = NetworkCheck {
        ipv6: netcheck::check_ipv6(&stun_servers, step).await,
        mapping: netcheck::check_mapping(&stun_servers, step).await,
    };
    let ok = |kind: &str| turn.iter().any(|c| c.kind == kind && c.ok);
    let paths = CallPaths {
        direct_udp: stun.ok,
        turn_udp: ok("turn/udp"),
        turn_tcp: ok("turn/tcp"),
        turn_tls: ok("turn/tls"),
    };
    let mut report = finish(
        verdict(&paths, !turn_targets.is_empty()),
        choice,
        Some(signaling),
        Some(stun),
        turn,
        paths,
    );
    report.network = Some(network);
    Ok(report)
}

/// Calls can be made when a TURN transport relayed a datagram there and back, or, when the
/// relay offers no TURN at all, when UDP reaches its STUN server (direct calls only). A TURN
/// server that allocates but relays nothing is no call path: relay-only peers would fail.
fn verdict(paths: &CallPaths, turn_offered: bool) -> CheckVerdict {
    let relayed = paths.turn_udp || paths.turn_tcp || paths.turn_tls;
    if relayed || (!turn_offered && paths.direct_udp) {
        CheckVerdict::CallPathsExist
    } else {
        CheckVerdict::NoMediaPath
    }
}

/// Why discovery chose no server, in one line: the servers it tried and how each failed,
/// else the layers that failed, else that no layer named any server.
pub fn why_no_server(choice: &ServerChoice) -> String {
    if !choice.unreachable.is_empty() {
        let servers: Vec<String> = choice
            .unreachable
            .iter()
            .map(|s| {
                let outcome = s.outcome.replace('_', " ");
                if s.detail.is_empty() {
                    format!("{}: {outcome}", s.url)
                } else {
                    format!("{}: {outcome} ({})", s.url, s.detail)
                }
            })
            .collect();
        return format!("no server answered as a relay: {}", servers.join("; "));
    }
    if !choice.blocked.is_empty() {
        let layers: Vec<String> = choice
            .blocked
            .iter()
            .map(|l| {
                let outcome = l.outcome.replace('_', " ");
                if l.detail.is_empty() {
                    format!("{}: {outcome}", l.layer)
                } else {
                    format!("{}: {outcome} ({})", l.layer, l.detail)
                }
            })
            .collect();
        return format!(
            "no layer named a server; failed layers: {}",
            layers.join("; ")
        );
    }
    "no discovery layer named any server (configure --registry, --doh, --server…)".into()
}

fn turn_client_config(
    conn: Arc<dyn Conn + Send + Sync>,
    stun: String,
    turn: String,
    username: &str,
    password: &str,
) -> TurnClientConfig {
    TurnClientConfig {
        stun_serv_addr: stun,
        turn_serv_addr: turn,
        username: username.into(),
        password: password.into(),
        realm: String::new(),
        software: "call-probe".into(),
        rto_in_ms: 200,
        conn,
        vnet: None,
    }
}

/// A STUN binding request over UDP to `url`'s server.
async fn stun_binding(url: &str, limit: Duration) -> MediaCheck {
    let mut check = MediaCheck {
        kind: "stun".into(),
        url: Some(url.into()),
        ..MediaCheck::default()
    };
    let started = Instant::now();
    let result: Result<SocketAddr, MediaCheckError> = async {
        let (_, parsed) = parse_ice_url(url).ok_or(MediaCheckError::NotAnIceUrl("STUN/TURN"))?;
        let server = client::resolve(&parsed.host, parsed.port).await?;
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(MediaCheckError::Socket)?;
        let client = TurnClient::new(turn_client_config(
            Arc::new(socket),
            server.to_string(),
            String::new(),
            "",
            "",
        ))
        .await
        .map_err(MediaCheckError::Turn)?;
        client.listen().await.map_err(MediaCheckError::Turn)?;
        let result = tokio::time::timeout(limit, client.send_binding_request())
            .await
            .map_err(|_| MediaCheckError::NoStunAnswer(limit))
            .and_then(|r| r.map_err(MediaCheckError::Turn));
        let _ = client.close().await;
        result
    }
    .await;
    check.time_ms = Some(ms(started.elapsed()));
    match result {
        Ok(mapped) => {
            check.ok = true;
            check.mapped_address = Some(mapped.to_string());
        }
        Err(error) => check.failed(&error),
    }
    check
}

/// A TURN allocation held open: its client, its relayed "socket", and the stream bridge it
/// goes through (TCP/TLS), which must live as long as it.
struct Allocation {
    client: TurnClient,
    relay: Arc<dyn Conn + Send + Sync>,
    relayed: SocketAddr,
    _bridge: Option<StreamBridge>,
}

impl Allocation {
    async fn close(self) {
        let _ = self.relay.close().await;
        let _ = self.client.close().await;
    }
}

/// A TURN allocation through `url` (TCP and TLS through a stream bridge on 127.0.0.1).
async fn allocate(
    kind: &str,
    url: &str,
    username: &str,
    password: &str,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    limit: Duration,
) -> Result<Allocation, MediaCheckError> {
    let (_, parsed) = parse_ice_url(url).ok_or(MediaCheckError::NotAnIceUrl("TURN"))?;
    let transport = match kind {
        "turn/udp" => TurnTransport::Udp,
        "turn/tcp" => TurnTransport::Tcp,
        _ => TurnTransport::Tls,
    };
    let (target, bridge) = client::turn_target(&parsed, transport, extra_roots).await?;
    let server = bridge.as_ref().map_or(target, StreamBridge::server_addr);
    let bind = match (target.is_ipv4(), target.ip().is_loopback()) {
        (true, false) => "0.0.0.0:0",
        (true, true) => "127.0.0.1:0",
        (false, false) => "[::]:0",
        (false, true) => "[::1]:0",
    };
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(MediaCheckError::Socket)?;
    let client = TurnClient::new(turn_client_config(
        Arc::new(socket),
        target.to_string(),
        target.to_string(),
        username,
        password,
    ))
    .await
    .map_err(MediaCheckError::Turn)?;
    client.listen().await.map_err(MediaCheckError::Turn)?;
    let relay = tokio::time::timeout(limit, client.allocate())
        .await
        .map_err(|_| {
            // Read once the allocation timed out: did the bridge never get its stream up?
            let bridge_failed = bridge
                .as_ref()
                .is_some_and(|b| b.stats().streams_failed > 0 && b.stats().streams_opened == 0);
            if bridge_failed {
                let what = if kind == "turn/tls" {
                    "TCP connect or TLS handshake"
                } else {
                    "TCP connect"
                };
                MediaCheckError::StreamFailed {
                    limit,
                    what,
                    server,
                }
            } else {
                MediaCheckError::NoAllocation(limit)
            }
        })
        .and_then(|r| r.map_err(MediaCheckError::Turn));
    let relay = match relay {
        Ok(relay) => relay,
        Err(error) => {
            let _ = client.close().await;
            return Err(error);
        }
    };
    let relayed = match relay.local_addr() {
        Ok(relayed) => relayed,
        Err(error) => {
            let _ = relay.close().await;
            let _ = client.close().await;
            return Err(MediaCheckError::RelayedAddress(error));
        }
    };
    Ok(Allocation {
        client,
        relay: Arc::new(relay),
        relayed,
        _bridge: bridge,
    })
}

/// A TURN transport, checked: an allocation through `url`, a second one the same way, and
/// a datagram through the first's relayed address to the second's and back
/// ([`relay_probe`]). `ok` only when that round trip happened.
async fn turn_check(
    kind: &str,
    url: &str,
    (username, password): (&str, &str),
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    stun_servers: &[SocketAddr],
    limit: Duration,
) -> MediaCheck {
    let mut check = MediaCheck {
        kind: kind.into(),
        url: Some(url.into()),
        allocated: Some(false),
        ..MediaCheck::default()
    };
    let started = Instant::now();
    let first = match allocate(kind, url, username, password, extra_roots, limit).await {
        Ok(first) => first,
        Err(error) => {
            check.time_ms = Some(ms(started.elapsed()));
            check.failed(&error);
            return check;
        }
    };
    check.time_ms = Some(ms(started.elapsed()));
    check.allocated = Some(true);
    check.relayed_address = Some(first.relayed.to_string());
    let peer = match allocate(kind, url, username, password, extra_roots, limit).await {
        Ok(peer) => peer,
        Err(error) => {
            first.close().await;
            check.error = Some(format!("a second allocation for the relay test: {error}"));
            check.error_kind = Some(error.kind());
            return check;
        }
    };
    let result = relay_probe::round_trip(
        first.relay.clone(),
        first.relayed,
        peer.relay.clone(),
        peer.relayed,
        limit,
    )
    .await;
    peer.close().await;
    let result = match result {
        Ok(rtt) => Ok((rtt, "two_allocations")),
        // Relayed sockets that cannot reach their own public address may still relay to
        // the rest of the internet: try our own address before saying no.
        Err(error @ (RelayError::NothingArrived { .. } | RelayError::NoAnswerBack { .. })) => {
            let stun = stun_servers
                .iter()
                .find(|s| s.is_ipv4() == first.relayed.is_ipv4())
                .copied();
            match via_own_address(&first, stun, limit).await {
                Ok(rtt) => Ok((rtt, "own_address")),
                Err(other) => {
                    check.relay_test_detail = Some(format!("through our own address: {other}"));
                    Err(error)
                }
            }
        }
        Err(error) => Err(error),
    };
    first.close().await;
    match result {
        Ok((rtt, test)) => {
            check.ok = true;
            check.relay_round_trip_ms = Some(ms(rtt));
            check.relay_test = Some(test.into());
        }
        Err(error) => check.failed(&MediaCheckError::NotRelayed(error)),
    }
    check
}

/// The second way to relay-test `first`: a UDP socket of ours learns its server-reflexive
/// address from `stun` and echoes what `first` relays to it ([`relay_probe::round_trip_via_own_address`]).
async fn via_own_address(
    first: &Allocation,
    stun: Option<SocketAddr>,
    limit: Duration,
) -> Result<Duration, String> {
    let stun = stun.ok_or("no STUN server to learn our address from")?;
    let bind = match (stun.is_ipv4(), stun.ip().is_loopback()) {
        (true, false) => "0.0.0.0:0",
        (true, true) => "127.0.0.1:0",
        (false, false) => "[::]:0",
        (false, true) => "[::1]:0",
    };
    let own = Arc::new(UdpSocket::bind(bind).await.map_err(|e| e.to_string())?);
    let client = TurnClient::new(turn_client_config(
        own.clone(),
        String::new(),
        String::new(),
        "",
        "",
    ))
    .await
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let mapped = tokio::time::timeout(limit, client.send_binding_request_to(&stun.to_string()))
        .await
        .map_err(|_| format!("no STUN answer from {stun} within {limit:?}"))
        .and_then(|r| r.map_err(|e| e.to_string()));
    // Ends the client's read loop: the socket is ours again.
    let _ = client.close().await;
    let mapped = mapped?;
    relay_probe::round_trip_via_own_address(first.relay.clone(), first.relayed, own, mapped, limit)
        .await
        .map_err(|e| e.to_string())
}

impl CheckReport {
    /// The report as a table.
    pub fn to_table(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::new();
        out.push_str("== discovery ==\n");
        // The server choice's table already says why none was chosen (its `why none` rows);
        // `no_server_reason` is the same in one line, for the JSON.
        out.push_str(&self.server.to_table());
        if let Some(s) = &self.signaling {
            out.push_str("== signaling ==\n");
            row(&mut out, "url", &s.url);
            if let Some(id) = &s.server_id {
                row(&mut out, "server id", id);
            }
            ms_rows(
                &mut out,
                [
                    ("TCP connect", s.tcp_connect_ms),
                    ("TLS handshake", s.tls_handshake_ms),
                    ("WebSocket upgrade", s.websocket_upgrade_ms),
                    ("server_info", s.greeting_ms),
                    ("register", s.register_ms),
                    ("ping round trip", s.round_trip_ms),
                ],
            );
            row(&mut out, "ice servers", list(&s.ice_servers));
            if let Some(identity) = &s.identity {
                row(&mut out, "identity", identity.summary());
            }
            if let Some(error) = &s.error {
                row(&mut out, "error", error);
            }
        }
        if self.stun.is_some() || !self.turn.is_empty() {
            out.push_str("== media ==\n");
        }
        for check in self.stun.iter().chain(self.turn.iter()) {
            row(
                &mut out,
                &check.kind,
                format_args!("{:<4}{}", yes(check.ok), check.summary()),
            );
        }
        if let Some(network) = &self.network {
            out.push_str("== network ==\n");
            for (label, value) in network.rows() {
                row(&mut out, label, value);
            }
        }
        out.push_str("== call paths ==\n");
        out.push_str(&format!(
            "direct UDP {}, TURN/UDP {}, TURN/TCP {}, TURN/TLS {}\n",
            yes(self.paths.direct_udp),
            yes(self.paths.turn_udp),
            yes(self.paths.turn_tcp),
            yes(self.paths.turn_tls)
        ));
        row(
            &mut out,
            "verdict",
            format!(
                "{} (exit {})",
                match self.verdict {
                    CheckVerdict::CallPathsExist => "calls can be made",
                    CheckVerdict::NoServerFound => "no server found",
                    CheckVerdict::SignalingBlocked => "signaling blocked",
                    CheckVerdict::NoMediaPath => "no media path",
                },
                self.exit_code
            ),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_whose_discovery_cannot_be_set_up_fails_with_its_kind() {
        let options = CheckOptions {
            discovery: DiscoveryConfig {
                extra_roots: vec![rustls::pki_types::CertificateDer::from(vec![1, 2, 3])],
                ..DiscoveryConfig::default()
            },
            trust: TrustAnchors::WebPki,
            extra_roots: Vec::new(),
            step_timeout: Duration::from_secs(1),
        };
        let error = run_check(&options).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::DiscoveryConfig);
        assert!(!error.to_string().is_empty());
    }

    #[tokio::test]
    async fn a_url_that_is_no_ice_url_is_reported_with_its_kind() {
        let check = stun_binding("nonsense", Duration::from_secs(1)).await;
        assert!(!check.ok);
        assert_eq!(check.error.as_deref(), Some("not a STUN/TURN URL"));
        assert_eq!(check.error_kind, Some(ErrorKind::NotAnIceUrl));
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["error"], "not a STUN/TURN URL");
        assert_eq!(json["error_kind"], "not_an_ice_url");
    }

    #[tokio::test]
    async fn turn_over_tcp_to_a_closed_port_says_the_stream_failed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("turn:{server}?transport=tcp");
        let limit = Duration::from_millis(1500);
        let check = turn_check("turn/tcp", &url, ("u", "p"), &[], &[], limit).await;
        assert!(!check.ok);
        assert_eq!(check.error_kind, Some(ErrorKind::TurnStreamFailed));
        assert_eq!(
            check.error.as_deref(),
            Some(
                format!("no allocation within {limit:?}: the TCP connect to {server} failed")
                    .as_str()
            )
        );
    }

    #[test]
    fn the_signaling_identity_is_judged_like_discovery_judges_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let id = zajel_wire::keys::server_id_for(&key.verifying_key());
        let url = "ws://127.0.0.1:9/";
        let proof = |endpoint: &str| {
            Ok(IdentityAnswer::Proof {
                server_id: id.clone(),
                endpoint: endpoint.into(),
            })
        };
        let proven = SignalingIdentity::judge(url, Some(&id), &id, proof("ws://127.0.0.1:9"));
        assert_eq!(proven.outcome, "ok");
        assert_eq!(proven.proven_server_id.as_deref(), Some(id.as_str()));
        assert_eq!(proven.summary(), format!("proven {id}"));
        let proxied = SignalingIdentity::judge(url, Some(&id), &id, proof("ws://elsewhere:9"));
        assert_eq!(proxied.outcome, "identity_mismatch");
        let zajel = SignalingIdentity::judge(
            url,
            Some(&id),
            &id,
            Ok(IdentityAnswer::Refused {
                message: "Unknown message type: identity_challenge".into(),
            }),
        );
        assert_eq!(zajel.outcome, "identity_unproven");
        assert_eq!(
            zajel.summary(),
            "identity unproven: Unknown message type: identity_challenge"
        );
        let other = SignalingIdentity::judge(url, Some("ed25519:other"), &id, proof(url));
        assert_eq!(other.outcome, "identity_mismatch");
        let json = serde_json::to_value(&proven).unwrap();
        assert_eq!(json["outcome"], "ok");
    }

    #[test]
    fn a_check_that_could_not_be_tried_says_so() {
        let check = MediaCheck::not_tried("turn/tls", MediaCheckError::NotOffered);
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["error"], "not offered by the relay");
        assert_eq!(json["error_kind"], "not_offered");
        let ok = serde_json::to_value(MediaCheck::default()).unwrap();
        assert!(ok.get("error_kind").is_none(), "{ok}");
    }
}
