"""Reading landed files on the Spark executors: file → Arrow record batches, never through the driver.

The driver lists the landing bucket and plans `ReadTask`s (a few files each; a hospital's DICOM
files together, since a study is the sum of its instances). `read_files` runs them with
`mapInArrow`: each Python worker streams its objects from the store, decodes and parses them
(CSV, JSON Lines, Excel, FHIR bundles and Bulk Data NDJSON, DICOM) and yields batches of one wide
schema — every contract column of every dataset as text, plus meta columns:

    _dataset        the dataset of a record
    _source, _line  landing key and where in it the record starts (line, sheet row, entry)
    _rule, _error, _raw   a record the reader could not map: the rule it breaks, why, its text
    _profile        the source profile the file was read with (formats and spellings follow it)
    _checksum       the object store's ETag of the file
    _fhir_id, _link_patient, _link_encounter, _link_mrn   for linking records to their patient

What happened to each file — read (in which encoding, how many records, its SHA-256), rejected
and why, or one entry of it rejected — is gathered in an accumulator (`FileResults`), not in the
records. Nothing raises for bad input. The worker's memory is bounded by one chunk of records (the
exceptions: a FHIR bundle, being one JSON document, and a workbook's sheet, which calamine loads
whole; both are held while they are read).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
from pyspark.accumulators import Accumulator, AccumulatorParam

from ingestion.profiles import Profile
from ingestion.sources.tabular import BadRecord, FileProblem, Part, read_csv, read_jsonl
from ingestion.sources.text import UTF8, NotText, open_utf8
from lakehouse.contracts import Contract
from lakehouse.settings import Settings
from lakehouse.storage import Credentials, endpoint_of

if TYPE_CHECKING:
    from minio import Minio
    from pyspark.sql import DataFrame, SparkSession

Kind = Literal["csv", "jsonl", "xlsx", "fhir", "fhir-ndjson", "dicom"]
TABULAR_SUFFIXES: dict[str, Kind] = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".xlsx": "xlsx",
    ".xls": "xlsx",  # older Excel, still common in hospital offices: calamine reads both
}
META_TEXT = (
    "_source",
    "_rule",
    "_error",
    "_raw",
    "_profile",
    "_checksum",
    "_fhir_id",
    "_link_patient",
    "_link_encounter",
    "_link_mrn",
)
META_LONG = ("_line", "_order")
RECORD_META = ("_source", "_line", "_rule", "_error", "_raw", "_profile", "_checksum", "_fhir_id")
LINK_META = ("_link_patient", "_link_encounter", "_link_mrn")


# --- What the driver plans ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SourceFile:
    key: str  # the landing key (what reports and tables name)
    object_name: str  # the object in the landing bucket (key with the run's prefix)
    size: int
    etag: str
    order: int  # delivery order in the run: a later delivery wins among rows of the same key
    kind: Kind
    hospital_id: str
    dataset: str | None  # None for a file of several datasets (FHIR, DICOM)
    profile: Profile
    # A file recorded by an older version of the job (checksum, no ETag): read only if changed.
    known_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.model_dump(mode="json")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceFile:
        return cls(**{**data, "profile": Profile.model_validate(data["profile"])})


@dataclass(frozen=True, kw_only=True)
class ReadTask:
    files: tuple[SourceFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, kw_only=True)
class StoreAccess:
    """How the job and its workers reach the city's buckets (the city's own identity)."""

    host: str
    access_key: str
    secret_key: str
    secure: bool
    region: str

    def client(self) -> Minio:
        from minio import Minio

        return Minio(
            self.host,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
        )


@dataclass(frozen=True)
class DatasetShape:
    columns: tuple[str, ...]
    required: tuple[str, ...]
    types: dict[str, str]


def store_access(settings: Settings, credentials: Credentials) -> StoreAccess:
    endpoint = urlsplit(endpoint_of(settings, credentials))
    return StoreAccess(
        host=endpoint.netloc,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key.get_secret_value(),
        secure=endpoint.scheme == "https",
        region=settings.s3_region,
    )


def shapes(contracts: Mapping[str, Contract]) -> dict[str, DatasetShape]:
    return {
        name: DatasetShape(c.column_names, c.required, {col.name: col.type for col in c.columns})
        for name, c in contracts.items()
    }


def output_schema(contracts: Mapping[str, Contract]) -> pa.Schema:
    columns = sorted({col for c in contracts.values() for col in c.column_names})
    fields = [pa.field("_dataset", pa.string())]
    fields += [pa.field(c, pa.string()) for c in columns]
    fields += [pa.field(m, pa.string()) for m in META_TEXT]
    fields += [pa.field(m, pa.int64()) for m in META_LONG]
    return pa.schema(fields)


def classify(key: str, *, datasets: Iterable[str], hospitals: set[str]) -> tuple[str, Kind, str | None] | str:
    """(hospital, kind, dataset) of a landing key, or why it is not an export we read."""
    path = PurePosixPath(key)
    parts, suffix = path.parts, path.suffix.lower()
    if len(parts) < 3:
        return "unexpected location: expected <hospital>/<dataset|fhir|dicom>/<file>"
    hospital, folder = parts[0], parts[1]
    if hospital not in hospitals:
        return f"{hospital!r} is not a hospital of this city"
    if folder in set(datasets) and suffix in TABULAR_SUFFIXES:
        return hospital, TABULAR_SUFFIXES[suffix], folder
    if folder == "fhir" and suffix == ".json":
        return hospital, "fhir", None
    if folder == "fhir" and suffix == ".ndjson":
        return hospital, "fhir-ndjson", None
    if folder == "dicom":
        # PACS media carry extension-less instance files and a DICOMDIR: content decides.
        return hospital, "dicom", None
    return f"unknown file type {suffix or '(none)'!r} in folder {folder!r}"


def plan(files: Sequence[SourceFile], *, parallelism: int) -> list[ReadTask]:
    """Tasks of similar size, largest first (so the long ones start first). A hospital's DICOM
    files form one task; other files are packed into tasks of at least a few megabytes."""
    dicom: dict[str, list[SourceFile]] = {}
    others: list[SourceFile] = []
    for f in files:
        (dicom.setdefault(f.hospital_id, []) if f.kind == "dicom" else others).append(f)
    tasks = [ReadTask(files=tuple(group)) for group in dicom.values()]
    total = sum(f.size for f in others)
    target = min(max(total // max(4 * parallelism, 1), 8 << 20), 256 << 20)
    bins: list[list[SourceFile]] = []
    sizes: list[int] = []
    for f in sorted(others, key=lambda f: (-f.size, f.key)):
        # First-fit decreasing: a file joins the first task with room, else starts one.
        for i, used in enumerate(sizes):
            if used + f.size <= target:
                bins[i].append(f)
                sizes[i] += f.size
                break
        else:
            bins.append([f])
            sizes.append(f.size)
    tasks += [ReadTask(files=tuple(b)) for b in bins]
    return sorted(tasks, key=lambda t: -t.size)


# --- Arrow batches --------------------------------------------------------------------------------
class _Batches:
    """Turns records into record batches of the output schema."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.names = schema.names

    def _build(self, n: int, arrays: dict[str, pa.Array], constants: Mapping[str, object]) -> pa.RecordBatch:
        out = []
        for f in self.schema:
            if f.name in arrays:
                out.append(arrays[f.name])
            elif f.name in constants and constants[f.name] is not None:
                out.append(pa.array([constants[f.name]] * n, f.type))
            else:
                out.append(pa.nulls(n, f.type))
        return pa.RecordBatch.from_arrays(out, schema=self.schema)

    def part(self, part: Part, constants: Mapping[str, object]) -> Iterator[pa.RecordBatch]:
        n = len(part.lines)
        if n:
            yield self._build(n, {"_line": part.lines, **part.values}, constants)
        if part.bad:
            yield self.bad(part.bad, constants)

    def bad(self, bad: Sequence[BadRecord], constants: Mapping[str, object]) -> pa.RecordBatch:
        arrays = {
            "_line": pa.array([b.line for b in bad], pa.int64()),
            "_rule": pa.array([b.rule for b in bad], pa.string()),
            "_error": pa.array([b.reason for b in bad], pa.string()),
            "_raw": pa.array([b.raw for b in bad], pa.string()),
        }
        return self._build(len(bad), arrays, constants)

    def records(
        self, dataset: str, records: Sequence[Mapping[str, object]], constants: Mapping[str, object]
    ) -> pa.RecordBatch:
        """Records as dicts (FHIR, DICOM): every schema column a record holds is taken."""
        arrays: dict[str, pa.Array] = {"_dataset": pa.array([dataset] * len(records), pa.string())}
        for f in self.schema:
            if f.name in arrays or f.name in constants:
                continue
            values = [r.get(f.name) for r in records]
            if any(v is not None for v in values):
                if f.type == pa.int64():
                    arrays[f.name] = pa.array([None if v is None else int(str(v)) for v in values], f.type)
                else:
                    arrays[f.name] = pa.array([None if v in (None, "") else str(v) for v in values], f.type)
        return self._build(len(records), arrays, constants)


