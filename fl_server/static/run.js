// The coordinator's run view: polls GET /api/run (a summary of report.json, rewritten atomically by the
// run) and redraws when the report changed. Only released counts are ever in the report.
"use strict";

const POLL_MS = 2000;
const METRICS = ["auroc", "balanced-accuracy", "loss"];
const LABELS = [["negative", "#4c78a8"], ["positive", "#e45756"], ["unknown", "#bab0ac"]];
let version = null;
let renders = 0;

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function cell(v) {
  return v === null || v === undefined ? el("span", {class: "suppressed"}, "suppressed") : String(v);
}

function num(v, digits = 3) {
  return typeof v === "number" ? v.toFixed(digits) : "–";
}

function showError(message) {
  $("#error").textContent = message || "";
  $("#error").hidden = !message;
}

function renderSites(r) {
  const rule = r.rule || {};
  $("#rule").textContent = r.subset ?
    `Agreed subset ${r.subset}: at least ${rule.min_cases ?? "?"} cases` +
    (rule.min_positives ? ` and ${rule.min_positives} released positives` : "") + " per site. " +
    `Training sites: ${(r.participating_sites || []).join(", ") || "none"}` +
    (r.released_cases_total !== undefined && r.released_cases_total !== null ? ` (${r.released_cases_total} released cases).` : ".") :
    "No agreement yet.";
  const body = $("#sites tbody");
  body.replaceChildren();
  for (const s of r.sites) {
    const l = s.labels || {};
    const errs = (s.errors || []).map((e) => `round ${e.round ?? "?"} ${e.phase ?? ""}: ${e.reason ?? ""}`);
    body.append(el("tr", {"data-site": s.site_id, "data-status": s.status || ""},
      el("td", {}, s.site_id), el("td", {class: `text status-${s.status}`}, s.status || "–"),
      el("td", {}, s.labels ? cell(s.cases) : "–"),
      el("td", {}, s.labels ? cell(l.positive) : "–"), el("td", {}, s.labels ? cell(l.negative) : "–"),
      el("td", {}, s.labels ? cell(l.unknown) : "–"), el("td", {}, s.min_cell_size ?? "–"),
      el("td", {class: "text"}, s.participates === true ? "yes" : s.participates === false ? "no" : "–"),
      el("td", {class: "why"}, s.decision || s.reason || ""),
      el("td", {class: "errs"}, errs.join("; "))));
  }
}

function balanceData(r) {
  const rows = [];
  const add = (name, labels, minCell) => {
    for (const [key] of LABELS) {
      const v = labels[key];
      const k = minCell || 1;
      rows.push({site: name, label: key, value: v === null ? k - 1 : v, suppressed: v === null,
        shown: v === null ? `<${k} (suppressed)` : String(v)});
    }
  };
  for (const s of r.sites) if (s.labels) add(s.site_id, s.labels, s.min_cell_size);
  const t = r.secure_totals;
  if (t && t.labels) add("all (secure total)", t.labels, t.min_cell_size);
  return rows;
}

function renderSecure(r) {
  const t = r.secure_totals;
  $("#secure").hidden = !t;
  if (!t) return;
  const l = t.labels || {};
  $("#secure-summary").textContent = t.status === "released" || t.labels ?
    `${t.status || ""}: ${t.cases ?? "?"} cases in ${r.subset} (positive ${l.positive ?? "suppressed"}, negative ` +
    `${l.negative ?? "suppressed"}, unknown ${l.unknown ?? "suppressed"}) over ${(t.contributors || []).join(", ")}` +
    (t.noise ? `; noised cells ±${t.noise.sd} (sd; epsilon ${t.noise.epsilon})` : "") +
    ((t.dropped || []).length ? `; dropped out: ${t.dropped.join(", ")}` : "") :
    `${t.status || "not released"}${t.reason ? ": " + t.reason : ""}`;
  $("#secure-totals").textContent = JSON.stringify(t.value, null, 2);
}

function metricsData(r) {
  const rows = [];
  for (const round of r.rounds) {
    for (const m of METRICS) {
      for (const [site, vals] of Object.entries(round.evaluate || {})) {
        if (typeof vals[m] === "number") rows.push({round: round.round, metric: m, series: site, value: vals[m], mean: false});
      }
      const agg = (round.aggregated || {})[m];
      if (typeof agg === "number") rows.push({round: round.round, metric: m, series: "weighted mean", value: agg, mean: true});
    }
  }
  return rows;
}

