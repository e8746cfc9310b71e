//! Video content of a call, sans-IO: the synthetic camera (a moving test pattern that carries
//! its pattern id and a frame counter in big black/white luma blocks, which survive lossy
//! coding), reading that back from a decoded picture, VP8 frame assembly from RTP packets (by
//! timestamp, sequence and marker, through webrtc-rs's RFC 7741 depacketizer), the receive
//! rules (decode only from a keyframe on, ask for a keyframe — PLI — after a loss or a
//! decoding failure, paced), and the receive figures: frames, keyframes, resolution, frame
//! rate, bitrate, freezes and the counter's continuity. The codec itself is `crate::vpx`.
//!
//! Counter encoding: the picture is a grid of 20×15 blocks (16×16 pixels at 320×240). The
//! first 64 blocks, row by row, are bits: 32 data bits (counter in bits 0–23, pattern id in
//! 24–31) then the same 32 bits inverted, as a check. A block is white (luma 235) for 1,
//! black (16) for 0, and is read from the mean luma of its inner half. A picture whose check
//! does not hold is `unreadable`; a dark flat picture is `black` (camera off).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp::packetizer::Depacketizer;

/// Picture size the engine sends.
pub const WIDTH: u32 = 320;
pub const HEIGHT: u32 = 240;
/// Frames a second the engine sends.
pub const FPS: u32 = 15;
/// Target bitrate of the encoder, kbit/s.
pub const BITRATE_KBPS: u32 = 300;
/// A gap between decoded frames longer than this many frame intervals is a freeze.
pub const FREEZE_INTERVALS: u32 = 3;
/// Least time between two keyframe requests (PLI) for the same trouble.
pub const PLI_INTERVAL: Duration = Duration::from_millis(300);

const GRID_COLS: u32 = 20;
const GRID_ROWS: u32 = 15;
const BITS: u32 = 64;
const WHITE: u8 = 235;
const BLACK: u8 = 16;

/// Bytes of an I420 picture of `width`×`height`.
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

/// A synthetic camera: pattern 0 (a vertical bar moving right over a horizontal ramp, grey)
/// or pattern 1 (a horizontal bar moving down over a vertical ramp, tinted), each carrying
/// its id and a frame counter in the block code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPattern {
    pub pattern_id: u8,
}

impl TestPattern {
    pub fn new(pattern_id: u8) -> Self {
        Self { pattern_id }
    }

    /// The I420 picture (`WIDTH`×`HEIGHT`) for frame `counter` (24 bits are carried).
    pub fn picture(&self, counter: u32) -> Vec<u8> {
        let (w, h) = (WIDTH as usize, HEIGHT as usize);
        let mut picture = vec![128u8; i420_len(WIDTH, HEIGHT)];
        let (luma, chroma) = picture.split_at_mut(w * h);
        let code_rows = (BITS.div_ceil(GRID_COLS) * (HEIGHT / GRID_ROWS)) as usize;
        // Row-wise fills: cheap even in debug builds on a busy machine.
        if self.pattern_id.is_multiple_of(2) {
            let bar = (counter as usize * 8) % w;
            let mut row: Vec<u8> = (0..w).map(|x| (40 + x * 120 / w) as u8).collect();
            row[bar..(bar + 16).min(w)].fill(WHITE);
            for y in code_rows..h {
                luma[y * w..(y + 1) * w].copy_from_slice(&row);
            }
        } else {
            let span = h - code_rows - 16;
            let bar = code_rows + (counter as usize * 4) % span;
            for y in code_rows..h {
                let value = if y >= bar && y < bar + 16 {
                    BLACK
                } else {
                    (90 + (y - code_rows) * 120 / (h - code_rows)) as u8
                };
                luma[y * w..(y + 1) * w].fill(value);
            }
        }
        let data = (counter & 0x00ff_ffff) | (u32::from(self.pattern_id) << 24);
        let code = u64::from(data) | (u64::from(!data) << 32);
        let (bw, bh) = ((WIDTH / GRID_COLS) as usize, (HEIGHT / GRID_ROWS) as usize);
        for bit in 0..BITS as usize {
            let value = if code >> bit & 1 == 1 { WHITE } else { BLACK };
            let (bx, by) = (bit % GRID_COLS as usize, bit / GRID_COLS as usize);
            for y in by * bh..(by + 1) * bh {
                luma[y * w + bx * bw..y * w + (bx + 1) * bw].fill(value);
            }
        }
        if self.pattern_id % 2 == 1 {
            let (u, v) = chroma.split_at_mut(chroma.len() / 2);
            u.fill(100);
            v.fill(170);
        }
        picture
    }
}

