"""DICOM source: written synthetic studies read back to exactly the tags written; bad files become
rejects without stopping the batch. Real files from pydicom's bundled test data, no services."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ingestion.generate_media import CROSSCHECK, write_media
from ingestion.sources.dicom import (
    DicomBatch,
    PatientTags,
    StudyTags,
    corrupt_dicom,
    dicom_templates,
    read_dicom_files,
    template_for,
    write_dicom_study,
)
from lakehouse.contracts import load_contract
from lakehouse.topology import CareLevel, Hospital

pytestmark = pytest.mark.unit

DATASETS = Path(__file__).resolve().parents[2] / "platform" / "datasets"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage (PS3.4)

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
    modalities: set[str] = set()
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


# ---------------------------------------------------------------------------------------------
# ECG waveforms: indexed like images, written from the waveform template


def dcm_date(value: str) -> str:
    return dt.datetime.strptime(value, "%Y%m%d").date().isoformat()


def pydicom_ecg() -> Dataset:
    """pydicom's own 12-lead ECG (written independently of our generator), with a resident ID in
    the other patient IDs as a modality sends it."""
    path = pydicom.data.get_testdata_file("waveform_ecg.dcm", download=False)
    assert path is not None, "pydicom's wheel should ship waveform_ecg.dcm"
    ds = pydicom.dcmread(path)
    ds.OtherPatientIDs = PATIENT.resident_id
    return ds


def test_an_ecg_waveform_is_indexed_like_an_image() -> None:
    ds = pydicom_ecg()
    # A waveform: samples in WaveformSequence, and none of an image's pixel data or attributes.
    assert (ds.SOPClassUID, ds.Modality) == (ECG_WAVEFORM_STORAGE, "ECG")
    assert "WaveformSequence" in ds and "PixelData" not in ds and "Rows" not in ds
    assert "BodyPartExamined" not in ds and "SeriesDate" not in ds
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)

    batch = read_dicom_files([("ECG00001", buffer.getvalue())], hospital_id="zz-h01")

    assert batch.rejects == []
    (study,), (series,) = batch.studies, batch.series
    assert study == {
        "hospital_id": "zz-h01",
        "study_instance_uid": ds.StudyInstanceUID,
        "accession_number": ds.AccessionNumber,
        "patient_mrn": ds.PatientID,
        "resident_id": PATIENT.resident_id,
        "encounter_id": ds.AdmissionID,
        "modality": "ECG",
        "body_part": None,
        "study_date": dcm_date(ds.StudyDate),
        "study_description": ds.StudyDescription,
        "referring_physician": str(ds.ReferringPhysicianName),
        "number_of_series": "1",
        "_source": "ECG00001",
    }
    assert series == {
        "hospital_id": "zz-h01",
        "series_instance_uid": ds.SeriesInstanceUID,
        "study_instance_uid": ds.StudyInstanceUID,
        "resident_id": PATIENT.resident_id,
        "modality": "ECG",
        "body_part": None,
        "series_description": None,
        "sop_class_uid": ECG_WAVEFORM_STORAGE,
        "number_of_instances": "1",
        "series_date": dcm_date(ds.StudyDate),  # no SeriesDate: the study's
        "_source": "ECG00001",
    }


def test_a_study_is_written_from_the_template_of_its_modality() -> None:
    templates = dicom_templates()
    datasets = {p: pydicom.dcmread(p) for p in templates}
    of = {str(ds.Modality): p for p, ds in datasets.items()}
    images = [p for p, ds in datasets.items() if "PixelData" in ds]
    assert of["ECG"] not in images and len(images) == len(templates) - 1
    for n in range(len(templates)):
        for modality, path in of.items():
            assert template_for(modality, templates, n=n) == path, (modality, n)
            assert template_for(modality, templates[::-1], n=n) == path, (modality, n)
        assert template_for("DX", templates, n=n) == of["CR"]  # the stand-in
    # A modality with no template (MG), or none at all: the image templates in turn, never the ECG.
    for missing in ("MG", None, ""):
        picks = [template_for(missing, templates, n=n) for n in range(len(images))]
        assert sorted(picks) == sorted(images), missing
    with pytest.raises(ValueError, match="no template"):
        template_for("MG", [of["ECG"]], n=0)


ECG_STUDY = dataclasses.replace(
    STUDY, description="resting 12-lead ECG", number_of_series=1, instances_per_series=1
)
ECG_UID = "1.2.826.0.1.3680043.10.2123456.7.42"


def test_an_ecg_study_is_written_as_a_waveform_under_the_uid_given(tmp_path: Path) -> None:
    ecg = template_for("ECG", dicom_templates(), n=0)
    (path,) = write_dicom_study(
        tmp_path, templates=[ecg], patient=PATIENT, study=ECG_STUDY, seed=7, study_uid=ECG_UID
    )
    original, ds = pydicom.dcmread(ecg), pydicom.dcmread(path)
    assert path.relative_to(tmp_path).parts == (ECG_UID, "s1", "i1.dcm")
    assert (ds.StudyInstanceUID, ds.PatientID, ds.OtherPatientIDs) == (
        ECG_UID,
        PATIENT.mrn,
        PATIENT.resident_id,
    )
    assert ds.SOPClassUID == ECG_WAVEFORM_STORAGE and "PixelData" not in ds
    waveform = [item.WaveformData for item in original.WaveformSequence]
    assert [item.WaveformData for item in ds.WaveformSequence] == waveform
    # Series and instance UIDs are still ours, not the template's.
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        assert UID(ds[keyword].value).is_valid and ds[keyword].value != original[keyword].value
    # Nothing left of the template's recording that contradicts ours or names its staff.
    when = f"{STUDY.study_date:%Y%m%d}{STUDY.study_time:%H%M%S}"
    assert original.AcquisitionDateTime != when and ds.AcquisitionDateTime == when
    assert "RequestingPhysician" in original and "RequestingPhysician" not in ds
    assert "CurrentPatientLocation" in original and "CurrentPatientLocation" not in ds

    batch = read([path])

    assert batch.rejects == []
    (study,), (series,) = batch.studies, batch.series
    assert (study["study_instance_uid"], study["modality"], study["resident_id"]) == (
        ECG_UID,
        "ECG",
        PATIENT.resident_id,
    )
    assert (study["study_description"], study["study_date"]) == ("resting 12-lead ECG", "2024-03-05")
    assert (series["study_instance_uid"], series["sop_class_uid"], series["number_of_instances"]) == (
        ECG_UID,
        ECG_WAVEFORM_STORAGE,
        "1",
    )


def test_a_given_study_uid_is_checked_and_keeps_the_other_uids_apart(tmp_path: Path) -> None:
    ecg = [template("waveform_ecg.dcm")]
    for bad in ("1.2.03.4", "1.2.abc", "1." + "2" * 64):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            write_dicom_study(
                tmp_path / "bad", templates=ecg, patient=PATIENT, study=ECG_STUDY, seed=7, study_uid=bad
            )
    assert not (tmp_path / "bad").exists()
    one = write_dicom_study(
        tmp_path / "a", templates=ecg, patient=PATIENT, study=ECG_STUDY, seed=7, study_uid=ECG_UID
    )
    again = write_dicom_study(
        tmp_path / "b", templates=ecg, patient=PATIENT, study=ECG_STUDY, seed=7, study_uid=ECG_UID
    )
    other = write_dicom_study(
        tmp_path / "c", templates=ecg, patient=PATIENT, study=ECG_STUDY, seed=7, study_uid=ECG_UID + "1"
    )
    derived = write_dicom_study(tmp_path / "d", templates=ecg, patient=PATIENT, study=ECG_STUDY, seed=7)
    assert uids_of(one) == uids_of(again)
    # Two studies given the same seed by mistake still get distinct series and instances.
    for paths in (other, derived):
        assert not {u for t in uids_of(one) for u in t} & {u for t in uids_of(paths) for u in t}


HOSPITAL = Hospital(id="zz-h01", name="Test County Hospital", city="zz", level=CareLevel.COUNTY)


def imaging_records(
    uid: str, modality: str, number: int
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """An imaging study and its series as the generator emits them (its UIDs its own)."""
    study: dict[str, str | None] = {
        "hospital_id": HOSPITAL.id,
        "study_instance_uid": uid,
        "accession_number": f"A{number:08d}",
        "patient_mrn": PATIENT.mrn,
        "resident_id": PATIENT.resident_id,
        "encounter_id": "ENC-2024-000917",
        "modality": modality,
        "body_part": None if modality == "ECG" else "CHEST",
        "study_date": "2024-03-05",
        "study_description": "resting 12-lead ECG" if modality == "ECG" else f"{modality} chest",
        "referring_physician": "李医生",
        "number_of_series": "1",
    }
    series: dict[str, str | None] = {
        "hospital_id": HOSPITAL.id,
        "series_instance_uid": f"{uid}.1",
        "study_instance_uid": uid,
        "resident_id": PATIENT.resident_id,
        "modality": modality,
        "body_part": study["body_part"],
        "series_description": "series 1",
        "sop_class_uid": ECG_WAVEFORM_STORAGE if modality == "ECG" else None,
        "number_of_instances": "1",
        "series_date": "2024-03-05",
    }
    return study, series


@pytest.mark.parametrize("pacs_share", [0.0, 1.0], ids=["modality-style", "pacs-style"])
def test_write_media_writes_an_ecg_as_a_waveform_its_report_can_point_at(
    tmp_path: Path, pacs_share: float
) -> None:
    contracts = {
        d: load_contract(DATASETS / f"{d}.yaml") for d in ("patients", "imaging_studies", "imaging_series")
    }
    patient = dict.fromkeys(contracts["patients"].column_names) | {
        "hospital_id": HOSPITAL.id,
        "patient_mrn": PATIENT.mrn,
        "resident_id": PATIENT.resident_id,
        "name": "张伟",
        "sex": "M",
        "birth_date": "1980-05-01",
        "registered_at": "2020-01-01 08:00:00",
    }
    # The ECG fifth: the former rotation (study n from template n) would have written it as a US.
    modalities = ("CT", "MR", "MG", "DX", "ECG")
    uids = [f"1.2.826.0.1.3680043.10.1123456.{n}.{n}" for n in range(4)] + [ECG_UID]
    pairs = [imaging_records(uid, m, n) for n, (uid, m) in enumerate(zip(uids, modalities, strict=True))]
    records = {
        "patients": [patient],
        "imaging_studies": [study for study, _ in pairs],
        "imaging_series": [series for _, series in pairs],
    }

    export = write_media(
        tmp_path,
        "zz",
        HOSPITAL,
        records,
        contracts,
        batch=0,
        seed=11,
        corrupt=False,
        dicom_budget=10,
        pacs_share=pacs_share,
    )

    assert export.dicom_studies == 5 and export.pacs_studies == 5 * pacs_share
    files = [(key, tmp_path / "zz" / key) for key in export.keys if "/dicom/" in key]
    batch = read_dicom_files(files, hospital_id=HOSPITAL.id)
    assert batch.rejects == []
    studies = {s["study_instance_uid"]: s for s in batch.studies}
    # The ECG keeps the UID its report refers to: one waveform, one series.
    ecg = studies[ECG_UID]
    assert (ecg["modality"], ecg["number_of_series"], ecg["accession_number"]) == ("ECG", "1", "A00000004")
    (ecg_series,) = [s for s in batch.series if s["study_instance_uid"] == ECG_UID]
    assert (ecg_series["sop_class_uid"], ecg_series["number_of_instances"]) == (ECG_WAVEFORM_STORAGE, "1")
    # The image studies: from their modality's template (DX from CR's), MG from an image one.
    by_accession = {s["accession_number"]: s["modality"] for s in batch.studies}
    assert by_accession == {
        "A00000000": "CT",
        "A00000001": "MR",
        "A00000002": by_accession["A00000002"],
        "A00000003": "CR",
        "A00000004": "ECG",
    }
    assert by_accession["A00000002"] in {"CT", "MR", "CR", "NM", "US"}
    sop_classes = {s["sop_class_uid"] for s in batch.series if s["study_instance_uid"] != ECG_UID}
    assert ECG_WAVEFORM_STORAGE not in sop_classes
    if pacs_share:
        assert all(s["resident_id"] is None and s["_link_mrn"] == PATIENT.mrn for s in batch.studies)
        assert all(PATIENT.resident_id.encode() not in path.read_bytes() for _, path in files)
    else:
        assert all(s["resident_id"] == PATIENT.resident_id for s in batch.studies)

    # The crosscheck rows, read back from the files, agree with the reader.
    crosscheck = tmp_path / CROSSCHECK / "zz" / HOSPITAL.id / "imaging_studies" / "imaging_studies-0000.csv"
    with crosscheck.open(encoding="utf-8", newline="") as source:
        rows = {row["study_instance_uid"]: row for row in csv.DictReader(source)}
    assert set(rows) == set(studies)
    assert (rows[ECG_UID]["modality"], rows[ECG_UID]["number_of_series"]) == ("ECG", "1")
