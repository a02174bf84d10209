"""`medshare pipeline`'s choice of cities: `all`, a list, or the city folders of an export."""

from pathlib import Path

import pytest

from lakehouse.errors import MedshareError, TopologyError
from lakehouse.settings import Settings
from lakehouse.topology import load_topology
from medshare.pipeline import parse_cities, run_cities

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = load_topology(REPO / "platform")


def test_all_is_every_city_in_topology_order() -> None:
    assert parse_cities(TOPOLOGY, "all") == [c.id for c in TOPOLOGY.cities]
    assert len(parse_cities(TOPOLOGY, " all ")) == 18


def test_a_list_is_checked_and_put_in_topology_order() -> None:
    assert parse_cities(TOPOLOGY, "jiyuan, zhengzhou,kaifeng") == ["zhengzhou", "kaifeng", "jiyuan"]
    with pytest.raises(TopologyError, match="unknown city 'beijing'"):
        parse_cities(TOPOLOGY, "zhengzhou,beijing")
    with pytest.raises(MedshareError, match="no city named"):
        parse_cities(TOPOLOGY, " , ")


def test_without_a_choice_the_export_folders_decide(tmp_path: Path) -> None:
    with pytest.raises(MedshareError, match="no city folder"):
        parse_cities(TOPOLOGY, None, tmp_path)
    for name in ("nanyang", "anyang", "not-a-city"):
        (tmp_path / name).mkdir()
    assert parse_cities(TOPOLOGY, None, tmp_path) == ["nanyang", "anyang"]


def test_an_unknown_step_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(MedshareError, match=r"unknown step.*transform"):
        run_cities(Settings(), tmp_path, ["zhengzhou"], ["land", "transform"])
