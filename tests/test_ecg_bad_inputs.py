"""Damaged or hostile ECG inputs: each must raise InputError naming the file, the field and the fix."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cohort.ecg.readers.aecg import read_aecg
from cohort.ecg.readers.dicom_ecg import read_dicom_ecg
from cohort.ecg.readers.muse import read_muse
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ecg.record import EcgRecord
from cohort.errors import InputError
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.writers.ecg import write_ecg
from cohort.synth.writers.scpecg import crc_ccitt

Reader = Callable[[Path], EcgRecord]


def _patient(profile_index: int) -> SyntheticPatient:
    p = PROFILES[profile_index]
    return next(x for x in generate_site(5, p.site_id, 10, p.mix, p.pacs_prefix, p.case_prefix) if x.ecg)


def _good(tmp: Path, profile_index: int) -> Path:
    return write_ecg(_patient(profile_index), PROFILES[profile_index], tmp / "raw")[0]


def _muse(tmp: Path) -> Path:
    return _good(tmp, 1)


def _aecg(tmp: Path) -> Path:
    return _good(tmp, 2)


def _scp(tmp: Path) -> Path:
    return _good(tmp, 3)


def _dicom(tmp: Path) -> Path:
    return _good(tmp, 0)


def xxe(tmp: Path) -> Path:
    path = _aecg(tmp)
    text = path.read_text(encoding="utf-8")
    text = text.replace('<?xml version="1.0" encoding="UTF-8"?>',
                        '<?xml version="1.0"?>\n<!DOCTYPE AnnotatedECG [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>')
    text = text.replace("<family>", "<family>&xxe;", 1)
    path.write_text(text, encoding="utf-8")
    return path


def entity_bomb(tmp: Path) -> Path:
    lol = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{k} "{("&lol" + (str(k - 1) if k > 1 else "") + ";") * 10}">'
                                     for k in range(1, 10)]
    path = tmp / "bomb.xml"
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE RestingECG [{"".join(lol)}]>\n'
                    "<RestingECG><PatientDemographics><PatientID>&lol9;</PatientID></PatientDemographics></RestingECG>")
    return path


def truncated_xml(tmp: Path) -> Path:
    path = _muse(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def muse_bad_base64(tmp: Path) -> Path:
    path = _muse(tmp)
    text = path.read_text(encoding="iso-8859-1")
    text = re.sub(r"<WaveFormData>[^<]{10}", "<WaveFormData>@@@@!!!!%%", text, count=1)
    path.write_text(text, encoding="iso-8859-1")
    return path


def muse_five_leads(tmp: Path) -> Path:
    path = _muse(tmp)
    text = path.read_text(encoding="iso-8859-1")
    for lead in ("V4", "V5", "V6"):
        text = re.sub(rf"<LeadData>(?:(?!</LeadData>).)*<LeadID>{lead}</LeadID>.*?</LeadData>\s*", "", text,
                      count=1, flags=re.S)
    path.write_text(text, encoding="iso-8859-1")
    return path


def aecg_mismatched_lengths(tmp: Path) -> Path:
    path = _aecg(tmp)
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition('code="MDC_ECG_LEAD_V3"')
    digits_start = rest.index("<digits>") + len("<digits>")
    digits_end = rest.index("</digits>")
    short = " ".join(rest[digits_start:digits_end].split()[:4000])
    path.write_text(head + 'code="MDC_ECG_LEAD_V3"' + rest[:digits_start] + short + rest[digits_end:], encoding="utf-8")
    return path


def scp_bad_file_crc(tmp: Path) -> Path:
    path = _scp(tmp)
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF  # a sample in section 6 changes; the stored CRCs do not
    path.write_bytes(bytes(data))
    return path


def _fix_crcs(data: bytearray, section_offset: int) -> None:
    """Recompute one section's CRC and the record CRC, so that only the intended damage remains."""
    (length,) = struct.unpack_from("<I", data, section_offset + 4)
    struct.pack_into("<H", data, section_offset, crc_ccitt(data[section_offset + 2:section_offset + length]))
    struct.pack_into("<H", data, 0, crc_ccitt(data[2:]))


