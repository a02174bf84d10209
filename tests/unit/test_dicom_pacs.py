"""DICOM as PACS systems export it: extension-less files, a DICOMDIR media index, PatientID as the
hospital's MRN with the resident ID only in the other patient IDs, files streamed one at a time.
Inputs come from pydicom's bundled files, counted and checked with pydicom directly; no services."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import random
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.uid import UID

from ingestion.sources.dicom import (
    MEDIA_STORAGE_DIRECTORY,
    DicomBatch,
    DicomIndex,
    PatientTags,
    StudyTags,
    read_dicom_files,
    write_dicom_study,
    write_dicomdir,
)

pytestmark = pytest.mark.unit

RESIDENT_ID = "41010219800501123X"
PATIENT = PatientTags(
    name="Wang^Fang=王^芳",
    mrn="MRN0077",
    resident_id=RESIDENT_ID,
    birth_date=dt.date(1980, 5, 1),
    sex="F",
)
STUDY = StudyTags(
    study_date=dt.date(2024, 6, 3),
    description="头颅MR平扫",
    accession_number="ACC240603001",
    encounter_id="ENC-2024-001203",
    referring_physician="Li^Na=李^娜",
    institution_name="开封市第一人民医院",
    number_of_series=2,
    instances_per_series=2,
)
ECG_STUDY = dataclasses.replace(
    STUDY, description="resting 12-lead ECG", number_of_series=1, instances_per_series=1
)
ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG Waveform Storage (PS3.4)


def sample(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom's wheel should ship {name}"
    return Path(str(path))


def dicomdirtests() -> Path:
    return sample("DICOMDIR-reordered").parent


def read_folder(root: Path, folder: Path | None = None) -> DicomBatch:
    """Every file under `folder` (default: root), keyed by its path under `root`, as a landing
    listing would give them."""
    files = sorted(p for p in (folder or root).rglob("*") if p.is_file())
    return read_dicom_files(((p.relative_to(root).as_posix(), p) for p in files), hospital_id="kf-h03")


def as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bare(path: Path) -> bytes:
    """The file's dataset alone — implicit VR little endian, no preamble, no 'DICM', no file meta —
    as old modalities and archives write it."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    content = buffer.getvalue()
    assert content[128:132] != b"DICM"
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(io.BytesIO(content))
    return content


# ---------------------------------------------------------------------------------------------
# pydicom's own media export


def test_pydicom_media_export_is_indexed_with_its_dicomdirs() -> None:
    root = dicomdirtests()
    # Counted independently: every file pydicom reads that is not a media directory.
    studies, series, sops, mrn_of_study = set(), set(), set(), {}
    directories, not_dicom = set(), set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root.parent).as_posix()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            not_dicom.add(key)
            continue
        if ds.file_meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
            directories.add(key)
            continue
        studies.add(ds.StudyInstanceUID)
        series.add(ds.SeriesInstanceUID)
        sops.add(ds.SOPInstanceUID)
        mrn_of_study[ds.StudyInstanceUID] = ds.PatientID
    assert (len(studies), len(series), len(sops)) == (7, 14, 81)
    assert "dicomdirtests/DICOMDIR" in directories and "dicomdirtests/TINY_ALPHA/DICOMDIR" in directories
    # The variants not named DICOMDIR are recognised by content.
    assert "dicomdirtests/DICOMDIR-implicit" in directories

    batch = read_folder(root.parent, root)

    assert {s["study_instance_uid"] for s in batch.studies} == studies
    assert {s["series_instance_uid"] for s in batch.series} == series
    assert sum(int(s["number_of_instances"] or 0) for s in batch.series) == len(sops)
    assert {r.source for r in batch.rejects} == not_dicom  # the READMEs, nothing else
    assert all("not a DICOM file" in r.reason for r in batch.rejects)
    assert {i.source for i in batch.indexes} == directories
    for study in batch.studies:
        mrn = mrn_of_study[study["study_instance_uid"]]
        assert study["patient_mrn"] == mrn
        assert study["resident_id"] is None  # these files carry no other patient IDs
        assert study["_link_mrn"] == mrn
    for record in batch.series:
        assert record["resident_id"] is None and record["_link_mrn"]


