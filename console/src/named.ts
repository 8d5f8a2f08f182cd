/** Named queries: one form per query, its fields generated from the parameters GET /queries describes. */

import type { NamedQueryInfo, ParameterSpec } from "../../clients/typescript/src/index.js";
import type { Api } from "./api.js";
import { el, replace } from "./dom.js";
import { errorText } from "./query.js";
import { ResultView } from "./results.js";

function field(query: string, name: string, spec: ParameterSpec): { node: HTMLElement; read: () => unknown } {
  const id = `p-${query}-${name}`;
  const required = spec.required === true && spec.default === undefined;
  const label = el("label", { for: id, text: `${name}${required ? " (required)" : ""}` });
  const help = spec.description ? el("span", { className: "muted", id: `${id}-help`, text: spec.description }) : null;
  if (spec.enum) {
    const select = el("select", { id, required }, ...spec.enum.map((v) => el("option", { value: String(v), selected: v === spec.default, text: String(v) })));
    return { node: el("div", {}, label, select, help), read: () => spec.enum?.find((v) => String(v) === select.value) };
  }
  if (spec.type === "boolean") {
    const box = el("input", { id, type: "checkbox", checked: spec.default === true });
    return { node: el("div", { className: "row" }, box, label, help), read: () => box.checked };
  }
  const type = { integer: "number", number: "number", date: "date", timestamp: "datetime-local", string: "text" }[spec.type];
  const input = el("input", {
    id,
    type,
    required,
    min: spec.minimum,
    max: spec.maximum,
    step: spec.type === "integer" ? 1 : spec.type === "number" ? "any" : null,
    maxlength: spec.max_length,
    "aria-describedby": help ? `${id}-help` : null,
  });
  if (spec.default !== undefined && spec.default !== null) input.value = String(spec.default);
  const read = () => {
    if (input.value === "") return undefined;
    if (spec.type === "integer" || spec.type === "number") return Number(input.value);
    return input.value;
  };
  return { node: el("div", {}, label, input, help), read };
}

function queryForm(api: Api, info: NamedQueryInfo): HTMLElement {
  const fields = Object.entries(info.parameters).map(([name, spec]) => ({ name, ...field(info.name, name, spec) }));
  const error = el("p", { className: "error", role: "alert" });
  const results = new ResultView(`named-${info.name}`, async () => ({ rows: [], next: null }));
  const submit = el("button", { type: "submit", className: "primary", text: `Run ${info.name}` });
  const form = el(
    "form",
    {
      className: "named card",
      "data-query": info.name,
      "aria-labelledby": `q-${info.name}`,
      onsubmit: async (e: Event) => {
        e.preventDefault();
        error.textContent = "";
        submit.disabled = true;
        const params: Record<string, unknown> = {};
        for (const f of fields) {
          const value = f.read();
          if (value !== undefined) params[f.name] = value;
        }
        try {
          results.show(await api.client.namedQuery(info.name, params));
        } catch (err) {
          error.textContent = errorText(err);
          results.clear();
        } finally {
          submit.disabled = false;
        }
      },
    },
    el("h3", { id: `q-${info.name}`, text: info.name }),
    el("p", { className: "muted", text: info.description }),
    ...fields.map((f) => f.node),
    el("div", { className: "row" }, submit),
    error,
    results.root,
  );
  return form;
}

export async function renderNamed(root: HTMLElement, api: Api): Promise<void> {
  const queries = await api.client.listNamedQueries();
  replace(
    root,
    el("h2", { id: "named-title", text: "Named queries" }),
    queries.length === 0 ? el("p", { className: "muted", text: "Your application may run no named queries." }) : null,
    ...queries.map((q) => queryForm(api, q)),
  );
}
