"""`modelship init` in a repository the toolkit has never seen, through the real command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelship import project_init
from modelship.stage_files import PROJECT_ROOT

BIN = Path(sys.executable).parent
FLASK_APP = textwrap.dedent("""
    from flask import Flask, jsonify, request

    app = Flask(__name__)


    @app.post("/predict")
    def predict():
        return jsonify(labels=[0 for _ in request.get_json()["rows"]])
""")
CONTRACT = ["--score-path", "/predict", "--request-key", "rows", "--predictions-key", "labels"]
DIGEST = "sha256:" + "a" * 64


def run(program: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("INVOKE_")}
    result = subprocess.run([str(BIN / program), *args], cwd=cwd, capture_output=True,
                            text=True, env=environment, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def repository(tmp_path) -> Path:
    """A Flask app's repository: its own route, its own requirements, no health endpoint."""
    root = tmp_path / "Shop_Recommender"
    root.mkdir()
    (root / "app.py").write_text(FLASK_APP)
    (root / "requirements.txt").write_text("flask>=3.0\n")
    (root / ".gitignore").write_text("*.log")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_init_writes_every_file_and_twice_changes_nothing(repository):
    first = run("modelship", "init", *CONTRACT, cwd=repository)
    assert "wrote      invoke.yaml" in first.stdout
    written = snapshot(repository)
    for name in ("tasks.py", "invoke.yaml", "Dockerfile", ".dockerignore",
                 "requirements/image.in", "templates/k8s/deployment.yaml.j2",
                 "ci/azure-pipelines.yml", "ci/templates/build-job.yml"):
        assert name in written, name
    assert (repository / ".gitignore").read_text() == "*.log\n/build/\n/.local/\n"
    assert "-r ../requirements.txt" in (repository / "requirements/image.in").read_text()

    second = run("modelship", "init", *CONTRACT, cwd=repository)
    assert "nothing changed" in second.stdout
    assert snapshot(repository) == written


def test_an_existing_file_is_kept_unless_forced(repository):
    (repository / "Dockerfile").write_text("FROM scratch\n")
    kept = run("modelship", "init", *CONTRACT, cwd=repository)
    assert "kept       Dockerfile (it exists; --force overwrites it)" in kept.stdout
    assert (repository / "Dockerfile").read_text() == "FROM scratch\n"
    forced = run("modelship", "init", "--force", *CONTRACT, cwd=repository)
    assert "overwrote  Dockerfile" in forced.stdout
    assert (repository / "Dockerfile").read_text() != "FROM scratch\n"


def test_dry_run_lists_the_files_and_writes_nothing(repository):
    before = snapshot(repository)
    result = run("modelship", "init", "--dry-run", cwd=repository)
    assert "would write     invoke.yaml" in result.stdout
    assert "would add  /build/, /.local/ to .gitignore" in result.stdout
    assert snapshot(repository) == before


def test_check_reports_no_drift_after_init_and_names_a_changed_file(repository):
    run("modelship", "init", *CONTRACT, cwd=repository)
    assert "no drift" in run("modelship", "init", "--check", cwd=repository).stdout
    template = repository / "templates/k8s/service.yaml.j2"
    template.write_text(template.read_text() + "# edited\n")
    (repository / "ci/templates/setup-steps.yml").unlink()
    drifted = run("modelship", "init", "--check", cwd=repository, check=False)
    assert drifted.returncode == 1
    assert "templates/k8s/service.yaml.j2: differs" in drifted.stdout
    assert "ci/templates/setup-steps.yml: missing" in drifted.stdout


@pytest.mark.subprocess_project_code
def test_the_written_project_validates_checks_its_pipeline_and_renders(repository):
    run("modelship", "init", *CONTRACT, "--port", "18380", "--health-path", "/alive",
        cwd=repository)
    listed = run("invoke", "--list", cwd=repository)
    assert "deploy" in listed.stdout and "model.publish" in listed.stdout
    assert "every invoke call names existing tasks" in run("invoke", "ci.check",
                                                           cwd=repository).stdout
    for env in ("dev", "staging", "prod"):
        run("invoke", "render", f"--env={env}", "--image",
            f"registry.example.com/shop-recommender@{DIGEST}", cwd=repository)
        deployment = (repository / "build" / "k8s" / env / "deployment.yaml").read_text()
        # The app's own liveness route; readiness from the image's server (none of its own).
        assert "path: /alive" in deployment and "path: /readyz" in deployment
    # The app's own `app` module must not hide the toolkit's code on the host side.
    assert (repository / "app.py").is_file()


def test_the_wsgi_app_is_found_in_the_usual_places(tmp_path):
    cases = {
        "app.py": ("app = Flask(__name__)\n", "app:app"),
        "wsgi.py": ("def create_app():\n    return Flask(__name__)\n", "wsgi:create_app()"),
        "app/__init__.py": ("application = make()\n", "app:application"),
    }
    for number, (file_name, (source, expected)) in enumerate(cases.items()):
        root = tmp_path / f"case{number}"
        (root / file_name).parent.mkdir(parents=True)
        (root / file_name).write_text(source)
        assert project_init.detect_wsgi(root) == expected, file_name


def test_app_flag_wins_and_no_app_found_is_one_line(tmp_path):
    (tmp_path / "web").mkdir()
    refused = run("modelship", "init", "--dry-run", cwd=tmp_path, check=False)
    assert refused.returncode == 1
    assert "Found no WSGI app" in refused.stderr and "--app module:attribute" in refused.stderr
    assert "Traceback" not in refused.stderr
    named = run("modelship", "init", "--app", "web.main:app", cwd=tmp_path)
    assert 'wsgi: "web.main:app"' in (tmp_path / "invoke.yaml").read_text()
    assert "app web.main:app" in named.stdout


def test_pyproject_dependencies_become_the_image_requirements(tmp_path):
    (tmp_path / "app.py").write_text("app = 1\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["flask>=3", "scikit-learn==1.5.0"]\n')
    assert project_init.detect_requirements(tmp_path) == ("flask>=3", "scikit-learn==1.5.0")


def test_this_repository_is_itself_an_initialized_project():
    """The sample's tasks.py, templates and pipeline are what init writes, one copy each;
    only the setup step differs (the toolkit's own runs scripts/setup.sh)."""
    answers = project_init.answers_for(PROJECT_ROOT)
    drifted = [line for line in project_init.drift(PROJECT_ROOT, answers)
               if line.startswith(("tasks.py", "templates/", "ci/"))]
    assert drifted == ["ci/templates/setup-steps.yml: differs from what this version writes"]


def test_the_projects_pipeline_installs_the_toolkit_instead_of_running_its_setup_script(
        repository):
    from modelship import __version__

    run("modelship", "init", *CONTRACT, cwd=repository)
    steps = (repository / "ci/templates/setup-steps.yml").read_text()
    assert "scripts/setup.sh" not in steps
    assert f'"modelship[serve,test]=={__version__}"' in steps
    assert "scripts/setup.sh" in (PROJECT_ROOT / "ci/templates/setup-steps.yml").read_text()


def test_a_projects_staging_and_prod_refuse_unverified_images_until_it_has_keys(repository):
    import yaml

    run("modelship", "init", *CONTRACT, cwd=repository)
    environments = yaml.safe_load((repository / "invoke.yaml").read_text())[
        "modelship"]["environments"]
    assert environments["staging"]["provenance"]["require_verified"] is True
    assert environments["prod"]["provenance"]["require_verified"] is True
    assert "provenance" not in environments["dev"]
