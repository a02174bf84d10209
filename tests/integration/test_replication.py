"""City → province replication on the real MinIO and Kafka: complete, exactly once, corrections and
deletions included, three cities into one table, schema evolution, dead letters."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable

from lakehouse import kafka
from lakehouse.contracts import Column, Contract
from lakehouse.pseudonyms import ProvinceKey, person_key
from lakehouse.replication.deltalog import DeltaLog
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.replicator import Replicator
from lakehouse.replication.wire import Header
from lakehouse.settings import Settings
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, remove_prefix, s3_client, site_credentials
from lakehouse.topology import Topology
from tests.utils.replication import (
    CITIES,
    city_table,
    curated_rows,
    hospitals,
    province_table,
    publish,
    read_all,
    replicator_thread,
    units_on_topic,
    wait_verified,
    write_city,
)


def test_three_cities_replicate_with_corrections_and_deletions(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    enc, pat = contracts["encounters"], contracts["patients"]
    for n, city in enumerate(CITIES):
        write_city(
            stack, layout, city, enc, curated_rows(enc, hospitals(topology, city), 3000, salt=city, seed=n)
        )
        write_city(
            stack, layout, city, pat, curated_rows(pat, hospitals(topology, city), 1000, salt=city, seed=n)
        )

    with replicator_thread(stack, layout, contracts):
        # Three publishers at once into the same provincial tables.
        threads = [threading.Thread(target=publish, args=(stack, layout, c, contracts, key)) for c in CITIES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_verified(stack, layout, contracts, key)

        # Luoyang corrects one partition, deletes some encounters, and adds a new month.
        ly = city_table(stack, layout, "luoyang", "encounters")
        corrected_hospital = hospitals(topology, "luoyang")[0]
        ly.update(
            predicate=f"hospital_id = '{corrected_hospital}' AND month = '2025-01'",
            updates={"department": "'corrected'"},
        )
        ly.delete("encounter_id IN ('enc-luoyang-7', 'enc-luoyang-8')")
        later = curated_rows(enc, hospitals(topology, "luoyang"), 50, months=1, salt="late")
        later = later.set_column(
            later.schema.get_field_index("month"), "month", pa.array(["2025-09"] * later.num_rows)
        )
        write_city(stack, layout, "luoyang", enc, later)
        # Zhengzhou empties one partition entirely.
        zz_hospital = hospitals(topology, "zhengzhou")[1]
        city_table(stack, layout, "zhengzhou", "encounters").delete(
            f"hospital_id = '{zz_hospital}' AND month = '2025-02'"
        )
        for city in ("luoyang", "zhengzhou"):
            publish(stack, layout, city, contracts, key)
        wait_verified(stack, layout, contracts, key)

    province = read_all(province_table(stack, layout, "encounters"))
    # Independent checks, beside verify's checksums.
    assert province.num_rows == sum(
        read_all(city_table(stack, layout, c, "encounters")).num_rows for c in CITIES
    )
    luoyang = province.filter(pc.equal(province["city"], "luoyang"))
    ids = set(luoyang["encounter_id"].to_pylist())
    assert "enc-luoyang-7" not in ids and "enc-luoyang-8" not in ids and "enc-luoyang-9" in ids
    assert "2025-09" in set(luoyang["month"].to_pylist())
    part = luoyang.filter(
        pc.and_(pc.equal(luoyang["hospital_id"], corrected_hospital), pc.equal(luoyang["month"], "2025-01"))
    )
    assert part.num_rows > 0 and set(part["department"].to_pylist()) == {"corrected"}
    zz = province.filter(pc.equal(province["city"], "zhengzhou"))
    assert not zz.filter(
        pc.and_(pc.equal(zz["hospital_id"], zz_hospital), pc.equal(zz["month"], "2025-02"))
    ).num_rows
    # No direct identifier reached the province; person keys are the keyed hash of the city's IDs.
    assert {"resident_id", "patient_mrn", "name", "phone", "address"}.isdisjoint(province.column_names)
    source = read_all(
        city_table(stack, layout, "nanyang", "encounters"), columns=["encounter_id", "resident_id"]
    )
    expected = {e: person_key(key, r) for e, r in zip(*source.to_pydict().values(), strict=True)}
    ny = province.filter(pc.equal(province["city"], "nanyang"))
    assert dict(zip(ny["encounter_id"].to_pylist(), ny["person_key"].to_pylist(), strict=True)) == expected
    # Each city's version is recorded in the provincial table.
    dt = province_table(stack, layout, "encounters")
    for city in CITIES:
        assert (
            dt.transaction_version(layout.app_id(city, "encounters"))
            == city_table(stack, layout, city, "encounters").version()
        )


def test_publisher_restart_neither_skips_nor_repeats(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    enc = contracts["encounters"]
    city = "zhengzhou"
    write_city(stack, layout, city, enc, curated_rows(enc, hospitals(topology, city), 500))
    assert publish(stack, layout, city, contracts, key) == 500
    # A new publisher (a restart) finds nothing pending: the progress is in Kafka, not in memory.
    assert publish(stack, layout, city, contracts, key) == 0
    v1 = write_city(
        stack, layout, city, enc, curated_rows(enc, hospitals(topology, city), 40, months=1, salt="b")
    )
    v2 = write_city(
        stack, layout, city, enc, curated_rows(enc, hospitals(topology, city), 40, months=1, salt="c")
    )
    assert v2 == v1 + 1
    publish(stack, layout, city, contracts, key)
    units = units_on_topic(stack, layout, "encounters")
    # Two pending commits coalesce into one unit at the newest version; each unit once.
    assert [(u.version, u.prev) for u in units] == [(0, -1), (v2, 0)]


def test_the_log_reader_finds_new_commits_and_a_deleted_table_in_one_listing(
    stack: Settings, topology: Topology, layout: ReplicationLayout, contracts: dict[str, Contract]
) -> None:
    enc, city = contracts["encounters"], "zhengzhou"
    table = layout.city_table(city, enc.name)
    client = s3_client(stack, site_credentials(stack, city))
    requests: list[str] = []

    class Counted:
        """The real client, with the name of every call the reader makes to it recorded."""

        def __getattr__(self, name: str) -> object:
            requests.append(name)
            return getattr(client, name)

    log = DeltaLog(Counted(), table, hospital="hospital_id", month="month")  # type: ignore[arg-type]
    assert log.latest_version() is None
    rows = curated_rows(enc, hospitals(topology, city), 30, months=1)
    versions = [write_city(stack, layout, city, enc, rows) for _ in range(3)]
    assert versions == [0, 1, 2]
    assert log.latest_version() == 2
    requests.clear()
    assert [log.latest_version(known=v) for v in versions] == [2, 2, 2]
    # A look that finds nothing new (known = 2) is one listing, like the others.
    assert requests == ["list_objects"] * 3
    # The table deleted under a publisher that knows version 2: no table, not "still at 2".
    remove_prefix(client, [table.bucket], table.log_prefix)
    assert log.latest_version(known=2) is None
    assert log.latest_version(known=0) is None
    # Recreated with fewer commits: the reader says so (the publisher then refuses to go on).
    assert write_city(stack, layout, city, enc, rows) == 0
    assert log.latest_version(known=2) == 0


def test_a_replayed_stream_changes_nothing(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    enc = contracts["encounters"]
    write_city(stack, layout, "nanyang", enc, curated_rows(enc, hospitals(topology, "nanyang"), 800))
    publish(stack, layout, "nanyang", contracts, key)
    with replicator_thread(stack, layout, contracts):
        wait_verified(stack, layout, contracts, key)
    version = province_table(stack, layout, "encounters").version()
    # A second consumer group re-reads the whole topic: every unit is already applied.
    worker = Replicator(stack, layout, contracts, group_id=f"{layout.group_id}-replay")
    worker.run(idle_timeout=5)
    assert province_table(stack, layout, "encounters").version() == version
    assert worker.metrics.duplicates.labels("nanyang", "encounters")._value.get() == 1
    wait_verified(stack, layout, contracts, key, timeout=5)


def test_large_unit_is_chunked_under_the_broker_limit(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    enc = contracts["encounters"]
    write_city(
        stack,
        layout,
        "zhengzhou",
        enc,
        curated_rows(enc, hospitals(topology, "zhengzhou"), 120_000, months=12),
    )
    publish(stack, layout, "zhengzhou", contracts, key)
    with replicator_thread(stack, layout, contracts) as worker:
        wait_verified(stack, layout, contracts, key)
    assert worker.metrics.messages.labels("zhengzhou", "encounters")._value.get() > 1
    assert worker.metrics.units.labels("zhengzhou", "encounters")._value.get() == 1


def test_new_nullable_column_in_one_city_evolves_the_provincial_schema(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    enc = contracts["encounters"]
    write_city(stack, layout, "luoyang", enc, curated_rows(enc, hospitals(topology, "luoyang"), 300))
    write_city(stack, layout, "nanyang", enc, curated_rows(enc, hospitals(topology, "nanyang"), 300))
    for city in ("luoyang", "nanyang"):
        publish(stack, layout, city, contracts, key)
    with replicator_thread(stack, layout, contracts):
        wait_verified(stack, layout, contracts, key)
        # Nanyang's contract gains a nullable column; its table and publisher follow.
        evolved = enc.model_copy(update={"columns": (*enc.columns, Column(name="triage_level", type="int"))})
        newer = {**contracts, "encounters": evolved}
        rows = curated_rows(evolved, hospitals(topology, "nanyang"), 100, months=1, salt="tri")
        write_city(stack, layout, "nanyang", evolved, rows, mode="overwrite")
        publish(stack, layout, "nanyang", newer, key)
        wait_verified(stack, layout, newer, key, cities=["nanyang"])
    province = read_all(province_table(stack, layout, "encounters"))
    assert province.schema.field("triage_level").type == pa.int32()
    by_city = {
        c: province.filter(pc.equal(province["city"], c))["triage_level"] for c in ("luoyang", "nanyang")
    }
    assert by_city["luoyang"].null_count == by_city["luoyang"].length() == 300
    assert by_city["nanyang"].length() == 100 and by_city["nanyang"].null_count < 100


def test_poison_messages_go_to_the_dead_letter_table_and_replication_goes_on(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    topic = layout.topic("encounters")
    good = Header("zhengzhou", "encounters", 5, -1, "full", "x", 0, True, 0).encode()
    poison = [
        (b"not arrow at all", []),  # no headers
        (b"\x00\x01garbage", good),  # good headers, garbage value
        (b"x", Header("atlantis", "encounters", 1, -1, "full", "x", 0, True, 0).encode()),  # unknown city
        (
            b"x",
            Header("luoyang", "encounters", 1, -1, "full", "x", 3, True, 0).encode(),
        ),  # chunk out of sequence
    ]
    producer = kafka.producer(stack)
    for value, headers in poison:
        producer.send(topic, value=value, headers=headers, partition=0)
    producer.flush()
    producer.close()
    enc = contracts["encounters"]
    write_city(stack, layout, "zhengzhou", enc, curated_rows(enc, hospitals(topology, "zhengzhou"), 200))
    publish(stack, layout, "zhengzhou", contracts, key)
    with replicator_thread(stack, layout, contracts) as worker:
        wait_verified(stack, layout, contracts, key)
    options = delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE))
    letters = DeltaTable(layout.dead_letter_table().uri, storage_options=options).to_pyarrow_dataset()
    rows = letters.to_table(filter=pads.field("topic") == topic).sort_by("offset").to_pylist()
    assert [r["value"] for r in rows] == [v for v, _ in poison]
    assert all(r["reason"] for r in rows)
    assert "missing header" in rows[0]["reason"] and "atlantis" in rows[2]["reason"]
    assert "sequence" in rows[3]["reason"]
    assert sum(worker.metrics.dead_letters.labels(k)._value.get() for k in _kinds(worker)) == len(poison)


def _kinds(worker: Replicator) -> Iterator[str]:
    for metric in worker.metrics.dead_letters.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                yield sample.labels["reason"]


def test_units_waiting_from_several_cities_share_one_commit_each_with_its_own_version(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    """Group commit (issue 19's lag at 18 cities): the units that are waiting when the replicator
    polls go into one provincial commit, each city's version in its own `txn`; a city's second
    unit still follows its first."""
    enc = contracts["encounters"]
    only = {"encounters": enc}  # the publishers look at this table only: quicker passes
    for n, city in enumerate(CITIES):
        write_city(
            stack, layout, city, enc, curated_rows(enc, hospitals(topology, city), 300, salt=city, seed=n)
        )
        publish(stack, layout, city, only, key)
    second = CITIES[0]
    more = curated_rows(enc, hospitals(topology, second), 40, months=1, salt="second")
    write_city(stack, layout, second, enc, more)
    publish(stack, layout, second, only, key)

    with replicator_thread(stack, layout, contracts):
        wait_verified(stack, layout, contracts, key, datasets=["encounters"])

    # Read back through the Delta protocol: each table version's txn versions per city.
    table = province_table(stack, layout, "encounters")
    steps = []
    for version in range(table.version() + 1):
        table.load_as_version(version)
        steps.append({c: table.transaction_version(layout.app_id(c, "encounters")) for c in CITIES})
    advanced = [sum(now[c] != before[c] for c in CITIES) for before, now in itertools.pairwise(steps)]
    assert max([sum(v is not None for v in steps[0].values()), *advanced]) >= 2, steps
    assert steps[-1] == {c: 1 if c == second else 0 for c in CITIES}
    assert [s[second] for s in steps].count(0) >= 1, "the first unit of the city was skipped"
