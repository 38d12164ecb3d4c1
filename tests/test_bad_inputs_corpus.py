"""A corpus of malformed inputs next to a small valid site, ingested in one run.

Every bad input must end up quarantined (a copy and a reason file in STORE/quarantine/), rejected as
a part of an otherwise converted input (e.g. one CSV row), or recognised as a duplicate - each with a
reason that names what to fix. Nothing crashes the run, the report invariant holds, and every valid
input of the site is still converted.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from cohort.ecg.readers.scp_huffman import DEFAULT_TABLE
from cohort.ingest.report import IngestReport
from cohort.ingest.run import ingest_folder
from cohort.siteconfig import SiteConfig, load_site_config
from cohort.store import Store
from cohort.synth.model import generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.site import SynthSite, synthesize_site
from cohort.synth.writers.ecg import prepare_export, write_ecg
from cohort.synth.writers.scpecg import ScpCompression, crc_ccitt, render_record, section_bodies

BAD = "zz-bad"  # sorts after every folder of the valid export, so valid inputs come first in each stage
SEED = 0
N_PATIENTS = 4

Outcome = Literal["quarantined", "part", "duplicate", "warning"]  # warning: converted, with a report warning


@dataclass
class Corpus:
    """The valid site, where its inputs are, and templates in the other ECG formats."""

    raw: Path
    site: SiteConfig
    templates: dict[str, Path]
    ct_patients: list[str]  # PACS ids with a CT series
    case_ids: dict[str, str]  # PACS id -> case number
    extra: dict[str, Path] = field(default_factory=dict)

    def bad(self, case_id: str, name: str) -> Path:
        folder = self.raw / BAD / case_id
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def first(self, pattern: str) -> Path:
        found = sorted(p for p in self.raw.glob(pattern) if BAD not in p.parts)
        assert found, f"the synthetic site has no {pattern}; choose another SEED"
        return found[0]


@dataclass(frozen=True)
class BadCase:
    """A malformed input, the outcome it must get, and the words its reason must contain."""

    id: str
    make: Callable[[Corpus], Path]
    outcome: Outcome
    words: tuple[str, ...]


# --- builders: each writes one bad input into raw/zz-bad/<case id>/ and returns its path ----------------
def _ct_slice(c: Corpus) -> pydicom.Dataset:
    return pydicom.dcmread(c.first(f"pacs/{c.ct_patients[0]}/*/*/*.dcm"))


def truncated_dicom(c: Corpus) -> Path:
    src = c.first("pacs/*/*/*/*.dcm").read_bytes()
    path = c.bad("truncated-dicom", "IM000001.dcm")
    path.write_bytes(src[: len(src) // 2])  # cut inside the pixel data
    return path


def text_named_dcm(c: Corpus) -> Path:
    path = c.bad("text-named-dcm", "IM000002.dcm")
    path.write_text("This is not DICOM, it is the PACS export log.\nexported 64 images\n", encoding="utf-8")
    return path


def dicom_without_sop_instance_uid(c: Corpus) -> Path:
    ds = _ct_slice(c)
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    path = c.bad("dicom-no-sop-instance-uid", "IM000003.dcm")
    ds.save_as(path)
    return path


def dicom_without_patient_id(c: Corpus) -> Path:
    ds = _ct_slice(c)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["bad-corpus", "no-patient-id"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PatientID
    path = c.bad("dicom-no-patient-id", "IM000004.dcm")
    ds.save_as(path)
    return path


def dicom_ecg_without_patient_id(c: Corpus) -> Path:
    ds = pydicom.dcmread(c.first("ecg/pacs/*.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["bad-corpus", "ecg-no-patient-id"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.PatientID
    path = c.bad("dicom-ecg-no-patient-id", "ECG0001.dcm")
    ds.save_as(path)
    return path


def duplicate_sop_instance_uid(c: Corpus) -> Path:
    ds = _ct_slice(c)
    ds.SeriesDescription = "re-exported from the PACS"  # other bytes, same SOP Instance UID
    path = c.bad("duplicate-sop-instance-uid", "IM000005.dcm")
    ds.save_as(path)
    return path


def identical_copy(c: Corpus) -> Path:
    path = c.bad("identical-copy", "copy_of_ct.dcm")
    shutil.copyfile(c.first(f"pacs/{c.ct_patients[0]}/*/*/*.dcm"), path)
    return path


def _xml_template(c: Corpus, fmt: str, case_id: str, name: str) -> tuple[Path, str]:
    src = c.templates[fmt]
    encoding = "iso-8859-1" if fmt == "muse" else "utf-8"
    return c.bad(case_id, name), src.read_text(encoding=encoding)


def aecg_external_entity(c: Corpus) -> Path:
    path, text = _xml_template(c, "aecg", "aecg-external-entity", "ecg.xml")
    text = text.replace('<?xml version="1.0" encoding="UTF-8"?>',
                        '<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>')
    text = text.replace("<family>", "<family>&xxe;", 1)
    assert "&xxe;" in text
    path.write_text(text, encoding="utf-8")
    return path


def muse_entity_bomb(c: Corpus) -> Path:
    lol = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{k} "{("&lol" + (str(k - 1) if k > 1 else "") + ";") * 10}">'
                                     for k in range(1, 10)]
    path = c.bad("muse-entity-bomb", "MUSE_bomb.xml")
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE RestingECG [{"".join(lol)}]>\n'
                    "<RestingECG><PatientDemographics><PatientID>&lol9;</PatientID></PatientDemographics>"
                    "</RestingECG>", encoding="utf-8")
    return path


def muse_truncated(c: Corpus) -> Path:
    path = c.bad("muse-truncated", "MUSE_cut.xml")
    data = c.templates["muse"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def muse_invalid_base64(c: Corpus) -> Path:
    path, text = _xml_template(c, "muse", "muse-invalid-base64", "MUSE_b64.xml")
    text, n = re.subn(r"<WaveFormData>[^<]{10}", "<WaveFormData>@@@@!!!!%%", text, count=1)
    assert n == 1
    path.write_text(text, encoding="iso-8859-1")
    return path


def muse_five_leads(c: Corpus) -> Path:
    path, text = _xml_template(c, "muse", "muse-five-leads", "MUSE_5.xml")
    for lead in ("V4", "V5", "V6"):
        text = re.sub(rf"<LeadData>(?:(?!</LeadData>).)*<LeadID>{lead}</LeadID>.*?</LeadData>\s*", "", text,
                      count=1, flags=re.S)
    path.write_text(text, encoding="iso-8859-1")
    return path


def aecg_mismatched_lead_lengths(c: Corpus) -> Path:
    path, text = _xml_template(c, "aecg", "aecg-mismatched-lead-lengths", "ecg_short.xml")
    head, _, rest = text.partition('code="MDC_ECG_LEAD_V3"')
    start = rest.index("<digits>") + len("<digits>")
    end = rest.index("</digits>")
    short = " ".join(rest[start:end].split()[:4000])
    path.write_text(head + 'code="MDC_ECG_LEAD_V3"' + rest[:start] + short + rest[end:], encoding="utf-8")
    return path


def scp_bad_crc(c: Corpus) -> Path:
    data = bytearray(c.templates["scp"].read_bytes())
    data[5000] ^= 0xFF  # a sample changes; the stored CRCs do not
    path = c.bad("scp-bad-crc", "EKG_crc.scp")
    path.write_bytes(bytes(data))
    return path


def scp_section_length_past_end(c: Corpus) -> Path:
    data = bytearray(c.templates["scp"].read_bytes())
    (s0_len,) = struct.unpack_from("<I", data, 6 + 4)
    for k in range((s0_len - 16) // 10):
        at = 6 + 16 + 10 * k
        sid, sec_len, index = struct.unpack_from("<HII", data, at)
        if sid == 8:
            struct.pack_into("<HII", data, at, sid, sec_len + 4096, index)
    # Recompute section 0's CRC and the record CRC, so that only the bad length remains.
    (length,) = struct.unpack_from("<I", data, 6 + 4)
    struct.pack_into("<H", data, 6, crc_ccitt(data[6 + 2:6 + length]))
    struct.pack_into("<H", data, 0, crc_ccitt(data[2:]))
    path = c.bad("scp-section-length-past-end", "EKG_len.scp")
    path.write_bytes(bytes(data))
    return path


def scp_truncated(c: Corpus) -> Path:
    data = c.templates["scp"].read_bytes()
    path = c.bad("scp-truncated", "EKG_cut.scp")
    path.write_bytes(data[: len(data) - 3000])
    return path


def _scp_huffman(c: Corpus, case_id: str, edit: Callable[[dict[int, bytes]], None]) -> Path:
    """The SCP template's ECG Huffman-coded as carts do (default table, second differences), then edited."""
    profile = PROFILES[3]
    patient = next(p for p in generate_site(5, profile.site_id, 10, profile.mix, profile.pacs_prefix,
                                            profile.case_prefix) if p.ecg)
    bodies = section_bodies(prepare_export(patient, profile, language="de"), ScpCompression(DEFAULT_TABLE, 2))
    edit(bodies)
    path = c.bad(case_id, "EKG_huffman.scp")
    path.write_bytes(render_record(bodies))
    return path


