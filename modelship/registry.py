"""Pushing the built image to the environment's private registry and recording its digest.

Credentials come from the environment variables the settings name, the login `local.up`
generated for the local registry, `az acr login` for Azure Container Registry, or the Docker
credential store. The Docker SDK reports push failures inside its output stream, so every
line is read. This module must never print or record a password.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from .errors import PipelineError
from .names import CACHE_TAG, inputs_tag
from .registry_login import read_registry_login
from .release_record import PushRecord, ReleaseRecord
from .settings import Settings

LOOPBACK_PREFIXES = ("127.", "localhost:", "[::1]:")
ACR_SUFFIX = ".azurecr.io"


def _port_of(host: str) -> int | None:
    _, _, port = host.rpartition(":")
    return int(port) if port.isdecimal() else None


def registry_auth(settings: Settings) -> dict | None:
    """auth_config for the Docker SDK, or None to let the SDK use ~/.docker/config.json."""
    username = os.environ.get(settings.registry.username_env)
    password = os.environ.get(settings.registry.password_env)
    if username is None and password is None and settings.registry.host.startswith(LOOPBACK_PREFIXES):
        login = read_registry_login(_port_of(settings.registry.host))
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


def acr_login(host: str) -> None:
    """`az acr login` writes a short-lived token into the Docker credential store."""
    az = shutil.which("az")
    if az is None:
        raise PipelineError(
            f"{host} is an Azure Container Registry, but the Azure CLI is not installed.",
            "Install it (`pip install -e '.[azure]'`) and sign in with `az login`, or set "
            "REGISTRY_USERNAME and REGISTRY_PASSWORD.",
        )
    name = host.removesuffix(ACR_SUFFIX)
    result = subprocess.run([az, "acr", "login", "--name", name], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise PipelineError(
            f"`az acr login --name {name}` failed: {reason[:200]}",
            "Sign in with `az login` (in Azure Pipelines: an AzureCLI step with the service "
            "connection) and check the identity has AcrPush on the registry.",
        )


def login(client, settings: Settings) -> dict | None:
    import docker

    auth = registry_auth(settings)
    if auth is None:
        if settings.registry.host.endswith(ACR_SUFFIX):
            acr_login(settings.registry.host)
        return None
    try:
        client.login(registry=settings.registry.host, reauth=True, **auth)
    except docker.errors.APIError as error:
        text = str(error.explanation or error)
        if "401" in text or "unauthorized" in text.lower():
            raise PipelineError(
                f"The registry {settings.registry.host} refused the login for user "
                f"'{auth['username']}'.",
                f"Check {settings.registry.username_env} and {settings.registry.password_env} "
                f"for '{settings.env}'"
                + (" (or unset both to use the login `invoke local.up` generated)."
                   if settings.registry.host.startswith(LOOPBACK_PREFIXES) else "."),
            ) from None
        raise PipelineError(
            f"Cannot log in to the registry {settings.registry.host}: {text[:200]}",
            f"Check that the registry {settings.registry.host} runs and is reachable"
            + (f" (`invoke local.up --env={settings.env}`)." if settings.registry.host.startswith(
                LOOPBACK_PREFIXES) else f" (registry.host of '{settings.env}')."),
        ) from None
    return auth


def read_push_stream(stream, progress=None) -> tuple[str, int]:
    """(digest, bytes uploaded) of a push, or a PipelineError with the registry's reason.
    `progress` hears the bytes of the layers being uploaded as they go."""
    digest = None
    uploaded: dict[str, int] = {}
    sizes: dict[str, int] = {}
    pushed_layers: set[str] = set()
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error", "")
            raise PipelineError(
                f"The push failed: {detail.strip()}",
                "Check the registry credentials and that the repository accepts pushes.",
            )
        status, layer = chunk.get("status", ""), chunk.get("id", "")
        if status == "Pushing":
            detail = chunk.get("progressDetail") or {}
            uploaded[layer] = max(uploaded.get(layer, 0), detail.get("current", 0))
            sizes[layer] = max(sizes.get(layer, 0), detail.get("total", 0) or 0)
            if progress is not None:
                progress.update(sum(uploaded.values()), sum(sizes.values()) or None)
        elif status == "Pushed":
            pushed_layers.add(layer)
        aux = chunk.get("aux") or {}
        if "Digest" in aux:
            digest = aux["Digest"]
    if not digest:
        raise PipelineError(
            "The push ended without a digest from the registry.",
            "Run `invoke push` again; if it persists, check the registry's logs.",
        )
    return digest, sum(uploaded.get(layer, 0) for layer in pushed_layers)


def _push_tag(client, repository: str, tag: str, auth: dict | None) -> tuple[str, int]:
    import docker

    from .console import current

    try:
        stream = client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth)
        with current().progress(f"pushing {repository}:{tag}", None) as bar:
            return read_push_stream(stream, bar)
    except docker.errors.APIError as error:
        raise PipelineError(
            f"The Docker Engine could not push to {repository}: {error.explanation}",
            "Check that the registry runs and the credentials are right.",
        ) from None


def push_image(client, settings: Settings, record: ReleaseRecord) -> PushRecord:
    """Push the content tag, the inputs tag (for up-to-date checks) and the cache tag."""
    import docker

    repository = settings.image_repository
    tag = record.image.tag
    try:
        image = client.images.get(record.image.id or record.image.name)
    except docker.errors.ImageNotFound:
        raise PipelineError(
            f"The built image {record.image.name} is not in the engine.",
            f"Run `invoke build --env={settings.env}` again on this machine.",
        ) from None
    auth = login(client, settings)
    tags = [tag, inputs_tag(record.image.inputs), CACHE_TAG]
    for each in tags:
        image.tag(repository, each)
    digest, bytes_pushed = _push_tag(client, repository, tag, auth)
    for extra in tags[1:]:
        _push_tag(client, repository, extra, auth)
    return PushRecord(repository=repository, tag=tag, digest=digest,
                      reference=f"{repository}@{digest}", inputs=record.image.inputs,
                      bytes_pushed=bytes_pushed)
