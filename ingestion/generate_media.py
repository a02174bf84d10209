"""The FHIR and DICOM part of the synthetic exports.

One county hospital per city (`media_hospital`) exports its records as FHIR R4 — Bundles, or in
some cities a FHIR Bulk Data export (one NDJSON file per resource type) — and its imaging as real
DICOM files (pydicom's bundled samples rewritten to the generated patients; an ECG study as a
12-lead waveform), some studies the way a PACS exports them (PatientID = MRN, extension-less
files, a DICOMDIR).
For the same records the generator also writes the plain CSV export under `_crosscheck/`, so a
test can prove that FHIR, DICOM and CSV sources yield the same curated rows.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom

from ingestion.dialects import CSV, spread, write_table
from ingestion.sources.dicom import (
    PatientTags,
    StudyTags,
    corrupt_dicom,
    dicom_templates,
    template_for,
    write_dicom_study,
    write_dicomdir,
)
from ingestion.sources.fhir import FHIR_DATASETS, records_to_bundle, records_to_ndjson
from lakehouse.contracts import Contract
from lakehouse.topology import CareLevel, Hospital, Topology

RawRecord = dict[str, str | None]
FhirForm = Literal["bundle", "ndjson"]
CROSSCHECK = "_crosscheck"
IMAGING = ("imaging_studies", "imaging_series")


def media_hospital(topology: Topology, city: str) -> Hospital | None:
    """The city's first county hospital (by id): the one exporting FHIR and DICOM."""
    county = sorted(
        (h for h in topology.hospitals_of(city) if h.level is CareLevel.COUNTY), key=lambda h: h.id
    )
    return county[0] if county else None


@dataclass(kw_only=True)
class MediaExport:
    keys: list[str] = field(default_factory=list)  # landing keys written
    rows: dict[str, int] = field(default_factory=dict)  # dataset → records in them
    rejected_keys: list[str] = field(default_factory=list)  # corrupt files, on purpose
    # Imaging records past the DICOM budget: exported as plain extracts, like a PACS export.
    leftover: dict[str, list[RawRecord]] = field(default_factory=dict)
    dicom_studies: int = 0
    pacs_studies: int = 0  # of which written PACS-style
    fhir_form: FhirForm = "bundle"


def _text(value: object) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _read_back(
    paths: Sequence[Path], hospital_id: str, study: RawRecord
) -> tuple[RawRecord, list[RawRecord]]:
    """The CSV rows equivalent to a written study, read with pydicom directly from the files."""
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in paths:
        instance = pydicom.dcmread(path, stop_before_pixels=True)
        series.setdefault(str(instance.SeriesInstanceUID), []).append(instance)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study_row: RawRecord = {
        **study,
        "study_instance_uid": str(first.StudyInstanceUID),
        "modality": _text(first.Modality),
        "body_part": _text(first.get("BodyPartExamined")),
        "number_of_series": str(len(series)),
    }
    series_rows = []
    for uid, instances in series.items():
        ds = instances[0]
        series_rows.append(
            {
                "hospital_id": hospital_id,
                "series_instance_uid": uid,
                "study_instance_uid": str(ds.StudyInstanceUID),
                "resident_id": study["resident_id"],
                "modality": _text(ds.Modality),
                "body_part": _text(ds.get("BodyPartExamined")),
                "series_description": _text(ds.get("SeriesDescription")),
                "sop_class_uid": _text(ds.SOPClassUID),
                "number_of_instances": str(len(instances)),
                "series_date": study["study_date"],
            }
        )
    return study_row, series_rows


