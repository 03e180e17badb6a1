"""Building the serving image with the Docker SDK: app code + the fetched model.

The build runs with networking disabled; the base image is pulled only if configured so, or
built offline. Output is an image tagged from the git commit and the model's sha256, with
OCI labels, described in the build record. It must never send the build context anywhere
but the local engine, nor put a secret in a build argument.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .build_record import write_record
from .errors import PipelineError
from .gitinfo import SourceState
from .settings import BUILD_DIR, PROJECT_ROOT, Settings

MODEL_DIR = BUILD_DIR / "model"
WHEELHOUSE = BUILD_DIR / "wheelhouse"
IMAGE_REQUIREMENTS = PROJECT_ROOT / "requirements" / "image.txt"


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


def read_model_metadata(model_dir: Path = MODEL_DIR) -> dict:
    metadata = model_dir / "metadata.json"
    if not (metadata.exists() and (model_dir / "model.onnx").exists()):
        raise PipelineError(
            f"No fetched model in {model_dir.relative_to(PROJECT_ROOT)}.",
            "Run `invoke fetch-model` first.",
        )
    return json.loads(metadata.read_text())


def content_tag(source: SourceState, model_sha256: str) -> str:
    tag = f"{source.short}-{model_sha256[:8]}"
    return f"{tag}-dirty" if source.dirty else tag


def image_labels(settings: Settings, source: SourceState, model: dict) -> dict:
    return {
        "org.opencontainers.image.title": settings.app_name,
        "org.opencontainers.image.revision": source.revision,
        "org.opencontainers.image.source": source.source_url,
        "org.opencontainers.image.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "org.opencontainers.image.version": __version__,
        "ai.modelship.model.name": str(model.get("name", "")),
        "ai.modelship.model.version": str(model.get("version", "")),
        "ai.modelship.model.sha256": str(model.get("sha256", "")),
    }


def _run_build(client, tag: str, buildargs: dict, labels: dict, echo) -> str:
    import docker

    image_id = None
    recent: list[str] = []
    try:
        stream = client.api.build(
            path=str(PROJECT_ROOT), dockerfile="Dockerfile", tag=tag, buildargs=buildargs,
            labels=labels, network_mode="none", rm=True, forcerm=True, pull=False, decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                context = " | ".join(recent[-3:])
                raise PipelineError(
                    f"The image build failed: {detail.strip()}" + (f" (after: {context})" if context else ""),
                    "Fix the Dockerfile step above; the build has no network, so every "
                    "dependency must be in build/wheelhouse.",
                )
            line = chunk.get("stream", "").strip()
            if line:
                recent.append(line[:200])
                if line.startswith("Step "):
                    echo(f"  {line}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except docker.errors.APIError as error:
        raise PipelineError(
            f"The Docker Engine refused the build: {error.explanation}",
            "Check that the base image exists locally (`docker images`).",
        ) from None
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id


def build_image(client, settings: Settings, source: SourceState, echo) -> dict:
    model = read_model_metadata()
    tag = content_tag(source, model["sha256"])
    local_name = f"{settings.image.repository}:{tag}"
    labels = image_labels(settings, source, model)
    buildargs = {
        "BASE_IMAGE": settings.image.base,
        "GIT_REVISION": source.revision,
        "APP_VERSION": __version__,
    }
    image_id = _run_build(client, local_name, buildargs, labels, echo)
    size = client.images.get(image_id).attrs.get("Size", 0)
    record = {
        "image": {
            "id": image_id,
            "name": local_name,
            "repository": settings.image.repository,
            "tag": tag,
            "labels": labels,
            "size_bytes": size,
            "base": settings.image.base,
        },
        "model": {key: model.get(key) for key in ("name", "version", "sha256")},
        "source": {"revision": source.revision, "dirty": source.dirty},
        "pushed": {},
    }
    write_record(record)
    return record
