"""Ingest's fast path writes what pydicom would write, and indexes what a reindex would find.

Issue 24 made pass-through objects keep their undecoded elements (written back byte for byte by
``cohort.dicom.part10.encode_part10``), memoised the value checks that surface pydicom's warnings, and
let the conversion workers extract each object's index rows. Each of those is checked here against
the slow path it replaced: pydicom's own writer on a fully decoded data set, a fresh decode per value,
and a reindex that reads every stored file.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from cohort.dicom.conformance import decode_all
from cohort.dicom.part10 import encode_part10, restore_as_read, undecoded
from cohort.index.duck import DuckIndex, index_rows
from cohort.index.extract import extract_encoded, extract_file
from cohort.index.templates import load_templates
from cohort.ingest.pipeline import library_warnings
from cohort.store import Store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydicom warns that some of its optional downloads are absent
    PYDICOM_FILES = sorted(get_testdata_files("*.dcm"))


def _pydicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _read(path: str | Path) -> Dataset:
    return pydicom.dcmread(path, force=True)


def _writable(path: str) -> bool:
    """pydicom can write the file back as Part 10 (some test files are deliberately broken)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _pydicom_bytes(_read(path))
    except Exception:  # noqa: BLE001 - whatever pydicom refuses is not a case for the comparison
        return False
    return True


WRITABLE_FILES = [p for p in PYDICOM_FILES if _writable(p)]


@pytest.mark.parametrize("path", WRITABLE_FILES, ids=lambda p: Path(p).name)
def test_encode_part10_writes_the_bytes_pydicom_writes(path: str) -> None:
    """Real files from many writers (pydicom's test corpus): implicit and explicit VR, sequences,
    private elements, compressed pixel data, odd preambles, no file meta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert encode_part10(_read(path)) == _pydicom_bytes(_read(path))


def test_every_stored_object_encodes_as_pydicom_encodes_it(ingested_sites: list) -> None:
    """The store's own objects: pass-through CT, highdicom SEG and SR, ECG waveforms."""
    files = [f for s in ingested_sites for f in Store(s.store).files()]
    assert len(files) > 500
    kinds = set()
    for f in files:
        ds = _read(f)
        kinds.add(str(ds.Modality))
        assert encode_part10(ds) == _pydicom_bytes(_read(f)), f
    assert {"CT", "SEG", "SR", "ECG"} <= kinds


