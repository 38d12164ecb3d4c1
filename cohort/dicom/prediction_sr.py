"""The SR document of one model prediction for one patient (``fl-client predict``).

Why not TID 1500: a Measurement Report holds *imaging* measurements; its references go through the
image library (TID 1600) and measurement groups (TID 1501, 1411), which take IMAGE items only. A
prediction computed from a CT series, an ECG waveform and two structured reports has to reference a
waveform (WAVEFORM) and SR documents (COMPOSITE) as well, which TID 1500 does not allow, and the
project already reads TID 1500 documents as landmark reports. So the document is a Comprehensive SR
with a project template: standard building blocks where they exist (TID 1002/1004 device observer
context, TID 4019 algorithm identification, (122157, DCM) "Probability", (121112, DCM) "Source of
Measurement" references as TID 300/320 use them) and ``99FEDCOH`` codes for the rest. The tree is in
:func:`prediction_tree`'s docstring and in docs/predictions.md.

The SOP Instance UID depends only on the model (digest and the site's parameters), the patient and the
objects the inputs came from (:func:`prediction_uid`), so predicting again writes no second document.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import DT

from cohort.dicom import codes
from cohort.dicom import sr_items as sr
from cohort.dicom.clinical_sr import DocumentIds, sr_document
from cohort.dicom.patient import PatientRef
from cohort.dicom.uids import derived_uid

__all__ = ["INDEX_EVENT_ROLE", "ModelIdentity", "PredictionRecord", "SourceObject", "prediction_document", "prediction_ids",
           "prediction_tree", "prediction_uid", "PREDICTION_SERIES_NUMBER"]

Rel = sr.RelationshipType
PREDICTION_SERIES_NUMBER = 900
_WAVEFORM_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.9."
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# Study attributes copied from the object whose study the prediction joins, so the study stays consistent.
_STUDY_ATTRIBUTES = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                     "StudyDescription")


INDEX_EVENT_ROLE = "index_event"


@dataclass(frozen=True)
class SourceObject:
    """One stored object a model input was built from (a CT slice, the ECG, an SR), or that gave the
    index event the inputs were chosen around (role :data:`INDEX_EVENT_ROLE`: the label object)."""

    role: str  # the model input: "ct", "ecg", "ecg_report", "registry", ..., or "index_event"
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str

    def value_type(self) -> str:
        """The SR value type that references it: WAVEFORM, COMPOSITE (an SR) or IMAGE."""
        if self.sop_class_uid.startswith(_WAVEFORM_CLASS_PREFIX):
            return "WAVEFORM"
        if self.sop_class_uid.startswith(_SR_CLASS_PREFIX):
            return "COMPOSITE"
        return "IMAGE"


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm behind a prediction: TID 4019 name, version and parameters, and where it came from."""

    name: str
    version: str
    digest: str  # SHA-256 of the weights (fl_client.final_model.model_digest)
    parameters: dict[str, object]  # the site's part: intercept, calibration, normalisation
    training_run: str
    training_cohort_hash: str | None = None

    def parameters_text(self) -> str:
        return json.dumps(self.parameters, sort_keys=True)


@dataclass(frozen=True)
class PredictionRecord:
    """One patient's prediction and everything its document says."""

    patient_id: str
    probability: float
    predicted_label: str  # what the probability is of, in words (the spec's label)
    in_training_data: bool
    sources: tuple[SourceObject, ...]
    model: ModelIdentity
    observed: datetime  # when the prediction was made


def prediction_uid(patient_id: str, model: ModelIdentity, sources: Sequence[SourceObject]) -> UID:
    """SOP Instance UID of a prediction: same model, parameters, patient and input objects, same UID."""
    refs = sorted(f"{s.role}={s.sop_instance_uid}" for s in sources)
    return derived_uid("prediction", model.digest, model.parameters_text(), patient_id, *refs)


def _reference(source: SourceObject) -> Dataset:
    """INFERRED FROM "Source of Measurement" for an input object; CONTAINS "Index event source" otherwise."""
    name, rel = ((codes.INDEX_EVENT_SOURCE, Rel.CONTAINS) if source.role == INDEX_EVENT_ROLE
                 else (codes.SOURCE_OF_MEASUREMENT, Rel.INFERRED_FROM))
    kind = source.value_type()
    if kind == "WAVEFORM":
        return sr.waveform_ref(name, source.sop_class_uid, source.sop_instance_uid, rel=rel)
    if kind == "COMPOSITE":
        return sr.composite_ref(name, source.sop_class_uid, source.sop_instance_uid, rel=rel)
    return sr.image_ref(name, source.sop_class_uid, source.sop_instance_uid, rel=rel)


