// The browser side of tests/tests/browser.rs's calls: finds the relay with the
// zajel-discovery-web package, then places (role "call") or answers (role
// "answer") one audio call with the browser's own RTCPeerConnection (fake
// microphone; with `video`, the fake camera too, VP8 only, and call-probe's test
// pattern read back from the received frames), speaking Zajel's signaling to the relay: register, pair_request /
// pair_incoming + pair_response, call_offer, call_answer, trickled call_ice
// (the candidate as the JSON text of an RTCIceCandidateInit), call_hangup.
// Parameters come as JSON in the URL's # part; the outcome lands in
// window.callResult (getStats figures included).
import init, { firstServer, CallIdentity, certificateMatches } from './pkg/zajel_discovery_web.js';

const params = JSON.parse(decodeURIComponent(location.hash.slice(1)));
const log = (...args) => console.log(...args);

function fail(message) {
  throw new Error(message);
}


/** The relay connection: frames queued for whoever waits for them. */
class Signaling {
  constructor(url) {
    this.queue = [];
    this.waiters = [];
    this.handlers = {};
    this.ws = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error(`WebSocket ${url} failed`));
    });
    this.ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      const handler = this.handlers[frame.type];
      if (handler) return handler(frame);
      this.queue.push(frame);
      this.waiters.forEach((w) => w());
    };
  }
  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }
  on(type, handler) {
    this.handlers[type] = handler;
  }
  /** The next frame of one of `types` (others stay queued). */
  next(types, what, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      const check = () => {
        const index = this.queue.findIndex((f) => types.includes(f.type));
        if (index >= 0) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== check);
          resolve(this.queue.splice(index, 1)[0]);
        }
      };
      this.waiters.push(check);
      check();
    });
  }
}

/** The ICE servers the call may use: none (host candidates on loopback), or only
 * the relay's TURN on one transport ("tcp" or "tls") when relay-only. */
function iceServersFor(handed, transport) {
  if (!transport) return [];
  const servers = [];
  for (const server of handed) {
    const urls = [].concat(server.urls).filter((url) =>
      transport === 'tls' ? url.startsWith('turns:') : url.startsWith('turn:') && url.includes('transport=tcp'));
    if (urls.length) servers.push({ urls, username: server.username, credential: server.credential });
  }
  return servers;
}

async function stats(pc) {
  const figures = { inbound: null, outbound: null, remoteInbound: null, pair: null, transport: null, remoteCertificate: null, videoIn: null, videoOut: null };
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') figures.inbound = { packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived };
    if (s.type === 'outbound-rtp' && s.kind === 'audio') figures.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      const codec = byId.get(s.codecId) || {};
      figures.videoIn = {
        packetsReceived: s.packetsReceived, framesReceived: s.framesReceived, framesDecoded: s.framesDecoded,
        keyFramesDecoded: s.keyFramesDecoded, framesDropped: s.framesDropped, frameWidth: s.frameWidth,
        frameHeight: s.frameHeight, framesPerSecond: s.framesPerSecond, freezeCount: s.freezeCount,
        pliCount: s.pliCount, mimeType: codec.mimeType,
      };
    }
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      const codec = byId.get(s.codecId) || {};
      figures.videoOut = {
        packetsSent: s.packetsSent, framesEncoded: s.framesEncoded, framesSent: s.framesSent,
        keyFramesEncoded: s.keyFramesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
        pliCount: s.pliCount, mimeType: codec.mimeType,
      };
    }
    if (s.type === 'remote-inbound-rtp' && s.kind === 'audio') figures.remoteInbound = { packetsLost: s.packetsLost, roundTripTime: s.roundTripTime };
    if (s.type === 'transport') {
      figures.transport = { srtpCipher: s.srtpCipher, dtlsCipher: s.dtlsCipher, tlsVersion: s.tlsVersion, dtlsRole: s.dtlsRole, dtlsState: s.dtlsState };
      const certificate = byId.get(s.remoteCertificateId);
      if (certificate) figures.remoteCertificate = certificate.base64Certificate;
      const pair = byId.get(s.selectedCandidatePairId);
      if (pair) {
        const local = byId.get(pair.localCandidateId) || {};
        const remote = byId.get(pair.remoteCandidateId) || {};
        figures.pair = {
          local: { type: local.candidateType, protocol: local.protocol, address: local.address, relayProtocol: local.relayProtocol },
          remote: { type: remote.candidateType, protocol: remote.protocol, address: remote.address },
        };
      }
    }
  });
  return figures;
}

