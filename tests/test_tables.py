"""Tabular exports: synthetic writers, the robust CSV reader, and conversion to SR (all four sites)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from cohort.dicom import codes
from cohort.dicom.clinical_sr import ProcedureEntry, fit_lo
from cohort.dicom.patient import pseudonym
from cohort.dicom.validate import dciodvfy, dsrdump, sr_validator
from cohort.errors import InputError
from cohort.ingest.base import InputHead
from cohort.ingest.converters.clinical_csv import (
    IdMappingConverter,
    ProceduresConverter,
    RegistryConverter,
    derive_pacemaker_findings,
    label_of,
    normalise_ops,
)
from cohort.ingest.csv_reader import RowError, parse_number, read_id_mapping, read_table, sniff_table
from cohort.siteconfig import SiteConfig, TableFormat
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES, SiteProfile
from cohort.synth.writers.tables import write_tables
from tests.helpers import make_context

SITE_IDS = [p.site_id for p in PROFILES]
N_PATIENTS = 60


@dataclass
class SiteRun:
    """One synthetic site's tables and what converting them gave."""

    profile: SiteProfile
    patients: list[SyntheticPatient]
    raw: Path
    mapping: Path
    procedures: Path
    registry: Path
    case_to_pacs: dict[str, str]
    procedure_srs: dict[str, Dataset] = field(default_factory=dict)  # by PatientID
    registry_srs: dict[str, Dataset] = field(default_factory=dict)
    rejected: list = field(default_factory=list)

    def patient_id(self, p: SyntheticPatient) -> str:
        cfg = self.profile.config
        return pseudonym(cfg.pseudonym_key, cfg.site_id, p.pacs_id)


def _run_site(profile: SiteProfile, root: Path) -> SiteRun:
    patients = generate_site(11, profile.site_id, N_PATIENTS, profile.mix, profile.pacs_prefix,
                             profile.case_prefix)
    raw = root / profile.site_id
    mapping, procedures, registry = write_tables(patients, profile, raw)
    case_to_pacs = read_id_mapping(mapping, profile.config.identifiers).case_to_pacs
    run = SiteRun(profile, patients, raw, mapping, procedures, registry, case_to_pacs)
    ctx = make_context(raw, site=profile.config, case_to_pacs=case_to_pacs)
    for path, conv, target in ((procedures, ProceduresConverter(), run.procedure_srs),
                               (registry, RegistryConverter(), run.registry_srs)):
        result = conv.convert(path, ctx)
        run.rejected += result.rejected
        for ds in result.datasets:
            assert ds.PatientID not in target, "one SR per patient expected"
            target[ds.PatientID] = ds
    return run


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiteRun]:
    root = tmp_path_factory.mktemp("tables")
    return {p.site_id: _run_site(p, root) for p in PROFILES}


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def _find(item: Dataset, *path: Code) -> list[Dataset]:
    level = [item]
    for concept in path:
        level = [c for it in level for c in _children(it)
                 if c.ConceptNameCodeSequence[0].CodeValue == concept.value
                 and c.ConceptNameCodeSequence[0].CodingSchemeDesignator == concept.scheme_designator]
    return level


def _one(item: Dataset, *path: Code) -> Dataset:
    found = _find(item, *path)
    assert len(found) == 1, f"expected one item at {[c.meaning for c in path]}, found {len(found)}"
    return found[0]


def _num(item: Dataset) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def _code(item: Dataset) -> tuple[str, str]:
    c = item.ConceptCodeSequence[0]
    return c.CodeValue, c.CodingSchemeDesignator


def _as_tuple(code: Code) -> tuple[str, str]:
    return code.value, code.scheme_designator


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _site_with(profile: SiteProfile, section: str, **format_changes: str) -> SiteConfig:
    cfg = profile.config
    table = getattr(cfg, section)
    new_table = table.model_copy(update={"format": table.format.model_copy(update=format_changes)})
    return cfg.model_copy(update={section: new_table})


