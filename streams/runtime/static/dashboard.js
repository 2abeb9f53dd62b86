// streamwatch live dashboard: fetches /api/dashboard every few seconds and draws
// plain SVG charts (no external library). Times are event time, epoch ms, UTC.
"use strict";

const REFRESH_MS = 5000;
const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
  "#bcbd22", "#7f7f7f", "#ff7f0e", "#d62728"];
const SEVERITY = { critical: "#c62828", warning: "#e08a00", info: "#1f6fd1" };
// a resolved alert keeps its severity (for routing) but is drawn as resolved
const RESOLVED = "#2e7d32";
const TOKEN_KEY = "streamwatch.token";
const QUANTILES = [["latency_p50", "p50", "#2ca02c"], ["latency_p95", "p95", "#e08a00"],
  ["latency_p99", "p99", "#c62828"]];
const SVG_NS = "http://www.w3.org/2000/svg";

window.dashboardState = { renders: 0, lastError: null, lastData: null, tokenAsked: false };

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function rows(part) {
  // [{column: value}] from {"columns": [...], "rows": [[...]]}
  if (!part || !part.rows) return [];
  return part.rows.map((r) => Object.fromEntries(part.columns.map((c, i) => [c, r[i]])));
}

function groupBy(items, keyOf) {
  const out = new Map();
  for (const item of items) {
    const key = keyOf(item);
    if (!out.has(key)) out.set(key, []);
    out.get(key).push(item);
  }
  return out;
}

function pad(n) { return String(n).padStart(2, "0"); }
function hhmm(t) { const d = new Date(t); return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`; }
function stamp(t) {
  const d = new Date(t);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${hhmm(t)}:${pad(d.getUTCSeconds())}`;
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 0.1) return v.toFixed(2);
  return v.toPrecision(2);
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
  if (ticks[0] > lo) ticks.unshift(ticks[0] - step);
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function timeTicks(lo, hi, count) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440].map((m) => m * 60000);
  const step = steps.find((s) => (hi - lo) / s <= count) || steps[steps.length - 1];
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) ticks.push(t);
  return ticks;
}

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function title(node, text) { el("title", {}, node).textContent = text; return node; }

function legend(container, entries) {
  const div = document.createElement("div");
  div.className = "legend";
  div.innerHTML = entries.map((e) =>
    `<span class="${e.kind || ""}" style="--swatch:${e.color}">${esc(e.name)}</span>`).join("");
  container.appendChild(div);
}

// A line chart: series [{name, color, points: [[t, v]]}], marks (vertical lines)
// [{t, color, text}], dots [{t, v, color, text}].
function lineChart(container, opts) {
  const { series, marks = [], dots = [], height = 220, yFormat = fmt, heading } = opts;
  const box = document.createElement("div");
  container.appendChild(box);
  if (heading) {
    const h = document.createElement("div");
    h.className = "chart-title";
    h.textContent = heading;
    box.appendChild(h);
  }
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    const p = document.createElement("div");
    p.className = "empty";
    p.textContent = "no data yet";
    box.appendChild(p);
    return;
  }
  const width = Math.max(280, box.clientWidth || container.clientWidth || 600);
  const m = { l: 52, r: 12, t: 8, b: 22 };
  const ts = all.map((p) => p[0]).concat(marks.map((k) => k.t), dots.map((d) => d.t));
  const vs = all.map((p) => p[1]).concat(dots.map((d) => d.v));
  const t0 = Math.min(...ts), t1 = Math.max(...ts);
  const yt = niceTicks(Math.min(...vs), Math.max(...vs), 4);
  const y0 = yt[0], y1 = yt[yt.length - 1];
  const x = (t) => m.l + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (width - m.l - m.r);
  const y = (v) => m.t + (1 - (v - y0) / (y1 - y0 || 1)) * (height - m.t - m.b);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, height, role: "img" }, box);
  const grid = el("g", { class: "grid" }, svg);
  for (const v of yt) {
    el("line", { x1: m.l, x2: width - m.r, y1: y(v), y2: y(v) }, grid);
    el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = yFormat(v);
  }
  for (const t of timeTicks(t0, t1, Math.max(3, Math.floor(width / 80)))) {
    el("line", { x1: x(t), x2: x(t), y1: m.t, y2: height - m.b }, grid);
    el("text", { x: x(t), y: height - 6, "text-anchor": "middle" }, svg).textContent = hhmm(t);
  }
  for (const k of marks) {
    title(el("line", { class: k.cls || "alert-mark", x1: x(k.t), x2: x(k.t), y1: m.t, y2: height - m.b,
      stroke: k.color, opacity: k.faint ? 0.45 : 1 }, svg), k.text);
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    const attrs = { class: "series", d, stroke: s.color, "data-name": s.name,
      "data-points": s.points.length };
    if (s.dashed) attrs["stroke-dasharray"] = "5 4";  // an estimate, not a measurement
    title(el("path", attrs, svg), s.name);
  }
  for (const p of dots) {
    title(el("circle", { class: "anomaly", cx: x(p.t), cy: y(p.v), r: 3.5, fill: p.color }, svg), p.text);
  }
  const entries = series.map((s) => ({ name: s.name, color: s.color }));
  legend(box, entries.concat(opts.extraLegend || []));
}