# --- The worker -----------------------------------------------------------------------------------
class FileReader:
    """Reads the files of tasks in a Python worker; one instance per worker process."""

    def __init__(
        self, access: StoreAccess, bucket: str, schema: pa.Schema, datasets: Mapping[str, DatasetShape]
    ) -> None:
        self.access, self.bucket, self.datasets = access, bucket, datasets
        self.out = _Batches(schema)
        self._client: Minio | None = None
        self.results: list[dict[str, object]] = []  # what happened to each file, for the driver

    def note(self, f: SourceFile, **values: object) -> None:
        """Record what happened to a file: status, error, encoding, records, sha256, size, …"""
        self.results.append(
            {
                "key": f.key,
                "format": f.kind,
                "profile": f.profile.name,
                **{k: v for k, v in values.items() if v is not None},
            }
        )

    @property
    def client(self) -> Minio:
        if self._client is None:
            self._client = self.access.client()
        return self._client

    def task(self, task: ReadTask) -> Iterator[pa.RecordBatch]:
        dicom = [f for f in task.files if f.kind == "dicom"]
        for f in task.files:
            if f.kind != "dicom":
                yield from self.file(f)
        if dicom:
            yield from self.dicom(dicom)

    def _open(self, f: SourceFile) -> Any:
        return self.client.get_object(self.bucket, f.object_name)

    def _unchanged(self, f: SourceFile) -> bool:
        """For a file the ledger knows by checksum only: whether its content is still that."""
        if f.known_sha256 is None:
            return False
        digest = hashlib.sha256()
        response = self._open(f)
        try:
            for part in response.stream(1 << 20):
                digest.update(part)
        finally:
            response.close()
            response.release_conn()
        return digest.hexdigest() == f.known_sha256

    def file(self, f: SourceFile) -> Iterator[pa.RecordBatch]:
        if self._unchanged(f):
            self.note(f, status="unchanged", sha256=f.known_sha256, size=f.size)
            return
        reader = {
            "csv": self._text,
            "jsonl": self._text,
            "xlsx": self._xlsx,
            "fhir": self._fhir_bundle,
            "fhir-ndjson": self._fhir_ndjson,
        }[f.kind]
        yield from reader(f)

    def _constants(self, f: SourceFile, dataset: str) -> dict[str, object]:
        return {
            "_dataset": dataset,
            "_source": f.key,
            "_profile": f.profile.name,
            "_checksum": f.etag,
            "_order": f.order,
        }

    def _text(self, f: SourceFile) -> Iterator[pa.RecordBatch]:
        assert f.dataset is not None
        shape = self.datasets[f.dataset]
        constants = self._constants(f, f.dataset)
        response = self._open(f)
        records = 0
        try:
            try:
                stream = open_utf8(response, f.profile.encoding)
                if f.kind == "csv":
                    parts = read_csv(
                        stream,
                        profile=f.profile,
                        columns=shape.columns,
                        required=shape.required,
                        encoding=stream.encoding,
                    )
                else:
                    text = io.TextIOWrapper(io.BufferedReader(stream), encoding=UTF8, newline="")
                    chunks = read_jsonl(
                        text, profile=f.profile, columns=shape.columns, encoding=stream.encoding
                    )
                    parts = (chunk.part() for chunk in chunks)
            except (NotText, FileProblem) as exc:
                self.note(f, status="rejected", error=str(exc), size=f.size)
                return
            for part in parts:
                records += len(part)
                yield from self.out.part(part, constants)
            stream.drain()
        finally:
            response.close()
            response.release_conn()
        self.note(
            f,
            status="ingested",
            encoding=stream.encoding,
            records=records,
            sha256=stream.sha256.hexdigest(),
            size=stream.size,
        )

    def _download(self, f: SourceFile, folder: str) -> tuple[Path, str]:
        # calamine picks the format (.xlsx, .xls) by the file's extension: keep the landed one.
        path = Path(folder) / f"export{PurePosixPath(f.key).suffix.lower()}"
        digest = hashlib.sha256()
        response = self._open(f)
        try:
            with path.open("wb") as out:
                for part in response.stream(1 << 20):
                    digest.update(part)
                    out.write(part)
        finally:
            response.close()
            response.release_conn()
        return path, digest.hexdigest()

    def _xlsx(self, f: SourceFile) -> Iterator[pa.RecordBatch]:
        from ingestion.sources.excel import read_xlsx

        assert f.dataset is not None
        shape = self.datasets[f.dataset]
        constants = self._constants(f, f.dataset)
        with tempfile.TemporaryDirectory(prefix="medshare-xlsx-") as folder:
            path, sha256 = self._download(f, folder)
            records = 0
            try:
                chunks = read_xlsx(
                    path,
                    profile=f.profile,
                    columns=shape.columns,
                    required=shape.required,
                    types=shape.types,
                )
                for chunk in chunks:
                    records += len(chunk)
                    yield from self.out.part(chunk.part(), constants)
            except FileProblem as exc:
                self.note(f, status="rejected", error=str(exc), sha256=sha256, size=f.size)
                return
        self.note(f, status="ingested", encoding="xlsx", records=records, sha256=sha256, size=f.size)

    def _emit(
        self, f: SourceFile, by_dataset: Mapping[str, Sequence[Mapping[str, object]]]
    ) -> Iterator[pa.RecordBatch]:
        base = {"_source": f.key, "_profile": f.profile.name, "_checksum": f.etag, "_order": f.order}
        for dataset, records in sorted(by_dataset.items()):
            for start in range(0, len(records), 8192):
                yield self.out.records(dataset, records[start : start + 8192], base)

    def _fhir_bundle(self, f: SourceFile) -> Iterator[pa.RecordBatch]:
        from ingestion.sources.fhir import read_fhir_file

        response = self._open(f)
        try:
            content = response.read()
        finally:
            response.close()
            response.release_conn()
        batch = read_fhir_file(f.key, content, hospital_id=f.hospital_id, systems=f.profile.fhir)
        records = {d: [r for r in rs if d in self.datasets] for d, rs in batch.records.items()}
        yield from self._emit(f, records)
        # Nothing readable at all is a rejected file (its reasons in one row); otherwise every
        # entry that was not readable is listed with its reason. Resource types that no dataset
        # holds are counted.
        rejected = bool(batch.rejects) and not any(records.values())
        if not rejected:
            for number, reject in enumerate(batch.rejects, start=1):
                self.note(f, status="entry_rejected", error=reject.reason, line=number)
        self.note(
            f,
            status="rejected" if rejected else "ingested",
            error="; ".join(r.reason for r in batch.rejects[:3]) if rejected else None,
            encoding="json",
            records=sum(len(r) for r in records.values()),
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            not_read=dict(batch.skipped) or None,
        )

    def _fhir_ndjson(self, f: SourceFile) -> Iterator[pa.RecordBatch]:
        from ingestion.sources.fhir import UNPLACED, read_fhir_ndjson

        response = self._open(f)
        stream = _Hashing(response)
        pending: dict[str, list[Mapping[str, object]]] = {}
        skipped: dict[str, int] = {}
        records = 0
        try:
            lines = io.BufferedReader(stream, buffer_size=1 << 20)
            for dataset, record in read_fhir_ndjson(
                f.key, lines, hospital_id=f.hospital_id, systems=f.profile.fhir, skipped=skipped
            ):
                records += 1
                if dataset == UNPLACED:  # a bad line of a file whose name gives no resource type
                    self.note(
                        f,
                        status="entry_rejected",
                        error=record.get("_error"),
                        line=int(str(record.get("_line"))),
                    )
                    continue
                pending.setdefault(dataset, []).append(record)
                if len(pending[dataset]) >= 8192:
                    yield from self._emit(f, {dataset: pending.pop(dataset)})
            yield from self._emit(f, pending)
        finally:
            response.close()
            response.release_conn()
        self.note(
            f,
            status="ingested",
            encoding="utf-8",
            records=records,
            sha256=stream.sha256.hexdigest(),
            size=stream.size,
            not_read=dict(skipped) or None,
        )

    def dicom(self, files: Sequence[SourceFile]) -> Iterator[pa.RecordBatch]:
        from ingestion.sources.dicom import read_dicom_files

        digests: dict[str, str] = {}
        by_key = {f.key: f for f in files}

        def contents() -> Iterator[tuple[str, bytes]]:
            for f in files:
                response = self._open(f)
                try:
                    content = response.read()
                finally:
                    response.close()
                    response.release_conn()
                digests[f.key] = hashlib.sha256(content).hexdigest()
                yield f.key, content

        batch = read_dicom_files(contents(), hospital_id=files[0].hospital_id)
        base = {"_profile": files[0].profile.name}
        for dataset, records in (("imaging_studies", batch.studies), ("imaging_series", batch.series)):
            for record in records:
                # A study or series is made of many files: its source is the first one read.
                source = by_key[str(record["_source"])]
                record["_checksum"], record["_order"] = source.etag, str(source.order)
            for start in range(0, len(records), 8192):
                yield self.out.records(dataset, records[start : start + 8192], base)
        rejected = {r.source: r.reason for r in batch.rejects}
        indexes = {str(getattr(i, "source", "")) for i in getattr(batch, "indexes", [])}
        for f in files:
            status = "rejected" if f.key in rejected else "index" if f.key in indexes else "ingested"
            self.note(
                f,
                status=status,
                error=rejected.get(f.key),
                encoding="dicom",
                sha256=digests.get(f.key),
                size=f.size,
            )


