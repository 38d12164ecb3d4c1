"""Benchmark: local training throughput per site, with and without the preprocessing cache.

One synthetic site is synthesized and ingested once (reused from --work), its agreed cohort exported
(``configs/cohort/pacemaker_tavi.yaml``, subset ``labelled``). Then ``fl_client.local.fit``, the code a
ClientApp runs per federated round, is called for --rounds rounds in each mode, in this process:

* **baseline**: ``training.preprocess_cache=false``: every round builds an in-memory ``CacheDataset``
  from the NIfTI and ECG files (the fit path before the persistent cache);
* **cache, first round**: ``PersistentDataset`` under the export, empty at the start: the round pays
  for preprocessing once and writes the tensors;
* **cache, later rounds, new process**: the same cache, warm, the in-process datasets forgotten before
  each round (a deployed ClientApp: one process per message): rounds read tensors from disk;
* **cache, later rounds, same process**: the round's datasets kept in memory (a simulation actor).

Per mode: training samples/s (training samples x epochs / the round's wall time, dataset build
included), the share of the round spent in the model (forward + backward + optimizer step, timed
around the step) and the share of the training loop alone. When ``torch.cuda`` is available, the warm
rounds also run on the GPU and the bench reports its utilisation (sampled with nvidia-smi).

    python bench/training.py --patients 120 --rounds 3 --json bench-out/training.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SUBSET = "labelled"
# The cohort both benchmarks train on: thin-slice CTs only (a Hydra override of the shipped spec).
CT_OVERRIDE = "'cohort.objects.ct.where=[{field:slice_thickness,op:\"<=\",value:1.5,unit:mm}]'"


def build_site(work: Path, patients: int, seed: int) -> Any:
    """Synthesize and ingest one site once; returns its SiteConfig."""
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    marker = work / ".complete"
    key = json.dumps({"patients": patients, "seed": seed})
    if not (marker.exists() and marker.read_text() == key):
        if work.exists():
            shutil.rmtree(work)
        (s,) = synthesize_consortium(work, 1, [patients], seed)
        ingest_folder(s.raw_dir, load_site_config(s.site_config).store_path(), load_site_config(s.site_config))
        marker.write_text(key)
    cfg_path = next(work.glob("*/site.yaml"))
    return load_site_config(cfg_path)


class GpuSampler:
    """Samples ``nvidia-smi`` GPU utilisation every 0.2 s while active."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                if out:
                    self.samples.append(float(out[0]))
            except (OSError, subprocess.SubprocessError, ValueError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_rounds(site: Any, spec_json: dict[str, Any], settings: Any, rounds: int, init: list[Any],
               device: str = "cpu", same_process: bool = False) -> list[dict[str, float]]:
    """``rounds`` calls of ``fit`` (the ClientApp's per-round work), each from the previous weights.

    ``same_process=False`` forgets the in-process datasets before every round, as a deployed ClientApp
    (one process per message) does; True keeps them, as a simulation actor does.
    """
    import fl_client.local as local

    weights = init
    out = []
    for _ in range(rounds):
        if not same_process:
            local._DATASETS.clear()
        t0 = time.perf_counter()
        s = replace(settings, training={**settings.training, "device": device})
        weights, stats = local.fit(site, spec_json, SUBSET, s, weights)
        wall = time.perf_counter() - t0
        epochs = int(settings.training["epochs"])
        out.append({"wall_s": wall, "samples": stats.num_samples, "epochs": epochs,
                    "samples_per_s": stats.num_samples * epochs / wall,
                    "step_s": stats.step_seconds, "data_s": stats.data_seconds,
                    "model_share_round": stats.step_seconds / wall, "model_share_loop": stats.model_share})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "bench-out" / "training-site")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from fl_client.data import CACHE_DIR
    from fl_client.local import TrainingSettings, export_dir
    from fl_server.config import compose_config
    from fl_server.federation import coordinator_spec, initial_arrays

    console = Console()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = compose_config(None, f"training.epochs={args.epochs} {CT_OVERRIDE}")
    spec_json = coordinator_spec(cfg).to_dict()
    with console.status("synthesizing and ingesting the site (once)"):
        site = build_site(args.work, args.patients, args.seed)
        export = export_dir(site, spec_json, SUBSET)
    shutil.rmtree(export / CACHE_DIR, ignore_errors=True)
    settings = TrainingSettings(model=cfg["model"], training=cfg["training"], seed=0)
    init = initial_arrays(cfg["model"], 0).to_numpy_ndarrays()
    results: dict[str, list[dict[str, float]]] = {}
    with console.status("baseline: per-round CacheDataset from files"):
        base = replace(settings, training={**settings.training, "preprocess_cache": False})
        results["baseline"] = run_rounds(site, spec_json, base, args.rounds, init)
    with console.status("persistent cache"):
        cached = run_rounds(site, spec_json, settings, args.rounds + 1, init)
    results["cache_first_round"], results["cache_later_new_process"] = cached[:1], cached[1:]
    with console.status("persistent cache, datasets kept in the process"):
        results["cache_later_same_process"] = run_rounds(site, spec_json, settings, args.rounds + 1, init,
                                                         same_process=True)[1:]
    gpu: dict[str, Any] = {"available": torch.cuda.is_available()}
    if gpu["available"]:
        with console.status("persistent cache on the GPU"), GpuSampler() as sampler:
            results["cache_later_gpu"] = run_rounds(site, spec_json, settings, args.rounds + 1, init, "cuda",
                                                    same_process=True)[1:]
        gpu.update(device=torch.cuda.get_device_name(0), utilisation_samples=len(sampler.samples),
                   utilisation_mean=sum(sampler.samples) / len(sampler.samples) if sampler.samples else None,
                   utilisation_max=max(sampler.samples) if sampler.samples else None)

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    base_sps = mean(results["baseline"], "samples_per_s")
    table = Table(title=f"local training per round: {results['baseline'][0]['samples']} training samples x "
                        f"{args.epochs} epochs, {torch.get_num_threads()} threads")
    for col in ("mode", "rounds", "round wall s", "samples/s", "vs baseline", "model share (round)",
                "model share (loop)"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    summary = {}
    for mode, rows in results.items():
        sps = mean(rows, "samples_per_s")
        summary[mode] = {"rounds": len(rows), "wall_s": mean(rows, "wall_s"), "samples_per_s": sps,
                         "ratio_vs_baseline": sps / base_sps, "model_share_round": mean(rows, "model_share_round"),
                         "model_share_loop": mean(rows, "model_share_loop")}
        table.add_row(mode, str(len(rows)), f"{summary[mode]['wall_s']:.2f}", f"{sps:.1f}", f"{sps / base_sps:.1f}x",
                      f"{summary[mode]['model_share_round']:.0%}", f"{summary[mode]['model_share_loop']:.0%}")
    console.print(table)
    console.print(f"GPU: {gpu}" if gpu["available"] else "GPU: none (torch.cuda not available); CPU only")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "rounds": results, "gpu": gpu}, indent=2))


if __name__ == "__main__":
    main()
