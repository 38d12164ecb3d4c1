"""A site's answer to the coordinator's cohort query: evaluate locally, release under policy, audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cohort.disclosure import audit, check_fields, release
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


def _dicts(value: Any) -> list[dict[str, Any]]:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [v for v in items if isinstance(v, dict)]


def spec_fields(spec_json: dict[str, Any]) -> list[str]:
    """Every field name the spec uses anywhere (predicates, label, within dates, distributions).

    Tolerates malformed specs (they are rejected later by the parser with a precise message).
    """
    if not isinstance(spec_json, dict):
        return []
    fields: list[Any] = []
    for obj in _dicts(spec_json.get("objects")):
        fields += [p.get("field") for p in _dicts(obj.get("where"))]
        within = obj.get("within")
        if isinstance(within, dict):
            fields += [within.get(k) for k in ("date_field", "own_date_field")]
    label = spec_json.get("label")
    if isinstance(label, dict):
        fields.append(label.get("field"))
    fields += [d.get("field") for d in _dicts(spec_json.get("distributions"))]
    return [f for f in fields if isinstance(f, str) and f]


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
        # Identifying names in any spelling (PatientID, patient-id) are refused before parsing, so
        # they are logged as refusals rather than as "unknown field" errors.
        check_fields(spec_fields(spec_json), site.disclosure)
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
