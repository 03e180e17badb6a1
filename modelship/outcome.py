"""What a stage did, for the task's closing line and the table `deploy` ends with.

A stage either did its work (`ran`), found it already done for the same inputs
(`up_to_date`), had nothing to do for this environment (`not_needed`: the docker runtime
reads no manifests), or only said what it would do (`dry_run`). The status is set where the
stage knows it, never read back out of the line.
"""

from __future__ import annotations

from dataclasses import dataclass

RAN = "ran"
UP_TO_DATE = "up to date"
NOT_NEEDED = "not needed"
DRY_RUN = "dry run"
FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    line: str
    status: str = RAN

    def __str__(self) -> str:
        return self.line


def ran(line: str) -> Outcome:
    return Outcome(line, RAN)


def up_to_date(line: str) -> Outcome:
    return Outcome(line, UP_TO_DATE)


def not_needed(line: str) -> Outcome:
    return Outcome(line, NOT_NEEDED)


def dry_run(line: str) -> Outcome:
    return Outcome(line, DRY_RUN)
