"""Object-store access: per-site credentials, the minio client, delta-rs storage options, URIs.

Everything here speaks plain S3 (endpoint + access key + secret), so any S3-compatible store
can replace MinIO by configuration alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from minio import Minio
from minio.error import MinioException, S3Error
from pydantic import SecretStr
from urllib3.exceptions import HTTPError

from lakehouse.errors import StorageError
from lakehouse.settings import Settings

PROVINCE_SITE = "province"
# Provincial analysts: read the provincial lakehouse, write the gold bucket (see infra.provision).
ANALYTICS_SITE = "analytics"
# Delta Sharing: the API keeps per-grant copies in the shared bucket (reads the lakehouse, writes
# only the shared bucket), and signs recipients' URLs as an identity that can read nothing else.
SHARING_SITE = "sharing"
SIGNER_SITE = "sharing-signer"
# The sharing API reads the provincial tables as an identity that can only read them, and keeps
# its audit trail in a bucket of its own that it can append to but not delete from.
API_READER_SITE = "api-reader"
AUDIT_SITE = "audit"
# The identities of a provincial site: they use the site's own object store. Every other identity
# is a city's and uses the cities' store (the same one unless `cities_s3_endpoint` says otherwise).
PROVINCIAL_IDENTITIES = frozenset(
    {PROVINCE_SITE, ANALYTICS_SITE, SHARING_SITE, SIGNER_SITE, API_READER_SITE, AUDIT_SITE}
)


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """One object-store identity."""

    access_key: str
    secret_key: SecretStr
    # The object store the identity lives in; None: the settings' own (`s3_endpoint`).
    endpoint: str | None = None


def root_credentials(settings: Settings, endpoint: str | None = None) -> Credentials:
    """The store's administrator: of this site's store, or of the one at `endpoint`."""
    return Credentials(access_key=settings.s3_root_user, secret_key=settings.root_password, endpoint=endpoint)


def site_credentials(settings: Settings, site: str) -> Credentials:
    """The identity of one site: a city id, or `province`. Its policy allows only its buckets."""
    endpoint = settings.s3_endpoint if site in PROVINCIAL_IDENTITIES else settings.cities_endpoint
    return Credentials(
        access_key=f"medshare-{site}", secret_key=settings.site_secret(site), endpoint=endpoint
    )


def endpoint_of(settings: Settings, credentials: Credentials) -> str:
    return credentials.endpoint or settings.s3_endpoint


def s3_client(settings: Settings, credentials: Credentials) -> Minio:
    endpoint = urlsplit(endpoint_of(settings, credentials))
    return Minio(
        endpoint.netloc,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key.get_secret_value(),
        secure=endpoint.scheme == "https",
        region=settings.s3_region,
    )


def delta_storage_options(settings: Settings, credentials: Credentials) -> dict[str, str]:
    """Storage options for delta-rs (`deltalake`) on the configured S3 endpoint."""
    endpoint = endpoint_of(settings, credentials)
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": credentials.access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.secret_key.get_secret_value(),
        "AWS_REGION": settings.s3_region,
        "AWS_ALLOW_HTTP": "true" if endpoint.startswith("http://") else "false",
        # MinIO honours If-None-Match/If-Match: safe concurrent commits without a lock table.
        "aws_conditional_put": "etag",
    }


def s3_uri(bucket: str, path: str = "") -> str:
    """The URI delta-rs and pyarrow use."""
    return f"s3://{bucket}/{path.lstrip('/')}".rstrip("/")


def s3a_uri(bucket: str, path: str = "") -> str:
    """The URI Spark's Hadoop s3a filesystem uses for the same object."""
    return f"s3a://{bucket}/{path.lstrip('/')}".rstrip("/")


def remove_prefix(client: Minio, buckets: list[str], prefix: str) -> None:
    """Delete every object under `prefix` in `buckets` (what a benchmark or test run wrote)."""
    from minio.deleteobjects import DeleteObject

    for bucket in buckets:
        names = [
            DeleteObject(o.object_name)
            for o in client.list_objects(bucket, prefix=prefix, recursive=True)
            if o.object_name
        ]
        for start in range(0, len(names), 1000):  # the S3 limit per request
            list(client.remove_objects(bucket, names[start : start + 1000]))


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Translate minio/urllib3 failures into StorageError naming what we were doing."""
    try:
        yield
    except S3Error as exc:
        raise StorageError(f"{action}: {exc.code}: {exc.message}") from exc
    except (MinioException, HTTPError, OSError) as exc:
        raise StorageError(f"{action}: {exc}") from exc
