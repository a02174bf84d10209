"""FHIR R4 ↔ raw records (see ingestion.sources): Bundles, and FHIR Bulk Data NDJSON (`$export`:
one file per resource type, one resource a line).

patients ← Patient, encounters ← Encounter, diagnoses ← Condition, lab_results ← Observation
(category laboratory), medications ← MedicationRequest, imaging_studies and imaging_series ←
ImagingStudy and its `series`, ecg_reports ← Observation (a resting ECG: code LOINC 11524-6 EKG
study or 34534-8 12 lead EKG panel, any category but laboratory), pathology_reports ←
DiagnosticReport (of pathology: category v2-0074 SP, CP or PAT, or a LOINC pathology report
code, PATHOLOGY_CODES) and its Specimen. Teleconsultations have no FHIR form here. Other
resources (Organization, Practitioner, Specimen, Location, other Observations and
DiagnosticReports, …) are only counted, by type, in `skipped` — Organizations, Practitioners,
Specimens, ImagingStudies and Medications are read as reference targets.

Where each column lives (h = hospital_id; "Patient" = the entry's subject Patient; timestamps
are FHIR dateTimes at +08:00 when we write them, read back from any zone as local time):

    patients         hospital_id  managingOrganization (see Hospitals below)
                     patient_mrn  identifier: system `urn:medshare:mrn:<h>`, else a system the
                                  hospital's profile declares (FhirSystems.mrn_systems), else
                                  type MR (v2-0203)
                     resident_id  identifier: RESIDENT_ID_SYSTEM, else a declared system
                                  (resident_id_systems), else type NNCHN (national person id, China)
                     name, phone  the official (else first) name: text, else family + given;
                                  the first telecom[system=phone] with a value
                     sex          gender (M↔male, F↔female)
                     birth_date   birthDate
                     address      address[0].text (else its lines); county_code: extension
                                  COUNTY_CODE_URL on it
                     registered_at extension REGISTERED_AT_URL, else meta.lastUpdated
    encounters       hospital_id  serviceProvider, else the Patient's
                     encounter_id identifier `urn:medshare:encounter:<h>`, else type VN, else the
                                  first identifier, else the logical id
                     patient_mrn, resident_id  from the Patient
                     encounter_type  class (v3 ActCode AMB/IMP/EMER/VR)
                     department   serviceType.text, else its code
                     admit_time, discharge_time  period.start, period.end
                     referred_from_hospital_id  hospitalization.origin (an Organization's
                                  hospital or id; anything else as its reference text)
    diagnoses        hospital_id  the Encounter's, else the Patient's
                     resident_id  from the Patient
                     encounter_id `encounter.identifier.value`, else the Encounter's (as above)
                     icd10_code   code.coding[system=ICD-10]
                     diagnosis_seq, diagnosis_type  extensions DIAGNOSIS_SEQ_URL, DIAGNOSIS_TYPE_URL,
                                  else the Encounter's `diagnosis.rank` (rank 1: primary)
                     diagnosed_at recordedDate
    lab_results      lab_result_id identifier `urn:medshare:lab-result:<h>`, else type FILL or
                     PLAC, else the first, else the logical id; hospital_id performer, else as
                     diagnoses; loinc_code code.coding[system=LOINC]; value_num/unit
                     valueQuantity.value/unit; value_text valueString (extension VALUE_TEXT_URL
                     beside a valueQuantity); reference_low/high referenceRange[0].low/high.value;
                     abnormal_flag interpretation (v3 ObservationInterpretation); collected_at
                     effectiveDateTime (else effectivePeriod.start, effectiveInstant)
    medications      medication_id as lab_result_id (`urn:medshare:medication:<h>`);
                     hospital_id performer, else as diagnoses; atc_code
                     medicationCodeableConcept (or the referenced Medication's code)
                     .coding[system=ATC], drug_name its text (else a coding's display);
                     dosageInstruction[0]: doseAndRate[0].doseQuantity value/unit = dose/dose_unit,
                     route.coding[ROUTE_SYSTEM], timing.code.text = frequency,
                     timing.repeat.boundsPeriod start/end = start_date/end_date (start: else
                     authoredOn)
    imaging_studies  study_instance_uid identifier `urn:dicom:uid` (`urn:oid:<uid>`);
                     accession_number identifier `urn:medshare:accession:<h>`, else type ACSN;
                     hospital_id as diagnoses; patient_mrn from the Patient; modality
                     modality[system=DCM]; body_part extension BODY_PART_URL; study_date
                     started; study_description description; referring_physician
                     referrer.display; number_of_series numberOfSeries
    imaging_series   series[]: uid, modality, bodySite, description, numberOfInstances, started,
                     sop_class_uid extension SOP_CLASS_URL (else instance[0].sopClass);
                     study_instance_uid and hospital / resident from the enclosing ImagingStudy
    ecg_reports      ecg_id       identifier `urn:medshare:ecg:<h>`, else type FILL or ACSN, else the
                                  first (not a DICOM UID), else the logical id; hospital_id (where
                                  it was recorded) as diagnoses; patient_mrn, resident_id from the
                                  Patient; encounter_id as diagnoses
                     teleconsult_id  basedOn: the ServiceRequest whose identifier (on the reference
                                  or the request) is in `urn:medshare:teleconsult:<h>` — other
                                  requests are orders, not teleconsultations; we write a logical
                                  reference, the teleconsultation having no FHIR form here
                     reading_hospital_id, reading_physician  performer: an Organization (our
                                  hospital identifier, else its id, as hospitalization.origin); a
                                  Practitioner or PractitionerRole (its display, else the
                                  Practitioner's name), else a display of no type; we write the
                                  physician as `{type: Practitioner, display}`
                     study_instance_uid  derivedFrom ImagingStudy (the DICOM waveform, a study of
                                  modality ECG): its `urn:dicom:uid` identifier, on the reference
                                  (ours: logical) or on the study; else an identifier of the
                                  Observation in that system
                     recorded_at, reported_at  effectiveDateTime (else effectivePeriod.start,
                                  effectiveInstant), issued
                     lead_count   extension LEAD_COUNT_URL, else 12 for code 34534-8
                     heart_rate_bpm, pr_interval_ms, qrs_duration_ms, qt_interval_ms,
                     qtc_interval_ms  the `component` coded LOINC 8867-4, 8625-6, 8633-2, 8634-0,
                                  8636-5: valueQuantity (UCUM `/min`, `ms`; seconds are turned into
                                  milliseconds, an unknown unit is a reason), valueInteger
                     rhythm       component LOINC 76281-5 (Type of arrhythmia on EKG):
                                  valueCodeableConcept coded in RHYTHM_SYSTEM, else a SNOMED CT
                                  rhythm (RHYTHM_SNOMED, which we add as a translation), else any
                                  other code or text as written
                     findings     valueCodeableConcept.text (else a display), else valueString,
                                  else component 8601-7 (EKG impression), else note[0]
                     conclusion_code  the ICD-10 coding of valueCodeableConcept (else of the EKG
                                  impression); other codes there (SNOMED CT findings) are not one
                     report_status status; corrected → amended; unknown (what we write for no
                                  status: FHIR requires one) → none
    pathology_reports pathology_id identifier `urn:medshare:pathology:<h>`, else type FILL or ACSN
                     (a pathology number is an accession), else the first, else the logical id;
                     hospital_id, encounter_id, patient_mrn, resident_id, teleconsult_id as
                     ecg_reports
                     reading_hospital_id  performer Organization (the diagnostic service), else a
                                  resultsInterpreter one
                     pathologist  resultsInterpreter Practitioner (as reading_physician), else a
                                  performer one
                     specimen_type, specimen_site, collected_at  the first `specimen`, contained
                                  (as we write it: the export has no specimen id) or in the bundle
                                  — one elsewhere is a reason: type coded in SPECIMEN_TYPE_SYSTEM,
                                  else SNOMED CT (SPECIMEN_SNOMED), else as written;
                                  collection.bodySite text (else a display, a code);
                                  collection.collectedDateTime (else collectedPeriod.start, else
                                  the report's effective[x], which we write too)
                     reported_at  issued
                     diagnosis_code  conclusionCode's ICD-10 coding, else its first other code
                                  (not ICD-O) as written
                     diagnosis_text  conclusion, else a conclusionCode's text
                     behaviour    extension BEHAVIOUR_URL, else the behaviour digit of an ICD-O-3
                                  morphology code in conclusionCode (8140/3: malignant)
                     report_status status; corrected, appended → amended; partial →
                                  preliminary; unknown → none

Hospitals: an Organization reference names a hospital by our HOSPITAL_SYSTEM identifier (on the
reference or on the Organization), or by the Organization's id — but when the caller gives the
`hospital_id` of the landing folder, an id counts only if it is that one (a hospital system's
`Organization/1` names nothing of ours). A resource that names no hospital gets `hospital_id`;
without it, the entry cannot be mapped.

References resolve within a bundle by fullUrl (`urn:uuid:`, absolute) and by `Type/id`
(relative, absolute, versioned `…/_history/n`), and to contained resources (`#id`). A Patient or
Encounter that is elsewhere (an earlier file, every NDJSON reference) leaves its logical id in
`_link_patient` / `_link_encounter`, the columns it would give None, for a later step to match
against the `_fhir_id` of records read before; a logical reference (Reference.identifier) gives a
resident ID directly, an MRN as `patient_mrn` and `_link_mrn`, an encounter id directly.

An Observation that cannot even be classified (its category or code is not readable), and a bad
line of an `Observation` NDJSON file, count as lab_results; a DiagnosticReport's as
pathology_reports.

Every record has `_source`, `_line` (bundle: the entry's 1-based index; NDJSON: the line) and
`_fhir_id` (the resource's logical id: `id`, else the uuid of its `urn:uuid:` fullUrl). Reading
never raises for bad input: an entry that cannot be mapped becomes a record of its dataset with
`_rule` (FHIR_ENTRY_INVALID), `_error` (every reason, naming the entry and resource id), `_raw`
(the entry's JSON, cut at RAW_LIMIT characters) and the columns that could be read; an NDJSON
line that is not a resource is a MALFORMED_LINE record; an entry that is not a resource at all
is a Reject. Values the contract would reject (a bad date, an unknown code) pass through as
text — validation happens later, in Spark.

Rows that do not agree with a Patient or study of the same bundle (a resident ID that differs
from the patients row's, a series whose study is missing) still get one: the writer adds a
*reference-only* Patient or ImagingStudy, tagged REFERENCE_ONLY, which the reader resolves but
does not turn into a row of its own (in NDJSON the Patient is contained instead). So a defect
injected into one dataset survives the round trip without leaking into another.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ingestion.profiles import FhirSystems

RawRecord = dict[str, str | None]
Json = dict[str, Any]

# --- Identifier systems (ours unless noted) ---------------------------------------------------
# GB 11643 resident ID card numbers. 2.16.156.10011 is the National Health Commission's OID arc;
# its health-document standards (WS/T 500 CDA headers) identify the patient's ID card number with
# .1.3 (.1.1 there is the document serial number). Choosing it is ours: no FHIR profile fixes it.
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
# Hospital-scoped systems: local numbers are unique only within their hospital, so the
# hospital id is part of the system (`<prefix><hospital_id>`).
MRN_SYSTEM = "urn:medshare:mrn:"
ENCOUNTER_SYSTEM = "urn:medshare:encounter:"
LAB_RESULT_SYSTEM = "urn:medshare:lab-result:"
MEDICATION_SYSTEM = "urn:medshare:medication:"
ACCESSION_SYSTEM = "urn:medshare:accession:"
ECG_SYSTEM = "urn:medshare:ecg:"
PATHOLOGY_SYSTEM = "urn:medshare:pathology:"
# A teleconsultation is a request (ServiceRequest) of the requesting hospital, which is also the
# hospital of the ECG or specimen it asks a centre to read.
TELECONSULT_SYSTEM = "urn:medshare:teleconsult:"
HOSPITAL_SYSTEM = "urn:medshare:hospital"
DICOM_UID_SYSTEM = "urn:dicom:uid"  # FHIR's own system for DICOM UIDs (values `urn:oid:…`)

# --- Code systems ---------------------------------------------------------------------------
ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
LOINC_SYSTEM = "http://loinc.org"
ATC_SYSTEM = "http://www.whocc.no/atc"
DICOM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"  # how FHIR codes a DICOM SOP class (`urn:oid:…`)
SNOMED_SYSTEM = "http://snomed.info/sct"
UCUM_SYSTEM = "http://unitsofmeasure.org"
DIAGNOSTIC_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"  # DiagnosticReport.category
# ICD-O-3 (morphology codes such as 8140/3, whose last digit is the behaviour): HL7's URI and OID.
ICDO3_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/icd-o-3", "urn:oid:2.16.840.1.113883.6.43.1")
# Our route codes (the medications contract's values) and DICOM Body Part Examined (0018,0015)
# terms: neither has a FHIR code system, so the project names them.
ROUTE_SYSTEM = "urn:medshare:route"
BODY_PART_SYSTEM = "urn:medshare:dicom-body-part"
# The ecg_reports and pathology_reports contracts' values: rhythm, specimen type.
RHYTHM_SYSTEM = "urn:medshare:ecg-rhythm"
SPECIMEN_TYPE_SYSTEM = "urn:medshare:specimen-type"

# --- ECGs and pathology ---------------------------------------------------------------------
ECG_STUDY = "11524-6"  # LOINC EKG study: the Observation we write for a resting ECG
ECG_TWELVE_LEAD = "34534-8"  # LOINC 12 lead EKG panel: an ECG too, of 12 leads
ECG_CODES = (ECG_STUDY, ECG_TWELVE_LEAD)
# Measurements (components, or member Observations): column → (LOINC, the UCUM unit we write).
ECG_MEASURES = {
    "heart_rate_bpm": ("8867-4", "/min"),
    "pr_interval_ms": ("8625-6", "ms"),
    "qrs_duration_ms": ("8633-2", "ms"),
    "qt_interval_ms": ("8634-0", "ms"),
    "qtc_interval_ms": ("8636-5", "ms"),
}
# The unit a measurement may come in, and what turns it into ours; another one cannot be read.
RATE_UNITS = {u: 1 for u in ("/min", "1/min", "{beats}/min", "{beat}/min", "beats/min", "bpm", "次/分")}
INTERVAL_UNITS = {"ms": 1, "msec": 1, "s": 1000}
ECG_RHYTHM = "76281-5"  # LOINC Type of arrhythmia on EKG: the code of the spec's EKG rhythm example
ECG_IMPRESSION = "8601-7"  # LOINC EKG impression (a narrative reading)
# SNOMED CT rhythm findings (the disorder and the ECG-finding concepts) → the contract's rhythm;
# we write the first of each.
RHYTHM_SNOMED = {
    "426783006": "sinus",
    "11092001": "sinus_tachycardia",
    "427084000": "sinus_tachycardia",
    "49710005": "sinus_bradycardia",
    "426177001": "sinus_bradycardia",
    "49436004": "atrial_fibrillation",
    "164889003": "atrial_fibrillation",
    "5370000": "atrial_flutter",
    "164890007": "atrial_flutter",
    "426453001": "paced",
    "10370003": "paced",
}
# DiagnosticReports of pathology: by diagnostic service section (v2-0074 surgical pathology,
# cytopathology, pathology), else by a LOINC pathology report code (Pathology study, Surgical
# pathology study, Comprehensive pathology report panel, Pathology synoptic report).
PATHOLOGY_SECTIONS = ("SP", "CP", "PAT")
PATHOLOGY_STUDY = "11526-1"
PATHOLOGY_CODES = (PATHOLOGY_STUDY, "11529-5", "60567-5", "60568-3")
SPECIMEN_SNOMED = {"258415003": "biopsy", "48469005": "cytology", "439479000": "excision"}
ICDO_BEHAVIOUR = {"0": "benign", "1": "uncertain", "2": "in_situ", "3": "malignant", "6": "metastatic"}

# --- Extensions (contract columns with no FHIR R4 element) ------------------------------------
REGISTERED_AT_URL = "urn:medshare:fhir:registered-at"
COUNTY_CODE_URL = "urn:medshare:fhir:county-code"
DIAGNOSIS_SEQ_URL = "urn:medshare:fhir:diagnosis-seq"
DIAGNOSIS_TYPE_URL = "urn:medshare:fhir:diagnosis-type"
VALUE_TEXT_URL = "urn:medshare:fhir:value-text"
BODY_PART_URL = "urn:medshare:fhir:body-part"
SOP_CLASS_URL = "urn:medshare:fhir:sop-class"
LEAD_COUNT_URL = "urn:medshare:fhir:lead-count"
BEHAVIOUR_URL = "urn:medshare:fhir:behaviour"
TAG_SYSTEM = "urn:medshare:fhir:tag"
REFERENCE_ONLY = "reference-only"

# fullUrl = <base>/<Type>/<id>, so the relative references `Type/id` resolve within the bundle
# by FHIR's own rules. The base is ours and names no real server.
FULL_URL_BASE = "https://fhir.medshare.invalid/r4"

ENCOUNTER_CLASS = {
    "outpatient": "AMB",
    "inpatient": "IMP",
    "emergency": "EMER",
    "teleconsultation": "VR",
}
GENDER = {"M": "male", "F": "female"}

COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": (
        "hospital_id",
        "patient_mrn",
        "resident_id",
        "name",
        "sex",
        "birth_date",
        "phone",
        "address",
        "county_code",
        "registered_at",
    ),
    "encounters": (
        "hospital_id",
        "encounter_id",
        "patient_mrn",
        "resident_id",
        "encounter_type",
        "department",
        "admit_time",
        "discharge_time",
        "referred_from_hospital_id",
    ),
    "diagnoses": (
        "hospital_id",
        "encounter_id",
        "diagnosis_seq",
        "resident_id",
        "icd10_code",
        "diagnosis_type",
        "diagnosed_at",
    ),
    "lab_results": (
        "hospital_id",
        "lab_result_id",
        "encounter_id",
        "resident_id",
        "loinc_code",
        "value_num",
        "value_text",
        "unit",
        "reference_low",
        "reference_high",
        "abnormal_flag",
        "collected_at",
    ),
    "medications": (
        "hospital_id",
        "medication_id",
        "encounter_id",
        "resident_id",
        "atc_code",
        "drug_name",
        "dose",
        "dose_unit",
        "route",
        "frequency",
        "start_date",
        "end_date",
    ),
    "imaging_studies": (
        "hospital_id",
        "study_instance_uid",
        "accession_number",
        "patient_mrn",
        "resident_id",
        "encounter_id",
        "modality",
        "body_part",
        "study_date",
        "study_description",
        "referring_physician",
        "number_of_series",
    ),
    "imaging_series": (
        "hospital_id",
        "series_instance_uid",
        "study_instance_uid",
        "resident_id",
        "modality",
        "body_part",
        "series_description",
        "sop_class_uid",
        "number_of_instances",
        "series_date",
    ),
    "ecg_reports": (
        "hospital_id",
        "ecg_id",
        "encounter_id",
        "patient_mrn",
        "resident_id",
        "teleconsult_id",
        "reading_hospital_id",
        "study_instance_uid",
        "recorded_at",
        "reported_at",
        "lead_count",
        "heart_rate_bpm",
        "pr_interval_ms",
        "qrs_duration_ms",
        "qt_interval_ms",
        "qtc_interval_ms",
        "rhythm",
        "findings",
        "conclusion_code",
        "report_status",
        "reading_physician",
    ),
    "pathology_reports": (
        "hospital_id",
        "pathology_id",
        "encounter_id",
        "patient_mrn",
        "resident_id",
        "teleconsult_id",
        "reading_hospital_id",
        "specimen_type",
        "specimen_site",
        "collected_at",
        "reported_at",
        "diagnosis_code",
        "diagnosis_text",
        "behaviour",
        "report_status",
        "pathologist",
    ),
}
FHIR_DATASETS = tuple(COLUMNS)
BUNDLE_TYPES = ("collection", "transaction")  # what records_to_bundle writes

# Exports are in China Standard Time, which has no daylight saving: a fixed offset is exact.
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))
CHINA_OFFSET = "+08:00"


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str


@dataclass
class FhirBatch:
    """Raw records by dataset (only datasets that have some), each with `_source`, `_line` and
    `_fhir_id` (and `_rule`, `_error`, `_raw` when its entry could not be mapped); a Reject for
    each entry that is not a resource at all (or one for the whole file); a count, by resource
    type, of the resources that no dataset holds."""

    records: dict[str, list[RawRecord]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# =============================================================================================
# Values


_LOCAL_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?")
_ZONED_TS = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)(Z|[+-]\d{2}:\d{2})")
_PLAIN_NUMBER = re.compile(r"-?(0|[1-9]\d{0,17})(\.\d{1,17})?")


def _fhir_datetime(text: str | None) -> str | None:
    # FHIR wants a zone on a dateTime with a time; anything else goes out as written.
    return f"{text}{CHINA_OFFSET}" if text is not None and _LOCAL_TS.fullmatch(text) else text


def _fhir_number(text: str | None) -> int | float | str | None:
    """A JSON number when the text comes back identical — from this dict (float: repr) and from
    its JSON text (read_fhir_file parses decimals as Decimal) — else the text itself, so "5.20"
    or "n/a" survive as written."""
    if text is None or not _PLAIN_NUMBER.fullmatch(text):
        return text
    if "." not in text:
        return int(text) if str(int(text)) == text else text
    value = float(text)
    return value if repr(value) == text and str(Decimal(text)) == text else text


def _local_timestamp(text: str | None) -> str | None:
    """A zoned dateTime as local China time without the zone; anything else as written."""
    if text is None:
        return None
    match = _ZONED_TS.fullmatch(text)
    if match is None:
        return text
    if match.group(2) == CHINA_OFFSET:
        return match.group(1)  # no parsing, so an impossible date still reaches validation
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return moment.astimezone(CHINA_TIME).replace(tzinfo=None).isoformat()


def _local_date(text: str | None) -> str | None:
    local = _local_timestamp(text)
    return local[:10] if local is not None and local != text else text


# =============================================================================================
# Writing


def _clean(value: Any) -> Any:
    """Without None, empty strings and the empty objects/lists they leave (FHIR forbids all)."""
    if isinstance(value, dict):
        pairs = ((k, _clean(v)) for k, v in value.items())
        return {k: v for k, v in pairs if v not in (None, "", {}, [])}
    if isinstance(value, list):
        items = (_clean(v) for v in value)
        return [v for v in items if v not in (None, "", {}, [])]
    return value


def _identifier(system: str, value: str | None, type_code: str | None = None) -> Json | None:
    if value is None:
        return None
    kind = {"coding": [_coding(IDENTIFIER_TYPE_SYSTEM, type_code)]} if type_code else None
    return {"type": kind, "system": system, "value": value}


def _extension(url: str, kind: str, value: object) -> Json | None:
    return None if value is None else {"url": url, f"value{kind}": value}


def _coding(system: str, code: str | None) -> Json:
    # The system stays even without a code: it says which vocabulary the missing value was from.
    return {"system": system, "code": code}


def _id_identifier(system: str, value: str | None) -> Json:
    # The system stays even without a value: the export had no id, and the reader must not
    # fall back to another identifier or the logical id.
    return {"system": system, "value": value}


def _ref(resource_type: str, resource_id: str) -> Json:
    return {"reference": f"{resource_type}/{resource_id}"}


def _scoped(prefix: str, hospital_id: str | None) -> str:
    return f"{prefix}{hospital_id or ''}"


class _BundleWriter:
    def __init__(self, *, bulk: bool = False) -> None:
        # bulk: resources for Bulk Data NDJSON, where each one is read alone — references by
        # relative `Type/id` only, and what a row needs that no Patient row gives is contained.
        self.bulk = bulk
        self._contained: list[Json] = []
        self.orgs: dict[str, Json] = {}
        self.patients: list[Json] = []
        self.stubs: list[Json] = []
        self.resources: list[Json] = []
        self.stub_studies: list[Json] = []
        self._ids: set[tuple[str, str]] = set()
        self._patient: dict[tuple[str | None, ...], str] = {}
        self._patient_any: dict[tuple[str | None, ...], str] = {}
        self._stub: dict[tuple[str | None, ...], str] = {}
        self._stub_any: dict[tuple[str | None, ...], str] = {}
        self._encounter: dict[tuple[str | None, ...], str] = {}
        self._study: dict[tuple[str | None, ...], Json] = {}
        self._stub_study: dict[tuple[str | None, ...], Json] = {}

    def new_id(self, resource_type: str, *key: str | None) -> str:
        """Deterministic (the same row gets the same id in every export, so a transaction PUT
        updates rather than duplicates) and free of MRNs, which are direct identifiers."""
        # A repeated key (a duplicate row) gets the next number: ids are unique in a bundle.
        n = 1
        while (resource_type, new := self._uuid(resource_type, *key, str(n))) in self._ids:
            n += 1
        self._ids.add((resource_type, new))
        return new

    @staticmethod
    def _uuid(*name: str | None) -> str:
        text = json.dumps(name, ensure_ascii=False)
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:medshare:fhir:{text}"))

    def org(self, hospital_id: str | None) -> Json | None:
        if hospital_id is None:
            return None
        self.orgs.setdefault(
            hospital_id,
            {
                "resourceType": "Organization",
                "id": hospital_id,
                "active": True,
                "identifier": [{"system": HOSPITAL_SYSTEM, "value": hospital_id}],
            },
        )
        return _ref("Organization", hospital_id)

    # -- patients --------------------------------------------------------------------------
    def patient(self, r: Mapping[str, str | None]) -> None:
        h, mrn, rid = r.get("hospital_id"), r.get("patient_mrn"), r.get("resident_id")
        pid = self.new_id("Patient", h, mrn)
        self._patient.setdefault((h, mrn, rid), pid)
        self._patient_any.setdefault((h, rid), pid)
        address = {
            "text": r.get("address"),
            "extension": [_extension(COUNTY_CODE_URL, "Code", r.get("county_code"))],
        }
        sex = r.get("sex")
        self.patients.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "extension": [
                    _extension(REGISTERED_AT_URL, "DateTime", _fhir_datetime(r.get("registered_at")))
                ],
                "identifier": self._patient_identifiers(h, mrn, rid),
                "active": True,
                "name": [{"text": r.get("name")}],
                "telecom": [{"system": "phone", "value": r.get("phone")}] if r.get("phone") else None,
                # Other values go out as written: the contract, not the writer, rejects them.
                "gender": GENDER.get(sex, sex) if sex is not None else None,
                "birthDate": r.get("birth_date"),
                "address": [address],
                "managingOrganization": self.org(h),
            }
        )

    @staticmethod
    def _patient_identifiers(h: str | None, mrn: str | None, rid: str | None) -> list[Json | None]:
        return [
            _identifier(_scoped(MRN_SYSTEM, h), mrn, "MR"),
            _identifier(RESIDENT_ID_SYSTEM, rid, "NNCHN"),
        ]

    def _stub_patient(self, h: str | None, mrn: str | None, rid: str | None) -> str:
        pid = self.new_id("Patient", "reference-only", h, mrn, rid)
        self._stub[(h, mrn, rid)] = pid
        self._stub_any.setdefault((h, rid), pid)
        self.stubs.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "meta": {"tag": [{"system": TAG_SYSTEM, "code": REFERENCE_ONLY}]},
                "identifier": self._patient_identifiers(h, mrn, rid),
                "managingOrganization": self.org(h),
            }
        )
        return pid

    def patient_ref(self, r: Mapping[str, str | None], *, with_mrn: bool) -> Json:
        """The Patient whose identifiers give back this row's resident ID (and MRN, when the
        row has one): a patients row's Patient when one agrees, else a reference-only one (in
        bulk mode a contained one, which `contained()` hands to the resource being built)."""
        h, rid = r.get("hospital_id"), r.get("resident_id")
        if self.bulk:
            mrn = r.get("patient_mrn") if with_mrn else None
            found = self._patient.get((h, mrn, rid)) if with_mrn else self._patient_any.get((h, rid))
            if found is not None:
                return _ref("Patient", found)
            self._contained.append(
                {
                    "resourceType": "Patient",
                    "id": "patient",
                    "identifier": self._patient_identifiers(h, mrn, rid),
                    "managingOrganization": self.org(h),
                }
            )
            return {"reference": "#patient"}
        if with_mrn:
            key = (h, r.get("patient_mrn"), rid)
            pid = self._patient.get(key) or self._stub.get(key) or self._stub_patient(*key)
        else:
            pid = (
                self._patient_any.get((h, rid))
                or self._stub_any.get((h, rid))
                or self._stub_patient(h, None, rid)
            )
        return _ref("Patient", pid)

    def contained(self) -> list[Json]:
        taken, self._contained = self._contained, []
        return taken

    def encounter_ref(self, h: str | None, encounter_id: str | None) -> Json | None:
        # The identifier carries the value even when the Encounter is not in this bundle.
        if encounter_id is None:
            return None
        eid = self._encounter.get((h, encounter_id))
        identifier = {"system": _scoped(ENCOUNTER_SYSTEM, h), "value": encounter_id}
        if self.bulk:  # as Bulk Data refers: by `Type/id` alone, logically when there is none
            return _ref("Encounter", eid) if eid else {"identifier": identifier}
        return {
            "reference": f"Encounter/{eid}" if eid else None,
            "identifier": identifier,
        }

    # -- encounters and what hangs off them ------------------------------------------------
    def encounter(self, r: Mapping[str, str | None]) -> None:
        h, encounter_id, kind = r.get("hospital_id"), r.get("encounter_id"), r.get("encounter_type")
        eid = self.new_id("Encounter", h, encounter_id)
        self._encounter.setdefault((h, encounter_id), eid)
        referred = r.get("referred_from_hospital_id")
        subject = self.patient_ref(r, with_mrn=True)
        self.resources.append(
            {
                "resourceType": "Encounter",
                "id": eid,
                "contained": self.contained(),
                "identifier": [_id_identifier(_scoped(ENCOUNTER_SYSTEM, h), encounter_id)],
                "status": "finished" if r.get("discharge_time") else "in-progress",
                "class": _coding(ACT_CODE_SYSTEM, ENCOUNTER_CLASS.get(kind, kind) if kind else None),
                "serviceType": {"text": r.get("department")},
                "subject": subject,
                "period": {
                    "start": _fhir_datetime(r.get("admit_time")),
                    "end": _fhir_datetime(r.get("discharge_time")),
                },
                "hospitalization": {"origin": self.org(referred)},
                "serviceProvider": self.org(h),
            }
        )

    def condition(self, r: Mapping[str, str | None]) -> None:
        h, encounter_id = r.get("hospital_id"), r.get("encounter_id")
        subject = self.patient_ref(r, with_mrn=False)
        self.resources.append(
            {
                "resourceType": "Condition",
                "id": self.new_id("Condition", h, encounter_id, r.get("diagnosis_seq")),
                "contained": self.contained(),
                "extension": [
                    _extension(DIAGNOSIS_SEQ_URL, "Integer", _fhir_number(r.get("diagnosis_seq"))),
                    _extension(DIAGNOSIS_TYPE_URL, "Code", r.get("diagnosis_type")),
                ],
                "category": [{"coding": [_coding(CONDITION_CATEGORY_SYSTEM, "encounter-diagnosis")]}],
                "code": {"coding": [_coding(ICD10_SYSTEM, r.get("icd10_code"))]},
                "subject": subject,
                "encounter": self.encounter_ref(h, encounter_id),
                "recordedDate": _fhir_datetime(r.get("diagnosed_at")),
            }
        )

    def observation(self, r: Mapping[str, str | None]) -> None:
        h, unit, text = r.get("hospital_id"), r.get("unit"), r.get("value_text")
        quantity = None
        if r.get("value_num") is not None or unit is not None:
            quantity = {"value": _fhir_number(r.get("value_num")), "unit": unit}

        def bound(value: str | None) -> Json | None:
            return None if value is None else {"value": _fhir_number(value), "unit": unit}

        flag = r.get("abnormal_flag")
        subject = self.patient_ref(r, with_mrn=False)
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self.new_id("Observation", h, r.get("lab_result_id")),
                "contained": self.contained(),
                # value[x] holds one value: text beside a quantity goes to an extension.
                "extension": [_extension(VALUE_TEXT_URL, "String", text if quantity else None)],
                "identifier": [_id_identifier(_scoped(LAB_RESULT_SYSTEM, h), r.get("lab_result_id"))],
                "status": "final",
                "category": [{"coding": [_coding(OBSERVATION_CATEGORY_SYSTEM, "laboratory")]}],
                "code": {"coding": [_coding(LOINC_SYSTEM, r.get("loinc_code"))]},
                "subject": subject,
                "encounter": self.encounter_ref(h, r.get("encounter_id")),
                "effectiveDateTime": _fhir_datetime(r.get("collected_at")),
                "valueQuantity": quantity,
                "valueString": None if quantity else text,
                "interpretation": [{"coding": [_coding(INTERPRETATION_SYSTEM, flag)]}] if flag else [],
                "referenceRange": [
                    {"low": bound(r.get("reference_low")), "high": bound(r.get("reference_high"))}
                ],
            }
        )

    def medication(self, r: Mapping[str, str | None]) -> None:
        h, route = r.get("hospital_id"), r.get("route")
        subject = self.patient_ref(r, with_mrn=False)
        self.resources.append(
            {
                "resourceType": "MedicationRequest",
                "id": self.new_id("MedicationRequest", h, r.get("medication_id")),
                "contained": self.contained(),
                "identifier": [_id_identifier(_scoped(MEDICATION_SYSTEM, h), r.get("medication_id"))],
                "status": "unknown",  # exports say nothing about it; the dates are in the timing
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [_coding(ATC_SYSTEM, r.get("atc_code"))],
                    "text": r.get("drug_name"),
                },
                "subject": subject,
                "encounter": self.encounter_ref(h, r.get("encounter_id")),
                "dosageInstruction": [
                    {
                        "timing": {
                            "repeat": {
                                "boundsPeriod": {
                                    "start": r.get("start_date"),
                                    "end": r.get("end_date"),
                                }
                            },
                            "code": {"text": r.get("frequency")},
                        },
                        "route": {"coding": [_coding(ROUTE_SYSTEM, route)]} if route else None,
                        "doseAndRate": [
                            {
                                "doseQuantity": {
                                    "value": _fhir_number(r.get("dose")),
                                    "unit": r.get("dose_unit"),
                                }
                            }
                        ],
                    }
                ],
            }
        )

    # -- imaging ---------------------------------------------------------------------------
    def study(self, r: Mapping[str, str | None]) -> None:
        h, uid, rid = r.get("hospital_id"), r.get("study_instance_uid"), r.get("resident_id")
        subject = self.patient_ref(r, with_mrn=True)
        resource: Json = {
            "resourceType": "ImagingStudy",
            "id": self.new_id("ImagingStudy", h, uid),
            "contained": self.contained(),
            "extension": [_extension(BODY_PART_URL, "Coding", _body_part(r.get("body_part")))],
            "identifier": [
                _uid_identifier(uid),
                _identifier(_scoped(ACCESSION_SYSTEM, h), r.get("accession_number"), "ACSN"),
            ],
            "status": "available",
            "modality": [_coding(DICOM_SYSTEM, r.get("modality"))],
            "subject": subject,
            "encounter": self.encounter_ref(h, r.get("encounter_id")),
            "started": r.get("study_date"),
            "referrer": {"display": r.get("referring_physician")},
            "numberOfSeries": _fhir_number(r.get("number_of_series")),
            "description": r.get("study_description"),
            "series": [],
        }
        self._study.setdefault((h, uid, rid), resource)
        self.resources.append(resource)

    def series(self, r: Mapping[str, str | None]) -> None:
        """Into the study this row names, with the same resident; else into a reference-only
        study, so the series keeps its own study UID and resident ID."""
        key = (r.get("hospital_id"), r.get("study_instance_uid"), r.get("resident_id"))
        study = self._study.get(key) or self._stub_study.get(key)
        if study is None:
            subject = self.patient_ref(r, with_mrn=False)
            study = {
                "resourceType": "ImagingStudy",
                "id": self.new_id("ImagingStudy", "reference-only", *key),
                "meta": {"tag": [{"system": TAG_SYSTEM, "code": REFERENCE_ONLY}]},
                "contained": self.contained(),
                "identifier": [_uid_identifier(key[1])],
                "status": "available",
                "subject": subject,
                "series": [],
            }
            self._stub_study[key] = study
            self.stub_studies.append(study)
        sop = r.get("sop_class_uid")
        sop_class = None if sop is None else _coding(RFC3986_SYSTEM, f"urn:oid:{sop}")
        study["series"].append(
            {
                "extension": [_extension(SOP_CLASS_URL, "Coding", sop_class)],
                "uid": r.get("series_instance_uid"),
                "modality": _coding(DICOM_SYSTEM, r.get("modality")),
                "description": r.get("series_description"),
                "numberOfInstances": _fhir_number(r.get("number_of_instances")),
                "bodySite": _body_part(r.get("body_part")),
                "started": r.get("series_date"),
            }
        )

    # -- ECGs and pathology ----------------------------------------------------------------
    @staticmethod
    def teleconsult_ref(h: str | None, teleconsult_id: str | None) -> Json | None:
        # The request is a teleconsultations row, which has no FHIR form here: a logical reference.
        if teleconsult_id is None:
            return None
        identifier = {"system": _scoped(TELECONSULT_SYSTEM, h), "value": teleconsult_id}
        return {"type": "ServiceRequest", "identifier": identifier}

    def ecg(self, r: Mapping[str, str | None]) -> None:
        h, rhythm, conclusion = r.get("hospital_id"), r.get("rhythm"), r.get("conclusion_code")
        subject = self.patient_ref(r, with_mrn=True)
        components = [_measurement(code, unit, r.get(col)) for col, (code, unit) in ECG_MEASURES.items()]
        if rhythm is not None:
            coding = [_coding(RHYTHM_SYSTEM, rhythm), _translation(RHYTHM_SNOMED, rhythm)]
            components.append(
                {
                    "code": {"coding": [_coding(LOINC_SYSTEM, ECG_RHYTHM)]},
                    "valueCodeableConcept": {"coding": coding},
                }
            )
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self.new_id("Observation", "ecg", h, r.get("ecg_id")),
                "contained": self.contained(),
                "extension": [_extension(LEAD_COUNT_URL, "Integer", _fhir_number(r.get("lead_count")))],
                "identifier": [_id_identifier(_scoped(ECG_SYSTEM, h), r.get("ecg_id"))],
                "basedOn": [self.teleconsult_ref(h, r.get("teleconsult_id"))],
                # `unknown`, read back as no status: FHIR requires one, the row may have none.
                "status": r.get("report_status") or "unknown",
                "category": [{"coding": [_coding(OBSERVATION_CATEGORY_SYSTEM, "procedure")]}],
                "code": {"coding": [_coding(LOINC_SYSTEM, ECG_STUDY)]},
                "subject": subject,
                "encounter": self.encounter_ref(h, r.get("encounter_id")),
                "effectiveDateTime": _fhir_datetime(r.get("recorded_at")),
                "issued": _fhir_datetime(r.get("reported_at")),
                "performer": [
                    self.org(r.get("reading_hospital_id")),
                    _practitioner(r.get("reading_physician")),
                ],
                # The reading: its text, and its ICD-10 code when abnormal.
                "valueCodeableConcept": {
                    "coding": [_coding(ICD10_SYSTEM, conclusion)] if conclusion else [],
                    "text": r.get("findings"),
                },
                # The DICOM waveform, a study of modality ECG: by its UID, wherever it is.
                "derivedFrom": [_study_ref(r.get("study_instance_uid"))],
                "component": components,
            }
        )

    def pathology(self, r: Mapping[str, str | None]) -> None:
        h, kind, code = r.get("hospital_id"), r.get("specimen_type"), r.get("diagnosis_code")
        subject = self.patient_ref(r, with_mrn=True)
        # Contained: the export knows the specimen only through its report (it has no id of its
        # own), which is when FHIR says a resource is contained rather than referred to.
        specimen = {
            "resourceType": "Specimen",
            "id": "specimen",
            "type": {"coding": [_coding(SPECIMEN_TYPE_SYSTEM, kind), _translation(SPECIMEN_SNOMED, kind)]},
            "collection": {
                "collectedDateTime": _fhir_datetime(r.get("collected_at")),
                "bodySite": {"text": r.get("specimen_site")},
            },
        }
        section = "CP" if kind == "cytology" else "SP"
        self.resources.append(
            {
                "resourceType": "DiagnosticReport",
                "id": self.new_id("DiagnosticReport", h, r.get("pathology_id")),
                "contained": [*self.contained(), specimen],
                "extension": [_extension(BEHAVIOUR_URL, "Code", r.get("behaviour"))],
                "identifier": [_id_identifier(_scoped(PATHOLOGY_SYSTEM, h), r.get("pathology_id"))],
                "basedOn": [self.teleconsult_ref(h, r.get("teleconsult_id"))],
                "status": r.get("report_status") or "unknown",
                "category": [{"coding": [_coding(DIAGNOSTIC_SERVICE_SYSTEM, section)]}],
                "code": {"coding": [_coding(LOINC_SYSTEM, PATHOLOGY_STUDY)]},
                "subject": subject,
                "encounter": self.encounter_ref(h, r.get("encounter_id")),
                # For a report on a specimen, FHIR's effective time is the collection's.
                "effectiveDateTime": _fhir_datetime(r.get("collected_at")),
                "issued": _fhir_datetime(r.get("reported_at")),
                "performer": [self.org(r.get("reading_hospital_id"))],
                "resultsInterpreter": [_practitioner(r.get("pathologist"))],
                "specimen": [{"reference": "#specimen"}],
                "conclusion": r.get("diagnosis_text"),
                "conclusionCode": [{"coding": [_coding(ICD10_SYSTEM, code)]}] if code else [],
            }
        )


def _uid_identifier(uid: str | None) -> Json | None:
    return None if uid is None else {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


def _study_ref(uid: str | None) -> Json | None:
    return None if uid is None else {"type": "ImagingStudy", "identifier": _uid_identifier(uid)}


def _practitioner(name: str | None) -> Json | None:
    # A name is all the export has of a physician: a reference by display.
    return None if name is None else {"type": "Practitioner", "display": name}


def _measurement(code: str, unit: str, value: str | None) -> Json | None:
    if value is None:
        return None
    return {
        "code": {"coding": [_coding(LOINC_SYSTEM, code)]},
        "valueQuantity": {"value": _fhir_number(value), "unit": unit, "system": UCUM_SYSTEM, "code": unit},
    }


def _translation(snomed: Mapping[str, str], value: str | None) -> Json | None:
    """The SNOMED CT coding of one of our values, when it has one (the reader maps it back)."""
    code = next((k for k, v in snomed.items() if v == value), None)
    return None if code is None else _coding(SNOMED_SYSTEM, code)


def _body_part(value: str | None) -> Json | None:
    return None if value is None else _coding(BODY_PART_SYSTEM, value)


_WRITERS: dict[str, Callable[[_BundleWriter, Mapping[str, str | None]], None]] = {
    # In this order: a row's Patient, Encounter and study exist before the rows that refer to them.
    "patients": _BundleWriter.patient,
    "encounters": _BundleWriter.encounter,
    "diagnoses": _BundleWriter.condition,
    "lab_results": _BundleWriter.observation,
    "medications": _BundleWriter.medication,
    "imaging_studies": _BundleWriter.study,
    "imaging_series": _BundleWriter.series,
    "ecg_reports": _BundleWriter.ecg,
    "pathology_reports": _BundleWriter.pathology,
}


def records_to_bundle(
    records: Mapping[str, Sequence[Mapping[str, str | None]]],
    *,
    bundle_id: str,
    bundle_type: str = "collection",
) -> dict[str, Any]:
    """One Bundle (a JSON-serialisable dict) holding the raw records of FHIR_DATASETS; other
    datasets (teleconsultations) are ignored. Values go out as written, bad ones included, so
    bundle_to_records gives the same records back."""
    if bundle_type not in BUNDLE_TYPES:
        raise ValueError(f"bundle_type must be {' or '.join(BUNDLE_TYPES)}, not {bundle_type!r}")
    writer = _BundleWriter()
    for dataset, write in _WRITERS.items():
        for record in records.get(dataset, ()):
            write(writer, record)
    resources = [
        *writer.orgs.values(),
        *writer.patients,
        *writer.stubs,
        *writer.resources,
        *writer.stub_studies,
    ]
    entries = []
    for resource in resources:
        path = f"{resource['resourceType']}/{resource['id']}"
        entry: Json = {"fullUrl": f"{FULL_URL_BASE}/{path}", "resource": _clean(resource)}
        if bundle_type == "transaction":
            entry["request"] = {"method": "PUT", "url": path}
        entries.append(entry)
    bundle: Json = {"resourceType": "Bundle", "id": bundle_id, "type": bundle_type}
    if entries:
        bundle["entry"] = entries
    return bundle


def records_to_ndjson(records: Mapping[str, Sequence[Mapping[str, str | None]]]) -> dict[str, list[Json]]:
    """The resources of a FHIR Bulk Data export (`$export`: one NDJSON file per resource type),
    by resource type: those of records_to_bundle, but referring to Patients and Encounters by
    relative `Type/id` alone, as Bulk Data does. A row whose Patient no patients row gives (a
    resident ID that differs from its patient's, a study without MRN) carries it as a contained
    Patient; a series whose study is not exported still needs its reference-only ImagingStudy.
    read_fhir_ndjson, with `_link_patient` / `_link_encounter` resolved against the `_fhir_id`s
    of the Patient and Encounter records, gives the same records back."""
    writer = _BundleWriter(bulk=True)
    for dataset, write in _WRITERS.items():
        for record in records.get(dataset, ()):
            write(writer, record)
    out: dict[str, list[Json]] = {}
    for resource in (*writer.orgs.values(), *writer.patients, *writer.resources, *writer.stub_studies):
        out.setdefault(resource["resourceType"], []).append(_clean(resource))
    return out


# =============================================================================================
# Reading

FHIR_ENTRY_INVALID = "fhir_entry_invalid"
MALFORMED_LINE = "malformed_line"  # as ingestion.defects names it
# The dataset read_fhir_ndjson gives a bad line of a file whose name names no resource type: it
# belongs to no dataset, and the caller must still account for it.
UNPLACED = "_unplaced"
RAW_LIMIT = 65536

# The resources that become rows (an ImagingStudy's series become imaging_series rows too).
DATASET_OF_TYPE = {
    "Patient": "patients",
    "Encounter": "encounters",
    "Condition": "diagnoses",
    "Observation": "lab_results",
    "MedicationRequest": "medications",
    "ImagingStudy": "imaging_studies",
    "DiagnosticReport": "pathology_reports",
}
# Bundles whose entries hold resources to read. Not `history`: its entries are past versions and
# deletions of the same resources, not the resources as they are.
READ_BUNDLE_TYPES = (
    "collection",
    "transaction",
    "batch",
    "searchset",
    "document",
    "transaction-response",
    "batch-response",
)
# v2 table 0203 and the observation categories had other URLs before R4; exports still use them.
IDENTIFIER_TYPE_SYSTEMS = (IDENTIFIER_TYPE_SYSTEM, "http://hl7.org/fhir/v2/0203")
OBSERVATION_CATEGORY_SYSTEMS = (OBSERVATION_CATEGORY_SYSTEM, "http://hl7.org/fhir/observation-category")
DIAGNOSTIC_SERVICE_SYSTEMS = (DIAGNOSTIC_SERVICE_SYSTEM, "http://hl7.org/fhir/v2/0074")
# Statuses with no report_status of their own: what they are a kind of (FHIR's own hierarchy), or
# none (`unknown`: the system does not know, as our writer says of a row without one).
OBSERVATION_STATUS: dict[str, str | None] = {"corrected": "amended", "unknown": None}
REPORT_STATUS: dict[str, str | None] = {
    "corrected": "amended",
    "appended": "amended",
    "partial": "preliminary",
    "unknown": None,
}
PEOPLE = ("Practitioner", "PractitionerRole")

# `Type/id`, absolute or relative, optionally version-specific.
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([^/]+)(?:/_history/[^/]+)?$")
# Bulk Data file names: `Patient.ndjson`, `Patient.000.ndjson`, `Patient_1.ndjson`, `1.Patient.ndjson`.
_BULK_FILE = re.compile(r"(?:\d+[._-])?([A-Za-z]+)(?:[._-]\d+)*\.ndjson", re.IGNORECASE)
SEX = {v: k for k, v in GENDER.items()}
ENCOUNTER_TYPE = {v: k for k, v in ENCOUNTER_CLASS.items()}

_T = TypeVar("_T")


class _Bad(Exception):
    """Why a value (and so its entry) cannot be mapped; never leaves the module."""


def _text(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (str, int, Decimal)):
        return str(value)
    kind = "list" if isinstance(value, list) else "object"
    raise _Bad(f"{where} is a {kind}, not a value")


def _get(node: object, path: str) -> object:
    """The value at a dotted path (a number indexes a list); None where a step is missing. A step
    into a value of the wrong shape is an entry problem, named by its path."""
    done: list[str] = []
    for step in path.split("."):
        if node is None:
            return None
        if step.isdigit():
            if not isinstance(node, list):
                raise _Bad(f"{'.'.join(done)} is not a list")
            node = node[int(step)] if int(step) < len(node) else None
        else:
            if not isinstance(node, dict):
                raise _Bad(f"{'.'.join(done) or 'the value'} is not an object")
            node = node.get(step)
        done.append(step)
    return node


def _str(node: object, path: str) -> str | None:
    return _text(_get(node, path), path)


def _items(node: object, path: str) -> list[dict[str, Any]]:
    value = _get(node, path)
    out: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        if not isinstance(item, dict):
            raise _Bad(f"{path} holds something other than objects")
        out.append(item)
    return out


def _codings(concept: object, where: str) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept, of a list of Codings or of one Coding."""
    if isinstance(concept, dict) and "coding" in concept:
        concept, where = concept["coding"], f"{where}.coding"
    out: list[dict[str, Any]] = []
    for item in concept if isinstance(concept, list) else [] if concept is None else [concept]:
        if not isinstance(item, dict):
            raise _Bad(f"{where} holds something other than Codings")
        out.append(item)
    return out


def _code(concept: object, where: str, system: str) -> str | None:
    """The code in `system`; an entry with no coding in it is rejected — it is not what its
    dataset holds. A coding in the system without a code is a missing value, not a reject."""
    for coding in _codings(concept, where):
        if coding.get("system") == system:
            return _text(coding.get("code"), f"{where} code")
    raise _Bad(f"{where} has no coding in {system}")


def _loose_code(concept: object, where: str, system: str) -> str | None:
    """The code in `system`; failing that any other code, then the concept's text: a value from
    another vocabulary still reaches validation instead of vanishing."""
    codings = _codings(concept, where)
    for coding in sorted(codings, key=lambda c: c.get("system") != system):
        code = _text(coding.get("code"), f"{where} code")
        if code is not None:
            return code
    return _str(concept, "text") if isinstance(concept, dict) else None


def _extension_value(node: object, url: str) -> object:
    for ext in _items(node, "extension"):
        if ext.get("url") == url:
            return next((v for k, v in ext.items() if k.startswith("value")), None)
    return None


def _identifier_value(resource: object, system: str) -> str | None:
    for ident in _items(resource, "identifier"):
        if ident.get("system") == system:
            return _str(ident, "value")
    return None


def _is_reference_only(resource: object) -> bool:
    try:
        tags = _items(resource, "meta.tag")
    except _Bad:
        return False
    return any(t.get("system") == TAG_SYSTEM and t.get("code") == REFERENCE_ONLY for t in tags)


# --- identifiers ------------------------------------------------------------------------------
_Match = Callable[[dict[str, Any]], bool]


def _system_is(*systems: str) -> _Match:
    return lambda ident: ident.get("system") in systems


def _system_starts(prefix: str) -> _Match:
    return lambda ident: str(ident.get("system") or "").startswith(prefix)


def _type_is(*codes: str) -> _Match:
    """An identifier whose `type` has one of these v2-0203 codes (MR, NNCHN, VN, ACSN…)."""

    def match(ident: dict[str, Any]) -> bool:
        return any(
            c.get("system") in IDENTIFIER_TYPE_SYSTEMS and c.get("code") in codes
            for c in _codings(ident.get("type"), "identifier.type")
        )

    return match


def _first(identifiers: Sequence[dict[str, Any]], *matches: _Match) -> dict[str, Any] | None:
    """The identifier the first match to accept any accepts: matches go in order of trust."""
    for match in matches:
        for ident in identifiers:
            if match(ident):
                return ident
    return None


def _value(identifier: dict[str, Any] | None, what: str) -> str | None:
    return None if identifier is None else _text(identifier.get("value"), f"{what} value")


def _business_id(
    resource: object, logical_id: str | None, ours: str, *types: str, besides: tuple[str, ...] = ()
) -> str | None:
    """An Encounter's, lab result's, order's or report's id: our own system's identifier, else
    one of the given v2-0203 types, else the first identifier with a value (not of a system in
    `besides`, which names something else), else the logical id."""
    identifiers = _items(resource, "identifier")
    own = _first(identifiers, _system_starts(ours))
    if own is not None:
        return _value(own, "identifier")  # ours without a value: the export had none
    given = [i for i in identifiers if i.get("value") not in (None, "") and i.get("system") not in besides]
    chosen = _first(given, _type_is(*types), lambda _: True)
    # A business id is what the hospital itself uses, in this export and in its other systems;
    # the logical id is only a server's key for the resource, the last resort.
    return _value(chosen, "identifier") if chosen is not None else logical_id


# --- entries and references -------------------------------------------------------------------
def _json_kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "boolean" if isinstance(value, bool) else "number"


def _dumps(value: object) -> str:
    """JSON text of a parsed value, its decimals written as they were read."""
    try:
        return _encode(value)
    except RecursionError:
        return json.dumps(value, ensure_ascii=False, default=str)


def _encode(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        pairs = (f"{json.dumps(str(k), ensure_ascii=False)}: {_encode(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_encode(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class _Entry:
    where: str  # how reasons name it: "entry 3", "line 5", "line 5 entry 3"
    line: int  # `_line`: the entry's 1-based place in its bundle, or its NDJSON line
    resource: dict[str, Any]
    raw: object  # the entry as read (an NDJSON line: its text), for `_raw`
    full_url: str | None = None

    @property
    def type(self) -> str:
        return str(self.resource["resourceType"])

    @property
    def id(self) -> str | None:
        """The logical id: `id`, else the uuid of a `urn:uuid:` fullUrl (or the id of a RESTful
        one) — what references from other resources and files name."""
        value = self.resource.get("id")
        if isinstance(value, str) and value:
            return value
        url = self.full_url or ""
        if url.startswith("urn:uuid:"):
            return url[len("urn:uuid:") :]
        match = _REFERENCE.search(url)
        return match.group(2) if match and match.group(1) == self.type else None

    def label(self) -> str:
        return f"{self.where} ({self.type}/{self.id or '?'})"

    def raw_text(self) -> str:
        return (self.raw if isinstance(self.raw, str) else _dumps(self.raw))[:RAW_LIMIT]


class _Index:
    """The entries of one bundle by fullUrl and by `Type/id` (none for an NDJSON line)."""

    def __init__(self, entries: Sequence[_Entry] = ()) -> None:
        self.by_url: dict[str, _Entry] = {}
        self.by_key: dict[tuple[str, str], _Entry] = {}
        for entry in entries:  # the first one wins when an id or fullUrl repeats
            if entry.full_url:
                self.by_url.setdefault(entry.full_url, entry)
            if entry.id:
                self.by_key.setdefault((entry.type, entry.id), entry)

    def find(self, reference: str) -> _Entry | None:
        found = self.by_url.get(reference)
        if found is None and (match := _REFERENCE.search(reference)):
            # Relative, versioned (`…/_history/2`), or absolute on a server whose fullUrls the
            # bundle does not use: by type and id (unique per type within an export).
            found = self.by_key.get((match.group(1), match.group(2)))
        return found


def _parse_reference(reference: str) -> tuple[str | None, str]:
    """(resource type if it says, logical id) of a reference to something not in the bundle."""
    if reference.startswith("urn:uuid:"):
        return None, reference[len("urn:uuid:") :]
    match = _REFERENCE.search(reference)
    if match is None:
        raise _Bad(f"reference {reference!r} is neither Type/id, a URL ending in Type/id, urn:uuid: nor #id")
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class _Target:
    """Where a Reference leads: a resource of the bundle or a contained one (with the entry whose
    contained resources its own `#` references name), else only a logical id or identifier."""

    resource: dict[str, Any] | None
    host: _Entry | None
    logical_id: str | None
    identifier: dict[str, Any] | None  # Reference.identifier: a logical reference
    kind: str | None = None  # the resource type, when anything says it


@dataclass(frozen=True)
class _Subject:
    hospital_id: str | None = None  # by the Patient's managingOrganization
    patient_mrn: str | None = None
    resident_id: str | None = None
    link_patient: str | None = None  # a Patient elsewhere: its logical id
    link_mrn: str | None = None  # a Patient elsewhere, named by MRN


@dataclass(frozen=True)
class _Encounter:
    encounter_id: str | None = None
    hospital_id: str | None = None  # by the Encounter's serviceProvider
    resource: dict[str, Any] | None = None
    host: _Entry | None = None
    link: str | None = None  # an Encounter elsewhere: its logical id


_NO_SUBJECT = _Subject()
_NO_IDS: tuple[str | None, str | None] = (None, None)
_NO_VALUE: tuple[str | None, str | None, str | None] = (None, None, None)
_NO_ENCOUNTER = _Encounter()
_DEPENDANT = "neither its Encounter's serviceProvider nor its Patient's managingOrganization names one"


class _Row:
    """A record read column by column: a column that cannot be read stays None and its reason is
    kept, so a rejected entry still carries every value that could be read, and every reason."""

    def __init__(self, base: _Row | None = None) -> None:
        self.values: RawRecord = dict(base.values) if base else {}
        self.errors: list[str] = list(base.errors) if base else []

    def attempt(self, read: Callable[[], _T], default: _T) -> _T:
        try:
            return read()
        except _Bad as exc:
            self.errors.append(str(exc))
            return default

    def set(self, column: str, read: Callable[[], str | None]) -> None:
        self.values[column] = self.attempt(read, None)


class _Reader:
    """Maps resources to records: those of one bundle (whose references it resolves), or one
    NDJSON line at a time (references leave `_link_*` fields for a later step)."""

    def __init__(
        self,
        source: str,
        *,
        hospital_id: str | None,
        systems: FhirSystems | None,
        index: _Index | None = None,
        skipped: dict[str, int] | None = None,
    ) -> None:
        self.source, self.hospital_id = source, hospital_id
        self.index = index or _Index()
        self.skipped: dict[str, int] = {} if skipped is None else skipped
        mrn_systems = systems.mrn_systems if systems else ()
        resident_systems = systems.resident_id_systems if systems else ()
        # In order of trust: our own system, the hospital profile's, then the identifier's type.
        self.mrn = (_system_starts(MRN_SYSTEM), _system_is(*mrn_systems), _type_is("MR"))
        self.resident = (
            _system_is(RESIDENT_ID_SYSTEM),
            _system_is(*resident_systems),
            _type_is("NNCHN"),  # v2-0203 NN + ISO 3166 country: China's national person identifier
        )

    def skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def read(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        mapper = _MAPPERS.get(entry.type)
        if mapper is None:
            self.skip(entry.type)
            return []
        try:
            return mapper(self, entry)
        except _Bad as exc:  # a problem no column could be charged with
            row = _Row()
            row.errors.append(str(exc))
            return [self.emit(DATASET_OF_TYPE[entry.type], entry, row)]

    def emit(
        self,
        dataset: str,
        entry: _Entry,
        row: _Row,
        subject: _Subject = _NO_SUBJECT,
        encounter: _Encounter = _NO_ENCOUNTER,
        part: str = "",
    ) -> tuple[str, RawRecord]:
        record: RawRecord = {c: row.values.get(c) for c in COLUMNS[dataset]}
        if row.errors and record["hospital_id"] is None:
            record["hospital_id"] = self.hospital_id
        record["_source"] = self.source
        record["_line"] = str(entry.line)
        record["_fhir_id"] = entry.id
        links = {
            "_link_patient": subject.link_patient,
            "_link_mrn": subject.link_mrn,
            "_link_encounter": encounter.link,
        }
        record.update({k: v for k, v in links.items() if v is not None})
        if row.errors:
            record["_rule"] = FHIR_ENTRY_INVALID
            reasons = dict.fromkeys(row.errors)  # once each (low and high share a broken range)
            record["_error"] = f"{entry.label()}{part}: {'; '.join(reasons)}"
            record["_raw"] = entry.raw_text()
        return dataset, record

    # -- references ------------------------------------------------------------------------
    def follow(
        self, host: _Entry, node: object, where: str, expected: str, *, strict: bool = True
    ) -> _Target | None:
        """Where the Reference `node` of a resource of `host` leads; None when it names nothing
        (and, not strict, when it names another resource type, such as a Practitioner)."""
        if node is None:
            return None
        if not isinstance(node, dict):
            raise _Bad(f"{where} is not a Reference")
        reference = _str(node, "reference")
        identifier = node.get("identifier")
        if identifier is not None and not isinstance(identifier, dict):
            raise _Bad(f"{where}.identifier is not an Identifier")
        kind = _str(node, "type")
        resource: dict[str, Any] | None = None
        found_in: _Entry | None = None
        logical: str | None = None
        if reference is None:
            if identifier is None:
                return None  # a display alone
        elif reference.startswith("#"):
            contained = _items(host.resource, "contained")
            resource = next((c for c in contained if c.get("id") == reference[1:]), None)
            if resource is None:
                raise _Bad(f"{where} {reference!r} names no contained resource")
            kind, found_in = _text(resource.get("resourceType"), "contained resourceType"), host
        elif (hit := self.index.find(reference)) is not None:
            resource, found_in, logical, kind = hit.resource, hit, hit.id, hit.type
        else:
            named, logical = _parse_reference(reference)
            kind = named or kind
        if kind is not None and kind != expected:
            if strict:
                named = repr(reference) if reference else "(a logical reference)"
                raise _Bad(f"{where} {named} is a {kind}, not a {expected}")
            return None
        return _Target(resource, found_in, logical, identifier, kind)

    def patient_ids(self, patient: object) -> tuple[str | None, str | None]:
        """(MRN, resident ID card number) of a Patient."""
        identifiers = _items(patient, "identifier")
        return (
            _value(_first(identifiers, *self.mrn), "MRN identifier"),
            _value(_first(identifiers, *self.resident), "resident ID identifier"),
        )

    def subject(self, entry: _Entry) -> _Subject:
        node = entry.resource.get("subject")
        target = self.follow(entry, node, "subject", "Patient")
        if target is None:
            raise _Bad(
                "has no subject reference to a Patient"
                if node is None
                else "subject has neither a reference nor an identifier"
            )
        if target.resource is not None and target.host is not None:
            mrn, rid = self.patient_ids(target.resource)
            hospital_id = self.org_hospital(
                target.host, target.resource.get("managingOrganization"), "Patient's managingOrganization"
            )
            return _Subject(hospital_id=hospital_id, patient_mrn=mrn, resident_id=rid)
        # A Patient elsewhere (an earlier file, the hospital's server): a later step finds it
        # among the Patients already read, by logical id or by MRN. A resident ID needs no finding.
        mrn = rid = None
        ident = target.identifier
        if ident is not None:
            if any(match(ident) for match in self.resident):
                rid = _value(ident, "subject identifier")
            elif any(match(ident) for match in self.mrn):
                mrn = _value(ident, "subject identifier")
            elif target.logical_id is None:
                raise _Bad("subject identifier is neither an MRN nor a resident ID (by type or system)")
        if target.logical_id is None and mrn is None and rid is None:
            raise _Bad("subject identifier has no value")
        return _Subject(patient_mrn=mrn, resident_id=rid, link_patient=target.logical_id, link_mrn=mrn)

    def encounter(self, entry: _Entry) -> _Encounter:
        target = self.follow(entry, entry.resource.get("encounter"), "encounter", "Encounter")
        if target is None:
            return _NO_ENCOUNTER
        value = _value(target.identifier, "encounter identifier")
        if target.resource is not None and target.host is not None:
            return _Encounter(
                encounter_id=value
                or _business_id(target.resource, target.logical_id, ENCOUNTER_SYSTEM, "VN"),
                hospital_id=self.org_hospital(
                    target.host, target.resource.get("serviceProvider"), "Encounter's serviceProvider"
                ),
                resource=target.resource,
                host=target.host,
            )
        # An Encounter elsewhere: its identifier carries the value; failing that, a later step
        # finds it among the Encounters already read, by logical id.
        return _Encounter(encounter_id=value, link=None if value else target.logical_id)

    def org_hospital(self, host: _Entry, node: object, where: str) -> str | None:
        """The hospital an Organization reference names: by our HOSPITAL_SYSTEM identifier (of
        the reference or of the Organization), else by the Organization's id."""
        target = self.follow(host, node, where, "Organization", strict=False)
        if target is None:
            return None
        identifiers = [target.identifier] if target.identifier else []
        ours = _first([*identifiers, *_items(target.resource, "identifier")], _system_is(HOSPITAL_SYSTEM))
        if (value := _value(ours, f"{where} hospital identifier")) is not None:
            return value
        # Our own exports name a hospital by its Organization's id. A hospital system's own ids
        # (`Organization/1`) mean nothing here: with the hospital of the landing folder known, an
        # id counts only when it is that hospital's.
        if target.logical_id is not None and self.hospital_id in (None, target.logical_id):
            return target.logical_id
        return None

    def hospital(self, looked: str, *found: str | None) -> str:
        """The first hospital found in the resource and what it refers to, else the file's."""
        hospital_id = next((h for h in found if h), self.hospital_id)
        if hospital_id is None:
            raise _Bad(f"names no hospital ({looked}) and the file came with no hospital_id")
        return hospital_id

    def referred_from(self, entry: _Entry) -> str | None:
        node = _get(entry.resource, "hospitalization.origin")
        target = self.follow(entry, node, "hospitalization.origin", "Organization", strict=False)
        if target is None:
            # A Location, say: its reference text goes through for validation to judge.
            return _str(node, "reference") if node is not None else None
        return _named_hospital(target, "origin") or _str(node, "reference")

    def reading(self, entry: _Entry, *elements: str) -> tuple[str | None, str | None]:
        """(hospital, physician) of who read an ECG or specimen, from the references in these
        elements, the first that names one in element order: the hospital of an Organization
        (our identifier, else its id — validation judges an id that names none of ours); the
        display of a Practitioner or PractitionerRole (else the Practitioner's name), else a
        display alone that says of no type (a HIS's `{"display": "王医生"}`)."""
        hospital: str | None = None
        people: list[str] = []
        untyped: list[str] = []
        for element in elements:
            for node in _items(entry.resource, element):
                if hospital is None:
                    target = self.follow(entry, node, element, "Organization", strict=False)
                    hospital = _named_hospital(target, element) if target is not None else None
                target = self.follow(entry, node, element, "Practitioner", strict=False) or self.follow(
                    entry, node, element, "PractitionerRole", strict=False
                )
                display = _str(node, "display")
                if target is not None and target.kind in PEOPLE:
                    name = display or (_name(target.resource) if target.kind == "Practitioner" else None)
                    people += [name] if name else []
                elif target is None and display and _str(node, "type") in (None, *PEOPLE):
                    (people if _str(node, "type") else untyped).append(display)
        return hospital, next(iter(people + untyped), None)

    def teleconsult(self, entry: _Entry) -> str | None:
        """The teleconsultation a report answers: a basedOn ServiceRequest with our teleconsult
        identifier (on the reference or the request). Other requests are the hospital's orders."""
        for node in _items(entry.resource, "basedOn"):
            target = self.follow(entry, node, "basedOn", "ServiceRequest", strict=False)
            if target is None:
                continue
            identifiers = [target.identifier] if target.identifier else []
            found = _first(
                [*identifiers, *_items(target.resource, "identifier")], _system_starts(TELECONSULT_SYSTEM)
            )
            if found is not None:
                return _value(found, "basedOn teleconsultation identifier")
        return None

    def waveform(self, entry: _Entry) -> str | None:
        """The study UID of the DICOM waveform an ECG was read from: a derivedFrom ImagingStudy's
        `urn:dicom:uid` identifier (on the reference or the study), else the Observation's own."""
        for node in _items(entry.resource, "derivedFrom"):
            target = self.follow(entry, node, "derivedFrom", "ImagingStudy", strict=False)
            if target is None:
                continue
            identifiers = [target.identifier] if target.identifier else []
            found = _first(
                [*identifiers, *_items(target.resource, "identifier")], _system_is(DICOM_UID_SYSTEM)
            )
            if found is not None:
                return _strip_oid(_value(found, "derivedFrom DICOM UID"))
            if target.kind == "ImagingStudy":
                raise _Bad(
                    f"derivedFrom {_reference_text(node)} is an ImagingStudy whose DICOM study UID "
                    f"(identifier {DICOM_UID_SYSTEM}) is not in this bundle"
                )
        return _strip_oid(_identifier_value(entry.resource, DICOM_UID_SYSTEM))

    def specimen(self, entry: _Entry) -> dict[str, Any] | None:
        """The report's (first) Specimen, contained or in the bundle."""
        nodes = _items(entry.resource, "specimen")
        if not nodes:
            return None
        target = self.follow(entry, nodes[0], "specimen", "Specimen")
        if target is None:
            return None  # a display alone: nothing to read
        if target.resource is None:
            raise _Bad(
                f"specimen {_reference_text(nodes[0])} is not a Specimen of this bundle or contained: "
                "no specimen type, site or collection time to read"
            )
        return target.resource

    def medication(self, entry: _Entry) -> tuple[object, str]:
        """The medication's CodeableConcept, inline or in a referenced (bundled, contained)
        Medication, and how to name it."""
        r = entry.resource
        if "medicationReference" not in r:
            return r.get("medicationCodeableConcept"), "medicationCodeableConcept"
        target = self.follow(entry, r["medicationReference"], "medicationReference", "Medication")
        if target is None or target.resource is None:
            raise _Bad(
                "medicationReference is not a Medication of this bundle or contained: no ATC code to read"
            )
        return target.resource.get("code"), "Medication.code"

    def diagnosis_rank(self, entry: _Entry, encounter: _Encounter) -> str | None:
        """The rank the Condition's Encounter gives it in `Encounter.diagnosis`, if any."""
        if encounter.resource is None or encounter.host is None:
            return None
        for diagnosis in _items(encounter.resource, "diagnosis"):
            node = diagnosis.get("condition")
            target = self.follow(encounter.host, node, "Encounter.diagnosis.condition", "Condition")
            if target is not None and target.resource is entry.resource:
                return _str(diagnosis, "rank")
        return None

    # -- resources -------------------------------------------------------------------------
    def _patient(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        if _is_reference_only(r):  # a reference target of our writer's, not a row
            return []
        row = _Row()
        mrn, rid = row.attempt(lambda: self.patient_ids(r), _NO_IDS)
        row.set(
            "hospital_id",
            lambda: self.hospital(
                "no managingOrganization names one",
                self.org_hospital(entry, r.get("managingOrganization"), "managingOrganization"),
            ),
        )
        row.values.update(patient_mrn=mrn, resident_id=rid)
        row.set("name", lambda: _name(r))
        row.set("sex", lambda: SEX.get(_str(r, "gender") or "", _str(r, "gender")))
        row.set("birth_date", lambda: _local_date(_str(r, "birthDate")))
        row.set("phone", lambda: _phone(r))
        row.set("address", lambda: _str(r, "address.0.text") or _joined(r, "address.0.line"))
        row.set(
            "county_code",
            lambda: _text(_extension_value(_get(r, "address.0"), COUNTY_CODE_URL), "county-code"),
        )
        # FHIR has no registration time: our extension, else when the hospital's system last
        # updated the record (meta.lastUpdated) — the nearest a standard Patient says of it.
        row.set(
            "registered_at",
            lambda: _local_timestamp(
                _text(_extension_value(r, REGISTERED_AT_URL), "registered-at") or _str(r, "meta.lastUpdated")
            ),
        )
        return [self.emit("patients", entry, row)]

    def _encounter(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        row.set(
            "hospital_id",
            lambda: self.hospital(
                "neither its serviceProvider nor its Patient's managingOrganization names one",
                self.org_hospital(entry, r.get("serviceProvider"), "serviceProvider"),
                subject.hospital_id,
            ),
        )
        row.set("encounter_id", lambda: _business_id(r, entry.id, ENCOUNTER_SYSTEM, "VN"))
        row.values.update(patient_mrn=subject.patient_mrn, resident_id=subject.resident_id)
        row.set("encounter_type", lambda: _encounter_type(r))
        row.set(
            "department",
            lambda: _str(r, "serviceType.text") or _loose_code(_get(r, "serviceType"), "serviceType", ""),
        )
        row.set("admit_time", lambda: _local_timestamp(_str(r, "period.start")))
        row.set("discharge_time", lambda: _local_timestamp(_str(r, "period.end")))
        row.set("referred_from_hospital_id", lambda: self.referred_from(entry))
        return [self.emit("encounters", entry, row, subject)]

    def _condition(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = row.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        row.set("hospital_id", lambda: self.hospital(_DEPENDANT, encounter.hospital_id, subject.hospital_id))
        row.values.update(encounter_id=encounter.encounter_id, resident_id=subject.resident_id)
        rank = row.attempt(lambda: self.diagnosis_rank(entry, encounter), None)
        row.set(
            "diagnosis_seq",
            lambda: _text(_extension_value(r, DIAGNOSIS_SEQ_URL), "diagnosis-seq") or rank,
        )
        row.set(
            "diagnosis_type",
            lambda: (
                _text(_extension_value(r, DIAGNOSIS_TYPE_URL), "diagnosis-type")
                # An encounter's first-ranked diagnosis is its primary one (主要诊断).
                or (None if rank is None else "primary" if rank == "1" else "secondary")
            ),
        )
        row.set("icd10_code", lambda: _code(_get(r, "code"), "code", ICD10_SYSTEM))
        row.set("diagnosed_at", lambda: _local_timestamp(_str(r, "recordedDate")))
        return [self.emit("diagnoses", entry, row, subject, encounter)]

    def _observation(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        if _is_laboratory(r):
            return self._lab_result(entry)
        if _has_loinc(r, ECG_CODES):  # any category: ours say procedure, others may say none
            return self._ecg(entry)
        self.skip("Observation")  # vital signs, surveys, imaging findings: no dataset of ours
        return []

    def _lab_result(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = row.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        row.set(
            "hospital_id",
            lambda: self.hospital(
                f"neither its performer nor {_DEPENDANT.removeprefix('neither ')}",
                *(self.org_hospital(entry, p, "performer") for p in _items(r, "performer")),
                encounter.hospital_id,
                subject.hospital_id,
            ),
        )
        row.set("lab_result_id", lambda: _business_id(r, entry.id, LAB_RESULT_SYSTEM, "FILL", "PLAC"))
        row.values.update(encounter_id=encounter.encounter_id, resident_id=subject.resident_id)
        row.set("loinc_code", lambda: _code(_get(r, "code"), "code", LOINC_SYSTEM))
        value_num, value_text, unit = row.attempt(lambda: _observation_value(r), _NO_VALUE)
        row.values.update(value_num=value_num, unit=unit)
        row.set("value_text", lambda: value_text or _text(_extension_value(r, VALUE_TEXT_URL), "value-text"))
        row.set("reference_low", lambda: _str(r, "referenceRange.0.low.value"))
        row.set("reference_high", lambda: _str(r, "referenceRange.0.high.value"))
        row.set(
            "abnormal_flag",
            lambda: _loose_code(_get(r, "interpretation.0"), "interpretation", INTERPRETATION_SYSTEM),
        )
        row.set("collected_at", lambda: _local_timestamp(_effective(r)))
        return [self.emit("lab_results", entry, row, subject, encounter)]

    def _ecg(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = row.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        # Where it was recorded; its performer is who read it.
        row.set("hospital_id", lambda: self.hospital(_DEPENDANT, encounter.hospital_id, subject.hospital_id))
        row.set(
            "ecg_id",
            lambda: _business_id(r, entry.id, ECG_SYSTEM, "FILL", "ACSN", besides=(DICOM_UID_SYSTEM,)),
        )
        row.values.update(
            encounter_id=encounter.encounter_id,
            patient_mrn=subject.patient_mrn,
            resident_id=subject.resident_id,
        )
        row.set("teleconsult_id", lambda: self.teleconsult(entry))
        reader, physician = row.attempt(lambda: self.reading(entry, "performer"), _NO_IDS)
        row.values.update(reading_hospital_id=reader, reading_physician=physician)
        row.set("study_instance_uid", lambda: self.waveform(entry))
        row.set("recorded_at", lambda: _local_timestamp(_effective(r)))
        row.set("reported_at", lambda: _local_timestamp(_str(r, "issued")))
        row.set(
            "lead_count",
            lambda: (
                _extension_code(r, LEAD_COUNT_URL, "lead-count")
                or ("12" if _has_loinc(r, (ECG_TWELVE_LEAD,)) else None)
            ),
        )
        no_parts: list[dict[str, Any]] = []
        parts = row.attempt(lambda: _items(r, "component"), no_parts)
        for column in ECG_MEASURES:
            row.set(column, partial(_measured, parts, column))
        row.set("rhythm", lambda: _rhythm(parts))
        row.set("findings", lambda: _findings(r, parts))
        row.set("conclusion_code", lambda: _conclusion(r, parts))
        row.set("report_status", lambda: _status(r, OBSERVATION_STATUS))
        return [self.emit("ecg_reports", entry, row, subject, encounter)]

    def _diagnostic_report(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        if not _is_pathology(r):  # laboratory panels, imaging reports: no dataset of ours
            self.skip("DiagnosticReport")
            return []
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = row.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        row.set("hospital_id", lambda: self.hospital(_DEPENDANT, encounter.hospital_id, subject.hospital_id))
        row.set("pathology_id", lambda: _business_id(r, entry.id, PATHOLOGY_SYSTEM, "FILL", "ACSN"))
        row.values.update(
            encounter_id=encounter.encounter_id,
            patient_mrn=subject.patient_mrn,
            resident_id=subject.resident_id,
        )
        row.set("teleconsult_id", lambda: self.teleconsult(entry))
        # The diagnostic service is the performer, the pathologist the results interpreter;
        # exports that put them the other way round are read too.
        reader, _ = row.attempt(lambda: self.reading(entry, "performer", "resultsInterpreter"), _NO_IDS)
        _, pathologist = row.attempt(lambda: self.reading(entry, "resultsInterpreter", "performer"), _NO_IDS)
        row.values.update(reading_hospital_id=reader, pathologist=pathologist)
        specimen = row.attempt(lambda: self.specimen(entry), None)
        row.set(
            "specimen_type",
            lambda: _mapped_code(
                _get(specimen, "type"), "Specimen.type", SPECIMEN_TYPE_SYSTEM, SPECIMEN_SNOMED
            ),
        )
        site = "collection.bodySite"
        row.set("specimen_site", lambda: _concept_text(_get(specimen, site), f"Specimen.{site}", codes=True))
        row.set(
            "collected_at",
            lambda: _local_timestamp(
                _str(specimen, "collection.collectedDateTime")
                or _str(specimen, "collection.collectedPeriod.start")
                or _effective(r)
            ),
        )
        row.set("reported_at", lambda: _local_timestamp(_str(r, "issued")))
        row.set("diagnosis_code", lambda: _diagnosis_code(r))
        row.set(
            "diagnosis_text",
            lambda: (
                _str(r, "conclusion")
                or next(filter(None, (_str(c, "text") for c in _items(r, "conclusionCode"))), None)
            ),
        )
        row.set("behaviour", lambda: _extension_code(r, BEHAVIOUR_URL, "behaviour") or _icdo_behaviour(r))
        row.set("report_status", lambda: _status(r, REPORT_STATUS))
        return [self.emit("pathology_reports", entry, row, subject, encounter)]

    def _medication(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        row = _Row()
        subject = row.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = row.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        row.set(
            "hospital_id",
            lambda: self.hospital(
                f"neither its performer nor {_DEPENDANT.removeprefix('neither ')}",
                self.org_hospital(entry, r.get("performer"), "performer"),
                encounter.hospital_id,
                subject.hospital_id,
            ),
        )
        row.set("medication_id", lambda: _business_id(r, entry.id, MEDICATION_SYSTEM, "FILL", "PLAC"))
        row.values.update(encounter_id=encounter.encounter_id, resident_id=subject.resident_id)
        medication = row.attempt(lambda: self.medication(entry), None)
        if medication is not None:
            concept, where = medication
            row.set("atc_code", lambda: _code(concept, where, ATC_SYSTEM))
            row.set("drug_name", lambda: _drug_name(concept, where))
        dosage = "dosageInstruction.0"
        row.set("dose", lambda: _str(r, f"{dosage}.doseAndRate.0.doseQuantity.value"))
        row.set("dose_unit", lambda: _str(r, f"{dosage}.doseAndRate.0.doseQuantity.unit"))
        row.set("route", lambda: _loose_code(_get(r, f"{dosage}.route"), f"{dosage}.route", ROUTE_SYSTEM))
        row.set(
            "frequency",
            lambda: _loose_code(_get(r, f"{dosage}.timing.code"), f"{dosage}.timing.code", ""),
        )
        row.set(
            "start_date",
            # Without a stated period, an order starts when it is written.
            lambda: (
                _local_date(_str(r, f"{dosage}.timing.repeat.boundsPeriod.start"))
                or _local_date(_str(r, "authoredOn"))
            ),
        )
        row.set("end_date", lambda: _local_date(_str(r, f"{dosage}.timing.repeat.boundsPeriod.end")))
        return [self.emit("medications", entry, row, subject, encounter)]

    def _imaging_study(self, entry: _Entry) -> list[tuple[str, RawRecord]]:
        r = entry.resource
        shared = _Row()  # what the study and each of its series share
        own = _Row()  # the study's alone
        subject = shared.attempt(lambda: self.subject(entry), _NO_SUBJECT)
        encounter = own.attempt(lambda: self.encounter(entry), _NO_ENCOUNTER)
        found = (encounter.hospital_id, subject.hospital_id)
        shared.set("hospital_id", lambda: self.hospital(_DEPENDANT, *found))
        shared.set("study_instance_uid", lambda: _strip_oid(_identifier_value(r, DICOM_UID_SYSTEM)))
        shared.values["resident_id"] = subject.resident_id
        out: list[tuple[str, RawRecord]] = []
        if not _is_reference_only(r):
            row = _Row(shared)
            row.errors += own.errors
            row.values.update(patient_mrn=subject.patient_mrn, encounter_id=encounter.encounter_id)
            row.set("accession_number", lambda: _accession(r))
            row.set("modality", lambda: _code(_get(r, "modality"), "modality", DICOM_SYSTEM))
            row.set(
                "body_part",
                lambda: _loose_code(_extension_value(r, BODY_PART_URL), "body-part", BODY_PART_SYSTEM),
            )
            row.set("study_date", lambda: _local_date(_str(r, "started")))
            row.set("study_description", lambda: _str(r, "description"))
            row.set("referring_physician", lambda: _str(r, "referrer.display"))
            row.set("number_of_series", lambda: _str(r, "numberOfSeries"))
            out.append(self.emit("imaging_studies", entry, row, subject, encounter))
        try:
            series = _items(r, "series")
        except _Bad as exc:
            row = _Row(shared)
            row.errors.append(str(exc))
            return [*out, self.emit("imaging_series", entry, row, subject, part=" series")]
        for i, s in enumerate(series, start=1):
            # One bad series costs the study nothing, nor its other series.
            out.append(self.emit("imaging_series", entry, _series(shared, s), subject, part=f" series {i}"))
        return out


_MAPPERS: dict[str, Callable[[_Reader, _Entry], list[tuple[str, RawRecord]]]] = {
    "Patient": _Reader._patient,
    "Encounter": _Reader._encounter,
    "Condition": _Reader._condition,
    "Observation": _Reader._observation,
    "MedicationRequest": _Reader._medication,
    "ImagingStudy": _Reader._imaging_study,
    "DiagnosticReport": _Reader._diagnostic_report,
}


def _reference_text(node: dict[str, Any]) -> str:
    reference = _str(node, "reference")
    return repr(reference) if reference else "(a logical reference)"


def _named_hospital(target: _Target, where: str) -> str | None:
    """The hospital an Organization reference names: our identifier (of the reference or the
    Organization), else its logical id."""
    identifiers = [target.identifier] if target.identifier else []
    ours = _first([*identifiers, *_items(target.resource, "identifier")], _system_is(HOSPITAL_SYSTEM))
    return _value(ours, f"{where} hospital identifier") or target.logical_id


def _series(shared: _Row, s: dict[str, Any]) -> _Row:
    row = _Row(shared)
    row.set("series_instance_uid", lambda: _str(s, "uid"))
    row.set("modality", lambda: _code(_get(s, "modality"), "modality", DICOM_SYSTEM))
    row.set("body_part", lambda: _loose_code(_get(s, "bodySite"), "bodySite", BODY_PART_SYSTEM))
    row.set("series_description", lambda: _str(s, "description"))
    row.set(
        "sop_class_uid",
        lambda: _strip_oid(
            _loose_code(_extension_value(s, SOP_CLASS_URL), "sop-class", RFC3986_SYSTEM)
            # R4's own place: each instance's sopClass (the series' instances share one).
            or _loose_code(_get(s, "instance.0.sopClass"), "instance.0.sopClass", RFC3986_SYSTEM)
        ),
    )
    row.set("number_of_instances", lambda: _str(s, "numberOfInstances"))
    row.set("series_date", lambda: _local_date(_str(s, "started")))
    return row


def _is_laboratory(r: dict[str, Any]) -> bool:
    return any(
        c.get("system") in OBSERVATION_CATEGORY_SYSTEMS and c.get("code") == "laboratory"
        for concept in _items(r, "category")
        for c in _codings(concept, "category")
    )


def _has_loinc(r: dict[str, Any], codes: Sequence[str]) -> bool:
    return any(
        c.get("system") == LOINC_SYSTEM and c.get("code") in codes for c in _codings(_get(r, "code"), "code")
    )


def _is_pathology(r: dict[str, Any]) -> bool:
    return _has_loinc(r, PATHOLOGY_CODES) or any(
        c.get("system") in DIAGNOSTIC_SERVICE_SYSTEMS and c.get("code") in PATHOLOGY_SECTIONS
        for concept in _items(r, "category")
        for c in _codings(concept, "category")
    )


def _effective(r: dict[str, Any]) -> str | None:
    return _str(r, "effectiveDateTime") or _str(r, "effectivePeriod.start") or _str(r, "effectiveInstant")


def _status(r: dict[str, Any], kinds: Mapping[str, str | None]) -> str | None:
    status = _str(r, "status")
    return kinds.get(status, status) if status is not None else None


def _extension_code(r: dict[str, Any], url: str, where: str) -> str | None:
    """An extension's value: a code or number as it is, a Coding's or CodeableConcept's code."""
    value = _extension_value(r, url)
    return _loose_code(value, where, "") if isinstance(value, dict) else _text(value, where)


def _concept_text(concept: object, where: str, *, codes: bool) -> str | None:
    """What a CodeableConcept says in words: its text, else a coding's display (else, with
    `codes`, a code)."""
    if concept is not None and not isinstance(concept, dict):
        raise _Bad(f"{where} is not a CodeableConcept")
    codings = _codings(concept, where)
    displays = (_text(c.get("display"), f"{where} display") for c in codings)
    found = _str(concept, "text") or next((d for d in displays if d), None)
    if found is None and codes:
        return next(filter(None, (_text(c.get("code"), f"{where} code") for c in codings)), None)
    return found


def _mapped_code(concept: object, where: str, ours: str, snomed: Mapping[str, str]) -> str | None:
    """Our value: from a coding in our system, else one SNOMED CT code we know (`snomed`), else
    any other code or the text as written, for the profile's spellings and validation to judge."""
    codings = _codings(concept, where)
    for coding in codings:
        if coding.get("system") == ours:
            return _text(coding.get("code"), f"{where} code")
    for coding in codings:
        if coding.get("system") == SNOMED_SYSTEM and (value := snomed.get(str(coding.get("code")))):
            return value
    return _loose_code(concept, where, "")


def _component(parts: Sequence[dict[str, Any]], code: str) -> dict[str, Any] | None:
    """The first component coded `code` in LOINC."""
    for i, part in enumerate(parts, start=1):
        if any(
            c.get("system") == LOINC_SYSTEM and c.get("code") == code
            for c in _codings(part.get("code"), f"component {i} code")
        ):
            return part
    return None


def _value_kind(node: dict[str, Any]) -> str | None:
    return next((k for k in node if k.startswith("value")), None)


def _measured(parts: Sequence[dict[str, Any]], column: str) -> str | None:
    """An ECG measurement in the contract's unit (seconds become milliseconds); a unit that is
    none of those we know is a reason, never a silent misreading."""
    code, _ = ECG_MEASURES[column]
    part = _component(parts, code)
    kind = None if part is None else _value_kind(part)
    if part is None or kind is None:
        return None
    where = f"component {code} ({column})"
    if kind in ("valueInteger", "valueString"):  # a string goes as written: validation judges it
        return _str(part, kind)
    if kind != "valueQuantity":
        raise _Bad(f"{where} holds {kind}, not a valueQuantity")
    value = _str(part, "valueQuantity.value")
    unit = _str(part, "valueQuantity.code") or _str(part, "valueQuantity.unit")
    if value is None or unit is None:
        return value
    units = RATE_UNITS if column == "heart_rate_bpm" else INTERVAL_UNITS
    if unit not in units:
        raise _Bad(f"{where} is in {unit!r}, not {', '.join(units)}")
    return value if units[unit] == 1 else _scaled(value, units[unit])


def _scaled(text: str, factor: int) -> str:
    try:
        value = Decimal(text) * factor
    except ArithmeticError:  # not a number: as written, for validation to judge
        return text
    return format(value.normalize(), "f") if value.is_finite() else text


def _rhythm(parts: Sequence[dict[str, Any]]) -> str | None:
    part = _component(parts, ECG_RHYTHM)
    kind = None if part is None else _value_kind(part)
    if part is None or kind is None:
        return None
    where = f"component {ECG_RHYTHM} (rhythm)"
    if kind == "valueString":
        return _str(part, kind)
    if kind != "valueCodeableConcept":
        raise _Bad(f"{where} holds {kind}, not a valueCodeableConcept")
    return _mapped_code(part[kind], f"{where} value", RHYTHM_SYSTEM, RHYTHM_SNOMED)


def _findings(r: dict[str, Any], parts: Sequence[dict[str, Any]]) -> str | None:
    """The reading in words: the value's text (else a display), else valueString, else an EKG
    impression component's, else the first note."""
    impression = _component(parts, ECG_IMPRESSION)
    return (
        _concept_text(r.get("valueCodeableConcept"), "valueCodeableConcept", codes=False)
        or _str(r, "valueString")
        or _str(impression, "valueString")
        or _concept_text(_get(impression, "valueCodeableConcept"), "impression", codes=False)
        or _str(r, "note.0.text")
    )


def _icd10(concept: object, where: str) -> str | None:
    """The ICD-10 code of a concept; None without one (another vocabulary's code, SNOMED CT's
    "normal sinus rhythm" say, is no conclusion code)."""
    found = [c for c in _codings(concept, where) if c.get("system") == ICD10_SYSTEM]
    return _text(found[0].get("code"), f"{where} code") if found else None


def _conclusion(r: dict[str, Any], parts: Sequence[dict[str, Any]]) -> str | None:
    impression = _component(parts, ECG_IMPRESSION)
    return _icd10(r.get("valueCodeableConcept"), "valueCodeableConcept") or _icd10(
        _get(impression, "valueCodeableConcept"), "impression"
    )


def _diagnosis_code(r: dict[str, Any]) -> str | None:
    """conclusionCode's ICD-10 code, else its first other code (not ICD-O: that is the
    morphology, read for the behaviour) as written, for validation to judge."""
    concepts = _items(r, "conclusionCode")
    for concept in concepts:
        if (code := _icd10(concept, "conclusionCode")) is not None:
            return code
    others = (
        _text(c.get("code"), "conclusionCode code")
        for concept in concepts
        for c in _codings(concept, "conclusionCode")
        if c.get("system") not in ICDO3_SYSTEMS
    )
    return next(filter(None, others), None)


_MORPHOLOGY = re.compile(r"\d{4}/(\d)")


def _icdo_behaviour(r: dict[str, Any]) -> str | None:
    """The behaviour an ICD-O-3 morphology code in conclusionCode ends with (8140/3: malignant);
    a digit the contract has no word for goes as the code, for validation to judge."""
    for concept in _items(r, "conclusionCode"):
        for coding in _codings(concept, "conclusionCode"):
            code = _text(coding.get("code"), "conclusionCode code")
            if coding.get("system") in ICDO3_SYSTEMS and code and (match := _MORPHOLOGY.fullmatch(code)):
                return ICDO_BEHAVIOUR.get(match.group(1), code)
    return None


def _encounter_type(r: dict[str, Any]) -> str | None:
    kind = _code(_get(r, "class"), "class", ACT_CODE_SYSTEM)
    return ENCOUNTER_TYPE.get(kind or "", kind)


def _accession(r: dict[str, Any]) -> str | None:
    found = _first(_items(r, "identifier"), _system_starts(ACCESSION_SYSTEM), _type_is("ACSN"))
    return _value(found, "accession identifier")


def _drug_name(concept: object, where: str) -> str | None:
    if concept is not None and not isinstance(concept, dict):
        raise _Bad(f"{where} is not a CodeableConcept")
    displays = (_text(c.get("display"), f"{where} display") for c in _codings(concept, where))
    return _str(concept, "text") or next((d for d in displays if d), None)


def _name(resource: object) -> str | None:
    names = _items(resource, "name")
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    # Chinese order without a separator when there is no text: family name, then given names.
    return _str(name, "text") or "".join(filter(None, [_str(name, "family"), _joined(name, "given")])) or None


def _phone(resource: object) -> str | None:
    phones = (_str(t, "value") for t in _items(resource, "telecom") if t.get("system") == "phone")
    return next((p for p in phones if p), None)


def _joined(node: object, path: str) -> str | None:
    value = _get(node, path)
    parts = value if isinstance(value, list) else [] if value is None else [value]
    return "".join(filter(None, (_text(p, path) for p in parts))) or None


def _observation_value(r: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(value_num, value_text, unit) from the one value[x] an Observation may have."""
    kind = next((k for k in r if k.startswith("value")), None)
    if kind is None:
        return None, None, None
    if kind == "valueQuantity":
        return _str(r, "valueQuantity.value"), None, _str(r, "valueQuantity.unit")
    if kind == "valueInteger":
        return _str(r, kind), None, None
    if kind in ("valueString", "valueBoolean"):
        return None, _str(r, kind), None
    if kind == "valueCodeableConcept":
        text = _str(r, "valueCodeableConcept.text")
        return None, text or _loose_code(r[kind], kind, ""), None
    raise _Bad(
        f"{kind} is not read (expected valueQuantity, valueInteger, valueString, "
        "valueBoolean or valueCodeableConcept)"
    )


def _strip_oid(uid: str | None) -> str | None:
    return uid[len("urn:oid:") :] if uid is not None and uid.startswith("urn:oid:") else uid


# --- bundles, files, lines --------------------------------------------------------------------
def _read_bundle(
    bundle: object,
    *,
    source: str,
    hospital_id: str | None,
    systems: FhirSystems | None,
    line: int | None = None,
) -> FhirBatch:
    batch = FhirBatch()
    at = "" if line is None else f"line {line}: "

    def rejected(reason: str) -> FhirBatch:
        batch.rejects.append(Reject(source, f"{at}{reason}"))
        return batch

    if not isinstance(bundle, dict):
        return rejected(f"not a FHIR Bundle but a JSON {_json_kind(bundle)}")
    if bundle.get("resourceType") != "Bundle":
        return rejected(f"not a FHIR Bundle (resourceType {bundle.get('resourceType')!r})")
    kind = bundle.get("type")
    if kind not in READ_BUNDLE_TYPES:
        return rejected(f"Bundle type {kind!r} is not read (expected {', '.join(READ_BUNDLE_TYPES)})")
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        return rejected("Bundle.entry is not a list")
    entries: list[_Entry] = []
    for i, raw in enumerate(raw_entries, start=1):
        if not isinstance(raw, dict):
            rejected(f"entry {i}: not an entry but a JSON {_json_kind(raw)}")
            continue
        resource = raw.get("resource")
        if resource is None and str(kind).endswith("-response"):
            # What a server answered for a request, without the resource: nothing to read.
            batch.skipped["Bundle.entry.response"] = batch.skipped.get("Bundle.entry.response", 0) + 1
            continue
        if not isinstance(resource, dict):
            request = raw.get("request")
            method = request.get("method") if isinstance(request, dict) else None
            rejected(f"entry {i}: no resource object" + (f" (request {method})" if method else ""))
            continue
        if not isinstance(resource.get("resourceType"), str) or not resource["resourceType"]:
            rejected(f"entry {i}: resource has no resourceType")
            continue
        full_url = raw.get("fullUrl")
        where = f"entry {i}" if line is None else f"line {line} entry {i}"
        entries.append(
            _Entry(where, line or i, resource, raw, full_url if isinstance(full_url, str) else None)
        )
    reader = _Reader(
        source, hospital_id=hospital_id, systems=systems, index=_Index(entries), skipped=batch.skipped
    )
    for entry in entries:
        for dataset, record in reader.read(entry):
            batch.records.setdefault(dataset, []).append(record)
    return batch


def bundle_to_records(
    bundle: object, *, source: str, hospital_id: str | None = None, systems: FhirSystems | None = None
) -> FhirBatch:
    """Raw records by dataset from one parsed Bundle (see read_fhir_file)."""
    return _read_bundle(bundle, source=source, hospital_id=hospital_id, systems=systems)


def _loads(text: str) -> object:
    # Decimals keep a number's text as the export wrote it ("5.20" stays "5.20"); NaN and
    # Infinity, which JSON does not allow, come through as the words themselves.
    return json.loads(text, parse_float=Decimal, parse_constant=str)


def _rejected(name: str, reason: str) -> FhirBatch:
    return FhirBatch(rejects=[Reject(name, reason)])


def _merge(into: FhirBatch, batch: FhirBatch) -> None:
    for dataset, records in batch.records.items():
        into.records.setdefault(dataset, []).extend(records)
    into.rejects += batch.rejects
    for kind, n in batch.skipped.items():
        into.skipped[kind] = into.skipped.get(kind, 0) + n


def read_fhir_file(
    name: str, content: bytes, *, hospital_id: str | None = None, systems: FhirSystems | None = None
) -> FhirBatch:
    """A FHIR export file: one Bundle as JSON, or NDJSON with one Bundle per line (by the
    `.ndjson` suffix, or when a `.json` file holds several JSON values).

    `hospital_id` is the hospital whose landing folder the file came from: the hospital of every
    resource that names none of ours (by HOSPITAL_SYSTEM identifier or, without `hospital_id`,
    by Organization id). `systems` are the identifier systems the hospital's profile declares
    for MRNs and resident ID numbers, besides those recognised by identifier type."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _rejected(name, f"not UTF-8 text: byte {exc.start} cannot be decoded")
    if not text.strip():
        return _rejected(name, "empty file")
    if not name.lower().endswith(".ndjson"):
        try:
            document = _loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                return _rejected(name, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
            return _rejected(name, f"invalid JSON: {exc}")
        else:
            return _read_bundle(document, source=name, hospital_id=hospital_id, systems=systems)
    merged = FhirBatch()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = _loads(line)
        except (ValueError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            merged.rejects.append(Reject(name, f"line {number}: invalid JSON ({reason})"))
            continue
        batch = _read_bundle(document, source=name, hospital_id=hospital_id, systems=systems, line=number)
        _merge(merged, batch)
    return merged


def resource_type_of_file(name: str) -> str | None:
    """The resource type a Bulk Data file's name says it holds — `Patient.ndjson`,
    `Patient.000.ndjson`, `Patient_1.ndjson` → "Patient" — else None."""
    match = _BULK_FILE.fullmatch(PurePosixPath(name).name)
    if match is None:
        return None
    word = match.group(1)
    known = {t.lower(): t for t in (*DATASET_OF_TYPE, "Bundle")}
    return known.get(word.lower()) or (word if word[0].isupper() else None)


def _unreadable(
    dataset: str, *, source: str, line: int, hospital_id: str, rule: str, error: str, raw: str
) -> RawRecord:
    record: RawRecord = {c: None for c in COLUMNS.get(dataset, ())}
    record.update(
        hospital_id=hospital_id,
        _source=source,
        _line=str(line),
        _fhir_id=None,
        _rule=rule,
        _error=error,
        _raw=raw[:RAW_LIMIT],
    )
    return record


def read_fhir_ndjson(
    name: str,
    lines: Iterable[bytes],
    *,
    hospital_id: str,
    systems: FhirSystems | None = None,
    skipped: dict[str, int] | None = None,
) -> Iterator[tuple[str, RawRecord]]:
    """(dataset, record) pairs from a FHIR Bulk Data NDJSON file (one resource a line), read one
    line at a time. Each resource is read alone: its references to Patients and Encounters
    become `_link_patient` / `_link_encounter` (or `_link_mrn`) for a later step to resolve
    against the `_fhir_id`s of records read before. A line that is not a resource becomes a
    `malformed_line` record of the dataset the file name says (UNPLACED when it names no type);
    a Bundle on a line is read as one. Resources not ingested, and bad lines of a file of such a
    type, are counted in `skipped` by type."""
    file_type = resource_type_of_file(name)
    counts: dict[str, int] = {} if skipped is None else skipped
    reader = _Reader(name, hospital_id=hospital_id, systems=systems, skipped=counts)
    place = DATASET_OF_TYPE.get(file_type or "") or (UNPLACED if file_type in (None, "Bundle") else None)

    def bad(number: int, rule: str, error: str, raw: str) -> list[tuple[str, RawRecord]]:
        if place is None:  # a line of a resource type no dataset holds
            reader.skip(file_type or "")
            return []
        record = _unreadable(
            place, source=name, line=number, hospital_id=hospital_id, rule=rule, error=error, raw=raw
        )
        return [(place, record)]

    for number, raw in enumerate(lines, start=1):
        try:
            text, problem = raw.decode("utf-8-sig" if number == 1 else "utf-8"), None
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8", "replace")
            problem = f"not UTF-8 text: byte {exc.start} cannot be decoded"
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        document: object = None
        if problem is None:
            try:
                document = _loads(text)
            except (ValueError, RecursionError) as exc:
                problem = f"invalid JSON ({exc.msg if isinstance(exc, json.JSONDecodeError) else exc})"
        if problem is None and not (isinstance(document, dict) and document.get("resourceType")):
            kind = _json_kind(document)
            problem = "a JSON object without resourceType" if kind == "object" else f"a JSON {kind}"
            problem = f"not a FHIR resource: {problem}"
        if problem is not None or not isinstance(document, dict):
            yield from bad(number, MALFORMED_LINE, f"line {number}: {problem}", text)
            continue
        if document["resourceType"] == "Bundle":
            batch = _read_bundle(document, source=name, hospital_id=hospital_id, systems=systems, line=number)
            for dataset, records in batch.records.items():
                yield from ((dataset, record) for record in records)
            for reject in batch.rejects:
                yield from bad(number, FHIR_ENTRY_INVALID, reject.reason, text)
            for kind, n in batch.skipped.items():
                counts[kind] = counts.get(kind, 0) + n
            continue
        if not isinstance(document["resourceType"], str):
            yield from bad(number, MALFORMED_LINE, f"line {number}: resourceType is not a string", text)
            continue
        yield from reader.read(_Entry(f"line {number}", number, document, text))
