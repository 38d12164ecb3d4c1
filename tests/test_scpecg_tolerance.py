"""SCP-ECG files as other writers make them: tolerated where the data is unambiguous, refused precisely where not.

Each file is written with the project's SCP-ECG writer (``cohort.synth.writers.scpecg``) and then edited
the way a real device export differs from it. Issue 22 lists the cases.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import GeneralECGWaveformStorage as GENERAL_ECG_STORAGE
from pydicom.uid import TwelveLeadECGWaveformStorage as TWELVE_LEAD_ECG_STORAGE

import cohort.synth.writers.scpecg as scp_writer
from cohort.dicom.codes import TWELVE_LEADS
from cohort.dicom.validate import dciodvfy
from cohort.ecg.readers.scp_huffman import DEFAULT_TABLE
from cohort.ecg.readers.scpecg import read_scpecg
from cohort.ecg.record import EcgRecord
from cohort.errors import InputError
from cohort.ingest.report import IngestReport
from cohort.ingest.run import ingest_folder
from cohort.siteconfig import EcgSource, SiteConfig
from cohort.synth.model import generate_site
from cohort.synth.profiles import PROFILES
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize
from cohort.synth.writers.scpecg import UNCOMPRESSED, ScpCompression, render_record, section_bodies

PACS_ID = "PACS-0042"
_LEAD_DEF = struct.calcsize("<IIB")


def _export(**kwargs: object) -> EcgExport:
    profile = PROFILES[3]
    patient = next(p for p in generate_site(5, profile.site_id, 10, profile.mix, profile.pacs_prefix,
                                            profile.case_prefix) if p.ecg)
    return replace(prepare_export(patient, profile, language="de", **kwargs), patient_id=PACS_ID)  # type: ignore[arg-type]


def _write(path: Path, export: EcgExport, compression: ScpCompression = UNCOMPRESSED,
           edit: Callable[[dict[int, bytes]], None] | None = None) -> Path:
    bodies = section_bodies(export, compression)
    if edit is not None:
        edit(bodies)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_record(bodies))
    return path


def _counts(export: EcgExport) -> dict[str, np.ndarray]:
    return {lead: quantize(export.leads[lead], scp_writer.AVM_NV / 1000.0).astype(np.int64) for lead in TWELVE_LEADS}


def _zero_based(bodies: dict[int, bytes]) -> None:
    """Section 3 numbered 0..N instead of 1..N: the writer gives the count as the last sample number."""
    body = bytearray(bodies[3])
    for k in range(body[0]):
        at = 2 + k * _LEAD_DEF
        _start, end, lead = struct.unpack_from("<IIB", body, at)
        struct.pack_into("<IIB", body, at, 0, end, lead)
    bodies[3] = bytes(body)


def _site(tmp_path: Path, **ecg: object) -> SiteConfig:
    return SiteConfig(site_id="scp-site", store=str(tmp_path / "store"), pseudonym_key="k" * 32,
                      ecg=EcgSource(**ecg))  # type: ignore[arg-type]


def _ingest(tmp_path: Path, site: SiteConfig) -> IngestReport:
    return ingest_folder(tmp_path / "raw", tmp_path / "store", site, index=False)


def _stored(tmp_path: Path) -> dict[str, pydicom.Dataset]:
    """Stored objects by Modality (one ECG waveform and, with measurements, one SR)."""
    out = {}
    for f in sorted((tmp_path / "store" / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        out[str(ds.Modality)] = ds
        out[str(ds.Modality) + "-path"] = f  # type: ignore[assignment]
    return out


# --- sample numbering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", [ScpCompression(), ScpCompression(DEFAULT_TABLE, 2)],
                         ids=["plain", "huffman-second-differences"])
def test_samples_numbered_from_zero_are_read_when_the_stored_samples_match(
        compression: ScpCompression, tmp_path: Path) -> None:
    export = _export()
    path = _write(tmp_path / "zero.scp", export, compression, _zero_based)
    record = read_scpecg(path)
    record.check(str(path))
    expected = _counts(export)
    for lead in ("I", "II", "V1", "V6"):
        assert np.array_equal(np.rint(record.leads[lead] / (scp_writer.AVM_NV / 1000.0)), expected[lead]), lead
    assert any("numbers samples from 0" in note for note in record.notes)


def test_samples_numbered_from_zero_that_match_nothing_name_both_readings(tmp_path: Path) -> None:
    def zero_based_and_short(bodies: dict[int, bytes]) -> None:
        _zero_based(bodies)
        body = bytearray(bodies[3])
        struct.pack_into("<I", body, 2 + 4, 4000)  # lead I declares 0..4000: neither 4000 nor 4001 are stored
        bodies[3] = bytes(body)

    path = _write(tmp_path / "bad.scp", _export(), edit=zero_based_and_short)
    with pytest.raises(InputError) as info:
        read_scpecg(path)
    assert info.value.field == "section 6 lead data"
    assert "numbers them 0 to 4000" in str(info.value)
    assert "section 2" not in str(info.value)  # the old hint named the wrong cause


# --- capped byte counts -------------------------------------------------------------------------------

def _capped_counts(cap: int) -> Callable[[dict[int, bytes]], None]:
    """Lead byte counts set to ``cap`` in front of the complete data (a counter capped, not the data)."""
    def edit(bodies: dict[int, bytes]) -> None:
        n = len(TWELVE_LEADS)
        bodies[6] = bodies[6][:6] + struct.pack(f"<{n}H", *([cap] * n)) + bodies[6][6 + 2 * n:]
    return edit


def _capped_section6(export: EcgExport, cap: int) -> Callable[[dict[int, bytes]], None]:
    """Plain section 6 as a writer with a 16-bit byte counter makes it: at most ``cap`` bytes per lead."""
    def edit(bodies: dict[int, bytes]) -> None:
        data = [_counts(export)[lead].astype("<i2").tobytes()[:cap] for lead in TWELVE_LEADS]
        header = struct.pack("<HHBB", scp_writer.AVM_NV, int(round(1e6 / export.fs)), 0, 0)
        bodies[6] = header + struct.pack(f"<{len(data)}H", *(len(d) for d in data)) + b"".join(data)
    return edit


def test_a_capped_byte_count_converts_what_is_stored_and_names_the_missing_seconds(tmp_path: Path) -> None:
    # 60 s at 1000 Hz take 120000 bytes per lead; a 16-bit count cannot say so, the writer stored 65534.
    export = _export(fs=1000, seconds=60.0)
    short = replace(export, leads={lead: v[:10] for lead, v in export.leads.items()})  # section 6 is replaced

    def edit(bodies: dict[int, bytes]) -> None:
        body = bytearray(bodies[3])
        for k in range(body[0]):  # 60000 samples declared
            struct.pack_into("<I", body, 2 + k * _LEAD_DEF + 4, 60000)
        bodies[3] = bytes(body)
        _capped_section6(export, 65534)(bodies)

    path = _write(tmp_path / "raw" / "long.scp", short, edit=edit)
    record = read_scpecg(path)
    record.check(str(path))
    assert {len(v) for v in record.leads.values()} == {32767}
    expected = _counts(export)
    assert np.array_equal(np.rint(record.leads["V2"] / 2.5), expected["V2"][:32767])
    assert any("the last 27.233 s of the recording are missing" in n for n in record.notes), record.notes

    report = _ingest(tmp_path, _site(tmp_path))
    assert report.converted == 1, report.quarantine
    assert any("27.233 s" in w.message for w in report.warnings)
    stored = _stored(tmp_path)
    # more than the 12-lead IOD's 16384 samples: General ECG Waveform Storage keeps all of them
    assert stored["ECG"].SOPClassUID == GENERAL_ECG_STORAGE
    assert stored["ECG"].WaveformSequence[0].NumberOfWaveformSamples == 32767
    assert [r.errors for r in dciodvfy([stored["ECG-path"]])] == [[]]  # type: ignore[list-item]


def test_capped_counts_in_front_of_complete_data_read_every_sample(tmp_path: Path) -> None:
    export = _export()
    path = _write(tmp_path / "capped.scp", export, edit=_capped_counts(8000))
    record = read_scpecg(path)
    assert {len(v) for v in record.leads.values()} == {5000}
    assert np.array_equal(np.rint(record.leads["V6"] / 2.5), _counts(export)["V6"])
    assert any("smaller than" in n for n in record.notes)


def test_a_capped_huffman_lead_is_quarantined_with_that_reason(tmp_path: Path) -> None:
    export = _export()

    def cap(bodies: dict[int, bytes]) -> None:
        body = bodies[6]
        n = len(TWELVE_LEADS)
        counts = struct.unpack_from(f"<{n}H", body, 6)
        data, at = [], 6 + 2 * n
        for c in counts:
            data.append(body[at:at + c][: c // 2])
            at += c
        bodies[6] = body[:6] + struct.pack(f"<{n}H", *(len(d) for d in data)) + b"".join(data)

    path = _write(tmp_path / "huff.scp", export, ScpCompression(DEFAULT_TABLE, 2), cap)
    with pytest.raises(InputError) as info:
        read_scpecg(path)
    assert info.value.field == "section 6 lead I"
    assert "cannot be cut at a sample boundary" in str(info.value)
    assert "export it uncompressed" in str(info.value)


# --- limits -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fs,seconds,field,words", [
    (500.0, 0.5, "leads", "less than the minimum of 1 s; export the complete recording"),
    (2000.0, 10.0, "sampling_frequency", "outside 200-1000 Hz, the range of the DICOM ECG objects; export"),
], ids=["half-a-second", "2000-Hz"])
def test_every_limit_is_named_with_its_fix(fs: float, seconds: float, field: str, words: str) -> None:
    n = int(fs * seconds)
    record = EcgRecord(source_format="test", patient_source_id="x", acquired=_export().acquired,
                       sampling_frequency=fs, leads={lead: np.ones(n) for lead in TWELVE_LEADS})
    with pytest.raises(InputError) as info:
        record.check("f.scp")
    assert info.value.field == field
    assert words in str(info.value)


def test_twenty_thousand_samples_are_not_refused() -> None:
    record = EcgRecord(source_format="test", patient_source_id="x", acquired=_export().acquired,
                       sampling_frequency=500.0, leads={lead: np.ones(20000) for lead in TWELVE_LEADS})
    record.check("f.scp")  # main refused this with "expected between 1 s of signal and 16384"


# --- device strings ---------------------------------------------------------------------------------

def test_control_characters_in_device_strings_never_reach_dicom(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scp_writer, "MANUFACTURER", "custo\x07med\\GmbH\x1b")
    monkeypatch.setattr(scp_writer, "MODEL", "C\x01P3\x7f")
    export = replace(_export(), statements=["Sinus\x0brhythmus\x00", "Links\x1fschenkel\tblock\r\nQRS 140 ms"])
    _write(tmp_path / "raw" / "ctrl.scp", export)
    report = _ingest(tmp_path, _site(tmp_path))
    assert report.converted == 1, report.quarantine
    stored = _stored(tmp_path)
    assert stored["ECG"].Manufacturer == "custo med GmbH"
    assert stored["ECG"].ManufacturerModelName == "C P3"
    texts = [str(ds.TextValue) for ds in _walk(stored["SR"]) if "TextValue" in ds]
    assert "Sinus rhythmus" in texts
    assert "Links schenkel block\r\nQRS 140 ms" in texts
    assert "custo med\\GmbH C P3" in texts  # UT may hold a backslash (it separates values only in LO)
    for text in texts + [stored["ECG"].Manufacturer, stored["ECG"].ManufacturerModelName]:
        assert not any(ord(c) < 32 and c not in "\r\n" for c in text), repr(text)
    results = dciodvfy([stored["ECG-path"], stored["SR-path"]])  # type: ignore[list-item]
    assert [r.errors for r in results] == [[], []]


def _walk(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = [ds]
    for item in ds.get("ContentSequence", []):
        out += _walk(item)
    return out


# --- amplitude resolution ----------------------------------------------------------------------------

def test_a_sub_microvolt_resolution_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scp_writer, "AVM_NV", 183)  # 183 nV per count
    export = _export()
    _write(tmp_path / "raw" / "fine.scp", export)
    report = _ingest(tmp_path, _site(tmp_path))
    assert report.converted == 1, report.quarantine
    ecg = _stored(tmp_path)["ECG"]
    channel = ecg.WaveformSequence[0].ChannelDefinitionSequence[0]
    assert float(channel.ChannelSensitivity) == pytest.approx(0.183)
    raw = np.frombuffer(ecg.WaveformSequence[0].WaveformData, dtype="<i2").reshape(-1, 12)
    source = quantize(export.leads["II"], 0.183).astype(np.int64)
    assert np.array_equal(raw[:, TWELVE_LEADS.index("II")], source)  # the device's integers, unchanged


# --- flat leads -------------------------------------------------------------------------------------

def test_all_zero_leads_are_reported_and_marked_in_the_channel_status(tmp_path: Path) -> None:
    export = _export()
    leads = dict(export.leads, V3=np.zeros_like(export.leads["V3"]), V4=np.zeros_like(export.leads["V4"]))
    _write(tmp_path / "raw" / "flat.scp", replace(export, leads=leads))
    report = _ingest(tmp_path, _site(tmp_path))
    assert report.converted == 1, report.quarantine
    assert any("leads V3, V4 are all zero" in w.message for w in report.warnings), report.warnings
    channels = _stored(tmp_path)["ECG"].WaveformSequence[0].ChannelDefinitionSequence
    status = {ch.ChannelLabel: ch.get("ChannelStatus") for ch in channels}
    assert status["V3"] == "DISCONNECTED" and status["V4"] == "DISCONNECTED"
    assert status["V2"] is None
    assert [r.errors for r in dciodvfy([_stored(tmp_path)["ECG-path"]])] == [[]]  # type: ignore[list-item]


# --- files without a patient identifier ------------------------------------------------------------

def test_a_file_without_patient_id_is_mapped_by_the_site_yaml_rule(tmp_path: Path) -> None:
    _write(tmp_path / "raw" / "ecg" / PACS_ID / "rest.scp", replace(_export(), patient_id=""))
    report = _ingest(tmp_path, _site(tmp_path, patient_id_from_path=r"^ecg/(?P<id>[^/]+)/"))
    assert report.converted == 1, report.quarantine
    ecg = _stored(tmp_path)["ECG"]
    # the same pseudonym as a file that names PACS-0042 itself
    _write(tmp_path / "raw" / "other" / "named.scp", replace(_export(seconds=9.0)))
    _ingest(tmp_path, _site(tmp_path, patient_id_from_path=r"^ecg/(?P<id>[^/]+)/"))
    ids = {pydicom.dcmread(f).PatientID for f in (tmp_path / "store" / "dicom").rglob("*.dcm")}
    assert ids == {ecg.PatientID}


def test_a_file_without_patient_id_and_no_rule_is_quarantined_naming_the_rule(tmp_path: Path) -> None:
    _write(tmp_path / "raw" / "ecg" / "x" / "rest.scp", replace(_export(), patient_id=""))
    report = _ingest(tmp_path, _site(tmp_path))
    assert report.quarantined == 1
    reason = report.quarantine[0].reason
    assert "section 1 tag 2" in reason and "ecg.patient_id_from_path" in reason and "'ecg/x/rest.scp'" in reason


def test_a_rule_that_does_not_match_is_quarantined_naming_the_path(tmp_path: Path) -> None:
    _write(tmp_path / "raw" / "flat" / "rest.scp", replace(_export(), patient_id=""))
    report = _ingest(tmp_path, _site(tmp_path, patient_id_from_path=r"^ecg/(?P<id>[^/]+)/"))
    assert report.quarantined == 1
    assert "does not match its path 'flat/rest.scp'" in report.quarantine[0].reason


def test_a_rule_without_an_id_group_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="needs a group named id"):
        EcgSource(patient_id_from_path=r"^ecg/([^/]+)/")


# --- reports only where the file has something to report ------------------------------------------

def test_a_file_without_measurement_sections_yields_only_the_waveform(tmp_path: Path) -> None:
    def strip(bodies: dict[int, bytes]) -> None:
        del bodies[7], bodies[8]

    _write(tmp_path / "raw" / "bare.scp", _export(), edit=strip)
    report = _ingest(tmp_path, _site(tmp_path))
    assert report.converted == 1
    assert report.objects_by_sop_class == {"12-lead ECG Waveform Storage": 1}
    assert _stored(tmp_path)["ECG"].SOPClassUID == TWELVE_LEAD_ECG_STORAGE
