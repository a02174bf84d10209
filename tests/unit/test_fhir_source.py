"""FHIR R4 Bundles ↔ raw records: exact round trip, a structurally sound bundle, records with
reasons for what cannot be mapped, and bad values passed through untouched. (Standard FHIR from
other systems and Bulk Data NDJSON: test_fhir_standard.py.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ingestion.sources.fhir import (
    COLUMNS,
    FULL_URL_BASE,
    ICD10_SYSTEM,
    LOINC_SYSTEM,
    FhirBatch,
    bundle_to_records,
    read_fhir_file,
    records_to_bundle,
)
from lakehouse.contracts import load_contracts

PLATFORM = Path(__file__).resolve().parents[2] / "platform"
H = "zz-fahzu"
WANG, LI = "410105197803120416", "410322199208271080"
CT_STUDY = "1.2.826.0.1.3680043.10.543.20250410.1"
DX_STUDY = "1.2.826.0.1.3680043.10.543.20250302.7"
ECG_WAVEFORM = "1.2.826.0.1.3680043.10.2123456.31.1"
ECG_CENTRE, PATHOLOGY_CENTRE = "zz-ecg-centre", "zz-path-centre"


def clean_records() -> dict[str, list[dict[str, str | None]]]:
    """Two patients of one hospital across every FHIR dataset, some optional values None."""
    return {
        "patients": [
            {
                "hospital_id": H,
                "patient_mrn": "ZZ-FAHZU-0000123",
                "resident_id": WANG,
                "name": "王建国",
                "sex": "M",
                "birth_date": "1978-03-12",
                "phone": "13803712345",
                "address": "郑州市金水区花园路45号",
                "county_code": "410105",
                "registered_at": "2025-03-02T08:15:00",
            },
            {
                "hospital_id": H,
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "name": "李秀英",
                "sex": "F",
                "birth_date": "1992-08-27",
                "phone": None,
                "address": None,
                "county_code": "410322",
                "registered_at": "2025-04-10T13:02:41",
            },
        ],
        "encounters": [
            {
                "hospital_id": H,
                "encounter_id": "E00000101",
                "patient_mrn": "ZZ-FAHZU-0000123",
                "resident_id": WANG,
                "encounter_type": "outpatient",
                "department": "cardiology",
                "admit_time": "2025-03-02T09:10:00",
                "discharge_time": "2025-03-02T09:55:00",
                "referred_from_hospital_id": None,
            },
            {
                "hospital_id": H,
                "encounter_id": "E00000102",
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "encounter_type": "inpatient",
                "department": "respiratory",
                "admit_time": "2025-04-10T14:20:00",
                "discharge_time": None,
                "referred_from_hospital_id": "zz-xy-county",
            },
            {
                "hospital_id": H,
                "encounter_id": "E00000103",
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "encounter_type": "emergency",
                "department": None,
                "admit_time": "2025-06-01T22:41:07",
                "discharge_time": "2025-06-02T03:10:00",
                "referred_from_hospital_id": None,
            },
        ],
        "diagnoses": [
            {
                "hospital_id": H,
                "encounter_id": "E00000101",
                "diagnosis_seq": "1",
                "resident_id": WANG,
                "icd10_code": "I10",
                "diagnosis_type": "primary",
                "diagnosed_at": "2025-03-02T09:30:00",
            },
            {
                "hospital_id": H,
                "encounter_id": "E00000101",
                "diagnosis_seq": "2",
                "resident_id": WANG,
                "icd10_code": "E11.9",
                "diagnosis_type": "secondary",
                "diagnosed_at": "2025-03-02T09:50:00",
            },
            {
                "hospital_id": H,
                "encounter_id": "E00000102",
                "diagnosis_seq": "1",
                "resident_id": LI,
                "icd10_code": "J18.9",
                "diagnosis_type": "primary",
                "diagnosed_at": "2025-04-10T15:00:00",
            },
        ],
        "lab_results": [
            {
                "hospital_id": H,
                "lab_result_id": "L000000011",
                "encounter_id": "E00000101",
                "resident_id": WANG,
                "loinc_code": "2345-7",
                "value_num": "6.8",
                "value_text": None,
                "unit": "mmol/L",
                "reference_low": "3.9",
                "reference_high": "6.1",
                "abnormal_flag": "H",
                "collected_at": "2025-03-02T09:25:00",
            },
            {
                "hospital_id": H,
                "lab_result_id": "L000000012",
                "encounter_id": "E00000102",
                "resident_id": LI,
                "loinc_code": "718-7",
                "value_num": "128",
                "value_text": None,
                "unit": "g/L",
                "reference_low": "115",
                "reference_high": "150",
                "abnormal_flag": "N",
                "collected_at": "2025-04-10T15:05:00",
            },
            {
                "hospital_id": H,
                "lab_result_id": "L000000013",
                "encounter_id": "E00000102",
                "resident_id": LI,
                "loinc_code": "94500-6",
                "value_num": None,
                "value_text": "阴性",
                "unit": None,
                "reference_low": None,
                "reference_high": None,
                "abnormal_flag": None,
                "collected_at": "2025-04-10T15:05:00",
            },
            # A number as the lab wrote it ("5.20") and a remark beside it.
            {
                "hospital_id": H,
                "lab_result_id": "L000000014",
                "encounter_id": "E00000103",
                "resident_id": LI,
                "loinc_code": "2823-3",
                "value_num": "5.20",
                "value_text": "溶血",
                "unit": "mmol/L",
                "reference_low": "3.5",
                "reference_high": "5.3",
                "abnormal_flag": "N",
                "collected_at": "2025-06-01T23:00:00",
            },
        ],
        "medications": [
            {
                "hospital_id": H,
                "medication_id": "M000000021",
                "encounter_id": "E00000101",
                "resident_id": WANG,
                "atc_code": "C09AA05",
                "drug_name": "雷米普利片",
                "dose": "5",
                "dose_unit": "mg",
                "route": "oral",
                "frequency": "qd",
                "start_date": "2025-03-02",
                "end_date": "2025-04-01",
            },
            {
                "hospital_id": H,
                "medication_id": "M000000022",
                "encounter_id": "E00000102",
                "resident_id": LI,
                "atc_code": "J01DD04",
                "drug_name": "注射用头孢曲松钠",
                "dose": "2.0",
                "dose_unit": "g",
                "route": "iv",
                "frequency": "qd",
                "start_date": "2025-04-10",
                "end_date": None,
            },
            {
                "hospital_id": H,
                "medication_id": "M000000023",
                "encounter_id": "E00000103",
                "resident_id": LI,
                "atc_code": "N02BE01",
                "drug_name": None,
                "dose": None,
                "dose_unit": None,
                "route": None,
                "frequency": None,
                "start_date": "2025-06-01",
                "end_date": None,
            },
        ],
        "imaging_studies": [
            {
                "hospital_id": H,
                "study_instance_uid": CT_STUDY,
                "accession_number": "A00000077",
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "encounter_id": "E00000102",
                "modality": "CT",
                "body_part": "CHEST",
                "study_date": "2025-04-10",
                "study_description": "CT chest",
                "referring_physician": "张医生",
                "number_of_series": "2",
            },
            # From the PACS alone: no MRN, accession, encounter or description.
            {
                "hospital_id": H,
                "study_instance_uid": DX_STUDY,
                "accession_number": None,
                "patient_mrn": None,
                "resident_id": WANG,
                "encounter_id": None,
                "modality": "DX",
                "body_part": None,
                "study_date": "2025-03-02",
                "study_description": None,
                "referring_physician": None,
                "number_of_series": None,
            },
        ],
        "imaging_series": [
            {
                "hospital_id": H,
                "series_instance_uid": f"{CT_STUDY}.1",
                "study_instance_uid": CT_STUDY,
                "resident_id": LI,
                "modality": "CT",
                "body_part": "CHEST",
                "series_description": "axial 5mm",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "number_of_instances": "64",
                "series_date": "2025-04-10",
            },
            {
                "hospital_id": H,
                "series_instance_uid": f"{CT_STUDY}.2",
                "study_instance_uid": CT_STUDY,
                "resident_id": LI,
                "modality": "CT",
                "body_part": "CHEST",
                "series_description": None,
                "sop_class_uid": None,
                "number_of_instances": "3",
                "series_date": "2025-04-10",
            },
            {
                "hospital_id": H,
                "series_instance_uid": f"{DX_STUDY}.1",
                "study_instance_uid": DX_STUDY,
                "resident_id": WANG,
                "modality": "DX",
                "body_part": None,
                "series_description": None,
                "sop_class_uid": None,
                "number_of_instances": None,
                "series_date": "2025-03-02",
            },
        ],
        "ecg_reports": [
            # Read remotely by the ECG centre, from a DICOM waveform: every column but one.
            {
                "hospital_id": H,
                "ecg_id": "ECG00000031",
                "encounter_id": "E00000101",
                "patient_mrn": "ZZ-FAHZU-0000123",
                "resident_id": WANG,
                "teleconsult_id": "T00000007",
                "reading_hospital_id": ECG_CENTRE,
                "study_instance_uid": ECG_WAVEFORM,
                "recorded_at": "2025-03-02T09:05:12",
                "reported_at": "2025-03-02T09:40:00",
                "lead_count": "12",
                "heart_rate_bpm": "118",
                "pr_interval_ms": None,  # no P waves in atrial fibrillation
                "qrs_duration_ms": "96",
                "qt_interval_ms": "330",
                "qtc_interval_ms": "463",
                "rhythm": "atrial_fibrillation",
                "findings": "心房颤动",
                "conclusion_code": "I48.9",
                "report_status": "final",
                "reading_physician": "周医生",
            },
            # Read at the hospital, normal, not yet reported.
            {
                "hospital_id": H,
                "ecg_id": "ECG00000032",
                "encounter_id": "E00000103",
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "teleconsult_id": None,
                "reading_hospital_id": H,
                "study_instance_uid": None,
                "recorded_at": "2025-06-01T22:50:00",
                "reported_at": None,
                "lead_count": "12",
                "heart_rate_bpm": "72",
                "pr_interval_ms": "160",
                "qrs_duration_ms": "88",
                "qt_interval_ms": "380",
                "qtc_interval_ms": "416",
                "rhythm": "sinus",
                "findings": "窦性心律，正常心电图",
                "conclusion_code": None,
                "report_status": "preliminary",
                "reading_physician": None,
            },
            # From the ECG cart's own export: no MRN, encounter, reader or words.
            {
                "hospital_id": H,
                "ecg_id": "ECG00000033",
                "encounter_id": None,
                "patient_mrn": None,
                "resident_id": LI,
                "teleconsult_id": None,
                "reading_hospital_id": None,
                "study_instance_uid": None,
                "recorded_at": "2025-04-11T08:00:00",
                "reported_at": None,
                "lead_count": None,
                "heart_rate_bpm": "64",
                "pr_interval_ms": None,
                "qrs_duration_ms": "150",
                "qt_interval_ms": None,
                "qtc_interval_ms": None,
                "rhythm": "paced",
                "findings": None,
                "conclusion_code": None,
                "report_status": "amended",
                "reading_physician": None,
            },
        ],
        "pathology_reports": [
            # A resection diagnosed at the hospital.
            {
                "hospital_id": H,
                "pathology_id": "P00000041",
                "encounter_id": "E00000102",
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "teleconsult_id": None,
                "reading_hospital_id": H,
                "specimen_type": "resection",
                "specimen_site": "colon",
                "collected_at": "2025-04-11T10:00:00",
                "reported_at": "2025-04-15T16:30:00",
                "diagnosis_code": "C18.9",
                "diagnosis_text": "结肠腺癌",
                "behaviour": "malignant",
                "report_status": "final",
                "pathologist": "赵医生",
            },
            # A biopsy sent to the provincial pathology centre, its reading preliminary.
            {
                "hospital_id": H,
                "pathology_id": "P00000042",
                "encounter_id": "E00000101",
                "patient_mrn": "ZZ-FAHZU-0000123",
                "resident_id": WANG,
                "teleconsult_id": "T00000008",
                "reading_hospital_id": PATHOLOGY_CENTRE,
                "specimen_type": "biopsy",
                "specimen_site": "stomach",
                "collected_at": "2025-03-02T08:30:00",
                "reported_at": "2025-03-03T11:00:00",
                "diagnosis_code": "K29.5",
                "diagnosis_text": "慢性萎缩性胃炎",
                "behaviour": "benign",
                "report_status": "preliminary",
                "pathologist": "吴医生",
            },
            # A cytology request cancelled: nothing diagnosed, nobody named.
            {
                "hospital_id": H,
                "pathology_id": "P00000043",
                "encounter_id": None,
                "patient_mrn": "ZZ-FAHZU-0000456",
                "resident_id": LI,
                "teleconsult_id": "T00000009",
                "reading_hospital_id": PATHOLOGY_CENTRE,
                "specimen_type": "cytology",
                "specimen_site": "thyroid",
                "collected_at": "2025-06-01T23:10:00",
                "reported_at": None,
                "diagnosis_code": None,
                "diagnosis_text": None,
                "behaviour": None,
                "report_status": "cancelled",
                "pathologist": None,
            },
        ],
    }


def defective_records() -> dict[str, list[dict[str, str | None]]]:
    """What the synthetic generator injects: bad values, a broken resident ID in one dataset
    only, a missing required value, duplicates, a series whose study is not exported."""
    records = clean_records()
    records["patients"][1]["birth_date"] = "2026-13-45"
    records["patients"][0]["sex"] = "X"
    records["encounters"][0]["encounter_type"] = "ZZZ"
    records["encounters"][2]["patient_mrn"] = None
    records["encounters"][2]["admit_time"] = "yesterday"
    records["diagnoses"][0]["icd10_code"] = "ZZZ"
    records["diagnoses"][2]["diagnosed_at"] = "2026-02-30T10:00:00"
    records["lab_results"][0]["resident_id"] = WANG[:17] + "3"
    records["lab_results"][1]["value_num"] = "n/a"
    records["lab_results"][1]["encounter_id"] = None
    records["lab_results"][2]["value_text"] = " (corrected)"  # a near duplicate's change
    records["medications"][0]["route"] = "ZZZ"
    records["medications"][1]["dose"] = "n/a"
    records["medications"][1]["atc_code"] = None
    records["imaging_studies"][0]["modality"] = "ZZ"
    records["imaging_series"][1]["resident_id"] = LI[:17] + "5"
    records["imaging_series"][2]["study_instance_uid"] = None
    records["ecg_reports"][0]["heart_rate_bpm"] = "n/a"
    records["ecg_reports"][0]["recorded_at"] = "2025-02-30T09:05:12"
    records["ecg_reports"][1]["rhythm"] = "junctional"  # not one of the contract's
    records["ecg_reports"][1]["conclusion_code"] = "U80.1"
    records["ecg_reports"][2]["report_status"] = None
    records["ecg_reports"][2]["lead_count"] = "twelve"
    records["pathology_reports"][0]["reported_at"] = "2025-04-10T09:00:00"  # before collection
    records["pathology_reports"][0]["resident_id"] = LI[:17] + "7"
    records["pathology_reports"][1]["specimen_type"] = None
    records["pathology_reports"][1]["behaviour"] = "borderline"
    records["pathology_reports"][2]["collected_at"] = "2031-06-01T23:10:00"
    records["lab_results"].append(dict(records["lab_results"][3]))  # exact duplicate
    records["patients"].append(dict(records["patients"][0]))  # exact duplicate
    records["imaging_series"].append(
        {
            "hospital_id": H,
            "series_instance_uid": "1.2.3.4.5.1",
            "study_instance_uid": "1.2.3.4.5",
            "resident_id": LI,
            "modality": "MR",
            "body_part": "HEAD",
            "series_description": None,
            "sop_class_uid": None,
            "number_of_instances": "1",
            "series_date": "2025-05-05",
        }
    )
    return records


def without_source(batch: FhirBatch) -> dict[str, list[dict[str, str | None]]]:
    """The records without their meta fields, checking those: every record read, none linked
    (the bundle holds every Patient and Encounter it refers to, or names them by identifier)."""
    out = {}
    for dataset, records in batch.records.items():
        assert all(r["_source"] == "hosp/fhir/b.json" for r in records)
        assert all(r["_fhir_id"] and r["_line"].isdigit() for r in records)
        assert all(not k.startswith(("_rule", "_error", "_link")) for r in records for k in r)
        out[dataset] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    return out


def invalid(batch: FhirBatch) -> dict[str, list[dict[str, str | None]]]:
    """The records of entries that could not be mapped, by dataset."""
    out: dict[str, list[dict[str, str | None]]] = {}
    for dataset, records in batch.records.items():
        for r in records:
            if r.get("_rule") is not None:
                assert r["_rule"] == "fhir_entry_invalid" and r["_error"] and r["_raw"]
                out.setdefault(dataset, []).append(r)
    return out


def valid(batch: FhirBatch, dataset: str) -> list[dict[str, str | None]]:
    return [r for r in batch.records.get(dataset, []) if r.get("_rule") is None]


def as_file(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, ensure_ascii=False, indent=1).encode()


# --- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle_type", ["collection", "transaction"])
@pytest.mark.parametrize("make", [clean_records, defective_records])
def test_records_bundle_records_round_trip_is_exact(make: Any, bundle_type: str) -> None:
    records = make()
    bundle = records_to_bundle(records, bundle_id="zz-fahzu-0001", bundle_type=bundle_type)
    for batch in (
        bundle_to_records(copy.deepcopy(bundle), source="hosp/fhir/b.json"),
        read_fhir_file("hosp/fhir/b.json", as_file(bundle)),
    ):
        assert batch.rejects == []
        assert without_source(batch) == records


def test_rows_carry_exactly_the_contract_columns() -> None:
    contracts = load_contracts(PLATFORM)
    batch = bundle_to_records(records_to_bundle(clean_records(), bundle_id="b"), source="s")
    assert set(batch.records) == set(COLUMNS)
    for dataset, records in batch.records.items():
        assert COLUMNS[dataset] == contracts[dataset].column_names
        # The contract's columns, in order, then meta fields only.
        n = len(COLUMNS[dataset])
        assert all(list(r)[:n] == list(contracts[dataset].column_names) for r in records)
        assert all(k.startswith("_") for r in records for k in list(r)[n:])


def test_bad_values_pass_through_unchanged() -> None:
    records = defective_records()
    bundle = records_to_bundle(records, bundle_id="b")
    text = as_file(bundle).decode()
    assert '"birthDate": "2026-13-45"' in text and '"code": "ZZZ"' in text
    got = bundle_to_records(json.loads(text), source="s").records
    assert got["patients"][1]["birth_date"] == "2026-13-45"
    assert got["diagnoses"][0]["icd10_code"] == "ZZZ"
    assert got["diagnoses"][2]["diagnosed_at"] == "2026-02-30T10:00:00"
    assert got["encounters"][0]["encounter_type"] == "ZZZ"
    assert got["encounters"][2]["admit_time"] == "yesterday"
    assert got["lab_results"][1]["value_num"] == "n/a"
    assert got["lab_results"][3]["value_num"] == "5.20"
    ecg, pathology = got["ecg_reports"], got["pathology_reports"]
    assert (ecg[0]["heart_rate_bpm"], ecg[0]["recorded_at"]) == ("n/a", "2025-02-30T09:05:12")
    assert (ecg[1]["rhythm"], ecg[1]["conclusion_code"]) == ("junctional", "U80.1")
    assert (ecg[2]["report_status"], ecg[2]["lead_count"]) == (None, "twelve")
    # Reported before it was collected: both as written, for the contract's rule to judge.
    assert (pathology[0]["collected_at"], pathology[0]["reported_at"]) == (
        "2025-04-11T10:00:00",
        "2025-04-10T09:00:00",
    )
    assert (pathology[1]["specimen_type"], pathology[1]["behaviour"]) == (None, "borderline")


def test_reference_only_patients_and_studies_add_no_rows() -> None:
    records = defective_records()
    bundle = records_to_bundle(records, bundle_id="b")
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    # 3 patients rows; stubs for the DX study's missing MRN, the encounter without MRN (which
    # the ECG without MRN shares), the lab's broken resident ID, the series' and the pathology
    # report's broken ones.
    assert types.count("Patient") == 3 + 5
    assert types.count("ImagingStudy") == 2 + 3
    got = bundle_to_records(bundle, source="s").records
    assert len(got["patients"]) == 3 and len(got["imaging_studies"]) == 2


# --- the bundle itself ------------------------------------------------------------------------


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [r for v in node.values() for r in references(v)]
    if isinstance(node, list):
        return [r for v in node for r in references(v)]
    return []


@pytest.mark.parametrize("bundle_type", ["collection", "transaction"])
def test_bundle_is_structurally_sound(bundle_type: str) -> None:
    bundle = records_to_bundle(defective_records(), bundle_id="zz-fahzu-0001", bundle_type=bundle_type)
    json.dumps(bundle)  # serialisable as it is
    assert (bundle["resourceType"], bundle["id"], bundle["type"]) == (
        "Bundle",
        "zz-fahzu-0001",
        bundle_type,
    )
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        path = f"{resource['resourceType']}/{resource['id']}"
        assert entry["fullUrl"] == f"{FULL_URL_BASE}/{path}"
        if bundle_type == "transaction":
            assert entry["request"] == {"method": "PUT", "url": path}
        else:
            assert "request" not in entry
        for reference in references(resource):
            if reference.startswith("#"):  # a resource it contains
                assert reference[1:] in [c["id"] for c in resource["contained"]], f"{path} → {reference}"
            else:
                assert f"{FULL_URL_BASE}/{reference}" in urls, f"{path} → {reference}"
    resources = [e["resource"] for e in bundle["entry"]]
    # FHIR forbids empty strings, objects and lists.
    assert '""' not in json.dumps(resources) and "{}" not in json.dumps(resources)
    assert "[]" not in json.dumps(resources)
    # Required elements of the resources we write.
    for r in resources:
        required = {
            "Encounter": ("status", "class"),
            "Observation": ("status", "code"),
            "MedicationRequest": ("status", "intent", "subject"),
            "ImagingStudy": ("status", "subject"),
            "Condition": ("subject",),
            "DiagnosticReport": ("status", "code"),
        }
        assert all(k in r for k in required.get(r["resourceType"], ())), r


def test_bundle_of_no_records_has_no_entries() -> None:
    bundle = records_to_bundle({"teleconsultations": [{"teleconsult_id": "T1"}]}, bundle_id="b")
    assert bundle == {"resourceType": "Bundle", "id": "b", "type": "collection"}
    assert bundle_to_records(bundle, source="s") == FhirBatch()


def test_timestamps_are_written_at_china_time_and_read_back_from_any_zone() -> None:
    bundle = records_to_bundle(clean_records(), bundle_id="b")
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert encounter["period"]["start"] == "2025-03-02T09:10:00+08:00"
    encounter["period"]["start"] = "2025-03-02T01:10:00Z"
    encounter["period"]["end"] = "2025-03-01T22:55:00.250-03:00"
    got = bundle_to_records(bundle, source="s").records["encounters"][0]
    assert (got["admit_time"], got["discharge_time"]) == (
        "2025-03-02T09:10:00",
        "2025-03-02T09:55:00.250000",
    )


# --- rejects ----------------------------------------------------------------------------------


def mixed_bundle() -> dict[str, Any]:
    """A valid Patient and Condition among entries that cannot be mapped."""
    bundle = records_to_bundle(
        {k: v for k, v in clean_records().items() if k in ("patients", "diagnoses", "lab_results")},
        bundle_id="b",
    )
    entries = bundle["entry"]
    condition = copy.deepcopy(next(e for e in entries if e["resource"]["resourceType"] == "Condition"))
    condition["resource"]["id"] = "orphan"
    condition["resource"]["subject"] = {"reference": "Patient/nope"}
    lab = next(e for e in entries if e["resource"]["resourceType"] == "Observation")
    lab["resource"]["id"] = "no-loinc"
    lab["resource"]["code"] = {
        "coding": [{"system": "urn:hospital:lis", "code": "GLU"}],
        "text": "葡萄糖",
    }
    procedure = {
        "fullUrl": f"{FULL_URL_BASE}/Procedure/p1",
        "resource": {"resourceType": "Procedure", "id": "p1", "status": "completed"},
    }
    entries += [condition, procedure, "garbage"]
    return bundle


def test_unmappable_entries_are_rejected_with_reasons_and_the_rest_is_read() -> None:
    bundle = mixed_bundle()
    n = len(bundle["entry"])  # entries count from 1, like `_line`
    lab_entry = 1 + next(i for i, e in enumerate(bundle["entry"]) if e["resource"].get("id") == "no-loinc")
    batch = read_fhir_file("hosp/fhir/b.json", as_file(bundle), hospital_id=H)
    # Not a resource at all: a Reject. A resource type no dataset holds: counted, not rejected.
    assert [(r.source, r.reason) for r in batch.rejects] == [
        ("hosp/fhir/b.json", f"entry {n}: not an entry but a JSON string")
    ]
    assert batch.skipped == {"Organization": 1, "Procedure": 1}
    # A Patient not in the bundle is no longer a reject: the row waits to be linked to it.
    [orphan] = [r for r in batch.records["diagnoses"] if r["_fhir_id"] == "orphan"]
    assert (orphan["_link_patient"], orphan["resident_id"], orphan["_line"]) == ("nope", None, str(n - 2))
    assert "_rule" not in orphan
    [lab] = invalid(batch)["lab_results"]
    assert lab["_error"] == (
        f"entry {lab_entry} (Observation/no-loinc): code has no coding in {LOINC_SYSTEM}"
    )
    assert lab["_line"] == str(lab_entry) and lab["loinc_code"] is None
    assert json.loads(lab["_raw"])["resource"]["code"]["text"] == "葡萄糖"
    # What could be read is there: hospital, ids, the value.
    assert (lab["hospital_id"], lab["resident_id"], lab["value_num"]) == (H, WANG, "6.8")
    assert set(invalid(batch)) == {"lab_results"}
    assert [len(valid(batch, d)) for d in ("patients", "diagnoses", "lab_results")] == [2, 4, 3]


def test_a_rejected_patient_takes_its_dependants_along_with_reasons() -> None:
    bundle = records_to_bundle(
        {k: v for k, v in clean_records().items() if k in ("patients", "diagnoses")}, bundle_id="b"
    )
    wang = next(e["resource"] for e in bundle["entry"] if e["resource"].get("name") == [{"text": "王建国"}])
    del wang["managingOrganization"]
    # Without the hospital of the landing folder, nothing names Wang's hospital: not his
    # Patient, nor his diagnoses (whose Encounters are not in the bundle).
    batch = bundle_to_records(bundle, source="s")
    assert batch.rejects == []
    assert [len(valid(batch, d)) for d in ("patients", "diagnoses")] == [1, 1]
    bad = invalid(batch)
    assert [len(bad[d]) for d in ("patients", "diagnoses")] == [1, 2]
    assert bad["patients"][0]["_error"].endswith(
        f"(Patient/{wang['id']}): names no hospital (no managingOrganization names one) "
        "and the file came with no hospital_id"
    )
    assert all("names no hospital" in r["_error"] for r in bad["diagnoses"])
    # Everything else was read.
    assert [r["resident_id"] for r in bad["patients"] + bad["diagnoses"]] == [WANG] * 3
    assert [r["icd10_code"] for r in bad["diagnoses"]] == ["I10", "E11.9"]
    # With it, all is well.
    batch = bundle_to_records(bundle, source="s", hospital_id=H)
    assert invalid(batch) == {} and batch.records["patients"][0]["hospital_id"] == H


def test_a_series_without_a_dicom_modality_costs_only_that_series() -> None:
    bundle = records_to_bundle(
        {k: v for k, v in clean_records().items() if k in ("patients", "imaging_studies", "imaging_series")},
        bundle_id="b",
    )
    study = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
    study["series"][0]["modality"] = {"system": "urn:local", "code": "CT"}
    batch = bundle_to_records(bundle, source="s")
    assert len(valid(batch, "imaging_studies")) == 2
    assert len(valid(batch, "imaging_series")) == 2
    [bad] = invalid(batch)["imaging_series"]
    assert "series 1: modality has no coding in http://dicom.nema.org" in bad["_error"]
    assert (bad["series_instance_uid"], bad["modality"]) == (f"{CT_STUDY}.1", None)


def test_condition_needs_an_icd10_coding() -> None:
    bundle = records_to_bundle(
        {k: v for k, v in clean_records().items() if k in ("patients", "diagnoses")}, bundle_id="b"
    )
    condition = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition")
    condition["code"] = {"text": "高血压"}
    batch = bundle_to_records(bundle, source="s")
    assert len(valid(batch, "diagnoses")) == 2
    assert [r["_error"].split(": ", 1)[1] for r in invalid(batch)["diagnoses"]] == [
        f"code has no coding in {ICD10_SYSTEM}"
    ]


def test_a_value_where_an_object_belongs_is_a_reject_not_an_exception() -> None:
    bundle = records_to_bundle(
        {k: v for k, v in clean_records().items() if k in ("patients", "lab_results")},
        bundle_id="b",
    )
    lab = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    lab["valueQuantity"]["value"] = {"nested": 1}
    lab_two = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"][1]
    lab_two["referenceRange"] = "115-150"
    batch = bundle_to_records(bundle, source="s")
    assert len(valid(batch, "lab_results")) == 2
    assert sorted(r["_error"].split(": ", 1)[1] for r in invalid(batch)["lab_results"]) == [
        "referenceRange is not a list",
        "valueQuantity.value is a object, not a value",
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            b"{not json",
            "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (b'[1, "x", {}, null]', "not a FHIR Bundle but a JSON array"),
        (b'{"resourceType": "Patient", "id": "p"}', "not a FHIR Bundle (resourceType 'Patient')"),
        (
            b'{"resourceType": "Bundle", "type": "history"}',
            "Bundle type 'history' is not read (expected collection, transaction, batch, searchset, "
            "document, transaction-response, batch-response)",
        ),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": {}}',
            "Bundle.entry is not a list",
        ),
        (b"\xff\xfe{}", "not UTF-8 text: byte 0 cannot be decoded"),
        (b"  \n", "empty file"),
        (
            b"[" * 100_000,
            "invalid JSON: maximum recursion depth exceeded while decoding a JSON array "
            "from a unicode string",
        ),
    ],
)
def test_unreadable_files_are_one_reject(content: bytes, reason: str) -> None:
    batch = read_fhir_file("hosp/fhir/bad.json", content)
    assert batch.records == {}
    assert [(r.source, r.reason) for r in batch.rejects] == [("hosp/fhir/bad.json", reason)]


def test_ndjson_reads_every_bundle_and_rejects_bad_lines() -> None:
    records = clean_records()
    first = records_to_bundle({"patients": records["patients"][:1]}, bundle_id="b1")
    second = records_to_bundle(
        {"patients": records["patients"][1:], "diagnoses": records["diagnoses"]}, bundle_id="b2"
    )
    lines = [
        json.dumps(first, ensure_ascii=False),
        "{oops",
        "",
        json.dumps(second, ensure_ascii=False),
        "42",
    ]
    for name in ("hosp/fhir/all.ndjson", "hosp/fhir/all.json"):
        batch = read_fhir_file(name, "\n".join(lines).encode())
        # Wang's diagnoses travel with a reference-only Patient: each bundle stands alone.
        assert [r["resident_id"] for r in batch.records["patients"]] == [WANG, LI]
        assert len(batch.records["diagnoses"]) == 3
        assert [r.reason for r in batch.rejects] == [
            "line 2: invalid JSON (Expecting property name enclosed in double quotes)",
            "line 5: not a FHIR Bundle but a JSON number",
        ]


def test_reads_references_by_urn_uuid_and_encounter_by_reference_only() -> None:
    """A foreign export: urn:uuid fullUrls, an encounter reference without an identifier."""
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": LI},
            {"system": f"urn:medshare:mrn:{H}", "value": "ZZ-FAHZU-0000456"},
        ],
        "name": [{"family": "李", "given": ["秀英"]}],
        "gender": "female",
        "birthDate": "1992-08-27",
        "managingOrganization": {"reference": f"Organization/{H}"},
    }
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "identifier": [{"system": f"urn:medshare:encounter:{H}", "value": "E9"}],
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "urn:uuid:0b1c"},
        "period": {"start": "2025-05-05T08:00:00+08:00"},
        "serviceProvider": {"reference": f"Organization/{H}"},
    }
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "urn:uuid:0b1c"},
        "encounter": {"reference": "urn:uuid:e9"},
        "code": {"coding": [{"system": ICD10_SYSTEM, "code": "K29.7"}]},
        "recordedDate": "2025-05-05T08:30:00+08:00",
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0b1c", "resource": patient},
            {"fullUrl": "urn:uuid:e9", "resource": encounter},
            {"fullUrl": "urn:uuid:c1", "resource": condition},
        ],
    }
    batch = bundle_to_records(bundle, source="s")
    assert batch.rejects == [] and invalid(batch) == {}
    assert batch.records["patients"][0]["name"] == "李秀英"
    assert batch.records["patients"][0]["sex"] == "F"
    assert batch.records["encounters"][0]["encounter_type"] == "outpatient"
    assert batch.records["diagnoses"] == [
        {
            "hospital_id": H,
            "encounter_id": "E9",
            "diagnosis_seq": None,
            "resident_id": LI,
            "icd10_code": "K29.7",
            "diagnosis_type": None,
            "diagnosed_at": "2025-05-05T08:30:00",
            "_source": "s",
            "_line": "3",
            "_fhir_id": "c1",  # no id: the uuid of its urn:uuid fullUrl
        }
    ]


# --- ECGs and pathology reports ---------------------------------------------------------------


def resources_of(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def codes(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept.get("coding", [])}


def test_an_ecg_is_an_observation_with_the_loinc_components_of_a_12_lead_ekg() -> None:
    records = defective_records()
    bundle = records_to_bundle({k: records[k] for k in ("patients", "ecg_reports")}, bundle_id="b")
    first, _, third = resources_of(bundle, "Observation")
    assert codes(first["code"]) == {(LOINC_SYSTEM, "11524-6")}  # EKG study
    assert codes(first["category"][0]) == {
        ("http://terminology.hl7.org/CodeSystem/observation-category", "procedure")
    }
    assert first["status"] == "final"
    assert third["status"] == "unknown"  # the row has none; FHIR requires one
    parts = {c["code"]["coding"][0]["code"]: c for c in first["component"]}
    # No PR interval in atrial fibrillation: no component for it.
    assert set(parts) == {"8867-4", "8633-2", "8634-0", "8636-5", "76281-5"}
    ucum = "http://unitsofmeasure.org"
    assert (parts["8867-4"]["valueQuantity"]["system"], parts["8867-4"]["valueQuantity"]["code"]) == (
        ucum,
        "/min",
    )
    assert parts["8867-4"]["valueQuantity"]["value"] == "n/a"  # as written: the contract judges it
    assert {p["valueQuantity"]["code"] for k, p in parts.items() if k not in ("8867-4", "76281-5")} == {"ms"}
    assert parts["8636-5"]["valueQuantity"]["value"] == 463
    assert codes(parts["76281-5"]["valueCodeableConcept"]) == {
        ("urn:medshare:ecg-rhythm", "atrial_fibrillation"),
        ("http://snomed.info/sct", "49436004"),  # SNOMED CT atrial fibrillation, as a translation
    }
    assert first["valueCodeableConcept"] == {
        "coding": [{"system": ICD10_SYSTEM, "code": "I48.9"}],
        "text": "心房颤动",
    }
    waveform = {"system": "urn:dicom:uid", "value": f"urn:oid:{ECG_WAVEFORM}"}
    assert first["derivedFrom"] == [{"type": "ImagingStudy", "identifier": waveform}]
    request = {"system": f"urn:medshare:teleconsult:{H}", "value": "T00000007"}
    assert first["basedOn"] == [{"type": "ServiceRequest", "identifier": request}]
    assert first["performer"] == [
        {"reference": f"Organization/{ECG_CENTRE}"},
        {"type": "Practitioner", "display": "周医生"},
    ]
    assert first["effectiveDateTime"] == "2025-02-30T09:05:12+08:00"  # the bad date, as written
    assert first["issued"] == "2025-03-02T09:40:00+08:00"


def test_a_pathology_report_is_a_diagnostic_report_on_its_contained_specimen() -> None:
    records = clean_records()
    bundle = records_to_bundle({k: records[k] for k in ("patients", "pathology_reports")}, bundle_id="b")
    reports = resources_of(bundle, "DiagnosticReport")
    assert [r["category"][0]["coding"][0]["code"] for r in reports] == ["SP", "SP", "CP"]
    assert all(codes(r["code"]) == {(LOINC_SYSTEM, "11526-1")} for r in reports)  # Pathology study
    assert not resources_of(bundle, "Specimen")  # each inside its report
    for report, record in zip(reports, records["pathology_reports"], strict=True):
        assert report["specimen"] == [{"reference": "#specimen"}]
        [specimen] = [c for c in report["contained"] if c["resourceType"] == "Specimen"]
        assert ("urn:medshare:specimen-type", record["specimen_type"]) in codes(specimen["type"])
        assert specimen["collection"]["collectedDateTime"] == f"{record['collected_at']}+08:00"
        assert specimen["collection"]["bodySite"] == {"text": record["specimen_site"]}
        assert report["status"] == record["report_status"]
    resection, biopsy, cytology = reports
    assert resection["conclusionCode"] == [{"coding": [{"system": ICD10_SYSTEM, "code": "C18.9"}]}]
    assert resection["conclusion"] == "结肠腺癌"
    assert resection["resultsInterpreter"] == [{"type": "Practitioner", "display": "赵医生"}]
    assert biopsy["performer"] == [{"reference": f"Organization/{PATHOLOGY_CENTRE}"}]
    assert "conclusionCode" not in cytology and "issued" not in cytology


def test_an_ecg_is_read_by_its_code_whatever_else_its_category_says() -> None:
    records = clean_records()
    wanted = ("patients", "lab_results", "ecg_reports")
    bundle = records_to_bundle({k: records[k] for k in wanted}, bundle_id="b")
    observations = resources_of(bundle, "Observation")
    ecg = next(o for o in observations if o["code"]["coding"][0]["code"] == "11524-6")
    del ecg["category"]
    lab = next(o for o in observations if o is not ecg)
    lab["code"]["coding"][0]["code"] = "11524-6"  # a laboratory Observation stays a lab result
    got = bundle_to_records(bundle, source="s").records
    assert len(got["ecg_reports"]) == 3 and len(got["lab_results"]) == 4
    assert sum(r["loinc_code"] == "11524-6" for r in got["lab_results"]) == 1
