"""Progress where a person waits: ``cohort validate`` reports each validator's files as they finish."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from cohort.cli.progress import progress_callback
from cohort.ingest.validation import PROGRESS_BATCH, validate_store
from cohort.store import Store


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed (apt-get install -y "
                                                              "dicom3tools): validation progress not checked")
def test_validate_reports_progress_per_batch_of_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    n = PROGRESS_BATCH + 5  # two batches
    for i in range(n):
        source.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        store.write(source)
    steps: list[tuple[str, int, int]] = []
    summary = validate_store(store.root, progress=lambda tool, done, total: steps.append((tool, done, total)))
    assert summary.checked["dciodvfy"] == n
    assert steps[0] == ("dciodvfy", 0, n) and steps[-1] == ("dciodvfy", n, n)
    assert sorted(done for _, done, _ in steps) == [0, PROGRESS_BATCH, n]


def test_the_progress_callback_is_silent_when_output_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_callback(False) as cb:
        cb("converting", 1, 2)
    assert capsys.readouterr() == ("", "")
