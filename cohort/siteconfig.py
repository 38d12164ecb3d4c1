"""A site's configuration (``site.yaml``): formats, column mapping, encodings, store, disclosure policy.

The site steward writes this file once; ``cohort synth`` writes one per synthetic site. Nothing here
has a silent default for what only the site can know (its id, its store, its pseudonym key).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cohort.errors import ConfigError

IdKind = Literal["pacs_id", "case_id"]
SEGMENT_KEYS = ("calcification", "membranous_septum", "left_ventricle", "right_ventricle")
REGISTRY_FIELDS = (
    "case_id", "tavi_date", "age", "sex", "height_cm", "weight_kg", "nyha", "lvef_percent", "diabetes",
    "access_route", "prosthesis_type", "prosthesis_size_mm", "valve_in_valve",
)
PROCEDURE_FIELDS = ("case_id", "code", "date", "description")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TableFormat(_Strict):
    """How one CSV export is written: encoding, delimiter, decimal mark and date format."""

    encoding: str = "utf-8"
    delimiter: str = ","
    decimal: Literal[".", ","] = "."
    date_format: str = "%Y-%m-%d"


class IdentifierMapping(_Strict):
    """The CSV that links the PACS patient id to the hospital case number (one row per pair)."""

    file: str = Field(description="path relative to the raw export folder")
    pacs_id_column: str
    case_id_column: str
    format: TableFormat = TableFormat()


class ProceduresTable(_Strict):
    """Procedure codes (OPS) with dates; ``columns`` maps canonical names to the site's headers."""

    columns: dict[str, str]
    format: TableFormat = TableFormat()

    @field_validator("columns")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_columns(v, PROCEDURE_FIELDS, required=("case_id", "code", "date"))


