//! webrtc-rs's own DTLS over the tap, with the server's final flight (ChangeCipherSpec +
//! Finished) lost once on the way out: the client repeats its final flight, the tap answers
//! with the server's again (RFC 6347 §4.2.4), and both handshakes complete and carry data.
//! Without that answer the client's handshake never completes (webrtc-rs's DTLS stops its
//! handshake state machine once it sent its last flight); see `call_probe::last_flight`.

use std::sync::Arc;
use std::time::Duration;

use call_probe::tap::TappedUdp;
use webrtc::dtls::config::{Config, ExtendedMasterSecretType};
use webrtc::dtls::conn::DTLSConn;
use webrtc::dtls::crypto::Certificate;
use webrtc::util::Conn;

const STEP: Duration = Duration::from_secs(20);

fn config() -> Config {
    Config {
        certificates: vec![Certificate::generate_self_signed(vec!["probe".into()]).unwrap()],
        insecure_skip_verify: true,
        extended_master_secret: ExtendedMasterSecretType::Require,
        // The client repeats its final flight after this long without an answer.
        flight_interval: Duration::from_millis(100),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_final_flight_of_the_server_is_sent_again_when_the_client_repeats_its_own() {
    zajel_client_net::tls::install_crypto_provider();
    let any = "127.0.0.1:0".parse().unwrap();
    let (server_socket, server_tap) = TappedUdp::bind(any).await.unwrap();
    let (client_socket, client_tap) = TappedUdp::bind(any).await.unwrap();
    server_socket
        .connect(client_socket.local_addr().unwrap())
        .await
        .unwrap();
    client_socket
        .connect(server_socket.local_addr().unwrap())
        .await
        .unwrap();
    // Each side loses its first datagram carrying a ChangeCipherSpec: the client's final
    // flight (recovered by the client's own retransmission) and the server's (recovered only
    // by the tap's answer).
    server_tap.lose_next_change_cipher_spec();
    client_tap.lose_next_change_cipher_spec();
    let server_conn: Arc<dyn Conn + Send + Sync> = Arc::new(server_socket);
    let client_conn: Arc<dyn Conn + Send + Sync> = Arc::new(client_socket);

    let server = tokio::spawn(DTLSConn::new(server_conn, config(), false, None));
    let client = tokio::time::timeout(STEP, DTLSConn::new(client_conn, config(), true, None))
        .await
        .expect("the client's handshake should complete once the server's flight is resent")
        .expect("client handshake");
    let server = tokio::time::timeout(STEP, server)
        .await
        .expect("server handshake in time")
        .unwrap()
        .expect("server handshake");

    let server_counters = server_tap.counters();
    assert_eq!(server_counters.packets_withheld, 1, "{server_counters:?}");
    assert!(
        server_counters.dtls_final_flight_resends >= 1,
        "{server_counters:?}"
    );
    let client_counters = client_tap.counters();
    assert_eq!(client_counters.packets_withheld, 1, "{client_counters:?}");
    assert_eq!(
        client_counters.dtls_final_flight_resends, 0,
        "the client side never answers: {client_counters:?}"
    );

    // Application data flows both ways over the keys both sides agreed on.
    client.write(b"ping", Some(STEP)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf, Some(STEP)).await.unwrap();
    assert_eq!(&buf[..n], b"ping");
    server.write(b"pong", Some(STEP)).await.unwrap();
    let n = client.read(&mut buf, Some(STEP)).await.unwrap();
    assert_eq!(&buf[..n], b"pong");
    client.close().await.unwrap();
    server.close().await.unwrap();
}
