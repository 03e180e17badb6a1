"""Serve the app with Granian: `python -m app.serve` (the container's command).

Granian parses HTTP in Rust on one event loop per worker process, so an idle, slow
or malformed client costs a socket and a little memory, never a Python worker; the
app runs behind `app.rsgi_bridge`, which awaits each body before Flask sees it. On
Linux every Granian worker opens its own listening socket with SO_REUSEPORT, so the
kernel spreads connections over the workers, and a worker binds only after it built
the app, opened the model and replayed its golden samples.

Two things are added here because Granian (2.8) does not do them. Workers are started
with the `spawn` method: a forked worker inherits the master's Python signal handler
and ignores a SIGTERM that arrives while it is still loading the app, so the master
waited on it until killed; a spawned worker keeps the default action until Granian
installs its own, and stops at once. And the first SIGTERM drains before stopping:
`/readyz` answers 503 for SHUTDOWN_DRAIN_SECONDS while every request is still served
(Kubernetes takes the pod out of its Service meanwhile), then the workers finish what
they are serving and exit, killed after WORKERS_KILL_TIMEOUT_SECONDS at the latest. In a
pod the preStop hook (`modelship_serving.drain`) has already drained before SIGTERM arrives; the server
sees its marker and goes straight to finishing in-flight requests. The manifests set the
pod's grace period to the drain plus the kill timeout plus a margin. A second signal
stops at once.

Everything that differs between environments comes from environment variables. This
module must never bind anything but HOST:PORT, and never write outside METRICS_DIR or
the temporary directory (the container's root file system is read-only).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path

from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops, TaskImpl
from granian.http import HTTP1Settings

from modelship_serving.drain import DEFAULT_DRAIN_SECONDS, SHUTDOWN_MARKER_NAME

logger = logging.getLogger(__name__)

METRICS_FILE_GLOB = "worker-*.metrics"
DEFAULT_KILL_TIMEOUT_SECONDS = 15
# A client has this long to send a request's headers, and a kept-alive connection may
# sit idle this long between requests.
DEFAULT_HEADER_TIMEOUT_SECONDS = 10
# Granian's read buffer, which bounds the request line and header section: past it
# the client gets a 431 (or 414). Hyper lets the buffer grow up to about twice this.
HEADER_BUFFER_BYTES = 64 * 1024


def default_workers() -> int:
    # One worker per CPU: scoring is CPU-bound Python holding the GIL, so more processes
    # than CPUs only add context switches. A container's CPU quota is not visible here,
    # so cap the guess and let the manifest set WEB_CONCURRENCY to its CPU limit.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, 4)


def _whole_number(environ, name: str, default: int, minimum: int) -> int:
    raw = environ.get(name) or ""
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be a whole number, got {raw!r}")
    if value < minimum:
        raise SystemExit(f"environment variable {name} must be at least {minimum}, got {raw!r}")
    return value


def server_settings(environ=os.environ) -> dict:
    """What the server is asked for, from the environment (the names the manifests set)."""
    return {
        "host": environ.get("HOST") or "0.0.0.0",
        "port": _whole_number(environ, "PORT", 8080, 1),
        "workers": _whole_number(environ, "WEB_CONCURRENCY", default_workers(), 1),
        "drain_seconds": _whole_number(environ, "SHUTDOWN_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS, 0),
        "kill_timeout_seconds": _whole_number(
            environ, "WORKERS_KILL_TIMEOUT_SECONDS", DEFAULT_KILL_TIMEOUT_SECONDS, 1
        ),
        "header_timeout_seconds": _whole_number(
            environ, "HEADER_TIMEOUT_SECONDS", DEFAULT_HEADER_TIMEOUT_SECONDS, 1
        ),
        "log_level": (environ.get("LOG_LEVEL") or "info").lower(),
    }


def event_loop() -> Loops:
    """uvloop where it is installed (the image, Linux and macOS), else asyncio's own.

    Named, not left to Granian's "auto", which prefers its experimental rloop whenever
    that happens to be installed: measured here, rloop's p99 was ten times uvloop's.
    uvloop served 1-row requests about a tenth faster than asyncio's loop.
    """
    return Loops.uvloop if importlib.util.find_spec("uvloop") else Loops.asyncio


def worker_app():
    """What each worker serves: the app behind the RSGI bridge (Granian calls this)."""
    from app import create_app
    from app.rsgi_bridge import RsgiBridge

    bridge = RsgiBridge(create_app())
    # Everything alive now (Flask, numpy, the session) lives as long as the worker: keep
    # it out of the collector's full passes, which would otherwise walk it all again.
    gc.freeze()
    return bridge


class DrainingGranian(Granian):
    """Granian whose first SIGTERM or SIGINT starts a drain instead of stopping."""

    def __init__(self, *args, drain_seconds: int, shutdown_marker: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self._drain_seconds = drain_seconds
        self._shutdown_marker = shutdown_marker
        self._draining = False

    def signal_handler_interrupt(self, *args, **kwargs):
        if self._draining or self._drain_seconds == 0:
            return super().signal_handler_interrupt(*args, **kwargs)
        if self._shutdown_marker.exists():
            # The preStop hook (modelship_serving.drain) already drained: finish what is in flight.
            logger.info("shutting down: drained by the preStop hook; workers stop")
            return super().signal_handler_interrupt(*args, **kwargs)
        self._draining = True
        self._shutdown_marker.touch()
        logger.info("shutting down: /readyz answers 503 for %s s, then workers stop",
                    self._drain_seconds)
        stop = threading.Timer(self._drain_seconds, super().signal_handler_interrupt)
        stop.daemon = True
        stop.start()


def prepare_run_directory(environ=os.environ) -> tuple[Path, bool]:
    """METRICS_DIR, emptied of an earlier run's files, or a new one; (path, made here)."""
    if environ.get("METRICS_DIR"):
        directory = Path(environ["METRICS_DIR"])
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob(METRICS_FILE_GLOB), directory / SHUTDOWN_MARKER_NAME]:
            stale.unlink(missing_ok=True)
        return directory, False
    return Path(tempfile.mkdtemp(prefix="modelship-run-")), True


