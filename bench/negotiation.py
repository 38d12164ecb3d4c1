"""Benchmark: negotiation with secure totals (SecAgg+ over query messages) against without, same run.

For each site count (default 4 and 8): synthetic sites (written once into --data, copied per N so that
privacy ledgers start empty), then one run on Flower's simulation engine that, on the same connected
nodes, times ``--repeats`` times

* the plain negotiation round (``fl_server.federation.negotiate``: one query, released counts),
* the secure total (``fl_server.secure_counts.secure_totals``: four query rounds, masked vectors),

and reports the medians, the negotiation with secure totals (plain + secure) and its ratio to the plain
one. Every site answers with the default policy except a minimum cell of 5 (small sites).

    python bench/negotiation.py --sites 4 8 --patients 20 --repeats 3 --out bench-out/negotiation.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_sites(data: Path, n: int, patients: int, seed: int) -> Path:
    """``n`` synthetic sites, ingested (reused when already there); returns consortium.json."""
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    done = data / ".complete"
    if not done.exists() or json.loads(done.read_text()) != {"sites": n, "patients": patients, "seed": seed}:
        shutil.rmtree(data, ignore_errors=True)
        for s in synthesize_consortium(data, n, patients, seed):
            site = load_site_config(s.site_config)
            ingest_folder(s.raw_dir, site.store_path(), site)
            print(f"  ingested {s.site_id}", flush=True)
        done.write_text(json.dumps({"sites": n, "patients": patients, "seed": seed}))
    return data / "consortium.json"


def first_sites(src_json: Path, dst: Path, n: int, min_cell: int) -> Path:
    """A copy of the first ``n`` sites (no raw data, audit logs or ledgers), minimum cell ``min_cell``."""
    import yaml

    shutil.rmtree(dst, ignore_errors=True)
    meta = json.loads(src_json.read_text())
    meta["sites"] = meta["sites"][:n]
    for s in meta["sites"]:
        folder = (src_json.parent / s["site_config"]).parent
        shutil.copytree(folder, dst / folder.name, ignore=shutil.ignore_patterns(
            "raw", "exports", "audit.jsonl", "*.sqlite"))
        yaml_path = dst / s["site_config"]
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        data.setdefault("disclosure", {})["min_cell_size"] = min_cell
        yaml_path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dst / "consortium.json").write_text(json.dumps(meta, indent=2))
    return dst / "consortium.json"


def timed_run(consortium_json: Path, n: int, repeats: int) -> dict[str, Any]:
    """One simulation: ``repeats`` x (plain negotiation, secure total) on the same nodes."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_client.client_app import build_client_app
    from fl_server.config import compose_config
    from fl_server.federation import _wait_for_nodes, coordinator_spec, negotiate
    from fl_server.secure_counts import SecureSettings, secure_totals

    spec = coordinator_spec(compose_config()).to_dict()
    out: dict[str, Any] = {"plain": [], "secure": [], "released": [], "contributors": []}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = _wait_for_nodes(grid, n, 300)
        negotiate(grid, nodes, spec, None, 300)  # warm-up: imports and index caches at every site
        for _ in range(repeats):
            t0 = time.perf_counter()
            answers = negotiate(grid, nodes, spec, None, 300)
            out["plain"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            totals = secure_totals(grid, answers, spec, SecureSettings(min_sites=3, timeout=300))
            out["secure"].append(time.perf_counter() - t0)
            out["released"].append(totals.released)
            out["contributors"].append(len(totals.contributors))

    run_simulation(server_app=app, client_app=build_client_app(consortium_json), num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("bench-out/negotiation-sites"))
    ap.add_argument("--out", type=Path, default=Path("bench-out/negotiation.json"))
    args = ap.parse_args(argv)

    from fl_server.demo import quiet_flower_env

    quiet_flower_env()
    import os

    os.environ["FLWR_HOME"] = str((args.out.parent / "flwr-home").resolve())
    print(f"building {max(args.sites)} sites x {args.patients} patients in {args.data}", flush=True)
    source = build_sites(args.data, max(args.sites), args.patients, args.seed)
    rows = []
    for n in args.sites:
        consortium = first_sites(source, args.out.parent / f"negotiation-run-{n}", n, min_cell=5)
        r = timed_run(consortium, n, args.repeats)
        plain, secure = statistics.median(r["plain"]), statistics.median(r["secure"])
        row = {"sites": n, "plain_s": round(plain, 3), "secure_s": round(secure, 3),
               "with_secure_s": round(plain + secure, 3), "ratio": round((plain + secure) / plain, 2),
               "released": all(r["released"]), "contributors": r["contributors"],
               "plain_runs": [round(x, 3) for x in r["plain"]], "secure_runs": [round(x, 3) for x in r["secure"]]}
        rows.append(row)
        print(f"| {n} | {row['plain_s']:.2f} | {row['secure_s']:.2f} | {row['with_secure_s']:.2f} | "
              f"{row['ratio']:.1f}x | {'yes' if row['released'] else 'no'} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"patients": args.patients, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
