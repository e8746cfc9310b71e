//! `zajel-discover`: finds a working Zajel signaling server, publishes and
//! checks the signed TXT records, makes and reads sharing QR codes, and
//! manages the cache and friend referrals. See README.md for every flag.
//!
//! Exit codes: the table both CLIs share ([`discovery_client::exit`]): `discover` exits 0
//! when a verified server was found, 7 when only unverified servers answered, 3 when nothing
//! was found; `txt verify` 0 when a verified record is served, else 3; 1 is any other error,
//! 2 a usage error.

// Every line to stdout goes through outln!/out!: a closed pipe ends printing quietly.
#![deny(clippy::print_stdout)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use discovery_client::cli::{
    existing_file, registry_url, ArgsError, DiscoveryArgs, StoreArgs, TrustArgs,
};
use discovery_client::cloudflare::{self, CloudflareError, CloudflareTarget};
use discovery_client::discovery::{Config, Discovery, DiscoveryError, Event};
use discovery_client::dns_update::{self, Rfc2136Target, TsigKey, UpdateError};
use discovery_client::doh::DohServer;
use discovery_client::exit;
use discovery_client::freshness;
use discovery_client::publish::{self, PublishError, PublishRequest};
use discovery_client::report::{CandidateReport, Outcome, Report, Verdict};
use discovery_client::share::{self, QrError, ShareError, ShareLink};
use discovery_client::store::{self, Store, StoreError};
use discovery_client::txt;
use url::Url;
use zajel_client_net::registry_http::RegistryHttp;
use zajel_client_net::terminal::human_time;
use zajel_client_net::{keyfile, out, outln, tls};
use zajel_discovery_core::discovery::{handover, Handover};
use zajel_wire::keys::KeyError;
use zajel_wire::pairing::{PairingCode, PairingCodeError};

/// Why a command failed (printed as `error: <message>`, exit code 1).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    DnsUpdate(#[from] UpdateError),
    #[error(transparent)]
    Cloudflare(#[from] CloudflareError),
    #[error(transparent)]
    Qr(#[from] QrError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KeyFile(#[from] keyfile::KeyFileError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    ShareLink(#[from] ShareError),
    #[error(transparent)]
    PairingCode(#[from] PairingCodeError),
    /// `qr encode --registry-key` is not a public key.
    #[error("--registry-key: {0}")]
    RegistryKey(#[source] KeyError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    WriteSvg {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--valid-hours must be between 1 and 168")]
    ValidHours,
    #[error("--registry-key is needed to verify records")]
    NoRegistryKey,
    #[error("give the link text or --image FILE")]
    NoLinkText,
    #[error("give a sharing link, or --code with --server")]
    NoReferral,
    #[error("the referral names no server")]
    EmptyReferral,
}

impl CliError {
    /// A stable machine-readable name of the failure (the library's kind where it has one).
    fn kind(&self) -> &'static str {
        match self {
            Self::Args(e) => e.kind(),
            Self::Discovery(e) => e.kind(),
            Self::Publish(e) => e.kind(),
            Self::DnsUpdate(e) => e.kind(),
            Self::Cloudflare(e) => e.kind(),
            Self::Qr(e) => e.kind(),
            Self::Store(e) => e.kind(),
            Self::KeyFile(_) => "key_file",
            Self::Tls(_) => "tls_config",
            Self::ShareLink(_) => "share_link",
            Self::PairingCode(_) => "pairing_code",
            Self::RegistryKey(_) => "registry_key",
            Self::Json(_) => "json",
            Self::WriteSvg { .. } => "svg_write",
            Self::ValidHours => "valid_hours",
            Self::NoRegistryKey => "no_registry_key",
            Self::NoLinkText => "no_link_text",
            Self::NoReferral => "no_referral",
            Self::EmptyReferral => "empty_referral",
        }
    }
}

#[derive(Parser)]
#[command(
    name = "zajel-discover",
    version,
    about = "Find working Zajel signaling servers when the registry is blocked",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every layer at once and report the best working server.
    #[command(after_help = exit::HELP)]
    Discover(DiscoverArgs),
    /// Publish or check the signed `_zajel.<domain>` TXT records.
    #[command(subcommand, after_help = exit::HELP)]
    Txt(TxtCommand),
    /// Make or read sharing QR codes (`zajel://CODE?server=…`).
    #[command(subcommand)]
    Qr(QrCommand),
    /// Show or clear the cache of servers that worked.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Remember or list servers that paired contacts shared.
    #[command(subcommand)]
    Referral(ReferralCommand),
}

#[derive(Args)]
struct DiscoverArgs {
    #[command(flatten)]
    discovery: DiscoveryArgs,
    /// A sharing link (zajel://…) read from a QR code; repeatable.
    #[arg(long = "share")]
    shares: Vec<String>,
    /// An image file (PNG) holding a sharing QR code; repeatable.
    #[arg(long = "share-image", value_parser = existing_file)]
    share_images: Vec<PathBuf>,
    /// Longest wait for a server's pong, ms.
    #[arg(long, default_value_t = 3000)]
    probe_timeout_ms: u64,
    /// Delay between starting the registry and DoH layers, ms.
    #[arg(long, default_value_t = 50)]
    stagger_ms: u64,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Stop at the first verified server instead of waiting for every layer: the report then
    /// shows the layers and checks still running as `pending` (and `complete: false`).
    #[arg(long)]
    first: bool,
}

#[derive(Subcommand)]
enum TxtCommand {
    /// Fetch and verify the registry's list, sign it as TXT records, print them.
    Publish(Box<PublishArgs>),
    /// Show what DoH resolvers serve for _zajel.<domain> and whether it verifies.
    Verify(VerifyArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// A zone-file snippet for BIND, Knot or NSD.
    Zone,
    /// JSON for a DNS provider's API.
    Json,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("publish_target").args(["rfc2136", "cloudflare_zone"])))]
