// Opens the call page (call.html) with its parameters in the URL's # part, and
// prints window.callResult. The fake microphone plays the WAV file given.
//   node call.mjs <page URL> <SPKI hash> <WAV file>
import { launch, result, watch } from './chromium.mjs';

const [url, spki, wav] = process.argv.slice(2);
const browser = await launch([
  `--ignore-certificate-errors-spki-list=${spki}`,
  `--use-file-for-fake-audio-capture=${wav}`,
]);
try {
  const page = await browser.newPage();
  watch(page);
  await page.goto(url);
  // The page says when it has registered its code, for a caller to be started.
  if (process.env.ZAJEL_WAIT_REGISTERED) {
    await page.waitForFunction(() => window.registered, null, { timeout: 30000 });
    process.stdout.write('REGISTERED\n');
  }
  await page.waitForFunction(() => window.callResult, null, { timeout: 60000 });
  result(await page.evaluate(() => window.callResult));
} finally {
  await browser.close();
}
