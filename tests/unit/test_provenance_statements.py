"""Provenance signing and its checks with real keys (securesystemslib), no registry: the
registry round trip and the CLI refusals are in tests/integration/test_provenance.py."""

from __future__ import annotations

import base64
import json

import pytest
from invoke import Config
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from modelship import oci_artifacts, provenance
from modelship.errors import PipelineError
from modelship.oci_artifacts import Layer
from modelship.release_record import PushRecord, ReleaseRecord
from modelship.settings import PROJECT_ROOT, load_settings

DIGEST = "sha256:" + "ab" * 32
RECORD = ReleaseRecord.model_validate({
    "image": {"repository": "digits-api", "tag": "3f2a9c1-f1962600", "inputs": "in-1",
              "name": "digits-api:3f2a9c1-f1962600",
              "labels": {"org.opencontainers.image.source": "https://example.com/repo.git"}},
    "model": {"name": "digits", "version": "1.0", "sha256": "f1" * 32},
    "source": {"revision": "3f2a9c1e" * 5, "dirty": True},
})
PUSHED = PushRecord(repository="127.0.0.1:15000/digits-api", digest=DIGEST,
                    reference=f"127.0.0.1:15000/digits-api@{DIGEST}", inputs="in-1")


def signature_layer(signer, digest=DIGEST) -> Layer:
    payload = provenance.signature_payload(PUSHED.model_copy(update={"digest": digest}))
    signed = base64.b64encode(bytes.fromhex(signer.sign(payload).signature)).decode()
    return Layer(oci_artifacts.SIMPLE_SIGNING, payload,
                 {oci_artifacts.SIGNATURE_ANNOTATION: signed})


def attestation_layer(signer, statement) -> Layer:
    envelope = Envelope(json.dumps(statement).encode(), provenance.IN_TOTO_PAYLOAD, {})
    envelope.sign(signer)
    return Layer(oci_artifacts.DSSE_ENVELOPE, json.dumps(envelope.to_dict()).encode(), {})


def test_the_statement_is_in_toto_v1_with_slsa_provenance_of_the_pushed_digest():
    statement = provenance.statement(RECORD, PUSHED)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": PUSHED.repository,
                                     "digest": {"sha256": "ab" * 32}}]
    parameters = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert parameters["source"] == {"repository": "https://example.com/repo.git",
                                    "commit": RECORD.source.revision, "dirty": True}
    assert parameters["model"]["sha256"] == RECORD.model.sha256


def test_the_builder_is_the_pipeline_run_in_azure_pipelines(monkeypatch):
    monkeypatch.setenv("TF_BUILD", "True")
    monkeypatch.setenv("SYSTEM_COLLECTIONURI", "https://dev.azure.com/org/")
    monkeypatch.setenv("SYSTEM_TEAMPROJECT", "modelship")
    monkeypatch.setenv("BUILD_BUILDID", "4711")
    assert provenance.builder_id() == \
        "https://dev.azure.com/org/modelship/_build/results?buildId=4711"
    monkeypatch.delenv("TF_BUILD")
    assert provenance.builder_id().startswith("laptop:")


def test_a_signature_holds_only_for_its_key_and_its_digest():
    signer, other = CryptoSigner.generate_ecdsa(), CryptoSigner.generate_ecdsa()
    assert provenance._signature_holds(signature_layer(signer), signer.public_key, DIGEST)
    assert not provenance._signature_holds(signature_layer(other), signer.public_key, DIGEST)
    assert not provenance._signature_holds(signature_layer(signer, "sha256:" + "cd" * 32),
                                           signer.public_key, DIGEST)


@pytest.mark.parametrize("edit, expected", [
    (lambda s: None, None),
    (lambda s: s["subject"][0]["digest"].update(sha256="cd" * 32), "its provenance is for"),
    (lambda s: s["predicate"]["buildDefinition"]["externalParameters"]["source"].update(
        commit="0" * 40), "names commit 000000000000"),
    (lambda s: s["predicate"]["buildDefinition"]["externalParameters"]["model"].update(
        sha256="0" * 64), "names model sha256 000000000000"),
    (lambda s: s.update(predicateType="https://example.com/other"), "not SLSA provenance v1"),
])
def test_an_attestation_vouches_only_for_its_digest_commit_and_model(edit, expected):
    signer = CryptoSigner.generate_ecdsa()
    statement = provenance.statement(RECORD, PUSHED)
    edit(statement)
    problem = provenance._attestation_problem(attestation_layer(signer, statement),
                                              signer.public_key, DIGEST,
                                              RECORD.source.revision, RECORD.model.sha256)
    assert problem == expected if expected is None else expected in problem


def test_an_attestation_signed_with_another_key_is_refused():
    signer, other = CryptoSigner.generate_ecdsa(), CryptoSigner.generate_ecdsa()
    layer = attestation_layer(other, provenance.statement(RECORD, PUSHED))
    assert provenance._attestation_problem(layer, signer.public_key, DIGEST, None,
                                           RECORD.model.sha256) == \
        "its attestation is not signed with the environment's key"


def settings_from(tmp_path, yaml_text: str, environ=None):
    runtime = tmp_path / "settings.yaml"
    runtime.write_text(yaml_text)
    config = Config(project_location=str(PROJECT_ROOT), runtime_path=str(runtime))
    config.load_project()
    config.load_runtime()
    return load_settings(config, "dev", environ or {})


def test_the_keys_come_from_a_settings_file_or_a_variable_and_generate_once(tmp_path):
    key, public = tmp_path / "k" / "dev.key.pem", tmp_path / "k" / "dev.pub.pem"
    settings = settings_from(tmp_path, (
        "modelship:\n  environments:\n    dev:\n      provenance:\n"
        f"        signing_key: {key}\n        public_key: {public}\n"
        "        generate_key: true\n"))
    signer = provenance.signer_for(settings)
    assert key.stat().st_mode & 0o777 == 0o600
    assert [k.keyid for k in provenance.public_keys_for(settings)] == [signer.public_key.keyid]
    assert provenance.signer_for(settings).public_key.keyid == signer.public_key.keyid

    from_variable = settings_from(tmp_path, "modelship: {}\n", {
        "INVOKE_MODELSHIP_ENVIRONMENTS_DEV_PROVENANCE_PUBLIC_KEY": str(public)})
    assert from_variable.provenance.public_key == str(public)


def test_a_signing_key_variable_that_is_not_a_pem_key_is_one_clear_error(tmp_path,
                                                                        monkeypatch):
    settings = settings_from(tmp_path, "modelship: {}\n")
    monkeypatch.setenv(settings.provenance.signing_key_env, "not a key")
    with pytest.raises(PipelineError, match="is not an unencrypted PEM private key"):
        provenance.signer_for(settings)


def test_an_unknown_provenance_setting_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="public_keys is not a setting"):
        settings_from(tmp_path, "modelship:\n  environments:\n    dev:\n      provenance:\n"
                                "        public_keys: x.pem\n")
