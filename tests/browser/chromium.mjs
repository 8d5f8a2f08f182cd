// Debian's Chromium, headless, through playwright-core (never a downloaded
// browser), in a fresh profile: the one launch the browser tests share.
// Environment: CHROMIUM (the executable), PLAYWRIGHT_FROM (a package.json
// whose node_modules has playwright-core).
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const { chromium } = createRequire(process.env.PLAYWRIGHT_FROM)("playwright-core");

/** A persistent context in a temporary profile; `close()` removes the profile too. */
export async function launchChromium(options = {}) {
  const profile = await mkdtemp(join(tmpdir(), "chromium-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    ...options,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}
