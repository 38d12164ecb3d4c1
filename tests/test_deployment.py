"""The deployment engine on loopback, the way a consortium runs it: TLS and SuperNode authentication.

One slow end-to-end test (about 3 minutes on 2 cores): three synthetic sites ingested into their
stores, the consortium CA + SuperLink certificate + node keys from deploy/make_certs.sh, the SuperLink
and the SuperNodes started with the commands of deploy/compose.yaml (via deploy/local.py, which maps
container paths to host folders), three site keys registered with ``flwr supernode register``, a
fourth node with an unregistered key, and ``fl-server launch`` for negotiation plus one FedAvg round.
Fast unit tests of the command construction sit next to it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

from cohort.errors import ConfigError
from fl_client.cli import SuperNodeSettings, check_site_ready, supernode_command, toml_string
from fl_server.launch import connection_name, ensure_connection, inline_run_config, resolve_cohort

ROOT = Path(__file__).resolve().parent.parent


def _load_local():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("deploy_local", ROOT / "deploy" / "local.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_local"] = module
    spec.loader.exec_module(module)
    return module


local = _load_local()


@pytest.fixture(autouse=True)
def _flower_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")


# --- fast: command construction -------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/srv/site a/site.yaml", "/srv/o'neil/site.yaml"], ids=["space", "apostrophe"])
def test_node_config_value_is_toml_flower_can_parse(path: str) -> None:
    from flwr.common.config import parse_config_args

    value = toml_string(path)
    assert tomllib.loads(f"k = {value}")["k"] == path
    assert parse_config_args([f"site-config={value}"]) == {"site-config": path}


def test_supernode_command_tls_by_default(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    key = tmp_path / "node_key"
    ca.write_text("x")
    key.write_text("x")
    site = tmp_path / "site.yaml"
    cmd = supernode_command(SuperNodeSettings(site, "link.example.org:9093", ca, key, runtime_port=9200))
    assert cmd[cmd.index("--root-certificates") + 1] == str(ca)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key)
    assert cmd[cmd.index("--node-config") + 1] == f"site-config='{site.resolve()}'"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--insecure" not in cmd
    with pytest.raises(ConfigError, match="TLS is on by default"):
        supernode_command(SuperNodeSettings(site, "link.example.org:9093"))
    with pytest.raises(ConfigError, match="exclude each other"):
        supernode_command(SuperNodeSettings(site, "link:9093", ca, insecure=True))
    with pytest.raises(ConfigError, match="HOST:PORT"):
        supernode_command(SuperNodeSettings(site, "https://link:9093", ca))
    with pytest.raises(ConfigError, match="public key"):
        (tmp_path / "node_key.pub").write_text("x")
        supernode_command(SuperNodeSettings(site, "link:9093", ca, tmp_path / "node_key.pub"))


def test_client_refuses_a_site_without_store_or_index(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site_id: s1\nstore: store\npseudonym_key: 0123456789abcdef0123\n"
                    "identifiers: {file: ids.csv, pacs_id_column: P, case_id_column: C}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        check_site_ready(site)
    (tmp_path / "store").mkdir()
    with pytest.raises(ConfigError, match="no index"):
        check_site_ready(site)
    (tmp_path / "store" / "index.duckdb").write_bytes(b"")
    assert check_site_ready(site).site_id == "s1"


def test_launch_resolves_cohorts_and_connections(tmp_path: Path) -> None:
    assert resolve_cohort("pacemaker_tavi") == "pacemaker_tavi"
    assert resolve_cohort(str(ROOT / "configs" / "cohort" / "pacemaker_tavi.yaml")) == "pacemaker_tavi"
    with pytest.raises(ConfigError, match="available cohorts"):
        resolve_cohort("pacemaker")
    outside = tmp_path / "mine.yaml"
    with pytest.raises(ConfigError, match="must be in"):
        resolve_cohort(str(outside))
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    home = tmp_path / "home"
    name = ensure_connection("127.0.0.1:9093", root_certificates=ca, home=home)
    assert name == connection_name("127.0.0.1:9093")
    conf = tomllib.loads((home / "config.toml").read_text())
    assert conf["superlink"][name] == {"address": "127.0.0.1:9093", "root-certificates": str(ca)}
    assert ensure_connection(name, home=home) == name
    with pytest.raises(ConfigError, match="neither HOST:PORT"):
        ensure_connection("other", home=home)
    with pytest.raises(ConfigError, match="TLS is on by default"):
        ensure_connection("127.0.0.1:9094", home=home)
    assert inline_run_config({"cohort-name": "x", "expected-sites": 3}) == "cohort-name='x' expected-sites=3"


def test_local_launcher_runs_compose_commands(tmp_path: Path) -> None:
    """deploy/local.py takes its commands from compose.yaml; check the mapping of paths and hosts."""
    dep = local.LocalDeployment(tmp_path / "data")
    data = str(dep.data)
    link = dep.superlink_command()
    assert Path(link[0]).name == "flower-superlink" and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-certfile") + 1] == f"{data}/certs/superlink.crt"
    assert link[link.index("--host") + 1] == "127.0.0.1" and link[link.index("--port") + 1] == str(dep.port)
    node = dep.site_command("uk-nord")
    assert Path(node[0]).name == "fl-client" and node[1] == "start"
    assert node[node.index("--site-config") + 1] == f"{data}/sites/uk-nord/site.yaml"
    assert node[node.index("--auth-key") + 1] == f"{data}/certs/sites/uk-nord/node_key"
    assert node[node.index("--superlink") + 1] == dep.address
    launch = dep.launch_command("pacemaker_tavi", "federation.rounds=1", Path(data) / "runs" / "x", 3)
    assert launch[launch.index("--root-certificates") + 1] == f"{data}/certs/ca.crt"
    plain = local.LocalDeployment(tmp_path / "data2", tls=False)
    for cmd in (plain.superlink_command(), plain.site_command("a"), plain.launch_command("c", "", tmp_path, 1)):
        assert "--insecure" in cmd and not {"--ssl-certfile", "--root-certificates", "--auth-key"} & set(cmd)


# --- slow: the whole deployment ------------------------------------------------------------------

SITES = 3
PATIENTS = 15


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tls_deployment_negotiates_trains_and_refuses_unregistered_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Tiny sites release nothing under the default minimum cell of 10 patients: these sites choose 5.
    sites = local.prepare_sites(data, SITES, PATIENTS, seed=3, min_cell_size=5)
    local.make_certs(data / "certs", [*sites, "intruder"])
    assert (data / "certs" / "sites" / "intruder" / "node_key.pub").read_text().startswith("ecdsa-sha2-nistp384 ")

    with local.LocalDeployment(data, tls=True) as dep:
        dep.start_superlink()
        registered = {dep.register(s) for s in sites}
        assert len(registered) == SITES
        for s in sites:
            dep.start_site(s)
        # Same site data, but a key the coordinator never registered (gives up after 3 tries).
        intruder = dep.start_site(sites[0], key_name="intruder", name="intruder", max_retries=3)
        online = dep.wait_online(SITES, timeout=180)
        done, out = dep.launch(overrides="agreement.min_cases=5 federation.rounds=1 training.epochs=1",
                               expected_sites=SITES, timeout=420)
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "finished:completed" in done.stdout

        # The unregistered node was refused and gave up; the SuperLink never listed it.
        intruder.popen.wait(timeout=60)
        assert intruder.popen.returncode != 0
        assert "Failed to activate SuperNode" in intruder.log.read_text(encoding="utf-8", errors="replace")
        link_log = dep.procs["superlink"].log.read_text(encoding="utf-8", errors="replace")
        assert "No SuperNode found with the given public key" in link_log
        nodes = dep.nodes()

    assert {n["node-id"] for n in nodes} == registered
    assert {n["node-id"] for n in online} == registered
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(s["site_id"] for s in report["sites"]) == sorted(sites)
    assert all(s["status"] == "answered" for s in report["sites"]), report["sites"]
    assert {str(d["node_id"]) for d in report["agreement"]["sites"]} == registered  # only the 3 nodes
    assert [d["site_id"] for d in report["agreement"]["sites"] if d["participates"]], report["agreement"]
    assert len(report["rounds"]) == 1
    train = report["rounds"][0]["train"]
    participants = {d["site_id"] for d in report["agreement"]["sites"] if d["participates"]}
    assert set(train) == participants and all(m["num-examples"] > 0 for m in train.values())
    assert (out / "final_model.npz").is_file() and (out / "report.html").is_file()
    # Every process we started is gone (nodes, their ClientApps, SuperLink, SuperExec).
    for proc in dep.procs.values():
        assert proc.popen.poll() is not None, proc.name
