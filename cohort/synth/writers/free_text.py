"""Free-text clinical reports (TAVI discharge letters) as plain text files in the site's encoding.

A letter starts with two header lines, ``<id_label>: <id>`` and ``<date_label>: <date>``, then an
empty line and the body. German sites write German letters in Windows-1252 with CRLF line ends;
the others write English in UTF-8. The body states facts that other exports also carry (rhythm,
prosthesis type and size, access route), so text search can be checked against structured data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from cohort.synth.model import (
    CONDUCTION_LBBB,
    CONDUCTION_RBBB,
    PROSTHESIS_SELF,
    SyntheticPatient,
)
from cohort.synth.profiles import PROFILES, SiteProfile

__all__ = ["write_free_text", "letter_text", "letter_date", "LetterStyle", "letter_style"]


@dataclass(frozen=True)
class LetterStyle:
    """Language, line ends and file name of one site's letters."""

    language: str  # "de" | "en"
    newline: str
    file_name: str  # format string with {id}


_STYLES = {
    "uk-nord": LetterStyle("en", "\n", "{id}_discharge.txt"),
    "klinikum-sued": LetterStyle("de", "\r\n", "Entlassbrief_{id}.txt"),
    "herzzentrum-west": LetterStyle("en", "\n", "{id}.discharge.txt"),
    "uni-ost": LetterStyle("de", "\r\n", "{id}_arztbrief.txt"),
}


def letter_style(profile: SiteProfile) -> LetterStyle:
    """The site's letter style; sites beyond the fourth repeat their base profile's style."""
    for base in PROFILES:
        if profile.site_id == base.site_id or profile.site_id.startswith(base.site_id + "-"):
            return _STYLES[base.site_id]
    return _STYLES["uk-nord"]


def _stay_days(patient: SyntheticPatient) -> int:
    stay = 3 + patient.index % 5
    if patient.pacemaker_after_days is not None and patient.pacemaker_after_days <= 7:
        stay = max(stay, patient.pacemaker_after_days + 2)  # pacemaker in the same stay: later discharge
    return stay


def letter_date(patient: SyntheticPatient) -> date:
    """Discharge date: the letter's date."""
    return patient.tavi_date + timedelta(days=_stay_days(patient))


_DE_ACCESS = {"transfemoral": "transfemoralen", "transapical": "transapikalen", "transaxillary": "transaxillären"}
_DE_PROSTHESIS = {PROSTHESIS_SELF: "selbstexpandierende"}
_NYHA_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV"}


def _body_de(p: SyntheticPatient, fmt: str) -> list[str]:
    lines = ["Entlassungsbrief Kardiologie", "",
             f"Diagnose: Hochgradige Aortenklappenstenose, NYHA-Klasse {_NYHA_ROMAN[p.nyha]}.",
             f"Eingriff am {p.tavi_date.strftime(fmt)}: Transkatheter-Aortenklappenimplantation (TAVI) über "
             f"{_DE_ACCESS[p.access_route]} Zugang.",
             f"Implantiert wurde eine {_DE_PROSTHESIS.get(p.prosthesis_type, 'ballonexpandierende')} "
             f"Klappenprothese, Größe {p.prosthesis_size_mm} mm."
             + (" Valve-in-Valve-Prozedur bei degenerierter Bioprothese." if p.valve_in_valve else "")]
    if p.ecg is not None:
        rhythm = "Sinusrhythmus" if p.ecg.rhythm == "sinus" else "Vorhofflimmern"
        lines.append(f"Rhythmus vor dem Eingriff: {rhythm}, QRS-Breite {p.ecg.qrs_ms} ms.")
        if p.ecg.conduction == CONDUCTION_LBBB:
            lines.append("Vorbestehender Linksschenkelblock.")
        elif p.ecg.conduction == CONDUCTION_RBBB:
            lines.append("Vorbestehender Rechtsschenkelblock.")
    if p.prior_pacemaker:
        lines.append("Herzschrittmacher vorbestehend.")
    elif p.pacemaker_after_days is not None and p.pacemaker_after_days <= 7:
        day = p.tavi_date + timedelta(days=p.pacemaker_after_days)
        lines.append(f"Bei AV-Block III° erfolgte am {day.strftime(fmt)} die Implantation eines permanenten "
                     "Herzschrittmachers (DDD).")
    lines += ["Verlauf ansonsten komplikationslos, Entlassung in gutem Allgemeinzustand.",
              "Empfehlung: Kontrolle in unserer Ambulanz in 3 Monaten; Endokarditisprophylaxe beachten.",
              "", "Mit freundlichen Grüßen", "Dr. med. B. Jäger, Oberärztin Kardiologie"]
    return lines


