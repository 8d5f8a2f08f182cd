// What the client does with answers today's API cannot give yet (a `next`
// cursor), and without the optional apache-arrow: checked against small
// local servers and a copy of the package with nothing installed beside it.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { AnalyticsClient } from "../dist/index.js";

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");

async function serve(handler) {
  const server = createServer(handler);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

function page(ids, next) {
  return {
    success: true,
    data: ids.map((id) => ({ id })),
    columns: [{ name: "id", type: "BIGINT" }],
    row_count: ids.length,
    truncated: false,
    data_version: "v1",
    execution_time_ms: 1,
    ...(next ? { next } : {}),
  };
}

test("pages() follows `next` with a cursor field until the API stops giving one", async () => {
  const bodies = [];
  const server = await serve(async (req, res) => {
    let text = "";
    for await (const chunk of req) text += chunk;
    const body = JSON.parse(text);
    bodies.push(body);
    const answer = { undefined: page([1, 2], "c1"), c1: page([3, 4], "c2"), c2: page([5]) }[body.cursor];
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
  });
  try {
    const client = new AnalyticsClient({ baseUrl: server.url, getToken: () => "t" });
    const ids = [];
    for await (const p of client.namedQueryPages("low_stock", { limit: 2 })) {
      ids.push(...p.rows.map((r) => r.id));
      assert.equal(p.query, "low_stock");
    }
    assert.deepEqual(ids, ["1", "2", "3", "4", "5"]);
    assert.deepEqual(
      bodies.map((b) => b.cursor),
      [undefined, "c1", "c2"],
    );
    assert.ok(bodies.every((b) => b.params.limit === 2), "every page repeats the params");
  } finally {
    server.close();
  }
});

test("pages() refuses a cursor that repeats instead of looping forever", async () => {
  const server = await serve((req, res) => {
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(page([1], "same")));
  });
  try {
    const client = new AnalyticsClient({ baseUrl: server.url, getToken: () => "t" });
    const pages = [];
    await assert.rejects(async () => {
      for await (const p of client.pages("SELECT 1", { a: 1 })) pages.push(p);
    }, /same next cursor twice/);
    assert.equal(pages.length, 2);
  } finally {
    server.close();
  }
});

test("without apache-arrow an Arrow call fails with missing_dependency, before any request", async () => {
  let requests = 0;
  const server = await serve((req, res) => {
    requests++;
    res.writeHead(500).end();
  });
  const dir = await mkdtemp(join(tmpdir(), "analytics-client-"));
  try {
    // A copy of the built package with no node_modules anywhere above it.
    await cp(join(packageRoot, "dist"), join(dir, "dist"), { recursive: true });
    await writeFile(join(dir, "package.json"), '{"type": "module"}');
    const script = `
      import { AnalyticsClient } from "./dist/index.js";
      const client = new AnalyticsClient({ baseUrl: ${JSON.stringify(server.url)}, getToken: () => "t" });
      try { await client.queryArrow("SELECT 1"); console.log("no error"); }
      catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { cwd: dir });
    const error = JSON.parse(stdout);
    assert.deepEqual([error.name, error.code], ["AnalyticsError", "missing_dependency"]);
    assert.match(error.message, /npm install apache-arrow/);
    assert.equal(requests, 0);
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
