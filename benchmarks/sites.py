"""Two provincial sites (docs/sites.md), measured end to end: how far apart the sites' lakehouses
are in normal operation, what the second site costs, how long lookups and the cities' publishing
take to carry on when site A is lost, and how fast site A catches up when it returns.

    ~/.cache/medshare/venv/bin/python benchmarks/sites.py --rounds 5 --rows 20000
    ~/.cache/medshare/venv/bin/python benchmarks/sites.py --rounds 2 --rows 2000 --outage-rounds 1

Everything runs on a two-site stack of the benchmark's own (tests/utils/sites.py: the cities'
MinIO; per site a MinIO and a broker of one stretched Kafka cluster; the witness controller; free
loopback ports, one temporary folder, deleted at the end). No process or folder of the user's
stack is touched; the user's MEDSHARE_* variables (but the cache and platform folders) are dropped
so none of them can point a process of this stack at the user's. Per site a replicator
(`medshare replicator --site`) and a sharing API (`medshare serve`, over the same small synthetic
provincial tables written into both sites), each its own process.

1. Replication lag A↔B. Three cities × two datasets (encounters, patients) commit `--rows` rows
   each per round (written with delta-rs, as their ingestion would) and publish (one in-process
   publisher a city, in parallel); `--rounds` rounds, `--pause` seconds apart. A unit is one
   (city, dataset, city version); it counts as published when its publisher has confirmed it
   (the publisher's progress callback moving on). A process a site polls that site's provincial
   tables every `--poll` seconds (`DeltaTable.update_incremental`, `transaction_version` of each
   city's app id) and notes when each unit first shows. Reported: median/p99/max of |t_A − t_B|
   and, per site, of t_site − t_published (negative when a site applied a unit before its
   publisher's confirming read came back).
2. What the second site costs, while both replicate the rounds: CPU seconds (utime+stime of each
   process and its children, from /proc/<pid>/stat, over the rounds) and peak/last RSS (VmRSS
   sampled every 0.5 s) of each site's MinIO, broker, replicator and API; the witness apart. Disk:
   site B's whole state folder (`Settings.for_site(B).state_dir`: its MinIO, broker, logs) vs
   site A's MinIO and Kafka data folders (site A's state folder is the stack's, which also holds
   B's and the witness's), after the rounds and at the end.
3. Failover (`--repeats` times): history lookups in a loop through `sharing_api.client.
   FailoverClient` (A first, then B); the cities commit one more round; every process of site A
   gets SIGKILL (replicator, API, MinIO, broker); the cities publish that round at once, in
   parallel, each trying again until it succeeds. Reported: seconds from the kill to the first
   lookup answered by B, the longest gap between answers, failed or non-200 lookups (must be 0);
   seconds from the kill until each city's publishing succeeded; until site B holds every unit.
4. Catch-up: while A is down the cities publish `--outage-rounds` rounds in all (the one above
   included); site A restarts on its old folders (`infra.stack.up(..., sites=[A])`, its
   replicator, its API). Reported: seconds from the restart until A's tables record every unit
   (the poller) and until `verify` finds no difference at A (`medshare verify --wait` as site A,
   its own process, started once A holds every unit — as `tests.utils.replication.wait_verified(
   sites=[A])` would, without holding up this process's threads; its calls and seconds are
   recorded: on a large lakehouse the check itself takes time), and the rows/s and
   units/s A applied from its replicator's start until it held every unit (that interval includes
   the replicator's own start; when it applied the first of them is recorded too).
   With `--repeats` > 1 parts 3 and 4 run again and the medians are reported too.

The run ends with `verify` over both sites (a difference fails the benchmark). Results go to
benchmarks/results/sites.json (`--out`); processes' logs and the APIs' folders stay under the
printed `logs` folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import multiprocessing.synchronize
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deltalake import DeltaTable
from kafka.admin import NewTopic

from benchmarks.machine import machine
from infra import process, stack
from infra.services import service_dirs, witness_spec
from lakehouse import kafka
from lakehouse.contracts import Contract, load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.replication.publisher import Publisher
from lakehouse.replication.verify import verify
from lakehouse.settings import Settings, get_settings
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
from lakehouse.topology import Topology, load_topology
from sharing_api.client import FailoverClient
from tests.utils.api import ApiServer
from tests.utils.province import Province
from tests.utils.replication import CITIES, curated_rows, hospitals, make_topics, write_city
from tests.utils.sites import (
    SITES,
    Lookups,
    TwoSites,
    known_at,
    patient_with_history,
    provincial_tables,
    stop,
    two_site_stack,
    until,
)

RESULTS = Path(__file__).parent / "results" / "sites.json"
DATASETS = ("encounters", "patients")
A, B = SITES
Unit = tuple[str, str, int]  # city, dataset, city version
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The user's MEDSHARE_* variables must not reach this stack's processes (a MEDSHARE_SITE or
# MEDSHARE_PEER_S3_ENDPOINTS would point them at the user's stack): only these survive.
KEPT_ENV = ("MEDSHARE_CACHE_DIR", "MEDSHARE_PLATFORM_DIR")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def quantiles(values: Iterable[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "p50_s": None, "p99_s": None, "max_s": None}
    return {
        "n": len(ordered),
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max_s": round(ordered[-1], 3),
    }


def median(values: Iterable[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


# -- what each site's provincial tables record --------------------------------------------------


# Bounded retries for the pollers' reads: a site that is down answers nothing for a while, and a
# read must fail fast (object_store's default retries for minutes) so the poll goes on.
POLL_OPTIONS = {"max_retries": "1", "retry_timeout": "2s", "timeout": "5s", "connect_timeout": "1s"}


def poll(
    uris: dict[str, str],
    options: dict[str, str],
    interval: float,
    out: multiprocessing.queues.Queue[tuple[str, str, int, float]],
    stop: multiprocessing.synchronize.Event,
) -> None:
    """A poller's loop, in a process of its own (no thread of the benchmark can delay its clock
    readings; CLOCK_MONOTONIC is the machine's): (city, dataset, version, time) whenever a city's
    `txn` version in a provincial table moves on; version -1: a failed read, -2: started."""
    tables: dict[str, DeltaTable] = {}
    last: dict[tuple[str, str], int] = {}
    out.put(("", "", -2, time.monotonic()))
    while not stop.is_set():
        for dataset, uri in uris.items():
            try:
                table = tables.get(dataset)
                if table is None:
                    table = tables[dataset] = DeltaTable(uri, storage_options=options)
                else:
                    table.update_incremental()
                now = time.monotonic()
                for city in CITIES:
                    version = table.transaction_version(ReplicationLayout.app_id(city, dataset))
                    if version is not None and version > last.get((city, dataset), -1):
                        last[city, dataset] = version
                        out.put((city, dataset, version, now))
            except Exception:  # not created yet, or the site is down: read it afresh next time
                tables.pop(dataset, None)
                out.put(("", dataset, -1, time.monotonic()))
        stop.wait(interval)


@dataclass
class Poller:
    """One site's provincial tables read every `interval` s by a process (`poll`); what it sees
    is appended to `seen` as (city, dataset, version, monotonic time)."""

    site: Settings
    layout: ReplicationLayout
    seen: list[tuple[str, str, int, float]]
    interval: float = 0.1
    errors: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    proc: multiprocessing.process.BaseProcess | None = None
    drainer: threading.Thread | None = None

    def start(self) -> Poller:
        context = multiprocessing.get_context("spawn")  # not a fork of a process with threads
        self.queue: multiprocessing.queues.Queue[tuple[str, str, int, float]] = context.Queue()
        self.stop = context.Event()
        options = delta_storage_options(self.site, site_credentials(self.site, PROVINCE_SITE)) | POLL_OPTIONS
        uris = {d: self.layout.province_table(d).uri for d in DATASETS}
        self.proc = context.Process(
            target=poll,
            args=(uris, options, self.interval, self.queue, self.stop),
            name=f"poll-{self.site.site_id}",
            daemon=True,
        )
        self.proc.start()
        self.drainer = threading.Thread(target=self.drain, name=f"drain-{self.site.site_id}", daemon=True)
        self.drainer.start()
        if not self.ready.wait(120):
            raise SystemExit(f"the poller of {self.site.site_id} did not start within 120 s")
        return self

    def take(self, item: tuple[str, str, int, float]) -> None:
        if item[2] == -2:
            self.ready.set()
        elif item[2] == -1:
            self.errors += 1
        else:
            self.seen.append(item)

    def drain(self) -> None:
        assert self.proc is not None
        while True:
            try:
                self.take(self.queue.get(timeout=0.5))
            except queue.Empty:
                if not self.proc.is_alive():
                    break
        while True:
            try:
                self.take(self.queue.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return

    def close(self) -> None:
        self.stop.set()
        if self.proc is not None:
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(10)
        if self.drainer is not None:
            self.drainer.join(30)


def first_seen(seen: Sequence[tuple[str, str, int, float]], unit: Unit) -> float | None:
    """When a site's table first recorded `unit` (its version or a later one of the same city)."""
    city, dataset, version = unit
    times = [t for c, d, v, t in seen if c == city and d == dataset and v >= version]
    return min(times) if times else None


