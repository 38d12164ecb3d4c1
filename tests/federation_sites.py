"""Tiny synthetic consortia for the federation tests, built once per test session and copied per test.

Building (synth + ingest) costs most of a federation test's time, so the first caller builds the
consortium below pytest's session temp folder and every later caller (any test module) reuses it.
Tests that change a site (break its index, change its policy) work on a copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from cohort.dicom.patient import pseudonym
from cohort.siteconfig import SiteConfig, load_site_config
from cohort.synth.model import SyntheticPatient, generate_site
from cohort.synth.profiles import profile_for_site
from cohort.synth.site import site_key

SEED = 0
PATIENTS = [18, 15, 10]  # unequal on purpose: the smallest site is the one below an agreement minimum


@dataclass(frozen=True)
class Consortium:
    root: Path

    @property
    def consortium_json(self) -> Path:
        return self.root / "consortium.json"

    def site_yaml(self, i: int) -> Path:
        sites = json.loads(self.consortium_json.read_text())["sites"]
        return self.root / sites[i]["site_config"]

    def site(self, i: int) -> SiteConfig:
        return load_site_config(self.site_yaml(i))

    @property
    def n_sites(self) -> int:
        return len(json.loads(self.consortium_json.read_text())["sites"])

    def set_policy(self, i: int, **policy: object) -> None:
        """Change site ``i``'s own disclosure policy in its site.yaml (a site may choose its values)."""
        path = self.site_yaml(i)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data.setdefault("disclosure", {}).update(policy)
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def build_consortium(factory: pytest.TempPathFactory) -> Consortium:
    """The session's shared consortium (3 sites, PATIENTS, SEED); built on first use."""
    root = factory.getbasetemp() / "fed-consortium"
    done = root / ".complete"
    if not done.exists():
        from cohort.ingest.run import ingest_folder
        from cohort.synth.site import synthesize_consortium

        if root.exists():
            shutil.rmtree(root)
        for s in synthesize_consortium(root, len(PATIENTS), PATIENTS, SEED):
            site = load_site_config(s.site_config)
            ingest_folder(s.raw_dir, site.store_path(), site)
        done.write_text("ok")
    return Consortium(root)


def copy_consortium(src: Consortium, dst: Path) -> Consortium:
    """A private copy (site.yaml store paths are relative, so the copy points at its own stores), without
    the sites' audit logs, privacy ledger and release state (differencing ledger, run registry, key)."""
    shutil.copytree(src.root, dst, ignore=shutil.ignore_patterns(
        "raw", "exports", "audit.jsonl", "release", "privacy_ledger.sqlite", ".complete"))
    return Consortium(dst)


@dataclass(frozen=True)
class Identity:
    """Everything that identifies one synthetic patient, in the forms the raw exports use."""

    site_id: str
    pseudonym: str
    pacs_id: str
    case_id: str
    family_name: str
    given_name: str
    birth_date: date


def identities(consortium: Consortium) -> list[Identity]:
    """Regenerate every patient of the consortium (same seed) and derive the store pseudonyms."""
    out = []
    sites = json.loads(consortium.consortium_json.read_text())["sites"]
    for i, s in enumerate(sites):
        profile = profile_for_site(i)
        assert profile.site_id == s["site_id"]
        patients: list[SyntheticPatient] = generate_site(SEED, profile.site_id, s["patients"], profile.mix,
                                                         profile.pacs_prefix, profile.case_prefix)
        key = site_key(SEED, profile.site_id)
        out += [Identity(profile.site_id, pseudonym(key, profile.site_id, p.pacs_id), p.pacs_id, p.case_id,
                         p.family_name, p.given_name, p.birth_date) for p in patients]
    return out


def quiet_flower(flwr_home: Path) -> None:
    """Flower settings for in-process simulations; FLWR_HOME inside the test's folder."""
    from fl_server.demo import quiet_flower_env

    quiet_flower_env()
    os.environ["FLWR_HOME"] = str(flwr_home)


