"""Invoke tasks: the same pipeline on a laptop and in Azure Pipelines.

    fetch-model -> build -> test -> push -> render -> apply      (deploy runs them in order)

Each task is a thin call into the `modelship` package; settings come from invoke.yaml per
`--env`. Expected failures end with one line saying what failed and what to do.
"""

from __future__ import annotations

import functools
import json
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


def _model_store(settings: Settings):
    store_settings = settings.model_store
    return model_store.open_store(store_settings.uri, store_settings.account_url,
                                  store_settings.endpoint_url)


def _docker():
    from modelship.image import docker_client

    return docker_client()


# --- pipeline stages ------------------------------------------------------------------------


@task(help={
    "env": ENV_HELP,
    "version": "Model version to fetch, or 'latest' (default).",
    "locked": "Fetch exactly the version and sha256 the lock file names (reproducible rebuild).",
    "lock_file": "Lock file for --locked (default: build/model/model.lock.json).",
})
@pipeline_task
def fetch_model(c, env=None, version=None, locked=False, lock_file=None):
    """Download the model from the model store into build/model and verify its sha256."""
    from pathlib import Path

    from modelship.transfer import console_progress

    settings = _settings(c, env)
    store = _model_store(settings)
    version = version or "latest"
    wanted = "the locked version" if locked else version
    if is_dry(c):
        echo(f"[dry] would fetch {wanted} from {store.uri} into build/model")
        return
    result = model_store.fetch(store, BUILD_DIR / "model", version, locked=locked,
                               lock_file=Path(lock_file) if lock_file else None,
                               progress=console_progress)
    state = ("downloaded and verified" if result.downloaded
             else "already up to date, nothing downloaded")
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
def lock(c, env=None):
    """Resolve requirements/image.in into requirements/image.lock, hash-pinned for the image."""
    from modelship.image import IMAGE_LOCK, IMAGE_REQUIREMENTS_IN
    from modelship.wheelhouse import lock_requirements

    settings = _settings(c, env)
    if is_dry(c):
        echo(f"[dry] would lock {IMAGE_REQUIREMENTS_IN.name} for {settings.image.platform}")
        return
    count = lock_requirements(IMAGE_REQUIREMENTS_IN, IMAGE_LOCK, settings.image.python_version,
                              settings.image.platform)
    echo(f"locked {count} packages into requirements/{IMAGE_LOCK.name}")


@task(help={
    "env": ENV_HELP,
    "force": "Build even when the registry already holds an image with the same inputs.",
    "no_cache": "Rebuild every layer (implies --force).",
})
@pipeline_task
def build(c, env=None, force=False, no_cache=False):
    """Build the serving image (app + model) with networking disabled; writes build/record.json."""
    from modelship import image
    from modelship.base_image import ensure_base_image
    from modelship.gitinfo import source_state
    from modelship.registry import login
    from modelship.wheelhouse import prepare_wheelhouse

    settings = _settings(c, env)
    if is_dry(c):
        echo(f"[dry] would build {settings.image.repository} from {settings.image.base} "
             "(skipped if the registry holds the same inputs)")
        return
    client = _docker()
    if settings.image.offline_base:
        echo(ensure_base_image(client, settings.image.base, settings.image.python_version, echo))
    echo(prepare_wheelhouse(image.IMAGE_LOCK, image.WHEELHOUSE, settings.image.python_version,
                            settings.image.platform))
    plan = image.plan_build(client, settings, source_state())
    cache_from = []
    if settings.registry.host:
        try:
            auth = login(client, settings)
        except PipelineError as error:
            echo(f"warning: cannot check the registry for an up-to-date image ({error})")
        else:
            reference = f"{settings.image_repository}:{image.inputs_tag(plan.inputs)}"
            digest = None if force or no_cache else image.registry_digest(client, reference, auth)
            if digest:
                record = image.record_up_to_date(plan, settings, digest)
                echo(f"up to date: {record['image']['name']} has the same inputs; nothing built")
                return
            cache = image.pull_cache_image(client, settings.image_repository, auth)
            cache_from = [cache] if cache else []
    record = image.build_image(client, settings, plan, cache_from, echo, no_cache)
    size_mb = record["image"]["size_bytes"] / 1e6
    echo(f"built {record['image']['name']} ({size_mb:.0f} MB)")


@task(help={"env": ENV_HELP, "unit": "Run the unit tests before the container test (default on)."})
@pipeline_task
def test(c, env=None, unit=True):
    """Run the unit tests, then start the built image and check /readyz, /score and /version."""
    from modelship.container_test import run_contract
    from modelship.image import read_model_metadata

    settings = _settings(c, env)
    if unit:
        result = c.run(f"{sys.executable} -m pytest -q -p no:cacheprovider tests/unit", warn=True,
                       pty=False)
        if result is not None and not result.ok:
            raise PipelineError("The unit tests failed.", "Fix the failures listed above.")
    if is_dry(c):
        echo("[dry] would run the container contract test")
        return
    record = build_record.read_record()
    client = _docker()
    image_ref = record["image"]["id"]
    if image_ref is None:
        # An up-to-date build was not rebuilt here: test the very image the registry holds.
        from modelship import local_runtime
        from modelship.registry import login

        image_ref = record["image"]["name"]
        local_runtime.pull(client, image_ref, login(client, settings))
    run_contract(client, image_ref, read_model_metadata(), echo)
    echo(f"container test passed for {record['image']['name']}")