struct PublishArgs {
    /// The registry's base URL.
    #[arg(long, value_parser = registry_url)]
    registry: Url,
    /// The registry's seed file (64 hex characters), as `bootstrap-worker keygen` writes it.
    #[arg(long, value_parser = existing_file)]
    key_file: PathBuf,
    /// The domain (records go to _zajel.<domain>).
    #[arg(long)]
    domain: String,
    #[arg(long, value_enum, default_value = "zone")]
    format: Format,
    /// TTL of the records, seconds.
    #[arg(long, default_value_t = 300)]
    ttl: u32,
    /// How long the signed records stay valid, hours (at most 168: clients
    /// refuse expiries more than 7 days ahead).
    #[arg(long, default_value_t = 72)]
    valid_hours: u64,
    /// Also publish a signed revocation of this retired server (its
    /// serverId, `ed25519:…`), valid 7 days; repeatable. Its record is left out.
    #[arg(long = "revoke")]
    revoke: Vec<String>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Longest wait for the registry, ms.
    #[arg(long, default_value_t = 10000)]
    timeout_ms: u64,
    /// Validity in seconds instead of --valid-hours (for tests of short expiries).
    #[arg(long, hide = true)]
    valid_secs: Option<u64>,
    #[command(flatten)]
    rfc2136: Rfc2136Args,
    #[command(flatten)]
    cloudflare: CloudflareArgs,
    /// Only show what would change: the difference with what the
    /// authoritative server (--rfc2136) or Cloudflare serves now; nothing is sent.
    #[arg(long, conflicts_with = "every")]
    dry_run: bool,
    /// Keep running: check every DURATION (`90s`, `30m`, `6h`), republish when
    /// the registry's list changed or the published records reached half their
    /// lifetime, skip otherwise. Needs --rfc2136 or --cloudflare-zone.
    #[arg(long, value_parser = duration_arg, requires = "publish_target")]
    every: Option<Duration>,
    /// With --every: after each check, write when it last published and how
    /// it went as Prometheus text to this file (node_exporter's textfile collector).
    #[arg(long, requires = "every")]
    metrics_textfile: Option<PathBuf>,
}

