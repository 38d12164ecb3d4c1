"""Benchmark: the cost of the release gate and its differencing ledger per negotiation query, same run.

One synthetic site (written once into --data). A series of ``--queries`` distinct cohort specs (the
default spec with the ECG window's start moved by one day each time, the near-identical questions a
differencing attack asks) is answered twice in one process:

* BASELINE, the path before the gate: ``evaluate`` (counts) + ``release`` under the site policy;
* GATE: ``ReleaseGate.answer_counts`` (checks, patient lists per cell, keyed digests, the ledger check
  against every earlier released cell of similar size, keyed noise, run registry, audit log), with an
  empty ledger at the start, so the last queries compare against everything the first ones released.

Prints median and p95 milliseconds per query, the ratio, the cells the ledger holds at the end and how
many cells it withheld.

    python bench/release_gate.py --patients 300 --queries 60 --data bench-out/gate-site
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_site(data: Path, patients: int, seed: int) -> Path:
    """One synthetic site, ingested once (reused when there); returns its site.yaml."""
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    done = data / ".complete"
    key = {"patients": patients, "seed": seed}
    if not done.exists() or json.loads(done.read_text()) != key:
        shutil.rmtree(data, ignore_errors=True)
        (s,) = synthesize_consortium(data, 1, [patients], seed)
        site = load_site_config(s.site_config)
        ingest_folder(s.raw_dir, site.store_path(), site)
        done.write_text(json.dumps(key))
        (data / "site.path").write_text(str(s.site_config))
    return Path((data / "site.path").read_text())


def specs(n: int) -> list[dict[str, Any]]:
    from fl_server.config import compose_config
    from fl_server.federation import coordinator_spec

    base = coordinator_spec(compose_config()).to_dict()
    out = []
    for i in range(n):
        s = copy.deepcopy(base)
        s["objects"]["ecg"]["within"]["min_days"] = -90 + i
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from cohort.release.cell_ledger import CellLedger
    from cohort.release.disclosure import release
    from cohort.release.gate import ReleaseGate, checked_spec, local_counts, spec_fields
    from cohort.siteconfig import load_site_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("bench-out/gate-site"))
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    site_yaml = build_site(args.data, args.patients, args.seed)
    site = load_site_config(site_yaml)
    shutil.rmtree(site.store_path() / "release", ignore_errors=True)  # an empty ledger and registry
    questions = specs(args.queries)

    baseline, gated, withheld = [], [], 0
    for spec_json in questions:  # baseline first, then the gate on the same specs
        t0 = time.perf_counter()
        spec = checked_spec(site, spec_json)
        release(local_counts(site, spec), site.disclosure, spec_fields=spec_fields(spec_json)).to_json()
        baseline.append(time.perf_counter() - t0)
    gate = ReleaseGate(site, "bench", "bench-run")
    for spec_json in questions:
        t0 = time.perf_counter()
        answer = gate.answer_counts({"spec": spec_json, "requester": "bench"})
        gated.append(time.perf_counter() - t0)
        notes = json.loads(answer.released_json or "{}").get("notes", [])
        withheld += sum(int(n.split(" ")[0]) for n in notes if "withheld: their patients" in n)
    cells = CellLedger(site.store_path(), gate.secret).released_cells("bench")

    def ms(xs: list[float], q: float) -> float:
        return 1000 * (statistics.median(xs) if q == 0.5 else sorted(xs)[int(q * (len(xs) - 1))])

    figures = {"patients": args.patients, "queries": args.queries,
               "baseline_ms_p50": ms(baseline, 0.5), "baseline_ms_p95": ms(baseline, 0.95),
               "gate_ms_p50": ms(gated, 0.5), "gate_ms_p95": ms(gated, 0.95),
               "ratio_p50": statistics.median(gated) / statistics.median(baseline),
               "ledger_cells": cells, "cells_withheld": withheld}
    table = Table(title=f"release gate, {args.patients} patients, {args.queries} near-identical queries")
    for col in ("path", "p50 ms", "p95 ms"):
        table.add_column(col)
    table.add_row("baseline (evaluate + release)", f"{figures['baseline_ms_p50']:.1f}", f"{figures['baseline_ms_p95']:.1f}")
    table.add_row("gate (members + ledger + audit)", f"{figures['gate_ms_p50']:.1f}", f"{figures['gate_ms_p95']:.1f}")
    Console().print(table)
    print(f"ratio (p50): {figures['ratio_p50']:.2f}x; ledger cells at the end: {cells}; "
          f"cells withheld by the ledger: {withheld}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
