"""3D Slicer markups JSON (landmark point sets) -> TID 1500 Measurement Report, Comprehensive 3D SR.

One measurement group (TID 1410) per landmark: tracking identifier and UID, the landmark as Finding,
its sinus of Valsalva as Finding Site, and the point as SCOORD3D POINT "Image Region" in the CT's
frame of reference. The SR joins the CT's study and lists the CT instances as evidence, which is
how it names its source series (an image library would grow the SR twenty-fold for 64 slices).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from cohort.dicom import codes
from cohort.dicom.patient import PatientRef, apply_patient
from cohort.dicom.sr_items import declare_local_scheme
from cohort.errors import InputError, MissingReferenceError
from cohort.ingest.base import (
    STAGE_ANNOTATIONS,
    ConversionResult,
    Converter,
    IngestContext,
    InputHead,
    RejectedPart,
)
from cohort.siteconfig import SiteConfig
from cohort.store import SeriesInStore

__all__ = ["MarkupsConverter", "Landmark", "CtVolume", "classify_label", "LANDMARK_CONCEPTS"]

SR_SERIES_NUMBER = 901
SR_SERIES_DESCRIPTION = "TAVI landmarks (3D Slicer markups)"
OBSERVER_NAME = "3D Slicer"


@dataclass(frozen=True)
class LandmarkConcept:
    """What one landmark is: tracking name, Finding code and Finding Site code."""

    name: str
    finding: Code
    site: Code


LANDMARK_CONCEPTS: dict[str, LandmarkConcept] = {
    "hinge_ncc": LandmarkConcept("NCC hinge point", codes.HINGE_POINT, codes.NON_CORONARY_SINUS),
    "hinge_lcc": LandmarkConcept("LCC hinge point", codes.HINGE_POINT, codes.LEFT_SINUS_OF_VALSALVA),
    "hinge_rcc": LandmarkConcept("RCC hinge point", codes.HINGE_POINT, codes.RIGHT_SINUS_OF_VALSALVA),
    "ostium_lm": LandmarkConcept("Left main coronary ostium", codes.LEFT_MAIN_CORONARY_OSTIUM,
                                 codes.LEFT_SINUS_OF_VALSALVA),
    "ostium_rca": LandmarkConcept("Right coronary ostium", codes.RIGHT_CORONARY_ARTERY_OSTIUM,
                                  codes.RIGHT_SINUS_OF_VALSALVA),
}

# Label vocabulary (English and German, as planning tools and sites write them). A label names a
# landmark when it has a kind word (hinge / ostium) and a side word; LCA/RCA/LM imply both.
_HINGE_WORDS = {"hinge", "hp", "scharnier", "scharnierpunkt", "nadir", "hingepoint", "basal"}
_OSTIUM_WORDS = {"ostium", "ostia", "koronarostium", "abgang", "lca", "rca", "lm", "lmca", "hauptstamm"}
_NON = {"ncc", "nc", "ncs", "non", "noncoronary", "akoronar", "nichtkoronar"}
_LEFT = {"lcc", "lc", "lcs", "left", "links", "linkskoronar", "lca", "lm", "lmca", "hauptstamm"}
_RIGHT = {"rcc", "rc", "rcs", "right", "rechts", "rechtskoronar", "rca"}


def classify_label(label: str) -> str | None:
    """The landmark key (see LANDMARK_CONCEPTS) a control point label names, or None."""
    tokens = set(re.findall(r"[a-zäöüß]+", label.casefold()))
    side = "ncc" if tokens & _NON else "lcc" if tokens & _LEFT else "rcc" if tokens & _RIGHT else None
    if side is None:
        return None
    if tokens & _HINGE_WORDS:
        return f"hinge_{side}"
    if tokens & _OSTIUM_WORDS and side != "ncc":
        return "ostium_lm" if side == "lcc" else "ostium_rca"
    return None


@dataclass(frozen=True)
class Landmark:
    """One control point: landmark key, the site's label and the position in LPS millimetres."""

    key: str
    label: str
    lps: tuple[float, float, float]


