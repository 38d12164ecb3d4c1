"""The oracle on tiny hand-built DICOM stores: same-instance traps, groups, windows, labels, counts."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cohort.spec import parse_text
from tests.oracle import Oracle

TEMPLATES = """
key: ecg_report
document_titles: ["11524-6 LN"]
fields:
  qrs_duration: {path: ["122144 DCM", "122158 DCM", "2:16156 MDC"], type: numeric, unit: ms}
  ecg_finding:
    path: ["122145 DCM", "271921002 SCT"]
    type: coded
    values: {LBBB: "63467002 SCT", RBBB: "59118001 SCT"}
  ecg_datetime: {path: ["55111-9 LN", "122146 DCM"], type: date}
---
key: procedures
document_titles: ["PRC001 99FEDCOH"]
fields:
  tavi_date: {path: ["TAVI01 99FEDCOH", "TAVI02 99FEDCOH"], type: date}
  pacemaker_after_tavi: {path: ["TAVI01 99FEDCOH", "PM001 99FEDCOH"], type: boolean}
---
key: landmarks
document_titles: ["126000 DCM"]
fields:
  landmark_finding:
    path: ["126010 DCM", "125007 DCM", "121071 DCM"]
    type: coded
    values: {hinge_point: "HP001 99FEDCOH"}
  landmark_point: {path: ["126010 DCM", "125007 DCM", "111030 DCM"], type: geometric}
"""
TAVI = date(2022, 6, 1)


def code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def item(vtype: str, concept: tuple[str, str, str], **attrs: object) -> Dataset:
    it = Dataset()
    it.RelationshipType = "CONTAINS"
    it.ValueType = vtype
    it.ConceptNameCodeSequence = [code(*concept)]
    for k, v in attrs.items():
        setattr(it, k, v)
    return it


def container(concept: tuple[str, str, str], *children: Dataset) -> Dataset:
    c = item("CONTAINER", concept, ContinuityOfContent="SEPARATE")
    c.ContentSequence = list(children)
    return c


def num(concept: tuple[str, str, str], value: float, unit: str) -> Dataset:
    mv = Dataset()
    mv.NumericValue = str(value)
    mv.MeasurementUnitsCodeSequence = [code(unit, "UCUM", unit)]
    return item("NUM", concept, MeasuredValueSequence=[mv])


def coded(concept: tuple[str, str, str], value: tuple[str, str, str]) -> Dataset:
    return item("CODE", concept, ConceptCodeSequence=[code(*value)])


QRS = ("2:16156", "MDC", "QRS duration global")
FINDING = ("271921002", "SCT", "Electrocardiogram finding")
LBBB = ("63467002", "SCT", "Left bundle branch block")
RBBB = ("59118001", "SCT", "Right bundle branch block")
YES, NO = ("373066001", "SCT", "Yes"), ("373067005", "SCT", "No")


class Store:
    """Writes minimal DICOM objects of a few patients into a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "templates").mkdir()
        for doc in TEMPLATES.split("---"):
            key = doc.split("key:")[1].split()[0]
            (root / "templates" / f"{key}.yaml").write_text(doc)
        (root / "dicom").mkdir()
        self.n = 0

    def write(self, patient: str, sop_class: str, modality: str, day: date, **attrs: object) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.Modality = patient, modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.ContentDate = day.strftime("%Y%m%d")
        for k, v in attrs.items():
            setattr(ds, k, v)
        self.n += 1
        ds.save_as(self.root / "dicom" / f"{self.n:04d}.dcm", enforce_file_format=True)
        return ds

    def ct(self, patient: str, day: date, thickness: float, slices: int = 2) -> None:
        series = generate_uid()
        for _ in range(slices):
            self.write(patient, "1.2.840.10008.5.1.4.1.1.2", "CT", day, SeriesInstanceUID=series,
                       AcquisitionDate=day.strftime("%Y%m%d"), SliceThickness=thickness)

    def sr(self, patient: str, title: tuple[str, str, str], day: date, *content: Dataset) -> None:
        self.write(patient, "1.2.840.10008.5.1.4.1.1.88.33", "SR", day, ValueType="CONTAINER",
                   ConceptNameCodeSequence=[code(*title)], ContentSequence=list(content))

    def ecg_report(self, patient: str, day: date, qrs: float | None, findings: tuple = (), unit: str = "ms") -> None:
        content = [container(("55111-9", "LN", "Current Procedure Descriptions"),
                             item("DATETIME", ("122146", "DCM", "Procedure DateTime"),
                                  DateTime=day.strftime("%Y%m%d") + "101500"))]
        if qrs is not None:
            content.append(container(("122144", "DCM", "Quantitative Analysis"),
                                     container(("122158", "DCM", "ECG Global Measurements"), num(QRS, qrs, unit))))
        if findings:
            content.append(container(("122145", "DCM", "Qualitative Analysis"), *[coded(FINDING, f) for f in findings]))
        # Content date = conversion date, deliberately far from the acquisition: windows use ecg_datetime.
        self.sr(patient, ("11524-6", "LN", "EKG study"), date(2024, 1, 1), *content)

    def procedures(self, patient: str, tavi: date, pacemaker: tuple[str, str, str] | None) -> None:
        children = [item("DATE", ("TAVI02", "99FEDCOH", "TAVI date"), Date=tavi.strftime("%Y%m%d"))]
        if pacemaker is not None:
            children.append(coded(("PM001", "99FEDCOH", "Pacemaker after TAVI"), pacemaker))
        self.sr(patient, ("PRC001", "99FEDCOH", "Procedures"), date(2024, 1, 1),
                container(("TAVI01", "99FEDCOH", "TAVI"), *children))

    def seg(self, patient: str, segments: list[tuple[tuple[str, str, str], str]]) -> None:
        seq = []
        for i, (prop, algo) in enumerate(segments, 1):
            s = Dataset()
            s.SegmentNumber, s.SegmentLabel, s.SegmentAlgorithmType = i, prop[2], algo
            s.SegmentedPropertyCategoryCodeSequence = [code("91723000", "SCT", "Anatomical Structure")]
            s.SegmentedPropertyTypeCodeSequence = [code(*prop)]
            seq.append(s)
        self.write(patient, "1.2.840.10008.5.1.4.1.1.66.4", "SEG", TAVI, SegmentSequence=seq,
                   SegmentationType="BINARY")

    def oracle(self) -> Oracle:
        return Oracle(self.root / "dicom", template_dirs=[self.root / "templates"])


