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


def _kafka_properties(settings: Settings, data: Path) -> str:
    host, port = settings.kafka_host_port
    ctl = f"{host}:{settings.kafka_controller_port}"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={ctl}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{ctl}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data / 'log'}",
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


def prepare_kafka(settings: Settings) -> Path:
    """Write server.properties and format the KRaft storage once; returns the config path."""
    data, _, _ = service_dirs(settings, "kafka")
    data.mkdir(parents=True, exist_ok=True)
    config = data / "server.properties"
    config.write_text(_kafka_properties(settings, data))
    if not (data / "log" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        argv = kafka_java(
            settings,
            "kafka.tools.StorageTool",
            "format",
            # One argument with '=': a base64 id starts with '-' one time in 64, and as a separate
            # argument argparse then takes it for an option ("--cluster-id: expected one argument").
            f"--cluster-id={cluster_id}",
            "-c",
            str(config),
            "--standalone",
        )
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"formatting Kafka storage in {data} failed:\n{proc.stdout}{proc.stderr}")
    return config


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
