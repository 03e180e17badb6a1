"""Invoke tasks: the same pipeline on a laptop and in Azure Pipelines.

    fetch-model -> build -> test -> push -> render -> apply      (deploy runs them in order)

Each task is a thin call into the `modelship` package; settings come from invoke.yaml per
`--env`. Expected failures end with one line saying what failed and what to do.
"""

from __future__ import annotations

import functools
import sys

from invoke import Collection, Exit, task

from modelship import build_record, local_services, model_store
from modelship.errors import PipelineError
from modelship.settings import BUILD_DIR, PROJECT_ROOT, Settings, load_settings

ENV_HELP = "Environment from invoke.yaml: local, dev, staging or prod (default: local)."
PIPELINE = ("fetch-model", "build", "test", "push", "render", "apply")


def echo(message: str) -> None:
    print(message, flush=True)


def is_dry(c) -> bool:
    return bool(c.config.run.dry)


def pipeline_task(function):
    """Turn expected failures into one clear line and exit code 1, never a traceback."""
    @functools.wraps(function)
    def wrapper(c, *args, **kwargs):
        try:
            return function(c, *args, **kwargs)
        except PipelineError as error:
            raise Exit(f"{function.__name__.replace('_', '-')} failed: {error}", code=1)
    return wrapper


def _settings(c, env: str | None) -> Settings:
    return load_settings(c.config, env)


def _store(settings: Settings):
    return model_store.open_store(settings.model_store.uri, settings.model_store.account_url)


def _docker():
    from modelship.image import docker_client

    return docker_client()


# --- pipeline stages ------------------------------------------------------------------------


@task(help={"env": ENV_HELP, "version": "Model version to fetch, or 'latest' (default)."})
@pipeline_task
def fetch_model(c, env=None, version="latest"):
    """Download the model from the model store into build/model and verify its sha256."""
    settings = _settings(c, env)
    store = _store(settings)
    if is_dry(c):
        echo(f"[dry] would fetch {version} from {store.uri} into build/model")
        return
    result = model_store.fetch(store, BUILD_DIR / "model", version)
    state = "downloaded" if result.downloaded else "already up to date"
    echo(f"model {result.version} ({result.size} bytes, sha256 {result.sha256[:12]}…): {state}")


@task(help={"env": ENV_HELP})
@pipeline_task
def base_image(c, env=None):
    """Build the offline base image (debootstrap + docker import) if image.offline_base is set."""
    from modelship.base_image import ensure_base_image

    settings = _settings(c, env)
    if not settings.image.offline_base:
        echo(f"base image {settings.image.base}: pulled by the engine (offline_base is off)")
        return
    if is_dry(c):
        echo(f"[dry] would build {settings.image.base} offline if missing")
        return
    echo(ensure_base_image(_docker(), settings.image.base, settings.image.python_version, echo))


@task(help={"env": ENV_HELP})
@pipeline_task
def build(c, env=None):
    """Build the serving image (app + model) with networking disabled; writes build/record.json."""
    from modelship.base_image import ensure_base_image
    from modelship.gitinfo import source_state
    from modelship.image import IMAGE_REQUIREMENTS, WHEELHOUSE, build_image
    from modelship.wheelhouse import prepare_wheelhouse

    settings = _settings(c, env)
    if is_dry(c):
        echo(f"[dry] would build {settings.image.repository} from {settings.image.base}")
        return
    client = _docker()
    if settings.image.offline_base:
        echo(ensure_base_image(client, settings.image.base, settings.image.python_version, echo))
    echo(prepare_wheelhouse(IMAGE_REQUIREMENTS, WHEELHOUSE, settings.image.python_version,
                            settings.image.platform))
    record = build_image(client, settings, source_state(), echo)
    size_mb = record["image"]["size_bytes"] / 1e6
    echo(f"built {record['image']['name']} ({size_mb:.0f} MB)")


@task(help={"env": ENV_HELP, "unit": "Run the unit tests before the container test (default on)."})
@pipeline_task
def test(c, env=None, unit=True):
    """Run the unit tests, then start the built image and check /healthz, /readyz and /score."""
    from modelship.container_test import run_contract
    from modelship.image import read_model_metadata

    _settings(c, env)
    if unit:
        result = c.run(f"{sys.executable} -m pytest -q -p no:cacheprovider tests/unit", warn=True,
                       pty=False)
        if result is not None and not result.ok:
            raise PipelineError("The unit tests failed.", "Fix the failures listed above.")
    if is_dry(c):
        echo("[dry] would run the container contract test")
        return
    record = build_record.read_record()
    run_contract(_docker(), record["image"]["id"], read_model_metadata(), echo)
    echo(f"container test passed for {record['image']['name']}")


@task(help={"env": ENV_HELP})
@pipeline_task
def push(c, env=None):
    """Tag and push the built image to the environment's registry; records the digest."""
    from modelship.registry import push_image

    settings = _settings(c, env)
    record = build_record.read_record()
    if is_dry(c):
        echo(f"[dry] would push {record['image']['name']} to {settings.image_repository}")
        return
    pushed = push_image(_docker(), settings, record, echo)
    echo(f"pushed {pushed['reference']}")


