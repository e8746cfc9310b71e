//! The native host's admission checks: runs the [`EndpointCheck`]s the
//! registry hands out on tokio (at most the registry's concurrency at once,
//! each bounded by its timeout) and gives the results back.
//!
//! A check resolves the endpoint's name and, unless the registry allows
//! private endpoints, refuses names that resolve to a non-public address
//! (so a registration cannot point the registry at its own network); it
//! then connects (TLS with the web PKI for `wss://`), upgrades, and holds
//! the [`Conversation`]. The name is resolved once for the check and the
//! connection goes to the addresses checked.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::MaybeTlsStream;
use zajel_client_net::now_ms;
use zajel_client_net::signaling::{tls_handshake, url_host, SignalingSocket, TrustAnchors};
use zajel_wire::endpoint;

use super::server::SharedRegistry;
use crate::admission::{CheckResult, Conversation, EndpointCheck};

/// Largest frame read from a checked endpoint.
pub const MAX_CHECK_FRAME_BYTES: usize = 64 * 1024;

/// Runs one check to its end or its timeout; `wss://` endpoints must show
/// a certificate `trust` accepts.
pub async fn run_check(check: &EndpointCheck, trust: &TrustAnchors) -> CheckResult {
    let limit = Duration::from_millis(check.timeout_ms);
    match tokio::time::timeout(limit, converse(check, trust)).await {
        Ok(result) => result,
        Err(_) => CheckResult::failed(format!("no identity proof within {} ms", check.timeout_ms)),
    }
}

async fn converse(check: &EndpointCheck, trust: &TrustAnchors) -> CheckResult {
    let (url, _) = match endpoint::check_listed_endpoint(&check.endpoint, check.allow_private) {
        Ok(parsed) => parsed,
        Err(error) => return CheckResult::failed(error.to_string()),
    };
    let Some(host) = url_host(&url) else {
        return CheckResult::failed("no host");
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<_> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addresses) => addresses.collect(),
        Err(error) => return CheckResult::failed(format!("name resolution: {error}")),
    };
    if !check.allow_private {
        if let Some(address) = addresses
            .iter()
            .find(|address| !endpoint::is_public_ip(address.ip()))
        {
            return CheckResult::failed(format!(
                "{host} resolves to the non-public address {}",
                address.ip()
            ));
        }
    }
    let mut tcp = None;
    let mut last_error = String::from("no address");
    for address in &addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last_error = format!("connect to {address}: {error}"),
        }
    }
    let Some(tcp) = tcp else {
        return CheckResult::failed(last_error);
    };
    let _ = tcp.set_nodelay(true);
    let stream = if url.scheme() == "wss" {
        let config = match trust.client_config() {
            Ok(config) => config,
            Err(error) => return CheckResult::failed(format!("TLS setup: {error}")),
        };
        match tls_handshake(&host, tcp, config).await {
            Ok(stream) => stream,
            Err(error) => return CheckResult::failed(format!("TLS handshake: {error}")),
        }
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let mut socket = match SignalingSocket::upgrade(&url, stream, MAX_CHECK_FRAME_BYTES).await {
        Ok(socket) => socket,
        Err(error) => return CheckResult::failed(format!("WebSocket upgrade: {error}")),
    };
    let mut conversation = Conversation::new(check.clone());
    if let Err(error) = socket.send(&conversation.challenge()).await {
        return conversation.on_closed(&error.to_string());
    }
    loop {
        match socket.next_text().await {
            Ok(text) => {
                if let Some(result) = conversation.on_text(&text) {
                    socket.close().await;
                    return result;
                }
            }
            Err(error) => return conversation.on_closed(&error.to_string()),
        }
    }
}

/// Runs the registry's checks until dropped: waits for `wake` (a
/// registration came in) or the registry's next check time, starts what
/// [`crate::registry::Registry::poll_checks`] hands out, and reports each
/// result with [`crate::registry::Registry::check_finished`].
pub async fn run_checks(registry: SharedRegistry, wake: Arc<Notify>, trust: TrustAnchors) {
    loop {
        let polled = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || {
                let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                let now = now_ms();
                let checks = registry.poll_checks(now);
                (checks, registry.next_check_at(now_ms()))
            })
            .await
        };
        let Ok((checks, next_at)) = polled else {
            return;
        };
        for check in checks {
            let registry = registry.clone();
            let wake = wake.clone();
            let trust = trust.clone();
            tokio::spawn(async move {
                let result = run_check(&check, &trust).await;
                let _ = tokio::task::spawn_blocking(move || {
                    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(line) = registry.check_finished(check.id, &result, now_ms()) {
                        tracing::info!(endpoint = %check.endpoint, recheck = check.recheck, "{line}");
                    }
                })
                .await;
                wake.notify_one();
            });
        }
        match next_at {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(1));
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
