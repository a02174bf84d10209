"""DICOM files as modalities and PACS export them: a study/series index for `imaging_studies` and
`imaging_series` (never pixel or waveform data: an ECG cart's 12-lead waveform is indexed as a
study of modality ECG like any image), the DICOMDIR media index of a CD/DVD-style export, plus the
synthetic-data side — rewriting pydicom's bundled sample files to a generated patient (as a
modality or as a PACS exports them), writing a DICOMDIR, and corrupting a file on purpose for
defect injection.

Files are recognised by content, whatever their name (`IMG00001`, `1.2.3.dcm`, `I0`). A file that
is not DICOM, is cut short or corrupt, or lacks a Study/Series/SOP Instance UID becomes a `Reject`
with a reason; nothing here raises for bad input.

PatientID is the hospital's MRN (`patient_mrn`). The resident ID number is taken only from
OtherPatientIDs / OtherPatientIDsSequence, and only when shaped like one; a record without one
carries `_link_mrn` (the PatientID), the key by which a later step links it to the hospital's
`patients` rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import re
import shutil
import struct
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import pydicom
import pydicom.data
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.fileset import FileSet, is_conformant_file_id
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
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
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR

# What a damaged file makes pydicom raise (found by fuzzing its sample files): a missing 'DICM'
# prefix, a value whose length is not a multiple of its size, a read past the end (OSError
# "No tag to read", struct.error on a short header, EOFError), garbage where a VR should be
# (NotImplementedError "Unknown Value Representation"), undecodable or NUL-laden text (ValueError),
# a flipped byte where a sequence item or a character set should be (TypeError).
_READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    OSError,
    EOFError,
    struct.error,
    NotImplementedError,
    ValueError,
    TypeError,
)
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_UID_SHAPE = re.compile(r"[0-9]+(\.[0-9]+)*")
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1; what we write
_RESIDENT_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_NOT_DICOM = (
    "not a DICOM file: no 'DICM' prefix after the 128-byte preamble, "
    "nor a bare dataset with Study/Series/SOP Instance UIDs"
)
# The dataset itself is deflated: the stream pydicom read from is not the file.
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95")
_SEQUENCE_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
_PIXEL_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str


@dataclass(frozen=True)
class DicomIndex:
    """A DICOMDIR read: how many records of each level it lists. `note` says where it and the
    files read in the same batch disagree; None when they agree."""

    source: str
    patients: int
    studies: int
    series: int
    instances: int  # records referencing an instance file: IMAGE, WAVEFORM, SR DOCUMENT, …
    note: str | None = None


@dataclass(frozen=True)
class DicomBatch:
    studies: list[RawRecord] = field(default_factory=list)
    series: list[RawRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    indexes: list[DicomIndex] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class _Instance:
    source: str
    study_uid: str
    series_uid: str
    sop_uid: str
    tags: dict[str, str | None]


@dataclass(frozen=True, kw_only=True)
class _Directory:
    index: DicomIndex
    listed: frozenset[str]  # the SOP Instance UIDs it references


@dataclass(kw_only=True)
class _Group:
    """A study or series being gathered: its first instance, the distinct members (series or SOP
    instances), and the first patient identifiers any of its instances carried."""

    first: _Instance
    members: set[str] = field(default_factory=set)
    resident_id: str | None = None
    patient_mrn: str | None = None

    def add(self, instance: _Instance, member: str) -> None:
        self.members.add(member)
        self.resident_id = self.resident_id or instance.tags["resident_id"]
        self.patient_mrn = self.patient_mrn or instance.tags["patient_mrn"]


# ---------------------------------------------------------------------------------------------
# Reading


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, MultiValue):
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


def resident_id_of(ds: Dataset) -> str | None:
    """The 18-character resident ID number among the patient's other IDs (OtherPatientIDs, then
    OtherPatientIDsSequence), or None. Only a value shaped like one (17 digits + digit or X) is
    taken: PACS put insurance and archive numbers there too. Its check digit is left to the
    `resident_id` rule, so that a mistyped ID is quarantined rather than silently ignored."""
    other = ds.get("OtherPatientIDs")
    values = list(other) if isinstance(other, MultiValue) else [other]
    values += [item.get("PatientID") for item in ds.get("OtherPatientIDsSequence") or ()]
    for value in values:
        text = _text(value)
        if text and _RESIDENT_ID_SHAPE.fullmatch(text):
            return text
    return None


def _uid_shaped(value: object) -> bool:
    text = _text(value)
    return text is not None and len(text) <= 64 and _UID_SHAPE.fullmatch(text) is not None


def _is_dicomdir_name(source: str) -> bool:
    return source.replace("\\", "/").rsplit("/", 1)[-1].upper() == "DICOMDIR"


def _is_directory(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    media_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return media_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


@contextmanager
def _opened(content: bytes | Path) -> Iterator[tuple[BinaryIO, int]]:
    if isinstance(content, Path):
        with content.open("rb") as fp:
            yield fp, content.stat().st_size
    else:
        # BytesIO shares the bytes object until written to: no copy of the file.
        yield io.BytesIO(content), len(content)


def _cut_short(ds: Dataset, fp: BinaryIO, size: int) -> str | None:
    """Why the file ends before its data does, or None. pydicom reads a value cut short without a
    complaint, so check what it read: where it stopped at the end of the file, the last element
    must be whole; where it stopped before the pixel data (which a transfer cut short is most
    often cut inside), the pixel data must fit in the file. Element boundaries are not checked.

    A waveform (ECG) has no pixel data: its samples are in WaveformSequence items, which
    `stop_before_pixels` reads like any other element, so such a file is always read to its end."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") in _DEFLATED:
        return None  # pydicom read an inflated copy: positions in `fp` mean nothing
    tags = list(ds.keys())
    if not tags:
        return None
    if fp.tell() >= size:
        # keep_deferred: pydicom holds an empty US/DS/OB… value as None, which get_item would
        # otherwise take for a deferred value and convert, dropping the position it was read at.
        return _cut_in_last_element(ds.get_item(tags[-1], keep_deferred=True), fp, size)
    return _cut_in_pixel_data(ds, fp, size)


