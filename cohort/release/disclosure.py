"""Disclosure control: what a site releases of a cohort answer, under its own policy.

Rules (the site's policy wins; a request can only make them stricter):

* Every released cell counts distinct patients. A cell below the minimum cell size is suppressed;
  zero is suppressed too, so "suppressed" never reveals whether a cell is empty.
* Secondary suppression: where cells add up to a released total (label cells of a subset, bins of a
  single-valued distribution), the suppressed cells' sum is known by subtraction, so further cells are
  suppressed until at least two are and their true sum reaches the minimum cell.
* Optional Laplace noise (scale ``noise_scale``) and rounding up to a multiple of ``rounding`` apply
  to released cells.
* Differencing: totals of nested subsets (cohort, CT, CT+ECG, ...) that differ by less than the
  minimum cell are not both released; the larger is suppressed, and its parts no longer add up.
* Histograms with more bins than ``histogram_bin_cap``, fields outside the allowlist and a second bin
  layout of a field already binned in the same query are refused per distribution; identifying fields
  refuse the whole query.
* Noise per cell comes from a source the caller gives (the release gate keys it on the cell's patient
  set), and cells the caller blocks (the differencing ledger's verdict) are suppressed like small ones.
* Differential privacy (``dp_epsilon`` set): discrete Laplace noise instead of exact counts
  (``release_dp``); the budget per coordinator is kept by ``cohort.release.ledger``.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cohort.errors import DisclosureError
from cohort.results import ALL_SUBSET, LABEL_KEYS, CellKey, CohortCounts, Distribution
from cohort.siteconfig import DisclosurePolicy
from cohort.spec.privacy import IDENTIFYING_FIELDS, is_identifying

SUPPRESSED = None  # a released cell that is suppressed


@dataclass
class ReleasedDistribution:
    """A distribution as released: bins with counts (None = suppressed), or a refusal reason."""

    field: str
    subset: str
    kind: str
    bins: list[dict[str, Any]] = dc_field(default_factory=list)
    refused: str | None = None


@dataclass
class ReleasedCounts:
    """A cohort answer after disclosure control; the only form that leaves a site."""

    min_cell_size: int
    rounding: int
    noise: bool
    patients: int | None
    subsets: dict[str, int | None]
    labels: dict[str, dict[str, int | None]]
    distributions: list[ReleasedDistribution] = dc_field(default_factory=list)
    notes: list[str] = dc_field(default_factory=list)
    dp: dict[str, Any] | None = None  # differentially private answer: mechanism, epsilon, sensitivity, scale

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleasedCounts:
        dists = [ReleasedDistribution(**d) for d in data.get("distributions", [])]
        return cls(**{**data, "distributions": dists})


def effective_min_cell(policy: DisclosurePolicy, requested: int | None) -> tuple[int, str | None]:
    """The minimum cell size in force: the site's, or a stricter (larger) requested one."""
    if requested is None or requested == policy.min_cell_size:
        return policy.min_cell_size, None
    if requested < policy.min_cell_size:
        return policy.min_cell_size, (f"requested minimum cell size {requested} is below this site's "
                                      f"{policy.min_cell_size}; the site's value applies")
    return requested, None


def check_fields(fields: list[str], policy: DisclosurePolicy) -> None:
    """Refuse the whole query when it names identifying fields."""
    bad = sorted({f for f in fields if is_identifying(f)})
    if bad:
        raise DisclosureError(f"query refused: it asks for identifying field(s) {bad}; identifying fields "
                              f"({', '.join(sorted(IDENTIFYING_FIELDS))}) are never counted or released")


# Keyed noise per cell (``cohort.release.gate``): the generator for one cell's draw.
NoiseSource = Callable[[CellKey], np.random.Generator]


