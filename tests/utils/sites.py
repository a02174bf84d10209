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
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx

from infra import process, stack
from infra.provision import provision_storage
from infra.services import minio_spec
from lakehouse.contracts import load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings, load_settings
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology
from sharing_api.client import FailoverClient
from sharing_api.identities import parse_token
from tests.utils.api import ApiServer
from tests.utils.province import Province, build_province, write_province

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


def provincial_tables(sites: TwoSites, topology: Topology, prefix: str) -> Province:
    """The same small provincial lakehouse in every site's store (under `prefix-<random>` of the
    lakehouse bucket), for the sites' APIs to serve."""
    contracts = load_contracts(sites.settings.platform_dir)
    key = ProvinceKey.from_settings(sites.settings)
    data = build_province(topology, contracts, key, patients=300, encounters=2400, seed=5)
    root = f"s3://{topology.province.buckets.lakehouse}/{prefix}-{uuid.uuid4().hex[:8]}"
    for site in SITES:
        settings = sites.site(site)
        write_province(data, root, delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE)))
    return data


# -- lookups against both sites' APIs (the tests and benchmarks/sites.py) ------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def until(what: str, ok: Callable[[], bool], timeout: float) -> float:
    """Seconds until `ok()` holds; AssertionError after `timeout`."""
    started = time.monotonic()
    while not ok():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def history(client: httpx.Client | FailoverClient, province: Province, patient: int) -> httpx.Response:
    """A hospital's history lookup of one patient, for its own rows (purpose operations)."""
    return client.get(
        "/v1/patients/history",
        params={"purpose": "operations", "limit": 5},
        headers={"X-Resident-Id": province.resident_ids[patient]},
    )


def patient_with_history(server: ApiServer, province: Province) -> tuple[int, str]:
    """A patient whose home hospital sees rows of theirs, and that hospital."""
    for patient, home in enumerate(province.home[:100]):
        with server.client(server.issue(str(home))) as c:
            response = history(c, province, patient)
        if response.status_code == 200 and response.json()["entries"]:
            return patient, str(home)
    raise AssertionError("no patient with rows at their home hospital among the first 100")


def known_at(server: ApiServer, *tokens: str) -> bool:
    """Whether the server's database holds these credentials (read directly: a request would be
    audited)."""
    ids = [parse_token(t)[0] for t in tokens]  # type: ignore[index]
    with sqlite3.connect(server.api_settings().db_path(server.settings)) as conn:
        marks = ",".join("?" * len(ids))
        found = conn.execute(f"SELECT COUNT(*) FROM credentials WHERE token_id IN ({marks})", ids).fetchone()
    return bool(found[0] == len(ids))


class Answer(NamedTuple):
    start: float
    end: float
    status: int
    site: str  # the URL of the site that answered
    request_id: str


@dataclass
class Lookups:
    """History lookups in a loop through the failover client, on a thread."""

    client: FailoverClient
    province: Province
    patient: int
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                response = history(self.client, self.province, self.patient)
            except Exception as exc:  # counted: after the failover no lookup may fail
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            rid = response.headers.get("x-request-id", "")
            self.answers.append(
                Answer(started, time.monotonic(), response.status_code, self.client.site, rid)
            )
            time.sleep(0.05)

    def start(self) -> Lookups:
        self.thread = threading.Thread(target=self.run, name="lookups", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)
        self.client.close()