def _cut_in_last_element(last: DataElement | RawDataElement, fp: BinaryIO, size: int) -> str | None:
    if isinstance(last, DataElement):
        if last.VR == "SQ" and last.is_undefined_length:
            # pydicom parses such a sequence as it reads, and stops quietly where the file does.
            fp.seek(size - 8)
            if fp.read(8) not in _SEQUENCE_DELIMITERS:
                return f"truncated DICOM file: it ends inside sequence {last.tag}"
        return None
    if last.length == 0xFFFFFFFF:
        return None
    end = last.value_tell + last.length
    if end > size:
        return f"truncated DICOM file: it ends inside element {last.tag}"
    if end < size:
        # Fewer than 8 bytes after it: pydicom stops without a word when a header is cut.
        return f"truncated DICOM file: it ends inside the header of the element after {last.tag}"
    return None


def _cut_in_pixel_data(ds: Dataset, fp: BinaryIO, size: int) -> str | None:
    implicit, little = ds.original_encoding
    order = "<" if little or little is None else ">"
    start = fp.tell()
    header = fp.read(12)
    if len(header) < 8 or struct.unpack(f"{order}HH", header[:4]) not in _PIXEL_TAGS:
        return None
    # Some writers switch to implicit VR inside an explicit VR file; pydicom reads on, so do we.
    if implicit or not b"AA" <= header[4:6] <= b"ZZ":
        (length,), value_at = struct.unpack(f"{order}L", header[4:8]), start + 8
    elif header[4:6] in _LONG_VRS:
        if len(header) < 12:
            return "truncated DICOM file: it ends inside the pixel data element's header"
        (length,), value_at = struct.unpack(f"{order}L", header[8:12]), start + 12
    else:
        (length,), value_at = struct.unpack(f"{order}H", header[6:8]), start + 8
    if length != 0xFFFFFFFF:
        if value_at + length > size:
            present = max(size - value_at, 0)
            return f"truncated DICOM file: pixel data of {length} bytes, only {present} present"
        return None
    # Encapsulated: items (FFFE,E000) with their lengths, up to a sequence delimiter (FFFE,E0DD).
    at = value_at
    while True:
        fp.seek(at)
        item = fp.read(8)
        if len(item) < 8:
            return "truncated DICOM file: encapsulated pixel data ends before its delimiter"
        group, element, length = struct.unpack(f"{order}HHL", item)
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return None  # the delimiter, or something this check does not judge
        at += 8 + length
        if at > size:
            return "truncated DICOM file: encapsulated pixel data ends inside a fragment"


