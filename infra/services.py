"""The two long-running services of the stack, MinIO and a Kafka broker in KRaft combined mode,
described as ServiceSpecs rooted in the state folder."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from infra.install import INFRA_DIR, minio_binary
from infra.process import ServiceError, ServiceSpec
from lakehouse.settings import Settings

KAFKA_HEAP = "-Xmx768m"


def service_dirs(settings: Settings, name: str) -> tuple[Path, Path, Path]:
    """(data folder, run folder for pid files, log file) of one service."""
    state = settings.state_dir
    return state / name, state / "run", state / "logs" / f"{name}.log"


def minio_spec(settings: Settings) -> ServiceSpec:
    data, run, log = service_dirs(settings, "minio")
    host, port = settings.s3_host.rsplit(":", 1)
    url = f"{settings.s3_endpoint}/minio/health/live"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return ServiceSpec(
        name="minio",
        argv=(
            str(minio_binary(settings)),
            "server",
            str(data / "data"),
            "--address",
            settings.s3_host,
            "--console-address",
            f"{host}:{settings.s3_console_port}",
            "--quiet",
        ),
        env={
            "MINIO_ROOT_USER": settings.s3_root_user,
            "MINIO_ROOT_PASSWORD": settings.root_password.get_secret_value(),
            "MINIO_REGION": settings.s3_region,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
            # The scanner walks every object to heal and apply lifecycle rules; on this one-drive
            # stack there is nothing to heal, and at its default speed it kept 0.15-0.25 of the 2
            # cores busy under the benchmarks' tens of thousands of objects.
            "MINIO_SCANNER_SPEED": "slowest",
        },
        host=host,
        ports=(int(port), settings.s3_console_port),
        run_dir=run,
        log_file=log,
        marker=str(data),
        healthy=healthy,
        start_timeout=60,
    )


# Two sites: how soon the controller fences a broker that stopped heartbeating (Kafka's default
# 9 s). Producers and the replicators wait for it before leaders move to the other site;
# benchmarks/sites_kafka.py measured failover 4.7-6.6 s with 3 s against 10.8 s with 9 s.
BROKER_SESSION_MS = 3000


def node_id(settings: Settings) -> int:
    """The KRaft node id of this site's broker+controller (1, 2, ...; the witness is last)."""
    return settings.site_ids.index(settings.site_id) + 1


def quorum_voters(settings: Settings) -> str:
    """Every controller of a two-site cluster: each site's, then the witness's."""
    host, _ = settings.kafka_host_port
    index = settings.site_ids.index(settings.site_id)
    base = settings.kafka_controller_port - index * settings.site_port_step
    ports = [base + i * settings.site_port_step for i in range(len(settings.site_ids) + 1)]
    return ",".join(f"{n}@{host}:{port}" for n, port in enumerate(ports, start=1))


def _kafka_properties(settings: Settings, data: Path, rack: str | None = None) -> str:
    host, port = settings.kafka_host_port
    ctl = f"{host}:{settings.kafka_controller_port}"
    common = [
        f"log.dirs={data / 'log'}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    ]
    if not settings.multi_site:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={ctl}",
                f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{ctl}",
                f"advertised.listeners=PLAINTEXT://{host}:{port}",
                "inter.broker.listener.name=PLAINTEXT",
                *common,
                "num.partitions=3",
                "auto.create.topics.enable=false",
                # A single broker: every internal topic has one replica.
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "",
            ]
        )
    # Two sites: one cluster, a replica of every partition in each site's rack (docs/sites.md).
    # min.insync.replicas=1 keeps a site publishing while the other is down; with both up the ISR
    # holds both, so what `acks=all` acknowledged is in both sites.
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node_id(settings)}",
            f"controller.quorum.voters={quorum_voters(settings)}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{ctl}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            *common,
            f"broker.rack={rack or settings.site_id}",
            f"broker.session.timeout.ms={BROKER_SESSION_MS}",
            "broker.heartbeat.interval.ms=1000",
            "num.partitions=3",
            "default.replication.factor=2",
            "min.insync.replicas=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=2",
            "transaction.state.log.replication.factor=2",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=2",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # A replica that fell out of sync never leads: it could lack acknowledged messages.
            "unclean.leader.election.enable=false",
            "log.retention.hours=168",
            "",
        ]
    )


def _witness_properties(settings: Settings, data: Path) -> str:
    """The third voter of a two-site quorum: a controller only, outside both sites (a two-voter
    quorum cannot elect a leader once either voter is gone)."""
    host, _ = settings.kafka_host_port
    return "\n".join(
        [
            "process.roles=controller",
            f"node.id={len(settings.site_ids) + 1}",
            f"controller.quorum.voters={quorum_voters(settings)}",
            f"listeners=CONTROLLER://{host}:{settings.witness_controller_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT",
            f"log.dirs={data / 'log'}",
            f"broker.session.timeout.ms={BROKER_SESSION_MS}",
            "",
        ]
    )


