"""Everything a request needs, built once per process from the two settings objects."""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.contracts import load_contracts
from lakehouse.pseudonyms import ProvinceKey
from lakehouse.settings import Settings
from lakehouse.storage import PROVINCE_SITE, delta_storage_options, s3_uri, site_credentials
from lakehouse.topology import Topology, load_topology
from sharing_api.audit import AuditFlusher, Journal, claim_journal
from sharing_api.catalog import DatasetView, catalog
from sharing_api.consent import Consents
from sharing_api.db import Database
from sharing_api.grants import GrantBook
from sharing_api.identities import Identities
from sharing_api.lakeview import LakeView
from sharing_api.masking import Masker
from sharing_api.ratelimit import RateLimiter
from sharing_api.settings import ApiSettings


@dataclass
class Services:
    platform: Settings
    api: ApiSettings
    topology: Topology
    views: dict[str, DatasetView]
    grants: GrantBook
    identities: Identities
    consents: Consents
    lake: LakeView
    journal: Journal
    flusher: AuditFlusher
    masker: Masker
    limiter: RateLimiter
    key: ProvinceKey

    def start(self) -> None:
        self.lake.start()
        self.flusher.start()

    def stop(self) -> None:
        self.lake.stop()
        self.flusher.stop()
        self.journal.close()


def tables_root(platform: Settings, api: ApiSettings, topology: Topology) -> str:
    return (api.tables_root or s3_uri(topology.province.buckets.lakehouse)).rstrip("/")


def audit_table(api: ApiSettings, topology: Topology) -> str:
    return api.audit_table or s3_uri(topology.province.buckets.lakehouse, "_audit/access_log")


def identities(platform: Settings, api: ApiSettings) -> Identities:
    """The credential store alone, for the `medshare hospitals` commands."""
    topology = load_topology(platform.platform_dir)
    return Identities(Database(api.db_path(platform)), topology)


def build_services(platform: Settings, api: ApiSettings) -> Services:
    topology = load_topology(platform.platform_dir)
    views = catalog(load_contracts(platform.platform_dir))
    db = Database(api.db_path(platform))
    options = delta_storage_options(platform, site_credentials(platform, PROVINCE_SITE))
    root = tables_root(platform, api, topology)
    path, _lock = claim_journal(lambda slot: api.journal_lock(platform, slot))  # held for the process's life
    journal = Journal(path)
    return Services(
        platform=platform,
        api=api,
        topology=topology,
        views=views,
        grants=GrantBook(api.grants_path(platform), topology, views),
        identities=Identities(db, topology),
        consents=Consents(db),
        lake=LakeView(
            table_uris={name: f"{root}/{name}" for name in views},
            views=views,
            topology=topology,
            storage_options=options,
            refresh_seconds=api.refresh_seconds,
            keep_seconds=api.cursor_minutes * 60,
        ),
        journal=journal,
        flusher=AuditFlusher(
            journal,
            table_uri=audit_table(api, topology),
            storage_options=options,
            instance=f"{api.instance}/{path.stem.rsplit('-', 1)[-1]}",
            interval=api.audit_flush_seconds,
            batch_rows=api.audit_batch_rows,
        ),
        masker=Masker(platform.province_key.get_secret_value().encode()),
        limiter=RateLimiter(rate=api.rate_per_second, burst=api.rate_burst),
        key=ProvinceKey.from_settings(platform),
    )
