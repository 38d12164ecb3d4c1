"""`fl-server demo` shows the project's own progress and results; the libraries' warnings go to the run's log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fl_server.demo import DEMO_LOG, append_ray_worker_logs, library_output_to


def test_flower_log_and_python_warnings_go_to_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flwr.common.logger import log, warn_deprecated_feature

    log_path = tmp_path / "run" / DEMO_LOG
    with library_output_to(log_path):
        warn_deprecated_feature("`run_simulation` in a test")
        log(logging.INFO, "negotiation: sending cohort 'x' to 2 sites")
        warnings.warn("Tip: In future versions of Ray ...", FutureWarning, stacklevel=1)
    captured = capsys.readouterr()
    assert "DEPRECATED" not in captured.out + captured.err
    assert "FutureWarning" not in captured.out + captured.err
    text = log_path.read_text()
    assert "DEPRECATED FEATURE: `run_simulation` in a test" in text
    assert "negotiation: sending cohort 'x' to 2 sites" in text
    assert "FutureWarning: Tip: In future versions of Ray" in text


def test_outside_the_block_flower_logs_to_the_terminal_again(tmp_path: Path) -> None:
    flwr_logger = logging.getLogger("flwr")
    before = list(flwr_logger.handlers)
    with library_output_to(tmp_path / DEMO_LOG):
        assert all(isinstance(h, logging.FileHandler) for h in flwr_logger.handlers)
    assert flwr_logger.handlers == before
    with pytest.warns(UserWarning, match="still reported"):  # warnings are reported normally again
        warnings.warn("still reported", UserWarning, stacklevel=1)


@pytest.mark.slow
def test_ray_worker_logs_of_the_run_are_appended_to_the_run_log(tmp_path: Path) -> None:
    logs = tmp_path / "ray-logs"
    logs.mkdir()
    (logs / "worker-old.err").write_text("from an earlier run\n")
    os.utime(logs / "worker-old.err", (1_000, 1_000))
    (logs / "worker-a.err").write_text("UserWarning: NvImgCodecPydicomReader: ...\n")
    (logs / "worker-a.out").write_text("")
    (logs / "raylet.out").write_text("not a worker\n")
    log = tmp_path / DEMO_LOG
    log.write_text("flwr INFO: round 1\n")
    assert append_ray_worker_logs(log, since=10_000, logs_dir=logs) == 1
    text = log.read_text()
    assert text.startswith("flwr INFO: round 1\n") and "NvImgCodecPydicomReader" in text
    assert "earlier run" not in text and "not a worker" not in text
    assert append_ray_worker_logs(log, since=10_000, logs_dir=tmp_path / "absent") == 0


def test_the_demo_terminal_has_no_dependency_warnings(tmp_path: Path) -> None:
    """A real (tiny) `fl-server demo`: about a minute on two cores."""
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"))
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-c", "from fl_server.cli import main; main()", "demo", "--sites", "2", "--patients", "24",
                           "--rounds", "1", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, terminal[-3000:]
    assert "ingest per site" in terminal and "demo finished" in terminal  # the project's own output
    for noise in ("DEPRECATED FEATURE", "FutureWarning", "warnings.warn(", "UserWarning", "(ClientAppActor", "nvImageCodec"):
        assert noise not in terminal, terminal
    log = (out / "run" / DEMO_LOG).read_text()
    assert "DEPRECATED FEATURE" in log  # kept, not lost
    assert "negotiation: sending cohort 'pacemaker_tavi' to 2 sites" in log
