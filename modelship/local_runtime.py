"""`apply` for the local environment: run the pushed image, pulled from the registry.

The previous container is stopped (not removed) while the new one starts on the same
loopback port; only when the new one is ready is the old one removed. If the new one fails,
it is removed and the old one started again: a failed deploy never leaves nothing serving.
"""

from __future__ import annotations

from .container_test import container_logs, container_running
from .errors import PipelineError
from .service_checks import check_golden, wait_ready
from .settings import Settings

ROLE_LABEL = "ai.modelship.role"
# The image the container replaced: what `invoke rollback` runs again.
PREVIOUS_IMAGE_LABEL = "ai.modelship.previous-image"


def container_name(settings: Settings) -> str:
    return f"{settings.app_name}-{settings.env}"


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{int(settings.deployment['port'])}"


def _find(client, name: str):
    import docker

    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def pull(client, reference: str, auth: dict | None) -> None:
    import docker

    repository, _, digest = reference.partition("@")
    try:
        for chunk in client.api.pull(repository, tag=digest, stream=True, decode=True,
                                     auth_config=auth):
            if "error" in chunk:
                raise PipelineError(
                    f"Pulling {reference} failed: {chunk['error']}",
                    "Check that the push succeeded and the registry runs (`invoke local.up`).",
                )
    except docker.errors.APIError as error:
        raise PipelineError(
            f"Pulling {reference} failed: {error.explanation}",
            "Check that the push succeeded and the registry runs (`invoke local.up`).",
        ) from None


def previous_image(client, settings: Settings) -> str | None:
    container = _find(client, container_name(settings))
    return (container.labels or {}).get(PREVIOUS_IMAGE_LABEL) if container else None


def deploy(client, settings: Settings, reference: str, auth: dict | None,
           metadata: dict | None, echo, check_golden_sample: bool = True) -> str:
    """Run `reference` in place of the current container; restore that one on failure."""
    pull(client, reference, auth)
    port = int(settings.deployment["port"])
    url = base_url(settings)
    name = container_name(settings)
    previous_name = f"{name}-previous"

    leftover = _find(client, previous_name)
    if leftover is not None:
        leftover.remove(force=True)
    previous = _find(client, name)
    labels = {ROLE_LABEL: "deployment", "ai.modelship.env": settings.env}
    if previous is not None:
        labels[PREVIOUS_IMAGE_LABEL] = previous.attrs["Config"]["Image"]
        previous.rename(previous_name)
        previous.stop(timeout=20)

    container = client.containers.run(
        reference, name=name, detach=True, network_mode="host",
        environment={"HOST": "127.0.0.1", "PORT": str(port)},
        labels=labels, restart_policy={"Name": "unless-stopped"},
    )
    try:
        wait_ready(url, 60, lambda: container_running(container),
                   lambda: container_logs(container))
        if check_golden_sample and metadata is not None:
            check_golden(url, metadata, limit=1)
    except PipelineError as failure:
        logs = container_logs(container)
        container.remove(force=True)
        if previous is not None:
            previous.rename(name)
            previous.start()
            try:
                wait_ready(url, 60, lambda: container_running(previous),
                           lambda: container_logs(previous))
                failure.fix += " The previous deployment was restored and serves again."
            except PipelineError:
                failure.fix += " The previous deployment was started again but is not ready."
        echo(f"  new container's last log lines: {logs}")
        raise
    if previous is not None:
        previous.remove(force=True)
    return url


def remove(client, settings: Settings) -> bool:
    removed = False
    for name in (container_name(settings), f"{container_name(settings)}-previous"):
        container = _find(client, name)
        if container is not None:
            container.remove(force=True)
            removed = True
    return removed


def status(client, settings: Settings) -> dict | None:
    """What the local deployment runs, in the same terms `kube.status` uses; None if nothing."""
    container = _find(client, container_name(settings))
    if container is None:
        return None
    image = container.attrs["Config"]["Image"]
    labels = container.image.labels
    return {
        "image": image,
        "digest": image.split("@", 1)[1] if "@" in image else "(not pinned by digest)",
        "git_revision": labels.get("org.opencontainers.image.revision", "unknown"),
        "model_version": labels.get("ai.modelship.model.version", "unknown"),
        "model_sha256": labels.get("ai.modelship.model.sha256", "unknown"),
        "ready_replicas": 1 if container.status == "running" and container_ready(settings) else 0,
        "replicas": 1,
        "address": f"http://127.0.0.1:{settings.deployment['port']}",
    }


def container_ready(settings: Settings) -> bool:
    import requests

    try:
        url = f"http://127.0.0.1:{settings.deployment['port']}/readyz"
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