# --- writers and detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_written_tables_follow_site_config(sites: dict[str, SiteRun], site_id: str) -> None:
    run = sites[site_id]
    reg = run.profile.config.registry
    data = run.registry.read_bytes()
    text = data.decode(reg.format.encoding).lstrip("\ufeff")
    header = text.splitlines()[0].split(reg.format.delimiter)
    assert [h for h in header if h in reg.columns.values()] == list(reg.columns.values())
    rows = [line.split(reg.format.delimiter) for line in text.splitlines()[1:]]
    assert len(rows) == sum(p.has_registry for p in run.patients)
    weights = [r[header.index(reg.columns["weight_kg"])] for r in rows]
    # Weights have one decimal: the site's decimal mark must show up, the other must not.
    assert any(reg.format.decimal in w for w in weights)
    assert not any(("," if reg.format.decimal == "." else ".") in w for w in weights)
    if reg.format.encoding == "cp1252":
        assert b"\xc3" not in data and (b"\xf6" in data or b"\xfc" in data or b"\xe4" in data)
    for name, vmap in reg.value_maps.items():
        column = [r[header.index(reg.columns[name])] for r in rows]
        assert set(column) <= set(vmap), f"{name}: local values only"
    procs = run.procedures.read_bytes().decode(run.profile.config.procedures.format.encoding)
    with_codes = {p.case_id for p in run.patients if p.has_procedures}
    assert {line.split(run.profile.config.procedures.format.delimiter)[0].strip('"\ufeff')
            for line in procs.splitlines()[1:]} == with_codes
    assert len(run.case_to_pacs) == N_PATIENTS


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_each_table_is_recognised_by_its_converter_only(sites: dict[str, SiteRun], site_id: str) -> None:
    run = sites[site_id]
    convs = [IdMappingConverter(), ProceduresConverter(), RegistryConverter()]
    for path, expected in ((run.mapping, "id-mapping"), (run.procedures, "ops-procedures"),
                           (run.registry, "registry")):
        hits = [c.name for c in convs if c.sniff(InputHead.read(path), run.profile.config)]
        assert hits == [expected], path.name
    other = PROFILES[(SITE_IDS.index(site_id) + 2) % 4].config
    assert not any(c.sniff(InputHead.read(run.registry), other) for c in convs)


# --- conversion results ------------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_derived_label_equals_generative_label(sites: dict[str, SiteRun], site_id: str) -> None:
    run = sites[site_id]
    assert not run.rejected
    for p in run.patients:
        sr = run.procedure_srs.get(run.patient_id(p))
        if not p.has_procedures:
            assert sr is None
            assert p.label is None
            continue
        assert sr is not None
        tavi = _one(sr, codes.TAVI_PROCEDURE)
        assert _one(tavi, codes.TAVI_DATE).Date == p.tavi_date.strftime("%Y%m%d")
        label_items = _find(tavi, codes.PACEMAKER_AFTER_TAVI)
        derived = None if not label_items else int(_code(label_items[0]) == _as_tuple(codes.YES))
        assert derived == p.label, p.pacs_id
        in_situ = _find(sr, codes.PATIENT_CHARACTERISTICS, codes.PACEMAKER_IN_SITU)
        assert bool(in_situ) == p.prior_pacemaker
        days = _find(tavi, codes.DAYS_TAVI_TO_PACEMAKER)
        expected_days = None if p.prior_pacemaker else p.pacemaker_after_days
        assert (_num(days[0]) if days else None) == expected_days
    labels = [p.label for p in run.patients]
    assert 0 in labels  # every site has negatives; positives are checked across sites below


