"""A site's answer to the coordinator's cohort query: evaluate locally, release under policy, audit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cohort.disclosure import audit, check_fields, effective_min_cell, release, release_dp, spec_hash
from cohort.errors import CohortError, DisclosureError
from cohort.privacy_budget import PrivacyLedger
from cohort.protocol import NODE_COORDINATOR_ID, STATUS_ANSWERED, STATUS_ERROR, STATUS_REFUSED
from cohort.results import CohortCounts
from cohort.siteconfig import SiteConfig
from cohort.spec.model import CohortSpec
from cohort.spec.privacy import IdentifyingRequestError, check_free_text, check_privacy

# Request keys a query may carry; anything else (e.g. a request for rows) is refused.
ALLOWED_REQUEST_KEYS = frozenset({"spec", "requested_min_cell", "requester"})
# The budget account when the site's node config names no coordinator (one SuperNode serves one).
DEFAULT_ACCOUNT = "default"


def account_of(node_config: Mapping[str, Any]) -> str:
    """The coordinator this node serves, from its own node config (``coordinator-id``), never the request."""
    return str(node_config.get(NODE_COORDINATOR_ID) or DEFAULT_ACCOUNT)


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


def checked_spec(site: SiteConfig, spec_json: dict[str, Any]) -> CohortSpec:
    """Parse ``spec_json`` and refuse what this site never answers a coordinator.

    Identifying names in any spelling (PatientID, patient-id) are refused before parsing, so they are
    logged as refusals rather than as "unknown field" errors; then the parsed spec's identifying fields
    and free-text comparisons outside the policy's allowlist (``disclosure.free_text_terms``).
    """
    from cohort.spec.load import parse_spec

    check_fields(spec_fields(spec_json), site.disclosure)
    spec = parse_spec(spec_json)
    check_privacy(spec)
    check_free_text(spec, site.disclosure.free_text_terms)
    return spec


def local_counts(site: SiteConfig, spec: CohortSpec) -> CohortCounts:
    """Exact counts of ``spec`` on this site's DuckDB index (they never leave the site as such)."""
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex

    with DuckIndex.for_store(site.store_path(), read_only=True) as index:
        return evaluate(index, spec)


def dp_query_key(spec_json: dict[str, Any], min_cell: int) -> str:
    """What makes two DP queries identical: the spec's hash and the minimum cell in force."""
    return f"{spec_hash(spec_json)}:{min_cell}"


def answer_query(site: SiteConfig, request: dict[str, Any], *, account: str = DEFAULT_ACCOUNT,
                 run_id: str = "") -> QueryAnswer:
    """Evaluate ``request["spec"]`` on this site's index and release counts under the site policy.

    ``account`` names the coordinator (the site's own setting): a DP site spends that account's budget.
    Every query is appended to ``STORE/audit.jsonl`` whatever the outcome.
    """
    log_path = site.store_path() / "audit.jsonl"
    spec_json = request.get("spec") or {}
    requester = str(request.get("requester", "unknown"))
    unknown = sorted(set(request) - ALLOWED_REQUEST_KEYS)
    policy = site.disclosure
    note = None
    try:
        if unknown:
            raise DisclosureError(f"query refused: unsupported request keys {unknown}; this site answers "
                                  "aggregate counts for a cohort spec only, never rows")
        spec = checked_spec(site, spec_json)
        requested = request.get("requested_min_cell")
        if policy.dp_epsilon is not None:
            ledger = PrivacyLedger(site.store_path())
            key = dp_query_key(spec_json, effective_min_cell(policy, requested)[0])
            payload = ledger.cached(account, key)
            if payload is not None:
                note = "repeated query: the cached differentially private answer, no budget spent"
            else:
                ledger.check_budget(account, policy.dp_epsilon, policy.dp_budget)
                released = release_dp(local_counts(site, spec), policy, requested_min_cell=requested,
                                      spec_fields=spec_fields(spec_json))
                payload, fresh, spent = ledger.spend(account, key, policy.dp_epsilon, policy.dp_budget,
                                                     released.to_json(), run_id)
                note = (f"spent epsilon {policy.dp_epsilon:g} of coordinator {account!r}'s budget "
                        f"({spent:g} of {policy.dp_budget:g} used)" if fresh else
                        "repeated query: the cached differentially private answer, no budget spent")
        else:
            payload = release(local_counts(site, spec), policy, requested_min_cell=requested,
                              spec_fields=spec_fields(spec_json), seed=0).to_json()
    except (DisclosureError, IdentifyingRequestError) as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_REFUSED, reason=str(exc))
        return QueryAnswer(site.site_id, STATUS_REFUSED, reason=str(exc))
    except CohortError as exc:
        audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ERROR, reason=str(exc))
        return QueryAnswer(site.site_id, STATUS_ERROR, reason=str(exc))
    audit(log_path, spec_json=spec_json, requester=requester, decision=STATUS_ANSWERED, released=payload,
          reason=note)
    return QueryAnswer(site.site_id, STATUS_ANSWERED, released_json=json.dumps(payload, sort_keys=True))
