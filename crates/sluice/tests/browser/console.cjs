// The operations console: sign in with the service token, cap the drain from the page, then
// (once this script prints "ready") the test sends a campaign over gRPC; the campaign's
// progress bar must reach done, and the queue-depth chart must show the rise and the fall.
"use strict";

const { URL, launch, page, check, screenshot, run } = require("./lib.cjs");

const CAMPAIGN = process.env.SLUICE_CAMPAIGN;
const RECIPIENTS = Number(process.env.SLUICE_RECIPIENTS);

run(async () => {
  const browser = await launch();
  const p = await page(browser, URL, "console");
  await p.goto("/console");
  await p.getByLabel("Service token").fill("wrong");
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.getByRole("alert").filter({ hasText: "not valid" }).waitFor();
  check(true, "a wrong service token is refused");
  await p.getByLabel("Service token").fill(process.env.SLUICE_SERVICE_TOKEN);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.locator("#t-procs", { hasText: /^[1-9]/ }).waitFor();
  check(true, "signed in; the fleet reports");

  // A ceiling slow enough that the queue is seen to fill, once a second.
  await p.getByLabel("Rate ceiling (msg/s, 0 = none)").fill("1000");
  await p.getByRole("button", { name: "Set rate" }).click();
  await p.locator("#drain-state", { hasText: "at most 1,000 msg/s" }).waitFor();
  check(true, "the drain's rate ceiling is set from the page");

  console.log("ready");
  const row = p.locator(`#campaigns tr[data-campaign="${CAMPAIGN}"]`);
  await row.waitFor({ timeout: 30000 });
  await p.waitForFunction(() => window.sluiceConsole.samples.some((s) => s.depth > 0), null, { timeout: 30000 });
  check(true, "the queue-depth series rises");
  await p.locator(`#campaigns tr[data-campaign="${CAMPAIGN}"][data-state="done"]`).waitFor({ timeout: 90000 });
  const bar = await row.locator("progress").evaluate((b) => ({ value: b.value, max: b.max }));
  check(bar.value === RECIPIENTS && bar.max === RECIPIENTS, "the progress bar is full: " + JSON.stringify(bar));
  await p.waitForFunction(() => {
    const s = window.sluiceConsole.samples;
    return s.length && s[s.length - 1].depth === 0;
  }, null, { timeout: 30000 });
  const depths = await p.evaluate(() => window.sluiceConsole.samples.map((s) => s.depth));
  const peak = Math.max(...depths);
  check(peak > 0 && depths[depths.length - 1] === 0 && depths.indexOf(peak) < depths.length - 1, "the queue depth rose to " + peak + " and fell to 0");
  await p.waitForTimeout(1500);
  await screenshot(p, "console.png", true);

  // A test campaign from the page's form.
  await p.getByLabel("Campaign id (optional)").fill("from-the-form");
  await p.getByLabel("Generated recipients").fill("5");
  await p.getByRole("button", { name: "Enqueue" }).click();
  await p.locator("#send-result", { hasText: "campaign from-the-form: 5 accepted" }).waitFor();
  await p.locator('#campaigns tr[data-campaign="from-the-form"][data-state="done"]').waitFor({ timeout: 30000 });
  check(true, "a test campaign sent from the form is listed and drains");

  // One campaign's rate and a tenant's pause, from the page: listed among the controls.
  await p.getByLabel("Scope").selectOption("campaign");
  await p.getByLabel("Tenant or campaign id").fill("spring");
  await p.getByLabel("Its rate (msg/s, 0 = none)").fill("25");
  await p.getByRole("button", { name: "Set its rate" }).click();
  await p.locator('#controls tr[data-scope="campaign:spring"]', { hasText: "25/s" }).waitFor();
  await p.getByLabel("Scope").selectOption("tenant");
  await p.getByLabel("Tenant or campaign id").fill("acme");
  await p.getByRole("button", { name: "Pause it" }).click();
  await p.locator('#controls tr[data-scope="tenant:acme"]', { hasText: "paused" }).waitFor();
  check(true, "a campaign's rate and a tenant's pause are set from the page and listed");
  await p.getByRole("button", { name: "Resume it" }).click();
  await p.getByLabel("Scope").selectOption("campaign");
  await p.getByLabel("Tenant or campaign id").fill("spring");
  await p.getByLabel("Its rate (msg/s, 0 = none)").fill("0");
  await p.getByRole("button", { name: "Set its rate" }).click();
  for (const scope of ["campaign:spring", "tenant:acme"]) await p.locator(`#controls tr[data-scope="${scope}"]`).waitFor({ state: "detached" });
  check(true, "and removed again");

  await p.getByLabel("Rate ceiling (msg/s, 0 = none)").fill("0");
  await p.getByRole("button", { name: "Set rate" }).click();
  await p.locator("#drain-state", { hasText: /^running$/ }).waitFor();
  await browser.close();
});
