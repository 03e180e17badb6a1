"""The rendered manifests and the release sequence against a real API server.

Skipped, with the reason, when no kube context is set or its API server does not answer.
The tests create a throw-away namespace that enforces the "restricted" Pod Security
Standard, send every environment's rendering to the server as a server-side dry run (full
admission, nothing persisted), run `apply` for real there (pruning, config collection, a
failed first deploy) and delete the namespace afterwards. The drain test needs an image the
cluster can pull: set MODELSHIP_TEST_IMAGE to a pushed REPOSITORY@sha256:... of this app.
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
from modelship.manifests import Release
from modelship.settings import PROJECT_ROOT, load_settings
from modelship.settings_schema import DeploymentSection

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "ab" * 32


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster_context() -> str:
    try:
        current = kubectl("config", "current-context", timeout=10)
    except FileNotFoundError:
        pytest.skip("kubectl is not installed")
    if current.returncode != 0:
        pytest.skip("no current kube context (`invoke aks.credentials --env=dev` sets one)")
    context = current.stdout.strip()
    probe = kubectl(f"--context={context}", "--request-timeout=5s", "get", "--raw=/readyz",
                    timeout=15)
    if probe.returncode != 0:
        pytest.skip(f"kube context '{context}' does not answer: {probe.stderr.strip()[:200]}")
    return context


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
            "context": context, "namespace": namespace, "rollout_timeout": "90s"})})
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


def test_apply_prunes_what_the_settings_switched_off_and_nothing_else(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    c = invoke.Context()
    # Someone else's object in the same namespace, with a similar name: never pruned.
    bystander = kubectl(f"--context={cluster_context}", f"--namespace={scratch_namespace}",
                        "create", "service", "clusterip", "digits-api-other", "--tcp=80:80")
    assert bystander.returncode == 0, bystander.stderr
    ingress_on = {"hosts": ["digits.example.com"], "class_name": "", "tls_secret": "",
                  "controller_namespace": "app-routing-system"}
    # No replicas: nothing needs to pull an image, the rollout is done at once.
    with_ingress = applying("dev", cluster_context, scratch_namespace, tmp_path / "a",
                            monkeypatch, replicas=0, ingress=ingress_on,
                            service={"port": 80, "dns_label": ""})
    kube.apply(c, with_ingress, smoke=None, echo=print)
    assert "ingress.networking.k8s.io/digits-api" in names(
        cluster_context, scratch_namespace, "ingress")
    first_config = names(cluster_context, scratch_namespace, "configmaps")
    without = applying("dev", cluster_context, scratch_namespace, tmp_path / "b", monkeypatch,
                       replicas=0, max_batch=10)
    kube.apply(c, without, smoke=None, echo=print)
    assert names(cluster_context, scratch_namespace, "ingress") == set()
    # The first release's ConfigMap stays while its ReplicaSet is kept for `rollout undo`.
    assert first_config <= names(cluster_context, scratch_namespace, "configmaps")
    assert "service/digits-api-other" in names(cluster_context, scratch_namespace, "services")


def test_a_failed_first_deploy_leaves_nothing_behind(cluster_context, scratch_namespace,
                                                     tmp_path, monkeypatch):
    # An image nobody can pull: the rollout cannot finish.
    settings = applying("dev", cluster_context, scratch_namespace, tmp_path / "k8s",
                        monkeypatch, image=f"127.0.0.1:9/nothing@{DIGEST}",
                        progress_deadline_seconds=30)
    with pytest.raises(PipelineError, match="first deploy.*deleted again"):
        kube.apply(invoke.Context(), settings, smoke=None, echo=print)
    time.sleep(5)
    left = names(cluster_context, scratch_namespace,
                 "deployments,services,configmaps,networkpolicies,serviceaccounts")
    assert not any("digits-api" in name for name in left), left


@pytest.mark.skipif(not os.environ.get("MODELSHIP_TEST_IMAGE"),
                    reason="set MODELSHIP_TEST_IMAGE to a pushed image the cluster can pull")
def test_a_stopping_pod_leaves_the_endpoints_before_it_stops_serving(
        cluster_context, scratch_namespace, tmp_path, monkeypatch):
    settings = applying("dev", cluster_context, scratch_namespace, tmp_path / "k8s",
                        monkeypatch, image=os.environ["MODELSHIP_TEST_IMAGE"])
    kube.apply(invoke.Context(), settings, smoke=None, echo=print)
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
