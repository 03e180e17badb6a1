"""Signed provenance for real: `push` signs into the local registry, `apply` verifies it.

Each tamper case changes one thing an attacker (or an accident) could change, in the
registry or in build/record.json, and runs `invoke apply --env=local` through the CLI: it
must refuse in one line naming what failed, with no deployment container started. The
registry's `.sig` / `.att` images and the record are put back after each case.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from modelship import local_runtime, oci_artifacts, provenance
from modelship.oci_artifacts import Layer
from modelship.registry import read_push_stream, registry_auth
from modelship.release_record import load as read_record
from modelship.release_record import record_path
from modelship.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pushed_release(published_model, local_stack):
    """A build pushed (signed, attested) for `local`; the record and its push."""
    environ = {name: value for name, value in os.environ.items()
               if name not in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")}
    result = subprocess.run([sys.executable, "-m", "invoke", "fetch-model", "--env=local",
                             "build", "--env=local", "push", "--env=local"],
                            cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr + result.stdout
    record = read_record()
    return record, record.require_push("local")


@pytest.fixture
def registry(local_stack):
    return oci_artifacts.client_for(local_stack)


@pytest.fixture
def nothing_deployed(docker_client, local_stack):
    """No local deployment runs, so an apply that got through would start a container."""
    local_runtime.remove(docker_client, local_stack)
    yield
    assert deployment_containers(docker_client, local_stack) == []


def deployment_containers(client, settings):
    return client.containers.list(
        all=True, filters={"label": [f"{local_runtime.ROLE_LABEL}=deployment",
                                     f"ai.modelship.env={settings.env}"]})


@contextlib.contextmanager
def replaced(registry, tag: str, layers: list[Layer]):
    original = registry.layers(tag)
    registry.put_layers(tag, layers)
    try:
        yield
    finally:
        registry.put_layers(tag, original or [])


@contextlib.contextmanager
def edited_record(change):
    path = record_path()
    saved = path.with_suffix(".json.saved")
    shutil.copy2(path, saved)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    try:
        yield
    finally:
        shutil.move(saved, path)


def refused(run_invoke, expected: str):
    result = run_invoke("apply", "--env=local")
    assert result.returncode != 0, result.stdout
    lines = result.error_lines
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Refusing" in lines[0]
    return lines[0]


def signed_attestation(settings, record, pushed, **changes) -> Layer:
    """An attestation signed with the environment's own key, with `changes` to its fields."""
    from securesystemslib.dsse import Envelope

    statement = provenance.statement(record, pushed)
    parameters = statement["predicate"]["buildDefinition"]["externalParameters"]
    if "commit" in changes:
        parameters["source"]["commit"] = changes["commit"]
    if "model_sha256" in changes:
        parameters["model"]["sha256"] = changes["model_sha256"]
    if "subject" in changes:
        statement["subject"][0]["digest"]["sha256"] = changes["subject"]
    envelope = Envelope(json.dumps(statement).encode(), provenance.IN_TOTO_PAYLOAD, {})
    envelope.sign(provenance.signer_for(settings))
    return provenance.attestation_layer(envelope)


def test_push_stores_a_cosign_style_signature_and_slsa_attestation(pushed_release, registry,
                                                                   local_stack):
    record, pushed = pushed_release
    keys = provenance.public_keys_for(local_stack)
    signatures = registry.layers(oci_artifacts.signature_tag(pushed.digest))
    assert signatures and all(layer.media_type == oci_artifacts.SIMPLE_SIGNING
                              for layer in signatures)
    payload = json.loads(signatures[-1].content)
    assert payload["critical"]["image"]["docker-manifest-digest"] == pushed.digest
    attestations = [layer for layer in registry.layers(oci_artifacts.attestation_tag(
        pushed.digest)) if layer.annotations.get("predicateType") == provenance.SLSA_PROVENANCE]
    envelope = json.loads(attestations[-1].content)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0]["digest"]["sha256"] == pushed.digest.removeprefix("sha256:")
    parameters = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert parameters["source"]["commit"] == record.source.revision
    assert parameters["source"]["dirty"] == record.source.dirty
    assert parameters["model"] == {"name": record.model.name, "version": record.model.version,
                                   "sha256": record.model.sha256}
    lock = [dep for dep in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
            if dep["uri"] == "requirements/image.lock"]
    assert len(lock[0]["digest"]["sha256"]) == 64
    assert statement["predicate"]["runDetails"]["builder"]["id"].startswith("laptop:")
    assert provenance.verification_problem(local_stack, keys, pushed.digest,
                                           record.source.revision, record.model.sha256) is None


