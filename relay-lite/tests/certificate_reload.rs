//! Certificate reload of the `relay-lite` binary (child process): after the
//! certificate files of `wss:` and `turns:` are replaced with ones from
//! another test CA, SIGHUP (or, when polled, the change alone) makes new
//! handshakes show the new certificate while connections made before keep
//! working; a broken replacement (a key that does not fit) is logged and the
//! old certificate kept.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child_process::ChildProcess;
use common::relay::{key, RelayProcess, WAIT};
use common::turn::{free_port, test_pki, TestPki};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A client that trusts both test CAs, so a handshake succeeds with either
/// certificate and the test reads which one it got.
fn connector(one: &TestPki, two: &TestPki) -> TlsConnector {
    let config =
        zajel_client_net::tls::client_config_trusting_only(&[one.ca.clone(), two.ca.clone()])
            .unwrap();
    TlsConnector::from(Arc::new(config))
}

async fn handshake(connector: &TlsConnector, port: u16) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// The end-entity certificate a new handshake on `port` shows.
async fn served(connector: &TlsConnector, port: u16) -> CertificateDer<'static> {
    let tls = handshake(connector, port).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Polls new handshakes on `port` until they show `wanted`, up to a deadline.
async fn until_served(connector: &TlsConnector, port: u16, wanted: &CertificateDer<'static>) {
    let deadline = Instant::now() + WAIT;
    loop {
        if &served(connector, port).await == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {port} still serves the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leaf(pki: &TestPki) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pki.server_cert_pem.as_bytes()).unwrap()
}

fn install(dir: &Path, cert_pem: &str, key_pem: &str) {
    // Written aside and renamed into place, as certbot's hooks and `install` do.
    for (name, text) in [("cert.pem", cert_pem), ("key.pem", key_pem)] {
        let aside = dir.join(format!("{name}.new"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, dir.join(name)).unwrap();
    }
}

struct Started {
    relay: RelayProcess,
    turns_port: u16,
}

fn start(dir: &Path, first: &TestPki, check_ms: &str) -> Started {
    install(dir, &first.server_cert_pem, &first.server_key_pem);
    std::fs::write(dir.join("turn.secret"), "a test secret").unwrap();
    let turns_port = free_port();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let relay = RelayProcess::start(&[
        "--tls-cert",
        &path("cert.pem"),
        "--tls-key",
        &path("key.pem"),
        "--turn-listen-tls",
        &format!("127.0.0.1:{turns_port}"),
        "--turn-tls-cert",
        &path("cert.pem"),
        "--turn-tls-key",
        &path("key.pem"),
        "--turn-secret-file",
        &path("turn.secret"),
        "--certificate-check-ms",
        check_ms,
    ]);
    Started { relay, turns_port }
}

async fn next(ws: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>) -> Value {
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap();
    let Message::Text(text) = frame else {
        panic!("{frame:?}")
    };
    serde_json::from_str(text.as_str()).unwrap()
}

/// A STUN Binding request over an established `turns:` connection: answered
/// with a Binding success response (0x0101) with the same transaction id.
async fn binding_answered(tls: &mut TlsStream<TcpStream>, id: u8) {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(&[id; 12]);
    tls.write_all(&request).await.unwrap();
    let mut header = [0u8; 20];
    tokio::time::timeout(WAIT, tls.read_exact(&mut header))
        .await
        .expect("a Binding response in time")
        .expect("the old turns: connection still open");
    assert_eq!(&header[..2], &[0x01, 0x01], "{header:?}");
    assert_eq!(&header[8..], &[id; 12]);
    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await.unwrap();
}

fn wait_for_log(process: &mut ChildProcess, needle: &str) -> String {
    process
        .wait_for(WAIT, |line| line.contains(needle).then(|| line.to_string()))
        .unwrap_or_else(|e| panic!("no log line with {needle:?}: {e}"))
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_and_keeps_old_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, three) = (test_pki("CA one"), test_pki("CA two"), test_pki("CA three"));
    // Polling off: only SIGHUP reloads here.
    let Started {
        mut relay,
        turns_port,
    } = start(dir.path(), &one, "0");
    let wss_port = relay.addr.port();
    let connector = connector(&one, &two);
    assert_eq!(served(&connector, wss_port).await, leaf(&one));
    assert_eq!(served(&connector, turns_port).await, leaf(&one));

    // Connections made under the first certificate.
    let tls = handshake(&connector, wss_port).await;
    let url = format!("wss://{}", relay.addr);
    let (mut old_wss, _) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .unwrap();
    assert_eq!(next(&mut old_wss).await["type"], "server_info");
    let mut old_turns = handshake(&connector, turns_port).await;
    binding_answered(&mut old_turns, 1).await;

    // The files are replaced; nothing changes until SIGHUP (polling is off).
    install(dir.path(), &two.server_cert_pem, &two.server_key_pem);
    assert_eq!(served(&connector, wss_port).await, leaf(&one));
    relay.process.signal(libc::SIGHUP);
    until_served(&connector, wss_port, &leaf(&two)).await;
    until_served(&connector, turns_port, &leaf(&two)).await;
    wait_for_log(&mut relay.process, "TLS certificate reloaded");

    // What was established before keeps going.
    old_wss
        .send(Message::text(
            json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut old_wss).await["type"], "registered");
    binding_answered(&mut old_turns, 2).await;

    // A broken replacement: the third CA's certificate with the second's key.
    install(dir.path(), &three.server_cert_pem, &two.server_key_pem);
    relay.process.signal(libc::SIGHUP);
    let line = wait_for_log(&mut relay.process, "not reloaded");
    assert!(line.contains("do not fit"), "{line}");
    assert!(line.contains("key_mismatch"), "{line}");
    assert!(!line.contains("PRIVATE KEY"), "{line}");
    // Both listeners reported, and both still serve the second certificate.
    wait_for_log(&mut relay.process, "not reloaded");
    assert_eq!(served(&connector, wss_port).await, leaf(&two));
    assert_eq!(served(&connector, turns_port).await, leaf(&two));

    // An unreadable replacement (the key file gone) is refused the same way.
    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    relay.process.signal(libc::SIGHUP);
    let line = wait_for_log(&mut relay.process, "not reloaded");
    assert!(line.contains("key_unreadable"), "{line}");
    assert_eq!(served(&connector, wss_port).await, leaf(&two));
    binding_answered(&mut old_turns, 3).await;
}

#[tokio::test]
async fn a_changed_certificate_file_is_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (test_pki("CA one"), test_pki("CA two"));
    let Started { relay, turns_port } = start(dir.path(), &one, "50");
    let connector = connector(&one, &two);
    assert_eq!(served(&connector, relay.addr.port()).await, leaf(&one));
    install(dir.path(), &two.server_cert_pem, &two.server_key_pem);
    until_served(&connector, relay.addr.port(), &leaf(&two)).await;
    until_served(&connector, turns_port, &leaf(&two)).await;
}