function columns(node, n) {
  // fixed columns before the charts are drawn: each chart measures its own width
  const fit = Math.max(1, Math.min(n, Math.floor((node.clientWidth || 900) / 300)));
  node.style.gridTemplateColumns = `repeat(${fit}, minmax(0, 1fr))`;
}

function renderCtr(data) {
  const node = document.getElementById("ctr-chart");
  node.replaceChildren();
  const byCampaign = groupBy(rows(data.ctr), (r) => r.campaign_id);
  const series = [...byCampaign].map(([name, rs], i) => ({
    name, color: PALETTE[i % PALETTE.length], points: rs.map((r) => [r.t, r.ctr * 100]),
  }));
  const marks = rows(data.ctr_alerts).map((a) => {
    const resolved = a.status === "resolved";
    return {
      t: a.t, color: resolved ? RESOLVED : SEVERITY[a.severity] || SEVERITY.info, faint: resolved,
      text: resolved
        ? `${stamp(a.t)} resolved (was ${a.severity}): ${a.entity} (${a.rule})\n${a.message}`
        : `${stamp(a.t)} ${a.severity} ${a.status}: ${a.entity} (${a.rule})\n${a.message}`,
    };
  });
  const extra = Object.entries(SEVERITY).map(([name, color]) => ({ name: `${name} alert`, color, kind: "dash" }));
  if (marks.some((k) => k.color === RESOLVED)) extra.push({ name: "resolved", color: RESOLVED, kind: "dash" });
  lineChart(node, { series, marks, height: 240, yFormat: (v) => `${fmt(v)}%`,
    extraLegend: marks.length ? extra : [] });
}

function renderSensors(data) {
  const node = document.getElementById("sensor-charts");
  node.replaceChildren();
  const windows = rows(data.sensors);
  const sensors = [...new Set(windows.map((r) => r.sensor_id))].sort();
  const color = (s) => PALETTE[sensors.indexOf(s) % PALETTE.length];
  // the cluster method judges every metric of a sensor together (metric
  // "pressure|temperature|vibration", value = distance / tau): a vertical mark
  // on each of those metrics' charts instead of a dot
  const all = rows(data.anomalies);
  const anomalies = groupBy(all.filter((a) => !a.metric.includes("|")), (a) => a.metric);
  const regimes = all.filter((a) => a.metric.includes("|"));
  const metrics = groupBy(windows, (r) => r.metric);
  columns(node, metrics.size);
  for (const [metric, rs] of metrics) {
    const series = [...groupBy(rs, (r) => r.sensor_id)].map(([sensor, ws]) => ({
      name: sensor, color: color(sensor), points: ws.map((w) => [w.t, w.mean]),
    }));
    const dots = (anomalies.get(metric) || []).map((a) => ({
      t: a.t, v: a.value, color: color(a.sensor_id),
      text: `${stamp(a.t)} ${a.sensor_id} ${metric} = ${fmt(a.value)} (${a.method}, score ${fmt(a.score)})`,
    }));
    const marks = regimes.filter((a) => a.metric.split("|").includes(metric)).map((a) => ({
      t: a.t, color: color(a.sensor_id), cls: "regime-mark",
      text: `${stamp(a.t)} ${a.sensor_id}: unusual operating regime (distance ${fmt(a.value)} x tau)`,
    }));
    const extra = [{ name: "anomaly", color: "#555", kind: "dot" }];
    if (marks.length) extra.push({ name: "regime change", color: "#555", kind: "dash" });
    lineChart(node, { series, dots, marks, heading: metric, height: 200, extraLegend: extra });
  }
  if (!windows.length) node.innerHTML = '<div class="empty">no data yet</div>';
}