def test_a_missing_signature_is_refused(run_invoke, pushed_release, registry,
                                        nothing_deployed):
    _, pushed = pushed_release
    with replaced(registry, oci_artifacts.signature_tag(pushed.digest), []):
        refused(run_invoke, f"no signature of {pushed.digest}")


def test_a_signature_made_with_another_key_is_refused(run_invoke, pushed_release, registry,
                                                      nothing_deployed):
    from securesystemslib.signer import CryptoSigner

    _, pushed = pushed_release
    payload = provenance.signature_payload(pushed)
    forged = CryptoSigner.generate_ecdsa().sign(payload).signature
    layer = Layer(oci_artifacts.SIMPLE_SIGNING, payload, {
        oci_artifacts.SIGNATURE_ANNOTATION: base64.b64encode(bytes.fromhex(forged)).decode()})
    with replaced(registry, oci_artifacts.signature_tag(pushed.digest), [layer]):
        refused(run_invoke, "does not verify with")


def test_a_missing_attestation_is_refused(run_invoke, pushed_release, registry,
                                          nothing_deployed):
    _, pushed = pushed_release
    with replaced(registry, oci_artifacts.attestation_tag(pushed.digest), []):
        refused(run_invoke, f"no provenance attestation of {pushed.digest}")


@pytest.mark.parametrize("change, expected", [
    ({"commit": "0" * 40}, "its provenance names commit 000000000000"),
    ({"model_sha256": "f" * 64}, "its provenance names model sha256 ffffffffffff"),
    ({"subject": "e" * 64}, "its provenance is for sha256:eeee"),
])
def test_an_attestation_of_another_commit_model_or_digest_is_refused(
        run_invoke, pushed_release, registry, local_stack, nothing_deployed, change, expected):
    record, pushed = pushed_release
    layer = signed_attestation(local_stack, record, pushed, **change)
    with replaced(registry, oci_artifacts.attestation_tag(pushed.digest), [layer]):
        refused(run_invoke, expected)


def test_a_record_edited_between_stages_is_refused(run_invoke, pushed_release,
                                                   nothing_deployed):
    record, _ = pushed_release

    def other_commit(data):
        data["source"]["revision"] = "1" * 40

    def other_model(data):
        data["model"]["sha256"] = "2" * 64

    with edited_record(other_commit):
        refused(run_invoke, f"the record {'1' * 12}")
    with edited_record(other_model):
        refused(run_invoke, f"the record {'2' * 12}")


def test_a_record_naming_another_unsigned_digest_is_refused(
        run_invoke, pushed_release, docker_client, local_stack, nothing_deployed):
    """An image someone with the registry login pushed: the record is pointed at it."""
    _, pushed = pushed_release
    repository = local_stack.image_repository
    docker_client.images.get(local_stack.image.base).tag(repository, "unsigned-test")
    stream = docker_client.api.push(repository, tag="unsigned-test", stream=True, decode=True,
                                    auth_config=registry_auth(local_stack))
    other, _ = read_push_stream(stream)
    assert other != pushed.digest

    def other_digest(data):
        data["pushed"]["local"]["digest"] = other
        data["pushed"]["local"]["reference"] = f"{repository}@{other}"

    with edited_record(other_digest):
        refused(run_invoke, f"no signature of {other}")


def test_dry_apply_says_what_it_would_verify(run_invoke, pushed_release):
    record, pushed = pushed_release
    result = run_invoke("--dry", "apply", "--env=local")
    assert result.returncode == 0, result.stderr
    assert f"would verify a signature of {pushed.digest[:19]}" in result.stdout
    assert record.source.revision[:12] in result.stdout


def test_an_environment_without_a_public_key_says_once_images_are_unverified(
        run_invoke, pushed_release, tmp_path):
    settings = tmp_path / "unverified.yaml"
    settings.write_text("modelship:\n  environments:\n    local:\n      provenance:\n"
                        "        public_key: ''\n")
    result = run_invoke("--dry", "apply", "--env=local", config=settings)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("applied unverified") == 1


def provenance_settings(tmp_path, **section) -> "os.PathLike":
    settings = tmp_path / "provenance.yaml"
    settings.write_text(json.dumps({"modelship": {"environments": {"local": {
        "provenance": section}}}}))
    return settings


