"""The coordinator's reports: report.json, a self-contained report.html, label_balance.png, metrics.png."""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cohort.release.consortium import ConsortiumTotals  # noqa: E402
from fl_server.agreement import Agreement, SiteAnswer  # noqa: E402

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
LABEL_BALANCE_PNG = "label_balance.png"
METRICS_PNG = "metrics.png"


@dataclass
class RunReport:
    """Everything the coordinator learns in one run; written after negotiation and after training."""

    cohort_name: str
    spec: dict[str, Any]
    answers: list[SiteAnswer]
    agreement: Agreement
    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: per-site + aggregated metrics
    training_errors: list[dict[str, Any]] = field(default_factory=list)
    final_weights: str | None = None
    training: dict[str, Any] = field(default_factory=dict)  # strategy, best round, normalisation sources
    totals: ConsortiumTotals | None = None  # secure totals over the agreed sites (None: not run)

    def to_json(self) -> dict[str, Any]:
        sites = []
        for a in sorted(self.answers, key=lambda a: a.site_id):
            sites.append({"site_id": a.site_id, "status": a.status, "reason": a.reason,
                          "counts": a.released.to_json() if a.released else None})
        return {"cohort": self.cohort_name, "spec": self.spec, "sites": sites,
                "agreement": self.agreement.to_json(), "rounds": self.rounds,
                "training_errors": self.training_errors, "final_weights": self.final_weights,
                "training": self.training,
                "consortium_totals": self.totals.to_json() if self.totals else None,
                "config": self.config}


def _fmt(v: int | None) -> str:
    return "suppressed" if v is None else str(v)


_LABEL_STYLE = (("negative", "negative", "#4c78a8"), ("positive", "positive (pacemaker)", "#e45756"),
                ("unknown", "unknown", "#bab0ac"))


def plot_label_balance(report: RunReport, path: Path) -> None:
    """Stacked bars of released labels per site in the agreed subset, and the consortium total.

    A suppressed cell is drawn as a hatched, outlined band of height ``min cell - 1`` and marked
    ``<k``: the coordinator sees that the cell exists below the threshold (possibly zero), never its value.
    The right panel (when secure totals ran) is the consortium total from secure aggregation, naming
    the sites it covers and the noise on the cells the sites noised (``±`` its standard deviation).
    """
    subset = report.agreement.rule.subset
    answers = sorted(report.answers, key=lambda a: a.site_id)
    width = max(5, 1.4 * len(answers) + 2)
    if report.totals is not None:
        fig, (ax, ax_total) = plt.subplots(1, 2, figsize=(width + 3, 4.4), width_ratios=[max(1, len(answers)), 1.6])
        _draw_totals(ax_total, report.totals, subset)
    else:
        fig, ax = plt.subplots(figsize=(width, 4))
    _draw_sites(ax, answers, subset)
    handles = [Patch(color=color, label=name) for _, name, color in _LABEL_STYLE]
    handles.append(Patch(facecolor="none", edgecolor="grey", hatch="///",
                         label="suppressed (below min cell, or would reveal one); band height not a count"))
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_cell(ax: Any, x: float, bottom: float, value: int | None, min_cell: int, key: str, color: str) -> float:
    if value is None:
        ax.bar(x, min_cell - 1, bottom=bottom, color="none", edgecolor=color, hatch="///", linewidth=1)
        # Below the minimum cell, or hidden because subtraction would reveal one: the band is not a value.
        ax.annotate(f"{key}: suppressed", (x, bottom + (min_cell - 1) / 2), ha="center", va="center", fontsize=7)
        return bottom + min_cell - 1
    ax.bar(x, value, bottom=bottom, color=color)
    return bottom + value