@dataclass(frozen=True)
class CtVolume:
    """The voxel grid of a stored CT series, from its slices' geometry attributes."""

    origin: np.ndarray  # ImagePositionPatient of the first slice along the normal
    row_dir: np.ndarray  # direction of increasing column index
    col_dir: np.ndarray  # direction of increasing row index
    normal: np.ndarray
    spacing: tuple[float, float, float]  # between columns, between rows, between slices (mm)
    size: tuple[int, int, int]  # columns, rows, slices
    frame_of_reference_uid: str

    @classmethod
    def from_datasets(cls, slices: list[Dataset], where: str) -> CtVolume:
        """Build from the CT slices' headers; InputError naming ``where`` if they are inconsistent."""
        try:
            iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
            row, col = iop[:3], iop[3:]
            normal = np.cross(row, col)
            ps = [float(v) for v in slices[0].PixelSpacing]
            rows, cols = int(slices[0].Rows), int(slices[0].Columns)
            frames = {str(s.FrameOfReferenceUID) for s in slices}
            positions = sorted((np.array([float(v) for v in s.ImagePositionPatient]) for s in slices),
                               key=lambda p: float(p @ normal))
        except AttributeError as exc:
            raise MissingReferenceError(f"stored CT series lacks a geometry attribute ({exc}); "
                                        "re-ingest the CT from a complete export", path=where) from None
        if len(frames) != 1:
            raise MissingReferenceError(f"stored CT series has {len(frames)} frames of reference; "
                                        "landmarks need one volume", path=where)
        if len(positions) > 1:
            gaps = np.diff([float(p @ normal) for p in positions])
            slice_gap = float(np.median(gaps))
        else:
            slice_gap = float(slices[0].get("SliceThickness", 1.0) or 1.0)
        return cls(positions[0], row, col, normal, (ps[1], ps[0], slice_gap), (cols, rows, len(positions)),
                   frames.pop())

    def index_of(self, p: tuple[float, float, float]) -> tuple[float, float, float]:
        """Continuous (column, row, slice) index of an LPS point."""
        d = np.asarray(p, dtype=float) - self.origin
        return (float(d @ self.row_dir) / self.spacing[0], float(d @ self.col_dir) / self.spacing[1],
                float(d @ self.normal) / self.spacing[2])

    def contains(self, p: tuple[float, float, float]) -> bool:
        """True when ``p`` lies within the volume, voxels counted to their outer faces."""
        return all(-0.5 <= i <= n - 0.5 for i, n in zip(self.index_of(p), self.size, strict=True))

    def bounds(self) -> tuple[tuple[float, float], ...]:
        """LPS (min, max) per axis of the volume's outer faces."""
        corners = []
        for ic in (-0.5, self.size[0] - 0.5):
            for ir in (-0.5, self.size[1] - 0.5):
                for ik in (-0.5, self.size[2] - 0.5):
                    corners.append(self.origin + ic * self.spacing[0] * self.row_dir
                                   + ir * self.spacing[1] * self.col_dir + ik * self.spacing[2] * self.normal)
        arr = np.array(corners)
        return tuple((float(arr[:, a].min()), float(arr[:, a].max())) for a in range(3))

    def bounds_text(self) -> str:
        return ", ".join(f"{axis} {lo:.1f}..{hi:.1f} mm" for axis, (lo, hi) in zip("xyz", self.bounds(),
                                                                                    strict=True))


def _load(path: Path) -> Any:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not valid UTF-8 JSON ({exc}); re-export the markups from 3D Slicer",
                         path=str(path)) from None