def _body_en(p: SyntheticPatient, fmt: str) -> list[str]:
    prosthesis = "self-expanding" if p.prosthesis_type == PROSTHESIS_SELF else "balloon-expandable"
    lines = ["Discharge summary - Cardiology", "",
             f"Diagnosis: severe aortic stenosis, NYHA class {_NYHA_ROMAN[p.nyha]}.",
             f"Procedure on {p.tavi_date.strftime(fmt)}: transcatheter aortic valve implantation (TAVI), "
             f"{p.access_route} access.",
             f"Implanted prosthesis: {prosthesis} valve, size {p.prosthesis_size_mm} mm."
             + (" Valve-in-valve procedure for a degenerated bioprosthesis." if p.valve_in_valve else "")]
    if p.ecg is not None:
        rhythm = "sinus rhythm" if p.ecg.rhythm == "sinus" else "atrial fibrillation"
        lines.append(f"Rhythm before the procedure: {rhythm}, QRS duration {p.ecg.qrs_ms} ms.")
        if p.ecg.conduction == CONDUCTION_LBBB:
            lines.append("Pre-existing left bundle branch block.")
        elif p.ecg.conduction == CONDUCTION_RBBB:
            lines.append("Pre-existing right bundle branch block.")
    if p.prior_pacemaker:
        lines.append("Pacemaker in situ before the procedure.")
    elif p.pacemaker_after_days is not None and p.pacemaker_after_days <= 7:
        day = p.tavi_date + timedelta(days=p.pacemaker_after_days)
        lines.append(f"Complete heart block; a permanent dual-chamber pacemaker was implanted on "
                     f"{day.strftime(fmt)}.")
    lines += ["Otherwise uneventful course; discharged home in good condition.",
              "Follow-up in our outpatient clinic in 3 months.", "",
              "Kind regards", "Dr. J. Müller, Consultant Cardiologist"]
    return lines


def letter_text(patient: SyntheticPatient, profile: SiteProfile) -> str:
    """The letter as text with "\\n" line ends (header, empty line, body)."""
    cfg = profile.config.free_text
    ident = patient.case_id if cfg.id_kind == "case_id" else patient.pacs_id
    body = (_body_de if letter_style(profile).language == "de" else _body_en)(patient, cfg.date_format)
    header = [f"{cfg.id_label}: {ident}", f"{cfg.date_label}: {letter_date(patient).strftime(cfg.date_format)}"]
    return "\n".join([*header, "", *body]) + "\n"


def write_free_text(patient: SyntheticPatient, profile: SiteProfile, raw_dir: Path) -> list[Path]:
    """Write the patient's discharge letter under ``raw_dir/text/``; [] if the site exported none."""
    if not patient.has_free_text:
        return []
    cfg = profile.config.free_text
    style = letter_style(profile)
    ident = patient.case_id if cfg.id_kind == "case_id" else patient.pacs_id
    out = Path(raw_dir) / "text" / style.file_name.format(id=ident)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(letter_text(patient, profile).replace("\n", style.newline).encode(cfg.encoding))
    return [out]
