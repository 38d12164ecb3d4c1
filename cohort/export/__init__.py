"""``cohort export``: the harmonized training dataset for the patients a spec selects.

Writes ``OUT/datalist.json`` (a MONAI datalist: one entry per patient with the CT volume as NIfTI,
the 12-lead ECG as a float32 (12, N) array in mV at 500 Hz, the tabular features of
``cohort.export.tabular`` with units, the label, and ``sources``: the UID feeding each input), the
arrays it points to, and ``OUT/manifest.json`` with the spec, the matched object UIDs per patient,
the chosen object of each input and the cohort hash (SHA-256 over the spec, the matched UIDs and the
chosen ones): same inputs, same hash.

Which object feeds which input is ``cohort.export.selection``'s rule (only objects the spec's
conditions select, closest to the index event); ``cohort.export.guard`` refuses the export, before
anything is written, when an input is dated after the label's index event. docs/export.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort.export.ct import write_ct_nifti
from cohort.export.ecg import EXPORT_SAMPLING_RATE, EXPORT_SECONDS, write_ecg_npy
from cohort.export.guard import check_post_index
from cohort.export.selection import ModelInput, PatientSelection, SourceConditions, select_patients
from cohort.export.tabular import TABULAR_FEATURES, tabular_values
from cohort.index.duck import DuckIndex
from cohort.spec.model import CohortSpec

ProgressCallback = Callable[[str, int, int], None]
DATALIST_VERSION = 1
# The selection rules' version, part of the export key and the cohort hash, so an export made under
# other rules is never reused. 1: the latest object of a kind stood in for a missing one; 2: only the
# objects the spec selects, closest to the index event, and the post-index guard.
SELECTION_RULES = 3  # 3: the measurements input (derived SR on the chosen CT series)


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what it holds."""

    out: Path
    cohort_hash: str
    patients: int
    with_ct: int
    with_ecg: int


def export_key(spec: CohortSpec, subset: str | None) -> str:
    """A short key of (spec, subset), used to cache exports inside a store."""
    text = json.dumps({"spec": spec.to_dict(), "subset": subset, "rules": SELECTION_RULES}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sources(sel: PatientSelection) -> dict[str, str | None]:
    return {role.value: (sel.inputs[role].uid if role in sel.inputs else None) for role in ModelInput}


def cohort_hash(spec: CohortSpec, subset: str | None, selections: list[PatientSelection]) -> str:
    """SHA-256 over the spec, the subset, every matched object UID and the UID chosen for each input
    (sorted): reproducibility key."""
    h = hashlib.sha256()
    h.update(json.dumps({"spec": spec.to_dict(), "subset": subset, "rules": SELECTION_RULES},
                        sort_keys=True).encode())
    for sel in sorted(selections, key=lambda s: s.patient_id):
        h.update(json.dumps([sel.patient_id, sel.label, sorted(sel.uids), _sources(sel)], sort_keys=True).encode())
    return h.hexdigest()


def export_cohort(store: Path, spec: CohortSpec, out: Path, *, subset: str | None = None,
                  progress: ProgressCallback | None = None) -> ExportResult:
    """Export every patient of the cohort (or of one of its subsets) with a known label or not.

    Raises:
        PostIndexInputError: an input is dated after the label's index event and the spec does not
            allow that (nothing is written then).
    """
    with DuckIndex.for_store(store, read_only=True) as index:
        selections = select_patients(index, spec, subset)
        check_post_index(spec, selections)
        out.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        manifest_patients: list[dict[str, Any]] = []
        n_ct = n_ecg = 0
        for i, sel in enumerate(selections):
            if progress:
                progress("exporting", i, len(selections))
            # ``ct`` / ``ecg`` null: no object qualifies for that input (never a substitute).
            entry: dict[str, Any] = {"patient": sel.patient_id, "ct": None, "ecg": None,
                                     "tabular": tabular_values(index, sel), "label": sel.label,
                                     "sources": _sources(sel)}
            if sel.ct_files:
                entry["ct"] = write_ct_nifti(sel.ct_files, out / "ct" / f"{sel.patient_id}.nii.gz") \
                    .relative_to(out).as_posix()
                n_ct += 1
            if sel.ecg_file is not None:
                entry["ecg"] = write_ecg_npy(sel.ecg_file, out / "ecg" / f"{sel.patient_id}.npy") \
                    .relative_to(out).as_posix()
                n_ecg += 1
            entries.append(entry)
            manifest_patients.append({
                "patient": sel.patient_id, "label": sel.label, "objects": sorted(sel.uids),
                "index_date": sel.index_date.isoformat() if sel.index_date else None,
                "inputs": {role.value: (sel.inputs[role].describe() if role in sel.inputs else None)
                           for role in ModelInput}})
        if progress:
            progress("exporting", len(selections), len(selections))
    digest = cohort_hash(spec, subset, selections)
    datalist = {"version": DATALIST_VERSION, "cohort_hash": digest, "ecg_sampling_rate": EXPORT_SAMPLING_RATE,
                "ecg_samples": int(EXPORT_SAMPLING_RATE * EXPORT_SECONDS),
                "tabular_features": [{"name": f.name, "unit": f.unit} for f in TABULAR_FEATURES],
                # Only patients with a known label can be trained on; the others are scored by
                # `fl-client predict` (fl_client.predict), in the same form with label null.
                "training": [e for e in entries if e["label"] is not None],
                "unlabelled": [e for e in entries if e["label"] is None]}
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n", encoding="utf-8")
    manifest = {"spec": spec.to_dict(), "subset": subset, "cohort_hash": digest, "selection_rules": SELECTION_RULES,
                "inputs": SourceConditions.of(spec).describe(),
                "features": [f.describe() for f in TABULAR_FEATURES], "patients": manifest_patients}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return ExportResult(out, digest, len(selections), n_ct, n_ecg)
