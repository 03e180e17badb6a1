"""The release record: the one file through which build, test, push, render and apply hand over.

`build/record.json` says which image was built (its content tag, inputs digest and labels),
which model it embeds (name, version, sha256 and the golden samples a smoke test replays),
where it was pushed per environment (repository and digest) and which image the contract
test passed for. It is the only artifact a later stage needs besides the rendered manifests,
so a pipeline agent that downloads it never reads `build/model/`. This module is its only
reader and writer: the file has a schema version, is read into typed objects and is written
atomically. It must never hold a credential.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from modelship_serving import golden as golden_rules

from . import stage_files
from .errors import PipelineError
from .model_metadata import LABEL_SAFE, LABEL_SAFE_RULE, SHA256

SCHEMA_VERSION = 2
# What `git rev-parse HEAD` prints (SHA-1 or SHA-256 object names), or gitinfo's word for a
# tree that is no git checkout. Anchored with \A...\Z like every pattern in model_metadata.
GIT_REVISION = re.compile(r"\A(?:[0-9a-f]{40}|[0-9a-f]{64}|unknown)\Z")


def record_path() -> Path:
    return stage_files.on_disk(stage_files.RECORD_FILE)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ImageRecord(_Frozen):
    repository: str
    tag: str
    inputs: str = ""
    base: str = ""
    # The local engine's image id; None when the build found the image already pushed.
    id: str | None = None
    # How later stages name the image: `<repository>:<tag>` locally, or by registry digest.
    name: str
    labels: dict[str, str] = {}
    size_bytes: int | None = None
    up_to_date: bool = False

    @field_validator("tag")
    @classmethod
    def _tag_label_safe(cls, value: str) -> str:
        return _label_safe(value)


def _label_safe(value: str) -> str:
    # Image tags and model names reach image labels and manifests: a newline there could
    # inject YAML or a label of its own.
    if not LABEL_SAFE.match(value):
        raise ValueError(f"{value!r} is not Kubernetes-label-safe ({LABEL_SAFE_RULE})")
    return value


class Tolerance(_Frozen):
    rel: float = golden_rules.DEFAULT_RELATIVE
    abs: float = golden_rules.DEFAULT_ABSOLUTE


class ModelRecord(_Frozen):
    name: str
    version: str
    sha256: str
    task: str = "classification"
    # The published golden samples ({"instance": [...], "label": ...}): what the contract
    # test, the local deploy and the post-rollout smoke test score.
    golden: list[dict[str, Any]] = []
    # How far served numbers may be from the golden ones (app.golden); the defaults for
    # records written before the model carried one.
    tolerance: Tolerance = Tolerance()

    @field_validator("name", "version")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        return _label_safe(value)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not SHA256.match(value):
            raise ValueError(f"{value!r} is not 64 lowercase hex digits")
        return value

    def as_metadata(self) -> dict:
        """The shape `service_checks` reads, the same as the model's own metadata.json."""
        return self.model_dump()


class SourceRecord(_Frozen):
    revision: str
    dirty: bool = False

    @field_validator("revision")
    @classmethod
    def _git_object_name(cls, value: str) -> str:
        # It becomes an image label, a manifest annotation and a GIT_REVISION variable.
        if not GIT_REVISION.match(value):
            raise ValueError(f"{value!r} is not a git commit (40 or 64 lowercase hex digits)")
        return value


class PushRecord(_Frozen):
    repository: str
    tag: str = ""
    digest: str
    reference: str
    # The image inputs this push carries: a later build with other inputs makes it stale.
    inputs: str = ""
    bytes_pushed: int = 0

    @field_validator("tag")
    @classmethod
    def _tag_label_safe(cls, value: str) -> str:
        return _label_safe(value) if value else value


class ContractTestRecord(_Frozen):
    # The image (local id or registry reference) the contract test passed for.
    image: str


class CanaryRecord(_Frozen):
    """The last canary of this build in one environment: what it decided, window by window
    (`canary_analysis.Decision.as_record`)."""
    reference: str
    outcome: str  # promoted, rolled back
    reason: str
    decisions: list[dict[str, Any]] = []


class ReleaseRecord(_Frozen):
    schema_version: int = SCHEMA_VERSION
    image: ImageRecord
    model: ModelRecord
    source: SourceRecord
    pushed: dict[str, PushRecord] = {}
    contract_test: ContractTestRecord | None = None
    canary: dict[str, CanaryRecord] = {}

    def with_canary(self, env: str, canary: CanaryRecord) -> ReleaseRecord:
        return self.model_copy(update={"canary": {**self.canary, env: canary}})

    def push_for(self, env: str) -> PushRecord | None:
        """The push of this very build for `env`, or None if it has not been pushed there."""
        pushed = self.pushed.get(env)
        if pushed is not None and pushed.inputs == self.image.inputs:
            return pushed
        return None

    def require_push(self, env: str) -> PushRecord:
        pushed = self.push_for(env)
        if pushed is None:
            raise PipelineError(
                f"The current build has not been pushed for environment '{env}'.",
                f"Run `invoke push --env={env}` first.",
            )
        return pushed

    def with_push(self, env: str, pushed: PushRecord) -> ReleaseRecord:
        return self.model_copy(update={"pushed": {**self.pushed, env: pushed}})

    def with_contract_test(self, image: str) -> ReleaseRecord:
        return self.model_copy(update={"contract_test": ContractTestRecord(image=image)})

    @property
    def local_image(self) -> str:
        """What the local engine knows this build as: its id, else its registry name."""
        return self.image.id or self.image.name


def exists(path: Path | None = None) -> bool:
    return (path or record_path()).is_file()


def load(path: Path | None = None) -> ReleaseRecord:
    path = path or record_path()
    if not path.is_file():
        raise PipelineError(
            f"No image has been built yet ({_shown(path)} is missing).",
            "Run `invoke build` first (on a pipeline agent: download the build's "
            "`record` artifact into build/).",
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PipelineError(f"{_shown(path)} is not readable JSON ({error}).",
                            "Run `invoke build` again to write a new one.") from None
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise PipelineError(
            f"{_shown(path)} has schema version {version}; this modelship reads version "
            f"{SCHEMA_VERSION}.",
            "Rebuild with `invoke build` (or use the modelship version that wrote it).",
        )
    try:
        return ReleaseRecord.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PipelineError(f"{_shown(path)} is malformed at {where}: {first['msg']}.",
                            "Run `invoke build` again to write a new one.") from None


def save(record: ReleaseRecord, path: Path | None = None) -> Path:
    """Write the record atomically: a reader sees the old file or the new one, never half."""
    path = path or record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _shown(path: Path) -> str:
    root = stage_files.PROJECT_ROOT
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
