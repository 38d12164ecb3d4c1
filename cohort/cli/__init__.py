"""The ``cohort`` command line: one module per command group, registered on one Typer app."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Site-local cohort engine: synthesize, ingest, index, query, export, serve.")


def _register() -> None:
    from cohort.cli import (
        data_cmds,  # noqa: F401  (registers synth, ingest, validate)
        engine_cmds,  # noqa: F401  (registers query, export, reindex, fields)
        opensearch_cmds,  # noqa: F401  (registers opensearch-sync, opensearch-query)
        serve_cmd,  # noqa: F401  (registers serve)
    )


def main() -> None:
    """Console entry point: project errors become one readable line and exit code 2."""
    from cohort.cli.entry import run_app

    _register()
    run_app(app)
