"""The Kubernetes canary's arithmetic and objects with fixed inputs: replica-ratio shares,
per-pod /metrics summed per version, the canary objects made from the reviewed folder, and
a run where no pod answers /metrics ending in rollback, never promotion."""

from __future__ import annotations

import json

import pytest
from invoke import Result

from modelship import canary, canary_analysis, kube_canary
from modelship.settings import load_settings

from test_kube import build_dir, fake_record, project_config, render_for  # noqa: F401


@pytest.mark.parametrize("stable, percent, replicas, share", [
    (2, 10, 1, 33.3),   # the least one pod can give beside two
    (2, 50, 2, 50.0),
    (4, 25, 1, 20.0),   # 1/5 is nearer 25% than 2/6
    (4, 50, 4, 50.0),
    (9, 10, 1, 10.0),
    (3, 90, 27, 90.0),
    (2, 75, 6, 75.0),
    (3, 60, 5, 62.5),   # 5/8 is 2.5 points off, 4/7 (57.1) 2.9
])
def test_canary_replicas_give_the_nearest_achievable_share(stable, percent, replicas, share):
    assert kube_canary.canary_replicas(stable, percent) == replicas
    assert round(kube_canary.replica_share(stable, replicas), 1) == share


@pytest.mark.parametrize("percent", [0, 100])
def test_zero_and_a_hundred_are_no_canary_step(percent):
    with pytest.raises(ValueError):
        kube_canary.canary_replicas(2, percent)


POD_A = ('http_requests_total{route="/score",status="200"} 40\n'
         'http_requests_total{route="/score",status="500"} 2\n'
         'prediction_class_total{class="3"} 7\n')
POD_B = ('# HELP http_requests_total requests\n'
         'http_requests_total{route="/score",status="200"} 60\n'
         'prediction_class_total{class="3"} 5\n'
         'prediction_class_total{class="a \\"quoted\\" one"} 1\n')


def test_merged_sums_each_series_over_the_pods():
    total = canary_analysis.parse(canary_analysis.merged([POD_A, POD_B]))
    assert total[("http_requests_total", (("route", "/score"), ("status", "200")))] == 100
    assert total[("http_requests_total", (("route", "/score"), ("status", "500")))] == 2
    assert total[("prediction_class_total", (("class", "3"),))] == 12
    assert total[("prediction_class_total", (("class", 'a "quoted" one'),))] == 1


def test_merged_of_no_pods_is_no_traffic():
    assert canary_analysis.merged([]) == ""


def test_the_figures_of_two_pods_are_the_versions():
    before = canary_analysis.merged([POD_A.replace("40", "0").replace(" 2\n", " 0\n"),
                                     POD_B.replace("60", "10")])
    after = canary_analysis.merged([POD_A, POD_B])
    figures = canary_analysis.figures(canary_analysis.window(
        canary_analysis.parse(before), canary_analysis.parse(after)))
    assert (figures.requests, figures.errors) == (92, 2)


@pytest.fixture
def settings(build_dir):
    settings = load_settings(project_config(), "dev")
    render_for(settings, fake_record())
    return settings


@pytest.fixture
def with_ingress(build_dir):
    config = project_config()
    config.modelship["environments"]["dev"]["deployment"]["ingress"] = {
        "hosts": ["digits.example"], "class_name": "nginx", "tls_secret": "digits-tls"}
    config.modelship["environments"]["dev"]["deployment"]["service"]["dns_label"] = ""
    settings = load_settings(config, "dev")
    render_for(settings, fake_record())
    return settings


def _by_kind(objects):
    return {item["kind"]: item for item in objects}


def test_replica_ratio_canary_shares_the_services_selector_and_escapes_the_prune(settings):
    objects = _by_kind(kube_canary.canary_objects(settings, 3, by_ingress=False))
    assert set(objects) == {"ConfigMap", "Deployment"}
    deployment = objects["Deployment"]
    assert deployment["metadata"]["name"] == "digits-api-canary"
    assert deployment["spec"]["replicas"] == 3
    selector = deployment["spec"]["selector"]["matchLabels"]
    service_selector = {"app.kubernetes.io/name": "digits-api",
                        "app.kubernetes.io/instance": "digits-api-dev"}
    assert selector == {**service_selector, "track": "canary"}
    assert service_selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "app.kubernetes.io/managed-by" not in deployment["metadata"]["labels"]


