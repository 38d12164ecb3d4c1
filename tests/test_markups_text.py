"""Landmark point sets (3D Slicer markups -> TID 1500 3D SR) and free-text reports (-> Enhanced SR)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cohort.dicom import codes
from cohort.dicom.patient import pseudonym
from cohort.dicom.validate import dciodvfy, dsrdump, sr_validator
from cohort.errors import InputError, MissingReferenceError, UnknownPatientError
from cohort.ingest.base import IngestContext, InputHead
from cohort.ingest.converters.dicom_objects import DicomObjectConverter
from cohort.ingest.converters.free_text import FreeTextConverter
from cohort.ingest.converters.markups import MarkupsConverter, classify_label
from cohort.siteconfig import FreeTextSource
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES, SiteProfile
from cohort.synth.writers.ct import write_ct_series
from cohort.synth.writers.free_text import letter_date, letter_text, write_free_text
from cohort.synth.writers.markups import LANDMARK_KEYS, landmark_positions, markups_style, write_markups
from tests.helpers import DictPatientDirectory, FolderStoreView, make_context

SITE_IDS = [p.site_id for p in PROFILES]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _patients(profile: SiteProfile) -> list[SyntheticPatient]:
    return generate_site(11, profile.site_id, 40, profile.mix, profile.pacs_prefix, profile.case_prefix)


def _store_ct(patient: SyntheticPatient, profile: SiteProfile, raw: Path, store: Path) -> list[pydicom.Dataset]:
    """Write the patient's CT and store it as ingest does: through the DICOM object converter."""
    stored = []
    store.mkdir(parents=True, exist_ok=True)
    for f in write_ct_series(patient, profile, raw):
        ctx = make_context(raw, site=profile.config, store_folder=store, digest=_digest(f))
        [ds] = DicomObjectConverter().convert(f, ctx).datasets
        ds.save_as(store / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        stored.append(ds)
    site = profile.config
    assert stored[0].PatientID == pseudonym(site.pseudonym_key, site.site_id, patient.pacs_id)
    return stored


@dataclass
class LandmarkCase:
    profile: SiteProfile
    patient: SyntheticPatient
    markups: Path
    store: Path
    ct: list[pydicom.Dataset]
    sr: pydicom.Dataset
    sr_path: Path

    def context(self, path: Path | None = None) -> IngestContext:
        return make_context(self.markups.parent, site=self.profile.config, store_folder=self.store,
                            digest=_digest(path or self.markups))


@pytest.fixture(scope="module")
def landmark_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LandmarkCase]:
    out = {}
    for profile in PROFILES:
        root = tmp_path_factory.mktemp(profile.site_id)
        patient = next(p for p in _patients(profile) if p.ct is not None and p.ct.has_landmarks)
        ct = _store_ct(patient, profile, root / "raw", root / "store")
        [markups] = write_markups(patient, profile, root / "raw")
        ctx = make_context(root / "raw", site=profile.config, store_folder=root / "store", digest=_digest(markups))
        result = MarkupsConverter().convert(markups, ctx)
        assert result.rejected == []
        [sr] = result.datasets
        sr_path = root / "landmarks-sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        out[profile.site_id] = LandmarkCase(profile, patient, markups, root / "store", ct, sr, sr_path)
    return out


@dataclass
class TextCase:
    profile: SiteProfile
    patient: SyntheticPatient
    path: Path
    sr: pydicom.Dataset
    sr_path: Path


@pytest.fixture(scope="module")
def text_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TextCase]:
    out = {}
    for profile in PROFILES:
        root = tmp_path_factory.mktemp(profile.site_id + "-text")
        # Prefer a patient whose letter mentions the rhythm (has an ECG), so the body has more facts.
        patient = next(p for p in _patients(profile) if p.has_free_text and p.ecg is not None)
        [path] = write_free_text(patient, profile, root / "raw")
        ctx = make_context(root / "raw", site=profile.config, case_to_pacs={patient.case_id: patient.pacs_id},
                           digest=_digest(path))
        [sr] = FreeTextConverter().convert(path, ctx).datasets
        sr_path = root / "free-text-sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        out[profile.site_id] = TextCase(profile, patient, path, sr, sr_path)
    return out


