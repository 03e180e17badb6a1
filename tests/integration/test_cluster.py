"""The rendered manifests and the release sequence against a real API server.

The server is the `cluster` environment's control plane (`invoke local.cluster.up`: etcd,
kube-apiserver, kube-controller-manager and kube-scheduler built from tools/cluster/, nodes
played by kwok), brought up by the `local_control_plane` session fixture. The tests create
throw-away namespaces, one of them enforcing the "restricted" Pod Security Standard, send
every environment's rendering to the server as a server-side dry run (full admission,
nothing persisted), run `apply` for real there (second release, undo of a release that never
gets ready, pruning, config collection, a failed first deploy) and delete the namespaces
afterwards. kwok sets a pod Ready unless its image contains the never-ready marker
(tools/cluster/kwok-stages.yaml).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import invoke
import pytest

from modelship import kube, manifests
from modelship.errors import PipelineError
from modelship.local_cluster import NEVER_READY_MARKER
from modelship.manifests import Release
from modelship.settings import PROJECT_ROOT, load_settings
from modelship.settings_schema import DeploymentSection
from modelship.stage_files import cluster_kubeconfig, cluster_kubectl

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "ab" * 32
SECOND_DIGEST = "sha256:" + "cd" * 32
REGISTRY = "127.0.0.1:15000"
GOOD_IMAGE = f"{REGISTRY}/digits-api@{DIGEST}"
SECOND_IMAGE = f"{REGISTRY}/digits-api@{SECOND_DIGEST}"
NEVER_READY_IMAGE = f"{REGISTRY}/digits-api-{NEVER_READY_MARKER}@{DIGEST}"


def quiet_context() -> invoke.Context:
    """An Invoke context that never reads this process's stdin (pytest owns it)."""
    return invoke.Context(invoke.Config(overrides={"run": {"in_stream": False}}))


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
                           *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster_context(local_control_plane) -> str:
    return local_control_plane.kubernetes.context


@pytest.fixture(scope="module")
def restricted_namespace(cluster_context):
    name = f"modelship-test-{uuid.uuid4().hex[:8]}"
    created = kubectl(f"--context={cluster_context}", "create", "namespace", name)
    assert created.returncode == 0, created.stderr
    labelled = kubectl(f"--context={cluster_context}", "label", "namespace", name,
                       "pod-security.kubernetes.io/enforce=restricted",
                       "pod-security.kubernetes.io/warn=restricted")
    assert labelled.returncode == 0, labelled.stderr
    yield name
    kubectl(f"--context={cluster_context}", "delete", "namespace", name, "--wait=false")


def settings_in(env: str, context: str, namespace: str, folder: Path, **deployment):
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    settings = load_settings(config, env)
    given = {**settings.deployment.model_dump(exclude_unset=True), **deployment}
    settings = settings.model_copy(update={
        "deployment": DeploymentSection.model_validate(given),
        "kubernetes": settings.kubernetes.model_copy(update={
            "context": context, "namespace": namespace, "rollout_timeout": "90s",
            "local_cluster": True})})
    # render_dir follows stage_files.BUILD_ROOT; the tests render into their own folder instead.
    return settings, folder


def rendering_in(env: str, context: str, namespace: str, folder: Path,
                 image: str | None = None, **deployment) -> Path:
    settings, folder = settings_in(env, context, namespace, folder, **deployment)
    image = image or f"{settings.registry.host}/digits-api@{DIGEST}"
    manifests.render(settings, Release.for_review(image, revision="test", dirty=False),
                     output_dir=folder)
    return folder


def applying(env: str, context: str, namespace: str, folder: Path, monkeypatch,
             image: str | None = None, **deployment):
    """Settings whose render_dir is `folder`, rendered; for kube.apply against the cluster."""
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", folder.parent / "build")
    settings, _ = settings_in(env, context, namespace, folder, **deployment)
    image = image or f"{settings.registry.host}/digits-api@{DIGEST}"
    manifests.render(settings, Release.for_review(image, revision="test", dirty=False))
    return settings


