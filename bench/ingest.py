"""Ingest benchmark: synthesize one site, ingest it, index it, then read the store back.

Run from the repository root::

    python bench/ingest.py                      # 500 patients, profile uk-nord
    python bench/ingest.py --patients 50 --workers 1

Stages, each timed separately (wall clock and CPU seconds of this process and its workers):

1. ``synth``: ``cohort.synth.site.synthesize_site`` writes the raw exports (not part of the target).
2. ``ingest``: ``cohort.ingest.run.ingest_folder(..., index=False)``: format detection, conversion and
   writing into the store (the target: >= 5 patients/s on 2 cores).
3. ``index``: ``DuckIndex.add_files`` over every stored file.
4. ``end to end``: ingest + index, what ``cohort ingest`` does.
5. Reading the store without the index, in one process, against a bare
   ``pydicom.dcmread(f, stop_before_pixels=True)`` loop over the same files (best of ``--repeat``,
   after one warm-up pass so that every variant reads from the page cache):
   ``identities`` walks the store and collects each object's identity with the project's reader
   (``cohort.index.extract.read_dataset``); ``extract`` builds each object's full index record
   (``cohort.index.extract.extract_file``), i.e. the per-file work of indexing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cohort.index.duck import DuckIndex  # noqa: E402
from cohort.index.extract import extract_file, read_dataset  # noqa: E402
from cohort.index.templates import load_templates  # noqa: E402
from cohort.ingest.pipeline import default_workers  # noqa: E402
from cohort.ingest.run import ingest_folder  # noqa: E402
from cohort.siteconfig import load_site_config  # noqa: E402
from cohort.store import Store  # noqa: E402
from cohort.synth.profiles import PROFILES  # noqa: E402
from cohort.synth.site import synthesize_site  # noqa: E402

TARGET_PATIENTS_PER_S = 5.0


@dataclass
class Timing:
    stage: str
    wall_s: float
    cpu_s: float
    patients: int | None = None
    objects: int | None = None

    @property
    def patients_per_s(self) -> float | None:
        return self.patients / self.wall_s if self.patients and self.wall_s else None

    @property
    def objects_per_s(self) -> float | None:
        return self.objects / self.wall_s if self.objects and self.wall_s else None


def _cpu() -> float:
    """User + system CPU seconds of this process and of its finished children (pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def _timed(result: dict[str, float]) -> Iterator[None]:
    w0, c0 = time.perf_counter(), _cpu()
    yield
    result["wall"], result["cpu"] = time.perf_counter() - w0, _cpu() - c0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--profile", default="uk-nord", choices=[p.site_id for p in PROFILES])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=None,
                        help="conversion and indexing processes (default: usable cores)")
    parser.add_argument("--repeat", type=int, default=2, help="passes of each read loop (best is kept)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers()
    os.environ["COHORT_INGEST_WORKERS"] = str(workers)
    profile = next(p for p in PROFILES if p.site_id == args.profile)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    console = Console()
    load_before = os.getloadavg()
    try:
        t_synth: dict[str, float] = {}
        with console.status(f"synthesizing {args.patients} patients ({profile.site_id}) ..."), _timed(t_synth):
            site_written = synthesize_site(profile, args.patients, args.seed, work / "consortium")
        site = load_site_config(site_written.site_config)
        store_dir = work / "store"
        if store_dir.exists():
            shutil.rmtree(store_dir)

        t_ingest: dict[str, float] = {}
        with console.status(f"ingesting {site_written.files} inputs with {workers} worker(s) ..."), \
                _timed(t_ingest):
            report = ingest_folder(site_written.raw_dir, store_dir, site, index=False)
        report.check_invariant()
        files = list(Store(store_dir).files())

        t_index: dict[str, float] = {}
        with console.status(f"indexing {len(files)} files ..."), _timed(t_index):
            with DuckIndex.for_store(store_dir) as idx:
                added = idx.add_files(files, workers=workers)
        if added.failed:
            console.print(f"[red]{len(added.failed)} files failed to index[/], e.g. {added.failed[0]}")

        templates = load_templates(())
        with console.status(f"reading {len(files)} stored files ..."):
            _read_loop(files, lambda f: pydicom.dcmread(f, stop_before_pixels=True), 1)  # warm-up
            bare = _read_loop(files, lambda f: pydicom.dcmread(f, stop_before_pixels=True), args.repeat)
            identities = _read_loop(files, _identity, args.repeat)
            extract = _read_loop(files, lambda f: extract_file(f, templates), args.repeat)
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    n, objects = site_written.patients, report.objects_written
    timings = [
        Timing("synth (raw exports)", t_synth["wall"], t_synth["cpu"], n, site_written.files),
        Timing("ingest: detect + convert + write", t_ingest["wall"], t_ingest["cpu"], n, objects),
        Timing("index (DuckDB)", t_index["wall"], t_index["cpu"], n, len(files)),
        Timing("end to end: ingest + index", t_ingest["wall"] + t_index["wall"],
               t_ingest["cpu"] + t_index["cpu"], n, objects),
    ]
    table = Table(title=f"ingest benchmark: {n} patients, profile {profile.site_id}, {workers} worker(s), "
                        f"{len(os.sched_getaffinity(0))} usable cores")
    for col in ("stage", "wall s", "CPU s", "patients/s", "objects/s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for t in timings:
        table.add_row(t.stage, f"{t.wall_s:.1f}", f"{t.cpu_s:.1f}",
                      f"{t.patients_per_s:.2f}" if t.patients_per_s else "",
                      f"{t.objects_per_s:.0f}" if t.objects_per_s else "")
    console.print(table)

    reads = Table(title=f"reading {len(files)} stored files without the index (one process, best of {args.repeat})")
    for col in ("reader", "s", "files/s", "time vs bare dcmread"):
        reads.add_column(col, justify="left" if col == "reader" else "right")
    for name, secs in (("bare pydicom.dcmread(stop_before_pixels=True)", bare),
                       ("store walk collecting identities", identities),
                       ("index record extraction (extract_file)", extract)):
        reads.add_row(name, f"{secs:.2f}", f"{len(files) / secs:.0f}", f"{secs / bare:.2f}x")
    console.print(reads)
    end_to_end = timings[3].patients_per_s or 0.0
    ingest_only = timings[1].patients_per_s or 0.0
    verdict = "meets" if ingest_only >= TARGET_PATIENTS_PER_S else "misses"
    console.print(f"objects by SOP class: {report.objects_by_sop_class}")
    console.print(f"ingest {ingest_only:.2f} patients/s ({verdict} the target of {TARGET_PATIENTS_PER_S:g}); "
                  f"with indexing {end_to_end:.2f} patients/s; load average before {load_before[0]:.1f}, "
                  f"after {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({
            "patients": n, "profile": profile.site_id, "workers": workers, "inputs": report.inputs,
            "objects": objects, "stored_files": len(files), "report_timings": report.timings,
            "stages": [asdict(t) | {"patients_per_s": t.patients_per_s, "objects_per_s": t.objects_per_s}
                       for t in timings],
            "read_s": {"bare_dcmread": bare, "identities": identities, "extract": extract},
            "read_ratio": {"identities": identities / bare, "extract": extract / bare},
            "loadavg": [load_before[0], os.getloadavg()[0]],
        }, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
