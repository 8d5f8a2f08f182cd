// The client against a real API process (Gunicorn, a real snapshot, real tokens).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { AnalyticsClient, AnalyticsError } from "../dist/index.js";
import { startApi } from "./api-process.mjs";

let api;
before(async () => {
  api = await startApi();
});
after(async () => {
  await api?.close();
});

/** A client whose fetch records every HTTP status it saw. */
function recordingClient(options = {}) {
  const statuses = [];
  const client = new AnalyticsClient({
    baseUrl: api.url,
    getToken: async () => api.token,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      statuses.push({ status: response.status, method: init.method, headers: init.headers });
      return response;
    },
    ...options,
  });
  return { client, statuses };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof AnalyticsError, `expected AnalyticsError, got ${error}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

describe("reads", () => {
  test("health needs no token and names the served version", async () => {
    const client = new AnalyticsClient({ baseUrl: api.url });
    const health = await client.health();
    assert.equal(health.ready, true);
    assert.match(health.data_version, /^\d{8}T\d+Z$/);
  });

  test("health of an API without data answers ready=false instead of throwing", async () => {
    const health = await new AnalyticsClient({ baseUrl: api.empty_url }).health();
    assert.equal(health.ready, false);
    assert.equal(health.status, "starting");
  });

  test("query over GET returns typed rows and revalidates with 304 from the ETag cache", async () => {
    const { client, statuses } = recordingClient();
    const sql = "SELECT id, warehouse, quantity FROM inventory WHERE id <= 5 ORDER BY id";
    const first = await client.query(sql);
    assert.equal(first.rowCount, 5);
    // range() makes BIGINT columns: strings by default, whatever their size.
    assert.deepEqual(first.rows.map((r) => r.id), ["1", "2", "3", "4", "5"]);
    assert.deepEqual(first.columns.map((c) => c.name), ["id", "warehouse", "quantity"]);
    assert.equal(first.fromCache, false);
    assert.match(first.etag, /^W\/"/);
    assert.equal(first.truncated, false);
    assert.equal(first.next, null);
    assert.match(first.requestId, /^[0-9a-f]{32}$/);

    const second = await client.query(sql);
    assert.equal(second.fromCache, true);
    assert.deepEqual(second.rows, first.rows);
    assert.deepEqual(statuses.map((s) => s.status), [200, 304]);
    assert.equal(statuses[1].headers["If-None-Match"], first.etag);
    assert.equal(statuses[0].headers["If-None-Match"], undefined);

    const uncached = await client.query(sql, undefined, { etagCache: false });
    assert.equal(uncached.fromCache, false);
    assert.equal(statuses.at(-1).status, 200);
  });

  test("query with params goes over POST and binds them", async () => {
    const { client, statuses } = recordingClient();
    const result = await client.query("SELECT id FROM inventory WHERE id <= $n ORDER BY id", { n: 3 });
    assert.deepEqual(result.rows, [{ id: "1" }, { id: "2" }, { id: "3" }]);
    assert.equal(statuses[0].method, "POST");
    const positional = await client.query("SELECT ?::INTEGER + 1 AS v", [41]);
    assert.deepEqual(positional.rows, [{ v: 42 }]); // INTEGER: a plain number
  });

  test("a named query runs with typed params and reports its name", async () => {
    const { client } = recordingClient();
    const result = await client.namedQuery("low_stock", { threshold: 5, limit: 7 });
    assert.equal(result.query, "low_stock");
    assert.ok(result.rows.length > 0 && result.rows.length <= 7);
    for (const row of result.rows) assert.ok(BigInt(row.quantity) <= 5n);
    const defaults = await client.namedQuery("low_stock");
    assert.ok(defaults.rows.every((r) => BigInt(r.quantity) <= 10n));
  });

  test("listNamedQueries and schema describe what the app may use", async () => {
    const { client } = recordingClient();
    const queries = await client.listNamedQueries();
    const lowStock = queries.find((q) => q.name === "low_stock");
    assert.equal(lowStock.parameters.limit.maximum, 1000);
    assert.equal(lowStock.parameters.threshold.default, 10);
    const schema = await client.schema();
    assert.ok(schema.dataVersion);
    assert.deepEqual(Object.keys(schema.tables).sort(), ["inventory", "orders", "products"]);
    assert.ok(schema.tables.inventory.columns.some((c) => c.name === "quantity"));
  });
});

describe("big numbers", () => {
  test("BIGINT/HUGEINT columns are strings by default, whatever their size; decimals stay exact", async () => {
    const { client } = recordingClient();
    const [row] = (await client.namedQuery("big_numbers", { label: "a" })).rows;
    assert.equal(row.big, "9007199254740993"); // 2^53 + 1: a JS number would say ...992
    assert.equal(row.small, "42"); // small BIGINTs arrive as numbers: same type anyway
    assert.equal(row.most_negative, "-9223372036854775807");
    assert.equal(row.huge, "170141183460469231731687303715884105727");
    assert.equal(row.amount, "12345678901234567.89");
    assert.equal(row.tenth, "0.10");
    assert.equal(row.label, "a");
  });

  test("int64: 'bigint' gives bigint values", async () => {
    const { client } = recordingClient({ int64: "bigint" });
    const [row] = (await client.namedQuery("big_numbers")).rows;
    assert.equal(row.big, 9007199254740993n);
    assert.equal(row.small, 42n);
    assert.equal(row.huge, 2n ** 127n - 1n);
    assert.equal(row.amount, "12345678901234567.89");
  });

  test("rows from the ETag cache are converted the same way", async () => {
    const { client } = recordingClient({ int64: "bigint" });
    const sql = "SELECT 9007199254740993::BIGINT AS big, 7::BIGINT AS small";
    await client.query(sql);
    const again = await client.query(sql);
    assert.equal(again.fromCache, true);
    assert.deepEqual(again.rows, [{ big: 9007199254740993n, small: 7n }]);
  });
});

describe("errors", () => {
  test("an API error carries the API's shape and the HTTP status", async () => {
    const { client } = recordingClient();
    const error = await rejection(client.query("SELEC nope"));
    assert.equal(error.status, 400);
    assert.equal(error.code, "syntax_error");
    assert.match(error.requestId, /^[0-9a-f]{32}$/);
    assert.equal(error.body.success, false);
    assert.equal(error.body.error.request_id, error.requestId);
    assert.equal(error.retryable, false);
    assert.equal(error.attempts, 1);
  });

  test("named-query and auth failures map to their documented codes", async () => {
    const { client } = recordingClient();
    assert.equal((await rejection(client.namedQuery("nope"))).code, "unknown_query");
    const invalid = await rejection(client.namedQuery("low_stock", { limit: 5000 }));
    assert.deepEqual([invalid.status, invalid.code], [422, "invalid_parameters"]);
    assert.match(invalid.message, /limit/);

    const expired = new AnalyticsClient({ baseUrl: api.url, getToken: () => api.expired_token });
    const unauthorized = await rejection(expired.query("SELECT 1"));
    assert.deepEqual([unauthorized.status, unauthorized.code], [401, "invalid_token"]);

    const noSchema = new AnalyticsClient({ baseUrl: api.url, getToken: () => api.schema_less_token });
    const forbidden = await rejection(noSchema.schema());
    assert.deepEqual([forbidden.status, forbidden.code], [403, "insufficient_scope"]);
  });

  test("a failing token provider, an unreachable API and a timeout are AnalyticsErrors too", async () => {
    const broken = new AnalyticsClient({
      baseUrl: api.url,
      getToken: async () => {
        throw new Error("login required");
      },
    });
    const tokenError = await rejection(broken.query("SELECT 1"));
    assert.deepEqual([tokenError.status, tokenError.code], [0, "token_error"]);
    assert.match(tokenError.message, /login required/);

    const nowhere = new AnalyticsClient({ baseUrl: "http://127.0.0.1:9", getToken: () => "t" });
    assert.equal((await rejection(nowhere.query("SELECT 1"))).code, "network_error");

    const { client } = recordingClient({ timeoutMs: 1 });
    const slow = await rejection(client.query("SELECT count(*) FROM range(100000000) a, range(10) b"));
    assert.equal(slow.code, "timeout");
  });
});

describe("retries", () => {
  test("429 is retried after Retry-After and then succeeds", async () => {
    const token = await api.mint(`retry-${Date.now()}`, "limited-app");
    const waits = [];
    const client = new AnalyticsClient({
      baseUrl: api.url,
      getToken: () => token,
      etagCache: false,
      retry: { maxAttempts: 5, maxDelayMs: 10_000, onRetry: (info) => waits.push(info) },
    });
    const started = Date.now();
    for (let i = 0; i < api.rate_limit.requests + 1; i++) {
      const result = await client.namedQuery("low_stock", { limit: 1 });
      assert.equal(result.rows.length, 1);
    }
    assert.ok(waits.length >= 1, "the last request should have been rate limited once");
    assert.equal(waits[0].status, 429);
    assert.ok(waits[0].delayMs >= 1000, `Retry-After is whole seconds, waited ${waits[0].delayMs}`);
    assert.ok(Date.now() - started >= waits[0].delayMs);
  });

  test("without retries the 429 surfaces with its Retry-After", async () => {
    const token = await api.mint(`noretry-${Date.now()}`, "limited-app");
    const client = new AnalyticsClient({ baseUrl: api.url, getToken: () => token, retry: false });
    let error;
    for (let i = 0; i <= api.rate_limit.requests && !error; i++) {
      error = await client.namedQuery("low_stock", { limit: 1 }).then(
        () => undefined,
        (e) => e,
      );
    }
    assert.ok(error instanceof AnalyticsError);
    assert.deepEqual([error.status, error.code, error.retryable], [429, "rate_limited", true]);
    assert.ok(error.retryAfterSeconds >= 1 && error.retryAfterSeconds <= api.rate_limit.window_seconds);
  });

  test("503 no_data: honours Retry-After within maxDelayMs, gives up at once past it", async () => {
    const impatient = new AnalyticsClient({
      baseUrl: api.empty_url,
      getToken: () => api.token,
      retry: { maxAttempts: 3, maxDelayMs: 1000 },
    });
    const quick = await rejection(impatient.query("SELECT 1"));
    assert.deepEqual([quick.status, quick.code, quick.attempts], [503, "no_data", 1]);
    assert.equal(quick.retryAfterSeconds, 5);

    const patient = new AnalyticsClient({
      baseUrl: api.empty_url,
      getToken: () => api.token,
      retry: { maxAttempts: 2, maxDelayMs: 6000 },
    });
    const started = Date.now();
    const gaveUp = await rejection(patient.query("SELECT 1"));
    assert.equal(gaveUp.attempts, 2);
    assert.ok(Date.now() - started >= 5000, "waited the Retry-After before the second attempt");
  });
});

describe("arrow", () => {
  test("queryArrow decodes the IPC stream with apache-arrow, keeping int64 exact", async () => {
    const { client } = recordingClient();
    const result = await client.queryArrow("SELECT id, warehouse FROM inventory ORDER BY id LIMIT 12");
    assert.equal(result.rowCount, 12);
    assert.equal(result.table.numRows, 12);
    assert.deepEqual(result.columns.map((c) => c.name), ["id", "warehouse"]);
    assert.equal(result.dataVersion, api.data_version);
    assert.equal(result.truncated, false);

    const big = await client.namedQueryArrow("big_numbers");
    assert.equal(big.table.getChild("big").get(0), 9007199254740993n);
    assert.equal(big.columns.find((c) => c.name === "amount").type, "DECIMAL(38,2)");
  });
});

describe("pagination and data versions", () => {
  test("pages() follows the API's next cursor to the end, with a total", async () => {
    const { client } = recordingClient();
    const sql = "SELECT id FROM inventory ORDER BY id";
    const pages = [];
    for await (const page of client.pages(sql, undefined, { pageSize: 70, count: "exact" })) pages.push(page);
    const ids = pages.flatMap((p) => p.rows.map((r) => Number(r.id)));
    assert.ok(pages.length >= 3, `pages: ${pages.length}`);
    assert.equal(pages[0].total, ids.length);
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(pages.at(-1).next, null);
    const named = [];
    for await (const p of client.namedQueryPages("low_stock", { threshold: 49, limit: 100 }, { pageSize: 40 })) named.push(p);
    assert.deepEqual(named.map((p) => p.rows.length), [40, 40, 20]);
  });

  test("a named query over POST revalidates with If-None-Match and gets 304", async () => {
    const { client, statuses } = recordingClient();
    const first = await client.namedQuery("low_stock", { threshold: 3, limit: 5 });
    const second = await client.namedQuery("low_stock", { threshold: 3, limit: 5 });
    assert.equal(first.fromCache, false);
    assert.equal(second.fromCache, true);
    assert.deepEqual(second.rows, first.rows);
    assert.deepEqual(statuses.map((s) => s.status), [200, 304]);
  });

  test("onDataVersion (GET /events over fetch) reports the current version, then a newly published one; old ETags stop matching", async () => {
    const { client, statuses } = recordingClient();
    const sql = "SELECT count(*) AS n FROM inventory";
    const before = await client.query(sql);
    const seen = [];
    let resolveNext;
    const changed = new Promise((resolve) => (resolveNext = resolve));
    const stop = client.onDataVersion(
      (version) => {
        seen.push(version);
        if (seen.length === 2) resolveNext();
      },
      { retryMs: 200 },
    );
    let published;
    try {
      await new Promise((resolve) => setTimeout(resolve, 400));
      assert.deepEqual(seen, [before.dataVersion]);
      published = await api.publish();
      await changed;
      assert.deepEqual(seen, [before.dataVersion, published]);
    } finally {
      stop();
    }
    // Each Gunicorn worker swaps on its own poll: dataVersion asks again
    // while the answer comes from a worker still on the old version.
    const after = await client.query(sql, undefined, { dataVersion: published });
    assert.equal(after.fromCache, false);
    assert.equal(statuses.at(-1).status, 200);
    assert.equal(after.dataVersion, seen[1]);
    assert.equal(after.rows[0].n, "250");
  });

  test("dataVersion: one request when the API serves that version; repeated until dataVersionWaitMs when it does not", async () => {
    const { client, statuses } = recordingClient();
    const served = (await client.namedQuery("low_stock", { threshold: 5 })).dataVersion;
    statuses.length = 0;
    const same = await client.namedQuery("low_stock", { threshold: 5 }, { dataVersion: served });
    assert.equal(same.dataVersion, served);
    assert.equal(statuses.length, 1);

    statuses.length = 0;
    const started = Date.now();
    const other = await client.namedQuery(
      "low_stock",
      { threshold: 5 },
      { dataVersion: "19700101T000000000000Z", dataVersionWaitMs: 1_200 },
    );
    const waited = Date.now() - started;
    // The last answer comes back as it is: from the version the API serves.
    assert.equal(other.dataVersion, served);
    assert.ok(waited >= 1_200, `gave up after ${waited} ms`);
    // 250 + 500 + 450 ms of waits: four requests, revalidated with the ETag.
    assert.equal(statuses.length, 4);
    assert.ok(statuses.every((s) => s.status === 304));
  });

  test("dataVersion: an aborted wait rejects with the abort", async () => {
    const { client } = recordingClient();
    const abort = new AbortController();
    const call = client.query("SELECT 1 AS one", undefined, {
      dataVersion: "19700101T000000000000Z",
      signal: abort.signal,
    });
    setTimeout(() => abort.abort(), 300);
    await assert.rejects(call);
  });
});
