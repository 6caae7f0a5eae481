// The Sluice web chat client: the WebSocket contract v1 (DESIGN.md) in a page.
//
// - Rooms come from `inbox` (paged) and live `unread` frames (ordered by `version`).
// - A room's messages are kept by seq from a floor (the oldest page loaded): live messages,
//   acks and history pages all land in one map, so nothing shows twice.
// - After a reconnect, `resume` asks for every message after the highest seq held without a
//   gap, per loaded room; sends still pending are sent again with the same client_msg_id,
//   which the server deduplicates.
"use strict";

const HISTORY_PAGE = 50;
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;
const PRESENCE_EVERY_MS = 15000;
const TOKEN_KEY = "sluice.chat.token";

const state = {
  token: null,
  user: null,
  dev: false,
  ws: null,
  connected: false,
  signedOut: true,
  attempt: 0,
  reconnectTimer: null,
  rooms: new Map(), // room -> {unread, read_seq, last_seq}
  total: 0,
  unreadVersion: 0,
  open: null,
  loaded: new Map(), // room -> {floor, msgs: Map(seq -> message), pending: Map(cid -> {body, state, error}), loading}
  readSent: new Map(),
  typing: new Map(), // room -> {user, until}
  lastTyping: 0,
  presence: new Map(),
  sent: 0,
};

// ---- sign-in ----

function tokenClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch (e) {
    return null;
  }
}

function tokenExpired(token) {
  const c = tokenClaims(token);
  return !c || !c.exp || c.exp * 1000 < Date.now() + 5000;
}

async function init() {
  try {
    state.dev = (await api("GET", "/v1/dev")).dev_sign_in === true;
  } catch (e) {
    state.dev = false;
  }
  $("dev-form").hidden = !state.dev;
  if (!state.dev) $("token-help").textContent = "This server signs users in with tokens from your identity provider: paste yours.";
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved && !tokenExpired(saved)) signIn(saved);
  else showSignIn();
}

function showSignIn(message) {
  $("signin").hidden = false;
  $("chat").hidden = true;
  $("signout").hidden = true;
  $("me").textContent = "";
  setConn("signed out", "");
  if (message) showAlert(message);
  (state.dev ? $("dev-user") : $("token")).focus();
}

$("dev-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await api("POST", "/v1/dev/token", { body: { user: $("dev-user").value.trim() } });
    signIn(r.token);
  } catch (e) {
    showAlert(describe(e));
  }
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!tokenClaims(token)) return showAlert("That is not a JWT.");
  if (tokenExpired(token)) return showAlert("That token has expired.");
  signIn(token);
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.signedOut = true;
  clearTimeout(state.reconnectTimer);
  if (state.ws) state.ws.close(1000, "signed out");
  location.reload();
});

function signIn(token) {
  state.token = token;
  state.user = tokenClaims(token).sub;
  state.signedOut = false;
  sessionStorage.setItem(TOKEN_KEY, token);
  hideAlert();
  $("signin").hidden = true;
  $("chat").hidden = false;
  $("signout").hidden = false;
  $("me").textContent = "signed in as " + state.user;
  connect();
  $("dm-user").focus();
}

