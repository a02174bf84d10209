"""Everything a request needs, built once per process from the two settings objects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from lakehouse import kafka
from lakehouse.contracts import load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.storage import (
    API_READER_SITE,
    AUDIT_SITE,
    SHARING_SITE,
    SIGNER_SITE,
    delta_storage_options,
    s3_client,
    s3_uri,
    site_credentials,
)
from lakehouse.topology import Topology, load_topology
from sharing_api.audit import AuditFlusher, AuditStore, claim_journal
from sharing_api.catalog import DatasetView, catalog
from sharing_api.consent import Consents
from sharing_api.copies import CopySync, CopyWriter
from sharing_api.db import Database
from sharing_api.grants import GrantBook
from sharing_api.identities import Identities
from sharing_api.journal import Journal
from sharing_api.keeper import Keeper, TableWatch, read_status
from sharing_api.lakeview import LakeView
from sharing_api.masking import Masker
from sharing_api.operations import OperationsLink, ship
from sharing_api.ratelimit import RateLimiter
from sharing_api.reviews import Reviews
from sharing_api.settings import ApiSettings
from sharing_api.shares import Shares
from sharing_api.signing import UrlSigner

# object_store's retry settings for another site's store: a few quick tries, not its default
# minutes of back-off, while the site is down.
PEER_RETRIES = {"max_retries": "2", "retry_timeout": "5s", "connect_timeout": "2s"}


@dataclass
class Services:
    platform: Settings
    api: ApiSettings
    topology: Topology
    views: dict[str, DatasetView]
    grants: GrantBook
    identities: Identities
    consents: Consents
    reviews: Reviews
    lake: LakeView
    journal: Journal
    audit: AuditStore
    masker: Masker
    limiter: RateLimiter
    login_failures: RateLimiter
    key: ProvinceKey
    shares: Shares

    def start(self) -> None:
        self.lake.start()
        self.shares.sync.start()

    def stop(self) -> None:
        self.shares.sync.stop()
        self.lake.stop()
        self.journal.close()

    def keeper_status(self) -> dict[str, Any] | None:
        return keeper_status(self.platform, self.api)


def keeper_status(platform: Settings, api: ApiSettings) -> dict[str, Any] | None:
    """The instance keeper's status; None when it is not running (it writes every refresh
    interval, so three missed passes mean it is gone)."""
    return read_status(api.keeper_status(platform), max_age=3 * api.refresh_seconds + 10)


def tables_root(platform: Settings, api: ApiSettings, topology: Topology) -> str:
    return (api.tables_root or s3_uri(topology.province.buckets.lakehouse)).rstrip("/")


def audit_table(api: ApiSettings, topology: Topology) -> str:
    return api.audit_table or s3_uri(topology.province.buckets.audit, "access_log")


def share_root(api: ApiSettings, topology: Topology) -> str:
    return (api.share_root or s3_uri(topology.province.buckets.shared)).rstrip("/")


def build_shares(
    platform: Settings,
    api: ApiSettings,
    topology: Topology,
    *,
    grants: GrantBook,
    consents: Consents,
    masker: Masker,
) -> Shares:
    """The Delta Sharing side: copies written as the sharing identity (masked as the JSON API
    masks), URLs signed as the signer."""
    sharing = site_credentials(platform, SHARING_SITE)
    options = delta_storage_options(platform, sharing)
    shares = Shares(
        root=share_root(api, topology),
        options=options,
        client=s3_client(platform, sharing),
        signer=UrlSigner(
            endpoint=api.share_s3_endpoint or platform.s3_endpoint,
            credentials=site_credentials(platform, SIGNER_SITE),
            region=platform.s3_region,
            lifetime=dt.timedelta(minutes=api.share_url_minutes),
        ),
        grants=grants,
        views=grants.views,
        consents=consents,
    )
    shares.sync = CopySync(
        CopyWriter(tables_root=tables_root(platform, api, topology), storage_options=options, masker=masker),
        specs=shares.specs,
        opted_out=shares.opted_out,
        lock_path=api.state_path(platform) / f"share-sync-{api.instance}.lock",
        interval=api.share_sync_seconds,
        vacuum=shares.vacuum,
    )
    return shares


def audit_store(platform: Settings, api: ApiSettings, topology: Topology) -> AuditStore:
    # Its own bucket, as an identity that can append and read but never delete; the same table in
    # the other provincial sites' stores (tried briefly: a site away must not hold up the flush).
    credentials = site_credentials(platform, AUDIT_SITE)
    peers = tuple(
        delta_storage_options(platform, replace(credentials, endpoint=endpoint)) | PEER_RETRIES
        for endpoint in platform.peer_endpoints
    )
    return AuditStore(
        instance=api.instance,
        journals=lambda: api.journal_files(platform),
        table_uri=audit_table(api, topology),
        storage_options=delta_storage_options(platform, credentials),
        peers=peers,
    )


def table_uris(
    platform: Settings, api: ApiSettings, topology: Topology, views: Iterable[str]
) -> dict[str, str]:
    root = tables_root(platform, api, topology)
    return {name: f"{root}/{name}" for name in views}


def build_keeper(platform: Settings, api: ApiSettings) -> Keeper:
    """The instance's background work, for the process that supervises its workers."""
    topology = load_topology(platform.platform_dir)
    return Keeper(
        operations=OperationsLink(
            platform,
            Database(api.db_path(platform)),
            api.operations_topic_name(topology),
            api.grants_path(platform),
        ),
        flusher=AuditFlusher(
            audit_store(platform, api, topology),
            interval=api.audit_flush_seconds,
            batch_rows=api.audit_batch_rows,
        ),
        watch=TableWatch(
            table_uris(platform, api, topology, catalog(load_contracts(platform.platform_dir))),
            delta_storage_options(platform, site_credentials(platform, API_READER_SITE)),
        ),
        status=api.keeper_status(platform),
        lock=api.keeper_status(platform).with_suffix(".lock"),
        interval=api.refresh_seconds,
    )


