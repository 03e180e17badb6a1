"""What every pipeline check reports: a `file:line: problem` line. Shared by the checks of
this package; it holds no check of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import PROJECT_ROOT


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = display(self.path) + (f":{self.line}" if self.line else "")
        return f"{where}: {self.message}"


def display(path: Path) -> str:
    """A path as the report shows it: relative to the project when it lies inside."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
