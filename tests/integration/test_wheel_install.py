"""The built wheel works on its own: installed into a fresh virtualenv outside this checkout,
`modelship init` and the tasks run in a repository that never saw the toolkit's source."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.support.checkouts import fresh_clone

DIGEST = "sha256:" + "b" * 64


def run(*command, cwd: Path) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built in a clone: setuptools leaves build/ and *.egg-info where it builds.
    clone = fresh_clone(tmp_path_factory.mktemp("wheel-source") / "modelship")
    out = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", out, clone, cwd=clone)
    return next(out.glob("modelship-*.whl"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtualenv holding the wheel; its dependencies are read from this .venv's
    site-packages (a path in a .pth file), so nothing is downloaded."""
    folder = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", folder, cwd=folder.parent)
    run(folder / "bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
        wheel, cwd=folder.parent)
    site = Path(run(folder / "bin/python", "-c", "import sysconfig; print(sysconfig."
                    "get_paths()['purelib'])", cwd=folder.parent).strip())
    (site / "zz-host-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder


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
