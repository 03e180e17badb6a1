"""Where a release goes: the local Docker Engine or a Kubernetes cluster, behind one interface.

`release_target(c, settings)` is the one place that reads `settings.runtime`. Everything
that differs between the runtimes lives in the target it returns: rolling a pushed image
out, rolling back, status, diff, which model runs (`model.check`), whether `deploy` renders
manifests, and starting, describing and stopping what the runtime needs on this machine
(`local.up`, `local.status`, `local.down`). Stages ask the target and never name a
runtime, kubectl or the local engine themselves. A target gets what it needs from the
release record (image reference, model, golden samples) and, for Kubernetes, the reviewed
folder `render` wrote; it never reads `build/model/`. Under `--dry` a target changes
nothing: the Kubernetes one prints each kubectl command through the Invoke context, the
Docker one says what it would run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from . import kube, model_check
from .errors import PipelineError
from .model_check import ModelRef
from .names import (MODEL_SHA256_ANNOTATION, MODEL_SHA256_LABEL, MODEL_VERSION_ANNOTATION,
                    MODEL_VERSION_LABEL, Echo)
from .outcome import Outcome, dry_run, ran, up_to_date
from .release_record import PushRecord, ReleaseRecord
from .settings import Settings

RUNTIMES = ("docker", "kubernetes")


@dataclass(frozen=True)
class PreviousRelease:
    """What `rollback` would run again, as the runtime kept it: the image, and the commit and
    model sha256 it was released from (None where the runtime kept none), which `rollback`
    verifies against the registry first; on Kubernetes, its revision."""
    reference: str
    commit: str | None
    model_sha256: str | None
    revision: str = ""


class ReleaseTarget(Protocol):
    settings: Settings
    # The runtime's name, as `runtime` is set in invoke.yaml.
    runtime: str
    # Whether `apply` reads the manifests `render` writes (so whether `deploy` renders them).
    renders_manifests: bool

    @property
    def where(self) -> str:
        """Where the release runs, for messages: an engine, or context/namespace."""

    def apply(self, record: ReleaseRecord, pushed: PushRecord, *, smoke: bool, yes: bool,
              dry: bool, echo: Echo) -> Outcome:
        """Roll the pushed image out and check it serves; undo on failure."""

    def previous_release(self) -> PreviousRelease:
        """The release before the current one (read only); raises when there is none."""

    def canary(self, record: ReleaseRecord, pushed: PushRecord, *, yes: bool, dry: bool,
               echo: Echo):
        """Start the pushed image beside the stable release and run the canary loop on it
        (`canary.run`): a `CanaryResult`, or under --dry the Outcome saying what it would do."""

    def end_interrupted_canary(self, *, dry: bool, echo: Echo) -> str | None:
        """Send every request back to the stable release and remove a canary that a killed
        deploy left running; a summary, or None when there was none (or under --dry)."""

    def rollback(self, previous: PreviousRelease | None, *, dry: bool, echo: Echo) -> str:
        """Go back to `previous` (None under --dry: nothing was read). Returns a summary."""

    def status(self, *, dry: bool) -> dict | None:
        """What runs there now (image, digest, model, replicas), None when nothing does."""

    def diff(self, *, dry: bool) -> str:
        """What `apply` would change there, shown; returns the closing line."""

    def deployed_model(self) -> ModelRef | None:
        """The model the running release serves (read even under --dry: it changes nothing)."""

    def prepare(self, *, dry: bool, echo: Echo) -> None:
        """Before `deploy`: start what the release needs on this machine and does not answer."""

    def fetch_credentials(self, *, dry: bool, echo: Echo) -> str:
        """`aks.credentials`: the credentials the release needs, in ~/.kube/config."""

    def start_services(self, echo: Echo) -> list[str]:
        """`local.up`: this machine's services for the environment, one line each."""

    def describe_services(self) -> list[str]:
        """`local.status`: which of them answer and who started them."""

    def stop_services(self) -> list[str]:
        """`local.down`: stop what `local.up` (and a local release) started, nothing else."""

    def start_cluster(self, echo: Echo, dry: bool = False) -> list[str]:
        """`local.cluster.up`: the environment's control plane on this machine, if it has one."""

    def stop_cluster(self, dry: bool = False) -> list[str]:
        """`local.cluster.down`: stop the components `start_cluster` started here."""


