"""The site's patient directory: PACS ids and case numbers -> one pseudonymous PatientID."""

from __future__ import annotations

from pathlib import Path

from cohort.dicom.patient import PatientRef, pseudonym
from cohort.errors import InputError, UnknownPatientError
from cohort.ingest.base import PatientDirectory
from cohort.ingest.csv_reader import read_id_mapping
from cohort.siteconfig import IdKind, SiteConfig


class MappingPatientDirectory(PatientDirectory):
    """Resolves identifiers with the identifier mapping CSV named in ``site.yaml``.

    A PACS id is a patient by itself (its pseudonym is keyed on it); a case number must appear in
    the mapping, otherwise inputs that use it are quarantined with the reason. An unusable mapping
    (e.g. a case number linked to two PACS ids) is quarantined by its converter; case numbers then
    resolve to nothing and every input that needs one says why.
    """

    def __init__(self, site: SiteConfig, raw_dir: Path) -> None:
        self.site = site
        self.case_to_pacs: dict[str, str] = {}
        self.pacs_to_cases: dict[str, tuple[str, ...]] = {}
        self.problem: str | None = None
        if site.identifiers is None:
            self.mapping_path: Path | None = None
            self.problem = ("the site config names no identifier mapping; set identifiers.file, "
                            "identifiers.pacs_id_column and identifiers.case_id_column in site.yaml")
            return
        self.mapping_path = raw_dir / site.identifiers.file
        if not self.mapping_path.exists():
            self.problem = f"the identifier mapping {self.mapping_path} does not exist (site.yaml: identifiers.file)"
            return
        try:
            table = read_id_mapping(self.mapping_path, site.identifiers)
        except InputError as exc:
            self.problem = f"the identifier mapping is unusable: {exc}"
            return
        self.case_to_pacs = table.case_to_pacs
        self.pacs_to_cases = table.pacs_to_cases

    def resolve(self, id_kind: IdKind, value: str, *, path: Path, field: str) -> PatientRef:
        value = (value or "").strip()
        if not value:
            raise UnknownPatientError("empty patient identifier", path=str(path), field=field)
        if id_kind == "pacs_id":
            pacs = value
        else:
            found = self.case_to_pacs.get(value)
            if found is None:
                mapping = self.mapping_path.name if self.mapping_path is not None else ""
                why = self.problem or f"it is not in the identifier mapping {mapping}"
                raise UnknownPatientError(
                    f"case number {value!r} cannot be linked to a patient: {why}; add the pair to the "
                    "mapping or check which identifier this export uses (site.yaml: id_kind)",
                    path=str(path), field=field)
            pacs = found
        return PatientRef(pseudonym(self.site.pseudonym_key, self.site.site_id, pacs), pacs,
                          self.pacs_to_cases.get(pacs, ()))
