"""Run deploy/compose.yaml's entrypoints as plain processes: SuperLink, site SuperNodes, launch.

Docker cannot run on every machine (CI here, for one), so this launcher takes the ``command`` of the
compose services ``superlink``, ``site-1-client`` and ``launch`` *from compose.yaml itself* and runs
them with the host folders of their volumes in place of the container paths:

* ``${FEDCOHORT_DATA:-./data}`` -> the data folder given here (same layout as in compose);
* a container path (``/certs/ca.crt``, ``/site/site.yaml``, ``/keys/node_key``, ``/runs/...``) -> the
  host side of the volume that mounts it; for site services ``site-1`` in host paths -> the site's name;
* ``superlink:9093`` / ``--host 0.0.0.0 --port 9093`` -> 127.0.0.1 and a free port; each SuperNode gets
  its own ``--runtime-port`` (in compose every container has its own loopback).

With ``tls=False`` (benchmarks, quick demos) the TLS and node-key flags are replaced by ``--insecure``.

Data layout (shared with compose)::

    DATA/certs/ca.crt, superlink.crt, superlink.key       deploy/make_certs.sh
    DATA/certs/sites/<site>/node_key, node_key.pub
    DATA/sites/<site>/site.yaml, raw/, store/             cohort synth + cohort ingest (or your site)
    DATA/coordinator/state, runs, flwr-home               SuperLink database, reports, Flower config

Command line (a whole TLS demo on loopback, then everything is stopped)::

    python deploy/local.py demo --data /tmp/fed --sites 3 --patients 25 --rounds 1

Processes are started in their own session and stopped by their process group id, never by name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = DEPLOY_DIR.parent
COMPOSE = DEPLOY_DIR / "compose.yaml"
MAKE_CERTS = DEPLOY_DIR / "make_certs.sh"
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere: the project's packages
    sys.path.insert(0, str(PROJECT_ROOT))
TEMPLATE_SITE = "site-1"  # the compose site whose client service is the template for every site
_DATA_VAR = re.compile(r"\$\{FEDCOHORT_DATA(?::-[^}]*)?\}")
_TLS_FLAGS_WITH_VALUE = {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--root-certificates", "--auth-key"}
_TLS_FLAGS = {"--enable-supernode-auth"}


class DeploymentError(RuntimeError):
    """A process of the local deployment did not come up or ended badly; the message names its log."""


@dataclass(frozen=True)
class Service:
    """A compose service as far as a process needs it: its command and its bind mounts."""

    name: str
    command: list[str]
    mounts: list[tuple[str, str]]  # (host template, container path)


def load_compose(path: Path = COMPOSE) -> dict[str, Service]:
    """The services of ``compose.yaml`` (YAML anchors and ``<<`` merges resolved)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    services: dict[str, Service] = {}
    for name, svc in data["services"].items():
        mounts = []
        for vol in svc.get("volumes", []):
            # the ${FEDCOHORT_DATA:-./data} default contains a colon: hide it before splitting
            host, container = _DATA_VAR.sub("@DATA@", str(vol)).split(":")[:2]
            mounts.append((host.replace("@DATA@", "${FEDCOHORT_DATA}"), container))
        command = svc.get("command")
        services[name] = Service(name, [str(c) for c in command] if isinstance(command, list) else [], mounts)
    return services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def map_paths(command: list[str], mounts: list[tuple[str, str]], data: Path, site: str | None = None) -> list[str]:
    """Replace container paths in ``command`` by the host paths their volumes mount (longest first)."""
    table = []
    for host, container in mounts:
        h = _DATA_VAR.sub(str(data), host)
        if site is not None:
            h = h.replace(TEMPLATE_SITE, site)
        table.append((container.rstrip("/"), h.rstrip("/")))
    table.sort(key=lambda t: len(t[0]), reverse=True)
    out = []
    for arg in command:
        for container, host in table:
            if arg == container or arg.startswith(container + "/"):
                arg = host + arg[len(container):]
                break
        out.append(arg)
    return out


def set_option(command: list[str], flag: str, value: str) -> list[str]:
    """``command`` with ``flag``'s value replaced (appended when absent)."""
    cmd = list(command)
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value
    else:
        cmd += [flag, value]
    return cmd


