"""`medshare spark-sql` and `medshare analytics …`: Spark over every provincial table, for analysts."""

from __future__ import annotations

import runpy
import sys
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakehouse.errors import MedshareError
from lakehouse.settings import get_settings
from medshare.ui import console, fail, progress_bar

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

analytics = typer.Typer(
    help=(
        "Provincial analytics on Spark: the standard jobs (gold tables with small cells suppressed), "
        "your own jobs, and the HTML report. Runs on local[*] unless --master or "
        "MEDSHARE_ANALYTICS_MASTER names a cluster (spark://host:7077)."
    ),
    no_args_is_help=True,
)

MasterOption = Annotated[
    str | None,
    typer.Option(
        "--master",
        help="Spark master, e.g. spark://127.0.0.1:7077 (default: MEDSHARE_ANALYTICS_MASTER, else local[*]).",
    ),
]
SHOW_ROWS = 200


def _session(master: str | None, app_name: str) -> SparkSession:
    from lakehouse.analytics.session import analyst_session
    from lakehouse.analytics.settings import load_analytics_settings

    with console.status(
        f"starting Spark ({master or 'default master'}) and registering the provincial tables"
    ):
        return analyst_session(get_settings(), load_analytics_settings(), master=master, app_name=app_name)


def split_statements(text: str) -> list[str]:
    """SQL statements separated by `;` outside quotes and backticks; empty ones dropped."""
    statements: list[str] = []
    current: list[str] = []
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == ";":
            statements.append("".join(current))
            current = []
            continue
        current.append(ch)
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def _show(df: DataFrame) -> None:
    rows = df.limit(SHOW_ROWS + 1).collect()
    table = Table(*df.columns, show_lines=False)
    for row in rows[:SHOW_ROWS]:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    # Results on stdout (scripts can capture them); everything else goes to stderr.
    Console().print(table)
    more = f" (first {SHOW_ROWS} shown)" if len(rows) > SHOW_ROWS else ""
    console.print(f"[dim]{min(len(rows), SHOW_ROWS)} row(s){more}[/dim]")


def _execute(spark: SparkSession, statement: str) -> bool:
    from pyspark.errors import PySparkException

    try:
        _show(spark.sql(statement))
        return True
    except PySparkException as exc:
        console.print(f"[bold red]error:[/bold red] {str(exc).splitlines()[0]}")
        return False


def spark_sql(
    execute: Annotated[
        str | None, typer.Option("-e", "--execute", help="Run these statements (separated by ;) and exit.")
    ] = None,
    master: MasterOption = None,
) -> None:
    """SQL over every provincial table (`province.encounters`, …) and gold table (`gold.…`).

    Interactive when -e is not given: end each statement with `;`, leave with `exit;` or Ctrl-D.
    """
    try:
        spark = _session(master, "medshare-spark-sql")
    except MedshareError as exc:
        fail(exc)
    if execute is not None:
        ok = all([_execute(spark, s) for s in split_statements(execute)])
        raise typer.Exit(0 if ok else 1)
    console.print(
        "tables: "
        + ", ".join(
            f"{t.database}.{t.name}" for db in ("province", "gold") for t in spark.catalog.listTables(db)
        )
    )
    buffer = ""
    while True:
        try:
            line = input("spark-sql> " if not buffer else "        -> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        buffer += line + "\n"
        if ";" not in line:
            continue
        for statement in split_statements(buffer):
            if statement.lower() in ("exit", "quit"):
                return
            _execute(spark, statement)
        buffer = ""


@analytics.command("list")
def list_jobs() -> None:
    """The standard jobs and the gold table each writes."""
    from lakehouse.analytics.jobs import JOBS

    table = Table("job", "gold table", "what", "reads")
    for job in JOBS.values():
        table.add_row(job.name, f"gold.{job.name}", job.title, ", ".join(f"province.{t}" for t in job.needs))
    console.print(table)


@analytics.command("run")
def run(
    jobs: Annotated[list[str], typer.Argument(help="Job names (see `medshare analytics list`), or `all`.")],
    master: MasterOption = None,
    k: Annotated[
        int | None,
        typer.Option(
            help="Suppress cells of fewer than k patients (default MEDSHARE_ANALYTICS_K, 5).", min=2
        ),
    ] = None,
) -> None:
    """Run standard jobs; each overwrites its gold Delta table with suppressed small cells."""
    from lakehouse.analytics.jobs import JOBS, job_named, run_job
    from lakehouse.analytics.session import Locations
    from lakehouse.analytics.settings import load_analytics_settings
    from lakehouse.topology import load_topology

    try:
        names = list(JOBS) if jobs == ["all"] else [job_named(j).name for j in jobs]
        settings = get_settings()
        config = load_analytics_settings()
        topology = load_topology(settings.platform_dir)
        where = Locations.of(config, topology)
        spark = _session(master, "medshare-analytics-run")
        results = []
        with progress_bar() as bar:
            task = bar.add_task("standard jobs", total=len(names))
            for name in names:
                bar.update(task, description=name)
                results.append(run_job(spark, topology, where, name, k=k or config.k))
                bar.advance(task)
    except MedshareError as exc:
        fail(exc)
    table = Table("job", "gold table", "rows", "suppressed (k)", "seconds")
    for r in results:
        table.add_row(r.job, r.table, str(r.rows), f"{r.suppressed} (k={k or config.k})", f"{r.seconds:.1f}")
    console.print(table)


@analytics.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    script: Annotated[
        Path,
        typer.Argument(
            help="A Python file; it finds `spark` ready in its globals.", exists=True, dir_okay=False
        ),
    ],
    master: MasterOption = None,
) -> None:
    """Run your own PySpark code with the analysts' session: `spark` is predefined, with every
    provincial table registered (`spark.table("province.encounters")`). Arguments after the
    script reach it as sys.argv[1:]."""
    try:
        spark = _session(master, f"medshare-submit-{script.stem}")
    except MedshareError as exc:
        fail(exc)
    argv = sys.argv
    sys.argv = [str(script), *ctx.args]
    try:
        runpy.run_path(str(script), init_globals={"spark": spark}, run_name="__main__")
    finally:
        sys.argv = argv


@analytics.command("report")
def report(
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default MEDSHARE_ANALYTICS_REPORT_PATH).")
    ] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the report in a browser.")] = False,
) -> None:
    """An HTML page with charts of every gold table (run `medshare analytics run all` first)."""
    from lakehouse.analytics.report import write_report
    from lakehouse.analytics.settings import load_analytics_settings

    try:
        settings = get_settings()
        config = load_analytics_settings()
        path = write_report(settings, config, out or config.report_file(settings))
    except MedshareError as exc:
        fail(exc)
    console.print(f"[green]report[/green] written to {path}")
    print(path)
    if open_browser:
        webbrowser.open(path.resolve().as_uri())


def register(app: typer.Typer) -> None:
    app.command("spark-sql")(spark_sql)
    app.add_typer(analytics, name="analytics")
