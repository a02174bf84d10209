"""The sharing API's one settings object, read from MEDSHARE_API_* environment variables."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from lakehouse.errors import ConfigError
from lakehouse.settings import Settings, describe_settings_error
from lakehouse.topology import Topology


class ApiSettings(BaseSettings):
    """Where the API listens, where it keeps its state, and its limits.

    The lakehouse endpoints, the province key and the platform folder come from the platform's
    own `Settings` (MEDSHARE_*); these are the API's alone.
    """

    model_config = SettingsConfigDict(env_prefix="MEDSHARE_API_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8040, ge=1, le=65535)
    # Reverse proxies whose X-Forwarded-For is believed (comma-separated addresses); none by
    # default: the client address audited and rate-limited is the connection's.
    trusted_proxies: str = ""
    # The grants the API enforces; admin endpoints edit this file and hand edits are picked up too.
    grants_file: Path | None = None
    # Where the federated tables are (s3://bucket[/prefix], one table per dataset beneath) and where
    # the audit table is. Defaults: the provincial lakehouse bucket, and _audit/access_log in it.
    tables_root: str | None = None
    audit_table: str | None = None
    # Credentials, consents and the audit journal (SQLite). Default: <state_dir>/api.
    state_dir: Path | None = None
    # One name per running API process: its audit journal and its app id in the audit table.
    instance: str = Field(default="api-0", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    # Processes serving requests (uvicorn workers). Each holds its own read model (memory × N)
    # and audit journal; 2 on a 2-core machine doubles the requests a second it can answer.
    workers: int = Field(default=1, ge=1, le=32)

    credential_days: int = Field(default=90, ge=1)
    access_token_minutes: int = Field(default=30, ge=11)
    rotation_grace_hours: float = Field(default=24.0, ge=0)

    rate_per_second: float = Field(default=100.0, gt=0)
    rate_burst: int = Field(default=200, ge=1)
    # Break-glass (every emergency lookup): the reason a clinician states, at least this many
    # characters (not counting spaces), is audited and reviewed.
    break_glass_min_reason: int = Field(default=10, ge=1, le=200)
    # Failed logins (a bad or missing token, a wrong client secret) per client address: over the
    # limit, attempts are refused before any token is verified.
    login_failures_per_minute: float = Field(default=10.0, gt=0)
    login_failure_burst: int = Field(default=20, ge=1)

    # How often the instance's keeper asks the provincial Delta tables for a new version (each
    # worker reloads only then), and how often it appends the audit journals to the audit table.
    # Replicated data arrives in minutes and the journals already make records durable.
    refresh_seconds: float = Field(default=5.0, gt=0)
    audit_flush_seconds: float = Field(default=5.0, gt=0)
    audit_batch_rows: int = Field(default=20_000, ge=1)

    # Delta Sharing (/delta-sharing/): where the per-grant copies live (default: the province's
    # shared bucket), how often they are brought up to date with the provincial tables, consents
    # and grants (0: not in this process — another keeps them), the S3 endpoint recipients reach
    # (signed into their URLs; default the platform's own), how long a signed URL lives — short,
    # because a URL handed out keeps working until it expires, whatever is revoked meanwhile;
    # long enough for one read: the client does not renew URLs mid-read — and the API's address
    # as recipients' profile files name it.
    share_root: str | None = None
    share_sync_seconds: float = Field(default=30.0, ge=0)
    share_s3_endpoint: str | None = None
    share_url_minutes: int = Field(default=10, ge=1, le=60)
    public_url: str | None = None

    # Operational state in every provincial site (sharing_api/operations.py): the topic its changes
    # go through (default: the topology's), and how long a change waits, before the response,
    # for the keeper to ship it (then the other site applies it within about a second).
    operations_topic: str | None = None
    operations_wait_seconds: float = Field(default=5.0, ge=0)

    # The API at each provincial site, in the order a client tries them (comma-separated URLs).
    # Default: this host's, and on a two-site development stack the other sites' (`serve --site`
    # puts site i's API on port + i).
    urls: str | None = None

    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # How long a paging cursor keeps its data version readable.
    cursor_minutes: float = Field(default=10.0, gt=0)

    def operations_topic_name(self, topology: Topology) -> str:
        if self.operations_topic:
            return self.operations_topic
        for topic in topology.kafka.topics:
            if topic.dataset == "operations":
                return topic.name
        raise ConfigError("no Kafka topic for dataset 'operations' in the topology's kafka.topics")

    def site_urls(self, platform: Settings) -> list[str]:
        if self.urls:
            return [u.strip() for u in self.urls.split(",") if u.strip()]
        return [f"http://{self.host}:{self.port + i}" for i in range(len(platform.site_ids))]

    def grants_path(self, platform: Settings) -> Path:
        return self.grants_file or platform.platform_dir / "grants.yaml"

    def state_path(self, platform: Settings) -> Path:
        return self.state_dir or platform.state_dir / "api"

    def db_path(self, platform: Settings) -> Path:
        return self.state_path(platform) / "sharing.db"

    def rate_limit_path(self, platform: Settings) -> Path:
        """The rate-limit buckets every worker of this instance shares."""
        return self.state_path(platform) / f"ratelimit-{self.instance}.db"

    def sharing_endpoint(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/") + "/delta-sharing/"

    def journal_lock(self, platform: Settings, slot: int) -> Path:
        return self.state_path(platform) / f"audit-{self.instance}-{slot}.lock"

    def journal_files(self, platform: Settings) -> list[Path]:
        """Every audit journal of this instance, of running workers and of dead ones alike."""
        slot = re.compile(rf"audit-{re.escape(self.instance)}-[0-9]+\.db")
        return sorted(p for p in self.state_path(platform).glob("audit-*.db") if slot.fullmatch(p.name))

    def keeper_status(self, platform: Settings) -> Path:
        """What the instance's keeper last saw: table versions, audit flushing (see `keeper`)."""
        return self.state_path(platform) / f"keeper-{self.instance}.json"


def load_api_settings(**overrides: object) -> ApiSettings:
    try:
        return ApiSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid API settings: {describe_settings_error(exc, 'MEDSHARE_API_')}") from exc
