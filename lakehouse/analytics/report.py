"""The analysts' HTML report of the gold tables (placeholder until the report lands)."""

from __future__ import annotations

from pathlib import Path

from lakehouse.analytics.settings import AnalyticsSettings
from lakehouse.settings import Settings


def write_report(platform: Settings, analytics: AnalyticsSettings, out: Path) -> Path:
    raise NotImplementedError
