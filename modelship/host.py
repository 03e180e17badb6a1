"""This machine's processes, ports and installed tools, for the modules that start services.

A service started here runs in a session of its own (it outlives the invoke process) with a
PID file and a log under `.local/` or a folder the caller names, so it can be stopped
exactly, and only it. Missing commands come from the distribution's packages (apt, as root)
or from npm into `.local/tools`. Everything here is about the host, not about modelship's
stages: it must never import a module above it, and never stop a process it did not start
or listen beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import requests

from .errors import PipelineError
from .names import Echo
from .stage_files import LOCAL_STATE_DIR, shown

RUN_DIR = LOCAL_STATE_DIR / "run"
LOG_DIR = LOCAL_STATE_DIR / "logs"
TOOLS_DIR = LOCAL_STATE_DIR / "tools"


# --- ports --------------------------------------------------------------------------------


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_status(url: str) -> int | None:
    """The status code `url` answers with, None when nothing answers."""
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


# --- process bookkeeping -----------------------------------------------------------------


def _pid_file(name: str, run_dir: Path | None = None) -> Path:
    return (run_dir or RUN_DIR) / f"{name}.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_pid(name: str, run_dir: Path | None = None) -> int | None:
    """PID of a service started by `spawn` that still runs, else None."""
    path = _pid_file(name, run_dir)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _pid_alive(pid) else None


def log_file(name: str, run_dir: Path | None = None) -> Path:
    """Where `spawn` sends a service's output: beside its PID file, or under .local/logs."""
    run_dir = run_dir or RUN_DIR
    return (run_dir if run_dir != RUN_DIR else LOG_DIR) / f"{name}.log"


def spawn(name: str, argv: list[str], cwd: Path | None = None,
          run_dir: Path | None = None) -> int:
    run_dir = run_dir or RUN_DIR
    log_path = log_file(name, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    # A new session keeps the service alive after the invoke process exits.
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    log.close()
    _pid_file(name, run_dir).write_text(f"{process.pid}\n")
    return process.pid


def wait_until(ready: Callable[[], bool], name: str, pid: int, seconds: float,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if not _pid_alive(pid):
            break
        time.sleep(0.25)
    log = log or LOG_DIR / f"{name}.log"
    tail = ""
    if log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()[-3:]
        tail = " Last log lines: " + " | ".join(line.strip()[:200] for line in lines)
    raise PipelineError(
        f"{name} did not become ready within {seconds:.0f} s.{tail}",
        f"See {shown(log)}; fix the cause, then run `invoke local.up` again.",
    )


def stop_started(name: str, seconds: float = 30, run_dir: Path | None = None) -> bool:
    """Stop a service `spawn` started (SIGTERM, then SIGKILL). True if one was running."""
    pid = started_pid(name, run_dir)
    _pid_file(name, run_dir).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
        _reap(pid)
    # Whatever the service left in its session (dockerd's containerd, npm's node) goes too.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- installing tools ---------------------------------------------------------------------


def ensure_command(command: str, package: str, echo: Echo) -> str:
    """The path of `command`, installed from the distribution's `package` if missing."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        raise PipelineError(
            f"`{command}` is not installed.",
            f"Install it with `sudo apt-get install -y {package}`, then run the task again.",
        )
    echo(f"installing {package} from the distribution's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True
        )
    found = shutil.which(command)
    if result.returncode != 0 or not found:
        raise PipelineError(
            f"Could not install {package}: {result.stderr.strip()[-300:]}",
            f"Install it by hand (`apt-get install {package}`) and run the task again.",
        )
    return found


def ensure_npm_tool(name: str, lock_dir: Path, command: str, echo: Echo) -> Path:
    """`command` of the npm packages `lock_dir` pins (its package.json and
    package-lock.json), installed exactly so with `npm ci` into .local/tools unless that very
    lock is installed there already."""
    installed = TOOLS_DIR / "node_modules" / ".bin" / command
    lock = lock_dir / "package-lock.json"
    installed_lock = TOOLS_DIR / "package-lock.json"
    if installed.exists() and installed_lock.is_file() \
            and installed_lock.read_bytes() == lock.read_bytes():
        return installed
    npm = shutil.which("npm") or ensure_command("npm", "npm", echo)
    echo(f"installing {name} with `npm ci` from {shown(lock)} into {shown(TOOLS_DIR)}")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    for file_name in ("package.json", "package-lock.json"):
        shutil.copyfile(lock_dir / file_name, TOOLS_DIR / file_name)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(TOOLS_DIR)],
        capture_output=True, text=True,
    )
    if result.returncode != 0 or not installed.exists():
        installed_lock.unlink(missing_ok=True)  # so the next run installs again
        raise PipelineError(
            f"Could not install {name} with npm: {result.stderr.strip()[-300:]}",
            "Check that npm can reach its registry, then run `invoke local.up` again.",
        )
    return installed
