"""The city publisher: ships what curated commits changed, in the shareable form, through Kafka.

For each shareable dataset it compares the curated table's newest Delta version with the last
version it published, reads from the log which (hospital, month) partitions the commits in between
touched, and sends those partitions as they are at the newest version — one *unit* (see `wire`).
Several pending commits coalesce into one unit: replacing a partition by its latest content is
correct whatever happened to it in between, and catching up after downtime stays fast.

Exactly once: each unit is one Kafka transaction that also writes the new published version to
the progress topic. A publisher killed mid-unit leaves an open transaction that the next one
(same transactional id) aborts on start; it then reads the progress topic and resumes from the
last committed unit, so a restart neither skips nor repeats.

A unit counts as published only when its progress record can be read back: kafka-python 3.0
can report a commit as done after the broker restarted mid-transaction although its records
expired or the broker aborted the transaction (seen in the broker-restart fault test). So every
send's outcome is checked before the commit, the commit is confirmed by reading the progress
record with read_committed, and anything unconfirmed is sent again by a new producer — the
replicator's version check makes the repeat harmless.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from lakehouse import kafka
from lakehouse.contracts import Contract
from lakehouse.errors import MedshareError, StorageError, TransportError
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.deltalog import Commit, DeltaLog, LogGap
from lakehouse.replication.layout import HOSPITAL, MONTH, ReplicationLayout
from lakehouse.replication.wire import FULL, PARTITIONS, Chunker, Header
from lakehouse.settings import Settings
from lakehouse.shareable import ShareableProjector, schema_fingerprint
from lakehouse.storage import delta_storage_options, s3_client, site_credentials

log = logging.getLogger(__name__)

# A unit of a whole city's table may take minutes to send; the broker allows up to 15.
TRANSACTION_TIMEOUT_MS = 600_000
MAX_BLOCK_MS = 45_000
# kafka-python keeps asking a transaction coordinator that died (a provincial site lost) until
# max_block_ms runs out, where a new producer finds the new coordinator at once: a short wait
# for init_transactions, then a new producer (the publisher's retry) — 45 s stalls became ~10 s.
INIT_WAIT_MS = 8_000
# Markers of a committed transaction reach the partitions shortly after the commit returns.
CONFIRM_SECONDS = 30.0
SCAN_BATCH_ROWS = 65_536


class PublishError(MedshareError):
    """The publisher cannot go on for a reason that retrying will not fix."""


@dataclass(frozen=True)
class Unit:
    dataset: str
    version: int
    prev: int
    kind: str
    partitions: dict[str, list[str]]
    committed_ms: int
    commits: int


@dataclass
class DatasetStats:
    units: int = 0
    rows: int = 0
    messages: int = 0
    bytes: int = 0
    version: int | None = None


@dataclass
class PublishReport:
    city: str
    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.datasets.values())


def _partition_map(partitions: frozenset[tuple[str, str]] | set[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for hospital, month in sorted(partitions):
        out.setdefault(hospital, []).append(month)
    return out


def _lookahead(items: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, is_last) for each item."""
    previous = next(items, _END)
    while previous is not _END:
        current = next(items, _END)
        yield previous, current is _END
        previous = current


_END = object()


