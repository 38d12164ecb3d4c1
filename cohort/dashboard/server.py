"""The dashboard's HTTP server (standard library only): the page, its scripts, and the JSON API.

API (JSON in and out; errors are ``{"error": "..."}`` with a 4xx status, never a traceback):

=======  ======================  ===========================================================
GET      /api/fields             fields per object kind / SR template, with their charts
GET      /api/initial            the starting page: state, spec, counts, charts
POST     /api/query              ``{state, action?}`` or ``{spec}`` -> state, spec, yaml, text, counts, charts
POST     /api/text               ``{text}``: a text query or YAML spec -> as /api/query
GET      /api/specs              names of the specs in the configs folder
GET      /api/specs/NAME         that spec, composed with Hydra -> as /api/query
POST     /api/spec/yaml          ``{state}`` -> the spec as a YAML file (text/yaml)
POST     /api/spec/text          ``{state}`` -> the spec as a text query (text/plain)
POST     /api/save               ``{state, name, overwrite?}`` -> configs/cohort/NAME.yaml
POST     /api/export             ``{state, name?, subset?}`` -> STORE/exports/NAME-TIME/
=======  ======================  ===========================================================

POSTs must be ``application/json`` and, when the browser sends an Origin, come from this server's
own origin: another web site open in the same browser cannot save or export through it.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cohort.dashboard.api import ApiError, Dashboard
from cohort.spec.load import spec_to_yaml
from cohort.spec.render import spec_to_text

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY = 2 * 1024 * 1024
log = logging.getLogger(__name__)


class DashboardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the Dashboard its handlers serve."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard, *, quiet: bool = True) -> None:
        self.dashboard = dashboard
        self.quiet = quiet
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes | bytearray) else str(host)
        return f"http://{'[' + name + ']' if ':' in name else name}:{port}/"


def make_server(dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8080, *,
                quiet: bool = True) -> DashboardServer:
    """A server bound to ``host:port`` (port 0 picks a free one); call ``serve_forever``."""
    return DashboardServer((host, port), dashboard, quiet=quiet)


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    # --- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _body(self) -> dict[str, Any]:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError("send the request body as JSON (Content-Type: application/json)", 415)
        origin = self.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != self.headers.get("Host"):
            raise ApiError(f"requests from {origin} are not accepted; open the dashboard itself", 403)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(f"request body too large ({length} bytes)", 413)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ApiError(f"request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ApiError("request body must be a JSON object")
        return data

    def _run(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ApiError as err:
            self._error(err.status, str(err))
        except Exception as err:  # noqa: BLE001 - the page gets a message, the log gets the traceback
            log.exception("dashboard request %s %s failed", self.command, self.path)
            self._error(500, f"internal error ({type(err).__name__}: {err}); the server log has details")

    # --- routes -----------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        dash = self.server.dashboard
        if path.startswith("/api/"):
            routes: dict[str, Callable[[], Any]] = {
                "/api/fields": dash.fields,
                "/api/initial": lambda: dash.query({"state": dash.initial_state().model_dump(mode="json")}),
                "/api/specs": lambda: {"specs": dash.saved_specs(), "folder": str(dash.configs_dir)},
            }
            if path.startswith("/api/specs/"):
                name = unquote(path[len("/api/specs/"):])
                self._run(lambda: self._json(200, dash.load_saved(name)))
            elif path in routes:
                self._run(lambda: self._json(200, routes[path]()))
            else:
                self._error(404, f"no API endpoint {path}")
            return
        if path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
            return
        self._static(path)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        dash = self.server.dashboard

        def handle() -> None:
            body = self._body()
            if path == "/api/query":
                self._json(200, dash.query(body))
            elif path == "/api/text":
                self._json(200, dash.load_source(str(body.get("text") or "")))
            elif path == "/api/spec/yaml":
                spec = dash.spec_of(body)
                self._send(200, spec_to_yaml(spec).encode(), "text/yaml; charset=utf-8",
                           {"Content-Disposition": f'attachment; filename="{spec.name}.yaml"'})
            elif path == "/api/spec/text":
                self._send(200, spec_to_text(dash.spec_of(body)).encode(), "text/plain; charset=utf-8")
            elif path == "/api/save":
                self._json(200, dash.save(body))
            elif path == "/api/export":
                self._json(200, dash.export(body))
            else:
                raise ApiError(f"no API endpoint {path}", 404)

        self._run(handle)

    def _static(self, path: str) -> None:
        rel = "index.html" if path in ("", "/") else unquote(path.lstrip("/"))
        if rel.startswith("static/"):
            rel = rel[len("static/"):]
        target = (STATIC_DIR / rel).resolve()
        if not target.is_relative_to(STATIC_DIR) or not target.is_file():
            self._error(404, f"not found: {path}")
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        self._send(HTTPStatus.OK, target.read_bytes(), ctype)
