"""Standard FHIR R4 as other hospital systems write it — urn:uuid fullUrls, identifiers known by
their type, absolute and versioned references, resources that refer to Patients in other files —
and FHIR Bulk Data NDJSON. Every export here is written by hand, in the style of the HL7
examples, not by our writer (except for the NDJSON round trip at the end)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import StringType, StructField, StructType

from ingestion.profiles import FhirSystems
from ingestion.sources.fhir import (
    HOSPITAL_SYSTEM,
    ICD10_SYSTEM,
    UNPLACED,
    FhirBatch,
    read_fhir_file,
    read_fhir_ndjson,
    records_to_bundle,
    records_to_ndjson,
    resource_type_of_file,
)
from ingestion.validate import validate
from lakehouse.contracts import load_contracts
from tests.unit.test_fhir_source import LI, PLATFORM, WANG, clean_records, defective_records

H = "zz-fahzu"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"  # the hospital's own, as in the HL7 Patient example
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ATC = "http://www.whocc.no/atc"

PATIENT_UUID = "urn:uuid:1c4d7a3e-8f2b-4a61-9d0e-5b7c2f8a9e01"
ENCOUNTER_UUID = "urn:uuid:7f3a9b21-0c5d-4e8f-a612-3d9e8b7c6a52"
CONDITION_UUID = "urn:uuid:b2e8c4d6-1a3f-4b5e-8c7d-9e0f1a2b3c43"
LAB_UUID = "urn:uuid:e5f6a7b8-c9d0-4e1f-a2b3-c4d5e6f7a894"


def typed(code: str) -> dict[str, Any]:
    return {"coding": [{"system": V2, "code": code}]}


def as_file(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, ensure_ascii=False, indent=2).encode()


def post(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def meta(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k.startswith("_")}


def columns(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def invalid(batch: FhirBatch, dataset: str) -> list[dict[str, Any]]:
    return [r for r in batch.records.get(dataset, []) if r.get("_rule")]


# --- an HL7-example-style transaction --------------------------------------------------------


def wang() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": typed("MR"),
                "system": MRN_SYSTEM,
                "value": "0012345",
                "period": {"start": "2001-05-06"},
                "assigner": {"display": "郑州大学第一附属医院"},
            },
            {"use": "official", "type": typed("NNCHN"), "value": WANG},
        ],
        "active": True,
        # The official name second: it is the one read.
        "name": [{"use": "usual", "text": "老王"}, {"use": "official", "family": "王", "given": ["建国"]}],
        "telecom": [
            {"system": "email", "value": "wjg@example.org"},
            {"system": "phone", "value": "13803712345", "use": "mobile"},
        ],
        "gender": "male",
        "birthDate": "1978-03-12",
        "address": [{"use": "home", "line": ["花园路", "45号"], "city": "郑州市", "district": "金水区"}],
    }


def transaction() -> dict[str, Any]:
    encounter = {
        "resourceType": "Encounter",
        "identifier": [
            # Not the visit number; the one typed VN is.
            {"system": "http://hospital.example.org/his/registration", "value": "REG-99"},
            {"type": typed("VN"), "system": "http://hospital.example.org/visit", "value": "V2025-0001"},
        ],
        "status": "finished",
        "class": {"system": ACT, "code": "AMB", "display": "ambulatory"},
        "serviceType": {"coding": [{"system": "http://hospital.example.org/dept", "code": "0301"}]},
        "subject": {"reference": PATIENT_UUID},
        "period": {"start": "2025-03-02T09:10:00+08:00", "end": "2025-03-02T09:55:00+08:00"},
        "diagnosis": [{"condition": {"reference": CONDITION_UUID}, "rank": 1}],
    }
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {
            "coding": [
                {"system": SNOMED, "code": "38341003", "display": "Hypertensive disorder"},
                {"system": ICD10_SYSTEM, "code": "I10", "display": "特发性(原发性)高血压"},
            ]
        },
        "subject": {"reference": PATIENT_UUID},
        "encounter": {"reference": ENCOUNTER_UUID},
        "recordedDate": "2025-03-02T09:30:00+08:00",
    }
    glucose = {
        "resourceType": "Observation",
        "identifier": [{"system": "http://hospital.example.org/lis", "value": "LIS-88"}],
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
        "code": {
            "coding": [
                {"system": "http://hospital.example.org/lis-items", "code": "GLU"},
                {"system": LOINC, "code": "2345-7", "display": "Glucose [Moles/volume] in Serum or Plasma"},
            ],
            "text": "葡萄糖",
        },
        "subject": {"reference": PATIENT_UUID},
        "encounter": {"reference": ENCOUNTER_UUID},
        "effectiveDateTime": "2025-03-02T01:25:00Z",  # UTC: 09:25 in Zhengzhou
        "valueQuantity": {"value": 6.8, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
        "referenceRange": [
            {"low": {"value": 3.9, "unit": "mmol/L"}, "high": {"value": 6.1, "unit": "mmol/L"}}
        ],
    }
    pulse = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "subject": {"reference": PATIENT_UUID},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }
    doctor = {"resourceType": "Practitioner", "name": [{"text": "张医生"}]}
    return {
        "resourceType": "Bundle",
        "id": "bundle-transaction",
        "meta": {"lastUpdated": "2025-03-02T10:00:00+08:00"},
        "type": "transaction",
        "entry": [
            post(PATIENT_UUID, wang()),
            post(ENCOUNTER_UUID, encounter),
            post(CONDITION_UUID, condition),
            post(LAB_UUID, glucose),
            post("urn:uuid:0f0e0d0c-0b0a-4908-8706-050403020100", pulse),
            post("urn:uuid:aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", doctor),
        ],
    }


def test_an_hl7_style_transaction_is_read_entry_by_entry() -> None:
    batch = read_fhir_file("zz-fahzu/fhir/tx.json", as_file(transaction()), hospital_id=H)
    assert batch.rejects == []
    assert batch.skipped == {"Observation": 1, "Practitioner": 1}
    assert {d: len(r) for d, r in batch.records.items()} == {
        "patients": 1,
        "encounters": 1,
        "diagnoses": 1,
        "lab_results": 1,
    }
    [patient] = batch.records["patients"]
    assert columns(patient) == {
        "hospital_id": H,  # no managingOrganization: the landing folder's hospital
        "patient_mrn": "0012345",  # typed MR, in the hospital's own system
        "resident_id": WANG,  # typed NNCHN
        "name": "王建国",  # the official name, family name first
        "sex": "M",
        "birth_date": "1978-03-12",
        "phone": "13803712345",
        "address": "花园路45号",
        "county_code": None,
        "registered_at": None,
    }
    # No id: the uuid of the urn:uuid fullUrl is the logical id others refer to.
    assert meta(patient) == {
        "_source": "zz-fahzu/fhir/tx.json",
        "_line": "1",
        "_fhir_id": PATIENT_UUID.removeprefix("urn:uuid:"),
    }
    [encounter] = batch.records["encounters"]
    assert columns(encounter) == {
        "hospital_id": H,
        "encounter_id": "V2025-0001",
        "patient_mrn": "0012345",
        "resident_id": WANG,
        "encounter_type": "outpatient",
        "department": "0301",
        "admit_time": "2025-03-02T09:10:00",
        "discharge_time": "2025-03-02T09:55:00",
        "referred_from_hospital_id": None,
    }
    assert (encounter["_line"], encounter["_fhir_id"]) == ("2", ENCOUNTER_UUID.removeprefix("urn:uuid:"))
    [diagnosis] = batch.records["diagnoses"]
    assert columns(diagnosis) == {
        "hospital_id": H,
        "encounter_id": "V2025-0001",
        # Ranked first in Encounter.diagnosis: the primary diagnosis.
        "diagnosis_seq": "1",
        "resident_id": WANG,
        "icd10_code": "I10",
        "diagnosis_type": "primary",
        "diagnosed_at": "2025-03-02T09:30:00",
    }
    [lab] = batch.records["lab_results"]
    assert columns(lab) == {
        "hospital_id": H,
        "lab_result_id": "LIS-88",
        "encounter_id": "V2025-0001",
        "resident_id": WANG,
        "loinc_code": "2345-7",
        "value_num": "6.8",
        "value_text": None,
        "unit": "mmol/L",
        "reference_low": "3.9",
        "reference_high": "6.1",
        "abnormal_flag": "H",
        "collected_at": "2025-03-02T09:25:00",
    }
    assert all("_rule" not in r and "_link_patient" not in r for rs in batch.records.values() for r in rs)


def test_profile_systems_name_identifiers_that_carry_no_type() -> None:
    bundle = transaction()
    patient = bundle["entry"][0]["resource"]
    resident_system = "http://hospital.example.org/id-card"
    for ident in patient["identifier"]:
        del ident["type"]
    patient["identifier"][1]["system"] = resident_system
    untyped = read_fhir_file("f.json", as_file(bundle), hospital_id=H).records["patients"][0]
    assert (untyped["patient_mrn"], untyped["resident_id"]) == (None, None)
    systems = FhirSystems(mrn_systems=(MRN_SYSTEM,), resident_id_systems=(resident_system,))
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H, systems=systems)
    assert (batch.records["patients"][0]["patient_mrn"], batch.records["patients"][0]["resident_id"]) == (
        "0012345",
        WANG,
    )
    # Dependants take them from their Patient.
    assert batch.records["encounters"][0]["patient_mrn"] == "0012345"
    assert batch.records["diagnoses"][0]["resident_id"] == WANG


def test_the_hospital_comes_from_an_organization_of_ours_else_the_landing_folder() -> None:
    bundle = transaction()
    org = {"resourceType": "Organization", "id": "1", "name": "郑州大学第一附属医院"}
    bundle["entry"].append({"fullUrl": "http://hospital.example.org/fhir/Organization/1", "resource": org})
    bundle["entry"][0]["resource"]["managingOrganization"] = {"reference": "Organization/1"}
    # The hospital system's own Organization id means nothing here: the folder's hospital.
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H)
    assert batch.records["patients"][0]["hospital_id"] == H
    assert batch.skipped["Organization"] == 1
    # An Organization that carries our hospital identifier names its hospital, for the Patient
    # and for the resources of that Patient.
    org["identifier"] = [{"system": HOSPITAL_SYSTEM, "value": "zz-other"}]
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H)
    assert {r["hospital_id"] for rs in batch.records.values() for r in rs} == {"zz-other"}
    # With neither, every entry is a record saying so.
    del bundle["entry"][0]["resource"]["managingOrganization"]
    batch = read_fhir_file("f.json", as_file(bundle))
    assert all(
        "names no hospital" in r["_error"] and r["hospital_id"] is None
        for rs in batch.records.values()
        for r in rs
    )


# --- references ------------------------------------------------------------------------------

BASE = "http://hospital.example.org/fhir"


def searchset() -> dict[str, Any]:
    patient = wang() | {"id": "123", "meta": {"versionId": "2"}}
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "identifier": [{"type": typed("VN"), "value": "V7"}],
        "status": "finished",
        "class": {"system": ACT, "code": "IMP"},
        "subject": {"reference": f"{BASE}/Patient/123"},
        "period": {"start": "2025-04-10T14:20:00+08:00"},
    }

    def condition(cid: str, subject: dict[str, Any], encounter: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": cid,
            "code": {"coding": [{"system": ICD10_SYSTEM, "code": "J18.9"}]},
            "subject": subject,
            "encounter": encounter,
            "recordedDate": "2025-04-10T15:00:00+08:00",
        }

    conditions = [
        # Absolute, version-specific.
        condition(
            "c-history",
            {"reference": f"{BASE}/Patient/123/_history/2"},
            {"reference": f"{BASE}/Encounter/e1/_history/1"},
        ),
        # Relative to the server base.
        condition("c-relative", {"reference": "Patient/123"}, {"reference": "Encounter/e1"}),
        # Logical: by MRN — the Patient is found later, by hospital and MRN.
        condition(
            "c-by-mrn",
            {"identifier": {"type": typed("MR"), "system": MRN_SYSTEM, "value": "0099"}},
            None,
        ),
        # Logical: by resident ID card number — nothing to find.
        condition("c-by-id", {"identifier": {"type": typed("NNCHN"), "value": LI}}, None),
    ]
    medication = {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "identifier": [
            {"type": typed("PLAC"), "system": "http://hospital.example.org/orders", "value": "RX-5"}
        ],
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"coding": [{"system": ATC, "code": "J01DD04", "display": "头孢曲松"}]},
            }
        ],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": f"{BASE}/Patient/123"},
        "encounter": {"reference": f"{BASE}/Encounter/e1"},
        "authoredOn": "2025-04-10T15:10:00+08:00",
        "dosageInstruction": [
            {
                "route": {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous"}]},
                "doseAndRate": [{"doseQuantity": {"value": 2.0, "unit": "g"}}],
            }
        ],
    }
    resources = [patient, encounter, *conditions, medication]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
                "resource": {k: v for k, v in r.items() if v is not None},
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def test_absolute_versioned_relative_and_logical_references() -> None:
    batch = read_fhir_file("zz-fahzu/fhir/search.json", as_file(searchset()), hospital_id=H)
    assert batch.rejects == [] and batch.skipped == {}
    by_id = {r["_fhir_id"]: r for r in batch.records["diagnoses"]}
    for cid in ("c-history", "c-relative"):
        assert (by_id[cid]["resident_id"], by_id[cid]["encounter_id"]) == (WANG, "V7")
        assert not any(k.startswith("_link") for k in by_id[cid])
    assert by_id["c-by-mrn"]["resident_id"] is None
    assert by_id["c-by-mrn"]["_link_mrn"] == "0099"
    assert "_link_patient" not in by_id["c-by-mrn"]
    assert by_id["c-by-id"]["resident_id"] == LI
    assert not any(k.startswith("_link") for k in by_id["c-by-id"])
    assert all(r["hospital_id"] == H and "_rule" not in r for r in by_id.values())
    [medication] = batch.records["medications"]
    assert columns(medication) == {
        "hospital_id": H,
        "medication_id": "RX-5",  # typed PLAC
        "encounter_id": "V7",
        "resident_id": WANG,
        "atc_code": "J01DD04",  # from the contained Medication
        "drug_name": "头孢曲松",  # its coding's display: the concept has no text
        "dose": "2.0",
        "dose_unit": "g",
        "route": "47625008",  # another vocabulary: through as written, for validation to judge
        "frequency": None,
        "start_date": "2025-04-10",  # no boundsPeriod: when the order was written
        "end_date": None,
    }
    [encounter] = batch.records["encounters"]
    assert (encounter["encounter_type"], encounter["patient_mrn"], encounter["_fhir_id"]) == (
        "inpatient",
        "0012345",
        "e1",
    )


def test_references_to_resources_not_in_the_bundle_become_links() -> None:
    """A Patient or Encounter exported earlier: the row names it by logical id for a later step."""
    lab = {
        "resourceType": "Observation",
        "id": "lab-1",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
        "subject": {"reference": "Patient/p-old", "display": "李秀英"},
        "encounter": {"reference": "Encounter/e-old"},
        "effectiveDateTime": "2025-04-10T15:05:00+08:00",
        "valueQuantity": {"value": 128, "unit": "g/L"},
    }
    condition = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10_SYSTEM, "code": "J18.9"}]},
        "subject": {"reference": "urn:uuid:11111111-2222-4333-8444-555555555555"},
        "recordedDate": "2025-04-10T15:00:00+08:00",
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{BASE}/Observation/lab-1", "resource": lab},
            {"fullUrl": "urn:uuid:99999999-8888-4777-8666-555555555555", "resource": condition},
        ],
    }
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H)
    [row] = batch.records["lab_results"]
    assert (row["resident_id"], row["encounter_id"], row["lab_result_id"]) == (None, None, "lab-1")
    assert (row["_link_patient"], row["_link_encounter"], row["_fhir_id"]) == ("p-old", "e-old", "lab-1")
    assert "_rule" not in row and "_link_mrn" not in row
    [diagnosis] = batch.records["diagnoses"]
    assert diagnosis["_link_patient"] == "11111111-2222-4333-8444-555555555555"
    assert diagnosis["_fhir_id"] == "99999999-8888-4777-8666-555555555555"
    assert "_link_encounter" not in diagnosis and diagnosis["encounter_id"] is None


# --- what cannot be mapped -------------------------------------------------------------------


def test_a_broken_entry_is_a_record_of_its_own_and_every_reason_is_kept() -> None:
    bundle = transaction()
    entries = bundle["entry"]
    # Condition: SNOMED only, no ICD-10. Lab: a local code only, no LOINC, and a reference
    # range that is not a list.
    entries[2]["resource"]["code"]["coding"] = entries[2]["resource"]["code"]["coding"][:1]
    lab = entries[3]["resource"]
    lab["id"] = "lab-88"
    lab["code"]["coding"] = lab["code"]["coding"][:1]
    lab["referenceRange"] = "3.9-6.1"
    entries.append("not an entry")
    entries.append({"request": {"method": "DELETE", "url": "Patient/9"}})
    batch = read_fhir_file("zz-fahzu/fhir/tx.json", as_file(bundle), hospital_id=H)
    # The rest is read.
    assert [len(batch.records[d]) for d in ("patients", "encounters")] == [1, 1]
    assert not invalid(batch, "patients") and not invalid(batch, "encounters")
    [condition] = invalid(batch, "diagnoses")
    assert condition["_error"] == (
        f"entry 3 (Condition/{CONDITION_UUID.removeprefix('urn:uuid:')}): "
        f"code has no coding in {ICD10_SYSTEM}"
    )
    assert condition["_line"] == "3"
    assert json.loads(condition["_raw"]) == entries[2]
    # The columns that could be read are there.
    assert (condition["hospital_id"], condition["resident_id"], condition["encounter_id"]) == (
        H,
        WANG,
        "V2025-0001",
    )
    assert condition["icd10_code"] is None
    [row] = invalid(batch, "lab_results")
    assert row["_error"] == (
        f"entry 4 (Observation/lab-88): code has no coding in {LOINC}; referenceRange is not a list"
    )
    assert (row["_line"], row["value_num"], row["lab_result_id"]) == ("4", "6.8", "LIS-88")
    raw = json.loads(row["_raw"])
    assert raw["resource"]["valueQuantity"]["value"] == 6.8 and raw["fullUrl"] == LAB_UUID
    # Entries that are no resource at all: one Reject each.
    assert [r.reason for r in batch.rejects] == [
        "entry 7: not an entry but a JSON string",
        "entry 8: no resource object (request DELETE)",
    ]


def test_a_subject_that_is_not_a_patient_or_none_at_all_is_a_reason() -> None:
    bundle = transaction()
    condition = bundle["entry"][2]["resource"]
    group = dict(condition, id="c-group", subject={"reference": "Group/g1"})
    nobody = dict(condition, id="c-nobody")
    del nobody["subject"]
    bundle["entry"] += [{"resource": group}, {"resource": nobody}]
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H)
    errors = [r["_error"] for r in invalid(batch, "diagnoses")]
    assert errors == [
        "entry 7 (Condition/c-group): subject 'Group/g1' is a Group, not a Patient",
        "entry 8 (Condition/c-nobody): has no subject reference to a Patient",
    ]


def test_raw_is_cut_at_64k_characters() -> None:
    bundle = transaction()
    bundle["entry"][2]["resource"]["code"] = {"text": "高" * 70_000}
    [row] = read_fhir_file("f.json", as_file(bundle), hospital_id=H).records["diagnoses"]
    assert row["_rule"] == "fhir_entry_invalid"
    assert len(row["_raw"]) == 65536 and row["_raw"].startswith('{"fullUrl": "urn:uuid:')


# --- FHIR Bulk Data NDJSON -------------------------------------------------------------------


def ndjson(*resources: dict[str, Any] | str) -> list[bytes]:
    """One line each (a str goes as written), with the newline an exporter writes."""
    return [
        (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode() + b"\n" for r in resources
    ]


def bulk_export() -> dict[str, list[bytes]]:
    pid = {"reference": "Patient/p1"}
    return {
        "Patient.ndjson": ndjson(
            {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [
                    {"type": typed("MR"), "system": MRN_SYSTEM, "value": "0012345"},
                    {"type": typed("NNCHN"), "value": WANG},
                ],
                "name": [{"family": "王", "given": ["建国"]}],
                "gender": "male",
                "birthDate": "1978-03-12",
            },
            "",
            {
                "resourceType": "Patient",
                "id": "p2",
                "identifier": [{"type": typed("NNCHN"), "value": LI}],
                "name": [{"text": "李秀英"}],
                "gender": "female",
                "birthDate": "1992-08-27",
                "telecom": [{"system": "phone", "value": "13937100000"}],
            },
        ),
        "Encounter.000.ndjson": ndjson(
            {
                "resourceType": "Encounter",
                "id": "e1",
                "identifier": [{"type": typed("VN"), "value": "V1"}],
                "status": "finished",
                "class": {"system": ACT, "code": "EMER"},
                "subject": pid,
                "period": {"start": "2025-06-01T22:41:07+08:00", "end": "2025-06-02T03:10:00+08:00"},
            },
            '{"resourceType": "Encounter", "id": "e2", "status": ',
        ),
        "Condition.ndjson": ndjson(
            {
                "resourceType": "Condition",
                "id": "c1",
                "code": {"coding": [{"system": ICD10_SYSTEM, "code": "I10"}]},
                "subject": pid,
                "encounter": {"reference": "Encounter/e1"},
                "recordedDate": "2025-06-01T23:00:00+08:00",
            },
        ),
        "Observation_1.ndjson": ndjson(
            {
                "resourceType": "Observation",
                "id": "o1",
                "identifier": [{"type": typed("FILL"), "value": "LAB-1"}],
                "status": "final",
                "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
                "code": {"coding": [{"system": LOINC, "code": "94500-6"}]},
                "subject": {"reference": "Patient/p2"},
                "effectiveDateTime": "2025-04-10T15:05:00+08:00",
                "valueString": "阴性",
            },
            {
                "resourceType": "Observation",
                "id": "o2",
                "status": "final",
                "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "subject": pid,
                "valueQuantity": {"value": 150, "unit": "mmHg"},
            },
            # Filed in the wrong file: still read as what it is.
            {
                "resourceType": "Condition",
                "id": "c2",
                "code": {"coding": [{"system": ICD10_SYSTEM, "code": "J18.9"}]},
                "subject": {"reference": "Patient/p2"},
                "recordedDate": "2025-04-10T15:00:00+08:00",
            },
            "[1, 2, 3]",
        ),
        "MedicationRequest.ndjson": ndjson(
            {
                "resourceType": "MedicationRequest",
                "id": "m1",
                "identifier": [{"system": "http://hospital.example.org/orders", "value": "RX-1"}],
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": ATC, "code": "C09AA05"}],
                    "text": "雷米普利片",
                },
                "subject": pid,
                "encounter": {"reference": "Encounter/e1"},
                "dosageInstruction": [
                    {
                        "timing": {
                            "repeat": {"boundsPeriod": {"start": "2025-06-02"}},
                            "code": {"text": "qd"},
                        },
                        "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}],
                    }
                ],
            },
        ),
        "ImagingStudy.ndjson": ndjson(
            {
                "resourceType": "ImagingStudy",
                "id": "s1",
                "identifier": [
                    {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.10.543.7"},
                    {"type": typed("ACSN"), "value": "A77"},
                ],
                "status": "available",
                # The Patient inside: its identifiers give the values directly.
                "contained": [
                    {
                        "resourceType": "Patient",
                        "id": "pat",
                        "identifier": [{"type": typed("NNCHN"), "value": LI}],
                    }
                ],
                "subject": {"reference": "#pat"},
                "started": "2025-04-10T16:00:00+08:00",
                "modality": [{"system": DCM, "code": "CT"}],
                "numberOfSeries": 2,
                "series": [
                    {
                        "uid": "1.2.826.0.1.3680043.10.543.7.1",
                        "modality": {"system": DCM, "code": "CT"},
                        "numberOfInstances": 64,
                        "instance": [
                            {
                                "uid": "1.2.826.0.1.3680043.10.543.7.1.1",
                                "sopClass": {
                                    "system": "urn:ietf:rfc:3986",
                                    "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
                                },
                            }
                        ],
                        "started": "2025-04-10T16:01:00+08:00",
                    },
                    {
                        "uid": "1.2.826.0.1.3680043.10.543.7.2",
                        "modality": {"system": "urn:local", "code": "CT"},
                        "started": "2025-04-10T16:05:00+08:00",
                    },
                ],
            },
        ),
    }


def read_all(files: dict[str, list[bytes]]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    records: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, int] = {}
    for name, lines in files.items():
        key = f"zz-fahzu/fhir/{name}"
        for dataset, record in read_fhir_ndjson(key, lines, hospital_id=H, skipped=skipped):
            assert record["_source"] == key
            records.setdefault(dataset, []).append(record)
    return records, skipped


def test_bulk_ndjson_reads_each_resource_alone_and_keeps_bad_lines() -> None:
    records, skipped = read_all(bulk_export())
    assert skipped == {"Observation": 1}
    patients = records["patients"]
    assert [(p["_fhir_id"], p["_line"], p["resident_id"], p["patient_mrn"]) for p in patients] == [
        ("p1", "1", WANG, "0012345"),
        ("p2", "3", LI, None),  # line 2 is blank
    ]
    assert [p["hospital_id"] for p in patients] == [H, H]
    assert (patients[1]["name"], patients[1]["phone"]) == ("李秀英", "13937100000")
    good, broken = records["encounters"]
    assert (good["encounter_id"], good["encounter_type"], good["_link_patient"]) == ("V1", "emergency", "p1")
    assert (good["resident_id"], good["patient_mrn"], good["_fhir_id"]) == (None, None, "e1")
    # A line that is not JSON: a record of the file's dataset, with the line as written.
    assert broken["_rule"] == "malformed_line" and broken["_line"] == "2"
    assert broken["_error"].startswith("line 2: invalid JSON (")
    assert broken["_raw"] == '{"resourceType": "Encounter", "id": "e2", "status": '
    assert broken["hospital_id"] == H and broken["encounter_id"] is None
    c1, c2 = records["diagnoses"]
    assert (c1["_link_patient"], c1["_link_encounter"], c1["encounter_id"]) == ("p1", "e1", None)
    assert (c1["icd10_code"], c1["diagnosed_at"], c1["hospital_id"]) == ("I10", "2025-06-01T23:00:00", H)
    # The Condition from the Observation file: read by its own type, its line in that file.
    assert (c2["_fhir_id"], c2["_source"], c2["_line"]) == ("c2", "zz-fahzu/fhir/Observation_1.ndjson", "3")
    assert c2["_link_patient"] == "p2"
    lab, bad = records["lab_results"]
    assert (lab["lab_result_id"], lab["value_text"], lab["loinc_code"], lab["_link_patient"]) == (
        "LAB-1",
        "阴性",
        "94500-6",
        "p2",
    )
    assert "_link_encounter" not in lab and lab["encounter_id"] is None
    assert (bad["_rule"], bad["_line"], bad["_raw"]) == ("malformed_line", "4", "[1, 2, 3]")
    assert bad["_error"] == "line 4: not a FHIR resource: a JSON array"
    [medication] = records["medications"]
    assert (medication["medication_id"], medication["atc_code"], medication["dose"]) == (
        "RX-1",
        "C09AA05",
        "5",
    )
    assert (medication["_link_patient"], medication["_link_encounter"]) == ("p1", "e1")
    assert (medication["start_date"], medication["frequency"]) == ("2025-06-02", "qd")
    [study] = records["imaging_studies"]
    assert (study["study_instance_uid"], study["accession_number"], study["resident_id"]) == (
        "1.2.826.0.1.3680043.10.543.7",
        "A77",
        LI,
    )
    assert "_link_patient" not in study and study["study_date"] == "2025-04-10"
    first, second = records["imaging_series"]
    assert (first["series_instance_uid"], first["sop_class_uid"], first["resident_id"]) == (
        "1.2.826.0.1.3680043.10.543.7.1",
        "1.2.840.10008.5.1.4.1.1.2",
        LI,
    )
    assert (first["series_date"], first["number_of_instances"], first["_fhir_id"]) == (
        "2025-04-10",
        "64",
        "s1",
    )
    assert second["_rule"] == "fhir_entry_invalid"
    assert second["_error"] == f"line 1 (ImagingStudy/s1) series 2: modality has no coding in {DCM}"
    assert second["series_instance_uid"] == "1.2.826.0.1.3680043.10.543.7.2"


def test_bulk_ndjson_is_read_as_it_streams() -> None:
    pulled: list[int] = []

    def lines() -> Iterator[bytes]:
        for i, line in enumerate(bulk_export()["Patient.ndjson"]):
            pulled.append(i)
            yield line

    records = read_fhir_ndjson("Patient.ndjson", lines(), hospital_id=H)
    assert pulled == []
    assert next(records)[1]["_fhir_id"] == "p1"
    assert pulled == [0]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("zz-fahzu/fhir/Patient.ndjson", "Patient"),
        ("Patient.000.ndjson", "Patient"),
        ("Patient_1.ndjson", "Patient"),
        ("MedicationRequest-2.ndjson", "MedicationRequest"),
        ("imagingstudy.ndjson", "ImagingStudy"),
        ("Practitioner.ndjson", "Practitioner"),
        ("export.ndjson", None),
        ("bundle-0001.ndjson", "Bundle"),
        ("Patient.json", None),
    ],
)
def test_resource_type_of_file(name: str, kind: str | None) -> None:
    assert resource_type_of_file(name) == kind


def test_bad_lines_of_a_file_naming_no_type_are_unplaced_and_of_an_unread_type_skipped() -> None:
    lines = ndjson("{oops", {"resourceType": "Practitioner", "id": "d1"})
    unplaced = list(read_fhir_ndjson("h/fhir/export.ndjson", lines, hospital_id=H))
    assert [(d, r["_rule"], r["_line"], r["_raw"]) for d, r in unplaced] == [
        (UNPLACED, "malformed_line", "1", "{oops")
    ]
    skipped: dict[str, int] = {}
    assert list(read_fhir_ndjson("Practitioner.ndjson", lines, hospital_id=H, skipped=skipped)) == []
    assert skipped == {"Practitioner": 2}


def test_a_bundle_on_an_ndjson_line_is_read_as_one() -> None:
    records = clean_records()
    bundle = records_to_bundle(
        {"patients": records["patients"], "diagnoses": records["diagnoses"][:1]}, bundle_id="b"
    )
    bundle["entry"].append({"fullUrl": "urn:uuid:x"})  # no resource: a reason, kept
    lines = ndjson("", bundle)
    skipped: dict[str, int] = {}
    got = list(read_fhir_ndjson("h/fhir/bundle-0001.ndjson", lines, hospital_id=H, skipped=skipped))
    assert [(d, r["_line"]) for d, r in got] == [
        ("patients", "2"),
        ("patients", "2"),
        ("diagnoses", "2"),
        (UNPLACED, "2"),
    ]
    assert [r["resident_id"] for _, r in got[:3]] == [WANG, LI, WANG]
    assert got[3][1]["_error"] == f"line 2: entry {len(bundle['entry'])}: no resource object"
    assert got[3][1]["_rule"] == "fhir_entry_invalid"
    assert skipped == {"Organization": 1}


# --- our writer's NDJSON, back -----------------------------------------------------------------


def link(records: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """What the later step does, in miniature: `_link_patient` / `_link_encounter` → the values
    of the Patient / Encounter record with that `_fhir_id`; then the meta fields go."""
    patients = {p["_fhir_id"]: p for p in records.get("patients", [])}
    encounters = {e["_fhir_id"]: e for e in records.get("encounters", [])}
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset, rows in records.items():
        for row in rows:
            row = dict(row)
            assert "_rule" not in row, row["_error"]
            if (pid := row.get("_link_patient")) is not None:
                row["resident_id"] = patients[pid]["resident_id"]
                if "patient_mrn" in row:
                    row["patient_mrn"] = patients[pid]["patient_mrn"]
            if (eid := row.get("_link_encounter")) is not None:
                row["encounter_id"] = encounters[eid]["encounter_id"]
            out.setdefault(dataset, []).append(columns(row))
    return out


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in references(v)]
    if isinstance(node, list):
        return [r for v in node for r in references(v)]
    return []


@pytest.mark.parametrize("make", [clean_records, defective_records])
def test_records_to_ndjson_and_back(make: Any) -> None:
    records = make()
    resources = records_to_ndjson(records)
    files = {
        f"{kind}.ndjson": [json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rs]
        for kind, rs in resources.items()
    }
    got, skipped = read_all(files)
    assert link(got) == records
    assert skipped == {"Organization": len(resources["Organization"])}
    # As Bulk Data refers: relative `Type/id`, or a contained resource; no reference-only
    # Patients (only studies holding the series whose own study is not exported).
    for kind, rs in resources.items():
        for r in rs:
            for reference in references(r):
                assert reference.startswith("#") or reference.count("/") == 1, (kind, reference)
    assert len(resources["Patient"]) == len(records["patients"])
    linked = [r for rs in got.values() for r in rs if "_link_patient" in r or "_link_encounter" in r]
    assert linked  # the round trip did go through the links


# --- ECGs and pathology reports, as the HL7 examples write them --------------------------------

ID_CARD_SYSTEM = "http://hospital.example.org/id-card"  # untyped: only the profile names it
PROFILE = FhirSystems(mrn_systems=(MRN_SYSTEM,), resident_id_systems=(ID_CARD_SYSTEM,))
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
WAVEFORM_UID = "1.2.826.0.1.3680043.10.2123456.31.1"
ECG_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c01"
REPORT_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c02"
SPECIMEN_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c03"
WAVEFORM_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c04"
ECG_CENTRE_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c05"
PATHOLOGY_CENTRE_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c06"
CARDIOLOGIST_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c07"
ORDER_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c08"
REQUEST_UUID = "urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c09"


def loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}]}


def ecg_observation() -> dict[str, Any]:
    """A resting 12-lead ECG read by the provincial ECG centre: the measurements and the reading
    as components (the HL7 EKG examples' codes), seconds for one interval, SNOMED CT rhythm."""
    return {
        "resourceType": "Observation",
        "identifier": [
            {"type": typed("FILL"), "system": "http://hospital.example.org/ecg", "value": "ECG-2025-031"}
        ],
        # The hospital's own order, and the teleconsultation that sent it to the centre.
        "basedOn": [{"reference": ORDER_UUID}, {"reference": REQUEST_UUID}],
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "procedure", "display": "Procedure"}]}],
        "code": loinc("34534-8", "12 lead EKG panel"),
        "subject": {"reference": PATIENT_UUID},
        "encounter": {"reference": ENCOUNTER_UUID},
        "effectiveDateTime": "2025-03-02T01:05:12Z",  # 09:05:12 in Zhengzhou
        "issued": "2025-03-02T09:40:00+08:00",
        "performer": [
            {"reference": ECG_CENTRE_UUID, "display": "河南省远程心电诊断中心"},
            {"reference": CARDIOLOGIST_UUID},
        ],
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "A",
                    }
                ]
            }
        ],
        "derivedFrom": [{"reference": WAVEFORM_UUID}],
        "component": [
            {
                "code": loinc("8867-4", "Heart rate"),
                "valueQuantity": {"value": 118, "unit": "beats/minute", "system": UCUM, "code": "/min"},
            },
            {
                "code": loinc("8633-2", "QRS duration"),
                "valueQuantity": {"value": 0.096, "unit": "s", "system": UCUM, "code": "s"},
            },
            {
                "code": loinc("8634-0", "Q-T interval"),
                "valueQuantity": {"value": 330, "unit": "ms", "system": UCUM, "code": "ms"},
            },
            {
                "code": loinc("8636-5", "Q-T interval corrected"),
                "valueQuantity": {"value": 463, "unit": "ms", "system": UCUM, "code": "ms"},
            },
            {
                "code": loinc("76281-5", "Type of arrhythmia on EKG"),
                "valueCodeableConcept": {
                    "coding": [{"system": SNOMED, "code": "49436004", "display": "Atrial fibrillation"}]
                },
            },
            {
                "code": loinc("8601-7", "EKG impression"),
                "valueCodeableConcept": {
                    "coding": [
                        {"system": SNOMED, "code": "49436004"},
                        {"system": ICD10_SYSTEM, "code": "I48.9"},
                    ],
                    "text": "心房颤动伴快速心室率",
                },
            },
        ],
    }


