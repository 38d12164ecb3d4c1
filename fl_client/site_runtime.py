"""Where a ClientApp finds its site: node config on real deployments, a consortium file in simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cohort.errors import ConfigError
from cohort.siteconfig import SiteConfig, load_site_config

NODE_SITE_CONFIG = "site-config"  # node_config key: path of the site's site.yaml
NODE_PARTITION_ID = "partition-id"  # set by Flower's simulation engine
RUN_CONSORTIUM = "consortium"  # run_config key: consortium.json written by `cohort synth`


def consortium_site_configs(consortium: Path) -> list[Path]:
    """Site config paths listed in a consortium.json, in site order."""
    data = json.loads(consortium.read_text(encoding="utf-8"))
    return [consortium.parent / s["site_config"] for s in data["sites"]]


def resolve_site_config(node_config: dict[str, Any], run_config: dict[str, Any],
                        consortium: Path | None = None) -> SiteConfig:
    """The site of this node: ``site-config`` from the node config, else partition-id in the consortium."""
    if NODE_SITE_CONFIG in node_config:
        return load_site_config(Path(str(node_config[NODE_SITE_CONFIG])))
    path = consortium or (Path(str(run_config[RUN_CONSORTIUM])) if run_config.get(RUN_CONSORTIUM) else None)
    if path is None or NODE_PARTITION_ID not in node_config:
        raise ConfigError("this node has no site: start the SuperNode with --node-config "
                          "\"site-config='/path/site.yaml'\" (or, in simulation, set run config "
                          "'consortium' to a consortium.json)")
    configs = consortium_site_configs(path)
    pid = int(node_config[NODE_PARTITION_ID])
    if pid >= len(configs):
        raise ConfigError(f"partition {pid} has no site in {path} ({len(configs)} sites)")
    return load_site_config(configs[pid])
