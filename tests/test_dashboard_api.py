"""The dashboard API: counts equal evaluate(), clicks keep same-instance semantics, charts are exact,
specs round-trip, errors are readable, save and export work, the server binds loopback."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cohort.dashboard.api import ApiError, Dashboard
from cohort.dashboard.server import make_server
from cohort.dashboard.state import Action, DashboardState, apply_action, spec_to_state, state_to_spec
from cohort.index.catalog import field_catalog
from cohort.index.compile_duck import evaluate
from cohort.index.duck import INDEX_FILE, DuckIndex
from cohort.spec.load import load_spec, parse_spec
from cohort.spec.text import parse_text


@functools.lru_cache(maxsize=2)
def synthetic_store(per_site: int = 5) -> Path:
    """A store of two synthetic sites, converted and indexed by the real pipeline.

    Built once per test process (the browser test uses it too) and removed at exit.
    """
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    root = Path(tempfile.mkdtemp(prefix="fedcohort-dashboard-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    store = root / "store"
    for site in synthesize_consortium(root / "raw", 2, per_site, seed=3):
        report = ingest_folder(site.raw_dir, store, load_site_config(site.site_config))
        assert not report.quarantine, report.quarantine
    return store


def conformance_store(root: Path) -> Path:
    """A store whose index holds the shared conformance objects (same-instance traps included)."""
    from tests.conformance_cases import build_objects

    store = root / "conformance"
    store.mkdir()
    with DuckIndex(store / INDEX_FILE) as index:
        index.add_extracted((o, f"/conformance/{o.patient_id}/{o.sop_uid}.dcm") for o in build_objects())
    return store


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> Iterator[Dashboard]:
    dash = Dashboard(conformance_store(tmp_path_factory.mktemp("dash")), configs_dir=tmp_path_factory.mktemp("cfg"))
    yield dash
    dash.close()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Iterator[Dashboard]:
    dash = Dashboard(synthetic_store(), configs_dir=tmp_path_factory.mktemp("configs"))
    yield dash
    dash.close()


def act(dash: Dashboard, result: dict[str, Any], **action: Any) -> dict[str, Any]:
    return dash.query({"state": result["state"], "action": action})


def assert_counts_are_evaluate(dash: Dashboard, result: dict[str, Any]) -> None:
    """The counts shown equal a fresh evaluate() of the spec shown (as YAML and as text)."""
    assert dash.index is not None
    from_yaml = parse_spec(yaml.safe_load(result["yaml"]), catalog=dash.catalog)
    from_text = parse_text(result["text"], catalog=dash.catalog)
    assert from_yaml == from_text == parse_spec(result["spec"], catalog=dash.catalog)
    assert evaluate(dash.index, from_yaml).to_json() == result["counts"]


def chart(result: dict[str, Any], chart_id: str) -> dict[str, Any]:
    return next(c for c in result["charts"] if c["id"] == chart_id)


def lbbb(dash: Dashboard) -> dict[str, Any]:
    start = dash.query({"state": dash.initial_state().model_dump(mode="json")})
    return act(dash, start, type="add", kind="SR", template="ecg_report",
               filters=[{"field": "ecg_finding", "op": "=", "value": "LBBB"}])


# --- same-instance semantics of clicks ---------------------------------------------------------------

def test_clicks_on_one_kind_hold_on_the_same_report_and_split_releases_them(conf: Dashboard) -> None:
    one = lbbb(conf)
    both = act(conf, one, type="add", kind="SR", template="ecg_report",
               filters=[{"field": "qrs_duration", "op": ">=", "value": 120, "unit": "ms"}])
    assert [len(g["filters"]) for g in both["state"]["groups"]] == [2]
    # P01, P06, P14 have QRS >= 120 and LBBB on one report; P02's two reports split them (the trap).
    assert both["counts"]["patients"] == 3
    assert_counts_are_evaluate(conf, both)
    split = act(conf, both, type="split", group="ecg_report", index=1)
    assert [len(g["filters"]) for g in split["state"]["groups"]] == [1, 1]
    assert split["counts"]["patients"] == 4  # P02 now matches: LBBB on one report, QRS 150 on another
    assert_counts_are_evaluate(conf, split)
    merged = act(conf, split, type="merge", group=split["state"]["groups"][1]["id"], target="ecg_report")
    assert merged["counts"]["patients"] == 3 and merged["spec"] == both["spec"]


def test_negate_and_remove(conf: Dashboard) -> None:
    one = lbbb(conf)
    neg = act(conf, one, type="negate", group="ecg_report", index=0)
    assert neg["state"]["groups"][0]["negated"] is True
    assert neg["spec"]["cohort"] == {"not": "ecg_report"}
    assert neg["counts"]["patients"] == conf.patients - one["counts"]["patients"]
    assert_counts_are_evaluate(conf, neg)
    two = act(conf, one, type="add", kind="SR", template="ecg_report",
              filters=[{"field": "qrs_duration", "op": ">=", "value": 120}])
    part = act(conf, two, type="negate", group="ecg_report", index=1)  # split off, then negated
    assert [g["negated"] for g in part["state"]["groups"]] == [False, True]
    assert_counts_are_evaluate(conf, part)
    gone = act(conf, part, type="remove_group", group=part["state"]["groups"][1]["id"])
    assert gone["counts"] == one["counts"]
    empty = act(conf, gone, type="remove", group="ecg_report", index=0)
    assert empty["state"]["groups"][0]["filters"] == []  # "has an ECG report"
    assert_counts_are_evaluate(conf, empty)


def test_a_second_brush_replaces_the_range() -> None:
    state = DashboardState()
    for lo, hi in ((100, 140), (120, 160)):
        state = apply_action(state, Action(type="add", kind="SR", template="ecg_report", filters=[
            {"field": "qrs_duration", "op": ">=", "value": lo}, {"field": "qrs_duration", "op": "<", "value": hi}]))
    assert [(f.op, f.value) for f in state.groups[0].filters] == [(">=", 120), ("<", 160)]


# --- charts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chart_id", ["SR:ecg_report:ecg_finding", "SEG::segment_type", "SEG::algorithm_type",
                                      "SR:registry:prosthesis_type", "SR:procedures:pacemaker_after_tavi",
                                      "CT::slice_thickness", "SR:ecg_report:qrs_duration", "ECG::date"])
def test_clicking_a_bar_gives_a_cohort_of_the_bars_height(conf: Dashboard, chart_id: str) -> None:
    """Every bar counts the patients a click on it selects (charts and counts agree exactly)."""
    start = conf.query({"state": DashboardState().model_dump(mode="json")})
    c = chart(start, chart_id)
    assert c["bars"] and sum(b["count"] for b in c["bars"]) > 0
    for bar in c["bars"]:
        if c["type"] == "histogram":
            if c["value_type"] == "date":
                lo, hi = f"{int(bar['lo'])}-01-01", f"{int(bar['hi'])}-01-01"
            else:
                lo, hi = bar["lo"], bar["hi"]
            filters = [{"field": c["field"], "op": ">=", "value": lo}, {"field": c["field"], "op": "<", "value": hi}]
        else:
            filters = [{"field": c["field"], "op": "=", "value": bar["value"]}]
        got = act(conf, start, type="add", kind=c["kind"], template=c["template"] or None, filters=filters)
        assert got["counts"]["patients"] == bar["count"], (bar, got["text"])


def test_charts_of_a_filtered_kind_show_the_matched_instances(conf: Dashboard) -> None:
    one = lbbb(conf)
    qrs = chart(one, "SR:ecg_report:qrs_duration")
    # Values of the LBBB reports only: P01 130, P02 100 (its other report, QRS 150, has no LBBB), P06 120,
    # P14 130; the registry chart is over the cohort's patients (P01 only has a registry record).
    values = {b["lo"]: b["count"] for b in qrs["bars"] if b["count"]}
    assert sum(values.values()) == 4 and all(lo <= 130 for lo in values)
    assert sum(b["count"] for b in chart(one, "SR:registry:prosthesis_type")["bars"]) == 1
    objects = {(o["kind"], o["template"]): o["count"] for o in one["objects"]}
    assert objects[("SR", "ecg_report")] == one["counts"]["patients"] == 4


def test_fields_are_grouped_by_object_kind(conf: Dashboard) -> None:
    fields = conf.fields()
    titles = {g["title"]: {f["name"]: f for f in g["fields"]} for g in fields["objects"]}
    assert {"CT series", "ECG waveforms", "Segmentations (SEG)", "SR: ecg_report", "SR: registry",
            "SR: landmarks", "SR: procedures"} <= set(titles)
    assert titles["SR: ecg_report"]["qrs_duration"]["chart"] == "histogram"
    assert titles["SR: ecg_report"]["ecg_finding"]["chart"] == "categories"
    assert "LBBB" in titles["SR: ecg_report"]["ecg_finding"]["aliases"]
    assert titles["Segmentations (SEG)"]["algorithm_type"]["chart"] == "categories"
    assert titles["SR: landmarks"]["landmark_point"]["chart"] == "categories"  # "present"


# --- specs in and out --------------------------------------------------------------------------------

def test_loaded_spec_round_trips_and_keeps_what_the_page_does_not_edit(conf: Dashboard) -> None:
    text = ("ecg := SR:ecg_report[qrs_duration >= 120 ms, ecg_finding = LBBB]; ct := CT; proc := SR:procedures; "
            "cohort ecg and (ct or proc); label proc.pacemaker_after_tavi positive true negative false; "
            "subset both = ecg and ct")
    got = conf.load_source(text)
    spec = parse_text(text, catalog=conf.catalog)
    assert parse_spec(got["spec"], catalog=conf.catalog) == spec.model_copy(update={"name": "cohort"})
    assert [g["id"] for g in got["state"]["groups"]] == ["ecg"]
    assert got["state"]["terms"] == [{"any": ["ct", "proc"]}]
    assert_counts_are_evaluate(conf, got)
    assert "both" in got["counts"]["subsets"]
    # Removing the OR condition drops it; removing a group the label reads drops the label, with a note.
    no_or = act(conf, got, type="remove_term", index=0)
    assert no_or["spec"]["cohort"] == "ecg" and no_or["counts"]["patients"] == 3
    assert conf.load_source(yaml.safe_dump(got["spec"]))["spec"] == got["spec"]


def test_the_every_patient_cohort_is_no_filter_but_a_look_alike_term_is_kept() -> None:
    present, catalog = [("CT", None), ("SR", "registry")], field_catalog()
    empty, _ = state_to_spec(DashboardState(), present, catalog=catalog)
    assert empty.cohort.any == ["any_ct", "any_sr_registry"]  # type: ignore[union-attr]
    assert spec_to_state(empty) == DashboardState()
    both = parse_spec({"objects": {"any_ct": {"kind": "CT"}, "any_sr_registry": {"kind": "SR", "template": "registry"},
                                   "seg": {"kind": "SEG"}},
                       "cohort": {"all": ["seg", {"any": ["any_ct", "any_sr_registry"]}]}}, catalog=catalog)
    state = spec_to_state(both)
    assert state.terms == [{"any": ["any_ct", "any_sr_registry"]}]
    assert state_to_spec(state, present, catalog=catalog)[0] == both.model_copy(update={"name": "cohort"})


def test_state_to_spec_prunes_references_to_removed_objects() -> None:
    spec = parse_spec({"objects": {"tavi": {"kind": "SR", "template": "procedures"},
                                   "ecg": {"kind": "SR", "template": "ecg_report",
                                           "within": {"of": "tavi", "min_days": -90, "max_days": 0}}},
                       "cohort": {"all": ["tavi", "ecg"]},
                       "label": {"object": "tavi", "field": "pacemaker_after_tavi", "positive": [True],
                                 "negative": [False]},
                       "subsets": {"t": "tavi"}}, catalog=field_catalog())
    state = spec_to_state(spec)
    state = apply_action(state, Action(type="remove_group", group="tavi"))
    pruned, notices = state_to_spec(state, [("SR", "ecg_report")], catalog=field_catalog())
    assert pruned.cohort == "ecg" and pruned.label is None and not pruned.subsets
    assert pruned.objects["ecg"].within is None and len(notices) == 3


def test_saved_specs_open_with_hydra_composition(synth: Dashboard) -> None:
    shutil.copytree(Path(__file__).resolve().parents[1] / "configs" / "cohort", synth.configs_dir, dirs_exist_ok=True)
    assert "pacemaker_tavi" in synth.saved_specs()
    got = synth.load_saved("pacemaker_tavi")
    assert got["spec"]["name"] == "pacemaker_tavi"
    spec = load_spec(synth.configs_dir / "pacemaker_tavi.yaml", catalog=synth.catalog)
    assert synth.index is not None
    assert got["counts"] == evaluate(synth.index, spec).to_json()


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expect", [
    ("ecg := SR:ecg_report[qrs_durration >= 120]; cohort ecg", "did you mean 'qrs_duration'"),
    ("ecg := SR:ecg_report[qrs_duration >= ]; cohort ecg", "^"),
    ("objects: {x: {kind: CT, where: [{field: slice_thicknes, op: '<', value: 1}]}}\ncohort: x", "slice_thickness"),
    ("", "type a text query"),
], ids=["unknown-field", "syntax", "yaml-unknown-field", "empty"])
def test_bad_input_gives_a_readable_message(conf: Dashboard, source: str, expect: str) -> None:
    with pytest.raises(ApiError) as err:
        conf.load_source(source)
    assert expect in str(err.value) and "Traceback" not in str(err.value)


def test_bad_state_and_actions_are_refused_readably(conf: Dashboard) -> None:
    start = conf.query({"state": {}})
    with pytest.raises(ApiError, match="unknown field 'qrs'"):
        act(conf, start, type="add", kind="SR", template="ecg_report", filters=[{"field": "qrs", "op": ">", "value": 1}])
    with pytest.raises(ApiError, match="no group named 'nope'"):
        act(conf, start, type="remove_group", group="nope")
    with pytest.raises(ApiError, match="invalid action"):
        act(conf, start, type="explode")


def test_empty_and_missing_stores(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="does not exist"):
        Dashboard(tmp_path / "nowhere")
    for store in (tmp_path / "no-index", tmp_path / "empty-index"):
        store.mkdir()
        if store.name == "empty-index":
            DuckIndex.for_store(store).close()
        empty = Dashboard(store)
        assert "no indexed objects" in empty.fields()["message"]
        with pytest.raises(ApiError, match="no indexed objects yet; run 'cohort ingest"):
            empty.query({"state": {}})
        with pytest.raises(ApiError, match="no indexed objects yet"):
            empty.load_source("ct := CT; cohort ct")
        empty.close()


# --- HTTP --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(synth: Dashboard) -> Iterator[str]:
    server = make_server(synth, port=0)
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


def call(url: str, body: Any = None, *, ctype: str = "application/json",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, status, rtype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, rtype = err.read(), err.code, err.headers.get("Content-Type", "")
    return status, json.loads(raw) if rtype.startswith("application/json") else raw.decode()


def test_page_and_vendored_scripts_are_served_locally(http: str) -> None:
    status, page = call(http)
    assert status == 200 and "Cohort dashboard" in page
    for name in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        assert f'src="/static/vendor/{name}"' in page
        status, script = call(http + f"static/vendor/{name}")
        assert status == 200 and len(script) > 10_000
    assert "https://" not in page.replace("https://vega.github.io/schema", "")
    status, _ = call(http + "static/../api.py")
    assert status == 404


def test_http_errors_are_json_messages(http: str) -> None:
    status, body = call(http + "api/query", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = call(http + "api/query", {"state": {}}, ctype="text/plain")
    assert status == 415 and "application/json" in body["error"]
    status, body = call(http + "api/save", {"name": "x"}, headers={"Origin": "http://evil.example"})
    assert status == 403
    status, body = call(http + "api/nothing")
    assert status == 404 and "no API endpoint" in body["error"]
    status, body = call(http + "api/text", {"text": "cohort nobody"})
    assert status == 400 and "unknown object 'nobody'" in body["error"] and "Traceback" not in body["error"]


def test_query_over_http_equals_evaluate(http: str, synth: Dashboard) -> None:
    status, start = call(http + "api/initial")
    assert status == 200
    assert_counts_are_evaluate(synth, start)
    assert start["counts"]["patients"] == synth.patients
    finding = chart(start, "SR:ecg_report:ecg_finding")["bars"][0]
    status, got = call(http + "api/query", {"state": start["state"], "action": {
        "type": "add", "kind": "SR", "template": "ecg_report",
        "filters": [{"field": "ecg_finding", "op": "=", "value": finding["value"]}]}})
    assert status == 200 and got["counts"]["patients"] == finding["count"]
    assert_counts_are_evaluate(synth, got)
    status, text = call(http + "api/spec/text", {"state": got["state"]})
    assert status == 200 and text == got["text"]


def test_save_writes_a_spec_cohort_query_reads(http: str, synth: Dashboard) -> None:
    _, start = call(http + "api/initial")
    _, got = call(http + "api/query", {"state": start["state"], "action": {
        "type": "add", "kind": "CT", "filters": [{"field": "slice_thickness", "op": "<=", "value": 1.0, "unit": "mm"}]}})
    status, saved = call(http + "api/save", {"state": got["state"], "name": "thin_ct"})
    assert status == 200
    path = Path(saved["path"])
    assert path == synth.configs_dir / "thin_ct.yaml"
    spec = load_spec(path, catalog=synth.catalog)
    assert spec.name == "thin_ct"
    assert synth.index is not None
    assert evaluate(synth.index, spec).to_json() == got["counts"]
    status, body = call(http + "api/save", {"state": got["state"], "name": "thin_ct"})
    assert status == 409 and "exists" in body["error"]
    assert call(http + "api/save", {"state": got["state"], "name": "thin_ct", "overwrite": True})[0] == 200
    status, body = call(http + "api/save", {"state": got["state"], "name": "../escape"})
    assert status == 400 and "invalid name" in body["error"]
    status, listed = call(http + "api/specs")
    assert "thin_ct" in listed["specs"]


def test_export_runs_the_cohort_export(http: str, synth: Dashboard) -> None:
    _, start = call(http + "api/initial")
    # One patient keeps it quick: the first bar of the registry's age histogram with patients in it.
    age = next(b for b in chart(start, "SR:registry:age")["bars"] if b["count"])
    _, got = call(http + "api/query", {"state": start["state"], "action": {
        "type": "add", "kind": "SR", "template": "registry",
        "filters": [{"field": "age", "op": ">=", "value": age["lo"]}, {"field": "age", "op": "<", "value": age["hi"]}]}})
    status, result = call(http + "api/export", {"state": got["state"], "name": "first"})
    assert status == 200, result
    out = Path(result["out"])
    assert out.parent == synth.store / "exports" and (out / "datalist.json").is_file()
    assert result["patients"] == got["counts"]["patients"] == age["count"]
