/**
 * Charts with Chart.js (bundled from npm; only the parts used are
 * registered). `chooseChart` picks the kind from the result's column types:
 * a time-like first column and numbers -> line; a text first column and
 * numbers -> bar; two or more numbers -> scatter; otherwise no chart.
 */

import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  ScatterController,
  Tooltip,
} from "chart.js";
import type { Column, Row } from "../../clients/typescript/src/index.js";

Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  ScatterController,
  Tooltip,
);

export type ChartKind = "bar" | "line" | "scatter";

export interface ChartChoice {
  kind: ChartKind;
  x: string;
  y: string[];
}

const NUMERIC = /^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|FLOAT|DOUBLE|REAL|DECIMAL)/i;
const TEMPORAL = /^(DATE|TIMESTAMP|TIME)/i;
const PALETTE = ["#0b57d0", "#b3261e", "#146c2e", "#8a4b00", "#6f3bb7", "#00677d"];
const MAX_SERIES = 4;

export function isNumeric(type: string): boolean {
  return NUMERIC.test(type);
}

export function chooseChart(columns: Column[]): ChartChoice | null {
  const numbers = columns.filter((c) => isNumeric(c.type)).map((c) => c.name);
  const first = columns[0];
  if (first === undefined || numbers.length === 0) return null;
  if (TEMPORAL.test(first.type)) {
    return { kind: "line", x: first.name, y: numbers.slice(0, MAX_SERIES) };
  }
  const label = columns.find((c) => !isNumeric(c.type) && !TEMPORAL.test(c.type));
  if (label !== undefined) return { kind: "bar", x: label.name, y: numbers.slice(0, MAX_SERIES) };
  if (numbers.length >= 2) {
    const [x, ...y] = numbers;
    return { kind: "scatter", x: x as string, y: y.slice(0, MAX_SERIES) };
  }
  return { kind: "bar", x: first.name, y: numbers };
}

function num(value: unknown): number {
  return typeof value === "number" ? value : Number(value);
}

/** Draws `choice` over `rows` on `canvas`; returns the chart (destroy() it before redrawing). */
export function drawChart(canvas: HTMLCanvasElement, choice: ChartChoice, rows: Row[]): Chart {
  const datasets = choice.y.map((name, i) => {
    const color = PALETTE[i % PALETTE.length] as string;
    const data =
      choice.kind === "scatter"
        ? rows.map((r) => ({ x: num(r[choice.x]), y: num(r[name]) }))
        : rows.map((r) => num(r[name]));
    return { label: name, data, borderColor: color, backgroundColor: color, pointRadius: 2 };
  });
  return new Chart(canvas, {
    type: choice.kind,
    data: {
      labels: choice.kind === "scatter" ? undefined : rows.map((r) => String(r[choice.x])),
      datasets: datasets as never,
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { title: { display: true, text: choice.x }, ...(choice.kind === "scatter" ? { type: "linear" } : {}) },
        y: { beginAtZero: choice.kind === "bar" },
      },
    },
  });
}

/** A line chart of named series over string labels (the overview's history). */
export function drawSeries(
  canvas: HTMLCanvasElement,
  labels: string[],
  series: Record<string, number[]>,
  yTitle: string,
): Chart {
  return new Chart(canvas, {
    type: "line",
    data: {
      labels,
      datasets: Object.entries(series).map(([label, data], i) => ({
        label,
        data,
        borderColor: PALETTE[i % PALETTE.length],
        backgroundColor: PALETTE[i % PALETTE.length],
        pointRadius: 2,
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, title: { display: true, text: yTitle } } },
    },
  });
}