def kafka_java(settings: Settings, main: str, *args: str) -> tuple[str, ...]:
    """The java command line running a Kafka main class from the cached jars (also the two-site spike's)."""
    classpath = f"{settings.kafka_jars_dir}/*"
    log4j = INFRA_DIR / "kafka" / "log4j2.properties"
    return (
        "java",
        KAFKA_HEAP,
        "-Xms128m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        classpath,
        main,
        *args,
    )


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _format(settings: Settings, config: Path, data: Path, cluster_id: str, layout: str) -> None:
    """Format the KRaft storage once, for `layout` (one node, or the voters of two sites)."""
    marker = data / "layout"
    if (data / "log" / "meta.properties").exists():
        # Stacks made before two sites existed were all one node.
        formatted = marker.read_text().strip() if marker.exists() else "standalone"
        if formatted != layout:
            raise ServiceError(
                f"the Kafka storage in {data} was formatted for {formatted!r}, not {layout!r} "
                "(MEDSHARE_SITES changed?): set MEDSHARE_SITES back, or `medshare down` and "
                "`medshare clean-state` to start afresh (deletes every bucket and topic)"
            )
        return
    argv = kafka_java(
        settings,
        "kafka.tools.StorageTool",
        "format",
        # One argument with '=': a base64 id starts with '-' one time in 64, and as a separate
        # argument argparse then takes it for an option ("--cluster-id: expected one argument").
        f"--cluster-id={cluster_id}",
        "-c",
        str(config),
        *(["--standalone"] if layout == "standalone" else []),
    )
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServiceError(f"formatting Kafka storage in {data} failed:\n{proc.stdout}{proc.stderr}")
    marker.write_text(layout + "\n")


def _layout(settings: Settings) -> str:
    return f"voters {quorum_voters(settings)}" if settings.multi_site else "standalone"


def prepare_kafka(settings: Settings, cluster_id: str | None = None, rack: str | None = None) -> Path:
    """Write server.properties and format the KRaft storage once; returns the config path.
    A site of a two-site stack needs the cluster's id (every node formatted with the same)."""
    data, _, _ = service_dirs(settings, "kafka")
    data.mkdir(parents=True, exist_ok=True)
    config = data / "server.properties"
    config.write_text(_kafka_properties(settings, data, rack))
    _format(settings, config, data, cluster_id or new_cluster_id(), _layout(settings))
    return config


def prepare_witness(settings: Settings, cluster_id: str) -> Path:
    data, _, _ = service_dirs(settings, "kafka-witness")
    data.mkdir(parents=True, exist_ok=True)
    config = data / "server.properties"
    config.write_text(_witness_properties(settings, data))
    _format(settings, config, data, cluster_id, _layout(settings))
    return config


def witness_spec(settings: Settings) -> ServiceSpec:
    data, run, log = service_dirs(settings, "kafka-witness")
    host, _ = settings.kafka_host_port
    port = settings.witness_controller_port

    def healthy() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return ServiceSpec(
        name="kafka-witness",
        argv=kafka_java(settings, "kafka.Kafka", str(data / "server.properties")),
        env={"LOG_DIR": str(log.parent), "JAVA_TOOL_OPTIONS": os.environ.get("JAVA_TOOL_OPTIONS", "")},
        host=host,
        ports=(port,),
        run_dir=run,
        log_file=log,
        marker=str(data),
        healthy=healthy,
        start_timeout=90,
    )


def kafka_spec(settings: Settings) -> ServiceSpec:
    data, run, log = service_dirs(settings, "kafka")
    host, port = settings.kafka_host_port

    def healthy() -> bool:
        # The broker answers an ApiVersions request only once it has joined its own quorum.
        try:
            with socket.create_connection((host, port), timeout=1) as sock:
                header = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
                header += (-1).to_bytes(2, "big", signed=True)
                sock.sendall(len(header).to_bytes(4, "big") + header)
                size = int.from_bytes(sock.recv(4), "big")
                return size > 0
        except OSError:
            return False

    return ServiceSpec(
        name="kafka",
        argv=kafka_java(settings, "kafka.Kafka", str(data / "server.properties")),
        env={
            "LOG_DIR": str(log.parent),
            "JAVA_TOOL_OPTIONS": os.environ.get("JAVA_TOOL_OPTIONS", ""),
        },
        host=host,
        ports=(port, settings.kafka_controller_port),
        run_dir=run,
        log_file=log,
        marker=str(data),
        healthy=healthy,
        start_timeout=90,
    )
