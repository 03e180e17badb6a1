"""The Invoke tasks: the same pipeline on a laptop and in Azure Pipelines.

    fetch-model -> build -> test -> push -> render -> apply      (deploy runs them in order)

A project's `tasks.py` imports `namespace` from here (`modelship init` writes that file), so
the tasks come with the installed package and work in any repository. Each task is a thin
call into `stages`; settings come from the project's invoke.yaml per `--env`. Expected
failures end with one line saying what failed and what to do.
"""

from __future__ import annotations

import functools
import inspect

from invoke import Collection, Exit, task

from . import console, publishing, stages
from .config_errors import install_config_error_hook
from .errors import PipelineError
from .settings import Settings, load_settings

ENV_HELP = "Environment from invoke.yaml: local, cluster, dev, staging or prod (default: local)."
STRATEGY_HELP = ("rolling (replace at once) or canary (step by step, judged on each "
                 "version's metrics); default: release.strategy.")
VERBOSE_HELP = "Show the details: the Docker build's output, kubectl's, the libraries' logs."

# Invoke reads -f files and INVOKE_* variables after loading this file: mistakes there end
# in one line too, not in a traceback.
install_config_error_hook()
echo = console.echo


def is_dry(c) -> bool:
    return bool(c.config.run.dry)


def pipeline_task(typed_name: str, help: dict | None = None, **task_options):
    """An Invoke task that sets up the output (`verbose`) and turns expected failures into
    one line naming the task as typed, exit 1, no traceback. `--env` and `--verbose` get
    their help here; `help` adds the task's own flags."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(c, *args, **kwargs):
            console.configure(verbose=bool(kwargs.get("verbose")))
            try:
                return function(c, *args, **kwargs)
            except stages.StageFailed as failure:
                raise Exit(str(failure), code=1)
            except PipelineError as error:
                raise Exit(f"{typed_name} failed: {error}", code=1)
        parameters = inspect.signature(function).parameters
        shared = {flag: text for flag, text in (("env", ENV_HELP), ("verbose", VERBOSE_HELP))
                  if flag in parameters}
        return task(help={**shared, **(help or {})}, **task_options)(wrapper)
    return decorate


def _settings(c, env: str | None) -> Settings:
    return load_settings(c.config, env)


# --- pipeline stages ------------------------------------------------------------------------
@pipeline_task("fetch-model", help={
    "version": "Model version to fetch, or 'latest' (default).",
    "locked": "Fetch exactly the version and sha256 the lock file names (reproducible rebuild).",
    "lock_file": "Lock file for --locked (default: build/model/model.lock.json).",
})
def fetch_model(c, env=None, version=None, locked=False, lock_file=None, verbose=False):
    """Download the model from the model store into build/model and verify its sha256."""
    echo(stages.fetch_model(_settings(c, env), version=version, locked=locked,
                            lock_file=lock_file, dry=is_dry(c), echo=echo))


@pipeline_task("base-image")
def base_image(c, env=None, verbose=False):
    """Build the offline base image (debootstrap + docker import) if image.offline_base is set."""
    echo(stages.base_image(_settings(c, env), dry=is_dry(c), echo=echo))


@pipeline_task("lock")
def lock(c, env=None):
    """Re-lock the image's and the host's dependencies (requirements/), hash-pinned."""
    echo(stages.lock(_settings(c, env), dry=is_dry(c)))


@pipeline_task("build", help={
    "force": "Build even when the registry already holds an image with the same inputs.",
    "no_cache": "Rebuild every layer (implies --force).",
})
def build(c, env=None, force=False, no_cache=False, verbose=False):
    """Build the serving image (app + model) with networking disabled; writes build/record.json."""
    echo(stages.build(_settings(c, env), force=force, no_cache=no_cache, dry=is_dry(c),
                      echo=echo))


@pipeline_task("test", help={
    "unit": "Run the unit tests before the container test (default on).",
    "force": "Run the tests even where they already passed for the same inputs.",
})
def test(c, env=None, unit=True, force=False, verbose=False):
    """Run the unit tests, then start the built image and check /readyz, /score and /version."""
    echo(stages.test(c, _settings(c, env), unit=unit, force=force, dry=is_dry(c), echo=echo))


@pipeline_task("push", help={
    "force": "Push even when the build record says this image is already in the registry.",
})
def push(c, env=None, force=False, verbose=False):
    """Tag and push the built image to the environment's registry; records the digest."""
    echo(stages.push(_settings(c, env), force=force, dry=is_dry(c), echo=echo))


