/** Schema browser: the tables and models the signed-in user may read (GET /schema). */

import type { Api } from "./api.js";
import { el, replace, table } from "./dom.js";

interface Described {
  row_count: number;
  kind?: string;
  description?: string | null;
  watermark?: string | null;
  columns: { name: string; type: string }[];
}

function entry(name: string, info: Described, kind: string): HTMLElement {
  return el(
    "details",
    { "data-table": name },
    el("summary", {}, `${name} `, el("span", { className: "muted", text: `${kind}, ${info.row_count.toLocaleString()} rows, ${info.columns.length} columns` })),
    info.description ? el("p", { className: "muted", text: info.description }) : null,
    table(["Column", "Type"], info.columns.map((c) => [c.name, c.type])),
  );
}

export async function renderSchema(root: HTMLElement, api: Api): Promise<void> {
  const answer = await api.send("/schema");
  const body = (await answer.json()) as {
    data_version: string;
    tables: Record<string, Described>;
    models?: Record<string, Described>;
  };
  const tables = Object.entries(body.tables);
  const models = Object.entries(body.models ?? {});
  replace(
    root,
    el("h2", { id: "schema-title", text: "Schema" }),
    el("p", { className: "muted", text: `Data version ${body.data_version}: ${tables.length} tables and ${models.length} models you may read.` }),
    el("div", { className: "schema-list" }, ...tables.map(([n, t]) => entry(n, t, "table")), ...models.map(([n, m]) => entry(n, m, m.kind ?? "model"))),
  );
}
