"""Ingest entry point used by the CLI and the demo: convert, then index what was written."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from cohort.ingest.base import Converter
from cohort.ingest.pipeline import IngestRun, ProgressCallback, library_warnings
from cohort.ingest.report import IngestReport, InputWarning
from cohort.siteconfig import SiteConfig
from cohort.store import Store

INDEXING_INPUT = "(indexing the store)"  # the "input" of warnings raised while indexing stored objects


def ingest_folder(raw_dir: Path, store_dir: Path, site: SiteConfig, *, progress: ProgressCallback | None = None,
                  converters: Sequence[Converter] | None = None, index: bool = True) -> IngestReport:
    """Convert every input below ``raw_dir`` into ``store_dir`` and bring the index up to date."""
    if converters is None:
        from cohort.ingest.registry import default_converters

        converters = default_converters()
    store = Store(store_dir)
    run = IngestRun(Path(raw_dir), store, site, converters, progress)
    report = run.run()
    if index:
        from cohort.index.publish import update_index

        t0 = time.perf_counter()
        index_progress = (lambda done, total: progress("indexing", done, total)) if progress else None
        # Reading the stored objects repeats pydicom's warnings, which conversion already recorded per
        # input; only new ones are added, and none reaches the terminal bare.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with update_index(store.root) as idx:  # readers see the old or the new index, never a mix
                added = idx.add_files(list(store.files()), progress=index_progress, workers=run.workers,
                                      extracted=run.records)
                idx.optimize()  # re-sorts for fast queries once enough rows were appended
        known = {w.message for w in report.warnings}
        for found in library_warnings(caught):
            if found["message"] not in known:
                report.warnings.append(InputWarning(INDEXING_INPUT, "", found["message"]))
        report.indexed_files = added.indexed
        report.index_failures = [{"path": p, "reason": r} for p, r in added.failed]
        report.timings["index_s"] = round(time.perf_counter() - t0, 3)
    return report
