"""Agreement: which sites train, on which subset, decided from released counts only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cohort.protocol import STATUS_ANSWERED
from cohort.release.consortium import ConsortiumTotals
from cohort.release.disclosure import ReleasedCounts


@dataclass(frozen=True)
class AgreementRule:
    """The coordinator's rule: train on ``subset`` at sites with enough cases (and positives)."""

    subset: str
    min_cases: int
    min_positives: int = 0
    # Consortium rules, read from the secure totals over the sites that meet the per-site rule.
    min_cases_total: int = 0
    min_positives_total: int = 0


@dataclass
class SiteAnswer:
    """One site's reply to the negotiation query as the coordinator sees it."""

    site_id: str
    node_id: int
    status: str  # answered | refused | error | timeout
    released: ReleasedCounts | None = None
    reason: str | None = None


@dataclass
class SiteDecision:
    """Whether a site takes part, and why (or why not)."""

    site_id: str
    node_id: int
    participates: bool
    reason: str
    cases: int | None = None
    positives: int | None = None
    negatives: int | None = None


@dataclass
class Agreement:
    """The agreed training cohort: the rule, every site's decision and the consortium totals."""

    rule: AgreementRule
    decisions: list[SiteDecision] = field(default_factory=list)
    consortium: str | None = None  # how the consortium rule was decided (None: no consortium rule)

    @property
    def participants(self) -> list[SiteDecision]:
        return [d for d in self.decisions if d.participates]

    def to_json(self) -> dict[str, Any]:
        released_cases = [d.cases for d in self.participants if d.cases is not None]
        return {"rule": asdict(self.rule), "sites": [asdict(d) for d in self.decisions],
                "participating_sites": [d.site_id for d in self.participants],
                "released_cases_total": sum(released_cases), "consortium_rule": self.consortium}


def agree(answers: list[SiteAnswer], rule: AgreementRule) -> Agreement:
    """Apply ``rule`` to every site's released counts. Suppressed counts never meet a positive threshold."""
    out = Agreement(rule)
    for a in sorted(answers, key=lambda a: a.site_id):
        if a.status != STATUS_ANSWERED or a.released is None:
            out.decisions.append(SiteDecision(a.site_id, a.node_id, False, f"{a.status}: {a.reason or ''}".strip()))
            continue
        rel = a.released
        if rule.subset not in rel.subsets:
            out.decisions.append(SiteDecision(a.site_id, a.node_id, False,
                                              f"subset {rule.subset!r} missing in the answer (subsets: "
                                              f"{sorted(rel.subsets)})"))
            continue
        cases = rel.subsets[rule.subset]
        labels = rel.labels.get(rule.subset, {})
        pos, neg = labels.get("positive"), labels.get("negative")
        d = SiteDecision(a.site_id, a.node_id, False, "", cases, pos, neg)
        if cases is None or cases < rule.min_cases:
            shown = "suppressed" if cases is None else str(cases)
            d.reason = f"{shown} cases in {rule.subset!r}, fewer than the {rule.min_cases} required"
        elif rule.min_positives > 0 and (pos is None or pos < rule.min_positives):
            shown = "suppressed" if pos is None else str(pos)
            d.reason = f"{shown} positive labels, fewer than the {rule.min_positives} required"
        else:
            d.participates = True
            d.reason = "meets the rule"
        out.decisions.append(d)
    return out


def apply_totals(agreement: Agreement, totals: ConsortiumTotals | None) -> Agreement:
    """Apply the consortium rules (``min_cases_total``, ``min_positives_total``) to the secure totals.

    The totals cover the sites that met the per-site rule (fewer when some declined or dropped out, so
    they are then a lower bound). When a rule is not met, or cannot be read (no released total, a
    suppressed cell), no site trains and every participant's reason says why.
    """
    rule = agreement.rule
    checks = [(n, key, what) for n, key, what in ((rule.min_cases_total, None, "cases"),
                                                  (rule.min_positives_total, "positive", "positives")) if n > 0]
    if not checks or not agreement.participants:
        return agreement
    failure = None
    if totals is None or not totals.released:
        failure = f"no consortium totals ({totals.reason if totals else 'secure totals are off'})"
    else:
        sites = ", ".join(totals.contributors)
        for n, key, what in checks:
            value = totals.subsets.get(rule.subset) if key is None else totals.labels.get(rule.subset, {}).get(key)
            if value is None or value < n:
                shown = "a suppressed number of" if value is None else str(value)
                failure = (f"consortium total of {shown} {what} in {rule.subset!r} (sites {sites}), fewer than "
                           f"the {n} required (min_{what}_total)")
                break
    if failure is None:
        agreement.consortium = "consortium totals meet the rule"
        return agreement
    agreement.consortium = failure
    for d in agreement.participants:
        d.participates = False
        d.reason = failure
    return agreement