/// RFC 2136 dynamic update with TSIG: where to publish.
#[derive(Args)]
struct Rfc2136Args {
    /// Publish by RFC 2136 dynamic update to this authoritative server (IP:PORT, TCP).
    #[arg(long, value_name = "IP:PORT", requires_all = ["zone", "tsig_key_file"])]
    rfc2136: Option<std::net::SocketAddr>,
    /// The zone the _zajel name is in (its SOA owner), e.g. example.org.
    #[arg(long, requires = "rfc2136")]
    zone: Option<String>,
    /// The TSIG key file: one line `hmac-sha256:<key name>:<base64 secret>` (as knsupdate -y takes it).
    #[arg(long, value_parser = existing_file, requires = "rfc2136")]
    tsig_key_file: Option<PathBuf>,
}

/// Cloudflare's DNS API: where to publish.
#[derive(Args)]
struct CloudflareArgs {
    /// Publish through Cloudflare's DNS API into this zone (e.g. example.org);
    /// the API token (Zone.DNS:Edit) comes from CLOUDFLARE_API_TOKEN or --cloudflare-token-file.
    #[arg(long, conflicts_with = "rfc2136")]
    cloudflare_zone: Option<String>,
    /// A file whose first line is the Cloudflare API token.
    #[arg(long, value_parser = existing_file, requires = "cloudflare_zone")]
    cloudflare_token_file: Option<PathBuf>,
    /// The API's base URL (tests point it at a local stand-in).
    #[arg(long, hide = true, default_value = cloudflare::DEFAULT_API)]
    cloudflare_api: Url,
}

/// Where `txt publish` puts the records.
enum PublishTarget {
    Rfc2136(Rfc2136Target),
    Cloudflare(Box<RegistryHttp>, CloudflareTarget),
}

impl PublishTarget {
    async fn replace(
        &self,
        records: &[txt::PublishedRecord],
        dry_run: bool,
    ) -> Result<dns_update::UpdateOutcome, CliError> {
        Ok(match self {
            Self::Rfc2136(target) => dns_update::replace(target, records, dry_run).await?,
            Self::Cloudflare(http, target) => {
                cloudflare::replace(http, target, records, dry_run).await?
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Self::Rfc2136(target) => target.server.to_string(),
            Self::Cloudflare(_, target) => format!("Cloudflare zone {}", target.zone),
        }
    }

    fn how(&self) -> &'static str {
        match self {
            Self::Rfc2136(_) => "replaced by one RFC 2136 update",
            Self::Cloudflare(..) => "replaced through Cloudflare's API",
        }
    }
}

/// `90s`, `30m`, `6h`, `2d` or plain seconds.
fn duration_arg(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    match number * unit {
        0 => Err("the period must be more than 0".into()),
        secs => Ok(Duration::from_secs(secs)),
    }
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long)]
    domain: String,
    /// DNS-over-HTTPS server: URL, or URL,ip=ADDRESS; repeatable.
    #[arg(long = "doh", required = true)]
    doh: Vec<DohServer>,
    #[command(flatten)]
    trust: TrustArgs,
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum QrCommand {
    /// Make a sharing link and show it as a QR code.
    Encode(QrEncodeArgs),
    /// Read a sharing link from text or from an image file.
    Decode(QrDecodeArgs),
}

#[derive(Args)]
struct QrEncodeArgs {
    /// Your pairing code (6 characters).
    #[arg(long)]
    code: String,
    /// A server to meet on; repeatable.
    #[arg(long = "server")]
    servers: Vec<String>,
    /// The registry key to include (standard base64).
    #[arg(long)]
    registry_key: Option<String>,
    /// Also write the QR code as PNG.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Also write the QR code as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print only the link, no QR code.
    #[arg(long)]
    no_terminal: bool,
}

