"""The topology in platform/ and the loader's errors on bad input."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from lakehouse.errors import TopologyError
from lakehouse.topology import CareLevel, Topology, load_topology

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "platform" / "topology.yaml").read_text())
    return data


def write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return tmp_path / "topology.yaml"


# GB/T 2260: Henan's 17 prefecture-level cities and Jiyuan (administered by the province).
HENAN = {
    "4101", "4102", "4103", "4104", "4105", "4106", "4107", "4108", "4109",
    "4110", "4111", "4112", "4113", "4114", "4115", "4116", "4117", "419001",
}  # fmt: skip


def test_real_topology_is_the_whole_province_with_every_care_level() -> None:
    topo = load_topology(REPO / "platform")
    assert {c.region_code for c in topo.cities} == HENAN
    # The pilot cities stay first: a city's Kafka partition follows its position.
    assert [c.id for c in topo.cities[:3]] == ["zhengzhou", "luoyang", "nanyang"]
    county = [h for h in topo.hospitals if h.level is CareLevel.COUNTY]
    assert len(county) >= 120
    # One or more hospitals per county: Henan has 102 counties and county-level cities.
    assert len({h.county for h in county}) >= 102
    for h in topo.hospitals:
        if h.county is not None:
            assert h.county.startswith(topo.city(h.city).region_code[:4]), h.id
    assert {c.service for c in topo.province.specialist_centres} == {"imaging", "ecg", "pathology"}
    assert {h.level for h in topo.hospitals} == set(CareLevel)
    for city in topo.cities:
        assert topo.hospitals_of(city.id), f"{city.id} has no hospitals"
        assert city.region_code.startswith("41")
    assert topo.hospital(topo.province.telemedicine_centre).level is CareLevel.PROVINCIAL
    assert len(set(topo.all_buckets())) == len(topo.all_buckets()) == 4 + 4 * len(topo.cities)
    assert "medshare.smoke" in {t.name for t in topo.kafka.topics}


def test_lookup_of_unknown_city_names_the_known_ones() -> None:
    topo = load_topology(REPO / "platform")
    with pytest.raises(TopologyError, match=r"unknown city 'beijing'.*zhengzhou"):
        topo.city("beijing")


def test_duplicate_hospital_id_names_file_and_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["hospitals"].append(dict(raw["hospitals"][2]))
    path = write(tmp_path, raw)
    last = len(raw["hospitals"]) - 1
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"hospitals[{last}].id" in msg
    assert f"duplicate hospital id {raw['hospitals'][2]['id']!r}" in msg


def test_unknown_city_names_file_and_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["hospitals"][4]["city"] = "beijing"
    path = write(tmp_path, raw)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    assert f"{path}: hospitals[4].city: unknown city 'beijing'" in str(err.value)


def test_county_outside_its_city_or_missing_is_refused(tmp_path: Path, raw: dict[str, Any]) -> None:
    county = [i for i, h in enumerate(raw["hospitals"]) if h["level"] == "county"]
    raw["hospitals"][county[0]]["county"] = "420102"  # Wuhan, Hubei
    del raw["hospitals"][county[1]]["county"]
    raw["province"]["specialist_centres"][0]["hospital"] = "zz-nowhere"
    path = write(tmp_path, raw)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    msg = str(err.value)
    assert f"{path}: hospitals[{county[0]}].county: '420102' of hospital" in msg
    assert f"{path}: hospitals[{county[1]}].county: county hospital" in msg and "needs its county" in msg
    assert f"{path}: province.specialist_centres[0].hospital: unknown hospital 'zz-nowhere'" in msg


def test_missing_field_names_file_and_key(tmp_path: Path, raw: dict[str, Any]) -> None:
    del raw["cities"][1]["buckets"]["curated"]
    path = write(tmp_path, raw)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    assert f"{path}: cities[1].buckets.curated: Field required" in str(err.value)


def test_wrong_level_and_unknown_key_are_reported_together(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["hospitals"][0]["level"] = "clinic"
    raw["hospitals"][1]["beds"] = 300
    write(tmp_path, raw)
    with pytest.raises(TopologyError) as err:
        load_topology(tmp_path)
    assert "hospitals[0].level" in str(err.value)
    assert "hospitals[1].beds: Extra inputs are not permitted" in str(err.value)


def test_bucket_shared_by_two_sites_is_refused(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["cities"][1]["buckets"]["landing"] = raw["cities"][0]["buckets"]["landing"]
    write(tmp_path, raw)
    with pytest.raises(TopologyError, match=r"cities\[1\].buckets.landing: bucket .* already used"):
        load_topology(tmp_path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path)
    (tmp_path / "topology.yaml").write_text("cities: [\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(tmp_path)


def test_parsed_model_is_frozen() -> None:
    topo = load_topology(REPO / "platform")
    assert isinstance(topo, Topology)
    with pytest.raises(ValueError):
        topo.cities[0].id = "x"  # type: ignore[misc]