def release_target(c, settings: Settings) -> ReleaseTarget:
    """The release target `settings.runtime` names: the only place that makes this choice."""
    if settings.runtime == "docker":
        return DockerTarget(settings)
    if settings.runtime == "kubernetes":
        return KubernetesTarget(c, settings)
    raise PipelineError(f"Unknown runtime '{settings.runtime}' for '{settings.env}'.",
                        f"Set runtime to one of: {', '.join(RUNTIMES)}.")


def _model_ref(sha256: str | None, version: str | None) -> ModelRef | None:
    return model_check.deployed_ref(sha256, version)


class _LocalServices:
    """The registry, Azurite and (to run them) Docker Engine that `local.up` starts: any
    environment may use them, whatever its runtime."""

    settings: Settings

    def _require_local_cluster(self) -> None:
        if not (self.runtime == "kubernetes" and self.settings.kubernetes.local_cluster):
            raise PipelineError(
                f"Environment '{self.settings.env}' does not use the local control plane.",
                "Use --env=cluster, or set kubernetes.local_cluster: true (runtime kubernetes) "
                "for the environment.")

    def start_cluster(self, echo: Echo, dry: bool = False) -> list[str]:
        from . import local_cluster

        self._require_local_cluster()
        if dry:
            return ["[dry] would build the control plane unless cached, then start etcd, "
                    "kube-apiserver, kube-controller-manager, kube-scheduler and kwok on "
                    "127.0.0.1 where none answers"]
        return local_cluster.up(self.settings.kubernetes.context,
                                self.settings.kubernetes.namespace, echo)

    def stop_cluster(self, dry: bool = False) -> list[str]:
        from . import local_cluster

        self._require_local_cluster()
        if dry:
            return ["[dry] would stop the control-plane components local.cluster.up started "
                    "here"]
        stopped = local_cluster.down()
        return ["stopped: " + (", ".join(stopped) if stopped else
                               "nothing (local.cluster.up started nothing here)")]

    def start_services(self, echo: Echo) -> list[str]:
        from . import local_services

        return local_services.up(self.settings.local_services, echo)

    def describe_services(self) -> list[str]:
        from . import local_services

        return local_services.describe(self.settings.local_services)

    def stop_services(self) -> list[str]:
        from . import local_services

        stopped = local_services.down(self.settings.local_services)
        return ["stopped: " + (", ".join(stopped) if stopped else
                               "nothing (local.up started nothing)")]


