"""The built wheel works on its own: installed into a fresh virtualenv outside this checkout,
`modelship init` and the tasks run in a repository that never saw the toolkit's source."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support.installed import build_wheel, run, venv_with

DIGEST = "sha256:" + "b" * 64


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    return venv_with(wheel, tmp_path_factory.mktemp("venv") / "env")


def test_the_wheel_carries_the_data_the_tasks_read(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("modelship/data/templates/k8s/deployment.yaml.j2",
                 "modelship/data/ci/azure-pipelines.yml", "modelship/data/checkov.yaml",
                 "modelship/data/azurite/package-lock.json",
                 "modelship/data/tools/cluster/kwok-stages.yaml",
                 "modelship/data/project/invoke.yaml.j2", "modelship/data/project/Dockerfile",
                 "modelship_serving/golden.py", "modelship/schemas/model-metadata.schema.json"):
        assert name in names, name


def test_init_and_the_tasks_run_from_the_installed_wheel(venv, tmp_path):
    project = tmp_path / "recommender"
    project.mkdir()
    (project / "app.py").write_text(textwrap.dedent("""
        from flask import Flask
        app = Flask(__name__)
    """))
    (project / "requirements.txt").write_text("flask>=3.0\n")
    python = venv / "bin/python"
    location = run(python, "-c", "import modelship; print(modelship.__file__)", cwd=project)
    assert location.startswith(str(venv)), location

    assert "wrote      tasks.py" in run(venv / "bin/modelship", "init", cwd=project)
    assert "no drift" in run(venv / "bin/modelship", "init", "--check", cwd=project)
    assert "every invoke call names existing tasks" in run(python, "-m", "invoke", "ci.check",
                                                           cwd=project)
    run(python, "-m", "invoke", "render", "--env=dev", "--image",
        f"registry.example.com/recommender@{DIGEST}", cwd=project)
    assert (project / "build/k8s/dev/deployment.yaml").is_file()
