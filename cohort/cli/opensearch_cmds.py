"""``cohort opensearch-sync`` and ``cohort opensearch-query``: the scale-out backend of a site.

The DuckDB file stays the store's index of record; OpenSearch receives the same data model (nested
documents) for sites whose index outgrows one machine or that serve many concurrent users.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cohort.cli import app
from cohort.cli.progress import console
from cohort.errors import CohortError, ConfigError

UrlOpt = Annotated[str, typer.Option("--url", help="OpenSearch URL, e.g. https://opensearch.site.local:9200")]
IndexOpt = Annotated[str, typer.Option("--index-name", help="OpenSearch index name")]
UserOpt = Annotated[str | None, typer.Option("--user", help="basic-auth user")]
PasswordEnvOpt = Annotated[str, typer.Option("--password-env", help="environment variable holding the password")]
CaOpt = Annotated[Path | None, typer.Option("--ca-certs", help="CA bundle that signed the cluster's certificate")]
InsecureOpt = Annotated[bool, typer.Option("--no-verify", help="do not verify TLS certificates (tests only)")]


@dataclass(frozen=True)
class OpenSearchSettings:
    """How to reach the cluster; the password comes from the environment, never from the command line."""

    url: str
    index_name: str = "cohort"
    user: str | None = None
    password_env: str = "COHORT_OPENSEARCH_PASSWORD"
    ca_certs: Path | None = None
    verify: bool = True

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": 30}
        if self.user:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ConfigError(f"--user {self.user} given but ${self.password_env} is not set; export the "
                                  "password in that variable")
            kwargs["http_auth"] = (self.user, password)
        if self.url.startswith("https://"):
            kwargs.update(use_ssl=True, verify_certs=self.verify, ssl_show_warn=self.verify)
            if self.ca_certs is not None:
                if not self.ca_certs.exists():
                    raise ConfigError(f"--ca-certs {self.ca_certs} does not exist")
                kwargs["ca_certs"] = str(self.ca_certs)
        elif self.ca_certs is not None:
            raise ConfigError("--ca-certs needs an https:// URL")
        return kwargs

    def backend(self):  # type: ignore[no-untyped-def]
        from cohort.index.opensearch_backend import OpenSearchBackend

        return OpenSearchBackend.connect(self.url, self.index_name, **self.client_kwargs())


def _guard(action: str, url: str, fn):  # type: ignore[no-untyped-def]
    from opensearchpy.exceptions import OpenSearchException

    try:
        return fn()
    except OpenSearchException as exc:
        raise CohortError(f"OpenSearch at {url}: {action} failed: {exc}; check the URL, credentials and "
                          "certificates (see docs/deployment.md)") from None


@app.command("opensearch-sync")
def opensearch_sync(store: Annotated[Path, typer.Option(help="store folder")], url: UrlOpt,
                    index_name: IndexOpt = "cohort", user: UserOpt = None,
                    password_env: PasswordEnvOpt = "COHORT_OPENSEARCH_PASSWORD", ca_certs: CaOpt = None,
                    no_verify: InsecureOpt = False) -> None:
    """Rebuild the OpenSearch index from the store's DuckDB index (nested documents, bulk)."""
    from cohort.index.duck import DuckIndex

    settings = OpenSearchSettings(url, index_name, user, password_env, ca_certs, not no_verify)
    backend = settings.backend()

    def run() -> int:
        backend.recreate()
        with DuckIndex.for_store(store, read_only=True) as index:
            return int(backend.index_from_duck(index))

    n = _guard("indexing", url, run)
    console.print(f"indexed {n} patient documents into {url} / {index_name}")


@app.command("opensearch-query")
def opensearch_query(url: UrlOpt, spec: Annotated[Path | None, typer.Option(help="cohort spec YAML")] = None,
                     text: Annotated[str | None, typer.Option(help="cohort spec as a text query")] = None,
                     index_name: IndexOpt = "cohort", user: UserOpt = None,
                     password_env: PasswordEnvOpt = "COHORT_OPENSEARCH_PASSWORD", ca_certs: CaOpt = None,
                     no_verify: InsecureOpt = False,
                     store: Annotated[Path | None, typer.Option(
                         help="the store the index was synced from: its template configs define fields")] = None,
                     ) -> None:
    """Count a cohort on the OpenSearch index (same answer as `cohort query` on DuckDB); prints JSON."""
    from cohort.cli.engine_cmds import _spec

    the_spec = _spec(store, spec, text)
    backend = OpenSearchSettings(url, index_name, user, password_env, ca_certs, not no_verify).backend()
    counts = _guard("query", url, lambda: backend.evaluate(the_spec))
    print(json.dumps(counts.to_json(), indent=2))
