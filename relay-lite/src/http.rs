//! The HTTP side of the listening port: reading one request head, the
//! WebSocket upgrade (RFC 6455 handshake done here, so `GET /health` and
//! `GET /metrics` share the port), the plain JSON/text answers, and which
//! close frame a WebSocket read error deserves.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Close code of a frame that breaks RFC 6455 (unmasked client frame,
/// control frame over 125 bytes or fragmented, reserved opcode or bits, a
/// continuation out of place).
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// The close frame (code, reason) a WebSocket read error is answered with,
/// so that a peer that breaks the protocol gets a close frame rather than a
/// bare TCP close: 1009 for a message or frame over the limit (also when it
/// comes in fragments), 1002 for a frame RFC 6455 forbids. `None` when the
/// connection itself is gone (nothing to tell).
pub(crate) fn close_for_read_error(error: &WsError) -> Option<(u16, &'static str)> {
    match error {
        WsError::Capacity(_) => Some((
            zajel_wire::signaling::CLOSE_MESSAGE_TOO_BIG,
            "Message Too Big",
        )),
        WsError::Protocol(
            ProtocolError::UnmaskedFrameFromClient
            | ProtocolError::ControlFrameTooBig
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::UnknownControlFrameType(_)
            | ProtocolError::UnknownDataFrameType(_)
            | ProtocolError::NonZeroReservedBits
            | ProtocolError::UnexpectedContinueFrame
            | ProtocolError::ExpectedFragment(_)
            | ProtocolError::InvalidOpcode(_)
            | ProtocolError::InvalidCloseSequence,
        ) => Some((CLOSE_PROTOCOL_ERROR, "Protocol error")),
        _ => None,
    }
}

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A valid WebSocket upgrade: the `Sec-WebSocket-Key` and any bytes read past the head.
    WebSocket {
        key: String,
        rest: Vec<u8>,
        /// Upgraded on `/federation` or `/server`: a server-to-server link.
        federation: bool,
    },
    Health,
    Metrics,
    NotFound,
    MethodNotAllowed,
    /// An upgrade with a version other than 13.
    UpgradeRequired,
    BadRequest(&'static str),
}

/// Why no request head could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("connection closed before a request head")]
    Closed,
    #[error("request head over {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads until the end of the request head and routes it.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Route, HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = find_head_end(&buffer) {
            let rest = buffer.split_off(end);
            return Ok(route(&buffer, rest));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Routes a complete request head.
pub(crate) fn route(head: &[u8], rest: Vec<u8>) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Route::BadRequest("malformed request"),
    }
    let method = request.method.unwrap_or("");
    let path = request.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        if method != "GET" {
            return Route::MethodNotAllowed;
        }
        let connection_upgrade = header("connection").is_some_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        });
        if !connection_upgrade {
            return Route::BadRequest("Connection header must include Upgrade");
        }
        if header("sec-websocket-version") != Some("13") {
            return Route::UpgradeRequired;
        }
        return match header("sec-websocket-key") {
            Some(key) if !key.is_empty() => Route::WebSocket {
                key: key.to_string(),
                rest,
                federation: zajel_wire::federation::FEDERATION_PATHS.contains(&path),
            },
            _ => Route::BadRequest("missing Sec-WebSocket-Key"),
        };
    }
    match (method, path) {
        ("GET" | "HEAD", "/health") => Route::Health,
        ("GET" | "HEAD", "/metrics") => Route::Metrics,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Writes the `101 Switching Protocols` answer.
pub(crate) async fn accept_upgrade<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
) -> std::io::Result<()> {
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await
}

/// Writes a complete answer and closes the write side.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nCache-Control: no-store\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A JSON error body.
pub(crate) fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_upgrades_and_plain_requests() {
        let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            route(upgrade, b"x".to_vec()),
            Route::WebSocket {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                rest: b"x".to_vec(),
                federation: false,
            }
        );
        let federation = b"GET /federation HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert!(matches!(
            route(federation, Vec::new()),
            Route::WebSocket {
                federation: true,
                ..
            }
        ));
        let old = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert_eq!(route(old, Vec::new()), Route::UpgradeRequired);
        assert_eq!(
            route(b"GET /health HTTP/1.1\r\n\r\n", Vec::new()),
            Route::Health
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", Vec::new()),
            Route::Metrics
        );
        assert_eq!(
            route(b"POST /health HTTP/1.1\r\n\r\n", Vec::new()),
            Route::MethodNotAllowed
        );
        assert_eq!(
            route(b"GET /x HTTP/1.1\r\n\r\n", Vec::new()),
            Route::NotFound
        );
        assert!(matches!(
            route(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", Vec::new()),
            Route::BadRequest(_)
        ));
        // RFC 6455's example key.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
