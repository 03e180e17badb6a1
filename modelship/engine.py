"""The Docker Engine: one way to connect to it, and the container helpers every user shares.

`build`, `test`, `push`, the local runtime and `local.up` all talk to the same engine; they
connect, find containers, pull images and read a container's state through this module, so
the failure a user sees when no engine answers is always the same line. It knows nothing
of stages or runtimes: it must never import a module above it.
"""

from __future__ import annotations

from .errors import PipelineError


def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except docker.errors.DockerException:
        raise PipelineError(
            "No Docker Engine answers.",
            "Start one (for --env=local: `invoke local.up`), or set DOCKER_HOST.",
        ) from None


def engine_answers() -> bool:
    import docker

    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure to reach the daemon means "not answering"
        return False


def find_container(client, name: str):
    """The container called `name`, None when there is none."""
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
