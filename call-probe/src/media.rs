//! Audio content of a call: the test tone (a sine), Opus encoding and decoding (the pure-Rust
//! `opus-rs` port of libopus 1.6, so building needs no system library), tone detection with a Goertzel filter bank, and the receive-side RTP
//! figures (interarrival jitter and loss, RFC 3550 §6.4.1 and appendix A.3) that the engine
//! computes itself because webrtc-rs's inbound-rtp stats carry neither.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// Opus clock and PCM sample rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz, mono.
pub const FRAME_SAMPLES: usize = 960;
/// Frame duration.
pub const FRAME_MS: u64 = 20;
/// Largest Opus packet we produce (RFC 6716 allows 1275 bytes per frame).
const MAX_OPUS_PACKET: usize = 1_500;

/// Errors from the codec.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The codec refused a frame or a packet (its own message).
    #[error("opus: {0}")]
    Opus(&'static str),
}

/// A continuous sine at a fixed frequency, cut into 20 ms frames.
#[derive(Debug, Clone)]
pub struct ToneGenerator {
    frequency_hz: f64,
    amplitude: f64,
    phase: f64,
}

impl ToneGenerator {
    /// A tone of `frequency_hz` at `level_dbfs` (0 is full scale; -12 is a comfortable default).
    pub fn new(frequency_hz: f64, level_dbfs: f64) -> Self {
        Self {
            frequency_hz,
            amplitude: 10f64.powf(level_dbfs / 20.0) * f64::from(i16::MAX),
            phase: 0.0,
        }
    }

    /// The next 20 ms of PCM, continuing the phase of the previous frame.
    pub fn next_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        let step = 2.0 * PI * self.frequency_hz / f64::from(SAMPLE_RATE);
        for sample in frame.iter_mut() {
            *sample = (self.amplitude * self.phase.sin()).round() as i16;
            self.phase = (self.phase + step) % (2.0 * PI);
        }
        frame
    }
}

/// Samples in the longest Opus packet (120 ms at 48 kHz, mono).
const MAX_PACKET_SAMPLES: usize = FRAME_SAMPLES * 6;

/// Opus encoder for 48 kHz mono VoIP frames.
pub struct OpusEncoder {
    inner: Box<opus_rs::OpusEncoder>,
    buffer: Vec<u8>,
}

impl OpusEncoder {
    pub fn new() -> Result<Self, MediaError> {
        let inner = opus_rs::OpusEncoder::new(SAMPLE_RATE as i32, 1, opus_rs::Application::Voip)
            .map_err(MediaError::Opus)?;
        Ok(Self {
            inner: Box::new(inner),
            buffer: vec![0; MAX_OPUS_PACKET],
        })
    }

    /// Encodes one 20 ms frame into an Opus packet.
    pub fn encode(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, MediaError> {
        let len = self
            .inner
            .encode_i16(frame, FRAME_SAMPLES, &mut self.buffer)
            .map_err(MediaError::Opus)?;
        Ok(self.buffer[..len].to_vec())
    }
}

/// Opus decoder for 48 kHz mono.
pub struct OpusDecoder {
    inner: Box<opus_rs::OpusDecoder>,
    decoded: Vec<f32>,
    buffer: Vec<i16>,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, MediaError> {
        let inner = opus_rs::OpusDecoder::new(SAMPLE_RATE as i32, 1).map_err(MediaError::Opus)?;
        Ok(Self {
            inner: Box::new(inner),
            decoded: vec![0.0; MAX_PACKET_SAMPLES],
            buffer: vec![0; MAX_PACKET_SAMPLES],
        })
    }

    /// Decodes one Opus packet into PCM samples (a malformed packet is an error, never a
    /// panic: packets come from the peer).
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], MediaError> {
        let samples = self
            .inner
            .decode(packet, MAX_PACKET_SAMPLES, &mut self.decoded)
            .map_err(MediaError::Opus)?;
        for (out, sample) in self.buffer.iter_mut().zip(&self.decoded[..samples]) {
            *out = (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        }
        Ok(&self.buffer[..samples])
    }
}

/// Power of `frequency_hz` in `samples` (Goertzel), normalised so a full-scale sine gives 1.
pub fn goertzel_power(samples: &[f64], frequency_hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let omega = 2.0 * PI * frequency_hz / f64::from(SAMPLE_RATE);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    (4.0 * power / (n * n)).max(0.0)
}

/// What the detector heard in one analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ToneReading {
    /// The strongest frequency, in Hz (to the scan step, refined around the peak).
    pub frequency_hz: f64,
    /// RMS level of the window in dBFS.
    pub level_dbfs: f64,
    /// Share of the window's power at that frequency (0..1): near 1 for a clean tone.
    pub purity: f64,
}

