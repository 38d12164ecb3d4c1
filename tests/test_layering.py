"""The import graph runs one way: each package imports only from its own layer's package or lower ones.

Every ``import`` and ``from ... import`` in the source counts, also those inside functions (a lazy
import is still a dependency). Run it alone with ``python -m pytest -q tests/test_layering.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cohort", "fl_client", "fl_server")

# Lowest first. A unit is a top-level module of cohort (cohort.errors), a subpackage of cohort
# (cohort.dicom) or one of the other packages. Units of one layer do not import each other.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"cohort.errors"},
    {"cohort.protocol", "cohort.processes", "cohort.secure_masks", "cohort.siteconfig", "cohort.results"},
    {"cohort.identity", "cohort.dicom"},  # DICOM: codes, SOP classes, conformance, SR items, UIDs
    {"cohort.ecg", "cohort.store"},  # ECG records, their readers and DICOM builders; the store's files
    {"cohort.spec"},  # the cohort spec: model, parsing, validation, privacy rules, units
    {"cohort.index"},  # extraction, template configs, field catalog, DuckDB / OpenSearch backends
    {"cohort.ingest", "cohort.release", "cohort.export", "cohort.synth"},
    {"cohort.dashboard"},
    {"cohort.cli"},
    {"fl_client"},
    {"fl_server"},
))

# Upward edges not removed yet, each with the reason; the test fails when one disappears, so the
# list cannot go stale. Empty since issue 22: cohort.spec.validate no longer falls back to the index's
# field catalog; every caller passes its catalog (a store's, or the built-in one) or none (structure only).
KNOWN_UPWARD: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an imported name resolves to (a package, a module, or a module's attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in map(_target, names) if t is not None}
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "cohort" and len(parts) > 1 else parts[0]


def _layer(unit: str) -> int:
    for k, layer in enumerate(LAYERS):
        if unit in layer:
            return k
    raise AssertionError(f"{unit} is in no layer of tests/test_layering.py: add it to LAYERS")


GRAPH = {m: {t for t in _imports(p) if t != m} for m, p in MODULES.items()}


def test_every_unit_has_a_layer() -> None:
    for module in MODULES:
        if module != "cohort":
            _layer(_unit(module))


def test_no_import_runs_upward_or_sideways() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        if module == "cohort":
            continue
        src = _unit(module)
        for target in targets:
            dst = _unit(target)
            if target == "cohort" or dst == src or (module, target) in KNOWN_UPWARD:
                continue
            if _layer(dst) > _layer(src):
                wrong.append(f"{module} imports {target}: {dst} lies above {src}")
            elif _layer(dst) == _layer(src):
                wrong.append(f"{module} imports {target}: {dst} and {src} are one layer and must not import each other")
    assert wrong == [], "\n".join(sorted(wrong))


def test_the_known_upward_edges_still_exist() -> None:
    gone = [f"{a} -> {b}" for a, b in KNOWN_UPWARD if b not in GRAPH.get(a, set())]
    assert gone == [], f"remove from KNOWN_UPWARD (fixed): {gone}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring imports of a parent package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if v.startswith(w + "."):
                continue  # a module reading its own package's __init__ (shared helpers)
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {m: {t for t in ts if (m, t) not in KNOWN_UPWARD} for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_check_finds_an_upward_import_and_a_circle() -> None:
    """The checks above would catch what issue 22 removed (guards against a check that finds nothing)."""
    assert _layer("cohort.ingest") > _layer("cohort.store")  # store.py once inherited from ingest/base.py
    assert _layer("cohort.ecg") > _layer("cohort.dicom")  # dicom/ecg_waveform.py once imported ecg.record
    assert _cycles({"a.duck": {"a.publish"}, "a.publish": {"a.duck"}}) == [["a.duck", "a.publish"]]
    assert "cohort.index.publish" in GRAPH["cohort.cli.engine_cmds"]  # lazy imports count
    assert _layer("cohort.index") > _layer("cohort.spec")  # spec/validate.py once fell back to index.catalog
