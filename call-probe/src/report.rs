//! What a call learnt, as one serde struct ([`CallReport`]), and its human-readable table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use zajel_wire::call::RejectReason;

use crate::media::{ToneReading, ToneSpan};
use crate::stats::{RtpFigures, Timeline};
use crate::tap::{cipher_suite_name, srtp_profile_name, DtlsNegotiation};
use crate::video::VideoReport;

/// Which end of the call this side was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Caller,
    Callee,
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndReason {
    /// This side hung up (`call_hangup` sent).
    HangupLocal,
    /// The other side hung up (`call_hangup` received).
    HangupRemote,
    /// The other side sent `call_reject` (with its reason, if any).
    RejectedByRemote { reason: Option<RejectReason> },
    /// This side declined the incoming call (`call_reject` reason `declined` sent).
    DeclinedLocally,
    /// Nobody answered within the ringing timeout (`call_reject` reason `timeout` sent).
    RingingTimeout,
    /// ICE gathering gave no local candidate within its timeout.
    IceGatheringTimeout,
    /// The connection dropped and did not come back within the reconnect window.
    ReconnectTimeout,
    /// Something failed (peer connection failed, an SDP was refused, …).
    Failed { detail: String },
    /// The peer's `auth` did not verify, was missing where it was required (or had been given
    /// before), or the DTLS certificate it presented was not the authenticated one: this side
    /// sent `call_hangup`.
    MediaNotAuthenticated { detail: String },
    /// The call has not ended: a snapshot of a call in progress.
    InProgress,
}

impl EndReason {
    /// A short human text.
    pub fn describe(&self) -> String {
        match self {
            Self::HangupLocal => "hung up here".into(),
            Self::HangupRemote => "hung up by the other side".into(),
            Self::RejectedByRemote { reason } => format!(
                "rejected by the other side ({})",
                reason.map_or("no reason", RejectReason::as_str)
            ),
            Self::DeclinedLocally => "declined here".into(),
            Self::RingingTimeout => "not answered (ringing timeout)".into(),
            Self::IceGatheringTimeout => "ICE gathering timed out with no candidate".into(),
            Self::ReconnectTimeout => "connection lost (reconnect window passed)".into(),
            Self::Failed { detail } => format!("failed: {detail}"),
            Self::MediaNotAuthenticated { detail } => {
                format!("refused, media not authenticated: {detail}")
            }
            Self::InProgress => "still in progress".into(),
        }
    }
}

/// One ICE candidate of the selected pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInfo {
    /// `host`, `srflx`, `prflx` or `relay`.
    pub kind: String,
    /// `udp` or `tcp`.
    pub protocol: String,
    pub address: String,
    pub port: u16,
    /// The related port (RFC 8839 `rport`): for our relay candidates, the local port of the
    /// TURN client's socket, which tells which TURN transport carried them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_port: Option<u16>,
}

/// The candidate pair ICE selected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatePair {
    pub local: CandidateInfo,
    pub remote: CandidateInfo,
}

/// ICE facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IceReport {
    pub relay_only: bool,
    pub local_candidates: u32,
    pub remote_candidates: u32,
    /// Remote candidates dropped because they named a loopback, link-local, unspecified or
    /// multicast address.
    #[serde(default)]
    pub remote_candidates_dropped: u32,
    /// Our relay candidates, each by its related port (the local port of the TURN client
    /// that allocated it: which TURN transport it came through).
    #[serde(default)]
    pub local_relays: Vec<u16>,
    /// Gathering was still running when its timeout passed (the call went on with what it had).
    pub gathering_timed_out: bool,
    pub selected_pair: Option<CandidatePair>,
    /// ICE restarts this side started (the caller drives restarts).
    pub ice_restarts: u32,
    /// Times the connection came back after dropping.
    pub reconnects: u32,
}

/// DTLS-SRTP facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtlsReport {
    /// The SRTP protection profile the handshake chose, e.g. `SRTP_AEAD_AES_128_GCM`.
    pub srtp_profile: Option<String>,
    /// Whether that profile is one of the AES-GCM (AEAD) ones.
    pub srtp_profile_is_aes_gcm: bool,
    /// The DTLS cipher suite.
    pub cipher_suite: Option<String>,
    /// Where the two above came from: `ServerHello on the wire` (the engine's socket),
    /// `ServerHello through TURN` (a relayed call, seen by a TURN tap), or empty when they were
    /// not observed (e.g. with a STUN server, whose srflx candidates use webrtc-rs's sockets).
    pub source: String,
    /// The profiles this side offered, most preferred first.
    pub profiles_offered: Vec<String>,
    /// Times our final DTLS flight went out again through TURN because the peer repeated its
    /// own (`crate::turn_tap`; on the engine's socket: `wire.dtls_final_flight_resends`).
    #[serde(default)]
    pub final_flight_resends_through_turn: u64,
}

