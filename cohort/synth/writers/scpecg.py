"""A resting ECG as a cart stores it in SCP-ECG (EN 1064), binary, little endian.

Record: CRC-CCITT over the rest of the file, record length, then sections, each with a 16-byte header
(CRC, section id, section length, section and protocol version, reserved). Written sections:
0 pointers, 1 patient and acquisition data (tags), 3 lead definitions, 6 rhythm data, 7 global
measurements, 8 textual diagnosis. Rhythm data is plain 16-bit samples by default; a ``ScpCompression``
makes it Huffman-coded like most carts do (section 2: the default table or a table of its own), on
first or second differences. Reference-beat subtraction and bimodal compression are never written.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohort.dicom.codes import LEAD_CODES_SCPECG, TWELVE_LEADS
from cohort.ecg.readers.scp_huffman import DEFAULT_TABLE, DEFAULT_TABLE_MARKER, HuffmanCode, HuffmanTable
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize

PROTOCOL_VERSION = 20  # SCP-ECG 2.0
AVM_NV = 2500  # amplitude value multiplier: nanovolts per count
UNDEFINED_AXIS = 999
NOT_COMPUTED = 29999
# SCP lead ids are the last part of the SCPECG lead codes (5.6.3-9-<id>): I=1, II=2, V1=3, ..., III=61
SCP_LEAD_IDS = {lead: int(code.rsplit("-", 1)[1]) for lead, code in LEAD_CODES_SCPECG.items()}
MANUFACTURER = "custo med"
MODEL = "CP300"  # 5 characters + NUL in the machine id


@dataclass(frozen=True)
class ScpCompression:
    """How section 6 stores samples: Huffman table (None: plain 16-bit) and difference order (0, 1, 2)."""

    table: HuffmanTable | None = None
    differences: int = 0


UNCOMPRESSED = ScpCompression()


def crc_ccitt(data: bytes | memoryview) -> int:
    """CRC-CCITT as SCP-ECG uses it: polynomial 0x1021, initial value 0xFFFF, no reflection."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)  # crc_hqx is exactly this CRC, in C


def _section(section_id: int, body: bytes) -> bytes:
    """Header + body, padded to an even length, with the section CRC filled in."""
    if len(body) % 2:
        body += b"\x00"
    reserved = b"SCPECG" if section_id == 0 else b"\x00" * 6
    rest = struct.pack("<HIBB", section_id, 16 + len(body), PROTOCOL_VERSION, PROTOCOL_VERSION) + reserved + body
    return struct.pack("<H", crc_ccitt(rest)) + rest


def _text(s: str) -> bytes:
    return s.encode("latin-1", errors="replace") + b"\x00"


def _tags(items: Iterable[tuple[int, bytes]]) -> bytes:
    out = b"".join(struct.pack("<BH", tag, len(value)) + value for tag, value in items)
    return out + struct.pack("<BH", 255, 0)


def _machine_id() -> bytes:
    fixed = struct.pack("<HHHBB", 1, 11, 42, 0, 255)  # institution, department, device, cart, code 255
    fixed += MODEL.encode("ascii")[:5].ljust(6, b"\x00")
    # protocol revision, compatibility level (category I), language (Latin-1), capabilities, 50 Hz
    fixed += struct.pack("<BBBBB", PROTOCOL_VERSION, 0xA0, 0x01, 0xD0, 1) + b"\x00" * 16
    revision = _text("3.1")
    return (fixed + struct.pack("<B", len(revision)) + revision + _text("SN0042") + _text("CP300-FW 3.1")
            + _text("SCP 2.0") + _text(MANUFACTURER))


def _section1(export: EcgExport) -> bytes:
    b, a = export.birth_date, export.acquired
    return _tags([
        (0, _text(export.family_name)), (1, _text(export.given_name)), (2, _text(export.patient_id)),
        (4, struct.pack("<HB", export.age_years, 1)), (5, struct.pack("<HBB", b.year, b.month, b.day)),
        (8, struct.pack("<B", 1 if export.sex == "M" else 2)), (14, _machine_id()), (15, _machine_id()),
        (25, struct.pack("<HBB", a.year, a.month, a.day)), (26, struct.pack("<BBB", a.hour, a.minute, a.second)),
    ])


def _section3(n_samples: int) -> bytes:
    n = len(TWELVE_LEADS)
    body = struct.pack("<BB", n, (n << 3) | 0b100)  # no reference beat; all leads simultaneous
    for lead in TWELVE_LEADS:
        body += struct.pack("<IIB", 1, n_samples, SCP_LEAD_IDS[lead])
    return body


def differences(x: np.ndarray, order: int) -> np.ndarray:
    """First or second differences, the first ``order`` samples kept as they are (EN 1064 section 6)."""
    d = x.astype(np.int64)
    if order == 0:
        return d
    out = d.copy()
    if order == 1:
        out[1:] = d[1:] - d[:-1]
    else:
        out[2:] = d[2:] - 2 * d[1:-1] + d[:-2]
    return out


def _encode_value(value: int, table: HuffmanTable) -> str:
    exact = next((c for c in table.codes if not c.extra_bits and c.value == value), None)
    if exact is not None:
        return exact.bits
    fitting = [c for c in table.codes if c.extra_bits and -(1 << (c.extra_bits - 1)) <= value < 1 << (c.extra_bits - 1)]
    escape = min(fitting, key=lambda c: len(c.bits) + c.extra_bits, default=None)
    if escape is None:
        raise ValueError(f"value {value} has no code in the Huffman table and fits no escape code")
    return escape.bits + format(value & ((1 << escape.extra_bits) - 1), f"0{escape.extra_bits}b")


