"""The field catalog: every name a spec may use in a predicate, label or distribution.

Fields come from four places of the index's data model (``FieldInfo.source``):

* ``entity``: identity columns of an entity (its date, modality, number of instances);
* ``attribute``: DICOM attributes read per kind (slice thickness of a CT series, sampling frequency
  of an ECG waveform, ...), fixed in this module;
* ``segment``: SEG segment properties (one value per segment; a predicate group is one segment);
* ``item``: SR content named by template extraction configs (``cohort/templates/*.yaml``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from cohort.dicom import codes
from cohort.errors import ConfigError, SpecError
from cohort.index.templates import ValueType, code_key, load_templates
from cohort.spec.privacy import IDENTIFYING_FIELDS

# Template extraction configs of one store live in STORE/templates (docs/templates.md).
STORE_TEMPLATE_DIR = "templates"

Source = Literal["entity", "attribute", "item", "segment"]
IMAGE_KINDS: tuple[str, ...] = ("CT", "MR", "CR", "DX")
ALL_KINDS: tuple[str, ...] = (*IMAGE_KINDS, "ECG", "SR", "SEG")

OPS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "numeric": ("=", "!=", "<", "<=", ">", ">=", "in", "exists"),
    "date": ("=", "!=", "<", "<=", ">", ">=", "in", "exists"),
    "coded": ("=", "!=", "in", "contains", "exists"),
    "text": ("=", "!=", "in", "contains", "exists"),
    "boolean": ("=", "!=", "exists"),
    "geometric": ("exists",),
}


@dataclass(frozen=True)
class FieldInfo:
    """What a spec needs to know about one field: where it lives, its type, unit and meaning."""

    name: str
    value_type: ValueType
    source: Source
    kinds: tuple[str, ...]
    templates: tuple[str, ...] = ()  # SR templates that define it (source "item")
    unit: str | None = None  # unit numbers are stored in; a spec's unit is converted to it
    description: str = ""
    aliases: tuple[tuple[str, str], ...] = ()  # coded fields: (alias, "CODE SCHEME")

    @property
    def operators(self) -> tuple[str, ...]:
        """Operators valid on this field."""
        return OPS_BY_TYPE[self.value_type]

    @property
    def groupable(self) -> bool:
        """True when the field has many values per entity, so predicate groups apply to it."""
        return self.source in ("item", "segment")

    @property
    def value_aliases(self) -> dict[str, str]:
        """Coded fields: short names a spec may use for codes, e.g. ``LBBB -> '63467002 SCT'``."""
        return dict(self.aliases)

    def available_for(self, kind: str, template: str | None) -> bool:
        """True when an object condition of ``kind`` (and SR ``template``) can use this field."""
        if kind not in self.kinds:
            return False
        return self.source != "item" or template in self.templates


def _f(name: str, vtype: ValueType, source: Source, kinds: tuple[str, ...], desc: str,
       unit: str | None = None, aliases: dict[str, str] | None = None) -> FieldInfo:
    return FieldInfo(name, vtype, source, kinds, (), unit, desc, tuple((aliases or {}).items()))


_SEG_ALIASES = {
    "left_ventricle": code_key(codes.LEFT_VENTRICLE.value, codes.LEFT_VENTRICLE.scheme_designator),
    "LV": code_key(codes.LEFT_VENTRICLE.value, codes.LEFT_VENTRICLE.scheme_designator),
    "right_ventricle": code_key(codes.RIGHT_VENTRICLE.value, codes.RIGHT_VENTRICLE.scheme_designator),
    "RV": code_key(codes.RIGHT_VENTRICLE.value, codes.RIGHT_VENTRICLE.scheme_designator),
    "membranous_septum": code_key(codes.MEMBRANOUS_SEPTUM.value, codes.MEMBRANOUS_SEPTUM.scheme_designator),
    "calcification": code_key(codes.CALCIFIED.value, codes.CALCIFIED.scheme_designator),
}

# Fields that do not depend on template configs. Names here are reserved: configs may not reuse them.
BUILTIN_FIELDS: tuple[FieldInfo, ...] = (
    _f("date", "date", "entity", ALL_KINDS, "date of the entity: acquisition, series, study or content date"),
    _f("modality", "text", "entity", ALL_KINDS, "DICOM Modality of the entity"),
    _f("sop_class_uid", "text", "entity", ALL_KINDS, "SOP Class UID of the entity's instances"),
    _f("n_instances", "numeric", "entity", ALL_KINDS, "number of instances (slices) of the entity", "{count}"),
    _f("series_description", "text", "attribute", ALL_KINDS, "Series Description"),
    _f("study_description", "text", "attribute", ALL_KINDS, "Study Description"),
    _f("manufacturer", "text", "attribute", ALL_KINDS, "Manufacturer of the equipment"),
    _f("manufacturer_model", "text", "attribute", ALL_KINDS, "Manufacturer's Model Name"),
    _f("body_part", "text", "attribute", IMAGE_KINDS, "Body Part Examined"),
    _f("slice_thickness", "numeric", "attribute", ("CT", "MR"), "Slice Thickness", "mm"),
    _f("kvp", "numeric", "attribute", ("CT", "CR", "DX"), "peak kilovoltage (KVP)", "kV"),
    _f("pixel_spacing", "numeric", "attribute", IMAGE_KINDS, "in-plane pixel spacing (row spacing)", "mm"),
    _f("rows", "numeric", "attribute", IMAGE_KINDS, "image rows", "{count}"),
    _f("columns", "numeric", "attribute", IMAGE_KINDS, "image columns", "{count}"),
    _f("convolution_kernel", "text", "attribute", ("CT",), "reconstruction kernel"),
    _f("contrast_agent", "text", "attribute", ("CT", "MR"), "Contrast/Bolus Agent"),
    _f("sampling_frequency", "numeric", "attribute", ("ECG",), "waveform sampling frequency", "Hz"),
    _f("lead_count", "numeric", "attribute", ("ECG",), "channels in the first multiplex group", "{count}"),
    _f("duration_s", "numeric", "attribute", ("ECG",), "waveform duration", "s"),
    _f("lead", "text", "attribute", ("ECG",), "lead (channel) labels, one value per channel"),
    _f("segment_count", "numeric", "attribute", ("SEG",), "number of segments in the SEG", "{count}"),
    _f("segmentation_type", "text", "attribute", ("SEG",), "BINARY, FRACTIONAL or LABELMAP"),
    _f("completion_flag", "text", "attribute", ("SR",), "SR Completion Flag (PARTIAL / COMPLETE)"),
    _f("verification_flag", "text", "attribute", ("SR",), "SR Verification Flag"),
    _f("segment_number", "numeric", "segment", ("SEG",), "segment number (an identifier: no unit)"),
    _f("segment_label", "text", "segment", ("SEG",), "segment label as written by the creator"),
    _f("segment_category", "coded", "segment", ("SEG",), "segmented property category"),
    _f("segment_type", "coded", "segment", ("SEG",), "segmented property type (what was segmented)",
       aliases=_SEG_ALIASES),
    _f("algorithm_type", "text", "segment", ("SEG",), "creator type: MANUAL, SEMIAUTOMATIC or AUTOMATIC"),
    _f("algorithm_name", "text", "segment", ("SEG",), "segmentation algorithm name"),
    _f("anatomic_region", "coded", "segment", ("SEG",), "anatomic region of the segment"),
)
# One list of identifying names for the whole project (the spec's privacy rules own it): a template
# config may not define a field of that name, and a spec naming one gets "identifies patients".
IDENTIFYING_NAMES = IDENTIFYING_FIELDS


def store_catalog(store: str | Path) -> dict[str, FieldInfo]:
    """The one field catalog of a store: built-in, package and environment template configs, and the
    store's own (``STORE/templates``), as its index extracts them. Every entry point that reads a spec
    for a store (``cohort query`` and ``export``, the dashboard, the site's answer to a coordinator, the
    training export) validates with this catalog."""
    return field_catalog(store_template_dirs(store))


def store_template_dirs(store: str | Path) -> list[Path]:
    """The store's own template config folder (``STORE/templates``) when it has one: what its index adds
    to the built-in, package and environment configs."""
    own = Path(store) / STORE_TEMPLATE_DIR
    return [own] if own.is_dir() else []


def field_catalog(extra_dirs: Iterable[str | Path] = ()) -> dict[str, FieldInfo]:
    """Every field a spec may name, keyed by field name (template configs from ``extra_dirs`` too)."""
    catalog = {f.name: f for f in BUILTIN_FIELDS}
    for key, template in load_templates(extra_dirs).items():
        for name, tf in template.fields.items():
            where = ", ".join(template.sources)
            if name in IDENTIFYING_NAMES:
                raise ConfigError(f"{where}: field name {name!r} is reserved for identifying data")
            have = catalog.get(name)
            if have is None:
                catalog[name] = FieldInfo(name, tf.value_type, "item", ("SR",), (key,), tf.unit,
                                          tf.description, tuple(tf.values.items()))
            elif have.source != "item":
                raise ConfigError(f"{where}: field {name!r} of template {key!r} reuses a built-in field "
                                  "name; choose another name (e.g. prefix it with the template key)")
            elif (have.value_type, have.unit) != (tf.value_type, tf.unit):
                raise ConfigError(
                    f"{where}: field {name!r} is {tf.value_type} [{tf.unit}] in template {key!r} but "
                    f"{have.value_type} [{have.unit}] in {have.templates}; one name needs one type and unit"
                )
            else:
                aliases = dict(have.aliases) | tf.values
                catalog[name] = replace(have, templates=(*have.templates, key), aliases=tuple(aliases.items()))
    return catalog


def template_keys(extra_dirs: Iterable[str | Path] = ()) -> tuple[str, ...]:
    """Keys of every SR template a spec may name in ``template:``."""
    return tuple(sorted(load_templates(extra_dirs)))


def fields_for(kind: str, template: str | None = None,
               catalog: dict[str, FieldInfo] | None = None) -> dict[str, FieldInfo]:
    """Fields an object condition of ``kind`` (and SR ``template``) may use."""
    catalog = catalog if catalog is not None else field_catalog()
    return {n: f for n, f in catalog.items() if f.available_for(kind, template)}


def resolve_field(name: str, kind: str, template: str | None,
                  catalog: dict[str, FieldInfo] | None = None, *, where: str = "") -> FieldInfo:
    """The field ``name`` for an object of ``kind``/``template``; SpecError with suggestions otherwise."""
    catalog = catalog if catalog is not None else field_catalog()
    prefix = f"{where}: " if where else ""
    target = f"{kind} ({template})" if template else kind
    valid = fields_for(kind, template, catalog)
    if name in valid:
        return valid[name]
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"valid fields: {', '.join(sorted(valid))}"
    if name in IDENTIFYING_NAMES:
        raise SpecError(f"{prefix}field {name!r} identifies patients and cannot be queried; {hint}")
    if name in catalog:
        other = catalog[name]
        owner = f"SR templates {', '.join(other.templates)}" if other.source == "item" else \
            f"kinds {', '.join(other.kinds)}"
        raise SpecError(f"{prefix}field {name!r} is not indexed for {target}, only for {owner}; {hint}")
    raise SpecError(f"{prefix}unknown field {name!r} for {target}; {hint}")
