"""The dashboard's web app (Starlette under uvicorn): the page, its scripts, and the JSON API.

API (JSON in and out; errors are ``{"error": "..."}`` with a 4xx status, never a traceback):

=======  ======================  ===========================================================
GET      /api/fields             fields per object kind / SR template, with their charts
GET      /api/initial            the starting page: state, spec, counts, charts
GET      /api/version            the index version served now (the page polls it)
POST     /api/query              ``{state, action?}`` or ``{spec}`` -> state, spec, yaml, text, counts, charts
POST     /api/text               ``{text}``: a text query or YAML spec -> as /api/query
GET      /api/specs              names of the specs in the configs folder
GET      /api/specs/NAME         that spec, composed with Hydra -> as /api/query
POST     /api/spec/yaml          ``{state}`` -> the spec as a YAML file (text/yaml)
POST     /api/spec/text          ``{state}`` -> the spec as a text query (text/plain)
POST     /api/save               ``{state, name, overwrite?}`` -> configs/cohort/NAME.yaml
POST     /api/export             ``{state, name?, subset?}`` -> STORE/exports/NAME-TIME/
=======  ======================  ===========================================================

Requests run in Starlette's thread pool, so several users are served at once (``Dashboard`` gives
each running request its own index connections). POSTs must be ``application/json`` and, when the
browser sends an Origin, come from this server's own origin: another web site open in the same
browser cannot save or export through it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cohort.dashboard.api import Dashboard
from cohort.dashboard.web import HttpError, WebServer, error_response, json_body, json_response, static_file
from cohort.spec.load import spec_to_yaml
from cohort.spec.render import spec_to_text

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]


def _guarded(fn: Callable[[Request], Awaitable[Response]]) -> Handler:
    """Readable JSON errors: 4xx with the message for HttpError, 500 with a pointer to the log otherwise."""
    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except HttpError as err:
            return error_response(err.status, str(err))
        except Exception as err:  # noqa: BLE001 - the page gets a message, the log gets the traceback
            log.exception("dashboard request %s %s failed", request.method, request.url.path)
            return error_response(500, f"internal error ({type(err).__name__}: {err}); the server log has details")
    return handler


def build_app(dashboard: Dashboard) -> Starlette:
    """The dashboard's ASGI app."""
    def get(fn: Callable[[], Any]) -> Handler:
        async def handler(request: Request) -> Response:
            return json_response(await run_in_threadpool(fn))
        return _guarded(handler)

    def post(fn: Callable[[dict[str, Any]], Response]) -> Handler:
        async def handler(request: Request) -> Response:
            body = await json_body(request)
            return await run_in_threadpool(fn, body)
        return _guarded(handler)

    async def saved(request: Request) -> Response:
        return json_response(await run_in_threadpool(dashboard.load_saved, request.path_params["name"]))

    def spec_yaml(body: dict[str, Any]) -> Response:
        spec = dashboard.spec_of(body)
        return Response(spec_to_yaml(spec), media_type="text/yaml; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{spec.name}.yaml"',
                                 "Cache-Control": "no-store"})

    def spec_text(body: dict[str, Any]) -> Response:
        return Response(spec_to_text(dashboard.spec_of(body)), media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def page(request: Request) -> Response:
        return static_file(STATIC_DIR, "index.html")

    async def static(request: Request) -> Response:
        return static_file(STATIC_DIR, request.path_params["path"])

    async def favicon(request: Request) -> Response:
        return Response(b"", status_code=204)

    async def no_endpoint(request: Request) -> Response:
        raise HttpError(f"no API endpoint {request.url.path}", 404)

    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/index.html", page, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon),
        Route("/static/{path:path}", static, methods=["GET", "HEAD"]),
        Route("/api/fields", get(dashboard.fields)),
        Route("/api/initial", get(dashboard.initial)),
        Route("/api/version", get(dashboard.version)),
        Route("/api/specs", get(lambda: {"specs": dashboard.saved_specs(), "folder": str(dashboard.configs_dir)})),
        Route("/api/specs/{name}", _guarded(saved)),
        Route("/api/query", post(lambda b: json_response(dashboard.query(b))), methods=["POST"]),
        Route("/api/text", post(lambda b: json_response(dashboard.load_source(str(b.get("text") or "")))),
              methods=["POST"]),
        Route("/api/spec/yaml", post(spec_yaml), methods=["POST"]),
        Route("/api/spec/text", post(spec_text), methods=["POST"]),
        Route("/api/save", post(lambda b: json_response(dashboard.save(b))), methods=["POST"]),
        Route("/api/export", post(lambda b: json_response(dashboard.export(b))), methods=["POST"]),
        Route("/api/{rest:path}", _guarded(no_endpoint), methods=["GET", "POST"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"not found: {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, f"{request.method} is not allowed on {request.url.path}")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


def make_server(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8080, *, quiet: bool = True,
                watch: bool = True) -> WebServer:
    """A server bound to ``host:port`` (port 0 picks a free one); call ``serve_forever`` or ``start``.

    With ``watch`` the dashboard checks every second for a newly published index version.
    """
    server = WebServer(build_app(dashboard), host, port, quiet=quiet)
    if watch:
        dashboard.watch()
    return server
