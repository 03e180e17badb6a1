"""Building the serving image with the Docker SDK: app code + the fetched model.

The build runs with networking disabled against a context of exactly the files the
Dockerfile copies. Its inputs (Dockerfile, lock, app code, model, base image) are hashed
into an inputs digest, carried as a label and as an `inputs-…` tag in the registry: when
the registry already holds that tag, nothing is rebuilt. Otherwise the last pushed image
serves as layer cache. It must never send the build context anywhere but the local engine,
nor put a secret in a build argument or label.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, model_metadata
from .release_record import ImageRecord, ModelRecord, PushRecord, ReleaseRecord, SourceRecord
from .engine import docker_client  # noqa: F401  (callers that still name image.docker_client)
from .errors import PipelineError
from .gitinfo import SourceState
from .names import (CACHE_TAG, INPUTS_LABEL, MODEL_NAME_LABEL, MODEL_SHA256_LABEL,
                    MODEL_VERSION_LABEL, REVISION_LABEL, inputs_tag)
from .settings import Settings
from .stage_files import (BUILD_DIR, CONTEXT_DIR, PROJECT_ROOT, WHEELHOUSE_DIR,
                          in_toolkit_checkout, on_disk)
from .stage_files import MODEL_DIR as DECLARED_MODEL_DIR

MODEL_DIR = on_disk(DECLARED_MODEL_DIR)
WHEELHOUSE = on_disk(WHEELHOUSE_DIR)
IMAGE_REQUIREMENTS_IN = PROJECT_ROOT / "requirements" / "image.in"
IMAGE_LOCK = PROJECT_ROOT / "requirements" / "image.lock"
# What the image is made of, besides the model and the wheels (covered by the lock).
SOURCE_INPUTS = ("Dockerfile", ".dockerignore", "requirements/image.lock")
# The toolkit shapes the image too (wheelhouse, base image, labels, build context): a change to
# it must not reuse an image an older toolkit built.
SOURCE_TREES = ("app", "modelship", "modelship_serving")
# The code the toolkit's Dockerfile copies into the image: the sample app, and the server code
# it shares with the host side (modelship_serving).
IMAGE_CODE_TREES = ("app", "modelship_serving")
# A project's own code goes into the context's service/ folder: its files as git lists them
# (tracked, or new and not ignored), less what the pipeline itself reads or writes.
PROJECT_CODE_DIR = "service"
NOT_PROJECT_CODE = ("build/", ".local/", "ci/", "templates/", "requirements/", "tests/",
                    ".venv/", "venv/")
NOT_PROJECT_FILES = ("Dockerfile", ".dockerignore", "invoke.yaml", "tasks.py", ".gitignore")
def read_model_metadata(model_dir: Path = MODEL_DIR) -> dict:
    metadata = model_dir / "metadata.json"
    if not (metadata.exists() and (model_dir / "model.onnx").exists()):
        raise PipelineError(
            f"No fetched model in {model_dir}.",
            "Run `invoke fetch-model` first.",
        )
    try:
        content = json.loads(metadata.read_text())
    except ValueError as error:
        raise PipelineError(f"{metadata} is not valid JSON ({error}).",
                            "Run `invoke fetch-model` again.") from None
    # Its fields become image labels and, through the record, manifests: checked again here
    # in case the fetched file was edited by hand.
    return model_metadata.check(content, str(metadata), "Run `invoke fetch-model` again.")


def content_tag(source: SourceState, model_sha256: str) -> str:
    tag = f"{source.short}-{model_sha256[:8]}"
    return f"{tag}-dirty" if source.dirty else tag


def _tree_files(tree: Path) -> list[Path]:
    return [path for path in tree.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]


def project_code_files(root: Path) -> list[Path]:
    """A project's own code for the image: what git lists, less the pipeline's files."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "-z"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        raise PipelineError(f"{root} is not a git repository ({listed.stderr.strip()}).",
                            "Run `git init` there: the image records the commit it was built "
                            "from.")
    names = [name for name in listed.stdout.split("\0") if name]
    return sorted(root / name for name in names
                  if not name.startswith(NOT_PROJECT_CODE) and name not in NOT_PROJECT_FILES
                  and not name.endswith((".pyc", ".onnx")) and (root / name).is_file())


