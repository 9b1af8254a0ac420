// bothost web page. Plain script, no build step. A user's text is only ever
// set with textContent. A bot's reply is Markdown: marked turns it into
// HTML, which only DOMPurify reads, handing back DOM nodes (no HTML string
// ever reaches the page); the vendored libraries are in /static/vendor/.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  token: localStorage.getItem("bothost.token"),
  user: JSON.parse(localStorage.getItem("bothost.user") || "null"),
  bots: new Map(),          // name -> status
  conversation: null,       // {id, bot, title}
  conversations: new Map(), // id -> conversation, as listed
  lastConversation: null,   // the last one listed: where "More…" goes on
  pending: new Map(),       // client_msg_id -> {conversationId, content, acked}
  ws: null,
  retry: 0,
  resends: new Map(),   // client id -> {attempt, giveUpAt} of its resends after a busy answer
  restarting: false,
  reconnectTimer: null,
};

function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

// A busy host answers 503 `overloaded` at once, before doing anything, with
// Retry-After: the same request is sent again after that wait plus jitter
// (so thousands of browsers coming back after a restart spread out), for up
// to 15 s. A GET is also retried on any 503. Each try says which it is
// (Bothost-Attempt): a host that is refusing lets in first the requests
// tried most often.
const API_RETRY_FOR_MS = 15000;

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let res, data;
  const giveUpAt = Date.now() + API_RETRY_FOR_MS;
  for (let attempt = 1; ; attempt++) {
    headers["Bothost-Attempt"] = String(attempt);
    res = await fetch("/api/v1" + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    data = await res.json().catch(() => ({}));
    const code = data.error && data.error.code;
    const again = res.status === 503 && (code === "overloaded" || method === "GET");
    const wait = retryDelay(Number(res.headers.get("Retry-After")) || 1, attempt);
    if (!again || Date.now() + wait > giveUpAt) break;
    await sleep(wait);
  }
  // Logged out, or the session was ended elsewhere (log out everywhere,
  // password changed, account disabled): back to the log-in form.
  const ended = data.error && data.error.code === "account_disabled";
  if ((res.status === 401 || ended) && state.token) logout();
  if (!res.ok) {
    const err = new Error((data.error && data.error.message) || res.statusText);
    err.code = data.error && data.error.code;
    err.data = data;
    throw err;
  }
  return data;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// The wait the host asked for (`asked`, seconds), doubling with each attempt
// up to 2 s (never below what was asked), then anywhere from half to one and
// a half times that: for REST requests and WebSocket messages alike. The cap
// is short because a refusal costs the host microseconds while a long wait
// costs the user: with 4 s, browsers refused late in a storm sat idle for up
// to 6 s after the host had room (wsload --storm, README).
function retryDelay(asked, attempt) {
  const base = Math.max(asked, Math.min(asked * Math.pow(2, attempt - 1), 2)) * 1000;
  return base * (0.5 + Math.random());
}

// ---- sign in -------------------------------------------------------------
async function signIn(path) {
  $("login-error").textContent = "";
  try {
    const session = await api("POST", path, { username: $("username").value, password: $("password").value });
    state.token = session.token;
    state.user = session.user;
    localStorage.setItem("bothost.token", state.token);
    localStorage.setItem("bothost.user", JSON.stringify(state.user));
    await enter();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

function logout() {
  state.token = null;
  localStorage.removeItem("bothost.token");
  localStorage.removeItem("bothost.user");
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  clearTimeout(state.reconnectTimer);
  $("chat-view").hidden = true;
  $("login-view").hidden = false;
  $("logout").hidden = true;
  $("account").hidden = true;
  $("admin").hidden = true;
  $("export").hidden = true;
  $("banner").hidden = true;
  // Nothing of this user stays on the page for the next one.
  state.conversation = null;
  state.conversations.clear();
  state.pending.clear();
  for (const id of ["messages", "conversations", "search-results", "admin-bots", "admin-users"]) $(id).replaceChildren();
  $("search").value = "";
  $("chat-title").textContent = "Pick a bot to start a conversation.";
  $("input").disabled = true;
  $("send").disabled = true;
  $("who").textContent = "";
}

async function enter() {
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  $("account").hidden = false;
  $("who").textContent = state.user ? state.user.username : "";
  connect();
  await Promise.all([loadBots(), loadConversations(), loadAdmin()]);
}

// ---- bots and conversations ---------------------------------------------
async function loadBots() {
  const bots = await api("GET", "/bots");
  state.bots = new Map(bots.map((b) => [b.name, b.status]));
  renderBots();
}

function renderBots() {
  const list = $("bots");
  list.replaceChildren();
  for (const [name, status] of state.bots) {
    const li = document.createElement("li");
    li.dataset.bot = name;
    const label = document.createElement("span");
    label.textContent = name;
    const badge = document.createElement("span");
    badge.className = "status " + status;
    badge.textContent = status;
    li.append(label, badge);
    li.onclick = () => startConversation(name);
    list.append(li);
  }
}

async function loadConversations(more) {
  const list = $("conversations");
  if (!more) { list.replaceChildren(); state.lastConversation = null; }
  const after = more && state.lastConversation ? `&before=${state.lastConversation}` : "";
  const page = await api("GET", `/conversations?limit=50${after}`);
  for (const c of page) { state.conversations.set(c.id, c); list.append(conversationItem(c)); }
  if (page.length) state.lastConversation = page[page.length - 1].id;
  $("more-conversations").hidden = page.length < 50;
}

function conversationItem(c) {
  const li = document.createElement("li");
  li.dataset.conversation = c.id;
  const title = document.createElement("span");
  title.className = "conv-title";
  title.textContent = c.title || c.bot + " #" + c.id;
  const actions = document.createElement("span");
  actions.className = "conv-actions";
  const rename = document.createElement("button");
  rename.type = "button";
  rename.textContent = "✎";
  rename.setAttribute("aria-label", "Rename");
  rename.onclick = (e) => { e.stopPropagation(); renameConversation(c); };
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "✕";
  remove.setAttribute("aria-label", "Delete");
  remove.onclick = (e) => { e.stopPropagation(); deleteConversation(c); };
  actions.append(rename, remove);
  li.append(title, actions);
  if (state.conversation && state.conversation.id === c.id) li.classList.add("active");
  li.onclick = () => openConversation(c);
  return li;
}

async function renameConversation(c) {
  const title = prompt("A new title for this conversation:", c.title || "");
  if (title === null || !title.trim()) return;
  const renamed = await api("PATCH", `/conversations/${c.id}`, { title });
  Object.assign(c, renamed);
  if (state.conversation && state.conversation.id === c.id) $("chat-title").textContent = chatTitle(c);
  await loadConversations();
}

async function deleteConversation(c) {
  if (!confirm(`Delete "${c.title || c.bot + " #" + c.id}" and all its messages? This cannot be undone.`)) return;
  await api("DELETE", `/conversations/${c.id}`);
  if (state.conversation && state.conversation.id === c.id) {
    state.conversation = null;
    $("messages").replaceChildren();
    $("chat-title").textContent = "Pick a bot to start a conversation.";
    $("input").disabled = true;
    $("send").disabled = true;
  }
  await loadConversations();
}

async function refreshTitle() {
  const open = state.conversation;
  await loadConversations();
  const fresh = open && state.conversations.get(open.id);
  if (fresh && state.conversation === open) {
    state.conversation = fresh;
    $("chat-title").textContent = chatTitle(fresh);
  }
}

function chatTitle(c) { return c.title ? `${c.title} (${c.bot})` : "Chat with " + c.bot; }

async function startConversation(bot) {
  const c = await api("POST", "/conversations", { bot });
  await loadConversations();
  await openConversation(c);
}

async function openConversation(c) {
  state.conversation = c;
  $("export").hidden = false;
  $("chat-title").textContent = chatTitle(c);
  $("input").disabled = false;
  $("send").disabled = false;
  for (const li of $("conversations").children) li.classList.toggle("active", li.dataset.conversation == c.id);
  const history = await api("GET", `/conversations/${c.id}/messages?limit=100`);
  $("messages").replaceChildren();
  for (const m of history.reverse()) renderStored(m);
  scrollDown();
}

// ---- rendering -----------------------------------------------------------
function bubble(key, role) {
  let el = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (!el) {
    el = document.createElement("li");
    el.dataset.key = key;
    el.className = "msg " + role;
    el.appendChild(document.createElement("span")).className = "text";
    // Edit a message of one's own; regenerate the last reply (CSS shows
    // that button on the last one only).
    const act = document.createElement("button");
    act.type = "button";
    if (role === "user") {
      act.className = "act edit";
      act.textContent = "✎";
      act.setAttribute("aria-label", "Edit and resend");
      act.onclick = () => editMessage(el);
    } else {
      act.className = "act regen";
      act.textContent = "↻";
      act.setAttribute("aria-label", "Regenerate");
      act.onclick = () => regenerate(el);
    }
    el.append(act);
    $("messages").append(el);
  }
  return el;
}

// ---- regenerate and edit ----------------------------------------------------
// Regenerate replaces the last reply; edit replaces a message and all that
// followed it (the server deletes them, then answers the new text).
function socketOpen() {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) return true;
  alert("Reconnecting to the server; try again in a moment.");
  return false;
}

function regenerate(reply) {
  const asked = reply.previousElementSibling;
  if (!asked || !asked.classList.contains("user") || !state.conversation || !socketOpen()) return;
  state.ws.send(JSON.stringify({ type: "regenerate", conversation_id: state.conversation.id,
                                 client_msg_id: asked.dataset.key.slice(2) }));
}

function editMessage(el) {
  if (!state.conversation) return;
  const current = el.querySelector(".text").textContent;
  const text = prompt("Edit your message (it and everything after it are replaced):", current);
  if (text === null || !text.trim() || !socketOpen()) return;
  const original = el.dataset.key.slice(2);
  for (let n = el; n; ) { const next = n.nextElementSibling; n.remove(); n = next; }
  const id = newClientId();
  state.pending.set(id, { conversationId: state.conversation.id, content: text.trim(), acked: false });
  const u = bubble("u:" + id, "user");
  u.classList.add("pending");
  setText(u, text.trim());
  state.ws.send(JSON.stringify({ type: "edit", conversation_id: state.conversation.id, client_msg_id: original,
                                 new_client_msg_id: id, content: text.trim() }));
}

// ---- search and export --------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const q = $("search").value.trim();
  const list = $("search-results");
  list.replaceChildren();
  if (!q) return;
  const hits = await api("GET", `/search?q=${encodeURIComponent(q)}&limit=20`);
  if (!hits.length) { const li = document.createElement("li"); li.textContent = "Nothing found."; list.append(li); }
  for (const m of hits) {
    const li = document.createElement("li");
    li.textContent = (m.role === "user" ? "You: " : "Bot: ") + m.content.slice(0, 80);
    li.onclick = () => openConversation(state.conversations.get(m.conversation_id) || { id: m.conversation_id, bot: "the bot" });
    list.append(li);
  }
}

async function exportConversation(format) {
  const c = state.conversation;
  if (!c) return;
  const res = await fetch(`/api/v1/conversations/${c.id}/export?format=${format}`,
                          { headers: { Authorization: "Bearer " + state.token } });
  if (!res.ok) return alert("The export failed.");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await res.blob());
  link.download = `conversation-${c.id}.${format === "markdown" ? "md" : "json"}`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- admin --------------------------------------------------------------------
async function loadAdmin() {
  if (!state.user || state.user.role !== "admin") return;
  $("admin").hidden = false;
  const mb = (b) => b == null ? "?" : Math.round(b / 1e6) + " MB";
  const report = await api("GET", "/admin/bots");
  const bots = $("admin-bots");
  bots.replaceChildren();
  for (const b of report.bots) {
    const li = document.createElement("li");
    li.textContent = `${b.name}: ${b.state}, ${mb(b.rss_bytes)} of ${mb(b.budget_bytes)}, ${b.restarts} restarts`;
    const restart = document.createElement("button");
    restart.type = "button";
    restart.textContent = "Restart";
    restart.onclick = async () => { await api("POST", `/admin/bots/${encodeURIComponent(b.name)}/restart`); loadAdmin(); };
    li.append(restart);
    bots.append(li);
  }
  const users = $("admin-users");
  users.replaceChildren();
  for (const u of await api("GET", "/admin/users")) {
    const li = document.createElement("li");
    li.textContent = `${u.username} (${u.role}${u.disabled_at ? ", disabled" : ""})`;
    if (u.id !== state.user.id) {
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.textContent = u.disabled_at ? "Enable" : "Disable";
      toggle.onclick = async () => { await api("POST", `/admin/users/${u.id}/${u.disabled_at ? "enable" : "disable"}`); loadAdmin(); };
      li.append(toggle);
    }
    users.append(li);
  }
}

// ---- Markdown --------------------------------------------------------------
// Links open in a new tab and cannot reach back into this page.
if (window.DOMPurify) {
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
}

// HTML written into a reply is shown as text, like the rest of it: a bot
// quoting markup must not produce markup (DOMPurify below is the second
// line of defence, not the first).
function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
if (window.marked) marked.use({ renderer: { html(token) { return escapeHtml(token.text || ""); } } });

// Markdown to sanitized DOM nodes; code blocks highlighted, with a copy
// button. Without the libraries (they failed to load) it stays plain text.
function markdown(text) {
  if (!window.marked || !window.DOMPurify) return document.createTextNode(text);
  const html = marked.parse(text, { gfm: true });
  const frag = DOMPurify.sanitize(html, { RETURN_DOM_FRAGMENT: true, FORBID_TAGS: ["style", "form", "input", "button"] });
  for (const code of frag.querySelectorAll("pre code")) {
    if (window.hljs) hljs.highlightElement(code);
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.onclick = () => navigator.clipboard.writeText(code.textContent).then(() => { copy.textContent = "Copied"; });
    code.parentElement.append(copy);
  }
  return frag;
}

// An assistant bubble's Markdown source, and how much of it is rendered
// for good. While a reply streams, the blocks before its last paragraph
// break (outside a code fence) cannot change: they are rendered once and
// kept, and only the tail is rendered again, at most every 80 ms. So a
// long reply costs about its length, not its length squared, and nothing
// above the tail flickers. The end renders the whole once more.
const sources = new WeakMap();

function setText(el, text) {
  if (!el.classList.contains("assistant")) { el.querySelector(".text").textContent = text; return; }
  const src = sources.get(el) || {};
  clearTimeout(src.timer);
  sources.set(el, { text, stable: 0, timer: null });
  el.querySelector(".text").replaceChildren(markdown(text));
}

function appendText(el, text) {
  if (!el.classList.contains("assistant")) { el.querySelector(".text").textContent += text; return; }
  let src = sources.get(el);
  if (!src) { src = { text: "", stable: 0, timer: null }; sources.set(el, src); }
  src.text += text;
  if (!src.timer) src.timer = setTimeout(() => { src.timer = null; renderTail(el, src); }, 80);
}

function renderTail(el, src) {
  const box = el.querySelector(".text");
  let done = box.querySelector(":scope > .md-done");
  let tail = box.querySelector(":scope > .md-tail");
  if (!done || !tail) {
    done = document.createElement("div"); done.className = "md-done";
    tail = document.createElement("div"); tail.className = "md-tail";
    box.replaceChildren(done, tail);
    src.stable = 0;
  }
  const cut = stableEnd(src.text, src.stable);
  if (cut > src.stable) { done.append(markdown(src.text.slice(src.stable, cut))); src.stable = cut; }
  tail.replaceChildren(markdown(src.text.slice(src.stable)));
  scrollDown();
}

// Where the text from `from` on stops being able to change: after its last
// blank line that is not inside a ``` fence (`from` is never inside one).
function stableEnd(text, from) {
  let inFence = false, end = from, pos = from;
  while (pos < text.length) {
    const nl = text.indexOf("\n", pos);
    if (nl < 0) break;
    const line = text.slice(pos, nl);
    if (/^\s*(```|~~~)/.test(line)) inFence = !inFence;
    else if (!inFence && line.trim() === "" && pos > from) end = nl + 1;
    pos = nl + 1;
  }
  return end;
}

// The streamed reply, rendered whole now that it is complete.
function finishText(el) {
  const src = sources.get(el);
  if (src) setText(el, src.text);
}
function note(el, text) {
  let n = el.querySelector(".note");
  if (!n) { n = document.createElement("span"); n.className = "note"; el.append(n); }
  n.textContent = text;
}

function renderStored(m) {
  const key = m.role === "user" ? "u:" + (m.client_msg_id || m.id) : "r:" + (m.reply_to || m.id);
  const el = bubble(key, m.role === "user" ? "user" : "assistant");
  el.dataset.messageId = m.id;
  setText(el, m.content);
  if (m.status === "partial") note(el, "(reply cut off)");
  if (m.status === "failed") note(el, "(the bot could not answer; send your message again)");
}

function scrollDown() { const m = $("messages"); m.scrollTop = m.scrollHeight; }

// ---- sending ---------------------------------------------------------------
async function send(event) {
  event.preventDefault();
  const content = $("input").value.trim();
  if (!content || !state.conversation) return;
  $("input").value = "";
  const id = newClientId();
  state.pending.set(id, { conversationId: state.conversation.id, content, acked: false });
  const el = bubble("u:" + id, "user");
  el.classList.add("pending");
  setText(el, content);
  scrollDown();
  if (state.ws && state.ws.readyState === WebSocket.OPEN) sendOverWs(id);
  else await sendOverRest(id);
}

function sendOverWs(id) {
  const p = state.pending.get(id);
  state.ws.send(JSON.stringify({ type: "send", conversation_id: p.conversationId, client_msg_id: id, content: p.content }));
}

// The fallback while the WebSocket is down: the whole reply in one answer.
async function sendOverRest(id) {
  const p = state.pending.get(id);
  try {
    const res = await api("POST", `/conversations/${p.conversationId}/messages`, { client_msg_id: id, content: p.content });
    state.pending.delete(id);
    acked(id, res.message.id);
    const el = bubble("r:" + res.message.id, "assistant");
    el.dataset.messageId = res.reply.id;
    setText(el, res.reply.content);
  } catch (e) {
    if (e.data && e.data.message) {            // stored, but the bot could not answer
      state.pending.delete(id);
      acked(id, e.data.message.id);
      note(bubble("u:" + id, "user"), e.message);
    }
    // Otherwise (network down) it stays pending and is resent on reconnect.
  }
  scrollDown();
}

function acked(id, messageId) {
  const el = bubble("u:" + id, "user");
  el.classList.remove("pending");
  el.dataset.messageId = messageId;
}

// ---- the WebSocket -------------------------------------------------------
function connect() {
  if (!state.token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // Which try this is, as for a REST request (a browser cannot set headers
  // on the upgrade).
  const attempt = state.retry + 1;
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/ws?token=${encodeURIComponent(state.token)}&attempt=${attempt}`);
  state.ws = ws;
  ws.onopen = () => {
    state.retry = 0;
    state.restarting = false;
    $("banner").hidden = true;
    for (const id of state.pending.keys()) sendOverWs(id);
    loadBots().catch(() => {});
  };
  ws.onmessage = (e) => onFrame(JSON.parse(e.data));
  ws.onclose = (e) => {
    if (state.ws !== ws) return;
    state.ws = null;
    // 4401: this session has ended; reconnecting with it would be refused.
    if (e.code === 4401) { logout(); return; }
    $("banner").hidden = false;
    // 1012, "service restart": the host finished our turns and restarts;
    // try again within about a second, doubling to 5 s while it comes back.
    // Otherwise about 5 s, backing off to 30 s. Jitter either way, so a
    // host is not hit by every browser in the same instant.
    if (e.code === 1012) state.restarting = true;
    const base = state.restarting
      ? Math.min(250 * Math.pow(2, state.retry++), 5000) + Math.random() * 1000
      : Math.min(5000 * Math.pow(1.5, state.retry++), 30000);
    const delay = base * (0.8 + Math.random() * 0.4);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function onFrame(f) {
  const id = f.client_msg_id;
  switch (f.type) {
    case "ack": {
      const p = state.pending.get(id);
      if (p) p.acked = true;
      acked(id, f.message_id);
      const r = bubble("r:" + f.message_id, "assistant");
      // A first message names its conversation (the server titles it).
      if (state.conversation && !state.conversation.title) refreshTitle();
      // A new stream: a replay's stored text arrives whole, a regenerated
      // reply starts over.
      setText(r, "");
      for (const n of r.querySelectorAll(".note")) n.remove();
      r.dataset.client = id;
      r.classList.add("streaming");
      break;
    }
    case "delta": {
      const r = document.querySelector(`[data-client="${CSS.escape(id)}"]`);
      if (r) appendText(r, f.text);
      break;
    }
    case "done": {
      state.pending.delete(id);
      const r = document.querySelector(`[data-client="${CSS.escape(id)}"]`);
      if (r) { r.classList.remove("streaming"); r.dataset.messageId = f.message_id; finishText(r); }
      if (f.status === "partial" && r) note(r, "(reply cut off)");
      break;
    }
    case "error": {
      // Not taken because the host restarts: it stays pending and goes out
      // again on the next connection.
      if (f.code === "restarting") break;
      // Still being answered (a resend raced the first try), the host is
      // busy (refused before anything was done, or its database briefly
      // unavailable), or the user's replies in flight are at their cap:
      // send the same message again after the wait asked for, as a REST
      // request is (retryDelay), when the stored answer can be replayed or
      // the host has room. For up to 15 s; then the error shows (at once
      // when the wait asked for is longer, as for a message rate).
      const transient = ["in_progress", "overloaded", "store_unavailable", "rate_limited"].includes(f.code);
      const retry = state.resends.get(id) || { attempt: 0, giveUpAt: Date.now() + API_RETRY_FOR_MS };
      retry.attempt += 1;
      const wait = retryDelay(f.retry_after || 1, retry.attempt);
      if (transient && Date.now() + wait <= retry.giveUpAt) {
        state.resends.set(id, retry);
        setTimeout(() => {
          if (state.pending.has(id) && state.ws && state.ws.readyState === WebSocket.OPEN) sendOverWs(id);
        }, wait);
        break;
      }
      state.resends.delete(id);
      state.pending.delete(id);
      const r = id && document.querySelector(`[data-client="${CSS.escape(id)}"]`);
      const target = r || (id ? bubble("u:" + id, "user") : null);
      if (r) { r.classList.remove("streaming"); finishText(r); }
      if (target) note(target, f.message);
      break;
    }
    case "bot_status":
      state.bots.set(f.bot, f.status);
      renderBots();
      break;
  }
  $("stop").hidden = !document.querySelector(".msg.assistant.streaming");
  scrollDown();
}

// Stops every reply streaming in view; what was shown is kept (`partial`).
function stop() {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  for (const r of document.querySelectorAll(".msg.assistant.streaming")) {
    state.ws.send(JSON.stringify({ type: "cancel", client_msg_id: r.dataset.client }));
  }
}

// ---- account ---------------------------------------------------------------
async function changePassword() {
  const current = prompt("Your current password:");
  if (current === null) return;
  const next = prompt("The new password (8 characters or more):");
  if (next === null) return;
  try {
    const session = await api("POST", "/auth/password", { current_password: current, new_password: next });
    state.token = session.token;
    localStorage.setItem("bothost.token", state.token);
    alert("Password changed. Your other sessions have ended.");
    if (state.ws) state.ws.close();   // reconnects with the new token
  } catch (e) { alert(e.message); }
}

async function logoutEverywhere() {
  if (!confirm("Log out on every device, this one included?")) return;
  try { await api("POST", "/auth/logout-all"); } catch (e) { /* over either way */ }
  logout();
}

async function deleteAccount() {
  const password = prompt("Deleting your account deletes all your conversations, for good. Your password to confirm:");
  if (password === null) return;
  try {
    await api("DELETE", "/account", { password });
    logout();
  } catch (e) { alert(e.message); }
}

// ---- start -----------------------------------------------------------------
$("login-form").onsubmit = (e) => { e.preventDefault(); signIn("/auth/login"); };
$("register").onclick = () => signIn("/auth/register");
// Log out ends this session on the server too (a copied token stops
// working); the page forgets it either way.
$("logout").onclick = () => { api("POST", "/auth/logout").catch(() => {}); logout(); };
$("composer").onsubmit = send;
$("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); } };
$("stop").onclick = stop;
$("search-form").onsubmit = search;
$("export-md").onclick = () => exportConversation("markdown");
$("export-json").onclick = () => exportConversation("json");
$("admin-refresh").onclick = () => loadAdmin();
document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
$("more-conversations").onclick = () => loadConversations(true);
$("change-password").onclick = changePassword;
$("logout-all").onclick = logoutEverywhere;
$("delete-account").onclick = deleteAccount;
if (state.token) enter().catch(() => logout());
