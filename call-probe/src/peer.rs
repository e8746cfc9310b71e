//! webrtc-rs peer connection setup for one call: codecs (Opus, VP8), the default
//! interceptors (NACK, RTCP reports, stats), the SettingEngine (AES-GCM SRTP profiles first,
//! loopback and interface filters, ICE timeouts, no mDNS), the engine's tapped UDP socket as
//! the ICE agent's UDP mux, the ICE servers and transport policy, and the local tracks.

use std::sync::Arc;

use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice::udp_mux::{UDPMux, UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

use crate::config::CallConfig;
use crate::tap::{TapState, TappedUdp};

/// The SRTP protection profiles offered, most preferred first: AES-GCM before AES-CM.
pub const SRTP_PROFILES: [SrtpProtectionProfile; 4] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
];

/// Errors while setting up a peer connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("could not bind the call's UDP socket: {0}")]
    Bind(#[from] std::io::Error),
}

/// A peer connection with its local tracks and the tapped socket, if one is used.
pub struct Peer {
    pub pc: Arc<RTCPeerConnection>,
    pub audio: Arc<TrackLocalStaticSample>,
    pub audio_sender: Arc<RTCRtpSender>,
    pub video: Option<(Arc<TrackLocalStaticSample>, Arc<RTCRtpSender>)>,
    pub tap: Option<Arc<TapState>>,
    mux: Option<Arc<UDPMuxDefault>>,
}

impl Peer {
    /// Creates the peer connection and adds an Opus audio track (and a VP8 one with `with_video`).
    pub async fn new(config: &CallConfig, with_video: bool) -> Result<Self, PeerError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;

        let mut settings = SettingEngine::default();
        settings.set_srtp_protection_profiles(SRTP_PROFILES.to_vec());
        // Answer as DTLS server (`a=setup:passive`; as offerer we say actpass and libwebrtc
        // answers active): the DTLS server chooses the SRTP profile, by its own order with
        // the patched dtls crate (third_party/README.md), so AES-GCM wins with libwebrtc,
        // which lists AES-CM first and, as server, would choose it.
        settings.set_answering_dtls_role(DTLSRole::Server)?;
        settings.set_include_loopback_candidate(config.include_loopback);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // A peer's check often arrives before its trickled candidate, so the pair's remote
        // candidate is peer-reflexive; webrtc-rs would wait 1 s before nominating it.
        settings.set_prflx_acceptance_min_wait(Some(std::time::Duration::ZERO));
        if config.relay_only {
            // Only relay candidates exist: nothing better to wait for (webrtc-rs waits 2 s).
            settings.set_relay_acceptance_min_wait(Some(std::time::Duration::ZERO));
        }
        let t = config.timeouts;
        settings.set_ice_timeouts(
            Some(t.ice_disconnected),
            Some(t.ice_failed),
            Some(t.ice_keepalive),
        );
        if config.loopback_only {
            settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
        }
        if let Some(names) = config.interfaces.clone() {
            settings.set_interface_filter(Box::new(move |name| names.iter().any(|n| n == name)));
        }
        let (tap, mux) = if config.uses_tapped_socket() {
            let (socket, tap) = TappedUdp::bind(config.udp_bind).await?;
            settings.set_network_types(if config.udp_bind.is_ipv4() {
                vec![NetworkType::Udp4]
            } else {
                vec![NetworkType::Udp6]
            });
            let mux = UDPMuxDefault::new(UDPMuxParams::new(socket));
            settings.set_udp_network(UDPNetwork::Muxed(mux.clone()));
            (Some(tap), Some(mux))
        } else {
            (None, None)
        };

        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .build();
        let rtc_config = RTCConfiguration {
            ice_servers: config
                .current_ice_servers()
                .iter()
                .map(|server| RTCIceServer {
                    urls: server.urls.clone(),
                    username: server.username.clone(),
                    credential: server.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if config.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        let pc = Arc::new(api.new_peer_connection(rtc_config).await?);

        let audio = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                ..Default::default()
            },
            "audio".to_owned(),
            "zajel-call-probe".to_owned(),
        ));
        let audio_sender = pc
            .add_track(Arc::clone(&audio) as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let mut peer = Self {
            pc,
            audio,
            audio_sender,
            video: None,
            tap,
            mux,
        };
        if with_video {
            peer.add_video().await?;
        }
        Ok(peer)
    }

    /// Adds the VP8 video track (at the start, or to renegotiate an audio call into a video
    /// call: on the callee before the remote offer is applied, so that webrtc-rs gives the
    /// offer's video m-line to this track's transceiver). Returns the sender; a second call
    /// returns the existing one.
    pub async fn add_video(&mut self) -> Result<Arc<RTCRtpSender>, PeerError> {
        if let Some((_, sender)) = &self.video {
            return Ok(Arc::clone(sender));
        }
        let track = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            },
            "video".to_owned(),
            "zajel-call-probe".to_owned(),
        ));
        let local = Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>;
        let sender = self.pc.add_track(local).await?;
        self.video = Some((track, Arc::clone(&sender)));
        Ok(sender)
    }

    /// Closes the peer connection and the engine's socket.
    pub async fn close(&self) {
        if let Err(err) = self.pc.close().await {
            tracing::debug!("closing the peer connection: {err}");
        }
        if let Some(mux) = &self.mux {
            if let Err(err) = mux.close().await {
                tracing::debug!("closing the UDP mux: {err}");
            }
        }
    }
}
