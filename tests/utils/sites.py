"""A two-site stack of a test's own (docs/sites.md): the cities' object store, and two provincial
sites — each a MinIO and a broker+controller of one stretched Kafka cluster — plus the witness
controller, on free loopback ports under one temporary folder. Everything it started is stopped
and the folder deleted when the block ends."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra import process, stack
from infra.provision import provision_storage
from infra.services import minio_spec
from lakehouse.settings import Settings, load_settings
from lakehouse.topology import Topology
from tests.utils.api import ApiServer

SITES = ("henan-dc-a", "henan-dc-b")
STEP = 10


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block() -> int:
    """A base port whose whole two-site block is free: 4 ports a site STEP apart, the witness."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000, 2 * STEP)
        wanted = [base + i * STEP + j for i in range(len(SITES)) for j in range(4)]
        wanted += [base + 3 + len(SITES) * STEP, base + 6, base + 7]
        if all(map(_free, wanted)):
            return base
    raise RuntimeError("no free block of loopback ports for a two-site stack")


@dataclass(frozen=True)
class TwoSites:
    settings: Settings  # the stack's own: the cities' view (both brokers, the cities' store)
    cities: Settings  # the cities' object store as a one-store stack (its MinIO's settings)
    env: dict[str, str]  # what a `medshare` process of this stack needs in its environment

    def site(self, site: str) -> Settings:
        return self.settings.for_site(site)

    def api(self, site: str, workdir: Path, *, tables_root: str, audit_table: str, topic: str) -> ApiServer:
        """The sharing API of one site (not started): its store, broker and state folder, its own
        grants file, the operations topic `topic`."""
        env = self.settings.for_site(site).site_environment() | {"MEDSHARE_API_OPERATIONS_TOPIC": topic}
        return ApiServer(
            settings=self.settings.for_site(site),
            workdir=workdir,
            tables_root=tables_root,
            audit_table=audit_table,
            instance=f"api-{site}",
            extra_env=env,
        )

    def medshare(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """`medshare <args>` on this stack, as its own process, output appended to `log`."""
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "medshare", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def kill_site(self, site: str) -> list[str]:
        """SIGKILL every service process of one site (its MinIO and broker); the names killed."""
        killed = []
        for spec in stack.site_specs(self.settings, [site]):
            pid = process.running_pid(spec)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(spec.name)
        return killed


@contextmanager
def two_site_stack(topology: Topology, cache_dir: Path) -> Iterator[TwoSites]:
    root = Path(tempfile.mkdtemp(prefix="medshare-two-sites-"))
    base = _port_block()
    env = {
        "MEDSHARE_STATE_DIR": str(root / "stack"),
        "MEDSHARE_CACHE_DIR": str(cache_dir),
        "MEDSHARE_SITES": ",".join(SITES),
        "MEDSHARE_SITE_PORT_STEP": str(STEP),
        "MEDSHARE_S3_ENDPOINT": f"http://127.0.0.1:{base}",
        "MEDSHARE_S3_CONSOLE_PORT": str(base + 1),
        "MEDSHARE_KAFKA_BOOTSTRAP": f"127.0.0.1:{base + 2}",
        "MEDSHARE_KAFKA_CONTROLLER_PORT": str(base + 3),
        "MEDSHARE_CITIES_S3_ENDPOINT": f"http://127.0.0.1:{base + 6}",
    }
    settings = load_settings(
        state_dir=root / "stack",
        cache_dir=cache_dir,
        sites=",".join(SITES),
        site_port_step=STEP,
        s3_endpoint=f"http://127.0.0.1:{base}",
        s3_console_port=base + 1,
        kafka_bootstrap=f"127.0.0.1:{base + 2}",
        kafka_controller_port=base + 3,
        cities_s3_endpoint=f"http://127.0.0.1:{base + 6}",
    )
    cities = load_settings(
        state_dir=root / "cities",
        cache_dir=cache_dir,
        secrets_dir=settings.site_secrets_dir,
        s3_endpoint=f"http://127.0.0.1:{base + 6}",
        s3_console_port=base + 7,
    )
    cities_store = minio_spec(cities)
    try:
        process.start(cities_store)
        stack.up(settings, topology)
        provision_storage(settings, topology)  # the cities' buckets, in their own store
        yield TwoSites(settings=settings, cities=cities, env=env)
    finally:
        stack.down(settings)
        process.stop(cities_store)
        shutil.rmtree(root, ignore_errors=True)
