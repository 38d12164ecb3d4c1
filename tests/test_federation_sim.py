"""The whole federation on Flower's simulation engine, in-process, on three tiny synthetic sites.

Two runs share this module: a healthy one (every site answers and trains one FedAvg round) and a
faulty one (one site's index is gone, one site is below the agreed minimum of cases).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cohort.protocol import NUM_EXAMPLES, QUERY_ACTION, STATUS_ANSWERED, STATUS_ERROR
from cohort.release.disclosure import release
from cohort.release.gate import answer_query, spec_fields
from fl_server.config import compose_config
from fl_server.report import LABEL_BALANCE_PNG, METRICS_PNG, REPORT_HTML, REPORT_JSON
from tests.federation_sites import (
    Consortium,
    build_consortium,
    copy_consortium,
    quiet_flower,
    run_recorded_simulation,
)

pytestmark = pytest.mark.slow

SITE_MIN_CELL = 5  # the tiny sites choose a smaller minimum cell than the default 10, or nothing trains
BASE = "federation.rounds=1 training.epochs=1"


def _released_locally(site: Any, overrides: str) -> dict[str, Any]:
    """What the site should release: the engine's exact counts under the site's own policy, through the
    site's gate with an empty ledger (a fresh coordinator account). The gate only ever withholds cells:
    every number it releases equals the policy's release of the exact counts."""
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex
    from cohort.spec.load import parse_spec

    cfg = compose_config(None, overrides)
    spec_json = parse_spec(cfg["cohort"], catalog=None).to_dict()
    requested = cfg["disclosure"]["requested_min_cell_size"]
    with DuckIndex.for_store(site.store_path(), read_only=True) as index:
        counts = evaluate(index, parse_spec(spec_json, catalog=None))
    plain = release(counts, site.disclosure, requested_min_cell=requested, spec_fields=spec_fields(spec_json))
    answer = answer_query(site, {"spec": spec_json, "requested_min_cell": requested},
                          account=f"expected-{uuid.uuid4().hex}")
    gated = json.loads(str(answer.released_json))
    for name, value in gated["subsets"].items():
        assert value is None or value == plain.subsets[name], name
        for k, v in gated["labels"][name].items():
            assert v is None or v == plain.labels[name][k], (name, k)
    return gated


def _run(c: Consortium, root: Path, overrides: str) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    from fl_server.federation import RunSettings

    quiet_flower(root / "flwr-home")
    out = root / "run"
    settings = RunSettings(overrides=overrides, out_dir=str(out), expected_sites=c.n_sites, wait_s=60)
    payloads = run_recorded_simulation(c, settings, root / "flower.log")
    return json.loads((out / REPORT_JSON).read_text()), payloads, out


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return build_consortium(tmp_path_factory)


