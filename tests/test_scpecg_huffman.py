"""SCP-ECG Huffman-coded rhythm data: the default table, tables carried in section 2, differences."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cohort.dicom.codes import TWELVE_LEADS
from cohort.ecg.readers.scp_huffman import (
    DEFAULT_TABLE,
    HuffmanCode,
    HuffmanError,
    HuffmanTable,
    decode_lead,
    parse_section2,
    undo_differences,
)
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ingest.base import InputHead
from cohort.ingest.converters.ecg import ScpEcgConverter
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize
from cohort.synth.writers.scpecg import (
    AVM_NV,
    ScpCompression,
    differences,
    huffman_encode,
    render_record,
    render_scpecg,
    section_bodies,
)
from tests.helpers import make_context

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
UV_PER_COUNT = AVM_NV / 1000.0
# A table of the cart's own (section 2): 0 to +-3 in 2-4 bits, escapes to 16 and 8 bits; listed by
# prefix length, as PixelMed needs.
CUSTOM_TABLE = HuffmanTable((
    HuffmanCode("00", 0), HuffmanCode("010", 1), HuffmanCode("011", -1), HuffmanCode("100", 2),
    HuffmanCode("101", -2), HuffmanCode("111", 0, extra_bits=16), HuffmanCode("1100", 3),
    HuffmanCode("1101", 0, extra_bits=8),
))


def _patient() -> SyntheticPatient:
    """A patient with an ECG at the synthetic SCP-ECG site (profile 3)."""
    profile = PROFILES[3]
    return next(p for p in generate_site(5, profile.site_id, 10, profile.mix, profile.pacs_prefix,
                                         profile.case_prefix) if p.ecg)


def _export() -> EcgExport:
    return prepare_export(_patient(), PROFILES[3], language="de")


def _counts(export: EcgExport) -> dict[str, np.ndarray]:
    return {lead: quantize(export.leads[lead], UV_PER_COUNT).astype(np.int64) for lead in TWELVE_LEADS}


def _with_counts(export: EcgExport, counts: dict[str, np.ndarray]) -> EcgExport:
    return replace(export, leads={lead: c.astype(np.float64) * UV_PER_COUNT for lead, c in counts.items()})


def _large_values(n: int) -> np.ndarray:
    """Every code of the default table: 0, +-1..8 in the table, +-9..127 (8-bit escape), up to +-32767."""
    edges = np.array([0, 1, -1, 8, -8, 9, -9, 100, -100, 127, -128, 128, -129, 1000, -20000, 32767, -32768])
    rng = np.random.default_rng(7)
    return np.concatenate([edges, rng.integers(-32768, 32768, n - len(edges))])


def _write(tmp_path: Path, name: str, export: EcgExport, compression: ScpCompression) -> Path:
    path = tmp_path / f"{name}.scp"
    path.write_bytes(render_scpecg(export, compression))
    return path


CASES = {
    "default-table": ScpCompression(DEFAULT_TABLE, 0),
    "default-table-first-differences": ScpCompression(DEFAULT_TABLE, 1),
    "default-table-second-differences": ScpCompression(DEFAULT_TABLE, 2),
    "section2-table-first-differences": ScpCompression(CUSTOM_TABLE, 1),
    "section2-table-second-differences": ScpCompression(CUSTOM_TABLE, 2),
    "uncompressed-second-differences": ScpCompression(None, 2),
}


@pytest.mark.parametrize("compression", list(CASES.values()), ids=list(CASES))
def test_decoded_samples_equal_the_known_samples(compression: ScpCompression, tmp_path: Path) -> None:
    export = _export()
    counts = _counts(export)
    path = _write(tmp_path, "ecg", export, compression)
    assert (2 in section_bodies(export, compression)) == (compression.table is not None)
    record = read_scpecg(path)
    record.check(str(path))
    assert record.sampling_frequency == 500
    for lead in TWELVE_LEADS:
        assert np.array_equal(record.leads[lead], counts[lead] * UV_PER_COUNT), lead
    if compression.table is not None:  # what compression is for: fewer bytes than 16 bits a sample
        assert path.stat().st_size < (0.6 if compression.differences else 1) * len(render_scpecg(export))


def test_section2_without_tables_means_plain_samples(tmp_path: Path) -> None:
    export = _export()
    bodies = section_bodies(export)
    bodies[2] = struct.pack("<H", 0)  # some carts write an empty section 2 for uncompressed data
    path = tmp_path / "empty2.scp"
    path.write_bytes(render_record(bodies))
    record = read_scpecg(path)
    assert all(np.array_equal(record.leads[lead], c * UV_PER_COUNT) for lead, c in _counts(export).items())


@pytest.mark.parametrize("table", [DEFAULT_TABLE, CUSTOM_TABLE], ids=["default-table", "section2-table"])
def test_escape_codes_carry_large_values(table: HuffmanTable, tmp_path: Path) -> None:
    export = _export()
    counts = {lead: np.roll(_large_values(5000), k) for k, lead in enumerate(TWELVE_LEADS)}
    path = _write(tmp_path, "large", _with_counts(export, counts), ScpCompression(table, 0))
    record = read_scpecg(path)
    for lead in TWELVE_LEADS:
        assert np.array_equal(record.leads[lead] / UV_PER_COUNT, counts[lead]), lead


def test_default_table_is_the_standards() -> None:
    """EN 1064's default table as the standard lists it, read through the section 2 parser."""
    prefix_bits = [1, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 10]
    total_bits = prefix_bits[:17] + [18, 26]
    values = [0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8, 0, 0]
    base_codes = [0, 1, 5, 3, 11, 7, 23, 15, 47, 31, 95, 63, 191, 127, 383, 255, 767, 511, 1023]
    body = struct.pack("<HH", 1, 19) + b"".join(
        struct.pack("<BBBhI", p, t, 1, v, c) for p, t, v, c in zip(prefix_bits, total_bits, values, base_codes,
                                                                      strict=True))
    assert parse_section2(body) == (DEFAULT_TABLE,)
    assert parse_section2(struct.pack("<H", 19999)) == (DEFAULT_TABLE,)
    assert parse_section2(struct.pack("<H", 0)) == ()


