"""The two-site development layout: where each site's services listen, what each store holds, the
Kafka quorum, and the environment a site's process is started with."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.provision import store_contents
from infra.services import _kafka_properties, quorum_voters
from lakehouse.errors import ConfigError
from lakehouse.settings import Settings, load_settings
from lakehouse.storage import PROVINCE_SITE, site_credentials
from lakehouse.topology import Topology

TWO = "henan-dc-a,henan-dc-b"


def stack(tmp_path: Path, **extra: object) -> Settings:
    return load_settings(
        state_dir=tmp_path,
        sites=TWO,
        s3_endpoint="http://127.0.0.1:19000",
        s3_console_port=19001,
        kafka_bootstrap="127.0.0.1:19092",
        kafka_controller_port=19093,
        **extra,
    )


def test_each_site_has_its_own_ports_and_folder_and_sees_the_others(tmp_path: Path) -> None:
    base = stack(tmp_path)
    a, b = base.for_site("henan-dc-a"), base.for_site("henan-dc-b")
    assert (a.s3_endpoint, a.kafka_host_port[1], a.kafka_controller_port) == (
        "http://127.0.0.1:19000",
        19092,
        19093,
    )
    assert (b.s3_endpoint, b.kafka_host_port[1], b.kafka_controller_port) == (
        "http://127.0.0.1:19010",
        19102,
        19103,
    )
    assert (a.state_dir, b.state_dir) == (tmp_path, tmp_path / "sites" / "henan-dc-b")
    # Every client can bootstrap from either broker; each site lists its own first.
    assert a.kafka_servers == "127.0.0.1:19092,127.0.0.1:19102"
    assert b.kafka_servers == "127.0.0.1:19102,127.0.0.1:19092"
    assert (a.peer_endpoints, b.peer_endpoints) == (["http://127.0.0.1:19010"], ["http://127.0.0.1:19000"])
    # The cities' buckets stay in the stack's first store; one secrets folder for every site.
    assert b.cities_endpoint == "http://127.0.0.1:19000" and b.site_secrets_dir == base.site_secrets_dir
    assert base.site_named("b") == "henan-dc-b"
    with pytest.raises(ConfigError):
        b.for_site("henan-dc-a")  # already a site's settings
    with pytest.raises(ConfigError):
        base.for_site("henan-dc-c")


def test_a_site_process_started_with_its_environment_sees_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = stack(tmp_path).for_site("henan-dc-b")
    for name, value in b.site_environment().items():
        monkeypatch.setenv(name, value)
    seen = load_settings()
    for field in (
        "site_id",
        "s3_endpoint",
        "kafka_servers",
        "state_dir",
        "cities_endpoint",
        "peer_endpoints",
    ):
        assert getattr(seen, field) == getattr(b, field), field


def test_identities_use_their_own_store(tmp_path: Path) -> None:
    b = stack(tmp_path, secrets_dir=tmp_path / "secrets").for_site("henan-dc-b")
    (tmp_path / "secrets").mkdir()
    for identity in (PROVINCE_SITE, "zhengzhou"):
        (tmp_path / "secrets" / identity).write_text("x" * 40)
    assert site_credentials(b, PROVINCE_SITE).endpoint == "http://127.0.0.1:19010"
    assert site_credentials(b, "zhengzhou").endpoint == "http://127.0.0.1:19000"


def test_a_site_store_holds_the_provincial_buckets_and_the_cities_store_the_cities(
    tmp_path: Path, topology: Topology
) -> None:
    b = stack(tmp_path).for_site("henan-dc-b")
    stores = store_contents(b, topology)
    province = set(topology.province.buckets.model_dump().values())
    assert set(stores[b.s3_endpoint][0]) == province
    assert set(stores[b.cities_endpoint][0]) == set(topology.all_buckets()) - province
    assert PROVINCE_SITE in stores[b.s3_endpoint][1] and "zhengzhou" in stores[b.cities_endpoint][1]
    # One store for both (a one-site stack): everything in it.
    one = load_settings(state_dir=tmp_path, sites="henan-dc-a")
    assert set(store_contents(one, topology)[one.s3_endpoint][0]) == set(topology.all_buckets())


def test_the_quorum_has_a_voter_in_each_site_and_the_witness(tmp_path: Path) -> None:
    base = stack(tmp_path)
    expected = "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    for site in base.site_ids:
        assert quorum_voters(base.for_site(site)) == expected
    props = _kafka_properties(base.for_site("henan-dc-b"), tmp_path, "dc-b")
    assert "node.id=2" in props and "broker.rack=dc-b" in props and "min.insync.replicas=1" in props
    assert "transaction.state.log.replication.factor=2" in props
