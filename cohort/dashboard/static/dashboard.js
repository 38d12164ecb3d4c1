// The cohort dashboard page. Every change is one POST /api/query {state, action}; the server applies
// the action, compiles the spec, evaluates counts and chart data, and answers with the new state,
// which this page renders. The page keeps no cohort logic of its own.
"use strict";

const KIND_TITLES = {CT: "CT series", MR: "MR series", CR: "CR images", DX: "DX images",
  ECG: "ECG waveforms", SEG: "Segmentations (SEG)", SR: "Structured reports"};
const OP_TEXT = {"=": "=", "!=": "≠", "<": "<", "<=": "≤", ">": ">", ">=": "≥", in: "in", contains: "contains", exists: "exists"};
const NO_UNIT = new Set(["", "1", "{count}"]);

let current = null;      // the last answer of the server (state, spec, counts, charts ...)
let busy = false;
let updates = 0;
const queue = [];
const views = new Map(); // chart id -> {view, el, signature}
window.dashboardViews = views; // for debugging in the browser console
let lastBrush = 0;
let brushing = null;     // the histogram a pointer went down on
window.addEventListener("pointerup", () => {
  const active = brushing;
  brushing = null;
  if (active) setTimeout(() => onBrushEnd(active.c, active.view), 0);
});

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function objectTitle(kind, template) {
  return template ? `SR: ${template}` : (KIND_TITLES[kind] || kind);
}

function valueText(v) {
  if (Array.isArray(v)) return "(" + v.map(valueText).join(", ") + ")";
  if (typeof v === "string") return /^[A-Za-z_][\w.-]*$/.test(v) ? v : JSON.stringify(v);
  return String(v);
}

function filterText(f) {
  if (f.op === "exists") return `${f.field} exists`;
  const unit = f.unit ? " " + f.unit : "";
  return `${f.field} ${OP_TEXT[f.op] || f.op} ${valueText(f.value)}${unit}` + (f.item ? `  {${f.item}}` : "");
}

// --- talking to the server ---------------------------------------------------------------------------

async function api(path, body) {
  const opts = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (err) {
    throw new Error(`the dashboard server does not answer (${err.message}); is 'cohort serve' still running?`);
  }
  const text = await resp.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!resp.ok) throw new Error(data && data.error ? data.error : `HTTP ${resp.status}: ${text.slice(0, 200)}`);
  if (data === null) throw new Error(`unexpected answer from ${path}`);
  return data;
}