def another_public_key(tmp_path):
    from modelship.provenance_keys import write_key_pair

    write_key_pair(tmp_path / "other.key.pem", tmp_path / "other.pub.pem")
    return str(tmp_path / "other.pub.pem")


def test_require_verified_without_a_public_key_refuses_and_says_to_run_keygen(
        run_invoke, pushed_release, tmp_path, nothing_deployed):
    settings = provenance_settings(tmp_path, public_key="", require_verified=True)
    result = run_invoke("apply", "--env=local", config=settings)
    assert result.returncode != 0 and len(result.error_lines) == 1, result.stderr
    assert "require_verified is on for 'local'" in result.error_lines[0]
    assert "invoke provenance.keygen --env=local" in result.error_lines[0]
    dry = run_invoke("--dry", "apply", "--env=local", config=settings)
    assert dry.returncode == 0 and "[dry] would refuse" in dry.stdout, dry.stderr


def test_during_a_rotation_either_public_key_verifies(run_invoke, pushed_release, local_stack,
                                                      tmp_path, nothing_deployed):
    """The new key first, the old one still listed: the release signed with the old verifies;
    with the old key gone from the list it is refused."""
    _, pushed = pushed_release
    current = str(provenance.setting_path(local_stack.provenance.public_key))
    other = another_public_key(tmp_path)
    both = provenance_settings(tmp_path, public_key=[other, current], generate_key=False)
    result = run_invoke("--dry", "apply", "--env=local", config=both)
    assert result.returncode == 0 and f"by {other} or {current}" in result.stdout, result.stderr
    keys = provenance.public_keys_for(load_settings_with(both))
    assert provenance.verification_problem(local_stack, keys, pushed.digest,
                                           read_record().source.revision,
                                           read_record().model.sha256) is None
    only_new = provenance_settings(tmp_path, public_key=[other], generate_key=False)
    refused = run_invoke("apply", "--env=local", config=only_new)
    assert refused.returncode != 0 and "does not verify with" in refused.stderr, refused.stderr


def load_settings_with(path):
    from invoke import Config

    from modelship.settings import load_settings

    config = Config(project_location=str(PROJECT_ROOT), runtime_path=str(path))
    config.load_project()
    config.load_runtime()
    return load_settings(config, "local")


def test_the_good_release_verifies_and_serves(run_invoke, pushed_release, docker_client,
                                              local_stack):
    _, pushed = pushed_release
    result = run_invoke("apply", "--env=local")
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"verified: signature and provenance of {pushed.digest[:19]}" in result.stdout
    [container] = deployment_containers(docker_client, local_stack)
    assert container.attrs["Config"]["Image"] == pushed.reference


@pytest.fixture
def second_release(pushed_release, docker_client, local_stack):
    """Another signed image of the same commit and model (the built one with a label more),
    pushed and signed with the environment's key as `push` signs: a second release."""
    import io

    from modelship.release_record import PushRecord

    record, pushed = pushed_release
    dockerfile = f"FROM {record.image.name}\nLABEL ai.modelship.test=second-release\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()),
                               tag=f"{pushed.repository}:second-release", network_mode="none",
                               rm=True)
    stream = docker_client.api.push(pushed.repository, tag="second-release", stream=True,
                                    decode=True, auth_config=registry_auth(local_stack))
    digest, _ = read_push_stream(stream)
    second = PushRecord(repository=pushed.repository, digest=digest,
                        reference=f"{pushed.repository}@{digest}")
    provenance.ensure_signed(local_stack, record, second, dry=False, echo=print)
    return second


def point_record_at(pushed):
    def change(data):
        data["pushed"]["local"]["digest"] = pushed.digest
        data["pushed"]["local"]["reference"] = pushed.reference
    return change


def serving(client, settings) -> str:
    [container] = deployment_containers(client, settings)
    return container.attrs["Config"]["Image"]


