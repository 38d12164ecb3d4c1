"""The harmonized tabular features every site exports, in one fixed order with units.

The order is part of the model's input contract: every site and the coordinator use this tuple.
Values come from index fields of the objects ``cohort.export.selection`` chose for the patient's
``registry``, ``ecg_report`` and ``measurements`` inputs; a missing input gives None for its features
(the model sees a missing indicator for each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cohort.export.selection import ModelInput

if TYPE_CHECKING:
    from cohort.export.selection import PatientSelection
    from cohort.index.duck import DuckIndex

Encoding = Literal["number", "sum", "equals", "flag"]


@dataclass(frozen=True)
class TabularFeature:
    """One model input: which template field it comes from and how it is encoded."""

    name: str
    unit: str  # UCUM
    template: str
    field: str
    encoding: Encoding = "number"
    code: str | None = None  # for "equals": the code key ("VALUE SCHEME") that maps to 1.0

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "source": f"{self.template}.{self.field}"}


TABULAR_FEATURES: tuple[TabularFeature, ...] = (
    TabularFeature("age", "a", "registry", "age"),
    TabularFeature("sex_male", "1", "registry", "sex", "equals", "M DCM"),
    TabularFeature("height", "cm", "registry", "height"),
    TabularFeature("weight", "kg", "registry", "weight"),
    TabularFeature("lvef", "%", "registry", "lvef"),
    TabularFeature("diabetes", "1", "registry", "diabetes", "flag"),
    TabularFeature("nyha_class_3_4", "1", "registry", "nyha_class", "equals", "420913000 SCT|422293003 SCT"),
    TabularFeature("self_expanding", "1", "registry", "prosthesis_type", "equals", "PT002 99FEDCOH"),
    TabularFeature("prosthesis_size", "mm", "registry", "prosthesis_size"),
    TabularFeature("qrs_duration", "ms", "ecg_report", "qrs_duration"),
    TabularFeature("pr_interval", "ms", "ecg_report", "pr_interval"),
    TabularFeature("heart_rate", "/min", "ecg_report", "heart_rate"),
    TabularFeature("lbbb", "1", "ecg_report", "ecg_finding", "equals", "63467002 SCT"),
    TabularFeature("rbbb", "1", "ecg_report", "ecg_finding", "equals", "59118001 SCT"),
    TabularFeature("first_degree_av_block", "1", "ecg_report", "ecg_finding", "equals", "270492004 SCT"),
    TabularFeature("atrial_fibrillation", "1", "ecg_report", "ecg_finding", "equals", "49436004 SCT"),
    # Derived from the segmentation drawn on the chosen CT (cohort.ingest.derive); None without one.
    TabularFeature("calcium_volume", "mm3", "measurements", "calcium_volume", "sum"),
    TabularFeature("membranous_septum_length", "mm", "measurements", "membranous_septum_length"),
)


def _value(index: DuckIndex, entity_id: int | None, feature: TabularFeature) -> float | None:
    if entity_id is None:
        return None
    rows = index.con.execute("SELECT num, code_value, code_scheme FROM items WHERE entity_id = ? AND field = ?",
                             [entity_id, feature.field]).fetchall()
    if feature.encoding == "number":
        nums = [r[0] for r in rows if r[0] is not None]
        return float(nums[0]) if nums else None
    if feature.encoding == "sum":  # e.g. calcium volume over every calcification segment of the SEG
        nums = [r[0] for r in rows if r[0] is not None]
        return float(sum(nums)) if nums else None
    if feature.encoding == "flag":
        nums = [r[0] for r in rows if r[0] is not None]
        return float(bool(nums[0])) if nums else None
    # "equals": 1 when the entity holds one of the codes, 0 when it holds others or none of this field
    # (an ECG report without an LBBB finding says there was none), None only without an entity.
    wanted = set((feature.code or "").split("|"))
    if feature.template == "registry" and not rows:
        return None  # a registry record with an empty cell says nothing
    return float(any(f"{code} {scheme}" in wanted for _, code, scheme in rows))


def tabular_values(index: DuckIndex, selection: PatientSelection) -> list[float | None]:
    """The patient's features in ``TABULAR_FEATURES`` order; None where the source says nothing."""
    entities = {"registry": selection.registry_entity, "ecg_report": selection.ecg_report_entity,
                "measurements": selection.entity(ModelInput.MEASUREMENTS)}
    return [_value(index, entities.get(f.template), f) for f in TABULAR_FEATURES]