function psiColor(psi) {
  // green below 0.1, amber to 0.2, red above (the usual PSI bands)
  const stops = [[0, [232, 245, 233]], [0.1, [255, 224, 130]], [0.2, [244, 143, 97]], [0.5, [183, 28, 28]]];
  const v = Math.max(0, psi);
  for (let i = 1; i < stops.length; i++) {
    const [a, ca] = stops[i - 1], [b, cb] = stops[i];
    if (v <= b) {
      const f = (v - a) / (b - a);
      return `rgb(${ca.map((c, k) => Math.round(c + f * (cb[k] - c))).join(",")})`;
    }
  }
  return "rgb(183,28,28)";
}

function renderDrift(data) {
  const node = document.getElementById("drift-heatmap");
  node.replaceChildren();
  const cells = rows(data.drift);
  if (!cells.length) { node.innerHTML = '<div class="empty">no drift scores yet (warming up)</div>'; return; }
  const labels = [...new Set(cells.map((c) => `${c.model_id} / ${c.feature}`))].sort();
  const times = [...new Set(cells.map((c) => c.t))].sort((a, b) => a - b);
  const width = Math.max(300, node.clientWidth || 500);
  const m = { l: 190, r: 8, t: 6, b: 22 };
  const cw = (width - m.l - m.r) / times.length;
  const ch = 18;
  const height = m.t + m.b + ch * labels.length;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, height }, node);
  labels.forEach((label, i) => {
    el("text", { x: m.l - 6, y: m.t + i * ch + ch / 2 + 4, "text-anchor": "end" }, svg).textContent = label;
  });
  const every = Math.max(1, Math.ceil(60 / cw));
  times.forEach((t, j) => {
    if (j % every === 0) {
      el("text", { x: m.l + j * cw + cw / 2, y: height - 6, "text-anchor": "middle" }, svg).textContent = hhmm(t);
    }
  });
  for (const c of cells) {
    const i = labels.indexOf(`${c.model_id} / ${c.feature}`), j = times.indexOf(c.t);
    title(el("rect", { class: "cell", x: m.l + j * cw + 0.5, y: m.t + i * ch + 0.5, width: Math.max(1, cw - 1),
      height: ch - 1, fill: psiColor(c.psi) }, svg),
    `${c.model_id} / ${c.feature}, window ending ${stamp(c.t)}: PSI ${fmt(c.psi)}`);
    if (cw >= 34) {
      el("text", { class: "cell-label", style: `fill: ${c.psi > 0.3 ? "#fff" : "#1f2430"}`, x: m.l + j * cw + cw / 2, y: m.t + i * ch + ch / 2 + 3.5,
        "text-anchor": "middle" }, svg).textContent = c.psi.toFixed(2);
    }
  }
  legend(node, [["< 0.1", 0.05], ["0.1–0.2", 0.15], ["> 0.2", 0.3], ["≥ 0.5", 0.5]]
    .map(([name, v]) => ({ name: `PSI ${name}`, color: psiColor(v), kind: "dot" })));
}

function renderService(data) {
  const node = document.getElementById("service-charts");
  const errors = document.getElementById("error-chart");
  node.replaceChildren();
  errors.replaceChildren();
  const byModel = groupBy(rows(data.service), (r) => `${r.model_id} v${r.model_version}`);
  columns(node, byModel.size);
  for (const [name, rs] of byModel) {
    const series = QUANTILES.map(([col, label, color]) => ({
      name: label, color, points: rs.map((r) => [r.t, r[col]]),
    }));
    lineChart(node, { series, heading: name, height: 200, yFormat: (v) => `${fmt(v)}` });
  }
  if (!byModel.size) node.innerHTML = '<div class="empty">no data yet</div>';
  const series = [...byModel].map(([name, rs], i) => ({
    name, color: PALETTE[i % PALETTE.length], points: rs.map((r) => [r.t, r.error_rate * 100]),
  }));
  lineChart(errors, { series, height: 200, yFormat: (v) => `${fmt(v)}%` });
}

