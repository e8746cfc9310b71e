//! The video tasks of a call (cargo feature `video`): sending (the test pattern of the current
//! camera, or black frames with the camera off, VP8-encoded by libvpx and handed to webrtc-rs's
//! sample track, which packetises it per RFC 7741), keyframes on the peer's request (RTCP PLI
//! and FIR read from the video sender), and receiving (RTP packets assembled into frames,
//! decoded, the pattern read back; PLI sent when a keyframe is needed). The rules are
//! [`crate::video`]'s, sans-IO; this module only carries them out.

use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use webrtc::media::Sample;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_remote::TrackRemote;

use super::{lock, Internal, Shared};
use crate::video::{
    black_picture, decodable_size, read_picture, Assembly, FrameAssembler, TestPattern,
    VideoPacket, VideoReceiver, BITRATE_KBPS, FPS, HEIGHT, WIDTH,
};
use crate::vpx::{Vp8Decoder, Vp8Encoder};
use std::sync::Arc;

/// Sends video at [`FPS`] until the task is aborted: the current camera's pattern with the
/// running counter, or black while the camera is off; a keyframe when the peer asked.
pub(super) async fn send_video(track: Arc<TrackLocalStaticSample>, shared: Shared) {
    let mut encoder = match Vp8Encoder::new(WIDTH, HEIGHT, FPS, BITRATE_KBPS) {
        Ok(encoder) => encoder,
        Err(err) => {
            tracing::error!("no VP8 encoder: {err}");
            return;
        }
    };
    let interval = Duration::from_secs(1) / FPS;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut counter: u32 = 0;
    {
        let mut s = lock(&shared);
        s.video_send.width = WIDTH;
        s.video_send.height = HEIGHT;
        s.video_send.fps = FPS;
        s.video_send.target_kbps = BITRATE_KBPS;
    }
    loop {
        ticker.tick().await;
        let (camera_on, camera, keyframe) = {
            let mut s = lock(&shared);
            let keyframe = std::mem::take(&mut s.keyframe_wanted);
            (s.controls.camera_on, s.controls.camera, keyframe)
        };
        let picture = if camera_on {
            TestPattern::new(camera).picture(counter)
        } else {
            black_picture()
        };
        let frame = match encoder.encode(&picture, keyframe) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                lock(&shared).video_send.frames_dropped += 1;
                continue;
            }
            Err(err) => {
                tracing::error!("VP8 encoding failed: {err}");
                return;
            }
        };
        let bytes = frame.data.len() as u64;
        let sample = Sample {
            data: Bytes::from(frame.data),
            duration: interval,
            ..Default::default()
        };
        if let Err(err) = track.write_sample(&sample).await {
            tracing::debug!("video track closed: {err}");
            return;
        }
        let mut s = lock(&shared);
        let sent = &mut s.video_send;
        sent.frames_sent += 1;
        sent.bytes_sent += bytes;
        sent.keyframes_sent += u64::from(frame.keyframe);
        sent.pattern_id = camera;
        if camera_on {
            counter = counter.wrapping_add(1) & 0x00ff_ffff;
        } else {
            sent.black_frames_sent += 1;
        }
    }
}

/// Reads RTCP for the video sender: a PLI or FIR from the peer asks for a keyframe.
pub(super) async fn read_video_rtcp(sender: Arc<RTCRtpSender>, shared: Shared) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        for packet in &packets {
            let any = packet.as_any();
            let mut s = lock(&shared);
            if any.is::<PictureLossIndication>() {
                s.video_send.pli_received += 1;
                s.keyframe_wanted = true;
            } else if any.is::<FullIntraRequest>() {
                s.video_send.fir_received += 1;
                s.keyframe_wanted = true;
            }
        }
    }
}

/// Reads the remote video track: frames assembled, decoded, the pattern read; a PLI goes out
/// when the receive rules ask for one.
pub(super) async fn receive_video(
    track: Arc<TrackRemote>,
    call_id: String,
    internal: mpsc::UnboundedSender<Internal>,
    shared: Shared,
    pc: Weak<RTCPeerConnection>,
) {
    let mut decoder = match Vp8Decoder::new() {
        Ok(decoder) => decoder,
        Err(err) => {
            tracing::error!("no VP8 decoder: {err}");
            return;
        }
    };
    let mut assembler = FrameAssembler::new();
    lock(&shared).video_receiver = Some(VideoReceiver::new(Instant::now(), FPS));
    let media_ssrc = track.ssrc();
    let mut first_frame = true;
    while let Ok((packet, _)) = track.read_rtp().await {
        let assembled = assembler.push(VideoPacket {
            sequence: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: &packet.payload,
        });
        for assembly in assembled {
            let now = Instant::now();
            let send_pli = match assembly {
                Assembly::Lost { .. } | Assembly::Gap { .. } => {
                    with_receiver(&shared, |rx| rx.frame_lost(now))
                }
                Assembly::Frame { data, keyframe, .. } => {
                    let decision =
                        with_receiver(&shared, |rx| rx.frame_arrived(now, keyframe, data.len()));
                    if decision.decode && !decodable_size(&data) {
                        tracing::debug!("a keyframe of a refused size: not decoded");
                        with_receiver(&shared, |rx| rx.decode_failed(now))
                    } else if decision.decode {
                        match decoder.decode(&data) {
                            Ok(Some(picture)) => {
                                let content =
                                    read_picture(&picture.luma, picture.width, picture.height);
                                with_receiver(&shared, |rx| {
                                    rx.decoded(
                                        now,
                                        picture.width,
                                        picture.height,
                                        data.len(),
                                        content,
                                    )
                                });
                                if first_frame {
                                    first_frame = false;
                                    let _ =
                                        internal.send(Internal::FirstVideoFrame(call_id.clone()));
                                }
                                false
                            }
                            Ok(None) => false,
                            Err(err) => {
                                tracing::debug!("undecodable VP8 frame: {err}");
                                with_receiver(&shared, |rx| rx.decode_failed(now))
                            }
                        }
                    } else {
                        decision.send_pli
                    }
                }
            };
            if send_pli {
                let Some(pc) = pc.upgrade() else { return };
                let pli = PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                };
                if let Err(err) = pc.write_rtcp(&[Box::new(pli)]).await {
                    tracing::debug!("could not send a PLI: {err}");
                }
            }
        }
    }
}

fn with_receiver<T: Default>(shared: &Shared, f: impl FnOnce(&mut VideoReceiver) -> T) -> T {
    lock(shared)
        .video_receiver
        .as_mut()
        .map(f)
        .unwrap_or_default()
}
