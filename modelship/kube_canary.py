"""A canary on Kubernetes without a controller: a second Deployment, a share by replicas or
by an NGINX canary Ingress, metrics read from the pods through the API server.

The canary is `deployment/<app>-canary`, made from the reviewed folder's Deployment (the new
image and pod template). Without an Ingress it carries the selector labels the one Service
uses plus `track: canary`, so the Service spreads connections over both versions' pods and
the share is the replica ratio: with N stable replicas, k canary replicas give k/(N+k),
so only those shares exist; each step takes the k nearest the configured share (at least 1)
and prints the share it got. With `deployment.ingress.hosts` the canary pods are named
`<app>-canary` instead (the stable Service no longer selects them), get their own Service
and NetworkPolicy, and a canary Ingress (`nginx.ingress.kubernetes.io/canary-weight`) sends
the exact share to them. The stable Deployment is never changed during the canary.

Each version's /metrics is read from each of its pods through the API server's pod proxy
(no port-forward, no Prometheus) and summed over the pods; a pod that does not answer is
left out, and a version none of whose pods answer counts as no traffic, which the loop
judges inconclusive: it never promotes without evidence. Promotion is the ordinary apply
of the reviewed folder (the stable Deployment rolls to the canary's template), then the
canary objects are deleted; rollback deletes them at once. The canary objects lack the
`managed-by` label on purpose: the promotion's `apply --prune` must not delete them before
the stable rollout has finished. This module never changes the stable Deployment except
through `kube.apply`, and never deletes anything but the canary objects it names.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import yaml

from . import canary, canary_analysis, kube
from .errors import PipelineError
from .names import Echo
from .settings import Settings

TRACK_LABEL, TRACK = "track", "canary"
MANAGED_BY = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"
# A pod that does not answer the proxy must not hold a window up for long.
PROXY_TIMEOUT = "5s"


def canary_name(settings: Settings) -> str:
    return f"{settings.app_name}-canary"


def canary_replicas(stable: int, percent: int) -> int:
    """The canary replica count k >= 1 whose share k/(stable+k) is nearest `percent`."""
    if stable < 1:
        raise ValueError("a replica-ratio share needs at least one stable replica")
    if not 0 < percent < 100:
        raise ValueError("a canary step's share is above 0% and below 100% (the promotion)")
    exact = stable * percent / (100 - percent)
    candidates = {max(1, int(exact)), max(1, int(exact) + 1)}
    return min(sorted(candidates), key=lambda k: abs(k / (stable + k) - percent / 100))


def replica_share(stable: int, canary_count: int) -> float:
    """The share of connections the canary gets behind one Service, in percent."""
    total = stable + canary_count
    return 100 * canary_count / total if total else 0.0


def _documents(settings: Settings) -> list[dict]:
    documents = []
    for path in sorted(settings.render_dir.glob("*.yaml")):
        documents += [document for document in yaml.safe_load_all(path.read_text())
                      if document]
    return documents


def _renamed(document: dict, name: str) -> dict:
    """A copy of a rendered object under the canary's name, out of `apply --prune`'s reach."""
    made = copy.deepcopy(document)
    made["metadata"]["name"] = name
    made["metadata"].setdefault("labels", {}).pop(MANAGED_BY, None)
    made["metadata"]["labels"][TRACK_LABEL] = TRACK
    return made


def canary_objects(settings: Settings, replicas: int, by_ingress: bool) -> list[dict]:
    """The canary objects to apply, from the reviewed folder: its ConfigMap (the canary's
    pods read it), the canary Deployment and, with an Ingress, its Service, NetworkPolicy and
    canary Ingress at weight 0 (`set_share` raises it)."""
    rendered = _documents(settings)
    documents = {document["kind"]: document for document in rendered}
    name = canary_name(settings)
    configs = [document for document in rendered if document["kind"] == "ConfigMap"]
    deployment = _renamed(documents["Deployment"], name)
    selector = dict(deployment["spec"]["selector"]["matchLabels"])
    if by_ingress:
        selector[NAME_LABEL] = name
    selector[TRACK_LABEL] = TRACK
    deployment["spec"]["replicas"] = replicas
    deployment["spec"]["selector"]["matchLabels"] = selector
    pod = deployment["spec"]["template"]
    pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **selector}
    for constraint in pod["spec"].get("topologySpreadConstraints", []):
        constraint["labelSelector"]["matchLabels"] = selector
    made = [*configs, deployment]
    if by_ingress:
        service = _renamed(documents["Service"], name)
        service["spec"]["selector"] = selector
        made.append(service)
        if "NetworkPolicy" in documents:
            policy = _renamed(documents["NetworkPolicy"], name)
            policy["spec"]["podSelector"]["matchLabels"] = selector
            made.append(policy)
        ingress = _renamed(documents["Ingress"], name)
        ingress["metadata"].setdefault("annotations", {}).update(
            {CANARY_ANNOTATION: "true", WEIGHT_ANNOTATION: "0"})
        ingress["spec"].pop("tls", None)  # the stable Ingress terminates TLS for the host
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                path["backend"]["service"]["name"] = name
        made.append(ingress)
    return made


def canary_kinds(settings: Settings) -> list[str]:
    """What ending a canary deletes, the Ingress first so no request goes to a vanishing pod."""
    name = canary_name(settings)
    return [f"ingress/{name}", f"deployment/{name}", f"service/{name}",
            f"networkpolicy/{name}"]


def stable_selector(settings: Settings) -> str:
    """The stable version's pods: the Service's selector, minus the canary's."""
    return (f"{NAME_LABEL}={settings.app_name},"
            f"app.kubernetes.io/instance={settings.app_name}-{settings.env},"
            f"{TRACK_LABEL}!={TRACK}")


