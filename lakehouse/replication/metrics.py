"""The replicator's metrics, in the Prometheus text format (served on /metrics when asked)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

# Seconds from the city's commit to the provincial commit.
LAG_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)


class ReplicationMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("city", "dataset")
        self.rows = Counter(
            "medshare_replication_rows_applied",
            "Rows written to provincial tables.",
            labels,
            registry=self.registry,
        )
        self.messages = Counter(
            "medshare_replication_messages_applied",
            "Kafka messages applied to provincial tables.",
            labels,
            registry=self.registry,
        )
        self.units = Counter(
            "medshare_replication_units_applied",
            "City versions applied (one provincial commit each).",
            labels,
            registry=self.registry,
        )
        self.duplicates = Counter(
            "medshare_replication_units_skipped",
            "City versions received again and skipped: the provincial table already reflects them.",
            labels,
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "medshare_replication_dead_letters",
            "Messages written to the dead-letter table.",
            ("reason",),
            registry=self.registry,
        )
        self.retries = Counter(
            "medshare_replication_apply_retries",
            "Provincial commits retried after a storage or commit failure.",
            labels,
            registry=self.registry,
        )
        self.lag = Gauge(
            "medshare_replication_lag_seconds",
            "Seconds from the city commit to the provincial commit, for the last version applied.",
            labels,
            registry=self.registry,
        )
        self.lag_histogram = Histogram(
            "medshare_replication_commit_lag_seconds",
            "Seconds from the city commit to the provincial commit.",
            labels,
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.applied_version = Gauge(
            "medshare_replication_applied_version",
            "The city Delta version the provincial table reflects.",
            labels,
            registry=self.registry,
        )

        self.compactions = Counter(
            "medshare_replication_compactions",
            "Provincial (city, month) partitions rewritten into few files clustered by person_key.",
            ("dataset",),
            registry=self.registry,
        )
        self.restarted = Counter(
            "medshare_replication_units_restarted",
            "Half-received units dropped by a consumer-group rebalance; read again from their first message.",
            labels,
            registry=self.registry,
        )
        # Whether the replicator is making progress (exported by lakehouse.replication.health).
        self.stalled = Gauge(
            "medshare_replication_stalled",
            "1 while a retry, a failing poll or a half-received unit has lasted over a minute.",
            registry=self.registry,
        )
        self.failing_seconds = Gauge(
            "medshare_replication_failing_seconds",
            "How long the current retry of an apply or poll has been failing; 0 when none is.",
            registry=self.registry,
        )
        self.pending_units = Gauge(
            "medshare_replication_pending_units",
            "Units received in part or being applied.",
            registry=self.registry,
        )
        self.assigned_partitions = Gauge(
            "medshare_replication_assigned_partitions",
            "Topic partitions this replicator holds in its consumer group.",
            registry=self.registry,
        )
        self.last_progress = Gauge(
            "medshare_replication_last_progress_timestamp_seconds",
            "When this replicator last finished a unit (applied or skipped), or started.",
            registry=self.registry,
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode("utf-8")

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics on a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
