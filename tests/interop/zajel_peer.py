#!/usr/bin/env python3
"""A Zajel call peer on aiortc, for the interop tests and the call-setup benchmark.

It speaks Zajel's signaling protocol (shared/reference/zajel-wire.md §2-§3) over a WebSocket
to a relay: it reads `server_info`, registers a pairing code with an X25519-shaped public key,
pairs (`pair_request` as the caller; `pair_incoming` -> `pair_response` as the callee), then
places or answers one audio call with Zajel's call messages (`call_offer` with a UUID v4
callId, `call_answer`, `call_ice` whose `candidate` is the JSON text of an RTCIceCandidateInit,
`call_reject`, `call_hangup`).

Media: it sends a sine tone (Opus, encoded by aiortc) and listens to the other side's audio:
every decoded frame goes through an FFT over 100 ms windows; three consecutive windows that
agree within 5 Hz with a purity of at least 0.5 make the tone detected.

Video (--video): it also sends call-probe's test pattern (crate call-probe, src/video.rs: a
320x240 picture whose first 64 blocks of a 20x15 grid carry a 24-bit frame counter and a pattern
id, then the same 32 bits inverted as a check; white 235 for 1, black 16 for 0), VP8-encoded by
aiortc (libvpx), at 15 fps, and reads the pattern back from every decoded frame of the other
side's video: frames decoded, counters read, missing and out of order, the size, the patterns.
With --video the exit status also needs decoded frames with counters read.

Output (stdout, one JSON object per line): `{"event":"registered",...}` once the code is
bound (the test harness reads the code from it), then `{"event":"result",...}` at the end with
the tone figures and the timings (ms since the peer started connecting to the relay).
Logs go to stderr. Exit status: 0 when the other side's tone was heard (and, with
--expect-hz, within 5 Hz of it), 1 when not or when the call failed, 2 for bad arguments.

aiortc gathers all its candidates before the SDP is sent (no trickling from this side); it
accepts the other side's trickled `call_ice`. With --loopback (what the tests use) its only host
candidate is 127.0.0.1, and no STUN server is configured (aiortc would otherwise ask a public one).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fractions
import json
import logging
import math
import secrets
import sys
import time
import uuid

import aioice.ice
import numpy as np
import websockets
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame, VideoFrame

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
WINDOW_SAMPLES = 4800  # 100 ms
AGREEING_WINDOWS = 3
TOLERANCE_HZ = 5.0
MIN_PURITY = 0.5
# The test pattern (call-probe's src/video.rs).
VIDEO_WIDTH, VIDEO_HEIGHT, VIDEO_FPS = 320, 240, 15
GRID_COLS, GRID_ROWS, CODE_BITS = 20, 15, 64
WHITE, BLACK = 235, 16
VIDEO_CLOCK = 90000

log = logging.getLogger("zajel_peer")


def random_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(6))


def valid_code(code: str) -> bool:
    return len(code) == 6 and all(c in ALPHABET for c in code)


class Clock:
    """Milestones in ms since the peer started; the first time each one happens counts."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def now_ms(self) -> float:
        return round((time.monotonic() - self.start) * 1000.0, 1)

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, self.now_ms())


