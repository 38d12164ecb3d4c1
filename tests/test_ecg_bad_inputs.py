"""Damaged or hostile ECG inputs: each must raise InputError naming the file, the field and the fix."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cohort.dicom.codes import TWELVE_LEADS
from cohort.ecg.readers.aecg import read_aecg
from cohort.ecg.readers.dicom_ecg import read_dicom_ecg
from cohort.ecg.readers.muse import read_muse
from cohort.ecg.readers.scp_huffman import DEFAULT_TABLE, HuffmanCode, HuffmanTable
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ecg.record import EcgRecord
from cohort.errors import InputError
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.writers.ecg import prepare_export, write_ecg
from cohort.synth.writers.scpecg import (
    ScpCompression,
    crc_ccitt,
    render_record,
    section2_body,
    section_bodies,
)

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


# --- SCP-ECG Huffman-coded rhythm data: a valid file of the SCP site, then one section body changed ---
_SCP_LEADS = len(TWELVE_LEADS)
# 0 and 1 in the table, everything else escapes to 16 bits; bits "111" are no code.
_INCOMPLETE_TABLE = HuffmanTable((HuffmanCode("0", 0), HuffmanCode("10", 1), HuffmanCode("110", 0, extra_bits=16)))


_CART_HUFFMAN = ScpCompression(DEFAULT_TABLE, 2)  # what most carts write: default table, second differences


def _scp_huffman(tmp: Path, edit: Callable[[dict[int, bytes]], None],
                 compression: ScpCompression = _CART_HUFFMAN) -> Path:
    bodies = section_bodies(prepare_export(_patient(3), PROFILES[3], language="de"), compression)
    edit(bodies)
    path = tmp / "EKG_huffman.scp"
    path.write_bytes(render_record(bodies))
    return path


def _split6(body: bytes) -> tuple[bytes, list[bytes]]:
    """Section 6 body -> (its 6-byte header, the data of each lead)."""
    counts = struct.unpack_from(f"<{_SCP_LEADS}H", body, 6)
    data, at = [], 6 + 2 * _SCP_LEADS
    for n in counts:
        data.append(body[at:at + n])
        at += n
    return body[:6], data


def _join6(header: bytes, data: list[bytes], counts: list[int] | None = None) -> bytes:
    counts = [len(d) for d in data] if counts is None else counts
    return header + struct.pack(f"<{_SCP_LEADS}H", *counts) + b"".join(data)


def scp_huffman_truncated_lead(tmp: Path) -> Path:
    def cut_v2(bodies: dict[int, bytes]) -> None:
        header, data = _split6(bodies[6])
        k = TWELVE_LEADS.index("V2")
        data[k] = data[k][: len(data[k]) // 2]  # the byte count says so too: the bitstream itself is short
        bodies[6] = _join6(header, data)
    return _scp_huffman(tmp, cut_v2)


def scp_huffman_code_not_in_table(tmp: Path) -> Path:
    def junk_v4(bodies: dict[int, bytes]) -> None:
        header, data = _split6(bodies[6])
        k = TWELVE_LEADS.index("V4")
        data[k] = b"\xff" * len(data[k])
        bodies[6] = _join6(header, data)
    return _scp_huffman(tmp, junk_v4, ScpCompression(_INCOMPLETE_TABLE, 1))


def scp_huffman_lead_length_overrun(tmp: Path) -> Path:
    def overrun_v6(bodies: dict[int, bytes]) -> None:
        header, data = _split6(bodies[6])
        counts = [len(d) for d in data]
        counts[-1] += 1000  # V6 is the last lead: its count now reaches past the section
        bodies[6] = _join6(header, data, counts)
    return _scp_huffman(tmp, overrun_v6)


def scp_section2_truncated_table(tmp: Path) -> Path:
    def cut_table(bodies: dict[int, bytes]) -> None:
        bodies[2] = section2_body(_INCOMPLETE_TABLE)[:20]
    return _scp_huffman(tmp, cut_table, ScpCompression(_INCOMPLETE_TABLE, 1))


def scp_section2_table_switch(tmp: Path) -> Path:
    def switch(bodies: dict[int, bytes]) -> None:
        # code "0" stands for 0; code "1" (table mode switch 0) switches to table 2
        bodies[2] = struct.pack("<HH", 2, 2) + struct.pack("<BBBhI", 1, 1, 1, 0, 0) + \
            struct.pack("<BBBhI", 1, 1, 0, 2, 1) + struct.pack("<H", 1) + struct.pack("<BBBhI", 1, 1, 1, 0, 0)
    return _scp_huffman(tmp, switch)


def scp_reference_beat_subtraction(tmp: Path) -> Path:
    def flag(bodies: dict[int, bytes]) -> None:
        s3 = bytearray(bodies[3])
        s3[1] |= 0x01  # section 3 flags, bit 0: reference beat subtracted from the rhythm data
        bodies[3] = bytes(s3)
    return _scp_huffman(tmp, flag)


def scp_bimodal_compression(tmp: Path) -> Path:
    def bimodal(bodies: dict[int, bytes]) -> None:
        s6 = bytearray(bodies[6])
        s6[5] = 1  # section 6 header byte 6: bimodal compression used
        bodies[6] = bytes(s6)
    return _scp_huffman(tmp, bimodal)


def scp_third_differences(tmp: Path) -> Path:
    def third(bodies: dict[int, bytes]) -> None:
        bodies[6] = bodies[6][:4] + b"\x03" + bodies[6][5:]  # section 6 header byte 5: difference data used
    return _scp_huffman(tmp, third)


def scp_lead_ends_before_it_starts(tmp: Path) -> Path:
    def swap_v1(bodies: dict[int, bytes]) -> None:
        s3 = bytearray(bodies[3])
        at = 2 + 9 * TWELVE_LEADS.index("V1")  # lead definitions: first sample, last sample, lead id
        struct.pack_into("<II", s3, at, 5000, 1)
        bodies[3] = bytes(s3)
    return _scp_huffman(tmp, swap_v1)


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
    ("scp-huffman-truncated-lead", scp_huffman_truncated_lead, read_scpecg, "section 6 lead V2",
     "V2 (lead id 4): Huffman bitstream ends inside sample"),
    ("scp-huffman-code-not-in-table", scp_huffman_code_not_in_table, read_scpecg, "section 6 lead V4",
     "bits '111' at bit 0 (sample 1 of 5000) are not a code of the Huffman table"),
    ("scp-huffman-lead-length-overrun", scp_huffman_lead_length_overrun, read_scpecg, "section 6 lead V6",
     "bytes of data but only"),
    ("scp-section2-truncated-table", scp_section2_truncated_table, read_scpecg, "section 2",
     "section ends inside Huffman table 1 (3 code structures of 9 bytes need 27, 16 remain)"),
    ("scp-section2-table-switch", scp_section2_table_switch, read_scpecg, "section 2",
     "table switch code (table mode switch 0), which this reader does not support"),
    ("scp-reference-beat-subtraction", scp_reference_beat_subtraction, read_scpecg,
     "section 3 reference beat subtraction", "export the ECG without compression or as DICOM/aECG"),
    ("scp-bimodal-compression", scp_bimodal_compression, read_scpecg, "section 6 bimodal compression",
     "decimated"),
    ("scp-third-differences", scp_third_differences, read_scpecg, "section 6 difference data used",
     "difference data used is 3"),
    ("scp-lead-ends-before-it-starts", scp_lead_ends_before_it_starts, read_scpecg, "section 3 lead definitions",
     "V1 (lead id 3) ends at sample 1, before its first sample 5000"),
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
                                        (_scp_huffman_unchanged, read_scpecg), (_dicom, read_dicom_ecg))):
        path = make(tmp_path / str(k))
        reader(path).check(str(path))


def _scp_huffman_unchanged(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return _scp_huffman(tmp, lambda bodies: None)
