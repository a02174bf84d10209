"""The audit trail: one record per API request, allowed or denied (ATNA-style: who, on behalf of
which hospital, for what purpose, which dataset or patient, the decision and the grant behind it,
rows returned, when, from where).

Durability before the response: the middleware hands the record to the journal (`journal`: SQLite,
synchronous=FULL) and waits for the fsync; concurrent requests share one commit (group commit),
so the wait stays short under load. Each request worker writes its own journal file; one flusher
per instance, outside the request workers (see `keeper`), appends every journal of the instance
to the audit Delta table in batches, each commit carrying a Delta `txn` per journal file (app id
per journal file, version = its last sequence number), so a flusher killed between the Delta
commit and trimming the journals neither loses nor repeats records when it starts again. The
app id names the journal file (a random id made when the file is created), not only the
instance: a journal lost and created afresh starts its sequence at 1 again, and must not be
mistaken for records already flushed.

With two provincial sites the flusher appends every record to its own site's audit table and to
the other's (same app ids, so each table holds each record once), and trims a journal only up to
what every table holds: while the other site is away, its records wait in the journal, on this
site's disk, and are appended when it returns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

from sharing_api.background import lower_thread_priority
from sharing_api.journal import AuditUnavailable, JournalFile

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("instance", pa.string()),
        ("journal", pa.string()),
        ("seq", pa.int64()),
        ("request_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("day", pa.string()),
        ("method", pa.string()),
        ("route", pa.string()),
        ("status", pa.int32()),
        ("decision", pa.string()),  # allow | deny | error
        ("error_code", pa.string()),
        ("principal_kind", pa.string()),
        ("principal", pa.string()),
        ("token_id", pa.string()),
        ("hospital_id", pa.string()),
        ("purpose", pa.string()),
        ("dataset", pa.string()),
        ("person_key", pa.string()),
        ("grants", pa.string()),  # comma-separated ids of the grants that allowed what was returned
        ("rows_returned", pa.int64()),
        ("break_glass", pa.bool_()),
        ("break_glass_reason", pa.string()),
        ("flagged", pa.bool_()),
        ("client_address", pa.string()),
        ("duration_ms", pa.float64()),
        ("detail", pa.string()),
    ]
)


@dataclass
class AuditRecord:
    """Filled in as a request is handled; written once, when its response is about to leave."""

    request_id: str
    method: str
    route: str
    client_address: str
    started: float = field(default_factory=time.monotonic)
    time: float = field(default_factory=time.time)
    status: int = 0
    decision: str = ""
    error_code: str | None = None
    principal_kind: str | None = None
    principal: str | None = None
    token_id: str | None = None
    hospital_id: str | None = None
    purpose: str | None = None
    dataset: str | None = None
    person_key: str | None = None
    grants: list[str] = field(default_factory=list)
    rows_returned: int = 0
    break_glass: bool = False
    break_glass_reason: str | None = None
    flagged: bool = False
    detail: str | None = None

    finish_ms: float = 0.0

    def finish(self, status: int) -> dict[str, Any]:
        self.status = status
        self.finish_ms = round((time.monotonic() - self.started) * 1000, 3)
        if not self.decision:
            self.decision = "allow" if status < 400 else ("error" if status >= 500 else "deny")
        row = dict(vars(self))  # flat fields: no deep copy needed (dataclasses.asdict is slow)
        del row["started"]
        row["duration_ms"] = row.pop("finish_ms")
        row["grants"] = ",".join(dict.fromkeys(self.grants)) or None
        return row


def claim_journal(lock_path: Callable[[int], Path], *, slots: int = 64) -> tuple[Path, int]:
    """The journal file of the first free slot, and the lock that holds it for this process.

    Each worker process of one instance needs its own journal, and after a crash the next
    process must take over the dead one's file (its unflushed records): an exclusive flock is
    released by the kernel when its holder dies, kill -9 included.
    """
    for slot in range(slots):
        path = lock_path(slot)
        fd = try_lock(path)
        if fd is not None:
            return path.with_suffix(".db"), fd
    raise AuditUnavailable(f"all {slots} audit journal slots are taken by running processes")


def try_lock(path: Path) -> int | None:
    """An exclusive flock on `path` (its descriptor: held until closed or the process dies), or
    None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def record_offline(journal_lock: Callable[[int], Path], record: AuditRecord, status: int = 200) -> None:
    """Audit an operator action taken outside the API (the `medshare hospitals` commands on the
    API host): the record goes, durably, into a journal slot of the instance that no running
    worker holds, and the instance's keeper appends it to the audit table like any other."""
    path, fd = claim_journal(journal_lock)
    try:
        journal = JournalFile(path)
        try:
            journal.write([json.dumps(record.finish(status), separators=(",", ":"), default=str)])
        finally:
            journal.close()
    finally:
        os.close(fd)