class _Releaser:
    def __init__(self, policy: DisclosurePolicy, min_cell: int, noise: NoiseSource | None,
                 blocked: frozenset[CellKey]) -> None:
        self.policy = policy
        self.min_cell = min_cell
        self.noise = noise
        self.blocked = blocked

    def cell(self, key: CellKey, n: int) -> int | None:
        if n < self.min_cell or key in self.blocked:
            return SUPPRESSED
        value = float(n)
        if self.policy.noise_scale > 0:
            # Noise per cell: keyed on the cell's patient set at the site (the same set, the same draw;
            # another set, an independent one), fresh OS randomness when no source is given.
            rng = self.noise(key) if self.noise is not None else np.random.default_rng(secrets.randbits(128))
            # Noise never takes a released cell below the minimum: the coordinator reads every released
            # value as ">= min cell", and a noisy 0 would look like an unsuppressed empty cell.
            value = max(float(self.min_cell), value + float(rng.laplace(0.0, self.policy.noise_scale)))
        r = self.policy.rounding
        return int(math.ceil(value / r) * r) if r > 1 else int(round(value))

    def group(self, keys: list[CellKey], raw: list[int], total_released: bool) -> list[int | None]:
        """Release cells that sum to a released total, with secondary suppression."""
        out = [self.cell(k, n) for k, n in zip(keys, raw, strict=True)]
        return secondary_suppression(out, raw, self.min_cell) if total_released else out


def secondary_suppression(cells: list[int | None], raw: list[int], min_cell: int) -> list[int | None]:
    """Cells adding up to a released total: the suppressed ones must not be recoverable from it.

    Total minus the released cells is the sum of the suppressed cells. One suppressed cell would be
    recovered exactly; several whose true sum is below the minimum cell would tell a small (or empty)
    count all the same (positive 3 + unknown 0 = 3, and "unknown" is often empty by construction). So
    the next smallest released cell is suppressed as well until at least two cells are suppressed and
    their sum reaches the minimum cell (or every cell is suppressed).
    """
    out = list(cells)
    while True:
        hidden = [i for i, v in enumerate(out) if v is SUPPRESSED]
        others = [i for i, v in enumerate(out) if v is not SUPPRESSED]
        if not hidden or not others or (len(hidden) >= 2 and sum(raw[i] for i in hidden) >= min_cell):
            return out
        out[min(others, key=lambda i: raw[i])] = SUPPRESSED


def differencing_suppression(counts: CohortCounts, min_cell: int) -> set[str]:
    """Totals to suppress so that no two released totals differ by less than the minimum cell.

    Subsets lie inside the cohort and often inside each other (CT+ECG within CT): cohort 15 and CT 14
    would reveal one patient without CT. Whenever two totals that would be released differ by 1 to
    ``min_cell - 1``, the larger is suppressed (the refined subset is the one a consortium trains on),
    until no such pair is left. The check is pairwise over
    all totals, so it also covers nestings it does not know about.
    """
    totals = {ALL_SUBSET: counts.patients, **{n: sc.patients for n, sc in counts.subsets.items()}}
    hidden = {n for n, v in totals.items() if v < min_cell}
    changed = True
    while changed:
        changed = False
        # Largest first: the broader total goes, the refined subset a cohort is trained on stays.
        visible = sorted((n for n in totals if n not in hidden), key=lambda n: (-totals[n], n))
        for i, big in enumerate(visible):
            if any(0 < totals[big] - totals[small] < min_cell for small in visible[i + 1:]):
                hidden.add(big)
                changed = True
                break
    return {n for n in hidden if totals[n] >= min_cell}


def hide_sum(cells: list[int | None], raw: list[int], min_cell: int = 0) -> list[int | None]:
    """When a total is suppressed, its released parts must not add up to it (nor nearly: the hidden
    parts' true sum reaches ``min_cell``): hide the smallest released parts until they do."""
    out = list(cells)
    while True:
        shown = [i for i, c in enumerate(out) if c is not SUPPRESSED]
        hidden_sum = sum(raw[i] for i, c in enumerate(out) if c is SUPPRESSED)
        if not shown or (len(shown) < len(out) and hidden_sum >= min_cell):
            return out
        out[min(shown, key=lambda i: raw[i])] = SUPPRESSED