def canary_selector(settings: Settings) -> str:
    """The canary's pods, in either mode."""
    name = canary_name(settings) if settings.deployment.ingress.hosts else settings.app_name
    return (f"{NAME_LABEL}={name},app.kubernetes.io/instance={settings.app_name}-"
            f"{settings.env},{TRACK_LABEL}={TRACK}")


def _read(c, command: str):
    # Reads change nothing: they run under --dry too, or a plan could not be made.
    return c.run(command, warn=True, hide=True, dry=False)


def stable_deployment(c, settings: Settings) -> dict | None:
    """The stable Deployment as the cluster has it now (None when it does not exist)."""
    result = _read(c, kube.kubectl(settings, "get", f"deployment/{settings.app_name}",
                                   "--ignore-not-found", "--output=json"))
    if result is None or not result.ok or not (result.stdout or "").strip():
        return None
    return json.loads(result.stdout)


def replicas_of(deployment: dict | None) -> int:
    return int(deployment["spec"].get("replicas", 1)) if deployment else 0


def _pod_identity(deployment: dict) -> tuple:
    """What makes two pod templates one release: the image and the ConfigMaps it reads."""
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    return image, kube.referenced_configs({"items": [deployment]})


def serves_already(settings: Settings, stable: dict) -> bool:
    """Whether the stable Deployment runs the reviewed folder's image and config already."""
    rendered = next(document for document in _documents(settings)
                    if document["kind"] == "Deployment")
    return _pod_identity(rendered) == _pod_identity(stable)


def plan(settings: Settings, stable: int) -> str:
    """The objects and, per step, the replicas (and weight) a canary would use: for --dry."""
    section = settings.release.canary
    by_ingress = bool(settings.deployment.ingress.hosts)
    steps = []
    for share in (step for step in section.steps if step < 100):
        k = canary_replicas(stable, share)
        steps.append(f"{share}%: {k} canary pod(s), canary-weight {share}" if by_ingress else
                     f"{share}%: {k} canary pod(s) beside {stable} = "
                     f"{replica_share(stable, k):.1f}%")
    objects = ", ".join(kind for kind in canary_kinds(settings)
                        if by_ingress or kind.startswith("deployment/"))
    how = ("by the canary Ingress's weight (exact)" if by_ingress else
           f"by replica ratio behind service/{settings.app_name} (k/({stable}+k))")
    return (f"would create {objects} beside deployment/{settings.app_name} ({stable} "
            f"replicas, unchanged), share {how}: {'; '.join(steps)}. Each step: "
            f"{canary.plan(section)}; promotion applies the reviewed folder to "
            f"deployment/{settings.app_name}, then deletes the canary objects")


class KubeCanary:
    """`canary.CanaryRuntime` for two Deployments in one namespace."""

    def __init__(self, c, settings: Settings, stable: int, echo: Echo,
                 promote_stable=None):
        self.c, self.settings, self.stable, self.echo = c, settings, stable, echo
        self.by_ingress = bool(settings.deployment.ingress.hosts)
        self.promote_stable = promote_stable
        self.name = canary_name(settings)

    def _run(self, *args: str, doing: str) -> None:
        result = self.c.run(kube.kubectl(self.settings, *args), warn=True, hide=True)
        if result is not None and not result.ok:
            raise PipelineError(f"{doing} failed: {(result.stderr or '').strip()[-300:]}",
                                "Read kubectl's message; `invoke rollback` ends the canary.")

    def start(self, first_share: int) -> None:
        """Create the canary objects at the first step's replicas (weight 0) and wait."""
        stable_ingress = _read(self.c, kube.kubectl(
            self.settings, "get", f"ingress/{self.settings.app_name}", "--output=name")) \
            if self.by_ingress else None
        if stable_ingress is not None and not stable_ingress.ok:
            raise PipelineError(
                f"deployment.ingress.hosts is set, but ingress/{self.settings.app_name} does "
                f"not exist in {self.settings.kubernetes.namespace}: a canary Ingress needs "
                "the stable one beside it.",
                f"Apply the Ingress with a rolling release first (`invoke apply "
                f"--env={self.settings.env} --strategy=rolling`).")
        objects = canary_objects(self.settings, canary_replicas(self.stable, first_share),
                                 self.by_ingress)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "canary.yaml"
            path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
            self._run("apply", f"--filename={path}", doing=f"Creating {self.name}")
        self._wait()
        self.echo(f"  canary deployment/{self.name} is ready beside "
                  f"deployment/{self.settings.app_name}")

    def _wait(self) -> None:
        self._run("rollout", "status", f"deployment/{self.name}",
                  f"--timeout={self.settings.kubernetes.rollout_timeout}",
                  doing=f"Waiting for deployment/{self.name}")

    def set_share(self, percent: int) -> None:
        k = canary_replicas(self.stable, percent)
        self._run("scale", f"deployment/{self.name}", f"--replicas={k}",
                  doing=f"Scaling deployment/{self.name}")
        self._wait()
        if self.by_ingress:
            self._run("annotate", "--overwrite", f"ingress/{self.name}",
                      f"{WEIGHT_ANNOTATION}={percent}", doing=f"Weighting ingress/{self.name}")
            self.echo(f"  share {percent}% (canary-weight, exact) on {k} canary pod(s)")
        else:
            self.echo(f"  share {percent}% asked: {k} canary pod(s) beside {self.stable} = "
                      f"{replica_share(self.stable, k):.1f}% of connections")

    def scrape(self) -> tuple[str, str]:
        return (version_metrics(self.c, self.settings, canary_selector(self.settings),
                                "canary", self.echo),
                version_metrics(self.c, self.settings, stable_selector(self.settings),
                                "stable", self.echo))

    def promote(self) -> None:
        self.promote_stable()
        end(self.c, self.settings, self.echo)

    def roll_back(self) -> None:
        end(self.c, self.settings, self.echo)


