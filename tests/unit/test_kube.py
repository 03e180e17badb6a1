"""The release sequence: apply, rollout deadline, rollback, smoke test, diff, status, AKS.

Command order is checked with Invoke's MockContext; the whole `apply` task runs against a
stand-in `kubectl` on PATH that logs its arguments, simulates a good or a failed rollout,
and answers `port-forward` with a tiny HTTP server on 127.0.0.1 playing the Service.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import invoke
import pytest
import yaml
from invoke import Exit, MockContext, Result

from modelship import tasks
from modelship import kube, manifests, release_record
from modelship.manifests import Release
from modelship.release_record import ReleaseRecord
from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT, load_settings

DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32
GOLDEN_SAMPLE = {"instance": [0.0] * 64, "label": 7}


def project_config(**dev_deployment) -> invoke.Config:
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    for key, value in dev_deployment.items():
        config.modelship["environments"]["dev"]["deployment"][key] = value
    return config


def fake_record() -> ReleaseRecord:
    repositories = {env: load_settings(project_config(), env).image_repository
                    for env in ("dev", "prod")}
    return ReleaseRecord.model_validate({
        "image": {"id": IMAGE_ID, "name": "digits-api:3f2a9c1", "repository": "digits-api",
                  "tag": "3f2a9c1"},
        "model": {"name": "digits", "version": "20260101.120000", "sha256": "f1962600" * 8,
                  "golden": [GOLDEN_SAMPLE]},
        "source": {"revision": "3f2a9c1e" * 5, "dirty": False},
        "pushed": {env: {"digest": DIGEST, "repository": repo, "reference": f"{repo}@{DIGEST}"}
                   for env, repo in repositories.items()},
    })


def render_for(settings, record: ReleaseRecord) -> None:
    manifests.render(settings, Release.from_record(record, record.require_push(settings.env)))


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    return tmp_path / "build"


@pytest.fixture
def dev(build_dir):
    """Settings for dev with a rendered review folder in the temporary build dir."""
    settings = load_settings(project_config(), "dev")
    render_for(settings, fake_record())
    return settings


def ok(stdout="") -> Result:
    return Result(stdout=stdout, exited=0)


def failed(stdout="", exited=1) -> Result:
    return Result(stdout=stdout, exited=exited)


# --- the sequence, with MockContext -----------------------------------------------------

# What `kubectl get --filename=<folder> --output=name` prints when the app runs already.
EXISTING = ("deployment.apps/digits-api\nservice/digits-api\n"
            "configmap/digits-api-config-0000000001\n")


def replicaset_listing(*config_names: str) -> str:
    return json.dumps({"items": [
        {"spec": {"template": {"spec": {"containers": [
            {"name": "server", "envFrom": [{"configMapRef": {"name": name}}]}]}}}}
        for name in config_names]})


def current_config(settings) -> str:
    return next(name.split("/", 1)[1] for name in kube.rendered_objects(settings)
                if name.startswith("configmap/"))


def cluster(settings, **answers) -> MockContext:
    """A cluster where the app runs, with its ReplicaSets and ConfigMaps, unless overridden."""
    commands = kube.apply_commands(settings)
    current = current_config(settings)
    defaults = {
        "existing": ok(EXISTING), "validate": ok(), "apply": ok(), "rollout": ok(),
        "replicasets": ok(replicaset_listing(current)),
        "configmaps": ok(f"configmap/{current}\n"),
    }
    defaults.update(answers)
    return MockContext(run={commands[name]: answer for name, answer in defaults.items()})


def ran(c) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list]


def test_apply_then_rollout_then_smoke_in_the_environments_context(dev):
    commands = kube.apply_commands(dev)
    c = cluster(dev)
    smoked = []
    kube.apply(c, dev, smoke=lambda: smoked.append(True), echo=lambda line: None)
    assert ran(c) == [commands[name] for name in
                      ("existing", "validate", "apply", "rollout", "replicasets",
                                    "configmaps")]
    assert smoked == [True]
    for command in ran(c):
        assert "--context=aks-modelship-dev --namespace=digits-dev" in command
    assert f"--filename={dev.render_dir}" in commands["apply"]
    assert "--timeout=300s" in commands["rollout"]


def test_a_manifest_the_api_server_refuses_stops_before_anything_changes(dev):
    refused = ('Error from server (Forbidden): error when creating "build/k8s/dev": pods '
               '"x" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true')
    c = cluster(dev, validate=Result(exited=1, stderr=refused))
    with pytest.raises(PipelineError, match="refused the manifests.*nothing was changed.*"
                                            "PodSecurity"):
        kube.apply(c, dev, echo=lambda line: None)
    assert kube.apply_commands(dev)["apply"] not in ran(c)


def test_apply_prunes_only_this_apps_objects_of_the_allowlisted_kinds(dev):
    apply = kube.apply_commands(dev)["apply"]
    assert " --prune " in apply
    assert ("--selector=app.kubernetes.io/instance=digits-api-dev,"
            "app.kubernetes.io/managed-by=modelship") in apply
    allowed = re.findall(r"--prune-allowlist=(\S+)", apply)
    assert "networking.k8s.io/v1/Ingress" in allowed
    assert "autoscaling/v2/HorizontalPodAutoscaler" in allowed
    # Never the kinds that must outlive a rendering: config kept for undo, secrets by ops.
    assert not any(kind.endswith(("/ConfigMap", "/Secret")) for kind in allowed)
    # kubectl diff shows the same deletions.
    assert kube.prune_flags(dev) == apply.split(f"--filename={dev.render_dir} ", 1)[1].split()
    assert kube.diff_command(dev).endswith(" ".join(kube.prune_flags(dev)))
    diff = MockContext(run={kube.diff_command(dev): Result(exited=1)})
    assert kube.diff(diff, dev) is True


def test_old_configs_are_deleted_only_once_no_replicaset_refers_to_them(dev):
    current = current_config(dev)
    kept_for_undo = "digits-api-config-00000000aa"
    c = cluster(dev, replicasets=ok(replicaset_listing(current, kept_for_undo)),
                configmaps=ok(f"configmap/{current}\nconfigmap/{kept_for_undo}\n"
                              "configmap/digits-api-config-00000000bb\nconfigmap/digits-api\n"))
    delete = kube.kubectl(dev, "delete", "configmap/digits-api",
                          "configmap/digits-api-config-00000000bb", "--ignore-not-found")
    c.set_result_for("run", delete, ok())
    lines = []
    kube.apply(c, dev, echo=lines.append)
    assert ran(c)[-1] == delete
    assert any("deleted 2 ConfigMap(s)" in line for line in lines)


def test_undo_brings_back_the_config_its_replicaset_was_made_with(dev, tmp_path):
    """After a config-only change, `rollout undo` goes back to a ReplicaSet whose ConfigMap
    the apply kept, so the pods get the old settings back, not only the old image."""
    old_settings = dev
    old_config = current_config(old_settings)
    new_settings = load_settings(project_config(max_batch=10), "dev")
    render_for(new_settings, fake_record())
    new_config = current_config(new_settings)
    assert new_config != old_config
    # The new release fails its rollout: undo, and the old ConfigMap was never deleted.
    c = cluster(new_settings, rollout=[failed(), ok()],
                replicasets=ok(replicaset_listing(new_config, old_config)))
    commands = kube.apply_commands(new_settings)
    for name in ("events", "pods", "undo"):
        c.set_result_for("run", commands[name], ok())
    with pytest.raises(PipelineError, match="rolled back to the previous revision"):
        kube.apply(c, new_settings, echo=lambda line: None)
    assert not any(" delete " in command for command in ran(c))
    # A later successful apply of either release keeps both while both ReplicaSets exist.
    assert kube.referenced_configs(json.loads(replicaset_listing(new_config, old_config))) == {
        new_config, old_config}


def test_failed_rollout_is_undone_and_the_pod_events_are_shown(dev):
    commands = kube.apply_commands(dev)
    events = "Warning  BackOff  pod/digits-api-7d9  Back-off restarting failed container"
    # Waiting for the undo is the same `rollout status` command: it fails, then succeeds.
    assert commands["rollout"] == commands["undo_wait"]
    c = cluster(dev, rollout=[failed(), ok()], events=ok(events),
                pods=ok("digits-api-7d9 0/1 Error"), undo=ok())
    lines, smoked = [], []
    with pytest.raises(PipelineError, match="did not finish.*rolled back to the previous"):
        kube.apply(c, dev, smoke=lambda: smoked.append(True), echo=lines.append)
    # Events are read before the undo replaces the failing pods.
    assert ran(c) == [commands[name] for name in
                      ("existing", "validate", "apply", "rollout", "events", "pods", "undo",
                       "undo_wait")]
    assert any(events in line for line in lines)
    assert smoked == []


def test_a_rollback_that_fails_too_is_reported(dev):
    c = cluster(dev, rollout=failed(), events=ok(), pods=ok(),
                undo=failed("no rollout history found"))
    with pytest.raises(PipelineError, match="rollback failed too"):
        kube.apply(c, dev, echo=lambda line: None)


@pytest.mark.parametrize("failure", ["rollout", "smoke"])
def test_a_failed_first_deploy_deletes_what_it_created_and_claims_no_rollback(dev, failure):
    commands = kube.apply_commands(dev)
    created = kube.rendered_objects(dev)
    delete = kube.kubectl(dev, "delete", *created, "--ignore-not-found", "--wait=false")
    c = cluster(dev, existing=ok(""), rollout=failed() if failure == "rollout" else ok(),
                events=ok(), pods=ok())
    c.set_result_for("run", delete, ok())

    def smoke():
        raise PipelineError("/readyz answered 503.", "Check the model.")

    with pytest.raises(PipelineError) as refused:
        kube.apply(c, dev, smoke=smoke, echo=lambda line: None)
    message = str(refused.value)
    assert "first deploy" in message and "nothing to roll back to" in message
    assert "rollback failed" not in message and "rolled back" not in message
    assert ran(c)[-1] == delete
    assert commands["undo"] not in ran(c)
    assert "deployment/digits-api" in created and "service/digits-api" in created


def test_a_failed_deploy_deletes_only_what_did_not_exist_before(dev):
    # The Service (say, made by an earlier deploy whose Deployment was deleted by hand) stays.
    created = [name for name in kube.rendered_objects(dev) if name != "service/digits-api"]
    delete = kube.kubectl(dev, "delete", *created, "--ignore-not-found", "--wait=false")
    c = cluster(dev, existing=ok("service/digits-api\n"), rollout=failed(), events=ok(),
                pods=ok())
    c.set_result_for("run", delete, ok())
    with pytest.raises(PipelineError, match="first deploy"):
        kube.apply(c, dev, echo=lambda line: None)
    assert ran(c)[-1] == delete


def test_failed_smoke_test_rolls_back(dev):
    commands = kube.apply_commands(dev)
    c = cluster(dev, undo=ok())

    def smoke():
        raise PipelineError("/score predicted [3]; expected [7].", "Check the model.")

    with pytest.raises(PipelineError, match=r"smoke test .* expected \[7\].*rolled back"):
        kube.apply(c, dev, smoke=smoke, echo=lambda line: None)
    assert ran(c)[-2:] == [commands["undo"], commands["undo_wait"]]


def test_a_refused_apply_stops_before_the_rollout(dev):
    c = cluster(dev, apply=failed(exited=1))
    with pytest.raises(PipelineError, match="kubectl apply .* failed"):
        kube.apply(c, dev, echo=lambda line: None)
    # The read of what exists, the server-side dry run, then the refused apply.
    assert c.run.call_count == 3


def test_an_apply_rbac_refuses_ends_in_one_line_naming_the_verb_and_resource(dev):
    refused = ('Error from server (Forbidden): error when deleting "build/k8s/dev": '
               'ingresses.networking.k8s.io "digits-api" is forbidden: User "deployer" cannot '
               'delete resource "ingresses" in API group "networking.k8s.io" in the namespace '
               '"digits-dev"')
    c = cluster(dev, apply=Result(exited=1, stderr=refused))
    with pytest.raises(PipelineError) as failure:
        kube.apply(c, dev, echo=lambda line: None)
    line = str(failure.value)
    assert "\n" not in line
    assert "deployer may not delete ingresses.networking.k8s.io" in line
    assert "docs/deploy-role.yaml" in line


def test_an_unreadable_cluster_stops_before_anything_is_applied(dev):
    c = cluster(dev, existing=Result(exited=1, stderr="Unauthorized"))
    with pytest.raises(PipelineError, match="Could not read the cluster.*Unauthorized"):
        kube.apply(c, dev, echo=lambda line: None)
    assert c.run.call_count == 1


def test_apply_needs_a_rendered_folder(build_dir):
    settings = load_settings(project_config(), "dev")
    with pytest.raises(PipelineError, match="invoke render --env=dev"):
        kube.apply(MockContext(), settings)


def test_apply_refuses_a_folder_rendered_for_another_image(dev):
    with pytest.raises(PipelineError, match="was rendered for .* but the last push"):
        kube.require_current_render(dev, "crmodelshipdev.azurecr.io/digits-api@sha256:" + "0" * 64)


# --- diff, status, AKS ----------------------------------------------------------------


@pytest.mark.parametrize("exited, differs", [(0, False), (1, True)])
def test_diff_reports_whether_the_cluster_differs(dev, exited, differs):
    command = kube.diff_command(dev)
    assert kube.diff(MockContext(run={command: Result(exited=exited)}), dev) is differs


def test_diff_error_is_a_pipeline_error(dev):
    command = kube.diff_command(dev)
    with pytest.raises(PipelineError, match="kubectl diff .* failed"):
        kube.diff(MockContext(run={command: Result(exited=2)}), dev)


def deployed_listing(image: str) -> str:
    return json.dumps({"kind": "List", "items": [
        {"kind": "Deployment",
         "metadata": {"annotations": {
             "modelship.ai/git-revision": "3f2a9c1e", "modelship.ai/model-version": "20260101",
             "modelship.ai/model-sha256": "f1962600"}},
         "spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": image}]}}},
         "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}},
        {"kind": "Service", "status": {"loadBalancer": {"ingress": [{"ip": "20.1.2.3"}]}}},
    ]})


def test_status_shows_digest_revision_model_and_ready_replicas(dev, capsys, monkeypatch):
    image = f"crmodelshipdev.azurecr.io/digits-api@{DIGEST}"
    command = kube.kubectl(dev, "get", "deployment/digits-api", "service/digits-api",
                           "--output=json")
    no_canary = kube.kubectl(dev, "get", "deployment/digits-api-canary",
                             "ingress/digits-api-canary", "--ignore-not-found", "--output=json")
    c = MockContext(config=project_config(), run={command: ok(deployed_listing(image)),
                                                  no_canary: ok("")})
    tasks.status(c, env="dev")
    out = capsys.readouterr().out
    assert "canary" not in out
    assert f"digest           {DIGEST}" in out
    assert "git revision     3f2a9c1e" in out
    assert "model version    20260101" in out
    assert "model sha256     f1962600" in out
    assert "ready replicas   2" in out
    assert "address          20.1.2.3" in out


def test_status_of_an_environment_without_the_app_says_what_to_do(dev):
    command = kube.kubectl(dev, "get", "deployment/digits-api", "service/digits-api",
                           "--output=json")
    c = MockContext(config=project_config(), run={
        command: Result(stderr='deployments.apps "digits-api" not found', exited=1)})
    with pytest.raises(invoke.Exit, match="not found.*invoke apply --env=dev"):
        tasks.status(c, env="dev")


def test_aks_credentials_fetches_the_environment_cluster_under_its_context_name(capsys):
    command = ("az aks get-credentials --resource-group=rg-modelship-prod "
               "--name=aks-modelship-prod --context=aks-modelship-prod --overwrite-existing")
    plain_kubeconfig = json.dumps({"contexts": [], "users": []})
    c = MockContext(config=project_config(), run={
        "az version": ok(), command: ok(), kube.KUBECONFIG_VIEW: ok(plain_kubeconfig)})
    tasks.aks_credentials(c, env="prod")
    assert "aks-modelship-prod' is ready" in capsys.readouterr().out


AKS_ENTRA_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: aks-modelship-prod
  cluster: {server: "https://aks-modelship-prod.hcp.westeurope.azmk8s.io:443"}
- name: kind-laptop
  cluster: {server: "https://127.0.0.1:6443"}
contexts:
- name: aks-modelship-prod
  context: {cluster: aks-modelship-prod, user: clusterUser_rg_aks-modelship-prod}
- name: kind-laptop
  context: {cluster: kind-laptop, user: kind-laptop}
users:
- name: clusterUser_rg_aks-modelship-prod
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --login, devicecode, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630]
- name: kind-laptop
  user: {token: not-a-real-token}
"""


