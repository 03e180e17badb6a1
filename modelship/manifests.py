"""Rendering `templates/k8s/*.yaml.j2` into reviewable manifests for one environment.

Output goes to `build/k8s/<env>/`, one file per Kubernetes object named after its kind,
each with a header naming the source revision and model, keys sorted, the image pinned by
digest: the one the push recorded, or one given for review (`render --image`). The same
inputs always give the same bytes, so a rendering can be compared with an earlier one
(`drift`). Rendering is strict (a value missing from the config is an error that names it)
and all-or-nothing: files are written and validated in a staging folder that replaces the
reviewed one only when every check passed. It must never render a secret's value, only
references to Secrets.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2
import yaml

from .errors import PipelineError
from .names import (GIT_REVISION_ANNOTATION, MODEL_NAME_ANNOTATION, MODEL_SHA256_ANNOTATION,
                    MODEL_VERSION_ANNOTATION, SOURCE_DIRTY_ANNOTATION)
from .release_record import PushRecord, ReleaseRecord
from .settings import Settings
from .stage_files import PROJECT_ROOT

TEMPLATE_DIR = PROJECT_ROOT / "templates" / "k8s"
PINNED_IMAGE = re.compile(r"\A[^\s@]+@sha256:[0-9a-f]{64}\Z")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Release:
    """What a rendering shows: the image by digest, the source revision and the model."""
    image: str
    version_label: str
    revision: str
    dirty: bool
    model_name: str
    model_version: str
    model_sha256: str
    # Said in every file's header when the image did not come from the release record.
    note: str = ""

    @classmethod
    def from_record(cls, record: ReleaseRecord, pushed: PushRecord) -> Release:
        return cls(image=pushed.reference, version_label=record.image.tag,
                   revision=record.source.revision, dirty=record.source.dirty,
                   model_name=record.model.name, model_version=record.model.version,
                   model_sha256=record.model.sha256)

    @classmethod
    def for_review(cls, image: str, revision: str, dirty: bool) -> Release:
        """A rendering of the templates around a given image, with no build behind it."""
        digest = image.rpartition("@sha256:")[2]
        return cls(image=image, version_label=f"review-{digest[:12]}", revision=revision,
                   dirty=dirty, model_name=UNKNOWN, model_version=UNKNOWN,
                   model_sha256=UNKNOWN,
                   note="# image given with `render --image` for review (no build record): "
                        "model unknown\n")


def _pinned_image(settings: Settings, release: Release) -> str:
    if not PINNED_IMAGE.match(release.image):
        raise PipelineError(
            f"The image for '{settings.env}' is not pinned by digest ({release.image!r}).",
            f"Give it as REPOSITORY@sha256:<64 hex>, or run `invoke push --env={settings.env}` "
            "so the record holds the digest.",
        )
    return release.image


# Where the server keeps its shared counters and the drain marker the preStop hook sets:
# inside the pod's /tmp emptyDir, the only writable place.
POD_RUN_DIRECTORY = "/tmp/modelship"
# Seconds between the server's last request and the kubelet's SIGKILL, on top of the drain
# and the server's own shutdown timeout.
GRACE_MARGIN_SECONDS = 5


def needed(settings: Settings, *path: str):
    """The deployment setting at `path` that a rendering needs. The settings invent no
    deployment value, so one the files leave out is None here: KeyError naming the first
    key that is missing, which `template_values` turns into a message saying where to add it.
    """
    value = settings.deployment
    for key in path:
        value = getattr(value, key)
        if value is None:
            raise KeyError(key)
    return value


def given(section) -> dict:
    """A section as the templates read it: only the keys the files set, so a template that
    needs one left out fails strictly (StrictUndefined) and names it."""
    return section.model_dump(exclude_unset=True)


def app_config(settings: Settings, release: Release) -> dict:
    """The ConfigMap's data: plain settings the app reads from its environment."""
    return {
        "APP_VERSION": release.version_label,
        "GIT_REVISION": release.revision,
        "MAX_BATCH": str(needed(settings, "max_batch")),
        "METRICS_DIR": POD_RUN_DIRECTORY,
        "SHUTDOWN_DRAIN_SECONDS": str(needed(settings, "drain_seconds")),
        "WEB_CONCURRENCY": str(needed(settings, "web_concurrency")),
        "WORKERS_KILL_TIMEOUT_SECONDS": str(needed(settings, "shutdown_timeout_seconds")),
    }


