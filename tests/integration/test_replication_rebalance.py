"""Consumer-group rebalances on the real broker: a rebalance while a unit is half received, and
two replicators in one group — one killed with -9 — apply every unit exactly once."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

from lakehouse import kafka
from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.replicator import Replicator
from lakehouse.replication.wire import Header
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from tests.utils.replication import (
    FAULT_REPEATS,
    assert_province_holds_the_cities,
    curated_rows,
    dead_letters,
    hospitals,
    medshare,
    metric_value,
    publish,
    replicator_thread,
    units_on_topic,
    wait_verified,
    write_city,
)

pytestmark = pytest.mark.faults


@contextmanager
def another_member(settings: Settings, layout: ReplicationLayout, topic: str) -> Iterator[KafkaConsumer]:
    """A second member of the replicators' group, subscribed to another topic only: its joining
    makes every member rejoin, and the replicator gets all its partitions back."""
    consumer = kafka.consumer(settings, topic, group_id=layout.group_id, session_timeout_ms=10_000)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [consumer.poll(200) for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(30)
        consumer.close()


@pytest.mark.parametrize("round_", FAULT_REPEATS)
def test_a_rebalance_while_a_unit_is_half_received_loses_nothing(
    round_: int,
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
) -> None:
    """The CI failure of issue 16: kafka-python 3 keeps a retained partition's position across a
    rebalance, so dropping the half-received unit and reading on stranded it (its later chunks
    were dead-lettered 'out of sequence'); and the revoke callback's blocking commit failed on
    the consumer's IO thread, failing every poll after it."""
    enc = contracts["encounters"]
    city = "zhengzhou"
    rows = curated_rows(enc, hospitals(topology, city), 150_000, months=6, salt="big")
    write_city(stack, layout, city, enc, rows)
    publish(stack, layout, city, contracts, key)
    (unit,) = units_on_topic(stack, layout, "encounters")
    other = f"{layout.namespace}.other"
    admin = kafka.admin(stack)
    admin.create_topics([NewTopic(other, num_partitions=1, replication_factor=1)])
    admin.close()

    members = ExitStack()

    class RebalancedMidUnit(Replicator):
        """Once the unit's second chunk is in, a member joins and waits for the rebalance."""

        joined = False
        open_at_rebalance = 0

        def handle(self, record: ConsumerRecord) -> None:
            super().handle(record)
            if not self.joined and Header.decode(record.headers).chunk == 1:
                self.joined = True
                members.enter_context(another_member(stack, layout, other))
                # Until this consumer's heartbeat has learnt of the rebalance: its next poll rejoins.
                coordinator = self._consumer._coordinator  # type: ignore[union-attr]
                deadline = time.monotonic() + 60
                while not coordinator.need_rejoin() and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.open_at_rebalance = len(self.spools)

    worker = RebalancedMidUnit(stack, layout, contracts)
    with members, replicator_thread(stack, layout, contracts, worker=worker):
        wait_verified(stack, layout, contracts, key, timeout=120)
    # The fault overlapped the unit: its first chunks were in, the rest still on the topic.
    assert worker.joined and worker.open_at_rebalance == 1
    assert metric_value(worker.metrics.restarted, city, "encounters") >= 1
    assert metric_value(worker.metrics.units, city, "encounters") == 1
    assert not dead_letters(stack, layout)
    assert unit.version == 0
    assert_province_holds_the_cities(stack, layout, contracts, key, ["encounters"], [city])


_ASSIGNED = re.compile(r"assigned (\d+) partition\(s\): (.*)$", re.M)
_APPLIED = re.compile(r" applied (\w+)/(\w+) v\d+", re.M)


def _assignment(log: Path) -> set[str]:
    """The partitions (`topic[n]`) a replicator holds, from the last assignment it logged."""
    found = _ASSIGNED.findall(log.read_text())
    return set() if not found or found[-1][0] == "0" else set(found[-1][1].split(", "))


def _applied(log: Path) -> list[tuple[str, str]]:
    return _APPLIED.findall(log.read_text())


@pytest.mark.parametrize("round_", FAULT_REPEATS)
def test_two_replicators_in_one_group_one_killed(
    round_: int,
    stack: Settings,
    topology: Topology,
    layout: ReplicationLayout,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    tmp_path: Path,
) -> None:
    """Two `medshare replicator` processes share the stream; one is killed with -9 while units of
    its partitions are pending and the other takes them over: every row once, every version."""
    datasets = ("encounters", "diagnoses")
    args = ("replicator", "--namespace", layout.namespace, "--metrics-port", "0")
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a, b = medshare(logs[0], *args), medshare(logs[1], *args)
    try:
        # Both members hold a share of the partitions before anything is published.
        everything = sum(layout.partitions(n) for n, c in contracts.items() if c.shareable)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            held = [_assignment(log) for log in logs]
            if all(held) and len(held[0] | held[1]) == everything:
                break
            time.sleep(0.2)
        held = [_assignment(log) for log in logs]
        assert all(held) and len(held[0] | held[1]) == everything, [log.read_text()[-2000:] for log in logs]
        # Two cities whose partitions the first member holds (its pending units when killed) and
        # one of the other's: each topic's partitions are split between the members by range.
        side = {
            c.id: f"{layout.topic('encounters')}[{layout.partition_of(c.id, 'encounters')}]" in held[0]
            for c in topology.cities
        }
        cities = [c for c, a_holds in side.items() if a_holds][:2] + [
            c for c, a_holds in side.items() if not a_holds
        ][:1]
        for n, city in enumerate(cities):
            for name in datasets:
                rows = curated_rows(contracts[name], hospitals(topology, city), 30_000, salt=city, seed=n)
                write_city(stack, layout, city, contracts[name], rows)
        units_of_a = {
            (city, name)
            for city in cities
            for name in datasets
            if f"{layout.topic(name)}[{layout.partition_of(city, name)}]" in held[0]
        }
        assert len(units_of_a) == 4, units_of_a
        publishers = [
            threading.Thread(target=publish, args=(stack, layout, c, contracts, key)) for c in cities
        ]
        for t in publishers:
            t.start()
        # Kill the first member as soon as it has applied one unit: its others are still pending.
        deadline = time.monotonic() + 120
        while not _applied(logs[0]) and time.monotonic() < deadline:
            time.sleep(0.02)
        a.send_signal(signal.SIGKILL)
        a.wait(30)
        for t in publishers:
            t.join(120)
        by_a = set(_applied(logs[0]))
        assert by_a and by_a < units_of_a, (by_a, units_of_a)
        wait_verified(stack, layout, contracts, key, timeout=180)
        by_b = set(_applied(logs[1]))
        # The survivor applied what the killed member left, and nothing was applied twice.
        assert units_of_a - by_a <= by_b
        every = _applied(logs[0]) + _applied(logs[1])
        assert len(every) == len(set(every)), every
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, logs[1].read_text()[-3000:]
    # Independent of verify: each business key once, each city's version recorded.
    assert_province_holds_the_cities(stack, layout, contracts, key, datasets, cities)
    assert not dead_letters(stack, layout)