def kubeconfig_as_kubectl_shows_it(tmp_path, text=AKS_ENTRA_KUBECONFIG) -> dict:
    # The real kubectl reads the file, as the task does after az writes it.
    path = tmp_path / "kubeconfig"
    path.write_text(textwrap.dedent(text))
    shown = subprocess.run(kube.KUBECONFIG_VIEW.split(), capture_output=True, text=True,
                           check=True, env={**os.environ, "KUBECONFIG": str(path)})
    return json.loads(shown.stdout)


def test_an_entra_id_context_is_recognised_by_its_kubelogin_user(tmp_path):
    kubeconfig = kubeconfig_as_kubectl_shows_it(tmp_path)

    assert kube.context_uses_kubelogin(kubeconfig, "aks-modelship-prod")
    assert not kube.context_uses_kubelogin(kubeconfig, "kind-laptop")
    assert not kube.context_uses_kubelogin(kubeconfig, "no-such-context")


def test_aks_credentials_converts_an_entra_id_context_for_the_configured_login(tmp_path, capsys):
    view = json.dumps(kubeconfig_as_kubectl_shows_it(tmp_path))
    get_credentials = ("az aks get-credentials --resource-group=rg-modelship-prod "
                       "--name=aks-modelship-prod --context=aks-modelship-prod "
                       "--overwrite-existing")
    convert = "kubelogin convert-kubeconfig --login=azurecli --context=aks-modelship-prod"
    c = MockContext(config=project_config(), run={
        "az version": ok(), get_credentials: ok(), kube.KUBECONFIG_VIEW: ok(view),
        "kubelogin --version": ok("v0.1.4"), convert: ok(),
    })

    tasks.aks_credentials(c, env="prod")

    assert [call.args[0] for call in c.run.call_args_list][-2:] == ["kubelogin --version",
                                                                    convert]
    assert "is ready" in capsys.readouterr().out


