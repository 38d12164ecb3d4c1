"""Running a Typer app as a console script: project errors become one readable line, exit code 2."""

from __future__ import annotations

import sys

import typer

from cohort.errors import CohortError


def run_app(app: typer.Typer) -> None:
    """Run ``app``; a CohortError (bad input, config, spec) prints as ``error: ...`` instead of a traceback."""
    try:
        app()
    except CohortError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
