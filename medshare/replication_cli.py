"""`medshare publish | replicator | verify` and the replication part of `medshare status`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakehouse.errors import MedshareError
from lakehouse.replication.layout import ReplicationLayout
from lakehouse.settings import Settings, get_settings
from lakehouse.topology import load_topology
from medshare.sites import SiteOption, site_settings
from medshare.ui import console, fail, progress_bar, service_logging

if TYPE_CHECKING:
    from lakehouse.replication.status import LagRow

log = logging.getLogger("medshare")

Namespace = Annotated[
    str,
    typer.Option(help="Prefix of tables, topics and consumer group (tests, benchmarks); empty = production."),
]


def _layout(settings: Settings, namespace: str) -> ReplicationLayout:
    return ReplicationLayout(load_topology(settings.platform_dir), namespace)


def _stop_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C ask for a clean stop: finish the unit in hand, commit, close."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("%s received: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def publish(
    city: Annotated[str, typer.Option(help="The city whose curated tables are published.")],
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep running: publish new commits as they appear (a service).")
    ] = False,
    interval: Annotated[float, typer.Option(help="With --follow: seconds between looks at the logs.")] = 0.5,
    namespace: Namespace = "",
) -> None:
    """Ship what the city's curated commits changed — shareable form only — to the province via Kafka.

    Each (dataset, version) goes as one Kafka transaction that also records it as published, so a
    restart neither skips nor repeats. Without --follow: one pass, then a summary."""
    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.publisher import Publisher

    settings = get_settings()
    try:
        layout = _layout(settings, namespace)
        if follow:
            service_logging()
            stop = _stop_on_signals()
            contracts, key = load_contracts(settings.platform_dir), ProvinceKey.from_settings(settings)
            publisher = Publisher(settings, layout, city, contracts, key)
            log.info("publishing %s's curated commits every %.1f s (SIGTERM stops)", city, interval)
            publisher.follow(stop, interval=interval)
            return
        with progress_bar() as bar:
            task = bar.add_task(f"publishing {city}", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=f"publishing {city}: {stage}", completed=done, total=total)

            publisher = Publisher(
                settings,
                layout,
                city,
                load_contracts(settings.platform_dir),
                ProvinceKey.from_settings(settings),
                progress=progress,
            )
            try:
                result = publisher.run_once()
            finally:
                publisher.close()
    except MedshareError as exc:
        fail(exc)
    if not result.datasets:
        console.print(f"nothing to publish: every committed version of {city} is already published")
        return
    table = Table("dataset", "version", "units", "rows", "messages", "MB", title=f"published from {city}")
    for name, stats in sorted(result.datasets.items()):
        mb = f"{stats.bytes / 1e6:.2f}"
        table.add_row(name, str(stats.version), str(stats.units), f"{stats.rows:,}", str(stats.messages), mb)
    Console().print(table)
    console.print(f"{result.rows:,} rows in {result.seconds:.1f} s")


def replicator(
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:<port>/metrics; 0 = off.")
    ] = 9464,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without a message (for batch runs).")
    ] = None,
    namespace: Namespace = "",
    site: SiteOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Debug logging.")] = False,
) -> None:
    """Run the provincial replicator: apply every city unit to the provincial tables exactly once.

    A Kafka consumer-group member; runs until SIGTERM (clean stop: offsets committed, nothing
    half-applied). Unreadable or unappliable messages go to the dead-letter table, never dropped.
    With two provincial sites each site runs its own, writing its own object store."""
    from lakehouse.contracts import load_contracts
    from lakehouse.replication.metrics import ReplicationMetrics
    from lakehouse.replication.replicator import Replicator

    service_logging(verbose)
    stop = _stop_on_signals()
    try:
        settings = site_settings(site)
        metrics = ReplicationMetrics()
        if metrics_port:
            metrics.serve(metrics_port)
            log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
        worker = Replicator(
            settings, _layout(settings, namespace), load_contracts(settings.platform_dir), metrics=metrics
        )
        log.info(
            "replicating into s3://%s at %s, site %s (SIGTERM stops)",
            worker.layout.province_table("").bucket,
            settings.s3_endpoint,
            settings.site_id,
        )
        worker.run(stop, idle_timeout=idle_exit)
    except (MedshareError, OSError) as exc:
        fail(exc)
    log.info("replicator stopped")


def verify(
    city: Annotated[list[str] | None, typer.Option("--city", help="Only these cities (repeatable).")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", help="Only these datasets.")] = None,
    wait: Annotated[
        float, typer.Option(help="Keep comparing for up to this many seconds until no difference remains.")
    ] = 0.0,
    namespace: Namespace = "",
) -> None:
    """Compare every city's shareable data with the province: counts and an order-independent
    checksum per city, dataset and partition — in every provincial site of the stack, so two
    sites that both pass hold the same rows. Prints every difference; exit 1 if there is one."""
    from lakehouse.contracts import load_contracts
    from lakehouse.pseudonyms import ProvinceKey
    from lakehouse.replication.verify import verify as run_verify

    settings = get_settings()
    deadline = time.monotonic() + wait
    try:
        layout = _layout(settings, namespace)
        contracts = load_contracts(settings.platform_dir)
        key = ProvinceKey.from_settings(settings)
        with progress_bar() as bar:
            task = bar.add_task("comparing", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=f"comparing {stage}", completed=done, total=total)

            while True:
                result = run_verify(
                    settings,
                    layout,
                    contracts,
                    key,
                    cities=city,
                    datasets=dataset,
                    progress=progress,
                    sites=settings.each_site(),
                )
                if result.ok or time.monotonic() >= deadline:
                    break
                bar.console.print(f"{len(result.differences)} difference(s); comparing again")
                time.sleep(2)
    except MedshareError as exc:
        fail(exc)
    table = Table("city", "dataset", "partitions", "rows", "city version", "site", "province reflects")
    for c in result.compared:
        versions = (str(c.city_version), c.site or "-", str(c.province_version))
        table.add_row(c.city, c.dataset, str(c.partitions), f"{c.rows:,}", *versions)
    out = Console(width=max(Console().width, 110))
    out.print(table)
    if result.ok:
        where = "each provincial site holds" if any(c.site for c in result.compared) else "the province holds"
        console.print(f"[green]no difference[/green]: {where} exactly each city's shareable data")
        return
    diffs = Table("city", "dataset", "hospital", "month", "site", "city rows", "province rows", "problem")
    for d in result.differences:
        counts = (d.site or "-", str(d.city_rows), str(d.province_rows))
        diffs.add_row(d.city, d.dataset, d.hospital or "-", d.month or "-", *counts, d.problem)
    out.print(diffs)
    console.print(f"[red]{len(result.differences)} difference(s)[/red]")
    raise typer.Exit(1)


def relayout(
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Only these datasets (repeatable).")
    ] = None,
    namespace: Namespace = "",
) -> None:
    """Rebuild provincial tables created before the (city, month) layout: one overwrite commit in
    the new partitioning, then clustered by person_key. Applied versions, rows and time travel to
    earlier versions are kept (and checked). Stop every replicator first: the table has one writer.
    Tables already laid out, or not there, are left alone."""
    from lakehouse.contracts import load_contracts
    from lakehouse.kafka import admin, group_members
    from lakehouse.replication.relayout import relayout_table
    from lakehouse.storage import PROVINCE_SITE, delta_storage_options, site_credentials

    settings = get_settings()
    try:
        layout = _layout(settings, namespace)
        names = sorted(n for n, c in load_contracts(settings.platform_dir).items() if c.shareable)
        unknown = sorted(set(dataset or ()) - set(names))
        if unknown:
            raise typer.BadParameter(
                f"not a shareable dataset: {', '.join(unknown)} (known: {', '.join(names)})"
            )
        client = admin(settings)
        try:
            group = layout.site_group(settings)
            members = group_members(client, group)
        finally:
            client.close()
        if members:
            fail(
                MedshareError(
                    f"{members} replicator(s) of group {group} are running: stop them first "
                    "(the provincial tables have one writer), then run relayout again"
                )
            )
        options = delta_storage_options(settings, site_credentials(settings, PROVINCE_SITE))
        results = []
        with progress_bar() as bar:
            chosen = dataset or names
            task = bar.add_task("relayout", total=len(chosen))
            for name in chosen:
                results.append(
                    relayout_table(layout, name, options, lambda m: bar.update(task, description=m))
                )
                bar.advance(task)
    except MedshareError as exc:
        fail(exc)
    table = Table("dataset", "was partitioned by", "rows", "files before", "files after", "versions", "s")
    for r in results:
        if not r.changed:
            state = "not there" if not r.partitioned_by else "already (city, month)"
            table.add_row(r.dataset, ", ".join(r.partitioned_by) or "-", "-", "-", "-", state, "-")
            continue
        versions = f"{r.from_version} → {r.to_version}"
        files = (f"{r.files_before:,}", f"{r.files_after:,}")
        table.add_row(
            r.dataset, ", ".join(r.partitioned_by), f"{r.rows:,}", *files, versions, f"{r.seconds:.1f}"
        )
    Console(width=max(Console().width, 110)).print(table)
    rebuilt = sum(r.changed for r in results)
    console.print(f"{rebuilt} table(s) rebuilt; applied versions and row counts checked")


def site_lag(settings: Settings, namespace: str = "") -> dict[str, list[LagRow]]:
    """Each provincial site's replication rows (one site: the settings' own)."""
    from lakehouse.contracts import load_contracts
    from lakehouse.replication.status import replication_lag

    contracts = load_contracts(settings.platform_dir)
    layout = _layout(settings, namespace)
    return {s.site_id: replication_lag(s, layout, contracts) for s in settings.each_site()}


def print_sites_lag(lag: dict[str, list[LagRow]]) -> None:
    """How far each site is behind the other: per (city, dataset), the versions one site has
    applied and the other not yet."""
    if len(lag) < 2:
        return
    applied = {
        site: {(r.city, r.dataset): -1 if r.applied_version is None else r.applied_version for r in rows}
        for site, rows in lag.items()
    }
    table = Table("site", "behind", "tables behind", "versions behind")
    for site, mine in applied.items():
        for other, theirs in applied.items():
            if other == site:
                continue
            gaps = [theirs[k] - v for k, v in mine.items() if theirs.get(k, -1) > v]
            style = "green" if not gaps else "yellow"
            table.add_row(site, other, f"[{style}]{len(gaps)}[/{style}]", f"[{style}]{sum(gaps)}[/{style}]")
    Console().print(table)


def print_replication(
    settings: Settings,
    namespace: str = "",
    *,
    by_dataset: bool = False,
    rows: list[LagRow] | None = None,
) -> bool:
    """The replication part of `medshare status`: how far the province is behind each city (one
    row per city, or per city and dataset), and what each replicator on this machine is doing;
    False when one cannot make progress."""
    from lakehouse.contracts import load_contracts
    from lakehouse.replication.health import STALL_SECONDS, read_statuses
    from lakehouse.replication.status import replication_lag

    layout = _layout(settings, namespace)
    if rows is None:
        rows = replication_lag(settings, layout, load_contracts(settings.platform_dir))

    def lateness(behind: int, lag: float | None) -> tuple[str, bool]:
        late = bool(behind) and (lag is None or lag >= STALL_SECONDS)
        return ("green" if behind == 0 else "red" if late else "yellow"), late

    if by_dataset:
        table = Table("city", "dataset", "city version", "province reflects", "behind", "lag")
        for r in rows:
            lag = "-" if r.lag_seconds is None else f"{r.lag_seconds:.1f} s"
            style, late = lateness(r.behind, r.lag_seconds)
            table.add_row(
                r.city,
                r.dataset,
                str(r.city_version),
                str(r.applied_version),
                f"[{style}]{r.behind}[/{style}]",
                f"[{style}]{lag}[/{style}]" if late else lag,
            )
    else:
        table = Table("city", "datasets", "up to date", "versions behind", "oldest lag", "behind in")
        by_city: dict[str, list[LagRow]] = {}
        for r in rows:
            by_city.setdefault(r.city, []).append(r)
        for city, items in by_city.items():
            late_rows = [r for r in items if r.behind]
            lags = [r.lag_seconds for r in late_rows if r.lag_seconds is not None]
            oldest = max(lags) if lags else None
            versions = sum(r.behind for r in late_rows)
            style, late = lateness(versions, oldest if len(lags) == len(late_rows) else None)
            names = ", ".join(r.dataset for r in late_rows[:3])
            names += f" +{len(late_rows) - 3}" if len(late_rows) > 3 else ""
            lag = "-" if oldest is None else f"{oldest:.1f} s"
            table.add_row(
                city,
                str(len(items)),
                str(len(items) - len(late_rows)),
                f"[{style}]{versions}[/{style}]",
                f"[{style}]{lag}[/{style}]" if late else lag,
                names or "-",
            )
        quiet = [c.id for c in layout.topology.cities if c.id not in by_city]
        if rows and quiet:
            table.caption = f"{len(quiet)} of {len(layout.topology.cities)} cities have no curated tables yet"
    if rows:
        Console(width=max(Console().width, 110)).print(table)
    else:
        console.print("replication: no curated tables yet")
    statuses = read_statuses(settings.state_dir / "replication", namespace)
    healthy = True
    if statuses:
        workers = Table(
            "replicator", "partitions", "units done", "last progress", "doing", title="replicators"
        )
        now = time.time()
        for st in statuses:
            stalls = st.stalls(now)
            healthy = healthy and not stalls
            doing = "; ".join(stalls) if stalls else (st.busy.what if st.busy else "waiting for messages")
            workers.add_row(
                f"pid {st.pid}",
                str(len(st.partitions)),
                str(st.units_done),
                f"{now - st.last_progress:.0f} s ago",
                f"[red]STALLED: {doing}[/red]" if stalls else doing,
            )
        Console().print(workers)
    behind = sum(r.behind for r in rows)
    if behind and not statuses:
        console.print(
            f"[yellow]the province is {behind} city version(s) behind and no replicator runs on this "
            "machine[/yellow] (`medshare replicator`)"
        )
    if not healthy:
        console.print("[red]a replicator cannot make progress[/red]: see its log and the reason above")
    return healthy


def register(app: typer.Typer) -> None:
    app.command()(publish)
    app.command()(replicator)
    app.command()(verify)
    app.command()(relayout)