#[derive(Args)]
struct QrDecodeArgs {
    /// The link text (zajel://… or a bare code).
    text: Option<String>,
    /// An image file holding the QR code.
    #[arg(long, conflicts_with = "text", value_parser = existing_file)]
    image: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List cached servers.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Forget cached servers (referrals are kept).
    Clear {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ReferralCommand {
    /// Remember the servers a contact shared: a sharing link, or --code with --server.
    Add {
        /// A sharing link (zajel://CODE?server=…).
        link: Option<String>,
        #[arg(long, conflicts_with = "link")]
        code: Option<String>,
        #[arg(long = "server")]
        servers: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List remembered referrals.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::debug!(kind = e.kind(), "command failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Discover(args) => discover(args).await,
        Command::Txt(TxtCommand::Publish(args)) => txt_publish(*args).await,
        Command::Txt(TxtCommand::Verify(args)) => txt_verify(args).await,
        Command::Qr(QrCommand::Encode(args)) => qr_encode(args),
        Command::Qr(QrCommand::Decode(args)) => qr_decode(args),
        Command::Cache(command) => cache(command),
        Command::Referral(command) => referral(command),
    }
}

async fn discover(args: DiscoverArgs) -> Result<u8, CliError> {
    let mut share_links = args.shares.clone();
    for path in &args.share_images {
        share_links.push(share::decode_image_file(path)?);
    }
    if !args.discovery.no_cache {
        // The cache is part of every run: say where it cannot be rather than go without it.
        args.discovery.store.path()?;
    }
    let config = Config {
        probe_timeout: Duration::from_millis(args.probe_timeout_ms),
        stagger: Duration::from_millis(args.stagger_ms),
        ..args.discovery.config(share_links)?
    };
    let discovery = Discovery::new(config)?;
    let progress = std::io::stderr().is_terminal();
    let mut run = discovery.run();
    let mut report = None;
    while let Some(event) = run.next_event().await {
        if progress {
            show_progress(&event);
        }
        match (handover(&event), event) {
            (Some(Handover::Verified(candidate)), _) if args.first => {
                // The discovery machine hands the first verified server over: stop there.
                let mut now = run.report();
                now.best = Some(candidate);
                now.verdict = Verdict::Verified;
                report = Some(now);
                break;
            }
            (_, Event::Finished(done)) => report = Some(*done),
            _ => {}
        }
    }
    let report = report.unwrap_or_else(|| run.report());
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(verdict_code(report.verdict))
}

/// A progress line on stderr for a layer that ended or a server that answered.
fn show_progress(event: &Event) {
    match event {
        Event::LayerFinished(layer) => eprintln!(
            "  {:<8} {} ({} candidates, {:.0} ms){}",
            layer.layer.as_str(),
            layer.outcome,
            layer.candidates,
            layer.finished_ms,
            if layer.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", layer.detail)
            }
        ),
        Event::Usable(candidate) => eprintln!(
            "  usable   {} ({}, {:.1} ms)",
            candidate.url,
            if candidate.verified {
                "verified"
            } else {
                "unverified"
            },
            candidate.rtt_ms.unwrap_or_default()
        ),
        _ => {}
    }
}

fn verdict_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Verified => exit::OK,
        Verdict::UnverifiedOnly => exit::UNVERIFIED_ONLY,
        Verdict::Nothing => exit::NO_SERVER,
    }
}

/// The identity part of a candidate's row: who it proved to be, or why not.
fn identity_column(c: &CandidateReport) -> String {
    match (&c.proven_server_id, c.outcome) {
        (Some(id), _) if c.verified => format!(" identity proven {id}"),
        (Some(id), _) => format!(" identity learnt {id} (no signed entry names a key)"),
        (None, Outcome::IdentityMismatch | Outcome::IdentityUnproven) => {
            format!(" ({})", c.detail)
        }
        (None, _) => String::new(),
    }
}

