"""Comprehensive SR documents for the tabular sources: coded procedure history and registry records.

Both trees follow TID 3802 (History) and TID 3704 (Patient Characteristics) where a concept fits and
use project-local codes (``99FEDCOH``) for the rest; OPS procedure codes use the private scheme
``99OPS`` with the catalogue year as scheme version. Both documents put the TAVI facts under the
same container, (TAVI01, 99FEDCOH) "Transcatheter aortic valve implantation", so one index path
serves both. The trees are listed in docs form in each builder's docstring.

Documents carry no wall-clock time: ContentDate is the latest date of the data they hold, so the
same input always gives byte-identical objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, ComprehensiveSRStorage, ExplicitVRLittleEndian

from cohort.dicom import codes
from cohort.dicom import sr_items as sr
from cohort.dicom.patient import PatientRef, apply_patient

MANUFACTURER = "FedCohort"
DIABETES_TREATMENT_CODES = {"diet": codes.DIABETES_DIET, "oral": codes.DIABETES_ORAL,
                            "insulin": codes.DIABETES_INSULIN}
ACCESS_ROUTE_CODES = {"transfemoral": codes.TRANSFEMORAL_ACCESS, "transapical": codes.TRANSAPICAL_ACCESS,
                      "transaxillary": codes.TRANSAXILLARY_ACCESS}
PROSTHESIS_TYPE_CODES = {"balloon-expandable": codes.BALLOON_EXPANDABLE_PROSTHESIS,
                         "self-expanding": codes.SELF_EXPANDING_PROSTHESIS}
SEX_CODES = {"M": codes.MALE, "F": codes.FEMALE}


@dataclass(frozen=True)
class ProcedureEntry:
    """One coded procedure: OPS code (normalised), date performed, title used as code meaning."""

    code: str
    performed: date
    title: str


@dataclass(frozen=True)
class PacemakerFindings:
    """What the procedure codes say about TAVI and pacemakers (derived by the label rule)."""

    tavi_date: date | None
    pacemaker_after_tavi: bool | None  # None: not applicable (pacemaker before TAVI) or unknown
    days_to_pacemaker: int | None  # first pacemaker on or after the TAVI day, any distance
    pacemaker_before_tavi: bool


@dataclass(frozen=True)
class RegistryRecord:
    """One registry record in canonical values; ``None`` means the field was not recorded."""

    tavi_date: date
    age: float | None = None
    sex: str | None = None  # "M" | "F"
    height_cm: float | None = None
    weight_kg: float | None = None
    nyha: int | None = None
    lvef_percent: float | None = None
    diabetes: str | None = None  # "none" | "diet" | "oral" | "insulin"
    access_route: str | None = None
    prosthesis_type: str | None = None
    prosthesis_size_mm: float | None = None
    valve_in_valve: bool | None = None


def date_item(name: Code, value: date, *, rel: sr.Rel = sr.RelationshipType.CONTAINS) -> Dataset:
    """A DATE content item (sr_items has DATETIME only; a procedure day has no time of day)."""
    item = Dataset()
    item.RelationshipType = sr.RelationshipType(rel).value
    item.ValueType = "DATE"
    item.ConceptNameCodeSequence = [sr.coded_entry(name)]
    item.Date = value.strftime("%Y%m%d")
    return item


def _yes_no(flag: bool) -> Code:
    return codes.YES if flag else codes.NO


def fit_lo(text: str, max_bytes: int = 64) -> str:
    """``text`` shortened at a word boundary to fit an LO value (64 bytes in UTF-8, not characters)."""
    text = " ".join(text.split())
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    cut = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return head.rstrip(" ,:;-")


def ops_code(entry: ProcedureEntry) -> Code:
    """The OPS code as a DICOM code in the private scheme; the version is the catalogue year."""
    return Code(entry.code, codes.OPS_SCHEME, fit_lo(entry.title), scheme_version=str(entry.performed.year))


def procedure_history_tree(entries: Sequence[ProcedureEntry], findings: PacemakerFindings) -> Dataset:
    """Root container of a procedure-history document.

    ::

        CONTAINER (PRC001, 99FEDCOH) "Coded procedure history"
          CONTAINS CONTAINER (11329-0, LN) "History"
            CONTAINS CODE (10167-5, LN) "Past surgical history" = (<OPS code>, 99OPS, <title>)   [per row]
              HAS PROPERTIES DATE (PRD001, 99FEDCOH) "Procedure date"
          CONTAINS CONTAINER (121118, DCM) "Patient Characteristics"          [pacemaker before TAVI]
            CONTAINS CODE (441509002, SCT) "Cardiac pacemaker in situ" = (373066001, SCT) "Yes"
          CONTAINS CONTAINER (TAVI01, 99FEDCOH) "Transcatheter aortic valve implantation" [TAVI coded]
            CONTAINS DATE (TAVI02, 99FEDCOH) "Date of TAVI"
            CONTAINS CODE (PM001, 99FEDCOH) "Permanent pacemaker implanted after TAVI" = Yes / No
                                                                     [only when the label applies]
            CONTAINS NUM (PM002, 99FEDCOH) "Days from TAVI to pacemaker implantation" [d]
                                                          [first pacemaker on/after TAVI, if any]
    """
    history = sr.container(codes.HISTORY, [
        _with_children(sr.code(codes.PAST_SURGICAL_HISTORY, ops_code(e)),
                       [date_item(codes.PROCEDURE_DATE, e.performed, rel=sr.RelationshipType.HAS_PROPERTIES)])
        for e in sorted(entries, key=lambda e: (e.performed, e.code))
    ])
    children = [history]
    if findings.pacemaker_before_tavi:
        children.append(sr.container(codes.PATIENT_CHARACTERISTICS,
                                     [sr.code(codes.PACEMAKER_IN_SITU, codes.YES)]))
    if findings.tavi_date is not None:
        tavi = [date_item(codes.TAVI_DATE, findings.tavi_date)]
        if findings.pacemaker_after_tavi is not None:
            tavi.append(sr.code(codes.PACEMAKER_AFTER_TAVI, _yes_no(findings.pacemaker_after_tavi)))
        if findings.days_to_pacemaker is not None:
            tavi.append(sr.num(codes.DAYS_TAVI_TO_PACEMAKER, findings.days_to_pacemaker, codes.DAY))
        children.append(sr.container(codes.TAVI_PROCEDURE, tavi))
    return sr.container(codes.PROCEDURE_HISTORY_REPORT, children, rel=None)


def registry_tree(rec: RegistryRecord) -> Dataset:
    """Root container of a registry-record document; items of unrecorded fields are left out.

    ::

        CONTAINER (REG001, 99FEDCOH) "TAVI registry record"
          CONTAINS CONTAINER (11329-0, LN) "History"
            CONTAINS CODE (161445009, SCT) "History of diabetes mellitus" = Yes / No
              HAS PROPERTIES CODE (DM000, 99FEDCOH) "Diabetes treatment" = DM001 diet / DM002 oral /
                                                                           DM003 insulin   [if Yes]
            CONTAINS CODE (NY000, 99FEDCOH) "NYHA functional class" = (420300004 ..., SCT) class I-IV
          CONTAINS CONTAINER (121118, DCM) "Patient Characteristics"
            CONTAINS NUM (121033, DCM) "Subject Age" [a]
            CONTAINS CODE (121032, DCM) "Subject Sex" = (M, DCM) / (F, DCM)
            CONTAINS NUM (8302-2, LN) "Body height" [cm]
            CONTAINS NUM (29463-7, LN) "Body weight" [kg]
          CONTAINS NUM (EF001, 99FEDCOH) "Left ventricular ejection fraction" [%]
          CONTAINS CONTAINER (TAVI01, 99FEDCOH) "Transcatheter aortic valve implantation"
            CONTAINS DATE (TAVI02, 99FEDCOH) "Date of TAVI"
            CONTAINS CODE (AR000, 99FEDCOH) "TAVI access route" = AR001 / AR002 / AR003
            CONTAINS CODE (PT000, 99FEDCOH) "Transcatheter valve prosthesis type" = PT001 / PT002
            CONTAINS NUM (PS000, 99FEDCOH) "Transcatheter valve prosthesis size" [mm]
            CONTAINS CODE (VIV001, 99FEDCOH) "Valve-in-valve procedure" = Yes / No
    """
    history: list[Dataset] = []
    if rec.diabetes is not None:
        dm = sr.code(codes.HISTORY_OF_DIABETES, _yes_no(rec.diabetes != "none"))
        if rec.diabetes != "none":
            _with_children(dm, [sr.code(codes.DIABETES_TREATMENT, DIABETES_TREATMENT_CODES[rec.diabetes],
                                        rel=sr.RelationshipType.HAS_PROPERTIES)])
        history.append(dm)
    if rec.nyha is not None:
        history.append(sr.code(codes.NYHA_CLASS, codes.NYHA_CLASSES[rec.nyha]))
    patient: list[Dataset] = []
    if rec.age is not None:
        patient.append(sr.num(codes.SUBJECT_AGE, rec.age, codes.YEAR))
    if rec.sex is not None:
        patient.append(sr.code(codes.SUBJECT_SEX, SEX_CODES[rec.sex]))
    if rec.height_cm is not None:
        patient.append(sr.num(codes.BODY_HEIGHT, rec.height_cm, codes.CENTIMETER))
    if rec.weight_kg is not None:
        patient.append(sr.num(codes.BODY_WEIGHT, rec.weight_kg, codes.KILOGRAM))
    tavi = [date_item(codes.TAVI_DATE, rec.tavi_date)]
    if rec.access_route is not None:
        tavi.append(sr.code(codes.ACCESS_ROUTE, ACCESS_ROUTE_CODES[rec.access_route]))
    if rec.prosthesis_type is not None:
        tavi.append(sr.code(codes.PROSTHESIS_TYPE, PROSTHESIS_TYPE_CODES[rec.prosthesis_type]))
    if rec.prosthesis_size_mm is not None:
        tavi.append(sr.num(codes.PROSTHESIS_SIZE, rec.prosthesis_size_mm, codes.MILLIMETER))
    if rec.valve_in_valve is not None:
        tavi.append(sr.code(codes.VALVE_IN_VALVE, _yes_no(rec.valve_in_valve)))
    children = []
    if history:
        children.append(sr.container(codes.HISTORY, history))
    if patient:
        children.append(sr.container(codes.PATIENT_CHARACTERISTICS, patient))
    if rec.lvef_percent is not None:
        children.append(sr.num(codes.LVEF, rec.lvef_percent, codes.PERCENT))
    children.append(sr.container(codes.TAVI_PROCEDURE, tavi))
    return sr.container(codes.REGISTRY_REPORT, children, rel=None)


def _with_children(item: Dataset, children: list[Dataset]) -> Dataset:
    item.ContentSequence = children
    return item


@dataclass(frozen=True)
class DocumentIds:
    """Where a document goes: its study, series and instance UIDs and the series' number and name."""

    study_uid: str
    series_uid: str
    sop_uid: str
    series_number: int
    series_description: str
    instance_number: int = 1


