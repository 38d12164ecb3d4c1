"""Ingest benchmark: synthesize one site, ingest and index it, then read the store back.

Run from the repository root::

    python bench/ingest.py                                  # 500 patients, profile uk-nord
    python bench/ingest.py --patients 50 --workers 1
    python bench/ingest.py --patients 500 --baseline 4814ed5  # before/after in one run

Stages:

1. ``synth``: ``cohort.synth.site.synthesize_site`` writes the raw exports (not part of the target).
2. ``ingest``: ``cohort.ingest.run.ingest_folder`` on them, as ``cohort ingest`` runs it: format detection,
   conversion, writing into the store, derived measurements and the DuckDB index, each timed by the
   ingest report itself. It runs in a fresh process per variant; with ``--baseline REV`` the same raw
   folder is first ingested by the code of git revision ``REV`` (checked out in a temporary worktree),
   then by this checkout's, and the two stores are compared file by file (bytes) and table by table
   (index rows; file modification times aside).
3. Reading the store without the index, in one process, against a bare
   ``pydicom.dcmread(f, stop_before_pixels=True)`` loop over the same files (best of ``--repeat``,
   after one warm-up pass so that every variant reads from the page cache):
   ``identities`` walks the store and collects each object's identity with the project's reader
   (``cohort.index.extract.read_dataset``); ``extract`` builds each object's full index record
   (``cohort.index.extract.extract_file``), what the index read per file before it took only an image's
   identity; ``rebuild`` is ``cohort reindex`` of a copy of the store without its index (one process,
   DuckDB appends included): images' identities, each new series' first file in full, everything else
   in full.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and "--measure" in sys.argv:  # a variant's run: import the code under test
    sys.path.insert(0, sys.argv[sys.argv.index("--measure") + 1])
else:
    sys.path.insert(0, str(ROOT))

from cohort.index.extract import extract_file, read_dataset  # noqa: E402
from cohort.index.publish import reindex  # noqa: E402
from cohort.index.templates import load_templates  # noqa: E402
from cohort.ingest.pipeline import default_workers  # noqa: E402
from cohort.ingest.run import ingest_folder  # noqa: E402
from cohort.siteconfig import load_site_config  # noqa: E402
from cohort.store import Store  # noqa: E402
from cohort.synth.profiles import PROFILES  # noqa: E402
from cohort.synth.site import synthesize_site  # noqa: E402

TARGET_PATIENTS_PER_S = 10.0  # end to end, issue 24 (was 5 for conversion alone, issue 2)
TARGET_INDEX_SHARE = 0.5  # indexing at >= half the bare header-parse rate, issue 24
STAGES = (("detect_s", "detect formats"), ("convert_s", "convert + write"), ("derive_s", "derive measurements"),
          ("index_s", "index (DuckDB)"))


def _cpu() -> float:
    """User + system CPU seconds of this process and of its finished children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(raw_dir: Path, site_config: Path, store_dir: Path, out: Path) -> None:
    """One variant's run (in its own process): ``cohort ingest`` of ``raw_dir`` into a new store."""
    site = load_site_config(site_config)
    shutil.rmtree(store_dir, ignore_errors=True)
    w0, c0 = time.perf_counter(), _cpu()
    report = ingest_folder(raw_dir, store_dir, site)
    wall, cpu = time.perf_counter() - w0, _cpu() - c0
    report.check_invariant()
    out.write_text(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "timings": report.timings, "inputs": report.inputs,
        "objects": report.objects_written, "indexed": report.indexed_files, "patients": report.patients,
        "objects_by_sop_class": report.objects_by_sop_class,
    }, indent=2) + "\n", encoding="utf-8")


def _run_variant(code_root: Path, raw_dir: Path, site_config: Path, store_dir: Path, workers: int,
                 work: Path, name: str) -> dict[str, Any]:
    out = work / f"{name}.json"
    env = {**os.environ, "COHORT_INGEST_WORKERS": str(workers)}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(code_root), str(raw_dir),
                    str(site_config), str(store_dir), str(out)], check=True, env=env, cwd=code_root)
    return dict(json.loads(out.read_text(encoding="utf-8")))


def _worktree(rev: str, work: Path) -> Path:
    tree = work / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), rev], check=True,
                   capture_output=True)
    return tree


