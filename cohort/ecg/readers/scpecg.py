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
    decode_lead_to,
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
_CAPPED_COUNT = 0xFFFE  # the largest even 16-bit byte count: writers that cap lead sizes write it


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


def _lead_lengths(path: Path, defs: list[tuple[int, int, int]], counts: list[int], stored: int,
                  huffman: bool) -> tuple[list[int], list[str]]:
    """Samples to read per lead, and notes on what had to be assumed.

    Section 3 numbers samples from 1; some writers number from 0 and give the count as the last
    number. Some cap the 16-bit byte count of section 6 below what section 3 declares. Both are
    accepted where the stored bytes say unambiguously how many samples there are.
    """
    declared = [end - start + 1 for start, end, _ in defs]
    if huffman:  # compressed sizes say nothing about the sample count: decoding checks it (_decode)
        return declared, []
    if counts == [2 * d for d in declared]:
        return declared, []
    if all(start == 0 for start, _, _ in defs) and counts == [2 * (d - 1) for d in declared]:
        return [d - 1 for d in declared], [
            "section 3 numbers samples from 0, not 1 as EN 1064 does; the stored samples match that numbering"]
    if stored == sum(2 * d for d in declared) and all(c < 2 * d for c, d in zip(counts, declared, strict=True)):
        # The byte counts are smaller than the data that follows them: the data is complete, the counts capped.
        return declared, [f"section 6 byte counts ({min(counts)}) are smaller than the {2 * declared[0]} bytes "
                          "each lead's samples take and than the data stored; read the samples section 3 declares"]
    if stored == sum(counts) and all(c <= 2 * d and c % 2 == 0 for c, d in zip(counts, declared, strict=True)):
        held = {c // 2 for c in counts}
        if len(held) == 1:
            return [held.pop()] * len(defs), []
        raise InputError(f"the leads hold different numbers of samples ({sorted(held)}) although section 3 "
                         f"declares {declared[0]} each; the file is damaged: re-export it", path=str(path),
                         field="section 6 lead data")
    first = next(k for k, (c, d) in enumerate(zip(counts, declared, strict=True)) if c != 2 * d)
    start, end, lead_id = defs[first]
    raise InputError(f"{_lead_name(lead_id)}: {counts[first]} bytes of data for {declared[first]} samples (section 3 "
                     f"numbers them {start} to {end}); uncompressed data has 2 bytes per sample and section 6 "
                     f"holds {stored} bytes of lead data, which fits neither; re-export the ECG",
                     path=str(path), field="section 6 lead data")


def _decode(raw: bytes, n_samples: int, table: HuffmanTable, *, zero_based: bool, notes: list[str]) -> np.ndarray:
    """One lead's Huffman data; with samples numbered from 0, the last number may be the count instead.

    That reading is taken when the bits after one sample fewer are only the zero padding of the lead's
    last 16-bit word: then the declared last sample is not in the data.
    """
    if zero_based and n_samples > 1:
        values, used = decode_lead_to(raw, n_samples - 1, table)
        rest = "".join(f"{byte:08b}" for byte in raw)[used:]
        if len(rest) < 16 and "1" not in rest:
            note = ("section 3 numbers samples from 0, not 1 as EN 1064 does; the stored samples match that "
                    "numbering")
            if note not in notes:
                notes.append(note)
            return values
    return decode_lead(raw, n_samples, table)


def _leads(path: Path, sections: dict[int, _Section]) -> tuple[dict[str, np.ndarray], float, float, list[str]]:
    """Leads in microvolts, sampling frequency, microvolts per count, and notes for the ingest report."""
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
    if avm_nv == 0:
        raise InputError("amplitude value multiplier is 0 nV, so every sample would be 0; the file is damaged: "
                         "re-export it", path=str(path), field="section 6 amplitude value multiplier")
    if bimodal:
        raise InputError(f"bimodal compression is used (value {bimodal}: samples outside the protected QRS zones "
                         "are decimated), which this reader does not reconstruct; export the ECG without "
                         "compression or as DICOM/aECG", path=str(path), field="section 6 bimodal compression")
    if diff not in (0, 1, 2):
        raise InputError(f"difference data used is {diff}; EN 1064 defines 0 (none), 1 (first) and 2 (second "
                         "differences)", path=str(path), field="section 6 difference data used")
    fs = 1e6 / interval_us
    table = _huffman_table(path, sections)
    counts = [r6.take("<H", f"the byte count of {_lead_name(d[2])}")[0] for d in defs]
    stored = r6.remaining()
    lengths, notes = _lead_lengths(path, defs, counts, stored, table is not None)
    declared = defs[0][1] - defs[0][0] + 1 if defs else 0
    if defs and table is None and lengths[0] < declared and sum(counts) == stored:
        # Convert what is stored, and say how much of the recording is not.
        notes.append(f"section 6 holds {lengths[0]} of the {declared} samples per lead that section 3 declares "
                     f"(byte count {counts[0]}, probably capped by the writer): the last "
                     f"{(declared - lengths[0]) / fs:.3f} s of the recording are missing; converted the first "
                     f"{lengths[0] / fs:.3f} s")
    leads: dict[str, np.ndarray] = {}
    for (_start, _end, lead_id), nbytes, n_samples in zip(defs, counts, lengths, strict=True):
        where = f"section 6 lead {LEAD_NAMES.get(lead_id, lead_id)}"
        if table is None:
            nbytes = 2 * n_samples if 2 * n_samples <= r6.remaining() else nbytes
        if nbytes > r6.remaining():
            raise InputError(f"{_lead_name(lead_id)} has {nbytes} bytes of data but only {r6.remaining()} remain "
                             "in section 6; the file is damaged: re-export it", path=str(path), field=where)
        (raw,) = r6.take(f"<{nbytes}s", f"the samples of {_lead_name(lead_id)}")
        if table is None:
            values = np.frombuffer(raw[:2 * n_samples], dtype="<i2").astype(np.int64)
        else:
            try:
                values = _decode(raw, n_samples, table, zero_based=_start == 0, notes=notes)
            except HuffmanError as exc:
                capped = " (byte count capped by the writer?)" if nbytes >= _CAPPED_COUNT else ""
                raise InputError(f"{_lead_name(lead_id)}: {exc}{capped}; Huffman-coded data cannot be cut at a "
                                 "sample boundary, so the lead is not converted in part: re-export it, or export "
                                 "it uncompressed", path=str(path), field=where) from None
        if lead_id in LEAD_NAMES:
            leads[LEAD_NAMES[lead_id]] = undo_differences(values, diff).astype(np.float64) * (avm_nv / 1000.0)
    return leads, fs, avm_nv / 1000.0, notes


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
    patient_id = _string(tags.get(2, b""))  # may be empty: the converter maps it by site.yaml or refuses
    leads, fs, step_uv, notes = _leads(path, sections)
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
        device_model=model, patient_sex=sex, patient_age_years=age, amplitude_resolution_uv=step_uv, notes=notes,
    )