def code_in_image(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """The code the image gets, by its folder in the build context, with the files' paths
    relative to what they are copied from (the second value)."""
    import modelship_serving

    serving = Path(modelship_serving.__file__).parent
    if in_toolkit_checkout(root):
        return {tree: (root / tree, _tree_files(root / tree)) for tree in IMAGE_CODE_TREES}
    return {PROJECT_CODE_DIR: (root, project_code_files(root)),
            "modelship_serving": (serving, _tree_files(serving))}


def _source_files(root: Path) -> list[tuple[str, Path]]:
    """Every file that shapes the image, by a stable name."""
    files = [(name, root / name) for name in SOURCE_INPUTS]
    if in_toolkit_checkout(root):
        files += [(str(path.relative_to(root)), path)
                  for tree in SOURCE_TREES for path in _tree_files(root / tree)]
    else:
        files += [(f"{target}/{path.relative_to(origin)}", path)
                  for target, (origin, paths) in code_in_image(root).items() for path in paths]
    return sorted(files)


def inputs_digest(settings: Settings, model: dict, base_image_id: str,
                  root: Path = PROJECT_ROOT) -> str:
    """sha256 over everything that decides the image's content; not the build time."""
    digest = hashlib.sha256()
    for name, path in _source_files(root):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(json.dumps({
        "model_sha256": model["sha256"],
        "base": settings.image.base,
        "base_id": base_image_id,
        "platform": settings.image.platform,
        "python": settings.image.python_version,
        "app_version": __version__,
    }, sort_keys=True).encode())
    return digest.hexdigest()


# Each label the build sets, and the Dockerfile build argument that carries its value.
LABEL_BUILD_ARGS = {
    "org.opencontainers.image.title": "IMAGE_TITLE",
    "org.opencontainers.image.source": "IMAGE_SOURCE",
    "org.opencontainers.image.created": "IMAGE_CREATED",
    MODEL_NAME_LABEL: "MODEL_NAME",
    MODEL_VERSION_LABEL: "MODEL_VERSION",
    MODEL_SHA256_LABEL: "MODEL_SHA256",
    INPUTS_LABEL: "IMAGE_INPUTS",
}


def image_labels(settings: Settings, source: SourceState, model: dict, inputs: str) -> dict:
    return {
        "org.opencontainers.image.title": settings.app_name,
        REVISION_LABEL: source.revision,
        "org.opencontainers.image.source": source.source_url,
        "org.opencontainers.image.created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "org.opencontainers.image.version": __version__,
        MODEL_NAME_LABEL: str(model.get("name", "")),
        MODEL_VERSION_LABEL: str(model.get("version", "")),
        MODEL_SHA256_LABEL: str(model.get("sha256", "")),
        INPUTS_LABEL: inputs,
    }


# The labels a reused image must carry with exactly this build's values (the build time, the
# commit and its URL may differ: the same inputs at another commit make the same image).
PROOF_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.version",
    MODEL_NAME_LABEL,
    MODEL_VERSION_LABEL,
    MODEL_SHA256_LABEL,
    INPUTS_LABEL,
)


def label_mismatches(labels: dict, expected: dict) -> list[str]:
    return [f"{name} is {labels.get(name)!r}, not {expected[name]!r}"
            for name in PROOF_LABELS if labels.get(name) != expected[name]]


def provenance_problem(settings: Settings, digest: str, model_sha256: str,
                       auth: dict | None) -> str | None:
    """Why the signed build provenance of `digest` does not allow reusing it (None: it
    does, or the environment has no provenance.public_key). Labels only show what the image
    claims; anyone who can push can forge them, not the signature."""
    from .provenance import cached_image_problem as unverified

    return unverified(settings, digest, model_sha256, auth)


