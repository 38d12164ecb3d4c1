"""``cohort serve``: the graphical cohort dashboard on a local web server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cohort.cli import app
from cohort.cli.progress import console


@app.command()
def serve(
    store: Annotated[Path, typer.Option(help="store folder (the one 'cohort ingest' wrote)")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port)")] = 8080,
    host: Annotated[str, typer.Option(
        help="address to bind; the default serves this machine only (anything else warns: there is no login)")] =
        "127.0.0.1",
    configs: Annotated[Path, typer.Option(help="folder 'save' writes specs to and 'open' lists")] =
        Path("configs/cohort"),
    verbose: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Serve the cohort dashboard: charts per indexed field, click-to-filter, live counts, spec round-trip.

    Several users can use it at once; a finished 'cohort ingest' or 'cohort reindex' on the same store
    shows up without a restart (the page offers to refresh its counts).
    """
    from cohort.dashboard.api import ApiError, Dashboard
    from cohort.dashboard.server import make_server
    from cohort.dashboard.web import is_loopback
    from cohort.errors import ConfigError

    if not is_loopback(host):
        console.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this address sees the site's "
                      "unsuppressed counts and can save specs and start exports; there is no login")
    try:
        with console.status("reading the index and preparing the charts"):
            dashboard = Dashboard(store, configs_dir=configs)
    except ApiError as err:
        raise ConfigError(str(err)) from None
    try:
        server = make_server(dashboard, host, port, quiet=not verbose)
    except OSError as err:
        dashboard.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}; pick another --port") from None
    console.print(f"cohort dashboard for {store} ({dashboard.patients} patients, {len(dashboard.charts)} charts) "
                  f"at [bold]{server.url}[/]  (Ctrl+C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
        dashboard.close()
