"""Containers for the tests: the site and coordinator images, run with podman, stopped by id.

Every container gets a ``--cidfile`` before it starts, so even one that is still starting, or one run in
the foreground that timed out, is stopped and removed by its id (never by name or pattern).
Images are built by deploy/build-images.sh (CI builds them once before pytest, .ci/run); where they
are missing the session fixture builds them with $FEDCOHORT_IMAGE_BUILD_ARGS (default: the script's
defaults, i.e. the official Python base and PyTorch's CPU index).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = os.environ.get("FEDCOHORT_IMAGE_TAG", "0.1.0")
SITE_IMAGE = f"localhost/fedcohort-site:{TAG}"
COORDINATOR_IMAGE = f"localhost/fedcohort-coordinator:{TAG}"
IMAGE_UID = 10001  # the images' user `fedcohort`
# Debian's podman on these machines: crun fails on the hybrid cgroup layout, runc works with cgroupfs;
# runc needs explicit limits no higher than the host's (docs: ../shared STACK notes, deploy/README.md).
GLOBAL_FLAGS = shlex.split(os.environ.get("FEDCOHORT_PODMAN_FLAGS", "--runtime runc --cgroup-manager cgroupfs"))
RUN_FLAGS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--network", "host", "--init"]


def podman_path() -> str | None:
    return shutil.which("podman")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *GLOBAL_FLAGS, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def build_images() -> None:
    """deploy/build-images.sh with $FEDCOHORT_IMAGE_BUILD_ARGS (CI builds before the tests instead)."""
    args = shlex.split(os.environ.get("FEDCOHORT_IMAGE_BUILD_ARGS", ""))
    done = subprocess.run([str(ROOT / "deploy" / "build-images.sh"), "--tool", "buildah", "--tag", TAG, *args],
                          capture_output=True, text=True, timeout=3600, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise AssertionError(f"deploy/build-images.sh {' '.join(args)} failed:\n{done.stdout[-2000:]}\n"
                             f"{done.stderr[-3000:]}")


def image_info(image: str) -> dict[str, object]:
    return dict(json.loads(podman("image", "inspect", image).stdout)[0])


def layer_dirs(image: str) -> list[Path]:
    """The image's layers as overlay diff folders, lowest first (its files as each layer added them)."""
    data = image_info(image)["GraphDriver"]
    assert isinstance(data, dict) and data.get("Name") == "overlay", f"not an overlay image: {data}"
    dirs = data["Data"]
    lower = [Path(p) for p in str(dirs.get("LowerDir", "")).split(":") if p]
    return [*reversed(lower), Path(dirs["UpperDir"])]


def chown_tree(path: Path, uid: int = IMAGE_UID) -> None:
    """Give the images' user the folders a container writes to (as `chown -R 10001:10001` in the docs)."""
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, uid, uid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


@dataclass
class Container:
    name: str
    cid: str

    def logs(self) -> str:
        done = podman("logs", self.cid, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = podman("inspect", "--format", "{{.State.Running}}", self.cid, check=False)
        return done.stdout.strip() == "true"

    def wait(self, timeout: float) -> int:
        """The container's exit code once it has exited (AssertionError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.cid, check=False)
            status, _, code = done.stdout.strip().partition(" ")
            if status in ("exited", "stopped"):
                return int(code)
            time.sleep(2)
        raise AssertionError(f"container {self.name} still running after {timeout:.0f} s")


@dataclass
class Containers:
    """The containers one test started; ``stop_all`` stops and removes each by id."""

    workdir: Path
    prefix: str = field(default_factory=lambda: f"fedcohort-test-{uuid.uuid4().hex[:8]}")
    started: list[Container] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _cidfile(self, name: str) -> Path:
        return self.workdir / f"{name}.cid"

    def _register(self, name: str) -> Container | None:
        cidfile = self._cidfile(name)
        if cidfile.exists() and cidfile.read_text().strip():
            container = Container(name, cidfile.read_text().strip())
            self.started.append(container)
            return container
        return None

    def _args(self, name: str, image: str, command: list[str], mounts: list[tuple[Path, str, str]],
              env: dict[str, str] | None) -> list[str]:
        args = ["--name", f"{self.prefix}-{name}", "--cidfile", str(self._cidfile(name)), *RUN_FLAGS]
        for host, container, mode in mounts:
            args += ["-v", f"{host}:{container}:{mode}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        return [*args, image, *command]

    def start(self, name: str, image: str, command: list[str], mounts: list[tuple[Path, str, str]],
              env: dict[str, str] | None = None) -> Container:
        """``podman run -d``: a long-running container (SuperLink, SuperNode, dashboard)."""
        done = podman("run", "-d", *self._args(name, image, command, mounts, env), check=False)
        container = self._register(name)
        if done.returncode != 0 or container is None:
            raise AssertionError(f"could not start {name}: {done.stderr[-3000:]}")
        return container

    def run(self, name: str, image: str, command: list[str], mounts: list[tuple[Path, str, str]],
            env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``podman run`` in the foreground (a one-shot command); the container is kept until stop_all."""
        try:
            return podman("run", *self._args(name, image, command, mounts, env), timeout=timeout, check=False)
        finally:
            self._register(name)

    def stop_all(self) -> None:
        for container in reversed(self.started):
            podman("stop", "--time", "15", container.cid, check=False, timeout=90)
            podman("rm", "--force", "--volumes", container.cid, check=False, timeout=90)

    def remaining(self) -> list[str]:
        """Ids of this test's containers that still exist (should be none after stop_all)."""
        left = []
        for container in self.started:
            done = podman("ps", "--all", "--quiet", "--no-trunc", "--filter", f"id={container.cid}", check=False)
            if done.stdout.strip():
                left.append(container.cid)
        return left