/// A black picture (camera off, as a browser sends for a disabled track).
pub fn black_picture() -> Vec<u8> {
    let mut picture = vec![128u8; i420_len(WIDTH, HEIGHT)];
    picture[..(WIDTH * HEIGHT) as usize].fill(BLACK);
    picture
}

/// What a decoded picture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FrameContent {
    /// A test pattern with its id and counter.
    Pattern { pattern_id: u8, counter: u32 },
    /// A dark, flat picture.
    Black,
    /// Neither (the check of the block code failed).
    Unreadable,
}

/// Reads a decoded luma plane (`width` bytes a row).
pub fn read_picture(luma: &[u8], width: u32, height: u32) -> FrameContent {
    let (w, h) = (width as usize, height as usize);
    if w < GRID_COLS as usize * 4 || h < GRID_ROWS as usize * 4 || luma.len() < w * h {
        return FrameContent::Unreadable;
    }
    let (bw, bh) = (w / GRID_COLS as usize, h / GRID_ROWS as usize);
    let block_mean = |bx: usize, by: usize| {
        let (x0, y0) = (bx * bw + bw / 4, by * bh + bh / 4);
        let (x1, y1) = (x0 + bw / 2, y0 + bh / 2);
        let mut sum = 0u64;
        for y in y0..y1 {
            sum += luma[y * w + x0..y * w + x1]
                .iter()
                .map(|&v| u64::from(v))
                .sum::<u64>();
        }
        sum / ((x1 - x0) * (y1 - y0)) as u64
    };
    let mut code = 0u64;
    let mut clear = true;
    for bit in 0..BITS as usize {
        let mean = block_mean(bit % GRID_COLS as usize, bit / GRID_COLS as usize);
        if mean > 176 {
            code |= 1 << bit;
        } else if mean >= 80 {
            clear = false;
        }
    }
    let data = code as u32;
    if clear && (code >> 32) as u32 == !data {
        return FrameContent::Pattern {
            pattern_id: (data >> 24) as u8,
            counter: data & 0x00ff_ffff,
        };
    }
    let (mut min, mut max, mut sum) = (u8::MAX, 0u8, 0u64);
    for &v in luma[..w * h].iter().step_by(7) {
        min = min.min(v);
        max = max.max(v);
        sum += u64::from(v);
    }
    let mean = sum / (w * h).div_ceil(7) as u64;
    if mean < 40 && max.saturating_sub(min) < 40 {
        FrameContent::Black
    } else {
        FrameContent::Unreadable
    }
}

/// Whether a whole VP8 frame is a keyframe (RFC 6386 §9.1: the frame tag's P bit is 0).
pub fn is_vp8_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 1 == 0)
}

/// The largest picture the receiver decodes (a peer's keyframe may claim up to 16383×16383,
/// which would make the decoder allocate about 400 MB).
pub const MAX_PICTURE_PIXELS: u32 = 1920 * 1088;

/// The picture size a keyframe declares (RFC 6386 §9.1: start code 9d 01 2a after the 3-byte
/// frame tag, then 14-bit width and height), `None` for a delta frame or a malformed one.
pub fn keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if !is_vp8_keyframe(frame) || frame.len() < 10 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((width, height))
}

/// Whether a frame may go to the decoder: a delta frame, or a keyframe of a sane size
/// (at most [`MAX_PICTURE_PIXELS`], not empty).
pub fn decodable_size(frame: &[u8]) -> bool {
    if !is_vp8_keyframe(frame) {
        return true;
    }
    keyframe_size(frame).is_some_and(|(w, h)| w > 0 && h > 0 && w * h <= MAX_PICTURE_PIXELS)
}

/// One RTP packet of the video stream, as the assembler needs it.
#[derive(Debug, Clone, Copy)]
pub struct VideoPacket<'a> {
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// The RTP payload (VP8 payload descriptor first).
    pub payload: &'a [u8],
}

