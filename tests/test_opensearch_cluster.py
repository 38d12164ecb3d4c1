"""A two-node OpenSearch cluster on loopback survives losing a node (the bundled launcher, two processes).

node-1 is cluster-manager and data node, node-2 a data node; the conformance corpus is synced into an
index of 2 shards with 1 replica, so each node holds a full copy. node-2 is killed with SIGKILL: node-1
promotes its replicas and answers every conformance count exactly as before (and as the case states);
node-2 is started again on its data folder and the cluster returns to green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.errors import SpecError
from cohort.index.opensearch_backend import OpenSearchBackend
from cohort.spec.model import CohortSpec
from tests.conformance_cases import CASES, build_duck_index
from tests.test_index_conformance import check

INDEX = "cohort-cluster-test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from cohort.index.opensearch_node import NodeUnavailable, start_cluster

    try:
        c = start_cluster(tmp_path_factory.mktemp("opensearch-cluster"),
                          [None, ["data", "ingest"]], heap="384m")
    except NodeUnavailable as exc:
        if os.environ.get("COHORT_REQUIRE_OPENSEARCH") == "1":
            pytest.fail(f"bundled OpenSearch node unavailable: {exc}")
        pytest.skip(f"bundled OpenSearch node unavailable: {exc}")
    try:
        yield c
    finally:
        c.stop()


def _answers(backend: OpenSearchBackend) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in CASES:
        spec = CohortSpec.model_validate(case.spec)
        try:
            counts = backend.evaluate(spec)
        except SpecError as exc:
            out[case.id] = f"SpecError: {exc}"
            continue
        check(case, counts)
        out[case.id] = counts.to_json()
    return out


def _shards(url: str) -> list[dict[str, str]]:
    from cohort.index.opensearch_node import http_json

    return list(http_json(f"{url}/_cat/shards/{INDEX}?format=json"))


def test_two_nodes_survive_sigkill_of_one(cluster, tmp_path: Path) -> None:
    from cohort.index.opensearch_node import wait_for_health

    survivor, victim = cluster.nodes
    backend = OpenSearchBackend.connect(survivor.url, index_name=INDEX, timeout=60)
    backend.recreate(shards=2, replicas=1)
    with build_duck_index() as duck:
        assert backend.index_from_duck(duck) == 14
    health = wait_for_health(survivor.url, "green", nodes=2)
    assert health["active_shards"] == 4 and health["number_of_data_nodes"] == 2
    shards = _shards(survivor.url)
    assert {s["node"] for s in shards} == {"node-1", "node-2"}
    assert sum(1 for s in shards if s["node"] == "node-2") == 2  # one copy of each shard per node
    before = _answers(backend)
    assert sum(1 for a in before.values() if isinstance(a, dict)) >= 50

    victim.kill()  # SIGKILL: no clean shutdown, no shard hand-off
    assert not victim.alive()
    health = wait_for_health(survivor.url, "yellow", nodes=1, timeout=120)
    assert health["unassigned_shards"] == 2 and health["active_primary_shards"] == 2
    assert {s["node"] for s in _shards(survivor.url) if s["state"] == "STARTED"} == {"node-1"}
    assert _answers(backend) == before

    victim.restart()
    health = wait_for_health(survivor.url, "green", nodes=2, timeout=180)
    assert health["active_shards"] == 4
    assert _answers(OpenSearchBackend.connect(victim.url, index_name=INDEX, timeout=60)) == before
    backend.drop()
