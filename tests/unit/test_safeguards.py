"""AKS Deployment Safeguards and restricted Pod Security rules on rendered objects.

Every rule gets a compliant Deployment (with its Service and PodDisruptionBudget) broken in
exactly one way, and must be the only rule that notices.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import invoke
import pytest
import yaml

from modelship import safeguards
from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT, load_settings

GOLDEN_DIR = Path(__file__).parent / "golden"
REGISTRY = "registry.example.com"
IMAGE = f"{REGISTRY}/shop/web@sha256:" + "ab" * 32
RULE_ID = re.compile(r": ((?:DS|PSS)-[A-Z-]+): ")


def container(name: str, with_probes: bool = True) -> dict:
    spec = {
        "name": name,
        "image": IMAGE,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if with_probes:
        spec["ports"] = [{"name": "http", "containerPort": 8080}]
        spec["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
        spec["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    return spec


SELECTOR = {"app.kubernetes.io/name": "web", "app.kubernetes.io/instance": "web-prod"}


def compliant_deployment() -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": dict(SELECTOR)},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": dict(SELECTOR)},
            "template": {
                "metadata": {"labels": dict(SELECTOR)},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": SELECTOR}},
                        }],
                    }},
                    "initContainers": [container("warm-up", with_probes=False)],
                    "containers": [container("server")],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def compliant_objects() -> dict[str, dict]:
    """File name -> object: a Deployment, its Service and its disruption budget."""
    return {
        "deployment.yaml": compliant_deployment(),
        "service.yaml": {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": dict(SELECTOR),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
        "poddisruptionbudget.yaml": {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(SELECTOR)}},
        },
    }


def write_folder(folder: Path, objects: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, document in objects.items():
        (folder / name).write_text("# Rendered for a test\n# second header line\n"
                                   + yaml.safe_dump(document, sort_keys=True))
    return folder


def rule_ids(problems: list[str]) -> set[str]:
    found = set()
    for problem in problems:
        match = RULE_ID.search(problem)
        assert match, f"no rule id in {problem!r}"
        found.add(match.group(1))
    return found


def pod(objects):
    return objects["deployment.yaml"]["spec"]["template"]["spec"]


def server(objects):
    return pod(objects)["containers"][0]


def warm_up(objects):
    return pod(objects)["initContainers"][0]


def security(holder):
    return holder.setdefault("securityContext", {})


def duplicate_service(objects):
    twin = copy.deepcopy(objects["service.yaml"])
    twin["metadata"]["name"] = "web-canary"
    objects["service-canary.yaml"] = twin


def min_available_equal_to_replicas(objects):
    spec = objects["poddisruptionbudget.yaml"]["spec"]
    del spec["maxUnavailable"]
    spec["minAvailable"] = 3


# (rule id, what is broken, how): each breaks one thing in the compliant objects.
BREAKAGES = [
    ("DS-RESOURCES", "no memory limit",
     lambda o: server(o)["resources"]["limits"].pop("memory")),
    ("DS-RESOURCES", "init container without cpu request",
     lambda o: warm_up(o)["resources"]["requests"].pop("cpu")),
    ("DS-PROBES", "no readiness probe", lambda o: server(o).pop("readinessProbe")),
    ("DS-PROBES", "no liveness probe", lambda o: server(o).pop("livenessProbe")),
    ("DS-ANTI-AFFINITY", "three replicas, no anti-affinity", lambda o: pod(o).pop("affinity")),
    ("DS-AKS-LABELS", "AKS label on the pod template",
     lambda o: o["deployment.yaml"]["spec"]["template"]["metadata"]["labels"].update(
         {"kubernetes.azure.com/mode": "system"})),
    ("DS-AKS-LABELS", "AKS label on the Deployment",
     lambda o: o["deployment.yaml"]["metadata"]["labels"].update(
         {"kubernetes.azure.com/cluster": "aks-x"})),
    ("DS-ALLOWED-IMAGES", "image from a public registry",
     lambda o: server(o).update(image="public.example.net/library/nginx@sha256:" + "cd" * 32)),
    ("DS-ALLOWED-IMAGES", "registry name as a prefix of another host",
     lambda o: server(o).update(image=f"{REGISTRY}.evil.io/web@sha256:" + "cd" * 32)),
    ("DS-IMAGE-TAG", "tagged latest", lambda o: server(o).update(image=f"{REGISTRY}/web:latest")),
    ("DS-IMAGE-TAG", "untagged", lambda o: warm_up(o).update(image=f"{REGISTRY}/web")),
    ("DS-IMAGE-TAG", "short digest", lambda o: server(o).update(image=f"{REGISTRY}/web@sha256:ab")),
    ("DS-RESERVED-TAINTS", "tolerates CriticalAddonsOnly",
     lambda o: pod(o).update(tolerations=[{"key": "CriticalAddonsOnly", "operator": "Exists"}])),
    ("DS-RESERVED-TAINTS", "tolerates everything",
     lambda o: pod(o).update(tolerations=[{"operator": "Exists"}])),
    ("DS-UNIQUE-SELECTORS", "Service without selector",
     lambda o: o["service.yaml"]["spec"].pop("selector")),
    ("DS-UNIQUE-SELECTORS", "second Service with the same selector", duplicate_service),
    ("DS-PDB", "maxUnavailable 0",
     lambda o: o["poddisruptionbudget.yaml"]["spec"].update(maxUnavailable=0)),
    ("DS-PDB", "maxUnavailable 0%",
     lambda o: o["poddisruptionbudget.yaml"]["spec"].update(maxUnavailable="0%")),
    ("DS-PDB", "minAvailable equal to the replica count", min_available_equal_to_replicas),
    ("PSS-PRIVILEGED", "privileged container",
     lambda o: security(server(o)).update(privileged=True)),
    ("PSS-HOST-NAMESPACES", "hostNetwork", lambda o: pod(o).update(hostNetwork=True)),
    ("PSS-HOST-NAMESPACES", "hostPID", lambda o: pod(o).update(hostPID=True)),
    ("PSS-HOST-NAMESPACES", "hostIPC", lambda o: pod(o).update(hostIPC=True)),
    ("PSS-HOST-PORTS", "hostPort", lambda o: server(o)["ports"][0].update(hostPort=8080)),
    ("PSS-HOST-PATH", "hostPath volume",
     lambda o: pod(o)["volumes"].append({"name": "docker", "hostPath": {"path": "/var/run"}})),
    ("PSS-HOST-PROCESS", "Windows HostProcess",
     lambda o: security(pod(o)).update(windowsOptions={"hostProcess": True})),
    ("PSS-SYSCTLS", "unsafe sysctl",
     lambda o: security(pod(o)).update(sysctls=[{"name": "kernel.msgmax", "value": "65536"}])),
    ("PSS-PROC-MOUNT", "unmasked /proc",
     lambda o: security(server(o)).update(procMount="Unmasked")),
    ("PSS-APPARMOR", "unconfined AppArmor profile",
     lambda o: security(server(o)).update(appArmorProfile={"type": "Unconfined"})),
    ("PSS-APPARMOR", "unconfined AppArmor annotation",
     lambda o: o["deployment.yaml"]["spec"]["template"]["metadata"].update(annotations={
         "container.apparmor.security.beta.kubernetes.io/server": "unconfined"})),
    ("PSS-SELINUX", "SELinux type spc_t",
     lambda o: security(pod(o)).update(seLinuxOptions={"type": "spc_t"})),
    ("PSS-SELINUX", "SELinux user",
     lambda o: security(server(o)).update(seLinuxOptions={"user": "system_u"})),
    ("PSS-VOLUME-TYPES", "NFS volume",
     lambda o: pod(o)["volumes"].append({"name": "data", "nfs": {"server": "nas", "path": "/"}})),
    ("PSS-PRIVILEGE-ESCALATION", "init container may escalate",
     lambda o: security(warm_up(o)).update(allowPrivilegeEscalation=True)),
    ("PSS-PRIVILEGE-ESCALATION", "allowPrivilegeEscalation left unset",
     lambda o: security(server(o)).pop("allowPrivilegeEscalation")),
    ("PSS-RUN-AS-NON-ROOT", "container overrides runAsNonRoot",
     lambda o: security(server(o)).update(runAsNonRoot=False)),
    ("PSS-RUN-AS-NON-ROOT", "runAsNonRoot unset on the pod",
     lambda o: security(pod(o)).pop("runAsNonRoot")),
    ("PSS-RUN-AS-USER", "container runs as uid 0",
     lambda o: security(server(o)).update(runAsUser=0)),
    ("PSS-SECCOMP", "container unconfined",
     lambda o: security(server(o)).update(seccompProfile={"type": "Unconfined"})),
    ("PSS-SECCOMP", "no seccomp profile anywhere",
     lambda o: security(pod(o)).pop("seccompProfile")),
    ("PSS-CAPABILITIES", "adds SYS_ADMIN",
     lambda o: security(server(o))["capabilities"].update(add=["SYS_ADMIN"])),
    ("PSS-CAPABILITIES", "does not drop ALL",
     lambda o: security(warm_up(o))["capabilities"].update(drop=["NET_RAW"])),
]


def test_every_rule_has_a_breakage_test_and_a_unique_id():
    ids = [rule.id for rule in safeguards.RULES]
    assert len(ids) == len(set(ids))
    assert {rule_id for rule_id, _, _ in BREAKAGES} == set(ids)


def test_the_compliant_objects_pass_every_rule(tmp_path):
    for document in compliant_objects().values():
        assert safeguards.object_problems(document, allowed_registries=[REGISTRY]) == []
        # The interface other code calls: a rule's check on one object alone.
        assert [rule.id for rule in safeguards.RULES if rule.check(document)] == []
    folder = write_folder(tmp_path / "ok", compliant_objects())
    assert safeguards.folder_problems(folder, allowed_registries=[REGISTRY]) == []


@pytest.mark.parametrize("rule_id, _what, break_it", BREAKAGES,
                         ids=[f"{rule_id}: {what}" for rule_id, what, _ in BREAKAGES])
def test_breaking_one_thing_trips_only_its_rule(rule_id, _what, break_it, tmp_path):
    objects = compliant_objects()
    break_it(objects)
    problems = safeguards.folder_problems(write_folder(tmp_path, objects),
                                          allowed_registries=[REGISTRY])
    assert problems
    assert rule_ids(problems) == {rule_id}, problems


def test_object_problems_names_the_object_and_the_rule():
    deployment = compliant_deployment()
    del deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert safeguards.object_problems(deployment) == [
        "Deployment/web: DS-PROBES: container 'server' has no readinessProbe"
    ]


# --- folders -------------------------------------------------------------------------------


def test_folder_problems_reads_headers_and_several_documents_per_file(tmp_path):
    objects = compliant_objects()
    pod(objects)["hostNetwork"] = True
    service = objects.pop("service.yaml")
    (tmp_path / "all.yaml").write_text(
        "# Rendered by modelship for a test\n"
        + yaml.safe_dump(objects.pop("deployment.yaml")) + "---\n" + yaml.safe_dump(service)
    )
    write_folder(tmp_path, objects)
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert safeguards.folder_problems(tmp_path) == [
        "all.yaml: Deployment/web: PSS-HOST-NAMESPACES: spec.hostNetwork is true"
    ]


def test_services_sharing_a_selector_in_two_files_are_both_reported(tmp_path):
    objects = compliant_objects()
    duplicate_service(objects)
    problems = safeguards.folder_problems(write_folder(tmp_path, objects))
    assert problems == [
        "service-canary.yaml: Service/web-canary: DS-UNIQUE-SELECTORS: its selector "
        "(app.kubernetes.io/instance=web-prod, app.kubernetes.io/name=web) is also Service/web's",
        "service.yaml: Service/web: DS-UNIQUE-SELECTORS: its selector "
        "(app.kubernetes.io/instance=web-prod, app.kubernetes.io/name=web) is also "
        "Service/web-canary's",
    ]


def test_the_same_selector_in_another_namespace_is_no_conflict(tmp_path):
    objects = compliant_objects()
    duplicate_service(objects)
    objects["service-canary.yaml"]["metadata"]["namespace"] = "shop-canary"
    assert safeguards.folder_problems(write_folder(tmp_path, objects)) == []


@pytest.mark.parametrize("allowed, ok", [
    ((), True),
    ((REGISTRY,), True),
    ((f"{REGISTRY}/",), True),
    (("other.example.com", REGISTRY), True),
    (("other.example.com",), False),
    (("registry.example",), False),
])
def test_allowed_registries(allowed, ok, tmp_path):
    problems = safeguards.folder_problems(write_folder(tmp_path, compliant_objects()),
                                          allowed_registries=allowed)
    if ok:
        assert problems == []
    else:
        # The server and its init container both use the image.
        assert rule_ids(problems) == {"DS-ALLOWED-IMAGES"} and len(problems) == 2


def test_check_folder_raises_one_line_naming_every_problem(tmp_path):
    objects = compliant_objects()
    server(objects)["image"] = f"{REGISTRY}/web:latest"
    objects["poddisruptionbudget.yaml"]["spec"]["maxUnavailable"] = 0
    with pytest.raises(PipelineError) as raised:
        safeguards.check_folder(write_folder(tmp_path, objects), allowed_registries=[REGISTRY])
    message = str(raised.value)
    assert "\n" not in message
    assert raised.value.problem.startswith("2 problem(s)")
    assert "deployment.yaml: Deployment/web: DS-IMAGE-TAG: container 'server'" in message
    assert "poddisruptionbudget.yaml: PodDisruptionBudget/web: DS-PDB: maxUnavailable" in message
    assert "invoke.yaml" in raised.value.fix


def test_check_folder_says_what_passed(tmp_path):
    summary = safeguards.check_folder(write_folder(tmp_path, compliant_objects()))
    assert summary == (
        "AKS deployment safeguards and the restricted Pod Security Standard: "
        f"{len(safeguards.RULES)} rules passed on 3 objects"
    )


def test_check_folder_refuses_an_empty_folder(tmp_path):
    with pytest.raises(PipelineError, match="no rendered objects"):
        safeguards.check_folder(tmp_path)


def test_a_file_that_is_not_yaml_is_a_problem(tmp_path):
    (tmp_path / "broken.yaml").write_text("kind: [Deployment\n")
    [problem] = safeguards.folder_problems(tmp_path)
    assert problem.startswith("broken.yaml: not valid YAML")


# --- details of single rules ---------------------------------------------------------------


def autoscaler(most: int, least: int = 1) -> dict:
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"minReplicas": least, "maxReplicas": most,
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": "web"}}}


def single_replica_without_affinity() -> dict[str, dict]:
    objects = compliant_objects()
    objects["deployment.yaml"]["spec"]["replicas"] = 1
    del pod(objects)["affinity"]
    return objects


def test_one_fixed_replica_needs_no_anti_affinity(tmp_path):
    folder = write_folder(tmp_path, single_replica_without_affinity())
    assert safeguards.folder_problems(folder) == []


def test_an_autoscaler_above_one_replica_needs_anti_affinity(tmp_path):
    objects = single_replica_without_affinity()
    objects["horizontalpodautoscaler.yaml"] = autoscaler(most=4)
    [problem] = safeguards.folder_problems(write_folder(tmp_path, objects))
    assert "DS-ANTI-AFFINITY: HorizontalPodAutoscaler/web scales it up to 4" in problem


def test_replicas_left_unset_need_anti_affinity_and_topology_spread_will_do():
    deployment = compliant_deployment()
    del deployment["spec"]["replicas"]
    spec = deployment["spec"]["template"]["spec"]
    del spec["affinity"]
    assert rule_ids(safeguards.object_problems(deployment)) == {"DS-ANTI-AFFINITY"}
    spec["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                          "whenUnsatisfiable": "ScheduleAnyway",
                                          "labelSelector": {"matchLabels": SELECTOR}}]
    assert safeguards.object_problems(deployment) == []


def test_min_available_is_measured_against_the_autoscalers_floor(tmp_path):
    objects = compliant_objects()
    min_available_equal_to_replicas(objects)
    objects["horizontalpodautoscaler.yaml"] = autoscaler(most=10, least=5)
    assert safeguards.folder_problems(write_folder(tmp_path / "floor5", objects)) == []
    objects["horizontalpodautoscaler.yaml"] = autoscaler(most=10, least=3)
    problems = safeguards.folder_problems(write_folder(tmp_path / "floor3", objects))
    assert rule_ids(problems) == {"DS-PDB"}


def test_min_available_of_100_percent_blocks_every_eviction():
    budget = compliant_objects()["poddisruptionbudget.yaml"]
    budget["spec"] = {"minAvailable": "100%", "selector": budget["spec"]["selector"]}
    assert rule_ids(safeguards.object_problems(budget)) == {"DS-PDB"}


@pytest.mark.parametrize("image, pinned", [
    ("127.0.0.1:15000/web", False),
    ("127.0.0.1:15000/web:1.4.2", True),
    ("127.0.0.1:15000/web@sha256:" + "ab" * 32, True),
    ("web:latest@sha256:" + "ab" * 32, True),
    ("web:", False),
    ("web@sha256:" + "AB" * 32, False),
])
def test_image_tags_and_digests(image, pinned):
    deployment = compliant_deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = image
    problems = safeguards.object_problems(deployment)
    assert (problems == []) is pinned, problems


def test_windows_pods_are_exempt_from_the_linux_only_restricted_controls():
    deployment = compliant_deployment()
    spec = deployment["spec"]["template"]["spec"]
    spec["os"] = {"name": "windows"}
    del spec["securityContext"]["seccompProfile"]
    for container in spec["containers"] + spec["initContainers"]:
        container["securityContext"] = {}
    assert safeguards.object_problems(deployment) == []


def test_an_external_name_service_needs_no_selector():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
               "spec": {"type": "ExternalName", "externalName": "db.example.com"}}
    assert safeguards.object_problems(service) == []


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                                  "Job", "Pod", "CronJob"])
def test_workload_pod_spec_finds_the_pod_for_each_kind(kind):
    pod_spec = {"containers": [container("server")]}
    if kind == "Pod":
        document = {"kind": kind, "spec": pod_spec}
    elif kind == "CronJob":
        document = {"kind": kind, "spec": {"jobTemplate": {"spec": {"template": {
            "spec": pod_spec}}}}}
    else:
        document = {"kind": kind, "spec": {"template": {"spec": pod_spec}}}
    assert safeguards.workload_pod_spec(document) is pod_spec


def test_objects_without_pods_have_no_pod_spec():
    assert safeguards.workload_pod_spec({"kind": "Service", "spec": {}}) is None
    assert safeguards.workload_pod_spec({"kind": "Deployment", "spec": {}}) is None


# --- the golden renders --------------------------------------------------------------------

def project_config() -> invoke.Config:
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return config


@pytest.mark.parametrize("env", ["local", "dev", "staging", "prod"])
def test_golden_renders_meet_the_safeguards(env):
    registry = load_settings(project_config(), env).registry.host
    assert safeguards.folder_problems(GOLDEN_DIR / env, allowed_registries=[registry]) == []
