//! The call's timeline (milliseconds from the call's start on this side) and its RTP/RTCP
//! figures: what webrtc-rs's `get_stats` reports (outbound-rtp, remote-inbound-rtp with the
//! RTCP round-trip time), what the peer's RTCP receiver reports said (jitter, loss), and what
//! the engine measured on the packets it received.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::sender_report::SenderReport;
use webrtc::stats::{StatsReport, StatsReportType};

use crate::media::{ReceiveStats, SAMPLE_RATE};

/// Moments of the call, in ms since the call started on this side (`place_call` for the
/// caller, the arrival of the offer for the callee). `None`: did not happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub offer_sent_ms: Option<f64>,
    pub offer_received_ms: Option<f64>,
    pub answer_sent_ms: Option<f64>,
    pub answer_received_ms: Option<f64>,
    pub ice_gathering_complete_ms: Option<f64>,
    pub ice_connected_ms: Option<f64>,
    pub dtls_connected_ms: Option<f64>,
    /// The peer connection reached `connected` (ICE and DTLS up).
    pub connected_ms: Option<f64>,
    pub first_rtp_ms: Option<f64>,
    pub tone_detected_ms: Option<f64>,
    /// The first incoming video frame was decoded (with `--video`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_video_frame_ms: Option<f64>,
    /// The first RTCP round-trip time became available.
    pub first_rtt_ms: Option<f64>,
    pub ended_ms: Option<f64>,
}

/// Sets `slot` to the time since `start` unless it is already set.
pub fn mark(slot: &mut Option<f64>, start: Instant) {
    if slot.is_none() {
        *slot = Some(start.elapsed().as_secs_f64() * 1000.0);
    }
}

/// RTP and RTCP figures for the audio stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RtpFigures {
    /// outbound-rtp: packets and payload bytes sent.
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Measured here: packets and payload bytes received.
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Measured here: lost packets from sequence-number gaps.
    pub packets_lost: u64,
    /// Measured here: RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// remote-inbound-rtp: round-trip time from RTCP SR/RR (LSR/DLSR), ms.
    pub rtt_ms: Option<f64>,
    pub rtt_measurements: u64,
    /// From the peer's RTCP receiver reports about our stream.
    pub remote_packets_lost: Option<i64>,
    pub remote_fraction_lost: Option<f64>,
    pub remote_jitter_ms: Option<f64>,
    /// RTCP sender reports received from the peer.
    pub sender_reports_received: u64,
    /// RTCP receiver reports received from the peer.
    pub receiver_reports_received: u64,
}

impl RtpFigures {
    /// Takes the audio outbound-rtp and remote-inbound-rtp figures from webrtc-rs's stats.
    pub fn apply_stats(&mut self, report: &StatsReport) {
        for stats in report.reports.values() {
            match stats {
                StatsReportType::OutboundRTP(out) if out.kind == "audio" => {
                    self.packets_sent = out.packets_sent;
                    self.bytes_sent = out.bytes_sent;
                }
                // webrtc-rs's stats interceptor keeps the round-trip time in milliseconds.
                StatsReportType::RemoteInboundRTP(remote)
                    if remote.kind == "audio" && remote.round_trip_time_measurements > 0 =>
                {
                    self.rtt_ms = remote.round_trip_time;
                    self.rtt_measurements = remote.round_trip_time_measurements;
                }
                _ => {}
            }
        }
    }

    /// Takes what this side measured on received packets.
    pub fn apply_receive(&mut self, receive: &ReceiveStats) {
        self.packets_received = receive.packets();
        self.bytes_received = receive.payload_bytes();
        self.packets_lost = receive.packets_lost();
        self.jitter_ms = receive.jitter_ms();
    }

    /// Takes an RTCP packet the peer sent about our stream.
    pub fn apply_rtcp(&mut self, packet: &(dyn webrtc::rtcp::packet::Packet + Send + Sync)) {
        let any = packet.as_any();
        let reports = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            self.receiver_reports_received += 1;
            &rr.reports
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            self.sender_reports_received += 1;
            &sr.reports
        } else {
            return;
        };
        if let Some(block) = reports.first() {
            self.remote_packets_lost = Some(i64::from(block.total_lost));
            self.remote_fraction_lost = Some(f64::from(block.fraction_lost) / 256.0);
            self.remote_jitter_ms = Some(f64::from(block.jitter) / f64::from(SAMPLE_RATE) * 1000.0);
        }
    }
}