LV = ("87878005", "SCT", "Left ventricle")
RV = ("53085002", "SCT", "Right ventricle")


def q(text: str):
    return parse_text(text, catalog=None, validate=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_same_report_required_for_qrs_and_lbbb(store: Store) -> None:
    store.ecg_report("split", TAVI, 130, ())  # wide QRS in one report ...
    store.ecg_report("split", TAVI, 100, (LBBB,))  # ... LBBB in another: must not match
    store.ecg_report("both", TAVI, 140, (LBBB, RBBB))
    store.ecg_report("narrow", TAVI, 110, (LBBB,))
    counts = store.oracle().evaluate(q("e := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB]; cohort e"))
    assert counts.patients == 1
    # Each condition alone matches the split patient: the trap is only about the same instance.
    alone = store.oracle().evaluate(q("a := SR:ecg_report[qrs_duration >= 120]; b := SR:ecg_report[ecg_finding = LBBB];"
                                      " cohort a and b"))
    assert alone.patients == 2


@pytest.mark.parametrize("value, unit, expected", [
    (120, "ms", 2), (0.12, "s", 2), (0.125, "s", 1), (125, None, 1), (0.2, None, 3),
], ids=["ms", "seconds", "seconds-stricter", "no-unit-means-ms", "0.2-means-ms-not-s"])
def test_units_are_converted(store: Store, value: float, unit: str | None, expected: int) -> None:
    store.ecg_report("p1", TAVI, 130, ())
    store.ecg_report("p2", TAVI, 0.122, (), unit="s")  # stored in seconds, indexed as 122 ms
    store.ecg_report("p3", TAVI, 90, ())
    u = f" {unit}" if unit else ""
    assert store.oracle().evaluate(q(f"e := SR:ecg_report[qrs_duration >= {value}{u}]; cohort e")).patients == expected


@pytest.mark.parametrize("value", ["LBBB", '"63467002 SCT"', "63467002", '"left bundle branch block"'],
                         ids=["alias", "code-and-scheme", "code-value", "meaning"])
def test_coded_values_match_alias_code_or_meaning(store: Store, value: str) -> None:
    store.ecg_report("p1", TAVI, 130, (LBBB,))
    store.ecg_report("p2", TAVI, 130, (RBBB,))
    assert store.oracle().evaluate(q(f"e := SR:ecg_report[ecg_finding = {value}]; cohort e")).patients == 1


def test_not_equal_needs_some_other_value(store: Store) -> None:
    store.ecg_report("only_lbbb", TAVI, 130, (LBBB,))
    store.ecg_report("both", TAVI, 130, (LBBB, RBBB))
    store.ecg_report("none", TAVI, 130, ())
    counts = store.oracle().evaluate(q("e := SR:ecg_report[ecg_finding != LBBB]; cohort e"))
    assert counts.patients == 1  # "both" has RBBB; "none" has no finding at all


def test_seg_groups_hold_on_one_segment(store: Store) -> None:
    store.seg("good", [(LV, "MANUAL"), (RV, "AUTOMATIC")])
    store.seg("swapped", [(LV, "AUTOMATIC"), (RV, "MANUAL")])  # MANUAL is on RV, not on LV
    store.seg("split", [(LV, "MANUAL")])
    store.seg("split", [(RV, "MANUAL")])  # LV and RV in two different SEGs
    oracle = store.oracle()
    grouped = "s := SEG[{segment_type = LV, algorithm_type = MANUAL}, {segment_type = RV}]; cohort s"
    ungrouped = "s := SEG[segment_type = LV, algorithm_type = MANUAL, segment_type = RV]; cohort s"
    assert oracle.evaluate(q(grouped)).patients == 1
    assert oracle.evaluate(q(ungrouped)).patients == 2  # the swapped SEG passes without the group


def test_sr_groups_hold_in_one_container(store: Store) -> None:
    finding = ("121071", "DCM", "Finding")
    point = ("111030", "DCM", "Image Region")
    hinge = ("HP001", "99FEDCOH", "Aortic valve hinge point")
    other = ("56789007", "SCT", "Right coronary artery")

    def group(*children: Dataset) -> Dataset:
        return container(("125007", "DCM", "Measurement Group"), *children)

    def report(patient: str, *groups: Dataset) -> None:
        store.sr(patient, ("126000", "DCM", "Imaging Measurement Report"), TAVI,
                 container(("126010", "DCM", "Imaging Measurements"), *groups))

    scoord = item("SCOORD3D", point, GraphicType="POINT", GraphicData=[1.0, 2.0, 3.0])
    report("good", group(coded(finding, hinge), scoord))
    report("split", group(coded(finding, hinge)), group(coded(finding, other), scoord))
    counts = store.oracle().evaluate(
        q("l := SR:landmarks[{landmark_finding = hinge_point, landmark_point exists}]; cohort l"))
    assert counts.patients == 1


def test_window_uses_date_fields_and_matched_entities(store: Store) -> None:
    for patient, days_before in (("in", 30), ("edge", 90), ("out", 100), ("after", -5)):
        store.procedures(patient, TAVI, NO)
        store.ecg_report(patient, TAVI - timedelta(days=days_before), 130, ())
    store.ecg_report("no_tavi", TAVI, 130, ())
    oracle = store.oracle()
    spec = "e := SR:ecg_report within 90 days before t.tavi_date by ecg_datetime; t := SR:procedures; cohort e"
    assert oracle.evaluate(q(spec)).patients == 2
    # By the SRs' own content dates (both 2024-01-01) every TAVI patient is "within 0 days".
    assert oracle.evaluate(q("e := SR:ecg_report within 0..0 days of t; t := SR:procedures; cohort e")).patients == 4
    # The other object's condition narrows which entities anchor the window.
    none = "e := SR:ecg_report within 90 days before t.tavi_date by ecg_datetime; " \
           "t := SR:procedures[pacemaker_after_tavi = true]; cohort e"
    assert oracle.evaluate(q(none)).patients == 0


def test_counts_labels_subsets_and_distributions(store: Store) -> None:
    store.ct("a", TAVI - timedelta(days=10), 0.6)
    store.ecg_report("a", TAVI - timedelta(days=20), 150, (LBBB,))
    store.procedures("a", TAVI, YES)
    store.ct("b", TAVI - timedelta(days=10), 1.5)  # thick slices: not a "ct" match, still a CT series
    store.ecg_report("b", TAVI - timedelta(days=20), 95, ())
    store.procedures("b", TAVI, NO)
    store.ecg_report("c", TAVI - timedelta(days=20), 125, (RBBB,))
    store.procedures("c", TAVI, None)  # label unknown
    store.ecg_report("d", TAVI - timedelta(days=20), 100, ())  # no TAVI: outside the cohort
    spec = q("ct := CT[slice_thickness <= 1 mm]; e := SR:ecg_report; t := SR:procedures[tavi_date exists];"
             " cohort t and (ct or e); label t.pacemaker_after_tavi positive yes negative no;"
             " subset both = ct and e; subset no_ct = not ct;"
             " histogram e.qrs_duration bins 80, 120, 160; categories e.ecg_finding for no_ct")
    counts = store.oracle().evaluate(spec)
    assert counts.patients == 3
    s = counts.subsets
    assert (s["both"].patients, s["both"].positive) == (1, 1)
    assert (s["no_ct"].patients, s["no_ct"].negative, s["no_ct"].unknown) == (2, 1, 1)
    assert (s["CT"].patients, s["ECG"].patients, s["CT+ECG"].patients) == (2, 0, 0)  # no ECG waveforms
    hist, cats = counts.distributions
    assert [(b.label, b.count) for b in hist.bins] == [("80-120", 1), ("120-160", 2)]
    assert (hist.subset, hist.unit, cats.subset) == ("cohort", "ms", "no_ct")
    assert [(b.label, b.count) for b in cats.bins] == [("RBBB", 1)]


def test_ct_series_is_one_entity_with_its_slices(store: Store) -> None:
    store.ct("p", TAVI, 0.6, slices=3)
    oracle = store.oracle()
    assert len(oracle.entities) == 1
    assert oracle.evaluate(q("c := CT[n_instances = 3, date = 2022-06-01]; cohort c")).patients == 1


def test_oracle_knows_every_builtin_field_of_the_index_catalog() -> None:
    from cohort.index.catalog import field_catalog  # the test may look at the index; the oracle may not
    from tests.oracle import BUILTINS

    builtin = {n for n, f in field_catalog().items() if f.source != "item"}
    assert builtin <= set(BUILTINS), sorted(builtin - set(BUILTINS))


def test_random_valid_specs_evaluate_on_the_real_templates(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings

    from cohort.index.catalog import field_catalog
    from tests.oracle_strategies import random_spec_strategy

    store = Store(tmp_path)
    store.ct("a", TAVI, 0.6)
    store.ecg_report("a", TAVI - timedelta(days=3), 130, (LBBB,))
    store.procedures("a", TAVI, YES)
    store.seg("a", [(LV, "MANUAL")])
    oracle = Oracle(tmp_path / "dicom")  # the project's template configs

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(random_spec_strategy(field_catalog()))
    def check(spec) -> None:  # type: ignore[no-untyped-def]
        counts = oracle.evaluate(spec)
        assert 0 <= counts.patients <= 1
        for sub in counts.subsets.values():
            assert sub.positive + sub.negative + sub.unknown == sub.patients <= counts.patients

    check()
