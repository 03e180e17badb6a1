"""Rendering `templates/k8s/*.yaml.j2` into reviewable manifests for one environment.

Output goes to `build/k8s/<env>/`, one file per template, each with a header naming the
source revision and model, and the image pinned by the digest the push recorded. Rendering
is strict: a value missing from the config is an error that names it. It must never
render a secret's value, only references to Secrets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2
import yaml

from .errors import PipelineError
from .settings import PROJECT_ROOT, Settings

TEMPLATE_DIR = PROJECT_ROOT / "templates" / "k8s"


def template_values(settings: Settings, record: dict, pushed: dict) -> dict:
    return {
        "env": settings.env,
        "app_name": settings.app_name,
        "namespace": settings.kubernetes.namespace,
        "image": pushed["reference"],
        "deployment": settings.deployment,
        "revision": record["source"]["revision"],
        "model": record["model"],
        "labels": {
            "app.kubernetes.io/name": settings.app_name,
            "app.kubernetes.io/instance": f"{settings.app_name}-{settings.env}",
            "app.kubernetes.io/version": record["image"]["tag"],
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": settings.app_name,
            "app.kubernetes.io/managed-by": "modelship",
        },
    }


def render(settings: Settings, record: dict, pushed: dict,
           template_dir: Path = TEMPLATE_DIR) -> list[Path]:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters["to_yaml"] = lambda value: yaml.safe_dump(
        value, default_flow_style=True, sort_keys=True
    ).strip()
    values = template_values(settings, record, pushed)
    header = (
        f"# Rendered by modelship for environment '{settings.env}' from revision "
        f"{values['revision']}\n# model {record['model']['name']} {record['model']['version']} "
        f"sha256:{record['model']['sha256']}\n"
    )
    output_dir = settings.render_dir
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = []
    for template_path in sorted(template_dir.glob("*.yaml.j2")):
        try:
            text = environment.get_template(template_path.name).render(**values)
        except jinja2.UndefinedError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise PipelineError(
                f"{template_path.name} needs a value the config lacks: {error.message}.",
                f"Add it for environment '{settings.env}' in invoke.yaml.",
            ) from None
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
        if not documents:
            continue
        target = staging / template_path.name.removesuffix(".j2")
        target.write_text(header + "---\n".join(
            yaml.safe_dump(doc, sort_keys=True, default_flow_style=False) for doc in documents
        ))
        written.append(output_dir / target.name)
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    return written