fn print_report(report: &Report) {
    if !report.complete {
        outln!(
            "stopped at the first verified server after {:.0} ms (--first): what was still running is pending",
            report.duration_ms
        );
    }
    outln!("layers:");
    for layer in &report.layers {
        outln!(
            "  {:<8} {:<18} {:>3} candidates  {:>7.1} ms{}",
            layer.layer.as_str(),
            layer.outcome.as_str(),
            layer.candidates,
            layer.finished_ms - layer.started_ms,
            if layer.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", layer.detail)
            }
        );
    }
    outln!("candidates:");
    for c in &report.candidates {
        let sources: Vec<&str> = c.sources.iter().map(|s| s.as_str()).collect();
        outln!(
            "  {} [{}] {} {}{}{}",
            c.url,
            sources.join(","),
            if c.verified { "verified" } else { "unverified" },
            c.outcome,
            identity_column(c),
            match c.rtt_ms {
                Some(rtt) => format!(" rtt {rtt:.1} ms"),
                None if c.detail.is_empty() => String::new(),
                None => format!(": {}", c.detail),
            }
        );
    }
    for warning in &report.warnings {
        outln!("warning: {warning}");
    }
    match &report.best {
        Some(best) => outln!(
            "best: {} ({})",
            best.url,
            if best.verified {
                "verified"
            } else {
                "unverified"
            }
        ),
        None => outln!("best: none: no server answered"),
    }
}

async fn txt_publish(args: PublishArgs) -> Result<u8, CliError> {
    let valid_secs = args.valid_secs.unwrap_or(args.valid_hours * 3600);
    if valid_secs == 0 || valid_secs > txt::MAX_VALIDITY_SECS {
        return Err(CliError::ValidHours);
    }
    let key = keyfile::read(&args.key_file)?;
    let tls = tls::client_config(&args.trust.roots()?)?;
    let request = PublishRequest {
        registry: args.registry.clone(),
        extra_registry_keys: args.trust.keys()?,
        domain: args.domain.clone(),
        ttl: args.ttl,
        valid_for: Duration::from_secs(valid_secs),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let target = if let Some(server) = args.rfc2136.rfc2136 {
        Some(PublishTarget::Rfc2136(Rfc2136Target {
            server,
            zone: args.rfc2136.zone.clone().unwrap_or_default(),
            key: TsigKey::from_file(
                args.rfc2136
                    .tsig_key_file
                    .as_deref()
                    .unwrap_or_else(|| std::path::Path::new("")),
            )?,
            timeout: Duration::from_millis(args.timeout_ms),
        }))
    } else if let Some(zone) = &args.cloudflare.cloudflare_zone {
        let token = cloudflare::ApiToken::from_file_or_env(
            args.cloudflare.cloudflare_token_file.as_deref(),
            std::env::var("CLOUDFLARE_API_TOKEN").ok(),
        )?;
        let http = discovery_client::registry::http_client(
            tls.clone(),
            Duration::from_millis(args.timeout_ms),
        )
        .map_err(PublishError::from)?;
        Some(PublishTarget::Cloudflare(
            Box::new(http),
            CloudflareTarget {
                api: args.cloudflare.cloudflare_api.clone(),
                zone: zone.clone(),
                token,
            },
        ))
    } else {
        None
    };
    if let Some(target) = target {
        return match args.every {
            None => {
                let records = publish::publish_revoking(&request, &args.revoke, &key, tls).await?;
                let outcome = target.replace(&records, args.dry_run).await?;
                report_update(&target, &records, &outcome, args.dry_run);
                Ok(0)
            }
            Some(every) => {
                let fresh = KeepFresh {
                    every,
                    metrics_textfile: args.metrics_textfile.clone(),
                };
                keep_fresh(&request, &args.revoke, &key, tls, &target, &fresh).await
            }
        };
    }
    let records = publish::publish_revoking(&request, &args.revoke, &key, tls).await?;
    match args.format {
        Format::Zone => out!("{}", txt::zone_snippet(&records)),
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&publish::provider_json(&records))?
        ),
    }
    eprintln!(
        "signed {} record(s) for {}",
        records.len(),
        txt::record_name(&args.domain)
    );
    Ok(0)
}

