"""The bundled OpenSearch node: build it once with Maven, start it on loopback, wait for health, stop it.

``deploy/opensearch-node`` is a small Maven project (pinned OpenSearch 2.19 jars from Maven Central, Java
17) whose launcher starts the real server code, with the netty4 HTTP/transport plugin and
analysis-common from the classpath and without the security plugin. It is meant for tests and for a
site trying the OpenSearch index without a cluster; production sites use their own cluster
(docs/store.md).

    python -m cohort.index.opensearch_node --home DIR [--port 9200]     # a trial node, Ctrl-C stops it

Every node runs in its own process group with its own ``path.home`` (data, logs, config); ``stop``
sends SIGTERM (the launcher closes the node cleanly) and SIGKILL after a timeout, ``kill`` sends
SIGKILL at once (what the two-node test does to a node). Nothing here stops a process it did not start.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2] / "deploy" / "opensearch-node"
MAIN_CLASS = "org.fedcohort.opensearch.NodeLauncher"
JAR = "opensearch-node-1.0.0.jar"
MIN_JAVA = 17
STARTED = "FEDCOHORT-NODE-STARTED"


class NodeUnavailable(RuntimeError):
    """The bundled node cannot be built or started here; the message says why."""


# --- build ---------------------------------------------------------------------------------------------

def java_major(java: str = "java") -> int:
    """The major version of ``java`` (17 for "17.0.15")."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        raise NodeUnavailable(f"cannot read the Java version from `{java} -version`: {out.stderr.strip()[:200]}")
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not java:
        raise NodeUnavailable("no `java` on PATH (and no JAVA_HOME): install a JDK 17, e.g. "
                              "`apt-get install openjdk-17-jdk-headless` (.ci/run does)")
    major = java_major(java)
    if major < MIN_JAVA:
        raise NodeUnavailable(f"{java} is Java {major}; OpenSearch 2.19 needs Java {MIN_JAVA} or newer")
    return java


def _sources(project: Path) -> list[Path]:
    return [project / "pom.xml", *sorted((project / "src").rglob("*"))]


def _built(project: Path) -> bool:
    target = project / "target"
    jar, lib = target / JAR, target / "lib"
    if not jar.exists() or not lib.is_dir() or not any(lib.glob("opensearch-2*.jar")):
        return False
    newest = max(p.stat().st_mtime for p in _sources(project) if p.is_file())
    return jar.stat().st_mtime >= newest


def build(project: Path = PROJECT, *, quiet: bool = True) -> str:
    """Build the launcher (once: a build newer than its sources is reused); returns its Java classpath.

    Maven runs offline first (``-o``: everything in ~/.m2 already), then online (Maven Central). A file
    lock keeps concurrent builds (two test processes) from racing.
    """
    _java()
    if not (project / "pom.xml").exists():
        raise NodeUnavailable(f"{project / 'pom.xml'} is missing")
    target = project / "target"
    target.mkdir(exist_ok=True)
    with open(target / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built(project):
            mvn = shutil.which("mvn")
            if not mvn:
                raise NodeUnavailable("no `mvn` on PATH: install Maven, e.g. `apt-get install maven` (.ci/run does), "
                                      f"or build {project} by hand")
            base = [mvn, "-B", *(["-q"] if quiet else []), "-DskipTests", "package"]
            errors = []
            for cmd in ([*base[:2], "-o", *base[2:]], base):
                res = subprocess.run(cmd, cwd=project, capture_output=True, text=True, check=False)
                if res.returncode == 0 and _built(project):
                    break
                errors.append(f"`{' '.join(cmd[1:])}` exited {res.returncode}: "
                              + (res.stdout + res.stderr).strip()[-1500:])
            else:
                raise NodeUnavailable("Maven could not build the bundled OpenSearch node (Maven Central "
                                      "unreachable and ~/.m2 incomplete?):\n" + "\n".join(errors))
    return os.pathsep.join([str(target / JAR), str(target / "lib" / "*")])


# --- nodes ---------------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    """GET (or other ``method``) ``url`` and decode its JSON answer."""
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback URLs we built)
        return json.loads(resp.read().decode("utf-8"))


