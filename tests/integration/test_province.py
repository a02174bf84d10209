"""The whole province at small size on the real MinIO and Kafka: all 18 cities publish at once,
one replicator applies them, `verify` and `medshare status` account for every city."""

from __future__ import annotations

import threading
from collections import Counter

import pyarrow.compute as pc
import pytest

from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.status import replication_lag
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from medshare.replication_cli import print_replication
from tests.utils.replication import (
    curated_rows,
    hospitals,
    province_table,
    publish,
    read_all,
    replicator_thread,
    wait_verified,
    write_city,
)

ROWS = 100  # per city and dataset


def test_eighteen_cities_publish_at_once_and_the_province_holds_each(
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cities = [c.id for c in topology.cities]
    assert len(cities) == 18
    datasets = ("patients", "encounters")
    for n, city in enumerate(cities):
        for name in datasets:
            rows = curated_rows(contracts[name], hospitals(topology, city), ROWS, salt=city, seed=n)
            write_city(stack, layout, city, contracts[name], rows)
    errors: list[BaseException] = []

    def run(city: str) -> None:
        try:
            publish(stack, layout, city, contracts, key)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with replicator_thread(stack, layout, contracts):
        publishers = [threading.Thread(target=run, args=(c,)) for c in cities]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join(300)
        assert not errors, errors
        wait_verified(stack, layout, contracts, key, timeout=300)

    # Independent of verify: each city's rows, under its own hospitals only.
    for name in datasets:
        province = read_all(province_table(stack, layout, name))
        assert Counter(province["city"].to_pylist()) == dict.fromkeys(cities, ROWS)
        for city in cities:
            theirs = province.filter(pc.equal(province["city"], city))
            assert set(theirs["hospital_id"].to_pylist()) <= set(hospitals(topology, city))
    lag = replication_lag(stack, layout, contracts)
    assert {r.city for r in lag} == set(cities)
    assert all(r.behind == 0 for r in lag)
    # `medshare status`: one row per city, every one of them up to date.
    capsys.readouterr()
    assert print_replication(stack, layout.namespace)
    table = capsys.readouterr().out
    for city in cities:
        (line,) = [row for row in table.splitlines() if f"│ {city} " in row]
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[1:4] == [str(len(datasets)), str(len(datasets)), "0"], line
