"""The coordinator's run view (``fl-server serve --run DIR``): the summary of report.json read defensively,
the page served offline while the report is rewritten, and (slow) a real simulation run shown in Chromium
with every site's status and every round, its progress reported per stage on the way.

Set ``FEDCOHORT_SCREENSHOT_RUN=docs/img/coordinator.png`` to write the README's screenshot of the view.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.release.disclosure import ReleasedCounts
from fl_server.agreement import AgreementRule, SiteAnswer, agree
from fl_server.report import REPORT_JSON, RunReport, write_atomic, write_reports
from fl_server.serve import make_server, summarize_run
from tests.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS


def _released(cases: int | None, pos: int | None, neg: int | None) -> ReleasedCounts:
    return ReleasedCounts(min_cell_size=5, rounding=1, noise=False, patients=cases, subsets={"labelled": cases},
                          labels={"labelled": {"positive": pos, "negative": neg, "unknown": 0}})


def _report() -> RunReport:
    answers = [SiteAnswer("site-a", 1, "answered", _released(20, 6, 14)),
               SiteAnswer("site-b", 2, "error", reason="store has no index"),
               SiteAnswer("site-c", 3, "answered", _released(12, None, 9))]
    agreement = agree(answers, AgreementRule(subset="labelled", min_cases=10))
    return RunReport(cohort_name="pacemaker_tavi", spec={}, answers=answers, agreement=agreement,
                     config={"federation": {"rounds": 3}})


def test_the_summary_has_every_site_and_reads_a_partial_report() -> None:
    report = _report()
    summary = summarize_run(report.to_json())
    assert summary["phase"] == "negotiated; training"
    by_site = {s["site_id"]: s for s in summary["sites"]}
    assert [by_site[s]["status"] for s in ("site-a", "site-b", "site-c")] == ["answered", "error", "answered"]
    assert by_site["site-a"]["labels"] == {"positive": 6, "negative": 14, "unknown": 0}
    assert by_site["site-c"]["labels"]["positive"] is None  # suppressed stays suppressed
    assert by_site["site-b"]["labels"] is None and by_site["site-b"]["participates"] is False
    assert summary["participating_sites"] == ["site-a", "site-c"] and summary["planned_rounds"] == 3

    report.rounds = [{"round": 1, "train": {"site-a": {"loss": 0.7}}, "evaluate": {"site-a": {"auroc": 0.6}},
                      "aggregated": {"auroc": 0.6}, "train_loss": 0.7}]
    report.training_errors = [{"round": 1, "phase": "train", "site": "site-c", "reason": "out of memory"},
                              {"round": 1, "phase": "train", "site": "*", "reason": "only 1 site replied"}]
    data = report.to_json()
    data["best_round"] = 1  # keys this view does not know are shown as they are
    data["consortium_totals"] = {"status": "released", "contributors": ["site-a", "site-c"], "min_cell_size": 5,
                                 "subsets": {"labelled": 32}, "labels": {"labelled": {"positive": 9, "negative": 23,
                                                                                      "unknown": 0}}}
    summary = summarize_run(data)
    assert summary["phase"] == "training: round 1 of 3 done"
    assert summary["rounds"][0]["aggregated"] == {"auroc": 0.6}
    assert [e["reason"] for e in next(s for s in summary["sites"] if s["site_id"] == "site-c")["errors"]] == \
        ["out of memory"]
    assert [e["site"] for e in summary["errors"]] == ["*"]
    assert summary["more"] == {"best_round": 1}
    secure = summary["secure_totals"]
    assert secure["key"] == "consortium_totals" and secure["status"] == "released" and secure["cases"] == 32
    assert secure["labels"] == {"positive": 9, "negative": 23, "unknown": 0}
    assert secure["contributors"] == ["site-a", "site-c"]
    # Whatever is missing or of another shape is left out instead of failing.
    assert summarize_run({"sites": [{"site_id": "x"}], "rounds": "?", "agreement": None})["sites"][0]["status"] is None


def _get(url: str, path: str) -> tuple[int, Any]:
    host, port = url.split("//")[1].rstrip("/").split(":")
    con = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        con.request("GET", path)
        resp = con.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if (resp.getheader("Content-Type") or "").startswith(
            "application/json") else raw.decode(errors="replace")
    finally:
        con.close()


@pytest.fixture
def view(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    run = tmp_path / "run"
    server = make_server(run, port=0).start()
    yield server.url, run
    server.shutdown()
    server.server_close()


def test_the_view_waits_for_the_report_then_follows_its_rewrites(view: tuple[str, Path]) -> None:
    url, run = view
    status, state = _get(url, "/api/run")
    assert status == 200 and state["report"] is None and "waiting" in state["message"]
    report = _report()
    write_reports(report, run)
    _, first = _get(url, "/api/run")
    assert first["report"]["phase"] == "negotiated; training" and len(first["report"]["sites"]) == 3
    report.rounds = [{"round": 1, "evaluate": {}, "train": {}, "aggregated": {"auroc": 0.55}}]
    report.final_weights = "final_model.npz"
    write_reports(report, run)
    _, second = _get(url, "/api/run")
    assert second["version"] != first["version"] and second["report"]["phase"] == "finished"
    assert not list(run.glob(".*.tmp"))  # the atomic write left no temporary file
    write_atomic(run / REPORT_JSON, "[1, 2]")
    assert "not a run report" in _get(url, "/api/run")[1]["message"]


def test_the_page_is_served_offline_and_stays_in_its_folders(view: tuple[str, Path]) -> None:
    url, _ = view
    status, page = _get(url, "/")
    assert status == 200 and "/static/run.js" in page and "https://" not in page
    for name in ("run.js", "run.css", "vendor/vega.min.js", "vendor/vega-lite.min.js", "vendor/vega-embed.min.js"):
        assert _get(url, f"/static/{name}")[0] == 200, name
    for path in ("/static/../serve.py", "/static/%2e%2e/serve.py", "/static/vendor/%2e%2e/%2e%2e/server.py",
                 "/static/vendor/../../api.py", "/static/..%2fserve.py"):
        status, body = _get(url, path)
        assert status in (400, 404) and "import " not in str(body), path


# --- a real run, shown in the browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, int, int]], list[str]]:
    """Three tiny sites; site 1's index is gone (an error), the other two train two FedAvg rounds.

    The ServerApp talks to the sites through the demo's ProgressGrid, so the run also shows the
    progress a person sees during ``fl-server demo``.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_client.client_app import build_client_app
    from fl_server.demo import ProgressGrid
    from fl_server.federation import RunSettings, run_federation
    from tests.federation_sites import build_consortium, copy_consortium, flwr_log_level, quiet_flower

    root = tmp_path_factory.mktemp("coordinator-view")
    c = copy_consortium(build_consortium(tmp_path_factory), root / "sites")
    for i in range(c.n_sites):
        c.set_policy(i, min_cell_size=5)
    (c.site(1).store_path() / "index.duckdb").unlink()
    quiet_flower(root / "flwr-home")
    out = root / "run"
    settings = RunSettings(overrides="federation.rounds=2 training.epochs=1 agreement.min_cases=5 "
                                     "federation.min_sites=1", out_dir=str(out), expected_sites=c.n_sites, wait_s=60)
    steps: list[tuple[str, int, int]] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(ProgressGrid(grid, lambda d, i, n: steps.append((d, i, n)), 2), settings)  # type: ignore[arg-type]

    with flwr_log_level(logging.WARNING):  # restored after: later tests read the flwr log at INFO
        run_simulation(server_app=app, client_app=build_client_app(c.consortium_json), num_supernodes=c.n_sites,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return out, steps, [c.site(i).site_id for i in range(c.n_sites)]


@pytest.mark.slow
def test_the_demo_progress_reports_negotiation_and_each_round(finished_run) -> None:  # type: ignore[no-untyped-def]
    _, steps, _ = finished_run
    stages = list(dict.fromkeys(d for d, _, _ in steps))
    assert stages[0] == "negotiation (sites answered)"
    assert ("negotiation (sites answered)", 3, 3) in steps
    rounds = [s for s in stages if s.startswith("round ")]
    assert rounds == ["round 1/2 (train + evaluate replies)", "round 2/2 (train + evaluate replies)"]
    for stage in rounds:  # two training sites: 2 train + 2 evaluate replies per round
        assert (stage, 4, 4) in steps


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium): "
                                             "browser test of the run view not run")