@pipeline_task("render", help={
    "image": "Render around this image (REPOSITORY@sha256:...) for review, without a build.",
    "check": "Render to a temporary folder and fail if it differs from the reviewed one.",
    "against": "With --check: the folder to compare with (default: build/k8s/<env>).",
    "require_checkov": "Fail when checkov is not installed instead of skipping it (CI).",
})
def render(c, env=None, image=None, check=False, against=None, require_checkov=False,
           verbose=False):
    """Render templates/k8s into build/k8s/<env>/ (image by digest), validate, then swap in."""
    echo(stages.render(_settings(c, env), image=image, check=check, against=against,
                       require_checkov=require_checkov, dry=is_dry(c), echo=echo))


@pipeline_task("apply", help={
    "yes": "Do not ask for confirmation where the environment asks for it (prod).",
    "smoke": "After the rollout, check /readyz and one golden sample through /score and v2 "
             "infer through the Service.",
    "strategy": STRATEGY_HELP,
})
def apply(c, env=None, yes=False, smoke=True, strategy=None, verbose=False):
    """Roll out the pushed image: kubectl apply + rollout status, or run it on the local engine."""
    echo(stages.apply(c, _settings(c, env), yes=yes, smoke=smoke, strategy=strategy,
                      dry=is_dry(c), echo=echo))


@pipeline_task("rollback")
def rollback(c, env=None, verbose=False):
    """Go back to the release that ran before the current one (kubectl rollout undo, or local)."""
    echo(stages.rollback(c, _settings(c, env), dry=is_dry(c), echo=echo))


@pipeline_task("diff")
def diff(c, env=None, verbose=False):
    """Show what `apply` would change: kubectl diff of build/k8s/<env>/ against the cluster."""
    echo(stages.diff(c, _settings(c, env), dry=is_dry(c)))


@pipeline_task("status")
def status(c, env=None):
    """Show what runs in the environment: image digest, git revision, model, ready replicas."""
    for line in stages.status(c, _settings(c, env), dry=is_dry(c)):
        echo(line)


@pipeline_task("aks.credentials", name="credentials")
def aks_credentials(c, env=None):
    """Fetch the environment's AKS credentials into ~/.kube/config (az aks get-credentials)."""
    echo(stages.aks_credentials(c, _settings(c, env), dry=is_dry(c), echo=echo))


@pipeline_task("deploy", help={"strategy": STRATEGY_HELP})
def deploy(c, env=None, strategy=None, verbose=False):
    """Run fetch-model, build, test, push, render and apply in order; stop at the first failure."""
    echo(stages.deploy(c, _settings(c, env), strategy=strategy, dry=is_dry(c), echo=echo))


# --- the local environment ----------------------------------------------------------------
@pipeline_task("local.up", name="up")
def local_up(c, env=None, verbose=False):
    """Start Docker Engine, the authenticated registry and Azurite on 127.0.0.1 if not running."""
    for line in stages.local_up(c, _settings(c, env), dry=is_dry(c), echo=echo):
        echo(line)


@pipeline_task("local.down", name="down")
def local_down(c, env=None):
    """Stop the local deployment and the services local.up started (nothing else)."""
    for line in stages.local_down(c, _settings(c, env), dry=is_dry(c)):
        echo(line)