def test_sites_have_positive_and_not_applicable_labels(sites: dict[str, SiteRun]) -> None:
    labels = [p.label for run in sites.values() for p in run.patients]
    assert labels.count(1) >= 3
    assert any(p.prior_pacemaker and p.has_procedures for run in sites.values() for p in run.patients)


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_registry_values_round_trip(sites: dict[str, SiteRun], site_id: str) -> None:
    run = sites[site_id]
    with_registry = [p for p in run.patients if p.has_registry]
    assert len(run.registry_srs) == len(with_registry)
    for p in with_registry:
        sr = run.registry_srs[run.patient_id(p)]
        chars = (codes.PATIENT_CHARACTERISTICS,)
        assert _num(_one(sr, *chars, codes.BODY_HEIGHT)) == p.height_cm
        assert _num(_one(sr, *chars, codes.BODY_WEIGHT)) == p.weight_kg
        assert _num(_one(sr, *chars, codes.SUBJECT_AGE)) == p.age_at_tavi
        assert _code(_one(sr, *chars, codes.SUBJECT_SEX))[0] == p.sex
        assert _code(_one(sr, codes.HISTORY, codes.NYHA_CLASS)) == _as_tuple(codes.NYHA_CLASSES[p.nyha])
        dm = _one(sr, codes.HISTORY, codes.HISTORY_OF_DIABETES)
        assert _code(dm) == _as_tuple(codes.YES if p.diabetes != "none" else codes.NO)
        treatment = _find(dm, codes.DIABETES_TREATMENT)
        expected = {"none": None, "diet": codes.DIABETES_DIET, "oral": codes.DIABETES_ORAL,
                    "insulin": codes.DIABETES_INSULIN}[p.diabetes]
        assert (_code(treatment[0]) if treatment else None) == (expected and _as_tuple(expected))
        assert _num(_one(sr, codes.LVEF)) == p.lvef_percent
        tavi = _one(sr, codes.TAVI_PROCEDURE)
        assert _one(tavi, codes.TAVI_DATE).Date == p.tavi_date.strftime("%Y%m%d")
        prosthesis = (codes.SELF_EXPANDING_PROSTHESIS if p.prosthesis_type == "self-expanding"
                      else codes.BALLOON_EXPANDABLE_PROSTHESIS)
        assert _code(_one(tavi, codes.PROSTHESIS_TYPE)) == _as_tuple(prosthesis)
        assert _num(_one(tavi, codes.PROSTHESIS_SIZE)) == p.prosthesis_size_mm
        route = {"transfemoral": codes.TRANSFEMORAL_ACCESS, "transapical": codes.TRANSAPICAL_ACCESS,
                 "transaxillary": codes.TRANSAXILLARY_ACCESS}[p.access_route]
        assert _code(_one(tavi, codes.ACCESS_ROUTE)) == _as_tuple(route)
        assert _code(_one(tavi, codes.VALVE_IN_VALVE)) == _as_tuple(codes.YES if p.valve_in_valve else codes.NO)


def test_documents_are_distinct_and_in_the_patients_documents_study(sites: dict[str, SiteRun]) -> None:
    run = sites["klinikum-sued"]
    all_srs = list(run.procedure_srs.values()) + list(run.registry_srs.values())
    assert len({ds.SOPInstanceUID for ds in all_srs}) == len(all_srs)
    ctx = make_context(run.raw, site=run.profile.config)
    for ds in all_srs:
        assert ds.StudyInstanceUID == ctx.patient_uid(ds.PatientID, "documents-study")
        assert ds.PatientID != "" and ds.PatientID not in run.case_to_pacs.values()
    schemes = {i.CodingSchemeDesignator: i for i in next(iter(run.procedure_srs.values()))
               .CodingSchemeIdentificationSequence}
    assert schemes["99OPS"].CodingSchemeName.startswith("OPS") and schemes["99OPS"].CodingSchemeVersion
    assert codes.LOCAL_SCHEME in schemes


