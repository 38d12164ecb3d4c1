"""A site's side of the secure sum of count vectors (SecAgg+ over four query messages).

Stages (one ``query.<action>`` message each; the state between them lives in the node's
``context.state``, on the site):

1. **setup** — the site decides whether it joins (policy ``secure_aggregation``, at least
   ``secure_min_sites`` sites asked, a threshold above half the sites, the spec passes the same checks
   as a plain query) and answers two fresh public keys (Flower's ``generate_key_pairs``).
2. **share-keys** — given every joined site's public keys, it Shamir-shares its private mask seed and
   its first secret key (Flower's ``create_shares``) and encrypts one share pair per other site
   (Flower's ``generate_shared_key`` + ``encrypt``); the coordinator only relays ciphertexts.
3. **collect** — it decrypts the shares sent to it, evaluates the spec on its own index, writes the
   exact counts into the coordinator's layout and sends them masked: private mask plus one pairwise
   mask per other site, modulo 2**32 (``cohort.secure_masks``). The masked vector alone is uniform noise.
4. **unmask** — told which sites' vectors arrived (active) and which dropped out (dead), it returns
   its share of each active site's private mask seed and of each dead site's secret key, never both
   for one site, once per sum, only when at least ``secure_min_sites`` sites are active, and only when
   that set of sites cannot be differenced against an earlier sum of the same spec.

Every stage is appended to the site's audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from cohort.release.consortium import CountLayout, site_vector
from cohort.release.disclosure import audit, effective_min_cell, spec_hash
from cohort.errors import CohortError, DisclosureError
from cohort.release.ledger import PrivacyLedger, differencing_risk
from cohort.protocol import (
    KEY_ACTIVE_NODES,
    KEY_CIPHERTEXTS,
    KEY_DEAD_NODES,
    KEY_DESTINATIONS,
    KEY_LAYOUT_JSON,
    KEY_MASKED_VECTOR,
    KEY_MIN_CELL,
    KEY_MIN_SITES,
    KEY_MOD_RANGE,
    KEY_NODE_IDS,
    KEY_PK1,
    KEY_PK1_LIST,
    KEY_PK2,
    KEY_PK2_LIST,
    KEY_REASON,
    KEY_REQUEST_ID,
    KEY_REQUESTED_MIN_CELL,
    KEY_SAMPLE_NUM,
    KEY_SHARE_OWNERS,
    KEY_SHARES,
    KEY_SITE_ID,
    KEY_SITE_IDS,
    KEY_SOURCES,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_THRESHOLD,
    SECAGG_COLLECT_ACTION,
    SECAGG_SETUP_ACTION,
    SECAGG_SHARE_KEYS_ACTION,
    SECAGG_UNMASK_ACTION,
    STATUS_ERROR,
    STATUS_JOINED,
    STATUS_REFUSED,
)
from cohort.secure_masks import MOD_RANGE, add_mod, mask
from cohort.siteconfig import SiteConfig
from cohort.spec.privacy import IdentifyingRequestError
from cohort.release.gate import DEFAULT_ACCOUNT, checked_spec, local_counts

State = dict[str, Any]  # what a ConfigRecord can hold: str, int, bytes and lists of them
Reply = dict[str, Any]

SECAGG_STATE = "secagg-state"  # the node's context.state record holding this protocol's state
STAGE_SETUP, STAGE_SHARED, STAGE_COLLECTED, STAGE_DONE = "setup", "share-keys", "collect", "done"
MAX_CELLS = 100_000  # a layout larger than this is not a count vector

DECISION_JOINED = "secure-joined"
DECISION_CONTRIBUTED = "secure-contributed"
DECISION_UNMASKED = "secure-unmasked"


class SecureStageError(DisclosureError):
    """A secure-aggregation message this site will not act on (out of order, unsafe, or inconsistent)."""


def secure_spec_key(spec_json: dict[str, Any], layout_json: str) -> str:
    """What makes two secure sums "the same question": the spec without its name and the layout."""
    core = {k: v for k, v in spec_json.items() if k not in ("name", "description")}
    return hashlib.sha256(f"{spec_hash(core)}:{layout_json}".encode()).hexdigest()


def _refuse(site: SiteConfig, state: State, request_id: str, spec_json: dict[str, Any], exc: Exception,
            status: str = STATUS_REFUSED) -> Reply:
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=request_id, decision=status,
          reason=str(exc))
    state.clear()
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: status, KEY_REASON: str(exc)}


def _run(stage: Any, site: SiteConfig, cfg: dict[str, Any], state: State, *args: Any) -> Reply:
    request_id = str(cfg.get(KEY_REQUEST_ID, ""))
    spec_json = json.loads(str(cfg[KEY_SPEC_JSON])) if KEY_SPEC_JSON in cfg else json.loads(
        str(state.get("spec-json", "{}")))
    try:
        return stage(site, cfg, state, *args)  # type: ignore[no-any-return]
    except (DisclosureError, IdentifyingRequestError) as exc:
        return _refuse(site, state, request_id, spec_json, exc)
    except CohortError as exc:
        return _refuse(site, state, request_id, spec_json, exc, STATUS_ERROR)


def _setup(site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int) -> Reply:
    policy = site.disclosure
    spec_json = json.loads(str(cfg[KEY_SPEC_JSON]))
    n, threshold = int(cfg[KEY_SAMPLE_NUM]), int(cfg[KEY_THRESHOLD])
    min_sites = max(policy.secure_min_sites, int(cfg.get(KEY_MIN_SITES, 0)))
    if not policy.secure_aggregation:
        raise SecureStageError("this site does not join secure totals (its policy: "
                               "disclosure.secure_aggregation: false)")
    if n < min_sites:
        raise SecureStageError(f"secure total of {n} sites refused: this site joins secure totals of at least "
                               f"{min_sites} sites (disclosure.secure_min_sites: {policy.secure_min_sites})")
    if not n // 2 < threshold <= n:
        raise SecureStageError(f"secure total refused: threshold {threshold} for {n} sites must be above half "
                               "the sites (or the coordinator could rebuild both secrets of one site)")
    if int(cfg[KEY_MOD_RANGE]) != MOD_RANGE:
        raise SecureStageError(f"secure total refused: modulus {cfg[KEY_MOD_RANGE]} is not {MOD_RANGE}")
    layout_json = str(cfg[KEY_LAYOUT_JSON])
    layout = CountLayout.from_json(layout_json)
    if layout.size > MAX_CELLS:
        raise SecureStageError(f"secure total refused: {layout.size} cells is not a count vector")
    checked_spec(site, spec_json)
    requested = cfg.get(KEY_REQUESTED_MIN_CELL)
    min_cell = effective_min_cell(policy, int(requested) if requested is not None else None)[0]
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state.clear()
    state.update({"stage": STAGE_SETUP, "request-id": str(cfg[KEY_REQUEST_ID]), "nid": node_id, "n": n,
                  "threshold": threshold, "min-sites": min_sites, "min-cell": min_cell,
                  "spec-json": json.dumps(spec_json, sort_keys=True), "layout-json": layout_json,
                  "sk1": private_key_to_bytes(sk1), "pk1": public_key_to_bytes(pk1),
                  "sk2": private_key_to_bytes(sk2), "pk2": public_key_to_bytes(pk2)})
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=state["request-id"],
          decision=DECISION_JOINED, reason=f"joined a secure total of {n} sites (threshold {threshold})")
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_PK1: state["pk1"], KEY_PK2: state["pk2"],
            KEY_MIN_CELL: min_cell, KEY_MIN_SITES: min_sites}


def _expect(state: State, cfg: dict[str, Any], stage: str) -> None:
    if state.get("stage") != stage:
        raise SecureStageError(f"secure-aggregation message out of order: this site is at stage "
                               f"{state.get('stage') or 'none'!r}, expected {stage!r} before it")
    if str(cfg.get(KEY_REQUEST_ID, "")) != state.get("request-id"):
        raise SecureStageError("secure-aggregation message for another request than the one this site joined")


def _share_keys(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    _expect(state, cfg, STAGE_SETUP)
    nodes = [int(v) for v in cfg[KEY_NODE_IDS]]
    pk1s, pk2s = list(cfg[KEY_PK1_LIST]), list(cfg[KEY_PK2_LIST])
    sites = [str(v) for v in cfg[KEY_SITE_IDS]]
    nid = int(state["nid"])
    if len(nodes) < max(int(state["threshold"]), int(state["min-sites"])):
        raise SecureStageError(f"secure total refused: {len(nodes)} sites joined, this site needs at least "
                               f"{max(int(state['threshold']), int(state['min-sites']))}")
    if len(set(nodes)) != len(nodes) or len(set(pk1s + pk2s)) != 2 * len(nodes):
        raise SecureStageError("secure total refused: repeated node ids or public keys")
    if nid not in nodes or (pk1s[nodes.index(nid)], pk2s[nodes.index(nid)]) != (state["pk1"], state["pk2"]):
        raise SecureStageError("secure total refused: this site's own public keys are missing or altered")
    rd_seed = os.urandom(32)
    threshold = int(state["threshold"])
    b_shares = create_shares(rd_seed, threshold, len(nodes))
    sk1_shares = create_shares(bytes(state["sk1"]), threshold, len(nodes))
    sk2 = bytes_to_private_key(bytes(state["sk2"]))
    dsts, ctxts = [], []
    for i, other in enumerate(nodes):
        if other == nid:
            state["own-b-share"], state["own-sk1-share"] = b_shares[i], sk1_shares[i]
            continue
        key = generate_shared_key(sk2, bytes_to_public_key(bytes(pk2s[i])))
        dsts.append(other)
        ctxts.append(encrypt(key, share_keys_plaintext_concat(nid, other, b_shares[i], sk1_shares[i])))
    state.update({"stage": STAGE_SHARED, "rd-seed": rd_seed, "nodes": nodes, "sites": sites,
                  "pk1s": pk1s, "pk2s": pk2s})
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_DESTINATIONS: dsts, KEY_CIPHERTEXTS: ctxts}


def _collect(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    _expect(state, cfg, STAGE_SHARED)
    nid, nodes, threshold = int(state["nid"]), [int(v) for v in state["nodes"]], int(state["threshold"])
    srcs, ctxts = [int(v) for v in cfg[KEY_SOURCES]], list(cfg[KEY_CIPHERTEXTS])
    if len(srcs) + 1 < threshold or not set(srcs) <= set(nodes) - {nid}:
        raise SecureStageError(f"secure total refused: shares from {len(srcs)} other sites, threshold {threshold}")
    sk2 = bytes_to_private_key(bytes(state["sk2"]))
    owners, b_shares, sk1_shares = [nid], [state["own-b-share"]], [state["own-sk1-share"]]
    for src, ctxt in zip(srcs, ctxts, strict=True):
        key = generate_shared_key(sk2, bytes_to_public_key(bytes(state["pk2s"][nodes.index(src)])))
        actual_src, dst, b_share, sk1_share = share_keys_plaintext_separate(decrypt(key, bytes(ctxt)))
        if (actual_src, dst) != (src, nid):
            raise SecureStageError(f"secure total refused: a share relayed from node {src} was addressed "
                                   f"from {actual_src} to {dst}")
        owners.append(src)
        b_shares.append(b_share)
        sk1_shares.append(sk1_share)
    spec_json = json.loads(str(state["spec-json"]))
    layout = CountLayout.from_json(str(state["layout-json"]))
    vector = np.array(site_vector(local_counts(site, checked_spec(site, spec_json)), layout, site.disclosure),
                      dtype=np.int64)
    if vector.max(initial=0) * int(state["n"]) >= MOD_RANGE:
        raise SecureStageError("secure total refused: counts too large for the modulus")
    masked = add_mod(vector, mask(bytes(state["rd-seed"]), layout.size))
    sk1 = bytes_to_private_key(bytes(state["sk1"]))
    for src in srcs:
        pairwise = mask(generate_shared_key(sk1, bytes_to_public_key(bytes(state["pk1s"][nodes.index(src)]))),
                        layout.size)
        masked = add_mod(masked, pairwise, 1 if nid > src else -1)
    state.update({"stage": STAGE_COLLECTED, "share-owners": owners, "b-shares": b_shares,
                  "sk1-shares": sk1_shares, "sources": srcs})
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=str(state["request-id"]),
          decision=DECISION_CONTRIBUTED,
          reason=f"contributed its counts, masked, to a secure total ({layout.size} cells, {len(nodes)} sites)")
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_MASKED_VECTOR: [int(v) for v in masked]}


def _unmask(site: SiteConfig, cfg: dict[str, Any], state: State, account: str) -> Reply:
    _expect(state, cfg, STAGE_COLLECTED)
    nid, nodes = int(state["nid"]), [int(v) for v in state["nodes"]]
    active, dead = [int(v) for v in cfg[KEY_ACTIVE_NODES]], [int(v) for v in cfg[KEY_DEAD_NODES]]
    need = max(int(state["threshold"]), int(state["min-sites"]))
    if set(active) & set(dead) or nid not in active or not set(dead) <= set(int(v) for v in state["sources"]):
        raise SecureStageError("secure total refused: inconsistent lists of active and dropped sites")
    if len(active) < need:
        raise SecureStageError(f"secure total refused: only {len(active)} sites' counts arrived, this site "
                               f"unmasks totals of at least {need} (disclosure.secure_min_sites)")
    members = frozenset(str(state["sites"][nodes.index(a)]) for a in active)
    spec_key = secure_spec_key(json.loads(str(state["spec-json"])), str(state["layout-json"]))
    ledger = PrivacyLedger(site.store_path())
    earlier = differencing_risk(ledger.secure_sets(account, spec_key), members, int(state["min-sites"]))
    if earlier is not None:
        raise SecureStageError(f"secure total refused: this spec was summed before over {len(earlier)} sites; "
                               f"a total over {len(members)} sites differing by {len(earlier ^ members)} "
                               "would let the two be differenced")
    ledger.record_secure_set(account, spec_key, members)
    owners = [int(v) for v in state["share-owners"]]
    shares = [state["b-shares"][owners.index(a)] for a in active] + \
             [state["sk1-shares"][owners.index(d)] for d in dead]
    spec_json = json.loads(str(state["spec-json"]))
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=str(state["request-id"]),
          decision=DECISION_UNMASKED,
          reason=f"sent unmasking shares: total over {len(active)} sites, {len(dead)} dropped out")
    state.clear()
    state["stage"] = STAGE_DONE
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_SHARE_OWNERS: active + dead,
            KEY_SHARES: shares}


def setup(site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int) -> Reply:
    """Stage 1: join (two public keys) or refuse, naming the policy key."""
    return _run(_setup, site, cfg, state, node_id)


def share_keys(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    """Stage 2: encrypted Shamir shares of the mask seed and the first secret key, one per other site."""
    return _run(_share_keys, site, cfg, state)


def collect(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    """Stage 3: the site's exact count vector, masked."""
    return _run(_collect, site, cfg, state)


def unmask(site: SiteConfig, cfg: dict[str, Any], state: State, account: str = DEFAULT_ACCOUNT) -> Reply:
    """Stage 4: shares that remove the masks of the sum (and only of the sum)."""
    return _run(_unmask, site, cfg, state, account)


def handle(action: str, site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int,
           account: str = DEFAULT_ACCOUNT) -> Reply:
    """Dispatch one secure-aggregation message (``action`` is a ``SECAGG_*_ACTION``) to its stage."""
    if action == SECAGG_SETUP_ACTION:
        return setup(site, cfg, state, node_id)
    if action == SECAGG_SHARE_KEYS_ACTION:
        return share_keys(site, cfg, state)
    if action == SECAGG_COLLECT_ACTION:
        return collect(site, cfg, state)
    if action == SECAGG_UNMASK_ACTION:
        return unmask(site, cfg, state, account)
    raise ValueError(f"unknown secure-aggregation action {action!r}")
