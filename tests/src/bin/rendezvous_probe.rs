//! `rendezvous-probe`: finds one known contact through rendezvous the way
//! Zajel's app does (`tests::rendezvous_client`), for the suites that need a
//! contact search inside a network namespace (the censorship scenario
//! "contact on another relay"). It registers `--code` on `--relay`, sends
//! the app's `register_rendezvous` for the contact, and prints JSON lines:
//! `{"event":"registered","code","serverId"}`, then
//! `{"event":"found","peerId","relayId","via"}` for the first match (exit
//! 0), or `{"event":"timeout"}` (exit 1).
//!
//! ```text
//! rendezvous-probe --relay wss://… --code ABC234 --secret HEX32 --contact HEX32 [--ca-file PEM] [--timeout-ms N]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tests::rendezvous_client::RendezvousClient;
use zajel_client_net::signaling::TrustAnchors;

fn hex32(text: &str) -> Result<[u8; 32], String> {
    if text.len() != 64 {
        return Err(format!("{text:?} is not 64 hex characters"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

struct Args {
    relay: String,
    code: String,
    secret: [u8; 32],
    contact: [u8; 32],
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

fn parse() -> Result<Args, String> {
    let mut relay = None;
    let mut code = None;
    let mut secret = None;
    let mut contact = None;
    let mut ca_file = None;
    let mut timeout = Duration::from_secs(30);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--relay" => relay = Some(value()?),
            "--code" => code = Some(value()?),
            "--secret" => secret = Some(hex32(&value()?)?),
            "--contact" => contact = Some(hex32(&value()?)?),
            "--ca-file" => ca_file = Some(PathBuf::from(value()?)),
            "--timeout-ms" => {
                timeout = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        relay: relay.ok_or("--relay is required")?,
        code: code.ok_or("--code is required")?,
        secret: secret.ok_or("--secret is required")?,
        contact: contact.ok_or("--contact is required")?,
        ca_file,
        timeout,
    })
}

async fn run(args: Args) -> Result<bool, String> {
    let trust = match &args.ca_file {
        Some(path) => TrustAnchors::Only(
            zajel_client_net::tls::read_pem_certificates(path).map_err(|e| e.to_string())?,
        ),
        None => TrustAnchors::WebPki,
    };
    let mut client =
        RendezvousClient::connect_as(&args.relay, &args.code, args.secret, args.contact, trust)
            .await?;
    println!(
        "{}",
        json!({"event": "registered", "code": client.code, "serverId": client.primary.server_id})
    );
    let replies = client.register_rendezvous(false).await?;
    let found = match replies.into_iter().next() {
        Some(found) => Some(found),
        None => client.next_match(args.timeout).await.ok(),
    };
    match found {
        Some(found) => {
            println!(
                "{}",
                json!({"event": "found", "peerId": found.peer_id, "relayId": found.relay_id, "via": found.via})
            );
            Ok(true)
        }
        None => {
            println!("{}", json!({"event": "timeout"}));
            Ok(false)
        }
    }
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("rendezvous-probe: {error}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("rendezvous-probe: {error}");
            std::process::exit(2);
        }
    }
}
