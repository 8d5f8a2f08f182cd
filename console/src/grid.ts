/**
 * The result grid: pages of PAGE_SIZE rows over what the API answered, and,
 * when the answer carried a `next` cursor, a button that fetches the
 * following page from the API (api.ts `nextPage`).
 */

import type { Column, Row } from "../../clients/typescript/src/index.js";
import { isNumeric } from "./chart.js";
import { el, replace } from "./dom.js";

export const PAGE_SIZE = 50;

function cell(value: unknown): string {
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export class ResultGrid {
  private rows: Row[] = [];
  private columns: Column[] = [];
  private page = 0;
  private next: string | null = null;
  readonly root = el("div", { id: "result-grid" });

  constructor(private readonly loadMore: (cursor: string) => Promise<{ rows: Row[]; next: string | null }>) {}

  show(columns: Column[], rows: Row[], next: string | null): void {
    this.columns = columns;
    this.rows = rows;
    this.next = next;
    this.page = 0;
    this.render();
  }

  private pages(): number {
    return Math.max(1, Math.ceil(this.rows.length / PAGE_SIZE));
  }

  private go(page: number): void {
    this.page = Math.min(Math.max(0, page), this.pages() - 1);
    this.render();
    this.root.querySelector<HTMLButtonElement>(".pager button:not(:disabled)")?.focus();
  }

  private async more(): Promise<void> {
    if (this.next === null) return;
    const answer = await this.loadMore(this.next);
    this.rows = this.rows.concat(answer.rows);
    this.next = answer.next;
    this.go(this.page + 1);
  }

  private render(): void {
    const start = this.page * PAGE_SIZE;
    const shown = this.rows.slice(start, start + PAGE_SIZE);
    const numeric = this.columns.map((c) => isNumeric(c.type));
    const last = this.page >= this.pages() - 1;
    replace(
      this.root,
      el(
        "div",
        { className: "pager", role: "group", "aria-label": "Result pages" },
        el("button", { type: "button", disabled: this.page === 0, onclick: () => this.go(this.page - 1) }, "Previous"),
        el("span", { id: "page-label", text: `Rows ${this.rows.length ? start + 1 : 0}–${start + shown.length} of ${this.rows.length}${this.next ? "+" : ""}` }),
        last && this.next !== null
          ? el("button", { type: "button", onclick: () => void this.more() }, "Load next page")
          : el("button", { type: "button", disabled: last, onclick: () => this.go(this.page + 1) }, "Next"),
      ),
      el(
        "div",
        { className: "scroll", tabindex: 0, role: "region", "aria-label": "Result rows" },
        el(
          "table",
          { id: "result-table" },
          el("thead", {}, el("tr", {}, ...this.columns.map((c, i) => el("th", { scope: "col", title: c.type, className: numeric[i] ? "num" : null }, c.name)))),
          el(
            "tbody",
            {},
            ...shown.map((row) =>
              el("tr", {}, ...this.columns.map((c, i) => el("td", { className: numeric[i] ? "num" : null }, cell(row[c.name])))),
            ),
          ),
        ),
      ),
    );
  }
}
