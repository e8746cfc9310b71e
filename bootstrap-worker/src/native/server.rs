//! The native HTTP host: hyper over tokio, one [`Registry`] behind a mutex.
//!
//! Each request is read (at most one byte past the body limit, so an
//! oversize body is refused without being buffered), handed to the registry
//! on the blocking pool (SQLite writes wait for fsync), and the registry's
//! response is written back unchanged.
//!
//! An oversize body is the one case where the connection ends with the
//! response: the rest of the body is read and thrown away (up to
//! [`MAX_DRAINED_BYTES`]) so the client, still writing, gets to read the 413
//! instead of a broken pipe, and the response says `Connection: close`, so
//! the client does not send its next request on a connection the server is
//! closing (hyper closes a connection whose request body was not read to the
//! end, without telling the client).
//!
//! A background task ([`super::checker`]) runs the registry's admission
//! checks; a registration answered 202 (waiting for its check) wakes it.
//!
//! The host also answers `GET /metrics` itself ([`super::metrics`]; the
//! Worker does not have it), on the public listener or, with
//! [`serve_split`] (`--metrics-listen`), only on a listener of its own, and decides which address a request's rate
//! limit keys on: the peer's, or behind a trusted proxy the client's from
//! its forwarding headers ([`super::forwarded`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use zajel_client_net::now_ms;
use zajel_client_net::signaling::TrustAnchors;

use super::checker;
use super::forwarded::TrustedProxies;
use super::metrics::{self, RegistryMetrics};
use super::sqlite::SqliteStore;
use crate::config::MAX_BODY_BYTES;
use crate::registry::{Registry, Request, Response};

/// Most connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its whole body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an oversize body is read and thrown away before the 413
/// goes out; beyond this the client may see its write fail instead.
pub const MAX_DRAINED_BYTES: usize = 1024 * 1024 + 64 * 1024;

/// The registry shared by every connection.
pub type SharedRegistry = Arc<Mutex<Registry<SqliteStore>>>;

/// How the host treats requests, beyond the registry's own [`crate::config::Config`].
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Proxies whose `X-Forwarded-For`/`Forwarded` are believed
    /// (`--trusted-proxy`); empty: the peer address is the client's.
    pub trusted_proxies: TrustedProxies,
    /// What the admission checks trust for `wss://` endpoints
    /// (`--admission-ca-file`; default: the web PKI).
    pub admission_trust: TrustAnchors,
}

/// Serves `registry` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Registry<SqliteStore>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(listener, registry, HostOptions::default(), shutdown).await
}

/// [`serve`] with `options`.
pub async fn serve_with(
    listener: TcpListener,
    registry: Registry<SqliteStore>,
    options: HostOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_split(listener, None, registry, options, shutdown).await
}

