"""`invoke model.check`: latest published model versus the deployed one, and what it tells CI."""

import json

import docker
import pytest
from invoke import Config, Exit, MockContext, Result

from modelship import model_check, names
from modelship.errors import PipelineError
from modelship.model_check import Comparison, ModelRef
from modelship.model_store import FileStore
from modelship.release_targets import DockerTarget, KubernetesTarget
from modelship.settings import load_settings

OLD = "a" * 64
NEW = "b" * 64


@pytest.fixture(scope="module")
def model_check_task(tasks_namespace):
    return tasks_namespace["model.check"]


def publish_layout(root, version, sha256):
    """The store layout model.publish leaves: version metadata first, latest pointer last."""
    store = FileStore(root)
    store.write_bytes(f"{version}/metadata.json",
                      json.dumps({"name": "digits", "version": version, "sha256": sha256}).encode())
    store.write_bytes("latest.json", json.dumps({"version": version}).encode())
    return store


def deployment_json(template_sha=None, metadata_sha=None, version="1.0"):
    metadata = {"name": "digits-api", "annotations": {}}
    if metadata_sha:
        metadata["annotations"] = {"modelship.ai/model-sha256": metadata_sha,
                                   "modelship.ai/model-version": version}
    template_annotations = {"modelship.ai/model-sha256": template_sha} if template_sha else {}
    return json.dumps({
        "kind": "Deployment", "metadata": metadata,
        "spec": {"template": {"metadata": {"annotations": template_annotations}}},
    })


def config_for(store_root, runtime="kubernetes"):
    """An invoke config with one environment, `test`, whose model store is a folder."""
    return Config(overrides={"modelship": {
        "default_env": "test", "app_name": "digits-api", "model_name": "digits",
        "defaults": {
            "runtime": runtime,
            "model_store": {"uri": f"file://{store_root}"},
            "image": {"repository": "digits-api", "base": "python:3.11-slim@sha256:" + "ab" * 32},
            "registry": {"host": "registry.invalid"},
            "kubernetes": {"context": "aks-test", "namespace": "digits-test"},
            "deployment": {"replicas": 1},
        },
        "environments": {"test": {}},
    }})


@pytest.fixture
def outside_ci(monkeypatch):
    monkeypatch.delenv("TF_BUILD", raising=False)


# --- the library --------------------------------------------------------------------------


def test_latest_published_follows_the_latest_pointer(tmp_path):
    publish_layout(tmp_path, "2024.1", OLD)
    store = publish_layout(tmp_path, "2024.2", NEW)

    assert model_check.latest_published(store) == ModelRef("2024.2", NEW)


def test_nothing_published_says_to_publish(tmp_path):
    with pytest.raises(PipelineError, match="model.publish"):
        model_check.latest_published(FileStore(tmp_path))


def test_latest_without_valid_sha256_is_refused(tmp_path):
    store = publish_layout(tmp_path, "2024.1", "not-a-digest")

    with pytest.raises(PipelineError, match="no valid sha256"):
        model_check.latest_published(store)


def test_deployed_model_is_read_from_the_environments_cluster(tmp_path):
    settings = load_settings(config_for(tmp_path), "test")
    c = MockContext(run=Result(stdout=deployment_json(NEW, NEW, version="2024.2")))

    assert KubernetesTarget(c, settings).deployed_model() == ModelRef("2024.2", NEW)
    command = c.run.call_args.args[0]
    assert command.startswith("kubectl --context=aks-test --namespace=digits-test get "
                              "deployment/digits-api")
    assert "--ignore-not-found" in command


def test_pod_template_wins_after_a_rolled_back_rollout(tmp_path):
    # `rollout undo` restored the old pod template; the Deployment's annotation still names
    # the model of the failed rollout. Pods run OLD.
    settings = load_settings(config_for(tmp_path), "test")
    c = MockContext(run=Result(stdout=deployment_json(template_sha=OLD, metadata_sha=NEW)))

    assert KubernetesTarget(c, settings).deployed_model() == ModelRef("", OLD)


def test_no_deployment_means_nothing_deployed(tmp_path):
    settings = load_settings(config_for(tmp_path), "test")

    assert KubernetesTarget(MockContext(run=Result(stdout="")), settings).deployed_model() is None


def test_deployment_without_model_annotation_counts_as_unknown(tmp_path):
    settings = load_settings(config_for(tmp_path), "test")
    c = MockContext(run=Result(stdout=deployment_json()))

    assert KubernetesTarget(c, settings).deployed_model() is None


def test_unreachable_cluster_is_an_error_naming_the_context(tmp_path):
    settings = load_settings(config_for(tmp_path), "test")
    c = MockContext(run=Result(exited=1, stderr="Unable to connect to the server: dial tcp"))

    with pytest.raises(PipelineError, match="aks-test.*Unable to connect") as error:
        KubernetesTarget(c, settings).deployed_model()
    assert "aks.credentials --env=test" in str(error.value)


