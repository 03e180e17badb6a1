"""`invoke model.check`: does an environment run the latest published model?

Reads the newest version from the model store (the `latest` pointer and that version's
metadata.json) and compares it with the model the environment runs, which its release target
reads (`release_targets`: the Deployment's pod template annotation on Kubernetes, the
container's label on the local engine). Models are compared by sha256,
never by version name. Under Azure Pipelines the answer also becomes output variables, so a
scheduled run can carry on to Build and Deploy only when they differ. This module only
reads: it must never deploy, publish or change anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import model_store
from .errors import PipelineError

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


def deployed_ref(sha256: str | None, version: str | None) -> ModelRef | None:
    """The deployed model a release target read (from annotations or labels)."""
    # A workload without a valid model annotation (made by hand, or before modelship) counts as
    # "not the latest": redeploying it is the safe answer.
    if not sha256 or not SHA256.match(sha256):
        return None
    return ModelRef(version or "", sha256)


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
