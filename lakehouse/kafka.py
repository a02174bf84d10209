"""The Kafka client factory: producers, consumers and the admin client on the configured broker.

Clients are created here with the platform's defaults and handed to the code that uses them,
so that code can take a fake in unit tests and the real broker in integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from lakehouse.errors import TransportError
from lakehouse.settings import Settings
from lakehouse.topology import Topology

CLIENT_ID = "medshare"
# kafka-python backs off reconnects up to 30 s by default: after a broker restart clients would sit
# idle that long. On a LAN a few seconds is plenty.
RECONNECT_BACKOFF_MAX_MS = 3_000


@contextmanager
def transport_errors(action: str) -> Iterator[None]:
    """Translate kafka-python failures into TransportError naming what we were doing."""
    try:
        yield
    except KafkaError as exc:
        raise TransportError(f"{action}: {type(exc).__name__}: {exc}") from exc


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer (acks=all); pass `transactional_id=` for a transactional one."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_servers,
        "client_id": CLIENT_ID,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "zstd",
        "linger_ms": 5,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    config.update(overrides)
    with transport_errors(f"connect producer to {settings.kafka_servers}"):
        return KafkaProducer(**config)


def consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    """A consumer that sees committed transactions only and commits offsets explicitly."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_servers,
        "client_id": CLIENT_ID,
        "group_id": group_id,
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    config.update(overrides)
    with transport_errors(f"connect consumer to {settings.kafka_servers}"):
        return KafkaConsumer(*topics, **config)


def admin(settings: Settings, **overrides: Any) -> KafkaAdminClient:
    config: dict[str, Any] = {"bootstrap_servers": settings.kafka_servers, "client_id": CLIENT_ID}
    config.update(overrides)
    with transport_errors(f"connect admin client to {settings.kafka_servers}"):
        return KafkaAdminClient(**config)


def replicas(settings: Settings, topology: Topology) -> int:
    """Replicas of each topic: the topology's, and at least one in each provincial site."""
    return max(topology.kafka.replication_factor, len(settings.site_ids))


def ensure_topics(
    client: KafkaAdminClient,
    topology: Topology,
    namespace: str = "",
    *,
    replication_factor: int | None = None,
) -> list[str]:
    """Create the topology's topics that do not exist yet (under `namespace.` when given, as tests
    and benchmarks do) and grow those with fewer partitions than the topology gives them; returns
    the names created or grown.

    Growing keeps every city whose index is below the old partition count on its partition
    (index modulo partitions); cities added since move to their own, so grow while they have
    nothing in flight (as when they join)."""
    existing = set(client.list_topics())
    prefix = f"{namespace}." if namespace else ""
    grown = _grow_partitions(client, topology, prefix, existing)
    wanted = [
        NewTopic(
            prefix + t.name,
            num_partitions=topology.kafka.partitions_of(t),
            replication_factor=replication_factor or topology.kafka.replication_factor,
            topic_configs=dict(t.config),
        )
        for t in topology.kafka.topics
        if prefix + t.name not in existing
    ]
    created = []
    for topic in wanted:
        try:
            with transport_errors(f"create topic {topic.name}"):
                client.create_topics([topic])
        except TransportError as exc:
            if not isinstance(exc.__cause__, TopicAlreadyExistsError):
                raise
        else:
            created.append(topic.name)
    _await_listed(client, set(created))
    return created + grown


def delete_namespace_topics(client: KafkaAdminClient, namespace: str) -> list[str]:
    """Delete every topic of a test's or benchmark's namespace; the names deleted.

    A namespace's topics have 18 partitions each (one per city), and every partition holds file
    handles in the broker: a test session that left each test's topics behind ran the broker out
    of descriptors ("Too many open files") after ~100 fault rounds, and the broker shut down."""
    if not namespace:
        raise ValueError("no namespace: refusing to delete the platform's own topics")
    with transport_errors(f"delete the topics of namespace {namespace}"):
        names = sorted(t for t in client.list_topics() if t.startswith(f"{namespace}."))
        if names:
            client.delete_topics(names)
    return names


def _await_listed(client: KafkaAdminClient, names: set[str], timeout: float = 30.0) -> None:
    """CreateTopics returns once the controller has the topics; the broker lists them a moment
    later. Wait until it does, so that whoever is told they exist finds them."""
    deadline = time.monotonic() + timeout
    while names:
        with transport_errors("list topics"):
            names = names - set(client.list_topics())
        if names and time.monotonic() > deadline:
            raise TransportError(f"created but not listed after {timeout:.0f} s: {', '.join(sorted(names))}")
        if names:
            time.sleep(0.1)


def _grow_partitions(
    client: KafkaAdminClient, topology: Topology, prefix: str, existing: set[str]
) -> list[str]:
    wanted = {prefix + t.name: topology.kafka.partitions_of(t) for t in topology.kafka.topics}
    names = sorted(n for n in wanted if n in existing)
    if not names:
        return []
    with transport_errors("describe topics"):
        described = client.describe_topics(names)
    short = {d["name"]: wanted[d["name"]] for d in described if len(d["partitions"]) < wanted[d["name"]]}
    if short:
        with transport_errors(f"add partitions to {', '.join(sorted(short))}"):
            client.create_partitions(short)
    return sorted(short)


def group_members(client: KafkaAdminClient, group_id: str) -> int:
    """How many members the consumer group has now (0 for a group that is empty or unknown)."""
    with transport_errors(f"describe consumer group {group_id}"):
        described = client.describe_groups([group_id])
    info = described.get(group_id) or {}
    return len(info.get("members") or [])
