"""FHIR R4 Bundles (type `collection` or `transaction`) ↔ raw records (see ingestion.sources).

patients ← Patient, encounters ← Encounter, diagnoses ← Condition, lab_results ← Observation
(category laboratory), medications ← MedicationRequest, imaging_studies and imaging_series ←
ImagingStudy and its `series`. Teleconsultations have no FHIR form here. Organizations are
read only as reference targets.

Where each column lives (h = hospital_id; "Patient" = the entry's subject Patient, resolved in
the bundle; timestamps are FHIR dateTimes at +08:00, read back as local time without a zone):

    patients         hospital_id  managingOrganization `Organization/<h>`
                     patient_mrn  identifier `urn:medshare:mrn:<h>` (type MR)
                     resident_id  identifier RESIDENT_ID_SYSTEM (type NNCHN)
                     name, phone  name[0].text, telecom[system=phone].value
                     sex          gender (M↔male, F↔female)
                     birth_date   birthDate
                     address      address[0].text; county_code: extension COUNTY_CODE_URL on it
                     registered_at extension REGISTERED_AT_URL
    encounters       hospital_id  serviceProvider `Organization/<h>`
                     encounter_id identifier `urn:medshare:encounter:<h>`
                     patient_mrn, resident_id  from the Patient
                     encounter_type  class (v3 ActCode AMB/IMP/EMER/VR)
                     department   serviceType.text
                     admit_time, discharge_time  period.start, period.end
                     referred_from_hospital_id  hospitalization.origin `Organization/<id>`
    diagnoses        hospital_id, resident_id  from the Patient
                     encounter_id `encounter.identifier.value` (the Encounter's, when the
                                  reference has no identifier)
                     icd10_code   code.coding[system=ICD-10]
                     diagnosis_seq, diagnosis_type  extensions DIAGNOSIS_SEQ_URL, DIAGNOSIS_TYPE_URL
                     diagnosed_at recordedDate
    lab_results      lab_result_id identifier `urn:medshare:lab-result:<h>`; loinc_code
                     code.coding[system=LOINC]; value_num/unit valueQuantity.value/unit;
                     value_text valueString (extension VALUE_TEXT_URL beside a valueQuantity);
                     reference_low/high referenceRange[0].low/high.value; abnormal_flag
                     interpretation (v3 ObservationInterpretation); collected_at effectiveDateTime
    medications      medication_id identifier `urn:medshare:medication:<h>`; atc_code
                     medicationCodeableConcept.coding[system=ATC], drug_name its text;
                     dosageInstruction[0]: doseAndRate[0].doseQuantity value/unit = dose/dose_unit,
                     route.coding[ROUTE_SYSTEM], timing.code.text = frequency,
                     timing.repeat.boundsPeriod start/end = start_date/end_date
    imaging_studies  study_instance_uid identifier `urn:dicom:uid` (`urn:oid:<uid>`);
                     accession_number identifier `urn:medshare:accession:<h>` (type ACSN);
                     patient_mrn from the Patient; modality modality[system=DCM]; body_part
                     extension BODY_PART_URL; study_date started; study_description
                     description; referring_physician referrer.display; number_of_series
                     numberOfSeries
    imaging_series   series[]: uid, modality, bodySite, description, numberOfInstances, started,
                     sop_class_uid extension SOP_CLASS_URL; study_instance_uid and hospital /
                     resident from the enclosing ImagingStudy

Rows that do not agree with a Patient or study of the same bundle (a resident ID that differs
from the patients row's, a series whose study is missing) still get one: the writer adds a
*reference-only* Patient or ImagingStudy, tagged REFERENCE_ONLY, which the reader resolves but
does not turn into a row of its own. So a defect injected into one dataset survives the round
trip without leaking into another.

Reading never raises for bad input: an entry that cannot be mapped becomes a Reject naming the
entry index and resource id, and the rest of the bundle is still read. Values the contract would
reject (a bad date, an unknown code) pass through as text — validation happens later, in Spark.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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
# Our route codes (the medications contract's values) and DICOM Body Part Examined (0018,0015)
# terms: neither has a FHIR code system, so the project names them.
ROUTE_SYSTEM = "urn:medshare:route"
BODY_PART_SYSTEM = "urn:medshare:dicom-body-part"

# --- Extensions (contract columns with no FHIR R4 element) ------------------------------------
REGISTERED_AT_URL = "urn:medshare:fhir:registered-at"
COUNTY_CODE_URL = "urn:medshare:fhir:county-code"
DIAGNOSIS_SEQ_URL = "urn:medshare:fhir:diagnosis-seq"
DIAGNOSIS_TYPE_URL = "urn:medshare:fhir:diagnosis-type"
VALUE_TEXT_URL = "urn:medshare:fhir:value-text"
BODY_PART_URL = "urn:medshare:fhir:body-part"
SOP_CLASS_URL = "urn:medshare:fhir:sop-class"
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
}
FHIR_DATASETS = tuple(COLUMNS)
RESOURCE_TYPES = (
    "Organization",
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "ImagingStudy",
)
BUNDLE_TYPES = ("collection", "transaction")

# Exports are in China Standard Time, which has no daylight saving: a fixed offset is exact.
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))
CHINA_OFFSET = "+08:00"


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str


@dataclass
class FhirBatch:
    """Raw records by dataset (only datasets that have some), each with `_source`."""

    records: dict[str, list[RawRecord]] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)


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


def _ref(resource_type: str, resource_id: str) -> Json:
    return {"reference": f"{resource_type}/{resource_id}"}


def _scoped(prefix: str, hospital_id: str | None) -> str:
    return f"{prefix}{hospital_id or ''}"


class _BundleWriter:
    def __init__(self) -> None:
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
        row has one): a patients row's Patient when one agrees, else a reference-only one."""
        h, rid = r.get("hospital_id"), r.get("resident_id")
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

    def encounter_ref(self, h: str | None, encounter_id: str | None) -> Json | None:
        # The identifier carries the value even when the Encounter is not in this bundle.
        if encounter_id is None:
            return None
        eid = self._encounter.get((h, encounter_id))
        return {
            "reference": f"Encounter/{eid}" if eid else None,
            "identifier": {"system": _scoped(ENCOUNTER_SYSTEM, h), "value": encounter_id},
        }

    # -- encounters and what hangs off them ------------------------------------------------
    def encounter(self, r: Mapping[str, str | None]) -> None:
        h, encounter_id, kind = r.get("hospital_id"), r.get("encounter_id"), r.get("encounter_type")
        eid = self.new_id("Encounter", h, encounter_id)
        self._encounter.setdefault((h, encounter_id), eid)
        referred = r.get("referred_from_hospital_id")
        self.resources.append(
            {
                "resourceType": "Encounter",
                "id": eid,
                "identifier": [_identifier(_scoped(ENCOUNTER_SYSTEM, h), encounter_id)],
                "status": "finished" if r.get("discharge_time") else "in-progress",
                "class": _coding(ACT_CODE_SYSTEM, ENCOUNTER_CLASS.get(kind, kind) if kind else None),
                "serviceType": {"text": r.get("department")},
                "subject": self.patient_ref(r, with_mrn=True),
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
        self.resources.append(
            {
                "resourceType": "Condition",
                "id": self.new_id("Condition", h, encounter_id, r.get("diagnosis_seq")),
                "extension": [
                    _extension(DIAGNOSIS_SEQ_URL, "Integer", _fhir_number(r.get("diagnosis_seq"))),
                    _extension(DIAGNOSIS_TYPE_URL, "Code", r.get("diagnosis_type")),
                ],
                "category": [{"coding": [_coding(CONDITION_CATEGORY_SYSTEM, "encounter-diagnosis")]}],
                "code": {"coding": [_coding(ICD10_SYSTEM, r.get("icd10_code"))]},
                "subject": self.patient_ref(r, with_mrn=False),
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
        self.resources.append(
            {
                "resourceType": "Observation",
                "id": self.new_id("Observation", h, r.get("lab_result_id")),
                # value[x] holds one value: text beside a quantity goes to an extension.
                "extension": [_extension(VALUE_TEXT_URL, "String", text if quantity else None)],
                "identifier": [_identifier(_scoped(LAB_RESULT_SYSTEM, h), r.get("lab_result_id"))],
                "status": "final",
                "category": [{"coding": [_coding(OBSERVATION_CATEGORY_SYSTEM, "laboratory")]}],
                "code": {"coding": [_coding(LOINC_SYSTEM, r.get("loinc_code"))]},
                "subject": self.patient_ref(r, with_mrn=False),
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
        self.resources.append(
            {
                "resourceType": "MedicationRequest",
                "id": self.new_id("MedicationRequest", h, r.get("medication_id")),
                "identifier": [_identifier(_scoped(MEDICATION_SYSTEM, h), r.get("medication_id"))],
                "status": "unknown",  # exports say nothing about it; the dates are in the timing
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [_coding(ATC_SYSTEM, r.get("atc_code"))],
                    "text": r.get("drug_name"),
                },
                "subject": self.patient_ref(r, with_mrn=False),
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
        resource: Json = {
            "resourceType": "ImagingStudy",
            "id": self.new_id("ImagingStudy", h, uid),
            "extension": [_extension(BODY_PART_URL, "Coding", _body_part(r.get("body_part")))],
            "identifier": [
                _uid_identifier(uid),
                _identifier(_scoped(ACCESSION_SYSTEM, h), r.get("accession_number"), "ACSN"),
            ],
            "status": "available",
            "modality": [_coding(DICOM_SYSTEM, r.get("modality"))],
            "subject": self.patient_ref(r, with_mrn=True),
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
            study = {
                "resourceType": "ImagingStudy",
                "id": self.new_id("ImagingStudy", "reference-only", *key),
                "meta": {"tag": [{"system": TAG_SYSTEM, "code": REFERENCE_ONLY}]},
                "identifier": [_uid_identifier(key[1])],
                "status": "available",
                "subject": self.patient_ref(r, with_mrn=False),
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


def _uid_identifier(uid: str | None) -> Json | None:
    return None if uid is None else {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}


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


# =============================================================================================
# Reading


class _Bad(Exception):
    """Why an entry (or one series) cannot be mapped; becomes a Reject, never leaves the module."""


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


def _identifier_value(resource: object, system: str, *, prefix: bool = False) -> str | None:
    for ident in _items(resource, "identifier"):
        found = ident.get("system")
        if isinstance(found, str) and (found.startswith(system) if prefix else found == system):
            return _str(ident, "value")
    return None


def _is_reference_only(resource: object) -> bool:
    return any(
        t.get("system") == TAG_SYSTEM and t.get("code") == REFERENCE_ONLY
        for t in _items(resource, "meta.tag")
    )


# `Type/id`, absolute or relative, optionally version-specific.
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([^/]+)(?:/_history/[^/]+)?$")
SEX = {v: k for k, v in GENDER.items()}
ENCOUNTER_TYPE = {v: k for k, v in ENCOUNTER_CLASS.items()}


@dataclass(frozen=True)
class _Entry:
    index: int
    full_url: str | None
    resource: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.resource["resourceType"])

    @property
    def id(self) -> str | None:
        value = self.resource.get("id")
        return value if isinstance(value, str) else None

    def label(self) -> str:
        return f"entry {self.index} ({self.type}/{self.id or self.full_url or '?'})"


@dataclass(frozen=True)
class _Patient:
    hospital_id: str
    patient_mrn: str | None
    resident_id: str | None


class _BundleReader:
    def __init__(self, source: str, where: str) -> None:
        self.source, self.where = source, where  # `where` prefixes reasons ("line 3: ")
        self.batch = FhirBatch()
        self.by_url: dict[str, _Entry] = {}
        self.by_key: dict[tuple[str, str], _Entry] = {}
        self.patients: dict[int, _Patient] = {}

    def reject(self, reason: str) -> None:
        self.batch.rejects.append(Reject(self.source, f"{self.where}{reason}"))

    def add(self, dataset: str, record: RawRecord) -> None:
        record["_source"] = self.source
        self.batch.records.setdefault(dataset, []).append(record)

    def read(self, bundle: object) -> FhirBatch:
        if not isinstance(bundle, dict):
            self.reject(f"not a FHIR Bundle but a JSON {_json_kind(bundle)}")
            return self.batch
        if bundle.get("resourceType") != "Bundle":
            self.reject(f"not a FHIR Bundle (resourceType {bundle.get('resourceType')!r})")
            return self.batch
        if bundle.get("type") not in BUNDLE_TYPES:
            self.reject(
                f"Bundle type {bundle.get('type')!r} is not read (expected {' or '.join(BUNDLE_TYPES)})"
            )
            return self.batch
        raw_entries = bundle.get("entry", [])
        if not isinstance(raw_entries, list):
            self.reject("Bundle.entry is not a list")
            return self.batch
        entries = [e for i, raw in enumerate(raw_entries) if (e := self._entry(i, raw))]
        for entry in entries:  # the first one wins when an id or fullUrl repeats
            if entry.full_url:
                self.by_url.setdefault(entry.full_url, entry)
            if entry.id:
                self.by_key.setdefault((entry.type, entry.id), entry)
        # Patients first: every other entry resolves its subject among them.
        for entry in entries:
            if entry.type == "Patient":
                self._guarded(entry, _BundleReader._patient)
        for entry in entries:
            if entry.type in _READERS:
                self._guarded(entry, _READERS[entry.type])
        return self.batch

    def _entry(self, index: int, raw: object) -> _Entry | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("resource"), dict):
            self.reject(f"entry {index}: no resource object")
            return None
        full_url = raw.get("fullUrl")
        entry = _Entry(index, full_url if isinstance(full_url, str) else None, raw["resource"])
        kind = entry.resource.get("resourceType")
        if not isinstance(kind, str):
            self.reject(f"entry {index}: resource has no resourceType")
            return None
        if kind not in RESOURCE_TYPES:
            self.reject(
                f"{entry.label()}: resourceType {kind!r} is not read "
                f"(expected one of {', '.join(RESOURCE_TYPES)})"
            )
            return None
        return entry

    def _guarded(self, entry: _Entry, read: Callable[[_BundleReader, _Entry], None]) -> None:
        try:
            read(self, entry)
        except _Bad as exc:
            self.reject(f"{entry.label()}: {exc}")

    # -- references ------------------------------------------------------------------------
    def resolve(self, reference: str, resource_type: str) -> _Entry | None:
        found = self.by_url.get(reference)
        if found is None and (match := _REFERENCE.search(reference)):
            found = self.by_key.get((match.group(1), match.group(2)))
        return found if found is not None and found.type == resource_type else None

    def organization_id(self, reference: str) -> str | None:
        # The hospital id is the Organization's id; the Organization need not be in the bundle.
        match = _REFERENCE.search(reference)
        if match and match.group(1) == "Organization":
            return match.group(2)
        target = self.resolve(reference, "Organization")
        return target.id if target else None

    def hospital(self, resource: object, path: str) -> str:
        reference = _str(resource, f"{path}.reference")
        if reference is None:
            raise _Bad(f"has no {path} reference to an Organization")
        hospital_id = self.organization_id(reference)
        if hospital_id is None:
            raise _Bad(f"{path} {reference!r} is not an Organization reference")
        return hospital_id

    def subject(self, resource: object) -> _Patient:
        reference = _str(resource, "subject.reference")
        if reference is None:
            raise _Bad("has no subject reference to a Patient")
        target = self.resolve(reference, "Patient")
        if target is None:
            raise _Bad(f"subject {reference!r} is not a Patient in this bundle")
        patient = self.patients.get(target.index)
        if patient is None:
            raise _Bad(f"subject {reference!r} is a Patient that was rejected ({target.label()})")
        return patient

    def encounter_id(self, resource: object) -> str | None:
        value = _str(resource, "encounter.identifier.value")
        reference = _str(resource, "encounter.reference")
        if value is not None or reference is None:
            return value
        target = self.resolve(reference, "Encounter")
        if target is None:
            raise _Bad(
                f"encounter {reference!r} is not an Encounter in this bundle and the "
                "reference carries no identifier"
            )
        return _identifier_value(target.resource, ENCOUNTER_SYSTEM, prefix=True)

    # -- resources -------------------------------------------------------------------------
    def _patient(self, entry: _Entry) -> None:
        r = entry.resource
        patient = _Patient(
            self.hospital(r, "managingOrganization"),
            _identifier_value(r, MRN_SYSTEM, prefix=True),
            _identifier_value(r, RESIDENT_ID_SYSTEM),
        )
        if not _is_reference_only(r):
            sex = _str(r, "gender")
            self.add(
                "patients",
                {
                    "hospital_id": patient.hospital_id,
                    "patient_mrn": patient.patient_mrn,
                    "resident_id": patient.resident_id,
                    "name": _name(r),
                    "sex": SEX.get(sex or "", sex),
                    "birth_date": _local_date(_str(r, "birthDate")),
                    "phone": next(
                        (_str(t, "value") for t in _items(r, "telecom") if t.get("system") == "phone"),
                        None,
                    ),
                    "address": _str(r, "address.0.text") or _joined(r, "address.0.line"),
                    "county_code": _text(
                        _extension_value(_get(r, "address.0"), COUNTY_CODE_URL), "county-code"
                    ),
                    "registered_at": _local_timestamp(
                        _text(_extension_value(r, REGISTERED_AT_URL), "registered-at")
                    ),
                },
            )
        # Only now: a Patient rejected above is not a subject its dependants can use.
        self.patients[entry.index] = patient

    def _encounter(self, entry: _Entry) -> None:
        r = entry.resource
        hospital_id = self.hospital(r, "serviceProvider")
        patient = self.subject(r)
        kind = _code(_get(r, "class"), "class", ACT_CODE_SYSTEM)
        origin = _str(r, "hospitalization.origin.reference")
        self.add(
            "encounters",
            {
                "hospital_id": hospital_id,
                "encounter_id": _identifier_value(r, ENCOUNTER_SYSTEM, prefix=True),
                "patient_mrn": patient.patient_mrn,
                "resident_id": patient.resident_id,
                "encounter_type": ENCOUNTER_TYPE.get(kind or "", kind),
                "department": (
                    _str(r, "serviceType.text") or _loose_code(_get(r, "serviceType"), "serviceType", "")
                ),
                "admit_time": _local_timestamp(_str(r, "period.start")),
                "discharge_time": _local_timestamp(_str(r, "period.end")),
                # A non-Organization origin (a Location, say) goes through as its reference text.
                "referred_from_hospital_id": origin and (self.organization_id(origin) or origin),
            },
        )

    def _condition(self, entry: _Entry) -> None:
        r = entry.resource
        patient = self.subject(r)
        self.add(
            "diagnoses",
            {
                "hospital_id": patient.hospital_id,
                "encounter_id": self.encounter_id(r),
                "diagnosis_seq": _text(_extension_value(r, DIAGNOSIS_SEQ_URL), "diagnosis-seq"),
                "resident_id": patient.resident_id,
                "icd10_code": _code(_get(r, "code"), "code", ICD10_SYSTEM),
                "diagnosis_type": _text(_extension_value(r, DIAGNOSIS_TYPE_URL), "diagnosis-type"),
                "diagnosed_at": _local_timestamp(_str(r, "recordedDate")),
            },
        )

    def _observation(self, entry: _Entry) -> None:
        r = entry.resource
        if not any(
            c.get("system") == OBSERVATION_CATEGORY_SYSTEM and c.get("code") == "laboratory"
            for concept in _items(r, "category")
            for c in _codings(concept, "category")
        ):
            raise _Bad(
                f"not a laboratory Observation (category has no 'laboratory' in "
                f"{OBSERVATION_CATEGORY_SYSTEM})"
            )
        patient = self.subject(r)
        loinc = _code(_get(r, "code"), "code", LOINC_SYSTEM)
        value_num, value_text, unit = _observation_value(r)
        self.add(
            "lab_results",
            {
                "hospital_id": patient.hospital_id,
                "lab_result_id": _identifier_value(r, LAB_RESULT_SYSTEM, prefix=True),
                "encounter_id": self.encounter_id(r),
                "resident_id": patient.resident_id,
                "loinc_code": loinc,
                "value_num": value_num,
                "value_text": value_text or _text(_extension_value(r, VALUE_TEXT_URL), "value-text"),
                "unit": unit,
                "reference_low": _str(r, "referenceRange.0.low.value"),
                "reference_high": _str(r, "referenceRange.0.high.value"),
                "abnormal_flag": _loose_code(
                    _get(r, "interpretation.0"), "interpretation", INTERPRETATION_SYSTEM
                ),
                "collected_at": _local_timestamp(_str(r, "effectiveDateTime")),
            },
        )

    def _medication(self, entry: _Entry) -> None:
        r = entry.resource
        patient = self.subject(r)
        # A medicationReference (a Medication resource) is not read: no ATC coding to find.
        atc = _code(_get(r, "medicationCodeableConcept"), "medicationCodeableConcept", ATC_SYSTEM)
        dosage = "dosageInstruction.0"
        self.add(
            "medications",
            {
                "hospital_id": patient.hospital_id,
                "medication_id": _identifier_value(r, MEDICATION_SYSTEM, prefix=True),
                "encounter_id": self.encounter_id(r),
                "resident_id": patient.resident_id,
                "atc_code": atc,
                "drug_name": _str(r, "medicationCodeableConcept.text"),
                "dose": _str(r, f"{dosage}.doseAndRate.0.doseQuantity.value"),
                "dose_unit": _str(r, f"{dosage}.doseAndRate.0.doseQuantity.unit"),
                "route": _loose_code(_get(r, f"{dosage}.route"), f"{dosage}.route", ROUTE_SYSTEM),
                "frequency": _loose_code(_get(r, f"{dosage}.timing.code"), f"{dosage}.timing.code", ""),
                "start_date": _local_date(_str(r, f"{dosage}.timing.repeat.boundsPeriod.start")),
                "end_date": _local_date(_str(r, f"{dosage}.timing.repeat.boundsPeriod.end")),
            },
        )

    def _imaging_study(self, entry: _Entry) -> None:
        r = entry.resource
        patient = self.subject(r)
        uid = _strip_oid(_identifier_value(r, DICOM_UID_SYSTEM))
        if not _is_reference_only(r):
            self.add(
                "imaging_studies",
                {
                    "hospital_id": patient.hospital_id,
                    "study_instance_uid": uid,
                    "accession_number": _identifier_value(r, ACCESSION_SYSTEM, prefix=True),
                    "patient_mrn": patient.patient_mrn,
                    "resident_id": patient.resident_id,
                    "encounter_id": self.encounter_id(r),
                    "modality": _code(_get(r, "modality"), "modality", DICOM_SYSTEM),
                    "body_part": _loose_code(
                        _extension_value(r, BODY_PART_URL), "body-part", BODY_PART_SYSTEM
                    ),
                    "study_date": _local_date(_str(r, "started")),
                    "study_description": _str(r, "description"),
                    "referring_physician": _str(r, "referrer.display"),
                    "number_of_series": _str(r, "numberOfSeries"),
                },
            )
        for i, series in enumerate(_items(r, "series")):
            try:
                self.add("imaging_series", _series(series, patient, uid))
            except _Bad as exc:  # one bad series does not cost the study its other series
                self.reject(f"{entry.label()} series {i}: {exc}")


_READERS: dict[str, Callable[[_BundleReader, _Entry], None]] = {
    "Encounter": _BundleReader._encounter,
    "Condition": _BundleReader._condition,
    "Observation": _BundleReader._observation,
    "MedicationRequest": _BundleReader._medication,
    "ImagingStudy": _BundleReader._imaging_study,
}


def _series(s: dict[str, Any], patient: _Patient, study_uid: str | None) -> RawRecord:
    return {
        "hospital_id": patient.hospital_id,
        "series_instance_uid": _str(s, "uid"),
        "study_instance_uid": study_uid,
        "resident_id": patient.resident_id,
        "modality": _code(_get(s, "modality"), "modality", DICOM_SYSTEM),
        "body_part": _loose_code(_get(s, "bodySite"), "bodySite", BODY_PART_SYSTEM),
        "series_description": _str(s, "description"),
        "sop_class_uid": _strip_oid(
            _loose_code(_extension_value(s, SOP_CLASS_URL), "sop-class", RFC3986_SYSTEM)
        ),
        "number_of_instances": _str(s, "numberOfInstances"),
        "series_date": _local_date(_str(s, "started")),
    }


def _name(resource: object) -> str | None:
    # Chinese order without a separator when there is no text: family name, then given names.
    return (
        _str(resource, "name.0.text")
        or "".join(filter(None, [_str(resource, "name.0.family"), _joined(resource, "name.0.given")]))
        or None
    )


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


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else "boolean" if isinstance(value, bool) else "number"


def bundle_to_records(bundle: object, *, source: str) -> FhirBatch:
    """Raw records by dataset from one parsed Bundle, each with `_source`, and a Reject for
    every entry that cannot be mapped — or one for the whole bundle when it is not a
    collection or transaction Bundle."""
    return _BundleReader(source, "").read(bundle)


def _loads(text: str) -> object:
    # Decimals keep a number's text as the export wrote it ("5.20" stays "5.20"); NaN and
    # Infinity, which JSON does not allow, come through as the words themselves.
    return json.loads(text, parse_float=Decimal, parse_constant=str)


def _rejected(name: str, reason: str) -> FhirBatch:
    return FhirBatch(rejects=[Reject(name, reason)])


def read_fhir_file(name: str, content: bytes) -> FhirBatch:
    """A FHIR export file: one Bundle as JSON, or NDJSON with one Bundle per line (by the
    `.ndjson` suffix, or when a `.json` file holds several JSON values)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _rejected(name, f"not UTF-8 text: byte {exc.start} cannot be decoded")
    if not text.strip():
        return _rejected(name, "empty file")
    if not name.lower().endswith(".ndjson"):
        try:
            return bundle_to_records(_loads(text), source=name)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                return _rejected(name, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        except (ValueError, RecursionError) as exc:  # an integer too long, nesting too deep
            return _rejected(name, f"invalid JSON: {exc}")
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
        batch = _BundleReader(name, f"line {number}: ").read(document)
        for dataset, records in batch.records.items():
            merged.records.setdefault(dataset, []).extend(records)
        merged.rejects += batch.rejects
    return merged
