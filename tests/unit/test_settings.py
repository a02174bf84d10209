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


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSHARE_ENV", "production")
    with pytest.raises(ConfigError, match="MEDSHARE_S3_ROOT_PASSWORD"):
        load_settings()
    monkeypatch.setenv("MEDSHARE_S3_ROOT_PASSWORD", "a-real-secret-from-a-vault")
    with pytest.raises(ConfigError, match="MEDSHARE_PROVINCE_KEY"):
        load_settings()
    monkeypatch.setenv("MEDSHARE_PROVINCE_KEY", "another-real-secret")
    assert load_settings().env == "production"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        load_settings(s3_root_password="short")


def test_site_secrets_differ_per_site_and_hide_in_repr() -> None:
    s = load_settings()
    a, b = s.site_secret("zhengzhou"), s.site_secret("luoyang")
    assert a.get_secret_value() != b.get_secret_value()
    assert a.get_secret_value() not in repr(a)
    assert s.s3_root_password.get_secret_value() not in repr(s)
