"""Render docs/results.md and its figures from the per-preset JSON written by scripts/results.py.

    python scripts/results.py --render-only
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fl_client.evaluation import Interval, Predictions, bootstrap_mean, brier_score, reliability_curve  # noqa: E402
from fl_client.train import roc_auc  # noqa: E402

# Every approach scripts/results.py keeps test predictions for: key, label, colour. "+b": the same model with
# each site's own intercept; local-only models are site-specific already and get none.
APPROACHES = (("local", "local-only", "#bab0ac"), ("fedavg", "FedAvg", "#4c78a8"),
              ("other", "other strategy", "#72b7b2"), ("pooled", "pooled", "#f58518"),
              ("fedavg+b", "FedAvg + site intercept", "#1f3f66"), ("other+b", "other strategy + site intercept", "#3a7d78"),
              ("pooled+b", "pooled + site intercept", "#a35204"))
FEDERATED = ("fedavg", "other", "fedavg+b", "other+b")
MEAN_COL, ALL_COL = "mean of sites", "all (pooled scores)"
N_BOOT = 1000


def _approaches(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The approaches ``doc`` holds predictions for (results written before the site intercept lack it)."""
    first = next(iter(next(iter(doc["data"].values()))["runs"].values()))["predictions"]
    return [a for a in APPROACHES if a[0] in first]


def _label(key: str, label: str, other: dict[str, Any]) -> str:
    return label.replace("other strategy", f"other strategy: {other['name']}") if key.startswith("other") else label


def _pred(pair: list[list[float]]) -> Predictions:
    return Predictions(np.asarray(pair[0], dtype=np.float64), np.asarray(pair[1], dtype=np.float64))


def _runs(doc: dict[str, Any], approach: str) -> dict[str, list[dict[str, Predictions]]]:
    """data seed -> per training seed: site -> predictions (the ceiling has one 'run' per data seed)."""
    out = {}
    for ds, d in doc["data"].items():
        if approach == "ceiling":
            out[ds] = [{s: _pred(v) for s, v in d["truth"].items()}]
        else:
            out[ds] = [{s: _pred(v) for s, v in r["predictions"][approach].items()} for r in d["runs"].values()]
    return out


def _mean_of_sites(per_site: dict[str, Predictions]) -> float | None:
    vals = [v for v in (roc_auc(p.labels, p.probs) for p in per_site.values()) if v is not None]
    return float(np.mean(vals)) if vals else None


def _site_mean_interval(runs: dict[str, list[dict[str, Predictions]]], sites: list[str]) -> Interval:
    """Mean over runs of the mean per-site AUROC; bootstrap resamples each site's test patients."""
    point = [_mean_of_sites(r) for g in runs.values() for r in g]
    defined = [v for v in point if v is not None]
    if not defined:
        return Interval(None, None, None)
    rng = np.random.default_rng(1)
    reps = []
    for _ in range(N_BOOT):
        vals = []
        for g in runs.values():
            draws = {s: rng.integers(0, g[0][s].labels.size, size=g[0][s].labels.size) for s in sites}
            vals += [_mean_of_sites({s: Predictions(r[s].labels[draws[s]], r[s].probs[draws[s]]) for s in sites})
                     for r in g]
        vals_d = [v for v in vals if v is not None]
        if vals_d:
            reps.append(float(np.mean(vals_d)))
    return Interval(float(np.mean(defined)), float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975)))


def table(doc: dict[str, Any]) -> dict[str, dict[str, Interval]]:
    """approach -> column -> AUROC interval; plus 'brier' per approach on all test patients."""
    sites = list(next(iter(doc["data"].values()))["sites"])
    out: dict[str, dict[str, Interval]] = {}
    for key in [a[0] for a in _approaches(doc)] + ["ceiling"]:
        runs = _runs(doc, key)
        row = {s: bootstrap_mean([[r[s] for r in g] for g in runs.values()], n_boot=N_BOOT) for s in sites}
        row[MEAN_COL] = _site_mean_interval(runs, sites)
        pooled = [[Predictions.concat([r[s] for s in sites]) for r in g] for g in runs.values()]
        row[ALL_COL] = bootstrap_mean(pooled, n_boot=N_BOOT)
        row["brier"] = bootstrap_mean(pooled, statistic=brier_score, n_boot=N_BOOT)
        out[key] = row
    return out


