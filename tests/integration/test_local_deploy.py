"""`invoke deploy --env=local` end to end, for real: Azurite, Docker Engine, registry."""

from __future__ import annotations

import json
import re

import pytest
import requests

from modelship import local_runtime
from modelship.release_record import load as read_record
from modelship.errors import PipelineError

pytestmark = pytest.mark.integration


def deployment_containers(client, settings):
    return client.containers.list(
        all=True, filters={"label": [f"{local_runtime.ROLE_LABEL}=deployment",
                                     f"ai.modelship.env={settings.env}"]},
    )


def test_deploy_twice_serves_the_published_model_pulled_from_the_registry(
    run_invoke, published_model, docker_client, local_settings
):
    base_url = f"http://127.0.0.1:{local_settings.deployment.port}"
    for attempt in (1, 2):
        result = run_invoke("deploy", "--env=local")
        assert result.returncode == 0, f"attempt {attempt}: {result.stderr}\n{result.stdout}"
        if attempt == 1:  # an earlier test may have deployed this very build already
            assert re.search(r"deploy --env=local: (done|up to date)", result.stdout)
        else:
            # Nothing changed: every stage says so, and nothing ran again.
            assert "deploy --env=local: up to date, nothing changed" in result.stdout
            table = result.stdout[result.stdout.index("stage "):].splitlines()
            assert [row.split()[0] for row in table[1:7]] == [
                "fetch-model", "build", "test", "push", "render", "apply"]
            # The docker runtime reads no manifests: render has nothing to do for it.
            assert all("up to date" in row or row.split()[:3] == ["render", "not", "needed"]
                       for row in table[1:7]), table
            assert "\x1b[" not in result.stdout  # not a terminal: no ANSI codes

        record = read_record()
        pushed = record.require_push("local")
        containers = deployment_containers(docker_client, local_settings)
        assert [c.name for c in containers] == [local_runtime.container_name(local_settings)]
        running = containers[0]
        # The container runs the image by its registry digest: it came through a pull.
        assert running.attrs["Config"]["Image"] == pushed.reference
        assert pushed.reference.startswith(f"{local_settings.registry.host}/")

        metadata = record.model.as_metadata()
        assert metadata["version"] == published_model
        golden = metadata["golden"][0]
        response = requests.post(f"{base_url}/score", json={"instances": [golden["instance"]]},
                                 timeout=10)
        assert response.status_code == 200
        assert response.json()["predictions"] == [golden["label"]]
        version = requests.get(f"{base_url}/version", timeout=5).json()
        assert version["model"]["sha256"] == metadata["sha256"]

    status = run_invoke("status", "--env=local")
    assert status.returncode == 0, status.stderr
    assert pushed.digest in status.stdout and metadata["sha256"] in status.stdout
    assert "ready replicas   1" in status.stdout

    # Nothing left behind: no contract-test containers, no previous deployment.
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{local_runtime.ROLE_LABEL}=contract-test"}
    )
    assert leftovers == []


def test_a_failing_new_container_leaves_the_previous_deployment_serving(
    run_invoke, published_model, docker_client, local_settings
):
    assert run_invoke("deploy", "--env=local").returncode == 0
    base_url = f"http://127.0.0.1:{local_settings.deployment.port}"
    # A pushed image that exits at once: the base image runs bare python3 with no stdin.
    broken = f"{local_settings.image_repository}:broken"
    docker_client.images.get(local_settings.image.base).tag(broken)
    from modelship.registry import login, read_push_stream

    auth = login(docker_client, local_settings)
    digest, _ = read_push_stream(docker_client.api.push(
        broken, stream=True, decode=True, auth_config=auth))
    reference = f"{local_settings.image_repository}@{digest}"

    with pytest.raises(PipelineError) as failure:
        local_runtime.deploy(docker_client, local_settings, reference, auth,
                             read_record().model.as_metadata(), print)
    assert "previous deployment kept serving throughout" in str(failure.value)
    assert requests.get(f"{base_url}/readyz", timeout=5).status_code == 200
    names = [c.name for c in deployment_containers(docker_client, local_settings)]
    assert names == [local_runtime.container_name(local_settings)]


def _one_clear_line(result, expected: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.error_lines) == 1, result.stderr
    assert expected in result.error_lines[0]


def test_wrong_registry_password_is_one_clear_line(run_invoke, published_model):
    assert run_invoke("fetch-model").returncode == 0
    assert run_invoke("build", "--force").returncode == 0
    result = run_invoke("push", "--force", env={"REGISTRY_USERNAME": "modelship",
                                     "REGISTRY_PASSWORD": "not-the-password"})
    _one_clear_line(result, "refused the login")
    assert "not-the-password" not in result.stdout + result.stderr


def test_unreachable_model_store_is_one_clear_line(run_invoke, tmp_path, local_stack):
    config = tmp_path / "unreachable.yaml"
    config.write_text(json.dumps({"modelship": {"environments": {"local": {
        "model_store": {"account_url": "http://127.0.0.1:9/devstoreaccount1"}}}}}))
    result = run_invoke("fetch-model", config=config)
    _one_clear_line(result, "Cannot reach the model store")


def test_model_missing_from_store_is_one_clear_line(run_invoke, tmp_path, local_stack):
    config = tmp_path / "missing.yaml"
    config.write_text(json.dumps({"modelship": {"environments": {"local": {
        "model_store": {"uri": "az://models/never-published"}}}}}))
    result = run_invoke("fetch-model", config=config)
    _one_clear_line(result, "No model has been published")


def test_unknown_environment_is_one_clear_line(run_invoke):
    result = run_invoke("deploy", "--env=nope")
    _one_clear_line(result, "Unknown environment 'nope'")
    assert "local" in result.error_lines[0]
