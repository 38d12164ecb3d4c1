"""``fl-client predict``: score a site's cohort with its stored final model and store each prediction as SR.

A site command, not a Flower message: it reads the model the site stored after a federated run
(``STORE/models/<digest>/``, :mod:`fl_client.final_model`) with the site's own intercept, exports the
cohort with the same code as training (``cohort.export.export_cohort``), builds the model inputs with
the training path's own functions (:func:`fl_client.data.preprocessed_dataset`, the statistics of
:func:`fl_client.data.site_norm_stats` or the consortium's, :func:`fl_client.transforms.normalize_transforms`,
:func:`fl_client.train.predict`), and writes one SR per patient into the store
(:mod:`cohort.dicom.prediction_sr`), which the index then holds like any other object (template
``prediction``). Nothing leaves the site, except with ``--push-dicomweb`` to the PACS the site names.

Idempotent: a prediction's SOP Instance UID depends only on the model, the site's parameters, the
patient and the input objects, so a second run finds every document in place and writes none; a new
model gives new documents next to the old ones.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import Dataset

from cohort.dicom.clinical_sr import DocumentIds
from cohort.dicom.prediction_sr import (
    INDEX_EVENT_ROLE,
    ModelIdentity,
    PredictionRecord,
    SourceObject,
    prediction_document,
    prediction_ids,
)
from cohort.errors import ConfigError, InputError
from cohort.export import cohort_hash, export_cohort, export_key
from cohort.export.selection import ModelInput, PatientSelection, select_patients
from cohort.index.catalog import store_catalog
from cohort.index.compile_duck import materialized
from cohort.index.duck import DuckIndex
from cohort.spec.load import parse_spec
from cohort.spec.model import CohortSpec
from cohort.store import Store
from fl_client.calibration import apply_site_intercept
from fl_client.data import (
    DATALIST_FILE,
    DataConfig,
    Datalist,
    DatalistEntry,
    load_datalist,
    make_loader,
    preprocessed_dataset,
    site_norm_stats,
    split_train_val,
)
from fl_client.final_model import CARD_FILE, MODEL_FILE, model_digest
from fl_client.local import TrainingSettings, store_export_dir
from fl_client.model import MultiModalNet, set_weights
from fl_client.normalization import NormStats
from fl_client.train import predict as model_predict
from fl_client.train import resolve_device
from fl_client.transforms import normalize_transforms

__all__ = ["ALGORITHM_NAME", "Prediction", "PredictReport", "StoredModel", "load_model", "predict_cohort",
           "score_patients"]

ProgressCallback = Callable[[str, int, int], None]
ALGORITHM_NAME = "fedcohort MultiModalNet"
PREDICTIONS_DIR = "predictions"  # STORE/predictions/exports/<key>: the cohort exports predictions read
UNKNOWN_LABEL = -1  # the label of a patient scored without a known label; never trained on
ARRAY_INPUTS = (ModelInput.CT, ModelInput.ECG)
# The input whose study a prediction joins, first present wins.
_STUDY_ORDER = (ModelInput.CT, ModelInput.ECG, ModelInput.ECG_REPORT, ModelInput.REGISTRY)


@dataclass(frozen=True)
class StoredModel:
    """A final model stored at the site: weights and card (spec, settings, statistics, intercept)."""

    digest: str
    folder: Path
    card: dict[str, Any]
    weights: list[np.ndarray]

    @property
    def settings(self) -> TrainingSettings:
        return TrainingSettings.from_json(json.dumps(self.card["training"]))

    @property
    def spec_json(self) -> dict[str, Any]:
        return dict(self.card["spec"])

    @property
    def subset(self) -> str | None:
        return self.card.get("subset")

    @property
    def intercept(self) -> float | None:
        value = self.card.get("site_intercept")
        return None if value is None else float(value)

    def consortium_stats(self) -> NormStats | None:
        """The consortium's normalisation statistics, None when the model was trained with the site's own."""
        stats = self.card.get("norm_stats", "site")
        return None if stats == "site" else NormStats.from_json(json.dumps(stats))

    def identity(self) -> ModelIdentity:
        try:
            version = f"fedcohort {metadata.version('fedcohort')}"
        except metadata.PackageNotFoundError:
            version = "fedcohort (not installed)"
        params = {"site_calibration": self.card.get("site_calibration"), "site_intercept": self.intercept,
                  "normalization": "site" if self.consortium_stats() is None else "consortium",
                  "subset": self.subset, "spec": self.spec_json.get("name")}
        return ModelIdentity(name=ALGORITHM_NAME, version=version, digest=self.digest, parameters=params,
                             training_run=str(self.card.get("request_id") or f"stored {self.card.get('stored')}"),
                             training_cohort_hash=self.card.get("training_cohort_hash"))


def _models_dir(store: Path) -> Path:
    return store / "models"


def load_model(store: Path, digest: str | None = None) -> StoredModel:
    """The stored model whose digest starts with ``digest``, or the most recently stored one.

    Raises:
        ConfigError: no model, an unknown or ambiguous digest, or weights that do not match their digest.
    """
    cards = sorted(_models_dir(store).glob(f"*/{CARD_FILE}"))
    if not cards:
        raise ConfigError(f"{_models_dir(store)}: no stored model; a site stores the final model after a "
                          "federated run (docs/federation.md, 'The final model at every site')")
    loaded = [(p.parent, json.loads(p.read_text(encoding="utf-8"))) for p in cards]
    if digest:
        found = [(f, c) for f, c in loaded if str(c.get("digest", "")).startswith(digest.lower())]
        if len(found) != 1:
            known = ", ".join(str(c.get("digest", ""))[:16] for _, c in loaded)
            what = "no" if not found else "more than one"
            raise ConfigError(f"--model {digest}: {what} stored model matches; stored: {known}")
        folder, card = found[0]
    else:
        folder, card = max(loaded, key=lambda fc: (str(fc[1].get("stored", "")), str(fc[1].get("digest", ""))))
    with np.load(folder / MODEL_FILE, allow_pickle=False) as npz:
        weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    if model_digest(weights) != card.get("digest"):
        raise ConfigError(f"{folder / MODEL_FILE}: the weights do not match the digest in {CARD_FILE} "
                          f"({str(card.get('digest'))[:16]}...); the file was changed: store the model again")
    return StoredModel(str(card["digest"]), folder, card, weights)


# ---------------------------------------------------------------------------------------- cohort


@dataclass(frozen=True)
class PatientInputs:
    """A patient's chosen input objects and the label object's entities that gave its index event."""

    selection: PatientSelection
    index_event: tuple[int, ...] = ()


def prediction_export(store: Path, spec: CohortSpec, subset: str | None,
                      progress: ProgressCallback | None = None) -> tuple[Path, dict[str, PatientInputs]]:
    """The cohort export predictions read, made again when the store's selection changed since."""
    with DuckIndex.for_store(store, read_only=True) as index:
        selections = select_patients(index, spec, subset)
        events = _index_event_entities(index, spec)
    digest = cohort_hash(spec, subset, selections)
    out = store / PREDICTIONS_DIR / "exports" / export_key(spec, subset)
    listing = out / DATALIST_FILE
    doc = json.loads(listing.read_text(encoding="utf-8")) if listing.is_file() else {}
    if doc.get("cohort_hash") != digest or "unlabelled" not in doc:
        if out.exists():
            shutil.rmtree(out)  # an export of an older state of the store
        export_cohort(store, spec, out, subset=subset, progress=progress)
    return out, {s.patient_id: PatientInputs(s, events.get(s.patient_id, ())) for s in selections}


