"""A hostile coordinator against the site's release gate, through the real ClientApp.

Each test is one attack measured on the code before the gate (issue 17): crafted messages go to
``fl_client.client_app`` in process (``LocalGrid``: the Flower Message and Context the real engines
hand it), and the test checks what came back. Before the gate each of these returned a count below
the minimum cell, or numbers from which one follows.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from cohort.protocol import (
    ANSWER_RECORD,
    ARRAYS_RECORD,
    CONFIG_RECORD,
    KEY_LAYOUT_JSON,
    KEY_RELEASED_JSON,
    KEY_REQUEST_ID,
    KEY_SITE_CALIBRATION,
    KEY_SPEC_JSON,
    KEY_STATUS,
    KEY_SUBSET,
    KEY_TRAINING_JSON,
    METRICS_RECORD,
    NUM_EXAMPLES,
    QUERY_ACTION,
    SECAGG_RECORD,
    STATUS_ANSWERED,
    STATUS_REFUSED,
)
from cohort.release.disclosure import ReleasedCounts
from cohort.results import ALL_SUBSET, LABEL_KEYS, CohortCounts
from fl_client.client_app import build_gated_app
from fl_client.gate import SECURE_TOTAL
from fl_server.config import compose_run_config
from tests.federation_sites import Consortium, LocalGrid, coordinator_identity, copy_consortium  # noqa: F401

MIN_CELL = 10
PATIENTS = 100


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """One synthetic site of 100 patients (default policy: minimum cell 10), built once per module."""
    from cohort.ingest.run import ingest_folder
    from cohort.siteconfig import load_site_config
    from cohort.synth.site import synthesize_consortium

    root = tmp_path_factory.mktemp("gate") / "sites"
    for s in synthesize_consortium(root, 1, [PATIENTS], 3):
        site = load_site_config(s.site_config)
        ingest_folder(s.raw_dir, site.store_path(), site)
    return Consortium(root)


@pytest.fixture
def site(built: Consortium, tmp_path: Path) -> Consortium:
    """A fresh copy per test: empty ledger, run registry and audit log."""
    return copy_consortium(built, tmp_path / "sites")


@pytest.fixture(scope="module")
def run_cfg() -> dict[str, Any]:
    return compose_run_config(None, "training.normalization=site")


def _spec(cfg: dict[str, Any]) -> dict[str, Any]:
    from cohort.spec.load import parse_spec

    return parse_spec(cfg["cohort"], catalog=None).to_dict()


def _send(grid: LocalGrid, message_type: str, cfg: dict[str, Any], *, record: str = CONFIG_RECORD,
          arrays: list[np.ndarray] | None = None) -> Message:
    content = RecordDict({record: ConfigRecord(cfg)})
    if arrays is not None:
        content[ARRAYS_RECORD] = ArrayRecord(numpy_ndarrays=arrays)
    msg = Message(content=content, dst_node_id=grid.node_of(0), message_type=message_type)
    return grid.send_and_receive([msg])[0]


def _ask(grid: LocalGrid, spec: dict[str, Any]) -> dict[str, Any]:
    """A negotiation query through the ClientApp; the answer record as a dict."""
    reply = _send(grid, f"query.{QUERY_ACTION}", {KEY_SPEC_JSON: json.dumps(spec, sort_keys=True),
                                                  KEY_REQUEST_ID: "attacker"})
    return dict(reply.content[ANSWER_RECORD])


def _released(answer: dict[str, Any]) -> ReleasedCounts:
    assert answer[KEY_STATUS] == STATUS_ANSWERED, answer
    return ReleasedCounts.from_json(json.loads(str(answer[KEY_RELEASED_JSON])))


def _raw(c: Consortium, spec: dict[str, Any]) -> CohortCounts:
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex
    from cohort.spec.load import parse_spec

    with DuckIndex.for_store(c.site(0).store_path(), read_only=True) as index:
        return evaluate(index, parse_spec(spec, catalog=None))


def _cells(r: ReleasedCounts) -> dict[tuple[Any, ...], int]:
    """Released numbers by cell key (suppressed cells left out)."""
    out: dict[tuple[Any, ...], int] = {}
    if r.patients is not None:
        out[(ALL_SUBSET,)] = r.patients
    out.update({("subset", n): v for n, v in r.subsets.items() if v is not None})
    out.update({("label", n, k): v for n, lab in r.labels.items() for k, v in lab.items() if v is not None})
    out.update({("bin", d.field, d.subset, b["label"]): b["count"] for d in r.distributions for b in d.bins
                if b["count"] is not None})
    return out


def _raw_cells(c: CohortCounts) -> dict[tuple[Any, ...], int]:
    out: dict[tuple[Any, ...], int] = {(ALL_SUBSET,): c.patients}
    out.update({("subset", n): s.patients for n, s in c.subsets.items()})
    out.update({("label", n, k): getattr(s, k) for n, s in c.subsets.items() for k in LABEL_KEYS})
    out.update({("bin", d.field, d.subset, b.label): b.count for d in c.distributions for b in d.bins})
    return out


# ------------------------------------------------------------------------------ one gate, every handler
def test_every_handler_of_the_client_app_is_registered_through_the_gate() -> None:
    gated = build_gated_app(None)
    flower_registry = set(gated.app._registered_funcs)  # what Flower dispatches to
    assert flower_registry == set(gated.registered_channels)
    assert {"train.default", "evaluate.default", f"query.{QUERY_ACTION}", "query.moments",
            "query.final_model"} <= flower_registry


def _free_text_probe(spec: dict[str, Any]) -> dict[str, Any]:
    probe = copy.deepcopy(spec)
    probe["objects"]["letter"] = {"kind": "SR", "template": "free_text",
                                  "where": [{"field": "report_text", "op": "contains", "value": "Vogt"}]}
    probe["cohort"] = {"all": [probe["cohort"], "letter"]}
    return probe


def _message_for(message_type: str, channel: str, spec: dict[str, Any], run_cfg: dict[str, Any],
                 weights: list[np.ndarray]) -> dict[str, Any]:
    """A message of ``message_type`` as a coordinator would send it, carrying ``spec``."""
    cfg: dict[str, Any] = {KEY_SPEC_JSON: json.dumps(spec, sort_keys=True), KEY_REQUEST_ID: "attacker",
                           KEY_SUBSET: "labelled", KEY_SITE_CALIBRATION: "intercept",
                           KEY_TRAINING_JSON: json.dumps({"model": run_cfg["model"], "training": run_cfg["training"],
                                                          "seed": run_cfg["seed"]})}
    if channel == SECURE_TOTAL:
        cfg[KEY_LAYOUT_JSON] = json.dumps({"subsets": ["labelled"], "distributions": []})
    return cfg


@pytest.mark.parametrize("probe", ["free-text", "not-negotiated", "below-minimum-subset"])
def test_every_message_type_refuses_a_probe(site: Consortium, run_cfg: dict[str, Any], probe: str) -> None:
    """Free text, a spec never negotiated, and a subset below the minimum cell, through every handler."""
    from fl_server.federation import initial_arrays

    grid = LocalGrid(site)
    gated = build_gated_app(site.consortium_json)
    weights = initial_arrays(run_cfg["model"], 0).to_numpy_ndarrays()
    spec = _spec(run_cfg)
    subset = "labelled"
    if probe == "free-text":
        spec = _free_text_probe(spec)
    elif probe == "below-minimum-subset":
        # A subset the site counts but cannot release (fewer than the minimum cell): negotiated first.
        spec["subsets"]["tiny"] = {"all": ["ct", "ecg", "label_known", "prior_pacemaker"]}
        subset = "tiny"
        raw = _raw(site, spec)
        assert 0 <= raw.subsets["tiny"].patients < MIN_CELL
        assert _released(_ask(grid, spec)).subsets["tiny"] is None
    checked = 0
    for message_type, channel in sorted(gated.registered_channels.items()):
        if probe != "free-text" and channel != "run-bound":
            continue  # negotiation answers any valid spec (released under the policy)
        cfg = _message_for(message_type, channel, spec, run_cfg, weights)
        cfg[KEY_SUBSET] = subset
        record = SECAGG_RECORD if channel == SECURE_TOTAL else CONFIG_RECORD
        mt = message_type.removesuffix(".default")
        reply = _send(grid, mt, cfg, record=record, arrays=weights)
        checked += 1
        if reply.has_error():
            assert "refused" in reply.error.reason, (message_type, reply.error.reason)
            continue
        assert METRICS_RECORD not in reply.content and ARRAYS_RECORD not in reply.content, message_type
        answer = dict(reply.content[ANSWER_RECORD])
        assert answer[KEY_STATUS] == STATUS_REFUSED, (message_type, answer)
        assert KEY_RELEASED_JSON not in answer
    assert checked >= (8 if probe == "free-text" else 4)
    audit = [json.loads(line) for line in (site.site(0).store_path() / "audit.jsonl").read_text().splitlines()]
    assert sum(e["decision"] == STATUS_REFUSED for e in audit) >= checked


def test_training_replies_release_sizes_derived_from_the_released_count_and_no_small_metrics(
        site: Consortium, run_cfg: dict[str, Any]) -> None:
    """``num-examples`` is the released subset count times the split fraction, never the exact split size;
    class metrics leave only when both classes of the validation split reach the minimum cell."""
    from fl_client.data import load_datalist, split_train_val
    from fl_client.local import TrainingSettings, export_dir
    from fl_server.federation import initial_arrays

    grid = LocalGrid(site)
    spec = _spec(run_cfg)
    released = _released(_ask(grid, spec)).subsets["labelled"]
    assert released is not None and released >= MIN_CELL
    weights = initial_arrays(run_cfg["model"], 0).to_numpy_ndarrays()
    cfg = _message_for("train", "run-bound", spec, run_cfg, weights)
    val_fraction = float(run_cfg["training"]["val_fraction"])
    train = _send(grid, "train", cfg, arrays=weights)
    evaluate = _send(grid, "evaluate", cfg, arrays=weights)
    assert not train.has_error() and not evaluate.has_error()
    assert train.content[METRICS_RECORD][NUM_EXAMPLES] == round(released * (1 - val_fraction))
    assert evaluate.content[METRICS_RECORD][NUM_EXAMPLES] == round(released * val_fraction)
    settings = TrainingSettings.from_json(cfg[KEY_TRAINING_JSON])
    entries = load_datalist(export_dir(site.site(0), spec, "labelled")).entries
    _, val = split_train_val(entries, val_fraction, settings.seed)
    positives = sum(e.label == 1 for e in val)
    metrics = dict(evaluate.content[METRICS_RECORD])
    if positives < MIN_CELL or len(val) - positives < MIN_CELL:
        assert not {"auroc", "sensitivity", "specificity", "balanced-accuracy"} & set(metrics), metrics
    assert "loss" in metrics  # the split itself reaches the minimum cell


# ------------------------------------------------------------------------------ differencing
def test_two_bin_layouts_of_one_field_in_one_query_are_not_both_released(site: Consortium,
                                                                         run_cfg: dict[str, Any]) -> None:
    spec = _spec(run_cfg)
    spec["distributions"] = [{"object": "ecg", "field": "qrs_duration", "bins": [0, 100, 400], "unit": "ms"},
                             {"object": "ecg", "field": "qrs_duration", "bins": [0, 101, 400], "unit": "ms"}]
    raw = _raw(site, spec)
    shift = raw.distributions[1].bins[0].count - raw.distributions[0].bins[0].count
    assert 0 < shift < MIN_CELL  # the attack: the patients with QRS in [100, 101)
    out = _released(_ask(LocalGrid(site), spec))
    assert out.distributions[0].bins and out.distributions[1].refused
    assert "bin layout" in out.distributions[1].refused


def _window_pair(c: Consortium, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Two specs whose ECG windows differ by days, with ECG subsets 1..min_cell-1 patients apart."""
    def with_window(days: int) -> dict[str, Any]:
        s = copy.deepcopy(spec)
        s["objects"]["ecg"]["within"]["min_days"] = days
        return s
    counts = {d: _raw(c, with_window(d)).subsets["ECG"].patients for d in range(-90, -9)}
    for a in range(-90, -9):
        for b in range(a + 1, -9):
            if counts[b] >= MIN_CELL and 0 < counts[a] - counts[b] < MIN_CELL:
                return with_window(a), with_window(b), counts[a] - counts[b]
    raise AssertionError(f"no window pair differs by less than the minimum cell: {counts}")


