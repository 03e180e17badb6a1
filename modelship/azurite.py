"""Azurite, Microsoft's blob storage emulator: installed with npm, started on 127.0.0.1.

One way to start it and know it is ready, for `invoke local.up` (the local environment's
model store) and for the test and benchmark emulators (a throw-away one on a free port).
It always binds 127.0.0.1 with telemetry off; it must never stop an Azurite it did not start.
"""

from __future__ import annotations

from pathlib import Path

from . import host
from .host_locks import AZURITE_DIR
from .names import Echo
from .stores.azure_blob import AZURITE_ACCOUNT

COMMAND = "azurite-blob"
SERVICE_NAME = "azurite"


def answers(port: int) -> bool:
    # Any HTTP answer from the blob endpoint means the emulator is up.
    return host.http_status(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list") is not None


def start(port: int, location: Path, echo: Echo, run_dir: Path | None = None,
          quiet: bool = False) -> int:
    """Start Azurite's blob service on 127.0.0.1:`port` with its data in `location` and wait
    until it answers; its PID file and log go to `run_dir` (default: .local/run, .local/logs)."""
    # Exactly as requirements/azurite/package-lock.json pins it.
    command = host.ensure_npm_tool("Azurite", AZURITE_DIR, COMMAND, echo)
    location.mkdir(parents=True, exist_ok=True)
    pid = host.spawn(SERVICE_NAME, [
        str(command), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(location), "--disableTelemetry", "--skipApiVersionCheck",
        *(["--silent"] if quiet else []),
    ], run_dir=run_dir)
    host.wait_until(lambda: answers(port), SERVICE_NAME, pid, 60,
                    log=host.log_file(SERVICE_NAME, run_dir))
    return pid
