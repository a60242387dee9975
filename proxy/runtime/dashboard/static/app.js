// egress-proxy dashboard: a static page over the admin API (/api/v1), no framework, no build step.
//
// Every string the API returns is untrusted: hosts, paths and grant labels come from
// requests that sandboxed code made. The DOM is therefore built with createElement and
// textContent only (never innerHTML), and the page runs under a CSP without inline code.
// Secrets only ever travel from a password input to the API; nothing reads them back.
//
// The admin token is sent once, to log in (POST /api/v1/session); the server answers with an
// HttpOnly session cookie this script cannot read and a CSRF token kept in memory here, sent
// with every change. Nothing is written to localStorage or sessionStorage.

const API = "/api/v1";
const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_PATTERNS = 20;
const PRESET_LABELS = {
  stripe: "Stripe",
  github: "GitHub",
  openai: "OpenAI",
  anthropic: "Anthropic",
  slack: "Slack",
  gemini: "Gemini",
  "aws-s3": "AWS S3",
  atlassian: "Atlassian",
};
const STATES = {
  ok: ["ok", "badge-ok", "No failure pattern in the last hour (a state needs 5 or more requests, half of them failing)."],
  unused: ["unused", "badge-muted", "No requests in the last 24 hours."],
  failing: ["failing", "badge-failing", "Most requests in the last hour got a 5xx or no answer: the upstream is failing."],
  "credential-rejected": [
    "credential rejected",
    "badge-rejected",
    "Most requests in the last hour got 401/403: the upstream refuses the credential. Replace the secret.",
  ],
};

const main = document.getElementById("main");
const session = { whoami: null, csrf: null, workspaces: [], presets: null, flash: null };
let renderSeq = 0;

// ---------------------------------------------------------------- DOM helpers

/** h("a", {href: "#/x", class: "btn"}, "text", child): attributes set with setAttribute, children as text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k.startsWith("on")) throw new Error(`refusing string event handler ${k}`);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const text = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));

function fmtTime(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return h("span", {}, "—");
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, "0");
  const label = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  return h("time", { datetime: d.toISOString() }, label);
}

function hashFor(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}

function badge(state) {
  const [label, cls, why] = STATES[state] || [String(state || "unknown"), "badge-muted", ""];
  const alert = state === "failing" || state === "credential-rejected";
  return h("span", { class: `badge ${cls}`, title: why || null, "data-state": state }, alert ? "⚠ " : "", label);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.retryAfter = retryAfter;
  }
}

/** One API call with the session cookie (and the CSRF token on a change); `token` only to log in. */
async function api(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  else if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, { error: "network", detail: "The admin API is unreachable." });
  }
  if (res.status === 204) return null;
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, res.headers.get("Retry-After"));
    if (res.status === 401 && session.whoami) {
      endSession("The session has ended (logged out, idle for an hour, 12 hours old, or its token was revoked). Log in again.");
    }
    throw err;
  }
  return data;
}

const wsPath = (ws, rest) => `/workspaces/${encodeURIComponent(ws)}${rest}`;

function describeError(err) {
  if (!(err instanceof ApiError)) return String(err);
  if (err.status === 403) return `Not allowed (403): ${err.message}`;
  if (err.status === 404) return `Not found (404): ${err.message}`;
  if (err.status === 429) {
    return `Too many failed attempts from this address (429). Try again in ${err.retryAfter || "a few"} seconds.`;
  }
  return err.status ? `${err.message} (HTTP ${err.status})` : err.message;
}

// ---------------------------------------------------------------- session, login

function forget() {
  session.whoami = null;
  session.csrf = null;
  session.workspaces = [];
  session.presets = null;
}

function endSession(message, isError = true) {
  forget();
  renderSeq++; // a view still loading must not draw over the login form
  showLogin(message, isError);
}

function showLogin(message, isError = true) {
  document.getElementById("top").hidden = true;
  document.title = "Log in · egress-proxy";
  const msg = h("p", { id: "login-message", role: "alert", class: message && isError ? "error" : "note" }, message || "");
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "token-hint login-message",
  });
  const form = h(
    "form",
    { class: "login card", onsubmit: (e) => login(e, input, msg) },
    h("h1", {}, "egress-proxy admin"),
    h("label", { for: "token" }, "Admin token"),
    input,
    h(
      "p",
      { id: "token-hint", class: "hint" },
      "Paste a token from `egress admin token create`. It is sent once, to this server, which answers with a session cookie this page cannot read; the token is not kept.",
    ),
    h("button", { type: "submit" }, "Log in"),
    msg,
  );
  main.replaceChildren(form);
  input.focus();
}