def test_aks_credentials_without_kubelogin_says_how_to_install_it(tmp_path):
    view = json.dumps(kubeconfig_as_kubectl_shows_it(tmp_path))
    c = MockContext(config=project_config(), run={
        "az version": ok(), re.compile("az aks get-credentials .*"): ok(),
        kube.KUBECONFIG_VIEW: ok(view), "kubelogin --version": failed(exited=127),
    })

    with pytest.raises(Exit, match="needs kubelogin.*az aks install-cli"):
        tasks.aks_credentials(c, env="prod")


def test_aks_credentials_without_a_configured_cluster_names_the_setting():
    settings = load_settings(project_config(), "local")
    with pytest.raises(PipelineError, match="kubernetes.aks.resource_group"):
        kube.aks_credentials_command(settings)


# --- confirmation ---------------------------------------------------------------------


@pytest.mark.parametrize("environ, yes, asks", [
    ({}, False, True),
    ({}, True, False),
    ({"CI": "true"}, False, False),
    ({"TF_BUILD": "True"}, False, False),
    ({"CI": "false"}, False, True),
])
def test_prod_asks_unless_yes_or_ci(environ, yes, asks):
    prod = load_settings(project_config(), "prod")
    assert kube.needs_confirmation(prod, yes, environ) is asks
    assert kube.needs_confirmation(load_settings(project_config(), "dev"), False, {}) is False