def bin_layout_conflicts(distributions: list[Distribution]) -> dict[int, str]:
    """Histograms of a field whose bin edges differ from the field's first histogram in the answer.

    Two layouts of one field (edges [0, 100, 400] and [0, 101, 400]) would release bins whose
    difference is the few patients between the shifted edges; one layout per field and answer.
    """
    first: dict[str, tuple[float | None, ...]] = {}
    out = {}
    for k, d in enumerate(distributions):
        if d.kind != "histogram":
            continue
        edges = tuple(sorted({b.low for b in d.bins} | {b.high for b in d.bins}, key=lambda x: (x is None, x)))
        if first.setdefault(d.field, edges) != edges:
            out[k] = (f"another histogram of {d.field!r} in this query uses other bin edges "
                      f"({[e for e in first[d.field] if e is not None]}); one bin layout per field and query, "
                      "since bins whose edges are shifted give the patients between the edges away")
    return out


def release(counts: CohortCounts, policy: DisclosurePolicy, *, requested_min_cell: int | None = None,
            spec_fields: list[str] | None = None, noise: NoiseSource | None = None,
            blocked: frozenset[CellKey] = frozenset()) -> ReleasedCounts:
    """Apply ``policy`` to ``counts``; raises DisclosureError when the whole query is refused.

    ``blocked`` cells are suppressed like small ones (the differencing ledger's verdict, so that
    secondary suppression accounts for them); ``noise`` gives each cell its keyed noise.
    """
    dist_fields = [d.field for d in counts.distributions]
    check_fields((spec_fields or []) + dist_fields, policy)
    min_cell, note = effective_min_cell(policy, requested_min_cell)
    rel = _Releaser(policy, min_cell, noise, blocked)
    # Totals withheld by the ledger are treated like differenced ones: their parts must not add up to them.
    differenced = differencing_suppression(counts, min_cell) | {
        str(k[-1]) for k in blocked if k == (ALL_SUBSET,) or (k[0] == "subset" and len(k) == 2)}
    patients = SUPPRESSED if ALL_SUBSET in differenced else rel.cell((ALL_SUBSET,), counts.patients)
    subsets: dict[str, int | None] = {}
    labels: dict[str, dict[str, int | None]] = {}
    for name, sc in counts.subsets.items():
        subsets[name] = SUPPRESSED if name in differenced else rel.cell(("subset", name), sc.patients)
        raw = [getattr(sc, k) for k in LABEL_KEYS]
        cells = rel.group([("label", name, k) for k in LABEL_KEYS], raw, subsets[name] is not SUPPRESSED)
        labels[name] = dict(zip(LABEL_KEYS, hide_sum(cells, raw, min_cell) if name in differenced else cells,
                                strict=True))
    layouts = bin_layout_conflicts(counts.distributions)
    dists = []
    for k, d in enumerate(counts.distributions):
        rd = ReleasedDistribution(field=d.field, subset=d.subset, kind=d.kind)
        if policy.allowed_fields is not None and d.field not in policy.allowed_fields:
            rd.refused = f"field {d.field!r} is not in this site's allowlist of releasable fields"
        elif len(d.bins) > policy.histogram_bin_cap:
            rd.refused = (f"{len(d.bins)} bins requested; this site releases at most "
                          f"{policy.histogram_bin_cap} bins per distribution")
        elif k in layouts:
            rd.refused = layouts[k]
        else:
            # Bins partition the subset only for single-valued fields; secondary suppression is applied
            # whenever the subset total is released, which is safe in both cases. The whole cohort's
            # total is the released patient count.
            total = subsets.get(d.subset, patients if d.subset == ALL_SUBSET else SUPPRESSED)
            raw = [b.count for b in d.bins]
            cells = rel.group([("bin", k, b.label) for b in d.bins], raw, total is not SUPPRESSED)
            if d.subset in differenced:
                cells = hide_sum(cells, raw, min_cell)
            rd.bins = [{"label": b.label, "low": b.low, "high": b.high, "count": c}
                       for b, c in zip(d.bins, cells, strict=True)]
        dists.append(rd)
    return ReleasedCounts(min_cell_size=min_cell, rounding=policy.rounding, noise=policy.noise_scale > 0,
                          patients=patients, subsets=subsets, labels=labels,
                          distributions=dists, notes=[note] if note else [])


