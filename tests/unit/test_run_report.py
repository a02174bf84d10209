"""The run report's summary of how files were read (printed by `medshare ingest` and the demo)."""

from __future__ import annotations

from ingestion.report import RunReport


def test_read_as_names_format_encoding_and_profile_and_skips_rejected_files() -> None:
    report = RunReport(city="zhengzhou", run_id="r", started_at="t")
    report.files = [
        {"key": "a/patients/1.csv", "format": "csv", "encoding": "gb18030", "profile": "county-his"},
        {"key": "a/patients/2.csv", "format": "csv", "encoding": "gb18030", "profile": "county-his"},
        {"key": "b/patients/3.csv", "format": "csv", "encoding": "utf-8-sig", "profile": "default"},
        {
            "key": "c/fhir/bulk/Patient.ndjson",
            "format": "fhir-ndjson",
            "encoding": "utf-8",
            "profile": "default",
        },
        {"key": "c/fhir/b.json", "format": "fhir", "encoding": "json", "profile": "default"},
        {"key": "d/encounters/x.xlsx", "format": "xlsx", "encoding": "xlsx", "profile": "township-sheet"},
        {"key": "e/dicom/1", "format": "dicom", "encoding": "dicom", "profile": "default"},
        {"key": "e/dicom/2", "format": "dicom", "status": "rejected", "profile": "default"},
    ]
    assert report.read_as() == [
        ("CSV gb18030 (county-his)", 2),
        ("CSV utf-8-sig", 1),
        ("FHIR NDJSON", 1),
        ("FHIR bundle", 1),
        ("Excel (township-sheet)", 1),
        ("DICOM", 1),
    ]
