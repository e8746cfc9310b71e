//! The command-line side of `demo`, `call`, `answer` and `check`: flags, where the server
//! comes from, printing, exit codes. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use call_probe::answer::{AnswerOptions, Answerer};
use call_probe::check::{run_check, CheckOptions};
use call_probe::choose::ServerChoice;
use call_probe::client::{self, TurnTransport};
#[cfg(feature = "demo")]
use call_probe::demo::{run_demo, DemoOptions};
use call_probe::probe_call::{run_call, CallOptions};
use call_probe::CallTimeouts;
use clap::Args;
use discovery_client::discovery::Config as DiscoveryConfig;
use discovery_client::share::ShareLink;
use url::Url;
use zajel_wire::pairing::PairingCode;

/// Exit code for bad flags.
const EXIT_USAGE: u8 = 2;

/// Where the relay comes from (discovery-client's layers, or `--server`).
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Registry base URL (repeatable; env ZAJEL_REGISTRY_URL, comma-separated).
    #[arg(long = "registry", env = "ZAJEL_REGISTRY_URL", value_delimiter = ',')]
    registries: Vec<Url>,
    /// Pinned registry public key, standard base64 (repeatable; env ZAJEL_REGISTRY_KEY).
    #[arg(
        long = "registry-key",
        env = "ZAJEL_REGISTRY_KEY",
        value_delimiter = ','
    )]
    registry_keys: Vec<String>,
    /// DoH server `https://host[:port]/path[,ip=ADDRESS]` (repeatable).
    #[arg(long = "doh")]
    doh: Vec<String>,
    /// Domain whose `_zajel.<domain>` TXT records list servers (repeatable).
    #[arg(long = "domain")]
    domains: Vec<String>,
    /// A signaling server URL typed by hand (repeatable; discovery's manual layer).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// The discovery cache/referral file (default: discovery-client's).
    #[arg(long = "cache-file", env = "ZAJEL_DISCOVERY_CACHE")]
    cache_file: Option<PathBuf>,
    /// Neither read nor write the discovery cache.
    #[arg(long)]
    no_cache: bool,
    /// Accept loopback and private addresses (tests, LAN relays).
    #[arg(long)]
    allow_private: bool,
    /// Extra CA certificate (PEM) to trust for registry, DoH, wss:// and turns:.
    /// For wss:// it replaces the web PKI.
    #[arg(long = "ca-file")]
    ca_files: Vec<PathBuf>,
    /// Longest wait per discovery layer and per server check, in ms.
    #[arg(long, default_value_t = 3000)]
    layer_timeout_ms: u64,
}

impl ServerArgs {
    fn roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        let mut roots = Vec::new();
        for path in &self.ca_files {
            roots.extend(client::read_ca_file(path)?);
        }
        Ok(roots)
    }

    fn discovery(&self, share_links: Vec<String>) -> Result<DiscoveryConfig, String> {
        let mut keys = Vec::new();
        for key in &self.registry_keys {
            keys.push(
                zajel_wire::keys::public_key_from_base64(key.trim())
                    .map_err(|e| format!("--registry-key {key}: {e}"))?,
            );
        }
        let mut doh = Vec::new();
        for spec in &self.doh {
            doh.push(spec.parse()?);
        }
        let store_path = if self.no_cache {
            None
        } else {
            self.cache_file
                .clone()
                .or_else(discovery_client::store::default_path)
        };
        Ok(DiscoveryConfig {
            registries: self.registries.clone(),
            registry_keys: keys,
            doh_servers: doh,
            domains: self.domains.clone(),
            store_path,
            share_links,
            manual: self.servers.clone(),
            allow_private: self.allow_private,
            extra_roots: self.roots()?,
            layer_timeout: Duration::from_millis(self.layer_timeout_ms),
            probe_timeout: Duration::from_millis(self.layer_timeout_ms),
            write_cache: !self.no_cache,
            ..DiscoveryConfig::default()
        })
    }

    fn nothing_configured(&self) -> bool {
        self.registries.is_empty()
            && self.doh.is_empty()
            && self.servers.is_empty()
            && self.cache_file.is_none()
    }
}

