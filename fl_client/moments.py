"""A site's answer to the coordinator's normalisation-moments request, under its disclosure policy.

The site computes count, sum and sum of squares of its training split's numeric features and ECG
leads (:func:`fl_client.local.moments`), withholds every feature that fewer patients than its minimum
cell contribute to, and audits the answer like every cohort query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cohort.errors import CohortError
from cohort.protocol import STATUS_ANSWERED, STATUS_ERROR, STATUS_REFUSED
from cohort.release.disclosure import audit, effective_min_cell
from cohort.siteconfig import SiteConfig
from fl_client.normalization import release_moments


@dataclass(frozen=True)
class MomentsAnswer:
    """What leaves the site: status, the releasable moments (JSON) when answered, a reason otherwise."""

    site_id: str
    status: str
    moments_json: str | None = None
    reason: str | None = None


def answer_moments(site: SiteConfig, spec_json: dict[str, Any], subset: str, training_json: str,
                   requester: str, requested_min_cell: int | None = None) -> MomentsAnswer:
    """Moments of this site's training split, each feature only if at least min-cell patients have it."""
    from fl_client.local import TrainingSettings, moments

    log_path = site.store_path() / "audit.jsonl"
    min_cell, _ = effective_min_cell(site.disclosure, requested_min_cell)
    try:
        raw = moments(site, spec_json, subset, TrainingSettings.from_json(training_json))
    except (CohortError, OSError) as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ERROR,
              reason=f"moments: {exc}")
        return MomentsAnswer(site.site_id, STATUS_ERROR, reason=str(exc))
    released, withheld, ecg_withheld = release_moments(raw, min_cell)
    notes = []
    if withheld:
        notes.append(f"tabular features {withheld} withheld: fewer than {min_cell} patients have them")
    if ecg_withheld:
        notes.append(f"ECG moments withheld: fewer than {min_cell} training patients have an ECG")
    reason = "; ".join(notes) or None
    if all(n == 0 for n in released.tabular_patients) and released.ecg_patients == 0:
        reason = reason or f"no feature has {min_cell} or more patients"
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_REFUSED,
              reason=f"moments: {reason}")
        return MomentsAnswer(site.site_id, STATUS_REFUSED, reason=reason)
    payload = released.to_json()
    audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ANSWERED,
          released={"moments": payload}, reason=reason)
    return MomentsAnswer(site.site_id, STATUS_ANSWERED, moments_json=payload, reason=reason)
