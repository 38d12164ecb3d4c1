"""``fl-server demo``: the whole job on one machine with Flower's simulation engine.

Synthesize sites, ingest each into its own store, negotiate the cohort (counts only), agree, train
with FedAvg, write the reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cohort.ingest.report import IngestReport

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoResult:
    out: Path
    ingest_reports: dict[str, IngestReport]
    report_json: Path


def quiet_flower_env() -> None:
    """Flower settings for local runs: no dependency installs, update checks or telemetry."""
    from cohort.protocol import FLOWER_ENV_DEFAULTS

    for key, value in FLOWER_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def run_demo(out: Path, *, sites: int = 4, patients: int | list[int] = 120, rounds: int = 3, seed: int = 0,
             overrides: str = "", progress: ProgressCallback | None = None) -> DemoResult:
    """Synthesize, ingest and federate; returns the ingest reports and the path of report.json."""
    quiet_flower_env()
    from flwr.simulation import run_simulation

    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium
    from fl_client.client_app import build_client_app
    from fl_server.federation import RunSettings
    from fl_server.server_app import build_server_app

    out.mkdir(parents=True, exist_ok=True)
    synth_dir = out / "sites"
    written = synthesize_consortium(synth_dir, sites, patients, seed, progress)
    reports: dict[str, IngestReport] = {}
    for s in written:
        site = load_site_config(s.site_config)
        reports[s.site_id] = ingest_folder(s.raw_dir, site.store_path(), site, progress=progress)
        reports[s.site_id].write(s.folder / "ingest_report.json")
    run_out = out / "run"
    settings = RunSettings(overrides=f"federation.rounds={rounds} seed={seed} {overrides}".strip(),
                           out_dir=str(run_out), expected_sites=sites, wait_s=120)
    run_simulation(server_app=build_server_app(settings),
                   client_app=build_client_app(synth_dir / "consortium.json"), num_supernodes=sites,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return DemoResult(out, reports, run_out / "report.json")