def pathology_report() -> dict[str, Any]:
    """A gastric biopsy diagnosed by the provincial pathology centre: surgical pathology, the
    Specimen a resource of its own, an ICD-10 and an ICD-O-3 conclusion code, corrected."""
    return {
        "resourceType": "DiagnosticReport",
        "identifier": [
            {"type": typed("ACSN"), "system": "http://hospital.example.org/pathology", "value": "S25-0042"}
        ],
        "basedOn": [
            {
                "type": "ServiceRequest",
                "identifier": {"system": f"urn:medshare:teleconsult:{H}", "value": "T00000008"},
            }
        ],
        "status": "corrected",
        "category": [{"coding": [{"system": V2_0074, "code": "SP", "display": "Surgical Pathology"}]}],
        "code": loinc("60568-3", "Pathology Synoptic report"),
        "subject": {"reference": PATIENT_UUID},
        "encounter": {"reference": ENCOUNTER_UUID},
        "effectiveDateTime": "2025-03-02T08:30:00+08:00",
        "issued": "2025-03-05T10:15:00+08:00",
        "performer": [{"reference": PATHOLOGY_CENTRE_UUID}],
        "resultsInterpreter": [{"reference": "Practitioner/wu-7", "display": "吴医生"}],
        "specimen": [{"reference": SPECIMEN_UUID}],
        "conclusion": "胃窦黏膜腺癌，中分化",
        "conclusionCode": [
            {
                "coding": [
                    {"system": ICD10_SYSTEM, "code": "C16.9"},
                    {"system": ICDO3, "code": "8140/3", "display": "Adenocarcinoma, NOS"},
                ]
            }
        ],
    }


