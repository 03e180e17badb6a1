"""`apply` for Kubernetes environments: kubectl apply, rollout status, undo on failure.

Every kubectl call goes through the Invoke context, so `--dry` prints the exact sequence and
tests can script kubectl's answers with MockContext. It must never apply anything but the
reviewed folder that `render` wrote, and never to a context other than the environment's.
"""

from __future__ import annotations

from .errors import PipelineError
from .settings import Settings


def kubectl(settings: Settings, *args: str) -> str:
    return " ".join([
        "kubectl", f"--context={settings.kubernetes.context}",
        f"--namespace={settings.kubernetes.namespace}", *args,
    ])


def apply_commands(settings: Settings) -> dict[str, str]:
    deployment = f"deployment/{settings.app_name}"
    return {
        "apply": kubectl(settings, "apply", f"--filename={settings.render_dir}"),
        "rollout": kubectl(settings, "rollout", "status", deployment,
                           f"--timeout={settings.kubernetes.rollout_timeout}"),
        "undo": kubectl(settings, "rollout", "undo", deployment),
        "undo_wait": kubectl(settings, "rollout", "status", deployment,
                             f"--timeout={settings.kubernetes.rollout_timeout}"),
        "events": kubectl(settings, "get", "events", "--sort-by=.lastTimestamp",
                          f"--field-selector=involvedObject.kind=Pod"),
    }


def apply(c, settings: Settings) -> None:
    if not settings.render_dir.exists():
        raise PipelineError(
            f"Nothing rendered for '{settings.env}' ({settings.render_dir} is missing).",
            f"Run `invoke render --env={settings.env}` first.",
        )
    commands = apply_commands(settings)
    result = c.run(commands["apply"], warn=True)
    if result is not None and not result.ok:
        raise PipelineError(
            f"kubectl apply to context '{settings.kubernetes.context}' failed.",
            "Read kubectl's message above; check `invoke aks.credentials` and the manifests.",
        )
    rollout = c.run(commands["rollout"], warn=True)
    if rollout is not None and not rollout.ok:
        c.run(commands["undo"], warn=True)
        c.run(commands["undo_wait"], warn=True)
        c.run(commands["events"], warn=True)
        raise PipelineError(
            f"The rollout of {settings.app_name} in '{settings.env}' did not finish; "
            "it was rolled back to the previous revision.",
            "Read the pod events above, fix the cause, and deploy again.",
        )