def insecure(command: list[str]) -> list[str]:
    """``command`` without TLS and node-key flags, with ``--insecure``."""
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
            continue
        if arg in _TLS_FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg in _TLS_FLAGS:
            continue
        out.append(arg)
    return [*out, "--insecure"]


def make_certs(certs: Path, sites: list[str], hosts: tuple[str, ...] = ("superlink",)) -> None:
    """Run deploy/make_certs.sh (CA, SuperLink certificate, one node key pair per site)."""
    cmd = ["bash", str(MAKE_CERTS), str(certs), "--sites", " ".join(sites)]
    for h in hosts:
        cmd += ["--host", h]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


PIN_PROJECT = "project"


def prepare_sites(data: Path, sites: int, patients: int | list[int], seed: int = 0,
                  min_cell_size: int | None = None, pin: str | None = PIN_PROJECT, ingest: bool = True) -> list[str]:
    """Synthesize ``sites`` sites into DATA/sites and ingest each into its store; returns the site names.

    ``ingest=False`` leaves the ingest to the caller (the container test runs it in the site image for
    some sites and on the host for another).

    ``min_cell_size`` sets the sites' own disclosure threshold (a site's choice; tiny demo sites need
    a low one to release any count at all). ``pin``: the app release the sites answer (``app_release``
    in site.yaml): the FAB digest of this project as ``fl-server launch`` submits it (``"project"``), a
    digest, or None (no pin: start such sites with ``allow_unpinned``).
    """
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    if pin == PIN_PROJECT:
        from fl_client.app_release import build_fab, fab_sha256

        pin = fab_sha256(build_fab(PROJECT_ROOT))
    written = synthesize_consortium(data / "sites", sites, patients, seed)
    names = []
    for s in written:
        if min_cell_size is not None or pin is not None:
            raw = yaml.safe_load(s.site_config.read_text(encoding="utf-8"))
            if min_cell_size is not None:
                raw.setdefault("disclosure", {})["min_cell_size"] = int(min_cell_size)
            if pin is not None:
                raw["app_release"] = {"sha256": [pin]}
            s.site_config.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
        if ingest:
            site = load_site_config(s.site_config)
            ingest_folder(s.raw_dir, site.store_path(), site).write(s.folder / "ingest_report.json")
        names.append(s.site_id)
    return names


def _env(flwr_home: Path) -> dict[str, str]:
    from fl_client.cli import flower_environment

    env = flower_environment()
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _executable(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 30) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