@pytest.fixture(scope="module")
def healthy(shared: Consortium, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("healthy")
    c = copy_consortium(shared, root / "sites")
    for i in range(c.n_sites):
        c.set_policy(i, min_cell_size=SITE_MIN_CELL)
    overrides = f"{BASE} agreement.min_cases={SITE_MIN_CELL}"
    report, payloads, out = _run(c, root, overrides)
    return c, overrides, report, payloads, out


@pytest.fixture(scope="module")
def faulty(shared: Consortium, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Site 1's index is removed; site 2 (the smallest) falls below min_cases; site 0 trains alone."""
    root = tmp_path_factory.mktemp("faulty")
    c = copy_consortium(shared, root / "sites")
    for i in range(c.n_sites):
        c.set_policy(i, min_cell_size=SITE_MIN_CELL)
    small = _released_locally(c.site(2), BASE)["subsets"]["labelled"]
    big = _released_locally(c.site(0), BASE)["subsets"]["labelled"]
    assert small is not None and big is not None and big > small, "fixture sizes no longer fit the scenario"
    min_cases = small + 1
    (c.site(1).store_path() / "index.duckdb").unlink()
    shutil.rmtree(c.site(1).store_path() / "exports", ignore_errors=True)
    overrides = f"{BASE} agreement.min_cases={min_cases} federation.min_sites=1"
    report, payloads, out = _run(c, root, overrides)
    return c, min_cases, report, payloads, out


# ----------------------------------------------------------------------------------- healthy run


def test_run_leaves_every_report_file_and_the_final_weights(healthy) -> None:  # type: ignore[no-untyped-def]
    _, overrides, report, _, out = healthy
    for name in (REPORT_JSON, REPORT_HTML, LABEL_BALANCE_PNG, METRICS_PNG, "final_model.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert report["final_weights"] == "final_model.npz"
    # The final weights have the shared model's layout and were trained (differ from the start).
    from fl_server.federation import initial_arrays

    cfg = compose_config(None, overrides)
    start = initial_arrays(cfg["model"], int(cfg["seed"])).to_numpy_ndarrays()
    with np.load(out / "final_model.npz") as npz:
        final = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    assert [a.shape for a in final] == [a.shape for a in start]
    assert any(not np.allclose(a, b) for a, b in zip(final, start, strict=True))
    assert all(np.isfinite(a).all() for a in final if a.dtype.kind == "f")
    assert report["config"]["federation"]["rounds"] == 1  # the resolved config is in the report


def test_every_site_answered_and_trained(healthy) -> None:  # type: ignore[no-untyped-def]
    c, _, report, payloads, _ = healthy
    site_ids = {c.site(i).site_id for i in range(c.n_sites)}
    assert {s["site_id"]: s["status"] for s in report["sites"]} == dict.fromkeys(site_ids, STATUS_ANSWERED)
    assert set(report["agreement"]["participating_sites"]) == site_ids
    assert report["training_errors"] == []
    rnd = report["rounds"][0]
    assert set(rnd["train"]) == site_ids and set(rnd["evaluate"]) == site_ids
    assert rnd["aggregated"][NUM_EXAMPLES] > 0  # metrics only where their counts reach the minimum cell
    types = [p["type"] for p in payloads]
    assert types.count(f"query.{QUERY_ACTION}") == 3 and types.count("train") == 3 and types.count("evaluate") == 3
    assert not [p for p in payloads if "error" in p]


def test_released_counts_equal_the_local_engine_under_each_site_policy(healthy) -> None:  # type: ignore[no-untyped-def]
    c, overrides, report, _, _ = healthy
    by_site = {s["site_id"]: s for s in report["sites"]}
    for i in range(c.n_sites):
        site = c.site(i)
        expected = _released_locally(site, overrides)
        assert by_site[site.site_id]["counts"] == expected, site.site_id
        assert expected["min_cell_size"] == SITE_MIN_CELL
        decision = next(d for d in report["agreement"]["sites"] if d["site_id"] == site.site_id)
        assert decision["cases"] == expected["subsets"]["labelled"]
        assert decision["positives"] == expected["labels"]["labelled"]["positive"]


def test_num_examples_are_derived_from_the_released_count_and_metrics_need_the_minimum_cell(healthy) -> None:  # type: ignore[no-untyped-def]
    """The exact split sizes stay at the site: ``num-examples`` is the released subset count times the split
    fraction; class metrics are sent only when both classes of the validation split reach the minimum cell."""
    from fl_client.data import load_datalist, split_train_val
    from fl_client.local import export_dir

    c, overrides, report, _, _ = healthy
    cfg = compose_config(None, overrides)
    spec_json = report["spec"]
    subset = cfg["agreement"]["subset"]
    val_fraction = float(cfg["training"]["val_fraction"])
    rnd = report["rounds"][0]
    total_train = 0
    for i in range(c.n_sites):
        site = c.site(i)
        released = report["sites"][[s["site_id"] for s in report["sites"]].index(site.site_id)]["counts"]
        count = released["subsets"][subset]
        assert rnd["train"][site.site_id][NUM_EXAMPLES] == round(count * (1 - val_fraction))
        assert rnd["evaluate"][site.site_id][NUM_EXAMPLES] == round(count * val_fraction)
        total_train += rnd["train"][site.site_id][NUM_EXAMPLES]
        entries = load_datalist(export_dir(site, spec_json, subset)).entries
        _, val = split_train_val(entries, val_fraction, int(cfg["seed"]))
        positives = sum(e.label == 1 for e in val)
        has_class_metrics = "sensitivity" in rnd["evaluate"][site.site_id]
        assert not has_class_metrics or min(positives, len(val) - positives) >= SITE_MIN_CELL
    # Flower's FedAvg weights by num-examples: the aggregated loss is the weighted mean.
    weighted = sum(m[NUM_EXAMPLES] * m["loss"] for m in rnd["train"].values()) / total_train
    assert rnd["train_aggregated"]["loss"] == pytest.approx(weighted, rel=1e-6)


# ------------------------------------------------------------------------------------ faulty run


def test_a_broken_site_is_reported_as_error_and_the_run_goes_on(faulty) -> None:  # type: ignore[no-untyped-def]
    c, _, report, _, out = faulty
    by_site = {s["site_id"]: s for s in report["sites"]}
    broken = by_site[c.site(1).site_id]  # the site still says who it is
    assert broken["status"] == STATUS_ERROR and broken["counts"] is None
    assert "index" in broken["reason"]
    decision = next(d for d in report["agreement"]["sites"] if d["site_id"] == c.site(1).site_id)
    assert not decision["participates"] and decision["reason"].startswith(STATUS_ERROR)
    assert report["agreement"]["participating_sites"] == [c.site(0).site_id]
    rnd = report["rounds"][0]
    assert set(rnd["train"]) == {c.site(0).site_id} and set(rnd["evaluate"]) == {c.site(0).site_id}
    assert report["training_errors"] == []
    assert (out / "final_model.npz").is_file() and (out / METRICS_PNG).is_file()


def test_a_site_below_min_cases_is_excluded_with_the_reason(faulty) -> None:  # type: ignore[no-untyped-def]
    c, min_cases, report, _, out = faulty
    small = c.site(2).site_id
    assert next(s for s in report["sites"] if s["site_id"] == small)["status"] == STATUS_ANSWERED
    decision = next(d for d in report["agreement"]["sites"] if d["site_id"] == small)
    assert not decision["participates"]
    assert decision["cases"] == min_cases - 1
    assert f"{min_cases - 1} cases" in decision["reason"] and f"{min_cases} required" in decision["reason"]
    assert small not in report["rounds"][0]["train"]
    assert f"{min_cases} required" in (out / REPORT_HTML).read_text(encoding="utf-8")
