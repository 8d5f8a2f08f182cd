/** @analytics/client: the analytics API for browsers and Node 20+. */

export { AnalyticsClient } from "./client.js";
export type { ClientOptions, QueryOptions, RequestOptions, TokenProvider } from "./client.js";
export { AnalyticsError } from "./errors.js";
export type { ApiErrorBody, ApiErrorCode, ClientErrorCode, ErrorCode } from "./errors.js";
export type { RetryInfo, RetryOptions } from "./retry.js";
export { parseRetryAfter } from "./retry.js";
export type { ArrowLoader, ArrowModule } from "./arrow.js";
export type { DataVersionOptions } from "./data-version.js";
export type { Int64Mode } from "./values.js";
export { isDecimal, isWideInteger } from "./values.js";
export type {
  ArrowResult,
  ArrowTableLike,
  Column,
  Health,
  NamedQueries,
  NamedQueryInfo,
  NamedQuerySpec,
  ParameterSpec,
  ParameterType,
  QueryResult,
  Row,
  SchemaInfo,
  TableSchema,
} from "./types.js";