// call-probe's test pattern (call-probe/src/video.rs, `read_picture`): a 20x15 grid of
// blocks, the first 64 bits (white 235 = 1, black 16 = 0): a 24-bit counter and the 8-bit
// pattern id, then the same 32 bits inverted as a check. Each block's mean luma over its
// inner half; a block between 80 and 176 or a failed check: unreadable; dark and flat: black.
const GRID_COLS = 20;
const GRID_ROWS = 15;
const BITS = 64;

/** Reads a luma plane (`stride` bytes a row): {pattern, counter} | 'black' | 'unreadable'. */
function readPicture(luma, stride, w, h) {
  if (w < GRID_COLS * 4 || h < GRID_ROWS * 4) return 'unreadable';
  const bw = Math.floor(w / GRID_COLS);
  const bh = Math.floor(h / GRID_ROWS);
  const blockMean = (bx, by) => {
    const x0 = bx * bw + Math.floor(bw / 4);
    const y0 = by * bh + Math.floor(bh / 4);
    const x1 = x0 + Math.floor(bw / 2);
    const y1 = y0 + Math.floor(bh / 2);
    let sum = 0;
    for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += luma[y * stride + x];
    return Math.floor(sum / ((x1 - x0) * (y1 - y0)));
  };
  let low = 0; // bits 0..31, the data
  let high = 0; // bits 32..63, the check
  let clear = true;
  for (let bit = 0; bit < BITS; bit++) {
    const mean = blockMean(bit % GRID_COLS, Math.floor(bit / GRID_COLS));
    if (mean > 176) {
      if (bit < 32) low |= 1 << bit; else high |= 1 << (bit - 32);
    } else if (mean >= 80) {
      clear = false;
    }
  }
  if (clear && (high >>> 0) === (~low >>> 0)) {
    return { pattern: (low >>> 24) & 0xff, counter: (low >>> 0) & 0xffffff };
  }
  let min = 255; let max = 0; let sum = 0; let n = 0;
  for (let i = 0; i < w * h; i += 7) {
    const v = luma[Math.floor(i / w) * stride + (i % w)];
    min = Math.min(min, v); max = Math.max(max, v); sum += v; n += 1;
  }
  return sum / n < 40 && max - min < 40 ? 'black' : 'unreadable';
}

/** Reads every frame of a received video track (MediaStreamTrackProcessor hands each frame
 * the track delivers, up to 30 queued while the page is busy, so a stall loses none; its luma
 * plane is copied out of the VideoFrame) until `stop()`;
 * `figures()` sums them up as call-probe's receive report does. */
