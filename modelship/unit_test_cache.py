"""Running only the unit tests a change can affect, and none when nothing changed.

The key is one sha256 over everything the unit tests can see: the content of every file in
the checkout that git tracks or would track (ignored files such as build/ and .venv/ are
not inputs), except the ones the unit tests never read (documentation, benchmarks, the
integration tests and their tools, the scripts CI uses to set a machine up); the Python
version; and every installed distribution with its version (a changed lock or an upgraded
library re-runs them). A run that passed is recorded under that key in `.local/cache/`, which belongs to the
checkout and is never a pipeline artifact: a fresh agent has no record and runs everything,
and any changed byte of an input gives another key.

When the key changed, pytest-testmon (coverage of each test, kept per checkout in
`.local/cache/testmondata`) picks the tests whose code changed, but only while every input
that is not project Python code (templates, settings, golden files, locks, the installed
libraries) is the same as when that coverage was collected: testmon cannot see a test read
a data file, so any such change runs everything and collects the coverage afresh. Tests
marked `subprocess_project_code` run project code in another process, out of coverage's
sight, and run whenever any input changed. In CI (a fresh agent, nothing to reuse) the whole
suite runs without coverage. This module must never decide that tests passed: it only
remembers what pytest said.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .names import running_in_ci
from .stage_files import BUILD_DIR, LOCAL_STATE_DIR, PROJECT_ROOT

CACHE_DIR = LOCAL_STATE_DIR / "cache"
UNIT_RECORD = CACHE_DIR / "unit-tests.json"
TESTMON_DATA = CACHE_DIR / "testmondata"
# The data inputs (everything but project Python code) testmon's coverage was collected with.
TESTMON_BASELINE = CACHE_DIR / "testmon-baseline.json"
SUBPROCESS_MARKER = "subprocess_project_code"
PYTHON_CODE_DIRS = ("app/", "modelship/", "modelship_serving/", "tests/unit/")
# Read by no unit test: changing them must not cost a test run.
NOT_INPUTS = ("docs/", "benchmarks/", "tests/integration/", "tests/support/", "examples/",
              "scripts/", ".ci/")
NOT_INPUT_SUFFIXES = (".md",)


def input_files(root: Path | None = None) -> list[str]:
    """The checkout's files the unit tests may read, relative to `root`, sorted."""
    root = root or PROJECT_ROOT
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, check=False,
    )
    if listed.returncode != 0:
        # Not a git checkout (an unpacked source archive): every file but the usual
        # generated ones.
        names = [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()
                 and not any(part in (".git", ".venv", LOCAL_STATE_DIR.name,
                                          BUILD_DIR.rstrip("/"), "__pycache__")
                             for part in path.relative_to(root).parts)]
    else:
        names = [name for name in listed.stdout.decode().split("\0") if name]
    return sorted(name for name in set(names)
                  if not name.startswith(NOT_INPUTS) and not name.endswith(NOT_INPUT_SUFFIXES)
                  and (root / name).is_file())


@functools.lru_cache(maxsize=1)
def environment_fingerprint() -> str:
    """The interpreter and every installed distribution, one line each (read once a run:
    both digests use it)."""
    distributions = sorted({(dist.metadata["Name"] or "").lower(): dist.version
                            for dist in metadata.distributions()}.items())
    lines = [f"python {sys.version}"] + [f"{name}=={version}" for name, version in distributions]
    return "\n".join(lines)


def is_python_code(name: str) -> bool:
    """Project Python code whose effect on each test coverage can see (conftest.py aside:
    it runs for every test, so a change to it is treated like a data change)."""
    return name.endswith(".py") and (name.startswith(PYTHON_CODE_DIRS) or name == "tasks.py") \
        and not name.endswith("conftest.py")


def inputs_digest(root: Path | None = None, only=None) -> str:
    """sha256 over the inputs (those `only` accepts, if given) and the environment."""
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for name in input_files(root):
        if only is not None and not only(name):
            continue
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    digest.update(environment_fingerprint().encode())
    return digest.hexdigest()


def data_inputs_digest(root: Path | None = None) -> str:
    return inputs_digest(root, only=lambda name: not is_python_code(name))


@dataclass(frozen=True)
class PassedRun:
    digest: str
    passed_at: float
    seconds: float


def passed_run(digest: str, record: Path | None = None) -> PassedRun | None:
    """The recorded passing run for exactly these inputs, if there is one."""
    record = record or UNIT_RECORD
    try:
        data = json.loads(record.read_text())
        run = PassedRun(str(data["digest"]), float(data["passed_at"]), float(data["seconds"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, or one we cannot trust: run the tests
    return run if run.digest == digest else None


def remember_pass(digest: str, seconds: float, record: Path | None = None) -> None:
    record = record or UNIT_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    staged = record.with_suffix(".json.new")
    staged.write_text(json.dumps({"digest": digest, "passed_at": time.time(),
                                  "seconds": round(seconds, 1)}) + "\n")
    staged.replace(record)


def forget(record: Path | None = None) -> None:
    (record or UNIT_RECORD).unlink(missing_ok=True)


# --- what to run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitRun:
    """The pytest commands for one `invoke test`, and the words that say which tests;
    `fallback` runs them all without selection, if testmon itself breaks."""
    commands: tuple[str, ...]
    scope: str
    env: dict
    collects_coverage: bool
    fallback: str = ""


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _parallel() -> str:
    import os

    if _installed("pytest-xdist") and (os.cpu_count() or 1) > 1:
        return " -n auto"
    return ""


def plan_run(force: bool, environ, python: str = sys.executable) -> UnitRun:
    python = shlex.quote(python)  # a shell runs these: a venv path may hold spaces
    pytest = f"{python} -m pytest -q{_parallel()}"
    # A selection is small: worker processes would cost more than they save, and its two
    # commands run side by side instead.
    single = f"{python} -m pytest -q"
    everything = f"{pytest} -p no:cacheprovider tests/unit"
    if running_in_ci(environ) or not _installed("pytest-testmon"):
        return UnitRun((everything,), "all", {}, False)
    TESTMON_DATA.parent.mkdir(parents=True, exist_ok=True)  # testmon makes the file only
    env = {"TESTMON_DATAFILE": str(TESTMON_DATA)}
    baseline = _read_baseline()
    if force or baseline is None or baseline != data_inputs_digest() or \
            not TESTMON_DATA.is_file():
        return UnitRun((f"{pytest} --testmon-noselect tests/unit",), "all", env, True,
                       fallback=everything)
    return UnitRun((f"{single} --testmon tests/unit",
                    f"{single} -p no:cacheprovider -m {SUBPROCESS_MARKER} tests/unit"),
                   "the ones the changed code can affect", env, False, fallback=everything)


def _read_baseline() -> str | None:
    try:
        return str(json.loads(TESTMON_BASELINE.read_text())["data_inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_baseline() -> None:
    """After a full run under testmon: coverage now matches today's data inputs."""
    TESTMON_BASELINE.parent.mkdir(parents=True, exist_ok=True)
    TESTMON_BASELINE.write_text(json.dumps({"data_inputs": data_inputs_digest()}) + "\n")


def forget_coverage() -> None:
    TESTMON_BASELINE.unlink(missing_ok=True)
    TESTMON_DATA.unlink(missing_ok=True)
