"""An independent reading of platform/grants.yaml for tests: plain YAML and dict lookups, none of
sharing_api's models, so the API's decisions are checked against a second implementation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from lakehouse.topology import Hospital


def load(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["grants"])


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC)


def expected_grant(
    grants: list[dict[str, Any]], hospital: Hospital, dataset: str, purpose: str
) -> dict[str, Any] | None:
    """The first grant in file order that is active now and matches; None when nothing does."""
    now = dt.datetime.now(dt.UTC)
    for g in grants:
        r = g["recipient"]
        if "hospitals" in r and hospital.id not in r["hospitals"]:
            continue
        if "cities" in r and hospital.city not in r["cities"]:
            continue
        if "levels" in r and str(hospital.level) not in r["levels"]:
            continue
        start, until = _time(g.get("valid_from")), _time(g.get("valid_until"))
        if (start and now < start) or (until and now >= until):
            continue
        if dataset in g["datasets"] and purpose in g["purposes"]:
            return g
    return None


def column_access(grant: dict[str, Any], column: str) -> str:
    columns = grant.get("columns") or {}
    if column in columns.get("hidden", []):
        return "hidden"
    return "masked" if column in columns.get("masked", []) else "allowed"
