"""`medshare <command>`: wires the packages' functions to the command line; no logic of its own."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from lakehouse.errors import MedshareError
from lakehouse.settings import get_settings
from lakehouse.topology import load_topology
from medshare import analytics_cli, api_cli, cluster_cli, replication_cli
from medshare.ui import console, print_statuses
from medshare.ui import fail as _fail
from medshare.ui import progress_bar as _progress_bar
from medshare.ui import report as _report

app = typer.Typer(
    help=(
        "medshare: the province–city health data-sharing platform.\n\n"
        "Start with `medshare up` (MinIO + Kafka on loopback), then `medshare demo`. "
        "Settings come from MEDSHARE_* environment variables."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def setup() -> None:
    """Obtain MinIO (go install), the Kafka broker and Spark's Delta/s3a jars (Maven), once."""
    from infra import install

    try:
        install.ensure_all(get_settings(), _report)
    except MedshareError as exc:
        _fail(exc)
    console.print(f"[green]set-up complete[/green]: everything is cached in {get_settings().cache_dir}")


SitesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--site",
        help="Only this provincial site (a, b or its full id; repeatable) of a two-site stack "
        "(MEDSHARE_SITES); default: every site.",
    ),
]


@app.command()
def up(site: SitesOption = None) -> None:
    """Start MinIO and Kafka on loopback, create buckets, site users and topics (idempotent).

    With two provincial sites (MEDSHARE_SITES=henan-dc-a,henan-dc-b) each gets its own MinIO and
    broker on ports `MEDSHARE_SITE_PORT_STEP` apart, plus the witness controller of their quorum."""
    from infra import stack

    settings = get_settings()
    try:
        chosen = [settings.site_named(s) for s in site] if site else None
        started = stack.up(settings, load_topology(settings.platform_dir), _report, chosen)
    except MedshareError as exc:
        _fail(exc)
    console.print(
        f"[green]up[/green]: started {', '.join(started)}"
        if started
        else "[green]up[/green]: already running, nothing to do"
    )
    _print_status()


@app.command()
def provision() -> None:
    """Create the buckets, one object-store user and policy per identity, and the Kafka topics on
    the configured (running) services — what `up` does after starting them; for a deployment.

    Needs MEDSHARE_S3_ROOT_PASSWORD and every identity's MEDSHARE_SITE_SECRET_<SITE> (on a
    development stack the secrets are made in the state folder)."""
    from infra.provision import provision_storage, provision_topics

    settings = get_settings()
    try:
        topology = load_topology(settings.platform_dir)
        provision_storage(settings, topology)
        created = provision_topics(settings, topology)
    except MedshareError as exc:
        _fail(exc)
    console.print(f"[green]provisioned[/green]: buckets, identities, {len(created)} new topic(s)")


@app.command()
def down(site: SitesOption = None) -> None:
    """Stop the services this project started (from their pid files); nothing else. With --site,
    only that site's (the witness controller keeps running)."""
    from infra import stack

    settings = get_settings()
    try:
        stopped = stack.down(settings, [settings.site_named(s) for s in site] if site else None)
    except MedshareError as exc:
        _fail(exc)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing of ours was running")


def _print_status() -> bool:
    from infra import stack

    return print_statuses(stack.status(get_settings()), "service")


@app.command()
def status(
    datasets: Annotated[
        bool, typer.Option("--datasets", help="One replication row per city and dataset, not per city.")
    ] = False,
) -> None:
    """Show each service, its ports, pid and health, then how far the province's replicas are
    behind each city and what each replicator is doing — at each provincial site, and how far each
    site is behind the other; exit 1 unless all services are healthy and no replicator is
    stalled."""
    try:
        healthy = _print_status()
        if healthy:
            lag = replication_cli.site_lag(get_settings())
            for settings in get_settings().each_site():
                if settings.site is not None:
                    console.print(f"[bold]site {settings.site_id}[/bold] ({settings.s3_endpoint})")
                rows = lag[settings.site_id]
                healthy = (
                    replication_cli.print_replication(settings, by_dataset=datasets, rows=rows) and healthy
                )
            replication_cli.print_sites_lag(lag)
    except MedshareError as exc:
        _fail(exc)
    if not healthy:
        raise typer.Exit(1)