def prediction_tree(record: PredictionRecord, device_uid: str) -> Dataset:
    """Root container of a prediction document.

    ::

        CONTAINER (MP001, 99FEDCOH) "Model prediction report"
          HAS CONCEPT MOD CODE (121049, DCM) "Language of Content Item and Descendants" = (en-US, RFC5646)
          HAS OBS CONTEXT CODE (121005, DCM) "Observer Type" = (121007, DCM) "Device"        [TID 1002]
          HAS OBS CONTEXT UIDREF (121012, DCM) "Device Observer UID" = <from the model digest>  [TID 1004]
          HAS OBS CONTEXT TEXT (121013, DCM) "Device Observer Name" = <algorithm name>
          HAS OBS CONTEXT TEXT (121014, DCM) "Device Observer Manufacturer" = FedCohort
          HAS OBS CONTEXT TEXT (121015, DCM) "Device Observer Model Name" = <algorithm name>
          CONTAINS CONTAINER (MP002, 99FEDCOH) "Model identification"
            CONTAINS TEXT (111001, DCM) "Algorithm Name"                                     [TID 4019]
            CONTAINS TEXT (111003, DCM) "Algorithm Version"
            CONTAINS TEXT (111002, DCM) "Algorithm Parameters" = JSON (site intercept, calibration, ...)
            CONTAINS TEXT (MP003, 99FEDCOH) "Model weights SHA-256 digest"
            CONTAINS TEXT (MP004, 99FEDCOH) "Federated training run"
            CONTAINS TEXT (MP005, 99FEDCOH) "Training cohort hash"                      [when known]
          CONTAINS CONTAINER (MP006, 99FEDCOH) "Model prediction"
            CONTAINS TEXT (MP007, 99FEDCOH) "Predicted label" = e.g. "tavi.pacemaker_after_tavi = true"
            CONTAINS NUM (122157, DCM) "Probability" [(1, UCUM) "no units"], ObservationDateTime
              INFERRED FROM IMAGE (121112, DCM) "Source of Measurement"            [each CT instance]
              INFERRED FROM WAVEFORM (121112, DCM) "Source of Measurement"         [the ECG waveform]
              INFERRED FROM COMPOSITE (121112, DCM) "Source of Measurement"        [each input SR]
            CONTAINS CODE (MP008, 99FEDCOH) "Patient in the model's training data" = Yes / No
            CONTAINS COMPOSITE (MP009, 99FEDCOH) "Index event source"   [each matched label object, e.g. the
                                                     procedure-history SR whose TAVI date the inputs were chosen around]
    """
    model = record.model
    observer = [
        sr.code(codes.OBSERVER_TYPE, codes.DEVICE, rel=Rel.HAS_OBS_CONTEXT),
        sr.uidref(codes.DEVICE_OBSERVER_UID, device_uid, rel=Rel.HAS_OBS_CONTEXT),
        sr.text(codes.DEVICE_OBSERVER_NAME, model.name, rel=Rel.HAS_OBS_CONTEXT),
        sr.text(codes.DEVICE_OBSERVER_MANUFACTURER, "FedCohort", rel=Rel.HAS_OBS_CONTEXT),
        sr.text(codes.DEVICE_OBSERVER_MODEL_NAME, model.name, rel=Rel.HAS_OBS_CONTEXT),
    ]
    identification = [
        sr.text(codes.ALGORITHM_NAME, model.name),
        sr.text(codes.ALGORITHM_VERSION, model.version),
        sr.text(codes.ALGORITHM_PARAMETERS, model.parameters_text()),
        sr.text(codes.MODEL_DIGEST, model.digest),
        sr.text(codes.TRAINING_RUN, model.training_run),
    ]
    if model.training_cohort_hash:
        identification.append(sr.text(codes.TRAINING_COHORT_HASH, model.training_cohort_hash))
    probability = sr.num(codes.PROBABILITY, record.probability, codes.NO_UNITS)
    probability.ObservationDateTime = str(DT(record.observed))
    probability.ContentSequence = [_reference(s) for s in record.sources if s.role != INDEX_EVENT_ROLE]
    prediction = [
        sr.text(codes.PREDICTED_LABEL, record.predicted_label),
        probability,
        sr.code(codes.IN_TRAINING_DATA, codes.YES if record.in_training_data else codes.NO),
        *(_reference(s) for s in record.sources if s.role == INDEX_EVENT_ROLE),
    ]
    return sr.container(codes.MODEL_PREDICTION_REPORT, [
        sr.code(codes.LANGUAGE_OF_CONTENT, codes.ENGLISH_US, rel=Rel.HAS_CONCEPT_MOD),
        *observer,
        sr.container(codes.MODEL_IDENTIFICATION, identification),
        sr.container(codes.MODEL_PREDICTION, prediction),
    ], rel=None)


def prediction_ids(record: PredictionRecord, study_uid: str) -> DocumentIds:
    """Study, series and instance UIDs of ``record``'s document when it joins the study ``study_uid``."""
    if not record.sources:
        raise ValueError(f"patient {record.patient_id}: a prediction needs at least one input object")
    return DocumentIds(study_uid=study_uid,
                       series_uid=derived_uid("prediction-series", record.model.digest, study_uid),
                       sop_uid=prediction_uid(record.patient_id, record.model, record.sources),
                       series_number=PREDICTION_SERIES_NUMBER,
                       series_description=f"Model prediction {record.model.digest[:16]}")


def prediction_document(record: PredictionRecord, study: Dataset) -> Dataset:
    """The Comprehensive SR of ``record``, in the study of ``study`` (the header of one input object).

    The document joins that study (its attributes copied, so the study stays consistent in a PACS) in a
    series of its own per model; its Content Date/Time is the observation time.
    """
    ids = prediction_ids(record, str(study.StudyInstanceUID))
    device_uid = derived_uid("prediction-device", record.model.digest)
    ds = sr_document(prediction_tree(record, device_uid), PatientRef(record.patient_id, ""), ids,
                     record.observed.date())
    ds.ContentTime = record.observed.strftime("%H%M%S")
    for keyword in _STUDY_ATTRIBUTES:
        if keyword in study:
            setattr(ds, keyword, study.get(keyword))
    if "PatientSex" in study:
        ds.PatientSex = study.PatientSex
    ds.CurrentRequestedProcedureEvidenceSequence = sr.evidence_sequence(_as_headers(record.sources))
    return ds


def _as_headers(sources: Sequence[SourceObject]) -> list[Dataset]:
    out = []
    for s in sources:
        h = Dataset()
        h.StudyInstanceUID, h.SeriesInstanceUID = s.study_uid, s.series_uid
        h.SOPInstanceUID, h.SOPClassUID = s.sop_instance_uid, s.sop_class_uid
        out.append(h)
    return out
