"""What the publisher reads from a Delta commit, which provincial rows a unit replaces, and where
replication reads and writes."""

from __future__ import annotations

import itertools
import json

import pytest
from pyspark.sql import SparkSession

from lakehouse.errors import ConfigError
from lakehouse.replication.deltalog import DeltaLog, LogGap
from lakehouse.replication.layout import HOSPITAL, MONTH, ReplicationLayout, TableLocation
from lakehouse.replication.replicator import predicate
from lakehouse.replication.wire import FULL, PARTITIONS, Header
from lakehouse.topology import Topology


def _log() -> DeltaLog:
    # `parse` reads only the text it is given: no object-store client needed.
    return DeltaLog(None, TableLocation("zhengzhou-curated", "encounters"), hospital=HOSPITAL, month=MONTH)  # type: ignore[arg-type]


def _file(kind: str, hospital: str, month: str, **extra: object) -> str:
    values = {HOSPITAL: hospital, MONTH: month}
    return json.dumps(
        {kind: {"path": f"{hospital}/{month}/part-0.parquet", "partitionValues": values, **extra}}
    )


def _lines(*lines: str) -> str:
    return "\n".join(lines) + "\n"


COMMIT_INFO = json.dumps({"commitInfo": {"timestamp": 1_717_000_000_123, "operation": "MERGE"}})
PROTOCOL = json.dumps({"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}})
METADATA = json.dumps(
    {"metaData": {"id": "x", "partitionColumns": [HOSPITAL, MONTH], "format": {"provider": "parquet"}}}
)


# -- the Delta log -------------------------------------------------------------------------------
def test_parse_reads_time_operation_and_changed_partitions() -> None:
    text = _lines(
        COMMIT_INFO,
        PROTOCOL,
        METADATA,
        _file("add", "zz-c1", "2024-01", dataChange=True, size=10),
        _file("add", "zz-c1", "2024-01", dataChange=True, size=20),
        _file("remove", "zz-hpph", "2023-12", dataChange=True, deletionTimestamp=1),
        "",
        _file("add", "zz-c1", "2024-03"),  # dataChange absent: a change
    )
    commit = _log().parse(12, text)
    assert commit.version == 12
    assert commit.timestamp_ms == 1_717_000_000_123
    assert commit.operation == "MERGE"
    assert commit.partitions == {("zz-c1", "2024-01"), ("zz-hpph", "2023-12"), ("zz-c1", "2024-03")}


def test_files_rewritten_without_data_change_do_not_count() -> None:
    optimize = json.dumps({"commitInfo": {"timestamp": 5, "operation": "OPTIMIZE"}})
    text = _lines(
        optimize,
        _file("remove", "zz-c1", "2024-01", dataChange=False),
        _file("remove", "zz-c1", "2024-01", dataChange=False),
        _file("add", "zz-c1", "2024-01", dataChange=False),
    )
    commit = _log().parse(3, text)
    assert (commit.operation, commit.timestamp_ms, commit.partitions) == ("OPTIMIZE", 5, frozenset())
    mixed = _lines(text, _file("add", "zz-hpph", "2024-02", dataChange=True))
    assert _log().parse(4, mixed).partitions == {("zz-hpph", "2024-02")}


def test_only_metadata_changes_nothing() -> None:
    commit = _log().parse(0, _lines(PROTOCOL, METADATA))
    assert commit.partitions == frozenset()


@pytest.mark.parametrize("bad", ["{not json", '{"add": ', "PAR1"])
def test_a_line_that_is_not_json_is_a_log_gap(bad: str) -> None:
    with pytest.raises(LogGap, match="line 2"):
        _log().parse(9, _lines(COMMIT_INFO, bad, _file("add", "zz-c1", "2024-01")))


# -- the replace predicate -----------------------------------------------------------------------
def _header(kind: str, partitions: dict[str, list[str]]) -> Header:
    return Header("zhengzhou", "encounters", 8, 7, kind, "f", 0, True, 0, partitions)


TWO = {"zz-hpph": ["2024-02"], "zz-c1": ["2024-01", "2023-12"]}


def test_predicate_of_a_full_unit_is_the_whole_city() -> None:
    assert predicate(_header(FULL, {})) == "city = 'zhengzhou'"


def test_predicate_of_a_partitions_unit_names_each_hospital_and_its_months() -> None:
    # Hospitals sorted, so a unit always produces the same text.
    assert predicate(_header(PARTITIONS, TWO)) == (
        "city = 'zhengzhou' AND ("
        "(hospital_id = 'zz-c1' AND month IN ('2024-01', '2023-12')) OR "
        "(hospital_id = 'zz-hpph' AND month IN ('2024-02')))"
    )


def test_predicate_of_a_unit_without_partitions_replaces_nothing() -> None:
    text = predicate(_header(PARTITIONS, {}))
    assert text.startswith("city = 'zhengzhou' AND ")
    assert "false" in text


@pytest.mark.parametrize("partitions", [TWO, {}], ids=["two-hospitals", "none"])
def test_predicate_selects_exactly_the_units_partitions(
    local_spark: SparkSession, partitions: dict[str, list[str]]
) -> None:
    grid = list(
        itertools.product(
            ["zhengzhou", "luoyang"], ["zz-c1", "zz-hpph", "ly-c1"], ["2023-12", "2024-01", "2024-02"]
        )
    )
    df = local_spark.createDataFrame(grid, "city string, hospital_id string, month string")
    selected = {tuple(r) for r in df.filter(predicate(_header(PARTITIONS, partitions))).collect()}
    expected = {(c, h, m) for c, h, m in grid if c == "zhengzhou" and m in partitions.get(h, [])}
    assert selected == expected


# -- the layout ----------------------------------------------------------------------------------
def test_a_namespace_prefixes_topics_group_and_tables(topology: Topology) -> None:
    layout = ReplicationLayout(topology, namespace="t42")
    assert layout.topic("encounters") == "t42.medshare.encounters"
    assert layout.progress_topic == "t42.medshare.replication-progress"
    assert layout.group_id == "t42.medshare-replicator"
    assert layout.transactional_id("luoyang") == "t42.medshare-publisher-luoyang"
    assert layout.city_table("luoyang", "encounters") == TableLocation("luoyang-curated", "t42/encounters")
    assert layout.province_table("encounters") == TableLocation("henan-lakehouse", "t42/encounters")
    assert layout.dead_letter_table().path == "t42/_replication/dead_letters"
    assert layout.city_table("luoyang", "encounters").log_prefix == "t42/encounters/_delta_log/"


def test_no_namespace_no_prefix(topology: Topology) -> None:
    layout = ReplicationLayout(topology)
    assert layout.topic("encounters") == "medshare.encounters"
    assert layout.group_id == "medshare-replicator"
    assert layout.transactional_id("luoyang") == "medshare-publisher-luoyang"
    assert layout.city_table("luoyang", "encounters") == TableLocation("luoyang-curated", "encounters")
    assert layout.province_table("encounters").uri == "s3://henan-lakehouse/encounters"
    assert layout.dead_letter_table().path == "_replication/dead_letters"


def test_each_city_has_its_own_partition(topology: Topology) -> None:
    layout = ReplicationLayout(topology)
    cities = [c.id for c in topology.cities]
    assert len(cities) == 18
    assert layout.partitions("encounters") == 18
    assert sorted(layout.partition_of(c, "encounters") for c in cities) == list(range(18))
    # A one-partition topic holds every city.
    assert layout.partitions("smoke") == 1
    assert {layout.partition_of(c, "smoke") for c in cities} == {0}


def test_a_dataset_without_a_topic_is_a_config_error(topology: Topology) -> None:
    layout = ReplicationLayout(topology)
    with pytest.raises(ConfigError, match="no_such_dataset"):
        layout.topic("no_such_dataset")
    with pytest.raises(ConfigError):
        layout.partitions("no_such_dataset")