@app.command("clean-state")
def clean_state(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete all service data (every bucket and topic) in the state folder."""
    from infra import stack

    settings = get_settings()
    if not yes and sys.stdin.isatty():
        typer.confirm(f"delete everything under {settings.state_dir}?", abort=True)
    try:
        stack.clean_state(settings)
    except MedshareError as exc:
        _fail(exc)
    console.print(f"removed {settings.state_dir}")


@app.command()
def demo(
    cities: Annotated[
        str | None,
        typer.Option(
            help="More cities besides the demo's Zhengzhou and Luoyang: a comma-separated list, or "
            "`all` for the whole province (18 cities)."
        ),
    ] = None,
) -> None:
    """Run the platform end to end on the running stack and print a summary."""
    from medshare import demo as demo_module
    from medshare.pipeline import parse_cities

    settings = get_settings()
    try:
        extra = parse_cities(load_topology(settings.platform_dir), cities) if cities else []
        chosen = [*demo_module.DEMO_CITIES, *(c for c in extra if c not in demo_module.DEMO_CITIES)]
        demo_module.run(settings, _report, chosen)
    except MedshareError as exc:
        _fail(exc)


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="Folder to write the exports into (one sub-folder per city).")],
    patients: Annotated[int, typer.Option(help="People to generate; each visits 1+ hospitals.")] = 1_000,
    seed: Annotated[int, typer.Option(help="Same seed, same exports.")] = 7,
    city: Annotated[list[str] | None, typer.Option("--city", help="Only these cities (repeatable).")] = None,
    defect_scale: Annotated[
        float,
        typer.Option(help="Multiply every defect rate (0 = clean data; 1 = defaults, about 7% of rows)."),
    ] = 1.0,
    dialects: Annotated[
        str | None,
        typer.Option(
            help="Shares of the dialects among the extracts of hospitals with the default source "
            "profile, e.g. csv=0.3,jsonl=0.2,csv-gb18030=0.2,csv-bom-multiline=0.15,xlsx=0.15 "
            "(weights, normalised; a dialect not named gets none). Default: every dialect."
        ),
    ] = None,
    fhir_ndjson_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of the cities whose FHIR export is Bulk Data NDJSON."),
    ] = 0.5,
    pacs_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of the DICOM studies written PACS-style (DICOMDIR)."),
    ] = 0.5,
) -> None:
    """Write seeded, realistic hospital exports with injected defects, and a manifest of them."""
    from ingestion.defects import DefectRates
    from ingestion.dialects import DEFAULT_SHARES, parse_shares
    from ingestion.generate import GenerateOptions, summary
    from ingestion.generate import generate as run_generate
    from lakehouse.contracts import load_contracts

    try:
        shares = DEFAULT_SHARES if dialects is None else parse_shares(dialects)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dialects") from None
    settings = get_settings()
    try:
        topology = load_topology(settings.platform_dir)
        options = GenerateOptions(
            seed=seed,
            patients=patients,
            cities=tuple(city or ()),
            rates=DefectRates().scaled(defect_scale),
            truncated_file=defect_scale > 0,
            dialects=dict(shares),
            fhir_ndjson_share=fhir_ndjson_share,
            pacs_share=pacs_share,
        )
        with _progress_bar() as bar:
            task = bar.add_task("generating patients", total=patients)
            manifest = run_generate(
                topology,
                load_contracts(settings.platform_dir),
                out,
                options,
                lambda done: bar.update(task, completed=done),
            )
    except MedshareError as exc:
        _fail(exc)
    table = Table("dataset", "rows", "defects", title=f"exports in {out}")
    for dataset, counts in summary(manifest).items():
        defects = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "rows")
        table.add_row(dataset, str(counts.get("rows", 0)), defects or "-")
    Console().print(table)


@app.command()
def land(
    folder: Annotated[Path, typer.Argument(help="A city's export folder (as written by `generate`).")],
    city: Annotated[str, typer.Option(help="The city whose landing bucket receives the files.")],
) -> None:
    """Upload hospital exports into the city's landing bucket (unchanged files are skipped)."""
    from ingestion.landing import land as run_land
    from lakehouse.storage import s3_client, site_credentials

    settings = get_settings()
    if not folder.is_dir():
        _fail(MedshareError(f"{folder} is not a folder"))
    try:
        bucket = load_topology(settings.platform_dir).city(city).buckets.landing
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        with _progress_bar() as bar:
            task = bar.add_task(f"uploading to {bucket}", total=total)
            uploaded = run_land(
                s3_client(settings, site_credentials(settings, city)),
                bucket,
                folder,
                lambda n: bar.advance(task, n),
            )
    except MedshareError as exc:
        _fail(exc)
    console.print(f"landed {len(uploaded)} new or changed file(s) in {bucket}")


@app.command()
def ingest(
    city: Annotated[str, typer.Option(help="The city whose landing bucket is ingested.")],
) -> None:
    """Run the city's Spark ingestion: landing → bronze → curated + quarantine, with a report.

    Exits 1 when the run failed or a dataset's row accounting does not balance."""
    from ingestion.job import IngestOptions, report_key, run_ingestion
    from ingestion.profiles import load_profiles
    from ingestion.read import store_access
    from lakehouse.contracts import load_contracts
    from lakehouse.spark import build_spark_session
    from lakehouse.storage import site_credentials

    settings = get_settings()
    try:
        topology = load_topology(settings.platform_dir)
        topology.city(city)
        contracts = load_contracts(settings.platform_dir)
        profiles = load_profiles(settings.platform_dir, topology, contracts)
        creds = site_credentials(settings, city)
        spark = build_spark_session(settings, creds, app_name=f"medshare-ingest-{city}")
        with _progress_bar() as bar:
            tasks: dict[str, TaskID] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            options = IngestOptions(city=city)
            report = run_ingestion(
                spark,
                store_access(settings, creds),
                topology,
                contracts,
                options,
                progress,
                profiles=profiles,
            )
    except MedshareError as exc:
        _fail(exc)
    table = Table(
        "dataset",
        "rows in",
        "from waiting",
        "curated",
        "quarantined",
        "duplicates",
        "waiting",
        "balanced",
        "quality",
        "seconds",
        title=f"ingestion run {report.run_id} ({city}): {report.status}",
    )
    rules = Table("dataset", "rule", "rows", title="quarantined rows by rule")
    for ds in report.datasets.values():
        quality = {None: "-", True: "passed", False: "[red]FAILED[/red]"}[ds.quality_passed]
        table.add_row(
            ds.dataset,
            str(ds.rows_in),
            str(ds.from_waiting),
            str(ds.curated),
            str(ds.quarantined_total),
            str(ds.duplicates),
            f"[yellow]{ds.waiting}[/yellow]" if ds.waiting else "0",
            "yes" if ds.balanced else "[red]NO[/red]",
            quality,
            f"{ds.seconds:.1f}",
        )
        for rule, count in sorted(ds.quarantined.items()):
            rules.add_row(ds.dataset, rule, str(count))
    out = Console(width=max(Console().width, 130))
    out.print(table)
    out.print(rules)
    console.print(
        f"files: {report.files_seen} seen, {report.files_new} new, {report.files_corrected} "
        f"corrected, {report.files_unchanged} unchanged, {len(report.files_rejected)} rejected"
    )
    if read := report.read_as():
        console.print("read as: " + ", ".join(f"{n} × {how}" for how, n in read))
    if any(ds.waiting for ds in report.datasets.values()):
        console.print(
            "[yellow]waiting[/yellow]: rows whose patient is not known yet (e.g. a PACS study before "
            "its patient's registration); they are linked again by every run"
        )
    stored = f"s3://{topology.city(city).buckets.bronze}/{report_key(options)}"
    _print_rejected(report.files_rejected, stored)
    if report.status != "succeeded" or not all(d.balanced for d in report.datasets.values()):
        raise typer.Exit(1)


@app.command()
def pipeline(
    exports: Annotated[
        Path, typer.Argument(help="Folder of exports, one sub-folder per city (as `generate` writes).")
    ],
    cities: Annotated[
        str | None,
        typer.Option(
            help="`all` or a comma-separated list of cities. Default: every city with a folder in EXPORTS."
        ),
    ] = None,
    steps: Annotated[
        str, typer.Option(help="Which steps, in this order: land, ingest, publish.")
    ] = "land,ingest,publish",
) -> None:
    """Land, ingest and publish many cities' exports, city after city, with progress.

    A city that fails is reported and the others still run; exit 1 if any failed. Run
    `medshare replicator` (or `make demo`) to apply what was published to the province."""
    from medshare.pipeline import parse_cities, run_cities

    settings = get_settings()
    try:
        chosen = parse_cities(load_topology(settings.platform_dir), cities, exports)
        with _progress_bar() as bar:
            overall = bar.add_task("cities", total=len(chosen))
            step = bar.add_task("", total=None)

            def on_city(city: str, index: int) -> None:
                bar.update(overall, completed=index, description=f"cities (now {city})")

            def progress(what: str, done: int, total: int) -> None:
                bar.update(step, description=what, completed=done, total=total or None)

            runs = run_cities(
                settings,
                exports,
                chosen,
                [s.strip() for s in steps.split(",") if s.strip()],
                on_city=on_city,
                progress=progress,
            )
            bar.update(overall, completed=len(chosen), description="cities")
    except MedshareError as exc:
        _fail(exc)
    table = Table(
        "city", "landed", "rows in", "curated", "quarantined", "published rows", "units", "seconds", "result",
        title=f"pipeline over {len(runs)} cities",
    )  # fmt: skip
    for run in runs:
        datasets = run.ingestion.datasets.values() if run.ingestion else []
        published = run.published
        table.add_row(
            run.city,
            "-" if run.landed is None else str(run.landed),
            f"{sum(d.rows_in for d in datasets):,}" if run.ingestion else "-",
            f"{sum(d.curated for d in datasets):,}" if run.ingestion else "-",
            f"{sum(d.quarantined_total for d in datasets):,}" if run.ingestion else "-",
            "-" if published is None else f"{published.rows:,}",
            "-" if published is None else str(sum(d.units for d in published.datasets.values())),
            f"{sum(run.seconds.values()):.0f}",
            "[green]ok[/green]" if run.ok else f"[red]{run.error}[/red]",
        )
    Console(width=max(Console().width, 130)).print(table)
    failed = [r.city for r in runs if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(runs)} cities failed[/red]: {', '.join(failed)}")
        raise typer.Exit(1)


# Rejected files shown on the terminal; the run report stored in the bronze bucket lists them all.
SHOWN_REJECTIONS = 5


def _print_rejected(rejected: list[dict[str, str]], report_uri: str) -> None:
    for item in rejected[:SHOWN_REJECTIONS]:
        console.print(f"  [yellow]rejected[/yellow] {item['key']}: {item['reason']}")
    if len(rejected) > SHOWN_REJECTIONS:
        reasons = Counter(item["reason"] for item in rejected[SHOWN_REJECTIONS:])
        common = "; ".join(f"{n} × {reason}" for reason, n in reasons.most_common(3))
        console.print(f"  … and {len(rejected) - SHOWN_REJECTIONS} more ({common})")
    if rejected:
        console.print(f"  every rejected file and its reason: {report_uri}")


replication_cli.register(app)
api_cli.register(app)
analytics_cli.register(app)
cluster_cli.register(app)
