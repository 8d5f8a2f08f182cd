// Drives the console (/console) through an analyst's or an operator's visit
// in headless Chromium (Debian's, through playwright-core) and reports what
// it saw. Protocol: one JSON line per message on stdout; `{"need": ...}`
// asks the test for something (it answers one JSON line on stdin), and the
// last line is `{"report": ...}`.
//
// Environment: CONSOLE_URL, CHROMIUM, PLAYWRIGHT_FROM (a package.json whose
// node_modules has playwright-core), ARTIFACTS (screenshots and downloads
// go there), ROLE (analyst | operator), QUERY_SQL, SLOW_SQL, FORCE_TOKEN (a
// token with the role's scopes, for the forced admin call).
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { launchChromium } from "./chromium.mjs";

const env = process.env;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (message) => console.log(JSON.stringify(message));
async function need(what, extra = {}) {
  say({ need: what, ...extra });
  const { value, done } = await lines.next();
  if (done) throw new Error(`no answer to ${what}`);
  return JSON.parse(value);
}

const { context, close } = await launchChromium({
  viewport: { width: 1280, height: 800 },
  acceptDownloads: true,
});
const report = { consoleErrors: [], pageErrors: [], failedRequests: [], screenshots: {}, steps: [] };
let expectedErrors = [];
const page = context.pages()[0] ?? (await context.newPage());
page.on("console", (message) => {
  if (message.type() !== "error") return;
  const text = `${message.text()} @ ${message.location().url}`;
  const expected = expectedErrors.findIndex((pattern) => text.includes(pattern));
  if (expected >= 0) expectedErrors.splice(expected, 1);
  else report.consoleErrors.push(text);
});
page.on("pageerror", (error) => report.pageErrors.push(String(error)));
page.on("requestfailed", (request) => {
  const failure = request.failure()?.errorText;
  // A cancelled query is the test's own doing.
  if (failure !== "net::ERR_ABORTED" || !request.url().endsWith("/query")) {
    report.failedRequests.push(`${request.method()} ${request.url()}: ${failure}`);
  }
});

async function shot(name) {
  const path = join(env.ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: false });
  report.screenshots[name] = path;
}

const text = (selector) => page.locator(selector).first().textContent();

