"""``fl-server launch``: submit the project's Flower app to a real deployment (SuperLink + SuperNodes).

What it does, in the order a coordinator would by hand:

1. resolves the cohort (``configs/cohort/<name>.yaml`` or its name) and checks that the Hydra config
   composes with the overrides, so a typo fails here and not on the SuperLink;
2. writes (or reuses) a connection in ``$FLWR_HOME/config.toml`` (``[superlink.<name>]`` with
   ``address`` and ``root-certificates``, or ``insecure = true`` when asked);
3. builds the app bundle (FAB) the way ``flwr run`` does and prints its SHA-256, the pin sites list in
   ``site.yaml`` ``app_release`` (optionally saving the FAB, e.g. for release signers);
4. writes the run config (the flat selectors of ``[tool.flwr.app.config]``, plus ``release-signature``
   when given) to a TOML file and runs ``flwr run <project root> <connection> --run-config FILE --stream``,
   streaming the run's logs;
5. asks the SuperLink for the run's final status and the digest of the FAB it stored, and says where
   the reports are.

The reports are written by the ServerApp, i.e. on the SuperLink's host, into ``out-dir``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cohort.errors import CohortError, ConfigError
from cohort.protocol import FLOWER_ENV_DEFAULTS
from fl_client.app_release import RUN_CONFIG_SIGNATURE, build_fab, fab_sha256
from fl_server.config import CONFIG_DIR, compose_run_config

PROJECT_ROOT = CONFIG_DIR.parent  # the Flower app: pyproject.toml with [tool.flwr.app]
RUN_OK = "finished:completed"
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")
_RUN_ID = re.compile(r"Successfully started run (\d+)")



class LaunchError(RuntimeError, CohortError):
    """The run could not be submitted, or it ended without its reports."""


@dataclass(frozen=True)
class LaunchSettings:
    """One launch: which cohort, where to, with which overrides, into which out-dir."""

    cohort: str
    connection: str
    overrides: str = ""
    out_dir: Path | None = None
    expected_sites: int = 0
    wait_s: float = 60.0
    root_certificates: Path | None = None
    insecure: bool = False
    release_signature: str = ""  # base64 Ed25519 signature(s) over the FAB digest (fl-server release sign)
    save_fab: Path | None = None  # write the submitted FAB here


@dataclass(frozen=True)
class LaunchResult:
    run_id: str | None
    status: str | None
    out_dir: Path
    report_json: Path
    returncode: int
    fab_sha256: str | None = None  # the digest of the FAB the SuperLink stored for the run (else: built here)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == RUN_OK


def resolve_cohort(value: str, config_dir: Path = CONFIG_DIR) -> str:
    """The cohort's name in ``configs/cohort`` from a name or a path to one of its YAML files.

    The cohort must live in the project's ``configs/cohort``: the app bundle (FAB) that ``flwr run``
    sends to the SuperLink carries ``configs/``, and the ServerApp composes the config from there.
    """
    available = sorted(p.stem for p in (config_dir / "cohort").glob("*.yaml"))
    looks_like_path = value.endswith((".yaml", ".yml")) or os.sep in value
    name = Path(value).stem if looks_like_path else value
    if looks_like_path:
        path = Path(value).resolve()
        if path.parent != (config_dir / "cohort").resolve():
            raise ConfigError(f"--cohort {value}: a launched cohort must be in {config_dir / 'cohort'} (the app "
                              f"bundle ships configs/); copy it there and pass its name, e.g. --cohort {name}")
    if name not in available:
        raise ConfigError(f"--cohort {value!r}: no {config_dir / 'cohort' / (name + '.yaml')}; "
                          f"available cohorts: {', '.join(available)}")
    return name


def is_address(connection: str) -> bool:
    return bool(_ADDRESS.match(connection))


def connection_name(address: str) -> str:
    """A stable connection name for an address: ``fedcohort-127-0-0-1-9093``."""
    return "fedcohort-" + re.sub(r"[^A-Za-z0-9]+", "-", address).strip("-")


def flwr_home(env: dict[str, str] | None = None) -> Path:
    """``$FLWR_HOME`` or Flower's default ``~/.flwr``."""
    env = dict(os.environ) if env is None else env
    return Path(env["FLWR_HOME"]) if env.get("FLWR_HOME") else Path.home() / ".flwr"


def ensure_connection(connection: str, *, root_certificates: Path | None = None, insecure: bool = False,
                      home: Path | None = None) -> str:
    """The connection's name in ``$FLWR_HOME/config.toml``; an address gets a ``[superlink.<name>]`` entry.

    A name must already exist there (``flwr`` manages that file; other entries are kept as they are).
    """
    import tomli_w

    path = (home or flwr_home()) / "config.toml"
    data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    links: dict[str, Any] = data.setdefault("superlink", {})
    if not is_address(connection):
        known = sorted(k for k, v in links.items() if isinstance(v, dict))
        if connection not in known:
            raise ConfigError(f"--connection {connection!r} is neither HOST:PORT nor a connection in {path} "
                              f"(known: {', '.join(known) or 'none'})")
        if root_certificates is not None or insecure:
            raise ConfigError(f"--connection {connection!r} is a named connection: its TLS settings live in "
                              f"{path}; drop --root-certificates/--insecure or pass the address instead")
        return connection
    if insecure and root_certificates is not None:
        raise ConfigError("--insecure and --root-certificates exclude each other: TLS is either on or off")
    if not insecure and root_certificates is None:
        raise ConfigError("TLS is on by default: pass --root-certificates CA.crt (the consortium CA that signed "
                          "the SuperLink's certificate), or --insecure for a local demo without TLS")
    entry: dict[str, Any] = {"address": connection}
    if insecure:
        entry["insecure"] = True
    else:
        assert root_certificates is not None
        if not root_certificates.is_file():
            raise ConfigError(f"--root-certificates {root_certificates}: file not found")
        entry["root-certificates"] = str(root_certificates.resolve())
    name = connection_name(connection)
    links[name] = entry
    links.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return name


