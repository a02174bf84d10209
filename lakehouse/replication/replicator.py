"""The provincial replicator: applies each city unit to the federated provincial table exactly once.

For every (city, dataset) the provincial table carries a Delta `txn` action (app id
`medshare-replication/<city>/<dataset>`, version = the city's Delta version) written in the same
commit as the data. Before applying a unit the replicator reads that version and skips the unit
if it is not newer (delta-rs does not enforce monotonicity itself). Kafka offsets are committed
only after the Delta commit, and never past the first message of a unit still being received, so
a crash at any point re-delivers what was not applied and nothing else takes effect twice.

Chunks of a unit are spooled to local disk as they arrive, then streamed into a single
`write_deltalake` call: memory stays bounded whatever the unit's size, and units of different
cities may interleave in one partition. The small units complete in one poll are written
together, one commit per dataset with a `txn` for each (group commit: the fixed cost of a commit
is paid per batch, which is what keeps 18 trickling cities' lag at seconds). Messages that
cannot be decoded or applied go to the dead-letter table with their bytes and the reason;
storage and broker failures are retried.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from lakehouse import kafka
from lakehouse.contracts import Contract
from lakehouse.errors import MedshareError
from lakehouse.replication.health import STALL_SECONDS, Health
from lakehouse.replication.layout import CITY, HOSPITAL, MONTH, PROVINCE_PARTITIONS, ReplicationLayout
from lakehouse.replication.metrics import ReplicationMetrics
from lakehouse.replication.wire import FULL, Header, MalformedMessage, decode_chunk
from lakehouse.settings import Settings
from lakehouse.shareable import PERSON_KEY, schema_fingerprint, shareable_schema
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials

log = logging.getLogger(__name__)

_MONTH = re.compile(r"^\d{4}-\d{2}$")
# Failures of the object store or a lost commit race: retrying fixes them. Anything else that
# delta-rs or Arrow raises about the data itself would fail again, so the unit is dead-lettered.
_TRANSIENT = ("S3 error", "sending request", "onnection", "timed out", "Io error", "ObjectStore")
# Parquet dictionaries are what made the writers' memory grow with the rows of a unit: measured
# on 144 partitions, 2M → 4M rows peaked at 444 → 500 MB with 64 KiB dictionary pages and at
# 307 → 302 MB without dictionaries. zstd keeps the files small without them.
WRITER_PROPERTIES = WriterProperties(
    compression="ZSTD",
    max_row_group_size=65_536,
    default_column_properties=ColumnProperties(dictionary_enabled=False),
)
# Bytes of data files delta-rs may hold open at once while applying a unit (see `_write`).
WRITE_BUDGET_BYTES = 192 * 1024 * 1024
MIN_FILE_BYTES = 1024 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024
# A unit adds a file to each (city, month) partition it touches; units of different hospitals
# leave a file each. Past this many files the partition is rewritten (OPTIMIZE ZORDER BY
# person_key, files of up to COMPACT_TARGET_BYTES), so a table stays at about one file per city
# and month however many small units arrive. See docs/replication.md ("Provincial layout").
COMPACT_AT_FILES = 8
COMPACT_TARGET_BYTES = 128 * 1024 * 1024
# Units applied together in one commit (see `Replicator.apply_ready`) hold at most this many bytes
# of chunks; a bigger unit is applied alone, as before group commit, so a write's open files and
# memory stay those of one unit (the fixed cost a group saves is negligible beside a big unit's).
GROUP_BYTES = 16 * 1024 * 1024
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("recorded_at", pa.timestamp("us", tz="UTC")),
        ("reason", pa.string()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("headers", pa.string()),
        ("value", pa.binary()),
        ("city", pa.string()),
        ("dataset", pa.string()),
        ("version", pa.int64()),
    ]
)


class Unappliable(MedshareError):
    """A unit that decodes but must not be applied (wrong city, schema, partitions)."""


class Stopping(Exception):
    """Raised inside a retry loop when shutdown was requested."""


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, CommitFailedError | OSError):
        return True
    # A panic inside delta-rs (seen in object_store's writer while the store went away) reaches
    # Python as pyo3's PanicException, a BaseException: retried like the failure that caused it.
    if type(exc).__name__ == "PanicException":
        return True
    return isinstance(exc, DeltaError) and any(marker in str(exc) for marker in _TRANSIENT)


@dataclass
class _Message:
    """What is kept of a spooled message, to dead-letter it if its unit fails."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class Spool:
    header: Header
    first: TopicPartition
    first_offset: int
    path: Path
    skip: bool
    messages: list[_Message] = field(default_factory=list)
    rows: int = 0
    partitions: int = 0  # (hospital, month) pairs
    months: int = 0
    ready: bool = False  # its last chunk is in; applied with the next group
    size: int = 0  # bytes of its chunks
    _file: IO[bytes] | None = None

    @property
    def next_chunk(self) -> int:
        return len(self.messages)

    @property
    def label(self) -> str:
        return f"{self.header.city}/{self.header.dataset} v{self.header.version}"

    def append(self, record: ConsumerRecord, value: bytes) -> None:
        if not self.skip:
            if self._file is None:
                self._file = self.path.open("wb")
            self._file.write(struct.pack(">Q", len(value)))
            self._file.write(value)
            self.size += len(value)
        self.messages.append(
            _Message(record.topic, record.partition, record.offset, record.key, list(record.headers or []))
        )

    def values(self) -> Iterator[bytes]:
        if self._file is not None:
            self._file.flush()
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            while size := f.read(8):
                yield f.read(struct.unpack(">Q", size)[0])

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)


