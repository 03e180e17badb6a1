"""`invoke provenance.keygen --env=X`: an environment's key pair, made once, never replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelship.settings import PROJECT_ROOT


def invoke(*args):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run([str(Path(sys.executable).with_name("invoke")), *args],
                          cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.subprocess_project_code
def test_keygen_writes_the_pair_says_where_each_goes_and_never_overwrites(tmp_path):
    private, public = tmp_path / "vault" / "staging.key.pem", tmp_path / "keys" / "staging.pub.pem"
    settings = tmp_path / "staging-keys.yaml"
    settings.write_text(json.dumps({"modelship": {"environments": {"staging": {"provenance": {
        "signing_key": str(private), "public_key": str(public)}}}}}))

    dry = invoke("-f", str(settings), "--dry", "provenance.keygen", "--env=staging")
    assert dry.returncode == 0 and "[dry] would write" in dry.stdout, dry.stderr
    assert not private.exists() and not public.exists()

    made = invoke("-f", str(settings), "provenance.keygen", "--env=staging")
    assert made.returncode == 0, made.stderr
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert private.read_text() not in made.stdout
    assert "az keyvault secret set" in made.stdout and "PROVENANCE_SIGNING_KEY" in made.stdout
    assert f"commit {public}" in made.stdout
    assert "modelship.environments.staging.provenance.public_key" in made.stdout

    before = private.read_bytes(), public.read_bytes()
    again = invoke("-f", str(settings), "provenance.keygen", "--env=staging")
    assert again.returncode == 1
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "never replaces a key" in lines[0], again.stderr
    assert (private.read_bytes(), public.read_bytes()) == before


def test_public_key_takes_one_key_or_the_keys_of_a_rotation():
    from pydantic import ValidationError

    from modelship.settings_schema import ProvenanceSection

    assert ProvenanceSection().public_keys == []
    assert ProvenanceSection(public_key="keys/a.pem").public_keys == ["keys/a.pem"]
    assert ProvenanceSection(public_key=["keys/new.pem", "keys/old.pem"]).public_keys == [
        "keys/new.pem", "keys/old.pem"]
    with pytest.raises(ValidationError):
        ProvenanceSection(public_key=3)
    with pytest.raises(ValidationError, match="generate_key makes one pair"):
        ProvenanceSection(public_key=["a.pem", "b.pem"], generate_key=True)


def test_staging_and_prod_require_verified_releases():
    import invoke as invoke_library

    from modelship.settings import load_settings

    config = invoke_library.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    assert all(load_settings(config, env).provenance.require_verified
               for env in ("staging", "prod"))
    assert not load_settings(config, "dev").provenance.require_verified
