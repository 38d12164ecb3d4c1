"""``cohort serve``: the graphical cohort dashboard on a local web server."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from cohort.cli import app
from cohort.cli.progress import console


def _is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


@app.command()
def serve(
    store: Annotated[Path, typer.Option(help="store folder (the one 'cohort ingest' wrote)")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port)")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind; the default serves this machine only")] = "127.0.0.1",
    configs: Annotated[Path, typer.Option(help="folder 'save' writes specs to and 'open' lists")] =
        Path("configs/cohort"),
    verbose: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Serve the cohort dashboard: charts per indexed field, click-to-filter, live counts, spec round-trip."""
    from cohort.dashboard.api import ApiError, Dashboard
    from cohort.dashboard.server import make_server
    from cohort.errors import ConfigError

    if not _is_loopback(host):
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
