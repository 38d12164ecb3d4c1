"""Reader of SCP-ECG (EN 1064) binary resting ECGs.

Validates the record CRC and length, every section header (CRC, length inside the record) and the
section 0 pointer table before reading sections 1 (patient and acquisition tags), 2 (Huffman tables),
3 (leads), 6 (rhythm data), 7 (global measurements) and 8 (interpretation statements). Rhythm data may
be plain 16-bit samples or Huffman-coded (the default table or one from section 2, see
``scp_huffman``), with first or second differences undone; reference beat subtraction and bimodal
compression are refused with that reason.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from cohort.dicom.codes import LEAD_CODES_SCPECG
from cohort.ecg.readers import findings_from_statements, read_input_bytes
from cohort.ecg.readers.scp_huffman import (
    HuffmanError,
    HuffmanTable,
    HuffmanUnsupportedError,
    decode_lead,
    parse_section2,
    undo_differences,
)
from cohort.ecg.record import EcgRecord, derive_limb_leads
from cohort.errors import InputError

LEAD_NAMES = {int(code.rsplit("-", 1)[1]): lead for lead, code in LEAD_CODES_SCPECG.items()}
MISSING_VALUES = {29999, 29998, 19999}  # "not computed", "rejected lead", "wave not present"
UNDEFINED_AXIS = 999
_RECORD_HEADER = 6
_SECTION_HEADER = 16


@dataclass(frozen=True)
class _Section:
    sid: int
    offset: int
    body: bytes


def _crc(data: bytes) -> int:
    return binascii.crc_hqx(data, 0xFFFF)  # CRC-CCITT, polynomial 0x1021, initial 0xFFFF


class _Reader:
    """Bounds-checked little-endian reads from one section body; errors name the section."""

    def __init__(self, path: Path, section: _Section) -> None:
        self.path, self.section, self.pos = path, section, 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.section.body):
            raise InputError(f"section ends before {what} (needs {size} bytes at body offset {self.pos}, "
                             f"body has {len(self.section.body)}); the file is damaged: re-export it",
                             path=str(self.path), field=f"section {self.section.sid}")
        values = struct.unpack_from(fmt, self.section.body, self.pos)
        self.pos += size
        return values

    def remaining(self) -> int:
        return len(self.section.body) - self.pos


def _sections(path: Path, data: bytes) -> dict[int, _Section]:
    if len(data) < _RECORD_HEADER + _SECTION_HEADER:
        raise InputError(f"file has {len(data)} bytes, too short for an SCP-ECG record; it is truncated",
                         path=str(path), field="record length")
    crc, length = struct.unpack_from("<HI", data)
    if length > len(data):
        raise InputError(f"record length field says {length} bytes but the file has {len(data)}; the file is "
                         "truncated: copy or re-export it completely", path=str(path), field="record length")
    if _crc(data[2:length]) != crc:
        raise InputError(f"record CRC 0x{crc:04X} does not match the content (0x{_crc(data[2:length]):04X}); "
                         "the file is corrupted: re-export it", path=str(path), field="record CRC")
    s0 = _section_at(path, data, length, _RECORD_HEADER, expected_id=0)
    if len(s0.body) % 10:
        raise InputError("section 0 pointer table is not a multiple of 10 bytes", path=str(path),
                         field="section 0")
    sections = {0: s0}
    for k in range(len(s0.body) // 10):
        sid, sec_len, index = struct.unpack_from("<HII", s0.body, 10 * k)
        if sec_len == 0 or sid == 0:
            continue
        if index < 1 or index - 1 + sec_len > length:
            raise InputError(f"section 0 points to section {sid} at byte {index} with length {sec_len}, past the "
                             f"end of the {length}-byte record; the file is damaged", path=str(path),
                             field=f"section {sid} length")
        sec = _section_at(path, data, length, index - 1, expected_id=sid)
        if len(sec.body) + _SECTION_HEADER != sec_len:
            raise InputError(f"section 0 says section {sid} has {sec_len} bytes, its header says "
                             f"{len(sec.body) + _SECTION_HEADER}", path=str(path), field=f"section {sid} length")
        sections[sid] = sec
    return sections


def _section_at(path: Path, data: bytes, record_len: int, offset: int, expected_id: int) -> _Section:
    if offset + _SECTION_HEADER > record_len:
        raise InputError(f"section {expected_id} header at byte {offset + 1} lies past the end of the record",
                         path=str(path), field=f"section {expected_id} length")
    crc, sid, sec_len = struct.unpack_from("<HHI", data, offset)
    if sid != expected_id:
        raise InputError(f"expected section {expected_id} at byte {offset + 1}, found section id {sid}",
                         path=str(path), field=f"section {expected_id}")
    if sec_len < _SECTION_HEADER or offset + sec_len > record_len:
        raise InputError(f"section {sid} length {sec_len} at byte {offset + 1} runs past the end of the "
                         f"{record_len}-byte record; the file is damaged or truncated", path=str(path),
                         field=f"section {sid} length")
    if _crc(data[offset + 2:offset + sec_len]) != crc:
        raise InputError(f"section {sid} CRC 0x{crc:04X} does not match its content; the file is corrupted",
                         path=str(path), field=f"section {sid} CRC")
    return _Section(sid, offset, data[offset + _SECTION_HEADER:offset + sec_len])


def _tags(path: Path, s1: _Section) -> dict[int, bytes]:
    r = _Reader(path, s1)
    tags: dict[int, bytes] = {}
    while r.remaining() >= 3:
        tag, size = r.take("<BH", "a tag header")
        if tag == 255:
            break
        (value,) = r.take(f"<{size}s", f"the value of tag {tag}")
        tags.setdefault(tag, value)
    return tags


def _string(value: bytes) -> str:
    return value.split(b"\x00", 1)[0].decode("latin-1").strip()


def _acquired(path: Path, tags: dict[int, bytes]) -> datetime:
    if 25 not in tags or len(tags[25]) < 4:
        raise InputError("no acquisition date (tag 25); the cart must write it", path=str(path),
                         field="section 1 tag 25")
    year, month, day = struct.unpack_from("<HBB", tags[25])
    hour, minute, second = struct.unpack_from("<BBB", tags[26]) if len(tags.get(26, b"")) >= 3 else (0, 0, 0)
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise InputError(f"invalid acquisition date/time ({exc})", path=str(path), field="section 1 tag 25/26") from None


def _device(tags: dict[int, bytes]) -> tuple[str, str]:
    value = tags.get(14, b"")
    if len(value) < 36:
        return "", ""
    model = _string(value[8:14])
    # 35 fixed bytes, the length of the analysing program revision, that revision, then NUL-terminated
    # serial number, system software, SCP implementation software and manufacturer trade name.
    rest = value[36 + value[35]:].split(b"\x00")
    maker = rest[3].decode("latin-1").strip() if len(rest) > 3 else ""
    return maker, model


def _lead_name(lead_id: int) -> str:
    return f"{LEAD_NAMES[lead_id]} (lead id {lead_id})" if lead_id in LEAD_NAMES else f"lead id {lead_id}"


def _huffman_table(path: Path, sections: dict[int, _Section]) -> HuffmanTable | None:
    """The table lead data starts with, or None when the data is not Huffman-coded."""
    if 2 not in sections:
        return None
    try:
        tables = parse_section2(sections[2].body)
    except HuffmanUnsupportedError as exc:
        raise InputError(f"{exc}; export the ECG uncompressed or as DICOM/aECG", path=str(path),
                         field="section 2") from None
    except HuffmanError as exc:
        raise InputError(f"{exc}; the file is damaged: re-export it", path=str(path), field="section 2") from None
    return tables[0] if tables else None  # 0 tables: data stored as plain 16-bit samples


def _leads(path: Path, sections: dict[int, _Section]) -> tuple[dict[str, np.ndarray], float]:
    r3 = _Reader(path, sections[3])
    n_leads, flags = r3.take("<BB", "the number of leads")
    if flags & 0x01:
        raise InputError("rhythm data is stored as residuals after reference beat subtraction (section 3 flag; "
                         "reference beats in section 5 at the QRS positions of section 4), which this reader does "
                         "not reconstruct; export the ECG without compression or as DICOM/aECG",
                         path=str(path), field="section 3 reference beat subtraction")
    defs = [r3.take("<IIB", f"lead definition {k + 1}") for k in range(n_leads)]
    for start, end, lead_id in defs:
        if end < start:
            raise InputError(f"{_lead_name(lead_id)} ends at sample {end}, before its first sample {start}; the "
                             "file is damaged: re-export it", path=str(path), field="section 3 lead definitions")
    r6 = _Reader(path, sections[6])
    avm_nv, interval_us, diff, bimodal = r6.take("<HHBB", "the rhythm data header")
    if interval_us == 0:
        raise InputError("sample time interval is 0", path=str(path), field="section 6 sample time interval")
    if bimodal:
        raise InputError(f"bimodal compression is used (value {bimodal}: samples outside the protected QRS zones "
                         "are decimated), which this reader does not reconstruct; export the ECG without "
                         "compression or as DICOM/aECG", path=str(path), field="section 6 bimodal compression")
    if diff not in (0, 1, 2):
        raise InputError(f"difference data used is {diff}; EN 1064 defines 0 (none), 1 (first) and 2 (second "
                         "differences)", path=str(path), field="section 6 difference data used")
    table = _huffman_table(path, sections)
    counts = [r6.take("<H", f"the byte count of {_lead_name(d[2])}")[0] for d in defs]
    leads: dict[str, np.ndarray] = {}
    for (start, end, lead_id), nbytes in zip(defs, counts, strict=True):
        where = f"section 6 lead {LEAD_NAMES.get(lead_id, lead_id)}"
        if nbytes > r6.remaining():
            raise InputError(f"{_lead_name(lead_id)} has {nbytes} bytes of data but only {r6.remaining()} remain "
                             "in section 6; the file is damaged: re-export it", path=str(path), field=where)
        (raw,) = r6.take(f"<{nbytes}s", f"the samples of {_lead_name(lead_id)}")
        n_samples = end - start + 1
        if table is None:
            if nbytes != 2 * n_samples:
                raise InputError(f"{_lead_name(lead_id)}: {nbytes} bytes of data for {n_samples} samples; "
                                 "uncompressed data has 2 bytes per sample (Huffman-coded data needs section 2)",
                                 path=str(path), field="section 6 lead data")
            values = np.frombuffer(raw, dtype="<i2").astype(np.int64)
        else:
            try:
                values = decode_lead(raw, n_samples, table)
            except HuffmanError as exc:
                raise InputError(f"{_lead_name(lead_id)}: {exc}; the file is damaged: re-export it",
                                 path=str(path), field=where) from None
        if lead_id in LEAD_NAMES:
            leads[LEAD_NAMES[lead_id]] = undo_differences(values, diff).astype(np.float64) * (avm_nv / 1000.0)
    return leads, 1e6 / interval_us


def _value(v: int) -> float | None:
    return None if v in MISSING_VALUES else float(v)


def _measurements(path: Path, s7: _Section) -> dict[str, float]:
    r = _Reader(path, s7)
    n_qrs, n_spikes, rr, _pp = r.take("<BBHH", "the measurement header")
    out: dict[str, float | None] = {"rr_ms": _value(rr) if rr else None}
    if n_qrs >= 1:
        p_on, p_off, q_on, q_off, t_off, *axes = r.take("<HHHHHhhh", "the QRS measurement block")
        r.take(f"<{16 * (n_qrs - 1)}s", "the reference beat measurements")
        valid = [v not in MISSING_VALUES for v in (p_on, q_on, q_off, t_off)]
        if valid[0] and valid[1]:
            out["pr_ms"] = float(q_on - p_on)
        if valid[1] and valid[2]:
            out["qrs_ms"] = float(q_off - q_on)
        if valid[1] and valid[3]:
            out["qt_ms"] = float(t_off - q_on)
        for key, axis in zip(("p_axis_deg", "qrs_axis_deg", "t_axis_deg"), axes, strict=True):
            out[key] = None if axis == UNDEFINED_AXIS or abs(axis) > 360 else float(axis)
    r.take(f"<{10 * n_spikes}s", "the pacemaker spikes")
    if r.remaining() >= 2:
        (n_types,) = r.take("<H", "the QRS type count")
        r.take(f"<{n_types}s", "the QRS types")
        if r.remaining() >= 9:
            vent, _atrial, qtc, _formula, _tagged = r.take("<HHHBH", "the additional measurements")
            out["heart_rate"] = _value(vent) if vent else None
            out["qtc_ms"] = _value(qtc) if qtc else None
    return {k: v for k, v in out.items() if v is not None}


def _statements(path: Path, s8: _Section) -> list[str]:
    r = _Reader(path, s8)
    *_, n = r.take("<BHBBBBBB", "the interpretation header")
    out = []
    for k in range(n):
        _seq, size = r.take("<BH", f"statement {k + 1}")
        (text,) = r.take(f"<{size}s", f"the text of statement {k + 1}")
        text_s = _string(text)
        if text_s:
            out.append(text_s)
    return out


def read_scpecg(path: Path) -> EcgRecord:
    """Read one SCP-ECG file; raises InputError naming the section or field that is wrong."""
    path = Path(path)
    sections = _sections(path, read_input_bytes(path))
    for sid, what in ((1, "patient data"), (3, "lead definitions"), (6, "rhythm data")):
        if sid not in sections:
            raise InputError(f"section {sid} ({what}) is missing; a resting ECG export needs it",
                             path=str(path), field=f"section {sid}")
    tags = _tags(path, sections[1])
    patient_id = _string(tags.get(2, b""))
    if not patient_id:
        raise InputError("no patient identifier (tag 2); export the ECG with the patient id filled in",
                         path=str(path), field="section 1 tag 2")
    leads, fs = _leads(path, sections)
    if {"I", "II"} <= leads.keys():
        leads = derive_limb_leads(leads)
    measurements = _measurements(path, sections[7]) if 7 in sections else {}
    statements = _statements(path, sections[8]) if 8 in sections else []
    maker, model = _device(tags)
    sex = {1: "M", 2: "F"}.get(tags.get(8, b"\x00")[0] if tags.get(8) else 0, "")
    age = None
    if len(tags.get(4, b"")) >= 3:
        value, unit = struct.unpack_from("<HB", tags[4])
        age = value if unit == 1 else None
    return EcgRecord(
        source_format="scp-ecg", patient_source_id=patient_id, acquired=_acquired(path, tags),
        sampling_frequency=fs, leads=leads, measurements=measurements,
        findings=findings_from_statements(statements), statements=statements, manufacturer=maker,
        device_model=model, patient_sex=sex, patient_age_years=age,
    )
