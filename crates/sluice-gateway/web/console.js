// The Sluice operations console: polls the admin API (/v1/admin/..., service token) and
// draws the fleet's queue, drain and chat latency on one time axis, live.
"use strict";

// The charts span the samples seen, from one minute up to five.
const WINDOW_MS = 5 * 60 * 1000;
const MIN_WINDOW_MS = 60 * 1000;
const TOKEN_KEY = "sluice.console.token";

const consoleState = {
  token: null,
  samples: [], // {t, depth, drain, limit, enqueue, p50, p99}
  timers: [],
  failures: 0,
};
// For people debugging the page, and for the browser tests.
window.sluiceConsole = consoleState;

function showAlert(text) {
  const a = $("alert");
  a.textContent = text;
  a.hidden = false;
  clearTimeout(showAlert.timer);
  showAlert.timer = setTimeout(() => (a.hidden = true), 8000);
}

function setConn(text, cls) {
  $("conn").textContent = text;
  $("conn").className = "status " + cls;
}

const call = (method, path, body) => api(method, path, { token: consoleState.token, body });

async function signIn(token) {
  consoleState.token = token;
  try {
    await call("GET", "/v1/admin/controls");
  } catch (e) {
    consoleState.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin").hidden = false;
    $("console").hidden = true;
    if (e.code) showAlert(e.status === 401 ? "That service token is not valid." : e.code + ": " + e.message);
    $("service-token").focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("alert").hidden = true;
  $("signin").hidden = true;
  $("console").hidden = false;
  $("signout").hidden = false;
  setConn("live", "ok");
  const every = (ms, f) => {
    f();
    consoleState.timers.push(setInterval(f, ms));
  };
  every(1000, pollOverview);
  every(2000, pollCampaigns);
  every(2000, pollControls);
  every(5000, pollDeadLetters);
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("service-token").value.trim());
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---- overview and charts ----

async function pollOverview() {
  let o;
  try {
    o = await call("GET", "/v1/admin/overview");
  } catch (e) {
    consoleState.failures++;
    setConn("cannot reach the server (" + e.code + ")", "bad");
    return;
  }
  consoleState.failures = 0;
  setConn("live", "ok");
  const f = o.fleet;
  const q = o.queue;
  consoleState.samples.push({
    t: o.at_ms,
    depth: q.depth,
    drain: f.drain_rate,
    limit: effectiveLimit(f, o.drain),
    enqueue: f.enqueue_rate,
    p50: f.interactive_p50_ms,
    p99: f.interactive_p99_ms,
  });
  while (consoleState.samples.length && consoleState.samples[0].t < o.at_ms - WINDOW_MS) consoleState.samples.shift();
  $("t-depth").textContent = fmt(q.depth);
  $("t-age").textContent = q.oldest_age_ms ? fmtDuration(q.oldest_age_ms / 1000) : "–";
  $("t-drain").textContent = fmt(f.drain_rate);
  $("t-limit").textContent = f.drain_limit ? fmt(effectiveLimit(f, o.drain)) : "–";
  $("t-enqueue").textContent = fmt(f.enqueue_rate);
  $("t-latency").textContent = fmt(f.interactive_p50_ms, 1) + " / " + fmt(f.interactive_p99_ms, 1);
  $("t-conns").textContent = fmt(f.connections);
  $("t-conflicts").textContent = fmt(f.conflicts_per_s, 1) + " / " + fmt(f.throttles_per_s, 1);
  $("t-held").textContent = fmt(q.held) + " / " + fmt(q.dead);
  $("t-procs").textContent = fmt(f.processes);
  $("updated").textContent = "updated " + new Date(o.at_ms).toLocaleTimeString();
  const d = o.drain;
  $("drain-state").textContent = d.paused ? "paused" : d.rate ? "running, at most " + fmt(d.rate) + " msg/s" : "running";
  $("drain-state").className = "status " + (d.paused ? "bad" : "ok");
  const rate = $("drain-rate");
  if (document.activeElement !== rate) rate.value = d.rate || 0;
  draw();
}

/** What holds the drain: the governors' limits, under the operator's ceiling when set. */
function effectiveLimit(f, drain) {
  if (!f.drain_limit) return null;
  return drain.rate ? Math.min(f.drain_limit, drain.rate) : f.drain_limit;
}

/** Draws `series` ({key, color}) of the samples on a canvas, on the shared time axis. */
function chart(id, series, unit) {
  const c = $(id);
  const ctx = c.getContext("2d");
  const w = c.width;
  const h = c.height;
  const pad = { l: 64, r: 8, t: 8, b: 18 };
  ctx.clearRect(0, 0, w, h);
  const s = consoleState.samples;
  const now = s.length ? s[s.length - 1].t : Date.now();
  const span = Math.min(WINDOW_MS, Math.max(MIN_WINDOW_MS, s.length ? now - s[0].t : 0));
  const x = (t) => pad.l + ((t - (now - span)) / span) * (w - pad.l - pad.r);
  let max = 0;
  for (const p of s) for (const { key } of series) if (p[key] != null) max = Math.max(max, p[key]);
  max = max > 0 ? niceCeil(max) : 1;
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#5d6675";
  ctx.strokeStyle = "#dde1e6";
  ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    ctx.beginPath();
    ctx.moveTo(pad.l, y(v));
    ctx.lineTo(w - pad.r, y(v));
    ctx.stroke();
    ctx.fillText(fmt(v, max < 10 ? 1 : 0) + (unit ? " " + unit : ""), 4, y(v) + 4);
  }
  const step = span > 2 * MIN_WINDOW_MS ? 60000 : 10000;
  for (let ago = step; ago < span; ago += step) {
    ctx.fillText("-" + (step === 60000 ? ago / 60000 + " min" : ago / 1000 + " s"), x(now - ago) - 14, h - 4);
  }
  for (const { key, color } of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    for (const p of s) {
      if (p[key] == null) {
        drawing = false;
        continue;
      }
      if (drawing) ctx.lineTo(x(p.t), y(p[key]));
      else ctx.moveTo(x(p.t), y(p[key]));
      drawing = true;
    }
    ctx.stroke();
  }
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function draw() {
  chart("c-depth", [{ key: "depth", color: "#1f6feb" }], "");
  chart("c-rate", [
    { key: "drain", color: "#067647" },
    { key: "limit", color: "#b54708" },
    { key: "enqueue", color: "#8e44ad" },
  ], "/s");
  chart("c-latency", [
    { key: "p50", color: "#1f6feb" },
    { key: "p99", color: "#b42318" },
  ], "ms");
}

// ---- drain control ----

async function control(scope, change) {
  try {
    await call("POST", "/v1/admin/controls", { scope, ...change });
    pollOverview();
    pollCampaigns();
    pollControls();
  } catch (e) {
    showAlert(e.code + ": " + e.message);
  }
}

$("scope-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const scope = $("scope-kind").value + ":" + $("scope-id").value.trim();
  const action = ev.submitter ? ev.submitter.name : "rate";
  if (action === "pause") control(scope, { paused: true });
  else if (action === "resume") control(scope, { paused: false });
  else control(scope, { rate: Number($("scope-rate").value || 0) });
});

