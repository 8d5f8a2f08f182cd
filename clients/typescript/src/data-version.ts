/**
 * `onDataVersion`: tells the app when the API starts serving a new snapshot,
 * over the API's `GET /events` (Server-Sent Events).
 *
 * Browsers use `EventSource`, opened with a short-lived ticket from
 * `POST /events/ticket` (an EventSource cannot send an Authorization header,
 * and the token never goes into a URL). Node, and any runtime without
 * EventSource, reads the stream with `fetch` and the Bearer token. Either way
 * a dropped stream is reopened after `retryMs` with the last version seen
 * (`Last-Event-ID`), so the API does not repeat it; an expired ticket is
 * replaced by a new one. `transport: "poll"` polls `GET /health` instead.
 */

import type { Health } from "./types.js";

export interface DataVersionOptions {
  /** "auto" (default): EventSource where it exists, else fetch; "poll": GET /health. */
  transport?: "auto" | "eventsource" | "fetch" | "poll";
  /** Poll interval for transport "poll" (default 15 000 ms). */
  intervalMs?: number;
  /** Wait before reopening a dropped stream (default 3 000 ms). */
  retryMs?: number;
  /** Called when a stream fails or a poll fails; it is retried. */
  onError?: (error: unknown) => void;
}

/** What the subscription needs from the client. */
export interface EventSourceDeps {
  url: string;
  fetch: typeof fetch;
  /** A Bearer token (fetch transport). */
  token: () => Promise<string>;
  /** A ticket from POST /events/ticket (EventSource transport). */
  ticket: () => Promise<string>;
  health: () => Promise<Health>;
}

type Stop = () => void;

export function subscribeDataVersion(
  deps: EventSourceDeps,
  callback: (version: string) => void,
  options?: DataVersionOptions,
): Stop {
  const transport = options?.transport ?? "auto";
  if (transport === "poll") return pollDataVersion(deps.health, callback, options);
  const useEventSource =
    transport === "eventsource" || (transport === "auto" && typeof EventSource !== "undefined");
  const state = { stopped: false, last: null as string | null };
  const announce = (version: string) => {
    if (!state.stopped && version && version !== state.last) {
      state.last = version;
      callback(version);
    }
  };
  return useEventSource
    ? viaEventSource(deps, announce, state, options)
    : viaFetch(deps, announce, state, options);
}

interface State {
  stopped: boolean;
  last: string | null;
}

function versionOf(data: string): string | null {
  try {
    const parsed = JSON.parse(data) as { data_version?: unknown };
    return typeof parsed.data_version === "string" ? parsed.data_version : null;
  } catch {
    return null;
  }
}

function viaEventSource(
  deps: EventSourceDeps,
  announce: (version: string) => void,
  state: State,
  options?: DataVersionOptions,
): Stop {
  const retryMs = options?.retryMs ?? 3_000;
  let source: EventSource | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const open = async () => {
    try {
      const url = new URL(deps.url);
      url.searchParams.set("ticket", await deps.ticket());
      if (state.last !== null) url.searchParams.set("last_event_id", state.last);
      if (state.stopped) return;
      source = new EventSource(url.toString());
      source.addEventListener("data_version", (event) => {
        const version = versionOf((event as MessageEvent<string>).data);
        if (version !== null) announce(version);
      });
      source.onerror = () => {
        // EventSource reconnects by itself after a network drop (CONNECTING);
        // a refused answer (an expired ticket, 503) closes it for good: reopen
        // with a new ticket.
        if (source?.readyState === EventSource.CLOSED && !state.stopped) {
          options?.onError?.(new Error("the /events stream closed; reopening"));
          source = null;
          timer = setTimeout(open, retryMs);
        }
      };
    } catch (error) {
      if (state.stopped) return;
      options?.onError?.(error);
      timer = setTimeout(open, retryMs);
    }
  };
  void open();
  return () => {
    state.stopped = true;
    if (timer !== undefined) clearTimeout(timer);
    source?.close();
  };
}

function viaFetch(
  deps: EventSourceDeps,
  announce: (version: string) => void,
  state: State,
  options?: DataVersionOptions,
): Stop {
  const retryMs = options?.retryMs ?? 3_000;
  const abort = new AbortController();

  const readOnce = async () => {
    const headers: Record<string, string> = {
      Accept: "text/event-stream",
      Authorization: `Bearer ${await deps.token()}`,
    };
    if (state.last !== null) headers["Last-Event-ID"] = state.last;
    const response = await deps.fetch(deps.url, { headers, signal: abort.signal });
    if (!response.ok || response.body === null) {
      await response.body?.cancel().catch(() => undefined);
      throw new Error(`GET /events answered ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let event = "";
    let data = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          const version = event === "data_version" ? versionOf(data) : null;
          if (version !== null) announce(version);
          event = "";
          data = "";
        } else if (line.startsWith("event:")) {
          event = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data += line.slice(5).trim();
        }
      }
    }
  };

  const loop = async () => {
    while (!state.stopped) {
      try {
        await readOnce();
      } catch (error) {
        if (state.stopped) return;
        options?.onError?.(error);
      }
      if (state.stopped) return;
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  };
  void loop();
  return () => {
    state.stopped = true;
    abort.abort();
  };
}

/** The fallback: polls GET /health (no token); only a newer version is news. */
export function pollDataVersion(
  health: () => Promise<Health>,
  callback: (version: string) => void,
  options?: DataVersionOptions,
): Stop {
  const intervalMs = options?.intervalMs ?? 15_000;
  let last: string | null = null;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const poll = async () => {
    try {
      const version = (await health()).data_version;
      // While Gunicorn workers swap one by one, polls can alternate between
      // the new and the old version (UTC timestamps, sortable).
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