@task(help={
    "env": ENV_HELP,
    "force": "Push even when the build record says this image is already in the registry.",
})
@pipeline_task
def push(c, env=None, force=False):
    """Tag and push the built image to the environment's registry; records the digest."""
    from modelship.registry import already_pushed, push_image

    settings = _settings(c, env)
    record = build_record.read_record()
    pushed = None if force else already_pushed(record, settings.env)
    if pushed:
        echo(f"up to date: {pushed['reference']} is already in the registry")
        return
    if is_dry(c):
        echo(f"[dry] would push {record['image']['name']} to {settings.image_repository}")
        return
    pushed = push_image(_docker(), settings, record, echo)
    echo(f"pushed {pushed['reference']} ({pushed['bytes_pushed'] / 1e6:.1f} MB uploaded)")


def _shown(path) -> str:
    """A path relative to the project when it is inside it (shorter in logs)."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


@task(help={
    "env": ENV_HELP,
    "check": "Render to a temporary folder and fail if it differs from the reviewed one.",
    "against": "With --check: the folder to compare with (default: build/k8s/<env>).",
    "require_checkov": "Fail when checkov is not installed instead of skipping it (CI).",
})
@pipeline_task
def render(c, env=None, check=False, against=None, require_checkov=False):
    """Render templates/k8s into build/k8s/<env>/ (image by digest), validate, run checkov."""
    from pathlib import Path

    from modelship import manifest_checks, manifests

    settings = _settings(c, env)
    record = build_record.read_record()
    pushed = build_record.pushed_for(record, settings.env)
    if check:
        expected = Path(against) if against else settings.render_dir
        differences = manifests.check(settings, record, pushed, expected)
        if differences:
            echo("".join(differences).rstrip())
            raise PipelineError(
                f"The rendering for '{settings.env}' differs from {expected} (diff above).",
                f"Review the diff; `invoke render --env={settings.env}` writes the new one.",
            )
        echo(f"rendering for '{settings.env}' matches {expected}")
        return
    written = manifests.render(settings, record, pushed)
    echo(f"rendered {len(written)} manifests into {_shown(settings.render_dir)}/")
    for line in manifest_checks.check_rendered(settings.render_dir,
                                               settings.kubernetes.version,
                                               require_checkov):
        echo(line)


@task(help={
    "env": ENV_HELP,
    "yes": "Do not ask for confirmation where the environment asks for it (prod).",
    "smoke": "After the rollout, check /readyz and one golden /score through the Service.",
})
@pipeline_task
def apply(c, env=None, yes=False, smoke=True):
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
    from modelship.image import read_model_metadata

    kube.require_current_render(settings, pushed["reference"])
    if kube.needs_confirmation(settings, yes) and not is_dry(c):
        kube.confirm(settings, pushed["reference"])
    smoke_test = None
    if smoke:
        # A dry run has no rollout to test: the smoke step only says what it would do.
        smoke_test = kube.smoke_step(c, settings, None if is_dry(c) else read_model_metadata(),
                                     echo)
    kube.apply(c, settings, smoke_test, echo)
    echo(f"rolled out {pushed['reference']} to {settings.kubernetes.context}/"
         f"{settings.kubernetes.namespace}")


@task(help={"env": ENV_HELP})
@pipeline_task
def diff(c, env=None):
    """Show what `apply` would change: kubectl diff of build/k8s/<env>/ against the cluster."""
    from modelship import kube

    settings = _settings(c, env)
    if kube.diff(c, settings):
        echo(f"the cluster differs from {_shown(settings.render_dir)}/ "
             "(diff above); `invoke apply` would change it")
    elif not is_dry(c):
        echo(f"context '{settings.kubernetes.context}' already matches the rendered manifests")


@task(help={"env": ENV_HELP})
@pipeline_task
def status(c, env=None):
    """Show what runs in the environment: image digest, git revision, model, ready replicas."""
    from modelship import kube, local_runtime

    settings = _settings(c, env)
    if settings.runtime == "docker":
        state = local_runtime.status(_docker(), settings)
        if state is None:
            raise PipelineError(f"Nothing is deployed in '{settings.env}'.",
                                f"Run `invoke deploy --env={settings.env}`.")
        where = "the local Docker Engine"
    else:
        state = kube.status(c, settings)
        if state is None:
            return  # a dry run printed the kubectl command
        where = f"{settings.kubernetes.context}/{settings.kubernetes.namespace}"
    echo(f"{settings.app_name} in {where}")
    for key, value in state.items():
        echo(f"  {key.replace('_', ' '):16} {value}")


@task(name="credentials", help={"env": ENV_HELP})
@pipeline_task
def aks_credentials(c, env=None):
    """Fetch the environment's AKS credentials into ~/.kube/config (az aks get-credentials)."""
    from modelship import kube

    settings = _settings(c, env)
    command = kube.aks_credentials_command(settings)
    if not is_dry(c) and not c.run("az version", warn=True, hide=True).ok:
        raise PipelineError("The Azure CLI (az) is not installed or does not start.",
                            "Install it (`pip install -e .[azure]`) and run `az login`.")
    if not c.run(command, warn=True).ok:
        raise PipelineError(f"az aks get-credentials failed for '{settings.env}'.",
                            "Read az's message above; `az login` may be needed.")
    if is_dry(c):
        echo(f"(then, if the cluster signs in with Microsoft Entra ID: "
             f"{kube.kubelogin_convert_command(settings)})")
        return
    _use_kubelogin_if_needed(c, settings)
    echo(f"kube context '{settings.kubernetes.context}' is ready")


