"""The one settings object of the platform's foundation, read from MEDSHARE_* environment variables."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lakehouse.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

# Secrets that are fine on a developer's loopback and must never reach a real deployment.
DEV_ROOT_PASSWORD = "medshare-dev-secret"
DEV_PROVINCE_KEY = "medshare-dev-province-key"
_DEV_SECRETS = {DEV_ROOT_PASSWORD, DEV_PROVINCE_KEY}
# Outside a development stack every secret has at least this many characters.
MIN_SECRET = 32
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def _loopback(hostport: str) -> bool:
    return hostport.startswith(_LOOPBACK)


def secret_env(site: str) -> str:
    """The environment variable that hands a component its site identity's secret."""
    return "MEDSHARE_SITE_SECRET_" + site.upper().replace("-", "_")


class Settings(BaseSettings):
    """Endpoints, credentials and local folders of the platform.

    Defaults describe a single-machine development stack on loopback. Its secrets are the public
    development ones (root password, province key) and random per-site secrets that `medshare up`
    writes to `<state>/secrets`; they are accepted only while every endpoint is on loopback.
    `env=production` refuses them and any secret shorter than 32 characters.
    """

    model_config = SettingsConfigDict(env_prefix="MEDSHARE_", frozen=True, extra="ignore")

    env: Literal["local", "production"] = "local"
    platform_dir: Path = REPO_ROOT / "platform"
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "medshare")
    state_dir: Path = Field(default_factory=lambda: Path.home() / ".local" / "state" / "medshare")
    # Site identities' secrets of a development stack (one file per identity, mode 0600).
    # A deployment gives each component only its own, in MEDSHARE_SITE_SECRET_<SITE>.
    secrets_dir: Path | None = None

    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_console_port: int = 9001
    s3_region: str = "us-east-1"
    s3_root_user: str = "medshare-admin"
    # Only what administers the store (`medshare up`, MinIO itself) needs it; no component does.
    s3_root_password: SecretStr | None = None

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093

    # The provincial sites of this stack, in order (topology ids; docs/sites.md). With two, the
    # development stack runs a site beside the other: site i's object store, broker and controller
    # listen `i * site_port_step` above the ports above, its services keep their state in
    # `<state>/sites/<id>`, and a witness controller (the quorum's third voter) listens one step
    # above the last site's controller. A deployment sets each site's endpoints itself.
    sites: str = "henan-dc-a,henan-dc-b"
    site_port_step: int = Field(default=10, ge=2)
    # The provincial site this process belongs to (its replicator's consumer group, its broker's
    # rack); None: the first of `sites`.
    site: str | None = None
    # The city sub-centres' object store when it is not this site's (a development stack keeps
    # the cities' buckets in the first site's store).
    cities_s3_endpoint: str | None = None
    # The other provincial sites' object stores (comma-separated): this site's API appends its
    # audit trail there too.
    peer_s3_endpoints: str = ""

    # The province-held key of person_key = HMAC-SHA256(key, resident id); its version is stored
    # beside every pseudonym so the key can be rotated.
    # Only what pseudonymises (city ingestion and publishers, the sharing API) needs it.
    province_key: SecretStr | None = None
    province_key_version: int = 1

    spark_master: str = "local[*]"
    spark_shuffle_partitions: int = 4
    spark_driver_memory: str = "2g"

    @model_validator(mode="after")
    def _refuse_dev_secrets_outside_development(self) -> Settings:
        secrets = [] if self.province_key is None else [("PROVINCE_KEY", self.province_key)]
        if self.s3_root_password is not None:
            secrets.append(("S3_ROOT_PASSWORD", self.s3_root_password))
            if len(self.s3_root_password.get_secret_value()) < 8:
                raise ValueError("MEDSHARE_S3_ROOT_PASSWORD must have at least 8 characters")
        for name, secret in secrets:
            value = secret.get_secret_value()
            if value in _DEV_SECRETS and not self.development:
                where = f"MEDSHARE_ENV={self.env}" if self.env != "local" else "endpoints off loopback"
                raise ValueError(
                    f"MEDSHARE_{name} is the public development default; set a real secret ({where})"
                )
            if self.env == "production" and len(value) < MIN_SECRET:
                raise ValueError(f"MEDSHARE_{name} must have at least {MIN_SECRET} characters in production")
        return self

    @property
    def development(self) -> bool:
        """A development stack: env local and every endpoint on loopback. Only there are the
        public development secrets, and secrets kept in the state folder, accepted."""
        brokers = [b.strip() for b in self.kafka_bootstrap.split(",")]
        stores = [urlsplit(self.cities_endpoint).netloc, self.s3_host]
        return self.env == "local" and all(map(_loopback, stores + brokers))

    @property
    def province_secret(self) -> SecretStr:
        """The province key; the public development one only on a development stack."""
        if self.province_key is not None:
            return self.province_key
        if self.development:
            return SecretStr(DEV_PROVINCE_KEY)
        raise ConfigError("MEDSHARE_PROVINCE_KEY is needed to pseudonymise or look up resident IDs")

    @property
    def root_password(self) -> SecretStr:
        if self.s3_root_password is not None:
            return self.s3_root_password
        if self.development:
            return SecretStr(DEV_ROOT_PASSWORD)
        raise ConfigError("MEDSHARE_S3_ROOT_PASSWORD is needed to administer the object store")

    @property
    def s3_host(self) -> str:
        """host:port of the S3 endpoint, as the minio client and MinIO's --address want it."""
        return urlsplit(self.s3_endpoint).netloc

    @property
    def s3_secure(self) -> bool:
        return urlsplit(self.s3_endpoint).scheme == "https"

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        """This site's broker: the first of the bootstrap list."""
        host, _, port = self.kafka_bootstrap.split(",")[0].rpartition(":")
        return host, int(port)

    @property
    def site_ids(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.sites.split(",") if s.strip())

    @property
    def site_id(self) -> str:
        """The provincial site this process belongs to."""
        return self.site or self.site_ids[0]

    @property
    def multi_site(self) -> bool:
        return len(self.site_ids) > 1

    @property
    def kafka_servers(self) -> str:
        """Every broker a client may bootstrap from: as given, or with two sites on a development
        stack (one broker given) every site's, this site's first — a client that starts while a
        site is down must still find the cluster."""
        if "," in self.kafka_bootstrap or not (self.multi_site and self.development):
            return self.kafka_bootstrap
        host, port = self.kafka_host_port
        ports = [port + i * self.site_port_step for i in range(len(self.site_ids))]
        return ",".join(f"{host}:{p}" for p in ports)

    @property
    def cities_endpoint(self) -> str:
        return self.cities_s3_endpoint or self.s3_endpoint

    @property
    def witness_controller_port(self) -> int:
        """The third KRaft voter's port (two sites on a development stack; of the stack's own
        settings, not a site's)."""
        return self.kafka_controller_port + len(self.site_ids) * self.site_port_step

    def site_named(self, name: str) -> str:
        """A site named in full (henan-dc-b) or by what follows its last '-' (b)."""
        matches = [s for s in self.site_ids if name in (s, s.rsplit("-", 1)[-1])]
        if len(matches) != 1:
            raise ConfigError(f"no site {name!r}: this stack has {', '.join(self.site_ids)}")
        return matches[0]

    def each_site(self) -> list[Settings]:
        """Every provincial site's settings on a development stack of two; else just these."""
        if self.multi_site and self.site is None:
            return [self.for_site(s) for s in self.site_ids]
        return [self]

    def for_site(self, site: str) -> Settings:
        """The development stack's settings as provincial site `site` sees them (see `sites`).

        Called on the stack's own settings (no `site` chosen yet); the first site is the stack
        itself, the others are offset by `site_port_step` and live under `<state>/sites/<id>`."""
        if site not in self.site_ids:
            raise ConfigError(f"unknown site {site!r}: this stack has {', '.join(self.site_ids)}")
        if self.site is not None:
            raise ConfigError(f"these settings are already site {self.site}'s")
        index = self.site_ids.index(site)
        step = index * self.site_port_step
        host, port = self.kafka_host_port
        brokers = self.kafka_servers.split(",")
        mine = f"{host}:{port + step}"
        return self.model_copy(
            update={
                "site": site,
                "s3_endpoint": self._site_store(site),
                "s3_console_port": self.s3_console_port + step,
                "kafka_bootstrap": ",".join([mine, *(b for b in brokers if b != mine)]),
                "kafka_controller_port": self.kafka_controller_port + step,
                "state_dir": self.state_dir if index == 0 else self.state_dir / "sites" / site,
                "secrets_dir": self.site_secrets_dir,
                "cities_s3_endpoint": self.cities_endpoint,
                "peer_s3_endpoints": ",".join(
                    self._site_store(other) for other in self.site_ids if other != site
                ),
            }
        )

    def _site_store(self, site: str) -> str:
        """Site `site`'s object store on a development stack (see `sites`; of the stack's own
        settings)."""
        url = urlsplit(self.s3_endpoint)
        step = self.site_ids.index(site) * self.site_port_step
        return f"{url.scheme}://{url.hostname}:{(url.port or 80) + step}"

    def site_environment(self) -> dict[str, str]:
        """The MEDSHARE_* variables that make a process of this site see these settings (a
        site's API or replicator started as its own process)."""
        names = (
            "sites",
            "site",
            "site_port_step",
            "s3_endpoint",
            "s3_console_port",
            "kafka_bootstrap",
            "kafka_controller_port",
            "state_dir",
            "secrets_dir",
            "cities_s3_endpoint",
            "peer_s3_endpoints",
        )
        values = {name: getattr(self, name) for name in names}
        return {f"MEDSHARE_{k.upper()}": str(v) for k, v in values.items() if v is not None}

    @property
    def peer_endpoints(self) -> list[str]:
        return [e.strip() for e in self.peer_s3_endpoints.split(",") if e.strip()]

    @property
    def spark_jars_dir(self) -> Path:
        return self.cache_dir / "jars" / "spark"

    @property
    def kafka_jars_dir(self) -> Path:
        return self.cache_dir / "jars" / "kafka"

    @property
    def bin_dir(self) -> Path:
        return self.cache_dir / "bin"

    @property
    def site_secrets_dir(self) -> Path:
        return self.secrets_dir or self.state_dir / "secrets"

    def site_secret(self, site: str) -> SecretStr:
        """The object-store secret of one site identity (a city, the province, a component).

        Each is its own random secret, derivable from no other: from MEDSHARE_SITE_SECRET_<SITE>,
        or on a development stack from the file `medshare up` made for it.
        """
        given = os.environ.get(secret_env(site))
        if given:
            if self.env == "production" and len(given) < MIN_SECRET:
                raise ConfigError(f"{secret_env(site)} must have at least {MIN_SECRET} characters")
            return SecretStr(given)
        path = self.site_secrets_dir / site
        if self.development:
            try:
                return SecretStr(path.read_text().strip())
            except OSError:
                pass
        raise ConfigError(
            f"no secret for the object-store identity {site!r}: set {secret_env(site)}"
            + (" (or run `medshare up`, which makes a development stack's)" if self.development else "")
        )

    def ensure_site_secret(self, site: str) -> None:
        """On a development stack: make the site's secret file if neither it nor the variable exists."""
        if os.environ.get(secret_env(site)) or not self.development:
            return
        path = self.site_secrets_dir / site
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(30))


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