class DockerTarget(_LocalServices):
    """The local environment: the image pulled from the registry, run with host networking
    behind the local edge. It reads no manifests."""

    runtime = "docker"
    renders_manifests = False

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
                             check_golden_sample=smoke,
                             release=(record.source.revision, record.model.sha256))
        return ran(f"serving {pushed.reference} at {url} (try: curl {url}/version)")

    def canary(self, record: ReleaseRecord, pushed: PushRecord, *, yes: bool, dry: bool,
               echo: Echo):
        from . import canary, local_canary, local_runtime
        from .registry import registry_auth

        if dry:
            return dry_run(f"[dry] would pull {pushed.reference}, start it on the free slot "
                           "beside the stable container and, through the edge's server "
                           f"weights: {canary.plan(self.settings.release.canary)}")
        client = self._client()
        if local_runtime.already_serving(client, self.settings, pushed.reference, echo):
            return up_to_date(f"up to date: {pushed.reference} already serves at "
                              f"{local_runtime.base_url(self.settings)}")
        return local_canary.deploy(client, self.settings, pushed.reference,
                                   registry_auth(self.settings), record.model.as_metadata(),
                                   echo, release=(record.source.revision, record.model.sha256))

    def end_interrupted_canary(self, *, dry: bool, echo: Echo) -> str | None:
        from . import local_runtime

        if dry or not local_runtime.end_interrupted_canary(self._client(), self.settings, echo):
            return None
        return (f"canary ended: the stable version serves every request at "
                f"{local_runtime.base_url(self.settings)}")

    def previous_release(self) -> PreviousRelease:
        from . import local_runtime

        found = local_runtime.previous_release(self._client(), self.settings)
        if found is None:
            raise PipelineError(
                f"Nothing to roll back to in '{self.settings.env}': the running container "
                "records no earlier image.",
                f"Deploy the release you want with `invoke deploy --env={self.settings.env}`.",
            )
        return PreviousRelease(*found)

    def rollback(self, previous: PreviousRelease | None, *, dry: bool, echo: Echo) -> str:
        from . import local_runtime
        from .registry import registry_auth

        if dry or previous is None:
            return ("[dry] would run the image the current container replaced (its "
                    f"{local_runtime.PREVIOUS_IMAGE_LABEL} label) and wait for /readyz")
        release = (previous.commit, previous.model_sha256) \
            if previous.commit and previous.model_sha256 else None
        local_runtime.deploy(self._client(), self.settings, previous.reference,
                             registry_auth(self.settings), None, echo,
                             check_golden_sample=False, release=release)
        return (f"rolled back: {previous.reference} serves at "
                f"{local_runtime.base_url(self.settings)}")

    def status(self, *, dry: bool) -> dict | None:
        from . import local_runtime

        return local_runtime.status(self._client(), self.settings)

    def diff(self, *, dry: bool) -> str:
        return (f"nothing to compare: runtime {self.runtime} reads no manifests (`invoke status "
                f"--env={self.settings.env}` shows what runs)")

    def deployed_model(self) -> ModelRef | None:
        import docker

        from .engine import find_container
        from .local_runtime import container_name

        name = container_name(self.settings)
        try:
            container = find_container(self._client(), name)
        except docker.errors.APIError as error:
            raise PipelineError(f"The Docker Engine could not inspect {name}: "
                                f"{error.explanation}", "Check that it runs (`invoke local.up`).") \
                from None
        if container is None:
            return None
        # A container's labels include those of its image, where build put the model's.
        labels = container.labels or {}
        return _model_ref(labels.get(MODEL_SHA256_LABEL), labels.get(MODEL_VERSION_LABEL))

    def prepare(self, *, dry: bool, echo: Echo) -> None:
        from . import local_services

        if local_services.all_answer(self.settings.local_services):
            return
        if dry:
            echo("[dry] would start the local services that do not answer (`invoke local.up`)")
            return
        for line in local_services.up(self.settings.local_services, echo):
            echo(line)

    def fetch_credentials(self, *, dry: bool, echo: Echo) -> str:
        raise PipelineError(
            f"'{self.settings.env}' runs on {self.where} (runtime {self.runtime}): there is no "
            "cluster to fetch credentials for.",
            "Name an environment whose runtime is kubernetes, e.g. --env=dev.")

    def start_services(self, echo: Echo) -> list[str]:
        from . import local_runtime

        lines = super().start_services(echo)
        # After an engine restart: the edge again, routing to the container that runs.
        edge = local_runtime.ensure_edge_for_running(self._client(), self.settings, echo)
        return lines + ([edge] if edge else [])

    def describe_services(self) -> list[str]:
        from . import local_services
        from .local_edge import Edge

        return local_services.describe(self.settings.local_services, Edge.of(self.settings))

    def stop_services(self) -> list[str]:
        """The local deployment's container and edge first, then what `local.up` started."""
        from . import host, local_runtime, local_services
        from .engine import engine_answers
        from .local_edge import Edge

        lines = []
        if engine_answers():
            if local_runtime.remove(self._client(), self.settings):
                lines.append("removed the local deployment container")
        edge = Edge.of(self.settings)
        stopped = [edge.service_name] if host.stop_started(edge.service_name,
                                                          run_dir=edge.run_dir) else []
        stopped += local_services.down(self.settings.local_services)
        lines.append("stopped: " + (", ".join(stopped) if stopped else
                                    "nothing (local.up started nothing)"))
        return lines


class KubernetesTarget(_LocalServices):
    """A cluster reached with kubectl: the reviewed folder applied, rollout watched, undone."""

    runtime = "kubernetes"
    renders_manifests = True

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
        kube.apply(self.c, self.settings, self._smoke_test(record, smoke, dry, echo), echo)
        if dry:
            return dry_run(f"[dry] would roll out {pushed.reference} to {self.where} "
                           "(commands above)")
        return ran(f"rolled out {pushed.reference} to {self.where}")

    def _smoke_test(self, record: ReleaseRecord, smoke: bool, dry: bool, echo: Echo):
        if smoke and self.settings.kubernetes.local_cluster:
            # kwok's pods run no process: a port-forward would reach nothing. The container
            # contract test (`invoke test`) scored this image already (docs/operations.md).
            echo("smoke test not run: the local control plane's pods are kwok's and serve "
                 "nothing; `invoke test` scored this image on the local engine")
            return None
        if smoke:
            return kube.smoke_step(self.c, self.settings,
                                   None if dry else record.model.as_metadata(), echo)
        return None

    def canary(self, record: ReleaseRecord, pushed: PushRecord, *, yes: bool, dry: bool,
               echo: Echo):
        from . import canary, kube_canary

        kube.require_current_render(self.settings, pushed.reference)
        # A canary changes the environment as a rolling apply does: the same question first.
        if kube.needs_confirmation(self.settings, yes) and not dry:
            kube.confirm(self.settings, pushed.reference)
        live = kube_canary.stable_deployment(self.c, self.settings)
        stable = kube_canary.replicas_of(live)
        if dry:
            return dry_run(f"[dry] {kube_canary.plan(self.settings, stable or 1)}" + (
                "" if stable else f" (deployment/{self.settings.app_name} does not exist "
                "yet: the first release is rolling)"))
        if not stable:
            raise PipelineError(
                f"Nothing serves in {self.where} to compare a canary with "
                f"(deployment/{self.settings.app_name} is missing or scaled to 0).",
                f"Deploy the first release with `invoke deploy --env={self.settings.env} "
                "--strategy=rolling`.")
        if kube_canary.serves_already(self.settings, live):
            return up_to_date(f"up to date: {pushed.reference} already serves in {self.where}")
        kube_canary.end_interrupted(self.c, self.settings, echo)
        runtime = kube_canary.KubeCanary(
            self.c, self.settings, stable, echo,
            promote_stable=lambda: kube.apply(
                self.c, self.settings, self._smoke_test(record, True, False, echo), echo))
        section = self.settings.release.canary
        return canary.run(runtime, section, echo,
                          start=lambda: runtime.start(section.steps[0]))

    def end_interrupted_canary(self, *, dry: bool, echo: Echo) -> str | None:
        from . import kube_canary

        if dry:
            return None
        return kube_canary.end_interrupted(self.c, self.settings, echo)

    def previous_release(self) -> PreviousRelease:
        found = kube.previous_revision(self.c, self.settings)
        if found is None:
            raise PipelineError(
                f"Nothing to roll back to in {self.where}: deployment/{self.settings.app_name} "
                "has no earlier revision.",
                f"Deploy the release you want with `invoke deploy --env={self.settings.env}`.")
        return PreviousRelease(found["image"], found["commit"], found["model_sha256"],
                               found["revision"])

    def rollback(self, previous: PreviousRelease | None, *, dry: bool, echo: Echo) -> str:
        # To the very revision that was verified, not whichever is previous by then.
        revision = previous.revision if previous is not None else None
        if not kube.roll_back(self.c, kube.apply_commands(self.settings), echo, self.settings,
                              to_revision=revision):
            raise PipelineError(
                f"kubectl rollout undo failed in {self.where}.",
                "Read kubectl's message above; `kubectl rollout history` lists the revisions.",
            )
        if dry:
            return f"[dry] would roll {self.settings.app_name} back in {self.where}"
        return (f"rolled {self.settings.app_name} back to revision {revision} "
                f"({previous.reference}) in {self.where}")

    def status(self, *, dry: bool) -> dict | None:
        from . import kube_canary

        state = kube.status(self.c, self.settings)
        if state is None:
            return None
        return {**state, **kube_canary.status(self.c, self.settings, state["replicas"])}

    def diff(self, *, dry: bool) -> str:
        from .stage_files import shown

        rendered = shown(self.settings.render_dir)
        if kube.diff(self.c, self.settings):
            return (f"the cluster differs from {rendered}/ (diff above); "
                    "`invoke apply` would change it")
        if dry:
            return f"[dry] would compare {rendered}/ with the cluster"
        return (f"context '{self.settings.kubernetes.context}' already matches the rendered "
                "manifests")

    def deployed_model(self) -> ModelRef | None:
        settings = self.settings
        command = kube.kubectl(settings, "get", f"deployment/{settings.app_name}",
                               "--ignore-not-found", "--output=json")
        # A read-only probe: it runs even under --dry, or the answer would be meaningless.
        result = self.c.run(command, warn=True, hide=True, dry=False)
        if not result.ok:
            reason = (result.stderr or "").strip().splitlines()[-1:] or ["no message"]
            raise PipelineError(
                f"Cannot read deployment/{settings.app_name} from context "
                f"'{settings.kubernetes.context}': {reason[0]}",
                f"Check the cluster credentials (`invoke aks.credentials --env={settings.env}`).",
            )
        if not result.stdout.strip():
            return None
        try:
            deployment = json.loads(result.stdout)
        except ValueError:
            raise PipelineError("kubectl printed something that is not JSON.",
                                "Check the kubectl version and plugins.") from None
        # The pod template says what pods run: `rollout undo` restores it, but not the
        # Deployment's own annotations, which keep naming the model of the failed rollout.
        template = (((deployment.get("spec") or {}).get("template") or {}).get("metadata")
                    or {})
        template_annotations = template.get("annotations") or {}
        annotations = (deployment.get("metadata") or {}).get("annotations") or {}
        sha256 = (template_annotations.get(MODEL_SHA256_ANNOTATION)
                  or annotations.get(MODEL_SHA256_ANNOTATION))
        version = None
        if annotations.get(MODEL_SHA256_ANNOTATION) == sha256:
            version = annotations.get(MODEL_VERSION_ANNOTATION)
        return _model_ref(sha256, version)

    def prepare(self, *, dry: bool, echo: Echo) -> None:
        """The cluster runs the release: nothing to start on this machine, unless it is this
        machine's control plane and the registry the release is pushed to."""
        if not self.settings.kubernetes.local_cluster:
            return
        from . import local_cluster, local_services

        if local_cluster.api_answers() and local_services.all_answer(
                self.settings.local_services):
            return
        if dry:
            echo("[dry] would start the local control plane and services (invoke local.up)")
            return
        for line in self.start_services(echo):
            echo(line)

    def start_services(self, echo: Echo) -> list[str]:
        lines = super().start_services(echo)
        if self.settings.kubernetes.local_cluster:
            lines += self.start_cluster(echo)
        return lines

    def describe_services(self) -> list[str]:
        lines = super().describe_services()
        if self.settings.kubernetes.local_cluster:
            from . import local_cluster

            lines += local_cluster.describe()
        return lines

    def stop_services(self) -> list[str]:
        lines = self.stop_cluster() if self.settings.kubernetes.local_cluster else []
        return lines + super().stop_services()

    def fetch_credentials(self, *, dry: bool, echo: Echo) -> str:
        return kube.fetch_credentials(self.c, self.settings, dry, echo)