impl DtlsReport {
    /// Fills the negotiated profile and suite from a ServerHello seen at `source`.
    pub fn observe(&mut self, negotiation: DtlsNegotiation, source: &str) {
        self.srtp_profile = negotiation.srtp_profile.map(srtp_profile_name);
        self.srtp_profile_is_aes_gcm = matches!(negotiation.srtp_profile, Some(0x0007 | 0x0008));
        self.cipher_suite = Some(cipher_suite_name(negotiation.cipher_suite));
        self.source = source.into();
    }
}

/// Tone facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToneReport {
    /// Frequency this side sent; `None` when it echoed what it received.
    pub sent_hz: Option<f64>,
    /// What this side detected in the audio it received.
    pub detected: Option<ToneReading>,
    /// 20 ms frames this side encoded and handed to the track.
    pub frames_sent: u64,
    /// Opus packets this side decoded.
    pub frames_decoded: u64,
    /// When the tone was heard and when not (the peer's mute shows here).
    #[serde(default)]
    pub spans: Vec<ToneSpan>,
    /// Frames this side sent as silence because it was muted.
    #[serde(default)]
    pub frames_muted: u64,
}

/// Wire figures of the engine's own socket (all traffic: STUN, DTLS, SRTP, SRTCP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireReport {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_withheld: u64,
    /// Times this side, as DTLS server, sent its final handshake flight again because the
    /// peer repeated its own (RFC 6347 §4.2.4; see [`crate::last_flight`]).
    #[serde(default)]
    pub dtls_final_flight_resends: u64,
}

/// Everything one side learnt about one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallReport {
    pub call_id: String,
    pub role: Role,
    pub with_video: bool,
    /// Both SDPs carry a video m-line with VP8.
    pub video_negotiated: bool,
    pub end: EndReason,
    pub timeline: Timeline,
    pub ice: IceReport,
    pub dtls: DtlsReport,
    pub rtp: RtpFigures,
    pub tone: ToneReport,
    /// Video sent and received (with `--video` on a build with the `video` feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoReport>,
    pub wire: Option<WireReport>,
    /// The peer's `auth` verified and the DTLS certificate it presented was the authenticated
    /// one (`false`: a peer without call authentication, or a refused call).
    #[serde(default)]
    pub authenticated: bool,
    /// The peer's X25519 public key (standard base64), when it was paired.
    #[serde(default)]
    pub peer_key: Option<String>,
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