# The SR trees do not differ in structure between sites; one LPS/UTF-8 and one RAS/cp1252 site suffice.
VALIDATED_SITES = ["uk-nord", "klinikum-sued"]


@pytest.fixture(scope="module")
def validation(landmark_cases: dict[str, LandmarkCase], text_cases: dict[str, TextCase]) -> dict[str, dict]:
    """The SRs of two sites through dciodvfy, DicomSRValidator and dsrdump."""
    paths = [landmark_cases[s].sr_path for s in VALIDATED_SITES] + [text_cases[s].sr_path for s in VALIDATED_SITES]
    results: dict[str, dict] = {str(p): {} for p in paths}
    # batch=1: the installed DicomSRValidator takes one file per call; given several it prints its
    # usage and exits 0, which would read as "no errors".
    for tool, run in (("dciodvfy", dciodvfy), ("srvalidator", lambda ps: sr_validator(ps, batch=1)),
                      ("dsrdump", dsrdump)):
        for res in run(paths):
            results[str(res.path)][tool] = res
    return results


# --- markups writer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("site_id", SITE_IDS)
def test_markups_file_follows_site_style(landmark_cases: dict[str, LandmarkCase], site_id: str) -> None:
    case = landmark_cases[site_id]
    assert case.markups.parent.name == "landmarks"
    assert re.match(case.profile.config.markups.link_pattern, case.markups.name)
    doc = json.loads(case.markups.read_text(encoding="utf-8"))
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    [markup] = doc["markups"]
    style = markups_style(case.profile)
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == style.coordinate_system
    positions = landmark_positions(case.patient, case.profile)
    sign = np.array([-1, -1, 1]) if style.coordinate_system == "RAS" else np.ones(3)
    for key, point in zip(LANDMARK_KEYS, markup["controlPoints"], strict=True):
        assert point["label"] == style.labels[key]
        np.testing.assert_allclose(point["position"], sign * np.array(positions[key]), atol=1e-3)


def test_sites_use_both_coordinate_systems() -> None:
    assert {markups_style(p).coordinate_system for p in PROFILES} == {"LPS", "RAS"}


def test_markups_skipped_without_landmarks(tmp_path: Path) -> None:
    profile = PROFILES[0]
    patient = next(p for p in _patients(profile) if p.ct is None or not p.ct.has_landmarks)
    assert write_markups(patient, profile, tmp_path) == []


# --- markups converter --------------------------------------------------------------------------------

@pytest.mark.parametrize("label,key", [
    ("NCC hinge point", "hinge_ncc"), ("Scharnierpunkt links", "hinge_lcc"), ("HP-RCC", "hinge_rcc"),
    ("Hinge NC", "hinge_ncc"), ("LM ostium", "ostium_lm"), ("Koronarostium rechts", "ostium_rca"),
    ("LCA", "ostium_lm"), ("Ostium RCA", "ostium_rca"), ("Scharnierpunkt akoronar", "hinge_ncc"),
    ("F-1", None), ("ostium", None), ("apex", None),
], ids=lambda v: str(v))
def test_classify_label(label: str, key: str | None) -> None:
    assert classify_label(label) == key


