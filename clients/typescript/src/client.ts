/**
 * `AnalyticsClient`: the API's read endpoints as typed calls.
 *
 * Every call goes through `send()`: it asks `getToken()` for a token on each
 * attempt (so a refreshed Auth0 token is picked up), retries 429/503 as
 * retry.ts decides, sends `If-None-Match` when the ETag cache knows the
 * request, and turns every failure into one `AnalyticsError`.
 *
 * Headers sent: `Authorization`, `Content-Type: application/json` (POST) and,
 * when an ETag is known, `If-None-Match` (the API's CORS policy allows all
 * three and exposes `ETag`, so revalidation works cross-origin too).
 */

import { type ArrowLoader, decodeArrow, defaultArrowLoader, loadArrowModule } from "./arrow.js";
import { EtagCache } from "./etag-cache.js";
import { AnalyticsError, errorFromResponse } from "./errors.js";
import { type DataVersionOptions, subscribeDataVersion } from "./data-version.js";
import {
  type ResolvedRetry,
  type RetryOptions,
  parseRetryAfter,
  resolveRetry,
  retryDelay,
  sleep,
} from "./retry.js";
import type {
  ArrowResult,
  Column,
  Health,
  NamedQueries,
  NamedQueryInfo,
  QueryResult,
  Row,
  SchemaInfo,
} from "./types.js";
import { type Int64Mode, normalizeRows } from "./values.js";

export type TokenProvider = () => Promise<string> | string;

export interface ClientOptions {
  /** The API's base URL, e.g. `https://analytics-api.example.com`. */
  baseUrl: string;
  /** Returns a Bearer token; Auth0: `() => getAccessTokenSilently()`. */
  getToken?: TokenProvider;
  /** 429/503 retries (default: 3 attempts honouring Retry-After); false disables. */
  retry?: RetryOptions | false;
  /** Remember answers with their ETag and revalidate (default on, 200 entries). */
  etagCache?: boolean | { maxEntries?: number };
  /** How BIGINT/HUGEINT columns come back: "string" (default) or "bigint". */
  int64?: Int64Mode;
  /** Per attempt (default 30 000 ms). */
  timeoutMs?: number;
  /** Loads apache-arrow for Arrow results (see arrow.ts). */
  loadArrow?: ArrowLoader;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface RequestOptions {
  signal?: AbortSignal;
  /** Rows per page (at most the API's MAX_RESULT_ROWS, its default). */
  pageSize?: number;
  /** "exact": the answer carries `total`, the row count of the whole result. */
  count?: "exact";
  timeoutMs?: number;
  /** false: neither use nor fill the ETag cache for this call. */
  etagCache?: boolean;
  /**
   * The data version the answer should come from, e.g. the one
   * `onDataVersion` just announced. Gunicorn workers and replicas swap to a
   * new version one by one, so the next request can reach one still serving
   * the old one: while the answer names another version the call is repeated
   * (after 250 ms, doubling to 2 s, each a request against the rate limit)
   * for up to `dataVersionWaitMs`; then the last answer is returned as it is
   * (its `dataVersion` says which it is).
   */
  dataVersion?: string;
  /** How long to wait for `dataVersion` (default 10 000 ms). */
  dataVersionWaitMs?: number;
}

export interface QueryOptions extends RequestOptions {
  /**
   * GET /query?q= (revalidates with 304 today) or POST /query (needed for
   * params). Default: GET without params when the URL stays short, else POST.
   */
  method?: "GET" | "POST";
}

type Params = Record<string, unknown> | unknown[];

interface Call {
  method: "GET" | "POST";
  path: string;
  query?: Record<string, string>;
  body?: Record<string, unknown>;
  auth: boolean;
  options?: RequestOptions;
  /** Statuses that are answers, not errors (GET /health answers 503 while starting). */
  okStatuses?: number[];
  binary?: boolean;
}

interface Answer {
  status: number;
  headers: Headers;
  json?: unknown;
  bytes?: Uint8Array;
  fromCache: boolean;
  etag: string | null;
}

const MAX_GET_URL = 2000;

function pagingFields(options: RequestOptions | undefined): Record<string, string | number> {
  const fields: Record<string, string | number> = {};
  if (options?.pageSize !== undefined) fields.page_size = options.pageSize;
  if (options?.count !== undefined) fields.count = options.count;
  return fields;
}

export class AnalyticsClient<Q extends NamedQueries = NamedQueries> {
  readonly baseUrl: string;
  private readonly getToken: TokenProvider | undefined;
  private readonly retry: ResolvedRetry;
  private readonly cache: EtagCache | null;
  private readonly int64: Int64Mode;
  private readonly timeoutMs: number;
  private readonly loadArrow: ArrowLoader;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.getToken = options.getToken;
    this.retry = resolveRetry(options.retry);
    const cacheOption = options.etagCache ?? true;
    this.cache =
      cacheOption === false
        ? null
        : new EtagCache(cacheOption === true ? undefined : cacheOption.maxEntries);
    this.int64 = options.int64 ?? "string";
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.loadArrow = options.loadArrow ?? defaultArrowLoader;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Readiness and data version (no token needed; answers while starting too). */
  async health(options?: RequestOptions): Promise<Health> {
    const answer = await this.send({
      method: "GET",
      path: "/health",
      auth: false,
      okStatuses: [503],
      options: { ...options, etagCache: false },
    });
    return answer.json as Health;
  }

