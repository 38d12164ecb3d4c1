"""A real Orthanc PACS with its DICOMweb plugin, started as a plain process on loopback for tests.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb``. Tests that use the ``orthanc`` fixture
are skipped, with the reason shown in the summary, only when the Orthanc binary is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC_PLUGINS = "/usr/share/orthanc/plugins"
DICOMWEB_ROOT = "/dicom-web/"
_INSTALL_HINT = "install it with: apt-get install -y orthanc orthanc-dicomweb"


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed."""
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancProcess:
    """One running Orthanc: its base URL, DICOMweb URL, pid and the folder holding its data and log."""

    url: str
    dicomweb_url: str
    process: subprocess.Popen[bytes]
    folder: Path

    def stop(self) -> None:
        """Stop exactly the process this helper started (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(folder: Path, *, timeout_s: float = 60.0) -> OrthancProcess:
    """Start Orthanc with its own JSON config under ``folder`` and wait until ``GET /system`` answers."""
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError(f"Orthanc executable not found; {_INSTALL_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "fedcohort-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "FEDCOHORTTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [ORTHANC_PLUGINS],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT},
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the process's lifetime
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    log.close()
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode} before answering on {url}; "
                               f"see {folder / 'orthanc.log'}")
        try:
            if requests.get(f"{url}/system", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            OrthancProcess(url, "", process, folder).stop()
            raise TimeoutError(f"Orthanc did not answer GET {url}/system within {timeout_s:.0f} s; "
                               f"see {folder / 'orthanc.log'}")
        time.sleep(0.2)
    plugins = requests.get(f"{url}/plugins", timeout=5).json()
    if "dicom-web" not in plugins:
        OrthancProcess(url, "", process, folder).stop()
        raise RuntimeError(f"Orthanc at {url} loaded plugins {plugins} but not dicom-web; {_INSTALL_HINT}")
    return OrthancProcess(url, url + DICOMWEB_ROOT.rstrip("/"), process, folder)


@pytest.fixture
def orthanc_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    """A fresh Orthanc for one test, stopped (by its pid) afterwards."""
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc not installed; {_INSTALL_HINT}")
    proc = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def orthanc(orthanc_process: OrthancProcess) -> str:
    """The DICOMweb base URL of a fresh Orthanc, e.g. ``http://127.0.0.1:PORT/dicom-web``."""
    return orthanc_process.dicomweb_url
