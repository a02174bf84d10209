"""DICOM source: written synthetic studies read back to exactly the tags written; bad files become
rejects without stopping the batch. Real files from pydicom's bundled test data, no services."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pytest

from ingestion.sources.dicom import (
    DicomBatch,
    PatientTags,
    StudyTags,
    corrupt_dicom,
    dicom_templates,
    read_dicom_files,
    write_dicom_study,
)
from lakehouse.contracts import load_contract

pytestmark = pytest.mark.unit

DATASETS = Path(__file__).resolve().parents[2] / "platform" / "datasets"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

PATIENT = PatientTags(
    name="Zhang^Wei=张^伟",
    mrn="MRN0042",
    resident_id="41010219800501123X",
    birth_date=dt.date(1980, 5, 1),
    sex="M",
)
STUDY = StudyTags(
    study_date=dt.date(2024, 3, 5),
    study_time=dt.time(14, 30, 5),
    description="胸部CT平扫",
    accession_number="ACC240305007",
    encounter_id="ENC-2024-000917",
    referring_physician="Li^Na=李^娜",
    institution_name="郑州市中心医院",
    number_of_series=2,
    instances_per_series=2,
)


def template(name: str) -> Path:
    return next(p for p in dicom_templates() if p.name == name)


def read(files: list[Path]) -> DicomBatch:
    return read_dicom_files([(f.name, f) for f in files], hospital_id="zz-h01")


@pytest.fixture
def ct_study(tmp_path: Path) -> list[Path]:
    return write_dicom_study(
        tmp_path / "out", templates=[template("CT_small.dcm")], patient=PATIENT, study=STUDY, seed=7
    )


def uids_of(files: list[Path]) -> list[tuple[str, str, str]]:
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    return out


def test_a_written_study_reads_back_as_the_tags_written(ct_study: list[Path]) -> None:
    assert len(ct_study) == 4
    uids = uids_of(ct_study)
    study_uids = {u[0] for u in uids}
    series_uids = sorted({u[1] for u in uids})
    assert len(study_uids) == 1 and len(series_uids) == 2 and len({u[2] for u in uids}) == 4
    (study_uid,) = study_uids

    batch = read(ct_study)

    assert batch.rejects == []
    assert batch.studies == [
        {
            "hospital_id": "zz-h01",
            "study_instance_uid": study_uid,
            "accession_number": "ACC240305007",
            "patient_mrn": "MRN0042",
            "resident_id": "41010219800501123X",
            "encounter_id": "ENC-2024-000917",
            "modality": "CT",
            "body_part": None,  # CT_small.dcm has no BodyPartExamined
            "study_date": "2024-03-05",
            "study_description": "胸部CT平扫",
            "referring_physician": "Li^Na=李^娜",
            "number_of_series": "2",
            "_source": ct_study[0].name,
        }
    ]
    assert sorted(r["series_instance_uid"] or "" for r in batch.series) == series_uids
    for record in batch.series:
        assert record == {
            "hospital_id": "zz-h01",
            "series_instance_uid": record["series_instance_uid"],
            "study_instance_uid": study_uid,
            "resident_id": "41010219800501123X",
            "modality": "CT",
            "body_part": None,
            "series_description": None,
            "sop_class_uid": CT_IMAGE_STORAGE,
            "number_of_instances": "2",
            "series_date": "2024-03-05",
            "_source": record["_source"],
        }


def test_written_files_carry_the_patient_and_keep_their_pixels(ct_study: list[Path]) -> None:
    original = pydicom.dcmread(template("CT_small.dcm"))
    ds = pydicom.dcmread(ct_study[0])
    assert (str(ds.PatientName), ds.PatientID, ds.OtherPatientIDs) == (
        "Zhang^Wei=张^伟",
        "MRN0042",
        "41010219800501123X",
    )
    assert (ds.PatientBirthDate, ds.PatientSex, ds.PatientAge) == ("19800501", "M", "043Y")
    assert (ds.InstitutionName, ds.AdmissionID, ds.StudyTime) == (
        "郑州市中心医院",
        "ENC-2024-000917",
        "143005",
    )
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PixelData == original.PixelData
    assert ds.StudyInstanceUID != original.StudyInstanceUID


def test_records_hold_only_contract_columns_and_no_pixel_data(ct_study: list[Path]) -> None:
    batch = read(ct_study)
    for dataset, records in (("imaging_studies", batch.studies), ("imaging_series", batch.series)):
        columns = set(load_contract(DATASETS / f"{dataset}.yaml").column_names)
        for record in records:
            assert set(record) == columns | {"_source"}
            # Text only, and short: a pixel or waveform value would be bytes or kilobytes long.
            assert all(v is None or (isinstance(v, str) and len(v) < 200) for v in record.values())


def test_bad_files_become_rejects_and_the_good_ones_are_still_read(
    ct_study: list[Path], tmp_path: Path
) -> None:
    truncated, garbage = tmp_path / "truncated.dcm", tmp_path / "garbage.dcm"
    truncated.write_bytes(ct_study[0].read_bytes())
    garbage.write_bytes(ct_study[0].read_bytes())
    corrupt_dicom(truncated, mode="truncate")
    corrupt_dicom(garbage, mode="garbage")
    assert len(truncated.read_bytes()) == 200
    no_series = pydicom.dcmread(ct_study[0])
    del no_series.SeriesInstanceUID
    buffer = io.BytesIO()
    no_series.save_as(buffer, enforce_file_format=True)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    bad: list[tuple[str, bytes | Path]] = [
        ("truncated.dcm", truncated),
        ("garbage.dcm", garbage),
        ("notes.dcm", "检查报告: 正常\nno findings\n".encode()),
        ("empty.dcm", b""),
        ("empty-on-disk.dcm", empty),
        ("no-series.dcm", buffer.getvalue()),
    ]
    good: list[tuple[str, bytes | Path]] = [(f.name, f.read_bytes()) for f in ct_study]
    # Bad files first and in between, so a reject cannot end the loop early unnoticed.
    batch = read_dicom_files([*bad[:3], good[0], *bad[3:], *good[1:]], hospital_id="zz-h01")

    reasons = {r.source: r.reason for r in batch.rejects}
    assert set(reasons) == {name for name, _ in bad}
    assert "not a DICOM file" in reasons["garbage.dcm"]
    assert "not a DICOM file" in reasons["notes.dcm"]
    assert "truncated" in reasons["truncated.dcm"]
    assert reasons["empty.dcm"] == reasons["empty-on-disk.dcm"] == "empty file"
    assert "SeriesInstanceUID" in reasons["no-series.dcm"]
    assert [s["number_of_series"] for s in batch.studies] == ["2"]
    assert [s["number_of_instances"] for s in batch.series] == ["2", "2"]


# Writing the bad date on purpose makes pydicom warn.
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_dates_fall_back_and_unparseable_ones_pass_through(ct_study: list[Path]) -> None:
    no_series_date = pydicom.dcmread(ct_study[0])
    del no_series_date.SeriesDate
    bad_date = pydicom.dcmread(ct_study[2])
    bad_date.StudyDate = bad_date.SeriesDate = "20241345"
    files = []
    for ds in (no_series_date, bad_date):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((str(ds.SeriesInstanceUID), buffer.getvalue()))
    batch = read_dicom_files(files, hospital_id="zz-h01")
    by_series = {r["series_instance_uid"]: r for r in batch.series}
    assert by_series[files[0][0]]["series_date"] == "2024-03-05"
    assert by_series[files[1][0]]["series_date"] == "20241345"
    assert batch.studies[0]["study_date"] == "2024-03-05"  # the first file's


def test_the_same_seed_gives_the_same_uids(tmp_path: Path) -> None:
    ct = [template("CT_small.dcm")]
    first = write_dicom_study(tmp_path / "a", templates=ct, patient=PATIENT, study=STUDY, seed=1)
    again = write_dicom_study(tmp_path / "b", templates=ct, patient=PATIENT, study=STUDY, seed=1)
    other = write_dicom_study(tmp_path / "c", templates=ct, patient=PATIENT, study=STUDY, seed=2)
    assert uids_of(first) == uids_of(again)
    assert not {u for t in uids_of(first) for u in t} & {u for t in uids_of(other) for u in t}


def test_study_tags_bound_the_number_of_files() -> None:
    with pytest.raises(ValueError, match="number_of_series"):
        StudyTags(
            study_date=dt.date(2024, 1, 1),
            description="x",
            accession_number="a",
            encounter_id="e",
            referring_physician="r",
            institution_name="i",
            number_of_series=4,
        )


def test_templates_are_small_varied_and_readable(tmp_path: Path) -> None:
    templates = dicom_templates()
    assert len(templates) >= 6
    assert all(p.stat().st_size < 600_000 for p in templates)
    modalities = set()
    for path in templates:
        expected = pydicom.dcmread(path, stop_before_pixels=True).Modality
        batch = read_dicom_files([(path.name, path)], hospital_id="zz-h01")
        assert batch.rejects == [] and len(batch.studies) == 1
        assert batch.studies[0]["modality"] == expected
        # And each one survives being rewritten to our patient.
        study = StudyTags(
            study_date=dt.date(2023, 11, 20),
            description="检查",
            accession_number=f"A{len(modalities)}",
            encounter_id="E1",
            referring_physician="Li^Na",
            institution_name="Hospital",
        )
        written = write_dicom_study(
            tmp_path / path.name, templates=[path], patient=PATIENT, study=study, seed=3
        )
        (record,) = read(written).studies
        assert (record["modality"], record["study_date"], record["resident_id"]) == (
            expected,
            "2023-11-20",
            "41010219800501123X",
        )
        modalities.add(expected)
    assert {"CT", "MR", "CR", "NM", "US", "ECG"} <= modalities


def test_reader_columns_are_the_contracts_columns() -> None:
    """The reader keeps its own column lists; they must not drift from platform/datasets."""
    from ingestion.sources.dicom import SERIES_COLUMNS, STUDY_COLUMNS
    from lakehouse.contracts import load_contracts

    contracts = load_contracts(Path(__file__).resolve().parents[2] / "platform")
    assert contracts["imaging_studies"].column_names == STUDY_COLUMNS
    assert contracts["imaging_series"].column_names == SERIES_COLUMNS
