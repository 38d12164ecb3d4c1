"""``fl-client predict``: the stored model scores the cohort; one prediction SR per patient, indexed, pushed.

One site of the shared test consortium trains one local round, stores the result as its final model
(with its own intercept, as after a federated run) and predicts; the tests then read what was written.
The tests run in file order: the last one adds a second model to the store.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from fl_client.predict import PredictReport
from tests import orthanc as pacs
from tests.federation_sites import build_consortium, copy_consortium

orthanc, orthanc_process = pacs.orthanc, pacs.orthanc_process  # the fixtures the push test uses
SUBSET = "labelled"
REPORT_TITLE = "MP001"


@dataclass
class Predicted:
    store: Path
    site: Any
    spec_json: dict[str, Any]
    settings: Any
    weights: list[np.ndarray]
    card: dict[str, Any]
    report: PredictReport


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Predicted:
    from cohort.spec.load import parse_spec
    from fl_client.final_model import CARD_FILE, site_model_dir, store_final_model
    from fl_client.local import TrainingSettings, fit
    from fl_client.predict import predict_cohort
    from fl_server.config import compose_run_config
    from fl_server.federation import initial_arrays

    c = copy_consortium(build_consortium(tmp_path_factory), tmp_path_factory.mktemp("predict") / "sites")
    site = c.site(0)
    cfg = compose_run_config(None, "training.normalization=site")
    spec_json = parse_spec(cfg["cohort"], catalog=None).to_dict()
    training_json = json.dumps({"model": cfg["model"], "training": cfg["training"], "seed": cfg["seed"]})
    settings = TrainingSettings.from_json(training_json)
    weights, _ = fit(site, spec_json, SUBSET, settings, initial_arrays(cfg["model"], 0).to_numpy_ndarrays())
    answer = store_final_model(site, spec_json, SUBSET, training_json, weights, None, "intercept", "run-1")
    assert answer.digest is not None
    card = json.loads((site_model_dir(site, answer.digest) / CARD_FILE).read_text())
    report = predict_cohort(site.store_path())
    return Predicted(site.store_path(), site, spec_json, settings, weights, card, report)


def _value(item: pydicom.Dataset) -> float:
    measured = item.MeasuredValueSequence[0]
    return float(measured.FloatingPointValue if "FloatingPointValue" in measured else measured.NumericValue)


def _walk(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = [item]
    for child in item.get("ContentSequence", []):
        out += _walk(child)
    return out


def walk_predictions(store: Path) -> list[dict[str, Any]]:
    """Every prediction SR of the store, read with pydicom alone (no project code)."""
    out = []
    for path in sorted((store / "dicom").glob("*/*/SR_*/*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.ConceptNameCodeSequence[0].CodeValue != REPORT_TITLE:
            continue
        doc: dict[str, Any] = {"path": path, "patient": str(ds.PatientID), "sop": str(ds.SOPInstanceUID), "refs": []}
        for item in _walk(ds):
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            if name == "122157":
                doc["probability"] = _value(item)
            elif name == "MP003":
                doc["digest"] = str(item.TextValue)
            elif name == "MP008":
                doc["used_in_training"] = item.ConceptCodeSequence[0].CodeValue == "373066001"
            if "ReferencedSOPSequence" in item and item is not ds:
                ref = item.ReferencedSOPSequence[0]
                doc["refs"].append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)))
                if name == "MP009":
                    doc.setdefault("events", []).append(str(ref.ReferencedSOPInstanceUID))
        doc["evidence"] = {(str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
                           for study in ds.CurrentRequestedProcedureEvidenceSequence
                           for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
        out.append(doc)
    return out


def test_predictions_equal_the_training_codes_for_the_same_patients(predicted: Predicted) -> None:
    from fl_client.calibration import apply_site_intercept
    from fl_client.data import load_datalist, split_train_val
    from fl_client.local import export_dir, training_split_predictions, validate

    p = predicted
    walked = {d["patient"]: d["probability"] for d in walk_predictions(p.store)}
    datalist = load_datalist(export_dir(p.site, p.spec_json, SUBSET))
    train, val = split_train_val(datalist.entries, p.settings.data_config().val_fraction, p.settings.seed)
    probs, _ = training_split_predictions(p.site, p.spec_json, SUBSET, p.settings, p.weights)
    val_probs = validate(p.site, p.spec_json, SUBSET, p.settings, p.weights).probabilities
    intercept = p.card["site_intercept"]
    assert intercept is not None and abs(intercept) > 1e-3  # the intercept is applied, not a no-op
    np.testing.assert_allclose([walked[e.patient] for e in train], apply_site_intercept(probs, intercept),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose([walked[e.patient] for e in val], apply_site_intercept(val_probs, intercept),
                               rtol=0, atol=1e-6)
    # The SR holds exactly what was computed.
    assert {q.patient: q.probability for q in p.report.predictions} == walked
    assert {q.patient for q in p.report.predictions if q.used_in_training} == {e.patient for e in datalist.entries}


def test_every_reference_resolves_to_a_stored_input_object_and_the_documents_validate(predicted: Predicted) -> None:
    from cohort.dicom.validate import dciodvfy, dsrdump, sr_validator
    from cohort.store import Store

    p = predicted
    manifest = json.loads(next((p.store / "predictions" / "exports").glob("*/manifest.json")).read_text())
    inputs = {m["patient"]: m["inputs"] for m in manifest["patients"]}
    stored = Store(p.store).sop_paths()
    docs = walk_predictions(p.store)
    assert len(docs) == len(p.report.predictions) > 0
    for doc in docs:
        assert doc["refs"] and set(doc["refs"]) == doc["evidence"]
        headers = {}
        for cls, uid in doc["refs"]:
            assert uid in stored, f"{doc['path']}: reference {uid} is not in the store"
            h = pydicom.dcmread(stored[uid], stop_before_pixels=True)
            assert str(h.SOPClassUID) == cls and str(h.PatientID) == doc["patient"]
            headers[uid] = h
        want = inputs[doc["patient"]]
        ct_series = {str(h.SeriesInstanceUID) for h in headers.values() if h.Modality == "CT"}
        assert ct_series == {want["ct"]["uid"]}
        n_ct = len(list(stored[next(u for u, h in headers.items() if h.Modality == "CT")].parent.glob("*.dcm")))
        assert sum(h.Modality == "CT" for h in headers.values()) == n_ct  # every instance of the series
        singles = {want[role]["uid"] for role in ("ecg", "ecg_report", "registry", "measurements") if want.get(role)}
        assert singles and singles <= set(headers)
        # The label object (the procedure history with the TAVI date the inputs were chosen around).
        events = set(doc.get("events", []))
        assert events and all(headers[u].ConceptNameCodeSequence[0].CodeValue == "PRC001" for u in events)
        assert len(headers) == n_ct + len(singles) + len(events)
    sample = [d["path"] for d in docs[:3]]
    for check in (dciodvfy, sr_validator, dsrdump):
        for result in check(sample):
            assert result.ok, f"{check.__name__} {result.path}: {result.errors}"


def _counts(store: Path, spec_dict: dict[str, Any]) -> int:
    from cohort.index.compile_duck import evaluate
    from cohort.index.duck import DuckIndex
    from cohort.spec.load import parse_spec

    with DuckIndex.for_store(store, read_only=True) as index:
        return evaluate(index, parse_spec(spec_dict, catalog=index.catalog)).patients


def test_a_spec_on_the_prediction_counts_the_patients_a_pydicom_walk_finds(predicted: Predicted) -> None:
    p = predicted
    docs = walk_predictions(p.store)
    threshold = float(np.median([d["probability"] for d in docs]))
    cases = [(">=", lambda v: v >= threshold), ("<", lambda v: v < threshold)]
    for op, holds in cases:
        spec = {"name": "risk", "cohort": {"all": ["pred"]},
                "objects": {"pred": {"kind": "SR", "template": "prediction", "where": [
                    {"field": "probability", "op": op, "value": threshold},
                    {"field": "used_in_training", "op": "=", "value": True},
                    {"field": "model_digest", "op": "=", "value": p.report.model}]}}}
        walked = {d["patient"] for d in docs if holds(d["probability"]) and d["used_in_training"]
                  and d["digest"] == p.report.model}
        assert walked, f"the test needs patients with probability {op} the median"
        assert _counts(p.store, spec) == len(walked)
    from cohort.dashboard.api import Dashboard

    groups = {g["template"]: g for g in Dashboard(p.store, caching=False).fields()["objects"]}
    names = {f["name"] for f in groups["prediction"]["fields"]}  # the dashboard offers them as filters
    assert {"probability", "used_in_training", "model_digest", "training_run"} <= names


def test_a_later_export_can_exclude_the_patients_the_model_was_trained_on(predicted: Predicted,
                                                                        tmp_path: Path) -> None:
    from cohort.export import export_cohort
    from cohort.index.catalog import store_catalog
    from cohort.spec.load import parse_spec

    p = predicted
    spec = json.loads(json.dumps(p.spec_json))
    spec["objects"]["trained"] = {"kind": "SR", "template": "prediction",
                                  "where": [{"field": "used_in_training", "op": "=", "value": True}]}
    spec["cohort"] = {"all": [spec["cohort"], {"not": "trained"}]}
    # checked against the store's own catalog, as `cohort export --store` does
    export_cohort(p.store, parse_spec(spec, catalog=store_catalog(p.store)), tmp_path / "later")
    later = {m["patient"] for m in json.loads((tmp_path / "later" / "manifest.json").read_text())["patients"]}
    scored = {q.patient: q.used_in_training for q in p.report.predictions}
    assert later and not any(scored.get(pid) for pid in later)
    assert later == {pid for pid in {*scored, *(s for s, _ in p.report.skipped)} if not scored.get(pid)}


def test_patients_without_a_known_label_are_scored(predicted: Predicted) -> None:
    """A spec without a label (patients whose outcome is not known yet): every patient with the inputs is scored."""
    from cohort.index.catalog import store_catalog
    from cohort.spec.load import parse_spec
    from fl_client.predict import predict_cohort

    p = predicted
    spec = {k: v for k, v in p.spec_json.items() if k != "label"}
    # checked against the store's own catalog, as `fl-client predict --spec` does
    report = predict_cohort(p.store, spec=parse_spec(spec, catalog=store_catalog(p.store)))
    assert report.predictions and all(q.label is None for q in report.predictions)
    assert {q.patient for q in report.predictions} == {q.patient for q in p.report.predictions}
    earlier = {q.sop_instance_uid: q.probability for q in p.report.predictions}
    for q in report.predictions:  # the same inputs give the same document and probability
        assert q.new is (q.sop_instance_uid not in earlier)
        if not q.new:
            assert q.probability == pytest.approx(earlier[q.sop_instance_uid], abs=1e-6)


def test_pushed_prediction_srs_are_stored_in_orthanc(predicted: Predicted, orthanc: str) -> None:
    from dicomweb_client.api import DICOMwebClient

    from fl_client.predict import predict_cohort

    report = predict_cohort(predicted.store, push_dicomweb=orthanc)
    assert report.pushed is not None and not report.pushed.failed and report.pushed.pushed == len(report.predictions)
    client = DICOMwebClient(orthanc)
    in_pacs = {i["00080018"]["Value"][0] for i in client.search_for_instances(get_remaining=True)}
    assert in_pacs == {q.sop_instance_uid for q in report.predictions}  # the SRs, nothing else
    pushed = {q.sop_instance_uid for q in report.predictions}
    first = next(d for d in walk_predictions(predicted.store) if d["sop"] in pushed)
    theirs = client.retrieve_instance(pydicom.dcmread(first["path"]).StudyInstanceUID,
                                      pydicom.dcmread(first["path"]).SeriesInstanceUID, first["sop"])
    assert _value(next(i for i in _walk(theirs) if "MeasuredValueSequence" in i)) == first["probability"]


def _digests(paths: list[Path]) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_predicting_again_writes_nothing_and_a_new_model_adds_documents_beside_the_old(predicted: Predicted) -> None:
    from typer.testing import CliRunner

    from fl_client.cli import app
    from fl_client.final_model import store_final_model

    p = predicted
    before = _digests([d["path"] for d in walk_predictions(p.store)])
    spec = {"name": "all", "cohort": {"all": ["pred"]}, "objects": {"pred": {"kind": "SR", "template": "prediction"}}}
    n_before = _counts(p.store, spec)
    result = CliRunner().invoke(app, ["predict", "--store", str(p.store), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["written"] == 0 and again["existing"] == len(p.report.predictions) == again["scored"]
    assert _digests(list(before)) == before and _counts(p.store, spec) == n_before

    newer = [w + np.float32(0.01) for w in p.weights]
    answer = store_final_model(p.site, p.spec_json, SUBSET, json.dumps(p.card["training"]), newer, None,
                               "intercept", "run-2")
    assert answer.digest is not None
    result = CliRunner().invoke(app, ["predict", "--store", str(p.store), "--model", answer.digest[:12], "--json"])
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    assert second["model"] == answer.digest and second["written"] == len(p.report.predictions)
    docs = walk_predictions(p.store)
    assert len(docs) == len(before) + len(p.report.predictions)
    assert _digests(list(before)) == before  # the old ones untouched
    assert {d["digest"] for d in docs} == {p.report.model, answer.digest}


def test_the_client_app_cannot_reach_predict() -> None:
    """Predictions are a site command: the ClientApp (every Flower message a site answers) never loads it."""
    code = "import sys, fl_client.client_app; print('fl_client.predict' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_model_with_consortium_statistics_predicts_as_training_does(predicted: Predicted) -> None:
    """The default run setting (training.normalization=consortium): the statistics come from model.json."""
    from fl_client.calibration import apply_site_intercept
    from fl_client.data import load_datalist, split_train_val
    from fl_client.final_model import CARD_FILE, site_model_dir, store_final_model
    from fl_client.local import export_dir, training_split_predictions
    from fl_client.normalization import NormStats
    from fl_client.predict import predict_cohort

    p = predicted
    data_cfg = p.settings.data_config()
    datalist = load_datalist(export_dir(p.site, p.spec_json, SUBSET))
    train, _ = split_train_val(datalist.entries, data_cfg.val_fraction, p.settings.seed)
    base = NormStats.from_json(_site_stats_json(datalist, train, data_cfg))
    stats = NormStats(type(base.tabular)(tuple(m + 1.0 for m in base.tabular.means), base.tabular.stds), base.ecg)
    weights = [w - np.float32(0.01) for w in p.weights]
    answer = store_final_model(p.site, p.spec_json, SUBSET, json.dumps(p.card["training"]), weights,
                               stats.to_json(), "intercept", "run-3")
    assert answer.digest is not None
    card = json.loads((site_model_dir(p.site, answer.digest) / CARD_FILE).read_text())
    assert card["norm_stats"] != "site"
    report = predict_cohort(p.store, digest=answer.digest)
    probs, _ = training_split_predictions(p.site, p.spec_json, SUBSET, p.settings, weights, stats)
    got = {q.patient: q.probability for q in report.predictions}
    np.testing.assert_allclose([got[e.patient] for e in train], apply_site_intercept(probs, card["site_intercept"]),
                               rtol=0, atol=1e-6)
    site_stats_probs, _ = training_split_predictions(p.site, p.spec_json, SUBSET, p.settings, weights)
    assert np.max(np.abs(apply_site_intercept(site_stats_probs, card["site_intercept"])
                         - np.array([got[e.patient] for e in train]))) > 1e-4  # the statistics matter


def _site_stats_json(datalist: Any, train: Any, data_cfg: Any) -> str:
    from fl_client.data import preprocessed_dataset, site_norm_stats

    return site_norm_stats(datalist, train, preprocessed_dataset(datalist, train, data_cfg)).to_json()


def test_an_unknown_digest_or_changed_weights_are_refused_with_what_to_do(predicted: Predicted, tmp_path: Path) -> None:
    import shutil

    from cohort.errors import ConfigError
    from fl_client.final_model import MODEL_FILE
    from fl_client.predict import load_model

    with pytest.raises(ConfigError, match=f"--model ffff0000: no stored model matches; stored: .*{p_digest(predicted)}"):
        load_model(predicted.store, "ffff0000")
    store = tmp_path / "store"
    folder = load_model(predicted.store, predicted.report.model).folder
    shutil.copytree(folder, store / "models" / folder.name)
    weights = [w.copy() for w in predicted.weights]
    weights[0].flat[0] += 1.0
    np.savez(store / "models" / folder.name / MODEL_FILE, *weights)
    with pytest.raises(ConfigError, match="the weights do not match the digest .*store the model again"):
        load_model(store)
    with pytest.raises(ConfigError, match="no stored model; a site stores the final model after a federated run"):
        load_model(tmp_path / "empty")


def p_digest(p: Predicted) -> str:
    return p.report.model[:16]
