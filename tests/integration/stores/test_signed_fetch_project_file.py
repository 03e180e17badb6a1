"""Signature checking switched on where most teams will put it: `model_store.public_key` in
the project's own invoke.yaml (no `-f`), in a fresh checkout whose invoke.yaml the test
edits. `invoke model.publish` and `invoke fetch-model` run there through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_model_signatures import key_pair

from tests.support.checkouts import fresh_clone

pytestmark = pytest.mark.integration


def run_invoke(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
    environ["PYTHONPATH"] = str(checkout)  # the checkout's code, not the editable install's
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=checkout, env=environ,
                          capture_output=True, text=True, timeout=600)


def test_public_key_in_the_projects_invoke_yaml_turns_signature_checks_on(tmp_path):
    publisher, trusted = key_pair(tmp_path, "publisher")
    checkout = fresh_clone(tmp_path / "project")
    project_file = checkout / "invoke.yaml"
    project = yaml.safe_load(project_file.read_text())
    project["modelship"]["environments"]["local"]["model_store"] = {
        "uri": f"file://{tmp_path / 'store'}", "account_url": "", "public_key": str(trusted)}
    project_file.write_text(yaml.safe_dump(project, sort_keys=False))

    signed = run_invoke(checkout, "model.publish", "--env", "local", "--version", "1",
                        "--signing-key", str(publisher))
    assert signed.returncode == 0, signed.stderr
    unsigned = run_invoke(checkout, "model.publish", "--env", "local", "--version", "2")
    assert unsigned.returncode == 0, unsigned.stderr

    fetched = run_invoke(checkout, "fetch-model", "--env", "local", "--version", "1")
    assert fetched.returncode == 0, fetched.stderr
    lock = checkout / "build" / "model" / "model.lock.json"
    assert json.loads(lock.read_text())["version"] == "1"

    refused = run_invoke(checkout, "fetch-model", "--env", "local", "--version", "2")
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode != 0
    assert len(errors) == 1 and "is not signed" in errors[0], errors
    assert json.loads(lock.read_text())["version"] == "1"  # the refused model never lands
