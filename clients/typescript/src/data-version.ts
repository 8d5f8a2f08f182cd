/**
 * `onDataVersion`: tells the app when the API starts serving a new snapshot.
 *
 * EXTENSION POINT (API pass, events): today this polls `GET /health` (no
 * token, cheap). When the API serves `GET /events` (Server-Sent Events with
 * `data_version` events and `Last-Event-ID` resume), replace the poller with
 * an EventSource/fetch-stream reader behind the same `pollDataVersion`
 * signature; the callers do not change.
 */

import type { Health } from "./types.js";

export interface DataVersionOptions {
  /** Poll interval (default 15 000 ms). */
  intervalMs?: number;
  /** Called when a poll fails; polling goes on. */
  onError?: (error: unknown) => void;
}

export function pollDataVersion(
  health: () => Promise<Health>,
  callback: (version: string) => void,
  options?: DataVersionOptions,
): () => void {
  const intervalMs = options?.intervalMs ?? 15_000;
  let last: string | null = null;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const poll = async () => {
    try {
      const version = (await health()).data_version;
      // Versions are UTC timestamps (sortable). While Gunicorn workers swap one
      // by one, polls can alternate between the new and the old version:
      // only a newer one is news. (A rollback to an older version is not
      // announced by polling; /events will carry it.)
      if (!stopped && version && (last === null || version > last)) {
        last = version;
        callback(version);
      }
    } catch (error) {
      if (!stopped) options?.onError?.(error);
    }
    if (!stopped) timer = setTimeout(poll, intervalMs);
  };
  void poll();
  return () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
  };
}