  /** Tables and columns this application may read (scope read:schema). */
  async schema(options?: RequestOptions): Promise<SchemaInfo> {
    const answer = await this.send({ method: "GET", path: "/schema", auth: true, options });
    const body = answer.json as { data_version: string; tables: SchemaInfo["tables"] };
    return { dataVersion: body.data_version, tables: body.tables };
  }

  /** The named queries this application may run, with their parameters. */
  async listNamedQueries(options?: RequestOptions): Promise<NamedQueryInfo[]> {
    const answer = await this.send({ method: "GET", path: "/queries", auth: true, options });
    return (answer.json as { queries: NamedQueryInfo[] }).queries;
  }

  /** One read-only SELECT; `params` bind `$name` (object) or `?` (array) placeholders. */
  async query<R = Row>(sql: string, params?: Params, options?: QueryOptions): Promise<QueryResult<R>> {
    return this.atVersion(options, () => this.jsonResult<R>(this.queryCall(sql, params, options, {})));
  }

  /** A named query from the whitelist (what frontend apps should call). */
  async namedQuery<N extends keyof Q & string>(
    name: N,
    params?: Q[N]["params"],
    options?: RequestOptions,
  ): Promise<QueryResult<Q[N]["row"]>> {
    return this.atVersion(options, () =>
      this.jsonResult<Q[N]["row"]>(this.namedCall(name, params, options, {}), name),
    );
  }

  /** A query as an Arrow table (needs the optional peer dependency apache-arrow). */
  async queryArrow(sql: string, params?: Params, options?: QueryOptions): Promise<ArrowResult> {
    return this.atVersion(options, () =>
      this.arrowResult(this.queryCall(sql, params, options, { format: "arrow" })),
    );
  }

  async namedQueryArrow<N extends keyof Q & string>(
    name: N,
    params?: Q[N]["params"],
    options?: RequestOptions,
  ): Promise<ArrowResult> {
    return this.atVersion(options, () =>
      this.arrowResult(this.namedCall(name, params, options, { format: "arrow" })),
    );
  }

  /**
   * Every page of a query: yields the first answer, then follows `next` while
   * the API gives one (the same request with `cursor` added: a body field on
   * POST, a query parameter on GET). A page after a new data version fails
   * with `stale_cursor`: start again.
   */
  async *pages<R = Row>(
    sql: string,
    params?: Params,
    options?: QueryOptions,
  ): AsyncGenerator<QueryResult<R>, void, undefined> {
    yield* this.follow<R>((cursor) =>
      this.queryCall(sql, params, options, cursor === null ? {} : { cursor }),
    );
  }

  async *namedQueryPages<N extends keyof Q & string>(
    name: N,
    params?: Q[N]["params"],
    options?: RequestOptions,
  ): AsyncGenerator<QueryResult<Q[N]["row"]>, void, undefined> {
    yield* this.follow<Q[N]["row"]>((cursor) =>
      this.namedCall(name, params, options, cursor === null ? {} : { cursor }),
      name,
    );
  }

  /**
   * Calls `callback` with the current data version, then with each new one,
   * from the API's `GET /events` stream (see data-version.ts); returns a
   * function that stops the subscription.
   */
  onDataVersion(callback: (version: string) => void, options?: DataVersionOptions): () => void {
    return subscribeDataVersion(
      {
        url: `${this.baseUrl}/events`,
        fetch: this.fetchImpl,
        token: () => this.token(1),
        ticket: async () => {
          const answer = await this.send({
            method: "POST",
            path: "/events/ticket",
            auth: true,
            options: { etagCache: false },
          });
          return (answer.json as { ticket: string }).ticket;
        },
        health: () => this.health(),
      },
      callback,
      options,
    );
  }