def _dcmread(fp: BinaryIO, size: int) -> tuple[Dataset, str | None] | None:
    """The dataset and why it is cut short (None: it is whole), or None when it is not DICOM."""
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        # Before any value is decoded: decoding drops the length the element was written with.
        return ds, _cut_short(ds, fp, size)
    except InvalidDicomError:
        pass
    # No 'DICM' prefix: old modalities and archives write the bare dataset (implicit VR little
    # endian, no preamble, no file meta). pydicom's `force` reads any bytes as such a dataset, so
    # they count as DICOM only if the elements up to the UIDs really yield an instance's UIDs, or
    # directory records. Only those are read to decide: a bare file cut short further on (inside
    # an ECG's WaveformSequence, say) is DICOM, damaged — not "not DICOM".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failed probe's complaints about garbage
        fp.seek(0)
        try:
            head = read_partial(fp, stop_when=_past_uids, force=True)
            found = all(_uid_shaped(head.get(kw)) for kw in _UIDS) or "DirectoryRecordSequence" in head
        # Arbitrary bytes read as a dataset can fail in any way; every failure means "not DICOM".
        except Exception:
            return None
        if not found:
            return None
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            return ds, _cut_short(ds, fp, size)
        # Still bytes of unknown origin: whatever pydicom raises, the batch goes on.
        except Exception as exc:
            return Dataset(), _corrupt(exc)