WORKER_APP = "app.serve:worker_app"


def main(worker_app_target: str = WORKER_APP) -> None:
    """Serve until stopped; `worker_app_target` is the factory each worker calls."""
    settings = server_settings()
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    run_directory, made_here = prepare_run_directory()
    # Workers inherit these: they share counters there and look for the drain marker.
    os.environ["METRICS_DIR"] = str(run_directory)
    os.environ["SHUTDOWN_MARKER"] = str(run_directory / SHUTDOWN_MARKER_NAME)
    multiprocessing.set_start_method("spawn", force=True)
    server = DrainingGranian(
        worker_app_target,
        factory=True,
        interface=Interfaces.RSGI,
        address=settings["host"],
        port=settings["port"],
        workers=settings["workers"],
        runtime_threads=1,
        loop=event_loop(),
        # Each request a real asyncio task: the bridge's body timeout cancels it, which
        # Granian's own (rust) tasks do not allow.
        task_impl=TaskImpl.asyncio,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=settings["header_timeout_seconds"] * 1000,
            keep_alive=True,
            max_buffer_size=HEADER_BUFFER_BYTES,
        ),
        websockets=False,
        log_level=settings["log_level"],
        log_access=False,  # the app writes its own JSON line per request
        workers_kill_timeout=settings["kill_timeout_seconds"],
        drain_seconds=settings["drain_seconds"],
        shutdown_marker=run_directory / SHUTDOWN_MARKER_NAME,
    )
    try:
        server.serve()
    finally:
        if made_here:
            shutil.rmtree(run_directory, ignore_errors=True)


if __name__ == "__main__":
    main()