def test_dicomdir_counts_are_what_pydicom_fileset_finds() -> None:
    root = dicomdirtests()
    batch = read_folder(root.parent, root)
    by_source = {i.source: i for i in batch.indexes}
    for key in ("dicomdirtests/DICOMDIR", "dicomdirtests/TINY_ALPHA/DICOMDIR"):
        fileset = FileSet(root.parent / key)
        expected = DicomIndex(
            source=key,
            patients=len(fileset.find_values("PatientID")),
            studies=len(fileset.find_values("StudyInstanceUID")),
            series=len(fileset.find_values("SeriesInstanceUID")),
            instances=len(fileset),
            note=None,  # every instance it lists is there, and nothing else under its folder
        )
        assert by_source[key] == expected
    assert (
        by_source["dicomdirtests/DICOMDIR"].instances,
        by_source["dicomdirtests/TINY_ALPHA/DICOMDIR"].instances,
    ) == (
        31,
        50,
    )
    # The empty variant lists nothing, and says so about the instances beside it.
    empty = by_source["dicomdirtests/DICOMDIR-empty.dcm"]
    assert (empty.patients, empty.studies, empty.series, empty.instances) == (0, 0, 0, 0)
    assert empty.note is not None and "31 instance file(s) under its folder are not listed" in empty.note


def test_files_are_recognised_by_content_whatever_their_name() -> None:
    ct = sample("CT_small.dcm").read_bytes()
    # The same instance as a modality's file, a PACS file, and a bare dataset.
    for name, content in (("1.2.3.dcm", ct), ("IMG00001", ct), ("I0", bare(sample("CT_small.dcm")))):
        batch = read_dicom_files([(f"kf-h03/dicom/x/{name}", content)], hospital_id="kf-h03")
        assert batch.rejects == [], name
        assert [s["modality"] for s in batch.studies] == ["CT"], name


def test_an_ecg_as_a_pacs_sends_it_is_indexed_and_linked_by_its_mrn() -> None:
    """pydicom's own 12-lead ECG, as it is: PatientID only, an empty OtherPatientIDs."""
    path = sample("waveform_ecg.dcm")
    ds = pydicom.dcmread(path)
    assert "PixelData" not in ds and "WaveformSequence" in ds
    for name, content in (("IMG00001", path.read_bytes()), ("I0", bare(path))):
        batch = read_dicom_files([(f"kf-h03/dicom/cd1/{name}", content)], hospital_id="kf-h03")
        assert batch.rejects == [], name
        (study,), (series,) = batch.studies, batch.series
        assert (study["study_instance_uid"], study["modality"]) == (ds.StudyInstanceUID, "ECG"), name
        assert (study["patient_mrn"], study["resident_id"], study["_link_mrn"]) == (
            ds.PatientID,
            None,
            ds.PatientID,
        ), name
        assert (series["series_instance_uid"], series["sop_class_uid"]) == (
            ds.SeriesInstanceUID,
            ECG_WAVEFORM_STORAGE,
        ), name
        assert series["_link_mrn"] == ds.PatientID, name


# ---------------------------------------------------------------------------------------------
# Patient identifiers


