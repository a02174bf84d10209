"""What `up` creates inside the running services: buckets, one object-store user per site whose
policy allows only that site's buckets, and the Kafka topics. Every step is idempotent."""

from __future__ import annotations

import json
from typing import Any

from minio import MinioAdmin
from minio.commonconfig import ENABLED
from minio.credentials.providers import StaticProvider
from minio.versioningconfig import VersioningConfig

from lakehouse import kafka
from lakehouse.settings import Settings
from lakehouse.storage import (
    ANALYTICS_SITE,
    API_READER_SITE,
    AUDIT_SITE,
    PROVINCE_SITE,
    SHARING_SITE,
    SIGNER_SITE,
    root_credentials,
    s3_client,
    site_credentials,
    storage_errors,
)
from lakehouse.topology import Topology

# What the audit identity may do in its bucket: read and append, never delete (the bucket is
# versioned, so a key written again keeps its earlier version too) or change the versioning.
APPEND_ONLY = ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation"]


def site_buckets(topology: Topology) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Which buckets each site's user may use: (read-write, read-only)."""
    sites: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        c.id: (tuple(c.buckets.model_dump().values()), ()) for c in topology.cities
    }
    province = topology.province.buckets
    sites[PROVINCE_SITE] = ((province.lakehouse, province.gold), ())
    # Analysts read the provincial tables and write only the gold ones: their jobs cannot
    # change what the replicator wrote, whatever code they submit.
    sites[ANALYTICS_SITE] = ((province.gold,), (province.lakehouse,))
    # A pre-signed URL carries its signer's rights to one object; signed by an identity that can
    # read only the shared copies, no URL can ever reach a raw provincial file.
    sites[SHARING_SITE] = ((province.shared,), (province.lakehouse,))
    sites[SIGNER_SITE] = ((), (province.shared,))
    # The sharing API reads the tables and may change none of them.
    sites[API_READER_SITE] = ((), (province.lakehouse,))
    sites[AUDIT_SITE] = ((), ())  # its policy is APPEND_ONLY on the audit bucket (below)
    return sites


def site_policy(topology: Topology, site: str) -> dict[str, Any]:
    if site == AUDIT_SITE:
        bucket = topology.province.buckets.audit
        resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
        return {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": APPEND_ONLY, "Resource": resources}],
        }
    return bucket_policy(*site_buckets(topology)[site])


def bucket_policy(read_write: tuple[str, ...], read_only: tuple[str, ...] = ()) -> dict[str, Any]:
    def resources(buckets: tuple[str, ...]) -> list[str]:
        return [f"arn:aws:s3:::{b}" for b in buckets] + [f"arn:aws:s3:::{b}/*" for b in buckets]

    statements: list[dict[str, Any]] = []
    if read_write:
        statements.append({"Effect": "Allow", "Action": ["s3:*"], "Resource": resources(read_write)})
    if read_only:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": resources(read_only),
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _admin(settings: Settings) -> MinioAdmin:
    root = root_credentials(settings)
    return MinioAdmin(
        endpoint=settings.s3_host,
        credentials=StaticProvider(root.access_key, root.secret_key.get_secret_value()),
        region=settings.s3_region,
        secure=settings.s3_secure,
    )


def provision_storage(settings: Settings, topology: Topology) -> None:
    client = s3_client(settings, root_credentials(settings))
    for bucket in topology.all_buckets():
        with storage_errors(f"create bucket {bucket}"):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
    with storage_errors(f"turn versioning on for {topology.province.buckets.audit}"):
        client.set_bucket_versioning(topology.province.buckets.audit, VersioningConfig(ENABLED))
    admin = _admin(settings)
    for site in site_buckets(topology):
        settings.ensure_site_secret(site)
        creds = site_credentials(settings, site)
        policy = f"medshare-{site}"
        with storage_errors(f"create user and policy for site {site}"):
            admin.policy_add(policy, policy=site_policy(topology, site))
            admin.user_add(creds.access_key, creds.secret_key.get_secret_value())
            attached = json.loads(admin.user_info(creds.access_key)).get("policyName", "")
            if policy not in attached.split(","):
                admin.attach_policy([policy], user=creds.access_key)


def provision_topics(settings: Settings, topology: Topology) -> list[str]:
    client = kafka.admin(settings)
    try:
        return kafka.ensure_topics(client, topology)
    finally:
        client.close()
