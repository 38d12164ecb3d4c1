"""The dashboard stays live: published index versions (never a half-written index), new data without a
restart, several users at once, and static files that stay inside their folder."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.dashboard.api import Dashboard
from cohort.dashboard.server import make_server
from cohort.index.publish import WORK_PREFIX, SnapshotIndex, index_version, update_index
from cohort.spec.text import parse_text
from tests.conformance_cases import build_objects

LBBB = {"type": "add", "kind": "SR", "template": "ecg_report",
        "filters": [{"field": "ecg_finding", "op": "=", "value": "LBBB"}]}
THIN_CT = {"type": "add", "kind": "CT", "filters": [{"field": "slice_thickness", "op": "<=", "value": 1.0}]}


def _objects(part: str) -> list[Any]:
    """The conformance objects of the first half of the patients, the second half, or all."""
    objs = build_objects()
    patients = sorted({o.patient_id for o in objs})
    first = set(patients[: len(patients) // 2])
    return [o for o in objs if part == "all" or (o.patient_id in first) == (part == "first")]


def _add(store: Path, objs: list[Any]) -> None:
    with update_index(store) as index:
        index.add_extracted((o, f"/conformance/{o.patient_id}/{o.sop_uid}.dcm") for o in objs)


@pytest.fixture
def half_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    _add(store, _objects("first"))
    return store


def _patients(store: Path) -> int:
    with SnapshotIndex.open(store) as index:
        return index.count_patients()


def test_a_writer_publishes_whole_versions_and_a_failed_one_publishes_nothing(half_store: Path) -> None:
    before = index_version(half_store)
    assert before is not None and before.number == 1
    old_reader = SnapshotIndex.open(half_store)
    n_first = old_reader.count_patients()
    with update_index(half_store) as index:
        index.add_extracted((o, f"/c/{o.sop_uid}.dcm") for o in _objects("second"))
        assert index.count_patients() > n_first
        # Mid-write, a reader opening now still sees the published version, not the writer's rows.
        assert _patients(half_store) == n_first
        assert index_version(half_store) == before
    after = index_version(half_store)
    assert after is not None and after.number == 2 and after.token != before.token
    n_all = _patients(half_store)
    assert n_all == len({o.patient_id for o in build_objects()}) > n_first
    assert old_reader.count_patients() == n_first  # a reader of the old version keeps it whole
    old_reader.close()

    with pytest.raises(RuntimeError, match="killed"), update_index(half_store) as index:
        index.con.execute("DELETE FROM entities")
        raise RuntimeError("killed half way")
    assert index_version(half_store) == after and _patients(half_store) == n_all
    assert not list(half_store.glob(f"{WORK_PREFIX}*"))

    with update_index(half_store):  # nothing changed: no new version (re-running an ingest)
        pass
    assert index_version(half_store) == after


def test_requests_see_the_old_or_the_new_index_never_a_mix(half_store: Path, tmp_path: Path) -> None:
    dash = Dashboard(half_store, configs_dir=tmp_path / "configs")
    seen: list[tuple[str, int, int, int]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def user() -> None:
        try:
            while not stop.is_set():
                got = dash.query({"state": {}, "action": LBBB})
                objects = sum(o["count"] for o in got["objects"])
                seen.append((got["index_version"], got["counts"]["patients"], got["patients_indexed"], objects))
                dash.clear_cache()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=user) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        while len(seen) < 3:
            threading.Event().wait(0.05)
        _add(half_store, _objects("second"))
        assert dash.poll()
        n = len(seen)
        while len(seen) < n + 3:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    truth: dict[str, tuple[int, int, int]] = {}
    for version, *numbers in seen:
        truth.setdefault(version, tuple(numbers))  # type: ignore[arg-type]
        assert tuple(numbers) == truth[version], f"version {version}: a response mixed two index versions"
    assert len(truth) == 2
    old, new = (truth[v] for v in sorted(truth, key=lambda v: int(v.split("-")[0])))
    assert new[1] > old[1] and new[0] >= old[0]
    dash.close()


@pytest.fixture
def live(half_store: Path, tmp_path: Path) -> Iterator[tuple[str, Dashboard, Path]]:
    dash = Dashboard(half_store, configs_dir=tmp_path / "configs")
    server = make_server(dash, port=0).start()
    yield server.url, dash, half_store
    server.shutdown()
    server.server_close()
    dash.close()


def _call(url: str, path: str, body: Any = None) -> tuple[int, Any]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        con.request("GET" if body is None else "POST", path, json.dumps(body) if body is not None else None, headers)
        resp = con.getresponse()
        raw = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw.decode(errors="replace")
    finally:
        con.close()


def test_two_users_at_once_get_their_own_counts(live: tuple[str, Dashboard, Path]) -> None:
    url, dash, _ = live
    expected = {name: dash.query({"state": {}, "action": a})["counts"]["patients"]
                for name, a in (("lbbb", LBBB), ("thin_ct", THIN_CT))}
    assert expected["lbbb"] != expected["thin_ct"]
    got: dict[str, list[int]] = {"lbbb": [], "thin_ct": []}

    def user(name: str, action: dict[str, Any]) -> None:
        for _ in range(6):
            dash.clear_cache()
            status, body = _call(url, "/api/query", {"state": {}, "action": action})
            got[name].append(body["counts"]["patients"] if status == 200 else -status)

    threads = [threading.Thread(target=user, args=(n, a)) for n, a in (("lbbb", LBBB), ("thin_ct", THIN_CT))]
    threads += [threading.Thread(target=user, args=("lbbb", LBBB))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["lbbb"] == [expected["lbbb"]] * 12
    assert got["thin_ct"] == [expected["thin_ct"]] * 6


def test_a_finished_ingest_is_served_without_a_restart(live: tuple[str, Dashboard, Path]) -> None:
    url, dash, store = live
    _, before = _call(url, "/api/version")
    _, first = _call(url, "/api/query", {"state": {}})
    assert first["index_version"] == before["version"]
    _add(store, _objects("second"))
    for _ in range(100):  # the server checks every second
        _, now = _call(url, "/api/version")
        if now["version"] != before["version"]:
            break
        threading.Event().wait(0.1)
    assert now["version"] != before["version"] and now["number"] == before["number"] + 1
    _, second = _call(url, "/api/query", {"state": first["state"]})
    assert second["index_version"] == now["version"]
    assert second["counts"]["patients"] == now["patients"] > first["counts"]["patients"]
    with SnapshotIndex.open(store) as index:
        from cohort.index.compile_duck import evaluate

        spec = parse_text(second["text"], catalog=index.catalog)
        assert evaluate(index, spec).to_json() == second["counts"]


def test_a_store_without_index_picks_up_the_first_ingest(tmp_path: Path) -> None:
    store = tmp_path / "empty"
    store.mkdir()
    dash = Dashboard(store)
    assert dash.version()["version"] is None
    _add(store, _objects("all"))
    assert dash.poll() and dash.patients == len({o.patient_id for o in build_objects()})
    assert dash.query({"state": {}})["counts"]["patients"] == dash.patients
    dash.close()


@pytest.mark.parametrize("path", [
    "/static/../api.py", "/static/%2e%2e/api.py", "/static/%2E%2E/api.py", "/static/..%2fapi.py",
    "/static/%2e%2e%2fapi.py", "/static/%252e%252e/api.py", "/static/..%5capi.py", "/static/vendor/../../api.py",
    "/static/vendor/%2e%2e/%2e%2e/api.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
    "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/%00index.html", "/../../etc/passwd",
    "/static/./../server.py",
], ids=lambda p: p.replace("/", "|"))
def test_static_files_cannot_be_read_outside_the_static_folder(live: tuple[str, Dashboard, Path], path: str) -> None:
    url, _, _ = live
    status, body = _call(url, path)
    assert status in (400, 404), (status, body[:200] if isinstance(body, str) else body)
    text = json.dumps(body) if not isinstance(body, str) else body
    assert "import " not in text and "root:" not in text


def test_static_files_inside_are_served(live: tuple[str, Dashboard, Path]) -> None:
    url, _, _ = live
    status, script = _call(url, "/static/dashboard.js")
    assert status == 200 and "function" in script
    status, _ = _call(url, "/static/vendor/vega.min.js")
    assert status == 200


def test_opening_the_server_beyond_loopback_warns(tmp_path: Path) -> None:
    """``--host`` other than loopback prints a warning (here the port is taken, so it stops right after)."""
    import socket

    (tmp_path / "store").mkdir()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-c", "from cohort.cli import main; main()", "serve", "--store",
                              str(tmp_path / "store"), "--host", "0.0.0.0", "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert "warning" in out.stderr and "no login" in out.stderr.replace("\n", " ")
    assert out.returncode == 2 and "cannot listen" in out.stderr

