//! The command-line side of `demo`, `call`, `answer` and `check`: flags, where the server
//! comes from, printing, exit codes. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use call_probe::answer::{AnswerOptions, Answerer};
use call_probe::check::EXIT_NOT_AUTHENTICATED;
use call_probe::check::{run_check, CheckOptions, CheckReport};
use call_probe::choose::ServerChoice;
use call_probe::client::{self, TurnTransport};
#[cfg(feature = "demo")]
use call_probe::demo::{run_demo, DemoOptions, DemoReport};
use call_probe::error::ErrorKind;
use call_probe::interrupt::{Interrupt, Progress};
use call_probe::line_options::{IdentityChoice, LineOptions};
use call_probe::probe_call::{run_call_moving_on, CallOptions};
use call_probe::report::EndReason;
use call_probe::script::Script;
use clap::Args;
use discovery_client::cli::DiscoveryArgs;
use discovery_client::share::ShareLink;
use zajel_client_net::{out, outln};
use zajel_wire::pairing::PairingCode;

/// Exit code for bad flags.
const EXIT_USAGE: u8 = discovery_client::exit::USAGE;
/// Exit code after Ctrl-C or SIGTERM (the call hung up, the report printed).
const EXIT_INTERRUPTED: u8 = discovery_client::exit::INTERRUPTED;

/// How media may reach TURN: `demo`, `call` and `answer`.
#[derive(Args, Debug, Clone)]
pub struct TurnArgs {
    /// Force TURN: relay candidates only (through the ICE servers the relay hands out).
    #[arg(long)]
    relay_only: bool,
    /// How media may reach TURN: auto (every transport the relay offers at once, so a network
    /// that blocks UDP falls back to TCP or TLS), or only udp, tcp or tls (TCP and TLS run
    /// through a local stream bridge).
    #[arg(long, default_value = "auto")]
    turn_transport: TurnTransport,
}

/// Call settings shared by `call` and `answer`.
#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    #[command(flatten)]
    turn: TurnArgs,
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
    /// Keep the pairing identity (identity.key) and contacts (contacts.json) in this folder
    /// [default: $CALL_PROBE_STATE_DIR, else $XDG_STATE_HOME/zajel/call-probe, else
    /// ~/.local/state/zajel/call-probe].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Use a fresh identity in memory: nothing is read from or written to the state folder.
    #[arg(long)]
    ephemeral_identity: bool,
    /// Refuse calls from peers that send no call authentication (Zajel's apps, browsers):
    /// they end media_not_authenticated (exit 6).
    #[arg(long)]
    require_authenticated: bool,
    /// Tests: keep the peer's ICE candidates on loopback, link-local and other local-only
    /// addresses (--loopback implies it).
    #[arg(long, hide = true)]
    allow_loopback_candidates: bool,
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

    /// The line these flags ask for, sending `default_tone_hz` unless `--tone-hz` is given.
    fn line_options(&self, default_tone_hz: f64) -> LineOptions {
        let mut line = LineOptions::new(self.tone_hz.unwrap_or(default_tone_hz));
        line.relay_only = self.turn.relay_only;
        line.turn_transport = self.turn.turn_transport;
        line.loopback = self.loopback;
        line.with_stun = !self.no_stun;
        line.step_timeout = Duration::from_secs(self.step_timeout);
        if let Some(ms) = self.ringing_timeout_ms {
            line.timeouts.ringing = Duration::from_millis(ms);
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            line.timeouts.reconnect = Duration::from_millis(ms);
        }
        line.identity = if self.ephemeral_identity {
            IdentityChoice::Ephemeral
        } else {
            IdentityChoice::StateDir(self.state_dir.clone())
        };
        line.require_authenticated = self.require_authenticated;
        line.allow_loopback_candidates = self.allow_loopback_candidates;
        line
    }
}

