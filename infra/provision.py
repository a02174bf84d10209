"""What `up` creates inside the running services: buckets, one object-store user per site whose
policy allows only that site's buckets, and the Kafka topics. Every step is idempotent."""

from __future__ import annotations

import json
from typing import Any

from minio import MinioAdmin
from minio.credentials.providers import StaticProvider

from lakehouse import kafka
from lakehouse.settings import Settings
from lakehouse.storage import (
    PROVINCE_SITE,
    root_credentials,
    s3_client,
    site_credentials,
    storage_errors,
)
from lakehouse.topology import Topology


def site_buckets(topology: Topology) -> dict[str, tuple[str, ...]]:
    """Which buckets each site's user may use."""
    sites = {c.id: tuple(c.buckets.model_dump().values()) for c in topology.cities}
    sites[PROVINCE_SITE] = (topology.province.buckets.lakehouse, topology.province.buckets.gold)
    return sites


def bucket_policy(buckets: tuple[str, ...]) -> dict[str, Any]:
    resources = [f"arn:aws:s3:::{b}" for b in buckets] + [f"arn:aws:s3:::{b}/*" for b in buckets]
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": resources}],
    }


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
    admin = _admin(settings)
    for site, buckets in site_buckets(topology).items():
        creds = site_credentials(settings, site)
        policy = f"medshare-{site}"
        with storage_errors(f"create user and policy for site {site}"):
            admin.policy_add(policy, policy=bucket_policy(buckets))
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
