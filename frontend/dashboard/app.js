// The notifymesh dashboard: logs in with an API key, then follows the server's
// event stream (/dashboard/api/events) and redraws its tables in place.
"use strict";

const $ = (id) => document.getElementById(id);
let session = null;  // {principal, name, role, csrf, interval_s}
let events = null;   // the EventSource
let last = null;     // the latest snapshot, drawn again when the toggle changes
const ours = (name) => name.startsWith("notifymesh.");  // the mesh's own topics and subscriptions

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, render) {
  const body = $(tableId).tBodies[0];
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const td of render(row, tr)) tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

const num = (v) => cell(v, "num");
const age = (s) => (s === null || s === undefined ? "" : s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
const when = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "");

async function api(path, options = {}) {
  const headers = options.headers || {};
  if (options.method === "POST" && session) headers["X-Notifymesh-CSRF"] = session.csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) showLogin(body.error || "");
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showLogin(reason) {
  if (events) events.close();
  events = null;
  session = null;
  $("main-view").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("live").textContent = "offline";
  $("live").className = "badge";
  $("login-view").hidden = false;
  $("login-error").textContent = reason || "";
}

function showMain(s) {
  session = s;
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${s.name} (${s.role})`;
  follow();
}

function follow() {
  if (events) events.close();
  events = new EventSource("/dashboard/api/events");
  events.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  events.addEventListener("logout", (e) => showLogin(JSON.parse(e.data).error));
  events.onopen = () => { $("live").textContent = "live"; $("live").className = "badge live"; };
  events.onerror = () => {
    $("live").textContent = "reconnecting";
    $("live").className = "badge";
    // A refused stream (401 after a revoked key, 503 when full) does not reconnect by itself.
    if (events.readyState === EventSource.CLOSED) {
      api("/dashboard/api/session").then(() => setTimeout(follow, 2000)).catch(() => {});
    }
  };
}

function render(snap) {
  last = snap;
  const all = $("show-internal").checked;
  const shown = (name) => all || !ours(name);
  $("updated").textContent = new Date(snap.time_ms).toLocaleTimeString();
  $("problems").textContent = snap.problems.join("; ");
  $("topics-not-shown").textContent = snap.topics_not_shown ? `(${snap.topics_not_shown} more not shown)` : "";
  fill("members", snap.members, (m) => [cell(m.kind), cell(m.node_id), cell(m.addr), cell(m.metrics_addr),
    cell(m.health, m.health)]);
  fill("topics", snap.topics.filter((t) => shown(t.name)), (t, tr) => {
    tr.dataset.topic = t.name;
    return [cell(t.name), num(t.partitions), num(t.publish_rate.toFixed(1)), num(t.backlog), num(t.subscriptions)];
  });
  fill("subscriptions", snap.subscriptions.filter((s) => shown(s.topic)), (s, tr) => {
    tr.dataset.subscription = s.name;
    const actions = cell("");
    if (s.dead_letters) {
      const button = document.createElement("button");
      button.textContent = "Redrive";
      button.className = "redrive";
      button.addEventListener("click", () => redrive(s.name, button));
      actions.appendChild(button);
    }
    const backlog = num(s.backlog);
    backlog.dataset.field = "backlog";
    return [cell(s.name), cell(s.topic), backlog, num(s.in_flight), num(age(s.oldest_unacked_s)),
      num(s.delivery_rate.toFixed(1)), num(s.streams), num(s.dead_letters), actions];
  });
  fill("dead-letters", snap.dead_letters, (d, tr) => {
    tr.dataset.messageId = d.message_id;
    return [cell(d.subscription), cell(d.message_id), num(d.attempts), cell(when(d.dead_letter_time_ms)),
      cell(d.last_error, "wrap"), cell(d.preview, "wrap")];
  });
  fill("partitions", snap.partitions.filter((p) => shown(p.topic)), (p) => [cell(p.topic), num(p.partition), cell(p.leader || "(election)",
    p.leader ? "" : "warn"), num(p.epoch), num(p.commit), num(p.lag),
    cell(p.replicas.map((r) => `${r.node_id} ${r.role} ${r.end} ${r.lag}`).join(", "))]);
  fill("errors", snap.errors, (e) => [cell(when(e.time_ms)), cell(e.level, e.level === "warning" ? "warn" : "error"),
    cell(e.logger), cell(e.message, "wrap"),
    cell(Object.entries(e.fields).map(([k, v]) => `${k}=${v}`).join(" "), "wrap")]);
}

async function redrive(name, button) {
  button.disabled = true;
  try {
    const done = await api(`/dashboard/api/subscriptions/${encodeURIComponent(name)}/redrive`, { method: "POST" });
    $("redrive-result").textContent = `${done.redriven} dead letter(s) of ${done.subscription} redriven`;
  } catch (e) {
    $("redrive-result").textContent = `redrive of ${name} failed: ${e.message}`;
  } finally {
    button.disabled = false;
  }
}

function lookupTable(headers, rows) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const h of headers) { const th = document.createElement("th"); th.textContent = h; head.appendChild(th); }
  const body = table.createTBody();
  for (const row of rows) { const tr = body.insertRow(); for (const v of row) tr.appendChild(cell(v, "wrap")); }
  return table;
}

function showLookup(kind, found) {
  const out = $("lookup-result");
  out.replaceChildren();
  const title = document.createElement("p");
  const trace = found.trace_id || "(untraced)";
  let rows;
  if (kind === "messages") {
    title.textContent = `message on ${found.topic} partition ${found.partition || 0}; trace id ${trace}`;
    rows = [];
    for (const d of found.deliveries || []) {
      const attempts = d.attempts || [];
      if (!attempts.length) rows.push([d.subscription, d.state, "", "", "", ""]);
      for (const a of attempts) {
        rows.push([d.subscription, d.state, a.attempt, a.delivery_time || "", a.outcome || "", a.error || ""]);
      }
    }
    out.append(title, lookupTable(["subscription", "state", "attempt", "delivered", "outcome", "error"], rows));
  } else {
    title.textContent = `notification ${found.id} (${found.category || ""}, template ${found.template || ""}); ` +
      `trace id ${trace}`;
    rows = [];
    for (const s of found.sends || []) {
      for (const e of s.timeline || []) {
        rows.push([s.recipient, s.channel, e.state, e.time || "", e.attempt || "", e.provider || "", e.reason || ""]);
      }
    }
    out.append(title, lookupTable(["recipient", "channel", "state", "time", "attempt", "provider", "reason"], rows));
  }
  out.dataset.traceId = found.trace_id || "";
}

async function lookup(event) {
  event.preventDefault();
  const kind = $("lookup-kind").value;
  const id = $("lookup-id").value.trim();
  try {
    showLookup(kind, await api(`/dashboard/api/${kind}/${encodeURIComponent(id)}`));
  } catch (e) {
    $("lookup-result").textContent = e.message;
  }
}

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const s = await api("/dashboard/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: $("key").value.trim() }),
    });
    $("key").value = "";
    showMain(s);
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

async function logout() {
  try { await api("/dashboard/logout", { method: "POST" }); } finally { showLogin(""); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("lookup").addEventListener("submit", lookup);
  $("logout").addEventListener("click", logout);
  $("show-internal").addEventListener("change", () => last && render(last));
  api("/dashboard/api/session").then(showMain).catch(() => showLogin(""));
});
