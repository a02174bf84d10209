"""The copies Delta Sharing serves: one Delta table per grant × dataset, kept up to date with the
provincial table, the grant's column policy and patients' consents.

Why copies: a Delta Sharing recipient reads whole Parquet files through pre-signed URLs, so what
it may not see must not be in the files it gets. Each copy holds the grant's view of a dataset —
hidden columns absent, masked columns masked exactly as the JSON API masks them (same key, same
grant), rows of patients who opted out of any of the grant's purposes absent — partitioned by
city (and hospital, for own-hospital grants) so that a recipient's row scope is a choice of files
(and no finer: a recipient fetches files one by one). It is written by the API's
sync (one process at a time), as an identity that can read the lakehouse and write only the
shared bucket.

Keeping up: each sync pass compares the provincial table's files at the version the copy was last
built from with its files now; the copy parts (cities, or city × hospital) whose files changed are
re-derived and replace the same parts of the copy in one commit. When the grant's column policy or the consent
set changes, the copy is rebuilt whole, and versions before that rebuild are never served again
(they hold what is no longer allowed); right after the rebuild their files are deleted, so no
URL for one can be signed or still work. Every commit records, in its commit info, the provincial
version it reflects and the fingerprint of policy + consents it was made under.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from lakehouse.errors import StorageError
from lakehouse.shareable import PERSON_KEY
from sharing_api.catalog import CITY, HOSPITAL, DatasetView
from sharing_api.grants import Grant, GrantFile
from sharing_api.masking import Masker

log = logging.getLogger(__name__)

# Bulk purposes: what a recipient may download whole. Treatment and emergency are decided per
# patient (care relationship, consent, break-glass) and stay with the JSON API.
SHARE_PURPOSES = ("research", "public_health", "operations")
# The partition column a scope is enforced by; under_care depends on the patient, not the file.
SCOPE_COLUMN: dict[str, str | None] = {"all_cities": None, "own_city": CITY, "own_hospital": HOSPITAL}
# Bumped when the way copies are derived changes: every copy is then rebuilt.
FORMAT = "2"
_META = "medshare.share"
# One file per part and commit where it fits: recipients fetch files one by one.
_TARGET_FILE_BYTES = 256 * 1024 * 1024


def unservable_reason(grant: Grant, view: DatasetView) -> str | None:
    """Why this grant's dataset cannot be served as files, or None when it can."""
    if grant.scope not in SCOPE_COLUMN:
        return f"scope {grant.scope} depends on each patient's care and is served by the JSON API only"
    column = SCOPE_COLUMN[grant.scope]
    if column is not None and grant.columns.access(column) != "allowed":
        return f"scope {grant.scope} needs the {column} column, which grant {grant.id} masks or hides"
    return None


@dataclass(frozen=True)
class CopySpec:
    """One copy: which grant's view of which dataset, and where it lives."""

    grant: Grant
    view: DatasetView
    uri: str

    @property
    def partition_columns(self) -> list[str]:
        """A part per city (updates rewrite one city), and per hospital only when the scope is
        enforced by hospital: recipients fetch files one by one, so fewer parts read faster."""
        wanted = [CITY, HOSPITAL] if SCOPE_COLUMN[self.grant.scope] == HOSPITAL else [CITY]
        return [c for c in wanted if self.grant.columns.access(c) == "allowed"]

    @property
    def columns(self) -> list[str]:
        return [c for c in self.view.columns if self.grant.columns.access(c) != "hidden"]

    def fingerprint(self, opted_out: frozenset[str]) -> str:
        """What the copy's content depends on besides the provincial rows."""
        policy = {
            "format": FORMAT,
            "grant": self.grant.id,
            "dataset": self.view.name,
            "columns": self.columns,
            "masked": sorted(self.grant.columns.masked),
            "parts": self.partition_columns,
        }
        digest = hashlib.sha256(json.dumps(policy, sort_keys=True).encode())
        for key in sorted(opted_out):
            digest.update(key.encode())
        return digest.hexdigest()[:32]