  /** Forget every remembered answer (e.g. on logout). */
  clearCache(): void {
    this.cache?.clear();
  }

  private queryCall(
    sql: string,
    params: Params | undefined,
    options: QueryOptions | undefined,
    extra: Record<string, string>,
  ): Call {
    const paging = pagingFields(options);
    const query: Record<string, string> = { q: sql, ...extra };
    for (const [key, value] of Object.entries(paging)) query[key] = String(value);
    const getUrlLength =
      this.baseUrl.length + "/query?".length + new URLSearchParams(query).toString().length;
    const method =
      options?.method ?? (params === undefined && getUrlLength <= MAX_GET_URL ? "GET" : "POST");
    if (method === "GET") {
      if (params !== undefined) {
        throw new TypeError("GET /query takes no params: use method 'POST' (the default)");
      }
      return { method, path: "/query", query, auth: true, options, binary: "format" in extra };
    }
    const body: Record<string, unknown> = { sql, ...extra, ...paging };
    if (params !== undefined) body.params = params;
    return { method, path: "/query", body, auth: true, options, binary: "format" in extra };
  }

  private namedCall(
    name: string,
    params: Record<string, unknown> | undefined,
    options: RequestOptions | undefined,
    extra: Record<string, string>,
  ): Call {
    return {
      method: "POST",
      path: `/queries/${encodeURIComponent(name)}`,
      body: { params: params ?? {}, ...extra, ...pagingFields(options) },
      auth: true,
      options,
      binary: "format" in extra,
    };
  }

  private async jsonResult<R>(call: Call, name?: string): Promise<QueryResult<R>> {
    const answer = await this.send(call);
    const body = answer.json as {
      data?: unknown;
      columns?: Column[];
      row_count?: number;
      truncated?: boolean;
      data_version?: string;
      execution_time_ms?: number;
      query?: string;
      next?: string | null;
      total?: number;
    };
    if (!Array.isArray(body?.data) || !Array.isArray(body.columns)) {
      throw new AnalyticsError({
        status: answer.status,
        code: "invalid_response",
        message: "the answer has no data/columns (was a non-JSON format asked for?)",
        requestId: answer.headers.get("x-request-id"),
      });
    }
    // The cached body is shared between answers: normalise a copy.
    const rows = (answer.fromCache ? structuredClone(body.data) : body.data) as Row[];
    const result: QueryResult<R> = {
      rows: normalizeRows<R>(rows, body.columns, this.int64),
      columns: body.columns,
      rowCount: body.row_count ?? rows.length,
      truncated: body.truncated ?? false,
      dataVersion: body.data_version ?? answer.headers.get("x-data-version") ?? "",
      executionTimeMs: body.execution_time_ms ?? 0,
      next: typeof body.next === "string" && body.next !== "" ? body.next : null,
      ...(typeof body.total === "number" ? { total: body.total } : {}),
      etag: answer.etag,
      fromCache: answer.fromCache,
      requestId: answer.headers.get("x-request-id"),
    };
    // The API's answer does not name the query; the client fills it in from the call.
    const query = body.query ?? name;
    if (query !== undefined) result.query = query;
    return result;
  }

  private async arrowResult(call: Call): Promise<ArrowResult> {
    const arrow = await loadArrowModule(this.loadArrow); // fail before any request
    const answer = await this.send({ ...call, options: { ...call.options, etagCache: false } });
    return decodeArrow(arrow, answer.bytes ?? new Uint8Array(), answer.headers);
  }

  /** Repeats `run` while its answer is from another version than `options.dataVersion`. */
  private async atVersion<T extends { dataVersion: string }>(
    options: RequestOptions | undefined,
    run: () => Promise<T>,
  ): Promise<T> {
    const wanted = options?.dataVersion;
    const deadline = Date.now() + (options?.dataVersionWaitMs ?? 10_000);
    for (let delay = 250; ; delay = Math.min(2 * delay, 2_000)) {
      const result = await run();
      if (wanted === undefined || result.dataVersion === wanted) return result;
      const left = deadline - Date.now();
      if (left <= 0) return result;
      await sleep(Math.min(delay, left), options?.signal);
    }
  }

  private async *follow<R>(
    callFor: (cursor: string | null) => Call,
    name?: string,
  ): AsyncGenerator<QueryResult<R>, void, undefined> {
    let cursor: string | null = null;
    const seen = new Set<string>();
    do {
      const page: QueryResult<R> = await this.jsonResult<R>(callFor(cursor), name);
      yield page;
      cursor = page.next;
      if (cursor !== null) {
        if (seen.has(cursor)) {
          throw new AnalyticsError({
            status: 0,
            code: "invalid_response",
            message: "the API returned the same next cursor twice",
          });
        }
        seen.add(cursor);
      }
    } while (cursor !== null);
  }

