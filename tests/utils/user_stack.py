"""The user's own stack, as the user's environment describes it (tests/conftest.py points the
test run at a private one): its settings and a listing of everything in it, to prove that tests
leave it as they found it."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from lakehouse import kafka
from lakehouse.settings import Settings
from lakehouse.storage import root_credentials, s3_client
from tests.utils.stack_env import USER_ENV

# The fields tests/conftest.py replaces for the test run.
_STACK_FIELDS = ("state_dir", "s3_endpoint", "s3_console_port", "kafka_bootstrap", "kafka_controller_port")


def user_settings() -> Settings:
    """Settings with the user's values (or the defaults) for every field the test run replaced."""
    values: dict[str, Any] = {}
    for name in _STACK_FIELDS:
        env = f"MEDSHARE_{name.upper()}"
        field = Settings.model_fields[name]
        if env in USER_ENV:
            values[name] = USER_ENV[env]
        elif field.default_factory is not None:
            values[name] = field.default_factory()  # type: ignore[call-arg]
        else:
            values[name] = field.default
    return Settings(**values)


def _reachable(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{settings.s3_endpoint}/minio/health/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def snapshot(settings: Settings) -> list[str] | None:
    """Every bucket, object (with size and ETag) and topic of the stack; None when it is not running."""
    if not _reachable(settings):
        return None
    client = s3_client(settings, root_credentials(settings))
    items = []
    for bucket in client.list_buckets():
        items.append(f"bucket {bucket.name}")
        for obj in client.list_objects(bucket.name, recursive=True):
            items.append(f"s3://{bucket.name}/{obj.object_name} {obj.size} {obj.etag}")
    host, port = settings.kafka_host_port
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return items
    admin = kafka.admin(settings)
    try:
        items += [f"topic {t}" for t in admin.list_topics()]
    finally:
        admin.close()
    return items