function renderQuality(data) {
  // one chart per model version: realized accuracy of final windows and the label-free
  // estimate (CBPE) of every window; a regressor's chart shows its MAE instead
  const node = document.getElementById("quality-charts");
  node.replaceChildren();
  const byModel = groupBy(rows(data.quality), (r) => `${r.model_id} v${r.model_version}`);
  columns(node, byModel.size);
  for (const [name, rs] of byModel) {
    const regression = rs.some((r) => r.mae !== null);
    const series = regression
      ? [{ name: "MAE", color: PALETTE[0], points: rs.filter((r) => r.final && r.mae !== null).map((r) => [r.t, r.mae]) }]
      : [
        { name: "realized", color: PALETTE[1], points: rs.filter((r) => r.final && r.accuracy !== null).map((r) => [r.t, r.accuracy * 100]) },
        { name: "estimated", color: PALETTE[2], dashed: true, points: rs.filter((r) => r.estimated_accuracy !== null).map((r) => [r.t, r.estimated_accuracy * 100]) },
      ];
    // each window also as a dot: a version with one final window so far is still seen
    const dots = series.flatMap((sr) => sr.points.map(([t, v]) => ({
      t, v, color: sr.color, text: `${sr.name} ${fmt(v)}${regression ? "" : "%"}`,
    })));
    lineChart(node, { series, dots, heading: name, height: 200,
      yFormat: (v) => regression ? `${fmt(v)}` : `${fmt(v)}%` });
  }
  if (!byModel.size) node.innerHTML = '<div class="empty">no labels yet</div>';
}

// the experiment charts' metrics: [metric, heading, scale, unit]
const EXPERIMENT_METRICS = [["share", "traffic share", 100, "%"],
  ["latency_p99", "p99 latency", 1, " ms"], ["error_rate", "error rate", 100, "%"]];

function alertMark(a) {
  const resolved = a.status === "resolved";
  return {
    t: a.t, color: resolved ? RESOLVED : SEVERITY[a.severity] || SEVERITY.info, faint: resolved,
    text: resolved
      ? `${stamp(a.t)} resolved (was ${a.severity}): ${a.entity} (${a.rule})\n${a.message}`
      : `${stamp(a.t)} ${a.severity} ${a.status}: ${a.entity} (${a.rule})\n${a.message}`,
  };
}

function renderExperiments(data) {
  // one chart per experiment and metric, a line per arm; the experiment's SRM and
  // experiment alerts (entity: the experiment, or experiment/arm) as marks
  const node = document.getElementById("experiment-charts");
  node.replaceChildren();
  const byExperiment = groupBy(rows(data.experiments), (r) => r.experiment);
  const alerts = rows(data.experiment_alerts);
  const charts = [];
  for (const [experiment, rs] of byExperiment) {
    const marks = alerts
      .filter((a) => a.entity === experiment || a.entity.startsWith(`${experiment}/`))
      .map(alertMark);
    for (const [metric, label, scale, unit] of EXPERIMENT_METRICS) {
      const mine = rs.filter((r) => r.metric === metric);
      if (!mine.length) continue;
      const series = [...groupBy(mine, (r) => r.variant)].map(([arm, points], i) => ({
        name: arm, color: PALETTE[i % PALETTE.length], points: points.map((r) => [r.t, r.value * scale]),
      }));
      charts.push({ series, marks, heading: `${experiment}: ${label}`, unit });
    }
  }
  columns(node, charts.length);
  for (const c of charts) {
    lineChart(node, { series: c.series, marks: c.marks, heading: c.heading, height: 200,
      yFormat: (v) => `${fmt(v)}${c.unit}` });
  }
  if (!charts.length) node.innerHTML = '<div class="empty">no experiments yet</div>';
}