function setBusy(value) {
  busy = value;
  document.body.dataset.busy = value ? "true" : "false";
  if (value) $("#status").textContent = "updating…";
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

// Run requests one after the other; each one starts from the state the previous one returned.
function request(makeCall) {
  return new Promise((resolve) => {
    queue.push({makeCall, resolve});
    if (!busy) drain();
  });
}

async function drain() {
  while (queue.length) {
    const {makeCall, resolve} = queue.shift();
    setBusy(true);
    const t0 = performance.now();
    try {
      const result = await makeCall();
      showError("");
      await render(result, performance.now() - t0);
      resolve(true);
    } catch (err) {
      showError(err.message);
      $("#status").textContent = "not updated";
      resolve(false);
    }
  }
  setBusy(false);
}

function act(action) {
  return request(() => api("/api/query", {state: current ? current.state : {}, action}));
}

// --- rendering ---------------------------------------------------------------------------------------

async function render(result, ms) {
  current = result;
  updates += 1;
  document.body.dataset.updates = String(updates);
  $("#status").textContent = `updated in ${Math.round(ms)} ms (server ${Math.round(result.elapsed_ms)} ms)`;
  if (result.patients_indexed !== undefined && storeName) $("#store").textContent = `${storeName} · ${result.patients_indexed} patients`;
  checkVersion(served);
  renderCounts(result);
  renderGroups(result.state);
  renderNotices(result.notices || []);
  $("#spec-text").textContent = result.text;
  $("#spec-yaml").textContent = result.yaml;
  try {
    await renderCharts(result);
  } catch (err) {
    showError(`a chart could not be drawn: ${err.message}`);
  }
}

function renderCounts(result) {
  const counts = result.counts;
  $("#count-cohort").textContent = counts.patients;
  const body = $("#subsets tbody");
  body.replaceChildren();
  const rows = [["cohort", counts.patients, null], ...Object.entries(counts.subsets).map(([k, n]) => [k, n, counts.labels[k]])];
  for (const [name, n, lab] of rows) {
    if (name === "cohort" && counts.subsets.cohort !== undefined) continue;
    const l = lab || (counts.labels && counts.labels[name]) || null;
    const bar = el("div", {class: "balance", title: l ? `positive ${l.positive}, negative ${l.negative}, unknown ${l.unknown}` : ""});
    if (l && n > 0) {
      for (const k of ["positive", "negative", "unknown"]) {
        bar.append(el("span", {class: k.slice(0, 3), style: `width:${(100 * l[k]) / n}%`}));
      }
    }
    body.append(el("tr", {"data-subset": name},
      el("td", {}, name), el("td", {class: "n"}, n),
      el("td", {class: "pos"}, l ? l.positive : "–"), el("td", {class: "neg"}, l ? l.negative : "–"),
      el("td", {class: "unk"}, l ? l.unknown : "–"), el("td", {}, bar)));
  }
  const label = result.state.label;
  $("#label-def").textContent = label ?
    `label: ${label.object}.${label.field} — positive ${label.positive.map(valueText).join(", ")}, negative ${label.negative.map(valueText).join(", ")}` :
    "no label defined: counts are all 'unknown'";
}

function renderGroups(state) {
  const box = $("#groups");
  box.replaceChildren();
  if (!state.groups.length && !state.terms.length) {
    box.append(el("p", {class: "muted small"}, "No filter: the cohort is every patient with an indexed object."));
  }
  state.groups.forEach((g) => {
    const same = state.groups.filter((o) => o !== g && o.kind === g.kind && o.template === g.template && o.negated === g.negated);
    const tools = el("span", {class: "tools"},
      ...same.map((o) => el("button", {type: "button", title: `move these filters into ${o.id} (same instance)`,
        onclick: () => act({type: "merge", group: g.id, target: o.id})}, `merge into ${o.id}`)),
      el("button", {type: "button", class: "icon", title: "negate: the patient has no such object",
        "data-action": "negate-group", onclick: () => act({type: "negate_group", group: g.id})}, g.negated ? "NOT ✓" : "NOT"),
      el("button", {type: "button", class: "icon", title: "remove this group", "data-action": "remove-group",
        onclick: () => act({type: "remove_group", group: g.id})}, "×"));
    const head = el("div", {class: "group-head"},
      g.negated ? el("span", {class: "not-badge"}, "NOT") : "",
      el("span", {}, `${g.id}`), el("span", {class: "tag"}, `${objectTitle(g.kind, g.template)} · same instance`),
      tools);
    const node = el("div", {class: "group" + (g.negated ? " negated" : ""), "data-group": g.id}, head);
    if (!g.filters.length) node.append(el("div", {class: "filter"}, el("code", {}, `has a ${objectTitle(g.kind, g.template)} object`)));
    g.filters.forEach((f, i) => {
      node.append(el("div", {class: "filter", "data-filter": filterText(f)},
        el("code", {}, filterText(f)),
        el("span", {class: "tools"},
          g.filters.length > 1 ? el("button", {type: "button", class: "icon", "data-action": "split",
            title: "split into its own group (may then hold on another instance)",
            onclick: () => act({type: "split", group: g.id, index: i})}, "split") : "",
          el("button", {type: "button", class: "icon", "data-action": "negate", title: "negate (patient level)",
            onclick: () => act({type: "negate", group: g.id, index: i})}, "¬"),
          el("button", {type: "button", class: "icon", "data-action": "remove", title: "remove",
            onclick: () => act({type: "remove", group: g.id, index: i})}, "×"))));
    });
    if (g.within) {
      const w = g.within;
      node.append(el("div", {class: "filter"}, el("code", {},
        `within ${w.min_days ?? ""}..${w.max_days ?? ""} days of ${w.of}${w.date_field ? "." + w.date_field : ""}`)));
    }
    box.append(node);
  });
  const terms = $("#terms");
  terms.replaceChildren();
  state.terms.forEach((t, i) => {
    terms.append(el("div", {class: "term"}, el("span", {class: "muted"}, "AND"), el("code", {}, JSON.stringify(t)),
      el("button", {type: "button", class: "icon", title: "remove this condition",
        onclick: () => act({type: "remove_term", index: i})}, "×")));
  });
  const others = Object.keys(state.objects);
  if (others.length) {
    terms.append(el("p", {class: "muted small"}, `other objects (used by label, subsets or the conditions above): ${others.join(", ")}`));
  }
}

function renderNotices(notices) {
  const box = $("#notices");
  box.replaceChildren(...notices.map((n) => el("div", {}, "note: " + n)));
}

// --- charts ------------------------------------------------------------------------------------------

function unitOf(c) { return NO_UNIT.has(c.unit || "") ? null : c.unit; }

function categoryRows(c) {
  return c.bars.map((b, i) => ({i, label: b.label, count: b.count, value: b.value, key: b.key,
    desc: `${b.label}: ${b.count} patients`}));
}

function histogramRows(c) {
  return c.bars.map((b) => ({lo: b.lo, hi: b.hi, label: b.label, count: b.count,
    desc: `${b.label}: ${b.count} patients`}));
}

function categorySpec(c, rows) {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: 230, height: {step: 15}, data: {name: "table", values: rows},
    mark: {type: "bar", cursor: "pointer", color: "#4c78a8"},
    encoding: {
      y: {field: "label", type: "nominal", sort: {field: "count", order: "descending"},
        axis: {title: null, labelLimit: 130}},
      x: {field: "count", type: "quantitative", axis: {title: "patients", tickMinStep: 1, format: "d"}},
      description: {field: "desc"},
      tooltip: [{field: "label", title: c.field}, {field: "count", title: "patients"}],
    },
    config: {view: {stroke: null}},
  };
}

