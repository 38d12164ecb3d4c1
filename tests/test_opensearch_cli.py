"""OpenSearch connection settings and errors of the CLI (the live backend runs in the conformance suite)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.cli import _register, app
from cohort.cli.opensearch_cmds import OpenSearchSettings
from cohort.errors import ConfigError

runner = CliRunner()
_register()


def test_password_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OS_PW", "s3cret")
    kwargs = OpenSearchSettings("https://h:9200", user="steward", password_env="OS_PW").client_kwargs()
    assert kwargs["http_auth"] == ("steward", "s3cret")
    assert kwargs["use_ssl"] is True and kwargs["verify_certs"] is True


def test_missing_password_names_the_variable(monkeypatch):
    monkeypatch.delenv("OS_PW", raising=False)
    with pytest.raises(ConfigError, match=r"\$OS_PW"):
        OpenSearchSettings("https://h:9200", user="steward", password_env="OS_PW").client_kwargs()


def test_ca_bundle_must_exist_and_needs_https(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        OpenSearchSettings("https://h:9200", ca_certs=tmp_path / "nope.pem").client_kwargs()
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match="https"):
        OpenSearchSettings("http://h:9200", ca_certs=tmp_path / "ca.pem").client_kwargs()
    assert OpenSearchSettings("https://h:9200", ca_certs=tmp_path / "ca.pem").client_kwargs()["ca_certs"]


def test_unreachable_cluster_gives_a_readable_error(ingested_sites):
    with socket.socket() as s:  # a free port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    res = runner.invoke(app, ["opensearch-sync", "--store", str(ingested_sites[0].store), "--url", url])
    assert res.exit_code != 0
    assert url in str(res.exception)
