/**
 * Admin actions (scope admin:etl only; without it this panel is never built):
 * roll back to a version, retry or discard a dead letter, backfill a table,
 * each handed to the ETL worker's queue (POST /admin/commands) and followed
 * until the worker reports its outcome.
 */

import type { Api, Command } from "./api.js";
import { announce, el } from "./dom.js";
import { errorText } from "./query.js";

const FOLLOW_MS = 1000;

function describe(command: Command): string {
  const tail = command.error ? `: ${command.error}` : command.outcome ? `: ${JSON.stringify(command.outcome)}` : command.progress ? ` (${command.progress})` : "";
  return `Command ${command.id} (${command.kind}) ${command.status}${tail}`;
}

async function follow(api: Api, command: Command, out: HTMLElement): Promise<void> {
  out.textContent = describe(command);
  while (command.status === "pending" || command.status === "running") {
    await new Promise((r) => setTimeout(r, FOLLOW_MS));
    if (!out.isConnected) return;
    command = await api.command(command.id);
    out.textContent = describe(command);
  }
  announce(out.textContent);
}

export function adminPanel(api: Api, tables: string[], available: boolean): HTMLElement {
  const out = el("p", { id: "admin-outcome", role: "status" });
  const card = el("div", { className: "card", id: "admin" }, el("h3", { text: "Admin actions" }));
  if (!available) {
    card.append(el("p", { className: "unavailable", text: "Admin actions: not available on this server (no ETL_STATE_DATABASE_URL)." }));
    return card;
  }
  const action = (label: string, kind: string, input: HTMLInputElement | HTMLSelectElement, args: () => Record<string, unknown>, danger = false) => {
    const button = el("button", { type: "submit", className: danger ? "danger" : null, text: label });
    return el(
      "form",
      {
        className: "row",
        "data-action": kind,
        onsubmit: async (e: Event) => {
          e.preventDefault();
          if (danger && !confirm(`${label}: are you sure?`)) return;
          button.disabled = true;
          try {
            await follow(api, await api.submitCommand(kind, args()), out);
          } catch (err) {
            out.textContent = errorText(err);
          } finally {
            button.disabled = false;
          }
        },
      },
      el("label", { for: input.id, text: input.dataset.label ?? "" }),
      input,
      button,
    );
  };
  const version = el("input", { id: "admin-version", required: true, "data-label": "Version", placeholder: "20261201T120000Z" });
  const letter = el("input", { id: "admin-letter", type: "number", min: 1, required: true, "data-label": "Dead letter id" });
  const letter2 = el("input", { id: "admin-letter-discard", type: "number", min: 1, required: true, "data-label": "Dead letter id" });
  const table = el("select", { id: "admin-table", "data-label": "Table" }, ...tables.map((t) => el("option", { value: t, text: t })));
  card.append(
    action("Roll back", "rollback", version, () => ({ version: version.value.trim() }), true),
    action("Retry", "dlq-retry", letter, () => ({ id: Number(letter.value) })),
    action("Discard", "dlq-discard", letter2, () => ({ id: Number(letter2.value) }), true),
    action("Backfill", "backfill", table, () => ({ table: table.value }), true),
    out,
  );
  return card;
}