function histogramSpec(c, rows) {
  const first = c.bars.length ? c.bars[0].lo : 0;
  const last = c.bars.length ? c.bars[c.bars.length - 1].hi : 1;
  const isDate = c.value_type === "date";
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    width: 230, height: 100, data: {name: "table", values: rows},
    params: [{name: "brush", select: {type: "interval", encodings: ["x"]}}],
    mark: {type: "bar", cursor: "crosshair", color: "#4c78a8", binSpacing: 1},
    encoding: {
      x: {field: "lo", type: "quantitative", bin: {binned: true}, scale: {domain: [first, last], nice: false, zero: false},
        axis: {title: isDate ? "year" : (unitOf(c) || null), labelFlush: true, ...(isDate ? {format: "d"} : {})}},
      x2: {field: "hi"},
      y: {field: "count", type: "quantitative", axis: {title: null, tickMinStep: 1, format: "d"}},
      description: {field: "desc"},
      tooltip: [{field: "label", title: c.field}, {field: "count", title: "patients"}],
    },
    config: {view: {stroke: null}},
  };
}

function snap(c, a, b) {
  const first = c.bars[0].lo, step = c.bars[0].hi - c.bars[0].lo, n = c.bars.length;
  let i = Math.max(0, Math.floor((a - first) / step + 1e-9));
  let j = Math.min(n, Math.ceil((b - first) / step - 1e-9));
  if (j <= i) j = Math.min(n, i + 1);
  const r = (x) => Number(x.toPrecision(12));
  return [r(first + i * step), r(first + j * step)];
}

function rangeFilters(c, lo, hi) {
  if (c.value_type === "date") {
    return [{field: c.field, op: ">=", value: `${lo}-01-01`}, {field: c.field, op: "<", value: `${hi}-01-01`}];
  }
  const unit = unitOf(c);
  return [{field: c.field, op: ">=", value: lo, unit}, {field: c.field, op: "<", value: hi, unit}];
}

function kindOf(c) { return {kind: c.kind, template: c.template || null}; }

function onCategoryClick(c, datum) {
  if (!datum || datum.key === null || datum.key === undefined) return;
  if (c.value_type === "geometric") return act({type: "add", ...kindOf(c), filters: [{field: c.field, op: "exists"}]});
  return act({type: "add", ...kindOf(c), filters: [{field: c.field, op: "=", value: datum.value}]});
}

