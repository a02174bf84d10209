"""The one settings object of the platform's foundation, read from MEDSHARE_* environment variables."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lakehouse.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

# Secrets that are fine on a developer's loopback and must never reach a real deployment.
_DEV_SECRETS = {"medshare-dev-secret", "medshare-dev-province-key"}


class Settings(BaseSettings):
    """Endpoints, credentials and local folders of the platform.

    Defaults describe a single-machine development stack on loopback; `env=production`
    refuses the development secrets.
    """

    model_config = SettingsConfigDict(env_prefix="MEDSHARE_", frozen=True, extra="ignore")

    env: Literal["local", "production"] = "local"
    platform_dir: Path = REPO_ROOT / "platform"
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "medshare")
    state_dir: Path = Field(default_factory=lambda: Path.home() / ".local" / "state" / "medshare")

    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_console_port: int = 9001
    s3_region: str = "us-east-1"
    s3_root_user: str = "medshare-admin"
    s3_root_password: SecretStr = SecretStr("medshare-dev-secret")

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093

    # The province-held key of person_key = HMAC-SHA256(key, resident id); its version is stored
    # beside every pseudonym so the key can be rotated.
    province_key: SecretStr = SecretStr("medshare-dev-province-key")
    province_key_version: int = 1

    spark_master: str = "local[*]"
    spark_shuffle_partitions: int = 4
    spark_driver_memory: str = "2g"

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.env != "local":
            for name, secret in [
                ("S3_ROOT_PASSWORD", self.s3_root_password),
                ("PROVINCE_KEY", self.province_key),
            ]:
                if secret.get_secret_value() in _DEV_SECRETS:
                    raise ValueError(
                        f"MEDSHARE_{name} is the development default; set a real secret "
                        "outside MEDSHARE_ENV=local"
                    )
        if len(self.s3_root_password.get_secret_value()) < 8:
            raise ValueError("MEDSHARE_S3_ROOT_PASSWORD must have at least 8 characters")
        return self

    @property
    def s3_host(self) -> str:
        """host:port of the S3 endpoint, as the minio client and MinIO's --address want it."""
        return urlsplit(self.s3_endpoint).netloc

    @property
    def s3_secure(self) -> bool:
        return urlsplit(self.s3_endpoint).scheme == "https"

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        host, _, port = self.kafka_bootstrap.split(",")[0].rpartition(":")
        return host, int(port)

    @property
    def spark_jars_dir(self) -> Path:
        return self.cache_dir / "jars" / "spark"

    @property
    def kafka_jars_dir(self) -> Path:
        return self.cache_dir / "jars" / "kafka"

    @property
    def bin_dir(self) -> Path:
        return self.cache_dir / "bin"

    def site_secret(self, site: str) -> SecretStr:
        """The object-store secret of one site's user (a city or the province).

        Derived from the root secret so that a development stack needs one secret only; a
        deployment with one store per site gives each its own root secret anyway.
        """
        digest = hmac.new(
            self.s3_root_password.get_secret_value().encode(),
            f"site:{site}".encode(),
            hashlib.sha256,
        ).hexdigest()
        return SecretStr(digest[:40])


def describe_settings_error(exc: ValidationError, prefix: str) -> str:
    """One line naming each offending environment variable and its problem."""
    return "; ".join(
        f"{prefix}{'_'.join(str(p) for p in err['loc']).upper() or '(settings)'}: {err['msg']}"
        for err in exc.errors()
    )


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (plus explicit overrides), with a readable error."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_settings_error(exc, 'MEDSHARE_')}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
