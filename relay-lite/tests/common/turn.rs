//! Shared by the TURN tests and the TURN benchmark: a relay-only WebRTC
//! audio call between two in-process webrtc-rs peers, a raw TURN client
//! that reports error codes, a test CA, and free loopback ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relay_lite::turn::rustls::pki_types::CertificateDer;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice_transport::ice_candidate_pair::RTCIceCandidatePair;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::stun::agent::TransactionId;
use webrtc::stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use webrtc::stun::error_code::ErrorCodeAttribute;
use webrtc::stun::fingerprint::FINGERPRINT;
use webrtc::stun::integrity::MessageIntegrity;
use webrtc::stun::message::{
    Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST,
    CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
};
use webrtc::stun::textattrs::TextAttribute;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::turn::proto::relayaddr::RelayedAddress;
use webrtc::turn::proto::reqtrans::RequestedTransport;
use webrtc::turn::proto::PROTO_UDP;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The per-step deadline: `TURN_TEST_TIMEOUT_SECS`, 20 s by default.
pub fn step_timeout() -> Duration {
    let secs = std::env::var("TURN_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

pub fn now_secs() -> u64 {
    zajel_client_net::now_ms() / 1000
}

/// A port that was free on 127.0.0.1 a moment ago (for child processes).
pub fn free_port() -> u16 {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    // The same number must be free for TCP too.
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => port,
        Err(_) => free_port(),
    }
}

/// A test CA and a server certificate it signed for `turn.test` and 127.0.0.1.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn test_pki(ca_name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["turn.test".to_string()]).unwrap();
    server_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    TestPki {
        ca: ca.der().clone(),
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

fn peer_api() -> Result<API, BoxError> {
    // This build holds two rustls providers (reqwest brings aws-lc-rs) and
    // webrtc-rs's DTLS asks for the process default.
    zajel_client_net::tls::install_crypto_provider();
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// What a relay-only call showed.
pub struct CallOutcome {
    /// Distinct RTP payloads the answerer received, all of them ones the
    /// offerer sent.
    pub received: usize,
    pub offerer_pair: RTCIceCandidatePair,
    pub answerer_pair: RTCIceCandidatePair,
    pub offer_sdp: String,
    pub answer_sdp: String,
}

async fn connected(
    states: &mut mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    who: &str,
    timeout: Duration,
) -> Result<(), BoxError> {
    tokio::time::timeout(timeout, async {
        while let Some(state) = states.recv().await {
            match state {
                RTCPeerConnectionState::Connected => return Ok(()),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    return Err(format!("{who} peer connection {state}").into())
                }
                _ => {}
            }
        }
        Err(format!("{who} state channel ended").into())
    })
    .await
    .map_err(|_| format!("{who} did not connect within {timeout:?}"))?
}

fn watch_state(pc: &RTCPeerConnection) -> mpsc::UnboundedReceiver<RTCPeerConnectionState> {
    let (tx, rx) = mpsc::unbounded_channel();
    pc.on_peer_connection_state_change(Box::new(move |state| {
        let _ = tx.send(state);
        Box::pin(async {})
    }));
    rx
}

async fn selected_pair(pc: &RTCPeerConnection) -> Result<RTCIceCandidatePair, BoxError> {
    pc.sctp()
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok_or_else(|| "no selected candidate pair".into())
}

/// Two peers in this process, relay-only, each with its own ICE server
/// (its own TURN URL and credentials); the offerer sends Opus RTP packets
/// with known payloads until the answerer has received `packets` of them.
pub async fn relayed_call(
    offerer_ice: RTCIceServer,
    answerer_ice: RTCIceServer,
    packets: usize,
    timeout: Duration,
) -> Result<CallOutcome, BoxError> {
    let api = peer_api()?;
    let config = |ice: RTCIceServer| RTCConfiguration {
        ice_servers: vec![ice],
        ice_transport_policy: RTCIceTransportPolicy::Relay,
        ..Default::default()
    };
    let offerer = api.new_peer_connection(config(offerer_ice)).await?;
    let answerer = api.new_peer_connection(config(answerer_ice)).await?;
    let result = call_between(&offerer, &answerer, packets, timeout).await;
    let _ = offerer.close().await;
    let _ = answerer.close().await;
    result
}

async fn call_between(
    offerer: &RTCPeerConnection,
    answerer: &RTCPeerConnection,
    packets: usize,
    timeout: Duration,
) -> Result<CallOutcome, BoxError> {
    let mut offerer_states = watch_state(offerer);
    let mut answerer_states = watch_state(answerer);

    let track = Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            ..Default::default()
        },
        "audio".to_owned(),
        "zajel-turn-test".to_owned(),
    ));
    let sender = offerer
        .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
        .await?;
    tokio::spawn(async move {
        let mut rtcp = vec![0u8; 1500];
        while sender.read(&mut rtcp).await.is_ok() {}
    });

    let (payload_tx, mut payloads) = mpsc::unbounded_channel::<Bytes>();
    answerer.on_track(Box::new(move |remote, _, _| {
        let payload_tx = payload_tx.clone();
        Box::pin(async move {
            while let Ok((packet, _)) = remote.read_rtp().await {
                if payload_tx.send(packet.payload).is_err() {
                    break;
                }
            }
        })
    }));

    // Offer and answer, each with every candidate gathered (no trickle).
    let offer = offerer.create_offer(None).await?;
    let mut gathered = offerer.gathering_complete_promise().await;
    offerer.set_local_description(offer).await?;
    tokio::time::timeout(timeout, gathered.recv())
        .await
        .map_err(|_| "offerer gathering timed out")?;
    let offer = offerer
        .local_description()
        .await
        .ok_or("offerer has no local description")?;
    answerer.set_remote_description(offer.clone()).await?;
    let answer = answerer.create_answer(None).await?;
    let mut gathered = answerer.gathering_complete_promise().await;
    answerer.set_local_description(answer).await?;
    tokio::time::timeout(timeout, gathered.recv())
        .await
        .map_err(|_| "answerer gathering timed out")?;
    let answer = answerer
        .local_description()
        .await
        .ok_or("answerer has no local description")?;
    offerer.set_remote_description(answer.clone()).await?;

    connected(&mut offerer_states, "offerer", timeout).await?;
    connected(&mut answerer_states, "answerer", timeout).await?;

    // Send a packet every 20 ms (an Opus frame's pace) until enough arrive.
    let mut seen = std::collections::BTreeSet::new();
    let mut sequence: u16 = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while seen.len() < packets {
        tokio::select! {
            _ = pace.tick() => {
                let payload = format!("zajel-turn-{sequence:05}");
                track
                    .write_rtp(&Packet {
                        header: Header {
                            version: 2,
                            payload_type: 111,
                            sequence_number: sequence,
                            timestamp: u32::from(sequence) * 960,
                            ssrc: 0x5A4A,
                            ..Default::default()
                        },
                        payload: Bytes::from(payload),
                    })
                    .await?;
                sequence = sequence.wrapping_add(1);
            }
            Some(payload) = payloads.recv() => {
                let text = std::str::from_utf8(&payload)
                    .map_err(|_| "received a payload that was never sent")?;
                let number: u16 = text
                    .strip_prefix("zajel-turn-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("received a payload that was never sent: {text:?}"))?;
                if number >= sequence {
                    return Err(format!("received packet {number} before sending it").into());
                }
                seen.insert(number);
            }
            _ = &mut deadline => {
                return Err(format!(
                    "only {} of {packets} RTP packets arrived within {timeout:?}",
                    seen.len()
                )
                .into());
            }
        }
    }

    Ok(CallOutcome {
        received: seen.len(),
        offerer_pair: selected_pair(offerer).await?,
        answerer_pair: selected_pair(answerer).await?,
        offer_sdp: offer.sdp,
        answer_sdp: answer.sdp,
    })
}

