// Helpers both pages share: element building (text only, never HTML from data), JSON calls
// and number formatting.
"use strict";

const $ = (id) => document.getElementById(id);

/** Builds an element; `props` sets properties (className, textContent, ...) or attributes. */
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k in e && !k.startsWith("aria") && !k.startsWith("data")) e[k] = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** A JSON request; rejects with {code, message} on any non-2xx answer. */
async function api(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw { code: "network", message: "the server cannot be reached" };
  }
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw { code: data.code || "http_" + resp.status, message: data.message || resp.statusText, status: resp.status };
  return data;
}

function fmt(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return "–";
  if (secs < 60) return Math.ceil(secs) + " s";
  if (secs < 3600) return Math.floor(secs / 60) + " min " + Math.round(secs % 60) + " s";
  return Math.floor(secs / 3600) + " h " + Math.round((secs % 3600) / 60) + " min";
}
