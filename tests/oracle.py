"""An independent, deliberately simple evaluator of cohort specs: the correctness oracle.

It reads every DICOM file of a store with pydicom, extracts values itself (its own SR tree walk and
SEG segment read), and evaluates a CohortSpec in plain Python, following the semantics written in
``cohort/spec/model.py``. It never imports ``cohort.index``: the only thing shared with the index is
data, the template extraction configs (``cohort/templates/*.yaml``), read here with plain YAML.
Slow on purpose: clarity beats speed; it is meant for stores of a few hundred patients.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cohort.dicom import codes
from cohort.results import Bin, CohortCounts, Distribution, SubsetCounts
from cohort.spec import units
from cohort.spec.model import And, CohortSpec, Expr, Not, Or, Predicate, Scalar

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "cohort" / "templates"
IMAGE_KINDS = ("CT", "MR", "CR", "DX")
YES = {"373066001 SCT", "R-0038D SRT", "Y DCM"}
NO = {"373067005 SCT", "R-00339 SRT", "N DCM"}
YES_WORDS = {"yes", "true", "y", "ja", "j", "1"}
NO_WORDS = {"no", "false", "n", "nein", "0"}
SR_TYPES = {"numeric": {"NUM"}, "coded": {"CODE"}, "text": {"TEXT"}, "date": {"DATE", "DATETIME"},
            "boolean": {"CODE", "NUM", "TEXT"}, "geometric": {"SCOORD", "SCOORD3D"}}


def _key(code: Any) -> str:
    return f"{code.value} {code.scheme_designator}"


# Short names for SEG property codes (the same words the catalog offers).
SEG_TYPE_ALIASES = {
    "left_ventricle": _key(codes.LEFT_VENTRICLE), "LV": _key(codes.LEFT_VENTRICLE),
    "right_ventricle": _key(codes.RIGHT_VENTRICLE), "RV": _key(codes.RIGHT_VENTRICLE),
    "membranous_septum": _key(codes.MEMBRANOUS_SEPTUM), "calcification": _key(codes.CALCIFIED),
}
LEAD_NAMES = {**{v: k for k, v in codes.LEAD_CODES_MDC.items()}, **{v: k for k, v in codes.LEAD_CODES_SCPECG.items()}}


@dataclass(frozen=True)
class FieldDef:
    """What the oracle knows of a field: value type, unit, code aliases; SR path for template fields."""

    name: str
    vtype: str  # numeric | coded | text | date | boolean | geometric
    unit: str | None = None
    aliases: tuple[tuple[str, str], ...] = ()
    path: tuple[str, ...] = ()
    group: str | None = None


@dataclass(frozen=True)
class Value:
    """One value of a field on an entity; ``item`` None for entity-level values."""

    item: str | None
    num: float | None = None
    code: tuple[str, str, str] | None = None
    text: str | None = None
    day: date | None = None
    flag: bool | None = None


@dataclass
class Entity:
    kind: str
    template: str | None
    patient: str
    uid: str
    day: date | None
    values: dict[str, list[Value]] = field(default_factory=lambda: defaultdict(list))


BUILTINS: dict[str, FieldDef] = {f.name: f for f in (
    FieldDef("date", "date"), FieldDef("modality", "text"), FieldDef("sop_class_uid", "text"),
    FieldDef("n_instances", "numeric", "{count}"), FieldDef("series_description", "text"),
    FieldDef("study_description", "text"), FieldDef("manufacturer", "text"),
    FieldDef("manufacturer_model", "text"), FieldDef("body_part", "text"),
    FieldDef("slice_thickness", "numeric", "mm"), FieldDef("kvp", "numeric", "kV"),
    FieldDef("pixel_spacing", "numeric", "mm"), FieldDef("rows", "numeric", "{count}"),
    FieldDef("columns", "numeric", "{count}"), FieldDef("convolution_kernel", "text"),
    FieldDef("contrast_agent", "text"), FieldDef("sampling_frequency", "numeric", "Hz"),
    FieldDef("lead_count", "numeric", "{count}"), FieldDef("duration_s", "numeric", "s"), FieldDef("lead", "text"),
    FieldDef("segment_count", "numeric", "{count}"), FieldDef("segmentation_type", "text"),
    FieldDef("completion_flag", "text"), FieldDef("verification_flag", "text"),
    FieldDef("segment_number", "numeric"), FieldDef("segment_label", "text"),
    FieldDef("segment_category", "coded"), FieldDef("segment_type", "coded", None, tuple(SEG_TYPE_ALIASES.items())),
    FieldDef("algorithm_type", "text"), FieldDef("algorithm_name", "text"), FieldDef("anatomic_region", "coded"),
)}
_ATTRS = {"series_description": "SeriesDescription", "study_description": "StudyDescription",
          "manufacturer": "Manufacturer", "manufacturer_model": "ManufacturerModelName"}
_IMAGE_ATTRS = {"body_part": "BodyPartExamined", "slice_thickness": "SliceThickness", "kvp": "KVP",
                "rows": "Rows", "columns": "Columns", "contrast_agent": "ContrastBolusAgent"}


def load_template_defs(dirs: Iterable[Path] = (TEMPLATE_DIR,)) -> tuple[dict[str, str], dict[str, dict[str, FieldDef]]]:
    """Document title ("CODE SCHEME", or "CODE SCHEME|CONCEPT" for templates that also need a content
    concept) -> template key, and template key -> its fields, from the YAML."""
    titles: dict[str, str] = {}
    fields: dict[str, dict[str, FieldDef]] = defaultdict(dict)
    for d in dirs:
        for path in sorted(Path(d).glob("*.yaml")):
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            key = raw["key"]
            marks = tuple(raw.get("content_concepts") or [])
            for t in raw.get("document_titles") or []:
                if marks:  # claims the title only for SRs with one of these concepts in their content
                    titles.update({f"{t}|{c}": key for c in marks})
                else:
                    titles[t] = key
            for name, f in (raw.get("fields") or {}).items():
                fields[key][name] = FieldDef(name, f["type"], f.get("unit"),
                                             tuple((str(a), str(c)) for a, c in (f.get("values") or {}).items()),
                                             tuple(f["path"]), f.get("group"))
    return titles, dict(fields)


def _code(seq: Any) -> tuple[str, str, str] | None:
    if not seq:
        return None
    c = seq[0]
    value = c.get("CodeValue") or c.get("LongCodeValue") or c.get("URNCodeValue")
    return None if value is None else (str(value), str(c.get("CodingSchemeDesignator", "")),
                                       str(c.get("CodeMeaning", "")))


def _day(text: str) -> date | None:
    text = (text or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def entity_day(ds: Dataset) -> date | None:
    """Acquisition date(time), then content, series, study date."""
    for kw in ("AcquisitionDateTime", "AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"):
        d = _day(str(ds.get(kw, "") or ""))
        if d is not None:
            return d
    return None


def _kind(ds: Dataset) -> str:
    sop, modality = str(ds.get("SOPClassUID", "")), str(ds.get("Modality", "")).upper()
    if sop.startswith("1.2.840.10008.5.1.4.1.1.88.") or modality == "SR":
        return "SR"
    if sop in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7") or modality == "SEG":
        return "SEG"
    if sop.startswith("1.2.840.10008.5.1.4.1.1.9.1.") or modality == "ECG":
        return "ECG"
    return modality or "OT"


def _path_matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_path_matches(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and pattern[0] in ("*", path[0]) and _path_matches(pattern[1:], path[1:])


def _sr_value(f: FieldDef, item: Dataset, item_key: str) -> Value | None:
    vt = str(item.get("ValueType", ""))
    if vt not in SR_TYPES[f.vtype]:
        return None
    if vt == "NUM":
        mv = item.get("MeasuredValueSequence")
        if not mv:
            return None
        num = float(mv[0].NumericValue)
        unit = _code(mv[0].get("MeasurementUnitsCodeSequence"))
        if f.vtype == "boolean":
            return Value(item_key, flag=num != 0)
        if f.unit and unit and unit[0] != f.unit:
            if not units.compatible(unit[0], f.unit):
                return Value(item_key)  # present, but never comparable as a number
            num = units.convert(num, unit[0], f.unit)
        elif f.unit and unit is None:
            return Value(item_key)
        return Value(item_key, num=num)
    if vt == "CODE":
        code = _code(item.get("ConceptCodeSequence"))
        if code is None:
            return None
        if f.vtype == "boolean":
            k = f"{code[0]} {code[1]}"
            return Value(item_key, flag=True) if k in YES else Value(item_key, flag=False) if k in NO else None
        return Value(item_key, code=code)
    if vt == "TEXT":
        text = str(item.get("TextValue", ""))
        if f.vtype == "boolean":
            w = text.strip().lower()
            return Value(item_key, flag=True) if w in YES_WORDS else Value(item_key, flag=False) if w in NO_WORDS \
                else None
        return Value(item_key, text=text)
    if vt in ("DATE", "DATETIME"):
        d = _day(str(item.get("Date" if vt == "DATE" else "DateTime", "")))
        return None if d is None else Value(item_key, day=d)
    return Value(item_key, text=str(item.get("GraphicType", "")))  # SCOORD / SCOORD3D


def _walk_sr(seq: Any, concepts: tuple[str, ...], chain: tuple[tuple[str, str, str], ...]):
    """Yield (concept path, ancestor chain incl. self as (concept, id, value type), item)."""
    parent = chain[-1][1] if chain else "root"
    for i, item in enumerate(seq):
        name = _code(item.get("ConceptNameCodeSequence"))
        concept = f"{name[0]} {name[1]}" if name else "-"
        here = (*chain, (concept, f"{parent}/{i}", str(item.get("ValueType", ""))))
        yield (*concepts, concept), here, item
        if "ContentSequence" in item:
            yield from _walk_sr(item.ContentSequence, (*concepts, concept), here)


def _group_of(f: FieldDef, chain: tuple[tuple[str, str, str], ...]) -> str:
    if f.group:
        for concept, ident, _ in reversed(chain):
            if concept == f.group:
                return ident
    for _, ident, vt in reversed(chain[:-1]):
        if vt == "CONTAINER":
            return ident
    return "root"


class Oracle:
    """All entities of a store, read with pydicom, and plain-Python evaluation of specs over them."""

    def __init__(self, store: str | Path, template_dirs: Iterable[Path] = (TEMPLATE_DIR,)) -> None:
        self.titles, self.templates = load_template_defs(template_dirs)
        self.entities: list[Entity] = []
        series: dict[str, Entity] = {}
        for path in sorted(Path(store).rglob("*")):
            if not path.is_file():
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError):
                continue
            if "SOPClassUID" not in ds:
                continue
            kind = _kind(ds)
            if kind in IMAGE_KINDS:
                uid = str(ds.SeriesInstanceUID)
                ent = series.get(uid)
                if ent is None:
                    ent = series[uid] = Entity(kind, None, str(ds.get("PatientID", "")), uid, entity_day(ds))
                    self.entities.append(ent)
                    self._common(ent, ds)
                self._image(ent, ds)
                continue
            ent = Entity(kind, None, str(ds.get("PatientID", "")), str(ds.SOPInstanceUID), entity_day(ds))
            ent.values["n_instances"].append(Value(None, num=1.0))
            self._common(ent, ds)
            if kind == "SEG":
                self._seg(ent, ds)
            elif kind == "ECG":
                self._ecg(ent, ds)
            elif kind == "SR":
                self._sr(ent, ds)
            self.entities.append(ent)

    # --- extraction ------------------------------------------------------------------------------
    def _add_text(self, ent: Entity, name: str, value: Any, item: str | None = None) -> None:
        if value is not None and str(value) != "":
            if Value(item, text=str(value)) not in ent.values[name]:
                ent.values[name].append(Value(item, text=str(value)))

    def _add_num(self, ent: Entity, name: str, value: Any) -> None:
        try:
            v = Value(None, num=float(value))
        except (TypeError, ValueError):
            return
        if value not in (None, "") and v not in ent.values[name]:
            ent.values[name].append(v)

    def _common(self, ent: Entity, ds: Dataset) -> None:
        if ent.day is not None:
            ent.values["date"].append(Value(None, day=ent.day))
        self._add_text(ent, "modality", ds.get("Modality"))
        self._add_text(ent, "sop_class_uid", ds.get("SOPClassUID"))
        for name, kw in _ATTRS.items():
            self._add_text(ent, name, ds.get(kw))

    def _image(self, ent: Entity, ds: Dataset) -> None:
        n = ent.values.pop("n_instances", [Value(None, num=0.0)])[0].num or 0.0
        ent.values["n_instances"] = [Value(None, num=n + 1)]
        for name, kw in _IMAGE_ATTRS.items():
            (self._add_num if BUILTINS[name].vtype == "numeric" else self._add_text)(ent, name, ds.get(kw))
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        if spacing:
            self._add_num(ent, "pixel_spacing", spacing[0])
        kernel = ds.get("ConvolutionKernel")
        if kernel:
            self._add_text(ent, "convolution_kernel", kernel if isinstance(kernel, str) else "\\".join(kernel))

    def _seg(self, ent: Entity, ds: Dataset) -> None:
        segments = list(ds.get("SegmentSequence", []))
        ent.values["segment_count"].append(Value(None, num=float(len(segments))))
        self._add_text(ent, "segmentation_type", ds.get("SegmentationType"))
        for seg in segments:
            item = f"segment{int(seg.SegmentNumber)}"
            ent.values["segment_number"].append(Value(item, num=float(seg.SegmentNumber)))
            self._add_text(ent, "segment_label", seg.get("SegmentLabel"), item)
            self._add_text(ent, "algorithm_type", seg.get("SegmentAlgorithmType"), item)
            self._add_text(ent, "algorithm_name", seg.get("SegmentAlgorithmName"), item)
            for name, kw in (("segment_category", "SegmentedPropertyCategoryCodeSequence"),
                             ("segment_type", "SegmentedPropertyTypeCodeSequence"),
                             ("anatomic_region", "AnatomicRegionSequence")):
                code = _code(seg.get(kw))
                if code:
                    ent.values[name].append(Value(item, code=code))

    def _ecg(self, ent: Entity, ds: Dataset) -> None:
        groups = ds.get("WaveformSequence") or []
        if not groups:
            return
        g = groups[0]
        self._add_num(ent, "sampling_frequency", g.get("SamplingFrequency"))
        self._add_num(ent, "lead_count", g.get("NumberOfWaveformChannels"))
        if g.get("SamplingFrequency") and g.get("NumberOfWaveformSamples"):
            self._add_num(ent, "duration_s", float(g.NumberOfWaveformSamples) / float(g.SamplingFrequency))
        for ch in g.get("ChannelDefinitionSequence", []):
            src = _code(ch.get("ChannelSourceSequence"))
            if src:
                ent.values["lead"].append(Value(None, text=LEAD_NAMES.get(src[0], src[2] or src[0])))

    def _sr(self, ent: Entity, ds: Dataset) -> None:
        self._add_text(ent, "completion_flag", ds.get("CompletionFlag"))
        self._add_text(ent, "verification_flag", ds.get("VerificationFlag"))
        title = _code(ds.get("ConceptNameCodeSequence"))
        ent.template = None
        if title:
            key = f"{title[0]} {title[1]}"
            seen = {concepts[-1] for concepts, _, _ in _walk_sr(ds.get("ContentSequence", []), (), ())}
            marked = [self.titles[f"{key}|{c}"] for c in sorted(seen) if f"{key}|{c}" in self.titles]
            ent.template = marked[0] if marked else self.titles.get(key)
        fields = self.templates.get(ent.template or "", {})
        for concepts, chain, item in _walk_sr(ds.get("ContentSequence", []), (), ()):
            for f in fields.values():
                if _path_matches(f.path, concepts):
                    v = _sr_value(f, item, _group_of(f, chain))
                    if v is not None:
                        ent.values[f.name].append(v)

    # --- evaluation ------------------------------------------------------------------------------
    def field_def(self, name: str, template: str | None) -> FieldDef:
        """The definition of a field as seen from an object of ``template``."""
        if template and name in self.templates.get(template, {}):
            return self.templates[template][name]
        return BUILTINS[name]

    def _value_matches(self, f: FieldDef, v: Value, op: str, target: Scalar, unit: str | None) -> bool:
        if f.vtype == "numeric":
            if v.num is None or isinstance(target, bool) or not isinstance(target, int | float):
                return False
            t = units.convert(float(target), unit, f.unit) if unit and f.unit else float(target)
            return _compare(v.num, op, t)
        if f.vtype == "date":
            return v.day is not None and _compare(v.day, op, date.fromisoformat(str(target)[:10]))
        if f.vtype == "boolean":
            return v.flag is not None and _compare(v.flag, op, target)
        if f.vtype == "coded":
            if v.code is None:
                return False
            if op == "contains":
                return str(target).casefold() in v.code[2].casefold()
            hit = _code_is(f, v.code, str(target))
            return hit if op == "=" else (not hit if op == "!=" else False)
        if f.vtype == "text":
            if v.text is None:
                return False
            if op == "contains":
                return str(target).casefold() in v.text.casefold()
            return _compare(v.text, op, str(target))
        return False

    def _pred_values(self, f: FieldDef, p: Predicate, vals: list[Value]) -> list[Value]:
        """The values of the entity that satisfy predicate ``p``."""
        if p.op == "exists":
            return list(vals)
        if p.op == "in":
            targets = p.value if isinstance(p.value, list) else [p.value] if p.value is not None else []
            return [v for v in vals if any(self._value_matches(f, v, "=", t, p.unit) for t in targets)]
        return [v for v in vals if self._value_matches(f, v, p.op, p.value, p.unit)]  # type: ignore[arg-type]

    def entity_matches(self, ent: Entity, kind: str, template: str | None, where: list[Predicate]) -> bool:
        """Same-instance semantics: every predicate on this entity; each group on one item."""
        if ent.kind != kind or (kind == "SR" and ent.template != template):
            return False
        groups: dict[str, list[list[Value]]] = defaultdict(list)
        for p in where:
            if p.op == "exists" and p.value is False:
                # "has no value": about the whole entity, so never tied to a group's item.
                if ent.values.get(p.field):
                    return False
                continue
            hits = self._pred_values(self.field_def(p.field, template), p, ent.values.get(p.field, []))
            if not hits:
                return False
            if p.group is not None:
                groups[p.group].append(hits)
        for hit_lists in groups.values():
            items: set[str] | None = None  # None: any item (only entity-level values so far)
            for hits in hit_lists:
                if any(v.item is None for v in hits):
                    continue  # an entity-level value holds for every item
                keys = {v.item for v in hits if v.item is not None}
                items = keys if items is None else items & keys
            if items is not None and not items:
                return False
        return True

    def _dates(self, ent: Entity, date_field: str | None) -> list[date]:
        if date_field is None:
            return [ent.day] if ent.day is not None else []
        return [v.day for v in ent.values.get(date_field, []) if v.day is not None]

    def matched(self, spec: CohortSpec) -> dict[str, list[Entity]]:
        """Object name -> entities that satisfy its whole condition (windows included)."""
        out: dict[str, list[Entity]] = {}

        def resolve(name: str) -> list[Entity]:
            if name in out:
                return out[name]
            obj = spec.objects[name]
            base = [e for e in self.entities if self.entity_matches(e, obj.kind, obj.template, obj.where)]
            w = obj.within
            if w is not None:
                others: dict[str, list[date]] = defaultdict(list)
                for o in resolve(w.of):
                    others[o.patient] += self._dates(o, w.date_field)
                lo = w.min_days if w.min_days is not None else -10**9
                hi = w.max_days if w.max_days is not None else 10**9
                base = [e for e in base if any(lo <= (d - od).days <= hi for d in self._dates(e, w.own_date_field)
                                               for od in others.get(e.patient, []))]
            out[name] = base
            return base

        for name in spec.objects:
            resolve(name)
        return out

    def evaluate(self, spec: CohortSpec) -> CohortCounts:
        """Counts per subset and label, and distributions, by the documented semantics."""
        matched = self.matched(spec)
        has = {n: {e.patient for e in ents} for n, ents in matched.items()}
        patients = {e.patient for e in self.entities}
        cohort = {p for p in patients if _holds(spec.cohort, has, p)}
        with_kind = {k: {e.patient for e in self.entities if e.kind == k} for k in ("CT", "ECG")}
        subsets: dict[str, set[str]] = {
            "CT": cohort & with_kind["CT"], "ECG": cohort & with_kind["ECG"],
            "CT+ECG": cohort & with_kind["CT"] & with_kind["ECG"],
        }
        for name, expr in spec.subsets.items():
            subsets[name] = {p for p in cohort if _holds(expr, has, p)}
        labels = self._labels(spec, matched)
        counts = {}
        for name, members in subsets.items():
            split = {"positive": 0, "negative": 0, "unknown": 0}
            for p in members:
                split[labels.get(p, "unknown")] += 1
            counts[name] = SubsetCounts(patients=len(members), **split)
        dists = [self._distribution(spec, i, matched, cohort, subsets) for i in range(len(spec.distributions))]
        return CohortCounts(patients=len(cohort), subsets=counts, distributions=dists)

    def _labels(self, spec: CohortSpec, matched: dict[str, list[Entity]]) -> dict[str, str]:
        label = spec.label
        if label is None:
            return {}
        obj = spec.objects[label.object]
        f = self.field_def(label.field, obj.template)
        out: dict[str, str] = {}
        for e in matched[label.object]:
            vals = e.values.get(label.field, [])
            if any(self._value_matches(f, v, "=", t, None) for v in vals for t in label.positive):
                out[e.patient] = "positive"
            elif out.get(e.patient) != "positive" and any(
                    self._value_matches(f, v, "=", t, None) for v in vals for t in label.negative):
                out[e.patient] = "negative"
        return out

    def _distribution(self, spec: CohortSpec, i: int, matched: dict[str, list[Entity]], cohort: set[str],
                      subsets: dict[str, set[str]]) -> Distribution:
        d = spec.distributions[i]
        members = cohort if d.subset is None else subsets[d.subset]
        f = self.field_def(d.field, spec.objects[d.object].template)
        per_patient: dict[str, list[Value]] = defaultdict(list)
        for e in matched[d.object]:
            if e.patient in members:
                per_patient[e.patient] += e.values.get(d.field, [])
        name = d.subset or "cohort"
        if d.bins is not None:
            unit = d.unit or f.unit
            bins = []
            for lo, hi in zip(d.bins, d.bins[1:], strict=False):
                n = sum(1 for vals in per_patient.values() if any(
                    v.num is not None and lo <= _in_unit(v.num, f.unit, unit) < hi for v in vals))
                bins.append(Bin(label=f"{lo:g}-{hi:g}", count=n, low=lo, high=hi))
            return Distribution(field=d.field, kind="histogram", subset=name, bins=bins, unit=unit or "")
        cats: dict[str, set[str]] = defaultdict(set)
        for p, vals in per_patient.items():
            for v in vals:
                lab = _category(f, v)
                if lab is not None:
                    cats[lab].add(p)
        return Distribution(field=d.field, kind="categories", subset=name,
                            bins=[Bin(label=k, count=len(cats[k])) for k in sorted(cats)])


def _in_unit(num: float, field_unit: str | None, unit: str | None) -> float:
    return units.convert(num, field_unit, unit) if field_unit and unit and field_unit != unit else num


def _category(f: FieldDef, v: Value) -> str | None:
    if v.code is not None:
        key = f"{v.code[0]} {v.code[1]}"
        alias = next((a for a, c in f.aliases if c == key), None)
        return alias or v.code[2] or key
    if v.flag is not None:
        return "true" if v.flag else "false"
    return v.text if f.vtype == "text" else None


def _code_is(f: FieldDef, code: tuple[str, str, str], target: str) -> bool:
    key = f"{code[0]} {code[1]}"
    return (dict(f.aliases).get(target) == key or target == key or target == code[0]
            or target.casefold() == code[2].casefold())


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    if op == ">=":
        return bool(a >= b)
    raise ValueError(f"operator {op!r} does not compare")


def _holds(expr: Expr, has: dict[str, set[str]], patient: str) -> bool:
    if isinstance(expr, str):
        return patient in has[expr]
    if isinstance(expr, And):
        return all(_holds(e, has, patient) for e in expr.all)
    if isinstance(expr, Or):
        return any(_holds(e, has, patient) for e in expr.any)
    if isinstance(expr, Not):
        return not _holds(expr.not_, has, patient)
    raise TypeError(f"not an expression: {expr!r}")


def evaluate(store: str | Path, spec: CohortSpec) -> CohortCounts:
    """Evaluate ``spec`` on the DICOM files under ``store`` (reads the whole store each call)."""
    return Oracle(store).evaluate(spec)