def test_rollback_verifies_the_image_it_goes_back_to(run_invoke, pushed_release,
                                                     second_release, registry, docker_client,
                                                     local_stack):
    """`invoke rollback` on the docker runtime checks the previous image's signature and
    provenance against the commit and model kept with its container before running it, and
    refuses, changing nothing, when they do not hold or were never kept."""
    record, first = pushed_release
    auth = registry_auth(local_stack)
    # A container released before rollbacks were verified: no commit or model kept with it.
    local_runtime.remove(docker_client, local_stack)
    local_runtime.deploy(docker_client, local_stack, first.reference, auth, None, print,
                         check_golden_sample=False)
    with edited_record(point_record_at(second_release)):
        applied = run_invoke("apply", "--env=local")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    unkept = run_invoke("rollback", "--env=local")
    assert unkept.returncode != 0 and len(unkept.error_lines) == 1, unkept.stderr
    assert "kept no commit and model" in unkept.error_lines[0], unkept.stderr
    assert serving(docker_client, local_stack) == second_release.reference

    # Released through apply, the first image is kept with its commit and model.
    applied = run_invoke("apply", "--env=local")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert serving(docker_client, local_stack) == first.reference
    with replaced(registry, oci_artifacts.attestation_tag(second_release.digest), []):
        tampered = run_invoke("rollback", "--env=local")
    assert tampered.returncode != 0 and len(tampered.error_lines) == 1, tampered.stderr
    assert (f"Refusing {second_release.reference}: no provenance attestation"
            in tampered.error_lines[0]) and "Nothing was changed" in tampered.error_lines[0]
    assert serving(docker_client, local_stack) == first.reference

    rolled = run_invoke("rollback", "--env=local")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    assert f"verified: signature and provenance of {second_release.digest[:19]}" in rolled.stdout
    assert serving(docker_client, local_stack) == second_release.reference
    # And back again: the release rolled back to keeps what it replaced, verified too.
    again = run_invoke("rollback", "--env=local")
    assert again.returncode == 0 and f"verified: signature and provenance of " \
        f"{first.digest[:19]}" in again.stdout, again.stderr + again.stdout
    assert serving(docker_client, local_stack) == first.reference


# Plays kubectl for the Kubernetes rollback: the ReplicaSets of two revisions (from a file),
# and every call logged; nothing else is needed before `rollout undo`.
STAND_IN_KUBECTL = """#!{python}
import os, sys
args = sys.argv[1:]
open(os.environ["STAND_IN_LOG"], "a").write(" ".join(args) + "\\n")
words = [a for a in args if not a.startswith("--")]
if words[:2] == ["get", "replicasets"]:
    print(open(os.environ["STAND_IN_REPLICASETS"]).read())
elif words[:2] in (["rollout", "undo"], ["rollout", "status"]):
    print("deployment.apps/digits-api rolled back")
else:
    sys.exit("stand-in kubectl: unexpected call " + " ".join(args))
"""


def replicaset(revision: int, image: str, commit: str, model_sha256: str) -> dict:
    from modelship.names import GIT_REVISION_ANNOTATION, MODEL_SHA256_ANNOTATION

    return {"metadata": {"annotations": {"deployment.kubernetes.io/revision": str(revision)}},
            "spec": {"template": {
                "metadata": {"annotations": {GIT_REVISION_ANNOTATION: commit,
                                             MODEL_SHA256_ANNOTATION: model_sha256}},
                "spec": {"containers": [{"name": "digits-api", "image": image}]}}}}


