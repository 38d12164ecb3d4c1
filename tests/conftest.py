"""Shared fixtures: a small synthesized and ingested consortium, built once per test session."""

from __future__ import annotations

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
