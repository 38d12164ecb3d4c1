"""The release gate: the one place where a site decides what of its data leaves it, per message.

Every handler of the site's ClientApp is registered through ``fl_client.gate``, which calls this
module before and after the handler; no handler builds its own reply. For a coordinator that may send
any message, spec, site list or number of near-identical questions, the gate

* checks every spec any message carries (identifying fields, free-text terms outside the site's
  allowlist, request keys), before anything is evaluated;
* releases negotiation counts under the site's policy (minimum cell, secondary and differencing
  suppression, one bin layout per field, keyed noise or DP) and withholds any cell whose patient set
  differs from an already released cell's by fewer than the minimum cell (``cell_ledger``);
* admits training, evaluation, moments and final-model messages only for the spec the site answered
  in this run's negotiation, and only when the site released the agreed subset's count there
  (``runs``): the site participates;
* replaces ``num-examples`` by a size derived from the subset count it already released (nothing new
  leaves) and withholds metrics whose counts (validation positives, negatives, samples) are below
  the minimum cell;
* appends every decision to the audit log.

Flower-free: ``fl_client.gate`` adapts it to Flower messages.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cohort.errors import CohortError, DisclosureError
from cohort.protocol import NODE_COORDINATOR_ID, STATUS_ANSWERED, STATUS_ERROR, STATUS_REFUSED
from cohort.release.cell_ledger import CellLedger
from cohort.release.disclosure import (
    ReleasedCounts,
    audit,
    check_fields,
    effective_min_cell,
    release,
    release_dp,
    released_cells,
    spec_hash,
)
from cohort.release.ledger import PrivacyLedger
from cohort.release.runs import RunRegistry
from cohort.release.secret import cell_digests, keyed_rng, set_digest, site_secret
from cohort.results import CellKey, CohortCounts
from cohort.siteconfig import SiteConfig
from cohort.spec.model import CohortSpec
from cohort.spec.privacy import IdentifyingRequestError, check_free_text, check_privacy, free_text_fields

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

    if not isinstance(spec_json, dict):
        raise DisclosureError(f"refused: the spec is a {type(spec_json).__name__}, not a cohort spec object")
    check_fields(spec_fields(spec_json), site.disclosure)
    from cohort.index.catalog import store_catalog

    catalog = store_catalog(site.store_path())
    spec = parse_spec(spec_json, catalog=catalog)
    check_privacy(spec)
    check_free_text(spec, site.disclosure.free_text_terms, free_text_fields(catalog))
    return spec


def local_counts(site: SiteConfig, spec: CohortSpec) -> CohortCounts:
    """Exact counts of ``spec`` on this site's DuckDB index (they never leave the site as such)."""
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex

    with DuckIndex.for_store(site.store_path(), read_only=True) as index:
        return evaluate(index, spec)


def local_members(site: SiteConfig, spec: CohortSpec) -> tuple[CohortCounts, dict[CellKey, tuple[str, ...]]]:
    """Exact counts and the PatientIDs behind every cell (for the ledger; never leave the site)."""
    from cohort.index.compile_duck import evaluate_members
    from cohort.index.duck import DuckIndex

    with DuckIndex.for_store(site.store_path(), read_only=True) as index:
        return evaluate_members(index, spec)


def dp_query_key(spec_json: dict[str, Any], min_cell: int) -> str:
    """What makes two DP queries identical: the spec's hash and the minimum cell in force."""
    return f"{spec_hash(spec_json)}:{min_cell}"


@dataclass(frozen=True)
class Admission:
    """A run-bound message the gate let through: the checked spec and what negotiation released for it."""

    spec: CohortSpec
    subset: str
    min_cell: int
    released_subset: int  # the agreed subset's count as the site released it in this run's negotiation
    dp: bool


# Metrics that rest on the class counts of the validation split (both classes must reach the minimum).
CLASS_METRICS = ("auroc", "balanced-accuracy", "sensitivity", "specificity")


