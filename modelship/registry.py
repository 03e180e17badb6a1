"""Pushing the built image to the environment's private registry and recording its digest.

Credentials come from the environment variables the settings name, or, for the local
registry, the login `local.up` generated. The Docker SDK reports push failures inside its
output stream, so every line is read. This module must never print or record a password.
"""

from __future__ import annotations

import os

from .build_record import write_record
from .errors import PipelineError
from .local_services import read_registry_login
from .settings import Settings

LOOPBACK_PREFIXES = ("127.", "localhost:", "[::1]:")


def registry_auth(settings: Settings) -> dict | None:
    """auth_config for the Docker SDK, or None to let the engine use ~/.docker/config.json."""
    username = os.environ.get(settings.registry.username_env)
    password = os.environ.get(settings.registry.password_env)
    if username is None and password is None and settings.registry.host.startswith(LOOPBACK_PREFIXES):
        login = read_registry_login()
        if login:
            username, password = login.username, login.password
    if username is None and password is None:
        return None
    if not (username and password):
        raise PipelineError(
            f"Only one of {settings.registry.username_env} and {settings.registry.password_env} "
            "is set.",
            "Set both (or neither, to use the Docker credential store).",
        )
    return {"username": username, "password": password}


def login(client, settings: Settings) -> dict | None:
    import docker

    auth = registry_auth(settings)
    if auth is None:
        return None
    try:
        client.login(registry=settings.registry.host, reauth=True, **auth)
    except docker.errors.APIError as error:
        text = str(error.explanation or error)
        if "401" in text or "unauthorized" in text.lower():
            raise PipelineError(
                f"The registry {settings.registry.host} refused the login for user "
                f"'{auth['username']}'.",
                f"Check {settings.registry.password_env} (for --env=local, unset it to use the "
                "generated local login).",
            ) from None
        raise PipelineError(
            f"Cannot log in to the registry {settings.registry.host}: {text[:200]}",
            "Check that the registry runs (for --env=local: `invoke local.up`).",
        ) from None
    return auth


def read_push_stream(stream) -> str:
    """The pushed digest, or a PipelineError with the registry's own reason."""
    digest = None
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error", "")
            raise PipelineError(
                f"The push failed: {detail.strip()}",
                "Check the registry credentials and that the repository accepts pushes.",
            )
        aux = chunk.get("aux") or {}
        if "Digest" in aux:
            digest = aux["Digest"]
    if not digest:
        raise PipelineError(
            "The push ended without a digest from the registry.",
            "Run `invoke push` again; if it persists, check the registry's logs.",
        )
    return digest


def push_image(client, settings: Settings, record: dict, echo) -> dict:
    import docker

    repository = settings.image_repository
    tag = record["image"]["tag"]
    try:
        image = client.images.get(record["image"]["id"])
    except docker.errors.ImageNotFound:
        raise PipelineError(
            f"The built image {record['image']['name']} is no longer in the engine.",
            "Run `invoke build` again.",
        ) from None
    image.tag(repository, tag)
    auth = login(client, settings)
    try:
        stream = client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth)
        digest = read_push_stream(stream)
    except docker.errors.APIError as error:
        raise PipelineError(
            f"The Docker Engine could not push to {repository}: {error.explanation}",
            "Check that the registry runs and the credentials are right.",
        ) from None
    pushed = {
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "reference": f"{repository}@{digest}",
        "image_id": record["image"]["id"],
    }
    record.setdefault("pushed", {})[settings.env] = pushed
    write_record(record)
    return pushed