  private async send(call: Call): Promise<Answer> {
    const url = new URL(this.baseUrl + call.path);
    for (const [key, value] of Object.entries(call.query ?? {})) url.searchParams.set(key, value);
    const bodyText = call.body === undefined ? undefined : JSON.stringify(call.body);
    const useCache = this.cache !== null && call.options?.etagCache !== false && !call.binary;
    const cacheKey = `${call.method} ${url.toString()} ${bodyText ?? ""}`;

    for (let attempt = 1; ; attempt++) {
      const headers: Record<string, string> = {};
      if (call.auth && this.getToken) headers.Authorization = `Bearer ${await this.token(attempt)}`;
      if (bodyText !== undefined) headers["Content-Type"] = "application/json";
      const cached = useCache ? this.cache?.get(cacheKey) : undefined;
      if (cached) headers["If-None-Match"] = cached.etag;

      const response = await this.fetchOnce(url, call, headers, bodyText, attempt);
      const ok = response.ok || (call.okStatuses ?? []).includes(response.status);
      if (response.status === 304 && cached) {
        await response.arrayBuffer().catch(() => undefined); // finish the exchange
        return {
          status: 304,
          headers: response.headers,
          json: cached.body,
          fromCache: true,
          etag: response.headers.get("etag") ?? cached.etag,
        };
      }
      if (ok) return this.readAnswer(response, call, attempt, useCache ? cacheKey : null);

      const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"));
      const delay = retryDelay(this.retry, attempt, response.status, retryAfterMs);
      if (delay === null) {
        throw await errorFromResponse(
          response,
          attempt,
          retryAfterMs === null ? null : retryAfterMs / 1000,
        );
      }
      await response.body?.cancel().catch(() => undefined);
      this.retry.onRetry?.({ attempt, status: response.status, delayMs: delay });
      await sleep(delay, call.options?.signal);
    }
  }

  private async token(attempt: number): Promise<string> {
    try {
      const token = await this.getToken?.();
      if (!token) throw new Error("getToken() returned no token");
      return token;
    } catch (cause) {
      throw new AnalyticsError({
        status: 0,
        code: "token_error",
        message: `could not get an access token: ${(cause as Error)?.message ?? cause}`,
        attempts: attempt,
        cause,
      });
    }
  }

  private async fetchOnce(
    url: URL,
    call: Call,
    headers: Record<string, string>,
    body: string | undefined,
    attempt: number,
  ): Promise<Response> {
    const timeout = AbortSignal.timeout(call.options?.timeoutMs ?? this.timeoutMs);
    const signal = call.options?.signal ? AbortSignal.any([call.options.signal, timeout]) : timeout;
    try {
      return await this.fetchImpl(url, { method: call.method, headers, body, signal });
    } catch (cause) {
      if (call.options?.signal?.aborted) {
        throw new AnalyticsError({ status: 0, code: "aborted", message: "request aborted", attempts: attempt, cause });
      }
      if (timeout.aborted) {
        throw new AnalyticsError({
          status: 0,
          code: "timeout",
          message: `no answer from ${url.origin} within ${call.options?.timeoutMs ?? this.timeoutMs} ms`,
          attempts: attempt,
          cause,
        });
      }
      throw new AnalyticsError({
        status: 0,
        code: "network_error",
        message: `could not reach ${url.origin} (offline, refused, or blocked by CORS): ${(cause as Error)?.message ?? cause}`,
        attempts: attempt,
        cause,
      });
    }
  }

  private async readAnswer(
    response: Response,
    call: Call,
    attempt: number,
    cacheKey: string | null,
  ): Promise<Answer> {
    const etag = response.headers.get("etag");
    if (call.binary) {
      const bytes = new Uint8Array(await response.arrayBuffer());
      return { status: response.status, headers: response.headers, bytes, fromCache: false, etag };
    }
    const text = await response.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (cause) {
      throw new AnalyticsError({
        status: response.status,
        code: "invalid_response",
        message: `expected JSON from ${call.path}, got ${response.headers.get("content-type") ?? "no content type"}`,
        requestId: response.headers.get("x-request-id"),
        attempts: attempt,
        cause,
      });
    }
    if (cacheKey !== null && etag && this.cache) this.cache.set(cacheKey, { etag, body: json });
    return { status: response.status, headers: response.headers, json, fromCache: false, etag };
  }
}
