"""Shared fixtures: a small synthesized and ingested consortium, built once per test session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cohort.siteconfig import SiteConfig, load_site_config


@dataclass(frozen=True)
class IngestedSite:
    """One synthetic site after `cohort ingest`: its config, raw folder, store and truth table."""

    site: SiteConfig
    folder: Path
    raw_dir: Path
    store: Path


@pytest.fixture(scope="session")
def ingested_sites(tmp_path_factory: pytest.TempPathFactory) -> list[IngestedSite]:
    """Two synthetic sites (DICOM ECG / GE MUSE, 10 patients each), synthesized and ingested."""
    from cohort.ingest.run import ingest_folder
    from cohort.synth.site import synthesize_consortium

    out = tmp_path_factory.mktemp("consortium")
    sites = []
    for written in synthesize_consortium(out, 2, 10, seed=7):
        cfg = load_site_config(written.site_config)
        ingest_folder(written.raw_dir, cfg.store_path(), cfg)
        sites.append(IngestedSite(cfg, written.folder, written.raw_dir, cfg.store_path()))
    return sites


@pytest.fixture(scope="session")
def opensearch_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live OpenSearch: $COHORT_OPENSEARCH_URL if set, else the bundled node, started for the session.

    The node (deploy/opensearch-node, docs/store.md) is built once with Maven, runs with its own data
    folder on 127.0.0.1 and is stopped by its pid at the end of the session. Where it cannot be built or
    started the tests skip with the reason, unless $COHORT_REQUIRE_OPENSEARCH=1 (.ci/run): then they fail.
    """
    url = os.environ.get("COHORT_OPENSEARCH_URL")
    if url:
        yield url
        return
    from cohort.index.opensearch_node import NodeUnavailable, build, start_node, wait_for_health

    t0 = time.monotonic()
    try:
        classpath = build()
        built = time.monotonic() - t0
        node = start_node(tmp_path_factory.mktemp("opensearch-node"), classpath=classpath)
    except NodeUnavailable as exc:
        if os.environ.get("COHORT_REQUIRE_OPENSEARCH") == "1":
            pytest.fail(f"bundled OpenSearch node unavailable: {exc}")
        pytest.skip(f"bundled OpenSearch node unavailable: {exc}")
    try:
        wait_for_health(node.url, "green")
        print(f"\n[opensearch] bundled node {node.url} pid {node.pid}: build/cache {built:.1f} s, "
              f"start {node.started_in:.1f} s, total {time.monotonic() - t0:.1f} s")
        yield node.url
    finally:
        node.stop()