def specialist_bundle() -> dict[str, Any]:
    patient = wang()
    for ident in patient["identifier"]:
        del ident["type"]
    patient["identifier"][1]["system"] = ID_CARD_SYSTEM
    encounter = {
        "resourceType": "Encounter",
        "identifier": [{"type": typed("VN"), "value": "V2025-0001"}],
        "status": "finished",
        "class": {"system": ACT, "code": "AMB"},
        "subject": {"reference": PATIENT_UUID},
        "period": {"start": "2025-03-02T08:10:00+08:00"},
    }

    def centre(hospital: str, name: str) -> dict[str, Any]:
        return {
            "resourceType": "Organization",
            "identifier": [{"system": HOSPITAL_SYSTEM, "value": hospital}],
            "name": name,
        }

    def request(system: str, value: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "identifier": [{"system": system, "value": value}],
            "status": "completed",
            "intent": "order",
            "code": loinc("34534-8", "12 lead EKG panel"),
            "subject": {"reference": PATIENT_UUID},
        }

    waveform = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{WAVEFORM_UID}"}],
        "status": "available",
        "modality": [{"system": DCM, "code": "ECG"}],
        "subject": {"reference": PATIENT_UUID},
        "started": "2025-03-02T09:05:12+08:00",
    }
    specimen = {
        "resourceType": "Specimen",
        "accessionIdentifier": {"system": "http://hospital.example.org/pathology", "value": "S25-0042"},
        "type": {
            "coding": [{"system": SNOMED, "code": "258415003", "display": "Biopsy sample"}],
            "text": "胃黏膜活检",
        },
        "subject": {"reference": PATIENT_UUID},
        "collection": {
            "collectedDateTime": "2025-03-02T00:30:00Z",
            "bodySite": {"coding": [{"system": SNOMED, "code": "69695003", "display": "Stomach structure"}]},
        },
    }
    blood_count = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "HM", "display": "Hematology"}]}],
        "code": loinc("58410-2", "CBC panel - Blood by Automated count"),
        "subject": {"reference": PATIENT_UUID},
    }
    doctor = {"resourceType": "Practitioner", "name": [{"family": "周", "given": ["明"]}]}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            post(PATIENT_UUID, patient),
            post(ENCOUNTER_UUID, encounter),
            post(ECG_CENTRE_UUID, centre("zz-ecg-centre", "河南省远程心电诊断中心")),
            post(PATHOLOGY_CENTRE_UUID, centre("zz-path-centre", "河南省病理诊断中心")),
            post(CARDIOLOGIST_UUID, doctor),
            post(ORDER_UUID, request("http://hospital.example.org/orders", "ORD-1")),
            post(REQUEST_UUID, request(f"urn:medshare:teleconsult:{H}", "T00000007")),
            post(WAVEFORM_UUID, waveform),
            post(ECG_UUID, ecg_observation()),
            post(SPECIMEN_UUID, specimen),
            post(REPORT_UUID, pathology_report()),
            post("urn:uuid:3a9e0f4c-7b21-4d8e-9c55-0e6f1a2b3c10", blood_count),
        ],
    }


