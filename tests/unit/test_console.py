"""Output: rich progress and a table at a terminal; plain lines without ANSI codes in logs."""

from __future__ import annotations

import io
import logging

import pytest

from modelship import console
from modelship.console import Console, StageRow

ANSI = "\x1b["


def test_sizes_are_for_people():
    assert console.human_size(4416) == "4.4 kB"
    assert console.human_size(256 * 1024 * 1024) == "268.4 MB"
    assert console.human_size(0) == "0 bytes"


@pytest.mark.parametrize("environ, tty, interactive", [
    ({}, True, True),
    ({}, False, False),
    ({"CI": "true"}, True, False),
    ({"TF_BUILD": "True"}, True, False),
    ({"TERM": "dumb"}, True, False),
    ({"CI": "false"}, True, True),
])
def test_a_terminal_is_a_tty_outside_ci(environ, tty, interactive):
    stream = io.StringIO()
    stream.isatty = lambda: tty
    assert console.is_interactive(stream, environ) is interactive


def test_off_a_terminal_progress_says_nothing_unless_verbose_then_a_line_a_quarter():
    log = io.StringIO()
    quiet = Console(stream=log, interactive=False)
    with quiet.progress("model", 100) as bar:
        for _ in range(10):
            bar.advance(10)
    assert log.getvalue() == ""

    verbose = Console(verbose=True, stream=log, interactive=False)
    with verbose.progress("model", 100) as bar:
        for _ in range(10):
            bar.advance(10)
    lines = log.getvalue().splitlines()
    assert len(lines) == 4 and ANSI not in log.getvalue() and "\r" not in log.getvalue()
    assert lines[-1].startswith("  model: 100% (100 bytes of 100 bytes")


def test_work_done_in_one_go_gets_no_progress_line():
    log = io.StringIO()
    with Console(verbose=True, stream=log, interactive=False).progress("model", 4416) as bar:
        bar.advance(4416)
    assert log.getvalue() == ""


def test_at_a_terminal_a_rich_bar_is_drawn():
    terminal = io.StringIO()
    with Console(stream=terminal, interactive=True).progress("model", 2_000_000) as bar:
        bar.advance(2_000_000)
    drawn = terminal.getvalue()
    assert "model" in drawn and "2.0" in drawn and "MB" in drawn


def test_the_stage_table_is_plain_columns_in_a_log_and_a_rich_table_at_a_terminal():
    rows = [StageRow("fetch-model", "up to date", 0.41), StageRow("build", "ran", 12.0),
            StageRow("test", "failed", 3.25)]
    log = io.StringIO()
    Console(stream=log, interactive=False).stage_table(rows)
    text = log.getvalue()
    assert ANSI not in text
    assert text.splitlines()[0].split() == ["stage", "status", "seconds"]
    assert "build        ran            12.0" in text
    assert text.splitlines()[-1].split() == ["total", "15.7"]
    terminal = io.StringIO()
    Console(stream=terminal, interactive=True).stage_table(rows)
    assert ANSI in terminal.getvalue() and "up to date" in terminal.getvalue()


def test_details_only_when_verbose():
    log = io.StringIO()
    Console(stream=log, interactive=False).detail("Step 1/27 : FROM base")
    assert log.getvalue() == ""
    Console(verbose=True, stream=log, interactive=False).detail("Step 1/27 : FROM base")
    assert log.getvalue() == "Step 1/27 : FROM base\n"


def test_library_logs_are_quiet_unless_verbose():
    console.configure(verbose=False)
    assert logging.getLogger("azure.core.pipeline").getEffectiveLevel() == logging.WARNING
    console.configure(verbose=True)
    assert logging.getLogger("urllib3.connectionpool").getEffectiveLevel() == logging.DEBUG
    console.configure(verbose=False)
