"""The dashboard in a real browser (Debian chromium driven by Playwright): load the page on a
synthesized store, click a bar, brush a range, and check that the counts the page shows equal
``cohort query --json`` for the spec the page shows; two sessions with different filters at once;
an ingest into the served store while the page is open (the page offers the new counts).

Set ``FEDCOHORT_SCREENSHOT=docs/img/dashboard.png`` to write the README's screenshot on the way (after
the click and the brush); ``FEDCOHORT_SCREENSHOT_PATIENTS=40`` makes the store larger for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cohort.dashboard.api import Dashboard
from cohort.dashboard.server import make_server
from tests.test_dashboard_api import synthetic_store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]

PROBLEMS: list[str] = []  # page errors, console errors and requests leaving the server, in order

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium): "
                                                "browser tests of the dashboard not run"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    store = synthetic_store(int(os.environ.get("FEDCOHORT_SCREENSHOT_PATIENTS", "5")))
    dashboard = Dashboard(store, configs_dir=tmp_path_factory.mktemp("configs"))
    srv = make_server(dashboard, port=0).start()
    yield srv.url, store
    srv.shutdown()
    srv.server_close()
    dashboard.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module; tests open pages (and separate sessions) in it."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser: Any, url: str, problems: list[str] = PROBLEMS) -> Any:
    """A page of its own browser context (its own session); errors and external requests go to ``problems``."""
    pg = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("request", lambda r: problems.append(f"external request: {r.url}") if not r.url.startswith(url) else None)
    pg.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}: {r.text()[:300]}") if r.status >= 400 else None)
    pg.goto(url)
    settle(pg, 1)
    return pg


@pytest.fixture(scope="module")
def page(server, browser) -> Iterator[Any]:
    pg = open_page(browser, server[0])
    yield pg
    pg.context.close()


def settle(page: Any, updates: int) -> None:
    """Wait until the page rendered its ``updates``-th answer and is idle."""
    page.wait_for_function(f"Number(document.body.dataset.updates) >= {updates} && "
                           "document.body.dataset.busy === 'false'", timeout=60_000)


def updates(page: Any) -> int:
    return int(page.evaluate("document.body.dataset.updates"))


def shown_counts(page: Any) -> dict[str, Any]:
    """The counts panel as the page shows it."""
    rows = page.eval_on_selector_all("#subsets tbody tr", """rows => rows.map(r => [r.dataset.subset,
        ...Array.from(r.querySelectorAll('td')).slice(1, 5).map(td => td.textContent)])""")
    return {"patients": int(page.inner_text("#count-cohort")),
            "subsets": {name: [int(x) if x.isdigit() else None for x in cells] for name, *cells in rows
                        if name != "cohort"}}


def cohort_query(store: Path, yaml_text: str, tmp: Path) -> dict[str, Any]:
    """``cohort query --json`` (a separate process, like a steward at the shell) for the shown spec."""
    spec = tmp / "shown.yaml"
    spec.write_text(yaml_text, encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", "from cohort.cli import main; main()", "query", "--store", str(store),
                          "--spec", str(spec), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_page_matches_cohort_query(page: Any, store: Path, tmp: Path) -> dict[str, Any]:
    yaml_text = page.text_content("#spec-yaml")
    truth = cohort_query(store, yaml_text, tmp)
    shown = shown_counts(page)
    assert shown["patients"] == truth["patients"]
    expected = {name: [n, truth["labels"][name]["positive"], truth["labels"][name]["negative"],
                       truth["labels"][name]["unknown"]] for name, n in truth["subsets"].items()}
    assert shown["subsets"] == expected
    return truth


def brush(page: Any, chart_id: str, first: int, last: int) -> None:
    """Drag across the bars ``first``..``last`` of a histogram with the mouse."""
    box = page.locator(f'[data-chart-id="{chart_id}"]')
    box.scroll_into_view_if_needed()
    bars = box.locator('path[aria-roledescription="bar"]')
    a, b = bars.nth(first).bounding_box(), bars.nth(last).bounding_box()
    plot_bottom = max(bars.nth(i).bounding_box()["y"] + bars.nth(i).bounding_box()["height"]
                      for i in range(bars.count()))
    y = plot_bottom - 2
    page.mouse.move(a["x"] + 2, y)
    page.mouse.down()
    page.mouse.move((a["x"] + b["x"] + b["width"]) / 2, y, steps=4)
    page.mouse.move(b["x"] + b["width"] - 2, y, steps=4)
    page.mouse.up()


def test_click_a_bar_brush_a_range_and_the_counts_equal_cohort_query(page, server, tmp_path) -> None:
    url, store = server
    start = assert_page_matches_cohort_query(page, store, tmp_path)
    assert start["patients"] == int(page.inner_text("#store").split("·")[1].split()[0]) > 0

    # Click the first bar of the ECG findings: one same-instance group with that filter.
    finding = page.locator('[data-chart-id="SR:ecg_report:ecg_finding"] path[aria-roledescription="bar"]').first
    finding.scroll_into_view_if_needed()
    label = finding.get_attribute("aria-label").split(":")[0]
    n = updates(page)
    finding.click()
    settle(page, n + 1)
    groups = page.locator("#groups .group")
    assert groups.count() == 1
    assert page.locator('#groups .filter[data-filter^="ecg_finding = "]').count() == 1
    clicked = assert_page_matches_cohort_query(page, store, tmp_path)
    assert 0 < clicked["patients"] <= start["patients"]
    assert f"ecg_finding = {label}" in page.text_content("#spec-text")

    # Brush three bins of the QRS histogram: a range on the same report (same group).
    chart_id = "SR:ecg_report:qrs_duration"
    heights = page.locator(f'[data-chart-id="{chart_id}"] path[aria-roledescription="bar"]').count()
    assert heights >= 3
    n = updates(page)
    brush(page, chart_id, 0, heights - 2)
    settle(page, n + 1)
    assert groups.count() == 1
    texts = page.eval_on_selector_all("#groups .filter", "fs => fs.map(f => f.dataset.filter)")
    assert any(t.startswith("qrs_duration ≥") for t in texts) and any(t.startswith("qrs_duration <") for t in texts)
    assert_page_matches_cohort_query(page, store, tmp_path)
    if os.environ.get("FEDCOHORT_SCREENSHOT"):
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=os.environ["FEDCOHORT_SCREENSHOT"])

    # Split the finding off into its own group, then negate the range's group: still what cohort query says.
    n = updates(page)
    page.locator('#groups .group').first.locator('[data-action="split"]').first.click()
    settle(page, n + 1)
    assert groups.count() == 2
    assert_page_matches_cohort_query(page, store, tmp_path)
    n = updates(page)
    page.locator('#groups .group').first.locator('[data-action="negate-group"]').click()
    settle(page, n + 1)
    assert page.locator("#groups .group.negated").count() == 1
    negated = assert_page_matches_cohort_query(page, store, tmp_path)
    assert "not " in page.text_content("#spec-text")
    assert negated["patients"] <= start["patients"]
    assert not PROBLEMS, PROBLEMS


def test_typed_text_loads_into_the_filters_and_errors_show_readably(page, server, tmp_path) -> None:
    url, store = server
    page.fill("#source", "ecg := SR:ecg_report[qrs_durration >= 120 ms]; cohort ecg")
    n = updates(page)
    page.click("#load-source")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert "did you mean 'qrs_duration'" in message and "Traceback" not in message
    assert updates(page) == n  # the page kept its last good state

    page.fill("#source", "ecg := SR:ecg_report[qrs_duration >= 100 ms]; ct := CT; cohort ecg and ct")
    page.click("#load-source")
    settle(page, n + 1)
    assert page.is_hidden("#error")
    assert sorted(page.eval_on_selector_all("#groups .group", "gs => gs.map(g => g.dataset.group)")) == ["ct", "ecg"]
    assert_page_matches_cohort_query(page, store, tmp_path)


# --- several users, and new data while the page is open ---------------------------------------------

@pytest.fixture(scope="module")
def growing(tmp_path_factory) -> Iterator[tuple[str, Path, Any]]:
    """A store holding one synthetic site, served; the test ingests the second site into it."""
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    root = tmp_path_factory.mktemp("growing")
    store = root / "store"
    sites = synthesize_consortium(root / "raw", 2, 4, seed=5)
    ingest_folder(sites[0].raw_dir, store, load_site_config(sites[0].site_config))
    dashboard = Dashboard(store, configs_dir=root / "configs")
    srv = make_server(dashboard, port=0).start()
    yield srv.url, store, sites[1]
    srv.shutdown()
    srv.server_close()
    dashboard.close()


def click_first_bar(page: Any, chart_id: str) -> None:
    bar = page.locator(f'[data-chart-id="{chart_id}"] path[aria-roledescription="bar"]').first
    bar.scroll_into_view_if_needed()
    n = updates(page)
    bar.click()
    settle(page, n + 1)


def test_two_sessions_with_different_filters_get_their_own_counts(browser, growing, tmp_path) -> None:
    url, store, _ = growing
    problems: list[str] = []
    a, b = open_page(browser, url, problems), open_page(browser, url, problems)
    click_first_bar(a, "SR:ecg_report:ecg_finding")
    click_first_bar(b, "SR:registry:prosthesis_type")
    count_a = assert_page_matches_cohort_query(a, store, tmp_path)["patients"]
    count_b = assert_page_matches_cohort_query(b, store, tmp_path)["patients"]
    assert "ecg_finding" in a.text_content("#spec-text") and "ecg_finding" not in b.text_content("#spec-text")
    assert "prosthesis_type" in b.text_content("#spec-text") and "prosthesis_type" not in a.text_content("#spec-text")
    # Both sessions ask again at the same time: each gets the counts of its own filters.
    na, nb = updates(a), updates(b)
    a.evaluate("() => { refreshCounts(); }")  # not awaited: both requests are in flight together
    b.evaluate("() => { refreshCounts(); }")
    settle(a, na + 1)
    settle(b, nb + 1)
    assert shown_counts(a)["patients"] == count_a and shown_counts(b)["patients"] == count_b
    a.context.close()
    b.context.close()
    assert not problems, problems


def test_after_an_ingest_the_page_offers_and_shows_the_new_counts(browser, growing, tmp_path) -> None:
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config

    url, store, second_site = growing
    problems: list[str] = []
    page = open_page(browser, url, problems)
    click_first_bar(page, "SR:ecg_report:ecg_finding")
    before = assert_page_matches_cohort_query(page, store, tmp_path)
    indexed_before = int(page.inner_text("#store").split("·")[1].split()[0])
    assert page.is_hidden("#new-data")
    ingest_folder(second_site.raw_dir, store, load_site_config(second_site.site_config))  # same store, page open
    page.wait_for_selector("#new-data:not([hidden])", timeout=30_000)
    assert "new data" in page.inner_text("#new-data")
    assert shown_counts(page)["patients"] == before["patients"]  # nothing changes until asked
    n = updates(page)
    page.click("#refresh-counts")
    settle(page, n + 1)
    assert page.is_hidden("#new-data")
    after = assert_page_matches_cohort_query(page, store, tmp_path)  # the same filters, on the new index
    assert int(page.inner_text("#store").split("·")[1].split()[0]) > indexed_before
    assert after["patients"] >= before["patients"]
    assert "ecg_finding" in page.text_content("#spec-text")
    page.context.close()
    assert not problems, problems
