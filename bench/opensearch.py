"""OpenSearch vs DuckDB on the same synthetic patients: sync throughput, query latency, the replica's cost.

    python bench/opensearch.py [--patients 100000] [--repeat 11] [--specs nested_three,...] [--heap 1g]
                               [--no-cluster] [--url URL]

The DuckDB index is built from rows by bench/query.py's generator (5.6 entities, 34 SR items per patient),
then

1. DuckDB: each spec timed with ``compile_duck.evaluate`` (p50 / p95 of ``--repeat`` runs after a warm-up);
2. a single bundled OpenSearch node (deploy/opensearch-node; or the cluster at ``--url``), index with 1
   shard and 0 replicas: ``OpenSearchBackend.index_from_duck`` timed (documents = patients per second,
   and the nested Lucene documents per second), split into building the documents from DuckDB and the
   bulk requests; then each spec timed with ``OpenSearchBackend.evaluate`` and its counts compared with
   DuckDB's (must be identical);
3. the replica's cost: a two-node cluster on loopback (manager+data, data), index of 1 shard and 1
   replica, the same sync and queries (``--no-cluster`` skips it).

Every node runs on this machine: the figures compare engines on the same cores, not a real cluster's
scale-out. Nodes are started and stopped by this script (by their pids).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.query import NESTED, SPECS, build, pct, timed  # noqa: E402
from cohort.index.catalog import field_catalog  # noqa: E402
from cohort.index.compile_duck import evaluate  # noqa: E402
from cohort.index.duck import DuckIndex  # noqa: E402
from cohort.index.opensearch_backend import OpenSearchBackend, documents_from_duck  # noqa: E402
from cohort.index.opensearch_node import http_json, start_cluster, start_node, wait_for_health  # noqa: E402
from cohort.spec import parse_text  # noqa: E402
from cohort.spec.model import CohortSpec  # noqa: E402


def sync(backend: OpenSearchBackend, index: DuckIndex, replicas: int) -> dict[str, float]:
    """Recreate, bulk-index every patient; seconds for the documents alone and for the whole sync."""
    t0 = time.perf_counter()
    n_docs = sum(1 for _ in documents_from_duck(index))  # the documents alone (built, not sent)
    docs_s = time.perf_counter() - t0
    backend.recreate(shards=1, replicas=replicas)
    t0 = time.perf_counter()
    written = backend.index_from_duck(index)
    total_s = time.perf_counter() - t0
    if replicas:
        wait_for_health(backend_url(backend), "green", timeout=600)
    replicated_s = time.perf_counter() - t0
    assert written == n_docs == index.count_patients(), (written, n_docs)
    stats = http_json(f"{backend_url(backend)}/{backend.index_name}/_stats/docs")
    lucene = stats["indices"][backend.index_name]["primaries"]["docs"]["count"]
    return {"patients": written, "lucene_docs": lucene, "docs_s": docs_s, "sync_s": total_s,
            "green_s": replicated_s}


def backend_url(backend: OpenSearchBackend) -> str:
    host = backend.client.transport.hosts[0]
    return f"http://{host['host']}:{host['port']}"


def time_specs(fn: Any, specs: dict[str, CohortSpec], repeat: int) -> dict[str, tuple[float, float, dict[str, Any]]]:
    out = {}
    for name, spec in specs.items():
        times, counts = timed(lambda spec=spec: fn(spec), repeat)
        out[name] = (pct(times, 0.5), pct(times, 0.95), counts.to_json())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=11, help="timed runs per spec (after one warm-up)")
    ap.add_argument("--specs", default=NESTED, help=f"comma-separated names of bench/query.py ({', '.join(SPECS)})"
                                                    " or 'all'")
    ap.add_argument("--heap", default="1g", help="JVM heap per bundled node")
    ap.add_argument("--no-cluster", action="store_true", help="skip the two-node replica run")
    ap.add_argument("--url", default=None, help="an existing cluster instead of the bundled single node "
                                                "(http, no auth; the replica run still uses bundled nodes)")
    args = ap.parse_args(argv)
    names = list(SPECS) if args.specs == "all" else args.specs.split(",")
    catalog = field_catalog()  # the synthetic index has no store: the built-in fields
    specs = {n: parse_text(SPECS[n], catalog=catalog) for n in names}
    console = Console(width=150)
    tmp = Path(tempfile.mkdtemp(prefix="opensearch-bench-"))

    with console.status(f"building {args.patients:,} patients in DuckDB ..."):
        built = build(tmp / "bench.duckdb", args.patients)
    index = built.index
    console.print(f"[dim]DuckDB index: {args.patients:,} patients, {index.count_entities():,} entities, "
                  f"{built.items:,} SR items, built in {built.seconds:.1f} s[/dim]")
    duck = time_specs(lambda s: evaluate(index, s), specs, args.repeat)

    runs: dict[str, tuple[dict[str, float], dict[str, tuple[float, float, dict[str, Any]]]]] = {}
    node = None
    try:
        if args.url:
            url = args.url
        else:
            with console.status("starting the bundled node ..."):
                node = start_node(tmp / "single", heap=args.heap)
                wait_for_health(node.url, "green")
            url = node.url
            console.print(f"[dim]single node up in {node.started_in:.1f} s (pid {node.pid})[/dim]")
        backend = OpenSearchBackend.connect(url, index_name="bench", timeout=300)
        with console.status("sync to the single node ..."):
            s = sync(backend, index, replicas=0)
        runs["1 node, 0 replicas"] = (s, time_specs(backend.evaluate, specs, args.repeat))
        backend.drop()
    finally:
        if node is not None:
            node.stop()
    if not args.no_cluster:
        with console.status("starting a two-node cluster ..."):
            cluster = start_cluster(tmp / "cluster", [None, ["data", "ingest"]], heap=args.heap)
        try:
            backend = OpenSearchBackend.connect(cluster.nodes[0].url, index_name="bench", timeout=300)
            with console.status("sync to the cluster (1 replica) ..."):
                s = sync(backend, index, replicas=1)
            runs["2 nodes, 1 replica"] = (s, time_specs(backend.evaluate, specs, args.repeat))
            backend.drop()
        finally:
            cluster.stop()
    index.close()

    t = Table(title=f"sync of {args.patients:,} patients (DuckDB -> OpenSearch, bulk of 500)")
    for col in ("target", "patients", "nested Lucene docs", "build docs s", "sync s", "patients/s",
                "Lucene docs/s", "until green s"):
        t.add_column(col, justify="right")
    for name, (s, _) in runs.items():
        t.add_row(name, f"{s['patients']:,.0f}", f"{s['lucene_docs']:,.0f}", f"{s['docs_s']:.1f}",
                  f"{s['sync_s']:.1f}", f"{s['patients'] / s['sync_s']:,.0f}",
                  f"{s['lucene_docs'] / s['sync_s']:,.0f}", f"{s['green_s']:.1f}")
    console.print(t)
    lat = Table(title=f"query latency, ms (p50 / p95 of {args.repeat} runs after a warm-up), {args.patients:,} patients")
    lat.add_column("spec")
    lat.add_column("DuckDB", justify="right")
    for name in runs:
        lat.add_column(f"OpenSearch {name}", justify="right")
    lat.add_column("patients", justify="right")
    lat.add_column("same counts", justify="right")
    ok = True
    for name in specs:
        d50, d95, dcounts = duck[name]
        same = all(q[name][2] == dcounts for _, q in runs.values())
        ok &= same
        lat.add_row(name, f"{d50:.1f} / {d95:.1f}",
                    *(f"{q[name][0]:.1f} / {q[name][1]:.1f}" for _, q in runs.values()),
                    f"{dcounts['patients']:,}", "yes" if same else "[red]NO[/red]")
    console.print(lat)
    for name in specs:
        console.print(f"  {name}: {SPECS[name]}", markup=False, highlight=False)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
