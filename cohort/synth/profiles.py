"""Site profiles: how each synthetic hospital exports its data (formats, columns, encodings, devices).

Four profiles differ in every dimension real consortia differ in; with more than four sites the
profiles repeat with a different case mix. The label prevalence comes from the site intercept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from typing import Literal

from cohort.siteconfig import (
    DisclosurePolicy,
    EcgSource,
    FreeTextSource,
    IdentifierMapping,
    MarkupsSource,
    ProceduresTable,
    RegistryTable,
    SegmentationSource,
    SiteConfig,
    TableFormat,
)
from cohort.synth.model import SiteMix

EcgFormat = Literal["dicom", "hl7-aecg", "ge-muse", "scp-ecg"]


@dataclass(frozen=True)
class CtProfile:
    """Acquisition settings of the site's cardiac CT (small volumes: synthetic data)."""

    series_description: str
    manufacturer: str
    model: str
    kvp: int
    kernel: str
    slice_thickness_mm: float
    pixel_spacing_mm: float
    matrix: tuple[int, int, int]  # rows, columns, slices


@dataclass(frozen=True)
class SiteProfile:
    """Everything that makes one synthetic site's exports look like that site's."""

    site_id: str
    display_name: str
    ecg_format: EcgFormat
    ct: CtProfile
    mix: SiteMix
    pacs_prefix: str
    case_prefix: str
    config: SiteConfig


def _config(site_id: str, name: str, *, idmap: IdentifierMapping, procedures: ProceduresTable,
            registry: RegistryTable, ecg: EcgSource, seg: SegmentationSource, markups: MarkupsSource,
            free_text: FreeTextSource) -> SiteConfig:
    return SiteConfig(
        site_id=site_id, display_name=name, store="store", pseudonym_key="synthetic-" + "0" * 16,
        identifiers=idmap, procedures=procedures, registry=registry, ecg=ecg, segmentation=seg,
        markups=markups, free_text=free_text, disclosure=DisclosurePolicy(),
    )


_SEG_STD = {1: "calcification", 2: "membranous_septum", 3: "left_ventricle", 4: "right_ventricle"}

PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        site_id="uk-nord", display_name="Universitätsklinikum Nord (synthetic)", ecg_format="dicom",
        ct=CtProfile("CTA TAVI Planung 0.6 Bv36", "SIEMENS", "SOMATOM Force", 100, "Bv36", 0.6, 0.8,
                     (64, 64, 64)),
        mix=SiteMix(intercept=-4.6, self_expanding_share=0.35, first_tavi=date(2019, 1, 1)),
        pacs_prefix="UKN", case_prefix="F",
        config=_config(
            "uk-nord", "Universitätsklinikum Nord (synthetic)",
            idmap=IdentifierMapping(file="ids/patient_case_map.csv", pacs_id_column="PACS_ID",
                                    case_id_column="CASE_NO"),
            procedures=ProceduresTable(columns={"case_id": "CASE_NO", "code": "OPS_CODE", "date": "PROC_DATE",
                                                "description": "OPS_TEXT"}),
            registry=RegistryTable(
                columns={"case_id": "CASE_NO", "tavi_date": "PROC_DATE", "age": "AGE", "sex": "SEX",
                         "height_cm": "HEIGHT_CM", "weight_kg": "WEIGHT_KG", "nyha": "NYHA",
                         "lvef_percent": "LVEF", "diabetes": "DIABETES", "access_route": "ACCESS",
                         "prosthesis_type": "VALVE_TYPE", "prosthesis_size_mm": "VALVE_SIZE",
                         "valve_in_valve": "VIV"},
                value_maps={"sex": {"m": "M", "f": "F"}, "valve_in_valve": {"yes": "true", "no": "false"}}),
            ecg=EcgSource(id_kind="pacs_id"),
            seg=SegmentationSource(labels=_SEG_STD, algorithm_type="SEMIAUTOMATIC",
                                   algorithm_name="3D Slicer Segment Editor", algorithm_version="5.6",
                                   link_pattern=r"^(?P<pacs_id>[A-Z]+\d+)_seg\.nii(\.gz)?$"),
            markups=MarkupsSource(link_pattern=r"^(?P<pacs_id>[A-Z]+\d+)_landmarks\.mrk\.json$"),
            free_text=FreeTextSource(id_kind="case_id", id_label="Case", date_label="Date",
                                     date_format="%Y-%m-%d"),
        ),
    ),
    SiteProfile(
        site_id="klinikum-sued", display_name="Klinikum Süd (synthetic)", ecg_format="ge-muse",
        ct=CtProfile("Herz TAVI 1.0 CE", "GE MEDICAL SYSTEMS", "Revolution CT", 120, "STANDARD", 1.0, 0.9,
                     (56, 56, 48)),
        mix=SiteMix(intercept=-3.2, ecg_coverage=0.95, ct_coverage=0.8, self_expanding_share=0.6,
                    first_tavi=date(2018, 6, 1)),
        pacs_prefix="KS", case_prefix="KS-",
        config=_config(
            "klinikum-sued", "Klinikum Süd (synthetic)",
            idmap=IdentifierMapping(file="stammdaten/patienten_faelle.csv", pacs_id_column="PACS-Nr",
                                    case_id_column="Fallnummer",
                                    format=TableFormat(encoding="cp1252", delimiter=";", decimal=",",
                                                       date_format="%d.%m.%Y")),
            procedures=ProceduresTable(
                columns={"case_id": "Fallnummer", "code": "OPS-Kode", "date": "OP-Datum",
                         "description": "Prozedur"},
                format=TableFormat(encoding="cp1252", delimiter=";", decimal=",", date_format="%d.%m.%Y")),
            registry=RegistryTable(
                columns={"case_id": "Fallnummer", "tavi_date": "Eingriffsdatum", "age": "Alter",
                         "sex": "Geschlecht", "height_cm": "Körpergröße [cm]", "weight_kg": "Gewicht [kg]",
                         "nyha": "NYHA-Klasse", "lvef_percent": "LVEF [%]", "diabetes": "Diabetes mellitus",
                         "access_route": "Zugangsweg", "prosthesis_type": "Prothesentyp",
                         "prosthesis_size_mm": "Prothesengröße [mm]", "valve_in_valve": "Valve-in-Valve"},
                value_maps={
                    "sex": {"männlich": "M", "weiblich": "F"},
                    "diabetes": {"nein": "none", "diätetisch": "diet", "oral": "oral", "insulinpflichtig": "insulin"},
                    "access_route": {"transfemoral": "transfemoral", "transapikal": "transapical",
                                     "transaxillär": "transaxillary"},
                    "prosthesis_type": {"ballonexpandierend": "balloon-expandable",
                                        "selbstexpandierend": "self-expanding"},
                    "valve_in_valve": {"ja": "true", "nein": "false"},
                },
                format=TableFormat(encoding="cp1252", delimiter=";", decimal=",", date_format="%d.%m.%Y")),
            ecg=EcgSource(id_kind="case_id"),
            seg=SegmentationSource(labels={1: "calcification", 2: "membranous_septum", 5: "left_ventricle",
                                           6: "right_ventricle"},
                                   algorithm_type="MANUAL", algorithm_name="ITK-SNAP", algorithm_version="4.0",
                                   link_pattern=r"^seg_(?P<pacs_id>KS\d+)\.nii\.gz$"),
            markups=MarkupsSource(link_pattern=r"^(?P<pacs_id>KS\d+)-punkte\.mrk\.json$"),
            free_text=FreeTextSource(id_kind="case_id", id_label="Fallnummer", date_label="Datum",
                                     date_format="%d.%m.%Y", encoding="cp1252"),
        ),
    ),
    SiteProfile(
        site_id="herzzentrum-west", display_name="Herzzentrum West (synthetic)", ecg_format="hl7-aecg",
        ct=CtProfile("Cardiac 0.75 TAVR", "Philips", "IQon Spectral CT", 120, "XCA", 0.75, 0.85,
                     (64, 64, 56)),
        mix=SiteMix(intercept=-4.0, ecg_coverage=0.85, ct_coverage=0.9, segmentation_coverage=0.9,
                    self_expanding_share=0.5, first_tavi=date(2020, 1, 1)),
        pacs_prefix="HZW", case_prefix="W",
        config=_config(
            "herzzentrum-west", "Herzzentrum West (synthetic)",
            idmap=IdentifierMapping(file="ids/mapping.tsv", pacs_id_column="pacs_patient_id",
                                    case_id_column="encounter",
                                    format=TableFormat(delimiter="\t")),
            procedures=ProceduresTable(columns={"case_id": "encounter", "code": "ops", "date": "performed_on"},
                                       format=TableFormat(delimiter="\t")),
            registry=RegistryTable(
                columns={"case_id": "encounter", "tavi_date": "procedure_date", "age": "age_years",
                         "sex": "gender", "height_cm": "height", "weight_kg": "weight", "nyha": "nyha_class",
                         "lvef_percent": "ef", "diabetes": "dm", "access_route": "access",
                         "prosthesis_type": "device_type", "prosthesis_size_mm": "device_size",
                         "valve_in_valve": "viv"},
                value_maps={"sex": {"male": "M", "female": "F"},
                            "nyha": {"I": "1", "II": "2", "III": "3", "IV": "4"},
                            "diabetes": {"0": "none", "1": "diet", "2": "oral", "3": "insulin"},
                            "valve_in_valve": {"1": "true", "0": "false"}},
                format=TableFormat(delimiter="\t")),
            ecg=EcgSource(id_kind="pacs_id"),
            seg=SegmentationSource(labels=_SEG_STD, algorithm_type="AUTOMATIC",
                                   algorithm_name="TotalSegmentator-like", algorithm_version="2.1",
                                   link_pattern=r"^(?P<pacs_id>HZW\d+)\.labels\.nii\.gz$"),
            markups=MarkupsSource(link_pattern=r"^(?P<pacs_id>HZW\d+)\.mrk\.json$"),
            free_text=FreeTextSource(id_kind="pacs_id", id_label="Patient", date_label="Date",
                                     date_format="%Y-%m-%d"),
        ),
    ),
    SiteProfile(
        site_id="uni-ost", display_name="Universitätsmedizin Ost (synthetic)", ecg_format="scp-ecg",
        ct=CtProfile("TAVI-CT 1.5mm", "TOSHIBA", "Aquilion ONE", 100, "FC43", 1.5, 1.0, (48, 48, 40)),
        mix=SiteMix(intercept=-5.0, ecg_coverage=0.8, ct_coverage=0.75, segmentation_coverage=0.6,
                    landmark_coverage=0.5, registry_coverage=0.9, self_expanding_share=0.3,
                    first_tavi=date(2019, 9, 1)),
        pacs_prefix="UO", case_prefix="",
        config=_config(
            "uni-ost", "Universitätsmedizin Ost (synthetic)",
            idmap=IdentifierMapping(file="ids/zuordnung.csv", pacs_id_column="PatID",
                                    case_id_column="Aufnahmenummer",
                                    format=TableFormat(encoding="cp1252", delimiter=";")),
            procedures=ProceduresTable(
                columns={"case_id": "Aufnahmenummer", "code": "Prozedurenschlüssel", "date": "Datum"},
                format=TableFormat(encoding="cp1252", delimiter=";", decimal=",", date_format="%d.%m.%Y")),
            registry=RegistryTable(
                columns={"case_id": "Aufnahmenummer", "tavi_date": "Datum Eingriff", "age": "Alter (Jahre)",
                         "sex": "Geschlecht", "height_cm": "Größe", "weight_kg": "Gewicht",
                         "nyha": "NYHA", "lvef_percent": "LVEF", "diabetes": "Diabetes",
                         "access_route": "Zugang", "prosthesis_type": "Klappentyp",
                         "prosthesis_size_mm": "Klappengröße", "valve_in_valve": "ViV"},
                value_maps={"sex": {"1": "M", "2": "F"},
                            "diabetes": {"kein": "none", "Diät": "diet", "OAD": "oral", "Insulin": "insulin"},
                            "access_route": {"TF": "transfemoral", "TA": "transapical", "TAX": "transaxillary"},
                            "prosthesis_type": {"BE": "balloon-expandable", "SE": "self-expanding"},
                            "valve_in_valve": {"J": "true", "N": "false"}},
                format=TableFormat(encoding="cp1252", delimiter=";", decimal=",", date_format="%d.%m.%Y")),
            ecg=EcgSource(id_kind="case_id"),
            seg=SegmentationSource(labels=_SEG_STD, algorithm_type="SEMIAUTOMATIC",
                                   algorithm_name="3mensio", algorithm_version="10.3",
                                   link_pattern=r"^(?P<pacs_id>UO\d+)_segmentierung\.nii$"),
            markups=MarkupsSource(link_pattern=r"^(?P<pacs_id>UO\d+)_landmarks\.mrk\.json$"),
            free_text=FreeTextSource(id_kind="case_id", id_label="Aufnahmenummer", date_label="Befunddatum",
                                     date_format="%d.%m.%Y", encoding="cp1252"),
        ),
    ),
)


def profile_for_site(index: int) -> SiteProfile:
    """Profile of the ``index``-th site: the four base profiles, then variants with other case mixes."""
    base = PROFILES[index % len(PROFILES)]
    if index < len(PROFILES):
        return base
    round_ = index // len(PROFILES)
    site_id = f"{base.site_id}-{round_ + 1}"
    intercept = base.mix.intercept + (0.5 if round_ % 2 else -0.4)
    return replace(base, site_id=site_id, display_name=f"{base.display_name} #{round_ + 1}",
                   mix=replace(base.mix, intercept=intercept),
                   pacs_prefix=f"{base.pacs_prefix}{round_ + 1}",
                   config=base.config.model_copy(update={"site_id": site_id}))