/// What the assembler hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembly {
    /// Every packet of a frame arrived: the whole VP8 frame.
    Frame {
        timestamp: u32,
        data: Vec<u8>,
        keyframe: bool,
    },
    /// A frame that cannot be completed (a packet is missing: a later frame started, or it
    /// grew past the packet limit).
    Lost { timestamp: u32 },
    /// Packets missing between the last frame and the next one: whole frames were lost
    /// (reported before that next frame).
    Gap { packets: u16 },
}

#[derive(Debug)]
struct Partial {
    timestamp: u32,
    first_sequence: u16,
    /// Packets by sequence offset from the first one seen: (starts the frame, VP8 bytes).
    packets: BTreeMap<i32, (bool, Bytes)>,
    end: Option<i32>,
}

/// Puts VP8 frames together from RTP packets: packets of one frame share a timestamp; the
/// frame's first packet has S=1 and partition 0, its last the marker bit, and the sequence
/// numbers between must all be there. Packets may arrive out of order within a frame; a
/// packet of a frame already finished or given up is late and dropped.
#[derive(Debug, Default)]
pub struct FrameAssembler {
    partial: Option<Partial>,
    last_finished: Option<u32>,
    /// The last sequence number of the last frame finished (complete or given up).
    last_sequence: Option<u16>,
    /// Packets whose VP8 payload descriptor could not be read.
    pub malformed: u64,
    /// Packets of frames already finished or given up.
    pub late: u64,
}

impl FrameAssembler {
    /// Most packets one frame may have (a 320×240 frame needs a few).
    pub const MAX_PACKETS: usize = 512;

    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one packet; returns the frames it finished or gave up.
    pub fn push(&mut self, packet: VideoPacket<'_>) -> Vec<Assembly> {
        let mut out = Vec::new();
        let mut depacketizer = Vp8Packet::default();
        let Ok(vp8) = depacketizer.depacketize(&Bytes::copy_from_slice(packet.payload)) else {
            self.malformed += 1;
            return out;
        };
        let starts = depacketizer.s == 1 && depacketizer.pid == 0;
        let newer = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
        if self
            .last_finished
            .is_some_and(|done| !newer(packet.timestamp, done))
        {
            self.late += 1;
            return out;
        }
        if let Some(partial) = &self.partial {
            if partial.timestamp != packet.timestamp {
                if newer(packet.timestamp, partial.timestamp) {
                    out.push(Assembly::Lost {
                        timestamp: partial.timestamp,
                    });
                    self.last_finished = Some(partial.timestamp);
                    // What came after the lost frame's last packet seen is unknown: the next
                    // frame's start is not checked against it.
                    self.last_sequence = None;
                    self.partial = None;
                } else {
                    self.late += 1;
                    return out;
                }
            }
        }
        let partial = self.partial.get_or_insert_with(|| Partial {
            timestamp: packet.timestamp,
            first_sequence: packet.sequence,
            packets: BTreeMap::new(),
            end: None,
        });
        let offset = i32::from(packet.sequence.wrapping_sub(partial.first_sequence) as i16);
        partial.packets.insert(offset, (starts, vp8));
        if packet.marker {
            partial.end = Some(offset);
        }
        if partial.packets.len() > Self::MAX_PACKETS {
            out.push(Assembly::Lost {
                timestamp: partial.timestamp,
            });
            self.last_finished = Some(partial.timestamp);
            self.last_sequence = None;
            self.partial = None;
            return out;
        }
        if let Some(end) = partial.end {
            let (&first, &(first_starts, _)) =
                partial.packets.iter().next().expect("a packet was added");
            let complete = first_starts
                && partial.packets.keys().next_back() == Some(&end)
                && (end - first + 1) as usize == partial.packets.len();
            if complete {
                let first_sequence = partial.first_sequence.wrapping_add(first as u16);
                if let Some(last) = self.last_sequence {
                    let missing = first_sequence.wrapping_sub(last).wrapping_sub(1);
                    if missing != 0 && missing < 0x8000 {
                        out.push(Assembly::Gap { packets: missing });
                    }
                }
                self.last_sequence = Some(partial.first_sequence.wrapping_add(end as u16));
                let data: Vec<u8> = partial
                    .packets
                    .values()
                    .flat_map(|(_, bytes)| bytes.iter().copied())
                    .collect();
                out.push(Assembly::Frame {
                    timestamp: partial.timestamp,
                    keyframe: is_vp8_keyframe(&data),
                    data,
                });
                self.last_finished = Some(partial.timestamp);
                self.partial = None;
            }
        }
        out
    }
}

