//! `hostile-relay`: the test harness's hostile relay
//! ([`tests::hostile_relay`]) as a process, for suites that start their
//! parts as children in network namespaces (the censorship suite).
//!
//! ```text
//! hostile-relay --listen ADDR --upstream URL --mode MODE --server-key-file SEED_HEX
//!               [--public-endpoint URL] [--tls-cert PEM --tls-key PEM] [--ca-file PEM]
//!               [--udp-bind IP] [--loopback]
//! ```
//!
//! It prints `server id ed25519:…`, then `listening on <url>`, then the
//! tally as one JSON line (`{"event":"tally",…}`) each time it changes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use call_probe::config::CallConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use tests::hostile_relay::{HostileRelay, HostileRelayConfig, Mode};
use url::Url;
use zajel_client_net::signaling::TrustAnchors;

struct Args {
    listen: SocketAddr,
    upstream: Url,
    mode: Mode,
    server_key_file: PathBuf,
    public_endpoint: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
    ca_file: Option<PathBuf>,
    udp_bind: Option<IpAddr>,
    loopback: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut values = std::collections::HashMap::new();
    let mut loopback = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--loopback" {
            loopback = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        values.insert(flag, value);
    }
    let mut take = |flag: &str| values.remove(flag);
    let required = |value: Option<String>, flag: &str| value.ok_or(format!("{flag} is required"));
    let parsed = Args {
        listen: required(take("--listen"), "--listen")?
            .parse()
            .map_err(|e| format!("--listen: {e}"))?,
        upstream: Url::parse(&required(take("--upstream"), "--upstream")?)
            .map_err(|e| format!("--upstream: {e}"))?,
        mode: Mode::from_name(&required(take("--mode"), "--mode")?).ok_or(
            "--mode: honest, swap_fingerprints, strip_auth or swap_pairing_keys".to_string(),
        )?,
        server_key_file: required(take("--server-key-file"), "--server-key-file")?.into(),
        public_endpoint: take("--public-endpoint"),
        tls: match (take("--tls-cert"), take("--tls-key")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        },
        ca_file: take("--ca-file").map(PathBuf::from),
        udp_bind: take("--udp-bind")
            .map(|ip| ip.parse().map_err(|e| format!("--udp-bind: {e}")))
            .transpose()?,
        loopback,
    };
    if let Some(flag) = values.keys().next() {
        return Err(format!("unknown flag {flag}"));
    }
    Ok(parsed)
}

async fn run(args: Args) -> Result<(), String> {
    let server_key = zajel_client_net::keyfile::read(&args.server_key_file)
        .map_err(|e| format!("--server-key-file: {e}"))?;
    let mut config = HostileRelayConfig::loopback(args.mode, args.upstream);
    config.server_key = server_key;
    config.endpoint = args.public_endpoint.unwrap_or_default();
    if let Some(ca) = &args.ca_file {
        let roots = zajel_client_net::tls::read_pem_certificates(ca).map_err(|e| e.to_string())?;
        config.upstream_trust = TrustAnchors::Only(roots);
    }
    if !args.loopback {
        config.call = CallConfig::default();
    }
    if let Some(ip) = args.udp_bind {
        config.call.udp_bind = SocketAddr::new(ip, 0);
    }
    let tls = match &args.tls {
        Some((cert, key)) => {
            let certificates =
                zajel_client_net::tls::read_pem_certificates(cert).map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key: {e}"))?;
            Some(
                zajel_client_net::tls::server_config_builder()
                    .map_err(|e| e.to_string())?
                    .with_no_client_auth()
                    .with_single_cert(certificates, key)
                    .map_err(|e| format!("--tls-cert: {e}"))?,
            )
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let relay = HostileRelay::start(listener, tls, config).map_err(|e| e.to_string())?;
    println!("server id {}", relay.server_id);
    println!("listening on {}", relay.url);
    let mut tally = relay.watch();
    while tally.changed().await.is_ok() {
        let line = serde_json::json!({"event": "tally", "tally": *tally.borrow_and_update()});
        println!("{line}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