function watchPattern(track) {
  const seen = { framesRead: 0, countersRead: 0, countersMissing: 0, countersOutOfOrder: 0,
    firstCounter: null, lastCounter: null, black: 0, unreadable: 0, patterns: [], width: null, height: null, formats: [] };
  let stopped = false;
  const reader = new MediaStreamTrackProcessor({ track, maxBufferSize: 30 }).readable.getReader();
  const done = (async () => {
    while (!stopped) {
      const { value: frame, done: ended } = await reader.read();
      if (ended) break;
      try {
        const rect = frame.visibleRect;
        const w = rect.width;
        const h = rect.height;
        if (!seen.formats.includes(frame.format)) seen.formats.push(frame.format);
        let luma;
        let stride;
        if (frame.format === 'I420' || frame.format === 'NV12' || frame.format === 'I420A') {
          const buffer = new Uint8Array(frame.allocationSize());
          const layout = await frame.copyTo(buffer);
          luma = buffer.subarray(layout[0].offset);
          stride = layout[0].stride;
        } else {
          // Anything else (RGB): drawn into a canvas, luma by BT.601 with the video range.
          const canvas = new OffscreenCanvas(w, h);
          const context = canvas.getContext('2d');
          context.drawImage(frame, 0, 0, w, h);
          const rgba = context.getImageData(0, 0, w, h).data;
          luma = new Uint8Array(w * h);
          for (let i = 0; i < w * h; i++) {
            luma[i] = Math.round(16 + (65.481 * rgba[4 * i] + 128.553 * rgba[4 * i + 1] + 24.966 * rgba[4 * i + 2]) / 255);
          }
          stride = w;
        }
        seen.framesRead += 1;
        seen.width = w;
        seen.height = h;
        const content = readPicture(luma, stride, w, h);
        if (content === 'black') seen.black += 1;
        else if (content === 'unreadable') seen.unreadable += 1;
        else {
          if (!seen.patterns.includes(content.pattern)) seen.patterns.push(content.pattern);
          const last = seen.lastCounter;
          if (last !== null) {
            if (content.counter > last) seen.countersMissing += content.counter - last - 1;
            else seen.countersOutOfOrder += 1;
          }
          if (seen.firstCounter === null) seen.firstCounter = content.counter;
          if (last === null || content.counter > last) seen.lastCounter = content.counter;
          seen.countersRead += 1;
        }
      } finally {
        frame.close();
      }
    }
  })();
  return {
    async stop() {
      stopped = true;
      reader.cancel().catch(() => {});
      await Promise.race([done.catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
    },
    figures: () => seen,
  };
}

async function run() {
  await init();
  const started = performance.now();
  const { best, report } = await firstServer(params.discover, 20000);
  const discoveredMs = performance.now() - started;
  if (!best) fail(`discovery found no server: ${JSON.stringify(report)}`);
  log(`discovered ${best.url} (${best.verified ? 'verified' : 'unverified'}) in ${discoveredMs.toFixed(0)} ms`);

  const signaling = new Signaling(best.url);
  await signaling.opened;
  const greeting = await signaling.next(['server_info'], 'server_info');
  let handedIce = [];
  const iceHanded = new Promise((resolve) => signaling.on('ice_servers', (frame) => { handedIce = frame.iceServers || []; resolve(); }));
  signaling.on('pong', () => {});
  // The pairing identity: its public key is registered, its secret stays in the wasm module.
  const identity = new CallIdentity();
  signaling.send({ type: 'register', pairingCode: params.code, publicKey: identity.publicKey, iceServers: true });
  const registered = await signaling.next(['registered', 'code_collision', 'error'], 'registered');
  if (registered.type !== 'registered') fail(`register: ${JSON.stringify(registered)}`);
  window.registered = params.code;

  let peer = params.peer;
  let peerKey = null;
  if (params.role === 'call') {
    signaling.send({ type: 'pair_request', targetCode: peer, proposedName: 'chromium' });
    const matched = await signaling.next(['pair_matched', 'pair_rejected', 'pair_error', 'pair_timeout', 'error'], 'pair_matched');
    if (matched.type !== 'pair_matched') fail(`pairing: ${JSON.stringify(matched)}`);
    peerKey = matched.peerPublicKey;
  } else {
    const incoming = await signaling.next(['pair_incoming'], 'pair_incoming', 30000);
    peer = incoming.fromCode;
    signaling.send({ type: 'pair_response', targetCode: peer, accepted: true });
    peerKey = (await signaling.next(['pair_matched'], 'pair_matched')).peerPublicKey;
  }
  if (params.turn) {
    await Promise.race([iceHanded, new Promise((r) => setTimeout(r, 5000))]);
    if (!handedIce.length) fail('the relay handed no ice_servers after pairing');
  }
  const iceServers = iceServersFor(handedIce, params.turn);
  if (params.turn && !iceServers.length) fail(`no ${params.turn} TURN server in ${JSON.stringify(handedIce)}`);
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: params.turn ? 'relay' : 'all' });
  const microphone = await navigator.mediaDevices.getUserMedia(params.video
    ? { audio: true, video: { width: 320, height: 240, frameRate: 15 } }
    : { audio: true });
  microphone.getTracks().forEach((track) => pc.addTrack(track, microphone));
  let pattern = null;
  if (params.video) {
    // VP8 only (call-probe's codec), both for what the page sends and what it receives.
    const vp8 = RTCRtpReceiver.getCapabilities('video').codecs.filter((c) => c.mimeType === 'video/VP8');
    pc.getTransceivers().filter((t) => t.sender.track && t.sender.track.kind === 'video')
      .forEach((t) => t.setCodecPreferences(vp8));
    pc.ontrack = (event) => {
      if (event.track.kind === 'video' && !pattern) pattern = watchPattern(event.track);
    };
  }

  let callId = null;
  let remoteSdp = null;
  let authVerified = false;
  let remoteSet = false;
  const pendingIce = [];
  const callMessage = (type, payload) => signaling.send({ type, target: peer, payload: { callId, ...payload } });
  pc.onicecandidate = (event) => {
    if (event.candidate && callId) callMessage('call_ice', { candidate: JSON.stringify(event.candidate.toJSON()) });
  };
  let ended = null;
  const hungUp = new Promise((resolve) => signaling.on('call_hangup', (frame) => {
    if ((frame.payload || {}).callId === callId) { ended = 'hangup_remote'; resolve(); }
  }));
  let iceAdded = 0;
  const addIce = (payload) => pc.addIceCandidate(JSON.parse(payload.candidate))
    .then(() => { iceAdded += 1; }, (e) => log(`refused candidate: ${e}`));
  signaling.on('call_ice', async (frame) => {
    const payload = frame.payload || {};
    // Before the offer is handled (callee) or the answer set, keep them.
    if (!remoteSet) return pendingIce.push(payload);
    if (payload.callId === callId) await addIce(payload);
  });
  const flush = async () => {
    remoteSet = true;
    for (const payload of pendingIce.splice(0)) if (payload.callId === callId) await addIce(payload);
  };

  if (params.role === 'call') {
    callId = crypto.randomUUID();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    callMessage('call_offer', { sdp: offer.sdp, withVideo: !!params.video, auth: identity.sign(peerKey, 'offer', callId, offer.sdp) });
    let answer;
    do answer = await signaling.next(['call_answer', 'call_reject'], 'call_answer', 30000);
    while ((answer.payload || {}).callId !== callId);
    if (answer.type !== 'call_answer') fail(`call rejected: ${JSON.stringify(answer)}`);
    // Verified before the SDP is applied (wire's rule).
    remoteSdp = answer.payload.sdp;
    authVerified = identity.verify(peerKey, 'answer', callId, remoteSdp, answer.payload.auth);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.payload.sdp });
    await flush();
  } else {
    const offer = await signaling.next(['call_offer'], 'call_offer', 30000);
    callId = offer.payload.callId;
    remoteSdp = offer.payload.sdp;
    authVerified = identity.verify(peerKey, 'offer', callId, remoteSdp, offer.payload.auth);
    await pc.setRemoteDescription({ type: 'offer', sdp: offer.payload.sdp });
    await flush();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    callMessage('call_answer', { sdp: answer.sdp, auth: identity.sign(peerKey, 'answer', callId, answer.sdp) });
  }

  const connected = await new Promise((resolve) => {
    const check = () => {
      if (pc.connectionState === 'connected') resolve(true);
      if (pc.connectionState === 'failed') resolve(false);
    };
    pc.onconnectionstatechange = check;
    setTimeout(() => resolve(pc.connectionState === 'connected'), 15000);
    check();
  });
  const connectedMs = performance.now() - started;
  if (!connected) fail(`the call did not connect (${pc.connectionState}, ICE ${pc.iceConnectionState})`);
  // Media for a while (the other side needs a few hundred ms of tone to detect it).
  const holdUntil = performance.now() + (params.holdMs || 3000);
  while (performance.now() < holdUntil && !ended) await new Promise((r) => setTimeout(r, 100));
  const figures = await stats(pc);
  if (pattern) {
    await pattern.stop();
    figures.pattern = pattern.figures();
  }
  // The certificate the peer presented in DTLS must be one its authenticated SDP named.
  const certificateMatched = !!figures.remoteCertificate && certificateMatches(remoteSdp, figures.remoteCertificate);
  if (params.role === 'call' && !ended) {
    callMessage('call_hangup', {});
    ended = 'hangup_local';
  } else if (!ended) {
    await Promise.race([hungUp, new Promise((r) => setTimeout(r, 15000))]);
  }
  pc.close();
  signaling.ws.close();
  return {
    relay: best.url,
    verified: best.verified,
    discoveredMs,
    firstVerifiedMs: report.first_verified_ms,
    connectedMs,
    serverId: greeting.serverId,
    code: params.code,
    peer,
    callId,
    ended,
    iceAdded,
    authenticated: authVerified && certificateMatched,
    authVerified,
    certificateMatched,
    stats: figures,
  };
}

run().then(
  (result) => { window.callResult = result; },
  (error) => { window.callResult = { error: String(error && error.stack || error) }; },
);
