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
# each site's own intercept (fitted on its training split); "linear-": logistic regression on the tabular
# features through the project's training and federation path; "lr-": scikit-learn's logistic regression.
APPROACHES = (("prevalence", "prevalence only (site's training rate)", "#d8d8d8"),
              ("lr-local", "logistic regression (scikit-learn), local-only", "#c7b9d9"),
              ("lr-pooled", "logistic regression (scikit-learn), pooled", "#9d86bd"),
              ("linear-local", "linear, local-only", "#e0c9a6"), ("linear-fedavg", "linear, FedAvg", "#a0c4e8"),
              ("linear-pooled", "linear, pooled", "#f7c08a"),
              ("local", "local-only", "#bab0ac"), ("fedavg", "FedAvg", "#4c78a8"),
              ("other", "other strategy", "#72b7b2"), ("pooled", "pooled", "#f58518"),
              ("local+b", "local-only + site intercept", "#79706e"),
              ("fedavg+b", "FedAvg + site intercept", "#1f3f66"), ("other+b", "other strategy + site intercept", "#3a7d78"),
              ("pooled+b", "pooled + site intercept", "#a35204"))
MEAN_COL, ALL_COL = "mean of sites", "all (pooled scores)"
PLOTTED = ("prevalence", "lr-pooled", "linear-fedavg", "local", "fedavg", "pooled", "local+b", "fedavg+b", "pooled+b")
N_BOOT = 1000
# The comparisons the report states, each as (a, b, column): a - b with a paired bootstrap interval. Only
# like with like: both or neither with the site intercept, both of one model family (like_for_like).
COMPARISONS = (("fedavg", "local", MEAN_COL), ("fedavg", "pooled", MEAN_COL), ("other", "pooled", MEAN_COL),
               ("pooled", "ceiling", MEAN_COL), ("fedavg", "lr-pooled", MEAN_COL),
               ("linear-fedavg", "linear-local", MEAN_COL), ("linear-fedavg", "linear-pooled", MEAN_COL),
               ("fedavg+b", "local+b", ALL_COL), ("fedavg+b", "pooled+b", ALL_COL), ("other+b", "pooled+b", ALL_COL),
               ("pooled+b", "prevalence", ALL_COL))


def _family(key: str) -> str:
    return "linear" if key.startswith("linear-") else "network" if key in (
        "local", "fedavg", "other", "pooled", "local+b", "fedavg+b", "other+b", "pooled+b") else "reference"


def like_for_like(a: str, b: str) -> None:
    """Raise unless ``a`` and ``b`` get the same treatment: both or neither with the site intercept, and one
    model family (the network, or the linear model); references (ceiling, prevalence, scikit-learn) compare
    with anything, on the column where they mean the same (a per-site rate is the site-intercept treatment)."""
    refs = ("ceiling", "prevalence", "lr-local", "lr-pooled")
    if a in refs or b in refs:
        if "prevalence" in (a, b) and not (a.endswith("+b") or b.endswith("+b")):
            raise ValueError(f"{a} vs {b}: prevalence-only scores are a site rate; compare them with '+ intercept' rows")
        return
    if a.endswith("+b") != b.endswith("+b"):
        raise ValueError(f"{a} vs {b}: one has the site intercept and the other not; compare like with like")
    if _family(a) != _family(b):
        raise ValueError(f"{a} vs {b}: different model families")


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


def _take(p: Predictions, draw: np.ndarray | None) -> Predictions:
    return p if draw is None else Predictions(p.labels[draw], p.probs[draw])


def _score(per_site: dict[str, Predictions], column: str) -> float | None:
    if column == ALL_COL:
        allp = Predictions.concat(list(per_site.values()))
        return roc_auc(allp.labels, allp.probs)
    return _mean_of_sites(per_site)