def huffman_encode(values: Iterable[int], table: HuffmanTable) -> bytes:
    """Values as one lead's bitstream: codes most significant bit first, the last byte padded with 0 bits."""
    cache: dict[int, str] = {}
    bits = "".join(cache.get(v) or cache.setdefault(v, _encode_value(v, table)) for v in map(int, values))
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def section2_body(table: HuffmanTable) -> bytes:
    """Section 2 naming the default table (19999) or holding ``table`` as its only table."""
    if table == DEFAULT_TABLE:
        return struct.pack("<H", DEFAULT_TABLE_MARKER)
    return struct.pack("<HH", 1, len(table.codes)) + b"".join(_code_structure(c) for c in table.codes)


def _code_structure(code: HuffmanCode) -> bytes:
    base_code = sum(1 << i for i, bit in enumerate(code.bits) if bit == "1")  # first transmitted bit in bit 0
    return struct.pack("<BBBhI", len(code.bits), len(code.bits) + code.extra_bits, 1, code.value, base_code)


def _section6(export: EcgExport, compression: ScpCompression) -> bytes:
    counts = [differences(quantize(export.leads[lead], AVM_NV / 1000.0), compression.differences)
              for lead in TWELVE_LEADS]
    if compression.table is None:
        data = [c.astype("<i2").tobytes() for c in counts]
    else:
        # each lead padded to whole 16-bit words, so the lead byte counts add up to the section length
        data = [d + b"\x00" * (len(d) % 2) for d in (huffman_encode(c, compression.table) for c in counts)]
    body = struct.pack("<HHBB", AVM_NV, int(round(1_000_000 / export.fs)), compression.differences, 0)
    body += b"".join(struct.pack("<H", len(d)) for d in data)
    return body + b"".join(data)


def _section7(export: EcgExport) -> bytes:
    m = export.measurements
    rr = int(round(m["rr_ms"]))
    sinus = "pr_ms" in m
    p_on = 100 if sinus else NOT_COMPUTED
    p_off = 200 if sinus else NOT_COMPUTED
    qrs_on = p_on + int(m["pr_ms"]) if sinus else 250
    axis = {k: int(round(m[k])) if k in m else UNDEFINED_AXIS for k in ("p_axis_deg", "qrs_axis_deg", "t_axis_deg")}
    body = struct.pack("<BBHH", 1, 0, rr, rr if sinus else NOT_COMPUTED)
    body += struct.pack("<HHHHHhhh", p_on, p_off, qrs_on, qrs_on + int(m["qrs_ms"]), qrs_on + int(m["qt_ms"]),
                        axis["p_axis_deg"], axis["qrs_axis_deg"], axis["t_axis_deg"])
    body += struct.pack("<H", 0)  # no per-QRS type list
    hr = int(round(m["heart_rate"]))
    body += struct.pack("<HHHBH", hr, hr if sinus else NOT_COMPUTED, int(round(m["qtc_ms"])), 1, 0)  # 1: Bazett
    return body


def _section8(export: EcgExport) -> bytes:
    a = export.acquired
    body = struct.pack("<BHBBBBBB", 0, a.year, a.month, a.day, a.hour, a.minute, a.second, len(export.statements))
    for k, text in enumerate(export.statements, start=1):
        raw = _text(text)
        body += struct.pack("<BH", k, len(raw)) + raw
    return body


def section_bodies(export: EcgExport, compression: ScpCompression = UNCOMPRESSED) -> dict[int, bytes]:
    """Section id -> section body (without its 16-byte header) for one ECG; section 0 is built from them."""
    n = len(export.leads["I"])
    bodies = {1: _section1(export), 3: _section3(n), 6: _section6(export, compression), 7: _section7(export),
              8: _section8(export)}
    if compression.table is not None:
        bodies[2] = section2_body(compression.table)
    return dict(sorted(bodies.items()))


def render_scpecg(export: EcgExport, compression: ScpCompression = UNCOMPRESSED) -> bytes:
    """The complete SCP-ECG record for one ECG."""
    return render_record(section_bodies(export, compression))


def render_record(bodies: dict[int, bytes]) -> bytes:
    """Record CRC and length, section 0 pointing to every section, then the sections in id order."""
    sections = {sid: _section(sid, body) for sid, body in bodies.items()}
    pointer_ids = list(range(12))
    s0_len = 16 + 10 * len(pointer_ids)
    # Section 0 starts right after CRC and record length: byte 7 counting from 1.
    index, pointers = 7 + s0_len, struct.pack("<HII", 0, s0_len, 7)
    for sid in pointer_ids[1:]:
        if sid in sections:
            pointers += struct.pack("<HII", sid, len(sections[sid]), index)
            index += len(sections[sid])
        else:
            pointers += struct.pack("<HII", sid, 0, 0)
    content = _section(0, pointers) + b"".join(sections[sid] for sid in sorted(sections))
    length = 6 + len(content)
    rest = struct.pack("<I", length) + content
    return struct.pack("<H", crc_ccitt(rest)) + rest


def write_scpecg(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write ``raw_dir/ecg/scp/<date>/<n>.scp``."""
    export = prepare_export(patient, profile, language="de")
    out = Path(raw_dir) / "ecg" / "scp" / f"{export.acquired:%Y%m%d}" / f"EKG_{export.seed % 10**8:08d}.scp"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_scpecg(export))
    return [out]

