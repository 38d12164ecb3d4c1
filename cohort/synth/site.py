"""``cohort synth``: write a consortium of synthetic sites, each with heterogeneous raw exports.

Per site: ``OUT/<site-id>/raw/...`` (what the hospital's systems export), ``OUT/<site-id>/site.yaml``
(the site's config for ``cohort ingest``), ``OUT/<site-id>/identity.key`` and ``roster.yaml`` (its
Ed25519 identity key for secure totals, and its copy of the consortium roster of every site's public
key; ``OUT/roster.yaml`` is the same roster) and ``OUT/<site-id>/truth.csv``
(the generative model's label and true probability per patient: for evaluation only, never part of the
raw exports).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cohort.identity import IDENTITY_FILE, ROSTER_FILE, load_identity, write_roster, write_synthetic_identity
from cohort.processes import usable_cores, worker_context
from cohort.siteconfig import load_site_config
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import SiteProfile, profile_for_site
from cohort.synth.writers.ct import write_ct_series
from cohort.synth.writers.ecg import write_ecg
from cohort.synth.writers.free_text import write_free_text
from cohort.synth.writers.markups import write_markups
from cohort.synth.writers.segmentation import write_segmentation
from cohort.synth.writers.tables import write_tables

ProgressCallback = Callable[[str, int, int], None]
_MIN_POOL_PATIENTS = 16  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class SynthSite:
    """One written synthetic site."""

    site_id: str
    folder: Path
    raw_dir: Path
    site_config: Path
    patients: int
    files: int
    prevalence: float


def write_patient(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """All per-patient exports of one patient (CT, segmentation, landmarks, ECG, free text)."""
    files: list[Path] = []
    if patient.ct is not None:
        files += write_ct_series(patient, profile, raw_dir)
        if patient.ct.has_segmentation:
            files += write_segmentation(patient, profile, raw_dir)
        if patient.ct.has_landmarks:
            files += write_markups(patient, profile, raw_dir)
    if patient.ecg is not None:
        files += write_ecg(patient, profile, raw_dir)
    if patient.has_free_text:
        files += write_free_text(patient, profile, raw_dir)
    return files


def site_key(seed: int, site_id: str) -> str:
    """The synthetic site's pseudonym key (a real site sets its own secret in site.yaml)."""
    return hashlib.sha256(f"fedcohort-synth-{seed}-{site_id}".encode()).hexdigest()[:32]


def _write_patient_job(job: tuple[SyntheticPatient, SiteProfile, Path]) -> list[Path]:
    return write_patient(*job)


def _write_patients(patients: list[SyntheticPatient], profile: SiteProfile, raw_dir: Path, workers: int,
                    progress: ProgressCallback | None) -> list[Path]:
    """Every patient's exports, in worker processes when there are enough patients to pay for them.

    Each writer draws from generators seeded by the patient (site, PACS id, purpose) and derives its UIDs
    the same way, so the files are byte-identical whatever the number of workers.
    """
    jobs = [(p, profile, raw_dir) for p in patients]
    files: list[Path] = []
    if workers > 1 and len(jobs) >= _MIN_POOL_PATIENTS:
        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            for i, written in enumerate(pool.map(_write_patient_job, jobs, chunksize=4)):
                if progress:
                    progress(profile.site_id, i, len(jobs))
                files += written
        return files
    for i, job in enumerate(jobs):
        if progress:
            progress(profile.site_id, i, len(jobs))
        files += _write_patient_job(job)
    return files


def synthesize_site(profile: SiteProfile, n_patients: int, seed: int, out: Path,
                    progress: ProgressCallback | None = None, workers: int | None = None) -> SynthSite:
    """Write one site's raw exports, site.yaml and truth.csv below ``out/<site-id>``.

    ``workers``: processes writing patients (None: the usable CPU cores; 1: this process only).
    """
    folder = out / profile.site_id
    raw_dir = folder / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    patients = generate_site(seed, profile.site_id, n_patients, profile.mix, profile.pacs_prefix,
                             profile.case_prefix)
    files = _write_patients(patients, profile, raw_dir, usable_cores() if workers is None else max(1, workers),
                            progress)
    files += write_tables(patients, profile, raw_dir)
    if progress:
        progress(profile.site_id, len(patients), len(patients))
    write_synthetic_identity(folder, seed, profile.site_id)  # signs its part in secure totals
    config = profile.config.model_copy(update={"pseudonym_key": site_key(seed, profile.site_id),
                                               "identity_key": IDENTITY_FILE, "roster": ROSTER_FILE})
    site_yaml = folder / "site.yaml"
    site_yaml.write_text(config.to_yaml(), encoding="utf-8")
    _write_truth(folder / "truth.csv", patients)
    labels = [p.label for p in patients if p.label is not None]
    return SynthSite(profile.site_id, folder, raw_dir, site_yaml, len(patients), len(files),
                     sum(labels) / len(labels) if labels else 0.0)


def synthesize_consortium(out: Path, sites: int, patients: int | list[int], seed: int,
                          progress: ProgressCallback | None = None) -> list[SynthSite]:
    """``sites`` sites with ``patients`` patients each (or one count per site)."""
    counts = patients if isinstance(patients, list) else [patients] * sites
    if len(counts) != sites:
        raise ValueError(f"got {len(counts)} patient counts for {sites} sites")
    out.mkdir(parents=True, exist_ok=True)
    written = [synthesize_site(profile_for_site(i), counts[i], seed, out, progress) for i in range(sites)]
    summary = {"seed": seed, "sites": [{"site_id": s.site_id, "patients": s.patients, "files": s.files,
                                        "prevalence": round(s.prevalence, 4),
                                        "site_config": str(s.site_config.relative_to(out))} for s in written]}
    (out / "consortium.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    roster = {s.site_id: load_identity(load_site_config(s.site_config)).public_key() for s in written}
    for path in [out / ROSTER_FILE, *(s.folder / ROSTER_FILE for s in written)]:  # every site keeps a copy
        write_roster(path, roster)
    return written


def _write_truth(path: Path, patients: list[SyntheticPatient]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["pacs_id", "case_id", "label", "true_probability", "conduction", "qrs_ms",
                    "membranous_septum_mm", "calcium_volume_mm3", "prosthesis_type", "has_ct", "has_ecg"])
        for p in patients:
            w.writerow([p.pacs_id, p.case_id, "" if p.label is None else p.label, f"{p.true_probability:.6f}",
                        p.ecg.conduction if p.ecg else "", p.ecg.qrs_ms if p.ecg else "",
                        p.ct.membranous_septum_mm if p.ct else "", p.ct.calcium_volume_mm3 if p.ct else "",
                        p.prosthesis_type, int(p.ct is not None), int(p.ecg is not None)])