def test_the_view_shows_every_site_and_the_rounds_of_a_finished_run(finished_run) -> None:  # type: ignore[no-untyped-def]
    playwright = pytest.importorskip("playwright.sync_api")
    out, _, site_ids = finished_run
    report = json.loads((out / REPORT_JSON).read_text())
    server = make_server(out, port=0).start()
    problems: list[str] = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1100})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("request", lambda r: problems.append(f"external request: {r.url}")
                    if not r.url.startswith(server.url) else None)
            page.goto(server.url)
            page.wait_for_function("Number(document.body.dataset.renders) >= 1", timeout=30_000)
            assert page.inner_text("#phase") == "finished"
            shown = dict(page.eval_on_selector_all("#sites tbody tr", "rs => rs.map(r => [r.dataset.site, r.dataset.status])"))
            assert shown == {s["site_id"]: s["status"] for s in report["sites"]}
            assert set(shown) == set(site_ids) and shown[site_ids[1]] == "error"
            assert "index" in page.inner_text(f'#sites tr[data-site="{site_ids[1]}"]')  # the error's reason
            rounds = page.eval_on_selector_all("#rounds tbody tr", "rs => rs.map(r => r.dataset.round)")
            assert rounds == [str(r["round"]) for r in report["rounds"]] == ["1", "2"]
            auroc = report["rounds"][-1].get("aggregated", {}).get("auroc")
            if auroc is not None:
                assert f"{auroc:.3f}" in page.inner_text('#rounds tr[data-round="2"]')
            training = page.inner_text("#training")
            assert "final model stored at 2 of 2 sites" in training and "site_calibration: intercept" in training
            page.wait_for_selector("#chart-balance svg")
            released = any(m in rnd.get("aggregated", {}) for rnd in report["rounds"]
                           for m in ("auroc", "balanced-accuracy", "loss"))
            if released:
                page.wait_for_selector("#chart-metrics svg")
            else:  # tiny sites: every validation split is below the minimum cell, and the page says so
                assert "withheld at every site" in page.inner_text("#chart-metrics")
            if os.environ.get("FEDCOHORT_SCREENSHOT_RUN"):
                page.screenshot(path=os.environ["FEDCOHORT_SCREENSHOT_RUN"], full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(out.parent / "flwr-home", ignore_errors=True)
    assert not problems, problems