def test_a_shifted_time_window_cannot_be_differenced(site: Consortium, run_cfg: dict[str, Any]) -> None:
    first, second, true_difference = _window_pair(site, _spec(run_cfg))
    grid = LocalGrid(site)
    a, b = _released(_ask(grid, first)), _released(_ask(grid, second))
    assert a.subsets["ECG"] is not None  # the first answer is released as usual
    assert b.subsets["ECG"] is None  # the narrower window's ECG count would give the difference away
    ca, cb = _cells(a), _cells(b)
    for key in ca.keys() & cb.keys():
        assert ca[key] == cb[key] or abs(ca[key] - cb[key]) >= MIN_CELL, (key, ca[key], cb[key])
    assert any("withheld" in n for n in b.notes)
    # Asking the first spec again gets the same answer: identical patient sets are not differencing.
    assert _cells(_released(_ask(grid, first))) == ca


def test_noise_differs_between_questions_and_repeats_for_the_same_one(site: Consortium,
                                                                      run_cfg: dict[str, Any]) -> None:
    site.set_policy(0, noise_scale=20.0)  # wide noise: equal offsets by chance are improbable
    grid = LocalGrid(site)
    spec_a = _spec(run_cfg)
    a = _released(_ask(grid, spec_a))
    raw_a, ca = _raw_cells(_raw(site, spec_a)), _cells(a)
    # Before the gate every answer drew its noise from one seed: the same offsets cell by cell, so the
    # noisy differences were the exact ones. Now each cell's noise is keyed on its patient set: other
    # questions (far fewer ECGs qualify) get independent offsets.
    pairs: dict[tuple[int, int], tuple[int, int]] = {}  # (true a, true b) -> (offset a, offset b)
    for days in (-20, -45):
        spec_b = copy.deepcopy(spec_a)
        spec_b["objects"]["ecg"]["within"]["min_days"] = days
        raw_b, cb = _raw_cells(_raw(site, spec_b)), _cells(_released(_ask(grid, spec_b)))
        for k in ca.keys() & cb.keys():
            if raw_a[k] != raw_b[k]:  # another patient set: its own noise
                pairs[(raw_a[k], raw_b[k])] = (ca[k] - raw_a[k], cb[k] - raw_b[k])
    assert len(pairs) >= 3, pairs
    assert any(x != y for x, y in pairs.values()), pairs
    assert _cells(_released(_ask(grid, spec_a))) == ca  # a repeat is the same answer


