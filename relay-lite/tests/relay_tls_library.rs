//! relay-lite over TLS (`wss://` and `https://` with `--tls-cert`/`--tls-key`),
//! and the library API that other parts start in-process (`Relay::start`,
//! the TURN metrics hook, graceful `shutdown`).

mod common;

use std::sync::Arc;

use common::relay::{key, Client, Ended, RelayProcess, WAIT};
use futures_util::{SinkExt, StreamExt};
use relay_lite::turn::TurnConfig;
use relay_lite::{Relay, RelayConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn tls_connector(
    cert_der: rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let config = zajel_client_net::tls::client_config_trusting_only(&[cert_der]).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(text) = frame else {
        panic!("{frame:?}")
    };
    serde_json::from_str(text.as_str()).unwrap()
}

#[tokio::test]
async fn serves_wss_and_https_with_a_pem_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    let relay = RelayProcess::start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--handshake-timeout-ms",
        "1000",
    ]);
    let connector = tls_connector(certified.cert.der().clone());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

    // wss://
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let tls = connector.connect(name.clone(), tcp).await.unwrap();
    let url = format!("wss://{}", relay.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .unwrap();
    let info = next(&mut ws).await;
    assert_eq!(info["type"], "server_info");
    assert_eq!(info["endpoint"], url);
    ws.send(Message::text(
        json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1)}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["type"], "registered");

    // https:// on the same port
    let tcp = TcpStream::connect(relay.addr).await.unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"registeredCodes\":1"), "{answer}");

    // Plain HTTP to the TLS port is dropped, not answered.
    let mut plain = TcpStream::connect(relay.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buffer))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&buffer).contains("200 OK"));
}

#[tokio::test]
async fn in_process_relay_with_embedded_turn_and_graceful_shutdown() {
    // Metrics handed in are the ones the relay records into.
    let shared_metrics = relay_lite::Metrics::new();
    let mut turn = TurnConfig::new(b"lab secret".to_vec());
    turn.listen_udp = Some("127.0.0.1:0".parse().unwrap());
    turn.listen_tcp = Some("127.0.0.1:0".parse().unwrap());
    let relay = Relay::start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        region: Some("lab".into()),
        metrics: Some(shared_metrics.clone()),
        turn: Some(turn),
        ..RelayConfig::default()
    })
    .await
    .unwrap();
    let url = format!("ws://{}", relay.local_addr());
    assert_eq!(relay.endpoint(), url);
    let server = relay.turn().expect("the embedded TURN server runs");
    let (udp, tcp) = (server.udp_addr().unwrap(), server.tcp_addr().unwrap());

    // A client that asks is told the embedded server's listeners, with a
    // credential made from its secret, once it is paired.
    let mut client = Client::connect(&url).await;
    let reply = client
        .request(json!({"type": "register", "pairingCode": "ABC234", "publicKey": key(1), "iceServers": true}))
        .await;
    assert_eq!(reply["type"], "registered", "{reply}");
    let mut caller = Client::registered(&url, "XYZ789", 2).await;
    caller
        .send(json!({"type": "pair_request", "targetCode": "ABC234", "proposedName": "C"}))
        .await;
    assert_eq!(client.recv().await["type"], "pair_incoming");
    let ice = client
        .request(json!({"type": "pair_response", "targetCode": "XYZ789", "accepted": true}))
        .await;
    assert_eq!(ice["type"], "ice_servers", "{ice}");
    let server_entry = &ice["iceServers"][0];
    let urls: Vec<&str> = server_entry["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("turn:{udp}?transport=udp"),
            format!("turn:{tcp}?transport=tcp")
        ]
    );
    let username = server_entry["username"].as_str().unwrap();
    assert_eq!(
        server_entry["credential"].as_str().unwrap(),
        relay_lite::credentials::password_for(b"lab secret", username)
    );

    assert_eq!(client.recv().await["type"], "pair_matched");

    assert_eq!(client.server_info["serverId"], relay.server_id());
    assert_eq!(client.server_info["region"], "lab");
    assert_eq!(relay.registered_codes(), 2);
    let metrics = relay.metrics();
    assert!(Arc::ptr_eq(&metrics, &shared_metrics));
    assert_eq!(metrics.registered_codes(), 2);
    let (_, body) = common::relay::http_get(relay.local_addr(), "/metrics").await;
    assert!(body.contains("relay_turn_allocations 0\n"), "{body}");
    assert!(body.contains("relay_turn_refused_auth_total 0\n"), "{body}");
    let (_, health) = common::relay::http_get(relay.local_addr(), "/health").await;
    assert!(health.contains("\"turnAllocations\":0"), "{health}");

    let addr = relay.local_addr();
    let stopping = tokio::spawn(relay.shutdown());
    assert_eq!(client.ended().await, Ended::Close(1001));
    assert_eq!(caller.ended().await, Ended::Close(1001));
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(metrics.registered_codes(), 0);
    // The TURN server stopped with the relay: its ports are free again.
    std::net::UdpSocket::bind(udp).expect("the TURN UDP port is released");
    std::net::TcpListener::bind(tcp).expect("the TURN TCP port is released");
}
