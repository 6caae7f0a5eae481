// What the browser scripts share: chromium through playwright-core, a TCP proxy that can cut
// a page off the network, and checks that fail loudly. Run by crates/sluice/tests/browser.rs.
"use strict";

const net = require("net");
const path = require("path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const URL = process.env.SLUICE_URL;
const SHOTS = process.env.SLUICE_SCREENSHOTS;

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

/** A page of its own (own cookies and storage) at `base`, logging what the page logs on failure. */
async function page(browser, base, name) {
  const context = await browser.newContext({ baseURL: base, viewport: { width: 1200, height: 800 } });
  const p = await context.newPage();
  p.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  p.on("console", (m) => {
    if (m.type() === "error") console.error(`[${name}] console: ${m.text()}`);
  });
  return p;
}

/** A TCP proxy to the server that can drop every connection and refuse new ones. */
async function proxy(target) {
  const { hostname, port } = new URL_(target);
  const sockets = new Set();
  let blocked = false;
  const server = net.createServer((client) => {
    if (blocked) return client.destroy();
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client);
    sockets.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    drop() {
      blocked = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      blocked = false;
    },
    close() {
      blocked = true;
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
const URL_ = globalThis.URL;

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok - " + what);
}

async function screenshot(p, name, fullPage = false) {
  await p.screenshot({ path: path.join(SHOTS, name), fullPage });
  console.log("screenshot " + name);
}

/** Runs `main`, exiting 1 with the error on any failure (and after 150 s at most). */
function run(main) {
  const limit = setTimeout(() => {
    console.error("timed out after 150 s");
    process.exit(1);
  }, 150000);
  main().then(
    () => {
      clearTimeout(limit);
      process.exit(0);
    },
    (e) => {
      console.error(e && e.stack ? e.stack : e);
      process.exit(1);
    },
  );
}

module.exports = { URL, launch, page, proxy, check, screenshot, run };