@pytest.mark.parametrize("site_id", VALIDATED_SITES)
def test_landmark_sr_validates(validation: dict, landmark_cases: dict[str, LandmarkCase], site_id: str) -> None:
    res = validation[str(landmark_cases[site_id].sr_path)]
    assert res["dciodvfy"].errors == []
    assert res["srvalidator"].errors == []
    assert res["dsrdump"].errors == []


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_landmark_sr_points_are_lps_on_the_ct(landmark_cases: dict[str, LandmarkCase], site_id: str) -> None:
    case = landmark_cases[site_id]
    sr = pydicom.dcmread(case.sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    ct0 = case.ct[0]
    assert sr.StudyInstanceUID == ct0.StudyInstanceUID
    assert sr.PatientID == ct0.PatientID != case.patient.pacs_id
    ctx = case.context()
    assert sr.SeriesInstanceUID == ctx.uid("landmark-sr-series") and sr.SOPInstanceUID == ctx.uid("landmark-sr")
    assert "InstanceCreationDate" not in sr
    assert sr.ContentDate == ct0.ContentDate
    # The SR names its source series: every CT instance is listed as evidence.
    [study] = sr.CurrentRequestedProcedureEvidenceSequence
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct0.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence} == {d.SOPInstanceUID for d in case.ct}
    assert any(i.CodingSchemeDesignator == codes.LOCAL_SCHEME for i in sr.CodingSchemeIdentificationSequence)

    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(LANDMARK_KEYS)
    expected = landmark_positions(case.patient, case.profile)
    findings = {"hinge_ncc": (codes.HINGE_POINT, codes.NON_CORONARY_SINUS),
                "hinge_lcc": (codes.HINGE_POINT, codes.LEFT_SINUS_OF_VALSALVA),
                "hinge_rcc": (codes.HINGE_POINT, codes.RIGHT_SINUS_OF_VALSALVA),
                "ostium_lm": (codes.LEFT_MAIN_CORONARY_OSTIUM, codes.LEFT_SINUS_OF_VALSALVA),
                "ostium_rca": (codes.RIGHT_CORONARY_ARTERY_OSTIUM, codes.RIGHT_SINUS_OF_VALSALVA)}
    uids = set()
    for key, group in zip(LANDMARK_KEYS, groups, strict=True):
        finding, site = findings[key]
        assert group.finding_type == finding
        assert [s.value for s in group.finding_sites] == [site]
        region = group.roi
        assert isinstance(region, hd.sr.ImageRegion3D)
        assert region.graphic_type == hd.sr.GraphicTypeValues3D.POINT
        assert region.frame_of_reference_uid == ct0.FrameOfReferenceUID
        # GraphicData is FL (float32): compare to that precision.
        np.testing.assert_allclose(region.value[0], expected[key], atol=1e-3)
        assert group.tracking_uid == ctx.uid("landmark", key)
        uids.add(group.tracking_uid)
    assert len(uids) == len(LANDMARK_KEYS)


def _rewrite(src: Path, dst: Path, change) -> Path:
    doc = json.loads(src.read_text(encoding="utf-8"))
    change(doc)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(doc), encoding="utf-8")
    return dst


def test_point_outside_volume_is_rejected(landmark_cases: dict[str, LandmarkCase], tmp_path: Path) -> None:
    case = landmark_cases["uk-nord"]

    def move(doc: dict) -> None:
        doc["markups"][0]["controlPoints"][3]["position"][2] += 500.0

    moved = _rewrite(case.markups, tmp_path / case.markups.name, move)
    with pytest.raises(InputError) as err:
        MarkupsConverter().convert(moved, case.context(moved))
    msg = str(err.value)
    assert "LM ostium" in msg and "outside the CT volume" in msg and re.search(r"z -?\d+\.\d\.\.-?\d+\.\d mm", msg)
    assert str(moved) in msg


