"""Remembering a passing unit-test run, so an unchanged checkout does not run it again.

The key is one sha256 over everything the unit tests can see: the content of every file in
the checkout that git tracks or would track (ignored files such as build/ and .venv/ are
not inputs), except the ones the unit tests never read (documentation, benchmarks, the
integration tests, the scripts CI uses to set a machine up); the Python version; and every
installed distribution with its version (a changed lock or an upgraded library re-runs
them). A run that passed is recorded under that key in `.local/cache/`, which belongs to the
checkout and is never a pipeline artifact: a fresh agent has no record and runs everything,
and any changed byte of an input gives another key. This module must never decide that
tests passed: it only remembers what pytest said.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .settings import LOCAL_STATE_DIR, PROJECT_ROOT

CACHE_DIR = LOCAL_STATE_DIR / "cache"
UNIT_RECORD = CACHE_DIR / "unit-tests.json"
# Read by no unit test: changing them must not cost a test run.
NOT_INPUTS = ("docs/", "benchmarks/", "tests/integration/", "examples/", "scripts/", ".ci/")
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
                 and not any(part in (".git", ".venv", ".local", "build", "__pycache__")
                             for part in path.relative_to(root).parts)]
    else:
        names = [name for name in listed.stdout.decode().split("\0") if name]
    return sorted(name for name in set(names)
                  if not name.startswith(NOT_INPUTS) and not name.endswith(NOT_INPUT_SUFFIXES)
                  and (root / name).is_file())


def environment_fingerprint() -> str:
    """The interpreter and every installed distribution, one line each."""
    distributions = sorted({(dist.metadata["Name"] or "").lower(): dist.version
                            for dist in metadata.distributions()}.items())
    lines = [f"python {sys.version}"] + [f"{name}=={version}" for name, version in distributions]
    return "\n".join(lines)


def inputs_digest(root: Path | None = None) -> str:
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for name in input_files(root):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((root / name).read_bytes()).digest())
    digest.update(environment_fingerprint().encode())
    return digest.hexdigest()


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
