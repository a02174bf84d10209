"""The publisher's commit contract with a fake producer and progress reader (the broker-restart
fault test exercises the real thing): a unit is recorded as published only when every send
succeeded, the transaction committed, and its progress record reads back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from lakehouse.contracts import load_contracts
from lakehouse.errors import TransportError
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication import publisher as publisher_module
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.publisher import DatasetStats, Publisher, Unit
from lakehouse.replication.wire import PARTITIONS
from lakehouse.settings import get_settings
from lakehouse.topology import load_topology

CITY = "zhengzhou"


class _Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class FakeProducer:
    fail_sends: bool = False
    calls: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, *_: Any, **__: Any
    ) -> _Future:
        self.sent.append({"topic": topic, "key": key, "value": value})
        return _Future(KafkaTimeoutError("Expiring 1 record(s)") if self.fail_sends else None)

    def flush(self, timeout: float | None = None) -> None:
        self.calls.append("flush")

    def commit_transaction(self) -> None:
        self.calls.append("commit")

    def abort_transaction(self) -> None:
        self.calls.append("abort")

    def close(self, timeout: float | None = None) -> None:
        self.calls.append("close")


@dataclass
class _Record:
    key: bytes
    value: bytes


class FakeProgress:
    """The progress partition: holds what `committed` lets through (read_committed)."""

    def __init__(self, producer: FakeProducer, *, committed: bool) -> None:
        self.producer = producer
        self.committed = committed
        self.offset = 0

    def _visible(self) -> list[_Record]:
        if not self.committed or "commit" not in self.producer.calls:
            return []
        return [_Record(m["key"], m["value"]) for m in self.producer.sent if m["topic"].endswith("progress")]

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self._visible()) for tp in tps}

    def position(self, tp: TopicPartition) -> int:
        return self.offset

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[_Record]]:
        records = self._visible()[self.offset :]
        self.offset += len(records)
        return {TopicPartition("progress", 0): records} if records else {}

    def close(self) -> None:
        pass


def _publisher(producer: FakeProducer, *, committed: bool) -> Publisher:
    settings = get_settings()
    layout = ReplicationLayout(load_topology(settings.platform_dir), "tunit")
    publisher = Publisher(
        settings, layout, CITY, load_contracts(settings.platform_dir), ProvinceKey.from_settings(settings)
    )
    publisher._producer = producer
    publisher._progress = FakeProgress(producer, committed=committed)
    publisher._rows = lambda unit, projector: iter(())  # type: ignore[method-assign]
    publisher.published = {"encounters": 3}
    return publisher


UNIT = Unit("encounters", 5, 3, PARTITIONS, {"zz-c1": ["2025-01"]}, 0, 2)


def test_a_confirmed_commit_is_recorded() -> None:
    producer = FakeProducer()
    publisher = _publisher(producer, committed=True)
    publisher.publish(UNIT, DatasetStats())
    assert producer.calls == ["begin", "flush", "commit"]
    assert publisher.published["encounters"] == 5
    progress = [json.loads(m["value"]) for m in producer.sent if m["topic"].endswith("progress")]
    assert [p["version"] for p in progress] == [5]


def test_a_failed_send_aborts_and_records_nothing() -> None:
    producer = FakeProducer(fail_sends=True)
    publisher = _publisher(producer, committed=True)
    with pytest.raises(TransportError, match="Expiring"):
        publisher.publish(UNIT, DatasetStats())
    assert "commit" not in producer.calls and "abort" in producer.calls
    assert publisher.published["encounters"] == 3


def test_a_commit_whose_progress_never_reads_back_is_not_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher_module, "CONFIRM_SECONDS", 0.2)
    producer = FakeProducer()
    publisher = _publisher(producer, committed=False)
    with pytest.raises(TransportError, match="not readable"):
        publisher.publish(UNIT, DatasetStats())
    assert "commit" in producer.calls
    assert publisher.published["encounters"] == 3
