"""Does each site's own intercept help the federated model? Measured on VALIDATION splits only.

Reads the federations a ``scripts/results.py`` run left in its work folder (``final_model.npz`` and
``report.json`` of every ``fedavg-s*`` / ``other-s*`` run), fits each site's intercept on its training
split (``fl_client.calibration``, as the site does after the last round) and scores the validation
splits of all sites together, with and without it. Test splits are not read: this is how
``federation.site_calibration: intercept`` was chosen.

    python scripts/results.py --preset judge            # leaves out/results/judge/data-*/fold-*/runs
    python scripts/site_intercept_validation.py --preset judge
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> None:
    import results as R

    from fl_client.evaluation import Predictions, brier_score
    from fl_client.normalization import NormStats
    from fl_client.train import roc_auc
    from fl_server.config import compose_config
    from fl_server.federation import coordinator_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(R.PRESETS), default="judge")
    p.add_argument("--work", type=Path, default=ROOT / "out" / "results", help="scripts/results.py's work folder")
    args = p.parse_args(argv)
    preset = R.PRESETS[args.preset]
    base = R.base_overrides(preset)
    spec_json = coordinator_spec(compose_config(None, base)).to_dict()
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for ds, fold in ((ds, fold) for ds in preset.data_seeds for fold in preset.folds):
        work = args.work / args.preset / f"data-{ds}"
        sites = R.prepare_sites(work / "sites", spec_json, fold)
        for seed in preset.seeds:
            settings = R._settings(compose_config(None, f"{base} seed={seed}"), seed)
            for key in ("fedavg", "other"):
                run = work / f"fold-{fold}" / "runs" / f"{key}-s{seed}"
                report = json.loads((run / "report.json").read_text())
                with np.load(run / "final_model.npz") as npz:
                    weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
                stats = NormStats.from_json(json.dumps(report["training"]["norm_stats"]))
                labels, raw, shifted = [], [], []
                for s in sites:
                    train, val = R._split(s, settings)
                    y, probs = R.predict(weights, s, settings, stats, val)
                    labels += y
                    raw += probs
                    shifted += R.with_site_intercept(weights, s, train, settings, stats, (y, probs))[1]
                y_all = np.asarray(labels, dtype=np.float64)
                before, after = Predictions(y_all, np.asarray(raw)), Predictions(y_all, np.asarray(shifted))
                row = (roc_auc(y_all, before.probs), roc_auc(y_all, after.probs), brier_score(before),
                       brier_score(after))
                rows.setdefault(key, []).append(row)  # type: ignore[arg-type]
                R.log(f"data seed {ds}, fold {fold}, seed {seed}, {key}: validation AUROC all sites {row[0]:.3f} -> {row[1]:.3f}, "
                      f"Brier {row[2]:.3f} -> {row[3]:.3f}")
    print("\napproach | runs | validation AUROC, all sites: without -> with site intercept | Brier: without -> with")
    for key, vals in rows.items():
        m = np.mean(np.asarray(vals, dtype=np.float64), axis=0)
        print(f"{key} | {len(vals)} | {m[0]:.3f} -> {m[1]:.3f} | {m[2]:.3f} -> {m[3]:.3f}")


if __name__ == "__main__":
    main()