def paired_difference(doc: dict[str, Any], a: str, b: str, sites: list[str], column: str = MEAN_COL) -> Interval:
    """Mean over runs of score(a) - score(b) on ``sites`` (``column``: the mean of their AUROCs, or one AUROC
    of their pooled scores), with a paired bootstrap: each replicate draws the test patients of every test
    set once and scores both approaches on that same draw."""
    like_for_like(a, b)
    ra, rb = _runs(doc, a), _runs(doc, b)

    def diff(draws: dict[str, dict[str, np.ndarray]] | None) -> float | None:
        vals = []
        for g in ra:
            pick = draws[g] if draws else {}
            for k, run_a in enumerate(ra[g]):
                run_b = rb[g][0 if b == "ceiling" else k]
                sa = _score({s: _take(run_a[s], pick.get(s)) for s in sites}, column)
                sb = _score({s: _take(run_b[s], pick.get(s)) for s in sites}, column)
                if sa is not None and sb is not None:
                    vals.append(sa - sb)
        return float(np.mean(vals)) if vals else None

    point = diff(None)
    if point is None:
        return Interval(None, None, None)
    rng = np.random.default_rng(2)
    reps = []
    for _ in range(N_BOOT):
        draws = {g: {s: rng.integers(0, ra[g][0][s].labels.size, size=ra[g][0][s].labels.size) for s in sites}
                 for g in ra}
        v = diff(draws)
        if v is not None:
            reps.append(v)
    if len(reps) < N_BOOT // 2:
        return Interval(point, None, None)
    return Interval(point, float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975)))


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
    columns = [MEAN_COL, *sites, ALL_COL]
    fig, ax = plt.subplots(figsize=(1.5 * len(columns) + 4.5, 4.4))
    keys = [a for a in _approaches(doc) if a[0] in PLOTTED] + [("ceiling", "ceiling (true probability)", "#54a24b")]
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
    for key, label, color in [a for a in _approaches(doc) if a[0] in PLOTTED] + [
            ("ceiling", "ceiling (true probability)", "#54a24b")]:
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
             f"test folds {', '.join(map(str, cfg.get('folds', [0])))} of {doc.get('n_folds', 4)} (each a held-out test "
             f"set; every fold trains and federates anew without it); "
             f"{cfg['rounds']} rounds x {cfg['epochs']} local epochs ({cfg['rounds'] * cfg['epochs']} epochs for "
             f"every approach, the best of the {cfg['rounds']} rounds kept by validation AUROC). Compute time "
             f"{doc['minutes']:.0f} min in all test sets (consortia reused from earlier runs not counted) on this "
             "machine (2 CPU cores, shared with other work during the runs, no GPU).", "",
             f"Other strategy: **{other['name']}** (`{other['overrides']}`), " + (
                 f"chosen by federated validation AUROC (data seed {other['data_seed']}, test fold "
                 f"{other.get('fold', 0)}, training seed {other['seed']}) among: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                                         for k, v in other["validation_auroc"].items())
                 if other.get("validation_auroc") else other.get("chosen", "given")) + ".", "", "| site | labelled | positive | train | val | test (pos) | test positives in all |",
                 "|---|---|---|---|---|---|---|"]
    for s in sites:
        infos = [d["sites"][s] for d in doc["data"].values()]

        def cell(key: str, infos: list[dict[str, Any]] = infos) -> str:
            return " / ".join(str(i[key]) for i in infos)

        lines.append(f"| {s} | {cell('labelled')} | {cell('positive')} | {cell('train')} | {cell('val')} | "
                     f"{cell('test')} ({cell('test_pos')}) | {sum(i['test_pos'] for i in infos)} |")
    lines += ["", "(Several values: one per test set, i.e. per data seed and test fold; *test positives in all*: "
              "over every test set, what a site's AUROC is judged on.)", "",
              "Test AUROC, mean over runs with 95% bootstrap CI (test patients resampled); the primary column is "
              f"*{MEAN_COL}*:", "",
              f"| approach | {MEAN_COL} | " + " | ".join([*sites, ALL_COL]) + " | Brier (all) |",
              "|---" * (len(sites) + 4) + "|"]
    for key, label, _ in [*_approaches(doc), ("ceiling", "ceiling (true probability)", "")]:
        lines.append(f"| {_label(key, label, other)} | " + " | ".join(rows[key][c].fmt() for c in [MEAN_COL, *sites, ALL_COL])
                     + f" | {rows[key]['brier'].fmt()} |")
    rel = os.path.relpath(auroc_png, md_dir), os.path.relpath(calib_png, md_dir)
    lines += ["", f"![test AUROC per site]({rel[0]})", "", f"![reliability]({rel[1]})", ""]
    smallest = sorted(sites, key=lambda s: cfg["patients"][sites.index(s)])[:2]
    held = {a[0] for a in _approaches(doc)} | {"ceiling"}
    comparisons = [c for c in COMPARISONS if c[0] in held and c[1] in held]
    diffs = {(a, b, col): [paired_difference(doc, a, b, sites, col)]
             + [paired_difference(doc, a, b, [s], col) for s in smallest] for a, b, col in comparisons}
    names = dict((a[0], a[1]) for a in APPROACHES) | {"ceiling": "ceiling"}
    lines += ["Like-for-like differences (a - b, mean over runs, 95% *paired* bootstrap interval: both approaches "
              "scored on the same resampled test patients); the column says which AUROC is compared. Rows with the "
              "site intercept are compared only with rows with it (on the pooled-scores column, the only one it "
              "changes), network rows with network rows, linear with linear:", "",
              f"| a - b | column | all sites | {smallest[0]} | {smallest[1]} |", "|---|---|---|---|---|"]
    for (a, b, col), vals in diffs.items():
        lines.append(f"| {_label(a, names[a], other)} - {_label(b, names[b], other)} | {col} | "
                     + " | ".join(v.fmt() for v in vals) + " |")
    lines += ["", "Targets (issue 19; primary column; a difference 'above 0' means its paired interval is):", ""]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def est(key: str, col: str = MEAN_COL) -> float | None:
        return rows[key][col].estimate

    p_mean, c_mean, f_mean = est("pooled"), est("ceiling"), est("fedavg")
    if p_mean is not None and c_mean is not None:
        lines.append(f"- pooled within 0.05 of the ceiling: {p_mean:.3f} vs {c_mean:.3f}: "
                     f"{verdict(p_mean >= c_mean - 0.05)}.")
    if f_mean is not None and p_mean is not None:
        lines.append(f"- FedAvg >= pooled - 0.02: {f_mean:.3f} vs {p_mean:.3f}: {verdict(f_mean >= p_mean - 0.02)}.")
    if ("fedavg", "local", MEAN_COL) in diffs:
        parts = []
        for where, d in zip(["all sites", *smallest], diffs[("fedavg", "local", MEAN_COL)], strict=True):
            ok = d.estimate is not None and d.estimate >= 0.05 and d.low is not None and d.low > 0
            parts.append(f"{where} {d.fmt()}: {verdict(ok)}")
        lines.append("- FedAvg >= local-only + 0.05 with the paired interval above 0: " + "; ".join(parts) + ".")
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
        "uni-ost exports 1.5 mm CT only). Per site the labelled patients fall into 4 test folds (stratified by "
        "label, a fixed seed); a run holds one fold out as its test set and splits the rest into training and "
        "validation exactly as in a federated run. Every approach of one family trains the same model "
        "(`configs/model`) with the same settings (`configs/training`) from the same initial weights for the same "
        "number of epochs, and keeps the round with the best *validation* AUROC (FedAvg and the other strategy: "
        "federated validation AUROC, `federation.patience` off). Nothing is chosen on the test split.", "",
        "The model's tabular inputs (`cohort/export/tabular.py`) include the two measurements derived at ingest "
        "from each patient's segmentation (calcium volume, membranous septum length; `cohort/ingest/derive.py`), "
        "with a missing indicator where a patient has no segmentation.", "",
        "- **prevalence only**: every test patient scored by their site's positive rate on its training split: no "
        "model. Within a site it ranks nobody (AUROC 0.5); on the pooled-scores column it shows how much of that "
        "column is ranking hospitals by base rate.",
        "- **logistic regression (scikit-learn)**: L2 (C = 1), unweighted, on the standardized tabular features and "
        "their missing indicators; local-only (site statistics) and pooled (consortium statistics). A transparent "
        "reference.",
        "- **linear, local-only / FedAvg / pooled**: the same logistic regression as a model of the project "
        "(`configs/model/linear.yaml`, `training.lr=0.01`, fixed beforehand) trained through exactly the code path "
        "of the network rows below, FedAvg included: like for like among themselves.",
        "- **local-only**: one network per site, its own training split and normalisation statistics. Column "
        f"*{MEAN_COL}* (primary): the mean of the per-site AUROCs (each site's model on its own test split); column "
        f"*{ALL_COL}*: every site's test predictions pooled into one AUROC.",
        "- **FedAvg** and the **other strategy**: the real federation code path (`run_simulation` with the "
        "project's ServerApp and ClientApp: negotiation, agreement, the moments round for consortium-wide "
        "normalisation, Flower's strategy over the agreed sites). Test patients were removed from each site's "
        "export before the runs, and the script checks every site's export for leaked test patients.",
        "- **pooled**: one network on the union of all training splits (centralized; not possible in reality).",
        "- **+ site intercept**: the same model with each site's own logit shift (`fl_client.calibration`), "
        "fitted on that site's training split so that the mean predicted probability equals the site's rate "
        "there; what every site does with the final federated model (`federation.site_calibration`). It leaves "
        "each site's AUROC as it is and changes the pooled-scores column and the Brier score; it is given to "
        "local-only, FedAvg, the other strategy and pooled alike, and '+ intercept' rows are compared only with "
        "each other.",
        "- **ceiling**: the generative model's own true probability (`truth.csv`) as the score.", "",
        "Intervals: 95% percentile bootstrap (1,000 replicates) of the mean over all runs (training seeds x test "
        "sets), resampling the test patients of each test set; they show test-set noise, not training-seed "
        "spread. With one or two positives in a test set a site's AUROC can only take a few values; the "
        "differences table pairs the approaches on the same resampled patients. 'n/a': a test set with one class "
        "only.", ""]
    for doc in docs:
        lines += _section(doc, img_dir, md.parent)
    reading = md.parent / "results-reading.md"
    if reading.exists():
        lines += ["## Reading it", "", f"See [{reading.name}]({reading.name}) (written from these numbers).", ""]
    md.write_text("\n".join(lines), encoding="utf-8")