def _position(value: Any, path: Path, where: str) -> tuple[float, float, float]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not all(math.isfinite(v) for v in value)):
        raise InputError(f"expected three finite numbers, got {value!r}", path=str(path), field=where)
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_landmarks(doc: Any, path: Path) -> tuple[list[Landmark], list[RejectedPart]]:
    """Landmarks (in LPS) of every Fiducial markup; other markup types and undefined points rejected."""
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise InputError("no 'markups' list at the top level; expected a 3D Slicer markups JSON file",
                         path=str(path), field="markups")
    found: dict[str, Landmark] = {}
    rejected: list[RejectedPart] = []
    for m_index, markup in enumerate(doc["markups"]):
        where = f"markups[{m_index}]"
        if not isinstance(markup, dict):
            raise InputError("expected an object", path=str(path), field=where)
        if markup.get("type") != "Fiducial":
            rejected.append(RejectedPart(where, f"markup type {markup.get('type')!r} is not a point list "
                                                "(Fiducial); only point landmarks are converted"))
            continue
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(f"unknown coordinate system {system!r}; valid: LPS, RAS",
                             path=str(path), field=f"{where}.coordinateSystem")
        units = markup.get("coordinateUnits", "mm")
        if units != "mm":
            raise InputError(f"unsupported units {units!r}; re-export with coordinateUnits 'mm'",
                             path=str(path), field=f"{where}.coordinateUnits")
        points = markup.get("controlPoints")
        if not isinstance(points, list):
            raise InputError("expected a list of control points", path=str(path), field=f"{where}.controlPoints")
        for p_index, point in enumerate(points):
            p_where = f"{where}.controlPoints[{p_index}]"
            label = str(point.get("label", "")) if isinstance(point, dict) else ""
            if not isinstance(point, dict) or point.get("positionStatus", "defined") != "defined":
                rejected.append(RejectedPart(p_where, f"point {label!r} has no defined position"))
                continue
            key = classify_label(label)
            if key is None:
                valid = "; ".join(c.name for c in LANDMARK_CONCEPTS.values())
                raise InputError(f"label {label!r} names no known landmark; label the point as one of: {valid} "
                                 "(German labels such as 'Scharnierpunkt links' work too)",
                                 path=str(path), field=f"{p_where}.label")
            if key in found:
                raise InputError(f"label {label!r} names {LANDMARK_CONCEPTS[key].name} again (first: "
                                 f"{found[key].label!r}); remove the duplicate point",
                                 path=str(path), field=f"{p_where}.label")
            x, y, z = _position(point.get("position"), path, f"{p_where}.position")
            if system == "RAS":
                x, y = -x, -y  # RAS -> LPS: right/left and anterior/posterior swap sign
            found[key] = Landmark(key, label, (x, y, z))
    if not found:
        raise InputError("no landmark points in the file", path=str(path), field="markups")
    order = list(LANDMARK_CONCEPTS)
    return sorted(found.values(), key=lambda lm: order.index(lm.key)), rejected