def scp_huffman_truncated_lead(c: Corpus) -> Path:
    def cut_last_lead(bodies: dict[int, bytes]) -> None:
        at = 6 + 2 * 11  # byte count of the 12th lead (V6), whose data ends section 6
        (n,) = struct.unpack_from("<H", bodies[6], at)
        s6 = bytearray(bodies[6][: len(bodies[6]) - n // 2])
        struct.pack_into("<H", s6, at, n - n // 2)
        bodies[6] = bytes(s6)
    return _scp_huffman(c, "scp-huffman-truncated-lead", cut_last_lead)


def scp_reference_beat_subtraction(c: Corpus) -> Path:
    def flag(bodies: dict[int, bytes]) -> None:
        bodies[3] = bodies[3][:1] + bytes([bodies[3][1] | 0x01]) + bodies[3][2:]  # section 3 flags bit 0
    return _scp_huffman(c, "scp-reference-beat-subtraction", flag)


def _registry_rows(c: Corpus) -> tuple[list[str], list[list[str]]]:
    with open(c.first("qs/*.csv"), newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def registry_renamed_and_unknown_columns(c: Corpus) -> Path:
    header, rows = _registry_rows(c)
    header = ["HEIGHT_IN_CM" if h == "HEIGHT_CM" else h for h in header] + ["URGENCY_FLAG"]
    rows = [r + ["elective"] for r in rows]
    return _write_csv(c.bad("registry-renamed-column", "registry_v2.csv"), header, rows)


def registry_wrong_encoding(c: Corpus) -> Path:
    header, rows = _registry_rows(c)
    header = header + ["BEMERKUNG"]
    rows = [r + ["Größe geschätzt, Patientin übernommen"] for r in rows]
    return _write_csv(c.bad("registry-cp1252", "registry_cp1252.csv"), header, rows, encoding="cp1252")


def registry_decimal_comma(c: Corpus) -> Path:
    header, rows = _registry_rows(c)
    col = header.index("WEIGHT_KG")
    good = list(rows[0])
    bad = list(rows[1])
    bad[col] = "81,5"
    return _write_csv(c.bad("registry-decimal-comma", "registry_comma.csv"), header, [good, bad])


def registry_unknown_value(c: Corpus) -> Path:
    header, rows = _registry_rows(c)
    col = header.index("SEX")
    good, bad = list(rows[0]), list(rows[1])
    bad[col] = "x"
    return _write_csv(c.bad("registry-unknown-value", "registry_sex.csv"), header, [good, bad])


def _procedure_rows(c: Corpus) -> tuple[list[str], list[list[str]]]:
    with open(c.first("kis/*.csv"), newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def procedures_unparseable_date(c: Corpus) -> Path:
    header, rows = _procedure_rows(c)
    col = header.index("PROC_DATE")
    bad = list(rows[0])
    bad[col] = "31.02.2021"
    return _write_csv(c.bad("procedures-unparseable-date", "ops_dates.csv"), header, [rows[0], bad])


def procedures_all_rows_bad(c: Corpus) -> Path:
    header, rows = _procedure_rows(c)
    col = header.index("OPS_CODE")
    bad = [[*r[:col], "TAVI", *r[col + 1:]] for r in rows]
    return _write_csv(c.bad("procedures-no-ops-codes", "ops_text.csv"), header, bad)


def procedures_unknown_case(c: Corpus) -> Path:
    header, rows = _procedure_rows(c)
    col = header.index("CASE_NO")
    bad = list(rows[0])
    bad[col] = "F1999-000000"
    return _write_csv(c.bad("procedures-unknown-case", "ops_case.csv"), header, [rows[0], bad])


def binary_junk_csv(c: Corpus) -> Path:
    path = c.bad("binary-junk-csv", "export.csv")
    path.write_bytes(bytes(range(256)) * 8)
    return path


def empty_file(c: Corpus) -> Path:
    path = c.bad("empty-file", "registry_export.csv")
    path.write_bytes(b"")
    return path


def zero_byte_nifti(c: Corpus) -> Path:
    path = c.bad("zero-byte-nifti", f"{c.ct_patients[0]}_seg.nii.gz")
    path.write_bytes(b"")
    return path


def gzip_that_is_not_gzip(c: Corpus) -> Path:
    path = c.bad("gzip-corrupt", f"{c.ct_patients[1]}_seg.nii.gz")
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(7, 250)) * 4)  # gzip signature, then garbage
    return path


def text_named_gz(c: Corpus) -> Path:
    path = c.bad("text-named-gz", f"{c.ct_patients[1]}_seg.nii.gz")
    path.write_text("segmentation pending\n", encoding="utf-8")
    return path


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def seg_shape_mismatch(c: Corpus) -> Path:
    labels = np.zeros((20, 20, 10), dtype=np.uint8)
    labels[5:10, 5:10, 2:5] = 1
    return _nifti(c.bad("seg-shape-mismatch", f"{c.ct_patients[0]}_seg.nii.gz"), labels, np.eye(4))


def seg_unknown_label(c: Corpus) -> Path:
    img = nib.load(str(c.first("segmentations/*.nii.gz")))
    data = np.asanyarray(img.dataobj).copy()
    data[data == 1] = 9
    data.flat[0] = 9
    pacs = re.match(r"^([A-Z]+\d+)_", c.first("segmentations/*.nii.gz").name).group(1)  # type: ignore[union-attr]
    return _nifti(c.bad("seg-unknown-label", f"{pacs}_seg.nii.gz"), data, img.affine)


def seg_for_patient_without_ct(c: Corpus) -> Path:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 1
    return _nifti(c.bad("seg-patient-without-ct", "UKN0099998_seg.nii.gz"), labels, np.eye(4))


def _markups(c: Corpus) -> tuple[Path, dict]:
    src = c.first("landmarks/*.mrk.json")
    return src, json.loads(src.read_text(encoding="utf-8"))


def markups_points_outside(c: Corpus) -> Path:
    src, doc = _markups(c)
    for markup in doc["markups"]:
        for point in markup["controlPoints"]:
            point["position"] = [v + 1000.0 for v in point["position"]]
    path = c.bad("markups-points-outside", src.name)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def markups_unknown_patient(c: Corpus) -> Path:
    src, doc = _markups(c)
    path = c.bad("markups-unknown-patient", "UKN0099999_landmarks.mrk.json")
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def markups_unknown_label(c: Corpus) -> Path:
    src, doc = _markups(c)
    doc["markups"][0]["controlPoints"][0]["label"] = "F-1"
    path = c.bad("markups-unlabelled-point", src.name)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def json_not_markups(c: Corpus) -> Path:
    path = c.bad("json-not-markups", f"{c.ct_patients[0]}_landmarks.mrk.json")
    path.write_text(json.dumps({"@schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/"
                                           "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                                "markups": {"type": "Fiducial"}}), encoding="utf-8")
    return path


def json_other_app(c: Corpus) -> Path:
    path = c.bad("json-other-app", f"{c.ct_patients[1]}_landmarks.mrk.json")
    path.write_text(json.dumps({"viewer": "Horos", "layout": [1, 2], "version": 3}), encoding="utf-8")
    return path


def free_text_bad_date(c: Corpus) -> Path:
    case = next(iter(c.case_ids.values()))
    path = c.bad("free-text-bad-date", "letter_date.txt")
    path.write_text(f"Case: {case}\nDate: 2023-13-45\n\nTAVI uneventful.\n", encoding="utf-8")
    return path


def free_text_unknown_case(c: Corpus) -> Path:
    path = c.bad("free-text-unknown-case", "letter_case.txt")
    path.write_text("Case: F1999-999999\nDate: 2023-03-01\n\nTAVI uneventful.\n", encoding="utf-8")
    return path


def free_text_wrong_encoding(c: Corpus) -> Path:
    case = next(iter(c.case_ids.values()))
    path = c.bad("free-text-cp1252", "letter_cp1252.txt")
    path.write_bytes(f"Case: {case}\nDate: 2023-03-01\n\nPatientin nach TAVI beschwerdefrei, "
                     "Schrittmacher nicht nötig.\n".encode("cp1252"))
    return path


def _ct_bytes_and_pixel_tag(c: Corpus) -> tuple[bytes, int]:
    raw = c.first(f"pacs/{c.ct_patients[1]}/*/*/*.dcm").read_bytes()
    at = raw.rfind(b"\xe0\x7f\x10\x00")  # Pixel Data (7FE0,0010), little endian: the last element
    assert at > 0, "the synthetic CT has no Pixel Data element"
    return raw, at


def ct_cut_before_pixel_data(c: Corpus) -> Path:
    raw, at = _ct_bytes_and_pixel_tag(c)
    path = c.bad("ct-cut-before-pixel-data", "IM000006.dcm")
    path.write_bytes(raw[:at])  # every element before the pixels is complete
    return path


def ct_cut_inside_pixel_data_tag(c: Corpus) -> Path:
    raw, at = _ct_bytes_and_pixel_tag(c)
    path = c.bad("ct-cut-inside-pixel-data-tag", "IM000007.dcm")
    path.write_bytes(raw[:at + 6])  # the same object as above, with half of the Pixel Data header
    return path


def pydicom_rtplan_truncated(c: Corpus) -> Path:
    path = c.bad("rtplan-truncated", "RP000001.dcm")
    shutil.copyfile(get_testdata_file("rtplan_truncated.dcm"), path)  # type: ignore[arg-type]
    return path


def dicom_ecg_cut_at_70_percent(c: Corpus) -> Path:
    data = c.first("ecg/pacs/*.dcm").read_bytes()
    path = c.bad("dicom-ecg-cut-70", "ECG0002.dcm")
    path.write_bytes(data[: len(data) * 7 // 10])
    return path


def rtplan_missing_type1_and_type2(c: Corpus) -> Path:
    ds = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
    del ds.RTPlanLabel, ds.RTPlanDate  # type 1, type 2 of the RT General Plan module
    path = c.bad("rtplan-missing-type1", "RP000002.dcm")
    ds.save_as(path)
    return path


def _new_object(ds: pydicom.Dataset, *keywords: str, seed: str) -> pydicom.Dataset:
    """``ds`` with new UIDs for ``keywords`` (always the SOP Instance UID), derived from ``seed``."""
    for keyword in (*keywords, "SOPInstanceUID"):
        setattr(ds, keyword, pydicom.uid.generate_uid(entropy_srcs=["bad-corpus", seed, keyword]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def ct_missing_pixel_spacing(c: Corpus) -> Path:
    ds = _new_object(_ct_slice(c), seed="no-pixel-spacing")
    del ds.PixelSpacing  # type 1, and the CT export needs it
    path = c.bad("ct-missing-pixel-spacing", "IM000008.dcm")
    ds.save_as(path)
    return path


def dicom_invalid_is_value(c: Corpus) -> Path:
    # Converted: so a patient and series of its own, not one more slice in a series the site segmented.
    ds = _new_object(_ct_slice(c), "StudyInstanceUID", "SeriesInstanceUID", seed="invalid-is")
    ds.PatientID = "UKN0099990"
    ds[0x00200011] = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(0x00200011), "IS", 2, b"1A", 0, False,
                                                     True)  # Series Number '1A' as some PACS write it
    path = c.bad("dicom-invalid-is-value", "IM000009.dcm")
    ds.save_as(path)
    return path


def registry_cp1252_semicolon(c: Corpus) -> Path:
    header, rows = _registry_rows(c)
    header = header + ["BEMERKUNG"]
    rows = [r + ["Größe geschätzt"] for r in rows]
    path = c.bad("registry-cp1252-semicolon", "registry_excel.csv")
    with open(path, "w", newline="", encoding="cp1252") as fh:
        csv.writer(fh, delimiter=";").writerows([header, *rows])  # what Excel writes in a German locale
    return path


def csv_without_mapping(c: Corpus) -> Path:
    path = c.bad("csv-without-mapping", "bed_occupancy.csv")
    path.write_text("STATION,BETT,BELEGT\nK1,3,ja\nK1,4,nein\n", encoding="utf-8")
    return path


CASES: list[BadCase] = [
    BadCase("truncated-dicom", truncated_dicom, "quarantined", ("PixelData", "truncated", "export it again")),
    BadCase("text-named-dcm", text_named_dcm, "quarantined", ("not recognised", "site.yaml")),
    BadCase("dicom-no-sop-instance-uid", dicom_without_sop_instance_uid, "quarantined",
            ("SOPInstanceUID", "(0008,0018)", "export it again")),
    BadCase("dicom-no-patient-id", dicom_without_patient_id, "quarantined", ("PatientID", "(0010,0020)")),
    BadCase("dicom-ecg-no-patient-id", dicom_ecg_without_patient_id, "quarantined", ("PatientID", "missing")),
    BadCase("duplicate-sop-instance-uid", duplicate_sop_instance_uid, "duplicate",
            ("SOP Instance UID", "already in the store")),
    BadCase("identical-copy", identical_copy, "duplicate", ("identical content", "SHA-256")),
    BadCase("aecg-external-entity", aecg_external_entity, "quarantined", ("DOCTYPE", "entities")),
    BadCase("muse-entity-bomb", muse_entity_bomb, "quarantined", ("DOCTYPE", "entities")),
    BadCase("muse-truncated", muse_truncated, "quarantined", ("truncated",)),
    BadCase("muse-invalid-base64", muse_invalid_base64, "quarantined", ("WaveFormData", "base64")),
    BadCase("muse-five-leads", muse_five_leads, "quarantined", ("LeadData", "V4", "V5", "V6")),
    BadCase("aecg-mismatched-lead-lengths", aecg_mismatched_lead_lengths, "quarantined",
            ("sequenceSet", "different numbers")),
    BadCase("scp-bad-crc", scp_bad_crc, "quarantined", ("CRC", "corrupted")),
    BadCase("scp-section-length-past-end", scp_section_length_past_end, "quarantined",
            ("section 8 length", "past the end")),
    BadCase("scp-truncated", scp_truncated, "quarantined", ("record length", "truncated")),
    BadCase("scp-huffman-truncated-lead", scp_huffman_truncated_lead, "quarantined",
            ("section 6 lead V6", "Huffman bitstream ends inside sample")),
    BadCase("scp-reference-beat-subtraction", scp_reference_beat_subtraction, "quarantined",
            ("section 3 reference beat subtraction", "export the ECG without compression or as DICOM/aECG")),
    BadCase("registry-renamed-column", registry_renamed_and_unknown_columns, "quarantined",
            ("HEIGHT_CM", "HEIGHT_IN_CM", "registry.columns")),
    BadCase("registry-cp1252", registry_wrong_encoding, "quarantined", ("registry.format.encoding", "cp1252")),
    BadCase("registry-decimal-comma", registry_decimal_comma, "part", ("WEIGHT_KG", "81,5", "decimal")),
    BadCase("registry-unknown-value", registry_unknown_value, "part", ("SEX", "'x'", "registry.value_maps.sex")),
    BadCase("procedures-unparseable-date", procedures_unparseable_date, "part",
            ("PROC_DATE", "31.02.2021", "procedures.format.date_format")),
    BadCase("procedures-no-ops-codes", procedures_all_rows_bad, "quarantined",
            ("none of the", "not an OPS code")),
    BadCase("procedures-unknown-case", procedures_unknown_case, "part",
            ("F1999-000000", "identifier mapping")),
    BadCase("binary-junk-csv", binary_junk_csv, "quarantined", ("not recognised",)),
    BadCase("empty-file", empty_file, "quarantined", ("empty", "0 bytes")),
    BadCase("zero-byte-nifti", zero_byte_nifti, "quarantined", ("empty", "0 bytes")),
    BadCase("gzip-corrupt", gzip_that_is_not_gzip, "quarantined", ("gzip", "damaged")),
    BadCase("text-named-gz", text_named_gz, "quarantined", ("not recognised",)),
    BadCase("seg-shape-mismatch", seg_shape_mismatch, "quarantined",
            ("shape (20, 20, 10)", "voxel grid", "CT series")),
    BadCase("seg-unknown-label", seg_unknown_label, "quarantined", ("[9]", "segmentation.labels")),
    BadCase("seg-patient-without-ct", seg_for_patient_without_ct, "quarantined", ("no CT series", "UKN0099998")),
    BadCase("markups-points-outside", markups_points_outside, "quarantined",
            ("outside the CT volume", "coordinate system")),
    BadCase("markups-unknown-patient", markups_unknown_patient, "quarantined", ("no CT series", "UKN0099999")),
    BadCase("markups-unlabelled-point", markups_unknown_label, "quarantined", ("'F-1'", "label")),
    BadCase("json-not-markups", json_not_markups, "quarantined", ("'markups' list",)),
    BadCase("json-other-app", json_other_app, "quarantined", ("not recognised",)),
    BadCase("free-text-bad-date", free_text_bad_date, "quarantined", ("2023-13-45", "free_text.date_format")),
    BadCase("free-text-unknown-case", free_text_unknown_case, "quarantined",
            ("F1999-999999", "identifier mapping")),
    BadCase("free-text-cp1252", free_text_wrong_encoding, "quarantined", ("free_text.encoding", "utf-8")),
    BadCase("ct-cut-before-pixel-data", ct_cut_before_pixel_data, "quarantined",
            ("image SOP class", "no Pixel Data", "truncated", "export it again")),
    BadCase("ct-cut-inside-pixel-data-tag", ct_cut_inside_pixel_data_tag, "quarantined",
            ("PixelData (7FE0,0010)", "truncated", "export it again")),
    BadCase("rtplan-truncated", pydicom_rtplan_truncated, "quarantined",
            ("BeamSequence (300A,00B0)", "truncated", "export it again")),
    BadCase("dicom-ecg-cut-70", dicom_ecg_cut_at_70_percent, "quarantined",
            ("WaveformSequence", "truncated", "export it again")),
    BadCase("rtplan-missing-type1", rtplan_missing_type1_and_type2, "warning",
            ("type 1 attribute RTPlanLabel (300A,0002)", "RT Plan Storage requires it", "strictness")),
    BadCase("ct-missing-pixel-spacing", ct_missing_pixel_spacing, "quarantined",
            ("PixelSpacing (0028,0030)", "type 1", "the index or the export needs")),
    BadCase("dicom-invalid-is-value", dicom_invalid_is_value, "warning",
            ("pydicom", "Invalid value for VR IS: '1A'")),
    BadCase("registry-cp1252-semicolon", registry_cp1252_semicolon, "quarantined",
            ("registry.format.encoding: cp1252", "registry.format.delimiter: ';'")),
    BadCase("csv-without-mapping", csv_without_mapping, "quarantined",
            ("'STATION'", "column mapping", "registry.columns", "procedures.columns", "identifiers")),
]
IDS = [case.id for case in CASES]


# --- one ingest of the whole corpus --------------------------------------------------------------------
def _templates(folder: Path) -> dict[str, Path]:
    """One valid export per non-DICOM ECG format, written by the synthetic site writers."""
    out = {}
    for key, index in (("muse", 1), ("aecg", 2), ("scp", 3)):
        profile = PROFILES[index]
        patient = next(p for p in generate_site(5, profile.site_id, 10, profile.mix, profile.pacs_prefix,
                                                profile.case_prefix) if p.ecg)
        out[key] = write_ecg(patient, profile, folder / key)[0]
    return out


@dataclass
class Ingested:
    corpus: Corpus
    report: IngestReport
    store: Path
    bad_inputs: dict[str, str]  # case id -> input path relative to raw
    clean_sop_uids: set[str]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    root = tmp_path_factory.mktemp("corpus")
    synth: SynthSite = synthesize_site(PROFILES[0], N_PATIENTS, SEED, root / "consortium")
    site = load_site_config(synth.site_config)
    with open(synth.folder / "truth.csv", encoding="utf-8") as fh:
        truth = list(csv.DictReader(fh))
    ct_patients = sorted(p.name for p in (synth.raw_dir / "pacs").iterdir())
    assert len(ct_patients) >= 2, "the corpus needs two patients with a CT; choose another SEED"
    clean = ingest_folder(synth.raw_dir, root / "clean-store", site, index=False)
    assert clean.quarantined == 0 and clean.duplicates == 0, clean.quarantine
    clean_uids = set(Store(root / "clean-store").sop_paths())

    corpus = Corpus(raw=synth.raw_dir, site=site, templates=_templates(root / "templates"),
                    ct_patients=ct_patients, case_ids={t["pacs_id"]: t["case_id"] for t in truth})
    # Real files from elsewhere (pydicom's test data) are valid inputs too.
    extra = synth.raw_dir / "imported"
    extra.mkdir()
    for name in ("CT_small.dcm", "waveform_ecg.dcm"):
        shutil.copyfile(get_testdata_file(name), extra / name)  # type: ignore[arg-type]
    bad_inputs = {}
    for case in CASES:
        path = case.make(corpus)
        bad_inputs[case.id] = path.relative_to(synth.raw_dir).as_posix()
    report = ingest_folder(synth.raw_dir, root / "store", site, index=False)
    return Ingested(corpus, report, root / "store", bad_inputs, clean_uids)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len(set(IDS)) == len(IDS)


def test_run_accounts_for_every_input(ingested: Ingested) -> None:
    r = ingested.report
    r.check_invariant()
    assert r.inputs == r.converted + r.duplicates + r.quarantined
    every = {p.relative_to(ingested.corpus.raw).as_posix() for p in ingested.corpus.raw.rglob("*") if p.is_file()}
    outcomes = ([q.input for q in r.quarantine] + [d.input for d in r.duplicate_inputs])
    assert len(outcomes) == len(set(outcomes))
    assert r.inputs == len(every)
    assert not any("failed unexpectedly" in q.reason for q in r.quarantine), \
        [q.reason for q in r.quarantine if "failed unexpectedly" in q.reason]


def test_every_valid_input_is_still_converted(ingested: Ingested) -> None:
    r = ingested.report
    failed = {q.input for q in r.quarantine} | {d.input for d in r.duplicate_inputs}
    valid_failed = sorted(f for f in failed if not f.startswith(BAD + "/"))
    assert valid_failed == []
    stored = set(Store(ingested.store).sop_paths())
    assert ingested.clean_sop_uids <= stored  # everything the clean site gives is in the corpus store
    # The imported real files became objects too: a CT and a 12-lead ECG (plus its report).
    assert r.objects_by_sop_class["12-lead ECG Waveform Storage"] >= 1 + sum(
        1 for p in ingested.corpus.raw.glob("ecg/pacs/*.dcm"))


def test_valid_objects_lack_no_attribute_their_sop_class_requires(ingested: Ingested) -> None:
    # Every kind the site stores (CT, SEG, SRs of each template, ECG waveforms): no false alarms.
    from cohort.dicom.conformance import missing_attributes

    clean = [p for p in Store(ingested.store).files() if p.stem in ingested.clean_sop_uids]
    kinds = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in clean}
    assert len(kinds) >= 4, kinds
    found = {p.name: [m.where for m in missing_attributes(pydicom.dcmread(p))] for p in clean}
    assert {k: v for k, v in found.items() if v} == {}
    assert not [w for w in ingested.report.warnings if not w.input.startswith(BAD + "/")]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_gets_its_outcome_and_an_actionable_reason(ingested: Ingested, case: BadCase) -> None:
    r = ingested.report
    rel = ingested.bad_inputs[case.id]
    quarantined = {q.input: q for q in r.quarantine}
    duplicates = {d.input: d for d in r.duplicate_inputs}
    parts = [p for p in r.rejected_parts if p.input == rel]
    if case.outcome == "quarantined":
        assert rel in quarantined, f"{rel}: expected quarantine; duplicate={rel in duplicates}, parts={parts}"
        q = quarantined[rel]
        reason, copy = q.reason, ingested.store / q.copy
        assert copy.read_bytes() == (ingested.corpus.raw / rel).read_bytes()  # nothing is lost
    elif case.outcome == "warning":
        assert rel not in quarantined and rel not in duplicates, f"{rel}: expected a converted input"
        found = [w for w in r.warnings if w.input == rel]
        assert found, f"{rel}: expected a warning in the report"
        reason = next((w.message for w in found if case.words[0].lower() in w.message.lower()), found[0].message)
        copy = None
    elif case.outcome == "duplicate":
        assert rel in duplicates, f"{rel}: expected a duplicate; quarantined={quarantined.get(rel)}"
        reason = duplicates[rel].reason
        assert not duplicates[rel].duplicate_of.startswith(BAD + "/")  # the valid input keeps its place
        copy = None
    else:
        assert rel not in quarantined and rel not in duplicates, f"{rel}: expected a converted input"
        assert len(parts) == 1, parts
        reason, copy = f"{parts[0].where}: {parts[0].reason}", ingested.store / parts[0].copy
        assert copy.read_text(encoding="utf-8").strip()  # the rejected row is kept
    for word in case.words:
        assert word.lower() in reason.lower(), f"{case.id}: {word!r} not in reason {reason!r}"
    if copy is not None:
        reason_file = Path(str(copy.with_suffix("")) + ".reason.txt") if case.outcome == "part" \
            else Path(f"{copy}.reason.txt")
        assert reason_file.read_text(encoding="utf-8").strip() == reason.strip()