def test_an_hl7_style_ecg_and_pathology_report_are_read_column_by_column() -> None:
    batch = read_fhir_file(
        "zz-fahzu/fhir/tx.json", as_file(specialist_bundle()), hospital_id=H, systems=PROFILE
    )
    assert batch.rejects == []
    assert batch.skipped == {
        "Organization": 2,
        "Practitioner": 1,
        "ServiceRequest": 2,
        "Specimen": 1,
        "DiagnosticReport": 1,  # the blood count: not pathology
    }
    [ecg] = batch.records["ecg_reports"]
    assert columns(ecg) == {
        "hospital_id": H,  # neither Encounter nor Patient names one: the landing folder's
        "ecg_id": "ECG-2025-031",  # typed FILL
        "encounter_id": "V2025-0001",
        "patient_mrn": "0012345",  # by the profile's systems: the identifiers carry no type
        "resident_id": WANG,
        "teleconsult_id": "T00000007",  # not the hospital's own order
        "reading_hospital_id": "zz-ecg-centre",
        "study_instance_uid": WAVEFORM_UID,
        "recorded_at": "2025-03-02T09:05:12",
        "reported_at": "2025-03-02T09:40:00",
        "lead_count": "12",  # a 12 lead EKG panel
        "heart_rate_bpm": "118",
        "pr_interval_ms": None,
        "qrs_duration_ms": "96",  # 0.096 s
        "qt_interval_ms": "330",
        "qtc_interval_ms": "463",
        "rhythm": "atrial_fibrillation",  # SNOMED CT 49436004
        "findings": "心房颤动伴快速心室率",
        "conclusion_code": "I48.9",
        "report_status": "final",
        "reading_physician": "周明",  # the Practitioner's name: the reference has no display
    }
    assert meta(ecg) == {
        "_source": "zz-fahzu/fhir/tx.json",
        "_line": "9",
        "_fhir_id": ECG_UUID.removeprefix("urn:uuid:"),
    }
    [report] = batch.records["pathology_reports"]
    assert columns(report) == {
        "hospital_id": H,
        "pathology_id": "S25-0042",  # typed ACSN
        "encounter_id": "V2025-0001",
        "patient_mrn": "0012345",
        "resident_id": WANG,
        "teleconsult_id": "T00000008",  # a logical reference
        "reading_hospital_id": "zz-path-centre",
        "specimen_type": "biopsy",  # SNOMED CT 258415003
        "specimen_site": "Stomach structure",  # no text: the coding's display
        "collected_at": "2025-03-02T08:30:00",
        "reported_at": "2025-03-05T10:15:00",
        "diagnosis_code": "C16.9",
        "diagnosis_text": "胃窦黏膜腺癌，中分化",
        "behaviour": "malignant",  # ICD-O-3 8140/3
        "report_status": "amended",  # corrected is a kind of amended
        "pathologist": "吴医生",  # the display of a Practitioner elsewhere
    }
    # The waveform is an imaging study of its own.
    [study] = batch.records["imaging_studies"]
    assert (study["study_instance_uid"], study["modality"]) == (WAVEFORM_UID, "ECG")
    # Without the profile's systems the identifiers name nobody.
    plain = read_fhir_file("f.json", as_file(specialist_bundle()), hospital_id=H)
    assert [(r["patient_mrn"], r["resident_id"]) for r in plain.records["ecg_reports"]] == [(None, None)]


