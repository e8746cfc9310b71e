// Launches Debian's Chromium with playwright-core for the browser tests
// (tests/src/browser.rs passes the binary and the flags in the environment).
import { chromium } from 'playwright-core';

export async function launch(extraArgs = []) {
  const args = (process.env.ZAJEL_CHROMIUM_ARGS || '').split(' ').filter(Boolean).concat(extraArgs);
  return chromium.launch({
    executablePath: process.env.ZAJEL_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args,
  });
}

/** Prints the result line the Rust side waits for. */
export function result(value) {
  process.stdout.write(`RESULT ${JSON.stringify(value)}\n`);
}

/** Forwards the page's console and errors to stderr (kept in the test's output). */
export function watch(page) {
  page.on('console', (message) => process.stderr.write(`page ${message.type()}: ${message.text()}\n`));
  page.on('pageerror', (error) => process.stderr.write(`page error: ${error}\n`));
}