@dataclass
class OpenSearchNode:
    """One launcher process: a node with HTTP on 127.0.0.1:``http_port``."""

    name: str
    home: Path
    http_port: int
    transport_port: int
    process: subprocess.Popen[bytes]
    args: list[str] = field(repr=False)
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def transport_address(self) -> str:
        return f"127.0.0.1:{self.transport_port}"

    @property
    def log(self) -> Path:
        return self.home / "node.log"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_started(self, timeout: float = 120.0) -> None:
        """Until HTTP answers ``GET /``; raises NodeUnavailable with the log's tail if the node died."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise NodeUnavailable(f"OpenSearch node {self.name} exited with {self.process.returncode} while "
                                      f"starting; {self.log}:\n{self.log_tail()}")
            try:
                http_json(self.url, timeout=2)
                self.started_in = time.monotonic() - t0
                return
            except (OSError, urllib.error.URLError, ValueError):
                time.sleep(0.25)
        self.stop()
        raise NodeUnavailable(f"OpenSearch node {self.name} did not answer on {self.url} within {timeout:.0f} s; "
                              f"{self.log}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (clean close), then SIGKILL if it is still running after ``timeout`` seconds."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the node dies as in a power cut (no clean close)."""
        if self.alive():
            self.process.kill()
        self.process.wait(30)

    def restart(self, timeout: float = 120.0) -> None:
        """Start the same node again (same name, ports and data folder) after a stop or kill."""
        if self.alive():
            raise RuntimeError(f"node {self.name} is still running (pid {self.pid})")
        self.process = _spawn(self.args, self.log)
        self.wait_started(timeout)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_node(home: Path, *, name: str = "node-1", cluster_name: str = "fedcohort",
               http_port: int | None = None, transport_port: int | None = None,
               seed_hosts: Sequence[str] = (), initial_cluster_managers: Sequence[str] = (),
               roles: Sequence[str] | None = None, heap: str = "512m", settings: dict[str, str] | None = None,
               classpath: str | None = None, wait: bool = True, timeout: float = 120.0) -> OpenSearchNode:
    """Start one node with its own ``home`` (config, data, logs, node.log).

    Without ``seed_hosts`` and ``initial_cluster_managers`` it is a single-node cluster
    (``discovery.type: single-node``); otherwise it joins/bootstraps the cluster those name.
    """
    cp = classpath or build()
    home = Path(home).resolve()
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    transport_port = transport_port or free_port()
    s: dict[str, str] = {
        "path.home": str(home), "path.data": str(home / "data"), "path.logs": str(home / "logs"),
        "cluster.name": cluster_name, "node.name": name,
        "http.port": str(http_port), "transport.port": str(transport_port),
    }
    if seed_hosts or initial_cluster_managers:
        s["discovery.seed_hosts"] = ",".join(seed_hosts)
        if initial_cluster_managers:
            s["cluster.initial_cluster_manager_nodes"] = ",".join(initial_cluster_managers)
    else:
        s["discovery.type"] = "single-node"
    if roles is not None:
        s["node.roles"] = ",".join(roles)
    s.update(settings or {})
    args = [_java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", f"-Djava.io.tmpdir={home / 'tmp'}",
            "-Dfile.encoding=UTF-8", "-cp", cp, MAIN_CLASS, *(f"-E{k}={v}" for k, v in s.items())]
    node = OpenSearchNode(name, home, http_port, transport_port, _spawn(args, home / "node.log"), args)
    if wait:
        node.wait_started(timeout)
    return node


