/**
 * Big integers and decimals without precision loss.
 *
 * The API sends DECIMAL values as JSON strings, and BIGINT/UBIGINT/HUGEINT
 * values as numbers when they fit in ±(2^53 − 1), as strings otherwise
 * (UHUGEINT always as strings). So one column can mix numbers and strings.
 * The client makes each 64/128-bit integer column one type:
 *
 * - `int64: "string"` (default): decimal strings (`"9007199254740993"`),
 *   safe to render and to JSON.stringify;
 * - `int64: "bigint"`: JavaScript `bigint` values, for arithmetic.
 *
 * DECIMAL values stay strings: hand them to a decimal library
 * (decimal.js, big.js) when you compute with them. Values nested inside
 * LIST/STRUCT/MAP columns are left as the API sent them.
 */

import type { Column } from "./types.js";

export type Int64Mode = "string" | "bigint";

const WIDE_INTEGER = /^(BIGINT|INT8|INT64|LONG|UBIGINT|UINT64|HUGEINT|INT128|UHUGEINT|UINT128)$/i;

/** True for the DuckDB types whose values may arrive as strings. */
export function isWideInteger(type: string): boolean {
  return WIDE_INTEGER.test(type.trim());
}

export function isDecimal(type: string): boolean {
  return /^(DECIMAL|NUMERIC)\b/i.test(type.trim());
}

function convert(value: unknown, mode: Int64Mode): unknown {
  if (typeof value === "number" || typeof value === "string") {
    return mode === "bigint" ? BigInt(value) : String(value);
  }
  return value; // null stays null
}

/** Rows with every wide-integer column as one type (mutates and returns `rows`). */
export function normalizeRows<R>(
  rows: Record<string, unknown>[],
  columns: Column[],
  mode: Int64Mode,
): R[] {
  const wide = columns.filter((c) => isWideInteger(c.type)).map((c) => c.name);
  if (wide.length > 0) {
    for (const row of rows) {
      for (const name of wide) {
        if (name in row) row[name] = convert(row[name], mode);
      }
    }
  }
  return rows as R[];
}