def test_ingress_canary_has_its_own_pods_service_and_weight(with_ingress):
    objects = _by_kind(kube_canary.canary_objects(with_ingress, 1, by_ingress=True))
    assert {"Deployment", "Service", "Ingress", "NetworkPolicy"} <= set(objects)
    pods = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    # The stable Service (name digits-api) must not select the canary's pods.
    assert pods["app.kubernetes.io/name"] == "digits-api-canary"
    assert objects["Service"]["spec"]["selector"]["app.kubernetes.io/name"] == \
        "digits-api-canary"
    ingress = objects["Ingress"]
    assert ingress["metadata"]["annotations"][kube_canary.CANARY_ANNOTATION] == "true"
    backends = {path["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]}
    assert backends == {"digits-api-canary"}
    assert objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == \
        objects["Deployment"]["spec"]["selector"]["matchLabels"]


class SilentPods:
    """A context whose pods exist and never answer /metrics (like kwok's)."""

    def __init__(self):
        self.commands = []

    def run(self, command, **kwargs):
        self.commands.append(command)
        if " get pods " in command:
            return Result(stdout=json.dumps({"items": [
                {"metadata": {"name": "pod-1"}, "status": {"phase": "Running"}}]}))
        if "--raw" in command:
            return Result(stderr="error: dial tcp 127.0.0.1:8080: connect: timeout", exited=1)
        return Result()


def test_no_readable_metrics_is_inconclusive_and_ends_in_rollback(settings):
    context = SilentPods()
    promoted = []
    runtime = kube_canary.KubeCanary(context, settings, 2, lambda line: None,
                                     promote_stable=lambda: promoted.append(True))
    section = settings.release.canary.model_copy(update={"steps": [50, 100],
                                                         "max_inconclusive": 1})
    result = canary.run(runtime, section, lambda line: None, sleep=lambda seconds: None)
    assert result.outcome == canary.ROLLED_BACK
    assert [decision.verdict for decision in result.decisions] == ["inconclusive"] * 2
    assert not promoted
    assert any(" delete " in command and "deployment/digits-api-canary" in command
               for command in context.commands)


class SwallowingRuntime:
    """Like a runtime whose kubectl runs under Invoke: a Ctrl-C during a call is caught
    there (Invoke passes it to the command) and the call returns normally."""

    def __init__(self):
        self.calls = []

    def set_share(self, percent):
        self.calls.append(("share", percent))

    def scrape(self):
        import os
        import signal

        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return "", ""

    def promote(self):
        self.calls.append("promote")

    def roll_back(self):
        self.calls.append("roll back")


def test_a_ctrl_c_a_runtime_call_swallowed_still_rolls_back(settings):
    runtime = SwallowingRuntime()
    section = settings.release.canary.model_copy(update={"steps": [50, 100],
                                                         "max_inconclusive": 3})
    with pytest.raises(KeyboardInterrupt) as stopped:
        canary.run(runtime, section, lambda line: None, sleep=lambda seconds: None)
    assert runtime.calls == [("share", 50), "roll back"]
    assert stopped.value.canary_result.outcome == canary.ROLLED_BACK


def _canary_listing(replicas, weight=None):
    items = [{"kind": "Deployment", "spec": {"replicas": replicas, "template": {"spec": {
        "containers": [{"image": "registry.example/digits-api@sha256:" + "c" * 64}]}}}}]
    if weight is not None:
        items.append({"kind": "Ingress", "metadata": {"annotations": {
            kube_canary.WEIGHT_ANNOTATION: str(weight)}}})
    return json.dumps({"kind": "List", "items": items})


@pytest.mark.parametrize("weight, shares", [
    (None, "stable 75.0% / canary 25.0% (replica ratio 3:1)"),
    (10, "stable 90% / canary 10% (canary Ingress weight)"),
])
def test_status_shows_both_versions_and_their_shares(settings, capsys, weight, shares):
    from invoke import MockContext

    from modelship import kube, tasks
    from test_kube import DIGEST, deployed_listing

    stable = kube.kubectl(settings, "get", "deployment/digits-api", "service/digits-api",
                          "--output=json")
    canary_read = kube.kubectl(settings, "get", "deployment/digits-api-canary",
                               "ingress/digits-api-canary", "--ignore-not-found",
                               "--output=json")
    c = MockContext(config=project_config(), run={
        stable: Result(stdout=deployed_listing(f"crmodelshipdev.azurecr.io/digits-api@{DIGEST}")),
        canary_read: Result(stdout=_canary_listing(1, weight))})
    tasks.status(c, env="dev")
    out = capsys.readouterr().out
    assert "canary           registry.example/digits-api@sha256:ccc" in out, out
    assert f"shares           {shares}" in out, out


class ServingPods(SilentPods):
    """Pods that answer /metrics, each reading 100 more /score requests than the last."""

    def __init__(self, events):
        super().__init__()
        self.events, self.reads = events, 0

    def run(self, command, **kwargs):
        if "--raw" in command:
            self.commands.append(command)
            self.reads += 1
            return Result(stdout=f'http_requests_total{{route="/score",status="200"}} '
                                 f'{100 * self.reads}\n')
        if " delete " in command:
            self.events.append("canary deleted")
        return super().run(command, **kwargs)


def test_with_evidence_the_stable_deployment_takes_the_release_before_the_canary_goes(settings):
    events = []
    context = ServingPods(events)
    runtime = kube_canary.KubeCanary(context, settings, 2, lambda line: None,
                                     promote_stable=lambda: events.append("stable applied"))
    section = settings.release.canary.model_copy(update={"steps": [50, 100],
                                                         "min_requests": 50})
    result = canary.run(runtime, section, lambda line: None, sleep=lambda seconds: None)
    assert result.outcome == canary.PROMOTED, result.reason
    assert events == ["stable applied", "canary deleted"]
    assert any("pods/pod-1:8080/proxy/metrics" in command for command in context.commands)
