"""The canary loop, the same for every runtime: shift traffic step by step, judge, decide.

For each share in `release.canary.steps` below 100 the runtime sets the share, both
versions' /metrics are read, the loop waits one `interval` and reads them again, and
`canary_analysis` judges the window. A pass moves on; an inconclusive window (too little
traffic) holds the share and tries again, at most `max_inconclusive` times, then rolls back;
a fail rolls back at once. Reaching 100 promotes. Every decision is printed as a table row
and returned for the release record. Whatever stops the loop (Ctrl-C, SIGTERM from a
cancelled pipeline, a version that stops answering) rolls back before it is passed on, so
a canary never goes on serving silently beside the stable version. This module never talks
to a runtime itself: it calls the `CanaryRuntime` it is given.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

from . import canary_analysis as analysis
from .names import Echo
from .settings_schema import CanarySection, duration_seconds

PROMOTED, ROLLED_BACK = "promoted", "rolled back"


class CanaryRuntime(Protocol):
    def set_share(self, percent: int) -> None:
        """Send `percent` of new requests to the canary, the rest to the stable version."""

    def scrape(self) -> tuple[str, str]:
        """The /metrics texts of (canary, stable), read now."""

    def promote(self) -> None:
        """All traffic to the canary; retire the stable version."""

    def roll_back(self) -> None:
        """All traffic to the stable version at once; remove the canary."""


@dataclass
class CanaryResult:
    outcome: str
    reason: str
    decisions: list = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.outcome == PROMOTED


def thresholds_of(section: CanarySection) -> analysis.Thresholds:
    return analysis.Thresholds(
        min_requests=section.min_requests,
        max_error_rate_increase=section.max_error_rate_increase,
        max_p99_ratio=section.max_p99_ratio, p99_slack_seconds=section.p99_slack_ms / 1000,
        max_drift=section.max_drift, drift_measure=section.drift_measure)


def plan(section: CanarySection) -> str:
    """What the canary would do, for --dry."""
    judged = [step for step in section.steps if step < 100]
    return (f"shares {', '.join(f'{step}%' for step in judged)} for {section.interval} each, "
            f"judged on >= {section.min_requests} requests per version (error rate +"
            f"{section.max_error_rate_increase:.2%}, p99 x{section.max_p99_ratio:g} + "
            f"{section.p99_slack_ms:g} ms, {section.drift_measure} drift <= "
            f"{section.max_drift:g}; up to {section.max_inconclusive} inconclusive windows "
            "held), then 100% (promote); any failure: back to 100% stable")


HEADER = (f"{'step':>4} {'share':>5} {'requests c/s':>14} {'errors c/s':>11} "
          f"{'p99 ms c/s':>13} {'drift':>6}  verdict")


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def table_row(decision: analysis.Decision) -> str:
    canary, stable = decision.canary, decision.stable
    drift = "-" if decision.drift is None else f"{decision.drift:.3f}"
    return (f"{decision.step:>4} {decision.share:>4}% "
            f"{f'{canary.requests:.0f}/{stable.requests:.0f}':>14} "
            f"{f'{canary.errors:.0f}/{stable.errors:.0f}':>11} "
            f"{f'{_ms(canary.p99_seconds)}/{_ms(stable.p99_seconds)}':>13} {drift:>6}  "
            f"{decision.verdict}: {decision.reason}")


class _Stop:
    """Ctrl-C and SIGTERM (a cancelled pipeline) as KeyboardInterrupt, remembered: Invoke's
    `c.run` swallows a KeyboardInterrupt that arrives while its command runs (it passes it
    on to the command), so the loop asks `check()` after every runtime call as well."""

    requested = False

    def interrupt(self, signum, frame):
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def _stop_on_signals():
    stop = _Stop()
    try:
        previous = {number: signal.signal(number, stop.interrupt)
                    for number in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: nothing to install
        yield stop
        return
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run(runtime: CanaryRuntime, section: CanarySection, echo: Echo,
        sleep: Callable[[float], None] = time.sleep,
        start: Callable[[], None] | None = None) -> CanaryResult:
    """Step the canary through `section.steps`; promote or roll back (see the docstring).
    `start`, when given, starts the canary first: whatever stops it rolls back too."""
    thresholds = thresholds_of(section)
    interval = duration_seconds(section.interval)
    decisions: list[analysis.Decision] = []
    failed = None
    with _stop_on_signals() as stop:
        try:
            if start is not None:
                start()
                stop.check()
            echo("  " + HEADER)
            for step, share in enumerate(section.steps, start=1):
                if share < 100:
                    failed = _judge_step(runtime, step, share, thresholds, interval,
                                         section.max_inconclusive, decisions, echo, sleep,
                                         stop.check)
                if failed is not None:
                    break
            if failed is None:
                runtime.promote()
        except BaseException as stopped:
            runtime.roll_back()
            reason = "interrupted" if isinstance(stopped, KeyboardInterrupt) else str(stopped)
            stopped.canary_result = CanaryResult(ROLLED_BACK, reason, decisions)
            raise
        if failed is not None:
            runtime.roll_back()
            return CanaryResult(ROLLED_BACK, failed, decisions)
    return CanaryResult(PROMOTED, f"every step passed ({len(decisions)} windows)", decisions)


def _judge_step(runtime, step, share, thresholds, interval, max_inconclusive, decisions,
                echo, sleep, check) -> str | None:
    """None when the step passed; otherwise why the canary must roll back."""
    runtime.set_share(share)
    check()
    for attempt in range(max_inconclusive + 1):
        canary_before, stable_before = runtime.scrape()
        check()
        sleep(interval)
        canary_after, stable_after = runtime.scrape()
        check()
        decision = analysis.analyse(step, share, canary_before, canary_after, stable_before,
                                    stable_after, thresholds)
        decisions.append(decision)
        echo("  " + table_row(decision))
        if decision.verdict == analysis.PASS:
            return None
        if decision.verdict == analysis.FAIL:
            return f"step {step} ({share}%) failed on {decision.reason}"
    return (f"step {step} ({share}%) inconclusive {max_inconclusive + 1} times in a row "
            f"(max_inconclusive {max_inconclusive}): {decision.reason}; no evidence, no "
            "promotion")
