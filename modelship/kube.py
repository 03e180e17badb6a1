"""Releasing to Kubernetes: diff, apply with rollout deadline and rollback, smoke test, status.

Every kubectl call that reads or changes the cluster goes through the Invoke context, always
with the environment's `--context` and `--namespace`, so `--dry` prints the exact sequence
and tests can script kubectl's answers with MockContext or a stand-in `kubectl` on PATH.
The smoke test reaches the Service through `kubectl port-forward` bound to 127.0.0.1.

`apply` prunes: an object of this app (its instance and managed-by labels, in its namespace)
of an allowlisted kind that the folder no longer holds is deleted, so switching an Ingress or
autoscaler off in the settings removes it. ConfigMaps are not on that list: they are named
by their content, and one is deleted only once no ReplicaSet of the app refers to it, so
`rollout undo` always finds the config its ReplicaSet was made with. A first deploy that
fails deletes what it created instead of "rolling back" to nothing. This module must never
apply anything but the folder `render` wrote, never to a context other than the
environment's, never delete outside the app's labels and namespace, and never print or pass
a secret's value.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import yaml

from . import service_checks
from .errors import PipelineError
from .names import (GIT_REVISION_ANNOTATION, MODEL_SHA256_ANNOTATION, MODEL_VERSION_ANNOTATION,
                    Echo, running_in_ci)
from .settings import Settings
from .stage_files import cluster_kubeconfig, cluster_kubectl

# Where the smoke test looks for the API key before asking the cluster for the Secret.
SMOKE_KEY_ENV = "MODELSHIP_API_KEY"


def kubectl_program(settings: Settings) -> list[str]:
    """kubectl from PATH, or for the local control plane the kubectl built with it (the one
    on PATH may be too many minor versions away) and its kubeconfig."""
    if settings.kubernetes.local_cluster:
        return [str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}"]
    return ["kubectl"]


def kubectl_argv(settings: Settings, *args: str) -> list[str]:
    return [*kubectl_program(settings), f"--context={settings.kubernetes.context}",
            f"--namespace={settings.kubernetes.namespace}", *args]


def kubectl(settings: Settings, *args: str) -> str:
    """The command line for `c.run` (a shell runs it): every argument quoted, so no setting or
    object name can end the command or start another."""
    return shlex.join(kubectl_argv(settings, *args))


def _selector(settings: Settings) -> str:
    return f"app.kubernetes.io/instance={settings.app_name}-{settings.env}"


def owned_selector(settings: Settings) -> str:
    """The objects this tool made for the app in this environment: the only ones it deletes."""
    return f"{_selector(settings)},app.kubernetes.io/managed-by=modelship"


# The kinds `apply --prune` may delete when the folder no longer holds them (group/version/kind,
# "core" for the core group). ConfigMaps are left out on purpose: see collect_old_configs.
PRUNE_ALLOWLIST = (
    "apps/v1/Deployment",
    "autoscaling/v2/HorizontalPodAutoscaler",
    "core/v1/Service",
    "core/v1/ServiceAccount",
    "networking.k8s.io/v1/Ingress",
    "networking.k8s.io/v1/NetworkPolicy",
    "policy/v1/PodDisruptionBudget",
)


def prune_flags(settings: Settings) -> list[str]:
    return ["--prune", f"--selector={owned_selector(settings)}",
            *(f"--prune-allowlist={kind}" for kind in PRUNE_ALLOWLIST)]


def apply_commands(settings: Settings) -> dict[str, str]:
    deployment = f"deployment/{settings.app_name}"
    timeout = f"--timeout={settings.kubernetes.rollout_timeout}"
    return {
        # Which of the rendered objects exist already: on a failed first deploy, the rest
        # is what the apply created and is deleted again.
        "existing": kubectl(settings, "get", f"--filename={settings.render_dir}",
                            "--ignore-not-found", "--output=name"),
        # The API server as a second validator: its admission chain (Pod Security, quotas,
        # webhooks) judges the folder before anything in the cluster changes.
        "validate": kubectl(settings, "apply", "--dry-run=server",
                            f"--filename={settings.render_dir}"),
        "apply": kubectl(settings, "apply", f"--filename={settings.render_dir}",
                         *prune_flags(settings)),
        "rollout": kubectl(settings, "rollout", "status", deployment, timeout),
        "events": kubectl(settings, "get", "events", "--sort-by=.lastTimestamp",
                          "--field-selector=involvedObject.kind=Pod,type!=Normal"),
        "pods": kubectl(settings, "get", "pods", f"--selector={_selector(settings)}",
                        "--output=wide"),
        "undo": kubectl(settings, "rollout", "undo", deployment),
        "undo_wait": kubectl(settings, "rollout", "status", deployment, timeout),
        "replicasets": kubectl(settings, "get", "replicasets",
                               f"--selector={_selector(settings)}", "--output=json"),
        "configmaps": kubectl(settings, "get", "configmaps",
                              f"--selector={owned_selector(settings)}", "--output=name"),
    }


def _chatter():
    """kubectl's own progress lines ("deployment configured", "rolled out") go to the
    terminal only with --verbose; its errors (stderr) always do."""
    from .console import current

    return None if current().verbose else "stdout"


def _ok(result) -> bool:
    # MockContext and dry runs may hand back None for commands nobody scripted.
    return result is None or result.ok


def _stdout(result) -> str:
    return "" if result is None else (result.stdout or "")


# How the API server's RBAC refuses a request, as kubectl prints it.
_FORBIDDEN = re.compile(r'User "(?P<user>[^"]+)" cannot (?P<verb>[\w-]+) resource '
                        r'"(?P<resource>[^"]+)"(?: in API group "(?P<group>[^"]*)")?')


def refusal(result) -> str | None:
    """'<user> may not <verb> <resource>' when RBAC refused one of kubectl's requests."""
    found = _FORBIDDEN.search("" if result is None else (result.stderr or ""))
    if not found:
        return None
    group = f".{found['group']}" if found["group"] else ""
    return f"{found['user']} may not {found['verb']} {found['resource']}{group}"