def ct_with(**identifiers: object) -> bytes:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    for keyword in ("PatientID", "OtherPatientIDs", "OtherPatientIDsSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    return as_bytes(ds)


def other_id(value: str, issuer: str) -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.IssuerOfPatientID = issuer
    item.TypeOfPatientID = "TEXT"
    return item


@pytest.mark.parametrize(
    ("identifiers", "resident_id", "mrn"),
    [
        pytest.param(
            {
                "PatientID": "MRN9",
                "OtherPatientIDsSequence": [other_id("YB2024-88", "NHSA"), other_id(RESIDENT_ID, "CN-ID")],
            },
            RESIDENT_ID,
            "MRN9",
            id="sequence",
        ),
        pytest.param(
            {"PatientID": "MRN9", "OtherPatientIDs": ["HIS0001", RESIDENT_ID]},
            RESIDENT_ID,
            "MRN9",
            id="second-of-other-ids",
        ),
        pytest.param(
            {"PatientID": "MRN9", "OtherPatientIDs": ["4101021980050112", "HIS0001"]},
            None,
            "MRN9",
            id="nothing-shaped-like-a-resident-id",
        ),
        pytest.param({"PatientID": "MRN9"}, None, "MRN9", id="mrn-only"),
        pytest.param({}, None, None, id="neither"),
    ],
)
def test_resident_id_comes_from_the_other_ids_and_the_mrn_links_the_rest(
    identifiers: dict[str, object], resident_id: str | None, mrn: str | None
) -> None:
    batch = read_dicom_files([("IMG00001", ct_with(**identifiers))], hospital_id="kf-h03")

    assert batch.rejects == []
    (study,), (series,) = batch.studies, batch.series
    assert (study["patient_mrn"], study["resident_id"], series["resident_id"]) == (
        mrn,
        resident_id,
        resident_id,
    )
    for record in (study, series):
        if resident_id is None and mrn is not None:
            assert record["_link_mrn"] == mrn
        else:
            # With a resident ID nothing needs linking; with no ID at all, validation quarantines
            # the record as required_missing.
            assert "_link_mrn" not in record


def test_patient_identifiers_come_from_any_instance_of_the_study() -> None:
    ct = pydicom.dcmread(sample("CT_small.dcm"))
    del ct.OtherPatientIDsSequence
    ct.PatientID = "MRN9"
    without = as_bytes(ct)
    ct.OtherPatientIDs = RESIDENT_ID
    ct.SOPInstanceUID = ct.SOPInstanceUID + ".2"
    with_id = as_bytes(ct)
    batch = read_dicom_files([("a", without), ("b", with_id)], hospital_id="kf-h03")
    (study,), (series,) = batch.studies, batch.series
    assert study["_source"] == "a" and study["resident_id"] == series["resident_id"] == RESIDENT_ID
    assert "_link_mrn" not in study and "_link_mrn" not in series


# ---------------------------------------------------------------------------------------------
# Bad files


def test_non_dicom_files_without_extension_are_rejected_with_a_reason() -> None:
    rng = random.Random(11)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    files: list[tuple[str, bytes | Path]] = [
        ("kf-h03/dicom/cd1/AUTORUN", b"[autorun]\r\nopen=viewer\\DicomViewer.exe\r\n"),
        ("kf-h03/dicom/cd1/IMG00099", noise),
        ("kf-h03/dicom/cd1/LOGO", b"\x89PNG\r\n\x1a\n" + noise[:500]),
        ("kf-h03/dicom/cd2/DICOMDIR", noise[:700]),
        ("kf-h03/dicom/cd1/IMG00001", sample("CT_small.dcm")),
    ]
    batch = read_dicom_files(files, hospital_id="kf-h03")

    reasons = {r.source: r.reason for r in batch.rejects}
    assert set(reasons) == {key for key, _ in files[:4]}
    for key in ("kf-h03/dicom/cd1/AUTORUN", "kf-h03/dicom/cd1/IMG00099", "kf-h03/dicom/cd1/LOGO"):
        assert reasons[key].startswith("not a DICOM file: no 'DICM' prefix")
    assert reasons["kf-h03/dicom/cd2/DICOMDIR"].startswith("DICOMDIR is not a DICOM file")
    assert batch.indexes == [] and len(batch.studies) == 1


def test_an_instance_named_dicomdir_is_not_read_as_an_instance() -> None:
    batch = read_dicom_files([("cd/dicomdir", sample("CT_small.dcm"))], hospital_id="kf-h03")
    assert batch.studies == [] and batch.indexes == []
    (reject,) = batch.rejects
    assert "not a DICOM media directory" in reject.reason


def test_truncated_instances_are_rejected() -> None:
    ct_path, mr_path = sample("CT_small.dcm"), sample("MR_small.dcm")
    ct, mr = ct_path.read_bytes(), mr_path.read_bytes()
    pixels_at = pydicom.dcmread(ct_path)["PixelData"].file_tell
    uid = pydicom.dcmread(mr_path, stop_before_pixels=True).get_item("SeriesInstanceUID")
    assert pixels_at is not None and isinstance(uid, RawDataElement)
    cut: list[tuple[str, bytes | Path]] = [
        # A transfer cut inside the pixel data: the header, read with stop_before_pixels, is whole.
        ("in-pixels", ct[: pixels_at + 1000]),
        # Cut inside a value of the header, and inside the next element's tag.
        ("in-a-value", mr[: uid.value_tell + uid.length // 2]),
        ("in-a-tag", mr[: uid.value_tell + uid.length + 3]),
        ("bare-in-pixels", bare(ct_path)[:-5000]),
        ("in-meta", ct[:200]),
    ]
    batch = read_dicom_files([*cut, ("whole", ct)], hospital_id="kf-h03")

    reasons = {r.source: r.reason for r in batch.rejects}
    assert set(reasons) == {key for key, _ in cut}
    assert all("truncated" in reason for reason in reasons.values()), reasons
    assert [s["_source"] for s in batch.studies] == ["whole"]


def test_truncated_waveforms_are_rejected() -> None:
    """A waveform has no pixel data to stop before: the cut is in its WaveformSequence, or after."""
    path = sample("waveform_ecg.dcm")
    ecg = path.read_bytes()
    ds = pydicom.dcmread(path)
    waveforms = ds["WaveformSequence"]
    first, second = waveforms.value
    samples = first["WaveformData"]
    last = ds.get_item(list(ds.keys())[-1])
    assert waveforms.file_tell is not None and samples.file_tell is not None
    assert isinstance(last, RawDataElement) and last.value_tell + last.length == len(ecg)
    sequence_at = waveforms.file_tell - 12  # tag, VR, reserved, length: then its first item
    cut: list[tuple[str, bytes | Path]] = [
        # Inside the sequence's header, the element before it whole (an empty DS, which pydicom
        # holds as None): pydicom stops without a word, the waveform gone.
        ("in-sequence-header", ecg[: sequence_at + 6]),
        ("in-samples", ecg[: samples.file_tell + len(samples.value) // 2]),
        ("between-items", ecg[: second.file_tell]),
        ("after-the-waveform", ecg[: last.value_tell + last.length // 2]),
        ("bare-in-samples", bare(path)[: -len(ecg) // 4]),
    ]
    batch = read_dicom_files([*cut, ("whole", ecg)], hospital_id="kf-h03")

    reasons = {r.source: r.reason for r in batch.rejects}
    assert set(reasons) == {key for key, _ in cut}
    assert all("truncated" in reason for reason in reasons.values()), reasons
    assert [s["_source"] for s in batch.studies] == ["whole"]


# ---------------------------------------------------------------------------------------------
# Our own PACS-style export, read back


def test_pacs_style_study_with_its_dicomdir_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "kf-h03" / "dicom"
    paths = write_dicom_study(
        out, templates=[sample("MR_small.dcm")], patient=PATIENT, study=STUDY, seed=5, pacs_style=True
    )
    folder = paths[0].parent
    assert [p.name for p in paths] == ["IMG00001", "IMG00002", "IMG00003", "IMG00004"]
    assert all(p.parent == folder for p in paths)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientID == "MRN0077"
        assert "OtherPatientIDs" not in ds and "OtherPatientIDsSequence" not in ds
        assert RESIDENT_ID.encode() not in path.read_bytes()

    dicomdir = write_dicomdir(folder)

    assert dicomdir == folder / "DICOMDIR"
    assert RESIDENT_ID.encode() not in dicomdir.read_bytes()
    fileset = FileSet(dicomdir)  # pydicom reloads it: the offsets hold
    assert sorted(Path(i.path).name for i in fileset) == [p.name for p in paths]
    assert fileset.find_values("PatientID") == ["MRN0077"]
    assert write_dicomdir(folder).read_bytes() == dicomdir.read_bytes()  # same files, same DICOMDIR

    batch = read_folder(tmp_path, out)

    assert batch.rejects == []
    assert batch.indexes == [
        DicomIndex(
            source=dicomdir.relative_to(tmp_path).as_posix(),
            patients=1,
            studies=1,
            series=2,
            instances=4,
            note=None,
        )
    ]
    (study,) = batch.studies
    assert (study["patient_mrn"], study["resident_id"], study["_link_mrn"]) == ("MRN0077", None, "MRN0077")
    assert study["number_of_series"] == "2" and study["accession_number"] == "ACC240603001"
    assert [(s["resident_id"], s["_link_mrn"]) for s in batch.series] == [(None, "MRN0077")] * 2


def test_a_pacs_style_ecg_with_its_dicomdir_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "kf-h03" / "dicom"
    uid = "1.2.826.0.1.3680043.10.2654321.3.9"  # as the ECG cart gave it, its report's too
    paths = write_dicom_study(
        out,
        templates=[sample("waveform_ecg.dcm")],
        patient=PATIENT,
        study=ECG_STUDY,
        seed=5,
        pacs_style=True,
        study_uid=uid,
    )
    assert [p.relative_to(out).as_posix() for p in paths] == [f"{uid}/IMG00001"]
    ds = pydicom.dcmread(paths[0])
    assert (ds.PatientID, ds.StudyInstanceUID, ds.SOPClassUID) == ("MRN0077", uid, ECG_WAVEFORM_STORAGE)
    assert "OtherPatientIDs" not in ds and "OtherPatientIDsSequence" not in ds
    assert "PixelData" not in ds and len(ds.WaveformSequence) > 0
    assert RESIDENT_ID.encode() not in paths[0].read_bytes()

    dicomdir = write_dicomdir(paths[0].parent)

    assert RESIDENT_ID.encode() not in dicomdir.read_bytes()
    (instance,) = FileSet(dicomdir)
    assert instance.node.record_type == "WAVEFORM"
    assert (instance.StudyInstanceUID, instance.PatientID) == (uid, "MRN0077")

    batch = read_folder(tmp_path, out)

    assert batch.rejects == []
    assert batch.indexes == [
        DicomIndex(
            source=dicomdir.relative_to(tmp_path).as_posix(),
            patients=1,
            studies=1,
            series=1,
            instances=1,
            note=None,
        )
    ]
    (study,), (series,) = batch.studies, batch.series
    assert (study["study_instance_uid"], study["modality"], study["study_description"]) == (
        uid,
        "ECG",
        "resting 12-lead ECG",
    )
    assert (study["resident_id"], study["_link_mrn"]) == (None, "MRN0077")
    assert (series["sop_class_uid"], series["resident_id"], series["_link_mrn"]) == (
        ECG_WAVEFORM_STORAGE,
        None,
        "MRN0077",
    )


def test_a_pacs_style_study_uid_must_not_hold_the_resident_id(tmp_path: Path) -> None:
    holding = f"1.2.{RESIDENT_ID[:17]}.1"
    with pytest.raises(ValueError, match="resident ID"):
        write_dicom_study(
            tmp_path / "pacs",
            templates=[sample("waveform_ecg.dcm")],
            patient=PATIENT,
            study=ECG_STUDY,
            seed=5,
            pacs_style=True,
            study_uid=holding,
        )
    # As a modality sends it the files name the resident anyway: nothing to hide.
    (path,) = write_dicom_study(
        tmp_path / "modality",
        templates=[sample("waveform_ecg.dcm")],
        patient=PATIENT,
        study=ECG_STUDY,
        seed=5,
        study_uid=holding,
    )
    assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == holding


def test_only_a_modality_style_study_carries_the_resident_id(tmp_path: Path) -> None:
    """PACS-style UIDs derive from the MRN, so another resident ID gives the same UIDs; modality-style
    files carry the resident ID, and their UIDs derive from it."""
    other = dataclasses.replace(PATIENT, resident_id="410102198005011220")
    written = {
        (pacs, patient.resident_id): write_dicom_study(
            tmp_path / f"{pacs}-{patient.resident_id}",
            templates=[sample("MR_small.dcm")],
            patient=patient,
            study=STUDY,
            seed=5,
            pacs_style=pacs,
        )
        for pacs in (False, True)
        for patient in (PATIENT, other)
    }

    def uids(paths: list[Path]) -> list[str]:
        return [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]

    assert uids(written[True, RESIDENT_ID]) == uids(written[True, other.resident_id])
    assert uids(written[False, RESIDENT_ID]) != uids(written[False, other.resident_id])
    first = pydicom.dcmread(written[False, RESIDENT_ID][0], stop_before_pixels=True)
    assert (first.PatientID, first.OtherPatientIDs) == ("MRN0077", RESIDENT_ID)


def test_the_dicomdir_cross_check_notes_missing_and_unlisted_files(tmp_path: Path) -> None:
    paths = write_dicom_study(
        tmp_path, templates=[sample("CT_small.dcm")], patient=PATIENT, study=STUDY, seed=8, pacs_style=True
    )
    folder = paths[0].parent
    write_dicomdir(folder)
    stray = pydicom.dcmread(sample("MR_small.dcm"))
    stray.save_as(folder / "IMG00099", enforce_file_format=True)
    paths[1].unlink()

    (index,) = read_folder(tmp_path).indexes

    assert index.instances == 4
    assert index.note == (
        "1 of the 4 instances it lists were not among the files; "
        "1 instance file(s) under its folder are not listed"
    )


def test_write_dicomdir_refuses_file_ids_the_standard_does_not_allow(tmp_path: Path) -> None:
    paths = write_dicom_study(
        tmp_path, templates=[sample("CT_small.dcm")], patient=PATIENT, study=STUDY, seed=9
    )
    with pytest.raises(ValueError, match="not a valid DICOM File ID"):
        write_dicomdir(paths[0].parent)  # s1/i1.dcm: lower case and a dot
    with pytest.raises(ValueError, match="no DICOM instance"):
        write_dicomdir(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------
# Streaming


def generated_instances(count: int, *, pixel_bytes: int) -> Iterator[tuple[str, bytes]]:
    """`count` distinct CT instances of `pixel_bytes` of pixels (a multiple of 1024), made one at a
    time."""
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = pixel_bytes // 1024, 512
    ds.PixelData = bytes(pixel_bytes)
    base = str(ds.SOPInstanceUID)
    for n in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{base}.{n}")
        yield f"kf-h03/dicom/x/IMG{n:05d}", as_bytes(ds)


def test_files_are_consumed_lazily_and_each_released_before_the_next() -> None:
    still_held: list[int] = []
    handed_out = 0

    def stream() -> Iterator[tuple[str, bytes]]:
        nonlocal handed_out
        for key, content in generated_instances(20, pixel_bytes=4 * 1024):
            baseline = sys.getrefcount(content)
            handed_out += 1
            yield key, content
            # Resumed: the reader wants the next file. Nothing of its own may still hold this one.
            still_held.append(sys.getrefcount(content) - baseline)

    files = stream()
    batch = read_dicom_files(files, hospital_id="kf-h03")

    assert handed_out == 20 and still_held == [0] * 20
    assert [s["number_of_instances"] for s in batch.series] == ["20"]


def test_memory_stays_flat_however_many_files_are_streamed() -> None:
    count, size = 24, 512 * 1024
    tracemalloc.start()
    try:
        batch = read_dicom_files(generated_instances(count, pixel_bytes=size), hospital_id="kf-h03")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [s["number_of_instances"] for s in batch.series] == [str(count)]
    # A few files' worth at most (the generator's buffer and the file in hand), never all 12 MB.
    assert peak < 6 * size, peak