try {
  await page.goto(env.CONSOLE_URL);
  await page.waitForFunction(() => document.body.dataset.state === "signed-out");
  await shot("sign-in");
  report.steps.push("sign-in offered");

  await page.click("#sign-in");
  await page.waitForURL((url) => url.pathname === "/authorize");
  await shot("issuer");
  await page.click(`button[value="${env.ROLE}"]`);
  await page.waitForFunction(() => document.body.dataset.state === "ready", null, { timeout: 30_000 });
  await page.waitForSelector("#data-version");
  report.version = await text("#data-version");
  report.liveMode = await text("#live-mode");
  report.url = page.url();
  report.storage = await page.evaluate(() => ({
    local: localStorage.length,
    session: sessionStorage.length,
    cookie: document.cookie,
  }));
  report.adminPanel = (await page.locator("#admin").count()) > 0;
  report.adminButtons = await page.locator("#admin button").allTextContents();
  report.csp = (await page.request.get(env.CONSOLE_URL)).headers()["content-security-policy"];
  await shot("overview");
  report.steps.push("overview");

  if (env.ROLE === "operator") {
    await page.fill("#admin-letter", "1");
    await page.click('form[data-action="dlq-retry"] button');
    await page.waitForFunction(() => /Command \d+ \(dlq-retry\) pending/.test(document.querySelector("#admin-outcome")?.textContent ?? ""));
    report.commandPending = await text("#admin-outcome");
    await need("finish-command", { text: report.commandPending });
    await page.waitForFunction(() => / done/.test(document.querySelector("#admin-outcome")?.textContent ?? ""), null, { timeout: 15_000 });
    report.commandDone = await text("#admin-outcome");
    await shot("admin");
  } else {
    // Forced: the analyst calls the admin endpoint anyway (the browser logs the 403).
    expectedErrors.push("403");
    report.forced = await page.evaluate(async (token) => {
      const answer = await fetch("/admin/commands", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ kind: "backfill", args: { table: "inventory" } }),
      });
      return { status: answer.status, body: await answer.json() };
    }, env.FORCE_TOKEN);
  }

  await page.click('#nav a[data-view="schema"]');
  await page.waitForSelector('#view-schema details[data-table="inventory"]');
  await page.click('#view-schema details[data-table="inventory"] summary');
  report.schemaTables = await page.locator("#view-schema details").evaluateAll((nodes) => nodes.map((n) => n.dataset.table));
  report.inventoryColumns = await page
    .locator('#view-schema details[data-table="inventory"] tbody tr')
    .evaluateAll((rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
  await shot("schema");

  await page.click('#nav a[data-view="query"]');
  await page.waitForSelector("#sql");
  // Cancel: a slow query, aborted from the page.
  await page.fill("#sql", env.SLOW_SQL);
  await page.click("#run");
  await page.waitForFunction(() => document.querySelector("#view-query").dataset.state === "running");
  await page.click("#cancel");
  await page.waitForFunction(() => document.querySelector("#view-query").dataset.state !== "running");
  report.cancel = { state: await page.locator("#view-query").getAttribute("data-state"), error: await text("#query-error") };

  await page.fill("#sql", env.QUERY_SQL);
  await page.focus("#sql");
  await page.keyboard.press("Control+Enter");
  await page.waitForFunction(() => document.querySelector("#view-query").dataset.state === "done");
  report.summary = await text("#result-summary");
  report.pageLabel = await text("#page-label");
  report.firstPage = await page.locator("#result-table tbody tr").evaluateAll((rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)),
  );
  report.headers = await page.locator("#result-table thead th").allTextContents();
  report.chartKind = await page.locator("#result-chart .chart").getAttribute("data-kind");
  report.chartInk = await page.locator("#result-chart canvas").evaluate((canvas) => {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return painted;
  });
  await page.click("#result-grid .pager button:has-text('Next')");
  report.secondPageLabel = await text("#page-label");
  await shot("query");

  await page.selectOption("#download-format", "csv");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  report.downloadName = download.suggestedFilename();
  report.downloadPath = join(env.ARTIFACTS, "download.csv");
  await download.saveAs(report.downloadPath);

  await page.click('#nav a[data-view="named"]');
  await page.waitForSelector('form[data-query="low_stock"]');
  await page.fill("#p-low_stock-threshold", "5");
  await page.fill("#p-low_stock-limit", "10");
  await page.click('form[data-query="low_stock"] button[type="submit"]');
  await page.waitForSelector("#named-low_stock-results #result-table tbody tr");
  report.namedRows = await page.locator("#named-low_stock-results #result-table tbody tr").evaluateAll((rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)),
  );
  await shot("named");

  await page.click('#nav a[data-view="overview"]');
  await page.waitForSelector("#data-version");
  const { data_version: published } = await need("publish");
  await page.waitForFunction((v) => document.querySelector("#data-version")?.textContent === v, published, { timeout: 30_000 });
  report.versionAfterPublish = await text("#data-version");
  await shot("overview-after-publish");

  // Keyboard: the skip link comes first, Tab moves on to the sections, and
  // the skip link leads to the content.
  report.firstFocusable = await page.evaluate(
    () => document.querySelector("a[href], button:not([disabled]), input, select, textarea")?.textContent,
  );
  await page.focus(".skip");
  await page.keyboard.press("Tab");
  report.afterSkipTab = await page.evaluate(() => document.activeElement?.textContent);
  await page.focus(".skip");
  await page.keyboard.press("Enter");
  report.skipTarget = await page.evaluate(() => document.activeElement?.id);
  report.unlabelledControls = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((c) => c.type !== "hidden" && !(c.labels && c.labels.length) && !c.getAttribute("aria-label"))
      .map((c) => c.id || c.outerHTML.slice(0, 60)),
  );

  // Each screenshot: how much it varies (a blank page does not).
  const probe = await context.newPage();
  for (const [name, path] of Object.entries(report.screenshots)) {
    const data = (await readFile(path)).toString("base64");
    report.screenshots[name] = {
      path,
      ...(await probe.evaluate(async (b64) => {
        const image = new Image();
        image.src = `data:image/png;base64,${b64}`;
        await image.decode();
        const canvas = document.createElement("canvas");
        canvas.width = image.width;
        canvas.height = image.height;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(image, 0, 0);
        const px = ctx.getImageData(0, 0, image.width, image.height).data;
        let sum = 0, sq = 0, n = 0;
        const colours = new Set();
        for (let i = 0; i < px.length; i += 4) {
          const y = 0.2126 * px[i] + 0.7152 * px[i + 1] + 0.0722 * px[i + 2];
          sum += y; sq += y * y; n++;
          if (colours.size < 1000) colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
        }
        const mean = sum / n;
        return { width: image.width, height: image.height, stddev: Math.sqrt(sq / n - mean * mean), colours: colours.size };
      }, data)),
    };
  }
  await probe.close();
  report.expectedErrorsNotSeen = expectedErrors;
  report.state = "done";
} catch (error) {
  report.state = "error";
  report.error = String(error?.stack ?? error);
  await shot("failure").catch(() => {});
} finally {
  await close();
}
say({ report });
process.exit(0);