def names(context: str, namespace: str, kinds: str) -> set[str]:
    listed = kubectl(f"--context={context}", f"--namespace={namespace}", "get", kinds,
                     "--output=name")
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


@pytest.fixture
def scratch_namespace(cluster_context):
    name = f"modelship-apply-{uuid.uuid4().hex[:8]}"
    created = kubectl(f"--context={cluster_context}", "create", "namespace", name)
    assert created.returncode == 0, created.stderr
    yield name
    kubectl(f"--context={cluster_context}", "delete", "namespace", name, "--wait=false")


def deployment(context: str, namespace: str) -> dict:
    got = kubectl(f"--context={context}", f"--namespace={namespace}", "get",
                  "deployment/digits-api", "--output=json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def replicasets(context: str, namespace: str) -> list[dict]:
    got = kubectl(f"--context={context}", f"--namespace={namespace}", "get", "replicasets",
                  "--output=json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)["items"]


def image_of(item: dict) -> str:
    return item["spec"]["template"]["spec"]["containers"][0]["image"]


def test_apply_prunes_what_the_settings_switched_off_and_nothing_else(
        cluster_context, scratch_namespace, tmp_path, monkeypatch, capfd):
    c = quiet_context()
    # Another tool's object in the same namespace, applied with kubectl apply (so prune
    # would consider it) under a similar name and the same instance label: never pruned.
    bystander = subprocess.run(
        [str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
         f"--context={cluster_context}", f"--namespace={scratch_namespace}", "apply",
         "--filename=-"], capture_output=True, text=True, timeout=60, input=json.dumps({
             "apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "digits-api-other", "labels": {
                 "app.kubernetes.io/instance": "digits-api-dev",
                 "app.kubernetes.io/name": "digits-api",
                 "app.kubernetes.io/managed-by": "helm"}},
             "spec": {"ports": [{"port": 80}],
                      "selector": {"app.kubernetes.io/name": "other"}}}))
    assert bystander.returncode == 0, bystander.stderr
    ingress_on = {"hosts": ["digits.example.com"], "class_name": "", "tls_secret": "",
                  "controller_namespace": "app-routing-system"}
    with_ingress = applying("dev", cluster_context, scratch_namespace, tmp_path / "a",
                            monkeypatch, replicas=1, ingress=ingress_on,
                            service={"port": 80, "dns_label": ""})
    kube.apply(c, with_ingress, smoke=None, echo=print)
    assert "ingress.networking.k8s.io/digits-api" in names(
        cluster_context, scratch_namespace, "ingress")
    first_config = names(cluster_context, scratch_namespace, "configmaps")
    without = applying("dev", cluster_context, scratch_namespace, tmp_path / "b", monkeypatch,
                       replicas=1, max_batch=10)
    # `diff` shows the prune before `apply` does it.
    capfd.readouterr()
    assert kube.diff(c, without) is True
    shown = capfd.readouterr().out
    # kubectl diff compares the live Ingress with nothing: every line of it removed.
    assert any(line.startswith("diff ") and ".Ingress." in line
               for line in shown.splitlines()), shown
    assert "\n-kind: Ingress\n" in shown, shown
    kube.apply(c, without, smoke=None, echo=print)
    assert names(cluster_context, scratch_namespace, "ingress") == set()
    # The first release's ConfigMap stays while its ReplicaSet is kept for `rollout undo`.
    assert first_config <= names(cluster_context, scratch_namespace, "configmaps")
    assert "service/digits-api-other" in names(cluster_context, scratch_namespace, "services")


def test_a_failed_first_deploy_deletes_exactly_what_it_created(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    # Another app's objects in the namespace, named alike: they must survive the cleanup.
    for kind, name in (("configmap", "digits-api-notes"), ("serviceaccount", "digits-api-ci")):
        made = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                       "create", kind, name)
        assert made.returncode == 0, made.stderr
    before = names(cluster_context, scratch_namespace,
                   "deployments,services,configmaps,networkpolicies,serviceaccounts")
    # kwok never sets these pods Ready: the rollout exceeds its progress deadline.
    settings = applying("cluster", cluster_context, scratch_namespace, tmp_path / "k8s",
                        monkeypatch, image=NEVER_READY_IMAGE, progress_deadline_seconds=15)
    created = kube.rendered_objects(settings)
    with pytest.raises(PipelineError, match="first deploy.*deleted again") as failure:
        kube.apply(quiet_context(), settings, smoke=None, echo=print)
    assert all(name in failure.value.problem for name in created), failure.value.problem
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = names(cluster_context, scratch_namespace,
                     "deployments,services,configmaps,networkpolicies,serviceaccounts")
        if left == before:
            break
        time.sleep(1)
    assert left == before, left


