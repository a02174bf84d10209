"""The run report: per dataset rows in, curated, quarantined by rule, duplicates removed, time."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(kw_only=True)
class DatasetReport:
    dataset: str
    rows_in: int = 0  # records read from this run's files
    from_waiting: int = 0  # rows of earlier runs that were waiting for their patient
    curated: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # by first broken rule
    duplicates: int = 0
    waiting: int = 0  # rows whose patient (or encounter) is not known yet: kept in `waiting`
    replaced_files: int = 0
    seconds: float = 0.0
    quality_passed: bool | None = None

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def balanced(self) -> bool:
        """Nothing lost: every input row is curated, quarantined, waiting or a removed duplicate."""
        return self.rows_in + self.from_waiting == (
            self.curated + self.quarantined_total + self.duplicates + self.waiting
        )


# How the run report names the formats of the files it read.
FORMATS = {
    "csv": "CSV",
    "jsonl": "JSON Lines",
    "xlsx": "Excel",
    "fhir": "FHIR bundle",
    "fhir-ndjson": "FHIR NDJSON",
    "dicom": "DICOM",
}


@dataclass(kw_only=True)
class RunReport:
    city: str
    run_id: str
    started_at: str
    status: str = "running"  # running | succeeded | failed
    error: str | None = None
    files_seen: int = 0
    files_new: int = 0
    files_corrected: int = 0
    files_unchanged: int = 0
    files_rejected: list[dict[str, str]] = field(default_factory=list)
    # Every file read: key, status, format, the encoding found, the profile read with, records.
    files: list[dict[str, object]] = field(default_factory=list)
    datasets: dict[str, DatasetReport] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, over all datasets

    def read_as(self) -> list[tuple[str, int]]:
        """How the files were read, most common first: "FHIR NDJSON", "CSV gb18030 (county-his)"."""
        read = Counter(
            " ".join(
                str(part)
                for part in (
                    FORMATS.get(str(f.get("format")), f.get("format") or "file"),
                    f.get("encoding") if f.get("format") in ("csv", "jsonl") else None,
                    None if f.get("profile") in (None, "default") else f"({f['profile']})",
                )
                if part
            )
            for f in self.files
            if f.get("status") != "rejected"
        )
        return read.most_common()

    def to_json(self) -> str:
        data = asdict(self)
        for name, ds in self.datasets.items():
            data["datasets"][name]["balanced"] = ds.balanced
            data["datasets"][name]["quarantined_total"] = ds.quarantined_total
        return json.dumps(data, indent=1, ensure_ascii=False)