async function renderCharts(r) {
  const balance = balanceData(r);
  if (balance.length) {
    await vegaEmbed("#chart-balance", {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json", width: "container", height: 220,
      data: {values: balance},
      mark: {type: "bar", stroke: "#555", strokeWidth: 0.5},
      encoding: {
        x: {field: "site", type: "nominal", title: null, axis: {labelAngle: -20}},
        y: {field: "value", type: "quantitative", stack: "zero", title: "patients (released counts)"},
        color: {field: "label", type: "nominal", scale: {domain: LABELS.map((l) => l[0]), range: LABELS.map((l) => l[1])}},
        fillOpacity: {condition: {test: "datum.suppressed", value: 0.2}, value: 1},
        strokeDash: {condition: {test: "datum.suppressed", value: [3, 2]}, value: [1, 0]},
        tooltip: [{field: "site"}, {field: "label"}, {field: "shown", title: "released"}],
      },
    }, {actions: false, renderer: "svg"});
  } else {
    $("#chart-balance").replaceChildren(el("p", {class: "muted small"}, "no released label counts yet"));
  }
  const metrics = metricsData(r);
  if (metrics.length) {
    await vegaEmbed("#chart-metrics", {
      $schema: "https://vega.github.io/schema/vega-lite/v6.json",
      data: {values: metrics},
      facet: {column: {field: "metric", type: "nominal", title: null}},
      resolve: {scale: {y: "independent"}},
      spec: {
        width: 200, height: 180,
        mark: {type: "line", point: true},
        encoding: {
          x: {field: "round", type: "ordinal"},
          y: {field: "value", type: "quantitative", scale: {zero: true}},
          color: {field: "series", type: "nominal", title: "site"},
          strokeWidth: {condition: {test: "datum.mean", value: 3}, value: 1.5},
          tooltip: [{field: "series"}, {field: "round"}, {field: "value", format: ".3f"}],
        },
      },
    }, {actions: false, renderer: "svg"});
  } else {
    const evaluated = (r.rounds || []).some((round) => Object.keys(round.evaluate || {}).length);
    $("#chart-metrics").replaceChildren(el("p", {class: "muted small"}, evaluated
      ? "validation metrics withheld at every site: the counts behind them are below the minimum cell"
      : r.planned_rounds ? `no evaluated round yet (${r.planned_rounds} planned)` : "no evaluated round yet"));
  }
}

function renderRounds(r) {
  const body = $("#rounds tbody");
  body.replaceChildren();
  for (const round of r.rounds) {
    const agg = round.aggregated || {};
    const perSite = Object.entries(round.evaluate || {}).map(([s, m]) => `${s}: ${num(m.auroc)}`).join(", ");
    body.append(el("tr", {"data-round": round.round},
      el("td", {}, round.round), el("td", {}, num(round.train_loss, 4)), el("td", {}, num(agg.auroc)),
      el("td", {}, num(agg["balanced-accuracy"])), el("td", {class: "text"}, Object.keys(round.evaluate || {}).sort().join(", ")),
      el("td", {class: "text small"}, perSite)));
  }
  const t = r.training || {};
  const facts = Object.entries(t).filter(([, v]) => v === null || typeof v !== "object").map(([k, v]) => `${k}: ${v}`);
  if (r.final_weights) facts.push(`final weights: ${r.final_weights}`);
  const delivered = Object.values(t.final_model_sites || {});
  if (delivered.length) facts.push(`final model stored at ${delivered.filter((d) => d.status === "stored").length} of ${delivered.length} sites`);
  $("#training").textContent = facts.join(" · ");
  const errors = $("#errors");
  errors.replaceChildren(...(r.errors.length ? r.errors.map((e) =>
    el("li", {}, `round ${e.round ?? "?"} ${e.phase ?? ""} (${e.site ?? "*"}): ${e.reason ?? ""}`)) : [el("li", {class: "muted"}, "none")]));
  renderSecure(r);
  const more = Object.keys(r.more || {});
  $("#more-panel").hidden = !more.length;
  if (more.length) $("#more").textContent = JSON.stringify(r.more, null, 2);
}

async function poll() {
  try {
    const resp = await fetch("/api/run", {cache: "no-store"});
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
    $("#run-dir").textContent = data.run_dir;
    $("#status").textContent = `checked ${new Date().toLocaleTimeString()}`;
    if (!data.report) {
      $("#phase").textContent = data.message;
    } else if (data.version !== version) {
      const r = data.report;
      $("#cohort").textContent = r.cohort ? `· cohort ${r.cohort}` : "";
      $("#phase").textContent = r.phase;
      renderSites(r);
      renderRounds(r);
      await renderCharts(r);
      version = data.version;
      renders += 1;
      document.body.dataset.version = version;
      document.body.dataset.renders = String(renders);
      document.body.dataset.phase = r.phase;
    }
    showError("");
  } catch (err) {
    showError(`the run view server does not answer (${err.message}); is 'fl-server serve' still running?`);
  }
  setTimeout(poll, POLL_MS);
}

if (typeof vegaEmbed === "undefined") {
  showError("the chart library did not load (vendored Vega scripts missing?)");
} else {
  poll();
}
