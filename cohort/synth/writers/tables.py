"""Synthetic tabular exports: identifier mapping, OPS procedure codes and the TAVI registry.

Each file is written the way the site's ``site.yaml`` says it reads it (column names, delimiter,
decimal mark, encoding, date format, local values through the inverted value maps), plus the quirks
real exports have: extra columns nobody mapped, a UTF-8 BOM at one site, CRLF line ends with
Windows-1252. The procedures table carries distractor codes that the label rule must ignore
(temporary pacing, loop recorders, defibrillators, pacemaker revisions, unrelated procedures). The
generative label itself is never written; it follows from the codes.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from cohort.errors import ConfigError
from cohort.siteconfig import REGISTRY_FIELDS, TableFormat
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile

# German OPS titles as the hospital information systems print them (synthetic; not a catalogue copy).
OPS_TITLES: dict[str, str] = {
    "1-275.0": "Koronarangiographie ohne weitere Maßnahmen",
    "1-275.2": "Koronarangiographie, Druckmessung und Ventrikulographie im linken Ventrikel",
    "3-052": "Transösophageale Echokardiographie [TEE]",
    "5-35a.00": "Implantation eines Aortenklappenersatzes: Transvaskulär",
    "5-35a.01": "Implantation eines Aortenklappenersatzes: Transapikal",
    "8-83b.c6": "Zusatzinformationen zu Materialien: Verwendung eines Gefäßverschlusssystems",
    "8-930": "Monitoring von Atmung, Herz und Kreislauf",
    "8-837.00": "Perkutan-transluminale Gefäßintervention an Koronargefäßen: Ballon-Angioplastie",
    "8-800.c0": "Transfusion von Erythrozytenkonzentrat: 1 TE bis unter 6 TE",
    "5-377.1": "Implantation eines Herzschrittmachers: Einkammersystem",
    "5-377.2": "Implantation eines Herzschrittmachers: Zweikammersystem, mit einer Sonde",
    "5-377.30": "Implantation eines Herzschrittmachers: Zweikammersystem, ohne antitachykarde Stimulation",
    "5-377.31": "Implantation eines Herzschrittmachers: Zweikammersystem, mit antitachykarder Stimulation",
    "5-377.40": "Implantation eines Herzschrittmachers: Biventrikulär, ohne Vorhofelektrode",
    "5-377.50": "Implantation eines Defibrillators: Einkammer-Stimulation",
    "5-377.8": "Implantation eines Ereignis-Rekorders",
    "5-378.52": "Wechsel eines Herzschrittmachers: Aggregatwechsel, Zweikammersystem",
    "5-378.07": "Korrektur eines Herzschrittmachers: Sondenkorrektur",
    "8-642": "Temporäre interne elektrische Stimulation des Herzrhythmus",
}
PACEMAKER_CODES = ("5-377.1", "5-377.2", "5-377.30", "5-377.31", "5-377.40")
_PACEMAKER_SHARES = (0.25, 0.05, 0.55, 0.10, 0.05)


@dataclass(frozen=True)
class _Layout:
    """Where a site keeps its table exports and which quirks they have."""

    procedures_file: str
    registry_file: str
    bom: bool = False
    extra_registry_column: tuple[str, tuple[str, ...]] | None = None  # name, values
    extra_procedures_column: tuple[str, tuple[str, ...]] | None = None


_LAYOUTS = {
    "uk-nord": _Layout("kis/ops_export.csv", "qs/registry_export.csv", bom=True,
                       extra_registry_column=("URGENCY", ("elective", "elective", "urgent"))),
    "klinikum-sued": _Layout("kis/OPS_Export.csv", "qs/QS_HCH_Aortenklappe.csv",
                             extra_registry_column=("Dringlichkeit", ("elektiv", "elektiv", "dringlich"))),
    "herzzentrum-west": _Layout("his/procedures.tsv", "registry/tavi_registry.tsv"),
    "uni-ost": _Layout("kis/prozeduren.csv", "qs/qs_tavi_export.csv",
                       extra_procedures_column=("Station", ("KAR1", "KAR2", "ITS", "HCH3"))),
}


def _layout(site_id: str) -> _Layout:
    for base, layout in _LAYOUTS.items():
        if site_id == base or site_id.startswith(base + "-"):
            return layout
    return _Layout("kis/ops_export.csv", "qs/registry_export.csv")


def write_tables(patients: list[SyntheticPatient], profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the site's identifier mapping, procedures and registry exports; return their paths."""
    cfg = profile.config
    layout = _layout(profile.site_id)
    files = []
    ids = cfg.identifiers
    assert ids is not None, "every synthetic site profile names its identifier mapping"
    mapping_rows = [[p.pacs_id, p.case_id] for p in patients]
    files.append(_write(raw_dir / ids.file, ids.format, [ids.pacs_id_column, ids.case_id_column],
                        mapping_rows, bom=False))
    if cfg.procedures is not None:
        files.append(_write_procedures(patients, profile, raw_dir / layout.procedures_file, layout))
    if cfg.registry is not None:
        files.append(_write_registry(patients, profile, raw_dir / layout.registry_file, layout))
    return files


def _rng(profile: SiteProfile, patient: SyntheticPatient, stream: int) -> np.random.Generator:
    # Independent of the order of writing and of the other writers: one stream per patient and table.
    return np.random.default_rng([zlib.crc32(profile.site_id.encode()), patient.index, stream])