function renderAlerts(data) {
  const body = document.querySelector("#alerts-table tbody");
  const alerts = rows(data.alerts);
  // a resolved alert: the green "resolved" badge on a plain row; its severity
  // (kept for routing) stays readable as "was critical"
  const badge = (a) => a.status === "resolved"
    ? `<span class="badge resolved" title="was ${esc(a.severity)}">resolved</span> <span class="was">was ${esc(a.severity)}</span>`
    : `<span class="badge ${esc(a.severity)}">${esc(a.severity)}</span>`;
  const rowClass = (a) => a.status === "resolved" ? "resolved" : `${esc(a.severity)} ${esc(a.status)}`;
  body.innerHTML = alerts.length ? alerts.map((a) => `
    <tr class="${rowClass(a)}">
      <td class="time">${esc(stamp(a.t))}</td>
      <td>${badge(a)}</td>
      <td>${esc(a.status)}</td><td>${esc(a.kind)}</td><td>${esc(a.rule)}</td>
      <td>${esc(a.entity)}</td><td class="num">${esc(fmt(a.value))}</td>
      <td>${esc(a.message)}${causeList(a.causes, true)}</td>
    </tr>`).join("") : '<tr><td colspan="8" class="empty">no alerts</td></tr>';
}

// details.possible_causes: raw JSON objects (alert_id, kind, rule, entity,
// severity, message), strongest first; each shown as kind + entity, its
// sentence on hover
function causeList(raw, compact) {
  const causes = (raw || []).map((text) => {
    try { return JSON.parse(text); } catch (err) { return null; }
  }).filter(Boolean);
  if (!causes.length) return "";
  const items = causes.map((c) => `<span class="cause ${esc(c.severity || "")}" title="${esc(c.message || "")}">${esc(c.kind)} ${esc(c.entity)}</span>`);
  return compact
    ? `<div class="causes">possible causes: ${items.join(", ")}</div>`
    : items.join(" ");
}

function renderCauses(data) {
  const body = document.querySelector("#causes-table tbody");
  const caused = rows(data.caused);
  body.innerHTML = caused.length ? caused.map((a) => `
    <tr class="${esc(a.severity)}">
      <td class="time">${esc(stamp(a.t))}</td>
      <td><span class="badge ${esc(a.severity)}">${esc(a.severity)}</span></td>
      <td>${esc(a.kind)}</td><td>${esc(a.entity)}</td>
      <td>${esc(a.message)}</td>
      <td>${causeList(a.causes, false)}</td>
    </tr>`).join("") : '<tr><td colspan="6" class="empty">no alert with a possible cause</td></tr>';
}

function setStatus(text, error) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(error));
  status.dataset.error = error || "";
}

// The server may ask for a bearer token (STREAMWATCH_WEB_TOKEN): on the first
// 401 the page asks for it once and keeps it in this tab's sessionStorage
// (gone when the tab closes; never in a URL, a cookie or localStorage).
async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { cache: "no-store", headers });
  const state = window.dashboardState;
  if (response.status === 401 && !state.tokenAsked) {
    state.tokenAsked = true;
    sessionStorage.removeItem(TOKEN_KEY);
    const given = window.prompt("This streamwatch server needs its access token (STREAMWATCH_WEB_TOKEN):");
    if (given && given.trim()) {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
      state.tokenAsked = false;  // a wrong token is asked for again, once per 401
      return api(path);
    }
  }
  return response;
}

async function refresh() {
  try {
    const response = await api("/api/dashboard");
    const data = await response.json();
    if (!response.ok || data.error) throw new Error(data.error || `HTTP ${response.status}`);
    renderCtr(data);
    renderSensors(data);
    renderDrift(data);
    renderService(data);
    renderQuality(data);
    renderExperiments(data);
    renderAlerts(data);
    renderCauses(data);
    const state = window.dashboardState;
    state.renders += 1;
    state.lastError = null;
    state.lastData = data;
    setStatus(`updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`, "");
  } catch (err) {
    window.dashboardState.lastError = String(err);
    setStatus(`cannot load data: ${err.message || err} (retrying)`, String(err));
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    const data = window.dashboardState.lastData;
    if (data) {
      renderCtr(data); renderSensors(data); renderDrift(data); renderService(data); renderQuality(data);
      renderExperiments(data);
    }
  }, 200);
});

refresh();
