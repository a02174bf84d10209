"""Reading a Delta table's transaction log directly: which versions exist, and which partitions
each commit changed. The publisher needs only this, not whole snapshots, to know what to ship.

Commit files are plain newline-delimited JSON (`_delta_log/<version:020>.json`). Checkpoints are
not read: a commit that log cleanup already removed is reported as `LogGap`, and the publisher
then ships a full snapshot instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from minio import Minio
from minio.error import S3Error

from lakehouse.errors import MedshareError
from lakehouse.replication.layout import TableLocation
from lakehouse.storage import storage_errors

_COMMIT = re.compile(r"(\d{20})\.json$")


class LogGap(MedshareError):
    """A commit file the publisher needs is gone (log retention) or unreadable."""


@dataclass(frozen=True)
class Commit:
    version: int
    timestamp_ms: int
    operation: str
    # (hospital, month) of every file added or removed with dataChange=true.
    partitions: frozenset[tuple[str, str]]


class DeltaLog:
    def __init__(self, client: Minio, table: TableLocation, *, hospital: str, month: str) -> None:
        self.client = client
        self.table = table
        self.hospital = hospital
        self.month = month

    def latest_version(self, known: int | None = None) -> int | None:
        """The newest committed version (None: no table). Lists only from commit `known` on.

        The listing includes `known` itself, so that one request both finds newer commits and
        proves the table is still there — this runs for every table of every city twice a second.
        """
        prefix = self.table.log_prefix
        start = f"{prefix}{known - 1:020d}.json" if known else None
        latest = None
        with storage_errors(f"list {self.table.uri}/_delta_log"):
            for obj in self.client.list_objects(self.table.bucket, prefix=prefix, start_after=start):
                m = _COMMIT.search(obj.object_name or "")
                if m and (latest is None or int(m.group(1)) > latest):
                    latest = int(m.group(1))
        if latest is None and known:
            # Nothing from `known` on: the table is gone or was recreated with fewer commits (the
            # publisher refuses the latter); rare, so the whole log may be listed to tell which.
            return self.latest_version()
        return latest

    def commit(self, version: int) -> Commit:
        key = f"{self.table.log_prefix}{version:020d}.json"
        try:
            response = self.client.get_object(self.table.bucket, key)
            try:
                text = response.read().decode("utf-8")
            finally:
                response.close()
                response.release_conn()
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise LogGap(f"{self.table.uri}: commit {version} is no longer in the log") from exc
            raise
        return self.parse(version, text)

    def parse(self, version: int, text: str) -> Commit:
        timestamp, operation = 0, "?"
        partitions: set[tuple[str, str]] = set()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                action = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LogGap(f"{self.table.uri}: commit {version} line {number} is not JSON: {exc}") from exc
            if not isinstance(action, dict):
                raise LogGap(f"{self.table.uri}: commit {version} line {number} is not a JSON object")
            if "commitInfo" in action:
                info = action["commitInfo"]
                timestamp = int(info.get("timestamp") or 0)
                operation = str(info.get("operation", "?"))
            for kind in ("add", "remove"):
                file = action.get(kind)
                if file and file.get("dataChange", True):
                    values = file.get("partitionValues") or {}
                    partitions.add((str(values.get(self.hospital)), str(values.get(self.month))))
        return Commit(version, timestamp, operation, frozenset(partitions))
