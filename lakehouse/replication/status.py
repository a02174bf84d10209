"""How far the province is behind each city, read from the Delta logs themselves (not from the
replicator's memory): the city's newest version against the `txn` version the provincial table
records for that city, and the age of the oldest city commit not yet applied."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lakehouse.contracts import Contract
from lakehouse.errors import StorageError
from lakehouse.replication.deltalog import DeltaLog, LogGap
from lakehouse.replication.layout import HOSPITAL, MONTH, ReplicationLayout
from lakehouse.settings import Settings
from lakehouse.storage import (
    PROVINCE_SITE,
    delta_storage_options,
    s3_client,
    site_credentials,
    storage_errors,
)


@dataclass(frozen=True)
class LagRow:
    city: str
    dataset: str
    city_version: int | None
    applied_version: int | None
    behind: int
    lag_seconds: float | None


def replication_lag(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    *,
    now: float | None = None,
) -> list[LagRow]:
    now = time.time() if now is None else now
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    rows = []
    for name in sorted(n for n, c in contracts.items() if c.shareable):
        uri = layout.province_table(name).uri
        try:
            province: DeltaTable | None = DeltaTable(uri, storage_options=options)
        except TableNotFoundError:
            province = None
        except OSError as exc:
            raise StorageError(f"open {uri}: {exc}") from exc
        for city in layout.topology.cities:
            log = DeltaLog(
                s3_client(settings, site_credentials(settings, city.id)),
                layout.city_table(city.id, name),
                hospital=HOSPITAL,
                month=MONTH,
            )
            with storage_errors(f"read the log of {log.table.uri}"):
                latest = log.latest_version()
                if latest is None:
                    continue
                applied = (
                    None if province is None else province.transaction_version(layout.app_id(city.id, name))
                )
                behind = latest - (applied if applied is not None else -1)
                lag: float | None = 0.0
                if behind > 0:
                    first = 0 if applied is None else applied + 1
                    try:
                        lag = max(now - log.commit(first).timestamp_ms / 1000, 0.0)
                    except LogGap:
                        lag = None
            rows.append(LagRow(city.id, name, latest, applied, max(behind, 0), lag))
    return rows