impl CallReport {
    /// A two-column table for people.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        row("call id", self.call_id.clone());
        row(
            "role",
            match self.role {
                Role::Caller => "caller".into(),
                Role::Callee => "callee".into(),
            },
        );
        row("ended", self.end.describe());
        row(
            "authenticated",
            format!(
                "{} (peer key {})",
                self.authenticated,
                self.peer_key.as_deref().unwrap_or("unknown")
            ),
        );
        row(
            "video",
            format!(
                "{} (negotiated: {})",
                if self.with_video { "asked" } else { "no" },
                self.video_negotiated
            ),
        );
        let t = &self.timeline;
        row("offer sent", ms(t.offer_sent_ms));
        row("offer received", ms(t.offer_received_ms));
        row("answer sent", ms(t.answer_sent_ms));
        row("answer received", ms(t.answer_received_ms));
        row("ICE gathering complete", ms(t.ice_gathering_complete_ms));
        row("ICE connected", ms(t.ice_connected_ms));
        row("DTLS connected", ms(t.dtls_connected_ms));
        row("call connected", ms(t.connected_ms));
        row("first RTP received", ms(t.first_rtp_ms));
        row("tone detected", ms(t.tone_detected_ms));
        if self.with_video {
            row("first video frame decoded", ms(t.first_video_frame_ms));
        }
        row("first RTCP RTT", ms(t.first_rtt_ms));
        row("ended at", ms(t.ended_ms));
        let ice = &self.ice;
        row(
            "candidates local/remote",
            format!("{}/{}", ice.local_candidates, ice.remote_candidates),
        );
        if let Some(pair) = &ice.selected_pair {
            for (name, c) in [("local", &pair.local), ("remote", &pair.remote)] {
                row(
                    &format!("selected {name}"),
                    format!("{} {} {}:{}", c.kind, c.protocol, c.address, c.port),
                );
            }
        } else {
            row("selected pair", "-".into());
        }
        row(
            "relay only / restarts / reconnects",
            format!(
                "{} / {} / {}",
                ice.relay_only, ice.ice_restarts, ice.reconnects
            ),
        );
        row("SRTP profile", opt(self.dtls.srtp_profile.clone()));
        row("DTLS cipher suite", opt(self.dtls.cipher_suite.clone()));
        let r = &self.rtp;
        row(
            "audio sent",
            format!("{} packets, {} bytes", r.packets_sent, r.bytes_sent),
        );
        row(
            "audio received",
            format!("{} packets, {} bytes", r.packets_received, r.bytes_received),
        );
        row(
            "loss / jitter (measured here)",
            format!("{} packets / {:.2} ms", r.packets_lost, r.jitter_ms),
        );
        row(
            "RTT (RTCP)",
            format!("{} ({} measurements)", ms(r.rtt_ms), r.rtt_measurements),
        );
        row(
            "loss / jitter (RTCP from peer)",
            format!(
                "{} packets, fraction {} / {}",
                opt(r.remote_packets_lost),
                opt(r.remote_fraction_lost.map(|f| format!("{f:.3}"))),
                ms(r.remote_jitter_ms)
            ),
        );
        row(
            "tone",
            format!(
                "sent {}; heard {}",
                self.tone
                    .sent_hz
                    .map_or_else(|| "an echo".to_string(), |hz| format!("{hz} Hz")),
                self.tone.detected.map_or_else(
                    || "nothing".to_string(),
                    |d| format!(
                        "{:.0} Hz at {:.1} dBFS (purity {:.2})",
                        d.frequency_hz, d.level_dbfs, d.purity
                    )
                )
            ),
        );
        if let Some(v) = &self.video {
            let (sent, rx) = (&v.sent, &v.received);
            row(
                "video sent",
                format!(
                    "{} frames ({} keyframes, {} black), {} bytes, {}x{} at {} fps, camera {}; keyframe requests from peer: {} PLI, {} FIR",
                    sent.frames_sent,
                    sent.keyframes_sent,
                    sent.black_frames_sent,
                    sent.bytes_sent,
                    sent.width,
                    sent.height,
                    sent.fps,
                    sent.pattern_id,
                    sent.pli_received,
                    sent.fir_received
                ),
            );
            row(
                "video received",
                format!(
                    "{} frames, {} decoded ({} keyframes), {} lost, {} skipped, {} decode errors, {} PLI sent",
                    rx.frames_received,
                    rx.frames_decoded,
                    rx.keyframes_received,
                    rx.frames_lost,
                    rx.frames_skipped,
                    rx.decode_errors,
                    rx.pli_sent
                ),
            );
            row(
                "video picture",
                format!(
                    "{}x{}, {:.1} fps, {:.0} kbit/s, {} freezes (longest gap {})",
                    opt(rx.width),
                    opt(rx.height),
                    rx.frame_rate.unwrap_or(0.0),
                    rx.bitrate_kbps.unwrap_or(0.0),
                    rx.freezes,
                    ms(rx.longest_gap_ms)
                ),
            );
            row(
                "video counter",
                format!(
                    "{} read ({}..{}), {} missing, {} out of order; {} black, {} unreadable; patterns {:?}",
                    rx.counters_read,
                    opt(rx.first_counter),
                    opt(rx.last_counter),
                    rx.counters_missing,
                    rx.counters_out_of_order,
                    rx.black_frames,
                    rx.unreadable_frames,
                    rx.patterns_seen
                ),
            );
        }
        if let Some(w) = &self.wire {
            row(
                "wire (this socket)",
                format!(
                    "sent {} pkts/{} B, received {} pkts/{} B, withheld {}",
                    w.packets_sent,
                    w.bytes_sent,
                    w.packets_received,
                    w.bytes_received,
                    w.packets_withheld
                ),
            );
        }
        let resent = self.wire.map_or(0, |w| w.dtls_final_flight_resends)
            + self.dtls.final_flight_resends_through_turn;
        if resent > 0 {
            row(
                "DTLS final flight",
                format!("sent again {resent} time(s): the peer had not received it"),
            );
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}
