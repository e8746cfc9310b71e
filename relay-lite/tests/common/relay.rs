//! Shared by the relay test suites and the relay benchmark: the `relay-lite`
//! binary (the one cargo builds for these targets) as a child process on
//! loopback, an in-process relay on loopback ([`start_in_process`]), and a
//! WebSocket client that reads JSON frames.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::child_process::ChildProcess;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process relay on 127.0.0.1 (a free port) with a 200 ms shutdown
/// grace (clients that do not read would hold shutdown for the whole
/// default), after `configure` has changed what the test needs.
pub async fn start_in_process(
    configure: impl FnOnce(&mut relay_lite::RelayConfig),
) -> relay_lite::RunningRelay {
    let mut config = relay_lite::RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..relay_lite::RelayConfig::default()
    };
    config.timeouts.shutdown_grace = Duration::from_millis(200);
    configure(&mut config);
    relay_lite::Relay::start(config)
        .await
        .expect("relay starts")
}

/// The WebSocket URL of an in-process relay.
pub fn in_process_url(relay: &relay_lite::RunningRelay) -> String {
    format!("ws://{}", relay.local_addr())
}

/// A running `relay-lite` child.
pub struct RelayProcess {
    pub process: ChildProcess,
    pub addr: SocketAddr,
    pub server_id: String,
}

impl RelayProcess {
    /// Starts `relay-lite --listen 127.0.0.1:0 <args>` (logging at debug)
    /// and waits for its listening line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "relay_lite=debug")
    }

    /// [`Self::start`] with `RUST_LOG` set to `rust_log` (the benchmark
    /// runs at `info`, as an operator would).
    pub fn start_logging(args: &[&str], rust_log: &str) -> Self {
        // The benchmark may run another build of the same code (another profile).
        let binary = std::env::var_os("BENCH_RELAY_LITE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_relay-lite").into());
        let mut command = Command::new(binary);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        command.env("RUST_LOG", rust_log);
        let mut process = ChildProcess::spawn("relay-lite", command).expect("start relay-lite");
        let server_id = process
            .wait_for(WAIT, |line| {
                line.strip_prefix("server id ").map(str::to_string)
            })
            .expect("server id line");
        let addr = process
            .wait_for(WAIT, |line| {
                line.strip_prefix("listening on ")
                    .and_then(|url| url.split("://").nth(1))
                    .and_then(|addr| addr.parse().ok())
            })
            .expect("listening line");
        Self {
            process,
            addr,
            server_id,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `GET <path>` with a plain HTTP/1.1 request: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// One sample of `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A distinct valid X25519 public key (base64 of 32 bytes).
pub fn key(n: u8) -> String {
    STANDARD.encode([n; 32])
}

/// A WebSocket client reading JSON frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub server_info: Value,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(u16),
    Dropped,
}

impl Client {
    /// Connects and reads the `server_info` greeting.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, None, true),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        let mut client = Self {
            ws,
            server_info: Value::Null,
        };
        client.server_info = client.recv().await;
        assert_eq!(client.server_info["type"], "server_info");
        client
    }

    /// Connects to the relay at `relay` from the local address `local`
    /// (e.g. 127.0.0.2, to be another client address on loopback) and
    /// reads the greeting.
    pub async fn connect_from(relay: SocketAddr, local: IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind the local address");
        let stream = tokio::time::timeout(WAIT, socket.connect(relay))
            .await
            .expect("connect in time")
            .expect("connect");
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(format!("ws://{relay}"), MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        let mut client = Self {
            ws,
            server_info: Value::Null,
        };
        client.server_info = client.recv().await;
        assert_eq!(client.server_info["type"], "server_info");
        client
    }

    /// Sends `register` for `code` with key `n`; the reply.
    pub async fn register(&mut self, code: &str, n: u8) -> Value {
        self.request(json!({"type": "register", "pairingCode": code, "publicKey": key(n)}))
            .await
    }

    /// Connects and registers `code` with key `n`.
    pub async fn registered(url: &str, code: &str, n: u8) -> Self {
        let mut client = Self::connect(url).await;
        let reply = client
            .request(json!({"type": "register", "pairingCode": code, "publicKey": key(n)}))
            .await;
        assert_eq!(reply["type"], "registered", "{reply}");
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next text frame as text.
    pub async fn recv_text(&mut self) -> String {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame");
            match frame {
                Message::Text(text) => return text.as_str().to_string(),
                Message::Close(close) => panic!("closed: {close:?}"),
                _ => continue,
            }
        }
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).expect("JSON frame")
    }

    /// Sends `frame` and returns the next frame.
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// The error text the relay answers `frame` with.
    pub async fn error_for(&mut self, frame: Value) -> String {
        let reply = self.request(frame).await;
        assert_eq!(reply["type"], "error", "{reply}");
        reply["message"].as_str().unwrap().to_string()
    }

    /// Whether nothing but (optionally) `pong`s are pending: sends a ping and
    /// expects the pong as the next frame.
    pub async fn expect_quiet(&mut self) {
        let reply = self.request(json!({"type": "ping"})).await;
        assert_eq!(reply, json!({"type": "pong"}));
    }

    /// Reads until the connection ends, returning the close code (and
    /// completing the close handshake, as a browser would).
    pub async fn ended(&mut self) -> Ended {
        let mut ended = Ended::Dropped;
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("end in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => ended = Ended::Close(frame.code.into()),
                Some(Ok(Message::Close(None))) => ended = Ended::Close(1005),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return ended,
            }
        }
    }
}