class ToneDetector:
    """FFT over 100 ms windows of the decoded audio; see the module doc for the rule."""

    def __init__(self) -> None:
        self.buffer = np.zeros(0, dtype=np.float64)
        self.readings: list[tuple[float, float, float]] = []  # (hz, level_dbfs, purity)
        self.detected: dict | None = None
        self.frames = 0
        self.window = np.hanning(WINDOW_SAMPLES)
        self.fft_size = SAMPLE_RATE  # zero-padded: 1 Hz bins

    def feed(self, samples: np.ndarray) -> bool:
        """Adds mono samples in [-1, 1]; returns True when the tone is detected by this call."""
        self.frames += 1
        self.buffer = np.concatenate([self.buffer, samples])
        newly = False
        while len(self.buffer) >= WINDOW_SAMPLES:
            window, self.buffer = self.buffer[:WINDOW_SAMPLES], self.buffer[WINDOW_SAMPLES:]
            reading = self.analyse(window)
            if reading is None:
                self.readings.clear()
                continue
            self.readings.append(reading)
            self.readings = self.readings[-AGREEING_WINDOWS:]
            if self.detected is None and len(self.readings) == AGREEING_WINDOWS:
                freqs = [r[0] for r in self.readings]
                if max(freqs) - min(freqs) <= TOLERANCE_HZ:
                    self.detected = {
                        "frequency_hz": round(float(np.mean(freqs)), 1),
                        "level_dbfs": round(float(np.mean([r[1] for r in self.readings])), 1),
                        "purity": round(float(np.mean([r[2] for r in self.readings])), 3),
                    }
                    newly = True
        return newly

    def analyse(self, window: np.ndarray) -> tuple[float, float, float] | None:
        rms = math.sqrt(float(np.mean(window * window)))
        if rms < 1e-4:  # below -80 dBFS: silence
            return None
        spectrum = np.abs(np.fft.rfft(window * self.window, n=self.fft_size)) ** 2
        low, high = 100, 4000  # bins are 1 Hz wide
        band = spectrum[low : high + 1]
        peak = int(np.argmax(band)) + low
        # Parabolic interpolation around the peak (log magnitudes) for sub-hertz precision.
        a, b, c = (math.log(spectrum[i] + 1e-30) for i in (peak - 1, peak, peak + 1))
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator != 0 else 0.0
        frequency = peak + offset
        # Purity: the share of the window's energy within ±20 Hz of the peak (the Hann main lobe).
        total = float(np.sum(spectrum[20 : SAMPLE_RATE // 2]))
        near = float(np.sum(spectrum[max(peak - 20, 0) : peak + 21]))
        purity = near / total if total > 0 else 0.0
        if purity < MIN_PURITY:
            return None
        return frequency, 20 * math.log10(rms), purity


def make_tone_track(hz: float, level_dbfs: float):
    amplitude = 10 ** (level_dbfs / 20.0)

    class ToneTrack(MediaStreamTrack):
        """A sine at `hz`, 48 kHz mono, 20 ms frames paced in real time."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.started: float | None = None
            self.sample = 0
            self.frames_sent = 0

        async def recv(self):
            if self.started is None:
                self.started = time.monotonic()
            else:
                self.sample += FRAME_SAMPLES
                due = self.started + self.sample / SAMPLE_RATE
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            t = (np.arange(FRAME_SAMPLES) + self.sample) / SAMPLE_RATE
            pcm = (amplitude * 32767 * np.sin(2 * math.pi * hz * t)).astype(np.int16)
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self.sample
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self.frames_sent += 1
            return frame

    return ToneTrack()


def pattern_picture(pattern_id: int, counter: int) -> np.ndarray:
    """The I420 picture (rows of Y, then U, then V, as PyAV's yuv420p ndarray) for `counter`."""
    w, h = VIDEO_WIDTH, VIDEO_HEIGHT
    luma = np.zeros((h, w), dtype=np.uint8)
    code_rows = math.ceil(CODE_BITS / GRID_COLS) * (h // GRID_ROWS)
    ramp = (40 + np.arange(w) * 120 // w).astype(np.uint8)
    luma[code_rows:, :] = ramp
    bar = (counter * 8) % w
    luma[code_rows:, bar : bar + 16] = WHITE
    data = (counter & 0xFFFFFF) | ((pattern_id & 0xFF) << 24)
    code = data | ((~data & 0xFFFFFFFF) << 32)
    bw, bh = w // GRID_COLS, h // GRID_ROWS
    for bit in range(CODE_BITS):
        bx, by = bit % GRID_COLS, bit // GRID_COLS
        luma[by * bh : (by + 1) * bh, bx * bw : (bx + 1) * bw] = WHITE if (code >> bit) & 1 else BLACK
    chroma = np.full((h // 2, w), 128, dtype=np.uint8)  # U then V, each h/2 x w/2, packed
    return np.concatenate([luma, chroma])


def read_pattern(luma: np.ndarray) -> tuple[int, int] | None:
    """(pattern id, counter) from a decoded luma plane, or None when the check fails."""
    h, w = luma.shape
    bw, bh = w // GRID_COLS, h // GRID_ROWS
    if bw < 4 or bh < 4:
        return None
    code = 0
    for bit in range(CODE_BITS):
        bx, by = bit % GRID_COLS, bit // GRID_COLS
        x0, y0 = bx * bw + bw // 4, by * bh + bh // 4
        mean = float(np.mean(luma[y0 : y0 + bh // 2, x0 : x0 + bw // 2]))
        if mean > 176:
            code |= 1 << bit
        elif mean >= 80:
            return None
    data, check = code & 0xFFFFFFFF, code >> 32
    if check != (~data & 0xFFFFFFFF):
        return None
    return data >> 24, data & 0xFFFFFF


class PatternTrack(MediaStreamTrack):
    """The test pattern at VIDEO_FPS, paced in real time, the counter going up each frame."""

    kind = "video"

    def __init__(self, pattern_id: int) -> None:
        super().__init__()
        self.pattern_id = pattern_id
        self.started: float | None = None
        self.frames_sent = 0

    async def recv(self):
        if self.started is None:
            self.started = time.monotonic()
        else:
            due = self.started + self.frames_sent / VIDEO_FPS
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        frame = VideoFrame.from_ndarray(pattern_picture(self.pattern_id, self.frames_sent), format="yuv420p")
        frame.pts = self.frames_sent * (VIDEO_CLOCK // VIDEO_FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.frames_sent += 1
        return frame


class PatternReader:
    """Counters read from the other side's decoded frames, and how they ran."""

    def __init__(self) -> None:
        self.frames_decoded = 0
        self.counters_read = 0
        self.counters_missing = 0
        self.counters_out_of_order = 0
        self.unreadable = 0
        self.first_counter: int | None = None
        self.last_counter: int | None = None
        self.patterns_seen: list[int] = []
        self.size: tuple[int, int] | None = None

    def feed(self, frame) -> None:
        self.frames_decoded += 1
        self.size = (frame.width, frame.height)
        luma = frame.to_ndarray(format="yuv420p")[: frame.height]
        reading = read_pattern(luma)
        if reading is None:
            self.unreadable += 1
            return
        pattern_id, counter = reading
        self.counters_read += 1
        if pattern_id not in self.patterns_seen:
            self.patterns_seen.append(pattern_id)
        if self.first_counter is None:
            self.first_counter = counter
        last = self.last_counter
        if last is not None:
            if counter == last + 1:
                pass
            elif counter > last:
                self.counters_missing += counter - last - 1
            else:
                self.counters_out_of_order += 1
        if last is None or counter > last:
            self.last_counter = counter

    def report(self, frames_sent: int) -> dict:
        return {
            "frames_sent": frames_sent,
            "frames_decoded": self.frames_decoded,
            "counters_read": self.counters_read,
            "counters_missing": self.counters_missing,
            "counters_out_of_order": self.counters_out_of_order,
            "unreadable_frames": self.unreadable,
            "first_counter": self.first_counter,
            "last_counter": self.last_counter,
            "patterns_seen": self.patterns_seen,
            "width": self.size[0] if self.size else None,
            "height": self.size[1] if self.size else None,
        }


def to_mono(frame) -> np.ndarray:
    """A decoded aiortc AudioFrame (s16, packed) as mono float samples in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data[0]
    else:
        samples = data.reshape(-1)[::channels]
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768.0
    return samples.astype(np.float64)


class CallFailed(Exception):
    pass


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clock = Clock()
        self.code = args.code or random_code()
        self.peer_code: str | None = args.peer
        self.ws = None
        self.frames: asyncio.Queue = asyncio.Queue()
        self.pc = None
        self.call_id: str | None = None
        self.remote_set = asyncio.Event()
        self.pending_ice: list[dict] = []
        self.detector = ToneDetector()
        self.tone_heard = asyncio.Event()
        self.remote_ended = asyncio.Event()
        self.end: str | None = None
        self.tone = None
        self.video = None
        self.pattern = PatternReader()
        self.ice_received = 0
        self.ice_refused = 0
        self.server_info: dict = {}
        self.pair: dict | None = None  # the nominated pair, read once DTLS is up

    # ---- signaling ----

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message, separators=(",", ":")))

    async def send_call(self, kind: str, payload: dict) -> None:
        if self.args.flat:
            # Zajel's web client form: the call fields at the top level, targetId.
            await self.send({"type": kind, "targetId": self.peer_code, **payload})
        else:
            await self.send({"type": kind, "target": self.peer_code, "payload": payload})

    async def reader(self) -> None:
        async for text in self.ws:
            try:
                frame = json.loads(text)
            except ValueError:
                log.warning("not JSON from the relay: %.200s", text)
                continue
            kind = frame.get("type")
            if kind == "pong":
                continue
            if kind == "call_ice":
                await self.on_call_ice(frame.get("payload") or {})
                continue
            if kind in ("call_hangup", "call_reject") and self.call_id:
                payload = frame.get("payload") or {}
                if payload.get("callId") == self.call_id:
                    self.end = (
                        "hangup_remote"
                        if kind == "call_hangup"
                        else f"rejected_by_remote:{payload.get('reason')}"
                    )
                    self.clock.mark("remote_ended")
                    self.remote_ended.set()
                    continue
            await self.frames.put(frame)
        self.remote_ended.set()

    async def expect(self, kinds: set[str], what: str, timeout: float) -> dict:
        """The next frame of one of `kinds`; relay errors and unexpected frames are logged."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallFailed(f"timed out waiting for {what}")
            try:
                frame = await asyncio.wait_for(self.frames.get(), left)
            except asyncio.TimeoutError:
                raise CallFailed(f"timed out waiting for {what}") from None
            kind = frame.get("type")
            if kind in kinds:
                return frame
            if kind == "error":
                raise CallFailed(f"relay error while waiting for {what}: {frame.get('message')}")
            log.info("ignoring %s while waiting for %s", kind, what)

    async def on_call_ice(self, payload: dict) -> None:
        log.info("call_ice for %s (call %s, remote description %s)", payload.get("callId"),
                 self.call_id, "set" if self.remote_set.is_set() else "not set")
        if payload.get("callId") != self.call_id or self.call_id is None:
            if self.call_id is None:
                self.pending_ice.append(payload)  # arrived before the offer was handled
            return
        if not self.remote_set.is_set():
            self.pending_ice.append(payload)
            return
        await self.add_ice(payload)

    async def add_ice(self, payload: dict) -> None:
        try:
            init = json.loads(payload["candidate"])
            text = init.get("candidate") or ""
            if not text:
                return  # end-of-candidates marker: aioice keeps waiting either way
            if text.startswith("candidate:"):
                text = text[len("candidate:") :]
            candidate = candidate_from_sdp(text)
            candidate.sdpMid = init.get("sdpMid")
            candidate.sdpMLineIndex = init.get("sdpMLineIndex")
            if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
                candidate.sdpMLineIndex = 0
            await self.pc.addIceCandidate(candidate)
            self.ice_received += 1
            log.info("added remote candidate %s", text)
        except Exception as error:  # noqa: BLE001 - counted and reported, the call goes on
            self.ice_refused += 1
            log.warning("refused a call_ice candidate: %s (%r)", error, payload)

    async def flush_pending_ice(self) -> None:
        pending, self.pending_ice = self.pending_ice, []
        for payload in pending:
            if payload.get("callId") == self.call_id:
                await self.add_ice(payload)

    # ---- media ----

    def new_peer_connection(self):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("iceconnectionstatechange")
        def _ice() -> None:
            log.info("ICE %s", pc.iceConnectionState)
            if pc.iceConnectionState in ("completed", "connected"):
                self.clock.mark("ice_connected")
            elif pc.iceConnectionState == "failed":
                self.remote_ended.set()

        @pc.on("connectionstatechange")
        def _connection() -> None:
            log.info("connection %s", pc.connectionState)
            if pc.connectionState == "connected":
                self.clock.mark("dtls_connected")
                self.pair = self.pair or self.selected_pair()
            elif pc.connectionState == "failed":
                self.end = self.end or "failed"
                self.remote_ended.set()

        @pc.on("track")
        def _track(track) -> None:
            if track.kind == "audio":
                self.watch_first_rtp(pc, track)
                asyncio.ensure_future(self.listen(track))
            elif track.kind == "video":
                asyncio.ensure_future(self.watch(track))

        self.tone = make_tone_track(self.args.tone_hz, self.args.level_dbfs)
        pc.addTrack(self.tone)
        if self.args.video:
            self.video = PatternTrack(self.args.pattern_id)
            pc.addTrack(self.video)
        self.pc = pc
        return pc

    def watch_first_rtp(self, pc, track) -> None:
        """Marks `first_rtp_received` when the track's receiver gets its first RTP packet.

        That is the packet as the receiver takes it from the transport, SRTP already removed,
        before aiortc's jitter buffer and decoder: the same event as call-probe's
        `first_rtp_ms`, so the two stacks can be compared on it (`first_audio_frame`, the first
        decoded frame, comes later by the jitter buffer's prefetch). aiortc has no public hook
        for it, so the receiver's packet handler is wrapped on this one instance.
        """
        receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is None:
            log.warning("no receiver for the audio track: first_rtp_received not measured")
            return
        handle = receiver._handle_rtp_packet

        async def handle_and_mark(packet, arrival_time_ms):
            self.clock.mark("first_rtp_received")
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle_and_mark

    async def listen(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.clock.mark("first_audio_frame")
            if frame.sample_rate != SAMPLE_RATE:
                log.warning("audio at %s Hz, expected %s", frame.sample_rate, SAMPLE_RATE)
            if self.detector.feed(to_mono(frame)):
                self.clock.mark("tone_detected")
                self.tone_heard.set()

    async def watch(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.clock.mark("first_video_frame")
            self.pattern.feed(frame)

    # ---- the two roles ----

    async def run(self) -> dict:
        args = self.args
        self.ws = await asyncio.wait_for(
            websockets.connect(args.server, max_size=4 * 65536, open_timeout=args.step_timeout),
            args.step_timeout,
        )
        self.clock.mark("websocket_open")
        greeting = json.loads(await asyncio.wait_for(self.ws.recv(), args.step_timeout))
        if greeting.get("type") != "server_info":
            raise CallFailed(f"the relay sent {greeting.get('type')} instead of server_info")
        self.server_info = greeting
        self.clock.mark("server_info")
        reader = asyncio.ensure_future(self.reader())
        try:
            public_key = base64.b64encode(secrets.token_bytes(32)).decode()
            await self.send({"type": "register", "pairingCode": self.code, "publicKey": public_key})
            registered = await self.expect(
                {"registered", "code_collision"}, "registration", args.step_timeout
            )
            if registered["type"] == "code_collision":
                raise CallFailed(f"code collision: {registered.get('message')}")
            self.clock.mark("registered")
            emit({"event": "registered", "code": self.code, "serverId": greeting.get("serverId")})
            if args.role == "call":
                await self.pair_as_requester()
                await self.place_call()
            else:
                await self.pair_as_responder()
                await self.answer_call()
            await self.converse()
        finally:
            reader.cancel()
        return self.result()

    async def pair_as_requester(self) -> None:
        self.clock.mark("pair_request_sent")
        await self.send({"type": "pair_request", "targetCode": self.peer_code, "proposedName": "aiortc"})
        frame = await self.expect(
            {"pair_matched", "pair_rejected", "pair_error", "pair_timeout"},
            "pair_matched",
            self.args.pair_timeout,
        )
        if frame["type"] != "pair_matched":
            raise CallFailed(f"pairing failed: {json.dumps(frame)}")
        self.clock.mark("pair_matched")

    async def pair_as_responder(self) -> None:
        incoming = await self.expect({"pair_incoming"}, "pair_incoming", self.args.pair_timeout)
        self.clock.mark("pair_incoming")
        self.peer_code = incoming["fromCode"]
        await self.send({"type": "pair_response", "targetCode": self.peer_code, "accepted": True})
        await self.expect({"pair_matched"}, "pair_matched", self.args.step_timeout)
        self.clock.mark("pair_matched")

    async def place_call(self) -> None:
        pc = self.new_peer_connection()
        self.call_id = str(uuid.uuid4())
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)  # gathers every candidate first
        self.clock.mark("offer_sent")
        await self.send_call(
            "call_offer",
            {"callId": self.call_id, "sdp": pc.localDescription.sdp, "withVideo": bool(self.args.video)},
        )
        while True:
            frame = await self.expect({"call_answer"}, "call_answer", self.args.ring_timeout)
            payload = frame.get("payload") or {}
            if payload.get("callId") == self.call_id:
                break
        self.clock.mark("answer_received")
        await pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], "answer"))
        self.remote_set.set()
        await self.flush_pending_ice()

    async def answer_call(self) -> None:
        while True:
            frame = await self.expect({"call_offer"}, "call_offer", self.args.ring_timeout)
            payload = frame.get("payload") or {}
            if payload.get("callId") and payload.get("sdp"):
                break
        self.clock.mark("offer_received")
        self.call_id = payload["callId"]
        pc = self.new_peer_connection()
        await pc.setRemoteDescription(RTCSessionDescription(payload["sdp"], "offer"))
        self.remote_set.set()
        await self.flush_pending_ice()
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self.clock.mark("answer_sent")
        await self.send_call("call_answer", {"callId": self.call_id, "sdp": pc.localDescription.sdp})

    async def converse(self) -> None:
        """Waits for the other side's tone, keeps talking for --hold, then hangs up (caller)
        or waits for the caller's hangup (callee)."""
        args = self.args
        heard = asyncio.ensure_future(self.tone_heard.wait())
        ended = asyncio.ensure_future(self.remote_ended.wait())
        await asyncio.wait({heard, ended}, timeout=args.tone_timeout, return_when=asyncio.FIRST_COMPLETED)
        if self.remote_ended.is_set():
            heard.cancel()
            return
        if args.role == "call":
            try:
                await asyncio.wait_for(self.remote_ended.wait(), args.hold)
            except asyncio.TimeoutError:
                pass
            if not self.remote_ended.is_set():
                await self.hangup()
        else:
            try:
                await asyncio.wait_for(self.remote_ended.wait(), args.hangup_timeout)
            except asyncio.TimeoutError:
                await self.hangup()
        heard.cancel()
        ended.cancel()

    async def hangup(self) -> None:
        if self.call_id and self.end is None:
            self.end = "hangup_local"
            self.clock.mark("hangup_sent")
            await self.send_call("call_hangup", {"callId": self.call_id})

    def selected_pair(self) -> dict | None:
        try:
            transceiver = self.pc.getTransceivers()[0]
            connection = transceiver.sender.transport.transport._connection
            for component, pair in connection._nominated.items():
                return {
                    "local": {"kind": pair.local_candidate.type, "protocol": pair.local_candidate.transport.lower(),
                              "address": pair.local_candidate.host, "port": pair.local_candidate.port},
                    "remote": {"kind": pair.remote_candidate.type, "protocol": pair.remote_candidate.transport.lower(),
                               "address": pair.remote_candidate.host, "port": pair.remote_candidate.port},
                }
        except (AttributeError, IndexError):
            return None
        return None

    def result(self) -> dict:
        detected = self.detector.detected
        expect = self.args.expect_hz
        ok = detected is not None and (
            expect is None or abs(detected["frequency_hz"] - expect) <= TOLERANCE_HZ
        )
        if self.args.video:
            ok = ok and self.pattern.frames_decoded > 0 and self.pattern.counters_read > 0
        return {
            "event": "result",
            "ok": ok,
            "role": "caller" if self.args.role == "call" else "callee",
            "stack": "aiortc",
            "code": self.code,
            "peer_code": self.peer_code,
            "call_id": self.call_id,
            "end": self.end,
            "tone": {
                "sent_hz": self.args.tone_hz,
                "expected_hz": expect,
                "detected": detected,
                "frames_sent": self.tone.frames_sent if self.tone else 0,
                "frames_decoded": self.detector.frames,
            },
            "video": self.pattern.report(self.video.frames_sent if self.video else 0)
            if self.args.video
            else None,
            "ice": {
                "remote_candidates_trickled": self.ice_received,
                "remote_candidates_refused": self.ice_refused,
                "selected_pair": self.pair or (self.selected_pair() if self.pc else None),
            },
            "timings_ms": self.clock.marks,
        }


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A Zajel call peer on aiortc: pairs through a relay, calls or answers, "
        "sends a tone and detects the other side's."
    )
    parser.add_argument("role", choices=["call", "answer"], help="place the call, or answer one")
    parser.add_argument("--server", required=True, help="relay URL, ws://host:port")
    parser.add_argument("--code", help="own pairing code (default: random)")
    parser.add_argument("--peer", help="the code to pair with and call (role call)")
    parser.add_argument("--tone-hz", type=float, default=520.0, help="tone sent (default 520)")
    parser.add_argument("--level-dbfs", type=float, default=-12.0, help="tone peak level (default -12)")
    parser.add_argument("--expect-hz", type=float, help="the other side's tone; heard within 5 Hz or exit 1")
    parser.add_argument("--loopback", action="store_true", help="host candidate 127.0.0.1 only (tests)")
    parser.add_argument("--step-timeout", type=float, default=10.0, help="each signaling step (s)")
    parser.add_argument("--pair-timeout", type=float, default=30.0, help="waiting to pair (s)")
    parser.add_argument("--ring-timeout", type=float, default=30.0, help="waiting for the offer/answer (s)")
    parser.add_argument("--tone-timeout", type=float, default=15.0, help="waiting for the tone (s)")
    parser.add_argument("--hold", type=float, default=1.5, help="caller: talk this long after hearing the tone (s)")
    parser.add_argument("--hangup-timeout", type=float, default=15.0, help="callee: wait for the hangup (s)")
    parser.add_argument("--flat", action="store_true",
                        help="send call messages in the web client's flat form (targetId, no payload)")
    parser.add_argument("--video", action="store_true",
                        help="also send call-probe's test pattern (VP8) and read the other side's")
    parser.add_argument("--pattern-id", type=int, default=0, help="the pattern id sent with --video (0..255)")
    parser.add_argument("--verbose", action="store_true", help="aiortc debug logs on stderr")
    args = parser.parse_args(argv)
    if not args.server.startswith(("ws://", "wss://")):
        parser.error("--server must be a ws:// or wss:// URL")
    if args.code is not None and not valid_code(args.code):
        parser.error("--code must be 6 characters from " + ALPHABET)
    if args.role == "call" and (args.peer is None or not valid_code(args.peer)):
        parser.error("role call needs --peer, 6 characters from " + ALPHABET)
    if not 100 <= args.tone_hz <= 4000:
        parser.error("--tone-hz must be within 100..4000")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        for noisy in ("aioice", "aiortc", "websockets"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.loopback:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

    peer = Peer(args)

    async def run() -> dict:
        try:
            return await peer.run()
        finally:
            if peer.pc is not None:
                await peer.pc.close()
            if peer.ws is not None:
                await peer.ws.close()

    try:
        result = asyncio.run(run())
    except Exception as error:  # noqa: BLE001 - every failure becomes a result line
        result = peer.result()
        result["ok"] = False
        result["error"] = str(error) or type(error).__name__
    emit(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
