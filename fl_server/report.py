"""The coordinator's reports: report.json, a self-contained report.html, label_balance.png, metrics.png."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


def plot_label_balance(report: RunReport, path: Path) -> None:
    """Stacked bars of released positive/negative/unknown labels per site in the agreed subset."""
    subset = report.agreement.rule.subset
    sites, pos, neg, unk, hatch = [], [], [], [], []
    for a in sorted(report.answers, key=lambda a: a.site_id):
        sites.append(a.site_id)
        labels = a.released.labels.get(subset, {}) if a.released else {}
        vals = [labels.get("positive"), labels.get("negative"), labels.get("unknown")]
        hatch.append([v is None for v in vals])
        pos.append(vals[0] or 0)
        neg.append(vals[1] or 0)
        unk.append(vals[2] or 0)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(sites) + 2), 4))
    x = range(len(sites))
    ax.bar(x, neg, label="negative", color="#4c78a8")
    ax.bar(x, pos, bottom=neg, label="positive (pacemaker)", color="#e45756")
    ax.bar(x, unk, bottom=[n + p for n, p in zip(neg, pos, strict=True)], label="unknown", color="#bab0ac")
    for i, flags in enumerate(hatch):
        if any(flags):
            ax.annotate("some cells suppressed", (i, 0), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=7, rotation=90, va="bottom")
    ax.set_xticks(list(x), sites, rotation=20, ha="right")
    ax.set_ylabel("patients (released counts)")
    ax.set_title(f"Label balance per site, subset {subset!r}")
    ax.legend(fontsize=8)
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
    (out / REPORT_JSON).write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n", encoding="utf-8")
    plot_label_balance(report, out / LABEL_BALANCE_PNG)
    if report.rounds:
        plot_metrics(report, out / METRICS_PNG)
    (out / REPORT_HTML).write_text(render_html(report, out), encoding="utf-8")
