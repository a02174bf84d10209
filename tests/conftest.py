"""Fixtures shared by all tests.

Tests never touch a user's stack: before anything reads the settings, this module points every
MEDSHARE_* endpoint and the state folder at a stack of the test run's own — MinIO and Kafka on
free loopback ports, their data in a temporary folder — which integration tests start once and
which is stopped and deleted at the end of the run (tests/utils/stack_env.py). Processes the
tests start (`medshare …`) inherit the same environment.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.utils.stack_env import TEST_STATE_DIR

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.settings import Settings
    from lakehouse.topology import Topology


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    from lakehouse.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def topology(settings: Settings) -> Topology:
    from lakehouse.topology import load_topology

    return load_topology(settings.platform_dir)


@pytest.fixture(scope="session", autouse=True)
def site_secrets(settings: Settings, topology: Topology) -> None:
    """Every identity's secret in the test run's own state folder, as `medshare up` makes them
    (unit tests build clients without starting the stack)."""
    from infra.provision import site_buckets

    for site in site_buckets(topology):
        settings.ensure_site_secret(site)


@pytest.fixture(scope="session")
def stack(settings: Settings, topology: Topology) -> Iterator[Settings]:
    """The test run's own MinIO and Kafka, started once, stopped (and deleted) at the end."""
    from infra import stack as stack_mod

    assert settings.state_dir == TEST_STATE_DIR, "tests must run on their own stack"
    try:
        stack_mod.up(settings, topology)
    except BaseException:
        # A start that failed half way (Kafka after MinIO, say) must not leave MinIO running.
        stack_mod.down(settings)
        raise
    yield settings
    stack_mod.down(settings)


@pytest.fixture(scope="session")
def spark(stack: Settings) -> Iterator[SparkSession]:
    """A Spark session with the Zhengzhou sub-centre's object-store identity."""
    from lakehouse.spark import build_spark_session
    from lakehouse.storage import site_credentials

    session = build_spark_session(stack, site_credentials(stack, "zhengzhou"), app_name="medshare-tests")
    yield session
    session.stop()


@pytest.fixture
def unique() -> str:
    """A fresh name part, so tests never see each other's tables or topics."""
    return uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests mirror the layout: everything under tests/integration talks to real services.
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
