"""Throw-away store servers on 127.0.0.1 for integration tests and benchmarks.

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

import requests

from ..errors import PipelineError
from .azure_blob import AZURITE_ACCOUNT, AZURITE_KEY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Emulator:
    name: str
    url: str
    process: subprocess.Popen
    data_dir: Path
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


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
    from ..local_services import _ensure_azurite_installed

    command = _ensure_azurite_installed(print)
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="modelship-azurite-"))
    log = data_dir / "azurite.log"
    process = subprocess.Popen(
        [str(command), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--location", str(data_dir / "data"), "--disableTelemetry", "--skipApiVersionCheck",
         "--silent"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    _wait_for(f"{url}?comp=list", process, log, "Azurite")
    return Emulator("azurite", url, process, data_dir, log,
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
    return Emulator("moto", url, process, data_dir, log, {"port": port})
