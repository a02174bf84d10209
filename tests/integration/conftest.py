"""Fixtures of the integration tests: contracts, the province key, a private replication layout
(its own namespace of tables and topics) per test, the sharing API's province and server, and the
analytics run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakehouse.contracts import Contract, load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from tests.utils.province import Province
from tests.utils.replication import drop_topics, make_topics
from tests.utils.user_stack import snapshot, user_settings


@pytest.fixture(scope="module", autouse=True)
def user_stack_untouched() -> Iterator[None]:
    """A stack the user runs on the default endpoints (a `make demo`, say) holds the same buckets,
    objects and topics after each test module as before it: tests work on their own stack."""
    user = user_settings()
    before = snapshot(user)
    yield
    if before is None:
        return
    after = snapshot(user)
    assert after is not None, f"the user's stack at {user.s3_endpoint} stopped during the module"
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    assert not added and not removed, f"the user's stack changed: added {added[:10]}, removed {removed[:10]}"


@pytest.fixture
def contracts(settings: Settings) -> dict[str, Contract]:
    return load_contracts(settings.platform_dir)


@pytest.fixture
def key(settings: Settings) -> ProvinceKey:
    return ProvinceKey.from_settings(settings)


@pytest.fixture
def layout(stack: Settings, topology: Topology, unique: str) -> Iterator[ReplicationLayout]:
    layout = ReplicationLayout(topology, f"t{unique}")
    make_topics(stack, layout)
    yield layout
    # Each namespace is 13 topics × 18 partitions of broker file handles: left behind, a long
    # session (`make test-faults FAULT_REPEATS=20`) ran the tests' broker out of descriptors.
    drop_topics(stack, layout)


# -- the sharing API ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def province_data(stack: Settings, topology: Topology, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small provincial lakehouse (written once per run) and what is in it, for the API tests."""
    import uuid

    from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
    from tests.utils.province import build_province, write_province

    contracts = load_contracts(stack.platform_dir)
    data = build_province(
        topology, contracts, ProvinceKey.from_settings(stack), patients=2000, encounters=12000, seed=11
    )
    root = f"s3://{topology.province.buckets.lakehouse}/api-test-{uuid.uuid4().hex[:8]}"
    write_province(data, root, delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE)))
    return data


@pytest.fixture(scope="session")
def api_server(stack: Settings, province_data, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One API process over `province_data` shared by the tests that do not change grants or
    kill it; its grants file is a copy of platform/grants.yaml."""
    from tests.utils.api import ApiServer, audit_uri

    server = ApiServer(
        settings=stack,
        workdir=tmp_path_factory.mktemp("api"),
        tables_root=province_data.root,
        audit_table=audit_uri(stack, "api"),
    )
    server.start()
    yield server
    server.stop()


# -- provincial analytics -------------------------------------------------------------------------


@dataclass
class AnalyticsRun:
    """A provincial lakehouse for the analytics tests and where `medshare analytics run` put gold."""

    province: Province
    tables_root: str
    gold_root: str
    env: dict[str, str]  # the environment the CLI ran with (its analytics roots)
    output: str


def analytics_env(tables_root: str, gold_root: str) -> dict[str, str]:
    return {
        **os.environ,
        "MEDSHARE_ANALYTICS_TABLES_ROOT": tables_root,
        "MEDSHARE_ANALYTICS_GOLD_ROOT": gold_root,
    }


def run_analytics(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    """`medshare analytics <args>` as analysts run it (its own Spark driver process)."""
    done = subprocess.run(
        [sys.executable, "-m", "medshare", "analytics", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, f"medshare analytics {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="session")
def analytics_run(stack: Settings, topology: Topology) -> AnalyticsRun:
    """A small province (one year, so few partitions) and every standard job run once on local[*]."""
    import uuid

    from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
    from tests.utils.province import build_province, write_province

    data = build_province(
        topology,
        load_contracts(stack.platform_dir),
        ProvinceKey.from_settings(stack),
        patients=2000,
        encounters=15000,
        years=1.0,
        seed=5,
    )
    run = uuid.uuid4().hex[:8]
    root = f"s3://{topology.province.buckets.lakehouse}/analytics-test-{run}"
    write_province(data, root, delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE)))
    gold = f"s3://{topology.province.buckets.gold}/analytics-test-{run}"
    env = analytics_env(root, gold)
    output = run_analytics(env, "run", "all")
    return AnalyticsRun(province=data, tables_root=root, gold_root=gold, env=env, output=output)