/// Finds the dominant frequency of incoming audio: a Goertzel bank over 100 ms windows
/// (10 Hz resolution), a coarse scan from 100 Hz to 4 kHz, then a 1 Hz refinement around
/// the peak. A tone counts as detected after [`ToneDetector::STABLE_WINDOWS`] consecutive
/// windows agree within 10 Hz with a purity of at least 0.5.
#[derive(Debug, Clone, Default)]
pub struct ToneDetector {
    window: Vec<f64>,
    last: Option<ToneReading>,
    agreeing: usize,
    detected: Option<ToneReading>,
    windows_analysed: u64,
}

impl ToneDetector {
    /// Window length: 100 ms.
    pub const WINDOW_SAMPLES: usize = 4_800;
    /// Consecutive agreeing windows before a tone counts as detected.
    pub const STABLE_WINDOWS: usize = 3;
    const LOW_HZ: f64 = 100.0;
    const HIGH_HZ: f64 = 4_000.0;
    const STEP_HZ: f64 = 10.0;

    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds decoded PCM. Returns a reading when this push made the tone count as detected
    /// (once), so the caller can announce it.
    pub fn push(&mut self, samples: &[i16]) -> Option<ToneReading> {
        let mut newly_detected = None;
        for &sample in samples {
            self.window.push(f64::from(sample) / f64::from(i16::MAX));
            if self.window.len() == Self::WINDOW_SAMPLES {
                let reading = analyse_window(&self.window);
                self.window.clear();
                self.windows_analysed += 1;
                if let Some(found) = self.accept(reading) {
                    newly_detected = Some(found);
                }
            }
        }
        newly_detected
    }

    fn accept(&mut self, reading: Option<ToneReading>) -> Option<ToneReading> {
        let Some(reading) = reading.filter(|r| r.purity >= 0.5) else {
            self.agreeing = 0;
            self.last = None;
            return None;
        };
        let agrees = self
            .last
            .is_some_and(|last| (last.frequency_hz - reading.frequency_hz).abs() <= 10.0);
        self.agreeing = if agrees { self.agreeing + 1 } else { 1 };
        self.last = Some(reading);
        if self.agreeing >= Self::STABLE_WINDOWS {
            let first = self.detected.is_none();
            self.detected = Some(reading);
            if first {
                return Some(reading);
            }
        }
        None
    }

    /// The latest stable reading, if a tone was detected.
    pub fn detected(&self) -> Option<ToneReading> {
        self.detected
    }

    /// How many 100 ms windows were analysed.
    pub fn windows_analysed(&self) -> u64 {
        self.windows_analysed
    }

    /// The last window's reading, when it held a clean tone (`None`: silence or noise).
    pub fn last_reading(&self) -> Option<ToneReading> {
        self.last
    }
}

/// A stretch of 100 ms windows in which the tone was heard, or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToneSpan {
    pub heard: bool,
    /// Start of the first and end of the last window, ms since audio started arriving.
    pub from_ms: f64,
    pub to_ms: f64,
}

/// When the tone was heard: each analysed window adds to the last span or starts a new one
/// (mute on the other side shows as a span with `heard: false`).
#[derive(Debug, Clone, Default)]
pub struct ToneTimeline {
    spans: Vec<ToneSpan>,
    windows: u64,
}

impl ToneTimeline {
    /// Most spans kept (a flapping tone must not grow the report without bound).
    pub const MAX_SPANS: usize = 64;

    /// Records the next window: `heard` when it held a clean tone.
    pub fn push(&mut self, heard: bool) {
        let window_ms = ToneDetector::WINDOW_SAMPLES as f64 * 1000.0 / f64::from(SAMPLE_RATE);
        let from_ms = self.windows as f64 * window_ms;
        self.windows += 1;
        let to_ms = from_ms + window_ms;
        let full = self.spans.len() >= Self::MAX_SPANS;
        match self.spans.last_mut() {
            Some(span) if span.heard == heard || full => span.to_ms = to_ms,
            _ => self.spans.push(ToneSpan {
                heard,
                from_ms,
                to_ms,
            }),
        }
    }

