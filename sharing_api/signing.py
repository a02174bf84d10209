"""Pre-signed GET URLs for the files of shared copies.

Signed for the S3 endpoint the recipient reaches (not necessarily the one the API uses), path-style
(MinIO serves buckets under the path, not as sub-domains), by an identity that can read only the
shared bucket: a URL carries its signer's rights to exactly one object, so no URL the API ever
signs can reach a raw provincial file.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

from minio import Minio

from lakehouse.storage import Credentials


class UrlSigner:
    def __init__(self, *, endpoint: str, credentials: Credentials, region: str, lifetime: dt.timedelta):
        parts = urlsplit(endpoint)
        # The region is given, so signing is pure computation: no request to the store.
        self._client = Minio(
            parts.netloc,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key.get_secret_value(),
            secure=parts.scheme == "https",
            region=region,
        )
        self.lifetime = lifetime

    def sign(self, bucket: str, key: str) -> tuple[str, int]:
        """The URL and when it expires (epoch milliseconds)."""
        now = dt.datetime.now(dt.UTC)
        url = self._client.presigned_get_object(bucket, key, expires=self.lifetime, request_date=now)
        return url, int((now + self.lifetime).timestamp() * 1000)
