"""`invoke model.check`: does an environment run the latest published model?

Reads the newest version from the model store (the `latest` pointer and that version's
metadata.json) and the model the environment runs: the model sha256 annotation of the Deployment's pod
template for Kubernetes environments, or the model sha256 label of the local container
(both named in `names`). Models are compared by sha256,
never by version name. Under Azure Pipelines the answer also becomes output variables, so a
scheduled run can carry on to Build and Deploy only when they differ. This module only
reads: it must never deploy, publish or change anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import kube, model_store
from .errors import PipelineError
from .names import (MODEL_SHA256_ANNOTATION, MODEL_SHA256_LABEL, MODEL_VERSION_ANNOTATION,
                    MODEL_VERSION_LABEL)
from .settings import Settings

SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRef:
    version: str
    sha256: str

    def __str__(self) -> str:
        return f"{self.version or 'unknown version'} (sha256 {self.sha256[:12]}…)"


@dataclass(frozen=True)
class Comparison:
    env: str
    model_name: str
    latest: ModelRef
    deployed: ModelRef | None  # None: nothing deployed, or deployed without a model record

    @property
    def differs(self) -> bool:
        return self.deployed is None or self.deployed.sha256 != self.latest.sha256

    def summary(self) -> str:
        if self.deployed is None:
            return (f"{self.env} runs no known {self.model_name} model; the latest published is "
                    f"{self.latest}: deploy it with `invoke deploy --env={self.env}`.")
        if self.differs:
            return (f"{self.env} runs {self.model_name} {self.deployed}, but the latest published "
                    f"is {self.latest}: deploy it with `invoke deploy --env={self.env}`.")
        return f"{self.env} runs the latest published {self.model_name} model, {self.latest}."


def latest_published(store: model_store.ModelStore) -> ModelRef:
    version = model_store.resolve_version(store, "latest")
    try:
        metadata = store.read_json(f"{version}/{model_store.METADATA_FILE}")
    except model_store.StoreObjectMissing:
        raise PipelineError(
            f"{store.uri}/{model_store.LATEST_POINTER} names version {version}, "
            "which has no metadata.json.",
            "Publish the model again with `invoke model.publish --force`.",
        ) from None
    sha256 = str(metadata.get("sha256", ""))
    if not SHA256.match(sha256):
        raise PipelineError(
            f"The metadata of version {version} in {store.uri} has no valid sha256.",
            "Publish the model again with `invoke model.publish --force`.",
        )
    return ModelRef(version, sha256)


def _deployed_ref(sha256: str | None, version: str | None) -> ModelRef | None:
    # A workload without a valid model annotation (made by hand, or before modelship) counts as
    # "not the latest": redeploying it is the safe answer.
    if not sha256 or not SHA256.match(sha256):
        return None
    return ModelRef(version or "", sha256)


def deployed_on_kubernetes(c, settings: Settings) -> ModelRef | None:
    command = kube.kubectl(settings, "get", f"deployment/{settings.app_name}",
                           "--ignore-not-found", "--output=json")
    # A read-only probe: it runs even under --dry, or the answer would be meaningless.
    result = c.run(command, warn=True, hide=True, dry=False)
    if not result.ok:
        reason = (result.stderr or "").strip().splitlines()[-1:] or ["no message"]
        raise PipelineError(
            f"Cannot read deployment/{settings.app_name} from context "
            f"'{settings.kubernetes.context}': {reason[0]}",
            f"Check the cluster credentials (`invoke aks.credentials --env={settings.env}`).",
        )
    if not result.stdout.strip():
        return None
    try:
        deployment = json.loads(result.stdout)
    except ValueError:
        raise PipelineError("kubectl printed something that is not JSON.",
                            "Check the kubectl version and plugins.") from None
    # The pod template says what pods run: `rollout undo` restores it, but not the
    # Deployment's own annotations, which keep naming the model of the failed rollout.
    template = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {})
    template_annotations = template.get("annotations") or {}
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    sha256 = template_annotations.get(MODEL_SHA256_ANNOTATION) or annotations.get(MODEL_SHA256_ANNOTATION)
    version = None
    if annotations.get(MODEL_SHA256_ANNOTATION) == sha256:
        version = annotations.get(MODEL_VERSION_ANNOTATION)
    return _deployed_ref(sha256, version)


def deployed_locally(client, container_name: str) -> ModelRef | None:
    import docker

    try:
        container = client.containers.get(container_name)
    except docker.errors.NotFound:
        return None
    except docker.errors.APIError as error:
        raise PipelineError(f"The Docker Engine could not inspect {container_name}: "
                            f"{error.explanation}", "Check that it runs (`invoke local.up`).") \
            from None
    # A container's labels include those of its image, where build put the model's.
    labels = container.labels or {}
    return _deployed_ref(labels.get(MODEL_SHA256_LABEL), labels.get(MODEL_VERSION_LABEL))


def pipeline_variables(comparison: Comparison) -> list[str]:
    """Logging commands that set output variables, read as `<step name>.<variable>`."""
    values = {
        "changed": "true" if comparison.differs else "false",
        "latestVersion": comparison.latest.version,
        "latestSha256": comparison.latest.sha256,
        "deployedSha256": comparison.deployed.sha256 if comparison.deployed else "",
    }
    for name, value in values.items():
        # Versions match model_store.VERSION_PATTERN and digests are hex: nothing to escape.
        if not re.fullmatch(r"[A-Za-z0-9._-]*", value):
            raise PipelineError(f"Refusing to set {name} to an unexpected value.",
                                "Check the model store's metadata.")
    return [f"##vso[task.setvariable variable={name};isOutput=true]{value}"
            for name, value in values.items()]
