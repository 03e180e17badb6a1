"""What the tasks print, decided in one place: a person at a terminal, or a log.

At a terminal (standard output is a TTY, TERM is not `dumb`, and not running in CI as
`names.running_in_ci` defines it) transfers and builds draw rich progress bars, and `deploy` ends
with a table of its stages. Anywhere else every line is plain text without ANSI codes, one
line per stage and the same table in plain columns; with `verbose`, a progress line at each
quarter of a transfer or build as well. Sizes are human either way (`4.4 kB`, `256.0 MB`).
`verbose` lets the details through (the Docker build's own output, kubectl's) and the
libraries' log records; without it the Azure SDK, urllib3, docker and botocore say only what
is a warning or worse. This module decides how things look; it must never decide what a
stage does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, TextIO

from rich.filesize import decimal

from .names import running_in_ci

# Libraries whose INFO records (every HTTP request, every credential tried) are noise to
# someone running a task.
NOISY_LOGGERS = ("azure", "urllib3", "docker", "botocore", "boto3", "s3transfer", "msal",
                 "model_signing", "sigstore")
PLAIN_PROGRESS_STEPS = 4


def human_size(size: int | float) -> str:
    """Bytes for people: 4416 -> '4.4 kB', 268435456 -> '268.4 MB'."""
    return decimal(int(size))


def is_interactive(stream: TextIO, environ=os.environ) -> bool:
    if running_in_ci(environ):
        return False
    if environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


@dataclass
class StageRow:
    """One line of the closing table: a stage, what became of it, and how long it took."""
    stage: str
    status: str
    seconds: float


class Console:
    def __init__(self, verbose: bool = False, stream: TextIO | None = None,
                 interactive: bool | None = None, environ=os.environ):
        self.verbose = verbose
        self._stream = stream
        self.interactive = (is_interactive(self.stream, environ) if interactive is None
                            else interactive)
        self._rich = None

    @property
    def stream(self) -> TextIO:
        # Looked up at each write: whoever replaced sys.stdout since (pytest) gets the text.
        return self._stream or sys.stdout

    @property
    def rich(self):
        if self._rich is None:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False, soft_wrap=True,
                                     force_terminal=self.interactive,
                                     no_color=not self.interactive)
        return self._rich

    def line(self, text) -> None:
        """A line everyone sees: a stage's result, a warning, what a dry run would do."""
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def detail(self, text: str) -> None:
        """A line for `--verbose` only: the tools' own output."""
        if self.verbose:
            self.line(text)

    def progress(self, label: str, total: int | None, unit: str = "bytes") -> Progress:
        if self.interactive:
            return RichProgress(self, label, total, unit)
        return PlainProgress(self, label, total, unit)

    def stage_table(self, rows: Iterable[StageRow]) -> None:
        rows = list(rows)
        if not rows:
            return
        total = sum(row.seconds for row in rows)
        if self.interactive:
            from rich.table import Table

            table = Table(title=None, show_edge=False, pad_edge=False)
            table.add_column("stage")
            table.add_column("status")
            table.add_column("seconds", justify="right")
            for row in rows:
                style = {"failed": "bold red", "ran": "green"}.get(row.status, "dim")
                table.add_row(row.stage, f"[{style}]{row.status}[/]", f"{row.seconds:.1f}")
            table.add_row("total", "", f"{total:.1f}", style="bold")
            self.rich.print(table)
            return
        width = max(len(row.stage) for row in rows + [StageRow("total", "", 0)])
        self.line(f"{'stage':<{width}}  {'status':<10}  {'seconds':>7}")
        for row in rows:
            self.line(f"{row.stage:<{width}}  {row.status:<10}  {row.seconds:>7.1f}")
        self.line(f"{'total':<{width}}  {'':<10}  {total:>7.1f}")


class Progress:
    """Progress of one transfer or build: `advance(n)` as work is done, `close()` at the end.
    Safe to advance from several threads (parallel download streams)."""

    def __init__(self, console: Console, label: str, total: int | None, unit: str):
        self.console = console
        self.label = label
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.done = 0
        self._lock = threading.Lock()

    def advance(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            self._shown()

    def update(self, done: int, total: int | None = None) -> None:
        with self._lock:
            self.done = done
            if total:
                self.total = total
            self._shown()

    def _shown(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def amount(self, value: int) -> str:
        return human_size(value) if self.unit == "bytes" else f"{value} {self.unit}"


class PlainProgress(Progress):
    """For logs: nothing, or with `verbose` a line at each quarter (none for work done in one
    go: the stage's own line says enough)."""

    def __init__(self, console: Console, label: str, total: int | None, unit: str):
        super().__init__(console, label, total, unit)
        self._started = time.monotonic()
        self._next_step = 1

    def _shown(self) -> None:
        if not self.total or not self.console.verbose:
            return
        if self._next_step == 1 and self.done >= self.total:
            self._next_step = PLAIN_PROGRESS_STEPS + 1  # done in one go: nothing to follow
            return
        while self._next_step <= PLAIN_PROGRESS_STEPS and \
                self.done * PLAIN_PROGRESS_STEPS >= self.total * self._next_step:
            percent = self._next_step * 100 // PLAIN_PROGRESS_STEPS
            self._next_step += 1
            self.console.line(f"  {self.label}: {percent}% ({self._rate()})")

    def _rate(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        text = f"{self.amount(self.done)} of {self.amount(self.total)}"
        if self.unit == "bytes":
            text += f", {human_size(self.done / elapsed)}/s"
        return text


class RichProgress(Progress):
    """For people: a live bar with size, speed and time left."""

    def __init__(self, console: Console, label: str, total: int | None, unit: str):
        super().__init__(console, label, total, unit)
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress as RichBar,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = [TextColumn("  {task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [MofNCompleteColumn(), TextColumn(unit)]
        self._bar = RichBar(*columns, console=console.rich, transient=False)
        self._task = self._bar.add_task(label, total=self.total)
        self._bar.start()

    def _shown(self) -> None:
        self._bar.update(self._task, completed=self.done, total=self.total)

    def close(self) -> None:
        self._bar.stop()


_current = Console()


def configure(verbose: bool = False) -> Console:
    """Set up output for this run of a task; returns the console every stage prints through."""
    global _current
    _current = Console(verbose=verbose)
    level = logging.DEBUG if verbose else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return _current


def current() -> Console:
    return _current


def echo(text: str) -> None:
    current().line(text)
