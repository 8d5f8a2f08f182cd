/**
 * The API as the console uses it: the @analytics/client for the read
 * endpoints, plus adapters for what some servers do not have yet. Each
 * adapter answers null (or falls back) on 404, so the console shows "not
 * available on this server" and keeps working:
 *
 * - `status()`: GET /status (scope read:status), the ETL's status.json merged
 *   with the API's freshness;
 * - `watchVersion()`: GET /events (SSE, opened with a ticket from POST
 *   /events/ticket), else polling GET /health;
 * - `nextPage()`: a JSON answer's `next` cursor, sent back as `cursor`;
 * - `submitCommand()`/`command()`: the ETL worker's queue (POST|GET
 *   /admin/commands, scope admin:etl).
 */

import { AnalyticsClient, AnalyticsError } from "../../clients/typescript/src/index.js";
import type { Column, Health, Row } from "../../clients/typescript/src/index.js";
import { errorFromResponse } from "../../clients/typescript/src/errors.js";
import { currentSession } from "./auth.js";

export interface StatusTable {
  table_name: string;
  watermark?: string | null;
  last_synced_at?: string | null;
  lag_seconds?: number | null;
  row_count?: number | null;
  open_dead_letters?: number;
  last_error?: string | null;
}

export interface StatusRun {
  id?: number;
  kind?: string;
  status?: string;
  started_at?: string | null;
  finished_at?: string | null;
  /** Per table: the table's row count, or what the cycle did to it (`rows` is the count). */
  rows?: Record<string, number | { rows?: number; changed?: number; mode?: string }>;
  published_version?: string | null;
  error?: string | null;
}

export interface StatusDoc {
  api: Record<string, unknown> & { data_version?: string | null; data_age_seconds?: number | null };
  etl: {
    tables?: StatusTable[];
    runs?: StatusRun[];
    open_dead_letters?: number;
    commands_pending?: number;
    last_success_age_seconds?: number | null;
  } | null;
  etl_error?: string | null;
}

export interface Command {
  id: number;
  kind: string;
  args: Record<string, unknown>;
  status: "pending" | "running" | "done" | "failed";
  submitted_at: string;
  submitted_by: string;
  finished_at?: string | null;
  progress?: string | null;
  outcome?: Record<string, unknown> | null;
  error?: string | null;
}

export type DownloadFormat = "csv" | "parquet";

/** One page of rows (the client's QueryResult carries the same fields). */
export interface Page {
  rows: Row[];
  columns: Column[];
  next: string | null;
  truncated: boolean;
}

function token(): string {
  const session = currentSession();
  if (session === null) throw new AnalyticsError({ status: 401, code: "unauthorized", message: "signed out" });
  return session.token;
}

export class Api {
  readonly client: AnalyticsClient;

  /** Which optional endpoints this server has (config.json `endpoints`); unknown ones are probed. */
  endpoints: { status?: boolean; events?: boolean } = {};

  constructor(readonly baseUrl: string) {
    this.client = new AnalyticsClient({ baseUrl, getToken: token, etagCache: false });
  }

  /** A request with the session's token; the API's error shape becomes an AnalyticsError. */
  async send(path: string, init: RequestInit = {}): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set("Authorization", `Bearer ${token()}`);
    if (init.body !== undefined) headers.set("Content-Type", "application/json");
    const response = await fetch(this.baseUrl + path, { ...init, headers });
    if (!response.ok) throw await errorFromResponse(response, 1, null);
    return response;
  }

  /** null when this server has no GET /status (404). */
  async status(): Promise<StatusDoc | null> {
    if (this.endpoints.status === false) return null;
    try {
      return (await (await this.send("/status")).json()) as StatusDoc;
    } catch (error) {
      if (error instanceof AnalyticsError && error.status === 404) return null;
      throw error;
    }
  }

  health(): Promise<Health> {
    return this.client.health();
  }

  /**
   * Calls `onVersion` with the served data version now and on each change.
   * Server-Sent Events when the server has them, else polling /health every
   * `pollSeconds`. Returns a function that stops watching and says which.
   */
  watchVersion(
    onVersion: (version: string) => void,
    pollSeconds: number,
  ): { stop: () => void; mode: Promise<"events" | "polling"> } {
    let stopped = false;
    let source: EventSource | null = null;
    let timer: ReturnType<typeof setTimeout> | null = null;
    let last: string | null = null;
    const seen = (version: string | null | undefined) => {
      if (!stopped && version && version !== last) {
        last = version;
        onVersion(version);
      }
    };
    const poll = async () => {
      try {
        seen((await this.health()).data_version);
      } catch {
        // The next poll tries again; the overview shows the last answer.
      }
      if (!stopped) timer = setTimeout(poll, pollSeconds * 1000);
    };
    const mode = (async (): Promise<"events" | "polling"> => {
      if (this.endpoints.events === false) {
        void poll();
        return "polling";
      }
      try {
        const answer = (await (await this.send("/events/ticket", { method: "POST" })).json()) as {
          ticket: string;
        };
        if (stopped) return "events";
        source = new EventSource(`${this.baseUrl}/events?ticket=${encodeURIComponent(answer.ticket)}`);
        source.addEventListener("data_version", (event) => {
          seen((JSON.parse((event as MessageEvent<string>).data) as { data_version: string }).data_version);
        });
        return "events";
      } catch (error) {
        if (!(error instanceof AnalyticsError) || error.status !== 404) throw error;
        void poll();
        return "polling";
      }
    })();
    return {
      stop: () => {
        stopped = true;
        source?.close();
        if (timer !== null) clearTimeout(timer);
      },
      mode,
    };
  }

  /**
   * The page after `cursor` (the `next` of the previous JSON answer): the
   * same POST /query with `cursor` added, as the pagination contract says.
   */
  async nextPage(sql: string, cursor: string, signal?: AbortSignal): Promise<Page> {
    const response = await this.send("/query", {
      method: "POST",
      body: JSON.stringify({ sql, cursor }),
      signal: signal ?? null,
    });
    const body = (await response.json()) as {
      data: Row[];
      columns: Column[];
      next?: string | null;
      truncated?: boolean;
    };
    return { rows: body.data, columns: body.columns, next: body.next ?? null, truncated: !!body.truncated };
  }

  /** The query's whole answer as a file body (format=csv|parquet), as the API encodes it. */
  async download(sql: string, format: DownloadFormat, signal?: AbortSignal): Promise<Blob> {
    const response = await this.send("/query", {
      method: "POST",
      body: JSON.stringify({ sql, format }),
      signal: signal ?? null,
    });
    return response.blob();
  }

  async submitCommand(kind: string, args: Record<string, unknown>): Promise<Command> {
    const response = await this.send("/admin/commands", {
      method: "POST",
      body: JSON.stringify({ kind, args }),
    });
    return ((await response.json()) as { command: Command }).command;
  }

  async command(id: number): Promise<Command> {
    const response = await this.send(`/admin/commands/${id}`);
    return ((await response.json()) as { command: Command }).command;
  }
}