def cached_image_problem(client, reference: str, plan: "BuildPlan",
                         auth: dict | None, settings: Settings) -> str | None:
    """Why the registry's image for these inputs must not be reused, or None when it may.

    It is pulled (the test stage would pull it anyway), its labels compared with what
    this build would write and its signed provenance checked."""
    from .local_runtime import pull

    try:
        pull(client, reference, auth)
        labels = client.images.get(reference).labels or {}
    except PipelineError as error:
        return error.problem
    mismatches = label_mismatches(labels, plan.labels)
    if mismatches:
        return "its labels do not match these inputs (" + "; ".join(mismatches) + ")"
    return provenance_problem(settings, reference.rpartition("@")[2], plan.model["sha256"],
                              auth)


def base_image_id(client, name: str) -> str:
    """The base image's layer digests: its content, unchanged by a re-import or re-tag."""
    import docker

    try:
        layers = client.images.get(name).attrs.get("RootFS", {}).get("Layers", [])
    except docker.errors.ImageNotFound:
        # A pullable base the engine has not pulled yet: the name is all we know.
        return ""
    return hashlib.sha256("\n".join(layers).encode()).hexdigest()


def registry_digest(client, reference: str, auth: dict | None) -> str | None:
    """Manifest digest of `reference` in its registry, or None when it is not there."""
    import docker

    try:
        answer = client.api.inspect_distribution(reference, auth_config=auth)
    except docker.errors.APIError:
        return None
    return answer.get("Descriptor", {}).get("digest")


def built_here_before(client, repository: str) -> bool:
    """Whether this engine holds an image an earlier build of `repository` made: then its
    own layer cache is warm. The classic builder given --cache-from uses only those images
    as cache, and the dependency stage is in none of them: it would install every wheel
    again, so --cache-from is for agents that start cold."""
    return any(any(tag.split("@")[0].rsplit(":", 1)[0] == repository for tag in image.tags)
               for image in client.images.list(filters={"label": INPUTS_LABEL}))


def pull_cache_image(client, repository: str, auth: dict | None) -> str | None:
    """Pull the last pushed image so its layers can serve as cache; None when there is none."""
    import docker

    reference = f"{repository}:{CACHE_TAG}"
    try:
        for chunk in client.api.pull(repository, tag=CACHE_TAG, stream=True, decode=True,
                                     auth_config=auth):
            if "error" in chunk:
                return None
    except docker.errors.APIError:
        return None
    return reference


def build_context(root: Path = PROJECT_ROOT) -> Path:
    """A folder holding only what the Dockerfile copies: small, and no secret can slip in."""
    import shutil

    context = on_disk(CONTEXT_DIR)
    shutil.rmtree(context, ignore_errors=True)
    (context / BUILD_DIR).mkdir(parents=True)
    (context / "requirements").mkdir()
    for name in ("Dockerfile", ".dockerignore", "requirements/image.lock"):
        shutil.copy2(root / name, context / name)
    for target, (origin, paths) in code_in_image(root).items():
        for path in paths:
            destination = context / target / path.relative_to(origin)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    # Hard links: the wheels and the model are large and already verified. The context holds
    # them where the Dockerfile copies them from: where they lie in the checkout.
    shutil.copytree(WHEELHOUSE, context / WHEELHOUSE_DIR, copy_function=_link_or_copy)
    (context / DECLARED_MODEL_DIR).mkdir()
    for name in ("model.onnx", "metadata.json"):
        _link_or_copy(MODEL_DIR / name, context / DECLARED_MODEL_DIR / name)
    return context


def _link_or_copy(source, target):
    import os
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# "Step 3/27 : COPY ..." in the classic builder's stream.
BUILD_STEP = re.compile(r"Step (\d+)/(\d+) :")


