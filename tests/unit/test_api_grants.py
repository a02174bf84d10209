"""Grant files: parsing, checks against topology and contracts, first-match decisions, hot reload
and admin edits with If-Match."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from lakehouse.contracts import load_contracts
from lakehouse.errors import ConfigError
from lakehouse.settings import Settings
from lakehouse.topology import Topology
from sharing_api.catalog import catalog
from sharing_api.errors import Conflict, NotFound, Unprocessable
from sharing_api.grants import Grant, GrantBook, parse_grants


@pytest.fixture
def views(settings: Settings):  # type: ignore[no-untyped-def]
    return catalog(load_contracts(settings.platform_dir))


def _write(path: Path, grants: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"grants": grants}))
    return path


BASE = {
    "recipient": {"levels": ["county"]},
    "datasets": ["encounters"],
    "purposes": ["treatment"],
    "scope": "own_city",
}


def test_platform_grants_load(settings: Settings, topology: Topology, views) -> None:
    grants = parse_grants(
        (settings.platform_dir / "grants.yaml").read_text(),
        source="grants.yaml",
        topology=topology,
        views=views,
    )
    assert len(grants.grants) >= 5


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"datasets": ["encounter"]}, "grants[0].datasets[0]: not a shareable dataset"),
        ({"recipient": {"hospitals": ["zz-nowhere"]}}, "grants[0].recipient.hospitals[0]: not a hospital"),
        ({"recipient": {"cities": ["beijing"]}}, "grants[0].recipient.cities[0]: not a city"),
        ({"columns": {"masked": ["resident_id"]}}, "grants[0].columns.masked[0]: a column of none"),
        ({"recipient": {}}, "a recipient names hospitals, cities or levels"),
        ({"purposes": ["curiosity"]}, "purposes.0"),
        ({"scope": "everything"}, "scope"),
        ({"valid_from": "2026-01-02", "valid_until": "2026-01-01"}, "valid_until must be after valid_from"),
        ({"columns": {"masked": ["department"], "hidden": ["department"]}}, "both masked and hidden"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_grants_are_refused_naming_the_problem(topology, views, change, problem) -> None:
    text = yaml.safe_dump({"grants": [{"id": "g1", **BASE, **change}]})
    with pytest.raises(ConfigError, match=r"grants\.yaml") as err:
        parse_grants(text, source="grants.yaml", topology=topology, views=views)
    assert problem in str(err.value)


def test_duplicate_ids_refused(topology, views) -> None:
    text = yaml.safe_dump({"grants": [{"id": "g", **BASE}, {"id": "g", **BASE}]})
    with pytest.raises(ConfigError, match=r"grants\[1\]\.id: the id of an earlier grant"):
        parse_grants(text, source="x", topology=topology, views=views)


def test_first_active_match_decides(tmp_path: Path, topology: Topology, views) -> None:
    now = dt.datetime.now(dt.UTC)
    path = _write(
        tmp_path / "g.yaml",
        [
            {"id": "expired", **BASE, "valid_until": (now - dt.timedelta(days=1)).isoformat()},
            {"id": "future", **BASE, "valid_from": (now + dt.timedelta(days=1)).isoformat()},
            {"id": "xingyang", **BASE, "recipient": {"hospitals": ["zz-xy-county"]}, "scope": "all_cities"},
            {"id": "zhengzhou-county", **BASE, "recipient": {"cities": ["zhengzhou"], "levels": ["county"]}},
            {"id": "county", **BASE},
        ],
    )
    book = GrantBook(path, topology, views)
    decide = lambda h, d="encounters", p="treatment": book.decide(topology.hospital(h), d, p, now)  # noqa: E731
    assert decide("zz-xy-county").grant.id == "xingyang"
    assert decide("zz-zm-county").grant.id == "zhengzhou-county"
    assert decide("ly-yc-county").grant.id == "county"
    assert decide("ly-c1").grant is None  # a city hospital
    assert decide("ly-yc-county", p="research").grant is None
    assert decide("ly-yc-county", d="diagnoses").grant is None
    assert "no active grant" in decide("ly-c1").reason


def test_reload_on_change_and_keep_last_good(tmp_path: Path, topology: Topology, views) -> None:
    path = _write(tmp_path / "g.yaml", [{"id": "one", **BASE}])
    book = GrantBook(path, topology, views, check_seconds=0)
    county = topology.hospital("ly-yc-county")
    now = dt.datetime.now(dt.UTC)
    assert book.decide(county, "encounters", "treatment", now).grant.id == "one"
    _write(path, [{"id": "two", **BASE}])
    os.utime(path, ns=(1, 10**18))  # a new mtime even within the same clock tick
    assert book.decide(county, "encounters", "treatment", now).grant.id == "two"
    path.write_text("grants: [{id: broken")
    os.utime(path, ns=(1, 2 * 10**18))
    assert book.decide(county, "encounters", "treatment", now).grant.id == "two"
    assert book.last_error and "not valid YAML" in book.last_error


def test_admin_edits(tmp_path: Path, topology: Topology, views) -> None:
    path = _write(tmp_path / "g.yaml", [{"id": "one", **BASE}])
    book = GrantBook(path, topology, views)
    _, etag = book.current()
    new = Grant.model_validate({"id": "two", **BASE, "purposes": ["research"]})
    etag2 = book.add(new, if_match=etag)
    assert [g.id for g in book.current()[0].grants] == ["one", "two"]
    assert "two" in path.read_text()
    with pytest.raises(Conflict):
        book.add(new)
    with pytest.raises(Conflict):
        book.remove("two", if_match=etag)  # stale version
    with pytest.raises(NotFound):
        book.remove("three")
    with pytest.raises(Unprocessable):
        book.replace("one", new)  # ids differ
    book.replace("two", Grant.model_validate({"id": "two", **BASE, "scope": "all_cities"}), if_match=etag2)
    assert book.current()[0].grants[1].scope == "all_cities"
    book.remove("one")
    assert [g.id for g in book.current()[0].grants] == ["two"]
    # The written file is a valid grants file on its own.
    assert parse_grants(path.read_text(), source="x", topology=topology, views=views).grants[0].id == "two"