def _refused(settings: Settings, result, doing: str) -> None:
    """Raise the one line naming the missing permission, if that is why kubectl failed."""
    refused = refusal(result)
    if refused:
        raise PipelineError(
            f"{doing} in '{settings.kubernetes.context}' was refused: {refused} in namespace "
            f"'{settings.kubernetes.namespace}'.",
            "Grant that verb in the deploy identity's Role (docs/deploy-role.yaml).")


def _require_rendered(settings: Settings) -> None:
    if not (settings.render_dir / "deployment.yaml").is_file():
        raise PipelineError(
            f"Nothing rendered for '{settings.env}' ({settings.render_dir} has no "
            "deployment.yaml).",
            f"Run `invoke render --env={settings.env}` first.",
        )


def rendered_image(settings: Settings) -> str:
    _require_rendered(settings)
    deployment = yaml.safe_load((settings.render_dir / "deployment.yaml").read_text())
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def require_current_render(settings: Settings, pushed_reference: str) -> None:
    """Refuse to apply a folder rendered for another image than the one last pushed."""
    image = rendered_image(settings)
    if image != pushed_reference:
        raise PipelineError(
            f"{settings.render_dir} was rendered for {image}, but the last push for "
            f"'{settings.env}' is {pushed_reference}.",
            f"Run `invoke render --env={settings.env}`, review it, then apply.",
        )


def diff_command(settings: Settings) -> str:
    return kubectl(settings, "diff", f"--filename={settings.render_dir}", *prune_flags(settings))


def diff(c, settings: Settings) -> bool:
    """`kubectl diff` of the rendered folder against the cluster, including what `apply`
    would prune; True when they differ."""
    _require_rendered(settings)
    result = c.run(diff_command(settings), warn=True)
    if result is None or result.exited == 0:
        return False
    if result.exited == 1:  # kubectl diff's way of saying "there are differences"
        return True
    _refused(settings, result, "kubectl diff")
    raise PipelineError(
        f"kubectl diff against context '{settings.kubernetes.context}' failed "
        f"(exit {result.exited}).",
        f"Read kubectl's message above; `invoke aks.credentials --env={settings.env}` "
        "fetches the cluster's credentials.",
    )


