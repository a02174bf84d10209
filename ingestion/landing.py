"""A city's landing bucket: `medshare land` uploads hospital exports; the job lists and reads them.

Keys mirror the export folder: `<hospital>/<dataset>/<file>` for per-table extracts,
`<hospital>/fhir/<file>` for FHIR bundles, `<hospital>/dicom/<...>/<file>.dcm` for DICOM files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from lakehouse.storage import storage_errors

Progress = Callable[[int], None]


@dataclass(frozen=True, kw_only=True)
class LandedFile:
    key: str
    size: int
    etag: str


def land(
    client: Minio,
    bucket: str,
    folder: Path,
    progress: Progress = lambda _: None,
    *,
    prefix: str = "",
) -> list[str]:
    """Upload every file under `folder` (keys: `prefix` + path relative to it); returns the keys
    uploaded. A file whose content is already there under the same key is not sent again."""
    existing = {f.key: f.etag for f in list_landed(client, bucket, prefix=prefix)}
    uploaded = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(folder).as_posix()
        if key == "manifest.json":
            continue
        content = path.read_bytes()
        # Single-part uploads: MinIO's etag is the content's MD5, so a resend is skipped.
        if existing.get(key) == hashlib.md5(content, usedforsecurity=False).hexdigest():
            progress(len(content))
            continue
        with storage_errors(f"upload {key} to {bucket}"):
            client.fput_object(bucket, key, str(path), part_size=64 * 1024 * 1024)
        uploaded.append(key)
        progress(len(content))
    return uploaded


def list_landed(client: Minio, bucket: str, *, prefix: str = "") -> Iterator[LandedFile]:
    with storage_errors(f"list {bucket}"):
        for obj in client.list_objects(bucket, prefix=prefix or None, recursive=True):
            if obj.object_name and not obj.is_dir:
                yield LandedFile(key=obj.object_name, size=obj.size or 0, etag=(obj.etag or "").strip('"'))


def read_landed(client: Minio, bucket: str, key: str) -> bytes:
    with storage_errors(f"read {bucket}/{key}"):
        response = client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