/// A stretch of decoded frames that showed the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentSpan {
    /// `pattern N`, `black` or `unreadable`.
    pub content: String,
    /// First and last frame of the stretch, ms since the call's media started here.
    pub from_ms: f64,
    pub to_ms: f64,
    pub frames: u64,
}

/// What this side received and decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoReceiveReport {
    /// Whole frames assembled from RTP.
    pub frames_received: u64,
    /// Frames given up (a packet missing).
    pub frames_lost: u64,
    pub frames_decoded: u64,
    pub keyframes_received: u64,
    /// Frames not decoded because a keyframe was awaited (after a loss or at the start).
    pub frames_skipped: u64,
    pub decode_errors: u64,
    /// Keyframe requests (RTCP PLI) this side sent.
    pub pli_sent: u64,
    pub bytes_received: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Decoded frames a second, first to last decoded frame.
    pub frame_rate: Option<f64>,
    /// Received VP8 bitrate over the same stretch, kbit/s.
    pub bitrate_kbps: Option<f64>,
    /// When the first frame was decoded, ms since media started here.
    pub first_frame_ms: Option<f64>,
    /// Gaps between decoded frames longer than [`FREEZE_INTERVALS`] frame intervals.
    pub freezes: u64,
    pub longest_gap_ms: Option<f64>,
    /// Counters read from the pattern, and how they ran: each should be the last plus one.
    pub counters_read: u64,
    pub counters_missing: u64,
    pub counters_out_of_order: u64,
    pub first_counter: Option<u32>,
    pub last_counter: Option<u32>,
    pub black_frames: u64,
    pub unreadable_frames: u64,
    /// The pattern ids seen, in order of first appearance.
    pub patterns_seen: Vec<u8>,
    /// What was shown when.
    pub spans: Vec<ContentSpan>,
}

impl VideoReceiveReport {
    /// Frames were decoded, counters read, and each counter followed the one before.
    pub fn counter_continuous(&self) -> bool {
        self.counters_read > 0 && self.counters_missing == 0 && self.counters_out_of_order == 0
    }
}

/// What this side encoded and sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoSendReport {
    pub frames_sent: u64,
    pub keyframes_sent: u64,
    pub bytes_sent: u64,
    /// Frames the encoder dropped (rate control).
    pub frames_dropped: u64,
    /// Black frames sent while the camera was off.
    pub black_frames_sent: u64,
    /// Keyframe requests from the peer (RTCP PLI and FIR) and the keyframes they caused.
    pub pli_received: u64,
    pub fir_received: u64,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub target_kbps: u32,
    /// The pattern being sent (the camera).
    pub pattern_id: u8,
}

/// The video of a call, as this side saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoReport {
    pub sent: VideoSendReport,
    pub received: VideoReceiveReport,
}

impl VideoReport {
    /// Frames sent, and frames received and decoded showing a picture: this tool's
    /// pattern (counters read) or another source's, such as a browser's camera, whose
    /// frames read as `unreadable` (neither the pattern nor black). A peer that sends
    /// only black frames (its camera off all along), or nothing decodable, is not video.
    /// The demo, where both sides are call-probe, also wants the counter continuous.
    pub fn both_ways(&self) -> bool {
        let received = &self.received;
        self.sent.frames_sent > 0
            && received.frames_decoded > 0
            && (received.counters_read > 0 || received.unreadable_frames > 0)
    }
}

/// What to do with an assembled frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameDecision {
    /// Hand it to the decoder.
    pub decode: bool,
    /// Send a PLI now.
    pub send_pli: bool,
}

/// The receive rules and figures of one video stream (sans-IO: every call takes `now`).
#[derive(Debug)]
pub struct VideoReceiver {
    origin: Instant,
    freeze_gap: Duration,
    waiting_for_keyframe: bool,
    last_pli: Option<Instant>,
    first_decoded: Option<Instant>,
    last_decoded: Option<Instant>,
    bytes_at_first_decoded: u64,
    bytes_decoded_stretch: u64,
    last_counter: Option<u32>,
    report: VideoReceiveReport,
}

