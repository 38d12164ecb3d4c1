"""Run the reference DICOM validators (dicom3tools, PixelMed, DCMTK) over written objects.

Used by the test-suite and by ``cohort validate``. Each validator is an external program from a
Debian package; a missing one raises ToolMissingError that names the package to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cohort.errors import CohortError

SR_VALIDATOR_JAVA_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0"
)
_TOOLS = {"dciodvfy": "dicom3tools", "DicomSRValidator": "pixelmed-apps", "dsrdump": "dcmtk"}


class ToolMissingError(RuntimeError, CohortError):
    """A validator program is not installed."""


@dataclass
class ValidationResult:
    """Errors and warnings one validator reported for one file."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise ToolMissingError(f"{tool} not found; install it with: apt-get install -y {_TOOLS[tool]}")
    return exe


def dciodvfy(paths: Iterable[Path]) -> list[ValidationResult]:
    """Validate each file against its IOD with dicom3tools' dciodvfy (one process per file)."""
    exe = _require("dciodvfy")
    results = []
    for path in paths:
        proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, errors="replace")
        res = ValidationResult(Path(path))
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("Error"):
                res.errors.append(line)
            elif line.startswith("Warning"):
                res.warnings.append(line)
        results.append(res)
    return results


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
_BATCH_SOURCE = Path(__file__).with_name("BatchSRValidator.java")
# PixelMed reports template and relationship problems in these forms; all of them are errors.
_SR_ERROR_PATTERNS = (re.compile(r"^Error"), re.compile(r"illegal relationship", re.I),
                      re.compile(r"^Missing ", re.I))


def sr_validator(paths: Sequence[Path], batch: int = 200) -> list[ValidationResult]:
    """Check SR template conformance with PixelMed's DicomSRValidator, many files per JVM start."""
    _require("DicomSRValidator")
    java = shutil.which("java")
    if java is None or not PIXELMED_JAR.exists():
        raise ToolMissingError(f"java or {PIXELMED_JAR} not found; install it with: apt-get install -y pixelmed-apps")
    env = dict(os.environ, JAVA_TOOL_OPTIONS=SR_VALIDATOR_JAVA_OPTIONS)
    by_path = {str(p): ValidationResult(Path(p)) for p in paths}
    for start in range(0, len(paths), batch):
        chunk = [str(p) for p in paths[start:start + batch]]
        proc = subprocess.run([java, "-cp", str(PIXELMED_JAR), str(_BATCH_SOURCE), *chunk],
                              capture_output=True, text=True, env=env, errors="replace")
        seen: set[str] = set()
        current: ValidationResult | None = None
        for line in proc.stdout.splitlines():
            stripped = line.strip()
            if stripped.startswith("=== "):
                current = by_path.get(stripped[4:])
                seen.add(stripped[4:])
                continue
            if current is None or not stripped:
                continue
            if any(p.search(stripped) for p in _SR_ERROR_PATTERNS):
                current.errors.append(stripped)
            elif stripped.startswith("Warning"):
                current.warnings.append(stripped)
        for p in chunk:
            if p not in seen:
                by_path[p].errors.append(f"DicomSRValidator did not report on this file (exit {proc.returncode}): "
                                         f"{proc.stderr.strip()[-300:]}")
    return list(by_path.values())


def dsrdump(paths: Iterable[Path]) -> list[ValidationResult]:
    """Read each SR with DCMTK's dsrdump; any error output or non-zero exit is an error."""
    exe = _require("dsrdump")
    results = []
    for path in paths:
        proc = subprocess.run([exe, "-Ee", str(path)], capture_output=True, text=True, errors="replace")
        res = ValidationResult(Path(path))
        if proc.returncode != 0:
            res.errors.append(f"dsrdump exit {proc.returncode}: {proc.stderr.strip()[:500]}")
        for line in proc.stderr.splitlines():
            if re.match(r"^(E|F):", line):
                res.errors.append(line)
            elif line.startswith("W:"):
                res.warnings.append(line)
        results.append(res)
    return results
