"""Consortium totals: the count vector sites add up under secure aggregation, and what of the sum is released.

Flower-free: the site (which writes its exact counts into the vector) and the coordinator (which only
ever sees the element-wise sum) both import it.

* The coordinator fixes the **layout** from what the sites already released in the plain answer:
  subset names, and per distribution its bins (the union of released categories for category
  distributions). A site writes its exact counts into that layout; a distribution block the site's
  policy would not release (field outside its allowlist, more bins than its cap, a category of its own
  that the layout lacks) is left at zero with its *contributes* cell at 0, so the sum of that cell says
  how many sites a block's total covers.
* The **release rule** for the sum: at least ``min_sites`` contributors, every released cell at least
  the strictest minimum cell of the contributors, the same secondary and differencing suppression as a
  site's own release, and a cross-check against the per-site releases: where all but one contributor
  released a cell exactly, total minus their values would be the last site's cell, so such a total is
  suppressed (generally: the part of the total not covered by exactly released cells must come from at
  least ``min_sites`` sites and reach the minimum cell). A site's label cell counts as known also when
  it is derivable from the site's released subset total (the only suppressed cell besides
  ``unknown``, which may be empty by construction); the same holds for the total's own cells. One exception to secondary suppression: an
  empty ``unknown`` label cell alone below the minimum does not hide the positives (see
  ``_label_secondary_suppression``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Any

from cohort.errors import DisclosureError
from cohort.release.disclosure import (
    SUPPRESSED,
    ReleasedCounts,
    ReleasedDistribution,
    differencing_suppression,
    hide_sum,
    secondary_suppression,
)
from cohort.results import ALL_SUBSET, LABEL_KEYS, Bin, CohortCounts, Distribution, SubsetCounts
from cohort.siteconfig import DisclosurePolicy

STATUS_RELEASED = "released"
STATUS_WITHHELD = "refused"


@dataclass(frozen=True)
class BinSlot:
    """One bin of a distribution block: its label and, for histograms, its range."""

    label: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class DistributionLayout:
    """One distribution block of the vector: a *contributes* cell, then one cell per bin."""

    field: str
    subset: str
    kind: str
    bins: tuple[BinSlot, ...]


@dataclass(frozen=True)
class CountLayout:
    """The cells of a count vector, in order: sites, patients, per subset (count + labels), distributions.

    ``patients=False``: the cohort's patient count is not summed (its cell stays 0 at every site)."""

    subsets: tuple[str, ...]
    distributions: tuple[DistributionLayout, ...] = ()
    patients: bool = True

    @property
    def size(self) -> int:
        return 2 + len(self.subsets) * (1 + len(LABEL_KEYS)) + sum(1 + len(d.bins) for d in self.distributions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CountLayout:
        data = json.loads(text)
        dists = tuple(DistributionLayout(d["field"], d["subset"], d["kind"], tuple(BinSlot(**b) for b in d["bins"]))
                      for d in data.get("distributions", []))
        return cls(tuple(data["subsets"]), dists, bool(data.get("patients", True)))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_released(cls, answers: Sequence[ReleasedCounts], only: Sequence[str] | None = None) -> CountLayout:
        """The layout covering what the sites released: subsets present everywhere, every released bin.

        ``only``: just these subsets, no distributions and no cohort count (the coordinator's agreed
        subset: fewer noised cells, so less noise on each)."""
        if not answers:
            raise DisclosureError("no released answer to build a count layout from")
        subsets = [s for s in answers[0].subsets if all(s in a.subsets for a in answers)]
        if only is not None:
            return cls(tuple(s for s in subsets if s in only), (), patients=False)
        dists = []
        for i, first in enumerate(answers[0].distributions):
            same = [a.distributions[i] for a in answers if i < len(a.distributions)
                    and (a.distributions[i].field, a.distributions[i].subset) == (first.field, first.subset)]
            slots: dict[str, BinSlot] = {}
            for d in same:
                for b in d.bins:
                    slots.setdefault(b["label"], BinSlot(b["label"], b.get("low"), b.get("high")))
            if first.kind == "categories":
                ordered = tuple(slots[k] for k in sorted(slots))
            else:
                ordered = tuple(slots.values())
            dists.append(DistributionLayout(first.field, first.subset, first.kind, ordered))
        return cls(tuple(subsets), tuple(dists))


def _dist_contributes(d: Distribution, slot: DistributionLayout, policy: DisclosurePolicy) -> bool:
    if (d.field, d.subset) != (slot.field, slot.subset):
        return False
    if policy.allowed_fields is not None and d.field not in policy.allowed_fields:
        return False
    if len(slot.bins) > policy.histogram_bin_cap:
        return False
    known = {b.label for b in slot.bins}
    return all(b.label in known or b.count == 0 for b in d.bins)


def site_vector(counts: CohortCounts, layout: CountLayout, policy: DisclosurePolicy) -> list[int]:
    """This site's exact counts in ``layout`` order (the vector it masks and sends; never sent in clear)."""
    missing = [s for s in layout.subsets if s not in counts.subsets]
    if missing:
        raise DisclosureError(f"the coordinator's count layout names subsets {missing} that this site's "
                              f"answer does not have (it has {sorted(counts.subsets)})")
    vec = [1, counts.patients if layout.patients else 0]
    for name in layout.subsets:
        sc = counts.subsets[name]
        vec += [sc.patients, *(getattr(sc, k) for k in LABEL_KEYS)]
    for i, slot in enumerate(layout.distributions):
        d = counts.distributions[i] if i < len(counts.distributions) else None
        if d is None or not _dist_contributes(d, slot, policy):
            vec += [0] * (1 + len(slot.bins))
            continue
        by_label = {b.label: b.count for b in d.bins}
        vec += [1, *(by_label.get(b.label, 0) for b in slot.bins)]
    assert len(vec) == layout.size
    return vec


# One cell of a count vector, named by what it counts: ("sites",), ("patients",), ("subset", name),
# ("label", subset, key), ("contributes", distribution index), ("bin", distribution index, bin label).
VectorCell = tuple[str | int, ...]
STRUCTURAL = ("sites", "contributes", "omitted")  # cells every party knows (1 per site; whether a block
# contributes; 0 for a count the layout leaves out)


def layout_cells(layout: CountLayout) -> list[VectorCell]:
    """What each cell of ``layout`` counts, in vector order."""
    cells: list[VectorCell] = [("sites",), ("patients",) if layout.patients else ("omitted", "patients")]
    for name in layout.subsets:
        cells += [("subset", name), *(("label", name, k) for k in LABEL_KEYS)]
    for i, slot in enumerate(layout.distributions):
        cells += [("contributes", i), *(("bin", i, b.label) for b in slot.bins)]
    return cells


def known_cells(released: ReleasedCounts | None, layout: CountLayout) -> list[bool]:
    """Per cell of ``layout``: does the coordinator already know this site's exact value from its plain
    answer ``released`` (released exactly, or derivable from exactly released cells)? ``None`` (no plain
    answer) knows nothing but the structural cells. A DP, noisy or rounded answer is never exact."""
    out = []
    for cell in layout_cells(layout):
        kind = cell[0]
        if kind in STRUCTURAL:
            out.append(True)
        elif released is None:
            out.append(False)
        elif kind == "patients":
            out.append(_known(released, released.patients) is not None)
        elif kind == "subset":
            out.append(_known(released, released.subsets.get(str(cell[1]))) is not None)
        elif kind == "label":
            out.append(_known_label(released, str(cell[1]), str(cell[2])) is not None)
        else:
            out.append(_known(released, _dist_value(released, int(cell[1]), str(cell[2]))) is not None)
    return out


def noise_sensitivity(layout: CountLayout, noisy: Sequence[bool]) -> int:
    """L1 sensitivity of the noisy cells to adding or removing one patient: the cohort count, each
    subset's count, one label cell per subset, and (conservatively: a patient may have several values)
    every noisy bin of a distribution."""
    groups: set[tuple[str | int, ...]] = set()
    bins = 0
    for cell, flag in zip(layout_cells(layout), noisy, strict=True):
        if not flag:
            continue
        if cell[0] == "bin":
            bins += 1
        elif cell[0] == "label":
            groups.add(("labels", cell[1]))
        else:
            groups.add(cell)
    return len(groups) + bins


@dataclass
class SummedCounts:
    """A decoded sum of count vectors: how many sites, the counts, contributors per distribution."""

    sites: int
    counts: CohortCounts
    distribution_sites: list[int]
    patients_summed: bool = True  # False: the layout left the cohort count out


def decode(total: Sequence[int], layout: CountLayout) -> SummedCounts:
    """Read a summed vector back into counts (the inverse of :func:`site_vector`, summed)."""
    if len(total) != layout.size:
        raise DisclosureError(f"summed vector has {len(total)} cells, the layout {layout.size}")
    it = iter(int(v) for v in total)
    sites, patients = next(it), next(it)
    subsets = {}
    for name in layout.subsets:
        n, *labels = (next(it) for _ in range(1 + len(LABEL_KEYS)))
        subsets[name] = SubsetCounts(n, *labels)
    dists, dist_sites = [], []
    for slot in layout.distributions:
        dist_sites.append(next(it))
        bins = [Bin(b.label, next(it), b.low, b.high) for b in slot.bins]
        dists.append(Distribution(field=slot.field, kind=slot.kind, subset=slot.subset, bins=bins))  # type: ignore[arg-type]
    return SummedCounts(sites, CohortCounts(patients, subsets, dists), dist_sites, layout.patients)


@dataclass
class ConsortiumTotals:
    """What the coordinator learns from one secure aggregation, after the release rule."""

    status: str  # released | refused
    reason: str | None = None
    contributors: list[str] = dc_field(default_factory=list)  # site ids whose counts are in the sum
    dropped: list[str] = dc_field(default_factory=list)  # joined, then dropped out mid-protocol
    declined: dict[str, str] = dc_field(default_factory=dict)  # site id -> why it did not join
    min_cell_size: int = 0
    min_sites: int = 0
    patients: int | None = None
    subsets: dict[str, int | None] = dc_field(default_factory=dict)
    labels: dict[str, dict[str, int | None]] = dc_field(default_factory=dict)
    distributions: list[ReleasedDistribution] = dc_field(default_factory=list)
    notes: list[str] = dc_field(default_factory=list)
    seconds: float = 0.0
    # The noise on the cells not every contributor released exactly: mechanism, epsilon, sensitivity,
    # the total's standard deviation and the noisy cells (None: no cell needed noise).
    noise: dict[str, Any] | None = None

    @property
    def released(self) -> bool:
        return self.status == STATUS_RELEASED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsortiumTotals:
        dists = [ReleasedDistribution(**d) for d in data.get("distributions", [])]
        return cls(**{**data, "distributions": dists})


def _exact(rel: ReleasedCounts, value: int | None) -> bool:
    """True when a site's released value is its true count (no suppression, rounding, noise or DP)."""
    return value is not None and rel.rounding == 1 and not rel.noise and rel.dp is None


class _CrossCheck:
    """The release rule of one total cell, against what the coordinator knows of the sites' cells."""

    def __init__(self, min_cell: int, min_sites: int) -> None:
        self.min_cell = min_cell
        self.min_sites = min_sites

    def cell(self, total: int, known: Sequence[int | None], sites: int) -> int | None:
        """``known``: per contributor, its value of this cell when the coordinator knows it, else None."""
        if total < self.min_cell:
            return SUPPRESSED
        exact = [v for v in known if v is not None]
        hidden_sites = sites - len(exact)
        remainder = total - sum(exact)
        if hidden_sites == 0:
            return total
        if hidden_sites >= self.min_sites and remainder >= self.min_cell:
            return total
        return SUPPRESSED


def _known(rel: ReleasedCounts, value: int | None) -> int | None:
    return value if _exact(rel, value) else None


def _known_label(rel: ReleasedCounts, subset: str, key: str) -> int | None:
    """A site's label cell as the coordinator may know it: released exactly, or derived from the
    subset total when it is the only suppressed cell besides ``unknown`` (which is often empty by
    construction, e.g. in a "labelled" subset); then the derived value is exact or an upper bound."""
    labels = rel.labels.get(subset, {})
    value = labels.get(key)
    if _exact(rel, value):
        return value
    total = rel.subsets.get(subset)
    hidden = [k for k in LABEL_KEYS if labels.get(k) is None]
    if key == "unknown" or not _exact(rel, total) or [k for k in hidden if k != "unknown"] != [key]:
        return None
    released = [labels[k] for k in LABEL_KEYS if k not in hidden]
    if not all(_exact(rel, v) for v in released):
        return None
    return int(total) - sum(int(v) for v in released if v is not None)  # type: ignore[arg-type]


def _derivable_labels(cells: list[int | None], raw: list[int], known: dict[str, list[int | None]],
                      check: _CrossCheck, sites: int) -> list[int | None]:
    """Hide more label cells of a total while a hidden one is derivable (the only one hidden besides
    ``unknown``, under a released total) and would not pass the cross-check itself."""
    out = list(cells)
    while True:
        hidden = [k for k, v in zip(LABEL_KEYS, out, strict=True) if v is None]
        rest = [k for k in hidden if k != "unknown"]
        if len(rest) != 1:
            return out
        k = rest[0]
        if check.cell(raw[LABEL_KEYS.index(k)], known[k], sites) is not SUPPRESSED:
            return out
        shown = [i for i, v in enumerate(out) if v is not None]
        if not shown:
            return out
        out[min(shown, key=lambda i: raw[i])] = SUPPRESSED


def _dist_value(rel: ReleasedCounts, i: int, label: str) -> int | None:
    if i >= len(rel.distributions) or rel.distributions[i].refused:
        return None
    return next((b["count"] for b in rel.distributions[i].bins if b["label"] == label), None)


def _label_secondary_suppression(cells: list[int | None], raw: list[int], min_cell: int) -> list[int | None]:
    """Secondary suppression of a subset's label cells, except for an empty ``unknown`` cell alone.

    Subtraction then tells the coordinator that no patient of the subset lacks a label (true by
    construction for a "labelled" subset), so every site's ``unknown`` is 0 too. That is safe because
    each site's own suppressed label cells sum to at least its minimum cell (``secondary_suppression``):
    knowing one of them is 0 leaves a sum of at least the minimum cell, never a small count. Hiding the
    next smallest cell instead would hide the consortium's positives, the number the coordinator needs.
    """
    unknown = LABEL_KEYS.index("unknown")
    if [i for i, v in enumerate(cells) if v is SUPPRESSED] == [unknown] and raw[unknown] == 0:
        return cells
    return secondary_suppression(cells, raw, min_cell)


def release_totals(summed: SummedCounts, releases: Sequence[ReleasedCounts], *, min_cell: int,
                   min_sites: int, protected: bool = False) -> ConsortiumTotals:
    """Apply the release rule to a decoded sum; ``releases`` are the contributors' own answers.

    ``protected``: the sum came from the protocol of ``fl_client.secure_counts``, where every cell is
    either public (every contributor released it exactly, so the coordinator knows the sum already) or
    carries the sites' distributed noise (differentially private against whatever else the coordinator
    knows). Then each cell is shown when it reaches the minimum cell, with no cross-check: the
    subtraction the cross-check guards against yields a known value or a noisy one. Without it (a sum
    of exact vectors) the cross-check below applies; a coordinator holding the raw sum is not bound by
    it, which is why the sites add the noise themselves.
    """
    out = ConsortiumTotals(STATUS_RELEASED, min_cell_size=min_cell, min_sites=min_sites)
    if summed.sites < min_sites:
        out.status = STATUS_WITHHELD
        out.reason = f"{summed.sites} sites contributed, fewer than min_sites={min_sites}"
        return out
    if protected:
        return _release_protected(summed, out)
    counts, check, n = summed.counts, _CrossCheck(min_cell, min_sites), summed.sites
    differenced = differencing_suppression(counts, min_cell)
    out.patients = SUPPRESSED if ALL_SUBSET in differenced else check.cell(
        counts.patients, [_known(r, r.patients) for r in releases], n)
    for name, sc in counts.subsets.items():
        total = SUPPRESSED if name in differenced else check.cell(
            sc.patients, [_known(r, r.subsets.get(name)) for r in releases], n)
        out.subsets[name] = total
        raw = [getattr(sc, k) for k in LABEL_KEYS]
        known = {k: [_known_label(r, name, k) for r in releases] for k in LABEL_KEYS}
        cells = [check.cell(getattr(sc, k), known[k], n) for k in LABEL_KEYS]
        if total is not SUPPRESSED:
            cells = _derivable_labels(_label_secondary_suppression(cells, raw, min_cell), raw, known, check, n)
        if name in differenced:
            cells = hide_sum(cells, raw)
        out.labels[name] = dict(zip(LABEL_KEYS, cells, strict=True))
    for i, (d, sites) in enumerate(zip(counts.distributions, summed.distribution_sites, strict=True)):
        rd = ReleasedDistribution(field=d.field, subset=d.subset, kind=d.kind)
        if sites < min_sites:
            rd.refused = f"{sites} sites contributed to this distribution, fewer than min_sites={min_sites}"
            out.distributions.append(rd)
            continue
        raw = [b.count for b in d.bins]
        cells = [check.cell(b.count, [_known(r, _dist_value(r, i, b.label)) for r in releases], sites)
                 for b in d.bins]
        total = out.subsets.get(d.subset, out.patients if d.subset == ALL_SUBSET else SUPPRESSED)
        if total is not SUPPRESSED:
            cells = secondary_suppression(cells, raw, min_cell)
        if d.subset in differenced:
            cells = hide_sum(cells, raw)
        rd.bins = [{"label": b.label, "low": b.low, "high": b.high, "count": c}
                   for b, c in zip(d.bins, cells, strict=True)]
        out.distributions.append(rd)
    return out


def _release_protected(summed: SummedCounts, out: ConsortiumTotals) -> ConsortiumTotals:
    """Every cell of a protected sum at least the minimum cell, else suppressed (post-processing)."""
    min_cell, counts = out.min_cell_size, summed.counts

    def shown(v: int) -> int | None:
        return v if v >= min_cell else SUPPRESSED

    out.patients = shown(counts.patients) if summed.patients_summed else SUPPRESSED
    for name, sc in counts.subsets.items():
        out.subsets[name] = shown(sc.patients)
        out.labels[name] = {k: shown(getattr(sc, k)) for k in LABEL_KEYS}
    for d, sites in zip(counts.distributions, summed.distribution_sites, strict=True):
        rd = ReleasedDistribution(field=d.field, subset=d.subset, kind=d.kind)
        if sites < out.min_sites:
            rd.refused = f"{sites} sites contributed to this distribution, fewer than min_sites={out.min_sites}"
        else:
            rd.bins = [{"label": b.label, "low": b.low, "high": b.high, "count": shown(b.count)} for b in d.bins]
        out.distributions.append(rd)
    return out
