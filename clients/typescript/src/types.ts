/** The shapes the API answers with (docs/api-docs.md), as the client returns them. */

/** A result column: its name and DuckDB type (`INTEGER`, `DECIMAL(12,2)`, ...). */
export interface Column {
  name: string;
  type: string;
}

export type Row = Record<string, unknown>;

/** A JSON query answer. Field names are camelCase versions of the API's. */
export interface QueryResult<R = Row> {
  rows: R[];
  columns: Column[];
  rowCount: number;
  /** More rows exist than this answer carries (follow `next`, or see `pages()`). */
  truncated: boolean;
  dataVersion: string;
  executionTimeMs: number;
  /** The named query's name (named queries only). */
  query?: string;
  /** Opaque cursor for the next page, when more rows exist (see `pages()`). */
  next: string | null;
  /** Rows of the whole result, when asked for with `count: "exact"`. */
  total?: number;
  /** The answer's ETag (null when absent or not exposed to a browser). */
  etag: string | null;
  /** True when the API answered 304 and the remembered body was reused. */
  fromCache: boolean;
  /** The request id the API answered with (when readable). */
  requestId: string | null;
}

/** `GET /health`. */
export interface Health {
  status: string;
  ready: boolean;
  version?: string;
  data_version: string | null;
  data_age_seconds?: number | null;
  last_refresh_failed?: boolean;
  last_refresh_error?: string | null;
  [key: string]: unknown;
}

export interface TableSchema {
  row_count: number;
  watermark?: string | null;
  columns: Column[];
}

/** `GET /schema`. */
export interface SchemaInfo {
  dataVersion: string;
  tables: Record<string, TableSchema>;
}

export type ParameterType = "integer" | "number" | "string" | "boolean" | "date" | "timestamp";

export interface ParameterSpec {
  type: ParameterType;
  required?: boolean;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  max_length?: number;
  enum?: unknown[];
  description?: string;
}

/** One entry of `GET /queries`. */
export interface NamedQueryInfo {
  name: string;
  description: string;
  parameters: Record<string, ParameterSpec>;
}

/**
 * Describe your named queries to get typed parameters and rows:
 *
 *   type MyQueries = {
 *     low_stock: { params: { threshold?: number; limit?: number };
 *                  row: { id: number; warehouse: string; quantity: number } };
 *   };
 *   const client = new AnalyticsClient<MyQueries>({ ... });
 */
export interface NamedQuerySpec {
  params: Record<string, unknown>;
  row: Row;
}

export type NamedQueries = Record<string, NamedQuerySpec>;

/** The minimal Arrow table surface the client relies on (apache-arrow's Table has it). */
export interface ArrowTableLike {
  numRows: number;
  schema: { fields: { name: string }[]; metadata: Map<string, string> };
  toArray(): unknown[];
}

/** An Arrow answer: the decoded table plus what the API said about it. */
export interface ArrowResult<T extends ArrowTableLike = ArrowTableLike> {
  table: T;
  columns: Column[];
  rowCount: number;
  truncated: boolean;
  dataVersion: string;
}
