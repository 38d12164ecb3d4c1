"""Coded concepts used by the objects this project writes and reads: the one place for codes.

Standard codes (DCM, SCT, LN, MDC) are checked against pydicom's code tables where they exist there.
Concepts with no standard code live in the project-local block at the bottom, under the coding
scheme ``99FEDCOH``, which every SR that uses them declares in CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

# --- Coding schemes -------------------------------------------------------------------------------
LOCAL_SCHEME = "99FEDCOH"
LOCAL_SCHEME_NAME = "FedCohort project-local codes"
LOCAL_SCHEME_UID = "1.3.6.1.4.1.60000.1.1"  # private arc of the project's example root, see uids.py
# German procedure classification (OPS, BfArM). DICOM defines no designator for it, so a private one
# ("99" prefix, PS3.16 8.2) is declared in every SR that uses it; the catalogue year is the version.
OPS_SCHEME = "99OPS"
OPS_SCHEME_NAME = "OPS - Operationen- und Prozedurenschluessel"
OPS_SCHEME_ORGANIZATION = "BfArM"

# --- SR document titles and template containers ---------------------------------------------------
# TID 3700 root. DICOM's tables print LOINC 11524-0, which fails the LOINC check digit; the valid
# LOINC code for "EKG study" is 11524-6. We write 11524-6 and read both.
ECG_REPORT = Code("11524-6", "LN", "EKG study")
ECG_REPORT_LEGACY = Code("11524-0", "LN", "EKG study")
ECG_REPORT_TITLES = (ECG_REPORT, ECG_REPORT_LEGACY)
LANGUAGE_OF_CONTENT = Code("121049", "DCM", "Language of Content Item and Descendants")
PROCEDURE_REPORTED = Code("121058", "DCM", "Procedure reported")
TWELVE_LEAD_ECG = Code("268400002", "SCT", "12 lead ECG")
HISTORY = Code("11329-0", "LN", "History")
PROBLEM_LIST = Code("11450-4", "LN", "Problem list")
SOCIAL_HISTORY = Code("29762-2", "LN", "Social History")
PAST_SURGICAL_HISTORY = Code("10167-5", "LN", "Past surgical history")
MEDICAL_DEVICE_USE = Code("46264-8", "LN", "History of medical device use")
PATIENT_CHARACTERISTICS = Code("121118", "DCM", "Patient Characteristics")
SUBJECT_AGE = Code("121033", "DCM", "Subject Age")
SUBJECT_SEX = Code("121032", "DCM", "Subject Sex")
BODY_HEIGHT = Code("8302-2", "LN", "Body height")
BODY_WEIGHT = Code("29463-7", "LN", "Body weight")
CURRENT_PROCEDURE_DESCRIPTIONS = Code("55111-9", "LN", "Current Procedure Descriptions")
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
PROCEDURE_DATETIME = Code("122146", "DCM", "Procedure DateTime")
QUANTITATIVE_ANALYSIS = Code("122144", "DCM", "Quantitative Analysis")
QUALITATIVE_ANALYSIS = Code("122145", "DCM", "Qualitative Analysis")
ECG_GLOBAL_MEASUREMENTS = Code("122158", "DCM", "ECG Global Measurements")
ECG_LEAD_MEASUREMENTS = Code("122159", "DCM", "ECG Lead Measurements")
LEAD_ID = Code("122148", "DCM", "Lead ID")
ECG_FINDING = Code("271921002", "SCT", "Electrocardiogram finding")
SUMMARY = Code("55112-7", "LN", "Summary")
FINDING = Code("121071", "DCM", "Finding")

# --- ECG global measurements (TID 3713), units in UCUM ---------------------------------------------
PR_INTERVAL = Code("2:15872", "MDC", "PR interval global")
QRS_DURATION = Code("2:16156", "MDC", "QRS duration global")
QT_INTERVAL = Code("2:16160", "MDC", "QT interval global")
QTC_INTERVAL = Code("2:15876", "MDC", "QTc interval global")
RR_INTERVAL = Code("2:16168", "MDC", "RR interval global")
P_AXIS = Code("2:16128", "MDC", "P axis")
QRS_AXIS = Code("2:16132", "MDC", "QRS axis")
T_AXIS = Code("2:16136", "MDC", "T axis")
# LOINC "Heart rate" (in pydicom's tables, CIDs 12200ff.); no MDC heart-rate code was verified.
HEART_RATE = Code("8867-4", "LN", "Heart rate")

# --- Units (UCUM) ---------------------------------------------------------------------------------
MILLISECOND = Code("ms", "UCUM", "millisecond")
DEGREE = Code("deg", "UCUM", "degree")
PER_MINUTE = Code("/min", "UCUM", "per minute")
YEAR = Code("a", "UCUM", "year")
MICROVOLT = Code("uV", "UCUM", "microvolt")
CENTIMETER = Code("cm", "UCUM", "centimeter")
MILLIMETER = Code("mm", "UCUM", "millimeter")
KILOGRAM = Code("kg", "UCUM", "kilogram")
PERCENT = Code("%", "UCUM", "percent")
DAY = Code("d", "UCUM", "day")

# --- Observation context (TID 1001 / 1004) and language (TID 1204) --------------------------------
OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
DEVICE = Code("121007", "DCM", "Device")
DEVICE_OBSERVER_UID = Code("121012", "DCM", "Device Observer UID")
DEVICE_OBSERVER_NAME = Code("121013", "DCM", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = Code("121014", "DCM", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = Code("121015", "DCM", "Device Observer Model Name")
ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")

# --- ECG leads (CID 3001, MDC); older files use scheme SCPECG -----------------------------------
LEAD_CODES_MDC: dict[str, str] = {
    "I": "2:1", "II": "2:2", "V1": "2:3", "V2": "2:4", "V3": "2:5", "V4": "2:6", "V5": "2:7",
    "V6": "2:8", "III": "2:61", "aVR": "2:62", "aVL": "2:63", "aVF": "2:64",
}
LEAD_CODES_SCPECG: dict[str, str] = {
    "I": "5.6.3-9-1", "II": "5.6.3-9-2", "V1": "5.6.3-9-3", "V2": "5.6.3-9-4", "V3": "5.6.3-9-5",
    "V4": "5.6.3-9-6", "V5": "5.6.3-9-7", "V6": "5.6.3-9-8", "III": "5.6.3-9-61",
    "aVR": "5.6.3-9-62", "aVL": "5.6.3-9-63", "aVF": "5.6.3-9-64",
}
TWELVE_LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
# Code meanings of CID 3001 as pydicom 3.0.2 prints them.
LEAD_MEANINGS_MDC: dict[str, str] = {
    "I": "Lead I", "II": "Lead II", "III": "Lead III", "aVR": "aVR, augmented voltage, right",
    "aVL": "aVL, augmented voltage, left", "aVF": "aVF, augmented voltage, foot", "V1": "Lead V1",
    "V2": "Lead V2", "V3": "Lead V3", "V4": "Lead V4", "V5": "Lead V5", "V6": "Lead V6",
}

# --- Clinical findings and procedures --------------------------------------------------------------
LEFT_BUNDLE_BRANCH_BLOCK = Code("63467002", "SCT", "Left bundle branch block")
RIGHT_BUNDLE_BRANCH_BLOCK = Code("59118001", "SCT", "Right bundle branch block")
FIRST_DEGREE_AV_BLOCK = Code("270492004", "SCT", "First degree atrioventricular block")
ATRIAL_FIBRILLATION = Code("49436004", "SCT", "Atrial fibrillation")
SINUS_RHYTHM = Code("64730000", "SCT", "Normal sinus rhythm")
PACEMAKER_IMPLANTATION = Code("307280005", "SCT", "Implantation of cardiac pacemaker")
PACEMAKER_IN_SITU = Code("441509002", "SCT", "Cardiac pacemaker in situ")
CARDIAC_PACEMAKER = Code("14106009", "SCT", "Cardiac pacemaker")
HEART_VALVE_PROSTHESIS_IMPLANTATION = Code("47432005", "SCT", "Implantation of heart valve prosthesis")
DIABETES_MELLITUS = Code("73211009", "SCT", "Diabetes mellitus")
HISTORY_OF_DIABETES = Code("161445009", "SCT", "History of diabetes mellitus")
TOBACCO_SMOKING_BEHAVIOR = Code("365981007", "SCT", "Tobacco smoking behavior")
CURRENT_SMOKER = Code("77176002", "SCT", "Current smoker")
FORMER_SMOKER = Code("8517006", "SCT", "Former smoker")
NEVER_SMOKED = Code("266919005", "SCT", "Never smoked tobacco")
YES = Code("373066001", "SCT", "Yes")  # CID 230
NO = Code("373067005", "SCT", "No")
MALE = Code("M", "DCM", "Male")
FEMALE = Code("F", "DCM", "Female")
NYHA_CLASSES = {
    1: Code("420300004", "SCT", "New York Heart Association Classification - Class I"),
    2: Code("421704003", "SCT", "New York Heart Association Classification - Class II"),
    3: Code("420913000", "SCT", "New York Heart Association Classification - Class III"),
    4: Code("422293003", "SCT", "New York Heart Association Classification - Class IV"),
}

# --- Anatomy and imaging findings ------------------------------------------------------------------
AORTIC_VALVE = Code("34202007", "SCT", "Aortic valve")
AORTIC_ROOT = Code("8128003", "SCT", "Aortic root")
HEART_VALVE_PROSTHESIS = Code("25510005", "SCT", "Heart valve prosthesis")
INTERVENTRICULAR_SEPTUM = Code("589001", "SCT", "Interventricular septum")
LEFT_VENTRICLE = Code("87878005", "SCT", "Left ventricle")
RIGHT_VENTRICLE = Code("53085002", "SCT", "Right ventricle")
HEART = Code("80891009", "SCT", "Heart")
LEFT_MAIN_CORONARY_OSTIUM = Code("1256091001", "SCT", "Ostium of left main coronary artery")
CALCIFIED = Code("237897009", "SCT", "Calcified")
CALCIUM_VOLUME = Code("122660", "DCM", "Calcium volume")
AGATSTON_SCORE = Code("112055", "DCM", "Agatston score")
LENGTH = Code("410668003", "SCT", "Length")
CUBIC_MILLIMETER = Code("mm3", "UCUM", "cubic millimeter")
TISSUE = Code("85756007", "SCT", "Tissue")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
IMAGE_REGION = Code("111030", "DCM", "Image Region")
# Landmark sites (CID 12291 sinuses of Valsalva) and the RCA ostium under its table meaning.
NON_CORONARY_SINUS = Code("24865005", "SCT", "Non-coronary Sinus")
LEFT_SINUS_OF_VALSALVA = Code("36371001", "SCT", "Left Sinus of Valsalva")
RIGHT_SINUS_OF_VALSALVA = Code("89093001", "SCT", "Right Sinus of Valsalva")
RIGHT_CORONARY_ARTERY_OSTIUM = Code("56789007", "SCT", "Right Coronary Artery Ostium")
CT_UNSPECIFIED_BODY_REGION = Code("25045-6", "LN", "CT unspecified body region")  # CID 100

# --- Segmentation algorithm families (CID 7162), for SEG AlgorithmIdentificationSequence --------
ALGORITHM_FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")
ALGORITHM_FAMILY_MANUAL = Code("123109", "DCM", "Manual Processing")

# --- Model predictions (fl_client.predict, cohort/dicom/prediction_sr.py) ----------------------------
PROBABILITY = Code("122157", "DCM", "Probability")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")  # TID 4019 Algorithm Identification
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
NO_UNITS = Code("1", "UCUM", "no units")

# --- Project-local codes (scheme 99FEDCOH): concepts with no standard code found ------------------
MODEL_PREDICTION_REPORT = Code("MP001", LOCAL_SCHEME, "Model prediction report")
MODEL_IDENTIFICATION = Code("MP002", LOCAL_SCHEME, "Model identification")
MODEL_DIGEST = Code("MP003", LOCAL_SCHEME, "Model weights SHA-256 digest")
TRAINING_RUN = Code("MP004", LOCAL_SCHEME, "Federated training run")
TRAINING_COHORT_HASH = Code("MP005", LOCAL_SCHEME, "Training cohort hash")
MODEL_PREDICTION = Code("MP006", LOCAL_SCHEME, "Model prediction")
PREDICTED_LABEL = Code("MP007", LOCAL_SCHEME, "Predicted label")
IN_TRAINING_DATA = Code("MP008", LOCAL_SCHEME, "Patient in the model's training data")
INDEX_EVENT_SOURCE = Code("MP009", LOCAL_SCHEME, "Index event source")
MEMBRANOUS_SEPTUM = Code("MS001", LOCAL_SCHEME, "Membranous interventricular septum")
HINGE_POINT = Code("HP001", LOCAL_SCHEME, "Aortic valve hinge point")
BALLOON_EXPANDABLE_PROSTHESIS = Code("PT001", LOCAL_SCHEME, "Balloon-expandable transcatheter valve")
SELF_EXPANDING_PROSTHESIS = Code("PT002", LOCAL_SCHEME, "Self-expanding transcatheter valve")
PROSTHESIS_TYPE = Code("PT000", LOCAL_SCHEME, "Transcatheter valve prosthesis type")
PROSTHESIS_SIZE = Code("PS000", LOCAL_SCHEME, "Transcatheter valve prosthesis size")
TAVI_PROCEDURE = Code("TAVI01", LOCAL_SCHEME, "Transcatheter aortic valve implantation")
PACEMAKER_AFTER_TAVI = Code("PM001", LOCAL_SCHEME, "Permanent pacemaker implanted after TAVI")
DAYS_TAVI_TO_PACEMAKER = Code("PM002", LOCAL_SCHEME, "Days from TAVI to pacemaker implantation")
REGISTRY_REPORT = Code("REG001", LOCAL_SCHEME, "TAVI registry record")
PROCEDURE_HISTORY_REPORT = Code("PRC001", LOCAL_SCHEME, "Coded procedure history")
FREE_TEXT_REPORT = Code("TXT001", LOCAL_SCHEME, "Free-text clinical report")
# Registry (IQTIG-like) and procedure-history items without a verified standard code.
TAVI_DATE = Code("TAVI02", LOCAL_SCHEME, "Date of TAVI")
PROCEDURE_DATE = Code("PRD001", LOCAL_SCHEME, "Procedure date")
LVEF = Code("EF001", LOCAL_SCHEME, "Left ventricular ejection fraction")
NYHA_CLASS = Code("NY000", LOCAL_SCHEME, "NYHA functional class")
ACCESS_ROUTE = Code("AR000", LOCAL_SCHEME, "TAVI access route")
TRANSFEMORAL_ACCESS = Code("AR001", LOCAL_SCHEME, "Transfemoral access")
TRANSAPICAL_ACCESS = Code("AR002", LOCAL_SCHEME, "Transapical access")
TRANSAXILLARY_ACCESS = Code("AR003", LOCAL_SCHEME, "Transaxillary access")
VALVE_IN_VALVE = Code("VIV001", LOCAL_SCHEME, "Valve-in-valve procedure")
DIABETES_TREATMENT = Code("DM000", LOCAL_SCHEME, "Diabetes treatment")
DIABETES_DIET = Code("DM001", LOCAL_SCHEME, "Diabetes treated by diet")
DIABETES_ORAL = Code("DM002", LOCAL_SCHEME, "Diabetes treated with oral medication")
DIABETES_INSULIN = Code("DM003", LOCAL_SCHEME, "Diabetes treated with insulin")
