// A federation peer shaped like Zajel's server-vps (zajel-wire.md §8.2–8.3),
// written for these tests with node's own crypto and JSON.stringify and the
// `ws` package Zajel's server uses: it checks relay-lite's frames the way a
// Zajel server does, independently of our Rust code.
//
//   node tests/js/zajel_federation_peer.mjs <seed-hex> [<relay federation URL> <modes>]
//
// Listens on 127.0.0.1 (a random port) and accepts links on /federation:
// verifies the dialler's handshake as server-vps's verifyHandshake does,
// answers handshake_ack, sends a gossip ping and verifies the ping_ack as
// server-vps's verifyMessageSignature does. Reads commands on stdin:
//   dial <url> good|unlisted|forged|stale
// and dials relay-lite's /federation with a handshake of that kind.
// Every event is one JSON line on stdout.
import crypto from 'node:crypto';
import { WebSocket, WebSocketServer } from 'ws';

const say = (event) => process.stdout.write(JSON.stringify(event) + '\n');

function identity(seed) {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
  const privateKey = crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  const publicKey = crypto.createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(12);
  return {
    privateKey,
    publicKey,
    serverId: 'ed25519:' + publicKey.toString('base64'),
    nodeId: crypto.createHash('sha256').update(publicKey).digest().subarray(0, 20).toString('hex'),
  };
}

const sign = (id, text) => crypto.sign(null, Buffer.from(text, 'utf8'), id.privateKey).toString('base64');

function verify(serverId, text, signature) {
  try {
    const raw = Buffer.from(serverId.slice(8), 'base64');
    const key = crypto.createPublicKey({
      key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw]),
      format: 'der',
      type: 'spki',
    });
    return crypto.verify(null, Buffer.from(text, 'utf8'), key, Buffer.from(signature, 'base64'));
  } catch {
    return false;
  }
}

// server-vps's verifyHandshake: JSON.stringify of the frame without type and signature.
function verifyHandshake(message) {
  const { signature, type, ...rest } = message;
  return verify(message.serverId, JSON.stringify(rest), signature);
}

// server-vps's verifyMessageSignature: JSON.stringify of the frame without signature.
function verifyGossip(message) {
  const { signature, ...rest } = message;
  return verify(message.senderId, JSON.stringify(rest), signature);
}

function handshake(id, type, endpoint, timestamp = Date.now()) {
  const body = {
    serverId: id.serverId,
    nodeId: id.nodeId,
    endpoint,
    publicKey: id.publicKey.toString('base64'),
    metadata: {},
    timestamp,
  };
  return { type, ...body, signature: sign(id, JSON.stringify(body)) };
}

let sequence = 0;
function gossip(id, subtype, payload) {
  const message = {
    type: 'gossip',
    subtype,
    senderId: id.serverId,
    sequenceNumber: ++sequence,
    timestamp: Date.now(),
    payload,
    piggyback: [{ serverId: id.serverId, status: 'alive', incarnation: 0, endpoint: self.endpoint, nodeId: id.nodeId }],
  };
  return { ...message, signature: sign(id, JSON.stringify(message)) };
}

// After a link is up: ping, and report the verified ping_ack.
function pingOver(ws, id, link) {
  ws.send(JSON.stringify(gossip(id, 'ping', {})));
  ws.on('message', (data) => {
    const message = JSON.parse(data.toString());
    if (message.type === 'gossip') {
      say({ event: 'gossip', link, subtype: message.subtype, ok: verifyGossip(message), incarnation: message.payload?.incarnation });
    }
  });
}

const self = identity(Buffer.from(process.argv[2], 'hex'));
const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });

server.on('connection', (ws, request) => {
  ws.once('message', (data) => {
    const message = JSON.parse(data.toString());
    const ok = message.type === 'handshake' && verifyHandshake(message);
    say({ event: 'handshake', path: request.url, ok, serverId: message.serverId, endpoint: message.endpoint });
    if (!ok) {
      ws.close(4001, 'Invalid handshake signature');
      return;
    }
    ws.send(JSON.stringify(handshake(self, 'handshake_ack', self.endpoint)));
    pingOver(ws, self, 'accepted');
  });
});

server.on('listening', () => {
  self.endpoint = `ws://127.0.0.1:${server.address().port}`;
  say({ event: 'listening', endpoint: self.endpoint, serverId: self.serverId });
});

function dial(url, mode) {
  const id = mode === 'unlisted' ? identity(crypto.randomBytes(32)) : self;
  const timestamp = mode === 'stale' ? Date.now() - 3_600_000 : Date.now();
  const hello = handshake(id, 'handshake', self.endpoint, timestamp);
  if (mode === 'forged') hello.endpoint = 'ws://198.51.100.7:1';
  const ws = new WebSocket(url);
  ws.on('open', () => ws.send(JSON.stringify(hello)));
  ws.on('message', (data) => {
    const message = JSON.parse(data.toString());
    if (message.type === 'handshake_ack') {
      say({ event: 'ack', mode, ok: verifyHandshake(message), serverId: message.serverId });
      pingOver(ws, id, `dialled-${mode}`);
    }
  });
  ws.on('close', (code, reason) => say({ event: 'closed', mode, code, reason: reason.toString() }));
  ws.on('error', (error) => say({ event: 'error', mode, message: error.message }));
}

if (process.argv[3]) {
  server.on('listening', () => {
    for (const mode of (process.argv[4] || 'good').split(',')) dial(process.argv[3], mode);
  });
}
