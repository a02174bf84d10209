from pathlib import Path

import pytest

from lakehouse.errors import ConfigError
from lakehouse.settings import load_settings


def test_defaults_describe_a_loopback_stack() -> None:
    s = load_settings()
    assert s.s3_host.startswith("127.0.0.1:")
    assert s.kafka_host_port[0] == "127.0.0.1"


def test_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSHARE_S3_ENDPOINT", "http://127.0.0.1:19000")
    monkeypatch.setenv("MEDSHARE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    s = load_settings()
    assert s.s3_host == "127.0.0.1:19000"
    assert s.kafka_host_port == ("127.0.0.1", 19092)


def test_production_refuses_development_and_short_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSHARE_ENV", "production")
    # A component that pseudonymises nothing needs no key; one that does is told it is missing.
    with pytest.raises(ConfigError, match="MEDSHARE_PROVINCE_KEY is needed"):
        load_settings().province_secret  # noqa: B018
    monkeypatch.setenv("MEDSHARE_PROVINCE_KEY", "medshare-dev-province-key")
    with pytest.raises(ConfigError, match="MEDSHARE_PROVINCE_KEY is the public development default"):
        load_settings()
    monkeypatch.setenv("MEDSHARE_PROVINCE_KEY", "too-short-for-production")
    with pytest.raises(ConfigError, match="at least 32"):
        load_settings()
    monkeypatch.setenv("MEDSHARE_PROVINCE_KEY", "k" * 40)
    assert load_settings().env == "production"
    monkeypatch.setenv("MEDSHARE_S3_ROOT_PASSWORD", "medshare-dev-secret")
    with pytest.raises(ConfigError, match="MEDSHARE_S3_ROOT_PASSWORD"):
        load_settings()


def test_development_secrets_only_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """env defaults to local; that alone no longer lets a real host run on the public key."""
    monkeypatch.setenv("MEDSHARE_S3_ENDPOINT", "http://minio.pdc.henan:9000")
    monkeypatch.setenv("MEDSHARE_PROVINCE_KEY", "medshare-dev-province-key")
    with pytest.raises(ConfigError, match="endpoints off loopback"):
        load_settings()
    monkeypatch.delenv("MEDSHARE_PROVINCE_KEY")
    settings = load_settings()
    with pytest.raises(ConfigError, match="MEDSHARE_PROVINCE_KEY is needed"):
        settings.province_secret  # noqa: B018
    assert not settings.development
    with pytest.raises(ConfigError, match="MEDSHARE_S3_ROOT_PASSWORD is needed"):
        settings.root_password  # noqa: B018


def test_short_root_password_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        load_settings(s3_root_password="short")


def test_site_secrets_are_random_per_site_and_not_derived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(secrets_dir=tmp_path)
    with pytest.raises(ConfigError, match="MEDSHARE_SITE_SECRET_API_READER"):
        s.site_secret("api-reader")
    for site in ("zhengzhou", "luoyang"):
        s.ensure_site_secret(site)
        assert (tmp_path / site).stat().st_mode & 0o777 == 0o600
    a, b = s.site_secret("zhengzhou"), s.site_secret("luoyang")
    assert a.get_secret_value() != b.get_secret_value() and len(a.get_secret_value()) >= 32
    s.ensure_site_secret("zhengzhou")  # made once, kept after
    assert s.site_secret("zhengzhou") == a
    # Another stack with the same root password gets other secrets: nothing derives them.
    other = load_settings(secrets_dir=tmp_path / "other", s3_root_password=s.root_password)
    other.ensure_site_secret("zhengzhou")
    assert other.site_secret("zhengzhou") != a
    assert a.get_secret_value() not in repr(a)
    # A deployment hands a component its own secret; the file is not read then.
    monkeypatch.setenv("MEDSHARE_SITE_SECRET_ZHENGZHOU", "z" * 40)
    assert s.site_secret("zhengzhou").get_secret_value() == "z" * 40