def run_config(settings: LaunchSettings, cohort: str, out_dir: Path) -> dict[str, Any]:
    """The run config: the flat selectors of ``[tool.flwr.app.config]`` in pyproject.toml."""
    values: dict[str, Any] = {"cohort-name": cohort, "hydra-overrides": settings.overrides, "out-dir": str(out_dir),
                              "expected-sites": int(settings.expected_sites), "wait-s": int(settings.wait_s)}
    if settings.release_signature:
        values[RUN_CONFIG_SIGNATURE] = settings.release_signature
    return values


def inline_run_config(values: dict[str, Any]) -> str:
    """The same values as one ``--run-config "k='v' ..."`` string (for the log and the docs)."""
    parts = []
    for k, v in values.items():
        parts.append(f"{k}={_quote(v) if isinstance(v, str) else json.dumps(v)}")
    return " ".join(parts)


def _quote(s: str) -> str:
    return f"'{s}'" if "'" not in s else f'"{s}"'


def flower_environment() -> dict[str, str]:
    env = dict(os.environ)
    for k, v in FLOWER_ENV_DEFAULTS.items():
        env.setdefault(k, v)
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join(p for p in (bindir, env.get("PATH", "")) if p)
    return env


def flwr_executable() -> str:
    local = Path(sys.executable).parent / "flwr"
    return str(local) if local.exists() else "flwr"


def launch(settings: LaunchSettings, echo: Callable[[str], None] = print,
           project_root: Path = PROJECT_ROOT) -> LaunchResult:
    """Submit the run, stream its logs until it ends, and return its status and report location."""
    cohort = resolve_cohort(settings.cohort)
    compose_run_config(cohort, settings.overrides)  # fail here on a bad setting, not on the SuperLink
    out_dir = (settings.out_dir or Path("fl-out") / cohort).resolve()
    env = flower_environment()
    conn = ensure_connection(settings.connection, root_certificates=settings.root_certificates,
                             insecure=settings.insecure, home=flwr_home(env))
    values = run_config(settings, cohort, out_dir)
    fab = build_fab(project_root)  # the same builder and files as flwr run below: the same bytes
    digest = fab_sha256(fab)
    echo(f"app bundle (FAB): sha256 {digest} ({len(fab)} bytes); sites pin it in site.yaml app_release.sha256")
    if settings.save_fab is not None:
        settings.save_fab.write_bytes(fab)
        echo(f"app bundle written to {settings.save_fab}")
    flwr = flwr_executable()
    with tempfile.TemporaryDirectory(prefix="fedcohort-launch-") as tmp:
        rc_file = Path(tmp) / "run-config.toml"
        import tomli_w

        rc_file.write_text(tomli_w.dumps(values), encoding="utf-8")
        # A TOML file rather than the inline form: Flower's inline parser cannot carry quotes inside values.
        cmd = [flwr, "run", str(project_root), conn, "--run-config", str(rc_file), "--stream"]
        echo(f"$ flwr run {project_root} {conn} --run-config {shlex.quote(inline_run_config(values))} --stream")
        run_id, returncode = _stream(cmd, env, echo)
    status, stored = _run_status(flwr, conn, run_id, env) if run_id else (None, None)
    if stored and stored != digest:
        echo(f"warning: the SuperLink stored FAB sha256 {stored} for run {run_id}, not {digest}: the project "
             "folder changed while launching; sites pinned to either refuse the other")
    return LaunchResult(run_id, status, out_dir, out_dir / "report.json", returncode, stored or digest)


def _stream(cmd: list[str], env: dict[str, str], echo: Callable[[str], None]) -> tuple[str | None, int]:
    run_id: str | None = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            echo(line.rstrip("\n"))
            if run_id is None and (m := _RUN_ID.search(line)):
                run_id = m.group(1)
        return run_id, proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        if run_id:  # the run lives on the SuperLink; leaving would not stop it
            conn = cmd[3]
            subprocess.run([cmd[0], "stop", run_id, conn], env=env, check=False)
        raise


def _run_status(flwr: str, conn: str, run_id: str, env: dict[str, str]) -> tuple[str | None, str | None]:
    """The run's status and the digest of the FAB the SuperLink stored for it."""
    out = subprocess.run([flwr, "ls", conn, "--run-id", run_id, "--format", "json"], capture_output=True,
                         text=True, env=env, check=False)
    try:  # flwr may print a "Using SuperLink" line before the JSON
        runs = json.loads(out.stdout[out.stdout.find("{"):]).get("runs", [])
    except (json.JSONDecodeError, AttributeError):
        return None, None
    if not runs:
        return None, None
    return str(runs[0].get("status")), (str(runs[0]["fab-hash"]) if runs[0].get("fab-hash") else None)
