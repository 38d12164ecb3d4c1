"""The post-index guard: no model input dated after the label's index event, unless the spec says so.

An input recorded after the event the label is about can carry the label itself (an ECG after TAVI
shows the paced rhythm of the pacemaker the label asks about), so training on it measures nothing.
``check_post_index`` refuses the whole export, before anything is written, when a chosen input is
dated after its patient's index event (a later calendar day; the same day is allowed). The spec
allows it explicitly with ``label.allow_post_index: true`` (text: ``label ... allow post-index``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from cohort.errors import SpecError
from cohort.export.selection import ModelInput, PatientSelection
from cohort.spec.model import CohortSpec

SHOWN = 5  # violations listed in the error message; the rest are counted


@dataclass(frozen=True)
class PostIndexInput:
    """One chosen input dated after its patient's index event."""

    patient_id: str
    role: ModelInput
    condition: str
    uid: str
    day: date
    index_date: date

    def __str__(self) -> str:
        days = (self.day - self.index_date).days
        return (f"patient {self.patient_id}: {self.role.value} from objects.{self.condition} ({self.uid}) "
                f"dated {self.day.isoformat()}, {days} day{'s' if days != 1 else ''} after the index event "
                f"{self.index_date.isoformat()}")


class PostIndexInputError(SpecError):
    """Export refused: a model input is dated after the label's index event (label leakage)."""

    def __init__(self, spec: CohortSpec, violations: list[PostIndexInput]) -> None:
        self.violations = violations
        assert spec.label is not None
        lines = [str(v) for v in violations[:SHOWN]]
        if len(violations) > SHOWN:
            lines.append(f"... and {len(violations) - SHOWN} more")
        conditions = sorted({v.condition for v in violations})
        label = spec.label.object
        date_field = next((o.within.date_field for o in spec.objects.values()
                           if o.within is not None and o.within.of == label and o.within.date_field), None)
        yaml_window = f"{{of: {label}{f', date_field: {date_field}' if date_field else ''}, max_days: 0}}"
        text_window = f"within N days before {label}{f'.{date_field}' if date_field else ''}"
        super().__init__(
            f"export refused: {len(violations)} model input(s) are dated after the index event of the label "
            f"({label}.{spec.label.field}) and could leak the label into training:\n  " + "\n  ".join(lines)
            + f"\nFix: end the window of {', '.join(f'objects.{c}' for c in conditions)} at the index event "
            f"(YAML within: {yaml_window}; text: '{text_window}'), "
            f"or, if inputs after the event are intended, set label.allow_post_index: true "
            f"(text: 'label ... allow post-index').")


def post_index_inputs(selections: Iterable[PatientSelection]) -> list[PostIndexInput]:
    """Every chosen input dated after its patient's index event, in patient and input order."""
    out = []
    for sel in sorted(selections, key=lambda s: s.patient_id):
        if sel.index_date is None:
            continue
        for role in ModelInput:
            chosen = sel.inputs.get(role)
            if chosen is not None and chosen.day is not None and chosen.day > sel.index_date:
                out.append(PostIndexInput(sel.patient_id, role, chosen.condition, chosen.uid, chosen.day,
                                          sel.index_date))
    return out


def check_post_index(spec: CohortSpec, selections: Iterable[PatientSelection]) -> None:
    """Raise PostIndexInputError unless no input is post-index or the spec allows post-index inputs."""
    if spec.label is None or spec.label.allow_post_index:
        return
    violations = post_index_inputs(selections)
    if violations:
        raise PostIndexInputError(spec, violations)
