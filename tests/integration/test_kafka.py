"""kafka-python against the real broker: idempotent producer, read_committed consumer."""

from __future__ import annotations

import json

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic

from lakehouse import kafka
from lakehouse.settings import Settings
from lakehouse.topology import Topology


def test_topology_topics_exist(stack: Settings, topology: Topology) -> None:
    client = kafka.admin(stack)
    try:
        existing = set(client.list_topics())
        assert {t.name for t in topology.kafka.topics} <= existing
        # Creating them again creates nothing.
        assert kafka.ensure_topics(client, topology) == []
    finally:
        client.close()


def test_topics_with_fewer_partitions_than_the_topology_are_grown(
    stack: Settings, topology: Topology, unique: str
) -> None:
    """A stack provisioned when the province had 3 cities (3 partitions a topic) is grown to the
    topology's count by the next `up`; topics already big enough are left alone."""
    layout = topology.kafka
    small = topology.model_copy(update={"kafka": layout.model_copy(update={"default_partitions": 3})})
    names = {f"{unique}.{t.name}": layout.partitions_of(t) for t in layout.topics}
    client = kafka.admin(stack)
    try:
        assert sorted(kafka.ensure_topics(client, small, unique)) == sorted(names)
        grown = kafka.ensure_topics(client, topology, unique)
        assert grown == sorted(n for n, count in names.items() if count > 3)
        described = client.describe_topics(sorted(names))
        assert {d["name"]: len(d["partitions"]) for d in described} == names
        assert kafka.ensure_topics(client, topology, unique) == []
    finally:
        client.delete_topics(sorted(names))
        client.close()


def test_a_namespace_is_deleted_with_exactly_its_topics(
    stack: Settings, topology: Topology, unique: str
) -> None:
    client = kafka.admin(stack)
    try:
        created = kafka.ensure_topics(client, topology, f"a{unique}")
        beside = kafka.ensure_topics(client, topology, f"a{unique}x")  # shares the prefix, not the dot
        assert sorted(kafka.delete_namespace_topics(client, f"a{unique}")) == sorted(created)
        with pytest.raises(ValueError):
            kafka.delete_namespace_topics(client, "")
        left = set(client.list_topics())
        assert not left & set(created) and set(beside) <= left
        assert {t.name for t in topology.kafka.topics} <= left  # the platform's own
        kafka.delete_namespace_topics(client, f"a{unique}x")
    finally:
        client.close()


def test_idempotent_producer_round_trip(stack: Settings, unique: str) -> None:
    topic = f"test.roundtrip.{unique}"
    client = kafka.admin(stack)
    client.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    client.close()

    producer = kafka.producer(stack)
    assert producer.config["enable_idempotence"] is True
    sent = [{"n": i, "city": "zhengzhou" if i % 2 else "luoyang"} for i in range(200)]
    for msg in sent:
        producer.send(
            topic,
            key=msg["city"].encode(),
            value=json.dumps(msg).encode(),
            headers=[("city", msg["city"].encode())],
        )
    producer.flush(timeout=30)
    producer.close()

    consumer = kafka.consumer(stack, group_id=f"test-{unique}", consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    consumer.seek_to_beginning()
    got = []
    for record in consumer:
        got.append((record.partition, json.loads(record.value), dict(record.headers)))
        if len(got) == len(sent):
            break
    consumer.close()
    assert sorted(g[1]["n"] for g in got) == list(range(200))
    # The key decides the partition: one city's messages stay in one partition, in order.
    for city in ("zhengzhou", "luoyang"):
        parts = {p for p, m, _ in got if m["city"] == city}
        assert len(parts) == 1
        ordered = [m["n"] for _, m, _ in got if m["city"] == city]
        assert ordered == sorted(ordered)
    assert all(h["city"].decode() == m["city"] for _, m, h in got)
