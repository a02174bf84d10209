"""`medshare <command>`: wires the packages' functions to the command line; no logic of its own."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakehouse.errors import MedshareError
from lakehouse.settings import get_settings
from lakehouse.topology import load_topology

app = typer.Typer(
    help=(
        "medshare: the province–city health data-sharing platform.\n\n"
        "Start with `medshare up` (MinIO + Kafka on loopback), then `medshare demo`. "
        "Settings come from MEDSHARE_* environment variables."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _report(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {exc}")
    raise typer.Exit(1)


@app.command()
def setup() -> None:
    """Obtain MinIO (go install), the Kafka broker and Spark's Delta/s3a jars (Maven), once."""
    from infra import install

    try:
        install.ensure_all(get_settings(), _report)
    except MedshareError as exc:
        _fail(exc)
    console.print("[green]set-up complete[/green]: everything is cached in "
                  f"{get_settings().cache_dir}")


@app.command()
def up() -> None:
    """Start MinIO and Kafka on loopback, create buckets, site users and topics (idempotent)."""
    from infra import stack

    settings = get_settings()
    try:
        started = stack.up(settings, load_topology(settings.platform_dir), _report)
    except MedshareError as exc:
        _fail(exc)
    console.print(f"[green]up[/green]: started {', '.join(started)}" if started
                  else "[green]up[/green]: already running, nothing to do")
    _print_status()


@app.command()
def down() -> None:
    """Stop the services this project started (from their pid files); nothing else."""
    from infra import stack

    try:
        stopped = stack.down(get_settings())
    except MedshareError as exc:
        _fail(exc)
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing of ours was running")


def _print_status() -> bool:
    from infra import stack

    table = Table("service", "ports", "pid", "health", "log")
    statuses = stack.status(get_settings())
    for s in statuses:
        health = "[green]healthy[/green]" if s.healthy else (
            "[red]unhealthy[/red]" if s.pid else "[dim]stopped[/dim]")
        table.add_row(s.name, ",".join(map(str, s.ports)), str(s.pid or "-"), health, str(s.log_file))
    Console().print(table)
    return all(s.healthy for s in statuses)


@app.command()
def status() -> None:
    """Show each service, its ports, pid and health; exit 1 unless all are healthy."""
    try:
        healthy = _print_status()
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
def demo() -> None:
    """Run the platform end to end on the running stack and print a summary."""
    from medshare import demo as demo_module

    try:
        demo_module.run(get_settings(), _report)
    except MedshareError as exc:
        _fail(exc)