def test_ecg_and_pathology_from_other_shapes() -> None:
    """The same readings in other places FHIR allows: a contained Specimen with a collection
    period, the reading as the Observation's value, an ECG without category, `s` and `ms`, and
    an untyped display for the physician."""
    bundle = specialist_bundle()
    entries = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    ecg = entries[ECG_UUID]
    del ecg["category"]
    ecg["code"] = loinc("11524-6", "EKG study")  # leads: not said
    ecg["performer"] = [{"display": "周医生"}, {"reference": ECG_CENTRE_UUID}]
    ecg["component"] = [c for c in ecg["component"] if c["code"]["coding"][0]["code"] != "8601-7"]
    ecg["component"].append(
        {"code": loinc("8625-6", "P-R interval"), "valueQuantity": {"value": 0.2, "unit": "s"}}
    )
    ecg["valueCodeableConcept"] = {
        "coding": [{"system": SNOMED, "code": "49436004", "display": "Atrial fibrillation"}]
    }
    ecg["derivedFrom"] = [
        {
            "type": "ImagingStudy",
            "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{WAVEFORM_UID}"},
        }
    ]
    report = entries[REPORT_UUID]
    report["contained"] = [
        {
            "resourceType": "Specimen",
            "id": "sp1",
            "type": {"text": "细胞学"},  # words only
            "collection": {
                "collectedPeriod": {"start": "2025-03-02T08:20:00+08:00"},
                "bodySite": {"text": "甲状腺"},
            },
        }
    ]
    report["specimen"] = [{"reference": "#sp1"}]
    report["status"] = "partial"
    report["category"] = [{"coding": [{"system": "http://hl7.org/fhir/v2/0074", "code": "CP"}]}]  # pre-R4 URL
    report["code"] = {"text": "细胞病理报告"}
    del report["conclusion"]
    report["conclusionCode"] = [
        {"coding": [{"system": SNOMED, "code": "255052006"}], "text": "甲状腺乳头状癌"}
    ]
    report["extension"] = [
        {
            "url": "urn:medshare:fhir:behaviour",
            "valueCoding": {"system": "urn:medshare:behaviour", "code": "in_situ"},
        }
    ]
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H, systems=PROFILE)
    assert (
        batch.rejects == [] and not invalid(batch, "ecg_reports") and not invalid(batch, "pathology_reports")
    )
    [ecg_row] = batch.records["ecg_reports"]
    assert (ecg_row["pr_interval_ms"], ecg_row["qrs_duration_ms"], ecg_row["lead_count"]) == (
        "200",
        "96",
        None,
    )
    # The reading coded in SNOMED CT alone: its words, but no ICD-10 conclusion code.
    assert (ecg_row["findings"], ecg_row["conclusion_code"]) == ("Atrial fibrillation", None)
    assert (ecg_row["reading_physician"], ecg_row["reading_hospital_id"]) == ("周医生", "zz-ecg-centre")
    assert ecg_row["study_instance_uid"] == WAVEFORM_UID
    [row] = batch.records["pathology_reports"]
    # A specimen type in words: as written, for the profile's spellings (细胞学 → cytology).
    assert (row["specimen_type"], row["specimen_site"]) == ("细胞学", "甲状腺")
    assert (row["collected_at"], row["report_status"], row["behaviour"]) == (
        "2025-03-02T08:20:00",
        "preliminary",
        "in_situ",
    )
    # Another vocabulary's diagnosis: as written, for validation to judge; its words are the text.
    assert (row["diagnosis_code"], row["diagnosis_text"]) == ("255052006", "甲状腺乳头状癌")
    assert batch.skipped["Specimen"] == 1  # the bundled one, no longer referred to


