// clicklake dashboard: vanilla JS over /api/v1, charts with the bundled Chart.js.
// The token lives in sessionStorage; a #token=... fragment signs in (and is then removed from the URL).
"use strict";

const TOKEN_KEY = "clicklake.token";
const $ = (sel) => document.querySelector(sel);
const charts = {};
let options = null;
let pending = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function busy(delta) {
  pending += delta;
  document.body.dataset.state = pending > 0 ? "loading" : "ready";
}

class ApiError extends Error {
  constructor(status, body) { super(body.message || ("HTTP " + status)); this.status = status; }
}

async function api(path, init) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, (init && init.headers) || {});
  const res = await fetch("/api/v1/" + path, Object.assign({}, init, { headers }));
  let body = {};
  try { body = await res.json(); } catch (e) { body = { message: res.statusText }; }
  if (res.status === 401) { signOut(body.message); throw new ApiError(401, body); }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// -- formatting -------------------------------------------------------------------------------

const nf = new Intl.NumberFormat("en-US");
function fmt(key, v) {
  if (v === null || v === undefined) return "–";
  if (key.endsWith("_rate")) return (v * 100).toFixed(1) + "%";
  if (key === "revenue") return nf.format(Math.round(v * 100) / 100);
  if (key.endsWith("_s")) return v >= 60 ? Math.floor(v / 60) + "m " + Math.round(v % 60) + "s" : v.toFixed(1) + "s";
  return nf.format(v);
}
function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"; }
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fillTable(sel, rows, cells) {
  const body = $(sel + " tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells(r)) tr.appendChild(el("td", value, cls));
    body.appendChild(tr);
  }
}

function chart(id, type, labels, datasets, extra) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($("#" + id), {
    type,
    data: { labels, datasets },
    options: Object.assign({
      responsive: true, maintainAspectRatio: false, animation: false,
      plugins: { legend: { display: datasets.length > 1 } },
    }, extra || {}),
  });
}

// -- filters ----------------------------------------------------------------------------------

function filterQuery() {
  const p = new URLSearchParams();
  for (const [name, sel] of [["app", "#f-app"], ["start", "#f-start"], ["end", "#f-end"], ["channel", "#f-channel"], ["device", "#f-device"]]) {
    const v = $(sel).value;
    if (v) p.set(name, v);
  }
  return p;
}

function setOptions(select, values) {
  const keep = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const v of values) select.appendChild(new Option(v, v));
  select.value = values.includes(keep) ? keep : "";
}

async function loadOptions() {
  options = await api("filters");
  setOptions($("#f-app"), options.apps);
  setOptions($("#f-channel"), options.channels);
  setOptions($("#f-device"), options.devices);
  if (options.max_date && !$("#f-end").value) {
    const end = new Date(options.max_date + "T00:00:00Z");
    const start = new Date(end.getTime() - 6 * 86400000);
    $("#f-end").value = options.max_date;
    $("#f-start").value = start.toISOString().slice(0, 10);
  }
  const list = $("#event-names");
  list.replaceChildren();
  for (const n of options.event_names) list.appendChild(new Option(n));
  if ($("#funnel-steps").children.length === 0) {
    const names = options.event_names;
    const first = names.includes("Product Viewed") ? "Product Viewed" : names[0] || "";
    const last = names.includes("Order Completed") ? "Order Completed" : names[1] || "";
    addStep(first);
    addStep(last);
  }
}

// -- panels -----------------------------------------------------------------------------------

async function loadKpis(q) {
  const data = await api("kpis?" + q);
  for (const tile of document.querySelectorAll(".tile")) {
    const key = tile.dataset.key;
    const v = data.current[key];
    tile.dataset.value = String(v);
    tile.querySelector(".v").textContent = fmt(key, v);
    const ch = data.change[key];
    const d = tile.querySelector(".d");
    d.className = "d";
    if (ch === null || ch === undefined) {
      d.textContent = "no previous data";
    } else {
      const good = key === "bounce_rate" ? ch < 0 : ch > 0;
      d.textContent = (ch >= 0 ? "▲ " : "▼ ") + Math.abs(ch * 100).toFixed(1) + "% vs previous " + fmt(key, data.previous[key]);
      if (ch !== 0) d.classList.add(good ? "up" : "down");
    }
  }
  $("#period-note").textContent = data.period.start + " – " + data.period.end + " vs " + data.previous_period.start + " – " + data.previous_period.end;
}

