"""From a landed file to raw records per dataset — or a rejected-file record with a reason.

Nothing here raises for bad input: a file that cannot be read as what its key says it is becomes
a FileReject; a line that cannot be parsed becomes a record with `_error` (quarantined later).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ingestion.sources.tabular import read_csv, read_jsonl
from lakehouse.contracts import Contract

RawRecord = dict[str, str | None]

TABULAR = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True, kw_only=True)
class FileReject:
    key: str
    reason: str


@dataclass(kw_only=True)
class Parsed:
    """Records of one or more files, by dataset; each record has `_source` and `_line`."""

    records: dict[str, list[RawRecord]] = field(default_factory=dict)
    rejects: list[FileReject] = field(default_factory=list)

    def add(self, dataset: str, records: Sequence[RawRecord]) -> None:
        self.records.setdefault(dataset, []).extend(records)


@dataclass(frozen=True, kw_only=True)
class FileKind:
    hospital_id: str
    kind: str  # "csv" | "jsonl" | "fhir" | "dicom"
    dataset: str | None  # for per-table extracts


def classify(key: str, *, contracts: dict[str, Contract], hospitals: set[str]) -> FileKind | FileReject:
    parts = PurePosixPath(key).parts
    suffix = PurePosixPath(key).suffix.lower()
    if len(parts) < 3:
        return FileReject(
            key=key, reason="unexpected location: expected <hospital>/<dataset|fhir|dicom>/<file>"
        )
    hospital, folder = parts[0], parts[1]
    if hospital not in hospitals:
        return FileReject(key=key, reason=f"{hospital!r} is not a hospital of this city")
    if folder in contracts and suffix in TABULAR:
        return FileKind(hospital_id=hospital, kind=TABULAR[suffix], dataset=folder)
    if folder == "fhir" and suffix in (".json", ".ndjson"):
        return FileKind(hospital_id=hospital, kind="fhir", dataset=None)
    if folder == "dicom" and suffix in (".dcm", ""):
        return FileKind(hospital_id=hospital, kind="dicom", dataset=None)
    return FileReject(key=key, reason=f"unknown file type {suffix or '(none)'!r} in folder {folder!r}")


def _as_text(key: str, content: bytes) -> FileReject | None:
    if not content.strip():
        return FileReject(key=key, reason="empty file")
    if b"\x00" in content[:65536]:
        return FileReject(key=key, reason="binary content (NUL bytes) in a text export")
    try:
        content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return FileReject(key=key, reason=f"not UTF-8 text: byte {exc.start} cannot be decoded")
    return None


def parse_tabular(key: str, content: bytes, kind: FileKind, contract: Contract) -> Parsed:
    parsed = Parsed()
    problem = _as_text(key, content)
    if problem:
        parsed.rejects.append(problem)
        return parsed
    reader = read_csv if kind.kind == "csv" else read_jsonl
    records = list(reader(content, columns=contract.column_names))
    if kind.kind == "csv":
        header = content.decode("utf-8-sig").splitlines()[0].split(",")
        missing = [c for c in contract.required if c not in {h.strip() for h in header}]
        if missing:
            parsed.rejects.append(
                FileReject(key=key, reason=f"CSV header lacks required column(s): {', '.join(missing)}")
            )
            return parsed
    for record in records:
        record["_source"] = key
    parsed.add(contract.name, records)
    return parsed


def parse_fhir(key: str, content: bytes) -> Parsed:
    from ingestion.sources.fhir import read_fhir_file

    parsed = Parsed()
    batch = read_fhir_file(key, content)
    for dataset, records in batch.records.items():
        for line, record in enumerate(records, start=1):
            record["_source"] = key
            record.setdefault("_line", str(line))
        parsed.add(dataset, records)
    parsed.rejects += [FileReject(key=key, reason=r.reason) for r in batch.rejects]
    return parsed


def parse_dicom(files: Sequence[tuple[str, bytes]], *, hospital_id: str) -> Parsed:
    from ingestion.sources.dicom import read_dicom_files

    parsed = Parsed()
    batch = read_dicom_files(files, hospital_id=hospital_id)
    for dataset, records in (("imaging_studies", batch.studies), ("imaging_series", batch.series)):
        for line, record in enumerate(records, start=1):
            record["_line"] = str(line)
        parsed.add(dataset, records)
    parsed.rejects += [FileReject(key=r.source, reason=r.reason) for r in batch.rejects]
    return parsed
