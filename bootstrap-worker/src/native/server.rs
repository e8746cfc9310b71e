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
//! A `GET /servers` whose `Accept-Encoding` allows gzip gets the kept list
//! gzip-encoded ([`GzipList`]): compressed once per snapshot (keyed by its
//! `ETag`) and shared after that, with `Content-Encoding: gzip`, `Vary:
//! Accept-Encoding` and the gzip form of the tag. `X-Bootstrap-Signature`
//! stays the signature over the uncompressed body, which is what every
//! client checks after its HTTP stack has decoded the body (browsers'
//! `fetch`, Dart's `HttpClient`, reqwest with its gzip feature). The
//! Worker needs none of this: Cloudflare compresses Worker responses.
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
use crate::list_cache::gzip_etag;
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
        gzip: Arc::default(),
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
    /// The kept list, gzip-encoded, for the snapshot it was made from.
    gzip: Arc<GzipList>,
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
                        // The operator's own metrics address: not limited.
                        metrics_response(&registry, &host, None).await.0
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
        // On the public port: under the per-address read limit like any read
        // (it counts the registry's entries, a query over all of them).
        let (_, client) = client_of(&host, peer, request.headers());
        metrics_response(&registry, &host, Some(client)).await
    } else {
        answer(registry, &host, peer, request).await
    };
    host.metrics
        .record(&method, &path, response.status().as_u16(), refused);
    Ok(response)
}

/// A request's headers as the core takes them, and the client address the
/// rate limits key on (the peer's, or behind a trusted proxy the one it names).
fn client_of(
    host: &Host,
    peer: SocketAddr,
    headers: &hyper::HeaderMap,
) -> (Vec<(String, String)>, String) {
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let client = host
        .options
        .trusted_proxies
        .client_address(peer.ip(), &headers)
        .to_string();
    (headers, client)
}

/// The metrics page; `client` (on the public port) is held to the read
/// limit first, and refused with the registry's 429 when over it.
async fn metrics_response(
    registry: &SharedRegistry,
    host: &Arc<Host>,
    client: Option<String>,
) -> (hyper::Response<Full<Bytes>>, Option<&'static str>) {
    let registry = registry.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let mut registry = registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = now_ms();
        if let Some(refused) = client.and_then(|client| registry.refuse_read(&client, now)) {
            return Err(refused);
        }
        Ok((registry.fresh_entries(now).ok(), registry.admission_stats()))
    })
    .await
    .ok();
    let entries = match entries {
        Some(Err(refused)) => {
            let reason = refused.refused;
            return (to_hyper(refused), reason);
        }
        Some(Ok(entries)) => Some(entries),
        None => None,
    };
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
    (response, None)
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
    let (headers, client) = client_of(host, peer, &parts.headers);
    let wants_gzip = accepts_gzip(&headers);
    let gzip = host.gzip.clone();
    let mut core = Request::new(parts.method.as_str(), path, &client);
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
        let response = registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .handle(&core, now_ms());
        if wants_gzip {
            gzip.encode(response)
        } else {
            response
        }
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

/// The kept `GET /servers` body gzip-encoded, with the `ETag` of the
/// snapshot it was made from: compressed by the first request that wants
/// it after the snapshot changed (the others wait for that one), shared
/// by every request after.
#[derive(Default)]
pub struct GzipList {
    kept: Mutex<Option<(String, Bytes)>>,
}

impl GzipList {
    /// `response` as the client that accepts gzip gets it: a list (200 or
    /// 304, the ones carrying an `ETag`) with the gzip tag and `Vary`, a
    /// 200's body compressed; any other response unchanged.
    pub fn encode(&self, mut response: Response) -> Response {
        let Some(etag) = response.header("ETag").map(str::to_string) else {
            return response;
        };
        if response.status == 200 {
            let mut kept = self
                .kept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let body = match kept.as_ref() {
                Some((tag, body)) if *tag == etag => body.clone(),
                _ => {
                    let Some(body) = gzip(&response.body) else {
                        return response;
                    };
                    kept.insert((etag.clone(), body)).1.clone()
                }
            };
            response.body = body;
            response.headers.push(("Content-Encoding", "gzip".into()));
        } else if response.status != 304 {
            return response;
        }
        for (name, value) in &mut response.headers {
            if name.eq_ignore_ascii_case("ETag") {
                *value = gzip_etag(&etag);
            }
        }
        response.headers.push(("Vary", "Accept-Encoding".into()));
        response
    }
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::default(),
    );
    encoder.write_all(body).ok()?;
    encoder.finish().ok().map(Bytes::from)
}

/// Whether `Accept-Encoding` allows gzip: `gzip` (or `x-gzip`) listed
/// without `q=0`. `*` is not taken as gzip (only clients that name it get it).
pub fn accepts_gzip(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("accept-encoding"))
        .flat_map(|(_, value)| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let gzip = name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip");
            let refused = parts.any(|parameter| {
                parameter
                    .strip_prefix("q=")
                    .or_else(|| parameter.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            gzip && !refused
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> Vec<(String, String)> {
        vec![("Accept-Encoding".to_string(), value.to_string())]
    }

    #[test]
    fn gzip_is_served_only_to_clients_that_name_it() {
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("br, GZIP;q=0.5")));
        assert!(accepts_gzip(&headers("deflate, x-gzip")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("gzip; q=0.000")));
        assert!(!accepts_gzip(&headers("br, *")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&[]));
    }

    fn list(status: u16, etag: &str, body: &'static [u8]) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("ETag", etag.into()),
                ("X-Bootstrap-Signature", "sig".into()),
            ],
            body: Bytes::from_static(body),
            refusal: None,
            refused: None,
        }
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_gzip_body_decodes_to_the_signed_body_and_follows_the_snapshot() {
        let cache = GzipList::default();
        let first = cache.encode(list(200, "\"1-a\"", b"{\"servers\":[],\"timestamp\":1}"));
        assert_eq!(first.header("Content-Encoding"), Some("gzip"));
        assert_eq!(first.header("Vary"), Some("Accept-Encoding"));
        assert_eq!(first.header("ETag"), Some("\"1-a-gzip\""));
        assert_eq!(first.header("X-Bootstrap-Signature"), Some("sig"));
        assert_eq!(gunzip(&first.body), b"{\"servers\":[],\"timestamp\":1}");
        // The same snapshot: the kept bytes, shared.
        let again = cache.encode(list(200, "\"1-a\"", b"{\"servers\":[],\"timestamp\":1}"));
        assert_eq!(again.body.as_ptr(), first.body.as_ptr());
        // A new snapshot is never answered with the old compressed body.
        let next = cache.encode(list(200, "\"2-b\"", b"{\"servers\":[],\"timestamp\":2}"));
        assert_eq!(gunzip(&next.body), b"{\"servers\":[],\"timestamp\":2}");
        // 304: the gzip tag, no body; anything without an ETag is untouched.
        let not_modified = cache.encode(list(304, "\"2-b\"", b""));
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("ETag"), Some("\"2-b-gzip\""));
        assert_eq!(not_modified.header("Content-Encoding"), None);
        let mut health = list(200, "x", b"{}");
        health.headers.retain(|(name, _)| *name != "ETag");
        assert_eq!(cache.encode(health.clone()), health);
    }
}
