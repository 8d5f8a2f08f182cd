// Bundles the console into the API package (api_service/console/static/):
// app.js (TypeScript, the @analytics/client sources and Chart.js, minified),
// index.html and console.css. Nothing is fetched at run time: the API serves
// these three files under a Content-Security-Policy of 'self'.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = here("../api-service/api_service/console/static/");

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
await build({
  entryPoints: [here("src/main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  outfile: out + "app.js",
  logLevel: "warning",
});
await copyFile(here("src/index.html"), out + "index.html");
await copyFile(here("src/console.css"), out + "console.css");