def test_ras_points_are_converted_to_lps(landmark_cases: dict[str, LandmarkCase], tmp_path: Path) -> None:
    # The same points saved as LPS at an RAS site must give the same SR geometry.
    case = landmark_cases["klinikum-sued"]
    assert markups_style(case.profile).coordinate_system == "RAS"

    def to_lps(doc: dict) -> None:
        m = doc["markups"][0]
        m["coordinateSystem"] = "LPS"
        for p in m["controlPoints"]:
            p["position"] = [-p["position"][0], -p["position"][1], p["position"][2]]

    lps_file = _rewrite(case.markups, tmp_path / case.markups.name, to_lps)
    [sr] = MarkupsConverter().convert(lps_file, case.context(lps_file)).datasets
    points = [i.GraphicData for i in _walk(sr) if i.get("ValueType") == "SCOORD3D"]
    expected = [i.GraphicData for i in _walk(case.sr) if i.get("ValueType") == "SCOORD3D"]
    assert len(points) == 5
    np.testing.assert_allclose(points, expected, atol=1e-4)


def _walk(item: pydicom.Dataset):
    yield item
    for child in item.get("ContentSequence", []):
        yield from _walk(child)


def test_unknown_patient(landmark_cases: dict[str, LandmarkCase]) -> None:
    case = landmark_cases["uk-nord"]
    site = case.profile.config
    ctx = IngestContext(site=site, raw_dir=case.markups.parent,
                        patients=DictPatientDirectory(site, known_pacs={"UKN0000999"}),
                        store=FolderStoreView(case.store), input_digest=_digest(case.markups))
    with pytest.raises(UnknownPatientError, match=case.patient.pacs_id):
        MarkupsConverter().convert(case.markups, ctx)


def test_missing_ct_is_a_missing_reference(landmark_cases: dict[str, LandmarkCase], tmp_path: Path) -> None:
    case = landmark_cases["uk-nord"]
    (tmp_path / "empty-store").mkdir()
    ctx = make_context(tmp_path, site=case.profile.config, store_folder=tmp_path / "empty-store")
    with pytest.raises(MissingReferenceError, match="no CT series"):
        MarkupsConverter().convert(case.markups, ctx)


def test_file_name_outside_link_pattern(landmark_cases: dict[str, LandmarkCase], tmp_path: Path) -> None:
    case = landmark_cases["uk-nord"]
    renamed = _rewrite(case.markups, tmp_path / "points.json", lambda doc: None)
    with pytest.raises(InputError, match="link_pattern"):
        MarkupsConverter().convert(renamed, case.context(renamed))


def test_unknown_label_names_the_field(landmark_cases: dict[str, LandmarkCase], tmp_path: Path) -> None:
    case = landmark_cases["uk-nord"]

    def relabel(doc: dict) -> None:
        doc["markups"][0]["controlPoints"][1]["label"] = "F-2"

    bad = _rewrite(case.markups, tmp_path / case.markups.name, relabel)
    with pytest.raises(InputError, match=r"controlPoints\[1\]\.label.*'F-2'"):
        MarkupsConverter().convert(bad, case.context(bad))


def test_non_point_markups_are_rejected_not_dropped(landmark_cases: dict[str, LandmarkCase],
                                                    tmp_path: Path) -> None:
    case = landmark_cases["uk-nord"]

    def add_line(doc: dict) -> None:
        doc["markups"].append({"type": "Line", "coordinateSystem": "LPS", "controlPoints": []})

    extra = _rewrite(case.markups, tmp_path / case.markups.name, add_line)
    result = MarkupsConverter().convert(extra, case.context(extra))
    assert len(result.datasets) == 1
    assert [r.where for r in result.rejected] == ["markups[1]"]


def test_markups_conversion_is_deterministic(landmark_cases: dict[str, LandmarkCase]) -> None:
    case = landmark_cases["herzzentrum-west"]
    first = MarkupsConverter().convert(case.markups, case.context()).datasets[0]
    second = MarkupsConverter().convert(case.markups, case.context()).datasets[0]
    assert _bytes(first) == _bytes(second) == case.sr_path.read_bytes()


