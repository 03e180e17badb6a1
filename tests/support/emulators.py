"""Throw-away store servers on 127.0.0.1 for integration tests and benchmarks.

Test tooling, kept under tests/ and out of the package users install.

Starts an Azurite blob emulator (telemetry off, data in a temporary folder) or moto's
S3-compatible server on a free loopback port, and stops exactly the process it started.
It must never bind anything but 127.0.0.1 nor touch the services `invoke local.up` runs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from modelship.errors import PipelineError
from modelship.stores.azure_blob import AZURITE_ACCOUNT, AZURITE_KEY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Emulator:
    name: str
    url: str
    # Stops the server process (and only it).
    stop_process: Callable[[], None]
    data_dir: Path
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _stopper(process: subprocess.Popen) -> Callable[[], None]:
    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return stop


def _wait_for(url: str, process: subprocess.Popen, log: Path, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise PipelineError(f"{name} did not start: {log.read_text(errors='replace')[-500:]}")


def start_azurite() -> Emulator:
    from modelship import azurite, host

    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="modelship-azurite-"))
    try:
        azurite.start(port, data_dir / "data", print, run_dir=data_dir, quiet=True)
    except PipelineError:
        host.stop_started(azurite.SERVICE_NAME, run_dir=data_dir)
        raise
    url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    return Emulator("azurite", url,
                    lambda: host.stop_started(azurite.SERVICE_NAME, seconds=15, run_dir=data_dir),
                    data_dir,
                    host.log_file(azurite.SERVICE_NAME, data_dir),
                    {"account": AZURITE_ACCOUNT, "key": AZURITE_KEY, "port": port})


def start_moto() -> Emulator:
    command = Path(sys.executable).with_name("moto_server")
    if not command.exists():
        raise PipelineError("moto_server is not installed.",
                            "Install the test extra: pip install -e '.[test]'.")
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="modelship-moto-"))
    log = data_dir / "moto.log"
    process = subprocess.Popen(
        [str(command), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_for(f"{url}/moto-api/", process, log, "moto_server")
    return Emulator("moto", url, _stopper(process), data_dir, log, {"port": port})