def _index_event_entities(index: DuckIndex, spec: CohortSpec) -> dict[str, tuple[int, ...]]:
    """Patient -> entity ids the spec's label object matched (what the index event is read from)."""
    if spec.label is None:
        return {}
    out: dict[str, list[int]] = {}
    with materialized(index, spec) as q:
        for pid, eid in index.con.execute(f"SELECT DISTINCT patient_id, entity_id FROM {q.objects[spec.label.object]} "
                                          "ORDER BY 1, 2").fetchall():
            out.setdefault(str(pid), []).append(int(eid))
    return {pid: tuple(ids) for pid, ids in out.items()}


def _unlabelled_entry(raw: Any, i: int, root: Path, n_features: int, path: Path) -> DatalistEntry:
    where = f"unlabelled[{i}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("patient"), str):
        raise InputError("expected an object with a patient id; re-run the export", path=str(path), field=where)
    tabular = raw.get("tabular")
    if not isinstance(tabular, list) or len(tabular) != n_features:
        raise InputError(f"expected {n_features} tabular values", path=str(path), field=f"{where}.tabular")

    def array(key: str) -> Path | None:
        rel = raw.get(key)
        if rel is None:
            return None
        full = (root / str(rel)).resolve()
        if not full.is_file():
            raise InputError(f"file {rel!r} does not exist under {root}", path=str(path), field=f"{where}.{key}")
        return full

    return DatalistEntry(patient=raw["patient"], ct=array("ct"), ecg=array("ecg"),
                         tabular=tuple(None if v is None else float(v) for v in tabular), label=UNKNOWN_LABEL)


