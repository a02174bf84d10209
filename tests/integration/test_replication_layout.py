"""The provincial tables' layout on the real MinIO and Kafka: (city, month) partitions that many
small units leave at a few files, with exactly-once versions, verify and time travel intact."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import CITY, MONTH, PROVINCE_PARTITIONS, ReplicationLayout
from lakehouse.replication.replicator import COMPACT_AT_FILES
from lakehouse.settings import Settings
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