class ReleaseGate:
    """One site's gate for one message: the site, the coordinator's account (the site's own setting)
    and the Flower run the message belongs to."""

    def __init__(self, site: SiteConfig, account: str = DEFAULT_ACCOUNT, run_id: str = "") -> None:
        self.site = site
        self.account = account
        self.run_id = run_id
        self.log_path = site.store_path() / "audit.jsonl"

    @cached_property
    def secret(self) -> bytes:
        return site_secret(self.site.store_path())

    def audit(self, spec_json: Any, requester: str, decision: str, *, released: dict[str, Any] | None = None,
              reason: str | None = None) -> None:
        spec_doc = spec_json if isinstance(spec_json, dict) else {"not-a-spec": repr(spec_json)[:200]}
        audit(self.log_path, spec_json=spec_doc, requester=requester, decision=decision, released=released,
              reason=reason)

    # --- negotiation -----------------------------------------------------------------------------
    def answer_counts(self, request: dict[str, Any]) -> QueryAnswer:
        """Evaluate ``request["spec"]`` on this site's index and release counts under the site policy.

        A DP site spends the account's budget (a repeated identical query gets its cached answer).
        Every query is audited whatever the outcome; an answered one is recorded for this run.
        """
        spec_json = request.get("spec") or {}
        requester = str(request.get("requester", "unknown"))
        unknown = sorted(set(request) - ALLOWED_REQUEST_KEYS)
        policy = self.site.disclosure
        note = None
        try:
            if unknown:
                raise DisclosureError(f"query refused: unsupported request keys {unknown}; this site answers "
                                      "aggregate counts for a cohort spec only, never rows")
            spec = checked_spec(self.site, spec_json)
            requested = request.get("requested_min_cell")
            min_cell = effective_min_cell(policy, requested)[0]
            if policy.dp_epsilon is not None:
                ledger = PrivacyLedger(self.site.store_path())
                key = dp_query_key(spec_json, min_cell)
                payload = ledger.cached(self.account, key)
                if payload is not None:
                    note = "repeated query: the cached differentially private answer, no budget spent"
                else:
                    ledger.check_budget(self.account, policy.dp_epsilon, policy.dp_budget)
                    released = self._release(spec, spec_json, min_cell, requested, dp=True)
                    payload, fresh, spent = ledger.spend(self.account, key, policy.dp_epsilon, policy.dp_budget,
                                                         released.to_json(), self.run_id)
                    note = (f"spent epsilon {policy.dp_epsilon:g} of coordinator {self.account!r}'s budget "
                            f"({spent:g} of {policy.dp_budget:g} used)" if fresh else
                            "repeated query: the cached differentially private answer, no budget spent")
            else:
                payload = self._release(spec, spec_json, min_cell, requested, dp=False).to_json()
        except (DisclosureError, IdentifyingRequestError) as exc:
            self.audit(spec_json, requester, STATUS_REFUSED, reason=str(exc))
            return QueryAnswer(self.site.site_id, STATUS_REFUSED, reason=str(exc))
        except CohortError as exc:
            self.audit(spec_json, requester, STATUS_ERROR, reason=str(exc))
            return QueryAnswer(self.site.site_id, STATUS_ERROR, reason=str(exc))
        RunRegistry(self.site.store_path()).record(self.account, self.run_id, spec_hash(spec_json),
                                                   {**payload, "min_cell_size": min_cell})
        self.audit(spec_json, requester, STATUS_ANSWERED, released=payload, reason=note)
        return QueryAnswer(self.site.site_id, STATUS_ANSWERED, released_json=json.dumps(payload, sort_keys=True))

    def _release(self, spec: CohortSpec, spec_json: dict[str, Any], min_cell: int, requested: int | None, *,
                 dp: bool) -> ReleasedCounts:
        """Release under the policy, then withhold what the differencing ledger finds, until stable."""
        counts, members = local_members(self.site, spec)
        digests = cell_digests(self.secret, members)
        policy = self.site.disclosure
        mechanism = f"dp:{policy.dp_epsilon}" if dp else f"laplace:{policy.noise_scale}"

        def noise(key: CellKey):  # type: ignore[no-untyped-def]
            return keyed_rng(self.secret, "noise", mechanism, set_digest(self.secret, digests[key]))

        fields = spec_fields(spec_json)
        blocked: frozenset[CellKey] = frozenset()
        with CellLedger(self.site.store_path(), self.secret).answer(self.account, min_cell) as check:
            while True:
                released = (release_dp if dp else release)(counts, policy, requested_min_cell=requested,
                                                           spec_fields=fields, noise=noise, blocked=blocked)
                cells = {k: digests[k] for k in released_cells(released)}
                more = check.check(cells)
                if not more:
                    break
                blocked |= more
            check.record(cells)
        if blocked:
            released.notes.append(f"{len(blocked)} cell(s) withheld: their patients differ by fewer than "
                                  f"{min_cell} from a cell already released to this coordinator")
        return released

    # --- run-bound channels ----------------------------------------------------------------------
    def admit(self, channel: str, spec_json: Any, subset: str) -> Admission:
        """Let a training, evaluation, moments or final-model message through, or raise DisclosureError."""
        spec = checked_spec(self.site, spec_json)
        negotiated = RunRegistry(self.site.store_path()).released(self.account, self.run_id, spec_hash(spec_json))
        if negotiated is None:
            raise DisclosureError(f"{channel} refused: this site did not answer this cohort spec "
                                  f"({spec_hash(spec_json)[:12]}) in this run's negotiation; it trains and "
                                  "evaluates only on the spec it answered")
        count = (negotiated.get("subsets") or {}).get(subset)
        if count is None:
            raise DisclosureError(f"{channel} refused: this site did not release a count for subset {subset!r} "
                                  f"in this run's negotiation (below its minimum cell, withheld, or not in the "
                                  "spec), so it does not take part")
        return Admission(spec, subset, int(negotiated["min_cell_size"]), int(count),
                         self.site.disclosure.dp_epsilon is not None)

    @staticmethod
    def examples(admission: Admission, fraction: float) -> int:
        """``num-examples`` for a split that is ``fraction`` of the agreed subset: derived from the count
        the site already released for it, so the reply tells nothing new (exact split sizes stay)."""
        return max(1, int(round(admission.released_subset * fraction)))

    @staticmethod
    def metrics(admission: Admission, values: Mapping[str, float | None], *, samples: int, positives: int,
                negatives: int) -> tuple[dict[str, float], list[str]]:
        """The metrics that may leave: loss when the split reaches the minimum cell, class metrics when
        both classes do; none from a DP site (they are not differentially private). Returns (sent, withheld)."""
        m = admission.min_cell
        sent, withheld = {}, []
        for key, value in values.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            ok = (not admission.dp and samples >= m
                  and (key not in CLASS_METRICS or (positives >= m and negatives >= m)))
            if ok:
                sent[key] = float(value)
            else:
                withheld.append(key)
        return sent, withheld


def answer_query(site: SiteConfig, request: dict[str, Any], *, account: str = DEFAULT_ACCOUNT,
                 run_id: str = "") -> QueryAnswer:
    """The site's answer to one cohort query (``ReleaseGate.answer_counts``), for tools and tests."""
    return ReleaseGate(site, account, run_id).answer_counts(request)
