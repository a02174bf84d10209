"""Console helpers the command modules share: one stderr console, failures, progress bars, logs."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    """Timestamped log lines for long-running services; the Kafka client only when it warns."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # Warns on every first rebalance, before topic metadata has arrived; not actionable.
    logging.getLogger("kafka.coordinator.assignors").setLevel(logging.ERROR)