function onHistogramClick(c, datum) {
  if (Date.now() - lastBrush < 400 || !datum || datum.lo === undefined) return;
  const [lo, hi] = snap(c, datum.lo, datum.hi);
  return act({type: "add", ...kindOf(c), filters: rangeFilters(c, lo, hi)});
}

function onBrushEnd(c, view) {
  const brush = view.signal("brush");
  const range = brush && brush.lo;
  if (!range || range.length !== 2 || !(Math.abs(range[1] - range[0]) > 0)) return;
  lastBrush = Date.now();
  const [lo, hi] = snap(c, Math.min(...range), Math.max(...range));
  views.delete(c.id); // re-embed after the update: clears the brush
  act({type: "add", ...kindOf(c), filters: rangeFilters(c, lo, hi)});
}

async function drawChart(c, host) {
  const rows = c.type === "histogram" ? histogramRows(c) : categoryRows(c);
  const have = views.get(c.id);
  if (have && have.el.isConnected && have.signature === signature(c)) {
    have.view.data("table", rows);
    await have.view.runAsync();
    return;
  }
  const spec = c.type === "histogram" ? histogramSpec(c, rows) : categorySpec(c, rows);
  host.replaceChildren();
  const result = await vegaEmbed(host, spec, {renderer: "svg", actions: false});
  const view = result.view;
  if (c.type === "histogram") {
    view.addEventListener("click", (_e, item) => onHistogramClick(c, item && item.datum));
    // Vega captures the pointer while brushing, so the release is caught on the window.
    host.addEventListener("pointerdown", () => { brushing = {c, view}; });
  } else {
    view.addEventListener("click", (_e, item) => onCategoryClick(c, item && item.datum));
  }
  views.set(c.id, {view, el: host, signature: signature(c)});
}

function signature(c) {
  return c.type === "histogram" ? `h:${c.bars.length}:${c.bars.length && c.bars[0].lo}` : `c:${c.bars.length}`;
}

