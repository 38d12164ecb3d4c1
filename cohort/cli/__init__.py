"""The ``cohort`` command line: one module per command group, registered on one Typer app."""

from __future__ import annotations

import sys

import typer

from cohort.errors import CohortError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Site-local cohort engine: synthesize, ingest, index, query, export, serve.")


def _register() -> None:
    from cohort.cli import data_cmds  # noqa: F401  (registers synth, ingest, validate)
    from cohort.cli import engine_cmds  # noqa: F401  (registers query, export, reindex, fields)
    from cohort.cli import serve_cmd  # noqa: F401  (registers serve)
    from cohort.cli import opensearch_cmds  # noqa: F401  (registers opensearch-sync, opensearch-query)


def main() -> None:
    """Console entry point: project errors become one readable line and exit code 2."""
    _register()
    try:
        app()
    except CohortError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
