"""`up`, `down` and `status` of the whole development stack: one provincial site, or two side by
side with the witness controller their Kafka quorum needs (docs/sites.md)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace

from infra import install, process
from infra.provision import provision_storage, provision_topics
from infra.services import (
    kafka_spec,
    minio_spec,
    new_cluster_id,
    prepare_kafka,
    prepare_witness,
    witness_spec,
)
from lakehouse.errors import ConfigError
from lakehouse.settings import Settings
from lakehouse.topology import Topology

Report = Callable[[str], None]


def site_settings(settings: Settings, sites: Sequence[str] | None = None) -> list[Settings]:
    """Each chosen site's settings (all the stack's by default); one site: the stack itself."""
    chosen = list(sites or settings.site_ids)
    unknown = [s for s in chosen if s not in settings.site_ids]
    if unknown:
        raise ConfigError(
            f"unknown site(s) {', '.join(unknown)}: this stack has {', '.join(settings.site_ids)}"
        )
    if not settings.multi_site:
        return [settings]
    return [settings.for_site(s) for s in chosen]


def specs(settings: Settings, sites: Sequence[str] | None = None) -> list[process.ServiceSpec]:
    """In start order; stopped in reverse. The witness belongs to no site and runs with any."""
    return ([witness_spec(settings)] if settings.multi_site else []) + site_specs(settings, sites)


def site_specs(settings: Settings, sites: Sequence[str] | None = None) -> list[process.ServiceSpec]:
    """The services of the chosen sites (each site's MinIO and broker), without the witness."""
    found = []
    for site in site_settings(settings, sites):
        for spec in (minio_spec(site), kafka_spec(site)):
            # Two sites: each process named for its site (also its pid file's name).
            found.append(replace(spec, name=f"{spec.name}-{site.site_id}") if settings.multi_site else spec)
    return found


def _cluster_id(settings: Settings) -> str:
    """Every node of a two-site cluster is formatted with one id, kept in the stack's folder."""
    path = settings.state_dir / "kafka-cluster.id"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id() + "\n")
    return path.read_text().strip()


def up(
    settings: Settings,
    topology: Topology,
    report: Report = lambda _: None,
    sites: Sequence[str] | None = None,
) -> list[str]:
    """Install what is missing, start what is not running, provision; returns services started."""
    install.ensure_all(settings, report)
    for site_id in settings.site_ids:
        topology.data_centre(site_id)  # a site the topology does not know is a typo
    cluster = _cluster_id(settings) if settings.multi_site else None
    chosen = site_settings(settings, sites)
    if cluster is not None:
        prepare_witness(settings, cluster)
    for site in chosen:
        prepare_kafka(site, cluster, topology.data_centre(site.site_id).rack)
    started = []
    for spec in specs(settings, sites):
        report(f"starting {spec.name}")
        if process.start(spec):
            started.append(spec.name)
    # A site's store holds the provincial buckets; the cities' store (in a development stack the
    # first site's) the cities' — provisioned when it is one of the stores just started.
    running = {site.s3_endpoint for site in chosen}
    for site in chosen:
        report(f"creating buckets, site users and policies ({site.site_id})")
        provision_storage(site, topology, cities=site.cities_endpoint in running)
    report("creating Kafka topics")
    provision_topics(chosen[0], topology)
    return started


def down(settings: Settings, sites: Sequence[str] | None = None) -> list[str]:
    """Stop only the processes this project started (from their pid files); with `sites`, only
    theirs (the witness keeps running)."""
    chosen = specs(settings) if sites is None else site_specs(settings, sites)
    return [spec.name for spec in reversed(chosen) if process.stop(spec)]


def status(settings: Settings) -> list[process.ServiceStatus]:
    return [process.status(spec) for spec in specs(settings)]


def is_up(settings: Settings) -> bool:
    return all(s.healthy for s in status(settings))


def clean_state(settings: Settings) -> None:
    """Delete all service data (buckets, topics); refuses while a service runs."""
    if any(s.pid is not None for s in status(settings)):
        raise process.ServiceError("stop the stack first (`medshare down`)")
    shutil.rmtree(settings.state_dir, ignore_errors=True)