@pipeline_task("local.status", name="status")
def local_status(c, env=None):
    """Show which local services answer and which of them local.up started."""
    for line in stages.local_status(c, _settings(c, env)):
        echo(line)


@pipeline_task("local.cluster.up", name="up")
def local_cluster_up(c, env="cluster", verbose=False):
    """Start the local Kubernetes control plane (built from tools/cluster/ once per machine)."""
    for line in stages.local_cluster_up(c, _settings(c, env), dry=is_dry(c), echo=echo):
        echo(line)


@pipeline_task("local.cluster.down", name="down")
def local_cluster_down(c, env="cluster"):
    """Stop the control-plane components local.cluster.up started here (nothing else)."""
    for line in stages.local_cluster_down(c, _settings(c, env), dry=is_dry(c)):
        echo(line)


# --- the data scientists' side ------------------------------------------------------------
@pipeline_task("model.publish", help=publishing.FLAG_HELP, name="publish")
def model_publish(c, env=None, model=None, samples=None, name=None, version=None, task=None,
                  tolerance=None, model_dir=None, force=False, signing_key=None,
                  promote=False, verbose=False):
    """Verify a model against its golden samples, publish it and move latest (default: digits)."""
    echo(stages.publish_model(_settings(c, env), model=model, samples=samples, name=name,
                              version=version, task=task, tolerance=tolerance,
                              model_dir=model_dir, force=force, signing_key=signing_key,
                              promote=promote, dry=is_dry(c)))


@pipeline_task("model.list", name="list", help={
    "orphans": "Show the files no published version names (left by interrupted or losing "
               "publishes), and how to remove them."})
def model_list(c, env=None, orphans=False):
    """List the published model versions: created, size, sha256, and which one is latest."""
    for line in stages.list_models(_settings(c, env), orphans=orphans):
        echo(line)


@pipeline_task("model.promote", help={"version": "The published version latest moves to."},
               name="promote")
def model_promote(c, version, env=None):
    """Move latest to a published version (also back to an older one); builds then fetch it."""
    echo(stages.promote_model(_settings(c, env), version=version, dry=is_dry(c)))


@task(name="check", help={"env": ENV_HELP})
def model_check(c, env=None):
    """Compare the latest published model with the one --env runs; exit 1 when they differ.

    Under Azure Pipelines (TF_BUILD) it exits 0 and sets output variables instead (see
    stages.check_model); exit 2 means it could not tell (store or cluster unreachable).
    """
    try:
        lines, differs = stages.check_model(c, _settings(c, env))
    except PipelineError as error:
        raise Exit(f"model.check failed: {error}", code=2)
    for line in lines:
        echo(line)
    if differs:
        raise Exit(code=1)


@pipeline_task("provenance.keygen", name="keygen")
def provenance_keygen(c, env=None):
    """Make the environment's provenance key pair; says where each key goes (Key Vault, git)."""
    for line in stages.provenance_keygen(_settings(c, env), dry=is_dry(c)):
        echo(line)


# --- the pipeline definition ----------------------------------------------------------------
@pipeline_task("ci.check", name="check")
def ci_check(c):
    """Validate ci/ against the Azure Pipelines schema; every `invoke` call must name real tasks."""
    echo(stages.check_pipeline(c.config, namespace, echo))


namespace = Collection(fetch_model, base_image, lock, build, test, push, render, apply, rollback,
                       deploy, diff, status)
namespace.add_collection(Collection("aks", aks_credentials))
local = Collection("local", local_up, local_down, local_status)
local.add_collection(Collection("cluster", local_cluster_up, local_cluster_down))
namespace.add_collection(local)
namespace.add_collection(Collection("model", model_publish, model_list, model_promote,
                                    model_check))
namespace.add_collection(Collection("ci", ci_check))
namespace.add_collection(Collection("provenance", provenance_keygen))
