"""Compose the coordinator's Hydra config tree (``configs/``) without ``@hydra.main``.

Flower's run_config carries only flat scalars, so a run names a few selectors (``cohort-name``,
``hydra-overrides``) and the ServerApp composes the full tree here; clients receive resolved values.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cohort.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose_config(cohort: str | None = None, overrides: str | list[str] = "",
                   config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """The resolved config as a plain dict; ``overrides`` in Hydra syntax (string or list)."""
    if not config_dir.is_dir():
        raise ConfigError(f"config tree not found at {config_dir}; pass the project's configs/ folder")
    items = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
    if cohort:
        items = [f"cohort={cohort}", *items]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name="config", overrides=items)
    except Exception as exc:  # Hydra raises several types; all mean a bad selector or override
        available = sorted(p.stem for p in (config_dir / "cohort").glob("*.yaml"))
        raise ConfigError(f"cannot compose the config with overrides {items}: {exc}. "
                          f"Available cohorts: {', '.join(available)}") from None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return {str(k): v for k, v in resolved.items()}


def compose_run_config(cohort: str | None = None, overrides: str | list[str] = "") -> dict[str, Any]:
    """``compose_config`` plus the settings a run would otherwise only trip over later, checked now.

    The training and model settings every site will use (``fl_client.local.TrainingSettings.check``),
    the federation strategy (``fl_server.strategy.StrategySettings``) and ``federation.site_calibration``
    fail here, on the coordinator, before any message goes out, not at every site in round 1.
    """
    from fl_client.final_model import check_site_calibration
    from fl_client.local import TrainingSettings  # torch and MONAI: loaded only when a run is checked
    from fl_server.strategy import StrategySettings

    cfg = compose_config(cohort, overrides)
    TrainingSettings(model=cfg["model"], training=cfg["training"], seed=int(cfg["seed"])).check()
    StrategySettings.from_config(cfg["federation"])
    check_site_calibration(str(cfg["federation"].get("site_calibration")))
    return cfg