def config_map_name(app_name: str, config: dict) -> str:
    """`<app>-config-<10 hex of the data's sha256>`: new data, new name (kustomize's way)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return f"{app_name}-config-{digest[:10]}"


def uses_ingress(settings: Settings) -> bool:
    return bool(needed(settings, "ingress", "hosts"))


def _public_edge(settings: Settings) -> bool:
    """True when the Service itself is the public load balancer (no Ingress in front)."""
    if not uses_ingress(settings):
        return True
    if needed(settings, "service").dns_label:
        raise PipelineError(
            f"'{settings.env}' sets both deployment.ingress.hosts and "
            "deployment.service.dns_label: with an Ingress the Service is ClusterIP and has no "
            "public address to name.",
            "Remove deployment.service.dns_label (the Ingress hosts are the public names), or "
            "empty ingress.hosts to expose a LoadBalancer instead.",
        )
    return False


def template_values(settings: Settings, release: Release) -> dict:
    try:
        return _template_values(settings, release)
    except KeyError as missing:
        raise PipelineError(
            f"Rendering for '{settings.env}' needs {missing.args[0]!r}, which neither the "
            "config's deployment section nor the build record has.",
            f"Add it under modelship.defaults.deployment (or environments.{settings.env}) in "
            "invoke.yaml, or rebuild to refresh the release record.",
        ) from None


def _template_values(settings: Settings, release: Release) -> dict:
    instance = f"{settings.app_name}-{settings.env}"
    config = app_config(settings, release)
    return {
        "env": settings.env,
        "app_name": settings.app_name,
        "namespace": settings.kubernetes.namespace,
        "image": _pinned_image(settings, release),
        "deployment": given(settings.deployment),
        "container_port": needed(settings, "container_port"),
        # The app's own routes where its contract names them, else the image server's.
        "probes": {"health": settings.contract.probed_health_path,
                   "readiness": settings.contract.probed_readiness_path},
        "autoscaling": given(needed(settings, "autoscaling")),
        "service": given(needed(settings, "service")),
        "ingress": given(needed(settings, "ingress")),
        "api_key": given(needed(settings, "api_key")),
        # The serving app reads API_KEY_FILE; this is where the Secret is mounted.
        "api_key_mount_path": "/var/run/secrets/modelship",
        "revision": release.revision,
        "model": {"name": release.model_name, "version": release.model_version,
                  "sha256": release.model_sha256},
        "app_config": config,
        "config_map_name": config_map_name(settings.app_name, config),
        "public_load_balancer": _public_edge(settings),
        "termination_grace_seconds": int(needed(settings, "drain_seconds"))
        + int(needed(settings, "shutdown_timeout_seconds")) + GRACE_MARGIN_SECONDS,
        "release_annotations": {
            GIT_REVISION_ANNOTATION: release.revision,
            SOURCE_DIRTY_ANNOTATION: str(release.dirty).lower(),
            MODEL_NAME_ANNOTATION: release.model_name,
            MODEL_VERSION_ANNOTATION: release.model_version,
            MODEL_SHA256_ANNOTATION: release.model_sha256,
        },
        # On the pod template: what `rollout undo` brings back with the pods it restores.
        "pod_annotations": {
            GIT_REVISION_ANNOTATION: release.revision,
            MODEL_SHA256_ANNOTATION: release.model_sha256,
        },
        "selector": {
            "app.kubernetes.io/name": settings.app_name,
            "app.kubernetes.io/instance": instance,
        },
        "labels": {
            "app.kubernetes.io/name": settings.app_name,
            "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/version": release.version_label,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": settings.app_name,
            "app.kubernetes.io/managed-by": "modelship",
        },
    }


# Wide enough that PyYAML never folds a value onto a second line, which would lose
# the indentation the template gives it.
ONE_LINE = 2**31


class YamlText(str):
    """Text that is YAML already: the renderer writes it as it is."""


def yaml_value(value) -> YamlText:
    """One value as YAML that reads back as the same value: every string quoted.

    Settings go into the manifests through here, so `ingress.hosts: ["null"]` or a
    class name `on` stays the string it was instead of becoming null or true, and a
    newline or `: ` in a value cannot start a key of its own.
    """
    if isinstance(value, YamlText):
        return value
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the value the config lacks
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return YamlText("{%s}" % ", ".join(f"{yaml_value(key)}: {yaml_value(inner)}"
                                            for key, inner in items))
    if isinstance(value, (list, tuple)):
        return YamlText("[%s]" % ", ".join(yaml_value(inner) for inner in value))
    if isinstance(value, str):
        return YamlText(yaml.safe_dump(value, default_style='"', allow_unicode=True,
                                       width=ONE_LINE).strip())
    if value is None or isinstance(value, (bool, int, float)):
        return YamlText(json.dumps(value))
    raise PipelineError(
        f"a template inserted a {type(value).__name__} ({value!r}), which has no YAML form.",
        "Insert strings, numbers, booleans, lists or mappings.",
    )


def _jinja_environment(template_dir: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
        finalize=yaml_value,  # every {{ … }} writes a YAML value, strings quoted
    )
    environment.filters["to_yaml"] = yaml_value  # kept for templates written before finalize
    return environment


def header(settings: Settings, release: Release) -> str:
    dirty = " (uncommitted changes)" if release.dirty else ""
    return (
        f"# Rendered by modelship for environment '{settings.env}' from revision "
        f"{release.revision}{dirty}\n"
        f"# model {release.model_name} {release.model_version} sha256:{release.model_sha256}\n"
        + release.note
    )


def render_objects(settings: Settings, release: Release,
                   template_dir: Path | None = None) -> dict[str, dict]:
    """Every object the templates produce for `settings.env`, keyed by its file name."""
    template_dir = template_dir or TEMPLATE_DIR
    environment = _jinja_environment(template_dir)
    values = template_values(settings, release)
    objects: dict[str, dict] = {}
    for template_path in sorted(template_dir.glob("*.yaml.j2")):
        try:
            text = environment.get_template(template_path.name).render(**values)
        except jinja2.UndefinedError as error:
            raise PipelineError(
                f"{template_path.name} needs a value the config lacks: {error.message}.",
                f"Add it under modelship.defaults.deployment (or environments.{settings.env})"
                " in invoke.yaml.",
            ) from None
        try:
            documents = [doc for doc in yaml.safe_load_all(text) if doc]
        except yaml.YAMLError as error:
            quoted_placeholder = re.search(r"""["']\{\{""", template_path.read_text())
            raise PipelineError(
                f"{template_path.name} rendered invalid YAML for '{settings.env}': {error}.",
                "Remove the quotes around {{ … }}: every value is written as quoted YAML"
                " already." if quoted_placeholder else
                "Check the template and the values it got (indentation).",
            ) from None
        for document in documents:
            name = _file_name(document, objects)
            objects[name] = document
    return dict(sorted(objects.items()))


