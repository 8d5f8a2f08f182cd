/**
 * When and how long to wait before trying again.
 *
 * 429 and 503 are retried (reads are idempotent); `Retry-After` (seconds or
 * an HTTP date) is honoured: the client never retries sooner than asked, and
 * gives up at once when the API asks for a longer wait than `maxDelayMs`.
 * Without the header the wait is exponential with full jitter.
 */

export interface RetryInfo {
  /** The attempt that failed (1-based). */
  attempt: number;
  status: number;
  /** How long the client waits before the next attempt. */
  delayMs: number;
}

export interface RetryOptions {
  /** Attempts in all, the first included (default 3; 1 disables retries). */
  maxAttempts?: number;
  /** First back-off step without Retry-After (default 250 ms). */
  baseDelayMs?: number;
  /** Longest wait the client accepts (default 20 000 ms). */
  maxDelayMs?: number;
  /** Statuses to retry (default [429, 503]). */
  retryOn?: number[];
  /** Called before each wait (logging, UI hints). */
  onRetry?: (info: RetryInfo) => void;
}

export type ResolvedRetry = Required<Omit<RetryOptions, "onRetry">> & Pick<RetryOptions, "onRetry">;

export function resolveRetry(options: RetryOptions | false | undefined): ResolvedRetry {
  if (options === false) {
    return { maxAttempts: 1, baseDelayMs: 0, maxDelayMs: 0, retryOn: [] };
  }
  return {
    maxAttempts: Math.max(1, options?.maxAttempts ?? 3),
    baseDelayMs: options?.baseDelayMs ?? 250,
    maxDelayMs: options?.maxDelayMs ?? 20_000,
    retryOn: options?.retryOn ?? [429, 503],
    onRetry: options?.onRetry,
  };
}

/** `Retry-After` in milliseconds, or null when absent or unreadable. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null || value.trim() === "") return null;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? null : Math.max(0, date - now);
}

/**
 * The wait before the attempt after `attempt`, or null to give up
 * (attempts used up, a status not retried, or a Retry-After past maxDelayMs).
 */
export function retryDelay(
  retry: ResolvedRetry,
  attempt: number,
  status: number,
  retryAfterMs: number | null,
  random: () => number = Math.random,
): number | null {
  if (attempt >= retry.maxAttempts || !retry.retryOn.includes(status)) return null;
  if (retryAfterMs !== null) return retryAfterMs <= retry.maxDelayMs ? retryAfterMs : null;
  const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