class Publisher:
    """One city's publisher. Not thread-safe: one per city and process."""

    def __init__(
        self,
        settings: Settings,
        layout: ReplicationLayout,
        city: str,
        contracts: Mapping[str, Contract],
        key: ProvinceKey,
        *,
        progress: Callable[[str, int, int], None] = lambda *_: None,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.city = layout.topology.city(city).id
        self.contracts = {n: c for n, c in sorted(contracts.items()) if c.shareable}
        self.key = key
        self.progress = progress
        credentials = site_credentials(settings, self.city)
        self.client = s3_client(settings, credentials)
        self.storage_options = delta_storage_options(settings, credentials)
        self.logs = {
            name: DeltaLog(self.client, layout.city_table(self.city, name), hospital=HOSPITAL, month=MONTH)
            for name in self.contracts
        }
        self._producer: KafkaProducer | None = None
        self._progress: KafkaConsumer | None = None
        self.published: dict[str, int] = {}

    # -- Kafka: the transactional producer and the progress it wrote -----------------------
    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            producer = kafka.producer(
                self.settings,
                transactional_id=self.layout.transactional_id(self.city),
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                compression_type=None,  # values are zstd-compressed Arrow already
                linger_ms=20,
                # Fail a unit within a minute when the broker is gone (it is then re-sent by a
                # new producer) instead of blocking for the defaults' two minutes.
                request_timeout_ms=15_000,
                delivery_timeout_ms=45_000,
                max_block_ms=INIT_WAIT_MS,
            )
            try:
                with kafka.transport_errors(f"initialise transactions for {self.city}"):
                    # Fences an earlier instance and aborts its open transaction, if any.
                    producer.init_transactions()
            except TransportError:
                producer.close(timeout=0)
                raise
            # init_transactions waits max_block_ms; sends may wait longer for buffer space
            # (kafka-python reads the setting at each call).
            producer.config["max_block_ms"] = MAX_BLOCK_MS
            self._producer = producer
            self.published = self._read_progress()
        return self._producer

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except KafkaError as exc:  # closing a broken producer: nothing more to do
                log.debug("closing producer: %s", exc)
            self._producer = None
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _read_progress(self) -> dict[str, int]:
        """The last committed version per dataset, from this city's progress partition."""
        if self._progress is not None:
            self._progress.close()
        self._progress = kafka.consumer(self.settings, group_id=None)
        tp = self._progress_partition()
        with kafka.transport_errors(f"read publisher progress from {tp.topic}"):
            self._progress.assign([tp])
            self._progress.seek_to_beginning(tp)
        published: dict[str, int] = {}
        self._read_progress_to_end(published, deadline=time.monotonic() + 60)
        return published

    def _progress_partition(self) -> TopicPartition:
        return TopicPartition(
            self.layout.progress_topic, self.layout.partition_of(self.city, "replication-progress")
        )

    def _read_progress_to_end(self, published: dict[str, int], *, deadline: float) -> None:
        """Read this city's progress records up to the partition's last committed offset."""
        consumer = self._progress
        assert consumer is not None
        tp = self._progress_partition()
        with kafka.transport_errors(f"read publisher progress from {tp.topic}"):
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TransportError(f"reading {tp.topic}[{tp.partition}] took too long")
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        city, _, dataset = (record.key or b"").decode().partition("/")
                        if city == self.city and record.value:
                            published[dataset] = int(json.loads(record.value)["version"])

    def _confirm(self, unit: Unit) -> None:
        """Wait until the unit's progress record is readable as committed, or fail."""
        deadline = time.monotonic() + CONFIRM_SECONDS
        seen: dict[str, int] = {}
        while True:
            self._read_progress_to_end(seen, deadline=deadline)
            if seen.get(unit.dataset, -1) >= unit.version:
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"{self.city}/{unit.dataset} v{unit.version}: the commit was reported done but its "
                    f"progress record is not readable after {CONFIRM_SECONDS:.0f} s; sending it again"
                )
            time.sleep(0.05)

    # -- what to ship ----------------------------------------------------------------------
    def pending(self) -> list[Unit]:
        self._connect()
        units = []
        for name, delta_log in self.logs.items():
            unit = self._pending_unit(name, delta_log)
            if unit is not None:
                units.append(unit)
        return units

    def _pending_unit(self, name: str, delta_log: DeltaLog) -> Unit | None:
        last = self.published.get(name)
        latest = delta_log.latest_version(known=last)
        if latest is None:
            return None
        if last is not None and latest < last:
            raise PublishError(
                f"{self.city}/{name}: the curated table is at version {latest} but version {last} was "
                "already published — was the table recreated? Replace the province's copy deliberately."
            )
        if last is not None and latest == last:
            return None
        commits: list[Commit] = []
        if last is not None:
            try:
                commits = [delta_log.commit(v) for v in range(last + 1, latest + 1)]
            except LogGap as exc:
                log.warning("%s; shipping the whole table instead", exc)
                commits = []
        if not commits:
            try:
                committed_ms = delta_log.commit(latest).timestamp_ms
            except LogGap:
                committed_ms = int(time.time() * 1000)
            return Unit(name, latest, -1 if last is None else last, FULL, {}, committed_ms, 1)
        touched = set().union(*(c.partitions for c in commits))
        return Unit(
            name,
            latest,
            last if last is not None else -1,
            PARTITIONS,
            _partition_map(touched),
            min(c.timestamp_ms for c in commits),
            len(commits),
        )

    def _rows(self, unit: Unit, projector: ShareableProjector) -> Iterator[pa.RecordBatch]:
        table = DeltaTable(
            self.layout.city_table(self.city, unit.dataset).uri,
            version=unit.version,
            storage_options=self.storage_options,
        )
        dataset = table.to_pyarrow_dataset()
        columns = [c for c in projector.source_columns if c in dataset.schema.names]
        expression = None
        if unit.kind == PARTITIONS:
            for hospital, months in unit.partitions.items():
                term = (pads.field(HOSPITAL) == hospital) & pads.field(MONTH).isin(months)
                expression = term if expression is None else expression | term
            if expression is None:  # commits that changed no data (OPTIMIZE, properties)
                return
        for batch in dataset.to_batches(columns=columns, filter=expression, batch_size=SCAN_BATCH_ROWS):
            if batch.num_rows:
                yield projector.project(batch)

    # -- shipping --------------------------------------------------------------------------
    def publish(self, unit: Unit, stats: DatasetStats) -> None:
        producer = self._connect()
        contract = self.contracts[unit.dataset]
        projector = ShareableProjector(contract, self.key)
        fingerprint = schema_fingerprint(projector.schema)
        topic = self.layout.topic(unit.dataset)
        partition = self.layout.partition_of(self.city, unit.dataset)
        chunker = Chunker(projector.schema)
        with kafka.transport_errors(f"publish {self.city}/{unit.dataset} v{unit.version}"):
            producer.begin_transaction()
            key = self.city.encode()
            sent = []
            try:
                rows = messages = size = 0
                chunks = chunker.chunks(self._rows(unit, projector))
                for index, ((value, n), last) in enumerate(_lookahead(chunks)):
                    header = Header(
                        city=self.city,
                        dataset=unit.dataset,
                        version=unit.version,
                        prev=unit.prev,
                        kind=unit.kind,
                        schema=fingerprint,
                        chunk=index,
                        last=last,
                        committed_ms=unit.committed_ms,
                        partitions=unit.partitions,
                    )
                    headers = header.encode()
                    sent.append(producer.send(topic, value, key, headers, partition))
                    rows, messages, size = rows + n, messages + 1, size + len(value)
                sent.append(
                    producer.send(
                        self.layout.progress_topic,
                        key=f"{self.city}/{unit.dataset}".encode(),
                        value=json.dumps(
                            {"version": unit.version, "rows": rows, "published_ms": int(time.time() * 1000)}
                        ).encode(),
                        partition=self._progress_partition().partition,
                    )
                )
                producer.flush(timeout=60)
                for future in sent:  # raises the send's error: an expired or refused batch
                    future.get(timeout=0)
                producer.commit_transaction()
            except BaseException:
                self._abort()
                raise
            self._confirm(unit)
        self.published[unit.dataset] = unit.version
        log.info(
            "published %s/%s v%d (%s, %d commit(s)): %d rows in %d message(s)",
            self.city,
            unit.dataset,
            unit.version,
            unit.kind,
            unit.commits,
            rows,
            messages,
        )
        stats.units += 1
        stats.rows += rows
        stats.messages += messages
        stats.bytes += size
        stats.version = unit.version

    def _abort(self) -> None:
        producer = self._producer
        if producer is None:
            return
        try:
            producer.abort_transaction()
        except KafkaError as exc:
            # The broker aborts it when this transactional id next initialises or it times out.
            log.warning("could not abort the transaction (%s); a new producer will", exc)
            self.close()

    def run_once(self, *, attempts: int = 5, stop: threading.Event | None = None) -> PublishReport:
        """Publish everything pending, once. Broker or storage failures are retried with backoff."""
        report = PublishReport(self.city)
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                units = self.pending()
                for done, unit in enumerate(units):
                    if stop is not None and stop.is_set():
                        break
                    self.progress(f"{unit.dataset} v{unit.version}", done, len(units))
                    self.publish(unit, report.datasets.setdefault(unit.dataset, DatasetStats()))
                self.progress("published", len(units), len(units))
                break
            except (TransportError, StorageError, KafkaError, DeltaError, OSError) as exc:
                if attempt == attempts:
                    if isinstance(exc, MedshareError):
                        raise
                    # Translated here so the command line reports it as one clear line.
                    raise TransportError(f"publishing {self.city} failed {attempts} time(s): {exc}") from exc
                delay = min(2**attempt, 30)
                log.warning("publishing %s failed (%s); retrying in %d s", self.city, exc, delay)
                self.close()
                time.sleep(delay)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def follow(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """Publish as commits appear until `stop` is set; failures are retried, never fatal."""
        while not stop.is_set():
            try:
                self.run_once(attempts=1, stop=stop)
            except (KafkaError, DeltaError, OSError, MedshareError) as exc:
                if isinstance(exc, PublishError):
                    raise
                log.warning("publisher %s: %s; retrying", self.city, exc)
                self.close()
                stop.wait(2.0)
                continue
            stop.wait(interval)
        self.close()