@pytest.mark.parametrize("path", WRITABLE_FILES, ids=lambda p: Path(p).name)
def test_a_pass_through_object_keeps_the_bytes_of_the_old_fully_decoded_path(path: str) -> None:
    """Before issue 24 every element was decoded in place, then re-encoded by pydicom; now an element
    is copied only where pydicom would write the same bytes (other padding, odd lengths, VR UN that
    the dictionary knows are decoded and re-encoded as before). Every file of pydicom's corpus, the
    odd ones included, gives the bytes of the old path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = _read(path)
        for _ in old.iterall():  # what the old decode_all did: decode in place
            pass
        new = _read(path)
        as_read = undecoded(new)
        rewritten = decode_all(new)
        new.get("PatientID"), new.get("SOPClassUID")  # the converter's checks read values
        restore_as_read(new, as_read, rewritten)
        assert encode_part10(new) == _pydicom_bytes(old)


def test_only_what_pydicom_would_rewrite_is_decoded() -> None:
    """A value with extra padding and one of VR UN are rewritten (as before); the rest is copied."""
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyDescription = "CARDIAC"
    raw = io.BytesIO()
    ds.save_as(raw, implicit_vr=False, little_endian=True)
    data = raw.getvalue().replace(b"LO\x08\x00CARDIAC ", b"UN\x00\x00\x08\x00\x00\x00CARDIAC ")
    read = pydicom.dcmread(io.BytesIO(data), force=True)
    assert read.get_item(0x00081030).VR == "UN"
    assert decode_all(read) == {0x00081030}  # UN of a known tag: pydicom writes it as LO


def _invalid_is_dataset(instance: str) -> Dataset:
    raw = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on setting and writing it too
        ds = Dataset()
        ds.SOPInstanceUID = instance
        ds.InstanceNumber = "1.5"  # IS must be an integer string
        ds.save_as(raw, implicit_vr=False, little_endian=True)
    return pydicom.dcmread(io.BytesIO(raw.getvalue()), force=True)


def test_decode_all_reports_an_invalid_value_every_time_and_leaves_elements_undecoded() -> None:
    for uid in ("1.2.3.4", "1.2.3.5", "1.2.3.6"):  # the same invalid value three times: memo hits
        ds = _invalid_is_dataset(uid)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decode_all(ds)
        messages = [w["message"] for w in library_warnings(caught)]
        assert any(m.startswith("pydicom: ") and "1.5" in m and "IS" in m for m in messages), messages
        assert all(isinstance(ds.get_item(t), RawDataElement) for t in ds.keys())


def test_ingest_index_rows_equal_a_reindex_of_the_same_store(ingested_sites: list, tmp_path: Path) -> None:
    """The rows the conversion workers extracted (images: identity only, the series read from its
    file) make the same index as reading every stored file again."""
    store = ingested_sites[0].store
    with DuckIndex(tmp_path / "reindex.duckdb") as fresh:
        report = fresh.add_files(list(Store(store).files()))
        assert not report.failed

    ingested = index_rows(store / "index.duckdb", store)
    reindexed = index_rows(tmp_path / "reindex.duckdb", store)
    assert ingested["entities"] and ingested["attributes"]
    # "meta" holds the index's own bookkeeping (its published version), not rows of the store.
    assert {t: ingested[t] for t in reindexed if t != "meta"} == {t: r for t, r in reindexed.items() if t != "meta"}


def test_an_image_record_is_identity_only_and_the_index_reads_the_series_from_its_file(
        ingested_sites: list, tmp_path: Path) -> None:
    store = Store(ingested_sites[0].store)
    templates = load_templates(())
    files = list(store.files())
    ct = [f for f in files if f.parent.name.startswith("CT_")]
    sr = next(f for f in files if f.parent.name.startswith("SR_"))
    records = {}
    for f in ct + [sr]:
        ds = pydicom.dcmread(f)
        records[str(f)] = extract_encoded(ds, f.read_bytes(), templates)
    assert all(records[str(f)].identity_only and not records[str(f)].attributes for f in ct)
    assert records[str(sr)] == extract_file(sr, templates)  # non-images: the full rows, from the bytes
    with DuckIndex(tmp_path / "given.duckdb") as given, DuckIndex(tmp_path / "read.duckdb") as read:
        given.add_files(ct + [sr], extracted=records)
        read.add_files(ct + [sr])
        query = ("SELECT e.series_uid, a.name, a.num, a.text FROM attributes a JOIN entities e USING (entity_id) "
                 "ORDER BY ALL")
        series_rows = given.con.execute(query).fetchall()
        assert series_rows and series_rows == read.con.execute(query).fetchall()
        count = "SELECT series_uid, n_instances FROM entities WHERE kind = 'CT' ORDER BY ALL"
        assert given.con.execute(count).fetchall() == read.con.execute(count).fetchall()


def test_a_sequence_pydicom_rewrites_still_reports_what_is_wrong_inside_it() -> None:
    """A sequence stored with VR UN (pydicom decodes it as SQ and writes it so): it is rewritten, and
    an invalid value in its item still raises its warning."""
    inner = b"\x20\x00\x13\x00" + struct.pack("<L", 4) + b"1.5 "  # InstanceNumber "1.5", implicit VR
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
    sequence = b"\x08\x00\x40\x11UN\x00\x00" + struct.pack("<L", len(item)) + item  # ReferencedImageSequence
    uid = b"1.2.3.4\x00"
    ds = pydicom.dcmread(io.BytesIO(b"\x08\x00\x18\x00UI" + struct.pack("<H", len(uid)) + uid + sequence),
                         force=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_all(ds) == {0x00081140}
    assert any("1.5" in m["message"] and "IS" in m["message"] for m in library_warnings(caught))