/** Puts `rows` into the table body `id`, or one row of `cols` columns saying `empty`. */
function fillRows(id, rows, cols, empty) {
  $(id).replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colSpan: cols, className: "muted", textContent: empty }))]));
}

/** The controls in force, each scope with its state and rate. */
async function pollControls() {
  let r;
  try {
    r = await call("GET", "/v1/admin/controls");
  } catch (e) {
    return;
  }
  const rows = r.controls.map((c) =>
    el(
      "tr",
      { "data-scope": c.scope },
      el("td", { textContent: c.scope }),
      el("td", { textContent: c.paused ? "paused" : "running" }),
      el("td", { className: "num", textContent: c.rate ? fmt(c.rate) + "/s" : "–" }),
    ),
  );
  fillRows("controls", rows, 3, "none");
}

$("drain-pause").addEventListener("click", () => control("drain", { paused: true }));
$("drain-resume").addEventListener("click", () => control("drain", { paused: false }));
$("rate-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  control("drain", { rate: Number($("drain-rate").value) });
  $("drain-rate").blur();
});

// ---- campaigns ----

async function pollCampaigns() {
  let r;
  try {
    r = await call("GET", "/v1/admin/campaigns?limit=50");
  } catch (e) {
    return;
  }
  const rows = r.campaigns.map((c) => {
    const finished = c.persisted + c.dead_lettered;
    const bar = el("progress", { max: Math.max(c.enqueued, 1), value: finished, "aria-label": "progress of " + c.campaign_id });
    const toggle = c.state === "done" ? null : el("button", { type: "button", textContent: c.state === "paused" ? "Resume" : "Pause" });
    if (toggle) toggle.addEventListener("click", () => control("campaign:" + c.campaign_id, { paused: c.state !== "paused" }));
    return el(
      "tr",
      { "data-campaign": c.campaign_id, "data-state": c.state },
      el("td", { textContent: c.campaign_id }),
      el("td", { textContent: c.tenant }),
      el("td", {}, bar, " ", el("span", { className: "muted", textContent: Math.floor((100 * finished) / Math.max(c.enqueued, 1)) + "%" })),
      el("td", { className: "num", textContent: fmt(c.requested) }),
      el("td", { className: "num", textContent: fmt(c.enqueued) }),
      el("td", { className: "num", textContent: fmt(c.persisted) }),
      el("td", { className: "num", textContent: fmt(c.dead_lettered) }),
      el("td", { className: "state", textContent: c.state }),
      el("td", { className: "num", textContent: fmt(c.rate) + "/s" }),
      el("td", { className: "num", textContent: c.state === "done" ? "–" : fmtDuration(c.eta_secs) }),
      el("td", {}, toggle),
    );
  });
  fillRows("campaigns", rows, 11, "none yet");
}