def first_applied_then_second(cluster_context, scratch_namespace, tmp_path, monkeypatch):
    """A context, with a first release applied, and the settings of a second one."""
    c = quiet_context()
    first = applying("cluster", cluster_context, scratch_namespace, tmp_path / "a",
                     monkeypatch, image=GOOD_IMAGE)
    kube.apply(c, first, smoke=None, echo=print)
    return c, applying("cluster", cluster_context, scratch_namespace, tmp_path / "b",
                       monkeypatch, image=SECOND_IMAGE)


def test_a_second_release_rolls_out_and_status_reads_it(cluster_context, scratch_namespace,
                                                        tmp_path, monkeypatch):
    c, second = first_applied_then_second(cluster_context, scratch_namespace, tmp_path,
                                          monkeypatch)
    kube.apply(c, second, smoke=None, echo=print)
    live = deployment(cluster_context, scratch_namespace)
    assert image_of(live) == SECOND_IMAGE
    shown = kube.status(c, second)
    assert shown["digest"] == SECOND_DIGEST
    assert shown["ready_replicas"] == shown["replicas"] == second.deployment.replicas == 2
    assert shown["updated_replicas"] == 2
    # The first release's ReplicaSet is kept (scaled to 0) for `rollout undo`.
    images = {image_of(item): item["spec"]["replicas"]
              for item in replicasets(cluster_context, scratch_namespace)}
    assert images == {GOOD_IMAGE: 0, SECOND_IMAGE: 2}


def test_a_release_that_never_gets_ready_is_undone(cluster_context, scratch_namespace,
                                                   tmp_path, monkeypatch):
    c = quiet_context()
    good = applying("cluster", cluster_context, scratch_namespace, tmp_path / "a",
                    monkeypatch, image=GOOD_IMAGE, progress_deadline_seconds=15)
    kube.apply(c, good, smoke=None, echo=print)
    broken = applying("cluster", cluster_context, scratch_namespace, tmp_path / "b",
                      monkeypatch, image=NEVER_READY_IMAGE, progress_deadline_seconds=15)
    with pytest.raises(PipelineError) as failure:
        kube.apply(c, broken, smoke=None, echo=print)
    line = str(failure.value)
    assert "\n" not in line and "rolled back to the previous revision" in line, line
    assert "exceeded its progress deadline (15 s)" in line, line
    live = deployment(cluster_context, scratch_namespace)
    assert image_of(live) == GOOD_IMAGE
    assert live["status"].get("readyReplicas") == 2
    # The previous ReplicaSet serves again; the broken one is scaled to nothing.
    by_image = {image_of(item): item for item in replicasets(cluster_context, scratch_namespace)}
    assert by_image[GOOD_IMAGE]["status"].get("readyReplicas") == 2
    assert by_image[NEVER_READY_IMAGE]["spec"]["replicas"] == 0