class FakeContainers:
    def __init__(self, containers):
        self.containers = containers

    def get(self, name):
        if name not in self.containers:
            raise docker.errors.NotFound(f"No such container: {name}")
        return self.containers[name]


class FakeClient:
    def __init__(self, **containers):
        self.containers = FakeContainers(containers)


class FakeContainer:
    def __init__(self, labels):
        self.labels = labels


def test_local_deployment_is_read_from_the_container_labels(tmp_path, monkeypatch):
    settings = load_settings(config_for(tmp_path, runtime="docker"), "test")
    client = FakeClient(**{"digits-api-test": FakeContainer({
        "ai.modelship.model.sha256": NEW, "ai.modelship.model.version": "2024.2"})})
    monkeypatch.setattr("modelship.engine.docker_client", lambda *a, **k: client)
    assert DockerTarget(settings).deployed_model() == ModelRef("2024.2", NEW)

    monkeypatch.setattr("modelship.engine.docker_client", lambda *a, **k: FakeClient())
    assert DockerTarget(settings).deployed_model() is None


def test_comparison_is_by_sha256_not_by_version_name():
    republished = Comparison("prod", "digits", ModelRef("2024.2", NEW), ModelRef("2024.2", OLD))
    same = Comparison("prod", "digits", ModelRef("2024.2", NEW), ModelRef("renamed", NEW))

    assert republished.differs
    assert not same.differs
    assert "invoke deploy --env=prod" in republished.summary()
    assert same.summary().startswith("prod runs the latest published digits model, 2024.2")


def test_pipeline_variables_are_output_variables():
    comparison = Comparison("prod", "digits", ModelRef("2024.2", NEW), None)

    assert model_check.pipeline_variables(comparison) == [
        "##vso[task.setvariable variable=changed;isOutput=true]true",
        "##vso[task.setvariable variable=latestVersion;isOutput=true]2024.2",
        f"##vso[task.setvariable variable=latestSha256;isOutput=true]{NEW}",
        "##vso[task.setvariable variable=deployedSha256;isOutput=true]",
    ]


def test_a_value_that_could_inject_a_logging_command_is_refused():
    comparison = Comparison("prod", "digits", ModelRef("v1]##vso[task.complete", NEW), None)

    with pytest.raises(PipelineError):
        model_check.pipeline_variables(comparison)


def test_tf_build_detection():
    assert names.running_in_azure_pipelines({"TF_BUILD": "True"})
    assert not names.running_in_azure_pipelines({})


# --- the task: exit codes on a laptop, output variables in Azure Pipelines -----------------


def test_task_exits_0_when_the_latest_model_runs(model_check_task, tmp_path, outside_ci, capsys):
    publish_layout(tmp_path, "2024.2", NEW)
    c = MockContext(config=config_for(tmp_path), run=Result(stdout=deployment_json(NEW, NEW)))

    model_check_task(c, env="test")

    assert "test runs the latest published digits model" in capsys.readouterr().out


def test_task_exits_1_when_they_differ(model_check_task, tmp_path, outside_ci, capsys):
    publish_layout(tmp_path, "2024.2", NEW)
    c = MockContext(config=config_for(tmp_path), run=Result(stdout=deployment_json(OLD, OLD)))

    with pytest.raises(Exit) as failure:
        model_check_task(c, env="test")

    assert failure.value.code == 1
    out = capsys.readouterr().out
    assert "but the latest published is 2024.2" in out
    assert "##vso" not in out


def test_task_exits_2_when_it_cannot_tell(model_check_task, tmp_path, outside_ci):
    c = MockContext(config=config_for(tmp_path / "empty"), run=Result(stdout=""))

    with pytest.raises(Exit) as failure:
        model_check_task(c, env="test")

    assert failure.value.code == 2
    assert "No model has been published" in str(failure.value.message)


def test_task_sets_output_variables_under_azure_pipelines(model_check_task, tmp_path,
                                                          monkeypatch, capsys):
    monkeypatch.setenv("TF_BUILD", "True")
    publish_layout(tmp_path, "2024.2", NEW)
    c = MockContext(config=config_for(tmp_path), run=Result(stdout=deployment_json(OLD, OLD)))

    model_check_task(c, env="test")  # no Exit: the stage condition decides

    assert "##vso[task.setvariable variable=changed;isOutput=true]true" in \
        capsys.readouterr().out.splitlines()


def test_task_reads_the_local_container_for_docker_runtime(model_check_task, tmp_path,
                                                           outside_ci, monkeypatch, capsys):
    publish_layout(tmp_path, "2024.2", NEW)
    client = FakeClient(**{"digits-api-test": FakeContainer({"ai.modelship.model.sha256": NEW})})
    monkeypatch.setattr("modelship.engine.docker_client", lambda *a, **k: client)

    model_check_task(MockContext(config=config_for(tmp_path, runtime="docker")), env="test")

    assert "test runs the latest published digits model, 2024.2" in capsys.readouterr().out