# --- free text ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("site_id", SITE_IDS)
def test_free_text_round_trip(text_cases: dict[str, TextCase], site_id: str) -> None:
    case = text_cases[site_id]
    cfg = case.profile.config.free_text
    raw = case.path.read_bytes()
    assert case.path.parent.name == "text"
    assert raw.decode(cfg.encoding).startswith(f"{cfg.id_label}: ")
    sr = pydicom.dcmread(case.sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert (sr.ConceptNameCodeSequence[0].CodeValue, sr.ConceptNameCodeSequence[0].CodingSchemeDesignator) == (
        codes.FREE_TEXT_REPORT.value, codes.LOCAL_SCHEME)
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [codes.LOCAL_SCHEME]
    assert sr.ContentDate == letter_date(case.patient).strftime("%Y%m%d")
    site = case.profile.config
    assert sr.PatientID == pseudonym(site.pseudonym_key, site.site_id, case.patient.pacs_id)
    [item] = sr.ContentSequence
    assert item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.FINDING.value
    expected_body = letter_text(case.patient, case.profile).split("\n\n", 1)[1].strip("\n")
    assert item.TextValue == expected_body.replace("\n", "\r\n")
    assert f"{case.patient.prosthesis_size_mm} mm" in item.TextValue


@pytest.mark.parametrize("site_id", ["klinikum-sued", "uni-ost"])
def test_german_letters_keep_umlauts_from_cp1252(text_cases: dict[str, TextCase], site_id: str) -> None:
    case = text_cases[site_id]
    assert case.profile.config.free_text.encoding == "cp1252"
    raw = case.path.read_bytes()
    assert "Größe".encode("cp1252") in raw and b"\r\n" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = pydicom.dcmread(case.sr_path).ContentSequence[0].TextValue
    assert "Größe" in text and "Grüßen" in text and ("Sinusrhythmus" in text or "Vorhofflimmern" in text)


@pytest.mark.parametrize("site_id", VALIDATED_SITES)
def test_free_text_sr_validates(validation: dict, text_cases: dict[str, TextCase], site_id: str) -> None:
    res = validation[str(text_cases[site_id].sr_path)]
    assert res["dciodvfy"].errors == []
    assert res["srvalidator"].errors == []
    # No template is declared for the local root, so PixelMed notes its items as outside any
    # template: proof that it read this file.
    assert any("TXT001" in w for w in res["srvalidator"].warnings)
    assert res["dsrdump"].errors == []


def _text_ctx(tmp_path: Path, profile: SiteProfile, path: Path, case_to_pacs: dict[str, str]) -> IngestContext:
    return make_context(tmp_path, site=profile.config, case_to_pacs=case_to_pacs, digest=_digest(path))


def test_free_text_wrong_encoding(tmp_path: Path) -> None:
    german = PROFILES[1]  # cp1252
    english = PROFILES[0]  # utf-8
    letter = "Fallnummer: KS-1\nDatum: 01.02.2020\n\nGröße 26 mm, Zugang transfemoral.\n"
    utf8_file = tmp_path / "utf8.txt"
    utf8_file.write_bytes(letter.encode("utf-8"))
    with pytest.raises(InputError, match="UTF-8") as err:
        FreeTextConverter().convert(utf8_file, _text_ctx(tmp_path, german, utf8_file, {"KS-1": "KS1"}))
    assert err.value.field == "free_text.encoding"
    cp_file = tmp_path / "cp.txt"
    cp_file.write_bytes("Case: F1\nDate: 2020-02-01\n\nGröße 26 mm.\n".encode("cp1252"))
    with pytest.raises(InputError, match="not valid utf-8") as err:
        FreeTextConverter().convert(cp_file, _text_ctx(tmp_path, english, cp_file, {"F1": "UKN1"}))
    assert err.value.field == "free_text.encoding"


@pytest.mark.parametrize("content,field,fragment", [
    ("Datum: 01.02.2020\n\nBrief\n", "Fallnummer", "missing header line 'Fallnummer: <case_id>'"),
    ("Fallnummer: KS-1\n\nBrief\n", "Datum", "missing header line 'Datum: <date>'"),
    ("Fallnummer: KS-1\nDatum: 2020-02-01\n\nBrief\n", "Datum", "free_text.date_format '%d.%m.%Y'"),
    ("Fallnummer: KS-1\nDatum: 01.02.2020\n\n\n", "body", "no report text"),
], ids=["no-id", "no-date", "bad-date", "no-body"])
def test_free_text_header_errors(tmp_path: Path, content: str, field: str, fragment: str) -> None:
    path = tmp_path / "brief.txt"
    path.write_bytes(content.encode("cp1252"))
    with pytest.raises(InputError) as err:
        FreeTextConverter().convert(path, _text_ctx(tmp_path, PROFILES[1], path, {"KS-1": "KS1"}))
    assert err.value.field == field and fragment in str(err.value) and str(path) in str(err.value)


def test_free_text_unknown_patient(tmp_path: Path) -> None:
    path = tmp_path / "brief.txt"
    path.write_bytes("Fallnummer: KS-404\nDatum: 01.02.2020\n\nBrief\n".encode("cp1252"))
    with pytest.raises(UnknownPatientError, match="KS-404"):
        FreeTextConverter().convert(path, _text_ctx(tmp_path, PROFILES[1], path, {}))


def test_free_text_conversion_is_deterministic(text_cases: dict[str, TextCase]) -> None:
    case = text_cases["uni-ost"]
    ctx = _text_ctx(case.path.parent, case.profile, case.path, {case.patient.case_id: case.patient.pacs_id})
    first = _bytes(FreeTextConverter().convert(case.path, ctx).datasets[0])
    second = _bytes(FreeTextConverter().convert(case.path, ctx).datasets[0])
    assert first == second == case.sr_path.read_bytes()
    other = IngestContext(ctx.site, ctx.raw_dir, ctx.patients, ctx.store, "f" * 64)
    third = FreeTextConverter().convert(case.path, other).datasets[0]
    assert third.SOPInstanceUID != pydicom.dcmread(case.sr_path).SOPInstanceUID
    assert third.StudyInstanceUID == pydicom.dcmread(case.sr_path).StudyInstanceUID  # one study per patient


# --- format detection --------------------------------------------------------------------------------

def _head(tmp_path: Path, name: str, data: bytes) -> InputHead:
    path = tmp_path / name
    path.write_bytes(data)
    return InputHead.read(path)


def test_sniffing(landmark_cases: dict[str, LandmarkCase], text_cases: dict[str, TextCase], tmp_path: Path) -> None:
    markups, text = MarkupsConverter(), FreeTextConverter()
    for site_id in SITE_IDS:
        site = PROFILES[SITE_IDS.index(site_id)].config
        m_head = InputHead.read(landmark_cases[site_id].markups)
        t_head = InputHead.read(text_cases[site_id].path)
        assert markups.sniff(m_head, site) and not text.sniff(m_head, site)
        assert text.sniff(t_head, site) and not markups.sniff(t_head, site)
    german = PROFILES[1].config
    csv = _head(tmp_path, "reg.csv", "Fallnummer;Eingriffsdatum;Größe\nKS-1;01.02.2020;170\n".encode("cp1252"))
    xml = _head(tmp_path, "ecg.xml", b'<?xml version="1.0"?>\n<RestingECG><Fallnummer: x/></RestingECG>')
    other_json = _head(tmp_path, "x.json", b'{"name": "not markups"}')
    for head in (csv, xml, other_json):
        assert not text.sniff(head, german) and not markups.sniff(head, german)
    # A report in the wrong encoding is still claimed, so convert() can say what to fix.
    wrong = _head(tmp_path, "w.txt", "Fallnummer: KS-1\nDatum: 01.02.2020\n\nGröße\n".encode())
    assert text.sniff(wrong, german)
    assert FreeTextSource().id_label == "Fallnummer"  # the default config claims German headers too
