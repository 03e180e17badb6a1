"""The image stage against the real Docker Engine and the authenticated local registry."""

from __future__ import annotations

import io
import tarfile

import pytest

from modelship import image
from modelship.release_record import load as read_record
from modelship.contract_check import run_contract
from modelship.errors import PipelineError
from modelship.image import read_model_metadata

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fresh_build(published_model, local_stack):
    """A build made in this module (not skipped as up to date), so the image is local."""
    import subprocess
    import sys

    from modelship.settings import PROJECT_ROOT

    for args in (["fetch-model"], ["build", "--force"]):
        done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return read_record()


def test_build_record_and_labels_describe_the_image(fresh_build, docker_client):
    built = docker_client.images.get(fresh_build.image.id)
    labels = built.labels
    assert labels["org.opencontainers.image.revision"] == fresh_build.source.revision
    assert labels["ai.modelship.model.sha256"] == fresh_build.model.sha256
    assert labels[image.INPUTS_LABEL] == fresh_build.image.inputs
    assert f"{fresh_build.image.repository}:{fresh_build.image.tag}" in built.tags
    assert built.attrs["Config"]["User"] == "10001:10001"
    assert built.attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"
    assert fresh_build.image.size_bytes <= 350e6


def test_rebuild_and_push_with_the_same_inputs_are_skipped(fresh_build, run_invoke):
    assert run_invoke("push").returncode == 0
    again = run_invoke("build")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "Step 1/" not in again.stdout
    pushed = run_invoke("push")
    assert "up to date" in pushed.stdout
    record = read_record()
    assert record.image.up_to_date is True
    assert record.require_push("local").reference.startswith("127.0.0.1:")


def test_contract_test_runs_against_an_up_to_date_image(fresh_build, run_invoke):
    assert run_invoke("push").returncode == 0
    assert run_invoke("build").returncode == 0
    tested = run_invoke("test", "--no-unit")
    assert tested.returncode == 0, tested.stderr
    assert "/score matched" in tested.stdout and "golden samples" in tested.stdout
    assert "v2 infer matched" in tested.stdout  # the Open Inference Protocol's infer too


def test_a_build_without_a_registry_login_builds_and_tests_on_its_own(fresh_build, run_invoke):
    # What a pull request's build is: no push token. The registry refuses this login, so the
    # image it holds with the same inputs cannot be reused: build builds, and test tests that.
    assert run_invoke("push").returncode == 0
    no_login = {"REGISTRY_USERNAME": "pull-request", "REGISTRY_PASSWORD": "not-the-token"}

    built = run_invoke("build", env=no_login)

    assert built.returncode == 0, built.stderr
    assert "cannot check the registry for an up-to-date image" in built.stdout
    assert "nothing built" not in built.stdout and "\nbuilt " in built.stdout
    record = read_record()
    assert record.image.id and record.image.up_to_date is not True
    tested = run_invoke("test", "--no-unit", env=no_login)
    assert tested.returncode == 0, tested.stderr
    assert "golden samples" in tested.stdout


def _derived_image(client, base_id: str, lines: list[str], tag: str) -> str:
    dockerfile = f"FROM {base_id}\n" + "\n".join(lines) + "\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    built, _ = client.images.build(fileobj=context, custom_context=True, tag=tag,
                                   network_mode="none", rm=True)
    return built.id


def test_the_image_serves_on_uvloop_and_parses_tables_with_simdjson(fresh_build, docker_client):
    probe = "import simdjson; from app.serve import event_loop; print(event_loop().value)"
    printed = docker_client.containers.run(fresh_build.image.id, ["python3", "-c", probe],
                                           network_mode="none", remove=True)
    assert printed.decode().strip() == "uvloop"


def test_contract_refuses_an_image_that_runs_as_root(fresh_build, docker_client):
    rooted = _derived_image(docker_client, fresh_build.image.id, ["USER root"],
                            "modelship-test/rooted")
    with pytest.raises(PipelineError, match="runs as root"):
        run_contract(docker_client, rooted, read_model_metadata(), print)
    assert docker_client.containers.list(
        all=True, filters={"label": "ai.modelship.role=contract-test"}) == []


def test_contract_refuses_an_image_with_a_baked_in_secret(fresh_build, docker_client):
    leaky = _derived_image(docker_client, fresh_build.image.id,
                           ["ENV STORAGE_PASSWORD=s3cr3t-value"], "modelship-test/leaky")
    with pytest.raises(PipelineError, match="looks like a secret"):
        run_contract(docker_client, leaky, read_model_metadata(), print)


def test_contract_refuses_an_image_serving_another_model(fresh_build, docker_client):
    metadata = read_model_metadata()
    wrong = dict(metadata, sha256="0" * 64)
    with pytest.raises(PipelineError, match="/version reports model sha256"):
        run_contract(docker_client, fresh_build.image.id, wrong, print)


def test_the_build_has_no_network(local_stack, local_settings, docker_client, tmp_path):
    # The registry listens on the host's loopback; with host networking this would connect.
    port = local_settings.local_services.registry_port
    (tmp_path / "Dockerfile").write_text(
        f"FROM {local_settings.image.base}\n"
        f"RUN python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"\n"
    )
    with pytest.raises(PipelineError, match="build failed"):
        image._run_build(docker_client, tmp_path, "modelship-test/network", {}, {}, [], print)


def test_dry_build_and_push_change_nothing(fresh_build, run_invoke):
    before = read_record().model_dump_json()
    for task in ("build", "push", "fetch-model", "apply"):
        result = run_invoke("--dry", task)
        assert result.returncode == 0, result.stderr
        assert "[dry]" in result.stdout or "up to date" in result.stdout
    assert read_record().model_dump_json() == before


@pytest.mark.parametrize("planted_line", [
    'LABEL ai.modelship.model.sha256="' + "0" * 64 + '"',   # same inputs label, other model
    'LABEL ai.modelship.inputs="forged"',                      # other labels
])
def test_an_image_planted_under_the_inputs_tag_is_not_reused(
        fresh_build, run_invoke, docker_client, local_settings, planted_line):
    from modelship.registry import login

    assert run_invoke("push").returncode == 0
    repository = read_record().require_push("local").repository
    planted = _derived_image(docker_client, fresh_build.image.id, [planted_line],
                             "modelship-test/planted")
    inputs_tag = image.inputs_tag(fresh_build.image.inputs)
    docker_client.images.get(planted).tag(repository, inputs_tag)
    auth = login(docker_client, local_settings)
    for chunk in docker_client.api.push(repository, tag=inputs_tag, stream=True, decode=True,
                                        auth_config=auth):
        assert "error" not in chunk, chunk
    planted_digest = image.registry_digest(docker_client, f"{repository}:{inputs_tag}", auth)

    again = run_invoke("build")

    assert again.returncode == 0, again.stderr
    assert "not reusing" in again.stdout and "rebuilding" in again.stdout, again.stdout
    record = read_record()
    assert record.image.up_to_date is False
    assert planted_digest not in (record.image.name, str(record.push_for("local")))
    # The next push puts the real image back under the inputs tag.
    assert run_invoke("push").returncode == 0
    assert image.registry_digest(docker_client, f"{repository}:{inputs_tag}", auth) != \
        planted_digest
