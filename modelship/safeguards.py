"""AKS Deployment Safeguards and the restricted Pod Security Standard, checked offline.

A cluster with Deployment Safeguards (`az aks safeguards`, an Azure Policy initiative run by
Gatekeeper) and a restricted Pod Security level refuses, or warns about, objects that break
its rules; this module finds those objects in a rendered folder before anyone applies it.
No maintained rule set for either runs offline here, so the rules are written out below as
plain Python over the rendered dictionaries, each with a stable id and the name of the
Azure Policy or Pod Security control it mirrors. Where a rule needs more than one object
(unique Service selectors, a Deployment scaled by an autoscaler, a disruption budget against
a fixed replica count) it looks only at the other objects in the same folder. It must never
contact a cluster, a registry or anything else on the network, and never change a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import yaml

from .errors import PipelineError

POD_TEMPLATE_KINDS = frozenset({
    "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job",
})
WORKLOAD_KINDS = POD_TEMPLATE_KINDS | {"Pod", "CronJob"}
# Kinds whose replica count can be above one, so a node going down can take them all.
REPLICATED_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"})

CONTAINER_FIELDS = {
    "containers": "container",
    "initContainers": "init container",
    "ephemeralContainers": "ephemeral container",
}

AKS_LABEL_DOMAIN = "kubernetes.azure.com"
# The taint AKS puts on system node pools to keep application pods off them.
SYSTEM_POOL_TAINT = "CriticalAddonsOnly"
PINNED_DIGEST = re.compile(r"\Asha256:[0-9a-f]{64}\Z")

# The Pod Security Standards' lists (baseline for sysctls, SELinux and AppArmor; restricted
# for volumes, seccomp and capabilities).
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
})
SELINUX_TYPES = frozenset({"container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
PROFILE_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})


@dataclass(frozen=True)
class Context:
    """What a check may know besides its object: settings, and the rest of the folder."""
    allowed_registries: tuple[str, ...] = ()
    neighbours: tuple[dict, ...] = ()


NO_CONTEXT = Context()


class Check(Protocol):
    def __call__(self, document: dict, context: Context = NO_CONTEXT, /) -> list[str]: ...


@dataclass(frozen=True)
class Rule:
    """One safeguard: a stable id, the control it mirrors, and problems for one object."""
    id: str
    title: str
    check: Check


# --- where things are in an object ---------------------------------------------------------


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _sequence(value) -> list:
    return value if isinstance(value, list) else []


def pod_template(document: dict) -> dict | None:
    """The part of a workload that carries the pod's metadata and spec (a Pod is its own)."""
    kind = document.get("kind")
    if kind == "Pod":
        return document
    spec = _mapping(document.get("spec"))
    if kind == "CronJob":
        spec = _mapping(_mapping(spec.get("jobTemplate")).get("spec"))
    elif kind not in POD_TEMPLATE_KINDS:
        return None
    template = spec.get("template")
    return template if isinstance(template, dict) else None


def workload_pod_spec(document: dict) -> dict | None:
    """The pod spec of a Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob."""
    template = pod_template(document)
    if template is None:
        return None
    spec = template.get("spec")
    return spec if isinstance(spec, dict) else None


def _containers(pod: dict, fields: Sequence[str] = tuple(CONTAINER_FIELDS)
                ) -> Iterator[tuple[str, dict]]:
    """(how to name it in a message, container) for each container in the given lists."""
    for field in fields:
        for container in _sequence(pod.get(field)):
            if isinstance(container, dict):
                yield f"{CONTAINER_FIELDS[field]} '{container.get('name', '?')}'", container


def _security(holder: dict) -> dict:
    return _mapping(holder.get("securityContext"))


def _is_windows(pod: dict) -> bool:
    return _mapping(pod.get("os")).get("name") == "windows"


def _namespace(document: dict) -> str | None:
    return _mapping(document.get("metadata")).get("namespace")


