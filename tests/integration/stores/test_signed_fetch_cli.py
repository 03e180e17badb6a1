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
from test_model_store_races import store_spec  # noqa: F401  (the same three stores)

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


def settings_for(tmp_path, store_spec, public_key=""):
    """A `-f` settings file pointing the local environment at the store."""
    uri, account_url, endpoint_url = store_spec
    config = tmp_path / "settings.yaml"
    config.write_text(
        "modelship:\n  environments:\n    local:\n      model_store:\n"
        f"        uri: {uri}\n        account_url: '{account_url}'\n"
        f"        endpoint_url: '{endpoint_url}'\n        public_key: '{public_key}'\n")
    return config


def replay(store, signed_version, new_version, **edits):
    """What someone who may write to the store (but has no key) can do: copy a signed
    version's model and signature under a new version, with metadata edited to taste."""
    metadata = store.read_json(f"{signed_version}/metadata.json")
    for name in (metadata["model_file"], metadata["signature_file"]):
        store.write_bytes(f"{new_version}/{name}", store.read_bytes(f"{signed_version}/{name}"))
    store.write_bytes(f"{new_version}/metadata.json", json.dumps(
        {**metadata, "version": new_version, **edits}).encode())


def test_a_signature_replayed_under_another_version_or_metadata_is_refused_naming_the_field(
        tmp_path, store_spec):  # noqa: F811
    from modelship import model_store

    publisher, trusted = key_pair(tmp_path, "publisher")
    config = settings_for(tmp_path, store_spec, trusted)
    code, out, err = invoke(config, "model.publish", "--env", "local", "--version", "1",
                            "--signing-key", str(publisher))
    assert code == 0, err
    code, out, err = invoke(config, "fetch-model", "--env", "local", "--version", "1")
    assert code == 0, err
    fetched = (BUILD_ROOT / "model" / "model.onnx").read_bytes()

    store = model_store.open_store(*store_spec)
    signed = store.read_json("1/metadata.json")
    loose = {"rel": 0.5, "abs": 10.0}
    other_samples = [{**signed["golden"][0], "label": (signed["golden"][0]["label"] + 1) % 10},
                     *signed["golden"][1:]]
    replay(store, "1", "2")
    replay(store, "1", "3", tolerance=loose)
    replay(store, "1", "4", golden=other_samples)
    replay(store, "1", "5", name="other-model", tolerance=loose, golden=other_samples)
    model_store.write_pointer(store, "5", signed["sha256"])

    for version, fields in (("2", "version"), ("3", "tolerance, version"),
                            ("4", "golden, version"),
                            ("5", "golden, name, tolerance, version")):
        code, out, err = invoke(config, "fetch-model", "--env", "local", "--version", version)
        assert code != 0, out
        assert len(err) == 1 and "Traceback" not in err[0], err
        assert f": {fields} differ from what was signed; refusing the model" in err[0], err
        assert locked_version() == "1"
        assert (BUILD_ROOT / "model" / "model.onnx").read_bytes() == fetched
    # `latest` moved by hand to a replayed version is refused the same way.
    code, out, err = invoke(config, "fetch-model", "--env", "local")
    assert code != 0 and "golden, name, tolerance, version differ" in err[0], err
    assert locked_version() == "1"

    # The honest case: a version signed as itself is fetched.
    code, out, err = invoke(config, "model.publish", "--env", "local", "--version", "6",
                            "--signing-key", str(publisher))
    assert code == 0, err
    code, out, err = invoke(config, "fetch-model", "--env", "local")
    assert code == 0, err
    assert "model 6" in out and locked_version() == "6", out