// ---- dead letters ----

async function pollDeadLetters() {
  let r;
  try {
    r = await call("GET", "/v1/admin/dead-letters?limit=100");
  } catch (e) {
    return;
  }
  const rows = r.dead_letters.map((d) =>
    el(
      "tr",
      {},
      el("td", { textContent: new Date(d.dead_at_ms).toLocaleString() }),
      el("td", { textContent: d.campaign_id || "–" }),
      el("td", { textContent: d.room || d.group }),
      el("td", { textContent: d.tenant }),
      el("td", { className: "num", textContent: fmt(d.receive_count) }),
      el("td", { textContent: d.reason }),
    ),
  );
  fillRows("dead-letters", rows, 6, "none");
  $("redrive").disabled = rows.length === 0;
}

$("redrive").addEventListener("click", async () => {
  try {
    const r = await call("POST", "/v1/admin/dead-letters/redrive", {});
    showAlert("Redrove " + r.redriven + " messages to the queue.");
    pollDeadLetters();
  } catch (e) {
    showAlert(e.code + ": " + e.message);
  }
});

// ---- test campaign ----

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const listed = $("send-recipients").value.split(/[\s,]+/).filter(Boolean);
  const count = Number($("send-count").value) || 0;
  const recipients = listed.concat(Array.from({ length: count }, (_, i) => "user-" + (i + 1)));
  const body = {
    sender: $("send-sender").value.trim(),
    recipients,
    body: $("send-body").value,
  };
  if ($("send-tenant").value.trim()) body.tenant = $("send-tenant").value.trim();
  if ($("send-id").value.trim()) body.campaign_id = $("send-id").value.trim();
  $("send-result").textContent = "enqueueing…";
  try {
    const r = await call("POST", "/v1/admin/campaigns", body);
    $("send-result").textContent = "campaign " + r.campaign_id + ": " + fmt(r.accepted) + " accepted";
    pollCampaigns();
  } catch (e) {
    $("send-result").textContent = "";
    showAlert(e.code + ": " + e.message);
  }
});

// ---- start ----

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
else {
  $("signin").hidden = false;
  $("service-token").focus();
}