/// A raw TURN client over UDP that reports the server's error codes.
pub struct RawTurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    timeout: Duration,
}

/// How an Allocate ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AllocateOutcome {
    Relayed(SocketAddr),
    Refused(u16),
}

impl RawTurnClient {
    pub async fn new(server: SocketAddr, timeout: Duration) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            timeout,
        }
    }

    async fn exchange(&self, setters: Vec<Box<dyn Setter>>) -> Result<Message, BoxError> {
        let mut request = Message::new();
        request.build(&setters)?;
        self.send_and_receive(&request).await
    }

    /// Sends `request` (again, when called twice: a retransmission) and reads its answer.
    async fn send_and_receive(&self, request: &Message) -> Result<Message, BoxError> {
        self.socket.send_to(&request.raw, self.server).await?;
        let mut buf = vec![0u8; 1500];
        loop {
            let (n, _) = tokio::time::timeout(self.timeout, self.socket.recv_from(&mut buf))
                .await
                .map_err(|_| format!("no TURN answer within {:?}", self.timeout))??;
            let mut response = Message::new();
            response.raw = buf[..n].to_vec();
            response.decode()?;
            if response.transaction_id == request.transaction_id {
                return Ok(response);
            }
        }
    }

    /// An Allocate without credentials: the server's 401 challenge, with
    /// its realm and nonce.
    pub async fn challenge(&self) -> Result<(String, String), BoxError> {
        let challenge = self
            .exchange(vec![
                Box::new(TransactionId::new()),
                Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
                Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                }),
                Box::new(FINGERPRINT),
            ])
            .await?;
        if error_code(&challenge) != Some(401) {
            return Err(format!("expected a 401 challenge, got {:?}", challenge.typ).into());
        }
        let realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)?.text;
        let nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)?.text;
        Ok((realm, nonce))
    }

    /// Allocate with long-term credentials: first unauthenticated (the 401
    /// that names the realm and nonce), then with MESSAGE-INTEGRITY.
    pub async fn allocate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<AllocateOutcome, BoxError> {
        let request = self.allocate_request(username, password).await?;
        outcome(&self.send_and_receive(&request).await?)
    }

    /// An authenticated Allocate whose answer is lost on the way back: the client sends the
    /// same request again, byte for byte (a STUN retransmission). Both answers.
    pub async fn allocate_with_lost_answer(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(AllocateOutcome, AllocateOutcome), BoxError> {
        let request = self.allocate_request(username, password).await?;
        let lost = outcome(&self.send_and_receive(&request).await?)?;
        let retransmitted = outcome(&self.send_and_receive(&request).await?)?;
        Ok((lost, retransmitted))
    }

    /// An Allocate with the long-term credential, after fetching the challenge.
    async fn allocate_request(&self, username: &str, password: &str) -> Result<Message, BoxError> {
        let (realm, nonce) = self.challenge().await?;
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
            Box::new(TextAttribute::new(ATTR_REALM, realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            Box::new(MessageIntegrity::new_long_term_integrity(
                username.to_owned(),
                realm,
                password.to_owned(),
            )),
            Box::new(FINGERPRINT),
        ];
        let mut request = Message::new();
        request.build(&setters)?;
        Ok(request)
    }
}

/// How an Allocate answer ended.
fn outcome(response: &Message) -> Result<AllocateOutcome, BoxError> {
    if response.typ.class == CLASS_SUCCESS_RESPONSE {
        let mut relayed = RelayedAddress::default();
        relayed.get_from(response)?;
        return Ok(AllocateOutcome::Relayed(SocketAddr::new(
            relayed.ip,
            relayed.port,
        )));
    }
    match error_code(response) {
        Some(code) => Ok(AllocateOutcome::Refused(code)),
        None => Err(format!("unexpected answer {:?}", response.typ).into()),
    }
}

fn error_code(message: &Message) -> Option<u16> {
    if message.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut code = ErrorCodeAttribute::default();
    code.get_from(message).ok()?;
    Some(code.code.0)
}