class JournalReader:
    """Another process's view of a journal file: its records not yet trimmed, and trimming them.

    Opens only a file its writer has set up (None otherwise: a worker may be creating it). Trims
    need no fsync: a trim lost in a crash is repeated after the table's `txn` says how far it got.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, journal_id: str):
        self.path = path
        self.id = journal_id
        self._conn = conn
        self._lock = threading.Lock()  # read by the flusher, trimmed by the trimmer

    @classmethod
    def open(cls, path: Path) -> JournalReader | None:
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.OperationalError:
            return None  # no such file
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            row = conn.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
        except sqlite3.OperationalError:
            row = None  # its writer has not created the tables yet
        if row is None:
            conn.close()
            return None
        return cls(path, conn, str(row[0]))

    def pending(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, record FROM journal WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(seq), json.loads(text)) for seq, text in rows]

    def trim(self, upto: int) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM journal WHERE seq <= ?", (upto,))

    def close(self) -> None:
        self._conn.close()


def to_arrow(instance: str, journal: str, rows: list[tuple[int, dict[str, Any]]]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for seq, record in rows:
        when = dt.datetime.fromtimestamp(float(record["time"]), dt.UTC)
        values = {
            **record,
            "instance": instance,
            "journal": journal,
            "seq": seq,
            "time": when,
            "day": when.strftime("%Y-%m-%d"),
        }
        for name in SCHEMA.names:
            columns[name].append(values.get(name))
    return pa.table(columns, schema=SCHEMA)


def journal_label(instance: str, path: Path) -> str:
    """How the audit table names a journal's records: the instance and the journal's slot."""
    return f"{instance}/{path.stem.rsplit('-', 1)[-1]}"


@dataclass(frozen=True)
class AuditStore:
    """Where an instance's audit records are: its journal files (one per worker slot) and the table
    — in this site's store, and the same table in each other provincial site's (`peers`: their
    storage options)."""

    instance: str
    journals: Callable[[], list[Path]]
    table_uri: str
    storage_options: dict[str, str]
    peers: tuple[dict[str, str], ...] = ()


class _Target:
    """One audit table the flusher appends to, with what it holds of each journal."""

    def __init__(self, uri: str, storage_options: dict[str, str]):
        self.uri = uri
        self.storage_options = storage_options
        self.name = storage_options.get("AWS_ENDPOINT_URL", uri)
        self.watermarks: dict[str, int] = {}  # app id → last sequence number in the table
        self.table: DeltaTable | None = None  # kept open: a commit reads only the log since the last
        self.error: str | None = None

    def open(self) -> DeltaTable | None:
        if self.table is None:
            with contextlib.suppress(TableNotFoundError):  # the first batch creates it
                self.table = DeltaTable(self.uri, storage_options=self.storage_options)
        else:
            self.table.update_incremental()
        return self.table

    def watermark(self, app_id: str) -> int:
        if app_id not in self.watermarks:
            table = self.open()
            self.watermarks[app_id] = (table.transaction_version(app_id) or 0) if table is not None else 0
        return self.watermarks[app_id]

    def append(self, batch: pa.Table, done: list[tuple[str, int]]) -> None:
        table = self.open()
        write_deltalake(
            table if table is not None else self.uri,
            batch,
            mode="append",
            partition_by=["day"],
            schema_mode="merge",
            # The audit identity may not delete (the bucket is append-only): no log clean-up.
            configuration=None if table is not None else {"delta.enableExpiredLogCleanup": "false"},
            storage_options=self.storage_options,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id, last) for app_id, last in done]
            ),
        )
        for app_id, last in done:
            self.watermarks[app_id] = last


class AuditFlusher:
    """Moves the records of every journal of the instance into the audit Delta table, exactly
    once, in batches: one commit per batch, with a `txn` per journal it took records from."""

    def __init__(self, store: AuditStore, *, interval: float, batch_rows: int):
        self.store = store
        self.interval = interval
        self.batch_rows = batch_rows
        self.flushed = 0  # records appended by this flusher to its own site's table
        self.last_error: str | None = None
        self._readers: dict[Path, JournalReader] = {}
        self._targets = [_Target(store.table_uri, store.storage_options)] + [
            _Target(store.table_uri, options) for options in store.peers
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Trims take the journal's write lock, which the worker's next commit waits for: they run
        # on a thread of normal priority, not on the flusher's lowered one (a lock held by a
        # thread that the scheduler puts last would hold the worker's answers with it).
        self._trims: queue.Queue[tuple[JournalReader, int] | None] = queue.Queue()
        self._trimmer: threading.Thread | None = None

    def start(self) -> None:
        self._trimmer = threading.Thread(target=self._trim_run, name="audit-trimmer", daemon=True)
        self._trimmer.start()
        self._thread = threading.Thread(target=self._run, name="audit-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the threads and append what is left (call after the workers have stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            while self.flush_once():
                pass
        except (DeltaError, OSError, sqlite3.Error) as exc:
            log.warning("audit records left in the journals for the next start: %s", exc)
        if self._trimmer is not None:
            self._trims.put(None)
            self._trimmer.join(timeout=60)
            self._trimmer = None
        for reader in self._readers.values():
            reader.close()

    def _trim(self, reader: JournalReader, upto: int) -> None:
        if self._trimmer is not None:
            self._trims.put((reader, upto))
        else:
            reader.trim(upto)

    def _trim_run(self) -> None:
        while (item := self._trims.get()) is not None:
            try:
                item[0].trim(item[1])
            except sqlite3.Error as exc:  # the records stay; the table's txn keeps them from repeating
                log.warning("could not trim audit journal %s: %s", item[0].path, exc)

    def _run(self) -> None:
        lower_thread_priority()  # the request workers come first; records wait in the journals
        while not self._stop.wait(self.interval):
            try:
                # One batch per interval; more at once only while batches come back full (a backlog):
                # under steady load the journals always have a few new records, and draining them to
                # empty would commit back to back.
                while self.flush_once() >= self.batch_rows and not self._stop.is_set():
                    pass
                self.last_error = None
            except (DeltaError, OSError, sqlite3.Error) as exc:
                # The journals keep everything; the next round tries again.
                self.last_error = str(exc)
                log.warning("audit flush failed, retrying: %s", exc)

    def _app_id(self, reader: JournalReader) -> str:
        return f"medshare-audit/{journal_label(self.store.instance, reader.path)}/{reader.id}"

    @property
    def peer_errors(self) -> dict[str, str]:
        """The other sites' audit tables that could not be appended to on the last pass."""
        return {t.name: t.error for t in self._targets[1:] if t.error}

    def _journals(self) -> list[JournalReader]:
        for path in self.store.journals():
            if path not in self._readers and (reader := JournalReader.open(path)) is not None:
                self._readers[path] = reader
        return list(self._readers.values())

    def flush_once(self) -> int:
        """Append one batch to each table; the number of records appended to this site's (0:
        nothing pending). Another site's table that cannot be reached is left for the next pass
        (its records stay in the journals); this site's failing raises."""
        local, *peers = self._targets
        reachable = [local]
        for peer in peers:
            try:
                peer.open()
                peer.error = None
                reachable.append(peer)
            except (DeltaError, OSError) as exc:
                peer.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                peer.table = None
        pending: list[tuple[JournalReader, str, list[tuple[int, dict[str, Any]]]]] = []
        room = self.batch_rows
        for reader in self._journals():
            if room <= 0:
                break
            app_id = self._app_id(reader)
            rows = reader.pending(min(t.watermark(app_id) for t in reachable), room)
            if rows:
                pending.append((reader, app_id, rows))
                room -= len(rows)
        if not pending:
            return 0
        appended = 0
        for target in reachable:
            parts, done = [], []
            for reader, app_id, rows in pending:
                mine = [r for r in rows if r[0] > target.watermark(app_id)]
                if mine:
                    parts.append(to_arrow(journal_label(self.store.instance, reader.path), reader.id, mine))
                    done.append((app_id, mine[-1][0]))
            if not parts:
                continue
            batch = pa.concat_tables(parts)
            try:
                target.append(batch, done)
            except (DeltaError, OSError) as exc:
                if target is local:
                    raise
                target.error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                target.table = None
                continue
            if target is local:
                appended = int(batch.num_rows)
        for reader, app_id, _rows in pending:
            # Trimmed only up to what every table holds; a table never reached holds nothing yet.
            held = min(t.watermarks.get(app_id, 0) for t in self._targets)
            if held:
                self._trim(reader, held)
        self.flushed += appended
        return appended


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    person_key: str | None = None
    hospital_id: str | None = None
    principal: str | None = None
    dataset: str | None = None
    decision: str | None = None
    flagged: bool | None = None
    purpose: str | None = None
    break_glass: bool | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def read_audit(store: AuditStore, query: AuditQuery) -> pa.Table:
    """Matching records from the Delta table and, not yet appended to it, from the instance's journals."""
    expr: pc.Expression | None = None
    for name in (
        "person_key",
        "hospital_id",
        "principal",
        "dataset",
        "decision",
        "flagged",
        "purpose",
        "break_glass",
    ):
        value = getattr(query, name)
        if value is not None:
            cond = pc.field(name) == value
            expr = cond if expr is None else expr & cond
    if query.since is not None:
        cond = pc.field("time") >= pa.scalar(query.since, SCHEMA.field("time").type)
        expr = cond if expr is None else expr & cond
    if query.until is not None:
        cond = pc.field("time") < pa.scalar(query.until, SCHEMA.field("time").type)
        expr = cond if expr is None else expr & cond
    # The journal first, then the table: a record trimmed from the journal before the first read
    # was committed to the table before the second; one read in both places is removed below.
    parts = []
    for path in store.journals():
        reader = JournalReader.open(path)
        if reader is None:
            continue
        try:
            journal = to_arrow(journal_label(store.instance, path), reader.id, reader.pending(0, 10**9))
        finally:
            reader.close()
        parts.append(journal.filter(expr) if expr is not None else journal)
    try:
        table = DeltaTable(store.table_uri, storage_options=store.storage_options)
        dataset = table.to_pyarrow_dataset()
        present = [n for n in SCHEMA.names if n in dataset.schema.names]
        stored = dataset.to_table(filter=expr, columns=present)
        for f in SCHEMA:  # columns added to the record since older batches were written
            if f.name not in present:
                stored = stored.append_column(f, pa.nulls(stored.num_rows, f.type))
        parts.append(stored.select(SCHEMA.names).cast(SCHEMA))
    except TableNotFoundError:
        pass
    table = pa.concat_tables(parts) if parts else SCHEMA.empty_table()
    seen: set[tuple[str, int]] = set()
    keep = []
    for i, ident in enumerate(zip(table["journal"].to_pylist(), table["seq"].to_pylist(), strict=True)):
        if ident not in seen:
            seen.add(ident)
            keep.append(i)
    return table.take(pa.array(keep, pa.int64())) if len(keep) != table.num_rows else table
