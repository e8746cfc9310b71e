//! The WebSocket close paths (issue 19): frames a client library will not
//! send, written raw, each end with a close frame and the right code
//! rather than a bare TCP close or silence: 1009 for a fragmented message
//! over the frame limit, 1002 for an unmasked client frame, a control frame
//! over 125 bytes and a reserved opcode. And `/metrics` on its own address.
//! Each test runs the `relay-lite` binary on loopback.

mod common;

use common::relay::{http_get, RelayProcess, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw_websocket(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// A client frame: `fin`, `opcode`, masked or not.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n < 65_536 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Reads frames until a close frame: its code, or why none came.
async fn close_code(stream: &mut TcpStream) -> Result<u16, String> {
    let read = async {
        loop {
            let mut header = [0u8; 2];
            stream
                .read_exact(&mut header)
                .await
                .map_err(|e| format!("no close frame, the connection ended: {e}"))?;
            let mut len = u64::from(header[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                stream
                    .read_exact(&mut ext)
                    .await
                    .map_err(|e| e.to_string())?;
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0u8; 8];
                stream
                    .read_exact(&mut ext)
                    .await
                    .map_err(|e| e.to_string())?;
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0u8; len as usize];
            stream
                .read_exact(&mut payload)
                .await
                .map_err(|e| e.to_string())?;
            if header[0] & 0x0f == 0x8 {
                return match payload.get(..2) {
                    Some(code) => Ok(u16::from_be_bytes([code[0], code[1]])),
                    None => Err("a close frame without a code".to_string()),
                };
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| Err("silence: no close frame in time".into()))
}

#[tokio::test]
async fn hostile_frames_end_with_a_close_frame_and_the_right_code() {
    let relay = RelayProcess::start(&[]);
    // A fragmented 160 KiB text message (16 KiB fragments, each under the frame limit).
    let mut raw = raw_websocket(relay.addr).await;
    let piece = vec![b'a'; 16 * 1024];
    let mut bytes = frame(false, 0x1, &piece, true);
    for i in 1..10 {
        bytes.extend(frame(i == 9, 0x0, &piece, true));
    }
    // The relay may close before it read everything: a failed write is fine.
    let _ = raw.write_all(&bytes).await;
    assert_eq!(close_code(&mut raw).await, Ok(1009), "fragmented 160 KiB");

    let cases: [(&str, Vec<u8>); 4] = [
        (
            "unmasked client frame",
            frame(true, 0x1, br#"{"type":"ping"}"#, false),
        ),
        ("126-byte ping", frame(true, 0x9, &[0u8; 126], true)),
        ("reserved data opcode", frame(true, 0x3, b"x", true)),
        ("reserved control opcode", frame(true, 0xb, b"x", true)),
    ];
    for (what, bytes) in cases {
        let mut raw = raw_websocket(relay.addr).await;
        raw.write_all(&bytes).await.unwrap();
        assert_eq!(close_code(&mut raw).await, Ok(1002), "{what}");
    }
}

#[tokio::test]
async fn metrics_can_listen_on_their_own_address_and_leave_the_public_port() {
    // Default: /metrics on the public port, as before.
    let relay = RelayProcess::start(&[]);
    assert_eq!(relay.get("/metrics").await.0, 200);
    drop(relay);

    let mut relay = RelayProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics: std::net::SocketAddr = relay
        .process
        .wait_for(WAIT, |line| {
            line.strip_prefix("metrics on http://")
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .and_then(|addr| addr.parse().ok())
        })
        .expect("metrics line");
    assert_ne!(metrics, relay.addr);
    let (status, body) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("relay_"), "{body}");
    assert_eq!(http_get(metrics, "/health").await.0, 200);
    assert_eq!(http_get(metrics, "/").await.0, 404);
    // Off the public port; the rest of the public port is unchanged.
    assert_eq!(relay.get("/metrics").await.0, 404);
    assert_eq!(relay.get("/health").await.0, 200);
    // The environment variable works as the flag does.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_relay-lite"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("RELAY_LITE_METRICS_LISTEN", "127.0.0.1:0");
    let mut child = common::child_process::ChildProcess::spawn("relay-lite", command).unwrap();
    child
        .wait_for(WAIT, |line| {
            line.starts_with("metrics on http://").then_some(())
        })
        .expect("metrics line from the environment");
}