@dataclass
class LocalDeployment:
    """compose.yaml's coordinator and site services as local processes on loopback."""

    data: Path
    tls: bool = True
    compose: Path = COMPOSE
    port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = self.data.resolve()
        self.services = load_compose(self.compose)
        self.coordinator = self.data / "coordinator"
        self.logs = self.data / "logs"
        for d in (self.coordinator / "state", self.coordinator / "runs", self.coordinator / "flwr-home", self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.coordinator / "flwr-home"
        self._connection: str | None = None

    # --- commands (from compose.yaml) -------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _loopback(self, cmd: list[str]) -> list[str]:
        cmd = [self.address if re.fullmatch(r"superlink:\d+", a) else a for a in cmd]
        if "--host" in cmd:
            cmd = set_option(cmd, "--host", "127.0.0.1")
        if cmd and cmd[0] == "flower-superlink":
            cmd = set_option(cmd, "--port", str(self.port))
        cmd[0] = _executable(cmd[0])
        return cmd if self.tls else insecure(cmd)

    def superlink_command(self) -> list[str]:
        svc = self.services["superlink"]
        return self._loopback(map_paths(svc.command, svc.mounts, self.data))

    def site_command(self, site: str, key_name: str | None = None, runtime_port: int | None = None,
                     max_retries: int | None = None, allow_unpinned: bool = False) -> list[str]:
        svc = self.services[f"{TEMPLATE_SITE}-client"]
        cmd = map_paths(svc.command, svc.mounts, self.data, site)
        if key_name is not None and key_name != site and "--auth-key" in cmd:
            cmd = set_option(cmd, "--auth-key", str(self.data / "certs" / "sites" / key_name / "node_key"))
        cmd = self._loopback(cmd) + ["--runtime-port", str(runtime_port or free_port())]
        if max_retries is not None:
            cmd += ["--max-retries", str(max_retries)]
        if allow_unpinned:
            cmd.append("--allow-unpinned")
        return cmd

    def launch_command(self, cohort: str, overrides: str, out: Path, expected_sites: int,
                       wait_s: float = 120) -> list[str]:
        svc = self.services["launch"]
        mounts = svc.mounts + self.services["superlink"].mounts  # the ServerApp writes on the SuperLink host
        cmd = map_paths(svc.command, mounts, self.data)
        cmd = set_option(cmd, "--cohort", cohort)
        cmd = set_option(cmd, "--overrides", overrides)
        cmd = set_option(cmd, "--out", str(out))
        cmd = set_option(cmd, "--expected-sites", str(expected_sites))
        cmd = set_option(cmd, "--wait-s", str(int(wait_s)))
        return self._loopback(cmd)

    # --- processes --------------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str], flwr_home: Path) -> Proc:
        flwr_home.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(("$ " + " ".join(cmd) + "\n").encode())
            popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(flwr_home),
                                     cwd=self.coordinator, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def start_superlink(self, timeout: float = 90) -> Proc:
        proc = self._start("superlink", self.superlink_command(), self.flwr_home)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise DeploymentError(f"the SuperLink exited ({proc.popen.returncode}); {proc.log}:\n{proc.tail()}")
            if self.healthy():
                return proc
            time.sleep(0.5)
        raise DeploymentError(f"the SuperLink did not answer /health within {timeout:.0f} s; {proc.log}")

    def healthy(self) -> bool:
        scheme = "https" if self.tls else "http"
        ctx = ssl.create_default_context(cafile=str(self.data / "certs" / "ca.crt")) if self.tls else None
        try:
            with urllib.request.urlopen(f"{scheme}://{self.address}/health", context=ctx, timeout=3) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def start_site(self, site: str, *, key_name: str | None = None, name: str | None = None,
                   max_retries: int | None = None, allow_unpinned: bool = False) -> Proc:
        """A site's SuperNode via ``fl-client start`` (``key_name``: use another site's key folder)."""
        name = name or site
        cmd = self.site_command(site, key_name, max_retries=max_retries, allow_unpinned=allow_unpinned)
        return self._start(f"node-{name}", cmd, self.data / "nodes" / name / "flwr-home")

    def connection(self) -> str:
        """The coordinator's connection in its FLWR_HOME (written on first use)."""
        if self._connection is None:
            from fl_server.launch import ensure_connection

            self._connection = ensure_connection(
                self.address, root_certificates=self.data / "certs" / "ca.crt" if self.tls else None,
                insecure=not self.tls, home=self.flwr_home)
        return self._connection

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``flwr ARGS`` as the coordinator (its FLWR_HOME)."""
        return subprocess.run([_executable("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                              env=_env(self.flwr_home), cwd=self.coordinator, check=False)

    def register(self, site: str) -> str:
        """``flwr supernode register`` the site's public key; returns the node id the SuperLink gave it."""
        pub = self.data / "certs" / "sites" / site / "node_key.pub"
        out = self.flwr("supernode", "register", str(pub), self.connection(), "--name", site, "--format", "json")
        try:
            payload = json.loads(out.stdout[out.stdout.find("{"):])
        except json.JSONDecodeError:
            payload = {}
        if out.returncode != 0 or not payload.get("success", False):
            raise DeploymentError(f"registering {pub} failed: {out.stdout}{out.stderr}")
        return str(payload.get("node-id", ""))

    def nodes(self) -> list[dict[str, Any]]:
        out = self.flwr("supernode", "list", self.connection(), "--format", "json")
        try:
            return list(json.loads(out.stdout[out.stdout.find("{"):]).get("nodes", []))
        except json.JSONDecodeError as exc:
            raise DeploymentError(f"flwr supernode list: {out.stdout}{out.stderr}") from exc

    def wait_online(self, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = [n for n in self.nodes() if n.get("status") == "online"]
            if len(nodes) >= count:
                return nodes
            dead = [p for p in self.procs.values() if p.name.startswith("node-") and p.popen.poll() is not None]
            if time.monotonic() > deadline:
                logs = "\n".join(f"{p.log}:\n{p.tail(10)}" for p in self.procs.values() if p.name.startswith("node-"))
                raise DeploymentError(f"{len(nodes)} of {count} SuperNodes online after {timeout:.0f} s "
                                      f"(exited: {[p.name for p in dead]})\n{logs}")
            time.sleep(2)

    def launch(self, cohort: str = "pacemaker_tavi", overrides: str = "", out: Path | None = None,
               expected_sites: int = 0, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], Path]:
        """``fl-server launch`` as compose's ``launch`` service runs it; returns the process and out dir."""
        out = (out or self.coordinator / "runs" / cohort).resolve()
        cmd = self.launch_command(cohort, overrides, out, expected_sites)
        log = self.logs / "launch.log"
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(self.flwr_home),
                              cwd=self.coordinator, check=False)
        log.write_text("$ " + " ".join(cmd) + "\n" + done.stdout + done.stderr, encoding="utf-8")
        return done, out

    def stop(self, timeout: float = 20) -> None:
        """Stop every process this deployment started, with the processes they started.

        SIGTERM to each started process group (its leader's pid is the one we started), then SIGKILL
        what is left after ``timeout``: the groups, and descendants that made their own session
        (Flower's SuperExec does), found from the started pids before anything was signalled.
        """
        started = list(self.procs.values())
        family = {p.popen.pid: _descendants(p.popen.pid) for p in started}
        for proc in reversed(started):  # nodes first, then the SuperLink
            if proc.popen.poll() is None:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in started:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in started:
            _signal_group(proc.popen.pid, signal.SIGKILL)
            for child in family[proc.popen.pid]:
                _signal_pid(child, signal.SIGKILL)
            if proc.popen.poll() is None:
                proc.popen.wait(timeout=5)

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid`` (Linux /proc), children before grandchildren."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(0), []):
            out.append(child)
            todo.append(child[0])
    return out


