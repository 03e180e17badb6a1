"""The names several modules must agree on, each defined once: what the build writes on an
image, what a rendering writes on a Deployment, what "running in CI" means, and the type of
the progress callback every stage takes.

A key written here is read back elsewhere (`status`, `model.check`, the contract test), so a
rename happens in one place or not at all. The Dockerfile repeats the image labels because it
cannot import Python: `image.LABEL_BUILD_ARGS` maps each label to the build argument that
carries it, `build` refuses an image that lacks one, and a unit test holds the two files
together. This module only names: it must never
import another modelship module.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

# Every stage reports progress through one of these: print, the console, or a list in tests.
Echo = Callable[[str], None]

# --- labels on the image (and so on every container run from it) ------------------------------
REVISION_LABEL = "org.opencontainers.image.revision"
MODEL_NAME_LABEL = "ai.modelship.model.name"
MODEL_VERSION_LABEL = "ai.modelship.model.version"
MODEL_SHA256_LABEL = "ai.modelship.model.sha256"
# The digest of everything the image was built from: `build` finds an up-to-date image by it.
INPUTS_LABEL = "ai.modelship.inputs"

# --- labels on the containers modelship runs itself -------------------------------------------
ROLE_LABEL = "ai.modelship.role"
ENV_LABEL = "ai.modelship.env"
# The image the container replaced: what `invoke rollback` runs again.
PREVIOUS_IMAGE_LABEL = "ai.modelship.previous-image"
# What a release container runs, from the record `apply` verified (commit, model sha256), and
# the same of the container it replaced: `invoke rollback` verifies the previous one against
# them before it runs that image again.
RELEASE_COMMIT_LABEL = "ai.modelship.release.commit"
RELEASE_MODEL_SHA256_LABEL = "ai.modelship.release.model-sha256"
PREVIOUS_COMMIT_LABEL = "ai.modelship.previous.commit"
PREVIOUS_MODEL_SHA256_LABEL = "ai.modelship.previous.model-sha256"
# The slot port a deployment container listens on, behind the local edge.
SLOT_PORT_LABEL = "ai.modelship.slot-port"

# --- annotations on the rendered Deployment (and its pod template) ----------------------------
GIT_REVISION_ANNOTATION = "modelship.ai/git-revision"
SOURCE_DIRTY_ANNOTATION = "modelship.ai/source-dirty"
MODEL_NAME_ANNOTATION = "modelship.ai/model-name"
MODEL_VERSION_ANNOTATION = "modelship.ai/model-version"
MODEL_SHA256_ANNOTATION = "modelship.ai/model-sha256"

# --- where a task runs -------------------------------------------------------------------------
_FALSE_WORDS = ("", "0", "false", "no")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in _FALSE_WORDS


def running_in_azure_pipelines(environ: Mapping[str, str] = os.environ) -> bool:
    """Azure Pipelines sets TF_BUILD=True on every agent: its logging commands
    (`##vso[...]`) only mean something there."""
    return _truthy(environ.get("TF_BUILD"))


def running_in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Running in CI means CI or TF_BUILD is set to a truthy value (anything but empty, 0,
    false or no, in any case). Azure Pipelines sets TF_BUILD; most other CI systems set CI.
    In CI nobody answers a prompt, output is plain text, and the unit tests run whole."""
    return running_in_azure_pipelines(environ) or _truthy(environ.get("CI"))


# The tags `push` adds beside the commit's own: the newest build's (what the next build
# reuses layers from) and one naming the build's inputs (what lets a build skip the work).
CACHE_TAG = "latest"


def inputs_tag(inputs_digest: str) -> str:
    return f"inputs-{inputs_digest[:20]}"
