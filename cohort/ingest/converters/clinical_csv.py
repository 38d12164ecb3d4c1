"""Converters for the tabular exports: identifier mapping, OPS procedure codes, TAVI registry.

Label rule (post-TAVI permanent pacemaker), applied per patient to all OPS codes of that patient
in one procedures export:

* TAVI code: ``5-35a.0*`` (5-35a.00 transvascular, 5-35a.01 transapical). The TAVI date is the
  date of the earliest TAVI code.
* Permanent pacemaker code: ``5-377.1``, ``5-377.2``, ``5-377.3*``, ``5-377.4*``. Not a pacemaker:
  defibrillators ``5-377.5*``-``5-377.7*``, the loop recorder ``5-377.8``, any change / revision /
  removal ``5-378.*`` and temporary pacing ``8-642``.
* **not applicable** (no label item written; "Cardiac pacemaker in situ" = Yes): a pacemaker code
  dated before the TAVI date.
* **positive** ("Permanent pacemaker implanted after TAVI" = Yes): otherwise, when the first
  pacemaker code on or after the TAVI date lies 0 to 30 days (inclusive) after it.
* **negative** (= No): a TAVI code, no pacemaker code before it and none within those 30 days
  (a later one still gives "Days from TAVI to pacemaker implantation").
* **unknown** (no label item): no TAVI code among the patient's rows.

Empty registry cells mean "not recorded": that item is left out of the SR. Rows of the same
patient with the same OPS code and date are kept once (double exports carry no new fact).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import ClassVar

from pydicom.dataset import Dataset

from cohort.dicom.clinical_sr import (
    ACCESS_ROUTE_CODES,
    DIABETES_TREATMENT_CODES,
    PROSTHESIS_TYPE_CODES,
    SEX_CODES,
    DocumentIds,
    PacemakerFindings,
    ProcedureEntry,
    RegistryRecord,
    procedure_history_tree,
    registry_tree,
    sr_document,
)
from cohort.dicom.codes import NYHA_CLASSES
from cohort.dicom.patient import PatientRef
from cohort.errors import InputError
from cohort.ingest.base import (
    HEAD_BYTES,
    STAGE_TABLES,
    ConversionResult,
    Converter,
    IngestContext,
    InputHead,
    RejectedPart,
)
from cohort.ingest.csv_reader import (
    RowError,
    Table,
    TableRow,
    delimited_header,
    map_value,
    parse_date,
    parse_number,
    read_id_mapping,
    read_table,
    sniff_table,
)
from cohort.siteconfig import REGISTRY_FIELDS, SiteConfig

LABEL_WINDOW_DAYS = 30
PROCEDURES_SERIES_NUMBER = 801
REGISTRY_SERIES_NUMBER = 802
_OPS_PATTERN = re.compile(r"^[1-9]-[0-9]{2}[0-9a-z](\.[0-9a-z]{1,2})?$")
_PACEMAKER_PREFIXES = ("5-377.1", "5-377.2", "5-377.3", "5-377.4")


def normalise_ops(text: str) -> str:
    """An OPS code in catalogue spelling; raises RowError for anything else.

    Spaces are removed, letters lower-cased and a side suffix (``:L``, ``:R``, ``:B``) dropped.
    """
    code = re.sub(r"\s+", "", text).lower()
    code = re.sub(r":[lrb]$", "", code)
    if not _OPS_PATTERN.match(code):
        raise RowError(f"{text!r} is not an OPS code (expected the form '5-35a.00' or '8-642')")
    return code


def is_tavi(code: str) -> bool:
    """Transcatheter aortic valve implantation, any access route (5-35a.0*)."""
    return code.startswith("5-35a.0")


def is_permanent_pacemaker(code: str) -> bool:
    """Pacemaker implantation (5-377.1/.2/.3*/.4*); defibrillators, recorders, revisions are not."""
    return code.startswith(_PACEMAKER_PREFIXES)


def derive_pacemaker_findings(entries: Sequence[ProcedureEntry]) -> PacemakerFindings:
    """Apply the label rule of this module's docstring to one patient's procedures."""
    tavi_dates = sorted(e.performed for e in entries if is_tavi(e.code))
    if not tavi_dates:
        return PacemakerFindings(None, None, None, False)
    tavi = tavi_dates[0]
    pacemakers = sorted(e.performed for e in entries if is_permanent_pacemaker(e.code))
    before = any(d < tavi for d in pacemakers)
    if before:
        return PacemakerFindings(tavi, None, None, True)
    after = [d for d in pacemakers if d >= tavi]
    days = (after[0] - tavi).days if after else None
    return PacemakerFindings(tavi, days is not None and days <= LABEL_WINDOW_DAYS, days, False)


def label_of(findings: PacemakerFindings) -> int | None:
    """1 / 0 for a positive / negative label, None when not applicable or unknown."""
    return None if findings.pacemaker_after_tavi is None else int(findings.pacemaker_after_tavi)


def _fallback_title(code: str) -> str:
    if is_tavi(code):
        return "Transcatheter aortic valve implantation"
    if is_permanent_pacemaker(code):
        return "Implantation of cardiac pacemaker"
    return f"OPS {code}"


def _all_rejected(path: Path, table: Table, rejected: list[RejectedPart]) -> InputError:
    # Every row failing usually means a wrong setting, not bad data: quarantine the file with examples.
    examples = "; ".join(f"{r.where}: {r.reason}" for r in rejected[:3])
    return InputError(f"none of the {len(rejected)} data rows could be converted; {examples}", path=str(path))


def _resolve(ctx: IngestContext, row: TableRow, path: Path, column: str) -> PatientRef:
    case = row.values["case_id"]
    if not case:
        raise RowError(f"column {column!r} is empty")
    try:
        return ctx.patients.resolve("case_id", case, path=path, field=column)
    except InputError:
        if ctx.site.identifiers is None:
            raise RowError(f"case id {case!r} cannot be linked to a patient: the site config names no "
                           "identifier mapping; set identifiers.file, identifiers.pacs_id_column and "
                           "identifiers.case_id_column in site.yaml") from None
        raise RowError(f"case id {case!r} is not in the identifier mapping; add it to "
                       f"{ctx.site.identifiers.file} or correct the case id") from None


class IdMappingConverter(Converter):
    """The PACS id <-> case id mapping: checked here; the patient directory reads it itself."""

    name: ClassVar[str] = "id-mapping"
    stage: ClassVar[int] = STAGE_TABLES
    description: ClassVar[str] = "identifier mapping CSV (PACS id <-> case id)"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        ids = site.identifiers
        return ids is not None and sniff_table(head.data, ids.format, [ids.pacs_id_column, ids.case_id_column])

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        if ctx.site.identifiers is None:
            raise InputError("the site config names no identifier mapping; set identifiers in site.yaml",
                             path=str(path), field="identifiers")
        mapping = read_id_mapping(path, ctx.site.identifiers)
        if not mapping.case_to_pacs:
            raise InputError("no row links a PACS id to a case id; "
                             + "; ".join(f"{r.where}: {r.reason}" for r in mapping.rejected[:3]), path=str(path))
        return ConversionResult(datasets=[], rejected=mapping.rejected)


class ProceduresConverter(Converter):
    """OPS procedure codes -> one procedure-history SR per patient with the derived label items."""

    name: ClassVar[str] = "ops-procedures"
    stage: ClassVar[int] = STAGE_TABLES
    description: ClassVar[str] = "procedure codes (OPS) CSV export"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        if site.procedures is None:
            return False
        cols = site.procedures.columns
        return sniff_table(head.data, site.procedures.format, [cols["case_id"], cols["code"]])

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        table_cfg = ctx.site.procedures
        if table_cfg is None:
            raise InputError("procedures export found but site.yaml has no 'procedures' section; add it",
                             path=str(path), field="procedures")
        cols, fmt = table_cfg.columns, table_cfg.format
        table = read_table(path, fmt, cols, setting="procedures")
        rejected = list(table.rejected)
        patients: dict[str, PatientRef] = {}
        entries: dict[str, dict[tuple[str, date], ProcedureEntry]] = {}
        for row in table.rows:
            try:
                code = normalise_ops(row.values["code"])
                day = parse_date(row.values["date"], fmt, column=cols["date"], setting="procedures")
                patient = _resolve(ctx, row, path, cols["case_id"])
            except RowError as exc:
                rejected.append(RejectedPart(row.where, str(exc), row.text))
                continue
            title = row.values.get("description") or _fallback_title(code)
            patients[patient.patient_id] = patient
            entries.setdefault(patient.patient_id, {}).setdefault((code, day), ProcedureEntry(code, day, title))
        if not entries:
            raise _all_rejected(path, table, rejected)
        datasets = [self._document(patients[pid], list(entries[pid].values()), ctx) for pid in sorted(entries)]
        return ConversionResult(datasets=datasets, rejected=rejected)

    def _document(self, patient: PatientRef, entries: list[ProcedureEntry], ctx: IngestContext) -> Dataset:
        pid = patient.patient_id
        root = procedure_history_tree(entries, derive_pacemaker_findings(entries))
        ids = DocumentIds(study_uid=ctx.patient_uid(pid, "documents-study"),
                          series_uid=ctx.uid(self.name, pid, "series"), sop_uid=ctx.uid(self.name, pid, "sr"),
                          series_number=PROCEDURES_SERIES_NUMBER, series_description="OPS procedure history")
        return sr_document(root, patient, ids, max(e.performed for e in entries))


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    unit: str


# Plausible ranges: a value outside is far more likely a unit or column mix-up than a patient.
_RANGES = {
    "age": _Range(18, 120, "years"), "height_cm": _Range(100, 230, "cm"), "weight_kg": _Range(25, 300, "kg"),
    "lvef_percent": _Range(5, 90, "%"), "prosthesis_size_mm": _Range(14, 40, "mm"),
}
_VOCABULARY: dict[str, tuple[str, ...]] = {
    "sex": tuple(SEX_CODES), "nyha": tuple(str(k) for k in NYHA_CLASSES),
    "diabetes": ("none", *DIABETES_TREATMENT_CODES), "access_route": tuple(ACCESS_ROUTE_CODES),
    "prosthesis_type": tuple(PROSTHESIS_TYPE_CODES), "valve_in_valve": ("true", "false"),
}


class RegistryConverter(Converter):
    """Registry (IQTIG-like) records -> one registry SR per row."""

    name: ClassVar[str] = "registry"
    stage: ClassVar[int] = STAGE_TABLES
    description: ClassVar[str] = "TAVI registry (IQTIG-like) CSV export"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        if site.registry is None:
            return False
        cols = site.registry.columns
        others = [v for k, v in cols.items() if k != "case_id"]
        # Half of the columns suffice, so an export with a renamed column still gets a clear error.
        return sniff_table(head.data, site.registry.format, [cols["case_id"]], others, 0.5)

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        cfg = ctx.site.registry
        if cfg is None:
            raise InputError("registry export found but site.yaml has no 'registry' section; add it",
                             path=str(path), field="registry")
        table = read_table(path, cfg.format, cfg.columns, setting="registry")
        rejected = list(table.rejected)
        first_row: dict[str, int] = {}
        per_patient: dict[str, int] = {}
        datasets = []
        for row in table.rows:
            try:
                record = self.parse_row(row, ctx.site)
                patient = _resolve(ctx, row, path, cfg.columns["case_id"])
                case = row.values["case_id"]
                if case in first_row:
                    raise RowError(f"duplicate record for case id {case!r}; the record of row {first_row[case]} "
                                   "was converted")
            except RowError as exc:
                rejected.append(RejectedPart(row.where, str(exc), row.text))
                continue
            first_row[case] = row.line
            pid = patient.patient_id
            per_patient[pid] = per_patient.get(pid, 0) + 1
            n = per_patient[pid]
            ids = DocumentIds(study_uid=ctx.patient_uid(pid, "documents-study"),
                              series_uid=ctx.uid(self.name, pid, "series"),
                              sop_uid=ctx.uid(self.name, pid, str(n), "sr"),
                              series_number=REGISTRY_SERIES_NUMBER, series_description="TAVI registry record",
                              instance_number=n)
            datasets.append(sr_document(registry_tree(record), patient, ids, record.tavi_date))
        if not datasets:
            raise _all_rejected(path, table, rejected)
        return ConversionResult(datasets=datasets, rejected=rejected)

    @staticmethod
    def parse_row(row: TableRow, site: SiteConfig) -> RegistryRecord:
        """Canonical values of one registry row; raises RowError naming the column and the fix."""
        cfg = site.registry
        assert cfg is not None
        fmt, cols = cfg.format, cfg.columns
        values: dict[str, object] = {}
        for name in REGISTRY_FIELDS:
            if name == "case_id" or name not in cols:
                continue
            raw = row.values[name]
            if not raw:
                if name == "tavi_date":
                    raise RowError(f"column {cols[name]!r}: the procedure date is required")
                continue
            text = map_value(raw, cfg.value_maps.get(name), column=cols[name], setting="registry",
                             canonical_field=name)
            if name == "tavi_date":
                values[name] = parse_date(text, fmt, column=cols[name], setting="registry")
            elif name in _RANGES:
                values[name] = _in_range(parse_number(text, fmt, column=cols[name], setting="registry"),
                                         _RANGES[name], cols[name])
            else:
                values[name] = _canonical(text, name, cols[name], raw, name in cfg.value_maps)
        if "tavi_date" not in values:
            raise RowError("registry.columns.tavi_date is not set; the procedure date is required")
        nyha = values.pop("nyha", None)
        viv = values.pop("valve_in_valve", None)
        return RegistryRecord(nyha=int(str(nyha)) if nyha is not None else None,
                              valve_in_valve=viv == "true" if viv is not None else None,
                              **values)  # type: ignore[arg-type]


class UnmappedTableConverter(Converter):
    """A delimited table that no table setting of site.yaml describes: refused, naming what to set.

    Registered after every other format, so it sees only tables the mapped converters did not take.
    A table needs its column mapping: what a column means cannot be told from its content.
    """

    name: ClassVar[str] = "unmapped-table"
    stage: ClassVar[int] = STAGE_TABLES
    description: ClassVar[str] = "a CSV table no table setting in site.yaml describes"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        return delimited_header(head.data) is not None

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        found = delimited_header(path.read_bytes()[:HEAD_BYTES])
        delimiter, header = found if found is not None else (",", [])
        columns = ", ".join(repr(h) for h in header[:12]) + (", ..." if len(header) > 12 else "")
        where = (f"site {ctx.site.site_id!r} has no site.yaml (this ingest runs with defaults): write one and "
                 "pass it with --site-config" if ctx.site.source_file is None or _generated(ctx.site)
                 else f"{ctx.site.source_file} describes no table with these columns")
        raise InputError(
            f"a table (delimited by {delimiter!r}; columns {columns}) needs a column mapping, and {where}; set "
            "identifiers (file, pacs_id_column, case_id_column) for a PACS id <-> case number mapping, "
            "procedures.columns for OPS procedure codes or registry.columns for registry records, with "
            f"format.delimiter {delimiter!r} and format.encoding", path=str(path), field="site.yaml")


def _generated(site: SiteConfig) -> bool:
    """The site config an ingest without site.yaml generated (kept in STORE/.ingest/)."""
    return site.source_file is not None and Path(site.source_file).parent.name == ".ingest"


def _in_range(value: float, rng: _Range, column: str) -> float:
    if not math.isfinite(value) or not rng.low <= value <= rng.high:
        raise RowError(f"column {column!r}: {value:g} is outside the plausible range {rng.low:g}-{rng.high:g} "
                       f"{rng.unit}; check the unit and the column mapping")
    return value


def _canonical(text: str, name: str, column: str, raw: str, mapped: bool) -> str:
    valid = _VOCABULARY[name]
    if text in valid:
        return text
    if mapped:
        raise RowError(f"column {column!r}: {raw!r} maps to {text!r}, which is not one of {', '.join(valid)}; "
                       f"correct registry.value_maps.{name} in site.yaml")
    raise RowError(f"column {column!r}: unknown value {raw!r}; valid values: {', '.join(valid)} "
                   f"(or add registry.value_maps.{name} in site.yaml to translate local values)")