def _past_uids(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > 0x0020000E  # (0020,000E) Series Instance UID, the last of _UIDS by tag


def _corrupt(exc: Exception) -> str:
    return f"truncated or corrupt DICOM file: {type(exc).__name__}: {exc}"


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
        "resident_id": resident_id_of(ds),
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


def _directory(source: str, ds: Dataset) -> _Directory | str:
    records = ds.get("DirectoryRecordSequence")
    if records is None:
        return "DICOMDIR without a Directory Record Sequence: not a DICOM media directory"
    levels: Counter[str] = Counter()
    instances = 0
    listed: set[str] = set()
    for record in records:
        if record.get("RecordInUseFlag") == 0:
            continue  # an inactive record (PS3.3 F.3.2.2, retired but still written)
        levels[_text(record.get("DirectoryRecordType")) or ""] += 1
        uid = _text(record.get("ReferencedSOPInstanceUIDInFile"))
        if uid:
            instances += 1
            listed.add(uid)
    index = DicomIndex(
        source=source,
        patients=levels["PATIENT"],
        studies=levels["STUDY"],
        series=levels["SERIES"],
        instances=instances,
    )
    return _Directory(index=index, listed=frozenset(listed))


def _read_one(source: str, content: bytes | Path) -> _Instance | _Directory | str:
    """The instance or the media directory in the file, or why the file was rejected."""
    named_dicomdir = _is_dicomdir_name(source)
    try:
        with _opened(content) as (fp, size):
            if size == 0:
                return "empty file"
            read = _dcmread(fp, size)
        if read is None:
            return f"DICOMDIR is {_NOT_DICOM}" if named_dicomdir else _NOT_DICOM
        ds, cut = read
        if cut:
            return cut
        # Inside the try: pydicom decodes values lazily, so a corrupt value only fails here.
        if named_dicomdir or _is_directory(ds):
            return _directory(source, ds)
        return _instance(source, ds)
    except _READ_ERRORS as exc:
        return _corrupt(exc)


def _with_link(record: RawRecord, group: _Group) -> RawRecord:
    record["resident_id"] = group.resident_id
    if group.resident_id is None and group.patient_mrn:
        record["_link_mrn"] = group.patient_mrn
    return record


def _study_record(hospital_id: str, group: _Group) -> RawRecord:
    first = group.first
    record: RawRecord = {c: first.tags.get(c) for c in STUDY_COLUMNS}
    record.update(
        hospital_id=hospital_id,
        study_instance_uid=first.study_uid,
        patient_mrn=group.patient_mrn,
        number_of_series=str(len(group.members)),
        _source=first.source,
    )
    return _with_link(record, group)


def _series_record(hospital_id: str, group: _Group) -> RawRecord:
    first = group.first
    record: RawRecord = {c: first.tags.get(c) for c in SERIES_COLUMNS}
    record.update(
        hospital_id=hospital_id,
        series_instance_uid=first.series_uid,
        study_instance_uid=first.study_uid,
        number_of_instances=str(len(group.members)),
        _source=first.source,
    )
    return _with_link(record, group)


def _folder(key: str) -> str:
    return key.replace("\\", "/").rpartition("/")[0]


def _indexes(directories: list[_Directory], found: dict[str, str]) -> list[DicomIndex]:
    """Each DICOMDIR with a note comparing what it lists with the instances read: listed but not
    read (by SOP Instance UID, anywhere in the batch), and read under its folder but not listed
    (an instance belongs to the deepest folder holding a DICOMDIR, so nested exports are apart)."""
    folders = {_folder(d.index.source) for d in directories}
    owned: dict[str, set[str]] = {}
    for sop, source in found.items():
        folder = _folder(source)
        while folder not in folders and folder:
            folder = _folder(folder)
        if folder in folders:
            owned.setdefault(folder, set()).add(sop)
    out = []
    for d in directories:
        problems = []
        missing = len(d.listed - found.keys())
        unlisted = len(owned.get(_folder(d.index.source), set()) - d.listed)
        if missing:
            problems.append(f"{missing} of the {len(d.listed)} instances it lists were not among the files")
        if unlisted:
            problems.append(f"{unlisted} instance file(s) under its folder are not listed")
        out.append(dataclasses.replace(d.index, note="; ".join(problems) or None))
    return out


def read_dicom_files(files: Iterable[tuple[str, bytes | Path]], *, hospital_id: str) -> DicomBatch:
    """One `imaging_studies` record per study and one `imaging_series` record per series, in order
    of first appearance; one `DicomIndex` per DICOMDIR. Study- and series-level values come from
    the first instance read (the first file is the `_source`), the patient's identifiers from the
    first instance that has them; counts are of distinct series / SOP instances, so a file sent
    twice is not counted twice. A record none of whose instances has a resident ID carries
    `_link_mrn` = their PatientID (when they have one).

    `files` is consumed lazily, one (key, bytes or path) at a time, and nothing of a file but a few
    short tag values is kept once it is read: the caller may stream any number of them."""
    rejects: list[Reject] = []
    directories: list[_Directory] = []
    studies: dict[str, _Group] = {}
    series: dict[str, _Group] = {}
    found: dict[str, str] = {}  # SOP Instance UID → key of its first file
    for source, content in files:
        result = _read_one(source, content)
        # Let this file's bytes go before the next one is fetched.
        del content
        if isinstance(result, str):
            rejects.append(Reject(source=source, reason=result))
        elif isinstance(result, _Directory):
            directories.append(result)
        else:
            studies.setdefault(result.study_uid, _Group(first=result)).add(result, result.series_uid)
            series.setdefault(result.series_uid, _Group(first=result)).add(result, result.sop_uid)
            found.setdefault(result.sop_uid, source)
    return DicomBatch(
        studies=[_study_record(hospital_id, g) for g in studies.values()],
        series=[_series_record(hospital_id, g) for g in series.values()],
        rejects=rejects,
        indexes=_indexes(directories, found),
    )


# ---------------------------------------------------------------------------------------------
# Writing (synthetic data)

_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"

# Small, single-frame (or single-waveform), little-endian exports of the modalities our hospitals
# send, from the files bundled with the pydicom wheel — so the generator needs no network.
# pydicom ships no DX or MG file: see `template_for`.
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


# A modality no template has, and the one whose template it is written from: DX and CR are both
# projection radiographs.
_STAND_INS = {"DX": "CR"}


@functools.cache
def _template_kind(path: Path) -> tuple[str | None, bool]:
    """A template's Modality, and whether it is an image (has pixel data) — not a waveform."""
    ds = pydicom.dcmread(path, defer_size=1024)  # its large values are not needed
    return _text(ds.get("Modality")), "PixelData" in ds


def template_for(modality: str | None, templates: Sequence[Path], *, n: int) -> Path:
    """The template to write a study of `modality` from: the first of `templates` whose Modality is
    that one (or its stand-in, CR for DX); for a modality none has, the image templates in turn
    (the study's number `n` modulo their count) — never a waveform, which no image study is."""
    wanted = (modality or "").strip().upper()
    wanted = _STAND_INS.get(wanted, wanted)
    if wanted:
        for path in templates:
            if _template_kind(path)[0] == wanted:
                return path
    images = [path for path in templates if _template_kind(path)[1]]
    if not images:
        raise ValueError(f"no template for modality {modality!r} and no image template to stand in")
    return images[n % len(images)]


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
    "RequestingPhysician",
    "CurrentPatientLocation",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
)
# Dates that would otherwise contradict the new study date.
_OTHER_DATES = ("SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate")
_OTHER_TIMES = ("SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime")
_OTHER_DATETIMES = ("AcquisitionDateTime",)  # rewritten only where the template has them


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def _uid(seed: int, patient_key: str, study: StudyTags, *parts: str) -> UID:
    # Patient and accession are mixed in so that two studies given the same seed by mistake still
    # get distinct UIDs; the same inputs always give the same UIDs.
    return generate_uid(entropy_srcs=["medshare", str(seed), patient_key, study.accession_number, *parts])