#[cfg(feature = "demo")]
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seconds of audio once the call is connected.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    #[command(flatten)]
    turn: TurnArgs,
    /// Also send and receive video (VP8 test pattern; needs the `video` cargo feature).
    #[arg(long)]
    video: bool,
    /// Call controls to carry out once the call is connected, as TIME:ACTION steps separated
    /// by commas, times counted from the connection (`2s`, `1.5s`, `500ms`). Actions: mute,
    /// unmute (silence instead of the tone), camera-off, camera-on (black frames instead of the
    /// pattern), switch-camera (the other test pattern, same track), add-video (turn an audio
    /// call into a video call: a new offer on the same call). Each shows in the other side's
    /// report. Example: --script "1s:mute,2s:unmute,3s:camera-off,4s:camera-on,5s:switch-camera"
    #[arg(long, value_name = "STEPS", default_value = "")]
    script: Script,
    /// Serve the relay on plain ws:// instead of wss:// (TLS with a throwaway CA).
    #[arg(long)]
    plain_ws: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The answerer's pairing code, or a zajel:// link (its server is used). Not with
    /// --contact.
    #[arg(required_unless_present = "contact", conflicts_with = "contact")]
    target: Option<String>,
    /// Call a contact paired before (its name in `call-probe contacts list`): register a fresh
    /// code, meet it through rendezvous on the relay (as Zajel's app does), pair and call.
    /// Its `call-probe answer` must be running (it registers its contacts' points).
    #[arg(long, value_name = "NAME")]
    contact: Option<String>,
    /// With --contact: seconds to wait for the contact at rendezvous (then exit 1,
    /// error_kind contact_not_found).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    find_timeout: f64,
    /// Save the answerer, when this run pairs with it for the first time, as this contact
    /// name (default: its pairing code); rename later with `call-probe contacts rename`.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Seconds of audio once the call is connected.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Also send and receive video (VP8 test pattern; needs the `video` cargo feature,
    /// without it the track is only negotiated).
    #[arg(long)]
    video: bool,
    /// Call controls to carry out once the call is connected, as TIME:ACTION steps separated
    /// by commas, times counted from the connection (`2s`, `1.5s`, `500ms`). Actions: mute,
    /// unmute (silence instead of the tone), camera-off, camera-on (black frames instead of the
    /// pattern), switch-camera (the other test pattern, same track), add-video (turn an audio
    /// call into a video call: a new offer on the same call). Each shows in the other side's
    /// report. Example: --script "1s:mute,2s:unmute,3s:camera-off,4s:camera-on,5s:switch-camera"
    #[arg(long, value_name = "STEPS", default_value = "")]
    script: Script,
    /// The answerer's public key (standard base64, as `answer` prints it), checked out of
    /// band: if pairing hands another key, no call is placed (exit 6).
    #[arg(long)]
    peer_key: Option<String>,
    #[command(flatten)]
    media: MediaArgs,
    /// Use this relay when discovery found it usable (else discovery's best): discovery
    /// still runs, for the signed fleet where a contact on another relay is met.
    #[arg(long, value_name = "URL")]
    prefer_server: Option<String>,
    #[command(flatten)]
    discovery: DiscoveryArgs,
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
    /// Save a caller that pairs with this answerer for the first time as this contact name
    /// (default: its pairing code; a taken name gets the key's start appended).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Do not register the contacts' rendezvous points. By default, when the state folder
    /// holds contacts, the answerer registers them all (as Zajel's app does after connecting,
    /// and again 5 s later) so that a contact can reach it with `call --contact` although its
    /// pairing code is new.
    #[arg(long)]
    no_rendezvous: bool,
    /// Use this relay when discovery found it usable (else discovery's best): discovery
    /// still runs, for the signed fleet where contacts on other relays are met.
    #[arg(long, value_name = "URL")]
    prefer_server: Option<String>,
    /// Call controls carried out on every answered call once it is connected (the callee's
    /// side), as TIME:ACTION steps separated by commas, times counted from the connection
    /// (`2s`, `1.5s`, `500ms`). Actions: mute, unmute, camera-off, camera-on, switch-camera
    /// (as `call --script`; add-video is the caller's: the callee's is refused and logged).
    /// Each shows in the caller's report. Example: --script "1s:mute,2s:unmute,3s:camera-off"
    #[arg(long, value_name = "STEPS", default_value = "")]
    script: Script,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    discovery: DiscoveryArgs,
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
    discovery: DiscoveryArgs,
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
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Prints `report` as JSON, or as its table for a person.
fn print_report<R: serde::Serialize>(json: bool, report: &R, table: fn(&R) -> String) {
    if json {
        print_json(report);
    } else {
        out!("{}", table(report));
    }
}

/// `--video` on a build without the `video` feature.
#[cfg(feature = "demo")]
pub const VIDEO_NEEDS_FEATURE: &str = "--video needs call-probe built with the `video` cargo \
    feature (VP8 through libvpx: apt-get install libvpx-dev, then cargo build -p call-probe \
    --features video); this build only negotiates the video track";