def copy_uri(root: str, grant_id: str, dataset: str) -> str:
    return f"{root.rstrip('/')}/{grant_id}/{dataset}"


def copy_specs(grants: GrantFile, views: Mapping[str, DatasetView], root: str) -> list[CopySpec]:
    """Every copy the grants call for: grants with a bulk purpose and a file-level scope."""
    specs = []
    for grant in grants.grants:
        if not set(grant.purposes) & set(SHARE_PURPOSES):
            continue
        for name in grant.datasets:
            view = views.get(name)
            if view is not None and unservable_reason(grant, view) is None:
                specs.append(CopySpec(grant, view, copy_uri(root, grant.id, name)))
    return specs


@dataclass(frozen=True)
class CopyState:
    """What the newest commit of a copy says about it, and the oldest version that may be served."""

    version: int
    source_version: int
    fingerprint: str
    first_servable: int


def copy_state(table: DeltaTable) -> CopyState:
    """From the newest commit alone (read on every request): each commit carries the version
    of the copy's last rebuild forward."""
    history = table.history(1)
    newest = _meta(history[0]) if history else None
    if newest is None:
        raise IncompleteCopy(f"{table.table_uri} has no medshare commit information")
    try:
        return CopyState(
            version=table.version(),
            source_version=int(str(newest["source_version"])),
            fingerprint=str(newest["fingerprint"]),
            first_servable=int(str(newest["first_servable"])),
        )
    except (KeyError, ValueError) as exc:
        # E.g. a copy written before commits carried `first_servable`: the sync rebuilds it.
        raise IncompleteCopy(f"{table.table_uri}: its newest commit lacks medshare's {exc}") from exc


class IncompleteCopy(DeltaError):
    """A copy whose newest commit does not say what medshare needs to serve or update it."""


def _meta(commit: Mapping[str, object]) -> dict[str, object] | None:
    raw = commit.get(_META)
    return json.loads(raw) if isinstance(raw, str) else None


@dataclass(frozen=True)
class SyncResult:
    spec: CopySpec
    action: str  # built | rebuilt | updated | unchanged | no source
    parts: int = 0
    rows: int = 0
    version: int | None = None
    seconds: float = 0.0