def procedure_events(patient: SyntheticPatient, rng: np.random.Generator) -> list[tuple[date, str]]:
    """The coded procedures of one patient's stay(s), as (date, OPS code), unsorted."""
    tavi = patient.tavi_date
    events: list[tuple[date, str]] = []
    if rng.random() < 0.8:
        events.append((tavi - timedelta(days=int(rng.integers(7, 90))), str(rng.choice(["1-275.0", "1-275.2"]))))
    if rng.random() < 0.5:
        events.append((tavi - timedelta(days=int(rng.integers(1, 30))), "3-052"))
    if rng.random() < 0.1:
        events.append((tavi - timedelta(days=int(rng.integers(20, 120))), "8-837.00"))
    # Transaxillary access is transvascular in OPS: only transapical gets its own code.
    events.append((tavi, "5-35a.01" if patient.access_route == "transapical" else "5-35a.00"))
    if rng.random() < 0.6:
        events.append((tavi, "8-83b.c6"))
    if rng.random() < 0.7:
        events.append((tavi, "8-930"))
    if rng.random() < 0.1:
        events.append((tavi + timedelta(days=int(rng.integers(0, 4))), "8-800.c0"))
    if patient.prior_pacemaker:
        implanted = tavi - timedelta(days=int(rng.integers(2 * 365, 10 * 365)))
        events.append((implanted, str(rng.choice(PACEMAKER_CODES, p=_PACEMAKER_SHARES))))
        if rng.random() < 0.3:
            events.append((implanted + timedelta(days=int(rng.integers(300, 700))), "5-378.52"))
    if patient.pacemaker_after_days is not None:
        implanted = tavi + timedelta(days=patient.pacemaker_after_days)
        events.append((implanted, str(rng.choice(PACEMAKER_CODES, p=_PACEMAKER_SHARES))))
        if rng.random() < 0.05:
            events.append((implanted + timedelta(days=int(rng.integers(1, 10))), "5-378.07"))
    elif not patient.prior_pacemaker and rng.random() < 0.01:
        events.append((tavi + timedelta(days=int(rng.integers(40, 200))), "5-377.50"))
    for code, offset in patient.extra_codes:
        events.append((tavi + timedelta(days=offset), code))
    return events


def _write_procedures(patients: Sequence[SyntheticPatient], profile: SiteProfile, path: Path,
                      layout: _Layout) -> Path:
    table = profile.config.procedures
    assert table is not None
    fmt = table.format
    cols = table.columns
    header = [cols["case_id"], cols["code"], cols["date"]]
    if "description" in cols:
        header.append(cols["description"])
    if layout.extra_procedures_column:
        header.append(layout.extra_procedures_column[0])
    records: list[tuple[date, str, str, list[str]]] = []
    for p in patients:
        if not p.has_procedures:
            continue
        rng = _rng(profile, p, 1)
        for day, code in procedure_events(p, rng):
            row = [p.case_id, code, day.strftime(fmt.date_format)]
            if "description" in cols:
                row.append(OPS_TITLES[code])
            if layout.extra_procedures_column:
                row.append(str(rng.choice(layout.extra_procedures_column[1])))
            records.append((day, p.case_id, code, row))
    # Exports list procedures by date across patients, so the reader must group by case itself.
    records.sort(key=lambda r: r[:3])
    return _write(path, fmt, header, [r[3] for r in records], bom=layout.bom)


def _number(value: float, fmt: TableFormat) -> str:
    text = str(int(value)) if float(value).is_integer() else format(value, "g")
    return text.replace(".", fmt.decimal)


def _canonical(p: SyntheticPatient, fmt: TableFormat) -> dict[str, str]:
    return {
        "case_id": p.case_id, "tavi_date": p.tavi_date.strftime(fmt.date_format), "age": str(p.age_at_tavi),
        "sex": p.sex, "height_cm": _number(p.height_cm, fmt), "weight_kg": _number(p.weight_kg, fmt),
        "nyha": str(p.nyha), "lvef_percent": _number(p.lvef_percent, fmt), "diabetes": p.diabetes,
        "access_route": p.access_route, "prosthesis_type": p.prosthesis_type,
        "prosthesis_size_mm": _number(p.prosthesis_size_mm, fmt),
        "valve_in_valve": "true" if p.valve_in_valve else "false",
    }


def _write_registry(patients: Sequence[SyntheticPatient], profile: SiteProfile, path: Path,
                    layout: _Layout) -> Path:
    table = profile.config.registry
    assert table is not None
    fmt = table.format
    fields = [f for f in REGISTRY_FIELDS if f in table.columns]
    inverse: dict[str, dict[str, str]] = {}
    for name, vmap in table.value_maps.items():
        inverse[name] = {}
        for local, canonical in vmap.items():
            inverse[name].setdefault(canonical, local)  # the first local spelling is the one written
    header = [table.columns[f] for f in fields]
    if layout.extra_registry_column:
        header.append(layout.extra_registry_column[0])
    rows = []
    for p in patients:
        if not p.has_registry:
            continue
        values = _canonical(p, fmt)
        row = []
        for f in fields:
            value = values[f]
            if f in inverse:
                if value not in inverse[f]:
                    raise ConfigError(f"registry.value_maps.{f} of site {profile.site_id} has no local value "
                                      f"for {value!r}; add one")
                value = inverse[f][value]
            row.append(value)
        if layout.extra_registry_column:
            row.append(str(_rng(profile, p, 2).choice(layout.extra_registry_column[1])))
        rows.append(row)
    return _write(path, fmt, header, rows, bom=layout.bom)


def _write(path: Path, fmt: TableFormat, header: list[str], rows: list[list[str]], *, bom: bool) -> Path:
    """Write one CSV with the site's delimiter and encoding; Windows-1252 exports get CRLF line ends."""
    buf = io.StringIO()
    crlf = fmt.encoding.lower() in ("cp1252", "windows-1252", "latin-1", "iso-8859-1")
    writer = csv.writer(buf, delimiter=fmt.delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode(fmt.encoding)
    if bom and fmt.encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        data = b"\xef\xbb\xbf" + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
