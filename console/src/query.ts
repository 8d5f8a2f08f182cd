/**
 * Query editor: SQL with run and cancel (an AbortController per run), the
 * answer in the paged grid with a chart, and the whole answer as a CSV or
 * Parquet download (the API encodes it: POST /query with format=).
 */

import { AnalyticsError } from "../../clients/typescript/src/index.js";
import type { Api, DownloadFormat } from "./api.js";
import { announce, el, replace } from "./dom.js";
import { ResultView } from "./results.js";

const EXAMPLE = "SELECT * FROM inventory ORDER BY id LIMIT 200";

export function errorText(error: unknown): string {
  if (error instanceof AnalyticsError) return `${error.code}: ${error.message}`;
  if (error instanceof DOMException && error.name === "AbortError") return "cancelled";
  return error instanceof Error ? error.message : String(error);
}

export function renderQuery(root: HTMLElement, api: Api, firstTable: string | null): void {
  let running: AbortController | null = null;
  const sql = el("textarea", { id: "sql", spellcheck: "false", "aria-describedby": "sql-help" });
  sql.value = firstTable ? `SELECT * FROM ${firstTable} LIMIT 200` : EXAMPLE;
  const run = el("button", { type: "submit", id: "run", className: "primary", text: "Run" });
  const cancel = el("button", { type: "button", id: "cancel", disabled: true, text: "Cancel" });
  const format = el(
    "select",
    { id: "download-format" },
    el("option", { value: "csv", text: "CSV" }),
    el("option", { value: "parquet", text: "Parquet" }),
  );
  const download = el("button", { type: "button", id: "download", text: "Download" });
  const error = el("p", { id: "query-error", className: "error", role: "alert" });
  const results = new ResultView("query", (cursor) => api.nextPage(sql.value, cursor));

  const busy = (on: boolean) => {
    run.disabled = on;
    download.disabled = on;
    cancel.disabled = !on;
    root.dataset.state = on ? "running" : "idle";
  };

  const execute = async () => {
    running?.abort();
    const controller = new AbortController();
    running = controller;
    busy(true);
    error.textContent = "";
    announce("Running the query");
    try {
      const answer = await api.client.query(sql.value, undefined, { signal: controller.signal, method: "POST" });
      results.show(answer);
      root.dataset.state = "done";
    } catch (e) {
      error.textContent = errorText(e);
      results.clear();
      root.dataset.state = controller.signal.aborted ? "cancelled" : "error";
    } finally {
      if (running === controller) running = null;
      run.disabled = false;
      download.disabled = false;
      cancel.disabled = true;
    }
  };

  const save = async () => {
    const controller = new AbortController();
    running = controller;
    busy(true);
    error.textContent = "";
    try {
      const fmt = format.value as DownloadFormat;
      const blob = await api.download(sql.value, fmt, controller.signal);
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: `query-result.${fmt}` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      announce(`Downloaded ${blob.size} bytes as ${fmt}`);
      root.dataset.state = "downloaded";
    } catch (e) {
      error.textContent = errorText(e);
      root.dataset.state = "error";
    } finally {
      running = null;
      busy(false);
    }
  };

  cancel.addEventListener("click", () => running?.abort());
  download.addEventListener("click", () => void save());
  sql.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      void execute();
    }
  });
  const form = el(
    "form",
    { onsubmit: (e: Event) => (e.preventDefault(), void execute()) },
    el("label", { for: "sql", text: "SQL (read-only; Ctrl+Enter runs)" }),
    sql,
    el("p", { id: "sql-help", className: "muted", text: "One SELECT over the tables and models in Schema. The API applies its timeout and row cap." }),
    el("div", { className: "row" }, run, cancel, el("label", { for: "download-format", text: "Download as" }), format, download),
  );
  replace(root, el("h2", { id: "query-title", text: "Query" }), form, error, results.root);
  root.dataset.state = "idle";
}