def _retag(ds: Dataset, patient: PatientTags, study: StudyTags, *, pacs_style: bool) -> None:
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
    if pacs_style:
        # A PACS knows the patient by the hospital's MRN only.
        if "OtherPatientIDs" in ds:
            del ds.OtherPatientIDs
    else:
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
    for keyword in _OTHER_DATETIMES:
        if keyword in ds:
            setattr(ds, keyword, date + time)


def _check_study_uid(study_uid: str, patient: PatientTags, *, pacs_style: bool) -> None:
    if len(study_uid) > 64 or not _VALID_UID.fullmatch(study_uid):
        raise ValueError(f"study_uid {study_uid!r} is not a valid DICOM UID")
    # The resident ID's 17 digits: its last character may be an X, which no UID holds.
    if pacs_style and len(patient.resident_id) >= 17 and patient.resident_id[:17] in study_uid:
        raise ValueError("a PACS-style study_uid must not hold the patient's resident ID")


def write_dicom_study(
    out_dir: Path,
    *,
    templates: Sequence[Path],
    patient: PatientTags,
    study: StudyTags,
    seed: int,
    pacs_style: bool = False,
    study_uid: str | None = None,
) -> list[Path]:
    """Write one study of `study.number_of_series` × `study.instances_per_series` files under
    `out_dir/<StudyInstanceUID>/`, pixel data (or waveform) kept. Series k is made from
    templates[k % len] — pass a single template for a single-modality study (`template_for`
    picks it). Same arguments, same UIDs and files.

    As a modality sends it (default): `s<k>/i<n>.dcm`, PatientID = MRN and OtherPatientIDs = the
    resident ID. As a PACS exports it (`pacs_style`): `IMG00001`, `IMG00002`… (no extension,
    numbered across the study), PatientID = MRN and no resident ID anywhere — not even mixed into
    the UIDs, which then derive from the MRN. `write_dicomdir(<the study's folder>)` adds the
    DICOMDIR such an export carries.

    `study_uid`: the Study Instance UID the study already has (e.g. the one an ECG report refers
    to), instead of one derived from the seed; series and SOP Instance UIDs are still derived, with
    it mixed in. Raises ValueError when it is not a valid UID, or when PACS-style it holds the
    resident ID."""
    if not templates:
        raise ValueError("write_dicom_study needs at least one template")
    patient_key = patient.mrn if pacs_style else patient.resident_id
    given: tuple[str, ...] = ()  # mixed into the other UIDs
    if study_uid is None:
        study_uid = _uid(seed, patient_key, study, "study")
    else:
        _check_study_uid(study_uid, patient, pacs_style=pacs_style)
        given = (study_uid,)
    written: list[Path] = []
    for k in range(study.number_of_series):
        template = templates[k % len(templates)]
        series_uid = _uid(seed, patient_key, study, *given, "series", str(k))
        for i in range(study.instances_per_series):
            ds = pydicom.dcmread(template)
            _retag(ds, patient, study, pacs_style=pacs_style)
            sop_uid = _uid(seed, patient_key, study, *given, "sop", str(k), str(i))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            if "FrameOfReferenceUID" in ds:
                # Shared with the template's original patient otherwise.
                ds.FrameOfReferenceUID = _uid(seed, patient_key, study, *given, "frame", str(k))
            ds.SeriesNumber, ds.InstanceNumber = k + 1, i + 1
            if pacs_style:
                path = out_dir / study_uid / f"IMG{k * study.instances_per_series + i + 1:05d}"
            else:
                path = out_dir / study_uid / f"s{k + 1}" / f"i{i + 1}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
    return written