impl VideoReceiver {
    /// Times are measured from `origin`; a freeze is a gap over [`FREEZE_INTERVALS`] frames
    /// at `expected_fps`.
    pub fn new(origin: Instant, expected_fps: u32) -> Self {
        Self {
            origin,
            freeze_gap: Duration::from_secs(1) * FREEZE_INTERVALS / expected_fps.max(1),
            waiting_for_keyframe: true,
            last_pli: None,
            first_decoded: None,
            last_decoded: None,
            bytes_at_first_decoded: 0,
            bytes_decoded_stretch: 0,
            last_counter: None,
            report: VideoReceiveReport::default(),
        }
    }

    fn pli(&mut self, now: Instant) -> bool {
        let due = self
            .last_pli
            .is_none_or(|last| now.saturating_duration_since(last) >= PLI_INTERVAL);
        if due {
            self.last_pli = Some(now);
            self.report.pli_sent += 1;
        }
        due
    }

    /// A whole frame arrived: decode it unless a keyframe is awaited and this is not one.
    pub fn frame_arrived(&mut self, now: Instant, keyframe: bool, bytes: usize) -> FrameDecision {
        self.report.frames_received += 1;
        self.report.bytes_received += bytes as u64;
        if keyframe {
            self.report.keyframes_received += 1;
            self.waiting_for_keyframe = false;
        }
        if self.waiting_for_keyframe {
            self.report.frames_skipped += 1;
            return FrameDecision {
                decode: false,
                send_pli: self.pli(now),
            };
        }
        FrameDecision {
            decode: true,
            send_pli: false,
        }
    }

    /// A frame was lost: what follows predicts from it, so wait for a keyframe. Returns
    /// whether to send a PLI now.
    pub fn frame_lost(&mut self, now: Instant) -> bool {
        self.report.frames_lost += 1;
        self.waiting_for_keyframe = true;
        self.pli(now)
    }

    /// The decoder refused a frame. Returns whether to send a PLI now.
    pub fn decode_failed(&mut self, now: Instant) -> bool {
        self.report.decode_errors += 1;
        self.waiting_for_keyframe = true;
        self.pli(now)
    }

    /// A picture was decoded from a frame of `bytes` bytes.
    pub fn decoded(
        &mut self,
        now: Instant,
        width: u32,
        height: u32,
        bytes: usize,
        content: FrameContent,
    ) {
        let r = &mut self.report;
        r.frames_decoded += 1;
        r.width = Some(width);
        r.height = Some(height);
        let at_ms = now.saturating_duration_since(self.origin).as_secs_f64() * 1000.0;
        match self.first_decoded {
            None => {
                self.first_decoded = Some(now);
                r.first_frame_ms = Some(at_ms);
                self.bytes_at_first_decoded = bytes as u64;
            }
            Some(first) => {
                self.bytes_decoded_stretch += bytes as u64;
                let span = now.saturating_duration_since(first).as_secs_f64();
                if span > 0.0 {
                    r.frame_rate = Some((r.frames_decoded - 1) as f64 / span);
                    r.bitrate_kbps = Some(self.bytes_decoded_stretch as f64 * 8.0 / span / 1000.0);
                }
            }
        }
        if let Some(last) = self.last_decoded {
            let gap = now.saturating_duration_since(last);
            let gap_ms = gap.as_secs_f64() * 1000.0;
            if r.longest_gap_ms.is_none_or(|g| gap_ms > g) {
                r.longest_gap_ms = Some(gap_ms);
            }
            if gap > self.freeze_gap {
                r.freezes += 1;
            }
        }
        self.last_decoded = Some(now);
        let label = match content {
            FrameContent::Pattern {
                pattern_id,
                counter,
            } => {
                r.counters_read += 1;
                r.first_counter.get_or_insert(counter);
                match self.last_counter {
                    Some(last) if counter == last.wrapping_add(1) & 0x00ff_ffff => {}
                    Some(last) if counter > last => {
                        r.counters_missing += u64::from(counter - last - 1);
                    }
                    Some(_) => r.counters_out_of_order += 1,
                    None => {}
                }
                if self.last_counter.is_none_or(|last| counter > last) {
                    self.last_counter = Some(counter);
                    r.last_counter = Some(counter);
                }
                if !r.patterns_seen.contains(&pattern_id) {
                    r.patterns_seen.push(pattern_id);
                }
                format!("pattern {pattern_id}")
            }
            FrameContent::Black => {
                r.black_frames += 1;
                "black".to_string()
            }
            FrameContent::Unreadable => {
                r.unreadable_frames += 1;
                "unreadable".to_string()
            }
        };
        match r.spans.last_mut() {
            Some(span) if span.content == label => {
                span.to_ms = at_ms;
                span.frames += 1;
            }
            _ => r.spans.push(ContentSpan {
                content: label,
                from_ms: at_ms,
                to_ms: at_ms,
                frames: 1,
            }),
        }
    }

