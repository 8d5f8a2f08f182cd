// Loads one page in headless Chromium (Debian's, through playwright-core;
// never a downloaded browser) and prints what happened as JSON lines: the
// page's state, the rendered rows, console errors, page errors and failed
// requests. Environment: PAGE_URL, API_URL, TOKEN, CHROMIUM,
// PLAYWRIGHT_FROM (a package.json whose node_modules has playwright-core).
import { launchChromium } from "./chromium.mjs";
// With WAIT_FOR_VERSION=1 and a loaded page it prints the first report, then
// reads a data version from stdin (the test publishes it) and prints a second
// report once the page shows that version.
import { createInterface } from "node:readline";

const { context, close } = await launchChromium();
const report = { consoleErrors: [], pageErrors: [], failedRequests: [] };
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (message) => {
    if (message.type() === "error") report.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => report.pageErrors.push(String(error)));
  page.on("requestfailed", (request) =>
    report.failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
  );
  await page.addInitScript(
    (config) => {
      window.ANALYTICS_TEST = config;
    },
    { apiUrl: process.env.API_URL, token: process.env.TOKEN },
  );
  await page.goto(process.env.PAGE_URL);
  await page.waitForFunction(() => document.body.dataset.state !== "loading", null, { timeout: 30_000 });
  const snapshot = () =>
    page.evaluate(() => ({
      state: document.body.dataset.state,
      etag: document.body.dataset.etag ?? null,
      revalidated: document.body.dataset.revalidated ?? null,
      announced: document.body.dataset.announced ?? null,
      error: document.querySelector("#error").textContent,
      version: document.querySelector("#version").textContent,
      rows: [...document.querySelectorAll("#rows tbody tr")].map((tr) =>
        [...tr.cells].map((td) => td.textContent),
      ),
    }));
  Object.assign(report, await snapshot());
  if (process.env.WAIT_FOR_VERSION === "1" && report.state === "done") {
    // The page has subscribed; wait until /events announced the version it shows.
    await page.waitForFunction(() => document.body.dataset.announced !== undefined, null, { timeout: 30_000 });
    console.log(JSON.stringify({ ...report, ...(await snapshot()) }));
    const lines = createInterface({ input: process.stdin });
    const [published] = await lines[Symbol.asyncIterator]().next().then((r) => [r.value.trim()]);
    lines.close();
    // On a timeout the report still comes out: what the page showed and heard says why.
    await page
      .waitForFunction(
        (version) => document.querySelector("#version").textContent === version,
        published,
        { timeout: 30_000 },
      )
      .catch((error) => report.pageErrors.push(`waiting for ${published}: ${error.message}`));
    Object.assign(report, await snapshot());
  }
} finally {
  await close();
}
console.log(JSON.stringify(report));
