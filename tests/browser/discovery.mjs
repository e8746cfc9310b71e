// Opens discovery-web's example page with the options in its URL's # part
// and prints what the page found (window.discoveryResult).
//   node discovery.mjs <page URL> <SPKI hash>
import { launch, result, watch } from './chromium.mjs';

const [url, spki] = process.argv.slice(2);
const browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
try {
  const page = await browser.newPage();
  watch(page);
  await page.goto(url);
  await page.waitForFunction(() => window.discoveryResult, null, { timeout: 30000 });
  result(await page.evaluate(() => window.discoveryResult));
} finally {
  await browser.close();
}