def test_confirmation_needs_the_environment_name_typed():
    prod = load_settings(project_config(), "prod")
    kube.confirm(prod, "image", ask=lambda prompt: "prod", interactive=True)
    with pytest.raises(PipelineError, match="Nothing was applied"):
        kube.confirm(prod, "image", ask=lambda prompt: "y", interactive=True)
    with pytest.raises(PipelineError, match="pass --yes"):
        kube.confirm(prod, "image", ask=lambda prompt: "prod", interactive=False)


# --- the apply task end to end, with a stand-in kubectl ---------------------------------

STAND_IN_KUBECTL = textwrap.dedent('''\
    #!{python}
    """Plays kubectl for the tests: logs each call, answers per FAKE_KUBECTL_SCENARIO."""
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    args = sys.argv[1:]
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n")
    scenario = os.environ.get("FAKE_KUBECTL_SCENARIO", "success")
    words = [a for a in args if not a.startswith("--")]
    if not any(a.startswith("--context=") for a in args):
        sys.exit("error: no --context given")
    if words[0] == "apply":
        print("deployment.apps/digits-api configured")
    elif words == ["get"] and any(a.startswith("--filename=") for a in args):
        if scenario != "first-deploy":
            print("deployment.apps/digits-api\\nservice/digits-api")
    elif words[:2] == ["get", "replicasets"]:
        print(json.dumps({{"items": []}}))
    elif words[:2] == ["get", "configmaps"]:
        print("configmap/digits-api-config-0123456789")
    elif words[0] == "delete":
        print("\\n".join(f"{{name}} deleted" for name in words[1:]))
    elif words[:2] == ["rollout", "status"]:
        state = os.environ["FAKE_KUBECTL_LOG"] + ".rollouts"
        count = int(open(state).read()) if os.path.exists(state) else 0
        open(state, "w").write(str(count + 1))
        if scenario == "rollout-fails" and count == 0:
            sys.exit('error: deployment "digits-api" exceeded its progress deadline')
        print('deployment "digits-api" successfully rolled out')
    elif words[:2] == ["rollout", "undo"]:
        print("deployment.apps/digits-api rolled back")
    elif words[:2] == ["get", "events"]:
        print("Warning  BackOff  pod/digits-api-7d9  Back-off restarting failed container")
    elif words[:2] == ["get", "pods"]:
        print("digits-api-7d9   0/1   CrashLoopBackOff")
    elif words[:3] == ["get", "secret", "digits-api-key"]:
        if scenario == "secret-unreadable":
            sys.exit('secrets "digits-api-key" is forbidden')
        print("c21va2Uta2V5", end="")  # base64 of the key the Service expects
    elif words[0] == "port-forward":
        local_port = int(words[-1].split(":")[0])
        label = 3 if scenario == "wrong-model" else 7
        v2_label = 3 if scenario in ("wrong-model", "wrong-v2") else 7

        class Service(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/v2/models/"):
                    self.answer({{
                        "name": "digits",
                        "inputs": [{{"name": "input", "datatype": "FP32", "shape": [-1, 64]}}],
                        "outputs": [{{"name": "label", "datatype": "INT64", "shape": [-1]}}]}})
                else:
                    self.answer({{"status": "ready"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("X-API-Key") != "smoke-key":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.endswith("/infer"):
                    assert body["inputs"][0]["shape"] == [1, 64], body
                    self.answer({{"model_name": "digits", "outputs": [
                        {{"name": "label", "datatype": "INT64", "shape": [1],
                          "data": [v2_label]}}]}})
                else:
                    self.answer({{"predictions": [label]}})

        HTTPServer(("127.0.0.1", local_port), Service).serve_forever()
    else:
        sys.exit("stand-in kubectl: unexpected call " + " ".join(args))
''')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def stand_in_kubectl(tmp_path, monkeypatch, build_dir):
    """A kubectl on PATH, a rendered dev folder, and the model's golden sample."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(STAND_IN_KUBECTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.delenv("FAKE_KUBECTL_SCENARIO", raising=False)
    monkeypatch.delenv("MODELSHIP_API_KEY", raising=False)
    record = fake_record()
    release_record.save(record)
    config = project_config(smoke_local_port=free_port())
    render_for(load_settings(config, "dev"), record)

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    config.run.in_stream = False  # pytest owns stdin; kubectl reads none here
    return invoke.Context(config), calls


def verbs(calls: list[str]) -> list[str]:
    return [" ".join(w for w in call.split() if not w.startswith("--"))
            for call in calls]


def test_apply_task_rolls_out_and_smoke_tests_through_the_service(stand_in_kubectl, capsys):
    c, calls = stand_in_kubectl
    tasks.apply(c, env="dev")
    # get, the server-side dry run, the apply...
    assert verbs(calls())[:5] == ["get", "apply", "apply", "rollout status deployment/digits-api",
                                  "get secret digits-api-key"]
    assert "--dry-run=server" in calls()[1]
    assert verbs(calls())[5].startswith("port-forward service/digits-api ")
    assert verbs(calls())[6:] == ["get replicasets", "get configmaps",
                                  "delete configmap/digits-api-config-0123456789"]
    assert all("--context=aks-modelship-dev --namespace=digits-dev" in call for call in calls())
    assert "--address=127.0.0.1" in calls()[5]
    out = capsys.readouterr().out
    assert "smoke test passed" in out
    assert f"rolled out crmodelshipdev.azurecr.io/digits-api@{DIGEST}" in out


def test_apply_task_undoes_a_failed_rollout_and_exits_non_zero(stand_in_kubectl, monkeypatch,
                                                              capsys):
    c, calls = stand_in_kubectl
    monkeypatch.setenv("FAKE_KUBECTL_SCENARIO", "rollout-fails")
    with pytest.raises(invoke.Exit) as failure:
        tasks.apply(c, env="dev")
    assert failure.value.code == 1
    assert "rolled back to the previous revision" in str(failure.value.message)
    assert verbs(calls()) == [
        "get", "apply", "apply", "rollout status deployment/digits-api", "get events",
        "get pods", "rollout undo deployment/digits-api", "rollout status deployment/digits-api"]
    assert "Back-off restarting failed container" in capsys.readouterr().out


def test_apply_task_rolls_back_when_the_service_scores_wrong(stand_in_kubectl, monkeypatch):
    c, calls = stand_in_kubectl
    monkeypatch.setenv("FAKE_KUBECTL_SCENARIO", "wrong-model")
    with pytest.raises(invoke.Exit, match=r"smoke test .*predicted 3 .*rolled back"):
        tasks.apply(c, env="dev")
    assert verbs(calls())[-2:] == [
        "rollout undo deployment/digits-api", "rollout status deployment/digits-api"]


def test_apply_task_rolls_back_when_v2_infer_scores_wrong(stand_in_kubectl, monkeypatch):
    c, calls = stand_in_kubectl
    monkeypatch.setenv("FAKE_KUBECTL_SCENARIO", "wrong-v2")
    with pytest.raises(invoke.Exit, match=r"v2 infer disagrees.*predicted 3 .*rolled back"):
        tasks.apply(c, env="dev")
    assert verbs(calls())[-2:] == [
        "rollout undo deployment/digits-api", "rollout status deployment/digits-api"]


def test_dry_apply_prints_every_command_and_runs_none(stand_in_kubectl, capsys):
    c, calls = stand_in_kubectl
    c.config.run.dry = True
    tasks.apply(c, env="dev")
    out = capsys.readouterr().out
    assert calls() == []
    assert "kubectl --context=aks-modelship-dev --namespace=digits-dev apply" in out
    assert "rollout status deployment/digits-api --timeout=300s" in out
    assert "[dry] would port-forward service/digits-api" in out
    assert "rolled out" not in out and "[dry] would roll out" in out
    # The prune selector and allowlist are shown, on the apply command and in words.
    assert ("--prune --selector=app.kubernetes.io/instance=digits-api-dev,"
            "app.kubernetes.io/managed-by=modelship --prune-allowlist=apps/v1/Deployment") in out
    assert "[dry] would prune objects labelled" in out and "networking.k8s.io/v1/Ingress" in out
    assert "[dry] would delete this app's ConfigMaps that no ReplicaSet refers to" in out


def test_prod_apply_without_yes_outside_ci_is_refused_when_nobody_can_answer(
        stand_in_kubectl, monkeypatch):
    c, calls = stand_in_kubectl
    for name in ("CI", "TF_BUILD"):
        monkeypatch.delenv(name, raising=False)
    # prod refuses unverified releases first (require_verified): this is about the question.
    c.config.modelship["environments"]["prod"]["provenance"] = {"require_verified": False}
    render_for(load_settings(c.config, "prod"), release_record.load())
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: nobody to ask
    with pytest.raises(invoke.Exit, match="needs a confirmation.*--yes"):
        tasks.apply(c, env="prod")
    assert calls() == []
    with pytest.raises(invoke.Exit, match="needs a confirmation.*--yes"):
        tasks.apply(c, env="prod", strategy="canary")
    assert calls() == []


def test_smoke_key_from_the_environment_skips_reading_the_secret(stand_in_kubectl, monkeypatch):
    c, calls = stand_in_kubectl
    monkeypatch.setenv("MODELSHIP_API_KEY", "smoke-key")
    tasks.apply(c, env="dev")
    assert not any("secret" in call for call in calls())


def test_without_a_key_the_smoke_test_says_how_to_give_one(stand_in_kubectl, monkeypatch):
    c, calls = stand_in_kubectl
    monkeypatch.setenv("FAKE_KUBECTL_SCENARIO", "secret-unreadable")
    with pytest.raises(invoke.Exit, match="401.*rolled back.*Set MODELSHIP_API_KEY"):
        tasks.apply(c, env="dev")


def test_the_secret_value_is_never_printed(stand_in_kubectl, monkeypatch, capsys):
    c, calls = stand_in_kubectl
    tasks.apply(c, env="dev")
    out = capsys.readouterr()
    assert "smoke-key" not in out.out + out.err
    assert "c21va2Uta2V5" not in out.out + out.err


@pytest.mark.parametrize("old_key, new_place", [
    ("kubernetes_version", "kubernetes.version"),
    ("aks", "kubernetes.aks"),
])
def test_a_setting_left_in_its_old_place_is_refused_with_its_new_one(old_key, new_place):
    config = project_config()
    config["modelship"]["environments"]["dev"]["deployment"][old_key] = "1.30"

    with pytest.raises(PipelineError, match=f"deployment.{old_key}.*Move it to {new_place}"):
        load_settings(config, "dev")


def test_the_kubernetes_version_and_aks_cluster_come_from_the_kubernetes_section():
    settings = load_settings(project_config(), "staging")

    assert settings.kubernetes.version == "1.31"
    assert (settings.kubernetes.aks.resource_group, settings.kubernetes.aks.cluster) == (
        "rg-modelship-prod", "aks-modelship-staging")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_real_kubectl_accepts_every_command_apply_and_diff_send(dev, tmp_path):
    """Each command line is parsed by the real kubectl, pointed at a port nothing listens on:
    it must get as far as calling the API server, not stop at a flag it does not know."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": dev.kubernetes.context,
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": dev.kubernetes.context,
                      "context": {"cluster": "nowhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {"token": "not-a-token"}}],
    }))
    commands = dict(kube.apply_commands(dev), diff=kube.diff_command(dev),
                    delete=kube.kubectl(dev, "delete", *kube.rendered_objects(dev),
                                        "--ignore-not-found", "--wait=false"))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for name, command in commands.items():
        argv = shlex.split(command)
        argv[0] = shutil.which("kubectl")
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, name
        assert "unknown flag" not in result.stderr and "invalid argument" not in result.stderr, \
            f"{name}: {result.stderr}"
        assert "127.0.0.1:9" in result.stderr, f"{name}: {result.stderr}"


