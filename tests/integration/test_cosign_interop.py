"""The real cosign reads what `push` stores: its signature and its SLSA and SBOM attestations.

cosign is built from the module tools/cosign pins (go.sum committed), once per machine into
~/.cache/modelship/cosign/<version>/ (`go_tools.ensure_go_tool`); the test skips only where Go
is not installed. Verification is key-based and offline: no transparency log (the local
registry's images are never uploaded to Rekor), the registry over plain HTTP on loopback,
its login passed as cosign reads it, from a Docker config in a temporary DOCKER_CONFIG.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from modelship import go_tools, provenance
from modelship.registry import registry_auth
from modelship.release_record import load as read_record
from modelship.settings import PROJECT_ROOT

# The first test's set-up may build cosign (about 6 minutes cold on 2 cores) and the image.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def cosign():
    if go_tools.go_command() is None:
        pytest.skip("Go is not installed: cosign is built from its pinned Go module")
    return go_tools.ensure_go_tool(go_tools.COSIGN, print)


@pytest.fixture(scope="module")
def pushed(published_model, local_stack):
    """A build pushed (signed, attested) for `local` through the CLI, as a user pushes."""
    result = subprocess.run([sys.executable, "-m", "invoke", "fetch-model", "--env=local",
                             "build", "--env=local", "push", "--env=local"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr + result.stdout
    return read_record().require_push("local")


@pytest.fixture(scope="module")
def cosign_env(local_stack, tmp_path_factory):
    """cosign's environment: the registry login in a Docker config of its own, and every
    cache cosign keeps (TUF roots, HOME) in a temporary folder, never the user's."""
    folder = tmp_path_factory.mktemp("cosign")
    login = registry_auth(local_stack)
    auths = {}
    if login:
        token = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
        auths[local_stack.registry.host] = {"auth": token}
    (folder / "docker").mkdir()
    (folder / "docker" / "config.json").write_text(json.dumps({"auths": auths}))
    return dict(os.environ, DOCKER_CONFIG=str(folder / "docker"), HOME=str(folder),
                TUF_ROOT=str(folder / "tuf"))


def run_cosign(cosign, env, *args):
    return subprocess.run([str(cosign), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def offline_key_flags(key) -> list[str]:
    return ["--key", str(key), "--insecure-ignore-tlog=true", "--allow-http-registry=true",
            "--allow-insecure-registry=true"]


def public_key(settings):
    return provenance.setting_path(settings.provenance.public_key)


def test_cosign_verifies_the_pushed_signature(cosign, cosign_env, pushed, local_stack):
    result = run_cosign(cosign, cosign_env, "verify", *offline_key_flags(public_key(local_stack)),
                        pushed.reference)
    assert result.returncode == 0, result.stderr
    [verified] = json.loads(result.stdout)
    assert verified["critical"]["image"]["docker-manifest-digest"] == pushed.digest
    assert verified["critical"]["type"] == "cosign container image signature"


@pytest.mark.parametrize("kind, predicate_type, predicate_holds", [
    ("slsaprovenance1", provenance.SLSA_PROVENANCE,
     lambda predicate: "buildDefinition" in predicate),
    ("cyclonedx", provenance.CYCLONEDX_BOM,
     lambda predicate: predicate["bomFormat"] == "CycloneDX"),
])
def test_cosign_verifies_the_provenance_and_sbom_attestations(
        cosign, cosign_env, pushed, local_stack, kind, predicate_type, predicate_holds):
    result = run_cosign(cosign, cosign_env, "verify-attestation", "--type", kind,
                        *offline_key_flags(public_key(local_stack)), pushed.reference)
    assert result.returncode == 0, result.stderr
    envelopes = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    statements = [json.loads(base64.b64decode(envelope["payload"])) for envelope in envelopes]
    assert statements and all(s["predicateType"] == predicate_type for s in statements)
    assert any(s["subject"][0]["digest"]["sha256"] == pushed.digest.removeprefix("sha256:")
               and predicate_holds(s["predicate"]) for s in statements)


def test_cosign_refuses_the_image_with_another_key(cosign, cosign_env, pushed, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pub.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for command in (["verify"], ["verify-attestation", "--type", "slsaprovenance1"],
                    ["verify-attestation", "--type", "cyclonedx"]):
        result = run_cosign(cosign, cosign_env, *command, *offline_key_flags(other),
                            pushed.reference)
        assert result.returncode != 0, result.stdout
        assert "no matching signatures" in result.stderr or \
            "no matching attestations" in result.stderr, result.stderr