    pub fn spans(&self) -> &[ToneSpan] {
        &self.spans
    }
}

/// The dominant frequency of one window, or `None` for silence.
fn analyse_window(window: &[f64]) -> Option<ToneReading> {
    let energy: f64 = window.iter().map(|x| x * x).sum::<f64>() / window.len() as f64;
    if energy < 1e-8 {
        return None;
    }
    let level_dbfs = 10.0 * energy.log10();
    let mut best = (0.0, 0.0);
    let mut frequency = ToneDetector::LOW_HZ;
    while frequency <= ToneDetector::HIGH_HZ {
        let power = goertzel_power(window, frequency);
        if power > best.1 {
            best = (frequency, power);
        }
        frequency += ToneDetector::STEP_HZ;
    }
    let (coarse, _) = best;
    for offset in -9..=9 {
        let frequency = coarse + f64::from(offset);
        let power = goertzel_power(window, frequency);
        if power > best.1 {
            best = (frequency, power);
        }
    }
    // A sine of amplitude A has mean power A²/2 and Goertzel power A².
    let purity = (best.1 / 2.0 / energy).min(1.0);
    Some(ToneReading {
        frequency_hz: best.0,
        level_dbfs,
        purity,
    })
}

/// Receive-side RTP figures for one stream: packets, loss from sequence numbers, and RFC 3550
/// interarrival jitter from RTP timestamps against arrival times.
#[derive(Debug, Clone, Default)]
pub struct ReceiveStats {
    packets: u64,
    payload_bytes: u64,
    base_seq: Option<u32>,
    max_seq: u32,
    cycles: u32,
    jitter: f64,
    last_transit: Option<f64>,
}

