//! The one HTTP client for bootstrap registries: reqwest on rustls with ring
//! (the caller's [`rustls::ClientConfig`], no proxy from the environment), a
//! time limit on the whole exchange (connect to the last body byte) and a
//! size limit on every answer body.
//!
//! discovery-client fetches `GET /servers` with it; relay-lite's membership
//! sends its signed register, heartbeat and unregister requests. What an
//! answer means (list verification, retries) stays with each caller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), zajel_client_net::registry_http::RegistryHttpError> {
//! use zajel_client_net::registry_http::{RegistryHttp, RegistryHttpConfig};
//! let tls = zajel_client_net::tls::client_config(&[]).unwrap();
//! let http = RegistryHttp::new(RegistryHttpConfig::new(tls, std::time::Duration::from_secs(5), "me/1"))?;
//! let answer = http.get(&"https://registry.example/servers".parse().unwrap()).await?;
//! let body = answer.body(1 << 20).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use url::Url;

/// Why a registry exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryHttpError {
    /// The client could not be built.
    #[error("HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The request failed or the answer could not be read (connect, TLS,
    /// timeout, broken body); the reqwest error is the source, so callers can
    /// walk the chain to classify it.
    #[error("{0}")]
    Request(#[source] reqwest::Error),
    /// The answer body is larger than the caller accepts.
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The method is not an HTTP method.
    #[error("bad HTTP method {0:?}")]
    Method(String),
}

impl RegistryHttpError {
    /// This error and its sources in one line (`a: b: c`), each text once.
    pub fn detail(&self) -> String {
        crate::errors::error_chain(self)
    }

    /// Whether the exchange ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Request(error) if error.is_timeout())
    }
}

/// How a [`RegistryHttp`] client behaves.
#[derive(Debug, Clone)]
pub struct RegistryHttpConfig {
    /// TLS for `https://` registries (see [`crate::tls`]).
    pub tls: rustls::ClientConfig,
    /// Limit on each whole exchange, and on opening the connection.
    pub timeout: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Keep connections open between requests (a client that sends one
    /// request a minute gains nothing from it and meets closed connections).
    pub reuse_connections: bool,
}

impl RegistryHttpConfig {
    /// Reusing connections, with `tls`, `timeout` and `user_agent`.
    pub fn new(tls: rustls::ClientConfig, timeout: Duration, user_agent: &str) -> Self {
        Self {
            tls,
            timeout,
            user_agent: user_agent.to_string(),
            reuse_connections: true,
        }
    }
}

/// Sends requests to registries; cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryHttp {
    client: reqwest::Client,
}

/// A registry's answer: status and headers first, the body on demand.
#[derive(Debug)]
pub struct RegistryAnswer {
    response: reqwest::Response,
}

impl RegistryHttp {
    pub fn new(config: RegistryHttpConfig) -> Result<Self, RegistryHttpError> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(config.tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .no_proxy()
            .user_agent(config.user_agent);
        if !config.reuse_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().map_err(RegistryHttpError::Build)?;
        Ok(Self { client })
    }

    /// `GET url`.
    pub async fn get(&self, url: &Url) -> Result<RegistryAnswer, RegistryHttpError> {
        self.send("GET", url, &[], None).await
    }

    /// Sends `method url` with `headers` and an optional JSON body; the answer's
    /// body is read with [`RegistryAnswer::body`].
    pub async fn send(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, String)],
        json_body: Option<String>,
    ) -> Result<RegistryAnswer, RegistryHttpError> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| RegistryHttpError::Method(method.to_string()))?;
        let mut request = self.client.request(method, url.clone());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = json_body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(RegistryHttpError::Request)?;
        Ok(RegistryAnswer { response })
    }
}

impl RegistryAnswer {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// The status with its reason phrase (`404 Not Found`).
    pub fn status_line(&self) -> String {
        self.response.status().to_string()
    }

    /// A header's value, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response.headers().get(name)?.to_str().ok()
    }

    /// `Retry-After` in seconds, when given as a number.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after")?.trim().parse().ok()
    }

    /// Reads the body, refusing one larger than `limit` bytes.
    pub async fn body(mut self, limit: usize) -> Result<Vec<u8>, RegistryHttpError> {
        let mut body = Vec::new();
        while let Some(chunk) = self
            .response
            .chunk()
            .await
            .map_err(RegistryHttpError::Request)?
        {
            if body.len() + chunk.len() > limit {
                return Err(RegistryHttpError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-connection HTTP server that answers `answer` to whatever comes
    /// and hands back the request it read.
    async fn serve_once(answer: &'static [u8]) -> (Url, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/servers",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer).await.unwrap();
            let _ = socket.shutdown().await;
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, task)
    }

    fn client(timeout: Duration) -> RegistryHttp {
        let tls = crate::tls::client_config(&[]).unwrap();
        RegistryHttp::new(RegistryHttpConfig {
            reuse_connections: false,
            ..RegistryHttpConfig::new(tls, timeout, "zajel-test/1")
        })
        .unwrap()
    }

    #[tokio::test]
    async fn status_headers_and_body_come_back_with_the_request_headers_sent() {
        let (url, server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nX-Thing: yes\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        )
        .await;
        let answer = client(Duration::from_secs(5))
            .send("POST", &url, &[("X-Sig", "abc".into())], Some("{}".into()))
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(answer.retry_after(), Some(7));
        assert_eq!(answer.header("x-thing"), Some("yes"));
        assert_eq!(answer.body(1024).await.unwrap(), b"busy");
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /servers http/1.1"), "{request}");
        assert!(request.contains("user-agent: zajel-test/1"), "{request}");
        assert!(request.contains("x-sig: abc"), "{request}");
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        let (url, _server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
        )
        .await;
        let answer = client(Duration::from_secs(5)).get(&url).await.unwrap();
        let error = answer.body(9).await.unwrap_err();
        assert!(
            matches!(error, RegistryHttpError::TooLarge { limit: 9 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_is_a_request_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/servers",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let error = client(Duration::from_millis(200))
            .get(&url)
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        drop(listener);
        let error = client(Duration::from_secs(5)).get(&url).await.unwrap_err();
        assert!(matches!(error, RegistryHttpError::Request(_)), "{error}");
        assert!(!error.is_timeout(), "{error}");
    }
}
