"""The site's patient directory: PACS ids and case numbers -> one pseudonymous PatientID."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cohort.dicom.patient import PatientRef, pseudonym
from cohort.errors import ConfigError, UnknownPatientError
from cohort.ingest.base import PatientDirectory
from cohort.siteconfig import IdKind, SiteConfig


class MappingPatientDirectory(PatientDirectory):
    """Resolves identifiers with the identifier mapping CSV named in ``site.yaml``.

    A PACS id is a patient by itself (its pseudonym is keyed on it); a case number must appear in
    the mapping, otherwise inputs that use it are quarantined with the reason.
    """

    def __init__(self, site: SiteConfig, raw_dir: Path) -> None:
        self.site = site
        self.mapping_path = raw_dir / site.identifiers.file
        self.case_to_pacs: dict[str, str] = {}
        self.pacs_to_cases: dict[str, list[str]] = {}
        if self.mapping_path.exists():
            self._load()

    def _load(self) -> None:
        ids = self.site.identifiers
        try:
            text = self.mapping_path.read_text(encoding=ids.format.encoding).lstrip("\ufeff")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{self.mapping_path}: not readable as {ids.format.encoding} ({exc.reason} at "
                              f"byte {exc.start}); set identifiers.format.encoding in site.yaml") from None
        reader = csv.DictReader(io.StringIO(text), delimiter=ids.format.delimiter)
        header = reader.fieldnames or []
        for col in (ids.pacs_id_column, ids.case_id_column):
            if col not in header:
                raise ConfigError(f"{self.mapping_path}: column {col!r} not found (columns: {header}); "
                                  "set identifiers.pacs_id_column / case_id_column in site.yaml")
        for row in reader:
            pacs = (row.get(ids.pacs_id_column) or "").strip()
            case = (row.get(ids.case_id_column) or "").strip()
            if pacs and case and case not in self.case_to_pacs:
                self.case_to_pacs[case] = pacs
                self.pacs_to_cases.setdefault(pacs, []).append(case)

    def resolve(self, id_kind: IdKind, value: str, *, path: Path, field: str) -> PatientRef:
        value = (value or "").strip()
        if not value:
            raise UnknownPatientError("empty patient identifier", path=str(path), field=field)
        if id_kind == "pacs_id":
            pacs = value
        else:
            found = self.case_to_pacs.get(value)
            if found is None:
                where = (f"the identifier mapping {self.mapping_path.name}" if self.mapping_path.exists()
                         else f"the identifier mapping (missing: {self.mapping_path})")
                raise UnknownPatientError(
                    f"case number {value!r} is not in {where}; add the pair to the mapping or check "
                    "which identifier this export uses (site.yaml: id_kind)", path=str(path), field=field)
            pacs = found
        return PatientRef(pseudonym(self.site.pseudonym_key, self.site.site_id, pacs), pacs,
                          tuple(self.pacs_to_cases.get(pacs, ())))