impl ReceiveStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a packet with its sequence number, RTP timestamp (48 kHz clock), payload size
    /// and arrival time in seconds since any fixed origin.
    pub fn record(&mut self, sequence: u16, rtp_timestamp: u32, payload: usize, arrival_s: f64) {
        self.packets += 1;
        self.payload_bytes += payload as u64;
        let sequence = u32::from(sequence);
        match self.base_seq {
            None => {
                self.base_seq = Some(sequence);
                self.max_seq = sequence;
            }
            Some(_) => {
                let delta = sequence.wrapping_sub(self.max_seq) & 0xffff;
                if delta != 0 && delta < 0x8000 {
                    if sequence < self.max_seq {
                        self.cycles += 1;
                    }
                    self.max_seq = sequence;
                }
            }
        }
        let transit = arrival_s * f64::from(SAMPLE_RATE) - f64::from(rtp_timestamp);
        if let Some(last) = self.last_transit {
            let mut d = (transit - last).abs();
            // A timestamp wrap shows as a huge jump; ignore it.
            if d > f64::from(u32::MAX / 2) {
                d = 0.0;
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Packets expected from the sequence numbers seen minus packets received (never negative).
    pub fn packets_lost(&self) -> u64 {
        let Some(base) = self.base_seq else {
            return 0;
        };
        let extended_max = u64::from(self.cycles) * 65_536 + u64::from(self.max_seq);
        let expected = extended_max + 1 - u64::from(base);
        expected.saturating_sub(self.packets)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / f64::from(SAMPLE_RATE) * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets come from the peer: garbage, truncated and every-ToC packets give an error or
    /// samples, never a panic, and the decoder still decodes a good packet afterwards.
    #[test]
    fn hostile_packets_never_panic_the_decoder() {
        let mut encoder = OpusEncoder::new().unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let good = encoder
            .encode(&ToneGenerator::new(440.0, -12.0).next_frame())
            .unwrap();
        // A small xorshift: deterministic junk without a dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut refused = 0;
        for round in 0..4_000usize {
            let len = match round % 4 {
                0 => round % 8,
                1 => good.len(),
                _ => (next() % 1_400) as usize,
            };
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round < 256 && !packet.is_empty() {
                // Every ToC byte once, followed by junk.
                packet[0] = round as u8;
            }
            if round % 4 == 1 {
                // A good packet with bytes flipped.
                packet = good.clone();
                let at = (next() as usize) % packet.len();
                packet[at] ^= next() as u8 | 1;
            }
            if decoder.decode(&packet).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0, "some junk must be refused");
        let pcm = decoder.decode(&good).unwrap();
        assert_eq!(pcm.len(), FRAME_SAMPLES);
    }

    #[test]
    fn goertzel_finds_the_tone_through_opus() {
        for frequency in [440.0, 660.0, 1000.0] {
            let mut tone = ToneGenerator::new(frequency, -12.0);
            let mut encoder = OpusEncoder::new().unwrap();
            let mut decoder = OpusDecoder::new().unwrap();
            let mut detector = ToneDetector::new();
            let mut detected = None;
            for _ in 0..50 {
                let packet = encoder.encode(&tone.next_frame()).unwrap();
                assert!(!packet.is_empty() && packet.len() < 400);
                let pcm = decoder.decode(&packet).unwrap().to_vec();
                assert_eq!(pcm.len(), FRAME_SAMPLES);
                if let Some(reading) = detector.push(&pcm) {
                    detected = Some(reading);
                }
            }
            let reading = detected.expect("tone detected");
            assert!(
                (reading.frequency_hz - frequency).abs() <= 3.0,
                "{reading:?} for {frequency}"
            );
            // -12 dBFS peak is about -15 dBFS RMS.
            assert!((reading.level_dbfs + 15.0).abs() < 2.0, "{reading:?}");
            assert!(reading.purity > 0.8, "{reading:?}");
        }
    }

    #[test]
    fn tone_timeline_shows_a_muted_stretch() {
        let mut tone = ToneGenerator::new(440.0, -12.0);
        let mut detector = ToneDetector::new();
        let mut timeline = ToneTimeline::default();
        for frame in 0..75 {
            let pcm = if (25..50).contains(&frame) {
                [0i16; FRAME_SAMPLES]
            } else {
                tone.next_frame()
            };
            let before = detector.windows_analysed();
            detector.push(&pcm);
            if detector.windows_analysed() > before {
                timeline.push(detector.last_reading().is_some());
            }
        }
        let spans: Vec<_> = timeline
            .spans()
            .iter()
            .map(|s| (s.heard, s.from_ms.round() as u64, s.to_ms.round() as u64))
            .collect();
        assert_eq!(
            spans,
            vec![(true, 0, 500), (false, 500, 1_000), (true, 1_000, 1_500)]
        );
    }

    #[test]
    fn silence_and_noise_are_not_tones() {
        let mut detector = ToneDetector::new();
        assert_eq!(detector.push(&vec![0i16; 48_000]), None);
        // Deterministic white-ish noise (an LCG).
        let mut state: u32 = 12_345;
        let noise: Vec<i16> = (0..48_000)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 16) as i16) / 4
            })
            .collect();
        assert_eq!(detector.push(&noise), None);
        assert_eq!(detector.detected(), None);
        assert_eq!(detector.windows_analysed(), 20);
    }

    #[test]
    fn two_tones_give_the_stronger_with_low_purity() {
        let mut a = ToneGenerator::new(440.0, -12.0);
        let mut b = ToneGenerator::new(1_200.0, -14.0);
        let window: Vec<f64> = (0..5)
            .flat_map(|_| {
                let (fa, fb) = (a.next_frame(), b.next_frame());
                (0..FRAME_SAMPLES)
                    .map(move |i| (f64::from(fa[i]) + f64::from(fb[i])) / f64::from(i16::MAX))
            })
            .collect();
        let reading = analyse_window(&window).unwrap();
        assert_eq!(reading.frequency_hz, 440.0);
        assert!(reading.purity < 0.7, "{reading:?}");
    }

    #[test]
    fn receive_stats_count_loss_and_jitter() {
        let mut stats = ReceiveStats::new();
        // Perfectly paced packets: no jitter; 65530.. wraps past 65535.
        for i in 0..20u32 {
            let seq = (65_530 + i) as u16;
            stats.record(seq, i * 960, 100, f64::from(i) * 0.02);
        }
        assert_eq!(stats.packets(), 20);
        assert_eq!(stats.payload_bytes(), 2_000);
        assert_eq!(stats.packets_lost(), 0);
        assert!(stats.jitter_ms() < 1e-6);
        // Skip two sequence numbers and arrive 10 ms late.
        stats.record(
            65_530u32.wrapping_add(22) as u16,
            22 * 960,
            100,
            22.0 * 0.02 + 0.01,
        );
        assert_eq!(stats.packets_lost(), 2);
        assert!((stats.jitter_ms() - 10.0 / 16.0).abs() < 1e-6);
        // A late duplicate of an old packet does not move the maximum.
        stats.record(65_535, 5 * 960, 100, 0.5);
        assert_eq!(stats.packets_lost(), 1);
    }
}