def wait_seen(
    what: str, seen: Sequence[tuple[str, str, int, float]], units: Iterable[Unit], timeout: float
) -> float:
    """Until every unit shows in `seen`; the monotonic time the last one first showed."""
    wanted = list(units)
    deadline = time.monotonic() + timeout
    while True:
        times = [first_seen(seen, u) for u in wanted]
        if all(t is not None for t in times):
            return max((t for t in times if t is not None), default=time.monotonic())
        if time.monotonic() > deadline:
            missing = [u for u, t in zip(wanted, times, strict=True) if t is None]
            raise SystemExit(f"{what}: {len(missing)} unit(s) not applied in {timeout:.0f} s: {missing[:6]}")
        time.sleep(0.1)


# -- the cities -----------------------------------------------------------------------------------


class Retries(logging.Handler):
    """The publishers' own retries (`publishing <city> failed (…); retrying`), counted by city and
    printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_city: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("publishing ") and record.args:
            self.by_city[str(record.args[0])] += 1  # type: ignore[index]
        log(f"  {record.getMessage()}")


@dataclass
class Cities:
    """The three cities' commits and publishing; every unit, its rows, when it was published."""

    sites: TwoSites
    layout: ReplicationLayout
    contracts: dict[str, Contract]
    key: ProvinceKey
    rows: int
    units: dict[Unit, int] = field(default_factory=dict)  # rows of each unit
    published: dict[Unit, float] = field(default_factory=dict)
    salts: int = 0
    retries: Retries = field(default_factory=Retries)

    def __post_init__(self) -> None:
        logging.getLogger(Publisher.__module__).addHandler(self.retries)

    def commit_round(self) -> list[Unit]:
        """A new version of each city's tables, as its ingestion would commit them."""
        self.salts += 1
        made = []
        for n, city in enumerate(CITIES):
            for name in DATASETS:
                table = curated_rows(
                    self.contracts[name],
                    hospitals(self.layout.topology, city),
                    self.rows,
                    salt=f"{city}r{self.salts}",
                    seed=self.salts * 10 + n,
                )
                version = write_city(self.sites.settings, self.layout, city, self.contracts[name], table)
                made.append((city, name, version))
                self.units[city, name, version] = table.num_rows
        return made

    def publish_city(self, city: str, deadline: float) -> tuple[float, int]:
        """Publish what the city committed, trying again until it succeeds; (when it did, failed
        attempts: the publisher's own retries and ours)."""
        failures = 0
        retried = self.retries.by_city[city]
        current: list[str] = []

        def progress(label: str, done: int, total: int) -> None:
            # Called before each unit and once at the end: the one before it is then confirmed.
            now = time.monotonic()
            if current and label == current[0]:
                return  # the same unit tried again
            if current and current[0] != "published":
                dataset, _, version = current[0].rpartition(" v")
                self.published.setdefault((city, dataset, int(version)), now)
            current[:] = [label]

        while True:
            current.clear()
            publisher = Publisher(
                self.sites.settings, self.layout, city, self.contracts, self.key, progress=progress
            )
            try:
                publisher.run_once()
                break
            except Exception as exc:
                failures += 1
                if time.monotonic() > deadline:
                    raise SystemExit(f"publishing {city} still fails: {exc}") from exc
                log(f"  publishing {city} failed ({type(exc).__name__}: {exc}); again")
                time.sleep(1.0)
            finally:
                publisher.close()
        done = time.monotonic()
        # A unit whose confirmation no callback marked (the attempt after it failed): now.
        for unit in self.units:
            if unit[0] == city and unit not in self.published:
                self.published[unit] = done
        return done, failures + self.retries.by_city[city] - retried

    def publish_all(self, timeout: float = 600) -> dict[str, tuple[float, int]]:
        """Every city publishes at once (each its own publisher); {city: (done at, failures)}."""
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(len(CITIES), thread_name_prefix="publish") as pool:
            futures = {c: pool.submit(self.publish_city, c, deadline) for c in CITIES}
            return {c: f.result() for c, f in futures.items()}


