"""Serving a local web page: uvicorn on a socket bound up front, static files, JSON error answers.

Shared by the cohort dashboard (``cohort serve``) and the coordinator's run view (``fl-server serve``).
Both bind 127.0.0.1 unless told otherwise; any other address gets a warning, as there is no login.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cohort.errors import CohortError

MAX_BODY = 2 * 1024 * 1024
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class HttpError(CohortError):
    """A request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def json_response(data: Any, status: int = 200) -> Response:
    """JSON (UTF-8, not ASCII-escaped), never cached."""
    return Response(json.dumps(data, ensure_ascii=False), status_code=status,
                    media_type="application/json", headers=NO_STORE)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def static_file(folder: Path, rel: str) -> Response:
    """The file ``rel`` (the decoded URL path below the static prefix) inside ``folder``, else 404.

    Refuses anything that could leave the folder however it was spelled: ``..`` segments (also
    percent-encoded: the path arrives decoded), backslashes, NUL bytes, absolute paths, and links
    pointing outside (the resolved path must stay inside ``folder``).
    """
    root = folder.resolve()
    parts = rel.split("/")
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/") or any(p in ("..", ".") for p in parts) \
            or "%" in rel:
        return error_response(404, "not found")
    target = (root / rel).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return error_response(404, "not found")
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        ctype += "; charset=utf-8"
    return Response(target.read_bytes(), media_type=ctype, headers=NO_STORE)


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a POST, from this page only (an Origin must be this server's own)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError("send the request body as JSON (Content-Type: application/json)", 415)
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HttpError(f"requests from {origin} are not accepted; open the page itself", 403)
    length = int(request.headers.get("content-length") or 0)
    if length > MAX_BODY:
        raise HttpError(f"request body too large ({length} bytes)", 413)
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HttpError(f"request body too large ({len(raw)} bytes)", 413)
    try:
        data = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HttpError(f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise HttpError("request body must be a JSON object")
    return data


class WebServer:
    """uvicorn serving ``app`` on a socket bound at construction (so the port is known, 0 = any free).

    ``serve_forever`` blocks (Ctrl+C stops it when run in the main thread); ``start`` runs it in a
    thread and returns once it accepts connections; ``shutdown`` stops it.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080, *, quiet: bool = True) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(128)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet,
                                lifespan="off", ws="none", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def serve_forever(self) -> None:
        """Serve until ``shutdown`` (or Ctrl+C in the main thread)."""
        self._server.run(sockets=[self.socket])

    def start(self) -> WebServer:
        """Serve in a background thread; returns when the server is up."""
        self._thread = threading.Thread(target=self.serve_forever, name="web-server", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.02)
        return self

    def shutdown(self) -> None:
        """Stop serving (waits for the server thread when ``start`` ran it)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def server_close(self) -> None:
        """Release the socket."""
        self.socket.close()