class RegistryTable(_Strict):
    """Registry (IQTIG-like) records; ``value_maps`` translate local values to canonical ones."""

    columns: dict[str, str]
    value_maps: dict[str, dict[str, str]] = {}
    format: TableFormat = TableFormat()

    @field_validator("columns")
    @classmethod
    def _known(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_columns(v, REGISTRY_FIELDS, required=("case_id",))


class EcgSource(_Strict):
    """Which identifier the site's ECG system writes into its exports, and where to find it when it does not.

    ``patient_id_from_path`` is a regular expression with a group named ``id``, searched in the path of
    an ECG file relative to RAW_DIR (with ``/``), e.g. ``'^ecg/(?P<id>[^/]+)/'`` for one folder per
    patient. It is used only for files that carry no patient identifier; the id it finds is of ``id_kind``.
    """

    id_kind: IdKind = "pacs_id"
    patient_id_from_path: str | None = None

    @field_validator("patient_id_from_path")
    @classmethod
    def _one_id_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            pattern = re.compile(v)
        except re.error as exc:
            raise ValueError(f"ecg.patient_id_from_path {v!r} is not a regular expression ({exc})") from None
        if "id" not in pattern.groupindex:
            raise ValueError(f"ecg.patient_id_from_path {v!r} needs a group named id, e.g. '^ecg/(?P<id>[^/]+)/'")
        return v


class SegmentationSource(_Strict):
    """NIfTI label maps: label value -> segment key, creator type, and how a file names its patient."""

    labels: dict[int, str]
    algorithm_type: Literal["MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"] = "SEMIAUTOMATIC"
    algorithm_name: str = "site segmentation tool"
    algorithm_version: str = "1.0"
    link_pattern: str = Field(description="regex on the file name with a named group pacs_id or case_id")

    @field_validator("labels")
    @classmethod
    def _keys(cls, v: dict[int, str]) -> dict[int, str]:
        for key in v.values():
            if key not in SEGMENT_KEYS:
                raise ValueError(f"unknown segment key {key!r}; valid keys: {', '.join(SEGMENT_KEYS)}")
        return v


class MarkupsSource(_Strict):
    """3D Slicer markups JSON: how a file names its patient."""

    link_pattern: str


class FreeTextSource(_Strict):
    """Free-text reports: plain text files with a header naming the patient and the date."""

    id_kind: IdKind = "case_id"
    id_label: str = "Fallnummer"
    date_label: str = "Datum"
    date_format: str = "%d.%m.%Y"
    encoding: str = "utf-8"


StrictnessLevel = Literal["ignore", "warn", "quarantine"]


class Strictness(_Strict):
    """What ingest does with a DICOM object that lacks an attribute its SOP class requires.

    ``warn`` converts the object and lists each missing attribute in the ingest report as a warning
    on that object; ``quarantine`` keeps the input out of the store with the list as its reason;
    ``ignore`` says nothing. Attributes the index or the export read (identifiers, image geometry,
    segments, waveform channels) quarantine the object whatever these settings say.
    """

    missing_type1: StrictnessLevel = "warn"  # type 1: present and not empty
    missing_type2: StrictnessLevel = "warn"  # type 2: present, may be empty


class DisclosurePolicy(_Strict):
    """What the site lets leave it: minimum cell size in distinct patients, rounding, noise, bins."""

    min_cell_size: int = Field(10, ge=1)
    rounding: int = Field(1, ge=1, description="round released counts up to a multiple of this")
    noise_scale: float = Field(0.0, ge=0, description="Laplace noise scale added before rounding")
    histogram_bin_cap: int = Field(20, ge=1)
    allowed_fields: list[str] | None = None  # None: every indexed, non-identifying field
    # Secure aggregation: the site adds its exact counts, masked, to a consortium total that is
    # released only when at least secure_min_sites sites contribute (a coordinator can only raise it).
    secure_aggregation: bool = Field(True, description="join secure totals of counts (SecAgg+)")
    secure_min_sites: int = Field(3, ge=2, description="fewest sites in a secure total this site joins")
    secure_epsilon: float = Field(1.0, gt=0, description="epsilon of the noise on secure-total cells that not "
                                  "every contributor released exactly (charged to dp_budget)")
    # Differential privacy (optional): noisy counts instead of suppression, with a budget per coordinator.
    dp_epsilon: float | None = Field(None, gt=0, description="epsilon spent per answered query; None: no DP")
    dp_mechanism: Literal["laplace"] = "laplace"
    dp_budget: float = Field(10.0, gt=0, description="total epsilon one coordinator may spend at this site")
    # Free text: a predicate on a free-text field (e.g. report_text contains ...) is answered only for
    # these terms (case-insensitive); by default none, so free text cannot be used to probe for people.
    free_text_terms: list[str] = []


class AppRelease(_Strict):
    """Which app releases (Flower app bundles, FABs) the site's node answers (docs/deployment.md).

    ``sha256``: SHA-256 digests (hex) of the exact FAB bytes; ``signers``: Ed25519 public keys of the
    consortium's release signers (``ssh-ed25519 ...``, 32 raw bytes in base64, or a key file path,
    relative to this file). A run is answered when its FAB's digest is listed or carries a signature
    by a listed signer; fl_client.app_release loads the keys and checks.
    """

    sha256: list[str] = []
    signers: list[str] = []

    @field_validator("sha256")
    @classmethod
    def _digests(cls, v: list[str]) -> list[str]:
        out = []
        for i, d in enumerate(v):
            d = str(d).strip().lower().removeprefix("sha256:")
            if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
                raise ValueError(f"entry {i} ({str(v[i])[:80]!r}) is not a SHA-256 digest (64 hex characters); "
                                 "compute it with: fl-client app-hash RELEASE.fab (or the release's folder)")
            out.append(d)
        return out

    @model_validator(mode="after")
    def _something(self) -> AppRelease:
        if not self.sha256 and not self.signers:
            raise ValueError("lists neither sha256 nor signers: pin at least one release digest "
                             "(fl-client app-hash RELEASE.fab) or one release signer's public key")
        return self


class SiteConfig(_Strict):
    """Everything a site's pipeline needs to know about its own exports."""

    site_id: str
    display_name: str = ""
    store: str = Field(description="store folder; relative paths are relative to this file")
    pseudonym_key: str = Field(min_length=16, description="secret key for pseudonymous PatientIDs")
    identifiers: IdentifierMapping | None = None  # None: inputs name patients by PACS id only
    procedures: ProceduresTable | None = None
    registry: RegistryTable | None = None
    ecg: EcgSource = EcgSource()
    segmentation: SegmentationSource | None = None
    markups: MarkupsSource | None = None
    free_text: FreeTextSource = FreeTextSource()
    strictness: Strictness = Strictness()
    disclosure: DisclosurePolicy = DisclosurePolicy()
    app_release: AppRelease | None = None  # None: no pin; fl-client start refuses unless --allow-unpinned
    # Secure totals: this site's Ed25519 identity key (PEM) and the consortium roster (site ids and identity
    # public keys) it shares secrets with; paths relative to this file (cohort.identity).
    identity_key: str | None = None
    roster: str | None = None
    source_file: str | None = Field(None, exclude=True)

    def store_path(self) -> Path:
        p = Path(self.store)
        if not p.is_absolute() and self.source_file:
            p = Path(self.source_file).parent / p
        return p

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False,
                              allow_unicode=True)


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate ``site.yaml``; errors name the file, the field and what is expected."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: site config not found; pass --site-config PATH to a site.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid site config:"]
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return cfg.model_copy(update={"source_file": str(path.resolve())})


def _check_columns(v: dict[str, str], known: tuple[str, ...], required: tuple[str, ...]) -> dict[str, str]:
    unknown = [k for k in v if k not in known]
    if unknown:
        raise ValueError(f"unknown canonical column(s) {unknown}; valid: {', '.join(known)}")
    missing = [k for k in required if k not in v]
    if missing:
        raise ValueError(f"missing required column mapping(s) {missing}")
    return v
