"""`medshare spark-cluster …`: a Spark standalone cluster (master + workers) on this machine, for
running the analytics on real executors instead of local[*]."""

from __future__ import annotations

from typing import Annotated

import typer

from lakehouse.errors import MedshareError
from lakehouse.settings import get_settings
from medshare.ui import console, fail, print_statuses, report

cluster = typer.Typer(
    help=(
        "A Spark standalone cluster on loopback, started from pyspark's own scripts: one master "
        "(spark://127.0.0.1:7077, web UI http://127.0.0.1:8090) and single-core workers. "
        "Use it with `medshare analytics run all --master spark://127.0.0.1:7077`. Ports and sizes "
        "come from MEDSHARE_SPARK_CLUSTER_* variables; pids and logs live in the state folder."
    ),
    no_args_is_help=True,
)


@cluster.command("up")
def up(
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Workers to run, one executor core each; workers beyond this number are stopped.",
        ),
    ] = 2,
) -> None:
    """Start the master and the workers unless running, and wait until the master lists every
    worker as ALIVE (idempotent)."""
    from infra import spark_cluster

    settings = get_settings()
    try:
        started = spark_cluster.up(settings, workers, report)
    except MedshareError as exc:
        fail(exc)
    console.print(
        f"[green]up[/green]: started {', '.join(started)}"
        if started
        else "[green]up[/green]: already running, nothing to do"
    )
    _print_status()
    # The URL on stdout alone, for scripts: --master "$(medshare spark-cluster up)".
    print(spark_cluster.master_url(settings))


@cluster.command("down")
def down() -> None:
    """Stop the workers (and any executors they run) and the master this project started."""
    from infra import spark_cluster

    try:
        stopped = spark_cluster.down(get_settings())
    except MedshareError as exc:
        fail(exc)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "no cluster process of ours was running")


def _print_status() -> bool:
    from infra import spark_cluster

    settings = get_settings()
    healthy = print_statuses(spark_cluster.status(settings), "process")
    state = spark_cluster.master_state()
    if state is not None:
        alive = sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")
        console.print(
            f"master {spark_cluster.master_url(settings)}: {alive} ALIVE worker(s), "
            f"{len(state.get('activeapps', []))} running and {len(state.get('completedapps', []))} "
            f"completed application(s); web UI {spark_cluster.webui_url()}"
        )
    return healthy


@cluster.command("status")
def status() -> None:
    """Show the master and each worker: ports, pid, health (a worker is healthy once the master
    lists it ALIVE) and log; exit 1 unless all are healthy."""
    try:
        healthy = _print_status()
    except MedshareError as exc:
        fail(exc)
    if not healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cluster, name="spark-cluster")