#[cfg(feature = "demo")]
pub async fn demo(args: DemoArgs) -> ExitCode {
    let duration = match seconds(args.duration, "--duration") {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    if args.video && !cfg!(feature = "video") {
        return usage(VIDEO_NEEDS_FEATURE);
    }
    let mut options = DemoOptions {
        duration,
        with_video: args.video,
        plain_ws: args.plain_ws,
        script: args.script,
        ..DemoOptions::default()
    };
    options.line.relay_only = args.turn.relay_only;
    options.line.turn_transport = args.turn.turn_transport;
    match run_demo(&options).await {
        Ok(report) => {
            print_report(args.json, &report, DemoReport::to_table);
            if report.media_both_ways && report.video_both_ways != Some(false) {
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
/// `--prefer-server`: moves the choice to that relay when discovery found it usable.
fn prefer(choice: &mut ServerChoice, preferred: Option<&str>) {
    let Some(preferred) = preferred else { return };
    let wanted = zajel_wire::endpoint::signaling_url(preferred).map(|u| u.to_string());
    let usable = choice.usable_servers();
    match usable
        .iter()
        .find(|url| wanted.as_deref().is_ok_and(|w| w == url.as_str()) || url.as_str() == preferred)
    {
        Some(url) => {
            let url = url.clone();
            choice.moved_to(&url);
        }
        None => tracing::warn!(
            preferred,
            "--prefer-server is not among the servers discovery found usable"
        ),
    }
}

async fn choose_server(
    discovery: &DiscoveryArgs,
    link: Option<&ShareLink>,
) -> Result<ServerChoice, String> {
    if let Some(first) = link.and_then(|l| l.servers.first()) {
        if discovery.nothing_configured() {
            return ServerChoice::from_link(first).map_err(|e| e.to_string());
        }
    }
    let links: Vec<String> = link
        .filter(|l| !l.servers.is_empty())
        .map(|l| vec![l.to_uri()])
        .unwrap_or_default();
    if discovery.nothing_configured() && links.is_empty() && discovery.no_cache {
        return Err(
            "no server: give --server, --registry/--registry-key, --doh/--domain, or a zajel:// link with ?server="
                .into(),
        );
    }
    let config = discovery.config(links).map_err(|e| e.to_string())?;
    ServerChoice::discover(config)
        .await
        .map_err(|e| e.to_string())
}

/// `call` stopped by a signal before any call was placed (discovery still running): no call to
/// hang up; says so (JSON with `--json`) and exits 130.
fn interrupted_before_the_call(json: bool, signal: &str) -> ExitCode {
    let error = format!("interrupted by {signal} during discovery, before any call");
    if json {
        print_json(&serde_json::json!({
            "server": null,
            "call": null,
            "error": error,
            "error_kind": call_probe::ErrorKind::Interrupted,
        }));
    }
    eprintln!("error: {error}");
    ExitCode::from(discovery_client::exit::INTERRUPTED)
}

pub async fn call(args: CallArgs) -> ExitCode {
    if let Err(e) = args.media.check() {
        return usage(e);
    }
    let duration = match seconds(args.duration, "--duration") {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let find_timeout = match seconds(args.find_timeout, "--find-timeout") {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    if let Some(name) = &args.name {
        if let Err(e) = call_probe::contacts::check_name(name) {
            return usage(format!("--name: {e}"));
        }
    }
    let link = match (&args.target, &args.contact) {
        (Some(target), _) => match ShareLink::parse(target) {
            Ok(link) => Some(link),
            Err(e) => return usage(format!("{target}: {e}")),
        },
        (None, Some(name)) => {
            // An unknown name is a usage error before anything goes on the network.
            if args.media.ephemeral_identity {
                return usage(
                    "--contact needs the state folder's contacts, not --ephemeral-identity",
                );
            }
            match args.media.line_options(440.0).line_keys() {
                Ok(keys) => {
                    if let Err(e) = call_probe::line::lock_contacts(&keys.contacts).named(name) {
                        return usage(format!("--contact: {e}"));
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            None
        }
        (None, None) => return usage("give a pairing code or link, or --contact NAME"),
    };
    let roots = match args.discovery.trust.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    if let Some(key) = &args.peer_key {
        if zajel_wire::pairing::decode_x25519_public_key(key.trim()).is_none() {
            return usage("--peer-key must be a standard base64 32-byte X25519 public key");
        }
    }
    // From here on Ctrl-C / SIGTERM stop the run with a report: during discovery there is no
    // call to hang up yet; once a call runs, it is hung up first.
    let mut interrupt = Interrupt::from_signals();
    let progress = Progress::stderr();
    progress.say("discovering servers");
    let chosen = tokio::select! {
        chosen = choose_server(&args.discovery, link.as_ref()) => chosen,
        signal = interrupt.fired() => return interrupted_before_the_call(args.media.json, signal),
    };
    let mut choice = match chosen {
        Ok(choice) => choice,
        Err(e) => return usage(e),
    };
    prefer(&mut choice, args.prefer_server.as_deref());
    let Some(url) = choice.url() else {
        if args.media.json {
            print_json(&serde_json::json!({"server": choice, "call": null}));
        } else {
            out!("{}", choice.to_table());
        }
        eprintln!("error: no server found");
        return ExitCode::from(call_probe::check::EXIT_NO_SERVER);
    };
    let mut options = match (&link, &args.contact) {
        (Some(link), _) => CallOptions::new(url.clone(), link.code),
        (None, Some(name)) => CallOptions::to_contact(url.clone(), name),
        (None, None) => unreachable!("checked above"),
    };
    options.find_timeout = find_timeout;
    options.duration = duration;
    options.with_video = args.video;
    options.script = args.script;
    options.peer_key = args.peer_key.clone();
    options.fleet = choice.signed_fleet();
    options.proven_servers = choice
        .identities
        .iter()
        .filter(|identity| identity.verified)
        .filter_map(|identity| Some((identity.url.clone(), identity.proven_server_id.clone()?)))
        .collect();
    options.line = args.media.line_options(440.0).trusting(roots);
    options.line.contact_name = args.name.clone();
    options.interrupt = interrupt;
    options.progress = progress;
    // With discovery, a server that fails call authentication is left for the next one.
    let servers: Vec<url::Url> = if choice.how == "discovery" {
        choice
            .usable_servers()
            .iter()
            .filter_map(|s| url::Url::parse(s).ok())
            .collect()
    } else {
        vec![url]
    };
    let (report, servers_tried) = run_call_moving_on(&options, &servers).await;
    choice.moved_to(&report.server);
    if args.media.json {
        print_json(
            &serde_json::json!({"server": choice, "call": report, "servers_tried": servers_tried}),
        );
    } else {
        out!("{}", choice.to_table());
        for tried in &servers_tried {
            outln!(
                "left server        {} ({})",
                tried.server,
                tried
                    .error_kind
                    .and_then(|k| serde_json::to_value(k).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            );
        }
        out!("{}", report.to_table());
    }
    if report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        if let Some(error) = &report.error {
            eprintln!("error: {error}");
        }
        match report.error_kind {
            Some(ErrorKind::MediaNotAuthenticated | ErrorKind::PeerKeyMismatch) => {
                ExitCode::from(EXIT_NOT_AUTHENTICATED)
            }
            Some(ErrorKind::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
            Some(ErrorKind::UnknownContact | ErrorKind::ContactName) => ExitCode::from(EXIT_USAGE),
            _ => ExitCode::FAILURE,
        }
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
    let roots = match args.discovery.trust.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    // Ctrl-C / SIGTERM from here on: before registration nothing is on the line yet, so the
    // run stops at once and says so; once serving, the call in progress is hung up first.
    let mut interrupt = Interrupt::from_signals();
    let json = args.media.json;
    let stopped_early = |signal: &str, step: &str| {
        if json {
            outln!(
                "{}",
                serde_json::json!({"event": "stopped", "signal": signal, "calls": 0, "during": step})
            );
        }
        eprintln!("error: interrupted by {signal} during {step}, before any call");
        ExitCode::from(EXIT_INTERRUPTED)
    };
    Progress::stderr().say("discovering servers");
    let chosen = tokio::select! {
        chosen = choose_server(&args.discovery, None) => chosen,
        signal = interrupt.fired() => return stopped_early(signal, "discovery"),
    };
    let mut choice = match chosen {
        Ok(choice) => choice,
        Err(e) => return usage(e),
    };
    prefer(&mut choice, args.prefer_server.as_deref());
    let Some(url) = choice.url() else {
        out!("{}", choice.to_table());
        eprintln!("error: no server found");
        return ExitCode::from(call_probe::check::EXIT_NO_SERVER);
    };
    let mut options = AnswerOptions::new(url);
    options.code = code;
    options.max_calls = if args.once { Some(1) } else { args.max_calls };
    options.echo = args.echo;
    options.decline = args.decline;
    options.script = args.script;
    options.rendezvous = !args.no_rendezvous;
    options.fleet = choice.signed_fleet();
    options.line = args.media.line_options(660.0).trusting(roots);
    options.line.contact_name = args.name.clone();
    let started = tokio::select! {
        started = Answerer::start(options) => started,
        signal = interrupt.fired() => return stopped_early(signal, "registration"),
    };
    let answerer = match started {
        Ok(a) => a,
        Err(e) if e.kind() == ErrorKind::StateDir || e.kind() == ErrorKind::NoRandomness => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(call_probe::check::EXIT_SIGNALING_BLOCKED);
        }
    };
    if json {
        outln!(
            "{}",
            serde_json::json!({"event": "registered", "code": answerer.code.as_str(),
                "uri": answerer.share_uri, "serverId": answerer.server_id, "server": choice.server,
                "publicKey": answerer.public_key, "rendezvousContacts": answerer.rendezvous_contacts})
        );
    } else {
        out!("{}", choice.to_table());
        outln!("pairing code {}", answerer.code.as_str());
        outln!("public key   {}", answerer.public_key);
        if answerer.rendezvous_contacts > 0 {
            outln!(
                "rendezvous   points of {} contact(s) registered",
                answerer.rendezvous_contacts
            );
        }
        outln!("link {}", answerer.share_uri);
        if !args.no_qr {
            if let Ok(qr) = answerer.qr_terminal() {
                outln!("{qr}");
            }
        }
        outln!("waiting for calls");
    }
    let mut refused = false;
    let stopped_by = interrupt.clone();
    let serving = answerer.serve_until(interrupt, |call| {
        refused |= matches!(call.report.end, EndReason::MediaNotAuthenticated { .. });
        if json {
            outln!(
                "{}",
                serde_json::json!({"event": "call_ended", "number": call.number, "report": call.report})
            );
        } else {
            outln!("== call {} ==\n{}", call.number, call.report.to_table());
        }
    });
    match serving.await {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Ok(_) if refused => {
            eprintln!("error: a call was refused: media not authenticated");
            ExitCode::from(EXIT_NOT_AUTHENTICATED)
        }
        Ok(calls) => match stopped_by.fired_by() {
            Some(signal) => {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"event": "stopped", "signal": signal, "calls": calls.len()})
                    );
                } else {
                    outln!("stopped by {signal} after {} call(s)", calls.len());
                }
                ExitCode::from(EXIT_INTERRUPTED)
            }
            None => ExitCode::SUCCESS,
        },
    }
}

pub async fn check(args: CheckArgs) -> ExitCode {
    if args.step_timeout == 0 {
        return usage("--step-timeout must be at least 1 second");
    }
    let roots = match args.discovery.trust.roots() {
        Ok(r) => r,
        Err(e) => return usage(e),
    };
    let discovery = match args.discovery.config(Vec::new()) {
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
            print_report(args.json, &report, CheckReport::to_table);
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `call-probe contacts`: the contacts in the state folder.
#[derive(Args, Debug)]
pub struct ContactsArgs {
    #[command(subcommand)]
    command: ContactsCommand,
    /// The state folder holding contacts.json [default: as for call and answer].
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum ContactsCommand {
    /// List the contacts: name, public key, first and last pairing, whether a call with it
    /// was ever authenticated.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rename a contact (names are unique; `call --contact NEW` then finds it).
    Rename { old: String, new: String },
    /// Forget a contact (its next pairing makes a new one; its calls are no longer
    /// expected to authenticate).
    Remove { name: String },
}

pub fn contacts(args: ContactsArgs) -> ExitCode {
    let dir = match args
        .state_dir
        .clone()
        .map_or_else(call_probe::identity::default_state_dir, Ok)
    {
        Ok(dir) => dir,
        Err(e) => return usage(e),
    };
    let mut contacts = match call_probe::contacts::Contacts::load(&dir) {
        Ok(contacts) => contacts,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = match args.command {
        ContactsCommand::List { json } => {
            let all: Vec<_> = contacts.all().cloned().collect();
            if json {
                print_json(&serde_json::json!({"contacts": all}));
            } else if all.is_empty() {
                outln!("no contacts in {}", dir.display());
            } else {
                for c in &all {
                    outln!(
                        "{:<20} {}  {}",
                        c.name,
                        c.key,
                        if c.authenticated {
                            "authenticated"
                        } else {
                            "not authenticated yet"
                        }
                    );
                }
            }
            Ok(())
        }
        ContactsCommand::Rename { old, new } => contacts.rename(&old, &new),
        ContactsCommand::Remove { name } => contacts.remove(&name).map(|_| ()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == ErrorKind::StateDir => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => usage(e),
    }
}