fn report_update(
    target: &PublishTarget,
    records: &[txt::PublishedRecord],
    outcome: &dns_update::UpdateOutcome,
    dry_run: bool,
) {
    let name = records.first().map(|r| r.name.as_str()).unwrap_or("");
    for line in outcome.diff.lines() {
        outln!("{line}");
    }
    let what = if outcome.unchanged {
        "unchanged: no update sent"
    } else if dry_run {
        "dry run: nothing sent"
    } else {
        target.how()
    };
    eprintln!(
        "{name} on {}: {what} (+{} -{} ={})",
        target.describe(),
        outcome.diff.add.len(),
        outcome.diff.remove.len(),
        outcome.diff.keep.len()
    );
}

/// How `txt publish --every` runs.
struct KeepFresh {
    every: Duration,
    metrics_textfile: Option<PathBuf>,
}

/// Writes the metrics file whole (a temporary file renamed over it).
fn write_metrics(path: &std::path::Path, text: &str) {
    let temporary = path.with_extension("prom.tmp");
    let written = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        eprintln!("keep-fresh: cannot write {}: {e}", path.display());
    }
}

/// `txt publish --every`: the republication loop around [`freshness::RepublishSchedule`].
/// Each check fetches and signs the registry's list; the schedule decides
/// whether to send it. Failures are reported and retried; the loop runs until killed.
async fn keep_fresh(
    request: &PublishRequest,
    revoke: &[String],
    key: &ed25519_dalek::SigningKey,
    tls: rustls::ClientConfig,
    target: &PublishTarget,
    fresh: &KeepFresh,
) -> Result<u8, CliError> {
    let mut schedule = freshness::RepublishSchedule::new(fresh.every.as_secs());
    let mut failures = 0u64;
    let name = txt::record_name(&request.domain);
    loop {
        let now = discovery_client::now_ms() / 1000;
        let attempt = async {
            let records = publish::publish_revoking(request, revoke, key, tls.clone()).await?;
            let fingerprint = freshness::fingerprint(&records);
            match schedule.decide(now, &fingerprint) {
                freshness::Decision::Skip => Ok::<_, CliError>(None),
                freshness::Decision::Publish(reason) => {
                    let outcome = target.replace(&records, false).await?;
                    Ok(Some((reason, outcome, fingerprint)))
                }
            }
        }
        .await;
        let expires = now + request.valid_for.as_secs().max(10);
        match attempt {
            Ok(None) => eprintln!(
                "keep-fresh: {name} unchanged, skipped (last publication {}, refresh at {})",
                schedule.last_published_at().unwrap_or(0),
                schedule.refresh_at().unwrap_or(0)
            ),
            Ok(Some((reason, outcome, fingerprint))) => {
                let detail = format!(
                    "{reason:?}: +{} -{} ={}",
                    outcome.diff.add.len(),
                    outcome.diff.remove.len(),
                    outcome.diff.keep.len()
                );
                eprintln!(
                    "keep-fresh: {name} published at {now} to {} ({detail}), valid until {expires}",
                    target.describe()
                );
                schedule.on_published(now, expires, fingerprint, detail);
            }
            Err(e) => {
                eprintln!(
                    "keep-fresh: {name} publication failed at {now} ({}): {e}",
                    e.kind()
                );
                schedule.on_failed(now, e.to_string());
                failures += 1;
            }
        }
        if let Some(path) = &fresh.metrics_textfile {
            write_metrics(path, &schedule.prometheus_text(failures));
        }
        let wake = schedule.next_check(now);
        eprintln!("keep-fresh: next check at {wake}");
        let wait = wake.saturating_sub(discovery_client::now_ms() / 1000);
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

async fn txt_verify(args: VerifyArgs) -> Result<u8, CliError> {
    let keys = args.trust.keys()?;
    if keys.is_empty() {
        return Err(CliError::NoRegistryKey);
    }
    let tls = tls::client_config(&args.trust.roots()?)?;
    let checks = publish::verify(
        &args.domain,
        &args.doh,
        &keys,
        &tls,
        Duration::from_millis(args.timeout_ms),
    )
    .await;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            outln!(
                "{} → {}: {}{} ({} record(s), {} verified)",
                check.resolver,
                check.name,
                check.outcome,
                if check.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", check.detail)
                },
                check.records.len(),
                check.verified
            );
            for record in &check.records {
                match (&record.entry, &record.refused) {
                    (Some(entry), _) => outln!(
                        "  ok       {} {} (expires {})",
                        entry.endpoint,
                        entry.server_id,
                        human_time(
                            entry.expires.saturating_mul(1000),
                            discovery_client::now_ms()
                        )
                    ),
                    (None, Some(reason)) => outln!("  refused  {reason}: {}", record.text),
                    _ => {
                        if let Some(revocation) = &record.revocation {
                            outln!(
                                "  revoke   {} (until {})",
                                revocation.server_id,
                                human_time(
                                    revocation.expires.saturating_mul(1000),
                                    discovery_client::now_ms()
                                )
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(if checks.iter().any(|c| c.verified > 0) {
        exit::OK
    } else {
        exit::NO_SERVER
    })
}

fn qr_encode(args: QrEncodeArgs) -> Result<u8, CliError> {
    let code = PairingCode::parse(&args.code)?;
    let key = args
        .registry_key
        .as_deref()
        .map(|k| zajel_wire::keys::public_key_from_base64(k).map_err(CliError::RegistryKey))
        .transpose()?;
    let link = ShareLink::new(code, &args.servers, key.as_ref())?;
    let uri = link.to_uri();
    // The files first: a closed stdout (`| head`) must not cost them.
    if let Some(path) = &args.png {
        share::write_png(&uri, path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, share::render_svg(&uri)?).map_err(|source| CliError::WriteSvg {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    outln!("{uri}");
    if !args.no_terminal {
        outln!("{}", share::render_terminal(&uri)?);
    }
    Ok(0)
}

fn qr_decode(args: QrDecodeArgs) -> Result<u8, CliError> {
    let text = match (&args.text, &args.image) {
        (Some(text), None) => text.clone(),
        (None, Some(path)) => share::decode_image_file(path)?,
        _ => return Err(CliError::NoLinkText),
    };
    let link = ShareLink::parse(&text)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&link)?);
    } else {
        outln!("code: {}", link.code);
        for server in &link.servers {
            outln!("server: {server}");
        }
        if let Some(key) = &link.registry_key {
            outln!("registry key: {key}");
        }
    }
    Ok(0)
}

/// Prints the store's warnings (a file moved aside, say) to stderr and returns the store with
/// what it holds now.
fn load_store(args: &StoreArgs) -> Result<(Store, store::StoreData), CliError> {
    let store = args.open()?;
    let (data, warnings) = store.load(discovery_client::now_ms());
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    Ok((store, data))
}

fn cache(command: CacheCommand) -> Result<u8, CliError> {
    match command {
        CacheCommand::List { store, json } => {
            let (store, data) = load_store(&store)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&data.servers)?);
            } else if data.servers.is_empty() {
                outln!("no cached servers ({})", store.path().display());
            } else {
                let now = discovery_client::now_ms();
                for s in &data.servers {
                    outln!(
                        "{} {} last ok {}{}",
                        s.url,
                        if s.verified { "verified" } else { "unverified" },
                        human_time(s.last_ok_ms, now),
                        s.last_fail_ms
                            .map(|t| format!(", last failed {}", human_time(t, now)))
                            .unwrap_or_default()
                    );
                }
            }
        }
        CacheCommand::Clear { store } => {
            let store = store.open()?;
            store.update(discovery_client::now_ms(), |data| data.servers.clear())?;
            outln!("cleared cached servers in {}", store.path().display());
        }
    }
    Ok(0)
}

fn referral(command: ReferralCommand) -> Result<u8, CliError> {
    match command {
        ReferralCommand::Add {
            link,
            code,
            servers,
            store,
        } => {
            let link = match (link, code) {
                (Some(text), None) => ShareLink::parse(&text)?,
                (None, Some(code)) => ShareLink::new(PairingCode::parse(&code)?, &servers, None)?,
                _ => return Err(CliError::NoReferral),
            };
            if link.servers.is_empty() {
                return Err(CliError::EmptyReferral);
            }
            let store = store.open()?;
            let now = discovery_client::now_ms();
            store.update(now, |data| {
                for server in &link.servers {
                    data.add_referral(server, link.code, now);
                }
            })?;
            outln!(
                "remembered {} server(s) from contact {}",
                link.servers.len(),
                link.code
            );
        }
        ReferralCommand::List { store, json } => {
            let (store, data) = load_store(&store)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&data.referrals)?);
            } else if data.referrals.is_empty() {
                outln!("no referrals ({})", store.path().display());
            } else {
                let now = discovery_client::now_ms();
                for r in &data.referrals {
                    outln!(
                        "{} from contact {} (added {})",
                        r.url,
                        r.code,
                        human_time(r.added_ms, now)
                    );
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_takes_durations_with_units_and_refuses_zero() {
        assert_eq!(duration_arg("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration_arg("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration_arg("6h"), Ok(Duration::from_secs(21600)));
        assert_eq!(duration_arg("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(duration_arg("45"), Ok(Duration::from_secs(45)));
        assert!(duration_arg("0h").is_err());
        assert!(duration_arg("5w").is_err());
        assert!(duration_arg("h").is_err());
    }

    #[test]
    fn publish_targets_exclude_each_other_and_every_needs_one() {
        let base = [
            "zajel-discover",
            "txt",
            "publish",
            "--registry",
            "http://127.0.0.1:1",
            "--key-file",
            "Cargo.toml",
            "--domain",
            "example.org",
        ];
        let parse =
            |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra).copied()).map(|_| ());
        assert!(
            parse(&["--every", "1h"]).is_err(),
            "--every without a target"
        );
        assert!(parse(&["--cloudflare-zone", "example.org", "--every", "1h"]).is_ok());
        assert!(parse(&[
            "--cloudflare-zone",
            "example.org",
            "--rfc2136",
            "127.0.0.1:53",
            "--zone",
            "example.org",
            "--tsig-key-file",
            "Cargo.toml",
        ])
        .is_err());
        assert!(
            parse(&["--rfc2136", "127.0.0.1:53"]).is_err(),
            "no zone nor key"
        );
        assert!(parse(&[
            "--cloudflare-zone",
            "example.org",
            "--dry-run",
            "--every",
            "1h"
        ])
        .is_err());
    }

    #[test]
    fn the_cli_keeps_its_messages_and_passes_the_library_kinds_through() {
        let neither = qr_decode(QrDecodeArgs {
            text: None,
            image: None,
            json: false,
        })
        .unwrap_err();
        assert_eq!(neither.kind(), "no_link_text");
        assert_eq!(neither.to_string(), "give the link text or --image FILE");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let unread = qr_decode(QrDecodeArgs {
            text: None,
            image: Some(missing.clone()),
            json: false,
        })
        .unwrap_err();
        assert_eq!(unread.kind(), "qr_read_image");
        assert!(
            unread
                .to_string()
                .starts_with(&format!("cannot read image {}: ", missing.display())),
            "{unread}"
        );

        let bad_code = qr_decode(QrDecodeArgs {
            text: Some("zajel://!!".into()),
            image: None,
            json: false,
        })
        .unwrap_err();
        assert_eq!(bad_code.kind(), "share_link");
    }
}
