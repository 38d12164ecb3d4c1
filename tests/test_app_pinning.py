"""Pinned app releases: a site answers only runs of a release it pinned in site.yaml, with its own code.

Fast tests: site.yaml ``app_release`` parsing errors (file, field, fix), the digest and signature
check, ``fl-client start`` refusing an unpinned site, ``fl-server release sign`` / ``fl-client app-hash``.

One slow test module fixture runs real Flower processes on loopback (deploy/local.py, the commands of
deploy/compose.yaml, without TLS to keep it short: the pin check does not depend on the transport):
a SuperLink and three ``fl-client start`` SuperNodes, copies of one ingested site that differ only in
their pin: ``pinned-hash`` (the FAB digest of bundle P), ``pinned-signer`` (a release signer's public
key), and ``unpinned`` (``--allow-unpinned``: Flower's own ClientApp processes, the control). Bundles
P and M are this project's app (a small probe ServerApp added, which sends one cohort query to every
node and writes what came back) whose ``fl_client/client_app.py`` writes a marker file when imported;
M differs from P in one byte of that file. Run 1 submits P with a signature by the listed signer; run 2
submits M with a signature by a key no site lists.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cohort.errors import ConfigError
from cohort.siteconfig import load_site_config
from fl_client.app_release import (
    RUN_CONFIG_SIGNATURE,
    build_fab,
    fab_sha256,
    load_pin,
    public_key_text,
    sign_release,
)
from tests.conftest import IngestedSite
from tests.test_deployment import _flower_env, local  # noqa: F401  (_flower_env: autouse here too)

ROOT = Path(__file__).resolve().parent.parent
SITE_BASE = "site_id: s1\nstore: store\npseudonym_key: 0123456789abcdef0123\n"


def _site(tmp_path: Path, extra: str = "", *, store: bool = False) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE_BASE + extra, encoding="utf-8")
    if store:
        (tmp_path / "store").mkdir(exist_ok=True)
        (tmp_path / "store" / "index.duckdb").write_bytes(b"")
    return path


def _write_key(key: Ed25519PrivateKey, path: Path) -> Path:
    """The private key as ``ssh-keygen -t ed25519`` writes it, and its ``.pub`` next to it."""
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.with_name(path.name + ".pub").write_text(public_key_text(key.public_key()) + " signer@test\n")
    return path


# --- site.yaml app_release: errors name the file, the field and the fix -----------------------------

def test_bad_digest_names_file_field_and_fix(tmp_path: Path) -> None:
    site = _site(tmp_path, "app_release:\n  sha256: [abc123]\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(site)
    msg = str(err.value)
    assert str(site) in msg and "app_release.sha256" in msg
    assert "64 hex characters" in msg and "fl-client app-hash" in msg
    with pytest.raises(ConfigError, match=r"app_release(.|\n)*lists neither sha256 nor signers"):
        load_site_config(_site(tmp_path, "app_release: {}\n"))
    with pytest.raises(ConfigError, match=r"app_release\.sha:.*[Ee]xtra"):
        load_site_config(_site(tmp_path, "app_release: {sha: ['" + "a" * 64 + "']}\n"))
    ok = load_site_config(_site(tmp_path, "app_release:\n  sha256: ['SHA256:" + "AB" * 32 + "']\n"))
    assert ok.app_release is not None and ok.app_release.sha256 == ["ab" * 32]


def test_missing_or_wrong_signer_key_names_file_field_and_fix(tmp_path: Path) -> None:
    site = load_site_config(_site(tmp_path, "app_release:\n  signers: [keys/release.pub]\n"))
    with pytest.raises(ConfigError) as err:
        load_pin(site)
    msg = str(err.value)
    assert str(tmp_path / "site.yaml") in msg and "app_release.signers[0]" in msg
    assert str(tmp_path / "keys" / "release.pub") in msg and "not found" in msg and "ssh-ed25519" in msg

    ecdsa = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(  # a node key, not a release key
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    site = load_site_config(_site(tmp_path, f"app_release:\n  sha256: ['{'0' * 64}']\n  signers: ['{ecdsa}']\n"))
    with pytest.raises(ConfigError, match=r"app_release\.signers\[0\].*not an Ed25519 public key.*ssh-keygen -t ed25519"):
        load_pin(site)


def test_pin_accepts_listed_digest_or_listed_signer_only(tmp_path: Path) -> None:
    fab = b"PK\x03\x04 not really a zip, any bytes have a digest"
    digest = fab_sha256(fab)
    listed, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw = base64.b64encode(listed.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)).decode()
    _write_key(listed, tmp_path / "release")
    for signer in ("release.pub", str(tmp_path / "release.pub"), public_key_text(listed.public_key()), raw):
        pin = load_pin(load_site_config(_site(tmp_path, f"app_release:\n  signers: ['{signer}']\n")))
        assert pin is not None
        assert pin.check(fab, sign_release(listed, digest)).accepted, signer
        refused = pin.check(fab, sign_release(other, digest))
        assert not refused.accepted and digest in refused.reason and "none by a listed signer" in refused.reason
        assert not pin.check(fab, "").accepted
        assert not pin.check(fab + b"x", sign_release(listed, digest)).accepted  # signature over another digest

    pinned = load_pin(load_site_config(_site(tmp_path, f"app_release:\n  sha256: ['{digest}']\n")))
    assert pinned is not None and pinned.check(fab).accepted
    verdict = pinned.check(fab + b"x")
    assert not verdict.accepted
    assert f"received sha256 {fab_sha256(fab + b'x')}" in verdict.reason and f"expected sha256 {digest}" in verdict.reason


# --- commands ----------------------------------------------------------------------------------------

def test_start_refuses_an_unpinned_site_and_runs_the_runner_for_a_pinned_one(tmp_path: Path) -> None:
    from fl_client.cli import app

    runner = CliRunner()
    args = ["start", "--superlink", "127.0.0.1:9093", "--insecure", "--dry-run", "--site-config"]
    unpinned = _site(tmp_path, store=True)
    res = runner.invoke(app, [*args, str(unpinned)])
    assert isinstance(res.exception, ConfigError)
    msg = str(res.exception)
    assert "pins no app release" in msg and "fl-client app-hash" in msg and "--allow-unpinned" in msg

    res = runner.invoke(app, [*args, str(unpinned), "--allow-unpinned"])
    assert res.exit_code == 0, res.output
    assert "--isolation" not in res.output and "pinned_runner" not in res.output  # Flower's own ClientApp

    pinned = _site(tmp_path, f"app_release:\n  sha256: ['{'1' * 64}']\n", store=True)
    res = runner.invoke(app, [*args, str(pinned)])
    assert res.exit_code == 0, res.output
    runner_line, node_line = res.output.strip().splitlines()
    assert "-m fl_client.pinned_runner serve" in runner_line and "--runtime-api-address 127.0.0.1:9094" in runner_line
    assert "--isolation process" in node_line and "--superexec-auth-secret-file" in node_line


def test_release_sign_and_app_hash_commands(tmp_path: Path) -> None:
    from fl_client.cli import app as client_cli
    from fl_server.cli import app as server_cli

    fab = tmp_path / "fedcohort.fedcohort.0-1-0.abcdef01.fab"
    fab.write_bytes(b"PK\x03\x04 release bytes")
    key = _write_key(Ed25519PrivateKey.generate(), tmp_path / "signer")
    stranger = _write_key(Ed25519PrivateKey.generate(), tmp_path / "stranger")
    runner = CliRunner()

    res = runner.invoke(server_cli, ["release", "sign", str(fab), "--key", str(key)])
    assert res.exit_code == 0, res.output
    sig = fab.with_name(fab.name + ".sig")
    assert sig.read_text().strip() in res.output
    res = runner.invoke(server_cli, ["release", "sign", str(fab), "--key", str(stranger), "--out",
                                     str(tmp_path / "stranger.sig")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(client_cli, ["app-hash", str(fab)])
    assert res.exit_code == 0 and fab_sha256(fab.read_bytes()) in res.output

    site = _site(tmp_path, "app_release:\n  signers: [signer.pub]\n")
    res = runner.invoke(client_cli, ["app-hash", str(fab), "--site-config", str(site), "--signature", str(sig)])
    assert res.exit_code == 0 and "accepted" in res.output, res.output
    res = runner.invoke(client_cli, ["app-hash", str(fab), "--site-config", str(site), "--signature",
                                     str(tmp_path / "stranger.sig")])
    assert res.exit_code == 1 and "refused" in res.output, res.output
    res = runner.invoke(server_cli, ["release", "sign", str(fab), "--key", str(key) + ".pub"])
    assert isinstance(res.exception, ConfigError) and "ssh-keygen -t ed25519" in str(res.exception)


def test_launch_passes_the_release_signature_in_the_run_config(tmp_path: Path) -> None:
    from fl_server.launch import LaunchSettings, run_config

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert RUN_CONFIG_SIGNATURE in declared  # Flower accepts only override keys the app declares
    values = run_config(LaunchSettings("pacemaker_tavi", "x", release_signature="c2ln"), "pacemaker_tavi", tmp_path)
    assert values[RUN_CONFIG_SIGNATURE] == "c2ln"
    assert RUN_CONFIG_SIGNATURE not in run_config(LaunchSettings("pacemaker_tavi", "x"), "pacemaker_tavi", tmp_path)


# --- slow: real SuperLink and SuperNodes ----------------------------------------------------------------

APP_DIR_NAME = "fedcohortapp"
PROBE = '''"""Test probe ServerApp: one query to every node; writes each reply (or its error) to probe-out."""

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    request = json.loads(Path(str(cfg["probe-request"])).read_text())
    deadline = time.monotonic() + 60
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < int(cfg["expected-sites"]) and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    messages = [Message(RecordDict({request["record"]: ConfigRecord(request["config"])}), dst_node_id=n,
                        message_type=request["message_type"]) for n in nodes]
    out = []
    for reply in grid.send_and_receive(messages, timeout=150):
        entry = {"node_id": reply.metadata.src_node_id, "error": None}
        if reply.has_error():
            entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
        else:
            entry["answer"] = {k: str(v) for k, v in reply.content[request["answer"]].items()}
        out.append(entry)
    Path(str(cfg["probe-out"])).write_text(json.dumps(out, indent=1))
'''
MARKER_CODE = ("import os as _pin_os, pathlib as _pin_pl  # pin test: written whenever this bundle's code runs\n"
               "_pin_pl.Path({folder!r}, '{tag}-' + str(_pin_os.getpid())).write_text("
               "_pin_os.environ.get('FLWR_HOME', ''))\n")


def stage_app(dst: Path, tag: str, markers: Path) -> Path:
    """This project's Flower app in ``dst`` with the probe ServerApp; its ClientApp module writes markers."""
    dst.mkdir(parents=True)
    for folder in ("cohort", "fl_client", "fl_server", "configs"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in (".gitignore", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    import tomli_w

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    flwr_app = project["tool"]["flwr"]["app"]
    flwr_app.pop("fab-include", None)  # the staged app also ships pin_probe.py
    flwr_app.pop("fab-exclude", None)
    flwr_app["components"]["serverapp"] = "pin_probe:app"
    flwr_app["config"].update({"probe-request": "", "probe-out": ""})
    (dst / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    (dst / "pin_probe.py").write_text(PROBE, encoding="utf-8")
    source = dst / "fl_client" / "client_app.py"
    text = source.read_text(encoding="utf-8")
    marker = MARKER_CODE.format(folder=str(markers), tag=tag)
    future = "from __future__ import annotations\n"
    text = text.replace(future, future + marker, 1) if future in text else marker + text
    source.write_text(text, encoding="utf-8")
    return dst


@dataclass
class PinnedFederation:
    digests: dict[str, str]  # bundle -> FAB sha256
    nodes: dict[int, str]  # node id -> site
    replies: dict[str, dict[str, dict[str, Any]]]  # run -> site -> probe entry
    logs: dict[str, str]  # site -> its fl-client log
    markers: dict[str, str]  # marker file -> FLWR_HOME of the process that wrote it
    homes: dict[str, str]  # site -> its FLWR_HOME


SITES = {"pinned-hash": "sha256", "pinned-signer": "signers", "unpinned": None}


def _copy_site(src: IngestedSite, dst: Path, name: str, release: dict[str, Any] | None) -> None:
    shutil.copytree(src.folder, dst, ignore=lambda d, names: ["raw"] if Path(d) == src.folder else [])
    raw = yaml.safe_load((dst / "site.yaml").read_text(encoding="utf-8"))
    raw["site_id"] = name
    raw["store"] = "store"
    raw.setdefault("disclosure", {})["min_cell_size"] = 5
    if release is not None:
        raw["app_release"] = release
    (dst / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def _probe_run(dep: Any, app_dir: Path, tmp: Path, run: str, signature: str) -> list[dict[str, Any]]:
    import tomli_w

    from cohort.protocol import ANSWER_RECORD, CONFIG_RECORD, KEY_REQUEST_ID, KEY_SPEC_JSON, QUERY_ACTION
    from cohort.spec.load import load_spec

    spec = load_spec(ROOT / "configs" / "cohort" / "pacemaker_tavi.yaml", catalog=None).to_dict()
    request = tmp / f"{run}-request.json"
    request.write_text(json.dumps({"message_type": f"query.{QUERY_ACTION}", "record": CONFIG_RECORD,
                                   "answer": ANSWER_RECORD, "config": {KEY_SPEC_JSON: json.dumps(spec, sort_keys=True),
                                                                       KEY_REQUEST_ID: run}}))
    out = tmp / f"{run}-replies.json"
    rc = tmp / f"{run}-run-config.toml"
    rc.write_text(tomli_w.dumps({"expected-sites": len(SITES), "probe-request": str(request), "probe-out": str(out),
                                 RUN_CONFIG_SIGNATURE: signature}), encoding="utf-8")
    done = dep.flwr("run", str(app_dir), dep.connection(), "--run-config", str(rc), "--stream", timeout=240)
    (dep.logs / f"{run}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    assert out.is_file(), f"run {run} wrote no replies:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n" + "\n".join(
        f"{p.name}:\n{p.tail(15)}" for p in dep.procs.values())
    return list(json.loads(out.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def pinned_federation(tmp_path_factory: pytest.TempPathFactory, ingested_sites: list[IngestedSite]) -> PinnedFederation:
    tmp = tmp_path_factory.mktemp("pinning")
    data, markers = tmp / "data", tmp / "markers"
    markers.mkdir()
    bundles = {tag: stage_app(tmp / "bundles" / tag / APP_DIR_NAME, tag, markers) for tag in ("P", "M")}
    digests = {tag: fab_sha256(build_fab(path)) for tag, path in bundles.items()}
    assert digests["P"] != digests["M"]
    listed, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    releases = {"sha256": {"sha256": [digests["P"]]}, "signers": {"signers": ["keys/release-signer.pub"]}, None: None}
    for name, kind in SITES.items():
        _copy_site(ingested_sites[0], data / "sites" / name, name, releases[kind])
    (data / "sites" / "pinned-signer" / "keys").mkdir()
    _write_key(listed, data / "sites" / "pinned-signer" / "keys" / "release-signer")

    with local.LocalDeployment(data, tls=False) as dep:
        dep.start_superlink()
        for name in SITES:
            dep.start_site(name, allow_unpinned=SITES[name] is None)
        dep.wait_online(len(SITES), timeout=150)
        nodes = {}
        for name in SITES:
            m = re.search(r"SuperNode ID: (\d+)", dep.procs[f"node-{name}"].log.read_text(errors="replace"))
            assert m, dep.procs[f"node-{name}"].tail()
            nodes[int(m.group(1))] = name
        replies = {}
        for run, tag, key in (("run1", "P", listed), ("run2", "M", stranger)):
            entries = _probe_run(dep, bundles[tag], tmp, run, sign_release(key, digests[tag]))
            replies[run] = {nodes[int(e["node_id"])]: e for e in entries}
        logs = {name: dep.procs[f"node-{name}"].log.read_text(errors="replace") for name in SITES}
    return PinnedFederation(digests, nodes, replies, logs,
                            {p.name: p.read_text() for p in markers.iterdir()},
                            {name: str(data / "nodes" / name / "flwr-home") for name in SITES})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pinned_bundle_is_answered_by_the_installed_clientapp(pinned_federation: PinnedFederation) -> None:
    fed = pinned_federation
    run1 = fed.replies["run1"]
    assert set(run1) == set(SITES), run1
    for name in ("pinned-hash", "pinned-signer"):  # by digest, and by the listed signer's signature
        assert run1[name]["error"] is None, run1[name]
        assert run1[name]["answer"]["site-id"] == name and run1[name]["answer"]["status"] == "answered", run1[name]
    assert f"app bundle sha256 {fed.digests['P']} is pinned" in fed.logs["pinned-hash"]
    assert f"app bundle sha256 {fed.digests['P']} is signed by listed signer" in fed.logs["pinned-signer"]
    # Even the accepted bundle's code never ran at the pinned sites: their ClientApp is the installed one.
    pinned_homes = {fed.homes["pinned-hash"], fed.homes["pinned-signer"]}
    assert not [m for m, home in fed.markers.items() if home in pinned_homes], fed.markers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_modified_bundle_is_refused_before_its_code_runs(pinned_federation: PinnedFederation) -> None:
    fed = pinned_federation
    run2 = fed.replies["run2"]
    assert set(run2) == set(SITES), run2
    refused = run2["pinned-hash"]["error"]
    assert refused is not None and refused["code"] == 7, run2  # flwr ErrorCode.INVALID_FAB
    assert f"received sha256 {fed.digests['M']}" in refused["reason"]
    assert f"expected sha256 {fed.digests['P']}" in refused["reason"]
    # One line in the site's log names both digests.
    lines = [ln for ln in fed.logs["pinned-hash"].splitlines() if "refused run" in ln]
    assert len(lines) == 1 and fed.digests["M"] in lines[0] and fed.digests["P"] in lines[0], lines
    # The modified code never ran at a pinned site; the control site (unpinned: Flower runs the bundle's
    # ClientApp) shows the marker would have been written.
    by_home = {home: [m for m, h in fed.markers.items() if h == home] for home in fed.homes.values()}
    assert by_home[fed.homes["pinned-hash"]] == [] and by_home[fed.homes["pinned-signer"]] == []
    assert {m.split("-")[0] for m in by_home[fed.homes["unpinned"]]} == {"P", "M"}, fed.markers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_signature_by_an_unlisted_key_is_refused(pinned_federation: PinnedFederation) -> None:
    fed = pinned_federation
    refused = fed.replies["run2"]["pinned-signer"]["error"]
    assert refused is not None and refused["code"] == 7, fed.replies["run2"]
    assert f"received sha256 {fed.digests['M']}" in refused["reason"]
    assert "none by a listed signer" in refused["reason"] and "release-signer.pub" in refused["reason"]
    assert fed.replies["run1"]["pinned-signer"]["error"] is None  # the listed signer's signature: accepted