def plot_auroc(doc: dict[str, Any], rows: dict[str, dict[str, Interval]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = list(next(iter(doc["data"].values()))["sites"])
    columns = [*sites, MEAN_COL, ALL_COL]
    fig, ax = plt.subplots(figsize=(1.5 * len(columns) + 4.5, 4.4))
    keys = [*_approaches(doc), ("ceiling", "ceiling (true probability)", "#54a24b")]
    width = 0.8 / len(keys)
    x = np.arange(len(columns))
    for k, (key, label, color) in enumerate(keys):
        est = [rows[key][c].estimate for c in columns]
        lo = [rows[key][c].low for c in columns]
        hi = [rows[key][c].high for c in columns]
        means = np.array([np.nan if v is None else v for v in est])
        err = np.array([[0 if (m is None or low is None) else m - low for m, low in zip(est, lo, strict=True)],
                        [0 if (m is None or h is None) else h - m for m, h in zip(est, hi, strict=True)]])
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, means, width, yerr=err, label=label, color=color, capsize=2)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [c.replace(" (", "\n(") for c in columns], fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("test AUROC")
    ax.set_title(f"{doc['preset']} preset: held-out test AUROC (mean over runs, 95% bootstrap CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(doc: dict[str, Any], rows: dict[str, dict[str, Interval]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":", label="perfect calibration")
    for key, label, color in [*_approaches(doc), ("ceiling", "ceiling (true probability)", "#54a24b")]:
        runs = _runs(doc, key)
        allp = Predictions.concat([Predictions.concat(list(r.values())) for g in runs.values() for r in g])
        mp, rate, _ = reliability_curve(allp, bins=10)
        ax.plot(mp, rate, marker="o", markersize=3, color=color,
                label=f"{label} (Brier {rows[key]['brier'].estimate:.3f})")
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed pacemaker rate")
    ax.set_title(f"{doc['preset']} preset: reliability, all test patients and runs", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _section(doc: dict[str, Any], img_dir: Path, md_dir: Path) -> list[str]:
    cfg = doc["config"]
    rows = table(doc)
    auroc_png, calib_png = img_dir / f"results-{doc['preset']}.png", img_dir / f"calibration-{doc['preset']}.png"
    plot_auroc(doc, rows, auroc_png)
    plot_calibration(doc, rows, calib_png)
    first = next(iter(doc["data"].values()))
    sites = list(first["sites"])
    other = doc["other_strategy"]
    lines = [f"## Preset `{doc['preset']}`", "", f"    {doc['command']}", "",
             f"{len(sites)} sites with {', '.join(map(str, cfg['patients']))} patients; data seeds "
             f"{', '.join(map(str, cfg['data_seeds']))}; training seeds {', '.join(map(str, cfg['seeds']))}; "
             f"{cfg['rounds']} rounds x {cfg['epochs']} local epochs ({cfg['rounds'] * cfg['epochs']} epochs for "
             f"every approach, the best of the {cfg['rounds']} rounds kept by validation AUROC). Compute time "
             f"{doc['minutes']:.0f} min in all data seeds (consortia reused from earlier runs not counted) on this "
             "machine (2 CPU cores, shared with other work during the runs, no GPU).", "",
             f"Other strategy: **{other['name']}** (`{other['overrides']}`), " + (
                 f"chosen by federated validation AUROC (data seed {other['data_seed']}, training seed "
                 f"{other['seed']}) among: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                                         for k, v in other["validation_auroc"].items())
                 if other.get("validation_auroc") else other.get("chosen", "given")) + ".", "", "| site | labelled | positive | train | val | test (pos) |", "|---|---|---|---|---|---|"]
    for s in sites:
        infos = [d["sites"][s] for d in doc["data"].values()]

        def cell(key: str, infos: list[dict[str, Any]] = infos) -> str:
            return " / ".join(str(i[key]) for i in infos)

        lines.append(f"| {s} | {cell('labelled')} | {cell('positive')} | {cell('train')} | {cell('val')} | "
                     f"{cell('test')} ({cell('test_pos')}) |")
    lines += ["", "(Several values: one per data seed.)", "",
              "Test AUROC, mean over runs with 95% bootstrap CI (test patients resampled):", "",
              "| approach | " + " | ".join([*sites, MEAN_COL, ALL_COL]) + " | Brier (all) |",
              "|---" * (len(sites) + 4) + "|"]
    for key, label, _ in [*_approaches(doc), ("ceiling", "ceiling (true probability)", "")]:
        lines.append(f"| {_label(key, label, other)} | " + " | ".join(rows[key][c].fmt() for c in [*sites, MEAN_COL, ALL_COL])
                     + f" | {rows[key]['brier'].fmt()} |")
    rel = os.path.relpath(auroc_png, md_dir), os.path.relpath(calib_png, md_dir)
    lines += ["", f"![test AUROC per site]({rel[0]})", "", f"![reliability]({rel[1]})", ""]
    smallest = sorted(sites, key=lambda s: cfg["patients"][sites.index(s)])[:2]
    checks = []
    for fed_key in [k for k in FEDERATED if k in rows]:
        f_all, p_all = rows[fed_key][ALL_COL].estimate, rows["pooled"][ALL_COL].estimate
        ok_pool = f_all is not None and p_all is not None and f_all >= p_all - 0.02
        small_ok = []
        for s in smallest:
            fv, lv = rows[fed_key][s].estimate, rows["local"][s].estimate
            small_ok.append((s, fv, lv, fv is not None and lv is not None and fv >= lv + 0.05))
        checks.append((fed_key, f_all, p_all, ok_pool, small_ok))
    lines += ["Targets (federated >= pooled - 0.02 on all test patients; >= local-only + 0.05 at the two "
              "smallest sites):", ""]
    for fed_key, f_all, p_all, ok_pool, small_ok in checks:
        name = _label(fed_key, dict((a[0], a[1]) for a in APPROACHES)[fed_key], other)
        parts = [f"all {f_all:.3f} vs pooled {p_all:.3f}: {'met' if ok_pool else 'NOT met'}"]
        for s, fv, lv, ok in small_ok:
            fs = "n/a" if fv is None else f"{fv:.3f}"
            ls = "n/a" if lv is None else f"{lv:.3f}"
            parts.append(f"{s} {fs} vs local {ls}: {'met' if ok else 'NOT met'}")
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    lines.append("")
    return lines


def render(json_dir: Path, md: Path, img_dir: Path) -> None:
    docs = [json.loads(p.read_text()) for p in sorted(json_dir.glob("*.json"))]
    docs.sort(key=lambda d: ("small", "large").index(d["preset"]) if d["preset"] in ("small", "large") else 9)
    lines = [
        "# Results: is federation worth it?", "",
        "Generated by `scripts/results.py` (one run per preset; `--render-only` re-renders from "
        "`docs/results/<preset>.json`); do not edit by hand. Reading notes: `docs/results-reading.md`.", "",
        "Cohort `pacemaker_tavi`, subset `labelled` (CT + ECG + known label), CT slice thickness <= "
        f"{docs[0]['ct_max_mm'] if docs else 1.5} mm (the mission spec asks for <= 1.0 mm; the synthetic site "
        "uni-ost exports 1.5 mm CT only). Per site a held-out test split (25% per label, a fixed seed) is kept "
        "apart; the rest is split into training and validation exactly as in a federated run. Every approach "
        "trains the same model (`configs/model`) with the same settings (`configs/training`) from the same "
        "initial weights for the same number of epochs, and keeps the round with the best *validation* AUROC "
        "(FedAvg and the other strategy: federated validation AUROC, `federation.patience` off). Nothing is "
        "chosen on the test split.", "",
        "- **local-only**: one model per site, its own training split and normalisation statistics. Column "
        f"*{MEAN_COL}*: the mean of the per-site AUROCs (each site's model on its own test split); column "
        f"*{ALL_COL}*: every site's test predictions from its own model pooled into one AUROC. Both are shown "
        "for every approach so they compare like with like.",
        "- **FedAvg** and the **other strategy**: the real federation code path (`run_simulation` with the "
        "project's ServerApp and ClientApp: negotiation, agreement, the moments round for consortium-wide "
        "normalisation, Flower's strategy over the agreed sites). Test patients were removed from each site's "
        "export before the runs; every round's `num-examples` is checked against the training split size.",
        "- **pooled**: one model on the union of all training splits (centralized; not possible in reality).",
        "- **+ site intercept**: the same model with each site's own logit shift (`fl_client.calibration`), "
        "fitted on that site's training split so that the mean predicted probability equals the site's rate "
        "there; what every site does with the final federated model (`federation.site_calibration`). It leaves "
        "each site's AUROC as it is and changes the pooled-scores column and the Brier score. Local-only models "
        "are site-specific already and get none.",
        "- **ceiling**: the generative model's own true probability (`truth.csv`) as the score.", "",
        "Intervals: 95% percentile bootstrap (1,000 replicates) of the mean over all runs (training seeds x data "
        "seeds), resampling the test patients of each test set; they show test-set noise, not training-seed "
        "spread. With one or two positives in a test split (see the site tables) a site's AUROC can only take a "
        "few values and its interval is not meaningful (e.g. [1.000, 1.000]); read the pooled columns there. "
        "'n/a': a test split with one class only.", ""]
    for doc in docs:
        lines += _section(doc, img_dir, md.parent)
    reading = md.parent / "results-reading.md"
    if reading.exists():
        lines += ["## Reading it", "", f"See [{reading.name}]({reading.name}) (written from these numbers).", ""]
    md.write_text("\n".join(lines), encoding="utf-8")