def _draw_sites(ax: Any, answers: list[SiteAnswer], subset: str) -> None:
    bottoms = [0.0] * len(answers)
    for key, _name, color in _LABEL_STYLE:
        for i, a in enumerate(answers):
            if a.released is not None:
                bottoms[i] = _draw_cell(ax, i, bottoms[i], a.released.labels.get(subset, {}).get(key),
                                        a.released.min_cell_size, key, color)
    for i, a in enumerate(answers):
        if a.released is None:
            ax.annotate(a.status, (i, 0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(list(range(len(answers))), [a.site_id for a in answers], rotation=20, ha="right")
    ax.set_ylabel("patients (released counts)")
    ax.set_title(f"Label balance per site, subset {subset!r}")


def _draw_totals(ax: Any, totals: ConsortiumTotals, subset: str) -> None:
    ax.set_xticks([0], ["consortium"])
    ax.set_title("Consortium total\n(secure aggregation)", fontsize=10)
    if not totals.released:
        ax.annotate(f"not released:\n{totals.reason}", (0.5, 0.5), xycoords="axes fraction", ha="center",
                    va="center", fontsize=7, wrap=True)
        ax.set_yticks([])
        return
    bottom = 0.0
    labels = totals.labels.get(subset, {})
    for key, _name, color in _LABEL_STYLE:
        value = labels.get(key)
        bottom = _draw_cell(ax, 0, bottom, value, totals.min_cell_size, key, color)
        if value is not None:
            ax.annotate(_total_text(totals, f"label/{subset}/{key}", value), (0, bottom - value / 2),
                        ha="center", va="center", fontsize=8, color="white")
    ax.set_xlim(-0.8, 0.8)
    subset_total = totals.subsets.get(subset)
    if subset_total is not None:
        ax.axhline(subset_total, color="black", linewidth=1, linestyle="--")
        top = max(bottom, subset_total)  # above the stacked bar, so it never covers a cell's label
        ax.annotate(f"{subset_total} patients", (0, top), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=8)
        ax.set_ylim(0, max(ax.get_ylim()[1], top * 1.12))
    sites = "\n".join(totals.contributors)
    dropped = f"\ndropped: {', '.join(totals.dropped)}" if totals.dropped else ""
    noise = (f"\nnoise sd {totals.noise['sd']:g} (epsilon {totals.noise['epsilon']:g})" if totals.noise else "")
    ax.set_xlabel(f"{len(totals.contributors)} sites:\n{sites}{dropped}{noise}", fontsize=7)


def _total_text(totals: ConsortiumTotals, cell: str, value: int | None) -> str:
    """A consortium total as shown: the number, with the noise's standard deviation when the sites
    noised that cell (not every contributor had released it exactly)."""
    if value is None:
        return "suppressed"
    if totals.noise and cell in totals.noise["cells"]:
        return f"{value} ±{totals.noise['sd']:.1f}"
    return str(value)


def plot_metrics(report: RunReport, path: Path) -> None:
    """Federated evaluation per round: AUROC, balanced accuracy and validation loss per site and aggregated.

    A site sends a metric only when the counts behind it meet its minimum cell (the release gate); a
    panel without any value says so instead of staying empty.
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes, ("auroc", "balanced-accuracy", "loss"), strict=True):
        per_site: dict[str, list[tuple[int, float]]] = {}
        agg = []
        for r in report.rounds:
            for site, m in r.get("evaluate", {}).items():
                if m.get(metric) is not None:
                    per_site.setdefault(site, []).append((r["round"], m[metric]))
            if r.get("aggregated", {}).get(metric) is not None:
                agg.append((r["round"], r["aggregated"][metric]))
        for site, pts in sorted(per_site.items()):
            ax.plot(*zip(*pts, strict=True), marker="o", alpha=0.6, label=site)
        if agg:
            ax.plot(*zip(*agg, strict=True), marker="s", color="black", linewidth=2, label="weighted mean")
        if not per_site and not agg:
            ax.text(0.5, 0.5, "withheld at every site:\nits counts are below\nthe minimum cell", ha="center",
                    va="center", transform=ax.transAxes, color="#666")
        ax.set_xlabel("round")
        ax.set_title("validation loss" if metric == "loss" else metric)
        if metric != "loss":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
            break
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"/>'


def _totals_html(report: RunReport) -> str:
    """The consortium totals section: exact sums over the contributing sites, or why there are none."""
    t = report.totals
    if t is None:
        return ""
    esc = html.escape
    head = "<h2>Consortium totals (secure aggregation)</h2>"
    rule = report.agreement.consortium
    rule_html = f"<p>Consortium rule: {esc(rule)}</p>" if rule else ""
    declined = "".join(f"<li>{esc(site)}: {esc(why)}</li>" for site, why in sorted(t.declined.items()))
    declined_html = f"<p>Did not join:</p><ul>{declined}</ul>" if declined else ""
    if not t.released:
        return f"{head}<p>Not released: {esc(t.reason or '')}</p>{declined_html}{rule_html}"
    rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in (
        name, _total_text(t, f"subset/{name}", n), *(_total_text(t, f"label/{name}/{k}", t.labels.get(name, {}).get(k))
                                                     for k in ("positive", "negative", "unknown"))))
        + "</tr>" for name, n in t.subsets.items())
    notes = "".join(f"<li>{esc(n)}</li>" for n in t.notes)
    noise = (f" Cells not every site had released exactly carry the sites' own noise (distributed discrete "
             f"Laplace, epsilon {t.noise['epsilon']:g}, standard deviation {t.noise['sd']:g}: shown as "
             f"&plusmn;); the others are exact sums of counts the sites had released." if t.noise else
             " Every cell is an exact sum of counts the sites had released.")
    return (f"{head}<p>Sums over {len(t.contributors)} sites ({esc(', '.join(t.contributors))}); no single "
            f"site's counts were seen.{noise} Totals below {t.min_cell_size} are suppressed; at least "
            f"{t.min_sites} sites must contribute.</p>"
            f"<table><tr><th>subset</th><th>patients</th><th>positive</th><th>negative</th><th>unknown</th></tr>"
            f"{rows}</table>{f'<ul>{notes}</ul>' if notes else ''}{declined_html}{rule_html}")


def render_html(report: RunReport, out: Path) -> str:
    """A self-contained HTML page (tables and embedded plots, no external resources)."""
    rows = []
    subset = report.agreement.rule.subset
    decisions = {d.site_id: d for d in report.agreement.decisions}
    for a in sorted(report.answers, key=lambda a: a.site_id):
        rel = a.released
        subsets = ", ".join(f"{k}: {_fmt(v)}" for k, v in rel.subsets.items()) if rel else ""
        labels = rel.labels.get(subset, {}) if rel else {}
        d = decisions.get(a.site_id)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            a.site_id, a.status, subsets, _fmt(labels.get("positive")), _fmt(labels.get("negative")),
            _fmt(labels.get("unknown")), "yes" if d and d.participates else "no", d.reason if d else "")) + "</tr>")
    round_rows = []
    for r in report.rounds:
        agg = r.get("aggregated", {})
        round_rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r["round"], r.get("train_loss", ""), agg.get("loss", "withheld"), agg.get("auroc", "withheld"),
            agg.get("balanced-accuracy", "withheld"),
            ", ".join(sorted(r.get("evaluate", {})))) ) + "</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Cohort run: {html.escape(report.cohort_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:90%}}th{{background:#eee}}</style></head><body>
<h1>Federated cohort run: {html.escape(report.cohort_name)}</h1>
<h2>Negotiation (released counts only)</h2>
<table><tr><th>site</th><th>status</th><th>subsets</th><th>positive</th><th>negative</th><th>unknown</th>
<th>takes part</th><th>why</th></tr>{''.join(rows)}</table>
<p>Agreed subset: <b>{html.escape(subset)}</b>; rule: at least {report.agreement.rule.min_cases} cases
and {report.agreement.rule.min_positives} released positives per site. "suppressed" means below the site's
minimum cell size (zero included).</p>
{_totals_html(report)}
{_img(out / LABEL_BALANCE_PNG)}
<h2>Training (FedAvg)</h2>
<table><tr><th>round</th><th>train loss</th><th>validation loss</th><th>AUROC</th><th>balanced accuracy</th>
<th>sites</th></tr>
{''.join(round_rows)}</table>
<p>"withheld": no site may release that metric (sites send metrics only when the counts behind them, e.g. the
positives and negatives of the validation split, meet their minimum cell; docs/threat-model.md).</p>
{_img(out / METRICS_PNG)}
<h2>Spec</h2><pre>{html.escape(json.dumps(report.spec, indent=2))}</pre>
</body></html>"""


def write_reports(report: RunReport, out: Path) -> None:
    """Write report.json, label_balance.png, metrics.png (when rounds exist) and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_JSON, json.dumps(report.to_json(), indent=2, default=str) + "\n")
    plot_label_balance(report, out / LABEL_BALANCE_PNG)
    if report.rounds:
        plot_metrics(report, out / METRICS_PNG)
    write_atomic(out / REPORT_HTML, render_html(report, out))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, then rename it over ``path``: a reader (the run view) sees
    the old or the new report, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