async function login(event, input, msg) {
  event.preventDefault();
  const token = input.value.trim();
  if (!token) return;
  input.value = "";
  msg.className = "note";
  msg.textContent = "Checking…";
  try {
    await startSession(await api("POST", "/session", undefined, token));
  } catch (err) {
    forget();
    msg.className = "error";
    msg.textContent =
      err instanceof ApiError && err.status === 401
        ? "The admin API did not accept the token (401). Paste a valid admin token."
        : describeError(err);
    input.focus();
    return;
  }
  render(); // on the page the hash names: a deep link opened before logging in survives
}

/** Keep what the session endpoint said (scope, access, the CSRF token) and the workspaces it sees. */
async function startSession(doc) {
  session.csrf = doc.csrf_token;
  const who = { workspace: doc.workspace, read_only: doc.read_only };
  let workspaces;
  if (who.workspace) workspaces = [who.workspace];
  else workspaces = (await api("GET", "/workspaces")).map((w) => w.name);
  if (!workspaces.length) workspaces = ["default"];
  session.whoami = who;
  session.workspaces = workspaces;
}

const canWrite = () => session.whoami && !session.whoami.read_only;

function currentWorkspace(requested) {
  if (session.whoami.workspace) return session.whoami.workspace;
  if (requested && session.workspaces.includes(requested)) return requested;
  return session.workspaces.includes("default") ? "default" : session.workspaces[0];
}

function drawHeader(ws, page) {
  document.getElementById("top").hidden = false;
  const navC = document.getElementById("nav-connectors");
  const navB = document.getElementById("nav-blocked");
  navC.href = hashFor("w", ws, "connectors");
  navB.href = hashFor("w", ws, "blocked");
  for (const [el, name] of [[navC, "connectors"], [navB, "blocked"]]) {
    if (page === name) el.setAttribute("aria-current", "page");
    else el.removeAttribute("aria-current");
  }
  const box = document.getElementById("workspace-box");
  if (session.whoami.workspace) {
    box.replaceChildren(h("span", { class: "ws-fixed" }, "Workspace: ", h("strong", {}, ws)));
  } else {
    const select = h(
      "select",
      {
        id: "workspace",
        onchange: () => {
          location.hash = hashFor("w", select.value, page === "blocked" ? "blocked" : "connectors");
        },
      },
      session.workspaces.map((w) => h("option", { value: w, selected: w === ws }, w)),
    );
    box.replaceChildren(h("label", { for: "workspace" }, "Workspace "), select);
  }
  document.getElementById("ro-badge").hidden = !session.whoami.read_only;
}

// ---------------------------------------------------------------- routing

// #/w/WS/connectors | #/w/WS/new | #/w/WS/c/NAME[/edit|/secret] | #/w/WS/blocked
function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  try {
    return parts.map(decodeURIComponent);
  } catch {
    return [];
  }
}

async function render() {
  const seq = ++renderSeq;
  if (!session.whoami) {
    // A reload or a new tab: the cookie (if any) names a session; its CSRF token is asked again.
    main.replaceChildren(h("p", { class: "note" }, "Loading…"));
    try {
      await startSession(await api("GET", "/session"));
    } catch (err) {
      forget();
      if (seq !== renderSeq) return;
      return showLogin(err instanceof ApiError && err.status === 401 ? "" : describeError(err));
    }
    if (seq !== renderSeq) return;
  }
  const [w, requested, page, name, action] = parseHash();
  const ws = currentWorkspace(w === "w" ? requested : null);
  if (w !== "w" || requested !== ws || !page) {
    location.replace(hashFor("w", ws, "connectors")); // fires hashchange, which renders
    return;
  }
  drawHeader(ws, page === "blocked" ? "blocked" : "connectors");
  let view;
  if (page === "connectors") view = () => connectorsView(ws);
  else if (page === "blocked") view = () => blockedView(ws);
  else if (page === "new") view = () => formView(ws, null);
  else if (page === "c" && name && !action) view = () => connectorView(ws, name);
  else if (page === "c" && name && action === "edit") view = () => formView(ws, name);
  else if (page === "c" && name && action === "secret") view = () => secretView(ws, name);
  else view = async () => h("section", {}, h("h1", { tabindex: "-1" }, "Page not found"));
  main.setAttribute("aria-busy", "true");
  let node;
  try {
    node = await view();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    node = h("section", {}, h("h1", { tabindex: "-1" }, "Something went wrong"), h("p", { class: "error", role: "alert" }, describeError(err)));
  }
  if (seq !== renderSeq) return; // a newer navigation won
  main.removeAttribute("aria-busy");
  const flash = session.flash;
  session.flash = null;
  main.replaceChildren(...(flash ? [h("p", { class: "flash", role: "status" }, flash)] : []), node);
  const heading = main.querySelector("h1");
  if (heading) {
    document.title = `${heading.textContent} · egress-proxy`;
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

function go(hash, flash) {
  session.flash = flash || null;
  if (location.hash === hash) render();
  else location.hash = hash;
}

// ---------------------------------------------------------------- connectors list

async function connectorsView(ws) {
  const connectors = await api("GET", wsPath(ws, "/connectors"));
  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, "Connectors"),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "secondary", onclick: () => render() }, "Refresh"),
      canWrite() ? h("a", { class: "button", href: hashFor("w", ws, "new"), id: "add-connector" }, "Add connector") : null,
    ),
  );
  if (!connectors.length) {
    return h("section", {}, head, h("p", { class: "note" }, "No connectors in this workspace yet."));
  }
  const cols = ["Name", "Allowed URLs", "Placement", "Requests 24 h", "Errors 24 h", "Health"];
  const rows = connectors.map((c) => {
    const href = hashFor("w", ws, "c", c.name);
    const health = (c.health && c.health.state) || "unused";
    const tr = h(
      "tr",
      { class: "clickable", "data-connector": c.name },
      h("td", { "data-label": cols[0] }, h("a", { href }, c.name)),
      h("td", { "data-label": cols[1] }, patternList(c.patterns)),
      h("td", { "data-label": cols[2] }, h("code", {}, text(c.inject_summary))),
      h("td", { "data-label": cols[3], class: "num" }, text(c.requests_24h ?? 0)),
      h("td", { "data-label": cols[4], class: "num" }, text(c.errors_24h ?? 0)),
      h("td", { "data-label": cols[5] }, badge(health)),
    );
    // The whole row is a target for the mouse; the name link is the keyboard one.
    tr.addEventListener("click", (e) => {
      if (!e.target.closest("a")) location.hash = href;
    });
    return tr;
  });
  return h("section", {}, head, table("Connectors in this workspace", cols, rows, "connectors-table"));
}