def write_media(
    out: Path,
    city: str,
    hospital: Hospital,
    records: dict[str, list[RawRecord]],
    contracts: dict[str, Contract],
    *,
    batch: int,
    seed: int,
    corrupt: bool,
    dicom_budget: int,
    fhir_form: FhirForm = "bundle",
    pacs_share: float = 0.0,
    dicom_index: int = 0,
) -> MediaExport:
    """Write the hospital's FHIR export and DICOM studies for one batch, plus the crosscheck CSVs.
    `dicom_index`: studies the city has written before, so PACS-style ones (`pacs_share` of them,
    evenly spread, the first one included) are spread over the whole export."""
    export = MediaExport()
    fhir_records = {d: records.get(d, []) for d in FHIR_DATASETS if d not in IMAGING}
    if fhir_form == "ndjson":
        export.keys += _write_ndjson(out / city, hospital, batch, records_to_ndjson(fhir_records))
        export.fhir_form = "ndjson"
    else:
        key = f"{hospital.id}/fhir/bundle-{batch:04d}.json"
        bundle = records_to_bundle(fhir_records, bundle_id=f"{hospital.id}-{batch:04d}")
        (out / city / key).parent.mkdir(parents=True, exist_ok=True)
        (out / city / key).write_text(json.dumps(bundle, ensure_ascii=False))
        export.keys.append(key)
    crosscheck = {d: list(r) for d, r in fhir_records.items()}

    patients = {r["resident_id"]: r for r in records.get("patients", [])}
    templates = dicom_templates()
    studies: list[RawRecord] = []
    series: list[RawRecord] = []
    leftover_uids: set[str | None] = set()
    for n, study in enumerate(records.get("imaging_studies", [])):
        patient = patients.get(study["resident_id"])
        if patient is None or not study["study_date"] or export.dicom_studies >= dicom_budget:
            # DICOM writing is slow (pydicom); large exports keep most imaging as extracts.
            export.leftover.setdefault("imaging_studies", []).append(study)
            leftover_uids.add(study["study_instance_uid"])
            continue
        pacs = spread(dicom_index + export.dicom_studies, pacs_share)
        export.dicom_studies += 1
        export.pacs_studies += pacs
        folder = out / city / hospital.id / "dicom"
        # An ECG cart stores one waveform a recording, under the UID its ECG report refers to —
        # a PACS exports it under the same UID (which the generator draws, not derives from the
        # resident ID).
        ecg = study["modality"] == "ECG"
        paths = write_dicom_study(
            folder,
            pacs_style=pacs,
            templates=[template_for(study["modality"], templates, n=n)],
            study_uid=study["study_instance_uid"] if ecg else None,
            patient=PatientTags(
                name=patient["name"] or "",
                mrn=patient["patient_mrn"] or "",
                resident_id=patient["resident_id"] or "",
                birth_date=dt.date.fromisoformat(patient["birth_date"] or "1970-01-01"),
                sex="F" if patient["sex"] == "F" else "M",
            ),
            study=StudyTags(
                study_date=dt.date.fromisoformat(study["study_date"]),
                description=study["study_description"] or "",
                accession_number=study["accession_number"] or "",
                encounter_id=study["encounter_id"] or "",
                referring_physician=study["referring_physician"] or "",
                institution_name=hospital.name,
                number_of_series=int(study["number_of_series"] or 1),
                instances_per_series=1 if ecg else 2,
            ),
            seed=seed + batch * 100_000 + n,
        )
        # A PACS export of the study: its folder holds IMG00001… and their DICOMDIR.
        directory = [write_dicomdir(paths[0].parent)] if pacs else []
        export.keys += [p.relative_to(out / city).as_posix() for p in (*paths, *directory)]
        study_row, series_rows = _read_back(paths, hospital.id, study)
        studies.append(study_row)
        series += series_rows
    crosscheck["imaging_studies"], crosscheck["imaging_series"] = studies, series
    export.leftover["imaging_series"] = [
        s for s in records.get("imaging_series", []) if s["study_instance_uid"] in leftover_uids
    ]
    if corrupt and templates:
        broken = out / city / hospital.id / "dicom" / f"broken-{batch:04d}.dcm"
        broken.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(templates[0], broken)
        corrupt_dicom(broken, mode="truncate")
        export.rejected_keys.append(broken.relative_to(out / city).as_posix())

    for dataset, rows in crosscheck.items():
        export.rows[dataset] = len(rows)
        if rows:
            path = out / CROSSCHECK / city / hospital.id / dataset / f"{dataset}-{batch:04d}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as sink:
                write_table(rows, contract=contracts[dataset], dialect=CSV, out=sink)
    return export


def _write_ndjson(
    city_dir: Path, hospital: Hospital, batch: int, resources: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """A FHIR Bulk Data export: `<hospital>/fhir/<export id>/<resource type>.ndjson`, one resource
    a line."""
    keys = []
    for resource_type, items in sorted(resources.items()):
        if not items:
            continue
        key = f"{hospital.id}/fhir/bulk-{batch:04d}/{resource_type}.ndjson"
        path = city_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as sink:
            for item in items:
                sink.write(json.dumps(item, ensure_ascii=False) + "\n")
        keys.append(key)
    return keys