/// Call settings shared by `call` and `answer`.
#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    /// Force TURN: relay candidates only (through the ICE servers the relay hands out).
    #[arg(long)]
    relay_only: bool,
    /// How media may reach TURN: auto (every transport the relay offers at once, so a network
    /// that blocks UDP falls back to TCP or TLS), or only udp, tcp or tls (TCP and TLS run
    /// through a local stream bridge).
    #[arg(long, default_value = "auto")]
    turn_transport: TurnTransport,
    /// Use loopback addresses only (tests on one machine).
    #[arg(long)]
    loopback: bool,
    /// Leave out STUN servers (no server-reflexive candidates; keeps the engine on its own
    /// socket, which observes the SRTP profile).
    #[arg(long)]
    no_stun: bool,
    /// Tone sent, in Hz (100–4000).
    #[arg(long)]
    tone_hz: Option<f64>,
    /// Seconds each signaling or call step may take.
    #[arg(long, default_value_t = 15)]
    step_timeout: u64,
    /// Ringing timeout in ms (default Zajel's 60000).
    #[arg(long)]
    ringing_timeout_ms: Option<u64>,
    /// Reconnect window in ms (default Zajel's 30000).
    #[arg(long)]
    reconnect_timeout_ms: Option<u64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl MediaArgs {
    fn check(&self) -> Result<(), String> {
        if self.step_timeout == 0 {
            return Err("--step-timeout must be at least 1 second".into());
        }
        if let Some(hz) = self.tone_hz {
            if !(100.0..=4000.0).contains(&hz) {
                return Err("--tone-hz must be between 100 and 4000 Hz".into());
            }
        }
        Ok(())
    }

    fn timeouts(&self) -> CallTimeouts {
        let mut timeouts = CallTimeouts::default();
        if let Some(ms) = self.ringing_timeout_ms {
            timeouts.ringing = Duration::from_millis(ms);
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            timeouts.reconnect = Duration::from_millis(ms);
        }
        timeouts
    }
}

#[cfg(feature = "demo")]
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of audio once the call is connected.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Force TURN (relay candidates only).
    #[arg(long)]
    relay_only: bool,
    /// TURN over auto (all at once), udp, tcp or tls (TCP/TLS through a stream bridge).
    #[arg(long, default_value = "auto")]
    turn_transport: TurnTransport,
    /// Also negotiate a video track.
    #[arg(long)]
    video: bool,
    /// Serve the relay on plain ws:// instead of wss:// (TLS with a throwaway CA).
    #[arg(long)]
    plain_ws: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The answerer's pairing code, or a zajel:// link (its server is used).
    target: String,
    /// Seconds of audio once the call is connected.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Also negotiate a video track.
    #[arg(long)]
    video: bool,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct AnswerArgs {
    /// Register this pairing code (random by default).
    #[arg(long)]
    code: Option<String>,
    /// Stop after this many calls.
    #[arg(long)]
    max_calls: Option<u32>,
    /// Stop after one call (same as --max-calls 1).
    #[arg(long)]
    once: bool,
    /// Send back what is heard instead of a tone.
    #[arg(long)]
    echo: bool,
    /// Decline every call (call_reject reason declined).
    #[arg(long)]
    decline: bool,
    /// Do not print the QR code.
    #[arg(long)]
    no_qr: bool,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds each step may take.
    #[arg(long, default_value_t = 5)]
    step_timeout: u64,
    #[command(flatten)]
    server: ServerArgs,
}

fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    if value.is_finite() && value > 0.0 && value <= 3600.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!("{flag} must be between 0 and 3600 seconds"))
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