def sr_document(root: Dataset, patient: PatientRef, ids: DocumentIds, content_date: date) -> Dataset:
    """A Comprehensive SR dataset (with file meta) holding ``root``; no wall-clock values.

    Study attributes that another object of the shared documents study might set differently
    (StudyDate, StudyID) stay empty, as does PatientSex: sex is in the content where it is known.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ids.sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"  # OPS titles carry umlauts
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = ids.sop_uid
    apply_patient(ds, patient)
    ds.PatientSex = ""
    ds.StudyInstanceUID = ids.study_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.Modality = "SR"
    ds.SeriesInstanceUID = ids.series_uid
    ds.SeriesNumber = ids.series_number
    ds.SeriesDescription = ids.series_description
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.Manufacturer = MANUFACTURER
    ds.InstanceNumber = ids.instance_number
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = content_date.strftime("%Y%m%d")
    ds.ContentTime = "000000"
    ds.PerformedProcedureCodeSequence = []
    sr.apply_root(ds, root)
    sr.declare_local_scheme(ds, root)
    if codes.OPS_SCHEME in sr.coding_schemes_in(root):
        ds.CodingSchemeIdentificationSequence = [*ds.get("CodingSchemeIdentificationSequence", []),
                                                 _ops_scheme(root)]
    return ds


def _ops_scheme(root: Dataset) -> Dataset:
    # Each OPS code carries its own catalogue year; the declaration names the newest one used.
    years = sorted({c.CodingSchemeVersion for node in sr.walk(root) for c in node.get("ConceptCodeSequence", [])
                    if c.CodingSchemeDesignator == codes.OPS_SCHEME and "CodingSchemeVersion" in c})
    ident = Dataset()
    ident.CodingSchemeDesignator = codes.OPS_SCHEME
    ident.CodingSchemeName = codes.OPS_SCHEME_NAME
    if years:
        ident.CodingSchemeVersion = years[-1]
    ident.CodingSchemeResponsibleOrganization = codes.OPS_SCHEME_ORGANIZATION
    return ident
