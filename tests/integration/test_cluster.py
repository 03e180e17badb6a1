"""The rendered manifests against a real API server (the current kube context).

Skipped, with the reason, when no kube context is set or its API server does not answer.
The tests create a throw-away namespace that enforces the "restricted" Pod Security
Standard, send every environment's rendering to the server as a server-side dry run (full
admission, nothing persisted), and delete the namespace afterwards.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid
from pathlib import Path

import invoke
import pytest

from modelship import manifests
from modelship.settings import PROJECT_ROOT, load_settings

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


def rendering_in(env: str, context: str, namespace: str, folder: Path) -> Path:
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    settings = load_settings(config, env)
    settings = dataclasses.replace(settings, kubernetes=dataclasses.replace(
        settings.kubernetes, context=context, namespace=namespace))
    record = {
        "image": {"id": "sha256:" + "cd" * 32, "tag": "test"},
        "model": {"name": "digits", "version": "test", "sha256": "0" * 64},
        "source": {"revision": "test", "dirty": False},
    }
    pushed = {"reference": f"{settings.registry.host}/digits-api@{DIGEST}"}
    manifests.render(settings, record, pushed, output_dir=folder)
    return folder


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_the_api_server_accepts_the_rendering_under_restricted_pod_security(
        env, cluster_context, restricted_namespace, tmp_path):
    folder = rendering_in(env, cluster_context, restricted_namespace, tmp_path / env)
    result = kubectl(f"--context={cluster_context}", f"--namespace={restricted_namespace}",
                     "apply", "--dry-run=server", f"--filename={folder}")
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/digits-api created (server dry run)" in result.stdout
    assert "PodSecurity" not in result.stderr, result.stderr
