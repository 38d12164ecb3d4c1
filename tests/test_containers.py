"""The site and coordinator images (deploy/Dockerfile), run as real containers with podman.

* the images: non-root user, and no data, keys or stores in any layer (every overlay layer is walked);
* a federation across containers: the coordinator image's SuperLink (TLS + SuperNode authentication),
  its ``register_sites.sh`` and ``fl-server launch``, three site-image SuperNodes (``fl-client start``
  with each site's store, site.yaml and node key mounted), host networking on 127.0.0.1 only;
  negotiation, agreement and one FedAvg round; a fourth site container with an unregistered key is
  refused; every container is stopped and removed by id, also when the test fails;
* the site path in the site image: ``cohort ingest`` on a mounted raw folder into a mounted store, then
  ``cohort serve`` reachable on 127.0.0.1.

Marked ``containers``: skipped (with the reason) only where podman is missing, and a failure instead
when $COHORT_REQUIRE_CONTAINERS=1 (.ci/run installs podman, builds the images with
deploy/build-images.sh and sets it). Needs root (the mounted folders are chowned to the image's user).
About 5 minutes on 2 busy cores with the images built (docs/benchmarks.md).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cohort.ingest.run import ingest_folder
from cohort.siteconfig import load_site_config
from tests import podman as pm
from tests.test_deployment import local  # deploy/local.py: compose commands, site preparation, certificates

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.containers]

SITES = 3
PATIENTS = 15
# Names and folders that must never be in an image: site data, stores, keys, certificates, coordinator
# state, run outputs, and the build's wheelhouse.
FORBIDDEN_NAMES = {"node_key", "node_key.pub", "identity.key", "ca.key", "ca.crt", "superlink.key",
                   "superlink.crt", "site.yaml", "roster.yaml", "truth.csv", "audit.jsonl", "superlink.db",
                   "ingest_report.json", "report.json", "final_model.npz", "index.duckdb"}
FORBIDDEN_SUFFIXES = (".duckdb", ".fab")
EMPTY_DIRS = ("site", "keys", "certs", "state", "runs")  # volume mount points: must hold nothing
APP_ALLOWED = {"pyproject.toml", "README.md", "cohort", "fl_client", "fl_server", "configs", "deploy",
               "fedcohort.egg-info"}
DEPLOY_ALLOWED = {"requirements.lock", "register_sites.sh"}


def forbidden_files(layer: Path) -> list[str]:
    """Paths in one image layer (an overlay diff folder) that carry site data, keys, stores or build inputs."""
    bad: list[str] = []
    for dirpath, dirs, files in os.walk(layer):
        rel = Path(dirpath).relative_to(layer)
        top = rel.parts[0] if rel.parts else ""
        for name in files:
            path = rel / name
            if name in FORBIDDEN_NAMES or name.endswith(FORBIDDEN_SUFFIXES):
                bad.append(str(path))
            elif name.endswith(".whl") and rel.name not in ("python-wheels", "_bundled"):
                bad.append(str(path))  # the wheelhouse is bind-mounted for one step, never copied (ensurepip's are fine)
            elif name.endswith(".dcm") and top not in ("opt", "usr"):  # library test files are fine
                bad.append(str(path))
        if top in EMPTY_DIRS and (files or dirs):
            bad.append(f"{rel}/ (a volume mount point with content: {sorted([*files, *dirs])[:5]})")
        if rel == Path("app"):
            bad += [f"app/{n}" for n in sorted([*files, *dirs]) if n not in APP_ALLOWED and not n.startswith(".wh.")]
        if rel == Path("app/deploy"):
            bad += [f"app/deploy/{n}" for n in sorted([*files, *dirs])
                    if n not in DEPLOY_ALLOWED and not n.startswith(".wh.")]
        for skip in ("proc", "sys", "dev"):
            if not rel.parts and skip in dirs:
                dirs.remove(skip)
    return bad


# --- fast: the image checker itself ------------------------------------------------------------------

def test_forbidden_files_finds_site_data_in_a_layer(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "app" / "cohort").mkdir(parents=True)
    (layer / "opt" / "venv" / "lib" / "pydicom" / "data").mkdir(parents=True)
    (layer / "opt" / "venv" / "lib" / "pydicom" / "data" / "CT_small.dcm").write_bytes(b"x")
    (layer / "app" / "pyproject.toml").write_text("x")
    (layer / "usr" / "share" / "python-wheels").mkdir(parents=True)
    (layer / "usr" / "share" / "python-wheels" / "pip-23.0.1-py3-none-any.whl").write_bytes(b"x")
    assert forbidden_files(layer) == []
    (layer / "app" / "tests").mkdir()
    (layer / "app" / "deploy" / "wheelhouse").mkdir(parents=True)
    (layer / "app" / "deploy" / "wheelhouse" / "torch-2.13.0-cp311-none.whl").write_bytes(b"x")
    (layer / "srv" / "site" / "store").mkdir(parents=True)
    (layer / "srv" / "site" / "store" / "index.duckdb").write_bytes(b"x")
    (layer / "srv" / "site" / "store" / "1.2.3.dcm").write_bytes(b"x")
    (layer / "home" / "fedcohort" / "keys").mkdir(parents=True)
    (layer / "home" / "fedcohort" / "keys" / "node_key").write_text("x")
    (layer / "keys").mkdir()
    (layer / "keys" / "anything").write_text("x")
    found = forbidden_files(layer)
    for expected in ("app/tests", "app/deploy/wheelhouse", "app/deploy/wheelhouse/torch-2.13.0-cp311-none.whl",
                     "srv/site/store/index.duckdb", "srv/site/store/1.2.3.dcm", "home/fedcohort/keys/node_key"):
        assert expected in found, (expected, found)
    assert any(f.startswith("keys/ (a volume mount point") for f in found), found


# --- containers -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Both images, built by deploy/build-images.sh where missing; skip only where podman is absent."""
    if pm.podman_path() is None:
        reason = "podman is not installed (apt-get install podman buildah runc debootstrap; .ci/run does)"
        if os.environ.get("COHORT_REQUIRE_CONTAINERS") == "1":
            pytest.fail(reason + ", and COHORT_REQUIRE_CONTAINERS=1")
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.fail("the container tests run podman as root (they chown the mounted folders to uid 10001)")
    if not (pm.image_exists(pm.SITE_IMAGE) and pm.image_exists(pm.COORDINATOR_IMAGE)):
        pm.build_images()
    return {"site": pm.SITE_IMAGE, "coordinator": pm.COORDINATOR_IMAGE}


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[pm.Containers]:
    started = pm.Containers(tmp_path / "cids")
    try:
        yield started
    finally:
        started.stop_all()
        assert started.remaining() == [], "containers left after the test"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_images_run_as_non_root_and_carry_no_site_data(images: dict[str, str], tmp_path: Path) -> None:
    sizes = {}
    for kind, image in images.items():
        info = pm.image_info(image)
        config = info["Config"]
        assert isinstance(config, dict) and config.get("User") == "fedcohort", (kind, config.get("User"))
        whoami = pm.podman("run", "--rm", *pm.RUN_FLAGS, image, "id", "-u").stdout.strip()
        assert whoami == str(pm.IMAGE_UID), (kind, whoami)
        layers = pm.layer_dirs(image)
        assert len(layers) >= 3, layers
        bad = {str(layer): found for layer in layers if (found := forbidden_files(layer))}
        assert not bad, f"{kind} image carries data, keys or build inputs: {bad}"
        sizes[kind] = int(str(info["Size"]))
    # The site image has no coordinator state, the coordinator no site volumes, as declared.
    assert set(pm.image_info(images["site"])["Config"]["Volumes"]) == {"/site", "/keys"}  # type: ignore[index]
    assert set(pm.image_info(images["coordinator"])["Config"]["Volumes"]) == {"/state", "/runs"}  # type: ignore[index]
    print("\n[containers] image sizes: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items()))


def _host_flwr(home: Path, address: str, ca: Path, *args: str) -> dict[str, object]:
    """``flwr ARGS --format json`` from the host against the containerized SuperLink (observation only)."""
    from fl_server.launch import ensure_connection

    env = {**os.environ, "FLWR_HOME": str(home)}
    name = ensure_connection(address, root_certificates=ca, home=home)
    flwr = str(Path(local._executable("flwr")))
    done = subprocess.run([flwr, *args, name, "--format", "json"], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    try:
        return dict(json.loads(done.stdout[done.stdout.find("{"):]))
    except json.JSONDecodeError as exc:
        raise AssertionError(f"flwr {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}") from exc


def _wait_healthy(address: str, ca: Path, link: pm.Container, timeout: float = 120) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://{address}/health", context=ctx, timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if not link.running():
            raise AssertionError(f"the SuperLink container exited:\n{link.logs()[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"the SuperLink container did not answer /health in {timeout:.0f} s:\n{link.logs()[-3000:]}")


def _compose_command(service: str, port: int) -> list[str]:
    """The command of a compose.yaml service, with ``superlink:9093`` on 127.0.0.1:PORT (host network)."""
    cmd = list(local.load_compose()[service].command)
    cmd = [f"127.0.0.1:{port}" if a == "superlink:9093" else a for a in cmd]
    if "--host" in cmd:
        cmd = local.set_option(cmd, "--host", "127.0.0.1")
    if "--port" in cmd:
        cmd = local.set_option(cmd, "--port", str(port))
    return cmd


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_container_federation_negotiates_trains_and_refuses_unregistered_site(
        images: dict[str, str], containers: pm.Containers, tmp_path: Path) -> None:
    from fl_client.app_release import build_fab, fab_sha256

    data = tmp_path / "data"
    certs, coord = data / "certs", data / "coordinator"
    for d in (coord / "state", coord / "runs", coord / "flwr-home"):
        d.mkdir(parents=True)
    # The pin: the digest of the bundle the coordinator image submits (/app), which is the checkout's.
    pinned = containers.run("release-hash", images["coordinator"], ["fl-server", "release", "hash", "/app"], [])
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    digest = pinned.stdout.strip().splitlines()[-1]
    assert digest == fab_sha256(build_fab(ROOT)), (
        "the coordinator image's /app bundles other files than this checkout: rebuild the images "
        "(deploy/build-images.sh) from a clean checkout")
    sites = local.prepare_sites(data, SITES, PATIENTS, seed=3, min_cell_size=5, pin=digest, ingest=False)
    local.make_certs(certs, [*sites, "intruder"])
    # The first site's store is ingested on the host (at DATA/sites/NAME/store) and its client container
    # mounts it at /site/store: the index names files relative to the store, so training finds them there.
    on_host, *in_image = sites
    host_site = load_site_config(data / "sites" / on_host / "site.yaml")
    assert ingest_folder(data / "sites" / on_host / "raw", host_site.store_path(), host_site).objects_written
    pm.chown_tree(data)
    # The other sites ingest their raw exports with the site image, into the store their client containers
    # mount (compose's site-N-ingest, without the PACS).
    for s in in_image:
        ing = containers.run(f"ingest-{s}", images["site"],
                             ["cohort", "ingest", "/site/raw", "--store", "/site/store", "--site-config",
                              "/site/site.yaml", "--report", "/site/ingest_report.json", "--quiet"],
                             [(data / "sites" / s, "/site", "rw")], timeout=400)
        assert ing.returncode == 0, f"{s}: {ing.stdout[-2000:]}\n{ing.stderr[-3000:]}"

    port = local.free_port()
    address = f"127.0.0.1:{port}"
    link = containers.start("superlink", images["coordinator"], _compose_command("superlink", port),
                            [(certs, "/certs", "ro"), (coord / "state", "/state", "rw"), (coord / "runs", "/runs", "rw")])
    _wait_healthy(address, certs / "ca.crt", link)

    # compose's `register` service: the coordinator image's register_sites.sh, one key per site.
    register = _compose_command("register", port)
    register = [*register[:3], *[f"/certs/sites/{s}/node_key.pub" for s in sites]]
    reg = containers.run("register", images["coordinator"], register,
                         [(certs, "/certs", "ro"), (coord / "flwr-home", "/home/fedcohort/.flwr", "rw")])
    assert reg.returncode == 0, f"{reg.stdout[-2000:]}\n{reg.stderr[-2000:]}"
    observer = tmp_path / "observer-flwr"
    registered = {str(n["node-id"]) for n in _host_flwr(observer, address, certs / "ca.crt",
                                                        "supernode", "list")["nodes"]}  # type: ignore[union-attr]
    assert len(registered) == SITES, registered

    node = _compose_command("site-1-client", port)
    for s in sites:
        containers.start(f"site-{s}", images["site"],
                         [*node, "--runtime-port", str(local.free_port())],
                         [(data / "sites" / s, "/site", "rw"), (certs / "sites" / s, "/keys", "ro"),
                          (certs / "ca.crt", "/certs/ca.crt", "ro")])
    # Same site data, a key the coordinator never registered; gives up after 3 refused attempts.
    intruder = containers.start("site-intruder", images["site"],
                                [*node, "--runtime-port", str(local.free_port()), "--max-retries", "3"],
                                [(data / "sites" / sites[0], "/site", "rw"), (certs / "sites" / "intruder", "/keys", "ro"),
                                 (certs / "ca.crt", "/certs/ca.crt", "ro")])
    deadline = time.monotonic() + 180
    while True:
        nodes = _host_flwr(observer, address, certs / "ca.crt", "supernode", "list")["nodes"]
        online = {str(n["node-id"]) for n in nodes if n.get("status") == "online"}  # type: ignore[union-attr]
        if len(online) >= SITES:
            break
        assert time.monotonic() < deadline, "\n".join(c.logs()[-1500:] for c in containers.started)
        time.sleep(3)
    assert online == registered

    launch = _compose_command("launch", port)
    launch = local.set_option(launch, "--overrides", "agreement.min_cases=5 federation.rounds=1 training.epochs=1")
    launch = local.set_option(launch, "--expected-sites", str(SITES))
    launch = local.set_option(launch, "--wait-s", "120")
    t0 = time.monotonic()
    done = containers.run("launch", images["coordinator"], launch, [(certs / "ca.crt", "/certs/ca.crt", "ro")],
                          timeout=600)
    print(f"\n[containers] fl-server launch (negotiation + 1 round) in the coordinator image: "
          f"{time.monotonic() - t0:.0f} s")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{link.logs()[-3000:]}"
    assert "finished:completed" in done.stdout
    assert f"app bundle (FAB): sha256 {digest}" in done.stdout

    # The unregistered site container was refused, gave up and exited non-zero; never listed.
    assert intruder.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in intruder.logs()
    assert "No SuperNode found with the given public key" in link.logs()
    listed = _host_flwr(observer, address, certs / "ca.crt", "supernode", "list")["nodes"]
    assert {str(n["node-id"]) for n in listed} == registered  # type: ignore[union-attr]

    out = coord / "runs" / "pacemaker_tavi"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(s["site_id"] for s in report["sites"]) == sorted(sites)
    assert all(s["status"] == "answered" for s in report["sites"]), report["sites"]
    assert {str(d["node_id"]) for d in report["agreement"]["sites"]} == registered
    participants = {d["site_id"] for d in report["agreement"]["sites"] if d["participates"]}
    assert participants, report["agreement"]
    assert len(report["rounds"]) == 1
    train = report["rounds"][0]["train"]
    assert set(train) == participants and all(m["num-examples"] > 0 for m in train.values())
    assert (out / "final_model.npz").is_file() and (out / "report.html").is_file()
    assert (out / "report.json").stat().st_uid == pm.IMAGE_UID  # written inside the SuperLink container
    for s in sites:  # each site answered from its own mounted store (its audit log grew in the container)
        audit = data / "sites" / s / "store" / "audit.jsonl"
        assert audit.is_file() and audit.stat().st_uid == pm.IMAGE_UID, s


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing interface's address
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_site_image_ingests_a_mounted_folder_and_serves_the_dashboard(
        images: dict[str, str], containers: pm.Containers, tmp_path: Path) -> None:
    from cohort.synth.site import synthesize_consortium

    (written,) = synthesize_consortium(tmp_path / "sites", 1, 12, seed=11)
    folder = written.folder
    pm.chown_tree(folder)
    mounts = [(folder, "/site", "rw"), (written.raw_dir, "/site/raw", "ro")]
    done = containers.run("ingest", images["site"],
                          ["cohort", "ingest", "/site/raw", "--store", "/site/store", "--site-config",
                           "/site/site.yaml", "--report", "/site/ingest_report.json"], mounts, timeout=400)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    report = json.loads((folder / "ingest_report.json").read_text(encoding="utf-8"))
    assert report["inputs"] == report["converted"] + report["duplicates"] + report["quarantined"]
    assert report["converted"] > 0
    with open(folder / "truth.csv", encoding="utf-8") as fh:
        patients = len(list(csv.DictReader(fh)))
    assert report["patients"] == patients == 12
    index = folder / "store" / "index.duckdb"
    assert index.is_file() and index.stat().st_uid == pm.IMAGE_UID  # written by the container's user

    port = local.free_port()
    dashboard = containers.start("serve", images["site"],
                                 ["cohort", "serve", "--store", "/site/store", "--port", str(port)], mounts)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/initial", timeout=5) as r:
                initial = json.loads(r.read())
            break
        except OSError:
            assert dashboard.running(), dashboard.logs()[-3000:]
            assert time.monotonic() < deadline, dashboard.logs()[-3000:]
            time.sleep(1)
    with urllib.request.urlopen(f"{url}/", timeout=5) as r:
        assert r.status == 200 and b"<html" in r.read().lower()
    counts = json.dumps(initial)
    assert "counts" in initial and str(patients) in counts, counts[:2000]
    other = _non_loopback_address()
    if other is not None:  # bound to loopback only, although the container shares the host's network
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=3).close()
