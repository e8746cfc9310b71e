//! A small HTTP/1.1 client for the registry (hyper over tokio, rustls with
//! the Mozilla roots for `https://`): one request per connection, a time
//! limit on the whole exchange and a size limit on the answer.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::Url;

/// Largest answer body read from a registry.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A registry's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `Retry-After` in seconds, when given.
    pub retry_after: Option<u64>,
    pub body: String,
}

/// Sends requests to registries.
#[derive(Clone)]
pub struct RegistryClient {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl RegistryClient {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// Sends `method url` with `headers` and an optional JSON body.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        json_body: Option<String>,
    ) -> Result<Answer, String> {
        tokio::time::timeout(self.timeout, self.exchange(method, url, headers, json_body))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    async fn exchange(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        json_body: Option<String>,
    ) -> Result<Answer, String> {
        let url = Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
        let host = url.host_str().ok_or("URL without a host")?.to_string();
        let port = url.port_or_known_default().ok_or("URL without a port")?;
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match url.scheme() {
            "https" => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_string(),
                )
                .map_err(|e| format!("bad TLS name {host}: {e}"))?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {e}"))?;
                request(tls, method, &url, headers, json_body).await
            }
            "http" => request(tcp, method, &url, headers, json_body).await,
            other => Err(format!("unsupported scheme {other}")),
        }
    }
}

async fn request<S>(
    stream: S,
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    json_body: Option<String>,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("Host", authority)
        .header(
            "User-Agent",
            concat!("relay-lite/", env!("CARGO_PKG_VERSION")),
        )
        .header("Accept", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let body = match json_body {
        Some(body) => {
            builder = builder.header("Content-Type", "application/json");
            Bytes::from(body)
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
