/**
 * The console's entry point: read /console/config.json, finish or offer
 * sign-in, then show the section the address names (#overview, #schema,
 * #query, #named) and keep the overview current as new data versions land.
 */

import { adminPanel } from "./admin.js";
import { Api } from "./api.js";
import { type AuthConfig, type Session, beginSignIn, completeSignIn, currentSession, signOut, useToken } from "./auth.js";
import { announce, byId } from "./dom.js";
import { renderNamed } from "./named.js";
import { renderOverview } from "./overview.js";
import { errorText, renderQuery } from "./query.js";
import { renderSchema } from "./schema.js";

interface ConsoleConfig {
  auth: AuthConfig | null;
  freshness_target_seconds: number;
  poll_seconds: number;
  admin_commands: boolean;
  endpoints?: { status?: boolean; events?: boolean };
}

const VIEWS = ["overview", "schema", "query", "named"] as const;
type View = (typeof VIEWS)[number];

const api = new Api(location.origin);
const rendered = new Set<View>();
let liveMode = "connecting…";
let tables: string[] = [];
let stopWatching: (() => void) | null = null;

function viewFromHash(): View {
  const name = location.hash.replace(/^#/, "");
  return (VIEWS as readonly string[]).includes(name) ? (name as View) : "overview";
}

function show(id: string): void {
  for (const section of document.querySelectorAll<HTMLElement>("main > section")) {
    section.hidden = section.id !== id;
  }
  byId("loading").hidden = true;
}

async function render(view: View, config: ConsoleConfig, session: Session, force = false): Promise<void> {
  const root = byId(`view-${view}`);
  if (force || !rendered.has(view)) {
    rendered.add(view);
    if (view === "overview") {
      await renderOverview(root, {
        api,
        targetSeconds: config.freshness_target_seconds,
        liveMode: () => liveMode,
        adminPanel: () => (session.scopes.has("admin:etl") ? adminPanel(api, tables, config.admin_commands) : null),
      });
    } else if (view === "schema") await renderSchema(root, api);
    else if (view === "query") renderQuery(root, api, tables[0] ?? null);
    else await renderNamed(root, api);
  }
}

async function navigate(config: ConsoleConfig, session: Session): Promise<void> {
  const view = viewFromHash();
  for (const link of document.querySelectorAll<HTMLAnchorElement>("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  show(`view-${view}`);
  document.title = `${view[0]?.toUpperCase()}${view.slice(1)} · Analytics console`;
  try {
    await render(view, config, session);
  } catch (error) {
    rendered.delete(view);
    byId(`view-${view}`).textContent = `Could not load this section: ${errorText(error)}`;
  }
  byId("main").focus({ preventScroll: true });
}

function onVersion(config: ConsoleConfig, session: Session, version: string): void {
  const previous = document.body.dataset.version;
  document.body.dataset.version = version;
  if (previous === undefined || previous === version) return;
  announce(`New data version ${version}`);
  rendered.delete("schema");
  if (viewFromHash() === "overview") void render("overview", config, session, true).catch(() => rendered.delete("overview"));
  else rendered.delete("overview");
}

async function start(config: ConsoleConfig, session: Session): Promise<void> {
  byId("nav").hidden = false;
  byId("who").hidden = false;
  byId("who-name").textContent = `Signed in as ${session.sub}`;
  try {
    tables = Object.keys((await api.client.schema()).tables);
  } catch {
    tables = [];
  }
  const watch = api.watchVersion((v) => onVersion(config, session, v), config.poll_seconds);
  stopWatching = watch.stop;
  watch.mode
    .then((mode) => {
      liveMode = mode === "events" ? "live (server-sent events)" : `polling /health every ${config.poll_seconds} s (GET /events: not available on this server)`;
      const label = document.getElementById("live-mode");
      if (label) label.textContent = liveMode;
    })
    .catch(() => (liveMode = "not live: the version watch failed"));
  window.addEventListener("hashchange", () => void navigate(config, session));
  await navigate(config, session);
  document.body.dataset.state = "ready";
}

function offerSignIn(config: ConsoleConfig, problem: string | null): void {
  show("view-sign-in");
  document.body.dataset.state = "signed-out";
  const button = byId<HTMLButtonElement>("sign-in");
  const form = byId<HTMLFormElement>("token-form");
  byId("sign-in-error").textContent = problem ?? "";
  if (config.auth) {
    byId("sign-in-text").textContent = "Sign in with your organisation's account to see the platform's data.";
    button.hidden = false;
    button.addEventListener("click", () => void beginSignIn(config.auth as AuthConfig));
    button.focus();
  } else {
    byId("sign-in-text").textContent =
      "Sign-in is not configured on this server (CONSOLE_AUTH0_CLIENT_ID). Paste an access token for the API instead; it is kept in this page's memory only.";
    form.hidden = false;
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    try {
      const session = useToken(byId<HTMLInputElement>("token-input").value);
      byId<HTMLInputElement>("token-input").value = "";
      void start(config, session);
    } catch (error) {
      byId("sign-in-error").textContent = errorText(error);
    }
  });
}

async function main(): Promise<void> {
  const config = (await (await fetch("config.json")).json()) as ConsoleConfig;
  api.endpoints = config.endpoints ?? {};
  byId("sign-out").addEventListener("click", () => {
    signOut();
    stopWatching?.();
    location.replace(location.pathname);
  });
  let problem: string | null = null;
  if (config.auth) {
    try {
      await completeSignIn(config.auth);
    } catch (error) {
      problem = errorText(error);
    }
  }
  const session = currentSession();
  if (session === null) offerSignIn(config, problem);
  else await start(config, session);
}

main().catch((error: unknown) => {
  document.body.dataset.state = "error";
  byId("loading").textContent = `The console could not start: ${errorText(error)}`;
});