class _Hashing(io.RawIOBase):
    """A raw stream over an HTTP response that hashes what passes."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


class _Results(AccumulatorParam[list[dict[str, object]]]):
    """What the workers say of each file, gathered on the driver (an accumulator: the records
    themselves go to Spark, the few words about each file do not)."""

    def zero(self, value: list[dict[str, object]]) -> list[dict[str, object]]:
        return []

    def addInPlace(self, a: list[dict[str, object]], b: list[dict[str, object]]) -> list[dict[str, object]]:
        a.extend(b)
        return a


@dataclass(frozen=True)
class FileResults:
    accumulator: Accumulator[list[dict[str, object]]]

    def collect(self) -> list[dict[str, object]]:
        """One result per (file, status, line), whatever tasks were retried or read twice."""
        unique: dict[tuple[object, ...], dict[str, object]] = {}
        for r in self.accumulator.value:
            unique[(r["key"], r.get("status"), r.get("line"))] = r
        return list(unique.values())


def _reader_function(
    access: StoreAccess,
    bucket: str,
    schema: pa.Schema,
    datasets: Mapping[str, DatasetShape],
    results: Accumulator[list[dict[str, object]]],
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        reader = FileReader(access, bucket, schema, datasets)
        try:
            for batch in batches:
                for task in batch.column("task").to_pylist():
                    data = json.loads(task)
                    yield from reader.task(ReadTask(files=tuple(SourceFile.from_json(f) for f in data)))
        finally:
            results.add(reader.results)

    return read


def read_files(
    spark: SparkSession,
    tasks: Sequence[ReadTask],
    *,
    access: StoreAccess,
    bucket: str,
    contracts: Mapping[str, Contract],
) -> tuple[DataFrame, FileResults]:
    """Every record of the tasks' files (in `bucket`), read on the executors, one Spark partition
    per task, and — once the frame has been computed — what happened to each file. The schema
    holds the columns of `contracts` only: read one dataset's extracts with that dataset alone
    (a narrow schema is much cheaper to move into Spark)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = output_schema(contracts)
    rows = [(json.dumps([f.to_json() for f in t.files], ensure_ascii=False),) for t in tasks]
    rdd = spark.sparkContext.parallelize(rows, max(len(rows), 1))
    source = spark.createDataFrame(rdd, "task string")
    results = spark.sparkContext.accumulator([], _Results())
    reader = _reader_function(access, bucket, schema, shapes(contracts), results)
    return source.mapInArrow(reader, from_arrow_schema(schema)), FileResults(results)
