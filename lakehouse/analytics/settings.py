"""The analytics component's one settings object, read from MEDSHARE_ANALYTICS_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from lakehouse.errors import ConfigError
from lakehouse.settings import Settings, describe_settings_error


class AnalyticsSettings(BaseSettings):
    """Where analysts' Spark runs, what it reads and writes, and how outputs are protected.

    Endpoints, jars and the platform folder come from the platform's `Settings` (MEDSHARE_*).
    """

    model_config = SettingsConfigDict(env_prefix="MEDSHARE_ANALYTICS_", frozen=True, extra="ignore")

    # Spark master for analysts: None = the platform's (`local[*]`); `spark://host:7077` = a cluster.
    master: str | None = None
    # Aggregates released to analysts hide every cell counting fewer than k distinct patients.
    k: int = Field(default=5, ge=2)
    # Provincial tables (one per dataset beneath; default: the province lakehouse bucket) and
    # gold tables (one per standard job; default: the province gold bucket), as s3:// URIs.
    tables_root: str | None = None
    gold_root: str | None = None
    # Memory of each executor when running on a cluster.
    executor_memory: str = "1g"
    # Where `medshare analytics report` writes (default: <state_dir>/analytics/report.html).
    report_path: Path | None = None

    def report_file(self, platform: Settings) -> Path:
        return self.report_path or platform.state_dir / "analytics" / "report.html"


def load_analytics_settings(**overrides: object) -> AnalyticsSettings:
    try:
        return AnalyticsSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(
            f"invalid analytics settings: {describe_settings_error(exc, 'MEDSHARE_ANALYTICS_')}"
        ) from exc
