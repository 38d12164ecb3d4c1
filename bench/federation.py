"""Benchmark: federation rounds on Flower's deployment engine on loopback, against a bare round.

For each site count (default 4 and 8): a SuperLink and N SuperNodes started with deploy/compose.yaml's
commands (deploy/local.py, **insecure**: no TLS, no node authentication), then one run of
bench/federation_app.py that times, on the same connected nodes,

* a bare Flower query round (empty handler; three times, the median is the reference),
* the negotiation round (the project's cohort query handler),
* one training round (the project's local training code on every agreed site),
* one federated evaluation round (the project's evaluate handler),

and reports each as seconds and as a ratio to the bare round, plus the training samples/s per site
(samples x epochs / local fit time; the cohort export, done once per cohort, is timed apart).
Every round starts a ClientApp process per node, so the bare round is Flower's floor, not zero.

    python bench/federation.py --sites 4 8 --patients 20 --out bench-out/federation.json

Synthetic sites are written once into --data (reused for every N: the first N sites) with a
disclosure minimum cell of 5 so that 20-patient sites release counts; their cohort exports are
cleared before each N so that every training round includes the same one-time export.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP_MODULE = Path(__file__).resolve().parent / "federation_app.py"
APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedcohort-bench"
version = "0.1.0"
description = "Timed federation rounds for bench/federation.py"
dependencies = []

[tool.flwr.app]
publisher = "fedcohort"

[tool.flwr.app.components]
serverapp = "federation_app:server"
clientapp = "federation_app:client"

[tool.flwr.app.config]
expected-sites = 0
out-file = ""
cohort-name = "pacemaker_tavi"
hydra-overrides = ""
wait-s = 300
bare-rounds = 3
"""


def _load_local():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("deploy_local", ROOT / "deploy" / "local.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_local"] = module
    spec.loader.exec_module(module)
    return module


def write_app(folder: Path) -> Path:
    """The bench's Flower app folder (pyproject + the app module); fedcohort itself comes installed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
    shutil.copy(APP_MODULE, folder / "federation_app.py")
    return folder


def run_once(local: Any, data: Path, sites: list[str], overrides: str, timeout: float) -> dict[str, Any]:
    """One deployment with ``len(sites)`` SuperNodes and one timed bench run; everything stopped after."""
    import tomli_w

    for s in sites:  # the same one-time export in every measured training round
        shutil.rmtree(data / "sites" / s / "store" / "exports", ignore_errors=True)
    state = data / "coordinator" / "state" / "superlink.db"
    state.unlink(missing_ok=True)
    out_file = data / "bench" / f"rounds-{len(sites)}.json"
    out_file.unlink(missing_ok=True)
    with local.LocalDeployment(data, tls=False) as dep, tempfile.TemporaryDirectory(prefix="fedbench-") as tmp:
        t0 = time.perf_counter()
        dep.start_superlink()
        for s in sites:
            dep.start_site(s, allow_unpinned=True)  # the bench's own ClientApp comes in its bundle
        app = write_app(Path(tmp) / "app")
        rc = Path(tmp) / "run-config.toml"
        rc.write_text(tomli_w.dumps({"expected-sites": len(sites), "out-file": str(out_file),
                                     "hydra-overrides": overrides}), encoding="utf-8")
        cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(app), dep.connection(), "--run-config",
               str(rc), "--stream"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=local._env(dep.flwr_home), cwd=dep.coordinator)
        (dep.logs / f"bench-{len(sites)}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"bench run with {len(sites)} sites failed; logs in {dep.logs}:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
        result = json.loads(out_file.read_text(encoding="utf-8"))
        result["startup_s"] = time.perf_counter() - t0
    return result


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    bare = statistics.median(r["bare_round_s"])
    rates = [m["num-examples"] * m["epochs"] / m["fit-s"] for m in r["train_sites"].values() if m["fit-s"] > 0]
    return {
        "sites": r["sites"], "participants": len(r["participants"]),
        "bare_round_s": round(bare, 2), "bare_rounds_s": [round(x, 2) for x in r["bare_round_s"]],
        "negotiation_s": round(r["negotiation_s"], 2), "negotiation_ratio": round(r["negotiation_s"] / bare, 1),
        "train_round_s": round(r["train_round_s"], 2), "train_ratio": round(r["train_round_s"] / bare, 1),
        "evaluate_round_s": round(r["evaluate_round_s"], 2),
        "evaluate_ratio": round(r["evaluate_round_s"] / bare, 1),
        "samples_per_s_per_site": {k: round(m["num-examples"] * m["epochs"] / m["fit-s"], 2)
                                   for k, m in sorted(r["train_sites"].items())},
        "samples_per_s_median": round(statistics.median(rates), 2) if rates else None,
        "train_samples_per_site": {k: int(m["num-examples"]) for k, m in sorted(r["train_sites"].items())},
        "export_s_median": round(statistics.median(m["export-s"] for m in r["train_sites"].values()), 2)
        if r["train_sites"] else None,
        "errors": r["errors"],
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| sites | bare query round (s) | negotiation (s) | ratio | training round (s) | ratio | "
            "evaluation round (s) | ratio | samples/s per site (median; min-max) | export (s, median) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        rates = list(r["samples_per_s_per_site"].values())
        spread = f"{r['samples_per_s_median']} ({min(rates)}-{max(rates)})" if rates else "-"
        lines.append(f"| {r['sites']} | {r['bare_round_s']} | {r['negotiation_s']} | {r['negotiation_ratio']}x | "
                     f"{r['train_round_s']} | {r['train_ratio']}x | {r['evaluate_round_s']} | "
                     f"{r['evaluate_ratio']}x | {spread} | {r['export_s_median']} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, nargs="+", default=[4, 8])
    p.add_argument("--patients", type=int, default=20, help="patients per synthetic site")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="data folder (default: a temporary one)")
    p.add_argument("--overrides", default="agreement.min_cases=5", help="Hydra overrides of the run")
    p.add_argument("--timeout", type=float, default=1500, help="seconds per site count")
    p.add_argument("--out", type=Path, default=Path("bench-out/federation.json"))
    args = p.parse_args(argv)

    for k, v in {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                 "FLWR_TELEMETRY_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)
    data = (args.data or Path(tempfile.mkdtemp(prefix="fedbench-data-"))).resolve()
    os.environ["FLWR_HOME"] = str(data / "coordinator" / "flwr-home")
    local = _load_local()
    names_file = data / "sites.json"
    if names_file.exists():
        names = json.loads(names_file.read_text())
    else:
        t0 = time.perf_counter()
        names = local.prepare_sites(data, max(args.sites), args.patients, seed=args.seed, min_cell_size=5,
                                     pin=None)
        names_file.write_text(json.dumps(names))
        print(f"synthesized and ingested {len(names)} sites x {args.patients} patients in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    if len(names) < max(args.sites):
        raise SystemExit(f"{data} holds {len(names)} sites, fewer than {max(args.sites)}: use another --data")
    rows, raw = [], []
    for n in args.sites:
        r = run_once(local, data, names[:n], args.overrides, args.timeout)
        raw.append(r)
        rows.append(summarize(r))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": rows, "raw": raw, "cpus": os.cpu_count(),
                                    "patients_per_site": args.patients}, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