def identities(platform: Settings, api: ApiSettings) -> Identities:
    """The credential store alone, for the `medshare hospitals` commands (which ship their
    changes themselves: `ship_changes`)."""
    topology = load_topology(platform.platform_dir)
    return Identities(Database(api.db_path(platform)), topology)


def ship_changes(platform: Settings, api: ApiSettings) -> int:
    """Ship the outbox to the operations topic now (what the keeper does continuously)."""
    topology = load_topology(platform.platform_dir)
    producer = kafka.producer(platform, max_block_ms=10_000, request_timeout_ms=10_000)
    try:
        with kafka.transport_errors("ship changes to the operations topic"):
            return ship(Database(api.db_path(platform)), producer, api.operations_topic_name(topology))
    finally:
        producer.close(timeout=5)


def build_services(platform: Settings, api: ApiSettings) -> Services:
    topology = load_topology(platform.platform_dir)
    views = catalog(load_contracts(platform.platform_dir))
    db = Database(api.db_path(platform), settle_seconds=api.operations_wait_seconds)
    options = delta_storage_options(platform, site_credentials(platform, API_READER_SITE))
    path, _lock = claim_journal(lambda slot: api.journal_lock(platform, slot))  # held for the process's life
    grants = GrantBook(api.grants_path(platform), topology, views, db=db)
    consents = Consents(db)
    masker = Masker(platform.province_secret.get_secret_value().encode())

    def table_versions() -> object | None:
        status = keeper_status(platform, api)
        return None if status is None else status.get("tables")

    return Services(
        platform=platform,
        api=api,
        topology=topology,
        views=views,
        grants=grants,
        identities=Identities(db, topology),
        consents=consents,
        reviews=Reviews(db),
        lake=LakeView(
            table_uris=table_uris(platform, api, topology, views),
            views=views,
            topology=topology,
            storage_options=options,
            refresh_seconds=api.refresh_seconds,
            keep_seconds=api.cursor_minutes * 60,
            versions=table_versions,
        ),
        journal=Journal(path),
        audit=audit_store(platform, api, topology),
        masker=masker,
        limiter=RateLimiter(
            api.rate_limit_path(platform), name="requests", rate=api.rate_per_second, burst=api.rate_burst
        ),
        login_failures=RateLimiter(
            api.rate_limit_path(platform),
            name="login_failures",
            rate=api.login_failures_per_minute / 60,
            burst=api.login_failure_burst,
        ),
        key=ProvinceKey.from_settings(platform),
        shares=build_shares(platform, api, topology, grants=grants, consents=consents, masker=masker),
    )