def _run_build(client, context: Path, tag: str, buildargs: dict, cache_from: list[str], echo,
               no_cache: bool = False) -> str:
    import docker

    from .console import current

    image_id = None
    recent: list[str] = []
    output = current()
    try:
        stream = client.api.build(
            path=str(context), dockerfile="Dockerfile", tag=tag, buildargs=buildargs,
            network_mode="none", rm=True, forcerm=True, pull=False, decode=True,
            cache_from=cache_from or None, nocache=no_cache,
        )
        with output.progress("building image", None, unit="steps") as steps:
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    context_lines = " | ".join(recent[-3:])
                    raise PipelineError(
                        f"The image build failed: {detail.strip()}"
                        + (f" (after: {context_lines})" if context_lines else ""),
                        "Fix the Dockerfile step above; the build has no network, so every "
                        "dependency must be in build/wheelhouse.",
                    )
                line = chunk.get("stream", "").strip()
                if line:
                    recent.append(line[:200])
                    output.detail(f"  {line}")
                    step = BUILD_STEP.match(line)
                    if step:
                        steps.update(int(step.group(1)) - 1, int(step.group(2)))
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
            if steps.total:
                steps.update(steps.total)
    except docker.errors.APIError as error:
        raise PipelineError(
            f"The Docker Engine refused the build: {error.explanation}",
            "Check that the base image exists locally (`docker images`).",
        ) from None
    return image_id or client.images.get(tag).id


@dataclass(frozen=True)
class BuildPlan:
    tag: str
    inputs: str
    labels: dict
    model: dict
    source: SourceState


def plan_build(client, settings: Settings, source: SourceState) -> BuildPlan:
    model = read_model_metadata()
    inputs = inputs_digest(settings, model, base_image_id(client, settings.image.base))
    return BuildPlan(
        tag=content_tag(source, model["sha256"]), inputs=inputs,
        labels=image_labels(settings, source, model, inputs), model=model, source=source,
    )


def _record(plan: BuildPlan, settings: Settings, **image) -> ReleaseRecord:
    return ReleaseRecord(
        image=ImageRecord(repository=settings.image.repository, tag=plan.tag, inputs=plan.inputs,
                          base=settings.image.base, **image),
        model=ModelRecord(
            name=str(plan.model["name"]), version=str(plan.model["version"]),
            sha256=str(plan.model["sha256"]), task=str(plan.model.get("task", "classification")),
            golden=list(plan.model.get("golden") or []),
            tolerance=dict(plan.model.get("tolerance") or {}),
        ),
        source=SourceRecord(revision=plan.source.revision, dirty=plan.source.dirty),
    )


def record_up_to_date(plan: BuildPlan, settings: Settings, digest: str) -> ReleaseRecord:
    """The record of an image the registry already holds for `settings.env`: nothing built."""
    repository = settings.image_repository
    record = _record(plan, settings, id=None, name=f"{repository}@{digest}",
                     labels=plan.labels, size_bytes=None, up_to_date=True)
    return record.with_push(settings.env, PushRecord(
        repository=repository, tag=plan.tag, digest=digest,
        reference=f"{repository}@{digest}", inputs=plan.inputs, bytes_pushed=0,
    ))


def build_image(client, settings: Settings, plan: BuildPlan, cache_from: list[str],
                echo, no_cache: bool = False) -> ReleaseRecord:
    local_name = f"{settings.image.repository}:{plan.tag}"
    buildargs = {
        "BASE_IMAGE": settings.image.base,
        "GIT_REVISION": plan.source.revision,
        "APP_VERSION": __version__,
        # One LABEL instruction at the end of the Dockerfile takes them all: labels given
        # through the API would cost the classic builder one step (a container) each.
        **{argument: plan.labels[label] for label, argument in LABEL_BUILD_ARGS.items()},
    }
    if not in_toolkit_checkout():
        # A project's image bakes its app's contract in (its Dockerfile's ENV lines), for
        # the image's server: which callable, which route and keys.
        buildargs.update({"APP_WSGI": settings.app.wsgi, **settings.contract.as_environment()})
    context = build_context()
    image_id = _run_build(client, context, local_name, buildargs, cache_from, echo, no_cache)
    image = client.images.get(image_id)
    missing = {label for label, value in plan.labels.items()
               if (image.labels or {}).get(label) != value}
    if missing:
        raise PipelineError(
            f"The built image lacks the labels {', '.join(sorted(missing))}.",
            "The Dockerfile's last LABEL instruction must set them from the build arguments "
            f"{', '.join(LABEL_BUILD_ARGS.values())}.",
        )
    return _record(plan, settings, id=image_id, name=local_name, labels=image.labels or {},
                   size_bytes=image.attrs.get("Size", 0), up_to_date=False)
