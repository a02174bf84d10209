"""Helpers for replication tests and the benchmark: curated-shaped city tables written with delta-rs
(the publisher reads any Delta table, whichever engine wrote it), a replicator on a thread, and
waiting until `verify` finds no difference."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import prometheus_client
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError
from kafka import TopicPartition

from lakehouse import kafka
from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey, person_key
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.publisher import Publisher
from lakehouse.replication.replicator import Replicator
from lakehouse.replication.verify import VerifyReport, verify
from lakehouse.replication.wire import Header
from lakehouse.settings import Settings
from lakehouse.shareable import ARROW_TYPES, shareable_schema
from lakehouse.storage import (
    PROVINCE_SITE,
    delta_storage_options,
    remove_prefix,
    root_credentials,
    s3_client,
    site_credentials,
)
from lakehouse.topology import Topology

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# Rounds of each fault test: `make test` runs one, `make test-faults` FAULT_REPEATS of them.
FAULT_REPEATS = range(int(os.environ.get("MEDSHARE_FAULT_REPEATS", "1")))
CITIES = ("zhengzhou", "luoyang", "nanyang")


def hospitals(topology: Topology, city: str) -> list[str]:
    return [h.id for h in topology.hospitals_of(city)]


def curated_rows(
    contract: Contract,
    hospitals: Sequence[str],
    n: int,
    *,
    months: int = 3,
    salt: str = "a",
    seed: int = 1,
    extra: Mapping[str, pa.Array] | None = None,
) -> pa.Table:
    """`n` rows shaped like the contract's curated table: every column typed, unique business
    keys (prefixed by `salt`), spread over `hospitals` and `months` months of 2025."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    hospital = np.array(hospitals)[idx % len(hospitals)]
    month_index = (idx // len(hospitals)) % months
    instants = [
        EPOCH + dt.timedelta(days=31 * int(m), hours=int(h))
        for m, h in zip(month_index, idx % 24, strict=True)
    ]
    month = np.array([t.strftime("%Y-%m") for t in instants])
    people = rng.integers(0, max(n // 3, 1), n)
    columns: dict[str, pa.Array] = {}
    for c in contract.columns:
        if c.name == contract.partition_by.hospital:
            values = pa.array(hospital)
        elif c.name == contract.partition_by.month:
            values = pa.array(instants, ARROW_TYPES[c.type])
        elif c.identifier == "resident_id":
            values = pa.array([f"4101011990{p:08d}" for p in people])
        elif c.name in contract.business_key and c.type in ("int", "long"):
            values = pa.array(idx, ARROW_TYPES[c.type])
        elif c.name in contract.business_key:
            values = pa.array([f"{c.name[:3]}-{salt}-{i}" for i in idx])
        elif c.allowed:
            values = pa.array(np.array(c.allowed)[idx % len(c.allowed)])
        elif c.type == "string":
            values = pa.array([f"{c.name[:3]}{v}" for v in rng.integers(0, 1000, n)])
        elif c.type in ("int", "long"):
            values = pa.array(rng.integers(0, 1000, n), ARROW_TYPES[c.type])
        elif c.type == "double":
            values = pa.array(rng.random(n))
        elif c.type == "bool":
            values = pa.array(rng.random(n) > 0.5)
        elif c.type == "date":
            values = pa.array([t.date() for t in instants], pa.date32())
        else:
            values = pa.array(instants, ARROW_TYPES[c.type])
        if not c.required and c.type != "bool" and c.name not in contract.business_key:
            values = pc.if_else(pa.array(idx % 7 == 0), pa.nulls(n, values.type), values)
        columns[c.name] = values
    columns["month"] = pa.array(month)
    columns["_source_file"] = pa.array([f"{h}/{contract.name}/{salt}.csv" for h in hospital])
    columns["_source_checksum"] = pa.array(["0" * 64] * n)
    columns["_run_id"] = pa.array([f"run-{salt}"] * n)
    for name, values in (extra or {}).items():
        columns[name] = values
    return pa.table(columns)


def write_city(
    settings: Settings,
    layout: ReplicationLayout,
    city: str,
    contract: Contract,
    table: pa.Table,
    mode: str = "append",
) -> int:
    """Commit rows to a city's curated table (as its ingestion would); returns the new version."""
    uri = layout.city_table(city, contract.name).uri
    options = delta_storage_options(settings, site_credentials(settings, city))
    # New columns (a contract that grew) merge into the table's schema, as Spark's would.
    write_deltalake(  # type: ignore[call-overload]
        uri,
        table,
        partition_by=["hospital_id", "month"],
        mode=mode,
        schema_mode="merge",
        storage_options=options,
    )
    return int(DeltaTable(uri, storage_options=options).version())


def city_table(settings: Settings, layout: ReplicationLayout, city: str, dataset: str) -> DeltaTable:
    options = delta_storage_options(settings, site_credentials(settings, city))
    return DeltaTable(layout.city_table(city, dataset).uri, storage_options=options)


def province_table(settings: Settings, layout: ReplicationLayout, dataset: str) -> DeltaTable:
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    return DeltaTable(layout.province_table(dataset).uri, storage_options=options)


def read_all(table: DeltaTable, **kwargs: object) -> pa.Table:
    """Every row (consumes the whole scan: an unfinished pyarrow scan over delta-rs crashes at exit)."""
    return table.to_pyarrow_dataset().to_table(**kwargs)  # type: ignore[arg-type]


def make_topics(settings: Settings, layout: ReplicationLayout) -> None:
    client = kafka.admin(settings)
    try:
        replicas = kafka.replicas(settings, layout.topology)
        kafka.ensure_topics(client, layout.topology, layout.namespace, replication_factor=replicas)
    finally:
        client.close()


def drop_topics(settings: Settings, layout: ReplicationLayout) -> None:
    """Delete the layout's topics (its namespace's), as a test or benchmark ends."""
    client = kafka.admin(settings)
    try:
        kafka.delete_namespace_topics(client, layout.namespace)
    finally:
        client.close()


def discard(settings: Settings, layout: ReplicationLayout) -> None:
    """Remove everything a namespace wrote: its topics, and its city and provincial tables."""
    drop_topics(settings, layout)
    topology = layout.topology
    buckets = [c.buckets.curated for c in topology.cities] + [topology.province.buckets.lakehouse]
    remove_prefix(s3_client(settings, root_credentials(settings)), buckets, f"{layout.namespace}/")


@contextmanager
def replicator_thread(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    *,
    worker: Replicator | None = None,
) -> Iterator[Replicator]:
    """A replicator (a new one, or `worker`) running on a thread for the block's duration."""
    worker = worker or Replicator(settings, layout, contracts)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, name="replicator", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the replicator did not stop within 60 s"
    assert not errors, f"the replicator failed: {errors[0]!r}"


def wait_verified(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    key: ProvinceKey,
    *,
    timeout: float = 120.0,
    cities: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    sites: Sequence[Settings] | None = None,
) -> VerifyReport:
    """Poll `verify` (in each of `sites`, when given) until it finds no difference; fail with the
    differences after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = verify(settings, layout, contracts, key, cities=cities, datasets=datasets, sites=sites)
        if result.ok:
            return result
        if time.monotonic() > deadline:
            lines = "\n".join(map(str, result.differences[:20]))
            raise AssertionError(f"province still differs after {timeout:.0f} s:\n{lines}")
        time.sleep(1.0)


def row_ids(
    table: pa.Table, contract: Contract, *, city: str | None = None, key: ProvinceKey | None = None
) -> Counter[tuple[str, ...]]:
    """Each row as (city, business key columns that survive pseudonymisation, person key, month),
    counted. Province rows carry `city` and `person_key`; a city's rows are given `city` and their
    person key is computed here from the resident ID with `key`."""
    shareable = set(shareable_schema(contract).names)
    kept = [c for c in contract.business_key if c in shareable]
    resident = next((c.name for c in contract.columns if c.identifier == "resident_id"), None)
    columns = [table[c].to_pylist() for c in kept]
    if resident is not None:
        if city is None:
            columns.append(table["person_key"].to_pylist())
        else:
            assert key is not None
            columns.append([None if r is None else person_key(key, r) for r in table[resident].to_pylist()])
    columns.append(table["month"].to_pylist())
    cities = table["city"].to_pylist() if city is None else [city] * table.num_rows
    return Counter(tuple(map(str, row)) for row in zip(cities, *columns, strict=True))


def assert_province_holds_the_cities(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    key: ProvinceKey,
    datasets: Sequence[str],
    cities: Sequence[str] = CITIES,
) -> None:
    """Independently of `verify`: the provincial table holds each city row exactly as often as the
    city does (by business key and person key), nothing else, and each city's newest version."""
    for name in datasets:
        expected: Counter[tuple[str, ...]] = Counter()
        for city in cities:
            rows = read_all(city_table(settings, layout, city, name))
            expected += row_ids(rows, contracts[name], city=city, key=key)
        table = province_table(settings, layout, name)
        got = row_ids(read_all(table), contracts[name])
        assert got == expected, (
            f"{name}: {sum((got - expected).values())} province row(s) too many, "
            f"{sum((expected - got).values())} missing"
        )
        for city in cities:
            version = city_table(settings, layout, city, name).version()
            assert table.transaction_version(layout.app_id(city, name)) == version, (name, city)


def publish(
    settings: Settings,
    layout: ReplicationLayout,
    city: str,
    contracts: Mapping[str, Contract],
    key: ProvinceKey,
) -> int:
    """One publishing pass for a city; returns the rows shipped."""
    publisher = Publisher(settings, layout, city, contracts, key)
    try:
        return publisher.run_once().rows
    finally:
        publisher.close()


def units_on_topic(settings: Settings, layout: ReplicationLayout, dataset: str) -> list[Header]:
    """The chunk-0 headers of every committed unit on the dataset's topic."""
    topic = layout.topic(dataset)
    consumer = kafka.consumer(settings, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in range(layout.partitions(dataset))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        headers = []
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=1000).values():
                headers += [Header.decode(r.headers) for r in records]
        return [h for h in headers if h.chunk == 0]
    finally:
        consumer.close()


def dead_letters(settings: Settings, layout: ReplicationLayout) -> list[dict[str, object]]:
    """The rows of the layout's dead-letter table (none when it was never created)."""
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    try:
        table = DeltaTable(layout.dead_letter_table().uri, storage_options=options)
    except TableNotFoundError:
        return []
    return read_all(table).to_pylist()


def metric_value(metric: prometheus_client.Counter | prometheus_client.Gauge, *labels: str) -> float:
    """The current value of one labelled sample of a Prometheus counter or gauge."""
    return float(metric.labels(*labels)._value.get())


def medshare(log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`medshare <args>` as its own process, output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "medshare", *args], stdout=out, stderr=subprocess.STDOUT
        )