function patternList(patterns) {
  return h("ul", { class: "plain" }, (patterns || []).map((p) => h("li", {}, h("code", {}, p))));
}

function table(caption, cols, rows, id) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "responsive", id: id || null },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows),
    ),
  );
}

// ---------------------------------------------------------------- one connector

async function connectorView(ws, name) {
  const base = wsPath(ws, `/connectors/${encodeURIComponent(name)}`);
  const [c, series, errors] = await Promise.all([
    api("GET", base),
    api("GET", `${base}/series`).catch((e) => e),
    api("GET", wsPath(ws, `/logs/errors?connector=${encodeURIComponent(name)}&since=24h&limit=100`)).catch((e) => e),
  ]);
  const actions = canWrite()
    ? h(
        "div",
        { class: "actions" },
        h("a", { class: "button secondary", href: hashFor("w", ws, "c", name, "edit"), id: "edit" }, "Edit"),
        h("a", { class: "button secondary", href: hashFor("w", ws, "c", name, "secret"), id: "replace-secret" }, "Replace secret"),
        h("button", { type: "button", class: "danger", id: "delete", onclick: () => deleteConnector(ws, c) }, "Delete"),
      )
    : null;
  const state = (c.health && c.health.state) || "unused";
  return h(
    "section",
    {},
    h("p", { class: "crumbs" }, h("a", { href: hashFor("w", ws, "connectors") }, "Connectors"), " / "),
    h("div", { class: "page-head" }, h("h1", {}, c.name), actions),
    h(
      "dl",
      { class: "facts" },
      fact("Provider", c.preset ? PRESET_LABELS[c.preset] || c.preset : "custom"),
      fact("Allowed URLs", patternList(c.patterns)),
      fact("Placement", h("code", {}, text(c.inject_summary))),
      fact("Methods", c.methods && c.methods.length ? c.methods.join(", ") : "every method"),
      c.strip_headers && c.strip_headers.length ? fact("Removes client headers", c.strip_headers.join(", ")) : null,
      fact("Secret", secretStatus(c)),
      fact("Requests 24 h", text(c.requests_24h ?? 0)),
      fact("Errors 24 h", text(c.errors_24h ?? 0)),
    ),
    h("h2", {}, "Credential health"),
    h("p", { id: "health" }, badge(state), " ", (STATES[state] || [])[2] || ""),
    healthTable(c.health),
    h("h2", {}, "Last 24 hours"),
    series instanceof Error ? h("p", { class: "error" }, describeError(series)) : chart(series.hours || []),
    h("h2", {}, "Error log"),
    errors instanceof Error ? h("p", { class: "error" }, describeError(errors)) : errorTable(errors),
  );
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}

function secretStatus(c) {
  if (!c.secret_set) return h("span", { id: "secret-status" }, "no secret set");
  return h("span", { id: "secret-status" }, "secret set, last changed ", fmtTime(c.secret_updated_at));
}

