// Loads one page in headless Chromium (Debian's, through playwright-core;
// never a downloaded browser) and prints what happened as one JSON line:
// the page's state, the rendered rows, console errors, page errors and
// failed requests. Environment: PAGE_URL, API_URL, TOKEN, CHROMIUM,
// PLAYWRIGHT_FROM (a package.json whose node_modules has playwright-core).
import { launchChromium } from "./chromium.mjs";

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
  Object.assign(
    report,
    await page.evaluate(() => ({
      state: document.body.dataset.state,
      etag: document.body.dataset.etag ?? null,
      error: document.querySelector("#error").textContent,
      version: document.querySelector("#version").textContent,
      rows: [...document.querySelectorAll("#rows tbody tr")].map((tr) =>
        [...tr.cells].map((td) => td.textContent),
      ),
    })),
  );
} finally {
  await close();
}
console.log(JSON.stringify(report));
