"""A resting ECG as an HL7 aECG (Annotated ECG, HL7 v3) XML document.

``AnnotatedECG`` > component > series > component > sequenceSet holds a ``GLIST_TS`` time sequence
and one ``SLIST_PQ`` sequence per lead (origin, scale, digits); the device's global measurements and
interpretation statements are annotations of the series (MDC codes).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from cohort.synth.model import SyntheticPatient
from cohort.synth.profiles import SiteProfile
from cohort.synth.writers.ecg import EcgExport, prepare_export, quantize

HL7_NS = "urn:hl7-org:v3"
MDC_OID = "2.16.840.1.113883.6.24"
ACT_CODE_OID = "2.16.840.1.113883.5.4"
SCALE_UV = 5.0  # microvolts per digit, a common aECG scale
AECG_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# Canonical measurement key -> (MDC reference id, unit as aECG writers spell it)
ANNOTATIONS: dict[str, tuple[str, str]] = {
    "heart_rate": ("MDC_ECG_HEART_RATE", "bpm"),
    "rr_ms": ("MDC_ECG_TIME_PD_RR", "ms"),
    "pr_ms": ("MDC_ECG_TIME_PD_PR", "ms"),
    "qrs_ms": ("MDC_ECG_TIME_PD_QRS", "ms"),
    "qt_ms": ("MDC_ECG_TIME_PD_QT", "ms"),
    "qtc_ms": ("MDC_ECG_TIME_PD_QTc", "ms"),
    "p_axis_deg": ("MDC_ECG_ANGLE_P_FRONT", "deg"),
    "qrs_axis_deg": ("MDC_ECG_ANGLE_QRS_FRONT", "deg"),
    "t_axis_deg": ("MDC_ECG_ANGLE_T_FRONT", "deg"),
}


def _uuid(*parts: object) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:16]))


def _mdc(code: str) -> str:
    return f'<code code="{code}" codeSystem="{MDC_OID}" codeSystemName="MDC"/>'


def render_aecg(export: EcgExport, site_id: str) -> bytes:
    """The aECG document for one ECG (UTF-8 bytes)."""
    t0 = export.acquired.strftime("%Y%m%d%H%M%S")
    n = len(export.leads["I"])
    end = (export.acquired + timedelta(seconds=n / export.fs)).strftime("%Y%m%d%H%M%S")
    name = (f"<name><family>{escape(export.family_name)}</family>"
            f"<given>{escape(export.given_name)}</given></name>")
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<AnnotatedECG xmlns="{HL7_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="urn:hl7-org:v3 ../schema/PORT_MT020001.xsd" type="Observation">',
        f'  <id root="{_uuid(site_id, export.patient_id, t0, "aecg")}"/>',
        '  <code code="93000" codeSystem="2.16.840.1.113883.6.12" codeSystemName="CPT-4"/>',
        f'  <effectiveTime><low value="{t0}"/><high value="{end}"/></effectiveTime>',
        "  <componentOf><timepointEvent><code code=\"VISIT\" codeSystem=\"\"/><componentOf><subjectAssignment>",
        "    <subject><trialSubject>",
        f"      <id root=\"{_uuid(site_id, 'patients')}\" extension={quoteattr(export.patient_id)}/>",
        f"      <subjectDemographicPerson>{name}",
        f'        <administrativeGenderCode code="{export.sex}" codeSystem="2.16.840.1.113883.5.1"/>',
        f'        <birthTime value="{export.birth_date:%Y%m%d}"/>',
        "      </subjectDemographicPerson>",
        "    </trialSubject></subject>",
        f"    <componentOf><clinicalTrial><id root=\"{_uuid(site_id, 'routine')}\"/></clinicalTrial></componentOf>",
        "  </subjectAssignment></componentOf></timepointEvent></componentOf>",
        "  <component><series>",
        f'    <id root="{_uuid(site_id, export.patient_id, t0, "series")}"/>',
        f'    <code code="RHYTHM" codeSystem="{ACT_CODE_OID}"/>',
        f'    <effectiveTime><low value="{t0}"/><high value="{end}"/></effectiveTime>',
        "    <author><seriesAuthor><manufacturedSeriesDevice>"
        "<manufacturerModelName>ELI 380</manufacturerModelName></manufacturedSeriesDevice>"
        "<manufacturerOrganization><name>Mortara Instrument</name></manufacturerOrganization>"
        "</seriesAuthor></author>",
        "    <component><sequenceSet>",
        f'      <component><sequence><code code="TIME_ABSOLUTE" codeSystem="{ACT_CODE_OID}"/>'
        f'<value xsi:type="GLIST_TS"><head value="{t0}.000"/>'
        f'<increment value="{1.0 / export.fs:g}" unit="s"/></value></sequence></component>',
    ]
    for lead in AECG_LEADS:
        digits = " ".join(str(int(v)) for v in quantize(export.leads[lead], SCALE_UV))
        lines.append(
            f"      <component><sequence>{_mdc('MDC_ECG_LEAD_' + lead)}"
            f'<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="{SCALE_UV:g}" unit="uV"/>'
            f"<digits>{digits}</digits></value></sequence></component>")
    lines += ["    </sequenceSet></component>", "    <subjectOf><annotationSet>",
              f'      <activityTime value="{t0}"/>']
    for key, (code, unit) in ANNOTATIONS.items():
        if key in export.measurements:
            lines.append(f"      <component><annotation>{_mdc(code)}"
                         f'<value xsi:type="PQ" value="{export.measurements[key]:g}" unit="{unit}"/>'
                         "</annotation></component>")
    lines.append(f"      <component><annotation>{_mdc('MDC_ECG_INTERPRETATION')}")
    for text in export.statements:
        lines.append(f"        <component><annotation>{_mdc('MDC_ECG_INTERPRETATION_STATEMENT')}"
                     f'<value xsi:type="ST">{escape(text)}</value></annotation></component>')
    lines += ["      </annotation></component>", "    </annotationSet></subjectOf>",
              "  </series></component>", "</AnnotatedECG>", ""]
    return "\n".join(lines).encode("utf-8")


def write_aecg(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write ``raw_dir/ecg/aecg/<uuid>.xml`` (the ECG management system names files by document id)."""
    export = prepare_export(patient, profile, language="en")
    doc_id = _uuid(profile.site_id, export.patient_id, export.acquired.strftime("%Y%m%d%H%M%S"), "aecg")
    out = Path(raw_dir) / "ecg" / "aecg" / f"{doc_id}.xml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_aecg(export, profile.site_id))
    return [out]
