// Independent vectors for relay-lite's ring (src/ring.rs), written from the
// description of Zajel's hash ring in zajel-wire.md §8.5 (SHA-256, first 20
// bytes big-endian, 1 primary position from nodeId + 150 virtual positions
// "<serverId>:<i>", responsible = distinct alive servers clockwise from the
// first position >= key, wrapping). Run once: node ring_vectors.mjs > ring_vectors.json
import { createHash } from 'node:crypto';
const pos = (s) => BigInt('0x' + createHash('sha256').update(s, 'utf8').digest('hex').slice(0, 40));
const servers = ['A', 'B', 'C', 'D', 'E'].map((l) => ({
  serverId: 'ed25519:' + Buffer.alloc(32, l.charCodeAt(0)).toString('base64'),
}));
servers.forEach((s) => (s.nodeId = s.serverId));
function ring(members) {
  const p = [];
  for (const m of members) {
    p.push({ position: pos(m.nodeId), serverId: m.serverId });
    for (let i = 0; i < 150; i++) p.push({ position: pos(`${m.serverId}:${i}`), serverId: m.serverId });
  }
  p.sort((a, b) => (a.position < b.position ? -1 : a.position > b.position ? 1 : 0));
  return p;
}
function responsible(p, key, count) {
  const k = pos(key);
  let i = p.findIndex((e) => e.position >= k);
  if (i < 0) i = 0;
  const out = [];
  for (let n = 0; n < p.length && out.length < count; n++) {
    const e = p[(i + n) % p.length];
    if (!out.includes(e.serverId)) out.push(e.serverId);
  }
  return out;
}
const keys = [];
for (let i = 0; i < 24; i++) keys.push(i % 2 ? `hr_token${i}` : `day_point${i}`);
const positions = ['', 'day_abc', 'hr_abc', servers[0].serverId + ':0', 'ünïcode'].map((s) => ({
  input: s,
  position: pos(s).toString(16).padStart(40, '0'),
}));
const fleets = [2, 3, 4, 5].map((n) => {
  const members = servers.slice(0, n);
  const p = ring(members);
  return {
    servers: members.map((m) => m.serverId),
    responsible: keys.map((key) => ({ key, top3: responsible(p, key, 3), all: responsible(p, key, n) })),
  };
});
console.log(JSON.stringify({ positions, fleets }, null, 1));
