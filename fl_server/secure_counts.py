"""The coordinator's side of the secure sum of count vectors (SecAgg+ over query messages).

Flower's ``SecAggPlusWorkflow`` / ``secaggplus_mod`` pair drives ``train`` messages and quantizes float
model updates; counts are integers and travel in query messages, so this module runs the same four
SecAgg+ stages on ``query.secagg-*`` messages with Flower's primitives (key agreement, encryption of
shares, Shamir secret sharing) and exact arithmetic modulo 2**32. The coordinator relays each site's
signed keys (the sites check them against their roster), learns the sum of the contributing sites'
vectors and nothing of any single one: cells that not every contributor released exactly carry the
sites' distributed noise (``fl_client.secure_counts``), so even the raw sum minus the sites' plain
answers gives no site's hidden cell. A site that drops out after sharing its keys is survived (its
pairwise masks are rebuilt from the other sites' shares of its secret key).

Which sites are asked: the sites that answered the plain query and meet the agreement's per-site rule
(the training cohort); their plain answers give the vector's layout (the agreed subset only, from
``agree_with_totals``: fewer noised cells, less noise on each).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from cohort.errors import CohortError
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
    SECAGG_RECORD,
    SECAGG_SETUP_ACTION,
    SECAGG_SHARE_KEYS_ACTION,
    SECAGG_UNMASK_ACTION,
    STATUS_JOINED,
)
from cohort.release.consortium import (
    STATUS_WITHHELD,
    ConsortiumTotals,
    CountLayout,
    decode,
    layout_cells,
    noise_sensitivity,
    release_totals,
)
from cohort.secure_masks import MOD_RANGE, add_mod, mask, noise_sd
from fl_server.agreement import Agreement, AgreementRule, SiteAnswer, agree, apply_totals


@dataclass(frozen=True)
class SecureSettings:
    """The coordinator's settings for secure totals (``disclosure.secure_*`` in the config tree)."""

    enabled: bool = True
    min_sites: int = 3
    timeout: float = 120.0
    requested_min_cell: int | None = None
    subsets: tuple[str, ...] | None = None  # sum only these subsets (no distributions); None: everything

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SecureSettings:
        disclosure, fed = cfg.get("disclosure", {}), cfg.get("federation", {})
        return cls(enabled=bool(disclosure.get("secure_totals", True)),
                   min_sites=int(disclosure.get("secure_min_sites", 3)),
                   timeout=float(fed.get("query_timeout_s", 120)),
                   requested_min_cell=disclosure.get("requested_min_cell_size"))


@dataclass
class _Joined:
    site_id: str
    pk1: bytes
    pk2: bytes
    min_cell: int
    min_sites: int
    signature: bytes
    exact: str
    epsilon: float
    dp: int

    @classmethod
    def from_reply(cls, r: dict[str, Any]) -> _Joined:
        return cls(str(r[KEY_SITE_ID]), bytes(r[KEY_PK1]), bytes(r[KEY_PK2]), int(r[KEY_MIN_CELL]),
                   int(r[KEY_MIN_SITES]), bytes(r[KEY_SIGNATURE]), str(r[KEY_EXACT_CELLS]), float(r[KEY_EPSILON]),
                   int(r[KEY_DP]))


def threshold_for(n: int) -> int:
    """Shamir threshold for ``n`` sites: more than half (no two disjoint groups can both rebuild a site's
    secrets), so ``n - threshold`` sites may drop out."""
    return n // 2 + 1


