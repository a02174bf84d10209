"""What the Delta Sharing endpoints need, in one place: where the copies are, the identity that
reads and writes them, the URL signer, which copies the grants call for, and their sync."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Mapping
from urllib.parse import urlsplit

from deltalake import DeltaTable
from minio import Minio
from minio.error import S3Error

from lakehouse.errors import StorageError
from lakehouse.storage import storage_errors
from sharing_api.catalog import DatasetView
from sharing_api.consent import Consents
from sharing_api.copies import SHARE_PURPOSES, CopySpec, CopySync, copy_specs, copy_state
from sharing_api.grants import GrantBook
from sharing_api.signing import UrlSigner


class Shares:
    def __init__(
        self,
        *,
        root: str,
        options: dict[str, str],
        client: Minio,
        signer: UrlSigner,
        grants: GrantBook,
        views: Mapping[str, DatasetView],
        consents: Consents,
    ):
        self.root = root.rstrip("/")
        self.options = options  # delta-rs storage options of the sharing identity
        self.client = client  # the same identity through minio, for log entries
        self.signer = signer
        self.grants = grants
        self.views = views
        self.consents = consents
        self.sync: CopySync  # set by build_services (it needs this object's specs and consents)
        self._specs: tuple[str, list[CopySpec]] | None = None
        self._lock = threading.Lock()

    def specs(self) -> list[CopySpec]:
        """The copies the grants in force call for (recomputed when the grants change)."""
        grants, etag = self.grants.current()
        with self._lock:
            if self._specs is None or self._specs[0] != etag:
                self._specs = (etag, copy_specs(grants, self.views, self.root))
            return self._specs[1]

    def opted_out(self, spec: CopySpec) -> frozenset[str]:
        purposes = tuple(p for p in spec.grant.purposes if p in SHARE_PURPOSES)
        return self.consents.opted_out_of_any(purposes)

    def vacuum(self, spec: CopySpec) -> int:
        """Delete the copy's data files outside its current snapshot — right after a rebuild, when
        the current version is the first one served, they belong to versions that are refused
        (older grants or consents). Returns how many were deleted."""
        table = DeltaTable(spec.uri, storage_options=self.options)
        state = copy_state(table)
        if state.version != state.first_servable:
            return 0  # updated since the rebuild: older served versions still need their files
        bucket, _, prefix = spec.uri.removeprefix("s3://").partition("/")
        live = set()
        for uri in table.file_uris():  # s3://<bucket>/<key>
            parts = urlsplit(uri)
            live.add(f"{parts.netloc}/{urllib.parse.unquote(parts.path.lstrip('/'))}")
        removed = 0
        with storage_errors(f"delete old files of {spec.uri}"):
            for obj in self.client.list_objects(bucket, prefix=f"{prefix}/", recursive=True):
                name = obj.object_name or ""
                if "/_delta_log/" in f"/{name}" or f"{bucket}/{name}" in live or name.endswith("/"):
                    continue
                self.client.remove_object(bucket, name)
                removed += 1
        return removed

    def log_entry(self, bucket: str, key: str) -> str:
        """One commit file of a copy's Delta log; FileNotFoundError when it is not (or no longer) there."""
        try:
            with storage_errors(f"read {bucket}/{key}"):
                response = self.client.get_object(bucket, key)
                try:
                    return response.read().decode("utf-8")
                finally:
                    response.close()
                    response.release_conn()
        except StorageError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NoSuchKey":
                raise FileNotFoundError(key) from exc
            raise
