"""The container contract test: start the built image, prove it serves its model, remove it.

Runs before any push. The container uses host networking on a free loopback port and is
removed afterwards, pass or fail. It must never leave a container behind.
"""

from __future__ import annotations

import socket

from .errors import PipelineError
from .service_checks import check_golden, check_version, wait_ready


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def container_logs(container, lines: int = 5) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").strip()
    except Exception:  # the container may already be gone
        return "(no logs)"
    return " | ".join(text.splitlines()) or "(empty)"


def container_running(container) -> bool:
    try:
        container.reload()
    except Exception:
        return False
    return container.status in ("created", "running")


def run_contract(client, image_id: str, metadata: dict, echo) -> None:
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    container = client.containers.run(
        image_id, detach=True, network_mode="host",
        environment={"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "1"},
        labels={"ai.modelship.role": "contract-test"},
    )
    try:
        wait_ready(base_url, 60, lambda: container_running(container),
                   lambda: container_logs(container))
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        if uid in ("", "0"):
            raise PipelineError(
                "The service runs as root inside the image.",
                "Keep the Dockerfile's `USER` line (a non-root uid).",
            )
        echo(f"  ready on {base_url}, running as uid {uid}")
        check_version(base_url, metadata)
        count = check_golden(base_url, metadata)
        echo(f"  /score returned the expected label for {count} golden samples")
    finally:
        container.remove(force=True)