def test_a_config_only_change_makes_a_new_configmap_and_collects_the_unused_one(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    c = quiet_context()
    first = applying("cluster", cluster_context, scratch_namespace, tmp_path / "a",
                     monkeypatch, image=GOOD_IMAGE, max_batch=1000)
    kube.apply(c, first, smoke=None, echo=print)
    first_configs = names(cluster_context, scratch_namespace, "configmaps") - {
        "configmap/kube-root-ca.crt"}
    assert len(first_configs) == 1, first_configs
    changed = applying("cluster", cluster_context, scratch_namespace, tmp_path / "b",
                       monkeypatch, image=GOOD_IMAGE, max_batch=10)
    kube.apply(c, changed, smoke=None, echo=print)
    both = names(cluster_context, scratch_namespace, "configmaps") - {
        "configmap/kube-root-ca.crt"}
    new_config = both - first_configs
    # Same image, new config: a new hashed ConfigMap, and the old one kept because the
    # first ReplicaSet (there for `rollout undo`) still refers to it.
    assert len(new_config) == 1 and first_configs <= both, both
    assert len(replicasets(cluster_context, scratch_namespace)) == 2
    # Once no ReplicaSet refers to it (its ReplicaSet gone, as the history limit does), the
    # next apply deletes it, and only it.
    old_name = next(iter(first_configs)).split("/", 1)[1]
    for item in replicasets(cluster_context, scratch_namespace):
        if old_name in json.dumps(item["spec"]["template"]):
            gone = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                           "delete", "replicaset", item["metadata"]["name"])
            assert gone.returncode == 0, gone.stderr
    kube.apply(c, changed, smoke=None, echo=print)
    assert names(cluster_context, scratch_namespace, "configmaps") - {
        "configmap/kube-root-ca.crt"} == new_config