@pytest.mark.validators
def test_srs_pass_reference_validators(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    chosen: list[Dataset] = []
    for run in sites.values():
        by_label: dict[object, list[Dataset]] = {}
        for p in run.patients:
            if p.has_procedures:
                kind = "prior" if p.prior_pacemaker else p.label
                by_label.setdefault(kind, []).append(run.procedure_srs[run.patient_id(p)])
        chosen += [docs[0] for docs in by_label.values()]
        chosen += list(run.registry_srs.values())[:2]
    paths = []
    for i, ds in enumerate(chosen):
        path = tmp_path / f"sr{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    for result in dciodvfy(paths) + sr_validator(paths) + dsrdump(paths):
        assert result.errors == [], (result.path, result.errors)


def test_conversion_and_writing_are_deterministic(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    profile = PROFILES[3]
    again = _run_site(profile, tmp_path)
    first = sites[profile.site_id]
    for a, b in ((first.mapping, again.mapping), (first.procedures, again.procedures),
                 (first.registry, again.registry)):
        assert a.read_bytes() == b.read_bytes()
    for pid, ds in first.procedure_srs.items():
        assert _dicom_bytes(ds) == _dicom_bytes(again.procedure_srs[pid])
    for pid, ds in first.registry_srs.items():
        assert _dicom_bytes(ds) == _dicom_bytes(again.registry_srs[pid])


# --- bad inputs ----------------------------------------------------------------------------------------


def _convert(run: SiteRun, conv, path: Path, site: SiteConfig | None = None, case_to_pacs=None):
    ctx = make_context(run.raw, site=site or run.profile.config,
                       case_to_pacs=run.case_to_pacs if case_to_pacs is None else case_to_pacs)
    return conv.convert(path, ctx)


def test_cp1252_file_declared_utf8_names_setting_and_offset(sites: dict[str, SiteRun]) -> None:
    run = sites["klinikum-sued"]
    site = _site_with(run.profile, "registry", encoding="utf-8")
    with pytest.raises(InputError) as err:
        _convert(run, RegistryConverter(), run.registry, site)
    msg = str(err.value)
    assert "registry.format.encoding" in msg and "cp1252" in msg and "offset" in msg
    assert str(run.registry) in msg


def test_utf8_file_declared_cp1252_is_refused(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["klinikum-sued"]
    path = tmp_path / "registry_utf8.csv"
    path.write_bytes(run.registry.read_bytes().decode("cp1252").encode("utf-8"))
    with pytest.raises(InputError) as err:
        _convert(run, RegistryConverter(), path)
    assert "registry.format.encoding: utf-8" in str(err.value)
    # Declared correctly, the same bytes convert.
    fixed = _site_with(run.profile, "registry", encoding="utf-8")
    assert len(_convert(run, RegistryConverter(), path, fixed).datasets) == len(run.registry_srs)


def test_missing_column_suggests_the_close_header(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["klinikum-sued"]
    path = tmp_path / "renamed.csv"
    data = run.registry.read_bytes().replace("Gewicht [kg]".encode("cp1252"), b"Gewicht (kg)", 1)
    path.write_bytes(data)
    assert RegistryConverter().sniff(InputHead.read(path), run.profile.config)
    with pytest.raises(InputError) as err:
        _convert(run, RegistryConverter(), path)
    msg = str(err.value)
    assert "column 'Gewicht [kg]' not found" in msg
    assert "did you mean 'Gewicht (kg)'?" in msg
    assert "registry.columns.weight_kg" in msg


def test_wrong_delimiter_is_named(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["herzzentrum-west"]
    path = tmp_path / "semicolon.tsv"
    path.write_bytes(run.registry.read_bytes().replace(b"\t", b";"))
    with pytest.raises(InputError, match=r"delimited by ';' but registry.format.delimiter is '\\t'"):
        _convert(run, RegistryConverter(), path)


def _rewrite_line(src: Path, dst: Path, encoding: str, line_no: int, old: str, new: str) -> str:
    lines = src.read_bytes().decode(encoding).splitlines(keepends=True)
    assert old in lines[line_no - 1], (old, lines[line_no - 1])
    lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)
    dst.write_bytes("".join(lines).encode(encoding))
    return lines[line_no - 1].rstrip("\r\n")


def test_bad_date_rejects_only_that_row(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["klinikum-sued"]
    first = next(p for p in run.patients if p.has_registry)
    path = tmp_path / "bad_date.csv"
    bad_line = _rewrite_line(run.registry, path, "cp1252", 2, first.tavi_date.strftime("%d.%m.%Y"), "31.02.2021")
    result = _convert(run, RegistryConverter(), path)
    assert len(result.datasets) == len(run.registry_srs) - 1
    [rej] = result.rejected
    assert rej.where == "row 2" and rej.content == bad_line
    assert "'31.02.2021'" in rej.reason and "registry.format.date_format '%d.%m.%Y'" in rej.reason


def test_decimal_comma_where_point_is_configured(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["herzzentrum-west"]
    patient = next(p for p in run.patients if p.has_registry and not p.weight_kg.is_integer())
    rows = run.registry.read_text(encoding="utf-8").splitlines()
    line_no = next(i + 1 for i, line in enumerate(rows) if line.startswith(patient.case_id + "\t"))
    path = tmp_path / "comma.tsv"
    _rewrite_line(run.registry, path, "utf-8", line_no, f"\t{patient.weight_kg:g}\t",
                  f"\t{patient.weight_kg:g}\t".replace(".", ","))
    result = _convert(run, RegistryConverter(), path)
    [rej] = result.rejected
    assert rej.where == f"row {line_no}"
    assert "registry.format.decimal is '.'" in rej.reason and "'weight'" in rej.reason
    assert len(result.datasets) == len(run.registry_srs) - 1


def test_unknown_value_map_value_lists_valid_values(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["klinikum-sued"]
    line = run.registry.read_bytes().decode("cp1252").splitlines()[1]
    sex = "männlich" if ";männlich;" in line else "weiblich"
    path = tmp_path / "divers.csv"
    _rewrite_line(run.registry, path, "cp1252", 2, f";{sex};", ";divers;")
    [rej] = _convert(run, RegistryConverter(), path).rejected
    assert "unknown value 'divers'" in rej.reason and "'männlich', 'weiblich'" in rej.reason
    assert "registry.value_maps.sex" in rej.reason


def test_case_not_in_mapping_rejects_its_rows(sites: dict[str, SiteRun]) -> None:
    run = sites["uk-nord"]
    victim = next(p for p in run.patients if p.has_procedures and p.has_registry)
    mapping = {k: v for k, v in run.case_to_pacs.items() if k != victim.case_id}
    result = _convert(run, ProceduresConverter(), run.procedures, case_to_pacs=mapping)
    assert len(result.datasets) == len(run.procedure_srs) - 1
    assert result.rejected and all(victim.case_id in r.reason and "identifier mapping" in r.reason
                                   for r in result.rejected)
    assert all(r.content.startswith(victim.case_id) for r in result.rejected)
    reg = _convert(run, RegistryConverter(), run.registry, case_to_pacs=mapping)
    assert [r.where for r in reg.rejected] and len(reg.datasets) == len(run.registry_srs) - 1


def test_mapping_conflicts_raise_but_exact_duplicates_do_not(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["uni-ost"]
    text = run.mapping.read_bytes().decode("cp1252")
    first = text.splitlines()[1]
    dup = tmp_path / "dup.csv"
    dup.write_bytes((text + first + "\r\n").encode("cp1252"))
    assert _convert(run, IdMappingConverter(), dup).datasets == []
    pacs, case = first.split(";")
    conflict = tmp_path / "conflict.csv"
    conflict.write_bytes((text + f"UO9999999;{case}\r\n").encode("cp1252"))
    with pytest.raises(InputError) as err:
        _convert(run, IdMappingConverter(), conflict)
    assert f"case id {case!r} is linked to two PACS ids" in str(err.value)
    assert pacs in str(err.value) and "UO9999999" in str(err.value)


@pytest.mark.parametrize("content,expected", [
    (b"", "the file is empty"), (b"  \r\n", "the file is empty"),
])
def test_empty_file_is_refused(sites: dict[str, SiteRun], tmp_path: Path, content: bytes, expected: str) -> None:
    run = sites["uk-nord"]
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        _convert(run, ProceduresConverter(), path)


@pytest.mark.parametrize("which", ["procedures", "registry", "mapping"])
def test_header_only_is_refused(sites: dict[str, SiteRun], tmp_path: Path, which: str) -> None:
    run = sites["klinikum-sued"]
    src = getattr(run, which)
    path = tmp_path / "header_only.csv"
    path.write_bytes(src.read_bytes().splitlines(keepends=True)[0])
    conv = {"procedures": ProceduresConverter(), "registry": RegistryConverter(),
            "mapping": IdMappingConverter()}[which]
    with pytest.raises(InputError, match="header row .* but no data rows"):
        _convert(run, conv, path)


def test_all_rows_failing_quarantines_the_file(sites: dict[str, SiteRun]) -> None:
    run = sites["klinikum-sued"]
    site = _site_with(run.profile, "procedures", date_format="%Y-%m-%d")
    with pytest.raises(InputError, match=r"none of the \d+ data rows could be converted; row 2: .*date"):
        _convert(run, ProceduresConverter(), run.procedures, site)


def test_extra_columns_are_tolerated_and_reported(sites: dict[str, SiteRun]) -> None:
    run = sites["uk-nord"]
    reg = run.profile.config.registry
    table = read_table(run.registry, reg.format, reg.columns, setting="registry")
    assert table.unknown_columns == ["URGENCY"]
    assert table.rows[0].line == 2 and table.rows[0].values["case_id"]


def test_row_with_wrong_field_count_is_rejected(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    run = sites["uk-nord"]
    path = tmp_path / "short.csv"
    lines = run.procedures.read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(3, "F1,5-377.1\n")
    path.write_text("".join(lines), encoding="utf-8")
    result = _convert(run, ProceduresConverter(), path)
    [rej] = result.rejected
    assert rej.where == "row 4" and rej.content == "F1,5-377.1" and "procedures.format.delimiter" in rej.reason
    assert len(result.datasets) == len(run.procedure_srs)


# --- label rule and cell parsers ---------------------------------------------------------------------

TAVI_DAY = date(2021, 5, 10)


def _entries(*items: tuple[str, int]) -> list[ProcedureEntry]:
    return [ProcedureEntry(code, date.fromordinal(TAVI_DAY.toordinal() + offset), "t") for code, offset in items]


@pytest.mark.parametrize("items,label,days,before", [
    ((("5-35a.00", 0), ("5-377.30", 3)), 1, 3, False),
    ((("5-35a.01", 0), ("5-377.1", 0)), 1, 0, False),
    ((("5-35a.00", 0), ("5-377.40", 30)), 1, 30, False),
    ((("5-35a.00", 0), ("5-377.2", 31)), 0, 31, False),
    ((("5-35a.00", 0), ("8-642", 0), ("5-377.8", 5), ("5-377.50", 7), ("5-378.52", 9)), 0, None, False),
    ((("5-35a.00", 0), ("5-377.31", -2000), ("5-377.30", 4)), None, None, True),
    ((("1-275.0", -10), ("5-377.30", 4)), None, None, False),
    ((("5-35a.00", 40), ("5-35a.00", 0), ("5-377.30", 35)), 0, 35, False),
], ids=["positive", "same-day", "day-30", "day-31", "distractors", "prior", "no-tavi", "first-tavi"])
def test_label_rule(items, label, days, before) -> None:
    findings = derive_pacemaker_findings(_entries(*items))
    assert label_of(findings) == label
    assert findings.days_to_pacemaker == days
    assert findings.pacemaker_before_tavi == before


def test_ops_codes_are_normalised_or_rejected() -> None:
    assert normalise_ops(" 5-35A.00:R ") == "5-35a.00"
    assert normalise_ops("8-642") == "8-642"
    for bad in ("535a00", "5-35a.000", "", "TAVI"):
        with pytest.raises(RowError, match="is not an OPS code"):
            normalise_ops(bad)


def test_number_parser_honours_the_decimal_mark() -> None:
    comma, point = TableFormat(decimal=","), TableFormat(decimal=".")
    assert parse_number("81,3", comma, column="w", setting="registry") == 81.3
    assert parse_number("81.3", point, column="w", setting="registry") == 81.3
    with pytest.raises(RowError, match="registry.format.decimal is ','"):
        parse_number("81.3", comma, column="w", setting="registry")
    with pytest.raises(RowError, match="not a number"):
        parse_number("n/a", point, column="w", setting="registry")


def test_sniff_requires_configured_headers() -> None:
    fmt = TableFormat(delimiter=";", encoding="cp1252")
    head = "Fallnummer;Körpergröße [cm]\r\n1;2\r\n".encode("cp1252")
    assert sniff_table(head, fmt, ["Fallnummer", "Körpergröße [cm]"])
    assert not sniff_table(head, fmt, ["Fallnummer", "Gewicht [kg]"])
    # Wrong encoding declared: still recognised, so the converter can report the encoding.
    assert sniff_table(head, TableFormat(delimiter=";"), ["Körpergröße [cm]"])


def test_long_titles_fit_lo_in_bytes() -> None:
    title = "Zusatzinformationen zu Materialien: Verwendung eines Gefäßverschlusssystems"
    short = fit_lo(title)
    assert len(short.encode("utf-8")) <= 64 and title.startswith(short) and not short.endswith(" ")


def test_written_sr_reads_back_with_pydicom(sites: dict[str, SiteRun], tmp_path: Path) -> None:
    ds = next(iter(sites["klinikum-sued"].procedure_srs.values()))
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    titles = [_code(i) for i in _find(back, codes.HISTORY, codes.PAST_SURGICAL_HISTORY)]
    assert titles and all(s == "99OPS" for _, s in titles)
