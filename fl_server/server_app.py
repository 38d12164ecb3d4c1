"""The Flower ServerApp: ``flwr run`` and ``fl-server`` both start it."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_server.federation import RunSettings, run_federation


def build_server_app(settings: RunSettings | None = None) -> ServerApp:
    """A ServerApp; fixed ``settings`` (the demo) or, when None, the run's flat run_config selectors."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, settings or RunSettings.from_run_config(dict(context.run_config)))

    return app


app = build_server_app()
