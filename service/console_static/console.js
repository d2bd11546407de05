// The operator console: polls the JSON API and renders it; actions go through the same API.
// Plain DOM, no framework, nothing loaded from elsewhere. Every value from the server is
// set as text (never as HTML).
"use strict";

const POLL_MS = 1000;        // positions
const SLOW_POLL_MS = 5000;   // charts, closed positions, actions, health
const TOKEN_KEY = "apm-console-token";
// The per-symbol settings an override may set: actors/operator.py OVERRIDABLE (the browser
// test checks that the two lists agree). Their ranges are the server's to judge.
const OVERRIDABLE = ["grace_period_hours", "loss_step_percent", "acceleration_after_hours",
                     "acceleration_factor", "max_loss_percent", "commission_percent"];

const $ = (id) => document.getElementById(id);
const state = { positions: [], charts: {}, holdId: null, lastSlow: 0, confirmClose: null };

// --- formatting ------------------------------------------------------------------------

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  const n = Number(value);
  if (!Number.isFinite(n)) return String(value);
  if (digits !== undefined) return n.toFixed(digits);
  const text = String(value);
  // Decimals arrive as text, sometimes in exponent form ("6E+4"): shown plainly, 10 digits at most.
  return /e/i.test(text) || text.length > 12 ? String(Number(n.toPrecision(10))) : text;
}

function when(iso, short) {
  if (!iso) return "–";
  const text = new Date(iso).toISOString().replace("T", " ");
  return short ? text.slice(5, 16) : text.slice(0, 19);
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [key, value] of Object.entries(attrs || {})) tr.dataset[key] = value;
  for (const c of cells) {
    if (c instanceof Node) { tr.appendChild(c); continue; }
    const [text, col, cls] = c;
    const td = el("td", text, cls);
    if (col) td.dataset.col = col;
    tr.appendChild(td);
  }
  return tr;
}

