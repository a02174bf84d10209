"""Where replication reads and writes: tables, topics, consumer group, transactional ids.

A namespace (empty in production) prefixes every one of them, so tests and benchmarks run beside
the real platform without touching its tables or topics.
"""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.errors import ConfigError
from lakehouse.settings import Settings
from lakehouse.storage import s3_uri
from lakehouse.topology import Topology

PROGRESS_DATASET = "replication-progress"
CITY = "city"
HOSPITAL = "hospital_id"
MONTH = "month"
# The provincial tables' partitioning: a city's months read alone (analytics, a city's part of
# the API's read model). Not by hospital: 18 cities × 140+ hospitals × months made tables of
# thousands of tiny files; a unit replaces its hospitals' rows inside a (city, month) by predicate.
PROVINCE_PARTITIONS = (CITY, MONTH)


@dataclass(frozen=True)
class TableLocation:
    bucket: str
    path: str

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.path)

    @property
    def log_prefix(self) -> str:
        return f"{self.path}/_delta_log/"


@dataclass(frozen=True)
class ReplicationLayout:
    topology: Topology
    namespace: str = ""

    @property
    def _root(self) -> str:
        return f"{self.namespace}/" if self.namespace else ""

    def _name(self, base: str) -> str:
        return f"{self.namespace}.{base}" if self.namespace else base

    def city_table(self, city: str, dataset: str) -> TableLocation:
        return TableLocation(self.topology.city(city).buckets.curated, f"{self._root}{dataset}")

    def province_table(self, dataset: str) -> TableLocation:
        return TableLocation(self.topology.province.buckets.lakehouse, f"{self._root}{dataset}")

    def dead_letter_table(self) -> TableLocation:
        bucket = self.topology.province.buckets.lakehouse
        return TableLocation(bucket, f"{self._root}_replication/dead_letters")

    def topic(self, dataset: str) -> str:
        for t in self.topology.kafka.topics:
            if t.dataset == dataset:
                return self._name(t.name)
        raise ConfigError(f"no Kafka topic for dataset {dataset!r} in the topology's kafka.topics")

    @property
    def progress_topic(self) -> str:
        return self.topic(PROGRESS_DATASET)

    def partitions(self, dataset: str) -> int:
        for t in self.topology.kafka.topics:
            if t.dataset == dataset:
                return self.topology.kafka.partitions_of(t)
        raise ConfigError(f"no Kafka topic for dataset {dataset!r} in the topology's kafka.topics")

    def partition_of(self, city: str, dataset: str) -> int:
        """One partition per city (while there are enough): its messages stay in order, and its
        open transaction never holds back another city's messages from read_committed readers."""
        index = [c.id for c in self.topology.cities].index(self.topology.city(city).id)
        return index % self.partitions(dataset)

    @property
    def group_id(self) -> str:
        return self._name("medshare-replicator")

    def site_group(self, settings: Settings) -> str:
        """The replicators' consumer group at this process's site: with two provincial sites each
        site's replicators read every unit on their own, so each site has a group."""
        return f"{self.group_id}-{settings.site_id}" if settings.multi_site else self.group_id

    def transactional_id(self, city: str) -> str:
        return self._name(f"medshare-publisher-{city}")

    @staticmethod
    def app_id(city: str, dataset: str) -> str:
        """The Delta `txn` app id recording which version of (city, dataset) a table reflects."""
        return f"medshare-replication/{city}/{dataset}"