function renderCharts(result) {
  const groups = new Map();
  for (const c of result.charts) {
    const key = `${c.kind}:${c.template}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(c);
  }
  const restricted = new Set(result.state.groups.filter((g) => !g.negated).map((g) => `${g.kind}:${g.template || ""}`));
  const host = $("#chart-sections");
  const jobs = [];
  // Kinds the filters restrict come first: their charts show the instances the group matched.
  const ordered = [...groups].sort((a, b) => Number(restricted.has(b[0])) - Number(restricted.has(a[0])));
  for (const [key, charts] of ordered) {
    const id = "section-" + key.replace(/[^A-Za-z0-9_]/g, "_");
    let section = document.getElementById(id);
    if (!section) {
      section = el("div", {class: "section", id},
        el("h2", {}, objectTitle(charts[0].kind, charts[0].template), " ", el("span", {class: "muted small"})),
        el("div", {class: "grid"}));
    }
    host.append(section); // (re)appended in order
    const isRestricted = restricted.has(key);
    section.classList.toggle("restricted", isRestricted);
    section.querySelector("h2 .muted").textContent = isRestricted ?
      "values of the instances the filter group matched" : "values of the cohort's objects of this kind";
    const grid = section.querySelector(".grid");
    for (const c of charts) {
      let box = grid.querySelector(`[data-chart-id="${CSS.escape(c.id)}"]`);
      if (!box) {
        box = el("div", {class: "chart", "data-chart-id": c.id},
          el("div", {class: "chart-title", title: c.description}, c.field, " ",
            el("span", {class: "muted"}, unitOf(c) ? `[${c.unit}]` : "")),
          el("div", {class: "vega"}));
        grid.append(box);
      }
      jobs.push(drawChart(c, box.querySelector(".vega")));
    }
  }
  const objects = {id: "objects", kind: null, field: "object", type: "categories", value_type: "object",
    bars: result.objects.map((o) => ({label: objectTitle(o.kind, o.template), count: o.count, key: `${o.kind}:${o.template}`,
      value: o}))};
  jobs.push(drawObjects(objects));
  return Promise.all(jobs);
}

async function drawObjects(c) {
  const rows = categoryRows(c);
  const have = views.get("objects");
  if (have && have.signature === signature(c)) {
    have.view.data("table", rows);
    await have.view.runAsync();
    return;
  }
  const host = $("#chart-objects");
  const result = await vegaEmbed(host, categorySpec(c, rows), {renderer: "svg", actions: false});
  result.view.addEventListener("click", (_e, item) => {
    const d = item && item.datum;
    if (d && d.value) act({type: "add", kind: d.value.kind, template: d.value.template || null, filters: []});
  });
  views.set("objects", {view: result.view, el: host, signature: signature(c)});
}

// --- side panel actions --------------------------------------------------------------------------------

async function loadSaved() {
  try {
    const data = await api("/api/specs");
    const select = $("#saved");
    select.replaceChildren(el("option", {value: ""}, data.specs.length ? "saved specs…" : "no saved specs"),
      ...data.specs.map((s) => el("option", {value: s}, s)));
  } catch (err) { showError(err.message); }
}

// --- new data: an ingest or reindex published a new index version --------------------------------------

const VERSION_POLL_MS = 2000;
let served = null;     // the index version the server serves now (GET /api/version)
let storeName = "";

function checkVersion(v) {
  if (!v) return;
  served = v;
  const shown = current ? current.index_version : null;
  const fresh = v.version !== null && v.version !== shown;
  const box = $("#new-data");
  box.hidden = !fresh;
  document.body.dataset.indexVersion = shown || "";
  if (fresh) {
    $("#new-data-text").textContent = `The store has new data (index version ${v.number}, ${v.patients} patients` +
      (v.published ? `, written ${v.published}` : "") + "); the counts below are from the previous version.";
  }
}

async function pollVersion() {
  try {
    checkVersion(await api("/api/version"));
  } catch (_) { /* the server may be restarting; the next poll tells */ }
  setTimeout(pollVersion, VERSION_POLL_MS);
}

function refreshCounts() {
  return request(() => current ? api("/api/query", {state: current.state}) : api("/api/initial"));
}

function init() {
  $("#refresh-counts").addEventListener("click", refreshCounts);
  document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
    document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
    $("#spec-text").hidden = tab.dataset.tab !== "text";
    $("#spec-yaml").hidden = tab.dataset.tab !== "yaml";
  }));
  $("#load-source").addEventListener("click", () =>
    request(() => api("/api/text", {text: $("#source").value})));
  $("#load-saved").addEventListener("click", () => {
    const name = $("#saved").value;
    if (name) request(() => api("/api/specs/" + encodeURIComponent(name)));
  });
  $("#save").addEventListener("click", async () => {
    const name = $("#save-name").value.trim();
    const body = {state: current ? current.state : {}, name};
    try {
      let res;
      try {
        res = await api("/api/save", body);
      } catch (err) {
        if (!/exists/.test(err.message) || !window.confirm(err.message + "\n\nOverwrite it?")) throw err;
        res = await api("/api/save", {...body, overwrite: true});
      }
      $("#save-result").textContent = `saved ${res.path}`;
      showError("");
      loadSaved();
    } catch (err) { showError(err.message); }
  });
  $("#export").addEventListener("click", async () => {
    $("#save-result").textContent = "exporting…";
    try {
      const res = await api("/api/export", {state: current ? current.state : {}, name: $("#save-name").value.trim() || "dashboard"});
      $("#save-result").textContent = `exported ${res.patients} patients (${res.with_ct} with CT, ${res.with_ecg} with ECG) to ${res.out}; cohort hash ${res.cohort_hash.slice(0, 12)}…`;
      showError("");
    } catch (err) {
      $("#save-result").textContent = "";
      showError(err.message);
    }
  });
  api("/api/fields").then((f) => {
    storeName = f.store;
    $("#store").textContent = `${f.store} · ${f.patients} patients`;
    if (f.message) showError(f.message);
  }).catch((err) => showError(err.message));
  loadSaved();
  request(() => api("/api/initial"));
  setTimeout(pollVersion, VERSION_POLL_MS);
}

if (typeof vegaEmbed === "undefined") {
  document.addEventListener("DOMContentLoaded", () => showError("the chart library did not load (static/vendor/*.js missing?)"));
} else {
  init();
}