#[cfg(feature = "demo")]
pub async fn demo(args: DemoArgs) -> ExitCode {
    let duration = match seconds(args.duration, "--duration") {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let options = DemoOptions {
        duration,
        relay_only: args.relay_only,
        turn_transport: args.turn_transport,
        with_video: args.video,
        plain_ws: args.plain_ws,
        ..DemoOptions::default()
    };
    match run_demo(&options).await {
        Ok(report) => {
            if args.json {
                print_json(&report);
            } else {
                print!("{}", report.to_table());
            }
            if report.media_both_ways {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: demo failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the server: the one in a link, else discovery (with the link as its QR source).
async fn choose_server(
    server: &ServerArgs,
    link: Option<&ShareLink>,
) -> Result<ServerChoice, String> {
    if let Some(first) = link.and_then(|l| l.servers.first()) {
        if server.nothing_configured() {
            return ServerChoice::from_link(first);
        }
    }
    let links: Vec<String> = link
        .filter(|l| !l.servers.is_empty())
        .map(|l| vec![l.to_uri()])
        .unwrap_or_default();
    if server.nothing_configured() && links.is_empty() && server.no_cache {
        return Err(
            "no server: give --server, --registry/--registry-key, --doh/--domain, or a zajel:// link with ?server="
                .into(),
        );
    }
    ServerChoice::discover(server.discovery(links)?).await
}

pub async fn call(args: CallArgs) -> ExitCode {
    if let Err(e) = args.media.check() {
        return usage(e);
    }
    let duration = match seconds(args.duration, "--duration") {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let link = match ShareLink::parse(&args.target) {
        Ok(link) => link,
        Err(e) => return usage(format!("{}: {e}", args.target)),
    };
    let roots = match args.server.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let choice = match choose_server(&args.server, Some(&link)).await {
        Ok(choice) => choice,
        Err(e) => return usage(e),
    };
    let Some(url) = choice.url() else {
        if args.media.json {
            print_json(&serde_json::json!({"server": choice, "call": null}));
        } else {
            print!("{}", choice.to_table());
        }
        eprintln!("error: no server found");
        return ExitCode::from(call_probe::check::EXIT_NO_SERVER);
    };
    let mut options = CallOptions::new(url, link.code);
    options.trust = client::trust_anchors(&roots);
    options.extra_roots = roots;
    options.duration = duration;
    options.with_video = args.video;
    options.relay_only = args.media.relay_only;
    options.turn_transport = args.media.turn_transport;
    options.loopback = args.media.loopback;
    options.with_stun = !args.media.no_stun;
    options.tone_hz = args.media.tone_hz.unwrap_or(440.0);
    options.step_timeout = Duration::from_secs(args.media.step_timeout);
    options.timeouts = args.media.timeouts();
    let report = run_call(&options).await;
    if args.media.json {
        print_json(&serde_json::json!({"server": choice, "call": report}));
    } else {
        print!("{}", choice.to_table());
        print!("{}", report.to_table());
    }
    if report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        if let Some(error) = &report.error {
            eprintln!("error: {error}");
        }
        ExitCode::FAILURE
    }
}

pub async fn answer(args: AnswerArgs) -> ExitCode {
    if let Err(e) = args.media.check() {
        return usage(e);
    }
    let code = match args.code.as_deref().map(PairingCode::parse).transpose() {
        Ok(code) => code,
        Err(e) => return usage(format!("--code: {e}")),
    };
    let roots = match args.server.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let choice = match choose_server(&args.server, None).await {
        Ok(choice) => choice,
        Err(e) => return usage(e),
    };
    let Some(url) = choice.url() else {
        print!("{}", choice.to_table());
        eprintln!("error: no server found");
        return ExitCode::from(call_probe::check::EXIT_NO_SERVER);
    };
    let mut options = AnswerOptions::new(url);
    options.trust = client::trust_anchors(&roots);
    options.extra_roots = roots;
    options.code = code;
    options.max_calls = if args.once { Some(1) } else { args.max_calls };
    options.echo = args.echo;
    options.decline = args.decline;
    options.tone_hz = args.media.tone_hz.unwrap_or(660.0);
    options.relay_only = args.media.relay_only;
    options.turn_transport = args.media.turn_transport;
    options.loopback = args.media.loopback;
    options.with_stun = !args.media.no_stun;
    options.step_timeout = Duration::from_secs(args.media.step_timeout);
    options.timeouts = args.media.timeouts();
    let answerer = match Answerer::start(options).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(call_probe::check::EXIT_SIGNALING_BLOCKED);
        }
    };
    let json = args.media.json;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "registered", "code": answerer.code.as_str(),
                "uri": answerer.share_uri, "serverId": answerer.server_id, "server": choice.server})
        );
    } else {
        print!("{}", choice.to_table());
        println!("pairing code {}", answerer.code.as_str());
        println!("link {}", answerer.share_uri);
        if !args.no_qr {
            if let Ok(qr) = answerer.qr_terminal() {
                println!("{qr}");
            }
        }
        println!("waiting for calls");
    }
    let serving = answerer.serve(|call| {
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "call_ended", "number": call.number, "report": call.report})
            );
        } else {
            println!("== call {} ==\n{}", call.number, call.report.to_table());
        }
    });
    tokio::select! {
        result = serving => match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}

pub async fn check(args: CheckArgs) -> ExitCode {
    if args.step_timeout == 0 {
        return usage("--step-timeout must be at least 1 second");
    }
    let roots = match args.server.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let discovery = match args.server.discovery(Vec::new()) {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let options = CheckOptions {
        discovery,
        trust: client::trust_anchors(&roots),
        extra_roots: roots,
        step_timeout: Duration::from_secs(args.step_timeout),
    };
    match run_check(&options).await {
        Ok(report) => {
            if args.json {
                print_json(&report);
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
