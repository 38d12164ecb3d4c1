"""``fl-server serve --run DIR``: the coordinator's view of a run, live while report.json is rewritten.

The page polls ``/api/run``, which reads ``DIR/report.json`` (written atomically by
``fl_server.report``, so it is the previous or the next report, never half of one) and summarizes
it: each site's negotiation answer and decision, the agreed subset, the label balance per site
(released counts; suppressed cells stay suppressed), secure totals when the run has them, the
federated metrics per round and the errors per site. Keys are read defensively: what a run's
report does not have is left out, and top-level keys this view does not know are shown as they are.
Everything is served from this machine (the Vega scripts are the cohort dashboard's vendored copies).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cohort.dashboard.server import STATIC_DIR as DASHBOARD_STATIC
from cohort.dashboard.web import WebServer, error_response, json_response, static_file
from fl_server.report import REPORT_JSON

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = DASHBOARD_STATIC / "vendor"  # one vendored copy of Vega for both pages
LABEL_KEYS = ("positive", "negative", "unknown")
# Top-level report keys this view lays out itself; any other key is shown as it is ("more").
KNOWN_KEYS = {"cohort", "spec", "sites", "agreement", "rounds", "training_errors", "final_weights", "config",
              "training"}
SECURE_TOTALS_KEY = "consortium_totals"  # fl_server.report: totals over the agreed sites by secure aggregation


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_secure(key: str) -> bool:
    return "secure" in key.lower() or "secagg" in key.lower()


def _secure_totals(report: dict[str, Any], subset: str | None) -> dict[str, Any] | None:
    """The consortium totals from secure aggregation (``consortium_totals``, or another key naming
    'secure' / 'secagg'), with the agreed subset's total and label split picked out."""
    found = None
    if isinstance(report.get(SECURE_TOTALS_KEY), dict):
        found = (SECURE_TOTALS_KEY, report[SECURE_TOTALS_KEY])
    for where in (report, _dict(report.get("agreement"))):
        for key, value in where.items():
            if found is None and _is_secure(key) and value not in (None, {}, []):
                found = (key, value)
    if found is None:
        return None
    key, value = found
    totals = _dict(value)
    labels = _dict(_dict(totals.get("labels")).get(str(subset))) if subset else {}
    return {"key": key, "value": value, "status": totals.get("status"), "reason": totals.get("reason"),
            "contributors": _list(totals.get("contributors")),
            "cases": _dict(totals.get("subsets")).get(str(subset)) if subset else None,
            "labels": {k: labels.get(k) for k in LABEL_KEYS} if labels else None,
            "min_cell_size": totals.get("min_cell_size"), "dropped": _list(totals.get("dropped")),
            "noise": _dict(totals.get("noise")) or None}


def _phase(report: dict[str, Any], rounds: list[dict[str, Any]], planned: int | None) -> str:
    if report.get("final_weights"):
        return "finished"
    errors = _list(report.get("training_errors"))
    if any(_dict(e).get("phase") == "agreement" for e in errors):
        return "stopped at agreement"
    if rounds:
        return f"training: round {len(rounds)}" + (f" of {planned}" if planned else "") + " done"
    return "negotiated; training" if _dict(report.get("agreement")).get("participating_sites") else "negotiated"


def summarize_run(report: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one report.json (any part may be missing while the run goes on)."""
    agreement = _dict(report.get("agreement"))
    rule = _dict(agreement.get("rule"))
    subset = rule.get("subset")
    decisions = {d.get("site_id"): d for d in map(_dict, _list(agreement.get("sites")))}
    errors = [_dict(e) for e in _list(report.get("training_errors"))]
    sites = []
    for s in map(_dict, _list(report.get("sites"))):
        site_id = s.get("site_id")
        counts = _dict(s.get("counts"))
        labels = _dict(_dict(counts.get("labels")).get(str(subset))) if subset else {}
        d = _dict(decisions.get(site_id))
        sites.append({
            "site_id": site_id, "status": s.get("status"), "reason": s.get("reason"),
            "subsets": _dict(counts.get("subsets")), "cases": _dict(counts.get("subsets")).get(str(subset)),
            "labels": {k: labels.get(k) for k in LABEL_KEYS} if labels else None,
            "min_cell_size": counts.get("min_cell_size"),
            "participates": d.get("participates"), "decision": d.get("reason"),
            "errors": [e for e in errors if e.get("site") == site_id]})
    rounds = []
    for r in map(_dict, _list(report.get("rounds"))):
        rounds.append({"round": r.get("round"), "train_loss": r.get("train_loss"),
                       "aggregated": _dict(r.get("aggregated")),
                       "evaluate": {k: _dict(v) for k, v in _dict(r.get("evaluate")).items()},
                       "train": {k: _dict(v) for k, v in _dict(r.get("train")).items()}})
    planned = _dict(_dict(report.get("config")).get("federation")).get("rounds")
    known = {s["site_id"] for s in sites}
    return {
        "cohort": report.get("cohort"), "phase": _phase(report, rounds, planned), "subset": subset,
        "rule": rule, "participating_sites": _list(agreement.get("participating_sites")),
        "released_cases_total": agreement.get("released_cases_total"), "sites": sites, "rounds": rounds,
        "planned_rounds": planned, "secure_totals": _secure_totals(report, subset),
        "errors": [e for e in errors if e.get("site") not in known],
        "training": _dict(report.get("training")), "final_weights": report.get("final_weights"),
        "more": {k: v for k, v in report.items()
                 if k not in KNOWN_KEYS and not _is_secure(k) and k != SECURE_TOTALS_KEY and v is not None},
    }


class RunView:
    """One run folder as the page reads it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def state(self) -> dict[str, Any]:
        """``{run_dir, version, report}``; ``report`` is None until the run wrote report.json."""
        path = self.run_dir / REPORT_JSON
        try:
            st = path.stat()
            report = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"run_dir": str(self.run_dir), "version": None, "report": None,
                    "message": f"waiting for the run to write {path}"}
        except json.JSONDecodeError as err:  # a writer without atomic replace; the next poll reads it whole
            return {"run_dir": str(self.run_dir), "version": None, "report": None,
                    "message": f"{path} is being written ({err}); retrying"}
        if not isinstance(report, dict):
            return {"run_dir": str(self.run_dir), "version": None, "report": None,
                    "message": f"{path} is not a run report (a JSON object)"}
        return {"run_dir": str(self.run_dir), "version": f"{st.st_ino:x}-{st.st_mtime_ns:x}",
                "report": summarize_run(report), "message": None}


def build_app(view: RunView) -> Starlette:
    """The run view's ASGI app: the page, its scripts, and ``GET /api/run``."""
    async def page(request: Request) -> Response:
        return static_file(STATIC_DIR, "run.html")

    async def static(request: Request) -> Response:
        return static_file(STATIC_DIR, request.path_params["path"])

    async def vendor(request: Request) -> Response:
        return static_file(VENDOR_DIR, request.path_params["path"])

    async def run(request: Request) -> Response:
        return json_response(await run_in_threadpool(view.state))

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, f"not found: {request.url.path}")

    return Starlette(routes=[
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/static/vendor/{path:path}", vendor, methods=["GET", "HEAD"]),
        Route("/static/{path:path}", static, methods=["GET", "HEAD"]),
        Route("/api/run", run),
    ], exception_handlers={404: not_found, 405: not_found})


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8090, *, quiet: bool = True) -> WebServer:
    """A server for the run view of ``run_dir`` (port 0 picks a free one); call ``serve_forever`` or ``start``."""
    return WebServer(build_app(RunView(run_dir)), host, port, quiet=quiet)