def _name(document: dict) -> str:
    return str(_mapping(document.get("metadata")).get("name", "?"))


def _label_sets(document: dict) -> Iterator[tuple[str, dict]]:
    yield "metadata.labels", _mapping(_mapping(document.get("metadata")).get("labels"))
    if document.get("kind") == "CronJob":
        job_template = _mapping(_mapping(document.get("spec")).get("jobTemplate"))
        yield "job template labels", _mapping(_mapping(job_template.get("metadata")).get("labels"))
    template = pod_template(document)
    if template is not None and template is not document:
        yield "pod template labels", _mapping(_mapping(template.get("metadata")).get("labels"))


def _autoscalers_of(document: dict, context: Context) -> list[dict]:
    return [
        other for other in context.neighbours
        if other.get("kind") == "HorizontalPodAutoscaler"
        and _namespace(other) == _namespace(document)
        and _mapping(_mapping(other.get("spec")).get("scaleTargetRef")).get("kind")
        == document.get("kind")
        and _mapping(_mapping(other.get("spec")).get("scaleTargetRef")).get("name")
        == _name(document)
    ]


def _replicas(document: dict):
    return _mapping(document.get("spec")).get("replicas")


# --- AKS Deployment Safeguards -------------------------------------------------------------


def check_resources(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    problems = []
    # Ephemeral containers cannot declare resources, so they are not asked to.
    for where, container in _containers(pod, ("containers", "initContainers")):
        resources = _mapping(container.get("resources"))
        missing = [
            f"{section}.{resource}"
            for section in ("requests", "limits")
            for resource in ("cpu", "memory")
            if _mapping(resources.get(section)).get(resource) in (None, "")
        ]
        if missing:
            problems.append(f"{where} sets no {', '.join(missing)}")
    return problems


def check_probes(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    problems = []
    for where, container in _containers(pod, ("containers",)):
        missing = [probe for probe in ("livenessProbe", "readinessProbe")
                   if not container.get(probe)]
        if missing:
            problems.append(f"{where} has no {' and no '.join(missing)}")
    return problems


def _why_more_than_one_replica(document: dict, context: Context) -> str | None:
    for autoscaler in _autoscalers_of(document, context):
        most = _mapping(autoscaler.get("spec")).get("maxReplicas")
        if isinstance(most, int) and most > 1:
            return f"HorizontalPodAutoscaler/{_name(autoscaler)} scales it up to {most} replicas"
    replicas = _replicas(document)
    if replicas is None:
        # The count is owned by something else (an autoscaler, `kubectl scale`), so it can
        # be above one on the cluster even if nothing here says so.
        return "spec.replicas is not set, so the count is decided on the cluster"
    if isinstance(replicas, int) and replicas > 1:
        return f"it runs {replicas} replicas"
    return None


def check_anti_affinity(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    if document.get("kind") not in REPLICATED_KINDS:
        return []
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    reason = _why_more_than_one_replica(document, context)
    if reason is None:
        return []
    if _mapping(pod.get("affinity")).get("podAntiAffinity") or pod.get(
            "topologySpreadConstraints"):
        return []
    return [f"{reason}, but the pod template sets neither affinity.podAntiAffinity nor "
            "topologySpreadConstraints, so one node can hold every replica"]


def _is_aks_label(key: str) -> bool:
    prefix, slash, _ = str(key).partition("/")
    return bool(slash) and (prefix == AKS_LABEL_DOMAIN
                            or prefix.endswith("." + AKS_LABEL_DOMAIN))


def check_aks_labels(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    return [
        f"{where} has '{key}', a label reserved for AKS"
        for where, labels in _label_sets(document)
        for key in labels
        if _is_aks_label(key)
    ]


def _images(document: dict) -> Iterator[tuple[str, str]]:
    pod = workload_pod_spec(document)
    if pod is None:
        return
    for where, container in _containers(pod):
        yield where, str(container.get("image") or "")


def check_allowed_images(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    if not context.allowed_registries:
        return []
    # The slash matters: `myregistry.azurecr.io.example.net/x` is not from myregistry.
    prefixes = tuple(registry.rstrip("/") + "/" for registry in context.allowed_registries)
    allowed = ", ".join(context.allowed_registries)
    return [
        f"{where} uses {image or 'no image'}, which is from none of the allowed registries "
        f"({allowed})"
        for where, image in _images(document)
        if not image.startswith(prefixes)
    ]


def _image_tag_problem(image: str) -> str | None:
    if not image:
        return "has no image"
    name, at, digest = image.partition("@")
    if at:
        if PINNED_DIGEST.match(digest):
            return None
        return f"has {image}, whose digest is not sha256:<64 lowercase hex>"
    # A colon before the last slash belongs to a registry's port, not to a tag.
    last_part = name.rpartition("/")[2]
    _, colon, tag = last_part.partition(":")
    if not colon or not tag:
        return f"has {image}, with no tag (pulled as :latest) and no digest"
    if tag == "latest":
        return f"has {image}, tagged latest"
    return None


def check_image_tag(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    problems = []
    for where, image in _images(document):
        problem = _image_tag_problem(image)
        if problem:
            problems.append(f"{where} {problem}")
    return problems


def check_reserved_taints(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    problems = []
    for toleration in _sequence(pod.get("tolerations")):
        toleration = _mapping(toleration)
        key = toleration.get("key")
        if key == SYSTEM_POOL_TAINT:
            problems.append(f"tolerates {SYSTEM_POOL_TAINT}, the taint that keeps application "
                            "pods off the AKS system node pool")
        elif not key and toleration.get("operator") == "Exists":
            problems.append(f"tolerates every taint (operator Exists with no key), "
                            f"{SYSTEM_POOL_TAINT} included")
    return problems


def check_service_selectors(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    if document.get("kind") != "Service":
        return []
    spec = _mapping(document.get("spec"))
    if spec.get("type") == "ExternalName":
        return []
    selector = _mapping(spec.get("selector"))
    if not selector:
        return ["has no selector"]
    shown = ", ".join(f"{key}={value}" for key, value in sorted(selector.items()))
    return [
        f"its selector ({shown}) is also Service/{_name(other)}'s"
        for other in context.neighbours
        if other.get("kind") == "Service"
        and _namespace(other) == _namespace(document)
        and _mapping(_mapping(other.get("spec")).get("selector")) == selector
    ]


def _amount(value) -> tuple[int, bool] | None:
    """An int-or-percent field as (number, is_percent); None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value, False
    text = str(value).strip()
    percent = text.endswith("%")
    digits = text[:-1] if percent else text
    return (int(digits), percent) if digits.isdigit() else None


def _selects(budget: dict, workload: dict) -> bool:
    selector = _mapping(_mapping(budget.get("spec")).get("selector"))
    wanted = _mapping(selector.get("matchLabels"))
    # Expressions are not evaluated here: a budget using them is matched to nothing.
    if not wanted or selector.get("matchExpressions"):
        return False
    template = pod_template(workload) or {}
    labels = _mapping(_mapping(template.get("metadata")).get("labels"))
    return all(labels.get(key) == value for key, value in wanted.items())


def _fewest_replicas(workload: dict, context: Context) -> int | None:
    autoscalers = _autoscalers_of(workload, context)
    if autoscalers:
        floors = [_mapping(a.get("spec")).get("minReplicas", 1) for a in autoscalers]
        return min((f for f in floors if isinstance(f, int)), default=None)
    replicas = _replicas(workload)
    if replicas is None:
        return 1
    return replicas if isinstance(replicas, int) else None


def check_disruption_budget(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    if document.get("kind") != "PodDisruptionBudget":
        return []
    spec = _mapping(document.get("spec"))
    problems = []
    max_unavailable = _amount(spec.get("maxUnavailable"))
    if max_unavailable is not None and max_unavailable[0] == 0:
        problems.append(f"maxUnavailable is {spec['maxUnavailable']}, so no pod may ever be "
                        "evicted and node drains and upgrades stall")
    min_available = _amount(spec.get("minAvailable"))
    if min_available is None:
        return problems
    number, percent = min_available
    if percent and number >= 100:
        problems.append(f"minAvailable is {spec['minAvailable']}, so no pod may ever be evicted")
    elif not percent:
        for workload in context.neighbours:
            if (workload.get("kind") not in REPLICATED_KINDS
                    or _namespace(workload) != _namespace(document)
                    or not _selects(document, workload)):
                continue
            fewest = _fewest_replicas(workload, context)
            if fewest is not None and number >= fewest:
                problems.append(
                    f"minAvailable {number} is not below the {fewest} replica(s) "
                    f"{workload['kind']}/{_name(workload)} can run, so no pod may be evicted"
                )
    return problems


# --- Pod Security Standards: baseline ------------------------------------------------------


def check_privileged(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"{where} is privileged" for where, container in _containers(pod)
            if _security(container).get("privileged") is True]


def check_host_namespaces(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"spec.{field} is true" for field in ("hostNetwork", "hostPID", "hostIPC")
            if pod.get(field) is True]


def check_host_ports(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [
        f"{where} binds host port {port['hostPort']}"
        for where, container in _containers(pod)
        for port in _sequence(container.get("ports"))
        if isinstance(port, dict) and port.get("hostPort") not in (None, 0)
    ]


def check_host_path(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"volume '{volume.get('name', '?')}' is a hostPath volume"
            for volume in map(_mapping, _sequence(pod.get("volumes")))
            if "hostPath" in volume]


def check_host_process(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    holders = [("the pod", pod), *_containers(pod)]
    return [f"{where} is a Windows HostProcess"
            for where, holder in holders
            if _mapping(_security(holder).get("windowsOptions")).get("hostProcess") is True]


def check_sysctls(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"sysctl {name} is not in the safe set"
            for name in (_mapping(s).get("name") for s in _sequence(_security(pod).get("sysctls")))
            if name not in SAFE_SYSCTLS]


def check_proc_mount(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"{where} sets procMount {_security(container)['procMount']}"
            for where, container in _containers(pod)
            if _security(container).get("procMount") not in (None, "Default")]


def check_apparmor(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    template = pod_template(document)
    pod = workload_pod_spec(document)
    if template is None or pod is None:
        return []
    problems = []
    for where, holder in [("the pod", pod), *_containers(pod)]:
        profile = _mapping(_security(holder).get("appArmorProfile")).get("type")
        if profile is not None and profile not in PROFILE_TYPES:
            problems.append(f"{where} has AppArmor profile {profile}")
    annotations = _mapping(_mapping(template.get("metadata")).get("annotations"))
    for key, value in annotations.items():
        if str(key).startswith(APPARMOR_ANNOTATION_PREFIX) and not (
                value == "runtime/default" or str(value).startswith("localhost/")):
            problems.append(f"annotation {key} is {value}")
    return problems


def check_selinux(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    problems = []
    for where, holder in [("the pod", pod), *_containers(pod)]:
        options = _mapping(_security(holder).get("seLinuxOptions"))
        if options.get("type") not in (None, "", *SELINUX_TYPES):
            problems.append(f"{where} has SELinux type {options['type']}")
        for field in ("user", "role"):
            if options.get(field):
                problems.append(f"{where} sets SELinux {field} {options[field]}")
    return problems


# --- Pod Security Standards: restricted ----------------------------------------------------


def check_volume_types(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    problems = []
    for volume in map(_mapping, _sequence(pod.get("volumes"))):
        # hostPath is reported by PSS-HOST-PATH; saying it twice adds nothing.
        kinds = set(volume) - {"name", "hostPath"} - RESTRICTED_VOLUME_TYPES
        if kinds:
            problems.append(f"volume '{volume.get('name', '?')}' is of type "
                            f"{', '.join(sorted(kinds))}")
    return problems


def check_privilege_escalation(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None or _is_windows(pod):
        return []
    return [f"{where} does not set allowPrivilegeEscalation: false"
            for where, container in _containers(pod)
            if _security(container).get("allowPrivilegeEscalation") is not False]


def check_run_as_non_root(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    pod_value = _security(pod).get("runAsNonRoot")
    problems = []
    for where, container in _containers(pod):
        value = _security(container).get("runAsNonRoot")
        if (pod_value if value is None else value) is not True:
            problems.append(f"{where} may run as root (runAsNonRoot is not true for it)")
    return problems


def check_run_as_user(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None:
        return []
    return [f"{where} sets runAsUser 0 (root)"
            for where, holder in [("the pod", pod), *_containers(pod)]
            if _security(holder).get("runAsUser") == 0]


def check_seccomp(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None or _is_windows(pod):
        return []
    pod_type = _mapping(_security(pod).get("seccompProfile")).get("type")
    problems = []
    if pod_type is not None and pod_type not in PROFILE_TYPES:
        problems.append(f"the pod has seccomp profile {pod_type}")
    for where, container in _containers(pod):
        own = _mapping(_security(container).get("seccompProfile")).get("type")
        if own is not None and own not in PROFILE_TYPES:
            problems.append(f"{where} has seccomp profile {own}")
        elif own is None and pod_type is None:
            problems.append(f"{where} has no seccomp profile (RuntimeDefault or Localhost)")
    return problems


def check_capabilities(document: dict, context: Context = NO_CONTEXT) -> list[str]:
    pod = workload_pod_spec(document)
    if pod is None or _is_windows(pod):
        return []
    problems = []
    for where, container in _containers(pod):
        capabilities = _mapping(_security(container).get("capabilities"))
        if "ALL" not in _sequence(capabilities.get("drop")):
            problems.append(f"{where} does not drop ALL capabilities")
        added = sorted(set(map(str, _sequence(capabilities.get("add")))) - ADDABLE_CAPABILITIES)
        if added:
            problems.append(f"{where} adds {', '.join(added)}")
    return problems


_DS = "AKS Deployment Safeguards: "
_BASELINE = "Pod Security Standard (baseline, part of restricted): "
_RESTRICTED = "Pod Security Standard (restricted): "

RULES: tuple[Rule, ...] = (
    Rule("DS-RESOURCES", _DS + "Kubernetes cluster containers CPU and memory resource limits "
         "shouldn't exceed the specified limits (requests and limits set)", check_resources),
    Rule("DS-PROBES", _DS + "Ensure cluster containers have readiness or liveness probes "
         "configured (both, the initiative's default)", check_probes),
    Rule("DS-ANTI-AFFINITY", _DS + "Must Have Anti Affinity Rules or "
         "topologySpreadConstraintsSet", check_anti_affinity),
    Rule("DS-AKS-LABELS", _DS + "No AKS Specific Labels", check_aks_labels),
    Rule("DS-ALLOWED-IMAGES", _DS + "Kubernetes cluster containers should only use allowed "
         "images", check_allowed_images),
    Rule("DS-IMAGE-TAG", _DS + "Kubernetes cluster container images should not include "
         "latest image tag", check_image_tag),
    Rule("DS-RESERVED-TAINTS", _DS + "Reserved System Pool Taints", check_reserved_taints),
    Rule("DS-UNIQUE-SELECTORS", _DS + "Kubernetes cluster services should use unique "
         "selectors", check_service_selectors),
    Rule("DS-PDB", _DS + "Kubernetes cluster should implement accurate Pod Disruption Budgets",
         check_disruption_budget),
    Rule("PSS-PRIVILEGED", _BASELINE + "Privileged Containers", check_privileged),
    Rule("PSS-HOST-NAMESPACES", _BASELINE + "Host Namespaces", check_host_namespaces),
    Rule("PSS-HOST-PORTS", _BASELINE + "Host Ports", check_host_ports),
    Rule("PSS-HOST-PATH", _BASELINE + "HostPath Volumes", check_host_path),
    Rule("PSS-HOST-PROCESS", _BASELINE + "HostProcess", check_host_process),
    Rule("PSS-SYSCTLS", _BASELINE + "Sysctls", check_sysctls),
    Rule("PSS-PROC-MOUNT", _BASELINE + "/proc Mount Type", check_proc_mount),
    Rule("PSS-APPARMOR", _BASELINE + "AppArmor", check_apparmor),
    Rule("PSS-SELINUX", _BASELINE + "SELinux", check_selinux),
    Rule("PSS-VOLUME-TYPES", _RESTRICTED + "Volume Types", check_volume_types),
    Rule("PSS-PRIVILEGE-ESCALATION", _RESTRICTED + "Privilege Escalation",
         check_privilege_escalation),
    Rule("PSS-RUN-AS-NON-ROOT", _RESTRICTED + "Running as Non-root", check_run_as_non_root),
    Rule("PSS-RUN-AS-USER", _RESTRICTED + "Running as Non-root user", check_run_as_user),
    Rule("PSS-SECCOMP", _RESTRICTED + "Seccomp", check_seccomp),
    Rule("PSS-CAPABILITIES", _RESTRICTED + "Capabilities", check_capabilities),
)


# --- running the rules ---------------------------------------------------------------------


def _problems(document: dict, context: Context) -> list[str]:
    where = f"{document.get('kind', '?')}/{_name(document)}"
    return [f"{where}: {rule.id}: {problem}"
            for rule in RULES for problem in rule.check(document, context)]


def object_problems(document: dict, *, allowed_registries: Sequence[str] = ()) -> list[str]:
    """'Kind/name: RULE-ID: what is wrong' for one object, on its own."""
    return _problems(document, Context(allowed_registries=tuple(allowed_registries)))


def _load_folder(folder: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    objects, problems = [], []
    for path in sorted(folder.glob("*.yaml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            reason = getattr(error, "problem", None) or str(error).splitlines()[0]
            problems.append(f"{path.name}: not valid YAML ({reason})")
            continue
        for document in documents:
            if document is None:
                continue
            if isinstance(document, dict):
                objects.append((path.name, document))
            else:
                problems.append(f"{path.name}: a document that is not a Kubernetes object")
    return objects, problems


def _folder_report(folder: Path, allowed_registries: Sequence[str]) -> tuple[list[str], int]:
    objects, problems = _load_folder(Path(folder))
    for file_name, document in objects:
        context = Context(
            allowed_registries=tuple(allowed_registries),
            neighbours=tuple(other for _, other in objects if other is not document),
        )
        problems.extend(f"{file_name}: {problem}" for problem in _problems(document, context))
    return problems, len(objects)


def folder_problems(folder: Path, *, allowed_registries: Sequence[str] = ()) -> list[str]:
    """'file: Kind/name: RULE-ID: what is wrong' for every object in a rendered folder."""
    return _folder_report(folder, allowed_registries)[0]


def check_folder(folder: Path | str, *, allowed_registries: Sequence[str] = ()) -> str:
    """Raise PipelineError listing every problem; otherwise a line saying what passed."""
    problems, count = _folder_report(Path(folder), allowed_registries)
    if problems:
        raise PipelineError(
            f"{len(problems)} problem(s) with AKS deployment safeguards or the restricted Pod "
            "Security Standard: " + "; ".join(problems) + ".",
            "Fix the template in templates/k8s or the value in invoke.yaml that produced it.",
        )
    if count == 0:
        raise PipelineError(f"There are no rendered objects in {folder} to check.",
                            "Render first (`invoke render`), and check the path.")
    return (f"AKS deployment safeguards and the restricted Pod Security Standard: "
            f"{len(RULES)} rules passed on {count} objects")
