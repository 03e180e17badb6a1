"""Where a release goes: the local Docker Engine or a Kubernetes cluster, behind one interface.

`release_target(c, settings)` is the one place that reads `settings.runtime`; every task asks
the target it returns to apply a pushed image, roll back, report status or name the model it
runs. A target gets what it needs from the release record (image reference, model, golden
samples) and, for Kubernetes, the reviewed folder `render` wrote; it never reads
`build/model/`. Under `--dry` a target changes nothing: the Kubernetes one prints each kubectl
command through the Invoke context, the Docker one says what it would run.
"""

from __future__ import annotations

from typing import Protocol

from . import kube, model_check
from .errors import PipelineError
from .names import Echo
from .outcome import Outcome, dry_run, ran, up_to_date
from .release_record import PushRecord, ReleaseRecord
from .settings import Settings

RUNTIMES = ("docker", "kubernetes")


class ReleaseTarget(Protocol):
    settings: Settings

    @property
    def where(self) -> str:
        """Where the release runs, for messages: an engine, or context/namespace."""

    @property
    def needs_local_services(self) -> bool:
        """Whether `deploy` should start the local registry and store when they are down."""

    def apply(self, record: ReleaseRecord, pushed: PushRecord, *, smoke: bool, yes: bool,
              dry: bool, echo: Echo) -> Outcome:
        """Roll the pushed image out and check it serves; undo on failure."""

    def rollback(self, *, dry: bool, echo: Echo) -> str:
        """Go back to the release before the current one. Returns a summary."""

    def status(self, *, dry: bool) -> dict | None:
        """What runs there now (image, digest, model, replicas), None when nothing does."""

    def deployed_model(self) -> model_check.ModelRef | None:
        """The model the running release serves (read even under --dry: it changes nothing)."""


def release_target(c, settings: Settings) -> ReleaseTarget:
    """The release target `settings.runtime` names: the only place that makes this choice."""
    if settings.runtime == "docker":
        return DockerTarget(settings)
    if settings.runtime == "kubernetes":
        return KubernetesTarget(c, settings)
    raise PipelineError(f"Unknown runtime '{settings.runtime}' for '{settings.env}'.",
                        f"Set runtime to one of: {', '.join(RUNTIMES)}.")


class DockerTarget:
    """The local environment: the image pulled from the registry, run with host networking."""

    needs_local_services = True

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def where(self) -> str:
        return "the local Docker Engine"

    @staticmethod
    def _client():
        from .engine import docker_client

        return docker_client()

    def apply(self, record: ReleaseRecord, pushed: PushRecord, *, smoke: bool, yes: bool,
              dry: bool, echo: Echo) -> Outcome:
        from . import local_runtime
        from .registry import registry_auth

        url = local_runtime.base_url(self.settings)
        if dry:
            return dry_run(f"[dry] would pull {pushed.reference}, start it beside the running "
                           f"container, route {url} to it once it is ready and scores a golden "
                           "sample, then stop the old one (nothing, if it already serves it)")
        client = self._client()
        if local_runtime.already_serving(client, self.settings, pushed.reference, echo):
            return up_to_date(f"up to date: {pushed.reference} already serves at {url}")
        local_runtime.deploy(client, self.settings, pushed.reference,
                             registry_auth(self.settings), record.model.as_metadata(), echo,
                             check_golden_sample=smoke)
        return ran(f"serving {pushed.reference} at {url} (try: curl {url}/version)")

    def rollback(self, *, dry: bool, echo: Echo) -> str:
        from . import local_runtime
        from .registry import registry_auth

        client = None if dry else self._client()
        previous = local_runtime.previous_image(client, self.settings) if client else None
        if dry:
            return ("[dry] would run the image the current container replaced (its "
                    f"{local_runtime.PREVIOUS_IMAGE_LABEL} label) and wait for /readyz")
        if previous is None:
            raise PipelineError(
                f"Nothing to roll back to in '{self.settings.env}': the running container "
                "records no earlier image.",
                f"Deploy the release you want with `invoke deploy --env={self.settings.env}`.",
            )
        local_runtime.deploy(client, self.settings, previous, registry_auth(self.settings),
                             None, echo, check_golden_sample=False)
        return f"rolled back: {previous} serves at {local_runtime.base_url(self.settings)}"

    def status(self, *, dry: bool) -> dict | None:
        from . import local_runtime

        return local_runtime.status(self._client(), self.settings)

    def deployed_model(self) -> model_check.ModelRef | None:
        from .local_runtime import container_name

        return model_check.deployed_locally(self._client(), container_name(self.settings))


class KubernetesTarget:
    """A cluster reached with kubectl: the reviewed folder applied, rollout watched, undone."""

    needs_local_services = False

    def __init__(self, c, settings: Settings):
        self.c = c
        self.settings = settings

    @property
    def where(self) -> str:
        return f"{self.settings.kubernetes.context}/{self.settings.kubernetes.namespace}"

    def apply(self, record: ReleaseRecord, pushed: PushRecord, *, smoke: bool, yes: bool,
              dry: bool, echo: Echo) -> Outcome:
        kube.require_current_render(self.settings, pushed.reference)
        if kube.needs_confirmation(self.settings, yes) and not dry:
            kube.confirm(self.settings, pushed.reference)
        smoke_test = None
        if smoke:
            smoke_test = kube.smoke_step(self.c, self.settings,
                                         None if dry else record.model.as_metadata(), echo)
        kube.apply(self.c, self.settings, smoke_test, echo)
        if dry:
            return dry_run(f"[dry] would roll out {pushed.reference} to {self.where} "
                           "(commands above)")
        return ran(f"rolled out {pushed.reference} to {self.where}")

    def rollback(self, *, dry: bool, echo: Echo) -> str:
        if not kube.roll_back(self.c, kube.apply_commands(self.settings), echo):
            raise PipelineError(
                f"kubectl rollout undo failed in {self.where}.",
                "Read kubectl's message above; `kubectl rollout history` lists the revisions.",
            )
        if dry:
            return f"[dry] would roll {self.settings.app_name} back in {self.where}"
        return f"rolled {self.settings.app_name} back to its previous revision in {self.where}"

    def status(self, *, dry: bool) -> dict | None:
        return kube.status(self.c, self.settings)

    def deployed_model(self) -> model_check.ModelRef | None:
        return model_check.deployed_on_kubernetes(self.c, self.settings)


def local_down(settings: Settings) -> list[str]:
    """`local.down`: the local deployment's container and edge first, then what `local.up`
    started. Here, above both, because it needs the docker runtime and the local services."""
    from . import host, local_runtime, local_services
    from .engine import docker_client, engine_answers
    from .local_edge import Edge

    lines = []
    if engine_answers():
        if local_runtime.remove(docker_client(), settings):
            lines.append("removed the local deployment container")
    edge = Edge.of(settings)
    stopped = [edge.service_name] if host.stop_started(edge.service_name,
                                                      run_dir=edge.run_dir) else []
    stopped += local_services.down(settings.local_services)
    lines.append("stopped: " + (", ".join(stopped) if stopped else
                                "nothing (local.up started nothing)"))
    return lines