def test_kubernetes_rollback_verifies_the_previous_replicasets_image(
        run_invoke, pushed_release, second_release, registry, local_stack, tmp_path):
    """`invoke rollback` on the kubernetes runtime: the previous ReplicaSet's image digest,
    commit and model (its pod template's annotations) are verified in the real registry
    before `rollout undo --to-revision` of exactly that revision; refused, no undo, else."""
    record, first = pushed_release
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(STAND_IN_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    replicasets = tmp_path / "replicasets.json"
    replicasets.write_text(json.dumps({"items": [
        replicaset(4, first.reference, record.source.revision, record.model.sha256),
        replicaset(5, second_release.reference, record.source.revision,
                   record.model.sha256)]}))
    settings = tmp_path / "dev-on-the-local-registry.yaml"
    settings.write_text(json.dumps({"modelship": {"environments": {"dev": {
        "registry": {"host": local_stack.registry.host},
        "provenance": {"public_key": str(provenance.setting_path(
            local_stack.provenance.public_key))}}}}}))
    log = tmp_path / "kubectl.log"
    env = {"PATH": f"{kubectl.parent}:{os.environ['PATH']}", "STAND_IN_LOG": str(log),
           "STAND_IN_REPLICASETS": str(replicasets)}

    with replaced(registry, oci_artifacts.attestation_tag(first.digest), []):
        tampered = run_invoke("rollback", "--env=dev", env=env, config=settings)
    assert tampered.returncode != 0 and len(tampered.error_lines) == 1, tampered.stderr
    assert f"Refusing {first.reference}: no provenance attestation" in tampered.error_lines[0]
    assert not any(" undo " in line for line in log.read_text().splitlines())

    rolled = run_invoke("rollback", "--env=dev", env=env, config=settings)
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    assert f"verified: signature and provenance of {first.digest[:19]}" in rolled.stdout
    assert any("rollout undo deployment/digits-api" in line and "--to-revision=4" in line
               for line in log.read_text().splitlines()), log.read_text()


def test_the_sbom_lists_every_locked_package_and_is_stored_beside_the_image(
        pushed_release, registry):
    import re

    from modelship import sbom

    record, pushed = pushed_release
    document = json.loads(sbom.sbom_path().read_text())
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.5"
    listed = {(c["name"].lower().replace("_", "-"), c["version"])
              for c in document["components"] if c["purl"].startswith("pkg:pypi/")}
    locked = set(re.findall(r"^([a-z0-9._-]+)==(\S+) \\", (
        PROJECT_ROOT / "requirements" / "image.lock").read_text(), re.MULTILINE))
    assert locked and locked <= listed, sorted(locked - listed)
    debian = [c for c in document["components"] if c["purl"].startswith("pkg:deb/debian/")]
    assert any(c["name"].startswith("python3") for c in debian)
    stored = registry.layers(sbom.sbom_tag(pushed.digest))
    assert stored and stored[0].media_type == sbom.MEDIA_TYPE
    assert json.loads(stored[0].content)["components"] == document["components"]


def test_the_sbom_is_a_signed_cyclonedx_attestation_of_the_digest(pushed_release, registry,
                                                                   local_stack):
    from modelship import sbom

    _, pushed = pushed_release
    [key] = provenance.public_keys_for(local_stack)
    layers = [layer for layer in registry.layers(oci_artifacts.attestation_tag(pushed.digest))
              if layer.annotations.get("predicateType") == "https://cyclonedx.org/bom"]
    assert layers, "no SBOM attestation in the .att image"
    signed = provenance._signed_payload(layers[-1], key)
    assert signed and signed["predicateType"] == "https://cyclonedx.org/bom"
    assert signed["subject"][0]["digest"]["sha256"] == pushed.digest.removeprefix("sha256:")
    document = json.loads(sbom.sbom_path().read_text())
    assert signed["predicate"]["components"] == document["components"]
    assert signed["predicate"]["version"] == 1  # an integer still, as CycloneDX has it


def test_an_sbom_attestation_of_another_digest_is_refused(run_invoke, pushed_release,
                                                          registry, local_stack,
                                                          nothing_deployed):
    from modelship.release_record import PushRecord

    record, pushed = pushed_release
    other = PushRecord(repository=pushed.repository, digest="sha256:" + "e" * 64,
                       reference=f"{pushed.repository}@sha256:{'e' * 64}")
    moved = provenance.signed_attestation(
        provenance.signer_for(local_stack),
        provenance._statement(other, provenance.CYCLONEDX_BOM, {"bomFormat": "CycloneDX"}))
    tag = oci_artifacts.attestation_tag(pushed.digest)
    kept = [layer for layer in registry.layers(tag)
            if layer.annotations.get("predicateType") != provenance.CYCLONEDX_BOM]
    with replaced(registry, tag, kept + [moved]):
        refused(run_invoke, f"its SBOM attestation is for sha256:{'e' * 64}, not {pushed.digest}")


def test_a_cached_image_without_valid_provenance_is_not_reused(run_invoke, pushed_release,
                                                               registry):
    """Last: it rebuilds, then pushes again so the checkout ends with a signed release."""
    _, pushed = pushed_release
    reused = run_invoke("build", "--env=local")
    assert reused.returncode == 0 and "up to date" in reused.stdout, reused.stderr
    with replaced(registry, oci_artifacts.attestation_tag(pushed.digest), []):
        rebuilt = run_invoke("build", "--env=local")
    assert rebuilt.returncode == 0, rebuilt.stderr + rebuilt.stdout
    assert (f"not reusing {pushed.reference}" in rebuilt.stdout
            and f"no provenance attestation of {pushed.digest}" in rebuilt.stdout), rebuilt.stdout
    assert "up to date" not in rebuilt.stdout.splitlines()[-1]
    again = run_invoke("push", "--env=local")
    assert again.returncode == 0, again.stderr