def _signal_pid(proc: tuple[int, str], sig: int) -> None:
    """Signal a pid only if it is still the same process (same start time): pids get reused."""
    pid, started = proc
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:
            os.kill(pid, sig)
    except (OSError, IndexError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def demo(data: Path, sites: int, patients: int, rounds: int, tls: bool, min_cell_size: int) -> int:
    """Synthesize, ingest, certify, start, register, launch, report, stop."""
    names = prepare_sites(data, sites, patients, min_cell_size=min_cell_size)
    print(f"sites ingested: {', '.join(names)}")
    make_certs(data / "certs", names)
    with LocalDeployment(data, tls=tls) as dep:
        dep.start_superlink()
        print(f"SuperLink on {dep.address} ({'TLS + SuperNode authentication' if tls else 'insecure'})")
        if tls:
            for n in names:
                print(f"registered {n}: node {dep.register(n)}")
        for n in names:
            dep.start_site(n)
        dep.wait_online(sites)
        done, out = dep.launch(overrides=f"federation.rounds={rounds} agreement.min_cases={min_cell_size}",
                               expected_sites=sites)
        print(done.stdout[-4000:])
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
        print(f"logs: {dep.logs}; reports: {out}")
        return done.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="a whole federated run on loopback with compose.yaml's commands")
    d.add_argument("--data", type=Path, required=True, help="data folder (created)")
    d.add_argument("--sites", type=int, default=3)
    d.add_argument("--patients", type=int, default=25)
    d.add_argument("--rounds", type=int, default=1)
    d.add_argument("--min-cell-size", type=int, default=5, help="the demo sites' disclosure threshold")
    d.add_argument("--insecure", action="store_true", help="no TLS and no node authentication")
    c = sub.add_parser("commands", help="print the process commands derived from compose.yaml")
    c.add_argument("--data", type=Path, required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("FLWR_HOME", str((args.data / "coordinator" / "flwr-home").resolve()))
    if args.cmd == "commands":
        dep = LocalDeployment(args.data)
        for cmd in (dep.superlink_command(), dep.site_command(TEMPLATE_SITE),
                    dep.launch_command("pacemaker_tavi", "", dep.coordinator / "runs" / "pacemaker_tavi", 3)):
            print(" ".join(cmd))
        return 0
    return demo(args.data, args.sites, args.patients, args.rounds, not args.insecure, args.min_cell_size)


if __name__ == "__main__":
    sys.exit(main())