def cohort_datalist(export: Path) -> Datalist:
    """Every patient of an export, labelled (as training reads them) and unlabelled, sorted by patient."""
    datalist = load_datalist(export)
    path = export / DATALIST_FILE
    raw = json.loads(path.read_text(encoding="utf-8")).get("unlabelled", [])
    extra = [_unlabelled_entry(r, i, datalist.root, datalist.n_tabular, path) for i, r in enumerate(raw)]
    return replace(datalist, entries=tuple(sorted((*datalist.entries, *extra), key=lambda e: e.patient)))


# --------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class TrainingData:
    """The model's training cohort at this site, as the training path exported and split it."""

    datalist: Datalist
    train: list[DatalistEntry]

    @property
    def patients(self) -> set[str]:
        return {e.patient for e in self.datalist.entries}

    def required_inputs(self) -> tuple[ModelInput, ...]:
        """The array inputs every training patient had: a patient without one is outside what the model saw."""
        return tuple(role for role in ARRAY_INPUTS
                     if self.datalist.entries and all(getattr(e, role.value) is not None
                                                      for e in self.datalist.entries))


def training_data(store: Path, model: StoredModel) -> TrainingData:
    export = store_export_dir(store, model.spec_json, model.card["subset"])
    datalist = load_datalist(export)
    settings = model.settings
    train, _ = split_train_val(datalist.entries, settings.data_config().val_fraction, settings.seed)
    return TrainingData(datalist, train)


def score_patients(model: StoredModel, datalist: Datalist, entries: Sequence[DatalistEntry], stats: NormStats,
                   data_cfg: DataConfig | None = None) -> np.ndarray:
    """The model's probabilities for ``entries`` (in their order), site intercept applied when it has one.

    The inputs go through the training path's chain: the cached per-patient transforms, then the
    statistics-dependent tail with ``stats``; the model runs in evaluation mode.
    """
    settings = model.settings
    data_cfg = data_cfg or settings.data_config()
    pre = preprocessed_dataset(datalist, entries, data_cfg)
    samples = Dataset(pre, normalize_transforms(data_cfg.preprocess, stats.tabular, stats.ecg))  # type: ignore[arg-type]
    net = MultiModalNet(settings.model_config())
    set_weights(net, model.weights)
    net.to(resolve_device(str(settings.training.get("device", "auto"))))
    probs, _ = model_predict(net, make_loader(samples, settings.train_config().batch_size))
    return probs if model.intercept is None else apply_site_intercept(probs, model.intercept)


