"""An independent reading of platform/grants.yaml for tests: none of sharing_api's models and not
even PyYAML's timestamps — every scalar is read as text (BaseLoader) and validity times are parsed
here, from the rule the docs state: ISO 8601, an explicit UTC offset is honoured, a date or a time
without one means UTC, `valid_from` is inclusive and `valid_until` exclusive."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import yaml

from lakehouse.topology import Hospital

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?$"
)


def load(path: Path) -> list[dict[str, Any]]:
    return list(yaml.load(path.read_text(), Loader=yaml.BaseLoader)["grants"])


def instant(text: str | None) -> dt.datetime | None:
    """A validity bound as an aware UTC datetime."""
    if text is None:
        return None
    m = _TIME.fullmatch(str(text).strip())
    if m is None:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    micros = int((fraction or "0").ljust(6, "0"))
    local = dt.datetime(
        int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micros
    )
    offset = dt.timedelta(0)
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        offset = offset if zone[0] == "+" else -offset
    # The clock reading minus its offset is the UTC instant.
    return (local - offset).replace(tzinfo=dt.UTC)


def active(grant: dict[str, Any], now: dt.datetime) -> bool:
    start, until = instant(grant.get("valid_from")), instant(grant.get("valid_until"))
    return (start is None or start <= now) and (until is None or now < until)


def expected_grant(
    grants: list[dict[str, Any]],
    hospital: Hospital,
    dataset: str,
    purpose: str,
    now: dt.datetime | None = None,
) -> dict[str, Any] | None:
    """The first grant in file order that is active `now` and matches; None when nothing does."""
    now = now or dt.datetime.now(dt.UTC)
    for g in grants:
        r = g["recipient"]
        if "hospitals" in r and hospital.id not in r["hospitals"]:
            continue
        if "cities" in r and hospital.city not in r["cities"]:
            continue
        if "levels" in r and str(hospital.level) not in r["levels"]:
            continue
        if not active(g, now):
            continue
        if dataset in g["datasets"] and purpose in g["purposes"]:
            return g
    return None


def column_access(grant: dict[str, Any], column: str) -> str:
    columns = grant.get("columns") or {}
    if column in columns.get("hidden", []):
        return "hidden"
    return "masked" if column in columns.get("masked", []) else "allowed"
