"""platform/sources.yaml: profiles resolved per hospital and dataset, checked strictly when loaded
(every error names the file and the key), datetime formats turned into exact regular expressions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ingestion.profiles import load_profiles, parse_profiles, pattern_regex
from lakehouse.contracts import load_contracts
from lakehouse.errors import TopologyError
from lakehouse.topology import load_topology

pytestmark = pytest.mark.unit
PLATFORM = Path(__file__).resolve().parents[2] / "platform"


@pytest.fixture(scope="module")
def loaded():
    topology = load_topology(PLATFORM)
    contracts = load_contracts(PLATFORM)
    return topology, contracts


def _parse(data, loaded):
    topology, contracts = loaded
    return parse_profiles(data, path=Path("sources.yaml"), topology=topology, contracts=contracts)


def test_the_platform_file_loads_and_resolves_per_hospital_and_dataset(loaded) -> None:
    profiles = load_profiles(PLATFORM, *loaded)
    assert profiles.for_file("zz-c1", "patients").name == "default"
    assert profiles.for_file("zz-xy-county", "patients").name == "county-his"
    assert profiles.for_file("ny-fc-county", "lab_results").delimiter == ";"
    assert profiles.for_file("ny-fc-county", "patients").name == "default"
    county = profiles.for_file("zz-xy-county", None)
    # A named profile extends the default's header names and spellings.
    assert county.headers["身份证号"] == "resident_id" and county.values["sex"]["男"] == "M"
    assert "yyyy/MM/dd" in county.date_formats


def test_a_dataset_may_name_a_sheet_on_top_of_its_profile(loaded) -> None:
    profiles = _parse(
        {
            "profiles": {"clinic": {"date_formats": ["yyyy/MM/dd"]}},
            "hospitals": {"zz-c1": {"profile": "clinic", "datasets": {"encounters": {"sheet": "就诊"}}}},
        },
        loaded,
    )
    assert profiles.for_file("zz-c1", "encounters").sheet == "就诊"
    assert profiles.for_file("zz-c1", "encounters").date_formats == ("yyyy/MM/dd",)
    assert profiles.for_file("zz-c1", "patients").sheet is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hospitals": {"zz-nowhere": {"profile": "default"}}}, "hospitals.zz-nowhere: not a hospital"),
        ({"hospitals": {"zz-c1": {"profile": "his"}}}, "hospitals.zz-c1.profile: no profile named 'his'"),
        (
            {"hospitals": {"zz-c1": {"datasets": {"visits": {}}}}},
            "hospitals.zz-c1.datasets.visits: not a dataset",
        ),
        (
            {"default": {"headers": {"姓名": "full_name"}}},
            "default.headers.姓名: 'full_name' is not a column",
        ),
        ({"profiles": {"x": {"date_formats": ["dd/mm/yy"]}}}, "profiles.x.date_formats"),
        ({"profiles": {"x": {"encoding": "latin-1"}}}, "profiles.x.encoding"),
        ({"profiles": {"x": {"delimiter": ";;"}}}, "profiles.x.delimiter"),
        ({"profiles": {"x": {"delimiter": '"'}}}, "delimiter and quote are the same"),
        ({"profiles": {"x": {"colour": "red"}}}, "profiles.x.colour"),
    ],
)
def test_mistakes_are_refused_naming_file_and_key(loaded, data, message: str) -> None:
    with pytest.raises(TopologyError) as caught:
        _parse(data, loaded)
    assert "sources.yaml" in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        ("yyyy-MM-dd", ["2025-11-03"], ["2025-1-3", "2025-11-03 08:00", "20251103"]),
        ("yyyy/MM/dd", ["2025/11/03"], ["2025-11-03"]),
        ("yyyyMMdd", ["20251103"], ["2025113", "202511030"]),
        ("yyyy-MM-dd HH:mm[:ss]", ["2025-11-03 08:30", "2025-11-03 08:30:15"], ["2025-11-03T08:30"]),
        ("yyyy-MM-dd'T'HH:mm[:ss][.SSSSSS]", ["2025-11-03T08:30:15.123"], ["2025-11-03T08:30:15.1234567"]),
    ],
)
def test_pattern_regex_matches_exactly(pattern: str, good: list[str], bad: list[str]) -> None:
    regex = re.compile(pattern_regex(pattern))
    assert all(regex.match(v) for v in good)
    assert not any(regex.match(v) for v in bad)


@pytest.mark.parametrize("pattern", ["dd/mm/yy", "yyyy-MM-dd[", "yyyy-MM-dd'T", "yyyy-MMM-dd", "EEE yyyy"])
def test_unsupported_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError):
        pattern_regex(pattern)
