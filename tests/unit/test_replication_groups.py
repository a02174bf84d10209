"""Which complete units the replicator applies together (group commit): one dataset and schema a
group, in arrival order, and never more than the byte limit — a big unit alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kafka import TopicPartition

from lakehouse.replication.replicator import Spool, commit_groups
from lakehouse.replication.wire import PARTITIONS, Header

HEADER = Header(
    city="zhengzhou",
    dataset="encounters",
    version=1,
    prev=0,
    kind=PARTITIONS,
    schema="s1",
    chunk=0,
    last=True,
    committed_ms=0,
    partitions={"zz-c1": ["2025-01"]},
)


def _unit(city: str, size: int, **header: object) -> Spool:
    spool = Spool(
        header=replace(HEADER, city=city, **header),  # type: ignore[arg-type]
        first=TopicPartition("t", 0),
        first_offset=0,
        path=Path("/nonexistent"),
        skip=False,
    )
    spool.size = size
    return spool


def _cities(groups: list[list[Spool]]) -> list[list[str]]:
    return [[s.header.city for s in g] for g in groups]


def test_units_of_one_dataset_and_schema_go_together_in_arrival_order() -> None:
    ready = [
        _unit("a", 10),
        _unit("b", 10, dataset="patients"),
        _unit("c", 10),
        _unit("d", 10, schema="s2"),
        _unit("e", 10),
    ]
    assert _cities(commit_groups(ready, limit=100)) == [["a", "c", "e"], ["b"], ["d"]]


def test_a_group_stops_at_the_byte_limit_and_a_big_unit_is_alone() -> None:
    ready = [_unit("a", 40), _unit("b", 40), _unit("c", 40), _unit("big", 500), _unit("d", 10)]
    assert _cities(commit_groups(ready, limit=100)) == [["a", "b"], ["c"], ["big"], ["d"]]
