/**
 * Arrow results through `apache-arrow`, an OPTIONAL peer dependency.
 *
 * Nothing here loads it until an Arrow result is asked for. Bundlers
 * (Vite, webpack) cannot see the default loader's import, so in a bundled
 * app pass the loader yourself, which also lets the bundler split it out:
 *
 *   new AnalyticsClient({ ..., loadArrow: () => import("apache-arrow") })
 */

import { AnalyticsError } from "./errors.js";
import type { ArrowResult, ArrowTableLike, Column } from "./types.js";

export interface ArrowModule {
  tableFromIPC(input: Uint8Array): ArrowTableLike;
}

export type ArrowLoader = () => Promise<ArrowModule>;

const ARROW_PACKAGE = "apache-arrow";

/** Node, and browsers with an import map: resolve the package at run time. */
export const defaultArrowLoader: ArrowLoader = () =>
  import(/* @vite-ignore */ /* webpackIgnore: true */ ARROW_PACKAGE) as Promise<ArrowModule>;

export async function loadArrowModule(loader: ArrowLoader): Promise<ArrowModule> {
  try {
    const module = await loader();
    if (typeof module?.tableFromIPC !== "function") throw new Error("no tableFromIPC export");
    return module;
  } catch (cause) {
    throw new AnalyticsError({
      status: 0,
      code: "missing_dependency",
      message:
        "Arrow results need the optional peer dependency 'apache-arrow': " +
        "npm install apache-arrow (in a bundled app also pass loadArrow: () => import('apache-arrow'))",
      cause,
    });
  }
}

/** Decode an Arrow IPC stream; names, DuckDB types and the version come from its metadata. */
export function decodeArrow(
  arrow: ArrowModule,
  bytes: Uint8Array,
  headers: Headers,
): ArrowResult {
  const table = arrow.tableFromIPC(bytes);
  const meta = table.schema.metadata;
  const typesJson = meta.get("duckdb_types") ?? headers.get("x-columns");
  const columns: Column[] = typesJson
    ? (JSON.parse(typesJson) as Column[])
    : table.schema.fields.map((f) => ({ name: f.name, type: "" }));
  const truncated = (meta.get("truncated") ?? headers.get("x-truncated")) === "true";
  return {
    table,
    columns,
    rowCount: table.numRows,
    truncated,
    dataVersion: meta.get("data_version") ?? headers.get("x-data-version") ?? "",
  };
}