def _use_kubelogin_if_needed(c, settings) -> None:
    """Entra ID clusters hand out a kubeconfig whose login only kubelogin can complete."""
    from modelship import kube

    view = c.run(kube.KUBECONFIG_VIEW, warn=True, hide=True)
    if not view.ok:
        raise PipelineError("kubectl cannot read the kubeconfig az just wrote.",
                            "Run `kubectl config view` to see why.")
    if not kube.context_uses_kubelogin(json.loads(view.stdout), settings.kubernetes.context):
        return
    if not c.run("kubelogin --version", warn=True, hide=True).ok:
        raise PipelineError(
            f"The cluster of '{settings.env}' signs in with Microsoft Entra ID, which needs "
            "kubelogin, and kubelogin is not installed.",
            "Run `az aks install-cli` (it installs kubectl and kubelogin), then "
            f"`invoke aks.credentials --env={settings.env}` again.",
        )
    if not c.run(kube.kubelogin_convert_command(settings), warn=True).ok:
        raise PipelineError(
            "kubelogin could not convert the kubeconfig.",
            f"Read its message above; kubernetes.aks.login is "
            f"'{settings.kubernetes.aks.login}' (azurecli, workloadidentity, spn, msi...).",
        )


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
    "version": "Version to publish under (default: the model's own version with --model-dir, "
               "else a UTC timestamp).",
    "model_dir": "Publish this folder (model.onnx + metadata.json) instead of training the sample.",
    "force": "Replace a version that is already published.",
})
@pipeline_task
def model_publish(c, env=None, version=None, model_dir=None, force=False):
    """Train the sample digits classifier, export it to ONNX and publish it to the model store."""
    from pathlib import Path

    settings = _settings(c, env)
    if model_dir is not None and version is None:
        version = str(model_store.read_model_dir(Path(model_dir))["version"])
    version = version or model_store.new_version()
    store = _model_store(settings)
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


@task(name="check", help={"env": ENV_HELP})
def model_check(c, env=None):
    """Compare the latest published model with the one --env runs; exit 1 when they differ.

    Under Azure Pipelines (TF_BUILD set) it exits 0 either way and sets the output variables
    `changed` (true/false), `latestVersion`, `latestSha256` and `deployedSha256` instead, so a
    stage condition decides. Exit 2 means it could not tell (store or cluster unreachable).
    """
    import os

    from modelship import model_check as checks

    try:
        settings = _settings(c, env)
        latest = checks.latest_published(_model_store(settings))
        if settings.runtime == "docker":
            from modelship.local_runtime import container_name

            deployed = checks.deployed_locally(_docker(), container_name(settings))
        else:
            deployed = checks.deployed_on_kubernetes(c, settings)
        comparison = checks.Comparison(settings.env, settings.model_name, latest, deployed)
        variables = checks.pipeline_variables(comparison)
    except PipelineError as error:
        raise Exit(f"model.check failed: {error}", code=2)
    echo(comparison.summary())
    if checks.running_in_azure_pipelines(os.environ):
        for line in variables:
            echo(line)
    elif comparison.differs:
        raise Exit(code=1)


# --- the pipeline definition ----------------------------------------------------------------


@task(name="check")
@pipeline_task
def ci_check(c):
    """Validate ci/ against the Azure Pipelines schema; every `invoke` call must name real tasks."""
    from modelship import pipeline_check
    from modelship.settings import known_environments

    problems = pipeline_check.check(environments=known_environments(c.config))
    files = pipeline_check.pipeline_files()
    for problem in problems:
        echo(str(problem))
    if problems:
        raise PipelineError(f"{len(problems)} problem(s) in the pipeline files (listed above).",
                            "Fix them; a pipeline run would fail on each.")
    echo(f"ci/: {len(files)} pipeline files valid; "
         "every invoke call names existing tasks and flags")


local = Collection("local", local_up, local_down, local_status)
model = Collection("model", model_publish, model_check)
aks = Collection("aks", aks_credentials)
namespace = Collection(fetch_model, base_image, lock, build, test, push, render, apply, deploy)
namespace.add_task(diff)
namespace.add_task(status)
namespace.add_collection(aks)
namespace.add_collection(local)
namespace.add_collection(model)
namespace.add_collection(Collection("ci", ci_check))
