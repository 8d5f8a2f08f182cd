/** A query's answer as the console shows it: a summary line, the paged grid and a chart. */

import type { Chart } from "chart.js";
import type { Column, Row } from "../../clients/typescript/src/index.js";
import { type ChartKind, chooseChart, drawChart } from "./chart.js";
import { announce, el, replace } from "./dom.js";
import { ResultGrid } from "./grid.js";

export interface Answer {
  rows: Row[];
  columns: Column[];
  next: string | null;
  truncated: boolean;
  dataVersion: string;
  executionTimeMs: number;
}

export class ResultView {
  readonly root: HTMLElement;
  private readonly summary = el("p", { id: "result-summary", className: "muted" });
  private readonly chartBox = el("div", { id: "result-chart" });
  private readonly grid: ResultGrid;
  private chart: Chart | null = null;

  constructor(prefix: string, loadMore: (cursor: string) => Promise<{ rows: Row[]; next: string | null }>) {
    this.grid = new ResultGrid(loadMore);
    this.root = el(
      "div",
      { className: "results", id: `${prefix}-results` },
      this.summary,
      el("div", { className: "result-body" }, this.grid.root, this.chartBox),
    );
  }

  clear(): void {
    this.chart?.destroy();
    this.chart = null;
    replace(this.summary);
    replace(this.chartBox);
    this.grid.show([], [], null);
  }

  show(answer: Answer): void {
    const { rows, columns } = answer;
    const more = answer.next ? "; more pages on the server" : answer.truncated ? "; truncated at the row cap" : "";
    this.summary.textContent = `${rows.length} rows in ${Math.round(answer.executionTimeMs)} ms from data version ${answer.dataVersion}${more}`;
    this.grid.show(columns, rows, answer.next);
    this.chart?.destroy();
    this.chart = null;
    const choice = chooseChart(columns);
    if (choice === null || rows.length === 0) {
      replace(this.chartBox, el("p", { className: "muted", text: "No chart: the result has no numeric column." }));
    } else {
      const canvas = el("canvas", { role: "img", "aria-label": `${choice.kind} chart of ${choice.y.join(", ")} by ${choice.x}` });
      const kind = el(
        "select",
        { id: `chart-kind-${this.root.id}`, onchange: () => this.redraw(canvas, { ...choice, kind: kind.value as ChartKind }, rows) },
        ...(["bar", "line", "scatter"] as const).map((k) => el("option", { value: k, selected: k === choice.kind, text: k })),
      );
      replace(
        this.chartBox,
        el("div", { className: "row" }, el("label", { for: kind.id, text: "Chart" }), kind, el("span", { className: "muted", text: `${choice.y.join(", ")} by ${choice.x}` })),
        el("div", { className: "chart", "data-kind": choice.kind }, canvas),
      );
      this.redraw(canvas, choice, rows);
    }
    announce(this.summary.textContent);
  }

  private redraw(canvas: HTMLCanvasElement, choice: Parameters<typeof drawChart>[1], rows: Row[]): void {
    this.chart?.destroy();
    this.chart = drawChart(canvas, choice, rows);
    canvas.parentElement?.setAttribute("data-kind", choice.kind);
  }
}