def test_decodes_the_standards_worked_example() -> None:
    """The second-difference example of EN 1064's Huffman annex (byte 6 as its bit listing gives it)."""
    data = bytes([0xFF, 0x83, 0x7F, 0xE0, 0xE6, 0xF1, 0x53, 0x65, 0x59, 0xB6, 0x5B, 0x96, 0x4B, 0x96, 0x00])
    expected = [13, 14, 15, 14, 16, 18, 19, 20, 22, 22, 23, 23, 23, 22, 22, 20, 17, 15, 12, 8, 6, 3, 1, 0,
                -2, -2, -3, -3]
    values = decode_lead(data, len(expected), DEFAULT_TABLE)
    assert undo_differences(values, 2).tolist() == expected


@pytest.mark.parametrize("order", [0, 1, 2])
def test_differences_round_trip(order: int) -> None:
    x = np.random.default_rng(order).integers(-3000, 3000, 257)
    d = differences(x, order)
    assert np.array_equal(d[:order], x[:order])  # the first samples are stored as they are
    assert np.array_equal(undo_differences(d, order), x)
    if order == 2:
        assert d[5] == x[5] - 2 * x[4] + x[3]


def test_padding_after_the_last_code_is_ignored() -> None:
    data = huffman_encode([3, -3, 0], DEFAULT_TABLE)  # 5 + 5 + 1 bits: "11100" "11101" "0" + 5 zero bits
    assert data == bytes([0b11100111, 0b01000000])
    assert decode_lead(data + b"\x00\x00", 3, DEFAULT_TABLE).tolist() == [3, -3, 0]


def test_a_sample_count_the_data_cannot_hold_is_refused_before_decoding() -> None:
    with pytest.raises(HuffmanError, match="4 bytes of data cannot hold 4000000000 samples"):
        decode_lead(b"\x00" * 4, 4_000_000_000, DEFAULT_TABLE)  # would be 32 GB of samples


_PIXELMED_SAMPLES = """
import com.pixelmed.dicom.BinaryInputStream;
import com.pixelmed.scpecg.SCPECG;
import java.io.BufferedInputStream;
import java.io.FileInputStream;

public class ScpSamples {
    public static void main(String[] args) throws Exception {
        for (String name : args) {
            SCPECG scp = new SCPECG(new BinaryInputStream(new BufferedInputStream(new FileInputStream(name)), false), false);
            StringBuilder out = new StringBuilder(name).append('=');
            for (short[] lead : scp.getDecompressedRhythmData()) {
                if (lead != null) for (short v : lead) out.append(v).append(',');
                out.append(';');
            }
            System.out.println(out);
        }
    }
}
"""