    pub fn report(&self) -> &VideoReceiveReport {
        &self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::rtp::codecs::vp8::Vp8Payloader;
    use webrtc::rtp::packetizer::Payloader;

    fn luma(picture: &[u8]) -> &[u8] {
        &picture[..(WIDTH * HEIGHT) as usize]
    }

    #[test]
    fn video_both_ways_wants_a_picture_each_way_not_only_black() {
        let report =
            |sent: u64, decoded: u64, counters: u64, unreadable: u64, black: u64| VideoReport {
                sent: VideoSendReport {
                    frames_sent: sent,
                    ..Default::default()
                },
                received: VideoReceiveReport {
                    frames_decoded: decoded,
                    counters_read: counters,
                    unreadable_frames: unreadable,
                    black_frames: black,
                    ..Default::default()
                },
            };
        assert!(report(30, 30, 30, 0, 0).both_ways(), "the pattern");
        assert!(report(30, 30, 0, 30, 0).both_ways(), "a camera's picture");
        assert!(!report(30, 30, 0, 0, 30).both_ways(), "black frames only");
        assert!(!report(30, 0, 0, 0, 0).both_ways(), "nothing decoded");
        assert!(!report(0, 30, 30, 0, 0).both_ways(), "nothing sent");
    }

    #[test]
    fn pattern_reads_back_and_survives_noise() {
        for pattern_id in [0u8, 1] {
            let source = TestPattern::new(pattern_id);
            for counter in [0u32, 1, 77, 0x00ab_cdef] {
                let mut picture = source.picture(counter);
                assert_eq!(picture.len(), i420_len(WIDTH, HEIGHT));
                // Lossy coding: every pixel off by up to ±30.
                for (i, v) in picture.iter_mut().enumerate() {
                    *v = v.saturating_add((i * 7 % 31) as u8).saturating_sub(15);
                }
                assert_eq!(
                    read_picture(luma(&picture), WIDTH, HEIGHT),
                    FrameContent::Pattern {
                        pattern_id,
                        counter
                    }
                );
            }
        }
        assert_eq!(
            read_picture(luma(&black_picture()), WIDTH, HEIGHT),
            FrameContent::Black
        );
        // A flipped bit breaks the check: unreadable, never a wrong counter.
        let mut picture = TestPattern::new(0).picture(5);
        for y in 0..16 {
            // Bit 1 of 5 is 0 (block 1 black): paint it white.
            picture[y * WIDTH as usize + 16..y * WIDTH as usize + 32].fill(WHITE);
        }
        assert_eq!(
            read_picture(luma(&picture), WIDTH, HEIGHT),
            FrameContent::Unreadable
        );
        let grey = vec![128u8; (WIDTH * HEIGHT) as usize];
        assert_eq!(read_picture(&grey, WIDTH, HEIGHT), FrameContent::Unreadable);
        assert_eq!(
            read_picture(&grey[..10], WIDTH, HEIGHT),
            FrameContent::Unreadable
        );
        // A bigger picture (a peer that scales): the grid scales with it.
        let (w, h) = (640usize, 480usize);
        let small = TestPattern::new(1).picture(9);
        let mut big = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                big[y * w + x] = small[(y / 2) * WIDTH as usize + x / 2];
            }
        }
        assert_eq!(
            read_picture(&big, 640, 480),
            FrameContent::Pattern {
                pattern_id: 1,
                counter: 9
            }
        );
    }

    /// RTP packets of `frame` as webrtc-rs's payloader cuts them (small MTU: several packets).
    fn packets(frame: &[u8], first_seq: u16, timestamp: u32) -> Vec<(u16, u32, bool, Bytes)> {
        let mut payloader = Vp8Payloader::default();
        let payloads = payloader
            .payload(40, &Bytes::copy_from_slice(frame))
            .unwrap();
        let n = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| (first_seq.wrapping_add(i as u16), timestamp, i + 1 == n, p))
            .collect()
    }

    fn push(assembler: &mut FrameAssembler, p: &(u16, u32, bool, Bytes)) -> Vec<Assembly> {
        assembler.push(VideoPacket {
            sequence: p.0,
            timestamp: p.1,
            marker: p.2,
            payload: &p.3,
        })
    }

    #[test]
    fn assembler_puts_frames_together_and_reports_losses() {
        let key: Vec<u8> = (0..200u8).map(|i| i & 0xfe).collect(); // P bit 0: keyframe
        let delta: Vec<u8> = (0..150u8).map(|i| i | 1).collect();
        let mut assembler = FrameAssembler::new();
        // A keyframe across a sequence wrap, packets reordered within the frame.
        let mut first = packets(&key, 65_533, 1_000);
        assert!(first.len() > 3);
        first.swap(1, 2);
        let mut out = Vec::new();
        for p in &first {
            out.extend(push(&mut assembler, p));
        }
        assert_eq!(
            out,
            vec![Assembly::Frame {
                timestamp: 1_000,
                data: key.clone(),
                keyframe: true
            }]
        );
        // A frame missing its middle packet is lost when the next frame starts.
        let second = packets(&delta, first.last().unwrap().0.wrapping_add(1), 7_000);
        for (i, p) in second.iter().enumerate() {
            if i != 1 {
                assert!(push(&mut assembler, p).is_empty());
            }
        }
        let third = packets(&delta, second.last().unwrap().0.wrapping_add(1), 13_000);
        let mut out = Vec::new();
        for p in &third {
            out.extend(push(&mut assembler, p));
        }
        assert_eq!(out[0], Assembly::Lost { timestamp: 7_000 });
        assert!(
            matches!(&out[1], Assembly::Frame { timestamp: 13_000, keyframe: false, data } if *data == delta)
        );
        // The missing packet arriving late, and a frame whose first packet never came.
        assert!(push(&mut assembler, &second[1]).is_empty());
        assert_eq!(assembler.late, 1);
        let fourth = packets(&delta, third.last().unwrap().0.wrapping_add(1), 19_000);
        for p in &fourth[1..] {
            assert!(push(&mut assembler, p).is_empty());
        }
        let fifth = packets(&key, fourth.last().unwrap().0.wrapping_add(1), 25_000);
        let out: Vec<_> = fifth.iter().flat_map(|p| push(&mut assembler, p)).collect();
        assert_eq!(out[0], Assembly::Lost { timestamp: 19_000 });
        assert!(matches!(&out[1], Assembly::Frame { keyframe: true, .. }));
        // A whole frame lost between two complete ones: a gap of its packets, then the frame.
        let sixth = packets(&delta, fifth.last().unwrap().0.wrapping_add(1), 31_000);
        let seventh = packets(&delta, sixth.last().unwrap().0.wrapping_add(1), 37_000);
        let out: Vec<_> = seventh
            .iter()
            .flat_map(|p| push(&mut assembler, p))
            .collect();
        assert_eq!(
            out[0],
            Assembly::Gap {
                packets: sixth.len() as u16
            }
        );
        assert!(matches!(
            &out[1],
            Assembly::Frame {
                timestamp: 37_000,
                ..
            }
        ));
        assert_eq!(out.len(), 2);
        // Junk payloads are counted, never a panic.
        for junk in [&[][..], &[0x80][..], &[0xff, 0xff][..]] {
            assert!(assembler
                .push(VideoPacket {
                    sequence: 1,
                    timestamp: 40_000,
                    marker: true,
                    payload: junk
                })
                .iter()
                .all(|a| !matches!(a, Assembly::Frame { .. })));
        }
        assert!(assembler.malformed > 0);
    }

    /// A peer's keyframe that claims a huge picture never reaches the decoder.
    #[test]
    fn huge_or_malformed_keyframes_are_not_decoded() {
        let keyframe = |w: u16, h: u16| {
            let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
            f.extend_from_slice(&w.to_le_bytes());
            f.extend_from_slice(&h.to_le_bytes());
            f.extend_from_slice(&[0; 20]);
            f
        };
        assert_eq!(keyframe_size(&keyframe(320, 240)), Some((320, 240)));
        assert!(decodable_size(&keyframe(320, 240)));
        assert!(decodable_size(&keyframe(1920, 1080)));
        assert!(!decodable_size(&keyframe(16_383, 16_383)));
        assert!(!decodable_size(&keyframe(4_096, 2_160)));
        assert!(!decodable_size(&keyframe(0, 240)));
        // Scaling bits (the top two) are not part of the size.
        assert_eq!(
            keyframe_size(&keyframe(0xc000 | 320, 240)),
            Some((320, 240))
        );
        let mut bad_start = keyframe(320, 240);
        bad_start[4] = 0;
        assert!(!decodable_size(&bad_start));
        assert!(!decodable_size(&[0x10, 0x02]));
        assert!(decodable_size(&[0x11, 0x02, 0x00]), "a delta frame");
    }

    #[test]
    fn receiver_waits_for_keyframes_paces_pli_and_counts_freezes_and_counters() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rx = VideoReceiver::new(t0, 15);
        let pattern = |counter| FrameContent::Pattern {
            pattern_id: 0,
            counter,
        };
        // A delta frame first: skipped, PLI; another one 100 ms later: no second PLI yet.
        assert_eq!(
            rx.frame_arrived(ms(0), false, 100),
            FrameDecision {
                decode: false,
                send_pli: true
            }
        );
        assert!(!rx.frame_arrived(ms(100), false, 100).send_pli);
        assert!(rx.frame_arrived(ms(400), false, 100).send_pli);
        // The keyframe: decoded from now on.
        assert!(rx.frame_arrived(ms(450), true, 1_000).decode);
        rx.decoded(ms(450), 320, 240, 1_000, pattern(10));
        for (i, at) in [(11u32, 517u64), (12, 583), (13, 650)] {
            assert!(rx.frame_arrived(ms(at), false, 200).decode);
            rx.decoded(ms(at), 320, 240, 200, pattern(i));
        }
        assert!(rx.report().counter_continuous());
        // A loss: PLI, then frames are skipped until a keyframe; a 400 ms gap is a freeze,
        // and counters 14..=19 never arrived.
        assert!(rx.frame_lost(ms(700)));
        assert!(!rx.frame_arrived(ms(720), false, 200).decode);
        assert!(rx.frame_arrived(ms(1_050), true, 900).decode);
        rx.decoded(ms(1_050), 320, 240, 900, pattern(20));
        rx.decoded(ms(1_117), 320, 240, 900, FrameContent::Black);
        rx.decoded(ms(1_183), 320, 240, 900, pattern(21));
        rx.decoded(ms(1_250), 320, 240, 900, pattern(19));
        assert!(rx.decode_failed(ms(1_300)));
        let r = rx.report();
        assert_eq!(r.frames_decoded, 8);
        assert_eq!(r.frames_lost, 1);
        assert_eq!(r.keyframes_received, 2);
        assert_eq!(r.frames_skipped, 4);
        assert_eq!(r.pli_sent, 4);
        assert_eq!(r.freezes, 1);
        assert!((r.longest_gap_ms.unwrap() - 400.0).abs() < 1.0);
        assert_eq!(r.counters_read, 7);
        assert_eq!(r.counters_missing, 6);
        assert_eq!(r.counters_out_of_order, 1);
        assert_eq!((r.first_counter, r.last_counter), (Some(10), Some(21)));
        assert_eq!(r.black_frames, 1);
        assert!(!r.counter_continuous());
        assert_eq!(r.first_frame_ms, Some(450.0));
        let labels: Vec<_> = r
            .spans
            .iter()
            .map(|s| (s.content.as_str(), s.frames))
            .collect();
        assert_eq!(
            labels,
            vec![("pattern 0", 5), ("black", 1), ("pattern 0", 2)]
        );
        assert!((r.frame_rate.unwrap() - 7.0 / 0.8).abs() < 0.01);
    }
}
