"""Fixtures of the replication tests: contracts, the province key, and a private layout (its own
namespace of tables and topics) per test."""

from __future__ import annotations

import pytest

from lakehouse.contracts import Contract, load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from tests.utils.replication import make_topics


@pytest.fixture
def contracts(settings: Settings) -> dict[str, Contract]:
    return load_contracts(settings.platform_dir)


@pytest.fixture
def key(settings: Settings) -> ProvinceKey:
    return ProvinceKey.from_settings(settings)


@pytest.fixture
def layout(stack: Settings, topology: Topology, unique: str) -> ReplicationLayout:
    layout = ReplicationLayout(topology, f"t{unique}")
    make_topics(stack, layout)
    return layout
