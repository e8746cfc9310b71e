// Makes zajel_handshake.json and zajel_gossip_ping.json the way Zajel's
// server-vps builds its federation frames (createHandshake, createMessage):
// JSON.stringify of the object in Zajel's key order, Ed25519-signed, std base64.
// Written for this repository with node's built-in crypto only; run with
//   node wire/testdata/make-zajel-vectors.js
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const seed = Buffer.alloc(32, 9);
const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
const privateKey = crypto.createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
const publicKey = crypto.createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(12);
const serverId = 'ed25519:' + publicKey.toString('base64');
const nodeId = crypto.createHash('sha256').update(publicKey).digest().subarray(0, 20).toString('hex');
const sign = (text) => crypto.sign(null, Buffer.from(text, 'utf8'), privateKey).toString('base64');

const timestamp = 1780000000000;
const body = { serverId, nodeId, endpoint: 'ws://127.0.0.1:9443', publicKey: publicKey.toString('base64'), metadata: {}, timestamp };
const handshake = { type: 'handshake', ...body, signature: sign(JSON.stringify(body)) };
fs.writeFileSync(path.join(__dirname, 'zajel_handshake.json'), JSON.stringify(handshake) + '\n');

const message = {
  type: 'gossip', subtype: 'ping', senderId: serverId, sequenceNumber: 41, timestamp,
  payload: {},
  piggyback: [{ serverId, status: 'alive', incarnation: 0, endpoint: 'ws://127.0.0.1:9443', nodeId }],
};
const ping = { ...message, signature: sign(JSON.stringify(message)) };
fs.writeFileSync(path.join(__dirname, 'zajel_gossip_ping.json'), JSON.stringify(ping) + '\n');