REVISION_ANNOTATION = "deployment.kubernetes.io/revision"  # the Deployment controller's


def previous_revision(c, settings: Settings) -> dict | None:
    """What `rollout undo` would bring back, from the ReplicaSets (read even under --dry):
    its revision, the app container's image and the commit and model sha256 on its pod
    template (None where missing); None when the Deployment has no earlier revision."""
    listed = c.run(apply_commands(settings)["replicasets"], warn=True, hide=True, dry=False)
    if listed is not None and not listed.ok:
        _refused(settings, listed, "Reading the ReplicaSets")
        raise PipelineError(f"Could not read the ReplicaSets of {settings.app_name}: "
                            f"{(listed.stderr or '').strip()[-300:]}",
                            f"Check the credentials (`invoke aks.credentials "
                            f"--env={settings.env}`).")
    revisions = {}
    for replicaset in json.loads(_stdout(listed) or '{"items": []}').get("items", []):
        number = (replicaset["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, "")
        if number.isdigit():
            revisions[int(number)] = replicaset["spec"]["template"]
    if len(revisions) < 2:
        return None
    # The newest is the current one; undo goes to the one before it.
    number = sorted(revisions)[-2]
    template = revisions[number]
    containers = template["spec"]["containers"]
    app = next((item for item in containers if item["name"] == settings.app_name), containers[0])
    annotations = template.get("metadata", {}).get("annotations") or {}
    return {"revision": str(number), "image": app["image"],
            "commit": annotations.get(GIT_REVISION_ANNOTATION),
            "model_sha256": annotations.get(MODEL_SHA256_ANNOTATION)}


def roll_back(c, commands: dict[str, str], echo: Echo,
              settings: Settings | None = None, to_revision: str | None = None) -> bool:
    """`rollout undo` (to `to_revision`, else the previous one) and its wait; False if either
    failed. With `settings`, a refusal by RBAC raises the one line naming the missing
    permission instead."""
    echo(f"rolling back to revision {to_revision}" if to_revision
         else "rolling back to the previous revision")
    undo = commands["undo"] + (f" --to-revision={int(to_revision)}" if to_revision else "")
    undone = c.run(undo, warn=True, hide=_chatter())
    if not _ok(undone):
        if settings is not None:
            _refused(settings, undone, "kubectl rollout undo")
        return False
    return _ok(c.run(commands["undo_wait"], warn=True, hide=_chatter()))


def _object_names(listing: str) -> set[str]:
    """`kind/name` of each line `kubectl get --output=name` printed (group dropped)."""
    names = set()
    for line in listing.split():
        kind, _, name = line.partition("/")
        if name:
            names.add(f"{kind.split('.', 1)[0].lower()}/{name}")
    return names


def rendered_objects(settings: Settings) -> list[str]:
    """`kind/name` of every object in the rendered folder, in file order."""
    names = []
    for path in sorted(settings.render_dir.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                names.append(f"{document['kind'].lower()}/{document['metadata']['name']}")
    return names


@dataclass(frozen=True)
class Undo:
    """How a failed release is taken back: the previous revision, or nothing left behind."""
    first_deploy: bool
    created: tuple[str, ...]

    def run(self, c, settings: Settings, commands: dict[str, str], echo: Echo) -> str:
        if not self.first_deploy:
            if roll_back(c, commands, echo):
                return "it was rolled back to the previous revision."
            return ("the rollback failed too; the failed revision is still in place "
                    f"(`kubectl rollout history deployment/{settings.app_name}` lists them).")
        if not self.created:
            return "there was no earlier release to go back to, and it created nothing."
        echo("first deploy failed: deleting what it created")
        deleted = c.run(kubectl(settings, "delete", *self.created, "--ignore-not-found",
                                "--wait=false"), warn=True, hide=_chatter())
        if _ok(deleted):
            return ("this was the first deploy, so there was nothing to roll back to: what it "
                    f"created was deleted again ({', '.join(self.created)}).")
        return ("this was the first deploy and deleting what it created failed too: remove "
                f"{', '.join(self.created)} by hand.")


def plan_undo(c, settings: Settings, commands: dict[str, str]) -> Undo:
    """Before applying: whether the Deployment exists, and which objects the apply creates."""
    result = c.run(commands["existing"], warn=True, hide=True)
    if result is not None and not result.ok:
        _refused(settings, result, "Reading the rendered objects")
        raise PipelineError(
            f"Could not read the cluster in context '{settings.kubernetes.context}': "
            f"{(result.stderr or '').strip()[-300:]}",
            f"Check the credentials (`invoke aks.credentials --env={settings.env}`) and that "
            f"namespace '{settings.kubernetes.namespace}' exists.",
        )
    if _dry(c):
        return Undo(first_deploy=False, created=())
    existing = _object_names(_stdout(result))
    created = tuple(name for name in rendered_objects(settings) if name not in existing)
    return Undo(first_deploy=f"deployment/{settings.app_name}" not in existing,
                created=created)


def _dry(c) -> bool:
    return bool(getattr(c.config.run, "dry", False))


def apply(c, settings: Settings, smoke: Callable[[], None] | None = None,
          echo: Echo = print) -> None:
    """Apply (and prune), wait for the rollout, smoke test; undo on any failure; then delete
    the ConfigMaps no ReplicaSet refers to any more."""
    _require_rendered(settings)
    commands = apply_commands(settings)
    undo = plan_undo(c, settings, commands)
    if _dry(c):
        echo(f"[dry] would prune objects labelled {owned_selector(settings)} of the kinds "
             f"{', '.join(PRUNE_ALLOWLIST)} that {settings.render_dir} no longer holds")
    validated = c.run(commands["validate"], warn=True, hide=True)
    # Pod Security admits a Deployment whose pods it will refuse, with a warning only: the
    # ReplicaSet's pods would then fail one by one. The warning counts as a refusal here.
    pod_security = [line for line in ("" if validated is None else validated.stderr or "")
                    .splitlines() if "would violate PodSecurity" in line]
    if not _ok(validated) or pod_security:
        _refused(settings, validated, "kubectl apply --dry-run=server")
        reason = (pod_security or (validated.stderr or "").strip().splitlines()
                  or ["no message"])[-1]
        raise PipelineError(
            f"The API server of '{settings.kubernetes.context}' refused the manifests in "
            f"{settings.render_dir}, nothing was changed: {reason[-400:]}",
            f"Fix the templates or settings, then `invoke render --env={settings.env}`.")
    applied = c.run(commands["apply"], warn=True, hide=_chatter())
    if not _ok(applied):
        _refused(settings, applied, "kubectl apply")
        raise PipelineError(
            f"kubectl apply to context '{settings.kubernetes.context}' failed.",
            f"Read kubectl's message above; check `invoke aks.credentials --env={settings.env}`"
            " and the manifests.",
        )
    rollout = c.run(commands["rollout"], warn=True, hide=_chatter())
    if not _ok(rollout):
        # Read the events before the undo replaces the failing pods.
        events = c.run(commands["events"], warn=True, hide=True)
        pods = c.run(commands["pods"], warn=True, hide=True)
        outcome = undo.run(c, settings, commands, echo)
        echo("pods of the failed rollout:\n" + (_stdout(pods).strip() or "(none listed)"))
        echo("their warning events:\n" + (_stdout(events).strip() or "(none recorded)"))
        # kubectl stops waiting early when the Deployment controller gives up.
        deadline = "exceeded its progress deadline" in (getattr(rollout, "stderr", "") or "")
        how = (f"exceeded its progress deadline "
               f"({settings.deployment.progress_deadline_seconds} s)" if deadline else
               f"did not finish within {settings.kubernetes.rollout_timeout}")
        raise PipelineError(
            f"The rollout of {settings.app_name} in '{settings.env}' {how}; {outcome}",
            "Read the pod events above, fix the cause, and deploy again.",
        )
    if smoke is not None:
        try:
            smoke()
        except PipelineError as failure:
            outcome = undo.run(c, settings, commands, echo)
            raise PipelineError(
                f"The smoke test after the rollout failed: {failure.problem} The release: "
                f"{outcome}",
                failure.fix,
            ) from None
    collect_old_configs(c, settings, commands, echo)


def referenced_configs(replicasets: dict) -> set[str]:
    """ConfigMap names the pod templates of these ReplicaSets read (envFrom, env, volumes)."""
    names: set[str] = set()
    for replicaset in replicasets.get("items", []):
        pod = replicaset.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names.add(source["configMapRef"]["name"])
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("configMapKeyRef")
                if reference:
                    names.add(reference["name"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                names.add(volume["configMap"]["name"])
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    names.add(source["configMap"]["name"])
    return names


def collect_old_configs(c, settings: Settings, commands: dict[str, str], echo: Echo) -> None:
    """Delete this app's ConfigMaps that no ReplicaSet (current or kept for undo) refers to."""
    replicasets = c.run(commands["replicasets"], warn=True, hide=True)
    configs = c.run(commands["configmaps"], warn=True, hide=True)
    if _dry(c):
        echo("[dry] would delete this app's ConfigMaps that no ReplicaSet refers to")
        return
    if not (_ok(replicasets) and _ok(configs)) or not _stdout(replicasets).strip():
        echo("kept the old ConfigMaps: could not list the ReplicaSets or ConfigMaps")
        return
    in_use = referenced_configs(json.loads(_stdout(replicasets)))
    # A ConfigMap the rendered folder holds stays even before a ReplicaSet refers to it.
    in_use |= {name.split("/", 1)[1] for name in rendered_objects(settings)
               if name.startswith("configmap/")}
    unused = sorted(name for name in _object_names(_stdout(configs))
                    if name.split("/", 1)[1] not in in_use)
    if not unused:
        return
    if _ok(c.run(kubectl(settings, "delete", *unused, "--ignore-not-found"), warn=True,
                 hide=_chatter())):
        echo(f"deleted {len(unused)} ConfigMap(s) no ReplicaSet uses: {', '.join(unused)}")
    else:
        echo("could not delete the unused ConfigMaps; they stay until the next apply")


@contextlib.contextmanager
def port_forward(settings: Settings, local_port: int) -> Iterator[tuple[str, Callable[[], bool],
                                                                     Callable[[], str]]]:
    """Forward 127.0.0.1:<local_port> to the Service; yields (base url, alive, log)."""
    command = kubectl_argv(settings, "port-forward", "--address=127.0.0.1",
                           f"service/{settings.app_name}",
                           f"{local_port}:{settings.deployment.service.port}")
    executable = shutil.which(command[0])
    if executable is None:
        raise PipelineError(f"{command[0]} is not on PATH.", "Install kubectl and try again.")
    command[0] = executable
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)

    def log() -> str:
        if process.poll() is None:
            return "(kubectl port-forward still running)"
        return (process.stderr.read() if process.stderr else "").strip()[-400:]

    try:
        yield f"http://127.0.0.1:{local_port}", lambda: process.poll() is None, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def smoke_api_key(c, settings: Settings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key the smoke test sends: $MODELSHIP_API_KEY, else the one in the cluster's Secret.

    Read with output hidden and kept in memory only; None when neither is available (the
    smoke test then finds out whether scoring is open).
    """
    if environ.get(SMOKE_KEY_ENV):
        return environ[SMOKE_KEY_ENV]
    secret = settings.deployment.api_key.model_dump()
    result = c.run(kubectl(settings, "get", "secret", secret["secret_name"],
                           f"--output=jsonpath={{.data.{secret['key']}}}"),
                   warn=True, hide=True)
    if result is None or not result.ok or not result.stdout.strip():
        return None
    return base64.b64decode(result.stdout.strip()).decode().strip() or None


def smoke_test(settings: Settings, metadata: dict, api_key: str | None = None,
               echo: Echo = print, ready_seconds: float = 60) -> None:
    """Readiness and one golden sample through /score and through v2 infer, through the
    Service, via a local port-forward."""
    local_port = int(settings.deployment.smoke_local_port)
    key_fix = (f"Set {SMOKE_KEY_ENV} to the key, or allow the deployer to read the API key "
               "Secret (kubectl get secret).")
    with port_forward(settings, local_port) as (base_url, alive, log):
        service_checks.wait_ready(base_url, ready_seconds, alive, log,
                                  settings.contract.probed_readiness_path)
        service_checks.check_golden(base_url, metadata, limit=1, api_key=api_key,
                                    key_fix=key_fix, contract=settings.contract)
        if settings.serves_sample_api:
            service_checks.check_golden_v2(base_url, metadata, limit=1, api_key=api_key,
                                           key_fix=key_fix)
    echo(f"smoke test passed through service/{settings.app_name}: /readyz and one golden "
         "sample through /score and v2 infer")


def smoke_step(c, settings: Settings, metadata: dict | None,
               echo: Echo = print) -> Callable[[], None]:
    """The smoke test as `apply` runs it; without metadata (a dry run) it only says what."""
    if metadata is None:
        return lambda: echo(f"[dry] would port-forward service/{settings.app_name} to "
                            "127.0.0.1 and check /readyz and one golden sample through /score "
                            "and v2 infer")
    return lambda: smoke_test(settings, metadata, smoke_api_key(c, settings), echo)


def status(c, settings: Settings) -> dict | None:
    """What runs in the environment, from the Deployment's spec, annotations and status."""
    result = c.run(kubectl(settings, "get", f"deployment/{settings.app_name}",
                           f"service/{settings.app_name}", "--output=json"),
                   warn=True, hide=True)
    if result is not None and not result.ok:
        _refused(settings, result, f"Reading {settings.app_name}")
        raise PipelineError(
            f"Could not read {settings.app_name} in context '{settings.kubernetes.context}', "
            f"namespace '{settings.kubernetes.namespace}': {result.stderr.strip()[-300:]}",
            f"Is it deployed (`invoke apply --env={settings.env}`) and are the credentials "
            f"current (`invoke aks.credentials --env={settings.env}`)?",
        )
    if not _stdout(result).strip():
        return None  # a dry run: the command was printed, nothing was read
    return summarize(json.loads(result.stdout))


def summarize(listing: dict) -> dict:
    items = listing.get("items", [listing])
    deployment = next(item for item in items if item.get("kind") == "Deployment")
    service = next((item for item in items if item.get("kind") == "Service"), {})
    annotations = deployment["metadata"].get("annotations", {})
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    state = deployment.get("status", {})
    ingress = service.get("status", {}).get("loadBalancer", {}).get("ingress") or [{}]
    return {
        "image": image,
        "digest": image.split("@", 1)[1] if "@" in image else "(not pinned by digest)",
        "git_revision": annotations.get(GIT_REVISION_ANNOTATION, "unknown"),
        "model_version": annotations.get(MODEL_VERSION_ANNOTATION, "unknown"),
        "model_sha256": annotations.get(MODEL_SHA256_ANNOTATION, "unknown"),
        "ready_replicas": int(state.get("readyReplicas", 0)),
        "replicas": int(state.get("replicas", deployment["spec"].get("replicas", 0))),
        "updated_replicas": int(state.get("updatedReplicas", 0)),
        "address": ingress[0].get("hostname") or ingress[0].get("ip") or "(pending)",
    }


def aks_credentials_command(settings: Settings) -> str:
    aks = settings.kubernetes.aks
    if not aks.resource_group or not aks.cluster:
        raise PipelineError(
            f"No AKS cluster is configured for '{settings.env}'.",
            f"Set kubernetes.aks.resource_group and kubernetes.aks.cluster under "
            f"modelship.environments.{settings.env} in invoke.yaml.",
        )
    # --context names the kubeconfig entry the way every other task expects to find it.
    return shlex.join([
        "az", "aks", "get-credentials", f"--resource-group={aks.resource_group}",
        f"--name={aks.cluster}", f"--context={settings.kubernetes.context}",
        "--overwrite-existing",
    ])


KUBECONFIG_VIEW = "kubectl config view --raw --output=json"


def context_uses_kubelogin(kubeconfig: Mapping, context: str) -> bool:
    """Whether `context`'s user signs in through kubelogin (AKS with Microsoft Entra ID)."""
    contexts = {entry.get("name"): entry.get("context") or {}
                for entry in kubeconfig.get("contexts") or []}
    users = {entry.get("name"): entry.get("user") or {}
             for entry in kubeconfig.get("users") or []}
    user = users.get(contexts.get(context, {}).get("user"), {})
    command = (user.get("exec") or {}).get("command") or ""
    return os.path.basename(command).removesuffix(".exe") == "kubelogin"


def fetch_credentials(c, settings: Settings, dry: bool, echo: Echo) -> str:
    """`az aks get-credentials` into the kubeconfig, then kubelogin where Entra ID needs it."""
    command = aks_credentials_command(settings)
    if not dry and not c.run("az version", warn=True, hide=True).ok:
        raise PipelineError("The Azure CLI (az) is not installed or does not start.",
                            "Install it (`pip install -e .[azure]`) and run `az login`.")
    if not c.run(command, warn=True).ok:
        raise PipelineError(f"az aks get-credentials failed for '{settings.env}'.",
                            "Read az's message above; `az login` may be needed.")
    if dry:
        return (f"[dry] would then, if the cluster signs in with Microsoft Entra ID, run "
                f"{kubelogin_convert_command(settings)}")
    _use_kubelogin_if_needed(c, settings)
    return f"kube context '{settings.kubernetes.context}' is ready"


def _use_kubelogin_if_needed(c, settings: Settings) -> None:
    """Entra ID clusters hand out a kubeconfig whose login only kubelogin can complete."""
    view = c.run(KUBECONFIG_VIEW, warn=True, hide=True)
    if not view.ok:
        raise PipelineError("kubectl cannot read the kubeconfig az just wrote.",
                            "Run `kubectl config view` to see why.")
    if not context_uses_kubelogin(json.loads(view.stdout), settings.kubernetes.context):
        return
    if not c.run("kubelogin --version", warn=True, hide=True).ok:
        raise PipelineError(
            f"The cluster of '{settings.env}' signs in with Microsoft Entra ID, which needs "
            "kubelogin, and kubelogin is not installed.",
            "Run `az aks install-cli` (it installs kubectl and kubelogin), then "
            f"`invoke aks.credentials --env={settings.env}` again.",
        )
    if not c.run(kubelogin_convert_command(settings), warn=True).ok:
        raise PipelineError(
            "kubelogin could not convert the kubeconfig.",
            f"Read its message above; kubernetes.aks.login is "
            f"'{settings.kubernetes.aks.login}' (azurecli, workloadidentity, spn, msi...).",
        )


def kubelogin_convert_command(settings: Settings) -> str:
    # Only this environment's context: other clusters in the kubeconfig keep their login.
    return shlex.join(["kubelogin", "convert-kubeconfig", f"--login={settings.kubernetes.aks.login}",
                       f"--context={settings.kubernetes.context}"])


def needs_confirmation(settings: Settings, yes: bool,
                       environ: Mapping[str, str] = os.environ) -> bool:
    return bool(settings.deployment.confirm) and not yes and not running_in_ci(environ)


def confirm(settings: Settings, image: str, ask: Callable[[str], str] = input,
            interactive: bool | None = None) -> None:
    """Ask the person at the terminal to type the environment's name; raise unless they do."""
    if interactive is None:
        import sys

        interactive = sys.stdin.isatty()
    refused = PipelineError(
        f"Nothing was applied to '{settings.env}': it needs a confirmation.",
        "Answer the prompt with the environment's name, or pass --yes.",
    )
    if not interactive:
        raise refused
    answer = ask(
        f"Apply {image} to context '{settings.kubernetes.context}', namespace "
        f"'{settings.kubernetes.namespace}'? Type '{settings.env}' to go on: "
    )
    if answer.strip() != settings.env:
        raise refused