@pytest.mark.skipif(shutil.which("java") is None or not PIXELMED_JAR.exists(), reason="PixelMed/Java not installed")
def test_pixelmed_decodes_the_synthetic_huffman_files_to_the_same_samples(tmp_path: Path) -> None:
    """An independent reader (PixelMed's SCPECG) agrees with the encoder and with this reader."""
    export = _export()
    counts = _counts(export)
    paths = [_write(tmp_path, name, export, CASES[name]) for name in
             ("default-table", "default-table-second-differences", "section2-table-first-differences")]
    source = tmp_path / "ScpSamples.java"
    source.write_text(_PIXELMED_SAMPLES)
    proc = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", str(PIXELMED_JAR), str(source),
                           *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # PixelMed validates sections and lead byte counts while reading
    decoded = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert set(decoded) == set(map(str, paths))
    # PixelMed scales by the whole microvolts of the amplitude multiplier: 2500 nV -> 2
    scale = AVM_NV // 1000
    for path in paths:
        leads = [np.array(s.strip(",").split(","), dtype=np.int64) for s in decoded[str(path)].split(";")[:12]]
        for lead, values in zip(TWELVE_LEADS, leads, strict=True):
            assert np.array_equal(values, scale * counts[lead]), (path.name, lead)
        record = read_scpecg(path)
        assert all(np.array_equal(record.leads[lead], counts[lead] * UV_PER_COUNT) for lead in TWELVE_LEADS)


def _section2(*codes: tuple[int, int, int, int, int]) -> bytes:
    """One table of (prefix bits, entire bits, mode, base value, base code) structures."""
    return struct.pack("<HH", 1, len(codes)) + b"".join(struct.pack("<BBBhI", *c) for c in codes)


@pytest.mark.parametrize("body,words", [
    (_section2((1, 1, 1, 0, 0), (2, 2, 1, 1, 0b10)), "code '0' is a prefix of code '01'"),
    (_section2((1, 1, 1, 0, 0), (1, 9, 1, 5, 1)), "both original bits and a base value (5)"),
    (_section2((1, 1, 1, 0, 0), (2, 2, 1, 1, 0b111)), "base code 0x7 has bits set beyond its 2 prefix bits"),
    (_section2((1, 1, 1, 0, 0), (0, 0, 1, 1, 0)), "code structure 2 has 0 prefix bits"),
    (_section2((1, 1, 1, 0, 0), (1, 1, 7, 1, 1)), "table mode switch 7"),
    (struct.pack("<HH", 1, 0), "Huffman table 1 has no code structures"),
    (struct.pack("<HH", 2, 1) + struct.pack("<BBBhI", 1, 1, 1, 0, 0), "section ends before Huffman table 2 of 2"),
], ids=["ambiguous-prefix", "base-value-and-original-bits", "base-code-too-long", "no-prefix-bits",
        "unknown-mode", "empty-table", "fewer-tables-than-announced"])
def test_section2_tables_that_cannot_be_decoded_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(HuffmanError, match=re.escape(words)):
        parse_section2(body)


def test_converter_turns_a_huffman_coded_file_into_the_same_waveform_as_a_plain_one(tmp_path: Path) -> None:
    profile, patient = PROFILES[3], _patient()
    export = prepare_export(patient, profile, language="de")
    converter = ScpEcgConverter()
    waveforms = []
    for name, compression in (("plain", ScpCompression()), ("huffman", CASES["default-table-second-differences"])):
        path = _write(tmp_path, name, export, compression)
        assert converter.sniff(InputHead.read(path), profile.config)
        ctx = make_context(tmp_path / name, site=profile.config, case_to_pacs={patient.case_id: patient.pacs_id})
        waveforms.append(converter.convert(path, ctx).datasets[0])
    plain, huffman = waveforms
    assert huffman.waveform_array(0).shape == (5000, 12)
    assert np.array_equal(huffman.waveform_array(0), plain.waveform_array(0))
