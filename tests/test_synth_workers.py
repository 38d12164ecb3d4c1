"""Synthesis in worker processes writes the same files, byte for byte, as one process."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cohort.synth.profiles import profile_for_site
from cohort.synth.site import synthesize_site


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_worker_processes_write_the_same_site_as_one_process(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    one = synthesize_site(profile_for_site(1), 20, 7, tmp_path / "one", workers=1)
    two = synthesize_site(profile_for_site(1), 20, 7, tmp_path / "two", workers=2,
                          progress=lambda _site, i, n: seen.append((i, n)))
    assert (one.files, one.patients, one.prevalence) == (two.files, two.patients, two.prevalence)
    a, b = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len(a) > 20 * 5  # CT slices, ECGs, tables ...: a real site, not an empty folder
    assert a == b
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)  # progress still counts every patient
