"""Small real implementations of the ingest context for unit tests of single converters."""

from __future__ import annotations

from pathlib import Path

import pydicom

from cohort.dicom.patient import PatientRef, pseudonym
from cohort.errors import UnknownPatientError
from cohort.ingest.base import IngestContext, PatientDirectory
from cohort.siteconfig import IdKind, SiteConfig
from cohort.store import SeriesInStore, StoreView
from cohort.synth.profiles import PROFILES


class DictPatientDirectory(PatientDirectory):
    """Patients from an explicit {(id_kind, value): pacs_id} table; pacs ids map to themselves."""

    def __init__(self, site: SiteConfig, case_to_pacs: dict[str, str] | None = None,
                 known_pacs: set[str] | None = None) -> None:
        self.site = site
        self.case_to_pacs = case_to_pacs or {}
        self.known_pacs = known_pacs

    def resolve(self, id_kind: IdKind, value: str, *, path: Path, field: str) -> PatientRef:
        pacs = value if id_kind == "pacs_id" else self.case_to_pacs.get(value)
        if pacs is None or (self.known_pacs is not None and pacs not in self.known_pacs):
            raise UnknownPatientError(f"unknown {id_kind} {value!r}", path=str(path), field=field)
        return PatientRef(pseudonym(self.site.pseudonym_key, self.site.site_id, pacs), pacs)


class FolderStoreView(StoreView):
    """Series found by reading every DICOM file under a folder (fine for a handful of files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def series_of(self, patient_id: str, modality: str) -> list[SeriesInStore]:
        groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
        for f in sorted(self.folder.rglob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if ds.PatientID == patient_id and ds.Modality == modality:
                groups.setdefault(ds.SeriesInstanceUID, []).append((f, ds))
        out = []
        for series_uid, items in groups.items():
            ds0 = items[0][1]
            out.append(SeriesInStore(patient_id, ds0.StudyInstanceUID, series_uid, modality,
                                     tuple(p for p, _ in items)))
        return out


def make_context(tmp_path: Path, *, site: SiteConfig | None = None, store_folder: Path | None = None,
                 case_to_pacs: dict[str, str] | None = None, digest: str = "0" * 64) -> IngestContext:
    """An IngestContext over a temporary folder, with the first synthetic profile's site config."""
    site = site or PROFILES[0].config
    return IngestContext(site=site, raw_dir=tmp_path, patients=DictPatientDirectory(site, case_to_pacs),
                         store=FolderStoreView(store_folder or tmp_path), input_digest=digest)
