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


# -- the sharing API ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def province_data(stack: Settings, topology: Topology, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small provincial lakehouse (written once per run) and what is in it, for the API tests."""
    import uuid

    from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials
    from tests.utils.province import build_province, write_province

    contracts = load_contracts(stack.platform_dir)
    data = build_province(
        topology, contracts, ProvinceKey.from_settings(stack), patients=400, encounters=2400, seed=11
    )
    root = f"s3://{topology.province.buckets.lakehouse}/api-test-{uuid.uuid4().hex[:8]}"
    write_province(data, root, delta_storage_options(stack, site_credentials(stack, PROVINCE_SITE)))
    return data


@pytest.fixture(scope="session")
def api_server(stack: Settings, province_data, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One API process over `province_data` shared by the tests that do not change grants or
    kill it; its grants file is a copy of platform/grants.yaml."""
    from tests.utils.api import ApiServer

    server = ApiServer(
        settings=stack,
        workdir=tmp_path_factory.mktemp("api"),
        tables_root=province_data.root,
        audit_table=f"{province_data.root}/_audit",
    )
    server.start()
    yield server
    server.stop()