def test_what_cannot_be_read_of_an_ecg_or_pathology_report_is_a_reason() -> None:
    bundle = specialist_bundle()
    ecg, report = ecg_observation(), pathology_report()
    nobody_ecg = {**ecg, "id": "ecg-nobody"}
    del nobody_ecg["subject"]
    nobody_report = {**report, "id": "report-nobody"}
    del nobody_report["subject"]
    odd_units = {**ecg, "id": "ecg-units"}
    odd_units["component"] = [
        {"code": loinc("8625-6", "P-R interval"), "valueQuantity": {"value": 16, "unit": "mm", "code": "mm"}},
        {"code": loinc("76281-5", "Type of arrhythmia on EKG"), "valueQuantity": {"value": 1}},
        {"code": loinc("8867-4", "Heart rate"), "valueQuantity": {"value": 75, "unit": "/min"}},
    ]
    unseen_waveform = {**ecg, "id": "ecg-waveform", "derivedFrom": [{"reference": "ImagingStudy/w9"}]}
    unseen_specimen = {**report, "id": "report-specimen", "specimen": [{"reference": "Specimen/s9"}]}
    bundle["entry"] += [
        {"resource": r} for r in (nobody_ecg, odd_units, unseen_waveform, nobody_report, unseen_specimen)
    ]
    n = len(bundle["entry"])
    batch = read_fhir_file("f.json", as_file(bundle), hospital_id=H, systems=PROFILE)
    assert batch.rejects == []
    errors = {
        r["_fhir_id"]: r["_error"]
        for r in invalid(batch, "ecg_reports") + invalid(batch, "pathology_reports")
    }
    assert errors == {
        "ecg-nobody": f"entry {n - 4} (Observation/ecg-nobody): has no subject reference to a Patient",
        "ecg-units": f"entry {n - 3} (Observation/ecg-units): component 8625-6 (pr_interval_ms) is in 'mm', "
        "not ms, msec, s; component 76281-5 (rhythm) holds valueQuantity, not a valueCodeableConcept",
        "ecg-waveform": f"entry {n - 2} (Observation/ecg-waveform): derivedFrom 'ImagingStudy/w9' is an "
        "ImagingStudy whose DICOM study UID (identifier urn:dicom:uid) is not in this bundle",
        "report-nobody": f"entry {n - 1} (DiagnosticReport/report-nobody): "
        "has no subject reference to a Patient",
        "report-specimen": f"entry {n} (DiagnosticReport/report-specimen): specimen 'Specimen/s9' is not a "
        "Specimen of this bundle or contained: no specimen type, site or collection time to read",
    }
    # Every other column of a rejected entry is read.
    units = next(r for r in batch.records["ecg_reports"] if r["_fhir_id"] == "ecg-units")
    assert (units["resident_id"], units["heart_rate_bpm"], units["pr_interval_ms"], units["rhythm"]) == (
        WANG,
        "75",
        None,
        None,
    )
    nobody = next(r for r in batch.records["pathology_reports"] if r["_fhir_id"] == "report-nobody")
    assert (nobody["hospital_id"], nobody["resident_id"], nobody["specimen_type"]) == (H, None, "biopsy")
    assert len([r for r in batch.records["ecg_reports"] if "_rule" not in r]) == 1


