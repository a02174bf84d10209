"""Fixtures shared by all tests. Integration tests use the real stack, started once per run:
if it was already up (a developer's `make up`), it is left running; otherwise it is stopped at
the end, so CI leaves no process behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lakehouse.settings import Settings, get_settings
from lakehouse.storage import site_credentials
from lakehouse.topology import Topology, load_topology

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def topology(settings: Settings) -> Topology:
    return load_topology(settings.platform_dir)


@pytest.fixture(scope="session")
def stack(settings: Settings, topology: Topology) -> Iterator[Settings]:
    from infra import stack as stack_mod

    was_up = stack_mod.is_up(settings)
    stack_mod.up(settings, topology)
    yield settings
    if not was_up:
        stack_mod.down(settings)


@pytest.fixture(scope="session")
def spark(stack: Settings) -> Iterator[SparkSession]:
    """A Spark session with the Zhengzhou sub-centre's object-store identity."""
    from lakehouse.spark import build_spark_session

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
