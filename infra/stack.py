"""`up`, `down` and `status` of the whole development stack."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from infra import install, process
from infra.provision import provision_storage, provision_topics
from infra.services import kafka_spec, minio_spec, prepare_kafka
from lakehouse.settings import Settings
from lakehouse.topology import Topology

Report = Callable[[str], None]


def specs(settings: Settings) -> list[process.ServiceSpec]:
    """In start order; stopped in reverse."""
    return [minio_spec(settings), kafka_spec(settings)]


def up(settings: Settings, topology: Topology, report: Report = lambda _: None) -> list[str]:
    """Install what is missing, start what is not running, provision; returns services started."""
    install.ensure_all(settings, report)
    started = []
    for spec in specs(settings):
        if spec.name == "kafka":
            prepare_kafka(settings)
        report(f"starting {spec.name}")
        if process.start(spec):
            started.append(spec.name)
    report("creating buckets, site users and policies")
    provision_storage(settings, topology)
    report("creating Kafka topics")
    provision_topics(settings, topology)
    return started


def down(settings: Settings) -> list[str]:
    """Stop only the processes this project started (from their pid files)."""
    return [spec.name for spec in reversed(specs(settings)) if process.stop(spec)]


def status(settings: Settings) -> list[process.ServiceStatus]:
    return [process.status(spec) for spec in specs(settings)]


def is_up(settings: Settings) -> bool:
    return all(s.healthy for s in status(settings))


def clean_state(settings: Settings) -> None:
    """Delete all service data (buckets, topics); refuses while a service runs."""
    if any(s.pid is not None for s in status(settings)):
        raise process.ServiceError("stop the stack first (`medshare down`)")
    shutil.rmtree(settings.state_dir, ignore_errors=True)