class MarkupsConverter(Converter):
    """3D Slicer markups JSON -> TID 1500 Comprehensive 3D SR on the patient's CT."""

    name = "slicer-markups"
    linked_by_name = True
    stage = STAGE_ANNOTATIONS
    description = "3D Slicer markups JSON (landmark points) -> TID 1500 Comprehensive 3D SR"

    def sniff(self, head: InputHead, site: SiteConfig) -> bool:
        data = head.data.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not data.startswith(b"{"):
            return False
        return b"markups-schema" in data or re.search(rb'"markups"\s*:\s*\[', data) is not None

    def convert(self, path: Path, ctx: IngestContext) -> ConversionResult:
        path = Path(path)
        doc = _load(path)
        patient = self._patient(path, ctx)
        landmarks, rejected = parse_landmarks(doc, path)
        series = ctx.store.series_of(patient.patient_id, "CT")
        if not series:
            raise MissingReferenceError(f"no CT series of patient {patient.pacs_id} in the store; ingest the "
                                        "CT export first (landmarks are stored on their CT)", path=str(path))
        slices, volume = self._pick_series(series, landmarks, path)
        sr = self._build_sr(landmarks, slices, volume, patient, ctx, path)
        return ConversionResult(datasets=[sr], rejected=rejected)

    @staticmethod
    def _patient(path: Path, ctx: IngestContext) -> PatientRef:
        if ctx.site.markups is None:
            raise InputError("the site config has no 'markups' section; add markups.link_pattern to site.yaml",
                             path=str(path), field="markups.link_pattern")
        pattern = ctx.site.markups.link_pattern
        match = re.match(pattern, path.name)
        if match is None:
            raise InputError(f"file name does not match markups.link_pattern {pattern!r}; rename the file "
                             "or fix the pattern in site.yaml", path=str(path), field="file name")
        groups = {k: v for k, v in match.groupdict().items() if v}
        if "pacs_id" in groups:
            return ctx.patients.resolve("pacs_id", groups["pacs_id"], path=path, field="file name")
        if "case_id" in groups:
            return ctx.patients.resolve("case_id", groups["case_id"], path=path, field="file name")
        raise InputError(f"markups.link_pattern {pattern!r} has no named group pacs_id or case_id",
                         path=str(path), field="markups.link_pattern")

    @staticmethod
    def _pick_series(series: list[SeriesInStore], landmarks: list[Landmark],
                     path: Path) -> tuple[list[Dataset], CtVolume]:
        """The first stored CT that contains every landmark; InputError on the newest one otherwise."""
        last: tuple[list[Dataset], CtVolume] | None = None
        for s in series:
            slices: list[Dataset] = [pydicom.dcmread(f, stop_before_pixels=True) for f in s.files]
            volume = CtVolume.from_datasets(slices, str(path))
            if all(volume.contains(lm.lps) for lm in landmarks):
                return slices, volume
            last = (slices, volume)
        assert last is not None
        volume = last[1]
        outside = next(lm for lm in landmarks if not volume.contains(lm.lps))
        x, y, z = outside.lps
        raise InputError(f"point {outside.label!r} at LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm lies outside the CT volume "
                         f"({volume.bounds_text()}); check the coordinate system (LPS/RAS) and that the "
                         "points were placed on this patient's CT", path=str(path), field=outside.label)

    @staticmethod
    def _build_sr(landmarks: list[Landmark], slices: list[Dataset], volume: CtVolume, patient: PatientRef,
                  ctx: IngestContext, path: Path) -> Dataset:
        groups = []
        for lm in landmarks:
            concept = LANDMARK_CONCEPTS[lm.key]
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=ctx.uid("landmark", lm.key),
                                                             identifier=concept.name),
                referenced_region=hd.sr.ImageRegion3D(hd.sr.GraphicTypeValues3D.POINT, np.array([lm.lps]),
                                                      volume.frame_of_reference_uid),
                finding_type=concept.finding,
                finding_sites=[hd.sr.FindingSite(concept.site)],
            ))
        observer = hd.sr.ObserverContext(
            observer_type=dcm_codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=ctx.uid("landmark-observer"), name=OBSERVER_NAME))
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=[codes.CT_UNSPECIFIED_BODY_REGION], imaging_measurements=groups)
        evidence = sorted(slices, key=lambda s: str(s.SOPInstanceUID))
        date, time = _ct_date_time(evidence[0], path)
        with warnings.catch_warnings():
            # Pseudonymous PatientNames have a single component; highdicom warns about that form.
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            sr = hd.sr.Comprehensive3DSR(
                evidence=evidence, content=report[0], series_instance_uid=ctx.uid("landmark-sr-series"),
                series_number=SR_SERIES_NUMBER, sop_instance_uid=ctx.uid("landmark-sr"), instance_number=1,
                manufacturer="FedCohort", is_complete=True, content_date=date, content_time=time,
                series_date=date, series_time=time, series_description=SR_SERIES_DESCRIPTION)
        _strip_wall_clock(sr)
        declare_local_scheme(sr, sr)
        apply_patient(sr, patient)
        return sr


def _strip_wall_clock(sr: Dataset) -> None:
    """Remove the (type 3) timestamps highdicom takes from the clock: same input, same bytes."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in sr:
            delattr(sr, keyword)
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime


def _ct_date_time(ct: Dataset, path: Path) -> tuple[str, str]:
    """The CT's content (else series, else study) date and time: when the landmarks' image was made."""
    for date_kw, time_kw in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                             ("StudyDate", "StudyTime")):
        date = str(ct.get(date_kw, "") or "")
        if date:
            time = str(ct.get(time_kw, "") or "000000")
            return date, time.split(".")[0]
    raise MissingReferenceError("the stored CT has no ContentDate, SeriesDate or StudyDate; the landmark SR "
                                "needs a date: re-ingest the CT with its study date", path=str(path))
