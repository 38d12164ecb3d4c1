"""Result types of a cohort query: counts per subset and label, and distributions.

These cross the site boundary (after the disclosure policy) and are read by the coordinator, so they
are plain typed records with a stable JSON form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any, Literal

# Subsets every answer contains, whatever the spec names.
STANDARD_SUBSETS = ("CT", "ECG", "CT+ECG")
ALL_SUBSET = "cohort"  # the whole cohort, the default subset of distributions
LABEL_KEYS = ("positive", "negative", "unknown")
# One cell of an answer: ("cohort",), ("subset", name), ("label", subset, label key) or
# ("bin", distribution index, bin label). The index lists the patients behind each (for the site's
# release gate); the release rules and the differencing ledger name cells this way.
CellKey = tuple[str | int, ...]


@dataclass
class SubsetCounts:
    """Distinct patients in one subset, split by label."""

    patients: int
    positive: int = 0
    negative: int = 0
    unknown: int = 0


@dataclass
class Bin:
    """One bar of a distribution: a numeric range [low, high) or a category."""

    label: str
    count: int
    low: float | None = None
    high: float | None = None


@dataclass
class Distribution:
    """Counts of distinct patients per bin of one field, within one subset."""

    field: str
    kind: Literal["histogram", "categories"]
    subset: str
    bins: list[Bin] = dc_field(default_factory=list)
    unit: str = ""


@dataclass
class CohortCounts:
    """What a cohort query answers: patients matching the spec, per subset and label, distributions."""

    patients: int
    subsets: dict[str, SubsetCounts] = dc_field(default_factory=dict)
    distributions: list[Distribution] = dc_field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "subsets": {k: v.patients for k, v in self.subsets.items()},
            "labels": {k: {lk: getattr(v, lk) for lk in LABEL_KEYS} for k, v in self.subsets.items()},
            "distributions": [asdict(d) for d in self.distributions],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CohortCounts:
        subsets = {
            name: SubsetCounts(patients=int(n), **{k: int(v) for k, v in data["labels"][name].items()})
            for name, n in data["subsets"].items()
        }
        dists = [
            Distribution(field=d["field"], kind=d["kind"], subset=d["subset"], unit=d.get("unit", ""),
                         bins=[Bin(**b) for b in d["bins"]])
            for d in data.get("distributions", [])
        ]
        return cls(patients=int(data["patients"]), subsets=subsets, distributions=dists)