// ---- connection ----

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "status " + cls;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  if (tokenExpired(state.token)) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showSignIn("Your session has expired: sign in again.");
  }
  setConn(state.attempt ? "reconnecting…" : "connecting…", "warn");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws?token=" + encodeURIComponent(state.token);
  const ws = new WebSocket(url);
  state.ws = ws;
  ws.onopen = () => {
    if (state.ws !== ws) return;
    state.connected = true;
    state.attempt = 0;
    setConn("connected", "ok");
    send({ type: "inbox" });
    const rooms = {};
    for (const [room, r] of state.loaded) if (r.floor !== null) rooms[room] = contiguous(r);
    if (Object.keys(rooms).length) send({ type: "resume", rooms });
    for (const [room, r] of state.loaded) {
      for (const [cid, p] of r.pending) if (p.state === "pending") send({ type: "send", room, client_msg_id: cid, body: p.body });
    }
    if (state.open) askPresence();
  };
  ws.onmessage = (e) => {
    if (state.ws !== ws) return;
    let f;
    try {
      f = JSON.parse(e.data);
    } catch (err) {
      return;
    }
    onFrame(f);
  };
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.connected = false;
    state.ws = null;
    if (state.signedOut) return;
    // Backoff with jitter: 0.5 s, 1 s, 2 s ... up to 10 s.
    const delay = Math.min(10000, 500 * 2 ** state.attempt) * (0.75 + Math.random() * 0.5);
    state.attempt++;
    const why = e.reason ? " (" + e.reason + ")" : "";
    setConn("offline, retrying in " + Math.ceil(delay / 1000) + " s" + why, "bad");
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function send(frame) {
  if (!state.connected || !state.ws) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

/** The highest seq held with nothing missing above the room's floor. */
function contiguous(r) {
  let n = r.floor;
  while (r.msgs.has(n + 1)) n++;
  return n;
}

// ---- frames from the server ----

function onFrame(f) {
  switch (f.type) {
    case "message":
      return onMessage(f);
    case "ack":
      return onAck(f);
    case "history":
      return onHistory(f);
    case "inbox":
      return onInbox(f);
    case "unread":
      if (f.version !== undefined && f.version < state.unreadVersion) return;
      if (f.version !== undefined) state.unreadVersion = f.version;
      room(f.room).unread = f.unread;
      state.total = f.total_unread;
      return renderRooms();
    case "typing":
      state.typing.set(f.room, { user: f.user, until: Date.now() + TYPING_SHOWN_MS });
      renderTyping();
      return setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
    case "presence":
      state.presence.set(f.room, f.online);
      return renderPresence();
    case "error":
      return onError(f);
    default:
      return; // resumed, and frames of later versions
  }
}

function room(id) {
  let r = state.rooms.get(id);
  if (!r) {
    r = { unread: 0, read_seq: 0, last_seq: 0 };
    state.rooms.set(id, r);
  }
  return r;
}

function onMessage(m) {
  // A message ends its sender's typing.
  const t = state.typing.get(m.room);
  if (t && t.user === m.sender) {
    state.typing.delete(m.room);
    renderTyping();
  }
  const r = room(m.room);
  r.last_seq = Math.max(r.last_seq, m.seq);
  const l = state.loaded.get(m.room);
  if (l && (l.floor === null || m.seq > l.floor)) l.msgs.set(m.seq, m);
  if (m.room === state.open) {
    renderMessages();
    markRead();
  }
  renderRooms();
}

function onAck(a) {
  const l = state.loaded.get(a.room);
  if (!l) return;
  const p = l.pending.get(a.client_msg_id);
  l.pending.delete(a.client_msg_id);
  if (p && (l.floor === null || a.seq > l.floor) && !l.msgs.has(a.seq)) {
    l.msgs.set(a.seq, { room: a.room, seq: a.seq, msg_id: a.msg_id, sender: state.user, body: p.body, kind: "chat", sent_at: Date.now() });
  }
  const r = room(a.room);
  r.last_seq = Math.max(r.last_seq, a.seq);
  if (a.room === state.open) {
    renderMessages();
    markRead();
  }
}

function onHistory(h) {
  const l = state.loaded.get(h.room);
  if (!l) return;
  for (const m of h.messages) l.msgs.set(m.seq, m);
  const full = h.messages.length >= HISTORY_PAGE;
  const lowest = h.messages.length ? h.messages[0].seq - 1 : 0;
  // The floor only moves down: a page reaches back to its first message, or to the start.
  const floor = full ? lowest : 0;
  l.floor = l.floor === null ? floor : Math.min(l.floor, floor);
  l.loading = false;
  if (h.room === state.open) {
    renderMessages(l.older);
    markRead();
  }
  l.older = false;
}

function onInbox(i) {
  for (const r of i.rooms) Object.assign(room(r.room), { unread: r.unread, read_seq: r.read_seq, last_seq: r.last_seq });
  state.total = i.total_unread;
  if (i.next) send({ type: "inbox", after: i.next });
  renderRooms();
}

const EXPLAIN = {
  rate_limited: "You are sending too fast; wait a moment.",
  too_large: "That is too large.",
  not_member: "You are not a member of this room.",
  unknown_room: "This room does not exist.",
  unauthorized: "You are not signed in.",
  bad_frame: "The server refused the request.",
  internal: "The server failed; try again.",
};

function describe(e) {
  return (EXPLAIN[e.code] || "Error") + (e.message ? " (" + e.code + ": " + e.message + ")" : "");
}

function onError(e) {
  for (const [, l] of state.loaded) {
    const p = e.ref && l.pending.get(e.ref);
    if (p) {
      p.state = "failed";
      p.error = describe(e);
      renderMessages();
      return;
    }
  }
  const l = e.ref && state.loaded.get(e.ref);
  if (l && l.loading) {
    l.loading = false;
    if (l.floor === null) l.floor = 0;
  }
  showAlert(describe(e));
}

// ---- actions ----

function dmRoom(other) {
  return "dm:" + [state.user, other].sort().join(":");
}

function openRoom(id) {
  state.open = id;
  room(id);
  let l = state.loaded.get(id);
  if (!l) {
    l = { floor: null, msgs: new Map(), pending: new Map(), loading: true, older: false };
    state.loaded.set(id, l);
    send({ type: "history", room: id, limit: HISTORY_PAGE });
  }
  $("room-title").textContent = title(id);
  $("composer").hidden = false;
  askPresence();
  renderRooms();
  renderTyping();
  renderPresence();
  renderMessages();
  markRead();
  $("body").focus();
}

function loadOlder() {
  const l = state.loaded.get(state.open);
  if (!l || l.loading || l.floor === null || l.floor === 0) return;
  l.loading = true;
  l.older = true;
  send({ type: "history", room: state.open, before: l.floor + 1, limit: HISTORY_PAGE });
}

function markRead() {
  const id = state.open;
  if (!id || document.visibilityState !== "visible") return;
  const l = state.loaded.get(id);
  const r = state.rooms.get(id);
  let seq = r ? r.last_seq : 0;
  if (l) for (const s of l.msgs.keys()) seq = Math.max(seq, s);
  if (seq === 0 || (state.readSent.get(id) || 0) >= seq) return;
  if (send({ type: "read", room: id, seq })) state.readSent.set(id, seq);
}

function askPresence() {
  if (state.open) send({ type: "presence", room: state.open });
}

$("new-dm").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const other = $("dm-user").value.trim();
  if (!other || other === state.user) return;
  $("dm-user").value = "";
  openRoom(dmRoom(other));
});

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = $("body").value;
  if (!body.trim() || !state.open) return;
  const l = state.loaded.get(state.open);
  const cid = Date.now().toString(36) + "-" + state.sent++ + "-" + Math.random().toString(36).slice(2, 8);
  l.pending.set(cid, { body, state: "pending" });
  $("body").value = "";
  send({ type: "send", room: state.open, client_msg_id: cid, body });
  renderMessages(false, true);
});