def test_bad_ecg_and_pathology_values_reach_the_contract_rules(local_spark: SparkSession) -> None:
    """What the reader cannot judge goes through as written — an unknown rhythm, a report issued
    before its specimen was taken — and is quarantined by the contract's rules, with a reason;
    an entry without subject is quarantined with the reader's."""
    bundle = specialist_bundle()
    entries = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    svt = {"system": SNOMED, "code": "426761007", "display": "Supraventricular tachycardia"}
    odd_rhythm = {**ecg_observation(), "id": "ecg-svt"}
    odd_rhythm["component"] = [
        {**c, "valueCodeableConcept": {"coding": [svt]}} if c["code"]["coding"][0]["code"] == "76281-5" else c
        for c in odd_rhythm["component"]
    ]
    entries[REPORT_UUID]["issued"] = "2025-03-01T10:00:00+08:00"  # collected 2025-03-02 08:30
    nobody = {**ecg_observation(), "id": "ecg-nobody"}
    del nobody["subject"]
    bundle["entry"] += [{"resource": odd_rhythm}, {"resource": nobody}]
    batch = read_fhir_file("zz-fahzu/fhir/tx.json", as_file(bundle), hospital_id=H, systems=PROFILE)
    contracts = load_contracts(PLATFORM)
    verdicts: dict[str | None, tuple[list[str], str]] = {}
    for dataset in ("ecg_reports", "pathology_reports"):
        contract = contracts[dataset]
        names = [*contract.column_names, "_source", "_fhir_id", "_rule", "_error"]
        schema = StructType([StructField(n, StringType()) for n in names])
        rows = [[r.get(n) for n in names] for r in batch.records[dataset]]
        checked = validate(
            local_spark.createDataFrame(rows, schema),
            contract,
            city_hospitals=[H],
            all_hospitals=[H, "zz-ecg-centre", "zz-path-centre"],
            now_local=dt.datetime(2026, 6, 30, 12),
        )
        for row in checked.select("_fhir_id", "_rules", "_reason").collect():
            verdicts[row["_fhir_id"]] = (list(row["_rules"]), row["_reason"])
    rhythms = ", ".join(contracts["ecg_reports"].column("rhythm").allowed or ())
    assert verdicts == {
        ECG_UUID.removeprefix("urn:uuid:"): ([], ""),  # the example itself breaks no rule
        "ecg-svt": (["value_not_allowed"], f"rhythm: '426761007' is not one of {rhythms}"),
        "ecg-nobody": (
            ["fhir_entry_invalid"],
            f"entry {len(bundle['entry'])} (Observation/ecg-nobody): has no subject reference to a Patient",
        ),
        REPORT_UUID.removeprefix("urn:uuid:"): (
            ["reported_before_collected"],
            "reported_at: 2025-03-01T10:00:00 is before collected_at 2025-03-02T08:30:00",
        ),
    }
