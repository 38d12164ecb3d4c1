"""``fl-server demo``: the whole job on one machine with Flower's simulation engine.

Synthesize sites, ingest each into its own store, negotiate the cohort (counts only), agree, train
with FedAvg, write the reports.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort.ingest.report import IngestReport
from cohort.protocol import CONFIG_RECORD, KEY_SERVER_ROUND, QUERY_ACTION

ProgressCallback = Callable[[str, int, int], None]
DEMO_LOG = "demo.log"  # in the run folder: what Flower, Ray and other libraries said during the run


@dataclass(frozen=True)
class DemoResult:
    out: Path
    ingest_reports: dict[str, IngestReport]
    report_json: Path
    stage_seconds: dict[str, float]  # wall time of synthesis, ingest (all sites) and federation
    log: Path  # the libraries' log of the run (Flower's messages, Python warnings)


def quiet_flower_env() -> None:
    """Flower settings for local runs: no dependency installs, update checks or telemetry."""
    from cohort.protocol import FLOWER_ENV_DEFAULTS

    for key, value in FLOWER_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@contextmanager
def library_output_to(log_path: Path) -> Iterator[None]:
    """Flower's log and Python warnings go to ``log_path`` inside the block, not to the terminal.

    The demo's terminal shows the project's own progress bars and tables. What the libraries say
    (Flower's "DEPRECATED FEATURE" notice for ``run_simulation``, which has no in-process successor;
    Ray's accelerator FutureWarning) is kept in the run's log file, with the project's own log lines
    (negotiation, rounds) and any error a site or the ServerApp logs.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    flwr_logger = logging.getLogger("flwr")
    consoles = [h for h in flwr_logger.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    for h in consoles:
        flwr_logger.removeHandler(h)
    flwr_logger.addHandler(handler)

    def to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
               file: object = None, line: str | None = None) -> None:
        handler.emit(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                       warnings.formatwarning(message, category, filename, lineno, line).rstrip(),
                                       None, None))

    try:
        with warnings.catch_warnings():
            warnings.showwarning = to_log
            yield
    finally:
        flwr_logger.removeHandler(handler)
        for h in consoles:
            flwr_logger.addHandler(h)
        handler.close()


RAY_SESSION_LOGS = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "session_latest" / "logs"


def append_ray_worker_logs(log_path: Path, since: float, logs_dir: Path = RAY_SESSION_LOGS) -> int:
    """Append what Ray's workers wrote during the run (files changed after ``since``) to ``log_path``;
    returns the number of files copied (0 when Ray kept no logs there)."""
    files = sorted(p for p in logs_dir.glob("worker-*") if p.suffix in (".out", ".err")
                   and p.stat().st_mtime >= since and p.stat().st_size > 0) if logs_dir.is_dir() else []
    with open(log_path, "a", encoding="utf-8") as out:
        for p in files:
            out.write(f"--- Ray worker log {p.name} ---\n")
            out.write(p.read_text(encoding="utf-8", errors="replace"))
    return len(files)


class ProgressGrid:
    """A Grid that forwards everything and reports every exchange with the sites as progress.

    Negotiation (and any other query) gets a bar of sites answered; each FedAvg round one bar of
    train and evaluate replies. Works on any strategy that talks to the sites through
    ``send_and_receive`` (Flower's do).
    """

    def __init__(self, grid: Any, progress: ProgressCallback, rounds: int) -> None:
        self._grid = grid
        self._progress = progress
        self._rounds = rounds
        self._round_done: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        if not messages:
            return list(self._grid.send_and_receive(messages, timeout=timeout))
        kind = str(messages[0].metadata.message_type)
        config = messages[0].content.get(CONFIG_RECORD) if kind in ("train", "evaluate") else None
        server_round = int(config[KEY_SERVER_ROUND]) if config is not None and KEY_SERVER_ROUND in config else None
        if server_round is None:
            stage, total, done = ("negotiation (sites answered)" if kind == f"query.{QUERY_ACTION}"
                                  else f"{kind} (sites answered)"), len(messages), 0
        else:  # one bar per round: the train replies, then the evaluate replies
            stage, total = f"round {server_round}/{self._rounds} (train + evaluate replies)", 2 * len(messages)
            done = self._round_done.get(server_round, 0)
        self._progress(stage, done, total)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if server_round is not None:
            self._round_done[server_round] = done + len(replies)
        self._progress(stage, done + len(replies), total)
        return replies


def run_demo(out: Path, *, sites: int = 4, patients: int | list[int] = 120, rounds: int | None = None, seed: int = 0,
             overrides: str = "", progress: ProgressCallback | None = None) -> DemoResult:
    """Synthesize, ingest and federate; returns the ingest reports and the path of report.json.

    ``rounds`` None keeps the configured ``federation.rounds`` (after ``overrides``).
    """
    quiet_flower_env()
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium
    from fl_client.client_app import build_client_app
    from fl_server.config import compose_config
    from fl_server.federation import RunSettings, run_federation
    from fl_server.server_app import build_server_app

    out.mkdir(parents=True, exist_ok=True)
    synth_dir = out / "sites"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    written = synthesize_consortium(synth_dir, sites, patients, seed,
                                    (lambda d, i, n: progress(f"synth {d}", i, n)) if progress else None)
    seconds["synthesis"] = time.perf_counter() - t0
    reports: dict[str, IngestReport] = {}
    for s in written:
        site = load_site_config(s.site_config)
        site_progress = (lambda d, i, n, sid=s.site_id: progress(f"ingest {sid}: {d}", i, n)) if progress else None
        reports[s.site_id] = ingest_folder(s.raw_dir, site.store_path(), site, progress=site_progress)
        reports[s.site_id].write(s.folder / "ingest_report.json")
    seconds["ingest"] = time.perf_counter() - t0 - seconds["synthesis"]
    run_out = out / "run"
    run_overrides = " ".join(x for x in ("" if rounds is None else f"federation.rounds={rounds}", f"seed={seed}",
                                         overrides) if x)
    rounds = int(compose_config(None, run_overrides)["federation"]["rounds"])  # for the progress bars
    settings = RunSettings(overrides=run_overrides,
                           out_dir=str(run_out), expected_sites=sites, wait_s=120)
    server_app = build_server_app(settings)
    if progress is not None:
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            run_federation(ProgressGrid(grid, progress, rounds), settings)  # type: ignore[arg-type]

    log = run_out / DEMO_LOG
    started = time.time()
    with library_output_to(log):
        # The ClientApps run in Ray workers: their output (MONAI's codec notices, library warnings) is not
        # forwarded to this terminal but copied from Ray's worker logs into the run's log afterwards.
        run_simulation(server_app=server_app, client_app=build_client_app(synth_dir / "consortium.json"),
                       num_supernodes=sites, backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                                             "init_args": {"log_to_driver": False}})
    append_ray_worker_logs(log, since=started)
    seconds["federation"] = time.perf_counter() - t0 - seconds["synthesis"] - seconds["ingest"]
    return DemoResult(out, reports, run_out / "report.json", seconds, log)
