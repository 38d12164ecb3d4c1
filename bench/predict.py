"""Benchmark: ``fl-client predict`` throughput against the training step, in the same process.

One synthetic site is synthesized and ingested once (``bench/training.py``'s ``build_site``, reused from
--work). In this process, with ``--threads`` torch threads:

1. **training**: ``fl_client.local.fit`` for --rounds rounds with the in-process datasets kept
   (``bench/training.py``'s ``run_rounds``, after a first round that fills the preprocessing cache):
   training samples/s over the model step alone (forward + backward + optimizer) and over the round;
2. the weights are stored as the site's final model with its intercept (``store_final_model``);
3. **predict, first run** (``fl_client.predict.predict_cohort``, the code ``fl-client predict`` runs):
   export of the whole cohort, preprocessing, scoring, one SR per patient, indexing;
4. **predict, again**: every SR already stored (nothing written); its scoring stage reads the warm
   preprocessing cache, as a site re-scoring the same cohort does.

Predictions/s: patients scored / seconds of the scoring stage (inputs from the cache, model forward,
intercept), and end to end (all stages of the first run: patients scored / total seconds).

    python bench/predict.py --patients 120 --threads 2 --json bench-out/predict.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.training import CT_OVERRIDE, SUBSET, build_site, run_rounds  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "bench-out" / "predict-site")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import shutil

    import torch

    from cohort.siteconfig import load_site_config
    from fl_client.final_model import site_model_dir, store_final_model
    from fl_client.local import TrainingSettings
    from fl_client.predict import PREDICTIONS_DIR, predict_cohort
    from fl_server.config import compose_config
    from fl_server.federation import coordinator_spec, initial_arrays

    console = Console()
    torch.set_num_threads(args.threads)
    cfg = compose_config(None, f"training.epochs=1 {CT_OVERRIDE}")
    spec_json = coordinator_spec(cfg).to_dict()
    with console.status("synthesizing and ingesting the site (once), copying it for this run"):
        built = build_site(args.work, args.patients, args.seed)
        # Each run predicts on a fresh copy: an earlier run's SRs would make this one find them all stored.
        run_dir = args.work.with_name(args.work.name + "-run")
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(args.work, run_dir, ignore=shutil.ignore_patterns("raw", "models", PREDICTIONS_DIR))
        site = load_site_config(run_dir / Path(built.source_file).relative_to(args.work.resolve()))
    store = site.store_path()
    settings = TrainingSettings(model=cfg["model"], training={**cfg["training"], "device": "cpu"}, seed=0)
    init = initial_arrays(cfg["model"], 0).to_numpy_ndarrays()
    with console.status("training rounds (first fills the preprocessing cache)"):
        rounds = run_rounds(site, spec_json, settings, args.rounds + 1, init, same_process=True)[1:]
    samples = sum(r["samples"] * r["epochs"] for r in rounds)
    train_step = samples / sum(r["step_s"] for r in rounds)
    train_round = samples / sum(r["wall_s"] for r in rounds)
    training_json = json.dumps({"model": settings.model, "training": settings.training, "seed": 0})
    answer = store_final_model(site, spec_json, SUBSET, training_json, init, None, "intercept", "bench")
    assert answer.digest is not None, answer.reason
    with console.status("predict: first run"):
        t0 = time.perf_counter()
        first = predict_cohort(store)
        first_wall = time.perf_counter() - t0
    with console.status("predict: again (all stored)"):
        again = predict_cohort(store)
    n = len(first.predictions)
    rows: list[tuple[str, float, str]] = [
        ("training: model step (forward + backward + optimizer)", train_step, "training samples/s"),
        ("training: whole round, datasets in memory", train_round, "training samples/s"),
        ("predict: scoring, first run (preprocessing included)", n / first.seconds["score"], "predictions/s"),
        ("predict: scoring, again (warm cache)", n / again.seconds["score"], "predictions/s"),
        ("predict: first run end to end (export, score, write SRs, index)", n / first_wall, "predictions/s"),
        ("predict: writing SRs (first run)", len(first.written) / first.seconds["write"], "SRs/s"),
    ]
    table = Table(title=f"{n} patients scored ({first.patients} in the cohort), {rounds[0]['samples']} training "
                        f"samples, {torch.get_num_threads()} torch threads")
    for col in ("what", "per second", "unit", "vs training step"):
        table.add_column(col)
    for what, rate, unit in rows:
        table.add_row(what, f"{rate:.1f}", unit, f"{rate / train_step:.2f}x")
    console.print(table)
    console.print(f"first run stages (s): {first.seconds}; again: {again.seconds}; model {answer.digest[:16]} in "
                  f"{site_model_dir(site, answer.digest)}")
    if args.json:
        out: dict[str, Any] = {"patients": args.patients, "threads": torch.get_num_threads(), "scored": n,
                               "rates": {what: rate for what, rate, _ in rows}, "training_rounds": rounds,
                               "first": first.seconds, "again": again.seconds, "first_wall_s": first_wall}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
