// Opens discovery-web's example page with the options in its URL's # part
// and prints what the page found (window.discoveryResult). With a third
// argument (options without the registry and DoH), it then runs discovery
// again in the same page from the cache the first run wrote, and once more
// after tearing the stored value (it must be set aside, not read).
//   node discovery.mjs <page URL> <SPKI hash> [<cache-only options JSON>]
import { launch, result, watch } from './chromium.mjs';

const [url, spki, cacheOptions] = process.argv.slice(2);
const browser = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
try {
  const page = await browser.newPage();
  watch(page);
  await page.goto(url);
  await page.waitForFunction(() => window.discoveryResult, null, { timeout: 30000 });
  const found = await page.evaluate(() => window.discoveryResult);
  if (cacheOptions) {
    const options = JSON.parse(cacheOptions);
    found.cached = await page.evaluate(async (opts) => {
      const module = await import('./discovery.js');
      return module.runDiscovery(opts);
    }, options);
    found.torn = await page.evaluate(async (opts) => {
      const key = 'zajel.discovery';
      const value = localStorage.getItem(key);
      localStorage.setItem(key, value.slice(0, value.length - 20));
      const module = await import('./discovery.js');
      const report = await module.runDiscovery({ ...opts, writeCache: false });
      return { report, setAside: localStorage.getItem(`${key}.corrupt`) !== null };
    }, options);
  }
  result(found);
} finally {
  await browser.close();
}