def scp_section_length_past_end(tmp: Path) -> Path:
    path = _scp(tmp)
    data = bytearray(path.read_bytes())
    (s0_len,) = struct.unpack_from("<I", data, 6 + 4)
    for k in range((s0_len - 16) // 10):
        at = 6 + 16 + 10 * k
        sid, sec_len, index = struct.unpack_from("<HII", data, at)
        if sid == 8:
            struct.pack_into("<HII", data, at, sid, sec_len + 4096, index)  # the pointer now overruns the file
    _fix_crcs(data, 6)
    path.write_bytes(bytes(data))
    return path


def scp_truncated(tmp: Path) -> Path:
    path = _scp(tmp)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    return path


def dicom_without_patient_id(tmp: Path) -> Path:
    path = _dicom(tmp)
    ds = pydicom.dcmread(path)
    del ds.PatientID
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_sampling_rate_out_of_range(tmp: Path) -> Path:
    path = _dicom(tmp)
    ds = pydicom.dcmread(path)
    ds.WaveformSequence[0].SamplingFrequency = "100"
    ds.save_as(path, enforce_file_format=True)
    return path


def aecg_sampling_rate_out_of_range(tmp: Path) -> Path:
    path = _aecg(tmp)
    path.write_text(path.read_text(encoding="utf-8").replace('<increment value="0.002" unit="s"/>',
                                                             '<increment value="0.0002" unit="s"/>'), encoding="utf-8")
    return path


def muse_not_base64_alphabet_but_padding(tmp: Path) -> Path:
    path = _muse(tmp)
    text = path.read_text(encoding="iso-8859-1")
    raw = base64.b64encode(b"\x01\x02\x03").decode()  # 3 bytes: not whole 16-bit samples
    text = re.sub(r"<WaveFormData>[^<]*</WaveFormData>", f"<WaveFormData>{raw}</WaveFormData>", text, count=1)
    path.write_text(text, encoding="iso-8859-1")
    return path


CASES: list[tuple[str, Callable[[Path], Path], Reader, str, str]] = [
    # id, make bad file, reader, field named, words of the message
    ("xml-external-entity", xxe, read_aecg, "DOCTYPE", "entities"),
    ("xml-entity-bomb", entity_bomb, read_muse, "DOCTYPE", "entities"),
    ("xml-truncated", truncated_xml, read_muse, "xml", "truncated"),
    ("muse-invalid-base64", muse_bad_base64, read_muse, "Waveform/LeadData[I]/WaveFormData", "base64"),
    ("muse-odd-byte-count", muse_not_base64_alphabet_but_padding, read_muse, "Waveform/LeadData[I]/WaveFormData",
     "16-bit"),
    ("muse-five-leads", muse_five_leads, read_muse, "Waveform/LeadData", "missing ['V4', 'V5', 'V6']"),
    ("aecg-mismatched-lead-lengths", aecg_mismatched_lengths, read_aecg, "sequenceSet", "different numbers"),
    ("aecg-sampling-rate-5000Hz", aecg_sampling_rate_out_of_range, read_aecg, "sampling_frequency", "200-1000"),
    ("scp-bad-file-crc", scp_bad_file_crc, read_scpecg, "record CRC", "corrupted"),
    ("scp-section-length-past-end", scp_section_length_past_end, read_scpecg, "section 8 length", "past the end"),
    ("scp-truncated", scp_truncated, read_scpecg, "record length", "truncated"),
    ("dicom-without-patient-id", dicom_without_patient_id, read_dicom_ecg, "PatientID", "missing"),
    ("dicom-sampling-rate-100Hz", dicom_sampling_rate_out_of_range, read_dicom_ecg, "sampling_frequency",
     "200-1000"),
]


@pytest.mark.parametrize("make,reader,field,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_input_error_naming_file_and_field(
        make: Callable[[Path], Path], reader: Reader, field: str, words: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError) as info:
        reader(path).check(str(path))  # what a converter does: read, then check before building DICOM
    err = info.value
    assert err.path == str(path)
    assert err.field == field
    assert words in str(err)
    assert str(path) in str(err)


def test_good_inputs_pass_the_same_path(tmp_path: Path) -> None:
    """The cases above fail because of their damage, not because of the unmodified export."""
    for k, (make, reader) in enumerate(((_muse, read_muse), (_aecg, read_aecg), (_scp, read_scpecg),
                                        (_dicom, read_dicom_ecg))):
        path = make(tmp_path / str(k))
        reader(path).check(str(path))