def model_stats(model: StoredModel, training: TrainingData) -> NormStats:
    """The normalisation statistics the model was trained with (the consortium's, or the site's split's)."""
    stats = model.consortium_stats()
    if stats is not None:
        return stats
    cfg = model.settings.data_config()
    return site_norm_stats(training.datalist, training.train,
                           preprocessed_dataset(training.datalist, training.train, cfg))


# ----------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Prediction:
    """One patient's prediction and the document holding it."""

    patient: str
    probability: float
    label: int | None
    used_in_training: bool
    sop_instance_uid: str
    path: Path
    new: bool


@dataclass
class PredictReport:
    """What a run did: the model, the cohort, every prediction, who was skipped and why, timings."""

    model: str
    spec: str
    subset: str | None
    patients: int = 0
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    pushed: Any = None  # cohort.ingest.dicomweb.PushReport with --push-dicomweb

    @property
    def written(self) -> list[Path]:
        return [p.path for p in self.predictions if p.new]

    @property
    def existing(self) -> list[Path]:
        return [p.path for p in self.predictions if not p.new]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "spec": self.spec, "subset": self.subset, "patients": self.patients,
                "scored": len(self.predictions), "written": len(self.written), "existing": len(self.existing),
                "skipped": [{"patient": p, "reason": r} for p, r in self.skipped], "seconds": self.seconds,
                "pushed": None if self.pushed is None else self.pushed.to_json(),
                "predictions": [{"patient": p.patient, "probability": p.probability, "label": p.label,
                                 "used_in_training": p.used_in_training, "sop_instance_uid": p.sop_instance_uid,
                                 "new": p.new} for p in self.predictions]}


def _label_text(spec_json: dict[str, Any]) -> str:
    label = spec_json.get("label") or {}
    positive = " or ".join(json.dumps(v) for v in label.get("positive", []))
    return f"{label.get('object')}.{label.get('field')} = {positive} (cohort spec {spec_json.get('name', '')})"


def _sources(index: DuckIndex, inputs: PatientInputs) -> tuple[list[SourceObject], dict[str, Path]]:
    """Every stored object behind the patient's inputs (each CT instance) and its index event, and one file
    per role.

    From the index alone (no file is read): an image series' instances share its class, series and study.
    """
    sel = inputs.selection
    chosen: dict[str, int] = {role.value: sel.inputs[role].entity_id for role in ModelInput if role in sel.inputs}
    events = [e for e in inputs.index_event if e not in chosen.values()]
    rows = index.con.execute(
        "SELECT i.entity_id, i.path, i.sop_uid, e.sop_class_uid, e.series_uid, e.study_uid FROM ingested i "
        "JOIN entities e ON e.entity_id = i.entity_id WHERE i.entity_id IN (SELECT unnest(?::INTEGER[])) "
        "ORDER BY i.path", [sorted({*chosen.values(), *events})]).fetchall()
    by_entity: dict[int, list[tuple[str, ...]]] = {}
    for eid, *rest in rows:
        by_entity.setdefault(int(eid), []).append(tuple(str(v) for v in rest))
    out: list[SourceObject] = []
    first: dict[str, Path] = {}
    for role, eid in [*chosen.items(), *((INDEX_EVENT_ROLE, e) for e in events)]:
        for path, sop, sop_class, series, study in by_entity.get(eid, []):
            out.append(SourceObject(role, sop_class, sop, series, study))
            first.setdefault(role, index.file_path(path))
    return out, first


