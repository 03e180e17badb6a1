"""`invoke apply --strategy=canary --env=cluster` through the real CLI against the local
control plane.

The canary objects are real API objects the real controllers act on: the canary Deployment
beside the stable one (its replicas the replica-ratio share), or with ingress hosts set its
own Service and a canary Ingress with the weight. kwok's pods run no process, so no pod
answers /metrics through the API server's proxy: every window has no evidence, and the
canary must end in rollback, never promotion, leaving the stable Deployment as it was.
Killed with SIGKILL the canary stays, `status` shows both versions, and `invoke rollback`
ends it; Ctrl-C rolls it back itself. The canary differs from the stable release by one
setting (web_concurrency, so its ConfigMap and pod template), set in a `-f` runtime file as
a user would; the module puts the cluster back to the project's own render at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from modelship.settings import PROJECT_ROOT
from tests.integration.test_cluster_deploy import kubectl

pytestmark = pytest.mark.cluster

CANARY = "digits-api-canary"


def invoke_args(runtime_file, *args: str) -> list[str]:
    prefix = ["-f", str(runtime_file)] if runtime_file else []
    return [sys.executable, "-m", "invoke", *prefix, *args]


def invoke(runtime_file, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(invoke_args(runtime_file, *args), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def start(runtime_file, *args: str) -> subprocess.Popen:
    return subprocess.Popen(invoke_args(runtime_file, *args), cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runtime_file(tmp_path, name, *, steps, interval="2s", max_inconclusive=0,
                 ingress=False, canary=True):
    cluster = {"release": {"canary": {"steps": steps, "interval": interval,
                                      "min_requests": 5,
                                      "max_inconclusive": max_inconclusive}}}
    deployment = {}
    if canary:
        deployment["web_concurrency"] = 3
    if ingress:
        deployment["ingress"] = {"hosts": ["digits.cluster.test"], "class_name": "nginx"}
    cluster["deployment"] = deployment
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"modelship": {"environments": {"cluster": cluster}}}))
    return path


def live(settings, *objects: str) -> dict:
    listed = kubectl(settings, "get", *objects, "--ignore-not-found", "--output=json")
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout.strip()
    items = json.loads(text).get("items", [json.loads(text)]) if text else []
    return {f"{item['kind'].lower()}/{item['metadata']['name']}": item for item in items}


def stable_state(settings) -> tuple:
    deployment = live(settings, "deployment/digits-api")["deployment/digits-api"]
    return deployment["metadata"]["generation"], deployment["spec"]


def wait_for(settings, objects, ready, applying, seconds=180) -> dict:
    """The canary objects once `ready(found)` holds, polled while `applying` runs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = live(settings, *objects)
        if ready(found):
            return found
        assert applying.poll() is None, applying.communicate()[0]
        time.sleep(0.5)
    raise AssertionError(f"{objects} not as expected within {seconds} s: {found}")


def canary_gone(settings) -> None:
    assert live(settings, f"deployment/{CANARY}", f"service/{CANARY}", f"ingress/{CANARY}",
                f"networkpolicy/{CANARY}") == {}