def pod_names(c, settings: Settings, selector: str) -> list[str]:
    """The running pods a selector picks (none being deleted)."""
    result = _read(c, kube.kubectl(settings, "get", "pods", f"--selector={selector}",
                                   "--output=json"))
    if result is None or not result.ok or not (result.stdout or "").strip():
        return []
    return [pod["metadata"]["name"] for pod in json.loads(result.stdout).get("items", [])
            if pod.get("status", {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")]


def version_metrics(c, settings: Settings, selector: str, which: str, echo: Echo) -> str:
    """One version's /metrics summed over its pods, read through the API server's pod proxy;
    empty when no pod answers (the loop then sees no traffic: inconclusive)."""
    namespace, port = settings.kubernetes.namespace, settings.deployment.container_port
    texts, silent = [], []
    for pod in pod_names(c, settings, selector):
        result = _read(c, kube.kubectl(
            settings, f"--request-timeout={PROXY_TIMEOUT}", "get", "--raw",
            f"/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/metrics"))
        if result is not None and result.ok:
            texts.append(result.stdout)
        else:
            silent.append(pod)
    if silent:
        echo(f"  {which}: no /metrics from {len(silent)} pod(s) ({', '.join(silent)}): "
             "left out of this reading")
    try:
        return canary_analysis.merged(texts)
    except ValueError as error:
        raise PipelineError(f"The {which} pods' /metrics is not Prometheus text: {error}",
                            "Check the image serves the app's /metrics.") from None


def running(c, settings: Settings) -> dict | None:
    """The canary Deployment (and Ingress) if one runs, as kubectl reads them."""
    name = canary_name(settings)
    result = _read(c, kube.kubectl(settings, "get", f"deployment/{name}", f"ingress/{name}",
                                   "--ignore-not-found", "--output=json"))
    if result is None or not result.ok or not (result.stdout or "").strip():
        return None
    items = json.loads(result.stdout).get("items", [])
    found = {item["kind"]: item for item in items}
    return found if "Deployment" in found else None


def end(c, settings: Settings, echo: Echo) -> None:
    """Delete the canary objects (the stable Deployment serves every request already)."""
    deleted = c.run(kube.kubectl(settings, "delete", *canary_kinds(settings),
                                 "--ignore-not-found", "--wait=false"), warn=True, hide=True)
    if deleted is not None and not deleted.ok:
        raise PipelineError(f"Deleting the canary failed: {(deleted.stderr or '').strip()[-300:]}",
                            f"Delete {', '.join(canary_kinds(settings))} by hand.")
    echo(f"  canary objects deleted: {', '.join(canary_kinds(settings))} (where present)")


def end_interrupted(c, settings: Settings, echo: Echo) -> str | None:
    """A canary a killed deploy left: ended (deleted); a summary, None if there was none."""
    found = running(c, settings)
    if found is None:
        return None
    image = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    end(c, settings, echo)
    return (f"canary ended: {image} removed, deployment/{settings.app_name} serves every "
            "request")


def status(c, settings: Settings, stable: int) -> dict:
    """The canary beside the stable Deployment and each one's share, for `status`."""
    found = running(c, settings)
    if found is None:
        return {}
    deployment = found["Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    count = int(deployment["spec"].get("replicas", 0))
    if "Ingress" in found:
        weight = int(found["Ingress"]["metadata"].get("annotations", {})
                     .get(WEIGHT_ANNOTATION, "0"))
        share = f"stable {100 - weight}% / canary {weight}% (canary Ingress weight)"
    else:
        canary_share = replica_share(stable, count)
        share = (f"stable {100 - canary_share:.1f}% / canary {canary_share:.1f}% "
                 f"(replica ratio {stable}:{count})")
    return {"canary": image, "canary_replicas": count, "shares": share}