$("body").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("body").addEventListener("input", () => {
  if (state.open && Date.now() - state.lastTyping > TYPING_EVERY_MS && send({ type: "typing", room: state.open })) state.lastTyping = Date.now();
});

$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadOlder();
});

document.addEventListener("visibilitychange", markRead);
window.addEventListener("focus", markRead);
setInterval(askPresence, PRESENCE_EVERY_MS);

// ---- rendering ----

function title(id) {
  if (id.startsWith("dm:")) {
    const [a, b] = id.slice(3).split(":");
    return a === state.user ? b : a;
  }
  return id;
}

function renderRooms() {
  const list = $("room-list");
  const ids = [...state.rooms.keys()].sort((a, b) => title(a).localeCompare(title(b)));
  list.replaceChildren(
    ...ids.map((id) => {
      const r = state.rooms.get(id);
      const li = el(
        "li",
        { tabIndex: 0, "data-room": id, "aria-current": id === state.open ? "true" : "false" },
        el("span", { className: "name", textContent: title(id), title: id }),
        el("span", { className: "badge", textContent: String(r.unread), hidden: r.unread === 0, "aria-label": r.unread + " unread" }),
      );
      li.addEventListener("click", () => openRoom(id));
      li.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          openRoom(id);
        }
      });
      return li;
    }),
  );
  const total = $("total");
  total.textContent = String(state.total);
  total.hidden = state.total === 0;
  document.title = (state.total ? "(" + state.total + ") " : "") + "Sluice chat";
}