def write_dicomdir(folder: Path) -> Path:
    """Write `folder/DICOMDIR` (replacing one already there) listing the DICOM instance files under
    `folder` where they are; files pydicom cannot read as DICOM are left out. Returns its path.

    pydicom's FileSet builds the directory records but writes instances into its own layout
    (`PT000000/ST000000/…`): it is written to a scratch folder, its records are pointed at the
    files in place, and the FileSet reloaded from them rewrites the DICOMDIR with its offsets
    (`write(use_existing=True)`). Raises ValueError when there is no instance, when a file's
    path is not a valid File ID (PS3.10 8.2: at most 8 components of at most 8 characters of
    A-Z 0-9 _), or when an instance lacks what its directory records need (PatientID, StudyID,
    SeriesNumber, InstanceNumber…)."""
    target = folder / "DICOMDIR"
    file_ids: dict[str, list[str]] = {}  # SOP Instance UID → File ID components
    fileset = FileSet()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != target):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except _READ_ERRORS:
            continue
        if _is_directory(ds):
            continue
        relative = path.relative_to(folder)
        if not is_conformant_file_id(relative):
            raise ValueError(f"{relative.as_posix()!r} is not a valid DICOM File ID (PS3.10 8.2)")
        try:
            fileset.add(ds)
        except ValueError as exc:
            raise ValueError(f"{relative.as_posix()}: {exc}") from exc
        file_ids[str(ds.SOPInstanceUID)] = list(relative.parts)
    if not file_ids:
        raise ValueError(f"no DICOM instance under {folder}")
    # The same instances give the same DICOMDIR.
    fileset.UID = generate_uid(entropy_srcs=["medshare-dicomdir", *sorted(file_ids)])
    with tempfile.TemporaryDirectory() as scratch:
        fileset.write(scratch)
        dicomdir = pydicom.dcmread(Path(scratch) / "DICOMDIR")
        for record in dicomdir.DirectoryRecordSequence:
            uid = record.get("ReferencedSOPInstanceUIDInFile")
            if uid is not None:
                parts = file_ids[str(uid)]
                record.ReferencedFileID = parts if len(parts) > 1 else parts[0]
        # FileSet.load wants the DICOMDIR's own file at the root of the instances it lists.
        shutil.copyfile(Path(scratch) / "DICOMDIR", target)
    dicomdir.filename = str(target)
    in_place = FileSet(dicomdir)
    in_place.write(use_existing=True)
    return target


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