class CopyWriter:
    """Derives copies from provincial tables (storage options: an identity that reads the
    lakehouse and writes the shared bucket)."""

    def __init__(self, *, tables_root: str, storage_options: dict[str, str], masker: Masker):
        self.tables_root = tables_root.rstrip("/")
        self.storage_options = storage_options
        self.masker = masker

    def source(self, spec: CopySpec, version: int | None = None) -> DeltaTable:
        uri = f"{self.tables_root}/{spec.view.name}"
        return DeltaTable(uri, version=version, storage_options=self.storage_options)

    def sync(self, spec: CopySpec, opted_out: frozenset[str]) -> SyncResult:
        try:
            source = self.source(spec)
        except TableNotFoundError:
            return SyncResult(spec, "no source")
        fingerprint = spec.fingerprint(opted_out)
        try:
            copy: DeltaTable | None = DeltaTable(spec.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            copy = None
        try:
            state = copy_state(copy) if copy is not None else None
        except IncompleteCopy as exc:
            log.warning("copy %s: %s; rebuilding", spec.uri, exc)
            state = None
        if copy is None or state is None or state.fingerprint != fingerprint:
            first = 0 if copy is None else copy.version() + 1  # this rebuild's version
            rows = self._write(spec, source, opted_out, None, first, fingerprint)
            action = "built" if copy is None else "rebuilt"
            return SyncResult(spec, action, rows=rows, version=self._version(spec))
        if state.source_version == source.version():
            return SyncResult(spec, "unchanged", version=state.version)
        # The copy's parts the provincial files tell apart: a copy per hospital is rewritten per
        # city, as the provincial tables are partitioned by city and month.
        keys = [k for k in spec.partition_columns if k in source.metadata().partition_columns]
        try:
            before = _part_files(self.source(spec, state.source_version), keys)
        except (DeltaError, OSError) as exc:
            # The older version is gone (log cleaned up): rebuild rather than guess.
            log.warning(
                "copy %s: provincial version %d unreadable (%s); rebuilding",
                spec.uri,
                state.source_version,
                exc,
            )
            rows = self._write(spec, source, opted_out, None, state.version + 1, fingerprint)
            return SyncResult(spec, "rebuilt", rows=rows, version=self._version(spec))
        after = _part_files(source, keys)
        changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        if not changed:  # a commit that moved no file (e.g. only metadata)
            return SyncResult(spec, "unchanged", version=state.version)
        rows = self._write(spec, source, opted_out, (keys, changed), state.first_servable, fingerprint)
        return SyncResult(spec, "updated", parts=len(changed), rows=rows, version=self._version(spec))

    def _version(self, spec: CopySpec) -> int:
        return DeltaTable(spec.uri, storage_options=self.storage_options).version()

    def _write(
        self,
        spec: CopySpec,
        source: DeltaTable,
        opted_out: frozenset[str],
        changed: tuple[list[str], list[tuple[str, ...]]] | None,
        first_servable: int,
        fingerprint: str,
    ) -> int:
        """Write the copy whole (changed None: a rebuild, whose version is `first_servable`) or
        only the changed parts (their values of the given partition columns); returns rows
        written."""
        keys = spec.partition_columns
        dataset = source.to_pyarrow_dataset()
        condition = None
        parts = None
        if changed is not None:
            keys, parts = changed
            condition = _parts_expression(keys, parts)
        excluded = pa.array(sorted(opted_out), pa.string())
        schema = self._schema(spec)
        written = 0

        def batches() -> Iterator[pa.RecordBatch]:
            nonlocal written
            columns = [c for c in spec.view.columns if c in dataset.schema.names]
            for batch in dataset.to_batches(columns=columns, filter=condition):
                table = pa.Table.from_batches([batch])
                if len(excluded):
                    table = table.filter(pc.invert(pc.is_in(table[PERSON_KEY], value_set=excluded)))
                table = self.masker.apply(table, spec.grant.columns, spec.grant.id)
                table = table.select(schema.names).cast(schema)
                written += table.num_rows
                yield from table.to_batches()

        reader = pa.RecordBatchReader.from_batches(schema, batches())
        meta = {
            "source_version": source.version(),
            "fingerprint": fingerprint,
            "rebuild": parts is None,
            "first_servable": first_servable,
        }
        properties = CommitProperties(custom_metadata={_META: json.dumps(meta)})
        write_deltalake(
            spec.uri,
            reader,
            mode="overwrite",
            # Whole: a fresh table (or one whose columns changed with the grant); else the parts.
            partition_by=(keys or None) if parts is None else None,
            schema_mode="overwrite" if parts is None and first_servable > 0 else None,
            predicate=None if parts is None else _parts_sql(keys, parts),
            storage_options=self.storage_options,
            commit_properties=properties,
            target_file_size=_TARGET_FILE_BYTES,
        )
        return written

    def _schema(self, spec: CopySpec) -> pa.Schema:
        masked = self.masker.apply(spec.view.schema.empty_table(), spec.grant.columns, spec.grant.id)
        return masked.select(spec.columns).schema


def _part_files(table: DeltaTable, keys: list[str]) -> dict[tuple[str, ...], frozenset[str]]:
    """Provincial files per copy part (its values of `keys`, partition columns of both)."""
    actions = pa.table(table.get_add_actions(flatten=True))
    parts: dict[tuple[str, ...], set[str]] = {}
    columns = [actions[f"partition.{k}"].to_pylist() for k in keys]
    for i, path in enumerate(actions["path"].to_pylist()):
        parts.setdefault(tuple(str(c[i]) for c in columns), set()).add(path)
    return {k: frozenset(v) for k, v in parts.items()}


def _parts_expression(keys: list[str], parts: list[tuple[str, ...]]) -> ds.Expression:
    condition: ds.Expression | None = None
    for values in parts:
        term: ds.Expression | None = None
        for key, value in zip(keys, values, strict=True):
            clause = ds.field(key) == value
            term = clause if term is None else term & clause
        if term is None:  # no partition columns: the copy is one part
            return ds.scalar(True)
        condition = term if condition is None else condition | term
    return condition if condition is not None else ds.scalar(False)


def _parts_sql(keys: list[str], parts: list[tuple[str, ...]]) -> str:
    def literal(value: str) -> str:
        return "'" + value.replace("'", "''") + "'"

    terms = [
        " AND ".join(f"{k} = {literal(v)}" for k, v in zip(keys, values, strict=True)) for values in parts
    ]
    if any(not t for t in terms):
        return "true"
    return " OR ".join(f"({t})" for t in terms)


class CopySync:
    """Brings every copy up to date every `interval` seconds on a background thread — in one
    process of the API only (an exclusive lock file decides which)."""

    def __init__(
        self,
        writer: CopyWriter,
        *,
        specs: Callable[[], list[CopySpec]],
        opted_out: Callable[[CopySpec], frozenset[str]],
        lock_path: Path,
        interval: float,
        vacuum: Callable[[CopySpec], int] = lambda _: 0,
    ):
        self.writer = writer
        self.specs = specs
        self.opted_out = opted_out
        # Deletes a copy's files that no served version needs any more (run after each rebuild).
        self.vacuum = vacuum
        self.lock_path = lock_path
        self.interval = interval
        self.last_error: str | None = None
        self.passes = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._pass_lock = threading.Lock()

    def run_once(self) -> list[SyncResult]:
        """One pass over every copy; a copy that fails is reported and retried next pass."""
        results = []
        errors = []
        with self._pass_lock:
            for spec in self.specs():
                started = time.monotonic()
                try:
                    result = self.writer.sync(spec, self.opted_out(spec))
                except (DeltaError, OSError, pa.ArrowException) as exc:
                    errors.append(f"{spec.grant.id}/{spec.view.name}: {exc}")
                    continue
                if result.action == "rebuilt":
                    try:
                        removed = self.vacuum(spec)
                    except (DeltaError, OSError, StorageError) as exc:
                        errors.append(f"{spec.grant.id}/{spec.view.name}: vacuum: {exc}")
                    else:
                        log.info(
                            "shared copy %s/%s: %d old file(s) deleted",
                            spec.grant.id,
                            spec.view.name,
                            removed,
                        )
                result = dataclasses.replace(result, seconds=time.monotonic() - started)
                if result.action not in ("unchanged", "no source"):
                    log.info(
                        "shared copy %s/%s %s (%d parts, %d rows) → version %s in %.1f s",
                        spec.grant.id,
                        spec.view.name,
                        result.action,
                        result.parts,
                        result.rows,
                        result.version,
                        result.seconds,
                    )
                results.append(result)
        self.passes += 1
        self.last_error = "; ".join(errors) or None
        if errors:
            log.error("shared copies not synced: %s", self.last_error)
        return results

    def start(self) -> None:
        if self.interval == 0:
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # another process of this API keeps the copies
            return
        self._lock_fd = fd
        self._thread = threading.Thread(target=self._run, name="share-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception as exc:  # the thread must survive anything one pass meets
                log.exception("shared copy sync pass failed")
                self.last_error = str(exc)
            self._wake.wait(max(self.interval - (time.monotonic() - started), 0.1))
            self._wake.clear()

    def wake(self) -> None:
        """Start the next pass now (a grant or consent changed); only the keeping process runs it."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