# ------------------------------------------------------------------------------ one catalog per store
def test_a_text_field_from_the_stores_own_template_is_free_text_to_the_coordinator(site: Consortium,
                                                                                   run_cfg: dict[str, Any]) -> None:
    """A field a site adds with its own template config (``STORE/templates``) is answered like a built-in
    one, and a text field among them is guarded like the built-in free text (before: the coordinator's
    path checked specs against the built-in catalog only)."""
    templates = site.site(0).store_path() / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    (templates / "letters.yaml").write_text(
        "key: free_text\nfields:\n  letter_body:\n    path: ['**']\n    type: text\n", encoding="utf-8")
    grid = LocalGrid(site)
    spec = _spec(run_cfg)
    spec["objects"]["letter"] = {"kind": "SR", "template": "free_text",
                                 "where": [{"field": "letter_body", "op": "exists"}]}
    spec["cohort"] = {"all": [spec["cohort"], "letter"]}
    assert _ask(grid, spec)[KEY_STATUS] == STATUS_ANSWERED
    spec["objects"]["letter"]["where"] = [{"field": "letter_body", "op": "contains", "value": "Vogt"}]
    answer = _ask(grid, spec)
    assert answer[KEY_STATUS] == STATUS_REFUSED and "free-text" in str(answer["reason"]).lower()
    assert "Vogt" not in str(answer["reason"])