// --- the API ---------------------------------------------------------------------------

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// Send one action. A refusal's {"error": ...} is shown verbatim: in `errorBox` when given
// (a form's own place), else in the message line. The answer, or null when refused.
async function act(method, path, body, errorBox) {
  if (!token()) { askToken("Set the console token to act on positions."); return null; }
  const r = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "Authorization": `Bearer ${token()}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await r.json(); } catch (e) { answer = { error: `HTTP ${r.status}` }; }
  if (!r.ok) {
    if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    const text = answer.error || `HTTP ${r.status}`;
    if (errorBox) { errorBox.textContent = text; errorBox.hidden = false; } else say(text, true);
    showToken();
    return null;
  }
  say(`${answer.action.action}: recorded (${answer.action.actor})`, false);
  refresh(true);
  return answer;
}

// --- messages and the token -----------------------------------------------------------

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "message error" : "message ok";
  m.hidden = false;
}

function showToken() {
  $("token-state").textContent = token() ? "token set" : "no token";
}

function askToken(text) {
  if (text) say(text, true);
  $("token-form").hidden = false;
  $("token-input").focus();
}

$("token-button").addEventListener("click", () => askToken());
$("token-cancel").addEventListener("click", () => { $("token-form").hidden = true; });
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("token-input").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  $("token-input").value = "";
  $("token-form").hidden = true;
  showToken();
});

// --- hold / release / close ------------------------------------------------------------

function openHold(p) {
  state.holdId = p.id;
  $("hold-target").textContent = `${p.symbol} on ${p.exchange}`;
  $("hold-form").hidden = false;
  $("hold-reason").focus();
}

$("hold-cancel").addEventListener("click", () => { $("hold-form").hidden = true; state.holdId = null; });
$("hold-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!state.holdId) return;
  const answer = await act("POST", `/api/positions/${state.holdId}/hold`,
                           { hours: $("hold-hours").value, reason: $("hold-reason").value });
  if (answer) { $("hold-form").hidden = true; state.holdId = null; }
});

// --- overrides -------------------------------------------------------------------------

// One setting of the override form: a key (select) and its value (a number, sent as typed).
function addSetting(key) {
  const span = el("span", null, "setting");
  const select = el("select", null, "override-key");
  for (const k of OVERRIDABLE) select.appendChild(el("option", k));
  select.value = key || "max_loss_percent";
  const value = el("input", null, "override-value");
  Object.assign(value, { type: "number", step: "any", size: 6, required: true });
  value.setAttribute("aria-label", "value");
  const remove = el("button", "×");
  remove.type = "button";
  remove.title = "remove this setting";
  remove.addEventListener("click", () => {
    if ($("override-settings").children.length > 1) span.remove();
  });
  span.append(select, " = ", value, remove);
  $("override-settings").appendChild(span);
  return span;
}

function openOverride(p) {
  $("override-exchange").value = p.exchange;
  $("override-symbol").value = p.symbol;
  $("override-error").hidden = true;
  $("override-settings").querySelector(".override-value").focus();
}

$("override-add").addEventListener("click", () => addSetting());
$("override-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const settings = {};
  for (const s of $("override-settings").children) {
    settings[s.querySelector(".override-key").value] = s.querySelector(".override-value").value.trim();
  }
  const body = { exchange: $("override-exchange").value.trim(), symbol: $("override-symbol").value.trim(),
                 settings, reason: $("override-reason").value };
  $("override-error").hidden = true;
  const answer = await act("POST", "/api/overrides", body, $("override-error"));
  if (answer) {
    $("override-settings").replaceChildren();
    addSetting();
    $("override-reason").value = "";
  }
});

function clearOverride(o) {
  const path = `/api/overrides/${encodeURIComponent(o.exchange)}/${encodeURIComponent(o.symbol)}`;
  act("DELETE", `${path}?reason=${encodeURIComponent("cleared from the console")}`);
}

function renderOverrides(list) {
  const body = $("overrides").querySelector("tbody");
  body.replaceChildren();
  for (const o of list) {
    const settings = Object.entries(o.settings).map(([k, v]) => `${k} = ${num(v)}`).join(", ");
    const td = el("td", null, "buttons");
    const b = el("button", "Clear");
    b.type = "button";
    b.dataset.action = "clear";
    b.addEventListener("click", () => clearOverride(o));
    td.appendChild(b);
    body.appendChild(row([[o.exchange, "exchange"], [o.symbol, "symbol"], [settings, "settings"],
                          [o.reason || "–"], [o.actor || "–"], [when(o.updated_at)], td],
                         { exchange: o.exchange, symbol: o.symbol }));
  }
  $("no-overrides").hidden = list.length > 0;
}

// The form's suggestions: the exchanges and symbols of the listed positions (free text too).
function renderChoices(list) {
  for (const [id, key] of [["override-exchanges", "exchange"], ["override-symbols", "symbol"]]) {
    const values = [...new Set(list.map((p) => p[key]))].sort();
    const box = $(id);
    if (box.dataset.values === values.join("\n")) continue;
    box.dataset.values = values.join("\n");
    box.replaceChildren(...values.map((v) => { const o = el("option"); o.value = v; return o; }));
  }
}

function buttons(p) {
  const td = el("td", null, "buttons");
  const add = (label, name, onClick, disabled) => {
    const b = el("button", label);
    b.type = "button";
    b.dataset.action = name;
    b.disabled = Boolean(disabled);
    b.addEventListener("click", onClick);
    td.appendChild(b);
  };
  add("Hold", "hold", () => openHold(p));
  add("Release", "release", () => act("POST", `/api/positions/${p.id}/release`, {}), !p.hold_until);
  add("Override", "override", () => openOverride(p));
  add(state.confirmClose === p.id ? "Confirm close" : "Close", "close", () => {
    // Two clicks: the first arms the button (for 5 s), the second sends the close.
    if (state.confirmClose !== p.id) {
      state.confirmClose = p.id;
      say(`Click "Confirm close" to close ${p.side} ${p.quantity} ${p.symbol} on ${p.exchange} at the market.`,
          false);
      setTimeout(() => { if (state.confirmClose === p.id) state.confirmClose = null; }, 5000);
      renderPositions(state.positions);
      return;
    }
    state.confirmClose = null;
    act("POST", `/api/positions/${p.id}/close`, { reason: "closed from the console" });
  });
  return td;
}

// --- the chart: price against target over time ----------------------------------------

function sparkline(points) {
  const W = 160, H = 36, NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.classList.add("spark");
  if (!points || points.length === 0) return svg;
  const t = points.map((p) => Date.parse(p.at));
  const values = points.flatMap((p) => [Number(p.price), Number(p.target)]).filter(Number.isFinite);
  const lo = Math.min(...values), hi = Math.max(...values);
  const t0 = Math.min(...t), t1 = Math.max(...t);
  const x = (v) => (t1 === t0 ? W - 2 : 2 + (v - t0) / (t1 - t0) * (W - 4));
  const y = (v) => (hi === lo ? H / 2 : H - 2 - (v - lo) / (hi - lo) * (H - 4));
  for (const [key, cls] of [["target", "target"], ["price", "price"]]) {
    const path = points.map((p, i) => `${i ? "L" : "M"}${x(t[i]).toFixed(1)},${y(Number(p[key])).toFixed(1)}`);
    const line = document.createElementNS(NS, "path");
    line.setAttribute("d", path.join(" "));
    line.setAttribute("class", cls);
    svg.appendChild(line);
  }
  if (points.length === 1) {  // one check so far: a dot for each line
    for (const [key, cls] of [["target", "target"], ["price", "price"]]) {
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", x(t[0])); dot.setAttribute("cy", y(Number(points[0][key]))); dot.setAttribute("r", 2);
      dot.setAttribute("class", cls);
      svg.appendChild(dot);
    }
  }
  const title = document.createElementNS(NS, "title");
  title.textContent = `${points.length} price checks; blue: price, orange: target`;
  svg.appendChild(title);
  return svg;
}

// --- rendering -------------------------------------------------------------------------

function statusCell(p) {
  const td = el("td", null, "status");
  td.dataset.col = "status";
  td.appendChild(el("span", p.status.replace("_active", ""), `badge ${p.status}`));
  if (p.held) {
    const held = el("span", `held until ${when(p.hold_until, true)}`, "badge held");
    held.title = p.hold_reason || "";
    td.appendChild(held);
  }
  if (p.override) td.appendChild(el("span", "override", "badge override"));
  return td;
}

function renderPositions(list) {
  const body = $("positions").querySelector("tbody");
  body.replaceChildren();
  for (const p of list) {
    const next = p.next_step_at ? `${when(p.next_step_at, true)} → ${num(p.next_target_price)}` : "–";
    const chart = el("td", null, "chart");
    const points = (state.charts[p.id] || []).slice();
    if (p.price !== null && p.target_price !== null) {
      points.push({ at: p.price_at || new Date().toISOString(), price: p.price, target: p.target_price });
    }
    chart.appendChild(sparkline(points));
    const distance = p.distance_percent === null ? "–" : `${num(p.distance_percent, 3)} %`;
    body.appendChild(row([
      [where(p), "exchange"], [p.symbol, "symbol"], [p.side, "side", p.side],
      [num(p.quantity), "quantity", "num"], [num(p.entry_price), "entry", "num"],
      [p.phase.replace("_", " "), "phase"], [`${num(p.age_hours, 2)} h`, "age", "num"],
      [num(p.price), "price", "num"], [num(p.target_price), "target", "num"],
      [distance, "distance", Number(p.distance_percent) <= 0 ? "num reached" : "num"],
      [next, "next"], statusCell(p), chart, buttons(p),
    ], { id: p.id, held: p.held ? "true" : "false" }));
  }
  $("no-positions").hidden = list.length > 0;
}

function renderClosed(list) {
  const body = $("closed").querySelector("tbody");
  body.replaceChildren();
  for (const c of list) {
    const pnl = Number(c.actual_pnl);
    body.appendChild(row([
      [when(c.closed_at)], [where(c)], [c.symbol], [c.side], [num(c.closed_qty || c.quantity), null, "num"],
      [num(c.entry_price), null, "num"], [num(c.close_price), null, "num"], [c.phase_at_close || "–"],
      [c.close_reason, "reason"], [num(c.actual_pnl, 4), null, pnl < 0 ? "num loss" : "num"],
      [c.actual_pnl_percent === null ? "–" : `${num(c.actual_pnl_percent, 3)} %`, null, "num"],
    ], { id: c.id }));
  }
}

// The exchange, and the account when it is not simply named after the exchange.
function where(p) {
  return p.account && p.account !== p.exchange ? `${p.exchange} · ${p.account}` : p.exchange;
}

function renderActions(list) {
  const body = $("actions").querySelector("tbody");
  body.replaceChildren();
  for (const a of list) {
    const target = a.aged_position_id ? `${a.symbol} on ${a.exchange}` : `${a.symbol} on ${a.exchange} (symbol)`;
    const outcome = a.error ? `error: ${a.error}` : (a.outcome || (a.applied_at ? "applied" : "pending"));
    body.appendChild(row([[when(a.created_at)], [a.action, "action"], [target], [a.actor], [a.reason || "–"],
                          [outcome, "outcome"]], { id: String(a.id) }));
  }
}

function renderHealth(h) {
  // One service (the demo), or an instance running one service per account it holds.
  const services = h.instance ? h.accounts || {} : { "": h };
  const bits = h.instance ? [`instance ${h.instance} ${h.status}`] : [`service ${h.status}`];
  if (h.instance) {
    for (const [account, lease] of Object.entries(h.leases || {})) {
      bits.push(lease.held_by_me ? `${account}: managed here` : `${account}: ${lease.live ? "managed by " + lease.holder : "NOT MANAGED"}`);
    }
  }
  const body = $("children").querySelector("tbody");
  body.replaceChildren();
  for (const [account, svc] of Object.entries(services)) {
    const children = (svc.supervisors && svc.supervisors.root && svc.supervisors.root.children) || {};
    for (const [name, c] of Object.entries(children)) {
      if (!/^(feed|account|executor|storage|detector|operator)/.test(name)) continue;
      const shown = account ? `${account} ${name}` : name;
      body.appendChild(row([[shown], [c.state, null, c.state === "running" ? "ok" : "bad"],
                            [String(c.restarts), null, "num"], [c.last_error || "–"]], { child: shown }));
    }
    const tag = account ? `${account}: ` : "";
    if (svc.storage) bits.push(tag + (svc.storage.database_up ? "database up" : "DATABASE DOWN"));
    for (const w of svc.warnings || []) bits.push(tag + w);
  }
  for (const p of h.problems || []) bits.push(p);
  const warned = Object.values(services).some((svc) => (svc.warnings || []).length);
  $("health").textContent = bits.join(" · ");
  $("health").className = h.status === "ok" && !warned ? "health ok" : "health bad";
}

// --- polling ---------------------------------------------------------------------------

async function refreshCharts(list) {
  const charts = {};
  await Promise.all(list.map(async (p) => {
    try { charts[p.id] = (await getJson(`/api/positions/${p.id}?limit=120`)).prices; } catch (e) { /* next time */ }
  }));
  state.charts = charts;
}

async function refresh(slowToo) {
  try {
    state.positions = await getJson("/api/positions");
    const slow = slowToo || Date.now() - state.lastSlow >= SLOW_POLL_MS;
    if (slow) {
      state.lastSlow = Date.now();
      await refreshCharts(state.positions);
      const [closed, actions, overrides] = await Promise.all(
        [getJson("/api/closed?limit=20"), getJson("/api/actions?limit=30"), getJson("/api/overrides")]);
      renderClosed(closed);
      renderActions(actions);
      renderOverrides(overrides);
      const r = await fetch("/health", { cache: "no-store" });
      renderHealth(await r.json());  // a 503 still has the body
    }
    renderPositions(state.positions);
    renderChoices(state.positions);
    $("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("updated").textContent = `not updated: ${e.message}`;
  }
}

async function loop() {
  for (;;) {
    await refresh(false);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

showToken();
addSetting();
loop();
