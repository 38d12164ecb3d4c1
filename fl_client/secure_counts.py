"""A site's side of the secure sum of count vectors (SecAgg+ over four query messages), hardened against
a hostile coordinator.

Stages (one ``query.<action>`` message each; the state between them lives in the node's
``context.state``, on the site):

1. **setup** — the site decides whether it joins: policy ``secure_aggregation``; the coordinator's list
   of the sites it asks has exactly ``sample-num`` distinct entries, all on this site's **roster**
   (``cohort.identity``), this site among them; at least ``secure_min_sites`` of them; a threshold
   above half; the spec passes the same checks as a plain query. It answers two fresh public keys, the
   layout cells its plain answer already released exactly (``exact-cells``), its noise epsilon, and an
   **Ed25519 signature** by its identity key over all of that, its node id and the *session*: a digest
   of everything the coordinator told it at setup (request id, spec, layout, sample size, threshold,
   modulus, the list of sites asked).
2. **share-keys** — given every participant's entry, it checks that the list is exactly the setup list
   (size, threshold above half of it, no site, node or key twice), that every participant is on its
   roster and that every signature verifies under *its own* session digest (so every participant was
   told the same sample size, threshold, layout and list). Only then it Shamir-shares its private mask
   seed and first secret key, one encrypted share pair per other participant.
3. **collect** — it evaluates the spec, writes its exact counts into the layout and adds **noise** to
   every cell that not every participant released exactly in its plain answer (*public* cells, known to
   the coordinator already, stay exact): a Pólya share (difference of two negative binomials) of a
   discrete Laplace of scale sensitivity / epsilon, so ``k`` (the site's ``secure_min_sites``) shares add
   up to the full discrete Laplace; a DP site adds the full noise itself (its own ``dp_epsilon``). The
   noise is drawn from the site's release secret keyed by the evaluated patient set and the question,
   so a repeat gets the same noise; a new draw spends epsilon from the coordinator's budget
   (``disclosure.dp_budget``). Then it masks the vector (private mask plus pairwise masks, mod 2**32).
4. **unmask** — told which participants' vectors arrived (active) and which dropped out (dead), it
   returns its share of each active participant's mask seed and of each dead one's secret key, never
   both for one participant, once per sum, only when at least ``max(threshold, secure_min_sites)`` are
   active, and only when this vector (a keyed digest of the evaluated patient set, not the spec or the
   layout text) was not summed before over a set of authenticated participants differing by 1 to
   ``secure_min_sites - 1`` sites.

Every stage re-checks that the message belongs to the sum it joined and matches the earlier stages, and
every stage is appended to the site's audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
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

from cohort.errors import CohortError, DisclosureError
from cohort.identity import load_identity, load_roster, verify
from cohort.protocol import (
    KEY_ACTIVE_NODES,
    KEY_CIPHERTEXTS,
    KEY_DEAD_NODES,
    KEY_DESTINATIONS,
    KEY_DP,
    KEY_DP_LIST,
    KEY_EPSILON,
    KEY_EPSILON_LIST,
    KEY_EXACT_CELLS,
    KEY_EXACT_LIST,
    KEY_LAYOUT_JSON,
    KEY_MASKED_VECTOR,
    KEY_MIN_CELL,
    KEY_MIN_CELL_LIST,
    KEY_MIN_SITES,
    KEY_MIN_SITES_LIST,
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
    KEY_SIGNATURE,
    KEY_SIGNATURES,
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
from cohort.release.consortium import CountLayout, known_cells, noise_sensitivity, site_vector
from cohort.release.disclosure import ReleasedCounts, audit, effective_min_cell, spec_hash
from cohort.release.gate import DEFAULT_ACCOUNT, checked_spec, local_members
from cohort.release.ledger import PrivacyLedger, differencing_risk
from cohort.release.runs import RunRegistry
from cohort.release.secret import keyed_rng, patient_digests, set_digest, site_secret
from cohort.results import ALL_SUBSET
from cohort.secure_masks import MOD_RANGE, add_mod, mask, polya_shares
from cohort.siteconfig import SiteConfig
from cohort.spec.privacy import IdentifyingRequestError

State = dict[str, Any]  # what a ConfigRecord can hold: str, int, bytes and lists of them
Reply = dict[str, Any]

SECAGG_STATE = "secagg-state"  # the node's context.state record holding this protocol's state
STAGE_SETUP, STAGE_SHARED, STAGE_COLLECTED, STAGE_DONE = "setup", "share-keys", "collect", "done"
MAX_CELLS = 100_000  # a layout larger than this is not a count vector
SIGNED_PURPOSE = "fedcohort/secure-total/participant/1"  # domain separation of the identity signatures

DECISION_JOINED = "secure-joined"
DECISION_CONTRIBUTED = "secure-contributed"
DECISION_UNMASKED = "secure-unmasked"


class SecureStageError(DisclosureError):
    """A secure-aggregation message this site will not act on (out of order, unsafe, or inconsistent)."""


# ------------------------------------------------------------------------------------------ helpers


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def session_digest(cfg: dict[str, Any], sites: list[str]) -> str:
    """What the coordinator told this site at setup, as one digest every participant signs: two sites
    with different digests were told different things (another threshold, sample size, list, layout)."""
    spec_json = json.loads(str(cfg[KEY_SPEC_JSON]))
    requested = cfg.get(KEY_REQUESTED_MIN_CELL)
    return hashlib.sha256(_canonical({
        "request": str(cfg[KEY_REQUEST_ID]), "n": int(cfg[KEY_SAMPLE_NUM]), "threshold": int(cfg[KEY_THRESHOLD]),
        "min-sites": int(cfg.get(KEY_MIN_SITES, 0)), "mod": int(cfg[KEY_MOD_RANGE]), "spec": spec_hash(spec_json),
        "layout": CountLayout.from_json(str(cfg[KEY_LAYOUT_JSON])).digest(), "sites": sorted(sites),
        "requested-min-cell": None if requested is None else int(requested)})).hexdigest()


def participant_message(session: str, site_id: str, node_id: int, pk1: bytes, pk2: bytes, exact: str,
                        epsilon: float, min_cell: int, min_sites: int, dp: bool) -> bytes:
    """The bytes a participant signs with its identity key for one sum."""
    return _canonical({"purpose": SIGNED_PURPOSE, "session": session, "site": site_id, "node": int(node_id),
                       "pk1": bytes(pk1).hex(), "pk2": bytes(pk2).hex(), "exact": exact,
                       "epsilon": float(epsilon), "min-cell": int(min_cell), "min-sites": int(min_sites),
                       "dp": bool(dp)})


def _check_size(n: int, threshold: int, min_sites: int, what: str) -> None:
    if n < min_sites:
        raise SecureStageError(f"secure total of {n} sites refused ({what}): this site joins secure totals of "
                               f"at least {min_sites} sites (disclosure.secure_min_sites)")
    if not n // 2 < threshold <= n:
        raise SecureStageError(f"secure total refused ({what}): threshold {threshold} for {n} sites must be above "
                               "half the sites (or the coordinator could rebuild both secrets of one site)")


def negotiated_answer(site: SiteConfig, account: str, spec_json: dict[str, Any]) -> ReleasedCounts | None:
    """What this site last released to ``account`` for this spec in a negotiation (the release gate's
    run registry), or None: then the coordinator knows none of its cells exactly."""
    released = RunRegistry(site.store_path()).latest(account, spec_hash(spec_json))
    try:
        return ReleasedCounts.from_json(released) if released else None
    except (ValueError, TypeError, KeyError):
        return None


def _refuse(site: SiteConfig, state: State, request_id: str, spec_json: dict[str, Any], exc: Exception,
            status: str = STATUS_REFUSED) -> Reply:
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=request_id, decision=status,
          reason=str(exc))
    state.clear()
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: status, KEY_REASON: str(exc)}


def _run(stage: Any, site: SiteConfig, cfg: dict[str, Any], state: State, *args: Any) -> Reply:
    request_id = str(cfg.get(KEY_REQUEST_ID, ""))
    try:
        spec_json = json.loads(str(cfg[KEY_SPEC_JSON])) if KEY_SPEC_JSON in cfg else json.loads(
            str(state.get("spec-json", "{}")))
    except ValueError:
        spec_json = {"not-a-spec": str(cfg.get(KEY_SPEC_JSON))[:200]}
    try:
        return stage(site, cfg, state, *args)  # type: ignore[no-any-return]
    except (DisclosureError, IdentifyingRequestError) as exc:
        return _refuse(site, state, request_id, spec_json, exc)
    except CohortError as exc:
        return _refuse(site, state, request_id, spec_json, exc, STATUS_ERROR)
    except (KeyError, TypeError, ValueError) as exc:  # a malformed message: refused, never half-acted on
        return _refuse(site, state, request_id, spec_json,
                       SecureStageError(f"malformed secure-aggregation message: {type(exc).__name__}: {exc}"))


# ------------------------------------------------------------------------------------------- stages


def _setup(site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int, account: str) -> Reply:
    policy = site.disclosure
    state.clear()
    spec_json = json.loads(str(cfg[KEY_SPEC_JSON]))
    n, threshold = int(cfg[KEY_SAMPLE_NUM]), int(cfg[KEY_THRESHOLD])
    min_sites = max(policy.secure_min_sites, int(cfg.get(KEY_MIN_SITES, 0)))
    if not policy.secure_aggregation:
        raise SecureStageError("this site does not join secure totals (its policy: "
                               "disclosure.secure_aggregation: false)")
    checked_spec(site, spec_json)
    _check_size(n, threshold, min_sites, "setup")
    if int(cfg[KEY_MOD_RANGE]) != MOD_RANGE:
        raise SecureStageError(f"secure total refused: modulus {cfg[KEY_MOD_RANGE]} is not {MOD_RANGE}")
    sites = [str(v) for v in cfg.get(KEY_SITE_IDS, [])]
    if len(sites) != n or len(set(sites)) != n:
        raise SecureStageError(f"secure total refused: the coordinator names {len(set(sites))} distinct sites "
                               f"for a sum of {n}")
    if site.site_id not in sites:
        raise SecureStageError("secure total refused: this site is not on the coordinator's list of sites asked")
    roster, identity = load_roster(site), load_identity(site)
    own = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    listed = roster.get(site.site_id)
    if listed is None or listed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != own:
        raise SecureStageError(f"secure total refused: this site's identity key is not the roster's key for "
                               f"{site.site_id!r} (site.yaml identity_key / roster)")
    strangers = sorted(s for s in sites if s not in roster)
    if strangers:
        raise SecureStageError(f"secure total refused: {strangers} are not on this site's consortium roster")
    layout_json = str(cfg[KEY_LAYOUT_JSON])
    layout = CountLayout.from_json(layout_json)
    if layout.size > MAX_CELLS:
        raise SecureStageError(f"secure total refused: {layout.size} cells is not a count vector")
    requested = cfg.get(KEY_REQUESTED_MIN_CELL)
    min_cell = effective_min_cell(policy, int(requested) if requested is not None else None)[0]
    dp = policy.dp_epsilon is not None
    epsilon = float(policy.dp_epsilon if policy.dp_epsilon is not None else policy.secure_epsilon)
    exact = "".join("1" if k else "0" for k in known_cells(negotiated_answer(site, account, spec_json), layout))
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    pk1b, pk2b = public_key_to_bytes(pk1), public_key_to_bytes(pk2)
    session = session_digest(cfg, sites)
    signature = identity.sign(participant_message(session, site.site_id, node_id, pk1b, pk2b, exact, epsilon,
                                                  min_cell, min_sites, dp))
    state.update({"stage": STAGE_SETUP, "request-id": str(cfg[KEY_REQUEST_ID]), "nid": node_id, "n": n,
                  "threshold": threshold, "min-sites": min_sites, "min-cell": min_cell, "session": session,
                  "asked": sorted(sites), "spec-json": json.dumps(spec_json, sort_keys=True),
                  "layout-json": layout_json, "exact": exact, "epsilon": epsilon, "dp": int(dp),
                  "sk1": private_key_to_bytes(sk1), "pk1": pk1b, "sk2": private_key_to_bytes(sk2), "pk2": pk2b})
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=state["request-id"],
          decision=DECISION_JOINED, reason=f"joined a secure total of {n} sites (threshold {threshold}): "
                                           f"{', '.join(sorted(sites))}")
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_PK1: pk1b, KEY_PK2: pk2b,
            KEY_MIN_CELL: min_cell, KEY_MIN_SITES: min_sites, KEY_EXACT_CELLS: exact, KEY_EPSILON: epsilon,
            KEY_DP: int(dp), KEY_SIGNATURE: signature}


def _expect(state: State, cfg: dict[str, Any], stage: str) -> None:
    if state.get("stage") != stage:
        raise SecureStageError(f"secure-aggregation message out of order: this site is at stage "
                               f"{state.get('stage') or 'none'!r}, expected {stage!r} before it")
    if str(cfg.get(KEY_REQUEST_ID, "")) != state.get("request-id"):
        raise SecureStageError("secure-aggregation message for another request than the one this site joined")
    # Anything the message restates must be what this site agreed to at setup.
    for key, skey in ((KEY_SAMPLE_NUM, "n"), (KEY_THRESHOLD, "threshold")):
        if key in cfg and int(cfg[key]) != int(state[skey]):
            raise SecureStageError(f"secure total refused: {key} {cfg[key]} differs from the {state[skey]} "
                                   "this site joined with at setup")
    if KEY_LAYOUT_JSON in cfg and str(cfg[KEY_LAYOUT_JSON]) != state["layout-json"]:
        raise SecureStageError("secure total refused: the count layout differs from the one set up")
    if KEY_SPEC_JSON in cfg and json.dumps(json.loads(str(cfg[KEY_SPEC_JSON])), sort_keys=True) != state["spec-json"]:
        raise SecureStageError("secure total refused: the spec differs from the one set up")
    if stage != STAGE_SETUP and KEY_NODE_IDS in cfg and [int(v) for v in cfg[KEY_NODE_IDS]] != list(state["nodes"]):
        raise SecureStageError("secure total refused: the participant list differs from the one keys were "
                               "shared with")


def _share_keys(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    _expect(state, cfg, STAGE_SETUP)
    n, threshold, min_sites = int(state["n"]), int(state["threshold"]), int(state["min-sites"])
    keys = (KEY_NODE_IDS, KEY_SITE_IDS, KEY_PK1_LIST, KEY_PK2_LIST, KEY_SIGNATURES, KEY_EXACT_LIST,
            KEY_EPSILON_LIST, KEY_MIN_CELL_LIST, KEY_MIN_SITES_LIST, KEY_DP_LIST)
    cols = {k: list(cfg[k]) for k in keys}
    sizes = {len(v) for v in cols.values()}
    if sizes != {n}:
        raise SecureStageError(f"secure total refused: share-keys lists {sorted(sizes)} participants, setup "
                               f"announced {n}")
    nodes, sites = [int(v) for v in cols[KEY_NODE_IDS]], [str(v) for v in cols[KEY_SITE_IDS]]
    pk1s, pk2s = [bytes(v) for v in cols[KEY_PK1_LIST]], [bytes(v) for v in cols[KEY_PK2_LIST]]
    _check_size(len(nodes), threshold, min_sites, "share keys")
    if len(set(sites)) != n or len(set(nodes)) != n or len(set(pk1s + pk2s)) != 2 * n:
        raise SecureStageError("secure total refused: a participant, node id or public key appears twice")
    if sorted(sites) != list(state["asked"]):
        raise SecureStageError(f"secure total refused: the participants {sorted(sites)} are not the sites "
                               f"announced at setup {list(state['asked'])}")
    roster = load_roster(site)
    layout_size = CountLayout.from_json(str(state["layout-json"])).size
    for i, sid in enumerate(sites):
        exact = str(cols[KEY_EXACT_LIST][i])
        if len(exact) != layout_size or set(exact) - {"0", "1"}:
            raise SecureStageError(f"secure total refused: participant {sid!r} states exact cells of another layout")
        key = roster.get(sid)
        if key is None:
            raise SecureStageError(f"secure total refused: participant {sid!r} is not on this site's roster")
        msg = participant_message(str(state["session"]), sid, nodes[i], pk1s[i], pk2s[i], exact,
                                  float(cols[KEY_EPSILON_LIST][i]), int(cols[KEY_MIN_CELL_LIST][i]),
                                  int(cols[KEY_MIN_SITES_LIST][i]), bool(int(cols[KEY_DP_LIST][i])))
        if not verify(key, bytes(cols[KEY_SIGNATURES][i]), msg):
            raise SecureStageError(f"secure total refused: the keys of participant {sid!r} are not signed by its "
                                   "roster identity for this sum (forged, altered, or set up with other "
                                   "parameters than this site was)")
    nid = int(state["nid"])
    me = sites.index(site.site_id)
    if nodes[me] != nid or (pk1s[me], pk2s[me]) != (bytes(state["pk1"]), bytes(state["pk2"])):
        raise SecureStageError("secure total refused: this site's own public keys are missing or altered")
    public = "".join("1" if all(str(e)[j] == "1" for e in cols[KEY_EXACT_LIST]) else "0" for j in range(layout_size))
    rd_seed = os.urandom(32)
    b_shares = create_shares(rd_seed, threshold, n)
    sk1_shares = create_shares(bytes(state["sk1"]), threshold, n)
    sk2 = bytes_to_private_key(bytes(state["sk2"]))
    dsts, ctxts = [], []
    for i, other in enumerate(nodes):
        if other == nid:
            state["own-b-share"], state["own-sk1-share"] = b_shares[i], sk1_shares[i]
            continue
        key2 = generate_shared_key(sk2, bytes_to_public_key(pk2s[i]))
        dsts.append(other)
        ctxts.append(encrypt(key2, share_keys_plaintext_concat(nid, other, b_shares[i], sk1_shares[i])))
    state.update({"stage": STAGE_SHARED, "rd-seed": rd_seed, "nodes": nodes, "sites": sites, "pk1s": pk1s,
                  "pk2s": pk2s, "public": public})
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_DESTINATIONS: dsts, KEY_CIPHERTEXTS: ctxts}


def _noise(site: SiteConfig, state: State, layout: CountLayout, cohort_digest: str, account: str,
           secret: bytes) -> tuple[np.ndarray, str | None]:
    """This site's noise for the non-public cells (zero elsewhere), and an audit note; charges the budget
    once per distinct noisy question."""
    noisy = [c == "0" for c in str(state["public"])]
    delta = noise_sensitivity(layout, noisy)
    out = np.zeros(layout.size, dtype=np.int64)
    if delta == 0:
        return out, None
    policy = site.disclosure
    epsilon, dp = float(state["epsilon"]), bool(state["dp"])
    parts = 1 if dp else int(state["min-sites"])  # a DP site's own noise is full; others add 1/k shares
    key = hashlib.sha256(_canonical({"cohort": cohort_digest, "layout": layout.digest(), "public": state["public"],
                                     "epsilon": epsilon, "parts": parts, "delta": delta})).hexdigest()
    _, fresh, spent = PrivacyLedger(site.store_path()).spend(account, f"secure-total:{key}", epsilon,
                                                            policy.dp_budget, {"secure-total": key},
                                                            str(state["request-id"]))
    rng = keyed_rng(secret, "secure-total-noise", key)
    idx = np.flatnonzero(noisy)
    out[idx] = polya_shares(rng, delta / epsilon, parts, len(idx))
    note = (f"noise on {len(idx)} cells (sensitivity {delta}, epsilon {epsilon:g}, "
            + (f"spent: {spent:g} of {policy.dp_budget:g} used)" if fresh else "repeat: same noise, nothing spent)"))
    return out, note


def _collect(site: SiteConfig, cfg: dict[str, Any], state: State, account: str) -> Reply:
    _expect(state, cfg, STAGE_SHARED)
    nid, nodes, threshold = int(state["nid"]), [int(v) for v in state["nodes"]], int(state["threshold"])
    srcs, ctxts = [int(v) for v in cfg[KEY_SOURCES]], list(cfg[KEY_CIPHERTEXTS])
    if len(set(srcs)) != len(srcs) or len(srcs) + 1 < threshold or not set(srcs) <= set(nodes) - {nid}:
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
    counts, members = local_members(site, checked_spec(site, spec_json))
    secret = site_secret(site.store_path())
    cohort_digest = set_digest(secret, patient_digests(secret, members[(ALL_SUBSET,)]))
    vector = np.array(site_vector(counts, layout, site.disclosure), dtype=np.int64)
    noise, note = _noise(site, state, layout, cohort_digest, account, secret)
    vector = vector + noise
    if np.abs(vector).max(initial=0) * int(state["n"]) >= MOD_RANGE // 2:
        raise SecureStageError("secure total refused: counts too large for the modulus")
    masked = add_mod(vector, mask(bytes(state["rd-seed"]), layout.size))
    sk1 = bytes_to_private_key(bytes(state["sk1"]))
    for src in srcs:
        pairwise = mask(generate_shared_key(sk1, bytes_to_public_key(bytes(state["pk1s"][nodes.index(src)]))),
                        layout.size)
        masked = add_mod(masked, pairwise, 1 if nid > src else -1)
    state.update({"stage": STAGE_COLLECTED, "share-owners": owners, "b-shares": b_shares,
                  "sk1-shares": sk1_shares, "sources": srcs, "vector-digest": cohort_digest})
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=str(state["request-id"]),
          decision=DECISION_CONTRIBUTED,
          reason=f"contributed its counts, masked, to a secure total ({layout.size} cells, {len(nodes)} sites)"
                 + (f"; {note}" if note else ""))
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_MASKED_VECTOR: [int(v) for v in masked]}


def _unmask(site: SiteConfig, cfg: dict[str, Any], state: State, account: str) -> Reply:
    _expect(state, cfg, STAGE_COLLECTED)
    nid, nodes = int(state["nid"]), [int(v) for v in state["nodes"]]
    active, dead = [int(v) for v in cfg[KEY_ACTIVE_NODES]], [int(v) for v in cfg[KEY_DEAD_NODES]]
    need = max(int(state["threshold"]), int(state["min-sites"]))
    sources = {int(v) for v in state["sources"]}
    if (len(set(active)) != len(active) or len(set(dead)) != len(dead) or set(active) & set(dead)
            or nid not in active or not set(active) | set(dead) <= sources | {nid}):
        raise SecureStageError("secure total refused: inconsistent lists of active and dropped sites")
    if len(active) < need:
        raise SecureStageError(f"secure total refused: only {len(active)} sites' counts arrived, this site "
                               f"unmasks totals of at least {need} (disclosure.secure_min_sites)")
    members = frozenset(str(state["sites"][nodes.index(a)]) for a in active)  # identities the roster vouched for
    vector_key = f"secure-vector:{state['vector-digest']}"
    ledger = PrivacyLedger(site.store_path())
    earlier = differencing_risk(ledger.secure_sets(account, vector_key), members, int(state["min-sites"]))
    if earlier is not None:
        raise SecureStageError(f"secure total refused: this site's counts for the same patients were summed "
                               f"before over {len(earlier)} sites; a total over {len(members)} sites differing "
                               f"by {len(earlier ^ members)} would let the two be differenced")
    ledger.record_secure_set(account, vector_key, members)
    owners = [int(v) for v in state["share-owners"]]
    shares = [state["b-shares"][owners.index(a)] for a in active] + \
             [state["sk1-shares"][owners.index(d)] for d in dead]
    spec_json = json.loads(str(state["spec-json"]))
    audit(site.store_path() / "audit.jsonl", spec_json=spec_json, requester=str(state["request-id"]),
          decision=DECISION_UNMASKED,
          reason=f"sent unmasking shares: total over {len(active)} sites ({', '.join(sorted(members))}), "
                 f"{len(dead)} dropped out")
    state.clear()
    state["stage"] = STAGE_DONE
    return {KEY_SITE_ID: site.site_id, KEY_STATUS: STATUS_JOINED, KEY_SHARE_OWNERS: active + dead,
            KEY_SHARES: shares}


def setup(site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int,
          account: str = DEFAULT_ACCOUNT) -> Reply:
    """Stage 1: join (two signed public keys) or refuse, naming the policy key."""
    return _run(_setup, site, cfg, state, node_id, account)


def share_keys(site: SiteConfig, cfg: dict[str, Any], state: State) -> Reply:
    """Stage 2: encrypted Shamir shares of the mask seed and the first secret key, one per other site,
    once every participant is authenticated and the list matches setup."""
    return _run(_share_keys, site, cfg, state)


def collect(site: SiteConfig, cfg: dict[str, Any], state: State, account: str = DEFAULT_ACCOUNT) -> Reply:
    """Stage 3: the site's count vector, noised where it is not public, masked."""
    return _run(_collect, site, cfg, state, account)


def unmask(site: SiteConfig, cfg: dict[str, Any], state: State, account: str = DEFAULT_ACCOUNT) -> Reply:
    """Stage 4: shares that remove the masks of the sum (and only of the sum)."""
    return _run(_unmask, site, cfg, state, account)


def handle(action: str, site: SiteConfig, cfg: dict[str, Any], state: State, node_id: int,
           account: str = DEFAULT_ACCOUNT) -> Reply:
    """Dispatch one secure-aggregation message (``action`` is a ``SECAGG_*_ACTION``) to its stage."""
    if action == SECAGG_SETUP_ACTION:
        return setup(site, cfg, state, node_id, account)
    if action == SECAGG_SHARE_KEYS_ACTION:
        return share_keys(site, cfg, state)
    if action == SECAGG_COLLECT_ACTION:
        return collect(site, cfg, state, account)
    if action == SECAGG_UNMASK_ACTION:
        return unmask(site, cfg, state, account)
    raise ValueError(f"unknown secure-aggregation action {action!r}")