class _Protocol:
    """One secure sum over ``sites`` (node id -> plain answer)."""

    def __init__(self, grid: Grid, sites: dict[int, SiteAnswer], spec_json: dict[str, Any],
                 layout: CountLayout, settings: SecureSettings) -> None:
        self.grid, self.sites, self.settings, self.layout = grid, sites, settings, layout
        self.spec_text = json.dumps(spec_json, sort_keys=True)
        self.request_id = uuid.uuid4().hex
        self.declined: dict[str, str] = {}
        self.dropped: dict[str, str] = {}  # site -> the stage it dropped out at (its counts are not in the sum)
        self.silent_at_unmask: list[str] = []  # contributors that sent no unmasking shares (their counts are in)
        self.threshold = 0

    def _send(self, action: str, per_node: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Send one stage; the replies of the sites still taking part, by node. Others are recorded once."""
        messages = [Message(content=RecordDict({SECAGG_RECORD: ConfigRecord({KEY_REQUEST_ID: self.request_id,
                                                                             **cfg})}),
                            dst_node_id=n, message_type=f"query.{action}") for n, cfg in per_node.items()]
        replies = list(self.grid.send_and_receive(messages, timeout=self.settings.timeout))
        out: dict[int, dict[str, Any]] = {}
        failed: dict[int, str] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in per_node:
                continue
            if msg.has_error():
                failed[node] = f"error: {msg.error.reason}"
                continue
            rec = dict(msg.content[SECAGG_RECORD])
            if rec.get(KEY_STATUS) == STATUS_JOINED:
                out[node] = rec
            else:
                failed[node] = f"{rec.get(KEY_STATUS)!s}: {rec.get(KEY_REASON, '')!s}"
        for node in per_node:
            if node not in out and node not in failed:
                failed[node] = f"no answer within {self.settings.timeout:.0f} s"
        for node, reason in failed.items():
            site = self.sites[node].site_id
            if action == SECAGG_SETUP_ACTION:
                self.declined[site] = reason
            elif action == SECAGG_UNMASK_ACTION:
                self.silent_at_unmask.append(site)
                log(WARNING, "secure totals: site %s sent no unmasking shares (%s)", site, reason)
            else:
                self.dropped.setdefault(site, f"{action.removeprefix('secagg_').replace('_', '-')}: {reason}")
                log(WARNING, "secure totals: site %s dropped out at %s (%s)", site, action, reason)
        return out

    def _withheld(self, reason: str) -> ConsortiumTotals:
        return ConsortiumTotals(STATUS_WITHHELD, reason=reason, declined=self.declined,
                                dropped=sorted(self.dropped), min_sites=self.settings.min_sites,
                                notes=self._dropout_notes())

    def _dropout_notes(self) -> list[str]:
        return [f"{site} dropped out at {why}" for site, why in sorted(self.dropped.items())]

    def _setup(self, nodes: list[int]) -> dict[int, _Joined]:
        self.threshold = threshold_for(len(nodes))
        cfg: dict[str, Any] = {KEY_SPEC_JSON: self.spec_text, KEY_LAYOUT_JSON: self.layout.to_json(),
                               KEY_SAMPLE_NUM: len(nodes), KEY_THRESHOLD: self.threshold,
                               KEY_MOD_RANGE: MOD_RANGE, KEY_MIN_SITES: self.settings.min_sites,
                               KEY_SITE_IDS: sorted(self.sites[n].site_id for n in nodes)}
        if self.settings.requested_min_cell is not None:
            cfg[KEY_REQUESTED_MIN_CELL] = int(self.settings.requested_min_cell)
        replies = self._send(SECAGG_SETUP_ACTION, dict.fromkeys(nodes, cfg))
        return {node: _Joined.from_reply(r) for node, r in replies.items()}

    def run(self) -> ConsortiumTotals:
        nodes = sorted(self.sites)
        if len(nodes) < self.settings.min_sites:
            return self._withheld(f"{len(nodes)} sites can take part, fewer than min_sites="
                                  f"{self.settings.min_sites}: no secure total")
        joined = self._setup(nodes)
        while len(joined) < len(nodes) and len(joined) >= self.settings.min_sites:
            # Some sites declined: set up again among those that joined (list, sample size and threshold change).
            nodes = sorted(joined)
            joined = self._setup(nodes)
        need = max([self.settings.min_sites, *(j.min_sites for j in joined.values())])
        if len(joined) < need:
            return self._withheld(f"{len(joined)} sites joined, fewer than min_sites={need}: no secure total")
        order = sorted(joined)
        js = [joined[n] for n in order]
        keys = {KEY_NODE_IDS: order, KEY_SITE_IDS: [j.site_id for j in js], KEY_PK1_LIST: [j.pk1 for j in js],
                KEY_PK2_LIST: [j.pk2 for j in js], KEY_SIGNATURES: [j.signature for j in js],
                KEY_EXACT_LIST: [j.exact for j in js], KEY_EPSILON_LIST: [j.epsilon for j in js],
                KEY_MIN_CELL_LIST: [j.min_cell for j in js], KEY_MIN_SITES_LIST: [j.min_sites for j in js],
                KEY_DP_LIST: [j.dp for j in js]}
        shared = self._send(SECAGG_SHARE_KEYS_ACTION, dict.fromkeys(order, keys))
        forward: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in shared}
        for src, rec in shared.items():
            for dst, ctxt in zip(rec[KEY_DESTINATIONS], rec[KEY_CIPHERTEXTS], strict=True):
                if int(dst) in forward:
                    forward[int(dst)][0].append(src)
                    forward[int(dst)][1].append(bytes(ctxt))
        threshold = self.threshold
        if len(shared) < max(threshold, need):
            return self._withheld(f"{len(shared)} sites shared keys, fewer than {max(threshold, need)}")
        collected = self._send(SECAGG_COLLECT_ACTION, {n: {KEY_SOURCES: forward[n][0], KEY_CIPHERTEXTS:
                                                           forward[n][1]} for n in shared})
        if len(collected) < max(threshold, need):
            return self._withheld(f"{len(collected)} sites' counts arrived, fewer than {max(threshold, need)}")
        active, dead = sorted(collected), sorted(set(shared) - set(collected))
        masked = np.zeros(self.layout.size, dtype=np.int64)
        for rec in collected.values():
            masked = add_mod(masked, np.array([int(v) for v in rec[KEY_MASKED_VECTOR]], dtype=np.int64))
        unmask_cfg = {KEY_ACTIVE_NODES: active, KEY_DEAD_NODES: dead}
        unmasked = self._send(SECAGG_UNMASK_ACTION, dict.fromkeys(active, unmask_cfg))
        shares: dict[int, list[bytes]] = {n: [] for n in active + dead}
        for rec in unmasked.values():
            for owner, share in zip(rec[KEY_SHARE_OWNERS], rec[KEY_SHARES], strict=True):
                if int(owner) in shares:
                    shares[int(owner)].append(bytes(share))
        short = [self.sites[n].site_id for n, s in shares.items() if len(s) < threshold]
        if short:
            return self._withheld(f"too few unmasking shares for {short} ({len(unmasked)} sites answered, "
                                  f"threshold {threshold})")
        total = self._unmask(masked, active, dead, shares, joined)
        signed = [int(v) - MOD_RANGE if int(v) >= MOD_RANGE // 2 else int(v) for v in total]  # noise may be < 0
        summed = decode(signed, self.layout)
        if summed.sites != len(active):
            return self._withheld(f"the sum counts {summed.sites} sites, {len(active)} contributed: inconsistent")
        out = release_totals(summed, [self.sites[n].released for n in active],  # type: ignore[misc]
                             min_cell=max(joined[n].min_cell for n in active), min_sites=need, protected=True)
        out.contributors = sorted(joined[n].site_id for n in active)
        out.dropped, out.declined = sorted(self.dropped), self.declined
        out.noise = self._noise_summary([joined[n] for n in active], [joined[n] for n in order])
        out.notes += self._dropout_notes()
        if self.dropped:
            out.notes.append(f"the total covers the other {len(active)} sites")
        if self.silent_at_unmask:
            out.notes.append(f"{', '.join(sorted(self.silent_at_unmask))} sent no unmasking shares; their counts "
                             "are in the total (the other sites' shares removed their masks)")
        return out

    def _noise_summary(self, contributors: list[_Joined], participants: list[_Joined]) -> dict[str, Any] | None:
        """Which cells carry the sites' noise and how much (every participant computes the same cells)."""
        public = [all(j.exact[i] == "1" for j in participants) for i in range(self.layout.size)]
        noisy = [not p for p in public]
        delta = noise_sensitivity(self.layout, noisy)
        if delta == 0:
            return None
        variance = 0.0
        for j in contributors:  # a DP site adds the full noise, another site a 1/min_sites share of it
            variance += noise_sd(delta / j.epsilon, 1.0 if j.dp else 1.0 / j.min_sites) ** 2
        cells = ["/".join(str(x) for x in c) for c, flag in zip(layout_cells(self.layout), noisy, strict=True)
                 if flag]
        return {"mechanism": "distributed discrete Laplace (Polya shares; full local noise from DP sites)",
                "epsilon": max(j.epsilon for j in contributors), "sensitivity": delta,
                "sd": round(variance ** 0.5, 3), "cells": cells}

    def _unmask(self, masked: np.ndarray, active: list[int], dead: list[int], shares: dict[int, list[bytes]],
                joined: dict[int, _Joined]) -> np.ndarray:
        size = self.layout.size
        for n in active:  # remove every contributor's private mask
            masked = add_mod(masked, mask(combine_shares(shares[n][:self.threshold]), size), -1)
        for d in dead:  # rebuild the pairwise masks the contributors added for a site that dropped out
            sk1 = bytes_to_private_key(combine_shares(shares[d][:self.threshold]))
            for u in active:
                pairwise = mask(generate_shared_key(sk1, bytes_to_public_key(joined[u].pk1)), size)
                masked = add_mod(masked, pairwise, -1 if u > d else 1)
        return masked


def secure_totals(grid: Grid, sites: Iterable[SiteAnswer], spec_json: dict[str, Any],
                  settings: SecureSettings) -> ConsortiumTotals:
    """Run one secure sum over ``sites`` (answered plain queries) and release it under the rules."""
    started = time.monotonic()
    candidates = {a.node_id: a for a in sites if a.released is not None}
    if not candidates:
        return ConsortiumTotals(STATUS_WITHHELD, reason="no site answered: no secure total",
                                min_sites=settings.min_sites)
    layout = CountLayout.from_released([a.released for a in candidates.values()],  # type: ignore[misc]
                                       settings.subsets)
    try:
        totals = _Protocol(grid, candidates, spec_json, layout, settings).run()
    except (ValueError, KeyError, TypeError, CohortError) as exc:  # a malformed reply: no total, the run goes on
        totals = ConsortiumTotals(STATUS_WITHHELD, reason=f"secure totals failed: {exc}", min_sites=settings.min_sites)
    totals.seconds = round(time.monotonic() - started, 3)
    log(INFO, "secure totals: %s over %s%s", totals.status, totals.contributors or "no sites",
        f" ({totals.reason})" if totals.reason else "")
    return totals


def agree_with_totals(grid: Grid, answers: list[SiteAnswer], rule: AgreementRule, spec_json: dict[str, Any],
                      cfg: dict[str, Any]) -> tuple[Agreement, ConsortiumTotals | None]:
    """The per-site agreement, then (when enabled) secure totals over the agreed sites and the total rule."""
    agreement = agree(answers, rule)
    settings = SecureSettings.from_config(cfg)
    if not settings.enabled:
        return apply_totals(agreement, None), None
    participants = {d.node_id for d in agreement.participants}
    if not participants:
        return apply_totals(agreement, None), ConsortiumTotals(
            STATUS_WITHHELD, reason="no site meets the per-site rule: no secure total", min_sites=settings.min_sites)
    # Only the agreed subset is summed: the fewer cells need noise, the less noise each carries.
    totals = secure_totals(grid, [a for a in answers if a.node_id in participants], spec_json,
                           replace(settings, subsets=(rule.subset,)))
    return apply_totals(agreement, totals), totals
