"""DICOM files: a study/series index for `imaging_studies` and `imaging_series` (never pixel data),
plus the synthetic-data side — rewriting pydicom's bundled sample files to a generated patient and
corrupting a file on purpose for defect injection.

A file that is not DICOM, is cut short or corrupt, or lacks a Study/Series/SOP Instance UID becomes
a `Reject` with a reason; nothing here raises for bad input.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom
import pydicom.data
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, generate_uid

RawRecord = dict[str, str | None]

STUDY_COLUMNS = (
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
)
SERIES_COLUMNS = (
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
)

# What a damaged file makes pydicom raise (found by fuzzing its sample files): a missing 'DICM'
# prefix, a value whose length is not a multiple of its size, a read past the end (OSError
# "No tag to read", struct.error on a short header, EOFError), garbage where a VR should be
# (NotImplementedError "Unknown Value Representation"), undecodable or NUL-laden text (ValueError).
_READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    OSError,
    EOFError,
    struct.error,
    NotImplementedError,
    ValueError,
)
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str


@dataclass(frozen=True)
class DicomBatch:
    studies: list[RawRecord] = field(default_factory=list)
    series: list[RawRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class _Instance:
    source: str
    study_uid: str
    series_uid: str
    sop_uid: str
    tags: dict[str, str | None]


# ---------------------------------------------------------------------------------------------
# Reading


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue):
        # OtherPatientIDs may list several IDs; the resident ID is the one our hospitals put first.
        if not len(value):
            return None
        value = value[0]
    text = str(value).strip()
    return text or None


def canonical_date(raw: str | None) -> str | None:
    """DICOM DA `YYYYMMDD` (or ACR-NEMA's legacy `YYYY.MM.DD`, which PS3.5 asks readers to accept)
    as `YYYY-MM-DD`; anything else is returned as is so that Spark quarantines it with its rule."""
    if raw is None:
        return None
    for layout in ("%Y%m%d", "%Y.%m.%d"):
        try:
            return dt.datetime.strptime(raw, layout).date().isoformat()
        except ValueError:
            continue
    return raw


def _instance(source: str, ds: Dataset) -> _Instance | str:
    if len(ds) == 0:
        # pydicom stops quietly at the end of the data; a file cut inside its header reads as
        # an empty dataset.
        return "truncated DICOM file: no data elements after the file meta header"
    uids = {kw: _text(ds.get(kw)) for kw in _UIDS}
    missing = [kw for kw, uid in uids.items() if uid is None]
    if missing:
        return f"DICOM file without {', '.join(missing)}"
    study_date = _text(ds.get("StudyDate"))
    tags = {
        "accession_number": _text(ds.get("AccessionNumber")),
        "patient_mrn": _text(ds.get("PatientID")),
        "resident_id": _text(ds.get("OtherPatientIDs")),
        "encounter_id": _text(ds.get("AdmissionID")),
        "modality": _text(ds.get("Modality")),
        "body_part": _text(ds.get("BodyPartExamined")),
        "study_date": canonical_date(study_date),
        "series_date": canonical_date(_text(ds.get("SeriesDate")) or study_date),
        "study_description": _text(ds.get("StudyDescription")),
        "series_description": _text(ds.get("SeriesDescription")),
        "referring_physician": _text(ds.get("ReferringPhysicianName")),
        "sop_class_uid": _text(ds.get("SOPClassUID")),
    }
    return _Instance(
        source=source,
        study_uid=uids["StudyInstanceUID"] or "",
        series_uid=uids["SeriesInstanceUID"] or "",
        sop_uid=uids["SOPInstanceUID"] or "",
        tags=tags,
    )


def _read_one(source: str, content: bytes | Path) -> _Instance | str:
    """The instance, or why the file was rejected."""
    try:
        if isinstance(content, Path):
            if content.stat().st_size == 0:
                return "empty file"
            ds = pydicom.dcmread(content, stop_before_pixels=True)
        else:
            if not content:
                return "empty file"
            ds = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
        # Inside the try: pydicom decodes values lazily, so a corrupt value only fails here.
        return _instance(source, ds)
    except InvalidDicomError:
        return "not a DICOM file: no 'DICM' prefix after the 128-byte preamble"
    except _READ_ERRORS as exc:
        return f"truncated or corrupt DICOM file: {type(exc).__name__}: {exc}"


def _study_record(hospital_id: str, first: _Instance, series: set[str]) -> RawRecord:
    record: RawRecord = {c: first.tags.get(c) for c in STUDY_COLUMNS}
    record.update(
        hospital_id=hospital_id,
        study_instance_uid=first.study_uid,
        number_of_series=str(len(series)),
        _source=first.source,
    )
    return record


def _series_record(hospital_id: str, first: _Instance, sops: set[str]) -> RawRecord:
    record: RawRecord = {c: first.tags.get(c) for c in SERIES_COLUMNS}
    record.update(
        hospital_id=hospital_id,
        series_instance_uid=first.series_uid,
        study_instance_uid=first.study_uid,
        number_of_instances=str(len(sops)),
        _source=first.source,
    )
    return record


def read_dicom_files(paths: Iterable[tuple[str, bytes | Path]], *, hospital_id: str) -> DicomBatch:
    """One `imaging_studies` record per study and one `imaging_series` record per series, in order
    of first appearance. Study- and series-level values come from the first instance read (the
    first file is the `_source`); counts are of distinct series / SOP instances, so a file sent
    twice is not counted twice."""
    rejects: list[Reject] = []
    studies: dict[str, tuple[_Instance, set[str]]] = {}
    series: dict[str, tuple[_Instance, set[str]]] = {}
    for source, content in paths:
        result = _read_one(source, content)
        if isinstance(result, str):
            rejects.append(Reject(source=source, reason=result))
            continue
        studies.setdefault(result.study_uid, (result, set()))[1].add(result.series_uid)
        series.setdefault(result.series_uid, (result, set()))[1].add(result.sop_uid)
    return DicomBatch(
        studies=[_study_record(hospital_id, first, s) for first, s in studies.values()],
        series=[_series_record(hospital_id, first, s) for first, s in series.values()],
        rejects=rejects,
    )


# ---------------------------------------------------------------------------------------------
# Writing (synthetic data)

_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# Small, single-frame (or single-waveform), little-endian exports of the modalities our hospitals
# send, from the files bundled with the pydicom wheel — so the generator needs no network.
# pydicom ships no DX or MG file; the generator can stand in CR for DX.
TEMPLATE_NAMES = (
    "CT_small.dcm",  # CT, 39 KB
    "MR_small.dcm",  # MR, 10 KB
    "dicomdirtests/77654033/CR1/6154",  # CR (cervical spine), 2 KB
    "JPEG-lossy.dcm",  # NM (whole-body bone scan), 10 KB
    "examples_palette.dcm",  # US, 283 KB
    "waveform_ecg.dcm",  # ECG (12-lead waveform, no pixels), 291 KB
)


def dicom_templates() -> list[Path]:
    """The bundled sample files the generator rewrites; one per modality (see TEMPLATE_NAMES)."""
    return [_TEST_FILES / name for name in TEMPLATE_NAMES if (_TEST_FILES / name).is_file()]


@dataclass(frozen=True, kw_only=True)
class PatientTags:
    name: str  # DICOM PN, e.g. "Zhang^Wei" or "张^伟"
    mrn: str  # the hospital's local patient ID → PatientID
    resident_id: str  # 18-character resident ID → OtherPatientIDs
    birth_date: dt.date
    sex: Literal["M", "F", "O"]


@dataclass(frozen=True, kw_only=True)
class StudyTags:
    study_date: dt.date
    description: str
    accession_number: str
    encounter_id: str
    referring_physician: str  # DICOM PN
    institution_name: str
    study_time: dt.time = dt.time(9, 0)
    number_of_series: int = 1
    instances_per_series: int = 1

    def __post_init__(self) -> None:
        for name in ("number_of_series", "instances_per_series"):
            if not 1 <= getattr(self, name) <= 3:
                raise ValueError(f"{name} must be 1..3, not {getattr(self, name)}")


# Identity left over from the template's original patient and staff: an export of our patient
# must not carry someone else's address or age.
_FOREIGN_IDENTITY = (
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "OtherPatientNames",
    "PatientWeight",
    "PatientSize",
    "OperatorsName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
)
# Dates that would otherwise contradict the new study date.
_OTHER_DATES = ("SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate")
_OTHER_TIMES = ("SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime")


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def _uid(seed: int, patient: PatientTags, study: StudyTags, *parts: str) -> UID:
    # Patient and accession are mixed in so that two studies given the same seed by mistake still
    # get distinct UIDs; the same inputs always give the same UIDs.
    return generate_uid(
        entropy_srcs=["medshare", str(seed), patient.resident_id, study.accession_number, *parts]
    )


def _retag(ds: Dataset, patient: PatientTags, study: StudyTags) -> None:
    # Decode every text value with the template's character set before declaring UTF-8, so that
    # values we do not touch are re-encoded rather than written as bytes in the old encoding.
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _FOREIGN_IDENTITY:
        if keyword in ds:
            delattr(ds, keyword)
    date, time = study.study_date.strftime("%Y%m%d"), study.study_time.strftime("%H%M%S")
    ds.PatientName = patient.name
    ds.PatientID = patient.mrn
    ds.OtherPatientIDs = patient.resident_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, study.study_date)
    ds.InstitutionName = study.institution_name
    ds.AdmissionID = study.encounter_id
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyDescription = study.description
    ds.StudyDate, ds.StudyTime = date, time
    for keyword in _OTHER_DATES:
        setattr(ds, keyword, date)
    for keyword in _OTHER_TIMES:
        setattr(ds, keyword, time)


def write_dicom_study(
    out_dir: Path, *, templates: Sequence[Path], patient: PatientTags, study: StudyTags, seed: int
) -> list[Path]:
    """Write one study of `study.number_of_series` × `study.instances_per_series` files under
    `out_dir/<StudyInstanceUID>/`, pixel data kept. Series k is made from templates[k % len] —
    pass a single template for a single-modality study. Same arguments, same UIDs and files."""
    if not templates:
        raise ValueError("write_dicom_study needs at least one template")
    study_uid = _uid(seed, patient, study, "study")
    written: list[Path] = []
    for k in range(study.number_of_series):
        template = templates[k % len(templates)]
        series_uid = _uid(seed, patient, study, "series", str(k))
        for i in range(study.instances_per_series):
            ds = pydicom.dcmread(template)
            _retag(ds, patient, study)
            sop_uid = _uid(seed, patient, study, "sop", str(k), str(i))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            if "FrameOfReferenceUID" in ds:
                # Shared with the template's original patient otherwise.
                ds.FrameOfReferenceUID = _uid(seed, patient, study, "frame", str(k))
            ds.SeriesNumber, ds.InstanceNumber = k + 1, i + 1
            path = out_dir / study_uid / f"s{k + 1}" / f"i{i + 1}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


# A deterministic junk pattern, so that the generator's defects are reproducible from its seed.
_GARBAGE = bytes((i * 37 + 11) % 256 for i in range(132))


def corrupt_dicom(path: Path, *, mode: Literal["truncate", "garbage"]) -> None:
    """Damage a written file in place: `truncate` keeps only its first 200 bytes (cut inside the
    file meta header); `garbage` overwrites the 128-byte preamble and the 'DICM' magic."""
    content = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(content[:200])
    else:
        path.write_bytes(_GARBAGE + content[len(_GARBAGE) :])
