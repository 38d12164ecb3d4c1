"""A site's answer to the coordinator's cohort query: evaluate locally, release under policy, audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cohort.disclosure import audit, release
from cohort.errors import CohortError, DisclosureError
from cohort.protocol import STATUS_ANSWERED, STATUS_ERROR, STATUS_REFUSED
from cohort.siteconfig import SiteConfig
from cohort.spec.privacy import IdentifyingRequestError, check_privacy

# Request keys a query may carry; anything else (e.g. a request for rows) is refused.
ALLOWED_REQUEST_KEYS = frozenset({"spec", "requested_min_cell", "requester"})


@dataclass(frozen=True)
class QueryAnswer:
    """What leaves the site: a status, released counts (JSON) when answered, a reason otherwise."""

    site_id: str
    status: str
    released_json: str | None = None
    reason: str | None = None


def spec_fields(spec_json: dict[str, Any]) -> list[str]:
    """Every field name the spec uses anywhere (predicates, label, within dates, distributions)."""
    fields: list[str] = []
    for obj in spec_json.get("objects", {}).values():
        fields += [p["field"] for p in obj.get("where", [])]
        within = obj.get("within") or {}
        fields += [within[k] for k in ("date_field", "own_date_field") if within.get(k)]
    if spec_json.get("label"):
        fields.append(spec_json["label"]["field"])
    fields += [d["field"] for d in spec_json.get("distributions", [])]
    return fields


def answer_query(site: SiteConfig, request: dict[str, Any]) -> QueryAnswer:
    """Evaluate ``request["spec"]`` on this site's index and release counts under the site policy.

    Every query is appended to ``STORE/audit.jsonl`` whatever the outcome.
    """
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex
    from cohort.spec.load import parse_spec

    log_path = site.store_path() / "audit.jsonl"
    spec_json = request.get("spec") or {}
    requester = str(request.get("requester", "unknown"))
    unknown = sorted(set(request) - ALLOWED_REQUEST_KEYS)
    try:
        if unknown:
            raise DisclosureError(f"query refused: unsupported request keys {unknown}; this site answers "
                                  "aggregate counts for a cohort spec only, never rows")
        spec = parse_spec(spec_json)
        check_privacy(spec)
        with DuckIndex.for_store(site.store_path(), read_only=True) as index:
            counts = evaluate(index, spec)
        released = release(counts, site.disclosure, requested_min_cell=request.get("requested_min_cell"),
                           spec_fields=spec_fields(spec_json), seed=0)
    except (DisclosureError, IdentifyingRequestError) as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_REFUSED, reason=str(exc))
        return QueryAnswer(site.site_id, STATUS_REFUSED, reason=str(exc))
    except CohortError as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ERROR, reason=str(exc))
        return QueryAnswer(site.site_id, STATUS_ERROR, reason=str(exc))
    payload = released.to_json()
    audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ANSWERED, released=payload)
    return QueryAnswer(site.site_id, STATUS_ANSWERED, released_json=json.dumps(payload, sort_keys=True))
