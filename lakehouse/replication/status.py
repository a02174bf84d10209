"""How far the province is behind each city, for `medshare status`.

Read from the Delta logs themselves, not from the replicator's memory, so it is right even when
the replicator is down: the city's newest version against the `txn` version the provincial table
records for that city, and the age of the oldest city commit the province does not reflect yet.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from minio import Minio

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

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class LagRow:
    city: str
    dataset: str
    city_version: int | None
    applied_version: int | None
    # City commits the province does not reflect yet.
    behind: int
    # Age of the oldest of those commits; 0 when none; None when no commit time is readable.
    lag_seconds: float | None


def _province_table(uri: str, options: dict[str, str]) -> DeltaTable | None:
    try:
        return DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None  # Nothing replicated yet.
    except (DeltaError, OSError) as exc:
        # delta-rs colours its error chains for a terminal; strip that for the message.
        raise StorageError(f"open {uri}: {_ANSI.sub('', str(exc))}") from exc


def _oldest_pending_ms(log: DeltaLog, applied: int | None, latest: int) -> int | None:
    """Commit time of the first version not applied. When log cleanup has removed it, the newest
    commit's time is the best lower bound of the lag still readable."""
    for version in (0 if applied is None else applied + 1, latest):
        try:
            return log.commit(version).timestamp_ms
        except LogGap:
            continue
    return None


def replication_lag(
    settings: Settings,
    layout: ReplicationLayout,
    contracts: Mapping[str, Contract],
    *,
    now: float | None = None,
) -> list[LagRow]:
    """One row per shareable dataset and city whose curated table exists."""
    now = time.time() if now is None else now
    options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
    clients: dict[str, Minio] = {
        c.id: s3_client(settings, site_credentials(settings, c.id)) for c in layout.topology.cities
    }
    rows = []
    for name in sorted(n for n, c in contracts.items() if c.shareable):
        province = _province_table(layout.province_table(name).uri, options)
        for city in layout.topology.cities:
            log = DeltaLog(clients[city.id], layout.city_table(city.id, name), hospital=HOSPITAL, month=MONTH)
            with storage_errors(f"read the log of {log.table.uri}"):
                latest = log.latest_version()
                if latest is None:
                    continue
                applied = (
                    None if province is None else province.transaction_version(layout.app_id(city.id, name))
                )
                # Versions run from 0, so "nothing applied" is one behind version 0.
                behind = max(latest - (-1 if applied is None else applied), 0)
                lag: float | None = 0.0
                if behind:
                    first_ms = _oldest_pending_ms(log, applied, latest)
                    # max(): a city clock slightly ahead of ours must not show a negative lag.
                    lag = None if first_ms is None else max(now - first_ms / 1000, 0.0)
            rows.append(LagRow(city.id, name, latest, applied, behind, lag))
    return rows