function healthTable(health) {
  if (!health || !health.last_1h) return null;
  const rows = [
    ["Requests", "requests"],
    ["401/403", "rejected"],
    ["Other 4xx", "client_errors"],
    ["5xx", "server_errors"],
    ["No answer", "transport_failures"],
  ].map(([label, key]) =>
    h("tr", {}, h("th", { scope: "row" }, label), h("td", { class: "num" }, text(health.last_1h[key] ?? 0)), h("td", { class: "num" }, text((health.last_24h || {})[key] ?? 0))),
  );
  const pct = (v) => (typeof v === "number" ? `${Math.round(v * 1000) / 10} %` : "—");
  rows.push(h("tr", {}, h("th", { scope: "row" }, "401/403 share"), h("td", { class: "num" }, pct(health.rejected_share_1h)), h("td", { class: "num" }, pct(health.rejected_share_24h))));
  return h(
    "table",
    { class: "compact" },
    h("caption", { class: "visually-hidden" }, "Answers by class"),
    h("thead", {}, h("tr", {}, h("td", {}), h("th", { scope: "col" }, "Last hour"), h("th", { scope: "col" }, "Last 24 h"))),
    h("tbody", {}, rows),
  );
}

function errorTable(events) {
  if (!events.length) return h("p", { class: "note", id: "errors-empty" }, "No errors in the last 24 hours.");
  const cols = ["Status", "Method", "Host", "Path", "Time"];
  const rows = events.map((e) =>
    h(
      "tr",
      {},
      h("td", { "data-label": cols[0] }, e.status ? String(e.status) : text(e.failure)),
      h("td", { "data-label": cols[1] }, text(e.method)),
      h("td", { "data-label": cols[2] }, text(e.host)),
      h("td", { "data-label": cols[3], class: "path" }, text(e.path)),
      h("td", { "data-label": cols[4] }, fmtTime(e.ts)),
    ),
  );
  return table("Errors in the last 24 hours", cols, rows, "errors-table");
}

/** Requests and errors per hour as bars, in an SVG built here (no chart library). */
function chart(hours) {
  const data = [...hours].sort((a, b) => a.hour - b.hour);
  const W = 720, H = 200, L = 44, R = 8, T = 12, B = 28;
  const peak = Math.max(1, ...data.map((d) => d.requests || 0), ...data.map((d) => d.errors || 0));
  const top = niceCeil(peak);
  const step = (W - L - R) / Math.max(1, data.length);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const hourLabel = (epoch) => `${String(new Date(epoch * 1000).getHours()).padStart(2, "0")}:00`;
  const totalReq = data.reduce((n, d) => n + (d.requests || 0), 0);
  const totalErr = data.reduce((n, d) => n + (d.errors || 0), 0);
  const summary = `Requests and errors per hour over the last 24 hours: ${totalReq} requests, ${totalErr} errors.`;
  const svg = s(
    "svg",
    { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-title", id: "chart" },
    s("title", { id: "chart-title" }, summary),
    [0, top / 2, top].map((v) => [
      s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      Number.isInteger(v) ? s("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)) : null,
    ]),
    data.map((d, i) => {
      const x = L + i * step;
      const req = d.requests || 0, err = d.errors || 0;
      return s(
        "g",
        { class: "hour" },
        s("title", {}, `${hourLabel(d.hour)}: ${req} requests, ${err} errors`),
        s("rect", { class: "bar-req", x: x + 1, width: Math.max(1, step - 2), y: y(req), height: y(0) - y(req) }),
        s("rect", { class: "bar-err", x: x + step * 0.25, width: Math.max(1, step * 0.5), y: y(err), height: y(0) - y(err) }),
        i % 6 === 0 ? s("text", { class: "axis", x: x + step / 2, y: H - 8, "text-anchor": "middle" }, hourLabel(d.hour)) : null,
      );
    }),
  );
  const legend = h(
    "p",
    { class: "legend", "aria-hidden": "true" },
    h("span", { class: "swatch swatch-req" }),
    " requests  ",
    h("span", { class: "swatch swatch-err" }),
    " errors",
  );
  const rows = data.map((d) => h("tr", {}, h("td", {}, hourLabel(d.hour)), h("td", { class: "num" }, String(d.requests || 0)), h("td", { class: "num" }, String(d.errors || 0))));
  const details = h(
    "details",
    {},
    h("summary", {}, "The same as a table"),
    h("table", { class: "compact" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Hour"), h("th", { scope: "col" }, "Requests"), h("th", { scope: "col" }, "Errors"))), h("tbody", {}, rows)),
  );
  return h("figure", { class: "chart-box" }, svg, legend, details);
}

function niceCeil(v) {
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * mag) return Math.max(2, m * mag);
  return 10 * mag;
}

async function deleteConnector(ws, c) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = `Delete ${c.name}?`;
  document.getElementById("confirm-text").textContent =
    "Requests that need this connector will be blocked, and its sealed secret is removed. This cannot be undone.";
  dialog.returnValue = "";
  dialog.showModal();
  const answer = await new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true }));
  if (answer !== "ok") return;
  try {
    await api("DELETE", wsPath(ws, `/connectors/${encodeURIComponent(c.name)}`));
  } catch (err) {
    if (err.status !== 401) showBanner(describeError(err));
    return;
  }
  go(hashFor("w", ws, "connectors"), `Deleted ${c.name}.`);
}

