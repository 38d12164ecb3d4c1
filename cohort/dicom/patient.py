"""The pseudonymous patient identity written into every object a site stores."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from pydicom.dataset import Dataset

# Attributes that could identify a person and that the store never keeps (beyond PatientID/Name,
# which are replaced by the pseudonym).
IDENTIFYING_ATTRIBUTES = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
    "MedicalRecordLocator", "PatientBirthTime", "IssuerOfPatientID", "ReferringPhysicianName",
    "InstitutionAddress", "AccessionNumber", "OperatorsName", "PerformingPhysicianName",
    "RequestingPhysician", "PatientComments",
)


@dataclass(frozen=True)
class PatientRef:
    """One patient of the site: the pseudonym used in the store and the source identifiers it links."""

    patient_id: str  # pseudonymous PatientID, also the family name of PatientName
    pacs_id: str
    case_ids: tuple[str, ...] = ()


def pseudonym(key: str, site_id: str, pacs_id: str) -> str:
    """Keyed, stable pseudonym for a PACS patient id (HMAC-SHA256; not reversible without the key)."""
    digest = hmac.new(key.encode(), f"{site_id}\x00{pacs_id}".encode(), hashlib.sha256).digest()
    return "P" + base64.b32encode(digest[:10]).decode().rstrip("=")


def apply_patient(ds: Dataset, patient: PatientRef) -> Dataset:
    """Write the pseudonymous Patient module into ``ds`` and strip other identifying attributes.

    Birth date becomes empty (type 2): age and sex are kept, as cohorts need them.
    """
    ds.PatientID = patient.patient_id
    ds.PatientName = f"{patient.patient_id}^"  # the pseudonym as family name: the non-retired PN form
    ds.PatientBirthDate = ""
    for keyword in IDENTIFYING_ATTRIBUTES:
        if keyword in ds:
            if keyword in ("AccessionNumber", "ReferringPhysicianName"):
                setattr(ds, keyword, "")  # type 2 in the study module: keep present, empty
            else:
                delattr(ds, keyword)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "FedCohort pseudonymisation (keyed HMAC PatientID)"
    return ds