/// [`serve_with`], with `GET /metrics` served only on `metrics_listener`
/// when one is given (the public listener then answers `/metrics` with 404).
pub async fn serve_split(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    registry: Registry<SqliteStore>,
    options: HostOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let registry: SharedRegistry = Arc::new(Mutex::new(registry));
    let wake = Arc::new(Notify::new());
    let _checks = AbortOnDrop(tokio::spawn(checker::run_checks(
        registry.clone(),
        wake.clone(),
        options.admission_trust.clone(),
    )));
    let host = Arc::new(Host {
        options,
        metrics: RegistryMetrics::default(),
        wake,
        metrics_elsewhere: metrics_listener.is_some(),
    });
    let _metrics_task = metrics_listener.map(|listener| {
        AbortOnDrop(tokio::spawn(metrics_loop(
            listener,
            registry.clone(),
            host.clone(),
        )))
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let service =
                service_fn(move |request| counted(registry.clone(), host.clone(), peer, request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// What every connection shares besides the registry.
struct Host {
    options: HostOptions,
    metrics: RegistryMetrics,
    /// `/metrics` has a listener of its own: not on the public one.
    metrics_elsewhere: bool,
    /// Tells the admission checker that a registration may be waiting.
    wake: Arc<Notify>,
}

/// Stops a background task when dropped (the admission checker and the metrics listener end with the host).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The metrics listener: `GET /metrics` only, everything else 404.
async fn metrics_loop(listener: TcpListener, registry: SharedRegistry, host: Arc<Host>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let registry = registry.clone();
                let host = host.clone();
                async move {
                    let response = if request.method() == hyper::Method::GET
                        && request.uri().path() == "/metrics"
                    {
                        metrics_response(&registry, &host).await
                    } else {
                        not_found()
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn not_found() -> hyper::Response<Full<Bytes>> {
    let mut response =
        hyper::Response::new(Full::new(Bytes::from_static(br#"{"error":"Not Found"}"#)));
    *response.status_mut() = hyper::StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// [`answer`], counted in the metrics.
async fn counted(
    registry: SharedRegistry,
    host: Arc<Host>,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = request.method().as_str().to_ascii_uppercase();
    let path = request.uri().path().to_string();
    let (response, refused) = if method == "GET" && path == "/metrics" && host.metrics_elsewhere {
        (not_found(), None)
    } else if method == "GET" && path == "/metrics" {
        (metrics_response(&registry, &host).await, None)
    } else {
        answer(registry, &host, peer, request).await
    };
    host.metrics
        .record(&method, &path, response.status().as_u16(), refused);
    Ok(response)
}

async fn metrics_response(
    registry: &SharedRegistry,
    host: &Arc<Host>,
) -> hyper::Response<Full<Bytes>> {
    let registry = registry.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let registry = registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (
            registry.fresh_entries(now_ms()).ok(),
            registry.admission_stats(),
        )
    })
    .await
    .ok();
    let (entries, admission) = match entries {
        Some((entries, admission)) => (entries, Some(admission)),
        None => (None, None),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(
        host.metrics.render_with_admission(entries, admission),
    )));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

async fn answer(
    registry: SharedRegistry,
    host: &Host,
    peer: SocketAddr,
    request: hyper::Request<Incoming>,
) -> (hyper::Response<Full<Bytes>>, Option<&'static str>) {
    let (parts, mut body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let client = host
        .options
        .trusted_proxies
        .client_address(peer.ip(), &headers);
    let mut core = Request::new(parts.method.as_str(), path, &client.to_string());
    core.headers = headers;
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut drained = 0;
        loop {
            let Some(frame) = body.frame().await else {
                return Ok::<(), String>(());
            };
            let frame = frame.map_err(|error| error.to_string())?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let kept = (MAX_BODY_BYTES + 1 - core.body.len()).min(data.len());
            core.body.extend_from_slice(&data[..kept]);
            drained += data.len() - kept;
            if drained > MAX_DRAINED_BYTES {
                return Ok(());
            }
        }
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return (
                plain(400, &format!("could not read body: {error}")),
                Some("unreadable_body"),
            )
        }
        Err(_) => {
            return (
                plain(408, "body not received in time"),
                Some("body_timeout"),
            )
        }
    }
    let oversize = core.body.len() > MAX_BODY_BYTES;
    let handled = tokio::task::spawn_blocking(move || {
        let mut registry = registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.handle(&core, now_ms())
    })
    .await;
    let response = match handled {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "registry task failed");
            return (plain(500, "internal error"), Some("internal"));
        }
    };
    let refused = response.refused;
    if response.status == 202 {
        host.wake.notify_one();
    }
    if let Some(line) = &response.refusal {
        tracing::warn!("{line}");
    }
    let response = to_hyper(response);
    let response = if oversize {
        closing(response)
    } else {
        response
    };
    (response, refused)
}

/// `response` with `Connection: close`: the connection ends once it is written.
fn closing(mut response: hyper::Response<Full<Bytes>>) -> hyper::Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}

fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(response.body))
        .unwrap_or_else(|_| plain(500, "internal error"))
}

fn plain(status: u16, text: &str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(text.to_string())));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    response
}