def test_the_api_server_refuses_a_tampered_manifest_before_anything_changes(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    labelled = kubectl(f"--context={cluster_context}", "label", "namespace", scratch_namespace,
                       "pod-security.kubernetes.io/enforce=restricted")
    assert labelled.returncode == 0, labelled.stderr
    settings = applying("cluster", cluster_context, scratch_namespace, tmp_path / "k8s",
                        monkeypatch, image=GOOD_IMAGE)
    rendered = settings.render_dir / "deployment.yaml"
    # A privileged container, as a hand edit of the reviewed folder might make it.
    rendered.write_text(rendered.read_text().replace("allowPrivilegeEscalation: false",
                                                     "allowPrivilegeEscalation: true"))
    with pytest.raises(PipelineError) as failure:
        kube.apply(quiet_context(), settings, smoke=None, echo=print)
    line = str(failure.value)
    assert "\n" not in line and "refused the manifests" in line and "PodSecurity" in line, line
    left = names(cluster_context, scratch_namespace,
                 "deployments,services,configmaps,networkpolicies,serviceaccounts")
    assert not any("digits-api" in name for name in left), left


def as_deployer(cluster_context, namespace, monkeypatch) -> str:
    """docs/deploy-role.yaml bound in `namespace` to a user whose kubeconfig every kubectl
    call of `kube` then uses; returns the role's text."""
    from modelship import local_cluster

    role = (PROJECT_ROOT / "docs" / "deploy-role.yaml").read_text()
    for manifest in (role, yaml_binding(namespace)):
        made = subprocess.run([str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
                               f"--context={cluster_context}", f"--namespace={namespace}",
                               "apply", "--filename=-"],
                              input=manifest, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
    deployer = local_cluster.client_kubeconfig("deployer", "modelship-deployer",
                                               cluster_context)
    monkeypatch.setattr(kube, "cluster_kubeconfig", lambda: deployer)
    return role


def test_the_published_deploy_role_is_enough_and_a_missing_verb_ends_in_one_line(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    from modelship.release_targets import KubernetesTarget

    # From here on every kubectl call of the release is made as the deploy identity.
    role = as_deployer(cluster_context, scratch_namespace, monkeypatch)
    c = quiet_context()
    first = applying("cluster", cluster_context, scratch_namespace, tmp_path / "a",
                     monkeypatch, image=GOOD_IMAGE)
    kube.apply(c, first, smoke=None, echo=print)
    second = applying("cluster", cluster_context, scratch_namespace, tmp_path / "b",
                      monkeypatch, image=SECOND_IMAGE, max_batch=10)
    kube.apply(c, second, smoke=None, echo=print)
    # What `invoke rollback` reads before it undoes (the ReplicaSets), then the undo itself.
    target = KubernetesTarget(c, second)
    previous = target.previous_release()
    assert previous.reference.endswith(DIGEST), previous
    target.rollback(previous, dry=False, echo=print)
    assert kube.status(c, second)["digest"] == DIGEST
    # Without `patch` on Deployments the next release stops with the one line that says so.
    narrowed = role.replace("verbs: [get, list, watch, create, patch, delete]",
                            "verbs: [get, list, watch, create, delete]")
    assert narrowed != role
    made = subprocess.run([str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
                           f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                           "apply", "--filename=-"], input=narrowed, capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    with pytest.raises(PipelineError) as failure:
        kube.apply(c, second, smoke=None, echo=print)
    line = str(failure.value)
    assert "\n" not in line, line
    assert "modelship-deployer may not patch deployments.apps" in line, line


def test_the_published_deploy_role_is_enough_for_a_canary(cluster_context, scratch_namespace,
                                                          tmp_path, monkeypatch):
    """The canary's own calls (create, scale, the pod proxy, delete) as the deploy identity
    bound to exactly docs/deploy-role.yaml."""
    from modelship import kube_canary

    as_deployer(cluster_context, scratch_namespace, monkeypatch)
    c, second = first_applied_then_second(cluster_context, scratch_namespace, tmp_path,
                                          monkeypatch)
    runtime = kube_canary.KubeCanary(c, second, 2, print)
    runtime.start(25)
    runtime.set_share(50)
    pods = kube_canary.pod_names(c, second, kube_canary.canary_selector(second))
    assert len(pods) == 2, pods
    proxied = c.run(kube.kubectl(second, "--request-timeout=5s", "get", "--raw",
                                 f"/api/v1/namespaces/{scratch_namespace}/pods/{pods[0]}:"
                                 f"{second.deployment.container_port}/proxy/metrics"),
                    warn=True, hide=True)
    # kwok's pod serves nothing: the read fails, but on the connection, not on RBAC.
    assert "forbidden" not in (proxied.stderr or "").lower(), proxied.stderr
    runtime.roll_back()
    assert kube_canary.running(c, second) is None
    assert image_of(deployment(cluster_context, scratch_namespace)) == GOOD_IMAGE


def yaml_binding(namespace: str) -> str:
    return f"""apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: modelship-deployer
  namespace: {namespace}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: modelship-deployer}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: modelship-deployer}}
"""


def test_a_stopping_pod_leaves_the_endpoints_before_it_stops_serving(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    # On kwok's pods this shows the control plane's part (the EndpointSlice controller drops
    # a Terminating pod while it still exists, kwok keeping it 5 s); the app's own drain
    # needs real pods: MODELSHIP_TEST_IMAGE on a cluster with kubelets.
    settings = applying("dev", cluster_context, scratch_namespace, tmp_path / "k8s",
                        monkeypatch, image=os.environ.get("MODELSHIP_TEST_IMAGE", GOOD_IMAGE))
    kube.apply(quiet_context(), settings, smoke=None, echo=print)
    pods = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}", "get",
                   "pods", "--output=json")
    pod = json.loads(pods.stdout)["items"][0]["metadata"]["name"]
    kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}", "delete",
            "pod", pod, "--wait=false")
    # While the preStop drain runs the pod is Terminating but alive; it must already be
    # gone from the Service's ready endpoints.
    deadline = time.monotonic() + 8
    left_endpoints = False
    while time.monotonic() < deadline:
        slices = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                         "get", "endpointslices", "--output=json")
        ready = [endpoint for item in json.loads(slices.stdout)["items"]
                 for endpoint in item.get("endpoints") or []
                 if (endpoint.get("targetRef") or {}).get("name") == pod
                 and (endpoint.get("conditions") or {}).get("ready")]
        alive = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                        "get", "pod", pod, "--ignore-not-found", "--output=name")
        if not ready and alive.stdout.strip():
            left_endpoints = True
            break
        time.sleep(0.5)
    assert left_endpoints, "the pod was still a ready endpoint, or already gone"


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_the_api_server_accepts_the_rendering_under_restricted_pod_security(
        env, cluster_context, restricted_namespace, tmp_path):
    folder = rendering_in(env, cluster_context, restricted_namespace, tmp_path / env)
    result = kubectl(f"--context={cluster_context}", f"--namespace={restricted_namespace}",
                     "apply", "--dry-run=server", f"--filename={folder}")
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/digits-api created (server dry run)" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr
