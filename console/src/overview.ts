/**
 * Overview: the served data version and its age against the target, per
 * table freshness, the last runs, open dead letters and the version history
 * (from GET /status when the server has it; version and age from /health
 * and tables from /schema otherwise), refreshed on every new data version.
 */

import type { Chart } from "chart.js";
import type { Health, SchemaInfo } from "../../clients/typescript/src/index.js";
import type { Api, StatusDoc, StatusRun } from "./api.js";
import { drawSeries } from "./chart.js";
import { el, formatSeconds, replace, table, unavailable } from "./dom.js";

export interface OverviewContext {
  api: Api;
  targetSeconds: number;
  liveMode: () => string;
  adminPanel: () => HTMLElement | null;
}

let charts: Chart[] = [];
let statusNote: (what: string) => HTMLElement = unavailable;

/** Why an ETL panel is empty: no GET /status here, or the ETL has not reported. */
function noteFor(status: StatusDoc | null): (what: string) => HTMLElement {
  if (status === null) return unavailable;
  const why = status.etl_error ?? "the ETL has not published its status yet";
  return (what) => el("p", { className: "unavailable", text: `${what}: ${why}.` });
}
let ageTimer: ReturnType<typeof setInterval> | null = null;

function seconds(start?: string | null, end?: string | null): number | null {
  if (!start || !end) return null;
  return (Date.parse(end) - Date.parse(start)) / 1000;
}

function tableRows(run: StatusRun, table: string): number {
  const entry = run.rows?.[table];
  return typeof entry === "number" ? entry : (entry?.rows ?? 0);
}

function versionCard(health: Health, ctx: OverviewContext): HTMLElement {
  const created = typeof health.data_created_at === "string" ? Date.parse(health.data_created_at) : NaN;
  const age = el("span", { id: "data-age" });
  const verdict = el("span", { id: "freshness", className: "badge" });
  const tick = () => {
    const ageSeconds = Number.isNaN(created)
      ? (health.data_age_seconds ?? null)
      : (Date.now() - created) / 1000;
    age.textContent = formatSeconds(ageSeconds);
    const fresh = ageSeconds !== null && ageSeconds <= ctx.targetSeconds;
    verdict.textContent = fresh ? "within target" : "older than target";
    verdict.className = `badge ${fresh ? "ok" : "warn"}`;
  };
  tick();
  if (ageTimer !== null) clearInterval(ageTimer);
  ageTimer = setInterval(tick, 1000);
  return el(
    "div",
    { className: "card" },
    el("h3", { text: "Data version" }),
    el("p", { className: "big", id: "data-version", text: health.data_version ?? "none yet" }),
    el("p", {}, "Age ", age, ` (target ${formatSeconds(ctx.targetSeconds)}) `, verdict),
    el(
      "p",
      { className: "muted" },
      `API ${health.status}; ${health.up_to_date === false ? "a newer version is being loaded; " : ""}`,
      el("span", { id: "live-mode", text: ctx.liveMode() }),
    ),
  );
}

function tablesCard(status: StatusDoc | null, schema: SchemaInfo | null): HTMLElement {
  const card = el("div", { className: "card" }, el("h3", { text: "Tables" }));
  const etlTables = status?.etl?.tables;
  if (etlTables) {
    card.append(
      table(
        ["Table", "Rows", "Watermark", "Lag", "Dead letters", "Last error"],
        etlTables.map((t) => [
          t.table_name,
          String(t.row_count ?? "–"),
          t.watermark ?? "–",
          formatSeconds(t.lag_seconds),
          String(t.open_dead_letters ?? 0),
          t.last_error ?? "",
        ]),
        [false, true, false, true, true, false],
      ),
    );
  } else if (schema) {
    card.append(
      table(
        ["Table", "Rows", "Watermark"],
        Object.entries(schema.tables).map(([name, t]) => [name, String(t.row_count), t.watermark ?? "–"]),
        [false, true, false],
      ),
      statusNote("Per-table lag and errors (GET /status)"),
    );
  } else {
    card.append(unavailable("Table freshness"));
  }
  return card;
}

function runsCard(runs: StatusRun[] | undefined): HTMLElement {
  const card = el("div", { className: "card" }, el("h3", { text: "Last runs" }));
  if (!runs) return (card.append(statusNote("Run history (GET /status)")), card);
  card.append(
    table(
      ["Run", "Kind", "Outcome", "Duration", "Version", "Error"],
      runs.map((r) => [
        String(r.id ?? ""),
        r.kind ?? "",
        el("span", { className: r.status === "success" ? "ok" : r.status === "failed" ? "bad" : "", text: r.status ?? "" }),
        formatSeconds(seconds(r.started_at, r.finished_at)),
        r.published_version ?? "–",
        r.error ?? "",
      ]),
      [true, false, false, true, false, false],
    ),
  );
  return card;
}

function deadLettersCard(status: StatusDoc | null): HTMLElement {
  const card = el("div", { className: "card" }, el("h3", { text: "Dead letters" }));
  const open = status?.etl?.open_dead_letters;
  if (open === undefined) card.append(statusNote("Dead letters (GET /status)"));
  else card.append(el("p", { className: `big ${open ? "bad" : "ok"}`, id: "dead-letters", text: `${open} open` }));
  return card;
}

function historyCard(runs: StatusRun[] | undefined): HTMLElement {
  const card = el("div", { className: "card" }, el("h3", { text: "Version history" }));
  const published = (runs ?? []).filter((r) => r.published_version).reverse();
  if (!runs || published.length === 0) {
    card.append(runs ? el("p", { className: "muted", text: "No published versions yet." }) : statusNote("Version history (GET /status)"));
    return card;
  }
  const labels = published.map((r) => String(r.published_version));
  const tables = [...new Set(published.flatMap((r) => Object.keys(r.rows ?? {})))];
  const rows = Object.fromEntries(tables.map((t) => [t, published.map((r) => tableRows(r, t))]));
  const durations = { "cycle seconds": published.map((r) => seconds(r.started_at, r.finished_at) ?? 0) };
  const rowsCanvas = el("canvas", { role: "img", "aria-label": "Rows per table per version" });
  const timeCanvas = el("canvas", { role: "img", "aria-label": "Cycle duration per version" });
  card.append(
    el("div", { className: "chart" }, rowsCanvas),
    el("div", { className: "chart" }, timeCanvas),
  );
  queueMicrotask(() => {
    charts.push(drawSeries(rowsCanvas, labels, rows, "rows"), drawSeries(timeCanvas, labels, durations, "seconds"));
  });
  return card;
}

export async function renderOverview(root: HTMLElement, ctx: OverviewContext): Promise<void> {
  const [health, status, schema] = await Promise.all([
    ctx.api.health(),
    ctx.api.status().catch(() => null),
    ctx.api.client.schema().catch(() => null),
  ]);
  for (const chart of charts) chart.destroy();
  charts = [];
  statusNote = noteFor(status);
  const runs = status?.etl?.runs;
  replace(
    root,
    el("h2", { id: "overview-title", text: "Overview" }),
    status === null ? el("p", { className: "unavailable", id: "status-unavailable", text: "GET /status: not available on this server; showing /health and /schema." }) : null,
    el(
      "div",
      { className: "grid2" },
      versionCard(health, ctx),
      deadLettersCard(status),
      tablesCard(status, schema),
      runsCard(runs),
      historyCard(runs),
      ctx.adminPanel(),
    ),
  );
  root.dataset.version = health.data_version ?? "";
}