@dataclass
class DeadLetter:
    reason: str
    message: _Message
    value: bytes | None
    header: Header | None = None


class Replicator:
    def __init__(
        self,
        settings: Settings,
        layout: ReplicationLayout,
        contracts: Mapping[str, Contract],
        *,
        metrics: ReplicationMetrics | None = None,
        spool_dir: Path | None = None,
        on_applied: Callable[[Header, int], None] = lambda *_: None,
        group_id: str | None = None,
        status_dir: Path | None = None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.contracts = {n: c for n, c in contracts.items() if c.shareable}
        self.metrics = metrics or ReplicationMetrics()
        self.on_applied = on_applied
        self.group_id = group_id or layout.site_group(settings)
        self.storage_options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
        self.topics = {layout.topic(name): name for name in self.contracts}
        topology = layout.topology
        self.hospitals = {c.id: {h.id for h in topology.hospitals_of(c.id)} for c in topology.cities}
        self.spool_dir = Path(tempfile.mkdtemp(prefix="medshare-spool-", dir=spool_dir))
        self.spools: dict[tuple[str, str], Spool] = {}
        self.ready: list[Spool] = []
        self._tables: dict[str, DeltaTable] = {}
        self.done: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.stop = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._last_commit = 0.0
        self._warned_layout: set[str] = set()
        self.health = Health(
            self.metrics,
            status_dir=status_dir or settings.state_dir / "replication",
            namespace=layout.namespace,
            group=self.group_id,
            stall_seconds=stall_seconds,
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, *, idle_timeout: float | None = None) -> None:
        """Consume and apply until `stop` is set (or nothing arrived for `idle_timeout` seconds)."""
        if stop is not None:
            self.stop = stop
        consumer = kafka.consumer(
            self.settings,
            group_id=self.group_id,
            # Bounded memory: tens of chunks in flight, never hundreds. Each poll's complete units
            # are applied together (see `apply_ready`), so more records a poll, fewer commits.
            max_poll_records=32,
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            max_poll_interval_ms=900_000,
            # A replicator killed with -9 holds its partitions until the session expires: keep
            # that short so a restarted one takes over within seconds, not the default 45.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        self._consumer = consumer
        consumer.subscribe(sorted(self.topics), listener=_Rebalance(self))
        self.health.start()
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    batches = consumer.poll(timeout_ms=500)
                except KafkaError as exc:
                    self.health.failed("poll the broker", exc, kind="polling")
                    log.warning("poll failed (%s); retrying", exc)
                    self.stop.wait(1.0)
                    continue
                self.health.recovered(kind="polling")
                self.health.rebalancing(_finish_rebalance(consumer))
                for records in batches.values():
                    for record in records:
                        self.handle(record)
                self.apply_ready()
                if batches:
                    idle_since = time.monotonic()
                elif idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    break
                if time.monotonic() - self._last_commit > 2.0:
                    self.commit_offsets()
        except Stopping:
            pass
        finally:
            self.commit_offsets()
            consumer.close(autocommit=False)
            self._consumer = None
            for spool in self.spools.values():
                spool.discard()
            self.spools.clear()
            self.ready.clear()
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            self.health.stop()

    def _safe_offsets(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Per partition, the first message not yet done with: the next one after what was
        handled, or the first message of a unit still being received (it is needed again)."""
        safe = dict(self.done)
        for spool in self.spools.values():
            tp = spool.first
            safe[tp] = min(safe.get(tp, spool.first_offset), spool.first_offset)
        return {tp: o for tp, o in safe.items() if partitions is None or tp in partitions}

    def commit_offsets(self) -> None:
        """Commit, per partition, up to the first message of any unit still being received."""
        if self._consumer is None:
            return
        safe = self._safe_offsets()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in safe.items() if self.committed.get(tp) != o}
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:  # re-delivered later and skipped by the txn version check
            log.warning("committing offsets failed (%s); will retry", exc)
            return
        self.committed.update({tp: m.offset for tp, m in offsets.items()})
        self._last_commit = time.monotonic()

    # -- consumer-group rebalances -----------------------------------------------------------
    # These run on kafka-python's IO thread, inside poll(): a blocking consumer call there
    # (commit, committed) raises RuntimeError, so only non-blocking ones are made.
    def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Still a member: record how far we got, so a new owner re-reads as little as possible."""
        offsets = self._safe_offsets(revoked)
        if self._consumer is not None and offsets:
            self._consumer.commit_async({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})

    def partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group (e.g. the session expired): another member may have applied and
        committed past our state, so it is dropped and the consumer restarts these partitions
        from the committed offsets."""
        self._drop(lost, "the consumer lost its group membership")

    def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions kept across a rebalance restart from the first message not done with.

        kafka-python 3 keeps a retained partition's fetch position while the Java client resets
        it to the committed offset; either way the half-received units dropped here must be read
        again from their first chunk, so the position is set explicitly."""
        consumer = self._consumer
        owned = set(consumer.assignment()) if consumer is not None else set(assigned)
        held = set(self.done) | {s.first for s in self.spools.values()}
        resume = self._safe_offsets(owned & held)
        self._drop(held, "a consumer-group rebalance")
        for tp, offset in resume.items():
            if consumer is not None:
                consumer.seek(tp, offset)
        names = [f"{tp.topic}[{tp.partition}]" for tp in sorted(owned)]
        self.health.assigned(names)
        log.info("assigned %d partition(s): %s", len(names), ", ".join(names) or "none")

    def _drop(self, partitions: set[TopicPartition], why: str) -> None:
        """Forget the state of `partitions`: their half-received units and handled offsets."""
        for key, spool in list(self.spools.items()):
            if spool.first in partitions:
                log.warning(
                    "%s: dropped half-received %s (%d chunk(s)); it is read again from offset %d",
                    why,
                    spool.label,
                    len(spool.messages),
                    spool.first_offset,
                )
                self.metrics.restarted.labels(spool.header.city, spool.header.dataset).inc()
                self.health.unit_ended(spool.label, progress=False)
                spool.discard()
                del self.spools[key]
        self.ready = [s for s in self.ready if s.first not in partitions]
        for tp in partitions:
            self.done.pop(tp, None)
            self.committed.pop(tp, None)

    # -- one message -----------------------------------------------------------------------
    def handle(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        message = _Message(tp.topic, tp.partition, record.offset, record.key, list(record.headers or []))
        try:
            header = Header.decode(record.headers)
            self._check_header(record.topic, header)
        except (MalformedMessage, Unappliable) as exc:
            self.dead_letter([DeadLetter(str(exc), message, record.value)])
            self.done[tp] = record.offset + 1
            return
        key = (header.city, header.dataset)
        spool = self.spools.get(key)
        if header.chunk == 0 and spool is not None and spool.ready:
            self.apply_ready()  # the unit before this one is applied first: versions in order
            spool = None
        if header.chunk == 0:
            if spool is not None:  # an unfinished unit of an aborted transaction: never applied
                log.warning("%s: a new unit began before its last chunk; it is dropped", spool.label)
                self.health.unit_ended(spool.label, progress=False)
                spool.discard()
            # The table as last read: enough to skip a unit re-delivered after a crash without
            # spooling it (txn versions only grow); `apply` checks again on a fresh read.
            applied = self.applied_version(header.city, header.dataset, refresh=False)
            spool = Spool(
                header=header,
                first=tp,
                first_offset=record.offset,
                path=self.spool_dir / f"{header.city}.{header.dataset}.{header.version}",
                skip=applied is not None and applied >= header.version,
            )
            self.spools[key] = spool
            self.health.unit_started(spool.label)
        elif spool is None or spool.header.version != header.version or header.chunk != spool.next_chunk:
            expected = "chunk 0" if spool is None else f"v{spool.header.version} chunk {spool.next_chunk}"
            reason = f"chunk {header.chunk} of v{header.version} out of sequence (expected {expected})"
            self.dead_letter([DeadLetter(reason, message, record.value, header)])
            self.done[tp] = record.offset + 1
            return
        spool.append(record, record.value or b"")
        if header.last:
            # Registered in `spools` until applied: no offset past its first chunk is committed.
            spool.ready = True
            self.ready.append(spool)
        self.done[tp] = record.offset + 1

    def apply_ready(self) -> None:
        """Apply every unit whose last chunk is in, those of one dataset (and schema) in one commit.

        With 18 cities trickling, one commit per unit saturated the replicator (~0.3 s each,
        3.5 units/s arriving); a commit for what arrived meanwhile grows with the load instead."""
        if not self.ready:
            return
        ready, self.ready = self.ready, []
        for units in commit_groups(ready):
            self.health.busy("apply " + ", ".join(s.label for s in units))
            try:
                self.apply(units)
            finally:
                self.health.busy(None)
            for spool in units:
                del self.spools[(spool.header.city, spool.header.dataset)]
                self.health.unit_ended(spool.label, progress=True)
                spool.discard()
        self.commit_offsets()

    def _check_header(self, topic: str, header: Header) -> None:
        if header.city not in self.hospitals:
            raise Unappliable(f"unknown city {header.city!r}")
        if self.topics.get(topic) != header.dataset:
            raise Unappliable(f"dataset {header.dataset!r} does not belong on topic {topic}")
        for hospital, months in header.partitions.items():
            if hospital not in self.hospitals[header.city]:
                raise Unappliable(f"hospital {hospital!r} is not in {header.city}")
            bad = [m for m in months if not _MONTH.match(m)]
            if bad:
                raise Unappliable(f"bad month partition value(s) {bad[:3]}")

    # -- applying a unit -------------------------------------------------------------------
    def applied_version(self, city: str, dataset: str, *, refresh: bool = True) -> int | None:
        table = self._table(dataset, refresh=refresh)
        return None if table is None else table.transaction_version(self.layout.app_id(city, dataset))

    def _table(self, dataset: str, *, refresh: bool = True) -> DeltaTable | None:
        """The provincial table brought up to date (`refresh`). Kept open between units: re-opening
        replays the log since the last checkpoint, which would make every small unit slower."""
        uri = self.layout.province_table(dataset).uri
        for attempt in self._attempts(f"open {uri}"):
            with attempt:
                table = self._tables.get(dataset)
                if table is not None:
                    if refresh:
                        table.update_incremental()
                    return table
                try:
                    table = DeltaTable(uri, storage_options=self.storage_options)
                except TableNotFoundError:
                    return None
                self._tables[dataset] = table
                return table
        raise AssertionError("unreachable")

    def _attempts(self, action: str, labels: Sequence[tuple[str, str]] = ()) -> Iterator[_Attempt]:
        """Retry transient failures with backoff until they pass or shutdown is requested; each
        failure is reported to the health record (a long one becomes a stall, said loudly)."""
        delay = 0.5
        failures = 0
        try:
            while True:
                attempt = _Attempt()
                # A caller that returns from inside its attempt closes this generator here.
                yield attempt
                if attempt.error is None:
                    return
                failures += 1
                self.health.failed(action, attempt.error)
                if self.stop.is_set():
                    raise Stopping
                for label in labels:
                    self.metrics.retries.labels(*label).inc()
                log.warning(
                    "%s failed (attempt %d: %s); retrying in %.1f s",
                    action,
                    failures,
                    _first_line(attempt.error),
                    delay,
                )
                self.stop.wait(delay)
                delay = min(delay * 2, 10.0)
        finally:
            if failures:
                self.health.recovered()

    def apply(self, units: list[Spool]) -> None:
        """Apply units of one dataset and schema (at most one per city) in one Delta commit, which
        records every city's version in its own `txn`: all of them take effect, or none."""
        fresh = []
        for spool in units:
            if spool.skip:
                self.metrics.duplicates.labels(spool.header.city, spool.header.dataset).inc()
                continue
            try:
                self._validate(spool)
            except pa.ArrowException as exc:
                self._dead_letter_unit(spool, f"rows cannot be read: {exc}")
                continue
            except (MalformedMessage, Unappliable) as exc:
                self._dead_letter_unit(spool, str(exc))
                continue
            fresh.append(spool)
        if not fresh:
            return
        dataset = fresh[0].header.dataset
        uri = self.layout.province_table(dataset).uri
        labels = [(s.header.city, dataset) for s in fresh]
        started = time.monotonic()
        what = ", ".join(s.label for s in fresh)
        for attempt in self._attempts(f"apply {what}", labels):
            with attempt:
                table = self._table(dataset)
                pending = []
                for spool in fresh:
                    applied = None if table is None else table.transaction_version(self._app_id(spool))
                    if applied is not None and applied >= spool.header.version:
                        self.metrics.duplicates.labels(spool.header.city, dataset).inc()
                    else:
                        pending.append(spool)
                if not pending:
                    return
                try:
                    self._write(pending, table or uri)
                except (pa.ArrowException, DeltaError, MalformedMessage, ValueError) as exc:
                    if _transient(exc):
                        raise
                    if len(pending) > 1:
                        # Which unit's rows were refused is not said: each alone, so that one
                        # is dead-lettered and the others applied.
                        for spool in pending:
                            self.apply([spool])
                        return
                    self._dead_letter_unit(pending[0], f"the provincial commit was refused: {exc}")
                    return
        self._applied(pending, started)

    def _applied(self, units: list[Spool], started: float) -> None:
        """Account for units just committed, then compact the partitions they crowded."""
        committed = time.time()
        written = time.monotonic()
        lags = [max(committed - s.header.committed_ms / 1000, 0.0) for s in units]
        for spool, lag in zip(units, lags, strict=True):
            header = spool.header
            labels = (header.city, header.dataset)
            self.metrics.units.labels(*labels).inc()
            self.metrics.rows.labels(*labels).inc(spool.rows)
            self.metrics.messages.labels(*labels).inc(len(spool.messages))
            self.metrics.lag.labels(*labels).set(lag)
            self.metrics.lag_histogram.labels(*labels).observe(lag)
            self.metrics.applied_version.labels(*labels).set(header.version)
            self.on_applied(header, spool.rows)
        self._compact(units[0].header.dataset, sorted({s.header.city for s in units}))
        for spool, lag in zip(units, lags, strict=True):
            header = spool.header
            log.info(
                "applied %s/%s v%d: %d rows, %d messages, lag %.2f s "
                "(a commit of %d unit(s) in %.2f s, compaction %.2f s)",
                header.city,
                header.dataset,
                header.version,
                spool.rows,
                len(spool.messages),
                lag,
                len(units),
                written - started,
                time.monotonic() - written,
            )

    def _app_id(self, spool: Spool) -> str:
        return self.layout.app_id(spool.header.city, spool.header.dataset)

    def _old_layout(self, table: DeltaTable) -> bool:
        """A table created before the (city, month) layout: applied to as before, not compacted
        (its partitions are per hospital); rebuilt by `medshare clean-state` and a new run."""
        columns = tuple(table.metadata().partition_columns)
        if columns == PROVINCE_PARTITIONS:
            return False
        if table.table_uri not in self._warned_layout:
            self._warned_layout.add(table.table_uri)
            log.warning(
                "%s is partitioned by %s, not %s: it is not compacted",
                table.table_uri,
                columns,
                PROVINCE_PARTITIONS,
            )
        return True

    def _compact(self, dataset: str, cities: list[str]) -> None:
        """Rewrite the cities' crowded (city, month) partitions of the dataset's table, each in its
        own commit (no `txn`: the units' versions stay as recorded). Best effort: a failure or a
        conflict with another writer leaves the partition as it is, to be compacted after a later
        unit; the files it replaces stay in the log, so time travel keeps reading them."""
        table = self._tables.get(dataset)
        if table is None or self._old_layout(table):
            return
        actions = pa.table(table.get_add_actions(flatten=True))
        mine = actions.filter(pc.is_in(actions[f"partition.{CITY}"], value_set=pa.array(cities, pa.string())))
        keys = pc.binary_join_element_wise(mine[f"partition.{CITY}"], mine[f"partition.{MONTH}"], "/")
        counts = keys.value_counts().to_pylist()
        crowded = sorted(str(c["values"]).split("/") for c in counts if c["counts"] > COMPACT_AT_FILES)
        clustered = PERSON_KEY in table.schema().to_arrow().names
        for city, month in crowded:
            where = [(CITY, "=", city), (MONTH, "=", month)]
            started = time.monotonic()
            try:
                if clustered:
                    result = table.optimize.z_order(
                        [PERSON_KEY],
                        partition_filters=where,
                        target_size=COMPACT_TARGET_BYTES,
                        writer_properties=WRITER_PROPERTIES,
                    )
                else:
                    result = table.optimize.compact(
                        partition_filters=where,
                        target_size=COMPACT_TARGET_BYTES,
                        writer_properties=WRITER_PROPERTIES,
                    )
            except (DeltaError, OSError) as exc:
                log.warning("compacting %s %s/%s failed (%s); left for later", dataset, city, month, exc)
                table.update_incremental()
                continue
            self.metrics.compactions.labels(dataset).inc()
            log.info(
                "compacted %s %s/%s: %d files into %d in %.2f s",
                dataset,
                city,
                month,
                result.get("numFilesRemoved", 0),
                result.get("numFilesAdded", 0),
                time.monotonic() - started,
            )

    def _validate(self, spool: Spool) -> None:
        """Decode every chunk once before writing: schema, city's hospitals, partitions."""
        header = spool.header
        hospitals = pa.array(sorted(self.hospitals[header.city]), pa.string())
        rows = 0
        partitions: set[str] = set()
        months: set[str] = set()
        for value in spool.values():
            for batch in decode_chunk(value):
                if schema_fingerprint(batch.schema) != header.schema:
                    raise Unappliable(f"rows do not have the schema the header announces ({header.schema})")
                if HOSPITAL not in batch.schema.names or MONTH not in batch.schema.names:
                    raise Unappliable(f"rows lack the {HOSPITAL}/{MONTH} partition columns")
                inside = pc.is_in(batch.column(HOSPITAL), value_set=hospitals)
                if batch.num_rows and not pc.all(inside).as_py():
                    raise Unappliable(f"rows of a hospital outside {header.city}")
                rows += batch.num_rows
                keys = pc.binary_join_element_wise(batch.column(HOSPITAL), batch.column(MONTH), "/")
                partitions.update(pc.unique(keys).to_pylist())
                months.update(pc.unique(batch.column(MONTH)).to_pylist())
        spool.rows = rows
        spool.partitions = len(partitions)
        spool.months = len(months)

    def _batches(self, units: list[Spool]) -> Iterator[pa.RecordBatch]:
        for spool in units:
            city = spool.header.city
            for value in spool.values():
                for batch in decode_chunk(value):
                    if batch.num_rows:
                        yield batch.add_column(0, CITY, pa.array([city] * batch.num_rows, pa.string()))

    def _write(self, units: list[Spool], target_table: DeltaTable | str) -> None:
        """One commit: the units' rows replace their partitions, and each unit's version is
        recorded in its city's `txn`; a table (not a URI) means it exists."""
        first = next((v for spool in units for v in spool.values()), None)
        if first is not None:
            schema = pa.ipc.open_stream(first).schema
        else:
            schema = shareable_schema(self.contracts[units[0].header.dataset])
        schema = schema.insert(0, pa.field(CITY, pa.string()))
        reader = pa.RecordBatchReader.from_batches(schema, self._batches(units))
        properties = CommitProperties(
            app_transactions=[Transaction(self._app_id(s), s.header.version) for s in units]
        )
        # delta-rs keeps one open file per partition and flushes it at the target size: the
        # size is chosen so all open files together stay within a fixed budget, however many
        # rows the unit has (measured: 4M rows over 144 partitions peak at ~700 MB RSS with 1 MB).
        old_layout = isinstance(target_table, DeltaTable) and self._old_layout(target_table)
        open_files = sum(s.partitions if old_layout else s.months for s in units)
        target = min(max(WRITE_BUDGET_BYTES // max(open_files, 1), MIN_FILE_BYTES), MAX_FILE_BYTES)
        if isinstance(target_table, DeltaTable):
            write_deltalake(
                target_table,
                reader,
                mode="overwrite",
                predicate=" OR ".join(f"({predicate(s.header)})" for s in units),
                schema_mode="merge",
                storage_options=self.storage_options,
                commit_properties=properties,
                target_file_size=target,
                writer_properties=WRITER_PROPERTIES,
            )
        else:
            write_deltalake(
                target_table,
                reader,
                mode="append",
                partition_by=list(PROVINCE_PARTITIONS),
                storage_options=self.storage_options,
                commit_properties=properties,
                target_file_size=target,
                writer_properties=WRITER_PROPERTIES,
            )

    # -- dead letters ----------------------------------------------------------------------
    def _dead_letter_unit(self, spool: Spool, reason: str) -> None:
        values = list(spool.values()) if not spool.skip else []
        letters = [
            DeadLetter(reason, m, values[i] if i < len(values) else None, spool.header)
            for i, m in enumerate(spool.messages)
        ]
        self.dead_letter(letters)

    def dead_letter(self, letters: list[DeadLetter]) -> None:
        """Make the letters durable in the dead-letter table (before their offsets are committed)."""
        now = pa.scalar(time.time_ns() // 1000, pa.timestamp("us", tz="UTC"))
        rows = [
            {
                "recorded_at": now.as_py(),
                "reason": d.reason,
                "topic": d.message.topic,
                "partition": d.message.partition,
                "offset": d.message.offset,
                "key": d.message.key,
                "headers": _headers_json(d.message.headers),
                "value": d.value,
                "city": d.header.city if d.header else None,
                "dataset": d.header.dataset if d.header else None,
                "version": d.header.version if d.header else None,
            }
            for d in letters
        ]
        table = pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA)
        uri = self.layout.dead_letter_table().uri
        for attempt in self._attempts(f"write {len(rows)} dead letter(s) to {uri}"):
            with attempt:
                write_deltalake(uri, table, mode="append", storage_options=self.storage_options)
        for d in letters:
            m = d.message
            log.error("dead letter %s[%d]@%d: %s", m.topic, m.partition, m.offset, d.reason)
            self.metrics.dead_letters.labels(_reason_kind(d.reason)).inc()


def _finish_rebalance(consumer: KafkaConsumer) -> bool:
    """Whether the consumer is between group generations; a join that no poll would finish is
    made to finish.

    kafka-python 3.0 (like the Java client before KAFKA-9815) rejoins on a metadata change
    without setting its rejoin flag. If that join completes between two polls after this
    member, as the group's leader, recorded the new metadata, `need_rejoin()` is false again and
    no poll awaits the join: the member stays "rebalancing", holding no partition, for good (the
    rebalance test lost one round in ten to it). Asking for a rejoin makes the next poll await
    the join still in flight, or join again if it is done."""
    coordinator = consumer._coordinator
    if not coordinator.rebalance_in_progress():
        return False
    if not coordinator.need_rejoin():
        log.warning("a consumer-group join that no poll would finish: asking the Kafka client to finish it")
        coordinator.request_rejoin()
    return True


def _first_line(exc: BaseException) -> str:
    """delta-rs error chains span many coloured lines; the first says what failed."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _headers_json(headers: list[tuple[str, bytes]]) -> str:
    return json.dumps({k: (v or b"").decode("utf-8", "replace") for k, v in headers}, ensure_ascii=False)


def _reason_kind(reason: str) -> str:
    """A low-cardinality label for the dead-letter counter."""
    for kind in ("header", "Arrow", "schema", "city", "hospital", "sequence", "refused", "month", "dataset"):
        if kind in reason:
            return kind.lower()
    return "other"


def commit_groups(ready: list[Spool], limit: int = GROUP_BYTES) -> list[list[Spool]]:
    """The units to apply together, in arrival order: those of one dataset and schema, up to
    `limit` bytes of chunks a group (a unit over it is a group of its own)."""
    groups: dict[tuple[str, str], list[list[Spool]]] = {}
    for spool in ready:
        batches = groups.setdefault((spool.header.dataset, spool.header.schema), [[]])
        if batches[-1] and sum(s.size for s in batches[-1]) + spool.size > limit:
            batches.append([])
        batches[-1].append(spool)
    return [batch for batches in groups.values() for batch in batches]


def predicate(header: Header) -> str:
    """Which provincial rows the unit replaces; values were checked against the topology first."""
    city = f"{CITY} = '{header.city}'"
    if header.kind == FULL:
        return city
    terms = [
        f"({HOSPITAL} = '{h}' AND {MONTH} IN ({', '.join(repr(m) for m in months)}))"
        for h, months in sorted(header.partitions.items())
    ]
    if not terms:  # the commits changed no data: replace nothing, record the version
        return f"{city} AND false"
    return f"{city} AND ({' OR '.join(terms)})"


class _Attempt:
    """One try inside `Replicator._attempts`: swallows a transient failure and remembers it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def __enter__(self) -> _Attempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None and _transient(exc):
            self.error = exc
            return True
        return False


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.replicator.partitions_revoked(set(revoked))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.replicator.partitions_lost(set(lost))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.replicator.partitions_assigned(set(assigned))
