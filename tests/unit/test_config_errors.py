"""Inputs that used to end in a traceback end in one line saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT
from modelship.stores import FileStore

# Each test runs `invoke` in a process of its own: coverage-based selection cannot see it.
pytestmark = pytest.mark.subprocess_project_code


def invoke(*args, env=None, cwd=PROJECT_ROOT):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)


def one_line(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_malformed_yaml_runtime_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modelship:\n  environments:\n    dev: {deployment: {replicas: [}\n")
    line = one_line(invoke("-f", str(bad), "render", "--env=dev"))
    assert f"{bad}, line 3" in line and "not valid YAML" in line


def test_a_section_given_as_a_plain_value(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("modelship:\n  environments:\n    dev:\n      model_store: az://models/x\n")
    line = one_line(invoke("-f", str(flat), "render", "--env=dev"))
    assert "'az://models/x' where a section was expected" in line
    assert "model_store: {uri: " in line


def test_a_variable_of_the_wrong_type_is_named():
    line = one_line(invoke("render", "--env=dev",
                           env={"INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAS": "abc"}))
    assert "INVOKE_MODELSHIP_ENVIRONMENTS_DEV_DEPLOYMENT_REPLICAS cannot be read" in line
    assert "whole number" in line


def test_a_bug_still_shows_its_traceback():
    from modelship import config_errors

    try:
        raise ZeroDivisionError("a bug")
    except ZeroDivisionError as error:
        assert config_errors.describe(error, error.__traceback__) is None


@pytest.mark.skipif(os.geteuid() == 0 and not os.path.isdir("/proc/1"),
                    reason="needs /proc to be a folder nobody can create things in")
def test_a_file_store_in_a_folder_that_cannot_exist(tmp_path):
    store = FileStore("/proc/no-such-place/models")
    with pytest.raises(PipelineError) as refused:
        store.write_bytes("1/metadata.json", b"{}")
    assert "cannot be used: /proc/no-such-place" in str(refused.value)
    assert "model_store.uri" in str(refused.value)


def test_model_publish_to_an_unusable_file_store_is_one_line(tmp_path):
    config = tmp_path / "store.yaml"
    config.write_text("modelship:\n  environments:\n    local:\n      model_store:\n"
                      "        uri: file:///proc/no-such-place/models\n")
    line = one_line(invoke("-f", str(config), "model.publish", "--env=local"))
    assert line.startswith("model.publish failed: The model store file:///proc/no-such-place")
