"""What `up` creates inside the running services: buckets, one object-store user per site whose
policy allows only that site's buckets, and the Kafka topics. Every step is idempotent."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

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
    PROVINCIAL_IDENTITIES,
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


def _admin(settings: Settings, endpoint: str) -> MinioAdmin:
    root = root_credentials(settings)
    url = urlsplit(endpoint)
    return MinioAdmin(
        endpoint=url.netloc,
        credentials=StaticProvider(root.access_key, root.secret_key.get_secret_value()),
        region=settings.s3_region,
        secure=url.scheme == "https",
    )


def store_contents(settings: Settings, topology: Topology) -> dict[str, tuple[list[str], list[str]]]:
    """What each object store holds: endpoint -> (buckets, identities). A provincial site's store
    holds the provincial buckets and identities; the cities' store the cities' (one store holds
    both unless `cities_s3_endpoint` names another)."""
    province = list(topology.province.buckets.model_dump().values())
    identities = list(site_buckets(topology))
    stores: dict[str, tuple[list[str], list[str]]] = {
        settings.s3_endpoint: (province, [i for i in identities if i in PROVINCIAL_IDENTITIES])
    }
    buckets, ids = stores.setdefault(settings.cities_endpoint, ([], []))
    buckets += [b for b in topology.all_buckets() if b not in province]
    ids += [i for i in identities if i not in PROVINCIAL_IDENTITIES]
    return stores


def provision_storage(settings: Settings, topology: Topology, *, cities: bool = True) -> None:
    """Buckets, users and policies in this site's store and (unless `cities` is false) the
    cities' store."""
    audit = topology.province.buckets.audit
    for endpoint, (buckets, identities) in store_contents(settings, topology).items():
        if not cities and endpoint != settings.s3_endpoint:
            continue
        client = s3_client(settings, root_credentials(settings, endpoint))
        for bucket in buckets:
            with storage_errors(f"create bucket {bucket} at {endpoint}"):
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
        if audit in buckets:
            with storage_errors(f"turn versioning on for {audit}"):
                client.set_bucket_versioning(audit, VersioningConfig(ENABLED))
        admin = _admin(settings, endpoint)
        for site in identities:
            settings.ensure_site_secret(site)
            creds = site_credentials(settings, site)
            policy = f"medshare-{site}"
            with storage_errors(f"create user and policy for site {site} at {endpoint}"):
                admin.policy_add(policy, policy=site_policy(topology, site))
                admin.user_add(creds.access_key, creds.secret_key.get_secret_value())
                attached = json.loads(admin.user_info(creds.access_key)).get("policyName", "")
                if policy not in attached.split(","):
                    admin.attach_policy([policy], user=creds.access_key)


def provision_topics(settings: Settings, topology: Topology) -> list[str]:
    client = kafka.admin(settings)
    try:
        return kafka.ensure_topics(client, topology, replication_factor=kafka.replicas(settings, topology))
    finally:
        client.close()
