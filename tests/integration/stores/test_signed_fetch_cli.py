"""Signature checking as a user turns it on: `model_store.public_key` in a `-f` settings file,
`invoke model.publish --signing-key` and `invoke fetch-model` through the real CLI, against a
file:// store. A signed model is fetched; an unsigned or forged one is refused in one line
and the model fetched before stays in build/model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from test_model_signatures import key_pair

from modelship.stage_files import BUILD_ROOT, PROJECT_ROOT

pytestmark = pytest.mark.integration


def invoke(config, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
    done = subprocess.run([sys.executable, "-m", "invoke", "-f", str(config), *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    return done.returncode, done.stdout, [line for line in done.stderr.splitlines()
                                          if line.strip()]


def locked_version():
    return json.loads((BUILD_ROOT / "model" / "model.lock.json").read_text())["version"]


def test_fetch_model_checks_signatures_when_the_settings_file_sets_public_key(tmp_path):
    publisher, trusted = key_pair(tmp_path, "publisher")
    forger, _ = key_pair(tmp_path, "forger")
    config = tmp_path / "signed.yaml"
    config.write_text(
        "modelship:\n  environments:\n    local:\n      model_store:\n"
        f"        uri: file://{tmp_path / 'store'}\n        account_url: ''\n"
        f"        public_key: {trusted}\n")

    for version, key in (("1", publisher), ("2", None), ("3", forger)):
        signing = ["--signing-key", str(key)] if key else []
        code, out, err = invoke(config, "model.publish", "--env", "local", "--version", version,
                                *signing)
        assert code == 0, err

    code, out, err = invoke(config, "fetch-model", "--env", "local", "--version", "1")
    assert code == 0, err
    assert "model 1" in out, out
    assert locked_version() == "1"
    fetched = hashlib.sha256((BUILD_ROOT / "model" / "model.onnx").read_bytes()).hexdigest()

    for version, says in (("2", "is not signed"), ("3", "does not verify")):
        code, out, err = invoke(config, "fetch-model", "--env", "local", "--version", version)
        assert code != 0, out
        assert len(err) == 1 and says in err[0] and "Traceback" not in err[0], err
        # The refused model never replaces the one fetched before (the sample model trains
        # to the same bytes every time, so the lock is what would show a switch).
        assert locked_version() == "1"
        assert hashlib.sha256(
            (BUILD_ROOT / "model" / "model.onnx").read_bytes()).hexdigest() == fetched
