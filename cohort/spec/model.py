"""The cohort spec's internal form. YAML specs and text queries both compile to ``CohortSpec``.

Semantics (the contract every backend and the oracle implement):

* An ``ObjectCondition`` selects *entities* of one kind: a series for image kinds (CT, MR, CR, DX),
  an instance for ECG waveforms, SR documents and SEGs. All its predicates must hold on the *same*
  entity (same-instance semantics). A predicate on a multi-valued field (SR items, SEG segments)
  holds when some value of that entity satisfies it. Predicates in one ``group`` must be satisfied
  by the same item inside the entity (the same SEG segment, the same SR content container).
* ``within`` restricts an object condition in time relative to another named object's event date:
  ``min_days <= date(this) - date(other) <= max_days``, both on one patient.
* ``cohort`` is a patient-level boolean expression over object names (AND / OR / NOT).
* ``label`` reads a coded or boolean field of a named object; ``subsets`` are patient-level
  expressions evaluated within the cohort; ``CT``, ``ECG``, ``CT+ECG`` always exist.

Details (the oracle in ``tests/oracle.py`` implements exactly these):

* Values. Numbers: a predicate's ``unit`` is converted to the field's unit; without a unit the value
  is in the field's unit. Coded: a value matches a stored code when it is one of the field's aliases
  for that code (``LBBB``), the code as ``"VALUE SCHEME"``, the code value, or the code meaning
  (case-insensitive); ``contains`` looks in the code meaning. Text: ``=``/``!=``/``in`` compare
  exactly; ``contains`` is a case-insensitive substring test. Booleans: ``true``/``false``. Dates:
  ISO ``YYYY-MM-DD`` strings, compared as dates. ``!=`` holds when some value differs (an entity
  without a value for the field satisfies no predicate on it). A field with one value per entity
  (a DICOM attribute) inside a group is checked on the entity, whichever item the group picks.
* ``exists``: without a value, or with ``true``, the entity has some value of the field; with
  ``false``, the entity has *no* value of the field at all. ``exists: false`` is about the whole
  entity, so inside a group it is checked on the entity too (not on the group's item). To ask for
  patients without any such entity, use ``not`` at the patient level instead.
* Entity date: acquisition, content, series, then study date (the first one present).
* A ``Within`` compares this entity's date (or a value of ``own_date_field``) with the date (or a
  ``date_field`` value) of a *matched* entity of ``of`` (one satisfying that object's whole
  condition, its own window included). ``None`` bounds are open; an entity without a date never
  satisfies a window. Windows must not form cycles.
* A patient matches an object name when they have at least one matched entity of it.
* Label: among the patient's matched entities of ``label.object``, positive when some value of the
  field is in ``positive``, else negative when some value is in ``negative``, else unknown (also when
  the patient has no matched entity of that object).
* Standard subsets: ``CT`` = cohort patients with a CT series in the store, ``ECG`` = with an ECG
  waveform, ``CT+ECG`` = both; a spec's subset of the same name replaces the standard one.
* ``label.allow_post_index`` changes no count: it only lets ``cohort export`` use model inputs dated
  after the label's index event (docs/export.md has the export rules).
* Counts without a label put every patient of a subset under ``unknown``.
* Distributions count distinct patients of the subset (default: the whole cohort, reported as subset
  ``"cohort"``) over the values of the field on their matched entities of ``object``; a patient
  counts once per bin or category they have a value in. Histograms: bins ``[edges[i], edges[i+1])``
  in ``unit`` (default the field's unit), labelled ``f"{low:g}-{high:g}"``, every bin reported, values
  outside the edges not counted. ``Distribution.field`` is the request's field. Categories: one bin
  per value present, sorted by label; the label is a coded value's first alias in the catalog (else
  its code meaning), ``true``/``false`` for booleans, the text for text fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["CT", "MR", "CR", "DX", "ECG", "SR", "SEG"]
Op = Literal["=", "!=", "<", "<=", ">", ">=", "in", "contains", "exists"]
Scalar = float | int | str | bool


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Predicate(_Spec):
    """``field op value``; numbers may carry a unit that is converted to the field's unit."""

    field: str
    op: Op
    value: Scalar | list[Scalar] | None = None  # ``exists``: none or true (has a value), false (has none)
    unit: str | None = None
    group: str | None = None  # predicates sharing a group hold on the same item of the entity


class Within(_Spec):
    """Time window of this object's date relative to another named object's date, in days."""

    of: str
    min_days: int | None = None
    max_days: int | None = None
    date_field: str | None = None  # field of ``of`` used as its event date; default its object date
    own_date_field: str | None = None  # field of this object used as its date; default object date


class ObjectCondition(_Spec):
    """Entities of one kind (optionally one SR template) on which all predicates hold together."""

    kind: Kind
    template: str | None = None  # SR template key, e.g. "ecg_report", "registry"; required for SR
    where: list[Predicate] = []
    within: Within | None = None


class And(_Spec):
    all: list[Expr]


class Or(_Spec):
    any: list[Expr]


class Not(_Spec):
    not_: Expr = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Expr = Annotated[str | And | Or | Not, Field(union_mode="left_to_right")]


class Label(_Spec):
    """Positive / negative values of a field of a named object; anything else is unknown."""

    object: str
    field: str
    positive: list[Scalar]
    negative: list[Scalar]
    # Export may use model inputs dated after the label's index event (refused by default: an input
    # from after the event can carry the label, e.g. a paced ECG after TAVI). See docs/export.md.
    allow_post_index: bool = False


class DistributionRequest(_Spec):
    """Counts of distinct patients per bin (numeric) or category (coded/text) of one field."""

    object: str
    field: str
    subset: str | None = None  # default: the whole cohort
    bins: list[float] | None = None  # numeric bin edges; None for categories
    unit: str | None = None


class CohortSpec(_Spec):
    """A whole cohort question: named object conditions, the cohort, label, subsets, distributions."""

    name: str = "cohort"
    description: str = ""
    objects: dict[str, ObjectCondition]
    cohort: Expr
    label: Label | None = None
    subsets: dict[str, Expr] = {}
    distributions: list[DistributionRequest] = []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


And.model_rebuild()
Or.model_rebuild()
Not.model_rebuild()
CohortSpec.model_rebuild()