# -- processes: CPU, memory, disk -------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children_of() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of the processes, with their waited-for children's (cutime+cstime)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLOCK_TICKS


def rss_mb(pids: Iterable[int]) -> float:
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total / 1024


@dataclass
class Sampler:
    """CPU and RSS of named processes (each with its children), sampled every `interval` s."""

    pids: dict[str, dict[str, int]]  # group (a site, the witness) -> process name -> pid
    interval: float = 0.5
    first: dict[tuple[str, str], float] = field(default_factory=dict)
    last: dict[tuple[str, str], float] = field(default_factory=dict)
    rss_peak: dict[tuple[str, str], float] = field(default_factory=dict)
    rss_last: dict[tuple[str, str], float] = field(default_factory=dict)
    samples: int = 0
    started: float = 0.0
    ended: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def sample(self) -> None:
        children = children_of()
        for group, named in self.pids.items():
            for name, pid in named.items():
                tree = descendants(pid, children)
                key = (group, name)
                cpu, rss = cpu_seconds(tree), rss_mb(tree)
                self.first.setdefault(key, cpu)
                self.last[key] = cpu
                self.rss_peak[key] = max(self.rss_peak.get(key, 0.0), rss)
                self.rss_last[key] = rss
        self.samples += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def start(self) -> Sampler:
        self.started = time.monotonic()
        self.sample()
        self.thread = threading.Thread(target=self.run, name="sampler", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
        self.sample()
        self.ended = time.monotonic()

    def report(self) -> dict[str, Any]:
        seconds = self.ended - self.started
        out: dict[str, Any] = {"window_s": round(seconds, 1), "samples": self.samples}
        for group, named in self.pids.items():
            procs: dict[str, dict[str, Any]] = {}
            for name in named:
                key = (group, name)
                cpu = self.last[key] - self.first[key]
                procs[name] = {
                    "cpu_s": round(cpu, 2),
                    "cores": round(cpu / seconds, 3) if seconds else None,
                    "rss_peak_mb": round(self.rss_peak[key]),
                    "rss_last_mb": round(self.rss_last[key]),
                }
            out[group] = {
                "cpu_s": round(sum(p["cpu_s"] for p in procs.values()), 2),
                "rss_peak_mb": round(sum(p["rss_peak_mb"] for p in procs.values())),
                "rss_last_mb": round(sum(p["rss_last_mb"] for p in procs.values())),
                "processes": procs,
            }
        return out


def disk_mb(*folders: Path) -> float:
    """Disk blocks used under the folders (sparse files count what they hold)."""
    total = 0
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue
    return round(total / 2**20, 1)


def disk(sites: TwoSites) -> dict[str, float]:
    a, b = sites.site(A), sites.site(B)
    minio_a, kafka_a = service_dirs(a, "minio")[0], service_dirs(a, "kafka")[0]
    minio_b, kafka_b = service_dirs(b, "minio")[0], service_dirs(b, "kafka")[0]
    return {
        "a_minio_mb": disk_mb(minio_a),
        "a_kafka_mb": disk_mb(kafka_a),
        "a_minio_kafka_mb": disk_mb(minio_a, kafka_a),
        "b_minio_mb": disk_mb(minio_b),
        "b_kafka_mb": disk_mb(kafka_b),
        "b_state_dir_mb": disk_mb(b.state_dir),
    }


def service_pids(sites: TwoSites, site: str) -> dict[str, int]:
    found = {}
    for spec in stack.site_specs(sites.settings, [site]):
        pid = process.running_pid(spec)
        if pid is not None:
            found[spec.name] = pid
    return found


# -- the run ----------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    sites: TwoSites
    topology: Topology
    logs: Path
    cities: Cities
    apis: dict[str, ApiServer]
    province: Province
    seen: dict[str, list[tuple[str, str, int, float]]] = field(default_factory=dict)
    pollers: dict[str, Poller] = field(default_factory=dict)
    replicators: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def layout(self) -> ReplicationLayout:
        return self.cities.layout

    def start_replicator(self, site: str) -> None:
        args = ("replicator", "--namespace", self.layout.namespace, "--metrics-port", "0", "--site", site)
        self.replicators[site] = self.sites.medshare(self.logs / f"replicator-{site}.log", *args)

    def start_poller(self, site: str) -> None:
        seen = self.seen.setdefault(site, [])
        self.pollers[site] = Poller(self.sites.site(site), self.layout, seen, self.args.poll).start()

    def verify(self, sites: Sequence[str], timeout: float = 600) -> dict[str, Any]:
        """`verify` in `sites` until it finds no difference (as tests.utils.replication.
        wait_verified, counting): how many calls it took and how long the clean one took."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            started = time.monotonic()
            result = verify(
                self.sites.settings,
                self.layout,
                self.cities.contracts,
                self.cities.key,
                cities=CITIES,
                datasets=DATASETS,
                sites=[self.sites.site(s) for s in sites],
            )
            if result.ok:
                return {"verify_calls": attempts, "clean_verify_s": round(time.monotonic() - started, 2)}
            if time.monotonic() > deadline:
                lines = "\n".join(map(str, result.differences[:20]))
                raise SystemExit(f"{', '.join(sites)} still differ(s) after {timeout:.0f} s:\n{lines}")
            time.sleep(1.0)

    def verify_at(self, site: str, timeout: float = 600) -> dict[str, Any]:
        """`medshare verify --wait` as site `site` (MEDSHARE_SITE): its own process, so that its
        reading holds nothing of this one up (the pollers' clocks, the API's start)."""
        args = ["verify", "--namespace", self.layout.namespace, "--wait", str(timeout)]
        args += [x for c in CITIES for x in ("--city", c)] + [x for d in DATASETS for x in ("--dataset", d)]
        out = self.logs / f"verify-{site}-{uuid.uuid4().hex[:4]}.log"
        started = time.monotonic()
        with out.open("wb") as sink:
            done = subprocess.run(
                [sys.executable, "-m", "medshare", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.sites.env, "MEDSHARE_SITE": site},
                timeout=timeout + 300,
                check=False,
            )
        text = out.read_text(errors="replace")
        if done.returncode != 0:
            raise SystemExit(f"verify at {site} failed ({done.returncode}):\n{text[-3000:]}")
        return {
            "verify_calls": text.count("comparing again") + 1,
            "verify_s": round(time.monotonic() - started, 2),
        }

    def lag(self) -> dict[str, Any]:
        """Part 1 (the sampler of part 2 runs meanwhile)."""
        pids = {
            site: {
                **service_pids(self.sites, site),
                f"replicator-{site}": self.replicators[site].pid,
                f"api-{site}": self.apis[site].process.pid,  # type: ignore[union-attr]
            }
            for site in SITES
        }
        witness = process.running_pid(witness_spec(self.sites.settings))
        if witness is not None:
            pids["witness"] = {"kafka-witness": witness}
        sampler = Sampler(pids).start()
        units: list[Unit] = []
        try:
            for n in range(self.args.rounds):
                started = time.monotonic()
                made = self.cities.commit_round()
                committed = time.monotonic() - started
                self.cities.publish_all()
                units += made
                published = time.monotonic() - started - committed
                log(
                    f"round {n + 1}/{self.args.rounds}: {len(made)} units of {self.args.rows:,} rows "
                    f"committed in {committed:.1f} s, published in {published:.1f} s"
                )
                if n + 1 < self.args.rounds:
                    time.sleep(self.args.pause)
            for site in SITES:
                wait_seen(f"site {site}", self.seen[site], units, 600)
        finally:
            sampler.close()
        log("both sites hold every unit; verifying both")
        checked = self.verify(SITES)
        a_b: list[float] = []
        to_site: dict[str, list[float]] = {s: [] for s in SITES}
        for unit in units:
            at = {s: first_seen(self.seen[s], unit) for s in SITES}
            at_a, at_b = at[A], at[B]
            if at_a is not None and at_b is not None:
                a_b.append(abs(at_a - at_b))
            for s in SITES:
                when = at[s]
                if when is not None:
                    to_site[s].append(when - self.cities.published[unit])
        return {
            "units": len(units),
            "rows": sum(self.cities.units[u] for u in units),
            "a_b_abs_diff": quantiles(a_b),
            "published_to_site": {s: quantiles(v) for s, v in to_site.items()},
            "cost": sampler.report(),
            "verify": checked,
        }

    def failover(self, token: str, patient: int) -> dict[str, Any]:
        """Parts 3 and 4, once."""
        api_a, api_b = self.apis[A], self.apis[B]
        load = Lookups(FailoverClient([api_a.url, api_b.url], token), self.province, patient).start()
        try:
            until("lookups answered by A", lambda: any(a.site == api_a.url for a in load.answers), 60)
            time.sleep(1.0)
            outage = self.cities.commit_round()  # committed before the loss, published after
            lost_at = time.monotonic()
            self.replicators[A].send_signal(signal.SIGKILL)
            api_a.kill()
            killed = self.sites.kill_site(A)
            self.replicators[A].wait(30)
            log(f"site A killed ({', '.join(killed)}, replicator, API); the cities publish")
            done = self.cities.publish_all()
            published_again = {c: round(t - lost_at, 2) for c, (t, _) in done.items()}
            publish_failures = sum(f for _, f in done.values())
            log(
                f"  the cities published again after {published_again} s ({publish_failures} failed attempts)"
            )
            for n in range(1, self.args.outage_rounds):
                time.sleep(self.args.pause)
                outage += self.cities.commit_round()
                self.cities.publish_all()
                log(f"  outage round {n + 1}/{self.args.outage_rounds} published")
            b_complete = wait_seen("site B during the outage", self.seen[B], outage, 600) - lost_at
            time.sleep(1.0)  # a few more lookups at B
        finally:
            load.close()
        before = [a.end for a in load.answers if a.end < lost_at and a.site == api_a.url]
        after = [a.end for a in load.answers if a.end > lost_at and a.site == api_b.url]
        ends = sorted(a.end for a in load.answers)
        first_b = min(after) - lost_at if after else None
        gap = next((b - a for a, b in itertools.pairwise(ends) if a <= lost_at < b), None)
        bad = [a.status for a in load.answers if a.status != 200]
        log(
            f"  lookups: first answer from B {first_b:.3f} s after the kill; {len(load.failures)} failed, "
            f"{len(bad)} not 200, of {len(load.answers)}"
            if first_b is not None
            else "  lookups: no answer from B after the kill"
        )

        # Part 4: site A returns on its old folders and catches up.
        back = time.monotonic()
        stack.up(self.sites.settings, self.topology, sites=[A])
        stack_up = time.monotonic() - back
        replicator_at = time.monotonic()
        self.start_replicator(A)
        api_ready: list[float] = []
        api_errors: list[BaseException] = []

        def start_api() -> None:  # its wait for readiness is not the catch-up's
            try:
                api_a.start()
                api_ready.append(time.monotonic() - back)
            except BaseException as exc:
                api_errors.append(exc)

        starting = threading.Thread(target=start_api, name="api-a", daemon=True)
        starting.start()
        caught_up_at = wait_seen("site A catching up", self.seen[A], list(self.cities.units), 900)
        caught_up = caught_up_at - back
        log(f"site A restarted in {stack_up:.1f} s; it holds every unit {caught_up:.1f} s after the restart")
        verified_by = self.verify_at(A)
        verified = time.monotonic() - back
        starting.join(180)
        if api_errors or not api_ready:
            raise SystemExit(f"site A's API did not come back: {api_errors[:1] or 'not within 180 s'}")
        # What A applied after it came back: every unit it first showed after the restart.
        applied = [u for u in self.cities.units if (first_seen(self.seen[A], u) or 0.0) > back]
        rows = sum(self.cities.units[u] for u in applied)
        applying = caught_up_at - replicator_at
        first_applied = min(
            (first_seen(self.seen[A], u) or caught_up_at for u in applied), default=caught_up_at
        )
        to_b = [
            t - self.cities.published[u] for u in outage if (t := first_seen(self.seen[B], u)) is not None
        ]
        return {
            "killed": killed,
            "lookups": len(load.answers),
            "lookups_answered_by_a_before": len(before),
            "lookups_failed": len(load.failures),
            "lookups_not_200": len(bad),
            "failure_samples": load.failures[:5],
            "first_answer_from_b_s": round(first_b, 3) if first_b is not None else None,
            "longest_gap_at_kill_s": round(gap, 3) if gap is not None else None,
            "failovers": load.client.failovers,
            "published_again_s": published_again,
            "published_again_max_s": max(published_again.values()),
            "publish_failed_attempts": publish_failures,  # retries included
            "outage_units": len(outage),
            "outage_rows": sum(self.cities.units[u] for u in outage),
            "b_complete_s": round(b_complete, 2),
            "published_to_b_during_outage": quantiles(to_b),
            "restart_stack_s": round(stack_up, 2),
            "restart_api_ready_s": round(api_ready[0], 2),
            "caught_up_s": round(caught_up, 2),
            "verified_s": round(verified, 2),
            **verified_by,
            "catch_up_units": len(applied),
            "catch_up_rows": rows,
            "catch_up_from_replicator_start_s": round(applying, 2),
            "catch_up_first_unit_after_replicator_start_s": round(first_applied - replicator_at, 2),
            "catch_up_rows_per_s": round(rows / applying) if applying > 0 else None,
            "catch_up_units_per_s": round(len(applied) / applying, 2) if applying > 0 else None,
        }


def summary(results: dict[str, Any]) -> str:
    lag, cost = results["lag"], results["lag"]["cost"]
    diff = lag["a_b_abs_diff"]
    out = [
        f"sites benchmark, {results['date']} ({results['machine']['cores']} cores, load at start "
        f"{results['machine']['loadavg_at_start']})",
        f"1. lag: {lag['units']} units, {lag['rows']:,} rows",
        f"   |t_A - t_B|            p50 {diff['p50_s']} s, p99 {diff['p99_s']} s, max {diff['max_s']} s",
    ]
    for site in SITES:
        q = lag["published_to_site"][site]
        out.append(f"   published → {site} p50 {q['p50_s']} s, p99 {q['p99_s']} s, max {q['max_s']} s")
    out.append(f"2. cost over {cost['window_s']} s of rounds (CPU s / peak RSS MB / last RSS MB):")
    for site in SITES:
        group = cost[site]
        procs = ", ".join(
            f"{name} {p['cpu_s']}/{p['rss_peak_mb']}/{p['rss_last_mb']}"
            for name, p in group["processes"].items()
        )
        out.append(
            f"   {site}: {group['cpu_s']} / {group['rss_peak_mb']} / {group['rss_last_mb']}  ({procs})"
        )
    if "witness" in cost:
        w = cost["witness"]
        out.append(f"   witness: {w['cpu_s']} / {w['rss_peak_mb']} / {w['rss_last_mb']}")
    for when in ("after_rounds", "at_end"):
        d = results["disk"][when]
        out.append(
            f"   disk {when}: A MinIO+Kafka {d['a_minio_kafka_mb']} MB (MinIO {d['a_minio_mb']}, Kafka "
            f"{d['a_kafka_mb']}); B state folder {d['b_state_dir_mb']} MB (MinIO {d['b_minio_mb']}, "
            f"Kafka {d['b_kafka_mb']})"
        )
    for n, run in enumerate(results["failover"]["runs"], 1):
        out += [
            f"3. failover, run {n}: first lookup answered by B {run['first_answer_from_b_s']} s after the "
            f"kill (longest gap {run['longest_gap_at_kill_s']} s; {run['lookups']} lookups, "
            f"{run['lookups_failed']} failed, {run['lookups_not_200']} not 200); cities published again "
            f"after {run['published_again_max_s']} s {run['published_again_s']}; B held every unit after "
            f"{run['b_complete_s']} s",
            f"4. catch-up, run {n}: {run['catch_up_units']} units, {run['catch_up_rows']:,} rows; "
            f"A restarted in {run['restart_stack_s']} s (API ready {run['restart_api_ready_s']} s), "
            f"held every unit {run['caught_up_s']} s and "
            f"verified clean {run['verified_s']} s after the restart; {run['catch_up_rows_per_s']} rows/s, "
            f"{run['catch_up_units_per_s']} units/s from its replicator's start (first unit after "
            f"{run['catch_up_first_unit_after_replicator_start_s']} s; `medshare verify` "
            f"{run['verify_s']} s, {run['verify_calls']} comparison(s))",
        ]
    if len(results["failover"]["runs"]) > 1:
        out.append(f"   medians: {json.dumps(results['failover']['median'])}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of commits in normal operation")
    parser.add_argument("--rows", type=int, default=20_000, help="rows a city commits per dataset and round")
    parser.add_argument("--outage-rounds", type=int, default=2, help="rounds published while A is down (≥ 1)")
    parser.add_argument("--repeats", type=int, default=1, help="times site A is killed and restarted")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls of a site's tables")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rounds < 1 or args.outage_rounds < 1 or args.repeats < 1:
        parser.error("--rounds, --outage-rounds and --repeats must be at least 1")

    for name in [n for n in os.environ if n.startswith("MEDSHARE_") and n not in KEPT_ENV]:
        del os.environ[name]
    user = get_settings()  # the cache and platform folders only
    topology = load_topology(user.platform_dir)
    contracts = load_contracts(user.platform_dir)
    logs = Path(tempfile.mkdtemp(prefix="medshare-bench-sites-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "params": {**vars(args), "out": str(args.out)},
        "logs": str(logs),
    }
    log(f"starting a private two-site stack; logs in {logs}")
    starting = time.monotonic()
    with two_site_stack(topology, user.cache_dir) as sites:
        results["stack_up_s"] = round(time.monotonic() - starting, 1)
        key = ProvinceKey.from_settings(sites.settings)
        layout = ReplicationLayout(topology, f"bench{uuid.uuid4().hex[:6]}")
        make_topics(sites.settings, layout)
        province = provincial_tables(sites, topology, "bench-sites-api")
        topic = f"bench{uuid.uuid4().hex[:6]}.operations"
        admin = kafka.admin(sites.settings)
        try:
            admin.create_topics([NewTopic(topic, 1, len(SITES), topic_configs={"cleanup.policy": "compact"})])
        finally:
            admin.close()
        audit = f"s3://{topology.province.buckets.audit}/bench-sites-{uuid.uuid4().hex[:8]}"
        apis = {
            s: sites.api(s, logs / f"api-{s}", tables_root=province.root, audit_table=audit, topic=topic)
            for s in SITES
        }
        cities = Cities(sites, layout, contracts, key, args.rows)
        bench = Bench(args, sites, topology, logs, cities, apis, province)
        try:
            for server in apis.values():
                server.start()
            for site in SITES:
                bench.start_replicator(site)
                bench.start_poller(site)
            log(f"stack, replicators and APIs up; {args.rounds} rounds of {args.rows:,} rows a unit")
            results["lag"] = bench.lag()
            results["disk"] = {"after_rounds": disk(sites)}

            patient, hospital = patient_with_history(apis[A], province)
            token = apis[A].issue(hospital)
            until("A's credential applied at B", lambda: known_at(apis[B], token), 60)
            runs = []
            for n in range(args.repeats):
                log(f"failover {n + 1}/{args.repeats}")
                runs.append(bench.failover(token, patient))
            log("verifying both sites")
            results["final_verify"] = bench.verify(SITES)
            results["disk"]["at_end"] = disk(sites)
            numeric = [k for k, v in runs[0].items() if type(v) in (int, float)]
            results["failover"] = {
                "runs": runs,
                "median": {k: median(r[k] for r in runs) for k in numeric},
                "any_lookup_failed": any(r["lookups_failed"] or r["lookups_not_200"] for r in runs),
            }
            results["poll_errors"] = {s: p.errors for s, p in bench.pollers.items()}
        finally:
            for poller in bench.pollers.values():
                poller.close()
            for proc in bench.replicators.values():
                stop(proc)
            for server in apis.values():
                server.stop()
    text = summary(results)
    print(text, flush=True)
    results["summary"] = text.splitlines()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