def predict_cohort(store: str | Path, *, digest: str | None = None, spec: CohortSpec | None = None,
                   subset: str | None = None, push_dicomweb: str | None = None,
                   progress: ProgressCallback | None = None) -> PredictReport:
    """Score every patient of the cohort (default: the model's spec, whole cohort) and store one SR each.

    The model's own spec is read with the store's field catalog (``store_catalog``), as every entry
    point for a store reads a spec.

    Patients without an array input (CT, ECG) that every training patient had are skipped, with the
    reason in the report. With ``push_dicomweb`` the run's documents (new and existing) are sent to that
    PACS by STOW-RS (``cohort.ingest.dicomweb.push_to_dicomweb``); nothing else leaves the site.
    """
    root = Path(store)
    model = load_model(root, digest)
    spec = spec if spec is not None else parse_spec(model.spec_json, catalog=store_catalog(root))
    report = PredictReport(model.digest, spec.name, subset)
    t0 = time.perf_counter()
    training = training_data(root, model)
    export, selections = prediction_export(root, spec, subset, progress)
    datalist = cohort_datalist(export)
    report.patients = len(datalist.entries)
    required = training.required_inputs()
    entries = []
    for e in datalist.entries:
        missing = [r.value for r in required if getattr(e, r.value) is None]
        if missing:
            report.skipped.append((e.patient, f"no {' and no '.join(missing)} input: the model was trained only on "
                                              f"patients with {' and '.join(r.value for r in required)}"))
        else:
            entries.append(e)
    report.seconds["export"] = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    probs = score_patients(model, datalist, entries, model_stats(model, training)) if entries else np.zeros(0)
    report.seconds["score"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    _write_documents(root, model, entries, probs, selections, training.patients, report, progress)
    report.seconds["write"] = round(time.perf_counter() - t2, 3)
    if report.written:
        from cohort.index.publish import update_index

        t3 = time.perf_counter()
        with update_index(root) as idx:
            idx.add_files(report.written)
            idx.optimize()
        report.seconds["index"] = round(time.perf_counter() - t3, 3)
    if push_dicomweb:
        from cohort.ingest.dicomweb import push_to_dicomweb, state_path_for

        t4 = time.perf_counter()
        report.pushed = push_to_dicomweb(push_dicomweb, Store(root), [p.path for p in report.predictions],
                                         state_path_for(root, push_dicomweb), progress=progress)
        report.seconds["push"] = round(time.perf_counter() - t4, 3)
    return report


def _location(patient: str, ids: DocumentIds) -> pydicom.Dataset:
    """The identifiers ``Store.path_for`` reads, to find a document without building it."""
    ds = pydicom.Dataset()
    ds.PatientID, ds.StudyInstanceUID, ds.Modality = patient, ids.study_uid, "SR"
    ds.SeriesInstanceUID, ds.SOPInstanceUID = ids.series_uid, ids.sop_uid
    return ds


def _write_documents(root: Path, model: StoredModel, entries: Sequence[DatalistEntry],
                     probs: np.ndarray, selections: dict[str, PatientInputs], trained_on: set[str],
                     report: PredictReport, progress: ProgressCallback | None) -> None:
    store = Store(root)
    identity = model.identity()
    label_text = _label_text(model.spec_json)  # what the model predicts, whatever cohort it scores
    observed = datetime.now().replace(microsecond=0)
    with DuckIndex.for_store(root, read_only=True) as index:
        for i, (entry, p) in enumerate(zip(entries, probs, strict=True)):
            if progress:
                progress("writing prediction SRs", i, len(entries))
            sources, first = _sources(index, selections[entry.patient])
            role = next((r.value for r in _STUDY_ORDER if r.value in first), None)
            if role is None:
                report.skipped.append((entry.patient, "no stored input object to reference"))
                continue
            record = PredictionRecord(entry.patient, float(p), label_text, entry.patient in trained_on,
                                      tuple(sources), identity, observed)
            ids = prediction_ids(record, next(s.study_uid for s in sources if s.role == role))
            target = store.path_for(_location(entry.patient, ids))
            new = not target.exists()  # same UID: the same prediction was stored before (kept as it is)
            if new:
                target = store.write(prediction_document(record, pydicom.dcmread(first[role], stop_before_pixels=True)))
            report.predictions.append(Prediction(entry.patient, float(p),
                                                 None if entry.label == UNKNOWN_LABEL else entry.label,
                                                 entry.patient in trained_on, ids.sop_uid, target, new))
    if progress:
        progress("writing prediction SRs", len(entries), len(entries))