def compare_stores(old: Path, new: Path) -> dict[str, Any]:
    """Stored files compared byte for byte, and every index table row for row (mtimes and roots aside)."""
    from cohort.index.duck import index_rows  # this checkout's: a --measure run imports the baseline's code

    rel_old = sorted(p.relative_to(old) for p in Store(old).files())
    rel_new = sorted(p.relative_to(new) for p in Store(new).files())
    differing = [str(r) for r in sorted(set(rel_old) & set(rel_new)) if (old / r).read_bytes() != (new / r).read_bytes()]
    t_old, t_new = index_rows(old / "index.duckdb", old), index_rows(new / "index.duckdb", new)
    return {"files": [len(rel_old), len(rel_new)], "same_paths": rel_old == rel_new, "differing_bytes": differing,
            "tables": sorted(t_old), "differing_tables": sorted(t for t in set(t_old) | set(t_new)
                                                                if t_old.get(t) != t_new.get(t))}


def _rebuild(store_dir: Path, work: Path, repeat: int) -> float:
    """Best wall time of ``reindex`` (one process) on a copy of the store's objects without an index."""
    copy = work / "store-rebuild"
    best = float("inf")
    try:
        for _ in range(repeat):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(Store(store_dir).dicom_dir, Store(copy).dicom_dir, copy_function=os.link,
                            dirs_exist_ok=True)
            t0 = time.perf_counter()
            done = reindex(copy, workers=1)
            best = min(best, time.perf_counter() - t0)
            if done.failed or not done.added:
                raise RuntimeError(f"rebuild of {copy} indexed {done.added} files, failed {done.failed[:3]}")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return best