function showBanner(message) {
  const old = main.querySelector(".banner");
  if (old) old.remove();
  main.prepend(h("p", { class: "banner error", role: "alert" }, message));
}

// ---------------------------------------------------------------- blocked requests

async function blockedView(ws) {
  const events = await api("GET", wsPath(ws, "/logs/blocked?since=24h&limit=200"));
  const head = h(
    "div",
    { class: "page-head" },
    h("h1", {}, "Blocked requests"),
    h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => render() }, "Refresh")),
  );
  if (!events.length) return h("section", {}, head, h("p", { class: "note" }, "No blocked requests in the last 24 hours."));
  const cols = ["Time", "Reason", "Near miss", "Method", "Host", "Path", "Grant"];
  const rows = events.map((e) =>
    h(
      "tr",
      {},
      h("td", { "data-label": cols[0] }, fmtTime(e.ts)),
      h("td", { "data-label": cols[1] }, h("code", {}, text(e.reason))),
      h("td", { "data-label": cols[2] }, nearMiss(e.near_miss)),
      h("td", { "data-label": cols[3] }, text(e.method)),
      h("td", { "data-label": cols[4] }, text(e.host)),
      h("td", { "data-label": cols[5], class: "path" }, text(e.path)),
      h("td", { "data-label": cols[6] }, text(e.grant_label)),
    ),
  );
  return h(
    "section",
    {},
    head,
    h("p", { class: "note" }, "Last 24 hours, newest first. Near miss: the connector that came closest and what differed."),
    table("Blocked requests", cols, rows, "blocked-table"),
  );
}

function nearMiss(n) {
  if (!n) return "—";
  if (typeof n !== "object") return String(n);
  return h("span", {}, h("strong", {}, text(n.connector)), ": ", text(n.differs), n.detail ? h("span", { class: "hint block" }, String(n.detail)) : null);
}

// ---------------------------------------------------------------- add / edit

const KINDS = [
  ["header", "One header"],
  ["query", "Query parameter"],
  ["basic", "Basic auth"],
  ["headers", "Several headers"],
];

function kindOf(inject) {
  if (!inject || typeof inject !== "object") return "header";
  for (const [k] of KINDS) if (k in inject) return k;
  return "other"; // oauth2, aws_sigv4: kept as they are; the CLI or YAML edits them
}

/** The credential fields a placement uses: every {{name}} in its templates. */
function templateFields(inject) {
  const found = new Set();
  for (const m of JSON.stringify(inject || {}).matchAll(/\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}/g)) found.add(m[1]);
  return [...found];
}

async function getPresets() {
  if (!session.presets) session.presets = await api("GET", "/presets");
  return session.presets;
}

/** Fields of a form with a server-side error slot each: the 400's `field` lands next to its input. */
function field(id, label, control, hint) {
  const errId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  control.id = id;
  control.setAttribute("aria-describedby", [hintId, errId].filter(Boolean).join(" "));
  return h(
    "div",
    { class: "field", "data-for": id },
    h("label", { for: id }, label),
    control,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: errId, hidden: true }),
  );
}

function secretInputs(container, names, required, existing) {
  // Keep what was typed when the list of fields changes (inputs are reused by field name).
  const old = new Map([...container.querySelectorAll("input[data-field]")].map((i) => [i.dataset.field, i]));
  const rows = names.map((n) => {
    const input = old.get(n) || h("input", { type: "password", autocomplete: "new-password", spellcheck: "false", "data-field": n });
    input.required = required;
    const single = names.length === 1 && n === "secret";
    return field(`secret-${n}`, single ? "Secret value" : `Field ${n}`, input);
  });
  const status = existing && existing.secret_set ? h("p", { class: "hint" }, secretStatus(existing), ". Leave empty to keep it.") : null;
  container.replaceChildren(status || "", ...rows);
}

function readSecret(container) {
  const inputs = [...container.querySelectorAll("input[data-field]")];
  const values = Object.fromEntries(inputs.filter((i) => i.value !== "").map((i) => [i.dataset.field, i.value]));
  const names = Object.keys(values);
  if (!names.length) return null;
  if (inputs.length === 1 && names[0] === "secret") return { value: values.secret };
  return { fields: values };
}

function splitList(v) {
  return v.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}

