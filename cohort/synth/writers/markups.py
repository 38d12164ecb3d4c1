"""Landmark point sets as 3D Slicer markups JSON (schema v1.0.3), one file per patient with landmarks.

Each site labels its points in its own style and some sites save in Slicer's RAS convention
instead of DICOM's LPS, as real exports do. Positions come from ``anatomy.anatomy`` so that the
points lie inside the CT volume the CT writer produces for the same patient.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cohort.synth import anatomy
from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import PROFILES, SiteProfile

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
# Landmark keys in the order the points are written; the converter maps labels back to these.
LANDMARK_KEYS = ("hinge_ncc", "hinge_lcc", "hinge_rcc", "ostium_lm", "ostium_rca")


@dataclass(frozen=True)
class MarkupsStyle:
    """How one site names its points and files: coordinate system, labels, file name template."""

    coordinate_system: str  # "LPS" or "RAS"
    labels: dict[str, str]  # landmark key -> control point label
    file_name: str  # format string with {pacs_id}; must match the site's markups.link_pattern


_STYLES: dict[str, MarkupsStyle] = {
    "uk-nord": MarkupsStyle("LPS", {
        "hinge_ncc": "NCC hinge point", "hinge_lcc": "LCC hinge point", "hinge_rcc": "RCC hinge point",
        "ostium_lm": "LM ostium", "ostium_rca": "RCA ostium"}, "{pacs_id}_landmarks.mrk.json"),
    "klinikum-sued": MarkupsStyle("RAS", {
        "hinge_ncc": "Scharnierpunkt akoronar", "hinge_lcc": "Scharnierpunkt links",
        "hinge_rcc": "Scharnierpunkt rechts", "ostium_lm": "Koronarostium links",
        "ostium_rca": "Koronarostium rechts"}, "{pacs_id}-punkte.mrk.json"),
    "herzzentrum-west": MarkupsStyle("RAS", {
        "hinge_ncc": "HP-NCC", "hinge_lcc": "HP-LCC", "hinge_rcc": "HP-RCC", "ostium_lm": "LCA",
        "ostium_rca": "RCA"}, "{pacs_id}.mrk.json"),
    "uni-ost": MarkupsStyle("LPS", {
        "hinge_ncc": "Hinge NC", "hinge_lcc": "Hinge LC", "hinge_rcc": "Hinge RC", "ostium_lm": "Ostium LCA",
        "ostium_rca": "Ostium RCA"}, "{pacs_id}_landmarks.mrk.json"),
}


def _base_site_id(profile: SiteProfile) -> str:
    """The base profile a site was derived from (sites beyond the fourth repeat the base styles)."""
    for base in PROFILES:
        if profile.site_id == base.site_id or profile.site_id.startswith(base.site_id + "-"):
            return base.site_id
    return profile.site_id


def markups_style(profile: SiteProfile) -> MarkupsStyle:
    """The site's markups style; unknown sites get the first style (LPS, English labels)."""
    return _STYLES.get(_base_site_id(profile), _STYLES["uk-nord"])


def landmark_positions(patient: SyntheticPatient, profile: SiteProfile) -> dict[str, anatomy.Point]:
    """LPS positions (mm) of the five landmarks, keyed as in LANDMARK_KEYS."""
    anat = anatomy.anatomy(patient, anatomy.ct_geometry(profile.ct, patient))
    ncc, rcc, lcc = anat.hinge_points  # at 90, 210, 330 degrees: posterior, right-anterior, left-anterior
    return {"hinge_ncc": ncc, "hinge_lcc": lcc, "hinge_rcc": rcc, "ostium_lm": anat.left_ostium,
            "ostium_rca": anat.right_ostium}


def markups_document(patient: SyntheticPatient, profile: SiteProfile) -> dict:
    """The markups JSON document (a dict) for one patient, in the site's style."""
    style = markups_style(profile)
    positions = landmark_positions(patient, profile)
    points = []
    for number, key in enumerate(LANDMARK_KEYS, start=1):
        x, y, z = positions[key]
        if style.coordinate_system == "RAS":
            x, y = -x, -y  # RAS and LPS differ in the sign of the first two axes
        points.append({
            "id": str(number), "label": style.labels[key], "description": "", "associatedNodeID": "",
            "position": [round(x, 4), round(y, 4), round(z, 4)],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
        })
    markup = {
        "type": "Fiducial", "coordinateSystem": style.coordinate_system, "coordinateUnits": "mm",
        "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points), "controlPoints": points, "measurements": [],
        "display": {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0],
                    "selectedColor": [1.0, 0.5, 0.5], "propertiesLabelVisibility": True,
                    "pointLabelsVisibility": True, "textScale": 3.0, "glyphType": "Sphere3D",
                    "glyphScale": 1.0, "glyphSize": 5.0, "useGlyphScale": True},
    }
    return {"@schema": MARKUPS_SCHEMA, "markups": [markup]}


def write_markups(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the patient's landmark file under ``raw_dir/landmarks/``; [] when the CT has no landmarks."""
    if patient.ct is None or not patient.ct.has_landmarks or profile.config.markups is None:
        return []
    style = markups_style(profile)
    name = style.file_name.format(pacs_id=patient.pacs_id)
    if not re.match(profile.config.markups.link_pattern, name):
        raise ValueError(f"markups file name {name!r} does not match the site's link_pattern "
                         f"{profile.config.markups.link_pattern!r}; align markups_style with the profile")
    out = Path(raw_dir) / "landmarks" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    # Slicer writes 4-space indented JSON; sorted output is not needed, the dict order is fixed.
    out.write_text(json.dumps(markups_document(patient, profile), indent=4) + "\n", encoding="utf-8")
    return [out]