def released_cells(released: ReleasedCounts) -> list[CellKey]:
    """The keys of the cells ``released`` gives a number for (those the differencing ledger records)."""
    keys: list[CellKey] = [(ALL_SUBSET,)] if released.patients is not SUPPRESSED else []
    keys += [("subset", n) for n, v in released.subsets.items() if v is not SUPPRESSED]
    keys += [("label", n, k) for n, cells in released.labels.items() for k, v in cells.items() if v is not SUPPRESSED]
    keys += [("bin", k, b["label"]) for k, d in enumerate(released.distributions) for b in d.bins
             if b["count"] is not SUPPRESSED]
    return keys


def dp_sensitivity(counts: CohortCounts) -> int:
    """L1 sensitivity of a DP answer: one patient moves the cohort count and, per subset, its count and
    one label cell."""
    return 1 + 2 * len(counts.subsets)


def discrete_laplace(rng: np.random.Generator, scale: float) -> int:
    """A draw of the discrete Laplace (two-sided geometric) distribution, P(k) ~ exp(-|k| / scale)."""
    p = 1.0 - math.exp(-1.0 / scale)
    return int(rng.geometric(p)) - int(rng.geometric(p))


def release_dp(counts: CohortCounts, policy: DisclosurePolicy, *, requested_min_cell: int | None = None,
               spec_fields: list[str] | None = None, noise: NoiseSource | None = None,
               blocked: frozenset[CellKey] = frozenset()) -> ReleasedCounts:
    """Differentially private release: discrete Laplace noise of scale sensitivity / ``dp_epsilon``.

    Noisy cells below the minimum cell are still suppressed (post-processing, it costs no privacy).
    Distributions are not released in this mode: their sensitivity (a patient may fall in every bin of
    a multi-valued field) would drown the counts; consortium distributions come from secure totals.
    Fresh randomness on every call: the caller caches answers so a repeat gets the same one.
    """
    if policy.dp_epsilon is None:
        raise DisclosureError("release_dp needs disclosure.dp_epsilon in the site policy")
    check_fields((spec_fields or []) + [d.field for d in counts.distributions], policy)
    min_cell, note = effective_min_cell(policy, requested_min_cell)
    sensitivity = dp_sensitivity(counts)
    scale = sensitivity / policy.dp_epsilon

    def noisy(key: CellKey, n: int) -> int | None:
        if key in blocked:
            return SUPPRESSED
        rng = noise(key) if noise is not None else np.random.default_rng(secrets.randbits(128))
        v = max(0, n + discrete_laplace(rng, scale))
        return v if v >= min_cell else SUPPRESSED

    subsets = {name: noisy(("subset", name), sc.patients) for name, sc in counts.subsets.items()}
    labels = {name: {k: noisy(("label", name, k), getattr(sc, k)) for k in LABEL_KEYS}
              for name, sc in counts.subsets.items()}
    dists = [ReleasedDistribution(field=d.field, subset=d.subset, kind=d.kind,
                                  refused="this site answers with differential privacy "
                                          "(disclosure.dp_epsilon) and releases no distributions")
             for d in counts.distributions]
    return ReleasedCounts(min_cell_size=min_cell, rounding=1, noise=True, patients=noisy((ALL_SUBSET,), counts.patients),
                          subsets=subsets, labels=labels, distributions=dists, notes=[note] if note else [],
                          dp={"mechanism": policy.dp_mechanism, "epsilon": policy.dp_epsilon,
                              "sensitivity": sensitivity, "scale": round(scale, 6)})


def spec_hash(spec_json: dict[str, Any]) -> str:
    """Stable hash of a spec's canonical JSON form."""
    return hashlib.sha256(json.dumps(spec_json, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def audit(log_path: Path, *, spec_json: dict[str, Any], requester: str, decision: str,
          released: dict[str, Any] | None = None, reason: str | None = None) -> None:
    """Append one answered or refused query to the site's audit log (JSON lines)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "spec_hash": spec_hash(spec_json),
             "requester": requester, "decision": decision, "reason": reason, "released": released}
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
