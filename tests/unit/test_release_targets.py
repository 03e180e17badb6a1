"""The runtime is chosen once: stages ask the release target, never `settings.runtime`."""

from __future__ import annotations

import ast
import re

import pytest
from invoke import Config, MockContext

from modelship import outcome, stages
from modelship.errors import PipelineError
from modelship.release_targets import DockerTarget, KubernetesTarget, release_target
from modelship.settings import PROJECT_ROOT, load_settings


def settings_for(runtime: str):
    config = Config(overrides={"modelship": {
        "default_env": "test", "app_name": "digits-api", "model_name": "digits",
        "defaults": {
            "runtime": runtime,
            "model_store": {"uri": "file:///tmp/modelship-no-store"},
            "image": {"repository": "digits-api", "base": "python:3.11-slim@sha256:" + "ab" * 32},
            "registry": {"host": "registry.invalid"},
            "kubernetes": {"context": "aks-test", "namespace": "digits-test"},
            "deployment": {"replicas": 1, "port": 18099},
        },
        "environments": {"test": {}},
    }})
    return load_settings(config, "test", environ={})


def python_sources():
    return sorted((PROJECT_ROOT / "modelship").rglob("*.py")) + [PROJECT_ROOT / "tasks.py"]


def test_the_target_follows_the_runtime():
    assert isinstance(release_target(None, settings_for("docker")), DockerTarget)
    assert isinstance(release_target(None, settings_for("kubernetes")), KubernetesTarget)


def test_only_the_chooser_reads_the_runtime():
    readers = [path.relative_to(PROJECT_ROOT).as_posix() for path in python_sources()
               if re.search(r"\bsettings\.runtime\b", path.read_text())]
    assert readers == ["modelship/release_targets.py"]


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(f"{node.module or ''}.{alias.name}".strip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("source", ["modelship/stages.py", "modelship/tasks.py"])
def test_stages_and_tasks_name_no_runtime_module(source):
    imported = imported_modules(PROJECT_ROOT / source)
    runtime_modules = [name for name in imported
                       if re.search(r"(^|\.)(kube|local_\w+)$", name)]
    assert runtime_modules == []


@pytest.fixture
def quiet_stages(monkeypatch):
    """Every stage of deploy up to date, and render a failure if it is called at all."""
    for name in ("fetch_model", "build", "test", "push", "apply"):
        monkeypatch.setattr(stages, name, lambda *a, _name=name, **k: outcome.up_to_date(
            f"{_name}: up to date"))
    rendered = []
    monkeypatch.setattr(stages, "render", lambda *a, **k: rendered.append(1) or
                        outcome.up_to_date("rendered"))
    monkeypatch.setattr("modelship.local_services.all_answer", lambda ports: True)
    return rendered


def test_deploy_renders_no_manifests_for_the_docker_runtime(quiet_stages):
    lines = []
    result = stages.deploy(MockContext(), settings_for("docker"), dry=False, echo=lines.append)

    assert quiet_stages == []
    assert "render: not needed for runtime docker, which reads no manifests" in lines
    assert result.status == outcome.UP_TO_DATE


def test_deploy_renders_for_kubernetes(quiet_stages):
    stages.deploy(MockContext(), settings_for("kubernetes"), dry=False, echo=lambda line: None)

    assert quiet_stages == [1]


def test_a_dry_docker_deploy_lists_the_stages_it_would_run(quiet_stages):
    result = stages.deploy(MockContext(), settings_for("docker"), dry=True,
                           echo=lambda line: None)

    assert result.line == ("[dry] deploy --env=test would run fetch-model, build, test, push, "
                           "apply")


def test_diff_for_the_docker_runtime_says_there_is_nothing_to_compare():
    line = stages.diff(MockContext(), settings_for("docker"), dry=False)

    assert line.startswith("nothing to compare: runtime docker reads no manifests")


def test_cluster_credentials_are_refused_for_the_docker_runtime():
    with pytest.raises(PipelineError, match="runtime docker.*no cluster"):
        stages.aks_credentials(MockContext(), settings_for("docker"), dry=True,
                               echo=lambda line: None)