# --- rollback: what it goes back to -----------------------------------------------------


def revision_listing(*revisions: tuple[int, str, str | None]) -> str:
    return json.dumps({"items": [
        {"metadata": {"annotations": {kube.REVISION_ANNOTATION: str(number)}},
         "spec": {"template": {
             "metadata": {"annotations": {"modelship.ai/git-revision": commit}
                          if commit else {}},
             "spec": {"containers": [{"name": "sidecar", "image": "other"},
                                     {"name": "digits-api", "image": image}]}}}}
        for number, image, commit in revisions]})


def test_the_previous_revision_is_the_one_before_the_newest_replicaset(dev):
    c = cluster(dev, replicasets=ok(revision_listing(
        (7, "repo@sha256:seven", "c7"), (3, "repo@sha256:three", None),
        (6, "repo@sha256:six", "c6"))))
    assert kube.previous_revision(c, dev) == {
        "revision": "6", "image": "repo@sha256:six", "commit": "c6", "model_sha256": None}
    alone = cluster(dev, replicasets=ok(revision_listing((1, "repo@sha256:one", "c1"))))
    assert kube.previous_revision(alone, dev) is None


def test_rollback_undoes_to_the_verified_revision_and_without_one_says_so(dev):
    from modelship.release_targets import KubernetesTarget, PreviousRelease

    commands = kube.apply_commands(dev)
    to_six = commands["undo"] + " --to-revision=6"
    c = MockContext(run={to_six: ok(), commands["undo_wait"]: ok()})
    summary = KubernetesTarget(c, dev).rollback(
        PreviousRelease("repo@sha256:six", "c6", "m6", "6"), dry=False, echo=lambda line: None)
    assert ran(c) == [to_six, commands["undo_wait"]] and "revision 6" in summary
    alone = cluster(dev, replicasets=ok(revision_listing((1, "repo@sha256:one", "c1"))))
    with pytest.raises(PipelineError, match="no earlier revision"):
        KubernetesTarget(alone, dev).previous_release()


def test_prod_without_a_public_key_is_refused_before_any_kubectl_call(stand_in_kubectl):
    c, calls = stand_in_kubectl
    render_for(load_settings(c.config, "prod"), release_record.load())
    with pytest.raises(invoke.Exit, match=r"require_verified is on for 'prod'.*"
                                          r"invoke provenance.keygen --env=prod"):
        tasks.apply(c, env="prod", yes=True)
    assert calls() == []
