"""Which spec requests a site must refuse: identifying fields and row-level data.

The spec language can express such requests on purpose, so that a site sees them, refuses them and
logs the refusal, instead of the coordinator finding a workaround the language did not foresee.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cohort.spec.errors import SpecPathError
from cohort.spec.model import CohortSpec

# Fields that identify a patient or a single object. Never counted by category, never used as a
# label, never filtered on: "patient_id = X" would tell whether one person is in the cohort.
IDENTIFYING_FIELDS: frozenset[str] = frozenset({
    "patient_id", "patient_name", "patient_birth_name", "patient_mother_birth_name", "other_patient_ids",
    "issuer_of_patient_id", "birth_date", "patient_birth_date", "patient_birth_time", "patient_address",
    "patient_telephone_numbers", "medical_record_locator", "accession_number", "case_id", "pacs_id",
    "study_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "frame_of_reference_uid",
    "referring_physician_name", "performing_physician_name", "operators_name", "physicians_of_record",
    "device_serial_number", "study_uid", "series_uid", "sop_uid", "path", "entity_id",
})


def normal_field_name(name: str) -> str:
    """A field name without case and separators, so that PatientID, patient-id and patient_id agree."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_IDENTIFYING_NORMAL = frozenset(normal_field_name(f) for f in IDENTIFYING_FIELDS)


def is_identifying(name: str) -> bool:
    """True for an identifying field in any spelling (``PatientID`` is ``patient_id``)."""
    return normal_field_name(name) in _IDENTIFYING_NORMAL


# Value types whose per-category counts would list individual rows (free text, exact dates).
ROW_LEVEL_VALUE_TYPES: frozenset[str] = frozenset({"text", "date", "datetime", "uid"})


class IdentifyingRequestError(SpecPathError):
    """The spec asks for identifying fields or row-level data; a site refuses it."""


def _identifying(path: str, field: str, use: str) -> IdentifyingRequestError:
    listed = ", ".join(sorted(IDENTIFYING_FIELDS))
    return IdentifyingRequestError(
        path, f"field {field!r} is an identifying field (it identifies a patient or an object) and cannot be "
              f"{use}; identifying fields are never counted or released (cohort.spec.IDENTIFYING_FIELDS: "
              f"{listed})")


def privacy_violations(spec: CohortSpec) -> list[IdentifyingRequestError]:
    """Every place where the spec uses an identifying field (empty when the spec is acceptable)."""
    found: list[IdentifyingRequestError] = []
    for name, obj in spec.objects.items():
        for i, pred in enumerate(obj.where):
            if is_identifying(pred.field):
                found.append(_identifying(f"objects.{name}.where[{i}].field", pred.field, "filtered on"))
        if obj.within is not None:
            for attr in ("date_field", "own_date_field"):
                value = getattr(obj.within, attr)
                if value is not None and is_identifying(value):
                    found.append(_identifying(f"objects.{name}.within.{attr}", value, "used as a date"))
    if spec.label is not None and is_identifying(spec.label.field):
        found.append(_identifying("label.field", spec.label.field, "used as a label"))
    for i, dist in enumerate(spec.distributions):
        if is_identifying(dist.field):
            found.append(_identifying(f"distributions[{i}].field", dist.field, "counted by value"))
    return found


def check_privacy(spec: CohortSpec) -> None:
    """Raise IdentifyingRequestError for the first identifying request in the spec."""
    found = privacy_violations(spec)
    if found:
        raise found[0]


# The site-policy key that lets a coordinator's query compare free text with chosen terms.
FREE_TEXT_POLICY_KEY = "disclosure.free_text_terms"


class FreeTextProbeError(IdentifyingRequestError):
    """The spec compares free text with a value the site has not allowed (it could probe for people)."""


def free_text_fields(catalog: Mapping[str, Any]) -> frozenset[str]:
    """Free-text fields: text content items of SR documents (reports, letters) in ``catalog``, the store's
    catalog (``cohort.index.catalog.store_catalog``), so a text field of the store's own template configs
    is free text too."""
    return frozenset(name for name, f in catalog.items()
                     if getattr(f, "value_type", None) == "text" and getattr(f, "source", None) == "item")


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def free_text_probes(spec: CohortSpec, allowed_terms: list[str],
                     text_fields: frozenset[str]) -> list[FreeTextProbeError]:
    """Every comparison of a free-text field with a value outside ``allowed_terms`` (``exists`` is fine).

    The value itself is never repeated in the message: it may be a name.
    """
    fields = text_fields
    allowed = {t.casefold() for t in allowed_terms}
    shown = f"{len(allowed)} terms" if allowed else "no terms"
    found: list[FreeTextProbeError] = []

    def refuse(path: str, field: str, how: str) -> FreeTextProbeError:
        return FreeTextProbeError(path, f"free-text field {field!r} {how} a value this site has not allowed; "
                                        f"a coordinator may compare free text only with the terms in the site "
                                        f"policy key {FREE_TEXT_POLICY_KEY} ({shown} now), so free text cannot "
                                        "be used to probe for people")

    for name, obj in spec.objects.items():
        for i, pred in enumerate(obj.where):
            if pred.field in fields and pred.op != "exists" and any(
                    str(v).casefold() not in allowed for v in _values(pred.value)):
                found.append(refuse(f"objects.{name}.where[{i}]", pred.field, f"is compared ({pred.op!r}) with"))
    if spec.label is not None and spec.label.field in fields and any(
            str(v).casefold() not in allowed for v in [*spec.label.positive, *spec.label.negative]):
        found.append(refuse("label", spec.label.field, "is used as a label with"))
    return found


def check_free_text(spec: CohortSpec, allowed_terms: list[str], text_fields: frozenset[str]) -> None:
    """Raise FreeTextProbeError for the first free-text comparison the site policy does not allow."""
    found = free_text_probes(spec, allowed_terms, text_fields)
    if found:
        raise found[0]