@contextmanager
def flwr_log_level(level: int) -> Iterator[None]:
    """The ``flwr`` logger at ``level`` inside the block, and back to its own level after it."""
    flwr_logger = logging.getLogger("flwr")
    before = flwr_logger.level
    flwr_logger.setLevel(level)
    try:
        yield
    finally:
        flwr_logger.setLevel(before)


class RecordingGrid:
    """A Grid that forwards everything and keeps every reply the ServerApp receives from the sites."""

    def __init__(self, grid: object) -> None:
        self._grid = grid
        self.replies: list[object] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))  # type: ignore[attr-defined]
        self.replies.extend(replies)
        return replies


def reply_payload(msg: object) -> dict[str, object]:
    """A reply as plain data: message type, error, and every record (arrays by name and shape)."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    out: dict[str, object] = {"type": msg.metadata.message_type, "src": msg.metadata.src_node_id}  # type: ignore[attr-defined]
    if msg.has_error():  # type: ignore[attr-defined]
        out["error"] = {"code": msg.error.code, "reason": msg.error.reason}  # type: ignore[attr-defined]
        return out
    records: dict[str, object] = {}
    for name, rec in msg.content.items():  # type: ignore[attr-defined]
        if isinstance(rec, ArrayRecord):
            records[name] = {k: list(v.shape) for k, v in rec.items()}
        elif isinstance(rec, ConfigRecord | MetricRecord):
            records[name] = {k: (v if isinstance(v, int | float | str | bool) else repr(v)) for k, v in rec.items()}
        else:
            records[name] = repr(rec)
    out["records"] = records
    return out


def run_recorded_simulation(consortium: Consortium, settings: object, log_file: Path) -> list[dict[str, object]]:
    """Run the project's ServerApp and ClientApp on the simulation engine; return the reply payloads.

    ``settings`` may be a list: the ServerApp then runs one federation per entry, in order, on the
    same simulation (one engine start for several runs). The Flower log of the run (logger ``flwr``)
    is also written to ``log_file``.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_client.client_app import build_client_app
    from fl_server.federation import run_federation

    grids: list[RecordingGrid] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for one in settings if isinstance(settings, list) else [settings]:
            rec = RecordingGrid(grid)
            grids.append(rec)
            run_federation(rec, one)  # type: ignore[arg-type]

    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(handler)
    try:
        with flwr_log_level(logging.INFO):  # whatever an earlier test set: the recorded log holds the INFO lines
            run_simulation(server_app=app, client_app=build_client_app(consortium.consortium_json),
                           num_supernodes=consortium.n_sites,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        flwr_logger.removeHandler(handler)
        handler.close()
    assert grids, "the ServerApp never ran"
    return [reply_payload(m) for g in grids for m in g.replies]


@pytest.fixture(autouse=True)  # autouse in every test module that imports it
def coordinator_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a running ServerApp need Flower's task identity (set by the engine)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class LocalGrid:
    """A Grid that hands each message to the real ClientApp in this process (one Context per node).

    ``drop[action]`` names nodes whose messages of that action are lost (the node drops out there).
    Every reply is kept in ``replies``.
    """

    def __init__(self, c: Consortium, node_config: dict[str, Any] | None = None) -> None:
        from flwr.app import Context, RecordDict

        from fl_client.client_app import build_client_app

        self.app = build_client_app(c.consortium_json)
        self.contexts = {7_000_000_000 + 13 * i: Context(
            run_id=1, node_id=7_000_000_000 + 13 * i, state=RecordDict(), run_config={},
            node_config={"partition-id": i, "num-partitions": c.n_sites, **(node_config or {})})
            for i in range(c.n_sites)}
        self.drop: dict[str, set[int]] = {}
        self.replies: list[Any] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def node_of(self, i: int) -> int:
        return list(self.contexts)[i]

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        from flwr.app import Message, Metadata

        out = []
        for m in messages:
            md = m.metadata
            if md.dst_node_id in self.drop.get(md.message_type, set()):
                continue
            msg = Message(content=m.content, metadata=Metadata(
                run_id=1, message_id=uuid.uuid4().hex, src_node_id=1, dst_node_id=md.dst_node_id,
                reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600,
                message_type=md.message_type))
            out.append(self.app(msg, self.contexts[md.dst_node_id]))
        self.replies += out
        return out
