"""`invoke deploy --env=cluster` through the real CLI against the local control plane.

The same stages as dev/staging/prod: the image is built, contract-tested and pushed to the
local registry, rendered, applied to the API server of `invoke local.cluster.up`, its
rollout waited for; `status` and `model.check` then read the real Deployment, and `--dry`
runs of the releasing tasks leave every object in the namespace byte-for-byte as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from modelship import release_record
from modelship.settings import PROJECT_ROOT
from modelship.stage_files import cluster_kubeconfig, cluster_kubectl

pytestmark = pytest.mark.cluster

# Everything `apply` writes or prunes in the namespace (events excluded: the cluster's own).
KINDS = ("deployments,replicasets,pods,services,configmaps,serviceaccounts,networkpolicies,"
         "ingresses,poddisruptionbudgets,horizontalpodautoscalers")


def invoke(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def kubectl(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
                           f"--context={settings.kubernetes.context}",
                           f"--namespace={settings.kubernetes.namespace}", *args],
                          capture_output=True, text=True, timeout=60)


def namespace_json(settings) -> str:
    listed = kubectl(settings, "get", KINDS, "--output=json")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


@pytest.fixture(scope="module")
def deployed(local_control_plane, local_stack, published_model):
    done = invoke("deploy", "--env=cluster")
    assert done.returncode == 0, done.stdout + done.stderr
    return local_control_plane, done.stdout


def test_deploy_applies_to_the_api_server_and_waits_for_the_rollout(deployed):
    settings, output = deployed
    pushed = release_record.load().require_push("cluster")
    live = json.loads(kubectl(settings, "get", "deployment/digits-api",
                              "--output=json").stdout)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == pushed.reference
    assert live["status"]["readyReplicas"] == settings.deployment.replicas
    assert f"rolled out {pushed.reference}" in output, output
    # kwok's pods serve nothing: the smoke test says it did not run instead of failing.
    assert "smoke test not run" in output, output


def test_status_and_model_check_read_the_real_deployment(deployed):
    settings, _ = deployed
    pushed = release_record.load().require_push("cluster")
    status = invoke("status", "--env=cluster", timeout=120)
    assert status.returncode == 0, status.stderr
    assert pushed.digest in status.stdout
    assert f"ready replicas   {settings.deployment.replicas}" in status.stdout, status.stdout
    checked = invoke("model.check", "--env=cluster", timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "cluster runs the latest published digits model" in checked.stdout, checked.stdout


def settled(settings) -> str:
    """The namespace once nothing moves in it any more (pods of the replaced ReplicaSet are
    Terminating a few seconds), as JSON."""
    deadline = time.monotonic() + 60
    previous = namespace_json(settings)
    while time.monotonic() < deadline:
        time.sleep(3)
        current = namespace_json(settings)
        terminating = any(item["metadata"].get("deletionTimestamp")
                          for item in json.loads(current)["items"])
        if current == previous and not terminating:
            return current
        previous = current
    raise AssertionError("the namespace did not settle within 60 s")


@pytest.mark.parametrize("task", ["deploy", "apply", "rollback", "diff"])
def test_dry_runs_leave_the_cluster_byte_for_byte_unchanged(deployed, task):
    settings, _ = deployed
    before = settled(settings)
    ran = invoke("--dry", task, "--env=cluster", timeout=900)
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr
    assert namespace_json(settings) == before


def test_a_dry_apply_of_manifests_that_differ_from_the_cluster_changes_nothing(deployed,
                                                                              tmp_path):
    """A steady state proves little (applying the same manifests changes nothing), so the
    manifests under review here really differ: one replica more than the cluster runs."""
    settings, _ = deployed
    more_replicas = tmp_path / "more-replicas.yaml"
    more_replicas.write_text(yaml.safe_dump({"modelship": {"environments": {"cluster": {
        "deployment": {"replicas": settings.deployment.replicas + 1}}}}}))
    rendered = invoke("-f", str(more_replicas), "render", "--env=cluster", timeout=600)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    try:
        before = settled(settings)
        ran = invoke("-f", str(more_replicas), "--dry", "apply", "--env=cluster", timeout=900)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "[dry]" in ran.stdout, ran.stdout
        time.sleep(3)  # what a real apply would have started has had time to show
        assert namespace_json(settings) == before
    finally:
        restored = invoke("render", "--env=cluster", timeout=600)
        assert restored.returncode == 0, restored.stdout + restored.stderr