def wait_for_health(url: str, status: str = "yellow", *, nodes: int | None = None, timeout: float = 120.0
                    ) -> dict[str, Any]:
    """Cluster health once it reaches ``status`` (and ``nodes`` nodes); raises TimeoutError otherwise."""
    q = f"wait_for_status={status}&timeout={int(timeout)}s"
    if nodes is not None:
        q += f"&wait_for_nodes={nodes}"
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() - t0 < timeout:
        try:
            last = http_json(f"{url}/_cluster/health?{q}", timeout=timeout + 10)
            if not last.get("timed_out"):
                return dict(last)
        except urllib.error.HTTPError as exc:  # 408 when it timed out waiting
            last = exc.read().decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            last = str(exc)
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not reach {status} health within {timeout:.0f} s: {last}")


@contextmanager
def running_node(home: Path, **kwargs: Any) -> Iterator[OpenSearchNode]:
    """A single node for the duration of the ``with`` block; stopped (by its pid) on the way out."""
    node = start_node(home, **kwargs)
    try:
        wait_for_health(node.url, "green")
        yield node
    finally:
        node.stop()


@dataclass
class Cluster:
    """Nodes of one cluster on loopback; every node is cluster-manager-eligible unless ``roles`` say not."""

    nodes: list[OpenSearchNode]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_cluster(root: Path, roles: Sequence[Sequence[str] | None], *, cluster_name: str = "fedcohort-cluster",
                  heap: str = "512m", timeout: float = 180.0) -> Cluster:
    """Start ``len(roles)`` nodes (``node-1`` ...) that form one cluster; waits until all have joined.

    The cluster bootstraps from the cluster-manager-eligible nodes (roles None or containing
    ``cluster_manager``). On any failure the nodes already started are stopped.
    """
    cp = build()
    names = [f"node-{i + 1}" for i in range(len(roles))]
    ports = [(free_port(), free_port()) for _ in roles]
    seeds = [f"127.0.0.1:{t}" for _, t in ports]
    managers = [n for n, r in zip(names, roles, strict=True) if r is None or "cluster_manager" in r]
    nodes: list[OpenSearchNode] = []
    try:
        for name, r, (http, transport) in zip(names, roles, ports, strict=True):
            nodes.append(start_node(root / name, name=name, cluster_name=cluster_name, http_port=http,
                                    transport_port=transport, seed_hosts=seeds, initial_cluster_managers=managers,
                                    roles=r, heap=heap, classpath=cp, wait=False))
        for n in nodes:
            n.wait_started(timeout)
        wait_for_health(nodes[0].url, "green", nodes=len(nodes), timeout=timeout)
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return Cluster(nodes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cohort.index.opensearch_node",
                                 description="Start the bundled single OpenSearch node for a trial (Ctrl-C stops it).")
    ap.add_argument("--home", type=Path, help="the node's folder (data, logs, config)")
    ap.add_argument("--build-only", action="store_true", help="only build (or find built) the launcher, then exit")
    ap.add_argument("--port", type=int, default=9200, help="HTTP port on 127.0.0.1 (default 9200)")
    ap.add_argument("--heap", default="1g", help="JVM heap (default 1g)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    cp = build(quiet=not args.build_only)
    print(f"bundled OpenSearch node built (or cached) in {time.monotonic() - t0:.1f} s: {PROJECT / 'target'}",
          flush=True)
    if args.build_only:
        return 0
    if args.home is None:
        ap.error("--home is required to start a node")
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C, and SIGTERM/SIGINT sent to this process (also when started in the background): stop the node.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    node = start_node(args.home, http_port=args.port, heap=args.heap, classpath=cp)
    try:
        wait_for_health(node.url, "yellow")
        print(f"OpenSearch node up at {node.url} (pid {node.pid}, started in {node.started_in:.1f} s, "
              f"log {node.log}); e.g. `cohort opensearch-sync --store STORE --url {node.url}`", flush=True)
        while node.alive():
            time.sleep(1)
        print(f"node exited with {node.process.returncode}; see {node.log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