let lastSeries = null;
function drawSeries() {
  if (!lastSeries) return;
  const m = $("#ts-metric").value;
  chart("ts-chart", "line", lastSeries.points.map((p) => p.t),
    [{ label: m, data: lastSeries.points.map((p) => p[m]), borderColor: "#2f6fde", backgroundColor: "rgba(47,111,222,.15)", fill: true, tension: 0.2 }]);
}
async function loadSeries(q) { lastSeries = await api("timeseries?" + q); drawSeries(); }

async function loadPages(q) {
  const data = await api("pages?limit=15&" + q);
  fillTable("#pages-table", data.pages, (r) => [
    [r.page], [nf.format(r.views), "n"], [nf.format(r.entrances), "n"], [nf.format(r.exits), "n"], [pct(r.exit_rate), "n"],
    [r.avg_engaged_time_s === null ? "–" : r.avg_engaged_time_s.toFixed(1), "n"],
  ]);
}

async function loadBreakdown(q, dimSel, chartId, tableSel, type) {
  const data = await api("breakdown?limit=10&dimension=" + $(dimSel).value + "&" + q);
  const rows = data.rows;
  chart(chartId, type, rows.map((r) => r.value), [{ label: "sessions", data: rows.map((r) => r.sessions),
    backgroundColor: ["#2f6fde", "#1a8a4a", "#e67e22", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d35400", "#2c3e50", "#27ae60"] }],
    type === "bar" ? { indexAxis: "y", plugins: { legend: { display: false } } } : { plugins: { legend: { position: "right" } } });
  fillTable(tableSel, rows, (r) => [
    [r.value], [nf.format(r.sessions), "n"], [nf.format(r.users), "n"], [pct(r.bounce_rate), "n"], [pct(r.conversion_rate), "n"], [fmt("revenue", r.revenue), "n"],
  ]);
}

function addStep(value) {
  const wrap = el("span", null, "step");
  const input = el("input");
  input.setAttribute("list", "event-names");
  input.placeholder = "Event or @/path";
  input.className = "funnel-step";
  input.value = value || "";
  const remove = el("button", "×");
  remove.type = "button";
  remove.title = "Remove step";
  remove.addEventListener("click", () => wrap.remove());
  wrap.append(input, remove);
  $("#funnel-steps").appendChild(wrap);
  return input;
}

async function loadFunnel(q) {
  const steps = [...document.querySelectorAll(".funnel-step")].map((i) => i.value.trim()).filter(Boolean);
  if (steps.length === 0) return;
  const p = new URLSearchParams(q);
  for (const s of steps) p.append("step", s);
  p.set("window", $("#funnel-window").value);
  p.set("order", $("#funnel-order").value);
  const data = await api("funnel?" + p);
  chart("funnel-chart", "bar", data.steps.map((s) => s.step + ". " + s.step_name),
    [{ label: "visitors", data: data.steps.map((s) => s.entities), backgroundColor: "#2f6fde" }], { plugins: { legend: { display: false } } });
  fillTable("#funnel-table", data.steps, (s) => [
    [s.step], [s.step_name], [nf.format(s.entities), "n"], [pct(s.conversion_from_start), "n"],
    [s.step === 1 ? "–" : nf.format(s.drop_off) + " (" + pct(s.drop_off_rate) + ")", "n"],
  ]);
}

async function loadLive() {
  const app = $("#f-app").value;
  const data = await api("live?minutes=30" + (app ? "&app=" + encodeURIComponent(app) : ""));
  chart("live-chart", "bar", data.per_minute.map((r) => r.minute.slice(11, 16)),
    [{ label: "events", data: data.per_minute.map((r) => r.events), backgroundColor: "#1a8a4a" }]);
  const total = data.per_minute.reduce((a, r) => a + r.events, 0);
  $("#live-total").textContent = nf.format(total) + " events committed since " + data.since.slice(11, 16) + " UTC";
  const list = $("#live-recent");
  list.replaceChildren();
  for (const e of data.recent) list.appendChild(el("li", e.collector_tstamp.slice(11, 19) + " " + e.app_id + " " + e.event_type + " " + (e.event_name || "") + " " + (e.page_path || "")));
}

async function loadHealth(q) {
  const data = await api("health?" + q);
  $("#health-spool").textContent = "Spool: " + data.spool.segments + " segments, " + nf.format(data.spool.bytes) + " bytes, lag " + nf.format(data.spool.lag_bytes) + " bytes not yet committed";
  const tables = Object.entries(data.tables).map(([name, t]) => Object.assign({ name }, t));
  fillTable("#health-tables", tables, (t) => [
    [t.name], [t.rows === null ? "–" : nf.format(t.rows), "n"], [t.commit_age_s === null ? "never" : fmt("age_s", t.commit_age_s) + " ago"],
  ]);
  fillTable("#health-failed", data.failed_by_reason, (r) => {
    const ex = r.examples[0];
    return [[r.stage], [r.error_type], [nf.format(r.failed), "n"], [ex ? ex.error_message + (ex.raw ? " · " + ex.raw : "") : "", "ex"]];
  });
}

async function guarded(fn) {
  busy(1);
  try { await fn(); } catch (e) { if (e.status !== 401) $("#error").textContent = e.message; } finally { busy(-1); }
}

async function refresh() {
  $("#error").textContent = "";
  const q = filterQuery().toString();
  await Promise.all([
    guarded(() => loadKpis(q)), guarded(() => loadSeries(q)), guarded(() => loadPages(q)),
    guarded(() => loadBreakdown(q, "#acq-dim", "acq-chart", "#acq-table", "bar")),
    guarded(() => loadBreakdown(q, "#tech-dim", "tech-chart", "#tech-table", "doughnut")),
    guarded(() => loadFunnel(q)), guarded(() => loadLive()), guarded(() => loadHealth(q)),
  ]);
}

// -- sign in ----------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#dashboard").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  document.body.dataset.state = "login";
}

async function start() {
  busy(1);
  try {
    const me = await api("me");
    $("#login").hidden = true;
    $("#dashboard").hidden = false;
    $("#whoami").textContent = me.name + " · " + me.role + " · apps: " + (me.apps === null ? "all" : me.apps.join(", ")) + (me.pii ? " · PII visible" : "");
    await loadOptions();
    await refresh();
  } catch (e) {
    if (e.status !== 401) { $("#dashboard").hidden = false; $("#error").textContent = e.message; }
  } finally {
    busy(-1);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const m = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    $("#token-input").value = "";
    start();
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#filters").addEventListener("change", () => refresh());
  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("#ts-metric").addEventListener("change", drawSeries);
  $("#acq-dim").addEventListener("change", () => guarded(() => loadBreakdown(filterQuery().toString(), "#acq-dim", "acq-chart", "#acq-table", "bar")));
  $("#tech-dim").addEventListener("change", () => guarded(() => loadBreakdown(filterQuery().toString(), "#tech-dim", "tech-chart", "#tech-table", "doughnut")));
  $("#funnel-add").addEventListener("click", () => addStep("").focus());
  $("#funnel-form").addEventListener("submit", (ev) => { ev.preventDefault(); guarded(() => loadFunnel(filterQuery().toString())); });
  setInterval(() => { if (token() && !$("#dashboard").hidden && pending === 0) guarded(loadLive); }, 15000);
  if (token()) start(); else signOut("");
});
