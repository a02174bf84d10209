"""Console helpers the command modules share: one stderr console, failures, progress bars, logs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from infra.process import ServiceStatus

console = Console(stderr=True)


def report(message: str) -> None:
    console.print(f"[dim]·[/dim] {message}")


def fail(exc: Exception) -> NoReturn:
    console.print(f"[bold red]error:[/bold red] {exc}")
    raise typer.Exit(1)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def service_logging(verbose: bool = False) -> None:
    """One plain, timestamped line per event (services write to log files, not terminals). The
    Kafka client's own connection churn is left out: our code logs the failures it acts on."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)
    for noisy in ("kafka.net", "kafka.cluster", "kafka.coordinator", "kafka.producer", "kafka.consumer"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


def print_statuses(statuses: Sequence[ServiceStatus], what: str) -> bool:
    """One row per process of ours (ports, pid, health, log) on stdout; True when all are healthy."""
    table = Table(what, "ports", "pid", "health", "log")
    for s in statuses:
        health = (
            "[green]healthy[/green]"
            if s.healthy
            else ("[red]unhealthy[/red]" if s.pid else "[dim]stopped[/dim]")
        )
        table.add_row(s.name, ",".join(map(str, s.ports)), str(s.pid or "-"), health, str(s.log_file))
    Console().print(table)
    return all(s.healthy for s in statuses)
