// A drop-in for the discovery.ts that Zajel's web client is missing: where the
// web client takes its signaling server from the build (VITE_SIGNALING_URL),
// it asks this module instead, which runs Zajel discovery in the page with the
// zajel-discovery-web package (registry, DoH, cache, referrals, zajel:// links,
// manual entry; each server checked over WebSocket with its identity proof).
//
//   import { findSignalingServer } from './discovery.js';
//   const { url, verified, report } = await findSignalingServer(config);
//
// The package is served from ./pkg/ (scripts/build-web's output).
import init, { discover, firstServer, parseShareLink, addReferral } from './pkg/zajel_discovery_web.js';

let ready;
/** Loads the wasm module once. */
export function load() {
  ready ??= init();
  return ready;
}

/**
 * The first verified server as soon as one answers, or the best one known
 * after `limitMs` (possibly unverified, possibly none); the run goes on in
 * the background and updates the cache for the next start.
 */
export async function findSignalingServer(options, limitMs = 5000) {
  await load();
  const { best, report } = await firstServer(options, limitMs);
  return { url: best ? best.url : null, verified: !!(best && best.verified), best, report };
}

/** A whole run; resolves with the report (the JSON of `zajel-discover --json`). */
export async function runDiscovery(options) {
  await load();
  return discover(options);
}

export { parseShareLink, addReferral };