@task(help={"env": ENV_HELP})
@pipeline_task
def render(c, env=None):
    """Render templates/k8s for the environment into build/k8s/<env>/, image pinned by digest."""
    from modelship.manifests import render as render_manifests

    settings = _settings(c, env)
    record = build_record.read_record()
    pushed = build_record.pushed_for(record, settings.env)
    written = render_manifests(settings, record, pushed)
    echo(f"rendered {len(written)} manifests into {settings.render_dir.relative_to(PROJECT_ROOT)}/")


@task(help={"env": ENV_HELP})
@pipeline_task
def apply(c, env=None):
    """Roll out the pushed image: kubectl apply + rollout status, or run it on the local engine."""
    settings = _settings(c, env)
    record = build_record.read_record()
    pushed = build_record.pushed_for(record, settings.env)
    if settings.runtime == "docker":
        from modelship import local_runtime
        from modelship.image import read_model_metadata
        from modelship.registry import registry_auth

        if is_dry(c):
            echo(f"[dry] would pull {pushed['reference']} and run it on 127.0.0.1:"
                 f"{settings.deployment['port']}")
            return
        url = local_runtime.deploy(_docker(), settings, pushed["reference"],
                                   registry_auth(settings), read_model_metadata(), echo)
        echo(f"serving {pushed['reference']} at {url} (try: curl {url}/version)")
        return
    from modelship import kube

    kube.apply(c, settings)
    echo(f"rolled out {pushed['reference']} to {settings.kubernetes.context}/"
         f"{settings.kubernetes.namespace}")


@task(help={"env": ENV_HELP})
def deploy(c, env=None):
    """Run fetch-model, build, test, push, render and apply in order; stop at the first failure."""
    try:
        settings = _settings(c, env)
    except PipelineError as error:
        raise Exit(f"deploy failed: {error}", code=1)
    if settings.runtime == "docker" and not is_dry(c):
        if not local_services.all_answer(settings.local_services):
            local_up(c, env=settings.env)
    stages = {
        "fetch-model": fetch_model, "build": build, "test": test,
        "push": push, "render": render, "apply": apply,
    }
    for name in PIPELINE:
        echo(f"==> {name} (--env={settings.env})")
        try:
            stages[name](c, env=settings.env)
        except Exit as failure:
            message = str(failure.message).split(": ", 1)[-1]
            raise Exit(
                f"deploy stopped at {name}: {message} "
                f"(re-run this stage alone with `invoke {name} --env={settings.env}`)",
                code=1,
            )
    echo(f"deploy --env={settings.env}: done")


# --- the local environment ----------------------------------------------------------------


@task(name="up", help={"env": ENV_HELP})
@pipeline_task
def local_up(c, env=None):
    """Start Docker Engine, the authenticated registry and Azurite on 127.0.0.1 if not running."""
    settings = _settings(c, env)
    if is_dry(c):
        echo("[dry] would start Docker Engine, the registry and Azurite where none answers")
        return
    for line in local_services.up(settings.local_services, echo):
        echo(line)


@task(name="down", help={"env": ENV_HELP})
@pipeline_task
def local_down(c, env=None):
    """Stop the local deployment and the services local.up started (nothing else)."""
    settings = _settings(c, env)
    if is_dry(c):
        echo("[dry] would remove the local deployment and stop the services local.up started")
        return
    if local_services.engine_answers():
        from modelship import local_runtime

        if local_runtime.remove(_docker(), settings):
            echo("removed the local deployment container")
    stopped = local_services.down()
    echo("stopped: " + (", ".join(stopped) if stopped else "nothing (local.up started nothing)"))


@task(name="status", help={"env": ENV_HELP})
@pipeline_task
def local_status(c, env=None):
    """Show which local services answer and which of them local.up started."""
    ports = _settings(c, env).local_services
    probes = {
        "dockerd": local_services.engine_answers(),
        "registry": local_services.registry_answers(ports.registry_port),
        "azurite": local_services.azurite_answers(ports.azurite_port),
    }
    for name, answers in probes.items():
        pid = local_services.started_pid(name)
        owner = f"started by local.up, pid {pid}" if pid else "not started by local.up"
        echo(f"{name:9} {'up' if answers else 'down':5} ({owner})")


# --- the data scientists' side ------------------------------------------------------------


@task(name="publish", help={
    "env": ENV_HELP,
    "version": "Version to publish under (default: a UTC timestamp).",
    "model_dir": "Publish this folder (model.onnx + metadata.json) instead of training the sample.",
    "force": "Replace a version that is already published.",
})
@pipeline_task
def model_publish(c, env=None, version=None, model_dir=None, force=False):
    """Train the sample digits classifier, export it to ONNX and publish it to the model store."""
    from pathlib import Path

    settings = _settings(c, env)
    version = version or model_store.new_version()
    store = _store(settings)
    if is_dry(c):
        echo(f"[dry] would publish {settings.model_name} {version} to {store.uri}")
        return
    if model_dir is None:
        from modelship.sample_model import train_digits_model

        model_dir = train_digits_model(
            BUILD_DIR / "publish" / version, name=settings.model_name, version=version
        )
    metadata = model_store.publish(store, Path(model_dir), version, force=force)
    echo(f"published {metadata['name']} {version} (sha256 {metadata['sha256'][:12]}…) "
         f"to {store.uri}")


local = Collection("local", local_up, local_down, local_status)
model = Collection("model", model_publish)
namespace = Collection(fetch_model, base_image, build, test, push, render, apply, deploy)
namespace.add_collection(local)
namespace.add_collection(model)
