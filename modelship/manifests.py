"""Rendering `templates/k8s/*.yaml.j2` into reviewable manifests for one environment.

Output goes to `build/k8s/<env>/`, one file per Kubernetes object named after its kind,
each with a header naming the source revision and model, keys sorted, the image pinned by
the digest the push recorded. The same record and config always give the same bytes, so a
rendering can be compared with an earlier one (`drift`). Rendering is strict: a value
missing from the config is an error that names it. It must never render a secret's value,
only references to Secrets.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jinja2
import yaml

from .errors import PipelineError
from .settings import PROJECT_ROOT, Settings

TEMPLATE_DIR = PROJECT_ROOT / "templates" / "k8s"


def _pinned_image(settings: Settings, pushed: dict) -> str:
    reference = pushed.get("reference", "")
    if "@sha256:" not in reference:
        raise PipelineError(
            f"The pushed image for '{settings.env}' is not pinned by digest ({reference!r}).",
            f"Run `invoke push --env={settings.env}` again so the record holds the digest.",
        )
    return reference


def app_config(settings: Settings, record: dict) -> dict:
    """The ConfigMap's data: plain settings the app reads from its environment."""
    deployment = settings.deployment
    return {
        "APP_VERSION": str(record["image"]["tag"]),
        "GIT_REVISION": str(record["source"]["revision"]),
        "MAX_BATCH": str(deployment["max_batch"]),
        "WEB_CONCURRENCY": str(deployment["web_concurrency"]),
    }


def template_values(settings: Settings, record: dict, pushed: dict) -> dict:
    try:
        return _template_values(settings, record, pushed)
    except KeyError as missing:
        raise PipelineError(
            f"Rendering for '{settings.env}' needs {missing.args[0]!r}, which neither the "
            "config's deployment section nor the build record has.",
            f"Add it under modelship.defaults.deployment (or environments.{settings.env}) in "
            "invoke.yaml, or rebuild to refresh build/record.json.",
        ) from None


def _template_values(settings: Settings, record: dict, pushed: dict) -> dict:
    deployment = settings.deployment
    instance = f"{settings.app_name}-{settings.env}"
    config = app_config(settings, record)
    return {
        "env": settings.env,
        "app_name": settings.app_name,
        "namespace": settings.kubernetes.namespace,
        "image": _pinned_image(settings, pushed),
        "deployment": deployment,
        "container_port": deployment["container_port"],
        "autoscaling": deployment["autoscaling"],
        "service": deployment["service"],
        "ingress": deployment["ingress"],
        "api_key": deployment["api_key"],
        # The serving app reads API_KEY_FILE; this is where the Secret is mounted.
        "api_key_mount_path": "/var/run/secrets/modelship",
        "revision": record["source"]["revision"],
        "model": record["model"],
        "app_config": config,
        "config_sha256": hashlib.sha256(
            json.dumps(config, sort_keys=True).encode()
        ).hexdigest(),
        "release_annotations": {
            "modelship.ai/git-revision": str(record["source"]["revision"]),
            "modelship.ai/source-dirty": str(bool(record["source"].get("dirty"))).lower(),
            "modelship.ai/model-name": str(record["model"]["name"]),
            "modelship.ai/model-version": str(record["model"]["version"]),
            "modelship.ai/model-sha256": str(record["model"]["sha256"]),
        },
        "selector": {
            "app.kubernetes.io/name": settings.app_name,
            "app.kubernetes.io/instance": instance,
        },
        "labels": {
            "app.kubernetes.io/name": settings.app_name,
            "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/version": str(record["image"]["tag"]),
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": settings.app_name,
            "app.kubernetes.io/managed-by": "modelship",
        },
    }


def _jinja_environment(template_dir: Path) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters["to_yaml"] = lambda value: yaml.safe_dump(
        value, default_flow_style=True, sort_keys=True, width=10_000
    ).strip()
    return environment


def header(settings: Settings, record: dict) -> str:
    model = record["model"]
    dirty = " (uncommitted changes)" if record["source"].get("dirty") else ""
    return (
        f"# Rendered by modelship for environment '{settings.env}' from revision "
        f"{record['source']['revision']}{dirty}\n"
        f"# model {model['name']} {model['version']} sha256:{model['sha256']}\n"
    )


def render_objects(settings: Settings, record: dict, pushed: dict,
                   template_dir: Path = TEMPLATE_DIR) -> dict[str, dict]:
    """Every object the templates produce for `settings.env`, keyed by its file name."""
    environment = _jinja_environment(template_dir)
    values = template_values(settings, record, pushed)
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
            raise PipelineError(
                f"{template_path.name} rendered invalid YAML for '{settings.env}': {error}.",
                "Check the template and the values it got (quotes, indentation).",
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


def write_objects(objects: dict[str, dict], text_header: str, output_dir: Path) -> list[Path]:
    """Replace `output_dir` with one file per object; a failed write leaves the old folder."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the review folder is for everyone
    try:
        for name, document in objects.items():
            (staging / name).write_text(text_header + yaml.safe_dump(
                document, sort_keys=True, default_flow_style=False, width=10_000
            ))
        shutil.rmtree(output_dir, ignore_errors=True)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [output_dir / name for name in objects]


def render(settings: Settings, record: dict, pushed: dict,
           template_dir: Path = TEMPLATE_DIR, output_dir: Path | None = None) -> list[Path]:
    objects = render_objects(settings, record, pushed, template_dir)
    return write_objects(objects, header(settings, record), output_dir or settings.render_dir)


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


def check(settings: Settings, record: dict, pushed: dict, expected_dir: Path,
          template_dir: Path = TEMPLATE_DIR) -> list[str]:
    """Render into a temporary folder and diff it with `expected_dir`; writes nothing else."""
    with tempfile.TemporaryDirectory(prefix="modelship-render-") as scratch:
        fresh = Path(scratch) / settings.env
        render(settings, record, pushed, template_dir, output_dir=fresh)
        return drift(expected_dir, fresh)
