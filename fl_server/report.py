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

    def to_json(self) -> dict[str, Any]:
        sites = []
        for a in sorted(self.answers, key=lambda a: a.site_id):
            sites.append({"site_id": a.site_id, "status": a.status, "reason": a.reason,
                          "counts": a.released.to_json() if a.released else None})
        return {"cohort": self.cohort_name, "spec": self.spec, "sites": sites,
                "agreement": self.agreement.to_json(), "rounds": self.rounds,
                "training_errors": self.training_errors, "final_weights": self.final_weights,
                "config": self.config}


def _fmt(v: int | None) -> str:
    return "suppressed" if v is None else str(v)


_LABEL_STYLE = (("negative", "negative", "#4c78a8"), ("positive", "positive (pacemaker)", "#e45756"),
                ("unknown", "unknown", "#bab0ac"))


def plot_label_balance(report: RunReport, path: Path) -> None:
    """Stacked bars of released labels per site in the agreed subset.

    A suppressed cell is drawn as a hatched, outlined band of height ``min cell - 1`` and marked
    ``<k``: the coordinator sees that the cell exists below the threshold (possibly zero), never its value.
    """
    subset = report.agreement.rule.subset
    answers = sorted(report.answers, key=lambda a: a.site_id)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(answers) + 2), 4))
    bottoms = [0.0] * len(answers)
    for key, _name, color in _LABEL_STYLE:
        for i, a in enumerate(answers):
            if a.released is None:
                continue
            value = a.released.labels.get(subset, {}).get(key)
            if value is None:
                k = a.released.min_cell_size
                ax.bar(i, k - 1, bottom=bottoms[i], color="none", edgecolor=color, hatch="///", linewidth=1)
                ax.annotate(f"{key} <{k}", (i, bottoms[i] + (k - 1) / 2), ha="center", va="center", fontsize=7)
                bottoms[i] += k - 1
            else:
                ax.bar(i, value, bottom=bottoms[i], color=color)
                bottoms[i] += value
    for i, a in enumerate(answers):
        if a.released is None:
            ax.annotate(a.status, (i, 0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(list(range(len(answers))), [a.site_id for a in answers], rotation=20, ha="right")
    ax.set_ylabel("patients (released counts)")
    ax.set_title(f"Label balance per site, subset {subset!r}")
    handles = [Patch(color=color, label=name) for _, name, color in _LABEL_STYLE]
    handles.append(Patch(facecolor="none", edgecolor="grey", hatch="///", label="suppressed (below min cell)"))
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(report: RunReport, path: Path) -> None:
    """Federated evaluation per round: AUROC and balanced accuracy per site and aggregated."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("auroc", "balanced-accuracy"), strict=True):
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
        ax.set_xlabel("round")
        ax.set_title(metric)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"/>'


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
            r["round"], r.get("train_loss", ""), agg.get("auroc", ""), agg.get("balanced-accuracy", ""),
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
{_img(out / LABEL_BALANCE_PNG)}
<h2>Training (FedAvg)</h2>
<table><tr><th>round</th><th>train loss</th><th>AUROC</th><th>balanced accuracy</th><th>sites</th></tr>
{''.join(round_rows)}</table>
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
