"""Two provincial sites (docs/sites.md): every city's data reaches both sites' lakehouses exactly
once each; when every process of one site is killed, the cities keep publishing, the other site
loses nothing, and the killed site catches up by itself when it returns.

On a two-site stack of the test's own (tests/utils/sites.py): the cities' object store, two sites
(a MinIO and a broker each, one Kafka cluster with a replica of every partition in each site),
the witness controller, and a replicator per site as its own `medshare replicator --site` process.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import stack
from lakehouse.contracts import Contract
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from tests.utils.replication import (
    CITIES,
    assert_province_holds_the_cities,
    curated_rows,
    hospitals,
    make_topics,
    publish,
    wait_verified,
    write_city,
)
from tests.utils.sites import SITES, TwoSites, two_site_stack

DATASETS = ("encounters", "patients")


@pytest.fixture(scope="module")
def sites(settings: Settings, topology: Topology) -> Iterator[TwoSites]:
    with two_site_stack(topology, settings.cache_dir) as two:
        yield two


def commit_round(
    sites: TwoSites, layout: ReplicationLayout, contracts: dict[str, Contract], salt: str
) -> None:
    """A new version of each city's tables (as its ingestion would commit), then published."""
    for n, city in enumerate(CITIES):
        for name in DATASETS:
            rows = curated_rows(
                contracts[name], hospitals(layout.topology, city), 1500, salt=f"{city}{salt}", seed=n
            )
            write_city(sites.settings, layout, city, contracts[name], rows)


def publish_all(
    sites: TwoSites, layout: ReplicationLayout, contracts: dict[str, Contract], key: ProvinceKey
) -> None:
    for city in CITIES:
        publish(sites.settings, layout, city, contracts, key)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_a_site_killed_loses_nothing_and_catches_up_by_itself(
    sites: TwoSites,
    topology: Topology,
    contracts: dict[str, Contract],
    key: ProvinceKey,
    unique: str,
    tmp_path: Path,
) -> None:
    a, b = (sites.site(s) for s in SITES)
    layout = ReplicationLayout(topology, f"t{unique}")
    make_topics(sites.settings, layout)
    args = ("replicator", "--namespace", layout.namespace, "--metrics-port", "0", "--site")
    logs = {s: tmp_path / f"replicator-{s}.log" for s in SITES}
    replicators = {s: sites.medshare(logs[s], *args, s) for s in SITES}
    try:
        started = time.monotonic()
        commit_round(sites, layout, contracts, "r1")
        publish_all(sites, layout, contracts, key)
        wait_verified(sites.settings, layout, contracts, key, sites=[a, b], datasets=DATASETS, timeout=180)
        both_after = time.monotonic() - started

        # Committed by the cities and published just before the failure; applied nowhere yet, or
        # in one site only — either way it must be in both in the end.
        commit_round(sites, layout, contracts, "r2")
        publish_all(sites, layout, contracts, key)
        replicators[SITES[0]].send_signal(signal.SIGKILL)
        killed = sites.kill_site(SITES[0])
        assert sorted(killed) == [f"kafka-{SITES[0]}", f"minio-{SITES[0]}"]
        replicators[SITES[0]].wait(30)
        lost_at = time.monotonic()

        # The cities keep publishing while site A is gone, and site B has everything.
        commit_round(sites, layout, contracts, "r3")
        publish_all(sites, layout, contracts, key)
        published_after = time.monotonic() - lost_at
        wait_verified(sites.settings, layout, contracts, key, sites=[b], datasets=DATASETS, timeout=180)
        b_complete_after = time.monotonic() - lost_at

        # Site A comes back on its old folders, knowing nothing of the interval, and catches up.
        back = time.monotonic()
        stack.up(sites.settings, topology, sites=[SITES[0]])
        replicators[SITES[0]] = sites.medshare(logs[SITES[0]], *args, SITES[0])
        wait_verified(sites.settings, layout, contracts, key, sites=[a, b], datasets=DATASETS, timeout=240)
        caught_up_after = time.monotonic() - back
        for site in (a, b):
            assert_province_holds_the_cities(site, layout, contracts, key, DATASETS)
        print(
            f"both sites complete {both_after:.1f} s after the first commits; site A lost: cities "
            f"published again after {published_after:.1f} s, site B complete after "
            f"{b_complete_after:.1f} s; site A back and caught up after {caught_up_after:.1f} s"
        )
    finally:
        for proc in replicators.values():
            stop(proc)
    for site in SITES:
        assert replicators[site].returncode == 0, logs[site].read_text()[-3000:]