function patternHints(value) {
  const lines = value.split("\n").map((l) => l.trim()).filter(Boolean);
  const notes = [];
  lines.forEach((l, i) => {
    if (!/^https:\/\//i.test(l)) notes.push(`line ${i + 1} is not an https:// URL`);
    else {
      const host = l.slice(8).split("/")[0];
      if (host.includes("*") && !/^\*\.[^*]+$/.test(host)) notes.push(`line ${i + 1}: a host wildcard is only *.domain`);
    }
  });
  if (lines.length > MAX_PATTERNS) notes.push(`${lines.length} patterns, at most ${MAX_PATTERNS}`);
  const count = `${lines.length} pattern${lines.length === 1 ? "" : "s"}`;
  return notes.length ? `${count}; check: ${notes.join("; ")}` : `${count}. One HTTPS URL per line; * matches any run of characters in the path, *.domain any subdomain.`;
}

async function formView(ws, name) {
  if (!canWrite()) return h("section", {}, h("h1", {}, "Read-only"), h("p", { class: "note" }, "This token cannot change connectors."));
  const [presets, existing] = await Promise.all([
    getPresets(),
    name ? api("GET", wsPath(ws, `/connectors/${encodeURIComponent(name)}`)) : null,
  ]);
  const editing = Boolean(existing);
  const byName = new Map(presets.map((p) => [p.name, p]));

  const presetSel = h(
    "select",
    { disabled: editing },
    h("option", { value: "" }, "Custom"),
    presets.map((p) => h("option", { value: p.name }, PRESET_LABELS[p.name] || p.name)),
  );
  const nameIn = h("input", { type: "text", required: true, autocomplete: "off", spellcheck: "false", maxlength: "63", readonly: editing });
  const patternsIn = h("textarea", { rows: "4", required: true, spellcheck: "false" });
  const patternsField = field("f-patterns", "Allowed URL patterns", patternsIn, " ");
  const patternsHint = patternsField.querySelector(".hint");
  patternsHint.setAttribute("aria-live", "polite"); // the hint follows what is typed
  const kindSel = h("select", {}, KINDS.map(([k, label]) => h("option", { value: k }, label)));
  const otherOpt = h("option", { value: "other", hidden: true }, "From the preset or CLI (kept as is)");
  kindSel.append(otherOpt);
  const headerName = h("input", { type: "text", spellcheck: "false", value: "Authorization" });
  const headerTpl = h("input", { type: "text", spellcheck: "false", value: "Bearer {{secret}}" });
  const queryParam = h("input", { type: "text", spellcheck: "false", value: "api_key" });
  const queryTpl = h("input", { type: "text", spellcheck: "false", value: "{{secret}}" });
  const basicUser = h("input", { type: "text", spellcheck: "false", value: "{{username}}" });
  const basicPass = h("input", { type: "text", spellcheck: "false", value: "{{password}}" });
  const headersIn = h("textarea", { rows: "3", spellcheck: "false" });
  headersIn.value = "X-Api-Key: {{api_key}}\nX-Api-Secret: {{api_secret}}";
  const otherView = h("pre", { class: "code" });
  const methodsIn = h("input", { type: "text", spellcheck: "false", autocomplete: "off" });
  const stripIn = h("input", { type: "text", spellcheck: "false", autocomplete: "off" });
  const secretBox = h("div", { class: "secret-fields" });
  const summary = h("p", { class: "error", role: "alert", id: "form-error", hidden: true });
  let otherInject = null;

  const groups = {
    header: h("div", { class: "kind" }, field("f-header-name", "Header name", headerName), field("f-header-template", "Template", headerTpl, "{{secret}} (or {{FIELD}}) is replaced by the credential.")),
    query: h("div", { class: "kind" }, field("f-query-param", "Query parameter", queryParam), field("f-query-template", "Template", queryTpl)),
    basic: h("div", { class: "kind" }, field("f-basic-username", "Username template", basicUser), field("f-basic-password", "Password template", basicPass)),
    headers: h("div", { class: "kind" }, field("f-headers", "Headers, one `Name: template` per line (up to 10)", headersIn)),
    other: h("div", { class: "kind" }, h("p", { class: "hint" }, "This placement is edited with the CLI or YAML; it is kept as it is."), otherView),
  };

  function injectFromForm() {
    switch (kindSel.value) {
      case "header":
        return { header: headerName.value.trim(), template: headerTpl.value };
      case "query":
        return { query: queryParam.value.trim(), template: queryTpl.value };
      case "basic":
        return { basic: { username: basicUser.value, password: basicPass.value } };
      case "headers": {
        const headers = {};
        for (const line of headersIn.value.split("\n")) {
          const i = line.indexOf(":");
          if (line.trim() && i > 0) headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
        }
        return { headers };
      }
      default:
        return otherInject;
    }
  }

  function fillInject(inject) {
    const kind = kindOf(inject);
    otherInject = kind === "other" ? inject : null;
    otherOpt.hidden = kind !== "other";
    kindSel.value = kind;
    if (kind === "header") [headerName.value, headerTpl.value] = [inject.header, inject.template ?? "{{secret}}"];
    if (kind === "query") [queryParam.value, queryTpl.value] = [inject.query, inject.template ?? "{{secret}}"];
    if (kind === "basic") [basicUser.value, basicPass.value] = [inject.basic.username ?? "", inject.basic.password ?? ""];
    if (kind === "headers") headersIn.value = Object.entries(inject.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    if (kind === "other") otherView.textContent = JSON.stringify(inject, null, 2);
  }

  function refresh() {
    for (const [k, g] of Object.entries(groups)) g.hidden = k !== kindSel.value;
    const names = templateFields(injectFromForm());
    secretInputs(secretBox, names.length ? names : ["secret"], !editing, existing);
    patternsHint.textContent = patternHints(patternsIn.value);
  }

  let lastPresetName = "";
  presetSel.addEventListener("change", () => {
    const p = byName.get(presetSel.value);
    if (!p) return refresh(); // Custom keeps what is there, to be adjusted
    patternsIn.value = (p.patterns || []).join("\n");
    fillInject(p.inject);
    stripIn.value = (p.strip_headers || []).join(", ");
    if (!nameIn.value || nameIn.value === lastPresetName) nameIn.value = p.name;
    lastPresetName = p.name;
    refresh();
  });
  for (const el of [kindSel, headerTpl, queryTpl, basicUser, basicPass, headersIn, patternsIn]) el.addEventListener("input", refresh);
  kindSel.addEventListener("change", refresh);

  if (existing) {
    presetSel.value = existing.preset || "";
    nameIn.value = existing.name;
    patternsIn.value = (existing.patterns || []).join("\n");
    fillInject(existing.inject || {});
    methodsIn.value = (existing.methods || []).join(" ");
    stripIn.value = (existing.strip_headers || []).join(", ");
  }

  const form = h(
    "form",
    { class: "card connector-form", novalidate: true, onsubmit: (e) => submit(e) },
    summary,
    field("f-preset", "Provider", presetSel, editing ? "The provider of an existing connector is fixed." : "A preset fills in the patterns and placement; adjust them as needed."),
    field("f-name", "Name", nameIn, "Lowercase letters, digits, - and _ (up to 63), unique in this workspace."),
    patternsField,
    h("fieldset", {}, h("legend", {}, "Where the credential goes"), field("f-kind", "Placement", kindSel), Object.values(groups)),
    field("f-methods", "Methods (optional)", methodsIn, "e.g. GET POST. Empty: every method."),
    field("f-strip", "Client headers to remove (optional)", stripIn, "Placeholder credential headers an SDK sends, e.g. OpenAI-Organization."),
    h("fieldset", {}, h("legend", {}, editing ? "Replace the secret (optional)" : "Secret"), h("p", { class: "hint" }, "Write-only: it is sealed by the proxy and never shown again."), secretBox),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", id: "save" }, editing ? "Save changes" : "Create connector"),
      h("a", { class: "button secondary", href: editing ? hashFor("w", ws, "c", existing.name) : hashFor("w", ws, "connectors") }, "Cancel"),
    ),
  );
  refresh();

  async function submit(event) {
    event.preventDefault();
    clearErrors(form, summary);
    const patterns = patternsIn.value.split("\n").map((l) => l.trim()).filter(Boolean);
    const methods = splitList(methodsIn.value).map((m) => m.toUpperCase());
    const body = { patterns, inject: injectFromForm(), strip_headers: splitList(stripIn.value) };
    if (methods.length) body.methods = methods;
    else if (editing && existing.methods) body.methods = null; // cleared: every method again
    const secret = readSecret(secretBox);
    if (secret) body.secret = secret;
    if (!editing) {
      body.name = nameIn.value.trim();
      if (presetSel.value) body.preset = presetSel.value;
      if (!secret) return fieldError(form, summary, "secret", "A secret is required for a new connector.");
    }
    const save = form.querySelector("#save");
    save.disabled = true;
    try {
      const path = wsPath(ws, "/connectors");
      const saved = editing
        ? await api("PATCH", `${path}/${encodeURIComponent(existing.name)}`, body)
        : await api("POST", path, body);
      secretBox.querySelectorAll("input").forEach((i) => (i.value = ""));
      go(hashFor("w", ws, "c", saved.name), editing ? `Saved ${saved.name}.` : `Created ${saved.name}.`);
    } catch (err) {
      if (err.status === 401) return;
      const where = err.body.field || (err.status === 409 ? "name" : null);
      fieldError(form, summary, where, err, "this connector");
    } finally {
      save.disabled = false;
    }
  }

  return h(
    "section",
    {},
    h("p", { class: "crumbs" }, h("a", { href: hashFor("w", ws, "connectors") }, "Connectors"), " / "),
    h("h1", {}, editing ? `Edit ${existing.name}` : "Add connector"),
    form,
  );
}

function clearErrors(form, summary) {
  summary.hidden = true;
  summary.textContent = "";
  form.querySelectorAll(".field-error").forEach((e) => {
    e.hidden = true;
    e.textContent = "";
  });
  form.querySelectorAll("[aria-invalid]").forEach((e) => e.removeAttribute("aria-invalid"));
}

// The server names fields as "patterns", "patterns[2]", "inject.header", "secret.fields.email", ...
const FIELD_IDS = {
  name: "f-name",
  preset: "f-preset",
  patterns: "f-patterns",
  methods: "f-methods",
  strip_headers: "f-strip",
  inject: "f-kind",
};

function controlFor(form, where) {
  if (!where) return null;
  const path = String(where).split(/[.[\]]+/).filter(Boolean);
  if (path[0] === "secret") {
    const named = path[path.length - 1];
    return form.querySelector(`input[data-field="${CSS.escape(named)}"]`) || form.querySelector("input[data-field]");
  }
  if (path[0] === "inject") {
    const visible = form.querySelector(".kind:not([hidden]) input, .kind:not([hidden]) textarea");
    return visible || form.querySelector("#f-kind");
  }
  const id = FIELD_IDS[path[0]];
  return id ? form.querySelector(`#${id}`) : null;
}

/** Show a refusal next to the field it names (`error` is a message or an ApiError), and a summary on top. */
function fieldError(form, summary, where, error, what = "this") {
  const control = controlFor(form, where);
  const slot = control && form.querySelector(`#${CSS.escape(control.id)}-error`);
  const detail = error instanceof ApiError ? error.message : String(error);
  if (slot) {
    slot.textContent = detail; // the server's detail names the field and the fault in its own words
    slot.hidden = false;
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }
  const status = error instanceof ApiError ? ` (HTTP ${error.status})` : "";
  summary.textContent = slot
    ? `The server refused ${what}${status}: see the marked field.`
    : error instanceof ApiError ? describeError(error) : detail;
  summary.hidden = false;
}

// ---------------------------------------------------------------- replace secret

async function secretView(ws, name) {
  if (!canWrite()) return h("section", {}, h("h1", {}, "Read-only"), h("p", { class: "note" }, "This token cannot change secrets."));
  const c = await api("GET", wsPath(ws, `/connectors/${encodeURIComponent(name)}`));
  const names = c.fields && c.fields.length ? c.fields : templateFields(c.inject);
  const box = h("div", { class: "secret-fields" });
  secretInputs(box, names.length ? names : ["secret"], true, null);
  const summary = h("p", { class: "error", role: "alert", id: "form-error", hidden: true });
  const form = h(
    "form",
    { class: "card", novalidate: true, onsubmit: (e) => submit(e) },
    summary,
    h("p", {}, secretStatus(c), "."),
    h("p", { class: "hint" }, "Every field is replaced at once. Running proxies use the new value for new requests within a second."),
    box,
    h("div", { class: "actions" }, h("button", { type: "submit", id: "save" }, "Replace secret"), h("a", { class: "button secondary", href: hashFor("w", ws, "c", name) }, "Cancel")),
  );

  async function submit(event) {
    event.preventDefault();
    clearErrors(form, summary);
    const empty = [...box.querySelectorAll("input[data-field]")].find((i) => !i.value);
    if (empty) return fieldError(form, summary, `secret.fields.${empty.dataset.field}`, "required");
    try {
      await api("PUT", wsPath(ws, `/connectors/${encodeURIComponent(name)}/secret`), readSecret(box));
    } catch (err) {
      if (err.status !== 401) fieldError(form, summary, err.body.field || "secret", err, "this secret");
      return;
    }
    box.querySelectorAll("input").forEach((i) => (i.value = ""));
    go(hashFor("w", ws, "c", name), "Secret replaced.");
  }

  return h(
    "section",
    {},
    h("p", { class: "crumbs" }, h("a", { href: hashFor("w", ws, "connectors") }, "Connectors"), " / ", h("a", { href: hashFor("w", ws, "c", name) }, name), " / "),
    h("h1", {}, `Replace the secret of ${c.name}`),
    form,
  );
}

// ---------------------------------------------------------------- start

document.getElementById("logout").addEventListener("click", async () => {
  try {
    await api("DELETE", "/session"); // ends it on the server and clears the cookie
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      return endSession(`Logged out here, but the server was not told (${describeError(err)}): the session ends after an hour idle.`);
    }
  }
  endSession("Logged out.", false);
});
window.addEventListener("hashchange", () => {
  if (session.whoami) render();
});
render();
