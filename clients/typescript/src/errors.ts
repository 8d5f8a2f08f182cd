/**
 * One error type for everything the client can fail with.
 *
 * API failures carry the API's error shape
 * `{"success": false, "error": {"code", "message", "request_id"}}` plus the
 * HTTP status. Failures that never got an API answer use status 0 and one of
 * the client-side codes below.
 */

/** Error codes the API documents (docs/api-docs.md, Errors). */
export type ApiErrorCode =
  | "empty_query"
  | "query_too_long"
  | "syntax_error"
  | "multiple_statements"
  | "not_a_select"
  | "table_not_allowed"
  | "file_access"
  | "function_not_allowed"
  | "unsupported"
  | "query_too_complex"
  | "query_timeout"
  | "result_too_large"
  | "query_error"
  | "unsupported_format"
  | "unauthorized"
  | "invalid_token"
  | "invalid_api_key"
  | "insufficient_scope"
  | "unknown_application"
  | "ad_hoc_sql_not_allowed"
  | "not_found"
  | "unknown_query"
  | "method_not_allowed"
  | "request_too_large"
  | "invalid_request"
  | "invalid_parameters"
  | "rate_limited"
  | "no_data"
  | "auth_unavailable"
  | "internal_error";

/** Codes for failures without an API answer (status 0) or with an unreadable one. */
export type ClientErrorCode =
  | "network_error" // fetch failed: offline, DNS, refused, or blocked by CORS in a browser
  | "timeout" // no answer within timeoutMs
  | "aborted" // the caller's AbortSignal fired
  | "token_error" // getToken() threw or returned nothing
  | "invalid_response" // the answer was not the API's JSON shape
  | "missing_dependency"; // an optional peer dependency (apache-arrow) is not installed

export type ErrorCode = ApiErrorCode | ClientErrorCode | (string & {});

/** The API's error body, exactly as it is sent. */
export interface ApiErrorBody {
  success: false;
  error: { code: string; message: string; request_id: string };
}

export class AnalyticsError extends Error {
  override readonly name = "AnalyticsError";
  /** HTTP status; 0 when no answer arrived. */
  readonly status: number;
  readonly code: ErrorCode;
  /** The API's request id (also in its logs); null for client-side failures. */
  readonly requestId: string | null;
  /** Seconds the API asked to wait (`Retry-After`), when it said. */
  readonly retryAfterSeconds: number | null;
  /** How many attempts were made, retries included. */
  readonly attempts: number;
  /** The API's error body, when there was one. */
  readonly body: ApiErrorBody | null;

  constructor(init: {
    status: number;
    code: ErrorCode;
    message: string;
    requestId?: string | null;
    retryAfterSeconds?: number | null;
    attempts?: number;
    body?: ApiErrorBody | null;
    cause?: unknown;
  }) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId ?? null;
    this.retryAfterSeconds = init.retryAfterSeconds ?? null;
    this.attempts = init.attempts ?? 1;
    this.body = init.body ?? null;
  }

  /** True for answers worth trying again later (429 rate_limited, 503). */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503;
  }
}

export function isApiErrorBody(value: unknown): value is ApiErrorBody {
  if (typeof value !== "object" || value === null) return false;
  const error = (value as { error?: unknown }).error;
  return (
    (value as { success?: unknown }).success === false &&
    typeof error === "object" &&
    error !== null &&
    typeof (error as { code?: unknown }).code === "string"
  );
}

/** The AnalyticsError for a non-2xx response (reads its body). */
export async function errorFromResponse(
  response: Response,
  attempts: number,
  retryAfterSeconds: number | null,
): Promise<AnalyticsError> {
  const text = await response.text().catch(() => "");
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  const headerId = response.headers.get("x-request-id");
  if (isApiErrorBody(parsed)) {
    return new AnalyticsError({
      status: response.status,
      code: parsed.error.code,
      message: parsed.error.message,
      requestId: parsed.error.request_id ?? headerId,
      retryAfterSeconds,
      attempts,
      body: parsed,
    });
  }
  return new AnalyticsError({
    status: response.status,
    code: "invalid_response",
    message: `HTTP ${response.status} without the API's error shape: ${text.slice(0, 200)}`,
    requestId: headerId,
    retryAfterSeconds,
    attempts,
  });
}
