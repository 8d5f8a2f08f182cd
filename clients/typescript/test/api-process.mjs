// Starts the real API for the tests: `python -m testsupport.client_api` from
// the repository root (Gunicorn over a test snapshot, a local token issuer,
// and an empty API that answers 503). ANALYTICS_TEST_PYTHON names the Python
// with the project installed (default: the repository's .venv).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const python = process.env.ANALYTICS_TEST_PYTHON ?? resolve(repoRoot, ".venv", "bin", "python");

export async function startApi({ timeoutMs = 120_000 } = {}) {
  const child = spawn(python, ["-m", "testsupport.client_api"], {
    cwd: repoRoot,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (what) => {
    const timer = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`no answer from the API helper: ${what}`)), timeoutMs).unref(),
    );
    const line = await Promise.race([lines.next(), timer]);
    if (line.done) throw new Error(`the API helper exited (${what})`);
    return JSON.parse(line.value);
  };
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let info;
  try {
    info = await next("start");
  } catch (error) {
    // A helper that did not start properly must not outlive the test run.
    child.stdin.end();
    child.kill("SIGTERM");
    throw error;
  }
  return {
    ...info,
    /** Publish a new snapshot; resolves with its version once the API serves it. */
    async publish() {
      child.stdin.write("publish\n");
      return (await next("publish")).data_version;
    },
    async mint(sub, azp) {
      child.stdin.write(`token ${sub}${azp ? ` ${azp}` : ""}\n`);
      return (await next("token")).token;
    },
    async close() {
      child.stdin.end();
      await exited;
    },
  };
}