function renderMessages(keepTop = false, toBottom = false) {
  const box = $("messages");
  const l = state.loaded.get(state.open);
  if (!l) return box.replaceChildren();
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  const oldHeight = box.scrollHeight;
  const items = [];
  if (l.floor !== null && l.floor > 0) {
    const b = el("button", { type: "button", className: "older", textContent: l.loading ? "Loading…" : "Load older messages" });
    b.addEventListener("click", loadOlder);
    items.push(el("li", { className: "older" }, b));
  }
  if (l.floor === null) items.push(el("li", { className: "muted", textContent: "Loading…" }));
  const seqs = [...l.msgs.keys()].sort((a, b) => a - b);
  for (const s of seqs) {
    const m = l.msgs.get(s);
    const mine = m.sender === state.user;
    const when = new Date(m.sent_at).toLocaleTimeString();
    items.push(
      el(
        "li",
        { className: mine ? "mine sent" : "", "data-seq": m.seq, "data-sender": m.sender },
        el("div", { className: "meta" }, el("strong", { textContent: m.sender }), el("span", { textContent: when }), m.kind !== "chat" ? el("span", { textContent: m.kind }) : null, mine ? el("span", { className: "state", textContent: "sent", "aria-label": "delivered to the server" }) : null),
        el("div", { className: "body", textContent: m.body }),
      ),
    );
  }
  for (const [cid, p] of l.pending) {
    const stateText = p.state === "pending" ? "sending…" : "failed: " + p.error;
    let retry = null;
    let discard = null;
    if (p.state === "failed") {
      retry = el("button", { type: "button", textContent: "Retry" });
      retry.addEventListener("click", () => {
        p.state = "pending";
        send({ type: "send", room: state.open, client_msg_id: cid, body: p.body });
        renderMessages();
      });
      discard = el("button", { type: "button", textContent: "Discard" });
      discard.addEventListener("click", () => {
        l.pending.delete(cid);
        renderMessages();
      });
    }
    items.push(
      el(
        "li",
        { className: "mine " + p.state, "data-pending": cid },
        el("div", { className: "meta" }, el("strong", { textContent: state.user }), el("span", { className: "state", textContent: stateText }), retry, discard),
        el("div", { className: "body", textContent: p.body }),
      ),
    );
  }
  if (l.floor === 0 && seqs.length === 0 && l.pending.size === 0) items.push(el("li", { className: "muted", textContent: "No messages yet: say hello." }));
  box.replaceChildren(...items);
  if (keepTop) box.scrollTop = box.scrollHeight - oldHeight;
  else if (atBottom || toBottom) box.scrollTop = box.scrollHeight;
}

function renderTyping() {
  const t = state.open && state.typing.get(state.open);
  $("typing").textContent = t && t.until > Date.now() ? t.user + " is typing…" : "";
}

function renderPresence() {
  const id = state.open;
  if (!id) return;
  const online = state.presence.get(id);
  let text = "";
  if (online) {
    if (id.startsWith("dm:")) text = online.includes(title(id)) ? title(id) + " is online" : title(id) + " is offline";
    else text = online.length ? "online: " + online.join(", ") : "nobody else online";
  }
  $("presence").textContent = text;
}

function showAlert(text) {
  const a = $("alert");
  a.textContent = text;
  a.hidden = false;
  clearTimeout(showAlert.timer);
  showAlert.timer = setTimeout(hideAlert, 8000);
}

function hideAlert() {
  $("alert").hidden = true;
}

init();
