"""The provincial tables' layout on the real MinIO and Kafka: (city, month) partitions that many
small units leave at a few files, with exactly-once versions, verify and time travel intact."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import CITY, MONTH, PROVINCE_PARTITIONS, ReplicationLayout
from lakehouse.replication.replicator import COMPACT_AT_FILES
from lakehouse.settings import Settings
from lakehouse.shareable import shareable_schema
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from tests.utils.replication import (
    city_table,
    curated_rows,
    hospitals,
    metric_value,
    province_table,
    publish,
    read_all,
    replicator_thread,
    wait_verified,
    write_city,
)

UNITS = 16


def _files(table: DeltaTable) -> int:
    return pa.table(table.get_add_actions(flatten=True)).num_rows


def _files_in(table: DeltaTable, city: str, month: str) -> int:
    actions = pa.table(table.get_add_actions(flatten=True))
    mask = pc.and_(
        pc.equal(actions[f"partition.{CITY}"], city), pc.equal(actions[f"partition.{MONTH}"], month)
    )
    return int(pc.sum(mask).as_py() or 0)


def test_many_small_units_into_one_partition_leave_a_bounded_number_of_files(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    """Each unit replaces one hospital's rows of one (city, month): without compaction every
    hospital's rows would stay a file of their own. Time travel to a version from before a
    compaction must still read what the province held then."""
    enc = contracts["encounters"]
    city, month = "luoyang", "2025-01"
    ours = hospitals(topology, city)
    assert len(ours) > COMPACT_AT_FILES  # else the partition could never crowd
    seen: list[tuple[int, set[str]]] = []  # (provincial version, the city's encounter ids then)
    with replicator_thread(stack, layout, contracts) as worker:
        for k in range(UNITS):
            rows = curated_rows(enc, [ours[k % len(ours)]], 4, months=1, salt=f"u{k}", seed=k)
            write_city(stack, layout, city, enc, rows)
            publish(stack, layout, city, contracts, key)
            wait_verified(stack, layout, contracts, key, cities=[city], datasets=["encounters"])
            ids = set(read_all(city_table(stack, layout, city, "encounters"))["encounter_id"].to_pylist())
            seen.append((province_table(stack, layout, "encounters").version(), ids))
    table = province_table(stack, layout, "encounters")
    assert tuple(table.metadata().partition_columns) == PROVINCE_PARTITIONS
    assert _files_in(table, city, month) <= COMPACT_AT_FILES
    assert metric_value(worker.metrics.compactions, "encounters") >= 1
    # Compactions are commits of their own: the units' versions stay recorded, exactly once.
    assert table.transaction_version(layout.app_id(city, "encounters")) == (
        city_table(stack, layout, city, "encounters").version()
    )
    assert "OPTIMIZE" in {h.get("operation") for h in table.history()}
    options = delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE))
    for version, ids in seen:
        then = DeltaTable(layout.province_table("encounters").uri, version=version, storage_options=options)
        assert set(read_all(then)["encounter_id"].to_pylist()) == ids, version
    wait_verified(stack, layout, contracts, key, cities=[city])


def test_relayout_rebuilds_an_old_table_keeping_versions_rows_and_time_travel(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    """A table the replicator created before the (city, month) layout — partitioned per hospital
    too — rebuilt by `medshare relayout`: same rows, same applied versions, an earlier version
    still readable, `verify` clean; the replicator then applies to it and compacts it as usual."""
    enc = contracts["encounters"]
    city = "luoyang"
    ours = hospitals(topology, city)
    options = delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE))
    uri = layout.province_table("encounters").uri
    old_partitions = (CITY, "hospital_id", MONTH)
    schema = shareable_schema(enc).insert(0, pa.field(CITY, pa.string()))
    write_deltalake(uri, schema.empty_table(), partition_by=list(old_partitions), storage_options=options)

    def relayout(expect: int = 0) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "medshare",
                "relayout",
                "--dataset",
                "encounters",
                "--namespace",
                layout.namespace,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == expect, done.stdout + done.stderr
        return " ".join((done.stdout + done.stderr).split())  # as one line, however rich wrapped it

    with replicator_thread(stack, layout, contracts):
        for k in range(3):
            write_city(
                stack, layout, city, enc, curated_rows(enc, [ours[k]], 12, months=2, salt=f"o{k}", seed=k)
            )
            publish(stack, layout, city, contracts, key)
            wait_verified(stack, layout, contracts, key, cities=[city], datasets=["encounters"])
        # The table has one writer: not while a replicator runs.
        assert "are running: stop them first" in relayout(expect=1)
    old = province_table(stack, layout, "encounters")
    assert tuple(old.metadata().partition_columns) == old_partitions
    served, applied = old.version(), old.transaction_version(layout.app_id(city, "encounters"))
    before = sorted(read_all(old)["encounter_id"].to_pylist())
    assert len(before) == 36 and applied is not None

    assert "1 table(s) rebuilt" in relayout()
    new = province_table(stack, layout, "encounters")
    assert tuple(new.metadata().partition_columns) == PROVINCE_PARTITIONS
    assert new.transaction_version(layout.app_id(city, "encounters")) == applied
    assert sorted(read_all(new)["encounter_id"].to_pylist()) == before
    # Each (city, month) is one file now, where there was one per hospital and month.
    assert _files(new) == 2 < _files(old)
    then = DeltaTable(uri, version=served, storage_options=options)
    assert tuple(then.metadata().partition_columns) == old_partitions
    assert sorted(read_all(then)["encounter_id"].to_pylist()) == before
    wait_verified(stack, layout, contracts, key, cities=[city], datasets=["encounters"])
    assert "already (city, month)" in relayout()

    with replicator_thread(stack, layout, contracts):
        write_city(stack, layout, city, enc, curated_rows(enc, [ours[3]], 6, months=1, salt="after", seed=9))
        publish(stack, layout, city, contracts, key)
        wait_verified(stack, layout, contracts, key, cities=[city], datasets=["encounters"])
    assert province_table(stack, layout, "encounters").transaction_version(
        layout.app_id(city, "encounters")
    ) == (city_table(stack, layout, city, "encounters").version())