def _file_name(document: dict, taken: dict) -> str:
    kind = str(document.get("kind", "object")).lower()
    name = f"{kind}.yaml"
    if name in taken:
        name = f"{kind}-{document.get('metadata', {}).get('name', len(taken))}.yaml"
    return name


def serialized(objects: dict[str, dict], text_header: str) -> dict[str, bytes]:
    """Each object's file as it is written: header, then sorted block-style YAML."""
    return {name: (text_header + yaml.safe_dump(
        document, sort_keys=True, default_flow_style=False, width=10_000)).encode()
        for name, document in objects.items()}


def write_objects(objects: dict[str, dict], text_header: str, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in serialized(objects, text_header).items():
        (folder / name).write_bytes(data)
    return [folder / name for name in objects]


# Beside the manifests in a validated folder: which bytes passed which checks. No .yaml
# suffix, so kubectl and the checks never read it as a manifest.
VALIDATED_STAMP = ".validated"


def _stamp(files: dict[str, bytes], checks: str) -> dict:
    return {"checks": checks,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}


def already_rendered(settings: Settings, release: Release, checks: str,
                     template_dir: Path | None = None) -> bool:
    """True when the folder holds exactly this rendering and it passed these very checks:
    then rendering again would write the same bytes and validate them again for nothing."""
    folder = settings.render_dir
    try:
        stamp = json.loads((folder / VALIDATED_STAMP).read_text())
    except (OSError, ValueError):
        return False
    files = serialized(render_objects(settings, release, template_dir), header(settings, release))
    if stamp != _stamp(files, checks):
        return False
    on_disk = {path.name: path.read_bytes() for path in folder.glob("*.yaml")}
    return on_disk == files  # a hand edit since, or a file added, means render again


def render(settings: Settings, release: Release, template_dir: Path | None = None,
           output_dir: Path | None = None,
           validate: Callable[[Path], list[str]] | None = None,
           checks: str | None = None) -> list[str]:
    """Render, validate in a staging folder, then swap it in; returns the checks' report.

    A failure anywhere (template, schema, policy, disk) leaves `output_dir` byte for byte as
    it was, so `apply` never takes a rendering nobody could have reviewed. With `checks`
    (a fingerprint of the checks `validate` runs) the folder records what passed them.
    """
    output_dir = output_dir or settings.render_dir
    objects = render_objects(settings, release, template_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.rendering.", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the review folder is for everyone
    retired = output_dir.with_name(f".{output_dir.name}.previous")
    try:
        write_objects(objects, header(settings, release), staging)
        report = validate(staging) if validate else []
        if checks is not None and validate is not None:
            files = serialized(objects, header(settings, release))
            (staging / VALIDATED_STAMP).write_text(json.dumps(_stamp(files, checks),
                                                              sort_keys=True) + "\n")
        shutil.rmtree(retired, ignore_errors=True)
        if output_dir.exists():
            output_dir.rename(retired)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not output_dir.exists():
            retired.rename(output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    return report


def drift(expected_dir: Path, actual_dir: Path) -> list[str]:
    """Unified diff lines between two renderings (empty when they are the same)."""
    expected = {p.name: p for p in expected_dir.glob("*.yaml")} if expected_dir.is_dir() else {}
    actual = {p.name: p for p in actual_dir.glob("*.yaml")}
    lines: list[str] = []
    for name in sorted(expected.keys() | actual.keys()):
        before = expected[name].read_text().splitlines(keepends=True) if name in expected else []
        after = actual[name].read_text().splitlines(keepends=True) if name in actual else []
        if before != after:
            lines.extend(difflib.unified_diff(
                before, after, fromfile=f"{expected_dir}/{name}", tofile=f"rendered/{name}"
            ))
    return lines


def check(settings: Settings, release: Release, expected_dir: Path,
          template_dir: Path | None = None) -> list[str]:
    """Render into a temporary folder and diff it with `expected_dir`; writes nothing else."""
    with tempfile.TemporaryDirectory(prefix="modelship-render-") as scratch:
        fresh = Path(scratch) / settings.env
        render(settings, release, template_dir, output_dir=fresh)
        return drift(expected_dir, fresh)