def _read_loop(files: list[Path], read: Callable[[Path], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in files:
            read(f)
        best = min(best, time.perf_counter() - t0)
    return best


def _identity(path: Path) -> tuple[str, ...]:
    ds = read_dataset(path)
    return (str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
            str(ds.SOPClassUID), str(ds.Modality))


@dataclass
class Variant:
    name: str
    result: dict[str, Any]

    def stage(self, key: str) -> float:
        return float(self.result["timings"].get(key, 0.0))

    @property
    def end_to_end(self) -> float:
        return float(self.result["wall_s"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--measure":
        _, _root, raw, site, store, out = argv
        measure(Path(raw), Path(site), Path(store), Path(out))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--profile", default="uk-nord", choices=[p.site_id for p in PROFILES])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=None,
                        help="conversion and indexing processes (default: usable cores)")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also ingest with the code of this git revision, first, and compare")
    parser.add_argument("--repeat", type=int, default=2, help="passes of each read loop (best is kept)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers()
    profile = next(p for p in PROFILES if p.site_id == args.profile)
    work = (args.out or Path(tempfile.mkdtemp(prefix="bench-ingest-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    load_before = os.getloadavg()
    baseline_tree: Path | None = None
    variants: list[Variant] = []
    comparison: dict[str, Any] | None = None
    try:
        t0 = time.perf_counter()
        with console.status(f"synthesizing {args.patients} patients ({profile.site_id}) ..."):
            site_written = synthesize_site(profile, args.patients, args.seed, work / "consortium")
        synth_s = time.perf_counter() - t0
        runs = []
        if args.baseline:
            baseline_tree = _worktree(args.baseline, work)
            runs.append((f"baseline {args.baseline}", baseline_tree, work / "store-baseline"))
        runs.append(("this checkout", ROOT, work / "store"))
        for name, tree, store_dir in runs:
            with console.status(f"{name}: ingesting {site_written.files} inputs with {workers} worker(s) ..."):
                variants.append(Variant(name, _run_variant(tree, site_written.raw_dir, site_written.site_config,
                                                           store_dir, workers, work, name.split()[0])))
        store_dir = work / "store"
        if args.baseline:
            with console.status("comparing the two stores ..."):
                comparison = compare_stores(work / "store-baseline", store_dir)
        files = list(Store(store_dir).files())
        templates = load_templates(())
        with console.status(f"reading {len(files)} stored files ..."):
            _read_loop(files, lambda f: pydicom.dcmread(f, stop_before_pixels=True), 1)  # warm-up
            bare = _read_loop(files, lambda f: pydicom.dcmread(f, stop_before_pixels=True), args.repeat)
            identities = _read_loop(files, _identity, args.repeat)
            extract = _read_loop(files, lambda f: extract_file(f, templates), args.repeat)
            rebuild = _rebuild(store_dir, work, args.repeat)
    finally:
        if baseline_tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                           capture_output=True)
        if not args.keep and args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    n = site_written.patients
    table = Table(title=f"ingest benchmark: {n} patients, profile {profile.site_id}, {site_written.files} inputs, "
                        f"{workers} worker(s), {len(os.sched_getaffinity(0))} usable cores (synthesis {synth_s:.1f} s)")
    table.add_column("stage (wall s)")
    for v in variants:
        table.add_column(v.name, justify="right")
    if len(variants) == 2:
        table.add_column("after / before", justify="right")

    def row(label: str, values: list[float], fmt: str = "{:.1f}", ratio: bool = True) -> None:
        cells = [fmt.format(x) for x in values]
        if len(values) == 2:
            cells.append(f"{values[1] / values[0]:.2f}x" if ratio and values[0] else "")
        table.add_row(label, *cells)

    for key, label in STAGES:
        row(label, [v.stage(key) for v in variants])
    row("end to end (ingest_folder, wall)", [v.end_to_end for v in variants])
    row("CPU s (process + workers)", [float(v.result["cpu_s"]) for v in variants])
    row("patients/s end to end", [n / v.end_to_end for v in variants], "{:.2f}")
    row("stored objects", [float(v.result["objects"]) for v in variants], "{:.0f}", ratio=False)
    console.print(table)

    reads = Table(title=f"reading {len(files)} stored files without the index (one process, best of {args.repeat})")
    for col in ("reader", "s", "files/s", "time vs bare dcmread"):
        reads.add_column(col, justify="left" if col == "reader" else "right")
    for name, secs in (("bare pydicom.dcmread(stop_before_pixels=True)", bare),
                       ("store walk collecting identities", identities),
                       ("full index record of every file (extract_file)", extract),
                       ("rebuild a lost index (cohort reindex)", rebuild)):
        reads.add_row(name, f"{secs:.2f}", f"{len(files) / secs:.0f}", f"{secs / bare:.2f}x")
    current = variants[-1]
    index_rate_share = bare / current.stage("index_s") if current.stage("index_s") else float("inf")
    reads.add_row("ingest's index stage (rows from the conversion workers)", f"{current.stage('index_s'):.2f}",
                  f"{len(files) / current.stage('index_s'):.0f}" if current.stage("index_s") else "",
                  f"{current.stage('index_s') / bare:.2f}x")
    console.print(reads)
    if comparison is not None:
        same = not comparison["differing_bytes"] and comparison["same_paths"]
        console.print(f"stores: {comparison['files'][0]} vs {comparison['files'][1]} files, "
                      f"{'byte-identical' if same else str(len(comparison['differing_bytes'])) + ' differ in bytes'}"
                      f"; index tables differing: {comparison['differing_tables'] or 'none'} "
                      f"(of {len(comparison['tables'])})")
    end_to_end = n / current.end_to_end
    verdict = "meets" if end_to_end >= TARGET_PATIENTS_PER_S else "misses"
    console.print(f"end to end {end_to_end:.2f} patients/s ({verdict} the target of {TARGET_PATIENTS_PER_S:g}); "
                  f"ingest's indexing at {index_rate_share:.0%} and a rebuild (cohort reindex) at {bare / rebuild:.0%} of the "
                  f"bare header-parse rate (target {TARGET_INDEX_SHARE:.0%}); load average before "
                  f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "patients": n, "profile": profile.site_id, "workers": workers, "inputs": site_written.files,
            "synth_s": synth_s, "variants": {v.name: v.result for v in variants}, "comparison": comparison,
            "stored_files": len(files), "read_s": {"bare_dcmread": bare, "identities": identities, "extract": extract,
                                                   "rebuild": rebuild},
            "read_ratio": {"identities": identities / bare, "extract": extract / bare, "rebuild": rebuild / bare},
            "index_rate_share": index_rate_share, "loadavg": [load_before[0], os.getloadavg()[0]],
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