@pytest.fixture(scope="module")
def stable(local_control_plane, local_stack, published_model):
    settings = local_control_plane
    done = invoke(None, "deploy", "--env=cluster", timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    yield settings
    # Back to the project's own render and release, whatever a test left.
    kubectl(settings, "delete", f"ingress/{CANARY}", f"deployment/{CANARY}",
            f"service/{CANARY}", f"networkpolicy/{CANARY}", "--ignore-not-found")
    rendered = invoke(None, "render", "--env=cluster", timeout=600)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    applied = invoke(None, "apply", "--env=cluster", "--strategy=rolling", timeout=600)
    assert applied.returncode == 0, applied.stdout + applied.stderr


def render(runtime):
    rendered = invoke(runtime, "render", "--env=cluster", timeout=600)
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr


def test_replica_ratio_canary_without_metrics_is_inconclusive_and_rolls_back(stable, tmp_path):
    settings = stable
    runtime = runtime_file(tmp_path, "canary", steps=[25, 100], max_inconclusive=1)
    render(runtime)
    planned = invoke(runtime, "--dry", "apply", "--env=cluster", "--strategy=canary")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "25%: 1 canary pod(s) beside 2 = 33.3%" in planned.stdout, planned.stdout
    canary_gone(settings)
    before = stable_state(settings)
    applying = start(runtime, "apply", "--env=cluster", "--strategy=canary")
    found = wait_for(settings, [f"deployment/{CANARY}"],
                     lambda found: f"deployment/{CANARY}" in found, applying)
    canary = found[f"deployment/{CANARY}"]
    assert canary["spec"]["replicas"] == 1  # 1/(2+1) is the nearest share to 25%
    selector = canary["spec"]["selector"]["matchLabels"]
    service = live(settings, "service/digits-api")["service/digits-api"]
    assert selector == {**service["spec"]["selector"], "track": "canary"}
    stable_spec = before[1]["template"]["spec"]["containers"][0]
    canary_spec = canary["spec"]["template"]["spec"]["containers"][0]
    assert canary_spec["image"] == stable_spec["image"]
    assert canary_spec["envFrom"] != stable_spec["envFrom"]  # web_concurrency: its ConfigMap
    output, _ = applying.communicate(timeout=300)
    assert applying.returncode == 1, output
    assert "1 canary pod(s) beside 2 = 33.3% of connections" in output, output
    assert "no /metrics from" in output, output
    assert output.count("inconclusive:") == 2, output
    assert "canary rolled back" in output and "no evidence, no promotion" in output, output
    canary_gone(settings)
    assert stable_state(settings) == before


def test_ingress_canary_gets_the_exact_weight_and_rollback_removes_it(stable, tmp_path):
    settings = stable
    with_ingress = runtime_file(tmp_path, "ingress", steps=[10, 100], ingress=True,
                                canary=False)
    render(with_ingress)
    applied = invoke(with_ingress, "apply", "--env=cluster", "--strategy=rolling")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    runtime = runtime_file(tmp_path, "canary-ingress", steps=[10, 100], ingress=True,
                           interval="5s")
    render(runtime)
    before = stable_state(settings)
    stable_ingress = live(settings, "ingress/digits-api")["ingress/digits-api"]["spec"]
    applying = start(runtime, "apply", "--env=cluster", "--strategy=canary")
    weighted = f"ingress/{CANARY}"
    found = wait_for(
        settings, [f"deployment/{CANARY}", f"service/{CANARY}", weighted],
        lambda found: weighted in found and found[weighted]["metadata"]["annotations"].get(
            "nginx.ingress.kubernetes.io/canary-weight") == "10", applying)
    annotations = found[weighted]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/canary"] == "true"
    backend = found[weighted]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == CANARY
    # The stable Service must not select the canary's pods, or the weight would not be exact.
    service = live(settings, "service/digits-api")["service/digits-api"]["spec"]["selector"]
    pod_labels = found[f"deployment/{CANARY}"]["spec"]["template"]["metadata"]["labels"]
    assert not service.items() <= pod_labels.items()
    output, _ = applying.communicate(timeout=300)
    assert applying.returncode == 1, output
    assert "share 10% (canary-weight, exact)" in output, output
    canary_gone(settings)
    assert stable_state(settings) == before
    assert live(settings, "ingress/digits-api")["ingress/digits-api"]["spec"] == stable_ingress


def canary_with_two_ready_pods(settings, tmp_path, name):
    """(runtime file, the stable state before, `invoke apply --strategy=canary` running) once
    its canary Deployment has 2 ready pods; its steps last long enough to act on it."""
    runtime = runtime_file(tmp_path, name, steps=[50, 100], interval="120s",
                           max_inconclusive=3)
    render(runtime)
    before = stable_state(settings)
    applying = start(runtime, "apply", "--env=cluster", "--strategy=canary")
    wait_for(settings, [f"deployment/{CANARY}"],
             lambda found: found.get(f"deployment/{CANARY}", {}).get("status", {})
             .get("readyReplicas") == 2, applying)
    return runtime, before, applying


def test_a_killed_canary_shows_in_status_and_rollback_ends_it(stable, tmp_path):
    settings = stable
    runtime, before, applying = canary_with_two_ready_pods(settings, tmp_path, "killed")
    applying.kill()  # no cleanup at all: the deploy is simply gone
    applying.communicate(timeout=60)
    shown = invoke(runtime, "status", "--env=cluster", timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "canary replicas  2" in shown.stdout, shown.stdout
    assert "stable 50.0% / canary 50.0% (replica ratio 2:2)" in shown.stdout, shown.stdout
    ended = invoke(runtime, "rollback", "--env=cluster", timeout=300)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert "canary ended" in ended.stdout, ended.stdout
    canary_gone(settings)
    assert stable_state(settings) == before
    assert "canary" not in invoke(runtime, "status", "--env=cluster").stdout


def test_ctrl_c_rolls_the_canary_back(stable, tmp_path):
    settings = stable
    runtime, before, applying = canary_with_two_ready_pods(settings, tmp_path, "interrupted")
    time.sleep(2)
    applying.send_signal(signal.SIGINT)
    output, _ = applying.communicate(timeout=120)
    assert applying.returncode == 1, output
    assert "interrupted and rolled back" in output, output
    canary_gone(settings)
    assert stable_state(settings) == before
