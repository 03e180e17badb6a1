"""The release hand-off for real: Build-side tasks in one fresh clone, `apply` in another.

The second clone gets only the files `apply` declares it reads (modelship.stage_files), the
way a Deploy stage gets only the artifacts it downloads; it has no build/model/. Services are
the real local ones: Azurite, the Docker Engine and the authenticated registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from modelship.registry_login import read_registry_login
from tests.support.checkouts import fresh_clone
from modelship.stage_files import files_for
from modelship.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def local_registry_port() -> int:
    from invoke import Config

    from modelship.settings import load_settings

    config = Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return load_settings(config, "local").local_services.registry_port


def run_invoke(clone: Path, *args: str) -> subprocess.CompletedProcess:
    # The login of whichever checkout started the shipped local registry.
    login = read_registry_login(local_registry_port())
    assert login is not None, "local.up generates the registry login"
    environ = dict(os.environ, REGISTRY_USERNAME=login.username,
                   REGISTRY_PASSWORD=login.password)
    # The agent's own checkout must win over the editable install of the main one.
    environ["PYTHONPATH"] = str(clone)
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=clone, env=environ,
                          capture_output=True, text=True, timeout=1200)


def copy_declared_inputs(task: str, env: str, source: Path, target: Path) -> list[str]:
    copied = []
    for name in files_for(task, env).reads:
        origin = source / name
        assert origin.exists(), f"the build side did not produce {name}"
        if origin.is_dir():
            shutil.copytree(origin, target / name)
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)
        copied.append(name)
    return copied


def test_apply_on_a_second_agent_serves_what_the_first_one_built(
        tmp_path, published_model, local_stack, docker_client):
    build_agent = fresh_clone(tmp_path / "build-agent")
    deploy_agent = fresh_clone(tmp_path / "deploy-agent")

    built = run_invoke(build_agent, "fetch-model", "--env=local", "build", "--env=local",
                       "test", "--env=local", "--no-unit", "push", "--env=local",
                       "render", "--env=local")
    assert built.returncode == 0, built.stderr + built.stdout

    copied = copy_declared_inputs("apply", "local", build_agent, deploy_agent)
    assert "build/record.json" in copied
    assert not (deploy_agent / "build" / "model").exists()

    # Nothing serves yet, so this apply releases for real (an earlier test of the session
    # may have released this very image, and an apply would rightly find it up to date).
    from modelship import local_runtime

    local_runtime.remove(docker_client, local_stack)
    applied = run_invoke(deploy_agent, "apply", "--env=local")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "serving" in applied.stdout and "up to date" not in applied.stdout
    assert not (deploy_agent / "build" / "model").exists()

    from modelship.release_record import load

    record = load(deploy_agent / "build" / "record.json")
    pushed = record.require_push("local")
    container = docker_client.containers.get("digits-api-local")
    assert container.attrs["Config"]["Image"] == pushed.reference
    port = local_stack.deployment.port
    version = requests.get(f"http://127.0.0.1:{port}/version", timeout=5).json()
    assert version["model"]["sha256"] == record.model.sha256
    golden = record.model.golden[0]
    scored = requests.post(f"http://127.0.0.1:{port}/score",
                           json={"instances": [golden["instance"]]}, timeout=10)
    assert scored.json()["predictions"] == [golden["label"]]


def test_a_second_checkout_logs_in_to_the_registry_the_first_one_started(tmp_path, local_stack):
    """A developer's second checkout on the same machine needs no REGISTRY_* variables."""
    other = fresh_clone(tmp_path / "other-checkout")
    environ = {name: value for name, value in os.environ.items()
               if name not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    environ["PYTHONPATH"] = str(other)
    probe = (
        "from invoke import Config\n"
        "from modelship.engine import docker_client\n"
        "from modelship.registry import login\n"
        "from modelship.settings import PROJECT_ROOT, load_settings\n"
        "config = Config(project_location=str(PROJECT_ROOT))\n"
        "config.load_project()\n"
        "auth = login(docker_client(), load_settings(config, 'local'))\n"
        "print(PROJECT_ROOT, auth and auth['username'])\n"
    )
    # The engine checks the login against the registry itself: a wrong one is refused.
    done = subprocess.run([sys.executable, "-c", probe], cwd=other, env=environ,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(other), "modelship"]
    assert not (other / ".local" / "registry" / "credentials.json").exists()
